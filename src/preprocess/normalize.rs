//! Per-channel lookup tables for `(pixel * scale - mean) / std`.
//!
//! The input is 8-bit, so 3 × 256 precomputed floats replace the arithmetic,
//! and they are computed in exactly the float widths of the reference so the
//! tensors are bit-identical to PaddleClas's:
//! - detector (`DetNormalizeImage`): `im / 255.0` in float32, then
//!   `im -= mean` and `im /= std` with float64 mean/std, rounded back to float32;
//! - recogniser (`NormalizeImage`): everything in float32, scale `0.00392157`.

const MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const STD: [f64; 3] = [0.229, 0.224, 0.225];

/// Maps interleaved RGB bytes to normalised planar floats.
pub struct Normalizer {
    lut: [[f32; 256]; 3],
}

impl Normalizer {
    /// The detector's normalisation.
    pub fn detector() -> &'static Normalizer {
        static N: std::sync::OnceLock<Normalizer> = std::sync::OnceLock::new();
        N.get_or_init(|| {
            Normalizer::build(|c, v| {
                let x = v as f32 / 255.0f32;
                let y = (x as f64 - MEAN[c]) as f32;
                (y as f64 / STD[c]) as f32
            })
        })
    }

    /// The recogniser's normalisation.
    pub fn embedder() -> &'static Normalizer {
        static N: std::sync::OnceLock<Normalizer> = std::sync::OnceLock::new();
        N.get_or_init(|| {
            Normalizer::build(|c, v| {
                let x = v as f32 * 0.00392157f32;
                (x - MEAN[c] as f32) / STD[c] as f32
            })
        })
    }

    fn build(f: impl Fn(usize, u8) -> f32) -> Normalizer {
        let mut lut = [[0.0; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                *out = f(c, v as u8);
            }
        }
        Normalizer { lut }
    }

    /// The three tables, R then G then B, 256 floats each: what the GPU
    /// kernels look levels up in, so both paths give the same floats.
    pub fn table(&self) -> Vec<f32> {
        self.flat().to_vec()
    }

    /// [`Normalizer::table`] without a copy, for the host kernels' calls.
    pub fn flat(&self) -> &[f32] {
        self.lut.as_flattened()
    }

    /// Writes `hwc` (RGB bytes) into `chw` (`3 × plane` floats).
    pub fn hwc_to_chw(&self, hwc: &[u8], chw: &mut [f32]) {
        let plane = hwc.len() / 3;
        debug_assert_eq!(chw.len(), plane * 3);
        let (r, rest) = chw.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (i, px) in hwc.chunks_exact(3).enumerate() {
            r[i] = self.lut[0][px[0] as usize];
            g[i] = self.lut[1][px[1] as usize];
            b[i] = self.lut[2][px[2] as usize];
        }
    }
}

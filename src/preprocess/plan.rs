//! What the preprocessing kernels read besides pixels: OpenCV's resize
//! tables, computed on the host exactly as `cv::resize` computes them, and
//! the layout of a batch (where each frame starts, which box each crop is).
//!
//! A plan is built once per batch and checked as it is built (every box
//! inside its frame, every table as long as the output side), so the kernels
//! (`kernels.cu`, on the GPU or compiled for the host) index without checks.

use crate::error::{Error, Result};
use crate::geometry::CropBox;

/// OpenCV's fixed-point weight scale for 8-bit resizes (`INTER_RESIZE_COEF_BITS = 11`).
const COEF_SCALE: f32 = 2048.0;

/// The two interpolations the pipeline uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interp {
    /// `INTER_LINEAR` (recogniser crops): 2 taps.
    Linear,
    /// `INTER_CUBIC` (detector frames): 4 taps, `A = -0.75`.
    Cubic,
}

impl Interp {
    /// Taps per output pixel along one axis.
    pub const fn taps(self) -> usize {
        match self {
            Interp::Linear => 2,
            Interp::Cubic => 4,
        }
    }
}

/// One axis of a resize from `src` to `side` pixels: per output index, the
/// first source tap (before border clamping, for cubic: the tap at offset
/// -1 is `ofs - 1`) and `taps` weights in 11-bit fixed point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Axis {
    /// First tap per output index.
    pub ofs: Vec<i32>,
    /// `taps` weights per output index.
    pub weights: Vec<i16>,
}

/// OpenCV's `interpolateCubic`, in float as it computes it.
fn cubic_coeffs(x: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let c0 = ((A * (x + 1.0) - 5.0 * A) * (x + 1.0) + 8.0 * A) * (x + 1.0) - 4.0 * A;
    let c1 = ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let c2 = ((A + 2.0) * (1.0 - x) - (A + 3.0)) * (1.0 - x) * (1.0 - x) + 1.0;
    [c0, c1, c2, 1.0 - c0 - c1 - c2]
}

/// `saturate_cast<short>(float)`: round half to even, then clamp.
fn to_fixed(w: f32) -> i16 {
    (w * COEF_SCALE)
        .round_ties_even()
        .clamp(i16::MIN as f32, i16::MAX as f32) as i16
}

/// The table of one axis. `columns` is true for the horizontal axis, where
/// OpenCV's bilinear resize moves a tap before the first or at the last
/// pixel onto that pixel with weight 1; rows keep their weights and only
/// clamp the row they read (both as `resizeGeneric_` does).
pub fn axis(interp: Interp, src: u32, side: u32, columns: bool) -> Axis {
    // OpenCV: inv_scale = side / src (double), scale = 1 / inv_scale.
    let scale = 1.0 / (side as f64 / src as f64);
    let taps = interp.taps();
    let mut ofs = Vec::with_capacity(side as usize);
    let mut weights = Vec::with_capacity(side as usize * taps);
    for d in 0..side {
        let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
        let mut s = f.floor() as i32;
        let mut f = f - s as f32;
        match interp {
            Interp::Cubic => weights.extend(cubic_coeffs(f).map(to_fixed)),
            Interp::Linear => {
                if columns && s < 0 {
                    (s, f) = (0, 0.0);
                }
                if columns && s >= src as i32 - 1 {
                    (s, f) = (src as i32 - 1, 0.0);
                }
                weights.extend([to_fixed(1.0 - f), to_fixed(f)]);
            }
        }
        ofs.push(s);
    }
    Axis { ofs, weights }
}

/// Whether OpenCV turns this bilinear resize into its exact 2× area
/// reduction (`is_area_fast` with both scales 2), as it does for a crop of
/// exactly twice the output side.
pub fn is_area2(w: u32, h: u32, side: u32) -> bool {
    let two = |n: u32| {
        let scale = 1.0 / (side as f64 / n as f64);
        let i = scale.round();
        (scale - i).abs() < f64::EPSILON && i == 2.0
    };
    two(w) && two(h)
}

/// Geometry of one interleaved RGB frame in a batch buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLayout {
    /// Byte offset of its first pixel from the start of the batch buffer.
    pub offset: usize,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bytes per row (at least `3 × width`).
    pub pitch: usize,
}

impl FrameLayout {
    /// Bytes from `offset` to the end of the last row's pixels.
    pub fn span(&self) -> usize {
        (self.height as usize).saturating_sub(1) * self.pitch + 3 * self.width as usize
    }
}

/// The tables of a batch, per image: x and y axes concatenated, `side` entries each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tables {
    /// First tap per output column, `side` per image.
    pub xofs: Vec<i32>,
    /// Column weights, `side × taps` per image.
    pub alpha: Vec<i16>,
    /// First tap per output row, `side` per image.
    pub yofs: Vec<i32>,
    /// Row weights, `side × taps` per image.
    pub beta: Vec<i16>,
}

impl Tables {
    fn push(&mut self, interp: Interp, w: u32, h: u32, side: u32) {
        let x = axis(interp, w, side, true);
        let y = axis(interp, h, side, false);
        self.xofs.extend(x.ofs);
        self.alpha.extend(x.weights);
        self.yofs.extend(y.ofs);
        self.beta.extend(y.weights);
    }
}

/// Checks that `frames` fit in a buffer of `bytes` bytes and returns the
/// kernels' frame table: `(offset, width, height, pitch)` per frame.
fn frame_table(frames: &[FrameLayout], bytes: usize) -> Result<Vec<i64>> {
    let mut table = Vec::with_capacity(frames.len() * 4);
    for (i, f) in frames.iter().enumerate() {
        let fits = f.width > 0
            && f.height > 0
            && f.pitch >= 3 * f.width as usize
            && i32::try_from(f.pitch).is_ok()
            && f.offset
                .checked_add(f.span())
                .is_some_and(|end| end <= bytes);
        if !fits {
            return Err(Error::Preprocess(format!(
                "frame {i} ({}x{}, pitch {}, at byte {}) does not fit the {bytes}-byte batch buffer",
                f.width, f.height, f.pitch, f.offset
            )));
        }
        table.extend([
            f.offset as i64,
            f.width as i64,
            f.height as i64,
            f.pitch as i64,
        ]);
    }
    Ok(table)
}

fn check_buffer(planned: usize, len: usize) -> Result<()> {
    if len < planned {
        return Err(Error::Preprocess(format!(
            "the batch was planned for {planned} bytes of frames, the buffer has {len}"
        )));
    }
    Ok(())
}

/// The detector's batch: every frame resized to `side × side` (cubic).
#[derive(Debug, Clone)]
pub struct DetectorPlan {
    /// `(offset, width, height, pitch)` per frame.
    pub frames: Vec<i64>,
    /// The resize tables, one set per frame.
    pub tables: Tables,
    /// Output side.
    pub side: u32,
    /// The buffer length the frames were checked against.
    bytes: usize,
}

impl DetectorPlan {
    /// Plans `frames`, which must lie in a buffer of `bytes` bytes.
    pub fn new(frames: &[FrameLayout], bytes: usize, side: u32) -> Result<DetectorPlan> {
        let table = frame_table(frames, bytes)?;
        let mut tables = Tables::default();
        for f in frames {
            tables.push(Interp::Cubic, f.width, f.height, side);
        }
        Ok(DetectorPlan {
            frames: table,
            tables,
            side,
            bytes,
        })
    }

    /// Refuses a buffer shorter than the one the frames were checked against.
    pub fn check_buffer(&self, len: usize) -> Result<()> {
        check_buffer(self.bytes, len)
    }

    /// Frames in the batch.
    pub fn len(&self) -> usize {
        self.frames.len() / 4
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Floats of the whole output: `frames × 3 × side × side`.
    pub fn output_len(&self) -> usize {
        self.len() * 3 * (self.side as usize).pow(2)
    }
}

/// The recogniser's batch: every crop (frame index, box) resized to `side × side` (bilinear).
#[derive(Debug, Clone)]
pub struct RecogniserPlan {
    /// `(offset, width, height, pitch)` per frame.
    pub frames: Vec<i64>,
    /// `(frame, x1, y1, x2, y2, area2)` per crop.
    pub boxes: Vec<i32>,
    /// The resize tables, one set per crop.
    pub tables: Tables,
    /// Output side.
    pub side: u32,
    /// The buffer length the frames were checked against.
    bytes: usize,
}

impl RecogniserPlan {
    /// Plans `crops` of `frames`, which must lie in a buffer of `bytes`
    /// bytes; every box must be non-empty and inside its frame.
    pub fn new(
        frames: &[FrameLayout],
        bytes: usize,
        crops: &[(usize, CropBox)],
        side: u32,
    ) -> Result<RecogniserPlan> {
        let table = frame_table(frames, bytes)?;
        let mut boxes = Vec::with_capacity(crops.len() * 6);
        let mut tables = Tables::default();
        for &(f, c) in crops {
            let inside = frames.get(f).is_some_and(|fr| {
                c.x1 >= 0
                    && c.y1 >= 0
                    && c.x2 > c.x1
                    && c.y2 > c.y1
                    && c.x2 as i64 <= fr.width as i64
                    && c.y2 as i64 <= fr.height as i64
            });
            if !inside {
                return Err(Error::Preprocess(format!(
                    "crop {:?} of frame {f} is empty or outside it",
                    c.to_array()
                )));
            }
            let (w, h) = ((c.x2 - c.x1) as u32, (c.y2 - c.y1) as u32);
            let area2 = is_area2(w, h, side);
            boxes.extend([f as i32, c.x1, c.y1, c.x2, c.y2, i32::from(area2)]);
            tables.push(Interp::Linear, w, h, side);
        }
        Ok(RecogniserPlan {
            frames: table,
            boxes,
            tables,
            side,
            bytes,
        })
    }

    /// Refuses a buffer shorter than the one the frames were checked against.
    pub fn check_buffer(&self, len: usize) -> Result<()> {
        check_buffer(self.bytes, len)
    }

    /// Crops in the batch.
    pub fn len(&self) -> usize {
        self.boxes.len() / 6
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.boxes.is_empty()
    }

    /// Floats of the whole output: `crops × 3 × side × side`.
    pub fn output_len(&self) -> usize {
        self.len() * 3 * (self.side as usize).pow(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cubic_weights_sum_to_one_and_identity_is_exact() {
        let a = axis(Interp::Cubic, 1920, 640, true);
        assert_eq!(a.ofs.len(), 640);
        for w in a.weights.chunks(4) {
            let sum: i32 = w.iter().map(|&v| v as i32).sum();
            assert!((2046..=2050).contains(&sum), "{w:?}");
        }
        // 1920 -> 640: output 0 sits at source 1.0 exactly, taps 0..3.
        assert_eq!((a.ofs[0], &a.weights[..4]), (1, &[0, 2048, 0, 0][..]));
        let same = axis(Interp::Cubic, 640, 640, false);
        assert!(same.weights.chunks(4).all(|w| w == [0, 2048, 0, 0]));
        assert_eq!(same.ofs, (0..640).collect::<Vec<_>>());
    }

    #[test]
    fn linear_columns_move_edge_taps_onto_the_edge_rows_do_not() {
        // Upscaling 100 -> 224: output 0 sits before source pixel 0.
        let cols = axis(Interp::Linear, 100, 224, true);
        let rows = axis(Interp::Linear, 100, 224, false);
        assert_eq!((cols.ofs[0], &cols.weights[..2]), (0, &[2048, 0][..]));
        assert_eq!(rows.ofs[0], -1);
        assert_eq!(rows.weights[0] as i32 + rows.weights[1] as i32, 2048);
        assert_ne!(rows.weights[1], 0);
        let last = 223;
        assert_eq!(
            (cols.ofs[last], &cols.weights[2 * last..]),
            (99, &[2048, 0][..])
        );
    }

    #[test]
    fn area2_is_exactly_twice_the_side() {
        assert!(is_area2(448, 448, 224));
        assert!(!is_area2(448, 447, 224));
        assert!(!is_area2(672, 672, 224));
    }

    #[test]
    fn plans_refuse_boxes_and_frames_that_do_not_fit() {
        let f = FrameLayout {
            offset: 0,
            width: 10,
            height: 5,
            pitch: 30,
        };
        assert!(DetectorPlan::new(&[f], 150, 640).is_ok());
        let err = DetectorPlan::new(&[f], 149, 640).unwrap_err().to_string();
        assert!(err.contains("does not fit"), "{err}");
        let b = |x1, y1, x2, y2| CropBox { x1, y1, x2, y2 };
        assert!(RecogniserPlan::new(&[f], 150, &[(0, b(0, 0, 10, 5))], 224).is_ok());
        for (i, c) in [
            (0, b(0, 0, 11, 5)),
            (0, b(3, 0, 3, 5)),
            (1, b(0, 0, 1, 1)),
            (0, b(-1, 0, 2, 2)),
        ] {
            let err = RecogniserPlan::new(&[f], 150, &[(i, c)], 224).unwrap_err();
            assert!(err.to_string().contains("empty or outside"), "{err}");
        }
    }
}

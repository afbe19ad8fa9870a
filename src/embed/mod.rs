//! The fourth stage, part two: what is it? PPLCNetV2 features for crops.

pub mod cuda;
pub mod pplcnet;

pub use pplcnet::{Embedder, Features};

extern "C" {
    fn shitu_l2_normalize_host(x: *mut f32, rows: i32, dim: i32);
}

/// Scales each `dim`-long row of `features` to unit length, in place, as
/// PaddleClas's `feature_normalize`. A zero row stays zero rather than NaN.
/// This is the host build of the GPU's kernel (`l2norm.cu`): both paths
/// give the same bits.
pub fn l2_normalize(features: &mut [f32], dim: usize) {
    let Ok(dim_i32) = i32::try_from(dim) else {
        return;
    };
    if dim == 0 {
        return;
    }
    // At most 2^20 rows a call keeps the row count an i32; a trailing
    // partial row is left alone.
    for block in features.chunks_mut(dim << 20) {
        let rows = block.len() / dim;
        // SAFETY: `block` holds at least rows·dim floats; the function
        // reads and writes exactly those.
        unsafe { shitu_l2_normalize_host(block.as_mut_ptr(), rows as i32, dim_i32) }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rows_become_unit_length() {
        let mut f = vec![3.0, 4.0, 0.0, 0.0];
        super::l2_normalize(&mut f, 2);
        assert_eq!(f, vec![0.6, 0.8, 0.0, 0.0]);
    }

    #[test]
    fn the_kernels_host_build_is_paddleclas_normalisation_in_double() {
        // feature_normalize: the sum of squares in double, in row order.
        let mut f: Vec<f32> = (0..512 * 3)
            .map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 13.0)
            .collect();
        let mut want = f.clone();
        for row in want.chunks_exact_mut(512) {
            let norm = row
                .iter()
                .map(|&x| (x as f64) * (x as f64))
                .sum::<f64>()
                .sqrt() as f32;
            row.iter_mut().for_each(|x| *x /= norm);
        }
        super::l2_normalize(&mut f, 512);
        assert_eq!(f, want);
    }
}

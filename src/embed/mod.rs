//! The fourth stage, part two: what is it? PPLCNetV2 features for crops.

pub mod pplcnet;

pub use pplcnet::Embedder;

/// Scales each `dim`-long row of `features` to unit length, in place, as
/// PaddleClas's `feature_normalize`. A zero row stays zero rather than NaN.
pub fn l2_normalize(features: &mut [f32], dim: usize) {
    for row in features.chunks_exact_mut(dim) {
        let norm = row
            .iter()
            .map(|&x| (x as f64) * (x as f64))
            .sum::<f64>()
            .sqrt() as f32;
        if norm > 0.0 {
            row.iter_mut().for_each(|x| *x /= norm);
        }
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
}

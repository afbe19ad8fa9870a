//! The last stage: from crops and their best matches to the answer for one
//! image: PaddleClas's score threshold and recognition NMS, result types, the
//! JSON-lines output and annotated images.

pub mod draw;
pub mod json;

use serde::Serialize;

use crate::geometry::CropBox;

/// One recognised object: PaddleClas's `{bbox, rec_docs, rec_scores}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recognition {
    /// The crop that was recognised, `[x1, y1, x2, y2]` in integer pixels.
    pub bbox: [i32; 4],
    /// The gallery label of the best match.
    pub rec_docs: String,
    /// Its similarity (cosine, 0..1).
    pub rec_scores: f32,
}

/// Time spent per stage, in milliseconds. Batched stages report each image's
/// share of its batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StageTimes {
    /// Reading and decoding the file.
    pub decode: f64,
    /// Detector resize and normalisation.
    pub det_pre: f64,
    /// Detector inference.
    pub det_infer: f64,
    /// NMS, selection, clipping.
    pub det_post: f64,
    /// Cropping, resizing and normalising crops.
    pub rec_pre: f64,
    /// Recogniser inference and L2 normalisation.
    pub rec_infer: f64,
    /// Gallery search, threshold and recognition NMS.
    pub search: f64,
}

impl StageTimes {
    /// Sum of all stages.
    pub fn total(&self) -> f64 {
        self.decode
            + self.det_pre
            + self.det_infer
            + self.det_post
            + self.rec_pre
            + self.rec_infer
            + self.search
    }
}

/// PaddleClas's `nms_to_rec_results`: class-agnostic greedy suppression by
/// recognition score, with the +1 pixel area convention; a result is dropped
/// when its IoU with a kept one exceeds `threshold`.
pub fn rec_nms(results: Vec<Recognition>, threshold: f32) -> Vec<Recognition> {
    rec_nms_keep(&results, threshold)
        .into_iter()
        .map(|i| results[i].clone())
        .collect()
}

/// [`rec_nms`] as the indices of the kept results, best first.
fn rec_nms_keep(results: &[Recognition], threshold: f32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..results.len()).collect();
    order.sort_by(|&a, &b| results[b].rec_scores.total_cmp(&results[a].rec_scores));
    let corners = |r: &Recognition| r.bbox.map(|v| v as f32);
    let area = |b: [f32; 4]| (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0);
    let mut kept: Vec<usize> = Vec::new();
    for i in order {
        let a = corners(&results[i]);
        let suppressed = kept.iter().any(|&k| {
            let b = corners(&results[k]);
            let w = (a[2].min(b[2]) - a[0].max(b[0]) + 1.0).max(0.0);
            let h = (a[3].min(b[3]) - a[1].max(b[1]) + 1.0).max(0.0);
            let inter = w * h;
            inter / (area(a) + area(b) - inter) > threshold
        });
        if !suppressed {
            kept.push(i);
        }
    }
    kept
}

/// A crop's best match, before thresholding.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    /// The crop.
    pub crop: CropBox,
    /// Best gallery label, if the gallery returned anything.
    pub label: Option<String>,
    /// Its score.
    pub score: f32,
}

/// The final answer from the crops' best matches: keep those scoring at least
/// `score_threshold`, then [`rec_nms`].
pub fn finalize(matches: &[Match], score_threshold: f32, nms_threshold: f32) -> Vec<Recognition> {
    finalize_indexed(matches, score_threshold, nms_threshold)
        .into_iter()
        .map(|(_, r)| r)
        .collect()
}

/// [`finalize`], with each result's index into `matches`, so callers can
/// attach what they know per crop (the daemon's top-k lists).
pub fn finalize_indexed(
    matches: &[Match],
    score_threshold: f32,
    nms_threshold: f32,
) -> Vec<(usize, Recognition)> {
    let (crops, kept): (Vec<usize>, Vec<Recognition>) = matches
        .iter()
        .enumerate()
        .filter(|(_, m)| m.score >= score_threshold)
        .filter_map(|(i, m)| {
            m.label.as_ref().map(|l| {
                (
                    i,
                    Recognition {
                        bbox: m.crop.to_array(),
                        rec_docs: l.clone(),
                        rec_scores: m.score,
                    },
                )
            })
        })
        .unzip();
    rec_nms_keep(&kept, nms_threshold)
        .into_iter()
        .map(|k| (crops[k], kept[k].clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(b: [i32; 4], s: f32) -> Recognition {
        Recognition {
            bbox: b,
            rec_docs: format!("{s}"),
            rec_scores: s,
        }
    }

    #[test]
    fn nms_uses_plus_one_areas_and_keeps_best_first() {
        // Two 10x10 (11x11 with +1) boxes sharing one column: IoU = 11/231 = 0.0476 <= 0.05, both kept.
        let a = rec([0, 0, 10, 10], 0.9);
        let b = rec([10, 0, 20, 10], 0.8);
        assert_eq!(
            rec_nms(vec![b.clone(), a.clone()], 0.05),
            vec![a.clone(), b]
        );
        // Sharing two columns: IoU = 22/220 = 0.1 > 0.05, the weaker one goes.
        let c = rec([9, 0, 19, 10], 0.95);
        assert_eq!(rec_nms(vec![a, c.clone()], 0.05), vec![c]);
    }

    #[test]
    fn finalize_applies_the_score_threshold() {
        let m = |s: f32| Match {
            crop: CropBox {
                x1: 0,
                y1: 0,
                x2: 5,
                y2: 5,
            },
            label: Some("x".into()),
            score: s,
        };
        assert_eq!(finalize(&[m(0.49)], 0.5, 0.05).len(), 0);
        assert_eq!(finalize(&[m(0.5)], 0.5, 0.05).len(), 1);
    }
}

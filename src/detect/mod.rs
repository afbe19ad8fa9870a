//! The fourth stage, part one: where are the products? PicoDet mainbody
//! detection and the reference's rules for which boxes go on to recognition.

pub mod nms;
pub mod picodet;

pub use picodet::{ExportForm, PicoDet, RawDetections};

use serde::Serialize;

use crate::geometry::BBox;

/// One detected object in original-image pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Detection {
    /// Where it is.
    pub bbox: BBox,
    /// Detector confidence.
    pub score: f32,
    /// Class index (mainbody has one class, `foreground`).
    pub class_id: i32,
}

/// PaddleClas's `parse_det_results`: the `max_results` best by score, then
/// those scoring at least `threshold`. After that, what the reference gets
/// wrong is done right: boxes are clipped to the image and boxes under 1 px
/// are dropped, so no empty or wrapped crop reaches the recogniser.
pub fn select(
    mut dets: Vec<Detection>,
    max_results: usize,
    threshold: f32,
    width: u32,
    height: u32,
) -> Vec<Detection> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    dets.truncate(max_results);
    dets.into_iter()
        .filter(|d| d.score >= threshold)
        .map(|d| Detection {
            bbox: d.bbox.clip(width, height),
            ..d
        })
        .filter(|d| d.bbox.width() >= 1.0 && d.bbox.height() >= 1.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x1: f32, y1: f32, x2: f32, y2: f32, score: f32) -> Detection {
        Detection {
            bbox: BBox::new(x1, y1, x2, y2),
            score,
            class_id: 0,
        }
    }

    #[test]
    fn keeps_top_k_before_threshold_then_clips_and_drops_slivers() {
        let dets = vec![
            det(0.0, 0.0, 10.0, 10.0, 0.1),
            det(-5.0, -3.0, 50.0, 40.0, 0.9),
            det(95.5, 0.0, 130.0, 10.0, 0.8), // clips to a 0.5 px sliver
            det(10.0, 10.0, 20.0, 20.0, 0.3),
            det(10.0, 10.0, 20.0, 20.0, 0.25),
        ];
        let out = select(dets.clone(), 5, 0.2, 96, 64);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].bbox, BBox::new(0.0, 0.0, 50.0, 40.0));
        assert_eq!(out[1].score, 0.3);
        // Top-k is taken before the threshold, as in the reference.
        assert_eq!(select(dets, 1, 0.95, 96, 64).len(), 0);
    }
}

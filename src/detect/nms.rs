//! Host-side NMS for the pre-NMS detector export, equal to the graph's
//! Paddle `multiclass_nms3` (`normalized=True`, so no +1 on widths).

use crate::config::NmsSettings;
use crate::detect::Detection;
use crate::geometry::BBox;

/// Paddle's `JaccardOverlap` with `normalized = true`.
pub fn iou(a: &BBox, b: &BBox) -> f32 {
    if b.x1 > a.x2 || b.x2 < a.x1 || b.y1 > a.y2 || b.y2 < a.y1 {
        return 0.0;
    }
    let iw = a.x2.min(b.x2) - a.x1.max(b.x1);
    let ih = a.y2.min(b.y2) - a.y1.max(b.y1);
    let inter = iw * ih;
    let area = |r: &BBox| {
        if r.x2 < r.x1 || r.y2 < r.y1 {
            0.0
        } else {
            r.width() * r.height()
        }
    };
    let union = area(a) + area(b) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// Per class: candidates scoring above `score_threshold`, the `top_k` best,
/// greedy suppression of IoU > `iou_threshold`; then the `keep_top_k` best
/// over all classes.
///
/// `boxes` holds `anchors` boxes; `scores` is `[classes, anchors]`, row-major.
pub fn multiclass_nms(
    boxes: &[[f32; 4]],
    scores: &[f32],
    classes: usize,
    p: &NmsSettings,
) -> Vec<Detection> {
    let anchors = boxes.len();
    let mut out = Vec::new();
    for c in 0..classes {
        let row = &scores[c * anchors..(c + 1) * anchors];
        let mut order: Vec<usize> = (0..anchors)
            .filter(|&i| row[i] > p.score_threshold)
            .collect();
        // Stable, like Paddle's, so equal scores keep anchor order.
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        order.truncate(p.top_k);
        let mut kept: Vec<BBox> = Vec::new();
        for i in order {
            let b = BBox::new(boxes[i][0], boxes[i][1], boxes[i][2], boxes[i][3]);
            if kept.iter().all(|k| iou(k, &b) <= p.iou_threshold) {
                kept.push(b);
                out.push(Detection {
                    bbox: b,
                    score: row[i],
                    class_id: c as i32,
                });
            }
        }
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out.truncate(p.keep_top_k);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_has_no_plus_one() {
        let a = BBox::new(0.0, 0.0, 10.0, 10.0);
        let b = BBox::new(5.0, 0.0, 15.0, 10.0);
        assert!((iou(&a, &b) - 50.0 / 150.0).abs() < 1e-6);
        assert_eq!(iou(&a, &BBox::new(11.0, 0.0, 20.0, 10.0)), 0.0);
    }

    #[test]
    fn suppresses_overlaps_per_class_and_keeps_the_best() {
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 0.0, 11.0, 10.0],
            [50.0, 50.0, 60.0, 60.0],
            [0.0, 0.0, 10.0, 10.0],
        ];
        // Two classes; anchor 1 overlaps anchor 0 (IoU 0.82) in class 0.
        let scores = [0.9, 0.8, 0.7, 0.01, /* class 1 */ 0.0, 0.0, 0.0, 0.6];
        let p = NmsSettings::default();
        let out = multiclass_nms(&boxes, &scores, 2, &p);
        let got: Vec<(i32, f32)> = out.iter().map(|d| (d.class_id, d.score)).collect();
        assert_eq!(got, vec![(0, 0.9), (0, 0.7), (1, 0.6)]);
        let out = multiclass_nms(&boxes, &scores, 2, &NmsSettings { keep_top_k: 2, ..p });
        assert_eq!(out.len(), 2);
        let out = multiclass_nms(
            &boxes,
            &scores,
            2,
            &NmsSettings {
                iou_threshold: 0.9,
                ..p
            },
        );
        assert_eq!(out.len(), 4);
    }
}

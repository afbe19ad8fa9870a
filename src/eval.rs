//! Accuracy against labelled scenes: the whole pipeline (object-level recall
//! and precision) and the recogniser alone on ground-truth crops
//! (recall@1, recall@5, mAP), overall and per label.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::InputSettings;
use crate::error::{Error, Result};
use crate::geometry::BBox;
use crate::input;
use crate::pipeline::Pipeline;

/// A labelled object: `file<TAB>label<TAB>x1<TAB>y1<TAB>x2<TAB>y2`.
#[derive(Debug, Clone, PartialEq)]
pub struct TruthObject {
    /// Image file name (matched against the scene's file name).
    pub file: String,
    /// Product label.
    pub label: String,
    /// Box in pixels.
    pub bbox: BBox,
}

/// Reads a truth file. Labels may contain spaces; fields are tab-separated.
pub fn read_truth(path: &Path) -> Result<Vec<TruthObject>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let bad = || {
            Error::gallery(
                path,
                format!(
                    "line {}: expected file, label, x1, y1, x2, y2 separated by tabs: {line:?}",
                    i + 1
                ),
            )
        };
        if f.len() < 6 {
            return Err(bad());
        }
        let n = f.len();
        let c: Vec<f32> = f[n - 4..]
            .iter()
            .map(|v| v.trim().parse::<f32>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| bad())?;
        out.push(TruthObject {
            file: f[0].to_string(),
            label: f[1..n - 4].join("\t"),
            bbox: BBox::new(c[0], c[1], c[2], c[3]),
        });
    }
    Ok(out)
}

/// Plain IoU (no +1), for matching results to truth.
pub fn iou(a: &BBox, b: &BBox) -> f32 {
    let w = (a.x2.min(b.x2) - a.x1.max(b.x1)).max(0.0);
    let h = (a.y2.min(b.y2) - a.y1.max(b.y1)).max(0.0);
    let inter = w * h;
    let union = a.width() * a.height() + b.width() * b.height() - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// Average precision of one ranked label list against the `relevant` count of
/// gallery items that carry the right label.
pub fn average_precision(ranked: &[bool], relevant: usize) -> f64 {
    if relevant == 0 {
        return 0.0;
    }
    let mut hits = 0;
    let mut sum = 0.0;
    for (i, &rel) in ranked.iter().enumerate() {
        if rel {
            hits += 1;
            sum += hits as f64 / (i + 1) as f64;
        }
    }
    sum / relevant as f64
}

/// Per-label figures.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LabelRow {
    /// Truth objects with this label.
    pub objects: usize,
    /// Of those, found by the pipeline with the right label (IoU ≥ 0.5).
    pub found: usize,
    /// Pipeline results with this label that matched no such object.
    pub false_positives: usize,
    /// Ground-truth crops whose best match has this label (of `objects`).
    pub rec_top1: usize,
}

/// The whole evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Scenes evaluated.
    pub images: usize,
    /// Truth objects in them.
    pub objects: usize,
    /// Pipeline results.
    pub results: usize,
    /// Results matching a truth object of the same label at IoU ≥ 0.5.
    pub true_positives: usize,
    /// true_positives / objects.
    pub recall: f64,
    /// true_positives / results.
    pub precision: f64,
    /// Recogniser alone on truth crops: best match has the right label.
    pub recall_at_1: f64,
    /// Right label among the 5 best matches.
    pub recall_at_5: f64,
    /// Mean average precision over the full ranking of the gallery.
    pub map: f64,
    /// By label.
    pub per_label: BTreeMap<String, LabelRow>,
    /// Scenes that could not be read, with why.
    pub errors: Vec<String>,
}

/// Evaluates `scenes` against `truth`. Objects of images not in `scenes` are ignored.
pub fn evaluate(
    pipeline: &mut Pipeline,
    scenes: &[PathBuf],
    truth: &[TruthObject],
    limits: &InputSettings,
) -> Result<EvalReport> {
    let gallery_labels: Vec<String> = pipeline
        .gallery()
        .items()
        .map(|i| i.label.clone())
        .collect();
    let k_all = pipeline.gallery().len();
    let pool = pipeline.frame_pool();
    let mut per_label: BTreeMap<String, LabelRow> = BTreeMap::new();
    let (mut objects, mut results, mut tp, mut r1, mut r5) = (0, 0, 0, 0, 0);
    let mut ap_sum = 0.0;
    let mut errors = Vec::new();
    let mut images = 0;
    for path in scenes {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let objs: Vec<&TruthObject> = truth.iter().filter(|t| t.file == name).collect();
        let frame = match input::read_in(path, limits, &pool) {
            Ok(f) => f,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        images += 1;
        objects += objs.len();
        for o in &objs {
            per_label.entry(o.label.clone()).or_default().objects += 1;
        }

        // Whole pipeline: greedy matching, best result first.
        let found = pipeline.recognize(std::slice::from_ref(&frame))?.remove(0);
        results += found.results.len();
        let mut taken = vec![false; objs.len()];
        for r in &found.results {
            let b = BBox::new(
                r.bbox[0] as f32,
                r.bbox[1] as f32,
                r.bbox[2] as f32,
                r.bbox[3] as f32,
            );
            let best = objs
                .iter()
                .enumerate()
                .filter(|(i, o)| !taken[*i] && o.label == r.rec_docs)
                .map(|(i, o)| (i, iou(&b, &o.bbox)))
                .filter(|(_, v)| *v >= 0.5)
                .max_by(|a, b| a.1.total_cmp(&b.1));
            match best {
                Some((i, _)) => {
                    taken[i] = true;
                    tp += 1;
                    per_label.entry(r.rec_docs.clone()).or_default().found += 1;
                }
                None => {
                    per_label
                        .entry(r.rec_docs.clone())
                        .or_default()
                        .false_positives += 1
                }
            }
        }

        // Recogniser alone on the truth crops.
        let crops: Vec<_> = objs
            .iter()
            .map(|o| o.bbox.clip(frame.width, frame.height).to_crop())
            .collect();
        let ranked = pipeline.rank_crops(&frame, &crops, k_all)?;
        for (o, list) in objs.iter().zip(ranked) {
            let rel: Vec<bool> = list.iter().map(|(l, _)| *l == o.label).collect();
            if rel.first() == Some(&true) {
                r1 += 1;
                per_label.entry(o.label.clone()).or_default().rec_top1 += 1;
            }
            if rel.iter().take(5).any(|&x| x) {
                r5 += 1;
            }
            ap_sum += average_precision(
                &rel,
                gallery_labels.iter().filter(|l| **l == o.label).count(),
            );
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(EvalReport {
        images,
        objects,
        results,
        true_positives: tp,
        recall: ratio(tp, objects),
        precision: ratio(tp, results),
        recall_at_1: ratio(r1, objects),
        recall_at_5: ratio(r5, objects),
        map: if objects == 0 {
            0.0
        } else {
            ap_sum / objects as f64
        },
        per_label,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_precision_of_rankings() {
        assert_eq!(average_precision(&[true, false, false], 1), 1.0);
        assert_eq!(average_precision(&[false, true], 1), 0.5);
        assert_eq!(average_precision(&[false, false], 1), 0.0);
        assert!(
            (average_precision(&[true, false, true], 2) - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12
        );
    }

    #[test]
    fn truth_lines_keep_labels_with_spaces_and_name_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("truth.tsv");
        std::fs::write(&p, "a.jpg\tgreen tea\t1\t2\t30\t40\n").unwrap();
        let t = read_truth(&p).unwrap();
        assert_eq!(t[0].label, "green tea");
        assert_eq!(t[0].bbox, BBox::new(1.0, 2.0, 30.0, 40.0));
        std::fs::write(&p, "a.jpg\tx\t1\t2\tthirty\t40\n").unwrap();
        assert!(read_truth(&p).unwrap_err().to_string().contains("line 1"));
        assert!(
            (iou(
                &BBox::new(0.0, 0.0, 10.0, 10.0),
                &BBox::new(5.0, 0.0, 15.0, 10.0)
            ) - 1.0 / 3.0)
                .abs()
                < 1e-6
        );
    }
}

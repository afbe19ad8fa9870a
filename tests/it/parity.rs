//! Parity with PaddleClas's own PP-ShiTu pipeline on the same weights
//! (tests/data/reference, made by paddleclas 2.6.0 on Paddle 3.3.1).
//!
//! Tolerances (see issue 2): OpenCV builds differ by ±1 grey level in
//! INTER_CUBIC, which moves detector scores by up to ~1.4e-3 and boxes by
//! ~0.3 px. An image whose answer sits on a threshold may then legitimately
//! differ; such images are listed, not failed. Everything else must match.

use crate::common::*;
use shitu_edge::detect::nms::iou as det_iou;
use shitu_edge::geometry::{BBox, CropBox};
use shitu_edge::input;
use shitu_edge::preprocess::Backend;
use shitu_edge::search::Method;
use shitu_edge::{Pipeline, Recognized};

const BOX_PX: f32 = 1.0;
const DET_SCORE: f32 = 2e-3;
const FEATURE_COS: f64 = 0.9999;
const RESULT_PX: i32 = 2;
const REC_SCORE: f32 = 5e-3;
/// Largest box movement seen between OpenCV builds on the same image (issue 2).
const OPENCV_BOX_DRIFT: f32 = 0.3;

struct Outcome {
    checked: usize,
    borderline: Vec<String>,
    failures: Vec<String>,
}

fn plus_one_iou(a: &[i32; 4], b: &[i32; 4]) -> f32 {
    let (a, b) = (a.map(|v| v as f32), b.map(|v| v as f32));
    let area = |r: [f32; 4]| (r[2] - r[0] + 1.0) * (r[3] - r[1] + 1.0);
    let w = (a[2].min(b[2]) - a[0].max(b[0]) + 1.0).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1]) + 1.0).max(0.0);
    w * h / (area(a) + area(b) - w * h)
}

/// Why this image's answer may flip between OpenCV builds, if it may.
fn on_a_threshold(ours: &Recognized, reference: &serde_json::Value) -> Option<String> {
    let s = shitu_edge::Settings::default();
    for d in &ours.detections {
        if (d.score - s.detector.threshold).abs() < DET_SCORE {
            return Some(format!(
                "detector score {:.4} within {DET_SCORE} of {}",
                d.score, s.detector.threshold
            ));
        }
    }
    for d in reference["detections"].as_array().into_iter().flatten() {
        let score = d["score"].as_f64().unwrap_or(0.0) as f32;
        if (score - s.detector.threshold).abs() < DET_SCORE {
            return Some(format!(
                "reference detector score {score:.4} within {DET_SCORE} of {}",
                s.detector.threshold
            ));
        }
    }
    // Crops are truncated to integers: a corner within the boxes' tolerance of
    // an integer can truncate one pixel apart, which moves that crop's score.
    // Only counted when the truncated crop really differs from the reference's.
    let ref_crops: Vec<Vec<i64>> = reference["crops"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            c["bbox"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect()
        })
        .collect();
    for (i, rd) in reference["detections"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let b = floats(&rd["bbox"]);
        let near = b
            .iter()
            .any(|v| (v - v.round()).abs() < OPENCV_BOX_DRIFT && v.round() != 0.0);
        let ours_crop = ours
            .crops
            .get(i)
            .map(|c| c.to_array().map(i64::from).to_vec());
        if near && ref_crops.get(i) != ours_crop.as_ref() {
            return Some(format!("detection corner {b:?} within {OPENCV_BOX_DRIFT} px of an integer truncates to crop {ours_crop:?}, reference {:?}", ref_crops.get(i)));
        }
    }
    for m in &ours.matches {
        if (m.score - s.search.score_threshold).abs() < REC_SCORE {
            return Some(format!(
                "recognition score {:.4} within {REC_SCORE} of {}",
                m.score, s.search.score_threshold
            ));
        }
    }
    let kept: Vec<&shitu_edge::report::Match> = ours
        .matches
        .iter()
        .filter(|m| m.score >= s.search.score_threshold - REC_SCORE)
        .collect();
    for (i, a) in kept.iter().enumerate() {
        for b in &kept[i + 1..] {
            let iou = plus_one_iou(&a.crop.to_array(), &b.crop.to_array());
            if (iou - s.search.rec_nms_threshold).abs() < 0.01 {
                return Some(format!(
                    "recognition NMS IoU {iou:.4} within 0.01 of {}",
                    s.search.rec_nms_threshold
                ));
            }
        }
    }
    None
}

fn compare(name: &str, ours: &Recognized, r: &serde_json::Value) -> Vec<String> {
    let mut errs = Vec::new();
    // Detector boxes and scores.
    let ref_dets = r["detections"].as_array().expect("detections");
    if ref_dets.len() != ours.detections.len() {
        errs.push(format!(
            "{name}: {} detections, reference {}",
            ours.detections.len(),
            ref_dets.len()
        ));
    } else {
        for (i, (d, rd)) in ours.detections.iter().zip(ref_dets).enumerate() {
            let b = floats(&rd["bbox"]);
            let score = rd["score"].as_f64().unwrap() as f32;
            let diff = [
                d.bbox.x1 - b[0],
                d.bbox.y1 - b[1],
                d.bbox.x2 - b[2],
                d.bbox.y2 - b[3],
            ]
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()));
            if diff > BOX_PX {
                errs.push(format!(
                    "{name}: detection {i} box {:?} vs reference {b:?} ({diff:.2} px)",
                    d.bbox
                ));
            }
            if (d.score - score).abs() > DET_SCORE {
                errs.push(format!(
                    "{name}: detection {i} score {} vs reference {score}",
                    d.score
                ));
            }
        }
    }
    // Crop features, where the crop box is the same.
    let dim = ours.features.len() / ours.crops.len().max(1);
    for rc in r["crops"].as_array().expect("crops") {
        let b: Vec<i32> = rc["bbox"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap() as i32)
            .collect();
        let crop = CropBox {
            x1: b[0],
            y1: b[1],
            x2: b[2],
            y2: b[3],
        };
        if let Some(j) = ours.crops.iter().position(|c| *c == crop) {
            let cos = cosine(
                &ours.features[j * dim..(j + 1) * dim],
                &floats(&rc["feature"]),
            );
            if cos < FEATURE_COS {
                errs.push(format!(
                    "{name}: crop {b:?} feature cosine {cos:.6} < {FEATURE_COS}"
                ));
            }
        }
    }
    // Final results: same labels, boxes within 2 px, scores within 5e-3.
    let ref_results = r["results"].as_array().expect("results");
    if ref_results.len() != ours.results.len() {
        errs.push(format!(
            "{name}: {} results {:?}, reference {}",
            ours.results.len(),
            ours.results,
            r["results"]
        ));
    } else {
        for rr in ref_results {
            let b: Vec<i32> = rr["bbox"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap() as i32)
                .collect();
            let label = rr["rec_docs"].as_str().unwrap();
            let score = rr["rec_scores"].as_f64().unwrap() as f32;
            let found = ours.results.iter().find(|o| {
                o.rec_docs == label
                    && o.bbox
                        .iter()
                        .zip(&b)
                        .all(|(x, y)| (x - y).abs() <= RESULT_PX)
            });
            match found {
                None => errs.push(format!(
                    "{name}: reference result {label} {b:?} missing from {:?}",
                    ours.results
                )),
                Some(o) if (o.rec_scores - score).abs() > REC_SCORE => errs.push(format!(
                    "{name}: {label} score {} vs reference {score}",
                    o.rec_scores
                )),
                Some(_) => {}
            }
        }
    }
    errs
}

fn run_parity(det_model: &str, batch: usize, backend: Backend) -> Outcome {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = settings(det_model);
    s.detector.max_batch = batch;
    // The gallery is built with the same backend, as `shitud gallery build` would.
    s.preprocess.backend = backend;
    build_gallery(&mut s, tmp.path(), Method::Flat);
    let mut pipeline = Pipeline::open(&s).expect("pipeline opens");
    let reference = reference();
    let queries = reference["queries"].as_array().unwrap();
    let mut out = Outcome {
        checked: 0,
        borderline: Vec::new(),
        failures: Vec::new(),
    };
    for group in queries.chunks(batch) {
        let frames: Vec<_> = group
            .iter()
            .map(|q| {
                input::read(&query_path(q["image"].as_str().unwrap()), &s.input)
                    .expect("query decodes")
            })
            .collect();
        let results = pipeline.recognize(&frames).expect("recognize");
        for (q, ours) in group.iter().zip(&results) {
            let name = q["image"].as_str().unwrap();
            assert!(q["reference_error"].is_null(), "{name}: reference failed");
            out.checked += 1;
            let errs = compare(name, ours, q);
            if errs.is_empty() {
                continue;
            }
            match on_a_threshold(ours, q) {
                Some(why) => out
                    .borderline
                    .push(format!("{name} ({why}): {}", errs.join("; "))),
                None => out.failures.extend(errs),
            }
        }
    }
    out
}

fn assert_parity(det_model: &str, batch: usize, backend: Backend) {
    let out = run_parity(det_model, batch, backend);
    eprintln!(
        "{det_model} (batch {batch}, preprocess.backend = {backend}): {} queries checked, {} on a threshold, {} failures",
        out.checked,
        out.borderline.len(),
        out.failures.len()
    );
    for b in &out.borderline {
        eprintln!("  on a threshold, not failed: {b}");
    }
    assert_eq!(out.checked, 85);
    assert!(
        out.failures.is_empty(),
        "parity failures:\n{}",
        out.failures.join("\n")
    );
    // A handful may sit on a threshold; most flipping would mean a real difference.
    assert!(
        out.borderline.len() <= 8,
        "too many borderline images: {}",
        out.borderline.len()
    );
}

#[test]
fn parity_with_nms_in_graph_detector() {
    assert_parity("det_nms.onnx", 1, Backend::Opencv);
}

#[test]
fn parity_with_pre_nms_detector_batched() {
    assert_parity("det_prenms.onnx", 4, Backend::Opencv);
}

/// The GPU kernels' source, compiled for the host, in place of `cv::resize`,
/// on every reference query. The backend only changes the pixels; the two
/// detector forms differ after the model, so one form (the batched one)
/// checks it (each run of the 85 queries costs about two CPU minutes).
#[test]
fn parity_with_kernels_backend_pre_nms_detector_batched() {
    assert_parity("det_prenms.onnx", 4, Backend::Kernels);
}

#[test]
fn gallery_features_match_the_reference() {
    let mut s = settings("det_prenms.onnx");
    let mut embedder = shitu_edge::embed::Embedder::open(&s).unwrap();
    s.embedder.max_batch = 1;
    let reference = reference();
    for g in reference["gallery"].as_array().unwrap() {
        let name = g["image"].as_str().unwrap();
        let frame = input::read(&data("images/gallery").join(name), &s.input).unwrap();
        let whole = CropBox::whole(frame.width, frame.height);
        let f = embedder.embed(&[(&frame, whole)]).unwrap();
        let cos = cosine(&f, &floats(&g["feature"]));
        assert!(cos >= FEATURE_COS, "{name}: gallery feature cosine {cos}");
        let mut kernels = s.clone();
        kernels.preprocess.backend = Backend::Kernels;
        let k = shitu_edge::embed::Embedder::open(&kernels)
            .unwrap()
            .embed(&[(&frame, whole)])
            .unwrap();
        let cos = cosine(&k, &floats(&g["feature"]));
        assert!(
            cos >= FEATURE_COS,
            "{name}: gallery feature cosine {cos} with the kernels backend"
        );
    }
}

#[test]
fn detector_iou_is_scale_invariant_as_the_graph_assumes() {
    // The graph divides by scale_factor before NMS, we after; IoU must not care.
    let (a, b) = (
        BBox::new(10.0, 10.0, 50.0, 30.0),
        BBox::new(20.0, 15.0, 60.0, 40.0),
    );
    let scale = |r: BBox| BBox::new(r.x1 / 0.6, r.y1 / 1.7, r.x2 / 0.6, r.y2 / 1.7);
    assert!((det_iou(&a, &b) - det_iou(&scale(a), &scale(b))).abs() < 1e-6);
}

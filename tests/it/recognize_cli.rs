//! `shitud recognize` and `gallery build` as a user runs them: output format,
//! annotated images, config file versus flags, whole-image policy.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;
use shitu_edge::config::WholeImage;
use shitu_edge::input;
use shitu_edge::search::Method;
use shitu_edge::Pipeline;

fn shitud(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shitud"))
        .args(args)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .output()
        .expect("shitud runs")
}

fn gallery(dir: &Path, method: &str) -> String {
    let out = dir.join(format!("gallery-{method}"));
    let o = shitud(&[
        "gallery",
        "build",
        "--method",
        method,
        "--list",
        data("images/gallery.txt").to_str().unwrap(),
        "--image-root",
        data("images").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out.to_str().unwrap().to_string()
}

#[test]
fn recognizes_scenes_draws_them_and_ends_with_a_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gallery(tmp.path(), "Flat");
    let draw = tmp.path().join("drawn");
    let scenes = ["scene_00000.jpg", "scene_00001.jpg", "scene_00002.jpg"]
        .map(|s| data("images/scenes").join(s));
    let mut args = vec!["recognize", "--index", &g, "--draw", draw.to_str().unwrap()];
    args.extend(scenes.iter().map(|p| p.to_str().unwrap()));
    let o = shitud(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    // scene_00001 holds one product, leuvenA (tests/data/images/scenes/truth.tsv).
    let r = &lines[1]["results"];
    assert_eq!(r.as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r[0]["rec_docs"], "leuvenA");
    assert!(lines[1]["timings_ms"]["det_infer"].as_f64().unwrap() > 0.0);
    let s = &lines[3]["summary"];
    assert_eq!(
        (s["images"].as_u64(), s["failed"].as_u64()),
        (Some(3), Some(0))
    );
    for name in ["scene_00000.jpg", "scene_00001.jpg", "scene_00002.jpg"] {
        let drawn = draw.join(name);
        let frame = input::read(&drawn, &Default::default()).expect("annotated image decodes");
        let original = input::read(&data("images/scenes").join(name), &Default::default()).unwrap();
        assert_eq!(
            (frame.width, frame.height),
            (original.width, original.height)
        );
    }
}

#[test]
fn config_file_supplies_settings_and_flags_win() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gallery(tmp.path(), "Flat");
    let cfg = tmp.path().join("shitu.toml");
    // A score threshold no match can reach: the config alone empties the answer.
    std::fs::write(
        &cfg,
        format!("[search]\nindex = \"{g}\"\nscore_threshold = 1.5\n"),
    )
    .unwrap();
    let scene = data("images/scenes/scene_00001.jpg");
    let o = shitud(&[
        "--config",
        cfg.to_str().unwrap(),
        "recognize",
        scene.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(
        first["results"].as_array().unwrap().len(),
        0,
        "config's threshold applies: {first}"
    );

    // A flag beats the file: an index that does not exist is reported as such.
    let o = shitud(&[
        "--config",
        cfg.to_str().unwrap(),
        "recognize",
        "--index",
        "/nonexistent/gallery",
        scene.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/gallery"));
}

#[test]
fn whole_image_policy_controls_the_extra_crop() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = settings("det_prenms.onnx");
    build_gallery(&mut s, tmp.path(), Method::Flat);
    let mut frames: Vec<_> = ["scene_00001.jpg", "scene_00007.jpg"]
        .iter()
        .map(|n| input::read(&data("images/scenes").join(n), &s.input).unwrap())
        .collect();
    // An empty belt: nothing for the detector to find.
    let blank = opencv::core::Mat::new_rows_cols_with_default(
        480,
        640,
        opencv::core::CV_8UC3,
        opencv::core::Scalar::all(128.0),
    )
    .unwrap();
    frames.push(input::Frame::from_rgb("blank", blank).unwrap());
    let mut crops = Vec::new();
    for policy in [WholeImage::Always, WholeImage::WhenEmpty, WholeImage::Never] {
        s.detector.whole_image = policy;
        let mut p = Pipeline::open(&s).unwrap();
        let out = p.recognize(&frames).unwrap();
        crops.push(
            out.iter()
                .map(|r| (r.detections.len(), r.crops.len()))
                .collect::<Vec<_>>(),
        );
    }
    assert!(
        crops[0].iter().any(|&(dets, _)| dets == 0) && crops[0].iter().any(|&(dets, _)| dets > 0),
        "{crops:?}"
    );
    for (i, &(dets, always)) in crops[0].iter().enumerate() {
        assert_eq!(always, dets + 1, "always adds the whole frame");
        assert_eq!(
            crops[1][i].1,
            if dets == 0 { 1 } else { dets },
            "when_empty adds it only without detections"
        );
        assert_eq!(crops[2][i].1, dets, "never adds it");
    }
}

#[test]
fn every_index_method_gives_the_flat_answer_on_the_demo_gallery() {
    let tmp = tempfile::tempdir().unwrap();
    let scene = data("images/scenes/scene_00004.jpg");
    let answers: Vec<String> = ["Flat", "HNSW32", "IVF"]
        .iter()
        .map(|m| {
            let g = gallery(tmp.path(), m);
            let o = shitud(&["recognize", "--index", &g, scene.to_str().unwrap()]);
            assert!(o.status.success());
            let v: serde_json::Value =
                serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap())
                    .unwrap();
            v["results"].to_string()
        })
        .collect();
    assert_eq!(answers[0], answers[1], "HNSW32");
    // IVF with nprobe 8 over 3 lists searches everything: exact.
    assert_eq!(answers[0], answers[2], "IVF");
}

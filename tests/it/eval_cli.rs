//! `shitud eval` on the demo scenes.

use std::process::Command;

use crate::common::*;

#[test]
fn eval_reports_pipeline_and_recogniser_figures_as_json() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = settings("det_prenms.onnx");
    build_gallery(&mut s, tmp.path(), shitu_edge::search::Method::Flat);
    let scenes: Vec<String> = (0..12)
        .map(|i| {
            data(&format!("images/scenes/scene_{i:05}.jpg"))
                .display()
                .to_string()
        })
        .collect();
    let mut args = vec![
        "eval".to_string(),
        "--json".into(),
        "--index".into(),
        tmp.path().display().to_string(),
        "--truth".into(),
        data("images/scenes/truth.tsv").display().to_string(),
    ];
    args.extend(scenes);
    let o = Command::new(env!("CARGO_BIN_EXE_shitud"))
        .args(&args)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let truth = std::fs::read_to_string(data("images/scenes/truth.tsv")).unwrap();
    let objects = truth
        .lines()
        .filter(|l| (0..12).any(|i| l.starts_with(&format!("scene_{i:05}.jpg"))))
        .count();
    assert_eq!(r["images"], 12);
    assert_eq!(r["objects"].as_u64().unwrap() as usize, objects);
    let tp = r["true_positives"].as_u64().unwrap();
    assert!(tp > 0 && tp <= r["results"].as_u64().unwrap() && tp as usize <= objects);
    assert!((r["recall"].as_f64().unwrap() - tp as f64 / objects as f64).abs() < 1e-9);
    // The demo recogniser was trained on these products: on truth crops it must get every one right.
    assert_eq!(r["recall_at_1"], 1.0);
    assert_eq!(r["map"], 1.0);
    let per_label = r["per_label"].as_object().unwrap();
    let sum: u64 = per_label
        .values()
        .map(|v| v["objects"].as_u64().unwrap())
        .sum();
    assert_eq!(sum as usize, objects);
}

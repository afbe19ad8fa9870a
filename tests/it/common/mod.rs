//! Helpers shared by the integration tests. They use the project's own demo
//! models (engines/demo) and test data (tests/data), never ../shared.

#![allow(dead_code)]

pub mod mqtt;

use std::path::{Path, PathBuf};

use shitu_edge::config::Settings;
use shitu_edge::embed::Embedder;
use shitu_edge::enroll::{self, BuildOptions, OnBadImage};
use shitu_edge::search::Method;

/// The checkout's root: `SHITU_TEST_ROOT` where the test binary runs away
/// from the tree it was built in (scripts/gpu-check.sh on the GPU machine).
pub fn root() -> PathBuf {
    std::env::var_os("SHITU_TEST_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Lays out the installed files under `dest` with `scripts/install.sh`,
/// with this build's `shitud`, as a box or an image gets them.
pub fn install_into(dest: &Path) {
    let out = std::process::Command::new("bash")
        .arg(root().join("scripts/install.sh"))
        .env("DESTDIR", dest)
        .env("SHITUD", env!("CARGO_BIN_EXE_shitud"))
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "install.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A file under tests/data.
pub fn data(rel: &str) -> PathBuf {
    root().join("tests/data").join(rel)
}

/// Default settings pointing at the demo models, with the given detector file.
pub fn settings(det_model: &str) -> Settings {
    let mut s = Settings::default();
    s.detector.model = root().join("engines/demo").join(det_model);
    s.embedder.model = root().join("engines/demo/rec.onnx");
    s
}

/// Builds the demo gallery (Flat) into `out` and points `s` at it.
pub fn build_gallery(s: &mut Settings, out: &Path, method: Method) {
    let mut embedder = Embedder::open(s).expect("recogniser loads");
    let opts = BuildOptions {
        list: data("images/gallery.txt"),
        image_root: data("images"),
        out: out.to_path_buf(),
        method,
        on_bad_image: OnBadImage::Fail,
        input: s.input.clone(),
    };
    enroll::build(&mut embedder, &s.embedder.model, &opts, |_, _| {}).expect("gallery builds");
    s.search.index = out.to_path_buf();
}

/// The reference outputs of PaddleClas's pipeline.
pub fn reference() -> serde_json::Value {
    let text =
        std::fs::read_to_string(data("reference/paddleclas_scenes.json")).expect("reference json");
    serde_json::from_str(&text).expect("reference parses")
}

/// Where a query image lives in tests/data.
pub fn query_path(name: &str) -> PathBuf {
    if name.contains("__") {
        data("images/variants").join(name)
    } else {
        data("images/scenes").join(name)
    }
}

/// The demo conveyor scenes (`images/scenes/*.jpg`), sorted.
pub fn scene_paths() -> Vec<PathBuf> {
    let mut names: Vec<_> = std::fs::read_dir(data("images/scenes"))
        .expect("tests/data/images/scenes")
        .map(|e| e.expect("a scene's directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    names.sort();
    names
}

/// Cosine of two equal-length vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// A JSON array of numbers as f32s.
pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// Normalised planar floats back to the 8-bit levels they were looked up
/// from (`norm`'s table per channel): how preprocessing outputs are compared
/// with OpenCV's 8-bit images and written for the GPU checks.
pub fn levels(v: &[f32], norm: &shitu_edge::preprocess::Normalizer) -> Vec<u8> {
    level_lookup(v, norm)
        .into_iter()
        .map(|l| l.expect("a value from the table"))
        .collect()
}

/// [`levels`], with `None` for a value that is in no table entry (a kernel
/// that wrote something else), for checks that report rather than stop.
pub fn level_lookup(v: &[f32], norm: &shitu_edge::preprocess::Normalizer) -> Vec<Option<u8>> {
    let table = norm.table();
    let plane = v.len() / 3;
    v.iter()
        .enumerate()
        .map(|(i, x)| {
            let c = (i / plane) % 3;
            table[c * 256..(c + 1) * 256]
                .iter()
                .position(|t| t == x)
                .map(|l| l as u8)
        })
        .collect()
}

/// A valid PNG of 1x1 pixel: decodable, but under the 8 px a side that
/// shitud accepts.
pub const PNG_1X1: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 0x0D, 0x49, 0x48, 0x44, 0x52, 0, 0, 0,
    1, 0, 0, 0, 1, 8, 2, 0, 0, 0, 0x90, 0x77, 0x53, 0xDE, 0, 0, 0, 0x0C, 0x49, 0x44, 0x41, 0x54,
    0x08, 0xD7, 0x63, 0xF8, 0xCF, 0xC0, 0, 0, 0x03, 0x01, 0x01, 0, 0x18, 0xDD, 0x8D, 0xB0, 0, 0, 0,
    0, 0x49, 0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
];

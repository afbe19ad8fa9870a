//! `shitud gallery import-paddleclas`: PaddleClas's own index, read safely,
//! gives the same answers as a gallery shitu-edge builds itself; broken
//! inputs are refused and leave nothing behind.

use std::path::Path;

use crate::common::*;
use shitu_edge::input;
use shitu_edge::search::paddleclas_import::{import, ModelStamp};
use shitu_edge::search::{FaissIndex, Method};
use shitu_edge::Pipeline;

fn stamp() -> ModelStamp {
    let s = settings("det_prenms.onnx");
    let e = shitu_edge::embed::Embedder::open(&s).unwrap();
    ModelStamp {
        sha256: e.model_sha256().to_string(),
        file: "rec.onnx".into(),
        dim: e.dim(),
    }
}

#[test]
fn imported_paddleclas_index_answers_like_our_own_build() {
    let tmp = tempfile::tempdir().unwrap();
    let ours_dir = tmp.path().join("ours");
    let theirs_dir = tmp.path().join("imported");
    let mut s = settings("det_prenms.onnx");
    build_gallery(&mut s, &ours_dir, Method::Flat);
    import(&data("reference/paddleclas_index"), &theirs_dir, &stamp()).expect("import");

    let mut ours = Pipeline::open(&s).unwrap();
    s.search.index = theirs_dir.clone();
    let mut theirs = Pipeline::open(&s).unwrap();
    let reference = reference();
    let mut compared = 0;
    for q in reference["queries"].as_array().unwrap() {
        let name = q["image"].as_str().unwrap();
        let frame = input::read(&query_path(name), &s.input).unwrap();
        let a = ours
            .recognize(std::slice::from_ref(&frame))
            .unwrap()
            .remove(0);
        let b = theirs
            .recognize(std::slice::from_ref(&frame))
            .unwrap()
            .remove(0);
        // Same crops, so the matches line up one to one.
        assert_eq!(a.crops, b.crops);
        for (ma, mb) in a.matches.iter().zip(&b.matches) {
            assert_eq!(ma.label, mb.label, "{name}: crop {:?}", ma.crop);
            // Gallery features from Paddle versus ONNX Runtime: cosine >= 0.9999 (tests/it/parity.rs).
            assert!(
                (ma.score - mb.score).abs() < 5e-3,
                "{name}: {} vs {}",
                ma.score,
                mb.score
            );
        }
        let labels = |r: &shitu_edge::Recognized| {
            r.results
                .iter()
                .map(|x| (x.bbox, x.rec_docs.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(labels(&a), labels(&b), "{name}");
        compared += 1;
    }
    assert_eq!(compared, 85);
}

/// A PaddleClas-style directory with the real index and the given pickle.
fn dir_with(tmp: &Path, pickle: &[u8], index: Option<&[u8]>) -> std::path::PathBuf {
    let d = tmp.join("paddle");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("id_map.pkl"), pickle).unwrap();
    let real = std::fs::read(data("reference/paddleclas_index/vector.index")).unwrap();
    std::fs::write(d.join("vector.index"), index.unwrap_or(&real)).unwrap();
    d
}

fn refused(from: &Path, out: &Path) -> String {
    let e = import(from, out, &stamp())
        .expect_err("must be refused")
        .to_string();
    assert!(
        !out.exists(),
        "a refused import leaves nothing: {}",
        out.display()
    );
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("import"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    e
}

#[test]
fn pickle_that_is_not_a_dict_of_int_to_str_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // {'a': 'b'}
    let e = refused(
        &dir_with(
            tmp.path(),
            b"\x80\x02}q\x00X\x01\x00\x00\x00aX\x01\x00\x00\x00bs.",
            None,
        ),
        &out,
    );
    assert!(
        e.contains("id_map.pkl") && e.contains("dict of int -> str"),
        "{e}"
    );
    // os.system('echo pwned'), as pickle.dumps writes it: refused, never run.
    let evil = b"\x80\x04\x95\x25\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94\x8c\x0aecho pwned\x94\x85\x94R\x94.";
    let e = refused(&dir_with(tmp.path(), evil, None), &out);
    assert!(e.contains("refusing to load posix.system"), "{e}");
}

#[test]
fn index_of_the_wrong_dimension_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let v: Vec<f32> = (0..16).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect();
    let small = tmp.path().join("small.index");
    FaissIndex::build(Method::Flat, 16, &v, &[0])
        .unwrap()
        .save(&small)
        .unwrap();
    // {0: 'a.jpg\ta'}
    let d = dir_with(
        tmp.path(),
        b"\x80\x02}q\x00K\x00X\x07\x00\x00\x00a.jpg\taq\x01s.",
        Some(&std::fs::read(&small).unwrap()),
    );
    let e = refused(&d, &tmp.path().join("out"));
    assert!(
        e.contains("vector.index") && e.contains("holds 16-d vectors") && e.contains("512-d"),
        "{e}"
    );
}

#[test]
fn truncated_index_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let real = std::fs::read(data("reference/paddleclas_index/vector.index")).unwrap();
    let pkl = std::fs::read(data("reference/paddleclas_index/id_map.pkl")).unwrap();
    let d = dir_with(tmp.path(), &pkl, Some(&real[..real.len() / 2]));
    let e = refused(&d, &tmp.path().join("out"));
    assert!(
        e.contains("vector.index") && e.contains("not a readable faiss index"),
        "{e}"
    );
}

#[test]
fn ids_that_disagree_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // {0: 'a.jpg\ta'} against the real 25-item index.
    let d = dir_with(
        tmp.path(),
        b"\x80\x02}q\x00K\x00X\x07\x00\x00\x00a.jpg\taq\x01s.",
        None,
    );
    let e = refused(&d, &tmp.path().join("out"));
    assert!(
        e.contains("25 ids") && e.contains("1 ids") && e.contains("disagree"),
        "{e}"
    );
}

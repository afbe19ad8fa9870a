//! Bad input gets a clear error that names it; the rest still goes through.
//! These drive the real `shitud` binary, models and faiss.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;

fn shitud(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shitud"))
        .args(args)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .output()
        .expect("shitud runs")
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// Builds the demo gallery into `dir/gallery` with the CLI.
fn gallery(dir: &Path) -> PathBuf {
    let out = dir.join("gallery");
    let o = shitud(&[
        "gallery",
        "build",
        "--list",
        data("images/gallery.txt").to_str().unwrap(),
        "--image-root",
        data("images").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        o.status.success(),
        "gallery build failed: {}",
        text(&o.stderr)
    );
    out
}

fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    text(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

#[test]
fn broken_images_are_named_and_the_others_still_go_through() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gallery(tmp.path());
    let good = data("images/scenes/scene_00001.jpg");
    let bytes = std::fs::read(&good).unwrap();
    let truncated = tmp.path().join("truncated.jpg");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let garbage = tmp.path().join("notes.jpg");
    std::fs::write(&garbage, "this is not an image").unwrap();
    let tiny = tmp.path().join("tiny.png");
    std::fs::write(&tiny, PNG_1X1).unwrap();
    let missing = tmp.path().join("missing.jpg");
    let other = data("images/scenes/scene_00002.jpg");
    let paths = [&good, &truncated, &garbage, &tiny, &missing, &other];
    let mut args = vec!["recognize", "--index", g.to_str().unwrap()];
    args.extend(paths.iter().map(|p| p.to_str().unwrap()));
    let o = shitud(&args);
    assert_eq!(
        o.status.code(),
        Some(1),
        "some images failed, so exit 1; stderr: {}",
        text(&o.stderr)
    );
    let lines = json_lines(&o.stdout);
    assert_eq!(
        lines.len(),
        paths.len() + 1,
        "one line per image plus the summary"
    );
    for (line, path) in lines.iter().zip(paths) {
        assert_eq!(
            line["image"],
            path.to_str().unwrap(),
            "lines stay in input order"
        );
    }
    assert!(lines[0]["results"]
        .as_array()
        .is_some_and(|r| !r.is_empty()));
    assert!(lines[5]["results"]
        .as_array()
        .is_some_and(|r| !r.is_empty()));
    let err = |i: usize| {
        lines[i]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("line {i} should be an error: {}", lines[i]))
            .to_string()
    };
    assert!(
        err(1).contains("truncated.jpg") && err(1).contains("truncated JPEG"),
        "{}",
        err(1)
    );
    assert!(
        err(2).contains("notes.jpg") && err(2).contains("not an image"),
        "{}",
        err(2)
    );
    assert!(
        err(3).contains("tiny.png") && err(3).contains("1x1 is too small"),
        "{}",
        err(3)
    );
    assert!(
        err(4).contains("missing.jpg") && err(4).contains("cannot read"),
        "{}",
        err(4)
    );
    assert_eq!(lines[6]["summary"]["failed"], 4);
    assert_eq!(lines[6]["summary"]["images"], 6);
}

#[test]
fn images_over_the_pixel_limit_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gallery(tmp.path());
    let scene = data("images/scenes/scene_00001.jpg");
    let o = shitud(&[
        "recognize",
        "--index",
        g.to_str().unwrap(),
        "--max-pixels",
        "100000",
        scene.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let lines = json_lines(&o.stdout);
    let e = lines[0]["error"].as_str().unwrap();
    assert!(
        e.contains("scene_00001.jpg") && e.contains("over the limit of 100000 (input.max_pixels)"),
        "{e}"
    );
}

#[test]
fn gallery_list_with_missing_files_skips_or_fails_by_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("list.txt");
    std::fs::write(
        &list,
        "gallery/apple.jpg\tapple\ngallery/nope.jpg\tghost product\ngallery/box.png\tbox\n",
    )
    .unwrap();
    let root = data("images");
    let out = tmp.path().join("g");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "gallery",
            "build",
            "--list",
            list.to_str().unwrap(),
            "--image-root",
            root.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let strict = shitud(
        &args(&["--fail-on-missing"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(strict.status.code(), Some(2));
    let e = text(&strict.stderr);
    assert!(
        e.contains("list.txt") && e.contains("line 2") && e.contains("nope.jpg"),
        "{e}"
    );
    assert!(
        !out.join("manifest.json").exists(),
        "a failed build writes nothing"
    );

    let lenient = shitud(&args(&[]).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        lenient.status.code(),
        Some(1),
        "skipping is reported in the exit status"
    );
    let e = text(&lenient.stderr);
    assert!(e.contains("skipped line 2 (gallery/nope.jpg)"), "{e}");
    let info = shitud(&["gallery", "info", "--index", out.to_str().unwrap()]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["items"], 2);
    assert_eq!(info["manifest"]["count"], 2);
}

#[test]
fn empty_gallery_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("list.txt");
    std::fs::write(&list, "# nothing yet\n").unwrap();
    let out = tmp.path().join("g");
    let o = shitud(&[
        "gallery",
        "build",
        "--list",
        list.to_str().unwrap(),
        "--image-root",
        tmp.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("list.txt: the list has no images"),
        "{}",
        text(&o.stderr)
    );

    // Every listed image unreadable: nothing to index either.
    std::fs::write(&list, "a.jpg\ta\n").unwrap();
    let o = shitud(&[
        "gallery",
        "build",
        "--list",
        list.to_str().unwrap(),
        "--image-root",
        tmp.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("the gallery would be empty"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn gallery_of_another_model_is_refused_with_how_to_rebuild() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gallery(tmp.path());
    // Stand in for "built with another model" exactly as the guard sees it: the recorded hash.
    let path = g.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["model_sha256"] = "0f".repeat(32).into();
    m["model_file"] = "general_PPLCNetV2_base_pretrained_v1.0.onnx".into();
    std::fs::write(&path, m.to_string()).unwrap();
    let scene = data("images/scenes/scene_00001.jpg");
    let o = shitud(&[
        "recognize",
        "--index",
        g.to_str().unwrap(),
        scene.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = text(&o.stderr);
    assert!(
        e.contains("general_PPLCNetV2_base_pretrained_v1.0.onnx")
            && e.contains("rebuild the gallery")
            && e.contains("shitud gallery build"),
        "{e}"
    );
}

#[test]
fn wrong_model_for_a_stage_names_both_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gallery(tmp.path());
    let scene = data("images/scenes/scene_00001.jpg");
    let o = shitud(&[
        "recognize",
        "--index",
        g.to_str().unwrap(),
        "--det-model",
        "engines/demo/rec.onnx",
        scene.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = text(&o.stderr);
    assert!(
        e.contains("rec.onnx") && e.contains("[?,3,224,224]") && e.contains("[N,3,640,640]"),
        "{e}"
    );
    let o = shitud(&[
        "gallery",
        "build",
        "--rec-model",
        "engines/demo/det_prenms.onnx",
        "--list",
        "x",
        "--image-root",
        ".",
        "--out",
        "/tmp/x",
    ]);
    let e = text(&o.stderr);
    assert!(
        e.contains("det_prenms.onnx") && e.contains("[?,3,640,640]") && e.contains("[N,3,224,224]"),
        "{e}"
    );
}

#[test]
fn missing_or_wrong_onnx_runtime_is_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gallery(tmp.path());
    let scene = data("images/scenes/scene_00001.jpg");
    let run = |lib: &str| {
        Command::new(env!("CARGO_BIN_EXE_shitud"))
            .args([
                "recognize",
                "--index",
                g.to_str().unwrap(),
                scene.to_str().unwrap(),
            ])
            .current_dir(root())
            .env("ORT_DYLIB_PATH", lib)
            .output()
            .unwrap()
    };
    let o = run("/nonexistent/libonnxruntime.so");
    assert_eq!(o.status.code(), Some(2));
    let e = text(&o.stderr);
    assert!(
        e.contains("/nonexistent/libonnxruntime.so does not exist")
            && e.contains("scripts/setup.sh"),
        "{e}"
    );

    // A library that is not ONNX Runtime at all.
    let libc = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib/aarch64-linux-gnu/libc.so.6",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists());
    if let Some(libc) = libc {
        let e = text(&run(libc).stderr);
        assert!(e.contains("OrtGetApiBase"), "{e}");
    }

    // An ONNX Runtime that is too old: a tiny library reporting version 1.10.0.
    let src = tmp.path().join("old.c");
    std::fs::write(&src, "static const char* v(void){return \"1.10.0\";}\nstatic const void* api(unsigned x){(void)x;return 0;}\nstruct B{const void*(*a)(unsigned);const char*(*v)(void);};\nstatic struct B b={api,v};\nconst struct B* OrtGetApiBase(void){return &b;}\n").unwrap();
    let lib = tmp.path().join("libonnxruntime.so");
    let cc = Command::new("cc")
        .args([
            "-shared",
            "-fPIC",
            "-o",
            lib.to_str().unwrap(),
            src.to_str().unwrap(),
        ])
        .status();
    if cc.is_ok_and(|s| s.success()) {
        let e = text(&run(lib.to_str().unwrap()).stderr);
        assert!(e.contains("1.10.0") && e.contains("1.17 or newer"), "{e}");
    } else {
        panic!("no C compiler to build the fake old runtime (build-essential is installed by scripts/setup.sh)");
    }
}

fn gallery_state(g: &Path) -> (String, Vec<u8>) {
    let list = shitud(&["gallery", "list", "--index", g.to_str().unwrap()]);
    assert!(list.status.success(), "{}", text(&list.stderr));
    (
        text(&list.stdout),
        std::fs::read(g.join("wal.log")).unwrap_or_default(),
    )
}

#[test]
fn add_with_an_unreadable_image_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gallery(tmp.path());
    let before = gallery_state(&g);
    let bad = tmp.path().join("broken.jpg");
    std::fs::write(&bad, b"\xFF\xD8\xFF\xE0 not really").unwrap();
    let good = data("images/gallery/apple.jpg");
    let o = shitud(&[
        "gallery",
        "add",
        "--index",
        g.to_str().unwrap(),
        "--label",
        "x",
        good.to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = text(&o.stderr);
    assert!(
        e.contains("broken.jpg") && e.contains("nothing was added"),
        "{e}"
    );
    assert!(o.stdout.is_empty(), "nothing may be acknowledged");
    assert_eq!(gallery_state(&g), before);
}

#[test]
fn remove_of_an_unknown_id_or_label_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gallery(tmp.path());
    let before = gallery_state(&g);
    let o = shitud(&[
        "gallery",
        "remove",
        "--index",
        g.to_str().unwrap(),
        "--id",
        "3",
        "--id",
        "4000",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("no item with id 4000; nothing was removed"),
        "{}",
        text(&o.stderr)
    );
    let o = shitud(&[
        "gallery",
        "remove",
        "--index",
        g.to_str().unwrap(),
        "--label",
        "no such product",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("no item has label \"no such product\""),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(gallery_state(&g), before);
}

#[test]
fn truncated_snapshot_index_is_refused_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gallery(tmp.path());
    let index = g.join("snap-0/vector.index");
    let bytes = std::fs::read(&index).unwrap();
    std::fs::write(&index, &bytes[..bytes.len() / 3]).unwrap();
    let scene = data("images/scenes/scene_00001.jpg");
    let o = shitud(&[
        "recognize",
        "--index",
        g.to_str().unwrap(),
        scene.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = text(&o.stderr);
    assert!(
        e.contains("vector.index") && e.contains("not a readable faiss index"),
        "{e}"
    );
}

#[test]
fn gallery_emptied_by_removals_is_refused_for_recognition() {
    let tmp = tempfile::tempdir().unwrap();
    let g = gallery(tmp.path());
    let ids: Vec<String> = (0..25).map(|i| i.to_string()).collect();
    let mut args = vec!["gallery", "remove", "--index", g.to_str().unwrap()];
    for id in &ids {
        args.extend(["--id", id.as_str()]);
    }
    assert!(shitud(&args).status.success());
    let list = shitud(&["gallery", "list", "--index", g.to_str().unwrap()]);
    assert!(
        list.status.success() && list.stdout.is_empty(),
        "an empty gallery still lists"
    );
    let scene = data("images/scenes/scene_00001.jpg");
    let o = shitud(&[
        "recognize",
        "--index",
        g.to_str().unwrap(),
        scene.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("the gallery is empty"),
        "{}",
        text(&o.stderr)
    );
}

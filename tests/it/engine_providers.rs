//! Execution providers and the TensorRT engine cache on a box without a GPU
//! build of ONNX Runtime (CI): the failure names what to install, fallback
//! runs the same pipeline on the CPU and says so, and `shitud engines`
//! lists and prunes a real cache folder. On a GPU box with a GPU build of
//! ONNX Runtime, the no-provider checks print why they were skipped.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::*;
use ort::ep::ExecutionProvider as _;
use shitu_edge::config::Provider;
use shitu_edge::engine::engine_cache::{BatchProfile, CacheKey, EngineCache};
use shitu_edge::engine::sha256_file;
use shitu_edge::gpu::Platform;
use shitu_edge::input;
use shitu_edge::search::Method;
use shitu_edge::Pipeline;

/// Says why a test did not run, past the test harness's output capture
/// (it only captures `print!`/`eprint!`), so `cargo test` shows it.
macro_rules! skip {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

fn runtime_has(provider: Provider) -> bool {
    // Loading the runtime first: `is_available` asks the loaded library.
    shitu_edge::engine::runtime::environment(None).expect("ONNX Runtime loads");
    match provider {
        Provider::Cuda => ort::ep::CUDA::is_available().unwrap_or(false),
        Provider::Tensorrt => ort::ep::TensorRT::is_available().unwrap_or(false),
        Provider::Cpu => true,
    }
}

fn shitud(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shitud"))
        .args(args)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .output()
        .expect("shitud runs")
}

#[test]
fn a_runtime_without_the_provider_is_named_with_what_to_install() {
    if runtime_has(Provider::Tensorrt) {
        skip!("skipped: this ONNX Runtime has the TensorRT provider");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut s = settings("det_prenms.onnx");
    build_gallery(&mut s, &tmp.path().join("g"), Method::Flat);
    for provider in [Provider::Tensorrt, Provider::Cuda] {
        s.engine.provider = provider;
        s.engine.fallback = false;
        s.engine.engine_cache_dir = tmp.path().join("engines");
        let msg = Pipeline::open(&s)
            .expect_err("no GPU provider here")
            .to_string();
        let name = if provider == Provider::Tensorrt {
            "TensorRT"
        } else {
            "CUDA"
        };
        for needle in [
            "engines/demo/",
            &format!("without the {name} execution provider"),
            "onnxruntime-gpu",
            "engine.ort_library",
            "engine.fallback = true would run it",
        ] {
            assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
        }
    }
}

#[test]
fn fallback_runs_the_same_pipeline_on_the_cpu_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cpu = settings("det_prenms.onnx");
    build_gallery(&mut cpu, &tmp.path().join("g"), Method::Flat);
    let mut gpu = cpu.clone();
    gpu.engine.provider = Provider::Tensorrt;
    gpu.engine.fallback = true;
    gpu.engine.engine_cache_dir = tmp.path().join("engines");
    let mut fell_back = Pipeline::open(&gpu).expect("fallback opens the pipeline");
    let has_gpu = shitu_edge::gpu::probe(0).is_ok();
    if runtime_has(Provider::Cuda) && has_gpu {
        skip!(
            "skipped the CPU-fallback check: this box runs CUDA (providers {:?})",
            fell_back.providers()
        );
        return;
    }
    assert_eq!(fell_back.providers(), (Provider::Cpu, Provider::Cpu));
    let mut plain = Pipeline::open(&cpu).unwrap();
    let frame = input::read(&data("images/scenes/scene_00002.jpg"), &cpu.input).unwrap();
    let a = plain.recognize(std::slice::from_ref(&frame)).unwrap();
    let b = fell_back.recognize(std::slice::from_ref(&frame)).unwrap();
    assert_eq!(format!("{:?}", a[0].results), format!("{:?}", b[0].results));
    assert!(!a[0].results.is_empty());

    // The command line says it loudly: an ERROR line naming both providers.
    let o = shitud(&[
        "recognize",
        "--provider",
        "cuda",
        "--index",
        cpu.search.index.to_str().unwrap(),
        data("images/scenes/scene_00002.jpg").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("ERROR")
            && err.contains("running on cpu, NOT the configured cuda (engine.fallback = true)"),
        "{err}"
    );
}

/// `search.device = "cuda"` gives the CPU's answers: on a GPU box from GPU
/// memory, here from faiss after an error in the log.
#[test]
fn gallery_search_on_cuda_answers_like_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cpu = settings("det_prenms.onnx");
    build_gallery(&mut cpu, &tmp.path().join("g"), Method::Flat);
    let mut cuda = cpu.clone();
    cuda.search.device = shitu_edge::config::SearchDevice::Cuda;
    let frames: Vec<_> = ["scene_00001.jpg", "scene_00002.jpg", "scene_00007.jpg"]
        .iter()
        .map(|n| input::read(&data("images/scenes").join(n), &cpu.input).unwrap())
        .collect();
    let a = Pipeline::open(&cpu).unwrap().recognize(&frames).unwrap();
    let mut on_cuda = Pipeline::open(&cuda).expect("a GPU that cannot be used falls back");
    if !on_cuda.gallery().searcher().contains("CUDA") {
        skip!(
            "searched on the CPU: no CUDA device here ({})",
            on_cuda.gallery().searcher()
        );
    }
    let b = on_cuda.recognize(&frames).unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.results.len(), y.results.len());
        for (r, s) in x.results.iter().zip(&y.results) {
            assert_eq!((&r.rec_docs, r.bbox), (&s.rec_docs, s.bbox));
            assert!((r.rec_scores - s.rec_scores).abs() < 1e-4, "{r:?} vs {s:?}");
        }
    }
}

fn fake_build(cache: &EngineCache, key: &CacheKey, role: &str, model: &Path) {
    let build = cache.begin(key, role, model).unwrap();
    let dir = build.dir().to_path_buf();
    std::fs::write(dir.join("model.engine"), vec![7u8; 4096]).unwrap();
    cache.finish(build, Duration::from_secs(95)).unwrap();
}

/// `engines list` and `engines prune` on a cache folder holding entries for
/// the configured models and for a model an update replaced. Engine files are
/// placeholders: no TensorRT here, and these commands never open them.
#[test]
fn engines_list_and_prune_judge_the_cache_against_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("engines");
    let cache = EngineCache::open(&dir).unwrap();
    let orin = Platform {
        gpu: "Orin (nvgpu)".into(),
        compute_capability: (8, 7),
        sm_count: 16,
        cuda_driver: 12060,
        tensorrt: Some("10.3.0".into()),
        integrated: true,
    };
    let profile = BatchProfile {
        min: 1,
        opt: 1,
        max: 1,
        side: 640,
    };
    // The key of the ONNX Runtime `engines list` loads, so that only the
    // model decides what is current here.
    shitu_edge::engine::runtime::environment(None).unwrap();
    let ort = shitu_edge::engine::runtime::build_id();
    let key = |sha: &str, profile: BatchProfile| {
        CacheKey::new(sha, true, profile, &orin, &ort, "trt_fp16_enable=1")
    };
    let det = root().join("engines/demo/det_prenms.onnx");
    let rec = root().join("engines/demo/rec.onnx");
    let current_det = key(&sha256_file(&det).unwrap(), profile);
    let current_rec = key(
        &sha256_file(&rec).unwrap(),
        BatchProfile {
            min: 1,
            opt: 6,
            max: 16,
            side: 224,
        },
    );
    let replaced = key(&"0".repeat(64), profile);
    fake_build(&cache, &current_det, "detector", &det);
    fake_build(&cache, &current_rec, "embedder", &rec);
    fake_build(&cache, &replaced, "embedder", Path::new("/old/rec.onnx"));
    std::fs::create_dir(dir.join("leftover")).unwrap();

    let conf = tmp.path().join("conf.toml");
    std::fs::write(
        &conf,
        format!("[engine]\nengine_cache_dir = {:?}\n", dir.to_str().unwrap()),
    )
    .unwrap();
    let c = conf.to_str().unwrap();

    let o = shitud(&["-c", c, "engines", "list"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (id, status) in [
        (current_det.id(), "current"),
        (current_rec.id(), "current"),
        (replaced.id(), "stale: model no longer configured"),
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&id))
            .unwrap_or_else(|| panic!("{id} not listed:\n{text}"));
        assert!(
            line.ends_with(status)
                && line.contains("Orin (nvgpu) (8.7)")
                && line.contains("10.3.0")
                && line.contains("1m35s"),
            "{line}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("leftover") && l.ends_with("stale: not in the manifest")),
        "{text}"
    );
    assert!(text.contains("2 stale"), "{text}");

    let o = shitud(&["-c", c, "engines", "list", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("list --json is JSON");
    let rows = json["engines"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows.iter().filter(|r| r["stale"] == true).count(), 2);
    let rec_row = rows
        .iter()
        .find(|r| r["id"] == current_rec.id().as_str())
        .unwrap();
    assert_eq!(rec_row["entry"]["key"]["profile"]["opt"], 6);
    assert_eq!(rec_row["entry"]["bytes"], 4096);

    let o = shitud(&["-c", c, "engines", "prune", "--dry-run"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("would remove 2 engine(s)"));
    assert!(dir.join(replaced.id()).exists());

    let o = shitud(&["-c", c, "engines", "prune"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.contains("removed 2 engine(s)"),
        "{text}"
    );
    assert!(!dir.join(replaced.id()).exists() && !dir.join("leftover").exists());
    assert!(dir.join(current_det.id()).join("model.engine").exists());
    assert_eq!(cache.manifest().entries.len(), 2);
}

#[test]
fn engines_build_checks_the_models_on_the_cpu_and_refuses_to_fall_back() {
    let o = shitud(&["engines", "build"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("detector: engines/demo/det_prenms.onnx loads on cpu")
            && out.contains("embedder: engines/demo/rec.onnx loads on cpu"),
        "{out}"
    );
    if runtime_has(Provider::Tensorrt) {
        skip!("skipped the refusal check: this ONNX Runtime has the TensorRT provider");
        return;
    }
    let o = shitud(&["engines", "build", "--provider", "tensorrt"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("never falls back") && err.contains("without the TensorRT execution provider"),
        "{err}"
    );
}

/// The engine reads its input where the preprocessing wrote it
/// (`TensorRefMut::from_raw`) and writes into an output allocated once per
/// batch size: on the CPU provider, the same calls as on the GPU, on host
/// memory. Same numbers as the copying path at every batch size, with the
/// buffers reused; what does not fit is an error, not a read past the end.
#[test]
fn engine_reads_inputs_in_place_and_writes_preallocated_outputs() {
    use shitu_edge::engine::{Arena, Engine, Feed, Place};
    let s = settings("det_prenms.onnx");
    let profile = BatchProfile {
        min: 1,
        opt: 1,
        max: 4,
        side: 224,
    };
    let mut engine = Engine::open("embedder", &s.embedder.model, &s.engine, 0, profile).unwrap();
    assert_eq!(engine.input_place(), Place::Host);
    let input = engine.inputs()[0].name.clone();
    let output = engine.outputs()[0].name.clone();
    let plane = 3 * 224 * 224;
    let mut arena = Arena::host(4 * plane);
    let mut out = engine.output_arena(&output, Place::Host).unwrap();
    for n in [3, 1, 4, 3] {
        let data: Vec<f32> = (0..n * plane)
            .map(|i| ((i * 31 + n * 7) % 255) as f32 / 127.0 - 1.0)
            .collect();
        arena.host_mut().unwrap()[..n * plane].copy_from_slice(&data);
        let array = ndarray::ArrayD::from_shape_vec(vec![n, 3, 224, 224], data).unwrap();
        let copied = engine
            .run("test", vec![(input.as_str(), Feed::Array(array.view()))])
            .unwrap();
        engine
            .run_into(
                "test",
                vec![(
                    input.as_str(),
                    Feed::Arena(&mut arena, vec![n, 3, 224, 224]),
                )],
                &mut out,
                n,
            )
            .unwrap();
        assert_eq!(out.host(n).unwrap(), &copied[0].data[..], "batch of {n}");
    }
    let err = engine
        .run(
            "test",
            vec![(
                input.as_str(),
                Feed::Arena(&mut arena, vec![5, 3, 224, 224]),
            )],
        )
        .unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
    assert!(
        engine.output_arena(&output, Place::Cuda(0)).is_err(),
        "an engine on the CPU cannot write to a GPU"
    );
}

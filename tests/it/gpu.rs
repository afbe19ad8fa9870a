//! The GPU code against the CPU code, on a GPU:
//! - the CUDA flat index against faiss's exact Flat index on random unit
//!   vectors: same neighbours (ties aside), after adds and removes, and saved
//!   as a faiss file;
//! - the preprocessing kernels against the OpenCV path's 8-bit levels, read
//!   from the reference file `scripts/gpu-check.sh --pack` writes with
//!   Debian's OpenCV: identical, as the host build of the same source is
//!   (tests/it/preprocess_kernels.rs).
//!
//!
//! Two benchmarks (`--ignored`): the GPU search against faiss Flat, and the
//! preprocessing kernels against the device's copy bandwidth and OpenCV.
//!
//! Without a CUDA device each test prints why it skipped;
//! `scripts/gpu-check.sh` runs them where there is one.

use crate::common::levels;
use opencv::prelude::*;
use shitu_edge::config::GpuPrecision;
use shitu_edge::search::cuda_flat::{CudaFlat, MAX_K};
use shitu_edge::search::{fp16, FaissIndex, Index, Method, Neighbor};

/// Says why a test did not run, past the test harness's output capture
/// (it only captures `print!`/`eprint!`), so `cargo test` shows it.
macro_rules! skip {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

const DIM: usize = 512;

/// Reproducible random unit vectors (the benchmark's), so a failure reproduces.
fn unit_vectors(n: usize, seed: u64) -> Vec<f32> {
    shitu_edge::bench::random_unit_vectors(n, DIM, seed)
}

fn gpu_or_skip(precision: GpuPrecision, dim: usize) -> Option<CudaFlat> {
    match CudaFlat::new(0, precision, dim) {
        Ok(g) => Some(g),
        Err(e) => {
            skip!("skipped: no CUDA device ({e})");
            None
        }
    }
}

fn preprocess_or_skip() -> Option<shitu_edge::preprocess::cuda::GpuPreprocess> {
    match shitu_edge::preprocess::cuda::GpuPreprocess::new(0) {
        Ok(g) => Some(g),
        Err(e) => {
            skip!("skipped: no CUDA device ({e})");
            None
        }
    }
}

/// Same ids in the same order, except where neighbouring scores tie within
/// float rounding (then the order between them is free).
fn assert_same(gpu: &[Vec<Neighbor>], cpu: &[Vec<Neighbor>], what: &str) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: query count");
    for (q, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        assert_eq!(g.len(), c.len(), "{what}: query {q}");
        for (j, (a, b)) in g.iter().zip(c).enumerate() {
            assert!(
                (a.score - b.score).abs() < 1e-4,
                "{what}: query {q} rank {j}: {a:?} vs {b:?}"
            );
            let tied = c
                .iter()
                .any(|o| o.id != b.id && (o.score - b.score).abs() < 1e-5);
            assert!(
                a.id == b.id || tied,
                "{what}: query {q} rank {j}: {a:?} vs {b:?}"
            );
        }
    }
}

#[test]
fn gpu_flat_search_matches_faiss_flat() {
    search_parity(GpuPrecision::Fp32);
}

/// fp16 against faiss on the same vectors rounded to fp16 on the host: the
/// products of two halves are exact in fp32, so only the order of the sums
/// differs, and the same tight tolerance holds.
#[test]
fn gpu_flat_fp16_search_matches_faiss_on_the_rounded_vectors() {
    search_parity(GpuPrecision::Fp16);
}

fn search_parity(precision: GpuPrecision) {
    let Some(mut gpu) = gpu_or_skip(precision, DIM) else {
        return;
    };
    // What the GPU computes with: the vectors as stored.
    let stored = |v: &[f32]| -> Vec<f32> {
        match precision {
            GpuPrecision::Fp32 => v.to_vec(),
            GpuPrecision::Fp16 => v.iter().map(|&x| fp16::to_f32(fp16::from_f32(x))).collect(),
        }
    };
    let n = 20_000;
    let vectors = unit_vectors(n, 7);
    let ids: Vec<i64> = (0..n as i64).map(|i| i * 3 + 11).collect();
    gpu.add(&vectors, &ids).unwrap();
    let mut cpu = FaissIndex::build(Method::Flat, DIM, &stored(&vectors), &ids).unwrap();
    assert_eq!(gpu.len(), n);

    for (nq, k) in [(1, 1), (1, 5), (6, 5), (16, MAX_K)] {
        let queries = unit_vectors(nq, 1000 + nq as u64);
        assert_same(
            &gpu.search(&queries, k).unwrap(),
            &cpu.search(&stored(&queries), k).unwrap(),
            &format!("{precision:?}: {nq} queries, k {k}"),
        );
    }
    // A stored vector finds itself first; what comes back is exact, fp16 or not.
    let own = gpu.search(&vectors[5 * DIM..6 * DIM], 1).unwrap();
    assert_eq!(own[0][0].id, ids[5]);
    assert_eq!(
        gpu.reconstruct(ids[5]).unwrap(),
        vectors[5 * DIM..6 * DIM].to_vec()
    );

    // Remove 1 % (the last row among them), add new ones: still the same answers.
    let gone: Vec<i64> = ids
        .iter()
        .copied()
        .step_by(100)
        .chain([ids[n - 1]])
        .collect();
    gpu.remove(&gone).unwrap();
    cpu.remove(&gone).unwrap();
    let more = unit_vectors(3000, 99);
    let more_ids: Vec<i64> = (0..3000).map(|i| 1_000_000 + i).collect();
    gpu.add(&more, &more_ids).unwrap();
    cpu.add(&stored(&more), &more_ids).unwrap();
    assert_eq!(gpu.len(), cpu.len());
    let queries = unit_vectors(6, 4242);
    assert_same(
        &gpu.search(&queries, 5).unwrap(),
        &cpu.search(&stored(&queries), 5).unwrap(),
        &format!("{precision:?}: after remove + add"),
    );
    for id in &gone {
        assert!(gpu.reconstruct(*id).is_err(), "removed id {id} still there");
    }
    // The row that filled a hole kept its exact vector.
    assert_eq!(
        gpu.reconstruct(ids[n - 2]).unwrap(),
        vectors[(n - 2) * DIM..(n - 1) * DIM].to_vec()
    );

    // Saved at full precision, whatever the GPU holds.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("vector.index");
    gpu.save(&path).unwrap();
    let (loaded, _) = FaissIndex::load(&path).unwrap().into_ids().unwrap();
    assert_eq!(
        loaded.reconstruct(ids[7]).unwrap(),
        vectors[7 * DIM..8 * DIM].to_vec()
    );
    assert_eq!(
        loaded.reconstruct(more_ids[3]).unwrap(),
        more[3 * DIM..4 * DIM].to_vec()
    );
    assert_eq!(loaded.len(), gpu.len());
}

#[test]
fn gpu_flat_refuses_bad_shapes_and_large_k() {
    let Some(mut gpu) = gpu_or_skip(GpuPrecision::Fp16, 4) else {
        return;
    };
    gpu.add(&[1.0, 0.0, 0.0, 0.0], &[1]).unwrap();
    assert!(gpu.add(&[1.0, 0.0, 0.0], &[2]).is_err());
    assert!(
        gpu.add(&[1.0, 0.0, 0.0, 0.0], &[1]).is_err(),
        "duplicate id"
    );
    assert!(gpu.search(&[1.0, 0.0, 0.0], 1).is_err());
    assert!(gpu
        .search(&[1.0, 0.0, 0.0, 0.0], MAX_K + 1)
        .unwrap_err()
        .to_string()
        .contains("at most"));
    // Fewer vectors than k: every vector, no padding.
    assert_eq!(
        gpu.search(&[1.0, 0.0, 0.0, 0.0], 5).unwrap()[0],
        vec![Neighbor { id: 1, score: 1.0 }]
    );
}

/// GPU search against faiss Flat on the CPU, same run, same vectors: 100 k
/// and 1 M × 512, single queries and batches of 6. Run by
/// `scripts/gpu-check.sh` (`--ignored`); prints a markdown table.
#[test]
#[ignore = "a benchmark: scripts/gpu-check.sh runs it on a GPU machine"]
fn gpu_search_benchmark() {
    use shitu_edge::bench::{bench_index, IndexSweep};
    if gpu_or_skip(GpuPrecision::Fp32, DIM).is_none() {
        return;
    }
    let sweep = IndexSweep {
        nprobe: vec![],
        ef_search: vec![],
        gpu: Some(0),
    };
    println!("| index | n | upload/build s | 1 query p50/p99 µs | 6 queries p50/p99 µs | queries/s (batch 1 / 6) | recall@1 | remove 1 % ms |");
    println!("|---|---|---|---|---|---|---|---|");
    for n in [100_000, 1_000_000] {
        for r in bench_index(n, &[Method::Flat], 120, &sweep, |m| eprintln!("{m}")).unwrap() {
            println!(
                "| {} | {} | {:.2} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.3} | {:.1} |",
                if r.param == "exact" { "faiss Flat (CPU)".to_string() } else { r.param.clone() },
                r.n,
                r.build_s,
                r.search_1_us.p50,
                r.search_1_us.p99,
                r.search_6_us.p50,
                r.search_6_us.p99,
                1e6 / r.search_1_us.p50,
                6e6 / r.search_6_us.p50,
                r.recall_at_1,
                r.remove_1pct_ms
            );
        }
    }
}

#[test]
fn gpu_preprocessing_matches_the_opencv_reference() {
    use shitu_edge::geometry::CropBox;
    use shitu_edge::preprocess::Normalizer;
    let Some(gpu) = preprocess_or_skip() else {
        return;
    };
    let path = std::env::var("SHITU_GPU_REFERENCE")
        .expect("SHITU_GPU_REFERENCE=<file from scripts/gpu-check.sh --pack>");
    let data = std::fs::read(&path).unwrap();
    assert_eq!(
        &data[..5],
        b"SHPR1",
        "{path}: not a preprocessing reference"
    );
    let mut at = 5;
    let mut u32_at = || {
        let v = u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
        at += 4;
        v
    };
    let (dw, dh, dseed) = (u32_at(), u32_at(), u32_at());
    let det_len = 3 * 640 * 640;
    let (rw, rh, rseed, n) = {
        let mut p = 5 + 12 + det_len;
        let mut next = || {
            let v = u32::from_le_bytes(data[p..p + 4].try_into().unwrap());
            p += 4;
            v
        };
        (next(), next(), next(), next() as usize)
    };
    let det_ref = &data[17..17 + det_len];
    let boxes_at = 17 + det_len + 16;
    let crops: Vec<(usize, CropBox)> = (0..n)
        .map(|k| {
            let b: Vec<i32> = (0..4)
                .map(|j| {
                    i32::from_le_bytes(
                        data[boxes_at + 16 * k + 4 * j..boxes_at + 16 * k + 4 * j + 4]
                            .try_into()
                            .unwrap(),
                    )
                })
                .collect();
            (
                0,
                CropBox {
                    x1: b[0],
                    y1: b[1],
                    x2: b[2],
                    y2: b[3],
                },
            )
        })
        .collect();
    let rec_ref = &data[boxes_at + 16 * n..];
    assert_eq!(rec_ref.len(), n * 3 * 224 * 224, "{path}: truncated");

    let level_of = |v: &[f32], norm: &Normalizer| -> Vec<i32> {
        crate::common::level_lookup(v, norm)
            .into_iter()
            .map(|l| l.map_or(-1000, i32::from))
            .collect()
    };
    let worst = |got: &[i32], want: &[u8]| {
        got.iter()
            .zip(want)
            .map(|(g, w)| (g - *w as i32).abs())
            .max()
            .unwrap_or(0)
    };

    let frame = shitu_edge::bench::synthetic_rgb(dw, dh, dseed as u64);
    let up = gpu.upload_raw(&[(&frame, dw, dh)]).unwrap();
    let det = gpu.to_host(&gpu.detector(&up).unwrap()).unwrap();
    let w_det = worst(&level_of(&det, Normalizer::detector()), det_ref);
    eprintln!("detector {dw}x{dh} -> 640 on the GPU: worst {w_det} levels from OpenCV");
    assert_eq!(w_det, 0, "detector: {w_det} levels off");

    let frame = shitu_edge::bench::synthetic_rgb(rw, rh, rseed as u64);
    let up = gpu.upload_raw(&[(&frame, rw, rh)]).unwrap();
    let rec = gpu.to_host(&gpu.embedder(&up, &crops).unwrap()).unwrap();
    let w_rec = worst(&level_of(&rec, Normalizer::embedder()), rec_ref);
    eprintln!("recogniser: {n} crops in one launch on the GPU: worst {w_rec} levels from OpenCV");
    assert_eq!(w_rec, 0, "recogniser: {w_rec} levels off");
}

/// The preprocessing kernels, timed on the device with CUDA events, against
/// the device's own copy bandwidth and the OpenCV path on this machine's CPU,
/// same run. Bytes counted: each frame (or crop) read once, the normalised
/// floats written once. Run by `scripts/gpu-check.sh` (`--ignored`); prints
/// a markdown table for docs/BENCHMARKS.md.
#[test]
#[ignore = "a benchmark: scripts/gpu-check.sh runs it on a GPU machine"]
fn gpu_preprocess_benchmark() {
    use cudarc::driver::sys::CUevent_flags;
    use shitu_edge::bench::{synthetic_frame, synthetic_rgb};
    use shitu_edge::geometry::CropBox;
    use shitu_edge::preprocess;
    use std::time::Instant;
    let Some(gpu) = preprocess_or_skip() else {
        return;
    };
    let stream = gpu.stream().clone();
    // Milliseconds per call on the device's clock, after one warm-up call.
    let device_ms = |iters: u32, f: &mut dyn FnMut()| -> f64 {
        f();
        let start = stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .unwrap();
        for _ in 0..iters {
            f();
        }
        let end = stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .unwrap();
        start.elapsed_ms(&end).unwrap() as f64 / iters as f64
    };
    let cpu_ms = |iters: u32, f: &mut dyn FnMut()| -> f64 {
        f();
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        t.elapsed().as_secs_f64() * 1e3 / iters as f64
    };

    // Read + write of 1 GiB, device to device: the ceiling for a streaming kernel.
    let floats = 256 << 20;
    let src = stream.alloc_zeros::<f32>(floats).unwrap();
    let mut dst = stream.alloc_zeros::<f32>(floats).unwrap();
    let copy_ms = device_ms(20, &mut || stream.memcpy_dtod(&src, &mut dst).unwrap());
    let copy_gbs = 2.0 * (floats * 4) as f64 / (copy_ms * 1e-3) / 1e9;
    drop((src, dst));
    println!("device copy bandwidth (1 GiB read + written): {copy_gbs:.0} GB/s");
    println!("| stage | GPU ms | GB/s | % of copy bandwidth | OpenCV on this CPU, ms | GPU speed-up | target (issue 5, H100) |");
    println!("|---|---|---|---|---|---|---|");
    let row = |what: &str, ms: f64, bytes: usize, cpu: f64, target: &str| {
        let gbs = bytes as f64 / (ms * 1e-3) / 1e9;
        println!(
            "| {what} | {ms:.4} | {gbs:.0} | {:.0} % | {cpu:.2} | {:.0}× | {target} |",
            100.0 * gbs / copy_gbs,
            cpu / ms
        );
    };
    let (w, h) = (1920u32, 1080u32);
    let det_out = 3 * 640 * 640 * 4;

    // One 1080p frame → the detector's input.
    let px = synthetic_rgb(w, h, 1);
    let frames = gpu.upload_raw(&[(&px, w, h)]).unwrap();
    let mut det = stream.alloc_zeros::<f32>(3 * 640 * 640).unwrap();
    let ms = device_ms(200, &mut || gpu.detector_into(&frames, &mut det).unwrap());
    let frame = synthetic_frame(w, h, 1).unwrap();
    let cpu = cpu_ms(10, &mut || {
        drop(preprocess::detector_input(&[&frame], preprocess::Backend::Opencv).unwrap())
    });
    row(
        "detector: 1080p frame → 640 cubic, normalised CHW",
        ms,
        px.len() + det_out,
        cpu,
        "≤ 0.02 ms (torch 0.103)",
    );

    // Six crops of that frame → the recogniser's input, one launch.
    let boxes: Vec<(usize, CropBox)> = (0..6)
        .map(|i| {
            (
                0,
                CropBox {
                    x1: 40 + 300 * i,
                    y1: 60 + 120 * i,
                    x2: 40 + 300 * i + 180 + 20 * i,
                    y2: 60 + 120 * i + 240,
                },
            )
        })
        .collect();
    let crop_bytes: usize = boxes
        .iter()
        .map(|(_, c)| ((c.x2 - c.x1) * (c.y2 - c.y1) * 3) as usize)
        .sum();
    let rec_out = 6 * 3 * 224 * 224 * 4;
    let crops = gpu.upload_crops(&frames, &boxes).unwrap();
    let mut rec = stream.alloc_zeros::<f32>(6 * 3 * 224 * 224).unwrap();
    let ms = device_ms(200, &mut || {
        gpu.embedder_into(&frames, &crops, &mut rec).unwrap()
    });
    let mut host = vec![0f32; 3 * 224 * 224];
    let cpu = cpu_ms(20, &mut || {
        for (_, c) in &boxes {
            preprocess::embedder_crop(&frame, *c, &mut host, preprocess::Backend::Opencv).unwrap();
        }
    });
    row(
        "recogniser: 6 crops → 224 bilinear, one launch",
        ms,
        crop_bytes + rec_out,
        cpu,
        "≤ 0.03 ms (torch 0.172)",
    );
    let ms = device_ms(200, &mut || {
        drop(gpu.upload_crops(&frames, &boxes).unwrap())
    });
    println!("| (uploading the 6 boxes for that launch) | {ms:.4} | | | | | |");

    // A batch of 16 frames → the detector's input.
    let batch: Vec<(&[u8], u32, u32)> = (0..16).map(|_| (px.as_slice(), w, h)).collect();
    let frames16 = gpu.upload_raw(&batch).unwrap();
    let mut det16 = stream.alloc_zeros::<f32>(16 * 3 * 640 * 640).unwrap();
    let ms = device_ms(50, &mut || {
        gpu.detector_into(&frames16, &mut det16).unwrap()
    });
    let refs: Vec<&shitu_edge::input::Frame> = (0..16).map(|_| &frame).collect();
    let cpu = cpu_ms(2, &mut || {
        drop(preprocess::detector_input(&refs, preprocess::Backend::Opencv).unwrap())
    });
    row(
        "detector: batch of 16 1080p frames",
        ms,
        16 * (px.len() + det_out),
        cpu,
        "≥ 50 % of bandwidth",
    );
}

/// Writes the preprocessing kernels' output, in 8-bit levels, for a set of
/// seeded noise frames and crops, with the inputs, into `$SHITU_KERNEL_OUT`
/// (`index.json`, `*.rgb`, `*.levels`), for `scripts/gpu/compare_cv2.py` to
/// hold against `cv2.resize` where Python's OpenCV is and Rust's is not
/// (the GPU machine). `SHITU_KERNEL_BACKEND=host` writes what the host build
/// of the same source computes, to check the script and the host build on
/// any machine; the default, `gpu`, runs the launches.
#[test]
#[ignore = "run by scripts/gpu-check.sh on a GPU machine (host mode: by hand, docs/GPU.md)"]
fn write_kernel_outputs() {
    use shitu_edge::geometry::CropBox;
    use shitu_edge::preprocess::{self, Backend, Normalizer};
    let out = std::path::PathBuf::from(
        std::env::var("SHITU_KERNEL_OUT").expect("SHITU_KERNEL_OUT=<folder to write>"),
    );
    let on_gpu = std::env::var("SHITU_KERNEL_BACKEND").as_deref() != Ok("host");
    let gpu = if on_gpu {
        let Some(g) = preprocess_or_skip() else {
            return;
        };
        Some(g)
    } else {
        None
    };
    std::fs::create_dir_all(&out).unwrap();
    let mut s = 0x243F_6A88_85A3_08D3u64;
    let mut rnd = move |n: u32| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s % n as u64) as u32
    };
    let mut cases = Vec::new();
    let sizes = [
        (1920, 1080),
        (1280, 720),
        (641, 479),
        (97, 1203),
        (300, 200),
        (1280, 1280),
        (640, 640),
    ];
    for (i, &(w, h)) in sizes.iter().enumerate() {
        let px: Vec<u8> = (0..w * h * 3).map(|_| rnd(256) as u8).collect();
        let name = format!("frame{i}");
        std::fs::write(out.join(format!("{name}.rgb")), &px).unwrap();
        let frame = shitu_edge::input::Frame::from_rgb(
            name.clone(),
            opencv::core::Mat::new_rows_cols_with_data(h as i32, (w * 3) as i32, &px)
                .unwrap()
                .reshape(3, h as i32)
                .unwrap()
                .try_clone()
                .unwrap(),
        )
        .unwrap();
        // The detector: the whole frame, bicubic to 640.
        let det = match &gpu {
            Some(g) => g
                .to_host(&g.detector(&g.upload_raw(&[(&px, w, h)]).unwrap()).unwrap())
                .unwrap(),
            None => {
                preprocess::detector_input(&[&frame], Backend::Kernels)
                    .unwrap()
                    .image
                    .into_raw_vec_and_offset()
                    .0
            }
        };
        std::fs::write(
            out.join(format!("{name}.det.levels")),
            levels(&det, Normalizer::detector()),
        )
        .unwrap();
        cases.push(
            serde_json::json!({"frame": name, "width": w, "height": h, "kind": "cubic", "side": 640,
            "box": [0, 0, w, h], "levels": format!("{name}.det.levels")}),
        );
        // The recogniser: random boxes, the whole frame and a 448 square where it fits, bilinear to 224.
        let mut boxes: Vec<CropBox> = (0..12)
            .map(|_| {
                let (x1, y1) = (rnd(w - 1) as i32, rnd(h - 1) as i32);
                let x2 = x1 + 1 + rnd(w - x1 as u32) as i32;
                let y2 = y1 + 1 + rnd(h - y1 as u32) as i32;
                CropBox {
                    x1,
                    y1,
                    x2: x2.min(w as i32),
                    y2: y2.min(h as i32),
                }
            })
            .collect();
        boxes.push(CropBox::whole(w, h));
        if w >= 448 && h >= 448 {
            boxes.push(CropBox {
                x1: 0,
                y1: 0,
                x2: 448,
                y2: 448,
            });
        }
        let plane = 3 * 224 * 224;
        let rec = match &gpu {
            Some(g) => {
                let up = g.upload_raw(&[(&px, w, h)]).unwrap();
                let crops: Vec<(usize, CropBox)> = boxes.iter().map(|&b| (0, b)).collect();
                g.to_host(&g.embedder(&up, &crops).unwrap()).unwrap()
            }
            None => {
                let mut v = vec![0f32; boxes.len() * plane];
                for (b, o) in boxes.iter().zip(v.chunks_exact_mut(plane)) {
                    preprocess::embedder_crop(&frame, *b, o, Backend::Kernels).unwrap();
                }
                v
            }
        };
        for (k, b) in boxes.iter().enumerate() {
            let file = format!("{name}.rec{k}.levels");
            std::fs::write(
                out.join(&file),
                levels(&rec[k * plane..(k + 1) * plane], Normalizer::embedder()),
            )
            .unwrap();
            cases.push(serde_json::json!({"frame": name, "width": w, "height": h, "kind": "linear", "side": 224,
                "box": b.to_array(), "levels": file}));
        }
    }
    let index = serde_json::json!({"backend": if on_gpu { "gpu" } else { "host" }, "cases": cases});
    std::fs::write(
        out.join("index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
    eprintln!("wrote {} cases into {}", cases.len(), out.display());
}

/// The whole pipeline on the GPU path answers as the CPU pipeline does on
/// the demo scenes: frames staged on the device once a call, the kernels
/// writing the engines' inputs, the search on the device. The provider is
/// `SHITU_TEST_PROVIDER` (`cpu` by default, as scripts/gpu-check.sh runs
/// it; scripts/gpu-ort-check.sh sets `cuda`, where the engine's input and
/// the recogniser's output stay on the device and the features are
/// normalised there).
#[test]
fn gpu_pipeline_answers_like_the_cpu() {
    use crate::common::{build_gallery, root, scene_paths, settings};
    use shitu_edge::config::{PreprocessBackend, Provider, SearchDevice};
    use shitu_edge::engine::Place;
    if let Err(why) = shitu_edge::gpu::Device::open(0) {
        skip!("skipped: no CUDA device ({why})");
        return;
    }
    let demo = root().join("engines/demo");
    assert!(
        demo.join("rec.onnx").is_file() && demo.join("det_prenms.onnx").is_file(),
        "the demo models are not in {}: bring them to the GPU machine as docs/GPU.md says (scripts/gpu-check.sh --models-parts)",
        demo.display()
    );
    let provider: Provider = std::env::var("SHITU_TEST_PROVIDER")
        .unwrap_or_else(|_| "cpu".into())
        .parse()
        .expect("SHITU_TEST_PROVIDER is cpu, cuda or tensorrt");
    let tmp = tempfile::tempdir().unwrap();
    let mut cpu = settings("det_prenms.onnx");
    cpu.preprocess.backend = PreprocessBackend::Kernels;
    build_gallery(&mut cpu, &tmp.path().join("g"), Method::Flat);
    let mut gpu = cpu.clone();
    gpu.preprocess.backend = PreprocessBackend::Cuda;
    gpu.search.device = SearchDevice::Cuda;
    gpu.engine.provider = provider;
    gpu.engine.fallback = false;

    let names = scene_paths();
    let frames: Vec<_> = names
        .iter()
        .map(|p| shitu_edge::input::read(p, &cpu.input).unwrap())
        .collect();
    let want = shitu_edge::Pipeline::open(&cpu)
        .unwrap()
        .recognize(&frames)
        .unwrap();
    let mut p = shitu_edge::Pipeline::open(&gpu).unwrap();
    assert!(
        p.gallery().searcher().contains("CUDA"),
        "{}",
        p.gallery().searcher()
    );
    assert_eq!(p.providers(), (provider, provider));
    if provider != Provider::Cpu {
        assert_eq!(
            p.detector().input_place(),
            Place::Cuda(0),
            "the detector reads its input on the device"
        );
    }
    // Frames decoded into the pipeline's page-locked pool are read where
    // they were decoded (integrated GPU) or copied from there by DMA; the
    // others go through the staging buffer; a batch may mix both.
    let pool = p.frame_pool();
    let read = |path: &std::path::Path, pinned: bool| {
        if pinned {
            let f = shitu_edge::input::read_in(path, &cpu.input, &pool).unwrap();
            assert!(
                f.memory().is_some_and(|m| m.is_pinned()),
                "{}: not decoded into page-locked memory",
                path.display()
            );
            f
        } else {
            shitu_edge::input::read(path, &cpu.input).unwrap()
        }
    };
    let pinned: Vec<_> = names.iter().map(|n| read(n, true)).collect();
    let mixed: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| read(n, i % 2 == 0))
        .collect();
    // Host frames twice (the second call reuses every staging and engine
    // buffer), then page-locked ones twice, then a mixed batch.
    let rounds = [&frames, &frames, &pinned, &pinned, &mixed];
    for (round, frames) in rounds.into_iter().enumerate() {
        let got = p.recognize(frames).unwrap();
        let mut boxes = 0;
        for ((w, g), name) in want.iter().zip(&got).zip(&names) {
            let what = format!("round {round}, {}", name.display());
            if provider == Provider::Cpu {
                // Same engine, same pixels: the same features to the bit.
                assert_eq!(w.crops, g.crops, "{what}");
                assert_eq!(w.features, g.features, "{what}");
            }
            assert_eq!(w.results.len(), g.results.len(), "{what}");
            for (r, s) in w.results.iter().zip(&g.results) {
                assert_eq!(r.rec_docs, s.rec_docs, "{what}");
                let tol = if provider == Provider::Cpu {
                    1e-4
                } else {
                    2e-2
                };
                assert!(
                    (r.rec_scores - s.rec_scores).abs() < tol,
                    "{what}: {r:?} vs {s:?}"
                );
                if provider == Provider::Cpu {
                    assert_eq!(r.bbox, s.bbox, "{what}");
                } else {
                    let off = r.bbox.iter().zip(&s.bbox).map(|(a, b)| (a - b).abs()).max();
                    assert!(off.unwrap_or(0) <= 2, "{what}: {r:?} vs {s:?}");
                }
                boxes += 1;
            }
        }
        eprintln!(
            "round {round}: {} frames, {boxes} answers, as on the CPU ({provider})",
            frames.len()
        );
    }
}

/// The whole frame on the GPU path against the same frames with host
/// preprocessing and host search, same provider, same run: milliseconds a
/// frame, the ratio, and the share of each stage (the target: pre-
/// and post-processing, transfers and search at most 15 % of a frame, the
/// models' inference the rest). The provider is `SHITU_TEST_PROVIDER`.
#[test]
#[ignore = "a benchmark: scripts/gpu-check.sh and scripts/gpu-ort-check.sh run it on a GPU machine"]
fn gpu_pipeline_benchmark() {
    use crate::common::{build_gallery, data, root, settings};
    use shitu_edge::config::{PreprocessBackend, Provider, SearchDevice};
    use std::time::Instant;
    if let Err(why) = shitu_edge::gpu::Device::open(0) {
        skip!("skipped: no CUDA device ({why})");
        return;
    }
    assert!(
        root().join("engines/demo/rec.onnx").is_file(),
        "the demo models are not here (docs/GPU.md)"
    );
    let provider: Provider = std::env::var("SHITU_TEST_PROVIDER")
        .unwrap_or_else(|_| "cpu".into())
        .parse()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut host = settings("det_prenms.onnx");
    host.engine.provider = provider;
    host.engine.fallback = false;
    host.preprocess.backend = PreprocessBackend::Opencv;
    build_gallery(&mut host, &tmp.path().join("g"), Method::Flat);
    let mut gpu = host.clone();
    gpu.preprocess.backend = PreprocessBackend::Cuda;
    gpu.search.device = SearchDevice::Cuda;
    let paths: Vec<_> = (0..8)
        .map(|i| data(&format!("images/scenes/scene_{i:05}.jpg")))
        .collect();
    println!("| path ({provider} provider) | ms a frame | pre % | inference % | post + search % |");
    println!("|---|---|---|---|---|");
    let mut per_frame = Vec::new();
    for (what, s) in [
        ("host preprocessing, faiss search", &host),
        ("GPU path", &gpu),
    ] {
        let mut p = shitu_edge::Pipeline::open(s).unwrap();
        // Each path decodes into its own pool, as the daemon does: the GPU
        // path's frames are page-locked.
        let pool = p.frame_pool();
        let scenes: Vec<_> = paths
            .iter()
            .map(|path| shitu_edge::input::read_in(path, &host.input, &pool).unwrap())
            .collect();
        p.recognize(&scenes).unwrap(); // warm-up: allocations, cuDNN's choices
        let rounds = 10;
        let t = Instant::now();
        let mut stages = [0.0f64; 3];
        for _ in 0..rounds {
            for r in p.recognize(&scenes).unwrap() {
                let m = &r.timings;
                stages[0] += m.det_pre + m.rec_pre;
                stages[1] += m.det_infer + m.rec_infer;
                stages[2] += m.det_post + m.search;
            }
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / (rounds * scenes.len()) as f64;
        let total: f64 = stages.iter().sum();
        println!(
            "| {what} | {ms:.2} | {:.1} | {:.1} | {:.1} |",
            100.0 * stages[0] / total,
            100.0 * stages[1] / total,
            100.0 * stages[2] / total
        );
        per_frame.push(ms);
    }
    println!(
        "GPU path / host path, time a frame: {:.2}",
        per_frame[1] / per_frame[0]
    );
}

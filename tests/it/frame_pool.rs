//! Frames decoded into the pipeline's frame pool (`input::decode_in`) give
//! the answers of frames decoded into OpenCV's own memory, and the pool's
//! reuse is measured against a fresh buffer a frame. On the CPU the pool's
//! memory is ordinary; `gpu::gpu_pipeline_answers_like_the_cpu` checks the
//! page-locked pool on a GPU.

use std::time::Instant;

use shitu_edge::search::Method;

use crate::common::{build_gallery, scene_paths as scenes, settings};

#[test]
fn pooled_frames_get_the_answers_of_plain_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = settings("det_prenms.onnx");
    build_gallery(&mut s, &tmp.path().join("g"), Method::Flat);
    let mut p = shitu_edge::Pipeline::open(&s).unwrap();
    let pool = p.frame_pool();
    let names: Vec<_> = scenes().into_iter().take(6).collect();
    let plain: Vec<_> = names
        .iter()
        .map(|n| shitu_edge::input::read(n, &s.input).unwrap())
        .collect();
    let want = p.recognize(&plain).unwrap();
    // Twice: the second round decodes into the blocks the first gave back.
    for round in 0..2 {
        let pooled: Vec<_> = names
            .iter()
            .map(|n| shitu_edge::input::read_in(n, &s.input, &pool).unwrap())
            .collect();
        for (f, n) in pooled.iter().zip(&names) {
            assert!(f.memory().is_some(), "{}: not in the pool", n.display());
        }
        let got = p.recognize(&pooled).unwrap();
        for ((w, g), n) in want.iter().zip(&got).zip(&names) {
            assert_eq!(w.crops, g.crops, "round {round}, {}", n.display());
            assert_eq!(w.features, g.features, "round {round}, {}", n.display());
            assert_eq!(
                format!("{:?}", w.results),
                format!("{:?}", g.results),
                "round {round}, {}",
                n.display()
            );
        }
    }
}

/// Decoding every demo scene into the pool against into a fresh `Mat`,
/// same run (for docs/BENCHMARKS.md).
#[test]
#[ignore = "a benchmark: cargo test --profile ci --test it -- --ignored frame_pool::bench"]
fn bench_decode_into_the_pool() {
    let s = settings("det_prenms.onnx");
    let pool = shitu_edge::gpu::FramePool::host();
    let bytes: Vec<_> = scenes().iter().map(|n| std::fs::read(n).unwrap()).collect();
    let rounds = 20;
    let mut ms = [0.0f64; 2];
    // Alternating, so that a change in the machine's load falls on both.
    for _ in 0..rounds {
        for (i, into_pool) in [false, true].into_iter().enumerate() {
            let t = Instant::now();
            for b in &bytes {
                let f = if into_pool {
                    shitu_edge::input::decode_in("b", b, &s.input, &pool)
                } else {
                    shitu_edge::input::decode("b", b, &s.input)
                };
                std::hint::black_box(f.unwrap());
            }
            ms[i] += t.elapsed().as_secs_f64() * 1e3;
        }
    }
    let per = |v: f64| v / (rounds * bytes.len()) as f64;
    println!(
        "decode a scene: fresh Mat {:.3} ms, pool {:.3} ms, pool / fresh {:.3} ({} scenes x {rounds})",
        per(ms[0]),
        per(ms[1]),
        ms[1] / ms[0],
        bytes.len()
    );
}

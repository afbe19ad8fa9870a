//! The preprocessing kernels (src/preprocess/kernels.cu) against OpenCV,
//! on any box: build.rs compiles the kernel source for the host, and
//! `preprocess.backend = "kernels"` runs it. On a GPU, tests/it/gpu.rs
//! checks the launches of the same source against the same reference.
//!
//! The kernels reproduce OpenCV 4.x's x86 fixed-point resize, so on x86 the
//! two backends must agree to the bit (the issue allows one level on 0.1 %
//! of cubic values, for OpenCV builds whose SIMD rounds differently, such
//! as ARM's NEON path: there only that is required).

use opencv::core::{Mat, Scalar, CV_8UC3};
use opencv::prelude::*;

use crate::common::levels;
use shitu_edge::geometry::CropBox;
use shitu_edge::input::{self, Frame};
use shitu_edge::preprocess::{self, Backend, Normalizer};

/// The library's synthetic test image, as a decoded frame (through PNG, as any request).
fn frame(w: u32, h: u32, seed: u64) -> Frame {
    use opencv::core::Vector;
    let px = shitu_edge::bench::synthetic_rgb(w, h, seed);
    // BGR for imencode; decode turns it back into RGB.
    let bgr: Vec<u8> = px
        .chunks_exact(3)
        .flat_map(|p| [p[2], p[1], p[0]])
        .collect();
    let m = Mat::new_rows_cols_with_data(h as i32, (w * 3) as i32, &bgr)
        .unwrap()
        .reshape(3, h as i32)
        .unwrap()
        .try_clone()
        .unwrap();
    let mut png = Vector::<u8>::new();
    opencv::imgcodecs::imencode_def(".png", &m, &mut png).unwrap();
    let f = input::decode(
        format!("synthetic-{w}x{h}"),
        png.as_slice(),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(raw(&f), px, "the PNG round trip keeps every pixel");
    f
}

/// Uniform noise: every pixel independent, the hardest case for rounding.
fn noise(w: u32, h: u32, seed: u64) -> Frame {
    let mut m =
        Mat::new_rows_cols_with_default(h as i32, w as i32, CV_8UC3, Scalar::all(0.0)).unwrap();
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    for b in m.data_bytes_mut().unwrap() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        *b = (s >> 24) as u8;
    }
    Frame::from_rgb(format!("noise-{w}x{h}"), m).unwrap()
}

fn raw(f: &Frame) -> Vec<u8> {
    f.rgb().data_bytes().unwrap().to_vec()
}

/// Largest difference, in 8-bit levels, between two normalised tensors of
/// one normaliser, and the share of values that are identical.
fn compare(got: &[f32], want: &[f32], norm: &Normalizer) -> (f32, f64) {
    assert_eq!(got.len(), want.len());
    let table = norm.table();
    let plane = got.len() / 3;
    let step = |c: usize| table[c * 256 + 1] - table[c * 256];
    let mut worst = 0.0f32;
    let mut same = 0usize;
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let c = (i / plane) % 3;
        worst = worst.max((a - b).abs() / step(c));
        same += usize::from(a == b);
    }
    (worst, same as f64 / got.len() as f64)
}

/// What the two backends must agree to: (worst levels, share identical).
fn required() -> (f32, f64) {
    if cfg!(target_arch = "x86_64") {
        (0.0, 1.0)
    } else {
        (1.0, 0.999)
    }
}

#[test]
fn detector_kernel_is_opencv_cubic() {
    let (max_levels, min_same) = required();
    // Down- and up-scaling, odd sizes, a 1080p frame, the identity, a 2x
    // reduction, single pixels and slivers.
    let sizes = [
        (1920, 1080),
        (641, 479),
        (300, 200),
        (97, 1203),
        (640, 640),
        (1280, 1280),
        (1, 1),
        (2, 3),
        (1, 900),
    ];
    for (i, &(w, h)) in sizes.iter().enumerate() {
        // Decoding refuses images under 8 px a side; noise frames are made directly.
        let mut frames = vec![noise(w, h, i as u64 + 7)];
        if w >= 8 && h >= 8 {
            frames.push(frame(w, h, i as u64 + 1));
        }
        for f in frames {
            let want = preprocess::detector_input(&[&f], Backend::Opencv).unwrap();
            let got = preprocess::detector_input(&[&f], Backend::Kernels).unwrap();
            assert_eq!(got.scale_factor, want.scale_factor);
            let (worst, same) = compare(
                got.image.as_slice().unwrap(),
                want.image.as_slice().unwrap(),
                Normalizer::detector(),
            );
            eprintln!(
                "detector {} -> 640: worst {worst} levels, {:.4} % identical",
                f.name,
                same * 100.0
            );
            assert!(
                worst <= max_levels && same >= min_same,
                "{}: worst {worst} levels, {same} identical",
                f.name
            );
        }
    }
}

#[test]
fn recogniser_kernel_is_opencv_bilinear_for_every_kind_of_box() {
    let (max_levels, min_same) = required();
    let frames = [frame(640, 480, 7), noise(1280, 720, 9), noise(448, 448, 3)];
    let mut s = 12345u64;
    let mut rnd = |n: i32| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) % n as u64) as i32
    };
    let b = |x1, y1, x2, y2| CropBox { x1, y1, x2, y2 };
    let mut checked = 0;
    for f in &frames {
        let (w, h) = (f.width as i32, f.height as i32);
        // The awkward ones: the whole frame, each border, 1-pixel slivers,
        // tiny crops scaled up, exactly 224 (identity) and 448 (OpenCV's
        // 2x area path), then random boxes.
        let mut crops = vec![
            b(0, 0, w, h),
            b(0, 0, 50, 80),
            b(w - 61, h - 33, w, h),
            b(10, 20, 11, 300.min(h)),
            b(100, 100, 107, 103),
            b(0, 0, 224, 224),
            b(0, 0, 448, 448),
            b(w - 1, 0, w, 1),
        ];
        for _ in 0..40 {
            let (x1, y1) = (rnd(w - 2), rnd(h - 2));
            let (x2, y2) = (x1 + 1 + rnd(w - x1 - 1), y1 + 1 + rnd(h - y1 - 1));
            crops.push(b(x1, y1, x2, y2));
        }
        for c in crops {
            let mut want = vec![0f32; 3 * 224 * 224];
            let mut got = want.clone();
            preprocess::embedder_crop(f, c, &mut want, Backend::Opencv).unwrap();
            preprocess::embedder_crop(f, c, &mut got, Backend::Kernels).unwrap();
            let (worst, same) = compare(&got, &want, Normalizer::embedder());
            assert!(
                worst <= max_levels && same >= min_same,
                "crop {:?} of {}: worst {worst} levels, {same} identical",
                c.to_array(),
                f.name
            );
            checked += 1;
        }
    }
    eprintln!("recogniser: {checked} crops, all within {max_levels} levels");
}

#[test]
fn kernels_backend_refuses_a_box_outside_the_frame_by_name() {
    let f = noise(50, 40, 1);
    let mut out = vec![0f32; 3 * 224 * 224];
    let err = preprocess::embedder_crop(
        &f,
        CropBox {
            x1: 0,
            y1: 0,
            x2: 51,
            y2: 40,
        },
        &mut out,
        Backend::Kernels,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("noise-50x40") && err.contains("outside"),
        "{err}"
    );
}

/// The frames and crops of the GPU check (tests/it/gpu.rs), with their expected
/// 8-bit levels from the OpenCV path. `scripts/gpu-check.sh --pack` runs this
/// with `SHITU_GPU_REFERENCE=<file>`, because the GPU machine has no OpenCV.
const REFERENCE_DET: (u32, u32, u64) = (1920, 1080, 1);
const REFERENCE_REC: (u32, u32, u64) = (1280, 720, 2);

#[test]
#[ignore = "run by scripts/gpu-check.sh --pack"]
fn write_gpu_reference() {
    let path = std::env::var("SHITU_GPU_REFERENCE").expect("SHITU_GPU_REFERENCE=<file to write>");
    let mut out: Vec<u8> = b"SHPR1".to_vec();
    let (w, h, seed) = REFERENCE_DET;
    let f = frame(w, h, seed);
    let det = preprocess::detector_input(&[&f], Backend::Opencv)
        .unwrap()
        .image
        .into_raw_vec_and_offset()
        .0;
    for v in [w, h, seed as u32] {
        out.extend(v.to_le_bytes());
    }
    out.extend(levels(&det, Normalizer::detector()));
    let (w, h, seed) = REFERENCE_REC;
    let f = frame(w, h, seed);
    let crops = reference_crops(w as i32, h as i32);
    for v in [w, h, seed as u32, crops.len() as u32] {
        out.extend(v.to_le_bytes());
    }
    for c in &crops {
        for v in c.to_array() {
            out.extend(v.to_le_bytes());
        }
    }
    for &c in &crops {
        let mut cpu = vec![0f32; 3 * 224 * 224];
        preprocess::embedder_crop(&f, c, &mut cpu, Backend::Opencv).unwrap();
        out.extend(levels(&cpu, Normalizer::embedder()));
    }
    std::fs::write(&path, &out).unwrap();
    eprintln!("wrote {path}: {} bytes", out.len());
}

/// Crops of the GPU check: borders, whole frame, sliver, tiny, ordinary.
fn reference_crops(w: i32, h: i32) -> Vec<CropBox> {
    [
        [0, 0, w, h],
        [0, 0, 50, 80],
        [w - 61, h - 33, w, h],
        [10, 20, 11, 300],
        [100, 100, 107, 103],
        [300, 200, 700, 650],
        [w - 300, 0, w, 400],
        [5, h - 100, 400, h],
    ]
    .iter()
    .map(|b| CropBox {
        x1: b[0],
        y1: b[1],
        x2: b[2],
        y2: b[3],
    })
    .collect()
}

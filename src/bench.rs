//! Throughput and per-stage latency of the [`Pipeline`] on a set of images,
//! the engine behind `shitud bench`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::config::InputSettings;
use crate::error::Result;
use crate::input;
use crate::pipeline::Pipeline;
use crate::report::StageTimes;
use crate::search::{FaissIndex, Index, Method};

/// A stage's name and how to read its time.
type StageField = (&'static str, fn(&StageTimes) -> f64);
/// p50 and p99 of one measurement, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    /// Percentiles of `values` (nearest-rank). Empty input gives zeros.
    pub fn of(values: &mut [f64]) -> Percentiles {
        if values.is_empty() {
            return Percentiles {
                p50: 0.0,
                p99: 0.0,
                mean: 0.0,
            };
        }
        values.sort_by(f64::total_cmp);
        let at =
            |q: f64| values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        Percentiles {
            p50: at(0.50),
            p99: at(0.99),
            mean: values.iter().sum::<f64>() / values.len() as f64,
        }
    }
}

/// Results at one batch size.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRun {
    /// Frames per pipeline call.
    pub batch: usize,
    /// Frames processed (images × rounds).
    pub frames: usize,
    /// Wall time of the measured rounds.
    pub seconds: f64,
    /// Frames per second, decode included.
    pub images_per_s: f64,
    /// Time from starting to decode a frame to having its answer; a frame in a
    /// batch waits for the whole batch.
    pub latency_ms: Percentiles,
    /// Per-stage times, each frame's share.
    pub stages_ms: BTreeMap<&'static str, Percentiles>,
}

/// Runs `rounds` passes over `images` at each batch size, after `warmup` passes.
pub fn run(
    pipeline: &mut Pipeline,
    images: &[PathBuf],
    batches: &[usize],
    rounds: usize,
    warmup: usize,
    limits: &InputSettings,
    mut progress: impl FnMut(&str),
) -> Result<Vec<BenchRun>> {
    let mut runs = Vec::new();
    for &batch in batches {
        for _ in 0..warmup {
            pass(pipeline, images, batch, limits)?;
        }
        let mut times = Vec::new();
        let mut latencies = Vec::new();
        let start = Instant::now();
        for r in 0..rounds {
            let (t, l) = pass(pipeline, images, batch, limits)?;
            times.extend(t);
            latencies.extend(l);
            progress(&format!("batch {batch}: round {}/{rounds}", r + 1));
        }
        let seconds = start.elapsed().as_secs_f64();
        let mut stages = BTreeMap::new();
        let fields: [StageField; 7] = [
            ("decode", |t| t.decode),
            ("det_pre", |t| t.det_pre),
            ("det_infer", |t| t.det_infer),
            ("det_post", |t| t.det_post),
            ("rec_pre", |t| t.rec_pre),
            ("rec_infer", |t| t.rec_infer),
            ("search", |t| t.search),
        ];
        for (name, get) in fields {
            stages.insert(
                name,
                Percentiles::of(&mut times.iter().map(get).collect::<Vec<_>>()),
            );
        }
        runs.push(BenchRun {
            batch,
            frames: times.len(),
            seconds,
            images_per_s: times.len() as f64 / seconds,
            latency_ms: Percentiles::of(&mut latencies),
            stages_ms: stages,
        });
    }
    Ok(runs)
}

fn pass(
    pipeline: &mut Pipeline,
    images: &[PathBuf],
    batch: usize,
    limits: &InputSettings,
) -> Result<(Vec<StageTimes>, Vec<f64>)> {
    let mut times = Vec::with_capacity(images.len());
    let mut latencies = Vec::with_capacity(images.len());
    let pool = pipeline.frame_pool();
    for group in images.chunks(batch) {
        let start = Instant::now();
        let mut frames = Vec::with_capacity(group.len());
        let mut decode = Vec::with_capacity(group.len());
        for path in group {
            let t = Instant::now();
            frames.push(input::read_in(path, limits, &pool)?);
            decode.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let out = pipeline.recognize(&frames)?;
        let latency = start.elapsed().as_secs_f64() * 1e3;
        for (r, d) in out.iter().zip(decode) {
            times.push(StageTimes {
                decode: d,
                ..r.timings
            });
            latencies.push(latency);
        }
    }
    Ok((times, latencies))
}

/// The search settings [`bench_index`] tries on each built index.
#[derive(Debug, Clone)]
pub struct IndexSweep {
    /// IVF lists probed.
    pub nprobe: Vec<usize>,
    /// HNSW search breadths.
    pub ef_search: Vec<usize>,
    /// Also measure the CUDA flat search on this GPU, in fp32 and fp16.
    pub gpu: Option<usize>,
}

/// One index kind at one size and search setting, from [`bench_index`].
#[derive(Debug, Clone, Serialize)]
pub struct IndexBenchRow {
    /// Index kind.
    pub method: Method,
    /// Its search setting.
    pub param: String,
    /// Vectors indexed.
    pub n: usize,
    /// Training and adding everything, seconds.
    pub build_s: f64,
    /// Vectors added per second (training included).
    pub adds_per_s: f64,
    /// One query, top-5, microseconds.
    pub search_1_us: Percentiles,
    /// A frame's worth of queries (6) in one call, microseconds per call.
    pub search_6_us: Percentiles,
    /// Share of queries whose best hit equals the exact (Flat) best hit.
    pub recall_at_1: f64,
    /// Heap the built index holds, MiB.
    pub heap_mib: f64,
    /// Size of the saved index file, MiB.
    pub file_mib: f64,
    /// Reading the file back, milliseconds.
    pub open_ms: f64,
    /// Removing 1 % of the ids: faiss removal, or (HNSW) the rebuild compaction does, milliseconds.
    pub remove_1pct_ms: f64,
}

/// [`synthetic_rgb`] as a frame, for the OpenCV path.
pub fn synthetic_frame(w: u32, h: u32, seed: u64) -> Result<crate::input::Frame> {
    use opencv::prelude::*;
    let px = synthetic_rgb(w, h, seed);
    let name = format!("synthetic-{w}x{h}");
    let cv = |e: opencv::Error| crate::error::Error::image(&name, e.to_string());
    let m = opencv::core::Mat::new_rows_cols_with_data(h as i32, (w * 3) as i32, &px)
        .map_err(cv)?
        .reshape(3, h as i32)
        .map_err(cv)?
        .try_clone()
        .map_err(cv)?;
    crate::input::Frame::from_rgb(name.clone(), m)
}

/// A `w × h` interleaved RGB test image, reproducible from `seed`: a
/// gradient, a checkerboard of hard edges and noise, so that resampling
/// errors show. For checks that must not depend on an image decoder.
pub fn synthetic_rgb(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let mut s = seed;
    let mut rnd = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) as u32
    };
    let mut px = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let edge = if (x / 17 + y / 13) % 2 == 0 { 200 } else { 30 };
            px.push((x * 255 / w.max(1) / 2 + rnd() % 64) as u8);
            px.push(((edge + rnd() % 40) % 256) as u8);
            px.push((rnd() % 256) as u8);
        }
    }
    px
}

/// Random unit vectors, reproducible from `seed`.
pub fn random_unit_vectors(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut v: Vec<f32> = (0..n * dim)
        .map(|_| {
            // Box–Muller: Gaussian components make directions uniform on the sphere.
            let (u1, u2) = (next().max(1e-12), next());
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect();
    crate::embed::l2_normalize(&mut v, dim);
    v
}

/// Heap bytes in use, in MiB. Unlike RSS it does not hide an allocation that
/// reuses pages an earlier, freed one left behind.
fn heap_in_use_mib() -> f64 {
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let m = unsafe { libc::mallinfo2() };
    (m.uordblks + m.hblkhd) as f64 / (1 << 20) as f64
}

/// Measures each index kind on `n` random 512-d unit vectors. Queries are
/// noisy copies of stored vectors (cosine about 0.8), as a product seen
/// again on the line would be.
pub fn bench_index(
    n: usize,
    methods: &[Method],
    queries: usize,
    tuning: &IndexSweep,
    mut progress: impl FnMut(&str),
) -> Result<Vec<IndexBenchRow>> {
    let dim = 512;
    let data = random_unit_vectors(n, dim, 7 + n as u64);
    let noise = random_unit_vectors(queries, dim, 99);
    let mut q = Vec::with_capacity(queries * dim);
    for i in 0..queries {
        let base = (i * 7919) % n;
        q.extend((0..dim).map(|d| data[base * dim + d] + 0.68 * noise[i * dim + d]));
    }
    crate::embed::l2_normalize(&mut q, dim);
    let ids: Vec<i64> = (0..n as i64).collect();
    let mut exact = FaissIndex::build(Method::Flat, dim, &data, &ids)?;
    let truth: Vec<i64> = exact
        .search(&q, 1)?
        .iter()
        .map(|h| h.first().map_or(-1, |n| n.id))
        .collect();
    drop(exact);
    let tmp = std::env::temp_dir().join(format!("shitu-bench-index-{}", std::process::id()));
    let mut rows = Vec::new();
    for &method in methods {
        progress(&format!("{method:?}, {n} vectors: building"));
        let heap0 = heap_in_use_mib();
        let t = Instant::now();
        let mut index = FaissIndex::build(method, dim, &data, &ids)?;
        let build_s = t.elapsed().as_secs_f64();
        let heap_mib = heap_in_use_mib() - heap0;
        // One build, every search setting asked for.
        let settings: Vec<usize> = match method {
            Method::Ivf => tuning.nprobe.clone(),
            Method::Hnsw32 => tuning.ef_search.clone(),
            Method::Flat => vec![0],
        };
        let first = rows.len();
        for &value in &settings {
            let param = match method {
                Method::Ivf => {
                    index.set_nprobe(value)?;
                    format!("nprobe {value}")
                }
                Method::Hnsw32 => {
                    index.set_ef_search(value)?;
                    format!("efSearch {value}")
                }
                Method::Flat => "exact".to_string(),
            };
            let (search_1_us, search_6_us, recall_at_1) =
                measure_search(&mut index, &q, &truth, dim)?;
            rows.push(IndexBenchRow {
                method,
                param,
                n,
                build_s,
                adds_per_s: n as f64 / build_s,
                search_1_us,
                search_6_us,
                recall_at_1,
                heap_mib,
                file_mib: 0.0,
                open_ms: 0.0,
                remove_1pct_ms: 0.0,
            });
        }
        index.save(&tmp)?;
        let file_mib = std::fs::metadata(&tmp).map_or(0.0, |m| m.len() as f64 / (1 << 20) as f64);
        let t = Instant::now();
        drop(FaissIndex::load(&tmp)?);
        let open_ms = t.elapsed().as_secs_f64() * 1e3;
        let gone: Vec<i64> = (0..n as i64).step_by(100).collect();
        let t = Instant::now();
        if !index.remove(&gone)? {
            // What compaction does for HNSW: rebuild from the vectors that stay.
            let keep: Vec<i64> = ids.iter().copied().filter(|i| i % 100 != 0).collect();
            let mut v = Vec::with_capacity(keep.len() * dim);
            for &i in &keep {
                v.extend(index.reconstruct(i)?);
            }
            drop(FaissIndex::build(method, dim, &v, &keep)?);
        }
        let remove_1pct_ms = t.elapsed().as_secs_f64() * 1e3;
        for r in &mut rows[first..] {
            r.file_mib = file_mib;
            r.open_ms = open_ms;
            r.remove_1pct_ms = remove_1pct_ms;
        }
    }
    let _ = std::fs::remove_file(&tmp);
    // Both precisions: fp16 reads half the bytes; its recall shows what that costs.
    for precision in tuning.gpu.map_or(&[][..], |_| {
        &[
            crate::config::GpuPrecision::Fp32,
            crate::config::GpuPrecision::Fp16,
        ][..]
    }) {
        let ordinal = tuning.gpu.unwrap_or_default();
        progress(&format!(
            "CUDA flat ({precision:?}), {n} vectors: uploading"
        ));
        let t = Instant::now();
        let mut gpu = crate::search::cuda_flat::CudaFlat::new(ordinal, *precision, dim)?;
        gpu.add(&data, &ids)?;
        let build_s = t.elapsed().as_secs_f64();
        // Unmeasured: the first search compiles nothing, but it allocates and warms the caches.
        gpu.search(&q[..6 * dim], 5)?;
        let (search_1_us, search_6_us, recall_at_1) = measure_search(&mut gpu, &q, &truth, dim)?;
        let gone: Vec<i64> = (0..n as i64).step_by(100).collect();
        let t = Instant::now();
        gpu.remove(&gone)?;
        let remove_1pct_ms = t.elapsed().as_secs_f64() * 1e3;
        rows.push(IndexBenchRow {
            method: Method::Flat,
            param: format!("GPU: {}", gpu.describe()),
            n,
            build_s,
            adds_per_s: n as f64 / build_s,
            search_1_us,
            search_6_us,
            recall_at_1,
            heap_mib: 0.0,
            file_mib: 0.0,
            open_ms: 0.0,
            remove_1pct_ms,
        });
    }
    Ok(rows)
}

/// Latency of single queries and of batches of 6 (a frame's crops), and how
/// often the best hit is the exact best.
fn measure_search(
    index: &mut dyn crate::search::Index,
    q: &[f32],
    truth: &[i64],
    dim: usize,
) -> Result<(Percentiles, Percentiles, f64)> {
    let mut one = Vec::with_capacity(truth.len());
    let mut hits = 0;
    for (i, query) in q.chunks(dim).enumerate() {
        let t = Instant::now();
        let h = index.search(query, 5)?;
        one.push(t.elapsed().as_secs_f64() * 1e6);
        hits += usize::from(h[0].first().map(|n| n.id) == Some(truth[i]));
    }
    let mut six = Vec::new();
    for frame in q.chunks_exact(dim * 6) {
        let t = Instant::now();
        index.search(frame, 5)?;
        six.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok((
        Percentiles::of(&mut one),
        Percentiles::of(&mut six),
        hits as f64 / truth.len() as f64,
    ))
}

/// The process's peak resident set size in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_synthetic_frame_holds_the_synthetic_pixels() {
        use opencv::core::MatTraitConstManual;
        let f = synthetic_frame(37, 11, 5).unwrap();
        assert_eq!((f.width, f.height), (37, 11));
        assert_eq!(
            f.rgb().data_bytes().unwrap(),
            synthetic_rgb(37, 11, 5).as_slice()
        );
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!((p.p50, p.p99, p.mean), (50.0, 99.0, 50.5));
        assert_eq!(Percentiles::of(&mut []).p99, 0.0);
        assert!(peak_rss_mib().unwrap() > 0.0);
    }
}

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
            return Percentiles { p50: 0.0, p99: 0.0, mean: 0.0 };
        }
        values.sort_by(f64::total_cmp);
        let at = |q: f64| values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        Percentiles { p50: at(0.50), p99: at(0.99), mean: values.iter().sum::<f64>() / values.len() as f64 }
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
pub fn run(pipeline: &mut Pipeline, images: &[PathBuf], batches: &[usize], rounds: usize, warmup: usize, limits: &InputSettings, mut progress: impl FnMut(&str)) -> Result<Vec<BenchRun>> {
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
        let fields: [(&'static str, fn(&StageTimes) -> f64); 7] = [
            ("decode", |t| t.decode),
            ("det_pre", |t| t.det_pre),
            ("det_infer", |t| t.det_infer),
            ("det_post", |t| t.det_post),
            ("rec_pre", |t| t.rec_pre),
            ("rec_infer", |t| t.rec_infer),
            ("search", |t| t.search),
        ];
        for (name, get) in fields {
            stages.insert(name, Percentiles::of(&mut times.iter().map(get).collect::<Vec<_>>()));
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

fn pass(pipeline: &mut Pipeline, images: &[PathBuf], batch: usize, limits: &InputSettings) -> Result<(Vec<StageTimes>, Vec<f64>)> {
    let mut times = Vec::with_capacity(images.len());
    let mut latencies = Vec::with_capacity(images.len());
    for group in images.chunks(batch) {
        let start = Instant::now();
        let mut frames = Vec::with_capacity(group.len());
        let mut decode = Vec::with_capacity(group.len());
        for path in group {
            let t = Instant::now();
            frames.push(input::read(path, limits)?);
            decode.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let out = pipeline.recognize(&frames)?;
        let latency = start.elapsed().as_secs_f64() * 1e3;
        for (r, d) in out.iter().zip(decode) {
            times.push(StageTimes { decode: d, ..r.timings });
            latencies.push(latency);
        }
    }
    Ok((times, latencies))
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
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!((p.p50, p.p99, p.mean), (50.0, 99.0, 50.5));
        assert_eq!(Percentiles::of(&mut []).p99, 0.0);
        assert!(peak_rss_mib().unwrap() > 0.0);
    }
}

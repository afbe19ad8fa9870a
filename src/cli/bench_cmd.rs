//! `shitud bench`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::bench;
use crate::cli::{expand_inputs, load_settings, Cli, ModelArgs};
use crate::pipeline::Pipeline;

/// Arguments of `shitud bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    models: ModelArgs,
    /// Frames per pipeline call, comma-separated; each is measured in turn.
    #[arg(long, value_delimiter = ',', default_value = "1,4", value_name = "N,...")]
    batch: Vec<usize>,
    /// Measured passes over the images per batch size.
    #[arg(long, default_value_t = 3, value_name = "N")]
    rounds: usize,
    /// Unmeasured passes first (model warm-up, page cache).
    #[arg(long, default_value_t = 1, value_name = "N")]
    warmup: usize,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Images, or directories of images.
    #[arg(required = true, value_name = "IMAGE|DIR")]
    inputs: Vec<PathBuf>,
}

/// Runs the command.
pub fn run(cli: &Cli, args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let mut settings = load_settings(cli)?;
    args.models.apply(&mut settings);
    if let Some(&max) = args.batch.iter().max() {
        settings.detector.max_batch = settings.detector.max_batch.max(max);
    }
    if args.batch.contains(&0) || args.rounds == 0 {
        anyhow::bail!("--batch sizes and --rounds must be at least 1");
    }
    let images = expand_inputs(&args.inputs)?;
    if images.is_empty() {
        anyhow::bail!("no images to benchmark");
    }
    let mut pipeline = Pipeline::open(&settings)?;
    let runs = bench::run(&mut pipeline, &images, &args.batch, args.rounds, args.warmup, &settings.input, |msg| {
        tracing::info!("{msg}");
    })?;
    let rss = bench::peak_rss_mib();
    println!("shitu-edge bench: {} images, {} rounds, detector {:?}, provider {:?}", images.len(), args.rounds, pipeline.detector().form(), settings.engine.provider);
    println!("{:>5} {:>10} {:>12} {:>12}   stage p50/p99 ms", "batch", "images/s", "lat p50 ms", "lat p99 ms");
    for r in &runs {
        let stages: Vec<String> = r.stages_ms.iter().map(|(k, p)| format!("{k} {:.1}/{:.1}", p.p50, p.p99)).collect();
        println!("{:>5} {:>10.2} {:>12.1} {:>12.1}   {}", r.batch, r.images_per_s, r.latency_ms.p50, r.latency_ms.p99, stages.join(", "));
    }
    if let Some(rss) = rss {
        println!("peak RSS: {rss:.0} MiB");
    }
    if let Some(path) = &args.json {
        let doc = serde_json::json!({"images": images.len(), "rounds": args.rounds, "peak_rss_mib": rss, "runs": runs});
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(ExitCode::SUCCESS)
}

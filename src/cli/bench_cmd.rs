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
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,4",
        value_name = "N,..."
    )]
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
    let runs = bench::run(
        &mut pipeline,
        &images,
        &args.batch,
        args.rounds,
        args.warmup,
        &settings.input,
        |msg| {
            tracing::info!("{msg}");
        },
    )?;
    let rss = bench::peak_rss_mib();
    println!(
        "shitu-edge bench: {} images, {} rounds, detector {:?}, provider {:?}",
        images.len(),
        args.rounds,
        pipeline.detector().form(),
        settings.engine.provider
    );
    println!(
        "{:>5} {:>10} {:>12} {:>12}   stage p50/p99 ms",
        "batch", "images/s", "lat p50 ms", "lat p99 ms"
    );
    for r in &runs {
        let stages: Vec<String> = r
            .stages_ms
            .iter()
            .map(|(k, p)| format!("{k} {:.1}/{:.1}", p.p50, p.p99))
            .collect();
        println!(
            "{:>5} {:>10.2} {:>12.1} {:>12.1}   {}",
            r.batch,
            r.images_per_s,
            r.latency_ms.p50,
            r.latency_ms.p99,
            stages.join(", ")
        );
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

/// Arguments of `shitud bench-index`.
#[derive(Debug, Args)]
pub struct IndexBenchArgs {
    /// Gallery sizes, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10000,100000",
        value_name = "N,..."
    )]
    sizes: Vec<usize>,
    /// Index kinds, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "Flat,HNSW32,IVF",
        value_name = "METHOD,..."
    )]
    methods: Vec<crate::search::Method>,
    /// Queries per measurement.
    #[arg(long, default_value_t = 300, value_name = "N")]
    queries: usize,
    /// IVF lists probed, comma-separated values to try.
    #[arg(long, value_delimiter = ',', default_value = "8", value_name = "N,...")]
    nprobe: Vec<usize>,
    /// Also measure the CUDA flat search on this GPU (in the same run, for
    /// side-by-side figures with faiss's Flat on the CPU).
    #[arg(long, value_name = "ORDINAL")]
    pub gpu: Option<usize>,
    /// HNSW search breadths to try.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "16,128",
        value_name = "N,..."
    )]
    ef_search: Vec<usize>,
    /// Also write the rows as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Runs `shitud bench-index`.
pub fn run_index(args: &IndexBenchArgs) -> anyhow::Result<ExitCode> {
    if args.queries < 6 {
        anyhow::bail!("--queries must be at least 6");
    }
    let mut rows = Vec::new();
    println!("| method | search | n | build s | adds/s | 1 query p50/p99 µs | 6 queries p50/p99 µs | recall@1 vs Flat | heap MiB | file MiB | open ms | remove 1 % ms |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &n in &args.sizes {
        for r in bench::bench_index(
            n,
            &args.methods,
            args.queries,
            &bench::IndexSweep {
                nprobe: args.nprobe.clone(),
                ef_search: args.ef_search.clone(),
                gpu: args.gpu,
            },
            |m| tracing::info!("{m}"),
        )? {
            println!(
                "| {:?} | {} | {} | {:.2} | {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.3} | {:.0} | {:.0} | {:.1} | {:.0} |",
                r.method, r.param, r.n, r.build_s, r.adds_per_s, r.search_1_us.p50, r.search_1_us.p99, r.search_6_us.p50, r.search_6_us.p99,
                r.recall_at_1, r.heap_mib, r.file_mib, r.open_ms, r.remove_1pct_ms
            );
            rows.push(r);
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `shitud bench-mqtt`.
#[derive(Debug, Args)]
pub struct MqttBenchArgs {
    /// Broker host.
    #[arg(long, default_value = "localhost", value_name = "HOST")]
    host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883, value_name = "PORT")]
    port: u16,
    /// The daemon's topic prefix.
    #[arg(long, default_value = "shitu", value_name = "PREFIX")]
    prefix: String,
    /// The daemon's device id.
    #[arg(long, value_name = "NAME")]
    device_id: String,
    /// Outstanding requests, comma-separated levels.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,4,16",
        value_name = "N,..."
    )]
    concurrency: Vec<usize>,
    /// Measured requests per level.
    #[arg(long, default_value_t = 200, value_name = "N")]
    requests: usize,
    /// Unmeasured requests first, per level.
    #[arg(long, default_value_t = 16, value_name = "N")]
    warmup: usize,
    /// A name for the rows, e.g. "batch 4".
    #[arg(long, default_value = "shitud", value_name = "TEXT")]
    label: String,
    /// Also write the rows as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Images, or directories of images, sent in turn.
    #[arg(required = true, value_name = "IMAGE|DIR")]
    inputs: Vec<PathBuf>,
}

/// Runs `shitud bench-mqtt`.
pub fn run_mqtt(args: &MqttBenchArgs) -> anyhow::Result<ExitCode> {
    let files = expand_inputs(&args.inputs)?;
    let images = files
        .iter()
        .map(|f| std::fs::read(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let plan = crate::bench_mqtt::LoadPlan {
        host: args.host.clone(),
        port: args.port,
        topic_base: format!("{}/{}", args.prefix, args.device_id),
        concurrency: args.concurrency.clone(),
        requests: args.requests,
        warmup: args.warmup,
        images,
        label: args.label.clone(),
    };
    let rows = crate::bench_mqtt::run(&plan, |m| tracing::info!("{m}"))?;
    println!("| daemon | concurrency | requests/s | p50 ms | p99 ms | mean batch | errors |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.2} | {:.1} | {:.1} | {:.2} | {} |",
            r.label,
            r.concurrency,
            r.requests_per_s,
            r.latency_ms.p50,
            r.latency_ms.p99,
            r.mean_batch,
            r.errors
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)?;
    }
    Ok(ExitCode::SUCCESS)
}

//! `shitud engines build|list|prune`: the TensorRT engine cache.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Subcommand;

use super::{load_settings, Cli, ModelArgs};
use crate::config::{Provider, Settings};
use crate::detect::PicoDet;
use crate::embed::Embedder;
use crate::engine::engine_cache::{elapsed, EngineCache, Judged};
use crate::engine::{sha256_file, Engine};
use crate::gpu;

/// Engine cache commands.
#[derive(Debug, Subcommand)]
pub enum EnginesCommand {
    /// Build the TensorRT engine of every model the configuration names, or
    /// confirm that the cache already holds it: ahead of time for a factory
    /// image, or to stage a model update. Never falls back to another
    /// provider: a box that cannot build its engines fails here, not on the line.
    Build {
        #[command(flatten)]
        models: ModelArgs,
    },
    /// Show every engine in the cache: the model, precision and batch range
    /// it was built for, the GPU and TensorRT release, size, build time, and
    /// whether it is current on this box.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove engines that are no longer current: built for another GPU or
    /// TensorRT release, for a model the configuration no longer names, or
    /// whose build never finished.
    Prune {
        /// Say what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Runs an engine cache command.
pub fn run(cli: &Cli, cmd: &EnginesCommand) -> anyhow::Result<ExitCode> {
    let mut settings = load_settings(cli)?;
    match cmd {
        EnginesCommand::Build { models } => {
            models.apply(&mut settings);
            build(settings)
        }
        EnginesCommand::List { json } => list(&settings, *json),
        EnginesCommand::Prune { dry_run } => prune(&settings, *dry_run),
    }
}

fn build(mut settings: Settings) -> anyhow::Result<ExitCode> {
    settings.validate()?;
    // A prebuild that silently fell back would ship a box without its engines.
    settings.engine.fallback = false;
    let provider = settings.engine.provider;
    if provider != Provider::Tensorrt {
        eprintln!("engine.provider = {provider}: there are no TensorRT engines to build; checking that both models load on {provider}");
    } else {
        eprintln!(
            "building TensorRT engines into {} (minutes per model the first time)",
            settings.engine.engine_cache_dir.display()
        );
    }
    let strict = || {
        format!("`engines build` needs engine.provider = {provider} itself; it never falls back")
    };
    let detector = PicoDet::open(&settings).with_context(strict)?;
    report("detector", detector.engine());
    let embedder = Embedder::open(&settings).with_context(strict)?;
    report("embedder", embedder.engine());
    Ok(ExitCode::SUCCESS)
}

fn report(role: &str, engine: &Engine) {
    match engine.cache_use() {
        Some(c) if c.built => {
            println!(
                "{role}: {} on {}: built {} in {}",
                engine.path().display(),
                engine.provider(),
                c.id,
                elapsed(Duration::from_secs_f64(c.build_seconds))
            )
        }
        Some(c) => println!(
            "{role}: {} on {}: cached {} (built in {})",
            engine.path().display(),
            engine.provider(),
            c.id,
            elapsed(Duration::from_secs_f64(c.build_seconds))
        ),
        None => println!(
            "{role}: {} loads on {}",
            engine.path().display(),
            engine.provider()
        ),
    }
}

/// The sha256s of the models the settings name (those that exist).
fn current_models(settings: &Settings) -> BTreeSet<String> {
    [&settings.detector.model, &settings.embedder.model]
        .into_iter()
        .filter_map(|m| sha256_file(m).ok())
        .collect()
}

/// What the cache is judged against: this box's GPU (where one can be
/// probed) and the ONNX Runtime the settings load (where it loads).
struct Here {
    platform: Option<gpu::Platform>,
    ort: Option<String>,
}

fn judged(settings: &Settings, write: bool) -> anyhow::Result<(EngineCache, Vec<Judged>, Here)> {
    let dir = &settings.engine.engine_cache_dir;
    let cache = if write {
        EngineCache::open(dir)?
    } else {
        EngineCache::existing(dir)
    };
    let platform = match gpu::probe(settings.gpu.device_id) {
        Ok(p) => Some(p),
        Err(why) => {
            eprintln!("note: {why}; engines are judged by model only");
            None
        }
    };
    let ort = match crate::engine::runtime::environment(settings.engine.ort_library.as_deref()) {
        Ok(_) => Some(crate::engine::runtime::build_id()),
        Err(why) => {
            eprintln!("note: {why}; engines are not judged by ONNX Runtime build");
            None
        }
    };
    let all = cache.judge(&current_models(settings), platform.as_ref(), ort.as_deref())?;
    Ok((cache, all, Here { platform, ort }))
}

fn list(settings: &Settings, json: bool) -> anyhow::Result<ExitCode> {
    let (cache, all, here) = judged(settings, false)?;
    if json {
        let rows: Vec<serde_json::Value> = all
            .iter()
            .map(|j| serde_json::json!({ "id": j.id, "verdict": j.verdict.to_string(), "stale": j.verdict.is_stale(), "entry": j.entry }))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "dir": cache.dir(), "engines": rows })
            )?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "engine cache {}{}",
        cache.dir().display(),
        here.platform
            .map(|p| format!(", this box: {p}"))
            .unwrap_or_default()
    );
    if let Some(ort) = &here.ort {
        println!("ONNX Runtime: {ort}");
    }
    if all.is_empty() {
        println!("(empty)");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16}  {:<8}  {:<5}  {:<8}  {:<28}  {:>6}  {:>9}  {:>8}  {:<19}  status",
        "id", "role", "prec", "batch", "gpu", "trt", "size MiB", "build", "last used"
    );
    for j in &all {
        match &j.entry {
            Some(e) => println!(
                "{:<16}  {:<8}  {:<5}  {:<8}  {:<28}  {:>6}  {:>9.1}  {:>8}  {:<19}  {}",
                j.id,
                e.role,
                e.key.precision,
                e.key.profile.to_string(),
                format!("{} ({})", e.key.gpu, e.key.compute_capability),
                e.key.tensorrt,
                e.bytes as f64 / (1 << 20) as f64,
                elapsed(Duration::from_secs_f64(e.build_seconds)),
                ago(e.last_used),
                j.verdict
            ),
            None => println!(
                "{:<16}  {:<8}  {:<5}  {:<8}  {:<28}  {:>6}  {:>9}  {:>8}  {:<19}  {}",
                j.id, "?", "", "", "", "", "", "", "", j.verdict
            ),
        }
    }
    let stale = all.iter().filter(|j| j.verdict.is_stale()).count();
    if stale > 0 {
        println!("{stale} stale: `shitud engines prune` removes them");
    }
    Ok(ExitCode::SUCCESS)
}

fn prune(settings: &Settings, dry_run: bool) -> anyhow::Result<ExitCode> {
    let (cache, _, here) = judged(settings, !dry_run)?;
    let gone = cache.prune(
        &current_models(settings),
        here.platform.as_ref(),
        here.ort.as_deref(),
        dry_run,
    )?;
    let verb = if dry_run { "would remove" } else { "removed" };
    let mut bytes = 0;
    for j in &gone {
        bytes += j.entry.as_ref().map_or(0, |e| e.bytes);
        println!("{verb} {} ({})", j.id, j.verdict);
    }
    println!(
        "{verb} {} engine(s), {:.1} MiB",
        gone.len(),
        bytes as f64 / (1 << 20) as f64
    );
    Ok(ExitCode::SUCCESS)
}

/// How long ago, roughly: "3h ago", "2d ago".
fn ago(unix: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(unix);
    let s = now.saturating_sub(unix);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

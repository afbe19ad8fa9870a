//! The `shitud` command line. Parsing and presentation live here; the work is
//! done by [`crate::pipeline`], [`crate::enroll`] and [`crate::bench`].

mod bench_cmd;
mod bundle_cmd;
mod config_cmd;
mod engines_cmd;
mod eval_cmd;
mod gallery_cmd;
mod logging;
mod ota_cmd;
mod recognize_cmd;
mod run_cmd;
mod unknown_cmd;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Provider, Settings, WholeImage};

/// PP-ShiTuV2 product recognition for sorting lines: finds items in a frame
/// (PicoDet mainbody), computes their features (PPLCNetV2) and looks them up
/// in a gallery of known products (faiss).
#[derive(Debug, Parser)]
#[command(name = "shitud", version, about, long_about = None, after_help = "Settings come from built-in defaults, then /etc/shitu-edge/config.toml or --config FILE (TOML), then conf.d/*.toml beside it, then SHITU__SECTION__KEY environment variables, then flags (`shitud config show` prints the result).\nExample: shitud recognize --index engines/demo/gallery tests/data/scenes/")]
pub struct Cli {
    /// TOML settings file (see config/shitu-edge.toml for every key).
    #[arg(long, short = 'c', global = true, env = "SHITU_CONFIG")]
    pub config: Option<PathBuf>,
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors in the log.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    /// Log line format: auto (journal under systemd, else text), text, json, journal [default: log.format].
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<crate::config::LogFormat>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve recognition over MQTT until SIGTERM (the daemon; see docs/MQTT.md).
    Run(run_cmd::RunArgs),
    /// Recognise products in images; prints one JSON line per image.
    Recognize(recognize_cmd::RecognizeArgs),
    /// Build and inspect galleries.
    #[command(subcommand)]
    Gallery(gallery_cmd::GalleryCommand),
    /// Measure throughput and per-stage latency on a set of images.
    Bench(bench_cmd::BenchArgs),
    /// Measure the gallery index kinds on random vectors: build, search, recall, memory, open time.
    BenchIndex(bench_cmd::IndexBenchArgs),
    /// Load a running `shitud run` through the broker: requests/s and end-to-end latency.
    BenchMqtt(bench_cmd::MqttBenchArgs),
    /// Measure accuracy against labelled scenes (truth boxes and labels).
    Eval(eval_cmd::EvalArgs),
    /// Check or show the layered configuration.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Build, list and prune the TensorRT engine cache.
    #[command(subcommand)]
    Engines(engines_cmd::EnginesCommand),
    /// Make, sign and check over-the-air update bundles.
    #[command(subcommand)]
    Bundle(bundle_cmd::BundleCommand),
    /// Apply, roll back and list update versions under ota.root (daemon stopped).
    #[command(subcommand)]
    Ota(ota_cmd::OtaCommand),
    /// Crops of triggered frames that matched nothing: list, show, enrol under a label, drop.
    #[command(subcommand)]
    Unknown(unknown_cmd::UnknownCommand),
}

/// Model and runtime flags shared by the commands that run models.
#[derive(Debug, Args, Clone, Default)]
pub struct ModelArgs {
    /// Detector ONNX model (either export form) [default: engines/demo/det_prenms.onnx].
    #[arg(long, value_name = "FILE")]
    pub det_model: Option<PathBuf>,
    /// Recognition ONNX model [default: engines/demo/rec.onnx].
    #[arg(long, value_name = "FILE")]
    pub rec_model: Option<PathBuf>,
    /// Gallery directory made by `shitud gallery build` [default: engines/demo/gallery].
    #[arg(long, value_name = "DIR")]
    pub index: Option<PathBuf>,
    /// Execution provider: cpu, cuda or tensorrt [default: cpu].
    #[arg(long, value_name = "EP")]
    pub provider: Option<Provider>,
    /// Path of libonnxruntime.so (ORT_DYLIB_PATH wins over this).
    #[arg(long, value_name = "FILE")]
    pub ort_library: Option<PathBuf>,
    /// Search the whole frame too: always, when_empty or never [default: always].
    #[arg(long, value_name = "POLICY")]
    pub whole_image: Option<WholeImage>,
    /// Most crops per recogniser call [default: 16].
    #[arg(long, value_name = "N")]
    pub rec_batch: Option<usize>,
    /// Most frames per detector call (pre-NMS export) [default: 1].
    #[arg(long, value_name = "N")]
    pub det_batch: Option<usize>,
    /// Threads per model; 0 = one per core [default: 0].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Refuse images larger than this many pixels [default: 50000000].
    #[arg(long, value_name = "PIXELS")]
    pub max_pixels: Option<u64>,
}

impl ModelArgs {
    /// Applies the flags that were given on top of `settings`.
    pub fn apply(&self, s: &mut Settings) {
        macro_rules! set {
            ($flag:expr, $field:expr) => {
                if let Some(v) = $flag.clone() {
                    $field = v;
                }
            };
        }
        set!(self.det_model, s.detector.model);
        set!(self.rec_model, s.embedder.model);
        set!(self.index, s.search.index);
        set!(self.provider, s.engine.provider);
        set!(self.whole_image, s.detector.whole_image);
        set!(self.rec_batch, s.embedder.max_batch);
        set!(self.det_batch, s.detector.max_batch);
        set!(self.threads, s.engine.intra_threads);
        set!(self.max_pixels, s.input.max_pixels);
        if self.ort_library.is_some() {
            s.engine.ort_library = self.ort_library.clone();
        }
    }
}

/// Runs `shitud` with the process's arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The format may come from the settings; a broken configuration still
    // gets readable logs, and its error comes from the command itself.
    let format = cli.log_format.unwrap_or_else(|| {
        Settings::load(cli.config.as_deref())
            .map(|s| s.log.format)
            .unwrap_or_default()
    });
    logging::init(format, cli.verbose, cli.quiet);
    let result = match &cli.command {
        Command::Run(args) => run_cmd::run(&cli, args),
        Command::Recognize(args) => recognize_cmd::run(&cli, args),
        Command::Gallery(cmd) => gallery_cmd::run(&cli, cmd),
        Command::Bench(args) => bench_cmd::run(&cli, args),
        Command::Eval(args) => eval_cmd::run(&cli, args),
        Command::BenchIndex(args) => bench_cmd::run_index(args),
        Command::BenchMqtt(args) => bench_cmd::run_mqtt(args),
        Command::Config(cmd) => config_cmd::run(&cli, cmd),
        Command::Engines(cmd) => engines_cmd::run(&cli, cmd),
        Command::Bundle(cmd) => bundle_cmd::run(&cli, cmd),
        Command::Ota(cmd) => ota_cmd::run(&cli, cmd),
        Command::Unknown(cmd) => unknown_cmd::run(&cli, cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Loads settings from `--config` (if any) and the environment.
pub fn load_settings(cli: &Cli) -> anyhow::Result<Settings> {
    Ok(Settings::load(cli.config.as_deref())?)
}

/// Expands files and directories into a sorted list of image files.
pub fn expand_inputs(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    const EXTS: [&str; 8] = ["jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp", "pgm"];
    let is_image = |p: &Path| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTS.contains(&e.to_ascii_lowercase().as_str()))
    };
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            found.sort();
            if found.is_empty() {
                tracing::warn!(dir = %input.display(), "no image files in directory");
            }
            out.extend(found);
        } else {
            // Named files go through even if missing or oddly named: the
            // per-image error line then says exactly what is wrong.
            out.push(input.clone());
        }
    }
    Ok(out)
}

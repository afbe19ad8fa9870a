//! `shitud ota apply|rollback|status`: the versions under `ota.root`, for a
//! box whose daemon is stopped (first install, recovery, an image build).
//! A running daemon owns the store; it takes bundles over `P/ota/apply` or
//! through `ota.watch_dir` instead.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;

use super::{load_settings, Cli};
use crate::ota::apply::{Step, Update};
use crate::ota::fetch::{Limits, Source};
use crate::ota::keys;
use crate::ota::store::Store;

/// Over-the-air update commands (docs/OTA.md).
#[derive(Debug, Subcommand)]
pub enum OtaCommand {
    /// Apply a bundle (URL or file): with the daemon stopped, download,
    /// verify, unpack, build, health-check and switch here, printing each
    /// step; with it running, hand a bundle file to it through ota.watch_dir.
    Apply {
        /// http(s) URL or path of the bundle.
        source: String,
    },
    /// Make the previous version current again (daemon stopped).
    Rollback,
    /// Show the versions on disk, which is current, and any trial in progress.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an `ota` subcommand.
pub fn run(cli: &Cli, cmd: &OtaCommand) -> anyhow::Result<ExitCode> {
    let settings = load_settings(cli)?;
    let o = &settings.ota;
    if o.root.as_os_str().is_empty() {
        bail!("ota.root is empty: updates are off in this configuration");
    }
    let store = Store::open(&o.root).with_context(|| format!("ota.root {}", o.root.display()))?;
    let busy = || {
        format!("{}: shitud is running and owns it; publish to P/ota/apply or drop the bundle into ota.watch_dir", o.root.display())
    };
    match cmd {
        OtaCommand::Status { json } => {
            let versions = store.versions();
            let (cur, prev, trial) = (store.current(), store.previous(), store.trial());
            if *json {
                let v = serde_json::json!({"current": cur, "previous": prev, "trial": trial, "versions": versions});
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "current:  {}",
                    cur.as_deref()
                        .unwrap_or("(none: the config's own models and gallery)")
                );
                println!("previous: {}", prev.as_deref().unwrap_or("(none)"));
                if let Some(t) = trial {
                    println!(
                        "trial:    {} since {} (clean stop since: {})",
                        t.version, t.switched_unix, t.clean_stop
                    );
                }
                for v in versions {
                    println!(
                        "  {}  detector {}  embedder {}  gallery {}  golden {}",
                        v.version,
                        v.detector,
                        v.embedder,
                        v.gallery,
                        v.golden.len()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        OtaCommand::Rollback => {
            let _lock = store.try_lock()?.with_context(busy)?;
            let v = store.rollback()?;
            println!("current is now {v}");
            Ok(ExitCode::SUCCESS)
        }
        OtaCommand::Apply { source } => {
            let Some(_lock) = store.try_lock()? else {
                return hand_to_daemon(&o.watch_dir, source).with_context(busy);
            };
            let trusted = o
                .trusted_keys
                .iter()
                .map(|k| keys::read_public(k))
                .collect::<Result<Vec<_>, _>>()?;
            let update = Update {
                store: &store,
                base: &settings,
                trusted: &trusted,
                limits: Limits::from_settings(o),
            };
            let mut progress = |step: Step, what: &str| eprintln!("{:>11}  {what}", step.as_str());
            let staged = match update.stage(&Source::parse(source), &mut progress) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("refused: {e}");
                    return Ok(ExitCode::from(1));
                }
            };
            let v = staged.info.version.clone();
            drop(staged);
            progress(Step::Switch, &format!("current -> versions/{v}"));
            store.switch(&v)?;
            // Nothing has run it yet: the first daemon start is not a crash of it.
            store.note_clean_stop();
            let pruned = store.prune(o.keep_versions);
            if !pruned.is_empty() {
                eprintln!("removed old versions: {}", pruned.join(", "));
            }
            println!(
                "version {v} is current; on trial for {} s from now (ota.trial_s)",
                o.trial_s
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// With the daemon running: copies the bundle file into the watched folder
/// (under a temporary name, then renamed, so it is never taken half-written).
fn hand_to_daemon(watch_dir: &Path, source: &str) -> anyhow::Result<ExitCode> {
    if watch_dir.as_os_str().is_empty() {
        bail!("ota.watch_dir is not set");
    }
    if let Source::Url(_) = Source::parse(source) {
        bail!("a URL goes to the running daemon over MQTT");
    }
    let src = Path::new(source);
    let name = src
        .file_name()
        .and_then(|n| n.to_str())
        .context("the bundle path names no file")?;
    let name = if name.ends_with(".tar") {
        name.to_string()
    } else {
        format!("{name}.tar")
    };
    let tmp = watch_dir.join(format!(".{name}.part"));
    std::fs::copy(src, &tmp)
        .with_context(|| format!("copying {} into {}", src.display(), watch_dir.display()))?;
    std::fs::rename(&tmp, watch_dir.join(&name))
        .with_context(|| format!("renaming into {}", watch_dir.display()))?;
    println!(
        "handed to the running shitud through {}; follow P/ota/status (or its log) for the outcome",
        watch_dir.join(&name).display()
    );
    Ok(ExitCode::SUCCESS)
}

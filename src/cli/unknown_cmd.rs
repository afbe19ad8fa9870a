//! `shitud unknown`: the crops of triggered frames that matched nothing
//! (`capture.unknown_dir`), to look at, enrol under a label, or drop. The
//! daemon does the same on `P/gallery/add` with `unknown_id`; this is for a
//! box whose daemon is stopped (the gallery takes one writer at a time).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::cli::{load_settings, Cli};
use crate::embed::Embedder;
use crate::enroll::Photo;
use crate::search::unknown::UnknownStore;
use crate::search::Gallery;

/// Unknown-item subcommands.
#[derive(Debug, Subcommand)]
pub enum UnknownCommand {
    /// List the unknown items, oldest first: id, source, box, best candidate.
    List {
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print one item as JSON; with --out, copy its crop (PNG) there too.
    Show {
        /// Its id (from P/unknown or `list`).
        id: String,
        /// Where to copy the crop.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Enrol the item's crop in the gallery under LABEL, and forget the item.
    ///
    /// The daemon must be stopped (the gallery takes one writer). Refused on
    /// a box that serves a line: enrol over MQTT there (P/gallery/add with
    /// unknown_id), which makes the enrolment a change for the whole line.
    Enrol(EnrolArgs),
    /// Forget the item without enrolling it.
    Drop {
        /// Its id.
        id: String,
    },
}

/// `shitud unknown enrol`.
#[derive(Debug, Args)]
pub struct EnrolArgs {
    /// Its id.
    id: String,
    /// The product's label.
    label: String,
    /// The gallery [default: search.index from the config].
    #[arg(long, value_name = "DIR")]
    index: Option<PathBuf>,
}

/// Runs an unknown-item subcommand.
pub fn run(cli: &Cli, cmd: &UnknownCommand) -> anyhow::Result<ExitCode> {
    let settings = load_settings(cli)?;
    let dir = &settings.capture.unknown_dir;
    if dir.as_os_str().is_empty() {
        anyhow::bail!("capture.unknown_dir is empty: this box keeps no unknown items");
    }
    let store = UnknownStore::new(dir, settings.capture.unknown_max_items);
    match cmd {
        UnknownCommand::List { json } => {
            let items = store.list()?;
            for item in &items {
                if *json {
                    println!("{}", serde_json::to_string(item)?);
                } else {
                    let best = item
                        .top_k
                        .first()
                        .map_or("(no candidate)".to_string(), |(l, s)| format!("{l} {s:.3}"));
                    println!(
                        "{}  {}  {:?}  best: {best}  (trigger {}, box {})",
                        item.unknown_id, item.source, item.bbox, item.request_id, item.device_id
                    );
                }
            }
            if !*json {
                eprintln!("{} unknown items in {}", items.len(), dir.display());
            }
        }
        UnknownCommand::Show { id, out } => {
            let item = store.get(id)?;
            println!("{}", serde_json::to_string_pretty(&item)?);
            if let Some(out) = out {
                std::fs::copy(store.photo(id)?, out)
                    .with_context(|| format!("copying the crop to {}", out.display()))?;
                eprintln!("crop written to {}", out.display());
            }
        }
        UnknownCommand::Enrol(args) => {
            if args.label.trim().is_empty() {
                anyhow::bail!("the label is empty");
            }
            if !settings.mqtt.line.is_empty() {
                // A local add would make this box differ from the line's gallery.
                anyhow::bail!(
                    "this box serves line {:?}: enrol over MQTT while the daemon runs (P/gallery/add with unknown_id on this box's topic), which makes it a change for the whole line",
                    settings.mqtt.line
                );
            }
            let index = args.index.clone().unwrap_or(settings.search.index.clone());
            let photo = Photo::read(&store.photo(&args.id)?, &settings.input)?;
            let mut g = Gallery::open_for_write(&index, (&settings).into()).with_context(|| {
                format!("opening {} (a running daemon holds it: enrol over MQTT instead, P/gallery/add with unknown_id)", index.display())
            })?;
            let mut embedder = Embedder::open(&settings)?;
            g.check_model(embedder.model_sha256(), &settings.embedder.model)?;
            let feature = photo.embed(&mut embedder)?;
            let id = g.add(
                &args.label,
                &format!("unknown:{}", args.id),
                Some(photo.sha256),
                &feature,
            )?;
            store.remove(&args.id)?;
            println!("added {id} {} (unknown {})", args.label, args.id);
        }
        UnknownCommand::Drop { id } => {
            store.remove(id)?;
            println!("dropped {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

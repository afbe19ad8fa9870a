//! `shitud gallery …`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::cli::{load_settings, Cli};
use crate::embed::Embedder;
use crate::enroll::{self, BuildOptions, OnBadImage, Photo};
use crate::search::paddleclas_import::{self, ModelStamp};
use crate::search::{Gallery, Method};

/// Gallery subcommands.
#[derive(Debug, Subcommand)]
pub enum GalleryCommand {
    /// Embed every photo of a PaddleClas list (`path<TAB>label`) and write a gallery.
    Build(BuildArgs),
    /// Import a gallery made by PaddleClas's build_gallery.py (vector.index + id_map.pkl).
    ImportPaddleclas(ImportArgs),
    /// Add product photos under one label; prints `added ID PATH` as each becomes durable.
    Add(AddArgs),
    /// Remove items by id or by label (all or nothing).
    Remove {
        /// The gallery directory.
        #[arg(long, value_name = "DIR")]
        index: PathBuf,
        /// Item ids to remove.
        #[arg(
            long,
            value_name = "N",
            required_unless_present = "label",
            conflicts_with = "label"
        )]
        id: Vec<i64>,
        /// Remove every item with this label.
        #[arg(long, value_name = "LABEL")]
        label: Option<String>,
    },
    /// List the items: id, label, source, sha256, added.
    List {
        /// The gallery directory.
        #[arg(long, value_name = "DIR")]
        index: PathBuf,
        /// One JSON object per line instead of tab-separated text.
        #[arg(long)]
        json: bool,
    },
    /// Print a gallery's manifest and state, with the line's version (the
    /// line's changes it has applied) when it serves a line.
    Info {
        /// The gallery directory.
        #[arg(long, value_name = "DIR")]
        index: PathBuf,
    },
    /// Print a new change id (a ULID) for a gallery change published on a
    /// line: `{"change_id": "…", "label": …}` on `<prefix>/line/<line>/gallery/add`.
    ChangeId,
    /// Fold the change log into a new snapshot now.
    Compact {
        /// The gallery directory.
        #[arg(long, value_name = "DIR")]
        index: PathBuf,
    },
}

/// Arguments of `shitud gallery add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The gallery directory.
    #[arg(long, value_name = "DIR")]
    index: PathBuf,
    /// Recognition ONNX model; must be the one the gallery was built with [default: engines/demo/rec.onnx].
    #[arg(long, value_name = "FILE")]
    rec_model: Option<PathBuf>,
    /// The product label for all the images.
    #[arg(long, value_name = "LABEL")]
    label: String,
    /// Product photos (whole-image features, as gallery build).
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

/// Arguments of `shitud gallery build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Recognition ONNX model [default: engines/demo/rec.onnx].
    #[arg(long, value_name = "FILE")]
    rec_model: Option<PathBuf>,
    /// List file: one `relative/path<TAB>label` per line; the label is everything after the first tab.
    #[arg(long, value_name = "FILE")]
    list: PathBuf,
    /// Directory the list's paths are relative to.
    #[arg(long, value_name = "DIR")]
    image_root: PathBuf,
    /// Output directory (manifest.json, labels.json, vector.index).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Index kind: Flat (exact), HNSW32 or IVF.
    #[arg(long, default_value = "Flat", value_name = "METHOD")]
    method: Method,
    /// Stop without writing anything if a listed image is missing or unreadable (default: report it and skip it).
    #[arg(long)]
    fail_on_missing: bool,
    /// Path of libonnxruntime.so (ORT_DYLIB_PATH wins over this).
    #[arg(long, value_name = "FILE")]
    ort_library: Option<PathBuf>,
}

/// Arguments of `shitud gallery import-paddleclas`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// PaddleClas index directory holding vector.index and id_map.pkl.
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
    /// Output directory; must not exist or be empty.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The recognition ONNX model whose features the index holds (recorded in the manifest) [default: engines/demo/rec.onnx].
    #[arg(long, value_name = "FILE")]
    rec_model: Option<PathBuf>,
}

/// Runs the command.
pub fn run(cli: &Cli, cmd: &GalleryCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        GalleryCommand::Build(args) => build(cli, args),
        GalleryCommand::ImportPaddleclas(args) => {
            let mut settings = load_settings(cli)?;
            if let Some(m) = &args.rec_model {
                settings.embedder.model = m.clone();
            }
            let embedder = Embedder::open(&settings)?;
            let model = &settings.embedder.model;
            let stamp = ModelStamp {
                sha256: embedder.model_sha256().to_string(),
                file: model.file_name().map_or_else(
                    || model.display().to_string(),
                    |f| f.to_string_lossy().into_owned(),
                ),
                dim: embedder.dim(),
            };
            let g = paddleclas_import::import(&args.from, &args.out, &stamp)?;
            let m = g.manifest();
            eprintln!(
                "imported {} items ({:?}, {}-d) from {} into {}",
                m.count,
                m.method,
                m.dim,
                args.from.display(),
                args.out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        GalleryCommand::Info { index } => {
            let g = Gallery::open(index, Default::default())?;
            let line = (!g.line().is_empty()).then(|| g.line().version());
            let info = serde_json::json!({"manifest": g.manifest(), "items": g.len(), "logged_changes": g.logged_changes(), "line_gallery": line});
            println!("{}", serde_json::to_string_pretty(&info)?);
            match line {
                Some(v) => eprintln!("line gallery: {v}"),
                None => eprintln!("line gallery: no line changes applied"),
            }
            Ok(ExitCode::SUCCESS)
        }
        GalleryCommand::ChangeId => {
            println!("{}", crate::search::line::ChangeId::generate());
            Ok(ExitCode::SUCCESS)
        }
        GalleryCommand::Add(args) => add(cli, args),
        GalleryCommand::Remove { index, id, label } => {
            let settings = load_settings(cli)?;
            let mut g = Gallery::open_for_write(index, (&settings).into())?;
            let ids: Vec<i64> = match label {
                Some(l) => g.ids_with_label(l),
                None => id.clone(),
            };
            if ids.is_empty() {
                anyhow::bail!(
                    "gallery {}: no item has label {:?}; nothing was removed",
                    index.display(),
                    label.as_deref().unwrap_or("")
                );
            }
            g.remove(&ids)?;
            eprintln!(
                "removed {} item(s) from {}: {:?}",
                ids.len(),
                index.display(),
                ids
            );
            g.compact_if_due(settings.search.compact_after)?;
            Ok(ExitCode::SUCCESS)
        }
        GalleryCommand::List { index, json } => {
            let g = Gallery::open(index, Default::default())?;
            let mut items: Vec<_> = g.items().collect();
            items.sort_by_key(|i| i.id);
            for i in items {
                if *json {
                    println!("{}", serde_json::to_string(i)?);
                } else {
                    let added = i
                        .added_unix
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "-".into());
                    println!(
                        "{}\t{}\t{}\t{}\t{}",
                        i.id,
                        i.label,
                        i.source,
                        i.sha256.as_deref().unwrap_or("-"),
                        added
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        GalleryCommand::Compact { index } => {
            let mut g = Gallery::open_for_write(index, Default::default())?;
            g.compact()?;
            eprintln!(
                "compacted {}: {} items in {}",
                index.display(),
                g.len(),
                g.manifest().snapshot
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn add(cli: &Cli, args: &AddArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let mut settings = load_settings(cli)?;
    if let Some(m) = &args.rec_model {
        settings.embedder.model = m.clone();
    }
    let mut g = Gallery::open_for_write(&args.index, (&settings).into())?;
    let mut embedder = Embedder::open(&settings)?;
    g.check_model(embedder.model_sha256(), &settings.embedder.model)?;
    // Every image is decoded before anything is added: one bad file changes nothing.
    let mut photos = Vec::with_capacity(args.images.len());
    for path in &args.images {
        photos.push((
            path,
            Photo::read(path, &settings.input)
                .map_err(|e| anyhow::anyhow!("{e}; nothing was added"))?,
        ));
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (path, photo) in photos {
        let feature = photo.embed(&mut embedder)?;
        let id = g.add(
            &args.label,
            &path.display().to_string(),
            Some(photo.sha256),
            &feature,
        )?;
        // Printed only once the record is on disk: a line here is a promise.
        writeln!(out, "added {id} {}", path.display())?;
        out.flush()?;
        g.compact_if_due(settings.search.compact_after)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn build(cli: &Cli, args: &BuildArgs) -> anyhow::Result<ExitCode> {
    let mut settings = load_settings(cli)?;
    if let Some(m) = &args.rec_model {
        settings.embedder.model = m.clone();
    }
    if args.ort_library.is_some() {
        settings.engine.ort_library = args.ort_library.clone();
    }
    let mut embedder = Embedder::open(&settings)?;
    let opts = BuildOptions {
        list: args.list.clone(),
        image_root: args.image_root.clone(),
        out: args.out.clone(),
        method: args.method,
        on_bad_image: if args.fail_on_missing {
            OnBadImage::Fail
        } else {
            OnBadImage::Skip
        },
        input: settings.input.clone(),
    };
    let tty = std::io::stderr().is_terminal();
    let report = enroll::build(
        &mut embedder,
        &settings.embedder.model,
        &opts,
        |done, total| {
            if tty {
                eprint!("\rembedding gallery images: {done}/{total}");
                if done == total {
                    eprintln!();
                }
            } else if done == total || done % 50 == 0 {
                tracing::info!("embedded {done}/{total} gallery images");
            }
        },
    )?;
    for (entry, why) in &report.skipped {
        eprintln!("skipped line {} ({}): {why}", entry.line, entry.path);
    }
    let m = report.gallery.manifest();
    eprintln!(
        "gallery written to {}: {} items, {} skipped, method {:?}, {}-d, model {} (sha256 {})",
        args.out.display(),
        m.count,
        report.skipped.len(),
        m.method,
        m.dim,
        m.model_file,
        &m.model_sha256[..12]
    );
    Ok(if report.skipped.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

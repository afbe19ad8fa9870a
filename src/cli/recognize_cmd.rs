//! `shitud recognize`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;

use crate::cli::{expand_inputs, load_settings, Cli, ModelArgs};
use crate::input::{self, Frame};
use crate::pipeline::Pipeline;
use crate::report::{draw, json, StageTimes};

/// Arguments of `shitud recognize`.
#[derive(Debug, Args)]
#[command(
    after_help = "Output: one JSON line per image on stdout, in input order:\n  {\"image\": PATH, \"results\": [{\"bbox\": [x1,y1,x2,y2], \"rec_docs\": LABEL, \"rec_scores\": SCORE}, ...], \"timings_ms\": {...}}\n  {\"image\": PATH, \"error\": MESSAGE}\nthen one summary line: {\"summary\": {\"images\": N, \"failed\": N, \"objects\": N, \"seconds\": S, \"images_per_s\": R}}.\nExit status: 0 when every image was recognised, 1 when any failed, 2 when nothing could run."
)]
pub struct RecognizeArgs {
    #[command(flatten)]
    models: ModelArgs,
    /// Write each image with boxes, labels and scores drawn on it into this directory.
    #[arg(long, value_name = "OUTDIR")]
    draw: Option<PathBuf>,
    /// Images, or directories of images.
    #[arg(required = true, value_name = "IMAGE|DIR")]
    inputs: Vec<PathBuf>,
}

/// Runs the command.
pub fn run(cli: &Cli, args: &RecognizeArgs) -> anyhow::Result<ExitCode> {
    let mut settings = load_settings(cli)?;
    args.models.apply(&mut settings);
    let images = expand_inputs(&args.inputs)?;
    let mut pipeline = Pipeline::open(&settings)?;
    let pool = pipeline.frame_pool();
    tracing::info!(images = images.len(), gallery = %settings.search.index.display(), "recognising");

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let (mut failed, mut objects) = (0usize, 0usize);
    let start = Instant::now();
    // Groups as large as a detector batch keep memory flat on long lists.
    for group in images.chunks(pipeline.detector().max_batch().max(1)) {
        let mut frames: Vec<Frame> = Vec::new();
        let mut decode_ms = Vec::new();
        let mut lines: Vec<Option<String>> = vec![None; group.len()];
        let mut slots = Vec::new();
        for (i, path) in group.iter().enumerate() {
            let t = Instant::now();
            match input::read_in(path, &settings.input, &pool) {
                Ok(frame) => {
                    decode_ms.push(t.elapsed().as_secs_f64() * 1e3);
                    frames.push(frame);
                    slots.push(i);
                }
                Err(e) => {
                    failed += 1;
                    tracing::warn!("{e}");
                    lines[i] = Some(json::error_line(
                        &path.display().to_string(),
                        &e.to_string(),
                    ));
                }
            }
        }
        match pipeline.recognize(&frames) {
            Ok(recognized) => {
                for (((frame, rec), slot), decode) in
                    frames.iter().zip(&recognized).zip(&slots).zip(&decode_ms)
                {
                    let timings = StageTimes {
                        decode: *decode,
                        ..rec.timings
                    };
                    objects += rec.results.len();
                    lines[*slot] = Some(json::result_line(&frame.name, &rec.results, &timings));
                    if let Some(dir) = &args.draw {
                        if let Err(e) = draw::save_annotated(frame, &rec.results, dir) {
                            tracing::warn!("{e}");
                        }
                    }
                }
            }
            Err(e) => {
                // An inference failure is reported against every frame of the group.
                for (frame, slot) in frames.iter().zip(&slots) {
                    failed += 1;
                    lines[*slot] = Some(json::error_line(&frame.name, &e.to_string()));
                }
            }
        }
        for line in lines.into_iter().flatten() {
            writeln!(out, "{line}")?;
        }
        out.flush()?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let summary = serde_json::json!({"summary": {
        "images": images.len(), "failed": failed, "objects": objects,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "images_per_s": if seconds > 0.0 { ((images.len() as f64 / seconds) * 100.0).round() / 100.0 } else { 0.0 },
    }});
    writeln!(out, "{summary}")?;
    if let Some(dir) = &args.draw {
        tracing::info!(dir = %dir.display(), "annotated images written");
    }
    tracing::info!(
        images = images.len(),
        failed,
        objects,
        seconds = format!("{seconds:.2}"),
        "done"
    );
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

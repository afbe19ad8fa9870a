//! `shitud eval`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::cli::{expand_inputs, load_settings, Cli, ModelArgs};
use crate::eval;
use crate::pipeline::Pipeline;

/// Arguments of `shitud eval`.
#[derive(Debug, Args)]
#[command(
    after_help = "Pipeline: a result is correct when its label is right and its box overlaps a truth box of that label with IoU >= 0.5 (each truth object counts once).\nRecogniser alone: each truth box is cropped and searched; recall@1/@5 and mAP over the whole gallery ranking."
)]
pub struct EvalArgs {
    #[command(flatten)]
    models: ModelArgs,
    /// Truth file: file<TAB>label<TAB>x1<TAB>y1<TAB>x2<TAB>y2 per object.
    #[arg(long, value_name = "FILE")]
    truth: PathBuf,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Scene images, or directories of them.
    #[arg(required = true, value_name = "IMAGE|DIR")]
    scenes: Vec<PathBuf>,
}

/// Runs the command.
pub fn run(cli: &Cli, args: &EvalArgs) -> anyhow::Result<ExitCode> {
    let mut settings = load_settings(cli)?;
    args.models.apply(&mut settings);
    let truth = eval::read_truth(&args.truth)?;
    let scenes = expand_inputs(&args.scenes)?;
    let mut pipeline = Pipeline::open(&settings)?;
    let r = eval::evaluate(&mut pipeline, &scenes, &truth, &settings.input)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{} scenes, {} objects, gallery {}",
            r.images,
            r.objects,
            settings.search.index.display()
        );
        println!(
            "pipeline    recall {:.3} ({}/{}), precision {:.3} ({}/{} results)",
            r.recall, r.true_positives, r.objects, r.precision, r.true_positives, r.results
        );
        println!(
            "recogniser  recall@1 {:.3}, recall@5 {:.3}, mAP {:.3} (on truth crops)",
            r.recall_at_1, r.recall_at_5, r.map
        );
        println!();
        println!(
            "{:<24} {:>7} {:>6} {:>6} {:>9}",
            "label", "objects", "found", "false+", "rec top1"
        );
        for (label, row) in &r.per_label {
            println!(
                "{:<24} {:>7} {:>6} {:>6} {:>9}",
                label, row.objects, row.found, row.false_positives, row.rec_top1
            );
        }
    }
    for e in &r.errors {
        eprintln!("skipped: {e}");
    }
    Ok(if r.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

//! `shitud config check` and `shitud config show`.

use std::process::ExitCode;

use clap::Subcommand;

use super::Cli;
use crate::config::layers;

/// Configuration commands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the layered configuration: types, ranges, combinations, and
    /// the files it names. Prints every problem with its file and line (or
    /// environment variable); exits 1 if there is any.
    Check,
    /// Print the effective configuration (all layers merged, secrets masked),
    /// each value set by a layer followed by where it came from.
    Show,
}

/// Runs a configuration command.
pub fn run(cli: &Cli, cmd: &ConfigCommand) -> anyhow::Result<ExitCode> {
    let files = layers::files(cli.config.as_deref());
    let (effective, problems) = layers::check(cli.config.as_deref());
    match cmd {
        ConfigCommand::Check => {
            let sources = if files.is_empty() {
                format!(
                    "built-in defaults (no --config, and {} does not exist)",
                    layers::SYSTEM_CONFIG
                )
            } else {
                files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if problems.is_empty() {
                println!("configuration ok: {sources}");
                return Ok(ExitCode::SUCCESS);
            }
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!(
                "{} problem(s) in the configuration from {sources}",
                problems.len()
            );
            Ok(ExitCode::from(1))
        }
        ConfigCommand::Show => {
            let Some(effective) = effective else {
                for p in &problems {
                    eprintln!("{p}");
                }
                anyhow::bail!("the configuration cannot be read; see the problems above");
            };
            print!("{}", layers::show(&effective));
            if !problems.is_empty() {
                eprintln!(
                    "note: {} problem(s); run `shitud config check`",
                    problems.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

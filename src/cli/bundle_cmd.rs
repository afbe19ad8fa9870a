//! `shitud bundle keygen|pack|sign|verify`: making and checking update bundles.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::{load_settings, Cli};
use crate::ota::{bundle, keys};

/// Update bundle commands (docs/OTA.md).
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Make an ed25519 key pair for signing bundles: KEY (secret, mode 0600;
    /// keep it off the boxes) and KEY.pub (goes into ota.trusted_keys).
    Keygen {
        /// The secret key file to create; never overwritten.
        #[arg(long, value_name = "KEY")]
        out: PathBuf,
    },
    /// Pack models and/or a gallery into a bundle, with their sizes and
    /// sha256s in its manifest. Signed too if --key is given.
    Pack {
        /// The bundle's version, as your fleet names it (e.g. 2026.11.27-1).
        #[arg(long, value_name = "TEXT")]
        version: String,
        /// A new detector model (ONNX).
        #[arg(long, value_name = "FILE")]
        detector: Option<PathBuf>,
        /// A new recogniser model (ONNX).
        #[arg(long, value_name = "FILE")]
        embedder: Option<PathBuf>,
        /// A new gallery (a directory made by `shitud gallery build`).
        #[arg(long, value_name = "DIR")]
        gallery: Option<PathBuf>,
        /// A health-check image and the label the new pipeline must give it; repeatable.
        #[arg(long, value_name = "IMAGE=LABEL")]
        golden: Vec<String>,
        /// A CPU architecture it is for (aarch64, x86_64); repeatable; none = any.
        #[arg(long, value_name = "ARCH")]
        target: Vec<String>,
        /// The oldest shitud that may apply it [default: this version].
        #[arg(long, value_name = "VERSION")]
        min_daemon: Option<String>,
        /// Let this bundle replace a newer version on the box (signed into the
        /// manifest). Without it a box refuses a bundle that is not newer than
        /// what it runs; `shitud ota rollback` needs no bundle.
        #[arg(long)]
        allow_downgrade: bool,
        /// Sign it with this secret key.
        #[arg(long, value_name = "KEY")]
        key: Option<PathBuf>,
        /// The bundle file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Sign a bundle in place with a secret key (replaces an earlier signature).
    Sign {
        /// The secret key (from `shitud bundle keygen`).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// The bundle.
        bundle: PathBuf,
    },
    /// Check a bundle as a box would before applying it: signature by a
    /// trusted key, target, daemon version, and every file's size and sha256.
    /// Exits 1 if it would be refused, saying why.
    Verify {
        /// A trusted public key (base64 or KEY.pub); repeatable [default: ota.trusted_keys].
        #[arg(long, value_name = "KEY")]
        trust: Vec<String>,
        /// The bundle.
        bundle: PathBuf,
    },
}

/// Runs a bundle command.
pub fn run(cli: &Cli, cmd: &BundleCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BundleCommand::Keygen { out } => {
            let public = keys::generate(out)?;
            println!("secret key: {} (keep it off the boxes)", out.display());
            println!(
                "public key: {} (id {}): add it to ota.trusted_keys",
                keys::public_path(out).display(),
                keys::key_id(&public)
            );
            Ok(ExitCode::SUCCESS)
        }
        BundleCommand::Pack {
            version,
            detector,
            embedder,
            gallery,
            golden,
            target,
            min_daemon,
            allow_downgrade,
            key,
            out,
        } => {
            let mut pairs = Vec::new();
            for g in golden {
                let (image, label) = g
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--golden {g:?}: expected IMAGE=LABEL"))?;
                pairs.push((PathBuf::from(image), label.to_string()));
            }
            let spec = bundle::PackSpec {
                version: version.clone(),
                detector: detector.clone(),
                embedder: embedder.clone(),
                gallery: gallery.clone(),
                golden: pairs,
                targets: target.clone(),
                min_daemon_version: min_daemon.clone(),
                allow_downgrade: *allow_downgrade,
            };
            let key = key.as_deref().map(keys::read_secret).transpose()?;
            let manifest = bundle::pack(&spec, out, key.as_ref())?;
            let bytes: u64 = manifest.files.iter().map(|f| f.size).sum();
            println!(
                "{}: bundle {} with {} file(s), {:.1} MiB",
                out.display(),
                manifest.version,
                manifest.files.len(),
                bytes as f64 / (1 << 20) as f64
            );
            for p in &manifest.parts {
                println!("  {} {} ({})", p.role, p.path, p.version);
            }
            match &key {
                Some(k) => println!("signed with key {}", keys::key_id(&k.verifying_key())),
                None => println!(
                    "unsigned: boxes refuse it until `shitud bundle sign --key KEY {}`",
                    out.display()
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        BundleCommand::Sign { key, bundle: path } => {
            let id = bundle::sign(path, &keys::read_secret(key)?)?;
            println!("{}: signed with key {id}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        BundleCommand::Verify {
            trust,
            bundle: path,
        } => {
            let specs = if trust.is_empty() {
                load_settings(cli)?.ota.trusted_keys
            } else {
                trust.clone()
            };
            let trusted = specs
                .iter()
                .map(|k| keys::read_public(k))
                .collect::<Result<Vec<_>, _>>()?;
            match bundle::verify(path, &trusted) {
                Ok(v) => {
                    println!(
                        "{}: ok, bundle {} signed by key {}, {} file(s) checked",
                        path.display(),
                        v.manifest.version,
                        v.key_id,
                        v.manifest.files.len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("refused: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

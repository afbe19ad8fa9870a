//! `shitud run`.

use std::process::ExitCode;

use clap::Args;

use super::{load_settings, Cli, ModelArgs};

/// Flags of `shitud run`. Everything else is in the config file.
#[derive(Debug, Args)]
#[command(
    after_help = "Topics: <prefix>/<device_id>/recognize, /result, /status, /gallery/add, /gallery/remove (docs/MQTT.md).\nExample: shitud run --config /etc/shitu-edge/config.toml"
)]
pub struct RunArgs {
    /// Model, gallery and runtime overrides.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Broker host [default: localhost].
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Broker port [default: 1883].
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// This box's name in the topics [default: the host name].
    #[arg(long, value_name = "NAME")]
    pub device_id: Option<String>,
    /// Where answers wait while the broker is unreachable [default: spool].
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<std::path::PathBuf>,
    /// Most requests per batch; 1 turns batching off [default: 4].
    #[arg(long, value_name = "N")]
    pub max_batch: Option<usize>,
}

pub fn run(cli: &Cli, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let mut s = load_settings(cli)?;
    args.model.apply(&mut s);
    if let Some(h) = &args.host {
        s.mqtt.host = h.clone();
    }
    if let Some(p) = args.port {
        s.mqtt.port = p;
    }
    if let Some(d) = &args.device_id {
        s.mqtt.device_id = d.clone();
    }
    if let Some(d) = &args.spool_dir {
        s.daemon.spool_dir = d.clone();
    }
    if let Some(b) = args.max_batch {
        s.daemon.max_batch = b;
    }
    s.validate()?;
    crate::daemon::run(s)?;
    Ok(ExitCode::SUCCESS)
}

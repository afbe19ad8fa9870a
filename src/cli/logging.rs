//! Log output: human-readable text, JSON lines, or the systemd journal's
//! stdout format, all on stderr.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// journald's line format (sd-daemon(3)): `<priority>message`. journald
/// stamps the time and the unit itself, so neither is repeated.
struct Journal;

impl<S, N> FormatEvent<S, N> for Journal
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(w, "<{priority}>")?;
        ctx.format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// The format `auto` stands for here.
pub fn resolve(format: LogFormat) -> LogFormat {
    match format {
        // systemd sets JOURNAL_STREAM when stderr is connected to the journal.
        LogFormat::Auto if std::env::var_os("JOURNAL_STREAM").is_some() => LogFormat::Journal,
        LogFormat::Auto => LogFormat::Text,
        other => other,
    }
}

/// Colour codes only where a person reads them: stderr is a terminal and
/// `NO_COLOR` (no-color.org) is not set. Log files, pipes and `journalctl`
/// get plain text.
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber. `RUST_LOG` overrides the level.
pub fn init(format: LogFormat, verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (_, 0) => "info",
        (_, 1) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default},ort=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match resolve(format) {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Journal => builder.with_ansi(false).event_format(Journal).try_init(),
        LogFormat::Text | LogFormat::Auto => builder.with_ansi(colour()).try_init(),
    };
}

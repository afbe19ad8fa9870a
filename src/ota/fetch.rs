//! Bringing a bundle onto the box: an HTTP(S) download that resumes where
//! it broke off and stops at a size limit, or a local file used in place.
//!
//! Resume matters on line-side networks: a 40 MB bundle over a flaky link
//! must not start from zero on every drop. The partial file keeps its bytes
//! between attempts (and across daemon restarts), and each attempt asks for
//! the rest with `Range`. A server that ignores `Range` (answers 200) is
//! read from the start again.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Where a bundle comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// `http://` or `https://`.
    Url(String),
    /// A file on this box.
    Path(PathBuf),
}

impl Source {
    /// A URL when `s` starts with `http://` or `https://`, else a path.
    pub fn parse(s: &str) -> Source {
        if s.starts_with("http://") || s.starts_with("https://") {
            Source::Url(s.to_string())
        } else {
            Source::Path(PathBuf::from(s))
        }
    }

    /// For messages.
    pub fn describe(&self) -> String {
        match self {
            Source::Url(u) => u.clone(),
            Source::Path(p) => p.display().to_string(),
        }
    }
}

/// Limits of one download.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest bundle accepted, bytes.
    pub max_bytes: u64,
    /// Attempts (each resuming the last) before giving up.
    pub attempts: u32,
    /// Time limit of one attempt.
    pub timeout: Duration,
}

impl Limits {
    /// The limits `[ota]` sets: its size limit, 4 resuming attempts of at most 10 minutes each.
    pub fn from_settings(o: &crate::config::OtaSettings) -> Limits {
        Limits {
            max_bytes: o.max_download_bytes,
            attempts: 4,
            timeout: Duration::from_secs(600),
        }
    }
}

/// Downloads `url` into `dest` (resuming `dest.part` if a previous attempt
/// left one), calling `progress(bytes, total)` about once a second.
pub fn download(
    url: &str,
    dest: &Path,
    limits: Limits,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<PathBuf> {
    let part = dest.with_extension("part");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(limits.timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut last_error = String::new();
    for attempt in 1..=limits.attempts.max(1) {
        match attempt_once(&agent, url, &part, limits.max_bytes, progress) {
            Ok(()) => {
                fs::rename(&part, dest).map_err(|e| Error::io(dest, e))?;
                return Ok(dest.to_path_buf());
            }
            Err(Attempt::Fatal(why)) => {
                let _ = fs::remove_file(&part);
                return Err(refused(url, why));
            }
            Err(Attempt::Retry(why)) => {
                let have = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
                tracing::warn!(url, attempt, bytes = have, file = %part.display(), "download broke off: {why}; resuming");
                last_error = why;
                std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
            }
        }
    }
    Err(refused(
        url,
        format!(
            "download failed after {} attempts: {last_error}",
            limits.attempts.max(1)
        ),
    ))
}

enum Attempt {
    Retry(String),
    Fatal(String),
}

fn attempt_once(
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
    max: u64,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> std::result::Result<(), Attempt> {
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut req = agent.get(url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let resp = req.call().map_err(|e| Attempt::Retry(e.to_string()))?;
    let status = resp.status().as_u16();
    let (append, start) = match status {
        206 => (true, have),
        200 => (false, 0),
        // Asked for bytes past the end: the partial file is already whole.
        416 if have > 0 => return Ok(()),
        404 | 410 => {
            return Err(Attempt::Fatal(format!(
                "the server answered {status}: no such bundle"
            )))
        }
        401 | 403 => {
            return Err(Attempt::Fatal(format!(
                "the server answered {status}: not allowed"
            )))
        }
        s if (500..600).contains(&s) => {
            return Err(Attempt::Retry(format!("the server answered {s}")))
        }
        s => return Err(Attempt::Fatal(format!("the server answered {s}"))),
    };
    let length = resp.body().content_length();
    let total = length.map(|l| l + start);
    if let Some(t) = total.filter(|&t| t > max) {
        return Err(Attempt::Fatal(format!(
            "the bundle is {t} bytes, over the limit of {max} (ota.max_download_bytes)"
        )));
    }
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(part)
        .map_err(|e| Attempt::Fatal(format!("{}: {e}", part.display())))?;
    let mut reader = resp.into_body().into_reader();
    let mut got = start;
    let mut buf = vec![0u8; 1 << 16];
    let mut last = Instant::now();
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let _ = file.sync_all();
                return Err(Attempt::Retry(e.to_string()));
            }
        };
        got += n as u64;
        if got > max {
            return Err(Attempt::Fatal(format!(
                "the download passed the limit of {max} bytes (ota.max_download_bytes)"
            )));
        }
        file.write_all(&buf[..n])
            .map_err(|e| Attempt::Fatal(format!("{}: {e}", part.display())))?;
        if last.elapsed() >= Duration::from_secs(1) {
            progress(got, total);
            last = Instant::now();
        }
    }
    file.sync_all()
        .map_err(|e| Attempt::Fatal(format!("{}: {e}", part.display())))?;
    progress(got, total);
    if let Some(t) = total.filter(|&t| got < t) {
        return Err(Attempt::Retry(format!(
            "the connection closed after {got} of {t} bytes"
        )));
    }
    Ok(())
}

fn refused(url: &str, why: impl Into<String>) -> Error {
    Error::Bundle {
        path: PathBuf::from(url),
        reason: why.into(),
    }
}

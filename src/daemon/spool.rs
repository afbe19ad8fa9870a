//! The answer spool: answers that could not reach the broker wait here, one
//! file each, so that they survive a daemon restart during a broker outage.
//!
//! A file is `<seq>.msg`: one JSON header line, then the payload bytes. It is
//! written to a temporary name, synced and renamed, so a crash leaves either
//! the whole answer or nothing. Files that do not parse are moved aside to
//! `<name>.bad` with a warning, never deleted silently.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// An answer as kept on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spooled {
    /// Order of creation; files are replayed in this order.
    pub seq: u64,
    /// Topic to publish to.
    pub topic: String,
    /// The request it answers (re-armed in the duplicate filter on start-up).
    pub request_id: String,
    /// MQTT 5 correlation data to copy back, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_hex: Option<String>,
    /// The answer.
    #[serde(skip)]
    pub payload: Vec<u8>,
}

/// The spool directory with its limits.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_messages: usize,
    max_bytes: u64,
    bytes: u64,
    files: std::collections::BTreeMap<u64, u64>,
}

impl Spool {
    /// Opens (creating) the directory and loads what a previous run left.
    pub fn open(dir: &Path, max_messages: usize, max_bytes: u64) -> Result<(Spool, Vec<Spooled>)> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            max_messages,
            max_bytes,
            bytes: 0,
            files: Default::default(),
        };
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let path = entry.map_err(|e| Error::io(dir, e))?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if name.ends_with(".tmp") {
                // A write that never finished: its answer was not spooled.
                let _ = fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".msg") {
                continue;
            }
            match read_file(&path) {
                Ok(s) => found.push(s),
                Err(why) => {
                    tracing::warn!(file = %path.display(), "unreadable spooled answer moved aside: {why}");
                    let _ = fs::rename(&path, path.with_extension("msg.bad"));
                }
            }
        }
        found.sort_by_key(|s| s.seq);
        for s in &found {
            let size = s.payload.len() as u64;
            spool.files.insert(s.seq, size);
            spool.bytes += size;
        }
        Ok((spool, found))
    }

    /// Highest sequence number on disk.
    pub fn last_seq(&self) -> Option<u64> {
        self.files.keys().next_back().copied()
    }

    /// Answers on disk.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether the spool is empty.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Writes one answer durably. Returns the sequence numbers of older
    /// answers dropped to stay within the limits (oldest first).
    pub fn put(&mut self, s: &Spooled) -> Result<Vec<u64>> {
        if self.files.contains_key(&s.seq) {
            return Ok(Vec::new());
        }
        let path = self.path(s.seq);
        let tmp = path.with_extension("tmp");
        let header =
            serde_json::to_vec(s).map_err(|e| Error::json("writing a spooled answer", e))?;
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&header)?;
            f.write_all(b"\n")?;
            f.write_all(&s.payload)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| Error::io(&path, e))?;
        self.files.insert(s.seq, s.payload.len() as u64);
        self.bytes += s.payload.len() as u64;
        let mut dropped = Vec::new();
        while self.files.len() > self.max_messages.max(1)
            || (self.bytes > self.max_bytes && self.files.len() > 1)
        {
            let Some((&oldest, _)) = self.files.iter().next() else {
                break;
            };
            self.remove(oldest);
            dropped.push(oldest);
        }
        Ok(dropped)
    }

    /// Deletes an answer once the broker has it.
    pub fn remove(&mut self, seq: u64) {
        if let Some(size) = self.files.remove(&seq) {
            self.bytes -= size;
            if let Err(e) = fs::remove_file(self.path(seq)) {
                tracing::warn!(seq, "cannot delete spooled answer: {e}");
            }
        }
    }

    /// Whether `seq` is on disk.
    pub fn contains(&self, seq: u64) -> bool {
        self.files.contains_key(&seq)
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.msg"))
    }
}

fn read_file(path: &Path) -> std::result::Result<Spooled, String> {
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no header line")?;
    let mut s: Spooled =
        serde_json::from_slice(&bytes[..nl]).map_err(|e| format!("bad header: {e}"))?;
    s.payload = bytes[nl + 1..].to_vec();
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, n: usize) -> Spooled {
        Spooled {
            seq,
            topic: "t/result".into(),
            request_id: format!("r{seq}"),
            correlation_hex: Some("0a".into()),
            payload: vec![b'x'; n],
        }
    }

    #[test]
    fn survives_reopen_in_order_and_drops_oldest_over_limits() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, old) = Spool::open(dir.path(), 3, 1000).unwrap();
        assert!(old.is_empty());
        for i in [5, 2, 9] {
            assert!(s.put(&msg(i, 10)).unwrap().is_empty());
        }
        assert_eq!(s.put(&msg(11, 10)).unwrap(), vec![2]);
        s.remove(9);
        std::fs::write(dir.path().join("00000000000000000099.msg"), b"garbage").unwrap();
        std::fs::write(dir.path().join("00000000000000000100.tmp"), b"half").unwrap();
        let (s2, found) = Spool::open(dir.path(), 3, 1000).unwrap();
        assert_eq!(found, vec![msg(5, 10), msg(11, 10)]);
        assert_eq!(s2.last_seq(), Some(11));
        assert!(dir.path().join("00000000000000000099.msg.bad").exists());
        assert!(!dir.path().join("00000000000000000100.tmp").exists());
    }

    #[test]
    fn byte_limit_keeps_at_least_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), 100, 25).unwrap();
        s.put(&msg(1, 10)).unwrap();
        s.put(&msg(2, 10)).unwrap();
        assert_eq!(s.put(&msg(3, 10)).unwrap(), vec![1]);
        assert_eq!(s.put(&msg(4, 100)).unwrap(), vec![2, 3]);
        assert_eq!(s.len(), 1);
    }
}

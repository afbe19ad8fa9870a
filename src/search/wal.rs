//! The gallery's write-ahead log: every change is appended and fsynced
//! before it is acknowledged, and replayed on open.
//!
//! Frame: `len: u32 LE | crc32(payload): u32 LE | payload (JSON)`. A crash
//! can only tear the last frame (it was never acknowledged); a frame whose
//! length runs past the end or whose checksum fails ends the log, and what
//! follows it is reported and dropped.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::search::GalleryItem;

/// One logged change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Record {
    /// An item and its feature.
    Add {
        /// Sequence number, increasing by one per record over the gallery's life.
        seq: u64,
        /// The item.
        item: GalleryItem,
        /// Its unit-length feature.
        vector: Vec<f32>,
    },
    /// Items taken out.
    Remove {
        /// Sequence number.
        seq: u64,
        /// Their ids.
        ids: Vec<i64>,
    },
}

impl Record {
    /// The record's sequence number.
    pub fn seq(&self) -> u64 {
        match self {
            Record::Add { seq, .. } | Record::Remove { seq, .. } => *seq,
        }
    }
}

/// What was found past the last good record.
#[derive(Debug, Clone, PartialEq)]
pub struct TornTail {
    /// Byte offset of the first bad frame.
    pub offset: u64,
    /// Bytes from there to the end.
    pub bytes: u64,
    /// Why the frame is bad.
    pub reason: String,
}

impl std::fmt::Display for TornTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes at offset {} ({}): a write that was never acknowledged",
            self.bytes, self.offset, self.reason
        )
    }
}

/// Reads every good record of the log at `path` (none if it does not exist).
/// The framing is shared by the gallery's log ([`Record`]) and the line's
/// (`line.log`, [`crate::search::line::Logged`]).
pub fn read<R: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<(Vec<R>, u64, Option<TornTail>)> {
    let mut data = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut data).map_err(|e| Error::io(path, e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0, None)),
        Err(e) => return Err(Error::io(path, e)),
    }
    let mut records = Vec::new();
    let mut pos = 0usize;
    let torn = loop {
        if pos == data.len() {
            break None;
        }
        let bad = |reason: &str| {
            Some(TornTail {
                offset: pos as u64,
                bytes: (data.len() - pos) as u64,
                reason: reason.into(),
            })
        };
        if data.len() - pos < 8 {
            break bad("incomplete frame header");
        }
        let len =
            u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]) as usize;
        let crc = u32::from_le_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]]);
        if len > data.len() - pos - 8 {
            break bad("frame runs past the end of the file");
        }
        let payload = &data[pos + 8..pos + 8 + len];
        if crc32fast::hash(payload) != crc {
            break bad("checksum mismatch");
        }
        match serde_json::from_slice::<R>(payload) {
            Ok(r) => records.push(r),
            Err(_) => break bad("undecodable record"),
        }
        pos += 8 + len;
    };
    Ok((records, pos as u64, torn))
}

/// An open log, appending.
pub struct Wal {
    file: File,
    path: PathBuf,
}

impl Wal {
    /// Opens the log for appending after its last good record, cutting off a torn tail.
    pub fn open(path: &Path, good_len: u64) -> Result<Wal> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        // Two writers appending would interleave frames; the lock goes with the process.
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(Error::gallery(
                path,
                "another process is changing this gallery; try again when it has finished",
            ));
        }
        file.set_len(good_len).map_err(|e| Error::io(path, e))?;
        file.seek(SeekFrom::Start(good_len))
            .map_err(|e| Error::io(path, e))?;
        file.sync_all().map_err(|e| Error::io(path, e))?;
        Ok(Wal {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Appends a record and makes it durable.
    pub fn append<R: Serialize>(&mut self, record: &R) -> Result<()> {
        let payload =
            serde_json::to_vec(record).map_err(|e| Error::gallery(&self.path, e.to_string()))?;
        let mut frame = Vec::with_capacity(payload.len() + 8);
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        self.file
            .write_all(&frame)
            .map_err(|e| Error::io(&self.path, e))?;
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }

    /// Empties the log (after its records went into a snapshot).
    pub fn reset(&mut self) -> Result<()> {
        self.file.set_len(0).map_err(|e| Error::io(&self.path, e))?;
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|e| Error::io(&self.path, e))?;
        self.file.sync_all().map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(seq: u64) -> Record {
        Record::Add {
            seq,
            item: GalleryItem {
                id: seq as i64,
                label: "a b".into(),
                source: "x.jpg".into(),
                sha256: None,
                added_unix: Some(1),
            },
            vector: vec![0.5, -0.25],
        }
    }

    #[test]
    fn appends_replays_and_drops_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let mut wal = Wal::open(&path, 0).unwrap();
        for s in 1..=3 {
            wal.append(&add(s)).unwrap();
        }
        drop(wal);
        let (records, good, torn) = read::<Record>(&path).unwrap();
        assert_eq!(records, vec![add(1), add(2), add(3)]);
        assert_eq!(torn, None);
        // Tear the last frame, then corrupt a byte of the second.
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 5]).unwrap();
        let (records, good2, torn) = read::<Record>(&path).unwrap();
        assert_eq!(records.len(), 2);
        assert!(torn.unwrap().reason.contains("past the end"));
        let mut bad = full.clone();
        let second = (good2 as usize + full.len()) / 2 - (full.len() - good2 as usize) / 2 - 30;
        bad[second] ^= 0xFF;
        std::fs::write(&path, &bad).unwrap();
        let (records, _, torn) = read::<Record>(&path).unwrap();
        assert!(records.len() < 3 && torn.is_some());
        // Reopening for append cuts the tail; new records follow the good ones.
        std::fs::write(&path, &full[..full.len() - 5]).unwrap();
        let mut wal = Wal::open(&path, good2).unwrap();
        wal.append(&add(9)).unwrap();
        let (records, _, torn) = read::<Record>(&path).unwrap();
        assert_eq!(records, vec![add(1), add(2), add(9)]);
        assert!(torn.is_none() && good > good2);
        // A second writer is refused while the first is open.
        let err = Wal::open(&path, 0).err().unwrap().to_string();
        assert!(err.contains("another process"), "{err}");
        drop(wal);
        assert!(Wal::open(&path, std::fs::metadata(&path).unwrap().len()).is_ok());
    }
}

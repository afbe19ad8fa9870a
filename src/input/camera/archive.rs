//! Triggered frames kept for audit (`capture.keep_frames`): one JPEG per
//! answered trigger under `<keep_dir>/<source>/`, the oldest deleted first
//! once the folder holds more than `capture.keep_max_bytes`.

use std::path::{Path, PathBuf};

use opencv::core::{Mat, Vector};
use opencv::{imgcodecs, imgproc};

use crate::input::Frame;

/// The audit folder and its quota.
#[derive(Debug, Clone)]
pub struct Archive {
    dir: PathBuf,
    max_bytes: u64,
    /// One trim at a time: two would each delete for the same excess.
    trimming: std::sync::Arc<std::sync::Mutex<()>>,
}

impl Archive {
    /// Frames under `dir`, at most `max_bytes` of them.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Archive {
        Archive {
            dir: dir.into(),
            max_bytes,
            trimming: Default::default(),
        }
    }

    /// Saves `frame` as `<source>/<captured_at_ms>-<request_id>.jpg` (the id
    /// reduced to safe characters), then trims the folder to its quota.
    /// Returns the file written.
    pub fn keep(
        &self,
        source: &str,
        captured_at_ms: i64,
        request_id: &str,
        frame: &Frame,
    ) -> Result<PathBuf, String> {
        let safe: String = request_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        let dir = self.dir.join(source);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let path = dir.join(format!("{captured_at_ms}-{safe}.jpg"));
        let mut bgr = Mat::default();
        imgproc::cvt_color_def(frame.rgb(), &mut bgr, imgproc::COLOR_RGB2BGR)
            .map_err(|e| e.to_string())?;
        let mut jpeg = Vector::<u8>::new();
        let params = Vector::from_slice(&[imgcodecs::IMWRITE_JPEG_QUALITY, 90]);
        imgcodecs::imencode(".jpg", &bgr, &mut jpeg, &params).map_err(|e| e.to_string())?;
        std::fs::write(&path, jpeg.as_slice())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        self.trim();
        Ok(path)
    }

    /// Deletes the oldest frames (by capture time, across sources) until
    /// the folder is within its quota.
    fn trim(&self) {
        let _one = self.trimming.lock().unwrap_or_else(|p| p.into_inner());
        let mut files: Vec<(i64, PathBuf, u64)> = Vec::new();
        let Ok(sources) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for s in sources.filter_map(|e| e.ok()).filter(|e| e.path().is_dir()) {
            let Ok(entries) = std::fs::read_dir(s.path()) else {
                continue;
            };
            for e in entries.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().to_string();
                // The name starts with the capture time.
                let captured = name.split('-').next().and_then(|t| t.parse::<i64>().ok());
                if let (Some(t), true) = (captured, name.ends_with(".jpg")) {
                    let len = e.metadata().map_or(0, |m| m.len());
                    files.push((t, e.path(), len));
                }
            }
        }
        files.sort();
        let mut total: u64 = files.iter().map(|f| f.2).sum();
        for (_, path, len) in files {
            if total <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }

    /// Its folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opencv::core::{Scalar, CV_8UC3};

    #[test]
    fn frames_are_kept_within_the_quota_oldest_out() {
        let dir = tempfile::tempdir().unwrap();
        let m = Mat::new_rows_cols_with_default(120, 160, CV_8UC3, Scalar::all(77.0)).unwrap();
        let frame = Frame::from_rgb("f", m).unwrap();
        let one = Archive::new(dir.path(), u64::MAX)
            .keep("cam1", 1, "probe", &frame)
            .unwrap();
        let size = std::fs::metadata(&one).unwrap().len();
        std::fs::remove_file(&one).unwrap();
        let a = Archive::new(dir.path(), size * 3);
        let mut kept = Vec::new();
        for (t, id) in [
            (100, "a/../b"),
            (200, "r2"),
            (300, "r3"),
            (400, "r4"),
            (50, "late"),
        ] {
            kept.push(
                a.keep(if t == 300 { "cam2" } else { "cam1" }, t, id, &frame)
                    .unwrap(),
            );
        }
        assert!(kept[0].ends_with("cam1/100-a____b.jpg"), "{kept:?}");
        let left: Vec<bool> = kept.iter().map(|p| p.exists()).collect();
        // Three fit; the oldest captures (50, then 100) went.
        assert_eq!(left, vec![false, true, true, true, false]);
    }
}

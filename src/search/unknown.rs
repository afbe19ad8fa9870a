//! Unknown items: crops whose best gallery match scored under the
//! threshold, kept so that an operator can teach the line a new product
//! (`P/gallery/add` with `unknown_id`, or `shitud unknown enrol`).
//!
//! A bounded folder: each item is `<id>.png` (the crop, lossless, so that
//! enrolling it gives the feature the box computed) and `<id>.json` (what
//! it was, where, and its candidates). Ids are ULIDs, so name order is age
//! order, and the oldest are dropped first when the folder is full. An id
//! is checked to be a ULID before it becomes a path: no id names a file
//! outside the folder.

use std::path::{Path, PathBuf};

use opencv::core::{Mat, Rect};
use opencv::{imgcodecs, imgproc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::input::Frame;
use crate::search::line::ChangeId;

/// What is kept of an unknown item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnknownItem {
    /// Its id (a ULID).
    pub unknown_id: String,
    /// The camera it was seen on.
    pub source: String,
    /// The trigger it was seen for.
    pub request_id: String,
    /// The box that saw it (`mqtt.device_id`).
    pub device_id: String,
    /// `[x1, y1, x2, y2]` in the frame.
    pub bbox: [i32; 4],
    /// When the frame was captured, unix ms.
    pub captured_at_ms: i64,
    /// The best gallery matches, best first: none good enough.
    pub top_k: Vec<(String, f32)>,
    /// The line change that enrols it, once a line box has chosen one
    /// (kept so that a repeated enrolment repeats the same change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_id: Option<String>,
}

/// The folder of unknown items.
#[derive(Debug, Clone)]
pub struct UnknownStore {
    dir: PathBuf,
    max_items: usize,
    /// One enrolment's read-then-record at a time (the page and MQTT may
    /// enrol the same item at once).
    enrolling: std::sync::Arc<std::sync::Mutex<()>>,
}

/// Whether `id` is a ULID (26 characters of Crockford base32).
fn valid_id(id: &str) -> bool {
    id.len() == 26 && id.parse::<ChangeId>().is_ok()
}

impl UnknownStore {
    /// The store in `dir`, keeping at most `max_items`.
    pub fn new(dir: impl Into<PathBuf>, max_items: usize) -> UnknownStore {
        UnknownStore {
            dir: dir.into(),
            max_items: max_items.max(1),
            enrolling: Default::default(),
        }
    }

    /// Its folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn bad(&self, reason: impl Into<String>) -> Error {
        Error::Gallery {
            path: self.dir.clone(),
            reason: reason.into(),
        }
    }

    fn checked(&self, id: &str) -> Result<()> {
        if valid_id(id) {
            Ok(())
        } else {
            Err(self.bad(format!(
                "{id:?} is not an unknown item id (26 characters, as P/unknown and `shitud unknown list` give them)"
            )))
        }
    }

    /// The crop's image file.
    pub fn photo(&self, id: &str) -> Result<PathBuf> {
        self.checked(id)?;
        let p = self.dir.join(format!("{id}.png"));
        if p.is_file() {
            Ok(p)
        } else {
            Err(self.bad(format!(
                "no unknown item {id}: never seen here, enrolled, dropped, or pushed out by newer ones (capture.unknown_max_items)"
            )))
        }
    }

    /// Keeps the crop `bbox` of `frame` (RGB) with `item`'s facts; drops
    /// the oldest items beyond the bound. An item without a valid id gets one.
    pub fn keep(&self, frame: &Frame, mut item: UnknownItem) -> Result<UnknownItem> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| self.bad(format!("cannot create the folder: {e}")))?;
        let [x1, y1, x2, y2] = item.bbox;
        let (w, h) = (frame.width as i32, frame.height as i32);
        let (x1, y1) = (x1.clamp(0, w - 1), y1.clamp(0, h - 1));
        let (x2, y2) = (x2.clamp(x1 + 1, w), y2.clamp(y1 + 1, h));
        let roi = Mat::roi(frame.rgb(), Rect::new(x1, y1, x2 - x1, y2 - y1))
            .map_err(|e| self.bad(format!("crop {:?}: {e}", item.bbox)))?;
        let mut bgr = Mat::default();
        imgproc::cvt_color_def(&roi, &mut bgr, imgproc::COLOR_RGB2BGR)
            .map_err(|e| self.bad(e.to_string()))?;
        if !valid_id(&item.unknown_id) {
            item.unknown_id = ChangeId::generate().to_string();
        }
        let id = item.unknown_id.clone();
        let png = self.dir.join(format!("{id}.png"));
        let written = imgcodecs::imwrite_def(&png, &bgr)
            .map_err(|e| self.bad(format!("cannot write {}: {e}", png.display())))?;
        if !written {
            return Err(self.bad(format!("cannot write {}", png.display())));
        }
        self.write_meta(&item)?;
        let ids = self.ids()?;
        for old in ids.iter().take(ids.len().saturating_sub(self.max_items)) {
            tracing::info!(unknown_id = %old, "unknown item dropped: capture.unknown_max_items reached");
            let _ = self.remove(old);
        }
        Ok(item)
    }

    /// Writes an item's facts, whole or not at all.
    fn write_meta(&self, item: &UnknownItem) -> Result<()> {
        let json = serde_json::to_vec_pretty(item).map_err(|e| self.bad(e.to_string()))?;
        let meta = self.dir.join(format!("{}.json", item.unknown_id));
        let tmp = meta.with_extension("json.tmp");
        std::fs::write(&tmp, json)
            .and_then(|_| std::fs::rename(&tmp, &meta))
            .map_err(|e| self.bad(format!("cannot write {}: {e}", meta.display())))
    }

    /// The line change that enrols item `id`: the one chosen before, or
    /// `fresh`, recorded before it is used, so that a repeated enrolment
    /// (a redelivered request, a restart) names the same change and every
    /// box applies it once.
    pub fn change_for(&self, id: &str, fresh: ChangeId) -> Result<(UnknownItem, ChangeId)> {
        let _one = self.enrolling.lock().unwrap_or_else(|p| p.into_inner());
        let mut item = self.get(id)?;
        if let Some(c) = item.change_id.as_deref().and_then(|c| c.parse().ok()) {
            return Ok((item, c));
        }
        item.change_id = Some(fresh.to_string());
        self.write_meta(&item)?;
        Ok((item, fresh))
    }

    /// Ids held, oldest first.
    fn ids(&self) -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.bad(format!("cannot read: {e}"))),
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                name.strip_suffix(".json").map(str::to_string)
            })
            .filter(|id| valid_id(id))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Every item, oldest first (unreadable ones are skipped, logged).
    pub fn list(&self) -> Result<Vec<UnknownItem>> {
        Ok(self
            .ids()?
            .iter()
            .filter_map(|id| match self.get(id) {
                Ok(item) => Some(item),
                Err(e) => {
                    tracing::warn!("{e}");
                    None
                }
            })
            .collect())
    }

    /// One item.
    pub fn get(&self, id: &str) -> Result<UnknownItem> {
        self.photo(id)?;
        let meta = self.dir.join(format!("{id}.json"));
        let text = std::fs::read(&meta)
            .map_err(|e| self.bad(format!("cannot read {}: {e}", meta.display())))?;
        serde_json::from_slice(&text)
            .map_err(|e| self.bad(format!("{} is corrupt: {e}", meta.display())))
    }

    /// Forgets an item (after it was enrolled, or dropped by an operator).
    pub fn remove(&self, id: &str) -> Result<()> {
        self.checked(id)?;
        let mut found = false;
        for ext in ["json", "png"] {
            match std::fs::remove_file(self.dir.join(format!("{id}.{ext}"))) {
                Ok(()) => found = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.bad(format!("cannot remove {id}.{ext}: {e}"))),
            }
        }
        if found {
            Ok(())
        } else {
            Err(self.bad(format!("no unknown item {id}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opencv::core::{MatTraitConst, Scalar, CV_8UC3};

    fn frame() -> Frame {
        let m =
            Mat::new_rows_cols_with_default(60, 80, CV_8UC3, Scalar::new(10.0, 20.0, 30.0, 0.0))
                .unwrap();
        Frame::from_rgb("f", m).unwrap()
    }

    fn item() -> UnknownItem {
        UnknownItem {
            unknown_id: String::new(),
            source: "cam1".into(),
            request_id: "t1".into(),
            device_id: "box".into(),
            bbox: [10, 5, 50, 45],
            captured_at_ms: 1,
            top_k: vec![("apple".into(), 0.31)],
            change_id: None,
        }
    }

    #[test]
    fn an_enrolment_names_the_same_change_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = UnknownStore::new(dir.path(), 4);
        let a = store.keep(&frame(), item()).unwrap();
        let first = ChangeId::generate();
        let (_, c1) = store.change_for(&a.unknown_id, first).unwrap();
        let (item, c2) = store
            .change_for(&a.unknown_id, ChangeId::generate())
            .unwrap();
        assert_eq!((c1, c2), (first, first));
        assert_eq!(item.change_id, Some(first.to_string()));
        // Items kept before this field existed still read.
        let old = br#"{"unknown_id":"x","source":"s","request_id":"r","device_id":"d","bbox":[0,0,1,1],"captured_at_ms":0,"top_k":[]}"#;
        let old: UnknownItem = serde_json::from_slice(old).unwrap();
        assert_eq!(old.change_id, None);
        assert!(store.change_for("../x", first).is_err());
    }

    #[test]
    fn items_are_kept_bounded_oldest_out_and_ids_cannot_escape() {
        let dir = tempfile::tempdir().unwrap();
        let store = UnknownStore::new(dir.path().join("u"), 2);
        let a = store.keep(&frame(), item()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = store.keep(&frame(), item()).unwrap();
        assert_eq!(store.list().unwrap(), vec![a.clone(), b.clone()]);
        let crop = imgcodecs::imread(store.photo(&a.unknown_id).unwrap(), imgcodecs::IMREAD_COLOR)
            .unwrap();
        assert_eq!((crop.cols(), crop.rows()), (40, 40));
        std::thread::sleep(std::time::Duration::from_millis(2));
        let c = store.keep(&frame(), item()).unwrap();
        let ids: Vec<String> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|i| i.unknown_id)
            .collect();
        assert_eq!(
            ids,
            vec![b.unknown_id.clone(), c.unknown_id.clone()],
            "the oldest went"
        );
        store.remove(&b.unknown_id).unwrap();
        assert!(store
            .get(&b.unknown_id)
            .unwrap_err()
            .to_string()
            .contains("no unknown item"));
        for bad in ["../../etc/passwd", "", "01ARZ3NDEKTSV4RRFFQ69G5FA/"] {
            let e = store.photo(bad).unwrap_err().to_string();
            assert!(e.contains("is not an unknown item id"), "{bad}: {e}");
        }
    }
}

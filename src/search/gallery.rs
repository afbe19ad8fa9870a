//! A gallery on disk that changes while it is used: a snapshot (faiss index
//! + labels) and a write-ahead log of everything since.
//!
//! ```text
//! gallery/
//!   manifest.json       format, model sha256, dim, metric, method, which snapshot, last logged change in it
//!   snap-<seq>/vector.index   faiss.write_index output (IndexIDMap2, inner product)
//!   snap-<seq>/labels.json    [{"id", "label", "source", "sha256", "added_unix"}, …]
//!   wal.log             changes after the snapshot (see `wal.rs`)
//!   line.log            every change the box's line published (see `line.rs`); absent off a line
//! ```
//!
//! The line log is the source of truth for items added through the line: it
//! is appended (fsynced) before the gallery changes, and on every writable
//! open the gallery is brought to what the line log means, so a crash
//! between the two is repaired at the next start.
//!
//! Durability: an add or remove returns only after its log record is
//! fsynced. Compaction writes a new snapshot directory, fsyncs it, then
//! switches to it by renaming the manifest; only then is the log emptied and
//! the old snapshot deleted. A crash at any point leaves either the old
//! manifest (old snapshot + full log) or the new one (new snapshot; the log's
//! records up to `wal_seq` are skipped), never a half-written index.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::search::cuda_flat::CudaFlat;
use crate::search::line::{self, LineState, Logged};
use crate::search::wal::{self, Record, Wal};
use crate::search::{FaissIndex, Index, Method, Neighbor};

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The label map's file name inside a snapshot.
pub const LABELS: &str = "labels.json";
/// The faiss index's file name inside a snapshot (PaddleClas's name for it).
pub const VECTORS: &str = "vector.index";
/// The write-ahead log's file name.
pub const WAL: &str = "wal.log";
/// The line log's file name.
pub const LINE_LOG: &str = "line.log";
/// The on-disk format this build reads and writes.
pub const FORMAT: u32 = 2;

/// Search-time knobs of the approximate index kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// IVF lists probed per query.
    pub nprobe: usize,
    /// HNSW candidate list size.
    pub ef_search: usize,
    /// Search in GPU memory instead of faiss.
    pub device: crate::config::SearchDevice,
    /// The GPU for [`Tuning::device`].
    pub device_id: usize,
    /// How the GPU holds the matrix.
    pub gpu_precision: crate::config::GpuPrecision,
}

impl Default for Tuning {
    fn default() -> Self {
        (&crate::config::Settings::default()).into()
    }
}

impl From<&crate::config::Settings> for Tuning {
    fn from(settings: &crate::config::Settings) -> Self {
        let s = &settings.search;
        Tuning {
            nprobe: s.nprobe,
            ef_search: s.ef_search,
            device: s.device,
            device_id: settings.gpu.device_id.max(0) as usize,
            gpu_precision: s.gpu_precision,
        }
    }
}

/// What made a gallery, so it is never searched with features of another model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// On-disk format version.
    pub format: u32,
    /// sha256 of the recognition model that computed the vectors.
    pub model_sha256: String,
    /// That model's file name, for people.
    pub model_file: String,
    /// Vector length.
    pub dim: usize,
    /// Always `inner_product`: features are unit length, so this is cosine similarity.
    pub metric: String,
    /// Index kind.
    pub method: Method,
    /// Items in the snapshot.
    pub count: usize,
    /// Seconds since the Unix epoch when the snapshot was written.
    pub created_unix: u64,
    /// The snapshot directory.
    pub snapshot: String,
    /// The last log record the snapshot contains.
    pub wal_seq: u64,
    /// The id the next added item gets.
    pub next_id: i64,
}

/// One enrolled gallery image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GalleryItem {
    /// Stable id, the faiss id of its vector; never reused.
    pub id: i64,
    /// Product label; may contain spaces.
    pub label: String,
    /// The image it came from, as given when it was added.
    pub source: String,
    /// sha256 of the image file, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// When it was added (seconds since the Unix epoch), where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_unix: Option<u64>,
}

/// An opened gallery.
pub struct Gallery {
    dir: PathBuf,
    manifest: Manifest,
    labels: HashMap<i64, GalleryItem>,
    index: Box<dyn Index>,
    /// Removed, but still in an index that cannot remove (HNSW) until compaction.
    tombstones: HashSet<i64>,
    last_seq: u64,
    wal_records: usize,
    wal: Option<Wal>,
    /// The line's changes applied here.
    line: LineState,
    line_log: Option<Wal>,
}

/// What applying line changes did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LineApplied {
    /// Changes that were new here (the others had been applied before).
    pub new: usize,
    /// Items added, by id.
    pub added: Vec<i64>,
    /// Items removed, by id.
    pub removed: Vec<i64>,
}

impl std::fmt::Debug for Gallery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Gallery({}, {})",
            self.dir.display(),
            self.index.describe()
        )
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Gallery {
    /// Indexes `vectors` (one row of `dim` per item) with `method` and writes a new gallery to `dir`.
    pub fn create(
        dir: &Path,
        method: Method,
        dim: usize,
        model_sha256: &str,
        model_file: &str,
        items: Vec<GalleryItem>,
        vectors: &[f32],
    ) -> Result<Gallery> {
        if items.is_empty() {
            return Err(Error::gallery(
                dir,
                "no images to index: the gallery would be empty",
            ));
        }
        if vectors.len() != items.len() * dim {
            return Err(Error::gallery(
                dir,
                format!(
                    "{} vectors for {} items",
                    vectors.len() / dim.max(1),
                    items.len()
                ),
            ));
        }
        let ids: Vec<i64> = items.iter().map(|i| i.id).collect();
        let index = FaissIndex::build(method, dim, vectors, &ids)?;
        Gallery::write(dir, method, dim, model_sha256, model_file, items, index)
    }

    /// Writes an already built index and its items as a new gallery in `dir`.
    pub fn write(
        dir: &Path,
        method: Method,
        dim: usize,
        model_sha256: &str,
        model_file: &str,
        items: Vec<GalleryItem>,
        index: FaissIndex,
    ) -> Result<Gallery> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        if dir.join(MANIFEST).exists() {
            return Err(Error::gallery(
                dir,
                "a gallery already exists here; remove it first or choose another directory",
            ));
        }
        let next_id = items.iter().map(|i| i.id + 1).max().unwrap_or(0);
        let manifest = Manifest {
            format: FORMAT,
            model_sha256: model_sha256.to_string(),
            model_file: model_file.to_string(),
            dim,
            metric: "inner_product".into(),
            method,
            count: items.len(),
            created_unix: unix_now(),
            snapshot: "snap-0".into(),
            wal_seq: 0,
            next_id,
        };
        write_snapshot(&dir.join(&manifest.snapshot), &items, &index)?;
        write_json(&dir.join(MANIFEST), &manifest)?;
        let labels = items.into_iter().map(|i| (i.id, i)).collect();
        Ok(Gallery {
            dir: dir.to_path_buf(),
            manifest,
            labels,
            index: Box::new(index),
            tombstones: HashSet::new(),
            last_seq: 0,
            wal_records: 0,
            wal: None,
            line: LineState::default(),
            line_log: None,
        })
    }

    /// Opens the gallery in `dir` to search or read it; nothing on disk changes.
    /// Changes logged since the snapshot are replayed; a torn last record is
    /// ignored (and cut off by the next [`Gallery::open_for_write`]).
    pub fn open(dir: &Path, tuning: Tuning) -> Result<Gallery> {
        Gallery::load(dir, tuning, false)
    }

    /// Opens the gallery in `dir` to change it. One writer at a time: a
    /// second is refused while the first holds the log's lock.
    pub fn open_for_write(dir: &Path, tuning: Tuning) -> Result<Gallery> {
        Gallery::load(dir, tuning, true)
    }

    fn load(dir: &Path, tuning: Tuning, writable: bool) -> Result<Gallery> {
        let manifest_path = dir.join(MANIFEST);
        if !manifest_path.is_file() {
            return Err(Error::gallery(
                dir,
                format!(
                    "not a gallery: {MANIFEST} is missing. Build one with `shitud gallery build`"
                ),
            ));
        }
        // The version is checked before the fields, so an old gallery says so.
        let raw: serde_json::Value = read_json(&manifest_path)?;
        let format = raw.get("format").and_then(|f| f.as_u64()).unwrap_or(0);
        if format != FORMAT as u64 {
            return Err(Error::gallery(dir, format!("format {format} is not supported (this build reads format {FORMAT}); rebuild it with `shitud gallery build`")));
        }
        let manifest: Manifest = serde_json::from_value(raw)
            .map_err(|e| Error::gallery(&manifest_path, format!("unreadable: {e}")))?;
        let snap = dir.join(&manifest.snapshot);
        let items: Vec<GalleryItem> = read_json(&snap.join(LABELS))?;
        let mut index = FaissIndex::load(&snap.join(VECTORS))
            .map_err(|e| Error::gallery(dir, e.to_string()))?;
        index.set_method(manifest.method);
        match manifest.method {
            Method::Ivf => index.set_nprobe(tuning.nprobe)?,
            Method::Hnsw32 => index.set_ef_search(tuning.ef_search)?,
            Method::Flat => {}
        }
        if index.dim() != manifest.dim {
            return Err(Error::gallery(
                dir,
                format!(
                    "{VECTORS} has dimension {}, but the manifest says {}",
                    index.dim(),
                    manifest.dim
                ),
            ));
        }
        if index.len() != items.len() || items.len() != manifest.count {
            return Err(Error::gallery(
                dir,
                format!(
                    "{VECTORS} holds {} vectors, {LABELS} {} labels, the manifest says {}",
                    index.len(),
                    items.len(),
                    manifest.count
                ),
            ));
        }
        let index = on_device(index, &items, &manifest, tuning);
        let mut g = Gallery {
            dir: dir.to_path_buf(),
            last_seq: manifest.wal_seq,
            labels: items.into_iter().map(|i| (i.id, i)).collect(),
            manifest,
            index,
            tombstones: HashSet::new(),
            wal_records: 0,
            wal: None,
            line: LineState::default(),
            line_log: None,
        };
        let wal_path = dir.join(WAL);
        let (records, good_len, torn) = wal::read::<Record>(&wal_path)?;
        if let Some(t) = &torn {
            tracing::warn!(gallery = %dir.display(), "{WAL}: dropping a torn or corrupt tail: {t}");
        }
        for r in records {
            if r.seq() > g.manifest.wal_seq {
                g.apply(&r)?;
                g.wal_records += 1;
            }
        }
        if writable {
            g.wal = Some(Wal::open(&wal_path, good_len)?);
        }
        let line_path = dir.join(LINE_LOG);
        let (changes, line_len, torn) = wal::read::<Logged>(&line_path)?;
        if let Some(t) = &torn {
            tracing::warn!(gallery = %dir.display(), "{LINE_LOG}: dropping a torn or corrupt tail: {t}");
        }
        for c in changes {
            g.line.insert(c);
        }
        if writable && (line_len > 0 || torn.is_some()) {
            g.line_log = Some(Wal::open(&line_path, line_len)?);
            let (added, removed) = g.reconcile_line()?;
            if !added.is_empty() || !removed.is_empty() {
                tracing::warn!(gallery = %dir.display(), added = added.len(), removed = removed.len(), "brought the gallery to its line log (a change was logged, then interrupted)");
            }
        }
        if g.labels.is_empty() {
            tracing::warn!(gallery = %dir.display(), "the gallery is empty");
        }
        tracing::info!(gallery = %dir.display(), index = %g.index.describe(), items = g.labels.len(), logged = g.wal_records, "gallery opened");
        Ok(g)
    }

    /// Applies a logged change to the in-memory state. Idempotent, so a
    /// record that is also in the snapshot changes nothing.
    fn apply(&mut self, r: &Record) -> Result<()> {
        match r {
            Record::Add { item, vector, .. } => {
                if !self.labels.contains_key(&item.id) && !self.tombstones.contains(&item.id) {
                    if vector.len() != self.manifest.dim {
                        return Err(Error::gallery(
                            &self.dir,
                            format!("{WAL}: record {} has a {}-d vector", r.seq(), vector.len()),
                        ));
                    }
                    self.index.add(vector, &[item.id])?;
                    self.labels.insert(item.id, item.clone());
                }
                // Line items have ids of their own range; the box's own count on below it.
                if !line::is_line_id(item.id) {
                    self.manifest.next_id = self.manifest.next_id.max(item.id + 1);
                }
            }
            Record::Remove { ids, .. } => {
                for &id in ids {
                    if self.labels.remove(&id).is_some() && !self.index.remove(&[id])? {
                        self.tombstones.insert(id);
                    }
                }
            }
        }
        self.last_seq = self.last_seq.max(r.seq());
        Ok(())
    }

    fn log(&mut self, r: Record) -> Result<()> {
        let wal = self
            .wal
            .as_mut()
            .ok_or_else(|| Error::gallery(&self.dir, "opened read-only"))?;
        wal.append(&r)?;
        self.wal_records += 1;
        self.apply(&r)
    }

    /// Adds one item; returns its id once the change is durable.
    pub fn add(
        &mut self,
        label: &str,
        source: &str,
        sha256: Option<String>,
        vector: &[f32],
    ) -> Result<i64> {
        if vector.len() != self.manifest.dim {
            return Err(Error::gallery(
                &self.dir,
                format!(
                    "a {}-d feature cannot go into a {}-d gallery",
                    vector.len(),
                    self.manifest.dim
                ),
            ));
        }
        let id = self.manifest.next_id;
        if id >= line::LINE_ID_BASE {
            return Err(Error::gallery(
                &self.dir,
                "the gallery has given out every id below the line range; rebuild it",
            ));
        }
        let item = GalleryItem {
            id,
            label: label.to_string(),
            source: source.to_string(),
            sha256,
            added_unix: Some(unix_now()),
        };
        self.log(Record::Add {
            seq: self.last_seq + 1,
            item,
            vector: vector.to_vec(),
        })?;
        Ok(id)
    }

    /// Removes items by id, all or none: an unknown id changes nothing.
    pub fn remove(&mut self, ids: &[i64]) -> Result<()> {
        if let Some(bad) = ids.iter().find(|id| !self.labels.contains_key(id)) {
            return Err(Error::gallery(
                &self.dir,
                format!("no item with id {bad}; nothing was removed (see `shitud gallery list`)"),
            ));
        }
        self.log(Record::Remove {
            seq: self.last_seq + 1,
            ids: ids.to_vec(),
        })
    }

    /// The line's changes applied here.
    pub fn line(&self) -> &LineState {
        &self.line
    }

    /// Applies changes published on the line (one from the line's topic, or
    /// a whole state fetched from the line). Each is logged durably before
    /// the gallery changes; one already applied changes nothing.
    pub fn apply_line(&mut self, changes: Vec<Logged>) -> Result<LineApplied> {
        if self.wal.is_none() {
            return Err(Error::gallery(&self.dir, "opened read-only"));
        }
        let mut new = 0;
        for c in changes {
            if self.line.contains(c.change_id) {
                continue;
            }
            if let line::Change::Add { label, vector, .. } = &c.change {
                if label.trim().is_empty() {
                    return Err(Error::gallery(
                        &self.dir,
                        format!("line change {}: an add needs a label", c.change_id),
                    ));
                }
                if !vector.is_empty() && vector.len() != self.manifest.dim {
                    return Err(Error::gallery(
                        &self.dir,
                        format!(
                            "line change {}: a {}-d feature cannot go into a {}-d gallery",
                            c.change_id,
                            vector.len(),
                            self.manifest.dim
                        ),
                    ));
                }
            }
            if self.line_log.is_none() {
                let path = self.dir.join(LINE_LOG);
                self.line_log = Some(Wal::open(&path, 0)?);
            }
            if let Some(log) = self.line_log.as_mut() {
                log.append(&c)?;
            }
            self.line.insert(c);
            new += 1;
        }
        if new == 0 {
            return Ok(LineApplied::default());
        }
        let (added, removed) = self.reconcile_line()?;
        Ok(LineApplied {
            new,
            added,
            removed,
        })
    }

    /// Brings the items to what the line's changes mean: line items that
    /// should be there are added, others and removed own items taken out.
    fn reconcile_line(&mut self) -> Result<(Vec<i64>, Vec<i64>)> {
        let effect = self.line.effect();
        for c in &effect.collisions {
            tracing::warn!(change = %c, "line change skipped: its item id is an older change's (publish it again with a new change_id)");
        }
        let mut removed: Vec<i64> = self
            .labels
            .values()
            .filter(|i| {
                if line::is_line_id(i.id) {
                    !effect.items.contains_key(&i.id)
                } else {
                    effect.removes_own(i.id, &i.label)
                }
            })
            .map(|i| i.id)
            .collect();
        removed.sort_unstable();
        let mut adds = Vec::new();
        for (&id, w) in &effect.items {
            if self.labels.contains_key(&id) {
                continue;
            }
            if w.vector.len() != self.manifest.dim {
                tracing::warn!(change = %w.change_id, "line item {id} has no usable feature here ({} values); it is skipped", w.vector.len());
                continue;
            }
            let item = GalleryItem {
                id,
                label: w.label.to_string(),
                source: w.source.to_string(),
                sha256: w.sha256.cloned(),
                added_unix: Some(w.added_unix),
            };
            adds.push((item, w.vector.to_vec()));
        }
        if !removed.is_empty() {
            self.log(Record::Remove {
                seq: self.last_seq + 1,
                ids: removed.clone(),
            })?;
        }
        let mut added = Vec::with_capacity(adds.len());
        for (item, vector) in adds {
            added.push(item.id);
            self.log(Record::Add {
                seq: self.last_seq + 1,
                item,
                vector,
            })?;
        }
        Ok((added, removed))
    }

    /// Sequence number of the last change: it grows with every add and
    /// remove, so it names the gallery's content in answers and status.
    pub fn version(&self) -> u64 {
        self.last_seq
    }

    /// Ids of the items carrying `label`.
    pub fn ids_with_label(&self, label: &str) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .items()
            .filter(|i| i.label == label)
            .map(|i| i.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Compacts once the log holds `after` records (`search.compact_after`), so
    /// that start-up replay stays short.
    pub fn compact_if_due(&mut self, after: usize) -> Result<()> {
        if self.logged_changes() >= after.max(1) {
            self.compact()?;
        }
        Ok(())
    }

    /// Writes the current state as a new snapshot and empties the log.
    pub fn compact(&mut self) -> Result<()> {
        if self.wal.is_none() {
            return Err(Error::gallery(&self.dir, "opened read-only"));
        }
        if !self.tombstones.is_empty() {
            // HNSW cannot remove: rebuild it from the vectors still wanted.
            let mut ids: Vec<i64> = self.labels.keys().copied().collect();
            ids.sort_unstable();
            let mut vectors = Vec::with_capacity(ids.len() * self.manifest.dim);
            for &id in &ids {
                vectors.extend(self.index.reconstruct(id)?);
            }
            self.index = Box::new(FaissIndex::build(
                self.manifest.method,
                self.manifest.dim,
                &vectors,
                &ids,
            )?);
            self.tombstones.clear();
        }
        let mut items: Vec<GalleryItem> = self.labels.values().cloned().collect();
        items.sort_by_key(|i| i.id);
        let old = self.manifest.snapshot.clone();
        let snapshot = format!("snap-{}", self.last_seq);
        if snapshot != old {
            write_snapshot(&self.dir.join(&snapshot), &items, self.index.as_ref())?;
        }
        let manifest = Manifest {
            count: items.len(),
            created_unix: unix_now(),
            snapshot: snapshot.clone(),
            wal_seq: self.last_seq,
            ..self.manifest.clone()
        };
        write_json(&self.dir.join(MANIFEST), &manifest)?;
        self.manifest = manifest;
        if let Some(wal) = self.wal.as_mut() {
            wal.reset()?;
        }
        self.wal_records = 0;
        if snapshot != old {
            let _ = std::fs::remove_dir_all(self.dir.join(old));
        }
        tracing::info!(gallery = %self.dir.display(), items = items.len(), %snapshot, "gallery compacted");
        Ok(())
    }

    /// Refuses a recogniser other than the one that built the gallery.
    pub fn check_model(&self, model_sha256: &str, model_path: &Path) -> Result<()> {
        if self.manifest.model_sha256 == model_sha256 {
            return Ok(());
        }
        Err(Error::gallery(
            &self.dir,
            format!(
                "built with recognition model {} (sha256 {}), but {} has sha256 {}. Features of different models cannot be compared; \
                 rebuild the gallery with this model: shitud gallery build --rec-model {} --list LIST --image-root DIR --out NEW_DIR",
                self.manifest.model_file,
                short(&self.manifest.model_sha256),
                model_path.display(),
                short(model_sha256),
                model_path.display(),
            ),
        ))
    }

    /// The manifest (of the snapshot, with the next id kept current).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// What searches the gallery, for logs (`faiss IDMap2,Flat, 25 vectors`, `CUDA flat on …`).
    pub fn searcher(&self) -> String {
        self.index.describe()
    }

    /// The directory it lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The item with this id.
    pub fn item(&self, id: i64) -> Option<&GalleryItem> {
        self.labels.get(&id)
    }

    /// Every item, in no particular order.
    pub fn items(&self) -> impl Iterator<Item = &GalleryItem> {
        self.labels.values()
    }

    /// Live items.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether it holds no live items.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Log records not yet folded into the snapshot.
    pub fn logged_changes(&self) -> usize {
        self.wal_records
    }

    /// Searches the live items.
    pub fn search(&mut self, features: &[f32], k: usize) -> Result<Vec<Vec<Neighbor>>> {
        self.search_live(k, |index, k| index.search(features, k))
    }

    /// [`Gallery::search`] for features on a GPU: read there by a gallery
    /// on that GPU (`search.device = "cuda"`), copied to the host otherwise.
    pub fn search_device(
        &mut self,
        features: &crate::gpu::DeviceRows<'_>,
        k: usize,
    ) -> Result<Vec<Vec<Neighbor>>> {
        self.search_live(k, |index, k| index.search_device(features, k))
    }

    fn search_live(
        &mut self,
        k: usize,
        search: impl FnOnce(&mut dyn Index, usize) -> Result<Vec<Vec<Neighbor>>>,
    ) -> Result<Vec<Vec<Neighbor>>> {
        if self.tombstones.is_empty() {
            return search(self.index.as_mut(), k);
        }
        // Ask for enough extra to make up for removed items still in the index.
        let mut hits = search(self.index.as_mut(), k + self.tombstones.len())?;
        for h in &mut hits {
            h.retain(|n| !self.tombstones.contains(&n.id));
            h.truncate(k);
        }
        Ok(hits)
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// The loaded faiss index, or (with `search.device = "cuda"`) a copy of
/// its vectors in GPU memory. A GPU that cannot be used is an error in the
/// log and a CPU search, not a gallery that fails to open.
fn on_device(
    index: FaissIndex,
    items: &[GalleryItem],
    manifest: &Manifest,
    tuning: Tuning,
) -> Box<dyn Index> {
    if tuning.device == crate::config::SearchDevice::Cpu {
        return Box::new(index);
    }
    let ids: Vec<i64> = items.iter().map(|i| i.id).collect();
    match CudaFlat::from_index(
        tuning.device_id,
        tuning.gpu_precision,
        &index,
        &ids,
        manifest.method,
    ) {
        Ok(gpu) => {
            tracing::info!(
                "gallery search on the GPU: {} (exact; the {:?} index is kept for the files)",
                gpu.describe(),
                manifest.method
            );
            Box::new(gpu)
        }
        Err(e) => {
            tracing::error!("search.device = \"cuda\" cannot be used ({e}); searching on the CPU");
            Box::new(index)
        }
    }
}

fn write_snapshot(dir: &Path, items: &[GalleryItem], index: &dyn Index) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir); // a leftover of a compaction that crashed
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = dir.join(format!("{VECTORS}.tmp"));
    index.save(&tmp)?;
    sync_and_rename(&tmp, &dir.join(VECTORS))?;
    write_json(&dir.join(LABELS), items)
}

fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let text = serde_json::to_vec_pretty(value).map_err(|e| Error::gallery(path, e.to_string()))?;
    file.write_all(&text).map_err(|e| Error::io(&tmp, e))?;
    drop(file);
    sync_and_rename(&tmp, path)
}

fn sync_and_rename(tmp: &Path, dest: &Path) -> Result<()> {
    std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(tmp, e))?;
    std::fs::rename(tmp, dest).map_err(|e| Error::io(dest, e))?;
    if let Some(parent) = dest.parent() {
        // The rename is durable only once the directory entry is.
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(parent, e))?;
    }
    Ok(())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&text).map_err(|e| Error::gallery(path, format!("unreadable: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> (Vec<GalleryItem>, Vec<f32>) {
        let items = (0..n)
            .map(|i| GalleryItem {
                id: i as i64,
                label: format!("item {i}"),
                source: format!("{i}.jpg"),
                sha256: None,
                added_unix: None,
            })
            .collect();
        let mut v = vec![0.0; n * 4];
        for i in 0..n {
            v[i * 4 + i % 4] = 1.0;
        }
        (items, v)
    }

    fn line_add(ms: u64, label: &str, hot: usize) -> Logged {
        let mut vector = vec![0.0; 4];
        vector[hot] = 1.0;
        Logged {
            change_id: line::ChangeId::from_parts(ms, [ms as u8; 10]),
            change: line::Change::Add {
                label: label.into(),
                source: format!("{label}.jpg"),
                sha256: None,
                added_unix: 7,
                vector,
            },
        }
    }

    fn labels_of(g: &Gallery) -> Vec<(i64, String)> {
        let mut v: Vec<_> = g.items().map(|i| (i.id, i.label.clone())).collect();
        v.sort();
        v
    }

    /// Two boxes that receive the same line changes in different orders,
    /// one of them twice, hold the same items with the same ids; the line
    /// log survives reopen and compaction, and a change logged but not yet
    /// applied (a crash in between) is applied at the next open.
    #[test]
    fn line_changes_converge_whatever_the_order_and_survive_crashes() {
        for method in [Method::Flat, Method::Hnsw32] {
            let changes = vec![
                line_add(1, "cola", 0),
                line_add(2, "tea", 1),
                Logged {
                    change_id: line::ChangeId::from_parts(3, [0; 10]),
                    change: line::Change::Remove {
                        ids: vec![],
                        label: Some("cola".into()),
                    },
                },
                line_add(4, "cola", 3),
                Logged {
                    change_id: line::ChangeId::from_parts(5, [0; 10]),
                    change: line::Change::Remove {
                        ids: vec![0],
                        label: Some("item 1".into()),
                    },
                },
            ];
            let open = |order: Vec<Logged>| {
                let dir = tempfile::tempdir().unwrap();
                let (it, v) = items(3);
                Gallery::create(dir.path(), method, 4, "abc", "rec.onnx", it, &v).unwrap();
                let mut g = Gallery::open_for_write(dir.path(), Tuning::default()).unwrap();
                for c in order {
                    g.apply_line(vec![c]).unwrap();
                }
                (dir, g)
            };
            let (_a, mut a) = open(changes.clone());
            let mut reversed = changes.clone();
            reversed.reverse();
            reversed.extend(changes.clone());
            let (b_dir, b) = open(reversed);
            let want = vec![
                (2, "item 2".to_string()),
                (line::item_id(changes[1].change_id), "tea".into()),
                (line::item_id(changes[3].change_id), "cola".into()),
            ];
            let mut want_sorted = want.clone();
            want_sorted.sort();
            assert_eq!(labels_of(&a), want_sorted, "{method:?}");
            assert_eq!(labels_of(&b), want_sorted, "{method:?}");
            assert_eq!(a.line().version(), b.line().version());
            // The same change again changes nothing.
            assert_eq!(
                a.apply_line(changes[..1].to_vec()).unwrap(),
                LineApplied::default()
            );
            // Searching finds the line items by their features.
            let hit = a.search(&[0.0, 0.0, 0.0, 1.0], 1).unwrap()[0][0];
            assert_eq!(a.item(hit.id).unwrap().label, "cola");
            a.compact().unwrap();
            drop(b);
            let b = Gallery::open_for_write(b_dir.path(), Tuning::default()).unwrap();
            assert_eq!(labels_of(&b), want_sorted);
            assert_eq!(b.line().len(), 5);
            drop(b);
            // A change in the line log that never reached the gallery (a
            // crash between the two) is applied at the next open.
            let mut log = Wal::open(
                &b_dir.path().join(LINE_LOG),
                std::fs::metadata(b_dir.path().join(LINE_LOG))
                    .unwrap()
                    .len(),
            )
            .unwrap();
            log.append(&line_add(6, "juice", 2)).unwrap();
            drop(log);
            let b = Gallery::open_for_write(b_dir.path(), Tuning::default()).unwrap();
            assert_eq!(b.len(), 4, "{method:?}: {:?}", labels_of(&b));
            let ro = Gallery::open(b_dir.path(), Tuning::default());
            assert!(ro.is_err() || ro.unwrap().line().len() == 6);
        }
    }

    #[test]
    fn create_open_search_and_model_guard() {
        let dir = tempfile::tempdir().unwrap();
        let (it, v) = items(3);
        Gallery::create(dir.path(), Method::Flat, 4, "abc", "rec.onnx", it, &v).unwrap();
        let mut g = Gallery::open(dir.path(), Tuning::default()).unwrap();
        assert_eq!(g.len(), 3);
        let hit = g.search(&v[4..8], 1).unwrap()[0][0];
        assert_eq!(g.item(hit.id).unwrap().label, "item 1");
        assert!(g.check_model("abc", Path::new("rec.onnx")).is_ok());
        let err = g
            .check_model("def", Path::new("other.onnx"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rebuild") && err.contains("other.onnx"),
            "{err}"
        );
    }

    #[test]
    fn refuses_empty_missing_and_inconsistent_galleries() {
        let dir = tempfile::tempdir().unwrap();
        let err = Gallery::create(dir.path(), Method::Flat, 4, "abc", "rec.onnx", vec![], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty"), "{err}");
        let err = Gallery::open(dir.path(), Tuning::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("manifest.json is missing"), "{err}");
        let (it, v) = items(3);
        Gallery::create(dir.path(), Method::Flat, 4, "abc", "rec.onnx", it, &v).unwrap();
        std::fs::write(dir.path().join("snap-0").join(LABELS), "[]").unwrap();
        let err = Gallery::open(dir.path(), Tuning::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("3 vectors, labels.json 0 labels"), "{err}");
    }

    #[test]
    fn adds_and_removes_survive_reopen_and_compaction_for_every_method() {
        for method in [Method::Flat, Method::Hnsw32, Method::Ivf] {
            let dir = tempfile::tempdir().unwrap();
            let (it, v) = items(4);
            Gallery::create(dir.path(), method, 4, "abc", "rec.onnx", it, &v).unwrap();
            let mut g = Gallery::open_for_write(dir.path(), Tuning::default()).unwrap();
            let new = g
                .add("new one", "n.jpg", None, &[0.6, 0.8, 0.0, 0.0])
                .unwrap();
            assert_eq!(new, 4, "ids continue after the largest");
            g.remove(&[0]).unwrap();
            let err = g.remove(&[1, 99]).unwrap_err().to_string();
            assert!(err.contains("no item with id 99"), "{err}");
            assert!(g.item(1).is_some(), "a refused remove changes nothing");
            drop(g);
            for round in 0..2 {
                let mut g = Gallery::open_for_write(dir.path(), Tuning::default()).unwrap();
                assert_eq!(g.len(), 4, "{method:?} round {round}");
                assert!(g.item(0).is_none() && g.item(4).is_some());
                // Item 0 (the unit x vector) is gone: the best match for x is now the new item.
                let hit = g.search(&[1.0, 0.0, 0.0, 0.0], 2).unwrap()[0].clone();
                assert!(hit.iter().all(|n| n.id != 0), "{method:?}: {hit:?}");
                assert_eq!(hit[0].id, 4, "{method:?}");
                g.compact().unwrap();
                assert_eq!(g.logged_changes(), 0);
            }
            let dirs: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("snap-"))
                .collect();
            assert_eq!(
                dirs,
                vec!["snap-2".to_string()],
                "old snapshots are deleted"
            );
        }
    }
}

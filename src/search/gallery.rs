//! A gallery on disk: the faiss index, a readable label map and a manifest.
//!
//! ```text
//! gallery/
//!   manifest.json   format, model sha256, dimension, metric, method, count
//!   labels.json     [{"id": 0, "label": "…", "source": "gallery/x.jpg"}, …]
//!   vector.index    faiss.write_index output (IndexIDMap2, inner product)
//! ```
//!
//! Each file is written to a temporary name, synced and renamed, and the
//! manifest goes last: a directory with a manifest is always complete.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::search::{FaissIndex, Index, Method, Neighbor};

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The label map's file name.
pub const LABELS: &str = "labels.json";
/// The faiss index's file name (PaddleClas's name for it).
pub const VECTORS: &str = "vector.index";
/// The on-disk format this build reads and writes.
pub const FORMAT: u32 = 1;

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
    /// Number of vectors.
    pub count: usize,
    /// Seconds since the Unix epoch when it was written.
    pub created_unix: u64,
}

/// One enrolled gallery image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GalleryItem {
    /// Stable id, the faiss id of its vector.
    pub id: i64,
    /// Product label; may contain spaces.
    pub label: String,
    /// The image it came from, as written in the list file.
    pub source: String,
}

/// An opened gallery, ready to search.
pub struct Gallery {
    dir: PathBuf,
    manifest: Manifest,
    labels: HashMap<i64, GalleryItem>,
    index: Box<dyn Index>,
}

impl std::fmt::Debug for Gallery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gallery({}, {})", self.dir.display(), self.index.describe())
    }
}

impl Gallery {
    /// Indexes `vectors` (one row of `dim` per item) with `method` and writes the gallery to `dir`.
    pub fn create(dir: &Path, method: Method, dim: usize, model_sha256: &str, model_file: &str, items: Vec<GalleryItem>, vectors: &[f32]) -> Result<Gallery> {
        if items.is_empty() {
            return Err(Error::gallery(dir, "no images to index: the gallery would be empty"));
        }
        if vectors.len() != items.len() * dim {
            return Err(Error::gallery(dir, format!("{} vectors for {} items", vectors.len() / dim.max(1), items.len())));
        }
        let ids: Vec<i64> = items.iter().map(|i| i.id).collect();
        let index = FaissIndex::build(method, dim, vectors, &ids)?;
        Gallery::write(dir, method, dim, model_sha256, model_file, items, index)
    }

    /// Writes an already built index and its items as a gallery in `dir`.
    pub fn write(dir: &Path, method: Method, dim: usize, model_sha256: &str, model_file: &str, items: Vec<GalleryItem>, index: FaissIndex) -> Result<Gallery> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let manifest = Manifest {
            format: FORMAT,
            model_sha256: model_sha256.to_string(),
            model_file: model_file.to_string(),
            dim,
            metric: "inner_product".into(),
            method,
            count: items.len(),
            created_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        };
        let tmp = dir.join(format!("{VECTORS}.tmp"));
        index.save(&tmp)?;
        sync_and_rename(&tmp, &dir.join(VECTORS))?;
        write_json(&dir.join(LABELS), &items)?;
        write_json(&dir.join(MANIFEST), &manifest)?;
        let labels = items.into_iter().map(|i| (i.id, i)).collect();
        Ok(Gallery { dir: dir.to_path_buf(), manifest, labels, index: Box::new(index) })
    }

    /// Opens the gallery in `dir`. `nprobe` applies to IVF galleries.
    pub fn open(dir: &Path, nprobe: usize) -> Result<Gallery> {
        let manifest_path = dir.join(MANIFEST);
        if !manifest_path.is_file() {
            return Err(Error::gallery(dir, format!("not a gallery: {MANIFEST} is missing. Build one with `shitud gallery build`")));
        }
        let manifest: Manifest = read_json(&manifest_path)?;
        if manifest.format != FORMAT {
            return Err(Error::gallery(dir, format!("format {} is not supported (this build reads format {FORMAT})", manifest.format)));
        }
        let items: Vec<GalleryItem> = read_json(&dir.join(LABELS))?;
        let mut index = FaissIndex::load(&dir.join(VECTORS)).map_err(|e| Error::gallery(dir, e.to_string()))?;
        if manifest.method == Method::Ivf {
            index.set_nprobe(nprobe)?;
        }
        if index.dim() != manifest.dim {
            return Err(Error::gallery(dir, format!("{VECTORS} has dimension {}, but the manifest says {}", index.dim(), manifest.dim)));
        }
        if index.is_empty() {
            return Err(Error::gallery(dir, "the gallery is empty: there is nothing to recognise against"));
        }
        if index.len() != items.len() || items.len() != manifest.count {
            return Err(Error::gallery(
                dir,
                format!("{VECTORS} holds {} vectors, {LABELS} {} labels, the manifest says {}", index.len(), items.len(), manifest.count),
            ));
        }
        tracing::info!(gallery = %dir.display(), index = %index.describe(), "gallery opened");
        let labels = items.into_iter().map(|i| (i.id, i)).collect();
        Ok(Gallery { dir: dir.to_path_buf(), manifest, labels, index: Box::new(index) })
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
                 rebuild the gallery with this model: shitud gallery build --rec-model {} --list LIST --image-root DIR --out {}",
                self.manifest.model_file,
                short(&self.manifest.model_sha256),
                model_path.display(),
                short(model_sha256),
                model_path.display(),
                self.dir.display()
            ),
        ))
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
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

    /// Number of items.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether it holds no items.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Searches the index.
    pub fn search(&mut self, features: &[f32], k: usize) -> Result<Vec<Vec<Neighbor>>> {
        self.index.search(features, k)
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
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
    std::fs::File::open(tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io(tmp, e))?;
    std::fs::rename(tmp, dest).map_err(|e| Error::io(dest, e))?;
    if let Some(parent) = dest.parent() {
        // The rename is durable only once the directory entry is.
        let _ = std::fs::File::open(parent).and_then(|d| d.sync_all());
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
        let items = (0..n).map(|i| GalleryItem { id: i as i64, label: format!("item {i}"), source: format!("{i}.jpg") }).collect();
        let mut v = vec![0.0; n * 4];
        for i in 0..n {
            v[i * 4 + i % 4] = 1.0;
        }
        (items, v)
    }

    #[test]
    fn create_open_search_and_model_guard() {
        let dir = tempfile::tempdir().unwrap();
        let (it, v) = items(3);
        Gallery::create(dir.path(), Method::Flat, 4, "abc", "rec.onnx", it, &v).unwrap();
        let mut g = Gallery::open(dir.path(), 1).unwrap();
        assert_eq!(g.len(), 3);
        let hit = g.search(&v[4..8], 1).unwrap()[0][0];
        assert_eq!(g.item(hit.id).unwrap().label, "item 1");
        assert!(g.check_model("abc", Path::new("rec.onnx")).is_ok());
        let err = g.check_model("def", Path::new("other.onnx")).unwrap_err().to_string();
        assert!(err.contains("rebuild") && err.contains("other.onnx"), "{err}");
    }

    #[test]
    fn refuses_empty_missing_and_inconsistent_galleries() {
        let dir = tempfile::tempdir().unwrap();
        let err = Gallery::create(dir.path(), Method::Flat, 4, "abc", "rec.onnx", vec![], &[]).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
        let err = Gallery::open(dir.path(), 1).unwrap_err().to_string();
        assert!(err.contains("manifest.json is missing"), "{err}");
        let (it, v) = items(3);
        Gallery::create(dir.path(), Method::Flat, 4, "abc", "rec.onnx", it, &v).unwrap();
        std::fs::write(dir.path().join(LABELS), "[]").unwrap();
        let err = Gallery::open(dir.path(), 1).unwrap_err().to_string();
        assert!(err.contains("3 vectors, labels.json 0 labels"), "{err}");
    }
}

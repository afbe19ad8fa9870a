//! Importing a gallery that PaddleClas's `build_gallery.py` wrote:
//! `vector.index` (faiss, `IndexIDMap2`, inner product) and `id_map.pkl`
//! (int64 id → the whole list line). The pickle is read by [`super::pickle`],
//! which never runs code.
//!
//! The import is all or nothing: it is assembled in a temporary directory
//! beside `out` and renamed into place only when every check has passed.

use std::collections::BTreeSet;
use std::path::Path;

use crate::error::{Error, Result};
use crate::search::pickle::read_id_map;
use crate::search::{FaissIndex, Gallery, GalleryItem, Index};

/// What the recognition model that made the vectors is.
#[derive(Debug, Clone)]
pub struct ModelStamp {
    /// sha256 of the model file.
    pub sha256: String,
    /// Its file name.
    pub file: String,
    /// Its feature length.
    pub dim: usize,
}

/// Imports `from/{vector.index,id_map.pkl}` as a shitu-edge gallery in `out`.
pub fn import(from: &Path, out: &Path, model: &ModelStamp) -> Result<Gallery> {
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Error::gallery(
            out,
            "already exists and is not empty; choose another --out or remove it",
        ));
    }
    let pkl = from.join("id_map.pkl");
    let bytes = std::fs::read(&pkl).map_err(|e| Error::io(&pkl, e))?;
    let id_map = read_id_map(&bytes).map_err(|e| Error::gallery(&pkl, e.to_string()))?;
    if id_map.is_empty() {
        return Err(Error::gallery(
            &pkl,
            "the id map is empty: there is nothing to import",
        ));
    }

    let vectors = from.join("vector.index");
    let mut index =
        FaissIndex::load(&vectors).map_err(|e| Error::gallery(&vectors, e.to_string()))?;
    if index.dim() != model.dim {
        return Err(Error::gallery(
            &vectors,
            format!("holds {}-d vectors, but {} makes {}-d features: it was built with another recognition model", index.dim(), model.file, model.dim),
        ));
    }
    let method = index.detect_method();
    let (index, ids) = index
        .into_ids()
        .map_err(|e| Error::gallery(&vectors, e.to_string()))?;
    let in_index: BTreeSet<i64> = ids.iter().copied().collect();
    let in_map: BTreeSet<i64> = id_map.keys().copied().collect();
    if in_index != in_map {
        let only_index: Vec<_> = in_index.difference(&in_map).take(5).collect();
        let only_map: Vec<_> = in_map.difference(&in_index).take(5).collect();
        return Err(Error::gallery(
            from,
            format!("vector.index ({} ids) and id_map.pkl ({} ids) disagree: only in the index {only_index:?}, only in the map {only_map:?}", in_index.len(), in_map.len()),
        ));
    }

    let mut items = Vec::with_capacity(id_map.len());
    for (id, line) in id_map {
        // PaddleClas keeps the whole list line; the label is what follows the path.
        let (source, label) = line
            .split_once('\t')
            .or_else(|| line.split_once(char::is_whitespace))
            .ok_or_else(|| {
                Error::gallery(
                    &pkl,
                    format!("id {id}: line {line:?} has no label after the path"),
                )
            })?;
        items.push(GalleryItem {
            id,
            label: label.trim().to_string(),
            source: source.to_string(),
            sha256: None,
            added_unix: None,
        });
    }

    let name = out
        .file_name()
        .map_or_else(|| "gallery".into(), |n| n.to_string_lossy().into_owned());
    let tmp = out.with_file_name(format!(".{name}.import-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let written = Gallery::write(
        &tmp,
        method,
        model.dim,
        &model.sha256,
        &model.file,
        items,
        index,
    );
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if out.exists() {
        std::fs::remove_dir(out).map_err(|e| Error::io(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    tracing::info!(from = %from.display(), out = %out.display(), ?method, "imported PaddleClas gallery");
    Gallery::open(out, Default::default())
}

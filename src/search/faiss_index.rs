//! [`Index`] on faiss (CPU), with the index kinds PaddleClas builds:
//! `IndexIDMap2` over Flat, HNSW32 or IVF-Flat, inner product. The files are
//! plain `faiss.write_index` output, so PaddleClas's `vector.index` reads too.

use std::path::Path;

use faiss::index::IndexImpl;
use faiss::{Idx, Index as _, MetricType};

use crate::error::{Error, Result};
use crate::search::{Index, Neighbor};

/// How vectors are indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Method {
    /// Exhaustive search: exact, best below ~100 k items.
    Flat,
    /// HNSW graph with 32 links: fast approximate search, no removal in faiss.
    #[serde(rename = "HNSW32")]
    Hnsw32,
    /// Inverted lists (`nlist = n / 8`, as PaddleClas), exact within probed lists.
    #[serde(rename = "IVF")]
    Ivf,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "FLAT" => Ok(Method::Flat),
            "HNSW32" | "HNSW" => Ok(Method::Hnsw32),
            "IVF" => Ok(Method::Ivf),
            _ => Err(format!(
                "unknown index method '{s}' (expected Flat, HNSW32 or IVF)"
            )),
        }
    }
}

impl Method {
    /// The faiss factory string for `n` vectors.
    pub fn factory(self, n: usize) -> String {
        match self {
            Method::Flat => "IDMap2,Flat".into(),
            Method::Hnsw32 => "IDMap2,HNSW32".into(),
            // IVF keeps ids itself and removes by id; wrapped in IDMap2 its
            // removal would corrupt the map (IDMap assumes Flat-like renumbering).
            Method::Ivf => format!("IVF{},Flat", ivf_lists(n)),
        }
    }
}

/// IVF list count for `n` vectors: PaddleClas's `n / 8`, but at most
/// `4·√n` (faiss's usual range is 4–16·√n). `n / 8` means 125 000 lists at a
/// million items, whose k-means training takes hours on an edge CPU; the
/// two agree below 1 024 items.
pub fn ivf_lists(n: usize) -> usize {
    (n / 8)
        .min((4.0 * (n as f64).sqrt()) as usize)
        .clamp(1, 65536)
}

/// A faiss index in memory.
pub struct FaissIndex {
    inner: IndexImpl,
    factory: String,
    method: Option<Method>,
}

// SAFETY: faiss indexes are plain heap objects without thread affinity; the
// `&mut self` on every mutating or searching call serialises access.
unsafe impl Send for FaissIndex {}

impl FaissIndex {
    /// Builds an index of `method` over `vectors` (`ids.len()` rows of `dim`).
    pub fn build(method: Method, dim: usize, vectors: &[f32], ids: &[i64]) -> Result<FaissIndex> {
        let factory = method.factory(ids.len());
        let fail = |e: faiss::error::Error| Error::Index(format!("{factory}: {e}"));
        let mut inner =
            faiss::index_factory(dim as u32, &factory, MetricType::InnerProduct).map_err(fail)?;
        if !inner.is_trained() {
            inner.train(vectors).map_err(fail)?;
        }
        let ids: Vec<Idx> = ids.iter().map(|&i| Idx::new(i as u64)).collect();
        inner.add_with_ids(vectors, &ids).map_err(fail)?;
        Ok(FaissIndex {
            inner,
            factory,
            method: Some(method),
        })
    }

    /// Reads an index written by [`FaissIndex::save`] or by `faiss.write_index`.
    pub fn load(path: &Path) -> Result<FaissIndex> {
        let name = path
            .to_str()
            .ok_or_else(|| Error::Index(format!("{}: path is not UTF-8", path.display())))?;
        if !path.is_file() {
            return Err(Error::Index(format!("{name}: file not found")));
        }
        let inner = faiss::read_index(name)
            .map_err(|e| Error::Index(format!("{name}: not a readable faiss index: {e}")))?;
        if inner.metric_type() != MetricType::InnerProduct {
            return Err(Error::Index(format!(
                "{name}: metric is {:?}, but features are compared by inner product",
                inner.metric_type()
            )));
        }
        Ok(FaissIndex {
            inner,
            factory: "read from file".into(),
            method: None,
        })
    }

    /// The ids of an ID-mapped index (`IndexIDMap`/`IndexIDMap2`), in storage order.
    pub fn into_ids(self) -> Result<(FaissIndex, Vec<i64>)> {
        use faiss::index::UpcastIndex;
        let map = self.inner.into_id_map().map_err(|_| {
            Error::Index(
                "the index has no id map (expected IndexIDMap2, as PaddleClas writes)".into(),
            )
        })?;
        let ids = map
            .id_map()
            .iter()
            .map(|i| i.get().map_or(-1, |v| v as i64))
            .collect();
        Ok((
            FaissIndex {
                inner: map.upcast(),
                factory: self.factory,
                method: self.method,
            },
            ids,
        ))
    }

    /// Tells the index kind of a file read from disk by the parameters it accepts.
    pub fn detect_method(&mut self) -> Method {
        let method = if self.set_param("nprobe", 1).is_ok() {
            Method::Ivf
        } else if self.set_param("efSearch", 16).is_ok() {
            Method::Hnsw32
        } else {
            Method::Flat
        };
        self.factory = format!("{method:?} read from file");
        self.method = Some(method);
        method
    }

    /// Records the index kind of a file read from disk (from the gallery's manifest).
    pub fn set_method(&mut self, method: Method) {
        self.method = Some(method);
        self.factory = format!("{method:?}");
    }

    fn is_id_mapped(&self) -> bool {
        // SAFETY: a checked dynamic cast on a live index; nothing is taken over.
        unsafe {
            !faiss_sys::faiss_IndexIDMap_cast(faiss::index::NativeIndex::inner_ptr(&self.inner))
                .is_null()
        }
    }

    /// Sets the IVF lists probed per query. Only IVF indexes have the parameter.
    pub fn set_nprobe(&mut self, nprobe: usize) -> Result<()> {
        self.set_param("nprobe", nprobe)
    }

    /// Sets HNSW's search breadth. Only HNSW indexes have the parameter.
    pub fn set_ef_search(&mut self, ef: usize) -> Result<()> {
        self.set_param("efSearch", ef)
    }

    /// Sets a faiss search parameter; faiss refuses one the index kind does not have.
    fn set_param(&mut self, name: &str, value: usize) -> Result<()> {
        let space = faiss::index::autotune::ParameterSpace::new()
            .map_err(|e| Error::Index(e.to_string()))?;
        space
            .set_index_parameter(&self.inner, name, value as f64)
            .map_err(|e| Error::Index(format!("cannot set {name} on {}: {e}", self.factory)))
    }

    /// Writes the index with `faiss.write_index`'s format.
    pub fn save(&self, path: &Path) -> Result<()> {
        let name = path
            .to_str()
            .ok_or_else(|| Error::Index(format!("{}: path is not UTF-8", path.display())))?;
        faiss::write_index(&self.inner, name).map_err(|e| Error::Index(format!("{name}: {e}")))
    }
}

impl Index for FaissIndex {
    fn dim(&self) -> usize {
        self.inner.d() as usize
    }

    fn len(&self) -> usize {
        self.inner.ntotal() as usize
    }

    fn search(&mut self, queries: &[f32], k: usize) -> Result<Vec<Vec<Neighbor>>> {
        let dim = self.dim();
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        if !queries.len().is_multiple_of(dim) {
            return Err(Error::Index(format!(
                "query length {} is not a multiple of the dimension {dim}",
                queries.len()
            )));
        }
        let res = self
            .inner
            .search(queries, k)
            .map_err(|e| Error::Index(e.to_string()))?;
        Ok(res
            .labels
            .chunks(k)
            .zip(res.distances.chunks(k))
            .map(|(ids, scores)| {
                ids.iter()
                    .zip(scores)
                    .filter_map(|(id, &score)| {
                        id.get().map(|id| Neighbor {
                            id: id as i64,
                            score,
                        })
                    })
                    .collect()
            })
            .collect())
    }

    fn add(&mut self, vectors: &[f32], ids: &[i64]) -> Result<()> {
        let ids: Vec<Idx> = ids.iter().map(|&i| Idx::new(i as u64)).collect();
        self.inner
            .add_with_ids(vectors, &ids)
            .map_err(|e| Error::Index(e.to_string()))
    }

    fn remove(&mut self, ids: &[i64]) -> Result<bool> {
        // Safe in faiss: an ID-mapped Flat (renumbers in order), or an index
        // that keeps ids itself (IVF). HNSW cannot remove at all, and an
        // ID-mapped IVF (PaddleClas's layout) would corrupt its map.
        let safe = matches!(
            (self.method, self.is_id_mapped()),
            (Some(Method::Flat), true) | (Some(Method::Ivf), false)
        );
        if !safe {
            return Ok(false);
        }
        let ids: Vec<Idx> = ids.iter().map(|&i| Idx::new(i as u64)).collect();
        let selector =
            faiss::selector::IdSelector::batch(&ids).map_err(|e| Error::Index(e.to_string()))?;
        self.inner
            .remove_ids(&selector)
            .map_err(|e| Error::Index(format!("remove: {e}")))?;
        Ok(true)
    }

    fn reconstruct(&self, id: i64) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.dim()];
        self.inner
            .reconstruct(Idx::new(id as u64), &mut out)
            .map_err(|e| Error::Index(format!("cannot read back vector {id}: {e}")))?;
        Ok(out)
    }

    fn save(&self, path: &Path) -> Result<()> {
        FaissIndex::save(self, path)
    }

    fn describe(&self) -> String {
        format!(
            "faiss {}, {} vectors of {}",
            self.factory,
            self.len(),
            self.dim()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit_vectors(n: usize, dim: usize) -> Vec<f32> {
        let mut state = 12345u64;
        let mut v: Vec<f32> = (0..n * dim)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect();
        crate::embed::l2_normalize(&mut v, dim);
        v
    }

    #[test]
    fn every_method_finds_each_vector_itself() {
        let (n, dim) = (200, 16);
        let v = unit_vectors(n, dim);
        let ids: Vec<i64> = (0..n as i64).map(|i| i * 10).collect();
        for method in [Method::Flat, Method::Hnsw32, Method::Ivf] {
            let mut idx = FaissIndex::build(method, dim, &v, &ids).unwrap();
            if method == Method::Ivf {
                idx.set_nprobe(64).unwrap();
            }
            assert_eq!(idx.len(), n);
            let hits = idx.search(&v[..dim * 5], 3).unwrap();
            for (q, h) in hits.iter().enumerate() {
                assert_eq!(h[0].id, q as i64 * 10, "{method:?}");
                assert!((h[0].score - 1.0).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn round_trips_through_a_file_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let v = unit_vectors(10, 8);
        let idx = FaissIndex::build(Method::Flat, 8, &v, &(0..10).collect::<Vec<_>>()).unwrap();
        let path = dir.path().join("vector.index");
        idx.save(&path).unwrap();
        let mut back = FaissIndex::load(&path).unwrap();
        assert_eq!(back.search(&v[8..16], 1).unwrap()[0][0].id, 1);
        std::fs::write(&path, b"not an index").unwrap();
        let err = FaissIndex::load(&path).err().unwrap().to_string();
        assert!(err.contains("not a readable faiss index"), "{err}");
    }
}

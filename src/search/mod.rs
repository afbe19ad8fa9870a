//! The fifth stage: which known product is it? Nearest-neighbour search of
//! features in the gallery.
//!
//! [`Index`] is the one search abstraction: [`FaissIndex`] implements it on
//! the CPU, [`cuda_flat::CudaFlat`] in GPU memory (`search.device`). The
//! pipeline only ever sees `dyn Index`.

pub mod cuda_flat;
pub mod faiss_index;
pub mod fp16;
pub mod gallery;
pub mod line;
pub mod paddleclas_import;
pub mod pickle;
pub mod thumbs;
pub mod unknown;
pub mod wal;

pub use faiss_index::{FaissIndex, Method};
pub use gallery::{Gallery, GalleryItem, Manifest, Tuning};

use crate::error::Result;
use crate::gpu::DeviceRows;

/// One search hit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbor {
    /// The gallery item's id.
    pub id: i64,
    /// Inner product with the query (cosine similarity for unit vectors).
    pub score: f32,
}

/// A searchable set of unit-length vectors under inner product.
pub trait Index: Send {
    /// Vector length.
    fn dim(&self) -> usize;
    /// Number of vectors.
    fn len(&self) -> usize;
    /// Whether the index holds no vectors.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The `k` best neighbours of each of the `queries.len() / dim` queries, best first.
    fn search(&mut self, queries: &[f32], k: usize) -> Result<Vec<Vec<Neighbor>>>;
    /// The GPU whose memory holds the index; `None` for a host index.
    fn device(&self) -> Option<usize> {
        None
    }
    /// [`Index::search`] for queries already on a GPU: an index on that
    /// GPU reads them there; any other copies them to the host first.
    fn search_device(&mut self, queries: &DeviceRows<'_>, k: usize) -> Result<Vec<Vec<Neighbor>>> {
        let host = queries.to_host().map_err(crate::Error::Gpu)?;
        self.search(&host, k)
    }
    /// Adds vectors (`ids.len()` rows) under the given ids.
    fn add(&mut self, vectors: &[f32], ids: &[i64]) -> Result<()>;
    /// Removes ids; `Ok(false)` where the index kind cannot remove (HNSW), so
    /// the caller filters them until the next rebuild.
    fn remove(&mut self, ids: &[i64]) -> Result<bool>;
    /// The stored vector of an id.
    fn reconstruct(&self, id: i64) -> Result<Vec<f32>>;
    /// Writes the index to a file.
    fn save(&self, path: &std::path::Path) -> Result<()>;
    /// A short description for logs (`faiss IDMap2,Flat, 25 vectors`).
    fn describe(&self) -> String;
}

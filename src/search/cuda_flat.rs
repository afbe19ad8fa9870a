//! Exact inner-product search on an NVIDIA GPU, for boxes where faiss-gpu
//! does not exist (Jetson).
//!
//! The gallery matrix stays on the device, in fp32 or fp16
//! (`search.gpu_precision`). A batch of queries is one cuBLAS GEMM (every
//! score at once, accumulated in fp32; the work is bound by reading the
//! matrix, so fp16 halves it), then
//! a two-pass top-k: blocks each keep the best `k` of a slice of the rows,
//! and one block per query merges those. Adding appends rows (the buffer
//! grows by doubling); removing moves the last row into the hole, so neither
//! uploads the gallery again.
//!
//! With fp16 the host keeps the fp32 vectors too, so that what is saved to
//! the gallery's files never loses precision to the GPU copy.
//!
//! Everything CUDA is opened at run time; [`CudaFlat::new`] says plainly why
//! it cannot start on a box without a GPU.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::cublas::{sys::cublasOperation_t, CudaBlas};
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig,
    PushKernelArg, ValidAsZeroBits,
};

use super::{fp16, FaissIndex, Index, Method, Neighbor};
use crate::config::GpuPrecision;
use crate::error::{Error, Result};
use crate::gpu::{self, DeviceRows};

/// Most neighbours one search returns: each thread keeps its best `k` in
/// registers and a block merges them in shared memory.
pub const MAX_K: usize = 32;
const THREADS: u32 = 128;
/// Rows one block of the first pass scans.
const ROWS_PER_BLOCK: usize = 4096;

/// A flat (exact) inner-product index in GPU memory.
pub struct CudaFlat {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    topk_rows: CudaFunction,
    topk_merge: CudaFunction,
    to_half: CudaFunction,
    ordinal: usize,
    dim: usize,
    rows: usize,
    /// `capacity × dim`, row-major; rows past `rows` are unused.
    matrix: Matrix,
    capacity: usize,
    ids: Vec<i64>,
    row_of: HashMap<i64, usize>,
    device: String,
    /// The faiss index kind [`Index::save`] writes, so a gallery's files keep their kind.
    saved_as: Method,
}

impl std::fmt::Debug for CudaFlat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The gallery matrix on the device.
enum Matrix {
    F32(CudaSlice<f32>),
    /// Half-precision bits on the device, and the exact vectors on the host
    /// (`rows × dim`) for [`Index::reconstruct`] and [`Index::save`].
    F16(CudaSlice<u16>, Vec<f32>),
}

/// A buffer of `len` elements holding the first `used` of `old`.
fn grown<T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    old: &CudaSlice<T>,
    used: usize,
    len: usize,
) -> Result<CudaSlice<T>> {
    let mut bigger = stream
        .alloc_zeros::<T>(len)
        .map_err(cuda_err("growing the gallery"))?;
    if used > 0 {
        stream
            .memcpy_dtod(&old.slice(..used), &mut bigger.slice_mut(..used))
            .map_err(cuda_err("growing the gallery"))?;
    }
    Ok(bigger)
}

/// Copies row `from` over row `to` (rows of `d`), on the device; `from > to`.
fn move_row<T: DeviceRepr>(
    stream: &Arc<CudaStream>,
    m: &mut CudaSlice<T>,
    from: usize,
    to: usize,
    d: usize,
) -> Result<()> {
    let (mut head, tail) = m.split_at_mut(from * d);
    let mut hole = head.slice_mut(to * d..(to + 1) * d);
    stream
        .memcpy_dtod(&tail.slice(..d), &mut hole)
        .map_err(cuda_err("removing"))
}

fn cuda_err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Index(format!("GPU search: {what}: {e}"))
}

impl CudaFlat {
    /// An empty index of `dim`-long vectors on GPU `ordinal`. Fails with the
    /// reason (no driver, no device, no NVRTC or cuBLAS) on boxes that cannot run it.
    pub fn new(ordinal: usize, precision: GpuPrecision, dim: usize) -> Result<CudaFlat> {
        let dev =
            gpu::Device::open(ordinal).map_err(|e| Error::Index(format!("GPU search: {e}")))?;
        // SAFETY: these only try to dlopen the libraries by name.
        let (nvrtc, cublas) = unsafe {
            (
                cudarc::nvrtc::sys::is_culib_present(),
                cudarc::cublas::sys::is_culib_present(),
            )
        };
        if !nvrtc || !cublas {
            return Err(Error::Index(format!(
                "GPU search needs the CUDA toolkit's runtime libraries: {}{}not found",
                if nvrtc { "" } else { "libnvrtc " },
                if cublas { "" } else { "libcublas " }
            )));
        }
        let ctx = dev.context();
        let device = dev.platform().gpu.clone();
        let stream = dev.stream().clone();
        let blas = CudaBlas::new(stream.clone())
            .map_err(|e| Error::Index(format!("GPU search: cuBLAS: {e}")))?;
        let ptx = gpu::nvrtc::compile(&gpu::nvrtc::TOPK, dev.platform().compute_capability)
            .map_err(|e| Error::Index(format!("GPU search: {e}")))?;
        let module = ctx
            .load_module(ptx)
            .map_err(cuda_err("loading the top-k kernels"))?;
        let topk_rows = module
            .load_function("topk_rows")
            .map_err(cuda_err("topk_rows"))?;
        let topk_merge = module
            .load_function("topk_merge")
            .map_err(cuda_err("topk_merge"))?;
        let to_half = module
            .load_function("f32_to_f16")
            .map_err(cuda_err("f32_to_f16"))?;
        let capacity = 1024;
        let alloc = cuda_err("allocating the gallery");
        let matrix = match precision {
            GpuPrecision::Fp32 => {
                Matrix::F32(stream.alloc_zeros::<f32>(capacity * dim).map_err(alloc)?)
            }
            GpuPrecision::Fp16 => Matrix::F16(
                stream.alloc_zeros::<u16>(capacity * dim).map_err(alloc)?,
                Vec::new(),
            ),
        };
        Ok(CudaFlat {
            stream,
            blas,
            topk_rows,
            topk_merge,
            to_half,
            ordinal,
            dim,
            rows: 0,
            matrix,
            capacity,
            ids: Vec::new(),
            row_of: HashMap::new(),
            device,
            saved_as: Method::Flat,
        })
    }

    /// Copies the vectors `ids` of `index` onto GPU `ordinal`; saving writes
    /// a faiss index of kind `saved_as`.
    pub fn from_index(
        ordinal: usize,
        precision: GpuPrecision,
        index: &dyn Index,
        ids: &[i64],
        saved_as: Method,
    ) -> Result<CudaFlat> {
        let mut flat = CudaFlat::new(ordinal, precision, index.dim())?;
        flat.saved_as = saved_as;
        let mut vectors = Vec::with_capacity(ids.len() * index.dim());
        for &id in ids {
            vectors.extend(index.reconstruct(id)?);
        }
        flat.add(&vectors, ids)?;
        Ok(flat)
    }

    fn reserve(&mut self, rows: usize) -> Result<()> {
        if rows <= self.capacity {
            return Ok(());
        }
        let capacity = rows.next_power_of_two();
        let (used, len) = (self.rows * self.dim, capacity * self.dim);
        match &mut self.matrix {
            Matrix::F32(m) => *m = grown(&self.stream, m, used, len)?,
            Matrix::F16(m, _) => *m = grown(&self.stream, m, used, len)?,
        }
        self.capacity = capacity;
        Ok(())
    }

    /// The stored precision.
    pub fn precision(&self) -> GpuPrecision {
        match self.matrix {
            Matrix::F32(_) => GpuPrecision::Fp32,
            Matrix::F16(..) => GpuPrecision::Fp16,
        }
    }

    /// `scores (nq × rows) = queries (nq × d) · galleryᵀ`, fp32 out, for
    /// `nq` fp32 queries at device address `q` (on this device, written on
    /// its stream). An fp16 gallery gets the queries rounded to half on the
    /// device first.
    fn scores(&self, q: u64, nq: usize, scores: &mut CudaSlice<f32>) -> Result<()> {
        let (d, rows) = (self.dim, self.rows);
        let err = cuda_err("search");
        let blas_err = |e: cudarc::cublas::result::CublasError| {
            Error::Index(format!("GPU search: cuBLAS: {e}"))
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (c, _c) = scores.device_ptr_mut(&self.stream);
        // Column-major view: the gallery is dim×rows (lda = dim), the queries
        // dim×nq; scores = galleryᵀ·queries is rows×nq, i.e. nq row-major rows of `rows`.
        match &self.matrix {
            Matrix::F32(m) => {
                let gallery = m.slice(..rows * d);
                let (a, _a) = gallery.device_ptr(&self.stream);
                // SAFETY: the shapes above match the buffers: gallery rows·d,
                // queries nq·d at `q`, scores nq·rows; the handle is bound to `self.stream`.
                unsafe {
                    cudarc::cublas::result::sgemm(
                        *self.blas.handle(),
                        cublasOperation_t::CUBLAS_OP_T,
                        cublasOperation_t::CUBLAS_OP_N,
                        rows as i32,
                        nq as i32,
                        d as i32,
                        &alpha,
                        a as *const f32,
                        d as i32,
                        q as *const f32,
                        d as i32,
                        &beta,
                        c as *mut f32,
                        rows as i32,
                    )
                }
                .map_err(blas_err)
            }
            Matrix::F16(m, _) => {
                use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType};
                let n = (nq * d) as i32;
                let mut half = self.stream.alloc_zeros::<u16>(nq * d).map_err(&err)?;
                // SAFETY: reads nq·d floats at `q`, writes as many halves into `half`.
                unsafe {
                    self.stream
                        .launch_builder(&self.to_half)
                        .arg(&q)
                        .arg(&mut half)
                        .arg(&n)
                        .launch(LaunchConfig {
                            grid_dim: ((n as u32).div_ceil(THREADS), 1, 1),
                            block_dim: (THREADS, 1, 1),
                            shared_mem_bytes: 0,
                        })
                }
                .map_err(&err)?;
                let gallery = m.slice(..rows * d);
                let (a, _a) = gallery.device_ptr(&self.stream);
                let (b, _b) = half.device_ptr(&self.stream);
                // SAFETY: as for fp32, with half-precision inputs and fp32
                // output and accumulation; the handle is bound to `self.stream`.
                unsafe {
                    cudarc::cublas::result::gemm_ex(
                        *self.blas.handle(),
                        cublasOperation_t::CUBLAS_OP_T,
                        cublasOperation_t::CUBLAS_OP_N,
                        rows as i32,
                        nq as i32,
                        d as i32,
                        (&alpha as *const f32).cast(),
                        a as *const std::ffi::c_void,
                        cudaDataType::CUDA_R_16F,
                        d as i32,
                        b as *const std::ffi::c_void,
                        cudaDataType::CUDA_R_16F,
                        d as i32,
                        (&beta as *const f32).cast(),
                        c as *mut std::ffi::c_void,
                        cudaDataType::CUDA_R_32F,
                        rows as i32,
                        cublasComputeType_t::CUBLAS_COMPUTE_32F,
                        cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                    )
                }
                .map_err(blas_err)
            }
        }
    }

    /// The `k` best neighbours of the `nq` fp32 queries at device address
    /// `q`: one GEMM, two top-k launches, one copy back of `nq × k` results.
    fn search_at(&mut self, q: u64, nq: usize, k: usize) -> Result<Vec<Vec<Neighbor>>> {
        if k > MAX_K {
            return Err(Error::Index(format!(
                "GPU search returns at most {MAX_K} neighbours; {k} were asked for"
            )));
        }
        let k = k.min(self.rows);
        if nq == 0 || k == 0 {
            return Ok(vec![Vec::new(); nq]);
        }
        let rows = self.rows;
        let err = cuda_err("search");
        let mut scores = self.stream.alloc_zeros::<f32>(nq * rows).map_err(&err)?;
        self.scores(q, nq, &mut scores)?;

        let parts = rows.div_ceil(ROWS_PER_BLOCK);
        let mut part_s = self
            .stream
            .alloc_zeros::<f32>(nq * parts * k)
            .map_err(&err)?;
        let mut part_i = self
            .stream
            .alloc_zeros::<i32>(nq * parts * k)
            .map_err(&err)?;
        let shared = THREADS * k as u32 * 8;
        let (rows_i, chunk_i, k_i) = (rows as i32, ROWS_PER_BLOCK as i32, k as i32);
        let first = LaunchConfig {
            grid_dim: (parts as u32, nq as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: shared,
        };
        // SAFETY: the kernel reads nq·rows scores and writes nq·parts·k candidates, as allocated.
        unsafe {
            self.stream
                .launch_builder(&self.topk_rows)
                .arg(&scores)
                .arg(&rows_i)
                .arg(&chunk_i)
                .arg(&k_i)
                .arg(&mut part_s)
                .arg(&mut part_i)
                .launch(first)
        }
        .map_err(&err)?;
        let mut out_s = self.stream.alloc_zeros::<f32>(nq * k).map_err(&err)?;
        let mut out_i = self.stream.alloc_zeros::<i32>(nq * k).map_err(&err)?;
        let n_i = (parts * k) as i32;
        let second = LaunchConfig {
            grid_dim: (nq as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: shared,
        };
        // SAFETY: reads nq·parts·k candidates, writes nq·k results, as allocated.
        unsafe {
            self.stream
                .launch_builder(&self.topk_merge)
                .arg(&part_s)
                .arg(&part_i)
                .arg(&n_i)
                .arg(&k_i)
                .arg(&mut out_s)
                .arg(&mut out_i)
                .launch(second)
        }
        .map_err(&err)?;
        let s = self.stream.clone_dtoh(&out_s).map_err(&err)?;
        let ix = self.stream.clone_dtoh(&out_i).map_err(&err)?;
        self.stream.synchronize().map_err(&err)?;
        Ok((0..nq)
            .map(|q| {
                (0..k)
                    .filter_map(|j| {
                        let row = ix[q * k + j];
                        (row >= 0).then(|| Neighbor {
                            id: self.ids[row as usize],
                            score: s[q * k + j],
                        })
                    })
                    .collect()
            })
            .collect())
    }
}

impl Index for CudaFlat {
    fn dim(&self) -> usize {
        self.dim
    }

    fn len(&self) -> usize {
        self.rows
    }

    fn search(&mut self, queries: &[f32], k: usize) -> Result<Vec<Vec<Neighbor>>> {
        let d = self.dim;
        if !queries.len().is_multiple_of(d) {
            return Err(Error::Index(format!(
                "GPU search: {} query floats is not a multiple of the dimension {d}",
                queries.len()
            )));
        }
        let nq = queries.len() / d;
        if nq == 0 {
            return Ok(Vec::new());
        }
        let q = self
            .stream
            .clone_htod(queries)
            .map_err(cuda_err("uploading queries"))?;
        let ptr = {
            let (ptr, _record) = q.device_ptr(&self.stream);
            ptr
        };
        // `q` lives until the results are copied back (search_at waits for them).
        let hits = self.search_at(ptr, nq, k);
        drop(q);
        hits
    }

    fn device(&self) -> Option<usize> {
        Some(self.ordinal)
    }

    fn search_device(&mut self, queries: &DeviceRows<'_>, k: usize) -> Result<Vec<Vec<Neighbor>>> {
        if queries.dim() != self.dim || queries.ordinal() != self.ordinal {
            return Err(Error::Index(format!(
                "GPU search: {}-d queries on GPU {} for a {}-d gallery on GPU {}",
                queries.dim(),
                queries.ordinal(),
                self.dim,
                self.ordinal
            )));
        }
        self.search_at(queries.ptr(), queries.rows(), k)
    }

    fn add(&mut self, vectors: &[f32], ids: &[i64]) -> Result<()> {
        let d = self.dim;
        if vectors.len() != ids.len() * d {
            return Err(Error::Index(format!(
                "GPU search: {} floats for {} ids of dimension {d}",
                vectors.len(),
                ids.len()
            )));
        }
        if let Some(dup) = ids.iter().find(|id| self.row_of.contains_key(id)) {
            return Err(Error::Index(format!(
                "GPU search: id {dup} is already in the index"
            )));
        }
        self.reserve(self.rows + ids.len())?;
        let range = self.rows * d..(self.rows + ids.len()) * d;
        match &mut self.matrix {
            Matrix::F32(m) => self.stream.memcpy_htod(vectors, &mut m.slice_mut(range)),
            Matrix::F16(m, host) => {
                // The host copy grows only once the device has the rows, so a failed add leaves both as they were.
                let copied = self
                    .stream
                    .memcpy_htod(&fp16::from_f32_slice(vectors), &mut m.slice_mut(range));
                if copied.is_ok() {
                    host.extend_from_slice(vectors);
                }
                copied
            }
        }
        .map_err(cuda_err("adding"))?;
        for &id in ids {
            self.row_of.insert(id, self.rows);
            self.ids.push(id);
            self.rows += 1;
        }
        Ok(())
    }

    fn remove(&mut self, ids: &[i64]) -> Result<bool> {
        let d = self.dim;
        for id in ids {
            let Some(row) = self.row_of.remove(id) else {
                continue;
            };
            let last = self.rows - 1;
            if row != last {
                // The last row fills the hole: one row copied, on the device.
                match &mut self.matrix {
                    Matrix::F32(m) => move_row(&self.stream, m, last, row, d)?,
                    Matrix::F16(m, host) => {
                        move_row(&self.stream, m, last, row, d)?;
                        host.copy_within(last * d..(last + 1) * d, row * d);
                    }
                }
                let moved = self.ids[last];
                self.ids[row] = moved;
                self.row_of.insert(moved, row);
            }
            self.ids.pop();
            self.rows -= 1;
            if let Matrix::F16(_, host) = &mut self.matrix {
                host.truncate(self.rows * d);
            }
        }
        Ok(true)
    }

    fn reconstruct(&self, id: i64) -> Result<Vec<f32>> {
        let row = *self
            .row_of
            .get(&id)
            .ok_or_else(|| Error::Index(format!("GPU search: no id {id}")))?;
        let span = row * self.dim..(row + 1) * self.dim;
        match &self.matrix {
            Matrix::F32(m) => {
                let v = self
                    .stream
                    .clone_dtoh(&m.slice(span))
                    .map_err(cuda_err("reading a vector"))?;
                self.stream
                    .synchronize()
                    .map_err(cuda_err("reading a vector"))?;
                Ok(v)
            }
            Matrix::F16(_, host) => Ok(host[span].to_vec()),
        }
    }

    /// Saved as a faiss index of the gallery's kind, so the files on disk
    /// stay one format whichever device searches them.
    fn save(&self, path: &std::path::Path) -> Result<()> {
        let used = self.rows * self.dim;
        let from_device;
        let all: &[f32] = match &self.matrix {
            Matrix::F32(m) => {
                from_device = self
                    .stream
                    .clone_dtoh(&m.slice(..used))
                    .map_err(cuda_err("saving"))?;
                self.stream.synchronize().map_err(cuda_err("saving"))?;
                &from_device
            }
            Matrix::F16(_, host) => host,
        };
        FaissIndex::build(self.saved_as, self.dim, all, &self.ids)?.save(path)
    }

    fn describe(&self) -> String {
        let p = match self.precision() {
            GpuPrecision::Fp32 => "fp32",
            GpuPrecision::Fp16 => "fp16",
        };
        format!("CUDA flat ({p}) on {}, {} vectors", self.device, self.rows)
    }
}

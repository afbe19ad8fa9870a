//! Where a stage's data lives, and the buffers an [`super::Engine`] reads
//! and writes in place.
//!
//! The CPU path and the GPU path go through the same stage boundaries; what
//! differs is the [`Place`] of the buffers between them:
//! - an [`Arena`] is an engine input, allocated once for the largest batch.
//!   The preprocessing writes into it and ONNX Runtime reads it where it is,
//!   through `TensorRefMut::from_raw` (host memory on the CPU provider, device
//!   memory on the CUDA and TensorRT providers). The CPU path takes the same
//!   `from_raw` call as the GPU path, so CI runs it on every test.
//!   (Not `IoBinding::bind_input`: in ort 2.0.0-rc.15 it copies a tensor it
//!   does not own.)
//! - an [`OutputArena`] is an engine output that ONNX Runtime writes into
//!   memory allocated once per batch size (ort's preallocated outputs),
//!   on the host or on the device; a device output stays there for the
//!   next stage's kernels.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtrMut};
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions};
use ort::value::{Tensor, TensorRefMut};

use crate::error::{Error, Result};

/// Where a buffer lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Host memory.
    Host,
    /// Memory of the CUDA device with this ordinal.
    Cuda(usize),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Host => f.write_str("host"),
            Place::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Place {
    /// How ONNX Runtime describes memory of this place.
    pub fn memory_info(self) -> Result<MemoryInfo<'static>> {
        let (device, id) = match self {
            Place::Host => (AllocationDevice::CPU, 0),
            Place::Cuda(n) => (AllocationDevice::CUDA, n as i32),
        };
        MemoryInfo::new(device, id, AllocatorType::Device, MemoryType::Default)
            .map_err(|e| Error::Runtime(format!("describing {self} memory to ONNX Runtime: {e}")))
    }
}

/// An engine input buffer, sized once for the largest batch.
pub enum Arena {
    /// Host floats.
    Host(Vec<f32>),
    /// Device floats, on the stream of their [`crate::gpu::Device`].
    Cuda {
        /// The buffer.
        buf: CudaSlice<f32>,
        /// The stream that writes it (the device's one stream).
        stream: Arc<CudaStream>,
        /// Its device.
        ordinal: usize,
    },
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Arena({} floats on {})", self.len(), self.place())
    }
}

impl Arena {
    /// `len` zeroed floats in host memory.
    pub fn host(len: usize) -> Arena {
        Arena::Host(vec![0.0; len])
    }

    /// `len` zeroed floats on `device`.
    pub fn cuda(device: &crate::gpu::Device, len: usize) -> Result<Arena> {
        let stream = device.stream().clone();
        let buf = stream.alloc_zeros::<f32>(len.max(1)).map_err(|e| {
            Error::Gpu(format!(
                "allocating an engine input of {len} floats on GPU {}: {e}",
                device.ordinal()
            ))
        })?;
        Ok(Arena::Cuda {
            buf,
            stream,
            ordinal: device.ordinal(),
        })
    }

    /// Where it lives.
    pub fn place(&self) -> Place {
        match self {
            Arena::Host(_) => Place::Host,
            Arena::Cuda { ordinal, .. } => Place::Cuda(*ordinal),
        }
    }

    /// Its length in floats.
    pub fn len(&self) -> usize {
        match self {
            Arena::Host(v) => v.len(),
            Arena::Cuda { buf, .. } => buf.len(),
        }
    }

    /// Whether it holds no floats.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The host floats (`None` on a device).
    pub fn host_mut(&mut self) -> Option<&mut [f32]> {
        match self {
            Arena::Host(v) => Some(v),
            Arena::Cuda { .. } => None,
        }
    }

    /// The device buffer (`None` on the host).
    pub fn cuda_mut(&mut self) -> Option<&mut CudaSlice<f32>> {
        match self {
            Arena::Host(_) => None,
            Arena::Cuda { buf, .. } => Some(buf),
        }
    }

    /// The first `shape.product()` floats as a tensor ONNX Runtime reads in place.
    pub(crate) fn tensor(&mut self, shape: &[usize]) -> Result<TensorRefMut<'_, f32>> {
        let want: usize = shape.iter().product();
        if want > self.len() || want == 0 {
            return Err(Error::Runtime(format!(
                "an input of shape {shape:?} does not fit an engine buffer of {} floats",
                self.len()
            )));
        }
        let info = self.place().memory_info()?;
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let ptr: *mut c_void = match self {
            Arena::Host(v) => v.as_mut_ptr().cast(),
            Arena::Cuda { buf, stream, .. } => {
                // The write-event guard is dropped at once: there is one
                // stream per device, and ONNX Runtime runs on it too
                // (`with_compute_stream`), so order is the stream's.
                let (ptr, _guard) = buf.device_ptr_mut(stream);
                ptr as usize as *mut c_void
            }
        };
        // SAFETY: `ptr` points at `self.len() >= want` floats of the place
        // `info` describes, and the returned tensor borrows `self` mutably,
        // so the buffer outlives it and nothing else writes it meanwhile.
        unsafe { TensorRefMut::from_raw(info, ptr, ort::value::Shape::new(dims)) }
            .map_err(|e| Error::Runtime(format!("wrapping an engine input: {e}")))
    }
}

/// One engine output that ONNX Runtime writes into memory it allocated once
/// per batch size, on the host or on the device.
pub struct OutputArena {
    name: String,
    place: Place,
    /// Dimensions after the batch.
    row: Vec<usize>,
    allocator: Allocator,
    /// Per batch size: the run options holding the preallocated tensor, and
    /// the address of its data (kept alive by those options).
    by_batch: HashMap<usize, (RunOptions<HasSelectedOutputs>, usize)>,
}

impl std::fmt::Debug for OutputArena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OutputArena({} on {})", self.name, self.place)
    }
}

impl OutputArena {
    pub(crate) fn new(
        session: &ort::session::Session,
        name: &str,
        place: Place,
        row: Vec<usize>,
    ) -> Result<OutputArena> {
        let allocator = match place {
            Place::Host => Allocator::default(),
            Place::Cuda(_) => Allocator::new(session, place.memory_info()?).map_err(|e| {
                Error::Runtime(format!(
                    "an allocator for output {name} on {place}: {e} (the session must run on the CUDA or TensorRT provider)"
                ))
            })?,
        };
        Ok(OutputArena {
            name: name.to_string(),
            place,
            row,
            allocator,
            by_batch: HashMap::new(),
        })
    }

    /// Where the output lives.
    pub fn place(&self) -> Place {
        self.place
    }

    /// Floats per batch row.
    pub fn row_len(&self) -> usize {
        self.row.iter().product()
    }

    /// The run options for a batch of `n`, made on first use.
    pub(crate) fn options(&mut self, n: usize) -> Result<&RunOptions<HasSelectedOutputs>> {
        if !self.by_batch.contains_key(&n) {
            let mut shape = vec![n];
            shape.extend(&self.row);
            let fail = |e: ort::Error| {
                Error::Runtime(format!(
                    "preallocating output {} of shape {shape:?} on {}: {e}",
                    self.name, self.place
                ))
            };
            let mut tensor = Tensor::<f32>::new(&self.allocator, shape.clone()).map_err(fail)?;
            let data = tensor.data_ptr_mut() as usize;
            let options = RunOptions::new()
                .map_err(fail)?
                .with_outputs(OutputSelector::default().preallocate(self.name.clone(), tensor));
            self.by_batch.insert(n, (options, data));
        }
        Ok(&self.by_batch[&n].0)
    }

    /// The address of the output of the last run with a batch of `n`.
    fn data(&self, n: usize) -> Result<usize> {
        self.by_batch.get(&n).map(|&(_, p)| p).ok_or_else(|| {
            Error::Runtime(format!(
                "output {} has not been computed for a batch of {n}",
                self.name
            ))
        })
    }

    /// The host floats of the last run with a batch of `n` (`n × row` of them).
    pub fn host(&self, n: usize) -> Result<&[f32]> {
        if self.place != Place::Host {
            return Err(Error::Runtime(format!(
                "output {} lives on {}, not the host",
                self.name, self.place
            )));
        }
        let ptr = self.data(n)? as *const f32;
        // SAFETY: the tensor behind `ptr` holds n·row floats of host memory
        // and lives as long as its run options in `self`, which this borrow
        // keeps; engine runs that write it take `&mut self`.
        Ok(unsafe { std::slice::from_raw_parts(ptr, n * self.row_len()) })
    }

    /// [`OutputArena::host`], to change in place (say, to normalise).
    pub fn host_mut(&mut self, n: usize) -> Result<&mut [f32]> {
        let data = self.host(n)?;
        let (ptr, len) = (data.as_ptr().cast_mut(), data.len());
        // SAFETY: as for `host`; `&mut self` makes this the only borrow.
        Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
    }

    /// The device address of the last run's output with a batch of `n`:
    /// `n × row` floats on [`OutputArena::place`].
    pub fn device_ptr(&self, n: usize) -> Result<u64> {
        match self.place {
            Place::Cuda(_) => Ok(self.data(n)? as u64),
            Place::Host => Err(Error::Runtime(format!(
                "output {} lives on the host",
                self.name
            ))),
        }
    }
}

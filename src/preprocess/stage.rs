//! The preprocessing stage as the pipeline drives it: frames are staged
//! once per call where the backend reads them ([`Staged`]), then written as
//! the detector's and the recogniser's inputs straight into the engines'
//! buffers ([`Arena`]), wherever those live.
//!
//! Every pairing of where frames are staged and where an engine reads is
//! handled, so a box whose GPU cannot be used still gives the same answers:
//! - host frames, host input: the CPU backends, in place;
//! - device frames, device input: one kernel launch into the engine's input;
//! - device frames, host input (the CPU provider with `backend = "cuda"`):
//!   the kernels, then one copy back;
//! - host frames, device input: the CPU backend, then one upload.

use std::ops::Range;
use std::sync::Arc;

use ndarray::Array2;

use super::cuda::{DeviceFrames, GpuPreprocess, Staging};
use super::{Backend, DET_SIZE, REC_SIZE};
use crate::engine::{Arena, Place};
use crate::error::{Error, Result};
use crate::geometry::CropBox;
use crate::gpu::FramePool;
use crate::input::Frame;

/// Preprocessing with one backend, and for `cuda`, the device and the
/// staging buffers it reuses from call to call.
pub struct Preprocessor {
    backend: Backend,
    gpu: Option<(Arc<GpuPreprocess>, Staging)>,
    frames: FramePool,
}

impl std::fmt::Debug for Preprocessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Preprocessor({}, on {})", self.backend, self.place())
    }
}

impl Preprocessor {
    /// The `backend`; `cuda` on GPU `device_id`. A GPU that cannot be used
    /// is an error in the log and the `kernels` backend on the CPU (the
    /// same pixels), not a stage that fails to start.
    pub fn new(backend: Backend, device_id: i32) -> Preprocessor {
        if backend != Backend::Cuda {
            return Preprocessor {
                backend,
                gpu: None,
                frames: FramePool::host(),
            };
        }
        let opened = usize::try_from(device_id)
            .map_err(|_| Error::Gpu(format!("gpu.device_id = {device_id} is not a GPU ordinal")))
            .and_then(GpuPreprocess::shared);
        match opened {
            Ok(gpu) => Preprocessor {
                backend,
                frames: FramePool::pinned(gpu.device().clone()),
                gpu: Some((gpu, Staging::new())),
            },
            Err(e) => {
                tracing::error!(
                    "preprocess.backend = \"cuda\" cannot run: {e}; preprocessing with the same kernels on the CPU instead"
                );
                Preprocessor {
                    backend: Backend::Kernels,
                    gpu: None,
                    frames: FramePool::host(),
                }
            }
        }
    }

    /// The backend in use (after any fallback).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The memory to decode frames into, so that staging them for this
    /// backend copies nothing more: page-locked for `cuda`, the host's else.
    pub fn frame_pool(&self) -> &FramePool {
        &self.frames
    }

    /// Where it works best to write: the GPU it runs on, or the host.
    pub fn place(&self) -> Place {
        self.gpu
            .as_ref()
            .map_or(Place::Host, |(g, _)| Place::Cuda(g.device().ordinal()))
    }

    /// Stages `frames` for both stages of one call.
    pub fn stage<'a>(&'a mut self, frames: &'a [&'a Frame]) -> Result<Staged<'a>> {
        match &mut self.gpu {
            None => Ok(Staged::Host {
                frames,
                backend: self.backend,
            }),
            Some((gpu, staging)) => {
                let on_device = Box::new(gpu.stage(staging, frames)?);
                Ok(Staged::Device {
                    frames,
                    on_device,
                    gpu,
                })
            }
        }
    }

    /// Ends the current call's use of the staging buffers: the next
    /// [`Preprocessor::stage`] waits for the work queued until now.
    pub fn release(&mut self) -> Result<()> {
        if let Some((gpu, staging)) = &mut self.gpu {
            staging.release(gpu.device().stream())?;
        }
        Ok(())
    }
}

/// One call's frames, where the preprocessing reads them.
pub enum Staged<'a> {
    /// Decoded frames in host memory.
    Host {
        /// The frames.
        frames: &'a [&'a Frame],
        /// The CPU backend that reads them.
        backend: Backend,
    },
    /// The same frames, staged on a GPU.
    Device {
        /// The frames, for their names and sizes.
        frames: &'a [&'a Frame],
        /// Their pixels on the device (boxed: the plan and tables are
        /// large beside the host variant).
        on_device: Box<DeviceFrames<'a>>,
        /// The kernels.
        gpu: &'a GpuPreprocess,
    },
}

impl Staged<'_> {
    /// The frames.
    pub fn frames(&self) -> &[&Frame] {
        match self {
            Staged::Host { frames, .. } | Staged::Device { frames, .. } => frames,
        }
    }

    /// Writes the detector's input for the frames `range` into `out`
    /// (`range.len() × 3 × 640 × 640` floats from its start) and returns
    /// their `scale_factor`s.
    pub fn detector(&self, range: Range<usize>, out: &mut Arena) -> Result<Array2<f32>> {
        let frames = self.frames().get(range.clone()).ok_or_else(|| {
            Error::Preprocess(format!(
                "frames {range:?} of a call with {}",
                self.frames().len()
            ))
        })?;
        let len = frames.len() * 3 * (DET_SIZE * DET_SIZE) as usize;
        fits("detector", len, out)?;
        match (self, out) {
            (Staged::Host { backend, .. }, Arena::Host(buf)) => {
                super::detector_into(frames, *backend, &mut buf[..len])?
            }
            (Staged::Host { backend, .. }, Arena::Cuda { buf, stream, .. }) => {
                let mut host = vec![0.0; len];
                super::detector_into(frames, *backend, &mut host)?;
                upload(stream, &host, buf)?;
            }
            (Staged::Device { on_device, gpu, .. }, Arena::Cuda { buf, .. }) => {
                gpu.detector_range_into(on_device, range, buf)?
            }
            (Staged::Device { on_device, gpu, .. }, Arena::Host(buf)) => {
                let mut scratch = gpu
                    .device()
                    .stream()
                    .alloc_zeros::<f32>(len.max(1))
                    .map_err(|e| {
                        Error::Gpu(format!("preprocessing: allocating the detector input: {e}"))
                    })?;
                gpu.detector_range_into(on_device, range, &mut scratch)?;
                gpu.copy_to_host(&scratch, &mut buf[..len])?;
            }
        }
        Ok(super::scale_factors(frames))
    }

    /// Writes the recogniser's input for `crops` (index into the frames,
    /// box) into `out`: `crops.len() × 3 × 224 × 224` floats from its start.
    pub fn crops(&self, crops: &[(usize, CropBox)], out: &mut Arena) -> Result<()> {
        let plane = 3 * (REC_SIZE * REC_SIZE) as usize;
        let len = crops.len() * plane;
        fits("recogniser", len, out)?;
        let frames = self.frames();
        let host_crops = |backend: Backend, dst: &mut [f32]| -> Result<()> {
            for (&(i, crop), o) in crops.iter().zip(dst.chunks_exact_mut(plane)) {
                let frame = frames.get(i).ok_or_else(|| {
                    Error::Preprocess(format!(
                        "a crop of frame {i} in a call with {}",
                        frames.len()
                    ))
                })?;
                super::embedder_crop(frame, crop, o, backend)?;
            }
            Ok(())
        };
        match (self, out) {
            (Staged::Host { backend, .. }, Arena::Host(buf)) => {
                host_crops(*backend, &mut buf[..len])
            }
            (Staged::Host { backend, .. }, Arena::Cuda { buf, stream, .. }) => {
                let mut host = vec![0.0; len];
                host_crops(*backend, &mut host)?;
                upload(stream, &host, buf)
            }
            (Staged::Device { on_device, gpu, .. }, Arena::Cuda { buf, .. }) => {
                let boxes = gpu.upload_crops(on_device, crops)?;
                gpu.embedder_into(on_device, &boxes, buf)
            }
            (Staged::Device { on_device, gpu, .. }, Arena::Host(buf)) => {
                let scratch = gpu.embedder(on_device, crops)?;
                gpu.copy_to_host(&scratch, &mut buf[..len])
            }
        }
    }
}

fn fits(stage: &str, len: usize, out: &Arena) -> Result<()> {
    if len > out.len() {
        return Err(Error::Preprocess(format!(
            "the {stage} input needs {len} floats; its engine buffer holds {}",
            out.len()
        )));
    }
    Ok(())
}

fn upload(
    stream: &Arc<cudarc::driver::CudaStream>,
    host: &[f32],
    dst: &mut cudarc::driver::CudaSlice<f32>,
) -> Result<()> {
    stream
        .memcpy_htod(host, dst)
        .map_err(|e| Error::Gpu(format!("uploading an engine input: {e}")))?;
    // `host` is pageable and dropped on return: the copy must be done.
    stream
        .synchronize()
        .map_err(|e| Error::Gpu(format!("uploading an engine input: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_without_a_usable_gpu_runs_the_same_kernels_on_the_cpu() {
        let p = Preprocessor::new(Backend::Cuda, 0);
        if crate::gpu::Device::open(0).is_ok() && p.backend() == Backend::Cuda {
            assert_eq!(p.place(), Place::Cuda(0));
        } else {
            assert_eq!((p.backend(), p.place()), (Backend::Kernels, Place::Host));
        }
        let p = Preprocessor::new(Backend::Cuda, -1);
        assert_eq!((p.backend(), p.place()), (Backend::Kernels, Place::Host));
        let p = Preprocessor::new(Backend::Opencv, 0);
        assert_eq!((p.backend(), p.place()), (Backend::Opencv, Place::Host));
    }
}

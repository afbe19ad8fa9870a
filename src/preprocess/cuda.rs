//! Preprocessing on an NVIDIA GPU: the kernels of `kernels.cu`, compiled by
//! NVRTC at start-up, one launch per stage.
//!
//! - [`GpuPreprocess::detector`]: frames → 640×640 cubic → normalised CHW.
//! - [`GpuPreprocess::embedder`]: every crop of every frame → 224×224
//!   bilinear → normalised CHW, in one launch (`blockIdx.z` = crop).
//!
//! The frames are uploaded once per batch and both stages read them on the
//! device. The outputs stay on the device ([`CudaSlice`]), ready to be bound
//! to ONNX Runtime's input through IO binding; that binding is not written
//! yet (issue 5), so today callers copy them back with [`GpuPreprocess::to_host`].
//!
//! Status: the arithmetic is checked against the OpenCV path on the CPU by
//! compiling the same kernel source for the host (tests/it/preprocess_kernels.rs);
//! the launches themselves are checked only where a GPU is present
//! (tests/it/gpu.rs, run by scripts/gpu-check.sh, which also times them).

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};

use super::{Normalizer, DET_SIZE, REC_SIZE};
use crate::engine::gpu;
use crate::error::{Error, Result};
use crate::geometry::CropBox;
use crate::input::Frame;

/// The kernels' source, shared with the CPU check.
pub const KERNELS: &str = include_str!("kernels.cu");

const BLOCK: (u32, u32, u32) = (32, 8, 1);

/// The preprocessing kernels on one GPU.
pub struct GpuPreprocess {
    stream: Arc<CudaStream>,
    det: CudaFunction,
    rec: CudaFunction,
    det_lut: CudaSlice<f32>,
    rec_lut: CudaSlice<f32>,
}

/// Frames uploaded for one batch.
pub struct DeviceFrames {
    bytes: CudaSlice<u8>,
    /// `(offset, width, height, pitch)` per frame.
    table: Vec<i64>,
}

/// The crops of one batch, checked against their frames and uploaded.
pub struct DeviceCrops {
    /// `(frame, x1, y1, x2, y2)` per crop.
    boxes: CudaSlice<i32>,
    table: CudaSlice<i64>,
    count: usize,
    /// The frames' table (and byte count) the boxes were checked against:
    /// the kernel may only read frames of exactly that layout.
    checked_for: (Vec<i64>, usize),
}

fn err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Config(format!("GPU preprocessing: {what}: {e}"))
}

impl GpuPreprocess {
    /// Compiles the kernels for GPU `ordinal`; says why on boxes that cannot.
    pub fn new(ordinal: usize) -> Result<GpuPreprocess> {
        gpu::probe(ordinal as i32).map_err(|e| Error::Config(format!("GPU preprocessing: {e}")))?;
        // SAFETY: only tries to dlopen the library by name.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(Error::Config(
                "GPU preprocessing needs libnvrtc (the CUDA toolkit's runtime compiler)".into(),
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(err("opening the device"))?;
        let stream = ctx.default_stream();
        let ptx = cudarc::nvrtc::compile_ptx(KERNELS)
            .map_err(|e| Error::Config(format!("GPU preprocessing: compiling the kernels: {e}")))?;
        let module = ctx.load_module(ptx).map_err(err("loading the kernels"))?;
        let det = module
            .load_function("det_preprocess")
            .map_err(err("det_preprocess"))?;
        let rec = module
            .load_function("rec_preprocess")
            .map_err(err("rec_preprocess"))?;
        let det_lut = stream
            .clone_htod(&Normalizer::detector().table())
            .map_err(err("uploading tables"))?;
        let rec_lut = stream
            .clone_htod(&Normalizer::embedder().table())
            .map_err(err("uploading tables"))?;
        Ok(GpuPreprocess {
            stream,
            det,
            rec,
            det_lut,
            rec_lut,
        })
    }

    /// Uploads `frames` (each once, for both stages).
    pub fn upload(&self, frames: &[&Frame]) -> Result<DeviceFrames> {
        let raw = frames
            .iter()
            .map(|f| Ok((super::bytes(&f.name, &f.rgb)?, f.width, f.height)))
            .collect::<Result<Vec<_>>>()?;
        self.upload_raw(&raw)
    }

    /// Uploads interleaved RGB frames given as `(bytes, width, height)`.
    pub fn upload_raw(&self, frames: &[(&[u8], u32, u32)]) -> Result<DeviceFrames> {
        let mut host = Vec::new();
        let mut table = Vec::with_capacity(frames.len() * 4);
        for &(bytes, w, h) in frames {
            if bytes.len() != (w * h * 3) as usize {
                return Err(Error::Config(format!(
                    "GPU preprocessing: a {w}x{h} RGB frame needs {} bytes, got {}",
                    w * h * 3,
                    bytes.len()
                )));
            }
            table.extend([host.len() as i64, w as i64, h as i64, 3 * w as i64]);
            host.extend_from_slice(bytes);
        }
        let bytes = self
            .stream
            .clone_htod(&host)
            .map_err(err("uploading frames"))?;
        Ok(DeviceFrames { bytes, table })
    }

    /// The stream every launch and copy goes to (to time them, or to order other work after them).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The detector's input for every uploaded frame: `n × 3 × 640 × 640`.
    pub fn detector(&self, frames: &DeviceFrames) -> Result<CudaSlice<f32>> {
        let plane = (DET_SIZE * DET_SIZE) as usize;
        let mut out = self
            .stream
            .alloc_zeros::<f32>(frames.table.len() / 4 * 3 * plane)
            .map_err(err("allocating the detector input"))?;
        self.detector_into(frames, &mut out)?;
        Ok(out)
    }

    /// Writes the detector's input for every uploaded frame into `out`
    /// (at least `n × 3 × 640 × 640`): an engine's input buffer, say.
    pub fn detector_into(&self, frames: &DeviceFrames, out: &mut CudaSlice<f32>) -> Result<()> {
        let n = frames.table.len() / 4;
        let side = DET_SIZE as i32;
        let plane = (DET_SIZE * DET_SIZE) as usize;
        if out.len() < n * 3 * plane {
            return Err(Error::Config(format!("GPU preprocessing: the detector input of {n} frames needs {} floats, the buffer has {}", n * 3 * plane, out.len())));
        }
        let grid = (DET_SIZE.div_ceil(BLOCK.0), DET_SIZE.div_ceil(BLOCK.1), 1);
        for i in 0..n {
            let t = &frames.table[i * 4..i * 4 + 4];
            let src = frames.bytes.slice(t[0] as usize..);
            let mut dst = out.slice_mut(i * 3 * plane..(i + 1) * 3 * plane);
            let (w, h, pitch) = (t[1] as i32, t[2] as i32, t[3] as i32);
            // SAFETY: reads h rows of `pitch` bytes from the frame's offset and writes 3·640·640 floats, as allocated.
            unsafe {
                self.stream
                    .launch_builder(&self.det)
                    .arg(&src)
                    .arg(&w)
                    .arg(&h)
                    .arg(&pitch)
                    .arg(&mut dst)
                    .arg(&side)
                    .arg(&self.det_lut)
                    .launch(LaunchConfig {
                        grid_dim: grid,
                        block_dim: BLOCK,
                        shared_mem_bytes: 0,
                    })
            }
            .map_err(err("det_preprocess"))?;
        }
        Ok(())
    }

    /// The recogniser's input for `crops` (frame index, box), in one launch:
    /// `crops.len() × 3 × 224 × 224`. Boxes must lie inside their frames.
    pub fn embedder(
        &self,
        frames: &DeviceFrames,
        crops: &[(usize, CropBox)],
    ) -> Result<CudaSlice<f32>> {
        let plane = (REC_SIZE * REC_SIZE) as usize;
        let mut out = self
            .stream
            .alloc_zeros::<f32>(crops.len().max(1) * 3 * plane)
            .map_err(err("allocating the recogniser input"))?;
        let crops = self.upload_crops(frames, crops)?;
        self.embedder_into(frames, &crops, &mut out)?;
        Ok(out)
    }

    /// Checks that every crop (frame index, box) lies inside its frame, and uploads them.
    pub fn upload_crops(
        &self,
        frames: &DeviceFrames,
        crops: &[(usize, CropBox)],
    ) -> Result<DeviceCrops> {
        let n = frames.table.len() / 4;
        let mut boxes = Vec::with_capacity(crops.len() * 5);
        for &(f, c) in crops {
            let inside = f < n
                && c.x1 >= 0
                && c.y1 >= 0
                && c.x2 > c.x1
                && c.y2 > c.y1
                && c.x2 as i64 <= frames.table[f * 4 + 1]
                && c.y2 as i64 <= frames.table[f * 4 + 2];
            if !inside {
                return Err(Error::Config(format!(
                    "GPU preprocessing: crop {:?} of frame {f} is empty or outside it",
                    c.to_array()
                )));
            }
            boxes.extend([f as i32, c.x1, c.y1, c.x2, c.y2]);
        }
        if boxes.is_empty() {
            boxes.extend([0; 5]); // a zero-length upload is refused; `count` stays 0
        }
        Ok(DeviceCrops {
            boxes: self
                .stream
                .clone_htod(&boxes)
                .map_err(err("uploading boxes"))?,
            table: self
                .stream
                .clone_htod(&frames.table)
                .map_err(err("uploading frame table"))?,
            count: crops.len(),
            checked_for: (frames.table.clone(), frames.bytes.len()),
        })
    }

    /// Writes the recogniser's input for `crops` into `out` (at least
    /// `crops × 3 × 224 × 224`), in one launch.
    pub fn embedder_into(
        &self,
        frames: &DeviceFrames,
        crops: &DeviceCrops,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let plane = (REC_SIZE * REC_SIZE) as usize;
        if out.len() < crops.count * 3 * plane {
            return Err(Error::Config(format!("GPU preprocessing: the recogniser input of {} crops needs {} floats, the buffer has {}", crops.count, crops.count * 3 * plane, out.len())));
        }
        if (&crops.checked_for.0[..], crops.checked_for.1)
            != (&frames.table[..], frames.bytes.len())
        {
            return Err(Error::Config(
                "GPU preprocessing: these crops were checked against other frames".into(),
            ));
        }
        if crops.count == 0 {
            return Ok(());
        }
        let side = REC_SIZE as i32;
        let grid = (
            REC_SIZE.div_ceil(BLOCK.0),
            REC_SIZE.div_ceil(BLOCK.1),
            crops.count as u32,
        );
        // SAFETY: every box was checked to lie inside its frame, in frames of
        // this very layout; writes crops·3·224·224 floats, as checked above.
        unsafe {
            self.stream
                .launch_builder(&self.rec)
                .arg(&frames.bytes)
                .arg(&crops.table)
                .arg(&crops.boxes)
                .arg(out)
                .arg(&side)
                .arg(&self.rec_lut)
                .launch(LaunchConfig {
                    grid_dim: grid,
                    block_dim: BLOCK,
                    shared_mem_bytes: 0,
                })
        }
        .map_err(err("rec_preprocess"))?;
        Ok(())
    }

    /// Copies a result back (until IO binding hands it to ONNX Runtime directly).
    pub fn to_host(&self, data: &CudaSlice<f32>) -> Result<Vec<f32>> {
        let v = self.stream.clone_dtoh(data).map_err(err("copying back"))?;
        self.stream.synchronize().map_err(err("copying back"))?;
        Ok(v)
    }
}

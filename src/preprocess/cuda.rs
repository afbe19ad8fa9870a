//! Preprocessing on an NVIDIA GPU: the kernels of `kernels.cu`, compiled by
//! NVRTC at start-up (options: [`crate::gpu::nvrtc`]), one launch per stage.
//!
//! - [`GpuPreprocess::detector`]: frames → 640×640 cubic → normalised CHW,
//!   every frame of a batch in one launch (`blockIdx.z` = frame).
//! - [`GpuPreprocess::embedder`]: every crop of every frame → 224×224
//!   bilinear → normalised CHW, in one launch (`blockIdx.z` = crop).
//!
//! Both read OpenCV's resize tables computed on the host ([`super::plan`]),
//! so the pixels are OpenCV's to the bit, the same as the host build of the
//! same source (`preprocess.backend = "kernels"`, tests/it/preprocess_kernels.rs).
//! The frames are uploaded once per batch and both stages read them on the
//! device. The outputs stay on the device ([`CudaSlice`]); binding them to
//! the engine's input is not wired yet (issue 13), so callers copy them back
//! with [`GpuPreprocess::to_host`]. The launches are checked where a GPU is
//! present (tests/it/gpu.rs, run by scripts/gpu-check.sh).

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use super::plan::{DetectorPlan, FrameLayout, RecogniserPlan, Tables};
use super::{Normalizer, DET_SIZE, REC_SIZE};
use crate::error::{Error, Result};
use crate::geometry::CropBox;
use crate::gpu;
use crate::input::Frame;

const BLOCK: (u32, u32, u32) = (32, 8, 1);

/// The preprocessing kernels on one GPU.
pub struct GpuPreprocess {
    stream: Arc<CudaStream>,
    det: CudaFunction,
    rec: CudaFunction,
    det_lut: CudaSlice<f32>,
    rec_lut: CudaSlice<f32>,
}

/// A plan's tables on the device.
struct DeviceTables {
    xofs: CudaSlice<i32>,
    alpha: CudaSlice<i16>,
    yofs: CudaSlice<i32>,
    beta: CudaSlice<i16>,
}

/// Frames uploaded for one batch, with the detector's tables for them.
pub struct DeviceFrames {
    bytes: CudaSlice<u8>,
    layouts: Vec<FrameLayout>,
    plan: DetectorPlan,
    table: CudaSlice<i64>,
    tables: DeviceTables,
}

/// The crops of one batch, checked against their frames and uploaded.
pub struct DeviceCrops {
    boxes: CudaSlice<i32>,
    tables: DeviceTables,
    count: usize,
    /// The frames (and byte count) the boxes were checked against: the
    /// kernel may only read frames of exactly that layout.
    checked_for: (Vec<FrameLayout>, usize),
}

fn err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Config(format!("GPU preprocessing: {what}: {e}"))
}

impl GpuPreprocess {
    /// Compiles the kernels for GPU `ordinal`; says why on boxes that cannot.
    pub fn new(ordinal: usize) -> Result<GpuPreprocess> {
        let device = gpu::Device::open(ordinal)
            .map_err(|e| Error::Config(format!("GPU preprocessing: {e}")))?;
        // SAFETY: only tries to dlopen the library by name.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(Error::Config(
                "GPU preprocessing needs libnvrtc (the CUDA toolkit's runtime compiler)".into(),
            ));
        }
        let stream = device.stream().clone();
        let ptx = gpu::nvrtc::compile(
            &gpu::nvrtc::PREPROCESS,
            device.platform().compute_capability,
        )
        .map_err(|e| Error::Config(format!("GPU preprocessing: {e}")))?;
        let module = device
            .context()
            .load_module(ptx)
            .map_err(err("loading the kernels"))?;
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

    fn upload_tables(&self, t: &Tables) -> Result<DeviceTables> {
        let e = err("uploading resize tables");
        // A zero-length upload is refused; an empty batch launches nothing.
        let or1 = |v: &[i32]| if v.is_empty() { vec![0] } else { v.to_vec() };
        let or1s = |v: &[i16]| if v.is_empty() { vec![0] } else { v.to_vec() };
        Ok(DeviceTables {
            xofs: self.stream.clone_htod(&or1(&t.xofs)).map_err(&e)?,
            alpha: self.stream.clone_htod(&or1s(&t.alpha)).map_err(&e)?,
            yofs: self.stream.clone_htod(&or1(&t.yofs)).map_err(&e)?,
            beta: self.stream.clone_htod(&or1s(&t.beta)).map_err(&e)?,
        })
    }

    /// Uploads interleaved RGB frames given as `(bytes, width, height)`.
    pub fn upload_raw(&self, frames: &[(&[u8], u32, u32)]) -> Result<DeviceFrames> {
        let mut host = Vec::new();
        let mut layouts = Vec::with_capacity(frames.len());
        for &(bytes, w, h) in frames {
            if bytes.len() != (w * h * 3) as usize {
                return Err(Error::Config(format!(
                    "GPU preprocessing: a {w}x{h} RGB frame needs {} bytes, got {}",
                    w * h * 3,
                    bytes.len()
                )));
            }
            layouts.push(FrameLayout {
                offset: host.len(),
                width: w,
                height: h,
                pitch: 3 * w as usize,
            });
            host.extend_from_slice(bytes);
        }
        if host.is_empty() {
            host.push(0); // a zero-length upload is refused; no frame reads it
        }
        let plan = DetectorPlan::new(&layouts, host.len(), DET_SIZE)?;
        let bytes = self
            .stream
            .clone_htod(&host)
            .map_err(err("uploading frames"))?;
        let mut table = plan.frames.clone();
        if table.is_empty() {
            table.extend([0; 4]);
        }
        Ok(DeviceFrames {
            table: self
                .stream
                .clone_htod(&table)
                .map_err(err("uploading the frame table"))?,
            tables: self.upload_tables(&plan.tables)?,
            bytes,
            layouts,
            plan,
        })
    }

    /// The stream every launch and copy goes to (to time them, or to order other work after them).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The detector's input for every uploaded frame: `n × 3 × 640 × 640`.
    pub fn detector(&self, frames: &DeviceFrames) -> Result<CudaSlice<f32>> {
        let mut out = self
            .stream
            .alloc_zeros::<f32>(frames.plan.output_len().max(1))
            .map_err(err("allocating the detector input"))?;
        self.detector_into(frames, &mut out)?;
        Ok(out)
    }

    /// Writes the detector's input for every uploaded frame into `out`
    /// (at least `n × 3 × 640 × 640`), in one launch: an engine's input buffer, say.
    pub fn detector_into(&self, frames: &DeviceFrames, out: &mut CudaSlice<f32>) -> Result<()> {
        let plan = &frames.plan;
        if out.len() < plan.output_len() {
            return Err(Error::Config(format!(
                "GPU preprocessing: the detector input of {} frames needs {} floats, the buffer has {}",
                plan.len(),
                plan.output_len(),
                out.len()
            )));
        }
        if plan.is_empty() {
            return Ok(());
        }
        let side = DET_SIZE as i32;
        let grid = (
            DET_SIZE.div_ceil(BLOCK.0),
            DET_SIZE.div_ceil(BLOCK.1),
            plan.len() as u32,
        );
        let t = &frames.tables;
        // SAFETY: the plan checked every frame to lie inside the uploaded
        // bytes and holds 640 table entries per frame; writes n·3·640·640
        // floats, as checked above.
        unsafe {
            self.stream
                .launch_builder(&self.det)
                .arg(&frames.bytes)
                .arg(&frames.table)
                .arg(&t.xofs)
                .arg(&t.alpha)
                .arg(&t.yofs)
                .arg(&t.beta)
                .arg(&side)
                .arg(&self.det_lut)
                .arg(out)
                .launch(LaunchConfig {
                    grid_dim: grid,
                    block_dim: BLOCK,
                    shared_mem_bytes: 0,
                })
        }
        .map_err(err("det_preprocess"))?;
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

    /// Checks that every crop (frame index, box) lies inside its frame, and
    /// uploads the boxes and their resize tables.
    pub fn upload_crops(
        &self,
        frames: &DeviceFrames,
        crops: &[(usize, CropBox)],
    ) -> Result<DeviceCrops> {
        let plan = RecogniserPlan::new(&frames.layouts, frames.bytes.len(), crops, REC_SIZE)?;
        let mut boxes = plan.boxes.clone();
        if boxes.is_empty() {
            boxes.extend([0; 6]); // a zero-length upload is refused; `count` stays 0
        }
        Ok(DeviceCrops {
            boxes: self
                .stream
                .clone_htod(&boxes)
                .map_err(err("uploading boxes"))?,
            tables: self.upload_tables(&plan.tables)?,
            count: plan.len(),
            checked_for: (frames.layouts.clone(), frames.bytes.len()),
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
            != (&frames.layouts[..], frames.bytes.len())
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
        let t = &crops.tables;
        // SAFETY: every box was checked to lie inside its frame, in frames of
        // this very layout, with 224 table entries per crop; writes
        // crops·3·224·224 floats, as checked above.
        unsafe {
            self.stream
                .launch_builder(&self.rec)
                .arg(&frames.bytes)
                .arg(&frames.table)
                .arg(&crops.boxes)
                .arg(&t.xofs)
                .arg(&t.alpha)
                .arg(&t.yofs)
                .arg(&t.beta)
                .arg(&side)
                .arg(&self.rec_lut)
                .arg(out)
                .launch(LaunchConfig {
                    grid_dim: grid,
                    block_dim: BLOCK,
                    shared_mem_bytes: 0,
                })
        }
        .map_err(err("rec_preprocess"))?;
        Ok(())
    }

    /// Copies a result back (until the engine reads it on the device).
    pub fn to_host(&self, data: &CudaSlice<f32>) -> Result<Vec<f32>> {
        let v = self.stream.clone_dtoh(data).map_err(err("copying back"))?;
        self.stream.synchronize().map_err(err("copying back"))?;
        Ok(v)
    }
}

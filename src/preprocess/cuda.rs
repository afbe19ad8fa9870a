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
//! Frames are staged once per batch ([`Staging`]) and both stages read them
//! on the device. They are decoded into page-locked host memory
//! ([`crate::gpu::FramePool`]), which an integrated GPU (Jetson) reads in
//! place through its mapped address, and which a discrete GPU receives by
//! asynchronous DMA into a reused device buffer; a frame from elsewhere is
//! first copied into page-locked memory of the staging's own. Each buffer,
//! and each frame's memory, is written again only after the stream event
//! that ends its last use. The outputs are written where the caller says:
//! the engine's input buffer ([`crate::engine::Arena`]), read by ONNX
//! Runtime in place. The launches are checked where a GPU is present
//! (tests/it/gpu.rs, run by scripts/gpu-check.sh).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PinnedHostSlice,
    PushKernelArg,
};

use super::plan::{DetectorPlan, FrameLayout, RecogniserPlan, Tables};
use super::{Normalizer, DET_SIZE, REC_SIZE};
use crate::error::{Error, Result};
use crate::geometry::CropBox;
use crate::gpu::{self, FrameMemory};
use crate::input::Frame;

const BLOCK: (u32, u32, u32) = (32, 8, 1);

/// The preprocessing kernels on one GPU.
pub struct GpuPreprocess {
    device: Arc<gpu::Device>,
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

/// Frames on the device for one batch, with the detector's tables for them.
/// `'a` is the [`Staging`] whose buffers hold them (`'static`: their own).
pub struct DeviceFrames<'a> {
    /// Device address of the first byte.
    ptr: u64,
    /// Bytes at `ptr`.
    len: usize,
    /// The frames' own buffer, when not staged.
    _owned: Option<CudaSlice<u8>>,
    layouts: Vec<FrameLayout>,
    plan: DetectorPlan,
    table: CudaSlice<i64>,
    tables: DeviceTables,
    _staged: PhantomData<&'a mut Staging>,
}

impl DeviceFrames<'_> {
    /// How many frames.
    pub fn len(&self) -> usize {
        self.layouts.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.layouts.is_empty()
    }
}

/// Reused buffers that frames are staged in: page-locked host memory for
/// frames that are not already in page-locked memory and, on a discrete
/// GPU, a device buffer. Grown when a batch needs more, never shrunk;
/// written only after the event that ends the previous batch's use.
pub struct Staging {
    pinned: Option<PinnedHostSlice<u8>>,
    /// The device address of `pinned` (integrated GPU).
    mapped: Option<u64>,
    device: Option<CudaSlice<u8>>,
    /// The page-locked memory of the frames of the batch in flight, which
    /// the device reads in place or copies from: back to their pool only
    /// after `done`.
    held: Vec<Arc<FrameMemory>>,
    /// Recorded after the last work that reads the buffers.
    done: Option<CudaEvent>,
    /// The stream the buffers were last used on, to wait for at drop when
    /// no event was recorded.
    stream: Option<Arc<CudaStream>>,
}

impl Staging {
    /// No buffers yet: the first batch allocates them.
    pub fn new() -> Staging {
        Staging {
            pinned: None,
            mapped: None,
            device: None,
            held: Vec::new(),
            done: None,
            stream: None,
        }
    }

    /// Marks the end of the current batch's use of the buffers: the next
    /// [`GpuPreprocess::stage`] waits for the work queued so far on `stream`.
    pub fn release(&mut self, stream: &Arc<CudaStream>) -> Result<()> {
        let done = stream
            .record_event(None)
            .map_err(err("recording the staging event"))?;
        // Usually the batch is over already (its features came back on the
        // same stream): its frames' memory goes back to the pool now, for
        // the next batch's decoding, instead of at the next stage.
        if done.is_complete() {
            self.held.clear();
        }
        self.done = Some(done);
        Ok(())
    }

    /// Waits until the device no longer reads the buffers or the held
    /// frames, then lets the frames' memory go back to its pool.
    fn settle(&mut self, stream: &CudaStream) -> Result<()> {
        // Without an event (an error ended the last batch), wait for
        // everything queued on the stream.
        match self.done.take() {
            Some(done) => done.synchronize(),
            None => stream.synchronize(),
        }
        .map_err(err("waiting for the previous batch"))?;
        self.held.clear();
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Neither the held frames (back to their pool, written again) nor
        // the page-locked buffer (freed) may go while the device may still
        // read them: the raw copies and launches record no event of
        // cudarc's own for its drop to wait on.
        if self.held.is_empty() && self.pinned.is_none() {
            return;
        }
        if let Some(done) = self.done.take() {
            let _ = done.synchronize();
        } else if let Some(stream) = &self.stream {
            let _ = stream.synchronize();
        }
    }
}

impl Default for Staging {
    fn default() -> Self {
        Staging::new()
    }
}

/// The crops of one batch, checked against their frames and uploaded.
pub struct DeviceCrops {
    boxes: CudaSlice<i32>,
    tables: DeviceTables,
    count: usize,
    /// The frames (and address and byte count) the boxes were checked
    /// against: the kernel may only read frames of exactly that layout.
    checked_for: (Vec<FrameLayout>, u64, usize),
}

fn err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Gpu(format!("preprocessing: {what}: {e}"))
}

impl GpuPreprocess {
    /// The kernels on GPU `ordinal`, compiled once per process and shared
    /// (every stage and pipeline of the process uses the same device).
    pub fn shared(ordinal: usize) -> Result<Arc<GpuPreprocess>> {
        static OPEN: OnceLock<Mutex<HashMap<usize, Arc<GpuPreprocess>>>> = OnceLock::new();
        let mut open = OPEN
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(p) = open.get(&ordinal) {
            return Ok(p.clone());
        }
        let p = Arc::new(GpuPreprocess::new(ordinal)?);
        open.insert(ordinal, p.clone());
        Ok(p)
    }

    /// Compiles the kernels for GPU `ordinal`; says why on boxes that cannot.
    pub fn new(ordinal: usize) -> Result<GpuPreprocess> {
        let device =
            gpu::Device::open(ordinal).map_err(|e| Error::Gpu(format!("preprocessing: {e}")))?;
        // SAFETY: only tries to dlopen the library by name.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(Error::Gpu(
                "preprocessing needs libnvrtc (the CUDA toolkit's runtime compiler)".into(),
            ));
        }
        let stream = device.stream().clone();
        let ptx = gpu::nvrtc::compile(
            &gpu::nvrtc::PREPROCESS,
            device.platform().compute_capability,
        )
        .map_err(|e| Error::Gpu(format!("preprocessing: {e}")))?;
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
            device,
            stream,
            det,
            rec,
            det_lut,
            rec_lut,
        })
    }

    /// The device the kernels run on.
    pub fn device(&self) -> &Arc<gpu::Device> {
        &self.device
    }

    /// Uploads `frames` (each once, for both stages) into a buffer of their own.
    pub fn upload(&self, frames: &[&Frame]) -> Result<DeviceFrames<'static>> {
        let raw = raw_frames(frames)?;
        self.upload_raw(&raw)
    }

    /// Stages `frames` in `staging`'s reused buffers. A frame decoded into
    /// this device's page-locked memory ([`crate::gpu::FramePool`]) is read
    /// in place by an integrated GPU and copied by DMA straight from where it
    /// was decoded to a discrete one; any other frame is first copied into
    /// the staging's page-locked buffer. All copies are asynchronous, on the
    /// device's stream, into one reused device buffer.
    pub fn stage<'a>(
        &self,
        staging: &'a mut Staging,
        frames: &[&Frame],
    ) -> Result<DeviceFrames<'a>> {
        let raw = raw_frames(frames)?;
        let mut layouts = pack(&raw)?;
        let total = layouts.last().map_or(0, |l| l.offset + l.span()).max(1);
        // The previous batch's kernels may still read the buffers.
        staging.settle(&self.stream)?;
        staging.stream = Some(self.stream.clone());
        let pinned: Vec<Option<&Arc<FrameMemory>>> = frames
            .iter()
            .map(|f| {
                f.memory()
                    .filter(|m| m.device().is_some_and(|d| Arc::ptr_eq(d, &self.device)))
            })
            .collect();
        let integrated = self.device.platform().integrated;
        // Frames not in this device's page-locked memory (or, on an
        // integrated GPU, not mapped) go through the staging buffer, at
        // their packed offsets.
        let copied: Vec<bool> = pinned
            .iter()
            .map(|m| m.is_none_or(|m| integrated && m.mapped().is_none()))
            .collect();
        if copied.iter().any(|&c| c) {
            self.stage_copies(staging, total, &raw, &layouts, &copied)?;
        }
        staging.held.extend(
            pinned
                .iter()
                .zip(&copied)
                .filter(|(_, &c)| !c)
                .filter_map(|(m, _)| m.cloned()),
        );
        if integrated {
            // Every frame is read where it is: addresses become offsets
            // from the lowest, so that the kernels' one base pointer and
            // per-frame offsets still describe them. The plan checks each
            // frame's span; the memory between frames is never read.
            let mut at = Vec::with_capacity(layouts.len());
            for ((l, m), &c) in layouts.iter().zip(&pinned).zip(&copied) {
                let addr = match (c, m.and_then(|m| m.mapped()), staging.mapped) {
                    (false, Some(mapped), _) => mapped,
                    (true, _, Some(base)) => base + l.offset as u64,
                    _ => {
                        return Err(Error::Gpu(
                            "preprocessing: a frame has no device address".into(),
                        ))
                    }
                };
                at.push(addr);
            }
            let base = at.iter().copied().min().unwrap_or(0);
            let mut end = base + 1;
            for (l, &addr) in layouts.iter_mut().zip(&at) {
                l.offset = usize::try_from(addr - base)
                    .map_err(|_| Error::Gpu("preprocessing: frames too far apart".into()))?;
                end = end.max(addr + l.span() as u64);
            }
            let len = usize::try_from(end - base)
                .map_err(|_| Error::Gpu("preprocessing: frames too far apart".into()))?;
            return self.frames_at(base, len, layouts, None);
        }
        if staging.device.as_ref().is_none_or(|d| d.len() < total) {
            staging.device = None;
            staging.device = Some(
                self.stream
                    .alloc_zeros::<u8>(total.next_power_of_two())
                    .map_err(err("allocating the frame buffer"))?,
            );
        }
        let Some(dev) = staging.device.as_mut() else {
            return Err(Error::Gpu("preprocessing: no frame buffer".into()));
        };
        let (dst, _record) = dev.device_ptr(&self.stream);
        let staged = match staging.pinned.as_ref() {
            Some(p) => Some(p.as_slice().map_err(err("page-locked frame memory"))?),
            None => None,
        };
        for ((&(bytes, _, _), l), &c) in raw.iter().zip(&layouts).zip(&copied) {
            let src = match (c, staged) {
                (false, _) => bytes,
                (true, Some(host)) => &host[l.offset..l.offset + bytes.len()],
                (true, None) => return Err(Error::Gpu("preprocessing: no staging memory".into())),
            };
            if src.is_empty() {
                continue;
            }
            // SAFETY: `dev` holds at least `total` bytes, so the frame's
            // span at its offset; the page-locked source stays untouched
            // until the event `release` records after the batch (the
            // frame's memory is held in `staging` until then).
            unsafe {
                cudarc::driver::result::memcpy_htod_async(
                    dst + l.offset as u64,
                    src,
                    self.stream.cu_stream(),
                )
            }
            .map_err(err("uploading frames"))?;
        }
        self.frames_at(dst, total, layouts, None)
    }

    /// Copies the frames marked in `copied` into the staging's page-locked
    /// buffer (grown to `total`, mapped on an integrated GPU) at their
    /// offsets in `layouts`.
    fn stage_copies(
        &self,
        staging: &mut Staging,
        total: usize,
        raw: &[(&[u8], u32, u32)],
        layouts: &[FrameLayout],
        copied: &[bool],
    ) -> Result<()> {
        if staging.pinned.as_ref().is_none_or(|p| p.len() < total) {
            staging.mapped = None;
            staging.pinned = None;
            // Write-combined: the host only writes this buffer.
            // SAFETY: each frame's bytes are written below before the
            // device reads them.
            let (pinned, mapped) = unsafe {
                self.device.alloc_mapped(
                    total.next_power_of_two(),
                    cudarc::driver::sys::CU_MEMHOSTALLOC_WRITECOMBINED,
                )
            }
            .map_err(|e| Error::Gpu(format!("preprocessing: frame memory: {e}")))?;
            staging.pinned = Some(pinned);
            staging.mapped = mapped;
        }
        let Some(pinned) = staging.pinned.as_mut() else {
            return Err(Error::Gpu("preprocessing: no staging memory".into()));
        };
        let host = pinned
            .as_mut_slice()
            .map_err(err("page-locked frame memory"))?;
        for ((&(bytes, _, _), l), _) in raw.iter().zip(layouts).zip(copied).filter(|(_, &c)| c) {
            host[l.offset..l.offset + bytes.len()].copy_from_slice(bytes);
        }
        Ok(())
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

    /// Uploads interleaved RGB frames given as `(bytes, width, height)`
    /// into a buffer of their own.
    pub fn upload_raw(&self, frames: &[(&[u8], u32, u32)]) -> Result<DeviceFrames<'static>> {
        let layouts = pack(frames)?;
        let mut host = Vec::new();
        for &(bytes, _, _) in frames {
            host.extend_from_slice(bytes);
        }
        if host.is_empty() {
            host.push(0); // a zero-length upload is refused; no frame reads it
        }
        let bytes = self
            .stream
            .clone_htod(&host)
            .map_err(err("uploading frames"))?;
        let ptr = {
            let (ptr, _record) = bytes.device_ptr(&self.stream);
            ptr
        };
        self.frames_at(ptr, host.len(), layouts, Some(bytes))
    }

    /// Frames of `layouts` at device address `ptr` (`len` bytes), with the
    /// detector's tables uploaded for them.
    fn frames_at<'a>(
        &self,
        ptr: u64,
        len: usize,
        layouts: Vec<FrameLayout>,
        owned: Option<CudaSlice<u8>>,
    ) -> Result<DeviceFrames<'a>> {
        let plan = DetectorPlan::new(&layouts, len, DET_SIZE)?;
        let mut table = plan.frames.clone();
        if table.is_empty() {
            table.extend([0; 4]);
        }
        Ok(DeviceFrames {
            ptr,
            len,
            _owned: owned,
            table: self
                .stream
                .clone_htod(&table)
                .map_err(err("uploading the frame table"))?,
            tables: self.upload_tables(&plan.tables)?,
            layouts,
            plan,
            _staged: PhantomData,
        })
    }

    /// The stream every launch and copy goes to (to time them, or to order other work after them).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The detector's input for every uploaded frame: `n × 3 × 640 × 640`.
    pub fn detector(&self, frames: &DeviceFrames<'_>) -> Result<CudaSlice<f32>> {
        let mut out = self
            .stream
            .alloc_zeros::<f32>(frames.plan.output_len().max(1))
            .map_err(err("allocating the detector input"))?;
        self.detector_into(frames, &mut out)?;
        Ok(out)
    }

    /// Writes the detector's input for every uploaded frame into `out`
    /// (at least `n × 3 × 640 × 640`), in one launch: an engine's input buffer, say.
    pub fn detector_into(&self, frames: &DeviceFrames<'_>, out: &mut CudaSlice<f32>) -> Result<()> {
        self.detector_range_into(frames, 0..frames.len(), out)
    }

    /// [`GpuPreprocess::detector_into`] for the frames `range` only (one
    /// detector batch of a larger staged set), from the start of `out`.
    pub fn detector_range_into(
        &self,
        frames: &DeviceFrames<'_>,
        range: Range<usize>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let plan = &frames.plan;
        if range.start > range.end || range.end > plan.len() {
            return Err(Error::Gpu(format!(
                "preprocessing: frames {range:?} of a batch of {}",
                plan.len()
            )));
        }
        let n = range.len();
        let plane = 3 * (DET_SIZE * DET_SIZE) as usize;
        if out.len() < n * plane {
            return Err(Error::Gpu(format!(
                "preprocessing: the detector input of {n} frames needs {} floats, the buffer has {}",
                n * plane,
                out.len()
            )));
        }
        if n == 0 {
            return Ok(());
        }
        let side = DET_SIZE as i32;
        let grid = (
            DET_SIZE.div_ceil(BLOCK.0),
            DET_SIZE.div_ceil(BLOCK.1),
            n as u32,
        );
        let t = &frames.tables;
        let s = DET_SIZE as usize;
        let taps = 4; // SHITU_CUBIC_TAPS
        let first = range.start;
        let table = frames.table.slice(4 * first..);
        let (xofs, alpha) = (t.xofs.slice(s * first..), t.alpha.slice(taps * s * first..));
        let (yofs, beta) = (t.yofs.slice(s * first..), t.beta.slice(taps * s * first..));
        // SAFETY: the plan checked every frame to lie inside the staged
        // bytes at `frames.ptr` (alive for `frames`' lifetime) and holds 640
        // table entries (4 taps each) per frame, sliced here from the range's
        // first frame; writes n·3·640·640 floats, as checked above.
        unsafe {
            self.stream
                .launch_builder(&self.det)
                .arg(&frames.ptr)
                .arg(&table)
                .arg(&xofs)
                .arg(&alpha)
                .arg(&yofs)
                .arg(&beta)
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
        frames: &DeviceFrames<'_>,
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
        frames: &DeviceFrames<'_>,
        crops: &[(usize, CropBox)],
    ) -> Result<DeviceCrops> {
        let plan = RecogniserPlan::new(&frames.layouts, frames.len, crops, REC_SIZE)?;
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
            checked_for: (frames.layouts.clone(), frames.ptr, frames.len),
        })
    }

    /// Writes the recogniser's input for `crops` into `out` (at least
    /// `crops × 3 × 224 × 224`), in one launch.
    pub fn embedder_into(
        &self,
        frames: &DeviceFrames<'_>,
        crops: &DeviceCrops,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let plane = (REC_SIZE * REC_SIZE) as usize;
        if out.len() < crops.count * 3 * plane {
            return Err(Error::Gpu(format!("preprocessing: the recogniser input of {} crops needs {} floats, the buffer has {}", crops.count, crops.count * 3 * plane, out.len())));
        }
        if (
            &crops.checked_for.0[..],
            crops.checked_for.1,
            crops.checked_for.2,
        ) != (&frames.layouts[..], frames.ptr, frames.len)
        {
            return Err(Error::Gpu(
                "preprocessing: these crops were checked against other frames".into(),
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
                .arg(&frames.ptr)
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

    /// Copies a result back (for a host engine input, or a test).
    pub fn to_host(&self, data: &CudaSlice<f32>) -> Result<Vec<f32>> {
        let v = self.stream.clone_dtoh(data).map_err(err("copying back"))?;
        self.stream.synchronize().map_err(err("copying back"))?;
        Ok(v)
    }

    /// Copies the first `out.len()` floats of `data` into `out` and waits for them.
    pub fn copy_to_host(&self, data: &CudaSlice<f32>, out: &mut [f32]) -> Result<()> {
        let src = data.slice(..out.len());
        self.stream
            .memcpy_dtoh(&src, out)
            .map_err(err("copying back"))?;
        self.stream.synchronize().map_err(err("copying back"))
    }
}

/// Each decoded frame's bytes and size.
fn raw_frames<'f>(frames: &[&'f Frame]) -> Result<Vec<(&'f [u8], u32, u32)>> {
    frames
        .iter()
        .map(|f| Ok((super::bytes(&f.name, f.rgb())?, f.width, f.height)))
        .collect()
}

/// Where each frame goes in one buffer of packed frames, after checking
/// that its bytes are a whole RGB image.
fn pack(frames: &[(&[u8], u32, u32)]) -> Result<Vec<FrameLayout>> {
    let mut layouts = Vec::with_capacity(frames.len());
    let mut offset = 0;
    for &(bytes, w, h) in frames {
        let need = 3 * w as usize * h as usize;
        if bytes.len() != need {
            return Err(Error::Gpu(format!(
                "preprocessing: a {w}x{h} RGB frame needs {need} bytes, got {}",
                bytes.len()
            )));
        }
        layouts.push(FrameLayout {
            offset,
            width: w,
            height: h,
            pitch: 3 * w as usize,
        });
        offset += need;
    }
    Ok(layouts)
}

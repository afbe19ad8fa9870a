//! One CUDA context and one non-blocking stream per GPU, for the whole
//! process. Preprocessing and the GPU search open their device here, so
//! their work is ordered on one stream (and, once ONNX Runtime is handed
//! the same stream, with inference) instead of each stage making its own
//! context handle and queueing on the legacy default stream, which
//! synchronises with every other stream of the device.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaContext, CudaStream, PinnedHostSlice};

use super::{probe, NoGpu, Platform};

/// A GPU opened for the process.
#[derive(Debug)]
pub struct Device {
    ordinal: usize,
    platform: Platform,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
}

impl Device {
    /// The device `ordinal`, opened on first use and shared after that;
    /// says why on a box that has no such GPU.
    pub fn open(ordinal: usize) -> Result<Arc<Device>, NoGpu> {
        static OPEN: OnceLock<Mutex<HashMap<usize, Arc<Device>>>> = OnceLock::new();
        let mut open = OPEN
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(d) = open.get(&ordinal) {
            return Ok(d.clone());
        }
        let ordinal_i32 = i32::try_from(ordinal)
            .map_err(|_| NoGpu(format!("GPU ordinal {ordinal} is out of range")))?;
        // The probe checks the driver library first: cudarc panics without it.
        let platform = probe(ordinal_i32)?;
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| NoGpu(format!("CUDA device {ordinal}: opening it: {e}")))?;
        let stream = ctx
            .new_stream()
            .map_err(|e| NoGpu(format!("CUDA device {ordinal}: creating a stream: {e}")))?;
        let d = Arc::new(Device {
            ordinal,
            platform,
            ctx,
            stream,
        });
        open.insert(ordinal, d.clone());
        Ok(d)
    }

    /// The CUDA ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// What the probe found.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// The context (the device's primary context).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every stage's work on this device goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// `len` bytes of page-locked host memory in this device's context,
    /// mapped into its address space (`DEVICEMAP`, plus `flags`), with the
    /// device address an integrated GPU reads it at in place (`None` on a
    /// discrete GPU, which gets it by DMA). The error says which step failed.
    ///
    /// # Safety
    /// The memory is not initialised: write it before anything reads it.
    pub unsafe fn alloc_mapped(
        &self,
        len: usize,
        flags: u32,
    ) -> Result<(PinnedHostSlice<u8>, Option<u64>), String> {
        // SAFETY: the caller writes the memory before reading it.
        let mut mem = unsafe {
            self.ctx.alloc_pinned_with_flags::<u8>(
                len,
                cudarc::driver::sys::CU_MEMHOSTALLOC_DEVICEMAP | flags,
            )
        }
        .map_err(|e| format!("allocating {len} bytes of page-locked memory: {e}"))?;
        if !self.platform.integrated {
            return Ok((mem, None));
        }
        let host = mem
            .as_mut_ptr()
            .map_err(|e| format!("page-locked memory: {e}"))?;
        let mut dptr = 0;
        // SAFETY: `host` is a live page-locked allocation made with
        // DEVICEMAP in this device's context.
        let r =
            unsafe { cudarc::driver::sys::cuMemHostGetDevicePointer_v2(&mut dptr, host.cast(), 0) };
        r.result()
            .map_err(|e| format!("mapping page-locked memory: {e}"))?;
        Ok((mem, Some(dptr)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_device_per_ordinal_or_a_reason() {
        match (Device::open(0), Device::open(0)) {
            (Ok(a), Ok(b)) => assert!(Arc::ptr_eq(&a, &b), "opened twice"),
            (Err(NoGpu(why)), Err(_)) => {
                use std::io::Write as _;
                let _ = writeln!(std::io::stderr(), "skipped: no CUDA device ({why})");
            }
            _ => panic!("the same ordinal opened once and failed once"),
        }
    }
}

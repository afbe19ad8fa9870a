//! The recogniser's output normalised on the GPU, in place, so that the
//! features go to the GPU search without a round trip through the host.
//! The kernel is `l2norm.cu`, whose host build is [`super::l2_normalize`].

use std::sync::Arc;

use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};

use crate::error::{Error, Result};
use crate::gpu::{self, DeviceRows};

/// `l2_normalize_rows` loaded on one GPU.
pub struct L2Kernel {
    device: Arc<gpu::Device>,
    f: CudaFunction,
}

impl std::fmt::Debug for L2Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "L2Kernel(GPU {})", self.device.ordinal())
    }
}

impl L2Kernel {
    /// Compiles and loads the kernel on `device`.
    pub fn new(device: Arc<gpu::Device>) -> Result<L2Kernel> {
        let fail =
            |what: &str, e: String| Error::Gpu(format!("feature normalisation: {what}: {e}"));
        let ptx = gpu::nvrtc::compile(&gpu::nvrtc::L2NORM, device.platform().compute_capability)
            .map_err(|e| fail("compiling", e))?;
        let module = device
            .context()
            .load_module(ptx)
            .map_err(|e| fail("loading", e.to_string()))?;
        let f = module
            .load_function("l2_normalize_rows")
            .map_err(|e| fail("l2_normalize_rows", e.to_string()))?;
        Ok(L2Kernel { device, f })
    }

    /// Normalises `rows` in place, on the device's stream.
    pub fn apply(&self, rows: &DeviceRows<'_>) -> Result<()> {
        if rows.ordinal() != self.device.ordinal() {
            return Err(Error::Gpu(format!(
                "feature normalisation: rows on GPU {} given to the kernel of GPU {}",
                rows.ordinal(),
                self.device.ordinal()
            )));
        }
        if rows.rows() == 0 {
            return Ok(());
        }
        let (ptr, n, dim) = (rows.ptr(), rows.rows() as i32, rows.dim() as i32);
        let threads = 64u32;
        // SAFETY: `rows` addresses rows·dim floats on this device (its
        // constructor's contract); one thread per row reads and writes its own.
        unsafe {
            self.device
                .stream()
                .launch_builder(&self.f)
                .arg(&ptr)
                .arg(&n)
                .arg(&dim)
                .launch(LaunchConfig {
                    grid_dim: ((n as u32).div_ceil(threads), 1, 1),
                    block_dim: (threads, 1, 1),
                    shared_mem_bytes: 0,
                })
        }
        .map_err(|e| Error::Gpu(format!("feature normalisation: launch: {e}")))?;
        Ok(())
    }
}

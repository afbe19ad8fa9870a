//! The GPU platform the stages share.
//!
//! - [`probe`]: what GPU and TensorRT this box has, read at run time.
//! - [`Device`]: one context and one non-blocking stream per GPU, shared
//!   by every stage.
//! - [`FramePool`]: the memory frames are decoded into, page-locked where
//!   a GPU reads them.
//! - [`nvrtc`]: every CUDA source of the crate and the options NVRTC
//!   compiles them with, on the device and in CI.
//!
//! A TensorRT engine is only valid for the GPU model and TensorRT release
//! that built it, so both are part of the engine cache key. Both are probed
//! through `dlopen` (CUDA driver via `cudarc`'s dynamic loading, TensorRT's
//! `libnvinfer`), so the same binary runs on boxes without either.

use std::fmt;
use std::marker::PhantomData;

pub mod device;
pub mod frames;
pub mod nvrtc;

pub use device::Device;
pub use frames::{FrameMemory, FramePool};

/// The GPU and TensorRT release an engine is built for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// The driver's device name, e.g. "Orin (nvgpu)" or "NVIDIA H100 80GB HBM3".
    pub gpu: String,
    /// Compute capability, major and minor.
    pub compute_capability: (i32, i32),
    /// Streaming multiprocessors: every Orin module reports its name as
    /// "Orin", but an engine tuned on a 16-SM AGX is not the one for a 4-SM Nano.
    pub sm_count: i32,
    /// The CUDA driver's version (`cuDriverGetVersion`, e.g. 12060).
    pub cuda_driver: i32,
    /// TensorRT release, e.g. "10.3.0"; `None` where libnvinfer is not installed.
    pub tensorrt: Option<String>,
    /// An integrated GPU sharing the host's memory (Jetson): page-locked
    /// host memory is read in place instead of being copied.
    pub integrated: bool,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (maj, min) = self.compute_capability;
        write!(
            f,
            "{} (sm_{maj}{min}, {} SMs), CUDA driver {}.{}, TensorRT {}",
            self.gpu,
            self.sm_count,
            self.cuda_driver / 1000,
            (self.cuda_driver % 1000) / 10,
            self.tensorrt.as_deref().unwrap_or("not installed")
        )
    }
}

/// Rows of `dim` floats in a GPU's memory: a stage's output that the next
/// stage reads where it is. `'a` is the buffer that holds them.
#[derive(Debug, Clone, Copy)]
pub struct DeviceRows<'a> {
    ptr: u64,
    rows: usize,
    dim: usize,
    ordinal: usize,
    _buf: PhantomData<&'a ()>,
}

impl DeviceRows<'_> {
    /// # Safety
    /// `ptr` must address `rows × dim` floats on device `ordinal`, written
    /// by work queued on that device's stream ([`Device::stream`]), and
    /// stay valid for `'a`.
    pub unsafe fn new(ptr: u64, rows: usize, dim: usize, ordinal: usize) -> Self {
        DeviceRows {
            ptr,
            rows,
            dim,
            ordinal,
            _buf: PhantomData,
        }
    }

    /// The device address of the first float.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// How many rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Floats per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The device.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Copies the rows to the host, after the work queued before on the device's stream.
    pub fn to_host(&self) -> Result<Vec<f32>, String> {
        let device = Device::open(self.ordinal).map_err(|e| e.0)?;
        let stream = device.stream();
        let mut out = vec![0f32; self.rows * self.dim];
        if out.is_empty() {
            return Ok(out);
        }
        // SAFETY: `new`'s contract: `ptr` holds rows·dim floats on this
        // device, written on this stream, which orders the copy after them.
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(&mut out, self.ptr, stream.cu_stream())
        }
        .and_then(|()| stream.synchronize())
        .map_err(|e| {
            format!(
                "copying {} rows back from GPU {}: {e}",
                self.rows, self.ordinal
            )
        })?;
        Ok(out)
    }
}

/// Why no GPU could be probed; said to the user as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoGpu(pub String);

impl fmt::Display for NoGpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether the CUDA driver library can be opened at all. `cudarc` panics on
/// first use when it cannot, so every entry into CUDA checks this first.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library by name.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Probes GPU `ordinal` and the installed TensorRT.
pub fn probe(ordinal: i32) -> Result<Platform, NoGpu> {
    use cudarc::driver::result::{self, device};
    use cudarc::driver::sys::CUdevice_attribute as A;

    if !driver_present() {
        return Err(NoGpu("no CUDA driver (libcuda.so not found): this box has no NVIDIA GPU, or its driver is not installed".into()));
    }
    result::init().map_err(|e| NoGpu(format!("the CUDA driver did not initialise: {e}")))?;
    let count =
        device::get_count().map_err(|e| NoGpu(format!("cannot count CUDA devices: {e}")))?;
    if ordinal < 0 || ordinal >= count {
        return Err(NoGpu(format!(
            "gpu.device_id = {ordinal}, but this box has {count} CUDA device(s)"
        )));
    }
    let dev = device::get(ordinal).map_err(|e| NoGpu(format!("CUDA device {ordinal}: {e}")))?;
    let gpu = device::get_name(dev).map_err(|e| NoGpu(format!("CUDA device {ordinal}: {e}")))?;
    // SAFETY: `dev` came from cuDeviceGet above.
    let cc = unsafe {
        (
            device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
            device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
        )
    };
    let compute_capability = match cc {
        (Ok(maj), Ok(min)) => (maj, min),
        (Err(e), _) | (_, Err(e)) => {
            return Err(NoGpu(format!(
                "CUDA device {ordinal}: compute capability: {e}"
            )))
        }
    };
    // SAFETY: as above.
    let sm_count =
        unsafe { device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT) }
            .map_err(|e| NoGpu(format!("CUDA device {ordinal}: multiprocessor count: {e}")))?;
    // SAFETY: as above.
    let integrated = unsafe { device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_INTEGRATED) }
        .map_err(|e| NoGpu(format!("CUDA device {ordinal}: integrated: {e}")))?
        != 0;
    let mut cuda_driver = 0;
    // SAFETY: cuDriverGetVersion writes one int.
    let rc = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut cuda_driver) };
    if rc != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        return Err(NoGpu(format!("the CUDA driver's version: {rc:?}")));
    }
    Ok(Platform {
        gpu,
        compute_capability,
        sm_count,
        cuda_driver,
        tensorrt: tensorrt_version(),
        integrated,
    })
}

/// The TensorRT libraries tried, newest first: 11 (CUDA 13), 10 (JetPack 6,
/// x86_64 CUDA 12), 8 (JetPack 5), then an unversioned dev link.
pub const TENSORRT_LIBRARIES: [&str; 4] = [
    "libnvinfer.so.11",
    "libnvinfer.so.10",
    "libnvinfer.so.8",
    "libnvinfer.so",
];

/// The TensorRT release `libnvinfer` reports, if it can be opened.
pub fn tensorrt_version() -> Option<String> {
    for name in TENSORRT_LIBRARIES {
        // SAFETY: libnvinfer's initialisers only register its plugins; the
        // symbol is the documented `int32_t getInferLibVersion()`.
        let version = unsafe {
            let Ok(lib) = libloading::Library::new(name) else {
                continue;
            };
            let Ok(get) = lib.get::<unsafe extern "C" fn() -> i32>(b"getInferLibVersion\0") else {
                continue;
            };
            get()
        };
        return Some(decode_trt_version(version));
    }
    None
}

/// `getInferLibVersion` packs the release as MAJOR*1000+MINOR*100+PATCH up
/// to TensorRT 9 and as MAJOR*10000+MINOR*100+PATCH from TensorRT 10 on.
fn decode_trt_version(v: i32) -> String {
    if v >= 100_000 {
        format!("{}.{}.{}", v / 10_000, (v / 100) % 100, v % 100)
    } else {
        format!("{}.{}.{}", v / 1000, (v / 100) % 10, v % 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Says why a test did not run, past the test harness's output capture
    /// (it only captures `print!`/`eprint!`), so `cargo test` shows it.
    macro_rules! skip {
        ($($arg:tt)*) => {{
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), $($arg)*);
        }};
    }

    #[test]
    fn tensorrt_versions_decode_in_both_packings() {
        assert_eq!(decode_trt_version(8601), "8.6.1");
        assert_eq!(decode_trt_version(8502), "8.5.2");
        assert_eq!(decode_trt_version(100300), "10.3.0");
        assert_eq!(decode_trt_version(101300), "10.13.0");
    }

    #[test]
    fn every_supported_tensorrt_major_is_tried_newest_first() {
        // TensorRT 11 is the CUDA 13 release: a box with only it must not
        // read as "TensorRT not installed".
        let majors: Vec<u32> = TENSORRT_LIBRARIES
            .iter()
            .filter_map(|n| n.rsplit('.').next()?.parse().ok())
            .collect();
        assert_eq!(majors, [11, 10, 8]);
    }

    #[test]
    fn probing_never_panics() {
        // Without a GPU this must be a clean error, not cudarc's panic.
        match probe(0) {
            Ok(p) => assert!(!p.gpu.is_empty()),
            Err(NoGpu(why)) => {
                assert!(!why.is_empty());
                skip!("skipped: no CUDA device ({why})");
            }
        }
    }
}

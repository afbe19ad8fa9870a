//! Every CUDA source of the crate, and the one set of options NVRTC
//! compiles them with. The daemon compiles at start-up for the device it
//! runs on; CI compiles the same sources with the same options for each
//! supported architecture and CUDA major (tests/it/nvrtc.rs), with NVRTC
//! from NVIDIA's PyPI wheels, so a kernel that does not compile fails CI
//! and not a box on the line.

use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};

/// A CUDA source file of the crate, as compiled into the binary.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    /// Its path under `src/`, also the program name NVRTC reports errors with.
    pub name: &'static str,
    /// The text.
    pub code: &'static str,
}

/// The preprocessing kernels (also compiled for the host by build.rs).
pub const PREPROCESS: Source = Source {
    name: "preprocess/kernels.cu",
    code: include_str!("../preprocess/kernels.cu"),
};

/// The GPU search's top-k kernels (and the fp32-to-fp16 query conversion).
pub const TOPK: Source = Source {
    name: "search/topk.cu",
    code: include_str!("../search/topk.cu"),
};

/// The L2 normalisation of the recogniser's output rows (also compiled for
/// the host by build.rs).
pub const L2NORM: Source = Source {
    name: "embed/l2norm.cu",
    code: include_str!("../embed/l2norm.cu"),
};

/// Every CUDA source, for the compile check.
pub const ALL: [Source; 3] = [PREPROCESS, TOPK, L2NORM];

/// The GPUs the daemon is built for: Xavier (JetPack 5, CUDA 11/12), Orin
/// (JetPack 6), and the discrete test cards. CUDA 13 no longer compiles for
/// sm_72.
pub const ARCHITECTURES: [(i32, i32); 3] = [(7, 2), (8, 7), (9, 0)];

/// NVRTC's options for a device of compute capability `(major, minor)`.
///
/// `--fmad=false`: the preprocessing kernels must round every float product
/// and sum as OpenCV's SSE code does (a fused multiply-add rounds once
/// instead of twice), or the GPU's pixels would drift from the reference's.
pub fn options((major, minor): (i32, i32)) -> Vec<String> {
    vec![
        format!("--gpu-architecture=compute_{major}{minor}"),
        "--fmad=false".into(),
        "--std=c++17".into(),
    ]
}

/// Compiles `source` to PTX for a device of compute capability `cc`; the
/// error carries NVRTC's log.
pub fn compile(source: &Source, cc: (i32, i32)) -> Result<Ptx, String> {
    let opts = CompileOptions {
        options: options(cc),
        name: Some(source.name.into()),
        ..Default::default()
    };
    compile_ptx_with_opts(source.code, opts).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => format!(
            "NVRTC could not compile {} with {}:\n{}",
            source.name,
            options(cc).join(" "),
            log.to_string_lossy()
        ),
        other => format!("NVRTC could not compile {}: {other:?}", source.name),
    })
}

//! Every CUDA source of the crate compiles, with exactly the options the
//! daemon passes (`shitu_edge::gpu::nvrtc::options`), for every supported
//! architecture, with NVRTC of CUDA 12 and of CUDA 13. No GPU is needed:
//! NVRTC comes from NVIDIA's PyPI wheels (scripts/fetch-nvrtc.sh, run by
//! scripts/setup.sh into .deps/nvrtc/<major>/lib; `SHITU_NVRTC_DIR_<major>`
//! points elsewhere). A compile error fails with NVRTC's log.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::PathBuf;

use libloading::Library;
use shitu_edge::gpu::nvrtc::{options, ALL, ARCHITECTURES, L2NORM, PREPROCESS, TOPK};

type Program = *mut c_void;

/// The few NVRTC entry points a compile needs, from one library file.
struct Nvrtc {
    _lib: Library,
    version: (c_int, c_int),
    create: unsafe extern "C" fn(
        *mut Program,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> c_int,
    compile: unsafe extern "C" fn(Program, c_int, *const *const c_char) -> c_int,
    log_size: unsafe extern "C" fn(Program, *mut usize) -> c_int,
    log: unsafe extern "C" fn(Program, *mut c_char) -> c_int,
    ptx_size: unsafe extern "C" fn(Program, *mut usize) -> c_int,
    ptx: unsafe extern "C" fn(Program, *mut c_char) -> c_int,
    destroy: unsafe extern "C" fn(*mut Program) -> c_int,
}

impl Nvrtc {
    fn open(major: u32) -> Nvrtc {
        let dir = std::env::var_os(format!("SHITU_NVRTC_DIR_{major}"))
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(".deps/nvrtc/{major}/lib"))
            });
        let path = dir.join(format!("libnvrtc.so.{major}"));
        assert!(
            path.exists(),
            "{} is missing: run scripts/setup.sh (or scripts/fetch-nvrtc.sh {major} {})",
            path.display(),
            dir.parent().unwrap_or(&dir).display()
        );
        // SAFETY: NVRTC's initialisers have no side effects beyond the
        // library; every symbol below has the documented C signature.
        unsafe {
            let lib = Library::new(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            macro_rules! sym {
                ($name:literal) => {
                    *lib.get(concat!($name, "\0").as_bytes())
                        .unwrap_or_else(|e| panic!("{}: {}: {e}", path.display(), $name))
                };
            }
            let version_fn: unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int =
                sym!("nvrtcVersion");
            let mut version = (0, 0);
            assert_eq!(version_fn(&mut version.0, &mut version.1), 0);
            Nvrtc {
                version,
                create: sym!("nvrtcCreateProgram"),
                compile: sym!("nvrtcCompileProgram"),
                log_size: sym!("nvrtcGetProgramLogSize"),
                log: sym!("nvrtcGetProgramLog"),
                ptx_size: sym!("nvrtcGetPTXSize"),
                ptx: sym!("nvrtcGetPTX"),
                destroy: sym!("nvrtcDestroyProgram"),
                _lib: lib,
            }
        }
    }

    /// PTX, or NVRTC's log.
    fn compile(&self, name: &str, code: &str, opts: &[String]) -> Result<String, String> {
        let code = CString::new(code).unwrap();
        let name = CString::new(name).unwrap();
        let opts: Vec<CString> = opts
            .iter()
            .map(|o| CString::new(o.as_str()).unwrap())
            .collect();
        let ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
        // SAFETY: the strings outlive the program; buffers are sized by NVRTC's own counts.
        unsafe {
            let mut prog: Program = std::ptr::null_mut();
            let rc = (self.create)(
                &mut prog,
                code.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            );
            assert_eq!(rc, 0, "nvrtcCreateProgram: {rc}");
            let rc = (self.compile)(prog, ptrs.len() as c_int, ptrs.as_ptr());
            let text =
                |size: unsafe extern "C" fn(Program, *mut usize) -> c_int,
                 get: unsafe extern "C" fn(Program, *mut c_char) -> c_int| {
                    let mut n = 0usize;
                    size(prog, &mut n);
                    let mut buf = vec![0u8; n.max(1)];
                    get(prog, buf.as_mut_ptr() as *mut c_char);
                    CStr::from_bytes_until_nul(&buf)
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default()
                };
            let out = if rc == 0 {
                Ok(text(self.ptx_size, self.ptx))
            } else {
                Err(format!(
                    "NVRTC error {rc}:\n{}",
                    text(self.log_size, self.log)
                ))
            };
            (self.destroy)(&mut prog);
            out
        }
    }
}

/// The kernels the daemon loads from each source by name.
fn entries(source: &str) -> &'static [&'static str] {
    match source {
        s if s == PREPROCESS.name => &["det_preprocess", "rec_preprocess"],
        s if s == TOPK.name => &["topk_rows", "topk_merge", "f32_to_f16"],
        s if s == L2NORM.name => &["l2_normalize_rows"],
        other => panic!("{other}: list the kernels the daemon loads from it"),
    }
}

#[test]
fn every_cuda_source_compiles_for_every_architecture_with_cuda_12_and_13() {
    let mut failures = Vec::new();
    let mut compiled = 0;
    for major in [12, 13] {
        let nvrtc = Nvrtc::open(major);
        assert_eq!(
            nvrtc.version.0, major as c_int,
            "the CUDA {major} library reports {:?}",
            nvrtc.version
        );
        for cc in ARCHITECTURES {
            // CUDA 13 dropped the Volta generation, Xavier's sm_72 with it;
            // Xavier runs JetPack 5 (CUDA 11.4, or 12 through the compat package).
            if major >= 13 && cc < (7, 5) {
                let refused = nvrtc.compile(PREPROCESS.name, PREPROCESS.code, &options(cc));
                assert!(
                    refused.is_err(),
                    "CUDA {major} was expected to refuse sm_{}{}",
                    cc.0,
                    cc.1
                );
                continue;
            }
            for src in ALL {
                let opts = options(cc);
                match nvrtc.compile(src.name, src.code, &opts) {
                    Ok(ptx) => {
                        let target = format!(".target sm_{}{}", cc.0, cc.1);
                        assert!(
                            ptx.contains(&target),
                            "{}: no '{target}' in the PTX",
                            src.name
                        );
                        // --fmad=false holds: a fused multiply-add would round
                        // the preprocessing's float sums differently from
                        // OpenCV, and the normalisation's from the host's.
                        if src.name == PREPROCESS.name || src.name == L2NORM.name {
                            assert!(
                                !ptx.contains("fma.rn.f"),
                                "{}: the PTX fuses multiply-adds",
                                src.name
                            );
                        }
                        for k in entries(src.name) {
                            assert!(
                                ptx.contains(&format!(".entry {k}")),
                                "{}: no kernel {k}",
                                src.name
                            );
                        }
                        compiled += 1;
                    }
                    Err(log) => failures.push(format!(
                        "CUDA {}.{} NVRTC, sm_{}{}, {} with `{}`: {log}",
                        nvrtc.version.0,
                        nvrtc.version.1,
                        cc.0,
                        cc.1,
                        src.name,
                        opts.join(" ")
                    )),
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    eprintln!("{compiled} compiles: every CUDA source, every architecture, CUDA 12 and 13");
}

#[test]
fn a_kernel_that_does_not_compile_fails_with_nvrtcs_log() {
    let nvrtc = Nvrtc::open(12);
    let err = nvrtc
        .compile(
            "broken.cu",
            "extern \"C\" __global__ void k(float* x) { x[0] = INFINITY; }",
            &options((8, 7)),
        )
        .unwrap_err();
    assert!(
        err.contains("broken.cu") && err.contains("INFINITY"),
        "{err}"
    );
}

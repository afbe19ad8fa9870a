//! Finding and loading `libonnxruntime` once per process.
//!
//! Search order: `ORT_DYLIB_PATH`, then `engine.ort_library` from the config,
//! then the project-local copy that `scripts/setup.sh` installs under
//! `.deps/onnxruntime/lib/` (next to the working directory or above the
//! executable), then the system's library directories.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

use crate::error::{Error, Result};

/// The oldest ONNX Runtime this build accepts (`ort`'s API level).
pub const MIN_ORT_VERSION: &str = "1.17";

static ENV: OnceLock<(Environment, PathBuf)> = OnceLock::new();

/// Where `libonnxruntime` was looked for, in order, with the first that exists.
pub fn candidates(configured: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        out.push(PathBuf::from(p));
    }
    if let Some(p) = configured {
        out.push(p.to_path_buf());
    }
    let local = Path::new(".deps/onnxruntime/lib/libonnxruntime.so");
    if let Ok(cwd) = std::env::current_dir() {
        out.push(cwd.join(local));
    }
    if let Ok(exe) = std::env::current_exe() {
        // target/release/shitud → the checkout's root two or three levels up.
        for dir in exe.ancestors().skip(1).take(4) {
            out.push(dir.join(local));
        }
    }
    for sys in [
        "/usr/lib/libonnxruntime.so",
        "/usr/local/lib/libonnxruntime.so",
        "/usr/lib/x86_64-linux-gnu/libonnxruntime.so",
        "/usr/lib/aarch64-linux-gnu/libonnxruntime.so",
    ] {
        out.push(PathBuf::from(sys));
    }
    out.dedup();
    out
}

/// The loaded ONNX Runtime's build, e.g. `git-branch=rel-1.31.1,
/// git-commit-id=9a4c8f0`: what a TensorRT engine cache entry was built
/// with. Call after [`environment`].
pub fn build_id() -> String {
    build_id_of(ort::info())
}

fn build_id_of(info: &str) -> String {
    let parts: Vec<&str> = info
        .split([',', ':'])
        .map(str::trim)
        .filter(|p| p.starts_with("git-branch=") || p.starts_with("git-commit-id="))
        .collect();
    if parts.is_empty() {
        info.trim().to_string()
    } else {
        parts.join(",")
    }
}

/// Loads ONNX Runtime (first call only) and returns the process's environment
/// and the library it came from.
pub fn environment(configured: Option<&Path>) -> Result<&'static (Environment, PathBuf)> {
    if let Some(env) = ENV.get() {
        return Ok(env);
    }
    let searched = candidates(configured);
    let explicit = std::env::var_os("ORT_DYLIB_PATH").is_some() || configured.is_some();
    let found = if explicit {
        // A path the user named must exist; silently trying others would hide the typo.
        let first = searched[0].clone();
        if !first.exists() {
            return Err(Error::Runtime(format!(
                "{} does not exist (named by {}). Run scripts/setup.sh to install the runtime, or point ORT_DYLIB_PATH at libonnxruntime.so",
                first.display(),
                if std::env::var_os("ORT_DYLIB_PATH").is_some() { "ORT_DYLIB_PATH" } else { "engine.ort_library" }
            )));
        }
        first
    } else {
        searched.iter().find(|p| p.exists()).cloned().ok_or_else(|| {
            Error::Runtime(format!(
                "libonnxruntime.so not found. Looked in:\n  {}\nRun scripts/setup.sh (installs onnxruntime from PyPI into .deps/), or set ORT_DYLIB_PATH or engine.ort_library",
                searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join("\n  ")
            ))
        })?
    };
    let builder = ort::init_from(&found).map_err(|e| {
        Error::Runtime(format!(
            "cannot use {}: {e}. shitu-edge needs ONNX Runtime {MIN_ORT_VERSION} or newer",
            found.display()
        ))
    })?;
    let env = builder
        .with_name("shitu-edge")
        .build()
        .map_err(|e| Error::Runtime(format!("cannot start ONNX Runtime: {e}")))?;
    tracing::info!(library = %found.display(), "loaded ONNX Runtime");
    if let Err(e) = register_shared_cpu_arena(&env) {
        // Sessions then fall back to an arena each: more memory, same answers.
        tracing::warn!("could not register the shared CPU arena: {e}");
    }
    Ok(ENV.get_or_init(|| (env, found)))
}

/// Registers one CPU arena on the environment for every session that opts in
/// (`session.use_env_allocators`).
///
/// The detector and the recogniser run one after the other, so a shared
/// arena peaks at the larger of the two instead of their sum, and growing by
/// what is requested (not to the next power of two) keeps it near that peak.
/// Measured on the demo models: see docs/BENCHMARKS.md.
fn register_shared_cpu_arena(env: &Environment) -> std::result::Result<(), String> {
    use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
    use ort::AsPointer;

    let api = ort::api();
    let check = |status: ort::sys::OrtStatusPtr| -> std::result::Result<(), String> {
        if status.0.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null status comes from the runtime and is released once, here.
        unsafe {
            let msg = std::ffi::CStr::from_ptr((api.GetErrorMessage)(status.0))
                .to_string_lossy()
                .into_owned();
            (api.ReleaseStatus)(status.0);
            Err(msg)
        }
    };
    let info = MemoryInfo::new(
        AllocationDevice::CPU,
        0,
        AllocatorType::Arena,
        MemoryType::Default,
    )
    .map_err(|e| e.to_string())?;
    let keys = [c"arena_extend_strategy".as_ptr()];
    let values = [1usize]; // kSameAsRequested
    let mut cfg: *mut ort::sys::OrtArenaCfg = std::ptr::null_mut();
    // SAFETY: the key/value arrays outlive the call; cfg is released below.
    unsafe {
        check((api.CreateArenaCfgV2)(
            keys.as_ptr(),
            values.as_ptr(),
            keys.len(),
            &mut cfg,
        ))?;
        let registered = check((api.CreateAndRegisterAllocator)(
            env.ptr().cast_mut(),
            info.ptr(),
            cfg,
        ));
        (api.ReleaseArenaCfg)(cfg);
        registered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_id_is_the_release_branch_and_commit() {
        let info = "ORT Build Info: git-branch=rel-1.31.1, git-commit-id=9a4c8f0, build type=Release, cmake cxx flags: -O3";
        assert_eq!(
            build_id_of(info),
            "git-branch=rel-1.31.1,git-commit-id=9a4c8f0"
        );
        assert_eq!(build_id_of(" custom build "), "custom build");
    }
}

//! The third stage: one [`Engine`] runs an ONNX model on the execution
//! provider the config names (CPU, CUDA or TensorRT), with a dynamic batch.
//!
//! Stages describe the inputs they need as [`TensorSpec`]s; the engine
//! checks the model against them when it is opened, so a wrong model fails
//! at start-up with both shapes in the message, not at the first frame.

pub mod engine_cache;
pub mod providers;
pub mod runtime;
pub mod tensor;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::ArrayViewD;
use ort::session::Session;
use ort::value::TensorRef;
use sha2::{Digest, Sha256};

use std::time::Duration;

pub use engine_cache::BatchProfile;
pub use tensor::{Arena, OutputArena, Place};

use crate::config::{EngineSettings, Provider};
use crate::error::{Error, Result};
use crate::gpu;

/// Name, element type and shape of a model input or output; `-1` marks a dynamic dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// Name in the graph.
    pub name: String,
    /// Dimensions, `-1` where dynamic.
    pub shape: Vec<i64>,
    /// Element type, as ONNX Runtime names it.
    pub dtype: String,
}

impl std::fmt::Display for TensorSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> = self
            .shape
            .iter()
            .map(|d| if *d < 0 { "?".into() } else { d.to_string() })
            .collect();
        write!(f, "{} {}[{}]", self.name, self.dtype, dims.join(","))
    }
}

/// Formats a list of specs for error messages.
pub fn describe(specs: &[TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One engine input.
pub enum Feed<'a> {
    /// A host array, read in place.
    Array(ArrayViewD<'a, f32>),
    /// The leading floats of an arena, with this shape, read where they live.
    Arena(&'a mut Arena, Vec<usize>),
}

/// An output tensor copied out of the runtime.
#[derive(Debug, Clone)]
pub struct Output {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// Where a TensorRT engine came from.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheUse {
    /// The cache entry ([`engine_cache::CacheKey::id`]).
    pub id: String,
    /// Its folder.
    pub dir: PathBuf,
    /// Built by this open (`false`: reused from an earlier one).
    pub built: bool,
    /// How long its build took, now or then.
    pub build_seconds: f64,
}

/// One ONNX model loaded on one execution provider.
pub struct Engine {
    session: Session,
    path: PathBuf,
    provider: Provider,
    model_sha256: String,
    cache_use: Option<CacheUse>,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    /// The GPU whose stream the CUDA or TensorRT provider runs on; `None` on the CPU provider.
    device: Option<Arc<gpu::Device>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("path", &self.path)
            .field("provider", &self.provider)
            .finish()
    }
}

impl Engine {
    /// Loads the model at `path` for `role` ("detector", "embedder") on the
    /// configured provider; `profile` is the batch range TensorRT builds for.
    ///
    /// With `engine.fallback`, a provider that cannot start hands over to the
    /// next one down (tensorrt → cuda → cpu), with an error in the log that
    /// says why; without it, the first failure is the error.
    /// `device_id` is the GPU (`gpu.device_id`) the CUDA and TensorRT providers run on.
    pub fn open(
        role: &'static str,
        path: &Path,
        settings: &EngineSettings,
        device_id: i32,
        profile: BatchProfile,
    ) -> Result<Engine> {
        if !path.is_file() {
            return Err(Error::model(path, "file not found"));
        }
        let ort = runtime::environment(settings.ort_library.as_deref())?;
        let (env, library) = ort;
        // Hashed once here: the engine cache key, the gallery's model guard and
        // the daemon's versions all need it.
        let model_sha256 = sha256_file(path)?;
        let chain = fallback_chain(settings.provider, settings.fallback);
        let mut failures = Vec::new();
        for (i, &provider) in chain.iter().enumerate() {
            let device = match provider {
                Provider::Cpu => None,
                Provider::Cuda | Provider::Tensorrt => shared_device(device_id),
            };
            let stream = device.as_deref().map(providers::Stream::of);
            let opened = match provider {
                Provider::Cpu => session(path, env, settings, Vec::new()).map(|s| (s, None)),
                Provider::Cuda => {
                    cuda_session(path, env, library, settings, device_id, stream).map(|s| (s, None))
                }
                Provider::Tensorrt => tensorrt_session(
                    role,
                    path,
                    &model_sha256,
                    ort,
                    settings,
                    (device_id, stream),
                    profile,
                )
                .map(|(s, c)| (s, Some(c))),
            };
            match opened {
                Ok((session, cache_use)) => {
                    if i > 0 {
                        tracing::error!(
                            model = role,
                            "running on {provider}, NOT the configured {} (engine.fallback = true)",
                            settings.provider
                        );
                    }
                    let (inputs, outputs) = specs(&session);
                    tracing::debug!(model = %path.display(), ?provider, inputs = %describe(&inputs), "model loaded");
                    return Ok(Engine {
                        session,
                        path: path.to_path_buf(),
                        provider,
                        model_sha256,
                        cache_use,
                        inputs,
                        outputs,
                        device,
                    });
                }
                Err(e) => {
                    let why = e.to_string();
                    if let Some(next) = chain.get(i + 1) {
                        tracing::error!(
                            model = role,
                            "{provider} cannot run the {role}: {why}; falling back to {next}"
                        );
                    }
                    failures.push(format!("{provider}: {why}"));
                }
            }
        }
        let hint = if settings.fallback || settings.provider == Provider::Cpu {
            ""
        } else {
            " (engine.fallback = true would run it on the next provider down instead)"
        };
        Err(Error::model(
            path,
            format!(
                "no execution provider could load it{hint}: {}",
                failures.join("; ")
            ),
        ))
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The execution provider that actually runs the model (after any fallback).
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Hex sha256 of the model file.
    pub fn model_sha256(&self) -> &str {
        &self.model_sha256
    }

    /// The TensorRT engine cache entry in use (TensorRT only).
    pub fn cache_use(&self) -> Option<&CacheUse> {
        self.cache_use.as_ref()
    }

    /// The graph's inputs.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// The graph's outputs.
    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// The GPU whose stream inference runs on (CUDA and TensorRT providers
    /// with the device open); device [`Arena`]s of this device are read in place.
    pub fn device(&self) -> Option<&Arc<gpu::Device>> {
        self.device.as_ref()
    }

    /// Where this engine can read an input without a copy: on its GPU, or the host.
    pub fn input_place(&self) -> Place {
        self.device
            .as_ref()
            .map_or(Place::Host, |d| Place::Cuda(d.ordinal()))
    }

    /// A preallocated home for the output `name` (`[N, …]` with the other
    /// dimensions fixed) on `place`: host memory, or this engine's GPU.
    pub fn output_arena(&self, name: &str, place: Place) -> Result<OutputArena> {
        let spec = self
            .outputs
            .iter()
            .find(|o| o.name == name)
            .ok_or_else(|| Error::model(&self.path, format!("no output named {name}")))?;
        if spec.dtype != "float32" || spec.shape.len() < 2 || spec.shape[1..].iter().any(|&d| d < 0)
        {
            return Err(Error::model(
                &self.path,
                format!(
                    "output {spec} is not float32 [N, …] with fixed dimensions after the batch"
                ),
            ));
        }
        if place != Place::Host && place != self.input_place() {
            return Err(Error::Runtime(format!(
                "{} cannot write its output to {place}: it runs on {}",
                self.path.display(),
                self.input_place()
            )));
        }
        OutputArena::new(
            &self.session,
            name,
            place,
            spec.shape[1..].iter().map(|&d| d as usize).collect(),
        )
    }

    fn values<'a>(
        &self,
        stage: &'static str,
        feeds: Vec<(&'a str, Feed<'a>)>,
    ) -> Result<
        Vec<(
            std::borrow::Cow<'a, str>,
            ort::session::SessionInputValue<'a>,
        )>,
    > {
        let fail = |source| Error::Inference { stage, source };
        let mut values = Vec::with_capacity(feeds.len());
        for (name, feed) in feeds {
            let value = match feed {
                Feed::Array(view) => ort::session::SessionInputValue::from(
                    TensorRef::from_array_view(view).map_err(fail)?,
                ),
                Feed::Arena(arena, shape) => {
                    let place = arena.place();
                    if place != Place::Host && place != self.input_place() {
                        return Err(Error::Runtime(format!(
                            "{stage}: an input on {place} cannot be read by {}, which runs on {}",
                            self.path.display(),
                            self.input_place()
                        )));
                    }
                    ort::session::SessionInputValue::from(arena.tensor(&shape)?)
                }
            };
            values.push((std::borrow::Cow::Borrowed(name), value));
        }
        Ok(values)
    }

    /// Runs the model and copies every output out to the host.
    pub fn run<'a>(
        &mut self,
        stage: &'static str,
        feeds: Vec<(&'a str, Feed<'a>)>,
    ) -> Result<Vec<Output>> {
        let fail = |source| Error::Inference { stage, source };
        let values = self.values(stage, feeds)?;
        let outputs = self.session.run(values).map_err(fail)?;
        let mut out = Vec::with_capacity(outputs.len());
        for (name, value) in outputs.iter() {
            // Counts (NMS exports) come as integers; every stage reads floats.
            use ort::value::TensorElementType as T;
            let (shape, data) = match value.dtype().tensor_type() {
                Some(T::Float32) => value.try_extract_tensor::<f32>().map(|(s, d)| (s.to_vec(), d.to_vec())),
                Some(T::Int32) => value.try_extract_tensor::<i32>().map(|(s, d)| (s.to_vec(), d.iter().map(|&v| v as f32).collect())),
                Some(T::Int64) => value.try_extract_tensor::<i64>().map(|(s, d)| (s.to_vec(), d.iter().map(|&v| v as f32).collect())),
                other => {
                    return Err(Error::model(&self.path, format!("output {name} has element type {other:?}; expected float32 or an integer type")))
                }
            }
            .map_err(fail)?;
            out.push(Output {
                shape: shape.iter().map(|&d| d.max(0) as usize).collect(),
                data,
            });
        }
        Ok(out)
    }

    /// Runs a batch of `n` and leaves the one output in `out`, where it lives
    /// (read it with [`OutputArena::host`] or [`OutputArena::device_ptr`]).
    pub fn run_into<'a>(
        &mut self,
        stage: &'static str,
        feeds: Vec<(&'a str, Feed<'a>)>,
        out: &mut OutputArena,
        n: usize,
    ) -> Result<()> {
        let fail = |source| Error::Inference { stage, source };
        let values = self.values(stage, feeds)?;
        let options = out.options(n)?;
        let outputs = self
            .session
            .run_with_options(values, options)
            .map_err(fail)?;
        // The preallocated tensor is the output itself; nothing is copied.
        drop(outputs);
        Ok(())
    }
}

/// The device whose stream the GPU providers are given, or `None` (with the
/// reason in the log) where cudarc cannot open it: ONNX Runtime then runs
/// on a stream of its own and nothing is handed to it on the device.
fn shared_device(device_id: i32) -> Option<Arc<gpu::Device>> {
    let ordinal = usize::try_from(device_id).ok()?;
    match gpu::Device::open(ordinal) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::debug!("not sharing a CUDA stream with ONNX Runtime: {e}");
            None
        }
    }
}

fn session(
    path: &Path,
    env: &ort::environment::Environment,
    settings: &EngineSettings,
    eps: Vec<ort::ep::ExecutionProviderDispatch>,
) -> Result<Session> {
    let fail = |e: String| Error::model(path, e);
    let mut builder = Session::builder(env).map_err(|e| fail(e.to_string()))?;
    if settings.intra_threads > 0 {
        builder = builder
            .with_intra_threads(settings.intra_threads)
            .map_err(|e| fail(e.to_string()))?;
    }
    builder = builder
        .with_intra_op_spinning(settings.spinning)
        .map_err(|e| fail(e.to_string()))?;
    builder = builder
        .with_inter_op_spinning(settings.spinning)
        .map_err(|e| fail(e.to_string()))?;
    if settings.cpu_arena {
        builder = builder
            .with_env_allocators()
            .map_err(|e| fail(e.to_string()))?;
    }
    // The CPU provider comes last in every list: it runs whatever the GPU providers do not.
    let mut eps = eps;
    eps.push(
        ort::ep::CPU::default()
            .with_arena_allocator(settings.cpu_arena)
            .build(),
    );
    builder = builder.with_execution_providers(eps).map_err(|e| {
        fail(format!(
            "execution provider {:?} is not available: {e}",
            settings.provider
        ))
    })?;
    builder
        .commit_from_file(path)
        .map_err(|e| fail(format!("cannot load: {e}")))
}

fn specs(session: &Session) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    let spec = |o: &ort::value::Outlet| TensorSpec {
        name: o.name().to_string(),
        shape: o
            .dtype()
            .tensor_shape()
            .map(|s| s.to_vec())
            .unwrap_or_default(),
        dtype: o
            .dtype()
            .tensor_type()
            .map(|t| format!("{t:?}").to_lowercase())
            .unwrap_or_else(|| "non-tensor".into()),
    };
    (
        session.inputs().iter().map(spec).collect(),
        session.outputs().iter().map(spec).collect(),
    )
}

/// The providers tried, in order: the configured one, then (with
/// `fallback`) each one below it.
pub fn fallback_chain(provider: Provider, fallback: bool) -> Vec<Provider> {
    match (provider, fallback) {
        (Provider::Tensorrt, true) => vec![Provider::Tensorrt, Provider::Cuda, Provider::Cpu],
        (Provider::Cuda, true) => vec![Provider::Cuda, Provider::Cpu],
        (p, _) => vec![p],
    }
}

/// Explains, in terms of what to install, why a GPU provider is missing
/// from the loaded ONNX Runtime.
fn require_provider<P: ort::ep::ExecutionProvider>(library: &Path, name: &str) -> Result<()> {
    match P::is_available() {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::Runtime(format!(
            "{} is a build of ONNX Runtime without the {name} execution provider. Install one with it: on x86_64 \
             the onnxruntime-gpu wheel (onnxruntime/capi/libonnxruntime.so*), on Jetson the JetPack build \
             (README, \"Jetson\"); then set engine.ort_library or ORT_DYLIB_PATH to it",
            library.display()
        ))),
        Err(e) => Err(Error::Runtime(format!("cannot list the execution providers of {}: {e}", library.display()))),
    }
}

fn cuda_ep(
    settings: &EngineSettings,
    device_id: i32,
    stream: Option<providers::Stream>,
) -> ort::ep::ExecutionProviderDispatch {
    providers::cuda_ep(&providers::cuda(settings, device_id, stream))
}

fn cuda_session(
    path: &Path,
    env: &ort::environment::Environment,
    library: &Path,
    settings: &EngineSettings,
    device_id: i32,
    stream: Option<providers::Stream>,
) -> Result<Session> {
    require_provider::<ort::ep::CUDA>(library, "CUDA")?;
    gpu::probe(device_id).map_err(|e| Error::Runtime(e.0))?;
    session(
        path,
        env,
        settings,
        vec![cuda_ep(settings, device_id, stream)],
    )
}

/// A TensorRT session whose engine comes from (or goes into) the engine cache.
fn tensorrt_session(
    role: &'static str,
    path: &Path,
    model_sha256: &str,
    (env, library): &(ort::environment::Environment, PathBuf),
    settings: &EngineSettings,
    (device_id, stream): (i32, Option<providers::Stream>),
    profile: BatchProfile,
) -> Result<(Session, CacheUse)> {
    use engine_cache::{CacheKey, Claim, EngineCache, State};
    require_provider::<ort::ep::TensorRT>(library, "TensorRT")?;
    let platform = gpu::probe(device_id).map_err(|e| Error::Runtime(e.0))?;
    if platform.tensorrt.is_none() {
        return Err(Error::Runtime(
            "TensorRT is not installed (libnvinfer.so.11 / .so.10 / .so.8 not found): install it (JetPack ships it; on x86_64 the tensorrt-libs wheel or NVIDIA's packages)".into(),
        ));
    }
    let cache = EngineCache::open(&settings.engine_cache_dir)?;
    // TensorRT's optimisation profile needs the input names and shapes before
    // the session exists; a CPU session reads them (once, at start-up).
    let (inputs, _) = specs(&session(path, env, settings, Vec::new())?);
    let shapes = profile_shapes(&inputs, profile).map_err(|e| Error::model(path, e))?;
    let timing = cache.timing_dir(&platform)?;
    let options = |dir: &Path| {
        providers::tensorrt(settings, device_id, stream, shapes.as_ref(), dir, &timing)
    };
    // The key is made from the very options TensorRT gets (paths aside).
    let key = CacheKey::new(
        model_sha256,
        settings.fp16,
        profile,
        &platform,
        &runtime::build_id(),
        &providers::engine_shaping(&options(Path::new(""))),
    );
    let dir = cache.entry_dir(&key);
    let eps = || {
        vec![
            providers::tensorrt_ep(&options(&dir)),
            cuda_ep(settings, device_id, stream),
        ]
    };
    match cache.claim(&key, role, path)? {
        Claim::Ready(entry) => {
            tracing::info!(model = role, engine = %dir.display(), built_s = entry.build_seconds, "using the cached TensorRT engine");
            // CUDA after TensorRT takes the nodes TensorRT cannot.
            let session = session(path, env, settings, eps())?;
            if let Err(e) = cache.touch(&key) {
                tracing::warn!("engine cache: {e}");
            }
            Ok((
                session,
                CacheUse {
                    id: entry.id,
                    dir,
                    built: false,
                    build_seconds: entry.build_seconds,
                },
            ))
        }
        Claim::NoEngine(entry) => Err(no_engine(role, &entry.id)),
        Claim::Build(build) => {
            tracing::warn!(
                model = role,
                engine = %dir.display(),
                "building the TensorRT engine for the {role} model ({}, batch {}, {platform}); this takes minutes once, later starts reuse it",
                key.precision,
                key.profile,
            );
            let started = std::time::Instant::now();
            let what = format!("building TensorRT engine for {role} model");
            let tick =
                move |so_far| tracing::info!("{what}, {} so far", engine_cache::elapsed(so_far));
            let eps = eps();
            let session = engine_cache::with_progress(Duration::from_secs(10), tick, || {
                session(path, env, settings, eps)
            })?;
            let took = started.elapsed();
            if cache.finish(build, took)? == State::NoEngine {
                return Err(no_engine(role, &key.id()));
            }
            tracing::info!(
                model = role,
                "TensorRT engine built in {}",
                engine_cache::elapsed(took)
            );
            Ok((
                session,
                CacheUse {
                    id: key.id(),
                    dir,
                    built: true,
                    build_seconds: took.as_secs_f64(),
                },
            ))
        }
    }
}

/// Why TensorRT cannot run a model whose build wrote no engine.
fn no_engine(role: &str, id: &str) -> Error {
    Error::Runtime(format!(
        "TensorRT built no engine for the {role} model (engine cache entry {id}): it took no part of the graph, or its build failed (ONNX Runtime's log says which). \
         Not built again at every start: `shitud engines prune` removes the entry, and the next start tries again"
    ))
}

/// TensorRT's optimisation profile (`image:1x3x640x640,...`) for every
/// input with a dynamic dimension: the batch over `profile`'s range, and the
/// height and width of an NCHW image input at `profile.side` (the TensorRT
/// provider needs a profile for every dynamic input, not only the batched
/// ones). `Ok(None)`: every input is static. A dynamic dimension that cannot
/// be sized is an error naming it.
pub fn profile_shapes(
    inputs: &[TensorSpec],
    profile: BatchProfile,
) -> std::result::Result<Option<providers::ProfileShapes>, String> {
    let dynamic: Vec<&TensorSpec> = inputs
        .iter()
        .filter(|s| s.shape.iter().any(|&d| d < 0))
        .collect();
    if dynamic.is_empty() {
        return Ok(None);
    }
    for s in &dynamic {
        for (i, &d) in s.shape.iter().enumerate() {
            let image_side = s.shape.len() == 4 && (i == 2 || i == 3);
            if d < 0 && i != 0 && !(image_side && profile.side > 0) {
                return Err(format!(
                    "input {s} has a dynamic dimension {i} that TensorRT needs a size for; export the model with it fixed"
                ));
            }
        }
    }
    let at = |n: usize| {
        dynamic
            .iter()
            .map(|s| {
                let dims: Vec<String> = s
                    .shape
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| match (i, d) {
                        (0, d) if d < 0 => n.to_string(),
                        (_, d) if d < 0 => profile.side.to_string(),
                        (_, d) => d.to_string(),
                    })
                    .collect();
                format!("{}:{}", s.name, dims.join("x"))
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    Ok(Some(providers::ProfileShapes {
        min: at(profile.min),
        opt: at(profile.opt),
        max: at(profile.max),
    }))
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_steps_down_one_provider_at_a_time() {
        use Provider::*;
        assert_eq!(fallback_chain(Tensorrt, true), [Tensorrt, Cuda, Cpu]);
        assert_eq!(fallback_chain(Cuda, true), [Cuda, Cpu]);
        assert_eq!(fallback_chain(Cpu, true), [Cpu]);
        assert_eq!(fallback_chain(Tensorrt, false), [Tensorrt]);
        assert_eq!(fallback_chain(Cuda, false), [Cuda]);
    }

    fn spec(name: &str, shape: Vec<i64>) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            shape,
            dtype: "float32".into(),
        }
    }

    #[test]
    fn profiles_cover_every_dynamic_input() {
        let profile = BatchProfile {
            min: 1,
            opt: 4,
            max: 8,
            side: 640,
        };
        let inputs = [
            spec("image", vec![-1, 3, 640, 640]),
            spec("scale_factor", vec![-1, 2]),
        ];
        let p = profile_shapes(&inputs, profile).unwrap().unwrap();
        assert_eq!(p.min, "image:1x3x640x640,scale_factor:1x2");
        assert_eq!(p.opt, "image:4x3x640x640,scale_factor:4x2");
        assert_eq!(p.max, "image:8x3x640x640,scale_factor:8x2");
        let fixed = [spec("x", vec![1, 3, 224, 224])];
        assert_eq!(profile_shapes(&fixed, profile), Ok(None));
    }

    #[test]
    fn an_image_input_with_dynamic_height_and_width_gets_the_stages_side() {
        // Exported with H and W left dynamic: without a profile for it, the
        // TensorRT provider refuses the model.
        let profile = BatchProfile {
            min: 1,
            opt: 6,
            max: 16,
            side: 224,
        };
        let p = profile_shapes(&[spec("x", vec![-1, 3, -1, -1])], profile)
            .unwrap()
            .unwrap();
        assert_eq!(
            (p.min.as_str(), p.max.as_str()),
            ("x:1x3x224x224", "x:16x3x224x224")
        );
        // A fixed batch with dynamic sides needs a profile too.
        let p = profile_shapes(&[spec("x", vec![1, 3, -1, -1])], profile)
            .unwrap()
            .unwrap();
        assert_eq!(p.opt, "x:1x3x224x224");
        // What cannot be sized is said, with the input.
        let err = profile_shapes(&[spec("boxes", vec![-1, -1])], profile).unwrap_err();
        assert!(
            err.contains("boxes") && err.contains("dimension 1"),
            "{err}"
        );
    }
}

//! The third stage: one [`Engine`] runs an ONNX model on the execution
//! provider the config names (CPU, CUDA or TensorRT), with a dynamic batch.
//!
//! Stages describe the inputs they need as [`TensorSpec`]s; the engine
//! checks the model against them when it is opened, so a wrong model fails
//! at start-up with both shapes in the message, not at the first frame.

pub mod runtime;

use std::path::{Path, PathBuf};

use ndarray::ArrayViewD;
use ort::session::Session;
use ort::value::TensorRef;

use crate::config::{EngineSettings, Provider};
use crate::error::{Error, Result};

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
        let dims: Vec<String> = self.shape.iter().map(|d| if *d < 0 { "?".into() } else { d.to_string() }).collect();
        write!(f, "{} {}[{}]", self.name, self.dtype, dims.join(","))
    }
}

/// Formats a list of specs for error messages.
pub fn describe(specs: &[TensorSpec]) -> String {
    specs.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
}

/// An output tensor copied out of the runtime.
#[derive(Debug, Clone)]
pub struct Output {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// One ONNX model loaded on one execution provider.
pub struct Engine {
    session: Session,
    path: PathBuf,
    provider: Provider,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("path", &self.path).field("provider", &self.provider).finish()
    }
}

impl Engine {
    /// Loads the model at `path`. `max_batch` sizes TensorRT's optimisation profile.
    pub fn open(path: &Path, settings: &EngineSettings, max_batch: usize) -> Result<Engine> {
        if !path.is_file() {
            return Err(Error::model(path, "file not found"));
        }
        let (env, _) = runtime::environment(settings.ort_library.as_deref())?;
        let eps = match settings.provider {
            Provider::Cpu => Vec::new(),
            // TensorRT's optimisation profile needs the input shapes before the
            // session exists; a CPU session reads them (once, at start-up).
            Provider::Tensorrt => {
                let (inputs, _) = specs(&session(path, env, settings, Vec::new())?);
                providers(settings, max_batch, &inputs)?
            }
            Provider::Cuda => providers(settings, max_batch, &[])?,
        };
        let session = session(path, env, settings, eps)?;
        let (inputs, outputs) = specs(&session);
        tracing::debug!(model = %path.display(), provider = ?settings.provider, inputs = %describe(&inputs), "model loaded");
        Ok(Engine { session, path: path.to_path_buf(), provider: settings.provider, inputs, outputs })
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The execution provider in use.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// The graph's inputs.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// The graph's outputs.
    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// Runs the model on named float inputs and copies every output out.
    pub fn run(&mut self, stage: &'static str, inputs: &[(&str, ArrayViewD<'_, f32>)]) -> Result<Vec<Output>> {
        let fail = |source| Error::Inference { stage, source };
        let mut values = Vec::with_capacity(inputs.len());
        for (name, view) in inputs {
            let tensor = TensorRef::from_array_view(view.view()).map_err(fail)?;
            values.push((std::borrow::Cow::Borrowed(*name), ort::session::SessionInputValue::from(tensor)));
        }
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
            out.push(Output { shape: shape.iter().map(|&d| d.max(0) as usize).collect(), data });
        }
        Ok(out)
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
        builder = builder.with_intra_threads(settings.intra_threads).map_err(|e| fail(e.to_string()))?;
    }
    builder = builder
        .with_intra_op_spinning(settings.spinning)
        .and_then(|b| b.with_inter_op_spinning(settings.spinning))
        .map_err(|e| fail(e.to_string()))?;
    if settings.cpu_arena {
        builder = builder.with_env_allocators().map_err(|e| fail(e.to_string()))?;
    }
    // The CPU provider comes last in every list: it runs whatever the GPU providers do not.
    let mut eps = eps;
    eps.push(ort::ep::CPU::default().with_arena_allocator(settings.cpu_arena).build());
    builder = builder
        .with_execution_providers(eps)
        .map_err(|e| fail(format!("execution provider {:?} is not available: {e}", settings.provider)))?;
    builder.commit_from_file(path).map_err(|e| fail(format!("cannot load: {e}")))
}

fn specs(session: &Session) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    let spec = |o: &ort::value::Outlet| TensorSpec {
        name: o.name().to_string(),
        shape: o.dtype().tensor_shape().map(|s| s.to_vec()).unwrap_or_default(),
        dtype: o.dtype().tensor_type().map(|t| format!("{t:?}").to_lowercase()).unwrap_or_else(|| "non-tensor".into()),
    };
    (session.inputs().iter().map(spec).collect(), session.outputs().iter().map(spec).collect())
}

fn providers(settings: &EngineSettings, max_batch: usize, inputs: &[TensorSpec]) -> Result<Vec<ort::ep::ExecutionProviderDispatch>> {
    use ort::ep;
    let cuda = || ep::CUDA::default().with_device_id(settings.device_id).build().error_on_failure();
    Ok(match settings.provider {
        Provider::Cpu => Vec::new(),
        Provider::Cuda => vec![cuda()],
        Provider::Tensorrt => {
            let cache = &settings.engine_cache_dir;
            std::fs::create_dir_all(cache).map_err(|e| Error::io(cache, e))?;
            let cache = cache.display().to_string();
            let mut trt = ep::TensorRT::default()
                .with_device_id(settings.device_id)
                .with_fp16(settings.fp16)
                .with_engine_cache(true)
                .with_engine_cache_path(&cache)
                .with_timing_cache(true)
                .with_timing_cache_path(&cache);
            if let Some((min, opt, max)) = profile_shapes(inputs, max_batch) {
                trt = trt.with_profile_min_shapes(min).with_profile_opt_shapes(opt).with_profile_max_shapes(max);
            }
            // CUDA after TensorRT takes the nodes TensorRT cannot.
            vec![trt.build().error_on_failure(), cuda()]
        }
    })
}

/// TensorRT profile strings (`image:1x3x640x640,...`) covering batch 1 to
/// `max_batch` for every input whose only dynamic dimension is the batch.
pub fn profile_shapes(inputs: &[TensorSpec], max_batch: usize) -> Option<(String, String, String)> {
    let batched: Vec<&TensorSpec> =
        inputs.iter().filter(|s| s.shape.first() == Some(&-1) && s.shape[1..].iter().all(|&d| d > 0)).collect();
    if batched.is_empty() {
        return None;
    }
    let at = |n: usize| {
        batched
            .iter()
            .map(|s| {
                let rest: Vec<String> = s.shape[1..].iter().map(|d| d.to_string()).collect();
                format!("{}:{n}x{}", s.name, rest.join("x"))
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    Some((at(1), at(max_batch), at(max_batch)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_cover_the_dynamic_batch_only() {
        let spec = |name: &str, shape: Vec<i64>| TensorSpec { name: name.into(), shape, dtype: "float32".into() };
        let inputs = [spec("image", vec![-1, 3, 640, 640]), spec("scale_factor", vec![-1, 2]), spec("odd", vec![-1, 3, -1, -1])];
        let (min, opt, max) = profile_shapes(&inputs, 8).unwrap();
        assert_eq!(min, "image:1x3x640x640,scale_factor:1x2");
        assert_eq!(opt, "image:8x3x640x640,scale_factor:8x2");
        assert_eq!(opt, max);
        assert!(profile_shapes(&[spec("x", vec![1, 3, 224, 224])], 8).is_none());
    }
}

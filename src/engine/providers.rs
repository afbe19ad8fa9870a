//! The options each GPU execution provider is given, as ONNX Runtime's own
//! key/value pairs. They are built here as plain data, so that the engine
//! cache key is made from exactly what TensorRT is told (not from a second
//! list that could drift from it), and so that tests can read them.

use std::path::Path;

use crate::config::EngineSettings;

/// An execution provider's options, in the order they are set.
pub type Options = Vec<(&'static str, String)>;

/// The CUDA provider's options.
///
/// - `cudnn_conv_algo_search = HEURISTIC`: ORT's default, EXHAUSTIVE, times
///   every convolution algorithm again for each new input shape, so each new
///   batch size stalls a request for seconds; the heuristic choice costs
///   nothing at run time.
/// - `arena_extend_strategy = kSameAsRequested`: the default doubles the
///   arena at each growth, which on a Jetson takes memory the board's CPU
///   side shares.
/// - `gpu_mem_limit` from `engine.gpu_mem_limit` (0: no limit).
/// - `user_compute_stream`: the device's one stream ([`crate::gpu::Device`])
///   where it is open, so inference is ordered after the preprocessing
///   kernels that write its input, without a host synchronisation between.
pub fn cuda(settings: &EngineSettings, device_id: i32, stream: Option<Stream>) -> Options {
    let mut o: Options = vec![
        ("device_id", device_id.to_string()),
        ("cudnn_conv_algo_search", "HEURISTIC".into()),
        ("arena_extend_strategy", "kSameAsRequested".into()),
    ];
    if settings.gpu_mem_limit > 0 {
        o.push(("gpu_mem_limit", settings.gpu_mem_limit.to_string()));
    }
    with_stream(&mut o, stream);
    o
}

/// A CUDA stream's handle, as the providers take it (an address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream(pub usize);

impl Stream {
    /// The handle of `device`'s stream.
    pub fn of(device: &crate::gpu::Device) -> Stream {
        Stream(device.stream().cu_stream() as usize)
    }
}

fn with_stream(o: &mut Options, stream: Option<Stream>) {
    if let Some(Stream(s)) = stream {
        o.push(("has_user_compute_stream", "1".into()));
        o.push(("user_compute_stream", s.to_string()));
    }
}

/// The optimisation profile: `name:NxCxHxW,...` for the smallest, tuned-for
/// and largest batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileShapes {
    /// Smallest shapes.
    pub min: String,
    /// The shapes TensorRT tunes its kernels for.
    pub opt: String,
    /// Largest shapes.
    pub max: String,
}

/// The TensorRT provider's options. `engine_dir` is the cache entry the
/// engine goes into, `timing_dir` the platform's shared timing cache.
pub fn tensorrt(
    settings: &EngineSettings,
    device_id: i32,
    stream: Option<Stream>,
    profile: Option<&ProfileShapes>,
    engine_dir: &Path,
    timing_dir: &Path,
) -> Options {
    let mut o: Options = vec![
        ("device_id", device_id.to_string()),
        ("trt_fp16_enable", bool_str(settings.fp16)),
        ("trt_engine_cache_enable", "1".into()),
        ("trt_engine_cache_path", engine_dir.display().to_string()),
        ("trt_timing_cache_enable", "1".into()),
        ("trt_timing_cache_path", timing_dir.display().to_string()),
    ];
    if let Some(p) = profile {
        o.push(("trt_profile_min_shapes", p.min.clone()));
        o.push(("trt_profile_opt_shapes", p.opt.clone()));
        o.push(("trt_profile_max_shapes", p.max.clone()));
    }
    with_stream(&mut o, stream);
    o
}

fn bool_str(b: bool) -> String {
    if b { "1" } else { "0" }.into()
}

/// The options that shape the engine TensorRT builds, as one canonical
/// string for the cache key: every option except where files go, which
/// device (the platform is keyed on its own) and which stream, sorted by name.
pub fn engine_shaping(options: &Options) -> String {
    const NOT_SHAPING: [&str; 5] = [
        "device_id",
        "trt_engine_cache_path",
        "trt_timing_cache_path",
        "has_user_compute_stream",
        "user_compute_stream",
    ];
    let mut kept: Vec<String> = options
        .iter()
        .filter(|(k, _)| !NOT_SHAPING.contains(k))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    kept.sort();
    kept.join(";")
}

/// The CUDA provider configured with `options`.
pub fn cuda_ep(options: &Options) -> ort::ep::ExecutionProviderDispatch {
    use ort::ep::ArbitrarilyConfigurableExecutionProvider as _;
    let mut ep = ort::ep::CUDA::default();
    for (k, v) in options {
        ep = ep.with_arbitrary_config(k, v);
    }
    ep.build().error_on_failure()
}

/// The TensorRT provider configured with `options`.
pub fn tensorrt_ep(options: &Options) -> ort::ep::ExecutionProviderDispatch {
    use ort::ep::ArbitrarilyConfigurableExecutionProvider as _;
    let mut ep = ort::ep::TensorRT::default();
    for (k, v) in options {
        ep = ep.with_arbitrary_config(k, v);
    }
    ep.build().error_on_failure()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(o: &'a Options, key: &str) -> Option<&'a str> {
        o.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn cuda_searches_convolutions_by_heuristic_and_grows_its_arena_as_asked() {
        let mut s = EngineSettings::default();
        let o = cuda(&s, 1, None);
        assert_eq!(get(&o, "device_id"), Some("1"));
        assert_eq!(get(&o, "cudnn_conv_algo_search"), Some("HEURISTIC"));
        assert_eq!(get(&o, "arena_extend_strategy"), Some("kSameAsRequested"));
        assert_eq!(get(&o, "gpu_mem_limit"), None, "no limit unless one is set");
        assert_eq!(get(&o, "has_user_compute_stream"), None);
        let o = cuda(&s, 1, Some(Stream(0x1234)));
        assert_eq!(get(&o, "has_user_compute_stream"), Some("1"));
        assert_eq!(get(&o, "user_compute_stream"), Some("4660"));
        s.gpu_mem_limit = 2 << 30;
        assert_eq!(get(&cuda(&s, 0, None), "gpu_mem_limit"), Some("2147483648"));
    }

    #[test]
    fn engine_shaping_options_ignore_paths_device_and_stream_but_not_precision_or_profile() {
        let s = EngineSettings::default();
        let p = ProfileShapes {
            min: "x:1x3x224x224".into(),
            opt: "x:6x3x224x224".into(),
            max: "x:16x3x224x224".into(),
        };
        let a = tensorrt(&s, 0, None, Some(&p), Path::new("/a"), Path::new("/t1"));
        let b = tensorrt(
            &s,
            1,
            Some(Stream(7)),
            Some(&p),
            Path::new("/b"),
            Path::new("/t2"),
        );
        assert_eq!(engine_shaping(&a), engine_shaping(&b));
        let fp32 = EngineSettings {
            fp16: false,
            ..s.clone()
        };
        let c = tensorrt(&fp32, 0, None, Some(&p), Path::new("/a"), Path::new("/t1"));
        assert_ne!(engine_shaping(&a), engine_shaping(&c));
        let q = ProfileShapes {
            opt: "x:8x3x224x224".into(),
            ..p.clone()
        };
        let d = tensorrt(&s, 0, None, Some(&q), Path::new("/a"), Path::new("/t1"));
        assert_ne!(engine_shaping(&a), engine_shaping(&d));
        assert!(engine_shaping(&a).contains("trt_profile_opt_shapes=x:6x3x224x224"));
    }
}

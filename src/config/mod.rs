//! Settings for the whole pipeline, layered: built-in defaults, then
//! `/etc/shitu-edge/config.toml` (or `--config FILE`), then the `conf.d/*.toml`
//! beside it in name order, then `SHITU__SECTION__KEY` environment variables.
//! Command-line flags are applied on top by the CLI. [`layers`] says where
//! each value came from. The defaults are PaddleClas's
//! `inference_general.yaml`, so an empty file reproduces the reference.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub mod layers;

/// Every setting of the pipeline.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Which runtime and execution provider run the models.
    pub engine: EngineSettings,
    /// Input limits.
    pub input: InputSettings,
    /// How frames and crops become tensors.
    pub preprocess: PreprocessSettings,
    /// The GPU every GPU stage uses.
    pub gpu: GpuSettings,
    /// The mainbody detector.
    pub detector: DetectorSettings,
    /// The feature extractor.
    pub embedder: EmbedderSettings,
    /// Gallery search and the final answer.
    pub search: SearchSettings,
    /// The broker connection of `shitud run`.
    pub mqtt: MqttSettings,
    /// Request handling in `shitud run`: batching, queue, spool, allowed paths.
    pub daemon: DaemonSettings,
    /// Log output.
    pub log: LogSettings,
    /// Over-the-air updates.
    pub ota: OtaSettings,
    /// Cameras wired to the box (`[[sources]]`, one table each); none by default.
    pub sources: Vec<SourceSettings>,
    /// What every source shares: ring, deadlines, reconnects.
    pub capture: CaptureSettings,
    /// The daemon's HTTP server: the operator's page, its JSON API,
    /// `/metrics` and `/healthz`.
    pub http: HttpSettings,
}

/// The daemon's one HTTP server (`docs/HTTP.md`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address and port; empty turns the server off. Any address but
    /// loopback needs `token_file`.
    pub listen: String,
    /// A file holding the bearer token (one line, at least 16 characters).
    /// When set, every request but `/healthz` and the login form needs it,
    /// as `Authorization: Bearer …` or as the cookie the login form sets.
    pub token_file: PathBuf,
    /// PEM certificate chain: with `tls_key`, the server speaks HTTPS only.
    pub tls_cert: PathBuf,
    /// PEM private key for `tls_cert`.
    pub tls_key: PathBuf,
    /// How many recent answers the page and `/api/answers` keep.
    pub recent_answers: usize,
}

impl HttpSettings {
    /// The address to listen on; `None` when the server is off.
    pub fn address(&self) -> std::result::Result<Option<std::net::SocketAddr>, String> {
        if self.listen.trim().is_empty() {
            return Ok(None);
        }
        self.listen.trim().parse().map(Some).map_err(|e| {
            format!(
                "{:?} is not an address and port ({e}): say \"127.0.0.1:8080\", \"0.0.0.0:8080\" or \"[::]:8080\"",
                self.listen
            )
        })
    }

    /// Whether TLS is on (both files set).
    pub fn tls(&self) -> bool {
        !self.tls_cert.as_os_str().is_empty() && !self.tls_key.as_os_str().is_empty()
    }

    fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        match self.address() {
            Err(e) => out.push(("http.listen".into(), e)),
            Ok(Some(addr)) if !addr.ip().is_loopback() && self.token_file.as_os_str().is_empty() => {
                out.push((
                    "http.token_file".into(),
                    format!(
                        "must be set when http.listen ({addr}) is not loopback: the page changes the gallery, so anyone on the network could (make one with: head -c 24 /dev/urandom | base64 > FILE; chmod 600 FILE)"
                    ),
                ))
            }
            Ok(_) => {}
        }
        if self.tls_cert.as_os_str().is_empty() != self.tls_key.as_os_str().is_empty() {
            out.push((
                "http.tls_cert".into(),
                "and http.tls_key are set together, or neither".into(),
            ));
        }
        if !(1..=10_000).contains(&self.recent_answers) {
            out.push((
                "http.recent_answers".into(),
                format!("{} must be within 1 and 10000", self.recent_answers),
            ));
        }
        out
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: "127.0.0.1:8080".into(),
            token_file: PathBuf::new(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            recent_answers: 50,
        }
    }
}

/// One camera or stream (`[[sources]]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SourceSettings {
    /// Its name: one topic level, unique; triggers name it.
    pub name: String,
    /// `rtsp://` (`rtspt://` for RTSP over TCP only), `v4l2:///dev/video0`,
    /// `file:///path/clip.mp4` (played in a loop at its own speed), or
    /// `gst:<pipeline ending in appsink name=sink>`.
    pub uri: String,
    /// Conveyor travel from the trigger to this camera, milliseconds: a
    /// trigger is answered from the first frame captured at or after
    /// `t_ms + delay_ms`.
    pub delay_ms: u64,
    /// Continuous mode: recognise this many frames a second and publish on
    /// `P/detections/<name>` when the set of labels changes (and every
    /// `capture.heartbeat_s`). 0 = off: triggers only.
    pub fps: f64,
}

/// Settings shared by every source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureSettings {
    /// How long a trigger waits for its frame after the moment it names
    /// (`t_ms + delay_ms`), milliseconds; then it is answered `no_frame`.
    pub deadline_ms: u64,
    /// Frames kept per source, newest last: how far back a late trigger can
    /// still be matched (at 30 fps, 64 frames are about 2 s).
    pub ring_frames: usize,
    /// A trigger whose `t_ms` is further than this from the box's clock, in
    /// either direction, is refused (`bad_request`): a PLC clock that has
    /// drifted, or a unit mistake (seconds for milliseconds).
    pub max_skew_ms: u64,
    /// A streaming source with no frame for this long is `stalled`, and is
    /// restarted.
    pub stall_ms: u64,
    /// First wait before reconnecting a failed source, milliseconds; doubles
    /// up to `reconnect_max_ms`.
    pub reconnect_min_ms: u64,
    /// Longest wait between reconnects, milliseconds.
    pub reconnect_max_ms: u64,
    /// Continuous mode: seconds between publications of an unchanged set
    /// of labels on `P/detections/<source>`.
    pub heartbeat_s: u64,
    /// Where crops that matched nothing in a triggered frame are kept for
    /// enrolment (`P/unknown`, `shitud unknown`); empty = not kept.
    pub unknown_dir: PathBuf,
    /// Most unknown items kept; the oldest go first.
    pub unknown_max_items: usize,
    /// Keep every answered trigger's frame as JPEG, for audit, under
    /// `keep_dir/<source>/<captured_at_ms>-<request_id>.jpg`.
    pub keep_frames: bool,
    /// Where kept frames go.
    pub keep_dir: PathBuf,
    /// Most bytes of kept frames; the oldest are deleted first.
    pub keep_max_bytes: u64,
}

impl Default for CaptureSettings {
    fn default() -> Self {
        CaptureSettings {
            deadline_ms: 1000,
            ring_frames: 64,
            max_skew_ms: 10_000,
            stall_ms: 3000,
            reconnect_min_ms: 500,
            reconnect_max_ms: 10_000,
            heartbeat_s: 10,
            unknown_dir: PathBuf::from("unknown"),
            unknown_max_items: 200,
            keep_frames: false,
            keep_dir: PathBuf::from("frames"),
            keep_max_bytes: 1 << 30,
        }
    }
}

/// Over-the-air update settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OtaSettings {
    /// Public keys whose signatures make a bundle acceptable: base64 (as in
    /// `KEY.pub` from `shitud bundle keygen`) or the path of such a file.
    pub trusted_keys: Vec<String>,
    /// Where versions live (`versions/`, the `current` link); empty turns
    /// updates off. When a version is current, its models and gallery
    /// replace `detector.model`, `embedder.model` and `search.index`.
    pub root: PathBuf,
    /// A folder watched for bundles (`*.tar`) dropped by RAUC, SWUpdate,
    /// Mender or scp; empty = not watched.
    pub watch_dir: PathBuf,
    /// Where bundles are downloaded (`*.part` while they arrive, kept so
    /// that a broken-off download resumes); empty = `<root>/staging`. Under
    /// systemd, the unit's `CacheDirectory=`: a lost download costs only a
    /// new one.
    pub download_dir: PathBuf,
    /// Versions kept on disk, current and previous included.
    pub keep_versions: usize,
    /// Largest bundle downloaded, bytes.
    pub max_download_bytes: u64,
    /// A new version that dies within this many seconds of the switch is
    /// rolled back at the next start.
    pub trial_s: u64,
}

impl Default for OtaSettings {
    fn default() -> Self {
        OtaSettings {
            trusted_keys: Vec::new(),
            root: PathBuf::new(),
            watch_dir: PathBuf::new(),
            download_dir: PathBuf::new(),
            keep_versions: 3,
            max_download_bytes: 2 << 30,
            trial_s: 600,
        }
    }
}

/// How log lines are written (always to stderr).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `journal` when stderr is the systemd journal (`JOURNAL_STREAM`), else `text`.
    #[default]
    Auto,
    /// Human-readable lines with time and level, coloured on a terminal.
    Text,
    /// One JSON object per line (for Loki, Elasticsearch, Vector).
    Json,
    /// The journal's stdout format: a `<priority>` prefix, no time (journald adds it).
    Journal,
}

/// Log output settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// Line format.
    pub format: LogFormat,
}

/// The ONNX Runtime execution provider that runs a model.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// ONNX Runtime's own CPU kernels.
    #[default]
    Cpu,
    /// The CUDA execution provider.
    Cuda,
    /// The TensorRT execution provider (falls back to CUDA, then CPU, per node).
    Tensorrt,
}

impl std::str::FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Provider::Cpu),
            "cuda" => Ok(Provider::Cuda),
            "tensorrt" | "trt" => Ok(Provider::Tensorrt),
            other => Err(format!(
                "unknown execution provider '{other}' (expected cpu, cuda or tensorrt)"
            )),
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
            Provider::Tensorrt => "tensorrt",
        })
    }
}

/// Runtime settings shared by both models.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSettings {
    /// Execution provider.
    pub provider: Provider,
    /// Path of `libonnxruntime.so`. `ORT_DYLIB_PATH` in the environment wins over this.
    pub ort_library: Option<PathBuf>,
    /// Threads per model for intra-op parallelism; 0 lets ONNX Runtime choose (one per core).
    pub intra_threads: usize,
    /// When the chosen provider cannot start (no GPU, no GPU build of ONNX
    /// Runtime, no TensorRT), try the next one down (tensorrt → cuda → cpu)
    /// instead of refusing to start. Each step down is logged as an error
    /// and shows in the status message.
    pub fallback: bool,
    /// Build TensorRT engines in FP16.
    pub fp16: bool,
    /// Where TensorRT engines and timing caches are kept between runs.
    pub engine_cache_dir: PathBuf,
    /// Keep ONNX Runtime's CPU memory arena. The arena holds on to the peak of
    /// the largest batch for the life of the process; without it that memory
    /// goes back to the system after each call.
    pub cpu_arena: bool,
    /// Let ONNX Runtime's worker threads spin between calls. Spinning threads
    /// keep the cores busy while this process decodes, crops and searches.
    pub spinning: bool,
    /// Most bytes the CUDA provider's memory arena may hold (0: no limit). On
    /// a Jetson the GPU shares the board's memory with everything else.
    pub gpu_mem_limit: u64,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            provider: Provider::Cpu,
            ort_library: None,
            intra_threads: 0,
            fallback: true,
            fp16: true,
            engine_cache_dir: PathBuf::from("engines/cache"),
            cpu_arena: true,
            spinning: false,
            gpu_mem_limit: 0,
        }
    }
}

/// Limits on what is accepted as an image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct InputSettings {
    /// Largest image accepted, in pixels (width × height). Larger images are
    /// refused before they are decoded, so one bad upload cannot exhaust memory.
    pub max_pixels: u64,
    /// Largest encoded file accepted, in bytes.
    pub max_file_bytes: u64,
}

impl Default for InputSettings {
    fn default() -> Self {
        InputSettings {
            max_pixels: 50_000_000,
            max_file_bytes: 64 << 20,
        }
    }
}

/// Which code resizes and normalises frames and crops. All give PaddleClas's
/// pixels; they differ in where that is guaranteed and where the work runs.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PreprocessBackend {
    /// `cv::resize` from the OpenCV the binary links: the reference's own
    /// code on x86; on ARM, OpenCV's NEON path may differ by a grey level.
    #[default]
    Opencv,
    /// The GPU kernels' source (`src/preprocess/kernels.cu`) compiled for the
    /// host: OpenCV's x86 fixed-point arithmetic to the bit on any CPU, and
    /// exactly what the GPU path computes.
    Kernels,
    /// The same kernels on the GPU `gpu.device_id`: frames are staged on
    /// the device once per batch and, with the CUDA or TensorRT provider,
    /// the kernels write the engine's input in place. A box where the GPU
    /// cannot be used says why in the log and runs `kernels` on the CPU,
    /// which gives the same pixels.
    Cuda,
}

impl std::str::FromStr for PreprocessBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "opencv" => Ok(PreprocessBackend::Opencv),
            "kernels" => Ok(PreprocessBackend::Kernels),
            "cuda" => Ok(PreprocessBackend::Cuda),
            other => Err(format!(
                "unknown preprocessing backend '{other}' (expected opencv, kernels or cuda)"
            )),
        }
    }
}

impl std::fmt::Display for PreprocessBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PreprocessBackend::Opencv => "opencv",
            PreprocessBackend::Kernels => "kernels",
            PreprocessBackend::Cuda => "cuda",
        })
    }
}

/// The GPU.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GpuSettings {
    /// CUDA ordinal of the GPU that runs inference (CUDA and TensorRT
    /// providers), preprocessing and the gallery search: one device for
    /// all, so frames never cross between GPUs.
    pub device_id: i32,
}

/// Keys that were renamed, with their new names and why: `config check`
/// and loading name the new key instead of calling the old one unknown.
pub const RENAMED: [(&str, &str, &str); 3] = [
    ("engine.device_id", "gpu.device_id", "one GPU for inference, preprocessing and search"),
    ("search.device_id", "gpu.device_id", "one GPU for inference, preprocessing and search"),
    (
        "daemon.metrics_port",
        "http.listen",
        "/metrics and /healthz moved onto the daemon's one HTTP server, with the operator's page; http.listen = \"127.0.0.1:<port>\"",
    ),
];

/// What is said of a renamed key.
pub fn renamed(old: &str, new: &str, why: &str) -> String {
    format!("{old} was replaced by {new} ({why}): set {new} instead")
}

/// Preprocessing settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PreprocessSettings {
    /// `opencv`, `kernels` or `cuda` (see [`PreprocessBackend`]).
    pub backend: PreprocessBackend,
}

/// When the whole frame is searched as one more candidate crop.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WholeImage {
    /// Always (PaddleClas `predict_system`).
    #[default]
    Always,
    /// Only when the detector found nothing (PaddleX `pp_shitu_v2`).
    WhenEmpty,
    /// Never.
    Never,
}

impl std::str::FromStr for WholeImage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(WholeImage::Always),
            "when_empty" | "when-empty" => Ok(WholeImage::WhenEmpty),
            "never" => Ok(WholeImage::Never),
            other => Err(format!(
                "unknown whole-image policy '{other}' (expected always, when_empty or never)"
            )),
        }
    }
}

/// Detector settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorSettings {
    /// The PicoDet ONNX model, in either export form.
    pub model: PathBuf,
    /// Keep detections scoring at least this (`Global.threshold`).
    pub threshold: f32,
    /// Keep this many best detections before thresholding (`Global.max_det_results`).
    pub max_results: usize,
    /// Whether the whole frame is also searched.
    pub whole_image: WholeImage,
    /// Most frames per detector call (pre-NMS export only; the NMS export runs
    /// one at a time). 1 on CPU: batching did not raise throughput there but
    /// doubled peak memory per extra frame (docs/BENCHMARKS.md); raise it on GPUs.
    pub max_batch: usize,
    /// The batch TensorRT tunes the detector's kernels for (its optimisation
    /// profile covers 1 to `max_batch`).
    pub opt_batch: usize,
    /// Host-side NMS for the pre-NMS export; defaults equal the graph's `multiclass_nms3`.
    pub nms: NmsSettings,
}

impl Default for DetectorSettings {
    fn default() -> Self {
        DetectorSettings {
            model: PathBuf::from("engines/demo/det_prenms.onnx"),
            threshold: 0.2,
            max_results: 5,
            whole_image: WholeImage::Always,
            max_batch: 1,
            opt_batch: 1,
            nms: NmsSettings::default(),
        }
    }
}

/// Parameters of the detector's multi-class NMS.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NmsSettings {
    /// Candidates scoring at or below this are dropped first.
    pub score_threshold: f32,
    /// Best candidates per class considered.
    pub top_k: usize,
    /// Suppress a box whose IoU with a kept box exceeds this.
    pub iou_threshold: f32,
    /// Boxes kept per image over all classes.
    pub keep_top_k: usize,
}

impl Default for NmsSettings {
    fn default() -> Self {
        NmsSettings {
            score_threshold: 0.025,
            top_k: 1000,
            iou_threshold: 0.6,
            keep_top_k: 100,
        }
    }
}

/// Feature extractor settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedderSettings {
    /// The PPLCNetV2 ONNX model.
    pub model: PathBuf,
    /// Most crops per embedder call. Crops of all frames in a request share batches.
    pub max_batch: usize,
    /// The batch TensorRT tunes the embedder's kernels for: a frame gives
    /// up to `detector.max_results` boxes plus the whole image.
    pub opt_batch: usize,
}

impl Default for EmbedderSettings {
    fn default() -> Self {
        EmbedderSettings {
            model: PathBuf::from("engines/demo/rec.onnx"),
            max_batch: 16,
            opt_batch: 6,
        }
    }
}

/// Search settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SearchSettings {
    /// The gallery directory (made by `shitud gallery build`).
    pub index: PathBuf,
    /// Neighbours fetched per crop (`IndexProcess.return_k`); only the best is reported.
    pub return_k: usize,
    /// A crop is reported when its best match scores at least this (`IndexProcess.score_thres`).
    pub score_threshold: f32,
    /// Recognition NMS: suppress a result whose IoU with a better one exceeds this (`Global.rec_nms_thresold`).
    pub rec_nms_threshold: f32,
    /// IVF lists probed per query. PaddleClas leaves faiss's default of 1, which
    /// misses neighbours as soon as the gallery has several lists.
    pub nprobe: usize,
    /// HNSW candidate list size at search time. faiss's default (16), which
    /// PaddleClas keeps, found the true best match for 57 % of queries at
    /// 100 k items (docs/BENCHMARKS.md).
    pub ef_search: usize,
    /// Fold the gallery's change log into a new snapshot once it holds this many records.
    pub compact_after: usize,
    /// Where the gallery is searched: `cpu` (faiss, the gallery's own index
    /// kind) or `cuda` (exact search in GPU memory, any index kind; falls back
    /// to the CPU, with an error in the log, where no GPU can be used).
    pub device: SearchDevice,
    /// How `device = "cuda"` holds the gallery in GPU memory.
    pub gpu_precision: GpuPrecision,
}

/// How the GPU search stores the gallery matrix.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GpuPrecision {
    /// 4 bytes a value: the same scores as faiss, to float rounding.
    #[default]
    Fp32,
    /// 2 bytes a value: half the memory and half the bytes read per search
    /// (the search is bound by reading the matrix). Scores move by about
    /// 1e-3; the files keep full precision.
    Fp16,
}

/// Where the gallery is searched.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SearchDevice {
    /// faiss on the CPU.
    #[default]
    Cpu,
    /// Exact inner-product search in GPU memory (cuBLAS + a top-k kernel).
    Cuda,
}

impl Default for SearchSettings {
    fn default() -> Self {
        SearchSettings {
            index: PathBuf::from("engines/demo/gallery"),
            return_k: 5,
            score_threshold: 0.5,
            rec_nms_threshold: 0.05,
            nprobe: 8,
            ef_search: 128,
            compact_after: 1000,
            device: SearchDevice::Cpu,
            gpu_precision: GpuPrecision::Fp32,
        }
    }
}

/// The MQTT protocol version spoken to the broker.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// MQTT 5: response topics, correlation data, user properties.
    #[default]
    V5,
    /// MQTT 3.1.1, for old brokers: JSON requests, answers on `P/result`
    /// with their `request_id` (no response topic, correlation data or user
    /// properties in that protocol).
    V311,
}

/// Client-certificate and server-verification files for TLS.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// Turn TLS on. The broker's certificate is checked against `ca_file`.
    pub enabled: bool,
    /// PEM file with the certificate authorities trusted for the broker.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain), for brokers that require one.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub client_key: Option<PathBuf>,
}

/// The broker connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSettings {
    /// Broker host name or address.
    pub host: String,
    /// Broker port (1883 plain, 8883 TLS by convention).
    pub port: u16,
    /// Protocol version.
    pub protocol: Protocol,
    /// Topic prefix: topics are `<prefix>/<device_id>/…`.
    pub prefix: String,
    /// This box's name in the topics. Empty: the host name.
    pub device_id: String,
    /// MQTT client id. Empty: `shitud-<device_id>`. It must be stable across
    /// restarts: the broker keeps the session (and the requests that arrive
    /// while the daemon is down) under it.
    pub client_id: String,
    /// Username, if the broker wants one.
    pub username: Option<String>,
    /// Password. Prefer `password_file` so the secret stays out of the config.
    pub password: Option<String>,
    /// File whose first line is the password.
    pub password_file: Option<PathBuf>,
    /// TLS.
    pub tls: TlsSettings,
    /// Keep-alive interval, seconds.
    pub keep_alive_s: u64,
    /// How long the broker keeps the session while the daemon is away, seconds.
    pub session_expiry_s: u32,
    /// Subscribe to `$share/<group>/…` so that several boxes split one
    /// request stream. Empty: a plain subscription.
    pub shared_group: String,
    /// The sorting line this box serves (one topic level). Set, the box also
    /// takes requests from `<prefix>/line/<line>/recognize`, shared with the
    /// line's other boxes (`$share/<line>/…`: each request goes to one box),
    /// and applies every gallery change published on
    /// `<prefix>/line/<line>/gallery/add|remove`. Empty: box topics only.
    pub line: String,
    /// Most unacknowledged requests the broker may push at once (MQTT 5
    /// Receive Maximum). Beyond it the broker queues them.
    pub receive_maximum: u16,
    /// First reconnect delay, milliseconds; doubles up to `reconnect_max_ms`.
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay, milliseconds.
    pub reconnect_max_ms: u64,
}

impl Default for MqttSettings {
    fn default() -> Self {
        MqttSettings {
            host: "localhost".into(),
            port: 1883,
            protocol: Protocol::V5,
            prefix: "shitu".into(),
            device_id: String::new(),
            client_id: String::new(),
            username: None,
            password: None,
            password_file: None,
            tls: TlsSettings::default(),
            keep_alive_s: 30,
            session_expiry_s: 86_400,
            shared_group: String::new(),
            line: String::new(),
            receive_maximum: 256,
            reconnect_min_ms: 200,
            reconnect_max_ms: 10_000,
        }
    }
}

/// How `shitud run` takes, batches and answers requests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonSettings {
    /// Most requests recognised together. 1 turns batching off.
    pub max_batch: usize,
    /// How long the first request of a batch waits for others, milliseconds.
    pub max_wait_ms: u64,
    /// Requests waiting for the pipeline beyond this get a `busy` answer at once.
    pub queue_capacity: usize,
    /// Largest request payload accepted, bytes (checked before any parsing).
    pub max_payload_bytes: usize,
    /// Folders a request may name an image in (`"path"` requests). Empty: path requests are refused.
    pub allowed_dirs: Vec<PathBuf>,
    /// Where answers wait while the broker is unreachable.
    pub spool_dir: PathBuf,
    /// Most answers kept in the spool; beyond it the oldest are dropped, loudly.
    pub spool_max_messages: usize,
    /// Most bytes kept in the spool.
    pub spool_max_bytes: u64,
    /// How many recent request ids are remembered to drop redelivered duplicates.
    pub dedup_window: usize,
    /// Bytes of recent answers kept to answer a repeated request again.
    pub answer_cache_bytes: usize,
    /// Seconds to wait for the broker before telling systemd "ready, degraded".
    pub ready_timeout_s: u64,
    /// A batch running longer than this counts as hung: watchdog pings stop.
    pub stall_after_s: u64,
    /// Seconds between `status` updates.
    pub status_interval_s: u64,
    /// Seconds an answer the broker took with "no matching subscribers"
    /// (MQTT 5 reason 0x10: the requester has not subscribed again yet, say
    /// after a broker restart) is kept and sent again with backoff, before
    /// it counts as undeliverable.
    pub answer_ttl_s: u64,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        DaemonSettings {
            max_batch: 4,
            max_wait_ms: 5,
            queue_capacity: 64,
            max_payload_bytes: 16 << 20,
            allowed_dirs: Vec::new(),
            spool_dir: PathBuf::from("spool"),
            spool_max_messages: 10_000,
            spool_max_bytes: 256 << 20,
            dedup_window: 65_536,
            answer_cache_bytes: 16 << 20,
            ready_timeout_s: 30,
            stall_after_s: 60,
            status_interval_s: 30,
            answer_ttl_s: 120,
        }
    }
}

impl Settings {
    /// Loads the layers: built-in defaults, the main file (`file`, else
    /// [`layers::SYSTEM_CONFIG`] when it exists), the `conf.d/*.toml` beside
    /// it in name order, then `SHITU__SECTION__KEY` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Settings> {
        if let Some(file) = file {
            if !file.exists() {
                return Err(Error::Config(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
        }
        let files = layers::files(file);
        let mut builder = config::Config::builder().add_source(
            config::Config::try_from(&Settings::default())
                .map_err(|e| Error::Config(e.to_string()))?,
        );
        for f in &files {
            builder = builder
                .add_source(config::File::from(f.as_path()).format(config::FileFormat::Toml));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("SHITU")
                .prefix_separator("__")
                .separator("__"),
        );
        let built = builder.build();
        if let Ok(c) = &built {
            if let Some((old, new, why)) = RENAMED
                .iter()
                .find(|(old, _, _)| c.get::<config::Value>(old).is_ok())
            {
                return Err(Error::Config(renamed(old, new, why)));
            }
        }
        let settings: Settings = built.and_then(|c| c.try_deserialize()).map_err(|e| {
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            Error::Config(if names.is_empty() {
                e.to_string()
            } else {
                format!(
                    "{}: {e} (`shitud config check` names the file and line)",
                    names.join(", ")
                )
            })
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks ranges that serde cannot; the first problem, if any.
    pub fn validate(&self) -> Result<()> {
        match self.problems().into_iter().next() {
            Some((key, message)) => Err(Error::Config(format!("{key} {message}"))),
            None => Ok(()),
        }
    }

    /// Every range or consistency problem, as (setting, what is wrong).
    /// A source's setting is named with its index: `sources[1].uri`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut need = |ok: bool, key: &'static str, what: &str| {
            if !ok {
                out.push((key.to_string(), what.to_string()));
            }
        };
        need(
            self.detector.max_batch > 0,
            "detector.max_batch",
            "must be at least 1",
        );
        need(
            self.gpu.device_id >= 0,
            "gpu.device_id",
            "must be a CUDA ordinal: 0 or more",
        );
        let one_level = |s: &str| !s.contains(['/', '+', '#', '$']);
        need(
            one_level(&self.mqtt.line),
            "mqtt.line",
            "must be one topic level: no '/', '+', '#' or '$'",
        );
        need(
            one_level(&self.mqtt.device_id),
            "mqtt.device_id",
            "must be one topic level: no '/', '+', '#' or '$'",
        );
        need(
            self.ota.keep_versions >= 2,
            "ota.keep_versions",
            "must be at least 2 (the current version and the one a rollback goes to)",
        );
        need(
            self.ota.root.as_os_str().is_empty() || !self.ota.trusted_keys.is_empty(),
            "ota.trusted_keys",
            "ota.root is set but no key is trusted: no bundle could be applied",
        );
        need(
            self.ota.watch_dir.as_os_str().is_empty() || !self.ota.root.as_os_str().is_empty(),
            "ota.watch_dir",
            "needs ota.root",
        );
        need(
            self.ota.download_dir.as_os_str().is_empty() || !self.ota.root.as_os_str().is_empty(),
            "ota.download_dir",
            "needs ota.root",
        );
        for key in &self.ota.trusted_keys {
            if let Err(e) = crate::ota::keys::read_public(key) {
                need(false, "ota.trusted_keys", &e.to_string());
            }
        }
        need(
            self.embedder.max_batch > 0,
            "embedder.max_batch",
            "must be at least 1",
        );
        need(
            (1..=self.detector.max_batch).contains(&self.detector.opt_batch),
            "detector.opt_batch",
            "must be within 1..detector.max_batch",
        );
        need(
            (1..=self.embedder.max_batch).contains(&self.embedder.opt_batch),
            "embedder.opt_batch",
            "must be within 1..embedder.max_batch",
        );
        need(
            self.search.return_k > 0,
            "search.return_k",
            "must be at least 1",
        );
        need(
            (0.0..=1.0).contains(&self.detector.threshold),
            "detector.threshold",
            "must be within 0..1",
        );
        need(
            self.input.max_pixels > 0,
            "input.max_pixels",
            "must be positive",
        );
        need(
            self.daemon.max_batch > 0,
            "daemon.max_batch",
            "must be at least 1",
        );
        need(
            self.daemon.queue_capacity > 0,
            "daemon.queue_capacity",
            "must be at least 1",
        );
        need(
            self.daemon.stall_after_s > 0,
            "daemon.stall_after_s",
            "must be at least 1",
        );
        need(
            self.mqtt.receive_maximum > 0,
            "mqtt.receive_maximum",
            "must be at least 1",
        );
        need(
            !self.mqtt.prefix.is_empty() && !self.mqtt.prefix.contains(['+', '#']),
            "mqtt.prefix",
            "must be a non-empty topic level without wildcards",
        );
        need(
            !self.mqtt.device_id.contains(['+', '#', '/']),
            "mqtt.device_id",
            "must be one topic level, without wildcards or /",
        );
        need(
            self.mqtt.reconnect_min_ms <= self.mqtt.reconnect_max_ms,
            "mqtt.reconnect_min_ms",
            "must not exceed mqtt.reconnect_max_ms",
        );
        need(
            !(self.mqtt.password.is_some() && self.mqtt.password_file.is_some()),
            "mqtt.password",
            "and mqtt.password_file are mutually exclusive",
        );
        need(
            self.mqtt.username.is_some()
                || (self.mqtt.password.is_none() && self.mqtt.password_file.is_none()),
            "mqtt.username",
            "is needed with a password",
        );
        need(
            self.mqtt.tls.client_cert.is_some() == self.mqtt.tls.client_key.is_some(),
            "mqtt.tls.client_cert",
            "and mqtt.tls.client_key go together",
        );
        need(
            !self.mqtt.tls.enabled || self.mqtt.tls.ca_file.is_some(),
            "mqtt.tls.ca_file",
            "is needed when mqtt.tls.enabled",
        );
        need(
            self.capture.heartbeat_s > 0,
            "capture.heartbeat_s",
            "must be at least 1",
        );
        need(
            self.capture.ring_frames > 0,
            "capture.ring_frames",
            "must be at least 1",
        );
        need(
            self.capture.stall_ms > 0,
            "capture.stall_ms",
            "must be at least 1",
        );
        need(
            self.capture.reconnect_min_ms > 0
                && self.capture.reconnect_min_ms <= self.capture.reconnect_max_ms,
            "capture.reconnect_min_ms",
            "must be at least 1 and not exceed capture.reconnect_max_ms",
        );
        const HOUR_MS: u64 = 3_600_000;
        for (key, value, most) in [
            ("capture.deadline_ms", self.capture.deadline_ms, HOUR_MS),
            (
                "capture.max_skew_ms",
                self.capture.max_skew_ms,
                24 * HOUR_MS,
            ),
            ("capture.stall_ms", self.capture.stall_ms, HOUR_MS),
            (
                "capture.reconnect_max_ms",
                self.capture.reconnect_max_ms,
                HOUR_MS,
            ),
            ("capture.heartbeat_s", self.capture.heartbeat_s, 86_400),
        ] {
            if value > most {
                out.push((key.to_string(), format!("{value} is over the most, {most}")));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, source) in self.sources.iter().enumerate() {
            let key = |k: &str| format!("sources[{i}].{k}");
            // A topic level, a folder name (kept frames) and a thread name.
            let name_ok = (1..=64).contains(&source.name.len())
                && source
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !name_ok {
                out.push((
                    key("name"),
                    format!(
                        "{:?} must be 1 to 64 letters, digits, '-' or '_'",
                        source.name
                    ),
                ));
            } else if !seen.insert(source.name.as_str()) {
                out.push((
                    key("name"),
                    format!(
                        "{:?} names an earlier source too; names must be unique",
                        source.name
                    ),
                ));
            }
            if !(source.fps.is_finite() && (0.0..=60.0).contains(&source.fps)) {
                out.push((
                    key("fps"),
                    format!("{} must be within 0 (off) and 60", source.fps),
                ));
            }
            if let Err(e) = crate::input::camera::check_uri(&source.uri) {
                out.push((key("uri"), e));
            }
        }
        out.extend(self.http.problems());
        out
    }

    /// Files the settings name that must exist, as (setting, what is wrong).
    /// Not part of [`Settings::validate`]: commands that build a gallery or
    /// run a benchmark need no gallery yet.
    pub fn missing_files(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut must = |path: Option<&Path>, key: &'static str, dir: bool, hint: &str| {
            if let Some(p) = path {
                let ok = if dir { p.is_dir() } else { p.is_file() };
                if !ok {
                    out.push((
                        key,
                        format!(
                            "{}: no such {}{hint}",
                            p.display(),
                            if dir { "directory" } else { "file" }
                        ),
                    ));
                }
            }
        };
        must(Some(&self.detector.model), "detector.model", false, "");
        must(Some(&self.embedder.model), "embedder.model", false, "");
        // The one file a fresh checkout lacks: say how to make it.
        must(
            Some(&self.search.index),
            "search.index",
            true,
            "; a gallery is made by `shitud gallery build` \
             (scripts/demo.sh builds the demo one, engines/demo/gallery)",
        );
        must(
            self.engine.ort_library.as_deref(),
            "engine.ort_library",
            false,
            "",
        );
        must(
            self.mqtt.password_file.as_deref(),
            "mqtt.password_file",
            false,
            "",
        );
        if self.mqtt.tls.enabled {
            must(
                self.mqtt.tls.ca_file.as_deref(),
                "mqtt.tls.ca_file",
                false,
                "",
            );
            must(
                self.mqtt.tls.client_cert.as_deref(),
                "mqtt.tls.client_cert",
                false,
                "",
            );
            must(
                self.mqtt.tls.client_key.as_deref(),
                "mqtt.tls.client_key",
                false,
                "",
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_reference_parameters() {
        let s = Settings::default();
        assert_eq!(s.detector.threshold, 0.2);
        assert_eq!(s.detector.max_results, 5);
        assert_eq!(s.search.return_k, 5);
        assert_eq!(s.search.score_threshold, 0.5);
        assert_eq!(s.search.rec_nms_threshold, 0.05);
        assert_eq!(s.detector.whole_image, WholeImage::Always);
    }

    #[test]
    fn file_overrides_defaults_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[detector]\nthreshold = 0.3\nwhole_image = \"when_empty\"\n",
        )
        .unwrap();
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.detector.threshold, 0.3);
        assert_eq!(s.detector.whole_image, WholeImage::WhenEmpty);
        assert_eq!(s.search.return_k, 5);

        std::fs::write(&path, "[detector]\nthreshhold = 0.3\n").unwrap();
        let err = Settings::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("threshhold"), "{err}");
    }

    #[test]
    fn shipped_config_file_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/shitu-edge.toml");
        assert_eq!(Settings::load(Some(&path)).unwrap(), Settings::default());
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = Settings::load(Some(Path::new("/nonexistent/shitu.toml"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/shitu.toml"));
    }
}

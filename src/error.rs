//! The library's error type. Every variant names the input it is about, so a
//! message read in a journal is enough to find the file or setting at fault.

use std::path::PathBuf;

/// Errors raised by the recognition library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An image could not be read or decoded.
    #[error("image {name}: {reason}")]
    Image {
        /// The image's path or message name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The ONNX Runtime library could not be found or loaded.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),

    /// A model could not be loaded, or its inputs/outputs are not what the stage expects.
    #[error("model {path}: {reason}")]
    Model {
        /// The model file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Inference failed at run time.
    #[error("inference in {stage}: {source}")]
    Inference {
        /// The stage (`detector`, `embedder`).
        stage: &'static str,
        /// The runtime's error.
        #[source]
        source: ort::Error,
    },

    /// The gallery (index directory) is missing, corrupt or does not fit the model.
    #[error("gallery {path}: {reason}")]
    Gallery {
        /// The index directory or list file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A camera source cannot be used: its URI or pipeline is wrong, or
    /// GStreamer refused it.
    #[error("source {name}: {reason}")]
    Source {
        /// The source's name (or its URI, before it has one).
        name: String,
        /// What is wrong, and what to do about it.
        reason: String,
    },

    /// The vector index failed.
    #[error("vector index: {0}")]
    Index(String),

    /// An update bundle is malformed, unsigned, untrusted, tampered with,
    /// truncated, or not for this box.
    #[error("bundle {path}: {reason}")]
    Bundle {
        /// The bundle file (or key file).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The TensorRT engine cache folder cannot be used.
    #[error("engine cache {path}: {reason}")]
    EngineCache {
        /// The cache folder or its manifest.
        path: PathBuf,
        /// What is wrong, and what to do about it.
        reason: String,
    },

    /// A GPU stage (preprocessing kernels, device buffers, the GPU search)
    /// could not start or failed; the message names the stage and the device.
    #[error("GPU: {0}")]
    Gpu(String),

    /// Frames or boxes the preprocessing cannot take (a box outside its
    /// frame, a buffer of the wrong size).
    #[error("preprocessing: {0}")]
    Preprocess(String),

    /// An update cannot be applied or rolled back (already current, nothing
    /// to go back to, an untrusted key), said as the operator needs it.
    #[error("update: {0}")]
    Ota(String),

    /// A JSON document could not be written or read.
    #[error("{what}: {source}")]
    Json {
        /// What was being written or read.
        what: String,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },

    /// A setting is missing or out of range.
    #[error("config: {0}")]
    Config(String),

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// An [`Error::Image`] for the image called `name`.
    pub fn image(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Image {
            name: name.into(),
            reason: reason.into(),
        }
    }

    /// An [`Error::Model`] for the model at `path`.
    pub fn model(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Model {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// An [`Error::EngineCache`] for the cache at `path`.
    pub fn engine_cache(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::EngineCache {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// An [`Error::Json`] about `what`.
    pub fn json(what: impl Into<String>, source: serde_json::Error) -> Self {
        Error::Json {
            what: what.into(),
            source,
        }
    }

    /// An [`Error::Gallery`] for the gallery at `path`.
    pub fn gallery(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Gallery {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

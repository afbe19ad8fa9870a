//! shitu-edge: PP-ShiTuV2 product recognition on ONNX Runtime and faiss.
//!
//! The modules follow the data flow, and each stage depends only on the ones
//! before it:
//!
//! [`input`] → [`preprocess`] → [`engine`] → [`detect`] / [`embed`] → [`search`] → [`report`]
//!
//! [`pipeline::Pipeline`] runs them in order; [`enroll`] builds galleries;
//! [`cli`] is the `shitud` command line, and [`daemon`] the MQTT service (`shitud run`).
//! [`gpu`] is the platform code the GPU stages share: the device probe and
//! the CUDA sources with the one set of compiler options they are built with.

#![warn(missing_docs)]

pub mod bench;
pub mod bench_mqtt;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod detect;
pub mod embed;
pub mod engine;
pub mod enroll;
pub mod error;
pub mod eval;
pub mod geometry;
pub mod gpu;
pub mod input;
pub mod ota;
pub mod pipeline;
pub mod preprocess;
pub mod report;
pub mod search;

pub use config::Settings;
pub use error::{Error, Result};
pub use pipeline::{Pipeline, Recognized};

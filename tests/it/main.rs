//! The integration tests, as one test binary. Each file was its own binary,
//! and each linked OpenCV, static faiss and ONNX Runtime's bindings: linking
//! them was most of CI's build time. Run one group with its module path:
//! `cargo test --profile ci --test it daemon_mqtt::`.

mod common;

mod bad_input;
mod browser;
mod cameras;
mod config_cli;
mod daemon_mqtt;
mod engine_providers;
mod eval_cli;
mod frame_pool;
mod gallery_crash;
mod gpu;
mod http_page;
mod import_paddleclas;
mod nvrtc;
mod ota_apply;
mod ota_bundle;
mod outbox_backpressure;
mod parity;
mod preprocess_kernels;
mod recognize_cli;
mod systemd_boot;
mod systemd_notify;
mod systemd_unit;
mod worker_jobs;
mod yocto_layer;

//! The pipeline thread: takes jobs from the bounded queue, gathers
//! recognise requests that arrive together into one batch (up to
//! `daemon.max_batch`, waiting at most `daemon.max_wait_ms` for the batch to
//! fill), and answers each request through [`Shared::reply`].
//!
//! One thread owns the [`Pipeline`]: inference already uses every core, and
//! gallery changes are then naturally serialised with searches.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::mqtt::Delivery;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::answer::{self, ErrorCode, GalleryAnswer, RecognizeAnswer, Timings, Versions};
use super::request::{resolve_path, GalleryCommand, ImageSource};
use super::Shared;
use crate::config::{InputSettings, Provider};
use crate::input::{self, Frame};
use crate::pipeline::{Pipeline, Query};
use crate::Error;

/// Where and to whom an answer goes.
#[derive(Debug, Clone)]
pub struct ReplyTo {
    /// Answer topic: the request's response topic, or `P/result`.
    pub topic: String,
    /// MQTT 5 correlation data to copy back.
    pub correlation: Option<Bytes>,
    /// The request's id.
    pub request_id: String,
    /// The delivery to acknowledge once the answer is with the broker.
    pub delivery: Option<Delivery>,
    /// When the request arrived.
    pub arrived: Instant,
}

/// Work for the pipeline thread.
#[derive(Debug)]
pub enum Job {
    /// Recognise one image.
    Recognize {
        /// Reply address.
        reply: ReplyTo,
        /// The image.
        image: ImageSource,
        /// Search options.
        query: Query,
    },
    /// Change the gallery.
    Gallery {
        /// Reply address.
        reply: ReplyTo,
        /// The change.
        command: GalleryCommand,
    },
}

/// Fault injection for the watchdog test: with this variable set to `1`, the
/// first batch hangs forever, as a stuck driver call would.
pub const STALL_FAULT_ENV: &str = "SHITU_FAULT_STALL_PIPELINE";

/// How often an idle pipeline thread looks for a pipeline to swap in.
const SWAP_POLL: Duration = Duration::from_millis(50);

/// A new pipeline for the pipeline thread, and where to send the old one.
pub struct Swap {
    /// The new version's pipeline, opened and checked.
    pub pipeline: Pipeline,
    /// Its OTA version (`None`: the config's own files).
    pub version: Option<String>,
    /// Receives the pipeline it replaced.
    pub done: std::sync::mpsc::Sender<Pipeline>,
}

/// Runs until every sender of `jobs` is gone and the queue is empty.
pub fn run(pipeline: Pipeline, jobs: Receiver<Job>, shared: &Shared) {
    serve_jobs(pipeline, jobs, shared);
    shared.health.exited();
}

fn serve_jobs(mut pipeline: Pipeline, jobs: Receiver<Job>, shared: &Shared) {
    let max_batch = shared.settings.daemon.max_batch;
    let max_wait = Duration::from_millis(shared.settings.daemon.max_wait_ms);
    let stall = std::env::var(STALL_FAULT_ENV).is_ok_and(|v| v == "1");
    if stall {
        tracing::warn!("{STALL_FAULT_ENV}=1: the first batch will hang (fault injection)");
    }
    loop {
        // A new version's pipeline, handed over between batches: requests
        // before this point were served by the old one, those after by the new.
        if let Some(swap) = shared.take_swap() {
            let old = std::mem::replace(&mut pipeline, swap.pipeline);
            shared.set_versions(versions(&pipeline, swap.version.clone()));
            tracing::info!(
                version = swap.version.as_deref().unwrap_or("(config)"),
                "pipeline thread: now serving the new version"
            );
            // Dropped by the updater, off this thread.
            let _ = swap.done.send(old);
        }
        let first = match jobs.recv_timeout(SWAP_POLL) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        shared.health.begin();
        if stall {
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        let mut batch = Vec::with_capacity(max_batch);
        let mut gallery = None;
        match first {
            Job::Recognize {
                reply,
                image,
                query,
            } => batch.push((reply, image, query)),
            Job::Gallery { reply, command } => gallery = Some((reply, command)),
        }
        // Gather whatever arrives within max_wait of the first request; a
        // gallery change closes the batch so it applies between searches.
        let deadline = Instant::now() + max_wait;
        while gallery.is_none() && batch.len() < max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match jobs.recv_timeout(left) {
                Ok(Job::Recognize {
                    reply,
                    image,
                    query,
                }) => batch.push((reply, image, query)),
                Ok(Job::Gallery { reply, command }) => gallery = Some((reply, command)),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let taken = batch.len() + usize::from(gallery.is_some());
        shared.queued.fetch_sub(taken, Ordering::Relaxed);
        if !batch.is_empty() {
            recognize_batch(&mut pipeline, batch, shared);
        }
        if let Some((reply, command)) = gallery {
            change_gallery(&mut pipeline, reply, command, shared);
        }
        shared.health.end();
    }
    tracing::info!("pipeline thread: queue drained");
}

/// Versions for answers, from the pipeline as it is now; `bundle` is the OTA version serving.
pub fn versions(pipeline: &Pipeline, bundle: Option<String>) -> Versions {
    let g = pipeline.gallery();
    Versions {
        shitud: env!("CARGO_PKG_VERSION").to_string(),
        detector: pipeline
            .detector()
            .engine()
            .model_sha256()
            .chars()
            .take(16)
            .collect(),
        recognizer: g.manifest().model_sha256.chars().take(16).collect(),
        gallery_seq: g.version(),
        gallery_items: g.len(),
        provider: provider_text(pipeline.providers(), pipeline.settings().engine.provider),
        bundle,
    }
}

/// `cuda`, or `detector cpu, embedder cpu (configured tensorrt)` after a fallback.
fn provider_text((det, emb): (Provider, Provider), configured: Provider) -> String {
    let running = if det == emb {
        det.to_string()
    } else {
        format!("detector {det}, embedder {emb}")
    };
    if det == configured && emb == configured {
        running
    } else {
        format!("{running} (configured {configured})")
    }
}

fn recognize_batch(
    pipeline: &mut Pipeline,
    batch: Vec<(ReplyTo, ImageSource, Query)>,
    shared: &Shared,
) {
    let started = Instant::now();
    let limits = pipeline.settings().input.clone();
    let mut frames = Vec::with_capacity(batch.len());
    let mut accepted = Vec::with_capacity(batch.len());
    for (reply, image, query) in batch {
        let t = Instant::now();
        match load(
            &image,
            &reply.request_id,
            &limits,
            &shared.settings.daemon.allowed_dirs,
        ) {
            Ok((frame, _)) => {
                frames.push(frame);
                accepted.push((reply, query, t.elapsed().as_secs_f64() * 1e3));
            }
            Err((code, message)) => shared.reply_error(reply, code, &message),
        }
    }
    if frames.is_empty() {
        return;
    }
    let queries: Vec<Query> = accepted.iter().map(|(_, q, _)| *q).collect();
    shared.counters.batches.fetch_add(1, Ordering::Relaxed);
    shared.histograms.observe_batch(frames.len());
    // A panic in native code must cost this batch, not the daemon.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        pipeline.recognize_with(&frames, &queries)
    }));
    let n = frames.len();
    match outcome {
        Ok(Ok(results)) => {
            let versions = shared.versions();
            for ((reply, _, decode), r) in accepted.into_iter().zip(results) {
                let mut stages = r.timings;
                stages.decode = decode;
                let timings = Timings {
                    queue: started
                        .saturating_duration_since(reply.arrived)
                        .as_secs_f64()
                        * 1e3,
                    stages,
                    total: reply.arrived.elapsed().as_secs_f64() * 1e3,
                    batch: n,
                };
                shared.histograms.observe(&timings);
                let payload = answer::to_vec(&RecognizeAnswer {
                    request_id: &reply.request_id,
                    ok: true,
                    results: answer::objects(&r),
                    timings_ms: timings,
                    versions: &versions,
                });
                shared.counters.answered.fetch_add(1, Ordering::Relaxed);
                shared.reply(reply, payload);
            }
        }
        Ok(Err(e)) => {
            tracing::error!("batch of {n} failed: {e}");
            for (reply, _, _) in accepted {
                shared.reply_error(
                    reply,
                    ErrorCode::Internal,
                    &format!("recognition failed: {e}"),
                );
            }
        }
        Err(_) => {
            tracing::error!("batch of {n} panicked; answering internal errors and carrying on");
            for (reply, _, _) in accepted {
                shared.reply_error(
                    reply,
                    ErrorCode::Internal,
                    "recognition failed (internal panic; see the daemon log)",
                );
            }
        }
    }
}

fn change_gallery(
    pipeline: &mut Pipeline,
    reply: ReplyTo,
    command: GalleryCommand,
    shared: &Shared,
) {
    let limits = pipeline.settings().input.clone();
    let outcome = catch_unwind(AssertUnwindSafe(
        || -> Result<(Vec<i64>, Vec<i64>), (ErrorCode, String)> {
            match command {
                GalleryCommand::Add {
                    label,
                    image,
                    source,
                    request_id,
                } => {
                    let (frame, bytes) = load(
                        &image,
                        &request_id,
                        &limits,
                        &shared.settings.daemon.allowed_dirs,
                    )?;
                    let sha = hex::encode(Sha256::digest(&bytes));
                    let id = pipeline
                        .enroll(&frame, &label, &source, Some(sha))
                        .map_err(classify)?;
                    tracing::info!(id, label = %label, source = %source, "gallery: item added");
                    Ok((vec![id], vec![]))
                }
                GalleryCommand::Remove { label, ids, .. } => {
                    let ids = match label {
                        Some(l) => {
                            let ids = pipeline.gallery().ids_with_label(&l);
                            if ids.is_empty() {
                                return Err((
                                    ErrorCode::BadRequest,
                                    format!("no gallery item has label {l:?}; nothing was removed"),
                                ));
                            }
                            ids
                        }
                        None => ids,
                    };
                    pipeline.remove(&ids).map_err(classify)?;
                    tracing::info!(?ids, "gallery: items removed");
                    Ok((vec![], ids))
                }
            }
        },
    ));
    shared.set_versions(versions(pipeline, shared.versions().bundle));
    match outcome {
        Ok(Ok((added, removed))) => {
            let v = shared.versions();
            let payload = answer::to_vec(&GalleryAnswer {
                request_id: &reply.request_id,
                ok: true,
                added,
                removed,
                versions: &v,
            });
            shared.counters.answered.fetch_add(1, Ordering::Relaxed);
            shared.reply(reply, payload);
        }
        Ok(Err((code, message))) => shared.reply_error(reply, code, &message),
        Err(_) => shared.reply_error(
            reply,
            ErrorCode::Internal,
            "gallery change failed (internal panic; see the daemon log)",
        ),
    }
}

fn classify(e: Error) -> (ErrorCode, String) {
    let code = match &e {
        Error::Gallery { .. } => ErrorCode::BadRequest,
        Error::Image { .. } => ErrorCode::DecodeFailed,
        _ => ErrorCode::Internal,
    };
    (code, e.to_string())
}

/// Reads (for path requests) and decodes a request's image, with the limits
/// checked on the header before any pixel is decoded.
fn load(
    image: &ImageSource,
    id: &str,
    limits: &InputSettings,
    allowed: &[std::path::PathBuf],
) -> Result<(Frame, Vec<u8>), (ErrorCode, String)> {
    let bytes = match image {
        ImageSource::Bytes(b) => b.clone(),
        ImageSource::Path(p) => {
            let real = resolve_path(p, allowed)?;
            let len = std::fs::metadata(&real).map(|m| m.len()).map_err(|e| {
                (
                    ErrorCode::BadRequest,
                    format!("cannot read {}: {e}", p.display()),
                )
            })?;
            if len > limits.max_file_bytes {
                return Err((
                    ErrorCode::TooLarge,
                    format!(
                        "{} is {len} bytes, over input.max_file_bytes ({})",
                        p.display(),
                        limits.max_file_bytes
                    ),
                ));
            }
            std::fs::read(&real).map_err(|e| {
                (
                    ErrorCode::BadRequest,
                    format!("cannot read {}: {e}", p.display()),
                )
            })?
        }
    };
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err((
            ErrorCode::TooLarge,
            format!(
                "image is {} bytes, over input.max_file_bytes ({})",
                bytes.len(),
                limits.max_file_bytes
            ),
        ));
    }
    if let Ok(Some(h)) = input::sniff(&bytes) {
        let pixels = u64::from(h.width) * u64::from(h.height);
        if pixels > limits.max_pixels {
            return Err((
                ErrorCode::TooLarge,
                format!(
                    "image is {}x{}, over input.max_pixels ({})",
                    h.width, h.height, limits.max_pixels
                ),
            ));
        }
    }
    let frame = input::decode(format!("request {id}"), &bytes, limits)
        .map_err(|e| (ErrorCode::DecodeFailed, e.to_string()))?;
    Ok((frame, bytes))
}

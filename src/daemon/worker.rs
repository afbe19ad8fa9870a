//! The pipeline thread: takes jobs from the bounded queue, gathers
//! recognise jobs that arrive together into one batch (up to
//! `daemon.max_batch`, waiting at most `daemon.max_wait_ms` for the batch to
//! fill), and hands each job's [`Outcome`] to the job's own [`Reply`].
//!
//! A job knows nothing of where it came from: an MQTT request, a camera
//! trigger and a test submit the same [`Job`], each with its own reply
//! channel, and turn the typed outcome into their own answer.
//!
//! One thread owns the [`Pipeline`]: inference already uses every core, and
//! gallery changes are then naturally serialised with searches.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::answer::{ErrorCode, Timings, Versions};
use super::line_sync::LineStatePayload;
use super::request::{resolve_path, GalleryCommand, ImageSource};
use crate::config::{DaemonSettings, InputSettings, Provider};
use crate::gpu::FramePool;
use crate::input::{self, Frame};
use crate::pipeline::{Pipeline, Query, Recognized};
use crate::search::line::{Change, ChangeId, Logged};
use crate::search::thumbs::Thumbs;
use crate::search::unknown::UnknownStore;
use crate::Error;

/// What a job asks of the pipeline.
#[derive(Debug)]
pub enum Work {
    /// Recognise one image.
    Recognize {
        /// The image.
        image: ImageSource,
        /// Search options.
        query: Query,
    },
    /// Change the gallery (a command on the box's own topic).
    Gallery(GalleryCommand),
    /// Apply a gallery change published on the line.
    LineGallery {
        /// Its line-unique id.
        change_id: ChangeId,
        /// What it does.
        command: GalleryCommand,
    },
    /// Merge the line's retained gallery state (`None`: the line has none),
    /// and say what this box should publish.
    LineSync {
        /// The retained `L/gallery/state` payload.
        state: Option<bytes::Bytes>,
    },
    /// List gallery items (the operator's page), newest first: those whose
    /// label contains `label` (any case), at most `limit`.
    ListGallery {
        /// Part of a label; empty lists all.
        label: String,
        /// Most items returned.
        limit: usize,
    },
}

/// What became of a job, typed; the submitter makes its answer of it.
#[derive(Debug)]
pub enum Outcome {
    /// The image was recognised.
    Recognized {
        /// What the pipeline found.
        result: Box<Recognized>,
        /// Where the time went.
        timings: Timings,
        /// What answered.
        versions: Versions,
    },
    /// The gallery changed.
    GalleryChanged {
        /// Ids of the items added.
        added: Vec<i64>,
        /// Ids of the items removed.
        removed: Vec<i64>,
        /// The line change applied (line commands).
        change_id: Option<ChangeId>,
        /// The line change had been applied before: nothing changed.
        already_applied: bool,
        /// The versions after the change.
        versions: Versions,
    },
    /// Gallery items, as asked for.
    GalleryItems {
        /// The items, newest first.
        items: Vec<crate::search::gallery::GalleryItem>,
        /// How many matched (`items` stops at the limit).
        matched: usize,
    },
    /// The line's state was merged (what was new is logged there).
    LineSynced {
        /// This box's state, to publish: it holds changes the line's lacked.
        publish: Option<LineStatePayload>,
    },
    /// The job failed, or was refused.
    Failed {
        /// The kind of failure, as answers name it.
        code: ErrorCode,
        /// What went wrong, for the requester.
        message: String,
    },
}

impl Outcome {
    /// A failure.
    pub fn failed(code: ErrorCode, message: impl Into<String>) -> Outcome {
        Outcome::Failed {
            code,
            message: message.into(),
        }
    }
}

/// A job's reply channel: called once with its outcome, on the pipeline
/// thread (or wherever the job is refused). It must not block.
pub struct Reply(Box<dyn FnOnce(Outcome) + Send>);

impl Reply {
    /// A reply that calls `f`.
    pub fn new(f: impl FnOnce(Outcome) + Send + 'static) -> Reply {
        Reply(Box::new(f))
    }

    /// A reply into a channel, and its receiving end (tests, cameras).
    pub fn channel() -> (Reply, std::sync::mpsc::Receiver<Outcome>) {
        let (tx, rx) = std::sync::mpsc::channel();
        (
            Reply::new(move |o| {
                let _ = tx.send(o);
            }),
            rx,
        )
    }

    /// Delivers the outcome.
    pub fn send(self, outcome: Outcome) {
        (self.0)(outcome)
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reply")
    }
}

/// Work for the pipeline thread, with where its outcome goes.
#[derive(Debug)]
pub struct Job {
    /// The request's id, for logs.
    pub request_id: String,
    /// When the request arrived (its answer's `queue` and `total` times count from here).
    pub arrived: Instant,
    /// What to do.
    pub work: Work,
    /// Where the outcome goes.
    pub reply: Reply,
}

/// What the pipeline thread needs from whoever runs it (the daemon's
/// shared state; a test's stand-in): settings, health beats, counters and
/// the versions it reports. No transport: answers go through each job's
/// [`Reply`].
pub trait Host: Sync {
    /// `daemon.max_batch`, `daemon.max_wait_ms`, `daemon.allowed_dirs`.
    fn daemon_settings(&self) -> &DaemonSettings;
    /// A new version's pipeline waiting to be swapped in, if any.
    fn take_swap(&self) -> Option<Swap>;
    /// The versions answers report.
    fn versions(&self) -> Versions;
    /// Sets them (after a swap or a gallery change).
    fn set_versions(&self, v: Versions);
    /// A batch (or gallery change) begins: the watchdog's stall clock starts.
    fn begin(&self);
    /// It ended.
    fn end(&self);
    /// The thread is ending.
    fn exited(&self);
    /// `n` jobs left the queue.
    fn taken(&self, n: usize);
    /// A batch of `n` frames goes to the pipeline.
    fn batch(&self, n: usize);
    /// Where unknown items are kept (`capture.unknown_dir`), if they are.
    fn unknown_store(&self) -> Option<&UnknownStore> {
        None
    }
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
pub fn run(pipeline: Pipeline, jobs: Receiver<Job>, shared: &dyn Host) {
    serve_jobs(pipeline, jobs, shared);
    shared.exited();
}

fn serve_jobs(mut pipeline: Pipeline, jobs: Receiver<Job>, shared: &dyn Host) {
    let max_batch = shared.daemon_settings().max_batch.max(1);
    let max_wait = Duration::from_millis(shared.daemon_settings().max_wait_ms);
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
        shared.begin();
        if stall {
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        let mut batch = Vec::with_capacity(max_batch);
        let mut gallery = None;
        take(first, &mut batch, &mut gallery);
        // Gather whatever arrives within max_wait of the first request; a
        // gallery change closes the batch so it applies between searches.
        let deadline = Instant::now() + max_wait;
        while gallery.is_none() && batch.len() < max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match jobs.recv_timeout(left) {
                Ok(job) => take(job, &mut batch, &mut gallery),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let taken = batch.len() + usize::from(gallery.is_some());
        shared.taken(taken);
        if !batch.is_empty() {
            recognize_batch(&mut pipeline, batch, shared);
        }
        match gallery {
            Some((request_id, Work::Gallery(command), reply)) => {
                change_gallery(&mut pipeline, &request_id, command, reply, shared)
            }
            Some((request_id, Work::LineGallery { change_id, command }, reply)) => {
                change_line_gallery(
                    &mut pipeline,
                    &request_id,
                    change_id,
                    command,
                    reply,
                    shared,
                )
            }
            Some((_, Work::LineSync { state }, reply)) => {
                sync_line(&mut pipeline, state, reply, shared)
            }
            Some((_, Work::ListGallery { label, limit }, reply)) => {
                reply.send(list_gallery(&pipeline, &label, limit))
            }
            Some((_, Work::Recognize { .. }, _)) | None => {}
        }
        shared.end();
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
        device_id: String::new(),
        line: None,
        line_gallery: (!g.line().is_empty()).then(|| g.line().version()),
        gallery_dir: g.dir().to_path_buf(),
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

/// A gallery change (any work but recognising), taken from the queue.
type GalleryJob = (String, Work, Reply);

/// Sorts a job into the batch being gathered, or as the gallery change that closes it.
fn take(job: Job, batch: &mut Vec<Pending>, gallery: &mut Option<GalleryJob>) {
    match job.work {
        Work::Recognize { image, query } => batch.push(Pending {
            request_id: job.request_id,
            arrived: job.arrived,
            image,
            query,
            reply: job.reply,
        }),
        work => *gallery = Some((job.request_id, work, job.reply)),
    }
}

/// A recognise job waiting for its batch.
struct Pending {
    request_id: String,
    arrived: Instant,
    image: ImageSource,
    query: Query,
    reply: Reply,
}

fn recognize_batch(pipeline: &mut Pipeline, batch: Vec<Pending>, shared: &dyn Host) {
    let started = Instant::now();
    let limits = pipeline.settings().input.clone();
    let pool = pipeline.frame_pool();
    let mut frames = Vec::with_capacity(batch.len());
    let mut accepted = Vec::with_capacity(batch.len());
    for job in batch {
        let t = Instant::now();
        match load(
            &job.image,
            &job.request_id,
            (&limits, &pool),
            &shared.daemon_settings().allowed_dirs,
            shared.unknown_store(),
        ) {
            Ok((frame, _)) => {
                frames.push(frame);
                accepted.push((job, t.elapsed().as_secs_f64() * 1e3));
            }
            Err((code, message)) => job.reply.send(Outcome::failed(code, message)),
        }
    }
    if frames.is_empty() {
        return;
    }
    let queries: Vec<Query> = accepted.iter().map(|(j, _)| j.query).collect();
    shared.batch(frames.len());
    // A panic in native code must cost this batch, not the daemon.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        pipeline.recognize_with(&frames, &queries)
    }));
    let n = frames.len();
    match outcome {
        Ok(Ok(results)) => {
            let versions = shared.versions();
            for ((job, decode), r) in accepted.into_iter().zip(results) {
                let mut stages = r.timings;
                stages.decode = decode;
                let timings = Timings {
                    queue: started.saturating_duration_since(job.arrived).as_secs_f64() * 1e3,
                    stages,
                    total: job.arrived.elapsed().as_secs_f64() * 1e3,
                    batch: n,
                };
                job.reply.send(Outcome::Recognized {
                    result: Box::new(r),
                    timings,
                    versions: versions.clone(),
                });
            }
        }
        Ok(Err(e)) => {
            tracing::error!("batch of {n} failed: {e}");
            for (job, _) in accepted {
                job.reply.send(Outcome::failed(
                    ErrorCode::Internal,
                    format!("recognition failed: {e}"),
                ));
            }
        }
        Err(_) => {
            tracing::error!("batch of {n} panicked; answering internal errors and carrying on");
            for (job, _) in accepted {
                job.reply.send(Outcome::failed(
                    ErrorCode::Internal,
                    "recognition failed (internal panic; see the daemon log)",
                ));
            }
        }
    }
}

fn change_gallery(
    pipeline: &mut Pipeline,
    request_id: &str,
    command: GalleryCommand,
    reply: Reply,
    shared: &dyn Host,
) {
    let limits = pipeline.settings().input.clone();
    let pool = pipeline.frame_pool();
    let outcome = catch_unwind(AssertUnwindSafe(
        || -> Result<(Vec<i64>, Vec<i64>), (ErrorCode, String)> {
            match command {
                GalleryCommand::Add {
                    label,
                    image,
                    source,
                    request_id,
                } => {
                    let (frame, sha) = load_photo(&image, &request_id, (&limits, &pool), shared)?;
                    let id = pipeline
                        .enroll(&frame, &label, &source, Some(sha))
                        .map_err(classify)?;
                    tracing::info!(id, label = %label, source = %source, "gallery: item added");
                    write_thumb(pipeline, id, &frame);
                    if let (ImageSource::Unknown(u), Some(store)) = (&image, shared.unknown_store())
                    {
                        // Enrolled: it is no longer unknown.
                        if let Err(e) = store.remove(u) {
                            tracing::warn!(unknown_id = %u, "enrolled, but not removed from the unknown items: {e}");
                        }
                    }
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
                    Thumbs::new(pipeline.gallery().dir()).remove(&ids);
                    Ok((vec![], ids))
                }
            }
        },
    ));
    shared.set_versions(versions(pipeline, shared.versions().bundle));
    reply.send(match outcome {
        Ok(Ok((added, removed))) => Outcome::GalleryChanged {
            added,
            removed,
            change_id: None,
            already_applied: false,
            versions: shared.versions(),
        },
        Ok(Err((code, message))) => Outcome::Failed { code, message },
        Err(_) => {
            tracing::error!(request_id, "gallery change panicked");
            Outcome::failed(
                ErrorCode::Internal,
                "gallery change failed (internal panic; see the daemon log)",
            )
        }
    })
}

/// Applies one change published on the line: the feature of an added photo
/// is computed here, then the change is logged and applied once.
fn change_line_gallery(
    pipeline: &mut Pipeline,
    request_id: &str,
    change_id: ChangeId,
    command: GalleryCommand,
    reply: Reply,
    shared: &dyn Host,
) {
    let limits = pipeline.settings().input.clone();
    let pool = pipeline.frame_pool();
    let outcome = catch_unwind(AssertUnwindSafe(
        || -> Result<crate::search::gallery::LineApplied, (ErrorCode, String)> {
            if pipeline.gallery().line().contains(change_id) {
                return Ok(Default::default());
            }
            let mut photo = None;
            let change = match command {
                GalleryCommand::Add {
                    label,
                    image,
                    source,
                    request_id,
                } => {
                    let (frame, sha) = load_photo(&image, &request_id, (&limits, &pool), shared)?;
                    let vector = pipeline.feature(&frame).map_err(classify)?;
                    photo = Some(frame);
                    Change::Add {
                        label,
                        source,
                        sha256: Some(sha),
                        added_unix: crate::search::gallery::unix_now(),
                        vector,
                    }
                }
                GalleryCommand::Remove { label, ids, .. } => Change::Remove { ids, label },
            };
            let applied = pipeline
                .apply_line(vec![Logged { change_id, change }])
                .map_err(classify)?;
            if let (Some(photo), Some(&id)) = (&photo, applied.added.first()) {
                write_thumb(pipeline, id, photo);
            }
            Thumbs::new(pipeline.gallery().dir()).remove(&applied.removed);
            Ok(applied)
        },
    ));
    shared.set_versions(versions(pipeline, shared.versions().bundle));
    reply.send(match outcome {
        Ok(Ok(applied)) => {
            if applied.new > 0 {
                tracing::info!(change = %change_id, added = ?applied.added, removed = ?applied.removed, "line gallery: change applied");
            } else {
                tracing::info!(change = %change_id, "line gallery: change applied before; nothing to do");
            }
            Outcome::GalleryChanged {
                added: applied.added,
                removed: applied.removed,
                change_id: Some(change_id),
                already_applied: applied.new == 0,
                versions: shared.versions(),
            }
        }
        Ok(Err((code, message))) => Outcome::Failed { code, message },
        Err(_) => {
            tracing::error!(request_id, "line gallery change panicked");
            Outcome::failed(
                ErrorCode::Internal,
                "gallery change failed (internal panic; see the daemon log)",
            )
        }
    })
}

/// Keeps a small picture of an enrolled item for the page; a failure
/// only costs the picture.
fn write_thumb(pipeline: &Pipeline, id: i64, photo: &Frame) {
    if let Err(e) = Thumbs::new(pipeline.gallery().dir()).write(id, photo) {
        tracing::warn!(id, "no thumbnail for the new gallery item: {e}");
    }
}

/// Gallery items whose label contains `label`, newest first (by id).
fn list_gallery(pipeline: &Pipeline, label: &str, limit: usize) -> Outcome {
    let needle = label.to_lowercase();
    let mut items: Vec<_> = pipeline
        .gallery()
        .items()
        .filter(|i| needle.is_empty() || i.label.to_lowercase().contains(&needle))
        .cloned()
        .collect();
    items.sort_by_key(|i| std::cmp::Reverse(i.id));
    let matched = items.len();
    items.truncate(limit);
    Outcome::GalleryItems { items, matched }
}

/// Merges the line's retained state (if any) and makes this box's state,
/// when it holds changes the line's lacks.
fn sync_line(
    pipeline: &mut Pipeline,
    state: Option<bytes::Bytes>,
    reply: Reply,
    shared: &dyn Host,
) {
    let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<Outcome, String> {
        let received = match state {
            Some(bytes) => Some(LineStatePayload::parse(&bytes)?),
            None => None,
        };
        let manifest = pipeline.gallery().manifest().clone();
        let mut theirs = std::collections::HashSet::new();
        if let Some(r) = received {
            if r.model_sha256 != manifest.model_sha256 || r.dim != manifest.dim {
                return Err(format!(
                    "the line's gallery state (published by {}) was computed with recogniser {} ({}-d); this box runs {} ({}-d): update this box to the line's version",
                    r.published_by,
                    short(&r.model_sha256),
                    r.dim,
                    short(&manifest.model_sha256),
                    manifest.dim
                ));
            }
            theirs.extend(r.changes.iter().map(|c| c.change_id));
            let applied = pipeline.apply_line(r.changes).map_err(|e| e.to_string())?;
            if applied.new > 0 {
                tracing::info!(
                    new = applied.new,
                    added = applied.added.len(),
                    removed = applied.removed.len(),
                    from = %r.published_by,
                    "line gallery: merged the line's state"
                );
            }
        }
        let own = pipeline.gallery().line();
        let publish = (own.missing_from(&theirs) > 0).then(|| {
            let v = shared.versions();
            LineStatePayload::new(v.line.unwrap_or_default(), v.device_id, &manifest, own)
        });
        Ok(Outcome::LineSynced { publish })
    }));
    shared.set_versions(versions(pipeline, shared.versions().bundle));
    reply.send(match outcome {
        Ok(Ok(o)) => o,
        Ok(Err(message)) => Outcome::failed(ErrorCode::BadRequest, message),
        Err(_) => Outcome::failed(ErrorCode::Internal, "line gallery sync panicked"),
    })
}

fn short(sha: &str) -> &str {
    sha.get(..16).unwrap_or(sha)
}

fn classify(e: Error) -> (ErrorCode, String) {
    let code = match &e {
        Error::Gallery { .. } => ErrorCode::BadRequest,
        Error::Image { .. } => ErrorCode::DecodeFailed,
        _ => ErrorCode::Internal,
    };
    (code, e.to_string())
}

/// Reads and decodes a photo to enrol (box or line command), with its sha256.
fn load_photo(
    image: &ImageSource,
    request_id: &str,
    into: (&InputSettings, &FramePool),
    shared: &dyn Host,
) -> Result<(Frame, String), (ErrorCode, String)> {
    let (frame, bytes) = load(
        image,
        request_id,
        into,
        &shared.daemon_settings().allowed_dirs,
        shared.unknown_store(),
    )?;
    Ok((frame, hex::encode(Sha256::digest(&bytes))))
}

/// Reads (for path requests) and decodes a request's image into memory
/// from the pool, with the limits checked on the header before any pixel is
/// decoded.
fn load(
    image: &ImageSource,
    id: &str,
    (limits, pool): (&InputSettings, &FramePool),
    allowed: &[std::path::PathBuf],
    unknown: Option<&UnknownStore>,
) -> Result<(Frame, Vec<u8>), (ErrorCode, String)> {
    let bytes = match image {
        ImageSource::Unknown(u) => {
            let store = unknown.ok_or((
                ErrorCode::BadRequest,
                "this box keeps no unknown items (capture.unknown_dir is empty)".to_string(),
            ))?;
            let path = store
                .photo(u)
                .map_err(|e| (ErrorCode::BadRequest, e.to_string()))?;
            std::fs::read(&path).map_err(|e| {
                (
                    ErrorCode::BadRequest,
                    format!("cannot read {}: {e}", path.display()),
                )
            })?
        }
        ImageSource::Captured(c) => {
            // A copy: the ring keeps its frame for later triggers, and the
            // pipeline may write into the one it is given. Into the pool, so
            // that the copy is the one a GPU reads.
            let frame = Frame::copy_in(c.0.name.clone(), c.0.rgb(), pool)
                .map_err(|e| (ErrorCode::Internal, e.to_string()))?;
            return Ok((frame, Vec::new()));
        }
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
    let frame = input::decode_in(format!("request {id}"), &bytes, limits, pool)
        .map_err(|e| (ErrorCode::DecodeFailed, e.to_string()))?;
    Ok((frame, bytes))
}

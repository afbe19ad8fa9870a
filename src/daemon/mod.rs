//! `shitud run`: the recognition service on MQTT.
//!
//! ```text
//! broker ──▶ event loop ──parse──▶ bounded queue ──▶ pipeline thread (batches)
//!              │   ▲                  │ full: `busy`            │
//!              │   └──── outbox ◀─────┴─────────────────────────┘ answers
//!              └─ acks a request once the broker has its answer
//! ```
//!
//! Topics are parsed once into a [`link::Route`]; the pipeline thread
//! receives [`worker::Job`]s that carry their own reply channel, so the MQTT
//! front end here is one submitter among others (camera triggers, tests).
//! Topics and payloads are documented in `docs/MQTT.md`.

pub mod answer;
mod continuous;
pub mod feed;
mod forward;
pub mod health;
pub mod http;
mod ledger;
pub mod line_sync;
pub mod link;
pub mod mqtt;
pub mod outbox;
pub mod request;
pub mod service;
pub mod spool;
pub mod status;
mod trigger;
mod unknown;
pub mod updater;
pub mod worker;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;

use crate::config::Settings;
use crate::input::camera::Cameras;
use crate::pipeline::Pipeline;
use answer::{error_payload, Capture, ErrorCode, GalleryAnswer, RecognizeAnswer, Versions};
use forward::GalleryPlan;
use health::Health;
use ledger::{Admit, Ledger};
use line_sync::{Action, LineManifestPayload, LineSync};
use link::{Route, Scope, Topics};
use mqtt::{Client, Connection, Delivery, Event, Inbound};
use outbox::{Message, Outbox};
use request::{Envelope, GalleryCommand};
use service::Service;
use status::Counters;
use worker::{Job, Outcome, Reply, Work};

/// Where and to whom an MQTT answer goes.
#[derive(Debug, Clone)]
pub struct ReplyTo {
    /// Answer topic: the request's response topic, or the route's default.
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

/// How long a stop waits for queued work and unacknowledged answers.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// State shared by the event loop, the pipeline thread and the status timer.
pub struct Shared {
    settings: Settings,
    topics: Topics,
    outbox: Outbox,
    ledger: Mutex<Ledger>,
    counters: Arc<Counters>,
    versions: Mutex<Versions>,
    updater: Option<Arc<updater::Updater>>,
    queued: AtomicUsize,
    jobs: Mutex<Option<SyncSender<Job>>>,
    stopping: AtomicBool,
    started: Instant,
    health: Arc<Health>,
    service: Arc<Service>,
    histograms: http::metrics::Histograms,
    /// For the line state's on-demand subscription.
    client: Client,
    line_sync: Mutex<LineSync>,
    /// The box's own cameras (`[[sources]]`), for triggers.
    cameras: Cameras,
    /// Unknown items of triggered frames (`capture.unknown_dir`).
    unknown: Option<crate::search::unknown::UnknownStore>,
    /// Triggered frames kept for audit (`capture.keep_frames`).
    archive: Option<crate::input::camera::Archive>,
    /// Recent answers and frames, for the operator's page.
    feed: feed::Feed,
}

impl Shared {
    /// Sends an answer; the request's delivery (and any duplicates held) are
    /// acknowledged once the broker has it.
    pub fn reply(&self, reply: ReplyTo, payload: Vec<u8>) {
        self.answer(reply, Bytes::from(payload), true);
    }

    /// Sends an answer. `remember`: a repeat of the request gets this answer
    /// again; otherwise (an answer that says "try again") it is served anew.
    fn answer(&self, reply: ReplyTo, payload: Bytes, remember: bool) {
        // Lock order everywhere: ledger, then outbox.
        let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        let mut acks: Vec<Delivery> = reply.delivery.into_iter().collect();
        acks.extend(if remember {
            ledger.finish(&reply.request_id, Some(payload.clone()))
        } else {
            ledger.forget(&reply.request_id)
        });
        self.outbox.submit(Message::answer(
            reply.topic,
            payload,
            reply.correlation,
            reply.request_id,
            acks,
        ));
    }

    /// A job's reply channel that answers `to` over MQTT.
    fn mqtt_reply(self: &Arc<Self>, to: ReplyTo) -> Reply {
        let shared = self.clone();
        Reply::new(move |outcome| shared.answer_outcome(to, outcome, None, None))
    }

    /// Turns a job's outcome into its MQTT answer; a trigger's carries its
    /// `capture`, and the `frame` it was recognised on (for the page).
    fn answer_outcome(
        &self,
        to: ReplyTo,
        outcome: Outcome,
        capture: Option<&Capture>,
        frame: Option<Arc<crate::input::Frame>>,
    ) {
        let payload = match outcome {
            Outcome::Recognized {
                result,
                timings,
                versions,
            } => {
                self.histograms.observe(&timings);
                let results = answer::objects(&result);
                self.feed.record(
                    feed::FeedAnswer {
                        captured_at_ms: capture.and_then(|c| c.captured_at_ms),
                        results: results.clone(),
                        unknown: capture.map(|c| c.unknown.clone()).unwrap_or_default(),
                        total_ms: Some(timings.total),
                        ..feed::FeedAnswer::new(
                            to.request_id.clone(),
                            feed::Input::of(capture),
                            capture.map(|c| c.source.clone()),
                        )
                    },
                    frame,
                    true,
                );
                answer::to_vec(&RecognizeAnswer {
                    request_id: &to.request_id,
                    ok: true,
                    results,
                    timings_ms: timings,
                    versions: &versions,
                    capture,
                })
            }
            Outcome::GalleryChanged {
                added,
                removed,
                change_id,
                already_applied,
                versions,
            } => {
                self.feed.notify(feed::FeedEvent::Changed("gallery"));
                GalleryAnswer::payload(
                    &to.request_id,
                    added,
                    removed,
                    change_id,
                    already_applied,
                    &versions,
                )
            }
            Outcome::Failed { code, message } => {
                return match capture {
                    Some(c) => self.reply_trigger_error(to, code, &message, c),
                    None => self.reply_error(to, code, &message),
                }
            }
            Outcome::LineSynced { .. } | Outcome::GalleryItems { .. } => {
                tracing::error!(request_id = %to.request_id, "a line sync or listing outcome reached a request's reply; dropped");
                return;
            }
        };
        self.counters.answered.fetch_add(1, Ordering::Relaxed);
        self.reply(to, payload);
    }

    /// Sends an error answer, and logs it.
    pub fn reply_error(&self, reply: ReplyTo, code: ErrorCode, message: &str) {
        self.feed_error(&reply.request_id, code, message, None);
        let payload = error_payload(&reply.request_id, code, message);
        self.send_error(reply, code, message, payload);
    }

    /// Sends a trigger's error answer (with its source and fields), and logs it.
    fn reply_trigger_error(&self, reply: ReplyTo, code: ErrorCode, message: &str, c: &Capture) {
        self.feed_error(&reply.request_id, code, message, Some(c));
        let payload = answer::trigger_error_payload(&reply.request_id, code, message, c);
        self.send_error(reply, code, message, payload);
    }

    /// Shows an error answer on the page.
    fn feed_error(&self, request_id: &str, code: ErrorCode, message: &str, c: Option<&Capture>) {
        let answer = feed::FeedAnswer {
            ok: false,
            error: Some(feed::FeedError {
                code,
                message: message.to_string(),
            }),
            ..feed::FeedAnswer::new(
                request_id.to_string(),
                feed::Input::of(c),
                c.map(|c| c.source.clone()),
            )
        };
        self.feed.record(answer, None, true);
    }

    fn send_error(&self, reply: ReplyTo, code: ErrorCode, message: &str, payload: Vec<u8>) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        if code == ErrorCode::Busy {
            self.counters.busy.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(request_id = %reply.request_id, "busy: {message}");
        } else {
            tracing::warn!(request_id = %reply.request_id, code = code.as_str(), "request refused: {message}");
        }
        self.answer(
            reply,
            Bytes::from(payload),
            !matches!(code, ErrorCode::Busy | ErrorCode::Internal),
        );
    }

    fn versions(&self) -> Versions {
        self.versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets the versions answers report; the box's identity (device id,
    /// line) stays what it was set to at start.
    fn set_versions(&self, mut v: Versions) {
        let digest = v.line_gallery.as_ref().map(|l| l.digest.clone());
        {
            let mut current = self.versions.lock().unwrap_or_else(|p| p.into_inner());
            v.device_id = std::mem::take(&mut current.device_id);
            v.line = current.line.take();
            *current = v;
        }
        if self.topics.line.is_some() {
            self.line_sync
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .own(digest, Instant::now());
        }
    }

    /// A retained line message: the line's gallery manifest, or the state
    /// this box fetched. Acknowledged at once: neither is a request, and a
    /// newer copy stays retained at the broker.
    fn on_line_message(self: &Arc<Self>, route: Route, m: &Inbound) {
        self.outbox.ack(&m.delivery);
        if m.payload.is_empty() {
            return; // a retained message cleared by an operator
        }
        {
            let mut sync = self.line_sync.lock().unwrap_or_else(|p| p.into_inner());
            if route == Route::LineManifest {
                match serde_json::from_slice::<LineManifestPayload>(&m.payload) {
                    Ok(manifest) => sync.manifest(manifest.version.digest, Instant::now()),
                    Err(e) => tracing::warn!(
                        topic = m.topic.as_deref().unwrap_or_default(),
                        "the line's gallery manifest is unreadable ({e}); ignored"
                    ),
                }
                return;
            }
            sync.state_received();
        }
        self.merge_line_state(Some(m.payload.clone()));
    }

    /// What the line sync wants now (run by the 250 ms timer).
    fn line_tick(self: &Arc<Self>) {
        let Some(line) = &self.topics.line else {
            return;
        };
        let action = self
            .line_sync
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tick(Instant::now());
        match action {
            Some(Action::Fetch) => {
                tracing::info!(
                    topic = %line.gallery_state,
                    "line gallery: this box and the line's manifest differ; fetching the line's state"
                );
                if let Err(e) = self.client.try_subscribe(&line.gallery_state) {
                    tracing::warn!("cannot subscribe to the line's state: {e}");
                }
            }
            Some(Action::MergeNone) => {
                tracing::info!("line gallery: no state retained on the line");
                self.merge_line_state(None);
            }
            None => {}
        }
    }

    /// Stops the state's subscription and hands the state to the pipeline thread.
    fn merge_line_state(self: &Arc<Self>, state: Option<Bytes>) {
        if let Some(line) = &self.topics.line {
            let _ = self.client.try_unsubscribe(&line.gallery_state);
        }
        let shared = self.clone();
        self.enqueue(Job {
            request_id: "line-sync".into(),
            arrived: Instant::now(),
            work: Work::LineSync { state },
            reply: Reply::new(move |o| shared.line_synced(o)),
        });
    }

    /// The merge is done: publishes this box's state if the line's lacked part of it.
    fn line_synced(&self, outcome: Outcome) {
        // A full queue is passing; a state this box cannot take is not.
        let ok = match &outcome {
            Outcome::Failed { code, .. } => *code == ErrorCode::Busy,
            _ => true,
        };
        match outcome {
            Outcome::LineSynced { publish, .. } => {
                if let (Some(state), Some(line)) = (publish, &self.topics.line) {
                    match serde_json::to_vec(&state) {
                        Ok(bytes) => {
                            let manifest = state.manifest(&line.gallery_state, bytes.len());
                            tracing::info!(version = %state.version, bytes = bytes.len(), "line gallery: publishing this box's state (the line's lacked changes it has)");
                            self.outbox
                                .submit(Message::status(line.gallery_state.clone(), bytes));
                            self.outbox.submit(Message::status(
                                line.gallery_manifest.clone(),
                                answer::to_vec(&manifest),
                            ));
                        }
                        Err(e) => tracing::error!("cannot encode the line state: {e}"),
                    }
                }
            }
            Outcome::Failed { code, message } => {
                tracing::warn!(code = code.as_str(), "line gallery sync: {message}")
            }
            _ => {}
        }
        self.line_sync
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .merged(Instant::now(), ok);
    }

    /// One line for `systemctl status`.
    fn service_summary(&self) -> String {
        let c = &self.counters;
        let n = |x: &std::sync::atomic::AtomicU64| x.load(Ordering::Relaxed);
        format!(
            "serving {} on {}:{}: {} answered, {} errors ({} busy), {} queued, {} answers spooled",
            self.topics.recognize,
            self.settings.mqtt.host,
            self.settings.mqtt.port,
            n(&c.answered),
            n(&c.errors),
            n(&c.busy),
            self.queued.load(Ordering::Relaxed),
            self.outbox.spooled()
        ) + &self.sources_summary()
    }

    /// `; sources: cam1 streaming, cam2 failed` (empty without sources).
    fn sources_summary(&self) -> String {
        let parts: Vec<String> = self
            .cameras
            .iter()
            .map(|s| format!("{} {}", s.name(), s.state().as_str()))
            .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!("; sources: {}", parts.join(", "))
        }
    }

    fn publish_status(&self) {
        let payload = status::online(
            self.started,
            &self.versions(),
            &self.counters,
            self.queued.load(Ordering::Relaxed),
            &self.cameras.health(),
        );
        self.outbox
            .submit(Message::status(self.topics.status.clone(), payload));
    }

    /// Admits a delivery of `id`, to be answered to `reply`: gives `reply`
    /// back when the request is new, `None` when it repeats one already
    /// taken (handled here).
    fn admit(&self, id: &str, reply: ReplyTo) -> Option<ReplyTo> {
        let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        let cached = match ledger.admit(id, reply.delivery.clone()) {
            Admit::New => return Some(reply),
            Admit::Held => {
                self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Admit::Answered(cached) => cached,
        };
        self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
        let delivery = reply.delivery?;
        // The first answer is still on its way: this delivery is acknowledged with it.
        let delivery = self.outbox.attach(id, delivery)?;
        match cached {
            Some(payload) => {
                // The first answer was acknowledged, yet the request came again:
                // the answer may have been lost after that (a broker crash), so send it again.
                self.counters.resent.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    request_id = id,
                    "repeated request: its answer is sent again from the cache"
                );
                self.outbox.submit(Message::answer(
                    reply.topic,
                    payload,
                    reply.correlation,
                    id.to_string(),
                    vec![delivery],
                ));
            }
            None => {
                tracing::debug!(request_id = id, "repeated request answered long ago (answer no longer cached): acknowledged only");
                self.outbox.ack(&delivery);
            }
        }
        None
    }

    fn enqueue(&self, job: Job) {
        let sender = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(sender) = sender else {
            // Stopping (a trigger whose frame came after the queue closed):
            // answered, so that it is not left waiting.
            job.reply.send(Outcome::failed(
                ErrorCode::Busy,
                "the daemon is stopping; retry when it is back",
            ));
            return;
        };
        self.queued.fetch_add(1, Ordering::Relaxed);
        match sender.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                let cap = self.settings.daemon.queue_capacity;
                job.reply.send(Outcome::failed(
                    ErrorCode::Busy,
                    format!(
                        "{cap} requests are already waiting (daemon.queue_capacity); retry later"
                    ),
                ));
            }
            Err(TrySendError::Disconnected(job)) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                job.reply.send(Outcome::failed(
                    ErrorCode::Internal,
                    "the pipeline thread has stopped; see the daemon log",
                ));
            }
        }
    }

    /// Handles one request delivery. Never blocks: parsing is cheap, and the
    /// pipeline work goes to the queue.
    fn on_request(self: &Arc<Self>, m: Box<Inbound>) {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        if self.stopping.load(Ordering::Relaxed) {
            // Not acknowledged: the broker keeps it in the session for the next start.
            return;
        }
        let p = &m.delivery;
        let Some(route) = m.topic.as_deref().and_then(|t| self.topics.route(t)) else {
            tracing::warn!(
                topic = m.topic.as_deref().unwrap_or("(none)"),
                "message on a topic the daemon does not serve; acknowledged and dropped"
            );
            self.outbox.ack(p);
            return;
        };
        if matches!(route, Route::LineManifest | Route::LineState) {
            return self.on_line_message(route, &m);
        }
        let env = Envelope {
            user_properties: &m.user_properties,
            correlation_data: m.correlation.as_deref(),
        };
        let max = self.settings.daemon.max_payload_bytes;
        let response_topic = m
            .response_topic
            .clone()
            .filter(|t| !t.is_empty() && !t.contains(['+', '#']));
        let reply = |request_id: String| ReplyTo {
            topic: response_topic
                .clone()
                .unwrap_or_else(|| route.default_answer_topic(&self.topics).to_string()),
            correlation: m.correlation.clone(),
            request_id,
            delivery: Some(p.clone()),
            arrived: Instant::now(),
        };
        // Submits `work` for the request `id`, unless it repeats one already taken.
        let submit = |id: String, work: Work| {
            if let Some(to) = self.admit(&id, reply(id.clone())) {
                self.enqueue(Job {
                    request_id: id,
                    arrived: to.arrived,
                    work,
                    reply: self.mqtt_reply(to),
                });
            }
        };
        let refuse = |rej: request::Rejection| {
            if let Some(to) = self.admit(&rej.request_id, reply(rej.request_id.clone())) {
                self.reply_error(to, rej.code, &rej.message);
            }
        };
        match route {
            Route::Recognize(_) => match request::parse_recognize(&m.payload, &env, max) {
                Ok(r) => {
                    if !r.ignored.is_empty() {
                        tracing::warn!(request_id = %r.request_id, fields = ?r.ignored, "unknown request fields ignored");
                    }
                    let work = Work::Recognize {
                        image: r.image,
                        query: r.query,
                    };
                    submit(r.request_id, work);
                }
                Err(rej) => refuse(rej),
            },
            Route::Trigger => match request::parse_trigger(&m.payload, &env, max) {
                Ok(t) => {
                    if let Some(to) = self.admit(&t.request_id, reply(t.request_id.clone())) {
                        self.on_trigger(t, to);
                    }
                }
                Err(rej) => refuse(rej),
            },
            Route::GalleryAdd(scope) | Route::GalleryRemove(scope) => {
                let add = matches!(route, Route::GalleryAdd(_));
                match request::parse_gallery_sent(&m.payload, &env, max, add) {
                    Ok((command, change_id)) if scope == Scope::Line => {
                        let id = command.request_id().to_string();
                        if matches!(
                            command,
                            GalleryCommand::Add {
                                image: request::ImageSource::Unknown(_),
                                ..
                            }
                        ) {
                            return refuse(request::Rejection {
                                request_id: id,
                                code: ErrorCode::BadRequest,
                                message: "an unknown item's crop is kept by the box that saw it only: publish this on that box's own P/gallery/add (P/unknown names the box), which makes it a change for the whole line".into(),
                            });
                        }
                        if let Some(message) = self.updating() {
                            return refuse(request::Rejection {
                                request_id: id,
                                code: ErrorCode::Busy,
                                message,
                            });
                        }
                        match request::line_change_id(change_id, &id) {
                            Ok(change_id) => submit(id, Work::LineGallery { change_id, command }),
                            Err(rej) => refuse(rej),
                        }
                    }
                    Ok((command, _)) => {
                        let id = command.request_id().to_string();
                        match self.plan_gallery(command, false) {
                            GalleryPlan::Refuse(code, message) => refuse(request::Rejection {
                                request_id: id,
                                code,
                                message,
                            }),
                            GalleryPlan::Submit(work) => submit(id, work),
                            GalleryPlan::ForLine(command) => {
                                if let Some(to) = self.admit(&id, reply(id.clone())) {
                                    self.forward_to_line(command, self.mqtt_reply(to));
                                }
                            }
                        }
                    }
                    Err(rej) => refuse(rej),
                }
            }
            Route::OtaApply | Route::OtaRollback => {
                // Acknowledged now: an update takes minutes, and a redelivery after a
                // crash must not start it again (the crash may have been the update's).
                self.outbox.ack(p);
                let mut to = reply(String::new());
                to.delivery = None;
                match request::parse_ota(&m.payload, &env, route == Route::OtaApply) {
                    Ok((id, command)) => {
                        to.request_id = id;
                        tracing::info!(request_id = %to.request_id, "OTA command received");
                        self.start_ota(command, Some(to), None);
                    }
                    Err(rej) => {
                        to.request_id = rej.request_id;
                        tracing::warn!(request_id = %to.request_id, "OTA command refused: {}", rej.message);
                        self.ota_answer(to, Err((rej.code, rej.message)));
                    }
                }
            }
            Route::LineManifest | Route::LineState => {} // handled above
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT; returns after a clean stop.
pub fn run(settings: Settings) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // The pipeline has its own thread and ORT its own pool; the network needs little.
        .worker_threads(2)
        .enable_all()
        .thread_name("shitud-net")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(settings))
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let started = Instant::now();
    let device = link::device_id(&settings.mqtt);
    let topics = Topics::new(&settings.mqtt, &device);
    let client_id = if settings.mqtt.client_id.is_empty() {
        format!("shitud-{device}")
    } else {
        settings.mqtt.client_id.clone()
    };
    let options = link::options(
        &settings.mqtt,
        &client_id,
        &topics.status,
        status::offline(),
        settings.daemon.max_payload_bytes,
    )?;

    let service = Arc::new(Service::default());
    let health = Arc::new(Health::new(Duration::from_secs(
        settings.daemon.stall_after_s.max(1),
    )));
    // Pinging starts now: loading (a first TensorRT engine build) is bounded by TimeoutStartSec instead.
    let watchdog = tokio::spawn(service::watchdog(service.clone(), health.clone()));
    service.status("loading models and gallery");
    let startup = updater::Updater::start(&settings)?;
    // Name what will serve: with OTA on, the current version's files, not the config's.
    let (serving, version) = match &startup {
        Some(s) => (&s.settings, s.version.as_deref()),
        None => (&settings, None),
    };
    tracing::info!(
        gallery = %serving.search.index.display(),
        version = %version.unwrap_or("none (the config's files)"),
        "loading models and gallery"
    );
    let (pipeline, bundle) = match &startup {
        Some(s) => open_version(&s.updater, &s.settings, s.version.clone())?,
        None => (
            Pipeline::open_writable(&settings).context("loading the pipeline")?,
            None,
        ),
    };
    let updater = startup.map(|s| Arc::new(s.updater));
    // Cameras start before the broker: a trigger that arrives first finds
    // frames in the ring. A camera that is down is retried, not fatal.
    let cameras = Cameras::start(&settings.sources, &settings.capture, &settings.input)
        .context("starting the cameras ([[sources]])")?;
    let broker = format!("{}:{}", settings.mqtt.host, settings.mqtt.port);
    service.status(&format!("models loaded; connecting to the broker {broker}"));
    let mut versions = worker::versions(&pipeline, bundle);
    versions.device_id = device.clone();
    versions.line = topics.line.as_ref().map(|l| l.name.clone());

    let counters = Arc::new(Counters::default());
    let (spool, leftovers) = spool::Spool::open(
        &settings.daemon.spool_dir,
        settings.daemon.spool_max_messages,
        settings.daemon.spool_max_bytes,
    )
    .with_context(|| {
        format!(
            "opening the answer spool {}",
            settings.daemon.spool_dir.display()
        )
    })?;
    if !leftovers.is_empty() {
        tracing::info!(
            answers = leftovers.len(),
            "answers spooled by the previous run will be sent after connecting"
        );
    }
    let (client, connection) = mqtt::connect(options, 4096);
    let outbox = Outbox::new(
        client.clone(),
        spool,
        leftovers,
        counters.clone(),
        Duration::from_secs(settings.daemon.answer_ttl_s),
    );
    let mut ledger = Ledger::new(
        settings.daemon.dedup_window,
        settings.daemon.answer_cache_bytes,
    );
    let saved = settings.daemon.spool_dir.join(ANSWERED_FILE);
    if let Ok(text) = std::fs::read_to_string(&saved) {
        for id in text.lines().filter(|l| !l.is_empty()) {
            ledger.finish(id, None);
        }
        let _ = std::fs::remove_file(&saved);
    }
    for id in outbox.request_ids() {
        ledger.finish(&id, None);
    }
    let (tx, rx) = mpsc::sync_channel(settings.daemon.queue_capacity);
    let shared = Arc::new(Shared {
        settings: settings.clone(),
        topics: topics.clone(),
        outbox,
        ledger: Mutex::new(ledger),
        counters: counters.clone(),
        versions: Mutex::new(versions),
        updater: updater.clone(),
        queued: AtomicUsize::new(0),
        jobs: Mutex::new(Some(tx)),
        stopping: AtomicBool::new(false),
        started,
        health: health.clone(),
        service: service.clone(),
        histograms: http::metrics::Histograms::default(),
        feed: feed::Feed::new(settings.http.recent_answers),
        client: client.clone(),
        line_sync: Mutex::new(LineSync::new(&device)),
        cameras,
        unknown: (!settings.capture.unknown_dir.as_os_str().is_empty()).then(|| {
            crate::search::unknown::UnknownStore::new(
                &settings.capture.unknown_dir,
                settings.capture.unknown_max_items,
            )
        }),
        archive: settings.capture.keep_frames.then(|| {
            crate::input::camera::Archive::new(
                &settings.capture.keep_dir,
                settings.capture.keep_max_bytes,
            )
        }),
    });
    let http_server = http::start(&settings.http, shared.clone())
        .await
        .context("starting the HTTP server ([http])")?;

    let worker = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("shitud-pipeline".into())
            .spawn(move || worker::run(pipeline, rx, shared.as_ref()))?
    };

    if let Some(u) = &updater {
        u.watch_trial(settings.ota.trial_s);
        if !settings.ota.watch_dir.as_os_str().is_empty() {
            let (shared, dir) = (shared.clone(), settings.ota.watch_dir.clone());
            std::thread::Builder::new()
                .name("shitud-watch".into())
                .spawn(move || updater::watch_folder(shared, dir))?;
        }
    }
    tracing::info!(
        broker = %broker,
        client_id,
        protocol = ?settings.mqtt.protocol,
        requests = %topics.recognize_filter,
        max_batch = settings.daemon.max_batch,
        "shitud serving"
    );
    let net = tokio::spawn(event_loop(connection, client.clone(), shared.clone()));
    continuous::start(&shared);
    let ready_timer = {
        let shared = shared.clone();
        let wait = Duration::from_secs(settings.daemon.ready_timeout_s);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            if !shared.service.is_ready() {
                tracing::warn!("no broker after {wait:?} (daemon.ready_timeout_s): reporting ready, degraded; still retrying");
                shared.service.ready(&format!(
                    "degraded: broker {} unreachable; requests wait at the broker, answers are spooled",
                    shared.settings.mqtt.host
                ));
            }
        })
    };
    let resend_timer = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                shared.outbox.resend_due();
                shared.line_tick();
            }
        })
    };
    let status_timer = {
        let shared = shared.clone();
        let every = Duration::from_secs(settings.daemon.status_interval_s.max(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                shared.publish_status();
                if shared.service.is_ready()
                    && !shared.service.is_stalled()
                    && shared.outbox.is_connected()
                {
                    shared.service.status(&shared.service_summary());
                }
            }
        })
    };

    wait_for_stop_signal().await?;
    tracing::info!(
        queued = shared.queued.load(Ordering::Relaxed),
        "stopping: no new requests; finishing the queue"
    );
    shared.stopping.store(true, Ordering::Relaxed);
    {
        // Joining the source threads blocks: off the async workers.
        let shared = shared.clone();
        let _ = tokio::task::spawn_blocking(move || shared.cameras.stop()).await;
    }
    shared.service.stopping(&format!(
        "stopping: finishing {} queued requests",
        shared.queued.load(Ordering::Relaxed)
    ));
    status_timer.abort();
    ready_timer.abort();
    resend_timer.abort();
    // Dropping the sender lets the pipeline thread drain the queue and end.
    shared.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
    let joined = tokio::task::spawn_blocking(move || worker.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        tracing::error!("the pipeline thread ended abnormally");
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while shared.outbox.unacknowledged() > shared.outbox.spooled() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shared.outbox.spool_all();
    let left = shared.outbox.spooled();
    save_answered(&shared);
    shared
        .outbox
        .submit(Message::status(topics.status.clone(), status::offline()));
    let deadline = Instant::now() + Duration::from_secs(2);
    while shared.outbox.unacknowledged() > shared.outbox.spooled() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = client.try_disconnect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    net.abort();
    watchdog.abort();
    if let Some(m) = http_server {
        m.stop();
    }
    if let Some(u) = &updater {
        u.clean_stop();
    }
    let c = counters.values();
    tracing::info!(spooled = left, "stopped: {c}");
    Ok(())
}

/// Where a clean stop leaves the ids it answered.
const ANSWERED_FILE: &str = "answered.ids";

/// A request is acknowledged to the broker only after its answer is; a stop
/// (or a broker failure) between the two makes the broker redeliver a request
/// that was answered. The next run reads these ids and does not answer again.
fn save_answered(shared: &Shared) {
    let ledger = shared.ledger.lock().unwrap_or_else(|p| p.into_inner());
    let mut text = ledger.answered().join("\n");
    text.push('\n');
    let path = shared.settings.daemon.spool_dir.join(ANSWERED_FILE);
    let tmp = path.with_extension("tmp");
    if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &path)) {
        tracing::warn!(file = %path.display(), "cannot save answered request ids: {e}; redelivered requests may be answered twice");
    }
}

impl worker::Host for Shared {
    fn daemon_settings(&self) -> &crate::config::DaemonSettings {
        &self.settings.daemon
    }
    fn take_swap(&self) -> Option<worker::Swap> {
        Shared::take_swap(self)
    }
    fn versions(&self) -> Versions {
        Shared::versions(self)
    }
    fn set_versions(&self, v: Versions) {
        Shared::set_versions(self, v)
    }
    fn begin(&self) {
        self.health.begin()
    }
    fn end(&self) {
        self.health.end()
    }
    fn exited(&self) {
        self.health.exited()
    }
    fn taken(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
    }
    fn batch(&self, n: usize) {
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.histograms.observe_batch(n);
    }
    fn unknown_store(&self) -> Option<&crate::search::unknown::UnknownStore> {
        self.unknown.as_ref()
    }
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}

/// Polls the connection forever: reconnects with backoff, re-subscribes,
/// and routes packets to the outbox and the request handler.
async fn event_loop(mut connection: Connection, client: Client, shared: Arc<Shared>) {
    let m = &shared.settings.mqtt;
    let min = Duration::from_millis(m.reconnect_min_ms.max(10));
    let max = Duration::from_millis(m.reconnect_max_ms.max(m.reconnect_min_ms));
    let mut backoff = min;
    let mut connected_once = false;
    let mut outage_logged = false;
    loop {
        match connection.poll().await {
            Ok(Event::Connected { session_present }) => {
                shared.counters.connects.fetch_add(1, Ordering::Relaxed);
                backoff = min;
                outage_logged = false;
                if connected_once && !session_present {
                    tracing::warn!("the broker did not keep this client's session (restarted without persistence, or the session expired): requests sent meanwhile are lost at the broker");
                }
                tracing::info!(
                    session_present,
                    spooled = shared.outbox.spooled(),
                    "connected to the broker"
                );
                connected_once = true;
                for filter in shared.topics.filters() {
                    if let Err(e) = client.try_subscribe(filter) {
                        tracing::error!(filter = %filter, "cannot subscribe: {e}");
                    }
                }
                shared.outbox.on_connected();
                shared.publish_status();
                shared.republish_ota_status();
                shared.service.ready(&shared.service_summary());
            }
            Ok(Event::Received(m)) => shared.on_request(m),
            Ok(Event::Acknowledged(pkid, outcome)) => shared.outbox.on_puback(pkid, outcome),
            Ok(Event::SubscriptionRefused(codes)) => {
                tracing::error!(
                    codes,
                    "the broker refused a subscription (check its ACL for this client)"
                );
            }
            Ok(Event::BrokerDisconnect(reason)) => {
                tracing::warn!(reason, "the broker closed the connection")
            }
            Ok(Event::Sent(pkid)) => shared.outbox.on_sent(pkid),
            Ok(Event::Other) => shared.outbox.on_progress(),
            Err(e) => {
                shared.outbox.on_disconnect(&mut connection);
                shared
                    .line_sync
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .disconnected(Instant::now());
                if shared.stopping.load(Ordering::Relaxed)
                    && shared.outbox.unacknowledged() == shared.outbox.spooled()
                {
                    // Nothing left to send; the stop sequence will finish.
                    tokio::time::sleep(min).await;
                    continue;
                }
                if outage_logged {
                    tracing::debug!("broker still unreachable: {e}; retrying in {backoff:?}");
                } else {
                    if shared.service.is_ready() {
                        shared.service.status(&format!(
                            "degraded: broker {}:{} unreachable ({e}); answers are spooled",
                            m.host, m.port
                        ));
                    }
                    tracing::warn!(
                        broker = %format!("{}:{}", m.host, m.port),
                        "broker unreachable: {e}; answers are spooled to {} and requests wait at the broker; retrying in {backoff:?}",
                        shared.settings.daemon.spool_dir.display()
                    );
                    outage_logged = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max);
            }
        }
    }
}

/// Opens the current OTA version; if it does not open and a previous version
/// exists, goes back to that one (logged), so a bad version on disk cannot keep
/// the daemon from starting.
fn open_version(
    u: &updater::Updater,
    settings: &Settings,
    version: Option<String>,
) -> anyhow::Result<(Pipeline, Option<String>)> {
    match Pipeline::open_writable(settings) {
        Ok(p) => Ok((p, version)),
        Err(e) if version.is_some() => {
            tracing::error!(
                version = version.as_deref().unwrap_or_default(),
                "the current version does not open: {e}; going back"
            );
            let (settings, back) = u.fall_back().with_context(|| {
                format!("the current version does not open ({e}) and cannot be left")
            })?;
            tracing::warn!(
                version = back.as_deref().unwrap_or("(config's own files)"),
                "serving after falling back"
            );
            Ok((
                Pipeline::open_writable(&settings)
                    .context("loading the pipeline we fell back to")?,
                back,
            ))
        }
        Err(e) => Err(e).context("loading the pipeline"),
    }
}

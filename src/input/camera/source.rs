//! One source: a GStreamer pipeline on its own thread, restarted with
//! backoff when it fails or stalls, filling the source's [`Ring`].
//!
//! Capture time. Each pipeline runs on a realtime system clock, so a
//! buffer's running time plus the pipeline's base time is a wall-clock
//! instant. Live sources stamp buffers when they are captured (`v4l2src`:
//! the driver's timestamp; `rtspsrc`: arrival at the jitter buffer, before
//! decoding), so a frame's time does not move with decoding or with how
//! late the appsink sees it. A file is played at its own speed and its
//! frames are stamped when they are due.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use gst::prelude::*;
use opencv::core::{Mat, MatTraitManual, Scalar, CV_8UC3};
use serde::Serialize;

use super::ring::{Captured, Lookup, Ring};
use super::uri::{Plan, SINK_NAME};
use crate::config::{CaptureSettings, InputSettings};
use crate::input::{Frame, MIN_SIDE};

/// Where a source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Starting, or restarting after a failure: no frame yet.
    Connecting,
    /// Frames are arriving.
    Streaming,
    /// Frames stopped for `capture.stall_ms`; restarted if they do not resume.
    Stalled,
    /// The pipeline failed; waiting to reconnect.
    Failed,
}

impl State {
    /// As status and metrics name it.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Streaming => "streaming",
            State::Stalled => "stalled",
            State::Failed => "failed",
        }
    }
}

/// A source's health, as `P/status` and `/metrics` show it.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    /// Where it is.
    pub state: State,
    /// Frames taken into the ring since the daemon started.
    pub frames_in: u64,
    /// Frames refused: not RGB, too small or too large (`input.max_pixels`).
    pub frames_dropped: u64,
    /// Pipeline restarts after a failure or a stall.
    pub reconnects: u64,
    /// Age of the newest frame, milliseconds; `None` before the first.
    pub last_frame_age_ms: Option<i64>,
    /// Why it last failed.
    pub last_error: Option<String>,
    /// `delay_ms` of the source.
    pub delay_ms: u64,
}

/// Why a moment's frame cannot be had.
#[derive(Debug, Clone, PartialEq)]
pub enum Missed {
    /// The source is not streaming (connecting, stalled, failed).
    Unavailable(String),
    /// No frame was captured at or after it before the deadline.
    Deadline,
    /// It has left the ring.
    Gone {
        /// Capture time of the oldest frame held.
        oldest_ms: i64,
    },
    /// The source was not streaming then.
    Gap {
        /// When its frames resumed.
        resumed_ms: i64,
    },
}

/// One camera or stream.
pub struct Source {
    name: String,
    uri: String,
    delay_ms: u64,
    ring: Mutex<Ring>,
    health: Mutex<HealthState>,
    /// Bumped on every frame and every change of state: triggers wait on it.
    changed: tokio::sync::watch::Sender<u64>,
    stop: AtomicBool,
}

struct HealthState {
    state: State,
    frames_in: u64,
    frames_dropped: u64,
    reconnects: u64,
    last_frame_ms: Option<i64>,
    last_frame: Option<Instant>,
    last_error: Option<String>,
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Source {
    pub(super) fn new(name: &str, uri: &str, delay_ms: u64, ring_frames: usize) -> Source {
        Source {
            name: name.to_string(),
            uri: uri.to_string(),
            delay_ms,
            ring: Mutex::new(Ring::new(ring_frames)),
            health: Mutex::new(HealthState {
                state: State::Connecting,
                frames_in: 0,
                frames_dropped: 0,
                reconnects: 0,
                last_frame_ms: None,
                last_frame: None,
                last_error: None,
            }),
            changed: tokio::sync::watch::channel(0).0,
            stop: AtomicBool::new(false),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URI it reads (may hold a password: log [`Source::uri_redacted`]).
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Its conveyor delay, milliseconds.
    pub fn delay_ms(&self) -> u64 {
        self.delay_ms
    }

    /// Where it is now.
    pub fn state(&self) -> State {
        lock(&self.health).state
    }

    /// Its health now.
    pub fn health(&self) -> Health {
        let h = lock(&self.health);
        Health {
            state: h.state,
            frames_in: h.frames_in,
            frames_dropped: h.frames_dropped,
            reconnects: h.reconnects,
            last_frame_age_ms: h.last_frame_ms.map(|t| (now_ms() - t).max(0)),
            last_error: h.last_error.clone(),
            delay_ms: self.delay_ms,
        }
    }

    /// The newest frame, if any.
    pub fn latest(&self) -> Option<Captured> {
        lock(&self.ring).latest().cloned()
    }

    /// The first frame captured at or after `t_ms` (unix ms), waiting for it
    /// until `deadline`. A source that is not streaming answers at once.
    pub async fn frame_at(
        &self,
        t_ms: i64,
        deadline: tokio::time::Instant,
    ) -> Result<Captured, Missed> {
        let mut changed = self.changed.subscribe();
        loop {
            // Looked up before the state: a frame captured before a failure still answers.
            match lock(&self.ring).at_or_after(t_ms) {
                Lookup::Found(c) => return Ok(c),
                Lookup::Gone { oldest_ms } => return Err(Missed::Gone { oldest_ms }),
                Lookup::Gap { resumed_ms } => return Err(Missed::Gap { resumed_ms }),
                Lookup::NotYet => {}
            }
            let (state, error) = {
                let h = lock(&self.health);
                (h.state, h.last_error.clone())
            };
            if state != State::Streaming {
                return Err(Missed::Unavailable(match error {
                    Some(e) => format!("{} ({e})", state.as_str()),
                    None => state.as_str().to_string(),
                }));
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                // Timed out, or the source is gone (the daemon is stopping).
                _ => return Err(Missed::Deadline),
            }
        }
    }

    fn set_state(&self, state: State, error: Option<String>) {
        {
            let mut h = lock(&self.health);
            if h.state == state && error.is_none() {
                return;
            }
            if h.state != state {
                match (&error, state) {
                    (Some(e), _) => tracing::warn!(source = %self.name, "{}: {e}", state.as_str()),
                    (None, State::Streaming) => {
                        tracing::info!(source = %self.name, "streaming")
                    }
                    (None, s) => tracing::info!(source = %self.name, "{}", s.as_str()),
                }
            }
            h.state = state;
            if error.is_some() {
                h.last_error = error;
            }
        }
        self.changed.send_modify(|v| *v += 1);
    }

    fn push(&self, at_ms: i64, frame: Frame) {
        lock(&self.ring).push(at_ms, Arc::new(frame));
        let streaming = {
            let mut h = lock(&self.health);
            h.frames_in += 1;
            h.last_frame_ms = Some(at_ms);
            h.last_frame = Some(Instant::now());
            h.state == State::Streaming
        };
        if streaming {
            self.changed.send_modify(|v| *v += 1);
        } else {
            self.set_state(State::Streaming, None);
        }
    }

    fn dropped(&self, why: &str) {
        let first = {
            let mut h = lock(&self.health);
            h.frames_dropped += 1;
            h.frames_dropped == 1
        };
        if first {
            tracing::warn!(source = %self.name, "frame refused: {why} (logged once; counted in frames_dropped)");
        }
    }

    pub(super) fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The source's thread: runs the pipeline until asked to stop,
    /// restarting it with backoff whenever it fails or stalls.
    pub(super) fn run(
        self: Arc<Self>,
        plan: Plan,
        capture: CaptureSettings,
        limits: InputSettings,
    ) {
        let min = Duration::from_millis(capture.reconnect_min_ms.max(1));
        let max = Duration::from_millis(capture.reconnect_max_ms).max(min);
        let mut backoff = min;
        while !self.stopping() {
            lock(&self.ring).restart();
            self.set_state(State::Connecting, None);
            let before = lock(&self.health).frames_in;
            let reason = match self.run_once(&plan, &capture, &limits) {
                None => break,
                Some(reason) => reason,
            };
            if lock(&self.health).frames_in > before {
                backoff = min; // it streamed: a new outage starts from the shortest wait
            }
            self.set_state(
                State::Failed,
                Some(format!(
                    "{reason}; reconnecting in {} ms",
                    backoff.as_millis()
                )),
            );
            let until = Instant::now() + backoff;
            while Instant::now() < until && !self.stopping() {
                std::thread::sleep(Duration::from_millis(20));
            }
            backoff = (backoff * 2).min(max);
            if !self.stopping() {
                lock(&self.health).reconnects += 1;
            }
        }
        // Triggers still waiting are answered now, not at their deadline.
        self.set_state(State::Failed, Some("the daemon is stopping".into()));
        tracing::debug!(source = %self.name, "source thread stopped");
    }

    /// Runs the pipeline once: `None` when asked to stop, else why it ended.
    fn run_once(
        self: &Arc<Self>,
        plan: &Plan,
        capture: &CaptureSettings,
        limits: &InputSettings,
    ) -> Option<String> {
        let (pipeline, sink) = match build(plan) {
            Ok(p) => p,
            Err(e) => return Some(e),
        };
        if let Some(sync) = plan.sync {
            sink.set_sync(sync);
        }
        let me = Arc::downgrade(self);
        let limits = limits.clone();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let Some(source) = me.upgrade() else {
                        return Err(gst::FlowError::Flushing);
                    };
                    let at_ms = capture_time_ms(sink, &sample);
                    match to_frame(&format!("{}@{at_ms}", source.name), &sample, &limits) {
                        Ok(frame) => source.push(at_ms, frame),
                        Err(why) => source.dropped(&why),
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        let reason = self.watch(&pipeline, plan, capture);
        let _ = pipeline.set_state(gst::State::Null);
        reason
    }

    /// Plays the pipeline and watches its bus: errors, end of stream, stalls.
    fn watch(
        &self,
        pipeline: &gst::Pipeline,
        plan: &Plan,
        capture: &CaptureSettings,
    ) -> Option<String> {
        if let Err(e) = pipeline.set_state(gst::State::Playing) {
            return Some(format!("cannot start the pipeline: {e}"));
        }
        let Some(bus) = pipeline.bus() else {
            return Some("the pipeline has no bus".into());
        };
        let stall = Duration::from_millis(capture.stall_ms.max(1));
        let started = Instant::now();
        loop {
            if self.stopping() {
                return None;
            }
            if let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) {
                use gst::MessageView;
                match msg.view() {
                    MessageView::Error(e) => {
                        let from = e
                            .src()
                            .map(|s| s.path_string().to_string())
                            .unwrap_or_default();
                        return Some(format!("{from}: {}", e.error()));
                    }
                    MessageView::Eos(_) if plan.file => {
                        // A recording plays in a loop, like a camera that never ends.
                        if let Err(e) = pipeline.seek_simple(
                            gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT,
                            gst::ClockTime::ZERO,
                        ) {
                            return Some(format!("cannot loop the file: {e}"));
                        }
                    }
                    MessageView::Eos(_) => return Some("the stream ended".into()),
                    _ => {}
                }
            }
            let (state, last) = {
                let h = lock(&self.health);
                (h.state, h.last_frame.filter(|t| *t >= started))
            };
            let quiet = last.unwrap_or(started).elapsed();
            match state {
                State::Streaming if quiet >= stall => {
                    self.set_state(
                        State::Stalled,
                        Some(format!("no frame for {} ms", quiet.as_millis())),
                    );
                }
                State::Stalled if quiet >= stall * 2 => {
                    return Some(format!("no frame for {} ms", quiet.as_millis()));
                }
                State::Connecting if quiet >= stall * 2 => {
                    return Some(format!(
                        "no frame within {} ms of starting",
                        quiet.as_millis()
                    ));
                }
                _ => {}
            }
        }
    }
}

/// Parses the pipeline, sets the source's location, and finds its appsink.
pub(super) fn build(plan: &Plan) -> Result<(gst::Pipeline, gst_app::AppSink), String> {
    let element = gst::parse::launch(&plan.description)
        .map_err(|e| format!("the pipeline does not parse: {e}"))?;
    let pipeline = match element.downcast::<gst::Pipeline>() {
        Ok(p) => p,
        Err(one) => {
            // A single element: wrap it, so that it has a bus and a clock.
            let p = gst::Pipeline::new();
            p.add(&one)
                .map_err(|e| format!("cannot wrap the element: {e}"))?;
            p
        }
    };
    if let Some((property, value)) = &plan.location {
        let src = pipeline
            .by_name("src")
            .ok_or("the pipeline has no element named src")?;
        if !src.has_property_with_type(property, String::static_type()) {
            return Err(format!("{} has no {property} property", src.name()));
        }
        src.set_property(property, value);
    }
    let sink = pipeline
        .by_name(SINK_NAME)
        .ok_or_else(|| format!("the pipeline has no element named {SINK_NAME:?}"))?
        .dynamic_cast::<gst_app::AppSink>()
        .map_err(|e| {
            format!(
                "the element named {SINK_NAME:?} is a {}, not an appsink",
                e.type_().name()
            )
        })?;
    sink.set_caps(Some(
        &gst::Caps::builder("video/x-raw")
            .field("format", "RGB")
            .build(),
    ));
    // Two frames: the appsink drops the older rather than stalling the
    // camera when a copy is late; the ring is where frames are kept.
    sink.set_max_buffers(2);
    sink.set_drop(true);
    let clock = gst::glib::Object::builder::<gst::SystemClock>()
        .property("clock-type", gst::ClockType::Realtime)
        .build();
    pipeline.use_clock(Some(&clock));
    Ok((pipeline, sink))
}

/// When the sample was captured, unix ms: base time plus its running time
/// on the pipeline's realtime clock; its arrival when it has no timestamp.
fn capture_time_ms(sink: &gst_app::AppSink, sample: &gst::Sample) -> i64 {
    let now = now_ms();
    let running = sample.buffer().and_then(|b| b.pts()).and_then(|pts| {
        sample
            .segment()
            .and_then(|s| s.downcast_ref::<gst::ClockTime>())
            .and_then(|s| s.to_running_time(pts))
    });
    match (sink.base_time(), running) {
        (Some(base), Some(running)) => {
            let at = ((base + running).nseconds() / 1_000_000) as i64;
            // A pipeline that brought its own clock (a gst: one) is not on
            // the wall clock: arrival is the best left.
            if (at - now).abs() > 60_000 {
                now
            } else {
                at
            }
        }
        _ => now,
    }
}

/// The sample's pixels as a frame, rows copied out of the buffer's stride.
fn to_frame(name: &str, sample: &gst::Sample, limits: &InputSettings) -> Result<Frame, String> {
    let caps = sample.caps().ok_or("a sample without caps")?;
    let info = gst_video::VideoInfo::from_caps(caps).map_err(|e| format!("caps {caps}: {e}"))?;
    if info.format() != gst_video::VideoFormat::Rgb {
        return Err(format!("format {:?}, expected RGB", info.format()));
    }
    let (w, h) = (info.width(), info.height());
    if w < MIN_SIDE || h < MIN_SIDE || u64::from(w) * u64::from(h) > limits.max_pixels {
        return Err(format!(
            "{w}x{h}: outside {MIN_SIDE} px a side to input.max_pixels ({})",
            limits.max_pixels
        ));
    }
    let stride = info.stride().first().copied().unwrap_or(0).max(0) as usize;
    let row = w as usize * 3;
    let buffer = sample.buffer().ok_or("a sample without a buffer")?;
    let map = buffer
        .map_readable()
        .map_err(|e| format!("cannot map: {e}"))?;
    let data = map.as_slice();
    if stride < row || data.len() < stride * (h as usize - 1) + row {
        return Err(format!(
            "{w}x{h} with stride {stride} in {} bytes",
            data.len()
        ));
    }
    let mut mat = Mat::new_rows_cols_with_default(h as i32, w as i32, CV_8UC3, Scalar::all(0.0))
        .map_err(|e| e.to_string())?;
    let out = mat.data_bytes_mut().map_err(|e| e.to_string())?;
    for (y, dst) in out.chunks_exact_mut(row).enumerate() {
        dst.copy_from_slice(&data[y * stride..y * stride + row]);
    }
    Frame::from_rgb(name, mat).map_err(|e| e.to_string())
}

//! Continuous mode (`fps` on a source): recognise its newest frame up to
//! `fps` times a second and publish on `P/detections/<source>` when the set
//! of labels changes, and every `capture.heartbeat_s` otherwise.
//!
//! One frame per source is in flight at a time, through the same queue as
//! requests: when the pipeline cannot keep up, frames are skipped rather
//! than queued, so requests and triggers never wait behind a backlog of
//! stale frames. A `busy` answer skips the frame the same way.
//!
//! Detections are retained and not spooled, like the status: the newest
//! set is what a subscriber needs, and a fresh one follows every heartbeat.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::answer::{self, ErrorCode, Object};
use super::feed::{FeedAnswer, Input};
use super::outbox::Message;
use super::request::{CapturedFrame, ImageSource};
use super::worker::{Job, Outcome, Reply, Work};
use super::Shared;
use crate::input::camera::{Source, State};
use crate::pipeline::Query;

/// The `P/detections/<source>` payload.
#[derive(Debug, Serialize)]
struct Detections<'a> {
    source: &'a str,
    /// The source's state now (a heartbeat while it is down says so).
    state: State,
    /// The labels recognised in the frame, sorted, each once.
    labels: &'a [String],
    /// The recognise answer's objects for that frame.
    results: &'a [Object],
    /// When that frame was captured, unix ms.
    captured_at_ms: Option<i64>,
    /// The set differs from the one published before.
    changed: bool,
}

/// Starts a task per source with `fps > 0`.
pub(super) fn start(shared: &Arc<Shared>) {
    for s in shared.settings.sources.iter().filter(|s| s.fps > 0.0) {
        let Some(source) = shared.cameras.get(&s.name).cloned() else {
            continue;
        };
        let every = Duration::from_secs_f64(1.0 / s.fps);
        tracing::info!(source = %s.name, fps = s.fps, "continuous mode: label changes on {}", shared.topics.detections(&s.name));
        tokio::spawn(run(shared.clone(), source, every));
    }
}

async fn run(shared: Arc<Shared>, source: Arc<Source>, every: Duration) {
    let topic = shared.topics.detections(source.name());
    let heartbeat = Duration::from_secs(shared.settings.capture.heartbeat_s.max(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_seq = None;
    // The last set published, and with what.
    let mut published: Option<(Vec<String>, Vec<Object>, Option<i64>)> = None;
    let mut published_at = Instant::now();
    let mut failure_logged = false;
    loop {
        tick.tick().await;
        if shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        let frame = source.latest().filter(|c| Some(c.seq) != last_seq);
        let Some(frame) = frame else {
            // No new frame (a stopped camera): the heartbeat still says so.
            if published_at.elapsed() >= heartbeat {
                if let Some((labels, results, at)) = &published {
                    publish(&shared, &topic, &source, labels, results, *at, false);
                }
                published_at = Instant::now();
            }
            continue;
        };
        last_seq = Some(frame.seq);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let request_id = format!("{}#{}", source.name(), frame.seq);
        shared.enqueue(Job {
            request_id: request_id.clone(),
            arrived: Instant::now(),
            work: Work::Recognize {
                image: ImageSource::Captured(CapturedFrame(frame.frame.clone())),
                query: Query::default(),
            },
            reply: Reply::new(move |o| {
                let _ = tx.send(o);
            }),
        });
        // Awaited here: one frame of this source in flight at a time.
        let Ok(outcome) = rx.await else { return };
        match outcome {
            Outcome::Recognized { result, .. } => {
                failure_logged = false;
                let results = answer::objects(&result);
                let mut labels: Vec<String> = results.iter().map(|o| o.rec_docs.clone()).collect();
                labels.sort();
                labels.dedup();
                let changed = published.as_ref().is_none_or(|(l, _, _)| *l != labels);
                // Every frame refreshes the page's view; only changes join its list.
                shared.feed.record(
                    FeedAnswer {
                        captured_at_ms: Some(frame.at_ms),
                        results: results.clone(),
                        ..FeedAnswer::new(
                            request_id,
                            Input::Continuous,
                            Some(source.name().to_string()),
                        )
                    },
                    Some(frame.frame.clone()),
                    changed,
                );
                if changed || published_at.elapsed() >= heartbeat {
                    publish(
                        &shared,
                        &topic,
                        &source,
                        &labels,
                        &results,
                        Some(frame.at_ms),
                        changed,
                    );
                    published = Some((labels, results, Some(frame.at_ms)));
                    published_at = Instant::now();
                }
            }
            Outcome::Failed {
                code: ErrorCode::Busy,
                ..
            } => {} // skipped: requests come first
            Outcome::Failed { code, message } if !failure_logged => {
                tracing::warn!(
                    source = source.name(),
                    code = code.as_str(),
                    "continuous mode: a frame failed: {message} (logged once until one succeeds)"
                );
                failure_logged = true;
            }
            _ => {}
        }
    }
}

fn publish(
    shared: &Shared,
    topic: &str,
    source: &Source,
    labels: &[String],
    results: &[Object],
    captured_at_ms: Option<i64>,
    changed: bool,
) {
    let payload = answer::to_vec(&Detections {
        source: source.name(),
        state: source.state(),
        labels,
        results,
        captured_at_ms,
        changed,
    });
    if changed {
        tracing::debug!(
            source = source.name(),
            ?labels,
            "continuous mode: labels changed"
        );
    }
    shared
        .outbox
        .submit(Message::status(topic.to_string(), payload));
}

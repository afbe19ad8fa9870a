//! Triggered capture: "an item is under camera N now". The trigger waits,
//! off the pipeline thread, for the first frame its source captured at or
//! after `t_ms + delay_ms`, then goes into the same queue as every
//! recognise request, carrying its answer's extra fields with it.

use std::sync::Arc;
use std::time::Duration;

use super::answer::{Capture, ErrorCode};
use super::request::{CapturedFrame, ImageSource, Trigger};
use super::worker::{Job, Outcome, Reply, Work};
use super::{ReplyTo, Shared};
use crate::input::camera::{now_ms, Missed};
use crate::input::Frame;

impl Shared {
    /// Answers a trigger admitted as new: refuses it at once when it cannot
    /// be served, else waits for its frame on the async runtime.
    pub(super) fn on_trigger(self: &Arc<Self>, t: Trigger, to: ReplyTo) {
        let now = now_ms();
        let mut capture = Capture {
            source: t.source.clone(),
            captured_at_ms: None,
            frame_age_ms: None,
            unknown: Vec::new(),
            extra: t.extra,
        };
        let Some(source) = self.cameras.get(&t.source).cloned() else {
            let names: Vec<&str> = self.cameras.iter().map(|s| s.name()).collect();
            let has = if names.is_empty() {
                "this box has no [[sources]]".to_string()
            } else {
                format!("this box has {}", names.join(", "))
            };
            let message = format!("no source named {:?}: {has}", t.source);
            return self.reply_trigger_error(to, ErrorCode::UnknownSource, &message, &capture);
        };
        let capture_settings = &self.settings.capture;
        let t_ms = t.t_ms.unwrap_or(now);
        let skew = t_ms - now;
        if skew.unsigned_abs() > capture_settings.max_skew_ms {
            let message = format!(
                "t_ms {t_ms} is {} ms in the {} of this box's clock, beyond capture.max_skew_ms ({}): check the controller's clock (NTP) and that t_ms is in milliseconds",
                skew.unsigned_abs(),
                if skew < 0 { "past" } else { "future" },
                capture_settings.max_skew_ms
            );
            return self.reply_trigger_error(to, ErrorCode::BadRequest, &message, &capture);
        }
        // Bounded by config check (delay, deadline, skew: an hour or a day
        // at most), and saturating all the same: this runs on the network task.
        let target = t_ms.saturating_add(i64::try_from(source.delay_ms()).unwrap_or(i64::MAX));
        let deadline_ms = capture_settings.deadline_ms;
        let wait = u64::try_from(target.saturating_sub(now).max(0))
            .unwrap_or(0)
            .saturating_add(deadline_ms);
        let deadline = tokio::time::Instant::now()
            .checked_add(Duration::from_millis(wait))
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400));
        let threshold = t
            .query
            .score_threshold
            .unwrap_or(self.settings.search.score_threshold);
        let shared = self.clone();
        let runtime = tokio::runtime::Handle::current();
        tokio::spawn(async move {
            let missed = match source.frame_at(target, deadline).await {
                Ok(frame) => {
                    capture.captured_at_ms = Some(frame.at_ms);
                    capture.frame_age_ms = Some(frame.at_ms - t_ms);
                    let reply = {
                        let shared = shared.clone();
                        let (frame, id) = (frame.frame.clone(), t.request_id.clone());
                        Reply::new(move |o| {
                            let recognised = matches!(o, Outcome::Recognized { .. });
                            if let Outcome::Recognized { result, .. } = &o {
                                capture.unknown = shared.keep_unknown(
                                    &runtime, &frame, result, threshold, &id, &capture,
                                );
                                shared.keep_frame(&runtime, &frame, &id, &capture);
                            }
                            let frame = recognised.then_some(frame);
                            shared.answer_outcome(to, o, Some(&capture), frame)
                        })
                    };
                    return shared.enqueue(Job {
                        request_id: t.request_id,
                        arrived: std::time::Instant::now(),
                        work: Work::Recognize {
                            image: ImageSource::Captured(CapturedFrame(frame.frame)),
                            query: t.query,
                        },
                        reply,
                    });
                }
                Err(missed) => missed,
            };
            let (code, message) = match missed {
                Missed::Unavailable(state) => (
                    ErrorCode::SourceUnavailable,
                    format!("source {:?} is {state}; P/status shows its state", source.name()),
                ),
                Missed::Deadline => (
                    ErrorCode::NoFrame,
                    format!(
                        "no frame captured at or after {target} (t_ms + delay_ms) came within capture.deadline_ms ({deadline_ms} ms)"
                    ),
                ),
                Missed::Gap { resumed_ms } => (
                    ErrorCode::NoFrame,
                    format!(
                        "source {:?} was not streaming at {target} (t_ms + delay_ms): its frames resumed {} ms later",
                        source.name(),
                        resumed_ms - target
                    ),
                ),
                Missed::Gone { oldest_ms } => (
                    ErrorCode::NoFrame,
                    format!(
                        "the frame for {target} has left the ring: the oldest held was captured {} ms later; a larger capture.ring_frames keeps frames longer",
                        oldest_ms - target
                    ),
                ),
            };
            shared.reply_trigger_error(to, code, &message, &capture);
        });
    }

    /// Saves an answered trigger's frame for audit, off the pipeline thread.
    fn keep_frame(
        &self,
        runtime: &tokio::runtime::Handle,
        frame: &Arc<Frame>,
        request_id: &str,
        capture: &Capture,
    ) {
        let Some(archive) = self.archive.clone() else {
            return;
        };
        let (frame, id, source) = (
            frame.clone(),
            request_id.to_string(),
            capture.source.clone(),
        );
        let at = capture.captured_at_ms.unwrap_or_default();
        runtime.spawn_blocking(move || {
            if let Err(e) = archive.keep(&source, at, &id, &frame) {
                tracing::warn!(source = %source, request_id = %id, "the frame could not be kept for audit: {e}");
            }
        });
    }
}

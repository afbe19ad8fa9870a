//! What the box answered lately, for the operator's page: the last N
//! answers from any input (MQTT requests, triggers, continuous mode), and
//! per source the frame its last answer was computed on. The answer path
//! writes here; the HTTP server reads, and follows the broadcast events.
//! State only: no I/O.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

use super::answer::{ErrorCode, Object, UnknownRef};
use crate::input::Frame;

/// Where an answer's image came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    /// A recognise request's payload or path (MQTT, or the HTTP API).
    Request,
    /// A trigger on one of the box's sources.
    Trigger,
    /// Continuous mode on one of the box's sources.
    Continuous,
}

impl Input {
    /// A trigger's input when the answer has a camera's `capture`, else a request's.
    pub fn of(capture: Option<&super::answer::Capture>) -> Input {
        if capture.is_some() {
            Input::Trigger
        } else {
            Input::Request
        }
    }
}

/// One answer, as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FeedAnswer {
    /// Increases by one per answer recorded (the page's cache key).
    pub seq: u64,
    /// When it was answered, unix ms.
    pub at_ms: i64,
    /// The request's id (a continuous frame's is `continuous`).
    pub request_id: String,
    /// Where the image came from.
    pub input: Input,
    /// The camera, for triggers and continuous mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// When the frame was captured (cameras).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub captured_at_ms: Option<i64>,
    /// The frame's size, for drawing boxes on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<[u32; 2]>,
    /// Whether it was answered with results.
    pub ok: bool,
    /// What was recognised.
    pub results: Vec<Object>,
    /// Crops kept as unknown items (triggers).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<UnknownRef>,
    /// The error, when not `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<FeedError>,
    /// Arrival to answer, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<f64>,
    /// Whether it is among the recent answers (continuous mode lists only
    /// changes of labels; every frame still refreshes its camera's view).
    #[serde(default)]
    pub listed: bool,
}

impl FeedAnswer {
    /// An answer to `request_id` from `input`, answered now, `ok` with no
    /// results until the caller says more. `seq`, `size` and `listed` are
    /// [`Feed::record`]'s to set.
    pub fn new(request_id: String, input: Input, source: Option<String>) -> FeedAnswer {
        FeedAnswer {
            seq: 0,
            at_ms: crate::input::camera::now_ms(),
            request_id,
            input,
            source,
            captured_at_ms: None,
            size: None,
            ok: true,
            results: Vec::new(),
            unknown: Vec::new(),
            error: None,
            total_ms: None,
            listed: false,
        }
    }
}

/// An error answer's code and message.
#[derive(Debug, Clone, Serialize)]
pub struct FeedError {
    /// As in MQTT error answers.
    pub code: ErrorCode,
    /// What went wrong.
    pub message: String,
}

/// What the page's event stream carries.
#[derive(Debug, Clone)]
pub enum FeedEvent {
    /// An answer was recorded.
    Answer(Arc<FeedAnswer>),
    /// An unknown item was kept (its `P/unknown` announcement).
    Unknown(Arc<serde_json::Value>),
    /// The gallery or the unknown items changed: lists should be fetched again.
    Changed(&'static str),
}

/// A source's last answered frame.
#[derive(Debug, Clone)]
pub struct Answered {
    /// The frame.
    pub frame: Arc<Frame>,
    /// Its answer.
    pub answer: Arc<FeedAnswer>,
}

/// Recent answers, bounded, and each source's last answered frame.
#[derive(Debug)]
pub struct Feed {
    cap: usize,
    seq: AtomicU64,
    recent: Mutex<VecDeque<Arc<FeedAnswer>>>,
    frames: Mutex<BTreeMap<String, Answered>>,
    events: broadcast::Sender<FeedEvent>,
}

impl Feed {
    /// Keeps the last `cap` answers.
    pub fn new(cap: usize) -> Feed {
        // A slow page skips events (it refetches on a lag), never slows answers.
        let (events, _) = broadcast::channel(256);
        Feed {
            cap: cap.max(1),
            seq: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::new()),
            frames: Mutex::new(BTreeMap::new()),
            events,
        }
    }

    /// Records an answer; `frame` is the image it was computed on, kept as
    /// its source's last answered frame. `listed`: whether it joins the
    /// recent answers (continuous mode lists only changes of labels).
    pub fn record(&self, mut answer: FeedAnswer, frame: Option<Arc<Frame>>, listed: bool) {
        answer.seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        answer.listed = listed;
        if let Some(f) = &frame {
            answer.size = Some([f.width, f.height]);
        }
        let answer = Arc::new(answer);
        if listed {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            recent.push_back(answer.clone());
            while recent.len() > self.cap {
                recent.pop_front();
            }
        }
        if let (Some(frame), Some(source)) = (frame, &answer.source) {
            self.frames
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    source.clone(),
                    Answered {
                        frame,
                        answer: answer.clone(),
                    },
                );
        }
        // No page open: no receiver, nothing to do.
        let _ = self.events.send(FeedEvent::Answer(answer));
    }

    /// Tells the page that something it lists changed.
    pub fn notify(&self, event: FeedEvent) {
        let _ = self.events.send(event);
    }

    /// The last `n` answers, newest first.
    pub fn recent(&self, n: usize) -> Vec<Arc<FeedAnswer>> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().rev().take(n).cloned().collect()
    }

    /// A source's last answered frame.
    pub fn answered(&self, source: &str) -> Option<Answered> {
        self.frames
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(source)
            .cloned()
    }

    /// Follows the events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<FeedEvent> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(id: &str, source: Option<&str>) -> FeedAnswer {
        FeedAnswer::new(id.into(), Input::Request, source.map(str::to_string))
    }

    #[test]
    fn recent_answers_are_bounded_newest_first_and_broadcast() {
        let feed = Feed::new(2);
        let mut events = feed.subscribe();
        for id in ["a", "b", "c"] {
            feed.record(answer(id, None), None, true);
        }
        feed.record(answer("unlisted", None), None, false);
        let ids: Vec<_> = feed
            .recent(10)
            .iter()
            .map(|a| a.request_id.clone())
            .collect();
        assert_eq!(ids, ["c", "b"]);
        let mut seqs = Vec::new();
        while let Ok(FeedEvent::Answer(a)) = events.try_recv() {
            seqs.push(a.seq);
        }
        assert_eq!(seqs, [1, 2, 3, 4]);
    }

    #[test]
    fn a_source_keeps_its_last_answered_frame() {
        use opencv::core::{Mat, Scalar, CV_8UC3};
        let m = Mat::new_rows_cols_with_default(4, 6, CV_8UC3, Scalar::all(0.0)).unwrap();
        let frame = Arc::new(Frame::from_rgb("f", m).unwrap());
        let feed = Feed::new(4);
        assert!(feed.answered("cam1").is_none());
        feed.record(answer("t1", Some("cam1")), Some(frame.clone()), true);
        feed.record(answer("t2", Some("cam1")), Some(frame), true);
        let a = feed.answered("cam1").unwrap();
        assert_eq!(a.answer.request_id, "t2");
        assert_eq!(a.answer.size, Some([6, 4]));
    }
}

//! Keeping a box's line gallery in step with the line's, when changes alone
//! cannot: a new box, one whose broker session was lost, one whose gallery
//! was replaced by an update. State only; the daemon does the I/O.
//!
//! The line keeps two retained messages (`docs/MQTT.md`):
//! `L/gallery/manifest` (small: the line's gallery version, where the state
//! is) and `L/gallery/state` (every change, with the features of the items
//! that are in). Every box subscribes to the manifest. When the manifest's
//! version is not the box's own (after a short, per-box delay, so that the
//! box that is quickest publishes and the others then agree), the box
//! subscribes to the state, receives the retained copy, merges it (a union:
//! see `search::line`), unsubscribes, and publishes its own state and
//! manifest if it holds a change the state lacked. Each publication carries
//! everything its publisher has seen, so the retained state only grows, and
//! every box that knows more than it makes it whole again.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::search::gallery::{unix_now, Manifest};
use crate::search::line::{LineState, LineVersion, Logged};

/// The payloads' format; a box refuses another.
pub const FORMAT: u32 = 1;

/// `L/gallery/state`, retained: every change the publisher has applied.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LineStatePayload {
    /// [`FORMAT`].
    pub format: u32,
    /// The line.
    pub line: String,
    /// sha256 of the recogniser that computed the features.
    pub model_sha256: String,
    /// Feature length.
    pub dim: usize,
    /// The version these changes make.
    pub version: LineVersion,
    /// The box that published it.
    pub published_by: String,
    /// When (seconds since the Unix epoch).
    pub published_unix: u64,
    /// The changes, oldest first.
    pub changes: Vec<Logged>,
}

impl LineStatePayload {
    /// A box's state.
    pub fn new(line: String, device_id: String, gallery: &Manifest, own: &LineState) -> Self {
        LineStatePayload {
            format: FORMAT,
            line,
            model_sha256: gallery.model_sha256.clone(),
            dim: gallery.dim,
            version: own.version(),
            published_by: device_id,
            published_unix: unix_now(),
            changes: own.export(),
        }
    }

    /// Reads a received state; the message says what is wrong with it.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let s: LineStatePayload = serde_json::from_slice(bytes)
            .map_err(|e| format!("the line's gallery state is unreadable: {e}"))?;
        if s.format != FORMAT {
            return Err(format!(
                "the line's gallery state has format {} (published by {}); this build reads {FORMAT}",
                s.format, s.published_by
            ));
        }
        Ok(s)
    }

    /// Its manifest, naming where it is.
    pub fn manifest(&self, state_topic: &str, state_bytes: usize) -> LineManifestPayload {
        LineManifestPayload {
            format: FORMAT,
            line: self.line.clone(),
            version: self.version.clone(),
            model_sha256: self.model_sha256.clone(),
            state_topic: state_topic.to_string(),
            state_bytes,
            published_by: self.published_by.clone(),
            published_unix: self.published_unix,
        }
    }
}

/// `L/gallery/manifest`, retained: the line's gallery version and where its state is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LineManifestPayload {
    /// [`FORMAT`].
    pub format: u32,
    /// The line.
    pub line: String,
    /// The line's gallery version.
    pub version: LineVersion,
    /// sha256 of the recogniser that computed the features.
    pub model_sha256: String,
    /// The retained topic that holds the state.
    pub state_topic: String,
    /// Its size.
    pub state_bytes: usize,
    /// The box that published it.
    pub published_by: String,
    /// When (seconds since the Unix epoch).
    pub published_unix: u64,
}

/// How long a fetch waits for the retained state before taking the line as
/// having none (a new line).
pub const FETCH_WAIT: Duration = Duration::from_secs(3);

/// How long a box waits after a merge it could not make.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// What the daemon should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Subscribe to `L/gallery/state` (its retained copy arrives at once).
    Fetch,
    /// Nothing was retained in time: unsubscribe, and have the pipeline
    /// thread merge no state (the merge answers with what to publish).
    MergeNone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Fetching { until: Instant },
    Merging,
}

/// The sync state of one box.
#[derive(Debug)]
pub struct LineSync {
    own: Option<String>,
    seen: Option<String>,
    check_at: Option<Instant>,
    phase: Phase,
    delay: Duration,
}

impl LineSync {
    /// A box whose checks wait `delay` (per box, so boxes do not all fetch at once).
    pub fn new(device_id: &str) -> LineSync {
        let spread: u64 = device_id
            .bytes()
            .fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
            % 1000;
        LineSync {
            own: None,
            seen: None,
            check_at: None,
            phase: Phase::Idle,
            delay: Duration::from_millis(300 + spread),
        }
    }

    /// The box's own line version changed (digest; `None`: no changes yet).
    pub fn own(&mut self, digest: Option<String>, now: Instant) {
        if self.own != digest {
            self.own = digest;
            self.schedule(now);
        }
    }

    /// The line's retained manifest says the line is at `digest`.
    pub fn manifest(&mut self, digest: String, now: Instant) {
        self.seen = Some(digest);
        self.schedule(now);
    }

    /// Whether the line's retained state and this box differ (both `None`:
    /// no changes anywhere, nothing to do).
    fn behind(&self) -> bool {
        self.own != self.seen
    }

    fn schedule(&mut self, now: Instant) {
        if self.behind() && self.check_at.is_none() {
            self.check_at = Some(now + self.delay);
        }
    }

    /// The retained state arrived (also when not asked for, through a
    /// subscription left in the session by a crash): the daemon merges it.
    pub fn state_received(&mut self) {
        self.phase = Phase::Merging;
    }

    /// The merge is done. A merge that failed (a state this box cannot
    /// take: another recogniser, another format) is not tried again for
    /// [`RETRY_AFTER_FAILURE`]: the line's state does not change by itself,
    /// and the log should say so once a minute, not every second.
    pub fn merged(&mut self, now: Instant, ok: bool) {
        self.phase = Phase::Idle;
        if ok {
            self.schedule(now);
        } else {
            self.check_at = Some(now + RETRY_AFTER_FAILURE);
        }
    }

    /// The connection dropped: a fetch in progress is started again later.
    pub fn disconnected(&mut self, now: Instant) {
        if let Phase::Fetching { .. } = self.phase {
            self.phase = Phase::Idle;
            self.check_at = Some(now + self.delay);
        }
    }

    /// What is due at `now`.
    pub fn tick(&mut self, now: Instant) -> Option<Action> {
        match self.phase {
            Phase::Merging => None,
            Phase::Fetching { until } if now >= until => {
                self.phase = Phase::Merging;
                Some(Action::MergeNone)
            }
            Phase::Fetching { .. } => None,
            Phase::Idle => {
                let due = self.check_at.is_some_and(|t| now >= t);
                if !due {
                    return None;
                }
                self.check_at = None;
                if !self.behind() {
                    return None;
                }
                self.phase = Phase::Fetching {
                    until: now + FETCH_WAIT,
                };
                Some(Action::Fetch)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_box_in_step_does_nothing() {
        let t0 = Instant::now();
        let mut s = LineSync::new("box0");
        for k in 0..10 {
            assert_eq!(s.tick(t0 + Duration::from_secs(k)), None);
        }
        s.own(Some("a".into()), t0);
        s.manifest("a".into(), t0);
        assert_eq!(s.tick(t0 + Duration::from_secs(5)), None);
    }

    #[test]
    fn a_new_box_fetches_after_its_delay_then_merges() {
        let t0 = Instant::now();
        let mut s = LineSync::new("box0");
        s.manifest("line".into(), t0);
        assert_eq!(s.tick(t0), None, "waits its delay");
        assert_eq!(s.tick(t0 + Duration::from_secs(2)), Some(Action::Fetch));
        assert_eq!(s.tick(t0 + Duration::from_secs(3)), None, "fetching");
        s.state_received();
        assert_eq!(
            s.tick(t0 + Duration::from_secs(3) + FETCH_WAIT),
            None,
            "merging"
        );
        s.own(Some("line".into()), t0 + Duration::from_secs(3));
        s.merged(t0 + Duration::from_secs(3), true);
        assert_eq!(s.tick(t0 + Duration::from_secs(9)), None, "now in step");
    }

    #[test]
    fn a_state_this_box_cannot_take_is_tried_again_a_minute_later() {
        let t0 = Instant::now();
        let mut s = LineSync::new("box3");
        s.manifest("line".into(), t0);
        assert_eq!(s.tick(t0 + Duration::from_secs(2)), Some(Action::Fetch));
        s.state_received();
        s.merged(t0 + Duration::from_secs(2), false);
        assert_eq!(s.tick(t0 + Duration::from_secs(30)), None);
        assert_eq!(
            s.tick(t0 + Duration::from_secs(2) + RETRY_AFTER_FAILURE),
            Some(Action::Fetch)
        );
    }

    #[test]
    fn a_change_here_is_published_unless_another_box_did_first() {
        let t0 = Instant::now();
        let mut s = LineSync::new("box1");
        s.manifest("v1".into(), t0);
        s.own(Some("v1".into()), t0);
        // A change applied here: the line's manifest is now behind.
        s.own(Some("v2".into()), t0);
        // Another box published v2 before this box's delay ran out.
        s.manifest("v2".into(), t0 + Duration::from_millis(100));
        assert_eq!(s.tick(t0 + Duration::from_secs(2)), None);
        // Nobody did: fetch; nothing retained in time: merge with none.
        s.own(Some("v3".into()), t0 + Duration::from_secs(2));
        assert_eq!(s.tick(t0 + Duration::from_secs(4)), Some(Action::Fetch));
        assert_eq!(
            s.tick(t0 + Duration::from_secs(4) + FETCH_WAIT),
            Some(Action::MergeNone)
        );
    }

    #[test]
    fn a_fetch_cut_by_a_disconnect_is_tried_again() {
        let t0 = Instant::now();
        let mut s = LineSync::new("box2");
        s.manifest("v1".into(), t0);
        assert_eq!(s.tick(t0 + Duration::from_secs(2)), Some(Action::Fetch));
        s.disconnected(t0 + Duration::from_secs(2));
        assert_eq!(s.tick(t0 + Duration::from_secs(4)), Some(Action::Fetch));
    }
}

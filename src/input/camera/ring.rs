//! The last frames of one source, each with the wall-clock time it was
//! captured, and the one rule of triggered capture: a trigger for moment
//! `t` gets the first frame captured at or after `t`. State only; the
//! source's thread fills it and triggers read it.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::input::Frame;

/// A frame as captured.
#[derive(Debug, Clone)]
pub struct Captured {
    /// Its number on this source, counted from 0 since the daemon started.
    pub seq: u64,
    /// When it was captured: unix milliseconds.
    pub at_ms: i64,
    /// The pixels.
    pub frame: Arc<Frame>,
}

/// What the ring holds for a moment.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// The first frame captured at or after it.
    Found(Captured),
    /// Not captured yet: wait for the next frame.
    NotYet,
    /// Frames from then have left the ring (it keeps `capacity` frames): the
    /// right one is gone, and a later one would be the wrong item.
    Gone {
        /// Capture time of the oldest frame still held.
        oldest_ms: i64,
    },
}

/// A bounded ring of captured frames, oldest first.
#[derive(Debug)]
pub struct Ring {
    capacity: usize,
    frames: VecDeque<Captured>,
    /// Capture time of the newest frame pushed out, if any.
    evicted_ms: Option<i64>,
    next_seq: u64,
}

impl Ring {
    /// An empty ring of `capacity` frames (at least one).
    pub fn new(capacity: usize) -> Ring {
        Ring {
            capacity: capacity.max(1),
            frames: VecDeque::with_capacity(capacity.max(1)),
            evicted_ms: None,
            next_seq: 0,
        }
    }

    /// Adds a frame captured at `at_ms`; returns its number.
    pub fn push(&mut self, at_ms: i64, frame: Arc<Frame>) -> u64 {
        if self.frames.len() == self.capacity {
            if let Some(old) = self.frames.pop_front() {
                self.evicted_ms = Some(self.evicted_ms.map_or(old.at_ms, |e| e.max(old.at_ms)));
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.frames.push_back(Captured { seq, at_ms, frame });
        seq
    }

    /// The first frame (in capture order) captured at or after `t_ms`.
    pub fn at_or_after(&self, t_ms: i64) -> Lookup {
        // A frame captured at or after t was pushed out: every frame still
        // held came later than that one.
        if self.evicted_ms.is_some_and(|e| e >= t_ms) {
            return Lookup::Gone {
                oldest_ms: self.frames.front().map_or(t_ms, |f| f.at_ms),
            };
        }
        match self.frames.iter().find(|f| f.at_ms >= t_ms) {
            Some(f) => Lookup::Found(f.clone()),
            None => Lookup::NotYet,
        }
    }

    /// The newest frame, if any.
    pub fn latest(&self) -> Option<&Captured> {
        self.frames.back()
    }

    /// Frames held.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether no frame is held.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opencv::core::{Mat, Scalar, CV_8UC3};

    fn frame() -> Arc<Frame> {
        let m = Mat::new_rows_cols_with_default(8, 8, CV_8UC3, Scalar::all(0.0)).unwrap();
        Arc::new(Frame::from_rgb("t", m).unwrap())
    }

    fn found(l: Lookup) -> i64 {
        match l {
            Lookup::Found(c) => c.at_ms,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn a_moment_gets_the_first_frame_at_or_after_it() {
        let mut r = Ring::new(4);
        assert!(matches!(r.at_or_after(0), Lookup::NotYet));
        for t in [100, 133, 166] {
            r.push(t, frame());
        }
        assert_eq!(found(r.at_or_after(90)), 100);
        assert_eq!(found(r.at_or_after(100)), 100);
        assert_eq!(found(r.at_or_after(101)), 133);
        assert_eq!(found(r.at_or_after(166)), 166);
        assert!(matches!(r.at_or_after(167), Lookup::NotYet));
    }

    #[test]
    fn a_moment_whose_frame_left_the_ring_is_gone_not_matched_to_a_later_frame() {
        let mut r = Ring::new(2);
        for t in [100, 133, 166, 200] {
            r.push(t, frame());
        }
        // 100 and 133 were pushed out.
        assert!(matches!(r.at_or_after(90), Lookup::Gone { oldest_ms: 166 }));
        assert!(matches!(r.at_or_after(133), Lookup::Gone { .. }));
        // 134: its first frame at or after is 166, still held.
        assert_eq!(found(r.at_or_after(134)), 166);
        assert_eq!(r.len(), 2);
        assert_eq!(r.latest().map(|c| c.seq), Some(3));
    }
}

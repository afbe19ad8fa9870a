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
    /// The pipeline run it came from (a new run after every restart).
    pub run: u64,
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
    /// The source was not streaming then (starting, or in an outage): the
    /// first frame after that moment began a new run, later than it.
    Gap {
        /// Capture time of that first frame.
        resumed_ms: i64,
    },
}

/// A bounded ring of captured frames, oldest first.
#[derive(Debug)]
pub struct Ring {
    capacity: usize,
    frames: VecDeque<Captured>,
    /// Capture time and run of the newest frame pushed out, if any.
    evicted: Option<(i64, u64)>,
    next_seq: u64,
    run: u64,
}

impl Ring {
    /// An empty ring of `capacity` frames (at least one).
    pub fn new(capacity: usize) -> Ring {
        Ring {
            capacity: capacity.max(1),
            frames: VecDeque::with_capacity(capacity.max(1)),
            evicted: None,
            next_seq: 0,
            run: 0,
        }
    }

    /// The pipeline starts again: the next frame begins a new run, and a
    /// moment before it was not seen.
    pub fn restart(&mut self) {
        self.run += 1;
    }

    /// Adds a frame captured at `at_ms`; returns its number.
    /// A frame older than the newest held means the clock stepped back
    /// (an NTP correction): the frames held no longer order by time, so
    /// they are dropped and a new run begins.
    pub fn push(&mut self, at_ms: i64, frame: Arc<Frame>) -> u64 {
        if self.frames.back().is_some_and(|b| at_ms < b.at_ms) {
            tracing::warn!(
                "frame times went back {} ms (the wall clock stepped): earlier frames dropped",
                self.frames.back().map_or(0, |b| b.at_ms - at_ms)
            );
            self.frames.clear();
            self.evicted = None;
            self.run += 1;
        }
        if self.frames.len() == self.capacity {
            if let Some(old) = self.frames.pop_front() {
                self.evicted = Some((old.at_ms, old.run));
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.frames.push_back(Captured {
            seq,
            at_ms,
            run: self.run,
            frame,
        });
        seq
    }

    /// The first frame (in capture order) captured at or after `t_ms`.
    pub fn at_or_after(&self, t_ms: i64) -> Lookup {
        // A frame captured at or after t was pushed out: every frame still
        // held came later than that one.
        if self.evicted.is_some_and(|(e, _)| e >= t_ms) {
            return Lookup::Gone {
                oldest_ms: self.frames.front().map_or(t_ms, |f| f.at_ms),
            };
        }
        let Some(i) = self.frames.iter().position(|f| f.at_ms >= t_ms) else {
            return Lookup::NotYet;
        };
        let f = &self.frames[i];
        let before = match i {
            0 => self.evicted.map(|(_, run)| run),
            _ => Some(self.frames[i - 1].run),
        };
        if f.at_ms > t_ms && before != Some(f.run) {
            // The frame before it (if any) is from another run: between the
            // two, nothing was captured, and the moment fell there.
            return Lookup::Gap {
                resumed_ms: f.at_ms,
            };
        }
        Lookup::Found(f.clone())
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
        // Before the first frame: the source was not streaming yet.
        assert!(matches!(r.at_or_after(90), Lookup::Gap { resumed_ms: 100 }));
        assert_eq!(found(r.at_or_after(100)), 100);
        assert_eq!(found(r.at_or_after(101)), 133);
        assert_eq!(found(r.at_or_after(166)), 166);
        assert!(matches!(r.at_or_after(167), Lookup::NotYet));
    }

    #[test]
    fn a_moment_in_an_outage_is_a_gap_and_a_clock_step_back_starts_over() {
        let mut r = Ring::new(8);
        for t in [100, 133] {
            r.push(t, frame());
        }
        r.restart();
        for t in [5000, 5033] {
            r.push(t, frame());
        }
        assert_eq!(found(r.at_or_after(120)), 133);
        assert!(matches!(
            r.at_or_after(2000),
            Lookup::Gap { resumed_ms: 5000 }
        ));
        assert_eq!(found(r.at_or_after(5000)), 5000);
        assert_eq!(found(r.at_or_after(5001)), 5033);
        // The clock steps back 3 s: what was held is dropped.
        r.push(2100, frame());
        assert_eq!(r.len(), 1);
        assert_eq!(found(r.at_or_after(2100)), 2100);
        assert!(matches!(r.at_or_after(2000), Lookup::Gap { .. }));
    }

    #[test]
    fn a_moment_whose_frame_left_the_ring_is_gone_not_matched_to_a_later_frame() {
        let mut r = Ring::new(2);
        for t in [100, 133, 166, 200] {
            r.push(t, frame());
        }
        // 100 and 133 were pushed out.
        assert!(matches!(r.at_or_after(90), Lookup::Gone { oldest_ms: 166 }));
        assert!(
            matches!(r.at_or_after(150), Lookup::Found(_)),
            "the run goes on across evictions"
        );
        assert!(matches!(r.at_or_after(133), Lookup::Gone { .. }));
        // 134: its first frame at or after is 166, still held.
        assert_eq!(found(r.at_or_after(134)), 166);
        assert_eq!(r.len(), 2);
        assert_eq!(r.latest().map(|c| c.seq), Some(3));
    }
}

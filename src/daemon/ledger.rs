//! The duplicate filter. QoS 1 means "at least once": after a reconnect the
//! broker redelivers every request the daemon had not acknowledged, and a
//! controller may resend on its own. Each request id is computed once.
//!
//! Recent answers are kept (bounded in bytes) because a resend can mean the
//! answer was lost: a broker that crashes loses what it had not saved yet,
//! and the controller, having waited in vain, asks again. Such a resend gets
//! the same answer again rather than silence. Answers that say "try again"
//! (`busy`, `internal`) are not remembered, so a retry is served afresh.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use super::mqtt::Delivery;

enum Seen {
    /// Being worked on; deliveries that arrived meanwhile wait for the answer.
    Working(Vec<Delivery>),
    /// Answered (possibly not yet acknowledged by the broker), with the
    /// answer while it is in the cache.
    Answered(Option<Bytes>),
}

/// What to do with a delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// First time: serve it.
    New,
    /// Being served: its acknowledgement was attached to the answer.
    Held,
    /// Answered already: send this answer again, or (evicted from the cache)
    /// just acknowledge the delivery.
    Answered(Option<Bytes>),
}

/// Recent request ids, bounded, and their recent answers.
pub struct Ledger {
    cap: usize,
    order: VecDeque<String>,
    seen: HashMap<String, Seen>,
    cache_cap: usize,
    cache_bytes: usize,
    /// Ids whose answer is cached, oldest first.
    cached: VecDeque<String>,
}

impl Ledger {
    /// Remembers up to `cap` ids and up to `cache_bytes` of their answers.
    pub fn new(cap: usize, cache_bytes: usize) -> Ledger {
        Ledger {
            cap: cap.max(16),
            order: VecDeque::new(),
            seen: HashMap::new(),
            cache_cap: cache_bytes,
            cache_bytes: 0,
            cached: VecDeque::new(),
        }
    }

    /// Records a delivery of `id`.
    pub fn admit(&mut self, id: &str, delivery: Option<Delivery>) -> Admit {
        match self.seen.get_mut(id) {
            Some(Seen::Working(held)) => {
                held.extend(delivery);
                Admit::Held
            }
            Some(Seen::Answered(answer)) => Admit::Answered(answer.clone()),
            None => {
                self.seen.insert(id.to_string(), Seen::Working(Vec::new()));
                self.order.push_back(id.to_string());
                self.evict();
                Admit::New
            }
        }
    }

    /// Marks `id` answered with `answer` (kept for resends while the cache
    /// has room; `None` keeps only the id); returns the duplicate deliveries
    /// held for it.
    pub fn finish(&mut self, id: &str, answer: Option<Bytes>) -> Vec<Delivery> {
        let answer = answer.filter(|a| a.len() <= self.cache_cap);
        if let Some(a) = &answer {
            self.cache_bytes += a.len();
            self.cached.push_back(id.to_string());
        }
        let held = match self.seen.insert(id.to_string(), Seen::Answered(answer)) {
            Some(Seen::Working(held)) => held,
            Some(Seen::Answered(old)) => {
                self.cache_bytes -= old.map_or(0, |o| o.len());
                Vec::new()
            }
            None => {
                self.order.push_back(id.to_string());
                Vec::new()
            }
        };
        self.evict();
        self.shrink_cache();
        held
    }

    /// Forgets `id` (its answer said "try again", so a retry must be served);
    /// returns the duplicate deliveries held for it.
    pub fn forget(&mut self, id: &str) -> Vec<Delivery> {
        match self.seen.remove(id) {
            Some(Seen::Working(held)) => held,
            Some(Seen::Answered(old)) => {
                self.cache_bytes -= old.map_or(0, |o| o.len());
                Vec::new()
            }
            None => Vec::new(),
        }
        // `order` and `cached` may still name the id; both skip ids that are gone.
    }

    /// Answered ids, oldest first: saved at a clean stop, so that requests
    /// the broker redelivers to the next run are not served twice.
    pub fn answered(&self) -> Vec<&str> {
        self.order
            .iter()
            .filter(|id| matches!(self.seen.get(*id), Some(Seen::Answered(_))))
            .map(String::as_str)
            .collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.len()
    }

    fn evict(&mut self) {
        // Ids still being worked on are never forgotten: their duplicates must keep being caught.
        let mut rounds = self.order.len();
        while self.seen.len() > self.cap && rounds > 0 {
            rounds -= 1;
            let Some(id) = self.order.pop_front() else {
                break;
            };
            match self.seen.get(&id) {
                Some(Seen::Working(_)) => self.order.push_back(id),
                Some(Seen::Answered(a)) => {
                    self.cache_bytes -= a.as_ref().map_or(0, |a| a.len());
                    self.seen.remove(&id);
                }
                None => {}
            }
        }
    }

    /// Drops the oldest cached answers (keeping their ids) until under the byte limit.
    fn shrink_cache(&mut self) {
        while self.cache_bytes > self.cache_cap {
            let Some(id) = self.cached.pop_front() else {
                break;
            };
            if let Some(Seen::Answered(a)) = self.seen.get_mut(&id) {
                self.cache_bytes -= a.take().map_or(0, |a| a.len());
            }
        }
        // Ids evicted or forgotten leave stale entries; keep the queue from growing past the window.
        if self.cached.len() > 2 * self.cap {
            let seen = &self.seen;
            self.cached
                .retain(|id| matches!(seen.get(id), Some(Seen::Answered(Some(_)))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery() -> Option<Delivery> {
        Some(Delivery::V311(rumqttc::Publish::new(
            "t",
            rumqttc::QoS::AtLeastOnce,
            "x",
        )))
    }

    #[test]
    fn each_id_is_served_once() {
        let mut l = Ledger::new(16, 1 << 20);
        assert_eq!(l.admit("a", None), Admit::New);
        assert_eq!(l.admit("a", delivery()), Admit::Held);
        assert_eq!(
            l.finish("a", Some(Bytes::from_static(b"answer a"))).len(),
            1
        );
        assert_eq!(
            l.admit("a", None),
            Admit::Answered(Some(Bytes::from_static(b"answer a")))
        );
    }

    #[test]
    fn try_again_answers_are_forgotten() {
        let mut l = Ledger::new(16, 1 << 20);
        assert_eq!(l.admit("b", None), Admit::New);
        assert_eq!(l.admit("b", delivery()), Admit::Held);
        assert_eq!(
            l.forget("b").len(),
            1,
            "held duplicates are acknowledged with the busy answer"
        );
        assert_eq!(
            l.admit("b", None),
            Admit::New,
            "a retry after busy is served"
        );
        assert!(l.answered().is_empty());
    }

    #[test]
    fn the_answer_cache_is_bounded_in_bytes_and_keeps_the_ids() {
        let mut l = Ledger::new(1000, 100);
        for i in 0..30 {
            let id = i.to_string();
            l.admit(&id, None);
            l.finish(&id, Some(Bytes::from(vec![b'x'; 10])));
        }
        assert!(l.cache_bytes <= 100);
        assert_eq!(
            l.admit("0", None),
            Admit::Answered(None),
            "oldest answer dropped, id still known"
        );
        assert_eq!(
            l.admit("29", None),
            Admit::Answered(Some(Bytes::from(vec![b'x'; 10])))
        );
        l.finish("big", Some(Bytes::from(vec![b'y'; 101])));
        assert_eq!(
            l.admit("big", None),
            Admit::Answered(None),
            "an answer over the whole cache is not kept"
        );
        l.forget("29");
        assert!(l.cache_bytes <= 90);
    }

    #[test]
    fn window_is_bounded_but_keeps_work_in_progress() {
        let mut l = Ledger::new(16, 1 << 20);
        assert_eq!(l.admit("busy", None), Admit::New);
        for i in 0..100 {
            let id = i.to_string();
            l.admit(&id, None);
            l.finish(&id, Some(Bytes::from_static(b"{}")));
        }
        assert!(l.cache_bytes <= 16 * 2);
        assert!(l.len() <= 16);
        assert_eq!(l.admit("busy", None), Admit::Held);
        assert_eq!(
            l.admit("0", None),
            Admit::New,
            "oldest answered ids are forgotten first"
        );
    }
}

//! The duplicate filter. QoS 1 means "at least once": after a reconnect the
//! broker redelivers every request the daemon had not acknowledged, and a
//! controller may resend on its own. Each request id is answered once; later
//! deliveries are acknowledged together with that one answer.

use std::collections::{HashMap, VecDeque};

use super::mqtt::Delivery;

enum Seen {
    /// Being worked on; deliveries that arrived meanwhile wait for the answer.
    Working(Vec<Delivery>),
    /// Answered (possibly not yet acknowledged by the broker).
    Answered,
}

/// What to do with a delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// First time: serve it.
    New,
    /// Being served: its acknowledgement was attached to the answer.
    Held,
    /// Answered already: acknowledge it with that answer.
    Answered,
}

/// Recent request ids, bounded.
pub struct Ledger {
    cap: usize,
    order: VecDeque<String>,
    seen: HashMap<String, Seen>,
}

impl Ledger {
    /// Remembers up to `cap` ids.
    pub fn new(cap: usize) -> Ledger {
        Ledger { cap: cap.max(16), order: VecDeque::new(), seen: HashMap::new() }
    }

    /// Records a delivery of `id`.
    pub fn admit(&mut self, id: &str, delivery: Option<Delivery>) -> Admit {
        match self.seen.get_mut(id) {
            Some(Seen::Working(held)) => {
                held.extend(delivery);
                Admit::Held
            }
            Some(Seen::Answered) => Admit::Answered,
            None => {
                self.seen.insert(id.to_string(), Seen::Working(Vec::new()));
                self.order.push_back(id.to_string());
                self.evict();
                Admit::New
            }
        }
    }

    /// Marks `id` answered; returns the duplicate deliveries held for it.
    pub fn finish(&mut self, id: &str) -> Vec<Delivery> {
        match self.seen.insert(id.to_string(), Seen::Answered) {
            Some(Seen::Working(held)) => held,
            Some(Seen::Answered) => Vec::new(),
            None => {
                self.order.push_back(id.to_string());
                self.evict();
                Vec::new()
            }
        }
    }

    /// Answered ids, oldest first: saved at a clean stop, so that requests
    /// the broker redelivers to the next run are not served twice.
    pub fn answered(&self) -> Vec<&str> {
        self.order.iter().filter(|id| matches!(self.seen.get(*id), Some(Seen::Answered))).map(String::as_str).collect()
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
            let Some(id) = self.order.pop_front() else { break };
            if matches!(self.seen.get(&id), Some(Seen::Working(_))) {
                self.order.push_back(id);
            } else {
                self.seen.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_id_is_served_once() {
        let mut l = Ledger::new(16);
        assert_eq!(l.admit("a", None), Admit::New);
        assert_eq!(l.admit("a", Some(Delivery::V311(rumqttc::Publish::new("t", rumqttc::QoS::AtLeastOnce, "x")))), Admit::Held);
        assert_eq!(l.finish("a").len(), 1);
        assert_eq!(l.admit("a", None), Admit::Answered);
    }

    #[test]
    fn window_is_bounded_but_keeps_work_in_progress() {
        let mut l = Ledger::new(16);
        assert_eq!(l.admit("busy", None), Admit::New);
        for i in 0..100 {
            let id = i.to_string();
            l.admit(&id, None);
            l.finish(&id);
        }
        assert!(l.len() <= 16);
        assert_eq!(l.admit("busy", None), Admit::Held);
        assert_eq!(l.admit("0", None), Admit::New, "oldest answered ids are forgotten first");
    }
}

//! Counters and the retained `status` message.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

use super::answer::Versions;
use crate::input::camera::Health;

/// What the daemon has done since it started.
#[derive(Debug, Default)]
pub struct Counters {
    /// Deliveries received on the request topics (duplicates included).
    pub received: AtomicU64,
    /// Deliveries dropped as duplicates of a request already taken.
    pub duplicates: AtomicU64,
    /// Of those, answered again from the answer cache (the first answer was
    /// acknowledged, yet the request came again).
    pub resent: AtomicU64,
    /// Requests answered with results.
    pub answered: AtomicU64,
    /// Requests answered with an error (busy included).
    pub errors: AtomicU64,
    /// Of those, `busy`.
    pub busy: AtomicU64,
    /// Answers acknowledged by the broker.
    pub published: AtomicU64,
    /// Answers written to the spool.
    pub spooled: AtomicU64,
    /// Answers dropped because the spool was full.
    pub spool_dropped: AtomicU64,
    /// Answers the broker took with "no matching subscribers", sent again.
    pub resent_no_subscriber: AtomicU64,
    /// Answers given up on: no subscriber within `daemon.answer_ttl_s`, or refused by the broker.
    pub undeliverable: AtomicU64,
    /// Batches run.
    pub batches: AtomicU64,
    /// Connections made to the broker.
    pub connects: AtomicU64,
}

/// The `status` payload.
#[derive(Debug, Serialize)]
pub struct Status<'a> {
    /// `online` or `offline`.
    pub state: &'a str,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Models and gallery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versions: Option<&'a Versions>,
    /// Counters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<CounterValues>,
    /// Requests waiting for the pipeline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued: Option<usize>,
    /// Each camera's health, by source name (absent without `[[sources]]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sources: Option<&'a BTreeMap<String, Health>>,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Serialize)]
pub struct CounterValues {
    received: u64,
    duplicates: u64,
    resent: u64,
    answered: u64,
    errors: u64,
    busy: u64,
    published: u64,
    spooled: u64,
    spool_dropped: u64,
    resent_no_subscriber: u64,
    undeliverable: u64,
    batches: u64,
    connects: u64,
}

impl Counters {
    /// Reads every counter.
    pub fn values(&self) -> CounterValues {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterValues {
            received: r(&self.received),
            duplicates: r(&self.duplicates),
            resent: r(&self.resent),
            answered: r(&self.answered),
            errors: r(&self.errors),
            busy: r(&self.busy),
            published: r(&self.published),
            spooled: r(&self.spooled),
            spool_dropped: r(&self.spool_dropped),
            resent_no_subscriber: r(&self.resent_no_subscriber),
            undeliverable: r(&self.undeliverable),
            batches: r(&self.batches),
            connects: r(&self.connects),
        }
    }
}

/// One line for the log, in words: `12 received, 11 answered, …`.
impl std::fmt::Display for CounterValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} received ({} duplicates, {} resent), {} answered, {} errors ({} busy), {} batches, {} published, {} spooled ({} dropped), {} sent again for want of a subscriber, {} undeliverable, {} broker connects",
            self.received, self.duplicates, self.resent, self.answered, self.errors, self.busy, self.batches, self.published, self.spooled, self.spool_dropped, self.resent_no_subscriber, self.undeliverable, self.connects
        )
    }
}

/// The payload of an `online` status.
pub fn online(
    started: Instant,
    versions: &Versions,
    counters: &Counters,
    queued: usize,
    sources: &BTreeMap<String, Health>,
) -> Vec<u8> {
    super::answer::to_vec(&Status {
        state: "online",
        uptime_s: started.elapsed().as_secs(),
        versions: Some(versions),
        counters: Some(counters.values()),
        queued: Some(queued),
        sources: (!sources.is_empty()).then_some(sources),
    })
}

/// The payload of an `offline` status (the Last Will, and the last word of a clean stop).
pub fn offline() -> Vec<u8> {
    super::answer::to_vec(&Status {
        state: "offline",
        uptime_s: 0,
        versions: None,
        counters: None,
        queued: None,
        sources: None,
    })
}

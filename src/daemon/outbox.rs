//! Everything the daemon publishes goes through the [`Outbox`], which knows
//! at each moment which answers the broker has acknowledged.
//!
//! Why not let the MQTT client retransmit on its own: its retransmit queue
//! lives in memory, so a daemon restart during a broker outage would lose
//! every answer in it. Instead, on each disconnect the outbox takes back the
//! unacknowledged publishes, spools them to disk, and sends them again after
//! the next CONNACK. A request's delivery is acknowledged to the broker only
//! once its answer has been acknowledged by the broker, so a request whose
//! answer is lost is redelivered rather than forgotten.
//!
//! The client's request channel is bounded. When it is full (a flood of
//! requests answered `busy` faster than the broker takes answers), messages
//! wait in memory and are handed over again as soon as the client reports
//! progress; acknowledgements the channel refused are retried the same way.
//! Without that retry a refused answer or ack would wait for the next
//! reconnect, and with it the broker's in-flight window for this client
//! would stay full: the daemon would stop receiving requests on a healthy
//! connection.
//!
//! An answer the broker acknowledges with "no matching subscribers" (MQTT 5
//! reason 0x10) was not delivered to anyone: after a broker restart the
//! requester may not have subscribed again yet. Its request is acknowledged
//! (the answer is ours to deliver now), and the answer stays spooled and is
//! sent again with backoff until someone takes it or `daemon.answer_ttl_s`
//! runs out; then it counts as undeliverable, loudly.
//!
//! Bookkeeping relies on the client emitting one `Outgoing::Publish(pkid)`
//! per publish, in the order they were handed to it (rumqttc does, including
//! under packet-id collisions), and on the outbox being the only publisher.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::mqtt::{AckOutcome, Client, Connection, Delivery};
use bytes::Bytes;

use super::spool::{Spool, Spooled};
use super::status::Counters;

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Message {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// Correlation data to copy back to the requester.
    pub correlation: Option<Bytes>,
    /// Retained (status only).
    pub retain: bool,
    /// Kept in the spool across outages (answers). Status messages are not:
    /// a fresh one is published after every reconnect.
    pub durable: bool,
    /// The request this answers, if any.
    pub request_id: Option<String>,
    /// Deliveries to acknowledge to the broker once this is acknowledged.
    pub acks: Vec<Delivery>,
}

impl Message {
    /// An answer to `request_id`: durable, and acknowledging `acks` once the broker has it.
    pub fn answer(
        topic: String,
        payload: Bytes,
        correlation: Option<Bytes>,
        request_id: String,
        acks: Vec<Delivery>,
    ) -> Message {
        Message {
            topic,
            payload,
            correlation,
            retain: false,
            durable: true,
            request_id: Some(request_id),
            acks,
        }
    }

    /// An announcement (`P/unknown`): neither retained nor spooled.
    pub fn event(topic: String, payload: Vec<u8>) -> Message {
        Message {
            retain: false,
            ..Message::status(topic, payload)
        }
    }

    /// A retained status message: not spooled, since a fresh one follows every reconnect.
    pub fn status(topic: String, payload: Vec<u8>) -> Message {
        Message {
            topic,
            payload: Bytes::from(payload),
            correlation: None,
            retain: true,
            durable: false,
            request_id: None,
            acks: Vec::new(),
        }
    }
}

struct Pending {
    seq: u64,
    msg: Message,
    /// When the broker first took it without a subscriber (the answer's TTL runs from here).
    unheard_since: Option<Instant>,
    /// Sends since then.
    resends: u32,
}

impl Pending {
    fn new(seq: u64, msg: Message) -> Pending {
        Pending {
            seq,
            msg,
            unheard_since: None,
            resends: 0,
        }
    }
}

/// The first wait before an answer nobody took is sent again; it doubles up to [`RESEND_MAX`].
const RESEND_FIRST: Duration = Duration::from_millis(250);
const RESEND_MAX: Duration = Duration::from_secs(8);

struct State {
    connected: bool,
    next_seq: u64,
    /// Handed to the client, waiting for their packet id.
    handed: VecDeque<Pending>,
    /// Sent, waiting for PUBACK, by packet id.
    inflight: HashMap<u16, Pending>,
    /// Waiting for a connection, or for room in the client's channel.
    /// Spooled to disk while disconnected; in memory only while connected,
    /// since their requests are unacknowledged and would be redelivered.
    waiting: VecDeque<Pending>,
    /// Answers the broker took with no subscriber, with when to send each again.
    unheard: Vec<(Instant, Pending)>,
    /// Acknowledgements the client's channel refused, sent before anything else.
    acks_due: VecDeque<Delivery>,
    /// Whether the channel refused something that has not been handed over yet (for the log).
    backlogged: bool,
    spool: Spool,
}

/// The single publisher; see the module docs.
pub struct Outbox {
    state: Mutex<State>,
    client: Client,
    counters: Arc<Counters>,
    /// `daemon.answer_ttl_s`.
    ttl: Duration,
}

impl Outbox {
    /// An outbox over `client`, with the answers a previous run spooled
    /// queued for the first connection; an answer nobody subscribes to is
    /// sent again for `ttl` (`daemon.answer_ttl_s`).
    pub fn new(
        client: Client,
        spool: Spool,
        leftovers: Vec<Spooled>,
        counters: Arc<Counters>,
        ttl: Duration,
    ) -> Outbox {
        let next_seq = spool.last_seq().map_or(1, |s| s + 1);
        let waiting = leftovers
            .into_iter()
            .map(|s| {
                Pending::new(
                    s.seq,
                    Message {
                        topic: s.topic,
                        payload: Bytes::from(s.payload),
                        correlation: s
                            .correlation_hex
                            .and_then(|h| hex::decode(h).ok())
                            .map(Bytes::from),
                        retain: false,
                        durable: true,
                        request_id: Some(s.request_id),
                        acks: Vec::new(),
                    },
                )
            })
            .collect();
        let state = State {
            connected: false,
            next_seq,
            handed: VecDeque::new(),
            inflight: HashMap::new(),
            waiting,
            unheard: Vec::new(),
            acks_due: VecDeque::new(),
            backlogged: false,
            spool,
        };
        Outbox {
            state: Mutex::new(state),
            client,
            counters,
            ttl,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain bookkeeping behind; carry on with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes `msg` now, or keeps it until the client has room or the
    /// next connection (spooled if durable and disconnected).
    pub fn submit(&self, msg: Message) {
        let mut st = self.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        let p = Pending::new(seq, msg);
        // Behind anything already waiting, so answers leave in the order they were made.
        if st.connected && st.waiting.is_empty() {
            match self.hand(&p.msg) {
                Ok(()) => {
                    st.handed.push_back(p);
                    return;
                }
                Err(e) => self.note_backlog(&mut st, &e),
            }
        }
        self.park(&mut st, p);
    }

    /// Attaches `delivery` to the answer to `request_id`, to be acknowledged
    /// with it, if that answer is still unacknowledged; else gives it back.
    pub fn attach(&self, request_id: &str, delivery: Delivery) -> Option<Delivery> {
        let mut st = self.lock();
        let State {
            handed,
            inflight,
            waiting,
            unheard,
            ..
        } = &mut *st;
        let target = handed
            .iter_mut()
            .chain(inflight.values_mut())
            .chain(waiting.iter_mut())
            .chain(unheard.iter_mut().map(|(_, p)| p))
            .find(|p| p.msg.request_id.as_deref() == Some(request_id));
        match target {
            Some(p) => {
                p.msg.acks.push(delivery);
                None
            }
            None => Some(delivery),
        }
    }

    /// Acknowledges a delivery now (a request that will get no answer of its own).
    pub fn ack(&self, delivery: &Delivery) {
        let mut st = self.lock();
        self.ack_locked(&mut st, delivery.clone());
    }

    fn ack_locked(&self, st: &mut State, delivery: Delivery) {
        if !st.connected {
            // The broker redelivers unacknowledged requests on the next session
            // and the duplicate filter answers them from the cache.
            return;
        }
        if !st.acks_due.is_empty() {
            st.acks_due.push_back(delivery);
            return;
        }
        if let Err(e) = self.client.try_ack(&delivery) {
            self.note_backlog(st, &e);
            st.acks_due.push_back(delivery);
        }
    }

    fn note_backlog(&self, st: &mut State, why: &str) {
        if !st.backlogged {
            st.backlogged = true;
            tracing::warn!("broker connection not taking messages as fast as they are made ({why}); holding them until it does");
        }
    }

    /// Hands over what the client's channel refused earlier, oldest first,
    /// for as long as it takes them.
    fn pump(&self, st: &mut State) {
        if !st.connected || !st.backlogged {
            return;
        }
        while let Some(d) = st.acks_due.pop_front() {
            if self.client.try_ack(&d).is_err() {
                st.acks_due.push_front(d);
                return;
            }
        }
        while let Some(p) = st.waiting.pop_front() {
            if self.hand(&p.msg).is_err() {
                st.waiting.push_front(p);
                return;
            }
            st.handed.push_back(p);
        }
        st.backlogged = false;
        tracing::info!("broker connection caught up with the backlog");
    }

    /// The client made progress on the connection (any event): room may have
    /// opened in its channel.
    pub fn on_progress(&self) {
        let mut st = self.lock();
        self.pump(&mut st);
    }

    /// The client emitted a publish with packet id `pkid`.
    pub fn on_sent(&self, pkid: u16) {
        let mut st = self.lock();
        match st.handed.pop_front() {
            Some(p) if pkid == 0 => self.complete(&mut st, p),
            Some(p) => {
                st.inflight.insert(pkid, p);
            }
            None => tracing::warn!(pkid, "publish sent that the outbox did not hand over"),
        }
        self.pump(&mut st);
    }

    /// The broker acknowledged packet `pkid`, with `outcome`.
    pub fn on_puback(&self, pkid: u16, outcome: AckOutcome) {
        let mut st = self.lock();
        if let Some(mut p) = st.inflight.remove(&pkid) {
            let answer = p.msg.durable && p.msg.request_id.is_some();
            match outcome {
                AckOutcome::NoSubscribers if answer => {
                    // The request is answered as far as the broker is concerned;
                    // the answer is ours to deliver from here (it stays spooled).
                    for d in std::mem::take(&mut p.msg.acks) {
                        self.ack_locked(&mut st, d);
                    }
                    let now = Instant::now();
                    let since = *p.unheard_since.get_or_insert(now);
                    let id = p.msg.request_id.clone().unwrap_or_default();
                    if now.duration_since(since) >= self.ttl {
                        self.give_up(
                            &mut st,
                            p,
                            &format!(
                                "nobody subscribed to its topic within daemon.answer_ttl_s ({} s)",
                                self.ttl.as_secs()
                            ),
                        );
                    } else {
                        if p.resends == 0 {
                            tracing::warn!(request_id = %id, topic = %p.msg.topic, "the broker has no subscriber for this answer (reason 0x10); sending it again until one subscribes or daemon.answer_ttl_s runs out");
                        }
                        let wait = RESEND_FIRST
                            .saturating_mul(1 << p.resends.min(6))
                            .min(RESEND_MAX);
                        p.resends += 1;
                        st.unheard.push((now + wait, p));
                        // Its request is acknowledged: the spool keeps it across a restart.
                        self.spool_waiting(&mut st);
                    }
                }
                AckOutcome::Refused(reason) if answer => {
                    for d in std::mem::take(&mut p.msg.acks) {
                        self.ack_locked(&mut st, d);
                    }
                    self.give_up(&mut st, p, &format!("the broker refused it ({reason}); check its ACL and quotas for this client"));
                }
                AckOutcome::Refused(reason) => {
                    tracing::warn!(topic = %p.msg.topic, "the broker refused a status message: {reason}");
                    self.complete(&mut st, p);
                }
                _ => {
                    if p.resends > 0 {
                        self.counters
                            .resent_no_subscriber
                            .fetch_add(u64::from(p.resends), Ordering::Relaxed);
                        tracing::info!(
                            request_id = p.msg.request_id.as_deref().unwrap_or_default(),
                            resends = p.resends,
                            "answer delivered after its requester subscribed"
                        );
                    }
                    self.complete(&mut st, p)
                }
            }
        }
        self.pump(&mut st);
    }

    /// Sends again the answers nobody took whose wait is over. Called on a
    /// timer (every 250 ms).
    pub fn resend_due(&self) {
        let mut st = self.lock();
        if !st.connected || st.unheard.is_empty() {
            return;
        }
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut st.unheard)
            .into_iter()
            .partition(|(t, _)| *t <= now);
        st.unheard = later;
        for (_, p) in due {
            if st.waiting.is_empty() && self.hand(&p.msg).is_ok() {
                st.handed.push_back(p);
            } else {
                st.waiting.push_back(p);
                st.backlogged = true;
            }
        }
        self.pump(&mut st);
    }

    /// Drops an answer that cannot be delivered: counted, logged, out of the
    /// spool; repeats of its request attached to it meanwhile are acknowledged.
    fn give_up(&self, st: &mut State, mut p: Pending, why: &str) {
        for d in std::mem::take(&mut p.msg.acks) {
            self.ack_locked(st, d);
        }
        st.spool.remove(p.seq);
        self.counters.undeliverable.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            request_id = p.msg.request_id.as_deref().unwrap_or_default(),
            topic = %p.msg.topic,
            resends = p.resends,
            "answer undeliverable, dropped: {why}"
        );
    }

    /// The connection dropped: take back everything unacknowledged.
    pub fn on_disconnect(&self, connection: &mut Connection) {
        let mut st = self.lock();
        st.connected = false;
        // Holding the lock, nothing new can be handed to the client meanwhile.
        connection.take_back_publishes();
        let mut back: Vec<Pending> = st.inflight.drain().map(|(_, p)| p).collect();
        back.extend(st.handed.drain(..));
        back.extend(st.unheard.drain(..).map(|(_, p)| p));
        st.waiting
            .extend(back.into_iter().filter(|p| p.msg.durable));
        st.waiting.make_contiguous().sort_by_key(|p| p.seq);
        // Acks belong to the session's deliveries; the broker redelivers those
        // and the duplicate filter re-attaches them.
        st.acks_due.clear();
        st.backlogged = false;
        for p in st.waiting.iter_mut() {
            p.msg.acks.clear();
        }
        self.spool_waiting(&mut st);
    }

    /// Connected (again): send what waited, oldest first.
    pub fn on_connected(&self) {
        let mut st = self.lock();
        st.connected = true;
        st.backlogged = !st.waiting.is_empty();
        self.pump(&mut st);
    }

    /// Whether the broker connection is up.
    pub fn is_connected(&self) -> bool {
        self.lock().connected
    }

    /// Messages not yet acknowledged by the broker.
    pub fn unacknowledged(&self) -> usize {
        let st = self.lock();
        st.handed.len() + st.inflight.len() + st.waiting.len() + st.unheard.len()
    }

    /// Answers in the spool on disk.
    pub fn spooled(&self) -> usize {
        self.lock().spool.len()
    }

    /// Request ids of answers not yet acknowledged (for the duplicate filter at start-up).
    pub fn request_ids(&self) -> Vec<String> {
        let st = self.lock();
        st.waiting
            .iter()
            .chain(st.unheard.iter().map(|(_, p)| p))
            .filter_map(|p| p.msg.request_id.clone())
            .collect()
    }

    /// Spools every durable message still unacknowledged (last step of a stop).
    pub fn spool_all(&self) {
        let mut st = self.lock();
        let mut back: Vec<Pending> = st.inflight.drain().map(|(_, p)| p).collect();
        back.extend(st.handed.drain(..));
        back.extend(st.unheard.drain(..).map(|(_, p)| p));
        st.waiting
            .extend(back.into_iter().filter(|p| p.msg.durable));
        self.spool_waiting(&mut st);
    }

    fn hand(&self, msg: &Message) -> Result<(), String> {
        self.client.try_publish(
            &msg.topic,
            msg.retain,
            msg.payload.clone(),
            msg.correlation.clone(),
        )
    }

    fn park(&self, st: &mut State, p: Pending) {
        if !p.msg.durable {
            return;
        }
        st.waiting.push_back(p);
        if !st.connected {
            self.spool_waiting(st);
        }
    }

    /// Writes each waiting answer (and each waiting for a subscriber) that
    /// is not on disk yet to the spool.
    fn spool_waiting(&self, st: &mut State) {
        let missing: Vec<Spooled> = st
            .waiting
            .iter()
            .chain(st.unheard.iter().map(|(_, p)| p))
            .filter(|p| !st.spool.contains(p.seq))
            .map(|p| Spooled {
                seq: p.seq,
                topic: p.msg.topic.clone(),
                request_id: p.msg.request_id.clone().unwrap_or_default(),
                correlation_hex: p.msg.correlation.as_ref().map(hex::encode),
                payload: p.msg.payload.to_vec(),
            })
            .collect();
        for s in missing {
            match st.spool.put(&s) {
                Ok(dropped) => {
                    self.counters.spooled.fetch_add(1, Ordering::Relaxed);
                    for seq in dropped {
                        let lost = match st.waiting.iter().position(|w| w.seq == seq) {
                            Some(i) => st.waiting.remove(i),
                            None => st
                                .unheard
                                .iter()
                                .position(|(_, w)| w.seq == seq)
                                .map(|i| st.unheard.remove(i).1),
                        };
                        if let Some(lost) = lost {
                            let id = lost.msg.request_id.unwrap_or_default();
                            tracing::error!(request_id = %id, "spool full (daemon.spool_max_messages / spool_max_bytes): oldest answer dropped");
                        }
                        self.counters.spool_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    tracing::error!(topic = %s.topic, "cannot spool answer, keeping it in memory only: {e}")
                }
            }
        }
    }

    fn complete(&self, st: &mut State, p: Pending) {
        st.spool.remove(p.seq);
        let durable = p.msg.durable;
        for d in p.msg.acks {
            self.ack_locked(st, d);
        }
        if durable {
            self.counters.published.fetch_add(1, Ordering::Relaxed);
        }
    }
}

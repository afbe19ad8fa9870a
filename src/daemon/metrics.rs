//! Prometheus metrics and a health check over HTTP, on a loopback port
//! (`daemon.metrics_port`, 0 = off): `GET /metrics` in the text exposition
//! format, `GET /healthz` 200 when the pipeline is healthy and the broker
//! connected, 503 with the reason otherwise.
//!
//! Two endpoints on loopback do not justify an HTTP framework: the server
//! reads one request head, answers, and closes.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::answer::Timings;
use super::Shared;
use crate::input::camera::{Health, State};

/// A histogram with fixed upper bounds (cumulative buckets, Prometheus style).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    state: Mutex<(Vec<u64>, f64, u64)>,
}

impl Histogram {
    /// Buckets with these upper bounds (sorted), plus `+Inf`.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            state: Mutex::new((vec![0; bounds.len()], 0.0, 0)),
        }
    }

    /// Records one value.
    pub fn observe(&self, v: f64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                s.0[i] += 1;
            }
        }
        s.1 += v;
        s.2 += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, n) in self.bounds.iter().zip(&s.0) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", s.2);
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", s.1);
        let _ = writeln!(out, "{name}_count{braces} {}", s.2);
    }
}

/// Seconds, from 1 ms (a Jetson stage) to 30 s (a flooded CPU queue).
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
/// Reads one stage's milliseconds out of [`Timings`].
type StageOf = fn(&Timings) -> f64;

/// The stages reported, as (label, field).
const STAGES: [(&str, StageOf); 7] = [
    ("queue", |t| t.queue),
    ("decode", |t| t.stages.decode),
    ("detect", |t| {
        t.stages.det_pre + t.stages.det_infer + t.stages.det_post
    }),
    ("embed", |t| t.stages.rec_pre + t.stages.rec_infer),
    ("search", |t| t.stages.search),
    ("pipeline", |t| t.stages.total()),
    ("total", |t| t.total),
];

/// Latency and batch-size histograms of answered requests.
#[derive(Debug)]
pub struct Histograms {
    stages: Vec<Histogram>,
    batch: Histogram,
}

impl Default for Histograms {
    fn default() -> Histograms {
        Histograms {
            stages: STAGES.iter().map(|_| Histogram::new(SECONDS)).collect(),
            batch: Histogram::new(BATCH),
        }
    }
}

impl Histograms {
    /// Records one answered request.
    pub fn observe(&self, t: &Timings) {
        for (h, (_, field)) in self.stages.iter().zip(STAGES) {
            h.observe(field(t) / 1e3);
        }
    }

    /// Records one batch run.
    pub fn observe_batch(&self, size: usize) {
        self.batch.observe(size as f64);
    }
}

/// The exposition text.
pub fn render(shared: &Shared) -> String {
    let mut out = String::new();
    let c = &shared.counters;
    let n = |x: &std::sync::atomic::AtomicU64| x.load(Ordering::Relaxed);
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP shitu_{name} {help}\n# TYPE shitu_{name} counter\nshitu_{name} {v}"
        );
    };
    counter(
        "requests_received_total",
        "Request deliveries received, repeats included.",
        n(&c.received),
    );
    counter(
        "requests_repeated_total",
        "Deliveries of a request already taken (QoS 1 redelivery or a controller's retry).",
        n(&c.duplicates),
    );
    counter(
        "answers_resent_total",
        "Repeated requests answered again from the answer cache.",
        n(&c.resent),
    );
    counter(
        "requests_answered_total",
        "Requests answered with results.",
        n(&c.answered),
    );
    counter(
        "requests_failed_total",
        "Requests answered with an error, busy included.",
        n(&c.errors),
    );
    counter(
        "requests_busy_total",
        "Requests refused because the queue was full.",
        n(&c.busy),
    );
    counter(
        "answers_published_total",
        "Answers acknowledged by the broker.",
        n(&c.published),
    );
    counter(
        "answers_spooled_total",
        "Answers written to the disk spool during outages.",
        n(&c.spooled),
    );
    counter(
        "answers_dropped_total",
        "Answers dropped because the spool was full.",
        n(&c.spool_dropped),
    );
    counter(
        "answers_resent_no_subscriber_total",
        "Answers the broker took with 'no matching subscribers' (MQTT 5 reason 0x10), sent again.",
        n(&c.resent_no_subscriber),
    );
    counter(
        "answers_undeliverable_total",
        "Answers given up on: no subscriber within daemon.answer_ttl_s, or refused by the broker.",
        n(&c.undeliverable),
    );
    counter("batches_total", "Pipeline batches run.", n(&c.batches));
    counter(
        "broker_connects_total",
        "Connections made to the broker.",
        n(&c.connects),
    );
    let versions = shared.versions();
    let mut gauge = |name: &str, help: &str, v: f64| {
        let _ = writeln!(
            out,
            "# HELP shitu_{name} {help}\n# TYPE shitu_{name} gauge\nshitu_{name} {v}"
        );
    };
    gauge(
        "queue_depth",
        "Requests waiting for the pipeline.",
        shared.queued.load(Ordering::Relaxed) as f64,
    );
    gauge(
        "spool_messages",
        "Answers in the disk spool.",
        shared.outbox.spooled() as f64,
    );
    gauge(
        "broker_connected",
        "1 while connected to the broker.",
        f64::from(u8::from(shared.outbox.is_connected())),
    );
    gauge(
        "pipeline_healthy",
        "1 while no batch is stalled.",
        f64::from(u8::from(shared.health.check().is_ok())),
    );
    gauge(
        "gallery_items",
        "Items in the gallery.",
        versions.gallery_items as f64,
    );
    gauge(
        "uptime_seconds",
        "Seconds since the daemon started.",
        shared.started.elapsed().as_secs_f64(),
    );
    let h = &shared.histograms;
    let _ = writeln!(out, "# HELP shitu_stage_seconds Time per answered request, by stage.\n# TYPE shitu_stage_seconds histogram");
    for (hist, (stage, _)) in h.stages.iter().zip(STAGES) {
        hist.render(
            &mut out,
            "shitu_stage_seconds",
            &format!("stage=\"{stage}\""),
        );
    }
    let _ = writeln!(
        out,
        "# HELP shitu_batch_size Requests per pipeline batch.\n# TYPE shitu_batch_size histogram"
    );
    h.batch.render(&mut out, "shitu_batch_size", "");
    sources(&mut out, shared);
    out
}

/// Per-source health: state, frames, drops, reconnects, the newest frame's age.
fn sources(out: &mut String, shared: &Shared) {
    let health = shared.cameras.health();
    if health.is_empty() {
        return;
    }
    let label = |name: &str| name.replace('\\', "\\\\").replace('"', "\\\"");
    let mut family =
        |name: &str, kind: &str, help: &str, value: &dyn Fn(&Health) -> Option<f64>| {
            let _ = writeln!(
                out,
                "# HELP shitu_source_{name} {help}\n# TYPE shitu_source_{name} {kind}"
            );
            for (source, h) in &health {
                if let Some(v) = value(h) {
                    let _ = writeln!(
                        out,
                        "shitu_source_{name}{{source=\"{}\"}} {v}",
                        label(source)
                    );
                }
            }
        };
    family(
        "streaming",
        "gauge",
        "1 while the source delivers frames.",
        &|h| Some(f64::from(u8::from(h.state == State::Streaming))),
    );
    family(
        "frames_total",
        "counter",
        "Frames taken into the source's ring.",
        &|h| Some(h.frames_in as f64),
    );
    family(
        "frames_dropped_total",
        "counter",
        "Frames refused (format, size).",
        &|h| Some(h.frames_dropped as f64),
    );
    family(
        "reconnects_total",
        "counter",
        "Pipeline restarts after a failure or a stall.",
        &|h| Some(h.reconnects as f64),
    );
    family(
        "frame_age_seconds",
        "gauge",
        "Age of the newest frame.",
        &|h| h.last_frame_age_ms.map(|ms| ms as f64 / 1e3),
    );
    let _ = writeln!(out, "# HELP shitu_source_state The source's state (1 for the current one).\n# TYPE shitu_source_state gauge");
    for (source, h) in &health {
        for state in [
            State::Connecting,
            State::Streaming,
            State::Stalled,
            State::Failed,
        ] {
            let _ = writeln!(
                out,
                "shitu_source_state{{source=\"{}\",state=\"{}\"}} {}",
                label(source),
                state.as_str(),
                u8::from(h.state == state)
            );
        }
    }
}

/// Why the daemon is not healthy, if it is not.
fn unhealthy(shared: &Shared) -> Option<String> {
    if let Err(why) = shared.health.check() {
        return Some(format!("pipeline: {why}"));
    }
    if !shared.outbox.is_connected() {
        return Some(format!(
            "broker {}:{} not connected",
            shared.settings.mqtt.host, shared.settings.mqtt.port
        ));
    }
    None
}

/// Serves `/metrics` and `/healthz` on 127.0.0.1:`port` until the task is aborted.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let route = |path: &str| match path {
                "/metrics" => ("200 OK", "text/plain; version=0.0.4", render(&shared)),
                "/healthz" => match unhealthy(&shared) {
                    None => ("200 OK", "text/plain", "ok\n".to_string()),
                    Some(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
                },
                _ => (
                    "404 Not Found",
                    "text/plain",
                    "GET /metrics or /healthz\n".to_string(),
                ),
            };
            answer(conn, route).await;
        });
    }
}

/// Largest request head read; scrapers send a few hundred bytes.
const MAX_HEAD: usize = 8192;

/// Reads one request head and writes the routed reply. A client may send
/// its request in several segments (a plain `write!` does), so the head is
/// read until its blank line, not from the first read alone.
async fn answer<S, R>(mut conn: S, route: R)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    R: FnOnce(&str) -> (&'static str, &'static str, String),
{
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    // A client that sends nothing, or never finishes its head, must not hold a task forever.
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    };
    if !matches!(
        tokio::time::timeout(Duration::from_secs(5), read_head).await,
        Ok(true)
    ) {
        return;
    }
    let head = String::from_utf8_lossy(&head);
    let path = head
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("GET "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("");
    let (status, ctype, body) = route(path);
    let reply = format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    let _ = conn.write_all(reply.as_bytes()).await;
    let _ = conn.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.5, 3.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "");
        assert!(out.contains("x_bucket{le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"2\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(
            out.contains("x_sum 5\n") && out.contains("x_count 3\n"),
            "{out}"
        );
    }

    fn route(path: &str) -> (&'static str, &'static str, String) {
        match path {
            "/healthz" => ("200 OK", "text/plain", "ok\n".into()),
            _ => ("404 Not Found", "text/plain", String::new()),
        }
    }

    async fn exchange(pieces: &[&str]) -> String {
        let (mut client, server) = tokio::io::duplex(4096);
        let task = tokio::spawn(answer(server, route));
        for piece in pieces {
            client.write_all(piece.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut reply = String::new();
        client.read_to_string(&mut reply).await.unwrap();
        task.await.unwrap();
        reply
    }

    /// The request arrives in pieces, as from `write!` on an unbuffered
    /// socket; the server answered the first piece alone ("GET ") with 404.
    #[tokio::test]
    async fn request_split_across_reads_is_routed_whole() {
        let reply = exchange(&["GET ", "/healthz", " HTTP/1.1\r\nHost: x\r\n", "\r\n"]).await;
        assert!(
            reply.starts_with("HTTP/1.1 200 OK\r\n") && reply.ends_with("\r\n\r\nok\n"),
            "{reply}"
        );
        let reply = exchange(&["GET /nope HTTP/1.1\r\n\r\n"]).await;
        assert!(reply.starts_with("HTTP/1.1 404 "), "{reply}");
    }

    /// A client that stops halfway through its head gets no answer and the task ends.
    #[tokio::test]
    async fn unfinished_head_is_dropped() {
        let (mut client, server) = tokio::io::duplex(64);
        let task = tokio::spawn(answer(server, route));
        client
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .unwrap();
        drop(client);
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .unwrap()
            .unwrap();
    }
}

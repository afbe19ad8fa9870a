//! Prometheus metrics for `GET /metrics`, written with `prometheus-client`
//! (the Prometheus project's Rust client: OpenMetrics text, label escaping).
//! Latency and batch histograms are prometheus-client metrics the answer
//! path observes; the daemon's counters, gauges and per-source health are
//! read at each scrape by a [`Collector`], so they have one home
//! (`status::Counters`, `Shared`, the cameras) shared with `P/status`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::super::answer::Timings;
use super::super::Shared;
use crate::input::camera::{Health, State};

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

fn seconds() -> Histogram {
    Histogram::new(SECONDS.iter().copied())
}

/// Latency and batch-size histograms of answered requests.
#[derive(Debug, Clone)]
pub struct Histograms {
    stages: Family<StageLabel, Histogram, fn() -> Histogram>,
    batch: Histogram,
}

impl Default for Histograms {
    fn default() -> Histograms {
        Histograms {
            stages: Family::new_with_constructor(seconds as fn() -> Histogram),
            batch: Histogram::new(BATCH.iter().copied()),
        }
    }
}

impl Histograms {
    /// Records one answered request.
    pub fn observe(&self, t: &Timings) {
        for (stage, field) in STAGES {
            self.stages
                .get_or_create(&StageLabel { stage })
                .observe(field(t) / 1e3);
        }
    }

    /// Records one batch run.
    pub fn observe_batch(&self, size: usize) {
        self.batch.observe(size as f64);
    }
}

/// The registry `/metrics` encodes: every name under `shitu_`.
pub fn registry(shared: Arc<Shared>) -> Registry {
    let mut registry = Registry::with_prefix("shitu");
    let h = shared.histograms.clone();
    registry.register(
        "stage_seconds",
        "Time per answered request, by stage.",
        h.stages,
    );
    registry.register("batch_size", "Requests per pipeline batch.", h.batch);
    registry.register_collector(Box::new(Daemon(shared)));
    registry
}

/// The exposition text (OpenMetrics).
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!("encoding /metrics: {e}");
    }
    out
}

/// Reads the daemon's counters, gauges and sources at each scrape.
struct Daemon(Arc<Shared>);

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Daemon")
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    encode_gauge(m, v)
}

/// Whole values are written as integers (`1`, not `1.0`): flags and counts read as such.
fn encode_gauge(m: prometheus_client::encoding::MetricEncoder, v: f64) -> std::fmt::Result {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        ConstGauge::new(v as i64).encode(m)
    } else {
        ConstGauge::new(v).encode(m)
    }
}

impl Collector for Daemon {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let shared = &self.0;
        let c = &shared.counters;
        let n = |x: &std::sync::atomic::AtomicU64| x.load(Ordering::Relaxed);
        for (name, help, v) in [
            ("requests_received", "Request deliveries received, repeats included.", n(&c.received)),
            ("requests_repeated", "Deliveries of a request already taken (QoS 1 redelivery or a controller's retry).", n(&c.duplicates)),
            ("answers_resent", "Repeated requests answered again from the answer cache.", n(&c.resent)),
            ("requests_answered", "Requests answered with results.", n(&c.answered)),
            ("requests_failed", "Requests answered with an error, busy included.", n(&c.errors)),
            ("requests_busy", "Requests refused because the queue was full.", n(&c.busy)),
            ("answers_published", "Answers acknowledged by the broker.", n(&c.published)),
            ("answers_spooled", "Answers written to the disk spool during outages.", n(&c.spooled)),
            ("answers_dropped", "Answers dropped because the spool was full.", n(&c.spool_dropped)),
            ("answers_resent_no_subscriber", "Answers the broker took with 'no matching subscribers' (MQTT 5 reason 0x10), sent again.", n(&c.resent_no_subscriber)),
            ("answers_undeliverable", "Answers given up on: no subscriber within daemon.answer_ttl_s, or refused by the broker.", n(&c.undeliverable)),
            ("batches", "Pipeline batches run.", n(&c.batches)),
            ("broker_connects", "Connections made to the broker.", n(&c.connects)),
        ] {
            counter(&mut e, name, help, v)?;
        }
        let versions = shared.versions();
        let flag = |b: bool| f64::from(u8::from(b));
        for (name, help, v) in [
            (
                "queue_depth",
                "Requests waiting for the pipeline.",
                shared.queued.load(Ordering::Relaxed) as f64,
            ),
            (
                "spool_messages",
                "Answers in the disk spool.",
                shared.outbox.spooled() as f64,
            ),
            (
                "broker_connected",
                "1 while connected to the broker.",
                flag(shared.outbox.is_connected()),
            ),
            (
                "pipeline_healthy",
                "1 while no batch is stalled.",
                flag(shared.health.check().is_ok()),
            ),
            (
                "gallery_items",
                "Items in the gallery.",
                versions.gallery_items as f64,
            ),
            (
                "uptime_seconds",
                "Seconds since the daemon started.",
                shared.started.elapsed().as_secs_f64(),
            ),
        ] {
            gauge(&mut e, name, help, v)?;
        }
        sources(&mut e, &shared.cameras.health())
    }
}

/// Per-source health: state, frames, drops, reconnects, the newest frame's age.
fn sources(
    e: &mut DescriptorEncoder,
    health: &std::collections::BTreeMap<String, Health>,
) -> std::fmt::Result {
    if health.is_empty() {
        return Ok(());
    }
    type Value = fn(&Health) -> Option<f64>;
    let families: [(&str, MetricType, &str, Value); 5] = [
        (
            "source_streaming",
            MetricType::Gauge,
            "1 while the source delivers frames.",
            |h| Some(f64::from(u8::from(h.state == State::Streaming))),
        ),
        (
            "source_frames",
            MetricType::Counter,
            "Frames taken into the source's ring.",
            |h| Some(h.frames_in as f64),
        ),
        (
            "source_frames_dropped",
            MetricType::Counter,
            "Frames refused (format, size).",
            |h| Some(h.frames_dropped as f64),
        ),
        (
            "source_reconnects",
            MetricType::Counter,
            "Pipeline restarts after a failure or a stall.",
            |h| Some(h.reconnects as f64),
        ),
        (
            "source_frame_age_seconds",
            MetricType::Gauge,
            "Age of the newest frame.",
            |h| h.last_frame_age_ms.map(|ms| ms as f64 / 1e3),
        ),
    ];
    for (name, kind, help, value) in families {
        let mut family = e.encode_descriptor(name, help, None, kind)?;
        for (source, h) in health {
            let Some(v) = value(h) else { continue };
            let labels = [("source", source.as_str())];
            let sample = family.encode_family(&labels)?;
            match kind {
                MetricType::Counter => ConstCounter::new(v as u64).encode(sample)?,
                _ => encode_gauge(sample, v)?,
            }
        }
    }
    let mut family = e.encode_descriptor(
        "source_state",
        "The source's state (1 for the current one).",
        None,
        MetricType::Gauge,
    )?;
    for (source, h) in health {
        for state in [
            State::Connecting,
            State::Streaming,
            State::Stalled,
            State::Failed,
        ] {
            let labels = [("source", source.as_str()), ("state", state.as_str())];
            ConstGauge::new(i64::from(h.state == state)).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Label values are escaped and histograms are cumulative, as
    /// OpenMetrics wants: the client does both.
    #[test]
    fn sources_and_histograms_encode_as_openmetrics() {
        #[derive(Debug)]
        struct Two;
        impl Collector for Two {
            fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
                let mut health = std::collections::BTreeMap::new();
                let h = Health {
                    state: State::Streaming,
                    frames_in: 7,
                    frames_dropped: 0,
                    reconnects: 1,
                    last_frame_age_ms: Some(40),
                    last_error: None,
                    delay_ms: 0,
                };
                health.insert("cam\"1".to_string(), h);
                sources(&mut e, &health)
            }
        }
        let h = Histograms::default();
        h.observe_batch(1);
        h.observe_batch(3);
        let mut r = Registry::with_prefix("shitu");
        r.register(
            "batch_size",
            "Requests per pipeline batch.",
            h.batch.clone(),
        );
        r.register_collector(Box::new(Two));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        assert!(
            out.contains("shitu_batch_size_bucket{le=\"1.0\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("shitu_batch_size_bucket{le=\"4.0\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("shitu_batch_size_count 2\n"), "{out}");
        assert!(
            out.contains("shitu_source_frames_total{source=\"cam\\\"1\"} 7"),
            "{out}"
        );
        assert!(
            out.contains("shitu_source_state{source=\"cam\\\"1\",state=\"streaming\"} 1"),
            "{out}"
        );
        assert!(out.ends_with("# EOF\n"), "{out}");
    }
}

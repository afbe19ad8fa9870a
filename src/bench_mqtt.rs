//! `shitud bench-mqtt`: a line controller that loads a running daemon through
//! the broker and measures what the controller sees: requests per second and
//! end-to-end latency (publish to answer), at several concurrency levels.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde::Serialize;

use crate::bench::Percentiles;

/// What to load and how.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// `<prefix>/<device_id>`.
    pub topic_base: String,
    /// Outstanding requests kept in flight, one level per run.
    pub concurrency: Vec<usize>,
    /// Measured requests per level.
    pub requests: usize,
    /// Unmeasured requests first, per level.
    pub warmup: usize,
    /// Encoded images, sent in turn (raw payloads: no base64 cost in the figures).
    pub images: Vec<Vec<u8>>,
    /// A name for the rows (e.g. the daemon's batching setting).
    pub label: String,
}

/// One measured level.
#[derive(Debug, Clone, Serialize)]
pub struct LoadRow {
    /// The plan's label.
    pub label: String,
    /// Outstanding requests.
    pub concurrency: usize,
    /// Answers per second.
    pub requests_per_s: f64,
    /// End-to-end latency, milliseconds.
    pub latency_ms: Percentiles,
    /// Mean batch size reported by the daemon.
    pub mean_batch: f64,
    /// Answers that were errors (busy included).
    pub errors: usize,
}

/// Runs the plan; `progress` gets a line per level.
pub fn run(plan: &LoadPlan, progress: impl Fn(&str)) -> anyhow::Result<Vec<LoadRow>> {
    if plan.images.is_empty() || plan.concurrency.contains(&0) || plan.requests == 0 {
        bail!("bench-mqtt needs images, concurrency levels of at least 1 and at least one request");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client_id = format!("shitud-bench-{}", std::process::id());
        let mut o = MqttOptions::new(client_id.clone(), plan.host.clone(), plan.port);
        o.set_keep_alive(Duration::from_secs(30)).set_max_packet_size(Some(64 << 20)).set_request_channel_capacity(1024);
        let (client, mut eventloop) = AsyncClient::new(o, 1024);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Bytes, serde_json::Value)>();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let corr = p.properties.and_then(|x| x.correlation_data).unwrap_or_default();
                        let json = serde_json::from_slice(&p.payload).unwrap_or_default();
                        if tx.send((corr, json)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!("bench client: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        let reply = format!("bench/replies/{client_id}");
        client.subscribe(reply.clone(), QoS::AtLeastOnce).await?;
        // Requests published before the daemon has subscribed would go nowhere:
        // wait for its retained `online` status first.
        let status = format!("{}/status", plan.topic_base);
        client.subscribe(status.clone(), QoS::AtLeastOnce).await?;
        let wait = Instant::now() + Duration::from_secs(120);
        loop {
            let left = wait.checked_duration_since(Instant::now()).context("the daemon did not report online within 120 s")?;
            let (_, json) = tokio::time::timeout(left, rx.recv()).await.context("the daemon did not report online within 120 s")?.context("bench client stopped")?;
            if json["state"] == "online" {
                break;
            }
        }
        client.unsubscribe(status).await?;
        let request_topic = format!("{}/recognize", plan.topic_base);
        let mut rows = Vec::new();
        let mut seq = 0u64;
        for &c in &plan.concurrency {
            let mut sent_at: HashMap<Bytes, Instant> = HashMap::new();
            let mut latencies = Vec::with_capacity(plan.requests);
            let (mut batches, mut errors, mut done, mut issued) = (0.0, 0, 0, 0);
            let total = plan.warmup + plan.requests;
            let mut started = Instant::now();
            while done < total {
                while sent_at.len() < c && issued < total {
                    seq += 1;
                    let corr = Bytes::from(format!("b{seq}"));
                    let props = PublishProperties {
                        response_topic: Some(reply.clone()),
                        correlation_data: Some(corr.clone()),
                        user_properties: vec![("request_id".into(), format!("bench-{client_id}-{seq}"))],
                        ..Default::default()
                    };
                    let image = plan.images[issued % plan.images.len()].clone();
                    sent_at.insert(corr, Instant::now());
                    client.publish_with_properties(request_topic.clone(), QoS::AtLeastOnce, false, image, props).await?;
                    issued += 1;
                }
                let (corr, json) = tokio::time::timeout(Duration::from_secs(120), rx.recv())
                    .await
                    .context("no answer for 120 s: is `shitud run` serving on this broker and device id?")?
                    .context("bench client stopped")?;
                let Some(t0) = sent_at.remove(&corr) else { continue };
                done += 1;
                if done == plan.warmup {
                    started = Instant::now();
                }
                if done > plan.warmup {
                    latencies.push(t0.elapsed().as_secs_f64() * 1e3);
                    if json["ok"] == true {
                        batches += json["timings_ms"]["batch"].as_f64().unwrap_or(1.0);
                    } else {
                        errors += 1;
                    }
                }
            }
            let secs = started.elapsed().as_secs_f64();
            let ok = (plan.requests - errors).max(1) as f64;
            let row = LoadRow {
                label: plan.label.clone(),
                concurrency: c,
                requests_per_s: plan.requests as f64 / secs,
                latency_ms: Percentiles::of(&mut latencies),
                mean_batch: batches / ok,
                errors,
            };
            progress(&format!(
                "{} concurrency {c}: {:.2} req/s, p50 {:.1} ms, p99 {:.1} ms, mean batch {:.2}, errors {}",
                row.label, row.requests_per_s, row.latency_ms.p50, row.latency_ms.p99, row.mean_batch, row.errors
            ));
            rows.push(row);
        }
        let _ = client.disconnect().await;
        Ok(rows)
    })
}

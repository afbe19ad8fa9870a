//! The outbox against a real mosquitto when the MQTT client's request
//! channel is full: answers and acknowledgements the channel refuses must
//! still leave, in order, on the same healthy connection. (Before this was
//! handled they waited for a reconnect that never came, and the broker's
//! in-flight window for the daemon stayed full: a flood of `busy` answers
//! stalled the daemon for good.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::mqtt::*;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::MqttOptions;
use shitu_edge::daemon::mqtt::{self, Event, Options};
use shitu_edge::daemon::outbox::{Message, Outbox};
use shitu_edge::daemon::spool::Spool;
use shitu_edge::daemon::status::Counters;

const ANSWERS: &str = "test/backpressure/answers";
const REQUESTS: &str = "test/backpressure/requests";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_client_channel_delays_answers_and_acks_but_loses_none() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(tmp.path());
    let mut ctl = Controller::connect(broker.port, "ctl-backpressure", &[ANSWERS]).await;

    // The outbox's client: a two-slot channel, manual acks, and a small
    // receive window, so a lost ack would stop deliveries within five requests.
    let mut o = MqttOptions::new("outbox-under-test", "127.0.0.1", broker.port);
    o.set_manual_acks(true)
        .set_receive_maximum(Some(5))
        .set_keep_alive(Duration::from_secs(5));
    let (client, mut connection) = mqtt::connect(Options::V5(Box::new(o)), 2);
    let (spool, left) = Spool::open(&tmp.path().join("spool"), 10_000, 64 << 20).unwrap();
    let outbox = Arc::new(Outbox::new(
        client.clone(),
        spool,
        left,
        Arc::new(Counters::default()),
        Duration::from_secs(120),
    ));

    // The daemon's event loop, reduced to the outbox's part: each request is
    // acknowledged at once, through the same bounded channel the answers use.
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let ob = outbox.clone();
    let sub = client.clone();
    let events = tokio::spawn(async move {
        loop {
            match connection.poll().await {
                Ok(Event::Connected { .. }) => {
                    sub.try_subscribe(REQUESTS).expect("subscribe queued");
                    ob.on_connected();
                }
                Ok(Event::Received(m)) => {
                    ob.ack(&m.delivery);
                    let _ = seen_tx.send(m.payload);
                }
                Ok(Event::Sent(pkid)) => ob.on_sent(pkid),
                Ok(Event::Acknowledged(pkid, outcome)) => ob.on_puback(pkid, outcome),
                Ok(_) => ob.on_progress(),
                Err(e) => panic!("the connection to a healthy broker dropped: {e}"),
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !outbox.is_connected() {
        assert!(Instant::now() < deadline, "outbox never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The subscription is in place once a probe comes through (the
    // broker drops what is published before it); probes are not counted.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Instant::now() < deadline,
            "the outbox's client never subscribed"
        );
        ctl.client
            .publish(REQUESTS, QoS::AtLeastOnce, false, "probe")
            .await
            .unwrap();
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), seen_rx.recv()).await
        {
            break;
        }
    }

    const N: usize = 300;
    // Requests in, answers out, both at once: the channel overflows on both.
    for i in 0..N {
        ctl.client
            .publish(REQUESTS, QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    for i in 0..N {
        outbox.submit(Message::answer(
            ANSWERS.into(),
            Bytes::from(format!("{i}")),
            None,
            format!("r{i}"),
            Vec::new(),
        ));
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut answers = Vec::new();
    while answers.len() < N {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_default();
        match ctl.next(left).await {
            Some(m) if m.topic == ANSWERS => {
                answers.push(m.json.as_u64().expect("numeric payload") as usize)
            }
            Some(_) => {}
            None => panic!(
                "only {} of {N} answers arrived; {} still unacknowledged",
                answers.len(),
                outbox.unacknowledged()
            ),
        }
    }
    assert_eq!(
        answers,
        (0..N).collect::<Vec<_>>(),
        "answers leave in the order they were made"
    );

    let mut requests = 0;
    while requests < N {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_default();
        match tokio::time::timeout(left, seen_rx.recv()).await {
            Ok(Some(p)) if p.as_ref() == b"probe" => {}
            Ok(Some(_)) => requests += 1,
            _ => panic!("only {requests} of {N} requests delivered: acknowledgements were lost and the window of 5 stayed full"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while outbox.unacknowledged() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} answers never acknowledged by the broker",
            outbox.unacknowledged()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        outbox.spooled(),
        0,
        "a full channel on a live connection is not an outage: nothing goes to disk"
    );
    events.abort();
}

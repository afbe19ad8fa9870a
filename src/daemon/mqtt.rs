//! MQTT 5 and MQTT 3.1.1 behind one client, one event stream and one
//! delivery handle, so that the rest of the daemon is written once.
//!
//! What 3.1.1 lacks, and what the daemon does instead:
//! - no response topic or correlation data: answers go to `P/result`
//!   (`P/gallery/result`) and carry the `request_id`;
//! - no user properties: a raw-image request gets the derived id and the
//!   default query, so JSON requests are the way to name ids and options;
//! - no maximum packet size at CONNECT: the broker sends whatever it has, so
//!   the client reads packets up to MQTT's own limit and answers oversized
//!   requests `too_large` (a smaller limit would make the client drop the
//!   connection on every redelivery of the same oversized request);
//! - no session expiry: the broker's own setting
//!   (`persistent_client_expiration` in mosquitto) decides.

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::{mqttbytes::v4 as p4, Outgoing};

/// The largest packet MQTT can carry (its remaining-length field).
pub const MQTT_MAX_PACKET: usize = 268_435_455;

/// Connection options of either protocol.
#[derive(Debug)]
pub enum Options {
    /// MQTT 5.
    V5(Box<rumqttc::v5::MqttOptions>),
    /// MQTT 3.1.1.
    V311(Box<rumqttc::MqttOptions>),
}

/// The handle that publishes, subscribes and acknowledges.
#[derive(Clone)]
pub enum Client {
    /// MQTT 5.
    V5(rumqttc::v5::AsyncClient),
    /// MQTT 3.1.1.
    V311(rumqttc::AsyncClient),
}

/// The connection, polled by the event loop.
pub enum Connection {
    /// MQTT 5.
    V5(Box<rumqttc::v5::EventLoop>),
    /// MQTT 3.1.1.
    V311(Box<rumqttc::EventLoop>),
}

/// A received publish, kept to acknowledge it later.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// MQTT 5.
    V5(p5::Publish),
    /// MQTT 3.1.1.
    V311(p4::Publish),
}

/// A received request with what the protocol carried around it.
#[derive(Debug)]
pub struct Inbound {
    /// Topic, when it is UTF-8 (MQTT requires it; a broken client may not).
    pub topic: Option<String>,
    /// Payload.
    pub payload: Bytes,
    /// Response topic (MQTT 5).
    pub response_topic: Option<String>,
    /// Correlation data (MQTT 5).
    pub correlation: Option<Bytes>,
    /// User properties (MQTT 5).
    pub user_properties: Vec<(String, String)>,
    /// The delivery to acknowledge.
    pub delivery: Delivery,
}

/// What the broker said when it acknowledged a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckOutcome {
    /// Taken, with subscribers to deliver it to.
    Delivered,
    /// Taken, but nobody is subscribed (MQTT 5 reason 0x10): the message is gone.
    NoSubscribers,
    /// Refused (not authorised, quota, …), with the reason.
    Refused(String),
}

/// What polling the connection produced.
#[derive(Debug)]
pub enum Event {
    /// CONNACK.
    Connected {
        /// The broker kept this client's session.
        session_present: bool,
    },
    /// A publish arrived.
    Received(Box<Inbound>),
    /// The broker acknowledged our publish with this packet id.
    Acknowledged(u16, AckOutcome),
    /// The client wrote a publish with this packet id (0 for QoS 0).
    Sent(u16),
    /// SUBACK with at least one refusal; the codes, for the log.
    SubscriptionRefused(String),
    /// The broker sent DISCONNECT (MQTT 5); its reason, for the log.
    BrokerDisconnect(String),
    /// Anything else (pings, subacks that succeeded, ...).
    Other,
}

/// Creates the client and its connection.
pub fn connect(options: Options, capacity: usize) -> (Client, Connection) {
    match options {
        Options::V5(o) => {
            let (c, e) = rumqttc::v5::AsyncClient::new(*o, capacity);
            (Client::V5(c), Connection::V5(Box::new(e)))
        }
        Options::V311(o) => {
            let (c, e) = rumqttc::AsyncClient::new(*o, capacity);
            (Client::V311(c), Connection::V311(Box::new(e)))
        }
    }
}

impl Client {
    /// Queues a QoS 1 publish. `correlation` is sent only where the protocol can.
    pub fn try_publish(
        &self,
        topic: &str,
        retain: bool,
        payload: Bytes,
        correlation: Option<Bytes>,
    ) -> Result<(), String> {
        match self {
            Client::V5(c) => {
                let props = p5::PublishProperties {
                    correlation_data: correlation,
                    content_type: Some("application/json".into()),
                    payload_format_indicator: Some(1),
                    ..Default::default()
                };
                c.try_publish_with_properties(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    retain,
                    payload,
                    props,
                )
                .map_err(|e| e.to_string())
            }
            Client::V311(c) => c
                .try_publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload)
                .map_err(|e| e.to_string()),
        }
    }

    /// Queues the acknowledgement of `delivery`.
    pub fn try_ack(&self, delivery: &Delivery) -> Result<(), String> {
        match (self, delivery) {
            (Client::V5(c), Delivery::V5(p)) => c.try_ack(p).map_err(|e| e.to_string()),
            (Client::V311(c), Delivery::V311(p)) => c.try_ack(p).map_err(|e| e.to_string()),
            _ => Err("delivery of the other protocol version".into()),
        }
    }

    /// Queues a QoS 1 subscription.
    pub fn try_subscribe(&self, filter: &str) -> Result<(), String> {
        match self {
            Client::V5(c) => c
                .try_subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
            Client::V311(c) => c
                .try_subscribe(filter, rumqttc::QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
        }
    }

    /// Queues an unsubscription.
    pub fn try_unsubscribe(&self, filter: &str) -> Result<(), String> {
        match self {
            Client::V5(c) => c.try_unsubscribe(filter).map_err(|e| e.to_string()),
            Client::V311(c) => c.try_unsubscribe(filter).map_err(|e| e.to_string()),
        }
    }

    /// Queues DISCONNECT.
    pub fn try_disconnect(&self) -> Result<(), String> {
        match self {
            Client::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Client::V311(c) => c.try_disconnect().map_err(|e| e.to_string()),
        }
    }
}

impl Connection {
    /// The next event; an error means the connection is down (the next poll reconnects).
    pub async fn poll(&mut self) -> Result<Event, String> {
        match self {
            Connection::V5(e) => e.poll().await.map(event_v5).map_err(|e| e.to_string()),
            Connection::V311(e) => e.poll().await.map(event_v311).map_err(|e| e.to_string()),
        }
    }

    /// Takes every queued or in-flight publish and ack out of the client, so
    /// that the caller alone decides what is sent again (see `outbox`).
    pub fn take_back_publishes(&mut self) {
        // clean() moves in-flight and queued requests into `pending`.
        match self {
            Connection::V5(e) => {
                e.clean();
                e.pending.retain(|r| {
                    !matches!(
                        r,
                        rumqttc::v5::Request::Publish(_) | rumqttc::v5::Request::PubAck(_)
                    )
                });
            }
            Connection::V311(e) => {
                e.clean();
                e.pending.retain(|r| {
                    !matches!(
                        r,
                        rumqttc::Request::Publish(_) | rumqttc::Request::PubAck(_)
                    )
                });
            }
        }
    }
}

fn event_v5(e: rumqttc::v5::Event) -> Event {
    use rumqttc::v5::Event as E;
    match e {
        E::Incoming(p5::Packet::ConnAck(a)) => Event::Connected {
            session_present: a.session_present,
        },
        E::Incoming(p5::Packet::Publish(p)) => {
            let props = p.properties.as_ref();
            Event::Received(Box::new(Inbound {
                topic: std::str::from_utf8(&p.topic).ok().map(str::to_string),
                payload: p.payload.clone(),
                response_topic: props.and_then(|x| x.response_topic.clone()),
                correlation: props.and_then(|x| x.correlation_data.clone()),
                user_properties: props.map(|x| x.user_properties.clone()).unwrap_or_default(),
                delivery: Delivery::V5(p),
            }))
        }
        E::Incoming(p5::Packet::PubAck(a)) => Event::Acknowledged(
            a.pkid,
            match a.reason {
                p5::PubAckReason::Success => AckOutcome::Delivered,
                p5::PubAckReason::NoMatchingSubscribers => AckOutcome::NoSubscribers,
                other => AckOutcome::Refused(format!("{other:?}")),
            },
        ),
        E::Incoming(p5::Packet::SubAck(s))
            if s.return_codes
                .iter()
                .any(|c| !matches!(c, p5::SubscribeReasonCode::Success(_))) =>
        {
            Event::SubscriptionRefused(format!("{:?}", s.return_codes))
        }
        E::Incoming(p5::Packet::Disconnect(d)) => {
            Event::BrokerDisconnect(format!("{:?}", d.reason_code))
        }
        E::Outgoing(Outgoing::Publish(pkid)) => Event::Sent(pkid),
        _ => Event::Other,
    }
}

fn event_v311(e: rumqttc::Event) -> Event {
    use rumqttc::Event as E;
    match e {
        E::Incoming(p4::Packet::ConnAck(a)) => Event::Connected {
            session_present: a.session_present,
        },
        E::Incoming(p4::Packet::Publish(p)) => Event::Received(Box::new(Inbound {
            topic: Some(p.topic.clone()),
            payload: p.payload.clone(),
            response_topic: None,
            correlation: None,
            user_properties: Vec::new(),
            delivery: Delivery::V311(p),
        })),
        // MQTT 3.1.1 has no reason codes: every PUBACK is a delivery.
        E::Incoming(p4::Packet::PubAck(a)) => Event::Acknowledged(a.pkid, AckOutcome::Delivered),
        E::Incoming(p4::Packet::SubAck(s))
            if s.return_codes
                .iter()
                .any(|c| !matches!(c, p4::SubscribeReasonCode::Success(_))) =>
        {
            Event::SubscriptionRefused(format!("{:?}", s.return_codes))
        }
        E::Outgoing(Outgoing::Publish(pkid)) => Event::Sent(pkid),
        _ => Event::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_protocols_map_to_the_same_events() {
        let p = p4::Publish::new(
            "shitu/a/recognize",
            rumqttc::QoS::AtLeastOnce,
            b"{}".to_vec(),
        );
        match event_v311(rumqttc::Event::Incoming(p4::Packet::Publish(p))) {
            Event::Received(i) => {
                assert_eq!(i.topic.as_deref(), Some("shitu/a/recognize"));
                assert!(i.response_topic.is_none() && i.correlation.is_none());
                assert!(matches!(i.delivery, Delivery::V311(_)));
            }
            other => panic!("{other:?}"),
        }
        let props = p5::PublishProperties {
            response_topic: Some("me/answers".into()),
            correlation_data: Some(Bytes::from_static(b"c1")),
            user_properties: vec![("request_id".into(), "r1".into())],
            ..Default::default()
        };
        let p = p5::Publish::new(
            "shitu/a/recognize",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            b"{}".to_vec(),
            Some(props),
        );
        match event_v5(rumqttc::v5::Event::Incoming(p5::Packet::Publish(p))) {
            Event::Received(i) => {
                assert_eq!(i.response_topic.as_deref(), Some("me/answers"));
                assert_eq!(i.correlation.as_deref(), Some(&b"c1"[..]));
                assert_eq!(
                    i.user_properties,
                    vec![("request_id".to_string(), "r1".to_string())]
                );
            }
            other => panic!("{other:?}"),
        }
        let refused = p4::SubAck::new(1, vec![p4::SubscribeReasonCode::Failure]);
        assert!(matches!(
            event_v311(rumqttc::Event::Incoming(p4::Packet::SubAck(refused))),
            Event::SubscriptionRefused(_)
        ));
        let granted = p4::SubAck::new(
            1,
            vec![p4::SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce)],
        );
        assert!(matches!(
            event_v311(rumqttc::Event::Incoming(p4::Packet::SubAck(granted))),
            Event::Other
        ));
        assert!(matches!(
            event_v311(rumqttc::Event::Outgoing(Outgoing::Publish(7))),
            Event::Sent(7)
        ));
    }

    #[test]
    fn an_ack_of_the_other_protocol_is_refused_not_sent() {
        let (c, _conn) = connect(
            Options::V311(Box::new(rumqttc::MqttOptions::new("t", "localhost", 1))),
            4,
        );
        let p = p5::Publish::new(
            "t",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            b"x".to_vec(),
            None,
        );
        assert!(c.try_ack(&Delivery::V5(p)).is_err());
    }
}

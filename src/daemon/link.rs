//! The broker connection's options: identity, session, limits, credentials
//! and TLS, all from [`MqttSettings`], and the topic names.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rumqttc::{TlsConfiguration, Transport};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::mqtt::{Options, MQTT_MAX_PACKET};
use crate::config::{MqttSettings, Protocol};

/// Topic names for one device.
#[derive(Debug, Clone)]
pub struct Topics {
    /// `P/recognize`.
    pub recognize: String,
    /// `P/result`: answers to requests (and triggers) without a response topic.
    pub result: String,
    /// `P/trigger`: "an item is under camera N now".
    pub trigger: String,
    /// `P` itself: `<prefix>/<device_id>`.
    pub base: String,
    /// `P/unknown`: crops of triggered frames that matched nothing.
    pub unknown: String,
    /// `P/status`, retained.
    pub status: String,
    /// `P/gallery/add`.
    pub gallery_add: String,
    /// `P/gallery/remove`.
    pub gallery_remove: String,
    /// `P/gallery/result`: gallery answers without a response topic.
    pub gallery_result: String,
    /// The filter subscribed for requests (`$share/<group>/P/recognize` when shared).
    pub recognize_filter: String,
    /// `P/ota/apply`: apply a bundle (URL or path).
    pub ota_apply: String,
    /// `P/ota/rollback`: go back to the previous version.
    pub ota_rollback: String,
    /// `P/ota/status`, retained: the update in progress or the last outcome.
    pub ota_status: String,
    /// `P/ota/result`: OTA answers without a response topic.
    pub ota_result: String,
    /// The line's topics, when `mqtt.line` is set.
    pub line: Option<LineTopics>,
}

/// Topics of the line a box serves, under `<prefix>/line/<line>` (L below).
#[derive(Debug, Clone)]
pub struct LineTopics {
    /// The line's name.
    pub name: String,
    /// `L/recognize`: requests for whichever box of the line takes them.
    pub recognize: String,
    /// `$share/<line>/L/recognize`: the filter, so each request goes to one box.
    pub recognize_filter: String,
    /// `L/result`: answers to line requests without a response topic.
    pub result: String,
    /// `L/gallery/add`, applied by every box of the line.
    pub gallery_add: String,
    /// `L/gallery/remove`, applied by every box of the line.
    pub gallery_remove: String,
    /// `L/gallery/result`: line gallery answers without a response topic (one per box).
    pub gallery_result: String,
    /// `L/gallery/manifest`, retained: the line's gallery version and where its state is.
    pub gallery_manifest: String,
    /// `L/gallery/state`, retained: every change, subscribed to only to fetch it.
    pub gallery_state: String,
}

/// Who a request is addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// This box (`<prefix>/<device_id>/…`).
    Box,
    /// The line it serves (`<prefix>/line/<line>/…`).
    Line,
}

/// What a message asks for, told by its topic once, where it arrives;
/// everything after that matches on this, not on strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Recognise an image (`P/recognize`, or the line's).
    Recognize(Scope),
    /// Recognise what a camera of this box captures at a moment (`P/trigger`).
    Trigger,
    /// Enrol a product photo (`P/gallery/add`, or the line's).
    GalleryAdd(Scope),
    /// Remove gallery items (`P/gallery/remove`, or the line's).
    GalleryRemove(Scope),
    /// Apply an update bundle (`P/ota/apply`).
    OtaApply,
    /// Go back to the previous version (`P/ota/rollback`).
    OtaRollback,
    /// The line's gallery manifest (`L/gallery/manifest`).
    LineManifest,
    /// The line's gallery state (`L/gallery/state`), when fetched.
    LineState,
}

impl Route {
    /// Where answers go when the request names no response topic.
    pub fn default_answer_topic(self, t: &Topics) -> &str {
        match (self, &t.line) {
            (Route::Recognize(Scope::Line), Some(l)) => &l.result,
            (Route::GalleryAdd(Scope::Line) | Route::GalleryRemove(Scope::Line), Some(l)) => {
                &l.gallery_result
            }
            (Route::Recognize(_) | Route::Trigger, _) => &t.result,
            (Route::GalleryAdd(_) | Route::GalleryRemove(_), _) => &t.gallery_result,
            // Never answered; named for completeness.
            (Route::LineManifest | Route::LineState, Some(l)) => &l.gallery_result,
            (Route::LineManifest | Route::LineState, None) => &t.gallery_result,
            (Route::OtaApply | Route::OtaRollback, _) => &t.ota_result,
        }
    }
}

impl Topics {
    /// `P/detections/<source>`: continuous mode's label changes.
    pub fn detections(&self, source: &str) -> String {
        format!("{}/detections/{source}", self.base)
    }

    /// The route of a message on `topic`; `None` for a topic the daemon does not serve.
    pub fn route(&self, topic: &str) -> Option<Route> {
        let line = self.line.as_ref().map(|l| {
            [
                (&l.recognize, Route::Recognize(Scope::Line)),
                (&l.gallery_add, Route::GalleryAdd(Scope::Line)),
                (&l.gallery_remove, Route::GalleryRemove(Scope::Line)),
                (&l.gallery_manifest, Route::LineManifest),
                (&l.gallery_state, Route::LineState),
            ]
        });
        [
            (&self.recognize, Route::Recognize(Scope::Box)),
            (&self.trigger, Route::Trigger),
            (&self.gallery_add, Route::GalleryAdd(Scope::Box)),
            (&self.gallery_remove, Route::GalleryRemove(Scope::Box)),
            (&self.ota_apply, Route::OtaApply),
            (&self.ota_rollback, Route::OtaRollback),
        ]
        .into_iter()
        .chain(line.into_iter().flatten())
        .find_map(|(t, r)| (t == topic).then_some(r))
    }

    /// Every filter the daemon subscribes to.
    pub fn filters(&self) -> Vec<&str> {
        let mut f = vec![
            self.recognize_filter.as_str(),
            &self.trigger,
            &self.gallery_add,
            &self.gallery_remove,
            &self.ota_apply,
            &self.ota_rollback,
        ];
        if let Some(l) = &self.line {
            f.extend([
                l.recognize_filter.as_str(),
                &l.gallery_add,
                &l.gallery_remove,
                &l.gallery_manifest,
            ]);
        }
        f
    }

    /// Topics under `<prefix>/<device_id>`.
    pub fn new(m: &MqttSettings, device_id: &str) -> Topics {
        let p = format!("{}/{}", m.prefix, device_id);
        let recognize = format!("{p}/recognize");
        // Gallery commands are never shared: every box must apply every change.
        let recognize_filter = if m.shared_group.is_empty() {
            recognize.clone()
        } else {
            format!("$share/{}/{recognize}", m.shared_group)
        };
        Topics {
            recognize,
            result: format!("{p}/result"),
            trigger: format!("{p}/trigger"),
            base: p.clone(),
            unknown: format!("{p}/unknown"),
            status: format!("{p}/status"),
            gallery_add: format!("{p}/gallery/add"),
            gallery_remove: format!("{p}/gallery/remove"),
            gallery_result: format!("{p}/gallery/result"),
            recognize_filter,
            ota_apply: format!("{p}/ota/apply"),
            ota_rollback: format!("{p}/ota/rollback"),
            ota_status: format!("{p}/ota/status"),
            ota_result: format!("{p}/ota/result"),
            line: (!m.line.is_empty()).then(|| {
                let l = format!("{}/line/{}", m.prefix, m.line);
                LineTopics {
                    name: m.line.clone(),
                    recognize: format!("{l}/recognize"),
                    // Shared: each request to one box of the line.
                    recognize_filter: format!("$share/{}/{l}/recognize", m.line),
                    result: format!("{l}/result"),
                    // Not shared: every box applies every change.
                    gallery_add: format!("{l}/gallery/add"),
                    gallery_remove: format!("{l}/gallery/remove"),
                    gallery_result: format!("{l}/gallery/result"),
                    gallery_manifest: format!("{l}/gallery/manifest"),
                    gallery_state: format!("{l}/gallery/state"),
                }
            }),
        }
    }
}

#[cfg(test)]
mod route_tests {
    use super::*;

    #[test]
    fn every_served_topic_has_one_route_and_others_none() {
        let t = Topics::new(&MqttSettings::default(), "box1");
        assert_eq!(
            t.route("shitu/box1/recognize"),
            Some(Route::Recognize(Scope::Box))
        );
        assert_eq!(t.route("shitu/line/l1/recognize"), None, "no line set");
        assert_eq!(t.filters().len(), 6);
        assert_eq!(t.route("shitu/box1/trigger"), Some(Route::Trigger));
        assert_eq!(Route::Trigger.default_answer_topic(&t), "shitu/box1/result");
        assert_eq!(
            t.route("shitu/box1/gallery/add"),
            Some(Route::GalleryAdd(Scope::Box))
        );
        assert_eq!(
            t.route("shitu/box1/gallery/remove"),
            Some(Route::GalleryRemove(Scope::Box))
        );
        assert_eq!(t.route("shitu/box1/ota/apply"), Some(Route::OtaApply));
        assert_eq!(t.route("shitu/box1/ota/rollback"), Some(Route::OtaRollback));
        assert_eq!(t.route("shitu/box2/recognize"), None);
        assert_eq!(t.route("shitu/box1/result"), None);
        assert_eq!(
            Route::GalleryAdd(Scope::Box).default_answer_topic(&t),
            "shitu/box1/gallery/result"
        );
    }

    #[test]
    fn a_line_adds_its_shared_requests_and_its_gallery_for_every_box() {
        let m = MqttSettings {
            line: "l1".into(),
            ..Default::default()
        };
        let t = Topics::new(&m, "box1");
        assert_eq!(
            t.route("shitu/line/l1/recognize"),
            Some(Route::Recognize(Scope::Line))
        );
        assert_eq!(
            t.route("shitu/line/l1/gallery/add"),
            Some(Route::GalleryAdd(Scope::Line))
        );
        assert_eq!(t.route("shitu/line/l2/recognize"), None);
        assert_eq!(
            t.route("shitu/box1/recognize"),
            Some(Route::Recognize(Scope::Box))
        );
        let f = t.filters();
        assert!(f.contains(&"$share/l1/shitu/line/l1/recognize"), "{f:?}");
        assert!(
            f.contains(&"shitu/line/l1/gallery/add"),
            "not shared: {f:?}"
        );
        // The manifest is always watched; the state is fetched on demand.
        assert!(f.contains(&"shitu/line/l1/gallery/manifest"), "{f:?}");
        assert!(!f.contains(&"shitu/line/l1/gallery/state"), "{f:?}");
        assert_eq!(
            t.route("shitu/line/l1/gallery/state"),
            Some(Route::LineState)
        );
        assert_eq!(
            Route::Recognize(Scope::Line).default_answer_topic(&t),
            "shitu/line/l1/result"
        );
    }
}

/// This box's name: `mqtt.device_id`, else the host name.
pub fn device_id(m: &MqttSettings) -> String {
    if !m.device_id.is_empty() {
        return m.device_id.clone();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "shitu".to_string())
}

/// Largest packet the broker may send us. Above `max_payload_bytes`, up to
/// this, requests get a `too_large` answer; beyond it MQTT 5 brokers drop
/// them without delivery (they cannot be answered), hence the headroom.
pub fn max_packet(max_payload_bytes: usize) -> u32 {
    (max_payload_bytes as u64)
        .saturating_mul(4)
        .clamp(1 << 20, 256 << 20) as u32
}

/// Connection options for the daemon's persistent session, in the protocol
/// `mqtt.protocol` names.
pub fn options(
    m: &MqttSettings,
    client_id: &str,
    status_topic: &str,
    offline: Vec<u8>,
    max_payload_bytes: usize,
) -> anyhow::Result<Options> {
    let keep_alive = Duration::from_secs(m.keep_alive_s.max(5));
    let credentials = credentials(m)?;
    let transport = if m.tls.enabled {
        Some(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls_config(m)?),
        )))
    } else {
        None
    };
    Ok(match m.protocol {
        Protocol::V5 => {
            use rumqttc::v5::mqttbytes::{v5::LastWill, QoS};
            let mut o = rumqttc::v5::MqttOptions::new(client_id, m.host.clone(), m.port);
            o.set_keep_alive(keep_alive)
                // The session (and the requests queued in it) must outlive restarts.
                .set_clean_start(false)
                .set_session_expiry_interval(Some(m.session_expiry_s))
                .set_receive_maximum(Some(m.receive_maximum))
                .set_max_packet_size(Some(max_packet(max_payload_bytes)))
                // Requests are acknowledged only once their answer is with the broker.
                .set_manual_acks(true)
                .set_request_channel_capacity(4096)
                .set_connection_timeout(5)
                .set_last_will(LastWill::new(status_topic, offline, QoS::AtLeastOnce, true, None));
            if let Some((u, p)) = credentials {
                o.set_credentials(u, p);
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            Options::V5(Box::new(o))
        }
        Protocol::V311 => {
            use rumqttc::{LastWill, QoS};
            let mut o = rumqttc::MqttOptions::new(client_id, m.host.clone(), m.port);
            o.set_keep_alive(keep_alive)
                .set_clean_session(false)
                // See `mqtt`: 3.1.1 cannot tell the broker our limit.
                .set_max_packet_size(MQTT_MAX_PACKET, max_packet(max_payload_bytes) as usize)
                .set_inflight(m.receive_maximum.max(1))
                .set_manual_acks(true)
                .set_request_channel_capacity(4096)
                .set_last_will(LastWill::new(status_topic, offline, QoS::AtLeastOnce, true));
            // The connection timeout is already 5 s, as for v5 above.
            if let Some((u, p)) = credentials {
                o.set_credentials(u, p);
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            Options::V311(Box::new(o))
        }
    })
}

/// User name and password, the password read from `password_file` when set.
fn credentials(m: &MqttSettings) -> anyhow::Result<Option<(String, String)>> {
    let password = match (&m.password, &m.password_file) {
        (_, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("mqtt.password_file {}", f.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
        ),
        (Some(p), None) => Some(p.clone()),
        (None, None) => None,
    };
    match (&m.username, password) {
        (Some(u), p) => Ok(Some((u.clone(), p.unwrap_or_default()))),
        (None, Some(_)) => bail!("mqtt: a password is set but no username"),
        (None, None) => Ok(None),
    }
}

fn tls_config(m: &MqttSettings) -> anyhow::Result<rustls::ClientConfig> {
    let t = &m.tls;
    let ca = t.ca_file.as_ref().context(
        "mqtt.tls.enabled needs mqtt.tls.ca_file (the CA that signed the broker's certificate)",
    )?;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("mqtt.tls.ca_file {}", ca.display()))?;
    for c in certs {
        roots
            .add(c.with_context(|| format!("mqtt.tls.ca_file {}", ca.display()))?)
            .with_context(|| format!("mqtt.tls.ca_file {}", ca.display()))?;
    }
    if roots.is_empty() {
        bail!("mqtt.tls.ca_file {}: no certificate in it", ca.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    Ok(match (&t.client_cert, &t.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("mqtt.tls.client_cert {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("mqtt.tls.client_cert {}", cert.display()))?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("mqtt.tls.client_key {}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .with_context(|| {
                    format!(
                        "mqtt.tls: client certificate {} with key {} is not usable",
                        cert.display(),
                        key.display()
                    )
                })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => bail!("mqtt.tls: client_cert and client_key go together"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_shared_subscriptions() {
        let mut m = MqttSettings::default();
        let t = Topics::new(&m, "box1");
        assert_eq!(t.recognize, "shitu/box1/recognize");
        assert_eq!(t.recognize_filter, t.recognize);
        m.shared_group = "line7".into();
        let t = Topics::new(&m, "box1");
        assert_eq!(t.recognize_filter, "$share/line7/shitu/box1/recognize");
        assert_eq!(t.gallery_add, "shitu/box1/gallery/add");
    }

    #[test]
    fn tls_errors_name_the_setting() {
        let mut m = MqttSettings::default();
        m.tls.enabled = true;
        let e = options(&m, "c", "s", vec![], 1000).unwrap_err().to_string();
        assert!(e.contains("ca_file"), "{e}");
        m.tls.ca_file = Some("/nonexistent/ca.pem".into());
        let e = format!("{:#}", options(&m, "c", "s", vec![], 1000).unwrap_err());
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        m.protocol = Protocol::V311;
        let e = format!("{:#}", options(&m, "c", "s", vec![], 1000).unwrap_err());
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn both_protocols_keep_a_persistent_session() {
        let mut m = MqttSettings::default();
        match options(&m, "c", "s", vec![], 1 << 20).unwrap() {
            Options::V5(o) => {
                assert!(!o.clean_start());
                assert!(o.manual_acks());
            }
            Options::V311(_) => panic!("v5 is the default"),
        }
        m.protocol = Protocol::V311;
        match options(&m, "c", "s", vec![], 1 << 20).unwrap() {
            Options::V311(o) => {
                assert!(!o.clean_session());
                assert!(o.manual_acks());
                assert_eq!(o.max_packet_size(), MQTT_MAX_PACKET);
            }
            Options::V5(_) => panic!("v311 asked for"),
        }
    }
}

//! Unknown items in the daemon: crops of triggered frames that no gallery
//! item matched well enough are kept and announced (`P/unknown`, and the
//! page's event stream). Enrolling one is a gallery add (`worker`, or
//! `forward` on a line box).

use std::sync::Arc;

use super::answer::{self, Candidate, Capture, UnknownAnnounce, UnknownRef};
use super::feed::FeedEvent;
use super::outbox::Message;
use super::Shared;
use crate::input::Frame;
use crate::pipeline::Recognized;
use crate::search::line::ChangeId;
use crate::search::unknown::UnknownItem;

impl Shared {
    /// The detected crops of a triggered frame whose best match scored
    /// under `threshold`: each gets an id now (for the answer), and is
    /// saved and announced on `P/unknown` off the pipeline thread (this
    /// runs on it, in the job's reply).
    pub(super) fn keep_unknown(
        self: &Arc<Self>,
        runtime: &tokio::runtime::Handle,
        frame: &Arc<Frame>,
        result: &Recognized,
        threshold: f32,
        request_id: &str,
        capture: &Capture,
    ) -> Vec<UnknownRef> {
        let Some(store) = self.unknown.clone() else {
            return Vec::new();
        };
        // Detector crops only: the whole-frame crop (after them) is the background.
        let unknown: Vec<UnknownItem> = result
            .matches
            .iter()
            .zip(&result.top_k)
            .take(result.detections.len())
            .filter(|(m, _)| m.score < threshold)
            .map(|(m, top_k)| UnknownItem {
                unknown_id: ChangeId::generate().to_string(),
                source: capture.source.clone(),
                request_id: request_id.to_string(),
                device_id: self.versions().device_id,
                bbox: [m.crop.x1, m.crop.y1, m.crop.x2, m.crop.y2],
                captured_at_ms: capture.captured_at_ms.unwrap_or_default(),
                top_k: top_k.clone(),
                change_id: None,
            })
            .collect();
        let refs = unknown
            .iter()
            .map(|u| UnknownRef {
                unknown_id: u.unknown_id.clone(),
                bbox: u.bbox,
            })
            .collect();
        if unknown.is_empty() {
            return refs;
        }
        let (shared, frame) = (self.clone(), frame.clone());
        runtime.spawn_blocking(move || {
            for item in unknown {
                match store.keep(&frame, item) {
                    Ok(item) => {
                        tracing::info!(unknown_id = %item.unknown_id, source = %item.source, bbox = ?item.bbox, best = ?item.top_k.first(), "unknown item kept");
                        let payload = answer::to_vec(&UnknownAnnounce {
                            unknown_id: &item.unknown_id,
                            source: &item.source,
                            request_id: &item.request_id,
                            device_id: &item.device_id,
                            bbox: item.bbox,
                            captured_at_ms: item.captured_at_ms,
                            top_k: item
                                .top_k
                                .iter()
                                .map(|(label, score)| Candidate {
                                    label: label.clone(),
                                    score: *score,
                                })
                                .collect(),
                        });
                        if let Ok(v) = serde_json::from_slice(&payload) {
                            shared.feed.notify(FeedEvent::Unknown(Arc::new(v)));
                        }
                        shared
                            .outbox
                            .submit(Message::event(shared.topics.unknown.clone(), payload));
                    }
                    Err(e) => tracing::warn!("an unknown item could not be kept: {e}"),
                }
            }
        });
        refs
    }
}

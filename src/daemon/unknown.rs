//! Unknown items in the daemon: crops of triggered frames that no gallery
//! item matched well enough are kept and announced (`P/unknown`), and an
//! operator's `P/gallery/add {"unknown_id", "label"}` enrols one. On a box
//! that serves a line, only this box holds the crop, so the enrolment
//! becomes a line change carrying the crop, which every box applies.

use std::sync::Arc;

use base64::Engine as _;

use super::answer::{self, Candidate, Capture, ErrorCode, UnknownAnnounce, UnknownRef};
use super::outbox::Message;
use super::request::{GalleryCommand, ImageSource};
use super::worker::{Job, Outcome, Reply, Work};
use super::{ReplyTo, Shared};
use crate::input::Frame;
use crate::pipeline::Recognized;
use crate::search::line::ChangeId;
use crate::search::unknown::UnknownItem;

/// An enrolment of an unknown item, as the request named it.
pub(super) struct Enrolment {
    pub request_id: String,
    pub unknown_id: String,
    pub label: String,
    /// Kept with the item (default `unknown:<id>`).
    pub source: String,
}

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

    /// Enrols an unknown item on a box that serves a line (admitted as new).
    /// The change is applied here first, so that the requester's answer is
    /// this box's (as for any gallery add); once applied it is published on
    /// `L/gallery/add` with the crop as its image, so that every other box
    /// computes the same feature and applies it under the same change id.
    /// The change id is recorded with the item before it is used: a repeated
    /// enrolment repeats the change, which every box then applies once.
    pub(super) fn enrol_for_line(self: &Arc<Self>, e: Enrolment, to: ReplyTo) {
        let Some(line_add) = self.topics.line.as_ref().map(|l| l.gallery_add.clone()) else {
            return self.reply_error(to, ErrorCode::Internal, "this box serves no line");
        };
        let Some(store) = self.unknown.clone() else {
            return self.reply_error(
                to,
                ErrorCode::BadRequest,
                "this box keeps no unknown items (capture.unknown_dir is empty)",
            );
        };
        // A small file on local disk: read here rather than queued behind inference.
        let held = store
            .change_for(&e.unknown_id, ChangeId::generate())
            .and_then(|(_, change)| Ok((change, std::fs::read(store.photo(&e.unknown_id)?))));
        let (change_id, png) = match held {
            Ok((change, Ok(png))) => (change, png),
            Ok((_, Err(io))) => {
                let message = format!(
                    "cannot read the crop of unknown item {}: {io}",
                    e.unknown_id
                );
                return self.reply_error(to, ErrorCode::Internal, &message);
            }
            Err(err) => return self.reply_error(to, ErrorCode::BadRequest, &err.to_string()),
        };
        let published = serde_json::json!({
            // A ULID request id serves as the change id; the other boxes
            // answer it on L/gallery/result.
            "request_id": change_id.to_string(),
            "change_id": change_id.to_string(),
            "label": e.label,
            "source": e.source,
            "image": base64::engine::general_purpose::STANDARD.encode(&png),
        });
        let published = answer::to_vec(&published);
        let max = self.settings.daemon.max_payload_bytes;
        if published.len() > max {
            // Every box checks the same limit on L/gallery/add.
            let message = format!(
                "the crop of unknown item {} makes a line change of {} bytes, over daemon.max_payload_bytes ({max}) that the line's boxes accept",
                e.unknown_id,
                published.len()
            );
            return self.reply_error(to, ErrorCode::TooLarge, &message);
        }
        let command = GalleryCommand::Add {
            request_id: e.request_id.clone(),
            label: e.label,
            image: ImageSource::Bytes(png),
            source: e.source,
        };
        let shared = self.clone();
        let unknown_id = e.unknown_id;
        let arrived = to.arrived;
        let reply = Reply::new(move |outcome| {
            if let Outcome::GalleryChanged { .. } = outcome {
                tracing::info!(unknown_id = %unknown_id, change = %change_id, topic = %line_add, "unknown item enrolled; publishing it to the line");
                shared.outbox.submit(Message::answer(
                    line_add,
                    bytes::Bytes::from(published),
                    None,
                    change_id.to_string(),
                    Vec::new(),
                ));
                if let Err(err) = store.remove(&unknown_id) {
                    tracing::warn!(unknown_id = %unknown_id, "enrolled, but not removed from the unknown items: {err}");
                }
            }
            shared.answer_outcome(to, outcome, None);
        });
        self.enqueue(Job {
            request_id: e.request_id,
            arrived,
            work: Work::LineGallery { change_id, command },
            reply,
        });
    }
}

//! Gallery changes a line box makes on the line's behalf: the enrolment
//! of an unknown item it kept (`P/gallery/add {"unknown_id"}` on its own
//! topic: only this box has the crop), and every change made on its
//! operator page. The change gets a line change id, is applied here first
//! (the requester's answer is this box's, as for any gallery change), and
//! once applied is published on `L/gallery/add` or `L/gallery/remove`, so
//! that every other box applies the same change under the same id.

use std::sync::Arc;

use base64::Engine as _;

use super::answer::{self, ErrorCode};
use super::feed::FeedEvent;
use super::outbox::Message;
use super::request::{GalleryCommand, ImageSource};
use super::worker::{Job, Outcome, Reply, Work};
use super::Shared;
use crate::search::line::ChangeId;

/// How a gallery command that arrived on a box's own topic (or over HTTP)
/// is served. Decided without I/O; MQTT and HTTP carry it out.
pub(super) enum GalleryPlan {
    /// Refused: the request gets this error.
    Refuse(ErrorCode, String),
    /// Queued as it is.
    Submit(Work),
    /// Made a line change by this box ([`Shared::forward_to_line`]).
    ForLine(GalleryCommand),
}

impl Shared {
    /// Carries out a [`GalleryPlan::ForLine`]: `reply` gets this box's
    /// outcome; the line gets the change once it is applied here.
    pub(super) fn forward_to_line(self: &Arc<Self>, command: GalleryCommand, reply: Reply) {
        let Some(line) = self.topics.line.clone() else {
            return reply.send(Outcome::failed(
                ErrorCode::Internal,
                "this box serves no line",
            ));
        };
        let mut unknown_id = None;
        let (command, change_id, topic, published) = match command {
            GalleryCommand::Add {
                request_id,
                label,
                image,
                source,
            } => {
                let (png, change_id) = match image {
                    ImageSource::Unknown(id) => match self.unknown_crop(&id) {
                        Ok((png, change)) => {
                            unknown_id = Some(id);
                            (png, change)
                        }
                        Err((code, message)) => return reply.send(Outcome::failed(code, message)),
                    },
                    ImageSource::Bytes(b) => (b, ChangeId::generate()),
                    ImageSource::Path(_) | ImageSource::Captured(_) => {
                        return reply.send(Outcome::failed(
                            ErrorCode::BadRequest,
                            "this box serves a line, and a path names a file on this box only: send the photo itself (\"image\")",
                        ))
                    }
                };
                let published = serde_json::json!({
                    "request_id": change_id.to_string(),
                    "change_id": change_id.to_string(),
                    "label": label,
                    "source": source,
                    "image": base64::engine::general_purpose::STANDARD.encode(&png),
                });
                let command = GalleryCommand::Add {
                    request_id,
                    label,
                    image: ImageSource::Bytes(png),
                    source,
                };
                (command, change_id, line.gallery_add, published)
            }
            GalleryCommand::Remove {
                request_id,
                label,
                ids,
            } => {
                let change_id = ChangeId::generate();
                let mut published = serde_json::json!({
                    "request_id": change_id.to_string(),
                    "change_id": change_id.to_string(),
                });
                match &label {
                    Some(l) => published["label"] = l.clone().into(),
                    None => published["ids"] = ids.clone().into(),
                }
                let command = GalleryCommand::Remove {
                    request_id,
                    label,
                    ids,
                };
                (command, change_id, line.gallery_remove, published)
            }
        };
        let published = answer::to_vec(&published);
        let max = self.settings.daemon.max_payload_bytes;
        if published.len() > max {
            // Every box checks the same limit on the line's topics.
            return reply.send(Outcome::failed(
                ErrorCode::TooLarge,
                format!(
                    "the change would be {} bytes on the line, over daemon.max_payload_bytes ({max}) that its boxes accept",
                    published.len()
                ),
            ));
        }
        let shared = self.clone();
        let request_id = command.request_id().to_string();
        let after = Reply::new(move |outcome| {
            if let Outcome::GalleryChanged { .. } = outcome {
                // Published also when it was applied before (a repeated
                // enrolment): a box applies a change once, whatever it hears.
                tracing::info!(change = %change_id, topic = %topic, "gallery change made here for the line; publishing it");
                // A ULID request id serves as the change id; the other boxes
                // answer it on L/gallery/result.
                shared.outbox.submit(Message::answer(
                    topic,
                    bytes::Bytes::from(published),
                    None,
                    change_id.to_string(),
                    Vec::new(),
                ));
                if let (Some(id), Some(store)) = (&unknown_id, &shared.unknown) {
                    if let Err(err) = store.remove(id) {
                        tracing::warn!(unknown_id = %id, "enrolled, but not removed from the unknown items: {err}");
                    }
                    shared.feed.notify(FeedEvent::Changed("unknown"));
                }
            }
            reply.send(outcome);
        });
        self.enqueue(Job {
            request_id,
            arrived: std::time::Instant::now(),
            work: Work::LineGallery { change_id, command },
            reply: after,
        });
    }

    /// An unknown item's crop (PNG) and the line change that enrols it,
    /// recorded with the item first so that a repeated enrolment (a
    /// redelivery, a restart) repeats the same change.
    fn unknown_crop(&self, id: &str) -> Result<(Vec<u8>, ChangeId), (ErrorCode, String)> {
        let Some(store) = &self.unknown else {
            return Err((
                ErrorCode::BadRequest,
                "this box keeps no unknown items (capture.unknown_dir is empty)".into(),
            ));
        };
        // A small file on local disk: read here rather than queued behind inference.
        let (_, change) = store
            .change_for(id, ChangeId::generate())
            .map_err(|e| (ErrorCode::BadRequest, e.to_string()))?;
        let png = store
            .photo(id)
            .map_err(|e| (ErrorCode::BadRequest, e.to_string()))
            .and_then(|p| {
                std::fs::read(&p).map_err(|e| {
                    (
                        ErrorCode::Internal,
                        format!("cannot read the crop of unknown item {id}: {e}"),
                    )
                })
            })?;
        Ok((png, change))
    }

    /// Why gallery changes wait, while an update is being applied: the new
    /// version's gallery was copied when the update began, and a change now
    /// would be lost at the swap.
    pub(super) fn updating(&self) -> Option<String> {
        self.updater.as_ref().filter(|u| u.is_busy()).map(|_| {
            "an update is being applied; retry when P/ota/status says it is done".to_string()
        })
    }

    /// How a gallery command on this box's own topic (`from_page`: or from
    /// its HTTP API) is served.
    pub(super) fn plan_gallery(&self, command: GalleryCommand, from_page: bool) -> GalleryPlan {
        let enrols_unknown = matches!(
            command,
            GalleryCommand::Add {
                image: ImageSource::Unknown(_),
                ..
            }
        );
        if let Some(line) = &self.topics.line {
            if !(enrols_unknown || from_page) {
                // A change to one box of a line would be undone by, or
                // silently differ from, the line's gallery.
                let topic = match command {
                    GalleryCommand::Add { .. } => &line.gallery_add,
                    GalleryCommand::Remove { .. } => &line.gallery_remove,
                };
                return GalleryPlan::Refuse(
                    ErrorCode::BadRequest,
                    format!(
                        "this box serves line {:?}: publish gallery changes on {topic} so that every box of the line applies them",
                        self.settings.mqtt.line
                    ),
                );
            }
        }
        if let Some(message) = self.updating() {
            return GalleryPlan::Refuse(ErrorCode::Busy, message);
        }
        if self.topics.line.is_some() {
            GalleryPlan::ForLine(command)
        } else {
            GalleryPlan::Submit(Work::Gallery(command))
        }
    }
}

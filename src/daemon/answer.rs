//! Answer payloads. Field names are an interface (docs/MQTT.md has the JSON
//! Schemas); a change here is a change for every line controller.

use serde::Serialize;

use crate::pipeline::Recognized;
use crate::report::StageTimes;

/// Why a request could not be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request itself is wrong: malformed JSON, bad base64, bad options, a refused path.
    BadRequest,
    /// The image could not be decoded.
    DecodeFailed,
    /// The payload or the image is over a configured limit.
    TooLarge,
    /// The queue is full; try again later.
    Busy,
    /// Something failed inside the daemon; the log has details.
    Internal,
    /// An update bundle was refused (signature, hashes, target, download,
    /// health check); the current version keeps serving.
    Refused,
    /// A trigger names a source this box does not have.
    UnknownSource,
    /// A trigger's source is not streaming (connecting, stalled, failed).
    SourceUnavailable,
    /// No frame of the trigger's moment arrived by its deadline, or it had
    /// already left the source's ring.
    NoFrame,
}

impl ErrorCode {
    /// The code as written in answers.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::DecodeFailed => "decode_failed",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Busy => "busy",
            ErrorCode::Internal => "internal",
            ErrorCode::Refused => "refused",
            ErrorCode::UnknownSource => "unknown_source",
            ErrorCode::SourceUnavailable => "source_unavailable",
            ErrorCode::NoFrame => "no_frame",
        }
    }
}

/// Which models and gallery produced an answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Versions {
    /// shitud's version.
    pub shitud: String,
    /// First 16 hex digits of the detector model's sha256.
    pub detector: String,
    /// First 16 hex digits of the recogniser model's sha256.
    pub recognizer: String,
    /// The gallery's change sequence number (grows with every add and remove).
    pub gallery_seq: u64,
    /// Items in the gallery.
    pub gallery_items: usize,
    /// The execution provider running the models (`cpu`, `cuda`, `tensorrt`);
    /// says so when it is not the configured one (`engine.fallback`).
    pub provider: String,
    /// The OTA version serving (`null`: the config's own models and gallery).
    pub bundle: Option<String>,
    /// The box that answered (`mqtt.device_id`).
    pub device_id: String,
    /// The line it serves (`mqtt.line`; `null`: none).
    pub line: Option<String>,
    /// Which of the line's gallery changes this box has applied (absent
    /// before the first): boxes with the same digest hold the same items.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line_gallery: Option<crate::search::line::LineVersion>,
    /// The gallery serving (an OTA version's, or the config's), for the
    /// page's thumbnails; not in answers.
    #[serde(skip)]
    pub gallery_dir: std::path::PathBuf,
}

/// One gallery candidate.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Candidate {
    /// Product label.
    pub label: String,
    /// Cosine similarity.
    pub score: f32,
}

/// One recognised object.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Object {
    /// `[x1, y1, x2, y2]`, integer pixels.
    pub bbox: [i32; 4],
    /// Best label.
    pub rec_docs: String,
    /// Its score.
    pub rec_scores: f32,
    /// The crop's best gallery matches, best first (`return_k` of them).
    pub top_k: Vec<Candidate>,
}

/// Milliseconds per stage, plus the time spent waiting in the queue.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Timings {
    /// From arrival to the start of its batch.
    pub queue: f64,
    /// Pipeline stages (this request's share of its batch).
    #[serde(flatten)]
    pub stages: StageTimes,
    /// From arrival to the answer being handed to the broker connection.
    pub total: f64,
    /// Requests in the batch this one ran in.
    pub batch: usize,
}

/// A successful recognise answer.
#[derive(Debug, Clone, Serialize)]
pub struct RecognizeAnswer<'a> {
    /// The request's id.
    pub request_id: &'a str,
    /// Always `true` here.
    pub ok: bool,
    /// Recognised objects, best first.
    pub results: Vec<Object>,
    /// Stage times.
    pub timings_ms: Timings,
    /// Models and gallery.
    pub versions: &'a Versions,
    /// What a trigger adds: its source, the frame's time, its own fields.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub capture: Option<&'a Capture>,
}

/// A trigger's part of its answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Capture {
    /// The source named by the trigger.
    pub source: String,
    /// When the frame recognised was captured, unix ms (absent in errors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub captured_at_ms: Option<i64>,
    /// Its capture time minus the trigger's time (`t_ms`, or its arrival), ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame_age_ms: Option<i64>,
    /// Crops that matched nothing, kept as unknown items (`P/unknown`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<UnknownRef>,
    /// The trigger's other fields, as sent.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// An unknown item in a trigger's answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UnknownRef {
    /// Its id, for `P/gallery/add` with `unknown_id`.
    pub unknown_id: String,
    /// Where it is in the frame.
    pub bbox: [i32; 4],
}

/// The `P/unknown` announcement.
#[derive(Debug, Clone, Serialize)]
pub struct UnknownAnnounce<'a> {
    /// Its id.
    pub unknown_id: &'a str,
    /// The camera.
    pub source: &'a str,
    /// The trigger.
    pub request_id: &'a str,
    /// The box that keeps it.
    pub device_id: &'a str,
    /// `[x1, y1, x2, y2]` in the frame.
    pub bbox: [i32; 4],
    /// When the frame was captured, unix ms.
    pub captured_at_ms: i64,
    /// The best gallery matches, none good enough.
    pub top_k: Vec<Candidate>,
}

/// An error answer to a trigger: the error, with the trigger's source and fields.
pub fn trigger_error_payload(
    request_id: &str,
    code: ErrorCode,
    message: &str,
    capture: &Capture,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct TriggerError<'a> {
        request_id: &'a str,
        ok: bool,
        error: ErrorBody<'a>,
        #[serde(flatten)]
        capture: &'a Capture,
    }
    to_vec(&TriggerError {
        request_id,
        ok: false,
        error: ErrorBody { code, message },
        capture,
    })
}

/// Builds the answer's objects from the pipeline's result for one frame.
pub fn objects(r: &Recognized) -> Vec<Object> {
    r.results
        .iter()
        .zip(&r.result_crops)
        .map(|(res, &crop)| Object {
            bbox: res.bbox,
            rec_docs: res.rec_docs.clone(),
            rec_scores: res.rec_scores,
            top_k: r.top_k.get(crop).map_or_else(Vec::new, |hits| {
                hits.iter()
                    .map(|(label, score)| Candidate {
                        label: label.clone(),
                        score: *score,
                    })
                    .collect()
            }),
        })
        .collect()
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: ErrorCode,
    message: &'a str,
}

#[derive(Serialize)]
struct ErrorAnswer<'a> {
    request_id: &'a str,
    ok: bool,
    error: ErrorBody<'a>,
}

/// The payload of an error answer.
pub fn error_payload(request_id: &str, code: ErrorCode, message: &str) -> Vec<u8> {
    to_vec(&ErrorAnswer {
        request_id,
        ok: false,
        error: ErrorBody { code, message },
    })
}

/// A gallery command's acknowledgement.
#[derive(Debug, Clone, Serialize)]
pub struct GalleryAnswer<'a> {
    /// The command's id.
    pub request_id: &'a str,
    /// Always `true` here.
    pub ok: bool,
    /// Ids added (gallery/add).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<i64>,
    /// Ids removed (gallery/remove).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<i64>,
    /// The line change's id (line gallery commands).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_id: Option<String>,
    /// `true` when this box had applied the change already (a redelivery,
    /// or it came with a state fetched from the line): nothing changed now.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub already_applied: bool,
    /// The gallery after the change.
    pub versions: &'a Versions,
}

impl GalleryAnswer<'_> {
    /// The answer to a gallery change, the same on MQTT and HTTP.
    pub fn payload(
        request_id: &str,
        added: Vec<i64>,
        removed: Vec<i64>,
        change_id: Option<crate::search::line::ChangeId>,
        already_applied: bool,
        versions: &Versions,
    ) -> Vec<u8> {
        to_vec(&GalleryAnswer {
            request_id,
            ok: true,
            added,
            removed,
            change_id: change_id.map(|c| c.to_string()),
            already_applied,
            versions,
        })
    }
}

/// An OTA command's answer when it succeeded (failures are error answers).
#[derive(Debug, Clone, Serialize)]
pub struct OtaAnswer<'a> {
    /// The command's id.
    pub request_id: &'a str,
    /// Always `true` here.
    pub ok: bool,
    /// The version now serving.
    pub version: &'a str,
}

/// Where an update stands, on the retained `P/ota/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OtaState {
    /// No update since the start.
    #[default]
    Idle,
    /// Fetching the bundle.
    Downloading,
    /// Checking the signature, the version and every file.
    Verifying,
    /// Writing the new version's folder.
    Unpacking,
    /// Opening the new pipeline.
    Building,
    /// Running the golden images.
    Checking,
    /// Renaming the `current` link.
    Switching,
    /// Handing the new pipeline to the serving thread.
    Reloading,
    /// The update serves.
    Applied,
    /// The update was refused; the current version keeps serving.
    Refused,
    /// Went back to the previous version (on command, or after a failed trial).
    RolledBack,
    /// A rollback was refused.
    RollbackRefused,
}

impl From<crate::ota::apply::Step> for OtaState {
    fn from(step: crate::ota::apply::Step) -> Self {
        use crate::ota::apply::Step;
        match step {
            Step::Download => OtaState::Downloading,
            Step::Verify => OtaState::Verifying,
            Step::Unpack => OtaState::Unpacking,
            Step::Build => OtaState::Building,
            Step::Check => OtaState::Checking,
            Step::Switch => OtaState::Switching,
            Step::Reload => OtaState::Reloading,
        }
    }
}

/// The retained `P/ota/status` payload (docs/OTA.md).
#[derive(Debug, Clone, Default, Serialize)]
pub struct OtaStatus {
    /// Where the update stands.
    pub state: OtaState,
    /// The version applied or rolled back to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The version a failed trial rolled back from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_version: Option<String>,
    /// The bundle's URL or path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The command that started it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// What happened, for a person.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The version serving now (`None`: the config's own files).
    pub current: Option<String>,
    /// The version a rollback would go back to.
    pub previous: Option<String>,
    /// When this was published, seconds since the epoch.
    pub time_unix: u64,
}

/// Serialises an answer. Answers are plain data, so this cannot fail; the
/// fallback keeps the caller total anyway.
pub fn to_vec<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|e| {
        format!("{{\"ok\":false,\"error\":{{\"code\":\"internal\",\"message\":\"{e}\"}}}}")
            .into_bytes()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_have_code_and_message() {
        let v: serde_json::Value =
            serde_json::from_slice(&error_payload("r\"1", ErrorCode::TooLarge, "big")).unwrap();
        assert_eq!(v["request_id"], "r\"1");
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"]["code"], "too_large");
        assert_eq!(v["error"]["message"], "big");
    }

    #[test]
    fn ota_status_names_its_state_and_leaves_out_what_it_lacks() {
        let s = OtaStatus {
            state: OtaState::from(crate::ota::apply::Step::Verify),
            request_id: Some("u1".into()),
            current: Some("v1".into()),
            time_unix: 7,
            ..Default::default()
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"state": "verifying", "request_id": "u1", "current": "v1", "previous": null, "time_unix": 7})
        );
        assert_eq!(
            serde_json::to_value(OtaState::RollbackRefused).unwrap(),
            "rollback_refused"
        );
        // The status names each step as the log and SHITU_FAULT_OTA_KILL_AT do.
        for step in crate::ota::apply::Step::ALL {
            assert_eq!(
                serde_json::to_value(OtaState::from(step)).unwrap(),
                step.as_str()
            );
        }
    }

    #[test]
    fn codes_serialise_as_documented() {
        for c in [
            ErrorCode::BadRequest,
            ErrorCode::DecodeFailed,
            ErrorCode::TooLarge,
            ErrorCode::Busy,
            ErrorCode::Internal,
            ErrorCode::Refused,
            ErrorCode::UnknownSource,
            ErrorCode::SourceUnavailable,
            ErrorCode::NoFrame,
        ] {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
    }
}

//! Parsing request payloads. Everything here is pure (no I/O, no clock), so
//! the fuzz target and the unit tests drive exactly what the daemon runs.
//!
//! A recognise request is either JSON (`{"image": "<base64>"}` or
//! `{"path": "/srv/frames/x.jpg"}`, plus options) or the encoded image
//! itself as the payload, with the options in MQTT 5 user properties.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::answer::ErrorCode;
use crate::pipeline::Query;
use crate::search::line::ChangeId;

/// Largest `return_k` a request may ask for.
pub const MAX_RETURN_K: usize = 100;

/// A request that could not be accepted, with the code of its error answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The request's id, when it could be read (or derived).
    pub request_id: String,
    /// Error class.
    pub code: ErrorCode,
    /// What is wrong, for the person reading the answer.
    pub message: String,
}

/// Where a request's image comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// Encoded bytes (base64-decoded, or the raw payload).
    Bytes(Vec<u8>),
    /// A file on this device; checked against `daemon.allowed_dirs` before use.
    Path(PathBuf),
    /// A frame a camera captured (a trigger's), already decoded.
    Captured(CapturedFrame),
    /// An unknown item this box kept (`P/unknown`), by its id.
    Unknown(String),
}

/// A camera frame shared with its source's ring: the pipeline thread
/// copies it, so the ring never waits on a recognition.
#[derive(Debug, Clone)]
pub struct CapturedFrame(pub std::sync::Arc<crate::input::Frame>);

impl PartialEq for CapturedFrame {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

/// A parsed trigger: recognise what camera `source` sees at `t_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    /// The controller's id for it (required: two triggers alike are otherwise one redelivered).
    pub request_id: String,
    /// The source's name (`[[sources]] name`).
    pub source: String,
    /// When the item passed the trigger, unix ms (`None`: when the trigger arrived).
    pub t_ms: Option<i64>,
    /// Search options.
    pub query: Query,
    /// Every other field, copied into the answer (`item`, `lane`, …).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Answer fields a trigger's own fields may not take.
const TRIGGER_RESERVED: [&str; 10] = [
    "ok",
    "unknown",
    "error",
    "results",
    "timings_ms",
    "versions",
    "captured_at_ms",
    "frame_age_ms",
    "image",
    "path",
];

/// A parsed recognise request.
#[derive(Debug, Clone, PartialEq)]
pub struct Recognize {
    /// The caller's id, or one derived from the payload (see [`derived_id`]).
    pub request_id: String,
    /// The image.
    pub image: ImageSource,
    /// Per-request search options.
    pub query: Query,
    /// Fields that were ignored, for a warning.
    pub ignored: Vec<String>,
}

/// A parsed gallery command.
#[derive(Debug, Clone, PartialEq)]
pub enum GalleryCommand {
    /// Enrol one photo under a label.
    Add {
        /// The caller's id.
        request_id: String,
        /// Product label.
        label: String,
        /// The photo.
        image: ImageSource,
        /// Where the photo came from, kept with the item.
        source: String,
    },
    /// Remove items, all or none.
    Remove {
        /// The caller's id.
        request_id: String,
        /// Every item with this label...
        label: Option<String>,
        /// ...or these ids.
        ids: Vec<i64>,
    },
}

impl GalleryCommand {
    /// The command's request id.
    pub fn request_id(&self) -> &str {
        match self {
            GalleryCommand::Add { request_id, .. } | GalleryCommand::Remove { request_id, .. } => {
                request_id
            }
        }
    }
}

/// What a request payload carries besides its body.
#[derive(Debug, Clone, Default)]
pub struct Envelope<'a> {
    /// MQTT 5 user properties.
    pub user_properties: &'a [(String, String)],
    /// MQTT 5 correlation data (part of the derived id, so that two callers
    /// sending the same bytes are not taken for one).
    pub correlation_data: Option<&'a [u8]>,
}

/// The id of a request that names none: a hash of what was received.
/// A redelivery of the same message carries the same bytes, so it gets the
/// same id and is dropped as a duplicate.
pub fn derived_id(payload: &[u8], env: &Envelope<'_>) -> String {
    let mut h = Sha256::new();
    h.update(payload);
    if let Some(c) = env.correlation_data {
        h.update(b"\0corr\0");
        h.update(c);
    }
    for (k, v) in env.user_properties {
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
    }
    format!("sha256:{}", &hex::encode(h.finalize())[..32])
}

#[derive(Deserialize)]
struct RecognizeJson {
    #[serde(default)]
    request_id: Option<IdValue>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    return_k: Option<serde_json::Value>,
    #[serde(default)]
    score_threshold: Option<serde_json::Value>,
    #[serde(flatten)]
    rest: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct GalleryJson {
    #[serde(default)]
    request_id: Option<IdValue>,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    ids: Option<Vec<i64>>,
    /// Enrol an unknown item this box kept (gallery/add).
    #[serde(default)]
    unknown_id: Option<String>,
    /// Line commands only (see [`line_change_id`]).
    #[serde(default)]
    change_id: Option<serde_json::Value>,
    #[serde(flatten)]
    rest: BTreeMap<String, serde_json::Value>,
}

/// The change id of a gallery command published on the line, from its
/// `change_id` field as [`parse_gallery_sent`] found it, or its `request_id`
/// where that is a ULID. Every box must order the line's changes alike, so
/// the id, which carries the publisher's clock, is required.
pub fn line_change_id(
    change_id: Option<serde_json::Value>,
    request_id: &str,
) -> Result<ChangeId, Rejection> {
    match change_id {
        Some(serde_json::Value::String(s)) => s.parse().map_err(|e: String| {
            reject(
                request_id,
                ErrorCode::BadRequest,
                format!("\"change_id\": {e}"),
            )
        }),
        Some(other) => Err(reject(
            request_id,
            ErrorCode::BadRequest,
            format!("\"change_id\" must be a ULID string, not {other}"),
        )),
        None => request_id.parse().map_err(|_| {
            reject(
                request_id,
                ErrorCode::BadRequest,
                "a gallery change on the line needs \"change_id\": a ULID (26 characters; \
                 `shitud gallery change-id` prints one), so that every box of the line \
                 applies it once and orders it alike",
            )
        }),
    }
}

/// Line controllers send ids as strings or numbers; both are kept as text.
#[derive(Deserialize)]
#[serde(untagged)]
enum IdValue {
    Text(String),
    Number(serde_json::Number),
}

impl IdValue {
    fn into_string(self) -> String {
        match self {
            IdValue::Text(s) => s,
            IdValue::Number(n) => n.to_string(),
        }
    }
}

fn looks_like_json(payload: &[u8]) -> bool {
    payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Most characters in a label.
pub const MAX_LABEL_CHARS: usize = 200;

/// A label is a product's name, shown on pages and written to logs: no
/// control characters (a newline would forge a log line), no path
/// separators (a label may name a folder in an export).
fn check_label(label: &str, id: &str) -> Result<(), Rejection> {
    if let Some(c) = label
        .chars()
        .find(|c| c.is_control() || matches!(c, '/' | '\\'))
    {
        return Err(reject(
            id,
            ErrorCode::BadRequest,
            format!(
                "the label {label:?} holds {c:?}: a label is a product's name, without control characters, '/' or '\\'"
            ),
        ));
    }
    let n = label.chars().count();
    if n > MAX_LABEL_CHARS {
        return Err(reject(
            id,
            ErrorCode::BadRequest,
            format!("the label is {n} characters, over {MAX_LABEL_CHARS}"),
        ));
    }
    Ok(())
}

/// A payload over `daemon.max_payload_bytes`, refused before it is parsed.
fn too_large(payload: &[u8], max_bytes: usize, id: &str) -> Rejection {
    reject(
        id,
        ErrorCode::TooLarge,
        format!(
            "payload is {} bytes, over the limit of {max_bytes} (daemon.max_payload_bytes)",
            payload.len()
        ),
    )
}

fn reject(id: &str, code: ErrorCode, message: impl Into<String>) -> Rejection {
    Rejection {
        request_id: id.to_string(),
        code,
        message: message.into(),
    }
}

/// Longest request id accepted: ids are echoed in answers and kept for dedup.
const MAX_ID_LEN: usize = 256;

fn check_id(id: String, fallback: impl FnOnce() -> String) -> Result<String, Rejection> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(reject(
            &fallback(),
            ErrorCode::BadRequest,
            format!("request_id must be 1 to {MAX_ID_LEN} characters"),
        ));
    }
    Ok(id)
}

/// Parses a JSON body. A rejection is filed under the caller's id when the
/// JSON is well formed and names a valid one (a wrong field type, say), so
/// that the caller can match it; MQTT 3.1.1 callers have nothing else to
/// match by. Otherwise it is filed under the derived id.
fn parse_json<T: serde::de::DeserializeOwned>(
    payload: &[u8],
    derived: &impl Fn() -> String,
) -> Result<T, Rejection> {
    #[derive(Deserialize)]
    struct IdOnly {
        #[serde(default)]
        request_id: Option<IdValue>,
    }
    serde_json::from_slice(payload).map_err(|e| {
        if e.is_data() {
            let named = serde_json::from_slice::<IdOnly>(payload)
                .ok()
                .and_then(|j| j.request_id)
                .map(IdValue::into_string);
            let id = named
                .filter(|id| !id.is_empty() && id.len() <= MAX_ID_LEN)
                .unwrap_or_else(derived);
            reject(&id, ErrorCode::BadRequest, format!("invalid request: {e}"))
        } else {
            reject(
                &derived(),
                ErrorCode::BadRequest,
                format!("malformed JSON: {e}"),
            )
        }
    })
}

/// The caller's id if given (and valid), else the derived one.
fn resolve_id(given: Option<IdValue>, derived: &impl Fn() -> String) -> Result<String, Rejection> {
    match given {
        Some(v) => check_id(v.into_string(), derived),
        None => Ok(derived()),
    }
}

/// Parses a recognise request. `max_bytes` is checked before anything else.
pub fn parse_recognize(
    payload: &[u8],
    env: &Envelope<'_>,
    max_bytes: usize,
) -> Result<Recognize, Rejection> {
    // Hashing a large payload costs milliseconds on the network thread, so
    // the derived id is computed only for requests that need it.
    let derived = || derived_id(payload, env);
    if payload.len() > max_bytes {
        // The id may be inside the oversized JSON; it is not parsed to find out.
        let id = property(env, "request_id").map_or_else(derived, str::to_string);
        return Err(too_large(payload, max_bytes, &id));
    }
    if !looks_like_json(payload) {
        return parse_raw(payload, env, derived);
    }
    let json: RecognizeJson = parse_json(payload, &derived)?;
    let request_id = resolve_id(json.request_id, &derived)?;
    let id = request_id.as_str();
    let image = image_source(json.image, json.path, id)?;
    let query = json_query(json.return_k, json.score_threshold, id)?;
    let ignored = json.rest.into_keys().collect();
    Ok(Recognize {
        request_id,
        image,
        query,
        ignored,
    })
}

/// Parses a trigger (`P/trigger`, JSON only). `max_bytes` is checked first.
pub fn parse_trigger(
    payload: &[u8],
    env: &Envelope<'_>,
    max_bytes: usize,
) -> Result<Trigger, Rejection> {
    let derived = || derived_id(payload, env);
    if payload.len() > max_bytes {
        return Err(too_large(payload, max_bytes, &derived()));
    }
    #[derive(Deserialize)]
    struct TriggerJson {
        #[serde(default)]
        request_id: Option<IdValue>,
        #[serde(default)]
        source: Option<String>,
        #[serde(default)]
        t_ms: Option<serde_json::Value>,
        #[serde(default)]
        return_k: Option<serde_json::Value>,
        #[serde(default)]
        score_threshold: Option<serde_json::Value>,
        #[serde(flatten)]
        rest: serde_json::Map<String, serde_json::Value>,
    }
    if !looks_like_json(payload) {
        return Err(reject(
            &derived(),
            ErrorCode::BadRequest,
            "a trigger is a JSON object: {\"request_id\": \"…\", \"source\": \"cam1\"}",
        ));
    }
    let json: TriggerJson = parse_json(payload, &derived)?;
    let Some(request_id) = json.request_id else {
        return Err(reject(
            &derived(),
            ErrorCode::BadRequest,
            "a trigger needs a request_id: two triggers alike would otherwise count as one redelivered",
        ));
    };
    let request_id = check_id(request_id.into_string(), derived)?;
    let id = request_id.as_str();
    let source = match json.source {
        Some(s) if !s.is_empty() => s,
        _ => {
            return Err(reject(
                id,
                ErrorCode::BadRequest,
                "a trigger needs \"source\": the name of one of the box's [[sources]]",
            ))
        }
    };
    let t_ms = match json.t_ms {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => match v.as_i64().filter(|t| *t >= 0) {
            Some(t) => Some(t),
            None => {
                return Err(reject(
                    id,
                    ErrorCode::BadRequest,
                    format!("t_ms must be unix time in whole milliseconds, got {v}"),
                ))
            }
        },
    };
    if let Some(k) = json
        .rest
        .keys()
        .find(|k| TRIGGER_RESERVED.contains(&k.as_str()))
    {
        return Err(reject(
            id,
            ErrorCode::BadRequest,
            format!(
                "field {k:?} is not a trigger field and would clash with the answer's; rename it"
            ),
        ));
    }
    let query = json_query(json.return_k, json.score_threshold, id)?;
    Ok(Trigger {
        request_id,
        source,
        t_ms,
        query,
        extra: json.rest,
    })
}

/// A raw image payload: options come from user properties.
fn parse_raw(
    payload: &[u8],
    env: &Envelope<'_>,
    derived: impl Fn() -> String,
) -> Result<Recognize, Rejection> {
    let request_id = match property(env, "request_id") {
        Some(v) => check_id(v.to_string(), &derived)?,
        None => derived(),
    };
    let id = request_id.as_str();
    if payload.is_empty() {
        return Err(reject(
            id,
            ErrorCode::BadRequest,
            "empty payload: expected JSON or an encoded image",
        ));
    }
    let query = Query {
        return_k: property(env, "return_k")
            .map(|v| return_k(v, id))
            .transpose()?,
        score_threshold: property(env, "score_threshold")
            .map(|v| score_threshold(v, id))
            .transpose()?,
    };
    let ignored = env
        .user_properties
        .iter()
        .map(|(k, _)| k)
        .filter(|k| !["request_id", "return_k", "score_threshold"].contains(&k.as_str()))
        .cloned()
        .collect();
    Ok(Recognize {
        request_id,
        image: ImageSource::Bytes(payload.to_vec()),
        query,
        ignored,
    })
}

/// Parses a `gallery/add` (`add == true`) or `gallery/remove` command (JSON only).
pub fn parse_gallery(
    payload: &[u8],
    env: &Envelope<'_>,
    max_bytes: usize,
    add: bool,
) -> Result<GalleryCommand, Rejection> {
    parse_gallery_sent(payload, env, max_bytes, add).map(|(command, _)| command)
}

/// [`parse_gallery`], with the command's `change_id` field as sent, for
/// [`line_change_id`] on the line's topics (one parse of a payload that may
/// hold a large image).
pub fn parse_gallery_sent(
    payload: &[u8],
    env: &Envelope<'_>,
    max_bytes: usize,
    add: bool,
) -> Result<(GalleryCommand, Option<serde_json::Value>), Rejection> {
    let derived = || derived_id(payload, env);
    if payload.len() > max_bytes {
        return Err(too_large(payload, max_bytes, &derived()));
    }
    let json: GalleryJson = parse_json(payload, &derived)?;
    let request_id = resolve_id(json.request_id, &derived)?;
    let id = request_id.as_str();
    if !json.rest.is_empty() {
        tracing::warn!(request_id = id, fields = ?json.rest.keys().collect::<Vec<_>>(), "unknown gallery command fields ignored");
    }
    let label = json.label.filter(|l| !l.trim().is_empty());
    if add {
        let label = label.ok_or_else(|| {
            reject(
                id,
                ErrorCode::BadRequest,
                "gallery/add needs a non-empty \"label\"",
            )
        })?;
        check_label(&label, id)?;
        let source = json
            .source
            .or_else(|| json.path.clone())
            .or_else(|| json.unknown_id.as_ref().map(|u| format!("unknown:{u}")))
            .unwrap_or_else(|| format!("mqtt:{id}"));
        let image = match json.unknown_id {
            Some(u) if json.image.is_none() && json.path.is_none() => ImageSource::Unknown(u),
            Some(_) => {
                return Err(reject(
                    id,
                    ErrorCode::BadRequest,
                    "give one of \"image\", \"path\" or \"unknown_id\"",
                ))
            }
            None => image_source(json.image, json.path, id)?,
        };
        Ok((
            GalleryCommand::Add {
                request_id,
                label,
                image,
                source,
            },
            json.change_id,
        ))
    } else {
        let ids = json.ids.unwrap_or_default();
        if label.is_some() != ids.is_empty() {
            return Err(reject(
                id,
                ErrorCode::BadRequest,
                "gallery/remove needs either \"label\" or a non-empty \"ids\" list",
            ));
        }
        Ok((
            GalleryCommand::Remove {
                request_id,
                label,
                ids,
            },
            json.change_id,
        ))
    }
}

/// An OTA command (`P/ota/apply`, `P/ota/rollback`).
#[derive(Debug, Clone, PartialEq)]
pub enum OtaCommand {
    /// Apply the bundle at this URL or absolute path.
    Apply(crate::ota::fetch::Source),
    /// Go back to the previous version.
    Rollback,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OtaJson {
    #[serde(default)]
    request_id: Option<IdValue>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    path: Option<String>,
}

/// Parses `P/ota/apply` (`apply`: `{"url": …}` or `{"path": …}`) or
/// `P/ota/rollback` (`{}` or an empty payload), with an optional `request_id`.
pub fn parse_ota(
    payload: &[u8],
    env: &Envelope<'_>,
    apply: bool,
) -> Result<(String, OtaCommand), Rejection> {
    let derived = || derived_id(payload, env);
    let json: OtaJson = if payload.iter().all(u8::is_ascii_whitespace) && !apply {
        OtaJson {
            request_id: None,
            url: None,
            path: None,
        }
    } else {
        parse_json(payload, &derived)?
    };
    let request_id = resolve_id(json.request_id, &derived)?;
    let id = request_id.as_str();
    if !apply {
        if json.url.is_some() || json.path.is_some() {
            return Err(reject(
                id,
                ErrorCode::BadRequest,
                "ota/rollback takes no \"url\" or \"path\"",
            ));
        }
        return Ok((request_id, OtaCommand::Rollback));
    }
    let source = match (json.url, json.path) {
        (Some(u), None) if u.starts_with("http://") || u.starts_with("https://") => {
            crate::ota::fetch::Source::Url(u)
        }
        (Some(u), None) => {
            return Err(reject(
                id,
                ErrorCode::BadRequest,
                format!("\"url\" must start with http:// or https://, got {u:?}"),
            ))
        }
        (None, Some(p)) if Path::new(&p).is_absolute() => {
            crate::ota::fetch::Source::Path(PathBuf::from(p))
        }
        (None, Some(p)) => {
            return Err(reject(
                id,
                ErrorCode::BadRequest,
                format!("\"path\" must be absolute, got {p:?}"),
            ))
        }
        (Some(_), Some(_)) => {
            return Err(reject(
                id,
                ErrorCode::BadRequest,
                "give either \"url\" or \"path\", not both",
            ))
        }
        (None, None) => {
            return Err(reject(
                id,
                ErrorCode::BadRequest,
                "ota/apply needs \"url\" (http/https) or \"path\" (absolute) of a bundle",
            ))
        }
    };
    Ok((request_id, OtaCommand::Apply(source)))
}

fn image_source(
    image: Option<String>,
    path: Option<String>,
    id: &str,
) -> Result<ImageSource, Rejection> {
    match (image, path) {
        (Some(b64), None) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map(ImageSource::Bytes)
            .map_err(|e| {
                reject(
                    id,
                    ErrorCode::BadRequest,
                    format!("\"image\" is not valid base64: {e}"),
                )
            }),
        (None, Some(p)) => {
            let path = PathBuf::from(&p);
            if !path.is_absolute() {
                return Err(reject(
                    id,
                    ErrorCode::BadRequest,
                    format!("\"path\" must be absolute, got {p:?}"),
                ));
            }
            Ok(ImageSource::Path(path))
        }
        (Some(_), Some(_)) => Err(reject(
            id,
            ErrorCode::BadRequest,
            "give either \"image\" or \"path\", not both",
        )),
        (None, None) => Err(reject(
            id,
            ErrorCode::BadRequest,
            "missing \"image\" (base64) or \"path\"",
        )),
    }
}

fn property<'a>(env: &'a Envelope<'_>, key: &str) -> Option<&'a str> {
    env.user_properties
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A JSON request's search options (recognise requests and triggers).
fn json_query(
    k: Option<serde_json::Value>,
    threshold: Option<serde_json::Value>,
    id: &str,
) -> Result<Query, Rejection> {
    Ok(Query {
        return_k: k.map(|v| return_k(&v.to_string(), id)).transpose()?,
        score_threshold: threshold
            .map(|v| score_threshold(&v.to_string(), id))
            .transpose()?,
    })
}

fn return_k(text: &str, id: &str) -> Result<usize, Rejection> {
    match text.trim().parse::<usize>() {
        Ok(k) if (1..=MAX_RETURN_K).contains(&k) => Ok(k),
        _ => Err(reject(
            id,
            ErrorCode::BadRequest,
            format!("return_k must be an integer from 1 to {MAX_RETURN_K}, got {text}"),
        )),
    }
}

fn score_threshold(text: &str, id: &str) -> Result<f32, Rejection> {
    match text.trim().parse::<f32>() {
        Ok(t) if (0.0..=1.0).contains(&t) => Ok(t),
        _ => Err(reject(
            id,
            ErrorCode::BadRequest,
            format!("score_threshold must be a number from 0 to 1, got {text}"),
        )),
    }
}

/// Resolves a `path` request against the allowed folders. Symbolic links and
/// `..` are resolved first, so a link inside an allowed folder cannot point out of it.
pub fn resolve_path(path: &Path, allowed: &[PathBuf]) -> Result<PathBuf, (ErrorCode, String)> {
    if allowed.is_empty() {
        return Err((
            ErrorCode::BadRequest,
            "path requests are disabled (daemon.allowed_dirs is empty)".into(),
        ));
    }
    let real = path.canonicalize().map_err(|e| {
        (
            ErrorCode::BadRequest,
            format!("cannot open {}: {e}", path.display()),
        )
    })?;
    let inside = allowed
        .iter()
        .filter_map(|d| d.canonicalize().ok())
        .any(|d| real.starts_with(d));
    if inside {
        Ok(real)
    } else {
        Err((
            ErrorCode::BadRequest,
            format!(
                "{} is outside the allowed folders (daemon.allowed_dirs)",
                path.display()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn env() -> Envelope<'static> {
        Envelope::default()
    }

    #[test]
    fn json_with_base64_image_and_options() {
        let r = parse_recognize(
            br#"{"request_id":"a1","image":"/9j/AA==","return_k":3,"score_threshold":0.4}"#,
            &env(),
            MAX,
        )
        .unwrap();
        assert_eq!(r.request_id, "a1");
        assert_eq!(r.image, ImageSource::Bytes(vec![0xff, 0xd8, 0xff, 0x00]));
        assert_eq!(
            r.query,
            Query {
                return_k: Some(3),
                score_threshold: Some(0.4)
            }
        );
        assert!(r.ignored.is_empty());
    }

    #[test]
    fn numeric_ids_and_unknown_fields() {
        let r = parse_recognize(
            br#"{"request_id":17,"path":"/srv/a.jpg","colour":"red"}"#,
            &env(),
            MAX,
        )
        .unwrap();
        assert_eq!(r.request_id, "17");
        assert_eq!(r.image, ImageSource::Path("/srv/a.jpg".into()));
        assert_eq!(r.ignored, vec!["colour".to_string()]);
    }

    #[test]
    fn raw_payload_takes_options_from_user_properties() {
        let props = vec![
            ("request_id".to_string(), "r9".to_string()),
            ("return_k".to_string(), "2".to_string()),
        ];
        let e = Envelope {
            user_properties: &props,
            correlation_data: None,
        };
        let r = parse_recognize(&[0xff, 0xd8, 0xff, 0xe0], &e, MAX).unwrap();
        assert_eq!(r.request_id, "r9");
        assert_eq!(r.query.return_k, Some(2));
    }

    #[test]
    fn each_bad_request_gets_its_code() {
        let code = |p: &[u8]| parse_recognize(p, &env(), MAX).unwrap_err().code;
        assert_eq!(code(b"{\"image\": "), ErrorCode::BadRequest);
        assert_eq!(code(br#"{"image":"***"}"#), ErrorCode::BadRequest);
        assert_eq!(code(br#"{"path":"relative.jpg"}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(br#"{"image":"AA==","path":"/a"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(br#"{"image":"AA==","return_k":0}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(br#"{"image":"AA==","score_threshold":"high"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(code(b""), ErrorCode::BadRequest);
        let big = vec![b' '; 101];
        assert_eq!(
            parse_recognize(&big, &env(), 100).unwrap_err().code,
            ErrorCode::TooLarge
        );
    }

    #[test]
    fn an_unknown_item_is_enrolled_by_its_id() {
        let (c, _) = parse_gallery_sent(
            br#"{"request_id":"e1","unknown_id":"01JD3Q8ZK5V3N4W7Y2C9M6T0AB","label":"soap"}"#,
            &env(),
            MAX,
            true,
        )
        .unwrap();
        assert_eq!(
            c,
            GalleryCommand::Add {
                request_id: "e1".into(),
                label: "soap".into(),
                image: ImageSource::Unknown("01JD3Q8ZK5V3N4W7Y2C9M6T0AB".into()),
                source: "unknown:01JD3Q8ZK5V3N4W7Y2C9M6T0AB".into(),
            }
        );
        let e = parse_gallery(
            br#"{"request_id":"e2","unknown_id":"x","image":"AA==","label":"soap"}"#,
            &env(),
            MAX,
            true,
        )
        .unwrap_err();
        assert!(e.message.contains("one of"), "{}", e.message);
    }

    #[test]
    fn triggers_are_parsed_and_their_bad_fields_named() {
        let t = parse_trigger(
            br#"{"request_id":"t1","source":"cam1","t_ms":1700000000123,"item":4711,"return_k":3}"#,
            &env(),
            MAX,
        )
        .unwrap();
        assert_eq!(
            (t.request_id.as_str(), t.source.as_str(), t.t_ms),
            ("t1", "cam1", Some(1_700_000_000_123))
        );
        assert_eq!(t.query.return_k, Some(3));
        assert_eq!(t.extra.get("item"), Some(&serde_json::json!(4711)));
        let t = parse_trigger(br#"{"request_id":7,"source":"c"}"#, &env(), MAX).unwrap();
        assert_eq!((t.request_id.as_str(), t.t_ms), ("7", None));
        for (payload, says) in [
            (&br#"{"source":"cam1"}"#[..], "needs a request_id"),
            (br#"{"request_id":"a"}"#, "needs \"source\""),
            (br#"{"request_id":"a","source":""}"#, "needs \"source\""),
            (
                br#"{"request_id":"a","source":"c","t_ms":-5}"#,
                "t_ms must be",
            ),
            (
                br#"{"request_id":"a","source":"c","t_ms":"now"}"#,
                "t_ms must be",
            ),
            (
                br#"{"request_id":"a","source":"c","t_ms":1.5}"#,
                "t_ms must be",
            ),
            (
                br#"{"request_id":"a","source":"c","results":[]}"#,
                "\"results\"",
            ),
            (
                br#"{"request_id":"a","source":"c","return_k":0}"#,
                "return_k",
            ),
            (br#"{"request_id":"a","source":7}"#, "invalid request"),
            (b"\xff\xd8jpeg", "JSON object"),
        ] {
            let e = parse_trigger(payload, &env(), MAX).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest);
            assert!(
                e.message.contains(says),
                "{}: {}",
                String::from_utf8_lossy(payload),
                e.message
            );
        }
        let e = parse_trigger(&[b' '; 64], &env(), 10).unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge);
    }

    #[test]
    fn rejections_keep_the_request_id() {
        // A field of the wrong type: the JSON is well formed, so the id is read.
        let e = parse_recognize(br#"{"request_id":"x8","image":7}"#, &env(), MAX).unwrap_err();
        assert_eq!(
            (e.request_id.as_str(), e.code),
            ("x8", ErrorCode::BadRequest)
        );
        assert!(e.message.starts_with("invalid request"), "{}", e.message);
        let e =
            parse_gallery(br#"{"request_id":"g8","ids":"all"}"#, &env(), MAX, false).unwrap_err();
        assert_eq!(e.request_id, "g8");
        // Broken JSON, or an unusable id: the derived id.
        let e = parse_recognize(br#"{"request_id":"x9","image":"#, &env(), MAX).unwrap_err();
        assert!(
            e.request_id.starts_with("sha256:") && e.message.starts_with("malformed JSON"),
            "{e:?}"
        );
        let e = parse_recognize(br#"{"request_id":"","image":7}"#, &env(), MAX).unwrap_err();
        assert!(e.request_id.starts_with("sha256:"), "{e:?}");
        let e = parse_recognize(br#"{"request_id":"x7","image":"%%"}"#, &env(), MAX).unwrap_err();
        assert_eq!(e.request_id, "x7");
        assert!(e.message.contains("base64"), "{}", e.message);
    }

    #[test]
    fn ota_commands() {
        let env = Envelope::default();
        let (id, c) = parse_ota(
            br#"{"request_id":"u1","url":"http://fleet/b.tar"}"#,
            &env,
            true,
        )
        .unwrap();
        assert_eq!(
            (id.as_str(), c),
            (
                "u1",
                OtaCommand::Apply(crate::ota::fetch::Source::Url("http://fleet/b.tar".into()))
            )
        );
        let (_, c) = parse_ota(br#"{"path":"/srv/b.tar"}"#, &env, true).unwrap();
        assert_eq!(
            c,
            OtaCommand::Apply(crate::ota::fetch::Source::Path("/srv/b.tar".into()))
        );
        assert_eq!(parse_ota(b"", &env, false).unwrap().1, OtaCommand::Rollback);
        for (bad, why) in [
            (&br#"{"url":"ftp://x"}"#[..], "http"),
            (br#"{"path":"b.tar"}"#, "absolute"),
            (br#"{}"#, "needs"),
            (br#"{"url":"http://a","path":"/b"}"#, "either"),
            (br#"{"uri":"http://a"}"#, "unknown field"),
        ] {
            let e = parse_ota(bad, &env, true).unwrap_err();
            assert!(e.message.contains(why), "{e:?}");
            assert_eq!(e.code, ErrorCode::BadRequest);
        }
        assert!(
            parse_ota(br#"{"url":"http://a"}"#, &env, false).is_err(),
            "rollback takes no source"
        );
    }

    #[test]
    fn derived_ids_are_stable_and_depend_on_correlation() {
        let a = parse_recognize(br#"{"image":"AA=="}"#, &env(), MAX)
            .unwrap()
            .request_id;
        let b = parse_recognize(br#"{"image":"AA=="}"#, &env(), MAX)
            .unwrap()
            .request_id;
        assert_eq!(a, b);
        let e = Envelope {
            user_properties: &[],
            correlation_data: Some(b"c1"),
        };
        assert_ne!(
            a,
            parse_recognize(br#"{"image":"AA=="}"#, &e, MAX)
                .unwrap()
                .request_id
        );
    }

    #[test]
    fn gallery_commands() {
        let add = parse_gallery(
            br#"{"request_id":"g1","label":"tea","image":"AA=="}"#,
            &env(),
            MAX,
            true,
        )
        .unwrap();
        assert!(matches!(add, GalleryCommand::Add { ref label, .. } if label == "tea"));
        let rm = parse_gallery(br#"{"ids":[3,4]}"#, &env(), MAX, false).unwrap();
        assert!(matches!(rm, GalleryCommand::Remove { ref ids, .. } if ids == &[3, 4]));
        assert!(parse_gallery(br#"{"image":"AA=="}"#, &env(), MAX, true).is_err());
        assert!(parse_gallery(br#"{"label":"a","ids":[1]}"#, &env(), MAX, false).is_err());
        assert!(parse_gallery(br#"{}"#, &env(), MAX, false).is_err());
        // Labels are names: no control characters, no path separators.
        for (label, says) in [
            ("../etc", "'/'"),
            ("a\\b", "'\\\\'"),
            ("tea\nforged log line", "control"),
            ("bell\u{7}", "control"),
        ] {
            let body = serde_json::json!({"request_id": "l", "label": label, "image": "AA=="});
            let e =
                parse_gallery(&serde_json::to_vec(&body).unwrap(), &env(), MAX, true).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest);
            assert!(e.message.contains(says), "{label:?}: {}", e.message);
        }
        let long = "x".repeat(MAX_LABEL_CHARS + 1);
        let body = serde_json::json!({"label": long, "image": "AA=="});
        assert!(parse_gallery(&serde_json::to_vec(&body).unwrap(), &env(), MAX, true).is_err());
        let body = serde_json::json!({"label": "Green tea 500 ml (ä)", "image": "AA=="});
        assert!(parse_gallery(&serde_json::to_vec(&body).unwrap(), &env(), MAX, true).is_ok());
    }

    #[test]
    fn paths_outside_allowed_dirs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("a.jpg");
        std::fs::write(&inside, b"x").unwrap();
        let allowed = vec![dir.path().to_path_buf()];
        assert!(resolve_path(&inside, &allowed).is_ok());
        assert!(resolve_path(&dir.path().join("../etc/passwd"), &allowed).is_err());
        assert!(resolve_path(Path::new("/etc/hostname"), &allowed).is_err());
        assert!(resolve_path(&inside, &[]).is_err());
        #[cfg(unix)]
        {
            let link = dir.path().join("link.jpg");
            std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
            assert!(resolve_path(&link, &allowed).is_err());
        }
    }

    /// The fuzz target's property on stable: mutated valid requests never
    /// panic the parser, and every rejection explains itself. (`cargo +nightly
    /// fuzz run request` explores further; see fuzz/.)
    #[test]
    fn mutated_requests_never_panic() {
        let seeds: [&[u8]; 5] = [
            br#"{"request_id":"a1","image":"/9j/AA==","return_k":3,"score_threshold":0.4}"#,
            br#"{"request_id":17,"path":"/srv/a.jpg","x":[1,{"y":null}]}"#,
            br#"{"label":"tea","image":"AA==","ids":[1,2]}"#,
            b"\xff\xd8\xff\xe0\x00\x10JFIF",
            b"  {}",
        ];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let props = vec![("return_k".to_string(), "x".to_string())];
        for i in 0..20_000 {
            let mut p = seeds[i % seeds.len()].to_vec();
            for _ in 0..(next() % 6) {
                let r = next() as usize;
                match r % 4 {
                    0 if !p.is_empty() => {
                        let at = r / 4 % p.len();
                        p[at] = (next() & 0xff) as u8;
                    }
                    1 if !p.is_empty() => {
                        p.truncate(r / 4 % p.len());
                    }
                    2 => {
                        let at = if p.is_empty() { 0 } else { r / 4 % p.len() };
                        let alphabet = b"{}[]\",:0-e\\";
                        p.insert(at, alphabet[r / 8 % alphabet.len()]);
                    }
                    _ => p.extend_from_slice(&p.clone()),
                }
            }
            let env = Envelope {
                user_properties: if i % 3 == 0 { &props } else { &[] },
                correlation_data: None,
            };
            for result in [
                parse_recognize(&p, &env, 4096).map(|_| ()),
                parse_gallery(&p, &env, 4096, i % 2 == 0).map(|_| ()),
            ] {
                if let Err(r) = result {
                    assert!(!r.message.is_empty() && !r.request_id.is_empty(), "{p:?}");
                }
            }
        }
    }
}

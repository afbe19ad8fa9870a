//! The JSON API under `/api/`: everything the page does. Gallery changes
//! take the MQTT commands' bodies, through the same parser and the same
//! plan (`forward::GalleryPlan`), into the same queue, and answer with the
//! same JSON and error codes; HTTP adds only a status code.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use super::super::answer::{self, error_payload, ErrorCode, GalleryAnswer};
use super::super::feed::{FeedAnswer, FeedEvent};
use super::super::forward::GalleryPlan;
use super::super::request::{self, Envelope};
use super::super::worker::{Job, Outcome, Reply, Work};
use super::App;

/// How long an API call waits for the pipeline thread (a gallery change
/// queues behind the batch in flight).
const WAIT: Duration = Duration::from_secs(60);

pub(super) fn routes() -> Router<App> {
    Router::new()
        .route("/api/status", get(status))
        .route("/api/answers", get(answers))
        .route("/api/events", get(events))
        .route("/api/sources", get(sources))
        .route("/api/sources/{name}/frame.jpg", get(frame))
        .route("/api/unknown", get(unknown_list))
        .route("/api/unknown/{id}/crop.png", get(unknown_crop))
        .route("/api/unknown/{id}/enrol", post(unknown_enrol))
        .route("/api/unknown/{id}/drop", post(unknown_drop))
        .route("/api/gallery", get(gallery_list))
        .route("/api/gallery/{id}/thumb.jpg", get(gallery_thumb))
        .route("/api/gallery/add", post(gallery_add))
        .route("/api/gallery/remove", post(gallery_remove))
}

/// A failure of the server itself (a worker task that died, a file it
/// could not read), as a 500 `internal` error.
fn internal(e: impl std::fmt::Display) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        &e.to_string(),
    )
}

/// An error in the shape of an MQTT error answer.
pub(super) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"ok": false, "error": {"code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}

fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::DecodeFailed => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Busy => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::UnknownSource => StatusCode::NOT_FOUND,
        ErrorCode::SourceUnavailable | ErrorCode::NoFrame => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Refused => StatusCode::CONFLICT,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error answer for request `id`, as MQTT would send it.
fn refused(id: &str, code: ErrorCode, message: &str) -> Response {
    tracing::warn!(request_id = %id, code = code.as_str(), "HTTP request refused: {message}");
    json_bytes(status_of(code), error_payload(id, code, message))
}

fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn status(State(app): State<App>) -> Response {
    let s = &app.shared;
    let payload = super::super::status::online(
        s.started,
        &s.versions(),
        &s.counters,
        s.queued.load(std::sync::atomic::Ordering::Relaxed),
        &s.cameras.health(),
    );
    // The page also names the box's broker and, on a line, the line.
    let mut v: serde_json::Value = serde_json::from_slice(&payload).unwrap_or_default();
    v["broker"] = serde_json::json!({
        "address": format!("{}:{}", s.settings.mqtt.host, s.settings.mqtt.port),
        "connected": s.outbox.is_connected(),
    });
    v["topic_prefix"] = s.topics.base.clone().into();
    json_bytes(StatusCode::OK, answer::to_vec(&v))
}

#[derive(Deserialize)]
struct AnswersQuery {
    n: Option<usize>,
}

async fn answers(State(app): State<App>, q: Query<AnswersQuery>) -> Response {
    let n = q.n.unwrap_or(usize::MAX);
    let recent = app.shared.feed.recent(n);
    let recent: Vec<&FeedAnswer> = recent.iter().map(|a| &**a).collect();
    json_bytes(StatusCode::OK, answer::to_vec(&recent))
}

/// Server-sent events: `answer` (an answer, as `/api/answers` lists them),
/// `unknown` (a `P/unknown` announcement) and `changed` (the gallery or the
/// unknown items changed; a page that fell behind gets `changed` too).
async fn events(
    State(app): State<App>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let rx = app.shared.feed.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(FeedEvent::Answer(a)) => Event::default()
                .event("answer")
                .data(String::from_utf8_lossy(&answer::to_vec(&*a))),
            Ok(FeedEvent::Unknown(u)) => Event::default().event("unknown").data(u.to_string()),
            Ok(FeedEvent::Changed(what)) => Event::default().event("changed").data(what),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                Event::default().event("changed").data("all")
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn sources(State(app): State<App>) -> Response {
    let s = &app.shared;
    let out: serde_json::Map<String, serde_json::Value> = s
        .cameras
        .health()
        .into_iter()
        .map(|(name, health)| {
            let last = s.feed.answered(&name).map(|a| a.answer);
            let v = serde_json::json!({"health": health, "last_answer": last.as_deref()});
            (name, v)
        })
        .collect();
    json_bytes(StatusCode::OK, answer::to_vec(&out))
}

#[derive(Deserialize)]
struct FrameQuery {
    /// `answered` (default): the frame of the source's last answer;
    /// `latest`: the newest frame in its ring.
    which: Option<String>,
}

async fn frame(State(app): State<App>, Path(name): Path<String>, q: Query<FrameQuery>) -> Response {
    let s = &app.shared;
    let Some(source) = s.cameras.get(&name).cloned() else {
        let names: Vec<&str> = s.cameras.iter().map(|c| c.name()).collect();
        return error(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownSource.as_str(),
            &format!(
                "no source named {name:?}; this box has [{}]",
                names.join(", ")
            ),
        );
    };
    let answered = match q.which.as_deref() {
        None | Some("answered") => true,
        Some("latest") => false,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("which={other:?}: say answered or latest"),
            )
        }
    };
    // The answer's seq tells the page which answer's boxes belong on it.
    let last = answered.then(|| s.feed.answered(&name)).flatten();
    let seq = last.as_ref().map_or(0, |a| a.answer.seq);
    let frame = match last {
        Some(a) => Some(a.frame),
        None => source.latest().map(|c| c.frame),
    };
    let Some(frame) = frame else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::NoFrame.as_str(),
            &format!(
                "source {name:?} has no frame yet ({})",
                source.state().as_str()
            ),
        );
    };
    match tokio::task::spawn_blocking(move || jpeg(&frame)).await {
        Ok(Ok(bytes)) => (
            [
                (header::CONTENT_TYPE, "image/jpeg".to_string()),
                (header::CACHE_CONTROL, "no-store".to_string()),
                (
                    header::HeaderName::from_static("x-answer-seq"),
                    seq.to_string(),
                ),
            ],
            bytes,
        )
            .into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

/// A frame (RGB) as JPEG.
fn jpeg(frame: &crate::input::Frame) -> Result<Vec<u8>, String> {
    use opencv::core::{Vector, VectorToVec};
    let mut bgr = opencv::core::Mat::default();
    opencv::imgproc::cvt_color_def(frame.rgb(), &mut bgr, opencv::imgproc::COLOR_RGB2BGR)
        .map_err(|e| e.to_string())?;
    let mut out = Vector::<u8>::new();
    let params = Vector::from_slice(&[opencv::imgcodecs::IMWRITE_JPEG_QUALITY, 85]);
    opencv::imgcodecs::imencode(".jpg", &bgr, &mut out, &params).map_err(|e| e.to_string())?;
    Ok(out.to_vec())
}

fn no_store_here() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "this box keeps no unknown items (capture.unknown_dir is empty)",
    )
}

async fn unknown_list(State(app): State<App>) -> Response {
    let Some(store) = app.shared.unknown.clone() else {
        return json_bytes(StatusCode::OK, b"[]".to_vec());
    };
    match tokio::task::spawn_blocking(move || store.list()).await {
        Ok(Ok(mut items)) => {
            items.reverse(); // newest first
            json_bytes(StatusCode::OK, answer::to_vec(&items))
        }
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

async fn unknown_crop(State(app): State<App>, Path(id): Path<String>) -> Response {
    let Some(store) = app.shared.unknown.clone() else {
        return no_store_here();
    };
    // The id is checked to be a ULID before it becomes a path.
    let read = tokio::task::spawn_blocking(move || {
        store
            .photo(&id)
            .map_err(|e| e.to_string())
            .and_then(|p| std::fs::read(p).map_err(|e| e.to_string()))
    })
    .await;
    match read {
        Ok(Ok(png)) => ([(header::CONTENT_TYPE, "image/png")], png).into_response(),
        Ok(Err(e)) => error(StatusCode::NOT_FOUND, "not_found", &e),
        Err(e) => internal(e),
    }
}

async fn unknown_drop(State(app): State<App>, Path(id): Path<String>) -> Response {
    let Some(store) = app.shared.unknown.clone() else {
        return no_store_here();
    };
    let shared = app.shared.clone();
    let dropped = tokio::task::spawn_blocking(move || store.remove(&id).map(|_| id)).await;
    match dropped {
        Ok(Ok(id)) => {
            tracing::info!(unknown_id = %id, "unknown item dropped from the page");
            shared.feed.notify(FeedEvent::Changed("unknown"));
            json_bytes(
                StatusCode::OK,
                answer::to_vec(&serde_json::json!({"ok": true, "dropped": id})),
            )
        }
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
        Err(e) => internal(e),
    }
}

/// `POST /api/unknown/{id}/enrol {"label"}`: a gallery add with `unknown_id`.
async fn unknown_enrol(
    State(app): State<App>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return body_error(e),
    };
    let label = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(mut o)) => o.remove("label"),
        Ok(_) => None,
        Err(e) => {
            return refused(
                "http",
                ErrorCode::BadRequest,
                &format!("the body is not JSON ({e}): send {{\"label\": \"…\"}}"),
            )
        }
    };
    let command = serde_json::json!({"unknown_id": id, "label": label, "request_id": format!("http-enrol-{id}")});
    gallery(app, answer::to_vec(&command).into(), true).await
}

#[derive(Deserialize)]
struct GalleryQuery {
    label: Option<String>,
    limit: Option<usize>,
}

async fn gallery_list(State(app): State<App>, q: Query<GalleryQuery>) -> Response {
    let work = Work::ListGallery {
        label: q.label.clone().unwrap_or_default(),
        limit: q.limit.unwrap_or(200).min(10_000),
    };
    match run(&app, "http-gallery-list".into(), work).await {
        Outcome::GalleryItems { items, matched } => json_bytes(
            StatusCode::OK,
            answer::to_vec(&serde_json::json!({"matched": matched, "items": items})),
        ),
        Outcome::Failed { code, message } => refused("http-gallery-list", code, &message),
        _ => internal("unexpected outcome"),
    }
}

async fn gallery_thumb(State(app): State<App>, Path(id): Path<i64>) -> Response {
    let dir = app.shared.versions().gallery_dir;
    let read = tokio::task::spawn_blocking(move || {
        crate::search::thumbs::Thumbs::new(&dir)
            .get(id)
            .and_then(|p| std::fs::read(p).ok())
    })
    .await;
    match read {
        Ok(Some(jpeg)) => ([(header::CONTENT_TYPE, "image/jpeg")], jpeg).into_response(),
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("gallery item {id} has no thumbnail (enrolled before thumbnails, or on another box of the line)"),
        ),
    }
}

async fn gallery_add(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    match body {
        Ok(b) => gallery(app, b, true).await,
        Err(e) => body_error(e),
    }
}

async fn gallery_remove(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    match body {
        Ok(b) => gallery(app, b, false).await,
        Err(e) => body_error(e),
    }
}

/// The answer to a body that could not be read: `too_large` over the limit.
fn body_error(e: BytesRejection) -> Response {
    let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ErrorCode::TooLarge
    } else {
        ErrorCode::BadRequest
    };
    refused(
        "http",
        code,
        &format!("{} (the limit is daemon.max_payload_bytes)", e.body_text()),
    )
}

/// A gallery command from the page: parsed as MQTT's, planned as a box's
/// own (a line box makes it a line change), answered as MQTT's.
async fn gallery(app: App, body: Bytes, add: bool) -> Response {
    let s = &app.shared;
    let env = Envelope {
        user_properties: &[],
        correlation_data: None,
    };
    let (command, _) =
        match request::parse_gallery_sent(&body, &env, s.settings.daemon.max_payload_bytes, add) {
            Ok(c) => c,
            Err(rej) => return refused(&rej.request_id, rej.code, &rej.message),
        };
    let id = command.request_id().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let reply = Reply::new(move |o| {
        let _ = tx.send(o);
    });
    match s.plan_gallery(command, true) {
        GalleryPlan::Refuse(code, message) => return refused(&id, code, &message),
        GalleryPlan::Submit(work) => s.enqueue(Job {
            request_id: id.clone(),
            arrived: std::time::Instant::now(),
            work,
            reply,
        }),
        GalleryPlan::ForLine(command) => {
            // It may read an unknown item's crop: off the async workers.
            let shared = s.clone();
            tokio::task::spawn_blocking(move || shared.forward_to_line(command, reply));
        }
    }
    match tokio::time::timeout(WAIT, rx).await {
        Ok(Ok(Outcome::GalleryChanged {
            added,
            removed,
            change_id,
            already_applied,
            versions,
        })) => {
            s.feed.notify(FeedEvent::Changed("gallery"));
            tracing::info!(request_id = %id, ?added, ?removed, "gallery changed from the page");
            json_bytes(
                StatusCode::OK,
                GalleryAnswer::payload(&id, added, removed, change_id, already_applied, &versions),
            )
        }
        Ok(Ok(Outcome::Failed { code, message })) => refused(&id, code, &message),
        Ok(Ok(_)) => internal("unexpected outcome"),
        Ok(Err(_)) => refused(&id, ErrorCode::Busy, "the daemon is stopping"),
        Err(_) => refused(&id, ErrorCode::Busy, "no answer from the pipeline within 60 s; the change may still be applied: list the gallery before retrying"),
    }
}

/// Runs one job on the pipeline thread and waits for its outcome.
async fn run(app: &App, id: String, work: Work) -> Outcome {
    let (tx, rx) = tokio::sync::oneshot::channel();
    app.shared.enqueue(Job {
        request_id: id.clone(),
        arrived: std::time::Instant::now(),
        work,
        reply: Reply::new(move |o| {
            let _ = tx.send(o);
        }),
    });
    match tokio::time::timeout(WAIT, rx).await {
        Ok(Ok(o)) => o,
        Ok(Err(_)) => Outcome::failed(ErrorCode::Busy, "the daemon is stopping"),
        Err(_) => Outcome::failed(ErrorCode::Busy, "no answer from the pipeline within 60 s"),
    }
}

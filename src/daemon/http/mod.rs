//! The daemon's one HTTP server (`http.listen`, default 127.0.0.1:8080):
//! the operator's page at `/`, its JSON API under `/api/`, `/metrics`
//! (Prometheus) and `/healthz` (`docs/HTTP.md`).
//!
//! axum, on the tokio runtime the daemon already runs: the page needs
//! routing, bodies with limits, cookies, a login form and an event stream,
//! which a hand-written server should not grow into; axum is hyper's own
//! project's router, and brings no runtime of its own. The API is one more
//! submitter to the same queue as MQTT: the same parsers, the same jobs,
//! the same answers and errors.

mod api;
mod auth;
pub mod metrics;
mod page;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;

use super::Shared;
use crate::config::HttpSettings;
pub use auth::Token;

/// What every handler gets.
#[derive(Clone)]
struct App {
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    token: Option<Token>,
    /// Served over TLS: the login cookie is `Secure`.
    secure: bool,
}

/// The server, while it runs.
pub struct Server {
    /// Where it listens (the port is chosen by the system for port 0).
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Stops accepting; requests in flight end with the runtime.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Starts the server, unless `http.listen` is empty. Refuses to start on
/// an address other than loopback without a token (config check says so
/// first), and without a readable token when one is configured.
pub async fn start(settings: &HttpSettings, shared: Arc<Shared>) -> anyhow::Result<Option<Server>> {
    let Some(addr) = settings.address().map_err(anyhow::Error::msg)? else {
        tracing::info!("HTTP server off (http.listen is empty)");
        return Ok(None);
    };
    let token = if settings.token_file.as_os_str().is_empty() {
        if !addr.ip().is_loopback() {
            anyhow::bail!("http.listen {addr} is not loopback, and http.token_file is not set: refusing to serve the page to the network without a token");
        }
        None
    } else {
        Some(Token::read(&settings.token_file).map_err(anyhow::Error::msg)?)
    };
    // Read before listening: a bad certificate stops the start, not the first visit.
    let tls = if settings.tls() {
        Some(tls::acceptor(&settings.tls_cert, &settings.tls_key)?)
    } else {
        None
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            // The line's answers come first: the box serves MQTT without its page.
            tracing::error!("http.listen: cannot listen on {addr}: {e}; serving without the HTTP server (page, /metrics, /healthz)");
            return Ok(None);
        }
    };
    let addr = listener.local_addr()?;
    let app = App {
        registry: Arc::new(metrics::registry(shared.clone())),
        shared,
        token,
        secure: tls.is_some(),
    };
    let router = router(app);
    let scheme = if tls.is_some() { "https" } else { "http" };
    if tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the page is served off loopback without TLS: its token crosses the network in clear; set http.tls_cert and http.tls_key");
    }
    tracing::info!(
        page = %format!("{scheme}://{addr}/"),
        token = if settings.token_file.as_os_str().is_empty() { "none (loopback)" } else { "required" },
        "HTTP server: the page, /api, /metrics and /healthz"
    );
    let task = match tls {
        Some(acceptor) => tokio::spawn(tls::serve(listener, acceptor, router)),
        None => tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!("HTTP server stopped: {e}");
            }
        }),
    };
    Ok(Some(Server { addr, task }))
}

fn router(app: App) -> Router {
    let max = app.shared.settings.daemon.max_payload_bytes;
    Router::new()
        .route("/", get(page::index))
        .route("/app.js", get(page::script))
        .route("/style.css", get(page::style))
        .route("/login", get(page::login_form).post(page::login))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .merge(api::routes())
        .fallback(not_found)
        // Bodies over the MQTT payload limit are refused before they are
        // read whole; handlers answer that as `too_large`.
        .layer(axum::extract::DefaultBodyLimit::max(max))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

/// Runs before every handler: the same-site check for changes, then the
/// token; adds headers that keep the page from being framed or sniffed.
async fn guard(State(app): State<App>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let mut response = if app.token.is_none() && !auth::loopback_host(req.headers()) {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let why = format!(
            "this box's page answers only localhost or 127.0.0.1 without a token, not {host:?}: set http.token_file to serve it under other names"
        );
        tracing::warn!(path, "HTTP request refused: {why}");
        api::error(StatusCode::FORBIDDEN, "forbidden", &why)
    } else if let Some(why) = auth::cross_site(req.method(), req.headers()) {
        tracing::warn!(path, "HTTP request refused: {why}");
        api::error(StatusCode::FORBIDDEN, "forbidden", &why)
    } else if app
        .token
        .as_ref()
        .is_some_and(|t| !open_path(&path) && !t.allows(req.headers()))
    {
        if req.method() == Method::GET && !path.starts_with("/api/") && path != "/metrics" {
            Redirect::to("/login").into_response()
        } else {
            let mut r = api::error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this box's page needs its token: Authorization: Bearer <token>, or log in at /login",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"shitud\""),
            );
            r
        }
    } else {
        json_errors(next.run(req).await).await
    };
    let h = response.headers_mut();
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        // Not no-referrer: under it a browser sends `Origin: null` with the
        // page's own form posts, which the same-site check must refuse.
        ("referrer-policy", "same-origin"),
        (
            "content-security-policy",
            "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'; form-action 'self'",
        ),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// axum's own refusals (a query or path that does not parse, a form that
/// is not one) are plain text; the API's errors are JSON, in the shape of
/// MQTT's. 4xx replies in plain text are rewritten so.
async fn json_errors(response: Response) -> Response {
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/plain"));
    if !(response.status().is_client_error() && plain) {
        return response;
    }
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 64 << 10)
        .await
        .unwrap_or_default();
    api::error(status, "bad_request", String::from_utf8_lossy(&body).trim())
}

/// Paths served without the token: the health check and the login form
/// (with its style sheet).
fn open_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/login" | "/style.css")
}

async fn healthz(State(app): State<App>) -> Response {
    match unhealthy(&app.shared) {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

/// Why the daemon is not healthy, if it is not.
fn unhealthy(shared: &Shared) -> Option<String> {
    if let Err(why) = shared.health.check() {
        return Some(format!("pipeline: {why}"));
    }
    if !shared.outbox.is_connected() {
        return Some(format!(
            "broker {}:{} not connected",
            shared.settings.mqtt.host, shared.settings.mqtt.port
        ));
    }
    None
}

async fn metrics_text(State(app): State<App>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics::render(&app.registry),
    )
        .into_response()
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    api::error(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!(
            "no {method} {}: the page is at /, the API under /api/ (docs/HTTP.md)",
            uri.path()
        ),
    )
}

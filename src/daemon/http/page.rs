//! The page's files, embedded in the binary (no CDN, no build step), and
//! the login form that turns the token into a cookie.

use axum::extract::{Form, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::auth::COOKIE;
use super::App;

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/style.css");
const LOGIN: &str = include_str!("page/login.html");

pub(super) async fn index() -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(INDEX)).into_response()
}

pub(super) async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

pub(super) async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

pub(super) async fn login_form(State(app): State<App>) -> Response {
    if app.token.is_none() {
        // Nothing to log in to (loopback, no token).
        return Redirect::to("/").into_response();
    }
    Html(LOGIN.replace("{error}", "")).into_response()
}

#[derive(Deserialize)]
pub(super) struct Login {
    token: String,
}

pub(super) async fn login(
    State(app): State<App>,
    form: Result<Form<Login>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Some(token) = &app.token else {
        return Redirect::to("/").into_response();
    };
    match form {
        Ok(Form(l)) if token.matches(&l.token) => {
            tracing::info!("HTTP: logged in with the token");
            // HttpOnly: no script reads it; Strict: no other site sends it.
            let cookie = format!(
                "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000{}",
                l.token.trim(),
                if app.secure { "; Secure" } else { "" }
            );
            ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
        }
        _ => {
            tracing::warn!("HTTP: a login with a wrong token");
            (
                StatusCode::UNAUTHORIZED,
                Html(LOGIN.replace("{error}", "That is not this box's token.")),
            )
                .into_response()
        }
    }
}

//! The dashboard: server-rendered HTML (askama), SVG charts made on the
//! server, no JavaScript; a JSON API beside the pages, described by the
//! OpenAPI document at `/api/openapi.json`; `/healthz` and `/metrics`.
//!
//! One module a page: `status` (overview, health, metrics), `trial`,
//! `hypotheses` (ask, and the audit log), `proposals`, `sources`, `link`
//! (where email links land); `access` works
//! out who is looking (see there for logins, sessions and roles).

mod access;
mod calibration;
pub mod charts;
mod guard;
mod hypotheses;
mod link;
mod oauth;
mod openapi;
mod progress;
mod proposals;
mod push;
pub mod server;
mod sources;
mod status;
mod trial;
mod upload;

use askama::Template;
use axum::Router;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::service::app::AppState;
use crate::trial::protocol::Protocol;

pub use access::{Role, Viewer};
pub use push::PUSH_PATH;
pub use status::{StatusView, status};

/// Builds the router; the daemon serves it with client addresses
/// (`into_make_service_with_connect_info`) so that failed logins are
/// limited per address.
pub fn router(state: AppState) -> Router {
    let guard = guard::Guard::new(&state.config, &state.public_url);
    let access = access::Access::new(state.clone());
    let login = Router::new()
        .route("/login", get(access::login_form).post(access::login_submit))
        .route("/logout", post(access::logout))
        .with_state(access.clone());
    Router::new()
        .route("/", get(status::status_page))
        .route("/api/status", get(status::status_json))
        .route("/api/openapi.json", get(openapi::document))
        .route("/style.css", get(stylesheet))
        .route("/healthz", get(status::healthz))
        .route("/metrics", get(status::metrics))
        .route("/l/{token}", get(link::link_page).post(link::link_submit))
        .route("/trials/{id}", get(trial::trial_page))
        .route(
            "/trials/{id}/report",
            get(trial::report_form).post(trial::report_submit),
        )
        .route("/trials/{id}/{action}", post(trial::trial_action))
        .route("/trials/{id}/confirm/{action}", get(trial::confirm_action))
        .route("/trials/{id}/export/{file}", get(trial::trial_export))
        .route("/api/trials/{id}", get(trial::trial_json))
        .route("/proposals", get(proposals::proposals_page))
        .route("/api/proposals", get(proposals::proposals_json))
        .route("/proposals/{id}/edit", post(proposals::edit_proposal))
        .route("/proposals/{id}/progress", get(progress::progress_page))
        .route(
            "/proposals/{id}/{work}/retry",
            post(proposals::retry_design),
        )
        .route("/hypotheses", get(hypotheses::hypotheses_page))
        .route("/api/hypotheses", get(hypotheses::hypotheses_json))
        .route("/hypotheses/{action}", post(hypotheses::hypotheses_action))
        .route("/sources", get(sources::sources_page))
        .route("/api/sources", get(sources::sources_json))
        .route("/api/streams", get(sources::streams_json))
        .route("/sources/poll", post(sources::sources_poll))
        .route("/sources/{id}/connect", post(oauth::connect))
        .route(
            "/sources/upload",
            post(upload::upload).layer(axum::extract::DefaultBodyLimit::max(
                upload::MAX_UPLOAD_BYTES,
            )),
        )
        .route("/sources/push-token", post(upload::push_token))
        .route(oauth::CALLBACK_PATH, get(oauth::callback))
        .route(
            push::PUSH_PATH,
            post(push::push).layer(axum::extract::DefaultBodyLimit::max(push::MAX_PUSH_BYTES)),
        )
        .with_state(state)
        .merge(login)
        .layer(middleware::from_fn_with_state(access, access::require_auth))
        .layer(middleware::from_fn_with_state(guard, guard::guard))
}

/// The one stylesheet every page links (no inline copies to drift apart).
async fn stylesheet() -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (axum::http::header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("style.css"),
    )
        .into_response()
}

/// A 500 with the message, logged.
fn internal(message: &str) -> Response {
    tracing::error!(error = %message, "request failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("internal error: {message}\n"),
    )
        .into_response()
}

/// A form whose CSRF token is missing or wrong.
fn csrf_refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        "missing or wrong form token (CSRF); reload the page and try again\n",
    )
        .into_response()
}

/// How `viewer` sees arm `arm` of `protocol`: the participant sees a blinded
/// arm's code only; the investigator sees its label with the code beside it.
fn arm_label(protocol: &Protocol, arm: usize, viewer: &Viewer) -> String {
    let shown = protocol.display_label(arm);
    match (&protocol.arms[arm].code, protocol.blinded, viewer.role) {
        (Some(code), true, Role::Investigator) => {
            format!("{} ({code})", protocol.arms[arm].label)
        }
        _ => shown.to_string(),
    }
}

/// The one layout every page is rendered into: the document head with the
/// one stylesheet, the body's width class, the navigation, then the page.
#[derive(Template)]
#[template(
    ext = "html",
    source = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>{% if let Some(r) = refresh %}
<meta http-equiv="refresh" content="{{ r }}">{% endif %}
<link rel="stylesheet" href="/style.css"></head>
<body{% if !class.is_empty() %} class="{{ class }}"{% endif %}>{{ nav|safe }}
{{ body|safe }}
</body></html>"#
)]
struct Layout<'a> {
    title: &'a str,
    class: &'a str,
    nav: &'a str,
    body: &'a str,
    /// Seconds after which the page reloads itself, if it should.
    refresh: Option<u32>,
}

/// Renders `page` (its body) inside the [`Layout`], titled `title`, with
/// the body class `class` (`narrow`, `wide` or none) and the navigation `nav`.
fn render_page(
    title: &str,
    class: &str,
    nav: &str,
    page: &impl Template,
) -> Result<String, askama::Error> {
    render_page_reloading(title, class, nav, page, None)
}

/// [`render_page`] for a page that reloads itself every `refresh` seconds
/// (no scripts: the policy allows none), e.g. while work it shows runs.
fn render_page_reloading(
    title: &str,
    class: &str,
    nav: &str,
    page: &impl Template,
    refresh: Option<u32>,
) -> Result<String, askama::Error> {
    let body = page.render()?;
    Layout {
        title,
        class,
        nav,
        body: &body,
        refresh,
    }
    .render()
}

/// The navigation bar every page starts with (HTML), with a sign-out button
/// for a signed-in viewer.
fn nav(viewer: &Viewer) -> String {
    let mut out = String::from(
        r#"<nav style="display:flex;flex-wrap:wrap;gap:0.9rem;align-items:center;margin-bottom:0.6rem;font-size:0.95rem"><a href="/">Overview</a><a href="/hypotheses">Ask</a><a href="/proposals">Proposals</a><a href="/sources">Sources</a><a href="/api/openapi.json">API</a>"#,
    );
    if viewer.signed_in {
        out.push_str(&format!(
            r#"<span style="color:#666">{} view</span><form method="post" action="/logout" style="display:inline;margin:0"><input type="hidden" name="csrf" value="{}"><button type="submit">Sign out</button></form>"#,
            match viewer.role {
                Role::Participant => "participant",
                Role::Investigator => "investigator",
            },
            crate::web::charts::escape(&viewer.csrf)
        ));
    }
    out.push_str("</nav>");
    out
}

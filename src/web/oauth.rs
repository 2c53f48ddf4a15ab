//! Connecting an OAuth2 source (Oura): the Connect button sends the person
//! to the vendor with a fresh state and PKCE challenge; the vendor sends
//! them back to `/oauth/callback`, where the code becomes a grant.
//!
//! The callback needs no session (a cross-site redirect does not carry the
//! SameSite=Strict cookie): the state, 256 random bits good once and for 15
//! minutes, is what proves the request began here.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use jiff::SignedDuration;
use serde::Deserialize;

use crate::service::app::AppState;
use crate::service::sources::granted;

use super::access::CsrfForm;
use super::{Viewer, csrf_refused, internal};

/// Where vendors send the person back.
pub const CALLBACK_PATH: &str = "/oauth/callback";

/// How long a begun authorisation waits for the person to come back.
const PENDING_FOR: SignedDuration = SignedDuration::from_mins(15);

/// The redirect URL registered with the vendor.
pub fn redirect_url(public_url: &str) -> String {
    format!("{}{CALLBACK_PATH}", public_url.trim_end_matches('/'))
}

fn page(status: StatusCode, text: &str) -> Response {
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>nof1d</title><link rel=stylesheet href=/style.css><main><p>{}</p><p><a href=\"/sources\">Back to the sources</a></p></main>",
        text.replace('&', "&amp;").replace('<', "&lt;")
    );
    (status, Html(body)).into_response()
}

/// Source `id` and its participant's key.
async fn source_of(
    state: &AppState,
    id: i64,
) -> Result<Option<(crate::service::store::SourceRow, String)>, crate::service::store::StoreError> {
    state
        .db
        .read(move |s| {
            let Some(source) = s.sources()?.into_iter().find(|r| r.id == id) else {
                return Ok(None);
            };
            let participant = s.participant(source.participant_id)?;
            Ok(participant.map(|p| (source, p.key)))
        })
        .await
}

/// POST `/sources/{id}/connect`: begins the authorisation of source `id`.
#[utoipa::path(post, path = "/sources/{id}/connect", tag = "forms",
    summary = "Connect a source behind a vendor's login (Oura, Strava, Withings): a redirect to the vendor's authorize page with a one-time state (and a PKCE challenge where the vendor takes one)",
    params(("id" = i64, Path, description = "source id")),
    request_body(content = crate::web::access::CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303), (status = 400), (status = 403), (status = 404)))]
pub(super) async fn connect(
    State(state): State<AppState>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    Path(id): Path<i64>,
    axum::extract::Form(form): axum::extract::Form<CsrfForm>,
) -> Response {
    if !viewer.csrf_ok(form.csrf.as_deref()) {
        return csrf_refused();
    }
    let now = state.clock.now();
    let found = source_of(&state, id).await;
    let (source, participant) = match found {
        Ok(Some(x)) => x,
        Ok(None) => return page(StatusCode::NOT_FOUND, &format!("There is no source {id}.")),
        Err(e) => return internal(&e.to_string()),
    };
    if !granted::uses_login(&source.kind) {
        return page(
            StatusCode::BAD_REQUEST,
            &format!("{} is not a source one connects with a login.", source.name),
        );
    }
    let app = match granted::app_of(&state.config, &source.kind, &participant, &source.name) {
        None => {
            return page(
                StatusCode::BAD_REQUEST,
                &format!("{} is no longer in the configuration.", source.name),
            );
        }
        Some(Ok(a)) => a,
        Some(Err(e)) => {
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("Cannot connect {}: {e}", source.name),
            );
        }
    };
    let begun = match crate::service::oauth::begin(&app, &redirect_url(&state.public_url)) {
        Ok(b) => b,
        Err(e) => {
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("Cannot connect {}: {e}", source.name),
            );
        }
    };
    let (state_token, verifier) = (begun.state.clone(), begun.verifier.clone());
    let stored = state
        .db
        .write(move |s| s.begin_oauth(id, &state_token, &verifier, now))
        .await;
    if let Err(e) = stored {
        return internal(&e.to_string());
    }
    tracing::info!(source = %source.name, "OAuth authorisation begun");
    (StatusCode::SEE_OTHER, [(header::LOCATION, begun.url)]).into_response()
}

/// What a vendor sends back.
#[derive(Debug, Deserialize)]
pub(super) struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// GET `/oauth/callback`: the code for the state begun here becomes the
/// source's grant.
#[utoipa::path(get, path = "/oauth/callback", tag = "forms",
    summary = "Where the vendor sends the person back: the code for a state begun here (good once, for 15 minutes) becomes the source's grant",
    params(("code" = Option<String>, Query), ("state" = Option<String>, Query), ("error" = Option<String>, Query)),
    responses((status = 303), (status = 400), (status = 502)))]
pub(super) async fn callback(State(state): State<AppState>, Query(q): Query<Callback>) -> Response {
    let now = state.clock.now();
    let Some(state_token) = q.state.filter(|s| !s.is_empty()) else {
        return page(
            StatusCode::BAD_REQUEST,
            "This page is where a vendor sends you back after you connect a source; it came without a state.",
        );
    };
    let taken = state
        .db
        .write(move |s| s.take_oauth(&state_token, PENDING_FOR, now))
        .await;
    let (source_id, verifier) = match taken {
        Ok(Some(x)) => x,
        Ok(None) => {
            return page(
                StatusCode::BAD_REQUEST,
                "This authorisation is unknown, used or older than 15 minutes: press Connect on the sources page again.",
            );
        }
        Err(e) => return internal(&e.to_string()),
    };
    if let Some(error) = q.error {
        let detail = q
            .error_description
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        return page(
            StatusCode::BAD_REQUEST,
            &format!(
                "Not connected: the vendor answered {error}{detail}. Press Connect again to retry."
            ),
        );
    }
    let Some(code) = q.code.filter(|c| !c.is_empty()) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Not connected: the vendor sent no code.",
        );
    };
    let found = source_of(&state, source_id).await;
    let (source, participant) = match found {
        Ok(Some(x)) => x,
        Ok(None) => return page(StatusCode::NOT_FOUND, "The source is gone."),
        Err(e) => return internal(&e.to_string()),
    };
    let app = match granted::app_of(&state.config, &source.kind, &participant, &source.name) {
        None => {
            return page(
                StatusCode::BAD_REQUEST,
                "The source is no longer in the configuration.",
            );
        }
        Some(Ok(a)) => a,
        Some(Err(e)) => return page(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    let redirect = redirect_url(&state.public_url);
    let exchanged = tokio::task::spawn_blocking(move || {
        crate::service::oauth::exchange(&app, &redirect, &code, &verifier, now)
    })
    .await;
    let grant = match exchanged {
        Ok(Ok(g)) => g,
        Ok(Err(e)) => {
            tracing::warn!(source = %source.name, error = %e, "OAuth code exchange failed");
            return page(
                StatusCode::BAD_GATEWAY,
                &format!("Not connected: {e}. Press Connect again to retry."),
            );
        }
        Err(e) => return internal(&e.to_string()),
    };
    if let Err(e) = state
        .db
        .write(move |s| s.save_grant(source_id, &grant, now))
        .await
    {
        return internal(&e.to_string());
    }
    tracing::info!(source = %source.name, "OAuth source connected");
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, "/sources".to_string())],
    )
        .into_response()
}

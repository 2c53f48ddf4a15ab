//! The push endpoint: phone automations (Health Auto Export's REST API
//! automation) post their JSON here with the source's own bearer token
//! (checked in `access`). A payload is stored in one transaction: re-sent
//! days update in place and add nothing.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::service::app::AppState;
use crate::service::sources::ingest::{IngestError, ingest_payload};
use crate::service::store::{RunWay, SourceRow};

/// Where pushes go.
pub const PUSH_PATH: &str = "/push";

/// The largest payload accepted (a backfill of weeks of minute data).
pub const MAX_PUSH_BYTES: usize = 64 << 20;

/// The source a valid push token belongs to (set by `access`).
#[derive(Debug, Clone)]
pub struct PushSource(pub SourceRow);

/// POST `/push`: stores a Health Auto Export payload; answers with the
/// counts as JSON, 400 naming what is wrong with a payload that is not
/// the format, 500 if the store failed (the app retries).
#[utoipa::path(post, path = "/push", tag = "sources",
    summary = "A Health Auto Export payload (its REST API automation's JSON), with the source's own token from `nof1d push-token`; stored in one transaction, re-sent records updated in place",
    request_body(content_type = "application/json", description = "Health Auto Export's JSON"),
    security(("bearer" = [])),
    responses((status = 200), (status = 400), (status = 401), (status = 413), (status = 429)))]
pub(super) async fn push(
    State(state): State<AppState>,
    axum::Extension(PushSource(source)): axum::Extension<PushSource>,
    body: axum::body::Bytes,
) -> Response {
    let participant = match state.db.read(|s| s.participants()).await {
        Ok(people) => people.into_iter().find(|p| p.id == source.participant_id),
        Err(e) => return super::internal(&e.to_string()),
    };
    let Some(participant) = participant else {
        return super::internal("the push source's participant is missing");
    };
    let Ok(home) = jiff::tz::TimeZone::get(&participant.time_zone) else {
        return super::internal("the participant's time zone is unknown");
    };
    let rules = state.config.stream_rules(&participant.key);
    let now = state.clock.now();
    let what = format!("{} bytes", body.len());
    let result = state
        .db
        .write_with(move |s| {
            ingest_payload(s, &source, &home, &rules, &body, RunWay::Push, &what, now)
        })
        .await;
    match result {
        Ok(report) => axum::Json(report).into_response(),
        Err(IngestError::Payload(e)) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
        Err(IngestError::Store(crate::service::store::StoreError::Refused(e))) => {
            (StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")).into_response()
        }
        Err(e) => super::internal(&e.to_string()),
    }
}

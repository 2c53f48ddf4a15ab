//! The sources page, its JSON and the poll-now button.

use askama::Template;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;

use crate::service::app::AppState;
use crate::service::store::StoreError;

use super::access::CsrfForm;
use super::{Viewer, csrf_refused, internal, nav};

/// One source on the sources page.
#[derive(Debug, Clone, Serialize)]
pub struct SourceView {
    /// The stored source.
    pub source: crate::service::store::SourceRow,
    /// Its participant's key.
    pub participant: String,
    /// The participant's streams: key, observations, last local date.
    pub streams: Vec<(String, i64, Option<String>)>,
}

#[derive(Template)]
#[template(
    ext = "html",
    source = r#"<h1>Data sources</h1>
{% if views.is_empty() %}<p>No data sources are configured yet: outcomes come from self-reports (email links and the trial page's form).</p>{% endif %}
<form method="post" action="/sources/poll"><input type="hidden" name="csrf" value="{{ csrf }}"><button type="submit">Poll all sources now</button></form>
{% for v in views %}<h2>{{ v.source.name }} <small>({{ v.source.kind }}, {{ v.participant }})</small></h2>
<p>Last successful poll: {% if let Some(t) = v.source.last_success_at %}{{ t }}{% else %}never{% endif %}{% if let Some(c) = v.source.cursor %} · cursor {{ c }}{% endif %}</p>
{% if let Some(e) = v.source.last_error %}<p class="err">Last error{% if let Some(t) = v.source.last_error_at %} ({{ t }}){% endif %}: {{ e }}</p>{% endif %}
<table><thead><tr><th>stream</th><th>observations</th><th>last day</th></tr></thead><tbody>
{% for st in v.streams %}<tr><td>{{ st.0 }}</td><td>{{ st.1 }}</td><td>{% if let Some(d) = st.2 %}{{ d }}{% endif %}</td></tr>{% endfor %}
</tbody></table>{% endfor %}"#
)]
struct SourcesPage {
    views: Vec<SourceView>,
    csrf: String,
}

async fn source_views(state: &AppState) -> Result<Vec<SourceView>, StoreError> {
    state
        .db
        .read(|s| {
            let participants = s.participants()?;
            let mut views = Vec::new();
            for source in s.sources()? {
                let participant = participants
                    .iter()
                    .find(|p| p.id == source.participant_id)
                    .map(|p| p.key.clone())
                    .unwrap_or_default();
                let streams = s.stream_counts(source.participant_id)?;
                views.push(SourceView {
                    source,
                    participant,
                    streams,
                });
            }
            Ok(views)
        })
        .await
}

/// GET `/sources`.
pub(super) async fn sources_page(
    State(state): State<AppState>,
    axum::Extension(viewer): axum::Extension<Viewer>,
) -> Response {
    match source_views(&state).await {
        Ok(views) => match super::render_page(
            "Sources — nof1d",
            "",
            &nav(&viewer),
            &SourcesPage {
                views,
                csrf: viewer.csrf.clone(),
            },
        ) {
            Ok(html) => Html(html).into_response(),
            Err(e) => internal(&e.to_string()),
        },
        Err(e) => internal(&e.to_string()),
    }
}

/// GET `/api/sources`.
pub(super) async fn sources_json(State(state): State<AppState>) -> Response {
    match source_views(&state).await {
        Ok(views) => axum::Json(views).into_response(),
        Err(e) => internal(&e.to_string()),
    }
}

/// POST `/sources/poll`: polls every source now (the usual job, run at
/// once; a poll already running is not doubled), then back to the page.
pub(super) async fn sources_poll(
    State(state): State<AppState>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    axum::extract::Form(form): axum::extract::Form<CsrfForm>,
) -> Response {
    if !viewer.csrf_ok(form.csrf.as_deref()) {
        return csrf_refused();
    }
    crate::service::jobs::run_job(&state, crate::service::jobs::JobKind::Sources).await;
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, "/sources".to_string())],
    )
        .into_response()
}

//! The sources page, its JSON and the poll-now button.

use askama::Template;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;

use crate::service::app::AppState;
use crate::service::store::StoreError;
use crate::service::streams::StreamSummary;

use super::access::CsrfForm;
use super::{Viewer, csrf_refused, internal, nav};

/// One source on the sources page.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SourceView {
    /// The stored source.
    pub source: crate::service::store::SourceRow,
    /// Its participant's key.
    pub participant: String,
    /// Its latest polls, pushes and imports, newest first.
    pub runs: Vec<crate::service::store::SourceRunRow>,
    /// For a source one connects with a login (Oura): where it stands.
    pub connection: Option<Connection>,
}

/// An OAuth2 source's state, for people.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Connection {
    /// `not_connected`, `connected` or `needs_reauthorisation`.
    pub status: String,
    /// One line: the scopes and when the token is renewed, or why it
    /// needs connecting again.
    pub detail: String,
}

fn connection(
    source: &crate::service::store::SourceRow,
    grant: Option<crate::service::store::GrantRow>,
) -> Option<Connection> {
    if !crate::service::sources::granted::uses_login(&source.kind) {
        return None;
    }
    Some(match grant {
        None => Connection {
            status: "not_connected".into(),
            detail: "not connected yet: press Connect and sign in to allow nof1d to read your data"
                .into(),
        },
        Some(g) if g.is_connected() => Connection {
            status: "connected".into(),
            detail: format!(
                "connected{}{}",
                if g.grant.scope.is_empty() {
                    String::new()
                } else {
                    format!(" (scopes: {})", g.grant.scope)
                },
                g.grant
                    .expires_at
                    .map(|t| format!("; the access token is renewed before {t}"))
                    .unwrap_or_default()
            ),
        },
        Some(g) => Connection {
            status: "needs_reauthorisation".into(),
            detail: format!(
                "needs re-authorisation: {} — press Connect to sign in again",
                g.status_reason
            ),
        },
    })
}

/// A participant's stream catalog.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CatalogView {
    /// The participant's key.
    pub participant: String,
    /// Every stream, summarised.
    pub streams: Vec<StreamSummary>,
}

/// The catalog of every participant (`/api/streams`, the sources page).
async fn catalog_views(state: &AppState) -> Result<Vec<CatalogView>, StoreError> {
    let config = state.config.clone();
    state
        .db
        .read(move |s| {
            let mut out = Vec::new();
            for p in s.participants()? {
                let streams = s.catalog(p.id, &config.stream_rules(&p.key))?;
                out.push(CatalogView {
                    participant: p.key,
                    streams,
                });
            }
            Ok(out)
        })
        .await
}

/// GET `/api/streams`: every participant's stream catalog.
#[utoipa::path(get, path = "/api/streams", tag = "dashboard",
    summary = "Every participant's stream catalog: unit, sources, devices (the one counted first), days, missing share, daily mean, sd, trend per 30 days, weekday pattern",
    responses((status = 200, body = Vec<CatalogView>)))]
pub(super) async fn streams_json(State(state): State<AppState>) -> Response {
    match catalog_views(&state).await {
        Ok(views) => axum::Json(views).into_response(),
        Err(e) => internal(&e.to_string()),
    }
}

fn fmt(v: &Option<f64>) -> String {
    match v {
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
        None => "–".into(),
    }
}

#[derive(Template)]
#[template(
    ext = "html",
    source = r#"<h1>Data sources</h1>
{% if views.is_empty() %}<p>No data sources are configured yet: outcomes come from self-reports (email links and the trial page's form).</p>{% endif %}
<form method="post" action="/sources/poll"><input type="hidden" name="csrf" value="{{ csrf }}"><button type="submit">Poll all sources now</button></form>
{% for v in views %}<h2>{{ v.source.name }} <small>({{ v.source.kind }}, {{ v.participant }})</small></h2>
<p>Last successful poll: {% if let Some(t) = v.source.last_success_at %}{{ t }}{% else %}never{% endif %}{% if let Some(c) = v.source.cursor %} · cursor {{ c }}{% endif %}</p>
{% if let Some(c) = v.connection %}<p class="{% if c.status == "connected" %}ok{% else %}err{% endif %}">{{ c.detail }}</p>
<form method="post" action="/sources/{{ v.source.id }}/connect"><input type="hidden" name="csrf" value="{{ csrf }}"><button type="submit">{% if c.status == "connected" %}Connect again{% else %}Connect{% endif %}</button></form>{% endif %}
{% if let Some(e) = v.source.last_error %}<p class="err">Last error{% if let Some(t) = v.source.last_error_at %} ({{ t }}){% endif %}: {{ e }}</p>{% endif %}
<table><thead><tr><th>when</th><th>what</th><th>result</th></tr></thead><tbody>
{% for r in v.runs %}<tr><td>{{ r.started_at }}</td><td>{{ r.way }} {{ r.what }}</td><td>{{ r.stored }} new, {{ r.updated }} updated, {{ r.unchanged }} already there{% if r.withdrawn > 0 %}, {{ r.withdrawn }} withdrawn (deleted at the source){% endif %}, {{ r.refused }} refused{% if let Some(e) = r.error %} <span class="err">— {{ e }}</span>{% endif %}</td></tr>{% endfor %}
</tbody></table>{% endfor %}
<h2>Add data</h2>
<form method="post" action="/sources/upload" enctype="multipart/form-data"><input type="hidden" name="csrf" value="{{ csrf }}">
{% if participants.len() > 1 %}<label>Participant <select name="participant">{% for p in participants %}<option>{{ p }}</option>{% endfor %}</select></label>{% endif %}
<label>File (Apple Health export.zip or export.xml, Health Auto Export JSON, or a CSV/JSON file a mapping in the config describes) <input type="file" name="file" required></label>
<button type="submit">Upload and import</button></form>
<form method="post" action="/sources/push-token"><input type="hidden" name="csrf" value="{{ csrf }}">{% if participants.len() > 1 %}<label>Participant <select name="participant">{% for p in participants %}<option>{{ p }}</option>{% endfor %}</select></label>{% endif %}<button type="submit">New push token for Health Auto Export</button></form>
<p>Files put in <code>inbox/</code> in the data folder (or <code>inbox/&lt;participant&gt;/</code>) are imported and moved to <code>done/</code> or <code>failed/</code> with the reason; <code>nof1d import FILE</code> does the same at once. Phone automations post to <code>/push</code> with a token from <code>nof1d push-token</code>.</p>
<h2>Streams</h2>
{% for c in catalog %}<h3>{{ c.participant }}</h3>
<table><thead><tr><th>stream</th><th>unit (daily)</th><th>from</th><th>days</th><th>missing</th><th>mean ± sd</th><th>trend / 30 d</th><th>counts</th></tr></thead><tbody>
{% for st in c.streams %}<tr><td>{{ st.key }}</td><td>{{ st.unit }} ({{ st.daily }})</td><td>{{ st.sources.join(", ") }}{% if st.origins.len() > 1 %}<br><small>counted: {{ st.origins[0].0 }}; also {% for o in st.origins[1..] %}{{ o.0 }} {% endfor %}</small>{% endif %}</td><td>{% if let Some(f) = st.first %}{{ f }} – {% endif %}{% if let Some(l) = st.last %}{{ l }}{% endif %}</td><td>{{ "{:.0}"|format(st.missing_share * 100.0) }}%</td><td>{{ self::fmt(st.mean) }} ± {{ self::fmt(st.sd) }}</td><td>{{ self::fmt(st.trend_per_30_days) }}</td><td>{{ st.count }}</td></tr>{% endfor %}
</tbody></table>{% endfor %}"#
)]
struct SourcesPage {
    views: Vec<SourceView>,
    catalog: Vec<CatalogView>,
    csrf: String,
    /// Participants a file or token may be for (the demo only when alone).
    participants: Vec<String>,
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
                let runs = s.source_runs(source.id, 5)?;
                let grant = s.grant(source.id)?;
                views.push(SourceView {
                    connection: connection(&source, grant),
                    source,
                    participant,
                    runs,
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
    let loaded = match source_views(&state).await {
        Ok(views) => catalog_views(&state).await.map(|c| (views, c)),
        Err(e) => Err(e),
    };
    match loaded {
        Ok((views, catalog)) => match super::render_page(
            "Sources — nof1d",
            "",
            &nav(&viewer),
            &SourcesPage {
                participants: catalog
                    .iter()
                    .map(|c| c.participant.clone())
                    .filter(|k| catalog.len() == 1 || k != crate::service::demo::PARTICIPANT_KEY)
                    .collect(),
                views,
                catalog,
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
#[utoipa::path(get, path = "/api/sources", tag = "dashboard",
    summary = "Data sources with last poll, last error and their latest polls, pushes and imports",
    responses((status = 200, body = Vec<SourceView>)))]
pub(super) async fn sources_json(State(state): State<AppState>) -> Response {
    match source_views(&state).await {
        Ok(views) => axum::Json(views).into_response(),
        Err(e) => internal(&e.to_string()),
    }
}

/// How long "Poll all sources now" waits for the poll before showing the
/// page: most polls take seconds, and the page then shows what they did.
const POLL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// POST `/sources/poll`: polls every source now (the usual job, run at
/// once; a poll already running is not doubled), then back to the page:
/// once the poll is done, or after [`POLL_WAIT`] with the poll going on.
#[utoipa::path(post, path = "/sources/poll", tag = "forms",
    summary = "Poll every source now",
    request_body(content = crate::web::access::CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303), (status = 403)))]
pub(super) async fn sources_poll(
    State(state): State<AppState>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    axum::extract::Form(form): axum::extract::Form<CsrfForm>,
) -> Response {
    if !viewer.csrf_ok(form.csrf.as_deref()) {
        return csrf_refused();
    }
    // Its own task: a poll that takes long (a large import, an API
    // retrying) goes on in the background instead of being cancelled with
    // the request (its time-out, or a browser that gives up), which would
    // throw away what its source tasks fetched and leave its runs open.
    let poll = tokio::spawn(async move {
        crate::service::jobs::run_job(&state, crate::service::jobs::JobKind::Sources).await
    });
    let _ = tokio::time::timeout(POLL_WAIT, poll).await;
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, "/sources".to_string())],
    )
        .into_response()
}

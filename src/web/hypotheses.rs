//! The hypotheses page: a box to ask in words, a button to propose from the
//! goals, every hypothesis with its verdict and trial, and the audit log of
//! every exchange with the proposer (what was sent and what came back,
//! verbatim). Asking runs in the background: an LLM may think for minutes,
//! longer than a request may take.

use askama::Template;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;

use crate::service::app::AppState;
use crate::service::hypotheses::{Purpose, ask_in_daemon};
use crate::service::store::{ExchangeRow, HypothesisRow, StoreError};
use crate::trial::hypothesis::Candidate;

use super::{Viewer, csrf_refused, internal, nav};

/// The longest question accepted.
const MAX_QUESTION_CHARS: usize = 1_000;

/// One question in flight at a time: an LLM on a home server answers one
/// at a time anyway, and clicks must not queue up unbounded work.
static ASKING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// One participant's hypotheses and exchanges.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HypothesesView {
    /// The participant's key.
    pub participant: String,
    /// Their hypotheses, newest first.
    pub hypotheses: Vec<HypothesisRow>,
    /// Their exchanges with the proposer, newest first.
    pub exchanges: Vec<ExchangeRow>,
}

struct Line {
    id: i64,
    created_at: String,
    what: String,
    rationale: String,
    sigma: String,
    verdict: String,
    trial: Option<(i64, String)>,
    question: String,
    notes: Vec<String>,
    proposer: String,
}

fn line(h: &HypothesisRow) -> Line {
    let c: Option<Candidate> = serde_json::from_str(&h.payload_json).ok();
    Line {
        id: h.id,
        created_at: h.created_at.clone(),
        what: c.as_ref().map_or_else(
            || "(unreadable)".into(),
            |c| {
                format!(
                    "{} against {}, for {}",
                    c.intervention, c.comparator, c.outcome_stream
                )
            },
        ),
        rationale: c.map(|c| c.rationale).unwrap_or_default(),
        sigma: match (h.sigma, h.tau) {
            (Some(s), Some(t)) => format!("{s:.2} (tau {t:.2})"),
            (Some(s), None) => format!("{s:.2}"),
            _ => "–".into(),
        },
        verdict: match h.verdict.as_deref() {
            Some("test") => "worth a trial".into(),
            Some("recommend") => "a recommendation: known well enough, no experiment".into(),
            _ => "–".into(),
        },
        trial: h.trial.clone(),
        question: h.question.clone(),
        notes: h.notes.lines().map(str::to_string).collect(),
        proposer: h.proposer.clone(),
    }
}

#[derive(Template)]
#[template(
    ext = "html",
    source = r#"<h1>Hypotheses</h1>
<p>Ask what you want to know. {% if llm.is_empty() %}No LLM is configured: the built-in proposer matches your words against the intervention library{% else %}{{ llm }} proposes; nof1d checks every answer against the library and your data{% endif %}. Hypotheses the proposer is unsure of (sigma at or above tau) become proposed trials for you to approve; the rest are recommendations.</p>
{% if asked %}<p role="status">Your question is being answered. Reload this page in a minute.</p>{% endif %}
<form method="post" action="/hypotheses/ask"><input type="hidden" name="csrf" value="{{ csrf }}">
{% if participants.len() > 1 %}<label>For <select name="participant">{% for p in participants %}<option value="{{ p }}">{{ p }}</option>{% endfor %}</select></label>{% else %}{% for p in participants %}<input type="hidden" name="participant" value="{{ p }}">{% endfor %}{% endif %}
<label>Question <input name="question" required maxlength="1000" size="40" style="max-width:100%;box-sizing:border-box" placeholder="does magnesium help my migraines?"></label>
<button type="submit">Ask</button></form>
{% for v in views %}<h2>{{ v.0 }}</h2>
<form method="post" action="/hypotheses/propose"><input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="participant" value="{{ v.0 }}"><input type="hidden" name="question" value=""><button type="submit">Propose from {{ v.0 }}'s goals</button></form>
{% if v.1.is_empty() %}<p class="muted">No hypotheses yet.</p>{% endif %}
{% for h in v.1 %}<section id="h{{ h.id }}"><h3>{{ h.what }}</h3>
<p class="muted">#{{ h.id }} · {{ h.created_at }} · by {{ h.proposer }}{% if !h.question.is_empty() %} · asked “{{ h.question }}”{% endif %}</p>
<p>{{ h.rationale }}</p>
<p>Uncertainty sigma {{ h.sigma }}: {{ h.verdict }}{% if let Some(t) = h.trial %} — <a href="/trials/{{ t.0 }}">trial {{ t.0 }}</a> ({{ t.1 }}){% if t.1 == "proposed" %}, <a href="/proposals#trial-{{ t.0 }}">review and approve</a>{% endif %}{% endif %}.</p>
{% if !h.notes.is_empty() %}<ul>{% for n in h.notes %}<li>{{ n }}</li>{% endfor %}</ul>{% endif %}
</section>{% endfor %}
<h3>What was sent and received</h3>
<p class="muted">Summaries only: the goals, each stream's counts, means, trends and weekday effects, the library, past results. Never a raw value or a time.</p>
{% for e in v.2 %}<details><summary>{{ e.started_at }} · {{ e.purpose }} · {{ e.proposer }} · attempt {{ e.attempt }} · {{ e.outcome }}{% if let Some(s) = e.http_status %} · HTTP {{ s }}{% endif %}</summary>
{% if !e.problems.is_empty() %}<p class="err" style="white-space:pre-wrap">{{ e.problems }}</p>{% endif %}
<p>Sent:</p><pre style="white-space:pre-wrap;word-break:break-all">{{ e.request_json }}</pre>
<p>Received:</p><pre style="white-space:pre-wrap;word-break:break-all">{{ e.response_body }}</pre></details>{% endfor %}
{% endfor %}
<p><a href="/api/hypotheses">JSON</a></p>"#
)]
struct HypothesesPage {
    llm: String,
    asked: bool,
    csrf: String,
    participants: Vec<String>,
    views: Vec<(String, Vec<Line>, Vec<ExchangeRow>)>,
}

async fn views(state: &AppState) -> Result<Vec<HypothesesView>, StoreError> {
    state
        .db
        .read(|s| {
            let mut out = Vec::new();
            for p in s.participants()? {
                out.push(HypothesesView {
                    hypotheses: s.hypotheses(p.id, 50)?,
                    exchanges: s.llm_exchanges(p.id, 20)?,
                    participant: p.key,
                });
            }
            Ok(out)
        })
        .await
}

/// `?asked=1` after a question was sent.
#[derive(serde::Deserialize)]
pub(super) struct PageQuery {
    #[serde(default)]
    asked: Option<u8>,
}

/// GET `/hypotheses`.
pub(super) async fn hypotheses_page(
    State(state): State<AppState>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    axum::extract::Query(q): axum::extract::Query<PageQuery>,
) -> Response {
    let views = match views(&state).await {
        Ok(v) => v,
        Err(e) => return internal(&e.to_string()),
    };
    let page = HypothesesPage {
        llm: state
            .config
            .llm
            .as_ref()
            .map(|l| format!("The LLM {}", l.model))
            .unwrap_or_default(),
        asked: q.asked.is_some(),
        csrf: viewer.csrf.clone(),
        participants: views.iter().map(|v| v.participant.clone()).collect(),
        views: views
            .iter()
            .map(|v| {
                (
                    v.participant.clone(),
                    v.hypotheses.iter().map(line).collect(),
                    v.exchanges.clone(),
                )
            })
            .collect(),
    };
    match super::render_page("Hypotheses — nof1d", "", &nav(&viewer), &page) {
        Ok(html) => Html(html).into_response(),
        Err(e) => internal(&e.to_string()),
    }
}

/// GET `/api/hypotheses`: every participant's hypotheses and exchanges.
#[utoipa::path(get, path = "/api/hypotheses", tag = "dashboard",
    summary = "Every participant's hypotheses (verdict, proposed trial) and the audit log of exchanges with the proposer",
    responses((status = 200, body = HypothesesView)))]
pub(super) async fn hypotheses_json(State(state): State<AppState>) -> Response {
    match views(&state).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => internal(&e.to_string()),
    }
}

/// The ask and propose forms.
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub(super) struct AskForm {
    csrf: Option<String>,
    participant: String,
    #[serde(default)]
    question: String,
}

/// POST `/hypotheses/{ask|propose}`: checks the form, starts the proposer
/// in the background, and sends the browser back to the page.
#[utoipa::path(post, path = "/hypotheses/{action}", tag = "forms",
    summary = "Ask a question (ask) or propose from the goals (propose); answered in the background",
    params(("action" = String, Path, description = "ask or propose")),
    request_body(content = AskForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303), (status = 400), (status = 403), (status = 429)))]
pub(super) async fn hypotheses_action(
    State(state): State<AppState>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    axum::extract::Path(action): axum::extract::Path<String>,
    axum::extract::Form(form): axum::extract::Form<AskForm>,
) -> Response {
    if !viewer.csrf_ok(form.csrf.as_deref()) {
        return csrf_refused();
    }
    let purpose = match action.as_str() {
        "ask" => Purpose::Ask,
        "propose" => Purpose::Propose,
        _ => return (StatusCode::NOT_FOUND, "no such action\n").into_response(),
    };
    let question = form.question.trim().to_string();
    if purpose == Purpose::Ask && question.is_empty() {
        return (StatusCode::BAD_REQUEST, "the question is empty\n").into_response();
    }
    if question.chars().count() > MAX_QUESTION_CHARS {
        return (
            StatusCode::BAD_REQUEST,
            format!("the question is longer than {MAX_QUESTION_CHARS} characters\n"),
        )
            .into_response();
    }
    let key = form.participant.clone();
    let participant = match state.db.read(|s| s.participants()).await {
        Ok(people) => people.into_iter().find(|p| p.key == key),
        Err(e) => return internal(&e.to_string()),
    };
    let Some(participant) = participant else {
        return (
            StatusCode::BAD_REQUEST,
            format!("no participant {:?}\n", form.participant),
        )
            .into_response();
    };
    let actor = match viewer.role {
        super::Role::Investigator => "dashboard (investigator)",
        super::Role::Participant => "dashboard",
    };
    let Ok(permit) = ASKING.try_acquire() else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "30")],
            "a question is already being answered; ask again when it is done\n",
        )
            .into_response();
    };
    let task_state = state.clone();
    tokio::spawn(async move {
        let _permit = permit;
        match ask_in_daemon(&task_state, participant, purpose, question, actor).await {
            Ok(r) => tracing::info!(
                kept = r.kept.len(),
                refused = r.refused.len(),
                failure = r.failure.as_deref().unwrap_or(""),
                "question answered"
            ),
            Err(e) => tracing::error!(error = %e, "question could not be answered"),
        }
    });
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, "/hypotheses?asked=1".to_string())],
    )
        .into_response()
}

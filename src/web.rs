//! HTTP: the status page, `/healthz` and the JSON status API.
//!
//! Server-rendered HTML (askama), no JavaScript. When a token or password is
//! configured every page but `/healthz` requires it: `Authorization: Bearer
//! TOKEN`, or HTTP Basic with the password (any user name; verified against
//! the argon2 hash, the last good credential cached so a page load does not
//! cost one argon2 run per request).

use std::sync::{Arc, Mutex};

use askama::Template;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use jiff::tz::TimeZone;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::calendar::local_date;
use crate::daemon::{AppState, JobStatus, next_assignment};
use crate::protocol::Protocol;
use crate::store::{Counts, StoreError};

/// Builds the router; tests call this with their own state.
pub fn router(state: AppState) -> Router {
    let cache = Arc::new(Mutex::new(None));
    Router::new()
        .route("/", get(status_page))
        .route("/api/status", get(status_json))
        .route("/healthz", get(healthz))
        .route("/l/{token}", get(link_page).post(link_submit))
        .route("/trials/{id}", get(trial_page))
        .route("/trials/{id}/{action}", axum::routing::post(trial_action))
        .route("/api/trials/{id}", get(trial_json))
        .route("/metrics", get(metrics))
        .route("/sources", get(sources_page))
        .route("/sources/poll", axum::routing::post(sources_poll))
        .layer(middleware::from_fn_with_state(
            (state.clone(), cache),
            require_auth,
        ))
        .with_state(state)
}

type AuthCache = Arc<Mutex<Option<[u8; 32]>>>;

async fn require_auth(
    State((state, cache)): State<(AppState, AuthCache)>,
    request: Request,
    next: Next,
) -> Response {
    // One-click links carry their own signed credential (see `links`).
    let path = request.uri().path();
    if !state.auth.is_configured() || path == "/healthz" || path.starts_with("/l/") {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let ok = match presented {
        Some(value) => check_credentials(&state, &cache, &value).await,
        None => false,
    };
    if ok {
        return next.run(request).await;
    }
    let mut response = (StatusCode::UNAUTHORIZED, "authentication required\n").into_response();
    if state.auth.password_hash.is_some() {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"nof1d\", charset=\"UTF-8\""),
        );
    }
    response
}

async fn check_credentials(state: &AppState, cache: &AuthCache, value: &str) -> bool {
    if let (Some(token), Some(given)) = (&state.auth.token, value.strip_prefix("Bearer ")) {
        return constant_time_eq(token.expose().as_bytes(), given.trim().as_bytes());
    }
    let (Some(hash), Some(encoded)) = (&state.auth.password_hash, value.strip_prefix("Basic "))
    else {
        return false;
    };
    let digest: [u8; 32] = Sha256::digest(value.as_bytes()).into();
    if cache.lock().map(|c| *c == Some(digest)).unwrap_or(false) {
        return true;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Some(password) = String::from_utf8(decoded)
        .ok()
        .and_then(|s| s.split_once(':').map(|(_, p)| p.to_string()))
    else {
        return false;
    };
    let hash = hash.clone();
    let verified = tokio::task::spawn_blocking(move || {
        use argon2::PasswordVerifier;
        argon2::PasswordHash::new(&hash)
            .map(|h| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false);
    if verified && let Ok(mut c) = cache.lock() {
        *c = Some(digest);
    }
    verified
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One participant on the status page.
#[derive(Debug, Clone, Serialize)]
pub struct ParticipantView {
    /// Key.
    pub key: String,
    /// Name.
    pub name: String,
    /// IANA zone.
    pub time_zone: String,
    /// Their local time now.
    pub local_now: String,
    /// The simulated demo participant.
    pub is_demo: bool,
    /// Streams with observation counts and the last local date.
    pub streams: Vec<(String, i64, Option<String>)>,
}

/// One trial on the status page. Only today and the past: nothing of future arms.
#[derive(Debug, Clone, Serialize)]
pub struct TrialView {
    /// Trial id.
    pub id: i64,
    /// Participant key.
    pub participant: String,
    /// Protocol id.
    pub protocol_id: String,
    /// Protocol title.
    pub title: String,
    /// Life-cycle status.
    pub status: String,
    /// SHA-256 of the locked protocol.
    pub protocol_hash: String,
    /// Today's trial day, 1-based, if today is in the schedule.
    pub day: Option<u32>,
    /// Planned days.
    pub planned_days: usize,
    /// Today's block, 1-based (None in run-in).
    pub block: Option<u32>,
    /// Maximum blocks.
    pub max_blocks: u32,
    /// Today's arm as the participant sees it (code when blinded).
    pub today_arm: Option<String>,
    /// Next assignment, local time with zone.
    pub next_assignment: Option<String>,
    /// Percent of planned days elapsed.
    pub progress_percent: u32,
    /// The latest fit of the primary outcome, in words.
    pub latest_fit: Option<FitView>,
}

/// The latest fit of a trial's primary outcome, for the status page.
#[derive(Debug, Clone, Serialize)]
pub struct FitView {
    /// Data through this local date.
    pub data_through: String,
    /// Observations used.
    pub observations: i64,
    /// Per non-comparator arm: label, mean, 90% interval, P(better by MID).
    pub effects: Vec<(String, f64, [f64; 2], f64)>,
    /// The fit's verdict.
    pub converged: bool,
}

/// Everything the status page and `/api/status` show.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    /// nof1d version.
    pub version: String,
    /// Daemon clock, UTC.
    pub now: String,
    /// Simulated seconds per real second.
    pub time_scale: f64,
    /// Participants.
    pub participants: Vec<ParticipantView>,
    /// Trials.
    pub trials: Vec<TrialView>,
    /// Sources: name, kind, last success, last error.
    pub sources: Vec<crate::store::SourceRow>,
    /// Newest outbox messages (subject, status, where delivered).
    pub outbox: Vec<OutboxView>,
    /// Row counts.
    pub counts: Counts,
    /// Jobs.
    pub jobs: Vec<(String, JobStatus)>,
}

/// An outbox message on the status page (no bodies).
#[derive(Debug, Clone, Serialize)]
pub struct OutboxView {
    /// Key.
    pub key: String,
    /// Recipient.
    pub recipient: String,
    /// Subject.
    pub subject: String,
    /// Status.
    pub status: String,
    /// Attempts.
    pub attempts: i64,
    /// Where it went.
    pub delivered_to: Option<String>,
    /// Last error.
    pub last_error: Option<String>,
}

/// Reads everything the status page needs, in one blocking call.
pub async fn status(state: &AppState) -> Result<StatusView, StoreError> {
    let now = state.clock.now();
    let jobs = state
        .jobs
        .snapshot()
        .into_iter()
        .map(|(k, v)| (k.name().to_string(), v))
        .collect();
    let time_scale = state.clock.scale();
    state
        .db
        .read(move |s| {
            let participants = s.participants()?;
            let mut pviews = Vec::new();
            for p in &participants {
                let local_now = TimeZone::get(&p.time_zone)
                    .map(|tz| now.to_zoned(tz).strftime("%Y-%m-%d %H:%M %Z").to_string())
                    .unwrap_or_else(|_| format!("(unknown zone {})", p.time_zone));
                pviews.push(ParticipantView {
                    key: p.key.clone(),
                    name: p.name.clone(),
                    time_zone: p.time_zone.clone(),
                    local_now,
                    is_demo: p.is_demo,
                    streams: s.stream_counts(p.id)?,
                });
            }
            let mut trials = Vec::new();
            for t in s.trials()? {
                let Some(p) = participants.iter().find(|p| p.id == t.participant_id) else {
                    continue;
                };
                let protocol = Protocol::parse(&t.protocol_toml, "stored protocol").ok();
                let tz = TimeZone::get(&p.time_zone).ok();
                let schedule = s.schedule(t.id)?;
                let today = tz.as_ref().map(|tz| local_date(now, tz));
                let today_row = today.and_then(|d| schedule.iter().find(|r| r.local_date == d));
                let elapsed =
                    today.map_or(0, |d| schedule.iter().filter(|r| r.local_date < d).count());
                let next = match (&protocol, &tz, t.status.as_str()) {
                    (Some(proto), Some(tz), "running") => {
                        let dates: Vec<_> = schedule.iter().map(|r| r.local_date).collect();
                        next_assignment(
                            proto,
                            &p.assignment_time,
                            tz,
                            &dates,
                            s.last_daily_run(t.id)?,
                            now,
                        )
                        .map(|at| {
                            at.to_zoned(tz.clone())
                                .strftime("%Y-%m-%d %H:%M %Z")
                                .to_string()
                        })
                    }
                    _ => None,
                };
                trials.push(TrialView {
                    id: t.id,
                    participant: p.key.clone(),
                    protocol_id: t.protocol_id.clone(),
                    title: protocol
                        .as_ref()
                        .map_or_else(|| t.protocol_id.clone(), |p| p.title.clone()),
                    status: t.status.clone(),
                    protocol_hash: t.protocol_hash.clone(),
                    day: today_row.map(|r| r.day + 1),
                    planned_days: schedule.len(),
                    block: today_row.and_then(|r| r.block.map(|b| b + 1)),
                    max_blocks: protocol.as_ref().map_or(0, |p| p.design.max_blocks),
                    today_arm: match (&protocol, today_row) {
                        (Some(proto), Some(r)) if r.arm < proto.arms.len() => {
                            Some(proto.display_label(r.arm).to_string())
                        }
                        _ => None,
                    },
                    next_assignment: next,
                    progress_percent: (100 * elapsed / schedule.len().max(1)) as u32,
                    latest_fit: match &protocol {
                        Some(proto) => s
                            .latest_fit(t.id, &proto.outcome.stream)?
                            .and_then(|f| fit_view(&f, proto)),
                        None => None,
                    },
                });
            }
            let outbox = s
                .recent_messages(10)?
                .into_iter()
                .map(|m| OutboxView {
                    key: m.key,
                    recipient: m.recipient,
                    subject: m.subject,
                    status: m.status,
                    attempts: m.attempts,
                    delivered_to: m.delivered_to,
                    last_error: m.last_error,
                })
                .collect();
            Ok(StatusView {
                version: env!("CARGO_PKG_VERSION").to_string(),
                now: crate::store::ts(now),
                time_scale,
                participants: pviews,
                trials,
                sources: s.sources()?,
                outbox,
                counts: s.counts()?,
                jobs,
            })
        })
        .await
}

fn fit_view(f: &crate::store::FitRow, protocol: &Protocol) -> Option<FitView> {
    let report: serde_json::Value = serde_json::from_str(&f.result_json).ok()?;
    let effects = report["effects"]
        .as_array()?
        .iter()
        .filter_map(|e| {
            let key = e["arm"].as_str()?;
            let label = protocol
                .arm_index(key)
                .map_or(key.to_string(), |i| protocol.display_label(i).to_string());
            Some((
                label,
                e["mean"].as_f64()?,
                [e["ci90"][0].as_f64()?, e["ci90"][1].as_f64()?],
                e["p_better_by_mid"].as_f64()?,
            ))
        })
        .collect();
    Some(FitView {
        data_through: f.data_through.clone(),
        observations: f.observations,
        effects,
        converged: f.converged,
    })
}

#[derive(Template)]
#[template(
    ext = "html",
    source = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>nof1d status</title>
<style>
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 60em; padding: 1em; color: #222; }
table { border-collapse: collapse; width: 100%; margin-bottom: 1.5em; font-size: 0.95em; }
th, td { text-align: left; padding: 0.3em 0.5em; border-bottom: 1px solid #ddd; vertical-align: top; }
.bar { background: #eee; width: 8em; height: 0.7em; display: inline-block; }
.bar span { background: #3a7; height: 100%; display: block; }
.muted { color: #777; font-size: 0.85em; }
.err { color: #b00; }
@media (max-width: 40em) { table, tr, td, th { font-size: 0.85em; } }
</style></head>
<body>
<h1>nof1d</h1>
<p class="muted">version {{ v.version }} · clock {{ v.now }}{% if v.time_scale != 1.0 %} · simulated time ×{{ v.time_scale }}{% endif %}</p>

<h2>Participants</h2>
<table><tr><th>Name</th><th>Time zone</th><th>Local time</th><th>Data</th></tr>
{% for p in v.participants %}<tr><td>{{ p.name }}{% if p.is_demo %} <span class="muted">(demo)</span>{% endif %}</td><td>{{ p.time_zone }}</td><td>{{ p.local_now }}</td>
<td>{% for s in p.streams %}{{ s.0 }}: {{ s.1 }} obs.{% if let Some(d) = s.2 %}, last {{ d }}{% endif %}<br>{% endfor %}</td></tr>
{% endfor %}</table>

<h2>Trials</h2>
<table><tr><th>Trial</th><th>Status</th><th>Progress</th><th>Today</th><th>Next assignment</th><th>Latest estimate</th></tr>
{% for t in v.trials %}<tr>
<td><a href="/trials/{{ t.id }}">{{ t.title }}</a><br><span class="muted">#{{ t.id }} · {{ t.participant }} · protocol {{ t.protocol_id }} · sha256 {{ t.protocol_hash[..12] }}</span></td>
<td>{{ t.status }}</td>
<td>{% if let Some(d) = t.day %}day {{ d }} of {{ t.planned_days }}{% if let Some(b) = t.block %}, block {{ b }} of up to {{ t.max_blocks }}{% else %}, run-in{% endif %}{% else %}{{ t.planned_days }} days planned{% endif %}<br>
<span class="bar" role="img" aria-label="{{ t.progress_percent }} percent of planned days"><span style="width: {{ t.progress_percent }}%"></span></span></td>
<td>{% if let Some(a) = t.today_arm %}{{ a }}{% else %}–{% endif %}</td>
<td>{% if let Some(n) = t.next_assignment %}{{ n }}{% else %}–{% endif %}</td>
<td>{% if let Some(f) = t.latest_fit %}{% for e in f.effects %}{{ e.0 }}: {{ "{:+.2}"|format(e.1) }} [{{ "{:+.2}"|format(e.2[0]) }}, {{ "{:+.2}"|format(e.2[1]) }}], P(better by MID) {{ "{:.2}"|format(e.3) }}<br>{% endfor %}
<span class="muted">{{ f.observations }} obs. through {{ f.data_through }}{% if !f.converged %} · <span class="err">not converged</span>{% endif %}</span>{% else %}–{% endif %}</td>
</tr>{% endfor %}</table>

<h2>Sources</h2>
<table><tr><th>Source</th><th>Kind</th><th>Last success</th><th>Last error</th></tr>
{% for s in v.sources %}<tr><td>{{ s.name }}</td><td>{{ s.kind }}</td>
<td>{% if let Some(a) = s.last_success_at %}{{ a }}{% else %}never{% endif %}</td>
<td class="err">{% if let Some(e) = s.last_error %}{{ e }}{% endif %}</td></tr>{% endfor %}</table>

<h2>Outbox</h2>
<table><tr><th>Subject</th><th>To</th><th>Status</th><th>Delivered to</th></tr>
{% for m in v.outbox %}<tr><td>{{ m.subject }}</td><td>{{ m.recipient }}</td><td>{{ m.status }}{% if m.attempts > 1 %} ({{ m.attempts }} attempts){% endif %}{% if let Some(e) = m.last_error %}<br><span class="err">{{ e }}</span>{% endif %}</td>
<td class="muted">{% if let Some(d) = m.delivered_to %}{{ d }}{% endif %}</td></tr>{% endfor %}</table>

<h2>Jobs</h2>
<table><tr><th>Job</th><th>Runs</th><th>Last success</th><th>Result</th></tr>
{% for j in v.jobs %}<tr><td>{{ j.0 }}</td><td>{{ j.1.runs }}{% if j.1.failures > 0 %} ({{ j.1.failures }} failed){% endif %}</td>
<td>{% if let Some(a) = j.1.last_ok %}{{ a }}{% else %}–{% endif %}</td>
<td>{% if let Some(e) = j.1.last_error %}<span class="err">{{ e }}</span>{% else %}{% if let Some(s) = j.1.last_summary %}{{ s }}{% endif %}{% endif %}</td></tr>{% endfor %}</table>
<p class="muted">{{ v.counts.observations }} observations · {{ v.counts.outbox }} messages ({{ v.counts.outbox_pending }} not yet sent) · <a href="/api/status">JSON</a> · <a href="/healthz">health</a></p>
</body></html>"#
)]
struct StatusPage<'a> {
    v: &'a StatusView,
}

async fn status_page(State(state): State<AppState>) -> Response {
    match status(&state).await {
        Ok(view) => match (StatusPage { v: &view }).render() {
            Ok(html) => Html(html).into_response(),
            Err(e) => internal(&e.to_string()),
        },
        Err(e) => internal(&e.to_string()),
    }
}

async fn status_json(State(state): State<AppState>) -> Response {
    match status(&state).await {
        Ok(view) => axum::Json(view).into_response(),
        Err(e) => internal(&e.to_string()),
    }
}

fn internal(message: &str) -> Response {
    tracing::error!(error = %message, "request failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("internal error: {message}\n"),
    )
        .into_response()
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
    database: DbHealth,
    jobs: std::collections::BTreeMap<&'static str, JobStatus>,
    clock: String,
    time_scale: f64,
    uptime_seconds: i64,
}

#[derive(Serialize)]
struct DbHealth {
    ok: bool,
    outbox_backlog: Option<i64>,
    error: Option<String>,
}

/// `200` with `"ok"` (or `"degraded"` when a job's last run failed) while
/// the database answers; `503` with `"error"` when it does not.
async fn healthz(State(state): State<AppState>) -> Response {
    let db = state.db.read(|s| s.outbox_backlog()).await;
    let jobs: std::collections::BTreeMap<_, _> = state
        .jobs
        .snapshot()
        .into_iter()
        .map(|(k, v)| (k.name(), v))
        .collect();
    let job_failing = jobs.values().any(|j| j.last_error.is_some());
    let now = state.clock.now();
    let (status, code, database) = match db {
        Ok(backlog) => (
            if job_failing { "degraded" } else { "ok" },
            StatusCode::OK,
            DbHealth {
                ok: true,
                outbox_backlog: Some(backlog),
                error: None,
            },
        ),
        Err(e) => (
            "error",
            StatusCode::SERVICE_UNAVAILABLE,
            DbHealth {
                ok: false,
                outbox_backlog: None,
                error: Some(e.to_string()),
            },
        ),
    };
    let body = Health {
        status,
        version: env!("CARGO_PKG_VERSION"),
        database,
        jobs,
        clock: crate::store::ts(now),
        time_scale: state.clock.scale(),
        uptime_seconds: now.duration_since(state.started_at).as_secs(),
    };
    (code, axum::Json(body)).into_response()
}

#[derive(Template)]
#[template(
    ext = "html",
    source = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ heading }} — nof1d</title>
<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem;line-height:1.5;color:#222}
button{font-size:1.1rem;padding:0.6rem 1.2rem;border-radius:6px;border:1px solid #264;background:#2a6;color:#fff}
.muted{color:#666;font-size:0.9rem}</style></head>
<body>
<h1>{{ heading }}</h1>
{% for p in paragraphs %}<p>{{ p }}</p>{% endfor %}
{% if let Some(action) = form_action %}
<form method="post" action="{{ action }}">
{% if side_effect %}<p><label><input type="checkbox" name="stop" value="1"> This is serious: stop the trial now (recorded as an adverse event).</label></p>{% endif %}
<button type="submit">{{ button }}</button>
</form>
<p class="muted">Nothing is recorded until you press the button.</p>
{% endif %}
</body></html>"#
)]
struct LinkPage<'a> {
    heading: &'a str,
    paragraphs: Vec<String>,
    form_action: Option<String>,
    button: String,
    side_effect: bool,
}

fn link_response(code: StatusCode, page: LinkPage<'_>) -> Response {
    match page.render() {
        Ok(html) => (code, Html(html)).into_response(),
        Err(e) => internal(&e.to_string()),
    }
}

fn link_refused(e: &crate::links::LinkError) -> Response {
    let code = match e {
        crate::links::LinkError::Expired(_) => StatusCode::GONE,
        _ => StatusCode::BAD_REQUEST,
    };
    link_response(
        code,
        LinkPage {
            heading: "This link cannot be used",
            paragraphs: vec![e.to_string()],
            form_action: None,
            button: String::new(),
            side_effect: false,
        },
    )
}

/// The trial's title and the participant's zone for a claim, checked
/// against the store (the trial exists and belongs to the participant).
async fn link_context(
    state: &AppState,
    claim: &crate::links::LinkClaim,
) -> Result<(crate::store::TrialRow, Protocol, TimeZone), String> {
    let (trial_id, participant_id) = (claim.trial_id, claim.participant_id);
    let (trial, participant) = state
        .db
        .read(move |s| {
            Ok((
                s.trial(trial_id)?,
                s.participants()?
                    .into_iter()
                    .find(|p| p.id == participant_id),
            ))
        })
        .await
        .map_err(|e| e.to_string())?;
    let (Some(trial), Some(participant)) = (trial, participant) else {
        return Err("this link's trial no longer exists".into());
    };
    if trial.participant_id != participant_id {
        return Err("this link belongs to another participant".into());
    }
    let protocol =
        Protocol::parse(&trial.protocol_toml, "stored protocol").map_err(|e| e.to_string())?;
    let tz = TimeZone::get(&participant.time_zone).map_err(|e| e.to_string())?;
    Ok((trial, protocol, tz))
}

/// GET: shows what the link would record and a one-button form; changes nothing.
async fn link_page(
    State(state): State<AppState>,
    axum::extract::Path(token): axum::extract::Path<String>,
) -> Response {
    let claim = match state.link_key.verify(&token, state.clock.now()) {
        Ok(c) => c,
        Err(e) => return link_refused(&e),
    };
    let (_, protocol, _) = match link_context(&state, &claim).await {
        Ok(x) => x,
        Err(e) => {
            return link_response(
                StatusCode::NOT_FOUND,
                LinkPage {
                    heading: "This link cannot be used",
                    paragraphs: vec![e],
                    form_action: None,
                    button: String::new(),
                    side_effect: false,
                },
            );
        }
    };
    let words = claim.action.words();
    link_response(
        StatusCode::OK,
        LinkPage {
            heading: "Please confirm",
            paragraphs: vec![
                format!(
                    "{} — {}",
                    protocol.title,
                    claim.date.strftime("%A %-d %B %Y")
                ),
                format!("{words}."),
            ],
            form_action: Some(format!("/l/{token}")),
            button: format!("Confirm: {words}"),
            side_effect: claim.action == crate::links::LinkAction::SideEffect,
        },
    )
}

/// The confirmation form.
#[derive(serde::Deserialize)]
struct LinkForm {
    stop: Option<String>,
}

/// POST: records what the link says, once.
async fn link_submit(
    State(state): State<AppState>,
    axum::extract::Path(token): axum::extract::Path<String>,
    axum::extract::Form(form): axum::extract::Form<LinkForm>,
) -> Response {
    use crate::links::LinkAction;
    use crate::store::{LinkOutcome, LinkUse, LinkWhat};
    let now = state.clock.now();
    let claim = match state.link_key.verify(&token, now) {
        Ok(c) => c,
        Err(e) => return link_refused(&e),
    };
    let refused = |msg: String| {
        link_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            LinkPage {
                heading: "Nothing was recorded",
                paragraphs: vec![msg],
                form_action: None,
                button: String::new(),
                side_effect: false,
            },
        )
    };
    let (trial, protocol, tz) = match link_context(&state, &claim).await {
        Ok(x) => x,
        Err(e) => return refused(e),
    };
    let fingerprint = crate::links::fingerprint(&token);
    let action_code = claim.action.code();
    let outcome_stream = protocol.outcome.stream.clone();
    let unit = protocol.outcome.unit.clone();
    let value = match claim.action {
        LinkAction::Rate(v) => {
            let Some(sr) = protocol.outcome.self_report.as_ref() else {
                return refused("this trial's outcome is not a self-report".into());
            };
            if v < sr.min || v > sr.max {
                return refused(format!("a rating must be {} to {}", sr.min, sr.max));
            }
            Some(f64::from(v))
        }
        _ => None,
    };
    // A rating given on its day counts now; one given later counts at 21:00
    // of the day it rates, so it stays on that day.
    let observed_at = if local_date(now, &tz) == claim.date {
        now
    } else {
        crate::calendar::local_instant(claim.date, jiff::civil::time(21, 0, 0, 0), &tz)
    };
    let (pid, trial_id, date) = (claim.participant_id, trial.id, claim.date);
    let adherence_code = match claim.action {
        LinkAction::Done => "done",
        LinkAction::NotDone => "not_done",
        LinkAction::SideEffect => "side_effect",
        LinkAction::Rate(_) => "",
    };
    let result = state
        .db
        .write(move |s| {
            let what = match value {
                Some(value) => {
                    let source_id =
                        s.ensure_source(pid, "self-report", "self_report", "{}", now)?;
                    LinkWhat::Rating {
                        stream: &outcome_stream,
                        unit: &unit,
                        value,
                        observed_at,
                        source_id,
                    }
                }
                None => LinkWhat::Adherence(adherence_code),
            };
            s.apply_link(
                &LinkUse {
                    fingerprint: &fingerprint,
                    participant_id: pid,
                    trial_id,
                    date,
                    action: &action_code,
                    what,
                },
                now,
            )
        })
        .await;
    let mut paragraphs = match result {
        Ok(LinkOutcome::Recorded(what)) => vec![format!("Thank you: {what}.")],
        Ok(LinkOutcome::AlreadyUsed { outcome, at }) => {
            vec![format!(
                "This link was already used ({outcome}, at {at}); nothing changed."
            )]
        }
        Ok(LinkOutcome::AlreadyRated { value }) => {
            vec![format!(
                "{} already has a rating ({value}); it stands and nothing changed.",
                date
            )]
        }
        Err(e) => return refused(e.to_string()),
    };
    if claim.action == LinkAction::SideEffect && form.stop.as_deref() == Some("1") {
        let stopped = state
            .db
            .write(move |s| {
                crate::actions::adverse_event(
                    s,
                    trial_id,
                    "side effect reported from an email link",
                    "email-link",
                    "participant",
                    now,
                )
                .map_err(|e| StoreError::Refused(e.to_string()))
            })
            .await;
        paragraphs.push(match stopped {
            Ok(()) => {
                "The trial is stopped. Please talk to your clinician about the side effect.".into()
            }
            Err(e) => format!("The trial could not be stopped: {e}"),
        });
    }
    link_response(
        StatusCode::OK,
        LinkPage {
            heading: "Recorded",
            paragraphs,
            form_action: None,
            button: String::new(),
            side_effect: false,
        },
    )
}

/// One calendar day on the trial page: past days by arm with adherence;
/// future days hidden (allocation concealment).
#[derive(Debug, Clone, Serialize)]
pub struct CalendarDay {
    /// Local date.
    pub date: String,
    /// The arm as the participant sees it; None for future days.
    pub arm: Option<String>,
    /// Arm index for colour; None for future days.
    #[serde(skip)]
    pub arm_index: Option<usize>,
    /// Adherence reported.
    pub adherence: Option<String>,
    /// `sent` or `missed`, once the day ran.
    pub run: Option<String>,
    /// Today.
    pub today: bool,
}

/// One fit in the trial's history: where the effects stood.
#[derive(Debug, Clone, Serialize)]
pub struct FitPoint {
    /// Last local date of data.
    pub data_through: String,
    /// Trial day of that date.
    pub day: f64,
    /// Per effect arm: key, mean, 90% interval, P(better by MID), P(best).
    pub effects: Vec<(String, f64, [f64; 2], f64, f64)>,
    /// Converged.
    pub converged: bool,
}

/// Everything the trial page shows (`/api/trials/{id}`).
#[derive(Debug, Clone, Serialize)]
pub struct TrialDetail {
    /// Trial id.
    pub id: i64,
    /// Title.
    pub title: String,
    /// Protocol id and hash.
    pub protocol_id: String,
    /// SHA-256 of the locked protocol.
    pub protocol_hash: String,
    /// The locked protocol text.
    pub protocol_toml: String,
    /// Status and stop reason.
    pub status: String,
    /// Why it stopped.
    pub stop_reason: Option<String>,
    /// Arms as the participant sees them (codes when blinded).
    pub arms: Vec<String>,
    /// Outcome stream, unit and MID.
    pub outcome: (String, String, f64),
    /// Days: past by arm, future hidden.
    pub calendar: Vec<CalendarDay>,
    /// Fit history of the primary outcome, oldest first.
    pub fits: Vec<FitPoint>,
    /// Latest fit's diagnostics.
    pub diagnostics: Option<crate::fit::Diagnostics>,
    /// Latest fit's smoothed path: (day, observation, level, counterfactual per arm).
    pub path: Vec<(f64, f64, f64, Vec<f64>)>,
    /// Decisions, oldest first.
    pub decisions: Vec<crate::store::DecisionRow>,
    /// Life-cycle changes.
    pub events: Vec<crate::store::TrialEventRow>,
}

async fn trial_detail(state: &AppState, id: i64) -> Result<Option<TrialDetail>, StoreError> {
    let now = state.clock.now();
    state
        .db
        .read(move |s| {
            let Some(trial) = s.trial(id)? else {
                return Ok(None);
            };
            let protocol = Protocol::parse(&trial.protocol_toml, "stored protocol")
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            let participant = s
                .participants()?
                .into_iter()
                .find(|p| p.id == trial.participant_id);
            let tz = participant
                .as_ref()
                .and_then(|p| TimeZone::get(&p.time_zone).ok())
                .unwrap_or(TimeZone::UTC);
            let today = local_date(now, &tz);
            let rows = s.schedule(id)?;
            let runs: std::collections::BTreeMap<_, _> = s.daily_runs(id)?.into_iter().collect();
            let adherence: std::collections::BTreeMap<u32, String> =
                s.adherence(id)?.into_iter().collect();
            let calendar = rows
                .iter()
                .map(|r| {
                    let visible = r.local_date <= today;
                    CalendarDay {
                        date: r.local_date.to_string(),
                        arm: visible.then(|| protocol.display_label(r.arm).to_string()),
                        arm_index: visible.then_some(r.arm),
                        adherence: adherence.get(&r.day).cloned(),
                        run: runs.get(&r.local_date).cloned(),
                        today: r.local_date == today,
                    }
                })
                .collect();
            let start = rows.first().map(|r| r.local_date);
            let day_of = |d: &str| -> f64 {
                match (start, d.parse::<jiff::civil::Date>()) {
                    (Some(s0), Ok(d)) => crate::calendar::days_between(s0, d) as f64,
                    _ => 0.0,
                }
            };
            let mut fits: Vec<FitPoint> = Vec::new();
            let mut latest = None;
            for f in s.fits(id, &protocol.outcome.stream, 400)?.into_iter().rev() {
                let Ok(report) = serde_json::from_str::<crate::fit::FitReport>(&f.result_json)
                else {
                    continue;
                };
                fits.push(FitPoint {
                    data_through: f.data_through.clone(),
                    day: day_of(&f.data_through),
                    effects: report
                        .effects
                        .iter()
                        .map(|e| (e.arm.clone(), e.mean, e.ci90, e.p_better_by_mid, e.p_best))
                        .collect(),
                    converged: report.diagnostics.converged,
                });
                latest = Some(report);
            }
            let (diagnostics, path) = match latest {
                Some(r) => (
                    Some(r.diagnostics),
                    r.path
                        .into_iter()
                        .map(|p| (p.t, p.y, p.latent, p.counterfactual))
                        .collect(),
                ),
                None => (None, Vec::new()),
            };
            Ok(Some(TrialDetail {
                id,
                title: protocol.title.clone(),
                protocol_id: trial.protocol_id.clone(),
                protocol_hash: trial.protocol_hash.clone(),
                protocol_toml: trial.protocol_toml.clone(),
                status: trial.status.clone(),
                stop_reason: trial.stop_reason.clone(),
                arms: (0..protocol.arms.len())
                    .map(|a| protocol.display_label(a).to_string())
                    .collect(),
                outcome: (
                    protocol.outcome.stream.clone(),
                    protocol.outcome.unit.clone(),
                    protocol.outcome.mid,
                ),
                calendar,
                fits,
                diagnostics,
                path,
                decisions: s.decisions(id)?,
                events: s.trial_events(id)?,
            }))
        })
        .await
}

#[derive(Template)]
#[template(
    ext = "html",
    source = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ d.title }} — nof1d</title>
<style>body{font-family:system-ui,sans-serif;max-width:44rem;margin:1rem auto;padding:0 0.8rem;line-height:1.45;color:#222}
table{border-collapse:collapse;font-size:0.85rem;width:100%}td,th{border-bottom:1px solid #ddd;padding:0.2rem 0.3rem;text-align:left;vertical-align:top}
.cal{display:flex;flex-wrap:wrap;gap:2px}.cal span{display:inline-block;width:1.35rem;height:1.35rem;font-size:0.6rem;text-align:center;line-height:1.35rem;border-radius:3px;color:#fff}
.future{background:#ddd;color:#777!important}.today{outline:2px solid #111}pre{overflow-x:auto;font-size:0.75rem;background:#f6f6f6;padding:0.5rem}
figure{margin:0.5rem 0 1rem}</style></head>
<body>
<p><a href="/">← status</a></p>
<h1>{{ d.title }}</h1>
<p>Trial {{ d.id }} · {{ d.status }}{% if let Some(r) = d.stop_reason %} ({{ r }}){% endif %} · protocol {{ d.protocol_id }} · sha256 <code>{{ d.protocol_hash }}</code></p>
{% if !actions.is_empty() %}<div>{% for a in actions %}<form method="post" action="/trials/{{ d.id }}/{{ a.0 }}" style="display:inline"><input type="hidden" name="csrf" value="{{ csrf }}"><button type="submit">{{ a.1 }}</button></form> {% endfor %}</div>{% endif %}
<h2>Schedule</h2>
<p>Each square is a day, coloured by arm ({% for l in legend %}<span style="color:{{ l.1 }}">■</span> {{ l.0 }} {% endfor %}); ✓ done, ✗ not done, ! side effect; grey days are still to come and are not shown.</p>
<div class="cal" role="list">{% for c in d.calendar %}<span role="listitem" class="{% if c.arm.is_none() %}future{% endif %}{% if c.today %} today{% endif %}" style="{% if let Some(i) = c.arm_index %}background:{{ colour(i) }}{% endif %}" title="{{ c.date }}{% if let Some(a) = c.arm %}: {{ a }}{% endif %}{% if let Some(x) = c.adherence %}, {{ x }}{% endif %}">{% if let Some(x) = c.adherence %}{% if x == "done" %}✓{% else if x == "not_done" %}✗{% else %}!{% endif %}{% endif %}</span>{% endfor %}</div>
<h2>Outcome: {{ d.outcome.0 }} ({{ d.outcome.1 }})</h2>
<figure>{{ outcome_svg|safe }}</figure>
<h2>Effects over time</h2>
{% for svg in effect_svgs %}<figure>{{ svg|safe }}</figure>{% endfor %}
{% for svg in prob_svgs %}<figure>{{ svg|safe }}</figure>{% endfor %}
<h2>Decisions</h2>
<table><thead><tr><th>period</th><th>when</th><th>action</th><th>rule</th></tr></thead><tbody>
{% for x in d.decisions %}<tr><td>{% if let Some(p) = x.period %}{{ p }}{% endif %}</td><td>{{ x.created_at }}</td><td>{{ x.action }}</td><td>{{ x.rule }}</td></tr>{% endfor %}
</tbody></table>
<h2>Fit diagnostics</h2>
{% if let Some(g) = d.diagnostics %}<p>{% if g.converged %}Converged{% else %}Not converged{% endif %}{% if let Some(r) = g.reason %}: {{ r }}{% endif %} · {{ g.evaluations }} posterior evaluations · {{ "{:.0}"|format(g.wall_ms) }} ms</p>{% else %}<p>No fit yet.</p>{% endif %}
<h2>Life cycle</h2>
<table><tbody>{% for e in d.events %}<tr><td>{% if let Some(l) = e.local_date %}{{ l }}{% endif %}</td><td>{{ e.to_status }}</td><td>{{ e.actor }}</td><td>{{ e.reason }}</td></tr>{% endfor %}</tbody></table>
<h2>Protocol</h2>
<pre>{{ d.protocol_toml }}</pre>
<p><a href="/api/trials/{{ d.id }}">JSON</a></p>
</body></html>"#
)]
struct TrialPage<'a> {
    d: &'a TrialDetail,
    actions: Vec<(&'static str, &'static str)>,
    csrf: String,
    legend: Vec<(String, &'static str)>,
    outcome_svg: String,
    effect_svgs: Vec<String>,
    prob_svgs: Vec<String>,
}

impl TrialPage<'_> {
    fn colour(&self, i: &usize) -> &'static str {
        crate::charts::arm_colour(*i)
    }
}

fn trial_page_html(d: &TrialDetail, csrf: String) -> Result<String, askama::Error> {
    use crate::charts;
    let mut spans: Vec<(f64, f64, usize)> = Vec::new();
    for (i, c) in d.calendar.iter().enumerate() {
        let Some(arm) = c.arm_index else { break };
        match spans.last_mut() {
            Some(last) if last.2 == arm && (last.1 - i as f64).abs() < 1e-9 => {
                last.1 = i as f64 + 1.0
            }
            _ => spans.push((i as f64, i as f64 + 1.0, arm)),
        }
    }
    let points: Vec<(f64, f64)> = d.path.iter().map(|p| (p.0, p.1)).collect();
    let latent: Vec<(f64, f64)> = d.path.iter().map(|p| (p.0, p.2)).collect();
    let outcome_svg = charts::outcome_chart(
        &format!("{} by day, shaded by arm", d.outcome.0),
        &spans,
        &points,
        &latent,
        &d.arms,
    );
    let n_effects = d.fits.last().map_or(0, |f| f.effects.len());
    let xs: Vec<f64> = d.fits.iter().map(|f| f.day).collect();
    let mid = d.outcome.2;
    let mut effect_svgs = Vec::new();
    let mut prob_svgs = Vec::new();
    for k in 0..n_effects {
        let name = d
            .fits
            .last()
            .map(|f| f.effects[k].0.clone())
            .unwrap_or_default();
        let pick = |f: &FitPoint| f.effects.get(k).cloned();
        let series: Vec<(String, f64, [f64; 2], f64, f64)> =
            d.fits.iter().filter_map(pick).collect();
        let mean: Vec<f64> = series.iter().map(|e| e.1).collect();
        let lo: Vec<f64> = series.iter().map(|e| e.2[0]).collect();
        let hi: Vec<f64> = series.iter().map(|e| e.2[1]).collect();
        effect_svgs.push(charts::band_chart(
            &format!("Effect of {name} (mean and 90% interval) as data came in"),
            "trial day of the fit",
            &xs,
            &mean,
            &lo,
            &hi,
            &[(0.0, "no effect"), (mid, "+MID"), (-mid, "−MID")],
        ));
        let p_mid: Vec<f64> = series.iter().map(|e| e.3).collect();
        let p_best: Vec<f64> = series.iter().map(|e| e.4).collect();
        prob_svgs.push(charts::band_chart(
            &format!("P({name} better by MID) (line) and P(best) (band edge) over time"),
            "trial day of the fit",
            &xs,
            &p_mid,
            &p_mid,
            &p_best,
            &[(0.95, "efficacy 0.95"), (0.05, "futility 0.05")],
        ));
    }
    let actions = match d.status.as_str() {
        "proposed" => vec![
            ("approve", "Approve (starts tomorrow)"),
            ("reject", "Reject"),
        ],
        "approved" => vec![("stop", "Cancel")],
        "running" => vec![
            ("pause", "Pause (holiday, illness)"),
            ("stop", "Stop the trial"),
        ],
        "paused" => vec![("resume", "Resume today"), ("stop", "Stop the trial")],
        _ => Vec::new(),
    };
    TrialPage {
        d,
        actions,
        csrf,
        legend: d
            .arms
            .iter()
            .enumerate()
            .map(|(i, a)| (a.clone(), crate::charts::arm_colour(i)))
            .collect(),
        outcome_svg,
        effect_svgs,
        prob_svgs,
    }
    .render()
}

async fn trial_page(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<i64>,
) -> Response {
    match trial_detail(&state, id).await {
        Ok(Some(d)) => match trial_page_html(&d, csrf_token(&state)) {
            Ok(html) => Html(html).into_response(),
            Err(e) => internal(&e.to_string()),
        },
        Ok(None) => (StatusCode::NOT_FOUND, format!("there is no trial {id}\n")).into_response(),
        Err(e) => internal(&e.to_string()),
    }
}

async fn trial_json(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<i64>,
) -> Response {
    match trial_detail(&state, id).await {
        Ok(Some(d)) => axum::Json(d).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, format!("there is no trial {id}\n")).into_response(),
        Err(e) => internal(&e.to_string()),
    }
}

/// Prometheus text format: table counts, outbox backlog, jobs, fits.
async fn metrics(State(state): State<AppState>) -> Response {
    let read = state
        .db
        .read(|s| Ok((s.counts()?, s.outbox_backlog()?, s.fit_stats()?)))
        .await;
    let (counts, backlog, (fit_n, fit_ms, not_converged)) = match read {
        Ok(x) => x,
        Err(e) => return internal(&e.to_string()),
    };
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, lines: Vec<(String, f64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in lines {
            out.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    metric(
        "nof1d_observations",
        "Observations stored.",
        "gauge",
        vec![(String::new(), counts.observations as f64)],
    );
    metric(
        "nof1d_trials",
        "Trials stored.",
        "gauge",
        vec![(String::new(), counts.trials as f64)],
    );
    metric(
        "nof1d_outbox_backlog",
        "Messages not yet delivered.",
        "gauge",
        vec![(String::new(), backlog as f64)],
    );
    metric(
        "nof1d_fits_total",
        "Fits stored.",
        "counter",
        vec![(String::new(), fit_n as f64)],
    );
    metric(
        "nof1d_fits_not_converged_total",
        "Fits that did not converge.",
        "counter",
        vec![(String::new(), not_converged as f64)],
    );
    metric(
        "nof1d_fit_duration_seconds_sum",
        "Total wall time of stored fits.",
        "counter",
        vec![(String::new(), fit_ms / 1000.0)],
    );
    let jobs = state.jobs.snapshot();
    metric(
        "nof1d_job_runs_total",
        "Job runs.",
        "counter",
        jobs.iter()
            .map(|(k, j)| (format!("{{job=\"{}\"}}", k.name()), j.runs as f64))
            .collect(),
    );
    metric(
        "nof1d_job_failures_total",
        "Job runs that failed.",
        "counter",
        jobs.iter()
            .map(|(k, j)| (format!("{{job=\"{}\"}}", k.name()), j.failures as f64))
            .collect(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// The anti-CSRF token of the forms: an HMAC of the daemon's link key over
/// the UTC date, so only a page fetched from this dashboard (same origin)
/// can know it; tokens from yesterday are accepted too, so a page left open
/// over midnight still works.
fn csrf_token_for(state: &AppState, day: jiff::civil::Date) -> String {
    state.link_key.tag(&format!("csrf|{day}"))
}

fn csrf_token(state: &AppState) -> String {
    csrf_token_for(state, state.clock.now().to_zoned(TimeZone::UTC).date())
}

fn csrf_ok(state: &AppState, given: &str) -> bool {
    let today = state.clock.now().to_zoned(TimeZone::UTC).date();
    let yesterday = today.yesterday().unwrap_or(today);
    [today, yesterday]
        .iter()
        .any(|d| constant_time_eq(csrf_token_for(state, *d).as_bytes(), given.as_bytes()))
}

/// A dashboard form's fields.
#[derive(serde::Deserialize)]
struct ActionForm {
    csrf: Option<String>,
}

/// POST `/trials/{id}/{approve|reject|pause|resume|stop}`: the life-cycle
/// actions, checked against the CSRF token, then a redirect to the trial.
async fn trial_action(
    State(state): State<AppState>,
    axum::extract::Path((id, action)): axum::extract::Path<(i64, String)>,
    axum::extract::Form(form): axum::extract::Form<ActionForm>,
) -> Response {
    if !form.csrf.as_deref().is_some_and(|t| csrf_ok(&state, t)) {
        return (
            StatusCode::FORBIDDEN,
            "missing or wrong form token (CSRF); reload the page and try again\n",
        )
            .into_response();
    }
    let now = state.clock.now();
    let actor = "dashboard";
    let result = state
        .db
        .write(move |s| {
            let r = match action.as_str() {
                "approve" => crate::actions::approve(s, id, None, actor, now).map(|_| ()),
                "reject" => crate::actions::stop(s, id, "rejected on the dashboard", actor, now),
                "pause" => crate::actions::pause(s, id, "paused on the dashboard", actor, now),
                "resume" => crate::actions::resume(s, id, None, actor, now).map(|_| ()),
                "stop" => crate::actions::stop(s, id, "stopped on the dashboard", actor, now),
                other => Err(crate::actions::ActionError::Refused(format!(
                    "unknown action {other:?}"
                ))),
            };
            r.map_err(|e| StoreError::Refused(e.to_string()))
        })
        .await;
    match result {
        Ok(()) => (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, format!("/trials/{id}"))],
        )
            .into_response(),
        Err(e) => (StatusCode::CONFLICT, format!("{e}\n")).into_response(),
    }
}

/// One source on the sources page.
#[derive(Debug, Clone, Serialize)]
pub struct SourceView {
    /// The stored source.
    pub source: crate::store::SourceRow,
    /// Its participant's key.
    pub participant: String,
    /// The participant's streams: key, observations, last local date.
    pub streams: Vec<(String, i64, Option<String>)>,
}

#[derive(Template)]
#[template(
    ext = "html",
    source = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sources — nof1d</title>
<style>body{font-family:system-ui,sans-serif;max-width:44rem;margin:1rem auto;padding:0 0.8rem;line-height:1.45;color:#222}
table{border-collapse:collapse;font-size:0.85rem;width:100%}td,th{border-bottom:1px solid #ddd;padding:0.2rem 0.3rem;text-align:left;vertical-align:top}.bad{color:#b00}</style></head>
<body><p><a href="/">← status</a></p><h1>Data sources</h1>
<form method="post" action="/sources/poll"><input type="hidden" name="csrf" value="{{ csrf }}"><button type="submit">Poll all sources now</button></form>
{% for v in views %}<h2>{{ v.source.name }} <small>({{ v.source.kind }}, {{ v.participant }})</small></h2>
<p>Last successful poll: {% if let Some(t) = v.source.last_success_at %}{{ t }}{% else %}never{% endif %}{% if let Some(c) = v.source.cursor %} · cursor {{ c }}{% endif %}</p>
{% if let Some(e) = v.source.last_error %}<p class="bad">Last error{% if let Some(t) = v.source.last_error_at %} ({{ t }}){% endif %}: {{ e }}</p>{% endif %}
<table><thead><tr><th>stream</th><th>observations</th><th>last day</th></tr></thead><tbody>
{% for st in v.streams %}<tr><td>{{ st.0 }}</td><td>{{ st.1 }}</td><td>{% if let Some(d) = st.2 %}{{ d }}{% endif %}</td></tr>{% endfor %}
</tbody></table>{% endfor %}
</body></html>"#
)]
struct SourcesPage {
    views: Vec<SourceView>,
    csrf: String,
}

async fn sources_page(State(state): State<AppState>) -> Response {
    let read = state
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
        .await;
    match read {
        Ok(views) => match (SourcesPage {
            views,
            csrf: csrf_token(&state),
        })
        .render()
        {
            Ok(html) => Html(html).into_response(),
            Err(e) => internal(&e.to_string()),
        },
        Err(e) => internal(&e.to_string()),
    }
}

/// POST `/sources/poll`: polls every source now (the usual job, run at
/// once; a poll already running is not doubled), then back to the page.
async fn sources_poll(
    State(state): State<AppState>,
    axum::extract::Form(form): axum::extract::Form<ActionForm>,
) -> Response {
    if !form.csrf.as_deref().is_some_and(|t| csrf_ok(&state, t)) {
        return (
            StatusCode::FORBIDDEN,
            "missing or wrong form token (CSRF); reload the page and try again\n",
        )
            .into_response();
    }
    crate::daemon::run_job(&state, crate::daemon::JobKind::Sources).await;
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, "/sources".to_string())],
    )
        .into_response()
}

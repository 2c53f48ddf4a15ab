//! The overview page, `/api/status`, `/healthz` and `/metrics`.

use askama::Template;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use jiff::tz::TimeZone;
use serde::Serialize;

use crate::service::app::AppState;
use crate::service::jobs::{JobStatus, next_assignment};
use crate::service::store::{Counts, StoreError};
use crate::trial::calendar::local_date;
use crate::trial::lifecycle::TrialStatus;
use crate::trial::protocol::Protocol;

use super::{Viewer, arm_label, internal, nav};

/// One participant on the status page.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    pub streams: Vec<StreamView>,
}

/// One of a participant's streams on the status page.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StreamView {
    /// Stream key.
    pub stream: String,
    /// Observations stored.
    pub observations: i64,
    /// The participant's local date of the latest one.
    pub last: Option<String>,
}

/// One arm's effect in the latest fit, on the status page.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EffectView {
    /// The arm's label as the viewer may see it (a code when blinded).
    pub arm: String,
    /// Posterior mean of the effect against the comparator.
    pub mean: f64,
    /// 90% interval.
    pub ci90: [f64; 2],
    /// P(better by the MID).
    pub p_better_by_mid: f64,
}

/// A job's name and how it has run.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobView {
    /// The job.
    pub name: String,
    /// Runs, failures, the last success, error and summary.
    #[serde(flatten)]
    pub status: JobStatus,
}

/// One trial on the status page. Only today and the past: nothing of future arms.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    /// The latest fit of the primary outcome, in numbers.
    pub latest_fit: Option<FitView>,
    /// Where the person stands, in words (empty before the first fit, and
    /// for a running blinded trial's participant).
    pub standing: Vec<String>,
    /// A running trial's outcome has had no data for the participant's
    /// `missing_data_days` or more: what to check.
    pub missing_data: Option<String>,
    /// Today's card (a running trial on one of its days): what to do, and
    /// the day's rating where the outcome is a self-report.
    pub today: Option<TodayCard>,
}

/// What a running trial asks of the person today, first on the overview
/// (phone first: one card, no table).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TodayCard {
    /// The local date (the report form's day).
    pub date: String,
    /// The arm as the participant sees it (a code in a blinded trial, the
    /// run-in named by its supply).
    pub arm: String,
    /// What to do.
    pub instructions: String,
    /// The self-report question and its whole-number scale, if any.
    pub question: Option<(String, i32, i32)>,
    /// Today's rating, once given.
    pub rating: Option<f64>,
    /// Today's answer about following the arm, once given.
    pub adherence: Option<String>,
}

/// The latest fit of a trial's primary outcome, for the status page.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FitView {
    /// Data through this local date.
    pub data_through: String,
    /// Observations used.
    pub observations: i64,
    /// Per non-comparator arm.
    pub effects: Vec<EffectView>,
    /// The fit's verdict.
    pub converged: bool,
}

/// Everything the status page and `/api/status` show.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    /// Trials waiting for approval (also among `trials`).
    pub proposals: Vec<TrialView>,
    /// Sources: name, kind, last success, last error.
    pub sources: Vec<crate::service::store::SourceRow>,
    /// Newest outbox messages (subject, status, where delivered).
    pub outbox: Vec<OutboxView>,
    /// Row counts.
    pub counts: Counts,
    /// Jobs.
    pub jobs: Vec<JobView>,
    /// The shape of this document: 2 since its arrays hold keyed objects
    /// (1 held `[label, mean, [low, high], p]` and `[name, status]` arrays).
    pub api_version: u32,
}

/// An outbox message on the status page (no bodies).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
pub async fn status(state: &AppState, viewer: &Viewer) -> Result<StatusView, StoreError> {
    let viewer = viewer.clone();
    let now = state.clock.now();
    let config = state.config.clone();
    let jobs = state
        .jobs
        .snapshot()
        .into_iter()
        .map(|(k, v)| JobView {
            name: k.name().to_string(),
            status: v,
        })
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
                    streams: s
                        .stream_counts(p.id)?
                        .into_iter()
                        .map(|(stream, observations, last)| StreamView {
                            stream,
                            observations,
                            last,
                        })
                        .collect(),
                });
            }
            let mut trials = Vec::new();
            for t in s.trials()? {
                let Some(p) = participants.iter().find(|p| p.id == t.participant_id) else {
                    continue;
                };
                let protocol = t.protocol().ok();
                let tz = TimeZone::get(&p.time_zone).ok();
                // A running blinded trial's estimates name the comparator:
                // its participant sees them at the end.
                let hidden = match &protocol {
                    Some(proto) if proto.blinded && !viewer.is_investigator() => {
                        !crate::service::actions::ended_for_good(s, &t, now)?
                    }
                    _ => false,
                };
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
                    status: t.status.to_string(),
                    protocol_hash: t.protocol_hash.to_string(),
                    day: today_row.map(|r| r.day + 1),
                    planned_days: schedule.len(),
                    block: today_row.and_then(|r| r.block.map(|b| b + 1)),
                    max_blocks: protocol.as_ref().map_or(0, |p| p.design.max_blocks),
                    today_arm: match (&protocol, today_row) {
                        (Some(proto), Some(r)) if r.arm < proto.arms.len() => {
                            let run_in = r.block.is_none();
                            Some(if run_in && !viewer.is_investigator() {
                                proto.day_label(r.arm, run_in).to_string()
                            } else {
                                arm_label(proto, r.arm, &viewer)
                            })
                        }
                        _ => None,
                    },
                    next_assignment: next,
                    progress_percent: (100 * elapsed / schedule.len().max(1)) as u32,
                    latest_fit: match &protocol {
                        Some(proto) if !hidden => s
                            .latest_fit(t.id, &proto.outcome.stream)?
                            .and_then(|f| fit_view(&f, proto, &viewer)),
                        _ => None,
                    },
                    standing: match (&protocol, today) {
                        (Some(proto), Some(today)) if !hidden => {
                            let label = |arm: usize| arm_label(proto, arm, &viewer);
                            crate::service::standing::of_trial(
                                s, &t, proto, &schedule, today, &label,
                            )?
                        }
                        _ => Vec::new(),
                    },
                    today: match (&protocol, today_row) {
                        (Some(proto), Some(r))
                            if t.status.as_str() == "running" && r.arm < proto.arms.len() =>
                        {
                            let rating = match &proto.outcome.self_report {
                                Some(_) => s
                                    .observations_on(p.id, &proto.outcome.stream, r.local_date)?
                                    .first()
                                    .map(|o| o.2),
                                None => None,
                            };
                            let adherence = s
                                .adherence(t.id)?
                                .into_iter()
                                .find(|(day, _)| *day == r.day)
                                .map(|(_, status)| status);
                            Some(TodayCard {
                                date: r.local_date.to_string(),
                                arm: proto.day_label(r.arm, r.block.is_none()).to_string(),
                                instructions: proto.arms[r.arm].instructions.clone(),
                                question: proto
                                    .outcome
                                    .self_report
                                    .as_ref()
                                    .map(|q| (q.question.clone(), q.min, q.max)),
                                rating,
                                adherence,
                            })
                        }
                        _ => None,
                    },
                    missing_data: match (&protocol, today) {
                        (Some(proto), Some(today)) => {
                            crate::service::standing::missing_data_warning(
                                s,
                                &t,
                                proto,
                                &schedule,
                                today,
                                config.missing_data_days(&p.key),
                            )?
                        }
                        _ => None,
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
                now: crate::service::store::ts(now),
                time_scale,
                participants: pviews,
                proposals: trials
                    .iter()
                    .filter(|t| t.status == TrialStatus::Proposed.as_str())
                    .cloned()
                    .collect(),
                trials,
                sources: s.sources()?,
                outbox,
                counts: s.counts()?,
                jobs,
                api_version: super::openapi::API_MAJOR,
            })
        })
        .await
}

fn fit_view(
    f: &crate::service::store::FitRow,
    protocol: &Protocol,
    viewer: &Viewer,
) -> Option<FitView> {
    let report = f.report().ok()?;
    let effects = report
        .effects
        .iter()
        .map(|e| {
            let label = protocol
                .arm_index(&e.arm)
                .map_or(e.arm.clone(), |i| arm_label(protocol, i, viewer));
            EffectView {
                arm: label,
                mean: e.mean,
                ci90: e.ci90,
                p_better_by_mid: e.p_better_by_mid,
            }
        })
        .collect();
    Some(FitView {
        data_through: f.data_through.to_string(),
        observations: f.observations,
        effects,
        converged: f.converged,
    })
}

#[derive(Template)]
#[template(
    ext = "html",
    source = r#"<h1>nof1d</h1>
<p class="muted">version {{ v.version }} · clock {{ v.now }}{% if v.time_scale != 1.0 %} · simulated time ×{{ v.time_scale }}{% endif %}</p>
{% for t in v.trials %}{% if let Some(c) = t.today %}<section class="today-card"><h2>Today: {{ c.arm }}</h2><p class="muted"><a href="/trials/{{ t.id }}">{{ t.title }}</a></p><p>{{ c.instructions }}</p>
{% if let Some(q) = c.question %}{% if let Some(r) = c.rating %}<p>Today's answer: {{ r }}. Thank you.</p>{% else %}<form method="post" action="/trials/{{ t.id }}/report" class="stacked"><input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="date" value="{{ c.date }}"><label for="rating-{{ t.id }}">{{ q.0 }}</label><select id="rating-{{ t.id }}" name="rating"><option value="">(not yet)</option>{% for x in q.1..=q.2 %}<option value="{{ x }}">{{ x }}</option>{% endfor %}</select>{% if c.adherence.is_none() %}<label for="adherence-{{ t.id }}">Did you follow today's assignment?</label><select id="adherence-{{ t.id }}" name="adherence"><option value="">(no answer)</option><option value="done">Yes, done</option><option value="not_done">No, could not do it</option><option value="side_effect">I had a side effect</option></select>{% endif %}<button type="submit">Record</button></form>{% endif %}{% endif %}
{% if let Some(a) = c.adherence %}<p class="muted">Followed today: {{ a }}.</p>{% endif %}</section>
{% endif %}{% endfor %}
{% for t in v.trials %}{% if (!t.standing.is_empty() || t.missing_data.is_some()) && t.status != "proposed" %}<section class="standing-card"><h2><a href="/trials/{{ t.id }}">{{ t.title }}</a>{% if t.status != "running" %} <span class="muted">({{ t.status }})</span>{% endif %}</h2>{% if let Some(w) = t.missing_data %}<p class="banner" role="alert">{{ w }}</p>{% endif %}{% for w in t.standing %}<p class="standing">{{ w }}</p>{% endfor %}</section>
{% endif %}{% endfor %}

<h2>Participants</h2>
<div class="scroll"><table class="cards"><tr class="head"><th>Name</th><th>Time zone</th><th>Local time</th><th>Data</th></tr>
{% for p in v.participants %}<tr><td data-label="Name">{{ p.name }}{% if p.is_demo %} <span class="muted">(demo)</span>{% endif %}</td><td data-label="Time zone">{{ p.time_zone }}</td><td data-label="Local time">{{ p.local_now }}</td>
<td data-label="Data">{% for s in p.streams %}{{ s.stream }}: {{ s.observations }} obs.{% if let Some(d) = s.last %}, last {{ d }}{% endif %}<br>{% endfor %}</td></tr>
{% endfor %}</table></div>

<h2>Trials</h2>
<div class="scroll"><table class="cards"><tr class="head"><th>Trial</th><th>Status</th><th>Progress</th><th>Today</th><th>Next assignment</th><th>Latest estimate</th></tr>
{% for t in v.trials %}{% if t.status != "proposed" %}<tr>
<td data-label="Trial"><a href="/trials/{{ t.id }}">{{ t.title }}</a><br><span class="muted">#{{ t.id }} · {{ t.participant }} · protocol {{ t.protocol_id }} · sha256 {{ t.protocol_hash[..12] }}</span></td>
<td data-label="Status">{{ t.status }}</td>
<td data-label="Progress">{% if let Some(d) = t.day %}day {{ d }} of {{ t.planned_days }}{% if let Some(b) = t.block %}, block {{ b }} of up to {{ t.max_blocks }}{% else %}, run-in{% endif %}{% else %}{{ t.planned_days }} days planned{% endif %}<br>
<span class="bar" role="img" aria-label="{{ t.progress_percent }} percent of planned days"><span style="width: {{ t.progress_percent }}%"></span></span></td>
<td data-label="Today">{% if let Some(a) = t.today_arm %}{{ a }}{% else %}–{% endif %}</td>
<td data-label="Next assignment">{% if let Some(n) = t.next_assignment %}{{ n }}{% else %}–{% endif %}</td>
<td data-label="Latest estimate">{% if let Some(f) = t.latest_fit %}{% for e in f.effects %}{{ e.arm }}: {{ "{:+.2}"|format(e.mean) }} [{{ "{:+.2}"|format(e.ci90[0]) }}, {{ "{:+.2}"|format(e.ci90[1]) }}], P(better by MID) {{ "{:.2}"|format(e.p_better_by_mid) }}<br>{% endfor %}
<span class="muted">{{ f.observations }} obs. through {{ f.data_through }}{% if !f.converged %} · <span class="err">not converged</span>{% endif %}</span>{% else %}–{% endif %}</td>
</tr>{% endif %}{% endfor %}</table></div>

<h2>Proposals waiting for you</h2>
{% if v.proposals.is_empty() %}<p class="muted">None.</p>{% else %}<ul>{% for t in v.proposals %}<li><a href="/proposals#trial-{{ t.id }}">{{ t.title }}</a> <span class="muted">for {{ t.participant }}</span></li>{% endfor %}</ul>{% endif %}

<h2>Sources</h2>
<div class="scroll"><table class="cards"><tr class="head"><th>Source</th><th>Kind</th><th>Last success</th><th>Last error</th></tr>
{% for s in v.sources %}<tr><td data-label="Source">{{ s.name }}</td><td data-label="Kind">{{ s.kind }}</td>
<td data-label="Last success">{% if let Some(a) = s.last_success_at %}{{ a }}{% else %}never{% endif %}</td>
<td data-label="Last error" class="err">{% if let Some(e) = s.last_error %}{{ e }}{% endif %}</td></tr>{% endfor %}</table></div>

<h2>Outbox</h2>
<div class="scroll"><table class="cards"><tr class="head"><th>Subject</th><th>To</th><th>Status</th><th>Delivered to</th></tr>
{% for m in v.outbox %}<tr><td data-label="Subject">{{ m.subject }}</td><td data-label="To">{{ m.recipient }}</td><td data-label="Status">{{ m.status }}{% if m.attempts > 1 %} ({{ m.attempts }} attempts){% endif %}{% if let Some(e) = m.last_error %}<br><span class="err">{{ e }}</span>{% endif %}</td>
<td data-label="Delivered to" class="muted">{% if let Some(d) = m.delivered_to %}{{ d }}{% endif %}</td></tr>{% endfor %}</table></div>

<h2>Jobs</h2>
<div class="scroll"><table class="cards"><tr class="head"><th>Job</th><th>Runs</th><th>Last success</th><th>Result</th></tr>
{% for j in v.jobs %}<tr><td data-label="Job">{{ j.name }}</td><td data-label="Runs">{{ j.status.runs }}{% if j.status.failures > 0 %} ({{ j.status.failures }} failed){% endif %}</td>
<td data-label="Last success">{% if let Some(a) = j.status.last_ok %}{{ a }}{% else %}–{% endif %}</td>
<td data-label="Result">{% if let Some(e) = j.status.last_error %}<span class="err">{{ e }}</span>{% else %}{% if let Some(s) = j.status.last_summary %}{{ s }}{% endif %}{% endif %}</td></tr>{% endfor %}</table></div>
<p class="muted">{{ v.counts.observations }} observations · {{ v.counts.outbox }} messages ({{ v.counts.outbox_pending }} not yet sent) · <a href="/api/status">JSON</a> · <a href="/healthz">health</a></p>"#
)]
struct StatusPage<'a> {
    v: &'a StatusView,
    /// The viewer's CSRF token, for the Today card's form.
    csrf: &'a str,
}

pub(super) async fn status_page(
    State(state): State<AppState>,
    axum::Extension(viewer): axum::Extension<Viewer>,
) -> Response {
    match status(&state, &viewer).await {
        Ok(view) => match super::render_page(
            "nof1d status",
            "wide",
            &nav(&viewer),
            &StatusPage {
                v: &view,
                csrf: &viewer.csrf,
            },
        ) {
            Ok(html) => Html(html).into_response(),
            Err(e) => internal(&e.to_string()),
        },
        Err(e) => internal(&e.to_string()),
    }
}

#[utoipa::path(get, path = "/api/status", tag = "dashboard",
    summary = "Overview: participants, trials (each with today's card and where it stands), proposals, sources, outbox, jobs",
    responses((status = 200, body = StatusView), (status = 401, description = "no credential")))]
pub(super) async fn status_json(
    State(state): State<AppState>,
    axum::Extension(viewer): axum::Extension<Viewer>,
) -> Response {
    match status(&state, &viewer).await {
        Ok(view) => axum::Json(view).into_response(),
        Err(e) => internal(&e.to_string()),
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    status: &'static str,
    version: &'static str,
    database: DbHealth,
    /// Emails and pushes retrying or given up on (`DeliveryHealth`): either
    /// makes the status "degraded".
    delivery: Option<crate::service::store::DeliveryHealth>,
    jobs: std::collections::BTreeMap<&'static str, JobStatus>,
    clock: String,
    time_scale: f64,
    uptime_seconds: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
struct DbHealth {
    ok: bool,
    outbox_backlog: Option<i64>,
    error: Option<String>,
}

/// `200` with `"ok"` (or `"degraded"` when a job's last run failed, or an
/// email or push failed twice in a row and waits for a retry, or was given
/// up on after being tried among those queued in the last two days) while
/// the database answers; `503` with `"error"` when it does not. A caller
/// without a credential (where sign-in is configured) gets counts, flags
/// and times but no error texts or job summaries.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    summary = "Liveness and job health (no credential needed)",
    responses((status = 200, body = Health, description = "ok, or degraded when a job's last run failed or delivery is in trouble"), (status = 503, body = Health, description = "the database does not answer")))]
pub(super) async fn healthz(
    State(state): State<AppState>,
    axum::Extension(viewer): axum::Extension<Viewer>,
) -> Response {
    let now = state.clock.now();
    let db = state
        .db
        .read(move |s| Ok((s.outbox_backlog()?, s.delivery_health(now)?)))
        .await;
    let jobs: std::collections::BTreeMap<_, _> = state
        .jobs
        .snapshot()
        .into_iter()
        .map(|(k, v)| {
            let v = if viewer.credentialed {
                v
            } else {
                v.without_texts()
            };
            (k.name(), v)
        })
        .collect();
    let job_failing = jobs.values().any(|j| j.failing);
    let (status, code, database, delivery) = match db {
        Ok((backlog, delivery)) => (
            if job_failing || delivery.retrying > 0 || delivery.failed_recently > 0 {
                "degraded"
            } else {
                "ok"
            },
            StatusCode::OK,
            DbHealth {
                ok: true,
                outbox_backlog: Some(backlog),
                error: None,
            },
            Some(delivery),
        ),
        Err(e) => (
            "error",
            StatusCode::SERVICE_UNAVAILABLE,
            DbHealth {
                ok: false,
                outbox_backlog: None,
                error: Some(if viewer.credentialed {
                    e.to_string()
                } else {
                    "the database does not answer (details for signed-in viewers)".to_string()
                }),
            },
            None,
        ),
    };
    let body = Health {
        status,
        version: env!("CARGO_PKG_VERSION"),
        database,
        delivery,
        jobs,
        clock: crate::service::store::ts(now),
        time_scale: state.clock.scale(),
        uptime_seconds: now.duration_since(state.started_at).as_secs(),
    };
    (code, axum::Json(body)).into_response()
}

/// Prometheus text format: table counts, outbox backlog, jobs, fits.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    summary = "Prometheus text format: observations, fits, fit durations, outbox backlog, job runs",
    responses((status = 200, content_type = "text/plain", body = String)))]
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let read = state
        .db
        .read(|s| {
            Ok((
                s.counts()?,
                s.outbox_backlog()?,
                s.fit_stats()?,
                s.decision_counts()?,
                s.source_run_totals()?,
            ))
        })
        .await;
    let (counts, backlog, (fit_n, fit_ms, not_converged), decisions, runs) = match read {
        Ok(x) => x,
        Err(e) => return internal(&e.to_string()),
    };
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, lines: Vec<(String, f64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (suffix_or_labels, v) in lines {
            out.push_str(&format!("{name}{suffix_or_labels} {v}\n"));
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
    // A Prometheus summary without quantiles: rate(sum)/rate(count) is the
    // mean fit time over any window (the "labels" here are the suffixes).
    metric(
        "nof1d_fit_duration_seconds",
        "Wall time of stored fits.",
        "summary",
        vec![
            ("_sum".to_string(), fit_ms / 1000.0),
            ("_count".to_string(), fit_n as f64),
        ],
    );
    metric(
        "nof1d_decisions_total",
        "Decisions taken, by action.",
        "counter",
        decisions
            .iter()
            .map(|(action, n)| (format!("{{action=\"{action}\"}}"), *n as f64))
            .collect(),
    );
    // Counts over the kept run log (the latest runs of each source).
    metric(
        "nof1d_source_runs",
        "Polls, pushes and imports in the run log, by way.",
        "gauge",
        runs.iter()
            .map(|r| (format!("{{way=\"{}\"}}", r.way), r.runs as f64))
            .collect(),
    );
    metric(
        "nof1d_source_run_failures",
        "Logged polls, pushes and imports that failed, by way.",
        "gauge",
        runs.iter()
            .map(|r| (format!("{{way=\"{}\"}}", r.way), r.failed as f64))
            .collect(),
    );
    metric(
        "nof1d_source_records",
        "Records in logged runs, by way and outcome.",
        "gauge",
        runs.iter()
            .flat_map(|r| {
                [
                    ("stored", r.stored),
                    ("updated", r.updated),
                    ("unchanged", r.unchanged),
                    ("refused", r.refused),
                ]
                .map(|(what, n)| {
                    (
                        format!("{{way=\"{}\",outcome=\"{what}\"}}", r.way),
                        n as f64,
                    )
                })
            })
            .collect(),
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

//! The proposals page: each proposed trial's hypothesis (rationale, the
//! proposer's uncertainty, the causal graph drawn), its priors and design,
//! the design's simulated error rates, and approve / edit / reject.
//!
//! The error rates come from [`simulate_pending_designs`], which the daemon
//! runs as a job: one simulation per protocol text, stored by hash, so an
//! edited proposal is simulated again and a page load never waits for one.

use askama::Template;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::engine::spec::Family;
use crate::service::app::AppState;
use crate::service::store::{
    DesignFailure, DesignSimulationRow, DesignWork, ProposalEdit, StoreError,
};
use crate::trial::causal::CausalGraph;
use crate::trial::lifecycle::TrialStatus;
use crate::trial::protocol::{Protocol, ProtocolHash};

use super::calibration::CalibrationView;
use super::progress::ProgressView;
use super::{Viewer, arm_label, csrf_refused, internal, nav};

/// The simulated operating characteristics shown for a design.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DesignRates {
    /// Virtual trials per condition.
    pub trials: usize,
    /// Stops for efficacy with no true effect: rate and Monte Carlo SE.
    pub false_stop: [f64; 2],
    /// Stops for efficacy (of the right arm) with the effect at the MID.
    pub power_at_mid: [f64; 2],
    /// Twice the MID (a ratio MID squared), with its unit, and the power
    /// there (none for a MID of no change, or a simulation from before).
    pub double: Option<(String, [f64; 2])>,
    /// Where that power is below 50%: the changes simulated to raise it.
    pub redesigns: Vec<RedesignLine>,
    /// Mean blocks run with no effect, and with the effect at the MID.
    pub mean_blocks: [f64; 2],
    /// The efficacy threshold these are for.
    pub efficacy: f64,
    /// Seconds the simulation took.
    pub wall_s: f64,
    /// Said when the power at twice the MID is below the usual 80%: how
    /// often such a trial would miss a real effect, and what raises it.
    pub power_warning: Option<String>,
}

/// A changed design simulated for a low-powered one.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RedesignLine {
    /// The change, in words.
    pub change: String,
    /// Days per period and most blocks of the changed design.
    pub period_days: u32,
    /// Most blocks of the changed design.
    pub max_blocks: u32,
    /// Its planned days at most.
    pub planned_days: u32,
    /// Its power at twice the MID, ± se.
    pub power: [f64; 2],
}

/// The warning shown beside a design whose power at twice the MID (or,
/// for a simulation from before that was reported, at the MID) is below
/// 80%, with the simulated changes that raise it where there are some.
fn power_warning(power: f64, at: &str, redesigns: &[RedesignLine]) -> Option<String> {
    (power < 0.8).then(|| {
        let level = if power < 0.5 { "Low power" } else { "Power below the usual 80%" };
        let better: Vec<String> = redesigns
            .iter()
            .filter(|r| r.power[0] > power)
            .map(|r| {
                format!(
                    "with {} ({} days at most) it would find it in {:.0}%",
                    r.change,
                    r.planned_days,
                    100.0 * r.power[0]
                )
            })
            .collect();
        let remedy = if better.is_empty() {
            "More blocks, longer periods (where the effect builds slowly) or a larger MID raise it".to_string()
        } else {
            let mut s = better.join("; ");
            if let Some(first) = s.get_mut(0..1) {
                first.make_ascii_uppercase();
            }
            format!("{s} (simulated at the protocol's stated thresholds, before calibration: the longer design's calibrated threshold will be stricter, so expect somewhat less)")
        };
        format!(
            "{level}: a true effect {at} would be found in only {:.0}% of trials like this one; the rest would end without an answer. {remedy}: edit the design below, and the simulation runs again.",
            100.0 * power
        )
    })
}

/// One proposal as the page and `/api/proposals` show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProposalView {
    /// Trial id.
    pub id: i64,
    /// Participant key.
    pub participant: String,
    /// Protocol id and title.
    pub protocol_id: String,
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// SHA-256 of the protocol text.
    pub protocol_hash: String,
    /// Who proposed it (`llm:<model>`, `library`; absent: a person).
    pub proposed_by: Option<String>,
    /// The effect prior is the proposer's (sd floored).
    pub prior_from_proposer: bool,
    /// What the proposer says to watch for.
    pub safety_notes: Vec<String>,
    /// Approval needs a clinician's agreement.
    pub needs_clinician: bool,
    /// Why it is worth testing.
    pub rationale: Option<String>,
    /// The proposer's uncertainty, 0 to 1.
    pub uncertainty: Option<f64>,
    /// The causal graph in words.
    pub graph: String,
    /// Arms as the viewer sees them.
    pub arms: Vec<String>,
    /// Outcome stream, unit, family, direction.
    pub outcome: String,
    /// Minimal important difference.
    pub mid: f64,
    /// Days per period.
    pub period_days: u32,
    /// Fewest and most blocks.
    pub blocks: [u32; 2],
    /// Planned days at most.
    pub planned_days: u32,
    /// The priors, in words.
    pub priors: Vec<String>,
    /// Decision thresholds (efficacy, futility, drop arm).
    pub thresholds: [f64; 3],
    /// Simulated error rates, once computed.
    pub simulated: Option<DesignRates>,
    /// The calibrated efficacy threshold, once computed.
    pub calibration: Option<CalibrationView>,
    /// The calibration as HTML (not in the JSON).
    #[serde(skip)]
    pub calibration_html: String,
    /// The null trials the calibration is refined to in the background once
    /// a trial of it is approved, where it will be
    /// (`jobs.refinement_trials`).
    pub refined_to: Option<usize>,
    /// Why the design's calibration failed, and whether the job gave up
    /// on it (an approved trial then starts on the stated thresholds).
    pub calibration_failure: Option<(String, bool)>,
    /// Why the design's simulation failed, and whether the job gave up on
    /// it (until someone asks for another try).
    pub simulation_failure: Option<(String, bool)>,
    /// The calibration's progress while it runs.
    pub calibration_progress: Option<ProgressView>,
    /// The simulation's progress while it runs.
    pub simulation_progress: Option<ProgressView>,
    /// The causal graph as SVG (not in the JSON).
    #[serde(skip)]
    pub graph_svg: String,
}

/// The rates of a stored `SimulationReport` (read as JSON: the report is
/// written by this build, but an older row may lack a field, and then the
/// page says "not simulated" rather than failing).
fn rates_of(row: &DesignSimulationRow) -> Option<DesignRates> {
    let r: serde_json::Value = serde_json::from_str(&row.report_json).ok()?;
    let d = &r["default"];
    let pair = |v: &serde_json::Value| Some([v["rate"].as_f64()?, v["se"].as_f64()?]);
    let power_at_mid = pair(&d["effect"]["stop_efficacy_right_arm"])?;
    let doubled = &r["double_effect"];
    let double = pair(&doubled["at_protocol"]["stop_efficacy_right_arm"]).map(|p| {
        let unit = r["effect_unit"].as_str().unwrap_or("");
        let effect = doubled["effect"].as_f64().unwrap_or(f64::NAN);
        (
            format!("{} {unit}", crate::trial::standing::trimmed(effect, 3))
                .trim_end()
                .to_string(),
            p,
        )
    });
    let redesigns: Vec<RedesignLine> = doubled["redesigns"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| {
            Some(RedesignLine {
                change: x["change"].as_str()?.to_string(),
                period_days: u32::try_from(x["period_days"].as_u64()?).ok()?,
                max_blocks: u32::try_from(x["max_blocks"].as_u64()?).ok()?,
                planned_days: u32::try_from(x["planned_days"].as_u64()?).ok()?,
                power: pair(&x["power"])?,
            })
        })
        .collect();
    let power_warning = match &double {
        Some((effect, p)) => {
            power_warning(p[0], &format!("of twice the MID ({effect})"), &redesigns)
        }
        None => power_warning(power_at_mid[0], "the size of the MID", &redesigns),
    };
    Some(DesignRates {
        trials: r["trials"].as_u64()? as usize,
        false_stop: pair(&d["no_effect"]["stop_efficacy"])?,
        power_at_mid,
        double,
        redesigns,
        mean_blocks: [
            d["no_effect"]["blocks"]["mean"].as_f64()?,
            d["effect"]["blocks"]["mean"].as_f64()?,
        ],
        efficacy: d["efficacy"].as_f64()?,
        wall_s: r["timing"]["wall_s"].as_f64()?,
        power_warning,
    })
}

/// `blind`: a blinded protocol seen by its participant, whose codes are
/// then not named (an effect is against the comparator, so naming the
/// codes that have one would name the comparator's).
fn priors_in_words(p: &Protocol, blind: bool) -> Vec<String> {
    let o = &p.outcome;
    let scale = match (o.family, o.scale) {
        (Family::Gaussian, Some(s)) => format!("S = {s} {}", o.unit),
        (Family::Gaussian, None) => "S = the run-in's standard deviation".to_string(),
        _ => "S = 1 on the link scale".to_string(),
    };
    let mut out = vec![format!("Scale: {scale}.")];
    if o.noise == crate::engine::spec::NoiseModel::StudentT {
        let prior = o
            .priors
            .noise_sd_scale
            .map_or("S".to_string(), |v| format!("{v} {}", o.unit));
        out.push(format!(
            "Measurement error: Student-t with {} degrees of freedom (an outlying day pulls the estimate little), scale ~ HalfNormal({prior}).",
            crate::engine::spec::STUDENT_T_DF
        ));
    }
    if blind {
        out.push(
            "Effects of the coded supplies against the comparator: the protocol's priors (the investigator sees them by arm).".to_string(),
        );
    }
    for (i, arm) in p.arms.iter().enumerate() {
        if blind || i == p.comparator_index() {
            continue;
        }
        let e = o.priors.effects.get(&arm.key).copied().or(o.priors.effect);
        out.push(match e {
            Some(e) => format!(
                "Effect of {}: Normal({}, {}).",
                p.display_label(i),
                e.mean,
                e.sd
            ),
            None => format!("Effect of {}: Normal(0, S).", p.display_label(i)),
        });
    }
    out.push(format!(
        "Onset/washout half-life: log-normal, median {} days.",
        o.priors.half_life_median_days.unwrap_or(1.0)
    ));
    out.push(format!(
        "Drift: Ornstein–Uhlenbeck, time scale median {} days.",
        o.priors.drift_time_median_days.unwrap_or(3.0)
    ));
    out
}

async fn proposal_views(
    state: &AppState,
    viewer: &Viewer,
) -> Result<Vec<ProposalView>, StoreError> {
    let viewer = viewer.clone();
    let board = state.designs.clone();
    let jobs = state.config.jobs.clone();
    state
        .db
        .read(move |s| {
            let participants = s.participants()?;
            let mut out = Vec::new();
            for t in s
                .trials()?
                .into_iter()
                .filter(|t| t.status == TrialStatus::Proposed)
            {
                let Ok(p) = t.protocol() else {
                    continue;
                };
                let blind = p.blinded && !viewer.is_investigator();
                let graph = CausalGraph::of(&p).ok();
                let h = p.hypothesis.as_ref();
                let stored = s.calibration(&t.protocol_hash)?;
                let refined_to = stored
                    .as_ref()
                    .and_then(|c| crate::service::jobs::refinement_size(&p, &jobs, c));
                let calibration = stored.as_ref().and_then(CalibrationView::of);
                let simulated = s
                    .design_simulation(&t.protocol_hash)?
                    .as_ref()
                    .and_then(rates_of);
                // A result stored, its reading is over (the job stores it
                // before it lets go of the reading).
                let calibration_progress = board
                    .reading(&t.protocol_hash, DesignWork::Calibration)
                    .filter(|_| calibration.is_none())
                    .map(|r| ProgressView::of(&r));
                let simulation_progress = board
                    .reading(&t.protocol_hash, DesignWork::Simulation)
                    .filter(|_| simulated.is_none())
                    .map(|r| ProgressView::of(&r));
                out.push(ProposalView {
                    id: t.id,
                    participant: participants
                        .iter()
                        .find(|x| x.id == t.participant_id)
                        .map(|x| x.key.clone())
                        .unwrap_or_default(),
                    protocol_id: p.id.clone(),
                    title: p.title.clone(),
                    description: p.description.trim().to_string(),
                    protocol_hash: t.protocol_hash.to_string(),
                    proposed_by: h.and_then(|h| h.proposed_by.clone()),
                    prior_from_proposer: h.is_some_and(|h| h.prior_from_proposer),
                    safety_notes: h.map(|h| h.safety_notes.clone()).unwrap_or_default(),
                    needs_clinician: p.needs_clinician,
                    rationale: h.map(|h| h.rationale.trim().to_string()),
                    uncertainty: h.and_then(|h| h.uncertainty),
                    graph: graph.as_ref().map(|g| g.describe()).unwrap_or_default(),
                    arms: if blind {
                        p.codes_in_order()
                    } else {
                        (0..p.arms.len())
                            .map(|i| arm_label(&p, i, &viewer))
                            .collect()
                    },
                    outcome: format!(
                        "{} ({}), {:?}, {:?} is better",
                        p.outcome.stream, p.outcome.unit, p.outcome.family, p.outcome.direction
                    )
                    .to_lowercase(),
                    mid: p.outcome.mid,
                    period_days: p.design.period_days,
                    blocks: [p.design.min_blocks, p.design.max_blocks],
                    planned_days: p.planned_days(),
                    priors: priors_in_words(&p, blind),
                    thresholds: [
                        p.decision.efficacy,
                        p.decision.futility,
                        p.decision.drop_arm,
                    ],
                    simulated,
                    simulation_failure: s
                        .design_failure(DesignWork::Simulation, &t.protocol_hash)?
                        .map(failure_view),
                    calibration_html: calibration
                        .as_ref()
                        .map(super::calibration::render)
                        .unwrap_or_default(),
                    refined_to,
                    calibration_failure: s
                        .design_failure(DesignWork::Calibration, &t.protocol_hash)?
                        .filter(|_| calibration.is_none())
                        .map(failure_view),
                    calibration,
                    calibration_progress,
                    simulation_progress,
                    graph_svg: graph
                        .map(|g| {
                            super::charts::causal_graph(&g, &format!("Causal graph: {}", p.title))
                        })
                        .unwrap_or_default(),
                });
            }
            Ok(out)
        })
        .await
}

#[derive(Template)]
#[template(
    ext = "html",
    source = r#"<h1>Proposals</h1>
{% if views.is_empty() %}<p>No trial is waiting for approval. <a href="/hypotheses">Ask a question</a>, or propose a protocol with <code>nof1d trial propose --participant P protocols/….toml</code>.</p>{% endif %}
{% if let Some(m) = message %}<p role="status">{{ m }}</p>{% endif %}
{% for v in views %}<section id="trial-{{ v.id }}">
<h2>{{ v.title }}</h2>
<p class="muted">Trial {{ v.id }} for {{ v.participant }} · protocol {{ v.protocol_id }} · sha256 <code style="word-break:break-all">{{ v.protocol_hash }}</code></p>
<p>{{ v.description }}</p>
<h3>Why test it</h3>
{% if let Some(by) = v.proposed_by %}<p class="muted">Proposed by {{ by }}{% if v.prior_from_proposer %}; its expected effect is the prior below (widened so it cannot decide alone), and every fit also shows the answer under a sceptical prior{% endif %}. <a href="/hypotheses">What was asked and answered</a>.</p>{% endif %}
{% if let Some(r) = v.rationale %}<p>{{ r }}</p>{% else %}<p class="muted">The proposer gave no rationale.</p>{% endif %}
<p>Proposer's uncertainty: {% if let Some(u) = v.uncertainty %}<span class="bar warn" role="img" aria-label="{{ "{:.0}"|format(u * 100.0) }} percent"><span style="width:{{ "{:.0}"|format(u * 100.0) }}%"></span></span> {{ "{:.0}"|format(u * 100.0) }}%{% else %}not stated{% endif %}</p>
{% if !v.safety_notes.is_empty() %}<p><strong>Safety:</strong></p><ul>{% for n in v.safety_notes %}<li>{{ n }}</li>{% endfor %}</ul>{% endif %}
<h3>Causal graph</h3>
<figure>{{ v.graph_svg|safe }}<figcaption class="muted">{{ v.graph }}. The effect is identified by design: randomisation decides the arm, so nothing else can.</figcaption></figure>
<h3>Design</h3>
<p>Arms: {% for a in v.arms %}{{ a }}{% if !loop.last %}, {% endif %}{% endfor %}. Outcome: {{ v.outcome }}; MID {{ v.mid }}.
{{ v.period_days }}-day periods, {{ v.blocks[0] }} to {{ v.blocks[1] }} blocks, at most {{ v.planned_days }} days.
Stops when P(better by MID) reaches {% if calibrating %}the calibrated threshold below (the protocol states {{ v.thresholds[0] }}){% else %}{{ v.thresholds[0] }}{% endif %} or, for futility, {% if calibrating %}falls to the calibrated futility threshold below (the protocol states {{ v.thresholds[1] }}){% else %}≤ {{ v.thresholds[1] }}{% endif %} for every arm.</p>
<h3>Priors</h3>
<ul>{% for p in v.priors %}<li>{{ p }}</li>{% endfor %}</ul>
<h3>How often this design is right (simulated)</h3>
{% if let Some(r) = v.simulated %}<table><tbody>
<tr><th>False stop for efficacy when nothing works</th><td>{{ "{:.1}"|format(r.false_stop[0] * 100.0) }}% ± {{ "{:.1}"|format(r.false_stop[1] * 100.0) }}</td></tr>
<tr><th>Finds an effect the size of the MID</th><td>{{ "{:.1}"|format(r.power_at_mid[0] * 100.0) }}% ± {{ "{:.1}"|format(r.power_at_mid[1] * 100.0) }}</td></tr>
{% if let Some((e, p)) = r.double %}<tr><th>Finds an effect twice the MID ({{ e }})</th><td>{{ "{:.1}"|format(p[0] * 100.0) }}% ± {{ "{:.1}"|format(p[1] * 100.0) }}</td></tr>{% endif %}
<tr><th>Mean blocks (no effect / effect at MID)</th><td>{{ "{:.1}"|format(r.mean_blocks[0]) }} / {{ "{:.1}"|format(r.mean_blocks[1]) }}</td></tr>
</tbody></table>{% if let Some(w) = r.power_warning %}<p class="banner">{{ w }}</p>{% endif %}{% if !r.redesigns.is_empty() %}<table><caption>Changes simulated to raise the power at twice the MID (at the stated thresholds, before calibration)</caption><thead><tr><th>change</th><th>days at most</th><th>finds twice the MID</th><th></th></tr></thead><tbody>{% for x in r.redesigns %}<tr><td>{{ x.change }}</td><td>{{ x.planned_days }}</td><td>{{ "{:.0}"|format(x.power[0] * 100.0) }}% ± {{ "{:.0}"|format(x.power[1] * 100.0) }}</td><td><form method="post" action="/proposals/{{ v.id }}/edit" class="inline"><input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="protocol_hash" value="{{ v.protocol_hash }}"><input type="hidden" name="period_days" value="{{ x.period_days }}"><input type="hidden" name="max_blocks" value="{{ x.max_blocks }}"><input type="hidden" name="mid" value="{{ v.mid }}"><button type="submit">Use this design</button></form></td></tr>{% endfor %}</tbody></table>{% endif %}<p class="muted">{{ r.trials }} virtual trials per condition at efficacy threshold {{ r.efficacy }}, ± one Monte Carlo standard error; {{ "{:.0}"|format(r.wall_s) }} s. A rule that asks for "better by the MID" finds an effect of exactly the MID about half the time at best, however long the trial: twice the MID is the figure to judge a design by. These figures use the protocol's stated thresholds; those a trial of this design decides with (efficacy, futility and, with three arms or more, arm drops) are calibrated below.</p>
{% else if let Some((why, given_up)) = v.simulation_failure %}<p class="banner">This design could not be simulated: {{ why }}. {% if given_up %}Edit the protocol to simulate it anew, or try again (after an upgrade, or once what made it fail is gone).{% else %}It will be tried again.{% endif %}</p>{% if given_up %}<form method="post" action="/proposals/{{ v.id }}/simulation/retry" class="inline"><input type="hidden" name="csrf" value="{{ csrf }}"><button type="submit">Try the simulation again</button></form>{% endif %}
{% else if let Some(g) = v.simulation_progress %}<p role="status">Being simulated now: {{ g.html()|safe }} <a href="/proposals/{{ v.id }}/progress">Follow it</a>.</p>
{% else %}<p class="muted">Waiting to be simulated in the background (one design at a time): a minute or two for a gaussian outcome, up to an hour for the other families. <a href="/proposals/{{ v.id }}/progress">Follow it</a>.</p>{% endif %}
<h3>When it stops: the threshold calibrated for this design</h3>
{% if !calibrating %}<p>Calibration is switched off (<code>jobs.calibrate = false</code>): a trial of this design decides on the protocol's stated threshold, {{ v.thresholds[0] }}, whatever its false-stop rate.</p>{% else if v.calibration.is_some() %}{{ v.calibration_html|safe }}{% if let Some(n) = v.refined_to %}<p class="muted">A quick calibration: once a trial of this design is approved, it is calibrated again on up to {{ n }} virtual trials with no effect in a scenario, in the background, which usually lowers the threshold and so raises the power. The trial decides with the refinement if it is done before its first look that could stop it (otherwise with the calibration above): either way, one rule fixed before any decision.</p>{% endif %}{% else if let Some((why, given_up)) = v.calibration_failure %}<p class="banner">This design could not be calibrated: {{ why }}. {% if given_up %}An approved trial of it starts on the protocol's stated thresholds, whose false-stop rate is not checked; edit the protocol to calibrate it, or try again (after an upgrade, or once what made it fail is gone).{% else %}It will be tried again.{% endif %}</p>{% if given_up %}<form method="post" action="/proposals/{{ v.id }}/calibration/retry" class="inline"><input type="hidden" name="csrf" value="{{ csrf }}"><button type="submit">Try the calibration again</button></form>{% endif %}{% else if let Some(g) = v.calibration_progress %}<p role="status">Being calibrated now on the stress suite: {{ g.html()|safe }} <a href="/proposals/{{ v.id }}/progress">Follow it</a>. An approved trial starts once its threshold is locked.</p>{% else %}<p class="muted">Waiting to be calibrated in the background on the stress suite (one design at a time: the refinements started trials wait on, then approved trials, first; a few minutes for a gaussian outcome, longer for counts and proportions). An approved trial starts once its threshold is locked. <a href="/proposals/{{ v.id }}/progress">Follow it</a>.</p>{% endif %}
<h3>Decide</h3>
<form method="post" action="/trials/{{ v.id }}/approve" style="display:inline"><input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="protocol_hash" value="{{ v.protocol_hash }}">{% if v.needs_clinician %}<label>This changes prescribed medication or needs a clinician: who agreed, and when <input name="clinician" required placeholder="Dr Lee, 3 Dec 2026"></label> {% endif %}<button type="submit">Approve (starts tomorrow)</button></form>
<form method="post" action="/trials/{{ v.id }}/reject" style="display:inline"><input type="hidden" name="csrf" value="{{ csrf }}"><button type="submit">Reject</button></form>
<form method="post" action="/proposals/{{ v.id }}/edit" class="inline"><input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="protocol_hash" value="{{ v.protocol_hash }}">
<p>Or change the design before approving:</p>
<label>Period (days) <input type="number" name="period_days" min="1" max="365" value="{{ v.period_days }}"></label>
<label>Most blocks <input type="number" name="max_blocks" min="1" max="100" value="{{ v.blocks[1] }}"></label>
<label>MID <input type="number" name="mid" step="any" min="0" value="{{ v.mid }}"></label>
<button type="submit">Save changes</button></form>
</section>{% endfor %}
<p><a href="/api/proposals">JSON</a></p>"#
)]
struct ProposalsPage {
    views: Vec<ProposalView>,
    csrf: String,
    message: Option<String>,
    /// `jobs.calibrate`: whether approved trials wait for a calibration.
    calibrating: bool,
}

async fn page(
    state: &AppState,
    viewer: &Viewer,
    code: StatusCode,
    message: Option<String>,
) -> Response {
    match proposal_views(state, viewer).await {
        Ok(views) => match super::render_page(
            "Proposals — nof1d",
            "",
            &nav(viewer),
            &ProposalsPage {
                views,
                csrf: viewer.csrf.clone(),
                message,
                calibrating: state.config.jobs.calibrate,
            },
        ) {
            Ok(html) => (code, Html(html)).into_response(),
            Err(e) => internal(&e.to_string()),
        },
        Err(e) => internal(&e.to_string()),
    }
}

/// GET `/proposals`.
pub(super) async fn proposals_page(
    State(state): State<AppState>,
    axum::Extension(viewer): axum::Extension<Viewer>,
) -> Response {
    page(&state, &viewer, StatusCode::OK, None).await
}

/// GET `/api/proposals`.
#[utoipa::path(get, path = "/api/proposals", tag = "dashboard",
    summary = "Trials waiting for approval, with hypothesis, causal graph, priors, simulated error rates (power at the MID and twice it, the changes that raise it) and calibration",
    responses((status = 200, body = Vec<ProposalView>)))]
pub(super) async fn proposals_json(
    State(state): State<AppState>,
    axum::Extension(viewer): axum::Extension<Viewer>,
) -> Response {
    match proposal_views(&state, &viewer).await {
        Ok(views) => axum::Json(views).into_response(),
        Err(e) => internal(&e.to_string()),
    }
}

/// The edit form's fields.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct EditForm {
    csrf: Option<String>,
    /// The sha256 of the protocol the page showed: an edit applies to the
    /// version it was made on, never silently over another one's edit.
    #[serde(default)]
    protocol_hash: Option<String>,
    period_days: String,
    max_blocks: String,
    mid: String,
}

/// The protocol text with the design edits applied, checked as a protocol,
/// and the changes in words. Comments of the original text are not kept:
/// the edited protocol is re-serialised.
fn edited_protocol(text: &str, form: &EditForm) -> Result<(String, String), String> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let period: u32 = form.period_days.trim().parse().map_err(|_| {
        format!(
            "period {:?} is not a whole number of days",
            form.period_days
        )
    })?;
    let blocks: u32 = form
        .max_blocks
        .trim()
        .parse()
        .map_err(|_| format!("blocks {:?} is not a whole number", form.max_blocks))?;
    let mid: f64 = form
        .mid
        .trim()
        .parse()
        .ok()
        .filter(|m: &f64| m.is_finite())
        .ok_or_else(|| format!("MID {:?} is not a number", form.mid))?;
    let mut said = Vec::new();
    let mut set = |section: &str, key: &str, value: toml::Value| -> Result<(), String> {
        let t = table
            .get_mut(section)
            .and_then(|v| v.as_table_mut())
            .ok_or_else(|| format!("the protocol has no [{section}]"))?;
        if t.get(key) != Some(&value) {
            said.push(format!("{section}.{key} = {value}"));
            t.insert(key.to_string(), value);
        }
        Ok(())
    };
    set(
        "design",
        "period_days",
        toml::Value::Integer(i64::from(period)),
    )?;
    set(
        "design",
        "max_blocks",
        toml::Value::Integer(i64::from(blocks)),
    )?;
    set("outcome", "mid", toml::Value::Float(mid))?;
    if said.is_empty() {
        return Err("nothing changed".into());
    }
    let new_text = toml::to_string(&table).map_err(|e| e.to_string())?;
    Protocol::parse(&new_text, "edited protocol").map_err(|e| e.to_string())?;
    Ok((new_text, said.join(", ")))
}

/// POST `/proposals/{id}/edit`: changes period length, blocks or MID of a
/// proposal; the protocol gets a new hash and is simulated again.
#[utoipa::path(post, path = "/proposals/{id}/edit", tag = "forms",
    summary = "Change a proposal's period length, most blocks or MID (new protocol hash, simulated again)",
    params(("id" = i64, Path, description = "trial id")),
    request_body(content = EditForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303), (status = 403), (status = 409), (status = 422)))]
pub(super) async fn edit_proposal(
    State(state): State<AppState>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    axum::extract::Path(id): axum::extract::Path<i64>,
    axum::extract::Form(form): axum::extract::Form<EditForm>,
) -> Response {
    if !viewer.csrf_ok(form.csrf.as_deref()) {
        return csrf_refused();
    }
    let trial = match state.db.read(move |s| s.trial(id)).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            return (StatusCode::NOT_FOUND, format!("there is no trial {id}\n")).into_response();
        }
        Err(e) => return internal(&e.to_string()),
    };
    let base = trial.protocol_hash.0.clone();
    if let Some(shown) = form.protocol_hash.as_deref().filter(|h| !h.is_empty())
        && shown != base
    {
        return (
            StatusCode::CONFLICT,
            format!(
                "trial {id}'s protocol was changed after this page was shown (sha256 {base} \
                 now): reload the page and make the change again\n"
            ),
        )
            .into_response();
    }
    let (text, summary) = match edited_protocol(&trial.protocol_toml, &form) {
        Ok(x) => x,
        Err(e) => {
            return page(
                &state,
                &viewer,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(format!("Trial {id} was not changed: {e}")),
            )
            .await;
        }
    };
    let hash = ProtocolHash::of(&text).0;
    let now = state.clock.now();
    let result = state
        .db
        .write(move |s| {
            s.edit_proposal(
                &ProposalEdit {
                    trial_id: id,
                    protocol_toml: &text,
                    protocol_hash: &hash,
                    // Edited from the text read above: not over an edit
                    // stored since.
                    edited_from: &base,
                    summary: &summary,
                    actor: "dashboard",
                },
                now,
            )
        })
        .await;
    match result {
        Ok(()) => back_to_proposal(id),
        Err(StoreError::Refused(e)) => (StatusCode::CONFLICT, format!("{e}\n")).into_response(),
        Err(e) => internal(&e.to_string()),
    }
}

/// A failure as the page says it: the error with its attempt count, and
/// whether the job gave up.
fn failure_view(f: DesignFailure) -> (String, bool) {
    (
        format!(
            "{} (attempt {} of {})",
            f.error,
            f.attempts,
            DesignFailure::ATTEMPTS
        ),
        f.given_up(),
    )
}

/// POST `/proposals/{id}/{work}/retry` (`work`: `calibration` or
/// `simulation` for a proposal, `refinement` for an approved trial while
/// no started trial of its design would take it): forgets that work's failure for the trial's design, once
/// the designs job has given up on it, so that the job tries it again
/// (after an upgrade, or once what made it fail is gone).
#[utoipa::path(post, path = "/proposals/{id}/{work}/retry", tag = "forms",
    summary = "Try a proposal's failed calibration or simulation, or a trial's failed refinement, again (the designs job gave up on it)",
    params(("id" = i64, Path, description = "trial id"),
        ("work" = String, Path, description = "`calibration`, `simulation` or `refinement`")),
    request_body(content = crate::web::access::CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303), (status = 403), (status = 404), (status = 409)))]
pub(super) async fn retry_design(
    State(state): State<AppState>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    axum::extract::Path((id, work)): axum::extract::Path<(i64, String)>,
    axum::extract::Form(form): axum::extract::Form<crate::web::access::CsrfForm>,
) -> Response {
    let Some(work) = DesignWork::parse(&work) else {
        return (
            StatusCode::NOT_FOUND,
            format!("no such work {work:?}: calibration, simulation or refinement\n"),
        )
            .into_response();
    };
    if !viewer.csrf_ok(form.csrf.as_deref()) {
        return csrf_refused();
    }
    match state.db.read(move |s| s.trial(id)).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return (StatusCode::NOT_FOUND, format!("there is no trial {id}\n")).into_response();
        }
        Err(e) => return internal(&e.to_string()),
    }
    if work != DesignWork::Simulation && !state.config.jobs.calibrate {
        return (
            StatusCode::CONFLICT,
            "calibration is switched off (jobs.calibrate = false): nothing would try it\n",
        )
            .into_response();
    }
    let now = state.clock.now();
    if work == DesignWork::Refinement {
        let jobs = state.config.jobs.clone();
        let refused = state
            .db
            .read(move |s| match s.trial(id)? {
                Some(t) => crate::service::jobs::refinement_retry_refused(s, &t, &jobs, now),
                None => Ok(Some(format!("there is no trial {id}"))),
            })
            .await;
        match refused {
            Ok(None) => {}
            Ok(Some(why)) => return (StatusCode::CONFLICT, format!("{why}\n")).into_response(),
            Err(e) => return internal(&e.to_string()),
        }
    }
    match state
        .db
        .write(move |s| s.retry_design(id, work, "dashboard", now))
        .await
    {
        // A refinement's trial is past its proposal: back to its page.
        Ok(()) if work == DesignWork::Refinement => (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, format!("/trials/{id}"))],
        )
            .into_response(),
        Ok(()) => back_to_proposal(id),
        Err(StoreError::Refused(e)) => (StatusCode::CONFLICT, format!("{e}\n")).into_response(),
        Err(e) => internal(&e.to_string()),
    }
}

/// After a proposal's form: back to it on the proposals page.
fn back_to_proposal(id: i64) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, format!("/proposals#trial-{id}"))],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_power_is_said_with_what_raises_it() {
        let at = "of twice the MID (2 points)";
        assert_eq!(power_warning(0.85, at, &[]), None);
        let low = power_warning(0.028, at, &[]).unwrap();
        assert!(
            low.starts_with(
                "Low power: a true effect of twice the MID (2 points) would be found in only 3%"
            ),
            "{low}"
        );
        assert!(low.contains("More blocks"));
        assert!(
            power_warning(0.6, at, &[])
                .unwrap()
                .starts_with("Power below the usual 80%")
        );
        // Simulated changes that do better are named with their power; one
        // that does not is left out.
        let line = |change: &str, power| RedesignLine {
            change: change.into(),
            period_days: 7,
            max_blocks: 12,
            planned_days: 182,
            power: [power, 0.07],
        };
        let said = power_warning(
            0.39,
            at,
            &[
                line("12 blocks at most instead of 6", 0.62),
                line("14-day periods instead of 7-day", 0.3),
            ],
        )
        .unwrap();
        assert!(
            said.contains("With 12 blocks at most instead of 6 (182 days at most) it would find it in 62% (simulated at the protocol's stated thresholds, before calibration"),
            "{said}"
        );
        assert!(
            !said.contains("14-day") && !said.contains("More blocks"),
            "{said}"
        );
    }

    #[test]
    fn an_edit_changes_the_design_and_is_checked_as_a_protocol() {
        let text = include_str!("../../protocols/meditation-anxiety.toml");
        let form = |p: &str, b: &str, m: &str| EditForm {
            csrf: None,
            protocol_hash: None,
            period_days: p.into(),
            max_blocks: b.into(),
            mid: m.into(),
        };
        let (new, said) = edited_protocol(text, &form("14", "4", "1.5")).expect("valid edit");
        let p = Protocol::parse(&new, "edited").expect("parses");
        assert_eq!(p.design.period_days, 14);
        assert_eq!(p.design.max_blocks, 4);
        assert_eq!(p.outcome.mid, 1.5);
        assert!(p.hypothesis.is_some(), "the hypothesis survives the edit");
        assert!(said.contains("design.period_days = 14"), "{said}");
        assert_eq!(
            edited_protocol(text, &form("7", "6", "1.0")).unwrap_err(),
            "nothing changed"
        );
        assert!(edited_protocol(text, &form("seven", "6", "1")).is_err());
        // Fewer blocks than min_blocks (3) is refused by the protocol checks.
        let err = edited_protocol(text, &form("7", "2", "1")).unwrap_err();
        assert!(err.contains("blocks"), "{err}");
    }
}

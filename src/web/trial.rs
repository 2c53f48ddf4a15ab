//! The trial page, its JSON, its life-cycle actions and the self-report
//! form for a missed or late day.

use askama::Template;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::service::app::AppState;
use crate::service::loaded::{LoadError, LoadedTrial};
use crate::service::store::{DesignWork, LinkOutcome, LinkWhat, StoreError};
use crate::trial::calendar::local_date;
use crate::trial::protocol::{Outcome, Protocol};

use crate::trial::prior_data::{compare, has_proposer_prior, sceptical_key};

use super::{Viewer, arm_label, csrf_refused, internal, nav};

/// How many fits the effect-history charts show (the newest).
const FIT_HISTORY: usize = 400;
/// How many past days the self-report form offers.
const REPORT_DAYS: usize = 14;

/// One calendar day on the trial page: past days by arm with adherence;
/// future days hidden from the participant (allocation concealment).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CalendarDay {
    /// Local date.
    pub date: String,
    /// The arm as the viewer sees it; None for days hidden from them.
    pub arm: Option<String>,
    /// Arm index for colour; None for hidden days.
    #[serde(skip)]
    pub arm_index: Option<usize>,
    /// After today (shown to the investigator only).
    pub future: bool,
    /// Adherence reported.
    pub adherence: Option<String>,
    /// `sent` or `missed`, once the day ran.
    pub run: Option<String>,
    /// Today.
    pub today: bool,
    /// A run-in day (before the first block): shown grey, never in an
    /// arm's colour, so that it does not read as the comparator's data.
    pub run_in: bool,
    /// The outcome's values that day, as the latest fit read them (not in
    /// the JSON: `path` has them).
    #[serde(skip)]
    pub values: String,
}

impl CalendarDay {
    /// The adherence answer in words ("not done" for `not_done`).
    pub fn adherence_words(&self) -> Option<String> {
        self.adherence.as_ref().map(|x| x.replace('_', " "))
    }
}

/// Where one arm's effect stood after one fit.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EffectPoint {
    /// The arm as the viewer sees it.
    pub arm: String,
    /// Posterior mean.
    pub mean: f64,
    /// 90% credible interval.
    pub ci90: [f64; 2],
    /// P(better than the comparator by at least the MID).
    pub p_better_by_mid: f64,
    /// P(this arm is best).
    pub p_best: f64,
}

/// One fit in the trial's history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FitPoint {
    /// Last local date of data.
    pub data_through: String,
    /// Trial day of that date.
    pub day: f64,
    /// Per non-comparator arm.
    pub effects: Vec<EffectPoint>,
    /// Converged.
    pub converged: bool,
}

/// One observation of the latest fit's smoothed path.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PathView {
    /// Trial day.
    pub day: f64,
    /// The observation.
    pub y: f64,
    /// Smoothed latent level under the arms as given.
    pub level: f64,
    /// Counterfactual level "always arm j", per arm.
    pub always: Vec<f64>,
}

/// A design refinement given up on, as a trial's page shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RefinementFailure {
    /// Why it failed, with its attempts.
    pub why: String,
    /// Why it may not be tried again now; `None`: the page offers to.
    pub retry_refused: Option<String>,
}

/// Everything the trial page shows (`/api/trials/{id}`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TrialDetail {
    /// Trial id.
    pub id: i64,
    /// Title.
    pub title: String,
    /// Protocol id.
    pub protocol_id: String,
    /// SHA-256 of the locked protocol.
    pub protocol_hash: String,
    /// The locked protocol text (withheld from the participant in a blinded
    /// trial: its codes are names, and which arm has which, drawn for this
    /// trial, is the investigator's to see).
    pub protocol_toml: Option<String>,
    /// Life-cycle status.
    pub status: String,
    /// Why it stopped.
    pub stop_reason: Option<String>,
    /// Until when a stop by hand can be undone (the participant's clock),
    /// while it can.
    pub undo_until: Option<String>,
    /// A running trial's outcome has had no data for the participant's
    /// `missing_data_days` or more: what to check.
    pub missing_data: Option<String>,
    /// The viewer's role.
    pub view: super::Role,
    /// Arms as the viewer sees them (in the blinded view, the codes in order).
    pub arms: Vec<String>,
    /// The blinded view: a running blinded trial's participant, who sees no
    /// estimate (each is against the comparator, so it would name it).
    pub estimates_hidden: bool,
    /// A blinded trial's key ("Box 1 = ...; Box 2 = ..."): for the
    /// investigator, and for the participant once the trial has ended.
    pub key: Option<String>,
    /// Outcome stream, unit and MID as the protocol states it.
    pub outcome: (String, String, f64),
    /// The effect charts' reference lines, on the link scale the effects
    /// are drawn on: no effect, better by the MID, worse by the MID.
    #[serde(skip)]
    pub effect_lines: Vec<(f64, String)>,
    /// The effect charts' value axis: the outcome's unit for a gaussian
    /// outcome, else a log ratio (the model's scale).
    #[serde(skip)]
    pub effect_axis: String,
    /// The efficacy and futility thresholds the trial decides with (the
    /// ones it locked, else the protocol's), on P(better by MID).
    pub thresholds: (f64, f64),
    /// With three arms or more: drop an arm when P(best) is below this (the
    /// locked one, else the protocol's).
    pub drop_arm: Option<f64>,
    /// Where the efficacy threshold came from, in words; none before the start.
    pub threshold_source: Option<String>,
    /// Whether the trial decides with its design's calibrated threshold.
    pub calibrated: bool,
    /// The design's calibration, once computed.
    pub calibration: Option<super::calibration::CalibrationView>,
    /// Where the person stands, per arm, in words (none before the first
    /// fit, and while a blinded trial hides its estimates).
    pub standing: Vec<String>,
    /// Why the design's calibration failed, where the trial gave up
    /// waiting for it and decides on the protocol's stated thresholds.
    pub calibration_failure: Option<String>,
    /// The design's refinement, given up on after its attempts, where the
    /// trial decides (or will) with its quick calibration instead.
    pub refinement_failure: Option<RefinementFailure>,
    /// An approved trial whose start waits for its design's calibration
    /// (calibration on, none stored, not given up on).
    pub waits_for_calibration: bool,
    /// The outcome is a self-report with this range (for the form).
    pub self_report: Option<(i32, i32)>,
    /// Days of the schedule.
    pub calendar: Vec<CalendarDay>,
    /// Fit history of the primary outcome, oldest first.
    pub fits: Vec<FitPoint>,
    /// Latest fit's diagnostics.
    #[schema(value_type = Option<Object>)]
    pub diagnostics: Option<crate::engine::fit::Diagnostics>,
    /// Latest fit's effects in the person's units (log and logit links):
    /// the arm as the viewer sees it, and the sentence.
    pub natural: Vec<(String, String)>,
    /// A stopped trial's result in words and who wrote it (`template` or
    /// `llm:<model>`); withheld from the participant of a blinded trial,
    /// as it names the arms.
    pub conclusion: Option<(String, String)>,
    /// Where the effect prior is a proposer's: per arm, the answer with it
    /// and with a sceptical prior, and the prior–data conflict, in words.
    pub prior_data: Vec<String>,
    /// Latest fit's smoothed path with the counterfactuals.
    pub path: Vec<PathView>,
    /// Decisions, oldest first.
    pub decisions: Vec<crate::service::store::DecisionRow>,
    /// Life-cycle changes.
    pub events: Vec<crate::service::store::TrialEventRow>,
}

/// Why a trial's page could not be built.
#[derive(Debug, thiserror::Error)]
enum PageError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored trial could not be loaded (its protocol, participant or zone).
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// The trial, its protocol and its participant's zone.
async fn trial_context(
    state: &AppState,
    id: i64,
) -> Result<Option<(crate::service::store::TrialRow, Protocol, TimeZone)>, PageError> {
    state
        .db
        .read_with(move |s| {
            let Some(row) = s.trial(id)? else {
                return Ok(None);
            };
            let participants: Vec<_> = s.participant(row.participant_id)?.into_iter().collect();
            let trial = LoadedTrial::load(row, &participants)?;
            Ok(Some((trial.row, trial.protocol, trial.zone)))
        })
        .await
}

async fn trial_detail(
    state: &AppState,
    id: i64,
    viewer: &Viewer,
) -> Result<Option<TrialDetail>, PageError> {
    let Some((trial, protocol, tz)) = trial_context(state, id).await? else {
        return Ok(None);
    };
    let now = state.clock.now();
    let today = local_date(now, &tz);
    let viewer = viewer.clone();
    let config = state.config.clone();
    Ok(state
        .db
        .read(move |s| {
            let undo_until = crate::service::actions::undoable_stop(s, id, now)?
                .map(|u| when_local(u.until, &tz));
            // A blinded trial's participant, until it ends, sees codes only,
            // coloured by code, no run-in code, and no estimates (they are
            // against the comparator, so they would name it).
            let blind = protocol.blinded
                && !viewer.is_investigator()
                && !crate::service::actions::ended_for_good(s, &trial, now)?;
            let label = |arm: usize| arm_label(&protocol, arm, &viewer);
            let by_key = |key: &str| protocol.arm_index(key).map_or(key.to_string(), label);
            let rows = s.schedule(id)?;
            let runs: std::collections::BTreeMap<_, _> = s.daily_runs(id)?.into_iter().collect();
            let adherence: std::collections::BTreeMap<u32, String> =
                s.adherence(id)?.into_iter().collect();
            let calendar = rows
                .iter()
                .map(|r| {
                    let future = r.local_date > today;
                    let visible = !future || viewer.is_investigator();
                    let run_in = r.block.is_none();
                    // A stored schedule that names an arm the protocol does
                    // not have (a damaged row) shows "?" rather than failing.
                    let (arm, arm_index) = if r.arm >= protocol.arms.len() {
                        ("?".to_string(), None)
                    } else if blind {
                        let slot = (!run_in).then(|| protocol.display_slot(r.arm));
                        (protocol.day_label(r.arm, run_in).to_string(), slot)
                    } else {
                        (label(r.arm), Some(r.arm))
                    };
                    CalendarDay {
                        date: r.local_date.to_string(),
                        arm: visible.then_some(arm),
                        arm_index: arm_index.filter(|_| visible),
                        future,
                        adherence: adherence.get(&r.day).cloned(),
                        run: runs.get(&r.local_date).cloned(),
                        today: r.local_date == today,
                        run_in,
                        values: String::new(),
                    }
                })
                .collect();
            let start = rows.first().map(|r| r.local_date);
            let day_of = |d: &str| -> f64 {
                match (start, d.parse::<Date>()) {
                    (Some(s0), Ok(d)) => crate::trial::calendar::days_between(s0, d) as f64,
                    _ => 0.0,
                }
            };
            let stream = &protocol.outcome.stream;
            let mut fits = Vec::new();
            for (through, effects_json, converged) in
                s.fit_effect_history(id, stream, FIT_HISTORY)?
            {
                let Ok(effects) = serde_json::from_str::<
                    Vec<crate::engine::inference::EffectSummary>,
                >(&effects_json) else {
                    continue;
                };
                fits.push(FitPoint {
                    day: day_of(&through),
                    data_through: through,
                    effects: effects
                        .iter()
                        .map(|e| EffectPoint {
                            arm: by_key(&e.arm),
                            mean: e.mean,
                            ci90: e.ci90,
                            p_better_by_mid: e.p_better_by_mid,
                            p_best: e.p_best,
                        })
                        .collect(),
                    converged,
                });
            }
            let latest = s.latest_fit(id, stream)?.and_then(|f| f.report().ok());
            let natural: Vec<(String, String)> = latest
                .iter()
                .flat_map(|r| &r.effects)
                .filter_map(|e| Some((by_key(&e.arm), e.natural.as_ref()?.describe())))
                .collect();
            let prior_data: Vec<String> = if has_proposer_prior(&protocol) {
                let sceptical = s
                    .latest_fit(id, &sceptical_key(stream))?
                    .and_then(|f| f.report().ok());
                let unit = if protocol.outcome.family == crate::engine::spec::Family::Gaussian {
                    protocol.outcome.unit.clone()
                } else {
                    "(log ratio)".to_string()
                };
                match (&latest, sceptical) {
                    (Some(main), Some(sc)) => compare(&protocol, main, &sc)
                        .into_iter()
                        .map(|mut a| {
                            a.arm = by_key(&a.arm);
                            a.describe(&unit)
                        })
                        .collect(),
                    _ => vec![
                        "The proposer's expected effect is compared with your data once the first fits exist."
                            .to_string(),
                    ],
                }
            } else {
                Vec::new()
            };
            // The person's usual level by the latest fit: its baseline mean and
            // median drift sd.
            let usual = latest.as_ref().map(|r| {
                let drift = r
                    .hyperparameters
                    .iter()
                    .find(|h| h.name == "drift_sd")
                    .map_or(0.0, |h| h.median);
                (r.baseline[0], drift)
            });
            let lines = effect_lines(&protocol.outcome, usual);
            // "Where you stand": each arm's effect in words, first on the
            // page, from the fit the trial decides on (not in the blinded view).
            let standing = if blind {
                Vec::new()
            } else {
                crate::service::standing::of_trial(s, &trial, &protocol, &rows, today, &label)?
            };
            let missing_data = crate::service::standing::missing_data_warning(
                s,
                &trial,
                &protocol,
                &rows,
                today,
                s.participant(trial.participant_id)?
                    .and_then(|p| config.missing_data_days(&p.key)),
            )?;
            let (diagnostics, path) = match latest {
                Some(r) => (
                    Some(r.diagnostics),
                    r.path
                        .into_iter()
                        .map(|p| PathView {
                            day: p.t,
                            y: p.y,
                            level: p.latent,
                            always: p.counterfactual,
                        })
                        .collect(),
                ),
                None => (None, Vec::new()),
            };
            let show_protocol = !protocol.blinded || viewer.is_investigator();
            let (fits, natural, prior_data, path) = if blind {
                (Vec::new(), Vec::new(), Vec::new(), Vec::new())
            } else {
                (fits, natural, prior_data, path)
            };
            // In the blinded view the arms are listed by colour slot: the
            // codes in order.
            let arms = if blind {
                protocol.codes_in_order()
            } else {
                (0..protocol.arms.len()).map(label).collect()
            };
            let key = (viewer.is_investigator() || !blind)
                .then(|| protocol.code_key())
                .flatten();
            let calibration = s.calibration(&trial.protocol_hash)?;
            // A trial that took its design's refinement shows that one.
            let refined = match (&calibration, s.refinement_taken(&trial)?) {
                (Some(first), Some(r)) => super::calibration::CalibrationView::of_refinement(
                    &r,
                    first,
                    trial.thresholds_refined_at.as_deref().unwrap_or_default(),
                ),
                _ => None,
            };
            let given_up = s
                .design_failure(DesignWork::Calibration, &trial.protocol_hash)?
                .filter(|f| f.given_up());
            // Only where the trial decides, or will, with the quick
            // calibration the refinement would have replaced.
            let on_quick_calibration = trial.thresholds_refined_at.is_none()
                && match trial.status {
                    crate::trial::lifecycle::TrialStatus::Approved => true,
                    crate::trial::lifecycle::TrialStatus::Running
                    | crate::trial::lifecycle::TrialStatus::Paused => trial.locked.is_some_and(
                        |l| l.source == crate::trial::decide::ThresholdSource::Calibrated,
                    ),
                    _ => false,
                };
            let refinement_failure = match s
                .design_failure(DesignWork::Refinement, &trial.protocol_hash)?
                .filter(|f| f.given_up() && on_quick_calibration)
            {
                Some(f) => Some(RefinementFailure {
                    why: f.error,
                    retry_refused: crate::service::jobs::refinement_retry_refused(
                        s,
                        &trial,
                        &config.jobs,
                        now,
                    )?,
                }),
                None => None,
            };
            Ok(Some(TrialDetail {
                id,
                title: protocol.title.clone(),
                protocol_id: trial.protocol_id.clone(),
                protocol_hash: trial.protocol_hash.to_string(),
                protocol_toml: show_protocol.then(|| trial.protocol_toml.clone()),
                status: trial.status.to_string(),
                stop_reason: trial.stop_reason.clone(),
                undo_until,
                missing_data,
                view: viewer.role,
                arms,
                estimates_hidden: blind,
                key,
                outcome: (
                    protocol.outcome.stream.clone(),
                    protocol.outcome.unit.clone(),
                    protocol.outcome.mid,
                ),
                effect_lines: lines,
                effect_axis: if protocol.outcome.family == crate::engine::spec::Family::Gaussian {
                    match protocol.outcome.unit.trim() {
                        "" => "effect".to_string(),
                        unit => format!("effect ({unit})"),
                    }
                } else {
                    "effect (log ratio)".to_string()
                },
                thresholds: (
                    trial
                        .locked
                        .map_or(protocol.decision.efficacy, |l| l.efficacy),
                    trial
                        .locked
                        .and_then(|l| l.futility)
                        .unwrap_or(protocol.decision.futility),
                ),
                drop_arm: (protocol.arms.len() >= 3).then(|| {
                    crate::trial::decide::trial_thresholds(
                        &protocol.decision,
                        (protocol.design.min_blocks, protocol.design.max_blocks),
                        trial.locked,
                    )
                    .drop_arm
                }),
                calibrated: trial
                    .locked
                    .is_some_and(|l| l.source == crate::trial::decide::ThresholdSource::Calibrated),
                threshold_source: trial.locked.map(|l| match l.boundary {
                    crate::trial::decide::Boundary::Constant => l.source.describe().to_string(),
                    crate::trial::decide::Boundary::Decreasing => format!(
                        "{}; this is the last block's threshold, and earlier looks are stricter",
                        l.source.describe()
                    ),
                }),
                waits_for_calibration: trial.status == crate::trial::lifecycle::TrialStatus::Approved
                    && config.jobs.calibrate
                    && calibration.is_none()
                    && given_up.is_none(),
                calibration: refined.or_else(|| {
                    calibration
                        .as_ref()
                        .and_then(super::calibration::CalibrationView::of)
                }),
                // Only where the trial gave up waiting for it and started on
                // the stated thresholds.
                calibration_failure: given_up
                    .filter(|_| {
                        trial.locked.is_some_and(|l| {
                            l.source == crate::trial::decide::ThresholdSource::Protocol
                        })
                    })
                    .map(|f| f.error),
                refinement_failure,
                standing,
                self_report: protocol
                    .outcome
                    .self_report
                    .as_ref()
                    .map(|r| (r.min, r.max)),
                calendar,
                fits,
                diagnostics,
                natural,
                conclusion: if show_protocol {
                    crate::service::hypotheses::conclusion_text(s, id)?
                } else {
                    None
                },
                prior_data,
                path,
                decisions: s
                    .decisions(id)?
                    .into_iter()
                    .map(|d| conceal_decision(d, &protocol, &viewer, blind))
                    .collect(),
                events: s.trial_events(id)?,
            }))
        })
        .await?)
}

#[derive(Template)]
#[template(
    ext = "html",
    source = r#"<h1>{{ d.title }}</h1>
<p>Trial {{ d.id }} · {{ d.status }}{% if let Some(r) = d.stop_reason %} ({{ r }}){% endif %} · protocol {{ d.protocol_id }} · sha256 <code style="word-break:break-all">{{ d.protocol_hash }}</code></p>
{% if !actions.is_empty() %}<div>{% for a in actions %}{% if a.0 == "stop" || a.0 == "pause" %}<form method="get" action="/trials/{{ d.id }}/confirm/{{ a.0 }}" style="display:inline"><button type="submit">{{ a.1 }}…</button></form> {% else %}<form method="post" action="/trials/{{ d.id }}/{{ a.0 }}" style="display:inline"><input type="hidden" name="csrf" value="{{ csrf }}">{% if a.0 == "approve" %}<input type="hidden" name="protocol_hash" value="{{ d.protocol_hash }}">{% endif %}<button type="submit">{{ a.1 }}</button></form> {% endif %}{% endfor %}</div>{% endif %}
{% if d.status == "paused" %}<p class="banner" role="status">This trial is paused: no assignment is sent and nothing is decided until it is resumed.</p>{% else if d.status == "stopped" %}<p class="banner" role="status">This trial has ended{% if let Some(r) = d.stop_reason %} ({{ r }}){% endif %}: nothing more is asked of you.</p>{% if let Some(u) = d.undo_until %}<form method="post" action="/trials/{{ d.id }}/undo"><input type="hidden" name="csrf" value="{{ csrf }}"><button type="submit">Undo the stop</button> possible until {{ u }}.</form>{% endif %}{% endif %}
{% if let Some(w) = d.missing_data %}<p class="banner" role="alert">{{ w }}</p>{% endif %}
{% if !d.standing.is_empty() %}<h2>Where you stand</h2>{% for w in d.standing %}<p class="standing">{{ w }}</p>{% endfor %}{% endif %}
{% if d.status == "running" || d.status == "paused" %}<p><a href="/trials/{{ d.id }}/report">Missed an email? Enter a rating or whether you followed the day's arm</a></p>{% endif %}
<h2>Schedule</h2>
<p>Each square is a day, coloured by arm ({% if has_run_in %}<span style="color:{{ run_in_colour }}">■</span> run-in {% endif %}{% for l in legend %}<span style="color:{{ l.1 }}">■</span> {{ l.0 }} {% endfor %}); ✓ done, ✗ not done, ! side effect; {% if investigator %}faded days are still to come (the participant does not see them){% else %}light grey days are still to come and are not shown{% endif %}.</p>
<div class="cal" role="list">{% for c in calendar %}<span role="listitem" class="{% if c.arm.is_none() %}hidden{% else if c.run_in %}runin{% endif %}{% if c.future %} future{% endif %}{% if c.today %} today{% endif %}" style="{% if !c.run_in %}{% if let Some(i) = c.arm_index %}background:{{ colour(i) }}{% endif %}{% endif %}" aria-label="{{ c.date }}{% if let Some(a) = c.arm %}: {% if c.run_in %}run-in, {% endif %}{{ a }}{% endif %}{% if let Some(x) = c.adherence_words() %}, {{ x }}{% endif %}" title="{{ c.date }}{% if let Some(a) = c.arm %}: {{ a }}{% endif %}{% if let Some(x) = c.adherence %}, {{ x }}{% endif %}">{% if let Some(x) = c.adherence %}{% if x == "done" %}✓{% else if x == "not_done" %}✗{% else %}!{% endif %}{% endif %}</span>{% endfor %}</div>
<details class="days"><summary>Day by day</summary><div class="scroll"><table><thead><tr><th>date</th><th>arm</th><th>followed</th><th>email</th>{% if has_values %}<th>{{ d.outcome.0 }}</th>{% endif %}</tr></thead><tbody>
{% for c in calendar %}{% if let Some(a) = c.arm %}<tr{% if c.today %} class="today-row"{% endif %}><td>{{ c.date }}</td><td>{% if c.run_in %}run-in ({{ a }}){% else %}{{ a }}{% endif %}</td><td>{% if let Some(x) = c.adherence_words() %}{{ x }}{% endif %}</td><td>{% if let Some(r) = c.run %}{{ r }}{% endif %}</td>{% if has_values %}<td>{{ c.values }}</td>{% endif %}</tr>{% endif %}{% endfor %}
</tbody></table></div></details>
<h2>Outcome: {{ d.outcome.0 }} ({{ d.outcome.1 }})</h2>
<figure>{{ outcome_svg|safe }}</figure>
{% if let Some(svg) = counterfactual_svg %}<h2>What if every day had been one arm</h2>
<p>The smoothed level the model expects had every day been the same arm, over the days observed.</p>
<figure>{{ svg|safe }}</figure>{% endif %}
{% if let Some(k) = d.key %}<p>Key of this trial's codes: {{ k }}.{% if investigator && d.status != "stopped" %} The participant sees it when the trial ends.{% endif %}</p>{% endif %}
<h2>Effects over time</h2>
{% if d.estimates_hidden %}<p>{{ blinded_estimates }}</p>{% else if effect_svgs.is_empty() %}<p>No fit yet: the first comes once there is data.</p>{% endif %}
{% if !d.natural.is_empty() %}<p>In your units, by the latest fit:</p><ul>{% for n in d.natural %}<li>{{ n.0 }}: {{ n.1 }}</li>{% endfor %}</ul>{% endif %}
{% if let Some(c) = d.conclusion %}<h3>Conclusion</h3><p>{{ c.0 }}</p><p class="muted">Written by {{ c.1 }}.</p>{% endif %}
{% if !d.prior_data.is_empty() %}<h3>Your data against the proposer's expectation</h3><ul>{% for n in d.prior_data %}<li>{{ n }}</li>{% endfor %}</ul><p class="muted">Decisions use the fit with the proposer's prior, whose spread was widened so it cannot decide alone; the sceptical fit shows what your data say from a neutral start.</p>{% endif %}
{% for svg in effect_svgs %}<figure>{{ svg|safe }}</figure>{% endfor %}
{% for svg in prob_svgs %}<figure>{{ svg|safe }}</figure>{% endfor %}
<h2>Decisions</h2>
<p>Stops for efficacy when P(better by MID) ≥ {{ d.thresholds.0 }}{% if let Some(w) = d.threshold_source %}: {{ w }}{% else %}: locked when the trial starts{% endif %}; {% if d.thresholds.1 > 0.0 %}for futility when it is ≤ {{ d.thresholds.1 }} for every arm{% else %}never for futility{% endif %}.{% if let Some(x) = d.drop_arm %} {% if *x > 0.0 %}Drops an arm when P(best) &lt; {{ x }}.{% else %}Drops no arm.{% endif %}{% endif %}</p>
{% if d.waits_for_calibration %}<p>The trial starts once its design is calibrated: <a href="/proposals/{{ d.id }}/progress">follow the calibration</a>.</p>{% endif %}
{% if let Some(f) = d.refinement_failure %}<p class="banner">The refinement of this design's calibration on more virtual trials failed and was given up on ({{ f.why }}): the trial decides with its quick calibration, whose thresholds hold the false-stop target but are stricter, so it finds a working arm less often.{% if let Some(why) = f.retry_refused %} It is not tried again: {{ why }}.{% endif %}</p>{% if f.retry_refused.is_none() && !actions.is_empty() %}<form method="post" action="/proposals/{{ d.id }}/refinement/retry" class="inline"><input type="hidden" name="csrf" value="{{ csrf }}"><button type="submit">Try the refinement again</button></form>{% endif %}{% endif %}
{% if let Some(why) = d.calibration_failure %}<p class="banner">This design could not be calibrated ({{ why }}): the trial decides on the protocol's stated thresholds, whose false-stop rate was not checked. Treat an early stop with more caution than usual.</p>{% endif %}
{% if !calibration_html.is_empty() %}<details><summary>How the threshold was calibrated</summary>{{ calibration_html|safe }}</details>{% endif %}
<div class="scroll"><table><thead><tr><th>period</th><th>when</th><th>action</th><th>rule</th><th>numbers</th></tr></thead><tbody>
{% for x in decisions %}<tr><td>{% if let Some(p) = x.0.period %}{{ p }}{% endif %}</td><td>{{ x.0.created_at }}</td><td>{{ x.0.action }}</td><td>{{ x.0.rule }}</td><td>{{ x.1 }}</td></tr>{% endfor %}
</tbody></table></div>
<h2>Fit diagnostics</h2>
{% if let Some(g) = d.diagnostics %}<p>{% if g.converged %}Converged{% else %}Not converged{% endif %}{% if let Some(r) = g.reason %}: {{ r }}{% endif %} · {{ g.evaluations }} posterior evaluations · {{ "{:.0}"|format(g.wall_ms) }} ms</p>{% else %}<p>No fit yet.</p>{% endif %}
<h2>Life cycle</h2>
<table><tbody>{% for e in d.events %}<tr><td>{% if let Some(l) = e.local_date %}{{ l }}{% endif %}</td><td>{{ e.to_status }}</td><td>{{ e.actor }}</td><td>{{ e.reason }}</td></tr>{% endfor %}</tbody></table>
<h2>Protocol</h2>
{% if let Some(text) = d.protocol_toml %}{% if d.key.is_some() %}<p>The codes in this text are names only: which arm has which was drawn for this trial (the key above). Fill the supplies by the key, not by this text.</p>{% endif %}<pre>{{ text }}</pre>{% else %}<p>This trial is blinded: the protocol text is shown to the investigator only. Its SHA-256 above identifies it.</p>{% endif %}
<p><a href="/api/trials/{{ d.id }}">JSON</a>{% if !d.estimates_hidden %} · download <a href="/trials/{{ d.id }}/export/days.csv">the days</a> or <a href="/trials/{{ d.id }}/export/decisions.csv">the decisions</a> as CSV{% endif %}</p>"#
)]
struct TrialPage<'a> {
    d: &'a TrialDetail,
    blinded_estimates: &'static str,
    investigator: bool,
    actions: Vec<(&'static str, &'static str)>,
    csrf: String,
    /// The schedule with each day's values.
    calendar: Vec<CalendarDay>,
    has_run_in: bool,
    has_values: bool,
    run_in_colour: &'static str,
    legend: Vec<(String, &'static str)>,
    outcome_svg: String,
    counterfactual_svg: Option<String>,
    effect_svgs: Vec<String>,
    prob_svgs: Vec<String>,
    decisions: Vec<(&'a crate::service::store::DecisionRow, String)>,
    calibration_html: String,
}

impl TrialPage<'_> {
    fn colour(&self, i: &usize) -> &'static str {
        crate::web::charts::arm_colour(*i)
    }
}

/// In a blinded trial the participant sees codes in the decision log too:
/// the rule's words and the stored numbers name arms by key, so each key is
/// replaced by the code the participant knows.
/// In the blinded view (`blind`: a running blinded trial's participant)
/// the rule and numbers are withheld, as every estimate is.
fn conceal_decision(
    mut d: crate::service::store::DecisionRow,
    protocol: &Protocol,
    viewer: &Viewer,
    blind: bool,
) -> crate::service::store::DecisionRow {
    if blind {
        d.rule = "withheld until the trial ends (blinded)".to_string();
        d.numbers_json = String::new();
        return d;
    }
    if !protocol.blinded || viewer.is_investigator() {
        return d;
    }
    for (i, arm) in protocol.arms.iter().enumerate() {
        let code = protocol.display_label(i);
        d.rule = d
            .rule
            .replace(&format!("P({} ", arm.key), &format!("P({code} "));
    }
    // The stored numbers, decoded, with each arm's key replaced by its code
    // (a safety stop's numbers name no arm and stay as they are).
    if let Some(mut decision) = d.decision() {
        for a in &mut decision.arms {
            a.key = protocol.display_label(a.arm).to_string();
        }
        d.numbers_json = serde_json::to_string(&decision).unwrap_or_default();
    }
    d
}

/// The reference lines of an effect chart. Effects are estimated and drawn
/// on the link scale (`statistics.md` §3), so the MID is drawn there too
/// ([`Mid::link`]): at `±MID` in outcome units for the identity link, at
/// `±ln r` for a stated rate or odds ratio `r`. Each line says which side
/// is better for the participant. A MID stated in the outcome's own units
/// (`mid_natural`) has no one place on the link scale: its lines are drawn
/// where that difference falls at the person's usual level by the latest
/// fit, `usual` = (baseline mean, drift sd), and say so.
fn effect_lines(outcome: &Outcome, usual: Option<(f64, f64)>) -> Vec<(f64, String)> {
    use crate::engine::natural;
    let mid = outcome.mid();
    let sign = outcome.direction.sign();
    if let (Some(k), Some((level, drift))) = (mid.natural(), usual) {
        let unit = natural::difference_unit(outcome.family);
        let at = |d: f64| natural::beta_for_difference(outcome.family, level, d, drift * drift);
        let mut lines = vec![(0.0, "no effect".to_string())];
        for (d, side) in [(sign * k, "better"), (-sign * k, "worse")] {
            if let Some(y) = at(d) {
                lines.push((
                    y,
                    format!(
                        "ratio {:.2}: {side} by the MID, {d:+} {unit} at your usual level",
                        y.exp()
                    ),
                ));
            }
        }
        return lines;
    }
    let better = sign * mid.link();
    let stated = |y: f64| {
        if outcome.family.has_ratio_mid() {
            format!("ratio {:.2}", y.exp())
        } else {
            format!("{y:+}")
        }
    };
    vec![
        (0.0, "no effect".to_string()),
        (better, format!("{}: better by the MID", stated(better))),
        (-better, format!("{}: worse by the MID", stated(-better))),
    ]
}

/// A decision's numbers in a line: each arm's P(better by MID) and P(best),
/// as the viewer names the arms.
fn decision_numbers(row: &crate::service::store::DecisionRow, d: &TrialDetail) -> String {
    let Some(decision) = row.decision() else {
        return String::new();
    };
    decision
        .arms
        .iter()
        .map(|a| {
            let name = d.arms.get(a.arm).map_or("?", String::as_str);
            format!(
                "{name}: P(better by MID) {:.3}, P(best) {:.3}",
                a.p_better_by_mid, a.p_best
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A day's value as the day-by-day table shows it: at most two decimals,
/// no trailing zeros.
fn day_value(y: f64) -> String {
    let s = format!("{y:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

fn trial_page_html(d: &TrialDetail, viewer: &Viewer) -> Result<String, askama::Error> {
    use crate::web::charts;
    use charts::Shade;
    let mut spans: Vec<(f64, f64, Shade)> = Vec::new();
    for (i, c) in d.calendar.iter().enumerate() {
        if c.future {
            break;
        }
        // Days with no colour (a damaged row) leave a gap.
        let shade = match (c.run_in, c.arm_index) {
            (true, _) => Shade::RunIn,
            (false, Some(arm)) => Shade::Arm(arm),
            (false, None) => continue,
        };
        match spans.last_mut() {
            Some(last) if last.2 == shade && (last.1 - i as f64).abs() < 1e-9 => {
                last.1 = i as f64 + 1.0
            }
            _ => spans.push((i as f64, i as f64 + 1.0, shade)),
        }
    }
    // Each day's values, for the day-by-day table.
    let mut calendar = d.calendar.clone();
    for p in &d.path {
        if let Some(c) = calendar.get_mut(p.day.floor().max(0.0) as usize) {
            if !c.values.is_empty() {
                c.values.push_str(", ");
            }
            c.values.push_str(&day_value(p.y));
        }
    }
    let points: Vec<(f64, f64)> = d.path.iter().map(|p| (p.day, p.y)).collect();
    let latent: Vec<(f64, f64)> = d.path.iter().map(|p| (p.day, p.level)).collect();
    let value_axis = match d.outcome.1.trim() {
        "" => d.outcome.0.replace('_', " "),
        unit => format!("{} ({unit})", d.outcome.0.replace('_', " ")),
    };
    let outcome_svg = charts::outcome_chart(
        &format!("{} by day, shaded by arm", d.outcome.0),
        &value_axis,
        &spans,
        &points,
        &latent,
        &d.arms,
    );
    let counterfactual_svg = (!d.path.is_empty()).then(|| {
        let series: Vec<charts::Line> = d
            .arms
            .iter()
            .enumerate()
            .map(|(j, name)| charts::Line {
                name: format!("always {name}"),
                colour: charts::arm_colour(j),
                points: d
                    .path
                    .iter()
                    .filter_map(|p| p.always.get(j).map(|v| (p.day, *v)))
                    .collect(),
                dashed: false,
            })
            .collect();
        charts::lines_chart(
            &format!(
                "{}: expected level if every day had been one arm",
                d.outcome.0
            ),
            charts::AxisTitles {
                x: "trial day",
                y: &value_axis,
            },
            &series,
            &[],
            None,
        )
    });
    let n_effects = d.fits.last().map_or(0, |f| f.effects.len());
    let xs: Vec<f64> = d.fits.iter().map(|f| f.day).collect();
    let (efficacy, futility) = d.thresholds;
    let efficacy_label = format!("efficacy {efficacy}");
    let futility_label = format!("futility {futility}");
    let effect_axis = &d.effect_axis;
    let mut effect_svgs = Vec::new();
    let mut prob_svgs = Vec::new();
    for k in 0..n_effects {
        let name = d
            .fits
            .last()
            .map(|f| f.effects[k].arm.clone())
            .unwrap_or_default();
        let series: Vec<&EffectPoint> = d.fits.iter().filter_map(|f| f.effects.get(k)).collect();
        let mean: Vec<f64> = series.iter().map(|e| e.mean).collect();
        let lo: Vec<f64> = series.iter().map(|e| e.ci90[0]).collect();
        let hi: Vec<f64> = series.iter().map(|e| e.ci90[1]).collect();
        effect_svgs.push(charts::band_chart(
            &format!("Effect of {name} (mean and 90% interval) as data came in"),
            charts::AxisTitles {
                x: "trial day of the fit",
                y: effect_axis,
            },
            &xs,
            &mean,
            &lo,
            &hi,
            &d.effect_lines
                .iter()
                .map(|(y, label)| (*y, label.as_str()))
                .collect::<Vec<_>>(),
        ));
        // Two probabilities, two lines: the one the rules decide on, and
        // P(best) dashed (it is not an interval of the first).
        let line = |name: String, colour, dashed, p: fn(&EffectPoint) -> f64| charts::Line {
            name,
            colour,
            points: xs.iter().zip(&series).map(|(&x, e)| (x, p(e))).collect(),
            dashed,
        };
        prob_svgs.push(charts::lines_chart(
            &format!("P({name} better by MID) and P({name} best) over time"),
            charts::AxisTitles {
                x: "trial day of the fit",
                y: "probability",
            },
            &[
                line(
                    "P(better by MID)".to_string(),
                    charts::arm_colour(0),
                    false,
                    |e| e.p_better_by_mid,
                ),
                line("P(best)".to_string(), charts::arm_colour(1), true, |e| {
                    e.p_best
                }),
            ],
            &[
                (efficacy, efficacy_label.as_str()),
                (futility, futility_label.as_str()),
            ],
            Some((0.0, 1.0)),
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
    let page = TrialPage {
        d,
        blinded_estimates: crate::service::notify::BLINDED_ESTIMATES,
        investigator: viewer.is_investigator(),
        actions,
        csrf: viewer.csrf.clone(),
        has_run_in: calendar.iter().any(|c| c.run_in),
        // No value column where the viewer is shown none (a blinded
        // trial's participant).
        has_values: !d.path.is_empty(),
        run_in_colour: charts::RUN_IN_COLOUR,
        calendar,
        legend: d
            .arms
            .iter()
            .enumerate()
            .map(|(i, a)| (a.clone(), crate::web::charts::arm_colour(i)))
            .collect(),
        outcome_svg,
        counterfactual_svg,
        effect_svgs,
        prob_svgs,
        // Only where the trial decides with it (the demo, and trials locked
        // with calibration off, decide on their protocol's threshold).
        calibration_html: d
            .calibration
            .as_ref()
            .filter(|_| d.calibrated)
            .map(super::calibration::render)
            .unwrap_or_default(),
        decisions: d
            .decisions
            .iter()
            .map(|r| (r, decision_numbers(r, d)))
            .collect(),
    };
    super::render_page(&format!("{} — nof1d", d.title), "", &nav(viewer), &page)
}

fn no_trial(id: i64) -> Response {
    (StatusCode::NOT_FOUND, format!("there is no trial {id}\n")).into_response()
}

/// GET `/trials/{id}`.
pub(super) async fn trial_page(
    State(state): State<AppState>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    axum::extract::Path(id): axum::extract::Path<i64>,
) -> Response {
    match trial_detail(&state, id, &viewer).await {
        Ok(Some(d)) => match trial_page_html(&d, &viewer) {
            Ok(html) => Html(html).into_response(),
            Err(e) => internal(&e.to_string()),
        },
        Ok(None) => no_trial(id),
        Err(e) => internal(&e.to_string()),
    }
}

/// GET `/api/trials/{id}`.
#[utoipa::path(get, path = "/api/trials/{id}", tag = "dashboard",
    summary = "One trial as its page shows it (blinded trials: codes only for the participant; future days hidden)",
    params(("id" = i64, Path, description = "trial id")),
    responses((status = 200, body = TrialDetail), (status = 404, description = "no such trial")))]
pub(super) async fn trial_json(
    State(state): State<AppState>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    axum::extract::Path(id): axum::extract::Path<i64>,
) -> Response {
    match trial_detail(&state, id, &viewer).await {
        Ok(Some(d)) => axum::Json(d).into_response(),
        Ok(None) => no_trial(id),
        Err(e) => internal(&e.to_string()),
    }
}

/// GET `/trials/{id}/export/{days.csv|decisions.csv}`: the trial's days or
/// decisions as CSV (`service::export`). They name the arms, so a blinded
/// trial's participant gets them only once it has ended for good.
#[utoipa::path(get, path = "/trials/{id}/export/{file}", tag = "dashboard",
    summary = "A trial's days or decisions as CSV (a participant's days end today; a blinded trial's participant: 403 until it ends)",
    params(("id" = i64, Path, description = "trial id"), ("file" = String, Path, description = "days.csv or decisions.csv")),
    responses((status = 200, content_type = "text/csv", body = String), (status = 403), (status = 404)))]
pub(super) async fn trial_export(
    State(state): State<AppState>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    axum::extract::Path((id, file)): axum::extract::Path<(i64, String)>,
) -> Response {
    use crate::service::export::{ExportError, Table, trial_csv};
    let table = match file.as_str() {
        "days.csv" => Table::Days,
        "decisions.csv" => Table::Decisions,
        _ => {
            return (
                StatusCode::NOT_FOUND,
                "there are days.csv and decisions.csv\n",
            )
                .into_response();
        }
    };
    let (trial, protocol, tz) = match trial_context(&state, id).await {
        Ok(Some(t)) => t,
        Ok(None) => return no_trial(id),
        Err(e) => return internal(&e.to_string()),
    };
    let now = state.clock.now();
    let config = state.config.clone();
    let investigator = viewer.is_investigator();
    // The participant sees no day to come (allocation concealment), as on
    // the trial page.
    let through = (!investigator).then(|| local_date(now, &tz));
    let answer = state
        .db
        .read_with(move |s| {
            if protocol.blinded
                && !investigator
                && !crate::service::actions::ended_for_good(s, &trial, now)?
            {
                return Ok(Err(()));
            }
            trial_csv(s, id, table, |key| config.stream_rules(key), through).map(Ok)
        })
        .await;
    match answer {
        Ok(Ok(csv)) => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{}\"", table.file_name(id)),
                ),
            ],
            csv,
        )
            .into_response(),
        Ok(Err(())) => (
            StatusCode::FORBIDDEN,
            "this trial is blinded: its data name the arms, so only the investigator can download them until it ends\n",
        )
            .into_response(),
        Err(ExportError::NoTrial(_)) => no_trial(id),
        Err(e) => internal(&e.to_string()),
    }
}

/// A life-cycle action's form: the CSRF token; for approving, the hash of
/// the protocol the page showed (an approval is of what was reviewed: a
/// proposal edited meanwhile, in another tab or by another person, is not
/// approved unseen) and, for a protocol that needs one, the clinician's
/// agreement in words; for stopping and pausing, the reason and the
/// confirmation from their page.
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub(super) struct ActionForm {
    csrf: Option<String>,
    #[serde(default)]
    protocol_hash: Option<String>,
    #[serde(default)]
    clinician: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    confirm: Option<String>,
}

/// The longest reason kept for a stop or a pause.
const MAX_REASON_CHARS: usize = 500;

/// `14:05 on 6 December 2026` in `tz`.
fn when_local(t: jiff::Timestamp, tz: &jiff::tz::TimeZone) -> String {
    t.to_zoned(tz.clone())
        .strftime("%H:%M on %-d %B %Y")
        .to_string()
}

#[derive(Template)]
#[template(
    ext = "html",
    source = r#"<p><a href="/trials/{{ id }}">← {{ title }}</a></p>
<h1>{% if stop %}Stop{% else %}Pause{% endif %} this trial?</h1>
{% if stop && !started %}<p>Cancelling <strong>{{ title }}</strong> means it will not start. You can undo this for {{ undo_hours }} hours (from this trial's page).</p>
{% else if stop %}<p>Stopping ends <strong>{{ title }}</strong>: no more assignments or reminders are sent and no more decisions are made. The answer is what the data so far say, and it is final{% if running_days > 0 %} after {{ running_days }} days{% endif %}.</p>
<p>You can undo a stop for {{ undo_hours }} hours (from this trial's page). To take a break instead, pause it: nothing is lost and the schedule waits for you.</p>
{% else %}<p>Pausing <strong>{{ title }}</strong> sends no assignments and makes no decisions until you resume it; when you do, the rest of the schedule moves by the days paused, so no period is cut short.</p>{% endif %}
{% if let Some(m) = error %}<p class="err" role="alert">{{ m }}</p>{% endif %}
<form method="post" action="/trials/{{ id }}/{% if stop %}stop{% else %}pause{% endif %}" class="stacked">
<input type="hidden" name="csrf" value="{{ csrf }}">
<input type="hidden" name="confirm" value="yes">
<label for="reason">Why? {% if stop %}(kept with the trial's record){% else %}(optional: holiday, illness…){% endif %}</label>
<textarea id="reason" name="reason" rows="3" maxlength="{{ max_reason }}"{% if stop %} required{% endif %}>{{ reason }}</textarea>
<button type="submit">{% if stop %}Stop the trial{% else %}Pause the trial{% endif %}</button>
</form>
<p><a href="/trials/{{ id }}">No, leave it as it is</a></p>"#
)]
struct ConfirmPage {
    id: i64,
    title: String,
    stop: bool,
    started: bool,
    running_days: usize,
    undo_hours: i64,
    error: Option<String>,
    reason: String,
    csrf: String,
    max_reason: usize,
}

/// The confirmation page of a stop or a pause, with `error` above the form
/// where a first attempt was refused.
async fn confirm_page(
    state: &AppState,
    viewer: &Viewer,
    id: i64,
    action: &str,
    error: Option<String>,
    reason: String,
) -> Response {
    let stop = match action {
        "stop" => true,
        "pause" => false,
        other => {
            return (
                StatusCode::NOT_FOUND,
                format!("there is nothing to confirm for {other:?}\n"),
            )
                .into_response();
        }
    };
    let context = match trial_context(state, id).await {
        Ok(Some(c)) => c,
        Ok(None) => return no_trial(id),
        Err(e) => return internal(&e.to_string()),
    };
    let (row, protocol, tz) = context;
    let started = matches!(
        row.status,
        crate::trial::lifecycle::TrialStatus::Running
            | crate::trial::lifecycle::TrialStatus::Paused
    );
    let today = local_date(state.clock.now(), &tz);
    let running_days = match state.db.read(move |s| s.schedule(id)).await {
        Ok(rows) => rows.iter().filter(|r| r.local_date < today).count(),
        Err(e) => return internal(&e.to_string()),
    };
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let page = ConfirmPage {
        id,
        title: protocol.title.clone(),
        stop,
        started,
        running_days,
        undo_hours: crate::service::actions::STOP_UNDO_HOURS,
        error,
        reason,
        csrf: viewer.csrf.clone(),
        max_reason: MAX_REASON_CHARS,
    };
    match super::render_page(
        &format!("{} — nof1d", protocol.title),
        "",
        &nav(viewer),
        &page,
    ) {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => internal(&e.to_string()),
    }
}

/// GET `/trials/{id}/confirm/{stop|pause}`: what stopping or pausing does,
/// the reason, and the button that does it.
#[utoipa::path(get, path = "/trials/{id}/confirm/{action}", tag = "forms",
    summary = "The confirmation page of pause or stop (asks for a reason)",
    params(("id" = i64, Path, description = "trial id"), ("action" = String, Path, description = "pause or stop")),
    responses((status = 200, content_type = "text/html", body = String), (status = 404)))]
pub(super) async fn confirm_action(
    State(state): State<AppState>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    axum::extract::Path((id, action)): axum::extract::Path<(i64, String)>,
) -> Response {
    confirm_page(&state, &viewer, id, &action, None, String::new()).await
}

/// POST `/trials/{id}/{approve|reject|pause|resume|stop|undo}`: the
/// life-cycle actions, checked against the CSRF token, then a redirect to
/// the trial (stop and pause first to their confirmation page).
#[utoipa::path(post, path = "/trials/{id}/{action}", tag = "forms",
    summary = "Life-cycle action: approve, reject, pause, resume, stop (pause and stop with confirm=yes, stop with a reason), or undo a stop by hand within 24 hours",
    params(("id" = i64, Path, description = "trial id"), ("action" = String, Path, description = "approve, reject, pause, resume, stop or undo")),
    request_body(content = ActionForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "back to the trial"), (status = 403, description = "bad or missing csrf"), (status = 409, description = "not allowed in the trial's state"), (status = 422, description = "the form is incomplete")))]
pub(super) async fn trial_action(
    State(state): State<AppState>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    axum::extract::Path((id, action)): axum::extract::Path<(i64, String)>,
    axum::extract::Form(form): axum::extract::Form<ActionForm>,
) -> Response {
    if !viewer.csrf_ok(form.csrf.as_deref()) {
        return csrf_refused();
    }
    // Stop and pause happen only from their confirmation page, with a
    // reason for a stop.
    let reason = form
        .reason
        .as_deref()
        .map(str::trim)
        .unwrap_or_default()
        .chars()
        .take(MAX_REASON_CHARS)
        .collect::<String>();
    if matches!(action.as_str(), "stop" | "pause") {
        if form.confirm.as_deref() != Some("yes") {
            return (
                StatusCode::SEE_OTHER,
                [(header::LOCATION, format!("/trials/{id}/confirm/{action}"))],
            )
                .into_response();
        }
        if action == "stop" && reason.is_empty() {
            let why = "Say why the trial stops: it is kept with the trial's record.".to_string();
            return confirm_page(&state, &viewer, id, &action, Some(why), reason).await;
        }
    }
    let clinician = form.clinician;
    let reviewed = form.protocol_hash.filter(|h| !h.is_empty());
    let now = state.clock.now();
    let actor = match viewer.role {
        super::Role::Investigator => "dashboard (investigator)",
        super::Role::Participant => "dashboard",
    };
    let result = state
        .db
        .write_with(move |s| match action.as_str() {
            "approve" => crate::service::actions::approve(
                s,
                id,
                None,
                clinician.as_deref(),
                reviewed.as_deref(),
                actor,
                now,
            )
            .map(|_| ()),
            "reject" => {
                crate::service::actions::stop(s, id, "rejected on the dashboard", actor, now)
            }
            "pause" => {
                let why = if reason.is_empty() {
                    "paused on the dashboard".to_string()
                } else {
                    format!("paused on the dashboard: {reason}")
                };
                crate::service::actions::pause(s, id, &why, actor, now)
            }
            "resume" => crate::service::actions::resume(s, id, None, actor, now).map(|_| ()),
            "stop" => crate::service::actions::stop(s, id, &reason, actor, now),
            "undo" => crate::service::actions::undo_stop(s, id, actor, now).map(|_| ()),
            other => Err(crate::service::actions::ActionError::Refused(format!(
                "unknown action {other:?}"
            ))),
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

/// One day on the self-report form.
struct ReportDay {
    date: String,
    label: String,
    rating: Option<f64>,
    /// The first rating of the day, where it was corrected since.
    corrected_from: Option<f64>,
    adherence: Option<String>,
}

#[derive(Template)]
#[template(
    ext = "html",
    source = r#"<p><a href="/trials/{{ id }}">← {{ title }}</a></p>
<h1>Report a day</h1>
{% if let Some(m) = message %}<p class="{% if ok %}ok{% else %}err{% endif %}" role="status">{{ m }}</p>{% endif %}
{% if days.is_empty() %}<p>This trial has no days to report yet.</p>{% else %}
<form method="post" action="/trials/{{ id }}/report" class="stacked">
<input type="hidden" name="csrf" value="{{ csrf }}">
<label for="date">Day</label>
<select id="date" name="date">{% for d in days %}<option value="{{ d.date }}">{{ d.label }}</option>{% endfor %}</select>
{% if let Some(q) = question %}<label for="rating">{{ q }}</label>
<select id="rating" name="rating"><option value="">(no rating)</option>{% for v in values %}<option value="{{ v }}">{{ v }}</option>{% endfor %}</select>
<label><input type="checkbox" name="correct" value="yes"> Correct the day's rating (it was entered wrong): the new value replaces it, and the first one is kept in the record</label>
<label for="reason">Why (for a correction)</label>
<input id="reason" name="reason" maxlength="200" placeholder="tapped the wrong number">{% endif %}
<label for="adherence">Did you follow the day's assignment?</label>
<select id="adherence" name="adherence"><option value="">(no answer)</option><option value="done">Yes, done</option><option value="not_done">No, could not do it</option><option value="side_effect">I had a side effect</option></select>
<button type="submit">Record</button>
</form>
<p>The first rating of a day stands unless you correct it; a later answer about following the assignment replaces an earlier one.</p>
<h2>Recent days</h2>
<table><thead><tr><th>day</th><th>rating</th><th>followed</th></tr></thead><tbody>
{% for d in days %}<tr><td>{{ d.label }}</td><td>{% if let Some(r) = d.rating %}{{ r }}{% if let Some(f) = d.corrected_from %} <span class="muted">(corrected from {{ f }})</span>{% endif %}{% else %}–{% endif %}</td><td>{% if let Some(a) = d.adherence %}{{ a }}{% else %}–{% endif %}</td></tr>{% endfor %}
</tbody></table>{% endif %}"#
)]
struct ReportPage {
    id: i64,
    title: String,
    message: Option<String>,
    ok: bool,
    csrf: String,
    days: Vec<ReportDay>,
    question: Option<String>,
    values: Vec<i32>,
}

/// The first day the report form accepts: `REPORT_DAYS` calendar days end
/// today.
fn oldest_reportable(today: Date) -> Date {
    today
        .checked_sub(jiff::Span::new().days(REPORT_DAYS as i64 - 1))
        .unwrap_or(today)
}

/// The days the form offers: today and the `REPORT_DAYS - 1` before it that
/// are trial days, newest first, with what is already recorded.
async fn report_days(
    state: &AppState,
    id: i64,
    protocol: &Protocol,
    tz: &TimeZone,
) -> Result<Vec<ReportDay>, StoreError> {
    let today = local_date(state.clock.now(), tz);
    let stream = protocol.outcome.stream.clone();
    state
        .db
        .read(move |s| {
            let Some(trial) = s.trial(id)? else {
                return Ok(Vec::new());
            };
            let adherence: std::collections::BTreeMap<u32, String> =
                s.adherence(id)?.into_iter().collect();
            // The first value of each day (ratings are one a day).
            let mut ratings = std::collections::BTreeMap::new();
            for (_, date, value) in s.observations(trial.participant_id, &stream, &[])? {
                ratings.entry(date).or_insert(value);
            }
            // A corrected day shows the value it was first given.
            let mut first = std::collections::BTreeMap::new();
            for c in s.rating_corrections(id)? {
                first.entry(c.date).or_insert(c.old_value);
            }
            let rows: Vec<_> = s
                .schedule(id)?
                .into_iter()
                .filter(|r| r.local_date <= today && r.local_date >= oldest_reportable(today))
                .rev()
                .collect();
            let mut days = Vec::new();
            for r in rows {
                let rating = ratings.get(&r.local_date).copied();
                days.push(ReportDay {
                    date: r.local_date.to_string(),
                    label: r.local_date.strftime("%a %-d %b").to_string(),
                    rating,
                    corrected_from: first.get(&r.local_date).copied(),
                    adherence: adherence.get(&r.day).cloned(),
                });
            }
            Ok(days)
        })
        .await
}

async fn report_response(
    state: &AppState,
    viewer: &Viewer,
    id: i64,
    message: Option<(bool, String)>,
) -> Response {
    let (_, protocol, tz) = match trial_context(state, id).await {
        Ok(Some(x)) => x,
        Ok(None) => return no_trial(id),
        Err(e) => return internal(&e.to_string()),
    };
    let days = match report_days(state, id, &protocol, &tz).await {
        Ok(d) => d,
        Err(e) => return internal(&e.to_string()),
    };
    let sr = protocol.outcome.self_report.as_ref();
    let code = match &message {
        Some((false, _)) => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::OK,
    };
    let page = ReportPage {
        id,
        title: protocol.title.clone(),
        ok: message.as_ref().is_some_and(|m| m.0),
        message: message.map(|m| m.1),
        csrf: viewer.csrf.clone(),
        days,
        question: sr.map(|r| r.question.clone()),
        values: sr.map_or_else(Vec::new, |r| (r.min..=r.max).collect()),
    };
    match super::render_page("Report a day — nof1d", "narrow", &nav(viewer), &page) {
        Ok(html) => (code, Html(html)).into_response(),
        Err(e) => internal(&e.to_string()),
    }
}

/// GET `/trials/{id}/report`: the form for a day whose email was missed.
pub(super) async fn report_form(
    State(state): State<AppState>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    axum::extract::Path(id): axum::extract::Path<i64>,
) -> Response {
    report_response(&state, &viewer, id, None).await
}

/// The self-report form's fields.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct ReportForm {
    csrf: Option<String>,
    date: String,
    #[serde(default)]
    rating: String,
    #[serde(default)]
    adherence: String,
    /// `yes`: the rating replaces the day's (a correction).
    #[serde(default)]
    correct: String,
    #[serde(default)]
    reason: String,
}

/// POST `/trials/{id}/report`: records the rating and/or the adherence
/// answer for one of the offered days (not a future one).
#[utoipa::path(post, path = "/trials/{id}/report", tag = "forms",
    summary = "Rating and/or adherence for a past or today's trial day (the first rating stands unless corrected, with a reason, audited)",
    params(("id" = i64, Path, description = "trial id")),
    request_body(content = ReportForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, content_type = "text/html", body = String), (status = 403), (status = 422)))]
pub(super) async fn report_submit(
    State(state): State<AppState>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    axum::extract::Path(id): axum::extract::Path<i64>,
    axum::extract::Form(form): axum::extract::Form<ReportForm>,
) -> Response {
    if !viewer.csrf_ok(form.csrf.as_deref()) {
        return csrf_refused();
    }
    let (trial, protocol, tz) = match trial_context(&state, id).await {
        Ok(Some(x)) => x,
        Ok(None) => return no_trial(id),
        Err(e) => return internal(&e.to_string()),
    };
    let now = state.clock.now();
    let refuse = |m: String| report_response(&state, &viewer, id, Some((false, m)));
    let Ok(date) = form.date.parse::<Date>() else {
        return refuse(format!("{:?} is not a date (YYYY-MM-DD)", form.date)).await;
    };
    let today = local_date(now, &tz);
    if date > today {
        return refuse(format!("{date} has not happened yet")).await;
    }
    // The form offers the last REPORT_DAYS days; older answers would rewrite
    // history the model has already been fitted on.
    let oldest = oldest_reportable(today);
    if date < oldest {
        return refuse(format!(
            "{date} is too long ago: only the last {REPORT_DAYS} days ({oldest} to {today}) can be reported here"
        ))
        .await;
    }
    let rating = match form.rating.trim() {
        "" => None,
        text => {
            let Some(sr) = protocol.outcome.self_report.as_ref() else {
                return refuse("this trial's outcome is not a self-report".into()).await;
            };
            match text.parse::<i32>() {
                Ok(v) if (sr.min..=sr.max).contains(&v) => Some(f64::from(v)),
                _ => {
                    return refuse(format!(
                        "a rating must be a whole number from {} to {} (got {text:?})",
                        sr.min, sr.max
                    ))
                    .await;
                }
            }
        }
    };
    let adherence = match form.adherence.as_str() {
        "" => None,
        a @ ("done" | "not_done" | "side_effect") => Some(a.to_string()),
        other => return refuse(format!("unknown answer {other:?}")).await,
    };
    if rating.is_none() && adherence.is_none() {
        return refuse("choose a rating or an answer to record".into()).await;
    }
    // A late rating counts at 21:00 of the day it rates, as from a link.
    let observed_at = if local_date(now, &tz) == date {
        now
    } else {
        crate::trial::calendar::local_instant(date, jiff::civil::time(21, 0, 0, 0), &tz)
    };
    let (pid, stream, unit) = (
        trial.participant_id,
        protocol.outcome.stream.clone(),
        protocol.outcome.unit.clone(),
    );
    let correct = form.correct == "yes";
    let reason: String = form.reason.trim().chars().take(MAX_REASON_CHARS).collect();
    let actor = match viewer.role {
        super::Role::Investigator => "dashboard (investigator)",
        super::Role::Participant => "dashboard",
    };
    let result = state
        .db
        .write(move |s| {
            let mut said = Vec::new();
            if let Some(status) = &adherence {
                match s.record_form_entry(pid, id, date, &LinkWhat::Adherence(status), now)? {
                    LinkOutcome::Recorded(w) => said.push(w),
                    other => said.push(format!("{other:?}")),
                }
            }
            if let Some(value) = rating {
                let source_id = s.ensure_source(pid, "self-report", "self_report", "{}", now)?;
                if correct {
                    let correction = crate::service::store::RatingCorrection {
                        participant_id: pid,
                        trial_id: id,
                        date,
                        stream: &stream,
                        source_id,
                        value,
                        reason: &reason,
                        actor,
                    };
                    match s.correct_rating(&correction, now)? {
                        Some(old) if old == value => {
                            said.push(format!("{date} is already rated {value}: nothing to correct"));
                            return Ok(said.join("; "));
                        }
                        Some(old) => {
                            said.push(format!(
                                "corrected the rating of {date} from {old} to {value} (the first answer is kept in the record)"
                            ));
                            return Ok(said.join("; "));
                        }
                        // No rating yet: recorded as any first one.
                        None => {}
                    }
                }
                let what = LinkWhat::Rating {
                    stream: &stream,
                    unit: &unit,
                    value,
                    observed_at,
                    source_id,
                };
                match s.record_form_entry(pid, id, date, &what, now)? {
                    LinkOutcome::Recorded(w) => said.push(w),
                    LinkOutcome::AlreadyRated { value } => said.push(format!(
                        "{date} already has a rating ({value}); it stands (tick \"Correct the day's rating\" to replace it)"
                    )),
                    LinkOutcome::AlreadyUsed { outcome, .. } => said.push(outcome),
                }
            }
            Ok(said.join("; "))
        })
        .await;
    match result {
        Ok(words) => report_response(&state, &viewer, id, Some((true, words))).await,
        Err(e) => refuse(e.to_string()).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome_of(file: &str, text: &str) -> Outcome {
        Protocol::parse(text, file).unwrap().outcome
    }

    #[test]
    fn mid_lines_sit_on_the_link_scale_on_the_better_side() {
        // Bernoulli, lower is better, odds ratio 1.5: effects are log odds
        // ratios, so the MID lines are at -ln 1.5 (better) and +ln 1.5.
        let o = outcome_of(
            "magnesium-migraine.toml",
            include_str!("../../protocols/magnesium-migraine.toml"),
        );
        let lines = effect_lines(&o, None);
        assert_eq!(lines[0].0, 0.0);
        assert!((lines[1].0 - (-(1.5f64.ln()))).abs() < 1e-12, "{lines:?}");
        assert!((lines[2].0 - 1.5f64.ln()).abs() < 1e-12, "{lines:?}");
        assert_eq!(lines[1].1, "ratio 0.67: better by the MID");
        // Gaussian, lower is better, MID 1: outcome units.
        let o = outcome_of(
            "meditation-anxiety.toml",
            include_str!("../../protocols/meditation-anxiety.toml"),
        );
        let lines = effect_lines(&o, None);
        assert_eq!((lines[1].0, lines[2].0), (-1.0, 1.0));
        assert_eq!(lines[1].1, "-1: better by the MID");
        // The protocol's MID of 2 fewer migraine days a month
        // (`mid_natural`), at a usual level of 25%
        // of days (logit -1.0986) and no drift: 7.5 days become 5.5, an
        // odds ratio of (5.5/24.5)/(7.5/22.5) = 0.673.
        let o = outcome_of(
            "magnesium-migraine.toml",
            include_str!("../../protocols/magnesium-migraine.toml"),
        );
        let lines = effect_lines(&o, Some(((0.25f64 / 0.75).ln(), 0.0)));
        let odds = (5.5 / 24.5) / (7.5 / 22.5);
        assert!((lines[1].0 - f64::ln(odds)).abs() < 1e-9, "{lines:?}");
        assert_eq!(
            lines[1].1,
            "ratio 0.67: better by the MID, -2 yes-days per 30 days at your usual level"
        );
        assert_eq!(
            lines[2].1.split(':').nth(1),
            Some(" worse by the MID, +2 yes-days per 30 days at your usual level")
        );
        // Before the first fit the ratio's lines stand in.
        assert_eq!(effect_lines(&o, None)[1].1, "ratio 0.67: better by the MID");
    }
}

//! A design's calibration on the stress suite, as the proposal and trial
//! pages show it: the thresholds, the scenarios that set them, and per
//! scenario the false stops, power and futility stops of nof1d's rule
//! beside the betting test's.

use serde::Serialize;

use crate::service::store::{CalibrationRow, Refinement};
use crate::trial::decide::Boundary;
use crate::trial::simulate::Rate;

/// One scenario's figures, in percent.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ScenarioLine {
    /// Scenario name.
    pub scenario: String,
    /// Null trials behind it.
    pub null_trials: usize,
    /// False stops at the protocol's stated threshold.
    pub stated_false_stops: f64,
    /// False stops at the calibrated threshold, ± one Monte Carlo se.
    pub false_stops: [f64; 2],
    /// Power at the calibrated threshold (at the simulated effect), ± se.
    pub power: [f64; 2],
    /// The betting test's false stops and power (none where the design's
    /// block orders give it no valid footing).
    pub betting: Option<[f64; 2]>,
    /// Stops for futility under the effect: at the protocol's thresholds,
    /// and calibrated ± se (calibrations from before futility was: none).
    pub futility_stops: Option<(f64, [f64; 2])>,
    /// Mean blocks run under no effect: at the protocol's thresholds, and
    /// calibrated.
    pub null_blocks: Option<[f64; 2]>,
}

/// What the pages show of a calibration.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CalibrationView {
    /// The calibrated efficacy threshold (the last block's).
    pub efficacy: f64,
    /// How it moves over the looks, in words.
    pub boundary: String,
    /// Whether it is below 1 (else the design never stops for efficacy).
    pub achievable: bool,
    /// The protocol's stated threshold.
    pub stated: f64,
    /// The false-stop target, in percent.
    pub target_percent: f64,
    /// The scenario that set the threshold.
    pub binding: String,
    /// The effect power was simulated at.
    pub effect: f64,
    /// What `effect` counts (a unit, a ratio, a difference per 30 days).
    pub effect_unit: String,
    /// Master seed of the simulation.
    pub seed: u64,
    /// Virtual trials run in all.
    pub trials: usize,
    /// Wall time of the run that ended it, seconds.
    pub wall_s: f64,
    /// Of `trials`, those taken up from a run stopped part way (a restart,
    /// or a refinement that yielded): run then, so not in `wall_s`.
    pub resumed: usize,
    /// The calibrated futility threshold, with the protocol's, the target
    /// (percent) and the scenario that set it (calibrations from before
    /// futility was: none).
    pub futility: Option<FutilityView>,
    /// With three arms or more: the most often the arm that works was
    /// dropped in any scenario under the chosen rule (percent), and that
    /// scenario.
    pub worst_arm_drop: Option<(f64, String)>,
    /// The calibrated arm-drop threshold (three arms or more; none from
    /// calibrations before arm drops were).
    pub drop_arm: Option<DropView>,
    /// Per scenario.
    pub scenarios: Vec<ScenarioLine>,
    /// Where these are a refinement the trial took in place of its first
    /// calibration.
    pub refined: Option<RefinedView>,
}

/// A refined calibration a trial took, beside its first one.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RefinedView {
    /// The most null trials a scenario got in the refinement.
    pub null_trials: usize,
    /// The same in the first calibration.
    pub first_null_trials: usize,
    /// The first calibration's efficacy threshold.
    pub first_efficacy: f64,
    /// When the trial took it (UTC).
    pub at: String,
}

/// The calibrated futility threshold as the pages show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FutilityView {
    /// Stop for futility when P(better by MID) is at most this (0: never).
    pub threshold: f64,
    /// The protocol's stated one.
    pub stated: f64,
    /// The most stops for futility under the effect, in percent.
    pub target_percent: f64,
    /// The scenario that set it.
    pub binding: String,
}

/// The calibrated arm-drop threshold as the pages show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DropView {
    /// Drop an arm when P(best) is below this (0: never).
    pub threshold: f64,
    /// The protocol's stated one.
    pub stated: f64,
    /// The thresholds tried before it, highest first (each once).
    pub rejected: Vec<f64>,
    /// The most trials under the effect that may give up on every arm
    /// that works, in percent.
    pub target_percent: f64,
    /// Whether it was also tried where two arms work alike (calibrations
    /// from before that was: not).
    pub pair_checked: bool,
    /// Where two arms work alike, at this threshold: the most trials that
    /// gave up on one of them and kept the other, of how many, and in
    /// which scenario.
    pub one_of_two: Option<(usize, usize, String)>,
}

fn pair(r: Option<&Rate>) -> [f64; 2] {
    r.map_or([f64::NAN, f64::NAN], |r| [100.0 * r.rate, 100.0 * r.se])
}

impl CalibrationView {
    /// From a stored calibration (`None` when its report does not decode).
    pub fn of(row: &CalibrationRow) -> Option<CalibrationView> {
        let report = match row.report() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "stored calibration unreadable");
                return None;
            }
        };
        Some(CalibrationView {
            efficacy: row.efficacy,
            boundary: match row.boundary {
                Boundary::Constant => "the same at every look".to_string(),
                Boundary::Decreasing => format!(
                    "at the last block; stricter before, as alpha spending is (after b of B blocks, P ≥ Φ(z·√(B/b)), z = Φ⁻¹({:.4})), which bought more power than one threshold for all looks",
                    row.efficacy
                ),
            },
            achievable: report.achievable,
            stated: report.protocol_efficacy,
            target_percent: 100.0 * row.target,
            binding: row.binding.replace('_', " "),
            effect: report.effect,
            effect_unit: report.effect_unit.clone(),
            seed: report.seed,
            trials: report.timing.trials,
            wall_s: row.wall_ms / 1000.0,
            resumed: report.timing.resumed,
            futility: match (
                row.futility,
                report.futility_target,
                report.protocol_futility,
            ) {
                (Some(threshold), Some(target), Some(stated)) => Some(FutilityView {
                    threshold,
                    stated,
                    target_percent: 100.0 * target,
                    binding: report
                        .futility_binding
                        .map_or_else(|| "-".to_string(), |s| s.name().replace('_', " ")),
                }),
                _ => None,
            },
            drop_arm: match (
                row.drop_arm,
                report.protocol_drop_arm,
                report.futility_target,
            ) {
                (Some(threshold), Some(stated), Some(target)) => Some(DropView {
                    threshold,
                    stated,
                    rejected: {
                        // A threshold is tried with one arm that works and
                        // then with two: name it once.
                        let mut rejected: Vec<f64> = report
                            .drop_tries
                            .iter()
                            .map(|t| t.drop_arm)
                            .filter(|&d| d != threshold)
                            .collect();
                        rejected.dedup();
                        rejected
                    },
                    pair_checked: report.drop_tries.iter().any(|t| t.working_arms >= 2),
                    one_of_two: report
                        .drop_tries
                        .iter()
                        .filter(|t| t.drop_arm == threshold)
                        .find_map(|t| t.one_dropped)
                        .map(|(n, scenario)| {
                            (
                                n,
                                report.rows.first().map_or(0, |row| row.effect_trials),
                                scenario.name().replace('_', " "),
                            )
                        }),
                    target_percent: 100.0 * target,
                }),
                _ => None,
            },
            worst_arm_drop: report
                .rows
                .iter()
                .filter_map(|r| r.effect_arm_dropped.map(|d| (100.0 * d.rate, r.scenario)))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(rate, s)| (rate, s.name().replace('_', " "))),
            scenarios: report
                .rows
                .iter()
                .map(|r| ScenarioLine {
                    scenario: r.scenario.name().replace('_', " "),
                    null_trials: r.null_trials,
                    stated_false_stops: 100.0 * r.protocol_false_stops.rate,
                    false_stops: pair(r.calibrated_false_stops.as_ref()),
                    power: pair(r.calibrated_power.as_ref()),
                    betting: r
                        .betting
                        .as_ref()
                        .map(|b| [100.0 * b.false_stops.rate, 100.0 * b.power_right_arm.rate]),
                    futility_stops: match (&r.protocol_futility_stops, &r.calibrated_futility_stops)
                    {
                        (Some(stated), Some(calibrated)) => Some((
                            100.0 * stated.rate,
                            [100.0 * calibrated.rate, 100.0 * calibrated.se],
                        )),
                        _ => None,
                    },
                    null_blocks: match (r.protocol_null_blocks, r.calibrated_null_blocks) {
                        (Some(a), Some(b)) => Some([a, b]),
                        _ => None,
                    },
                })
                .collect(),
            refined: None,
        })
    }

    /// The view of a trial's refined calibration (`refinement`), which it
    /// took at `at` in place of its first one (`first`).
    pub fn of_refinement(
        refinement: &Refinement,
        first: &CalibrationRow,
        at: &str,
    ) -> Option<CalibrationView> {
        let first_null_trials = first.report().map_or(0, |r| r.most_null_trials());
        CalibrationView::of(&refinement.calibration).map(|view| CalibrationView {
            refined: Some(RefinedView {
                null_trials: refinement.null_trials,
                first_null_trials,
                first_efficacy: first.efficacy,
                at: at.to_string(),
            }),
            ..view
        })
    }
}

#[derive(askama::Template)]
#[template(
    ext = "html",
    source = r#"{% if let Some(r) = c.refined %}<p>These thresholds are a refinement of the design's quick calibration (at most {{ r.first_null_trials }} virtual trials with no effect in a scenario; efficacy threshold {{ "{:.4}"|format(r.first_efficacy) }}), run on up to {{ r.null_trials }} and locked at {{ r.at }}, before the trial's first look that could stop it. Every decision it takes is made under this rule, fixed before any of them; the simulation behind it read none of the trial's data.</p>{% endif %}<p>Stops for efficacy when P(better by MID) ≥ <strong>{{ "{:.4}"|format(c.efficacy) }}</strong> {{ c.boundary }}{% if !c.achievable %} — no threshold below 1 kept false stops at {{ "{:.0}"|format(c.target_percent) }}%: this design never stops for efficacy and runs to its last block{% endif %}
(the protocol states {{ c.stated }}): calibrated so that false stops stay at or below {{ "{:.0}"|format(c.target_percent) }}% with 95% confidence in every scenario below; set by the <strong>{{ c.binding }}</strong> scenario.</p>
{% if let Some(f) = c.futility %}<p>Stops for futility when P(better by MID) ≤ <strong>{{ "{:.4}"|format(f.threshold) }}</strong> for every arm{% if f.threshold == 0.0 %} — that is, never: even the lowest threshold gave up on too many arms that work{% endif %} (the protocol states {{ f.stated }}): calibrated so that at most {{ "{:.0}"|format(f.target_percent) }}% of trials whose arm works (by the effect below) are given up as futile, with 95% confidence in every scenario; set by the <strong>{{ f.binding }}</strong> scenario.</p>{% else %}<p>Stops for futility at the protocol's stated threshold, not calibrated: a calibration from before futility was calibrated, or from before every calibration ran enough virtual trials under the effect for a 95%-confident futility threshold.</p>{% endif %}
{% if let Some(d) = c.drop_arm %}<p>Drops an arm when P(best) &lt; <strong>{{ d.threshold }}</strong>{% if d.threshold == 0.0 %} — that is, never: every threshold tried gave up on the arm that works{% if d.pair_checked %}, or on both of two that work alike,{% endif %} too often{% endif %} (the protocol states {{ d.stated }}{% if !d.rejected.is_empty() %}; tried, and gave up on them too often: {% for r in d.rejected %}{{ r }}{% if !loop.last %}, {% endif %}{% endfor %}{% endif %}): calibrated so that at most {{ "{:.0}"|format(d.target_percent) }}% of trials give up on every arm that works by this rule (drop it, or stop because every arm is less likely best than the comparator), with 95% confidence in every scenario, where one arm works{% if d.pair_checked %} and where two work alike{% endif %}{% if let Some((rate, scenario)) = c.worst_arm_drop %}; under the rule above an arm that works alone was dropped in up to {{ "{:.0}"|format(rate) }}% of trials (the {{ scenario }} scenario){% endif %}.{% if let Some((n, of, scenario)) = d.one_of_two %} Where two work alike, one of them was given up on in up to {{ n }} of {{ of }} trials (the {{ scenario }} scenario), and the other, as good, was kept.{% endif %} Every figure below drops arms at this threshold, the stated thresholds' columns included.</p>{% else if let Some((rate, scenario)) = c.worst_arm_drop %}<p>Arms are dropped at the protocol's threshold on P(best), which is not calibrated: the arm that works was dropped in up to {{ "{:.0}"|format(rate) }}% of trials (the {{ scenario }} scenario).</p>{% endif %}
<div class="scroll"><table><caption>Simulated on {{ c.trials }} virtual trials (seed {{ c.seed }}, {{ "{:.0}"|format(c.wall_s) }} s{% if c.resumed > 0 %}; {{ c.resumed }} of them were taken up from an earlier run stopped part way: their time is not in this figure{% endif %}); power at an effect of {{ c.effect }} {{ c.effect_unit }}; ± one Monte Carlo standard error</caption>
<thead><tr><th scope="col">Scenario</th><th scope="col">False stops at {{ c.stated }}</th><th scope="col">False stops, calibrated</th><th scope="col">Power, calibrated</th><th scope="col">Given up though it works: stated → calibrated</th><th scope="col">Blocks when nothing works: stated → calibrated</th><th scope="col">Betting test: false stops / power</th></tr></thead>
<tbody>{% for s in c.scenarios %}<tr><th scope="row">{{ s.scenario }}</th><td>{{ "{:.1}"|format(s.stated_false_stops) }}%</td><td>{{ "{:.1}"|format(s.false_stops[0]) }}% ± {{ "{:.1}"|format(s.false_stops[1]) }}</td><td>{{ "{:.0}"|format(s.power[0]) }}% ± {{ "{:.0}"|format(s.power[1]) }}</td><td>{% if let Some((a, b)) = s.futility_stops %}{{ "{:.0}"|format(a) }}% → {{ "{:.0}"|format(b[0]) }}% ± {{ "{:.0}"|format(b[1]) }}{% else %}–{% endif %}</td><td>{% if let Some(n) = s.null_blocks %}{{ "{:.1}"|format(n[0]) }} → {{ "{:.1}"|format(n[1]) }}{% else %}–{% endif %}</td><td>{% if let Some(b) = s.betting %}{{ "{:.1}"|format(b[0]) }}% / {{ "{:.0}"|format(b[1]) }}%{% else %}not valid for this design{% endif %}</td></tr>{% endfor %}</tbody></table></div>"#
)]
struct CalibrationTable<'a> {
    c: &'a CalibrationView,
}

/// The calibration as an HTML fragment (escaped by the template).
pub fn render(c: &CalibrationView) -> String {
    use askama::Template;
    CalibrationTable { c }.render().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "calibration table not rendered");
        String::new()
    })
}

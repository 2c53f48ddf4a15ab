//! Decision rules at a look (`statistics.md` §5): stop for efficacy or
//! futility, drop arms, stop as inconclusive at the last period, and the
//! optional Thompson-type allocation.
//!
//! Pure functions of the protocol's thresholds and a fit's summaries, so that
//! the daemon, the simulator and `nof1d report` take exactly the same
//! decisions and any stored decision can be recomputed from its fit.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::engine::fit::FitReport;
use crate::engine::inference::{norm_cdf, norm_quantile};
use crate::trial::protocol::{Allocation, DecisionRules};

/// What a look decides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Go on with the schedule.
    Continue,
    /// Stop: `arm` reaches the MID with the required probability.
    StopEfficacy {
        /// The winning arm (index into the protocol's arms).
        arm: usize,
    },
    /// Stop: no active arm is likely to reach the MID.
    StopFutility,
    /// Stop: the last planned period has ended without a verdict.
    StopInconclusive,
    /// Stop: the participant reported an adverse event.
    StopSafety,
    /// Drop these arms and go on with the rest.
    DropArms {
        /// Dropped arms (indices into the protocol's arms).
        arms: Vec<usize>,
    },
}

impl Action {
    /// Whether the trial ends here.
    pub fn stops(&self) -> bool {
        matches!(
            self,
            Action::StopEfficacy { .. }
                | Action::StopFutility
                | Action::StopInconclusive
                | Action::StopSafety
        )
    }

    /// A short machine name (`stop_efficacy`, `drop_arms`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Action::Continue => "continue",
            Action::StopEfficacy { .. } => "stop_efficacy",
            Action::StopFutility => "stop_futility",
            Action::StopInconclusive => "stop_inconclusive",
            Action::StopSafety => "stop_safety",
            Action::DropArms { .. } => "drop_arms",
        }
    }
}

/// Where the trial stands at a look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Look {
    /// The period that just ended (from 0).
    pub period: u32,
    /// Blocks completed so far.
    pub blocks_done: u32,
    /// No period is scheduled after this one.
    pub last_period: bool,
    /// Arms still active (indices; the comparator included).
    pub active: Vec<usize>,
}

/// One arm's numbers behind a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmNumbers {
    /// Arm index.
    pub arm: usize,
    /// Arm key.
    pub key: String,
    /// Posterior mean of `beta_j` (link scale).
    pub mean: f64,
    /// 90% interval.
    pub ci90: [f64; 2],
    /// `P(delta_j > MID)`.
    pub p_better_by_mid: f64,
    /// `P(arm j is best)` among the active arms.
    pub p_best: f64,
}

/// A decision with the rule that fired and the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The look it was taken at.
    pub look: Look,
    /// The action.
    pub action: Action,
    /// The rule that fired, in the words of `statistics.md` §5.
    pub rule: String,
    /// Thresholds in force.
    pub thresholds: Thresholds,
    /// Per active non-comparator arm.
    pub arms: Vec<ArmNumbers>,
    /// Whether the fit converged (a fit that did not never stops a trial early).
    pub converged: bool,
}

/// The thresholds a decision used.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Efficacy: `P(delta > MID) >=` this.
    pub efficacy: f64,
    /// Futility: `P(delta > MID) <=` this for every active arm (0: never).
    pub futility: f64,
    /// Drop: `P(best) <` this.
    pub drop_arm: f64,
    /// Minimum blocks before any stop.
    pub min_blocks: u32,
    /// Where the efficacy threshold came from (decisions stored before
    /// calibration existed used the protocol's).
    #[serde(default)]
    pub source: ThresholdSource,
    /// How the efficacy threshold moves over the looks (`efficacy` is the
    /// last block's).
    #[serde(default)]
    pub boundary: Boundary,
    /// The design's most blocks (what a look-dependent boundary counts to).
    #[serde(default)]
    pub max_blocks: u32,
    /// Where the futility threshold came from.
    #[serde(default)]
    pub futility_source: ThresholdSource,
}

impl Thresholds {
    /// The efficacy threshold at a look after `blocks_done` blocks.
    pub fn efficacy_at(&self, blocks_done: u32) -> f64 {
        self.boundary
            .at(self.efficacy, blocks_done, self.max_blocks)
    }
}

/// How an efficacy threshold moves over a trial's looks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Boundary {
    /// The same threshold at every look.
    #[default]
    Constant,
    /// Stricter early, shaped like O'Brien–Fleming alpha spending: after
    /// `b` of `B` blocks, `P >= Phi(z * sqrt(B / b))` with `z = Phi^-1(c)`,
    /// `c` the last block's threshold (`statistics.md` §5: "possibly a
    /// different one at each look").
    Decreasing,
}

impl Boundary {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Boundary::Constant => "constant",
            Boundary::Decreasing => "decreasing",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Boundary> {
        match s {
            "constant" => Some(Boundary::Constant),
            "decreasing" => Some(Boundary::Decreasing),
            _ => None,
        }
    }

    /// `sqrt(b / B)`, the information fraction's square root (1 for a
    /// constant boundary or past the planned end).
    fn root_fraction(self, blocks: u32, max_blocks: u32) -> f64 {
        match self {
            Boundary::Constant => 1.0,
            Boundary::Decreasing => {
                let b = f64::from(blocks.max(1));
                (b / f64::from(max_blocks).max(b)).sqrt()
            }
        }
    }

    /// The threshold on `P(delta > MID)` after `blocks` of `max_blocks`
    /// blocks when the last block's is `last`.
    pub fn at(self, last: f64, blocks: u32, max_blocks: u32) -> f64 {
        match self {
            // At or above 1 nothing stops; the transform would clamp it to 1.
            Boundary::Constant => last,
            Boundary::Decreasing if last >= 1.0 => last,
            Boundary::Decreasing => norm_cdf(
                norm_quantile(last.clamp(0.0, 1.0)) / self.root_fraction(blocks, max_blocks),
            ),
        }
    }

    /// A look's `P(delta > MID)` on the last block's scale:
    /// `statistic(p, b, B) >= last` exactly when `p >= at(last, b, B)`, so
    /// one number per virtual trial (its largest statistic) decides at
    /// which thresholds it stops.
    pub fn statistic(self, p: f64, blocks: u32, max_blocks: u32) -> f64 {
        match self {
            Boundary::Constant => p,
            Boundary::Decreasing => {
                norm_cdf(norm_quantile(p.clamp(0.0, 1.0)) * self.root_fraction(blocks, max_blocks))
            }
        }
    }
}

/// Where a trial's efficacy threshold came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdSource {
    /// The protocol's stated threshold, not calibrated for its design.
    #[default]
    Protocol,
    /// Calibrated before the trial started by simulating its design on the
    /// stress suite (`trial::simulate::suite`), so that false stops stay at
    /// or below the protocol's target in every scenario.
    Calibrated,
}

impl ThresholdSource {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ThresholdSource::Protocol => "protocol",
            ThresholdSource::Calibrated => "calibrated",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<ThresholdSource> {
        match s {
            "protocol" => Some(ThresholdSource::Protocol),
            "calibrated" => Some(ThresholdSource::Calibrated),
            _ => None,
        }
    }

    /// In words, for pages, reports and emails.
    pub fn describe(self) -> &'static str {
        match self {
            ThresholdSource::Protocol => "the protocol's stated threshold (not calibrated)",
            ThresholdSource::Calibrated => {
                "calibrated by simulating this design on the stress suite before the trial's first look that could stop it"
            }
        }
    }
}

/// The thresholds a trial locked when it started: efficacy, and futility
/// where calibration set it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LockedThresholds {
    /// Stop for efficacy when `P(delta > MID) >=` this (at the last block;
    /// earlier looks follow `boundary`).
    pub efficacy: f64,
    /// Where it came from.
    pub source: ThresholdSource,
    /// How it moves over the looks.
    #[serde(default)]
    pub boundary: Boundary,
    /// Stop for futility when `P(delta > MID) <=` this (0: never); `None`:
    /// the protocol's (trials locked before futility was calibrated, and
    /// uncalibrated ones).
    #[serde(default)]
    pub futility: Option<f64>,
    /// Drop an arm when `P(best) <` this (0: never); `None`: the
    /// protocol's (two arms, trials locked before arm drops were
    /// calibrated, and uncalibrated ones).
    #[serde(default)]
    pub drop_arm: Option<f64>,
}

impl LockedThresholds {
    /// The protocol's stated threshold, the same at every look (no
    /// calibration: the demo, or `jobs.calibrate = false`).
    pub fn stated(rules: &DecisionRules) -> LockedThresholds {
        LockedThresholds {
            efficacy: rules.efficacy,
            source: ThresholdSource::Protocol,
            boundary: Boundary::Constant,
            futility: None,
            drop_arm: None,
        }
    }
}

/// Applies the rules of §5 at a look.
///
/// Order: efficacy (best arm by `P(delta > MID)`), futility (every active
/// arm), arm dropping (K >= 3 active; the comparator never), then
/// inconclusive at the last period. Before `min_blocks` blocks, or when the
/// fit did not converge, the trial continues (or, at the last period, stops
/// as inconclusive).
pub fn decide(
    thresholds: Thresholds,
    comparator: usize,
    look: &Look,
    fit: &FitReport,
    arm_keys: &[String],
) -> Decision {
    let arms: Vec<ArmNumbers> = look
        .active
        .iter()
        .filter(|&&a| a != comparator)
        .filter_map(|&a| {
            let key = arm_keys.get(a)?;
            let e = fit.effects.iter().find(|e| &e.arm == key)?;
            Some(ArmNumbers {
                arm: a,
                key: key.clone(),
                mean: e.mean,
                ci90: e.ci90,
                p_better_by_mid: e.p_better_by_mid,
                p_best: e.p_best,
            })
        })
        .collect();
    let converged = fit.diagnostics.converged;
    let done = |action: Action, rule: String| Decision {
        look: look.clone(),
        action,
        rule,
        thresholds,
        arms: arms.clone(),
        converged,
    };
    let fallback = |why: String| {
        if look.last_period {
            done(
                Action::StopInconclusive,
                format!("last planned period ended ({why})"),
            )
        } else {
            done(Action::Continue, why)
        }
    };
    if !converged {
        let reason = fit
            .diagnostics
            .reason
            .clone()
            .unwrap_or_else(|| "unknown".into());
        return fallback(format!("fit did not converge: {reason}"));
    }
    if look.blocks_done < thresholds.min_blocks {
        return fallback(format!(
            "{} of {} blocks before the first decision",
            look.blocks_done, thresholds.min_blocks
        ));
    }
    if arms.is_empty() {
        return fallback("no active arm besides the comparator".into());
    }
    let best = arms
        .iter()
        .max_by(|a, b| a.p_better_by_mid.total_cmp(&b.p_better_by_mid))
        .cloned();
    if let Some(best) = best
        && best.p_better_by_mid >= thresholds.efficacy_at(look.blocks_done)
    {
        return done(
            Action::StopEfficacy { arm: best.arm },
            format!(
                "P({} better by MID) = {:.3} >= {:.4} ({}{})",
                best.key,
                best.p_better_by_mid,
                thresholds.efficacy_at(look.blocks_done),
                thresholds.source.as_str(),
                match thresholds.boundary {
                    Boundary::Constant => String::new(),
                    Boundary::Decreasing => format!(
                        ", stricter before block {}: {:.4} there",
                        thresholds.max_blocks, thresholds.efficacy
                    ),
                }
            ),
        );
    }
    // A futility threshold of 0 never stops (as an efficacy threshold of 1).
    if thresholds.futility > 0.0
        && arms
            .iter()
            .all(|a| a.p_better_by_mid <= thresholds.futility)
    {
        let worst = arms
            .iter()
            .map(|a| a.p_better_by_mid)
            .fold(0.0f64, f64::max);
        return done(
            Action::StopFutility,
            format!(
                "P(better by MID) <= {} for every active arm (largest {:.3}; {})",
                thresholds.futility,
                worst,
                thresholds.futility_source.as_str()
            ),
        );
    }
    if look.active.len() >= 3 {
        let drop: Vec<&ArmNumbers> = arms
            .iter()
            .filter(|a| a.p_best < thresholds.drop_arm)
            .collect();
        if !drop.is_empty() && drop.len() < arms.len() {
            let words: Vec<String> = drop
                .iter()
                .map(|a| format!("P({} best) = {:.3}", a.key, a.p_best))
                .collect();
            return done(
                Action::DropArms {
                    arms: drop.iter().map(|a| a.arm).collect(),
                },
                format!("{} < {}", words.join(", "), thresholds.drop_arm),
            );
        }
        if !drop.is_empty() {
            return done(
                Action::StopFutility,
                format!(
                    "P(best) < {} for every active arm: the comparator is best",
                    thresholds.drop_arm
                ),
            );
        }
    }
    fallback(format!(
        "no rule fired (largest P(better by MID) {:.3})",
        arms.iter()
            .map(|a| a.p_better_by_mid)
            .fold(0.0f64, f64::max)
    ))
}

/// The thresholds of a protocol's rules and design.
pub fn thresholds(rules: &DecisionRules, min_blocks: u32) -> Thresholds {
    Thresholds {
        efficacy: rules.efficacy,
        futility: rules.futility,
        drop_arm: rules.drop_arm,
        min_blocks,
        source: ThresholdSource::Protocol,
        boundary: Boundary::Constant,
        max_blocks: 0,
        futility_source: ThresholdSource::Protocol,
    }
}

/// The thresholds a trial decides with: the protocol's, with the efficacy
/// threshold (and its boundary over `max_blocks`) and the futility
/// threshold it locked (at its start, or refined before its first decisive
/// look) where it has them.
pub fn trial_thresholds(
    rules: &DecisionRules,
    (min_blocks, max_blocks): (u32, u32),
    locked: Option<LockedThresholds>,
) -> Thresholds {
    let stated = Thresholds {
        max_blocks,
        ..thresholds(rules, min_blocks)
    };
    match locked {
        Some(l) => Thresholds {
            efficacy: l.efficacy,
            futility: l.futility.unwrap_or(rules.futility),
            futility_source: match l.futility {
                Some(_) => l.source,
                None => ThresholdSource::Protocol,
            },
            source: l.source,
            boundary: l.boundary,
            drop_arm: l.drop_arm.unwrap_or(rules.drop_arm),
            ..stated
        },
        None => stated,
    }
}

/// Thompson-type allocation probabilities (§5): `p_j = f + (1 - K f) w_j`,
/// `w_j = P(best_j)^c / sum_k P(best_k)^c` over the `K` active arms, so every
/// active arm keeps at least the floor `f`.
pub fn allocation_probabilities(
    p_best: &[(usize, f64)],
    allocation: Allocation,
) -> Vec<(usize, f64)> {
    let k = p_best.len() as f64;
    let powered: Vec<f64> = p_best
        .iter()
        .map(|&(_, p)| p.max(0.0).powf(allocation.power))
        .collect();
    let total: f64 = powered.iter().sum();
    p_best
        .iter()
        .zip(&powered)
        .map(|(&(arm, _), &w)| {
            let share = if total > 0.0 { w / total } else { 1.0 / k };
            (arm, allocation.floor + (1.0 - k * allocation.floor) * share)
        })
        .collect()
}

/// Draws the next period's arm from allocation probabilities, reproducibly
/// from the trial's seed and the period number.
pub fn draw_allocation(probs: &[(usize, f64)], seed: u64, period: u32) -> Option<usize> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ (u64::from(period) << 32) ^ 0xa110_ca7e);
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut u = rng.random::<f64>() * total;
    for &(arm, p) in probs {
        if u < p {
            return Some(arm);
        }
        u -= p;
    }
    probs.last().map(|p| p.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fit::{Diagnostics, Method, PriorReport, ScaleSource};
    use crate::engine::inference::{EffectSummary, HyperPriors};
    use crate::engine::spec::Family;

    fn effect(arm: &str, p_mid: f64, p_best: f64) -> EffectSummary {
        EffectSummary {
            arm: arm.into(),
            mean: 1.0,
            sd: 1.0,
            ci50: [0.0, 2.0],
            ci90: [-1.0, 3.0],
            ci95: [-1.5, 3.5],
            p_better_by_mid: p_mid,
            p_better: p_mid.max(0.5),
            p_best,
            natural: None,
        }
    }

    fn report(effects: Vec<EffectSummary>, converged: bool) -> FitReport {
        FitReport {
            family: Family::Gaussian,
            noise: Default::default(),
            observations: 50,
            effects,
            baseline: [0.0, 1.0],
            p_best_comparator: 0.1,
            hyperparameters: Vec::new(),
            diagnostics: Diagnostics {
                method: Method::Grid,
                converged,
                reason: (!converged).then(|| "grid error check".into()),
                wall_ms: 1.0,
                evaluations: 1,
                grid_points: None,
                grid_error_mean: None,
                grid_error_sd: None,
                grid_error_prob: None,
                acceptance: None,
                divergences: None,
                rhat: None,
                ess_bulk: None,
                importance_ess: None,
                mc_error: None,
            },
            priors: PriorReport {
                scale: 1.0,
                scale_source: ScaleSource::Protocol,
                baseline: [0.0, 1.0],
                effects: Default::default(),
                hyper: HyperPriors {
                    drift_time_median_days: 3.0,
                    drift_time_log_sd: 1.0,
                    drift_sd_scale: 1.0,
                    half_life_median_days: 1.0,
                    half_life_log_sd: 0.75,
                    noise_sd_scale: 1.0,
                    precision_median: 20.0,
                    precision_log_sd: 1.0,
                },
            },
            path: Vec::new(),
        }
    }

    fn keys() -> Vec<String> {
        ["placebo", "a", "b", "c"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn th() -> Thresholds {
        Thresholds {
            efficacy: 0.95,
            futility: 0.05,
            drop_arm: 0.05,
            min_blocks: 2,
            source: ThresholdSource::Protocol,
            boundary: Boundary::Constant,
            max_blocks: 6,
            futility_source: ThresholdSource::Protocol,
        }
    }

    fn look(blocks_done: u32, last: bool, active: &[usize]) -> Look {
        Look {
            period: 7,
            blocks_done,
            last_period: last,
            active: active.to_vec(),
        }
    }

    #[test]
    fn a_trial_decides_with_the_threshold_it_locked() {
        let rules = DecisionRules::default();
        let stated = trial_thresholds(&rules, (2, 8), None);
        assert_eq!(
            (stated.efficacy, stated.source),
            (0.95, ThresholdSource::Protocol)
        );
        assert_eq!(stated.efficacy_at(1), 0.95);
        let locked = LockedThresholds {
            efficacy: 0.9883,
            source: ThresholdSource::Calibrated,
            boundary: Boundary::Constant,
            futility: None,
            drop_arm: None,
        };
        let t = trial_thresholds(&rules, (2, 8), Some(locked));
        assert_eq!(
            (t.efficacy, t.source),
            (0.9883, ThresholdSource::Calibrated)
        );
        assert_eq!(t.efficacy_at(2), 0.9883);
        // A decreasing boundary: stricter early, the locked value at the end.
        let d = trial_thresholds(
            &rules,
            (2, 8),
            Some(LockedThresholds {
                boundary: Boundary::Decreasing,
                ..locked
            }),
        );
        assert!((d.efficacy_at(8) - 0.9883).abs() < 1e-12);
        assert!((d.efficacy_at(20) - 0.9883).abs() < 1e-12);
        // z = Phi^-1(0.9883) = 2.267; after 2 of 8 blocks z * 2 = 4.535.
        let early = norm_cdf(2.0 * norm_quantile(0.9883));
        assert!((d.efficacy_at(2) - early).abs() < 1e-12);
        assert!(d.efficacy_at(2) > d.efficacy_at(4) && d.efficacy_at(4) > 0.9883);
        // One statistic per look decides at which thresholds it stops.
        for b in 1..=8 {
            for p in [0.5, 0.9, 0.99, 0.999, 0.99999] {
                let stops = p >= Boundary::Decreasing.at(0.9883, b, 8);
                let by_statistic = Boundary::Decreasing.statistic(p, b, 8) >= 0.9883;
                assert_eq!(stops, by_statistic, "p {p} after {b} blocks");
            }
        }
        assert_eq!((t.futility, t.drop_arm, t.min_blocks), (0.05, 0.05, 2));
        assert_eq!(t.futility_source, ThresholdSource::Protocol);
        // A locked futility threshold replaces the protocol's; 0 never stops.
        let f = trial_thresholds(
            &rules,
            (2, 8),
            Some(LockedThresholds {
                futility: Some(0.0213),
                ..locked
            }),
        );
        assert_eq!(
            (f.futility, f.futility_source),
            (0.0213, ThresholdSource::Calibrated)
        );
        let off = Thresholds { futility: 0.0, ..f };
        let fit = report(vec![effect("a", 0.0, 0.1)], true);
        let at = look(4, false, &[0, 1]);
        assert_eq!(decide(off, 0, &at, &fit, &keys()).action, Action::Continue);
        let d = decide(f, 0, &at, &fit, &keys());
        assert_eq!(d.action, Action::StopFutility);
        assert!(
            d.rule.contains("0.0213") && d.rule.contains("calibrated"),
            "{}",
            d.rule
        );
        // A locked arm-drop threshold replaces the protocol's (0: never).
        let dropping = trial_thresholds(
            &rules,
            (2, 8),
            Some(LockedThresholds {
                drop_arm: Some(0.0125),
                ..locked
            }),
        );
        assert_eq!(dropping.drop_arm, 0.0125);
        // Decisions stored before calibration existed read as the protocol's.
        let old: Thresholds = serde_json::from_str(
            r#"{"efficacy":0.95,"futility":0.05,"drop_arm":0.05,"min_blocks":2}"#,
        )
        .unwrap();
        assert_eq!(old.source, ThresholdSource::Protocol);
        for s in [ThresholdSource::Protocol, ThresholdSource::Calibrated] {
            assert_eq!(ThresholdSource::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn efficacy_futility_drop_and_inconclusive() {
        let k = keys();
        let eff = report(
            vec![
                effect("a", 0.97, 0.9),
                effect("b", 0.2, 0.05),
                effect("c", 0.1, 0.05),
            ],
            true,
        );
        let d = decide(th(), 0, &look(2, false, &[0, 1, 2, 3]), &eff, &k);
        assert_eq!(d.action, Action::StopEfficacy { arm: 1 });
        // Not before min_blocks.
        let d = decide(th(), 0, &look(1, false, &[0, 1, 2, 3]), &eff, &k);
        assert_eq!(d.action, Action::Continue);
        let fut = report(
            vec![
                effect("a", 0.04, 0.3),
                effect("b", 0.01, 0.3),
                effect("c", 0.05, 0.3),
            ],
            true,
        );
        let d = decide(th(), 0, &look(3, false, &[0, 1, 2, 3]), &fut, &k);
        assert_eq!(d.action, Action::StopFutility);
        let drop = report(
            vec![
                effect("a", 0.6, 0.6),
                effect("b", 0.1, 0.01),
                effect("c", 0.3, 0.3),
            ],
            true,
        );
        let d = decide(th(), 0, &look(3, false, &[0, 1, 2, 3]), &drop, &k);
        assert_eq!(d.action, Action::DropArms { arms: vec![2] });
        // Two arms left: no dropping, and at the end: inconclusive.
        let d = decide(th(), 0, &look(4, true, &[0, 1]), &drop, &k);
        assert_eq!(d.action, Action::StopInconclusive);
        assert!(d.action.stops());
        // The numbers only cover active arms.
        assert_eq!(d.arms.len(), 1);
    }

    #[test]
    fn a_fit_that_did_not_converge_never_stops_early() {
        let k = keys();
        let eff = report(vec![effect("a", 0.999, 0.99)], false);
        let d = decide(th(), 0, &look(3, false, &[0, 1]), &eff, &k);
        assert_eq!(d.action, Action::Continue);
        assert!(d.rule.contains("did not converge"), "{}", d.rule);
        let d = decide(th(), 0, &look(3, true, &[0, 1]), &eff, &k);
        assert_eq!(d.action, Action::StopInconclusive);
    }

    #[test]
    fn allocation_keeps_the_floor_and_sums_to_one() {
        let a = Allocation {
            power: 1.0,
            floor: 0.1,
        };
        let p = allocation_probabilities(&[(0, 0.0), (1, 0.9), (2, 0.1)], a);
        let total: f64 = p.iter().map(|x| x.1).sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert!((p[0].1 - 0.1).abs() < 1e-12);
        assert!((p[1].1 - (0.1 + 0.7 * 0.9)).abs() < 1e-12);
        // Draws follow the probabilities (10,000 draws: sd of a share <= 0.005).
        let n = 10_000;
        let ones = (0..n)
            .filter(|&i| draw_allocation(&p, 7, i) == Some(1))
            .count();
        let share = ones as f64 / f64::from(n);
        assert!((share - p[1].1).abs() < 0.02, "{share}");
        assert_eq!(draw_allocation(&p, 7, 3), draw_allocation(&p, 7, 3));
    }
}

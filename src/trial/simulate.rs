//! Whole virtual trials (`statistics.md` §6): a schedule from a seed, data
//! from the model (`engine::generate`), and every refit and look taken by the
//! same [`step`](crate::trial::step) the daemon takes; false-stop rates,
//! power, trial lengths and arm drops with their Monte Carlo errors; the
//! efficacy threshold calibrated to a target false-stop rate.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::engine::fit::{FitReport, FitSpec, Method, SampleScale};
use crate::engine::generate::{Latent, ModelParams, normal};
use crate::engine::inference::{GridOptions, HyperPriors, McmcOptions};
use crate::engine::model::{ArmPath, Series};
use crate::engine::natural;
use crate::engine::spec::{Family, Mid, ModelSpec};
use crate::trial::betting::BettingTest;
use crate::trial::decide::{self, Action, Boundary, Decision};
use crate::trial::design;
use crate::trial::protocol::{DesignKind, Protocol, ProtocolHash};
use crate::trial::scenario::{self, Noise, Scenario};
use crate::trial::step;
use progress::{Meter, Progress};

pub mod memo;
pub mod progress;
pub mod redesign;
pub mod suite;

/// Settings of a simulation run.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Virtual trials per condition.
    pub trials: usize,
    /// True effect of each working arm ([`SimOptions::working_arms`]) in the
    /// "effect" condition, in outcome units (gaussian) or as a ratio
    /// (log/logit links); default the MID.
    pub effect: Option<f64>,
    /// Probability that a day's observation is missing.
    pub missing: f64,
    /// Probability that on a given day the participant takes the comparator
    /// instead of the assigned arm (analysis stays intention to treat).
    pub non_adherence: f64,
    /// Stress scenario.
    pub scenario: Scenario,
    /// Master seed; every virtual trial's seed derives from it.
    pub seed: u64,
    /// Worker threads.
    pub threads: usize,
    /// Calibrate the efficacy threshold to this false-stop rate.
    pub calibrate: Option<f64>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// The GPU the refits run on (their batches gathered into shared
    /// launches); `None`: the CPU.
    pub device: Option<crate::engine::gpu::SharedDevice>,
    /// Where power at twice the effect is below 50%, simulate the changes
    /// that would raise it (more blocks, longer periods) and report theirs
    /// ([`redesign`]).
    pub redesign: bool,
    /// Every virtual trial's true onset/washout half-life in days, instead
    /// of a draw from the protocol's prior (the long-carryover scenario
    /// keeps its own): what the design finds when the effect comes at once,
    /// or slowly, while the model keeps its prior.
    pub true_half_life: Option<f64>,
    /// Also count the virtual trials into this, for someone watching from
    /// another thread (the dashboard, while the designs job runs).
    pub watch: Option<std::sync::Arc<Progress>>,
    /// How many arms have the effect in the effect condition: the first
    /// that many besides the comparator (1: the effect arm alone). With
    /// more, a stop for any of them finds a right arm, and the arm-drop
    /// rates show how often an arm that works was dropped (the suite
    /// calibrates drops with one).
    pub working_arms: usize,
    /// Where virtual trials are kept as they finish and recalled from, so
    /// that a run stopped part way takes up where it was
    /// ([`memo::TrialMemo`]); `None`: every trial runs.
    pub memo: Option<std::sync::Arc<dyn memo::TrialMemo>>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            trials: 1000,
            effect: None,
            missing: 0.1,
            non_adherence: 0.05,
            scenario: Scenario::Prior,
            seed: 1,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            calibrate: None,
            progress: false,
            device: None,
            redesign: false,
            true_half_life: None,
            watch: None,
            working_arms: 1,
            memo: None,
        }
    }
}

/// A look at which the efficacy rule could fire (fit converged, enough blocks).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct EligibleLook {
    /// Largest `P(delta_j > MID)` among active arms.
    p_mid: f64,
    /// The arm with it.
    arm: usize,
    /// Blocks and days run at the look.
    blocks: u32,
    days: u32,
}

/// One virtual trial run with the efficacy rule switched off: since a stop
/// for efficacy ends a trial and nothing before it depends on the threshold,
/// the trial's course under any threshold `c` is this one cut at its first
/// eligible look with `P >= c` (see [`Outcomes::at`]). Kept in a
/// [`memo::TrialMemo`] as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VirtualTrial {
    looks: Vec<EligibleLook>,
    /// How it ended without efficacy stops.
    end: Action,
    /// The futility threshold it was run with: its course under any higher
    /// one is exact too ([`VirtualTrial::under`]).
    futility: f64,
    end_blocks: u32,
    end_days: u32,
    /// Arms dropped, with the number of looks recorded before the drop.
    dropped: Vec<(usize, usize)>,
    /// Where the betting test on block differences rejected "no effect",
    /// over the whole planned schedule (data go on after nof1d's own rule
    /// ends a trial, so that the two are compared on the same trials).
    betting: Option<BettingStop>,
    fits: usize,
    evaluations: usize,
    not_converged: usize,
    failed: usize,
    /// Recalled from a memo, not run in this run (its `fits` were done
    /// then).
    #[serde(skip)]
    resumed: bool,
}

/// Where a virtual trial's betting test rejected.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct BettingStop {
    /// The arm found better than the comparator.
    arm: usize,
    /// Blocks completed at the rejection.
    blocks: u32,
}

/// One look of a virtual trial as it was taken: the fit it read (the
/// newest that succeeded, as in the daemon; none before any did), the
/// decision, and the plan it left.
#[derive(Debug, Clone)]
pub struct TracedLook {
    /// The fit the look read.
    pub fit: Option<FitReport>,
    /// The decision.
    pub decision: Decision,
    /// The plan after the look.
    pub plan: Vec<design::PlannedPeriod>,
}

/// What happens to one virtual trial under a rule (efficacy and futility).
struct Course {
    efficacy: Option<usize>,
    end: Action,
    blocks: u32,
    days: u32,
    dropped: Vec<usize>,
}

/// A stopping rule: the efficacy threshold of the last block and how it
/// moves, and the futility threshold.
#[derive(Debug, Clone, Copy)]
struct Rule {
    boundary: Boundary,
    last: f64,
    max_blocks: u32,
    /// Stop for futility at `P(delta > MID) <=` this; at or below the
    /// threshold a virtual trial was run with, that one applies (0: as run).
    futility: f64,
}

impl Rule {
    /// No efficacy stops, futility as the trials were run.
    fn never() -> Rule {
        Rule::constant(f64::INFINITY)
    }

    /// A constant efficacy threshold, futility as the trials were run.
    fn constant(threshold: f64) -> Rule {
        Rule {
            boundary: Boundary::Constant,
            last: threshold,
            max_blocks: 0,
            futility: 0.0,
        }
    }

    /// A look's statistic on the last block's scale ([`Boundary::statistic`]).
    fn statistic(&self, look: &EligibleLook) -> f64 {
        self.boundary
            .statistic(look.p_mid, look.blocks, self.max_blocks)
    }
}

impl VirtualTrial {
    fn at(&self, threshold: f64) -> Course {
        self.under(Rule::constant(threshold))
    }

    /// The trial's course under a rule: cut at its first eligible look
    /// whose statistic reaches the efficacy threshold (`decide` tests
    /// efficacy first) or whose largest `P(delta > MID)` is at or below the
    /// futility threshold. Exact for any futility threshold at or above the
    /// one the trial was run with: until the first look where it fires, the
    /// trial's course does not depend on it.
    fn under(&self, rule: Rule) -> Course {
        let futility = rule.futility.max(self.futility);
        let cut = self.looks.iter().enumerate().find_map(|(i, l)| {
            if rule.statistic(l) >= rule.last {
                Some((i, Action::StopEfficacy { arm: l.arm }))
            } else if futility > 0.0 && l.p_mid <= futility {
                Some((i, Action::StopFutility))
            } else {
                None
            }
        });
        match cut {
            Some((i, end)) => {
                let l = self.looks[i];
                Course {
                    efficacy: match end {
                        Action::StopEfficacy { arm } => Some(arm),
                        _ => None,
                    },
                    end,
                    blocks: l.blocks,
                    days: l.days,
                    dropped: self
                        .dropped
                        .iter()
                        .filter(|d| d.1 <= i)
                        .map(|d| d.0)
                        .collect(),
                }
            }
            None => Course {
                efficacy: None,
                end: self.end.clone(),
                blocks: self.end_blocks,
                days: self.end_days,
                dropped: self.dropped.iter().map(|d| d.0).collect(),
            },
        }
    }

    /// Whether the trial gave up on `arm` as it ran: dropped it, or
    /// stopped because every arm was less likely best than the comparator
    /// (run without futility stops, only the arm-drop rule ends a trial so).
    /// A stopping rule only cuts a trial short, so under any rule it gives
    /// up on `arm` at most where this says so.
    fn gave_up_on(&self, arm: usize) -> bool {
        self.dropped.iter().any(|d| d.0 == arm) || self.end == Action::StopFutility
    }

    /// The largest eligible `P(delta > MID)`: the trial stops for efficacy
    /// under every threshold at or below it.
    #[cfg(test)]
    fn max_p(&self) -> f64 {
        self.max_statistic(Boundary::Constant, 0, 0.0)
    }

    /// The largest statistic of `boundary` over the eligible looks before
    /// a futility stop at `futility` (at or above the one it was run with):
    /// the trial stops for efficacy under every last-block threshold at or
    /// below it.
    fn max_statistic(&self, boundary: Boundary, max_blocks: u32, futility: f64) -> f64 {
        let futility = futility.max(self.futility);
        let mut max = 0.0f64;
        for l in &self.looks {
            max = max.max(boundary.statistic(l.p_mid, l.blocks, max_blocks));
            if futility > 0.0 && l.p_mid <= futility {
                break;
            }
        }
        max
    }

    /// The smallest `P(delta > MID)` over the eligible looks before `rule`
    /// stops the trial for efficacy (1 when there are none): the trial
    /// stops for futility under every futility threshold at or above it
    /// (and at or above the one it was run with). A trial that ended as
    /// futile by the arm-drop rule (every arm less likely best than the
    /// comparator), before any efficacy stop, counts as futile under every
    /// threshold: 0.
    fn min_before_efficacy(&self, rule: Rule) -> f64 {
        let before = self
            .looks
            .iter()
            .take_while(|l| rule.statistic(l) < rule.last);
        let (mut min, mut n) = (1.0f64, 0);
        for l in before {
            min = min.min(l.p_mid);
            n += 1;
        }
        if n == self.looks.len() && self.end == Action::StopFutility {
            0.0
        } else {
            min
        }
    }
}

/// A proportion with its Monte Carlo standard error `sqrt(p (1 - p) / n)`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Rate {
    /// Proportion.
    pub rate: f64,
    /// Monte Carlo standard error.
    pub se: f64,
    /// Count.
    pub count: usize,
}

impl Rate {
    fn of(count: usize, n: usize) -> Rate {
        let p = count as f64 / n.max(1) as f64;
        Rate {
            rate: p,
            se: (p * (1.0 - p) / n.max(1) as f64).sqrt(),
            count,
        }
    }
}

/// A distribution summary: mean (with its Monte Carlo se) and quantiles.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Spread {
    /// Mean.
    pub mean: f64,
    /// Monte Carlo standard error of the mean.
    pub se: f64,
    /// 10th percentile.
    pub p10: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
}

impl Spread {
    fn of(mut xs: Vec<f64>) -> Spread {
        xs.sort_by(f64::total_cmp);
        let n = xs.len().max(1) as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        let q = |p: f64| {
            xs.get(((xs.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        Spread {
            mean,
            se: (var / n).sqrt(),
            p10: q(0.1),
            p50: q(0.5),
            p90: q(0.9),
        }
    }
}

/// Operating characteristics of one condition at one efficacy threshold.
#[derive(Debug, Clone, Serialize)]
pub struct Operating {
    /// Stops for efficacy (under no effect: the false-stop rate; under the
    /// effect: the power).
    pub stop_efficacy: Rate,
    /// Stops for efficacy naming an arm that truly has the effect.
    pub stop_efficacy_right_arm: Rate,
    /// Stops for futility.
    pub stop_futility: Rate,
    /// Stops as inconclusive (last period reached).
    pub stop_inconclusive: Rate,
    /// Blocks run.
    pub blocks: Spread,
    /// Days run (run-in included).
    pub days: Spread,
    /// How often each arm was dropped, by key.
    pub dropped: BTreeMap<String, Rate>,
}

fn operating(
    trials: &[VirtualTrial],
    threshold: f64,
    right_arms: &[usize],
    keys: &[String],
) -> Operating {
    let n = trials.len();
    let courses: Vec<Course> = trials.iter().map(|t| t.at(threshold)).collect();
    let count = |f: &dyn Fn(&Course) -> bool| Rate::of(courses.iter().filter(|c| f(c)).count(), n);
    let mut dropped = BTreeMap::new();
    for (arm, key) in keys.iter().enumerate() {
        let k = courses.iter().filter(|c| c.dropped.contains(&arm)).count();
        if k > 0 {
            dropped.insert(key.clone(), Rate::of(k, n));
        }
    }
    Operating {
        stop_efficacy: count(&|c| c.efficacy.is_some()),
        stop_efficacy_right_arm: count(&|c| c.efficacy.is_some_and(|a| right_arms.contains(&a))),
        stop_futility: count(&|c| c.end == Action::StopFutility),
        stop_inconclusive: count(&|c| c.end == Action::StopInconclusive),
        blocks: Spread::of(courses.iter().map(|c| f64::from(c.blocks)).collect()),
        days: Spread::of(courses.iter().map(|c| f64::from(c.days)).collect()),
        dropped,
    }
}

/// The figures at one efficacy threshold: under no effect and under the effect.
#[derive(Debug, Clone, Serialize)]
pub struct AtThreshold {
    /// The efficacy threshold `P(delta > MID) >= c`.
    pub efficacy: f64,
    /// No arm has an effect.
    pub no_effect: Operating,
    /// The working arms have the effect.
    pub effect: Operating,
}

/// The anytime-valid betting test on the same virtual trials
/// ([`crate::trial::betting`]): its false stops and power, beside nof1d's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BettingRates {
    /// Its level (the false-stop target), split over the arms.
    pub alpha: f64,
    /// Rejections of "no effect" when no arm has an effect.
    pub false_stops: Rate,
    /// Rejections when the working arms have the effect.
    pub power: Rate,
    /// Rejections naming a working arm.
    pub power_right_arm: Rate,
    /// Blocks run when it rejected, under the effect.
    pub blocks: Option<Spread>,
}

/// The betting test's rates on `null` and `effect` trials, or `None` when
/// the design gives it no valid footing ([`Setup::betting_tests`]).
fn betting_rates(
    setup: &Setup<'_>,
    null: &[VirtualTrial],
    effect: &[VirtualTrial],
) -> Option<BettingRates> {
    if setup.betting_tests().is_empty() {
        return None;
    }
    let rejected = |ts: &[VirtualTrial], right: Option<&[usize]>| {
        let k = ts
            .iter()
            .filter(|t| {
                t.betting
                    .is_some_and(|b| right.is_none_or(|arms| arms.contains(&b.arm)))
            })
            .count();
        Rate::of(k, ts.len())
    };
    let blocks: Vec<f64> = effect
        .iter()
        .filter_map(|t| t.betting.map(|b| f64::from(b.blocks)))
        .collect();
    Some(BettingRates {
        alpha: setup.options.calibrate.unwrap_or(DEFAULT_TARGET),
        false_stops: rejected(null, None),
        power: rejected(effect, None),
        power_right_arm: rejected(effect, Some(&setup.working)),
        blocks: (!blocks.is_empty()).then(|| Spread::of(blocks)),
    })
}

/// The result of `--calibrate`.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    /// Target false-stop rate.
    pub target: f64,
    /// Whether a threshold below 1 meets the target.
    pub achievable: bool,
    /// False-stop rate on the trials used to choose the threshold.
    pub in_sample_false_stop: Rate,
    /// The calibrated threshold, with the false-stop rate measured again on
    /// fresh virtual trials (out of sample) and the power.
    pub result: AtThreshold,
}

/// Engine work done and how long it took.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimTiming {
    /// Wall time in seconds.
    pub wall_s: f64,
    /// Worker threads.
    pub threads: usize,
    /// Virtual trials run (all conditions).
    pub trials: usize,
    /// Full refits.
    pub fits: usize,
    /// Posterior evaluations (filter passes) over all fits.
    pub evaluations: usize,
    /// Fits that did not converge (no stop taken on them).
    pub not_converged: usize,
    /// Fits that failed outright (treated as not converged).
    pub failed: usize,
    /// Wall milliseconds per fit, all threads together (over the fits run
    /// in this run: not those of trials recalled from a memo).
    pub ms_per_fit: f64,
    /// Virtual trials recalled from a memo, run by an earlier run that
    /// was stopped part way ([`memo::TrialMemo`]); their fits are counted
    /// in `fits`.
    #[serde(default)]
    pub resumed: usize,
}

impl SimTiming {
    /// The work done on `trials`, in `wall_s` on `threads` threads.
    fn of<'a>(
        trials: impl IntoIterator<Item = &'a VirtualTrial>,
        wall_s: f64,
        threads: usize,
    ) -> SimTiming {
        let mut timing = SimTiming {
            wall_s,
            threads,
            trials: 0,
            fits: 0,
            evaluations: 0,
            not_converged: 0,
            failed: 0,
            ms_per_fit: 0.0,
            resumed: 0,
        };
        let mut fits_run = 0;
        for t in trials {
            timing.trials += 1;
            timing.fits += t.fits;
            timing.evaluations += t.evaluations;
            timing.not_converged += t.not_converged;
            timing.failed += t.failed;
            if t.resumed {
                timing.resumed += 1;
            } else {
                fits_run += t.fits;
            }
        }
        timing.ms_per_fit = wall_s * 1000.0 * threads as f64 / fits_run.max(1) as f64;
        timing
    }
}

/// Power at twice the effect (`statistics.md` §5): at exactly the MID a
/// rule that asks for "better by the MID" stops at most about half the
/// time however long the trial, so twice the MID is the figure a design is
/// judged by.
#[derive(Debug, Clone, Serialize)]
pub struct DoubleEffect {
    /// The effect simulated, in [`SimulationReport::effect_unit`].
    pub effect: f64,
    /// Virtual trials under it.
    pub trials: usize,
    /// At the protocol's thresholds.
    pub at_protocol: Operating,
    /// At the calibrated threshold, when asked for.
    pub at_calibrated: Option<Operating>,
    /// Where its power at the protocol's thresholds is below 50%: the
    /// changes simulated to raise it, each on its own virtual trials.
    pub redesigns: Vec<redesign::Redesign>,
}

/// Everything `nof1d simulate` reports.
#[derive(Debug, Clone, Serialize)]
pub struct SimulationReport {
    /// Protocol id.
    pub protocol: String,
    /// Protocol hash.
    pub protocol_hash: String,
    /// Scenario.
    pub scenario: Scenario,
    /// Virtual trials per condition.
    pub trials: usize,
    /// The effect simulated, in [`SimulationReport::effect_unit`].
    pub effect: f64,
    /// What `effect` counts: the outcome's unit, a rate or odds ratio, or
    /// (a MID stated as `mid_natural`) a difference per 30 days or in
    /// percentage points.
    #[serde(default)]
    pub effect_unit: String,
    /// `beta` of each working arm on the model's scale, sign-adjusted; for a
    /// difference in the outcome's own units each virtual trial has its own
    /// (it depends on the drift drawn), and this is the one at the prior's
    /// typical drift.
    pub effect_beta: f64,
    /// The (first) arm given the effect.
    pub effect_arm: String,
    /// Other arms given the same effect ([`SimOptions::working_arms`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub also_working: Vec<String>,
    /// The scale `S` data were simulated on.
    pub scale: f64,
    /// Missing-day probability.
    pub missing: f64,
    /// Non-adherence probability.
    pub non_adherence: f64,
    /// The true onset/washout half-life every trial had, where it was set
    /// (`--true-half-life`) instead of drawn from the prior.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub true_half_life: Option<f64>,
    /// Master seed.
    pub seed: u64,
    /// Planned days (run-in and all blocks).
    pub planned_days: u32,
    /// The protocol's thresholds.
    pub default: AtThreshold,
    /// The calibrated threshold, when asked for.
    pub calibrated: Option<Calibration>,
    /// Power at twice the effect (none where the effect is no change, or
    /// twice it cannot happen on the outcome's scale).
    #[serde(default)]
    pub double_effect: Option<DoubleEffect>,
    /// The anytime-valid betting test on the same trials (none where the
    /// design's block orders do not allow it).
    pub betting: Option<BettingRates>,
    /// Work and time.
    pub timing: SimTiming,
}

/// Errors of a simulation.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The protocol cannot be simulated.
    #[error("{0}")]
    Protocol(String),
    /// Whoever watched the work asked it to end ([`progress::Progress::cancel`]).
    #[error("cancelled before it was done")]
    Cancelled,
}

/// The working arms' true effect in a condition.
#[derive(Debug, Clone, Copy, PartialEq)]
enum TrueEffect {
    /// `beta` on the model's scale, the same in every virtual trial.
    Link(f64),
    /// Better by this difference in the outcome's own units (a MID stated
    /// as `mid_natural`): each virtual trial's `beta` is solved for its own
    /// drift, so that the difference a fit reports is this one
    /// ([`natural::beta_for_difference`]).
    Natural(f64),
}

impl TrueEffect {
    /// No effect: the null condition.
    const NONE: TrueEffect = TrueEffect::Link(0.0);

    /// Twice the effect: twice `beta` (a ratio squared) or twice the
    /// difference.
    fn doubled(self) -> TrueEffect {
        match self {
            TrueEffect::Link(beta) => TrueEffect::Link(2.0 * beta),
            TrueEffect::Natural(k) => TrueEffect::Natural(2.0 * k),
        }
    }

    /// No change at all (a MID of no change gives no effect to double).
    fn is_none(self) -> bool {
        match self {
            TrueEffect::Link(beta) => beta == 0.0,
            TrueEffect::Natural(k) => k == 0.0,
        }
    }
}

/// Everything fixed for one protocol and condition.
struct Setup<'a> {
    protocol: &'a Protocol,
    keys: Vec<String>,
    comparator: usize,
    effect_arm: usize,
    /// The arms with the effect in the effect condition (`effect_arm`
    /// first; [`SimOptions::working_arms`]).
    working: Vec<usize>,
    /// The model every refit is asked for (the protocol's outcome).
    model: ModelSpec,
    scale: f64,
    hyper: HyperPriors,
    baseline: f64,
    options: &'a SimOptions,
    /// The futility threshold virtual trials run with: the protocol's, or
    /// (calibrating it) the lowest one considered.
    futility: f64,
    /// The arm-drop threshold virtual trials run with: the protocol's, or
    /// (calibrating it) the one being tried.
    drop_arm: f64,
    /// Refit at every look, even one that brought no new observation (the
    /// tests' check that keeping the last fit there changes nothing).
    refit_every_look: bool,
}

impl Setup<'_> {
    /// The effect's `beta` on the model's scale, signed so that a positive
    /// `effect` is better for the participant.
    fn beta_of(&self, effect: f64) -> f64 {
        let outcome = &self.protocol.outcome;
        outcome.direction.sign() * Mid::new(outcome.family, effect).link()
    }

    /// The effect condition: `--effect` as stated (outcome units or ratio),
    /// else the protocol's MID, as a difference in the outcome's own units
    /// where the protocol states one (`mid_natural`).
    fn effect_condition(&self) -> TrueEffect {
        let outcome = &self.protocol.outcome;
        match (self.options.effect, outcome.mid_natural) {
            (Some(effect), _) => TrueEffect::Link(self.beta_of(effect)),
            (None, Some(k)) => TrueEffect::Natural(k),
            (None, None) => TrueEffect::Link(self.beta_of(outcome.mid)),
        }
    }

    /// The effect condition's number and what it counts, for reports.
    fn effect_label(&self) -> (f64, String) {
        let outcome = &self.protocol.outcome;
        let stated = |e: f64| {
            let unit = match outcome.family {
                Family::Gaussian => outcome.unit.clone(),
                Family::Poisson => "rate ratio".to_string(),
                _ => "odds ratio".to_string(),
            };
            (e, unit)
        };
        match (self.options.effect, outcome.mid_natural) {
            (Some(effect), _) => stated(effect),
            (None, Some(k)) => (k, natural::difference_unit(outcome.family)),
            (None, None) => stated(outcome.mid),
        }
    }

    /// Whether `effect` can happen from the simulated baseline (a
    /// difference the scale leaves room for without drift; an effect on
    /// the model's scale always can).
    fn reachable(&self, effect: TrueEffect) -> bool {
        match effect {
            TrueEffect::Link(_) => true,
            TrueEffect::Natural(k) => {
                let outcome = &self.protocol.outcome;
                let target = outcome.direction.sign() * k;
                natural::beta_for_difference(outcome.family, self.baseline, target, 0.0).is_some()
            }
        }
    }

    /// [`Setup::effect_label`] for twice the effect: a ratio squared,
    /// otherwise twice the number.
    fn doubled_label(&self) -> (f64, String) {
        let (e, unit) = self.effect_label();
        let ratio = self.protocol.outcome.family.has_ratio_mid()
            && matches!(self.effect_condition(), TrueEffect::Link(_));
        (if ratio { e * e } else { 2.0 * e }, unit)
    }

    /// The effect's `beta` for a virtual trial whose drift has stationary
    /// variance `v`. [`setup_for`] checks that the difference is reachable
    /// without drift; with a large drift a logit family's mean moves
    /// towards the middle of the scale and may leave too little room, and
    /// that trial then gets the largest effect the scale allows in the
    /// difference's direction (the bisection's end), never none.
    fn beta_at(&self, effect: TrueEffect, v: f64) -> f64 {
        match effect {
            TrueEffect::Link(beta) => beta,
            TrueEffect::Natural(k) => {
                let outcome = &self.protocol.outcome;
                let target = outcome.direction.sign() * k;
                natural::beta_for_difference(outcome.family, self.baseline, target, v)
                    .unwrap_or(40.0 * target.signum())
            }
        }
    }

    /// Draws the model's parameters from the priors (§4 defaults table).
    fn draw_params(&self, effect: TrueEffect, rng: &mut ChaCha20Rng) -> (ModelParams, f64) {
        let h = &self.hyper;
        let lognormal =
            |median: f64, sd: f64, rng: &mut ChaCha20Rng| (median.ln() + sd * normal(rng)).exp();
        let drift_time = lognormal(h.drift_time_median_days, h.drift_time_log_sd, rng);
        let lambda = 1.0 / drift_time;
        let mut drift_sd = (h.drift_sd_scale * normal(rng)).abs();
        if self.options.scenario.without_drift() {
            drift_sd = 0.0;
        }
        let mut half_life = lognormal(h.half_life_median_days, h.half_life_log_sd, rng);
        if self.options.scenario == Scenario::LongCarryover {
            half_life = 1.5 * f64::from(self.protocol.design.period_days);
        } else if let Some(days) = self.options.true_half_life {
            half_life = days;
        }
        let sigma_y = if self.model.family == Family::Gaussian {
            (h.noise_sd_scale * normal(rng)).abs()
        } else {
            0.0
        };
        let precision = lognormal(h.precision_median, h.precision_log_sd, rng);
        let mut beta = vec![0.0; self.keys.len()];
        let effect_beta = self.beta_at(effect, drift_sd * drift_sd);
        for &arm in &self.working {
            beta[arm] = effect_beta;
        }
        (
            ModelParams {
                mu: self.baseline,
                beta,
                lambda,
                sigma_x: drift_sd * (2.0 * lambda).sqrt(),
                kappa: std::f64::consts::LN_2 / half_life,
                sigma_y,
            },
            precision,
        )
    }

    /// One betting test per non-comparator arm, each at `alpha / (K - 1)`
    /// (Bonferroni), or none where the design's block orders are not
    /// independent fair coins (ABBA pairs, Williams rows, adaptive
    /// allocation), which the test's validity needs.
    fn betting_tests(&self) -> Vec<(usize, BettingTest)> {
        let protocol = self.protocol;
        let independent_orders = matches!(
            protocol.design.kind,
            DesignKind::Block | DesignKind::Counterbalanced
        );
        if !independent_orders || protocol.decision.allocation.is_some() {
            return Vec::new();
        }
        let alpha = self.options.calibrate.unwrap_or(DEFAULT_TARGET);
        let others = (self.keys.len() - 1).max(1) as f64;
        (0..self.keys.len())
            .filter(|&a| a != self.comparator)
            .map(|a| (a, BettingTest::new(alpha / others)))
            .collect()
    }

    /// Feeds a completed block's differences (each arm's period mean minus
    /// the comparator's, signed so that positive is better) to the betting
    /// tests, and records the first rejection.
    fn bet_on_block(
        &self,
        tests: &mut [(usize, BettingTest)],
        means: &[(usize, f64)],
        blocks: u32,
        trial: &mut VirtualTrial,
    ) {
        let sign = self.protocol.outcome.direction.sign();
        let mean = |arm: usize| means.iter().find(|m| m.0 == arm).map(|m| m.1);
        let Some(comparator) = mean(self.comparator) else {
            return;
        };
        for (arm, test) in tests.iter_mut() {
            if let Some(m) = mean(*arm)
                && test.observe(sign * (m - comparator))
                && trial.betting.is_none()
            {
                trial.betting = Some(BettingStop { arm: *arm, blocks });
            }
        }
    }

    /// The refit at a look, on the data so far, as the daemon asks for it
    /// (one thread: the simulator already runs a trial per core).
    fn fit_look(
        &self,
        series: &Series,
        trial_seed: u64,
        run_in: Option<SampleScale>,
        dropped: Vec<usize>,
        trial: &mut VirtualTrial,
    ) -> Option<FitReport> {
        // The daemon waits for enough data rather than fit (a 1-day
        // design's first block has two days): no fit, and no failure.
        if series.y.len() < crate::engine::fit::MIN_OBSERVATIONS {
            return None;
        }
        let spec = FitSpec {
            grid: GridOptions {
                threads: 1,
                ..GridOptions::default()
            },
            path: false,
            intervals: false,
            device: self
                .options
                .device
                .as_ref()
                .map(crate::engine::gpu::SharedDevice::get),
            ..step::look_fit_spec(&self.model, self.protocol, trial_seed, run_in, dropped)
        };
        trial.fits += 1;
        match crate::engine::fit::fit(series, &spec) {
            Ok(report) => {
                trial.evaluations += report.diagnostics.evaluations;
                if !report.diagnostics.converged {
                    trial.not_converged += 1;
                    tracing::debug!(
                        observations = series.y.len(),
                        reason = report.diagnostics.reason.as_deref().unwrap_or(""),
                        "virtual trial fit not converged"
                    );
                }
                Some(report)
            }
            Err(e) => {
                tracing::debug!(error = %e, "virtual trial fit failed");
                trial.failed += 1;
                None
            }
        }
    }

    /// The key a virtual trial is kept under in a [`memo::TrialMemo`]:
    /// every input its course depends on besides the protocol and the
    /// program (a memo is kept for one protocol text, and scoped by build
    /// by its keeper): the scenario and its settings, the condition, the
    /// trial's number in its stream, the thresholds it runs with and the
    /// false-stop target (the betting test's level). Numbers are written so
    /// that they read back exactly (`{:?}` of an `f64` is its shortest
    /// exact form).
    fn memo_key(&self, effect: TrueEffect, stream: u64, i: usize, efficacy: f64) -> String {
        let o = self.options;
        format!(
            "{:?} seed {} stream {stream} trial {i} effect {effect:?} working {:?} efficacy {efficacy:?} futility {:?} drop {:?} target {:?} missing {:?} non-adherence {:?} half-life {:?} gpu {} every-look {}",
            o.scenario,
            o.seed,
            self.working,
            self.futility,
            self.drop_arm,
            o.calibrate,
            o.missing,
            o.non_adherence,
            o.true_half_life,
            o.device.is_some(),
            self.refit_every_look,
        )
    }

    /// Trial `i` of `stream`: recalled from the memo where it was kept
    /// there, else run (and kept).
    fn run_kept(&self, effect: TrueEffect, stream: u64, i: usize, efficacy: f64) -> VirtualTrial {
        let seed = trial_seed(self.options.seed, stream, i as u64);
        let Some(memo) = &self.options.memo else {
            return self.run_with(effect, seed, efficacy, None);
        };
        let key = self.memo_key(effect, stream, i, efficacy);
        let recalled = memo
            .recall(&key)
            .and_then(|text| serde_json::from_str::<VirtualTrial>(&text).ok());
        if let Some(trial) = recalled {
            return VirtualTrial {
                resumed: true,
                ..trial
            };
        }
        let trial = self.run_with(effect, seed, efficacy, None);
        // Kept only where its text reads back (a number that is not finite
        // is written as `null`): else a later run runs it again.
        let text = serde_json::to_string(&trial)
            .ok()
            .filter(|t| serde_json::from_str::<VirtualTrial>(t).is_ok());
        match text {
            Some(text) => memo.record(&key, text),
            None => tracing::debug!("virtual trial not kept: its text does not read back"),
        }
        trial
    }

    /// One virtual trial, exactly as the daemon runs it, with the efficacy
    /// rule off (see [`VirtualTrial`]).
    #[cfg(test)]
    fn run(&self, effect: TrueEffect, trial_seed: u64) -> VirtualTrial {
        self.run_with(effect, trial_seed, f64::INFINITY, None)
    }

    /// One virtual trial with the efficacy threshold `efficacy`.
    fn run_with(
        &self,
        effect: TrueEffect,
        trial_seed: u64,
        efficacy: f64,
        mut trace: Option<&mut Vec<TracedLook>>,
    ) -> VirtualTrial {
        let protocol = self.protocol;
        let d = &protocol.design;
        // The data's stream is derived from the trial's seed, not the seed
        // itself: `design::plan` draws the block orders from `trial_seed`,
        // and the same stream would tie each block's coin to the sign of a
        // drift draw, so the orders would not be randomised against the data.
        let mut rng = ChaCha20Rng::seed_from_u64(self::trial_seed(trial_seed, DATA_STREAM, 0));
        let (params, precision) = self.draw_params(effect, &mut rng);
        let mut periods = design::plan(protocol, trial_seed);
        let mut active: Vec<usize> = (0..self.keys.len()).collect();
        let mut thresholds =
            decide::trial_thresholds(&protocol.decision, (d.min_blocks, d.max_blocks), None);
        thresholds.efficacy = efficacy;
        thresholds.futility = self.futility;
        thresholds.drop_arm = self.drop_arm;
        let planned = protocol.planned_days();
        let scenario = self.options.scenario;
        let non_adherence = scenario.non_adherence(self.options.non_adherence);
        let missing_run_start = (scenario == Scenario::MissingRun).then(|| {
            let first_block = d.run_in_days + d.period_days * self.keys.len() as u32;
            scenario::missing_run_start(first_block, planned, &mut rng)
        });
        let mut noise = Noise::of(scenario, self.model.noise);
        let mut state = Latent::stationary(&params, &mut rng);
        let (mut t, mut y, mut assigned) = (Vec::new(), Vec::new(), Vec::<usize>::new());
        let mut trial = VirtualTrial {
            looks: Vec::new(),
            end: Action::StopInconclusive,
            futility: self.futility,
            end_blocks: 0,
            end_days: 0,
            dropped: Vec::new(),
            betting: None,
            fits: 0,
            evaluations: 0,
            not_converged: 0,
            failed: 0,
            resumed: false,
        };
        let mut betting = self.betting_tests();
        let mut day = |arm: usize,
                       state: &mut Latent,
                       rng: &mut ChaCha20Rng,
                       t: &mut Vec<f64>,
                       y: &mut Vec<f64>,
                       assigned: &mut Vec<usize>| {
            let today = assigned.len() as u32;
            let taken = if rng.random::<f64>() < non_adherence {
                self.comparator
            } else {
                arm
            };
            state.advance(&params, OBS_OFFSET, params.beta[taken], rng);
            let mut eta = params.mu + state.x + state.e;
            match scenario {
                Scenario::Trend => eta += self.scale * f64::from(today) / f64::from(planned.max(1)),
                Scenario::Weekly if today % 7 >= 5 => eta += 0.5 * self.scale,
                _ => {}
            }
            let value = match self.model.family {
                Family::Gaussian => {
                    let value = eta + params.sigma_y * noise.next(rng);
                    if scenario == Scenario::Rounded {
                        scenario::rounded(value, self.scale)
                    } else {
                        value
                    }
                }
                family => crate::engine::generate::draw(
                    family,
                    protocol.outcome.trials,
                    precision,
                    eta,
                    rng,
                ),
            };
            let in_missing_run = missing_run_start.is_some_and(|s| today >= s && today < s + 10);
            if rng.random::<f64>() >= self.options.missing && !in_missing_run {
                t.push(f64::from(today) + OBS_OFFSET);
                y.push(value);
            }
            assigned.push(arm);
            state.advance(&params, 1.0 - OBS_OFFSET, params.beta[taken], rng);
        };
        for _ in 0..d.run_in_days {
            day(
                self.comparator,
                &mut state,
                &mut rng,
                &mut t,
                &mut y,
                &mut assigned,
            );
        }
        let run_in = crate::trial::series::run_in_scale(&y);
        let mut p = 0;
        // The mean outcome of each period of the current block, by arm.
        let mut block_means: Vec<(usize, f64)> = Vec::new();
        let mut ended = false;
        // The newest fit that succeeded: a look whose refit fails decides on
        // it, as the daemon's look does on the latest fit it has stored.
        // The daemon also fits before `min_blocks`, which an untraced
        // virtual trial skips, so where the first decisive fit fails the
        // daemon decides on an earlier fit and this on none: a difference
        // on failed fits only.
        let mut latest_fit: Option<FitReport> = None;
        // What the last refit was given: its series and the arms dropped.
        let mut last_refit: Option<(Series, Vec<usize>)> = None;
        while p < periods.len() {
            let first_observation = y.len();
            for _ in 0..d.period_days {
                day(
                    periods[p].arm,
                    &mut state,
                    &mut rng,
                    &mut t,
                    &mut y,
                    &mut assigned,
                );
            }
            if let Some(mean) = mean_of(&y[first_observation..]) {
                block_means.push((periods[p].arm, mean));
            }
            let block = periods[p].block;
            if periods.get(p + 1).is_none_or(|next| next.block != block) {
                self.bet_on_block(&mut betting, &block_means, block + 1, &mut trial);
                block_means.clear();
            }
            if ended {
                p += 1;
                continue;
            }
            let dropped: Vec<usize> = (0..self.keys.len())
                .filter(|a| !active.contains(a))
                .collect();
            let look = step::look_after(&periods, p + 1, self.keys.len(), &dropped);
            trial.end_blocks = look.blocks_done;
            trial.end_days = assigned.len() as u32;
            // Before `min_blocks` no rule can fire and, without adaptive
            // allocation, nothing reads the fit: the decision is the same
            // without it (a traced trial still fits, as the daemon does).
            let decisive = look.blocks_done >= d.min_blocks
                || protocol.decision.allocation.is_some()
                || trace.is_some();
            if decisive {
                let series = series_of(&t, &y, &assigned, self.keys.len(), self.comparator);
                // A look that brought no new observation (every day of the
                // period missed) and dropped no arm would refit the same
                // data with the same seed: the fit is a function of those,
                // so the last one (or, where it failed, the fit before it)
                // stands unrefitted.
                let unchanged = !self.refit_every_look
                    && last_refit
                        .as_ref()
                        .is_some_and(|(s, dr)| s.fits_alike(&series) && *dr == dropped);
                if !unchanged {
                    if let Some(fit) =
                        self.fit_look(&series, trial_seed, run_in, dropped.clone(), &mut trial)
                    {
                        latest_fit = Some(fit);
                    }
                    last_refit = Some((series, dropped));
                }
            }
            let report = latest_fit.as_ref().filter(|_| decisive);
            let step = step::step(protocol, trial_seed, &periods, &look, thresholds, report);
            let decision = &step.decision;
            let best = decision
                .arms
                .iter()
                .max_by(|a, b| a.p_better_by_mid.total_cmp(&b.p_better_by_mid));
            if decision.converged
                && look.blocks_done >= d.min_blocks
                && let Some(best) = best
            {
                trial.looks.push(EligibleLook {
                    p_mid: best.p_better_by_mid,
                    arm: best.arm,
                    blocks: look.blocks_done,
                    days: assigned.len() as u32,
                });
            }
            if let Some(trace) = trace.as_deref_mut() {
                trace.push(TracedLook {
                    fit: report.cloned(),
                    decision: decision.clone(),
                    plan: step.plan.clone().unwrap_or_else(|| periods.clone()),
                });
            }
            if decision.action.stops() {
                trial.end = decision.action.clone();
                // The betting test still sees the rest of the planned schedule.
                if betting.is_empty() || trial.betting.is_some() {
                    return trial;
                }
                ended = true;
                p += 1;
                continue;
            }
            if let Action::DropArms { arms } = &decision.action {
                active.retain(|a| !arms.contains(a));
                trial
                    .dropped
                    .extend(arms.iter().map(|&a| (a, trial.looks.len())));
            }
            if let Some(plan) = step.plan {
                periods = plan;
            }
            p += 1;
        }
        if !ended {
            trial.end = Action::StopInconclusive;
        }
        trial
    }
}

/// Salt of a virtual trial's data stream (see [`Setup::run_with`]).
const DATA_STREAM: u64 = 0xda7a;

/// The false-stop target when none is given: 5% (`statistics.md` §5).
pub const DEFAULT_TARGET: f64 = 0.05;

/// Evening observations: 19:12 local time.
const OBS_OFFSET: f64 = 0.8;

fn mean_of(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// The model input of a virtual trial: observations and the assigned arm path.
fn series_of(t: &[f64], y: &[f64], assigned: &[usize], n_arms: usize, comparator: usize) -> Series {
    let mut starts = vec![0.0];
    let mut arms = vec![assigned.first().copied().unwrap_or(comparator)];
    for (d, w) in assigned.windows(2).enumerate() {
        if w[1] != w[0] {
            starts.push((d + 1) as f64);
            arms.push(w[1]);
        }
    }
    Series {
        t: t.to_vec(),
        y: y.to_vec(),
        path: ArmPath { starts, arms },
        n_arms,
        comparator,
    }
}

/// Runs `n` virtual trials on all threads; trial `i` uses a seed derived
/// from `(master, stream, i)`, so results do not depend on the thread count.
fn run_many(
    setup: &Setup<'_>,
    effect: TrueEffect,
    stream: u64,
    n: usize,
    bar: &Meter,
) -> Vec<VirtualTrial> {
    run_range(setup, effect, stream, 0..n, f64::INFINITY, bar)
}

/// [`run_many`] for the trials numbered `range` of a stream: a sequential
/// calibration adds trials to a scenario batch by batch, and the trials it
/// adds are the ones a single run of the whole range would have drawn.
/// Trials kept in [`SimOptions::memo`] are recalled, not run again.
/// Trials stop for efficacy at `efficacy` (`INFINITY`: never), which
/// leaves every course at a lower threshold unchanged ([`VirtualTrial::at`]).
fn run_range(
    setup: &Setup<'_>,
    effect: TrueEffect,
    stream: u64,
    range: std::ops::Range<usize>,
    efficacy: f64,
    bar: &Meter,
) -> Vec<VirtualTrial> {
    let n = range.len();
    let first = range.start;
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<VirtualTrial>>> = Mutex::new(vec![None; n]);
    // On a GPU `threads` is the fits kept in flight (their batches share
    // launches: `GPU_FITS_IN_FLIGHT`), on the CPU one a core.
    let threads = setup.options.threads.max(1).min(n.max(1));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n || bar.cancelled() {
                        break;
                    }
                    let trial = setup.run_kept(effect, stream, first + i, efficacy);
                    let recalled = trial.resumed;
                    if let Ok(mut r) = results.lock() {
                        r[i] = Some(trial);
                    }
                    if recalled {
                        bar.recalled(1);
                    } else {
                        bar.inc(1);
                    }
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect()
}

/// SplitMix64 of the master seed, the condition and the trial index.
fn trial_seed(master: u64, stream: u64, i: u64) -> u64 {
    let mut z = master
        .wrapping_add(stream.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_add(i.wrapping_mul(0xbf58_476d_1ce4_e5b9));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The smallest efficacy threshold a protocol accepts (it must exceed 1/2,
/// `P(better by MID) >= 0.5` being no evidence at all).
const MIN_EFFICACY: f64 = 0.5001;

/// Confidence that the calibrated threshold holds the target on fresh trials.
const CALIBRATION_CONFIDENCE: f64 = 0.95;

/// The fewest null trials on which a threshold can hold `target` with
/// [`CALIBRATION_CONFIDENCE`]: with `n` trials and no false stop allowed,
/// `P(rate <= target) = 1 - (1 - target)^n`, so
/// `n >= ln(1 - 0.95) / ln(1 - target)` (59 at 5%, 299 at 1%).
pub fn min_calibration_trials(target: f64) -> usize {
    min_trials_at(target, CALIBRATION_CONFIDENCE)
}

/// [`min_calibration_trials`] at another `confidence`:
/// `n >= ln(1 - confidence) / ln(1 - target)`.
fn min_trials_at(target: f64, confidence: f64) -> usize {
    let t = target.clamp(1e-6, 0.5);
    ((1.0 - confidence).ln() / (1.0 - t).ln()).ceil() as usize
}

/// Smallest threshold whose false-stop rate is at most `target` with 95%
/// confidence, judged from the per-trial maxima of `P(delta > MID)` on
/// `trials` (a trial stops falsely under `c` exactly when its maximum is
/// `>= c`). Setting `c` just above the `(k + 1)`-th largest of `n` maxima lets
/// `k` of them stop; the true false-stop rate there is the exceedance
/// probability of that order statistic, distributed `Beta(k + 1, n - k)`, so
/// `P(rate <= target) = P(Binomial(n, target) >= k + 1)`. `k` is the largest
/// count for which that is at least 95%. The rate on the calibration trials
/// is then below the target by about 1.6 Monte Carlo standard errors; with
/// fewer than 59 trials not even `k = 0` reaches 95%, and `k = 0` is used.
fn calibrate_threshold(trials: &[VirtualTrial], target: f64) -> f64 {
    calibrate_boundary(trials, target, Boundary::Constant, 0, 0.0)
}

/// The most of `n` calibration trials that may stop wrongly while the
/// rate holds `target` with 95% confidence: the largest `k` with
/// `P(Binomial(n, target) >= k + 1) >= 0.95` (0 when none reaches it).
fn allowed_errors(n: usize, target: f64) -> usize {
    allowed_errors_at(n, target, CALIBRATION_CONFIDENCE)
}

/// [`allowed_errors`] at another `confidence` (where several thresholds
/// are tested, each at a share of the 5%).
fn allowed_errors_at(n: usize, target: f64, confidence: f64) -> usize {
    use statrs::distribution::DiscreteCDF;
    let n = n as u64;
    match statrs::distribution::Binomial::new(target.clamp(0.0, 1.0), n) {
        Ok(binomial) => (0..n)
            .take_while(|&k| binomial.sf(k) >= confidence)
            .last()
            .unwrap_or(0) as usize,
        Err(_) => 0,
    }
}

/// [`calibrate_threshold`] for the last-block threshold of `boundary` over
/// `max_blocks` blocks, with futility stops at `futility`: the same order
/// statistic, of each trial's largest [`Boundary::statistic`] before it
/// stops for futility.
fn calibrate_boundary(
    trials: &[VirtualTrial],
    target: f64,
    boundary: Boundary,
    max_blocks: u32,
    futility: f64,
) -> f64 {
    let mut maxima: Vec<f64> = trials
        .iter()
        .map(|t| t.max_statistic(boundary, max_blocks, futility))
        .collect();
    maxima.sort_by(|a, b| b.total_cmp(a));
    let allowed = allowed_errors(trials.len(), target);
    let pivot = maxima.get(allowed).copied().unwrap_or(0.0);
    // Round up to 4 decimals so the threshold can be written in a protocol,
    // and keep it where a protocol allows it: above one half.
    (((pivot * 1e4).floor() + 1.0) / 1e4).max(MIN_EFFICACY)
}

/// The highest futility threshold, at least `floor` and below
/// [`MAX_FUTILITY`], at which trials under the effect stop for futility at
/// most at rate `target` with 95% confidence under `rule`'s efficacy stops;
/// `None` when even `floor` stops more.
///
/// The mirror of [`calibrate_boundary`]: a trial stops for futility under
/// `f` exactly when the smallest `P(delta > MID)` it shows before `rule`
/// stops it for efficacy is `<= f` ([`VirtualTrial::min_before_efficacy`]),
/// so `f` is set just below the `(k + 1)`-th smallest of those minima,
/// `k` = [`allowed_errors`], rounded down to 4 decimals.
fn calibrate_futility(trials: &[VirtualTrial], target: f64, rule: Rule, floor: f64) -> Option<f64> {
    let mut minima: Vec<f64> = trials.iter().map(|t| t.min_before_efficacy(rule)).collect();
    minima.sort_by(f64::total_cmp);
    let allowed = allowed_errors(trials.len(), target);
    let pivot = minima.get(allowed).copied().unwrap_or(1.0);
    let mut f = ((pivot * 1e4).ceil() - 1.0) / 1e4;
    if f >= pivot {
        f -= 1e-4;
    }
    // 0 never stops (`decide`), so it is always within the target.
    let f = f.clamp(0.0, MAX_FUTILITY);
    (f >= floor).then_some(f)
}

/// The highest futility threshold calibration sets: beyond it a trial would
/// be given up while its arm still had a fair chance (one in four) of
/// beating the MID, and the effect simulated is only a guess of the
/// person's.
pub const MAX_FUTILITY: f64 = 0.25;

/// Everything fixed for a protocol: arms, the effect arm, the scale `S`,
/// the hyperpriors and the baseline the data are drawn from.
fn setup_for<'a>(protocol: &'a Protocol, options: &'a SimOptions) -> Result<Setup<'a>, SimError> {
    let outcome = &protocol.outcome;
    let comparator = protocol.comparator_index();
    let keys: Vec<String> = protocol.arms.iter().map(|a| a.key.clone()).collect();
    let others: Vec<usize> = (0..keys.len()).filter(|&a| a != comparator).collect();
    let Some(&effect_arm) = others.first() else {
        return Err(SimError::Protocol(
            "the protocol needs an arm besides the comparator".into(),
        ));
    };
    if options.working_arms == 0 || options.working_arms > others.len() {
        return Err(SimError::Protocol(format!(
            "--working-arms {}: give 1 to {} (the arms besides the comparator)",
            options.working_arms,
            others.len()
        )));
    }
    let working = others[..options.working_arms].to_vec();
    let ratio = outcome.family.has_ratio_mid();
    let effect = options.effect.unwrap_or(outcome.mid);
    if ratio && effect <= 0.0 {
        return Err(SimError::Protocol(
            format!(
                "--effect is a ratio for the {:?} family and must be positive (got {effect})",
                outcome.family
            )
            .to_lowercase(),
        ));
    }
    // S: the protocol's scale, else twice the MID (gaussian); one link unit otherwise.
    let scale = if ratio {
        1.0
    } else {
        outcome.scale.unwrap_or(2.0 * outcome.mid)
    };
    let model = outcome.model_spec();
    let mut scaled = model.clone();
    scaled.scale = Some(scale);
    let probe = Series {
        t: vec![0.0, 1.0, 2.0],
        y: match outcome.family {
            Family::Beta => vec![0.4, 0.5, 0.6],
            Family::Gaussian => vec![0.0, 1.0, 2.0],
            _ => vec![0.0, 1.0, 0.0],
        },
        path: ArmPath {
            starts: vec![0.0],
            arms: vec![comparator],
        },
        n_arms: keys.len(),
        comparator,
    };
    let probe_spec = FitSpec {
        model: &scaled,
        arm_keys: keys.clone(),
        run_in: None,
        method: Method::Grid,
        seed: 0,
        mcmc: McmcOptions::default(),
        grid: GridOptions::default(),
        dropped: Vec::new(),
        path: false,
        intervals: true,
        device: None,
    };
    let (priors, _) = crate::engine::fit::priors_for(&probe, &probe_spec)
        .map_err(|e| SimError::Protocol(e.to_string()))?;
    let baseline = match (outcome.priors.baseline, outcome.family) {
        (Some(b), _) => b.mean,
        (None, Family::Gaussian) => 0.0,
        (None, Family::Poisson) => 2f64.ln(),
        (None, Family::Beta) => 0.8f64.ln() - 0.2f64.ln(),
        (None, _) => 0.25f64.ln() - 0.75f64.ln(),
    };
    let setup = Setup {
        protocol,
        keys: keys.clone(),
        comparator,
        effect_arm,
        working,
        model,
        scale,
        hyper: priors.hyper,
        baseline,
        options,
        futility: protocol.decision.futility,
        drop_arm: protocol.decision.drop_arm,
        refit_every_look: false,
    };
    if let TrueEffect::Natural(k) = setup.effect_condition() {
        let target = outcome.direction.sign() * k;
        if natural::beta_for_difference(outcome.family, baseline, target, 0.0).is_none() {
            // The room the scale leaves that way: the difference an
            // infinite effect in the target's direction makes.
            let room = natural::difference(
                outcome.family,
                baseline,
                f64::INFINITY * target.signum(),
                0.0,
            )
            .abs();
            return Err(SimError::Protocol(format!(
                "outcome.mid_natural: a change of {k} {unit} cannot happen from the simulated baseline, which leaves room for at most {room:.1} {unit} that way; set priors.baseline to the person's usual level, or a smaller mid_natural",
                unit = natural::difference_unit(outcome.family)
            )));
        }
    }
    Ok(setup)
}

/// One virtual trial of `protocol` with the effect arm `effect` better than
/// the comparator (stated units or ratio, as `--effect`), at the
/// protocol's own thresholds, with every look traced: what the daemon's
/// path is checked against.
pub fn trace_virtual_trial(
    protocol: &Protocol,
    options: &SimOptions,
    effect: f64,
    trial_seed: u64,
) -> Result<Vec<TracedLook>, SimError> {
    let setup = setup_for(protocol, options)?;
    let effect = TrueEffect::Link(setup.beta_of(effect));
    let mut trace = Vec::new();
    setup.run_with(
        effect,
        trial_seed,
        protocol.decision.efficacy,
        Some(&mut trace),
    );
    Ok(trace)
}

/// Simulates a protocol's design: false stops under no effect, power under
/// the effect, trial lengths and arm drops, at the protocol's thresholds and,
/// when asked, at a calibrated efficacy threshold. `hash` is the hash of the
/// protocol's text (the report is stored and looked up under it).
pub fn simulate_protocol(
    protocol: &Protocol,
    hash: &ProtocolHash,
    options: &SimOptions,
) -> Result<SimulationReport, SimError> {
    let setup = setup_for(protocol, options)?;
    let keys = setup.keys.clone();
    let effect_arm = setup.effect_arm;
    let working = setup.working.clone();
    let condition = setup.effect_condition();
    let (effect, effect_unit) = setup.effect_label();
    let typical_drift = setup.hyper.drift_sd_scale * setup.hyper.drift_sd_scale;
    let beta = setup.beta_at(condition, typical_drift);
    let scale = setup.scale;
    let n = options.trials.max(1);
    // Twice the effect, where it is a change at all and can happen (twice a
    // MID in percentage points may not fit on the scale).
    let doubled = (!condition.is_none())
        .then(|| condition.doubled())
        .filter(|d| setup.reachable(*d));
    let conditions = 2 + usize::from(options.calibrate.is_some()) + usize::from(doubled.is_some());
    let bar = if options.progress {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {pos}/{len} virtual trials, {elapsed} (eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let bar = Meter::new(bar, options.watch.clone());
    bar.set_length((n * conditions) as u64);
    let stage = |what: &str| {
        bar.set_message(format!(
            "{} ({}): {what}",
            protocol.id,
            options.scenario.name()
        ));
    };
    let started = Instant::now();
    stage("no effect");
    let null = run_many(&setup, TrueEffect::NONE, 0, n, &bar);
    stage("effect");
    let with_effect = run_many(&setup, condition, 1, n, &bar);
    let default = AtThreshold {
        efficacy: protocol.decision.efficacy,
        no_effect: operating(&null, protocol.decision.efficacy, &[], &keys),
        effect: operating(&with_effect, protocol.decision.efficacy, &working, &keys),
    };
    let calibrated = options.calibrate.map(|target| {
        let c = calibrate_threshold(&null, target);
        stage("fresh check");
        let fresh = run_many(&setup, TrueEffect::NONE, 2, n, &bar);
        Calibration {
            target,
            achievable: c < 1.0,
            in_sample_false_stop: operating(&null, c, &[], &keys).stop_efficacy,
            result: AtThreshold {
                efficacy: c,
                no_effect: operating(&fresh, c, &[], &keys),
                effect: operating(&with_effect, c, &working, &keys),
            },
        }
    });
    let double_trials = doubled.map_or_else(Vec::new, |d| {
        stage("twice the effect");
        run_many(&setup, d, 3, n, &bar)
    });
    let double_effect = doubled.map(|d| {
        let at_protocol = operating(&double_trials, protocol.decision.efficacy, &working, &keys);
        let low = at_protocol.stop_efficacy_right_arm.rate < redesign::LOW_POWER;
        DoubleEffect {
            effect: setup.doubled_label().0,
            trials: n,
            at_calibrated: calibrated
                .as_ref()
                .map(|c| operating(&double_trials, c.result.efficacy, &working, &keys)),
            redesigns: if options.redesign && low {
                redesign::simulate_redesigns(protocol, options, d, &bar)
            } else {
                Vec::new()
            },
            at_protocol,
        }
    });
    if bar.cancelled() {
        return Err(SimError::Cancelled);
    }
    bar.finish_and_clear();
    let wall_s = started.elapsed().as_secs_f64();
    let all = null.len()
        + with_effect.len()
        + double_trials.len()
        + if calibrated.is_some() { n } else { 0 };
    let timing = SimTiming {
        // The fresh check's trials are counted, not their fits.
        trials: all,
        ..SimTiming::of(
            null.iter().chain(&with_effect).chain(&double_trials),
            wall_s,
            options.threads.max(1),
        )
    };
    Ok(SimulationReport {
        protocol: protocol.id.clone(),
        protocol_hash: hash.to_string(),
        scenario: options.scenario,
        trials: n,
        effect,
        effect_unit,
        effect_beta: beta,
        effect_arm: keys[effect_arm].clone(),
        also_working: working[1..].iter().map(|&a| keys[a].clone()).collect(),
        scale,
        missing: options.missing,
        non_adherence: options.non_adherence,
        true_half_life: options
            .true_half_life
            .filter(|_| options.scenario != Scenario::LongCarryover),
        seed: options.seed,
        planned_days: protocol.planned_days(),
        default,
        calibrated,
        double_effect,
        betting: betting_rates(&setup, &null, &with_effect),
        timing,
    })
}

/// The report as a plain-text table.
pub fn render(r: &SimulationReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let pct = |x: Rate| format!("{:5.1}% ± {:.1}", 100.0 * x.rate, 100.0 * x.se);
    let _ = writeln!(
        out,
        "{} — scenario {}, {} virtual trials per condition (up to {} days), {:.0}% missing days, {:.0}% non-adherence{}",
        r.protocol,
        r.scenario.name(),
        r.trials,
        r.planned_days,
        100.0 * r.missing,
        100.0 * r.non_adherence,
        r.true_half_life
            .map(|d| format!(", true half-life {d} days"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "effect condition: {} better by {} (beta {:+.3} on the model's scale, S = {})",
        std::iter::once(&r.effect_arm)
            .chain(&r.also_working)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" and "),
        format!("{} {}", r.effect, r.effect_unit).trim_end(),
        r.effect_beta,
        r.scale
    );
    let mut rows = vec![("protocol's thresholds", &r.default)];
    if let Some(c) = &r.calibrated {
        rows.push(("calibrated", &c.result));
    }
    let _ = writeln!(
        out,
        "{:<22} {:>9} {:>16} {:>16} {:>16} {:>16} {:>14}",
        "", "efficacy", "false stops", "power", "futility (eff.)", "inconclusive", "blocks (eff.)"
    );
    for (name, a) in rows {
        let _ = writeln!(
            out,
            "{:<22} {:>9.4} {:>16} {:>16} {:>16} {:>16} {:>8.2} ± {:.2}",
            name,
            a.efficacy,
            pct(a.no_effect.stop_efficacy),
            pct(a.effect.stop_efficacy),
            pct(a.effect.stop_futility),
            pct(a.effect.stop_inconclusive),
            a.effect.blocks.mean,
            a.effect.blocks.se
        );
    }
    if let Some(c) = &r.calibrated {
        let _ = writeln!(
            out,
            "calibration target {:.1}%: {} (false stops {} on the calibration trials, {} on fresh ones)",
            100.0 * c.target,
            if c.achievable {
                "met"
            } else {
                "NOT achievable below 1"
            },
            pct(c.in_sample_false_stop),
            pct(c.result.no_effect.stop_efficacy)
        );
    }
    if let Some(d) = &r.double_effect {
        let calibrated = d
            .at_calibrated
            .as_ref()
            .map(|o| format!(", calibrated {}", pct(o.stop_efficacy_right_arm)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "twice the effect ({}): power {} at the protocol's thresholds{calibrated}",
            format!(
                "{} {}",
                crate::trial::standing::trimmed(d.effect, 4),
                r.effect_unit
            )
            .trim_end(),
            pct(d.at_protocol.stop_efficacy_right_arm),
        );
        for x in &d.redesigns {
            let _ = writeln!(
                out,
                "  with {} ({} days at most): power {} ({} virtual trials)",
                x.change,
                x.planned_days,
                pct(x.power),
                x.trials
            );
        }
    }
    if let Some(b) = &r.betting {
        let _ = writeln!(
            out,
            "{:<22} {:>9} {:>16} {:>16}   (anytime-valid, on block differences; level {:.1}%)",
            "betting test",
            "",
            pct(b.false_stops),
            pct(b.power),
            100.0 * b.alpha
        );
    }
    let d = &r.default;
    let _ = writeln!(
        out,
        "trial length (days, protocol's thresholds): no effect {:.0} (10-90%: {:.0}-{:.0}), effect {:.0} ({:.0}-{:.0})",
        d.no_effect.days.mean,
        d.no_effect.days.p10,
        d.no_effect.days.p90,
        d.effect.days.mean,
        d.effect.days.p10,
        d.effect.days.p90
    );
    for (cond, o) in [("no effect", &d.no_effect), ("effect", &d.effect)] {
        for (arm, rate) in &o.dropped {
            let _ = writeln!(out, "arm {arm} dropped ({cond}): {}", pct(*rate));
        }
    }
    let t = &r.timing;
    let _ = writeln!(
        out,
        "{} fits in {:.1} s on {} threads ({:.1} ms and {:.0} posterior evaluations a fit); {} did not converge, {} failed\n",
        t.fits,
        t.wall_s,
        t.threads,
        t.ms_per_fit,
        t.evaluations as f64 / t.fits.max(1) as f64,
        t.not_converged,
        t.failed
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn looks(ps: &[f64]) -> VirtualTrial {
        VirtualTrial {
            looks: ps
                .iter()
                .enumerate()
                .map(|(i, &p)| EligibleLook {
                    p_mid: p,
                    arm: 1,
                    blocks: 2 + i as u32,
                    days: 28 + 14 * i as u32,
                })
                .collect(),
            end: Action::StopInconclusive,
            futility: 0.0,
            end_blocks: 6,
            end_days: 98,
            dropped: Vec::new(),
            betting: None,
            fits: ps.len(),
            evaluations: 0,
            not_converged: 0,
            failed: 0,
            resumed: false,
        }
    }

    #[test]
    fn calibration_keeps_the_false_stop_rate_at_or_below_the_target() {
        // 100 trials whose largest P are 0.01, 0.02, ..., 1.00. For
        // X ~ Binomial(100, 0.05): P(X >= 2) = 1 - 0.95^100 - 100 * 0.05 *
        // 0.95^99 = 0.9629 >= 0.95, P(X >= 3) = 0.8817 < 0.95: so k = 1 false
        // stop is allowed, and the threshold sits just above 0.99.
        let trials: Vec<VirtualTrial> = (1..=100)
            .map(|i| looks(&[0.3, f64::from(i) / 100.0]))
            .collect();
        let c = calibrate_threshold(&trials, 0.05);
        let stops = trials.iter().filter(|t| t.at(c).efficacy.is_some()).count();
        assert_eq!(stops, 1, "threshold {c}");
        assert!((c - 0.9901).abs() < 1e-12, "threshold {c}");
        // The next threshold down would stop a second trial.
        assert!(trials.iter().filter(|t| t.max_p() >= 0.99).count() == 2);
        // With 1000 trials (maxima 0.001 ... 1.000) the 95% bound allows 38
        // stops: P(Binomial(1000, 0.05) >= 39) = 0.957, >= 40 is 0.940.
        let many: Vec<VirtualTrial> = (1..=1000)
            .map(|i| looks(&[0.3, f64::from(i) / 1000.0]))
            .collect();
        let c = calibrate_threshold(&many, 0.05);
        let stops = many.iter().filter(|t| t.at(c).efficacy.is_some()).count();
        assert_eq!(stops, 38, "threshold {c}");
        // A course cut at the first crossing.
        let t = looks(&[0.5, 0.97, 0.99]);
        let course = t.at(0.95);
        assert_eq!(course.efficacy, Some(1));
        assert_eq!(course.blocks, 3);
        assert_eq!(t.at(0.995).end, Action::StopInconclusive);
    }

    #[test]
    fn futility_calibration_lets_the_allowed_count_stop_before_efficacy() {
        // 100 trials under the effect: trial i dips to i/200 at its second
        // look, then (odd i) reaches 0.99 at its third or (even i) stays.
        let trials: Vec<VirtualTrial> = (1..=100)
            .map(|i| {
                let last = if i % 2 == 1 { 0.99 } else { 0.6 };
                looks(&[0.7, f64::from(i) / 200.0, last])
            })
            .collect();
        // With efficacy at 0.95, nothing stops before the dips: k = 1 of 100
        // may stop for futility (as for efficacy at 5%; here the target is
        // 5% too), so the threshold sits just below the second lowest dip.
        let rule = Rule::constant(0.95);
        let f = calibrate_futility(&trials, 0.05, rule, 0.0).unwrap();
        assert!((f - 0.0099).abs() < 1e-12, "{f}");
        let futile = |f: f64| {
            trials
                .iter()
                .filter(|t| {
                    t.under(Rule {
                        futility: f,
                        ..rule
                    })
                    .end == Action::StopFutility
                })
                .count()
        };
        assert_eq!(futile(f), 1);
        assert_eq!(futile(0.0100), 2);
        // An efficacy stop before the dip protects a trial: at 0.65 every
        // trial stops at its first look, so none can stop for futility.
        let early = Rule::constant(0.65);
        assert_eq!(
            calibrate_futility(&trials, 0.05, early, 0.0),
            Some(MAX_FUTILITY)
        );
        // A threshold below the one the trials ran with is not offered.
        let ran_with: Vec<VirtualTrial> = trials
            .iter()
            .map(|t| VirtualTrial {
                futility: 0.02,
                ..t.clone()
            })
            .collect();
        assert_eq!(calibrate_futility(&ran_with, 0.05, rule, 0.02), None);
        // 0 never stops, and a futility stop ends the search for efficacy.
        assert_eq!(futile(0.0), 0);
        let t = looks(&[0.6, 0.01, 0.99]);
        assert!((t.max_statistic(Boundary::Constant, 0, 0.0) - 0.99).abs() < 1e-12);
        assert!((t.max_statistic(Boundary::Constant, 0, 0.02) - 0.6).abs() < 1e-12);
    }

    #[test]
    fn a_threshold_applied_afterwards_equals_running_with_it() {
        // Efficacy and futility thresholds applied to a trial run without
        // either give the course of a trial run with them.
        let text = include_str!("../../protocols/meditation-anxiety.toml");
        let protocol = Protocol::parse(text, "m").unwrap();
        let options = SimOptions {
            trials: 1,
            threads: 1,
            ..SimOptions::default()
        };
        let mut free = setup_for(&protocol, &options).unwrap();
        free.futility = 0.0;
        let mut fired = 0;
        for effect in [TrueEffect::NONE, TrueEffect::Link(-1.0)] {
            for seed in 0..6 {
                let run = free.run(effect, seed);
                for (c, f) in [
                    (0.8, 0.0),
                    (0.95, 0.0),
                    (0.8, 0.02),
                    (0.95, 0.1),
                    (0.7, 0.3),
                ] {
                    let mut fixed = setup_for(&protocol, &options).unwrap();
                    fixed.futility = f;
                    let direct = fixed.run_with(effect, seed, c, None);
                    let course = run.under(Rule {
                        futility: f,
                        ..Rule::constant(c)
                    });
                    let at = format!("seed {seed} c {c} f {f}");
                    assert_eq!(direct.end, course.end, "{at}");
                    assert_eq!(direct.end_days, course.days, "{at}");
                    assert_eq!(direct.end_blocks, course.blocks, "{at}");
                    fired += usize::from(course.end == Action::StopFutility);
                }
            }
        }
        // The comparison covered futility stops, not only their absence.
        assert!(fired >= 3, "{fired}");
    }

    /// A look that brought no new observation keeps the last fit: whole
    /// virtual trials (1-day periods, 12 blocks, the missing-run scenario
    /// and a third of the days missing, under no effect and under 0.7) run
    /// the same course as with a refit at every look, with fewer refits.
    /// (Keeping the fit wherever at most 3 new observations came instead
    /// fails it.)
    #[test]
    fn keeping_the_fit_of_unchanged_data_changes_no_trial() {
        let text = include_str!("../../bench/one-day-30-blocks.toml");
        assert!(text.contains("max_blocks = 30"));
        let text = text.replace("max_blocks = 30", "max_blocks = 12");
        let protocol = Protocol::parse(&text, "one-day").unwrap();
        let options = SimOptions {
            trials: 1,
            threads: 1,
            scenario: Scenario::MissingRun,
            missing: 0.33,
            ..SimOptions::default()
        };
        let kept = setup_for(&protocol, &options).unwrap();
        let mut every = setup_for(&protocol, &options).unwrap();
        every.refit_every_look = true;
        let (mut fits_kept, mut fits_every) = (0, 0);
        for effect in [TrueEffect::NONE, TrueEffect::Link(0.7)] {
            for seed in 0..4 {
                let a = kept.run(effect, seed);
                let b = every.run(effect, seed);
                let course = |t: &VirtualTrial| {
                    format!(
                        "{:?} {:?} {} {} {:?} {:?} {}",
                        t.looks, t.end, t.end_blocks, t.end_days, t.dropped, t.betting, t.failed
                    )
                };
                assert_eq!(course(&a), course(&b), "seed {seed}");
                fits_kept += a.fits;
                fits_every += b.fits;
            }
        }
        // The shortcut was taken, not only allowed.
        assert!(fits_kept < fits_every, "{fits_kept} vs {fits_every}");
    }

    /// A kept trial is recalled only for the very inputs it ran with, and
    /// reads back as it was.
    #[test]
    fn a_kept_trials_key_names_every_input_and_its_text_reads_back_exactly() {
        let text = include_str!("../../bench/one-day-30-blocks.toml");
        let text = text.replace("max_blocks = 30", "max_blocks = 4");
        let protocol = Protocol::parse(&text, "one-day").unwrap();
        let base = SimOptions {
            threads: 1,
            ..SimOptions::default()
        };
        let setup = setup_for(&protocol, &base).unwrap();
        let key = |setup: &Setup<'_>| setup.memo_key(TrueEffect::NONE, 0, 3, f64::INFINITY);
        let mut keys = vec![
            key(&setup),
            setup.memo_key(TrueEffect::Link(0.0001), 0, 3, f64::INFINITY),
            setup.memo_key(TrueEffect::Natural(0.0), 0, 3, f64::INFINITY),
            setup.memo_key(TrueEffect::NONE, 1, 3, f64::INFINITY),
            setup.memo_key(TrueEffect::NONE, 0, 4, f64::INFINITY),
            setup.memo_key(TrueEffect::NONE, 0, 3, 0.95),
        ];
        let changed: [fn(&mut Setup<'_>); 3] = [
            |s| s.futility = 0.011,
            |s| s.drop_arm = 0.07,
            |s| s.refit_every_look = true,
        ];
        for change in changed {
            let mut other = setup_for(&protocol, &base).unwrap();
            change(&mut other);
            keys.push(key(&other));
        }
        let options = [
            SimOptions {
                seed: 2,
                ..base.clone()
            },
            SimOptions {
                scenario: Scenario::Ar1,
                ..base.clone()
            },
            SimOptions {
                missing: 0.2,
                ..base.clone()
            },
            SimOptions {
                non_adherence: 0.1,
                ..base.clone()
            },
            SimOptions {
                true_half_life: Some(1.0),
                ..base.clone()
            },
            SimOptions {
                calibrate: Some(0.05),
                ..base.clone()
            },
            // Threads do not change a trial: the same key.
            SimOptions {
                threads: 2,
                ..base.clone()
            },
        ];
        for o in &options {
            keys.push(key(&setup_for(&protocol, o).unwrap()));
        }
        let distinct: std::collections::HashSet<&String> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len() - 1, "{keys:#?}");
        assert_eq!(keys.last(), keys.first());
        // A trial as kept reads back bit for bit ({:?} of an f64 is exact).
        let trial = setup.run(TrueEffect::Link(0.7), 11);
        assert!(!trial.looks.is_empty() && trial.fits > 0);
        let text = serde_json::to_string(&trial).unwrap();
        let back: VirtualTrial = serde_json::from_str(&text).unwrap();
        assert_eq!(format!("{back:?}"), format!("{trial:?}"));
    }

    #[test]
    fn working_arms_share_the_effect_and_a_stop_for_either_is_right() {
        let text = include_str!("../../protocols/sleep-supplements.toml");
        let protocol = Protocol::parse(text, "s").unwrap();
        let refusal = |working_arms: usize| {
            let options = SimOptions {
                trials: 1,
                threads: 1,
                working_arms,
                ..SimOptions::default()
            };
            setup_for(&protocol, &options).err().map(|e| e.to_string())
        };
        // Three arms besides the comparator: 0 and 4 are refused by name.
        assert_eq!(refusal(3), None);
        for bad in [0, 4] {
            let err = refusal(bad);
            assert!(
                err.as_deref()
                    .is_some_and(|e| e.contains("--working-arms") && e.contains("1 to 3")),
                "{err:?}"
            );
        }
        let options = SimOptions {
            trials: 1,
            threads: 1,
            working_arms: 2,
            ..SimOptions::default()
        };
        let setup = setup_for(&protocol, &options).unwrap();
        let comparator = setup.comparator;
        let others: Vec<usize> = (0..4).filter(|&a| a != comparator).collect();
        assert_eq!(setup.working, others[..2]);
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let (params, _) = setup.draw_params(TrueEffect::Link(1.5), &mut rng);
        assert_eq!(params.beta[others[0]], 1.5);
        assert_eq!(params.beta[others[1]], 1.5);
        assert_eq!(params.beta[others[2]], 0.0);
        assert_eq!(params.beta[comparator], 0.0);
        // One trial stopped for each arm besides the comparator: the first
        // two find a right arm, the third does not.
        let trials: Vec<VirtualTrial> = others
            .iter()
            .map(|&arm| {
                let mut trial = looks(&[0.99]);
                trial.looks[0].arm = arm;
                trial
            })
            .collect();
        let at = operating(&trials, 0.95, &setup.working, &setup.keys);
        assert_eq!(at.stop_efficacy.rate, 1.0);
        assert!((at.stop_efficacy_right_arm.rate - 2.0 / 3.0).abs() < 1e-12);
        // The betting test too, on a block design of the same arms (its
        // tests need independent orders).
        let block = Protocol::parse(
            &text.replace("type = \"williams\"", "type = \"block\""),
            "b",
        )
        .unwrap();
        let setup = setup_for(&block, &options).unwrap();
        let bets: Vec<VirtualTrial> = others
            .iter()
            .map(|&arm| {
                let mut trial = looks(&[0.5]);
                trial.betting = Some(BettingStop { arm, blocks: 2 });
                trial
            })
            .collect();
        let rates = betting_rates(&setup, &[], &bets).unwrap();
        assert_eq!(rates.power.rate, 1.0);
        assert!((rates.power_right_arm.rate - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn a_true_half_life_replaces_the_priors_draw_but_not_long_carryovers() {
        let text = include_str!("../../protocols/meditation-anxiety.toml");
        let protocol = Protocol::parse(text, "m").unwrap();
        let kappas = |scenario: Scenario, true_half_life: Option<f64>| -> Vec<f64> {
            let options = SimOptions {
                trials: 1,
                threads: 1,
                scenario,
                true_half_life,
                ..SimOptions::default()
            };
            let setup = setup_for(&protocol, &options).unwrap();
            let mut rng = ChaCha20Rng::seed_from_u64(5);
            (0..10)
                .map(|_| setup.draw_params(TrueEffect::NONE, &mut rng).0.kappa)
                .collect()
        };
        let ln2 = std::f64::consts::LN_2;
        assert!(
            kappas(Scenario::Iid, Some(0.05))
                .iter()
                .all(|k| (k - ln2 / 0.05).abs() < 1e-12)
        );
        // Drawn from the prior otherwise: ten different half-lives.
        let drawn = kappas(Scenario::Iid, None);
        assert!(drawn.windows(2).all(|w| w[0] != w[1]), "{drawn:?}");
        // Long carryover keeps its 1.5 periods (7-day periods here).
        assert!(
            kappas(Scenario::LongCarryover, Some(0.05))
                .iter()
                .all(|k| (k - ln2 / 10.5).abs() < 1e-12)
        );
    }

    #[test]
    fn a_mid_in_the_outcomes_units_sets_each_trials_true_difference() {
        // The protocol states its MID as 2 fewer migraine days a month.
        let text = include_str!("../../protocols/magnesium-migraine.toml").to_string();
        let protocol = Protocol::parse(&text, "m").unwrap();
        let options = SimOptions {
            trials: 1,
            threads: 1,
            ..SimOptions::default()
        };
        let setup = setup_for(&protocol, &options).unwrap();
        assert_eq!(setup.effect_condition(), TrueEffect::Natural(2.0));
        assert_eq!(
            setup.effect_label(),
            (2.0, "yes-days per 30 days".to_string())
        );
        // Every virtual trial's drawn parameters make the arm 2 yes-days a
        // month fewer (lower is better) at that trial's own drift, so the
        // effect differs from trial to trial on the logit scale.
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let mut betas = Vec::new();
        for _ in 0..20 {
            let (p, _) = setup.draw_params(TrueEffect::Natural(2.0), &mut rng);
            let v = p.sigma_x * p.sigma_x / (2.0 * p.lambda);
            let beta = p.beta[setup.effect_arm];
            let d = natural::difference(Family::Bernoulli, p.mu, beta, v);
            assert!((d + 2.0).abs() < 1e-9, "difference {d}");
            betas.push(beta);
        }
        let spread = betas.iter().copied().fold(f64::NEG_INFINITY, f64::max)
            - betas.iter().copied().fold(f64::INFINITY, f64::min);
        assert!(spread > 0.01, "betas {betas:?}");
        // An explicit --effect is still a ratio.
        let stated = SimOptions {
            effect: Some(2.0),
            ..options.clone()
        };
        let setup = setup_for(&protocol, &stated).unwrap();
        assert_eq!(setup.effect_condition(), TrueEffect::Link(-(2f64.ln())));
        // More fewer migraine days than the baseline has is refused by name.
        let text = text.replace("mid_natural = 2.0", "mid_natural = 20.0");
        let protocol = Protocol::parse(&text, "m").unwrap();
        let err = setup_for(&protocol, &options).err().unwrap().to_string();
        assert!(
            err.contains("mid_natural") && err.contains("at most 7.5 yes-days per 30 days"),
            "{err}"
        );
    }
}

//! One look, from the fit to the schedule (`statistics.md` §5): where the
//! trial stands, the decision the rules take on the look's fit, and what
//! that decision changes in the plan (arms dropped, or the next period's
//! arm drawn by adaptive allocation).
//!
//! This is the only copy of that logic. The daemon's refits job calls
//! [`daemon_look`] on the stored schedule; the simulator's virtual trials
//! call [`step`] on their plan; both meet in [`step`], so `nof1d simulate`
//! reports error rates for exactly the policy the daemon runs. Pure.

use jiff::civil::Date;

use crate::engine::fit::{FitReport, FitSpec, Method, SampleScale};
use crate::engine::inference::{GridOptions, McmcOptions};
use crate::engine::spec::ModelSpec;
use crate::trial::decide::{self, Action, Decision, LockedThresholds, Look, Thresholds};
use crate::trial::design::{self, PlannedPeriod};
use crate::trial::lifecycle::{self, DatedDay, LifecycleError};
use crate::trial::protocol::Protocol;

/// What a look decided and what it changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The decision, with the rule and the numbers behind it.
    pub decision: Decision,
    /// The whole plan after the decision when it changed (the periods the
    /// look had completed are unchanged); `None` when it did not.
    pub plan: Option<Vec<PlannedPeriod>>,
}

/// Where a trial stands once `done` periods of `periods` have run, with the
/// arms in `dropped` out of it.
pub fn look_after(
    periods: &[PlannedPeriod],
    done: usize,
    n_arms: usize,
    dropped: &[usize],
) -> Look {
    Look {
        period: done.saturating_sub(1) as u32,
        blocks_done: design::blocks_done(periods, done),
        last_period: done >= periods.len(),
        active: (0..n_arms).filter(|a| !dropped.contains(a)).collect(),
    }
}

/// The fit a look is taken on: the grid path with the trial's seed, the
/// dropped arms out of `P(best)`. The daemon keeps the smoothed path and
/// intervals for display; the simulator turns them off and runs one thread
/// per fit, which changes no number a decision reads.
pub fn look_fit_spec<'a>(
    model: &'a ModelSpec,
    protocol: &Protocol,
    seed: u64,
    run_in: Option<SampleScale>,
    dropped: Vec<usize>,
) -> FitSpec<'a> {
    FitSpec {
        model,
        arm_keys: protocol.arms.iter().map(|a| a.key.clone()).collect(),
        run_in,
        method: Method::Grid,
        seed,
        mcmc: McmcOptions::default(),
        grid: GridOptions::default(),
        dropped,
        path: true,
        intervals: true,
        device: None,
    }
}

/// The decision at `look` and the plan it leaves.
///
/// With a fit: the rules of §5 ([`decide::decide`]). Without one (too few
/// observations, or the fit failed): continue, or stop as inconclusive at
/// the last period. Then: a drop replans the periods still to come without
/// the dropped arms ([`design::replan_after_drop`]); under adaptive
/// allocation, a look that continues on a converged fit after `min_blocks`
/// blocks draws the next period's arm from `P(best)`
/// ([`decide::allocation_probabilities`], [`decide::draw_allocation`]).
/// A fit that did not converge changes nothing.
pub fn step(
    protocol: &Protocol,
    seed: u64,
    periods: &[PlannedPeriod],
    look: &Look,
    thresholds: Thresholds,
    fit: Option<&FitReport>,
) -> Step {
    let keys: Vec<String> = protocol.arms.iter().map(|a| a.key.clone()).collect();
    let comparator = protocol.comparator_index();
    let decision = match fit {
        Some(report) => decide::decide(thresholds, comparator, look, report, &keys),
        None => without_fit(look, thresholds),
    };
    let done = look.period as usize + 1;
    let plan = match &decision.action {
        Action::DropArms { arms } => {
            let active: Vec<usize> = look
                .active
                .iter()
                .copied()
                .filter(|a| !arms.contains(a))
                .collect();
            Some(design::replan_after_drop(
                protocol, seed, periods, done, &active,
            ))
        }
        Action::Continue => {
            fit.and_then(|r| allocate(protocol, seed, periods, &decision, r.p_best_comparator))
        }
        _ => None,
    };
    Step { decision, plan }
}

/// Adaptive allocation after a look that continues (§5): the next
/// period's arm drawn from `P(best)` with the protocol's floor,
/// reproducibly from the seed and the period. `None` (the plan stands)
/// without allocation, on a fit that did not converge, before `min_blocks`
/// blocks, or after the last period.
pub fn allocate(
    protocol: &Protocol,
    seed: u64,
    periods: &[PlannedPeriod],
    decision: &Decision,
    p_best_comparator: f64,
) -> Option<Vec<PlannedPeriod>> {
    let allocation = protocol.decision.allocation?;
    let done = decision.look.period as usize + 1;
    if !decision.converged
        || decision.look.blocks_done < protocol.design.min_blocks
        || done >= periods.len()
    {
        return None;
    }
    let mut p_best = vec![(protocol.comparator_index(), p_best_comparator)];
    p_best.extend(decision.arms.iter().map(|a| (a.arm, a.p_best)));
    let probs = decide::allocation_probabilities(&p_best, allocation);
    let arm = decide::draw_allocation(&probs, seed, done as u32)?;
    let mut plan = periods.to_vec();
    plan[done].arm = arm;
    Some(plan)
}

/// The decision of a look with no fit to read.
fn without_fit(look: &Look, thresholds: Thresholds) -> Decision {
    let action = if look.last_period {
        Action::StopInconclusive
    } else {
        Action::Continue
    };
    Decision {
        look: look.clone(),
        action,
        rule: "no fit of the primary outcome yet (too few observations)".into(),
        thresholds,
        arms: Vec::new(),
        converged: false,
    }
}

/// The fit a daemon look reads: the latest fit of the decision's outcome
/// and the last local date of the data it used.
#[derive(Debug, Clone, Copy)]
pub struct LookFit<'a> {
    /// The fit's report.
    pub report: &'a FitReport,
    /// The last local date of data in it.
    pub data_through: Date,
}

/// What the trial brings to a look from before: the periods already
/// decided, the arms dropped, and the thresholds it locked (at its start, or
/// refined before its first decisive look).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LookHistory {
    /// Periods with a decision.
    pub decided: Vec<u32>,
    /// Arms dropped by earlier decisions.
    pub dropped: Vec<usize>,
    /// The thresholds the trial locked when it started (none: the
    /// protocol's, for trials started before calibration existed).
    pub locked: Option<LockedThresholds>,
}

impl LookHistory {
    /// From the stored decisions: each one's period (none for a safety stop)
    /// and decoded decision.
    pub fn of(decisions: &[(Option<u32>, Option<Decision>)]) -> LookHistory {
        let looks: Vec<Decision> = decisions.iter().filter_map(|d| d.1.clone()).collect();
        LookHistory {
            decided: decisions.iter().filter_map(|d| d.0).collect(),
            dropped: lifecycle::dropped_arms(&looks),
            locked: None,
        }
    }
}

/// A look the daemon takes, and the schedule rows it replaces.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonLook {
    /// The step.
    pub step: Step,
    /// The first day whose rows are replaced and the rows from there on,
    /// when the plan changed.
    pub reschedule: Option<(u32, Vec<DatedDay>)>,
}

/// The look due on `today` for a trial with the stored schedule `rows`,
/// taken on `fit` (statistics.md §5), or `None` when no look is due.
///
/// The due look is the latest period that ended before today with no
/// decision in `history` ([`lifecycle::look_due`]). Without `force` it
/// waits until the fit covers the period's last day; with it (before the
/// next assignment goes out) it is taken on the data there are, as a missed
/// rating may never come.
pub fn daemon_look(
    protocol: &Protocol,
    seed: u64,
    rows: &[DatedDay],
    history: &LookHistory,
    today: Date,
    fit: Option<LookFit<'_>>,
    force: bool,
) -> Result<Option<DaemonLook>, LifecycleError> {
    let Some((period, done)) = lifecycle::look_due(rows, &history.decided, today) else {
        return Ok(None);
    };
    let period_end = lifecycle::period_ends(rows)
        .into_iter()
        .find(|(q, _)| *q == period)
        .map(|(_, end)| end);
    let covered = fit
        .zip(period_end)
        .is_some_and(|(f, end)| f.data_through >= end);
    if !force && !covered {
        return Ok(None);
    }
    let periods = lifecycle::periods_of(rows);
    let look = look_after(&periods, done, protocol.arms.len(), &history.dropped);
    let thresholds = decide::trial_thresholds(
        &protocol.decision,
        (protocol.design.min_blocks, protocol.design.max_blocks),
        history.locked,
    );
    let step = step(
        protocol,
        seed,
        &periods,
        &look,
        thresholds,
        fit.map(|f| f.report),
    );
    let reschedule = match &step.plan {
        Some(plan) => Some(lifecycle::replan_rows(protocol, rows, plan, done)?),
        None => None,
    };
    Ok(Some(DaemonLook { step, reschedule }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trial::decide::ArmNumbers;
    use crate::trial::lifecycle::{dated, period_ends, periods_of, replan_rows};
    use crate::trial::simulate::{SimOptions, TracedLook, trace_virtual_trial};

    fn date(s: &str) -> Date {
        s.parse().unwrap()
    }

    /// The rows an allocation after `decision` puts in place of the rest.
    fn reschedule(
        p: &Protocol,
        seed: u64,
        rows: &[DatedDay],
        decision: &Decision,
    ) -> Option<(u32, Vec<DatedDay>)> {
        let periods = periods_of(rows);
        let plan = allocate(p, seed, &periods, decision, 0.01)?;
        Some(replan_rows(p, rows, &plan, decision.look.period as usize + 1).unwrap())
    }

    #[test]
    fn adaptive_allocation_draws_the_next_period_from_p_best_with_the_floor() {
        let text = include_str!("../../protocols/sleep-supplements.toml").replace(
            "[decision]\n",
            "[decision.allocation]\npower = 1.0\nfloor = 0.1\n\n[decision]\n",
        );
        let p = Protocol::parse(&text, "s").unwrap();
        let rows = dated(&p, &design::plan(&p, 9), date("2026-03-01")).unwrap();
        // A look after two whole blocks (8 periods): arm 3 is very likely best.
        let ends = period_ends(&rows);
        let decision = |p_best: [f64; 3]| Decision {
            look: Look {
                period: ends[7].0,
                blocks_done: 2,
                last_period: false,
                active: vec![0, 1, 2, 3],
            },
            action: Action::Continue,
            rule: "continue".into(),
            thresholds: Thresholds {
                efficacy: 0.95,
                futility: 0.05,
                drop_arm: 0.05,
                min_blocks: 2,
                source: decide::ThresholdSource::Protocol,
                boundary: decide::Boundary::Constant,
                max_blocks: 0,
                futility_source: decide::ThresholdSource::Protocol,
            },
            arms: (1..=3)
                .map(|arm| ArmNumbers {
                    arm,
                    key: format!("arm{arm}"),
                    mean: 0.0,
                    ci90: [0.0, 0.0],
                    p_better_by_mid: 0.5,
                    p_best: p_best[arm - 1],
                })
                .collect(),
            converged: true,
        };
        let mut counts = [0usize; 4];
        for seed in 0..400u64 {
            let (from_day, new_rows) = reschedule(&p, seed, &rows, &decision([0.02, 0.02, 0.95]))
                .expect("allocation reschedules the next period");
            // The next period starts where the eighth ended; only its arm may change.
            assert_eq!(new_rows[0].local_date, ends[7].1.tomorrow().unwrap());
            assert_eq!(from_day, new_rows[0].day);
            let arm = new_rows[0].arm;
            let next = new_rows[0].period;
            assert!(next.is_some());
            assert_eq!(new_rows.iter().filter(|r| r.period == next).count(), 7);
            assert!(
                new_rows
                    .iter()
                    .filter(|r| r.period == next)
                    .all(|r| r.arm == arm)
            );
            counts[arm] += 1;
            // Reproducible from the seed.
            let again = reschedule(&p, seed, &rows, &decision([0.02, 0.02, 0.95])).unwrap();
            assert_eq!(again.1, new_rows);
        }
        // p_j = 0.1 + 0.6 w_j: about 0.67 for arm 3 and just over the floor
        // for the others (binomial sd over 400 draws: 0.024 and 0.015).
        let share = |a: usize| counts[a] as f64 / 400.0;
        assert!((share(3) - 0.670).abs() < 0.08, "{counts:?}");
        for a in 0..3 {
            assert!(share(a) > 0.05 && share(a) < 0.18, "{counts:?}");
        }
        // A fit that did not converge changes nothing.
        let mut unconverged = decision([0.02, 0.02, 0.95]);
        unconverged.converged = false;
        assert!(reschedule(&p, 1, &rows, &unconverged).is_none());
    }

    /// Replays a virtual trial's looks through the daemon's path: the
    /// schedule dated from the seed, each look found by `look_due` on the
    /// day after its period ends, taken on the fit the simulator read, and
    /// the rows it replaces written back. Returns how many looks dropped an
    /// arm and how many changed the plan by allocation.
    fn replay(p: &Protocol, seed: u64, trace: &[TracedLook]) -> (usize, usize) {
        let mut rows = dated(p, &design::plan(p, seed), date("2026-01-05")).unwrap();
        let mut decisions: Vec<(Option<u32>, Option<Decision>)> = Vec::new();
        let (mut drops, mut allocations) = (0, 0);
        for (k, traced) in trace.iter().enumerate() {
            let period = traced.decision.look.period;
            let end = period_ends(&rows)
                .into_iter()
                .find(|(q, _)| *q == period)
                .map(|(_, end)| end)
                .expect("the simulator's look is a period of the daemon's schedule");
            let today = end.tomorrow().unwrap();
            let fit = traced.fit.as_ref().map(|report| LookFit {
                report,
                data_through: end,
            });
            let history = LookHistory::of(&decisions);
            let taken = daemon_look(p, seed, &rows, &history, today, fit, false)
                .unwrap()
                .or_else(|| {
                    // No fit to wait for: the morning's forced look.
                    daemon_look(p, seed, &rows, &history, today, fit, true).unwrap()
                })
                .unwrap_or_else(|| panic!("seed {seed} look {k}: the daemon found no look due"));
            // Compared as printed: the simulator skips the credible
            // intervals (NaN, which equals nothing), no decision reads them.
            assert_eq!(
                format!("{:?}", taken.step.decision),
                format!("{:?}", traced.decision),
                "seed {seed} look {k}: the daemon and the simulator decided differently"
            );
            if matches!(taken.step.decision.action, Action::DropArms { .. }) {
                drops += 1;
            } else if taken.step.plan.is_some() {
                allocations += 1;
            }
            if let Some((from_day, new_rows)) = taken.reschedule {
                rows.retain(|r| r.day < from_day);
                rows.extend(new_rows);
            }
            assert_eq!(
                periods_of(&rows),
                traced.plan,
                "seed {seed} look {k}: the plans differ after the look"
            );
            decisions.push((Some(period), Some(taken.step.decision)));
        }
        (drops, allocations)
    }

    #[test]
    fn daemon_and_simulator_take_identical_decisions_at_every_look() {
        // Four arms with arm dropping, and the same protocol under adaptive
        // allocation: every kind of look and schedule change happens over
        // these seeds (counted below, so the test cannot pass vacuously).
        let plain = include_str!("../../protocols/sleep-supplements.toml");
        let adaptive = plain.replace(
            "[decision]\n",
            "[decision.allocation]\npower = 1.0\nfloor = 0.1\n\n[decision]\n",
        );
        let options = SimOptions {
            threads: 1,
            progress: false,
            ..SimOptions::default()
        };
        let (mut looks, mut drops, mut allocations, mut stops) = (0, 0, 0, 0);
        for text in [plain, adaptive.as_str()] {
            let p = Protocol::parse(text, "sleep-supplements.toml").unwrap();
            assert!(p.arms.len() >= 3);
            for seed in 1..=4u64 {
                // The first arm 3 MIDs better: drops and stops both happen.
                let trace = trace_virtual_trial(&p, &options, 3.0 * p.outcome.mid, seed).unwrap();
                let (d, a) = replay(&p, seed, &trace);
                looks += trace.len();
                drops += d;
                allocations += a;
                stops += usize::from(trace.last().is_some_and(|l| l.decision.action.stops()));
            }
        }
        eprintln!("{looks} looks, {drops} drops, {allocations} allocations, {stops} stops");
        assert!(looks >= 16, "{looks} looks");
        assert!(drops >= 1, "no look dropped an arm");
        assert!(allocations >= 1, "no look allocated the next period");
        assert!(stops >= 1, "no virtual trial stopped");
    }

    #[test]
    fn no_allocation_on_an_unconverged_fit() {
        // The simulator used to draw the next period's arm from any fit;
        // the daemon only from a converged one. One step now serves both.
        let text = include_str!("../../protocols/sleep-supplements.toml").replace(
            "[decision]\n",
            "[decision.allocation]\npower = 1.0\nfloor = 0.1\n\n[decision]\n",
        );
        let p = Protocol::parse(&text, "s").unwrap();
        let options = SimOptions {
            threads: 1,
            progress: false,
            ..SimOptions::default()
        };
        let trace = trace_virtual_trial(&p, &options, 0.0001, 7).unwrap();
        let periods = design::plan(&p, 7);
        let traced = trace
            .iter()
            .find(|l| l.decision.look.blocks_done >= p.design.min_blocks && l.fit.is_some())
            .expect("a look after min_blocks with a fit");
        let mut report = traced.fit.clone().unwrap();
        report.diagnostics.converged = true;
        let look = traced.decision.look.clone();
        // Thresholds no look can meet: every look continues.
        let thresholds = Thresholds {
            efficacy: 2.0,
            futility: -1.0,
            drop_arm: -1.0,
            ..decide::thresholds(&p.decision, p.design.min_blocks)
        };
        let converged = step(&p, 7, &periods, &look, thresholds, Some(&report));
        assert_eq!(converged.decision.action, Action::Continue);
        assert!(converged.plan.is_some(), "a converged look allocates");
        report.diagnostics.converged = false;
        let unconverged = step(&p, 7, &periods, &look, thresholds, Some(&report));
        assert_eq!(unconverged.decision.action, Action::Continue);
        assert!(!unconverged.decision.converged);
        assert_eq!(
            unconverged.plan, None,
            "an unconverged look changes nothing"
        );
    }
}

//! "Where you stand": one or two sentences per arm in the person's units
//! and direction, from a fit's effect summary and the trial's thresholds —
//! for a running trial, what the data say so far and when the next check
//! is; for an ended one, its final answer. No jargon (link scale, `S`,
//! OU): those stay in the details. Pure.

use jiff::civil::Date;

use crate::engine::inference::EffectSummary;
use crate::engine::spec::{Direction, Family};
use crate::trial::decide::{Action, Thresholds};
use crate::trial::lifecycle::{DatedDay, TrialStatus};

/// What the sentences are about, fixed for a trial.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    /// The outcome as the person reads it ("anxiety evening").
    pub outcome: &'a str,
    /// Its unit (gaussian outcomes).
    pub unit: &'a str,
    /// Its family: ratio families speak in their natural difference.
    pub family: Family,
    /// Which way is better.
    pub direction: Direction,
    /// The smallest change that matters, in words ("your goal of 1 points").
    pub goal: String,
    /// The comparator as the person knows it (a code in a blinded trial).
    pub comparator: &'a str,
}

impl<'a> Subject<'a> {
    /// A protocol's primary outcome, against its comparator shown as
    /// `comparator` (its name, or its code in a blinded trial).
    pub fn of(protocol: &'a crate::trial::protocol::Protocol, comparator: &'a str) -> Subject<'a> {
        let o = &protocol.outcome;
        Subject {
            outcome: &o.stream,
            unit: &o.unit,
            family: o.family,
            direction: o.direction,
            goal: goal(o.family, o.mid, &o.unit, o.mid_natural),
            comparator,
        }
    }
}

/// Where the trial is.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// Running (or paused): the next look's date, where one is planned.
    Running {
        /// The day the next check is taken.
        next_check: Option<Date>,
        /// Stop for efficacy at or above this `P(better by MID)` then.
        efficacy: f64,
        /// Stop for futility at or below it (0: never).
        futility: f64,
    },
    /// Paused: nothing is decided until it is resumed.
    Paused,
    /// Ended: the decision that ended it (none: stopped by hand).
    Ended(Option<Action>),
    /// Data at hand, outside a trial (`nof1d analyze`): no rule decides,
    /// so the sentences say only how sure the data are.
    Data,
}

/// The next check of a trial on `today`: the morning after the first
/// period that ends on or after yesterday and is not decided yet (the
/// daemon decides at the next morning's assignment, so a period that ended
/// yesterday is checked today), with the blocks complete by then.
/// `decided`: the last period decided.
pub fn next_check(rows: &[DatedDay], today: Date, decided: Option<u32>) -> Option<(Date, u32)> {
    let yesterday = today.yesterday().ok()?;
    let end = crate::trial::lifecycle::period_ends(rows)
        .into_iter()
        .find(|(period, end)| *end >= yesterday && decided.is_none_or(|d| *period > d))
        .map(|(_, end)| end)?;
    let mut last_day: std::collections::BTreeMap<u32, Date> = Default::default();
    for r in rows {
        if let Some(b) = r.block {
            let d = last_day.entry(b).or_insert(r.local_date);
            *d = (*d).max(r.local_date);
        }
    }
    let blocks = last_day.values().filter(|d| **d <= end).count() as u32;
    Some((end.tomorrow().ok()?, blocks))
}

/// Where a trial of `protocol` stands on `today`: it decides with the
/// thresholds it locked (`locked`), and an ended one was ended by its last
/// decision (`last`) where that one stopped it.
pub fn trial_stage(
    protocol: &crate::trial::protocol::Protocol,
    locked: Option<crate::trial::decide::LockedThresholds>,
    status: TrialStatus,
    rows: &[DatedDay],
    today: Date,
    last: Option<crate::trial::decide::Decision>,
) -> Stage {
    let thresholds = crate::trial::decide::trial_thresholds(
        &protocol.decision,
        (protocol.design.min_blocks, protocol.design.max_blocks),
        locked,
    );
    let decided = last.as_ref().map(|d| d.look.period);
    let ended_by = last.map(|d| d.action).filter(Action::stops);
    stage(status, rows, today, &thresholds, (decided, ended_by))
}

/// Where a trial with `status` stands on `today`, deciding with
/// `thresholds` (an ended trial: the decision that ended it).
fn stage(
    status: TrialStatus,
    rows: &[DatedDay],
    today: Date,
    thresholds: &Thresholds,
    (decided, ended_by): (Option<u32>, Option<Action>),
) -> Stage {
    match status {
        TrialStatus::Stopped => return Stage::Ended(ended_by),
        TrialStatus::Paused => return Stage::Paused,
        _ => {}
    }
    let next = next_check(rows, today, decided);
    // Before the first decision no threshold can fire at that check.
    let decides = next.is_some_and(|(_, blocks)| blocks >= thresholds.min_blocks);
    Stage::Running {
        next_check: next.map(|(d, _)| d),
        efficacy: match next {
            Some((_, blocks)) if decides => thresholds.efficacy_at(blocks),
            _ => f64::INFINITY,
        },
        futility: if decides { thresholds.futility } else { 0.0 },
    }
}

/// The goal in words for a protocol's MID, as the protocol states it:
/// "your goal of 1 points" for a gaussian outcome, "your goal of 2 yes-days
/// per 30 days" where the MID is stated in the person's units, "the
/// comparator" where it is no change at all, else "the smallest change
/// that matters".
pub fn goal(family: Family, mid: f64, unit: &str, mid_natural: Option<f64>) -> String {
    // A MID of no change (0, or a ratio of 1): any improvement counts, so
    // the bar is the comparator itself.
    let no_change = if family == Family::Gaussian { 0.0 } else { 1.0 };
    if mid == no_change && mid_natural.is_none_or(|k| k == 0.0) {
        return "the comparator".to_string();
    }
    match (family, mid_natural) {
        (Family::Gaussian, _) => format!("your goal of {mid} {}", unit.trim())
            .trim_end()
            .to_string(),
        (_, Some(k)) => format!(
            "your goal of {k} {}",
            crate::engine::natural::difference_unit(family)
        ),
        _ => "the smallest change that matters".to_string(),
    }
}

/// One arm of a fit as the person knows it.
#[derive(Debug, Clone)]
pub struct ArmEffect<'a> {
    /// Arm index in the protocol.
    pub arm: usize,
    /// Its name, or its code in a blinded trial.
    pub label: String,
    /// Its effect against the comparator.
    pub effect: &'a EffectSummary,
}

/// The arms of `fit` as `label` names them (effects of arms the protocol
/// does not have are left out).
pub fn arms_of<'a>(
    fit: &'a crate::engine::fit::FitReport,
    protocol: &crate::trial::protocol::Protocol,
    label: impl Fn(usize) -> String,
) -> Vec<ArmEffect<'a>> {
    fit.effects
        .iter()
        .filter_map(|e| {
            let arm = protocol.arm_index(&e.arm)?;
            Some(ArmEffect {
                arm,
                label: label(arm),
                effect: e,
            })
        })
        .collect()
}

/// The sentences for each arm of a fit, in the fit's order.
pub fn sentences(subject: &Subject<'_>, arms: &[ArmEffect<'_>], stage: &Stage) -> Vec<String> {
    // A futility stop needs every arm at or below its threshold.
    let largest = arms
        .iter()
        .map(|a| a.effect.p_better_by_mid)
        .fold(0.0, f64::max);
    arms.iter()
        .map(|a| arm_sentences(subject, a, largest, stage))
        .collect()
}

/// One arm's sentences; `largest`: the largest `P(better by MID)` of all.
fn arm_sentences(subject: &Subject<'_>, a: &ArmEffect<'_>, largest: f64, stage: &Stage) -> String {
    let (arm, effect) = (a.label.as_str(), a.effect);
    let size = size(subject, arm, effect);
    let p = effect.p_better_by_mid;
    let sure = format!("{:.0}%", 100.0 * p);
    let goal = &subject.goal;
    let verdict = match stage {
        Stage::Running {
            next_check,
            efficacy,
            futility,
        } => {
            let when = next_check.map_or_else(
                || "at the next check".to_string(),
                |d| format!("at the next check on {}", d.strftime("%-d %B")),
            );
            if p >= *efficacy {
                format!(
                    "It now beats {goal} with {sure} certainty: if that holds {when}, the trial stops there with that answer."
                )
            } else if *futility > 0.0 && largest <= *futility {
                format!(
                    "It is unlikely to beat {goal} ({sure}): if that holds {when} for every arm, the trial stops there."
                )
            } else {
                let next = next_check.map_or_else(String::new, |d| {
                    format!(": next check on {}", d.strftime("%-d %B"))
                });
                format!("Not yet sure it beats {goal} ({sure} so far){next}.")
            }
        }
        Stage::Paused => {
            format!(
                "Paused: nothing is decided until it is resumed ({sure} so far that it beats {goal})."
            )
        }
        Stage::Data => format!("From these data, {sure} sure that it beats {goal}."),
        Stage::Ended(action) => match action {
            Some(Action::StopEfficacy { arm: winner }) if *winner == a.arm => {
                format!("Final answer: {arm} beats {goal} ({sure} certainty).")
            }
            Some(Action::StopEfficacy { .. }) => {
                format!("Final answer: another arm beat {goal}; for {arm} it is {sure}.")
            }
            Some(Action::StopFutility) => {
                format!("Final answer: {arm} is unlikely to beat {goal} ({sure}).")
            }
            Some(Action::StopInconclusive) => format!(
                "Final answer: not sure. The trial ran to its end without a verdict ({sure} that {arm} beats {goal})."
            ),
            Some(Action::StopSafety) => format!(
                "The trial stopped for safety before an answer ({sure} that {arm} beats {goal} by then)."
            ),
            _ => format!(
                "The trial was stopped before an answer ({sure} that {arm} beats {goal} by then)."
            ),
        },
    };
    format!("{size} {verdict}")
}

/// "Evening anxiety is about 1.1 points lower on meditation than on
/// control (likely 0.2 to 2.0 lower)."
fn size(subject: &Subject<'_>, arm: &str, e: &EffectSummary) -> String {
    // Gaussian: the effect in the outcome's unit; ratio families: the
    // difference in the person's units (per 30 days, percentage points).
    let (mean, ci, unit) = match (&e.natural, subject.family) {
        (_, Family::Gaussian) => (e.mean, e.ci90, subject.unit.to_string()),
        (Some(n), _) => (
            n.difference_mean,
            n.difference_ci90,
            n.difference_unit.clone(),
        ),
        (None, _) => {
            return format!(
                "{} on {arm} against {}: no estimate in your units yet.",
                capitalised(subject.outcome),
                subject.comparator
            );
        }
    };
    let way = |x: f64| if x >= 0.0 { "higher" } else { "lower" };
    let range = if ci[0] >= 0.0 || ci[1] <= 0.0 {
        let (a, b) = (ci[0].abs().min(ci[1].abs()), ci[0].abs().max(ci[1].abs()));
        format!(
            "likely {} to {} {}",
            number(a),
            number(b),
            way(ci[0] + ci[1])
        )
    } else {
        format!(
            "likely between {} lower and {} higher",
            number(-ci[0]),
            number(ci[1])
        )
    };
    let better = match subject.direction {
        Direction::Higher => mean > 0.0,
        Direction::Lower => mean < 0.0,
    };
    // An outcome without a unit (a bare CSV column) reads "about 1.1 lower".
    let amount = format!("{} {}", number(mean.abs()), unit.trim());
    format!(
        "{} is about {} {} on {arm} than on {} ({range}; {} is better, so this is {}).",
        capitalised(subject.outcome),
        amount.trim_end(),
        way(mean),
        subject.comparator,
        match subject.direction {
            Direction::Higher => "higher",
            Direction::Lower => "lower",
        },
        if better {
            "the good way"
        } else {
            "the wrong way"
        }
    )
}

/// `x` with at most `decimals` decimals, trailing zeros dropped ("5",
/// "3.5", never "-0").
pub fn trimmed(x: f64, decimals: usize) -> String {
    let s = format!("{x:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        &s
    };
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// A number as a person reads it: whole above 10, one decimal above 1,
/// else two.
pub fn number(x: f64) -> String {
    let a = x.abs();
    if a >= 10.0 {
        format!("{x:.0}")
    } else if a >= 1.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn capitalised(s: &str) -> String {
    let s = s.replace('_', " ");
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::natural::NaturalEffect;

    fn effect(mean: f64, ci90: [f64; 2], p_mid: f64) -> EffectSummary {
        EffectSummary {
            arm: "meditation".into(),
            mean,
            sd: 0.5,
            ci50: ci90,
            ci90,
            ci95: ci90,
            p_better_by_mid: p_mid,
            p_better: 0.9,
            p_best: 0.9,
            natural: None,
        }
    }

    #[test]
    fn numbers_are_trimmed() {
        assert_eq!(trimmed(10.0, 2), "10");
        assert_eq!(trimmed(3.50, 2), "3.5");
        assert_eq!(trimmed(-0.001, 2), "0");
        assert_eq!(trimmed(1.44, 4), "1.44");
        assert_eq!(trimmed(100.0, 0), "100");
    }

    /// The sentences of a fit with one arm (index 1).
    fn one(subject: &Subject<'_>, label: &str, e: &EffectSummary, stage: &Stage) -> String {
        let arm = ArmEffect {
            arm: 1,
            label: label.to_string(),
            effect: e,
        };
        sentences(subject, &[arm], stage).remove(0)
    }

    fn anxiety() -> Subject<'static> {
        Subject {
            outcome: "anxiety_evening",
            unit: "points",
            family: Family::Gaussian,
            direction: Direction::Lower,
            goal: goal(Family::Gaussian, 1.0, "points", None),
            comparator: "no meditation",
        }
    }

    #[test]
    fn a_running_trial_says_the_effect_in_units_and_when_it_is_checked() {
        let e = effect(-1.07, [-1.98, -0.22], 0.53);
        let stage = Stage::Running {
            next_check: Some(Date::constant(2026, 12, 10)),
            efficacy: 0.7073,
            futility: 0.002,
        };
        let s = one(&anxiety(), "meditation", &e, &stage);
        assert_eq!(
            s,
            "Anxiety evening is about 1.1 points lower on meditation than on no meditation (likely 0.22 to 2.0 lower; lower is better, so this is the good way). Not yet sure it beats your goal of 1 points (53% so far): next check on 10 December."
        );
        // Past the threshold: it says the trial will stop if that holds.
        let sure = effect(-1.5, [-2.4, -0.6], 0.81);
        let s = one(&anxiety(), "meditation", &sure, &stage);
        assert!(
            s.contains("It now beats your goal of 1 points with 81% certainty"),
            "{s}"
        );
        // An interval across zero is said both ways.
        let unsure = effect(0.3, [-0.5, 1.1], 0.05);
        let s = one(&anxiety(), "meditation", &unsure, &stage);
        assert!(
            s.contains("likely between 0.50 lower and 1.1 higher"),
            "{s}"
        );
        assert!(
            s.contains("the wrong way") && s.contains("(5% so far)"),
            "{s}"
        );
    }

    #[test]
    fn the_next_check_is_the_morning_after_a_period_ends() {
        let text = include_str!("../../protocols/meditation-anxiety.toml");
        let protocol = crate::trial::protocol::Protocol::parse(text, "m").unwrap();
        let plan = crate::trial::design::plan(&protocol, 7);
        let start = Date::constant(2026, 12, 1);
        let rows = crate::trial::lifecycle::dated(&protocol, &plan, start).unwrap();
        let ends = crate::trial::lifecycle::period_ends(&rows);
        let (first_end, second_end) = (ends[0].1, ends[1].1);
        // During the first period: checked the morning after it ends, with
        // no block complete yet (a block holds both arms' periods).
        let (check, blocks) = next_check(&rows, start, None).unwrap();
        assert_eq!((check, blocks), (first_end.tomorrow().unwrap(), 0));
        // The morning after, it is checked that day until it is decided;
        // then the second period, which completes the first block, is next.
        let after = first_end.tomorrow().unwrap();
        assert_eq!(next_check(&rows, after, None).unwrap(), (after, 0));
        assert_eq!(
            next_check(&rows, after, Some(ends[0].0)).unwrap(),
            (second_end.tomorrow().unwrap(), 1)
        );
        // Before min_blocks nothing can stop at that check.
        let t = crate::trial::decide::trial_thresholds(&protocol.decision, (3, 6), None);
        match stage(TrialStatus::Running, &rows, start, &t, (None, None)) {
            Stage::Running {
                efficacy, futility, ..
            } => {
                assert!(efficacy > 1.0 && futility == 0.0)
            }
            other => panic!("{other:?}"),
        }
        // Past the schedule there is no next check.
        let last = rows.last().unwrap().local_date.tomorrow().unwrap();
        let last_period = ends.last().unwrap().0;
        assert_eq!(next_check(&rows, last, Some(last_period)), None);
        // Nothing is decided while paused.
        assert_eq!(
            stage(TrialStatus::Paused, &rows, start, &t, (None, None)),
            Stage::Paused
        );
    }

    #[test]
    fn an_ended_trial_gives_its_final_answer() {
        let e = effect(-1.5, [-2.4, -0.6], 0.96);
        let won = Stage::Ended(Some(Action::StopEfficacy { arm: 1 }));
        let s = one(&anxiety(), "meditation", &e, &won);
        assert!(
            s.ends_with("Final answer: meditation beats your goal of 1 points (96% certainty)."),
            "{s}"
        );
        let lost = Stage::Ended(Some(Action::StopEfficacy { arm: 2 }));
        let s = one(&anxiety(), "meditation", &e, &lost);
        assert!(s.contains("Final answer: another arm beat"), "{s}");
        let futile = Stage::Ended(Some(Action::StopFutility));
        let s = one(
            &anxiety(),
            "meditation",
            &effect(0.1, [-0.4, 0.6], 0.01),
            &futile,
        );
        assert!(
            s.contains("Final answer: meditation is unlikely to beat your goal of 1 points (1%)"),
            "{s}"
        );
        let open = Stage::Ended(Some(Action::StopInconclusive));
        let s = one(&anxiety(), "meditation", &e, &open);
        assert!(s.contains("Final answer: not sure."), "{s}");
    }

    #[test]
    fn counts_speak_in_the_persons_units() {
        let mut e = effect(-0.4, [-0.9, 0.1], 0.3);
        e.natural = Some(NaturalEffect {
            ratio_name: "odds ratio".into(),
            ratio_mean: 0.7,
            ratio_median: 0.67,
            ratio_ci90: [0.4, 1.1],
            difference_unit: "yes-days per 30 days".into(),
            difference_mean: -2.1,
            difference_ci90: [-4.0, 0.3],
            difference_mc_sd: 0.01,
        });
        let subject = Subject {
            outcome: "migraine_day",
            unit: "",
            family: Family::Bernoulli,
            direction: Direction::Lower,
            goal: goal(Family::Bernoulli, 1.5, "", Some(2.0)),
            comparator: "placebo",
        };
        let stage = Stage::Running {
            next_check: None,
            efficacy: 0.97,
            futility: 0.0,
        };
        let s = one(&subject, "magnesium", &e, &stage);
        assert!(
            s.starts_with("Migraine day is about 2.1 yes-days per 30 days lower on magnesium than on placebo (likely between 4.0 lower and 0.30 higher"),
            "{s}"
        );
        assert!(
            s.ends_with("Not yet sure it beats your goal of 2 yes-days per 30 days (30% so far)."),
            "{s}"
        );
    }

    /// Data outside a trial (`nof1d analyze` of a bare CSV): no unit, a
    /// MID of no change, so the bar is the comparator itself.
    #[test]
    fn data_at_hand_says_how_sure_without_a_rule() {
        let subject = Subject {
            outcome: "score",
            unit: "",
            family: Family::Gaussian,
            direction: Direction::Higher,
            goal: goal(Family::Gaussian, 0.0, "", None),
            comparator: "A",
        };
        let e = effect(0.8, [0.2, 1.4], 0.97);
        assert_eq!(
            one(&subject, "B", &e, &Stage::Data),
            "Score is about 0.80 higher on B than on A (likely 0.20 to 1.4 higher; higher is better, so this is the good way). From these data, 97% sure that it beats the comparator."
        );
        assert_eq!(
            goal(Family::Poisson, 1.0, "", None),
            "the comparator",
            "a rate ratio of 1 is no change"
        );
        assert_eq!(goal(Family::Gaussian, 0.5, "", None), "your goal of 0.5");
    }
}

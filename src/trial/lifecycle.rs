//! A trial's life cycle (proposed → approved → running ⇄ paused → stopped)
//! and the schedule changes it brings: dating a plan, shifting the rest of a
//! schedule after a pause, replanning after arms are dropped, and refusing
//! concurrent trials that would share an outcome stream.
//!
//! Pure: the store applies what these functions return in one transaction.

use jiff::Span;
use jiff::civil::Date;
use serde::Serialize;

use crate::trial::decide::{Action, Decision};
use crate::trial::design::{self, PlannedPeriod};
use crate::trial::protocol::Protocol;

/// A scheduled day with its civil date in the participant's zone: what
/// the store keeps, row by row, once a trial starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatedDay {
    /// Day index from 0.
    pub day: u32,
    /// Local date.
    pub local_date: Date,
    /// Period (None in run-in).
    pub period: Option<u32>,
    /// Block (None in run-in).
    pub block: Option<u32>,
    /// Arm index.
    pub arm: usize,
    /// Washout day.
    pub washout: bool,
}

/// Life-cycle states, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialStatus {
    /// Proposed (by a person or a proposer), not yet approved.
    Proposed,
    /// Approved; starts on its start date.
    Approved,
    /// Assignments go out every day.
    Running,
    /// Held (holiday, illness); the rest of the schedule moves on resume.
    Paused,
    /// Ended, with a reason.
    Stopped,
}

impl TrialStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            TrialStatus::Proposed => "proposed",
            TrialStatus::Approved => "approved",
            TrialStatus::Running => "running",
            TrialStatus::Paused => "paused",
            TrialStatus::Stopped => "stopped",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<TrialStatus> {
        [
            TrialStatus::Proposed,
            TrialStatus::Approved,
            TrialStatus::Running,
            TrialStatus::Paused,
            TrialStatus::Stopped,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }

    /// The legal transitions: proposed → approved | stopped (rejected);
    /// approved → running | stopped; running → paused | stopped;
    /// paused → running | stopped. Nothing leaves stopped.
    pub fn can_become(self, to: TrialStatus) -> bool {
        use TrialStatus::*;
        matches!(
            (self, to),
            (Proposed, Approved)
                | (Proposed, Stopped)
                | (Approved, Running)
                | (Approved, Stopped)
                | (Running, Paused)
                | (Running, Stopped)
                | (Paused, Running)
                | (Paused, Stopped)
        )
    }
}

impl std::fmt::Display for TrialStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of schedule arithmetic.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LifecycleError {
    /// A date out of the calendar's range.
    #[error("date arithmetic: {0}")]
    Date(String),
}

fn add_days(d: Date, n: i64) -> Result<Date, LifecycleError> {
    d.checked_add(Span::new().days(n))
        .map_err(|e| LifecycleError::Date(e.to_string()))
}

/// The dated schedule of a plan from `start` (day 0), one row per day.
pub fn dated(
    protocol: &Protocol,
    periods: &[PlannedPeriod],
    start: Date,
) -> Result<Vec<DatedDay>, LifecycleError> {
    design::days_of(protocol, periods)
        .into_iter()
        .map(|d| {
            Ok(DatedDay {
                day: d.day,
                local_date: add_days(start, i64::from(d.day))?,
                period: d.period,
                block: d.block,
                arm: d.arm,
                washout: d.washout,
            })
        })
        .collect()
}

/// The periods of a stored schedule, in order.
pub fn periods_of(rows: &[DatedDay]) -> Vec<PlannedPeriod> {
    let mut out: Vec<PlannedPeriod> = Vec::new();
    let mut last: Option<u32> = None;
    for r in rows {
        if let (Some(p), Some(b)) = (r.period, r.block)
            && last != Some(p)
        {
            out.push(PlannedPeriod {
                block: b,
                arm: r.arm,
            });
            last = Some(p);
        }
    }
    out
}

/// The last date of each period, by period number.
pub fn period_ends(rows: &[DatedDay]) -> Vec<(u32, Date)> {
    let mut out: Vec<(u32, Date)> = Vec::new();
    for r in rows {
        if let Some(p) = r.period {
            match out.last_mut() {
                Some(last) if last.0 == p => last.1 = r.local_date,
                _ => out.push((p, r.local_date)),
            }
        }
    }
    out
}

/// The last day of the first period after which the trial has run
/// `min_blocks` blocks: its look, taken once the data reach that day, is
/// the first that can stop the trial (§5), and every look before it only
/// continues. `None` where no period of the schedule gets there.
pub fn first_decisive_day(rows: &[DatedDay], min_blocks: u32) -> Option<Date> {
    let periods = periods_of(rows);
    let ends = period_ends(rows);
    (1..=periods.len())
        .find(|&done| design::blocks_done(&periods, done) >= min_blocks)
        .and_then(|done| ends.get(done - 1))
        .map(|(_, end)| *end)
}

/// The rows replacing every period after `done` periods, when the plan
/// changes to `periods` (arms dropped, or the next period's arm drawn by
/// adaptive allocation): they continue day by day after the last kept row.
pub fn replan_rows(
    protocol: &Protocol,
    rows: &[DatedDay],
    periods: &[PlannedPeriod],
    done: usize,
) -> Result<(u32, Vec<DatedDay>), LifecycleError> {
    let kept: Vec<&DatedDay> = rows
        .iter()
        .filter(|r| r.period.is_none_or(|p| (p as usize) < done))
        .collect();
    let (first_day, first_date) = match kept.last() {
        Some(r) => (r.day + 1, add_days(r.local_date, 1)?),
        None => return Ok((0, Vec::new())),
    };
    let d = &protocol.design;
    let mut out = Vec::new();
    for (k, p) in periods.iter().enumerate().skip(done) {
        for offset in 0..d.period_days {
            let n = out.len() as u32;
            out.push(DatedDay {
                day: first_day + n,
                local_date: add_days(first_date, i64::from(n))?,
                period: Some(k as u32),
                block: Some(p.block),
                arm: p.arm,
                washout: offset < d.washout_days,
            });
        }
    }
    Ok((first_day, out))
}

/// The rows after a pause: every row from `first_unrun` on moves so that it
/// starts on `resume_on`, keeping its order, period, block and arm (so block
/// balance is untouched; the interrupted period continues where it stopped).
pub fn shift_rows(
    rows: &[DatedDay],
    first_unrun: Date,
    resume_on: Date,
) -> Result<Vec<DatedDay>, LifecycleError> {
    let shift = first_unrun
        .until(resume_on)
        .map_err(|e| LifecycleError::Date(e.to_string()))?
        .get_days();
    rows.iter()
        .filter(|r| r.local_date >= first_unrun)
        .map(|r| {
            Ok(DatedDay {
                local_date: add_days(r.local_date, i64::from(shift.max(0)))?,
                ..r.clone()
            })
        })
        .collect()
}

/// Why `protocol` may not run beside the participant's other active trials:
/// two running (or paused) trials may not share an outcome stream unless
/// both protocols declare a factorial design.
pub fn conflict(protocol: &Protocol, others: &[(i64, Protocol)]) -> Option<String> {
    let mine: Vec<&str> = protocol.outcomes().map(|o| o.stream.as_str()).collect();
    for (id, other) in others {
        for o in other.outcomes() {
            if mine.contains(&o.stream.as_str())
                && !(protocol.design.factorial && other.design.factorial)
            {
                return Some(format!(
                    "trial {id} ({}) already measures stream {:?}; two trials may share an outcome stream only when both protocols set design.factorial = true",
                    other.id, o.stream
                ));
            }
        }
    }
    None
}

/// The look due on `today`: the latest period that ended before today and
/// has no decision yet, as `(period, periods done)`. Older undecided
/// periods (the daemon was down) are skipped: only the latest data count.
pub fn look_due(rows: &[DatedDay], decided: &[u32], today: Date) -> Option<(u32, usize)> {
    let ends = period_ends(rows);
    let (i, &(period, _)) = ends
        .iter()
        .enumerate()
        .rev()
        .find(|(_, (_, end))| *end < today)?;
    (!decided.contains(&period)).then_some((period, i + 1))
}

/// Arms dropped by earlier decisions.
pub fn dropped_arms(decisions: &[Decision]) -> Vec<usize> {
    let mut out = Vec::new();
    for d in decisions {
        if let Action::DropArms { arms } = &d.action {
            out.extend(arms.iter().copied());
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn protocol() -> Protocol {
        Protocol::parse(include_str!("../../protocols/sleep-supplements.toml"), "s").unwrap()
    }

    fn date(s: &str) -> Date {
        s.parse().unwrap()
    }

    #[test]
    fn only_legal_transitions() {
        use TrialStatus::*;
        assert!(Proposed.can_become(Approved));
        assert!(Running.can_become(Paused));
        assert!(Paused.can_become(Running));
        assert!(!Proposed.can_become(Running));
        assert!(!Stopped.can_become(Running));
        assert!(!Approved.can_become(Paused));
        for s in ["proposed", "approved", "running", "paused", "stopped"] {
            assert_eq!(TrialStatus::parse(s).map(TrialStatus::as_str), Some(s));
        }
        assert_eq!(TrialStatus::parse("done"), None);
    }

    #[test]
    fn a_pause_shifts_the_rest_and_keeps_balance() {
        let p = protocol();
        let rows = dated(&p, &design::plan(&p, 9), date("2026-03-01")).unwrap();
        // Paused on day 20 (first unrun), resumed 10 days later.
        let first_unrun = rows[20].local_date;
        let shifted = shift_rows(&rows, first_unrun, add_days(first_unrun, 10).unwrap()).unwrap();
        assert_eq!(shifted.len(), rows.len() - 20);
        assert_eq!(shifted[0].local_date, date("2026-03-31"));
        for (a, b) in rows[20..].iter().zip(&shifted) {
            assert_eq!(
                (a.day, a.period, a.block, a.arm, a.washout),
                (b.day, b.period, b.block, b.arm, b.washout)
            );
        }
        // Still contiguous after the shift.
        for w in shifted.windows(2) {
            assert_eq!(add_days(w[0].local_date, 1).unwrap(), w[1].local_date);
        }
    }

    #[test]
    fn the_first_decisive_day_ends_the_period_that_completes_min_blocks() {
        let p = protocol();
        let rows = dated(&p, &design::plan(&p, 9), date("2026-03-01")).unwrap();
        // Every block runs each arm once, so block 2 ends with period
        // 2k - 1 (from 0); its last day is the first decisive one.
        let k = p.arms.len() as u32;
        let last_of = |period: u32| {
            rows.iter()
                .rfind(|r| r.period == Some(period))
                .map(|r| r.local_date)
        };
        assert_eq!(p.design.min_blocks, 2);
        assert_eq!(first_decisive_day(&rows, 2), last_of(2 * k - 1));
        assert_eq!(first_decisive_day(&rows, 1), last_of(k - 1));
        // Not a day earlier: the period before it leaves block 2 unfinished.
        assert!(last_of(2 * k - 2) < first_decisive_day(&rows, 2));
        assert_eq!(first_decisive_day(&rows, p.design.max_blocks + 1), None);
    }

    #[test]
    fn replanning_after_a_drop_continues_the_calendar() {
        let p = protocol();
        let plan = design::plan(&p, 4);
        let rows = dated(&p, &plan, date("2026-03-01")).unwrap();
        // Drop arm 2 after 8 periods (two whole blocks).
        let new_plan = design::replan_after_drop(&p, 4, &plan, 8, &[0, 1, 3]);
        let (from_day, new_rows) = replan_rows(&p, &rows, &new_plan, 8).unwrap();
        assert_eq!(from_day, 7 + 8 * 7);
        assert_eq!(
            new_rows[0].local_date,
            add_days(date("2026-03-01"), i64::from(from_day)).unwrap()
        );
        assert!(new_rows.iter().all(|r| r.arm != 2));
        assert_eq!(new_rows.len(), 2 * 3 * 7);
        assert_eq!(periods_of(&rows).len(), 16);
        let ends = period_ends(&rows);
        assert_eq!(ends[0], (0, date("2026-03-14")));
    }

    #[test]
    fn concurrent_trials_on_one_stream_are_refused_unless_factorial() {
        let p = protocol();
        let mut other = protocol();
        other.id = "other".into();
        assert!(conflict(&p, &[(3, other.clone())]).is_some_and(|m| m.contains("sleep_score")));
        let mut a = p.clone();
        a.design.factorial = true;
        other.design.factorial = true;
        assert_eq!(conflict(&a, &[(3, other.clone())]), None);
        other.outcome.stream = "hrv".into();
        other.secondary.clear();
        other.design.factorial = false;
        assert_eq!(conflict(&p, &[(3, other)]), None);
    }
}

//! A stored trial turned into model input: observations of an outcome stream
//! placed on the trial's time axis, with the assigned arm path (intention to
//! treat). Pure; the daemon's refit job feeds it from the store.

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

use crate::engine::fit::SampleScale;
use crate::engine::model::{ArmPath, Series};
use crate::trial::calendar::days_between;
use crate::trial::lifecycle::DatedDay;
use crate::trial::protocol::{Aggregation, Outcome, Protocol, WashoutHandling};

/// Model input for one outcome of a trial.
#[derive(Debug, Clone)]
pub struct TrialSeries {
    /// The series (time 0 = local midnight starting the trial's day 0).
    pub series: Series,
    /// The outcome's spread during run-in (for the default scale `S`).
    pub run_in: Option<SampleScale>,
    /// The last local date with data.
    pub data_through: Option<Date>,
}

impl TrialSeries {
    /// A digest of what a fit of this series sees (SHA-256 of every time
    /// and value and of the arm path, hex): equal digests, the same input.
    /// A value changed in place (a corrected rating, a re-scored night) or
    /// an arm changed (a late adherence answer, as treated) changes it, so
    /// the refit job refits though no day was added.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for (t, y) in self.series.t.iter().zip(&self.series.y) {
            h.update(t.to_bits().to_le_bytes());
            h.update(y.to_bits().to_le_bytes());
        }
        let path = &self.series.path;
        for (start, arm) in path.starts.iter().zip(&path.arms) {
            h.update(start.to_bits().to_le_bytes());
            h.update((*arm as u64).to_le_bytes());
        }
        h.update((self.series.n_arms as u64).to_le_bytes());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Builds the series of `outcome` from stored observations `(instant, local date, value)`.
///
/// Time is civil: an observation at local time `h:m` on trial day `d` is at
/// `t = d + (h + m/60)/24`, so DST changes do not stretch or shrink a day.
/// Observations outside the schedule are ignored; washout days are dropped
/// when the protocol says `washout = "exclude"`; several observations a day
/// are aggregated as the protocol says.
pub fn trial_series(
    protocol: &Protocol,
    outcome: &Outcome,
    schedule: &[DatedDay],
    observations: &[(Timestamp, Date, f64)],
    tz: &TimeZone,
) -> TrialSeries {
    let Some(first) = schedule.first() else {
        return TrialSeries {
            series: empty(protocol),
            run_in: None,
            data_through: None,
        };
    };
    let start = first.local_date;
    let by_date: BTreeMap<Date, &DatedDay> = schedule.iter().map(|r| (r.local_date, r)).collect();
    let mut points: Vec<(f64, Date, f64)> = Vec::new();
    let mut run_in = Vec::new();
    for &(at, date, value) in observations {
        let Some(row) = by_date.get(&date) else {
            continue;
        };
        if row.washout && protocol.design.washout == WashoutHandling::Exclude {
            continue;
        }
        let local = at.to_zoned(tz.clone());
        let frac = (f64::from(local.hour())
            + f64::from(local.minute()) / 60.0
            + f64::from(local.second()) / 3600.0)
            / 24.0;
        let t = days_between(start, date) as f64 + frac;
        if row.period.is_none() {
            run_in.push(value);
        }
        points.push((t, date, value));
    }
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let data_through = points.last().map(|p| p.1);
    let (t, y) = aggregate(&points, outcome.aggregation);
    // The arm path on the civil axis. Days without a schedule row between
    // two rows (a pause) are on the comparator: nothing was taken.
    let comparator = protocol.comparator_index();
    let mut starts = vec![0.0];
    let mut arms = vec![first.arm];
    let mut push = |at: f64, arm: usize| {
        if arms.last() != Some(&arm) {
            starts.push(at);
            arms.push(arm);
        }
    };
    for w in schedule.windows(2) {
        let prev_end = days_between(start, w[0].local_date) as f64 + 1.0;
        let next = days_between(start, w[1].local_date) as f64;
        if next > prev_end {
            push(prev_end, comparator);
        }
        push(next, w[1].arm);
    }
    TrialSeries {
        series: Series {
            t,
            y,
            path: ArmPath { starts, arms },
            n_arms: protocol.arms.len(),
            comparator,
        },
        run_in: run_in_scale(&run_in),
        data_through,
    }
}

/// The fits key of the analysis a protocol decides on (`statistics.md` §5:
/// intention to treat by default, as treated where the protocol says so).
pub fn decisive_key(protocol: &Protocol) -> String {
    match protocol.decision.analysis {
        crate::trial::protocol::Analysis::AsTreated => as_treated_key(&protocol.outcome.stream),
        crate::trial::protocol::Analysis::Itt => protocol.outcome.stream.clone(),
    }
}

/// The fits key of an outcome's as-treated analysis.
pub fn as_treated_key(stream: &str) -> String {
    format!("{stream}#as_treated")
}

/// The schedule as taken: days the participant reported as not done are on
/// the comparator (nothing, or the control, was taken); other days keep the
/// assigned arm. Feeding this to [`trial_series`] gives the as-treated series.
pub fn as_treated(
    schedule: &[DatedDay],
    adherence: &[(u32, String)],
    comparator: usize,
) -> Vec<DatedDay> {
    let not_done: std::collections::BTreeSet<u32> = adherence
        .iter()
        .filter(|(_, s)| s == "not_done")
        .map(|(d, _)| *d)
        .collect();
    schedule
        .iter()
        .map(|r| DatedDay {
            arm: if not_done.contains(&r.day) {
                comparator
            } else {
                r.arm
            },
            ..r.clone()
        })
        .collect()
}

fn empty(protocol: &Protocol) -> Series {
    Series {
        t: Vec::new(),
        y: Vec::new(),
        path: ArmPath {
            starts: vec![0.0],
            arms: vec![protocol.comparator_index()],
        },
        n_arms: protocol.arms.len(),
        comparator: protocol.comparator_index(),
    }
}

fn aggregate(points: &[(f64, Date, f64)], how: Aggregation) -> (Vec<f64>, Vec<f64>) {
    if how == Aggregation::All {
        return (
            points.iter().map(|p| p.0).collect(),
            points.iter().map(|p| p.2).collect(),
        );
    }
    let mut t = Vec::new();
    let mut y = Vec::new();
    let mut i = 0;
    while i < points.len() {
        let mut j = i;
        while j + 1 < points.len() && points[j + 1].1 == points[i].1 {
            j += 1;
        }
        let day = &points[i..=j];
        let values: Vec<f64> = day.iter().map(|p| p.2).collect();
        let value = how.of(&values);
        t.push(day[day.len() - 1].0);
        y.push(value);
        i = j + 1;
    }
    (t, y)
}

/// The run-in's spread, which sets the outcome's scale `S` (§4) where the
/// protocol states none: at least 3 values that vary, else `None` (the
/// scale then comes from all the data). One home for the daemon and the
/// simulator, so that both fit with the same priors.
pub fn run_in_scale(xs: &[f64]) -> Option<SampleScale> {
    SampleScale::of(xs, 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_treated_moves_not_done_days_to_the_comparator() {
        let date = |d: i8| jiff::civil::date(2026, 3, d);
        let rows: Vec<DatedDay> = (0..4)
            .map(|d| DatedDay {
                day: d,
                local_date: date(1 + d as i8),
                period: Some(0),
                block: Some(0),
                arm: 1,
                washout: false,
            })
            .collect();
        let adherence = vec![(1, "not_done".to_string()), (2, "side_effect".to_string())];
        let taken = as_treated(&rows, &adherence, 0);
        let arms: Vec<usize> = taken.iter().map(|r| r.arm).collect();
        assert_eq!(arms, [1, 0, 1, 1]);
        assert_eq!(as_treated_key("mood"), "mood#as_treated");
    }

    #[test]
    fn civil_time_axis_and_aggregation() {
        let p =
            Protocol::parse(include_str!("../../protocols/meditation-anxiety.toml"), "m").unwrap();
        let start: Date = "2026-03-27".parse().unwrap();
        let schedule =
            crate::trial::lifecycle::dated(&p, &crate::trial::design::plan(&p, 1), start).unwrap();
        let tz = TimeZone::get("Europe/London").unwrap();
        // 21:00 local on each side of the DST change of 2026-03-29.
        let obs: Vec<(Timestamp, Date, f64)> = ["2026-03-28", "2026-03-30", "2026-03-30"]
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let date: Date = d.parse().unwrap();
                let at = crate::trial::calendar::local_instant(
                    date,
                    jiff::civil::Time::new(21, 0, 0, 0).unwrap(),
                    &tz,
                );
                (at, date, i as f64)
            })
            .collect();
        let ts = trial_series(&p, &p.outcome, &schedule, &obs, &tz);
        assert_eq!(ts.series.t, vec![1.875, 3.875]);
        assert_eq!(ts.series.y, vec![0.0, 1.5], "two on one day: mean");
        assert_eq!(ts.data_through, Some("2026-03-30".parse().unwrap()));
        // Run-in is 14 days on the comparator; the first switch can only come after.
        assert!(ts.series.path.starts.iter().skip(1).all(|&s| s >= 14.0));
    }
}

//! A trial's days and decisions as CSV, for a spreadsheet, a clinician or a
//! second opinion. The days' file reads back with `nof1d analyze --data
//! FILE --protocol PROTOCOL` (columns `date`, `arm`, and the outcome by its
//! stream's name). One home for the command line (`nof1d trial export`)
//! and the dashboard's download links.

use std::collections::BTreeMap;

use jiff::civil::Date;

use crate::service::store::{DecisionRow, Store, StoreError};
use crate::service::streams::StreamRules;
use crate::trial::lifecycle::DatedDay;
use crate::trial::protocol::{Aggregation, Protocol};

/// Why an export could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such trial.
    #[error("there is no trial {0}")]
    NoTrial(i64),
    /// The trial's locked protocol no longer parses.
    #[error("trial {0}: its protocol: {1}")]
    Protocol(i64, String),
    /// A stored decision's numbers do not decode.
    #[error("trial {0}: decision {1}: {2}")]
    Decision(i64, i64, String),
    /// Writing the CSV failed.
    #[error("CSV: {0}")]
    Csv(String),
}

/// Which file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// One row a scheduled day.
    Days,
    /// One row an arm of each decision.
    Decisions,
}

impl Table {
    /// The file name a download suggests for trial `id`.
    pub fn file_name(self, id: i64) -> String {
        match self {
            Table::Days => format!("trial-{id}-days.csv"),
            Table::Decisions => format!("trial-{id}-decisions.csv"),
        }
    }
}

/// The CSV of `table` for trial `trial_id`; `rules_of` gives a
/// participant's stream rules by key (which origin counts on a day with
/// two, as the fits do). `through`: the last day listed, for a participant
/// (days to come are concealed from them); `None` lists the whole schedule.
pub fn trial_csv(
    store: &Store,
    trial_id: i64,
    table: Table,
    rules_of: impl Fn(&str) -> StreamRules,
    through: Option<Date>,
) -> Result<String, ExportError> {
    let trial = store
        .trial(trial_id)?
        .ok_or(ExportError::NoTrial(trial_id))?;
    let protocol = trial
        .protocol()
        .map_err(|e| ExportError::Protocol(trial_id, e.to_string()))?;
    match table {
        Table::Days => {
            let stream = &protocol.outcome.stream;
            let rules = store
                .participant(trial.participant_id)?
                .map(|p| rules_of(&p.key))
                .unwrap_or_default();
            let observations =
                store.observations(trial.participant_id, stream, rules.prefer(stream))?;
            let mut schedule = store.schedule(trial_id)?;
            schedule.retain(|r| through.is_none_or(|last| r.local_date <= last));
            let days = DayInputs {
                schedule: &schedule,
                observations: &observations,
                adherence: &store.adherence(trial_id)?.into_iter().collect(),
                runs: &store.daily_runs(trial_id)?.into_iter().collect(),
            };
            days_csv(&protocol, &days)
        }
        Table::Decisions => decisions_csv(&store.decisions(trial_id)?),
    }
}

/// What the days' file is made of, as stored.
#[derive(Debug)]
pub struct DayInputs<'a> {
    /// The dated schedule.
    pub schedule: &'a [DatedDay],
    /// The outcome's observations `(instant, local date, value)`.
    pub observations: &'a [(jiff::Timestamp, Date, f64)],
    /// Adherence by trial day.
    pub adherence: &'a BTreeMap<u32, String>,
    /// The daily run (`sent`, `missed`) by date.
    pub runs: &'a BTreeMap<Date, String>,
}

/// One row a scheduled day: `date, day, period, block, arm, washout,
/// adherence, email, <outcome>, observations`. The arm is its key (the
/// run-in's is the comparator's, as the model reads it); the outcome is the
/// day's value by the protocol's aggregation (the mean where it keeps every
/// observation), empty on a day without data and on a washout day the
/// protocol leaves out (`washout = "exclude"`), as the fits do, so that
/// `nof1d analyze` reads the same days.
pub fn days_csv(protocol: &Protocol, days: &DayInputs<'_>) -> Result<String, ExportError> {
    let outcome = &protocol.outcome;
    let mut by_date: BTreeMap<Date, Vec<f64>> = BTreeMap::new();
    for (_, date, value) in days.observations {
        by_date.entry(*date).or_default().push(*value);
    }
    let excluded = |r: &DatedDay| {
        r.washout && protocol.design.washout == crate::trial::protocol::WashoutHandling::Exclude
    };
    let how = match outcome.aggregation {
        Aggregation::All => Aggregation::Mean,
        other => other,
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    let header = [
        "date",
        "day",
        "period",
        "block",
        "arm",
        "washout",
        "adherence",
        "email",
        outcome.stream.as_str(),
        "observations",
    ];
    w.write_record(header).map_err(csv_error)?;
    let number = |n: Option<u32>| n.map(|n| n.to_string()).unwrap_or_default();
    for r in days.schedule {
        let values = by_date.get(&r.local_date);
        let arm = protocol
            .arms
            .get(r.arm)
            .map_or_else(|| format!("?{}", r.arm), |a| a.key.clone());
        w.write_record([
            r.local_date.to_string(),
            r.day.to_string(),
            number(r.period),
            number(r.block),
            arm,
            if r.washout { "yes" } else { "no" }.to_string(),
            days.adherence.get(&r.day).cloned().unwrap_or_default(),
            days.runs.get(&r.local_date).cloned().unwrap_or_default(),
            match values {
                Some(v) if !excluded(r) => how.of(v).to_string(),
                _ => String::new(),
            },
            values.map_or(0, Vec::len).to_string(),
        ])
        .map_err(csv_error)?;
    }
    finish(w)
}

/// One row an arm of each decision: `decided_at, period, blocks_done,
/// action, rule, arm, mean, ci90_low, ci90_high, p_better_by_mid, p_best,
/// efficacy_threshold, futility_threshold, converged, drop_arm_threshold`
/// (the last added after the others, so columns read by position stay put).
/// The effect is on the
/// model's scale (the outcome's units for a gaussian outcome, log ratio
/// otherwise), as decided.
pub fn decisions_csv(rows: &[DecisionRow]) -> Result<String, ExportError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "decided_at",
        "period",
        "blocks_done",
        "action",
        "rule",
        "arm",
        "mean",
        "ci90_low",
        "ci90_high",
        "p_better_by_mid",
        "p_best",
        "efficacy_threshold",
        "futility_threshold",
        "converged",
        "drop_arm_threshold",
    ])
    .map_err(csv_error)?;
    for row in rows {
        let d = row.decision().ok_or_else(|| {
            ExportError::Decision(row.trial_id, row.id, "its numbers do not decode".into())
        })?;
        let efficacy = d.thresholds.efficacy_at(d.look.blocks_done);
        for a in &d.arms {
            w.write_record([
                row.created_at.clone(),
                d.look.period.to_string(),
                d.look.blocks_done.to_string(),
                row.action.clone(),
                d.rule.clone(),
                a.key.clone(),
                a.mean.to_string(),
                a.ci90[0].to_string(),
                a.ci90[1].to_string(),
                a.p_better_by_mid.to_string(),
                a.p_best.to_string(),
                efficacy.to_string(),
                d.thresholds.futility.to_string(),
                d.converged.to_string(),
                d.thresholds.drop_arm.to_string(),
            ])
            .map_err(csv_error)?;
        }
    }
    finish(w)
}

fn csv_error(e: csv::Error) -> ExportError {
    ExportError::Csv(e.to_string())
}

fn finish(w: csv::Writer<Vec<u8>>) -> Result<String, ExportError> {
    let bytes = w
        .into_inner()
        .map_err(|e| ExportError::Csv(e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| ExportError::Csv(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(day: u32, date: Date, period: Option<u32>, arm: usize, washout: bool) -> DatedDay {
        DatedDay {
            day,
            local_date: date,
            period,
            block: period.map(|p| p / 2),
            arm,
            washout,
        }
    }

    /// A run-in day on the comparator's key, a day with two ratings (their
    /// mean, the protocol's aggregation), a day without data (empty), and
    /// the adherence and email columns from their own tables.
    #[test]
    fn a_row_a_day_with_the_days_value() {
        let protocol = Protocol::parse(
            include_str!("../../protocols/meditation-anxiety.toml"),
            "meditation-anxiety.toml",
        )
        .unwrap();
        let d = |n: i8| Date::constant(2026, 3, n);
        let at = |n: i8, h: i8| {
            d(n).at(h, 0, 0, 0)
                .to_zoned(jiff::tz::TimeZone::UTC)
                .unwrap()
                .timestamp()
        };
        let schedule = [
            day(0, d(28), None, 0, false),
            day(1, d(29), Some(0), 1, true),
            day(2, d(30), Some(0), 1, false),
        ];
        let observations = [
            (at(28, 21), d(28), 4.0),
            (at(29, 9), d(29), 3.0),
            (at(29, 21), d(29), 6.0),
        ];
        let adherence = BTreeMap::from([(1, "done".to_string())]);
        let runs = BTreeMap::from([(d(29), "sent".to_string()), (d(30), "missed".to_string())]);
        let csv = days_csv(
            &protocol,
            &DayInputs {
                schedule: &schedule,
                observations: &observations,
                adherence: &adherence,
                runs: &runs,
            },
        )
        .unwrap();
        assert_eq!(
            csv,
            "date,day,period,block,arm,washout,adherence,email,anxiety_evening,observations\n\
             2026-03-28,0,,,none,no,,,4,1\n\
             2026-03-29,1,0,0,meditation,yes,done,sent,4.5,2\n\
             2026-03-30,2,0,0,meditation,no,,missed,,0\n"
        );
    }
}

//! `nof1d analyze`: the engine on any CSV, without the daemon.
//!
//! The CSV has a time column (a day number, a `YYYY-MM-DD` date or an RFC 3339
//! timestamp), an arm column and an outcome column. Rows are sorted by time;
//! the arm on a row is in force from the start of that row's day until a row
//! with another arm. An empty outcome cell is a missing observation (its arm
//! still counts); anything else that does not parse is an error naming the
//! line, and nothing is silently dropped.

use crate::limits::excerpt;
use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::civil::Date;

use crate::engine::model::{ArmPath, Series};
use crate::trial::protocol::{Aggregation, Outcome};

/// A CSV problem, with its 1-based line number when it is about a row.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    /// The file could not be read as CSV at all, or lacks a column.
    #[error("{0}")]
    File(String),
    /// Rows that did not parse (at most 20 listed).
    #[error("{} bad row(s):\n{}", .0.len(), .0.iter().take(crate::limits::LISTED_PROBLEMS).cloned().collect::<Vec<_>>().join("\n"))]
    Rows(Vec<String>),
    /// The model could not be fitted to the data.
    #[error(transparent)]
    Fit(#[from] crate::engine::model::ModelError),
    /// `--backend cuda` and no GPU.
    #[error("--backend cuda: {0}")]
    Backend(#[from] crate::engine::gpu::NoGpu),
}

/// Which columns to read; `None` picks the defaults.
#[derive(Debug, Clone, Default)]
pub struct Columns {
    /// Time column (default `day`, `date`, `time` or `timestamp`).
    pub time: Option<String>,
    /// Arm column (default `arm`).
    pub arm: Option<String>,
    /// Outcome column (default: the column named after the protocol's
    /// outcome stream, else the one remaining column).
    pub outcome: Option<String>,
    /// The protocol's outcome stream, where a protocol was given (`nof1d
    /// trial export` names the outcome's column so).
    pub stream: Option<String>,
    /// Column with the arm actually taken (as-treated analysis); empty cells
    /// mean "as assigned". Never guessed.
    pub taken: Option<String>,
    /// How to read dates written with slashes (`03/04/2026`): day first or
    /// month first. `None`: such dates are refused as ambiguous.
    pub date_order: Option<DateOrder>,
}

/// The order of a slashed date's day and month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateOrder {
    /// `dd/mm/yyyy`.
    DayMonth,
    /// `mm/dd/yyyy`.
    MonthDay,
}

impl std::str::FromStr for DateOrder {
    type Err = String;
    fn from_str(s: &str) -> Result<DateOrder, String> {
        match s {
            "dmy" => Ok(DateOrder::DayMonth),
            "mdy" => Ok(DateOrder::MonthDay),
            other => Err(format!(
                "unknown date order {other:?}: use dmy (03/04/2026 is 3 April) or mdy (March 4)"
            )),
        }
    }
}

/// One parsed row.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    line: u64,
    /// Days since the first row's day start.
    t: f64,
    arm: String,
    y: Option<f64>,
}

/// The CSV turned into model input.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The series.
    pub series: Series,
    /// Arm labels by index, as written in the CSV (or protocol keys).
    pub arm_keys: Vec<String>,
    /// Rows read, and observations after aggregation.
    pub rows: usize,
    /// Column names used.
    pub columns: [String; 3],
    /// What was assumed or merged on the way, for the person to check.
    pub notes: Vec<String>,
}

enum TimeValue {
    Day(f64),
    Date(Date),
    Instant(Timestamp),
}

/// A time cell that is not one of the accepted forms.
enum TimeProblem {
    /// Not a day number, a date or a timestamp.
    Unreadable,
    /// A slashed date without `--date-order`.
    Ambiguous,
}

/// `d/m/yyyy`-like cells (also with `.` or `-`): three numbers, the last of
/// four digits.
fn slashed_date(s: &str) -> Option<(i16, i8, i8)> {
    let parts: Vec<&str> = s.split(['/', '.', '-']).collect();
    let [a, b, y] = parts.as_slice() else {
        return None;
    };
    if y.len() != 4 || a.len() > 2 || b.len() > 2 {
        return None;
    }
    Some((y.parse().ok()?, a.parse().ok()?, b.parse().ok()?))
}

fn parse_time(s: &str, order: Option<DateOrder>) -> Result<TimeValue, TimeProblem> {
    let s = s.trim();
    if let Ok(v) = s.parse::<f64>() {
        return if v.is_finite() {
            Ok(TimeValue::Day(v))
        } else {
            Err(TimeProblem::Unreadable)
        };
    }
    if let Ok(d) = s.parse::<Date>() {
        return Ok(TimeValue::Date(d));
    }
    if let Some((year, a, b)) = slashed_date(s) {
        let (day, month) = match order {
            Some(DateOrder::DayMonth) => (a, b),
            Some(DateOrder::MonthDay) => (b, a),
            None => return Err(TimeProblem::Ambiguous),
        };
        return Date::new(year, month, day)
            .map(TimeValue::Date)
            .map_err(|_| TimeProblem::Unreadable);
    }
    s.parse::<Timestamp>()
        .map(TimeValue::Instant)
        .map_err(|_| TimeProblem::Unreadable)
}

/// Line numbers from byte offsets, counting `\n` only: the csv reader's
/// own count is one short in files with CRLF line ends, and a record's
/// offset there can point at the `\n` that ended the previous line.
struct Lines<'t> {
    text: &'t [u8],
    newlines: Vec<usize>,
}

impl<'t> Lines<'t> {
    fn of(text: &'t str) -> Lines<'t> {
        let text = text.as_bytes();
        Lines {
            text,
            newlines: text
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        }
    }

    /// The 1-based line of the record starting at byte `byte` (line ends
    /// before it skipped).
    fn at(&self, byte: u64) -> u64 {
        let mut b = usize::try_from(byte).unwrap_or(usize::MAX);
        while b < self.text.len() && matches!(self.text[b], b'\r' | b'\n') {
            b += 1;
        }
        self.newlines.partition_point(|&p| p < b) as u64 + 1
    }
}

/// The spelling kept for an arm label: labels that differ only in case or
/// surrounding space are the same arm.
fn arm_key(label: &str) -> String {
    label.trim().to_lowercase()
}

/// Days from 1970-01-01 to `d`, the same origin as timestamps' day numbers.
fn date_number(d: Date) -> f64 {
    crate::trial::calendar::days_between(Date::constant(1970, 1, 1), d) as f64
}

/// Reads the CSV text. `arm_index` maps an arm label to an arm index, or
/// `None` to collect labels as they come (no protocol).
pub fn prepare(
    text: &str,
    columns: &Columns,
    as_treated: bool,
    known_arms: Option<&[String]>,
    comparator: &str,
    aggregation: Aggregation,
) -> Result<Prepared, AnalyzeError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| AnalyzeError::File(format!("cannot read the header line: {e}")))?
        .iter()
        .map(str::to_string)
        .collect();
    let find = |wanted: &Option<String>,
                defaults: &[&str],
                what: &str|
     -> Result<usize, AnalyzeError> {
        match wanted {
            Some(name) => headers.iter().position(|h| h == name).ok_or_else(|| {
                AnalyzeError::File(format!("no column {} for the {what}; the columns are {}", excerpt(name), excerpt(&headers.join(", "))))
            }),
            None => headers
                .iter()
                .position(|h| defaults.iter().any(|d| h.eq_ignore_ascii_case(d)))
                .ok_or_else(|| {
                    AnalyzeError::File(format!(
                        "no {what} column (looked for {defaults:?}); name it with a flag. The columns are {}",
                        excerpt(&headers.join(", "))
                    ))
                }),
        }
    };
    let time_col = find(&columns.time, &["day", "date", "time", "timestamp"], "time")?;
    let arm_col = find(&columns.arm, &["arm"], "arm")?;
    let taken_col = match &columns.taken {
        Some(_) => Some(find(&columns.taken, &[], "arm taken")?),
        None => None,
    };
    let outcome_col = match &columns.outcome {
        Some(_) => find(&columns.outcome, &[], "outcome")?,
        None => {
            let rest: Vec<usize> = (0..headers.len())
                .filter(|&i| i != time_col && i != arm_col && Some(i) != taken_col)
                .collect();
            let named = rest
                .iter()
                .copied()
                .find(|&i| columns.stream.as_deref() == Some(headers[i].as_str()));
            match (named, rest.as_slice()) {
                (Some(i), _) => i,
                (None, [one]) => *one,
                _ => {
                    return Err(AnalyzeError::File(format!(
                        "cannot tell the outcome column among {}; name it with --outcome-col",
                        excerpt(
                            &rest
                                .iter()
                                .map(|&i| headers[i].as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    )));
                }
            }
        }
    };
    let lines = Lines::of(text);
    let mut notes = Vec::new();
    let mut errors = Vec::new();
    let mut raw: Vec<(u64, TimeValue, String, Option<f64>)> = Vec::new();
    // Arm labels merged because they differ only in case: (kept, merged).
    let mut spelled: BTreeMap<String, String> = BTreeMap::new();
    if let Some(known) = known_arms {
        for k in known {
            spelled.insert(arm_key(k), k.clone());
        }
    }
    spelled
        .entry(arm_key(comparator))
        .or_insert_with(|| comparator.to_string());
    let mut merged: std::collections::BTreeSet<(String, String)> = Default::default();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| lines.at(p.byte()));
                errors.push(format!("line {line}: {e}"));
                continue;
            }
        };
        let line = record.position().map_or(0, |p| lines.at(p.byte()));
        let cell = |i: usize| record.get(i).unwrap_or("").trim().to_string();
        let (time, mut arm, outcome) = (cell(time_col), cell(arm_col), cell(outcome_col));
        if let (true, Some(c)) = (as_treated, taken_col) {
            let taken = cell(c);
            if !taken.is_empty() {
                arm = taken;
            }
        }
        let tv = match parse_time(&time, columns.date_order) {
            Ok(tv) => tv,
            Err(TimeProblem::Ambiguous) => {
                // One answer for the whole file, not one line a row.
                return Err(AnalyzeError::File(format!(
                    "line {line}: the date {} could be day/month or month/day: pass --date-order dmy or --date-order mdy (or write dates as YYYY-MM-DD)",
                    excerpt(&time)
                )));
            }
            Err(TimeProblem::Unreadable) => {
                errors.push(format!(
                    "line {line}: {} {} is not a day number, a YYYY-MM-DD (or, with --date-order, dd/mm/yyyy) date or an RFC 3339 timestamp",
                    excerpt(&headers[time_col]),
                    excerpt(&time)
                ));
                continue;
            }
        };
        if arm.is_empty() {
            errors.push(format!("line {line}: the arm is empty"));
            continue;
        }
        // Labels that differ only in case are one arm, spelled as first seen
        // (the protocol's key, or the comparator as given, first).
        let kept = spelled
            .entry(arm_key(&arm))
            .or_insert_with(|| arm.clone())
            .clone();
        if kept != arm {
            merged.insert((kept.clone(), arm.clone()));
            arm = kept;
        }
        if let Some(known) = known_arms
            && !known.iter().any(|k| k == &arm)
        {
            errors.push(format!(
                "line {line}: arm {} is not in the protocol (arms: {known:?})",
                excerpt(&arm)
            ));
            continue;
        }
        let y = if outcome.is_empty() {
            None
        } else {
            match outcome.parse::<f64>() {
                Ok(v) if v.is_finite() => Some(v),
                _ => {
                    errors.push(format!(
                        "line {line}: outcome {} is not a number",
                        excerpt(&outcome)
                    ));
                    continue;
                }
            }
        };
        raw.push((line, tv, arm, y));
    }
    if !errors.is_empty() {
        return Err(AnalyzeError::Rows(errors));
    }
    for (kept, other) in &merged {
        notes.push(format!(
            "arm labels {} and {} differ only in case: read as one arm, {}",
            excerpt(kept),
            excerpt(other),
            excerpt(kept)
        ));
    }
    if raw.is_empty() {
        return Err(AnalyzeError::File("the file has no data rows".into()));
    }
    // All rows must use one kind of time value.
    let kinds: std::collections::BTreeSet<u8> = raw
        .iter()
        .map(|r| match r.1 {
            TimeValue::Day(_) => 0,
            TimeValue::Date(_) => 1,
            TimeValue::Instant(_) => 2,
        })
        .collect();
    if kinds.len() > 1 {
        return Err(AnalyzeError::File(
            "the time column mixes day numbers, dates and timestamps; use one kind".into(),
        ));
    }
    // Days since the first day's start; day numbers and dates are taken at midday.
    let first_day = raw
        .iter()
        .map(|r| match &r.1 {
            TimeValue::Day(d) => d.floor(),
            TimeValue::Date(d) => date_number(*d),
            TimeValue::Instant(ts) => (ts.as_second() as f64 / 86400.0).floor(),
        })
        .fold(f64::INFINITY, f64::min);
    let mut rows: Vec<Row> = raw
        .into_iter()
        .map(|(line, tv, arm, y)| {
            let t = match tv {
                TimeValue::Day(d) if d.fract() == 0.0 => d - first_day + 0.5,
                TimeValue::Day(d) => d - first_day,
                TimeValue::Date(d) => date_number(d) - first_day + 0.5,
                TimeValue::Instant(ts) => ts.as_second() as f64 / 86400.0 - first_day,
            };
            Row { line, t, arm, y }
        })
        .collect();
    rows.sort_by(|a, b| a.t.total_cmp(&b.t).then(a.line.cmp(&b.line)));
    let n_rows = rows.len();
    // Arm indices: the protocol's order, else order of first appearance with the comparator first.
    let arm_keys: Vec<String> = match known_arms {
        Some(k) => k.to_vec(),
        None => {
            let mut keys = vec![comparator.to_string()];
            for r in &rows {
                if !keys.contains(&r.arm) {
                    keys.push(r.arm.clone());
                }
            }
            keys
        }
    };
    if !rows.iter().any(|r| r.arm == comparator) {
        return Err(AnalyzeError::File(format!(
            "the comparator {comparator:?} never appears in the arm column"
        )));
    }
    let index = |a: &str| arm_keys.iter().position(|k| k == a).unwrap_or(0);
    // The arm path: a switch at the start of the day of the first row with a new arm.
    let mut starts = vec![0.0];
    let mut path_arms = vec![index(&rows[0].arm)];
    let mut conflicts = Vec::new();
    let mut day_arm: BTreeMap<i64, (String, u64)> = BTreeMap::new();
    for r in &rows {
        let day = r.t.floor() as i64;
        if let Some((a, l)) = day_arm.get(&day)
            && a != &r.arm
        {
            conflicts.push(format!(
                "line {}: arm {:?} on a day that line {l} gives arm {a:?}",
                r.line, r.arm
            ));
        }
        day_arm.entry(day).or_insert((r.arm.clone(), r.line));
        let arm = index(&r.arm);
        if arm != *path_arms.last().unwrap_or(&arm) {
            starts.push(r.t.floor());
            path_arms.push(arm);
        }
    }
    if !conflicts.is_empty() {
        return Err(AnalyzeError::Rows(conflicts));
    }
    // Aggregate observations per day unless every observation is kept.
    let mut t = Vec::new();
    let mut y = Vec::new();
    if aggregation == Aggregation::All {
        for r in &rows {
            if let Some(v) = r.y {
                t.push(r.t);
                y.push(v);
            }
        }
    } else {
        let mut by_day: BTreeMap<i64, Vec<(f64, f64)>> = BTreeMap::new();
        for r in &rows {
            if let Some(v) = r.y {
                by_day.entry(r.t.floor() as i64).or_default().push((r.t, v));
            }
        }
        let repeated = by_day.values().filter(|v| v.len() > 1).count();
        if repeated > 0 {
            notes.push(format!(
                "{repeated} day(s) have more than one value: each day's values were combined into one (their {}; a protocol's aggregation sets how)",
                format!("{aggregation:?}").to_lowercase()
            ));
        }
        for (_, vals) in by_day {
            let values: Vec<f64> = vals.iter().map(|v| v.1).collect();
            let value = aggregation.of(&values);
            t.push(vals.last().map_or(0.0, |v| v.0));
            y.push(value);
        }
    }
    let comparator_index = index(comparator);
    Ok(Prepared {
        series: Series {
            t,
            y,
            path: ArmPath {
                starts,
                arms: path_arms,
            },
            n_arms: arm_keys.len(),
            comparator: comparator_index,
        },
        arm_keys,
        rows: n_rows,
        columns: [
            headers[time_col].clone(),
            headers[arm_col].clone(),
            headers[outcome_col].clone(),
        ],
        notes,
    })
}

/// The comparator when none is named: a label that says so, if exactly one does.
pub fn guess_comparator(text: &str, arm_column: Option<&str>) -> Option<String> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader.headers().ok()?.clone();
    let col = headers
        .iter()
        .position(|h| arm_column.map_or(h.eq_ignore_ascii_case("arm"), |a| h == a))?;
    let mut found = std::collections::BTreeSet::new();
    for r in reader.records().flatten() {
        let a = r.get(col).unwrap_or("").trim().to_string();
        let l = a.to_lowercase();
        if [
            "control",
            "placebo",
            "none",
            "baseline",
            "comparator",
            "usual",
        ]
        .contains(&l.as_str())
        {
            found.insert(a);
        }
    }
    (found.len() == 1).then(|| found.into_iter().next().unwrap_or_default())
}

/// Everything `nof1d analyze` was asked.
#[derive(Debug, Clone)]
pub struct Request {
    /// The outcome (from the protocol, or built from flags).
    pub outcome: Outcome,
    /// Arm keys when a protocol names them.
    pub known_arms: Option<Vec<String>>,
    /// The comparator's label.
    pub comparator: String,
    /// Columns.
    pub columns: Columns,
    /// Grid or MCMC.
    pub method: crate::engine::fit::Method,
    /// Seed.
    pub seed: u64,
    /// Where the fit's evaluations run.
    pub backend: crate::engine::gpu::BackendChoice,
    /// What the command line assumed (a default the person did not set).
    pub assumed: Vec<String>,
}

/// The JSON `nof1d analyze --json` prints: the fit plus what was read.
#[derive(Debug, serde::Serialize)]
pub struct Analysis {
    /// The answer in words, one entry an arm: the effect in the outcome's
    /// units and direction, and how sure the data are that it beats the MID.
    pub answer: Vec<String>,
    /// Input facts.
    pub input: InputSummary,
    /// The fit (effects, hyperparameters, diagnostics, priors, ...): intention to treat.
    #[serde(flatten)]
    pub fit: crate::engine::fit::FitReport,
    /// The same fit by the arm actually taken, when `--taken-col` was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_treated: Option<crate::engine::fit::FitReport>,
    /// Where the fit ran, and why there (`--backend`).
    pub backend: String,
    /// What was assumed, merged or combined on the way: shown first.
    pub notes: Vec<String>,
}

/// What was read from the CSV.
#[derive(Debug, serde::Serialize)]
pub struct InputSummary {
    /// Data rows read.
    pub rows: usize,
    /// Observations after aggregation.
    pub observations: usize,
    /// Time, arm and outcome column names.
    pub columns: [String; 3],
    /// Arm labels, comparator first unless a protocol orders them.
    pub arms: Vec<String>,
    /// The comparator.
    pub comparator: String,
    /// Direction (`higher` or `lower` is better).
    pub direction: crate::engine::spec::Direction,
    /// The MID used.
    pub mid: f64,
}

/// Reads, fits and summarises.
pub fn analyze(text: &str, req: &Request) -> Result<Analysis, AnalyzeError> {
    let mut backend_line = String::new();
    let mut run =
        |as_treated: bool| -> Result<(Prepared, crate::engine::fit::FitReport), AnalyzeError> {
            let prepared = prepare(
                text,
                &req.columns,
                as_treated,
                req.known_arms.as_deref(),
                &req.comparator,
                req.outcome.aggregation,
            )?;
            let model = req.outcome.model_spec();
            let chosen = crate::engine::gpu::choose_for(
                req.backend,
                crate::engine::gpu::Workload::Fit {
                    observations: prepared.series.t.len(),
                },
                req.outcome.fits_by_filter(),
            )?;
            backend_line = chosen.line.clone();
            let spec = crate::engine::fit::FitSpec {
                model: &model,
                arm_keys: prepared.arm_keys.clone(),
                run_in: None,
                method: req.method,
                seed: req.seed,
                mcmc: match req.method {
                    crate::engine::fit::Method::Nuts => {
                        crate::engine::inference::McmcOptions::nuts_default()
                    }
                    _ => crate::engine::inference::McmcOptions::default(),
                },
                grid: crate::engine::inference::GridOptions::default(),
                dropped: Vec::new(),
                path: true,
                intervals: true,
                device: chosen
                    .device
                    .as_ref()
                    .map(crate::engine::gpu::SharedDevice::get),
            };
            let fit = crate::engine::fit::fit(&prepared.series, &spec)?;
            Ok((prepared, fit))
        };
    // Intention to treat is the primary analysis; as treated beside it when
    // the CSV says which arm was actually taken (statistics.md §1).
    let (prepared, fit) = run(false)?;
    let as_treated = match req.columns.taken {
        Some(_) => Some(run(true)?.1),
        None => None,
    };
    let mut notes = req.assumed.clone();
    notes.extend(prepared.notes.iter().cloned());
    let o = &req.outcome;
    // A bare CSV's outcome is named by its column.
    let outcome = if req.known_arms.is_some() {
        o.stream.clone()
    } else {
        prepared.columns[2].clone()
    };
    let subject = crate::trial::standing::Subject {
        outcome: &outcome,
        unit: &o.unit,
        family: o.family,
        direction: o.direction,
        goal: crate::trial::standing::goal(o.family, o.mid, &o.unit, o.mid_natural),
        comparator: &req.comparator,
    };
    let arms: Vec<crate::trial::standing::ArmEffect<'_>> = fit
        .effects
        .iter()
        .enumerate()
        .map(|(arm, effect)| crate::trial::standing::ArmEffect {
            arm,
            label: effect.arm.clone(),
            effect,
        })
        .collect();
    let answer =
        crate::trial::standing::sentences(&subject, &arms, &crate::trial::standing::Stage::Data);
    Ok(Analysis {
        answer,
        notes,
        as_treated,
        input: InputSummary {
            rows: prepared.rows,
            observations: prepared.series.y.len(),
            columns: prepared.columns,
            arms: prepared.arm_keys,
            comparator: req.comparator.clone(),
            direction: req.outcome.direction,
            mid: req.outcome.mid,
        },
        fit,
        backend: backend_line,
    })
}

/// One effect's line of the table.
fn effect_row(out: &mut String, e: &crate::engine::inference::EffectSummary) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "{:<20} {:>8.3} {:>7.3} {:>20} {:>17.3} {:>8.3}",
        e.arm,
        e.mean,
        e.sd,
        format!("[{:.3}, {:.3}]", e.ci90[0], e.ci90[1]),
        e.p_better_by_mid,
        e.p_best
    );
}

/// One effect in the person's units: the ratio and the difference, each
/// with its 90% interval.
fn natural_row(out: &mut String, arm: &str, n: &crate::engine::natural::NaturalEffect) {
    use std::fmt::Write;
    let _ = writeln!(out, "  {arm}: {}", n.describe());
}

/// What a person reads: the answer in words first (with a warning before
/// it where the fit did not converge), then what was assumed or merged,
/// the table; the fit's internals (hyperparameters, diagnostics, priors)
/// only with `verbose`.
pub fn render(a: &Analysis, verbose: bool) -> String {
    use std::fmt::Write;
    let f = &a.fit;
    let dir = match a.input.direction {
        crate::engine::spec::Direction::Higher => "higher is better",
        crate::engine::spec::Direction::Lower => "lower is better",
    };
    let mut out = String::new();
    if !f.diagnostics.converged {
        let _ = writeln!(
            out,
            "warning: the fit did NOT converge, so the answer below is not to be acted on (details with --verbose)"
        );
    }
    for sentence in &a.answer {
        let _ = writeln!(out, "{sentence}");
    }
    let _ = writeln!(out);
    for note in &a.notes {
        let _ = writeln!(out, "note: {note}");
    }
    let _ = writeln!(
        out,
        "{} observations ({} rows; columns {}, {}, {}), {} arms, comparator {:?}, {:?} family, {dir}, MID {}",
        a.input.observations,
        a.input.rows,
        a.input.columns[0],
        a.input.columns[1],
        a.input.columns[2],
        a.input.arms.len(),
        a.input.comparator,
        f.family,
        a.input.mid
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<20} {:>8} {:>7} {:>20} {:>17} {:>8}",
        "effect vs comparator", "mean", "sd", "90% interval", "P(better by MID)", "P(best)"
    );
    for e in &f.effects {
        effect_row(&mut out, e);
    }
    let _ = writeln!(
        out,
        "{:<20} {:>8} {:>7} {:>20} {:>17} {:>8.3}",
        a.input.comparator, "", "", "", "", f.p_best_comparator
    );
    for e in &f.effects {
        if let Some(n) = &e.natural {
            natural_row(&mut out, &e.arm, n);
        }
    }
    if let Some(at) = &a.as_treated {
        let _ = writeln!(out, "\nas treated (by the arm actually taken):");
        for e in &at.effects {
            effect_row(&mut out, e);
        }
        if !at.diagnostics.converged {
            let _ = writeln!(out, "  (as-treated fit NOT converged)");
        }
    }
    if !verbose {
        let _ = writeln!(
            out,
            "\n(the fit's hyperparameters, diagnostics and priors: --verbose)"
        );
        return out;
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "hyperparameters (posterior median [90% interval]):");
    for h in &f.hyperparameters {
        let _ = writeln!(
            out,
            "  {:<16} {:>8.3} [{:.3}, {:.3}]",
            h.name, h.median, h.ci90[0], h.ci90[1]
        );
    }
    let d = &f.diagnostics;
    let _ = writeln!(out);
    let verdict = if d.converged {
        "converged"
    } else {
        "NOT converged: do not act on it"
    };
    let _ = writeln!(
        out,
        "fit: {:?}, {verdict}, {:.1} ms, {} evaluations",
        d.method, d.wall_ms, d.evaluations
    );
    if let (Some(r), None) = (&d.reason, d.grid_error_mean) {
        let _ = writeln!(out, "  {r}");
    }
    if let (Some(m), Some(s), Some(p)) = (d.grid_error_mean, d.grid_error_sd, d.grid_error_prob) {
        let _ = writeln!(
            out,
            "  grid error check: means {m:.4} sd, sds {:.2}%, probabilities {p:.4}{}",
            100.0 * s,
            if d.mc_error.is_some() {
                " (these include the draws' own noise, allowed up to 3 Monte Carlo sds)"
            } else {
                ""
            }
        );
    }
    if let Some(ess) = d.importance_ess {
        let _ = writeln!(
            out,
            "  importance weights: ESS {:.0}% of the draws (posterior average)",
            100.0 * ess
        );
    }
    if let Some(mc) = &d.mc_error {
        let _ = writeln!(
            out,
            "  Monte Carlo error of the importance draws: means {:.3} sd, sds {:.1}%, probabilities {:.3}",
            mc.mean,
            100.0 * mc.sd,
            mc.prob
        );
        if let (true, Some(k)) = (mc.heavy_tailed(), mc.pareto_k) {
            let _ = writeln!(
                out,
                "  warning: at some hyperparameter values the importance weights are heavy-tailed (Pareto k {k:.2} > {}); the error above may be optimistic",
                crate::engine::mc_error::PARETO_K_MAX
            );
        }
    }
    if let Some(div) = &d.divergences {
        let _ = writeln!(
            out,
            "  divergent transitions per chain: {}",
            div.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let (Some(r), Some(e)) = (&d.rhat, &d.ess_bulk) {
        for (k, v) in r {
            let _ = writeln!(
                out,
                "  {k:<20} R-hat {v:.4}  bulk ESS {:.0}",
                e.get(k).copied().unwrap_or(f64::NAN)
            );
        }
    }
    let p = &f.priors;
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "priors (S = {:.4}, from {:?}):",
        p.scale, p.scale_source
    );
    let _ = writeln!(
        out,
        "  baseline mu ~ Normal({:.3}, {:.3})",
        p.baseline[0], p.baseline[1]
    );
    for (k, v) in &p.effects {
        let _ = writeln!(out, "  effect {k} ~ Normal({:.3}, {:.3})", v[0], v[1]);
    }
    let h = &p.hyper;
    let _ = writeln!(
        out,
        "  drift correlation time ~ LogNormal(ln {:.3}, {:.3}) days",
        h.drift_time_median_days, h.drift_time_log_sd
    );
    let _ = writeln!(out, "  drift sd ~ HalfNormal({:.3})", h.drift_sd_scale);
    let _ = writeln!(
        out,
        "  onset/washout half-life ~ LogNormal(ln {:.3}, {:.3}) days",
        h.half_life_median_days, h.half_life_log_sd
    );
    // The fourth hyperparameter: the gaussian noise sd (or Student-t
    // scale), beta's precision;
    // the other families have none.
    match f.family {
        crate::engine::spec::Family::Gaussian
            if f.noise == crate::engine::spec::NoiseModel::StudentT =>
        {
            let _ = writeln!(
                out,
                "  noise scale ~ HalfNormal({:.3}); errors Student-t, {} degrees of freedom",
                h.noise_sd_scale,
                crate::engine::spec::STUDENT_T_DF
            );
        }
        crate::engine::spec::Family::Gaussian => {
            let _ = writeln!(out, "  noise sd ~ HalfNormal({:.3})", h.noise_sd_scale);
        }
        crate::engine::spec::Family::Beta => {
            let _ = writeln!(
                out,
                "  precision ~ LogNormal(ln {:.3}, {:.3})",
                h.precision_median, h.precision_log_sd
            );
        }
        _ => {}
    }
    out
}

/// A plain outcome for CSV analysis without a protocol.
pub fn ad_hoc_outcome(
    family: crate::engine::spec::Family,
    direction: crate::engine::spec::Direction,
    mid: f64,
) -> Outcome {
    Outcome {
        stream: "outcome".into(),
        unit: String::new(),
        aggregation: Aggregation::Mean,
        family,
        direction,
        mid,
        mid_natural: None,
        scale: None,
        trials: None,
        noise: Default::default(),
        self_report: None,
        priors: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_arms_missing_and_aggregation() {
        let csv = "date,arm,pain\n2026-01-01,placebo,5\n2026-01-02,placebo,\n2026-01-03,mg,4\n2026-01-03,mg,2\n2026-01-05,placebo,6\n";
        let p = prepare(
            csv,
            &Columns::default(),
            false,
            None,
            "placebo",
            Aggregation::Mean,
        )
        .unwrap();
        assert_eq!(p.arm_keys, vec!["placebo", "mg"]);
        assert_eq!(p.series.y, vec![5.0, 3.0, 6.0]);
        assert_eq!(p.series.t, vec![0.5, 2.5, 4.5]);
        assert_eq!(p.series.path.starts, vec![0.0, 2.0, 4.0]);
        assert_eq!(p.series.path.arms, vec![0, 1, 0]);
        assert_eq!(p.columns, ["date".to_string(), "arm".into(), "pain".into()]);
    }

    #[test]
    fn as_treated_uses_the_taken_arm() {
        let csv = "day,arm,taken,y\n0,a,,1\n1,b,a,2\n2,b,,3\n";
        let cols = Columns {
            taken: Some("taken".into()),
            ..Columns::default()
        };
        let itt = prepare(csv, &cols, false, None, "a", Aggregation::Mean).unwrap();
        let at = prepare(csv, &cols, true, None, "a", Aggregation::Mean).unwrap();
        assert_eq!(itt.series.path.starts, vec![0.0, 1.0]);
        assert_eq!(at.series.path.starts, vec![0.0, 2.0]);
        assert_eq!(itt.columns[2], "y", "the taken column is not the outcome");
    }

    /// The error `prepare` gives for `csv` with comparator "a".
    fn prepare_err(csv: &str, known: Option<&[String]>) -> String {
        prepare(
            csv,
            &Columns::default(),
            false,
            known,
            "a",
            Aggregation::Mean,
        )
        .unwrap_err()
        .to_string()
    }

    /// Lines are counted the same in CRLF and LF files.
    #[test]
    fn crlf_files_report_the_right_line() {
        for csv in [
            "day,arm,y\n1,a,3\n2,a,x\n3,b,4\n",
            "day,arm,y\r\n1,a,3\r\n2,a,x\r\n3,b,4\r\n",
        ] {
            let e = prepare_err(csv, None);
            assert!(e.contains("line 3: outcome \"x\""), "{e}");
        }
    }

    /// A slashed date is refused once, saying how to read it; with the
    /// order given it is read, day first or month first.
    #[test]
    fn slashed_dates_need_their_order() {
        let csv = "date,arm,y\n03/04/2026,a,3\n04/04/2026,a,4\n05/04/2026,b,5\n";
        let e = prepare_err(csv, None);
        assert!(e.contains("--date-order dmy"), "{e}");
        assert_eq!(e.lines().count(), 1, "one line, not one a row: {e}");
        let read = |order| {
            let cols = Columns {
                date_order: Some(order),
                ..Columns::default()
            };
            prepare(csv, &cols, false, None, "a", Aggregation::Mean).unwrap()
        };
        // 3, 4, 5 April: a day apart; 3 March, 4 April...: a month apart.
        let dmy = read(DateOrder::DayMonth);
        assert_eq!(dmy.series.t, vec![0.5, 1.5, 2.5]);
        let mdy = read(DateOrder::MonthDay);
        assert!(mdy.series.t[1] - mdy.series.t[0] > 28.0);
        assert!("ymd".parse::<DateOrder>().is_err());
    }

    /// "Magnesium" and "magnesium" are one arm, with a note; so is a label
    /// matching a protocol key but for case.
    #[test]
    fn arm_labels_differing_in_case_are_one_arm() {
        let csv = "day,arm,y\n1,a,3\n2,Magnesium,4\n3,magnesium,5\n4,A,2\n";
        let p = prepare(
            csv,
            &Columns::default(),
            false,
            None,
            "a",
            Aggregation::Mean,
        )
        .unwrap();
        assert_eq!(p.arm_keys, vec!["a".to_string(), "Magnesium".into()]);
        assert_eq!(p.notes.len(), 2, "{:?}", p.notes);
        assert!(
            p.notes.iter().any(|n| n.contains("\"magnesium\"")),
            "{:?}",
            p.notes
        );
        let known = ["a".to_string(), "magnesium".into()];
        let p = prepare(
            csv,
            &Columns::default(),
            false,
            Some(&known),
            "a",
            Aggregation::Mean,
        )
        .unwrap();
        assert_eq!(p.arm_keys, known.to_vec());
        assert_eq!(p.series.path.arms, vec![0, 1, 0]);
    }

    /// Days with several values are combined and said so.
    #[test]
    fn repeated_days_are_noted() {
        let csv = "day,arm,y\n1,a,3\n1,a,5\n2,b,4\n2,b,6\n3,a,1\n";
        let p = prepare(
            csv,
            &Columns::default(),
            false,
            None,
            "a",
            Aggregation::Mean,
        )
        .unwrap();
        assert_eq!(p.series.y, vec![4.0, 5.0, 1.0]);
        assert!(
            p.notes
                .iter()
                .any(|n| n.starts_with("2 day(s) have more than one value")),
            "{:?}",
            p.notes
        );
        let single = "day,arm,y\n1,a,3\n2,b,4\n";
        let p = prepare(
            single,
            &Columns::default(),
            false,
            None,
            "a",
            Aggregation::Mean,
        )
        .unwrap();
        assert!(p.notes.is_empty());
    }

    #[test]
    fn bad_rows_are_reported_by_line() {
        let csv = "day,arm,score\n1,a,3\n2,a,three\nx,b,4\n4,,5\n";
        let e = prepare_err(csv, None);
        assert!(e.contains("3 bad row(s)"), "{e}");
        assert!(
            e.contains("line 3: outcome \"three\" is not a number"),
            "{e}"
        );
        assert!(e.contains("line 4: \"day\" \"x\""), "{e}");
        assert!(e.contains("line 5: the arm is empty"), "{e}");
    }

    #[test]
    fn unknown_arm_and_ambiguous_columns() {
        let csv = "day,arm,score\n1,a,3\n2,c,4\n";
        let known = ["a".to_string(), "b".to_string()];
        let e = prepare_err(csv, Some(&known[..]));
        assert!(
            e.contains("line 3: arm \"c\" is not in the protocol"),
            "{e}"
        );
        let csv = "day,arm,score,mood\n1,a,3,4\n";
        let e = prepare_err(csv, None);
        assert!(e.contains("--outcome-col"), "{e}");
        assert_eq!(
            guess_comparator("day,arm,y\n1,Placebo,2\n2,mg,3\n", None).as_deref(),
            Some("Placebo")
        );
        assert_eq!(guess_comparator("day,arm,y\n1,A,2\n2,B,3\n", None), None);
    }
}

//! CSV and JSON files described by a small mapping in the config: which
//! column holds the time (and in which zone and format), which columns are
//! streams and in which unit. The way in for everything without a reader of
//! its own: self-tracking spreadsheets and other apps' exports.
//!
//! Each record's identity is the app's own id column where the mapping names
//! one, else the stream and the time (with its occurrence in the file, so
//! two entries at one time are both kept): importing the same file again,
//! or a later export that overlaps it, updates rather than doubles. Pure:
//! the importer (`ingest`) stores what this reads.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use jiff::Timestamp;
use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, Offset, TimeZone};
use serde::Deserialize;
use serde_json::Value;

use crate::service::store::NewObservation;
use crate::service::streams::StreamRules;
use crate::service::units::Conversion;

/// A file format a mapping reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Delimited text with a header row.
    Csv,
    /// A JSON array of objects (or one inside an object, at `records`).
    Json,
}

/// One mapping as written in the config (`[[participants.imports]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// The source its records belong to, e.g. `bearable` (letters, digits,
    /// `-`, `_`).
    pub name: String,
    /// Which files: a file-name pattern where `*` stands for anything,
    /// matched case-insensitively, e.g. `bearable-export*.csv`.
    pub files: String,
    /// `csv` or `json`; default from the file's extension.
    pub format: Option<Format>,
    /// The column (CSV header, JSON field; `a.b` for a nested one) with the
    /// time or the day.
    pub time: String,
    /// How that column is written, as strftime (`%d/%m/%Y`, `%m/%d/%Y
    /// %H:%M`), or `unix` / `unix_ms`. Default: ISO 8601 (`2026-03-01`,
    /// `2026-03-01 08:30`, `2026-03-01T08:30:00+01:00`).
    pub time_format: Option<String>,
    /// The IANA zone of times written without an offset; default the
    /// participant's.
    pub time_zone: Option<String>,
    /// A column with the end of an interval sample (same format).
    pub end: Option<String>,
    /// A column with the app's own record id.
    pub id: Option<String>,
    /// A column naming the device or app that measured the value.
    pub origin: Option<String>,
    /// JSON only: the dotted path to the array of records (`data.entries`);
    /// default the top level.
    pub records: Option<String>,
    /// CSV only: the delimiter (one character); default found from the
    /// header (`,`, `;` or tab).
    pub delimiter: Option<String>,
    /// Numbers written with a decimal comma (`72,5`).
    #[serde(default)]
    pub decimal_comma: bool,
    /// The columns that are streams.
    pub columns: Vec<ColumnConfig>,
}

/// One stream column of a mapping.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    /// The column (CSV header, JSON field or dotted path).
    pub column: String,
    /// The stream its values go to.
    pub stream: String,
    /// The unit the values are written in (`kg`, `lb`, `min`, `h`, `score`).
    pub unit: String,
}

/// How the time column is read.
#[derive(Debug, Clone, PartialEq)]
enum TimeFormat {
    Iso,
    Strftime(String),
    UnixSeconds,
    UnixMillis,
}

/// A checked mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    /// The source name.
    pub name: String,
    pattern: String,
    format: Option<Format>,
    time: String,
    time_format: TimeFormat,
    time_zone: Option<TimeZone>,
    end: Option<String>,
    id: Option<String>,
    origin: Option<String>,
    records: Option<String>,
    delimiter: Option<u8>,
    decimal_comma: bool,
    columns: Vec<ColumnConfig>,
}

impl MappingConfig {
    /// Checks the mapping; the message names the participant, the mapping
    /// and the setting.
    pub fn resolve(&self, participant: &str) -> Result<Mapping, String> {
        let at = |what: &str| format!("participant {participant}: imports {:?}: {what}", self.name);
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(at("name: use letters, digits, '-' or '_'"));
        }
        if self.files.trim().is_empty() || self.files.contains('/') {
            return Err(at("files: a file-name pattern such as \"mood-*.csv\""));
        }
        if self.time.trim().is_empty() {
            return Err(at("time: name the column with the time or the day"));
        }
        if self.columns.is_empty() {
            return Err(at("columns: at least one column → stream"));
        }
        let mut streams = std::collections::BTreeSet::new();
        for c in &self.columns {
            if c.column.trim().is_empty() || c.stream.trim().is_empty() || c.unit.trim().is_empty()
            {
                return Err(at("columns: each needs column, stream and unit"));
            }
            if !c
                .stream
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
            {
                return Err(at(&format!(
                    "columns: stream {:?}: use letters, digits, '-' or '_'",
                    c.stream
                )));
            }
            if !streams.insert(c.stream.as_str()) {
                return Err(at(&format!(
                    "columns: stream {:?} is fed by two columns",
                    c.stream
                )));
            }
        }
        let time_format = match self.time_format.as_deref() {
            None | Some("iso") => TimeFormat::Iso,
            Some("unix") => TimeFormat::UnixSeconds,
            Some("unix_ms") => TimeFormat::UnixMillis,
            Some(f) if f.contains('%') => TimeFormat::Strftime(f.to_string()),
            Some(f) => {
                return Err(at(&format!(
                    "time_format {f:?}: strftime such as \"%d/%m/%Y %H:%M\", or \"unix\" or \"unix_ms\""
                )));
            }
        };
        let time_zone = match &self.time_zone {
            None => None,
            Some(z) => Some(
                TimeZone::get(z)
                    .map_err(|e| at(&format!("time_zone {z:?} is not an IANA zone: {e}")))?,
            ),
        };
        let delimiter = match self.delimiter.as_deref() {
            None => None,
            Some("\\t" | "tab") => Some(b'\t'),
            Some(d) if d.len() == 1 => Some(d.as_bytes()[0]),
            Some(d) => return Err(at(&format!("delimiter {d:?}: one character"))),
        };
        if self.records.is_some() && self.format == Some(Format::Csv) {
            return Err(at("records is for JSON files"));
        }
        Ok(Mapping {
            name: self.name.clone(),
            pattern: self.files.to_lowercase(),
            format: self.format,
            time: self.time.clone(),
            time_format,
            time_zone,
            end: self.end.clone(),
            id: self.id.clone(),
            origin: self.origin.clone(),
            records: self.records.clone(),
            delimiter,
            decimal_comma: self.decimal_comma,
            columns: self.columns.clone(),
        })
    }
}

impl Mapping {
    /// Whether this mapping reads the file called `file_name`.
    pub fn matches(&self, file_name: &str) -> bool {
        glob_match(&self.pattern, &file_name.to_lowercase())
    }

    /// The file pattern, as configured (lowercased).
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The format of `file_name`: the mapping's, else its extension's.
    pub fn format_of(&self, file_name: &str) -> Option<Format> {
        self.format.or_else(|| {
            let lower = file_name.to_lowercase();
            if lower.ends_with(".json") {
                Some(Format::Json)
            } else if [".csv", ".tsv", ".txt"].iter().any(|e| lower.ends_with(e)) {
                Some(Format::Csv)
            } else {
                None
            }
        })
    }

    /// The streams this mapping writes, with the unit each column is in.
    pub fn streams(&self) -> impl Iterator<Item = (&str, &str)> {
        self.columns
            .iter()
            .map(|c| (c.stream.as_str(), c.unit.as_str()))
    }
}

/// `*` matches any run of characters; everything else itself.
fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// Why a mapped file was not read at all (rows that cannot be read are
/// refused one by one instead).
#[derive(Debug, thiserror::Error)]
pub enum MappedError {
    /// A column the mapping names is not in the file.
    #[error(
        "mapping {mapping:?}: the file has no column {column:?} (it has: {present}); fix the name in the config's [[participants.imports]]"
    )]
    MissingColumn {
        /// The mapping.
        mapping: String,
        /// The column it names.
        column: String,
        /// The columns there are.
        present: String,
    },
    /// The file is not the format the mapping expects.
    #[error("mapping {mapping:?}: {message}")]
    Unreadable {
        /// The mapping.
        mapping: String,
        /// What went wrong.
        message: String,
    },
    /// A column's unit cannot go into its stream's unit.
    #[error("mapping {mapping:?}, column {column:?} → stream {stream:?}: {source}")]
    Unit {
        /// The mapping.
        mapping: String,
        /// The column.
        column: String,
        /// The stream.
        stream: String,
        /// Why.
        source: crate::service::units::UnitMismatch,
    },
}

/// What a mapped file gave beyond its observations.
#[derive(Debug, Default)]
pub struct MappedReport {
    /// Rows read.
    pub rows: usize,
    /// Values refused, by reason.
    pub refused: BTreeMap<String, usize>,
    /// Empty cells (`""`, `NA`, `-`, `null`): skipped, not refused.
    pub empty: usize,
    /// Local times in a DST change, read by the usual rule (the earlier of
    /// a repeated hour; a skipped hour moved forward).
    pub dst_ambiguous: usize,
    /// Values converted from the column's unit to the stream's.
    pub converted: BTreeMap<String, String>,
}

/// How each column's values get into its stream: the stream's stored unit
/// (`stream_units`, by stream key) where it exists, else the column's own.
fn conversions(
    mapping: &Mapping,
    stream_units: &HashMap<String, String>,
) -> Result<Vec<(Conversion, String)>, MappedError> {
    mapping
        .columns
        .iter()
        .map(|c| match stream_units.get(&c.stream) {
            Some(unit) => Conversion::between(&c.unit, unit)
                .map(|conv| (conv, unit.clone()))
                .map_err(|source| MappedError::Unit {
                    mapping: mapping.name.clone(),
                    column: c.column.clone(),
                    stream: c.stream.clone(),
                    source,
                }),
            None => Ok((Conversion::SAME, c.unit.clone())),
        })
        .collect()
}

/// A row as text cells by column name (CSV) or JSON values (JSON).
trait Row {
    /// The cell of `column` as text; `None` where absent or empty.
    fn text(&self, column: &str) -> Option<String>;
    /// The cell of `column` as a number, where the file wrote one as such.
    fn number(&self, column: &str) -> Option<f64>;
}

struct CsvRow<'a> {
    index: &'a HashMap<String, usize>,
    record: &'a csv::StringRecord,
}

impl Row for CsvRow<'_> {
    fn text(&self, column: &str) -> Option<String> {
        let i = *self.index.get(column)?;
        self.record.get(i).map(|s| s.trim().to_string())
    }
    fn number(&self, _: &str) -> Option<f64> {
        None
    }
}

impl Row for Value {
    fn text(&self, column: &str) -> Option<String> {
        match json_at(self, column)? {
            Value::String(s) => Some(s.trim().to_string()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    fn number(&self, column: &str) -> Option<f64> {
        json_at(self, column)?.as_f64()
    }
}

/// The value at a dotted path (an exact key first: `"heart.rate"` may be
/// one field).
fn json_at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(x) = v.get(path) {
        return Some(x);
    }
    path.split('.').try_fold(v, |at, key| at.get(key))
}

/// Reads a file through `mapping`, handing observations to `sink` in
/// batches of `batch`. `home` is the participant's zone; `stream_units`
/// the units the participant's streams are stored in.
#[allow(clippy::too_many_arguments)]
pub fn read<E: From<MappedError>>(
    mapping: &Mapping,
    format: Format,
    input: impl Read,
    home: &TimeZone,
    rules: &StreamRules,
    stream_units: &HashMap<String, String>,
    batch: usize,
    sink: &mut dyn FnMut(&[NewObservation]) -> Result<(), E>,
) -> Result<MappedReport, E> {
    let convert = conversions(mapping, stream_units)?;
    let mut reader = Reader {
        mapping,
        zone: mapping.time_zone.clone().unwrap_or_else(|| home.clone()),
        rules,
        convert,
        seen: HashMap::new(),
        report: MappedReport::default(),
        out: Vec::with_capacity(batch.min(1 << 16)),
    };
    match format {
        Format::Csv => {
            let mut input = input;
            let mut csv = match mapping.delimiter {
                Some(d) => csv_reader(d, Box::new(input)),
                None => {
                    // Sniff the delimiter from the header line.
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while head.len() < 64 * 1024 {
                        match input.read(&mut byte) {
                            Ok(0) => break,
                            Ok(_) => {
                                head.push(byte[0]);
                                if byte[0] == b'\n' {
                                    break;
                                }
                            }
                            Err(e) => return Err(reader.unreadable(e.to_string()).into()),
                        }
                    }
                    let d = sniff_delimiter(&head);
                    csv_reader(d, Box::new(std::io::Cursor::new(head).chain(input)))
                }
            };
            let headers = csv
                .headers()
                .map_err(|e| reader.unreadable(format!("cannot read the header row: {e}")))?
                .clone();
            let index: HashMap<String, usize> = headers
                .iter()
                .enumerate()
                .map(|(i, h)| (h.trim_start_matches('\u{feff}').trim().to_string(), i))
                .collect();
            let index = reader.check_columns(index)?;
            let mut record = csv::StringRecord::new();
            loop {
                match csv.read_record(&mut record) {
                    Ok(false) => break,
                    Ok(true) => {
                        let line = record.position().map_or(0, |p| p.line());
                        reader.row(
                            &CsvRow {
                                index: &index,
                                record: &record,
                            },
                            &format!("line {line}"),
                        );
                    }
                    Err(e) => {
                        *reader
                            .report
                            .refused
                            .entry(format!("an unreadable line ({e})"))
                            .or_default() += 1;
                    }
                }
                if reader.out.len() >= batch {
                    sink(&reader.out)?;
                    reader.out.clear();
                }
            }
        }
        Format::Json => {
            let root: Value = serde_json::from_reader(input)
                .map_err(|e| reader.unreadable(format!("not JSON: {e}")))?;
            let records = match &mapping.records {
                Some(path) => json_at(&root, path).ok_or_else(|| {
                    reader.unreadable(format!("no field {path:?} (records) in the file"))
                })?,
                None => &root,
            };
            let Some(records) = records.as_array() else {
                return Err(reader
                    .unreadable(format!(
                        "the records{} are not an array of objects",
                        mapping
                            .records
                            .as_ref()
                            .map(|p| format!(" at {p:?}"))
                            .unwrap_or_default()
                    ))
                    .into());
            };
            if let Some(first) = records.iter().find(|r| r.is_object()) {
                let keys: Vec<String> = first
                    .as_object()
                    .map(|o| o.keys().cloned().collect())
                    .unwrap_or_default();
                let missing = reader.named_columns().into_iter().find(|c| {
                    json_at(first, c).is_none() && !records.iter().any(|r| json_at(r, c).is_some())
                });
                if let Some(column) = missing {
                    return Err(MappedError::MissingColumn {
                        mapping: mapping.name.clone(),
                        column,
                        present: keys.join(", "),
                    }
                    .into());
                }
            }
            for (i, record) in records.iter().enumerate() {
                if !record.is_object() {
                    *reader
                        .report
                        .refused
                        .entry("a record that is not an object".into())
                        .or_default() += 1;
                    continue;
                }
                reader.row(record, &format!("record {}", i + 1));
                if reader.out.len() >= batch {
                    sink(&reader.out)?;
                    reader.out.clear();
                }
            }
        }
    }
    if !reader.out.is_empty() {
        sink(&reader.out)?;
    }
    Ok(reader.report)
}

fn csv_reader(delimiter: u8, input: Box<dyn Read + '_>) -> csv::Reader<Box<dyn Read + '_>> {
    csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .trim(csv::Trim::None)
        .from_reader(input)
}

/// The most frequent of `,`, `;` and tab in the header line (`,` on a tie).
fn sniff_delimiter(head: &[u8]) -> u8 {
    let count = |d: u8| head.iter().filter(|&&c| c == d).count();
    [b';', b'\t'].into_iter().fold(
        b',',
        |best, d| if count(d) > count(best) { d } else { best },
    )
}

/// One file's reading state.
struct Reader<'a> {
    mapping: &'a Mapping,
    zone: TimeZone,
    rules: &'a StreamRules,
    convert: Vec<(Conversion, String)>,
    /// Occurrences of each `(stream, time)` so far, by a 64-bit hash of it
    /// (a file of millions of rows stays small in memory): the n-th of a
    /// repeated time keeps its own identity. A collision only numbers a
    /// record, the same way at every import of the file.
    seen: HashMap<u64, u32>,
    report: MappedReport,
    out: Vec<NewObservation>,
}

/// A row's time: an instant (with the offset the file gave, if any) or a day.
enum When {
    /// The instant, the offset the file gave, and the identity of the time:
    /// the instant where the file fixed it (an offset, epoch seconds), else
    /// the civil time as written, so a changed zone setting does not make
    /// a re-import new records.
    Instant(Timestamp, Option<Offset>, String),
    Day(Date),
}

impl Reader<'_> {
    fn unreadable(&self, message: String) -> MappedError {
        MappedError::Unreadable {
            mapping: self.mapping.name.clone(),
            message,
        }
    }

    fn named_columns(&self) -> Vec<String> {
        let m = self.mapping;
        let mut names = vec![m.time.clone()];
        names.extend(m.end.iter().cloned());
        names.extend(m.id.iter().cloned());
        names.extend(m.origin.iter().cloned());
        names.extend(m.columns.iter().map(|c| c.column.clone()));
        names
    }

    /// Checks that every named column is in the header (exactly, else
    /// case-insensitively, which is then added under the mapping's name).
    fn check_columns(
        &self,
        mut index: HashMap<String, usize>,
    ) -> Result<HashMap<String, usize>, MappedError> {
        for column in self.named_columns() {
            if index.contains_key(&column) {
                continue;
            }
            let found = index
                .iter()
                .find(|(h, _)| h.eq_ignore_ascii_case(&column))
                .map(|(_, i)| *i);
            match found {
                Some(i) => {
                    index.insert(column, i);
                }
                None => {
                    let mut present: Vec<(&String, &usize)> = index.iter().collect();
                    present.sort_by_key(|(_, i)| **i);
                    return Err(MappedError::MissingColumn {
                        mapping: self.mapping.name.clone(),
                        column,
                        present: present
                            .iter()
                            .map(|(h, _)| format!("{h:?}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
            }
        }
        Ok(index)
    }

    fn refuse(&mut self, why: String) {
        *self.report.refused.entry(why).or_default() += 1;
    }

    fn row(&mut self, row: &dyn Row, at: &str) {
        self.report.rows += 1;
        let m = self.mapping;
        let Some(time_text) = row.text(&m.time).filter(|t| !t.is_empty()) else {
            self.refuse(format!("a row without a time in {:?}", m.time));
            return;
        };
        let when = match self.when(&time_text, row.number(&m.time)) {
            Ok(w) => w,
            Err(why) => {
                self.refuse(format!("{:?}: {why}", m.time));
                tracing::debug!(%at, time = %time_text, "refused");
                return;
            }
        };
        let end = match m
            .end
            .as_ref()
            .and_then(|c| row.text(c))
            .filter(|t| !t.is_empty())
        {
            None => None,
            Some(text) => match self.when(&text, None) {
                Ok(When::Instant(t, ..)) => Some(t),
                Ok(When::Day(_)) => None,
                Err(why) => {
                    self.refuse(format!("{:?}: {why}", m.end.as_deref().unwrap_or("")));
                    return;
                }
            },
        };
        let origin = m
            .origin
            .as_ref()
            .and_then(|c| row.text(c))
            .unwrap_or_default();
        let id =
            m.id.as_ref()
                .and_then(|c| row.text(c))
                .filter(|t| !t.is_empty());
        for (k, column) in m.columns.iter().enumerate() {
            let value = match row.number(&column.column) {
                Some(x) => Ok(x),
                None => match row.text(&column.column) {
                    None => Err(None),
                    Some(t) => parse_value(&t, m.decimal_comma),
                },
            };
            let value = match value {
                Ok(v) => v,
                Err(None) => {
                    self.report.empty += 1;
                    continue;
                }
                Err(Some(why)) => {
                    self.refuse(format!("{:?}: {why}", column.column));
                    continue;
                }
            };
            let (conversion, unit) = &self.convert[k];
            let value = conversion.apply(value);
            if !value.is_finite() {
                self.refuse(format!("{:?}: not a finite number", column.column));
                continue;
            }
            if *conversion != Conversion::SAME {
                self.report
                    .converted
                    .entry(column.column.clone())
                    .or_insert_with(|| format!("{} → {unit}", column.unit));
            }
            let (observed_at, local_date, offset, key) = match &when {
                When::Instant(t, offset, written) => {
                    let rule = self.rules.day_rule(&column.stream);
                    (
                        *t,
                        rule.day_of(*t, end, *offset, &self.zone),
                        *offset,
                        written.clone(),
                    )
                }
                When::Day(d) => {
                    // A day's value: noon of that day, which lies inside it
                    // under any day start within ±12 hours.
                    let noon = self
                        .zone
                        .to_ambiguous_timestamp(d.at(12, 0, 0, 0))
                        .compatible();
                    let Ok(noon) = noon else {
                        self.refuse(format!("{:?}: the day {d} is out of range", m.time));
                        continue;
                    };
                    (noon, *d, None, d.to_string())
                }
            };
            let record_id = match &id {
                Some(id) => format!("{}:{}", id, column.stream),
                None => {
                    let base = format!("{}@{}", column.stream, key);
                    let hash = {
                        use std::hash::{Hash, Hasher};
                        let mut h = std::collections::hash_map::DefaultHasher::new();
                        base.hash(&mut h);
                        h.finish()
                    };
                    let n = self.seen.entry(hash).or_default();
                    *n += 1;
                    if *n == 1 { base } else { format!("{base}#{n}") }
                }
            };
            self.out.push(NewObservation {
                stream: column.stream.clone(),
                unit: unit.clone(),
                source_record_id: record_id,
                observed_at,
                local_date,
                value,
                ended_at: end,
                utc_offset: offset,
                origin: origin.clone(),
            });
        }
    }

    /// Reads a time cell by the mapping's format.
    fn when(&mut self, text: &str, number: Option<f64>) -> Result<When, String> {
        let epoch = |scale: f64| -> Result<When, String> {
            let x = number
                .or_else(|| text.parse::<f64>().ok())
                .ok_or_else(|| format!("{text:?} is not a number of seconds since 1970"))?;
            let ms = (x * scale).round();
            if !ms.is_finite() || ms.abs() > 1e15 {
                return Err(format!("{text:?} is out of range"));
            }
            Timestamp::from_millisecond(ms as i64)
                .map(|t| When::Instant(t, None, t.to_string()))
                .map_err(|e| format!("{text:?}: {e}"))
        };
        match &self.mapping.time_format {
            TimeFormat::UnixSeconds => epoch(1000.0),
            TimeFormat::UnixMillis => epoch(1.0),
            TimeFormat::Strftime(f) => {
                let parsed = jiff::fmt::strtime::parse(f, text)
                    .map_err(|_| format!("{text:?} does not match the time_format {f:?}"))?;
                if let Some(offset) = parsed.offset() {
                    let t = parsed
                        .to_timestamp()
                        .map_err(|e| format!("{text:?}: {e}"))?;
                    Ok(When::Instant(t, Some(offset), t.to_string()))
                } else if parsed.hour().is_some() {
                    let dt = parsed.to_datetime().map_err(|e| format!("{text:?}: {e}"))?;
                    self.local(dt)
                } else {
                    let d = parsed.to_date().map_err(|e| format!("{text:?}: {e}"))?;
                    Ok(When::Day(d))
                }
            }
            TimeFormat::Iso => {
                let pieces = jiff::fmt::temporal::Pieces::parse(text).map_err(|_| {
                    format!(
                        "{text:?} is not an ISO 8601 date or time (set time_format, e.g. \"%d/%m/%Y\")"
                    )
                })?;
                let date = pieces.date();
                let Some(time) = pieces.time() else {
                    return Ok(When::Day(date));
                };
                let dt = date.to_datetime(time);
                match pieces.offset() {
                    Some(offset) => {
                        let numeric = offset.to_numeric_offset();
                        let t = numeric
                            .to_timestamp(dt)
                            .map_err(|e| format!("{text:?}: {e}"))?;
                        // `Z` says when, not where: the day comes from the
                        // zone.
                        let known = matches!(offset, jiff::fmt::temporal::PiecesOffset::Numeric(_));
                        Ok(When::Instant(t, known.then_some(numeric), t.to_string()))
                    }
                    None => self.local(dt),
                }
            }
        }
    }

    /// A civil time in the mapping's zone; a time in a DST change is read
    /// by the usual rule and counted.
    fn local(&mut self, dt: DateTime) -> Result<When, String> {
        let ambiguous = self.zone.to_ambiguous_timestamp(dt);
        if !matches!(ambiguous.offset(), AmbiguousOffset::Unambiguous { .. }) {
            self.report.dst_ambiguous += 1;
        }
        let t = ambiguous.compatible().map_err(|e| format!("{dt}: {e}"))?;
        Ok(When::Instant(t, None, dt.to_string()))
    }
}

/// A cell as a number: decimals (with a decimal comma where the mapping
/// says), and yes/no answers as 1/0. `Err(None)` for an empty cell.
fn parse_value(text: &str, decimal_comma: bool) -> Result<f64, Option<String>> {
    let t = text.trim();
    if t.is_empty()
        || ["na", "n/a", "-", "null", "none", "nan"].contains(&t.to_ascii_lowercase().as_str())
    {
        return Err(None);
    }
    match t.to_ascii_lowercase().as_str() {
        "yes" | "y" | "true" => return Ok(1.0),
        "no" | "n" | "false" => return Ok(0.0),
        _ => {}
    }
    let cleaned = if decimal_comma {
        // "1.234,5": dots group thousands; any other dot is not this
        // spelling, and is refused rather than read as a different number.
        let whole = t.split(',').next().unwrap_or("");
        if whole.contains('.') && !is_grouped(whole, '.') {
            return Err(Some(format!(
                "{t:?} has a decimal point, but decimal_comma is set"
            )));
        }
        t.replace('.', "").replace(',', ".")
    } else if is_grouped(t.split('.').next().unwrap_or(""), ',') {
        t.replace(',', "")
    } else {
        t.to_string()
    };
    match cleaned.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ if !decimal_comma && t.contains(',') && t.replace(',', ".").parse::<f64>().is_ok() => {
            Err(Some(format!(
                "{t:?} has a decimal comma (set decimal_comma = true)"
            )))
        }
        _ => Err(Some(format!("{t:?} is not a number"))),
    }
}

/// `1,234` or `-12,345,678` (with `sep` = `,`): separators that group
/// thousands, the first group 1–3 digits not starting with 0.
fn is_grouped(whole: &str, sep: char) -> bool {
    let digits = whole.strip_prefix('-').unwrap_or(whole);
    let mut groups = digits.split(sep);
    let first = groups.next().unwrap_or("");
    let rest: Vec<&str> = groups.collect();
    !rest.is_empty()
        && (1..=3).contains(&first.len())
        && !first.starts_with('0')
        && first.bytes().all(|b| b.is_ascii_digit())
        && rest
            .iter()
            .all(|g| g.len() == 3 && g.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(toml_text: &str) -> Mapping {
        let c: MappingConfig = toml::from_str(toml_text).unwrap();
        c.resolve("anna").unwrap()
    }

    fn london() -> TimeZone {
        TimeZone::get("Europe/London").unwrap()
    }

    fn read_all(
        m: &Mapping,
        format: Format,
        text: &str,
        units: &[(&str, &str)],
    ) -> Result<(Vec<NewObservation>, MappedReport), MappedError> {
        let units: HashMap<String, String> = units
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let mut all = Vec::new();
        let report = read(
            m,
            format,
            text.as_bytes(),
            &london(),
            &StreamRules::default(),
            &units,
            3,
            &mut |batch: &[NewObservation]| {
                all.extend_from_slice(batch);
                Ok::<(), MappedError>(())
            },
        )?;
        Ok((all, report))
    }

    const DIARY: &str = r#"
name = "diary"
files = "diary*.csv"
time = "Date"
time_format = "%d/%m/%Y"
decimal_comma = true
[[columns]]
column = "Mood"
stream = "mood"
unit = "score"
[[columns]]
column = "Migraine"
stream = "migraine"
unit = "yes/no"
[[columns]]
column = "Weight"
stream = "body_mass"
unit = "lb"
"#;

    #[test]
    fn a_spreadsheet_diary_with_local_conventions_is_read_day_by_day() {
        let m = mapping(DIARY);
        let text = "\u{feff}Date;Mood;Migraine;Weight\n\
                    01/03/2026;6,5;no;165,4\n\
                    02/03/2026;4;Yes;\n\
                    03/03/2026;great;n/a;164\n\
                    2026-03-04;5;no;163\n";
        let (obs, report) = read_all(&m, Format::Csv, text, &[("body_mass", "kg")]).unwrap();
        assert_eq!(report.rows, 4);
        // Day 1: three values; day 2: two (weight empty); day 3: weight
        // only (mood junk refused, migraine empty); day 4 refused whole.
        assert_eq!(obs.len(), 6, "{obs:#?}");
        let mood: Vec<_> = obs.iter().filter(|o| o.stream == "mood").collect();
        assert_eq!(mood[0].value, 6.5);
        assert_eq!(mood[0].local_date, jiff::civil::date(2026, 3, 1));
        assert_eq!(mood[0].source_record_id, "mood@2026-03-01");
        assert_eq!(mood[0].observed_at.to_string(), "2026-03-01T12:00:00Z");
        let migraine: Vec<f64> = obs
            .iter()
            .filter(|o| o.stream == "migraine")
            .map(|o| o.value)
            .collect();
        assert_eq!(migraine, vec![0.0, 1.0]);
        let weight = obs.iter().find(|o| o.stream == "body_mass").unwrap();
        assert!((weight.value - 165.4 * 0.453_592_37).abs() < 1e-9);
        assert_eq!(weight.unit, "kg");
        assert_eq!(
            report.refused.get("\"Mood\": \"great\" is not a number"),
            Some(&1)
        );
        assert_eq!(
            report
                .refused
                .iter()
                .filter(|(k, _)| k.contains("does not match the time_format"))
                .count(),
            1,
            "{:?}",
            report.refused
        );
        assert_eq!(report.empty, 2);
        assert_eq!(
            report.converted.get("Weight").map(String::as_str),
            Some("lb → kg")
        );
        // The same file again gives the same identities.
        let (again, _) = read_all(&m, Format::Csv, text, &[("body_mass", "kg")]).unwrap();
        let ids = |o: &[NewObservation]| {
            o.iter()
                .map(|x| x.source_record_id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&obs), ids(&again));
    }

    #[test]
    fn a_unit_of_another_quantity_is_refused_before_anything_is_read() {
        let m = mapping(DIARY);
        let e = read_all(
            &m,
            Format::Csv,
            "Date;Mood;Migraine;Weight\n",
            &[("body_mass", "cm")],
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("\"Weight\"")
                && text.contains("\"body_mass\"")
                && text.contains("\"cm\""),
            "{text}"
        );
    }

    #[test]
    fn a_missing_column_is_named_with_the_columns_there_are() {
        let m = mapping(DIARY);
        let e = read_all(
            &m,
            Format::Csv,
            "date,mood,Headache,Weight\n01/03/2026,5,no,160\n",
            &[],
        )
        .unwrap_err();
        let text = e.to_string();
        // "date" and "mood" match case-insensitively; "Migraine" is missing.
        assert!(text.contains("no column \"Migraine\""), "{text}");
        assert!(text.contains("\"Headache\""), "{text}");
    }

    #[test]
    fn local_times_follow_the_zone_through_daylight_saving() {
        let m = mapping(
            r#"
name = "bp"
files = "*.csv"
time = "when"
[[columns]]
column = "sys"
stream = "systolic"
unit = "mmHg"
"#,
        );
        let text = "when,sys\n\
                    2026-10-25 01:30,120\n\
                    2026-10-25T01:30:00+00:00,121\n\
                    2026-03-29 01:30,122\n\
                    2026-06-01T23:30:00Z,123\n\
                    2026-06-01T23:30:00-04:00,124\n\
                    1,234\n";
        let (obs, report) = read_all(&m, Format::Csv, text, &[]).unwrap();
        assert_eq!(obs.len(), 5, "{:?}", report.refused);
        // 01:30 on the night clocks go back happens twice: the earlier (BST).
        assert_eq!(obs[0].observed_at.to_string(), "2026-10-25T00:30:00Z");
        assert_eq!(obs[1].observed_at.to_string(), "2026-10-25T01:30:00Z");
        // 01:30 on the night clocks go forward does not exist: moved on.
        assert_eq!(obs[2].observed_at.to_string(), "2026-03-29T01:30:00Z");
        assert_eq!(report.dst_ambiguous, 2);
        // Z: the day from the zone (00:30 BST on 2 June).
        assert_eq!(obs[3].local_date, jiff::civil::date(2026, 6, 2));
        // A stated offset: the day where the person was (New York evening).
        assert_eq!(obs[4].local_date, jiff::civil::date(2026, 6, 1));
        assert_eq!(obs[4].utc_offset, Some(Offset::constant(-4)));
    }

    #[test]
    fn json_records_at_a_path_with_epoch_times_ids_and_nested_fields() {
        let m = mapping(
            r#"
name = "scale"
files = "scale-*.json"
time = "t"
time_format = "unix"
id = "id"
origin = "device.name"
records = "data.measures"
[[columns]]
column = "weight"
stream = "body_mass"
unit = "kg"
[[columns]]
column = "body.fat"
stream = "fat_ratio"
unit = "%"
"#,
        );
        assert!(m.matches("Scale-2026-03.JSON"));
        assert_eq!(m.format_of("scale-1.json"), Some(Format::Json));
        let text = r#"{"data":{"measures":[
            {"id":"a1","t":1772352000,"weight":71.2,"body":{"fat":"18.5"},"device":{"name":"Body+"}},
            {"id":"a2","t":"1772438400","weight":null,"body":{"fat":18.1},"device":{"name":"Body+"}},
            7
        ]}}"#;
        let (obs, report) = read_all(&m, Format::Json, text, &[("fat_ratio", "fraction")]).unwrap();
        assert_eq!(obs.len(), 3);
        assert_eq!(obs[0].source_record_id, "a1:body_mass");
        assert_eq!(obs[0].origin, "Body+");
        assert_eq!(
            obs[0].observed_at,
            Timestamp::from_second(1_772_352_000).unwrap()
        );
        assert!((obs[1].value - 0.185).abs() < 1e-12);
        assert_eq!(obs[1].unit, "fraction");
        assert_eq!(report.empty, 1);
        assert_eq!(
            report.refused.get("a record that is not an object"),
            Some(&1)
        );
        let e = read_all(&m, Format::Json, r#"{"data":{}}"#, &[]).unwrap_err();
        assert!(e.to_string().contains("no field \"data.measures\""), "{e}");
    }

    #[test]
    fn two_entries_at_one_time_are_both_kept() {
        let m = mapping(
            r#"
name = "pain"
files = "*.csv"
time = "day"
[[columns]]
column = "pain"
stream = "pain"
unit = "score"
"#,
        );
        let (obs, _) = read_all(
            &m,
            Format::Csv,
            "day,pain\n2026-03-01,4\n2026-03-01,6\n",
            &[],
        )
        .unwrap();
        let ids: Vec<&str> = obs.iter().map(|o| o.source_record_id.as_str()).collect();
        assert_eq!(ids, ["pain@2026-03-01", "pain@2026-03-01#2"]);
    }

    #[test]
    fn numbers_patterns_and_settings_are_checked() {
        assert_eq!(parse_value("1,234", false), Ok(1234.0));
        assert_eq!(parse_value("12,345,678.5", false), Ok(12_345_678.5));
        assert_eq!(parse_value("1.234,5", true), Ok(1234.5));
        assert!(
            parse_value("3,5", false)
                .unwrap_err()
                .unwrap()
                .contains("decimal_comma")
        );
        assert!(parse_value("0,125", false).is_err(), "not 125");
        assert!(
            parse_value("72.5", true)
                .unwrap_err()
                .unwrap()
                .contains("decimal point")
        );
        assert_eq!(parse_value("72,5", true), Ok(72.5));
        assert_eq!(parse_value(" NA ", false), Err(None));
        assert!(glob_match("mood-*.csv", "mood-2026-03.csv"));
        assert!(!glob_match("mood-*.csv", "mood.csv"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "acb"));
        let bad = |extra: &str| {
            let text = format!(
                "name = \"x\"\nfiles = \"*.csv\"\ntime = \"t\"\n{extra}\n[[columns]]\ncolumn = \"a\"\nstream = \"a\"\nunit = \"u\"\n"
            );
            toml::from_str::<MappingConfig>(&text)
                .unwrap()
                .resolve("anna")
                .unwrap_err()
        };
        assert!(bad("time_format = \"dd/mm/yyyy\"").contains("strftime"));
        assert!(bad("time_zone = \"Mars/Olympus\"").contains("IANA"));
        assert!(bad("delimiter = \";;\"").contains("one character"));
    }
}

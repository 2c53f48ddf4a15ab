//! Apple Health's export (`export.zip` or its `export.xml`), streamed: the
//! file is read once, a block at a time, so memory stays flat whatever its
//! size (real exports are 1–2 GB).
//!
//! Imported: quantity records (heart rate, resting heart rate, HRV SDNN,
//! steps, body mass, active energy), sleep stages, mindful sessions and
//! workouts, in normalised units, with the device (`sourceName`) kept as
//! the origin. Apple records carry no ids, so a record's id is a hash of
//! what makes it that sample (type, source, start, end, value): re-importing
//! the same or a later export adds nothing already stored.
//!
//! Real exports are damaged in known ways, each handled: a broken internal
//! DTD (iOS 16+: an unclosed `ATTLIST`) is skipped, as Apple's data never
//! needs it; characters XML forbids (a vertical tab in a device name) and
//! invalid UTF-8 are replaced and counted; a truncated file keeps every
//! record before the damage and says where it stopped.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};

use jiff::Timestamp;
use jiff::tz::{Offset, TimeZone};
use quick_xml::events::{BytesStart, Event};
use sha2::{Digest, Sha256};

use crate::service::store::NewObservation;
use crate::service::streams::StreamRules;

/// Where an import of Apple's export stands when it ends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct XmlReport {
    /// `Record` and `Workout` elements read.
    pub records: usize,
    /// Observations handed to the sink.
    pub observations: usize,
    /// Records that could not be read (bad date, value or unit), by reason.
    pub refused: BTreeMap<String, usize>,
    /// Records of types nof1d does not import, by type.
    pub skipped: BTreeMap<String, usize>,
    /// Characters replaced (forbidden in XML, or invalid UTF-8).
    pub replaced_chars: u64,
    /// Whether a DTD was skipped.
    pub dtd_skipped: bool,
    /// Why reading stopped before the end, and where: everything before
    /// it was kept.
    pub damaged: Option<String>,
}

/// What a quantity type becomes: stream, unit, and the factor from each
/// unit Apple writes to it.
struct Quantity {
    hk: &'static str,
    stream: &'static str,
    unit: &'static str,
    from: &'static [(&'static str, f64)],
}

const QUANTITIES: &[Quantity] = &[
    Quantity {
        hk: "HKQuantityTypeIdentifierHeartRate",
        stream: "heart_rate",
        unit: "bpm",
        from: &[("count/min", 1.0), ("count/s", 60.0)],
    },
    Quantity {
        hk: "HKQuantityTypeIdentifierRestingHeartRate",
        stream: "resting_heart_rate",
        unit: "bpm",
        from: &[("count/min", 1.0), ("count/s", 60.0)],
    },
    Quantity {
        hk: "HKQuantityTypeIdentifierHeartRateVariabilitySDNN",
        stream: "hrv_sdnn",
        unit: "ms",
        from: &[("ms", 1.0), ("s", 1000.0)],
    },
    Quantity {
        hk: "HKQuantityTypeIdentifierStepCount",
        stream: "steps",
        unit: "count",
        from: &[("count", 1.0)],
    },
    Quantity {
        hk: "HKQuantityTypeIdentifierBodyMass",
        stream: "body_mass",
        unit: "kg",
        from: &[
            ("kg", 1.0),
            ("g", 0.001),
            ("lb", 0.453_592_37),
            ("st", 6.350_293_18),
        ],
    },
    Quantity {
        hk: "HKQuantityTypeIdentifierActiveEnergyBurned",
        stream: "active_energy",
        unit: "kcal",
        from: &[("kcal", 1.0), ("Cal", 1.0), ("kJ", 1.0 / 4.184)],
    },
];

const SLEEP: &str = "HKCategoryTypeIdentifierSleepAnalysis";
const MINDFUL: &str = "HKCategoryTypeIdentifierMindfulSession";

/// The stage stream of a sleep value, and whether it counts as asleep.
fn sleep_stage(value: &str) -> Option<(&'static str, bool)> {
    Some(match value.strip_prefix("HKCategoryValueSleepAnalysis")? {
        "InBed" => ("sleep_in_bed", false),
        "Awake" => ("sleep_awake", false),
        "Asleep" | "AsleepUnspecified" => ("sleep_unspecified", true),
        "AsleepCore" => ("sleep_core", true),
        "AsleepDeep" => ("sleep_deep", true),
        "AsleepREM" => ("sleep_rem", true),
        _ => return None,
    })
}

/// Opens an export: a zip (its `export.xml`, read as it inflates) or the
/// XML itself. A zip whose directory is missing (a cut-short download) is
/// read from its start instead, as far as it goes.
pub fn open_export(path: &std::path::Path) -> std::io::Result<Box<dyn Read + Send>> {
    let mut file = std::fs::File::open(path)?;
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic)?;
    let file = std::fs::File::open(path)?;
    if n == 4 && magic == *b"PK\x03\x04" {
        return open_zip(file, path);
    }
    Ok(Box::new(file))
}

fn open_zip(file: std::fs::File, path: &std::path::Path) -> std::io::Result<Box<dyn Read + Send>> {
    let is_export =
        |name: &str| name.rsplit('/').next() == Some("export.xml") && !name.starts_with("__MACOSX");
    let mut archive = zip::ZipArchive::new(file).map_err(|e| {
        std::io::Error::other(format!(
            "{}: a damaged zip ({e}); a cut-short download has no directory at its end: unzip what is there and import export.xml",
            path.display()
        ))
    })?;
    let index = (0..archive.len())
        .find(|&i| {
            archive
                .name_for_index(i)
                .is_some_and(|n| n.is_ok_and(|n| is_export(&n)))
        })
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "{}: the zip holds no export.xml (is it Apple Health's export?)",
                path.display()
            ))
        })?;
    // `ZipFile` borrows its archive, so one thread owns both and inflates
    // the entry once, straight through, into a pipe the parser reads.
    let (reader, mut writer) = std::io::pipe()?;
    let worker = std::thread::spawn(move || -> std::io::Result<()> {
        let mut entry = archive.by_index(index).map_err(std::io::Error::other)?;
        match std::io::copy(&mut entry, &mut writer) {
            Ok(_) => Ok(()),
            // The parser stopped reading (damage found, or its sink failed).
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            Err(e) => Err(e),
        }
    });
    Ok(Box::new(ZipEntry {
        pipe: reader,
        worker: Some(worker),
    }))
}

/// The export inside a zip, read as a thread inflates it; an error of the
/// inflating (a corrupt entry) comes out where the data end.
struct ZipEntry {
    pipe: std::io::PipeReader,
    worker: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Read for ZipEntry {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.pipe.read(buf)?;
        if n == 0
            && !buf.is_empty()
            && let Some(worker) = self.worker.take()
        {
            worker
                .join()
                .map_err(|_| std::io::Error::other("unzipping failed"))??;
        }
        Ok(n)
    }
}

/// Reads Apple's export from `input`, handing observations to `sink` in
/// batches of `batch` (the caller stores each batch in one transaction).
/// Dates are placed on days by `rules`, in the zone the record names
/// (`HKTimeZone`) or else `home`. A sink error stops the import and is
/// returned; damage in the file stops it and is reported.
pub fn read_export<E>(
    input: impl Read,
    home: &TimeZone,
    rules: &StreamRules,
    batch: usize,
    sink: &mut dyn FnMut(&[NewObservation]) -> Result<(), E>,
) -> Result<XmlReport, E> {
    let mut reader =
        quick_xml::Reader::from_reader(BufReader::with_capacity(1 << 20, Cleaner::new(input)));
    reader.config_mut().check_end_names = false;
    let mut report = XmlReport::default();
    let mut out: Vec<NewObservation> = Vec::with_capacity(batch);
    let mut buf = Vec::with_capacity(4096);
    // A record whose children (its time zone) are still to come.
    let mut open: Option<Pending> = None;
    let mut root_closed = false;
    loop {
        let event = reader.read_event_into(&mut buf);
        match event {
            Ok(Event::Start(e)) => match e.local_name().as_ref() {
                "Record" | "Workout" => {
                    report.records += 1;
                    open = Some(Pending::read(&e));
                }
                _ => {}
            },
            Ok(Event::Empty(e)) => match e.local_name().as_ref() {
                "Record" | "Workout" => {
                    report.records += 1;
                    let p = Pending::read(&e);
                    p.finish(home, rules, &mut report, &mut out);
                }
                "MetadataEntry" => {
                    if let Some(p) = open.as_mut() {
                        p.metadata(&e);
                    }
                }
                _ => {}
            },
            Ok(Event::End(e)) => match e.local_name().as_ref() {
                "Record" | "Workout" => {
                    if let Some(p) = open.take() {
                        p.finish(home, rules, &mut report, &mut out);
                    }
                }
                "HealthData" => root_closed = true,
                _ => {}
            },
            Ok(Event::Eof) => {
                if open.is_some() || !root_closed {
                    report.damaged = Some(format!(
                        "the file ends early, at byte {} (truncated?)",
                        reader.buffer_position()
                    ));
                }
                break;
            }
            Ok(_) => {}
            Err(e) => {
                report.damaged = Some(format!(
                    "unreadable XML at byte {}: {e}",
                    reader.error_position()
                ));
                break;
            }
        }
        if out.len() >= batch {
            sink(&out)?;
            report.observations += out.len();
            out.clear();
        }
        buf.clear();
    }
    if !out.is_empty() {
        sink(&out)?;
        report.observations += out.len();
    }
    let cleaner = reader.get_ref().get_ref();
    report.replaced_chars = cleaner.replaced;
    report.dtd_skipped = cleaner.dtd_skipped;
    Ok(report)
}

/// A record's attributes as read, until its end tag.
#[derive(Debug, Default)]
struct Pending {
    workout: bool,
    kind: String,
    source: String,
    unit: String,
    value: String,
    start: String,
    end: String,
    duration: String,
    duration_unit: String,
    zone: Option<String>,
}

impl Pending {
    fn read(e: &BytesStart<'_>) -> Pending {
        let mut p = Pending {
            workout: e.local_name().as_ref() == "Workout",
            ..Pending::default()
        };
        for attr in e.attributes().with_checks(false).flatten() {
            let target = match attr.key.as_ref() {
                "type" | "workoutActivityType" => &mut p.kind,
                "sourceName" => &mut p.source,
                "unit" => &mut p.unit,
                "value" => &mut p.value,
                "startDate" => &mut p.start,
                "endDate" => &mut p.end,
                "duration" => &mut p.duration,
                "durationUnit" => &mut p.duration_unit,
                _ => continue,
            };
            *target = match attr.normalized_value(quick_xml::XmlVersion::Implicit1_0) {
                Ok(v) => v.into_owned(),
                Err(_) => attr.value.into_owned(),
            };
        }
        p
    }

    fn metadata(&mut self, e: &BytesStart<'_>) {
        let mut key = None;
        let mut value = None;
        for attr in e.attributes().with_checks(false).flatten() {
            match attr.key.as_ref() {
                "key" => key = Some(attr.value),
                "value" => value = Some(attr.value),
                _ => {}
            }
        }
        if key.as_deref() == Some("HKTimeZone") {
            self.zone = value.map(|v| v.into_owned());
        }
    }

    /// Turns the record into observations (or counts why not).
    fn finish(
        self,
        home: &TimeZone,
        rules: &StreamRules,
        report: &mut XmlReport,
        out: &mut Vec<NewObservation>,
    ) {
        match self.observations(home, rules) {
            Ok(Some(obs)) => out.extend(obs),
            Ok(None) => {
                *report.skipped.entry(self.kind).or_default() += 1;
            }
            Err(why) => {
                *report.refused.entry(why).or_default() += 1;
            }
        }
    }

    fn observations(
        &self,
        home: &TimeZone,
        rules: &StreamRules,
    ) -> Result<Option<Vec<NewObservation>>, String> {
        let one =
            |stream: &str, unit: &str, value: f64, tag: &str| -> Result<NewObservation, String> {
                let (start, _) = parse_stamp(&self.start)
                    .ok_or_else(|| format!("{}: bad startDate", short(&self.kind)))?;
                let (end, _) = parse_stamp(&self.end)
                    .ok_or_else(|| format!("{}: bad endDate", short(&self.kind)))?;
                if end < start {
                    return Err(format!("{}: ends before it starts", short(&self.kind)));
                }
                // The zone the record was made in, where Apple kept it; the
                // offsets in the file are the exporting phone's, not the sample's.
                let zone = self.zone.as_deref().and_then(|z| TimeZone::get(z).ok());
                let offset = zone.as_ref().map(|z| z.to_offset(start));
                let day = rules
                    .day_rule(stream)
                    .day_of(start, Some(end), offset, home);
                let mut id = Sha256::new();
                for part in [
                    &self.kind,
                    &self.source,
                    &self.start,
                    &self.end,
                    &self.value,
                ] {
                    id.update(part.as_bytes());
                    id.update([0]);
                }
                id.update(tag.as_bytes());
                let digest = id.finalize();
                Ok(NewObservation {
                    stream: stream.to_string(),
                    unit: unit.to_string(),
                    source_record_id: hex(&digest[..16]),
                    observed_at: start,
                    local_date: day,
                    value,
                    ended_at: (end != start).then_some(end),
                    utc_offset: offset,
                    origin: self.source.clone(),
                })
            };
        if self.workout {
            let minutes = self.minutes()?;
            let activity = self
                .kind
                .strip_prefix("HKWorkoutActivityType")
                .unwrap_or(&self.kind);
            return Ok(Some(vec![
                one("workout_minutes", "min", minutes, "")?,
                one(
                    &format!("workout_minutes_{}", snake(activity)),
                    "min",
                    minutes,
                    "by-activity",
                )?,
            ]));
        }
        if let Some(q) = QUANTITIES.iter().find(|q| q.hk == self.kind) {
            let factor = q
                .from
                .iter()
                .find(|(u, _)| *u == self.unit)
                .map(|(_, f)| *f)
                .ok_or_else(|| format!("{}: unit {:?} not known", short(&self.kind), self.unit))?;
            let value: f64 = self
                .value
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .ok_or_else(|| format!("{}: value is not a number", short(&self.kind)))?;
            return Ok(Some(vec![one(q.stream, q.unit, value * factor, "")?]));
        }
        if self.kind == SLEEP {
            let (stage, asleep) = sleep_stage(&self.value).ok_or_else(|| {
                format!(
                    "SleepAnalysis: value {:?} not known",
                    crate::limits::excerpt(&self.value)
                )
            })?;
            let minutes = self.span_minutes()?;
            let mut obs = vec![one(stage, "min", minutes, "")?];
            if asleep {
                obs.push(one("sleep_asleep", "min", minutes, "asleep")?);
            }
            return Ok(Some(obs));
        }
        if self.kind == MINDFUL {
            return Ok(Some(vec![one(
                "mindful_minutes",
                "min",
                self.span_minutes()?,
                "",
            )?]));
        }
        Ok(None)
    }

    fn span_minutes(&self) -> Result<f64, String> {
        match (parse_stamp(&self.start), parse_stamp(&self.end)) {
            (Some((s, _)), Some((e, _))) if e >= s => Ok(e.duration_since(s).as_secs_f64() / 60.0),
            _ => Err(format!("{}: bad startDate or endDate", short(&self.kind))),
        }
    }

    fn minutes(&self) -> Result<f64, String> {
        let given: Option<f64> = self
            .duration
            .trim()
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite());
        match (given, self.duration_unit.as_str()) {
            (Some(d), "min" | "") => Ok(d),
            (Some(d), "s") => Ok(d / 60.0),
            (Some(d), "hr" | "h") => Ok(d * 60.0),
            _ => self.span_minutes(),
        }
    }
}

/// A type name without Apple's prefix, for messages.
fn short(kind: &str) -> &str {
    kind.trim_start_matches("HKQuantityTypeIdentifier")
        .trim_start_matches("HKCategoryTypeIdentifier")
        .trim_start_matches("HKWorkoutActivityType")
}

/// `TraditionalStrengthTraining` → `traditional_strength_training`.
fn snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Parses Apple's (and Health Auto Export's) `2024-02-06 14:30:00 -0800`.
pub fn parse_stamp(text: &str) -> Option<(Timestamp, Offset)> {
    let b = text.trim().as_bytes();
    if b.len() != 25
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b' '
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b' '
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i32> {
        let mut v = 0i32;
        for &c in &b[r] {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i32::from(c - b'0');
        }
        Some(v)
    };
    let sign = match b[20] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (oh, om) = (num(21..23)?, num(23..25)?);
    if oh > 18 || om > 59 {
        return None;
    }
    let offset_secs = sign * (oh * 3600 + om * 60);
    let offset = Offset::from_seconds(offset_secs).ok()?;
    let dt = jiff::civil::DateTime::new(
        i16::try_from(num(0..4)?).ok()?,
        i8::try_from(num(5..7)?).ok()?,
        i8::try_from(num(8..10)?).ok()?,
        i8::try_from(num(11..13)?).ok()?,
        i8::try_from(num(14..16)?).ok()?,
        i8::try_from(num(17..19)?).ok()?,
        0,
    )
    .ok()?;
    Some((offset.to_timestamp(dt).ok()?, offset))
}

/// A reader that hands the XML parser clean text: the internal DTD cut
/// out (Apple's is broken in iOS 16+ exports and nothing needs it),
/// characters XML 1.0 forbids replaced by spaces, invalid UTF-8 by U+FFFD.
struct Cleaner<R> {
    inner: R,
    /// Bytes cleaned and not yet handed out.
    ready: Vec<u8>,
    ready_at: usize,
    /// An incomplete UTF-8 sequence at the end of the last block.
    carry: Vec<u8>,
    /// Nothing read yet: the first block may hold a DTD.
    at_start: bool,
    /// Inside the DTD's internal subset, skipping to its `]>`.
    in_dtd: bool,
    /// A `]` was the last non-space byte seen inside the DTD.
    after_bracket: bool,
    dtd_skipped: bool,
    replaced: u64,
    eof: bool,
}

/// How much of the file's start is looked at for a DTD.
const HEAD_BYTES: usize = 1 << 16;

impl<R: Read> Cleaner<R> {
    fn new(inner: R) -> Self {
        Cleaner {
            inner,
            ready: Vec::new(),
            ready_at: 0,
            carry: Vec::new(),
            at_start: true,
            in_dtd: false,
            after_bracket: false,
            dtd_skipped: false,
            replaced: 0,
            eof: false,
        }
    }

    fn read_block(&mut self, into: &mut Vec<u8>) -> std::io::Result<usize> {
        let start = into.len();
        into.resize(start + (1 << 18), 0);
        let n = loop {
            match self.inner.read(&mut into[start..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    into.truncate(start);
                    return Err(e);
                }
            }
        };
        into.truncate(start + n);
        Ok(n)
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut data = std::mem::take(&mut self.carry);
        let mut n = self.read_block(&mut data)?;
        // The head (where a DTD would be) is looked at whole.
        while self.at_start && n > 0 && data.len() < HEAD_BYTES {
            n = self.read_block(&mut data)?;
        }
        if data.is_empty() {
            self.eof = true;
            return Ok(());
        }
        if n == 0 {
            self.eof = true;
        }
        let mut data = self.skip_dtd(data);
        if !self.eof {
            // Keep an incomplete UTF-8 sequence for the next block.
            let cut = incomplete_tail(&data);
            self.carry = data.split_off(data.len() - cut);
        }
        self.clean_into(&data);
        Ok(())
    }

    /// Drops the `<!DOCTYPE …>` (with its `[ … ]` subset) before the root.
    fn skip_dtd(&mut self, data: Vec<u8>) -> Vec<u8> {
        if self.in_dtd {
            return match self.dtd_close(&data) {
                Some(end) => data[end..].to_vec(),
                None => Vec::new(),
            };
        }
        if !self.at_start {
            return data;
        }
        self.at_start = false;
        let Some(pos) = find(&data, b"<!DOCTYPE") else {
            return data;
        };
        self.dtd_skipped = true;
        let after = &data[pos..];
        let gt = after.iter().position(|&b| b == b'>');
        let bracket = after.iter().position(|&b| b == b'[');
        let mut kept = data[..pos].to_vec();
        match (bracket, gt) {
            (Some(br), _) if gt.is_none_or(|g| br < g) => {
                self.in_dtd = true;
                if let Some(end) = self.dtd_close(&after[br + 1..]) {
                    kept.extend_from_slice(&after[br + 1 + end..]);
                }
            }
            (_, Some(g)) => kept.extend_from_slice(&after[g + 1..]),
            _ => self.in_dtd = true,
        }
        kept
    }

    /// Where the internal subset's `]>` ends in `data`, if it does.
    fn dtd_close(&mut self, data: &[u8]) -> Option<usize> {
        for (i, &b) in data.iter().enumerate() {
            match b {
                b'>' if self.after_bracket => {
                    self.in_dtd = false;
                    self.after_bracket = false;
                    return Some(i + 1);
                }
                b']' => self.after_bracket = true,
                b' ' | b'\t' | b'\n' | b'\r' => {}
                _ => self.after_bracket = false,
            }
        }
        None
    }

    fn clean_into(&mut self, data: &[u8]) {
        let forbidden = |b: u8| b < 0x20 && b != b'\t' && b != b'\n' && b != b'\r';
        let mut rest = data;
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    self.push_clean(text.as_bytes(), forbidden);
                    return;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    self.push_clean(good, forbidden);
                    self.replaced += 1;
                    self.ready.extend_from_slice("\u{FFFD}".as_bytes());
                    let skip = e.error_len().unwrap_or(bad.len()).max(1);
                    rest = &bad[skip..];
                }
            }
        }
    }

    fn push_clean(&mut self, bytes: &[u8], forbidden: impl Fn(u8) -> bool) {
        if !bytes.iter().any(|&b| forbidden(b)) {
            self.ready.extend_from_slice(bytes);
            return;
        }
        for &b in bytes {
            if forbidden(b) {
                self.replaced += 1;
                self.ready.push(b' ');
            } else {
                self.ready.push(b);
            }
        }
    }
}

impl<R: Read> Read for Cleaner<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.ready_at >= self.ready.len() {
            self.ready.clear();
            self.ready_at = 0;
            if self.eof {
                return Ok(0);
            }
            self.fill()?;
        }
        let n = buf.len().min(self.ready.len() - self.ready_at);
        buf[..n].copy_from_slice(&self.ready[self.ready_at..self.ready_at + n]);
        self.ready_at += n;
        Ok(n)
    }
}

/// How many bytes at the end of `data` start a UTF-8 sequence that the
/// next block completes (0 if none).
fn incomplete_tail(data: &[u8]) -> usize {
    for back in 1..=3.min(data.len()) {
        let b = data[data.len() - back];
        if b & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: look further back
        }
        let need = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return 0,
        };
        return if need > back { back } else { 0 };
    }
    0
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Writes an export-shaped XML document (for tests and the benchmark):
/// the v12 header with its broken DTD, then `days` days of heart rate
/// every `hr_minutes`, steps from phone and watch, resting heart rate,
/// HRV, weight in pounds, a night of sleep stages across midnight, a
/// mindful session and a workout.
pub fn write_sample_export(
    mut out: impl std::io::Write,
    first_day: jiff::civil::Date,
    days: u32,
    hr_minutes: u32,
) -> std::io::Result<()> {
    out.write_all(SAMPLE_HEADER.as_bytes())?;
    let offset = "+0000";
    let stamp = |d: jiff::civil::Date, minute: u32| -> String {
        let dt = d.to_datetime(jiff::civil::Time::midnight())
            + jiff::SignedDuration::from_mins(i64::from(minute));
        format!("{} {offset}", dt.strftime("%Y-%m-%d %H:%M:%S"))
    };
    let watch = r#"sourceName="Anna’s Apple Watch" sourceVersion="10.6" device="&lt;&lt;HKDevice: 0x2801&gt;, name:Apple Watch, model:Watch&gt;""#;
    let phone = r#"sourceName="Anna’s iPhone" sourceVersion="18.1""#;
    for i in 0..days {
        let d = first_day + jiff::Span::new().days(i64::from(i));
        let mut m = 0;
        while m < 24 * 60 {
            let hr = 55 + (m * 7 + i * 13) % 40;
            writeln!(
                out,
                r#" <Record type="HKQuantityTypeIdentifierHeartRate" {watch} unit="count/min" creationDate="{c}" startDate="{s}" endDate="{s}" value="{hr}">
  <MetadataEntry key="HKMetadataKeyHeartRateMotionContext" value="0"/>
 </Record>"#,
                c = stamp(d, m + 1),
                s = stamp(d, m)
            )?;
            m += hr_minutes;
        }
        for (h, n) in [(9, 1200), (13, 3400), (18, 2100)] {
            for (src, scale) in [(phone, 1), (watch, 2)] {
                writeln!(
                    out,
                    r#" <Record type="HKQuantityTypeIdentifierStepCount" {src} unit="count" creationDate="{s}" startDate="{s}" endDate="{e}" value="{v}"/>"#,
                    s = stamp(d, h * 60),
                    e = stamp(d, h * 60 + 30),
                    v = n * scale / 2 + i
                )?;
            }
        }
        writeln!(
            out,
            r#" <Record type="HKQuantityTypeIdentifierRestingHeartRate" {watch} unit="count/min" creationDate="{s}" startDate="{s}" endDate="{s}" value="{v}"/>
 <Record type="HKQuantityTypeIdentifierHeartRateVariabilitySDNN" {watch} unit="ms" creationDate="{s}" startDate="{s}" endDate="{s}" value="{hrv}">
  <HeartRateVariabilityMetadataList>
   <InstantaneousBeatsPerMinute bpm="62" time="3:01:02.50 AM"/>
  </HeartRateVariabilityMetadataList>
 </Record>
 <Record type="HKQuantityTypeIdentifierBodyMass" {phone} unit="lb" creationDate="{w}" startDate="{w}" endDate="{w}" value="{lb}"/>
 <Record type="HKCategoryTypeIdentifierMindfulSession" {watch} creationDate="{ms}" startDate="{ms}" endDate="{me}" value="HKCategoryValueNotApplicable"/>
 <Workout workoutActivityType="HKWorkoutActivityTypeRunning" duration="31.5" durationUnit="min" totalDistance="5.2" totalDistanceUnit="km" {watch} creationDate="{we}" startDate="{ws}" endDate="{we}">
  <MetadataEntry key="HKTimeZone" value="Europe/London"/>
  <WorkoutStatistics type="HKQuantityTypeIdentifierActiveEnergyBurned" startDate="{ws}" endDate="{we}" sum="310" unit="kcal"/>
 </Workout>"#,
            s = stamp(d, 7 * 60),
            v = 52 + i % 5,
            hrv = 40.5 + f64::from(i % 7),
            w = stamp(d, 7 * 60 + 5),
            lb = 165.0 + f64::from(i % 3) * 0.2,
            ms = stamp(d, 12 * 60),
            me = stamp(d, 12 * 60 + 10),
            ws = stamp(d, 17 * 60),
            we = stamp(d, 17 * 60 + 31),
        )?;
        // A night from 23:00 to 06:30 the next day.
        let night = [
            (23 * 60, 24 * 60 + 390, "InBed"),
            (23 * 60 + 10, 24 * 60 + 60, "AsleepCore"),
            (24 * 60 + 60, 24 * 60 + 150, "AsleepDeep"),
            (24 * 60 + 150, 24 * 60 + 170, "Awake"),
            (24 * 60 + 170, 24 * 60 + 390, "AsleepREM"),
        ];
        for (s, e, stage) in night {
            writeln!(
                out,
                r#" <Record type="HKCategoryTypeIdentifierSleepAnalysis" {watch} creationDate="{e}" startDate="{s}" endDate="{e}" value="HKCategoryValueSleepAnalysis{stage}">
  <MetadataEntry key="HKTimeZone" value="Europe/London"/>
 </Record>"#,
                s = stamp(d, s),
                e = stamp(d, e)
            )?;
        }
    }
    out.write_all(b"</HealthData>\n")
}

/// The head of a HealthKit Export Version 12 file, with the broken
/// `VisionPrescription` declaration (its `>` missing) that iOS 16+ writes.
const SAMPLE_HEADER: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE HealthData [
<!-- HealthKit Export Version: 12 -->
<!ELEMENT HealthData (ExportDate,Me,(Record|Correlation|Workout|ActivitySummary|ClinicalRecord|VisionPrescription)*)>
<!ATTLIST HealthData
  locale CDATA #REQUIRED
>
<!ELEMENT Record ((MetadataEntry|HeartRateVariabilityMetadataList)*)>
<!ATTLIST Record
  type          CDATA #REQUIRED
  unit          CDATA #IMPLIED
  value         CDATA #IMPLIED
  sourceName    CDATA #REQUIRED
  sourceVersion CDATA #IMPLIED
  device        CDATA #IMPLIED
  creationDate  CDATA #IMPLIED
  startDate     CDATA #REQUIRED
  endDate       CDATA #REQUIRED
>
<!ELEMENT VisionPrescription ((RightEye|LeftEye|Attachment|MetadataEntry)*)>
<!ATTLIST VisionPrescription
  type             CDATA #REQUIRED
  dateIssued       CDATA #REQUIRED
  expirationDate   CDATA #IMPLIED
  brand            CDATA #IMPLIED

<!ELEMENT RightEye EMPTY>
<!ATTLIST RightEye
  sphere           CDATA #IMPLIED
>
]>
<HealthData locale="en_GB">
 <ExportDate value="2026-11-30 08:00:00 +0000"/>
 <Me HKCharacteristicTypeIdentifierDateOfBirth="1990-02-02" HKCharacteristicTypeIdentifierBiologicalSex="HKBiologicalSexFemale"/>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn import(bytes: &[u8]) -> (XmlReport, Vec<NewObservation>) {
        let mut all = Vec::new();
        let report = read_export(
            bytes,
            &TimeZone::get("Europe/London").unwrap(),
            &StreamRules::default(),
            1000,
            &mut |b: &[NewObservation]| -> Result<(), ()> {
                all.extend_from_slice(b);
                Ok(())
            },
        )
        .unwrap();
        (report, all)
    }

    fn sample(days: u32) -> Vec<u8> {
        let mut v = Vec::new();
        write_sample_export(&mut v, "2026-11-01".parse().unwrap(), days, 60).unwrap();
        v
    }

    #[test]
    fn every_record_kind_becomes_its_stream_in_normalised_units() {
        let (report, obs) = import(&sample(2));
        assert!(report.dtd_skipped);
        assert_eq!(report.damaged, None, "{report:?}");
        assert!(report.refused.is_empty(), "{report:?}");
        let of = |s: &str| obs.iter().filter(|o| o.stream == s).collect::<Vec<_>>();
        assert_eq!(of("heart_rate").len(), 48);
        assert_eq!(of("steps").len(), 12);
        assert_eq!(of("resting_heart_rate").len(), 2);
        assert_eq!(of("hrv_sdnn")[0].unit, "ms");
        let kg = of("body_mass")[0].value;
        assert!((kg - 165.0 * 0.453_592_37).abs() < 1e-9, "{kg}");
        assert_eq!(of("mindful_minutes")[0].value, 10.0);
        assert_eq!(of("workout_minutes")[0].value, 31.5);
        assert_eq!(of("workout_minutes_running").len(), 2);
        // The night of the 1st: asleep 23:10 → 06:30 less 20 min awake,
        // all on the wake-up day, the 2nd.
        let asleep: f64 = of("sleep_asleep")
            .iter()
            .filter(|o| o.local_date == "2026-11-02".parse().unwrap())
            .map(|o| o.value)
            .sum();
        assert!((asleep - (440.0 - 20.0)).abs() < 1e-9, "{asleep}");
        assert_eq!(of("sleep_in_bed")[0].local_date.to_string(), "2026-11-02");
        // The device is kept; ids are unique and stable.
        assert!(of("steps").iter().any(|o| o.origin == "Anna’s iPhone"));
        let ids: std::collections::HashSet<_> = obs.iter().map(|o| &o.source_record_id).collect();
        assert_eq!(ids.len(), obs.len());
        assert_eq!(import(&sample(2)).1, obs);
    }

    #[test]
    fn a_truncated_file_keeps_what_came_before_the_damage() {
        let whole = sample(3);
        let (_, all) = import(&whole);
        for cut in [whole.len() / 2, whole.len() - 20, whole.len() * 9 / 10 + 7] {
            let (report, obs) = import(&whole[..cut]);
            let why = report.damaged.clone().expect("a cut file is damaged");
            assert!(why.contains("byte"), "{why}");
            assert!(!obs.is_empty() && obs.len() < all.len() + 1);
            assert_eq!(&all[..obs.len()], &obs[..], "kept records are intact");
        }
    }

    #[test]
    fn forbidden_characters_and_bad_records_are_counted_not_fatal() {
        let text = String::from_utf8(sample(1)).unwrap();
        let text = text.replacen("Anna’s iPhone", "Anna\u{b}s iPhone", 1);
        let mut bytes = text.into_bytes();
        // An invalid UTF-8 byte inside a device name.
        let at = find(&bytes, b"name:Apple Watch").unwrap();
        bytes[at + 5] = 0xFF;
        let bytes = String::from_utf8_lossy(&bytes)
            .replacen(
                r#"unit="count/min" creationDate"#,
                r#"unit="furlongs" creationDate"#,
                1,
            )
            .replacen(
                r#"startDate="2026-11-01 07:00:00 +0000""#,
                r#"startDate="yesterday""#,
                1,
            )
            .into_bytes();
        let mut raw = bytes.clone();
        let at = find(&raw, "\u{FFFD}".as_bytes()).unwrap();
        raw.splice(at..at + 3, [0xFF]);
        let (report, obs) = import(&raw);
        assert_eq!(report.damaged, None, "{report:?}");
        assert_eq!(report.replaced_chars, 2, "{report:?}");
        assert_eq!(report.refused.values().sum::<usize>(), 2, "{report:?}");
        assert!(report.refused.keys().any(|k| k.contains("furlongs")));
        assert!(obs.iter().any(|o| o.origin == "Anna s iPhone"));
    }

    #[test]
    fn stamps_parse_exactly_and_refuse_garbage() {
        let (t, off) = parse_stamp("2024-02-06 14:30:00 -0800").unwrap();
        assert_eq!(t.to_string(), "2024-02-06T22:30:00Z");
        assert_eq!(off, Offset::from_hours(-8).unwrap());
        for bad in [
            "2024-02-06",
            "2024-02-30 14:30:00 -0800",
            "2024-02-06T14:30:00 -0800",
            "2024-02-06 14:30:00 +2500",
            "",
        ] {
            assert!(parse_stamp(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn utf8_split_across_blocks_is_kept_whole() {
        assert_eq!(incomplete_tail("a’".as_bytes()), 0);
        assert_eq!(incomplete_tail(&"a’".as_bytes()[..2]), 1);
        assert_eq!(incomplete_tail(&"a’".as_bytes()[..3]), 2);
        // Through the reader with a one-byte source.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() || buf.is_empty() {
                    return Ok(0);
                }
                buf[0] = self.0[0];
                self.0 = &self.0[1..];
                Ok(1)
            }
        }
        let mut out = String::new();
        Cleaner::new(Trickle("<a>Anna’s\u{b}</a>".as_bytes()))
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "<a>Anna’s </a>");
    }
}

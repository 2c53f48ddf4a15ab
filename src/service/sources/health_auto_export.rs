//! The JSON that the iOS app "Health Auto Export" posts with its REST API
//! automation (or writes as a file): `{"data": {"metrics": [...],
//! "workouts": [...]}}`, each metric `{name, units, data: [{date, qty |
//! Avg/Min/Max, source}]}`, dates as `2024-02-06 14:30:00 -0800`.
//!
//! The app re-sends whole days several times a day as they fill, so a
//! record's id is what names that sample (metric, date, source; a night's
//! sleep by its end; a workout by its id): a re-sent day updates values in
//! place and adds nothing.

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::tz::{Offset, TimeZone};
use serde_json::Value;

use crate::service::sources::apple_health::parse_stamp;
use crate::service::store::NewObservation;
use crate::service::streams::StreamRules;

/// A payload that is not Health Auto Export's JSON at all.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON.
    #[error("not JSON: {0}")]
    Json(String),
    /// JSON, but without `data.metrics` or `data.workouts`.
    #[error("not a Health Auto Export payload: no data.metrics or data.workouts")]
    Shape,
}

/// What a payload gave: observations, and records refused by reason.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Observations, normalised.
    pub observations: Vec<NewObservation>,
    /// Data points that could not be read, by reason.
    pub refused: BTreeMap<String, usize>,
}

/// Factors from each unit the app writes to the stream's unit.
type UnitFactors = &'static [(&'static str, f64)];

/// Metric name → stream, unit, and factors from the units the app writes.
const METRICS: &[(&str, &str, &str, UnitFactors)] = &[
    ("step_count", "steps", "count", &[("count", 1.0)]),
    ("heart_rate", "heart_rate", "bpm", BPM),
    ("resting_heart_rate", "resting_heart_rate", "bpm", BPM),
    ("heart_rate_variability", "hrv_sdnn", "ms", &[("ms", 1.0)]),
    (
        "weight_body_mass",
        "body_mass",
        "kg",
        &[("kg", 1.0), ("lb", 0.453_592_37), ("g", 0.001)],
    ),
    ("mindful_minutes", "mindful_minutes", "min", &[("min", 1.0)]),
    (
        "active_energy",
        "active_energy",
        "kcal",
        &[("kcal", 1.0), ("kJ", 1.0 / 4.184)],
    ),
];

const BPM: UnitFactors = &[("bpm", 1.0), ("count/min", 1.0)];

/// Sleep fields of the summarised form (hours) → stage streams.
const SLEEP_FIELDS: &[(&str, &str)] = &[
    ("inBed", "sleep_in_bed"),
    ("core", "sleep_core"),
    ("deep", "sleep_deep"),
    ("rem", "sleep_rem"),
    ("awake", "sleep_awake"),
];

/// Parses a payload. Points that cannot be read are counted by reason
/// (and nothing else is lost); a body that is not this format at all is
/// an error.
pub fn parse(body: &[u8], home: &TimeZone, rules: &StreamRules) -> Result<Parsed, PayloadError> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| PayloadError::Json(e.to_string()))?;
    let data = root.get("data").ok_or(PayloadError::Shape)?;
    let metrics = data.get("metrics").and_then(Value::as_array);
    let workouts = data.get("workouts").and_then(Value::as_array);
    if metrics.is_none() && workouts.is_none() {
        return Err(PayloadError::Shape);
    }
    let mut out = Parsed::default();
    for metric in metrics.into_iter().flatten() {
        let name = metric.get("name").and_then(Value::as_str).unwrap_or("");
        let units = metric.get("units").and_then(Value::as_str).unwrap_or("");
        let points = metric.get("data").and_then(Value::as_array);
        let Some(points) = points.filter(|_| !name.is_empty()) else {
            *out.refused
                .entry("a metric without name or data".into())
                .or_default() += 1;
            continue;
        };
        for point in points {
            let result = match name {
                "sleep_analysis" => sleep(point, home, rules),
                "blood_pressure" => blood_pressure(point, home, rules),
                _ => metric_point(name, units, point, home, rules).map(|o| vec![o]),
            };
            match result {
                Ok(obs) => out.observations.extend(obs),
                Err(why) => *out.refused.entry(format!("{name}: {why}")).or_default() += 1,
            }
        }
    }
    for w in workouts.into_iter().flatten() {
        match workout(w, home, rules) {
            Ok(obs) => out.observations.extend(obs),
            Err(why) => *out.refused.entry(format!("workout: {why}")).or_default() += 1,
        }
    }
    Ok(out)
}

fn stamp(point: &Value, key: &str) -> Result<(Timestamp, Offset), String> {
    let text = point
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("no {key}"))?;
    parse_stamp(text).ok_or_else(|| {
        format!(
            "{key} {:?} is not yyyy-MM-dd HH:mm:ss Z",
            crate::limits::excerpt(text)
        )
    })
}

fn number(point: &Value, key: &str) -> Option<f64> {
    point
        .get(key)
        .and_then(Value::as_f64)
        .filter(|v| v.is_finite())
}

fn source(point: &Value) -> String {
    point
        .get("source")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

#[allow(clippy::too_many_arguments)]
fn observation(
    stream: &str,
    unit: &str,
    id: String,
    start: (Timestamp, Offset),
    end: Option<Timestamp>,
    value: f64,
    origin: String,
    home: &TimeZone,
    rules: &StreamRules,
) -> NewObservation {
    let day = rules
        .day_rule(stream)
        .day_of(start.0, end, Some(start.1), home);
    NewObservation {
        stream: stream.to_string(),
        unit: unit.to_string(),
        source_record_id: id,
        observed_at: start.0,
        local_date: day,
        value,
        ended_at: end,
        utc_offset: Some(start.1),
        origin,
    }
}

/// Stream keys are slugs: `Walking + Running Distance` → `walking_running_distance`.
fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    out.trim_end_matches('_').chars().take(64).collect()
}

fn metric_point(
    name: &str,
    units: &str,
    point: &Value,
    home: &TimeZone,
    rules: &StreamRules,
) -> Result<NewObservation, String> {
    let start = stamp(point, "date")?;
    let raw = number(point, "qty")
        .or_else(|| number(point, "Avg"))
        .ok_or("no qty or Avg")?;
    let (stream, unit, value) = match METRICS.iter().find(|m| m.0 == name) {
        Some((_, stream, unit, from)) => {
            let factor = from
                .iter()
                .find(|(u, _)| *u == units)
                .map(|(_, f)| *f)
                .ok_or_else(|| format!("unit {units:?} not known"))?;
            ((*stream).to_string(), (*unit).to_string(), raw * factor)
        }
        // Any other metric comes in as it is, under its own name.
        None => (slug(name), units.to_string(), raw),
    };
    let origin = source(point);
    let id = format!("{name}|{}|{origin}", start.0);
    Ok(observation(
        &stream, &unit, id, start, None, value, origin, home, rules,
    ))
}

fn blood_pressure(
    point: &Value,
    home: &TimeZone,
    rules: &StreamRules,
) -> Result<Vec<NewObservation>, String> {
    let start = stamp(point, "date")?;
    let origin = source(point);
    let mut obs = Vec::new();
    for key in ["systolic", "diastolic"] {
        let value = number(point, key).ok_or_else(|| format!("no {key}"))?;
        let stream = format!("blood_pressure_{key}");
        let id = format!("blood_pressure|{key}|{}|{origin}", start.0);
        obs.push(observation(
            &stream,
            "mmHg",
            id,
            start,
            None,
            value,
            origin.clone(),
            home,
            rules,
        ));
    }
    Ok(obs)
}

/// Sleep: the summarised night (hours, `sleepStart`/`sleepEnd`) or one
/// stage (`startDate`/`endDate`/`value`).
fn sleep(
    point: &Value,
    home: &TimeZone,
    rules: &StreamRules,
) -> Result<Vec<NewObservation>, String> {
    let origin = source(point);
    if point.get("startDate").is_some() {
        let start = stamp(point, "startDate")?;
        let end = stamp(point, "endDate")?.0;
        if end < start.0 {
            return Err("ends before it starts".into());
        }
        let minutes = end.duration_since(start.0).as_secs_f64() / 60.0;
        let value = point.get("value").and_then(Value::as_str).unwrap_or("");
        let (stream, asleep) = match value {
            "In Bed" => ("sleep_in_bed", false),
            "Awake" => ("sleep_awake", false),
            "Core" => ("sleep_core", true),
            "Deep" => ("sleep_deep", true),
            "REM" => ("sleep_rem", true),
            "Asleep" | "Unspecified" => ("sleep_unspecified", true),
            other => {
                return Err(format!(
                    "sleep value {:?} not known",
                    crate::limits::excerpt(other)
                ));
            }
        };
        let id = format!("sleep|{}|{}|{origin}", start.0, end);
        let mut obs = vec![observation(
            stream,
            "min",
            id.clone(),
            start,
            Some(end),
            minutes,
            origin.clone(),
            home,
            rules,
        )];
        if asleep {
            obs.push(observation(
                "sleep_asleep",
                "min",
                format!("{id}|asleep"),
                start,
                Some(end),
                minutes,
                origin,
                home,
                rules,
            ));
        }
        return Ok(obs);
    }
    let start = stamp(point, "sleepStart").or_else(|_| stamp(point, "inBedStart"))?;
    let end = stamp(point, "sleepEnd")
        .or_else(|_| stamp(point, "inBedEnd"))?
        .0;
    if end < start.0 {
        return Err("sleepEnd is before sleepStart".into());
    }
    // One night, named by its wake-up day: re-sent as it fills.
    let night = rules
        .day_rule("sleep_asleep")
        .day_of(start.0, Some(end), Some(start.1), home);
    let asleep = number(point, "totalSleep")
        .filter(|v| *v > 0.0)
        .or_else(|| number(point, "asleep"))
        .ok_or("no totalSleep or asleep")?;
    let mut obs = vec![observation(
        "sleep_asleep",
        "min",
        format!("sleep_night|{night}|{origin}|asleep"),
        start,
        Some(end),
        asleep * 60.0,
        origin.clone(),
        home,
        rules,
    )];
    for (field, stream) in SLEEP_FIELDS {
        if let Some(hours) = number(point, field).filter(|h| *h > 0.0) {
            obs.push(observation(
                stream,
                "min",
                format!("sleep_night|{night}|{origin}|{field}"),
                start,
                Some(end),
                hours * 60.0,
                origin.clone(),
                home,
                rules,
            ));
        }
    }
    Ok(obs)
}

fn workout(w: &Value, home: &TimeZone, rules: &StreamRules) -> Result<Vec<NewObservation>, String> {
    let start = stamp(w, "start")?;
    let end = stamp(w, "end")?.0;
    let id = w
        .get("id")
        .and_then(Value::as_str)
        .map_or_else(|| format!("{}", start.0), str::to_string);
    let minutes = number(w, "duration")
        .map(|s| s / 60.0)
        .unwrap_or_else(|| end.duration_since(start.0).as_secs_f64() / 60.0);
    let name = w.get("name").and_then(Value::as_str).unwrap_or("workout");
    let origin = source(w);
    Ok(vec![
        observation(
            "workout_minutes",
            "min",
            format!("workout|{id}"),
            start,
            Some(end),
            minutes,
            origin.clone(),
            home,
            rules,
        ),
        observation(
            &format!("workout_minutes_{}", slug(name)),
            "min",
            format!("workout|{id}|by-activity"),
            start,
            Some(end),
            minutes,
            origin,
            home,
            rules,
        ),
    ])
}

/// A day of every metric the tests and the benchmark use, shaped as the
/// app sends it: minute heart rate, hourly steps from two devices, resting
/// heart rate, HRV, weight in pounds, a summarised night, blood pressure,
/// a workout.
pub fn sample_payload(day: jiff::civil::Date, offset: &str) -> String {
    let at = |h: u32, m: u32| format!("{day} {h:02}:{m:02}:00 {offset}");
    let prev = day.yesterday().unwrap_or(day);
    let mut hr = Vec::new();
    for minute in 0..24 * 60 {
        hr.push(format!(
            r#"{{"date":"{}","Min":{},"Avg":{},"Max":{},"source":"Anna’s Apple Watch"}}"#,
            at(minute / 60, minute % 60),
            55 + minute % 30,
            60 + minute % 30,
            70 + minute % 30
        ));
    }
    let mut steps = Vec::new();
    for h in 0..24 {
        steps.push(format!(
            r#"{{"date":"{}","qty":{},"source":"Anna’s iPhone"}}"#,
            at(h, 0),
            100 + h * 10
        ));
        steps.push(format!(
            r#"{{"date":"{}","qty":{},"source":"Anna’s Apple Watch"}}"#,
            at(h, 0),
            120 + h * 10
        ));
    }
    format!(
        r#"{{"data":{{"metrics":[
{{"name":"heart_rate","units":"count/min","data":[{hr}]}},
{{"name":"step_count","units":"count","data":[{steps}]}},
{{"name":"resting_heart_rate","units":"count/min","data":[{{"date":"{d0}","qty":54,"source":"Anna’s Apple Watch"}}]}},
{{"name":"heart_rate_variability","units":"ms","data":[{{"date":"{d0}","Avg":48.2,"Min":30,"Max":70,"source":"Anna’s Apple Watch"}}]}},
{{"name":"weight_body_mass","units":"lb","data":[{{"date":"{d7}","qty":165.4,"source":"Withings"}}]}},
{{"name":"blood_pressure","units":"mmHg","data":[{{"date":"{d7}","systolic":121,"diastolic":79}}]}},
{{"name":"walking_running_distance","units":"km","data":[{{"date":"{d0}","qty":5.4}}]}},
{{"name":"sleep_analysis","units":"hr","data":[{{"date":"{d0}","source":"Anna’s Apple Watch","sleepStart":"{prev} 23:04:17 {offset}","sleepEnd":"{day} 06:36:58 {offset}","inBedStart":"{prev} 23:04:17 {offset}","inBedEnd":"{day} 06:36:58 {offset}","totalSleep":7.0,"core":4.5,"deep":1.0,"rem":1.5,"awake":0.5,"asleep":0,"inBed":0}}]}}
],"workouts":[{{"id":"1C78329D-E5D1-4F1D-8CF5-{day}","name":"Outdoor Run","start":"{w0}","end":"{w1}","duration":1800.5,"activeEnergyBurned":{{"qty":1300.2,"units":"kJ"}},"distance":{{"qty":5.1,"units":"km"}}}}]}}}}"#,
        hr = hr.join(","),
        steps = steps.join(","),
        d0 = at(0, 0),
        d7 = at(7, 5),
        w0 = at(17, 0),
        w1 = at(17, 30),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home() -> TimeZone {
        TimeZone::get("Europe/London").unwrap()
    }

    #[test]
    fn a_day_of_every_metric_is_read_in_normalised_units() {
        let body = sample_payload("2026-11-20".parse().unwrap(), "+0000");
        let p = parse(body.as_bytes(), &home(), &StreamRules::default()).unwrap();
        assert!(p.refused.is_empty(), "{:?}", p.refused);
        let of = |s: &str| {
            p.observations
                .iter()
                .filter(|o| o.stream == s)
                .collect::<Vec<_>>()
        };
        assert_eq!(of("heart_rate").len(), 1440);
        assert_eq!(of("steps").len(), 48);
        assert!((of("body_mass")[0].value - 165.4 * 0.453_592_37).abs() < 1e-9);
        assert_eq!(of("blood_pressure_systolic")[0].value, 121.0);
        assert_eq!(of("sleep_asleep")[0].value, 420.0);
        assert_eq!(of("sleep_asleep")[0].local_date.to_string(), "2026-11-20");
        assert_eq!(of("walking_running_distance")[0].unit, "km");
        assert_eq!(of("workout_minutes_outdoor_run")[0].value, 1800.5 / 60.0);
        let ids: std::collections::HashSet<_> =
            p.observations.iter().map(|o| &o.source_record_id).collect();
        assert_eq!(ids.len(), p.observations.len());
    }

    #[test]
    fn garbage_is_refused_point_by_point_or_as_a_whole() {
        let bad = br#"{"data":{"metrics":[{"name":"step_count","units":"count","data":[
            {"date":"2026-11-20 10:00:00 +0000","qty":5},
            {"date":"yesterday","qty":5},
            {"date":"2026-11-20 11:00:00 +0000","qty":"many"}]},
            {"name":"weight_body_mass","units":"stone-ish","data":[{"date":"2026-11-20 10:00:00 +0000","qty":5}]}]}}"#;
        let p = parse(bad, &home(), &StreamRules::default()).unwrap();
        assert_eq!(p.observations.len(), 1);
        assert_eq!(p.refused.values().sum::<usize>(), 3, "{:?}", p.refused);
        assert!(matches!(
            parse(b"{]", &home(), &StreamRules::default()),
            Err(PayloadError::Json(_))
        ));
        assert!(matches!(
            parse(br#"{"data":{}}"#, &home(), &StreamRules::default()),
            Err(PayloadError::Shape)
        ));
    }
}

//! Withings (Public Health Data API, OAuth2): weight and body composition
//! from a scale, blood pressure and pulse from a cuff, and each night's
//! sleep summary from a sleep analyser or watch.
//!
//! Connected like Oura (the sources page's Connect button), but Withings
//! speaks its own OAuth2 dialect (`action=requesttoken`, answers wrapped in
//! `{"status", "body"}`: `service::oauth::TokenDialect::Withings`) and
//! takes no PKCE. Its API is `POST` with form parameters and answers HTTP
//! 200 with a `status` of its own (0: fine; 401: the token was refused;
//! 601: too many requests). Both collections are read by `lastupdate`
//! (what was created or changed since), so an edited weigh-in or a night
//! Withings re-scored comes again and replaces the stored value; each read
//! goes back `overlap_days` before the last change read.
//!
//! A measure group Withings could not attribute to the person for sure
//! (`attrib` 1: a scale shared at home) is skipped and counted, until the
//! person assigns it in the Withings app; goals (`category` 2) are not
//! measurements.

use jiff::tz::{Offset, TimeZone};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::service::config::Config;
use crate::service::http::{ApiClient, ApiError};
use crate::service::oauth::TokenDialect;
use crate::service::sources::granted::{Granted, Login, LoginConfig, Provider, Renewal};
use crate::service::sources::{Owner, Poll, Source, SourceError, read_cursor, write_cursor};
use crate::service::store::{NewObservation, SourceRow, Store};
use crate::service::streams::{DayRule, StreamRules};

/// The source kind.
pub const KIND: &str = "withings";

/// Withings' endpoints; its scopes are comma-separated in one parameter
/// (`user.metrics`: measures; `user.activity`: sleep).
pub const PROVIDER: Provider = Provider {
    kind: KIND,
    authorize_url: "https://account.withings.com/oauth2_user/authorize2",
    token_url: "https://wbsapi.withings.net/v2/oauth2",
    api_url: "https://wbsapi.withings.net",
    scopes: &["user.metrics,user.activity"],
    credentials_in_body: true,
    pkce: false,
    dialect: TokenDialect::Withings,
};

/// Measure types read: (Withings type, stream, unit).
const MEASURES: &[(i64, &str, &str)] = &[
    (1, "body_mass", "kg"),
    (5, "lean_body_mass", "kg"),
    (6, "body_fat_percentage", "%"),
    (8, "fat_mass", "kg"),
    (9, "blood_pressure_diastolic", "mmHg"),
    (10, "blood_pressure_systolic", "mmHg"),
    (11, "heart_rate", "bpm"),
    (76, "muscle_mass", "kg"),
    (77, "body_water", "kg"),
    (88, "bone_mass", "kg"),
];

/// Sleep summary fields read: (field, stream, unit, scale).
const SLEEP: &[(&str, &str, &str, f64)] = &[
    ("total_sleep_time", "sleep_asleep", "min", 1.0 / 60.0),
    ("deepsleepduration", "sleep_deep", "min", 1.0 / 60.0),
    ("remsleepduration", "sleep_rem", "min", 1.0 / 60.0),
    ("lightsleepduration", "sleep_core", "min", 1.0 / 60.0),
    ("wakeupduration", "sleep_awake", "min", 1.0 / 60.0),
    ("total_timeinbed", "sleep_in_bed", "min", 1.0 / 60.0),
    // A ratio (0 to 1) at Withings, a percentage in nof1d as at Oura.
    ("sleep_efficiency", "sleep_efficiency", "%", 100.0),
    ("sleep_latency", "sleep_latency", "min", 1.0 / 60.0),
    ("wakeupcount", "sleep_wake_ups", "count", 1.0),
    ("hr_average", "sleep_heart_rate", "bpm", 1.0),
    ("hr_min", "sleep_lowest_heart_rate", "bpm", 1.0),
    ("rr_average", "respiratory_rate", "breaths/min", 1.0),
    ("sleep_score", "withings_sleep_score", "score", 1.0),
];

const ORIGIN: &str = "Withings";

/// The most pages read from one collection in one poll.
const MAX_PAGES: usize = 100;

/// A connected Withings account, ready to poll.
pub struct Withings {
    name: String,
    api: String,
    grant: Granted,
    client: ApiClient,
    settings: LoginConfig,
    owner: Owner,
}

/// Builds the adapter of a stored Withings source: `None` until connected,
/// while it needs re-authorisation, or once it left the config.
pub fn adapter(
    row: &SourceRow,
    store: &Store,
    config: &Config,
) -> Result<Option<Box<dyn Source>>, SourceError> {
    let Some(login) = Login::of(row, store, config, &PROVIDER)? else {
        return Ok(None);
    };
    Ok(Some(Box::new(Withings {
        name: login.name,
        api: login.api,
        grant: login.grant,
        client: login.client,
        settings: login.settings,
        owner: login.owner,
    })))
}

/// Where the reading stands: per collection, the last change Withings
/// reported (its clock, Unix seconds).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Cursor {
    measures: Option<i64>,
    sleep: Option<i64>,
    /// When the last poll read Withings.
    read_at: Option<Timestamp>,
}

impl Source for Withings {
    fn name(&self) -> &str {
        &self.name
    }

    fn authorise(&self, now: Timestamp) -> Result<Option<Renewal>, SourceError> {
        self.grant.renew(now)
    }

    fn due(&self, cursor: Option<&str>, now: Timestamp) -> bool {
        crate::service::sources::granted::due(cursor, self.settings.poll_minutes, now)
    }

    fn poll(&self, cursor: Option<&str>, now: Timestamp) -> Result<Poll, SourceError> {
        let mut cursor: Cursor = read_cursor(&self.name, cursor)?;
        let overlap = 86_400 * i64::from(self.settings.overlap_days);
        let first = now.as_second() - 86_400 * i64::from(self.settings.backfill_days);
        let since = |last: Option<i64>| last.map_or(first, |t| (t - overlap).max(first));
        let mut poll = Poll::default();

        let types = MEASURES
            .iter()
            .map(|(t, ..)| t.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let form = [
            ("action", "getmeas".to_string()),
            ("meastypes", types),
            ("category", "1".to_string()),
            ("lastupdate", since(cursor.measures).to_string()),
        ];
        let bodies = self.pages("measure", &form)?;
        let mut ambiguous = 0;
        for body in &bodies {
            if let Some(t) = body.get("updatetime").and_then(Value::as_i64) {
                cursor.measures = Some(cursor.measures.map_or(t, |c| c.max(t)));
            }
            let zone = body
                .get("timezone")
                .and_then(Value::as_str)
                .and_then(|z| TimeZone::get(z).ok());
            let groups = body.get("measuregrps").and_then(Value::as_array);
            for group in groups.into_iter().flatten() {
                match measure_group(group, zone.as_ref(), &self.owner.rules, &self.owner.home) {
                    Ok(Group::Values(obs)) => poll.observations.extend(obs),
                    Ok(Group::Ambiguous) => ambiguous += 1,
                    Ok(Group::NotAMeasurement) => {}
                    Err(why) => refuse(&mut poll, "measures", why),
                }
            }
        }
        if ambiguous > 0 {
            poll.problems.push(format!(
                "measures: {ambiguous} weigh-ins skipped that Withings could not attribute to this person (assign them in the Withings app to have them read)"
            ));
        }

        let form = [
            ("action", "getsummary".to_string()),
            ("lastupdate", since(cursor.sleep).to_string()),
            (
                "data_fields",
                SLEEP.iter().map(|(f, ..)| *f).collect::<Vec<_>>().join(","),
            ),
        ];
        let bodies = self.pages("v2/sleep", &form)?;
        for body in &bodies {
            let nights = body.get("series").and_then(Value::as_array);
            for night in nights.into_iter().flatten() {
                match sleep_summary(night, &self.owner.rules, &self.owner.home) {
                    Ok((modified, obs)) => {
                        if let Some(m) = modified {
                            cursor.sleep = Some(cursor.sleep.map_or(m, |c| c.max(m)));
                        }
                        poll.observations.extend(obs);
                    }
                    Err(why) => refuse(&mut poll, "sleep", why),
                }
            }
        }

        poll.into_stream_units(&self.owner.stream_units);
        cursor.read_at = Some(now);
        poll.cursor = Some(write_cursor(&self.name, &cursor)?);
        Ok(poll)
    }
}

fn refuse(poll: &mut Poll, collection: &str, why: String) {
    poll.refused += 1;
    if poll.problems.len() < crate::limits::LISTED_PROBLEMS {
        poll.problems.push(format!("{collection}: {why}"));
    }
}

impl Withings {
    /// Every page of a service's answer for `form` (the `body` of each),
    /// following `more` and `offset`.
    fn pages(&self, service: &str, form: &[(&str, String)]) -> Result<Vec<Value>, SourceError> {
        let url = format!("{}/{service}", self.api);
        let token = self.grant.access_token();
        let mut bodies = Vec::new();
        let mut offset: Option<i64> = None;
        for _ in 0..MAX_PAGES {
            let mut f = form.to_vec();
            if let Some(o) = offset {
                f.push(("offset", o.to_string()));
            }
            let answer = self
                .client
                .post_form_json(&url, &f, &token)
                .map_err(|e| self.api_error(e))?;
            let body = self.body_of(&url, answer)?;
            // `more` is 0/1 for measures and a boolean for sleep.
            let more = match body.get("more") {
                Some(Value::Bool(b)) => *b,
                Some(v) => v.as_i64().is_some_and(|n| n != 0),
                None => false,
            };
            offset = body.get("offset").and_then(Value::as_i64);
            bodies.push(body);
            if !more || offset.is_none() {
                return Ok(bodies);
            }
        }
        Err(SourceError::Remote {
            source_name: self.name.clone(),
            message: format!("{url}: more than {MAX_PAGES} pages; stopped"),
        })
    }

    /// The `body` of an answer whose `status` is 0; Withings' other
    /// statuses as errors that say what to do.
    fn body_of(&self, url: &str, answer: Value) -> Result<Value, SourceError> {
        let status = answer.get("status").and_then(Value::as_i64);
        let error = answer
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no reason given");
        let remote = |message: String| SourceError::Remote {
            source_name: self.name.clone(),
            message,
        };
        match status {
            Some(0) => answer
                .get("body")
                .cloned()
                .ok_or_else(|| remote(format!("{url}: an answer without a body"))),
            Some(100..=102 | 200 | 401) => Err(SourceError::TokenRejected {
                source_name: self.name.clone(),
            }),
            Some(601) => Err(remote(format!(
                "Withings asks to slow down (status 601, {error}): read again later; a larger poll_minutes helps"
            ))),
            Some(s) => Err(remote(format!("{url}: Withings status {s}: {error}"))),
            None => Err(remote(format!("{url}: an answer without a status"))),
        }
    }

    fn api_error(&self, e: ApiError) -> SourceError {
        match e {
            ApiError::Refused { status: 401, .. } => SourceError::TokenRejected {
                source_name: self.name.clone(),
            },
            other => SourceError::Remote {
                source_name: self.name.clone(),
                message: other.to_string(),
            },
        }
    }
}

/// What a measure group comes to.
#[derive(Debug)]
enum Group {
    /// Its values.
    Values(Vec<NewObservation>),
    /// A device measure Withings could not attribute to the person.
    Ambiguous,
    /// A goal, not a measurement.
    NotAMeasurement,
}

/// A measure group's values (`value × 10^unit`), dated where the person was
/// (`zone`: the group's or the account's zone, else `home`).
fn measure_group(
    g: &Value,
    account_zone: Option<&TimeZone>,
    rules: &StreamRules,
    home: &TimeZone,
) -> Result<Group, String> {
    let id = g
        .get("grpid")
        .and_then(Value::as_i64)
        .ok_or("a measure group without a grpid")?;
    if g.get("category").and_then(Value::as_i64) == Some(2) {
        return Ok(Group::NotAMeasurement);
    }
    if g.get("attrib").and_then(Value::as_i64) == Some(1) {
        return Ok(Group::Ambiguous);
    }
    let at = g
        .get("date")
        .and_then(Value::as_i64)
        .and_then(|s| Timestamp::from_second(s).ok())
        .ok_or_else(|| format!("group {id}: no readable date"))?;
    let zone = g
        .get("timezone")
        .and_then(Value::as_str)
        .and_then(|z| TimeZone::get(z).ok())
        .or_else(|| account_zone.cloned());
    let offset = zone.map(|z| z.to_offset(at));
    let measures = g
        .get("measures")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("group {id}: no measures"))?;
    let mut out = Vec::new();
    for m in measures {
        let kind = m.get("type").and_then(Value::as_i64);
        let Some((kind, stream, unit)) = MEASURES.iter().find(|(t, ..)| Some(*t) == kind) else {
            continue;
        };
        let (Some(value), Some(exponent)) = (
            m.get("value").and_then(Value::as_i64),
            m.get("unit").and_then(Value::as_i64),
        ) else {
            return Err(format!("group {id}: type {kind} without a value and unit"));
        };
        if !(-20..=20).contains(&exponent) {
            return Err(format!("group {id}: type {kind}: unit exponent {exponent}"));
        }
        out.push(NewObservation {
            stream: stream.to_string(),
            unit: unit.to_string(),
            source_record_id: format!("meas:{id}:{kind}"),
            observed_at: at,
            local_date: rules.day_rule(stream).day_of(at, None, offset, home),
            value: value as f64 * 10f64.powi(exponent as i32),
            ended_at: None,
            utc_offset: offset,
            origin: ORIGIN.into(),
        });
    }
    Ok(Group::Values(out))
}

/// A night's summary: when Withings last changed it, and its values dated
/// by each stream's day rule (sleep's wake-up day unless the person set
/// another), at the offset where the person woke.
fn sleep_summary(
    night: &Value,
    rules: &StreamRules,
    home: &TimeZone,
) -> Result<(Option<i64>, Vec<NewObservation>), String> {
    let time = |key: &str| {
        night
            .get(key)
            .and_then(Value::as_i64)
            .and_then(|s| Timestamp::from_second(s).ok())
    };
    let (Some(start), Some(end)) = (time("startdate"), time("enddate")) else {
        return Err("a night without startdate and enddate".into());
    };
    if end < start || end.duration_since(start) > SignedDuration::from_hours(36) {
        return Err(format!("a night from {start} to {end}"));
    }
    let id = night
        .get("id")
        .and_then(Value::as_i64)
        .map_or_else(|| format!("start{}", start.as_second()), |i| i.to_string());
    let offset: Option<Offset> = night
        .get("timezone")
        .and_then(Value::as_str)
        .and_then(|z| TimeZone::get(z).ok())
        .map(|z| z.to_offset(end));
    let data = night
        .get("data")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("night {id}: no data"))?;
    let mut out = Vec::new();
    for (field, stream, unit, scale) in SLEEP {
        let Some(v) = data.get(*field).and_then(Value::as_f64) else {
            continue;
        };
        if !v.is_finite() || v < 0.0 {
            continue;
        }
        out.push(NewObservation {
            stream: stream.to_string(),
            unit: unit.to_string(),
            source_record_id: format!("sleep:{id}:{field}"),
            observed_at: start,
            // Every value of a night goes to its wake-up day (unless the
            // person set another rule), as Oura's do.
            local_date: rules
                .0
                .get(*stream)
                .map_or(DayRule::WAKE_UP, |r| r.day)
                .day_of(start, Some(end), offset, home),
            value: v * scale,
            ended_at: Some(end),
            utc_offset: offset,
            origin: ORIGIN.into(),
        });
    }
    Ok((night.get("modified").and_then(Value::as_i64), out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Any JSON scalar a broken or hostile answer might hold.
    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            (-40i64..40).prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("JSON has no NaN", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            "[a-zA-Z/_ -]{0,12}".prop_map(Value::String),
        ]
    }

    /// An object whose keys come from `keys` (the vendor's own) with any
    /// values, some of them lists of such objects.
    fn object(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
        prop::collection::vec((prop::sample::select(keys), scalar()), 0..12).prop_map(|pairs| {
            Value::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
        })
    }

    const GROUP_KEYS: &[&str] = &[
        "grpid", "attrib", "date", "category", "timezone", "created", "modified",
    ];
    const MEASURE_KEYS: &[&str] = &["value", "type", "unit", "algo", "fm"];
    const NIGHT_KEYS: &[&str] = &["id", "startdate", "enddate", "timezone", "modified", "date"];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn junk_in_withings_answers_never_panics_and_keeps_values_finite(
            mut group in object(GROUP_KEYS),
            measures in prop::collection::vec(object(MEASURE_KEYS), 0..6),
            mut night in object(NIGHT_KEYS),
            data in prop::collection::vec((prop::sample::select(SLEEP.iter().map(|f| f.0).collect::<Vec<_>>()), scalar()), 0..14),
        ) {
            let home = TimeZone::get("Europe/Berlin").unwrap();
            let rules = StreamRules::default();
            group["measures"] = Value::Array(measures);
            if let Ok(Group::Values(obs)) = measure_group(&group, None, &rules, &home) {
                prop_assert!(obs.iter().all(|o| o.value.is_finite()));
            }
            night["data"] = Value::Object(data.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
            if let Ok((_, obs)) = sleep_summary(&night, &rules, &home) {
                prop_assert!(obs.iter().all(|o| o.value.is_finite() && o.value >= 0.0));
            }
        }
    }

    fn by_stream(obs: &[NewObservation]) -> std::collections::HashMap<&str, &NewObservation> {
        obs.iter().map(|o| (o.stream.as_str(), o)).collect()
    }

    #[test]
    fn a_weigh_in_and_a_blood_pressure_reading_become_values_on_the_local_day() {
        let home = TimeZone::get("Europe/Berlin").unwrap();
        let paris = TimeZone::get("Europe/Paris").unwrap();
        // 2026-06-01 22:30 UTC is 00:30 on 2 June in Paris.
        let scale = json!({"grpid": 1234567890, "attrib": 0, "date": 1780353000, "created": 1780353010,
            "modified": 1780353010, "category": 1, "deviceid": "892359876fd8805ac45bab078c4828692f0276b1",
            "measures": [{"value": 71250, "type": 1, "unit": -3, "algo": 3, "fm": 131},
                         {"value": 1842, "type": 6, "unit": -2},
                         {"value": 5312, "type": 76, "unit": -2},
                         {"value": 99, "type": 170, "unit": 0}],
            "modelid": 13, "model": "Body Cardio", "comment": null});
        let Group::Values(obs) =
            measure_group(&scale, Some(&paris), &StreamRules::default(), &home).unwrap()
        else {
            panic!("values expected");
        };
        let by = by_stream(&obs);
        assert_eq!(obs.len(), 3, "visceral fat (170) is not read");
        assert!((by["body_mass"].value - 71.25).abs() < 1e-12);
        assert!((by["body_fat_percentage"].value - 18.42).abs() < 1e-12);
        assert!((by["muscle_mass"].value - 53.12).abs() < 1e-12);
        assert_eq!(by["body_mass"].local_date, jiff::civil::date(2026, 6, 2));
        assert_eq!(by["body_mass"].source_record_id, "meas:1234567890:1");
        assert_eq!(by["body_mass"].utc_offset.map(|o| o.seconds()), Some(7200));

        let cuff = json!({"grpid": 77, "attrib": 7, "date": 1780300000, "category": 1,
            "measures": [{"value": 128, "type": 10, "unit": 0}, {"value": 82, "type": 9, "unit": 0},
                         {"value": 64, "type": 11, "unit": 0}]});
        let Group::Values(obs) =
            measure_group(&cuff, None, &StreamRules::default(), &home).unwrap()
        else {
            panic!("values expected");
        };
        let by = by_stream(&obs);
        assert_eq!(by["blood_pressure_systolic"].value, 128.0);
        assert_eq!(by["blood_pressure_diastolic"].value, 82.0);
        assert_eq!(by["heart_rate"].value, 64.0);
        assert_eq!(
            by["heart_rate"].utc_offset, None,
            "no zone: the home zone dates it"
        );

        // Someone else's weigh-in, a goal, and junk.
        let shared =
            json!({"grpid": 5, "attrib": 1, "date": 1780300000, "category": 1, "measures": []});
        assert!(matches!(
            measure_group(&shared, None, &StreamRules::default(), &home),
            Ok(Group::Ambiguous)
        ));
        let goal =
            json!({"grpid": 6, "attrib": 2, "date": 1780300000, "category": 2, "measures": []});
        assert!(matches!(
            measure_group(&goal, None, &StreamRules::default(), &home),
            Ok(Group::NotAMeasurement)
        ));
        let no_unit =
            json!({"grpid": 8, "date": 1780300000, "measures": [{"value": 70, "type": 1}]});
        let e = measure_group(&no_unit, None, &StreamRules::default(), &home).unwrap_err();
        assert!(e.contains("group 8"), "{e}");
        assert!(measure_group(&json!({"date": 1}), None, &StreamRules::default(), &home).is_err());
    }

    #[test]
    fn a_night_goes_to_the_wake_up_day_in_minutes_and_percent() {
        let home = TimeZone::get("Europe/London").unwrap();
        // 31 May 22:40 to 1 June 06:10 UTC, in New York (UTC-4): woke at
        // 02:10 on 1 June local.
        let night = json!({"id": 2081804182, "timezone": "America/New_York", "model": 32, "model_id": 63,
            "startdate": 1780267200, "enddate": 1780294200, "date": "2026-06-01",
            "created": 1780300000, "modified": 1780301234,
            "data": {"total_sleep_time": 25200, "deepsleepduration": 5400, "remsleepduration": 6300,
                     "lightsleepduration": 13500, "wakeupduration": 1500, "total_timeinbed": 27000,
                     "sleep_efficiency": 0.93, "sleep_latency": 600, "wakeupcount": 2,
                     "hr_average": 58, "hr_min": 49, "rr_average": 14, "sleep_score": 81,
                     "snoring": 120}});
        let (modified, obs) = sleep_summary(&night, &StreamRules::default(), &home).unwrap();
        assert_eq!(modified, Some(1780301234));
        let by = by_stream(&obs);
        assert_eq!(by["sleep_asleep"].value, 420.0);
        assert_eq!(by["sleep_in_bed"].value, 450.0);
        assert!((by["sleep_efficiency"].value - 93.0).abs() < 1e-9);
        assert_eq!(by["sleep_wake_ups"].value, 2.0);
        assert_eq!(by["withings_sleep_score"].value, 81.0);
        assert_eq!(by["sleep_asleep"].local_date, jiff::civil::date(2026, 6, 1));
        // Not only the sleep_* streams: the whole night's values.
        assert_eq!(
            by["respiratory_rate"].local_date,
            jiff::civil::date(2026, 6, 1)
        );
        assert_eq!(
            by["withings_sleep_score"].local_date,
            jiff::civil::date(2026, 6, 1)
        );
        assert_eq!(
            by["sleep_asleep"].source_record_id,
            "sleep:2081804182:total_sleep_time"
        );
        assert!(!by.contains_key("snoring"));
        assert!(sleep_summary(&json!({"startdate": 5}), &StreamRules::default(), &home).is_err());
        let backwards = json!({"startdate": 1780294200, "enddate": 1780267200, "data": {}});
        assert!(sleep_summary(&backwards, &StreamRules::default(), &home).is_err());
    }
}

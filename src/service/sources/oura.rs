//! Oura (API v2, OAuth2): daily sleep, readiness and activity, sleep
//! periods and heart rate.
//!
//! The person connects on the sources page (authorization code with PKCE,
//! `service::oauth`); the grant is refreshed before it expires, and a
//! refused refresh marks the source "needs re-authorisation" (the poll job
//! tells the person once). Each collection keeps its own cursor (the last
//! day read); a poll re-reads `overlap_days` before it, because Oura revises
//! recent days. Oura allows a few thousand requests a day, so a source is
//! read at most every `poll_minutes` whatever the job's period.

use std::collections::BTreeMap;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::service::config::Config;
use crate::service::http::{ApiClient, ApiError};
use crate::service::oauth::TokenDialect;
use crate::service::sources::granted::{Granted, Login, LoginConfig, Provider, Renewal};
use crate::service::sources::{Poll, Source, SourceError, read_cursor, write_cursor};
use crate::service::store::{NewObservation, SourceRow, Store};
use crate::service::streams::{DayRule, StreamRules};

/// The source kind.
pub const KIND: &str = "oura";

/// Oura's endpoints and scopes: daily summaries and sleep periods
/// (`daily`), heart rate, and `personal` (Oura's consent screen lists it
/// with them).
pub const PROVIDER: Provider = Provider {
    kind: KIND,
    authorize_url: "https://cloud.ouraring.com/oauth/authorize",
    token_url: "https://api.ouraring.com/oauth/token",
    api_url: "https://api.ouraring.com",
    scopes: &["daily", "heartrate", "personal"],
    credentials_in_body: false,
    pkce: true,
    dialect: TokenDialect::Standard,
};

/// A connected Oura account, ready to poll.
pub struct Oura {
    name: String,
    api: String,
    /// The grant in use, renewed before it expires.
    grant: Granted,
    client: ApiClient,
    settings: LoginConfig,
    home: TimeZone,
    rules: StreamRules,
    stream_units: std::collections::HashMap<String, String>,
}

/// Builds the adapter of a stored Oura source: `None` until the person has
/// connected it, while it needs re-authorisation, or once it left the config.
pub fn adapter(
    row: &SourceRow,
    store: &Store,
    config: &Config,
) -> Result<Option<Box<dyn Source>>, SourceError> {
    let Some(login) = Login::of(row, store, config, &PROVIDER)? else {
        return Ok(None);
    };
    Ok(Some(Box::new(Oura {
        name: login.name,
        api: login.api,
        grant: login.grant,
        client: login.client,
        settings: login.settings,
        home: login.owner.home,
        rules: login.owner.rules,
        stream_units: login.owner.stream_units,
    })))
}

/// Where each collection stands, and when Oura was last read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Cursor {
    /// The last day read, per daily collection.
    days: BTreeMap<String, Date>,
    /// The last heart-rate sample read.
    heart_rate: Option<Timestamp>,
    /// When the last poll read Oura.
    read_at: Option<Timestamp>,
}

/// A value of a document field into a stream: (field, stream, unit, scale).
type Field = (&'static str, &'static str, &'static str, f64);

/// The daily collections and the fields each gives.
const DAILY: &[(&str, &[Field])] = &[
    (
        "daily_sleep",
        &[("score", "oura_sleep_score", "score", 1.0)],
    ),
    (
        "daily_readiness",
        &[
            ("score", "oura_readiness_score", "score", 1.0),
            // A difference: into a °F stream it must not get +32, so its
            // unit converts to nothing else.
            (
                "temperature_deviation",
                "oura_temperature_deviation",
                "°C difference",
                1.0,
            ),
        ],
    ),
    (
        "daily_activity",
        &[
            ("steps", "steps", "count", 1.0),
            ("active_calories", "active_energy", "kcal", 1.0),
            ("score", "oura_activity_score", "score", 1.0),
        ],
    ),
];

/// The fields of a sleep period (durations from seconds to minutes).
const SLEEP: &[Field] = &[
    ("total_sleep_duration", "sleep_asleep", "min", 1.0 / 60.0),
    ("deep_sleep_duration", "sleep_deep", "min", 1.0 / 60.0),
    ("rem_sleep_duration", "sleep_rem", "min", 1.0 / 60.0),
    ("light_sleep_duration", "sleep_core", "min", 1.0 / 60.0),
    ("awake_time", "sleep_awake", "min", 1.0 / 60.0),
    ("time_in_bed", "sleep_in_bed", "min", 1.0 / 60.0),
    ("efficiency", "sleep_efficiency", "%", 1.0),
    ("latency", "sleep_latency", "min", 1.0 / 60.0),
    ("average_hrv", "hrv_rmssd", "ms", 1.0),
    ("lowest_heart_rate", "sleep_lowest_heart_rate", "bpm", 1.0),
    ("average_breath", "respiratory_rate", "breaths/min", 1.0),
];

const ORIGIN: &str = "Oura";

/// The most pages read from one collection in one poll.
const MAX_PAGES: usize = 200;

impl Source for Oura {
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
        let today = now.to_zoned(self.home.clone()).date();
        let first = today
            .checked_sub(jiff::Span::new().days(i64::from(self.settings.backfill_days)))
            .unwrap_or(today);
        let overlap = jiff::Span::new().days(i64::from(self.settings.overlap_days));
        // Oura's end_date is inclusive for some collections and not for
        // others: ask to tomorrow.
        let end = today.tomorrow().unwrap_or(today);
        let mut poll = Poll::default();
        for (collection, fields) in DAILY {
            let start = cursor
                .days
                .get(*collection)
                .and_then(|d| d.checked_sub(overlap).ok())
                .map_or(first, |d| d.max(first));
            let docs = self.collection(
                collection,
                &[
                    ("start_date", start.to_string()),
                    ("end_date", end.to_string()),
                ],
                &mut poll,
            )?;
            for doc in &docs {
                match self.daily(collection, fields, doc) {
                    Ok((day, obs)) => {
                        let kept = cursor.days.entry(collection.to_string()).or_insert(day);
                        *kept = (*kept).max(day);
                        poll.observations.extend(obs);
                    }
                    Err(why) => refuse(&mut poll, collection, why),
                }
            }
        }
        let start = cursor
            .days
            .get("sleep")
            .and_then(|d| d.checked_sub(overlap).ok())
            .map_or(first, |d| d.max(first));
        let docs = self.collection(
            "sleep",
            &[
                ("start_date", start.to_string()),
                ("end_date", end.to_string()),
            ],
            &mut poll,
        )?;
        let mut skipped = 0;
        for doc in &docs {
            // A period Oura now calls rest or deleted (the person removed
            // it in the app) is not a night: what was stored of it goes.
            poll.withdrawn.extend(not_sleep_records(doc));
            match self.sleep_period(doc) {
                Ok(Some((day, obs))) => {
                    let kept = cursor.days.entry("sleep".into()).or_insert(day);
                    *kept = (*kept).max(day);
                    poll.observations.extend(obs);
                }
                Ok(None) => skipped += 1,
                Err(why) => refuse(&mut poll, "sleep", why),
            }
        }
        if skipped > 0 {
            poll.problems
                .push(format!("sleep: {skipped} rest or deleted periods skipped"));
        }
        if self.settings.heart_rate != Some(false) {
            self.heart_rate(&mut cursor, now, first, &mut poll)?;
        }
        poll.into_stream_units(&self.stream_units);
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

impl Oura {
    /// A collection's documents; a collection that cannot be read is said
    /// in the poll's problems and read again next time (its cursor stays),
    /// without holding up the others. A refused token stops the poll.
    fn collection(
        &self,
        name: &str,
        query: &[(&str, String)],
        poll: &mut Poll,
    ) -> Result<Vec<Value>, SourceError> {
        match self.documents(name, query) {
            Ok(docs) => Ok(docs),
            Err(e @ SourceError::TokenRejected { .. }) => Err(e),
            Err(e) => {
                poll.problems
                    .push(format!("{name}: not read ({e}); read again next time"));
                Ok(Vec::new())
            }
        }
    }

    /// Every document of a collection for `query`, page by page.
    fn documents(
        &self,
        collection: &str,
        query: &[(&str, String)],
    ) -> Result<Vec<Value>, SourceError> {
        let url = format!("{}/v2/usercollection/{collection}", self.api);
        let token = self.grant.access_token();
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut q: Vec<(&str, String)> = query.to_vec();
            if let Some(t) = &next {
                q.push(("next_token", t.clone()));
            }
            let page = self
                .client
                .get_json(&url, &q, &token)
                .map_err(|e| self.api_error(e))?;
            let Some(data) = page.get("data").and_then(Value::as_array) else {
                return Err(SourceError::Remote {
                    source_name: self.name.clone(),
                    message: format!("{url}: an answer without a data list"),
                });
            };
            out.extend(data.iter().cloned());
            next = page
                .get("next_token")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if next.is_none() {
                return Ok(out);
            }
        }
        Err(SourceError::Remote {
            source_name: self.name.clone(),
            message: format!("{url}: more than {MAX_PAGES} pages; stopped"),
        })
    }

    fn api_error(&self, e: ApiError) -> SourceError {
        match e {
            ApiError::Refused { status: 401, .. } => SourceError::TokenRejected {
                source_name: self.name.clone(),
            },
            ApiError::Refused {
                status: 403, body, ..
            } => SourceError::Remote {
                source_name: self.name.clone(),
                message: format!(
                    "Oura refused (403: the Oura membership has lapsed, or a permission was not granted on connecting): {body}"
                ),
            },
            other => SourceError::Remote {
                source_name: self.name.clone(),
                message: other.to_string(),
            },
        }
    }

    /// A daily document: its day and its fields' values.
    fn daily(
        &self,
        collection: &str,
        fields: &[Field],
        doc: &Value,
    ) -> Result<(Date, Vec<NewObservation>), String> {
        let day: Date = doc
            .get("day")
            .and_then(Value::as_str)
            .and_then(|d| d.parse().ok())
            .ok_or("a document without a readable day")?;
        let stamp = doc.get("timestamp").and_then(Value::as_str).and_then(|t| {
            t.parse::<jiff::Zoned>()
                .ok()
                .or_else(|| parse_offset_time(t))
        });
        let (observed_at, offset) = match &stamp {
            Some(z) => (z.timestamp(), Some(z.offset())),
            None => (
                self.home
                    .to_ambiguous_timestamp(day.at(12, 0, 0, 0))
                    .compatible()
                    .map_err(|e| e.to_string())?,
                None,
            ),
        };
        let mut out = Vec::new();
        for (field, stream, unit, scale) in fields {
            let Some(v) = doc.get(*field).and_then(Value::as_f64) else {
                continue;
            };
            out.push(NewObservation {
                stream: stream.to_string(),
                unit: unit.to_string(),
                source_record_id: format!("{collection}:{day}:{field}"),
                observed_at,
                local_date: day,
                value: v * scale,
                ended_at: None,
                utc_offset: offset,
                origin: ORIGIN.into(),
            });
        }
        Ok((day, out))
    }

    /// A sleep period's values, dated by each stream's day rule (sleep's
    /// wake-up day unless the person set another); `None` for rest and
    /// deleted periods.
    fn sleep_period(&self, doc: &Value) -> Result<Option<(Date, Vec<NewObservation>)>, String> {
        let kind = doc.get("type").and_then(Value::as_str).unwrap_or("sleep");
        if matches!(kind, "rest" | "deleted") {
            return Ok(None);
        }
        let id = doc
            .get("id")
            .and_then(Value::as_str)
            .ok_or("a sleep period without an id")?;
        let time = |key: &str| -> Result<jiff::Zoned, String> {
            let text = doc
                .get(key)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("a sleep period without {key}"))?;
            parse_offset_time(text)
                .ok_or_else(|| format!("{key} {text:?} is not a time with an offset"))
        };
        let (start, end) = (time("bedtime_start")?, time("bedtime_end")?);
        let mut out = Vec::new();
        let mut day = None;
        for (field, stream, unit, scale) in SLEEP {
            let Some(v) = doc.get(*field).and_then(Value::as_f64) else {
                continue;
            };
            let rule = self
                .rules
                .0
                .get(*stream)
                .map_or(DayRule::WAKE_UP, |r| r.day);
            let date = rule.day_of(
                start.timestamp(),
                Some(end.timestamp()),
                Some(end.offset()),
                &self.home,
            );
            day = Some(day.map_or(date, |d: Date| d.max(date)));
            out.push(NewObservation {
                stream: stream.to_string(),
                unit: unit.to_string(),
                source_record_id: format!("sleep:{id}:{field}"),
                observed_at: start.timestamp(),
                local_date: date,
                value: v * scale,
                ended_at: Some(end.timestamp()),
                utc_offset: Some(end.offset()),
                origin: ORIGIN.into(),
            });
        }
        let day = day.unwrap_or_else(|| end.date());
        Ok(Some((day, out)))
    }

    /// Heart rate since the cursor (less the overlap), in the person's zone.
    fn heart_rate(
        &self,
        cursor: &mut Cursor,
        now: Timestamp,
        first: Date,
        poll: &mut Poll,
    ) -> Result<(), SourceError> {
        let overlap = SignedDuration::from_hours(24 * i64::from(self.settings.overlap_days));
        let start = match cursor.heart_rate {
            Some(t) => t.checked_sub(overlap).unwrap_or(t),
            None => self
                .home
                .to_ambiguous_timestamp(first.at(0, 0, 0, 0))
                .compatible()
                .unwrap_or(now),
        };
        // Oura answers heart rate for at most 30 days a request.
        let mut docs = Vec::new();
        let mut from = start;
        while from < now {
            let to = (from + SignedDuration::from_hours(24 * 30)).min(now);
            let window = self.collection(
                "heartrate",
                &[
                    (
                        "start_datetime",
                        from.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    ),
                    (
                        "end_datetime",
                        to.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    ),
                ],
                poll,
            )?;
            let failed =
                window.is_empty() && poll.problems.iter().any(|p| p.starts_with("heartrate:"));
            docs.extend(window);
            if failed {
                break;
            }
            from = to;
        }
        let rule = self.rules.day_rule("heart_rate");
        for doc in &docs {
            let when = doc
                .get("timestamp")
                .and_then(Value::as_str)
                .and_then(|t| t.parse::<Timestamp>().ok());
            let (Some(when), Some(bpm)) = (when, doc.get("bpm").and_then(Value::as_f64)) else {
                refuse(
                    poll,
                    "heartrate",
                    "a sample without a timestamp or bpm".into(),
                );
                continue;
            };
            cursor.heart_rate = Some(cursor.heart_rate.map_or(when, |t| t.max(when)));
            let source = doc.get("source").and_then(Value::as_str).unwrap_or("");
            poll.observations.push(NewObservation {
                stream: "heart_rate".into(),
                unit: "bpm".into(),
                source_record_id: format!("heartrate@{when}"),
                observed_at: when,
                local_date: rule.day_of(when, None, None, &self.home),
                value: bpm,
                ended_at: None,
                utc_offset: None,
                origin: if source.is_empty() {
                    ORIGIN.into()
                } else {
                    format!("{ORIGIN} ({source})")
                },
            });
        }
        Ok(())
    }
}

/// The record ids a sleep period would have stored, where Oura now says it
/// is a rest or a deleted period: withdrawn where they were stored.
fn not_sleep_records(doc: &Value) -> Vec<String> {
    let kind = doc.get("type").and_then(Value::as_str);
    match (kind, doc.get("id").and_then(Value::as_str)) {
        (Some("rest" | "deleted"), Some(id)) => SLEEP
            .iter()
            .map(|(field, ..)| format!("sleep:{id}:{field}"))
            .collect(),
        _ => Vec::new(),
    }
}

/// `2026-03-01T07:12:00+01:00` (Oura's times carry the offset where the
/// person was).
fn parse_offset_time(text: &str) -> Option<jiff::Zoned> {
    let pieces = jiff::fmt::temporal::Pieces::parse(text).ok()?;
    let offset = pieces.offset()?.to_numeric_offset();
    let dt = pieces.date().to_datetime(pieces.time()?);
    offset
        .to_timestamp(dt)
        .ok()
        .map(|t| t.to_zoned(TimeZone::fixed(offset)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::oauth::{Grant, OAuthApp};
    use serde_json::json;
    use std::time::Duration;

    fn oura(stream_units: &[(&str, &str)]) -> Oura {
        let settings: LoginConfig =
            toml::from_str("client_id = { env = \"X\" }\nclient_secret = { env = \"Y\" }\n")
                .unwrap();
        Oura {
            name: "oura".into(),
            api: "http://x".into(),
            grant: Granted::new(
                "oura",
                OAuthApp {
                    client_id: String::new(),
                    client_secret: String::new(),
                    authorize_url: PROVIDER.authorize_url.into(),
                    token_url: PROVIDER.token_url.into(),
                    scopes: vec![],
                    credentials_in_body: false,
                    pkce: true,
                    dialect: crate::service::oauth::TokenDialect::Standard,
                    timeout: Duration::from_secs(1),
                },
                crate::service::store::GrantRow {
                    source_id: 1,
                    grant: Grant {
                        access_token: "a".into(),
                        refresh_token: None,
                        expires_at: None,
                        scope: String::new(),
                    },
                    status: "connected".into(),
                    status_reason: String::new(),
                    updated_at: Timestamp::UNIX_EPOCH,
                },
            ),
            client: ApiClient::new(Duration::from_secs(1), 0, Duration::from_secs(1)).unwrap(),
            settings,
            home: TimeZone::get("Europe/Berlin").unwrap(),
            rules: StreamRules::default(),
            stream_units: stream_units
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }

    #[test]
    fn daily_documents_keep_their_day_and_skip_null_fields() {
        let o = oura(&[]);
        let doc = json!({"id": "x", "day": "2026-03-29", "score": null, "temperature_deviation": -0.25,
                         "timestamp": "2026-03-29T00:00:00+02:00"});
        let (day, obs) = o.daily("daily_readiness", DAILY[1].1, &doc).unwrap();
        assert_eq!(day, jiff::civil::date(2026, 3, 29));
        assert_eq!(obs.len(), 1);
        assert_eq!(
            obs[0].source_record_id,
            "daily_readiness:2026-03-29:temperature_deviation"
        );
        assert_eq!(obs[0].utc_offset, Some(jiff::tz::Offset::constant(2)));
        assert!(
            o.daily("daily_sleep", DAILY[0].1, &json!({"score": 70}))
                .is_err()
        );
        assert!(
            o.daily("daily_sleep", DAILY[0].1, &json!({"day": "yesterday"}))
                .is_err()
        );
    }

    #[test]
    fn sleep_periods_go_to_the_wake_up_day_rests_are_skipped_and_junk_refused() {
        let o = oura(&[]);
        let night = json!({"id": "s1", "type": "long_sleep", "day": "2026-10-25",
            "bedtime_start": "2026-10-24T23:40:00+02:00", "bedtime_end": "2026-10-25T07:05:00+01:00",
            "total_sleep_duration": 24000, "average_hrv": null, "efficiency": 90});
        let (day, obs) = o.sleep_period(&night).unwrap().unwrap();
        assert_eq!(day, jiff::civil::date(2026, 10, 25));
        assert_eq!(obs.len(), 2);
        assert_eq!(obs[0].stream, "sleep_asleep");
        assert!((obs[0].value - 400.0).abs() < 1e-12);
        assert_eq!(obs[0].local_date, day);
        assert!(
            o.sleep_period(&json!({"id": "r", "type": "rest"}))
                .unwrap()
                .is_none()
        );
        // A night deleted in the app: each of its records is withdrawn.
        let gone = not_sleep_records(&json!({"id": "s1", "type": "deleted"}));
        assert!(gone.contains(&"sleep:s1:total_sleep_duration".to_string()));
        assert_eq!(gone.len(), SLEEP.len());
        assert!(not_sleep_records(&night).is_empty());
        assert!(
            o.sleep_period(&json!({"id": "s2", "bedtime_start": "2026-10-24T23:40:00"}))
                .is_err()
        );
        assert!(o.sleep_period(&json!({"type": "sleep"})).is_err());
    }

    #[test]
    fn values_go_into_the_streams_stored_unit_or_are_refused() {
        let o = oura(&[("sleep_asleep", "h"), ("steps", "bpm")]);
        let mut poll = Poll::default();
        let night = json!({"id": "s1", "type": "long_sleep",
            "bedtime_start": "2026-03-01T23:00:00+01:00", "bedtime_end": "2026-03-02T07:00:00+01:00",
            "total_sleep_duration": 27000});
        poll.observations
            .extend(o.sleep_period(&night).unwrap().unwrap().1);
        let activity = json!({"day": "2026-03-02", "steps": 9000});
        poll.observations
            .extend(o.daily("daily_activity", DAILY[2].1, &activity).unwrap().1);
        poll.into_stream_units(&o.stream_units);
        assert_eq!(poll.observations.len(), 1);
        assert_eq!(poll.observations[0].unit, "h");
        assert!((poll.observations[0].value - 7.5).abs() < 1e-12);
        assert_eq!(poll.refused, 1);
        assert!(poll.problems[0].contains("\"count\"") && poll.problems[0].contains("\"bpm\""));
    }
}

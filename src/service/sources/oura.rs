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
use std::sync::Mutex;
use std::time::Duration;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::service::config::{Config, SecretRef};
use crate::service::http::{ApiClient, ApiError};
use crate::service::oauth::{Grant, OAuthApp, OAuthError};
use crate::service::sources::{Owner, Poll, Source, SourceError, api_client};
use crate::service::store::{NewObservation, SourceRow, Store};
use crate::service::streams::{DayRule, StreamRules};
use crate::service::units::Conversion;

/// The source kind.
pub const KIND: &str = "oura";

/// Oura's endpoints.
const AUTHORIZE_URL: &str = "https://cloud.ouraring.com/oauth/authorize";
const TOKEN_URL: &str = "https://api.ouraring.com/oauth/token";
const API_URL: &str = "https://api.ouraring.com";

/// The scopes asked for: daily summaries and sleep periods (`daily`), heart
/// rate, and `personal` (Oura's consent screen lists it with them).
const SCOPES: &[&str] = &["daily", "heartrate", "personal"];

/// An Oura account as written in the config (`[[participants.oura]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OuraConfig {
    /// The source's name.
    #[serde(default = "default_name")]
    pub name: String,
    /// The client id of the API application registered at Oura.
    pub client_id: SecretRef,
    /// Its client secret.
    pub client_secret: SecretRef,
    /// How far back a new connection reads (days).
    #[serde(default = "default_backfill_days")]
    pub backfill_days: u32,
    /// Days before the cursor each read goes again (Oura revises recent days).
    #[serde(default = "default_overlap_days")]
    pub overlap_days: u32,
    /// Read at most this often (minutes; 0: at every run of the sources
    /// job): Oura limits requests a day.
    #[serde(default = "default_poll_minutes")]
    pub poll_minutes: u32,
    /// Read heart rate (a value every 5 minutes) too.
    #[serde(default = "default_true")]
    pub heart_rate: bool,
    /// Seconds a request may take.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Oura's API address (tests point it elsewhere).
    #[serde(default)]
    pub api_url: Option<String>,
    /// Oura's authorize address.
    #[serde(default)]
    pub authorize_url: Option<String>,
    /// Oura's token address (applications registered on Oura's newer
    /// developer portal may be given another).
    #[serde(default)]
    pub token_url: Option<String>,
}

fn default_name() -> String {
    "oura".into()
}
fn default_backfill_days() -> u32 {
    90
}
fn default_overlap_days() -> u32 {
    3
}
fn default_poll_minutes() -> u32 {
    30
}
fn default_true() -> bool {
    true
}
fn default_timeout() -> u64 {
    30
}

impl OuraConfig {
    /// Checks the settings (the secrets are read when used).
    pub fn check(&self, participant: &str) -> Result<(), String> {
        let at = |what: String| format!("participant {participant}: oura {:?}: {what}", self.name);
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(at("name: use letters, digits, '-' or '_'".into()));
        }
        for (what, s) in [
            ("client_id", &self.client_id),
            ("client_secret", &self.client_secret),
        ] {
            if s.env.is_some() == s.file.is_some() {
                return Err(at(format!("{what}: give exactly one of env or file")));
            }
        }
        if !(1..=3650).contains(&self.backfill_days) {
            return Err(at("backfill_days: 1 to 3650".into()));
        }
        if self.overlap_days > 30 {
            return Err(at("overlap_days: 0 to 30".into()));
        }
        if self.poll_minutes > 1440 {
            return Err(at("poll_minutes: 0 (every poll of the job) to 1440".into()));
        }
        if !(1..=600).contains(&self.timeout_seconds) {
            return Err(at("timeout_seconds: 1 to 600".into()));
        }
        for (what, url) in [
            ("api_url", &self.api_url),
            ("authorize_url", &self.authorize_url),
            ("token_url", &self.token_url),
        ] {
            if let Some(u) = url {
                let parsed =
                    reqwest::Url::parse(u).map_err(|e| at(format!("{what} {u:?}: {e}")))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(at(format!("{what} {u:?}: http:// or https://")));
                }
            }
        }
        Ok(())
    }

    /// The OAuth2 application, its secrets read now.
    pub fn app(&self) -> Result<OAuthApp, String> {
        let id = self
            .client_id
            .resolve(&format!("oura {:?} client_id", self.name))
            .map_err(|e| e.to_string())?;
        let secret = self
            .client_secret
            .resolve(&format!("oura {:?} client_secret", self.name))
            .map_err(|e| e.to_string())?;
        Ok(OAuthApp {
            client_id: id.expose().to_string(),
            client_secret: secret.expose().to_string(),
            authorize_url: self
                .authorize_url
                .clone()
                .unwrap_or_else(|| AUTHORIZE_URL.into()),
            token_url: self.token_url.clone().unwrap_or_else(|| TOKEN_URL.into()),
            scopes: SCOPES.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_secs(self.timeout_seconds),
        })
    }

    /// What is stored with the source row (no secret).
    pub fn stored_json(&self) -> String {
        serde_json::json!({
            "backfill_days": self.backfill_days,
            "overlap_days": self.overlap_days,
            "poll_minutes": self.poll_minutes,
            "heart_rate": self.heart_rate,
        })
        .to_string()
    }
}

/// The Oura settings of a stored source, from the config.
pub fn config_of<'a>(
    config: &'a Config,
    participant_key: &str,
    source: &str,
) -> Option<&'a OuraConfig> {
    config
        .participants
        .iter()
        .find(|p| p.key == participant_key)
        .and_then(|p| p.oura.iter().find(|o| o.name == source))
}

/// A connected Oura account, ready to poll.
pub struct Oura {
    name: String,
    api: String,
    app: OAuthApp,
    /// The grant in use (replaced when refreshed).
    grant: Mutex<Grant>,
    /// How long the grant in use was issued for.
    lifetime: Option<SignedDuration>,
    client: ApiClient,
    settings: OuraConfig,
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
    let bad = |message: String| SourceError::Config {
        source_name: row.name.clone(),
        message,
    };
    let Some(owner) = Owner::of(row, store, config)? else {
        return Ok(None);
    };
    let Some(settings) = config_of(config, &owner.key, &row.name) else {
        return Ok(None);
    };
    let Some(grant) = store.grant(row.id)? else {
        return Ok(None);
    };
    if !grant.is_connected() {
        return Ok(None);
    }
    let client = api_client(row, settings.timeout_seconds)?;
    Ok(Some(Box::new(Oura {
        name: row.name.clone(),
        api: settings
            .api_url
            .clone()
            .unwrap_or_else(|| API_URL.into())
            .trim_end_matches('/')
            .to_string(),
        app: settings.app().map_err(bad)?,
        lifetime: grant
            .grant
            .expires_at
            .map(|at| at.duration_since(grant.updated_at)),
        grant: Mutex::new(grant.grant),
        client,
        settings: settings.clone(),
        home: owner.home,
        rules: owner.rules,
        stream_units: owner.stream_units,
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
            (
                "temperature_deviation",
                "oura_temperature_deviation",
                "°C",
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

    fn authorise(&self, now: Timestamp) -> Result<Option<Grant>, SourceError> {
        let current = self.grant.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if !current.expiring(now, self.lifetime) {
            return Ok(None);
        }
        match crate::service::oauth::refresh(&self.app, &current, now) {
            Ok(fresh) => {
                *self.grant.lock().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
                Ok(Some(fresh))
            }
            Err(OAuthError::Refused(why)) => Err(SourceError::NeedsReauthorisation {
                source_name: self.name.clone(),
                message: why,
            }),
            Err(e) => Err(SourceError::Remote {
                source_name: self.name.clone(),
                message: e.to_string(),
            }),
        }
    }

    fn poll(&self, cursor: Option<&str>, now: Timestamp) -> Result<Poll, SourceError> {
        let mut cursor: Cursor = match cursor {
            None => Cursor::default(),
            Some(c) => serde_json::from_str(c).map_err(|_| SourceError::Cursor {
                source_name: self.name.clone(),
                cursor: c.to_string(),
            })?,
        };
        let every = SignedDuration::from_mins(i64::from(self.settings.poll_minutes));
        if cursor
            .read_at
            .is_some_and(|t| now.duration_since(t) < every)
        {
            return Ok(Poll::default());
        }
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
            let docs = self.documents(
                collection,
                &[
                    ("start_date", start.to_string()),
                    ("end_date", end.to_string()),
                ],
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
        let docs = self.documents(
            "sleep",
            &[
                ("start_date", start.to_string()),
                ("end_date", end.to_string()),
            ],
        )?;
        let mut skipped = 0;
        for doc in &docs {
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
        if self.settings.heart_rate {
            self.heart_rate(&mut cursor, now, first, &mut poll)?;
        }
        self.convert_units(&mut poll);
        cursor.read_at = Some(now);
        poll.cursor = Some(
            serde_json::to_string(&cursor).map_err(|e| SourceError::Config {
                source_name: self.name.clone(),
                message: e.to_string(),
            })?,
        );
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
    /// Every document of a collection for `query`, page by page.
    fn documents(
        &self,
        collection: &str,
        query: &[(&str, String)],
    ) -> Result<Vec<Value>, SourceError> {
        let url = format!("{}/v2/usercollection/{collection}", self.api);
        let token = self
            .grant
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .access_token
            .clone();
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
        let docs = self.documents(
            "heartrate",
            &[
                (
                    "start_datetime",
                    start.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                ),
                (
                    "end_datetime",
                    now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                ),
            ],
        )?;
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

    /// Puts each value in its stream's stored unit; a stream kept in a unit
    /// of another quantity keeps nothing from Oura, and says so.
    fn convert_units(&self, poll: &mut Poll) {
        let mut refused: BTreeMap<String, usize> = BTreeMap::new();
        poll.observations.retain_mut(|o| {
            let Some(stored) = self.stream_units.get(&o.stream) else {
                return true;
            };
            match Conversion::between(&o.unit, stored) {
                Ok(c) => {
                    o.value = c.apply(o.value);
                    o.unit = stored.clone();
                    true
                }
                Err(e) => {
                    *refused.entry(e.to_string()).or_default() += 1;
                    false
                }
            }
        });
        for (why, n) in refused {
            poll.refused += n;
            poll.problems.push(format!("{n} × {why}"));
        }
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
    use serde_json::json;

    fn oura(stream_units: &[(&str, &str)]) -> Oura {
        let settings: OuraConfig =
            toml::from_str("client_id = { env = \"X\" }\nclient_secret = { env = \"Y\" }\n")
                .unwrap();
        Oura {
            name: "oura".into(),
            api: "http://x".into(),
            app: OAuthApp {
                client_id: String::new(),
                client_secret: String::new(),
                authorize_url: AUTHORIZE_URL.into(),
                token_url: TOKEN_URL.into(),
                scopes: vec![],
                timeout: Duration::from_secs(1),
            },
            grant: Mutex::new(Grant {
                access_token: "a".into(),
                refresh_token: None,
                expires_at: None,
                scope: String::new(),
            }),
            lifetime: None,
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
        o.convert_units(&mut poll);
        assert_eq!(poll.observations.len(), 1);
        assert_eq!(poll.observations[0].unit, "h");
        assert!((poll.observations[0].value - 7.5).abs() < 1e-12);
        assert_eq!(poll.refused, 1);
        assert!(poll.problems[0].contains("\"count\"") && poll.problems[0].contains("\"bpm\""));
    }
}

//! Home Assistant: any sensor entity as a stream, read from its REST
//! history API (`/api/history/period`) with a long-lived access token.
//!
//! Each entity keeps its own cursor (the last state change read). A poll
//! re-reads an overlap window before it, so a state the recorder wrote late
//! is not missed; a state's identity is the entity and the instant it
//! changed, so what is read twice is stored once. A new entity starts
//! `history_days` back (the recorder keeps 10 days by default). Numeric
//! states become values in the stream's unit (converted from the entity's
//! `unit_of_measurement` where they differ); on/off states of binary
//! sensors, switches and input booleans become 1/0; `unavailable` and
//! `unknown` are skipped.
//!
//! Before that window, a new entity's months are filled once from the
//! recorder's long-term statistics (hourly means, over the WebSocket API;
//! `backfill_days`), stored under their own origin so a day is never
//! counted from both.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::service::config::{Config, SecretRef};
use crate::service::http::{ApiClient, ApiError};
use crate::service::sources::home_assistant_ws::{Session, Statistics};
use crate::service::sources::{
    Owner, Poll, Source, SourceError, api_client, read_cursor, write_cursor,
};
use crate::service::store::{NewObservation, SourceRow, Store};
use crate::service::streams::StreamRules;
use crate::service::units::Conversion;

/// The source kind.
pub const KIND: &str = "home_assistant";

/// One Home Assistant instance as written in the config
/// (`[[participants.home_assistant]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeAssistantConfig {
    /// The source's name (letters, digits, `-`, `_`), e.g. `home`.
    pub name: String,
    /// Where Home Assistant answers, e.g. `http://homeassistant.local:8123`.
    pub url: String,
    /// A long-lived access token (Profile → Security), from an environment
    /// variable or a file.
    pub token: SecretRef,
    /// How far back a new entity is read (days; the recorder keeps 10 by
    /// default).
    #[serde(default = "default_history_days")]
    pub history_days: u32,
    /// How far back a new entity's hourly long-term statistics are read
    /// (days; 0: not at all). Only what lies before `history_days`.
    #[serde(default = "default_backfill_days")]
    pub backfill_days: u32,
    /// How much before the cursor each poll reads again (minutes), for
    /// states recorded late.
    #[serde(default = "default_overlap_minutes")]
    pub overlap_minutes: u32,
    /// Seconds a request may take.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// The entities that are streams.
    pub entities: Vec<EntityConfig>,
}

/// One entity → stream.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EntityConfig {
    /// The entity id, e.g. `sensor.bedroom_co2`.
    pub entity: String,
    /// The stream its states go to.
    pub stream: String,
    /// The unit to store (default: the stream's, else the entity's own).
    pub unit: Option<String>,
}

fn default_history_days() -> u32 {
    10
}
fn default_backfill_days() -> u32 {
    365
}
fn default_overlap_minutes() -> u32 {
    120
}
fn default_timeout() -> u64 {
    30
}

impl HomeAssistantConfig {
    /// Checks the settings (not the token, which is read at each poll);
    /// the message names the participant, the source and the setting.
    pub fn check(&self, participant: &str) -> Result<(), String> {
        let at = |what: String| {
            format!(
                "participant {participant}: home_assistant {:?}: {what}",
                self.name
            )
        };
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(at("name: use letters, digits, '-' or '_'".into()));
        }
        let url =
            reqwest::Url::parse(&self.url).map_err(|e| at(format!("url {:?}: {e}", self.url)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(at(format!(
                "url {:?}: http:// or https:// and a host",
                self.url
            )));
        }
        if self.token.env.is_some() == self.token.file.is_some() {
            return Err(at("token: give exactly one of env or file".into()));
        }
        if !(1..=3650).contains(&self.history_days) {
            return Err(at("history_days: 1 to 3650".into()));
        }
        if self.backfill_days > 3650 {
            return Err(at("backfill_days: 0 to 3650".into()));
        }
        if self.overlap_minutes > 7 * 24 * 60 {
            return Err(at("overlap_minutes: at most a week".into()));
        }
        if !(1..=600).contains(&self.timeout_seconds) {
            return Err(at("timeout_seconds: 1 to 600".into()));
        }
        if self.entities.is_empty() {
            return Err(at("entities: at least one entity → stream".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for e in &self.entities {
            let valid_entity = e.entity.split_once('.').is_some_and(|(d, o)| {
                !d.is_empty()
                    && !o.is_empty()
                    && e.entity.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.'
                    })
            });
            if !valid_entity {
                return Err(at(format!(
                    "entity {:?}: an entity id such as \"sensor.bedroom_co2\"",
                    e.entity
                )));
            }
            if e.stream.is_empty()
                || !e
                    .stream
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(at(format!(
                    "entity {:?}: stream {:?}: use letters, digits, '-' or '_'",
                    e.entity, e.stream
                )));
            }
            if !seen.insert(e.entity.as_str()) {
                return Err(at(format!("entity {:?} is listed twice", e.entity)));
            }
        }
        Ok(())
    }

    /// What is stored with the source row (no secret): shown on the
    /// sources page.
    pub fn stored_json(&self) -> String {
        serde_json::json!({
            "url": self.url,
            "entities": self.entities,
            "history_days": self.history_days,
            "backfill_days": self.backfill_days,
            "overlap_minutes": self.overlap_minutes,
        })
        .to_string()
    }
}

/// A Home Assistant instance, ready to poll.
pub struct HomeAssistant {
    name: String,
    base: String,
    token: String,
    client: ApiClient,
    entities: Vec<EntityConfig>,
    history: SignedDuration,
    backfill: SignedDuration,
    overlap: SignedDuration,
    timeout: Duration,
    home: TimeZone,
    rules: StreamRules,
    /// The unit each of the participant's streams is stored in.
    stream_units: std::collections::HashMap<String, String>,
}

/// Builds the adapter of a stored Home Assistant source from the config (a
/// source no longer in the config is not polled).
pub fn adapter(
    row: &SourceRow,
    store: &Store,
    config: &Config,
) -> Result<Option<Box<dyn Source>>, SourceError> {
    let Some(owner) = Owner::of(row, store, config)? else {
        return Ok(None);
    };
    let Some(ha) = config
        .participants
        .iter()
        .find(|p| p.key == owner.key)
        .and_then(|p| p.home_assistant.iter().find(|h| h.name == row.name))
    else {
        return Ok(None);
    };
    let token = ha
        .token
        .resolve(&format!("home_assistant {:?} token", ha.name))
        .map_err(|e| SourceError::Config {
            source_name: row.name.clone(),
            message: e.to_string(),
        })?;
    let client = api_client(row, ha.timeout_seconds)?;
    Ok(Some(Box::new(HomeAssistant {
        name: row.name.clone(),
        base: ha.url.trim_end_matches('/').to_string(),
        token: token.expose().to_string(),
        client,
        entities: ha.entities.clone(),
        history: SignedDuration::from_hours(24 * i64::from(ha.history_days)),
        backfill: SignedDuration::from_hours(24 * i64::from(ha.backfill_days)),
        timeout: Duration::from_secs(ha.timeout_seconds),
        overlap: SignedDuration::from_mins(i64::from(ha.overlap_minutes)),
        home: owner.home,
        rules: owner.rules,
        stream_units: owner.stream_units,
    })))
}

/// Where an entity stands: the last state change read, and whether its
/// long-term statistics were read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct EntityCursor {
    last: Option<Timestamp>,
    backfilled: bool,
}

/// The cursor: per entity.
type Cursor = BTreeMap<String, EntityCursor>;

impl Source for HomeAssistant {
    fn name(&self) -> &str {
        &self.name
    }

    fn poll(&self, cursor: Option<&str>, now: Timestamp) -> Result<Poll, SourceError> {
        let mut cursor: Cursor = read_cursor(&self.name, cursor)?;
        let mut poll = Poll::default();
        let mut session: Option<Session> = None;
        for entity in &self.entities {
            let at = cursor.entry(entity.entity.clone()).or_default();
            if !at.backfilled {
                at.backfilled = self.backfill(entity, now, &mut session, &mut poll);
            }
            let start = match at.last {
                Some(last) => last.checked_sub(self.overlap).unwrap_or(last),
                None => now.checked_sub(self.history).unwrap_or(now),
            };
            // A day at a time: a chatty sensor's ten days of history can
            // exceed what one answer may hold; a slice that fails leaves
            // the cursor after the slices read, and the rest is read next
            // time.
            let mut total = Read::default();
            let mut from = start;
            while from < now {
                let to = from.checked_add(HISTORY_SLICE).map_or(now, |t| t.min(now));
                match self.history_slice(entity, from, to)? {
                    Ok(read) => {
                        total.last = total.last.max(read.last);
                        total.observations.extend(read.observations);
                        for (why, n) in read.refused {
                            *total.refused.entry(why).or_default() += n;
                        }
                        total.skipped += read.skipped;
                    }
                    Err(why) => {
                        poll.problems.push(why);
                        break;
                    }
                }
                from = to;
            }
            if let Some(last) = total.last {
                let at = cursor.entry(entity.entity.clone()).or_default();
                at.last = Some(at.last.map_or(last, |l| l.max(last)));
            }
            poll.observations.extend(total.observations);
            for (why, n) in total.refused {
                poll.refused += n;
                poll.problems
                    .push(format!("{}: {n} × {why}", entity.entity));
            }
            if total.skipped > 0 {
                poll.problems.push(format!(
                    "{}: {} unavailable/unknown states skipped",
                    entity.entity, total.skipped
                ));
            }
        }
        poll.cursor = Some(write_cursor(&self.name, &cursor)?);
        Ok(poll)
    }
}

/// One entity's history, read.
#[derive(Debug, Default)]
struct Read {
    observations: Vec<NewObservation>,
    last: Option<Timestamp>,
    refused: BTreeMap<String, usize>,
    skipped: usize,
}

/// How much history one request asks for.
const HISTORY_SLICE: SignedDuration = SignedDuration::from_hours(24);

impl HomeAssistant {
    /// One entity's history from `from` to `to`: `Err` where the poll must
    /// stop (a refused token, an unreachable server); `Ok(Err(why))` where
    /// only this entity waits for the next poll (its cursor stays).
    fn history_slice(
        &self,
        entity: &EntityConfig,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Result<Read, String>, SourceError> {
        let url = format!(
            "{}/api/history/period/{}",
            self.base,
            from.strftime("%Y-%m-%dT%H:%M:%SZ")
        );
        let query = [
            ("filter_entity_id", entity.entity.clone()),
            ("end_time", to.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
            ("minimal_response", String::new()),
            ("skip_initial_state", String::new()),
            ("significant_changes_only", "0".to_string()),
        ];
        match self.client.get_json(&url, &query, &self.token) {
            Ok(answer) => Ok(self
                .read_history(entity, &answer)
                .map_err(|why| format!("{}: {why}", entity.entity))),
            Err(e @ (ApiError::Refused { .. } | ApiError::Unreachable { .. })) => {
                Err(self.api_error(e))
            }
            Err(e) => Ok(Err(format!(
                "{}: not read ({e}); read again next time",
                entity.entity
            ))),
        }
    }

    /// Reads `entity`'s hourly statistics from before the REST window, once;
    /// true when done (or nothing to do), false to try again next poll.
    fn backfill(
        &self,
        entity: &EntityConfig,
        now: Timestamp,
        session: &mut Option<Session>,
        poll: &mut Poll,
    ) -> bool {
        if self.backfill <= self.history {
            return true;
        }
        let (Ok(start), Ok(end)) = (
            now.checked_sub(self.backfill),
            now.checked_sub(self.history),
        ) else {
            return true;
        };
        let result = match session {
            Some(s) => s.statistics(&entity.entity, start, end),
            None => Session::open(&self.base, &self.token, self.timeout).and_then(|mut s| {
                let r = s.statistics(&entity.entity, start, end);
                *session = Some(s);
                r
            }),
        };
        match result {
            Ok(Statistics::Means {
                unit,
                hours,
                unreadable,
            }) => {
                let target = self.target_unit(entity, &unit);
                let conversion = if unit.is_empty() {
                    Ok(Conversion::SAME)
                } else {
                    Conversion::between(&unit, &target)
                };
                let conversion = match conversion {
                    Ok(c) => c,
                    Err(e) => {
                        poll.problems
                            .push(format!("{}: long-term statistics: {e}", entity.entity));
                        return true;
                    }
                };
                let rule = self.rules.day_rule(&entity.stream);
                let origin = format!("{} (hourly means)", entity.entity);
                poll.problems.push(format!(
                    "{}: {} hours of long-term statistics read, from {start}",
                    entity.entity,
                    hours.len()
                ));
                if unreadable > 0 {
                    poll.refused += unreadable;
                    poll.problems.push(format!(
                        "{}: {unreadable} statistics rows without a start or mean",
                        entity.entity
                    ));
                }
                for h in hours {
                    poll.observations.push(NewObservation {
                        stream: entity.stream.clone(),
                        unit: target.clone(),
                        source_record_id: format!("{}@hour:{}", entity.entity, h.start),
                        observed_at: h.start,
                        local_date: rule.day_of(h.start, None, None, &self.home),
                        value: conversion.apply(h.mean),
                        ended_at: None,
                        utc_offset: None,
                        origin: origin.clone(),
                    });
                }
                true
            }
            Ok(Statistics::None(why)) => {
                poll.problems
                    .push(format!("{}: no backfill: {why}", entity.entity));
                true
            }
            Err(e) => {
                poll.problems.push(format!(
                    "{}: long-term statistics not read ({e}); tried again at the next poll",
                    entity.entity
                ));
                false
            }
        }
    }

    /// The unit an entity's values are stored in: the stream's, else the
    /// configured one, else the entity's own.
    fn target_unit(&self, entity: &EntityConfig, own: &str) -> String {
        self.stream_units
            .get(&entity.stream)
            .cloned()
            .or_else(|| entity.unit.clone())
            .unwrap_or_else(|| own.to_string())
    }

    fn api_error(&self, e: ApiError) -> SourceError {
        let hint = match &e {
            ApiError::Refused { .. } => {
                " (make a new long-lived access token in Home Assistant: your profile → Security)"
            }
            ApiError::Unreachable { .. } => " (is Home Assistant running, and the url right?)",
            _ => "",
        };
        SourceError::Remote {
            source_name: self.name.clone(),
            message: format!("{e}{hint}"),
        }
    }

    /// Reads `/api/history/period`'s answer for one entity: an array with
    /// one array of states per entity asked for.
    fn read_history(&self, entity: &EntityConfig, answer: &Value) -> Result<Read, String> {
        let lists = answer
            .as_array()
            .ok_or("the history answer is not a list of lists of states")?;
        let mut read = Read::default();
        let Some(states) = lists.iter().filter_map(Value::as_array).find(|l| {
            l.first()
                .and_then(|s| s.get("entity_id"))
                .and_then(Value::as_str)
                .is_none_or(|id| id == entity.entity)
        }) else {
            return Ok(read);
        };
        let ha_unit = states
            .iter()
            .find_map(|s| s.pointer("/attributes/unit_of_measurement"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let target = self.target_unit(entity, ha_unit);
        let conversion = if ha_unit.is_empty() {
            Conversion::SAME
        } else {
            Conversion::between(ha_unit, &target).map_err(|e| e.to_string())?
        };
        let domain = entity.entity.split('.').next().unwrap_or("");
        let on_off = matches!(
            domain,
            "binary_sensor" | "switch" | "input_boolean" | "light" | "fan"
        );
        let rule = self.rules.day_rule(&entity.stream);
        for state in states {
            let when = state
                .get("last_changed")
                .or_else(|| state.get("last_updated"))
                .and_then(Value::as_str)
                .and_then(|t| t.parse::<Timestamp>().ok());
            let Some(when) = when else {
                *read
                    .refused
                    .entry("a state without a readable last_changed".into())
                    .or_default() += 1;
                continue;
            };
            read.last = Some(read.last.map_or(when, |l| l.max(when)));
            let text = state.get("state").and_then(Value::as_str).unwrap_or("");
            let value = match text {
                "unavailable" | "unknown" | "" => {
                    read.skipped += 1;
                    continue;
                }
                "on" if on_off => 1.0,
                "off" if on_off => 0.0,
                _ => match text.parse::<f64>() {
                    Ok(v) if v.is_finite() => conversion.apply(v),
                    _ => {
                        *read
                            .refused
                            .entry(format!(
                                "state {} is not a number",
                                crate::limits::excerpt(text)
                            ))
                            .or_default() += 1;
                        continue;
                    }
                },
            };
            read.observations.push(NewObservation {
                stream: entity.stream.clone(),
                unit: target.clone(),
                source_record_id: format!("{}@{}", entity.entity, when),
                observed_at: when,
                local_date: rule.day_of(when, None, None, &self.home),
                value,
                ended_at: None,
                utc_offset: None,
                origin: entity.entity.clone(),
            });
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str, entity: &str) -> HomeAssistantConfig {
        toml::from_str(&format!(
            "name = \"home\"\nurl = \"http://ha.local:8123\"\ntoken = {{ env = \"HA\" }}\n{extra}\n[[entities]]\nentity = \"{entity}\"\nstream = \"co2\"\n"
        ))
        .unwrap()
    }

    #[test]
    fn settings_are_checked_and_named() {
        assert_eq!(config("", "sensor.bedroom_co2").check("anna"), Ok(()));
        let e = config("", "bedroom co2").check("anna").unwrap_err();
        assert!(
            e.contains("participant anna: home_assistant \"home\": entity \"bedroom co2\""),
            "{e}"
        );
        let mut c = config("", "sensor.x");
        c.url = "ha.local:8123".into();
        assert!(c.check("anna").unwrap_err().contains("http:// or https://"));
        assert!(
            config("history_days = 0", "sensor.x")
                .check("anna")
                .unwrap_err()
                .contains("history_days")
        );
        let json = config("", "sensor.x").stored_json();
        assert!(
            json.contains("ha.local") && !json.contains("HA\""),
            "no secret reference kept: {json}"
        );
    }

    fn ha(stream_unit: Option<&str>) -> HomeAssistant {
        HomeAssistant {
            name: "home".into(),
            base: "http://x".into(),
            token: String::new(),
            client: ApiClient::new(Duration::from_secs(1), 0, Duration::from_secs(1)).unwrap(),
            entities: Vec::new(),
            history: SignedDuration::from_hours(240),
            backfill: SignedDuration::ZERO,
            timeout: Duration::from_secs(1),
            overlap: SignedDuration::from_hours(1),
            home: TimeZone::get("Europe/Berlin").unwrap(),
            rules: StreamRules::default(),
            stream_units: stream_unit
                .map(|u| [("temp".to_string(), u.to_string())].into_iter().collect())
                .unwrap_or_default(),
        }
    }

    #[test]
    fn a_minimal_history_answer_is_read_with_its_unit() {
        let entity = EntityConfig {
            entity: "sensor.temp".into(),
            stream: "temp".into(),
            unit: None,
        };
        let answer = serde_json::json!([[
            {"entity_id": "sensor.temp", "state": "21.5", "attributes": {"unit_of_measurement": "°C"},
             "last_changed": "2026-03-29T00:30:00.000000+00:00"},
            {"state": "unknown", "last_changed": "2026-03-29T01:30:00+00:00"},
            {"state": "warm", "last_changed": "2026-03-29T02:00:00+00:00"},
            {"entity_id": "sensor.temp", "state": "22", "attributes": {"unit_of_measurement": "°C"},
             "last_changed": "2026-03-29T22:30:00+00:00"}
        ]]);
        let read = ha(None).read_history(&entity, &answer).unwrap();
        assert_eq!(read.observations.len(), 2);
        assert_eq!(read.skipped, 1);
        assert_eq!(read.refused.get("state \"warm\" is not a number"), Some(&1));
        assert_eq!(read.observations[0].unit, "°C");
        assert_eq!(
            read.observations[0].source_record_id,
            "sensor.temp@2026-03-29T00:30:00Z"
        );
        // 22:30 UTC on the day clocks went forward is 00:30 CEST the next day.
        assert_eq!(
            read.observations[1].local_date,
            jiff::civil::date(2026, 3, 30)
        );
        assert_eq!(read.last, Some("2026-03-29T22:30:00Z".parse().unwrap()));
        // Into a stream kept in °F: converted; into one kept in ppm: refused.
        let f = ha(Some("°F")).read_history(&entity, &answer).unwrap();
        assert!((f.observations[0].value - 70.7).abs() < 1e-9);
        let e = ha(Some("ppm")).read_history(&entity, &answer).unwrap_err();
        assert!(e.contains("\"°C\"") && e.contains("\"ppm\""), "{e}");
    }
}

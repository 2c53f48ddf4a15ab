//! Strava (API v3, OAuth2): activities, as minutes of exercise a day (in
//! all and per sport), distance and average heart rate: covariates, or the
//! adherence signal of an exercise trial.
//!
//! Connected like Oura (the sources page's Connect button; client
//! credentials go in the token request's body, as Strava asks). Activities
//! are listed by start time (`after`, page by page); each read goes back
//! `overlap_days` before the last activity read, because a watch may upload
//! days late. Strava allows 100 reads a quarter hour and 1,000 a day per
//! application: a read is one or two requests, at most every
//! `poll_minutes`. When a limit is spent anyway (another program using the
//! same application), what was read is kept and the source waits for the
//! window to reset (quarter hours begin at :00, :15, :30 and :45; days at
//! midnight UTC), without retries that would count against it.

use jiff::tz::Offset;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::service::config::Config;
use crate::service::http::{ApiClient, ApiError};
use crate::service::oauth::TokenDialect;
use crate::service::sources::granted::{Granted, Login, LoginConfig, Provider, Renewal};
use crate::service::sources::{Owner, Poll, Source, SourceError, read_cursor, write_cursor};
use crate::service::store::{NewObservation, SourceRow, Store};
use crate::service::streams::StreamRules;

/// The source kind.
pub const KIND: &str = "strava";

/// Strava's endpoints; its scopes are comma-separated in one parameter.
pub const PROVIDER: Provider = Provider {
    kind: KIND,
    authorize_url: "https://www.strava.com/oauth/authorize",
    token_url: "https://www.strava.com/oauth/token",
    api_url: "https://www.strava.com/api/v3",
    scopes: &["read,activity:read_all"],
    credentials_in_body: true,
    pkce: true,
    dialect: TokenDialect::Standard,
};

/// Activities a page (Strava's most is 200).
const PER_PAGE: usize = 100;
/// The most pages read in one poll.
const MAX_PAGES: usize = 100;

/// A connected Strava account, ready to poll.
pub struct Strava {
    name: String,
    api: String,
    grant: Granted,
    client: ApiClient,
    settings: LoginConfig,
    owner: Owner,
}

/// Builds the adapter of a stored Strava source: `None` until connected,
/// while it needs re-authorisation, or once it left the config.
pub fn adapter(
    row: &SourceRow,
    store: &Store,
    config: &Config,
) -> Result<Option<Box<dyn Source>>, SourceError> {
    let Some(login) = Login::of(row, store, config, &PROVIDER)? else {
        return Ok(None);
    };
    Ok(Some(Box::new(Strava {
        name: login.name,
        api: login.api,
        grant: login.grant,
        client: login.client,
        settings: login.settings,
        owner: login.owner,
    })))
}

/// Where the reading stands.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Cursor {
    /// The start of the latest activity read.
    last_start: Option<Timestamp>,
    /// When the last poll read Strava.
    read_at: Option<Timestamp>,
    /// Not before this: a rate limit is spent until its window resets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resume_at: Option<Timestamp>,
}

impl Source for Strava {
    fn name(&self) -> &str {
        &self.name
    }

    fn authorise(&self, now: Timestamp) -> Result<Option<Renewal>, SourceError> {
        self.grant.renew(now)
    }

    fn due(&self, cursor: Option<&str>, now: Timestamp) -> bool {
        !waiting_for_limit(cursor, now)
            && crate::service::sources::granted::due(cursor, self.settings.poll_minutes, now)
    }

    fn poll(&self, cursor: Option<&str>, now: Timestamp) -> Result<Poll, SourceError> {
        let mut cursor: Cursor = read_cursor(&self.name, cursor)?;
        let after = match cursor.last_start {
            Some(t) => t - SignedDuration::from_hours(24 * i64::from(self.settings.overlap_days)),
            None => now - SignedDuration::from_hours(24 * i64::from(self.settings.backfill_days)),
        };
        let url = format!("{}/athlete/activities", self.api);
        let token = self.grant.access_token();
        let mut poll = Poll::default();
        let read_from = cursor.last_start;
        cursor.resume_at = None;
        for page in 1..=MAX_PAGES {
            let query = [
                ("after", after.as_second().to_string()),
                ("page", page.to_string()),
                ("per_page", PER_PAGE.to_string()),
            ];
            let answer = match self.client.get_json(&url, &query, &token) {
                Ok(a) => a,
                Err(ApiError::WindowLimited {
                    limit, usage, read, ..
                }) => {
                    // Keep what was read; read it all again from the same
                    // place once the window resets (upserts: nothing doubles).
                    let mut pairs = vec![(limit, usage)];
                    pairs.extend(read);
                    let resume = resume_after_limit(&pairs, now);
                    let said: Vec<String> = pairs
                        .iter()
                        .map(|(l, u)| format!("limits {l}, used {u}"))
                        .collect();
                    poll.problems.push(format!(
                        "Strava's rate limit is spent ({}): {} values kept, reading again after {resume}",
                        said.join("; reads: "),
                        poll.observations.len()
                    ));
                    cursor.last_start = read_from;
                    cursor.resume_at = Some(resume);
                    break;
                }
                Err(e) => return Err(self.api_error(e)),
            };
            let Some(activities) = answer.as_array() else {
                return Err(SourceError::Remote {
                    source_name: self.name.clone(),
                    message: format!("{url}: the answer is not a list of activities"),
                });
            };
            for activity in activities {
                match activity_values(activity, &self.owner.rules, &self.owner.home) {
                    Ok((start, obs)) => {
                        cursor.last_start = Some(cursor.last_start.map_or(start, |t| t.max(start)));
                        poll.observations.extend(obs);
                    }
                    Err(why) => {
                        poll.refused += 1;
                        if poll.problems.len() < crate::limits::LISTED_PROBLEMS {
                            poll.problems.push(why);
                        }
                    }
                }
            }
            if activities.len() < PER_PAGE {
                break;
            }
        }
        poll.into_stream_units(&self.owner.stream_units);
        cursor.read_at = Some(now);
        poll.cursor = Some(write_cursor(&self.name, &cursor)?);
        Ok(poll)
    }
}

impl Strava {
    fn api_error(&self, e: ApiError) -> SourceError {
        match e {
            ApiError::Refused { status: 401, .. } => SourceError::TokenRejected {
                source_name: self.name.clone(),
            },
            ApiError::Status { status: 429, .. } => SourceError::Remote {
                source_name: self.name.clone(),
                message: "Strava's rate limit is reached (100 reads a quarter hour, 1,000 a day for an application): read again at the next poll".into(),
            },
            other => SourceError::Remote {
                source_name: self.name.clone(),
                message: other.to_string(),
            },
        }
    }
}

/// Whether a spent rate limit's window (`resume_at` of the cursor) has
/// not reset yet at `now`. A read after `now` (the clock was stepped back
/// since it was made) does not wait: else the source would wait out the
/// step as well as the window.
fn waiting_for_limit(cursor: Option<&str>, now: Timestamp) -> bool {
    cursor
        .and_then(|c| serde_json::from_str::<Cursor>(c).ok())
        .is_some_and(|c| {
            c.resume_at.is_some_and(|t| now < t) && c.read_at.is_none_or(|read| read <= now)
        })
}

/// When a spent Strava limit resets: the next midnight UTC where a daily
/// usage (the second number of a usage header) reached its limit, in the
/// overall pair or the reads' (`pairs`: limit and usage headers), else the
/// next quarter hour (:00, :15, :30, :45 UTC). Unreadable headers: a
/// quarter hour.
fn resume_after_limit(pairs: &[(String, String)], now: Timestamp) -> Timestamp {
    let numbers = |text: &str| -> Vec<u64> {
        text.split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect()
    };
    let daily_spent = pairs.iter().any(|(limit, usage)| {
        let (limit, usage) = (numbers(limit), numbers(usage));
        matches!((limit.get(1), usage.get(1)), (Some(l), Some(u)) if u >= l)
    });
    let seconds = now.as_second();
    let window: i64 = if daily_spent { 86_400 } else { 900 };
    let next = (seconds.div_euclid(window) + 1) * window;
    Timestamp::from_second(next).unwrap_or(now)
}

/// `WeightTraining` → `weight_training`.
fn snake(sport: &str) -> String {
    let mut out = String::new();
    for (i, c) in sport.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// An activity's values: minutes (in all and for its sport), distance and
/// average heart rate, dated where it began (Strava's `utc_offset`).
fn activity_values(
    a: &Value,
    rules: &StreamRules,
    home: &jiff::tz::TimeZone,
) -> Result<(Timestamp, Vec<NewObservation>), String> {
    let id = a
        .get("id")
        .and_then(|v| {
            v.as_u64()
                .map(|n| n.to_string())
                .or_else(|| v.as_str().map(str::to_string))
        })
        .ok_or("an activity without an id")?;
    let start: Timestamp = a
        .get("start_date")
        .and_then(Value::as_str)
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("activity {id}: no readable start_date"))?;
    let offset = a
        .get("utc_offset")
        .and_then(Value::as_f64)
        .filter(|s| s.abs() <= 18.0 * 3600.0)
        .and_then(|s| Offset::from_seconds(s as i32).ok());
    let elapsed = a.get("elapsed_time").and_then(Value::as_f64).unwrap_or(0.0);
    let end =
        (elapsed > 0.0 && elapsed < 1e7).then(|| start + SignedDuration::from_secs(elapsed as i64));
    let sport = a
        .get("sport_type")
        .or_else(|| a.get("type"))
        .and_then(Value::as_str)
        .map(snake)
        .filter(|s| !s.is_empty());
    let minutes = a
        .get("moving_time")
        .and_then(Value::as_f64)
        .map(|s| s / 60.0);
    let mut values: Vec<(String, &str, Option<f64>)> =
        vec![("workout_minutes".into(), "min", minutes)];
    if let Some(sport) = &sport {
        values.push((format!("workout_minutes_{sport}"), "min", minutes));
    }
    values.push((
        "workout_distance".into(),
        "km",
        a.get("distance")
            .and_then(Value::as_f64)
            .filter(|d| *d > 0.0)
            .map(|d| d / 1000.0),
    ));
    values.push((
        "workout_heart_rate".into(),
        "bpm",
        a.get("average_heartrate").and_then(Value::as_f64),
    ));
    let mut out = Vec::new();
    for (stream, unit, value) in values {
        let Some(value) = value.filter(|v| v.is_finite() && *v >= 0.0) else {
            continue;
        };
        let field = if stream.starts_with("workout_minutes_") {
            "sport_minutes"
        } else {
            stream.as_str()
        };
        out.push(NewObservation {
            local_date: rules.day_rule(&stream).day_of(start, end, offset, home),
            source_record_id: format!("activity:{id}:{field}"),
            stream,
            unit: unit.to_string(),
            observed_at: start,
            value,
            ended_at: end,
            utc_offset: offset,
            origin: "Strava".into(),
        });
    }
    Ok((start, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_spent_limit_is_waited_for_unless_the_clock_went_back_since_the_read() {
        let read: Timestamp = "2026-12-05T10:07:31Z".parse().unwrap();
        let cursor =
            json!({"read_at": read.to_string(), "resume_at": "2026-12-05T10:15:00Z"}).to_string();
        let at = |mins: i64| read + SignedDuration::from_mins(mins);
        assert!(waiting_for_limit(Some(&cursor), at(1)));
        assert!(!waiting_for_limit(Some(&cursor), at(8)), "the window reset");
        // Stepped back an hour after the read: read now, not in 68 minutes.
        assert!(!waiting_for_limit(Some(&cursor), at(-60)));
        assert!(!waiting_for_limit(None, at(1)));
        assert!(!waiting_for_limit(
            Some(&json!({"read_at": read.to_string()}).to_string()),
            at(1)
        ));
    }

    #[test]
    fn a_spent_limit_waits_for_its_window() {
        let now: Timestamp = "2026-12-05T10:07:31Z".parse().unwrap();
        let pair = |l: &str, u: &str| (l.to_string(), u.to_string());
        let at = |pairs: &[(String, String)]| resume_after_limit(pairs, now).to_string();
        assert_eq!(at(&[pair("200,2000", "201,312")]), "2026-12-05T10:15:00Z");
        assert_eq!(at(&[pair("200,2000", "40,2000")]), "2026-12-06T00:00:00Z");
        // The reads' daily limit spent while the overall one is not.
        assert_eq!(
            at(&[pair("200,2000", "40,1000"), pair("100,1000", "40,1000")]),
            "2026-12-06T00:00:00Z"
        );
        assert_eq!(
            at(&[pair("200,2000", "101,312"), pair("100,1000", "101,312")]),
            "2026-12-05T10:15:00Z"
        );
        assert_eq!(at(&[pair("junk", "")]), "2026-12-05T10:15:00Z");
        let exactly: Timestamp = "2026-12-05T10:15:00Z".parse().unwrap();
        assert_eq!(
            resume_after_limit(&[pair("200,2000", "200,10")], exactly).to_string(),
            "2026-12-05T10:30:00Z"
        );
    }

    #[test]
    fn an_activity_gives_minutes_distance_and_heart_rate_on_its_local_day() {
        let home = jiff::tz::TimeZone::get("Europe/London").unwrap();
        // 23:30 in New York on 1 June is 03:30 on 2 June in London.
        let run = json!({"id": 12345678987654321u64, "name": "Evening Run", "sport_type": "TrailRun",
            "start_date": "2026-06-02T03:30:00Z", "start_date_local": "2026-06-01T23:30:00Z",
            "utc_offset": -14400.0, "moving_time": 2700, "elapsed_time": 3000, "distance": 8123.4,
            "average_heartrate": 151.2, "has_heartrate": true});
        let (start, obs) = activity_values(&run, &StreamRules::default(), &home).unwrap();
        assert_eq!(start.to_string(), "2026-06-02T03:30:00Z");
        let by: std::collections::HashMap<&str, &NewObservation> =
            obs.iter().map(|o| (o.stream.as_str(), o)).collect();
        assert_eq!(by["workout_minutes"].value, 45.0);
        assert_eq!(by["workout_minutes_trail_run"].value, 45.0);
        assert!((by["workout_distance"].value - 8.1234).abs() < 1e-12);
        assert_eq!(by["workout_heart_rate"].value, 151.2);
        assert_eq!(
            by["workout_minutes"].local_date,
            jiff::civil::date(2026, 6, 1)
        );
        assert_eq!(
            by["workout_minutes"].source_record_id,
            "activity:12345678987654321:workout_minutes"
        );
        // A strength session without distance or heart rate.
        let gym = json!({"id": 2, "sport_type": "WeightTraining", "start_date": "2026-06-03T07:00:00Z",
                         "moving_time": 1800, "elapsed_time": 1800, "distance": 0.0});
        let (_, obs) = activity_values(&gym, &StreamRules::default(), &home).unwrap();
        let streams: Vec<&str> = obs.iter().map(|o| o.stream.as_str()).collect();
        assert_eq!(
            streams,
            ["workout_minutes", "workout_minutes_weight_training"]
        );
        assert!(activity_values(&json!({"id": 3}), &StreamRules::default(), &home).is_err());
        assert!(
            activity_values(
                &json!({"start_date": "2026-06-03T07:00:00Z"}),
                &StreamRules::default(),
                &home
            )
            .is_err()
        );
    }
}

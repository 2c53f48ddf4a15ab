//! The demo participant's source: a simulated person whose evening rating
//! follows the model of `statistics.md` §2 along the demo trial's schedule,
//! with a known effect.

use jiff::Timestamp;
use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;

use crate::engine::generate::{ModelParams, simulate_daily};
use crate::service::demo::{RATING_TIME, true_params};
use crate::service::sources::{Poll, Source, SourceError};
use crate::service::store::{NewObservation, SourceRow, Store};
use crate::trial::calendar::{local_date, local_instant, parse_hhmm};

/// The demo participant: a simulated person whose evening rating follows the
/// model of `statistics.md` §2 along the demo trial's schedule, with a known
/// effect. A day's rating appears once its local evening time has passed.
pub struct DemoSource {
    /// Source name.
    pub name: String,
    /// Stream the ratings go to.
    pub stream: String,
    /// The participant's zone.
    pub time_zone: TimeZone,
    /// Local time of the evening rating.
    pub rating_time: Time,
    /// `(local date, arm in force)` for every scheduled day, in order.
    pub days: Vec<(Date, usize)>,
    /// True model parameters (the known effect is `params.beta`).
    pub params: ModelParams,
    /// Simulation seed (stored with the source).
    pub seed: u64,
    /// Lowest and highest rating.
    pub range: (i32, i32),
}

impl Source for DemoSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn poll(&self, cursor: Option<&str>, now: Timestamp) -> Result<Poll, SourceError> {
        let after: Option<Date> = match cursor {
            Some(c) => Some(c.parse().map_err(|_| SourceError::Cursor {
                source_name: self.name.clone(),
                cursor: c.to_string(),
            })?),
            None => None,
        };
        let today = local_date(now, &self.time_zone);
        // Days whose rating time has passed.
        let due = self
            .days
            .iter()
            .take_while(|(d, _)| {
                *d < today
                    || (*d == today && local_instant(*d, self.rating_time, &self.time_zone) <= now)
            })
            .count();
        if due == 0 {
            return Ok(Poll::default());
        }
        let arms: Vec<usize> = self.days[..due].iter().map(|(_, a)| *a).collect();
        let offset = (f64::from(self.rating_time.hour())
            + f64::from(self.rating_time.minute()) / 60.0)
            / 24.0;
        let series = simulate_daily(&self.params, &arms, offset, self.seed);
        let mut observations = Vec::new();
        for ((date, _), point) in self.days[..due].iter().zip(&series) {
            if after.is_some_and(|a| *date <= a) {
                continue;
            }
            let rating = point
                .y
                .round()
                .clamp(f64::from(self.range.0), f64::from(self.range.1));
            observations.push(NewObservation::point(
                &self.stream,
                "rating",
                format!("{}:{date}", self.stream),
                local_instant(*date, self.rating_time, &self.time_zone),
                *date,
                rating,
            ));
        }
        Ok(Poll {
            cursor: Some(self.days[due - 1].0.to_string()),
            observations,
            ..Poll::default()
        })
    }
}

/// Builds the demo adapter from its stored source row: the demo trial's
/// schedule and protocol, and the simulation seed kept in its configuration.
pub fn adapter(
    row: &SourceRow,
    store: &Store,
    _config: &crate::service::config::Config,
) -> Result<Option<Box<dyn Source>>, SourceError> {
    let bad = |message: String| SourceError::Config {
        source_name: row.name.clone(),
        message,
    };
    let config: serde_json::Value =
        serde_json::from_str(&row.config_json).map_err(|e| bad(format!("config: {e}")))?;
    let trial_id = config["trial_id"]
        .as_i64()
        .ok_or_else(|| bad("no trial_id".into()))?;
    let seed: u64 = config["seed"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no seed".into()))?;
    let trial = store
        .trial(trial_id)?
        .ok_or_else(|| bad(format!("demo trial {trial_id} is missing")))?;
    let participant = store
        .participant(row.participant_id)?
        .ok_or_else(|| bad("demo participant is missing".into()))?;
    let protocol = trial.protocol().map_err(|e| bad(e.to_string()))?;
    let time_zone = jiff::tz::TimeZone::get(&participant.time_zone)
        .map_err(|e| bad(format!("zone {}: {e}", participant.time_zone)))?;
    let (min, max) = protocol
        .outcome
        .self_report
        .as_ref()
        .map_or((0, 10), |s| (s.min, s.max));
    let rating_time: Time = parse_hhmm(RATING_TIME).unwrap_or(Time::midnight());
    Ok(Some(Box::new(DemoSource {
        name: row.name.clone(),
        stream: protocol.outcome.stream.clone(),
        time_zone,
        rating_time,
        days: store
            .schedule(trial_id)?
            .into_iter()
            .map(|d| (d.local_date, d.arm))
            .collect(),
        params: true_params(&protocol),
        seed,
        range: (min, max),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> DemoSource {
        let start: Date = "2026-10-01".parse().unwrap();
        DemoSource {
            name: "demo".into(),
            stream: "anxiety".into(),
            time_zone: TimeZone::get("Europe/London").unwrap(),
            rating_time: Time::new(21, 0, 0, 0).unwrap(),
            days: (0..60)
                .map(|i| {
                    (
                        start.checked_add(jiff::Span::new().days(i)).unwrap(),
                        (i as usize / 7) % 2,
                    )
                })
                .collect(),
            params: ModelParams {
                mu: 5.0,
                beta: vec![0.0, -1.5],
                lambda: 0.25,
                sigma_x: 0.5,
                kappa: 0.5,
                sigma_y: 0.8,
            },
            seed: 5,
            range: (0, 10),
        }
    }

    #[test]
    fn polls_resume_from_cursor_and_repeat_identically() {
        let s = demo();
        let now: Timestamp = "2026-10-10T20:59:00Z".parse().unwrap(); // 21:59 BST
        let first = s.poll(None, now).unwrap();
        assert_eq!(first.observations.len(), 10);
        assert_eq!(first.cursor.as_deref(), Some("2026-10-10"));
        let again = s.poll(None, now).unwrap();
        assert_eq!(first.observations, again.observations);
        let later: Timestamp = "2026-10-12T21:30:00Z".parse().unwrap();
        let next = s.poll(first.cursor.as_deref(), later).unwrap();
        assert_eq!(next.observations.len(), 2);
        assert!(
            next.observations
                .iter()
                .all(|o| (0.0..=10.0).contains(&o.value))
        );
        let whole = s.poll(None, later).unwrap();
        assert_eq!(&whole.observations[10..], &next.observations[..]);
        assert!(s.poll(Some("garbage"), later).is_err());
    }

    #[test]
    fn before_the_rating_time_today_is_not_there() {
        let s = demo();
        let now: Timestamp = "2026-10-10T19:00:00Z".parse().unwrap(); // 20:00 BST
        assert_eq!(s.poll(None, now).unwrap().observations.len(), 9);
    }
}

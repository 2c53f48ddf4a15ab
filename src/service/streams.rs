//! What a stream's values mean day by day: the civil day an observation
//! belongs to (its day rule), which device counts when two measured the
//! same thing (its origin priority), and the per-participant rules from
//! the config. Pure: the adapters and the store call it.

use std::collections::{BTreeMap, HashMap};

use jiff::civil::Date;
use jiff::tz::{Offset, TimeZone};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// Which end of an interval sample dates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Anchor {
    /// The start (points have only this).
    #[default]
    Start,
    /// The end: a night's sleep belongs to the day one wakes up.
    End,
}

/// The day an observation belongs to: the local time at its anchor, moved
/// back by `day_start`, gives the civil date. `day_start = 04:00` puts a
/// 02:00 entry on the evening before (late nights); `-06:00` starts the day
/// at 18:00 the evening before, so a night's sleep, dated by its end, falls
/// on the wake-up day however late it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DayRule {
    /// Which end of the sample dates it.
    pub anchor: Anchor,
    /// When the day starts, relative to local midnight (−12 h … +12 h).
    pub day_start: SignedDuration,
}

impl DayRule {
    /// Midnight to midnight, dated by the start.
    pub const CALENDAR: DayRule = DayRule {
        anchor: Anchor::Start,
        day_start: SignedDuration::ZERO,
    };

    /// The wake-up day: dated by the end, the day starting at 18:00.
    pub const WAKE_UP: DayRule = DayRule {
        anchor: Anchor::End,
        day_start: SignedDuration::from_hours(-6),
    };

    /// The rule a stream has when the config says nothing: sleep streams
    /// go to the wake-up day; everything else (overnight HRV included, which
    /// is stamped in the morning it is measured) to its own calendar day.
    pub fn default_for(stream: &str) -> DayRule {
        if stream.starts_with("sleep") {
            DayRule::WAKE_UP
        } else {
            DayRule::CALENDAR
        }
    }

    /// The civil date of a sample that began at `start` (and ended at
    /// `end`), observed at UTC offset `offset` where the source said (the
    /// clock where the person was), else in `home`.
    pub fn day_of(
        &self,
        start: Timestamp,
        end: Option<Timestamp>,
        offset: Option<Offset>,
        home: &TimeZone,
    ) -> Date {
        let at = match self.anchor {
            Anchor::Start => start,
            Anchor::End => end.unwrap_or(start),
        };
        let zone = offset.map_or_else(|| home.clone(), TimeZone::fixed);
        let local = at.to_zoned(zone).datetime();
        // Civil arithmetic: a DST change neither stretches nor shrinks it.
        local
            .checked_sub(self.day_start)
            .map_or(local.date(), |d| d.date())
    }
}

/// Parses `HH:MM` or `-HH:MM` (within ±12 hours) as a day start.
pub fn parse_day_start(text: &str) -> Option<SignedDuration> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (h, m) = rest.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    if h > 12 || m > 59 || (h == 12 && m > 0) {
        return None;
    }
    let d = SignedDuration::from_mins(h * 60 + m);
    Some(if negative { -d } else { d })
}

/// A participant's settings for one stream (the config's
/// `[[participants.streams]]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamRule {
    /// The day rule.
    pub day: DayRule,
    /// Origins in order of preference (matched case-insensitively as parts
    /// of the origin's name: "Watch" matches "Anna's Apple Watch").
    pub prefer: Vec<String>,
}

/// A participant's stream rules, by stream key; absent streams take the
/// defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StreamRules(pub HashMap<String, StreamRule>);

impl StreamRules {
    /// The day rule of `stream`.
    pub fn day_rule(&self, stream: &str) -> DayRule {
        self.0
            .get(stream)
            .map_or_else(|| DayRule::default_for(stream), |r| r.day)
    }

    /// The origin preference of `stream` (empty: the busiest origin wins).
    pub fn prefer(&self, stream: &str) -> &[String] {
        self.0.get(stream).map_or(&[], |r| r.prefer.as_slice())
    }
}

/// One stored observation with the origin that measured it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When.
    pub at: Timestamp,
    /// Its civil day.
    pub date: Date,
    /// The value.
    pub value: f64,
    /// The device or app ("" where the source has one).
    pub origin: String,
}

/// The rank of each origin: those named in `prefer` first, in that order;
/// then the others, the one with most samples first (ties by name), so
/// the choice is stable and visible.
pub fn origin_ranking(samples: &[Sample], prefer: &[String]) -> Vec<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in samples {
        *counts.entry(s.origin.as_str()).or_default() += 1;
    }
    rank_origins(counts, prefer)
}

/// [`origin_ranking`] from each origin's number of samples.
pub fn rank_origins(counts: BTreeMap<&str, usize>, prefer: &[String]) -> Vec<String> {
    let preferred = |origin: &str| {
        let lower = origin.to_lowercase();
        prefer
            .iter()
            .position(|p| lower.contains(&p.to_lowercase()))
            .unwrap_or(usize::MAX)
    };
    let mut origins: Vec<(&str, usize)> = counts.into_iter().collect();
    origins.sort_by(|a, b| {
        preferred(a.0)
            .cmp(&preferred(b.0))
            .then(b.1.cmp(&a.1))
            .then(a.0.cmp(b.0))
    });
    origins.into_iter().map(|(o, _)| o.to_string()).collect()
}

/// Keeps, for each day, the samples of the best-ranked origin that has
/// data that day, so that steps counted by both phone and watch are not
/// added twice; a day only one device saw keeps that device's samples.
pub fn one_origin_per_day(samples: Vec<Sample>, prefer: &[String]) -> Vec<Sample> {
    let ranking = origin_ranking(&samples, prefer);
    one_origin_per_day_ranked(samples, &ranking)
}

/// [`one_origin_per_day`] with the origins' `ranking` given (best first):
/// for samples of part of a stream, ranked on the whole of it.
pub fn one_origin_per_day_ranked(samples: Vec<Sample>, ranking: &[String]) -> Vec<Sample> {
    let rank: HashMap<&str, usize> = ranking
        .iter()
        .enumerate()
        .map(|(i, o)| (o.as_str(), i))
        .collect();
    let mut best: BTreeMap<Date, usize> = BTreeMap::new();
    for s in &samples {
        let r = rank.get(s.origin.as_str()).copied().unwrap_or(usize::MAX);
        best.entry(s.date)
            .and_modify(|b| *b = (*b).min(r))
            .or_insert(r);
    }
    samples
        .into_iter()
        .filter(|s| {
            let r = rank.get(s.origin.as_str()).copied().unwrap_or(usize::MAX);
            best.get(&s.date) == Some(&r)
        })
        .collect()
}

/// One origin's total for one day of a stream, as the store sums it.
#[derive(Debug, Clone, PartialEq)]
pub struct OriginDay {
    /// The day.
    pub date: Date,
    /// The device or app.
    pub origin: String,
    /// Sum of the day's values.
    pub sum: f64,
    /// Number of values.
    pub count: usize,
}

/// A stream in the catalog: what it is, where it comes from, how complete
/// it is, and a short summary of its daily values.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StreamSummary {
    /// The stream's key.
    pub key: String,
    /// Its unit.
    pub unit: String,
    /// Sources it came through.
    pub sources: Vec<String>,
    /// Its origins, the one that counts first (see [`origin_ranking`]), with samples each.
    pub origins: Vec<(String, usize)>,
    /// How a day's values become the daily value: `sum` for amounts
    /// (steps, minutes, energy), `mean` for levels.
    pub daily: &'static str,
    /// Observations (every origin).
    pub count: usize,
    /// First and last day with data.
    #[schema(value_type = Option<String>, format = Date)]
    pub first: Option<Date>,
    /// Last day with data.
    #[schema(value_type = Option<String>, format = Date)]
    pub last: Option<Date>,
    /// Days with data.
    pub days_with_data: usize,
    /// Share of days from first to last without data.
    pub missing_share: f64,
    /// Mean of the daily values.
    pub mean: Option<f64>,
    /// Their standard deviation.
    pub sd: Option<f64>,
    /// Least-squares trend of the daily values, per 30 days.
    pub trend_per_30_days: Option<f64>,
    /// Mean daily value by weekday (Monday first) less the overall mean.
    pub weekday: [Option<f64>; 7],
}

/// Whether a day's values add up (amounts) or are averaged (levels).
pub fn is_amount(unit: &str) -> bool {
    matches!(unit, "count" | "min" | "kcal" | "kJ" | "km" | "m" | "mi")
}

/// The catalog entry of a stream from its per-origin daily totals: on each
/// day only the best-ranked origin counts, as in the trial series.
pub fn summarise(
    key: &str,
    unit: &str,
    sources: Vec<String>,
    days: &[OriginDay],
    prefer: &[String],
) -> StreamSummary {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for d in days {
        *counts.entry(d.origin.as_str()).or_default() += d.count;
    }
    let ranking = rank_origins(counts, prefer);
    let rank = |o: &str| ranking.iter().position(|r| r == o).unwrap_or(usize::MAX);
    let amount = is_amount(unit);
    let mut daily: BTreeMap<Date, (usize, f64)> = BTreeMap::new();
    for d in days {
        let value = if amount {
            d.sum
        } else {
            d.sum / d.count.max(1) as f64
        };
        let r = rank(&d.origin);
        match daily.get(&d.date) {
            Some((best, _)) if *best <= r => {}
            _ => {
                daily.insert(d.date, (r, value));
            }
        }
    }
    let mut origins: Vec<(String, usize)> = ranking
        .iter()
        .map(|o| {
            (
                o.clone(),
                days.iter()
                    .filter(|d| &d.origin == o)
                    .map(|d| d.count)
                    .sum(),
            )
        })
        .collect();
    origins.truncate(20);
    let first = daily.keys().next().copied();
    let last = daily.keys().next_back().copied();
    let span = match (first, last) {
        (Some(f), Some(l)) => crate::trial::calendar::days_between(f, l) + 1,
        _ => 0,
    };
    let values: Vec<(f64, f64, i8)> = daily
        .iter()
        .map(|(d, (_, v))| {
            let x = first.map_or(0, |f| crate::trial::calendar::days_between(f, *d)) as f64;
            (x, *v, d.weekday().to_monday_zero_offset())
        })
        .collect();
    let n = values.len() as f64;
    let mean = (n > 0.0).then(|| values.iter().map(|v| v.1).sum::<f64>() / n);
    let sd = mean
        .filter(|_| n > 1.0)
        .map(|m| (values.iter().map(|v| (v.1 - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    let trend = mean.filter(|_| n > 2.0).and_then(|m| {
        let mx = values.iter().map(|v| v.0).sum::<f64>() / n;
        let sxx: f64 = values.iter().map(|v| (v.0 - mx).powi(2)).sum();
        let sxy: f64 = values.iter().map(|v| (v.0 - mx) * (v.1 - m)).sum();
        (sxx > 0.0).then(|| sxy / sxx * 30.0)
    });
    let mut weekday = [None; 7];
    if let Some(m) = mean {
        for (w, slot) in weekday.iter_mut().enumerate() {
            let of: Vec<f64> = values
                .iter()
                .filter(|v| v.2 as usize == w)
                .map(|v| v.1)
                .collect();
            if !of.is_empty() {
                *slot = Some(of.iter().sum::<f64>() / of.len() as f64 - m);
            }
        }
    }
    StreamSummary {
        key: key.to_string(),
        unit: unit.to_string(),
        sources,
        origins,
        daily: if amount { "sum" } else { "mean" },
        count: days.iter().map(|d| d.count).sum(),
        first,
        last,
        days_with_data: daily.len(),
        missing_share: if span > 0 {
            1.0 - daily.len() as f64 / span as f64
        } else {
            0.0
        },
        mean,
        sd,
        trend_per_30_days: trend,
        weekday,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn date(s: &str) -> Date {
        s.parse().unwrap()
    }

    #[test]
    fn a_night_across_midnight_goes_to_the_wake_up_day() {
        let london = TimeZone::get("Europe/London").unwrap();
        // 23:10 → 06:40 local (GMT), stages on both sides of midnight.
        let rule = DayRule::default_for("sleep_asleep");
        let before = rule.day_of(
            at("2026-11-20T23:10:00Z"),
            Some(at("2026-11-20T23:50:00Z")),
            None,
            &london,
        );
        let after = rule.day_of(
            at("2026-11-21T03:00:00Z"),
            Some(at("2026-11-21T06:40:00Z")),
            None,
            &london,
        );
        assert_eq!(before, date("2026-11-21"));
        assert_eq!(after, date("2026-11-21"));
        // An afternoon nap stays on its own day.
        let nap = rule.day_of(
            at("2026-11-21T14:00:00Z"),
            Some(at("2026-11-21T14:30:00Z")),
            None,
            &london,
        );
        assert_eq!(nap, date("2026-11-21"));
    }

    #[test]
    fn a_late_night_boundary_keeps_two_am_on_the_evening_before() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let rule = DayRule {
            anchor: Anchor::Start,
            day_start: parse_day_start("04:00").unwrap(),
        };
        // 01:30 CET on the 21st → the 20th; 04:30 → the 21st.
        assert_eq!(
            rule.day_of(at("2026-11-21T00:30:00Z"), None, None, &berlin),
            date("2026-11-20")
        );
        assert_eq!(
            rule.day_of(at("2026-11-21T03:30:00Z"), None, None, &berlin),
            date("2026-11-21")
        );
    }

    #[test]
    fn dst_nights_keep_their_days() {
        // Europe/London springs forward at 01:00 GMT on 2026-03-29 and
        // falls back at 01:00 UTC on 2026-10-25.
        let london = TimeZone::get("Europe/London").unwrap();
        let wake = DayRule::WAKE_UP;
        // Spring: asleep 23:30 GMT on the 28th, awake 07:00 BST (06:00 UTC).
        assert_eq!(
            wake.day_of(
                at("2026-03-28T23:30:00Z"),
                Some(at("2026-03-29T06:00:00Z")),
                None,
                &london
            ),
            date("2026-03-29")
        );
        // Autumn: the repeated 01:30 hour, before and after the change.
        let cal = DayRule::CALENDAR;
        assert_eq!(
            cal.day_of(at("2026-10-25T00:30:00Z"), None, None, &london),
            date("2026-10-25")
        );
        assert_eq!(
            cal.day_of(at("2026-10-25T01:30:00Z"), None, None, &london),
            date("2026-10-25")
        );
        // 23:30 local on the 24th (BST, 22:30 UTC) is still the 24th.
        assert_eq!(
            cal.day_of(at("2026-10-24T22:30:00Z"), None, None, &london),
            date("2026-10-24")
        );
    }

    #[test]
    fn on_a_trip_the_clock_where_the_person_was_dates_the_sample() {
        let london = TimeZone::get("Europe/London").unwrap();
        // 20:00 in New York (−05:00) is 01:00 the next day in London: the
        // sample's own offset keeps it on the New York evening.
        let ny = Offset::from_hours(-5).unwrap();
        let t = at("2026-11-21T01:00:00Z");
        assert_eq!(
            DayRule::CALENDAR.day_of(t, None, Some(ny), &london),
            date("2026-11-20")
        );
        assert_eq!(
            DayRule::CALENDAR.day_of(t, None, None, &london),
            date("2026-11-21")
        );
    }

    #[test]
    fn day_starts_parse_within_twelve_hours() {
        assert_eq!(
            parse_day_start("04:00"),
            Some(SignedDuration::from_hours(4))
        );
        assert_eq!(
            parse_day_start("-06:30"),
            Some(SignedDuration::from_mins(-390))
        );
        for bad in ["4:00", "13:00", "12:01", "-00:60", "x", "", "04-00"] {
            assert_eq!(parse_day_start(bad), None, "{bad}");
        }
    }

    fn sample(d: &str, value: f64, origin: &str) -> Sample {
        Sample {
            at: at(&format!("{d}T12:00:00Z")),
            date: date(d),
            value,
            origin: origin.into(),
        }
    }

    #[test]
    fn steps_from_phone_and_watch_are_counted_once_a_day() {
        let samples = vec![
            sample("2026-11-20", 4000.0, "iPhone"),
            sample("2026-11-20", 3000.0, "Apple Watch"),
            sample("2026-11-20", 2500.0, "Apple Watch"),
            sample("2026-11-21", 6000.0, "iPhone"), // the watch was charging
            sample("2026-11-22", 7000.0, "Apple Watch"),
        ];
        // No preference: the busier origin (the watch) wins where it has data.
        let kept = one_origin_per_day(samples.clone(), &[]);
        let total: f64 = kept.iter().map(|s| s.value).sum();
        assert_eq!(total, 3000.0 + 2500.0 + 6000.0 + 7000.0);
        // Preferring the phone.
        let kept = one_origin_per_day(samples.clone(), &["iphone".into()]);
        let by_day: Vec<(Date, &str)> = kept.iter().map(|s| (s.date, s.origin.as_str())).collect();
        assert_eq!(
            by_day,
            vec![
                (date("2026-11-20"), "iPhone"),
                (date("2026-11-21"), "iPhone"),
                (date("2026-11-22"), "Apple Watch"),
            ]
        );
        assert_eq!(
            origin_ranking(&samples, &["phone".into()]),
            vec!["iPhone".to_string(), "Apple Watch".to_string()]
        );
    }

    #[test]
    fn the_catalog_counts_one_origin_a_day_and_summarises_honestly() {
        let day = |d: &str, origin: &str, sum: f64, count: usize| OriginDay {
            date: date(d),
            origin: origin.into(),
            sum,
            count,
        };
        // Mon 16 … Sun 22 Nov 2026; the 18th missing; phone and watch both on the 16th.
        let mut days = vec![
            day("2026-11-16", "iPhone", 9000.0, 10),
            day("2026-11-16", "Watch", 8000.0, 30),
        ];
        for (i, d) in [
            "2026-11-17",
            "2026-11-19",
            "2026-11-20",
            "2026-11-21",
            "2026-11-22",
        ]
        .iter()
        .enumerate()
        {
            days.push(day(d, "Watch", 8000.0 + 100.0 * i as f64, 30));
        }
        let s = summarise("steps", "count", vec!["apple-health".into()], &days, &[]);
        assert_eq!(s.daily, "sum");
        assert_eq!(s.origins[0].0, "Watch");
        assert_eq!(s.days_with_data, 6);
        assert!((s.missing_share - 1.0 / 7.0).abs() < 1e-12);
        let daily = [8000.0, 8000.0, 8100.0, 8200.0, 8300.0, 8400.0];
        let mean = daily.iter().sum::<f64>() / 6.0;
        assert!((s.mean.unwrap() - mean).abs() < 1e-9);
        assert!(s.trend_per_30_days.unwrap() > 0.0);
        assert!((s.weekday[0].unwrap() - (8000.0 - mean)).abs() < 1e-9);
        assert_eq!(s.weekday[2], None); // no Wednesday
        // A level (bpm) is averaged within the day.
        let hr = summarise(
            "heart_rate",
            "bpm",
            vec![],
            &[day("2026-11-16", "", 600.0, 10)],
            &[],
        );
        assert_eq!(hr.mean, Some(60.0));
    }
}

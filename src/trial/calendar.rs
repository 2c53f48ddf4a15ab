//! Local calendar days and the clock.
//!
//! Trials live on the participant's civil calendar (IANA zone): a day is a
//! civil date, never "24 hours", so DST changes neither create nor lose a day
//! (`statistics.md` §1). The [`Clock`] is the daemon's only source of "now";
//! a scaled clock runs simulated time faster for demos and tests.

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// The civil date at `at` in `tz`.
pub fn local_date(at: Timestamp, tz: &TimeZone) -> Date {
    at.to_zoned(tz.clone()).date()
}

/// Whole civil days from `start` to `date` (negative before `start`).
pub fn days_between(start: Date, date: Date) -> i64 {
    // Civil dates have no time zone, so this is exact across DST changes.
    let span = date.since(start).unwrap_or_default();
    i64::from(span.get_days())
}

/// The instant of local `time` on `date` in `tz`.
///
/// Times that do not exist (spring-forward gap) move forward by the gap;
/// times that occur twice (fall-back fold) take the first occurrence. This is
/// jiff's "compatible" disambiguation, the same as RFC 5545 calendars use.
pub fn local_instant(date: Date, time: Time, tz: &TimeZone) -> Timestamp {
    match date.to_datetime(time).to_zoned(tz.clone()) {
        Ok(z) => z.timestamp(),
        // Only reachable at the ends of jiff's supported range.
        Err(_) => Timestamp::MAX,
    }
}

/// The daemon's clock: real time, or simulated time running `scale` times
/// faster than real time since the real instant `anchor`, from the simulated
/// instant `start` (`sim = start + (real - anchor) * scale`).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    anchor: Timestamp,
    start: Timestamp,
    scale: f64,
}

impl Clock {
    /// Real time.
    pub fn system() -> Clock {
        Clock {
            anchor: Timestamp::UNIX_EPOCH,
            start: Timestamp::UNIX_EPOCH,
            scale: 1.0,
        }
    }

    /// Simulated time: equal to real time at `anchor`, `scale` times faster after.
    pub fn scaled(anchor: Timestamp, scale: f64) -> Clock {
        Clock::scaled_from(anchor, anchor, scale)
    }

    /// Simulated time: `start` at the real instant `anchor`, `scale` times faster after.
    pub fn scaled_from(anchor: Timestamp, start: Timestamp, scale: f64) -> Clock {
        Clock {
            anchor,
            start,
            scale,
        }
    }

    /// Simulated seconds per real second.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Now, on this clock.
    pub fn now(&self) -> Timestamp {
        self.at(Timestamp::now())
    }

    /// The simulated instant that corresponds to real instant `real`.
    pub fn at(&self, real: Timestamp) -> Timestamp {
        if self.scale == 1.0 && self.start == self.anchor {
            return real;
        }
        let elapsed = real.duration_since(self.anchor).as_secs_f64() * self.scale;
        self.start
            .checked_add(SignedDuration::from_secs_f64(elapsed))
            .unwrap_or(Timestamp::MAX)
    }
}

/// Parses `HH:MM` (24-hour).
pub fn parse_hhmm(s: &str) -> Option<Time> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let h: i8 = h.parse().ok()?;
    let m: i8 = m.parse().ok()?;
    Time::new(h, m, 0, 0).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dst_days_are_still_one_day() {
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        // 2026-03-29 has 23 hours in Berlin, 2026-10-25 has 25.
        let before: Date = "2026-03-28".parse().unwrap();
        let after: Date = "2026-03-30".parse().unwrap();
        assert_eq!(days_between(before, after), 2);
        let a = local_instant(before, Time::new(7, 30, 0, 0).unwrap(), &tz);
        let b = local_instant(after, Time::new(7, 30, 0, 0).unwrap(), &tz);
        assert_eq!(b.duration_since(a).as_hours(), 47);
        assert_eq!(local_date(b, &tz), after);
    }

    #[test]
    fn gap_and_fold_are_resolved() {
        let tz = TimeZone::get("America/New_York").unwrap();
        // 02:30 does not exist on 2026-03-08 in New York: moves to 03:30 EDT.
        let gap = local_instant(
            "2026-03-08".parse().unwrap(),
            Time::new(2, 30, 0, 0).unwrap(),
            &tz,
        );
        assert_eq!(gap.to_string(), "2026-03-08T07:30:00Z");
        // 01:30 happens twice on 2026-11-01: the first (EDT) is taken.
        let fold = local_instant(
            "2026-11-01".parse().unwrap(),
            Time::new(1, 30, 0, 0).unwrap(),
            &tz,
        );
        assert_eq!(fold.to_string(), "2026-11-01T05:30:00Z");
    }

    #[test]
    fn scaled_clock_runs_faster_from_anchor() {
        let anchor: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let clock = Clock::scaled(anchor, 1440.0);
        let real = anchor + SignedDuration::from_secs(60);
        assert_eq!(clock.at(real).to_string(), "2026-01-02T00:00:00Z");
        assert_eq!(Clock::system().at(real), real);
        // A fixed start at real speed: the same instant whenever it runs.
        let start: Timestamp = "2026-11-25T12:00:00Z".parse().unwrap();
        let pinned = Clock::scaled_from(anchor, start, 1.0);
        assert_eq!(pinned.at(real).to_string(), "2026-11-25T12:01:00Z");
    }
}

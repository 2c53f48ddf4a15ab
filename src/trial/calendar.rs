//! Local calendar days: trials live on the participant's civil calendar
//! (IANA zone); a day is a civil date, never "24 hours", so DST changes
//! neither create nor lose a day (`statistics.md` §1). Pure: "now" is always
//! a parameter (the daemon's clock is `service::clock`).

use jiff::Timestamp;
use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;

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
}

//! Days without outcome data: the run of scheduled trial days, up to
//! yesterday, on which no value of the outcome arrived. A trial that
//! silently stops receiving data ends "inconclusive" for want of data; this
//! is what the dashboard warns of and the nudge email says. Pure.

use std::collections::BTreeSet;

use jiff::civil::Date;

use crate::trial::lifecycle::DatedDay;

/// A run of trial days without outcome data, ending yesterday.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataGap {
    /// The first day of the run.
    pub since: Date,
    /// Scheduled days in the run (days between rows, a pause, do not count).
    pub days: u32,
}

impl DataGap {
    /// Whether the gap is `after` days long or longer (the participant's
    /// `missing_data_days`).
    pub fn reaches(&self, after: u32) -> bool {
        self.days >= after
    }

    /// The gap in words, with what to do: `outcome` as the person reads it,
    /// `self_report` where they rate it themselves (else a device or an
    /// app sends it).
    pub fn describe(&self, outcome: &str, self_report: bool) -> String {
        let what = outcome.replace('_', " ");
        let since = self.since.strftime("%A %-d %B");
        let advice = if self_report {
            "If you missed the emails, you can still enter the ratings of the last two weeks on the trial's \"Missed an email?\" page."
        } else {
            "If it comes from a device or an app, check that it still records and syncs, and that its source on the Sources page reads without errors."
        };
        format!(
            "No {what} data has come for {} trial days in a row (since {since}): a trial without data cannot answer its question. {advice}",
            self.days
        )
    }
}

/// The run of scheduled days before `today` without a date in `with_data`,
/// counted back from the last scheduled day before today, where that day is
/// yesterday (today is not over, and a trial whose last day was earlier is
/// not waiting for data). `None` when yesterday had data or was no trial day.
pub fn current_gap(
    schedule: &[DatedDay],
    today: Date,
    with_data: &BTreeSet<Date>,
) -> Option<DataGap> {
    let yesterday = today.yesterday().ok()?;
    let mut past = schedule.iter().rev().skip_while(|r| r.local_date >= today);
    let last = past.next()?;
    if last.local_date != yesterday || with_data.contains(&last.local_date) {
        return None;
    }
    let mut gap = DataGap {
        since: last.local_date,
        days: 1,
    };
    for r in past.take_while(|r| !with_data.contains(&r.local_date)) {
        gap.since = r.local_date;
        gap.days += 1;
    }
    Some(gap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(dates: &[Date]) -> Vec<DatedDay> {
        dates
            .iter()
            .enumerate()
            .map(|(i, d)| DatedDay {
                day: i as u32,
                local_date: *d,
                period: Some(0),
                block: Some(0),
                arm: 0,
                washout: false,
            })
            .collect()
    }

    #[test]
    fn the_gap_counts_scheduled_days_back_from_yesterday() {
        let d = |n: i8| Date::constant(2026, 12, n);
        let schedule = rows(&[d(1), d(2), d(3), d(4), d(5), d(6)]);
        let data = |ds: &[i8]| ds.iter().map(|n| d(*n)).collect::<BTreeSet<_>>();
        // Data on the 1st and 2nd: the 3rd and 4th are missing on the 5th.
        assert_eq!(
            current_gap(&schedule, d(5), &data(&[1, 2])),
            Some(DataGap {
                since: d(3),
                days: 2
            })
        );
        // Today's own value does not close a gap that ended yesterday...
        assert_eq!(
            current_gap(&schedule, d(5), &data(&[1, 2, 5])).map(|g| g.days),
            Some(2)
        );
        // ...and yesterday's does.
        assert_eq!(current_gap(&schedule, d(5), &data(&[4])), None);
        // No data at all: every day so far.
        assert_eq!(
            current_gap(&schedule, d(6), &data(&[])).map(|g| g.days),
            Some(5)
        );
        // The first day: nothing is missing yet.
        assert_eq!(current_gap(&schedule, d(1), &data(&[])), None);
        // After the schedule's last day the trial waits for no data.
        assert_eq!(current_gap(&schedule, d(9), &data(&[])), None);
    }

    /// Days between rows (a pause) neither count nor break the run.
    #[test]
    fn a_pause_is_not_missing_data() {
        let d = |n: i8| Date::constant(2026, 12, n);
        let schedule = rows(&[d(1), d(2), d(10), d(11)]);
        let with_data = [d(1)].into_iter().collect();
        assert_eq!(
            current_gap(&schedule, d(12), &with_data),
            Some(DataGap {
                since: d(2),
                days: 3
            })
        );
    }
}

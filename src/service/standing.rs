//! "Where you stand" for a stored trial: its decisive fit, where the trial
//! is, and the sentences `trial::standing` makes of them, read from the
//! store. One home for what the overview, the trial page and the report say
//! first.

use jiff::civil::Date;

use crate::service::store::{Store, StoreError, TrialRow};
use crate::trial::gap::{DataGap, current_gap};
use crate::trial::lifecycle::{DatedDay, TrialStatus};
use crate::trial::protocol::Protocol;
use crate::trial::standing::{Subject, arms_of, sentences, trial_stage};

/// The sentences for `trial` (its dated `schedule`, as the caller read it)
/// on `today`, its arms named by `label` (codes in a blinded trial); none
/// before its first fit, or where the stored fit cannot be read.
pub fn of_trial(
    store: &Store,
    trial: &TrialRow,
    protocol: &Protocol,
    schedule: &[DatedDay],
    today: Date,
    label: &dyn Fn(usize) -> String,
) -> Result<Vec<String>, StoreError> {
    let key = crate::trial::series::decisive_key(protocol);
    let Some(fit) = store
        .latest_fit(trial.id, &key)?
        .and_then(|f| f.report().ok())
    else {
        return Ok(Vec::new());
    };
    let stage = trial_stage(
        protocol,
        trial.locked,
        trial.status,
        schedule,
        today,
        store.decisions(trial.id)?.last().and_then(|d| d.decision()),
    );
    let comparator = label(protocol.comparator_index());
    let subject = Subject::of(protocol, &comparator);
    let arms = arms_of(&fit, protocol, label);
    Ok(sentences(&subject, &arms, &stage))
}

/// The run of `trial`'s days up to yesterday without outcome data
/// (`trial::gap`), for a running trial whose dated `schedule` is given;
/// `None` otherwise.
pub fn missing_data(
    store: &Store,
    trial: &TrialRow,
    protocol: &Protocol,
    schedule: &[DatedDay],
    today: Date,
) -> Result<Option<DataGap>, StoreError> {
    let Some(first) = schedule.first() else {
        return Ok(None);
    };
    if trial.status != TrialStatus::Running {
        return Ok(None);
    }
    let with_data = store.dates_with_observations(
        trial.participant_id,
        &protocol.outcome.stream,
        first.local_date,
    )?;
    Ok(current_gap(schedule, today, &with_data))
}

/// The dashboard's warning for a running trial without outcome data for
/// `after` days or more (`None`: the participant turned it off).
pub fn missing_data_warning(
    store: &Store,
    trial: &TrialRow,
    protocol: &Protocol,
    schedule: &[DatedDay],
    today: Date,
    after: Option<u32>,
) -> Result<Option<String>, StoreError> {
    let Some(after) = after else {
        return Ok(None);
    };
    Ok(missing_data(store, trial, protocol, schedule, today)?
        .filter(|gap| gap.reaches(after))
        .map(|gap| {
            gap.describe(
                &protocol.outcome.stream,
                protocol.outcome.self_report.is_some(),
            )
        }))
}

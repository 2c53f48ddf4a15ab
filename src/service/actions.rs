//! What a person does to a trial — propose, approve, reject, pause, resume,
//! stop, report an adverse event — as store operations shared by the command
//! line and the dashboard. Each checks the life cycle and writes one
//! transaction; the daemon picks the result up at its next tick.

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

use crate::service::store::{StatusChange, Store, StoreError, TrialRow};
use crate::trial::calendar::local_date;
use crate::trial::lifecycle::{self, TrialStatus};
use crate::trial::protocol::{Protocol, ProtocolHash};

/// Why an action was refused.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request does not make sense for this trial.
    #[error("{0}")]
    Refused(String),
}

type Result<T> = std::result::Result<T, ActionError>;

fn trial_and_zone(store: &Store, trial_id: i64) -> Result<(TrialRow, TimeZone)> {
    let trial = store
        .trial(trial_id)?
        .ok_or_else(|| ActionError::Refused(format!("there is no trial {trial_id}")))?;
    let participant = store
        .participant(trial.participant_id)?
        .ok_or_else(|| ActionError::Refused(format!("trial {trial_id} has no participant")))?;
    let tz = TimeZone::get(&participant.time_zone)
        .map_err(|e| ActionError::Refused(format!("zone {}: {e}", participant.time_zone)))?;
    Ok((trial, tz))
}

/// Proposes `protocol_text` for the participant `participant_key`, with a
/// seed drawn from the operating system. Returns the trial id.
pub fn propose(
    store: &mut Store,
    participant_key: &str,
    protocol_text: &str,
    source_name: &str,
    actor: &str,
    now: Timestamp,
) -> Result<i64> {
    let protocol = Protocol::parse(protocol_text, source_name)
        .map_err(|e| ActionError::Refused(e.to_string()))?;
    let people = store.participants()?;
    let participant = people
        .iter()
        .find(|p| p.key == participant_key)
        .ok_or_else(|| {
            let keys: Vec<&str> = people.iter().map(|p| p.key.as_str()).collect();
            ActionError::Refused(format!(
                "no participant {participant_key:?}; participants: {} (they come from the config's [[participants]], and the demo from `serve --demo`)",
                if keys.is_empty() { "none yet".to_string() } else { keys.join(", ") }
            ))
        })?;
    // A trial whose outcome nothing records could only end "inconclusive"
    // for want of data (`Outcome::recorded`).
    let outcome = &protocol.outcome;
    let streams = store.stream_counts(participant.id)?;
    let has_data = streams
        .iter()
        .any(|(key, count, _)| *key == outcome.stream && *count > 0);
    if let Err(reason) = outcome.recorded(has_data) {
        let with_data: Vec<&str> = streams
            .iter()
            .filter(|(_, count, _)| *count > 0)
            .map(|(key, _, _)| key.as_str())
            .collect();
        return Err(ActionError::Refused(format!(
            "nothing records the outcome for {participant_key}: {reason}; propose again after its first data (streams with data: {})",
            if with_data.is_empty() {
                "none yet".to_string()
            } else {
                with_data.join(", ")
            }
        )));
    }
    let seed = crate::trial::design::draw_seed()
        .map_err(|e| ActionError::Refused(format!("cannot draw a random seed: {e}")))?;
    let hash = ProtocolHash::of(protocol_text);
    Ok(store.propose_trial(
        &crate::service::store::Proposal {
            participant_id: participant.id,
            protocol_id: &protocol.id,
            protocol_toml: protocol_text,
            protocol_hash: &hash.0,
            seed,
        },
        actor,
        now,
    )?)
}

/// Approves a proposed trial to start on `start` (default: the participant's
/// tomorrow). The daemon starts it that day unless it would share an outcome
/// stream with a running trial. A protocol that needs a clinician (it
/// changes prescribed medication, or the library says so) is approved only
/// with `clinician`, the clinician's agreement in words ("Dr Lee, 3 Dec").
/// From a page that showed the protocol, `reviewed` is its SHA-256: what a
/// person approves is the version they saw, not one edited since. Without
/// it, the version read here (whose need of a clinician was checked) is the
/// one approved, or none.
pub fn approve(
    store: &mut Store,
    trial_id: i64,
    start: Option<Date>,
    clinician: Option<&str>,
    reviewed: Option<&str>,
    actor: &str,
    now: Timestamp,
) -> Result<Date> {
    let (trial, tz) = trial_and_zone(store, trial_id)?;
    let needs_clinician = trial.protocol().map(|p| p.needs_clinician).unwrap_or(false);
    let clinician = clinician.map(str::trim).filter(|c| !c.is_empty());
    if needs_clinician && clinician.is_none() {
        return Err(ActionError::Refused(format!(
            "trial {trial_id} changes prescribed medication or needs a clinician's eye: \
             approve it with the clinician's agreement (--clinician \"name, date\")"
        )));
    }
    let reason = match clinician {
        Some(c) => format!("approved (clinician: {c})"),
        None => "approved".to_string(),
    };
    let today = local_date(now, &tz);
    let start = match start {
        Some(d) if d < today => {
            return Err(ActionError::Refused(format!(
                "start date {d} is in the past (today is {today} for this participant)"
            )));
        }
        Some(d) => d,
        None => today
            .tomorrow()
            .map_err(|e| ActionError::Refused(e.to_string()))?,
    };
    store.change_status(
        &StatusChange {
            trial_id,
            to: TrialStatus::Approved,
            actor,
            reason: &reason,
            local_date: today,
            start_date: Some(start),
            shifted: &[],
            reviewed: Some(reviewed.unwrap_or(&trial.protocol_hash.0)),
        },
        now,
    )?;
    Ok(start)
}

/// How long a stop by hand can be undone: a click in the wrong place, or
/// second thoughts the next morning, should not end a months-long trial.
pub const STOP_UNDO_HOURS: i64 = 24;

/// A stop that can still be undone.
#[derive(Debug, Clone, PartialEq)]
pub struct UndoableStop {
    /// The status the trial had before it.
    pub back_to: TrialStatus,
    /// Until when.
    pub until: Timestamp,
    /// The reason given for the stop.
    pub reason: String,
}

/// The trial's stop if it can be undone at `now`: a stop by a person
/// (decisions and safety stops record a decision; they stand, as does any
/// stop once an adverse event was reported), less than
/// [`STOP_UNDO_HOURS`] ago.
pub fn undoable_stop(
    store: &Store,
    trial_id: i64,
    now: Timestamp,
) -> std::result::Result<Option<UndoableStop>, StoreError> {
    let Some(trial) = store.trial(trial_id)? else {
        return Ok(None);
    };
    if trial.status != TrialStatus::Stopped || store.stop_stands(trial_id)? {
        return Ok(None);
    }
    let events = store.trial_events(trial_id)?;
    let Some(stop) = events
        .last()
        .filter(|e| e.to_status == TrialStatus::Stopped.as_str())
    else {
        return Ok(None);
    };
    let back_to = stop.from_status.as_deref().and_then(TrialStatus::parse);
    let at: Option<Timestamp> = stop.at.parse().ok();
    let (Some(back_to), Some(at)) = (back_to, at) else {
        return Ok(None);
    };
    let until = at + jiff::SignedDuration::from_hours(STOP_UNDO_HOURS);
    Ok(
        (now < until && back_to != TrialStatus::Stopped).then(|| UndoableStop {
            back_to,
            until,
            reason: stop.reason.clone(),
        }),
    )
}

/// Whether a trial has ended for blinding's sake: stopped, and past the
/// time its stop could be undone (a participant who could undo a stop must
/// not have seen the key meanwhile).
pub fn ended_for_good(
    store: &Store,
    trial: &TrialRow,
    now: Timestamp,
) -> std::result::Result<bool, StoreError> {
    Ok(trial.status == TrialStatus::Stopped && undoable_stop(store, trial.id, now)?.is_none())
}

/// Undoes a stop by hand within [`STOP_UNDO_HOURS`]: the trial returns to
/// the status it had (its schedule as it was; a day missed meanwhile is a
/// day without data, as after a day without the daemon). Refused where the
/// stop stands (a decision, safety, or too long ago) or where another trial
/// now measures the same outcome. Returns the status it returned to.
pub fn undo_stop(
    store: &mut Store,
    trial_id: i64,
    actor: &str,
    now: Timestamp,
) -> Result<TrialStatus> {
    let (trial, tz) = trial_and_zone(store, trial_id)?;
    let stop = undoable_stop(store, trial_id, now)?.ok_or_else(|| {
        ActionError::Refused(format!(
            "trial {trial_id}'s stop cannot be undone: only a stop by hand, within {STOP_UNDO_HOURS} hours, can be (a stop by a decision or for safety stands)"
        ))
    })?;
    if stop.back_to != TrialStatus::Proposed {
        let protocol = trial
            .protocol()
            .map_err(|e| ActionError::Refused(e.to_string()))?;
        let mut others = Vec::new();
        for t in store.trials()? {
            let active = matches!(
                t.status,
                TrialStatus::Approved | TrialStatus::Running | TrialStatus::Paused
            );
            if t.id != trial_id
                && t.participant_id == trial.participant_id
                && active
                && let Ok(p) = t.protocol()
            {
                others.push((t.id, p));
            }
        }
        if let Some(why) = lifecycle::conflict(&protocol, &others) {
            return Err(ActionError::Refused(format!(
                "trial {trial_id}'s stop cannot be undone: {why}"
            )));
        }
    }
    // Back to paused, the trial is paused since the pause, not since the
    // undo: `resume` moves every day from the pause's date on.
    let paused_on = (stop.back_to == TrialStatus::Paused)
        .then(|| store.trial_events(trial_id))
        .transpose()?
        .and_then(|events| {
            events
                .iter()
                .rev()
                .find(|e| e.to_status == TrialStatus::Paused.as_str())
                .and_then(|e| e.local_date.as_deref())
                .and_then(|d| d.parse::<Date>().ok())
        });
    store.undo_stop(
        &StatusChange {
            trial_id,
            to: stop.back_to,
            actor,
            reason: &format!("stop undone (it was: {})", stop.reason),
            local_date: paused_on.unwrap_or_else(|| local_date(now, &tz)),
            start_date: None,
            shifted: &[],
            reviewed: None,
        },
        now,
    )?;
    Ok(stop.back_to)
}

/// Stops a trial by hand (a proposal that is stopped is a rejection).
pub fn stop(
    store: &mut Store,
    trial_id: i64,
    reason: &str,
    actor: &str,
    now: Timestamp,
) -> Result<()> {
    move_to(store, trial_id, TrialStatus::Stopped, reason, actor, now)
}

/// Pauses a running trial (holiday, illness): no assignments until resumed.
pub fn pause(
    store: &mut Store,
    trial_id: i64,
    reason: &str,
    actor: &str,
    now: Timestamp,
) -> Result<()> {
    move_to(store, trial_id, TrialStatus::Paused, reason, actor, now)
}

/// A plain life-cycle move on the participant's date (no start date, no
/// schedule change).
fn move_to(
    store: &mut Store,
    trial_id: i64,
    to: TrialStatus,
    reason: &str,
    actor: &str,
    now: Timestamp,
) -> Result<()> {
    let (_, tz) = trial_and_zone(store, trial_id)?;
    store.change_status(
        &StatusChange {
            trial_id,
            to,
            actor,
            reason,
            local_date: local_date(now, &tz),
            start_date: None,
            shifted: &[],
            reviewed: None,
        },
        now,
    )?;
    Ok(())
}

/// Resumes a paused trial on `on` (default today): every schedule day from
/// the pause on not yet run moves so that the first lands on `on`, keeping
/// periods, blocks and arms (block balance is untouched). Returns the shift
/// in days.
pub fn resume(
    store: &mut Store,
    trial_id: i64,
    on: Option<Date>,
    actor: &str,
    now: Timestamp,
) -> Result<i32> {
    let (trial, tz) = trial_and_zone(store, trial_id)?;
    let today = local_date(now, &tz);
    let on = on.unwrap_or(today);
    if on < today {
        return Err(ActionError::Refused(format!(
            "cannot resume in the past ({on} < {today})"
        )));
    }
    let rows = store.schedule(trial.id)?;
    let last_run = store.last_daily_run(trial.id)?;
    // Days before the pause that never ran (the daemon was down, or the
    // demo's history) are past, not paused: only days from the pause on move.
    let paused_on: Option<Date> = store
        .trial_events(trial.id)?
        .iter()
        .rev()
        .find(|e| e.to_status == TrialStatus::Paused.as_str())
        .and_then(|e| e.local_date.as_deref())
        .and_then(|d| d.parse().ok());
    let first_unrun = rows
        .iter()
        .map(|r| r.local_date)
        .find(|d| last_run.is_none_or(|l| *d > l) && paused_on.is_none_or(|p| *d >= p));
    let (shifted, days) = match first_unrun {
        Some(first) if first < on => {
            let shifted = lifecycle::shift_rows(&rows, first, on)
                .map_err(|e| ActionError::Refused(e.to_string()))?;
            let days = first
                .until(on)
                .map_err(|e| ActionError::Refused(e.to_string()))?
                .get_days();
            (shifted, days)
        }
        _ => (Vec::new(), 0),
    };
    store.change_status(
        &StatusChange {
            trial_id,
            to: TrialStatus::Running,
            actor,
            reason: &format!("resumed; remaining schedule moved {days} days"),
            local_date: today,
            start_date: None,
            shifted: &shifted,
            reviewed: None,
        },
        now,
    )?;
    Ok(days)
}

/// Records an adverse event: the trial stops at once (§5, safety).
pub fn adverse_event(
    store: &mut Store,
    trial_id: i64,
    note: &str,
    channel: &str,
    actor: &str,
    now: Timestamp,
) -> Result<()> {
    let (trial, tz) = trial_and_zone(store, trial_id)?;
    if trial.status == TrialStatus::Stopped {
        // Still recorded: a late report matters for the record.
        tracing::warn!(trial = trial_id, "adverse event on a stopped trial");
    }
    store.record_adverse_event(trial_id, local_date(now, &tz), note, channel, actor, now)?;
    Ok(())
}

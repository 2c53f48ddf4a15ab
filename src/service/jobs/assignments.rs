//! The assignments job: start approved trials on their start date, and
//! queue each running trial's day once its local assignment time has come
//! (with its outbox message, in one transaction).

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

use super::refits::{decide_trial, refit_trial};
use crate::service::app::AppState;
use crate::service::jobs::{JobError, recipient, running_trials};
use crate::service::notify::{self, Assignment};
use crate::service::store::TrialRow;
use crate::trial::calendar::{local_date, local_instant, parse_hhmm};
use crate::trial::lifecycle::TrialStatus;
use crate::trial::protocol::Protocol;

/// Whether today's assignment time has come for a trial (whatever its day's state).
fn assignment_time_reached(
    state: &AppState,
    trial: &TrialRow,
    p: &crate::service::store::ParticipantRow,
) -> bool {
    let Ok(protocol) = Protocol::parse(&trial.protocol_toml, "stored protocol") else {
        // queue_one reports the problem.
        return true;
    };
    let (Ok(tz), Some(time)) = (
        TimeZone::get(&p.time_zone),
        assignment_time(&protocol, &p.assignment_time),
    ) else {
        return true;
    };
    let now = state.clock.now();
    now >= local_instant(local_date(now, &tz), time, &tz)
}

/// Starts approved trials whose start date has come: the dated schedule is
/// stored and the trial becomes running, unless another running or paused
/// trial of the participant measures one of its streams (not factorial).
pub(crate) async fn start_due_trials(state: &AppState) -> Result<usize, JobError> {
    let (participants, trials) = state
        .db
        .read(|s| Ok((s.participants()?, s.trials()?)))
        .await?;
    let mut started = 0;
    let mut errors = Vec::new();
    for trial in trials.iter().filter(|t| t.status == TrialStatus::Approved) {
        let Some(p) = participants.iter().find(|p| p.id == trial.participant_id) else {
            continue;
        };
        let tz = TimeZone::get(&p.time_zone)
            .map_err(|e| JobError::Item(format!("zone {}: {e}", p.time_zone)))?;
        let today = local_date(state.clock.now(), &tz);
        let Some(start) = trial.start_date else {
            continue;
        };
        if start > today {
            continue;
        }
        let protocol = Protocol::parse(&trial.protocol_toml, &format!("trial {}", trial.id))
            .map_err(|e| JobError::Item(e.to_string()))?;
        let others: Vec<(i64, Protocol)> = trials
            .iter()
            .filter(|t| t.participant_id == trial.participant_id && t.id != trial.id)
            .filter(|t| matches!(t.status, TrialStatus::Running | TrialStatus::Paused))
            .filter_map(|t| Some((t.id, Protocol::parse(&t.protocol_toml, "stored").ok()?)))
            .collect();
        if let Some(why) = crate::trial::lifecycle::conflict(&protocol, &others) {
            errors.push(format!("trial {} cannot start: {why}", trial.id));
            continue;
        }
        // A start date already past (the daemon was down) starts today.
        let day0 = start.max(today);
        let rows = crate::trial::lifecycle::dated(
            &protocol,
            &crate::trial::design::plan(&protocol, trial.seed),
            day0,
        )
        .map_err(|e| JobError::Item(e.to_string()))?;
        let (id, now) = (trial.id, state.clock.now());
        let message = notify::trial_started_message(
            recipient(p),
            trial.id,
            &protocol,
            &trial.protocol_hash,
            day0,
            &state.public_url,
        );
        state
            .db
            .write(move |s| s.start_trial(id, day0, &rows, &[message], "daemon", now))
            .await?;
        tracing::info!(trial = id, start = %day0, "trial started");
        started += 1;
    }
    if errors.is_empty() {
        Ok(started)
    } else {
        Err(JobError::Item(errors.join("; ")))
    }
}

/// The local assignment time of a trial: the protocol's, else the participant's.
fn assignment_time(protocol: &Protocol, participant_time: &str) -> Option<jiff::civil::Time> {
    protocol
        .notification
        .assignment_time
        .as_deref()
        .and_then(parse_hhmm)
        .or_else(|| parse_hhmm(participant_time))
}

/// Queues today's assignment for every running trial whose local assignment
/// time has come and whose day has not run yet. Days between the last run
/// and today are recorded as missed, never sent late.
pub(crate) async fn queue_assignments(state: &AppState) -> Result<String, JobError> {
    let mut queued = 0;
    let mut errors = Vec::new();
    if let Err(e) = start_due_trials(state).await {
        errors.push(e.to_string());
    }
    for (trial, p) in running_trials(state).await? {
        // A period that just ended is decided before the next day's
        // assignment goes out, so a stopped trial sends nothing more.
        if !assignment_time_reached(state, &trial, &p) {
            continue;
        }
        if let Err(e) = refit_trial(state, &trial, &p).await {
            errors.push(format!("trial {}: {e}", trial.id));
        }
        match decide_trial(state, &trial, &p, true).await {
            Ok(Some(action)) if action.stops() => continue,
            Ok(Some(_)) => {}
            Ok(None) => {}
            Err(e) => {
                errors.push(format!("trial {}: decision: {e}", trial.id));
                continue;
            }
        }
        // The schedule may have changed (arms dropped): queue from the store.
        let trial_id = trial.id;
        let Some(trial) = state.db.read(move |s| s.trial(trial_id)).await? else {
            continue;
        };
        match queue_one(state, trial, p).await {
            Ok(true) => queued += 1,
            Ok(false) => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(format!("{queued} assignments queued"))
    } else {
        Err(JobError::Item(errors.join("; ")))
    }
}

pub(crate) async fn queue_one(
    state: &AppState,
    trial: TrialRow,
    p: crate::service::store::ParticipantRow,
) -> Result<bool, JobError> {
    let protocol = Protocol::parse(&trial.protocol_toml, &format!("trial {}", trial.id))
        .map_err(|e| JobError::Item(e.to_string()))?;
    let tz = TimeZone::get(&p.time_zone)
        .map_err(|e| JobError::Item(format!("participant {}: zone {}: {e}", p.key, p.time_zone)))?;
    let time = assignment_time(&protocol, &p.assignment_time)
        .ok_or_else(|| JobError::Item(format!("participant {}: bad assignment time", p.key)))?;
    let now = state.clock.now();
    let today = local_date(now, &tz);
    if now < local_instant(today, time, &tz) {
        return Ok(false);
    }
    let link_key = state.link_key.clone();
    let base_url = state.public_url.clone();
    let weekly = state.config.email.weekly_summary;
    let expires = now
        .checked_add(jiff::SignedDuration::from_hours(
            24 * i64::from(state.config.email.link_valid_days),
        ))
        .unwrap_or(Timestamp::MAX);
    let queued = state
        .db
        .write(move |s| {
            let last = s.last_daily_run(trial.id)?;
            if last.is_some_and(|l| l >= today) {
                return Ok(false);
            }
            let Some(row) = s.schedule_on(trial.id, today)? else {
                return Ok(false);
            };
            let missed: Vec<Date> = match last {
                Some(last) => s
                    .schedule(trial.id)?
                    .into_iter()
                    .map(|d| d.local_date)
                    .filter(|d| *d > last && *d < today)
                    .collect(),
                None => Vec::new(),
            };
            let message = notify::assignment_message(&Assignment {
                participant_key: &p.key,
                participant_name: &p.name,
                participant_id: p.id,
                email: &p.email,
                trial_id: trial.id,
                protocol: &protocol,
                today: &row,
                links: Some(notify::Links {
                    key: &link_key,
                    base_url: &base_url,
                    expires,
                }),
            });
            let mut messages = vec![message];
            // Composed with every assignment; the outbox keeps the first of
            // each ISO week (the key names the week).
            if weekly {
                let week_start = today
                    .checked_sub(jiff::Span::new().days(7))
                    .unwrap_or(today);
                let days: Vec<u32> = s
                    .schedule(trial.id)?
                    .into_iter()
                    .filter(|r| r.local_date >= week_start && r.local_date < today)
                    .map(|r| r.day)
                    .collect();
                let mut counts: BTreeMap<String, usize> = BTreeMap::new();
                for (day, status) in s.adherence(trial.id)? {
                    if days.contains(&day) {
                        *counts.entry(status).or_default() += 1;
                    }
                }
                let latest = s
                    .latest_fit(trial.id, &protocol.outcome.stream)?
                    .and_then(|f| {
                        serde_json::from_str::<crate::engine::fit::FitReport>(&f.result_json).ok()
                    });
                messages.push(notify::weekly_summary_message(
                    recipient(&p),
                    trial.id,
                    &protocol,
                    today,
                    &counts.into_iter().collect::<Vec<_>>(),
                    latest.as_ref(),
                    &base_url,
                ));
            }
            s.record_daily_run(trial.id, today, &missed, &messages, now)
        })
        .await?;
    Ok(queued)
}

/// When a running trial's next assignment is due: today's time if today has
/// not run yet (possibly already past: "due now"), else the next scheduled day's.
pub fn next_assignment(
    protocol: &Protocol,
    participant_time: &str,
    tz: &TimeZone,
    schedule_dates: &[Date],
    last_run: Option<Date>,
    now: Timestamp,
) -> Option<Timestamp> {
    let time = assignment_time(protocol, participant_time)?;
    let today = local_date(now, tz);
    let next_day = schedule_dates
        .iter()
        .copied()
        .find(|d| *d >= today && last_run.is_none_or(|l| *d > l))?;
    Some(local_instant(next_day, time, tz))
}

//! The assignments job: start approved trials on their start date, and
//! queue each running trial's day once its local assignment time has come
//! (with its outbox message, in one transaction). A look that is due is
//! taken first, so a trial that stops sends nothing more.

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

use super::refits::{decide_trial, refit_trial};
use crate::service::app::AppState;
use crate::service::jobs::{JobError, recipient, running_trials};
use crate::service::loaded::{LoadedTrial, assignment_time};
use crate::service::notify::{self, Assignment};
use crate::service::store::Locking;
use crate::trial::calendar::{local_date, local_instant};
use crate::trial::decide::LockedThresholds;
use crate::trial::design;
use crate::trial::lifecycle::{self, TrialStatus};
use crate::trial::protocol::Protocol;

/// Starts approved trials whose start date has come: the dated schedule is
/// stored and the trial becomes running, unless another running or paused
/// trial of the participant measures one of its streams (not factorial).
pub(crate) async fn start_due_trials(state: &AppState) -> Result<usize, JobError> {
    let (participants, trials) = state
        .db
        .read(|s| Ok((s.participants()?, s.trials()?)))
        .await?;
    let (approved, load_errors) = LoadedTrial::load_all(trials.clone(), &participants, |t| {
        t.status == TrialStatus::Approved
    });
    if approved.is_empty() && load_errors.is_empty() {
        return Ok(0);
    }
    // The running and paused trials a new one must not collide with (the
    // ones that cannot be loaded are reported by the jobs that run them).
    let (mut active, _) = LoadedTrial::load_all(trials, &participants, |t| {
        matches!(t.status, TrialStatus::Running | TrialStatus::Paused)
    });
    let mut errors: Vec<String> = load_errors.iter().map(|e| e.to_string()).collect();
    let mut started = 0;
    for trial in approved {
        let today = trial.today(state.clock.now());
        let Some(start) = trial.row.start_date else {
            continue;
        };
        if start > today {
            continue;
        }
        let others: Vec<(i64, Protocol)> = active
            .iter()
            .filter(|t| t.participant.id == trial.participant.id)
            .map(|t| (t.id(), t.protocol.clone()))
            .collect();
        if let Some(why) = lifecycle::conflict(&trial.protocol, &others) {
            errors.push(format!("trial {} cannot start: {why}", trial.id()));
            continue;
        }
        // The thresholds it will decide with, locked now: the design's
        // calibration (the start waits for it; its refinement where that is
        // done already), or the protocol's where calibration is switched
        // off.
        // A design whose calibration failed every attempt starts on the
        // protocol's stated thresholds (`uncalibrated` says why).
        let mut uncalibrated = None;
        let locked = if state.config.jobs.calibrate {
            let hash = trial.row.protocol_hash.clone();
            let (refinement, calibration, failure) = state
                .db
                .read(move |s| {
                    Ok((
                        s.refinement(&hash)?,
                        s.calibration(&hash)?,
                        s.design_failure(crate::service::store::DesignWork::Calibration, &hash)?,
                    ))
                })
                .await?;
            match (calibration, failure) {
                (Some(c), _) => match refinement {
                    Some(r) => Locking {
                        thresholds: r.calibration.locked(),
                        refined: true,
                    },
                    None => Locking {
                        thresholds: c.locked(),
                        refined: false,
                    },
                },
                (None, Some(f)) if f.given_up() => {
                    tracing::warn!(
                        trial = trial.id(),
                        error = %f.error,
                        "the design could not be calibrated; starting on the protocol's stated thresholds"
                    );
                    uncalibrated = Some(f.error);
                    Locking {
                        thresholds: LockedThresholds::stated(&trial.protocol.decision),
                        refined: false,
                    }
                }
                (None, _) => {
                    tracing::debug!(
                        trial = trial.id(),
                        "start waits for the design's calibration"
                    );
                    continue;
                }
            }
        } else {
            Locking {
                thresholds: LockedThresholds::stated(&trial.protocol.decision),
                refined: false,
            }
        };
        // A start date already past (the daemon was down) starts today.
        let day0 = start.max(today);
        let plan = design::plan(&trial.protocol, trial.row.seed);
        let rows = lifecycle::dated(&trial.protocol, &plan, day0)
            .map_err(|e| JobError::Item(e.to_string()))?;
        let (id, now) = (trial.id(), state.clock.now());
        let message = notify::trial_started_message(
            recipient(&trial.participant),
            id,
            &trial.protocol,
            &trial.row.protocol_hash.0,
            day0,
            &state.public_url,
            uncalibrated.as_deref(),
        );
        state
            .db
            .write(move |s| s.start_trial(id, day0, &rows, locked, &[message], "daemon", now))
            .await?;
        tracing::info!(trial = id, start = %day0, "trial started");
        started += 1;
        // A second approved trial on the same stream now conflicts with it.
        active.push(trial);
    }
    if errors.is_empty() {
        Ok(started)
    } else {
        Err(JobError::Item(errors.join("; ")))
    }
}

/// Queues today's assignment for every running trial whose local assignment
/// time has come and whose day has not run yet. Days between the last run
/// and today are recorded as missed, never sent late.
pub(crate) async fn queue_assignments(state: &AppState) -> Result<String, JobError> {
    let (mut queued, mut nudged) = (0, 0);
    let mut errors = Vec::new();
    if let Err(e) = start_due_trials(state).await {
        errors.push(e.to_string());
    }
    let (trials, load_errors) = running_trials(state).await?;
    errors.extend(load_errors);
    for trial in &trials {
        // A period that just ended is decided before the next day's
        // assignment goes out, so a stopped trial sends nothing more.
        if !trial.assignment_time_reached(state.clock.now()) {
            continue;
        }
        if let Err(e) = refit_trial(state, trial).await {
            errors.push(format!("trial {}: {e}", trial.id()));
        }
        match decide_trial(state, trial, true).await {
            Ok(Some(action)) if action.stops() => continue,
            Ok(Some(_)) => {}
            Ok(None) => {}
            Err(e) => {
                errors.push(format!("trial {}: decision: {e}", trial.id()));
                continue;
            }
        }
        match queue_one(state, trial).await {
            Ok(true) => queued += 1,
            Ok(false) => {}
            Err(e) => errors.push(e.to_string()),
        }
        match nudge_one(state, trial).await {
            Ok(true) => nudged += 1,
            Ok(false) => {}
            Err(e) => errors.push(format!("trial {}: nudge: {e}", trial.id())),
        }
    }
    let mut reminded = 0;
    for trial in &trials {
        match remind_one(state, trial).await {
            Ok(true) => reminded += 1,
            Ok(false) => {}
            Err(e) => errors.push(format!("trial {}: reminder: {e}", trial.id())),
        }
    }
    if errors.is_empty() {
        let mut summary = format!("{queued} assignments");
        if reminded > 0 {
            summary.push_str(&format!(", {reminded} evening reminders"));
        }
        if nudged > 0 {
            summary.push_str(&format!(", {nudged} missing-data nudges"));
        }
        Ok(summary + " queued")
    } else {
        Err(JobError::Item(errors.join("; ")))
    }
}

/// Records today's run of `trial` with its assignment email (and, when on,
/// the weekly summary), unless today already ran or is not a trial day.
/// The schedule is read inside the write transaction, so a decision just
/// taken (arms dropped) is what goes out.
async fn queue_one(state: &AppState, trial: &LoadedTrial) -> Result<bool, JobError> {
    let now = state.clock.now();
    let today = trial.today(now);
    if now < trial.assignment_instant(today) {
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
    let trial = trial.clone();
    let queued = state
        .db
        .write(move |s| {
            let (id, p, protocol) = (trial.id(), &trial.participant, &trial.protocol);
            let last = s.last_daily_run(id)?;
            if last.is_some_and(|l| l >= today) {
                return Ok(false);
            }
            let Some(row) = s.schedule_on(id, today)? else {
                return Ok(false);
            };
            let schedule = s.schedule(id)?;
            let missed: Vec<Date> = match last {
                Some(last) => schedule
                    .iter()
                    .map(|d| d.local_date)
                    .filter(|d| *d > last && *d < today)
                    .collect(),
                None => Vec::new(),
            };
            let message = notify::assignment_message(&the_day(
                &trial,
                &row,
                notify::Links {
                    key: &link_key,
                    base_url: &base_url,
                    expires,
                },
            ));
            let mut messages = vec![message];
            // Composed with every assignment; the outbox keeps the first of
            // each ISO week (the key names the week).
            if weekly {
                let counts = notify::week_adherence(&schedule, &s.adherence(id)?, today);
                // Where they stand, as the overview says it (an unreadable
                // stored fit leaves it out; it never holds back the day's
                // email).
                let label = |arm: usize| protocol.display_label(arm).to_string();
                let standing = crate::service::standing::of_trial(
                    s, &trial.row, protocol, &schedule, today, &label,
                )?;
                messages.push(notify::weekly_summary_message(
                    recipient(p),
                    id,
                    protocol,
                    today,
                    &counts,
                    &standing,
                    &base_url,
                ));
            }
            s.record_daily_run(id, today, &missed, &messages, now)
        })
        .await?;
    Ok(queued)
}

/// `trial`'s day `row` as its messages need it, with one-click `links`.
fn the_day<'a>(
    trial: &'a LoadedTrial,
    row: &'a lifecycle::DatedDay,
    links: notify::Links<'a>,
) -> Assignment<'a> {
    let p = &trial.participant;
    Assignment {
        participant_key: &p.key,
        participant_name: &p.name,
        participant_id: p.id,
        email: &p.email,
        trial_id: trial.id(),
        protocol: &trial.protocol,
        today: row,
        links: Some(links),
    }
}

/// Queues the missing-data nudge of `trial` once today's assignment went
/// out and the outcome has had no data for the participant's
/// `missing_data_days` trial days in a row (`trial::gap`). One nudge a
/// stretch without data: none while a nudge was sent on or after the
/// stretch's first day (filling its oldest days moves that day later, but
/// not past the nudge), and the key names the first day.
async fn nudge_one(state: &AppState, trial: &LoadedTrial) -> Result<bool, JobError> {
    let Some(after) = state.config.missing_data_days(&trial.participant.key) else {
        return Ok(false);
    };
    let now = state.clock.now();
    let today = trial.today(now);
    let base_url = state.public_url.clone();
    let trial = trial.clone();
    Ok(state
        .db
        .write(move |s| {
            let (id, p, protocol) = (trial.id(), &trial.participant, &trial.protocol);
            if s.last_daily_run(id)? != Some(today) {
                return Ok(false);
            }
            let schedule = s.schedule(id)?;
            let Some(gap) =
                crate::service::standing::missing_data(s, &trial.row, protocol, &schedule, today)?
            else {
                return Ok(false);
            };
            if !gap.reaches(after) || s.latest_message_date(id, "nudge")? >= Some(gap.since) {
                return Ok(false);
            }
            let message =
                notify::missing_data_message(recipient(p), id, protocol, gap, today, &base_url);
            s.enqueue_message(&message, now)
        })
        .await?)
}

/// Queues the evening reminder of `trial`'s day once the participant's
/// reminder time has come: only on a day whose assignment went out, when
/// the outcome is a self-report and the day's answer has not come. The
/// outbox keeps one a day (the key names the day).
async fn remind_one(state: &AppState, trial: &LoadedTrial) -> Result<bool, JobError> {
    let Some(at) = state.config.evening_reminder(&trial.participant.key) else {
        return Ok(false);
    };
    if trial.protocol.outcome.self_report.is_none() {
        return Ok(false);
    }
    let now = state.clock.now();
    let today = trial.today(now);
    if now < local_instant(today, at, &trial.zone) {
        return Ok(false);
    }
    let link_key = state.link_key.clone();
    let base_url = state.public_url.clone();
    // The links answer for today: they need not outlive tomorrow.
    let expires = now
        .checked_add(jiff::SignedDuration::from_hours(48))
        .unwrap_or(Timestamp::MAX);
    let trial = trial.clone();
    Ok(state
        .db
        .write(move |s| {
            let (id, p, protocol) = (trial.id(), &trial.participant, &trial.protocol);
            if s.last_daily_run(id)? != Some(today)
                || s.has_observation_on(p.id, &protocol.outcome.stream, today)?
            {
                return Ok(false);
            }
            let Some(row) = s.schedule_on(id, today)? else {
                return Ok(false);
            };
            let Some(message) = notify::evening_reminder_message(&the_day(
                &trial,
                &row,
                notify::Links {
                    key: &link_key,
                    base_url: &base_url,
                    expires,
                },
            )) else {
                return Ok(false);
            };
            s.enqueue_message(&message, now)
        })
        .await?)
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

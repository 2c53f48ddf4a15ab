//! The outbox job: deliver due messages with retries and backoff.

use std::sync::Arc;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::service::app::AppState;
use crate::service::jobs::JobError;
use crate::service::notify::{self};
use crate::service::store::{Attempt, ParticipantRow};
use crate::trial::calendar::local_date;

/// Why a message is not delivered late: an assignment (or its evening
/// reminder) is for its day only, and once the participant's own day is
/// past it, it is never sent (by email or push) as if it were today.
pub(crate) fn passed_day(
    kind: &str,
    day: Option<&str>,
    participant: Option<&ParticipantRow>,
    now: Timestamp,
) -> Option<String> {
    let today = participant
        .and_then(|p| TimeZone::get(&p.time_zone).ok())
        .map(|tz| local_date(now, &tz).to_string());
    match (kind, day, today) {
        ("assignment" | "reminder", Some(day), Some(today)) if *day < *today => {
            Some(format!("its day ({day}) has passed"))
        }
        _ => None,
    }
}

/// Delivers due outbox messages. The attempt is recorded before delivery,
/// so a crash mid-delivery is retried after its backoff, not in a loop.
pub(crate) async fn deliver_outbox(state: &AppState) -> Result<String, JobError> {
    let now = state.clock.now();
    let (due, participants) = state
        .db
        .read(move |s| Ok((s.due_messages(now, 50)?, s.participants()?)))
        .await?;
    if due.is_empty() {
        return match held(state) {
            Some(why) => Err(JobError::Item(format!(
                "delivery held ({why}): messages wait for their next attempt"
            ))),
            None => Ok("0 sent, 0 failed".into()),
        };
    }
    let smtp = match &state.config.email.smtp {
        Some(cfg) => Some(Arc::new(
            notify::smtp_transport(cfg).map_err(|e| JobError::Item(e.to_string()))?,
        )),
        None => None,
    };
    let (mut sent, mut failed, mut withheld) = (0, 0, 0);
    let waiting = due.len();
    for (tried, row) in due.into_iter().enumerate() {
        if *state.stopping.borrow() {
            break;
        }
        let id = row.id;
        let participant = participants.iter().find(|p| p.id == row.participant_id);
        if let Some(why) = passed_day(&row.kind, row.local_date.as_deref(), participant, now) {
            let msg = format!("not delivered: {why}");
            tracing::warn!(message = id, "{msg}");
            state.db.write(move |s| s.mark_failed(id, &msg)).await?;
            failed += 1;
            continue;
        }
        let retry_at = now + notify::backoff(row.attempts + 1);
        // The attempt is recorded before it starts: a crash mid-send is
        // retried after its backoff (the Message-ID lets mail systems drop
        // the rare repeat), never in a tight loop.
        let started = state
            .db
            .write(move |s| s.mark_attempt(id, retry_at))
            .await?;
        if let Attempt::Withheld(why) = started {
            tracing::info!(message = id, "{why}");
            withheld += 1;
            continue;
        }
        let from = state.config.email.from.clone();
        let dir = state.config.mail_dir();
        let smtp = smtp.clone();
        let cfg = state.config.email.smtp.clone();
        let delivered = tokio::task::spawn_blocking(move || match (smtp, cfg) {
            (Some(transport), Some(cfg)) => {
                notify::deliver_smtp(&row, &from, &transport, &cfg, now)
            }
            _ => notify::deliver_to_file(&row, &from, &dir, now).map(|p| p.display().to_string()),
        })
        .await
        .map_err(|e| JobError::Item(e.to_string()))?;
        match delivered {
            Ok(to) => {
                state.db.write(move |s| s.mark_sent(id, &to, now)).await?;
                sent += 1;
                hold(state, None);
            }
            Err(e) if e.is_permanent() => {
                let msg = e.to_string();
                tracing::error!(message = id, error = %msg, "permanent delivery failure");
                state.db.write(move |s| s.mark_failed(id, &msg)).await?;
                failed += 1;
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::warn!(message = id, error = %msg, "delivery failed; will retry");
                let stored = msg.clone();
                state
                    .db
                    .write(move |s| s.mark_retry(id, &stored, retry_at))
                    .await?;
                failed += 1;
                // The server, the account or the mail folder: the others
                // would fail alike, so they keep their attempts for the next
                // run, and the job shows failing until it is mended.
                if e.holds_every_message() {
                    let rest = waiting - tried - 1;
                    hold(state, Some(msg.clone()));
                    return Err(JobError::Item(format!(
                        "{}; delivery held ({msg}): {rest} more due wait for the next run",
                        summary(sent, failed, withheld)
                    )));
                }
            }
        }
    }
    Ok(summary(sent, failed, withheld))
}

/// A run's counts: a day's message withheld as its trial no longer runs is
/// the policy's, not a failure.
fn summary(sent: usize, failed: usize, withheld: usize) -> String {
    if withheld == 0 {
        format!("{sent} sent, {failed} failed")
    } else {
        format!("{sent} sent, {failed} failed, {withheld} withheld (trial not running)")
    }
}

/// Why delivery is held, if it is.
fn held(state: &AppState) -> Option<String> {
    state
        .delivery_held
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// Holds delivery for `why`, or (`None`) lifts the hold.
fn hold(state: &AppState, why: Option<String>) {
    *state
        .delivery_held
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = why;
}

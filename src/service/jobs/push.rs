//! The push job: every outbox message of a participant with push channels
//! (ntfy, Home Assistant) goes to each channel once, with its own retries
//! and backoff, beside the email. Runs with the outbox job.

use std::sync::Arc;

use crate::service::app::AppState;
use crate::service::jobs::JobError;
use crate::service::jobs::outbox::passed_day;
use crate::service::notify;
use crate::service::push::PushConfig;
use crate::service::store::PushStep;

/// How far back a channel's first run reaches: a channel added to the
/// config gets the last day's messages, not the whole history.
const FIRST_REACH: jiff::SignedDuration = jiff::SignedDuration::from_hours(24);

/// Attempts before a push is given up on (with the outbox's backoff, about
/// eight hours of retrying).
pub const PUSH_ATTEMPTS: i64 = 10;

/// Queues each channel's new messages and sends the pushes that are due.
pub(crate) async fn deliver_pushes(state: &AppState) -> Result<String, JobError> {
    let now = state.clock.now();
    let participants = state.db.read(|s| s.participants()).await?;
    let channels: Vec<(i64, Arc<PushConfig>)> = participants
        .iter()
        .flat_map(|p| {
            state
                .config
                .push(&p.key)
                .iter()
                .map(|c| (p.id, Arc::new(c.clone())))
        })
        .collect();
    let keys: Vec<(i64, String)> = channels.iter().map(|(p, c)| (*p, c.channel())).collect();
    let since = now - FIRST_REACH;
    let due = state
        .db
        .write(move |s| {
            for (participant, channel) in &keys {
                s.queue_pushes(*participant, channel, since, now)?;
            }
            s.due_pushes(now, 50)
        })
        .await?;
    if due.is_empty() {
        return Ok(String::new());
    }
    let open = state.config.public_url();
    let (mut sent, mut failed) = (0, 0);
    // A channel that failed for now is not tried again this run: a server
    // that is down (each try up to its timeout) must not hold up the rest.
    let mut down: Vec<String> = Vec::new();
    for push in due {
        if *state.stopping.borrow() {
            break;
        }
        if down.contains(&push.channel) {
            continue;
        }
        let id = push.id;
        let channel = channels
            .iter()
            .find(|(p, c)| *p == push.participant_id && c.channel() == push.channel)
            .map(|(_, c)| Arc::clone(c));
        let participant = participants.iter().find(|p| p.id == push.participant_id);
        let given_up = match &channel {
            None => Some("its channel is no longer in the config".to_string()),
            Some(_) if push.attempts >= PUSH_ATTEMPTS => {
                Some(format!("given up after {} attempts", push.attempts))
            }
            Some(_) => passed_day(&push.kind, push.local_date.as_deref(), participant, now),
        };
        let Some(channel) = channel.filter(|_| given_up.is_none()) else {
            let why = given_up.unwrap_or_default();
            tracing::warn!(push = id, "not pushed: {why}");
            state
                .db
                .write(move |s| s.record_push(id, PushStep::Failed { error: &why }))
                .await?;
            failed += 1;
            continue;
        };
        let retry_at = now + notify::backoff(push.attempts + 1);
        state
            .db
            .write(move |s| s.record_push(id, PushStep::Attempt { retry_at }))
            .await?;
        let open = open.clone();
        let key = push.channel.clone();
        let result = tokio::task::spawn_blocking(move || {
            let text = crate::service::push::push_text(&push.body_text, &open);
            channel.send(&push.subject, &text, &open)
        })
        .await
        .map_err(|e| JobError::Item(e.to_string()))?;
        match result {
            Ok(()) => {
                state
                    .db
                    .write(move |s| s.record_push(id, PushStep::Sent { at: now }))
                    .await?;
                sent += 1;
            }
            Err(e) => {
                let error = e.to_string();
                let permanent = e.permanent;
                if !permanent {
                    down.push(key);
                }
                tracing::warn!(push = id, %error, permanent, "push failed");
                state
                    .db
                    .write(move |s| {
                        let step = if permanent {
                            PushStep::Failed { error: &error }
                        } else {
                            PushStep::Retry {
                                error: &error,
                                retry_at,
                            }
                        };
                        s.record_push(id, step)
                    })
                    .await?;
                failed += 1;
            }
        }
    }
    Ok(format!("{sent} pushed, {failed} push(es) failed"))
}

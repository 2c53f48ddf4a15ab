//! The push job: every outbox message of a participant with push channels
//! (ntfy, Home Assistant) goes to each channel once, with its own retries
//! and backoff, beside the email. A channel the server refuses (a revoked
//! token) holds its messages as an outage would, and the job shows failing
//! until a push to it goes through. Runs with the outbox job.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::service::app::AppState;
use crate::service::jobs::JobError;
use crate::service::jobs::outbox::passed_day;
use crate::service::notify;
use crate::service::push::PushConfig;
use crate::service::store::{Attempt, PushStep};

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
    // How a held channel is named where `/healthz` shows it: by participant
    // and place in the config, never by its URL (an ntfy topic is a secret).
    let label = |participant: i64, key: &str| -> String {
        let who = participants
            .iter()
            .find(|p| p.id == participant)
            .map_or("?", |p| p.key.as_str());
        let mut mine = channels.iter().filter(|(p, _)| *p == participant);
        match mine.position(|(_, c)| c.channel() == key) {
            Some(i) => format!("{who}'s push channel {}", i + 1),
            None => format!("{who}'s push channel"),
        }
    };
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
        return match held_now(state, &channels) {
            Some(why) => Err(JobError::Item(why)),
            None => Ok(String::new()),
        };
    }
    let open = state.config.public_url();
    let (mut sent, mut failed, mut withheld) = (0, 0, 0);
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
        let started = state.db.write(move |s| s.begin_push(id, retry_at)).await?;
        if let Attempt::Withheld(why) = started {
            tracing::info!(push = id, "{why}");
            withheld += 1;
            continue;
        }
        let open = open.clone();
        let key = push.channel.clone();
        let participant_id = push.participant_id;
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
                held(state).remove(&key);
            }
            Err(e) => {
                let error = e.to_string();
                let permanent = e.permanent;
                if let Some(code) = e.refused {
                    let why = format!(
                        "{} ({}) answered {code}",
                        label(participant_id, &key),
                        e.kind.name()
                    );
                    held(state).insert(key.clone(), why);
                }
                if !permanent {
                    down.push(key);
                }
                tracing::warn!(push = id, %error, permanent, refused = e.refused, "push failed");
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
    // A day's message withheld as its trial no longer runs is the
    // policy's, not a failure.
    let mut summary = format!("{sent} pushed, {failed} push(es) failed");
    if withheld > 0 {
        summary.push_str(&format!(", {withheld} withheld (trial not running)"));
    }
    match held_now(state, &channels) {
        Some(why) => Err(JobError::Item(format!("{summary}; {why}"))),
        None => Ok(summary),
    }
}

/// The channels held as refused ([`AppState::push_held`]).
fn held(state: &AppState) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
    state.push_held.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why pushes are held, naming each refused channel still in the config
/// (one taken out of it is forgotten) as `deliver_pushes` labels it, or
/// `None`.
fn held_now(state: &AppState, channels: &[(i64, Arc<PushConfig>)]) -> Option<String> {
    let mut held = held(state);
    held.retain(|key, _| channels.iter().any(|(_, c)| c.channel() == *key));
    let named: Vec<String> = held.values().cloned().collect();
    (!named.is_empty()).then(|| {
        format!(
            "pushes held until the channel's setting is mended (its messages wait): {}",
            named.join("; ")
        )
    })
}

//! The sources job: poll every source through its adapter, store what came
//! with the new cursor in one transaction, warn the participant once when a
//! source has failed for a day.

use jiff::Timestamp;

use crate::service::app::AppState;
use crate::service::jobs::{JobError, recipient};
use crate::service::notify;
use crate::service::sources::adapter_for;

/// Polls every source with a known adapter; one failing source does not stop the others.
pub(crate) async fn poll_sources(state: &AppState) -> Result<String, JobError> {
    let (rows, participants) = state
        .db
        .read(|s| Ok((s.sources()?, s.participants()?)))
        .await?;
    let mut inserted = 0;
    let mut errors = Vec::new();
    for row in rows {
        let now = state.clock.now();
        let source_id = row.id;
        let name = row.name.clone();
        let participant_id = row.participant_id;
        let last_success = row.last_success_at.clone();
        let created = row.created_at.clone();
        let cursor = row.cursor.clone();
        let adapter = state.db.read_with(move |s| adapter_for(&row, s)).await;
        let polled = match adapter {
            // Observations of this kind arrive through links and forms.
            Ok(None) => continue,
            Ok(Some(source)) => source
                .poll(cursor.as_deref(), now)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match polled {
            Ok(poll) => {
                inserted += state
                    .db
                    .write(move |s| {
                        s.record_poll(source_id, &poll.observations, poll.cursor.as_deref(), now)
                    })
                    .await?;
            }
            Err(e) => {
                let message = e.clone();
                // Failing for more than a day (or never read since it was
                // added a day ago): tell the participant, once per outage.
                let since = last_success.clone().unwrap_or_else(|| created.clone());
                let failing_long = since
                    .parse::<Timestamp>()
                    .is_ok_and(|t| now.duration_since(t) > jiff::SignedDuration::from_hours(24));
                let warning = participants
                    .iter()
                    .find(|p| p.id == participant_id)
                    .filter(|_| failing_long)
                    .map(|p| {
                        notify::source_warning_message(
                            recipient(p),
                            &name,
                            &since,
                            &e,
                            &state.public_url,
                        )
                    });
                state
                    .db
                    .write(move |s| {
                        s.record_poll_error(source_id, &message, now)?;
                        if let Some(w) = &warning {
                            s.enqueue_message(w, now)?;
                        }
                        Ok(())
                    })
                    .await?;
                errors.push(format!("{name}: {e}"));
            }
        }
    }
    if errors.is_empty() {
        Ok(format!("{inserted} new observations"))
    } else {
        Err(JobError::Item(errors.join("; ")))
    }
}

//! The sources job: poll every source through its adapter, store what came
//! with the new cursor in one transaction, warn the participant once when a
//! source has failed for a day.

use jiff::Timestamp;

use crate::service::app::AppState;
use crate::service::demo::{self};
use crate::service::jobs::{JobError, recipient};
use crate::service::notify::{self};
use crate::service::sources::Source;
use crate::service::store::StoreError;

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
        let polled = match row.kind.as_str() {
            demo::SOURCE_KIND => {
                let cursor = row.cursor.clone();
                state
                    .db
                    .read(move |s| {
                        demo::source_for(&row, s).map_err(|e| StoreError::Refused(e.to_string()))
                    })
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|source| {
                        source
                            .poll(cursor.as_deref(), now)
                            .map_err(|e| e.to_string())
                    })
            }
            // Ratings arrive through links and forms, not by polling.
            "self_report" => continue,
            other => Err(format!("no adapter for source kind {other:?}")),
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

//! The sources job: poll every pulled source through its adapter, all at
//! once (a slow or failing source never holds up the others), store what
//! came with the new cursor in one transaction, log each poll's counts or
//! error, and warn the participant once when a source has failed for a day.

use jiff::Timestamp;

use crate::service::app::AppState;
use crate::service::jobs::{JobError, recipient};
use crate::service::notify;
use crate::service::sources::{SourceError, adapter_for};
use crate::service::store::{RunWay, SourceRow, StoreError, Upserted};

/// Polls every source with a known adapter, concurrently; one failing
/// source does not stop the others.
pub(crate) async fn poll_sources(state: &AppState) -> Result<String, JobError> {
    let rows = state.db.read(|s| s.sources()).await?;
    let mut polls = tokio::task::JoinSet::new();
    for row in rows {
        let state = state.clone();
        polls.spawn(async move {
            let name = row.name.clone();
            (name, poll_one(&state, row).await)
        });
    }
    let mut total = Upserted::default();
    let mut errors = Vec::new();
    match sweep_inbox(state).await {
        Ok(sweep) => {
            for r in &sweep.imported {
                total.add(r.counts);
            }
            errors.extend(sweep.failed.into_iter().map(|f| format!("inbox: {f}")));
        }
        Err(e) => errors.push(format!("inbox: {e}")),
    }
    while let Some(joined) = polls.join_next().await {
        match joined {
            Ok((_, Ok(Some(counts)))) => total.add(counts),
            Ok((_, Ok(None))) => {}
            Ok((name, Err(e))) => errors.push(format!("{name}: {e}")),
            Err(e) => errors.push(format!("a poll panicked: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(format!(
            "{} new observations, {} updated",
            total.stored, total.updated
        ))
    } else {
        errors.sort();
        Err(JobError::Item(errors.join("; ")))
    }
}

/// Imports the files waiting in the inbox, on a connection of its own (an
/// import of a large export writes in batches and must not hold the
/// daemon's writer).
async fn sweep_inbox(state: &AppState) -> Result<crate::service::sources::inbox::Sweep, String> {
    let config = state.config.clone();
    if !crate::service::sources::inbox::inbox_dir(&config.data_dir).is_dir() {
        return Ok(Default::default());
    }
    let now = state.clock.now();
    tokio::task::spawn_blocking(move || {
        let key = config.database.resolve_key().map_err(|e| e.to_string())?;
        let mut store =
            crate::service::store::Store::open_keyed(&config.database_path(), key.as_ref())
                .map_err(|e| e.to_string())?;
        crate::service::sources::inbox::sweep(
            &mut store,
            &config.data_dir,
            &|key| config.import_settings(key),
            now,
        )
        .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Polls one source: `None` for a kind that is never polled (its data
/// arrive by push, import, links or forms).
async fn poll_one(state: &AppState, row: SourceRow) -> Result<Option<Upserted>, JobError> {
    let now = state.clock.now();
    let source_id = row.id;
    let name = row.name.clone();
    let participant_id = row.participant_id;
    let since = row
        .last_success_at
        .clone()
        .unwrap_or_else(|| row.created_at.clone());
    let cursor = row.cursor.clone();
    let config = state.config.clone();
    let adapter = match state
        .db
        .read_with(move |s| adapter_for(&row, s, &config))
        .await
    {
        Ok(None) => return Ok(None),
        Ok(Some(a)) if !a.due(cursor.as_deref(), now) => return Ok(None),
        Ok(Some(a)) => Ok(a),
        Err(e) => Err(e.to_string()),
    };
    let run = state
        .db
        .write(move |s| s.begin_run(source_id, RunWay::Poll, "", now))
        .await?;
    // Adapters that talk to a server block on the network: off the runtime.
    // Credentials first: a renewed grant is stored before anything else can
    // fail (a refresh token may be good only once).
    let authorised = match adapter {
        Ok(source) => tokio::task::spawn_blocking(move || {
            let renewed = source.authorise(now);
            (source, renewed)
        })
        .await
        .map_err(|e| format!("the poll panicked: {e}")),
        Err(e) => Err(e),
    };
    let source = match authorised {
        Ok((source, Ok(None))) => Ok(source),
        Ok((source, Ok(Some(renewal)))) => {
            let stored = state
                .db
                .write(move |s| s.save_renewed_grant(source_id, &renewal, now))
                .await?;
            if !stored {
                // Connected again while the refresh was under way, perhaps
                // to another account: that connection stands, and this
                // poll, which holds the grant it replaced, reads nothing.
                state
                    .db
                    .write(move |s| s.finish_run(run, 0, RECONNECTED, None, now))
                    .await?;
                return Ok(None);
            }
            Ok(source)
        }
        Ok((
            _,
            Err(SourceError::NeedsReauthorisation {
                message,
                grant_stored_at,
                ..
            }),
        )) => {
            return reauthorise(
                state,
                run,
                (source_id, participant_id),
                &name,
                (message, grant_stored_at),
                now,
            )
            .await;
        }
        Ok((_, Err(e))) => Err(e.to_string()),
        Err(e) => Err(e),
    };
    let polled = match source {
        Ok(source) => tokio::task::spawn_blocking(move || source.poll(cursor.as_deref(), now))
            .await
            .unwrap_or_else(|e| {
                Err(SourceError::Config {
                    source_name: String::new(),
                    message: format!("the poll panicked: {e}"),
                })
            })
            .map_err(|e| {
                if matches!(e, SourceError::TokenRejected { .. }) {
                    (e.to_string(), true)
                } else {
                    (e.to_string(), false)
                }
            }),
        Err(e) => Err((e, false)),
    };
    let polled = match polled {
        Ok(p) => Ok(p),
        Err((e, token_rejected)) => {
            if token_rejected {
                state
                    .db
                    .write(move |s| s.expire_grant(source_id, now))
                    .await?;
            }
            Err(e)
        }
    };
    match polled {
        Ok(poll) => {
            let counts = state
                .db
                .write(move |s| {
                    let counts = s.record_poll(
                        source_id,
                        run,
                        &poll.observations,
                        &poll.withdrawn,
                        poll.cursor.as_deref(),
                        now,
                    )?;
                    s.finish_run(run, poll.refused, &poll.problems.join("\n"), None, now)?;
                    Ok(counts)
                })
                .await;
            match counts {
                Ok(c) => Ok(Some(c)),
                // A refused batch (a non-finite value) is this source's
                // error, logged like any other; the cursor stays put.
                Err(StoreError::Refused(e)) => {
                    fail(state, run, participant_id, &name, &since, e, now).await
                }
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => fail(state, run, participant_id, &name, &since, e, now).await,
    }
}

/// A poll's note when the person connected again while its grant was
/// being renewed.
const RECONNECTED: &str = "connected again while this poll renewed the old connection's token: \
                           nothing read; the next poll uses the new connection";

/// A source whose grant was refused: marked so (it is not polled until the
/// person connects it again), the run failed with the reason, and the
/// participant told at once, once.
async fn reauthorise(
    state: &AppState,
    run: i64,
    (source_id, participant_id): (i64, i64),
    name: &str,
    (why, grant_stored_at): (String, Timestamp),
    now: Timestamp,
) -> Result<Option<Upserted>, JobError> {
    let participants = state.db.read(|s| s.participants()).await?;
    let message = participants
        .iter()
        .find(|p| p.id == participant_id)
        .map(|p| {
            notify::source_reauthorisation_message(recipient(p), name, &why, &state.public_url, now)
        });
    let error = format!("needs re-authorisation: {why}");
    let logged = error.clone();
    state
        .db
        .write(move |s| {
            if s.needs_reauthorisation(source_id, grant_stored_at, &why, now)?
                && let Some(m) = &message
            {
                s.enqueue_message(m, now)?;
            }
            s.finish_run(run, 0, "", Some(&logged), now)?;
            Ok(())
        })
        .await?;
    Err(JobError::Item(format!("{name}: {error}")))
}

/// Logs a failed poll; failing for more than a day (or never read since it
/// was added a day ago), the participant is told, once per outage.
#[allow(clippy::too_many_arguments)]
async fn fail(
    state: &AppState,
    run: i64,
    participant_id: i64,
    name: &str,
    since: &str,
    error: String,
    now: Timestamp,
) -> Result<Option<Upserted>, JobError> {
    let failing_long = since
        .parse::<Timestamp>()
        .is_ok_and(|t| now.duration_since(t) > jiff::SignedDuration::from_hours(24));
    let participants = state.db.read(|s| s.participants()).await?;
    let warning = participants
        .iter()
        .find(|p| p.id == participant_id)
        .filter(|_| failing_long)
        .map(|p| {
            notify::source_warning_message(recipient(p), name, since, &error, &state.public_url)
        });
    let message = error.clone();
    state
        .db
        .write(move |s| {
            s.finish_run(run, 0, "", Some(&message), now)?;
            if let Some(w) = &warning {
                s.enqueue_message(w, now)?;
            }
            Ok(())
        })
        .await?;
    Err(JobError::Item(error))
}

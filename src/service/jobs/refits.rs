//! The refits job: refit every outcome of every running trial whose data
//! changed, then take the look that is due through the one shared
//! [`trial::step`](crate::trial::step), the same the simulator takes.

use crate::engine::fit;
use crate::engine::model::ModelError;
use crate::service::app::AppState;
use crate::service::jobs::{JobError, recipient, running_trials};
use crate::service::loaded::LoadedTrial;
use crate::service::notify;
use crate::service::store::{DecisionRow, NewDecision, NewFit, Store, StoreError};
use crate::trial::decide::{Action, Decision};
use crate::trial::prior_data::{has_proposer_prior, sceptical_key};
use crate::trial::protocol::{Analysis, Outcome, Protocol};
use crate::trial::series;
use crate::trial::step::{self, LookFit, LookHistory};

/// What the trial brings to a look: periods decided and arms dropped (from
/// its stored decisions), and the thresholds it locked (at its start, or
/// refined before its first decisive look).
fn history_of(trial: &LoadedTrial, decisions: &[DecisionRow]) -> LookHistory {
    let looks: Vec<(Option<u32>, Option<Decision>)> =
        decisions.iter().map(|d| (d.period, d.decision())).collect();
    LookHistory {
        locked: trial.row.locked,
        ..LookHistory::of(&looks)
    }
}

/// Refits every outcome of every running trial whose stream has data newer
/// than its last fit (new observations or a later date), then takes the
/// look that is due. The fit runs on the blocking pool; the fit and its
/// priors are stored with an audit entry.
pub(crate) async fn refit_trials(state: &AppState) -> Result<String, JobError> {
    let mut fitted = 0;
    let mut decided = 0;
    let (trials, mut errors) = running_trials(state).await?;
    for trial in &trials {
        match refit_trial(state, trial).await {
            Ok(n) => fitted += n,
            Err(e) => errors.push(format!("trial {}: {e}", trial.id())),
        }
        match decide_trial(state, trial, false).await {
            Ok(Some(_)) => decided += 1,
            Ok(None) => {}
            Err(e) => errors.push(format!("trial {}: decision: {e}", trial.id())),
        }
    }
    if errors.is_empty() {
        Ok(format!("{fitted} fits stored, {decided} decisions"))
    } else {
        Err(JobError::Item(errors.join("; ")))
    }
}

/// Refits every outcome of `trial` whose data changed. Returns the number
/// of fits stored.
pub(crate) async fn refit_trial(state: &AppState, trial: &LoadedTrial) -> Result<usize, JobError> {
    let mut stored = 0;
    for outcome in trial.protocol.outcomes() {
        // Intention to treat always; as treated too when the protocol says
        // decisions follow it (both are kept, under their own keys).
        let mut analyses = vec![(outcome.stream.clone(), false, outcome.clone())];
        if trial.protocol.decision.analysis == Analysis::AsTreated {
            analyses.push((
                series::as_treated_key(&outcome.stream),
                true,
                outcome.clone(),
            ));
        }
        // A proposer's prior: the same fit under the sceptical default too
        // (never decisive), for the prior–data comparison.
        if std::ptr::eq(outcome, &trial.protocol.outcome) && has_proposer_prior(&trial.protocol) {
            let mut sceptical = outcome.clone();
            sceptical.priors.effects.clear();
            analyses.push((sceptical_key(&outcome.stream), false, sceptical));
        }
        for (key, as_treated, fitted) in analyses {
            if refit_one(state, trial, &fitted, &key, as_treated).await? {
                stored += 1;
            }
        }
    }
    Ok(stored)
}

/// Refits one outcome under one analysis when its data changed; stores the
/// fit under `key`. Returns whether a fit was stored.
async fn refit_one(
    state: &AppState,
    trial: &LoadedTrial,
    outcome: &Outcome,
    key: &str,
    as_treated: bool,
) -> Result<bool, JobError> {
    let (trial_id, fit_key) = (trial.id(), key.to_string());
    let source = SeriesSource::of(state, trial, outcome, as_treated);
    let (ts, last, decisions) = state
        .db
        .read(move |s| {
            Ok((
                source.read(s)?,
                s.latest_fit(trial_id, &fit_key)?,
                s.decisions(trial_id)?,
            ))
        })
        .await?;
    let dropped = history_of(trial, &decisions).dropped;
    let (protocol, out) = (trial.protocol.clone(), outcome.clone());
    let seed = trial.row.seed;
    let result = tokio::task::spawn_blocking(move || {
        let Some(through) = ts.data_through else {
            return Ok(None);
        };
        // Fresh: more or fewer observations, a later day, or a value
        // changed in place (a fit stored before digests compares the rest).
        let digest = ts.digest();
        let fresh = last.as_ref().is_none_or(|f| {
            f.observations != ts.series.y.len() as i64
                || f.data_through != through
                || f.data_digest.as_ref().is_some_and(|d| *d != digest)
        });
        if !fresh || ts.series.y.len() < fit::MIN_OBSERVATIONS {
            return Ok(None);
        }
        let model = out.model_spec();
        let spec = step::look_fit_spec(&model, &protocol, seed, ts.run_in, dropped);
        fit::fit(&ts.series, &spec).map(|r| Some((r, through, digest)))
    })
    .await
    .map_err(|e| JobError::Item(e.to_string()))?
    .map_err(|e: ModelError| JobError::Item(format!("{key}: {e}")))?;
    let Some((report, through, data_digest)) = result else {
        return Ok(false);
    };
    let fit = NewFit {
        trial_id,
        stream_key: key.to_string(),
        data_through: through,
        observations: report.observations,
        engine: format!(
            "{:?}{}/{:?}",
            report.family,
            match report.noise {
                crate::engine::spec::NoiseModel::Normal => "",
                crate::engine::spec::NoiseModel::StudentT => "-student-t",
            },
            report.diagnostics.method
        )
        .to_lowercase(),
        seed,
        scale: report.priors.scale,
        priors_json: serde_json::to_string(&report.priors).unwrap_or_default(),
        result_json: serde_json::to_string(&report).unwrap_or_default(),
        converged: report.diagnostics.converged,
        wall_ms: report.diagnostics.wall_ms,
        data_digest,
    };
    let now = state.clock.now();
    state.db.write(move |s| s.insert_fit(&fit, now)).await?;
    Ok(true)
}

/// Where a fit's series comes from (§3): the trial's schedule (as treated,
/// where the analysis is) and the outcome stream's observations over the
/// trial's own dates, one device a day as the participant's stream rules
/// prefer.
struct SeriesSource {
    trial_id: i64,
    participant_id: i64,
    protocol: Protocol,
    outcome: Outcome,
    as_treated: bool,
    prefer: Vec<String>,
    zone: jiff::tz::TimeZone,
}

impl SeriesSource {
    /// `trial`'s `outcome`, under the as-treated analysis where `as_treated`.
    fn of(state: &AppState, trial: &LoadedTrial, outcome: &Outcome, as_treated: bool) -> Self {
        SeriesSource {
            trial_id: trial.id(),
            participant_id: trial.participant.id,
            protocol: trial.protocol.clone(),
            outcome: outcome.clone(),
            as_treated,
            prefer: state
                .config
                .stream_rules(&trial.participant.key)
                .prefer(&outcome.stream)
                .to_vec(),
            zone: trial.zone.clone(),
        }
    }

    /// The series as stored now.
    fn read(&self, s: &Store) -> Result<series::TrialSeries, StoreError> {
        let schedule = s.schedule(self.trial_id)?;
        let days = schedule.iter().map(|d| d.local_date);
        let observations = match (days.clone().min(), days.max()) {
            (Some(first), Some(last)) => s.observations_between(
                self.participant_id,
                &self.outcome.stream,
                &self.prefer,
                (first, last),
            )?,
            _ => Vec::new(),
        };
        let schedule = if self.as_treated {
            let comparator = self.protocol.comparator_index();
            series::as_treated(&schedule, &s.adherence(self.trial_id)?, comparator)
        } else {
            schedule
        };
        Ok(series::trial_series(
            &self.protocol,
            &self.outcome,
            &schedule,
            &observations,
            &self.zone,
        ))
    }
}

/// Takes the look due at the end of the latest period (§5) through the
/// shared [`step::daemon_look`], on the latest fit of the outcome the
/// protocol's analysis names, and stores the decision with what it changes
/// in one transaction. Returns the action when a decision was stored.
///
/// Without `force` (the refit job) the look waits until the latest fit
/// covers the period's last day; with it (before the next assignment goes
/// out) it is taken on the data there are, as a missed rating may never come.
///
/// The fit must be of the data as stored when the decision is: where a
/// correction or a withdrawal landed after the fit read its series, the
/// decisive analysis is refitted (a fit stored here) and the look taken
/// again.
pub(crate) async fn decide_trial(
    state: &AppState,
    trial: &LoadedTrial,
    force: bool,
) -> Result<Option<Action>, JobError> {
    let protocol = &trial.protocol;
    let key = series::decisive_key(protocol);
    let as_treated = protocol.decision.analysis == Analysis::AsTreated;
    let (mut check, mut tries) = (true, 0);
    loop {
        match try_look(state, trial, force, check).await? {
            Look::Taken(action) => return Ok(action),
            Look::Overtaken => {
                tries += 1;
                // Where the data no longer make a fit (too few left) or the
                // fit fails, the look is taken on the fit there is, as a
                // failed refit never held a look; and after three tries
                // (data that change at every one) too, rather than never.
                let refitted = match refit_one(state, trial, &protocol.outcome, &key, as_treated)
                    .await
                {
                    Ok(stored) => stored,
                    Err(e) => {
                        tracing::warn!(trial = trial.id(), error = %e,
                                "the refit before a look failed; the look is taken on the last fit");
                        false
                    }
                };
                check = refitted && tries < 3;
            }
        }
    }
}

/// What one try at a look did.
enum Look {
    /// Stored (the action), or no look was due (`None`).
    Taken(Option<Action>),
    /// Not stored: the fit's data changed after it read them.
    Overtaken,
}

/// One try at [`decide_trial`]'s look; with `check`, only on a fit of the
/// data as stored now (else never `Overtaken`).
async fn try_look(
    state: &AppState,
    trial: &LoadedTrial,
    force: bool,
    check: bool,
) -> Result<Look, JobError> {
    let protocol = &trial.protocol;
    let today = trial.today(state.clock.now());
    // The analysis the protocol names drives the decision (statistics.md §5).
    let stream = series::decisive_key(protocol);
    let trial_id = trial.id();
    let (rows, decisions, fit) = state
        .db
        .read(move |s| {
            Ok((
                s.schedule(trial_id)?,
                s.decisions(trial_id)?,
                s.latest_fit(trial_id, &stream)?,
            ))
        })
        .await?;
    // A stored report that no longer decodes counts as no fit (the look
    // then continues, or stops as inconclusive at the last period).
    let report = fit.as_ref().and_then(|f| match f.report() {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(trial = trial_id, error = %e, "stored fit unreadable");
            None
        }
    });
    let look_fit = fit.as_ref().zip(report.as_ref()).map(|(f, r)| LookFit {
        report: r,
        data_through: f.data_through,
    });
    let Some(look) = step::daemon_look(
        protocol,
        trial.row.seed,
        &rows,
        &history_of(trial, &decisions),
        today,
        look_fit,
        force,
    )
    .map_err(|e| JobError::Item(e.to_string()))?
    else {
        return Ok(Look::Taken(None));
    };
    let decision = look.step.decision;
    let period = decision.look.period;
    let new = NewDecision {
        trial_id,
        fit_id: fit.as_ref().map(|f| f.id),
        period: Some(period),
        rule: decision.rule.clone(),
        action: decision.action.name().into(),
        numbers_json: serde_json::to_string(&decision).unwrap_or_default(),
        stop: decision
            .action
            .stops()
            .then(|| format!("{}: {}", decision.action.name(), decision.rule)),
        reschedule: look.reschedule,
        thresholds_refined_at: trial.row.thresholds_refined_at.clone(),
        messages: match decision.action {
            Action::Continue => Vec::new(),
            _ => vec![notify::decision_message(
                recipient(&trial.participant),
                trial_id,
                protocol,
                &decision,
                report.as_ref(),
                today,
                &state.public_url,
            )],
        },
    };
    // The fit must be of the data stored now: a corrected rating or a
    // withdrawn night that landed after the fit read its series is seen by
    // the next look, on a refit. Checked on the daemon's one writer, so no
    // other write of the daemon's lands between the check and the decision.
    let fitted = fit
        .as_ref()
        .and_then(|f| f.data_digest.clone())
        .filter(|_| check);
    let source = SeriesSource::of(
        state,
        trial,
        &protocol.outcome,
        protocol.decision.analysis == Analysis::AsTreated,
    );
    let now = state.clock.now();
    let stored = state
        .db
        .write(move |s| {
            if let Some(fitted) = fitted
                && source.read(s)?.digest() != fitted
            {
                return Ok(None);
            }
            s.record_decision(&new, "daemon", today, now).map(Some)
        })
        .await?;
    let Some(stored) = stored else {
        return Ok(Look::Overtaken);
    };
    if !stored {
        return Ok(Look::Taken(None));
    }
    tracing::info!(trial = trial_id, period, action = decision.action.name(), rule = %decision.rule, "decision");
    Ok(Look::Taken(Some(decision.action)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::app::Auth;
    use crate::service::clock::Clock;
    use crate::service::links::LinkKey;
    use crate::service::store::{Db, RunWay};
    use std::sync::Arc;

    /// The daemon's shared state over the demo, its history polled: a
    /// running trial whose looks are due.
    async fn demo_state(dir: &std::path::Path) -> AppState {
        let db = Db::open(&dir.join("db.sqlite")).unwrap();
        let config = crate::service::config::Config::default();
        let clock = Clock::system();
        let now = clock.now();
        let polled = config.clone();
        db.write(move |s| {
            crate::service::demo::ensure_seeded(s, "UTC", now).unwrap();
            let row = s.sources()?.remove(0);
            let source = crate::service::sources::adapter_for(&row, s, &polled)
                .unwrap()
                .unwrap();
            let poll = source.poll(None, now).unwrap();
            let run = s.begin_run(row.id, RunWay::Poll, "", now)?;
            s.record_poll(row.id, run, &poll.observations, &[], None, now)?;
            Ok(())
        })
        .await
        .unwrap();
        AppState {
            db,
            config: Arc::new(config),
            clock,
            jobs: Default::default(),
            designs: Default::default(),
            auth: Auth {
                token: None,
                password_hash: None,
                investigator_password_hash: None,
            },
            started_at: now,
            stopping: tokio::sync::watch::channel(false).1,
            link_key: LinkKey::generate().unwrap(),
            public_url: "http://127.0.0.1:8080".into(),
            delivery_held: Default::default(),
            push_held: Default::default(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_look_is_not_taken_on_a_fit_whose_data_changed_after_it_read_them() {
        let dir = tempfile::tempdir().unwrap();
        let state = demo_state(dir.path()).await;
        let (trials, errors) = running_trials(&state).await.unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let trial = &trials[0];
        let key = series::decisive_key(&trial.protocol);
        assert!(refit_trial(&state, trial).await.unwrap() >= 1);
        let id = trial.id();
        let decisive = key.clone();
        let stale = state
            .db
            .read(move |s| s.latest_fit(id, &decisive))
            .await
            .unwrap()
            .unwrap();
        // A rating the source sends again with another value (a corrected
        // entry), after the fit read the series.
        let now = state.clock.now();
        let polled = state.config.clone();
        state
            .db
            .write(move |s| {
                let row = s.sources()?.remove(0);
                let source = crate::service::sources::adapter_for(&row, s, &polled)
                    .unwrap()
                    .unwrap();
                let mut changed = source.poll(None, now).unwrap().observations.remove(20);
                changed.value = if changed.value < 5.0 {
                    changed.value + 1.0
                } else {
                    changed.value - 1.0
                };
                let run = s.begin_run(row.id, RunWay::Poll, "", now)?;
                let counts = s.record_poll(row.id, run, &[changed], &[], None, now)?;
                assert_eq!(counts.updated, 1);
                Ok(())
            })
            .await
            .unwrap();
        // On the stored fit the look is refused...
        assert!(matches!(
            try_look(&state, trial, true, true).await.unwrap(),
            Look::Overtaken
        ));
        assert!(
            state
                .db
                .read(move |s| s.decisions(id))
                .await
                .unwrap()
                .is_empty()
        );
        // ...and taken on a refit of the data as they are now.
        assert!(decide_trial(&state, trial, true).await.unwrap().is_some());
        let decided = state.db.read(move |s| s.decisions(id)).await.unwrap();
        let fresh = state
            .db
            .read(move |s| s.latest_fit(id, &key))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(fresh.id, stale.id);
        assert_eq!(decided.len(), 1);
        assert_eq!(decided[0].fit_id, Some(fresh.id));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_look_whose_data_no_longer_make_a_fit_is_taken_on_the_last_fit() {
        let dir = tempfile::tempdir().unwrap();
        let state = demo_state(dir.path()).await;
        let (trials, _) = running_trials(&state).await.unwrap();
        let trial = &trials[0];
        let key = series::decisive_key(&trial.protocol);
        assert!(refit_trial(&state, trial).await.unwrap() >= 1);
        let id = trial.id();
        let stale = state
            .db
            .read(move |s| s.latest_fit(id, &key))
            .await
            .unwrap()
            .unwrap();
        // The source withdraws all but two records after the fit: too few
        // for a fit.
        let now = state.clock.now();
        let polled = state.config.clone();
        state
            .db
            .write(move |s| {
                let row = s.sources()?.remove(0);
                let source = crate::service::sources::adapter_for(&row, s, &polled)
                    .unwrap()
                    .unwrap();
                let records: Vec<String> = source
                    .poll(None, now)
                    .unwrap()
                    .observations
                    .into_iter()
                    .skip(2)
                    .map(|o| o.source_record_id)
                    .collect();
                let run = s.begin_run(row.id, RunWay::Poll, "", now)?;
                let counts = s.record_poll(row.id, run, &[], &records, None, now)?;
                assert_eq!(counts.withdrawn, records.len());
                Ok(())
            })
            .await
            .unwrap();
        // Not held for ever: taken on the fit there is.
        assert!(decide_trial(&state, trial, true).await.unwrap().is_some());
        let decided = state.db.read(move |s| s.decisions(id)).await.unwrap();
        assert_eq!(decided.len(), 1);
        assert_eq!(decided[0].fit_id, Some(stale.id));
    }
}

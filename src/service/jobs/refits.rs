//! The refits job: refit every outcome of every running trial whose data
//! changed, then take the look that is due (one shared `trial::step`).

use jiff::tz::TimeZone;

use crate::service::app::AppState;
use crate::service::jobs::{JobError, recipient, running_trials};
use crate::service::notify::{self};
use crate::service::store::TrialRow;
use crate::trial::calendar::local_date;
use crate::trial::protocol::Protocol;

/// Refits every outcome of every running trial whose stream has data newer
/// than its last fit (new observations or a later date). The fit runs on the
/// blocking pool; the fit and its priors are stored with an audit entry.
pub(crate) async fn refit_trials(state: &AppState) -> Result<String, JobError> {
    let mut fitted = 0;
    let mut errors = Vec::new();
    let mut decided = 0;
    for (trial, p) in running_trials(state).await? {
        match refit_trial(state, &trial, &p).await {
            Ok(n) => fitted += n,
            Err(e) => errors.push(format!("trial {}: {e}", trial.id)),
        }
        match decide_trial(state, &trial, &p, false).await {
            Ok(Some(_)) => decided += 1,
            Ok(None) => {}
            Err(e) => errors.push(format!("trial {}: decision: {e}", trial.id)),
        }
    }
    if errors.is_empty() {
        Ok(format!("{fitted} fits stored, {decided} decisions"))
    } else {
        Err(JobError::Item(errors.join("; ")))
    }
}

pub(crate) async fn refit_trial(
    state: &AppState,
    trial: &TrialRow,
    p: &crate::service::store::ParticipantRow,
) -> Result<usize, JobError> {
    let protocol = Protocol::parse(&trial.protocol_toml, &format!("trial {}", trial.id))
        .map_err(|e| JobError::Item(e.to_string()))?;
    let tz = TimeZone::get(&p.time_zone)
        .map_err(|e| JobError::Item(format!("zone {}: {e}", p.time_zone)))?;
    let mut stored = 0;
    for outcome in protocol.outcomes() {
        // Intention to treat always; as treated too when the protocol says
        // decisions follow it (both are kept, under their own keys).
        let mut analyses = vec![(outcome.stream.clone(), false)];
        if protocol.decision.analysis == crate::trial::protocol::Analysis::AsTreated {
            analyses.push((crate::trial::series::as_treated_key(&outcome.stream), true));
        }
        for (key, as_treated) in analyses {
            if refit_one(state, trial, p, &protocol, outcome, &tz, &key, as_treated).await? {
                stored += 1;
            }
        }
    }
    Ok(stored)
}

/// Refits one outcome under one analysis when its data changed; stores the
/// fit under `key`. Returns whether a fit was stored.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn refit_one(
    state: &AppState,
    trial: &TrialRow,
    p: &crate::service::store::ParticipantRow,
    protocol: &Protocol,
    outcome: &crate::trial::protocol::Outcome,
    tz: &TimeZone,
    key: &str,
    as_treated: bool,
) -> Result<bool, JobError> {
    let (trial_id, participant_id, stream, fit_key) =
        (trial.id, p.id, outcome.stream.clone(), key.to_string());
    let (schedule, observations, last, decisions, adherence) = state
        .db
        .read(move |s| {
            Ok((
                s.schedule(trial_id)?,
                s.observations(participant_id, &stream)?,
                s.latest_fit(trial_id, &fit_key)?,
                s.decisions(trial_id)?,
                s.adherence(trial_id)?,
            ))
        })
        .await?;
    let numbers: Vec<&str> = decisions.iter().map(|d| d.numbers_json.as_str()).collect();
    let dropped = crate::trial::lifecycle::dropped_arms(&numbers);
    let schedule = if as_treated {
        crate::trial::series::as_treated(&schedule, &adherence, protocol.comparator_index())
    } else {
        schedule
    };
    let (proto, out, tz2) = (protocol.clone(), outcome.clone(), tz.clone());
    let seed = trial.seed;
    let result = tokio::task::spawn_blocking(move || {
        let ts = crate::trial::series::trial_series(&proto, &out, &schedule, &observations, &tz2);
        let Some(through) = ts.data_through else {
            return Ok(None);
        };
        let fresh = last.as_ref().is_none_or(|f| {
            f.observations != ts.series.y.len() as i64 || f.data_through != through.to_string()
        });
        if !fresh || ts.series.y.len() < 3 {
            return Ok(None);
        }
        let model = out.model_spec();
        let spec = crate::engine::fit::FitSpec {
            model: &model,
            arm_keys: proto.arms.iter().map(|a| a.key.clone()).collect(),
            run_in_sd: ts.run_in_sd,
            method: crate::engine::fit::Method::Grid,
            seed,
            mcmc: crate::engine::inference::McmcOptions::default(),
            grid: crate::engine::inference::GridOptions::default(),
            dropped,
            path: true,
            intervals: true,
        };
        crate::engine::fit::fit(&ts.series, &spec).map(|r| Some((r, through)))
    })
    .await
    .map_err(|e| JobError::Item(e.to_string()))?
    .map_err(|e: crate::engine::model::ModelError| JobError::Item(format!("{key}: {e}")))?;
    let Some((report, through)) = result else {
        return Ok(false);
    };
    let fit = crate::service::store::NewFit {
        trial_id: trial.id,
        stream_key: key.to_string(),
        data_through: through,
        observations: report.observations,
        engine: format!("{:?}/{:?}", report.family, report.diagnostics.method).to_lowercase(),
        seed: trial.seed,
        scale: report.priors.scale,
        priors_json: serde_json::to_string(&report.priors).unwrap_or_default(),
        result_json: serde_json::to_string(&report).unwrap_or_default(),
        converged: report.diagnostics.converged,
        wall_ms: report.diagnostics.wall_ms,
    };
    let now = state.clock.now();
    state.db.write(move |s| s.insert_fit(&fit, now)).await?;
    Ok(true)
}

/// Takes the decision due at the end of the latest period (§5), from the
/// primary outcome's latest fit, and applies it with the decision in one
/// transaction. Returns the action when a decision was stored.
///
/// Without `force` (the refit job) the look waits until the latest fit
/// covers the period's last day; with it (before the next assignment goes
/// out) it is taken on the data there are, as a missed rating may never come.
pub(crate) async fn decide_trial(
    state: &AppState,
    trial: &TrialRow,
    p: &crate::service::store::ParticipantRow,
    force: bool,
) -> Result<Option<crate::trial::decide::Action>, JobError> {
    use crate::trial::decide::{self, Action, Look};
    let protocol = Protocol::parse(&trial.protocol_toml, &format!("trial {}", trial.id))
        .map_err(|e| JobError::Item(e.to_string()))?;
    let tz = TimeZone::get(&p.time_zone)
        .map_err(|e| JobError::Item(format!("zone {}: {e}", p.time_zone)))?;
    let today = local_date(state.clock.now(), &tz);
    // The analysis the protocol names drives the decision (statistics.md §5).
    let stream = match protocol.decision.analysis {
        crate::trial::protocol::Analysis::AsTreated => {
            crate::trial::series::as_treated_key(&protocol.outcome.stream)
        }
        crate::trial::protocol::Analysis::Itt => protocol.outcome.stream.clone(),
    };
    let trial_id = trial.id;
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
    let decided: Vec<u32> = decisions.iter().filter_map(|d| d.period).collect();
    let Some((period, done)) = crate::trial::lifecycle::look_due(&rows, &decided, today) else {
        return Ok(None);
    };
    let period_end = crate::trial::lifecycle::period_ends(&rows)
        .into_iter()
        .find(|(q, _)| *q == period)
        .map(|(_, end)| end.to_string());
    let covered = fit
        .as_ref()
        .zip(period_end.as_ref())
        .is_some_and(|(f, end)| f.data_through.as_str() >= end.as_str());
    if !force && !covered {
        return Ok(None);
    }
    let numbers: Vec<&str> = decisions.iter().map(|d| d.numbers_json.as_str()).collect();
    let dropped = crate::trial::lifecycle::dropped_arms(&numbers);
    let periods = crate::trial::lifecycle::periods_of(&rows);
    let look = Look {
        period,
        blocks_done: crate::trial::design::blocks_done(&periods, done),
        last_period: done >= periods.len(),
        active: (0..protocol.arms.len())
            .filter(|a| !dropped.contains(a))
            .collect(),
    };
    let keys: Vec<String> = protocol.arms.iter().map(|a| a.key.clone()).collect();
    let thresholds = decide::thresholds(&protocol.decision, protocol.design.min_blocks);
    let report = fit
        .as_ref()
        .and_then(|f| serde_json::from_str::<crate::engine::fit::FitReport>(&f.result_json).ok());
    let (decision, p_comp) = match &report {
        Some(r) => (
            decide::decide(thresholds, protocol.comparator_index(), &look, r, &keys),
            r.p_best_comparator,
        ),
        None => {
            let action = if look.last_period {
                Action::StopInconclusive
            } else {
                Action::Continue
            };
            (
                decide::Decision {
                    look: look.clone(),
                    action,
                    rule: "no fit of the primary outcome yet (too few observations)".into(),
                    thresholds,
                    arms: Vec::new(),
                    converged: false,
                },
                0.0,
            )
        }
    };
    let reschedule =
        crate::trial::lifecycle::schedule_change(&protocol, trial.seed, &rows, &decision, p_comp)
            .map_err(|e| JobError::Item(e.to_string()))?;
    let new = crate::service::store::NewDecision {
        trial_id: trial.id,
        fit_id: fit.as_ref().map(|f| f.id),
        period: Some(period),
        rule: decision.rule.clone(),
        action: decision.action.name().into(),
        numbers_json: serde_json::to_string(&decision).unwrap_or_default(),
        stop: decision
            .action
            .stops()
            .then(|| format!("{}: {}", decision.action.name(), decision.rule)),
        reschedule,
        messages: match decision.action {
            Action::Continue => Vec::new(),
            _ => vec![notify::decision_message(
                recipient(p),
                trial.id,
                &protocol,
                &decision,
                today,
                &state.public_url,
            )],
        },
    };
    let now = state.clock.now();
    let stored = state
        .db
        .write(move |s| s.record_decision(&new, "daemon", today, now))
        .await?;
    if !stored {
        return Ok(None);
    }
    tracing::info!(trial = trial.id, period, action = decision.action.name(), rule = %decision.rule, "decision");
    Ok(Some(decision.action))
}

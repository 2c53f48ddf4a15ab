//! The designs job: simulate each proposal's design (its false-stop rate and
//! power) once per protocol text, in the background, for `/proposals`; and
//! calibrate each design's efficacy threshold on the stress suite before its
//! trial starts (approved trials first: their start waits for it).

use std::sync::{Arc, Mutex};

use jiff::Timestamp;

use crate::service::app::AppState;
use crate::service::store::{CalibrationRow, DesignFailure, DesignSimulationRow, DesignWork};
use crate::trial::lifecycle::TrialStatus;
use crate::trial::protocol::{Protocol, ProtocolHash};
use crate::trial::simulate::SimOptions;
use crate::trial::simulate::progress::{Progress, ProgressReading};
use crate::trial::simulate::suite::{SuiteOptions, run_suite};

use super::JobError;

/// The designs job's work in progress: each running calibration or
/// simulation with its [`Progress`], by protocol text and work, for the
/// dashboard (they take minutes).
#[derive(Debug, Clone, Default)]
pub struct DesignBoard {
    running: Arc<Mutex<Vec<Running>>>,
}

/// One running work: the design, which work, and its progress.
type Running = (ProtocolHash, DesignWork, Arc<Progress>);

/// Shows one work as running until dropped, even if the work panicked.
struct Watching {
    board: DesignBoard,
    progress: Arc<Progress>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.board
            .with(|v| v.retain(|(_, _, p)| !Arc::ptr_eq(p, &self.progress)));
    }
}

impl DesignBoard {
    fn with<T>(&self, f: impl FnOnce(&mut Vec<Running>) -> T) -> T {
        let mut guard = self.running.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Where `work` on the design `hash` stands, while it runs.
    pub fn reading(&self, hash: &ProtocolHash, work: DesignWork) -> Option<ProgressReading> {
        self.with(|v| {
            v.iter()
                .find(|(h, w, _)| h == hash && *w == work)
                .map(|(_, _, p)| p.read())
        })
    }

    /// A new progress for `work` on `hash`, shown until the guard is dropped.
    fn watch(&self, hash: &ProtocolHash, work: DesignWork) -> (Arc<Progress>, Watching) {
        let progress = Progress::start();
        self.with(|v| {
            v.retain(|(h, w, _)| !(h == hash && *w == work));
            v.push((hash.clone(), work, progress.clone()));
        });
        let guard = Watching {
            board: self.clone(),
            progress: progress.clone(),
        };
        (progress, guard)
    }
}

/// Virtual trials per condition for a proposal's design: `jobs.design_trials`
/// (400 gives a false-stop rate's standard error near 1 point) for an
/// outcome the Kalman filter fits exactly; a twentieth for the slower
/// importance-sampled ones (the non-gaussian families, Student-t noise;
/// their larger SE is shown beside the rates).
fn simulation_trials(protocol: &Protocol, configured: usize) -> usize {
    if protocol.outcome.fits_by_filter() {
        configured.max(1)
    } else {
        (configured / 20).max(10)
    }
}

/// Calibrates, then simulates, every design that needs it (see the module
/// comment). Returns a summary for the job board.
pub(crate) async fn simulate_pending_designs(state: &AppState) -> Result<String, JobError> {
    let calibrated = if state.config.jobs.calibrate {
        calibrate_pending_designs(state).await
    } else {
        Ok(String::new())
    };
    let simulated = simulate_proposed_designs(state).await;
    super::both(calibrated, simulated)
}

/// A stored protocol text, parsed, checked against the hash its result will
/// be kept under.
fn stored_protocol(text: &str, hash: &ProtocolHash) -> Result<Protocol, String> {
    let protocol = Protocol::parse(text, "stored protocol").map_err(|e| e.to_string())?;
    if ProtocolHash::of(text) != *hash {
        return Err(format!(
            "stored protocol text does not match its hash {}",
            hash.short()
        ));
    }
    Ok(protocol)
}

/// The GPU a design's simulation runs on (`[engine] backend`): the
/// gaussian family's refits, where `auto` finds one and the simulation is
/// large enough, or `cuda` asks for it; otherwise the CPU, with the reason
/// logged.
fn design_device(
    backend: crate::engine::gpu::BackendChoice,
    protocol: &Protocol,
    trials: usize,
) -> Option<crate::engine::gpu::SharedDevice> {
    match crate::engine::gpu::choose_for(
        backend,
        crate::engine::gpu::Workload::Trials { trials },
        protocol.outcome.fits_by_filter(),
    ) {
        Ok(chosen) => {
            tracing::info!(protocol = %protocol.id, "design simulation {}", chosen.line);
            chosen.device
        }
        Err(why) => {
            tracing::warn!(protocol = %protocol.id, "[engine] backend = \"cuda\" but {why}; on the CPU");
            None
        }
    }
}

/// `options` on `device` when there is one: its threads are then the fits
/// kept in flight on the GPU.
fn with_device(
    options: SimOptions,
    device: Option<crate::engine::gpu::SharedDevice>,
) -> SimOptions {
    match device {
        Some(d) => SimOptions {
            threads: crate::engine::gpu::GPU_FITS_IN_FLIGHT,
            device: Some(d),
            ..options
        },
        None => options,
    }
}

/// Null trials per scenario a calibration may give the binding scenario:
/// `jobs.calibration_trials` for an outcome the Kalman filter fits; for the
/// slower, importance-sampled ones `jobs.calibration_trials_sampled`, else
/// a fifth of it (at least 8).
fn calibration_trials(protocol: &Protocol, configured: usize, sampled: Option<usize>) -> usize {
    if protocol.outcome.fits_by_filter() {
        configured.max(4)
    } else {
        sampled.unwrap_or((configured / 5).max(8))
    }
}

/// Calibrates the design of every approved trial (first) and proposal whose
/// protocol text has no stored calibration, one at a time on
/// `jobs.design_threads` threads.
async fn calibrate_pending_designs(state: &AppState) -> Result<String, JobError> {
    let pending: Vec<(ProtocolHash, String)> = state
        .db
        .read(|s| {
            let mut trials = s.trials()?;
            // Approved trials wait for their calibration to start.
            trials.sort_by_key(|t| t.status != TrialStatus::Approved);
            let mut out: Vec<(ProtocolHash, String)> = Vec::new();
            for t in trials
                .into_iter()
                .filter(|t| matches!(t.status, TrialStatus::Approved | TrialStatus::Proposed))
            {
                let given_up = s
                    .design_failure(DesignWork::Calibration, &t.protocol_hash)?
                    .is_some_and(|f| f.given_up());
                if !given_up
                    && s.calibration(&t.protocol_hash)?.is_none()
                    && !out.iter().any(|(h, _)| *h == t.protocol_hash)
                {
                    out.push((t.protocol_hash, t.protocol_toml));
                }
            }
            Ok(out)
        })
        .await?;
    let (configured, sampled) = (
        state.config.jobs.calibration_trials,
        state.config.jobs.calibration_trials_sampled,
    );
    let backend = state.config.engine.backend;
    let threads = state.config.jobs.design_thread_count();
    let mut done = 0;
    let mut failed = Vec::new();
    for (hash, text) in pending {
        if *state.stopping.borrow() {
            break;
        }
        let locked = hash.clone();
        let (watch, _running) = state.designs.watch(&hash, DesignWork::Calibration);
        let calibrated = tokio::task::spawn_blocking(move || {
            let protocol = stored_protocol(&text, &locked)?;
            // No fresh check (the tests make it).
            let options = SuiteOptions::sized(
                with_device(
                    SimOptions {
                        threads,
                        progress: false,
                        watch: Some(watch),
                        ..SimOptions::default()
                    },
                    design_device(
                        backend,
                        &protocol,
                        calibration_trials(&protocol, configured, sampled),
                    ),
                ),
                Some(protocol.decision.false_stop_target),
                calibration_trials(&protocol, configured, sampled),
                false,
                protocol.decision.false_futility_target,
            );
            let started = std::time::Instant::now();
            let report = run_suite(&protocol, &locked, &options).map_err(|e| e.to_string())?;
            let (Some(target), Some(efficacy), Some(binding)) =
                (report.target, report.efficacy, report.binding)
            else {
                return Err("the suite gave no threshold".to_string());
            };
            Ok::<_, String>(CalibrationRow {
                protocol_hash: locked.0.clone(),
                target,
                efficacy,
                boundary: report.boundary,
                futility: report.futility,
                drop_arm: report.drop_arm,
                binding: binding.name().to_string(),
                report_json: serde_json::to_string(&report).map_err(|e| e.to_string())?,
                wall_ms: started.elapsed().as_secs_f64() * 1000.0,
                created_at: crate::service::store::ts(Timestamp::now()),
            })
        })
        .await;
        match calibrated {
            Ok(Ok(row)) => {
                tracing::info!(
                    protocol = %hash.short(),
                    efficacy = row.efficacy,
                    binding = %row.binding,
                    seconds = row.wall_ms / 1000.0,
                    "design calibrated"
                );
                state.db.write(move |s| s.put_calibration(&row)).await?;
                done += 1;
            }
            Ok(Err(e)) => {
                failed.push(record_failure(state, DesignWork::Calibration, &hash, e).await)
            }
            Err(e) => failed.extend(record_crash(state, DesignWork::Calibration, &hash, e).await),
        }
    }
    if failed.is_empty() {
        Ok(if done > 0 {
            format!("{done} design(s) calibrated")
        } else {
            String::new()
        })
    } else {
        Err(JobError::Item(format!(
            "{done} design(s) calibrated; failed: {}",
            failed.join("; ")
        )))
    }
}

/// A calibration or simulation task that did not finish: one the runtime
/// dropped before it ran (shutting down) is not the design's failure, so not
/// an attempt, and the next run tries again (`None`); a panic is a defect
/// that would repeat, counted as a failure ([`record_failure`]).
async fn record_crash(
    state: &AppState,
    work: DesignWork,
    hash: &ProtocolHash,
    error: tokio::task::JoinError,
) -> Option<String> {
    let what = work.as_str();
    if error.is_cancelled() {
        tracing::info!(protocol = %hash.short(), "{what} cancelled at shutdown; not counted");
        return None;
    }
    Some(record_failure(state, work, hash, format!("the {what} crashed: {error}")).await)
}

/// Stores a failed calibration or simulation and says it for the job
/// board. A store error while recording it is said too, and does not stop
/// the job's other designs (the failure is then retried without being
/// counted).
async fn record_failure(
    state: &AppState,
    work: DesignWork,
    hash: &ProtocolHash,
    error: String,
) -> String {
    let now = state.clock.now();
    let (key, why) = (hash.clone(), error.clone());
    let what = work.as_str();
    match state
        .db
        .write(move |s| s.record_design_failure(work, &key, &why, now))
        .await
    {
        Ok(attempts) => {
            tracing::warn!(protocol = %hash.short(), attempts, error = %error, "design {what} failed");
            format!(
                "{what} of {} (attempt {attempts} of {}): {error}",
                hash.short(),
                DesignFailure::ATTEMPTS
            )
        }
        Err(e) => {
            tracing::error!(protocol = %hash.short(), error = %error, store = %e, "design {what} failed, and recording it failed");
            format!("{what} of {}: {error} (not recorded: {e})", hash.short())
        }
    }
}

/// Simulates the design of every proposal whose protocol text has no stored
/// simulation yet and was not given up on, one at a time on
/// `jobs.design_threads` threads.
async fn simulate_proposed_designs(state: &AppState) -> Result<String, JobError> {
    let pending: Vec<(ProtocolHash, String)> = state
        .db
        .read(|s| {
            let mut out = Vec::new();
            for t in s
                .trials()?
                .into_iter()
                .filter(|t| t.status == TrialStatus::Proposed)
            {
                let given_up = s
                    .design_failure(DesignWork::Simulation, &t.protocol_hash)?
                    .is_some_and(|f| f.given_up());
                if !given_up
                    && s.design_simulation(&t.protocol_hash)?.is_none()
                    && !out.iter().any(|(h, _)| *h == t.protocol_hash)
                {
                    out.push((t.protocol_hash, t.protocol_toml));
                }
            }
            Ok(out)
        })
        .await?;
    let mut done = 0;
    let mut failed = Vec::new();
    let configured = state.config.jobs.design_trials;
    let backend = state.config.engine.backend;
    let threads = state.config.jobs.design_thread_count();
    for (hash, text) in pending {
        if *state.stopping.borrow() {
            break;
        }
        let locked = hash.clone();
        let (watch, _running) = state.designs.watch(&hash, DesignWork::Simulation);
        let simulated = tokio::task::spawn_blocking(move || {
            let protocol = stored_protocol(&text, &locked)?;
            let options = with_device(
                SimOptions {
                    trials: simulation_trials(&protocol, configured),
                    threads,
                    progress: false,
                    redesign: true,
                    watch: Some(watch),
                    ..SimOptions::default()
                },
                design_device(backend, &protocol, simulation_trials(&protocol, configured)),
            );
            let started = std::time::Instant::now();
            let report = crate::trial::simulate::simulate_protocol(&protocol, &locked, &options)
                .map_err(|e| e.to_string())?;
            let json = serde_json::to_string(&report).map_err(|e| e.to_string())?;
            Ok::<_, String>((
                report.trials,
                json,
                started.elapsed().as_secs_f64() * 1000.0,
            ))
        })
        .await;
        match simulated {
            Ok(Ok((trials, report_json, wall_ms))) => {
                let row = DesignSimulationRow {
                    protocol_hash: hash.0.clone(),
                    trials: trials as i64,
                    report_json,
                    wall_ms,
                    created_at: crate::service::store::ts(Timestamp::now()),
                };
                state
                    .db
                    .write(move |s| s.put_design_simulation(&row))
                    .await?;
                done += 1;
            }
            Ok(Err(e)) => {
                failed.push(record_failure(state, DesignWork::Simulation, &hash, e).await)
            }
            Err(e) => failed.extend(record_crash(state, DesignWork::Simulation, &hash, e).await),
        }
    }
    if failed.is_empty() {
        Ok(format!("{done} design(s) simulated"))
    } else {
        Err(JobError::Item(format!(
            "{done} design(s) simulated; failed: {}",
            failed.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn importance_sampled_outcomes_take_their_own_calibration_trials() {
        let parse = |text: &str| Protocol::parse(text, "p").unwrap();
        let gaussian = parse(include_str!("../../../protocols/meditation-anxiety.toml"));
        let beta = parse(include_str!("../../../protocols/caffeine-cutoff.toml"));
        assert_eq!(calibration_trials(&gaussian, 400, None), 400);
        assert_eq!(calibration_trials(&gaussian, 400, Some(1000)), 400);
        // A fifth, at least 8, unless set.
        assert_eq!(calibration_trials(&beta, 400, None), 80);
        assert_eq!(calibration_trials(&beta, 20, None), 8);
        assert_eq!(calibration_trials(&beta, 400, Some(400)), 400);
    }
}

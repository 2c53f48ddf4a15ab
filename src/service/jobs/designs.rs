//! The designs job: simulate each proposal's design (its false-stop rate and
//! power) once per protocol text, in the background, for `/proposals`; and
//! calibrate each design's efficacy threshold on the stress suite before its
//! trial starts (approved trials first: their start waits for it); refine a
//! quick calibration on more virtual trials once its trial is approved
//! (first where a started trial waits on it, else last: [`Refinements`]).

use std::sync::{Arc, Mutex};

use jiff::Timestamp;

use crate::service::app::AppState;
use crate::service::loaded::LoadedTrial;
use crate::service::store::{
    CalibrationRow, Deadline, DesignFailure, DesignSimulationRow, DesignWork, Refined, Refinement,
    Store, StoreError,
};
use crate::trial::decide::ThresholdSource;
use crate::trial::lifecycle;
use crate::trial::lifecycle::TrialStatus;
use crate::trial::protocol::{Protocol, ProtocolHash};
use crate::trial::simulate::memo::TrialMemo;
use crate::trial::simulate::progress::{Progress, ProgressReading};
use crate::trial::simulate::suite::{SuiteOptions, run_suite};
use crate::trial::simulate::{SimError, SimOptions};

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

    /// Every work running now, with where it stands.
    pub fn running(&self) -> Vec<(ProtocolHash, DesignWork, ProgressReading)> {
        self.with(|v| {
            v.iter()
                .map(|(h, w, p)| (h.clone(), *w, p.read()))
                .collect()
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

/// Refines the calibrations started trials wait on, calibrates, simulates,
/// then refines the rest (see the module comment). Returns a summary for
/// the job board.
pub(crate) async fn simulate_pending_designs(state: &AppState) -> Result<String, JobError> {
    // First: the refinements a started trial waits on, so that no proposal
    // filed after its first estimates can delay them ([`Refinements`]).
    let mut tried = Vec::new();
    let forgotten = if state.config.jobs.calibrate {
        forget_kept_trials(state).await
    } else {
        Ok(())
    };
    let urgent = if state.config.jobs.calibrate {
        refine_started_designs(state, Refinements::StartedTrialsWait, &mut tried).await
    } else {
        Ok(String::new())
    };
    let calibrated = if state.config.jobs.calibrate {
        calibrate_pending_designs(state).await
    } else {
        Ok(String::new())
    };
    let simulated = simulate_proposed_designs(state).await;
    // Last: a refinement yields to any of the work above, unless a started
    // trial waits on it (then it came first).
    let refined = if state.config.jobs.calibrate {
        refine_started_designs(state, Refinements::All, &mut tried).await
    } else {
        Ok(String::new())
    };
    super::both(
        super::both(
            forgotten.map(|()| String::new()),
            super::both(urgent, super::both(calibrated, simulated)),
        ),
        refined,
    )
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

/// The designs of trials in `statuses` (those of the first status first)
/// whose protocol text has no stored result of `work` and was not given up
/// on, each once.
fn designs_due(
    s: &Store,
    work: DesignWork,
    statuses: &[TrialStatus],
) -> Result<Vec<(ProtocolHash, String)>, StoreError> {
    let rank = |status: TrialStatus| statuses.iter().position(|x| *x == status);
    let mut trials: Vec<_> = s
        .trials()?
        .into_iter()
        .filter(|t| rank(t.status).is_some())
        .collect();
    trials.sort_by_key(|t| rank(t.status));
    let mut out: Vec<(ProtocolHash, String)> = Vec::new();
    for t in trials {
        let hash = &t.protocol_hash;
        if out.iter().any(|(h, _)| h == hash) {
            continue;
        }
        let given_up = s.design_failure(work, hash)?.is_some_and(|f| f.given_up());
        let stored = match work {
            DesignWork::Calibration => s.calibration(hash)?.is_some(),
            DesignWork::Simulation => s.design_simulation(hash)?.is_some(),
            DesignWork::Refinement => s.refinement(hash)?.is_some(),
        };
        if !given_up && !stored {
            out.push((t.protocol_hash, t.protocol_toml));
        }
    }
    Ok(out)
}

/// The designs of approved trials (first: their start waits for it) and
/// proposals whose protocol text has no stored calibration.
fn calibrations_due(s: &Store) -> Result<Vec<(ProtocolHash, String)>, StoreError> {
    designs_due(
        s,
        DesignWork::Calibration,
        &[TrialStatus::Approved, TrialStatus::Proposed],
    )
}

/// The designs of proposals whose protocol text has no stored simulation.
fn simulations_due(s: &Store) -> Result<Vec<(ProtocolHash, String)>, StoreError> {
    designs_due(s, DesignWork::Simulation, &[TrialStatus::Proposed])
}

/// How a calibration in the background ended without a result.
#[derive(Debug)]
enum Unfinished {
    /// It was asked to end (to leave the threads to other design work, or
    /// at a shutdown): not the design's failure.
    Cancelled,
    /// It failed, with the reason.
    Failed(String),
}

impl std::fmt::Display for Unfinished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unfinished::Cancelled => f.write_str("cancelled"),
            Unfinished::Failed(why) => f.write_str(why),
        }
    }
}

/// A calibration's or refinement's virtual trials, kept in the store as
/// they finish ([`Store::keep_trials`]), so that one stopped part way (a
/// yield, a shutdown, a crash) takes them up when it runs again instead of
/// starting over: a refinement that yields to every proposal still gets
/// done, and a restart costs only the trials in hand. The simulation's
/// threads hand each new trial over here; the job's 2-s check writes them.
struct KeptTrials {
    work: DesignWork,
    hash: ProtocolHash,
    /// This program's build ([`build_id`]), the first word of every stored
    /// key: another build may compute a trial otherwise, so its trials are
    /// not taken up.
    build: &'static str,
    /// Those kept by earlier runs, text by key.
    earlier: std::collections::HashMap<String, String>,
    /// Run since the last write.
    new: Mutex<Vec<(String, String)>>,
}

impl std::fmt::Debug for KeptTrials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KeptTrials({} of {}, build {}, {} earlier)",
            self.work.as_str(),
            self.hash.short(),
            self.build,
            self.earlier.len()
        )
    }
}

/// This program's build: the start of the SHA-256 of its executable, read
/// once. A virtual trial kept by one build is taken up only by the same
/// build, since another may compute it otherwise (an upgrade replaces the
/// executable while a calibration is stopped). `None` where the executable
/// cannot be read: then nothing is kept.
fn build_id() -> Option<&'static str> {
    use sha2::Digest;
    static BUILD: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BUILD
        .get_or_init(|| {
            let exe = std::env::current_exe().ok()?;
            let mut file = std::fs::File::open(&exe).ok()?;
            let mut hasher = sha2::Sha256::new();
            std::io::copy(&mut file, &mut hasher).ok()?;
            let digest = hasher.finalize();
            Some(digest.iter().take(8).map(|b| format!("{b:02x}")).collect())
        })
        .as_deref()
}

impl KeptTrials {
    /// The trials `work` on the design `hash` kept in earlier runs of this
    /// build; `None` where the build cannot be told (nothing is kept then).
    async fn load(
        state: &AppState,
        work: DesignWork,
        hash: &ProtocolHash,
    ) -> Result<Option<Arc<KeptTrials>>, StoreError> {
        let Some(build) = tokio::task::spawn_blocking(build_id).await.ok().flatten() else {
            tracing::warn!(
                "this program's executable cannot be read: calibrations keep no virtual trials, and one stopped part way starts over"
            );
            return Ok(None);
        };
        let design = hash.clone();
        let earlier = state.db.read(move |s| s.kept_trials(work, &design)).await?;
        Ok(Some(Arc::new(KeptTrials {
            work,
            hash: hash.clone(),
            build,
            earlier,
            new: Mutex::new(Vec::new()),
        })))
    }

    /// The key a trial is stored under: this build's, then the simulator's.
    fn stored_key(&self, key: &str) -> String {
        format!("build {} {key}", self.build)
    }

    /// [`KeptTrials::store`] where trials are kept.
    async fn store_any(kept: Option<&KeptTrials>, state: &AppState) {
        if let Some(kept) = kept {
            kept.store(state).await;
        }
    }

    /// Writes the trials run since the last write. One that cannot be
    /// written is only run again later, so a failure is logged, not fatal.
    async fn store(&self, state: &AppState) {
        let new = std::mem::take(&mut *self.new.lock().unwrap_or_else(|p| p.into_inner()));
        if new.is_empty() {
            return;
        }
        let (work, design, count) = (self.work, self.hash.clone(), new.len());
        if let Err(e) = state
            .db
            .write(move |s| s.keep_trials(work, &design, &new))
            .await
        {
            tracing::warn!(protocol = %self.hash.short(), work = work.as_str(), error = %e, count, "virtual trials not kept; they run again if the work is stopped");
        }
    }
}

impl TrialMemo for KeptTrials {
    fn recall(&self, key: &str) -> Option<String> {
        self.earlier.get(&self.stored_key(key)).cloned()
    }

    fn record(&self, key: &str, trial: String) {
        let key = self.stored_key(key);
        self.new
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((key, trial));
    }
}

/// Forgets the virtual trials kept by calibrations and refinements no
/// longer due (their trials ended or passed their first decisive day, or
/// the work was given up on): they would never be taken up.
async fn forget_kept_trials(state: &AppState) -> Result<(), JobError> {
    let config = state.config.jobs.clone();
    let now = state.clock.now();
    let forgotten = state
        .db
        .write(move |s| {
            // The due lists load every active trial: not worth it each
            // minute while nothing is kept.
            if !s.any_kept_trials()? {
                return Ok(0);
            }
            let calibrating: Vec<ProtocolHash> =
                calibrations_due(s)?.into_iter().map(|(h, _)| h).collect();
            let refining: Vec<ProtocolHash> = refinements_due(s, &config, now)?
                .into_iter()
                .map(|d| d.hash)
                .collect();
            Ok(
                s.forget_kept_trials_except(DesignWork::Calibration, &calibrating)?
                    + s.forget_kept_trials_except(DesignWork::Refinement, &refining)?,
            )
        })
        .await?;
    if forgotten > 0 {
        tracing::info!(
            forgotten,
            "virtual trials kept by work no longer due forgotten"
        );
    }
    Ok(())
}

/// A design calibrated: the row to store, the most null trials a scenario
/// got, and how many virtual trials were recalled from a run stopped part
/// way ([`KeptTrials`]).
struct Calibrated {
    row: CalibrationRow,
    null_trials: usize,
    resumed: usize,
}

/// Calibrates the stored protocol `text` on the stress suite, with at most
/// `most(protocol)` null trials for the binding scenario and no fresh check
/// (the tests make it), keeping its virtual trials in `memo` where given.
fn calibrate_design(
    text: &str,
    hash: &ProtocolHash,
    threads: usize,
    backend: crate::engine::gpu::BackendChoice,
    watch: Arc<Progress>,
    memo: Option<Arc<dyn TrialMemo>>,
    most: impl Fn(&Protocol) -> usize,
) -> Result<Calibrated, Unfinished> {
    let protocol = stored_protocol(text, hash).map_err(Unfinished::Failed)?;
    let most = most(&protocol);
    let options = SuiteOptions::sized(
        with_device(
            SimOptions {
                threads,
                progress: false,
                watch: Some(watch),
                memo,
                ..SimOptions::default()
            },
            design_device(backend, &protocol, most),
        ),
        Some(protocol.decision.false_stop_target),
        most,
        false,
        protocol.decision.false_futility_target,
    );
    let started = std::time::Instant::now();
    let report = run_suite(&protocol, hash, &options).map_err(|e| match e {
        SimError::Cancelled => Unfinished::Cancelled,
        e => Unfinished::Failed(e.to_string()),
    })?;
    let (Some(target), Some(efficacy), Some(binding)) =
        (report.target, report.efficacy, report.binding)
    else {
        return Err(Unfinished::Failed("the suite gave no threshold".into()));
    };
    let null_trials = report.most_null_trials();
    let row = CalibrationRow {
        protocol_hash: hash.0.clone(),
        target,
        efficacy,
        boundary: report.boundary,
        futility: report.futility,
        drop_arm: report.drop_arm,
        binding: binding.name().to_string(),
        report_json: serde_json::to_string(&report)
            .map_err(|e| Unfinished::Failed(e.to_string()))?,
        wall_ms: started.elapsed().as_secs_f64() * 1000.0,
        created_at: crate::service::store::ts(Timestamp::now()),
    };
    Ok(Calibrated {
        row,
        null_trials,
        resumed: report.timing.resumed,
    })
}

/// Calibrates the design of every approved trial (first) and proposal whose
/// protocol text has no stored calibration, one at a time on
/// `jobs.design_threads` threads.
async fn calibrate_pending_designs(state: &AppState) -> Result<String, JobError> {
    let pending = state.db.read(calibrations_due).await?;
    let (configured, sampled) = (
        state.config.jobs.calibration_trials,
        state.config.jobs.calibration_trials_sampled,
    );
    let backend = state.config.engine.backend;
    let threads = state.config.jobs.design_thread_count();
    let mut done = 0;
    let mut failed = Vec::new();
    for (hash, text) in pending {
        if *state.stopping.borrow() || urgent_refinement_due(state).await {
            break;
        }
        let locked = hash.clone();
        let (watch, _running) = state.designs.watch(&hash, DesignWork::Calibration);
        let kept = KeptTrials::load(state, DesignWork::Calibration, &hash).await?;
        let memo = kept.clone().map(|k| k as Arc<dyn TrialMemo>);
        let asked = watch.clone();
        let mut task = tokio::task::spawn_blocking(move || {
            calibrate_design(&text, &locked, threads, backend, asked, memo, |p| {
                calibration_trials(p, configured, sampled)
            })
        });
        // Every 2 s: write the trials kept, and end at a shutdown (within a
        // virtual trial) rather than be abandoned by it.
        let mut check = tokio::time::interval(YIELD_CHECK);
        let calibrated = loop {
            tokio::select! {
                ended = &mut task => break ended,
                _ = check.tick() => {
                    KeptTrials::store_any(kept.as_deref(), state).await;
                    if *state.stopping.borrow() {
                        watch.cancel();
                    }
                }
            }
        };
        if !matches!(calibrated, Ok(Ok(_))) {
            // What it ran is taken up when it runs again.
            KeptTrials::store_any(kept.as_deref(), state).await;
        }
        match calibrated {
            Ok(Ok(Calibrated { row, resumed, .. })) => {
                tracing::info!(
                    protocol = %hash.short(),
                    efficacy = row.efficacy,
                    binding = %row.binding,
                    resumed,
                    seconds = row.wall_ms / 1000.0,
                    "design calibrated"
                );
                state.db.write(move |s| s.put_calibration(&row)).await?;
                done += 1;
            }
            // A shutdown cancels it: not the design's failure; it takes up
            // its kept trials at the next start.
            Ok(Err(Unfinished::Cancelled)) => break,
            Ok(Err(Unfinished::Failed(e))) => {
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

/// The null trials a design's calibration is refined to once its trial is
/// approved, if it is: `jobs.refinement_trials`, where that is more than
/// the binding scenario got (`calibration`'s most) and more than a first
/// calibration gets now (else a refinement would run it again as it was).
pub fn refinement_size(
    protocol: &Protocol,
    config: &crate::service::config::JobsConfig,
    calibration: &CalibrationRow,
) -> Option<usize> {
    let most = config.refinement_trial_count();
    let first = calibration_trials(
        protocol,
        config.calibration_trials,
        config.calibration_trials_sampled,
    );
    // Decided before the stored report is parsed: this runs for every
    // running trial at every tick, and most designs are not refined.
    if most <= first {
        return None;
    }
    // A report that cannot be read is refined (it is the stored one that
    // fails, not the design).
    let had = calibration.report().map_or(0, |r| r.most_null_trials());
    (most > had).then_some(most)
}

/// A design to refine, by its stored text.
struct ToRefine {
    hash: ProtocolHash,
    text: String,
    /// A started (running or paused) trial would take it.
    started_trial_waits: bool,
}

/// Which refinements a run of the refinement step takes on.
///
/// When a trial takes its refinement depends on when the refinement
/// finishes: before the first decisive day it is taken, after it not. Were
/// that time in a person's hands once the trial's first estimates are shown
/// (by filing proposals, which a refinement would yield to), they could
/// choose between two rules, each valid alone, after seeing data, and the
/// false-stop rate would be bounded by the two together. So a refinement a
/// started trial waits on runs before any proposal's work and never yields
/// to it; only one for approved trials not yet started (no data of theirs
/// exists) runs last and yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refinements {
    /// Only those a started trial waits on.
    StartedTrialsWait,
    /// Every one due.
    All,
}

/// Whether a trial would still take its design's refinement: approved (it
/// locks it at its start), or running or paused on the design's first
/// calibration with its first decisive day ([`deadline`]) still ahead, the
/// daemon's `today` being the participant's. A pre-filter, so that no
/// refinement runs for nothing: [`Store::refine_thresholds`] decides, in its
/// transaction.
fn takes_refinement(s: &Store, trial: &LoadedTrial, now: Timestamp) -> Result<bool, StoreError> {
    Ok(match trial.row.status {
        TrialStatus::Approved => true,
        TrialStatus::Running | TrialStatus::Paused => {
            let on_first_calibration = trial.row.thresholds_refined_at.is_none()
                && trial
                    .row
                    .locked
                    .is_some_and(|l| l.source == ThresholdSource::Calibrated);
            on_first_calibration
                && deadline(s, trial, now)?
                    .refine_by
                    .is_some_and(|day| trial.today(now) < day)
        }
        _ => false,
    })
}

/// Why the design refinement of the trial `row`, given up on, may not be
/// tried again now (`None`: it may, and the job would run it). Only an
/// approved trial's may, and only while no started trial of the design
/// would take it: whoever has seen a started trial's estimates must not
/// choose whether its rule changes ([`Refinements`]). Its page offers the
/// retry, and the route accepts it, only where this gives `None`.
pub fn refinement_retry_refused(
    s: &Store,
    row: &crate::service::store::TrialRow,
    config: &crate::service::config::JobsConfig,
    now: Timestamp,
) -> Result<Option<String>, StoreError> {
    if !config.calibrate {
        return Ok(Some(
            "calibration is switched off (jobs.calibrate = false): nothing would try it".into(),
        ));
    }
    if row.status != TrialStatus::Approved {
        return Ok(Some(format!(
            "trial {} is {}: once a trial has started, whoever has seen its estimates must not choose whether its rule changes, so it keeps its quick calibration",
            row.id, row.status
        )));
    }
    if let Some(other) = started_trial_waiting(s, &row.protocol_hash, now)? {
        return Ok(Some(format!(
            "trial {other} of this design has started and would take the refinement: whoever has seen its estimates must not choose whether its rule changes"
        )));
    }
    let Ok(trial) = LoadedTrial::load(row.clone(), &s.participants()?) else {
        return Ok(Some(format!("trial {} cannot be read", row.id)));
    };
    let refined = match s.calibration(&row.protocol_hash)? {
        Some(c) => refinement_size(&trial.protocol, config, &c).is_some(),
        None => false,
    };
    if !refined {
        return Ok(Some(
            "this design's calibration is not refined (jobs.refinement_trials)".into(),
        ));
    }
    Ok(None)
}

/// Until when a started trial may take a refinement: its first decisive day
/// ([`lifecycle::first_decisive_day`]) in the schedule it started with
/// (from its start date and seed), or in its stored schedule where that is
/// sooner. The first keeps a pause from moving the cut-off: when the trial
/// takes which rule then depends on the refinement's run time only, not on
/// anything a person does after seeing the trial's first estimates.
fn deadline(s: &Store, trial: &LoadedTrial, now: Timestamp) -> Result<Deadline, StoreError> {
    let min_blocks = trial.protocol.design.min_blocks;
    let stored = lifecycle::first_decisive_day(&s.schedule(trial.id())?, min_blocks);
    let planned = trial.row.start_date.and_then(|start| {
        lifecycle::dated(
            &trial.protocol,
            &crate::trial::design::plan(&trial.protocol, trial.row.seed),
            start,
        )
        .ok()
        .and_then(|rows| lifecycle::first_decisive_day(&rows, min_blocks))
    });
    Ok(Deadline {
        min_blocks,
        refine_by: match (stored, planned) {
            (Some(a), Some(b)) => Some(a.min(b)),
            // Without both, no cut-off can be trusted: none is taken.
            _ => None,
        },
        today: trial.today(now),
    })
}

/// The designs of started (or approved) trials whose calibration gave the
/// binding scenario fewer null trials than `jobs.refinement_trials`, and
/// fewer than a first calibration now would, with a trial that would take
/// the refinement; none refined or given up on.
fn refinements_due(
    s: &Store,
    config: &crate::service::config::JobsConfig,
    now: Timestamp,
) -> Result<Vec<ToRefine>, StoreError> {
    let (loaded, _) = LoadedTrial::load_all(s.trials()?, &s.participants()?, |t| {
        matches!(
            t.status,
            TrialStatus::Approved | TrialStatus::Running | TrialStatus::Paused
        )
    });
    let mut out: Vec<ToRefine> = Vec::new();
    for trial in loaded {
        let hash = &trial.row.protocol_hash;
        let started = started(trial.row.status);
        if let Some(due) = out.iter_mut().find(|d| d.hash == *hash) {
            // Another trial of the design may be the one that started.
            due.started_trial_waits |= started && takes_refinement(s, &trial, now)?;
            continue;
        }
        let Some(calibration) = s.calibration(hash)? else {
            continue;
        };
        let given_up = s
            .design_failure(DesignWork::Refinement, hash)?
            .is_some_and(|f| f.given_up());
        if refinement_size(&trial.protocol, config, &calibration).is_none()
            || given_up
            || s.refinement(hash)?.is_some()
            || !takes_refinement(s, &trial, now)?
        {
            continue;
        }
        out.push(ToRefine {
            hash: hash.clone(),
            text: trial.row.protocol_toml.clone(),
            started_trial_waits: started,
        });
    }
    Ok(out)
}

/// Running or paused: the trial's estimates may have been seen.
fn started(status: TrialStatus) -> bool {
    matches!(status, TrialStatus::Running | TrialStatus::Paused)
}

/// The started trial, if any, that would take the refinement of the design
/// `hash` now: that refinement then does not yield ([`Refinements`]).
pub(crate) fn started_trial_waiting(
    s: &Store,
    hash: &ProtocolHash,
    now: Timestamp,
) -> Result<Option<i64>, StoreError> {
    let (loaded, _) = LoadedTrial::load_all(s.trials()?, &s.participants()?, |t| {
        started(t.status) && t.protocol_hash == *hash
    });
    for trial in loaded {
        if takes_refinement(s, &trial, now)? {
            return Ok(Some(trial.id()));
        }
    }
    Ok(None)
}

/// Whether a refinement a started trial waits on is due: a proposal's
/// calibration or simulation then gives it the threads after the one in
/// hand, and a refinement no started trial waits on yields to it.
async fn urgent_refinement_due(state: &AppState) -> bool {
    if !state.config.jobs.calibrate {
        return false;
    }
    let config = state.config.jobs.clone();
    let now = state.clock.now();
    // A store that cannot be read now is no reason to hold other work.
    state
        .db
        .read(move |s| {
            Ok(refinements_due(s, &config, now)?
                .iter()
                .any(|d| d.started_trial_waits))
        })
        .await
        .unwrap_or(false)
}

/// Whether a proposal's (or an approved trial's) calibration or a
/// proposal's simulation waits: a refinement no started trial waits on
/// yields to it.
fn other_design_work_waiting(s: &Store) -> Result<bool, StoreError> {
    Ok(!calibrations_due(s)?.is_empty() || !simulations_due(s)?.is_empty())
}

/// How often a running refinement checks whether other design work is
/// waiting (it then yields) or the daemon is stopping.
const YIELD_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Refines, one at a time, the calibration of every design that
/// [`refinements_due`] lists (`which` of them, none in `tried`, to which
/// each one run is added: a failure counts once a job run), on
/// `jobs.refinement_trials` null trials, and locks it for its running
/// trials that would take it ([`Store::refine_thresholds`]; approved ones
/// lock it at their start). A refinement takes many times as long as the
/// first calibration, so one that no started trial waits on yields to any
/// proposal's calibration or simulation and to a refinement a started trial
/// waits on: it does not start while one waits, and one that comes in while
/// it runs cancels it; it runs again at a later run, after that work,
/// taking up the virtual trials it had run ([`KeptTrials`]). One a started
/// trial waits on yields only to a shutdown ([`Refinements`]).
async fn refine_started_designs(
    state: &AppState,
    which: Refinements,
    tried: &mut Vec<ProtocolHash>,
) -> Result<String, JobError> {
    let config = state.config.jobs.clone();
    let now = state.clock.now();
    let due: Vec<ToRefine> = state
        .db
        .read(move |s| refinements_due(s, &config, now))
        .await?
        .into_iter()
        .filter(|d| which == Refinements::All || d.started_trial_waits)
        .filter(|d| !tried.contains(&d.hash))
        .collect();
    let most = state.config.jobs.refinement_trial_count();
    let backend = state.config.engine.backend;
    let threads = state.config.jobs.design_thread_count();
    let mut said: Vec<String> = Vec::new();
    let took = state
        .db
        .write(move |s| lock_stored_refinements(s, now))
        .await?;
    if !took.is_empty() {
        said.push(format!(
            "refined thresholds locked for trial {}",
            ids(&took)
        ));
    }
    // Those a started trial waits on first (the rest yield to them).
    let mut due = due;
    due.sort_by_key(|d| !d.started_trial_waits);
    let mut failed = Vec::new();
    for ToRefine { hash, text, .. } in due {
        if *state.stopping.borrow() {
            break;
        }
        // Read afresh: the refinement before this one may have taken long.
        let now = state.clock.now();
        let waits = state
            .db
            .read({
                let hash = hash.clone();
                move |s| started_trial_waiting(s, &hash, now)
            })
            .await?
            .is_some();
        if !waits
            && (state.db.read(other_design_work_waiting).await?
                || urgent_refinement_due(state).await)
        {
            said.push(format!(
                "the refinement of {} waits for other design work",
                hash.short()
            ));
            break;
        }
        tried.push(hash.clone());
        let locked = hash.clone();
        let (watch, _running) = state.designs.watch(&hash, DesignWork::Refinement);
        let asked = watch.clone();
        let kept = KeptTrials::load(state, DesignWork::Refinement, &hash).await?;
        let memo = kept.clone().map(|k| k as Arc<dyn TrialMemo>);
        let mut task = tokio::task::spawn_blocking(move || {
            calibrate_design(&text, &locked, threads, backend, asked, memo, |_| most)
        });
        let mut check = tokio::time::interval(YIELD_CHECK);
        let ended = loop {
            tokio::select! {
                ended = &mut task => break ended,
                _ = check.tick() => {
                    KeptTrials::store_any(kept.as_deref(), state).await;
                    if watch.is_cancelled() {
                        continue;
                    }
                    // A store that cannot be read now is not a reason to
                    // give up an hour's work. Whether a started trial waits
                    // is read at every check: an approved trial may start
                    // while its refinement runs.
                    let now = state.clock.now();
                    let design = hash.clone();
                    let waits = state
                        .db
                        .read(move |s| started_trial_waiting(s, &design, now))
                        .await
                        .map_or(true, |t| t.is_some());
                    let waiting = *state.stopping.borrow()
                        || (!waits
                            && (state.db.read(other_design_work_waiting).await.unwrap_or(false)
                                || urgent_refinement_due(state).await));
                    if waiting {
                        tracing::info!(protocol = %hash.short(), "calibration refinement yields to other design work");
                        watch.cancel();
                    }
                }
            }
        };
        if !matches!(ended, Ok(Ok(_))) {
            // What it ran is taken up when it runs again.
            KeptTrials::store_any(kept.as_deref(), state).await;
        }
        match ended {
            Ok(Ok(Calibrated {
                row,
                null_trials,
                resumed,
            })) => {
                tracing::info!(
                    protocol = %hash.short(),
                    efficacy = row.efficacy,
                    null_trials,
                    resumed,
                    seconds = row.wall_ms / 1000.0,
                    "design calibration refined"
                );
                let efficacy = row.efficacy;
                let refinement = Refinement {
                    null_trials,
                    calibration: row,
                };
                let now = state.clock.now();
                let took = state
                    .db
                    .write(move |s| {
                        s.put_refinement(&refinement)?;
                        lock_stored_refinements(s, now)
                    })
                    .await?;
                said.push(format!(
                    "{} refined to {efficacy:.4} on {null_trials} null trials{}{}",
                    hash.short(),
                    if resumed > 0 {
                        format!(", {resumed} virtual trials taken up from where it was stopped")
                    } else {
                        String::new()
                    },
                    if took.is_empty() {
                        String::new()
                    } else {
                        format!(" (locked for trial {})", ids(&took))
                    }
                ));
            }
            Ok(Err(Unfinished::Cancelled)) => {
                said.push(format!(
                    "the refinement of {} yielded to other design work",
                    hash.short()
                ));
                break;
            }
            Ok(Err(Unfinished::Failed(e))) => {
                failed.push(record_failure(state, DesignWork::Refinement, &hash, e).await)
            }
            Err(e) => failed.extend(record_crash(state, DesignWork::Refinement, &hash, e).await),
        }
    }
    if failed.is_empty() {
        Ok(said.join("; "))
    } else {
        said.push(format!("failed: {}", failed.join("; ")));
        Err(JobError::Item(said.join("; ")))
    }
}

/// Locks its design's stored refinement for every running or paused trial
/// still on its first calibration that has one ([`Store::refine_thresholds`]
/// decides whether it may); returns the trials that took it. Run after each
/// refinement is stored and at every run of the job, so that a trial started
/// while its refinement ran (or whose locking failed) still gets it in time.
fn lock_stored_refinements(s: &mut Store, now: Timestamp) -> Result<Vec<i64>, StoreError> {
    let (loaded, _) = LoadedTrial::load_all(s.trials()?, &s.participants()?, |t| {
        matches!(t.status, TrialStatus::Running | TrialStatus::Paused)
            && t.thresholds_refined_at.is_none()
            && t.locked
                .is_some_and(|l| l.source == ThresholdSource::Calibrated)
    });
    let mut took = Vec::new();
    for trial in loaded {
        let Some(refinement) = s.refinement(&trial.row.protocol_hash)? else {
            continue;
        };
        let deadline = deadline(s, &trial, now)?;
        match s.refine_thresholds(trial.id(), &refinement.calibration, deadline, "daemon", now)? {
            Refined::Locked => took.push(trial.id()),
            Refined::Kept(why) => {
                tracing::debug!(trial = trial.id(), ?why, "trial keeps its thresholds")
            }
        }
    }
    Ok(took)
}

/// Trial ids for a summary: "3, 5".
fn ids(trials: &[i64]) -> String {
    trials
        .iter()
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(", ")
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
    let pending = state.db.read(simulations_due).await?;
    let mut done = 0;
    let mut failed = Vec::new();
    let configured = state.config.jobs.design_trials;
    let backend = state.config.engine.backend;
    let threads = state.config.jobs.design_thread_count();
    for (hash, text) in pending {
        if *state.stopping.borrow() || urgent_refinement_due(state).await {
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
    fn trials_kept_by_another_build_are_not_taken_up() {
        let build = build_id().unwrap();
        assert_eq!(build.len(), 16);
        assert_eq!(build_id(), Some(build));
        let kept = |earlier: &[(&str, &str)]| KeptTrials {
            work: DesignWork::Refinement,
            hash: ProtocolHash::of("p"),
            build,
            earlier: earlier
                .iter()
                .map(|(k, t)| (k.to_string(), t.to_string()))
                .collect(),
            new: Mutex::new(Vec::new()),
        };
        let ours = format!("build {build} trial 1");
        let same = kept(&[(&ours, "ours")]);
        assert_eq!(same.recall("trial 1").as_deref(), Some("ours"));
        assert_eq!(same.recall("trial 2"), None);
        let other = kept(&[("build 0123456789abcdef trial 1", "theirs")]);
        assert_eq!(other.recall("trial 1"), None);
        // What it records is stored under this build's key.
        other.record("trial 1", "new".into());
        assert_eq!(
            *other.new.lock().unwrap(),
            vec![(ours.clone(), "new".to_string())]
        );
        assert!(format!("{other:?}").contains("1 earlier"));
    }

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

//! The daemon's jobs: polling sources, starting trials and queueing each
//! day's assignment, refitting and deciding, delivering the outbox,
//! simulating proposals' designs. Each job is a thin async shell: it reads
//! through the store, calls the pure cores (`trial`, `engine`) on the
//! blocking pool, and writes what they return in one transaction.
//!
//! Jobs tick on a tokio-cron-scheduler repeated schedule (UTC, real time);
//! whether a participant's local assignment time has come is decided here,
//! per tick, against the store's record of which days already ran — so DST
//! changes, restarts and crashes neither skip nor repeat a day.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use serde::Serialize;

use crate::service::app::AppState;
use crate::service::loaded::LoadedTrial;
use crate::service::notify;
use crate::service::store::StoreError;
use crate::trial::lifecycle::TrialStatus;

mod assignments;
mod designs;
mod hypotheses;
mod outbox;
mod push;
mod refits;
mod sources;

pub use assignments::next_assignment;
pub(crate) use designs::started_trial_waiting;
pub use designs::{DesignBoard, refinement_retry_refused, refinement_size};

/// A job's failure: logged, counted, retried at the next tick.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something specific to one item (a source, a trial).
    #[error("{0}")]
    Item(String),
}

/// The daemon's jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Poll every data source.
    Sources,
    /// Queue each running trial's daily assignment when its local time has come.
    Assignments,
    /// Deliver due outbox messages, by email and to push channels.
    Outbox,
    /// Refit running trials whose outcome streams have new data.
    Refits,
    /// Simulate the designs of proposals (for their error rates).
    Designs,
    /// Propose hypotheses from participants' goals, weekly and after a trial ends.
    Hypotheses,
}

impl JobKind {
    /// All jobs.
    pub const ALL: [JobKind; 6] = [
        JobKind::Sources,
        JobKind::Refits,
        JobKind::Assignments,
        JobKind::Outbox,
        JobKind::Designs,
        JobKind::Hypotheses,
    ];

    /// Name for logs and `/healthz`.
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Sources => "sources",
            JobKind::Assignments => "assignments",
            JobKind::Outbox => "outbox",
            JobKind::Refits => "refits",
            JobKind::Designs => "designs",
            JobKind::Hypotheses => "hypotheses",
        }
    }
}

/// What `/healthz` shows of one job.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct JobStatus {
    /// Running now.
    pub running: bool,
    /// Completed runs.
    pub runs: u64,
    /// Runs that failed.
    pub failures: u64,
    /// Ticks skipped because the previous run was still going.
    pub skipped: u64,
    /// Start of the last run (UTC, daemon clock).
    pub last_started: Option<String>,
    /// End of the last successful run.
    pub last_ok: Option<String>,
    /// What the last successful run did.
    pub last_summary: Option<String>,
    /// The last run failed.
    pub failing: bool,
    /// The last failure, if the last run failed (not shown to callers of
    /// `/healthz` without a credential: see [`JobStatus::without_texts`]).
    pub last_error: Option<String>,
}

impl JobStatus {
    /// Counts, flags and times only: error texts and summaries can name
    /// servers, sources and what a person is trying, and `/healthz` answers
    /// anyone.
    pub fn without_texts(self) -> JobStatus {
        // Field by field, so that a text field added later is not passed on
        // by default.
        JobStatus {
            running: self.running,
            runs: self.runs,
            failures: self.failures,
            skipped: self.skipped,
            last_started: self.last_started,
            last_ok: self.last_ok,
            last_summary: None,
            failing: self.failing,
            last_error: None,
        }
    }
}

/// Status of every job; also the no-overlap guard.
#[derive(Debug, Clone, Default)]
pub struct JobBoard {
    inner: Arc<Mutex<BTreeMap<JobKind, JobStatus>>>,
}

/// Marks a job finished when dropped, even if the job panicked.
struct RunGuard {
    board: JobBoard,
    kind: JobKind,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.board
            .with(|m| m.entry(self.kind).or_default().running = false);
    }
}

impl JobBoard {
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<JobKind, JobStatus>) -> T) -> T {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    fn try_start(&self, kind: JobKind, now: Timestamp) -> Option<RunGuard> {
        self.with(|m| {
            let s = m.entry(kind).or_default();
            if s.running {
                s.skipped += 1;
                return None;
            }
            s.running = true;
            s.last_started = Some(crate::service::store::ts(now));
            Some(RunGuard {
                board: self.clone(),
                kind,
            })
        })
    }

    fn finish(&self, kind: JobKind, result: &Result<String, JobError>, now: Timestamp) {
        self.with(|m| {
            let s = m.entry(kind).or_default();
            s.runs += 1;
            match result {
                Ok(summary) => {
                    s.last_ok = Some(crate::service::store::ts(now));
                    s.last_summary = Some(summary.clone());
                    s.last_error = None;
                    s.failing = false;
                }
                Err(e) => {
                    s.failures += 1;
                    s.last_error = Some(e.to_string());
                    s.failing = true;
                }
            }
        });
    }

    /// A copy of every job's status.
    pub fn snapshot(&self) -> BTreeMap<JobKind, JobStatus> {
        self.with(|m| m.clone())
    }

    /// True while any job runs (shutdown waits for them).
    pub fn any_running(&self) -> bool {
        self.with(|m| m.values().any(|s| s.running))
    }
}

/// Runs one job unless it is already running or the daemon is stopping.
pub async fn run_job(state: &AppState, kind: JobKind) {
    if *state.stopping.borrow() {
        return;
    }
    let Some(_guard) = state.jobs.try_start(kind, state.clock.now()) else {
        tracing::debug!(job = kind.name(), "previous run still going; tick skipped");
        return;
    };
    let result = match kind {
        JobKind::Sources => sources::poll_sources(state).await,
        JobKind::Assignments => assignments::queue_assignments(state).await,
        JobKind::Outbox => both(
            outbox::deliver_outbox(state).await,
            push::deliver_pushes(state).await,
        ),
        JobKind::Refits => refits::refit_trials(state).await,
        JobKind::Designs => designs::simulate_pending_designs(state).await,
        JobKind::Hypotheses => hypotheses::propose_due(state).await,
    };
    match &result {
        Ok(summary) => tracing::debug!(job = kind.name(), %summary, "job done"),
        Err(e) => {
            tracing::error!(job = kind.name(), error = %e, "job failed; will retry at the next tick")
        }
    }
    state.jobs.finish(kind, &result, state.clock.now());
}

/// The running trials, loaded once for this tick; the ones that cannot be
/// loaded come back as error messages.
pub(crate) async fn running_trials(
    state: &AppState,
) -> Result<(Vec<LoadedTrial>, Vec<String>), JobError> {
    let (participants, trials) = state
        .db
        .read(|s| Ok((s.participants()?, s.trials()?)))
        .await?;
    let (loaded, errors) =
        LoadedTrial::load_all(trials, &participants, |t| t.status == TrialStatus::Running);
    Ok((loaded, errors.iter().map(|e| e.to_string()).collect()))
}

/// The participant as a message recipient.
pub(crate) fn recipient(p: &crate::service::store::ParticipantRow) -> notify::Recipient<'_> {
    notify::Recipient {
        participant_id: p.id,
        key: &p.key,
        name: &p.name,
        email: &p.email,
    }
}

/// Two parts of one job run: their summaries joined (an empty one left
/// out), or the first error.
fn both(a: Result<String, JobError>, b: Result<String, JobError>) -> Result<String, JobError> {
    match (a, b) {
        (Ok(a), Ok(b)) if b.is_empty() => Ok(a),
        (Ok(a), Ok(b)) if a.is_empty() => Ok(b),
        (Ok(a), Ok(b)) => Ok(format!("{a}; {b}")),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

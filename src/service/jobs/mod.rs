//! The daemon's jobs: polling sources, starting trials and queueing each
//! day's assignment, refitting and deciding, delivering the outbox,
//! simulating proposals' designs. Each job is a thin async shell: it reads
//! through the store, calls the pure cores (`trial`, `engine`) on the
//! blocking pool, and writes what they return in one transaction.
//!
//! Every job is ticked each second by a tokio-cron-scheduler cron schedule
//! and runs when its period has passed on the monotonic clock
//! ([`tick_job`]). Not the scheduler's repeated jobs: those compute each
//! next tick from the last one, so after the process is held up longer than
//! a period (a suspend, heavy load) the next tick lies in the past and the
//! job never runs again (tokio-cron-scheduler issue #113). Whether a
//! participant's local assignment time has come is decided here, per run,
//! against the store's record of which days already ran — so DST changes,
//! restarts and crashes neither skip nor repeat a day.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::Serialize;

use crate::service::app::AppState;
use crate::service::config::JobsConfig;
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

    /// How often the job runs, start to start (`[jobs]` in the config).
    pub fn period(self, config: &JobsConfig) -> Duration {
        let seconds = match self {
            JobKind::Sources => config.source_poll_seconds,
            JobKind::Assignments => config.assignment_check_seconds,
            JobKind::Outbox => config.outbox_seconds,
            JobKind::Refits => config.refit_seconds,
            JobKind::Designs => config.design_seconds,
            JobKind::Hypotheses => config.hypotheses_seconds,
        };
        Duration::from_secs(seconds)
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

/// Status of every job; also the no-overlap guard and each job's schedule.
#[derive(Debug, Clone, Default)]
pub struct JobBoard {
    inner: Arc<Mutex<Board>>,
}

#[derive(Debug, Default)]
struct Board {
    status: BTreeMap<JobKind, JobStatus>,
    /// When each job's next period begins, on the monotonic clock (the
    /// scheduler's per-second tick that asks follows the wall clock).
    next_due: BTreeMap<JobKind, Instant>,
}

/// Why a job run is asked for.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    /// Now, whatever the schedule (the start, a person's "poll now"); the
    /// next period is counted from here.
    Now,
    /// The scheduler's tick: only once the job's period has passed.
    Tick,
}

/// Marks a job finished when dropped, even if the job panicked.
struct RunGuard {
    board: JobBoard,
    kind: JobKind,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.board
            .with(|b| b.status.entry(self.kind).or_default().running = false);
    }
}

/// The start of the period after the one that began at `due`: a whole
/// period later, or a period from `now` where the process was held up past
/// it (missed periods are not run in a burst).
fn next_period(due: Instant, period: Duration, now: Instant) -> Instant {
    let next = due + period;
    if next > now { next } else { now + period }
}

impl JobBoard {
    fn with<T>(&self, f: impl FnOnce(&mut Board) -> T) -> T {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Starts a run of `kind` at `mono` (the monotonic clock; `now` is the
    /// daemon's) unless it is not due (a tick within its period) or still
    /// running (counted as a skipped tick).
    fn try_start(
        &self,
        kind: JobKind,
        trigger: Trigger,
        period: Duration,
        (now, mono): (Timestamp, Instant),
    ) -> Option<RunGuard> {
        self.with(|b| {
            match (trigger, b.next_due.get(&kind)) {
                (Trigger::Tick, Some(&due)) if mono < due => return None,
                (Trigger::Tick, Some(&due)) => {
                    b.next_due.insert(kind, next_period(due, period, mono));
                }
                // The first tick starts the count: the daemon's start runs
                // every job once, in data-flow order, rather than a tick.
                (Trigger::Tick, None) => {
                    b.next_due.insert(kind, mono + period);
                    return None;
                }
                // Moved below, once the run starts: a "run now" that finds
                // the job running neither delays it nor counts as a skip.
                (Trigger::Now, _) => {}
            }
            let s = b.status.entry(kind).or_default();
            if s.running {
                if let Trigger::Tick = trigger {
                    s.skipped += 1;
                    tracing::debug!(job = kind.name(), "previous run still going; tick skipped");
                }
                return None;
            }
            if let Trigger::Now = trigger {
                b.next_due.insert(kind, mono + period);
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
        self.with(|b| {
            let s = b.status.entry(kind).or_default();
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
        self.with(|b| b.status.clone())
    }

    /// True while any job runs (shutdown waits for them).
    pub fn any_running(&self) -> bool {
        self.with(|b| b.status.values().any(|s| s.running))
    }
}

/// Runs one job now unless it is already running or the daemon is
/// stopping; its next period is counted from now.
pub async fn run_job(state: &AppState, kind: JobKind) {
    run(state, kind, Trigger::Now).await
}

/// The scheduler's tick (every second): runs the job if its period has
/// passed since its last run began, unless it is still running or the
/// daemon is stopping.
pub async fn tick_job(state: &AppState, kind: JobKind) {
    run(state, kind, Trigger::Tick).await
}

async fn run(state: &AppState, kind: JobKind, trigger: Trigger) {
    if *state.stopping.borrow() {
        return;
    }
    let period = kind.period(&state.config.jobs);
    let Some(_guard) =
        state
            .jobs
            .try_start(kind, trigger, period, (state.clock.now(), Instant::now()))
    else {
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
            tracing::error!(job = kind.name(), error = %e, "job failed; will retry at its next period")
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
        // Both held (mail and a push channel): neither hides the other.
        (Err(a), Err(b)) => Err(JobError::Item(format!("{a}; {b}"))),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_secs(10);

    fn start(board: &JobBoard, trigger: Trigger, at: Instant) -> Option<RunGuard> {
        board.try_start(
            JobKind::Outbox,
            trigger,
            PERIOD,
            (Timestamp::UNIX_EPOCH, at),
        )
    }

    #[test]
    fn a_tick_runs_a_job_once_a_period_and_a_run_now_restarts_the_count() {
        let board = JobBoard::default();
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        drop(start(&board, Trigger::Now, t0).expect("a first run"));
        assert!(start(&board, Trigger::Tick, s(1)).is_none());
        assert!(start(&board, Trigger::Tick, s(9)).is_none());
        drop(start(&board, Trigger::Tick, s(10)).expect("due after a period"));
        // The next period is counted from the last one's start, not from
        // the (late) tick: the cadence does not drift by a tick a period.
        drop(start(&board, Trigger::Tick, s(21)).expect("due"));
        assert!(start(&board, Trigger::Tick, s(29)).is_none());
        drop(start(&board, Trigger::Tick, s(30)).expect("due"));
        // A person's "run now" counts the next period from itself.
        drop(start(&board, Trigger::Now, s(33)).expect("now"));
        assert!(start(&board, Trigger::Tick, s(40)).is_none());
        drop(start(&board, Trigger::Tick, s(43)).expect("due"));
        assert_eq!(board.snapshot()[&JobKind::Outbox].skipped, 0);
    }

    #[test]
    fn the_first_tick_starts_the_count_rather_than_a_run() {
        let board = JobBoard::default();
        let t0 = Instant::now();
        assert!(start(&board, Trigger::Tick, t0).is_none());
        assert!(start(&board, Trigger::Tick, t0 + Duration::from_secs(9)).is_none());
        drop(start(&board, Trigger::Tick, t0 + PERIOD).expect("due a period later"));
    }

    #[test]
    fn a_process_held_up_past_many_periods_runs_once_and_keeps_ticking() {
        let board = JobBoard::default();
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        drop(start(&board, Trigger::Now, t0).expect("a first run"));
        // Frozen for an hour: one run on waking, not 360 to catch up, and
        // the job is due again a period later (the scheduler's repeated
        // jobs stopped for good here).
        drop(start(&board, Trigger::Tick, s(3600)).expect("due on waking"));
        assert!(start(&board, Trigger::Tick, s(3601)).is_none());
        assert!(start(&board, Trigger::Tick, s(3609)).is_none());
        drop(start(&board, Trigger::Tick, s(3610)).expect("due a period later"));
    }

    #[test]
    fn a_tick_while_the_job_still_runs_is_skipped_once_a_period() {
        let board = JobBoard::default();
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let running = start(&board, Trigger::Now, t0).expect("a first run");
        for tick in 1..=25 {
            assert!(start(&board, Trigger::Tick, s(tick)).is_none());
        }
        // Due at 10 and 20, running both times: two skips, not 25; a "run
        // now" meanwhile is no skip and does not move the schedule.
        assert!(start(&board, Trigger::Now, s(15)).is_none());
        assert_eq!(board.snapshot()[&JobKind::Outbox].skipped, 2);
        assert!(board.any_running());
        drop(running);
        assert!(!board.any_running());
        // Its period began at 20: due at 30.
        assert!(start(&board, Trigger::Tick, s(26)).is_none());
        drop(start(&board, Trigger::Tick, s(30)).expect("due"));
    }
}

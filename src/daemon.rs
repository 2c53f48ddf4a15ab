//! The daemon: a thin async shell around the store and the pure cores.
//!
//! `serve` takes the data-folder lock, opens and migrates the store, syncs the
//! configured participants (and seeds the demo), starts the HTTP server and
//! the scheduled jobs, and waits for SIGINT/SIGTERM. Jobs tick on a
//! tokio-cron-scheduler repeated schedule (UTC, real time); whether a
//! participant's local assignment time has come is decided here, per tick,
//! against the store's record of which days already ran — so DST changes,
//! restarts and crashes neither skip nor repeat a day.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::Serialize;
use tokio::sync::watch;
use tokio_cron_scheduler::{Job as CronJob, JobScheduler};

use crate::calendar::{Clock, local_date, local_instant};
use crate::config::{Config, ConfigError, Secret, parse_hhmm};
use crate::demo::{self, DemoError};
use crate::lock::{DataLock, LockError};
use crate::notify::{self, Assignment};
use crate::protocol::Protocol;
use crate::sources::Source;
use crate::store::{Db, StoreError, TrialRow};

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Binding beyond loopback without authentication.
    #[error(
        "refusing to listen on {0}: it is not a loopback address and no web.token or web.password_hash is configured. Anyone on your network could read and change trials. Set one (see examples/nof1d.toml) or listen on 127.0.0.1"
    )]
    Insecure(SocketAddr),
    /// The data folder lock.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The demo.
    #[error(transparent)]
    Demo(#[from] DemoError),
    /// The configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file-system step.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The scheduler.
    #[error("scheduler: {0}")]
    Scheduler(String),
}

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
    /// Deliver due outbox messages.
    Outbox,
    /// Refit running trials whose outcome streams have new data.
    Refits,
    /// Simulate the designs of proposals (for their error rates).
    Designs,
}

impl JobKind {
    /// All jobs.
    pub const ALL: [JobKind; 5] = [
        JobKind::Sources,
        JobKind::Refits,
        JobKind::Assignments,
        JobKind::Outbox,
        JobKind::Designs,
    ];

    /// Name for logs and `/healthz`.
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Sources => "sources",
            JobKind::Assignments => "assignments",
            JobKind::Outbox => "outbox",
            JobKind::Refits => "refits",
            JobKind::Designs => "designs",
        }
    }
}

/// What `/healthz` shows of one job.
#[derive(Debug, Clone, Default, Serialize)]
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
    /// The last failure, if the last run failed.
    pub last_error: Option<String>,
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
            s.last_started = Some(crate::store::ts(now));
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
                    s.last_ok = Some(crate::store::ts(now));
                    s.last_summary = Some(summary.clone());
                    s.last_error = None;
                }
                Err(e) => {
                    s.failures += 1;
                    s.last_error = Some(e.to_string());
                }
            }
        });
    }

    /// A copy of every job's status.
    pub fn snapshot(&self) -> BTreeMap<JobKind, JobStatus> {
        self.with(|m| m.clone())
    }

    fn any_running(&self) -> bool {
        self.with(|m| m.values().any(|s| s.running))
    }
}

/// Dashboard authentication, resolved at start-up.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// Bearer token.
    pub token: Option<Secret>,
    /// Argon2 PHC hash of the participant's password.
    pub password_hash: Option<String>,
    /// Argon2 PHC hash of the investigator's password.
    pub investigator_password_hash: Option<String>,
}

impl Auth {
    /// True when any credential is configured.
    pub fn is_configured(&self) -> bool {
        self.token.is_some()
            || self.password_hash.is_some()
            || self.investigator_password_hash.is_some()
    }
}

/// Everything the HTTP handlers and jobs share.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub db: Db,
    /// The configuration.
    pub config: Arc<Config>,
    /// The daemon's clock.
    pub clock: Clock,
    /// Job status.
    pub jobs: JobBoard,
    /// Dashboard credentials.
    pub auth: Auth,
    /// When the daemon started (daemon clock).
    pub started_at: Timestamp,
    /// Set when shutdown begins.
    pub stopping: watch::Receiver<bool>,
    /// Signs and checks one-click links.
    pub link_key: crate::links::LinkKey,
    /// The dashboard's base URL as participants reach it (for links).
    pub public_url: String,
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> Result<(), DaemonError> {
    let auth = Auth {
        token: config
            .web
            .token
            .as_ref()
            .map(|t| t.resolve("web.token"))
            .transpose()?,
        password_hash: config.web.password_hash.clone(),
        investigator_password_hash: config.web.investigator_password_hash.clone(),
    };
    if !config.web.listen.ip().is_loopback() && !auth.is_configured() {
        return Err(DaemonError::Insecure(config.web.listen));
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|source| DaemonError::Io {
        what: format!("cannot create data folder {}", config.data_dir.display()),
        source,
    })?;
    let lock = DataLock::acquire(&config.data_dir)?;
    tracing::info!(lock = %lock.path().display(), "data folder locked");

    let db_path = config.database_path();
    let db = tokio::task::spawn_blocking(move || Db::open(&db_path))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
    let clock = if config.clock.time_scale == 1.0 && config.clock.start.is_none() {
        Clock::system()
    } else {
        let now = crate::store::ts(Timestamp::now());
        let wanted_start = config.clock.start.clone();
        // The simulated timeline starts at clock.start, else where the real
        // anchor is (also for databases from before clock.start existed).
        let (anchor, start) = db
            .write(move |s| {
                let anchor = s.meta_get_or_insert("clock_anchor", &now)?;
                let start = s.meta_get_or_insert(
                    "clock_start",
                    wanted_start.as_deref().unwrap_or(&anchor),
                )?;
                Ok((anchor, start))
            })
            .await?;
        let parse = |name: &str, v: &str| -> Result<Timestamp, StoreError> {
            v.parse()
                .map_err(|e| StoreError::Invalid(format!("{name} {v:?}: {e}")))
        };
        let (anchor, start) = (
            parse("clock_anchor", &anchor)?,
            parse("clock_start", &start)?,
        );
        tracing::warn!(scale = config.clock.time_scale, %anchor, %start, "simulated clock: the daemon's time is not the real time");
        Clock::scaled_from(anchor, start, config.clock.time_scale)
    };
    sync_participants(&db, &config, clock.now()).await?;

    // The key that signs one-click links: generated once, kept in the store.
    let fresh_key = crate::links::LinkKey::generate()
        .map_err(|e| DaemonError::Io {
            what: "cannot draw the link-signing key".into(),
            source: std::io::Error::other(e.to_string()),
        })?
        .to_hex();
    let stored_key = db
        .write(move |s| s.meta_get_or_insert("link_key", &fresh_key))
        .await?;
    let link_key = crate::links::LinkKey::from_hex(&stored_key)
        .ok_or_else(|| StoreError::Invalid("meta link_key is not 64 hex digits".into()))?;

    let listener = tokio::net::TcpListener::bind(config.web.listen)
        .await
        .map_err(|source| DaemonError::Io {
            what: format!("cannot listen on {}", config.web.listen),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| DaemonError::Io {
        what: "cannot read the listening address".into(),
        source,
    })?;
    let public_url = match &config.email.public_url {
        Some(_) => config.public_url(),
        None => format!("http://{bound}"),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = AppState {
        db,
        config: Arc::new(config),
        clock,
        jobs: JobBoard::default(),
        auth,
        started_at: clock.now(),
        stopping: stop_rx,
        link_key,
        public_url,
    };
    let addr = bound;
    // Tests and scripts read the real port from here (the config may say port 0).
    let addr_file = state.config.data_dir.join("listen.addr");
    std::fs::write(&addr_file, format!("{addr}\n")).map_err(|source| DaemonError::Io {
        what: format!("cannot write {}", addr_file.display()),
        source,
    })?;
    tracing::info!(%addr, "dashboard listening on http://{addr}/");

    let router = crate::web::router(state.clone());
    let mut server_stop = state.stopping.clone();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = server_stop.wait_for(|s| *s).await;
        })
        .await
    });

    let mut scheduler = JobScheduler::new()
        .await
        .map_err(|e| DaemonError::Scheduler(e.to_string()))?;
    for kind in JobKind::ALL {
        let period = match kind {
            JobKind::Sources => state.config.jobs.source_poll_seconds,
            JobKind::Assignments => state.config.jobs.assignment_check_seconds,
            JobKind::Outbox => state.config.jobs.outbox_seconds,
            JobKind::Refits => state.config.jobs.refit_seconds,
            JobKind::Designs => state.config.jobs.design_seconds,
        };
        let st = state.clone();
        let job = CronJob::new_repeated_async(Duration::from_secs(period), move |_id, _sched| {
            let st = st.clone();
            Box::pin(async move { run_job(&st, kind).await })
        })
        .map_err(|e| DaemonError::Scheduler(e.to_string()))?;
        scheduler
            .add(job)
            .await
            .map_err(|e| DaemonError::Scheduler(e.to_string()))?;
    }
    scheduler
        .start()
        .await
        .map_err(|e| DaemonError::Scheduler(e.to_string()))?;
    // Run each job once now, in data-flow order, rather than a period from now.
    let first = state.clone();
    tokio::spawn(async move {
        for kind in JobKind::ALL {
            run_job(&first, kind).await;
        }
    });
    tracing::info!("nof1d is running");

    wait_for_signal().await;
    tracing::info!("shutting down: no new job runs; waiting for running ones");
    let _ = stop_tx.send(true);
    if let Err(e) = scheduler.shutdown().await {
        tracing::warn!(error = %e, "scheduler shutdown");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while state.jobs.any_running() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if state.jobs.any_running() {
        // Every write is one transaction: abandoning it loses nothing committed.
        tracing::warn!("a job is still running after 30 s; abandoning it");
    }
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "http server"),
        Err(e) => tracing::warn!(error = %e, "http server task"),
    }
    drop(lock);
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; SIGINT only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Writes the configured participants (and the demo) into the store.
async fn sync_participants(db: &Db, config: &Config, now: Timestamp) -> Result<(), DaemonError> {
    let mut resolved = Vec::new();
    for p in &config.participants {
        resolved.push(p.resolve()?);
    }
    let demo_zone = config.demo.enabled.then(|| config.demo.time_zone.clone());
    let demo_trial = db
        .write(move |s| {
            for p in &resolved {
                s.upsert_participant(p, false, now)?;
            }
            match demo_zone {
                Some(zone) => demo::ensure_seeded(s, &zone, now)
                    .map(Some)
                    .map_err(|e| StoreError::Refused(e.to_string())),
                None => Ok(None),
            }
        })
        .await?;
    if let Some(id) = demo_trial {
        tracing::info!(trial = id, "demo participant ready");
    }
    Ok(())
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
        JobKind::Sources => poll_sources(state).await,
        JobKind::Assignments => queue_assignments(state).await,
        JobKind::Outbox => deliver_outbox(state).await,
        JobKind::Refits => refit_trials(state).await,
        JobKind::Designs => crate::web::simulate_pending_designs(state)
            .await
            .map_err(JobError::from),
    };
    match &result {
        Ok(summary) => tracing::debug!(job = kind.name(), %summary, "job done"),
        Err(e) => {
            tracing::error!(job = kind.name(), error = %e, "job failed; will retry at the next tick")
        }
    }
    state.jobs.finish(kind, &result, state.clock.now());
}

/// Polls every source with a known adapter; one failing source does not stop the others.
async fn poll_sources(state: &AppState) -> Result<String, JobError> {
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

/// Running trials with their participants.
async fn running_trials(
    state: &AppState,
) -> Result<Vec<(TrialRow, crate::store::ParticipantRow)>, JobError> {
    let (participants, trials) = state
        .db
        .read(|s| Ok((s.participants()?, s.trials()?)))
        .await?;
    Ok(trials
        .into_iter()
        .filter(|t| t.status == "running")
        .filter_map(|t| {
            let p = participants
                .iter()
                .find(|p| p.id == t.participant_id)?
                .clone();
            Some((t, p))
        })
        .collect())
}

/// Refits every outcome of every running trial whose stream has data newer
/// than its last fit (new observations or a later date). The fit runs on the
/// blocking pool; the fit and its priors are stored with an audit entry.
async fn refit_trials(state: &AppState) -> Result<String, JobError> {
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

async fn refit_trial(
    state: &AppState,
    trial: &TrialRow,
    p: &crate::store::ParticipantRow,
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
        if protocol.decision.analysis == crate::protocol::Analysis::AsTreated {
            analyses.push((crate::trial::as_treated_key(&outcome.stream), true));
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
async fn refit_one(
    state: &AppState,
    trial: &TrialRow,
    p: &crate::store::ParticipantRow,
    protocol: &Protocol,
    outcome: &crate::protocol::Outcome,
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
    let dropped = crate::lifecycle::dropped_arms(&numbers);
    let schedule = if as_treated {
        crate::trial::as_treated(&schedule, &adherence, protocol.comparator_index())
    } else {
        schedule
    };
    let (proto, out, tz2) = (protocol.clone(), outcome.clone(), tz.clone());
    let seed = trial.seed;
    let result = tokio::task::spawn_blocking(move || {
        let ts = crate::trial::trial_series(&proto, &out, &schedule, &observations, &tz2);
        let Some(through) = ts.data_through else {
            return Ok(None);
        };
        let fresh = last.as_ref().is_none_or(|f| {
            f.observations != ts.series.y.len() as i64 || f.data_through != through.to_string()
        });
        if !fresh || ts.series.y.len() < 3 {
            return Ok(None);
        }
        let spec = crate::fit::FitSpec {
            outcome: &out,
            arm_keys: proto.arms.iter().map(|a| a.key.clone()).collect(),
            run_in_sd: ts.run_in_sd,
            method: crate::fit::Method::Grid,
            seed,
            mcmc: crate::inference::McmcOptions::default(),
            grid: crate::inference::GridOptions::default(),
            dropped,
            path: true,
            intervals: true,
        };
        crate::fit::fit(&ts.series, &spec).map(|r| Some((r, through)))
    })
    .await
    .map_err(|e| JobError::Item(e.to_string()))?
    .map_err(|e: crate::model::ModelError| JobError::Item(format!("{key}: {e}")))?;
    let Some((report, through)) = result else {
        return Ok(false);
    };
    let fit = crate::store::NewFit {
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

/// The participant as a message recipient.
fn recipient(p: &crate::store::ParticipantRow) -> notify::Recipient<'_> {
    notify::Recipient {
        participant_id: p.id,
        key: &p.key,
        name: &p.name,
        email: &p.email,
    }
}

/// Whether today's assignment time has come for a trial (whatever its day's state).
fn assignment_time_reached(
    state: &AppState,
    trial: &TrialRow,
    p: &crate::store::ParticipantRow,
) -> bool {
    let Ok(protocol) = Protocol::parse(&trial.protocol_toml, "stored protocol") else {
        // queue_one reports the problem.
        return true;
    };
    let (Ok(tz), Some(time)) = (
        TimeZone::get(&p.time_zone),
        assignment_time(&protocol, &p.assignment_time),
    ) else {
        return true;
    };
    let now = state.clock.now();
    now >= local_instant(local_date(now, &tz), time, &tz)
}

/// Starts approved trials whose start date has come: the dated schedule is
/// stored and the trial becomes running, unless another running or paused
/// trial of the participant measures one of its streams (not factorial).
async fn start_due_trials(state: &AppState) -> Result<usize, JobError> {
    let (participants, trials) = state
        .db
        .read(|s| Ok((s.participants()?, s.trials()?)))
        .await?;
    let mut started = 0;
    let mut errors = Vec::new();
    for trial in trials.iter().filter(|t| t.status == "approved") {
        let Some(p) = participants.iter().find(|p| p.id == trial.participant_id) else {
            continue;
        };
        let tz = TimeZone::get(&p.time_zone)
            .map_err(|e| JobError::Item(format!("zone {}: {e}", p.time_zone)))?;
        let today = local_date(state.clock.now(), &tz);
        let Some(start) = trial.start_date else {
            continue;
        };
        if start > today {
            continue;
        }
        let protocol = Protocol::parse(&trial.protocol_toml, &format!("trial {}", trial.id))
            .map_err(|e| JobError::Item(e.to_string()))?;
        let others: Vec<(i64, Protocol)> = trials
            .iter()
            .filter(|t| t.participant_id == trial.participant_id && t.id != trial.id)
            .filter(|t| t.status == "running" || t.status == "paused")
            .filter_map(|t| Some((t.id, Protocol::parse(&t.protocol_toml, "stored").ok()?)))
            .collect();
        if let Some(why) = crate::lifecycle::conflict(&protocol, &others) {
            errors.push(format!("trial {} cannot start: {why}", trial.id));
            continue;
        }
        // A start date already past (the daemon was down) starts today.
        let day0 = start.max(today);
        let rows =
            crate::lifecycle::dated(&protocol, &crate::design::plan(&protocol, trial.seed), day0)
                .map_err(|e| JobError::Item(e.to_string()))?;
        let (id, now) = (trial.id, state.clock.now());
        let message = notify::trial_started_message(
            recipient(p),
            trial.id,
            &protocol,
            &trial.protocol_hash,
            day0,
            &state.public_url,
        );
        state
            .db
            .write(move |s| s.start_trial(id, day0, &rows, &[message], "daemon", now))
            .await?;
        tracing::info!(trial = id, start = %day0, "trial started");
        started += 1;
    }
    if errors.is_empty() {
        Ok(started)
    } else {
        Err(JobError::Item(errors.join("; ")))
    }
}

/// Takes the decision due at the end of the latest period (§5), from the
/// primary outcome's latest fit, and applies it with the decision in one
/// transaction. Returns the action when a decision was stored.
///
/// Without `force` (the refit job) the look waits until the latest fit
/// covers the period's last day; with it (before the next assignment goes
/// out) it is taken on the data there are, as a missed rating may never come.
async fn decide_trial(
    state: &AppState,
    trial: &TrialRow,
    p: &crate::store::ParticipantRow,
    force: bool,
) -> Result<Option<crate::decide::Action>, JobError> {
    use crate::decide::{self, Action, Look};
    let protocol = Protocol::parse(&trial.protocol_toml, &format!("trial {}", trial.id))
        .map_err(|e| JobError::Item(e.to_string()))?;
    let tz = TimeZone::get(&p.time_zone)
        .map_err(|e| JobError::Item(format!("zone {}: {e}", p.time_zone)))?;
    let today = local_date(state.clock.now(), &tz);
    // The analysis the protocol names drives the decision (statistics.md §5).
    let stream = match protocol.decision.analysis {
        crate::protocol::Analysis::AsTreated => {
            crate::trial::as_treated_key(&protocol.outcome.stream)
        }
        crate::protocol::Analysis::Itt => protocol.outcome.stream.clone(),
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
    let Some((period, done)) = crate::lifecycle::look_due(&rows, &decided, today) else {
        return Ok(None);
    };
    let period_end = crate::lifecycle::period_ends(&rows)
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
    let dropped = crate::lifecycle::dropped_arms(&numbers);
    let periods = crate::lifecycle::periods_of(&rows);
    let look = Look {
        period,
        blocks_done: crate::design::blocks_done(&periods, done),
        last_period: done >= periods.len(),
        active: (0..protocol.arms.len())
            .filter(|a| !dropped.contains(a))
            .collect(),
    };
    let keys: Vec<String> = protocol.arms.iter().map(|a| a.key.clone()).collect();
    let thresholds = decide::thresholds(&protocol.decision, protocol.design.min_blocks);
    let report = fit
        .as_ref()
        .and_then(|f| serde_json::from_str::<crate::fit::FitReport>(&f.result_json).ok());
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
        crate::lifecycle::schedule_change(&protocol, trial.seed, &rows, &decision, p_comp)
            .map_err(|e| JobError::Item(e.to_string()))?;
    let new = crate::store::NewDecision {
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

/// The local assignment time of a trial: the protocol's, else the participant's.
fn assignment_time(protocol: &Protocol, participant_time: &str) -> Option<jiff::civil::Time> {
    protocol
        .notification
        .assignment_time
        .as_deref()
        .and_then(parse_hhmm)
        .or_else(|| parse_hhmm(participant_time))
}

/// Queues today's assignment for every running trial whose local assignment
/// time has come and whose day has not run yet. Days between the last run
/// and today are recorded as missed, never sent late.
async fn queue_assignments(state: &AppState) -> Result<String, JobError> {
    let mut queued = 0;
    let mut errors = Vec::new();
    if let Err(e) = start_due_trials(state).await {
        errors.push(e.to_string());
    }
    for (trial, p) in running_trials(state).await? {
        // A period that just ended is decided before the next day's
        // assignment goes out, so a stopped trial sends nothing more.
        if !assignment_time_reached(state, &trial, &p) {
            continue;
        }
        if let Err(e) = refit_trial(state, &trial, &p).await {
            errors.push(format!("trial {}: {e}", trial.id));
        }
        match decide_trial(state, &trial, &p, true).await {
            Ok(Some(action)) if action.stops() => continue,
            Ok(Some(_)) => {}
            Ok(None) => {}
            Err(e) => {
                errors.push(format!("trial {}: decision: {e}", trial.id));
                continue;
            }
        }
        // The schedule may have changed (arms dropped): queue from the store.
        let trial_id = trial.id;
        let Some(trial) = state.db.read(move |s| s.trial(trial_id)).await? else {
            continue;
        };
        match queue_one(state, trial, p).await {
            Ok(true) => queued += 1,
            Ok(false) => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(format!("{queued} assignments queued"))
    } else {
        Err(JobError::Item(errors.join("; ")))
    }
}

async fn queue_one(
    state: &AppState,
    trial: TrialRow,
    p: crate::store::ParticipantRow,
) -> Result<bool, JobError> {
    let protocol = Protocol::parse(&trial.protocol_toml, &format!("trial {}", trial.id))
        .map_err(|e| JobError::Item(e.to_string()))?;
    let tz = TimeZone::get(&p.time_zone)
        .map_err(|e| JobError::Item(format!("participant {}: zone {}: {e}", p.key, p.time_zone)))?;
    let time = assignment_time(&protocol, &p.assignment_time)
        .ok_or_else(|| JobError::Item(format!("participant {}: bad assignment time", p.key)))?;
    let now = state.clock.now();
    let today = local_date(now, &tz);
    if now < local_instant(today, time, &tz) {
        return Ok(false);
    }
    let link_key = state.link_key.clone();
    let base_url = state.public_url.clone();
    let weekly = state.config.email.weekly_summary;
    let expires = now
        .checked_add(jiff::SignedDuration::from_hours(
            24 * i64::from(state.config.email.link_valid_days),
        ))
        .unwrap_or(Timestamp::MAX);
    let queued = state
        .db
        .write(move |s| {
            let last = s.last_daily_run(trial.id)?;
            if last.is_some_and(|l| l >= today) {
                return Ok(false);
            }
            let Some(row) = s.schedule_on(trial.id, today)? else {
                return Ok(false);
            };
            let missed: Vec<Date> = match last {
                Some(last) => s
                    .schedule(trial.id)?
                    .into_iter()
                    .map(|d| d.local_date)
                    .filter(|d| *d > last && *d < today)
                    .collect(),
                None => Vec::new(),
            };
            let message = notify::assignment_message(&Assignment {
                participant_key: &p.key,
                participant_name: &p.name,
                participant_id: p.id,
                email: &p.email,
                trial_id: trial.id,
                protocol: &protocol,
                today: &row,
                links: Some(notify::Links {
                    key: &link_key,
                    base_url: &base_url,
                    expires,
                }),
            });
            let mut messages = vec![message];
            // Composed with every assignment; the outbox keeps the first of
            // each ISO week (the key names the week).
            if weekly {
                let week_start = today
                    .checked_sub(jiff::Span::new().days(7))
                    .unwrap_or(today);
                let days: Vec<u32> = s
                    .schedule(trial.id)?
                    .into_iter()
                    .filter(|r| r.local_date >= week_start && r.local_date < today)
                    .map(|r| r.day)
                    .collect();
                let mut counts: BTreeMap<String, usize> = BTreeMap::new();
                for (day, status) in s.adherence(trial.id)? {
                    if days.contains(&day) {
                        *counts.entry(status).or_default() += 1;
                    }
                }
                let latest = s
                    .latest_fit(trial.id, &protocol.outcome.stream)?
                    .and_then(|f| {
                        serde_json::from_str::<crate::fit::FitReport>(&f.result_json).ok()
                    });
                messages.push(notify::weekly_summary_message(
                    recipient(&p),
                    trial.id,
                    &protocol,
                    today,
                    &counts.into_iter().collect::<Vec<_>>(),
                    latest.as_ref(),
                    &base_url,
                ));
            }
            s.record_daily_run(trial.id, today, &missed, &messages, now)
        })
        .await?;
    Ok(queued)
}

/// Delivers due outbox messages. The attempt is recorded before delivery,
/// so a crash mid-delivery is retried after its backoff, not in a loop.
async fn deliver_outbox(state: &AppState) -> Result<String, JobError> {
    let now = state.clock.now();
    let (due, participants) = state
        .db
        .read(move |s| Ok((s.due_messages(now, 50)?, s.participants()?)))
        .await?;
    if due.is_empty() {
        return Ok("0 sent, 0 failed".into());
    }
    let smtp = match &state.config.email.smtp {
        Some(cfg) => Some(Arc::new(
            notify::smtp_transport(cfg).map_err(|e| JobError::Item(e.to_string()))?,
        )),
        None => None,
    };
    let (mut sent, mut failed) = (0, 0);
    for row in due {
        if *state.stopping.borrow() {
            break;
        }
        let id = row.id;
        // An assignment is for its day only: once the participant's day has
        // passed it is marked failed, never sent late as if it were today.
        let today = participants
            .iter()
            .find(|p| p.id == row.participant_id)
            .and_then(|p| TimeZone::get(&p.time_zone).ok())
            .map(|tz| local_date(now, &tz).to_string());
        if row.kind == "assignment"
            && let (Some(day), Some(today)) = (&row.local_date, &today)
            && day < today
        {
            let msg = format!("not delivered: its day ({day}) has passed");
            tracing::warn!(message = id, "{msg}");
            state.db.write(move |s| s.mark_failed(id, &msg)).await?;
            failed += 1;
            continue;
        }
        let retry_at = now + notify::backoff(row.attempts + 1);
        // The attempt is recorded before it starts: a crash mid-send is
        // retried after its backoff (the Message-ID lets mail systems drop
        // the rare repeat), never in a tight loop.
        state
            .db
            .write(move |s| s.mark_attempt(id, retry_at))
            .await?;
        let from = state.config.email.from.clone();
        let dir = state.config.mail_dir();
        let smtp = smtp.clone();
        let cfg = state.config.email.smtp.clone();
        let delivered = tokio::task::spawn_blocking(move || match (smtp, cfg) {
            (Some(transport), Some(cfg)) => {
                notify::deliver_smtp(&row, &from, &transport, &cfg, now)
            }
            _ => notify::deliver_to_file(&row, &from, &dir, now).map(|p| p.display().to_string()),
        })
        .await
        .map_err(|e| JobError::Item(e.to_string()))?;
        match delivered {
            Ok(to) => {
                state.db.write(move |s| s.mark_sent(id, &to, now)).await?;
                sent += 1;
            }
            Err(e) if e.is_permanent() => {
                let msg = e.to_string();
                tracing::error!(message = id, error = %msg, "permanent delivery failure");
                state.db.write(move |s| s.mark_failed(id, &msg)).await?;
                failed += 1;
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::warn!(message = id, error = %msg, "delivery failed; will retry");
                state
                    .db
                    .write(move |s| s.mark_retry(id, &msg, retry_at))
                    .await?;
                failed += 1;
            }
        }
    }
    Ok(format!("{sent} sent, {failed} failed"))
}

/// When a running trial's next assignment is due: today's time if today has
/// not run yet (possibly already past: "due now"), else the next scheduled day's.
pub fn next_assignment(
    protocol: &Protocol,
    participant_time: &str,
    tz: &TimeZone,
    schedule_dates: &[Date],
    last_run: Option<Date>,
    now: Timestamp,
) -> Option<Timestamp> {
    let time = assignment_time(protocol, participant_time)?;
    let today = local_date(now, tz);
    let next_day = schedule_dates
        .iter()
        .copied()
        .find(|d| *d >= today && last_run.is_none_or(|l| *d > l))?;
    Some(local_instant(next_day, time, tz))
}

//! Builds and runs the service: takes the data-folder lock, opens and
//! migrates the store, sets the clock, syncs the configured participants
//! (and seeds the demo), starts the HTTP server (`web`) and the scheduled
//! jobs (`service::jobs`), and waits for SIGINT/SIGTERM. It is the one place
//! that knows both the web and the service, so neither imports the other's
//! start-up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch;
use tokio_cron_scheduler::{Job as CronJob, JobScheduler};

use crate::service::app::{AppState, Auth};
use crate::service::clock::Clock;
use crate::service::config::{Config, ConfigError};
use crate::service::demo::{self, DemoError};
use crate::service::jobs::{JobBoard, JobKind, run_job, tick_job};
use crate::service::lock::{DataLock, LockError};
use crate::service::store::{Db, StoreError};

/// The scheduler's tick for every job: each second (seconds first, UTC).
const EVERY_SECOND: &str = "* * * * * *";

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
    if let Some(token) = &auth.token {
        crate::service::config::check_token(token)?;
    }
    if !config.web.listen.ip().is_loopback() && !auth.is_configured() {
        return Err(DaemonError::Insecure(config.web.listen));
    }
    let narrowed = crate::service::private::ensure_dir(&config.data_dir).map_err(|source| {
        DaemonError::Io {
            what: format!("cannot create data folder {}", config.data_dir.display()),
            source,
        }
    })?;
    if narrowed {
        tracing::warn!(dir = %config.data_dir.display(), "the data folder was readable by other users; it is now 0700");
    }
    let lock = DataLock::acquire(&config.data_dir)?;
    tracing::info!(lock = %lock.path().display(), "data folder locked");

    let db_path = config.database_path();
    let key = config.database.resolve_key()?;
    if key.is_some() {
        tracing::info!("the database is encrypted (SQLCipher, AES-256)");
    }
    let db = tokio::task::spawn_blocking(move || Db::open_keyed(&db_path, key.as_ref()))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
    let clock = if config.clock.time_scale == 1.0 && config.clock.start.is_none() {
        Clock::system()
    } else {
        let now = crate::service::store::ts(Timestamp::now());
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
    // A restart is how a setting is mended (an SMTP password, a push
    // token): what waited on a retry goes at the first delivery run, not
    // after a backoff of up to six hours more.
    let now = clock.now();
    let (mails, pushes) = db.write(move |s| s.retry_waiting_now(now)).await?;
    if mails + pushes > 0 {
        tracing::info!(
            mails,
            pushes,
            "messages that waited on a retry are tried again at once"
        );
    }

    // The key that signs one-click links: generated once, kept in the store.
    let fresh_key = crate::service::links::LinkKey::generate()
        .map_err(|e| DaemonError::Io {
            what: "cannot draw the link-signing key".into(),
            source: std::io::Error::other(e.to_string()),
        })?
        .to_hex();
    let stored_key = db
        .write(move |s| s.meta_get_or_insert("link_key", &fresh_key))
        .await?;
    let link_key = crate::service::links::LinkKey::from_hex(&stored_key)
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
        designs: Default::default(),
        auth,
        started_at: clock.now(),
        stopping: stop_rx,
        link_key,
        public_url,
        delivery_held: Default::default(),
        push_held: Default::default(),
    };
    let addr = bound;
    // Tests and scripts read the real port from here (the config may say port 0).
    let addr_file = state.config.data_dir.join("listen.addr");
    let _ = std::fs::remove_file(&addr_file);
    crate::service::private::write_new(&addr_file, format!("{addr}\n").as_bytes()).map_err(
        |source| DaemonError::Io {
            what: format!("cannot write {}", addr_file.display()),
            source,
        },
    )?;
    tracing::info!(%addr, "dashboard listening on http://{addr}/");

    let router = crate::web::router(state.clone());
    let limits = crate::web::server::Limits {
        max_connections: state.config.web.max_connections,
        header_timeout: Duration::from_secs(state.config.web.header_timeout_seconds),
    };
    let server = tokio::spawn(crate::web::server::serve(
        listener,
        router,
        limits,
        state.stopping.clone(),
    ));

    let mut scheduler = JobScheduler::new()
        .await
        .map_err(|e| DaemonError::Scheduler(e.to_string()))?;
    for kind in JobKind::ALL {
        let st = state.clone();
        // Every second; the job runs when its period has come (see
        // `service::jobs` for why not the scheduler's repeated jobs).
        let job = CronJob::new_async(EVERY_SECOND, move |_id, _sched| {
            let st = st.clone();
            Box::pin(async move { tick_job(&st, kind).await })
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
    let abandoned = state.jobs.any_running();
    if abandoned {
        // Every write is one transaction: abandoning it loses nothing committed.
        tracing::warn!("a job is still running after 30 s; abandoning it");
    }

    if let Err(e) = server.await {
        tracing::warn!(error = %e, "http server task");
    }
    // Last, when no job and no request writes any more: move the write-ahead
    // log into the database file, so that after a clean stop `nof1d.sqlite`
    // alone holds everything (a copy of it is complete).
    if let Err(e) = state.db.write(|s| s.checkpoint()).await {
        tracing::warn!(error = %e, "checkpoint at shutdown");
    }
    drop(lock);
    if abandoned {
        tracing::warn!("stopped, with a job abandoned: what it committed is kept");
    } else {
        tracing::info!("stopped cleanly");
    }
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
        let sources: Vec<(&str, String, String)> = p
            .home_assistant
            .iter()
            .map(|ha| {
                (
                    crate::service::sources::home_assistant::KIND,
                    ha.name.clone(),
                    ha.stored_json(),
                )
            })
            .chain(
                p.logins()
                    .map(|(kind, o)| (kind, o.source_name(kind), o.stored_json())),
            )
            .collect();
        resolved.push((p.resolve()?, sources));
    }
    let demo_zone = config.demo.enabled.then(|| config.demo.time_zone.clone());
    let demo_trial = db
        .write_with(move |s| -> Result<Option<i64>, DemoError> {
            for (p, sources) in &resolved {
                let id = s.upsert_participant(p, false, now)?;
                for (kind, name, json) in sources {
                    s.configure_source(id, name, kind, json, now)?;
                }
            }
            match demo_zone {
                Some(zone) => demo::ensure_seeded(s, &zone, now).map(Some),
                None => Ok(None),
            }
        })
        .await?;
    if let Some(id) = demo_trial {
        tracing::info!(trial = id, "demo participant ready");
    }
    Ok(())
}

//! What the HTTP handlers and the jobs share: the store, the clock, the
//! configuration, the job board, the dashboard's credentials.

use std::sync::Arc;

use jiff::Timestamp;
use tokio::sync::watch;

use crate::service::clock::Clock;
use crate::service::config::{Config, Secret};
use crate::service::jobs::JobBoard;
use crate::service::links::LinkKey;
use crate::service::store::Db;

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
    /// The designs job's running calibrations and simulations, with their progress.
    pub designs: crate::service::jobs::DesignBoard,
    /// Dashboard credentials.
    pub auth: Auth,
    /// When the daemon started (daemon clock).
    pub started_at: Timestamp,
    /// Set when shutdown begins.
    pub stopping: watch::Receiver<bool>,
    /// Signs and checks one-click links.
    pub link_key: LinkKey,
    /// The dashboard's base URL as participants reach it (for links).
    pub public_url: String,
    /// Why email delivery is held (the server, the account or the mail
    /// folder failed the last attempt), until a message goes out: the
    /// outbox job shows failing meanwhile, also in runs with nothing due.
    pub delivery_held: Arc<std::sync::Mutex<Option<String>>>,
    /// Push channels the server refused (`PushError::refused`), each with
    /// a description fit for `/healthz` (participant, place in the config,
    /// kind, status code: never the URL, a secret for ntfy, nor the
    /// server's answer), until a push to it goes through: the outbox job
    /// shows failing meanwhile, also in runs with nothing due for them.
    /// Kept in memory: a restart forgets the hold until the channel's next
    /// try refuses again.
    pub push_held: Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>,
}

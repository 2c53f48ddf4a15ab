//! Data sources: adapters that yield normalised observations into the store.
//!
//! A source is polled with the cursor it returned last time and answers with
//! new observations and a new cursor; the store records both in one
//! transaction, and `(source, source_record_id)` is unique, so a re-read or a
//! crash between poll and commit never duplicates or loses a row.
//!
//! A connector is one file in this folder (implementing [`Source`] and a
//! builder from its stored row) plus one line in [`ADAPTERS`]: the demo
//! participant's simulator and Home Assistant.

use jiff::Timestamp;

use crate::service::config::Config;
use crate::service::store::{NewObservation, SourceRow, Store, StoreError};

pub mod apple_health;
pub mod demo;
pub mod granted;
pub mod health_auto_export;
pub mod home_assistant;
pub mod home_assistant_ws;
pub mod inbox;
pub mod ingest;
pub mod mapped;
pub mod oura;
pub mod strava;
pub mod withings;

/// Builds a source's adapter from its stored row (kind, configuration,
/// cursor), whatever else in the store it needs and the config (settings,
/// secrets, day rules); `None` for a source that is not polled any more
/// (taken out of the config).
pub type Builder = fn(&SourceRow, &Store, &Config) -> Result<Option<Box<dyn Source>>, SourceError>;

/// The registry: each source kind and its adapter's builder.
pub const ADAPTERS: &[(&str, Builder)] = &[
    (crate::service::demo::SOURCE_KIND, demo::adapter),
    (home_assistant::KIND, home_assistant::adapter),
    (oura::KIND, oura::adapter),
    (strava::KIND, strava::adapter),
    (withings::KIND, withings::adapter),
];

/// Kinds whose observations arrive by other ways (email links, forms,
/// file imports, pushes) and are never polled.
pub const UNPOLLED: &[&str] = &[
    "self_report",
    ingest::APPLE_HEALTH,
    ingest::HEALTH_AUTO_EXPORT,
    ingest::MAPPED,
];

/// The adapter of a stored source: `None` for a kind that is never polled
/// (or a source no longer configured), an error for a kind no adapter knows.
pub fn adapter_for(
    row: &SourceRow,
    store: &Store,
    config: &Config,
) -> Result<Option<Box<dyn Source>>, SourceError> {
    if UNPOLLED.contains(&row.kind.as_str()) {
        return Ok(None);
    }
    let (_, build) = ADAPTERS
        .iter()
        .find(|(kind, _)| *kind == row.kind)
        .ok_or_else(|| SourceError::UnknownKind {
            source_name: row.name.clone(),
            kind: row.kind.clone(),
        })?;
    build(row, store, config)
}

/// What a pulled source's adapter reads of its participant when it is
/// built: who, their zone, their day rules and each stream's stored unit.
pub struct Owner {
    /// The participant's key.
    pub key: String,
    /// Their zone.
    pub home: jiff::tz::TimeZone,
    /// Their stream rules.
    pub rules: crate::service::streams::StreamRules,
    /// The unit each of their streams is stored in.
    pub stream_units: std::collections::HashMap<String, String>,
}

impl Owner {
    /// The owner of `row`; `None` when the participant is gone.
    pub fn of(
        row: &SourceRow,
        store: &Store,
        config: &Config,
    ) -> Result<Option<Owner>, SourceError> {
        let Some(p) = store.participant(row.participant_id)? else {
            return Ok(None);
        };
        let home = jiff::tz::TimeZone::get(&p.time_zone).map_err(|e| SourceError::Config {
            source_name: row.name.clone(),
            message: format!("zone {}: {e}", p.time_zone),
        })?;
        Ok(Some(Owner {
            rules: config.stream_rules(&p.key),
            stream_units: store.stream_units(row.participant_id)?,
            key: p.key,
            home,
        }))
    }
}

/// The HTTP client of a pulled source: `timeout_seconds` a request, three
/// retries at most a minute apart.
pub fn api_client(
    row: &SourceRow,
    timeout_seconds: u64,
) -> Result<crate::service::http::ApiClient, SourceError> {
    crate::service::http::ApiClient::new(
        std::time::Duration::from_secs(timeout_seconds),
        3,
        std::time::Duration::from_secs(60),
    )
    .map_err(|e| SourceError::Config {
        source_name: row.name.clone(),
        message: e.to_string(),
    })
}

/// Why a poll failed. The cursor is not advanced.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The adapter's stored configuration is unusable.
    #[error("source {source_name}: bad configuration: {message}")]
    Config {
        /// The source.
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// No adapter knows this kind of source.
    #[error("source {source_name}: no adapter for source kind {kind:?}")]
    UnknownKind {
        /// The source.
        source_name: String,
        /// Its stored kind.
        kind: String,
    },
    /// Reading what the adapter needs from the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The remote server failed or refused (after retries where they help).
    #[error("source {source_name}: {message}")]
    Remote {
        /// The source.
        source_name: String,
        /// What happened, with what to do.
        message: String,
    },
    /// The vendor refused the grant: the person must connect the source
    /// again (it is not polled until then).
    #[error("source {source_name} needs re-authorisation: {message}")]
    NeedsReauthorisation {
        /// The source.
        source_name: String,
        /// The vendor's reason.
        message: String,
        /// When the refused grant was stored: a grant stored since (the
        /// person connected again meanwhile) is not marked.
        grant_stored_at: Timestamp,
    },
    /// The API refused the access token (401): it is refreshed before the
    /// next poll.
    #[error(
        "source {source_name}: the access token was refused; it is refreshed before the next poll"
    )]
    TokenRejected {
        /// The source.
        source_name: String,
    },
    /// The stored cursor could not be read.
    #[error("source {source_name}: bad cursor {cursor:?}")]
    Cursor {
        /// The source.
        source_name: String,
        /// The cursor.
        cursor: String,
    },
}

/// What one poll returns.
#[derive(Debug, Clone, Default)]
pub struct Poll {
    /// New (or re-read) observations.
    pub observations: Vec<NewObservation>,
    /// Source record ids the source says were deleted: withdrawn from the
    /// store (kept, left out of analyses) where stored.
    pub withdrawn: Vec<String>,
    /// Where the next poll resumes; `None` keeps the old cursor.
    pub cursor: Option<String>,
    /// Records the source sent that could not be read.
    pub refused: usize,
    /// What to tell about this poll (refusals by reason, skipped states,
    /// an entity whose unit does not fit).
    pub problems: Vec<String>,
}

/// A source's stored cursor (JSON) read as `T`; `T::default()` before the
/// first poll. One that cannot be read stops the poll, naming it.
pub fn read_cursor<T: serde::de::DeserializeOwned + Default>(
    source_name: &str,
    cursor: Option<&str>,
) -> Result<T, SourceError> {
    match cursor {
        None => Ok(T::default()),
        Some(c) => serde_json::from_str(c).map_err(|_| SourceError::Cursor {
            source_name: source_name.to_string(),
            cursor: c.to_string(),
        }),
    }
}

/// A cursor as the store keeps it (JSON).
pub fn write_cursor<T: serde::Serialize>(
    source_name: &str,
    cursor: &T,
) -> Result<String, SourceError> {
    serde_json::to_string(cursor).map_err(|e| SourceError::Config {
        source_name: source_name.to_string(),
        message: e.to_string(),
    })
}

impl Poll {
    /// Puts each value in its stream's stored unit (`stream_units`, from
    /// [`Owner`]); a value whose unit measures something else than its
    /// stream's is refused, and said so: a stream never mixes units.
    pub fn into_stream_units(&mut self, stream_units: &std::collections::HashMap<String, String>) {
        let mut refused: std::collections::BTreeMap<String, usize> = Default::default();
        self.observations.retain_mut(|o| {
            let Some(stored) = stream_units.get(&o.stream) else {
                return true;
            };
            match crate::service::units::Conversion::between(&o.unit, stored) {
                Ok(c) => {
                    o.value = c.apply(o.value);
                    o.unit = stored.clone();
                    true
                }
                Err(e) => {
                    *refused.entry(e.to_string()).or_default() += 1;
                    false
                }
            }
        });
        for (why, n) in refused {
            self.refused += n;
            self.problems.push(format!("{n} × {why}"));
        }
    }
}

/// A data source adapter.
pub trait Source: Send + Sync {
    /// The source's name (unique per participant).
    fn name(&self) -> &str;
    /// Reads what is new since `cursor`, as of `now`.
    fn poll(&self, cursor: Option<&str>, now: Timestamp) -> Result<Poll, SourceError>;
    /// Renews the source's credentials where they are about to expire,
    /// before a poll: the new grant, which the caller stores at once (a
    /// refresh token may be good only once) unless the person connected
    /// again meanwhile. Most sources have none.
    fn authorise(&self, _now: Timestamp) -> Result<Option<granted::Renewal>, SourceError> {
        Ok(None)
    }
    /// Whether a poll is due at `now` (a vendor's daily request limit may
    /// ask for fewer polls than the job makes); a poll not due leaves no run.
    fn due(&self, _cursor: Option<&str>, _now: Timestamp) -> bool {
        true
    }
}

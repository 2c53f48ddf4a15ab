//! The store: the one module that owns SQL.
//!
//! One SQLite file in WAL mode. Migrations are the numbered files in
//! `migrations/`, applied at start-up by `rusqlite_migration`. A database
//! written by a newer nof1d, a file that is not a database, or a database
//! that is not nof1d's is refused before anything is written to it.
//!
//! [`Store`] is synchronous. The async daemon reaches it through [`Db`],
//! which runs every call on tokio's blocking pool: one writer connection and
//! one reader connection (WAL lets the reader see the last commit while a
//! write is in progress), so the runtime's worker threads never wait on SQLite.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use crate::engine::fit::FitReport;
use crate::service::config::Secret;
use crate::trial::decide::{Action, Boundary, Decision, LockedThresholds, ThresholdSource};
use crate::trial::lifecycle::{DatedDay, TrialStatus};
use crate::trial::protocol::{Protocol, ProtocolError, ProtocolHash};
use crate::trial::simulate::suite::SuiteReport;
use jiff::Timestamp;
use jiff::civil::Date;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};
use rusqlite_migration::{M, Migrations};
use serde::Serialize;

/// The migration files, in order. Append new files; never edit a released one.
const MIGRATION_FILES: [&str; 17] = [
    include_str!("../../migrations/0001_initial.sql"),
    include_str!("../../migrations/0002_trial_lifecycle.sql"),
    include_str!("../../migrations/0003_dashboard.sql"),
    include_str!("../../migrations/0004_calibration.sql"),
    include_str!("../../migrations/0005_access.sql"),
    include_str!("../../migrations/0006_sources.sql"),
    include_str!("../../migrations/0007_hypotheses.sql"),
    include_str!("../../migrations/0008_oauth.sql"),
    include_str!("../../migrations/0009_futility.sql"),
    include_str!("../../migrations/0010_withdrawn.sql"),
    include_str!("../../migrations/0011_corrections.sql"),
    include_str!("../../migrations/0012_push.sql"),
    include_str!("../../migrations/0013_design_failures_arm_drops.sql"),
    include_str!("../../migrations/0014_calibration_refinements.sql"),
    include_str!("../../migrations/0015_kept_trials.sql"),
    include_str!("../../migrations/0016_observations_by_date.sql"),
    include_str!("../../migrations/0017_withheld.sql"),
];

/// The migrations, in order.
static MIGRATIONS: LazyLock<Migrations<'static>> =
    LazyLock::new(|| Migrations::new(MIGRATION_FILES.iter().map(|sql| M::up(sql)).collect()));

/// Number of migrations this build knows: the newest schema version it can use.
pub fn schema_version() -> i64 {
    MIGRATION_FILES.len() as i64
}

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened at all.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// SQLite's reason.
        source: rusqlite::Error,
    },
    /// The file exists but is not a readable SQLite database.
    #[error("{path} is not a readable SQLite database ({detail}); it was left untouched")]
    NotADatabase {
        /// The file.
        path: PathBuf,
        /// SQLite's reason.
        detail: String,
    },
    /// A SQLite database, but not one of nof1d's.
    #[error(
        "{path} is a SQLite database but not a nof1d one (it has tables and no nof1d schema version); it was left untouched"
    )]
    Foreign {
        /// The file.
        path: PathBuf,
    },
    /// Written by a newer nof1d.
    #[error(
        "{path} has schema version {found}, but this nof1d only knows versions up to {supported}: it was written by a newer nof1d. Upgrade nof1d or restore a backup; the database was left untouched"
    )]
    TooNew {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// Ours.
        supported: i64,
    },
    /// Applying a migration failed (the migration's transaction rolled back).
    #[error("migrating {path}: {source}")]
    Migration {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rusqlite_migration::Error,
    },
    /// The database file is missing or empty but the folder shows an
    /// earlier database: creating a new one there could overwrite its data.
    #[error(
        "refusing to create a new, empty database at {path}: the folder still holds an earlier one's files ({signs}). If {path} was deleted or truncated, its data may still be in them: stop here, copy the whole folder somewhere safe, then restore {path} from a backup (`nof1d backup` makes one) or from that copy. To really start over, move those files away first"
    )]
    WouldStartOver {
        /// The database file.
        path: PathBuf,
        /// What was found, e.g. `nof1d.sqlite-wal (412 kB)`.
        signs: String,
    },
    /// A file-system step around the database (creating it, its mode).
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An encrypted database opened without its key, or with a wrong one,
    /// or a key given for a plain database.
    #[error("{path}: {detail}; it was left untouched")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        detail: String,
    },
    /// Any other SQLite error.
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A stored value could not be read back.
    #[error("database holds an invalid value: {0}")]
    Invalid(String),
    /// A caller handed the store something it refuses to write.
    #[error("refused: {0}")]
    Refused(String),
    /// The blocking task running a store call panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(String),
}

/// Result alias for store calls.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Formats an instant the way the store keeps it: UTC, whole seconds, so that
/// text order is time order.
pub fn ts(t: Timestamp) -> String {
    // Written out by hand: this runs for every stored observation, and a
    // strftime call parses its format each time.
    let d = jiff::tz::Offset::UTC.to_datetime(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        d.year(),
        d.month(),
        d.day(),
        d.hour(),
        d.minute(),
        d.second()
    )
}

fn parse_ts(s: &str) -> Result<Timestamp> {
    s.parse()
        .map_err(|e| StoreError::Invalid(format!("timestamp {s:?}: {e}")))
}

fn parse_date(s: &str) -> Result<Date> {
    s.parse()
        .map_err(|e| StoreError::Invalid(format!("date {s:?}: {e}")))
}

/// A synchronous handle on the database.
pub struct Store {
    conn: Connection,
    /// The passphrase it was opened with (encrypted databases), for backups.
    key: Option<Secret>,
}

/// A participant as stored.
#[derive(Debug, Clone, Serialize)]
pub struct ParticipantRow {
    /// Row id.
    pub id: i64,
    /// Stable key from the config.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Email address.
    pub email: String,
    /// IANA zone name.
    pub time_zone: String,
    /// `HH:MM` local.
    pub assignment_time: String,
    /// The simulated demo participant.
    pub is_demo: bool,
}

/// A data source as stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SourceRow {
    /// Row id.
    pub id: i64,
    /// Owner.
    pub participant_id: i64,
    /// Name, unique per participant.
    pub name: String,
    /// Adapter kind.
    pub kind: String,
    /// Adapter configuration (JSON).
    pub config_json: String,
    /// Where the next poll resumes.
    pub cursor: Option<String>,
    /// Last successful poll.
    pub last_success_at: Option<String>,
    /// Last error message.
    pub last_error: Option<String>,
    /// When it happened.
    pub last_error_at: Option<String>,
    /// When it was added.
    pub created_at: String,
}

/// An OAuth2 source's grant as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct GrantRow {
    /// The source.
    pub source_id: i64,
    /// The tokens.
    pub grant: crate::service::oauth::Grant,
    /// `connected` or `needs_reauthorisation`.
    pub status: String,
    /// Why it needs re-authorisation.
    pub status_reason: String,
    /// When the tokens were last written.
    pub updated_at: Timestamp,
}

impl GrantRow {
    /// Whether the grant still works.
    pub fn is_connected(&self) -> bool {
        self.status == "connected"
    }
}

/// An observation to be recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct NewObservation {
    /// Stream key (created in the catalog if new).
    pub stream: String,
    /// Unit as stored (normalised by the adapter).
    pub unit: String,
    /// The source's own id for the record: re-reading it never duplicates.
    pub source_record_id: String,
    /// When it was observed (an interval sample: when it began).
    pub observed_at: Timestamp,
    /// The participant's civil date of the observation (its day rule applied).
    pub local_date: Date,
    /// The value.
    pub value: f64,
    /// End of an interval sample (a sleep stage, a workout).
    pub ended_at: Option<Timestamp>,
    /// The UTC offset where it was observed, when the source said.
    pub utc_offset: Option<jiff::tz::Offset>,
    /// The device or app inside the source ("Apple Watch"); empty if one.
    pub origin: String,
}

impl NewObservation {
    /// A point observation with no interval, offset or origin.
    pub fn point(
        stream: &str,
        unit: &str,
        source_record_id: String,
        observed_at: Timestamp,
        local_date: Date,
        value: f64,
    ) -> Self {
        Self {
            stream: stream.to_string(),
            unit: unit.to_string(),
            source_record_id,
            observed_at,
            local_date,
            value,
            ended_at: None,
            utc_offset: None,
            origin: String::new(),
        }
    }
}

/// What writing a batch of observations did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Upserted {
    /// New rows.
    pub stored: usize,
    /// Records already stored whose value (or time) changed: updated in place.
    pub updated: usize,
    /// Records already stored as they are.
    pub unchanged: usize,
    /// Stored records the source said were deleted: withdrawn (kept, left
    /// out of analyses).
    pub withdrawn: usize,
}

impl Upserted {
    /// Adds another batch's counts.
    pub fn add(&mut self, other: Upserted) {
        self.stored += other.stored;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.withdrawn += other.withdrawn;
    }
}

/// The run log summed by way (`poll`, `push`, `import`).
#[derive(Debug, Clone, Serialize)]
pub struct RunTotals {
    /// How the records came.
    pub way: String,
    /// Runs logged.
    pub runs: i64,
    /// Rows stored.
    pub stored: i64,
    /// Rows updated.
    pub updated: i64,
    /// Records already present.
    pub unchanged: i64,
    /// Records refused.
    pub refused: i64,
    /// Runs that failed.
    pub failed: i64,
}

/// One stream of the catalog as stored: its per-origin daily totals.
#[derive(Debug, Clone)]
pub struct StreamDays {
    /// The stream's key.
    pub key: String,
    /// Its unit.
    pub unit: String,
    /// The sources it came through.
    pub sources: Vec<String>,
    /// Per-origin daily totals.
    pub days: Vec<crate::service::streams::OriginDay>,
}

/// How many run-log rows a source keeps.
pub const RUNS_KEPT: i64 = 1000;

/// How observations reached the store, for the run log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunWay {
    /// A scheduled poll.
    Poll,
    /// A payload pushed over HTTP.
    Push,
    /// A file import.
    Import,
}

impl RunWay {
    fn as_str(self) -> &'static str {
        match self {
            RunWay::Poll => "poll",
            RunWay::Push => "push",
            RunWay::Import => "import",
        }
    }
}

/// One poll, push or import as logged.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SourceRunRow {
    /// Row id.
    pub id: i64,
    /// The source.
    pub source_id: i64,
    /// `poll`, `push` or `import`.
    pub way: String,
    /// The file name or payload size.
    pub what: String,
    /// When it began.
    pub started_at: String,
    /// When it ended (`None`: still running, or killed).
    pub finished_at: Option<String>,
    /// New rows.
    pub stored: i64,
    /// Updated rows.
    pub updated: i64,
    /// Records already present.
    pub unchanged: i64,
    /// Stored records withdrawn (deleted at the source).
    pub withdrawn: i64,
    /// Records refused.
    pub refused: i64,
    /// The first problems, one a line.
    pub problems: String,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// A trial as stored.
#[derive(Debug, Clone, Serialize)]
pub struct TrialRow {
    /// Row id.
    pub id: i64,
    /// Owner.
    pub participant_id: i64,
    /// The protocol's id.
    pub protocol_id: String,
    /// The locked protocol text.
    pub protocol_toml: String,
    /// SHA-256 of the text.
    pub protocol_hash: ProtocolHash,
    /// The randomisation seed.
    pub seed: u64,
    /// Life-cycle status.
    pub status: TrialStatus,
    /// Local date of day 0.
    pub start_date: Option<Date>,
    /// Why it stopped.
    pub stop_reason: Option<String>,
    /// The thresholds locked at the start, or refined before the first
    /// decisive look (none before the start, and for trials started before
    /// calibration existed).
    pub locked: Option<LockedThresholds>,
    /// When `locked` became its design's refined calibration
    /// ([`Store::refine_thresholds`]; at the start where the refinement
    /// was done by then), if it did.
    pub thresholds_refined_at: Option<String>,
}

impl TrialRow {
    /// The locked protocol as this trial runs it, blinded codes drawn from
    /// its seed (`Protocol::with_trial_codes`): the one way a stored trial's
    /// protocol is read wherever arms are shown, so that every message and
    /// page shows the same key (the designs job simulates the text as is).
    pub fn protocol(&self) -> Result<Protocol, ProtocolError> {
        Protocol::parse(&self.protocol_toml, &format!("trial {}", self.id))
            .map(|p| p.with_trial_codes(self.seed))
    }
}

/// A trial to propose: the locked protocol and its seed.
#[derive(Debug, Clone, Copy)]
pub struct Proposal<'a> {
    /// Owner.
    pub participant_id: i64,
    /// Protocol id.
    pub protocol_id: &'a str,
    /// Locked protocol text.
    pub protocol_toml: &'a str,
    /// Its hash.
    pub protocol_hash: &'a str,
    /// Randomisation seed.
    pub seed: u64,
}

/// One exchange with a proposer, for the audit log (`llm_exchanges`).
#[derive(Debug, Clone)]
pub struct NewExchange {
    /// `ask`, `propose` or `conclude`.
    pub purpose: &'static str,
    /// `llm:<model>` or `library`.
    pub proposer: String,
    /// 1, 2, … within one question.
    pub attempt: u32,
    /// The person's question (empty for scheduled proposals).
    pub question: String,
    /// What was sent, verbatim.
    pub request_json: String,
    /// The HTTP status, when an answer came.
    pub http_status: Option<u16>,
    /// What came back, verbatim.
    pub response_body: String,
    /// `ok`, `retry`, `repair` or `failed`.
    pub outcome: &'static str,
    /// Why answers were refused, one a line.
    pub problems: String,
    /// When the request went out.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Timestamp,
}

/// One hypothesis to record, with the proposal it became (if tested).
#[derive(Debug, Clone)]
pub struct NewHypothesis {
    /// `llm:<model>` or `library`.
    pub proposer: String,
    /// The validated hypothesis as JSON.
    pub payload_json: String,
    /// Its `sigma`.
    pub sigma: f64,
    /// `test` or `recommend`.
    pub verdict: &'static str,
    /// The threshold it was compared with.
    pub tau: f64,
    /// The question it answers (empty for scheduled proposals).
    pub question: String,
    /// What the checks noted (prior widened, stream to be created).
    pub notes: String,
    /// The protocol text to propose, when `verdict` is `test`.
    pub protocol: Option<(String, String, String, u64)>,
}

/// A hypothesis as stored, with the trial it became.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HypothesisRow {
    /// Row id.
    pub id: i64,
    /// Owner.
    pub participant_id: i64,
    /// `llm:<model>` or `library`.
    pub proposer: String,
    /// The validated hypothesis as JSON.
    pub payload_json: String,
    /// Its `sigma`.
    pub sigma: Option<f64>,
    /// `test`, `recommend` (absent for rows from before verdicts).
    pub verdict: Option<String>,
    /// The threshold.
    pub tau: Option<f64>,
    /// The question.
    pub question: String,
    /// Notes from the checks.
    pub notes: String,
    /// The exchange whose answer it came from.
    pub exchange_id: Option<i64>,
    /// The proposed trial, and its status now.
    pub trial: Option<(i64, String)>,
    /// When it was recorded.
    pub created_at: String,
}

/// One exchange as stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExchangeRow {
    /// Row id.
    pub id: i64,
    /// `ask`, `propose` or `conclude`.
    pub purpose: String,
    /// `llm:<model>` or `library`.
    pub proposer: String,
    /// Attempt within the question.
    pub attempt: i64,
    /// The question.
    pub question: String,
    /// What was sent.
    pub request_json: String,
    /// HTTP status, when an answer came.
    pub http_status: Option<i64>,
    /// What came back.
    pub response_body: String,
    /// `ok`, `retry`, `repair` or `failed`.
    pub outcome: String,
    /// Why answers were refused.
    pub problems: String,
    /// When it went out.
    pub started_at: String,
    /// When it ended.
    pub finished_at: String,
}

/// A stopped trial's conclusion as stored.
#[derive(Debug, Clone, Serialize)]
pub struct ConclusionRow {
    /// The text shown.
    pub text: String,
    /// `template` or `llm:<model>`.
    pub written_by: String,
    /// Why the LLM's text was not used, if it was not.
    pub refused: Option<String>,
    /// When it was written.
    pub created_at: String,
}

/// The largest answer body kept in the audit log.
const EXCHANGE_BODY_CHARS: usize = 200_000;

/// A new protocol for a trial that is still a proposal.
#[derive(Debug, Clone)]
pub struct ProposalEdit<'a> {
    /// The trial.
    pub trial_id: i64,
    /// The edited protocol text (validated by the caller).
    pub protocol_toml: &'a str,
    /// Its SHA-256.
    pub protocol_hash: &'a str,
    /// The SHA-256 of the text it was edited from: refused if the stored
    /// protocol is another (edited since), so an edit never undoes another.
    pub edited_from: &'a str,
    /// What changed, in words.
    pub summary: &'a str,
    /// Who edited it.
    pub actor: &'a str,
}

/// A design's simulated error rates, computed once per protocol text.
#[derive(Debug, Clone, Serialize)]
pub struct DesignSimulationRow {
    /// SHA-256 of the protocol text simulated.
    pub protocol_hash: String,
    /// Virtual trials per condition.
    pub trials: i64,
    /// The `SimulationReport` as JSON.
    pub report_json: String,
    /// Wall time of the simulation.
    pub wall_ms: f64,
    /// When it finished.
    pub created_at: String,
}

/// A design's calibration on the stress suite, stored once per protocol text.
#[derive(Debug, Clone)]
pub struct CalibrationRow {
    /// SHA-256 of the protocol text calibrated.
    pub protocol_hash: String,
    /// The false-stop target held in every scenario.
    pub target: f64,
    /// The calibrated efficacy threshold (the last block's).
    pub efficacy: f64,
    /// How it moves over the looks.
    pub boundary: Boundary,
    /// The calibrated futility threshold (`None`: calibrated before
    /// futility was; the protocol's applies).
    pub futility: Option<f64>,
    /// The calibrated arm-drop threshold (`None`: two arms, or calibrated
    /// before arm drops were; the protocol's applies).
    pub drop_arm: Option<f64>,
    /// The scenario that set the efficacy threshold.
    pub binding: String,
    /// The `SuiteReport` as JSON.
    pub report_json: String,
    /// Wall time of the calibration.
    pub wall_ms: f64,
    /// When it finished.
    pub created_at: String,
}

impl CalibrationRow {
    /// The stored suite report.
    pub fn report(&self) -> Result<SuiteReport> {
        serde_json::from_str(&self.report_json).map_err(|e| {
            StoreError::Invalid(format!(
                "calibration of {}: {e}",
                &self.protocol_hash[..12.min(self.protocol_hash.len())]
            ))
        })
    }

    /// The thresholds a trial of this design locks at its start.
    pub fn locked(&self) -> LockedThresholds {
        LockedThresholds {
            efficacy: self.efficacy,
            source: ThresholdSource::Calibrated,
            boundary: self.boundary,
            futility: self.futility,
            drop_arm: self.drop_arm,
        }
    }
}

/// How delivery stands (`Store::delivery_health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct DeliveryHealth {
    /// Emails and pushes whose last two attempts or more failed and that
    /// wait for a retry.
    pub retrying: i64,
    /// Emails and pushes given up on after being tried (not those whose day
    /// passed untried), among those queued in the last 48 hours.
    pub failed_recently: i64,
}

/// A `calibrations`-shaped row (its first ten columns in `calibration()`'s
/// order), with the boundary still as stored.
fn calibration_of_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(CalibrationRow, String)> {
    Ok((
        CalibrationRow {
            protocol_hash: r.get(0)?,
            target: r.get(1)?,
            efficacy: r.get(2)?,
            boundary: Boundary::Constant,
            futility: r.get(8)?,
            drop_arm: r.get(9)?,
            binding: r.get(4)?,
            report_json: r.get(5)?,
            wall_ms: r.get(6)?,
            created_at: r.get(7)?,
        },
        r.get::<_, String>(3)?,
    ))
}

/// The row with its stored boundary parsed.
fn checked_calibration((row, boundary): (CalibrationRow, String)) -> Result<CalibrationRow> {
    Boundary::parse(&boundary)
        .map(|boundary| CalibrationRow { boundary, ..row })
        .ok_or_else(|| StoreError::Invalid(format!("calibration boundary {boundary:?}")))
}

/// The thresholds a trial locks at its start, and whether they are its
/// design's refined calibration ([`Store::put_refinement`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Locking {
    /// The thresholds.
    pub thresholds: LockedThresholds,
    /// They come from the refined calibration.
    pub refined: bool,
}

/// A design's calibration refined on more null trials
/// (`calibration_refinements`).
#[derive(Debug, Clone)]
pub struct Refinement {
    /// The most null trials a scenario got.
    pub null_trials: usize,
    /// The refined calibration, as a first calibration is stored.
    pub calibration: CalibrationRow,
}

/// What [`Store::refine_thresholds`] did to a trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refined {
    /// The trial decides with the refined thresholds from now on.
    Locked,
    /// Left as it was, and why.
    Kept(KeptBecause),
}

/// Why a trial kept its thresholds when its design's refinement landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeptBecause {
    /// It already holds them.
    AlreadyRefined,
    /// It is not running (a trial not started yet locks the refinement at
    /// its start; one that ended keeps what it decided with).
    NotRunning,
    /// It did not lock its design's first calibration (calibration was off,
    /// or failed, when it started).
    NotCalibrated,
    /// A look that could stop it has been taken: its rule stays the one
    /// that look used.
    DecisiveLookTaken,
    /// Its first decisive day has come (or it has none): a look that could
    /// stop it may be under way.
    DecisiveDayCome,
}

/// Until when a running trial may take its design's refinement
/// ([`Store::refine_thresholds`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// Its design's `min_blocks`: a look at that many blocks may stop it.
    pub min_blocks: u32,
    /// Its first decisive day, fixed from the schedule it started with
    /// ([`crate::trial::lifecycle::first_decisive_day`]); `None`: never.
    pub refine_by: Option<Date>,
    /// Its participant's date now.
    pub today: Date,
}

/// The background work the designs job does for a design.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DesignWork {
    /// Calibrating its thresholds on the stress suite (before a trial starts).
    Calibration,
    /// Simulating its error rates and power (for the proposals page).
    Simulation,
    /// Calibrating it again on more null trials, in the background, once
    /// its trial is approved ([`Store::put_refinement`]).
    Refinement,
}

/// The name of `work` in `kept_trials`: a calibration's or a
/// refinement's (a simulation keeps none).
fn kept_work(work: DesignWork) -> Result<&'static str> {
    match work {
        DesignWork::Calibration | DesignWork::Refinement => Ok(work.as_str()),
        DesignWork::Simulation => Err(StoreError::Invalid(
            "a design simulation keeps no virtual trials".into(),
        )),
    }
}

impl DesignWork {
    /// The name stored in the database and used in paths and audit actions.
    pub fn as_str(self) -> &'static str {
        match self {
            DesignWork::Calibration => "calibration",
            DesignWork::Simulation => "simulation",
            DesignWork::Refinement => "refinement",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<DesignWork> {
        match s {
            "calibration" => Some(DesignWork::Calibration),
            "simulation" => Some(DesignWork::Simulation),
            "refinement" => Some(DesignWork::Refinement),
            _ => None,
        }
    }
}

/// A design whose calibration or simulation failed.
#[derive(Debug, Clone, PartialEq)]
pub struct DesignFailure {
    /// The last attempt's error.
    pub error: String,
    /// Attempts so far.
    pub attempts: u32,
    /// When the last one failed.
    pub last_at: String,
}

impl DesignFailure {
    /// How often a design's calibration or simulation is tried before the
    /// designs job gives up on it (a failure is mostly the protocol's and
    /// repeats; a few tries cover the rest). An approved trial of a design
    /// whose calibration was given up on starts on its protocol's stated
    /// thresholds and says why.
    pub const ATTEMPTS: u32 = 3;

    /// Whether the designs job has given up on this design.
    pub fn given_up(&self) -> bool {
        self.attempts >= Self::ATTEMPTS
    }
}

/// A verified one-click link to apply.
#[derive(Debug, Clone)]
pub struct LinkUse<'a> {
    /// SHA-256 of the token.
    pub fingerprint: &'a str,
    /// Participant the token was issued to.
    pub participant_id: i64,
    /// Trial.
    pub trial_id: i64,
    /// Trial day.
    pub date: Date,
    /// The token's action code.
    pub action: &'a str,
    /// What to record.
    pub what: LinkWhat<'a>,
    /// A side-effect link with "stop the trial now" ticked: the participant's
    /// local date today. The stop is part of the link's one transaction, so
    /// a used link never stops anything and a failed stop leaves the link
    /// unused, to press again.
    pub stop_today: Option<Date>,
}

/// What a link records.
#[derive(Debug, Clone)]
pub enum LinkWhat<'a> {
    /// An adherence status: `done`, `not_done` or `side_effect`.
    Adherence(&'a str),
    /// A self-report rating.
    Rating {
        /// Outcome stream.
        stream: &'a str,
        /// Its unit.
        unit: &'a str,
        /// The value.
        value: f64,
        /// When it counts as observed.
        observed_at: Timestamp,
        /// The participant's self-report source.
        source_id: i64,
    },
}

/// What applying a link did.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkOutcome {
    /// Recorded, in words.
    Recorded(String),
    /// This very token was used before: nothing changed.
    AlreadyUsed {
        /// What it recorded then.
        outcome: String,
        /// When.
        at: String,
    },
    /// The day already has a rating: nothing changed.
    AlreadyRated {
        /// The rating that stands.
        value: f64,
    },
}

/// A correction of one day's self-report rating.
#[derive(Debug, Clone)]
pub struct RatingCorrection<'a> {
    /// The participant correcting it.
    pub participant_id: i64,
    /// The trial.
    pub trial_id: i64,
    /// The day rated.
    pub date: Date,
    /// The outcome stream.
    pub stream: &'a str,
    /// The participant's self-report source.
    pub source_id: i64,
    /// The corrected value.
    pub value: f64,
    /// Why, in the person's words (may be empty).
    pub reason: &'a str,
    /// Who (`participant`, `investigator`).
    pub actor: &'a str,
}

/// A stored rating correction.
#[derive(Debug, Clone, Serialize)]
pub struct RatingCorrectionRow {
    /// The day rated.
    pub date: Date,
    /// The value it replaced.
    pub old_value: f64,
    /// The value now stored.
    pub new_value: f64,
    /// Why.
    pub reason: String,
    /// Who.
    pub actor: String,
    /// When (RFC 3339).
    pub corrected_at: String,
}

/// A decision to store, with what it changes (applied in the same transaction).
#[derive(Debug, Clone)]
pub struct NewDecision {
    /// The trial.
    pub trial_id: i64,
    /// The fit it came from.
    pub fit_id: Option<i64>,
    /// The look's period (None outside the schedule, e.g. a safety stop).
    pub period: Option<u32>,
    /// The rule that fired, in words.
    pub rule: String,
    /// The action's machine name.
    pub action: String,
    /// The numbers behind it (JSON).
    pub numbers_json: String,
    /// Stop the trial with this reason.
    pub stop: Option<String>,
    /// Replace the schedule from this day on with these rows.
    pub reschedule: Option<(u32, Vec<DatedDay>)>,
    /// Messages that tell the participant (queued with the decision).
    pub messages: Vec<NewMessage>,
    /// The trial's `thresholds_refined_at` when the thresholds the look
    /// used were read: a refinement locked since makes the look be taken
    /// again, under the thresholds now in force.
    pub thresholds_refined_at: Option<String>,
}

/// A stored decision.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DecisionRow {
    /// Row id.
    pub id: i64,
    /// The trial.
    pub trial_id: i64,
    /// The fit it came from.
    pub fit_id: Option<i64>,
    /// The look's period.
    pub period: Option<u32>,
    /// The rule that fired.
    pub rule: String,
    /// The action.
    pub action: String,
    /// The numbers behind it (JSON).
    pub numbers_json: String,
    /// When.
    pub created_at: String,
}

/// One life-cycle change.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TrialEventRow {
    /// From (None at creation).
    pub from_status: Option<String>,
    /// To.
    pub to_status: String,
    /// Who or what caused it.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// The participant's local date.
    pub local_date: Option<String>,
    /// When.
    pub at: String,
}

/// A fit to store.
#[derive(Debug, Clone)]
pub struct NewFit {
    /// The trial.
    pub trial_id: i64,
    /// The outcome stream.
    pub stream_key: String,
    /// Last local date of data used.
    pub data_through: Date,
    /// Observations used.
    pub observations: usize,
    /// Engine and method, e.g. `gaussian/grid`.
    pub engine: String,
    /// Seed.
    pub seed: u64,
    /// The scale `S` used.
    pub scale: f64,
    /// Every prior used (JSON).
    pub priors_json: String,
    /// The whole fit report (JSON).
    pub result_json: String,
    /// The fit's verdict.
    pub converged: bool,
    /// Wall time.
    pub wall_ms: f64,
    /// What it saw (`trial::series::TrialSeries::digest`).
    pub data_digest: String,
}

/// A stored fit.
#[derive(Debug, Clone, Serialize)]
pub struct FitRow {
    /// Row id.
    pub id: i64,
    /// The trial.
    pub trial_id: i64,
    /// Outcome stream.
    pub stream_key: String,
    /// Last local date of data used.
    pub data_through: Date,
    /// Observations used.
    pub observations: i64,
    /// The fit report (JSON; [`FitRow::report`] decodes it).
    pub result_json: String,
    /// Verdict.
    pub converged: bool,
    /// Wall time.
    pub wall_ms: f64,
    /// When.
    pub created_at: String,
    /// What it saw (`None` for fits stored before digests were kept).
    pub data_digest: Option<String>,
}

impl FitRow {
    /// The stored fit report. Every reader decodes it here.
    pub fn report(&self) -> Result<FitReport> {
        serde_json::from_str(&self.result_json)
            .map_err(|e| StoreError::Invalid(format!("fit {} report: {e}", self.id)))
    }
}

impl DecisionRow {
    /// The stored decision with its look and numbers; `None` for a
    /// decision that was no look (a safety stop on an adverse event).
    pub fn decision(&self) -> Option<Decision> {
        serde_json::from_str(&self.numbers_json).ok()
    }
}

/// A message to put in the outbox.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Unique key (participant, trial, day, kind).
    pub key: String,
    /// Recipient participant.
    pub participant_id: i64,
    /// The trial it is about, if any.
    pub trial_id: Option<i64>,
    /// Message kind (`assignment`, ...).
    pub kind: String,
    /// Local day it is for.
    pub local_date: Option<Date>,
    /// Address.
    pub recipient: String,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body_text: String,
    /// HTML body.
    pub body_html: String,
    /// Message-ID derived from the key.
    pub message_id: String,
}

/// A push due on one channel, with what its message says.
#[derive(Debug, Clone)]
pub struct PushDue {
    /// The push's row id.
    pub id: i64,
    /// The channel's key (`PushConfig::channel`).
    pub channel: String,
    /// Attempts so far.
    pub attempts: i64,
    /// The participant the message is for.
    pub participant_id: i64,
    /// The message's kind (`assignment`, `reminder`, …).
    pub kind: String,
    /// The participant's day it is about, where it has one.
    pub local_date: Option<String>,
    /// The message's subject (the notification's title).
    pub subject: String,
    /// Its plain text.
    pub body_text: String,
}

/// A push as stored: which message, where, and how it went.
#[derive(Debug, Clone)]
pub struct PushRow {
    /// The message's outbox key.
    pub message_key: String,
    /// The channel's key.
    pub channel: String,
    /// `pending`, `sending`, `sent` or `failed`.
    pub status: String,
    /// Attempts so far.
    pub attempts: i64,
    /// The last error.
    pub last_error: Option<String>,
}

/// Whether an attempt at an email or a push started
/// ([`Store::mark_attempt`], [`Store::begin_push`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Recorded: deliver it now.
    Started,
    /// Not delivered, and marked failed and withheld: why (its trial is no
    /// longer running).
    Withheld(String),
}

/// What happened to a push after its attempt began ([`Store::record_push`]).
#[derive(Debug, Clone, Copy)]
pub enum PushStep<'a> {
    /// Delivered.
    Sent {
        /// When.
        at: Timestamp,
    },
    /// A temporary failure, the channel's: due again at `retry_at`, and
    /// the channel's other pending pushes not before then.
    Retry {
        /// What happened.
        error: &'a str,
        /// When it is tried again.
        retry_at: Timestamp,
    },
    /// A permanent failure: not tried again.
    Failed {
        /// What happened.
        error: &'a str,
    },
}

/// A message in the outbox.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxRow {
    /// Row id.
    pub id: i64,
    /// Unique key.
    pub key: String,
    /// Kind.
    pub kind: String,
    /// Address.
    pub recipient: String,
    /// Subject.
    pub subject: String,
    /// Plain text.
    pub body_text: String,
    /// HTML.
    pub body_html: String,
    /// Message-ID.
    pub message_id: String,
    /// `pending`, `sending`, `sent` or `failed`.
    pub status: String,
    /// Delivery attempts so far.
    pub attempts: i64,
    /// When it was queued.
    pub created_at: String,
    /// Where it went.
    pub delivered_to: Option<String>,
    /// Last error.
    pub last_error: Option<String>,
    /// The recipient participant.
    pub participant_id: i64,
    /// The participant's day the message is about (assignments).
    pub local_date: Option<String>,
}

/// Row counts, for health, status and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Counts {
    /// Participants.
    pub participants: i64,
    /// Observations.
    pub observations: i64,
    /// Trials.
    pub trials: i64,
    /// Schedule days.
    pub schedule_days: i64,
    /// Daily runs.
    pub daily_runs: i64,
    /// Outbox messages.
    pub outbox: i64,
    /// Outbox messages not yet sent.
    pub outbox_pending: i64,
    /// Stored fits.
    pub fits: i64,
    /// Audit entries.
    pub audit: i64,
}

impl Store {
    /// Opens (creating if missing) and migrates the database at `path`.
    ///
    /// A new database is created (0600) only where its folder shows no
    /// earlier one ([`StoreError::WouldStartOver`]); an existing file that
    /// others may read is narrowed to 0600.
    pub fn open(path: &Path) -> Result<Store> {
        Store::open_keyed(path, None)
    }

    /// [`Store::open`] for a database encrypted with `key` (SQLCipher); a
    /// new database is created encrypted.
    pub fn open_keyed(path: &Path, key: Option<&Secret>) -> Result<Store> {
        let file_error = |source| StoreError::File {
            path: path.into(),
            source,
        };
        let size = match std::fs::metadata(path) {
            Ok(m) => Some(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(file_error(e)),
        };
        if size.unwrap_or(0) == 0 {
            let signs = earlier_database_signs(path);
            if !signs.is_empty() {
                return Err(StoreError::WouldStartOver {
                    path: path.into(),
                    signs: signs.join(", "),
                });
            }
        }
        if size.is_none() {
            crate::service::private::create_new(path).map_err(file_error)?;
        } else {
            crate::service::private::narrow_file(path).map_err(file_error)?;
        }
        for suffix in ["-wal", "-shm"] {
            crate::service::private::narrow_file(&sibling(path, suffix)).map_err(file_error)?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn =
            Connection::open_with_flags(path, flags).map_err(|source| StoreError::Open {
                path: path.into(),
                source,
            })?;
        apply_key(&conn, path, key)?;
        check_identity(&conn, path, key.is_some())?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Refused(format!(
                "{} could not be put in WAL mode (got {mode})",
                path.display()
            )));
        }
        // FULL: a committed row survives power loss, not only a crash.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // 32 MiB of page cache (the default is 2 MiB): a large import
        // updates the observation indexes without going back to disk.
        conn.pragma_update(None, "cache_size", -32768)?;
        // Statement journals (each upsert keeps one) in memory, not a temp file.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        MIGRATIONS
            .to_latest(&mut conn)
            .map_err(|source| StoreError::Migration {
                path: path.into(),
                source,
            })?;
        Ok(Store {
            conn,
            key: key.cloned(),
        })
    }

    /// Opens an existing database read-only (readers, backups, tests).
    pub fn open_read_only(path: &Path) -> Result<Store> {
        Store::open_read_only_keyed(path, None)
    }

    /// [`Store::open_read_only`] for a database encrypted with `key`.
    pub fn open_read_only_keyed(path: &Path, key: Option<&Secret>) -> Result<Store> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|source| StoreError::Open {
            path: path.into(),
            source,
        })?;
        apply_key(&conn, path, key)?;
        check_identity(&conn, path, key.is_some())?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(Store {
            conn,
            key: key.cloned(),
        })
    }

    /// Writes a consistent copy to `dest` with SQLite's online backup API,
    /// safe while the daemon writes.
    /// The copy is created 0600 and never replaces an existing file.
    pub fn backup_to(&self, dest: &Path) -> Result<()> {
        crate::service::private::create_new(dest).map_err(|source| StoreError::File {
            path: dest.into(),
            source,
        })?;
        let mut out = Connection::open(dest)?;
        // An encrypted database's backup is encrypted with the same key.
        apply_key(&out, dest, self.key.as_ref())?;
        let backup = rusqlite::backup::Backup::new(&self.conn, &mut out)?;
        backup.run_to_completion(256, std::time::Duration::from_millis(5), None)?;
        drop(backup);
        let ok: String = out.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if ok != "ok" {
            return Err(StoreError::Invalid(format!("backup integrity check: {ok}")));
        }
        Ok(())
    }

    /// Copies the write-ahead log into the database file and empties it
    /// (`PRAGMA wal_checkpoint(TRUNCATE)`), as at a clean stop.
    pub fn checkpoint(&mut self) -> Result<()> {
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy != 0 {
            return Err(StoreError::Refused(
                "the checkpoint could not finish: another connection is reading".into(),
            ));
        }
        Ok(())
    }

    /// `PRAGMA integrity_check`: "ok" when every page and index is sound.
    pub fn integrity_check(&self) -> Result<String> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }

    /// `PRAGMA quick_check`: "ok" when the file is sound.
    pub fn quick_check(&self) -> Result<String> {
        Ok(self
            .conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))?)
    }

    /// A value from the `meta` table.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    /// Records a dashboard session (its id is the SHA-256 of the cookie's
    /// nonce; `role` is `participant` or `investigator`), deleting sessions
    /// that ended or expired more than a day ago.
    pub fn create_session(
        &mut self,
        id: &str,
        role: &str,
        fingerprint: &str,
        expires: Timestamp,
        now: Timestamp,
    ) -> Result<()> {
        let tx = write_tx(&mut self.conn)?;
        tx.execute(
            "INSERT INTO sessions (id, role, fingerprint, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, role, fingerprint, ts(now), ts(expires)],
        )?;
        // Sessions long over are of no use: the table stays small.
        let day_ago = ts(now - jiff::SignedDuration::from_hours(24));
        tx.execute(
            "DELETE FROM sessions WHERE expires_at < ?1 OR ended_at < ?1",
            [day_ago],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// True when session `id` was opened with `fingerprint`, has not ended
    /// and has not expired.
    pub fn session_live(&self, id: &str, fingerprint: &str, now: Timestamp) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM sessions
                 WHERE id = ?1 AND fingerprint = ?2 AND ended_at IS NULL AND expires_at > ?3",
                params![id, fingerprint, ts(now)],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Ends session `id` (sign-out).
    pub fn end_session(&mut self, id: &str, now: Timestamp) -> Result<()> {
        self.conn.execute(
            "UPDATE sessions SET ended_at = ?2 WHERE id = ?1 AND ended_at IS NULL",
            params![id, ts(now)],
        )?;
        Ok(())
    }

    /// Records a failed sign-in or bearer token from `address`, deleting
    /// failures from before `forget_before` (outside the limit's window).
    pub fn record_access_failure(
        &mut self,
        kind: &str,
        address: &str,
        now: Timestamp,
        forget_before: Timestamp,
    ) -> Result<()> {
        let tx = write_tx(&mut self.conn)?;
        tx.execute(
            "DELETE FROM access_failures WHERE at < ?1",
            [ts(forget_before)],
        )?;
        tx.execute(
            "INSERT INTO access_failures (kind, address, at) VALUES (?1, ?2, ?3)",
            params![kind, address, ts(now)],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Failures since `since`, oldest first: (kind, address, when).
    pub fn access_failures_since(
        &self,
        since: Timestamp,
    ) -> Result<Vec<(String, String, Timestamp)>> {
        let mut stmt = self.conn.prepare(
            "SELECT kind, address, at FROM access_failures WHERE at >= ?1 ORDER BY at, id",
        )?;
        let rows = stmt.query_map([ts(since)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (kind, address, at) = row?;
            let at = at
                .parse()
                .map_err(|e| StoreError::Invalid(format!("access_failures.at {at:?}: {e}")))?;
            out.push((kind, address, at));
        }
        Ok(out)
    }

    /// The stored value for `key`, storing `value` first if there is none.
    pub fn meta_get_or_insert(&mut self, key: &str, value: &str) -> Result<String> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
            params![key, value],
        )?;
        self.meta(key)?
            .ok_or_else(|| StoreError::Invalid(format!("meta {key} vanished")))
    }

    /// Inserts or updates a participant by key; returns its id.
    pub fn upsert_participant(
        &mut self,
        p: &crate::service::config::Participant,
        is_demo: bool,
        now: Timestamp,
    ) -> Result<i64> {
        let time = format!(
            "{:02}:{:02}",
            p.assignment_time.hour(),
            p.assignment_time.minute()
        );
        let changed: Option<i64> = self
            .conn
            .query_row(
                "INSERT INTO participants
                 (key, name, email, time_zone, assignment_time, is_demo, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
             ON CONFLICT (key) DO UPDATE SET
                 name = excluded.name, email = excluded.email,
                 time_zone = excluded.time_zone,
                 assignment_time = excluded.assignment_time,
                 updated_at = excluded.updated_at
             WHERE name != excluded.name OR email != excluded.email
                OR time_zone != excluded.time_zone
                OR assignment_time != excluded.assignment_time
             RETURNING id",
                params![
                    p.key,
                    p.name,
                    p.email,
                    p.time_zone_name,
                    time,
                    is_demo,
                    ts(now)
                ],
                |r| r.get(0),
            )
            .optional()?;
        // No row comes back when nothing changed (the WHERE skipped the update).
        match changed {
            Some(id) => Ok(id),
            None => self.participant_id(&p.key),
        }
    }

    fn participant_id(&self, key: &str) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT id FROM participants WHERE key = ?1", [key], |r| {
                r.get(0)
            })?)
    }

    /// All participants, by key.
    pub fn participants(&self) -> Result<Vec<ParticipantRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, key, name, email, time_zone, assignment_time, is_demo
             FROM participants ORDER BY key",
        )?;
        let rows = stmt.query_map([], participant_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One participant by id.
    pub fn participant(&self, id: i64) -> Result<Option<ParticipantRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, key, name, email, time_zone, assignment_time, is_demo
                 FROM participants WHERE id = ?1",
                [id],
                participant_row,
            )
            .optional()?)
    }

    /// Creates the source if missing; returns its id.
    pub fn ensure_source(
        &mut self,
        participant_id: i64,
        name: &str,
        kind: &str,
        config_json: &str,
        now: Timestamp,
    ) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO sources (participant_id, name, kind, config_json, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (participant_id, name) DO NOTHING",
            params![participant_id, name, kind, config_json, ts(now)],
        )?;
        Ok(self.conn.query_row(
            "SELECT id FROM sources WHERE participant_id = ?1 AND name = ?2",
            params![participant_id, name],
            |r| r.get(0),
        )?)
    }

    /// Creates a configured source or brings its stored settings up to date
    /// (its cursor and records stay); refused when a source of that name
    /// but another kind exists.
    pub fn configure_source(
        &mut self,
        participant_id: i64,
        name: &str,
        kind: &str,
        config_json: &str,
        now: Timestamp,
    ) -> Result<i64> {
        let id = self.ensure_source(participant_id, name, kind, config_json, now)?;
        let stored: String =
            self.conn
                .query_row("SELECT kind FROM sources WHERE id = ?1", [id], |r| r.get(0))?;
        if stored != kind {
            return Err(StoreError::Refused(format!(
                "a source named {name:?} of kind {stored} already exists: give the {kind} source another name"
            )));
        }
        self.conn.execute(
            "UPDATE sources SET config_json = ?2 WHERE id = ?1",
            params![id, config_json],
        )?;
        Ok(id)
    }

    /// Keeps a begun authorisation until the person comes back; ones older
    /// than an hour are dropped on the way.
    pub fn begin_oauth(
        &mut self,
        source_id: i64,
        state: &str,
        verifier: &str,
        now: Timestamp,
    ) -> Result<()> {
        let tx = write_tx(&mut self.conn)?;
        tx.execute(
            "DELETE FROM oauth_pending WHERE created_at < ?1",
            [ts(now - jiff::SignedDuration::from_hours(1))],
        )?;
        tx.execute(
            "INSERT INTO oauth_pending (state, source_id, pkce_verifier, created_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![state, source_id, verifier, ts(now)],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Takes (and deletes: a state is good once) the authorisation begun
    /// with `state` no longer than `max_age` ago: `(source id, verifier)`.
    pub fn take_oauth(
        &mut self,
        state: &str,
        max_age: jiff::SignedDuration,
        now: Timestamp,
    ) -> Result<Option<(i64, String)>> {
        let tx = write_tx(&mut self.conn)?;
        let row: Option<(i64, String, String)> = tx
            .query_row(
                "SELECT source_id, pkce_verifier, created_at FROM oauth_pending WHERE state = ?1",
                [state],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        tx.execute("DELETE FROM oauth_pending WHERE state = ?1", [state])?;
        tx.commit()?;
        Ok(row.and_then(|(id, verifier, created)| {
            let fresh = created
                .parse::<Timestamp>()
                .is_ok_and(|t| now.duration_since(t) <= max_age);
            fresh.then_some((id, verifier))
        }))
    }

    /// Stores a source's grant from a Connect as connected, over whatever
    /// was stored (a refresh uses [`Store::save_renewed_grant`]).
    pub fn save_grant(
        &mut self,
        source_id: i64,
        grant: &crate::service::oauth::Grant,
        now: Timestamp,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT INTO oauth_grants (source_id, access_token, refresh_token, expires_at, scope,
                                       status, status_reason, connected_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'connected', '', ?6, ?6)
             ON CONFLICT (source_id) DO UPDATE SET access_token = ?2, refresh_token = ?3,
                 expires_at = ?4, scope = ?5, status = 'connected', status_reason = '',
                 updated_at = ?6",
            params![
                source_id,
                grant.access_token,
                grant.refresh_token,
                grant.expires_at.map(ts),
                grant.scope,
                ts(now)
            ],
        )?;
        Ok(())
    }

    /// Stores the grant a refresh before a poll gave, in place of the one it
    /// renewed, unless that one was replaced meanwhile: the person connected
    /// again during the refresh's round trip (perhaps to another account),
    /// and their connection stands. Whether it was stored.
    pub fn save_renewed_grant(
        &mut self,
        source_id: i64,
        renewal: &crate::service::sources::granted::Renewal,
        now: Timestamp,
    ) -> Result<bool> {
        let grant = &renewal.grant;
        let n = self.conn.execute(
            "UPDATE oauth_grants SET access_token = ?2, refresh_token = ?3, expires_at = ?4,
                 scope = ?5, status = 'connected', status_reason = '', updated_at = ?6
             WHERE source_id = ?1 AND updated_at = ?7 AND access_token = ?8",
            params![
                source_id,
                grant.access_token,
                grant.refresh_token,
                grant.expires_at.map(ts),
                grant.scope,
                ts(now),
                ts(renewal.replaces_stored_at),
                renewal.replaces_access_token
            ],
        )?;
        Ok(n == 1)
    }

    /// Marks the grant stored at `stored_at` as needing the person to
    /// connect again; true when it was connected until now (so the person
    /// is told once). A grant stored since (connected again meanwhile) is
    /// left alone.
    pub fn needs_reauthorisation(
        &mut self,
        source_id: i64,
        stored_at: Timestamp,
        why: &str,
        now: Timestamp,
    ) -> Result<bool> {
        let n = self.conn.execute(
            "UPDATE oauth_grants SET status = 'needs_reauthorisation', status_reason = ?2,
                 updated_at = ?3
             WHERE source_id = ?1 AND status = 'connected' AND updated_at = ?4",
            params![source_id, why, ts(now), ts(stored_at)],
        )?;
        Ok(n > 0)
    }

    /// Treats a grant's access token as expired (the API refused it), so
    /// the next poll refreshes it first.
    pub fn expire_grant(&mut self, source_id: i64, now: Timestamp) -> Result<()> {
        self.conn.execute(
            "UPDATE oauth_grants SET expires_at = ?2 WHERE source_id = ?1",
            params![source_id, ts(now)],
        )?;
        Ok(())
    }

    /// A source's grant, if it was ever connected.
    pub fn grant(&self, source_id: i64) -> Result<Option<GrantRow>> {
        let parse = |t: String| {
            t.parse::<Timestamp>().map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    0,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })
        };
        Ok(self
            .conn
            .query_row(
                "SELECT access_token, refresh_token, expires_at, scope, status, status_reason,
                        updated_at
                 FROM oauth_grants WHERE source_id = ?1",
                [source_id],
                |r| {
                    Ok(GrantRow {
                        source_id,
                        grant: crate::service::oauth::Grant {
                            access_token: r.get(0)?,
                            refresh_token: r.get(1)?,
                            expires_at: r.get::<_, Option<String>>(2)?.map(parse).transpose()?,
                            scope: r.get(3)?,
                        },
                        status: r.get(4)?,
                        status_reason: r.get(5)?,
                        updated_at: parse(r.get(6)?)?,
                    })
                },
            )
            .optional()?)
    }

    /// All sources.
    pub fn sources(&self) -> Result<Vec<SourceRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, participant_id, name, kind, config_json, cursor,
                    last_success_at, last_error, last_error_at, created_at
             FROM sources ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(SourceRow {
                id: r.get(0)?,
                participant_id: r.get(1)?,
                name: r.get(2)?,
                kind: r.get(3)?,
                config_json: r.get(4)?,
                cursor: r.get(5)?,
                last_success_at: r.get(6)?,
                last_error: r.get(7)?,
                last_error_at: r.get(8)?,
                created_at: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records one poll: its observations (new ones stored, re-read ones
    /// updated where they changed), the records the source said were
    /// deleted (`withdrawn`: source record ids), and the new cursor, in one
    /// transaction. A non-finite value refuses the whole poll, so the
    /// cursor stays put.
    pub fn record_poll(
        &mut self,
        source_id: i64,
        run_id: i64,
        observations: &[NewObservation],
        withdrawn: &[String],
        cursor: Option<&str>,
        now: Timestamp,
    ) -> Result<Upserted> {
        check_finite(observations)?;
        let tx = write_tx(&mut self.conn)?;
        let mut counts = upsert_observations(&tx, source_id, observations, now)?;
        {
            let mut withdraw = tx.prepare_cached(
                "UPDATE observations SET withdrawn_at = ?3
                 WHERE source_id = ?1 AND source_record_id = ?2 AND withdrawn_at IS NULL",
            )?;
            for record in withdrawn {
                counts.withdrawn += withdraw.execute(params![source_id, record, ts(now)])?;
            }
        }
        add_run_counts(&tx, run_id, counts)?;
        tx.execute(
            "UPDATE sources SET cursor = COALESCE(?2, cursor), last_success_at = ?3,
                 last_error = NULL, last_error_at = NULL WHERE id = ?1",
            params![source_id, cursor, ts(now)],
        )?;
        tx.commit()?;
        Ok(counts)
    }

    /// Writes one batch of a push or an import (new rows stored, re-sent
    /// ones updated where they changed) and adds its counts to the run's
    /// row, in one transaction: a crash between batches leaves the run's
    /// counts true to what is stored.
    pub fn record_batch(
        &mut self,
        source_id: i64,
        run_id: i64,
        observations: &[NewObservation],
        now: Timestamp,
    ) -> Result<Upserted> {
        // A poll that leaves the cursor where it is.
        self.record_poll(source_id, run_id, observations, &[], None, now)
    }

    /// Opens a run-log row for a poll, push or import; returns its id.
    pub fn begin_run(
        &mut self,
        source_id: i64,
        way: RunWay,
        what: &str,
        now: Timestamp,
    ) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO source_runs (source_id, way, what, started_at) VALUES (?1, ?2, ?3, ?4)",
            params![source_id, way.as_str(), what, ts(now)],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Closes a run: records refused, its first problems and, if it failed,
    /// why (also the source's last error).
    pub fn finish_run(
        &mut self,
        run_id: i64,
        refused: usize,
        problems: &str,
        error: Option<&str>,
        now: Timestamp,
    ) -> Result<()> {
        let tx = write_tx(&mut self.conn)?;
        tx.execute(
            "UPDATE source_runs SET finished_at = ?2, refused = ?3, problems = ?4, error = ?5
             WHERE id = ?1",
            params![run_id, ts(now), refused as i64, problems, error],
        )?;
        if let Some(e) = error {
            tx.execute(
                "UPDATE sources SET last_error = ?2, last_error_at = ?3
                 WHERE id = (SELECT source_id FROM source_runs WHERE id = ?1)",
                params![run_id, e, ts(now)],
            )?;
        }
        // The log is bounded: a source polled every minute for years keeps
        // its latest runs only.
        tx.execute(
            "DELETE FROM source_runs
             WHERE source_id = (SELECT source_id FROM source_runs WHERE id = ?1)
               AND id <= (SELECT id FROM source_runs
                          WHERE source_id = (SELECT source_id FROM source_runs WHERE id = ?1)
                          ORDER BY id DESC LIMIT 1 OFFSET ?2)",
            params![run_id, RUNS_KEPT],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A source's latest runs, newest first.
    pub fn source_runs(&self, source_id: i64, limit: usize) -> Result<Vec<SourceRunRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, source_id, way, what, started_at, finished_at, stored, updated, unchanged,
                    refused, problems, error, withdrawn
             FROM source_runs WHERE source_id = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![source_id, limit as i64], |r| {
            Ok(SourceRunRow {
                id: r.get(0)?,
                source_id: r.get(1)?,
                way: r.get(2)?,
                what: r.get(3)?,
                started_at: r.get(4)?,
                finished_at: r.get(5)?,
                stored: r.get(6)?,
                updated: r.get(7)?,
                unchanged: r.get(8)?,
                refused: r.get(9)?,
                problems: r.get(10)?,
                error: r.get(11)?,
                withdrawn: r.get(12)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Totals over the run log of every source, by way, for `/metrics`.
    pub fn source_run_totals(&self) -> Result<Vec<RunTotals>> {
        let mut stmt = self.conn.prepare(
            "SELECT way, COUNT(*), SUM(stored), SUM(updated), SUM(unchanged), SUM(refused),
                    SUM(error IS NOT NULL)
             FROM source_runs GROUP BY way ORDER BY way",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(RunTotals {
                way: r.get(0)?,
                runs: r.get(1)?,
                stored: r.get(2)?,
                updated: r.get(3)?,
                unchanged: r.get(4)?,
                refused: r.get(5)?,
                failed: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Sets (replaces) a push source's token, stored as its SHA-256 hex.
    pub fn set_push_token(&mut self, source_id: i64, token_sha256: &str) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE sources SET push_token_sha256 = ?2 WHERE id = ?1",
            params![source_id, token_sha256],
        )?;
        if n == 0 {
            return Err(StoreError::Refused(format!("no source {source_id}")));
        }
        Ok(())
    }

    /// The source whose push token has this SHA-256 hex.
    pub fn source_by_push_token(&self, token_sha256: &str) -> Result<Option<SourceRow>> {
        let id: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM sources WHERE push_token_sha256 = ?1",
                [token_sha256],
                |r| r.get(0),
            )
            .optional()?;
        match id {
            Some(id) => Ok(self.sources()?.into_iter().find(|s| s.id == id)),
            None => Ok(None),
        }
    }

    /// Observations of one participant's stream, in time order:
    /// `(observed_at, local_date, value)`; where two origins (phone and
    /// watch) measured the same day, only the samples of the one ranked
    /// first by `prefer` count (`streams::one_origin_per_day`).
    pub fn observations(
        &self,
        participant_id: i64,
        stream: &str,
        prefer: &[String],
    ) -> Result<Vec<(Timestamp, Date, f64)>> {
        let samples = self.samples(participant_id, stream)?;
        Ok(crate::service::streams::one_origin_per_day(samples, prefer)
            .into_iter()
            .map(|s| (s.at, s.date, s.value))
            .collect())
    }

    /// Whether the participant's stream has a value (not withdrawn) on
    /// their local `date`.
    pub fn has_observation_on(
        &self,
        participant_id: i64,
        stream: &str,
        date: Date,
    ) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM observations o JOIN streams s ON s.id = o.stream_id
                            WHERE s.participant_id = ?1 AND s.key = ?2 AND o.local_date = ?3
                              AND o.withdrawn_at IS NULL)",
            params![participant_id, stream, date.to_string()],
            |r| r.get(0),
        )?)
    }

    /// The participant's local dates on or after `since` on which the
    /// stream has a value (not withdrawn).
    pub fn dates_with_observations(
        &self,
        participant_id: i64,
        stream: &str,
        since: Date,
    ) -> Result<std::collections::BTreeSet<Date>> {
        let mut stmt = self.conn.prepare(
            "SELECT DISTINCT o.local_date FROM observations o JOIN streams s ON s.id = o.stream_id
             WHERE s.participant_id = ?1 AND s.key = ?2 AND o.local_date >= ?3
               AND o.withdrawn_at IS NULL",
        )?;
        let rows = stmt.query_map(params![participant_id, stream, since.to_string()], |r| {
            r.get::<_, String>(0)
        })?;
        let mut out = std::collections::BTreeSet::new();
        for row in rows {
            out.insert(parse_date(&row?)?);
        }
        Ok(out)
    }

    /// Every stored sample of a participant's stream with its origin, in time order.
    pub fn samples(
        &self,
        participant_id: i64,
        stream: &str,
    ) -> Result<Vec<crate::service::streams::Sample>> {
        self.samples_on(participant_id, stream, None)
    }

    /// [`Store::observations`] of one local `date` only (the overview's
    /// Today card reads today's rating without the whole stream).
    pub fn observations_on(
        &self,
        participant_id: i64,
        stream: &str,
        date: Date,
    ) -> Result<Vec<(Timestamp, Date, f64)>> {
        self.observations_between(participant_id, stream, &[], (date, date))
    }

    /// [`Store::observations`] of the local dates `first..=last` only: a
    /// trial's refit reads its own dates, not the stream's whole history.
    /// Where two devices measured a day, the one kept is the one
    /// [`Store::observations`] keeps: devices are ranked on the whole
    /// stream (as the export and the sources page rank them), not on these
    /// dates.
    pub fn observations_between(
        &self,
        participant_id: i64,
        stream: &str,
        prefer: &[String],
        (first, last): (Date, Date),
    ) -> Result<Vec<(Timestamp, Date, f64)>> {
        let samples = self.samples_on(participant_id, stream, Some((first, last)))?;
        let mut stmt = self.conn.prepare(
            "SELECT o.origin, COUNT(*)
             FROM observations o JOIN streams s ON s.id = o.stream_id
             WHERE s.participant_id = ?1 AND s.key = ?2 AND o.withdrawn_at IS NULL
             GROUP BY o.origin",
        )?;
        let counts = stmt
            .query_map(params![participant_id, stream], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let ranking = crate::service::streams::rank_origins(
            counts
                .iter()
                .map(|(o, n)| (o.as_str(), usize::try_from(*n).unwrap_or(0)))
                .collect(),
            prefer,
        );
        Ok(
            crate::service::streams::one_origin_per_day_ranked(samples, &ranking)
                .into_iter()
                .map(|s| (s.at, s.date, s.value))
                .collect(),
        )
    }

    /// A stream's samples, of the local dates `first..=last` or (`None`)
    /// all of them.
    fn samples_on(
        &self,
        participant_id: i64,
        stream: &str,
        days: Option<(Date, Date)>,
    ) -> Result<Vec<crate::service::streams::Sample>> {
        // Two statements rather than `?3 IS NULL OR ...`, which keeps
        // SQLite from using the date index.
        let range = days.map(|(a, b)| (a.to_string(), b.to_string()));
        let (sql, args): (&str, Vec<&dyn rusqlite::ToSql>) = match &range {
            Some((first, last)) => (
                "SELECT o.observed_at, o.local_date, o.value, o.origin
                 FROM observations o JOIN streams s ON s.id = o.stream_id
                 WHERE s.participant_id = ?1 AND s.key = ?2 AND o.withdrawn_at IS NULL
                   AND o.local_date BETWEEN ?3 AND ?4
                 ORDER BY o.observed_at, o.id",
                vec![&participant_id, &stream, first, last],
            ),
            None => (
                "SELECT o.observed_at, o.local_date, o.value, o.origin
                 FROM observations o JOIN streams s ON s.id = o.stream_id
                 WHERE s.participant_id = ?1 AND s.key = ?2 AND o.withdrawn_at IS NULL
                 ORDER BY o.observed_at, o.id",
                vec![&participant_id, &stream],
            ),
        };
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt.query_map(args.as_slice(), |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (at, date, value, origin) = row?;
            out.push(crate::service::streams::Sample {
                at: parse_ts(&at)?,
                date: parse_date(&date)?,
                value,
                origin,
            });
        }
        Ok(out)
    }

    /// A participant's catalog: each stream summarised day by day, one
    /// origin a day by the participant's preferences.
    pub fn catalog(
        &self,
        participant_id: i64,
        rules: &crate::service::streams::StreamRules,
    ) -> Result<Vec<crate::service::streams::StreamSummary>> {
        Ok(self
            .stream_catalog(participant_id)?
            .into_iter()
            .map(|st| {
                crate::service::streams::summarise(
                    &st.key,
                    &st.unit,
                    st.sources,
                    &st.days,
                    rules.prefer(&st.key),
                )
            })
            .collect())
    }

    /// The participant's catalog: every stream with its unit, the sources
    /// it came through, and per-origin daily totals (summed in SQL, so a
    /// year of minute heart rate is not loaded row by row).
    pub fn stream_catalog(&self, participant_id: i64) -> Result<Vec<StreamDays>> {
        let mut streams = self
            .conn
            .prepare("SELECT id, key, unit FROM streams WHERE participant_id = ?1 ORDER BY key")?;
        let list: Vec<(i64, String, String)> = streams
            .query_map([participant_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<std::result::Result<_, _>>()?;
        let mut sources = self.conn.prepare(
            "SELECT DISTINCT src.name FROM observations o JOIN sources src ON src.id = o.source_id
             WHERE o.stream_id = ?1 AND o.withdrawn_at IS NULL ORDER BY src.name",
        )?;
        let mut days = self.conn.prepare(
            "SELECT local_date, origin, SUM(value), COUNT(*) FROM observations
             WHERE stream_id = ?1 AND withdrawn_at IS NULL
             GROUP BY local_date, origin ORDER BY local_date",
        )?;
        let mut out = Vec::new();
        for (id, key, unit) in list {
            let names: Vec<String> = sources
                .query_map([id], |r| r.get(0))?
                .collect::<std::result::Result<_, _>>()?;
            let rows: Vec<(String, String, f64, i64)> = days
                .query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<std::result::Result<_, _>>()?;
            let mut per_day = Vec::with_capacity(rows.len());
            for (date, origin, sum, count) in rows {
                per_day.push(crate::service::streams::OriginDay {
                    date: parse_date(&date)?,
                    origin,
                    sum,
                    count: usize::try_from(count).unwrap_or(0),
                });
            }
            out.push(StreamDays {
                key,
                unit,
                sources: names,
                days: per_day,
            });
        }
        Ok(out)
    }

    /// The unit each of the participant's streams is stored in, by key.
    pub fn stream_units(&self, participant_id: i64) -> Result<HashMap<String, String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, unit FROM streams WHERE participant_id = ?1")?;
        let rows = stmt.query_map([participant_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Per-stream observation counts for a participant: `(stream, count, last local date)`.
    pub fn stream_counts(&self, participant_id: i64) -> Result<Vec<(String, i64, Option<String>)>> {
        let mut stmt = self.conn.prepare(
            "SELECT s.key, COUNT(o.id), MAX(o.local_date)
             FROM streams s
             LEFT JOIN observations o ON o.stream_id = s.id AND o.withdrawn_at IS NULL
             WHERE s.participant_id = ?1 GROUP BY s.id ORDER BY s.key",
        )?;
        let rows = stmt.query_map([participant_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// All trials, newest last.
    pub fn trials(&self) -> Result<Vec<TrialRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, participant_id, protocol_id, protocol_toml, protocol_hash, seed,
                    status, start_date, stop_reason, efficacy_threshold, threshold_source,
                    efficacy_boundary, futility_threshold, drop_arm_threshold,
                    thresholds_refined_at
             FROM trials ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, Option<String>>(8)?,
                r.get::<_, Option<f64>>(9)?,
                r.get::<_, Option<String>>(10)?,
                r.get::<_, Option<String>>(11)?,
                r.get::<_, Option<f64>>(12)?,
                r.get::<_, Option<f64>>(13)?,
                r.get::<_, Option<String>>(14)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (
                id,
                participant_id,
                protocol_id,
                protocol_toml,
                protocol_hash,
                seed,
                status,
                start,
                stop_reason,
                efficacy,
                source,
                boundary,
                futility,
                drop_arm,
                thresholds_refined_at,
            ) = row?;
            let locked = match (efficacy, source) {
                (Some(_), None) | (None, Some(_)) => {
                    return Err(StoreError::Invalid(format!(
                        "trial {id} has half a locked threshold"
                    )));
                }
                (Some(efficacy), Some(source)) => Some(LockedThresholds {
                    efficacy,
                    source: ThresholdSource::parse(&source).ok_or_else(|| {
                        StoreError::Invalid(format!("trial {id} threshold source {source:?}"))
                    })?,
                    boundary: match boundary.as_deref() {
                        None => Boundary::Constant,
                        Some(b) => Boundary::parse(b).ok_or_else(|| {
                            StoreError::Invalid(format!("trial {id} efficacy boundary {b:?}"))
                        })?,
                    },
                    futility,
                    drop_arm,
                }),
                _ => None,
            };
            out.push(TrialRow {
                id,
                participant_id,
                protocol_id,
                protocol_toml,
                protocol_hash: ProtocolHash(protocol_hash),
                seed: seed
                    .parse()
                    .map_err(|_| StoreError::Invalid(format!("trial {id} seed {seed:?}")))?,
                status: TrialStatus::parse(&status)
                    .ok_or_else(|| StoreError::Invalid(format!("trial {id} status {status:?}")))?,
                start_date: start.as_deref().map(parse_date).transpose()?,
                stop_reason,
                locked,
                thresholds_refined_at,
            });
        }
        Ok(out)
    }

    /// A trial's full schedule, by day.
    pub fn schedule(&self, trial_id: i64) -> Result<Vec<DatedDay>> {
        let mut stmt = self.conn.prepare(
            "SELECT day, local_date, period, block, arm, washout
             FROM schedule WHERE trial_id = ?1 ORDER BY day",
        )?;
        let rows = stmt.query_map([trial_id], |r| {
            Ok((
                r.get::<_, u32>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<u32>>(2)?,
                r.get::<_, Option<u32>>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, bool>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (day, date, period, block, arm, washout) = row?;
            out.push(DatedDay {
                day,
                local_date: parse_date(&date)?,
                period,
                block,
                arm: usize::try_from(arm).map_err(|_| StoreError::Invalid(format!("arm {arm}")))?,
                washout,
            });
        }
        Ok(out)
    }

    /// The schedule row of a trial for a local date, if the trial covers it.
    pub fn schedule_on(&self, trial_id: i64, date: Date) -> Result<Option<DatedDay>> {
        let row = self
            .conn
            .query_row(
                "SELECT day, period, block, arm, washout FROM schedule
                 WHERE trial_id = ?1 AND local_date = ?2",
                params![trial_id, date.to_string()],
                |r| {
                    Ok((
                        r.get::<_, u32>(0)?,
                        r.get::<_, Option<u32>>(1)?,
                        r.get::<_, Option<u32>>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, bool>(4)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(day, period, block, arm, washout)| {
            Ok(DatedDay {
                day,
                local_date: date,
                period,
                block,
                arm: usize::try_from(arm).map_err(|_| StoreError::Invalid(format!("arm {arm}")))?,
                washout,
            })
        })
        .transpose()
    }

    /// The latest local date with a daily run for a trial.
    pub fn last_daily_run(&self, trial_id: i64) -> Result<Option<Date>> {
        let last: Option<String> = self.conn.query_row(
            "SELECT MAX(local_date) FROM daily_runs WHERE trial_id = ?1",
            [trial_id],
            |r| r.get(0),
        )?;
        last.as_deref().map(parse_date).transpose()
    }

    /// Records a trial's daily run for `date` in one transaction: the days
    /// in `missed` as missed, `date` as sent, and its messages queued in the
    /// outbox. Returns false (and writes nothing) if `date` already ran, or
    /// if the trial is no longer running: a stop (a decision of another job,
    /// or a person's) may land after the caller read the trial as running,
    /// and no assignment goes out after it.
    pub fn record_daily_run(
        &mut self,
        trial_id: i64,
        date: Date,
        missed: &[Date],
        messages: &[NewMessage],
        now: Timestamp,
    ) -> Result<bool> {
        let tx = write_tx(&mut self.conn)?;
        let status: Option<String> = tx
            .query_row("SELECT status FROM trials WHERE id = ?1", [trial_id], |r| {
                r.get(0)
            })
            .optional()?;
        if status.as_deref() != Some(TrialStatus::Running.as_str()) {
            return Ok(false);
        }
        let fresh = tx.execute(
            "INSERT INTO daily_runs (trial_id, local_date, status, at)
             VALUES (?1, ?2, 'sent', ?3) ON CONFLICT DO NOTHING",
            params![trial_id, date.to_string(), ts(now)],
        )?;
        if fresh == 0 {
            return Ok(false);
        }
        for day in missed {
            tx.execute(
                "INSERT INTO daily_runs (trial_id, local_date, status, at)
                 VALUES (?1, ?2, 'missed', ?3) ON CONFLICT DO NOTHING",
                params![trial_id, day.to_string(), ts(now)],
            )?;
        }
        for m in messages {
            enqueue(&tx, m, now)?;
        }
        if !missed.is_empty() {
            audit(
                &tx,
                "daemon",
                "daily_run.missed",
                Some(trial_id),
                &serde_json::json!({
                    "days": missed.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                }),
                now,
            )?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// One trial by id.
    pub fn trial(&self, trial_id: i64) -> Result<Option<TrialRow>> {
        Ok(self.trials()?.into_iter().find(|t| t.id == trial_id))
    }

    /// Stores a proposed trial (locked protocol and seed, no schedule yet).
    pub fn propose_trial(&mut self, p: &Proposal<'_>, actor: &str, now: Timestamp) -> Result<i64> {
        let tx = write_tx(&mut self.conn)?;
        let id = insert_proposal(&tx, p, None, actor, now)?;
        tx.commit()?;
        Ok(id)
    }

    /// Records what a proposer answered, in one transaction: every
    /// exchange in the audit log, every hypothesis (tied to the last
    /// exchange), and a proposed trial for each one to be tested. Returns
    /// each hypothesis's id and its trial's.
    pub fn record_hypotheses(
        &mut self,
        participant_id: i64,
        exchanges: &[NewExchange],
        hypotheses: &[NewHypothesis],
        actor: &str,
        now: Timestamp,
    ) -> Result<Vec<(i64, Option<i64>)>> {
        let tx = write_tx(&mut self.conn)?;
        let last = insert_exchanges(&tx, participant_id, exchanges, now)?;
        let mut out = Vec::new();
        for h in hypotheses {
            // Checked again here, where writes are one at a time: two asks
            // answered at once must not propose the same protocol twice.
            let open_already = match &h.protocol {
                Some((protocol_id, ..)) => tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM trials WHERE participant_id = ?1
                         AND protocol_id = ?2 AND status IN ('proposed', 'approved', 'running', 'paused'))",
                    params![participant_id, protocol_id],
                    |r| r.get::<_, bool>(0),
                )?,
                None => false,
            };
            let protocol = if open_already {
                None
            } else {
                h.protocol.as_ref()
            };
            let notes = if open_already {
                format!(
                    "{}\na trial of this protocol is already open: not proposed again",
                    h.notes
                )
                .trim()
                .to_string()
            } else {
                h.notes.clone()
            };
            let status = if protocol.is_some() {
                "proposed"
            } else {
                "open"
            };
            let hid: i64 = tx.query_row(
                "INSERT INTO hypotheses (participant_id, proposer, payload_json, uncertainty, status,
                     created_at, question, verdict, tau, exchange_id, notes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) RETURNING id",
                params![
                    participant_id,
                    h.proposer,
                    h.payload_json,
                    h.sigma,
                    status,
                    ts(now),
                    h.question,
                    h.verdict,
                    h.tau,
                    last,
                    notes
                ],
                |r| r.get(0),
            )?;
            let trial = match protocol {
                Some((protocol_id, text, hash, seed)) => Some(insert_proposal(
                    &tx,
                    &Proposal {
                        participant_id,
                        protocol_id,
                        protocol_toml: text,
                        protocol_hash: hash,
                        seed: *seed,
                    },
                    Some(hid),
                    actor,
                    now,
                )?),
                None => None,
            };
            out.push((hid, trial));
        }
        tx.commit()?;
        Ok(out)
    }

    /// Stores a stopped trial's conclusion with the exchanges that wrote it,
    /// in one transaction; a trial keeps its first conclusion. Returns
    /// whether this one was stored.
    pub fn put_conclusion(
        &mut self,
        trial_id: i64,
        conclusion: &ConclusionRow,
        exchanges: &[NewExchange],
        now: Timestamp,
    ) -> Result<bool> {
        let tx = write_tx(&mut self.conn)?;
        let participant_id: i64 = tx.query_row(
            "SELECT participant_id FROM trials WHERE id = ?1",
            [trial_id],
            |r| r.get(0),
        )?;
        let stored = tx.execute(
            "INSERT INTO conclusions (trial_id, text, written_by, refused, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (trial_id) DO NOTHING",
            params![
                trial_id,
                conclusion.text,
                conclusion.written_by,
                conclusion.refused,
                ts(now)
            ],
        )? == 1;
        if stored {
            insert_exchanges(&tx, participant_id, exchanges, now)?;
        }
        tx.commit()?;
        Ok(stored)
    }

    /// A trial's conclusion, once written.
    pub fn conclusion(&self, trial_id: i64) -> Result<Option<ConclusionRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT text, written_by, refused, created_at FROM conclusions WHERE trial_id = ?1",
                [trial_id],
                |r| {
                    Ok(ConclusionRow {
                        text: r.get(0)?,
                        written_by: r.get(1)?,
                        refused: r.get(2)?,
                        created_at: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// Trials that ran and stopped and have no conclusion yet.
    /// (A stop by hand is concluded once it can no longer be undone: when
    /// it happened before `settled_before`.)
    pub fn trials_to_conclude(&self, settled_before: Timestamp) -> Result<Vec<i64>> {
        let mut stmt = self.conn.prepare(
            "SELECT t.id FROM trials t LEFT JOIN conclusions c ON c.trial_id = t.id
             WHERE t.status = 'stopped' AND t.start_date IS NOT NULL AND c.trial_id IS NULL
               AND (t.status_changed_at < ?1
                    OR EXISTS (SELECT 1 FROM decisions d
                               WHERE d.trial_id = t.id AND d.action LIKE 'stop%'))
             ORDER BY t.id",
        )?;
        let rows = stmt.query_map([ts(settled_before)], |r| r.get(0))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// A participant's hypotheses, newest first, with the trials they became.
    pub fn hypotheses(&self, participant_id: i64, limit: usize) -> Result<Vec<HypothesisRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT h.id, h.participant_id, h.proposer, h.payload_json, h.uncertainty, h.verdict,
                    h.tau, h.question, h.notes, h.exchange_id, t.id, t.status, h.created_at
             FROM hypotheses h LEFT JOIN trials t ON t.hypothesis_id = h.id
             WHERE h.participant_id = ?1 ORDER BY h.id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![participant_id, limit as i64], |r| {
            let trial: Option<i64> = r.get(10)?;
            let status: Option<String> = r.get(11)?;
            Ok(HypothesisRow {
                id: r.get(0)?,
                participant_id: r.get(1)?,
                proposer: r.get(2)?,
                payload_json: r.get(3)?,
                sigma: r.get(4)?,
                verdict: r.get(5)?,
                tau: r.get(6)?,
                question: r.get(7)?,
                notes: r.get(8)?,
                exchange_id: r.get(9)?,
                trial: trial.zip(status),
                created_at: r.get(12)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// When proposals were last made from a participant's goals, and when
    /// their latest trial ended: the weekly job proposes again when the
    /// first is a week old or the second came after it.
    pub fn proposal_times(
        &self,
        participant_id: i64,
    ) -> Result<(Option<Timestamp>, Option<Timestamp>)> {
        let last: Option<String> = self.conn.query_row(
            "SELECT MAX(recorded_at) FROM llm_exchanges WHERE participant_id = ?1 AND purpose = 'propose'",
            [participant_id],
            |r| r.get(0),
        )?;
        // A trial that ran (a rejected proposal never started).
        let ended: Option<String> = self.conn.query_row(
            "SELECT MAX(status_changed_at) FROM trials
             WHERE participant_id = ?1 AND status = 'stopped' AND start_date IS NOT NULL",
            [participant_id],
            |r| r.get(0),
        )?;
        Ok((
            last.as_deref().map(parse_ts).transpose()?,
            ended.as_deref().map(parse_ts).transpose()?,
        ))
    }

    /// A participant's exchanges with proposers, newest first.
    pub fn llm_exchanges(&self, participant_id: i64, limit: usize) -> Result<Vec<ExchangeRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, purpose, proposer, attempt, question, request_json, http_status,
                    response_body, outcome, problems, started_at, finished_at
             FROM llm_exchanges WHERE participant_id = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![participant_id, limit as i64], |r| {
            Ok(ExchangeRow {
                id: r.get(0)?,
                purpose: r.get(1)?,
                proposer: r.get(2)?,
                attempt: r.get(3)?,
                question: r.get(4)?,
                request_json: r.get(5)?,
                http_status: r.get(6)?,
                response_body: r.get(7)?,
                outcome: r.get(8)?,
                problems: r.get(9)?,
                started_at: r.get(10)?,
                finished_at: r.get(11)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Moves a trial to `to` if the life cycle allows it, recording who,
    /// why and on which local date. Approval sets the start date; resuming
    /// moves the unrun schedule rows to `shifted`.
    pub fn change_status(&mut self, change: &StatusChange<'_>, now: Timestamp) -> Result<()> {
        let tx = write_tx(&mut self.conn)?;
        change_status_tx(&tx, change, now)?;
        tx.commit()?;
        Ok(())
    }

    /// Whether the trial's stop stands: a decision stopped it, or an
    /// adverse event was reported (even after a stop by hand, which records
    /// no decision).
    pub fn stop_stands(&self, trial_id: i64) -> Result<bool> {
        Ok(self.conn.query_row(STOP_STANDS, [trial_id], |r| r.get(0))?)
    }

    /// Returns a stopped trial to `change.to` (undoing a stop by hand; the
    /// caller checked that it may): the status, the stop reason cleared,
    /// the event and the audit entry, in one transaction.
    pub fn undo_stop(&mut self, change: &StatusChange<'_>, now: Timestamp) -> Result<()> {
        let tx = write_tx(&mut self.conn)?;
        // Checked again here: a side-effect report (a link, another
        // connection) may have landed since the caller looked.
        let stands: bool = tx.query_row(STOP_STANDS, [change.trial_id], |r| r.get(0))?;
        if stands {
            return Err(StoreError::Refused(format!(
                "trial {}'s stop stands: a stop decision or an adverse event is recorded",
                change.trial_id
            )));
        }
        let moved = tx.execute(
            "UPDATE trials SET status = ?2, status_changed_at = ?3, stop_reason = NULL
             WHERE id = ?1 AND status = 'stopped'",
            params![change.trial_id, change.to.as_str(), ts(now)],
        )?;
        if moved == 0 {
            return Err(StoreError::Refused(format!(
                "trial {} is not stopped",
                change.trial_id
            )));
        }
        if change.to == TrialStatus::Running {
            give_back_withheld(&tx, change.trial_id, now)?;
        }
        tx.execute(
            "INSERT INTO trial_events (trial_id, from_status, to_status, actor, reason, local_date, at)
             VALUES (?1, 'stopped', ?2, ?3, ?4, ?5, ?6)",
            params![
                change.trial_id,
                change.to.as_str(),
                change.actor,
                change.reason,
                change.local_date.to_string(),
                ts(now)
            ],
        )?;
        audit(
            &tx,
            change.actor,
            "undo_stop",
            Some(change.trial_id),
            &serde_json::json!({"to": change.to.as_str(), "reason": change.reason}),
            now,
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Starts an approved trial: its dated schedule, the efficacy threshold
    /// it decides with from now on (`locked`), and the move to running, in
    /// one transaction.
    #[allow(clippy::too_many_arguments)]
    pub fn start_trial(
        &mut self,
        trial_id: i64,
        start_date: Date,
        schedule: &[DatedDay],
        locked: Locking,
        messages: &[NewMessage],
        actor: &str,
        now: Timestamp,
    ) -> Result<()> {
        let tx = write_tx(&mut self.conn)?;
        let Locking {
            thresholds: locked,
            refined,
        } = locked;
        let locked_now = tx.execute(
            "UPDATE trials SET efficacy_threshold = ?2, threshold_source = ?3, efficacy_boundary = ?4,
                               futility_threshold = ?5, drop_arm_threshold = ?6,
                               thresholds_refined_at = ?7
             WHERE id = ?1 AND efficacy_threshold IS NULL",
            params![
                trial_id,
                locked.efficacy,
                locked.source.as_str(),
                locked.boundary.as_str(),
                locked.futility,
                locked.drop_arm,
                refined.then(|| ts(now))
            ],
        )?;
        // A trial that already holds a threshold keeps it (and no audit
        // entry claims otherwise).
        if locked_now == 1 {
            audit(
                &tx,
                actor,
                "lock_threshold",
                Some(trial_id),
                &serde_json::json!({
                    "efficacy": locked.efficacy,
                    "source": locked.source.as_str(),
                    "boundary": locked.boundary.as_str(),
                    "futility": locked.futility,
                    "drop_arm": locked.drop_arm,
                    "refined": refined
                }),
                now,
            )?;
        }
        change_status_tx(
            &tx,
            &StatusChange {
                trial_id,
                to: TrialStatus::Running,
                actor,
                reason: "start date reached",
                local_date: start_date,
                start_date: Some(start_date),
                shifted: &[],
                reviewed: None,
            },
            now,
        )?;
        insert_schedule(&tx, trial_id, schedule)?;
        for m in messages {
            enqueue(&tx, m, now)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Stores a decision and applies it (stop, new schedule) in one
    /// transaction. Returns false, changing nothing, when this look already
    /// has a decision (another job took it first), or when the trial's
    /// thresholds were refined after the look read them (the next run takes
    /// it again), or when the trial is no longer running (a person stopped
    /// or paused it after the look read it: a paused trial's look is taken
    /// again once it resumes).
    pub fn record_decision(
        &mut self,
        d: &NewDecision,
        actor: &str,
        local_date: Date,
        now: Timestamp,
    ) -> Result<bool> {
        let tx = write_tx(&mut self.conn)?;
        let trial: Option<(bool, String)> = tx
            .query_row(
                "SELECT thresholds_refined_at IS ?2, status FROM trials WHERE id = ?1",
                params![d.trial_id, d.thresholds_refined_at],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((same_thresholds, status)) = trial
            && (!same_thresholds || status != TrialStatus::Running.as_str())
        {
            return Ok(false);
        }
        let inserted = tx.execute(
            "INSERT INTO decisions (trial_id, fit_id, rule, action, numbers_json, created_at, period)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
            params![d.trial_id, d.fit_id, d.rule, d.action, d.numbers_json, ts(now), d.period],
        )?;
        if inserted == 0 {
            return Ok(false);
        }
        if let Some((from_day, rows)) = &d.reschedule {
            tx.execute(
                "DELETE FROM schedule WHERE trial_id = ?1 AND day >= ?2",
                params![d.trial_id, from_day],
            )?;
            insert_schedule(&tx, d.trial_id, rows)?;
        }
        if let Some(reason) = &d.stop {
            change_status_tx(
                &tx,
                &StatusChange {
                    trial_id: d.trial_id,
                    to: TrialStatus::Stopped,
                    actor,
                    reason,
                    local_date,
                    start_date: None,
                    shifted: &[],
                    reviewed: None,
                },
                now,
            )?;
        }
        for m in &d.messages {
            enqueue(&tx, m, now)?;
        }
        audit(
            &tx,
            actor,
            "decision",
            Some(d.trial_id),
            &serde_json::json!({"period": d.period, "action": d.action, "rule": d.rule}),
            now,
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Records an adverse event and stops the trial at once (safety stop).
    pub fn record_adverse_event(
        &mut self,
        trial_id: i64,
        local_date: Date,
        note: &str,
        channel: &str,
        actor: &str,
        now: Timestamp,
    ) -> Result<()> {
        let tx = write_tx(&mut self.conn)?;
        adverse_event_tx(&tx, trial_id, local_date, note, channel, actor, now)?;
        tx.commit()?;
        Ok(())
    }

    /// Applies a verified one-click link in one transaction: adherence for
    /// done / not done / side effect (a different answer for the same day
    /// replaces the earlier one), or today's rating as a self-report
    /// observation (the first rating of a day stands). A token already used
    /// changes nothing. Returns what happened, in words.
    pub fn apply_link(&mut self, link: &LinkUse<'_>, now: Timestamp) -> Result<LinkOutcome> {
        let tx = write_tx(&mut self.conn)?;
        let used: Option<(String, String)> = tx
            .query_row(
                "SELECT outcome, used_at FROM link_uses WHERE fingerprint = ?1",
                [link.fingerprint],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((outcome, at)) = used {
            return Ok(LinkOutcome::AlreadyUsed { outcome, at });
        }
        let outcome = match record_day_entry(
            &tx,
            &DayEntry {
                participant_id: link.participant_id,
                trial_id: link.trial_id,
                date: link.date,
                what: &link.what,
                channel: "email-link",
            },
            now,
        )? {
            Ok(words) => words,
            Err(value) => return Ok(LinkOutcome::AlreadyRated { value }),
        };
        tx.execute(
            "INSERT INTO link_uses (fingerprint, trial_id, local_date, action, outcome, used_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                link.fingerprint,
                link.trial_id,
                link.date.to_string(),
                link.action,
                outcome,
                ts(now)
            ],
        )?;
        if let Some(today) = link.stop_today {
            adverse_event_tx(
                &tx,
                link.trial_id,
                today,
                "side effect reported from an email link",
                "email-link",
                "participant",
                now,
            )?;
        }
        audit(
            &tx,
            "participant",
            "link.used",
            Some(link.trial_id),
            &serde_json::json!({"date": link.date.to_string(), "action": link.action, "outcome": outcome}),
            now,
        )?;
        tx.commit()?;
        Ok(LinkOutcome::Recorded(outcome))
    }

    /// Records an adherence report or rating entered on the dashboard's form
    /// for one trial day (a missed email, a day late): the same rules as a
    /// link (a later adherence answer replaces the earlier one, the first
    /// rating of a day stands), in one transaction with its audit row.
    pub fn record_form_entry(
        &mut self,
        participant_id: i64,
        trial_id: i64,
        date: Date,
        what: &LinkWhat<'_>,
        now: Timestamp,
    ) -> Result<LinkOutcome> {
        let tx = write_tx(&mut self.conn)?;
        let entry = DayEntry {
            participant_id,
            trial_id,
            date,
            what,
            channel: "form",
        };
        let words = match record_day_entry(&tx, &entry, now)? {
            Ok(words) => words,
            Err(value) => return Ok(LinkOutcome::AlreadyRated { value }),
        };
        audit(
            &tx,
            "participant",
            "form.entry",
            Some(trial_id),
            &serde_json::json!({"date": date.to_string(), "outcome": words}),
            now,
        )?;
        tx.commit()?;
        Ok(LinkOutcome::Recorded(words))
    }

    /// Corrects the participant's rating of `date` in trial `trial_id` to
    /// `value`: the stored observation takes it, and the correction is kept
    /// (`rating_corrections`: the value it replaced, `actor`, `reason`,
    /// when) with an audit entry, in one transaction. `Ok(None)` where the
    /// day has no rating yet (record one instead). Refused for a trial that
    /// has stopped: its answer stands on the data it ended with.
    pub fn correct_rating(
        &mut self,
        c: &RatingCorrection<'_>,
        now: Timestamp,
    ) -> Result<Option<f64>> {
        let tx = write_tx(&mut self.conn)?;
        let status = owned_trial_status(&tx, c.trial_id, c.participant_id)?;
        if status == TrialStatus::Stopped.as_str() {
            return Err(StoreError::Refused(format!(
                "trial {} has ended: its answer stands on the data it ended with, so its ratings are no longer corrected",
                c.trial_id
            )));
        }
        let record = format!("rating/{}/{}/{}", c.trial_id, c.date, c.stream);
        let found: Option<(i64, f64)> = tx
            .query_row(
                "SELECT id, value FROM observations
                 WHERE source_id = ?1 AND source_record_id = ?2 AND withdrawn_at IS NULL",
                params![c.source_id, record],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((observation_id, old)) = found else {
            return Ok(None);
        };
        if old == c.value {
            return Ok(Some(old));
        }
        tx.execute(
            "UPDATE observations SET value = ?2 WHERE id = ?1",
            params![observation_id, c.value],
        )?;
        tx.execute(
            "INSERT INTO rating_corrections
                 (observation_id, trial_id, local_date, old_value, new_value, reason, actor, corrected_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                observation_id,
                c.trial_id,
                c.date.to_string(),
                old,
                c.value,
                c.reason,
                c.actor,
                ts(now)
            ],
        )?;
        audit(
            &tx,
            c.actor,
            "rating.corrected",
            Some(c.trial_id),
            &serde_json::json!({"date": c.date.to_string(), "stream": c.stream,
                "from": old, "to": c.value, "reason": c.reason}),
            now,
        )?;
        tx.commit()?;
        Ok(Some(old))
    }

    /// A trial's rating corrections, oldest first.
    pub fn rating_corrections(&self, trial_id: i64) -> Result<Vec<RatingCorrectionRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT local_date, old_value, new_value, reason, actor, corrected_at
             FROM rating_corrections WHERE trial_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([trial_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (date, old_value, new_value, reason, actor, corrected_at) = row?;
            out.push(RatingCorrectionRow {
                date: parse_date(&date)?,
                old_value,
                new_value,
                reason,
                actor,
                corrected_at,
            });
        }
        Ok(out)
    }

    /// Replaces the protocol of a trial that is still only proposed (the
    /// participant edited period length, blocks or MID before approving);
    /// the change is recorded as a life-cycle event with the old and new hash.
    pub fn edit_proposal(&mut self, edit: &ProposalEdit<'_>, now: Timestamp) -> Result<()> {
        let tx = write_tx(&mut self.conn)?;
        let current: Option<(String, String, String)> = tx
            .query_row(
                "SELECT status, protocol_hash, protocol_toml FROM trials WHERE id = ?1",
                [edit.trial_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((status, old_hash, old_toml)) = current else {
            return Err(StoreError::Refused(format!(
                "there is no trial {}",
                edit.trial_id
            )));
        };
        if status != TrialStatus::Proposed.as_str() {
            return Err(StoreError::Refused(format!(
                "trial {} is {status}: only a proposal can be edited (its protocol is locked)",
                edit.trial_id
            )));
        }
        if old_hash != edit.edited_from {
            return Err(StoreError::Refused(format!(
                "trial {}'s protocol was changed after this page was shown (sha256 {old_hash} \
                 now): reload the page and make the change again",
                edit.trial_id
            )));
        }
        tx.execute(
            "UPDATE trials SET protocol_toml = ?2, protocol_hash = ?3 WHERE id = ?1",
            params![edit.trial_id, edit.protocol_toml, edit.protocol_hash],
        )?;
        let reason = format!("edited: {}", edit.summary);
        tx.execute(
            "INSERT INTO trial_events (trial_id, from_status, to_status, actor, reason, at)
             VALUES (?1, ?2, ?2, ?3, ?4, ?5)",
            params![
                edit.trial_id,
                TrialStatus::Proposed.as_str(),
                edit.actor,
                reason,
                ts(now)
            ],
        )?;
        audit(
            &tx,
            edit.actor,
            "trial.edited",
            Some(edit.trial_id),
            // The text replaced is kept here: the edited text is re-serialised.
            &serde_json::json!({"from_hash": old_hash, "to_hash": edit.protocol_hash,
                "summary": edit.summary, "from_protocol": old_toml}),
            now,
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The stored simulation of a design, by protocol hash.
    pub fn design_simulation(
        &self,
        protocol_hash: &ProtocolHash,
    ) -> Result<Option<DesignSimulationRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT protocol_hash, trials, report_json, wall_ms, created_at
                 FROM design_simulations WHERE protocol_hash = ?1",
                [&protocol_hash.0],
                |r| {
                    Ok(DesignSimulationRow {
                        protocol_hash: r.get(0)?,
                        trials: r.get(1)?,
                        report_json: r.get(2)?,
                        wall_ms: r.get(3)?,
                        created_at: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    /// Stores a design's simulation (the first one for a hash stands); an
    /// earlier failure of it is forgotten.
    pub fn put_design_simulation(&mut self, row: &DesignSimulationRow) -> Result<()> {
        let tx = write_tx(&mut self.conn)?;
        tx.execute(
            "DELETE FROM design_failures WHERE protocol_hash = ?1 AND work = 'simulation'",
            [&row.protocol_hash],
        )?;
        tx.execute(
            "INSERT INTO design_simulations (protocol_hash, trials, report_json, wall_ms, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (protocol_hash) DO NOTHING",
            params![
                row.protocol_hash,
                row.trials,
                row.report_json,
                row.wall_ms,
                row.created_at
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The stored calibration of a design, by protocol hash.
    pub fn calibration(&self, protocol_hash: &ProtocolHash) -> Result<Option<CalibrationRow>> {
        self.conn
            .query_row(
                "SELECT protocol_hash, target, efficacy, boundary, binding, report_json, wall_ms,
                        created_at, futility, drop_arm
                 FROM calibrations WHERE protocol_hash = ?1",
                [&protocol_hash.0],
                calibration_of_row,
            )
            .optional()?
            .map(checked_calibration)
            .transpose()
    }

    /// The refined calibration of a design, by protocol hash, if one was
    /// made ([`Store::put_refinement`]).
    pub fn refinement(&self, protocol_hash: &ProtocolHash) -> Result<Option<Refinement>> {
        self.conn
            .query_row(
                "SELECT protocol_hash, target, efficacy, boundary, binding, report_json, wall_ms,
                        created_at, futility, drop_arm, null_trials
                 FROM calibration_refinements WHERE protocol_hash = ?1",
                [&protocol_hash.0],
                |r| Ok((calibration_of_row(r)?, r.get::<_, i64>(10)?)),
            )
            .optional()?
            .map(|(row, null_trials)| {
                Ok(Refinement {
                    null_trials: usize::try_from(null_trials).map_err(|_| {
                        StoreError::Invalid(format!("refinement null trials {null_trials}"))
                    })?,
                    calibration: checked_calibration(row)?,
                })
            })
            .transpose()
    }

    /// The refinement a trial decides with, if it took one
    /// ([`Store::refine_thresholds`], or at its start).
    pub fn refinement_taken(&self, trial: &TrialRow) -> Result<Option<Refinement>> {
        match trial.thresholds_refined_at {
            Some(_) => self.refinement(&trial.protocol_hash),
            None => Ok(None),
        }
    }

    /// The virtual trials a design's calibration or refinement (`work`)
    /// has kept so far, text by key ([`crate::trial::simulate::memo`]), for
    /// one that runs again after it was stopped part way.
    pub fn kept_trials(
        &self,
        work: DesignWork,
        protocol_hash: &ProtocolHash,
    ) -> Result<std::collections::HashMap<String, String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, trial FROM kept_trials WHERE protocol_hash = ?1 AND work = ?2")?;
        let rows = stmt.query_map(params![protocol_hash.0, kept_work(work)?], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Keeps virtual trials of a design's calibration or refinement as they
    /// finish (text by key), in one transaction; a key kept before keeps its
    /// text (the same inputs give the same trial).
    pub fn keep_trials(
        &mut self,
        work: DesignWork,
        protocol_hash: &ProtocolHash,
        trials: &[(String, String)],
    ) -> Result<()> {
        let work = kept_work(work)?;
        let tx = write_tx(&mut self.conn)?;
        {
            let mut insert = tx.prepare(
                "INSERT INTO kept_trials (protocol_hash, work, key, trial) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (protocol_hash, work, key) DO NOTHING",
            )?;
            for (key, trial) in trials {
                insert.execute(params![protocol_hash.0, work, key, trial])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Whether any calibration or refinement keeps virtual trials.
    pub fn any_kept_trials(&self) -> Result<bool> {
        Ok(self
            .conn
            .query_row("SELECT EXISTS (SELECT 1 FROM kept_trials)", [], |r| {
                r.get(0)
            })?)
    }

    /// Forgets the virtual trials kept by `work` on every design but `due`
    /// (those it still has to do: another's will never be taken up);
    /// returns how many were forgotten.
    pub fn forget_kept_trials_except(
        &mut self,
        work: DesignWork,
        due: &[ProtocolHash],
    ) -> Result<usize> {
        let work = kept_work(work)?;
        let tx = write_tx(&mut self.conn)?;
        let kept: Vec<String> = {
            let mut stmt =
                tx.prepare("SELECT DISTINCT protocol_hash FROM kept_trials WHERE work = ?1")?;
            stmt.query_map([work], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        let mut forgotten = 0;
        for hash in kept.iter().filter(|h| !due.iter().any(|d| d.0 == **h)) {
            forgotten += tx.execute(
                "DELETE FROM kept_trials WHERE protocol_hash = ?1 AND work = ?2",
                params![hash, work],
            )?;
        }
        tx.commit()?;
        Ok(forgotten)
    }

    /// Stores a design's refined calibration (the first one for a hash
    /// stands); an earlier failure of it, and the virtual trials it kept
    /// while it ran, are forgotten. Trials take it with
    /// [`Store::refine_thresholds`], or at their start.
    pub fn put_refinement(&mut self, refinement: &Refinement) -> Result<()> {
        let row = &refinement.calibration;
        let tx = write_tx(&mut self.conn)?;
        tx.execute(
            "DELETE FROM design_failures WHERE protocol_hash = ?1 AND work = 'refinement'",
            [&row.protocol_hash],
        )?;
        tx.execute(
            "DELETE FROM kept_trials WHERE protocol_hash = ?1 AND work = 'refinement'",
            [&row.protocol_hash],
        )?;
        tx.execute(
            "INSERT INTO calibration_refinements
                 (protocol_hash, null_trials, target, efficacy, boundary, futility, drop_arm, binding,
                  report_json, wall_ms, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (protocol_hash) DO NOTHING",
            params![
                row.protocol_hash,
                refinement.null_trials as i64,
                row.target,
                row.efficacy,
                row.boundary.as_str(),
                row.futility,
                row.drop_arm,
                row.binding,
                row.report_json,
                row.wall_ms,
                row.created_at
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Replaces a running (or paused) trial's locked thresholds with its
    /// design's refined calibration, in one transaction with its audit
    /// entry (`refine_threshold`, old and new), unless a look that could
    /// stop it may have been taken: its first decisive day (`deadline`) has
    /// come, or a decision at `min_blocks` blocks or more, or any stop, is
    /// stored. Until then every look only continued, whatever its
    /// thresholds, so all its decisions are taken under the refined rule,
    /// fixed before the first of them (the simulation behind it reads none
    /// of the person's data); a look in flight that read the old thresholds
    /// is refused when it is recorded ([`Store::record_decision`]).
    pub fn refine_thresholds(
        &mut self,
        trial_id: i64,
        refinement: &CalibrationRow,
        deadline: Deadline,
        actor: &str,
        now: Timestamp,
    ) -> Result<Refined> {
        let Deadline {
            min_blocks,
            refine_by,
            today,
        } = deadline;
        let tx = write_tx(&mut self.conn)?;
        // The thresholds it held, for the audit entry, as SQLite writes them.
        let current: Option<(String, Option<String>, Option<String>, String)> = tx
            .query_row(
                "SELECT status, threshold_source, thresholds_refined_at,
                        json_object('efficacy', efficacy_threshold, 'boundary', efficacy_boundary,
                                    'futility', futility_threshold, 'drop_arm', drop_arm_threshold)
                 FROM trials WHERE id = ?1 AND protocol_hash = ?2",
                params![trial_id, refinement.protocol_hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((status, source, refined_at, was)) = current else {
            return Err(StoreError::Refused(format!(
                "there is no trial {trial_id} of the design {}",
                ProtocolHash(refinement.protocol_hash.clone()).short()
            )));
        };
        let kept = if refined_at.is_some() {
            Some(KeptBecause::AlreadyRefined)
        } else if status != TrialStatus::Running.as_str() && status != TrialStatus::Paused.as_str()
        {
            Some(KeptBecause::NotRunning)
        } else if source.as_deref() != Some(ThresholdSource::Calibrated.as_str()) {
            Some(KeptBecause::NotCalibrated)
        } else if refine_by.is_none_or(|day| today >= day) {
            Some(KeptBecause::DecisiveDayCome)
        } else {
            let decided: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM decisions WHERE trial_id = ?1
                     AND (action LIKE 'stop%'
                          OR json_extract(numbers_json, '$.look.blocks_done') >= ?2))",
                params![trial_id, min_blocks],
                |r| r.get(0),
            )?;
            decided.then_some(KeptBecause::DecisiveLookTaken)
        };
        if let Some(why) = kept {
            return Ok(Refined::Kept(why));
        }
        let locked = refinement.locked();
        tx.execute(
            "UPDATE trials SET efficacy_threshold = ?2, efficacy_boundary = ?3,
                               futility_threshold = ?4, drop_arm_threshold = ?5,
                               thresholds_refined_at = ?6
             WHERE id = ?1",
            params![
                trial_id,
                locked.efficacy,
                locked.boundary.as_str(),
                locked.futility,
                locked.drop_arm,
                ts(now)
            ],
        )?;
        audit(
            &tx,
            actor,
            "refine_threshold",
            Some(trial_id),
            &serde_json::json!({
                "was": serde_json::from_str::<serde_json::Value>(&was)
                    .map_err(|e| StoreError::Invalid(format!("trial {trial_id} thresholds: {e}")))?,
                "efficacy": locked.efficacy,
                "boundary": locked.boundary.as_str(),
                "futility": locked.futility,
                "drop_arm": locked.drop_arm
            }),
            now,
        )?;
        tx.commit()?;
        Ok(Refined::Locked)
    }

    /// Records a failed calibration or simulation of a design; returns its
    /// attempts so far.
    pub fn record_design_failure(
        &mut self,
        work: DesignWork,
        protocol_hash: &ProtocolHash,
        error: &str,
        now: Timestamp,
    ) -> Result<u32> {
        Ok(self.conn.query_row(
            "INSERT INTO design_failures (protocol_hash, work, error, attempts, last_at)
             VALUES (?1, ?2, ?3, 1, ?4)
             ON CONFLICT (protocol_hash, work) DO UPDATE
                 SET error = excluded.error, attempts = attempts + 1, last_at = excluded.last_at
             RETURNING attempts",
            params![protocol_hash.0, work.as_str(), error, ts(now)],
            |r| r.get(0),
        )?)
    }

    /// Forgets the failed calibration or simulation of a proposal's design,
    /// or the failed refinement of an approved trial's, once the designs job
    /// has given up on it, so that the job tries it again: after an upgrade,
    /// or once a transient cause is gone. The failure is kept in the audit
    /// log (`calibration.retried`, `simulation.retried`,
    /// `refinement.retried`). Refused for a trial in any other state (a
    /// started trial's estimates may have been seen: whoever saw them must
    /// not choose whether its rule changes), for work the job has not given
    /// up on, and for a calibration of a design another trial already
    /// started with on its stated thresholds (its page says why from the
    /// failure; a new version of the protocol is calibrated anew). The
    /// caller checks the rest of a refinement's retry
    /// (`jobs::refinement_retry_refused`).
    pub fn retry_design(
        &mut self,
        trial_id: i64,
        work: DesignWork,
        actor: &str,
        now: Timestamp,
    ) -> Result<()> {
        let tx = write_tx(&mut self.conn)?;
        let current: Option<(String, String)> = tx
            .query_row(
                "SELECT status, protocol_hash FROM trials WHERE id = ?1",
                [trial_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((status, hash)) = current else {
            return Err(StoreError::Refused(format!("there is no trial {trial_id}")));
        };
        let what = work.as_str();
        let allowed: &[TrialStatus] = match work {
            DesignWork::Refinement => &[TrialStatus::Approved],
            DesignWork::Calibration | DesignWork::Simulation => &[TrialStatus::Proposed],
        };
        if !allowed.iter().any(|a| status == a.as_str()) {
            return Err(StoreError::Refused(match work {
                DesignWork::Refinement => format!(
                    "trial {trial_id} is {status}: only an approved trial's refinement can be tried again"
                ),
                _ => format!(
                    "trial {trial_id} is {status}: only a proposal's {what} can be tried again"
                ),
            }));
        }
        let started: Option<i64> = tx
            .query_row(
                "SELECT id FROM trials WHERE protocol_hash = ?1 AND status NOT IN ('proposed', 'approved')
                 ORDER BY id LIMIT 1",
                [&hash],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(other) = started.filter(|_| work == DesignWork::Calibration) {
            return Err(StoreError::Refused(format!(
                "trial {other} started with this protocol on its stated thresholds because its calibration failed; change the proposal (a new version is calibrated anew)"
            )));
        }
        let failure: Option<(String, u32)> = tx
            .query_row(
                "SELECT error, attempts FROM design_failures WHERE protocol_hash = ?1 AND work = ?2",
                params![hash, what],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((error, attempts)) = failure.filter(|(_, a)| *a >= DesignFailure::ATTEMPTS) else {
            return Err(StoreError::Refused(format!(
                "trial {trial_id}'s {what} has not been given up on: nothing to try again"
            )));
        };
        tx.execute(
            "DELETE FROM design_failures WHERE protocol_hash = ?1 AND work = ?2",
            params![hash, what],
        )?;
        audit(
            &tx,
            actor,
            &format!("{what}.retried"),
            Some(trial_id),
            &serde_json::json!({"protocol_hash": hash, "error": error, "attempts": attempts}),
            now,
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A design's failed calibration or simulation, if it failed.
    pub fn design_failure(
        &self,
        work: DesignWork,
        protocol_hash: &ProtocolHash,
    ) -> Result<Option<DesignFailure>> {
        Ok(self
            .conn
            .query_row(
                "SELECT error, attempts, last_at FROM design_failures
                 WHERE protocol_hash = ?1 AND work = ?2",
                params![protocol_hash.0, work.as_str()],
                |r| {
                    Ok(DesignFailure {
                        error: r.get(0)?,
                        attempts: r.get(1)?,
                        last_at: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// Stores a design's calibration (the first one for a hash stands); an
    /// earlier failure of it, and the virtual trials it kept while it ran,
    /// are forgotten.
    pub fn put_calibration(&mut self, row: &CalibrationRow) -> Result<()> {
        let tx = write_tx(&mut self.conn)?;
        tx.execute(
            "DELETE FROM design_failures WHERE protocol_hash = ?1 AND work = 'calibration'",
            [&row.protocol_hash],
        )?;
        tx.execute(
            "DELETE FROM kept_trials WHERE protocol_hash = ?1 AND work = 'calibration'",
            [&row.protocol_hash],
        )?;
        tx.execute(
            "INSERT INTO calibrations
                 (protocol_hash, target, efficacy, boundary, binding, report_json, wall_ms, created_at,
                  futility, drop_arm)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT (protocol_hash) DO NOTHING",
            params![
                row.protocol_hash,
                row.target,
                row.efficacy,
                row.boundary.as_str(),
                row.binding,
                row.report_json,
                row.wall_ms,
                row.created_at,
                row.futility,
                row.drop_arm
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The effect summaries of a stream's newest `limit` fits, oldest first:
    /// `(data_through, effects JSON, converged)`. SQLite extracts the
    /// `effects` member, so a page showing the history does not parse every
    /// fit's whole latent path.
    pub fn fit_effect_history(
        &self,
        trial_id: i64,
        stream_key: &str,
        limit: usize,
    ) -> Result<Vec<(String, String, bool)>> {
        let mut stmt = self.conn.prepare(
            "SELECT data_through, COALESCE(json_extract(result_json, '$.effects'), '[]'), converged
             FROM (SELECT id, data_through, result_json, converged FROM fits
                   WHERE trial_id = ?1 AND stream_key = ?2 ORDER BY id DESC LIMIT ?3)
             ORDER BY id",
        )?;
        let rows = stmt.query_map(params![trial_id, stream_key, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? != 0))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Decisions stored, per action.
    pub fn decision_counts(&self) -> Result<Vec<(String, i64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT action, COUNT(*) FROM decisions GROUP BY action ORDER BY action")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Fits stored, their total wall time (ms) and how many did not converge.
    pub fn fit_stats(&self) -> Result<(i64, f64, i64)> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(wall_ms), 0), COALESCE(SUM(1 - converged), 0) FROM fits",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?)
    }

    /// Queues one message unless its key is already in the outbox; whether
    /// it was queued.
    pub fn enqueue_message(&mut self, m: &NewMessage, now: Timestamp) -> Result<bool> {
        enqueue(&self.conn, m, now)
    }

    /// A trial's decisions, oldest first.
    pub fn decisions(&self, trial_id: i64) -> Result<Vec<DecisionRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, trial_id, fit_id, period, rule, action, numbers_json, created_at
             FROM decisions WHERE trial_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([trial_id], |r| {
            Ok(DecisionRow {
                id: r.get(0)?,
                trial_id: r.get(1)?,
                fit_id: r.get(2)?,
                period: r.get(3)?,
                rule: r.get(4)?,
                action: r.get(5)?,
                numbers_json: r.get(6)?,
                created_at: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A trial's life-cycle changes, oldest first.
    pub fn trial_events(&self, trial_id: i64) -> Result<Vec<TrialEventRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT from_status, to_status, actor, reason, local_date, at
             FROM trial_events WHERE trial_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([trial_id], |r| {
            Ok(TrialEventRow {
                from_status: r.get(0)?,
                to_status: r.get(1)?,
                actor: r.get(2)?,
                reason: r.get(3)?,
                local_date: r.get(4)?,
                at: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A fit by id.
    pub fn fit(&self, fit_id: i64) -> Result<Option<FitRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, trial_id, stream_key, data_through, observations, result_json, converged,
                    wall_ms, created_at, data_digest
             FROM fits WHERE id = ?1",
        )?;
        let mut rows = stmt.query_map([fit_id], fit_row)?;
        Ok(rows.next().transpose()?)
    }

    /// The adherence reports of a trial: `(day, status)`.
    pub fn adherence(&self, trial_id: i64) -> Result<Vec<(u32, String)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT day, status FROM adherence WHERE trial_id = ?1 ORDER BY day")?;
        let rows = stmt.query_map([trial_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores a fit with an audit entry; returns its id.
    pub fn insert_fit(&mut self, f: &NewFit, now: Timestamp) -> Result<i64> {
        let tx = write_tx(&mut self.conn)?;
        let id: i64 = tx.query_row(
            "INSERT INTO fits (trial_id, stream_key, data_through, observations, engine, seed, scale,
                               priors_json, result_json, converged, wall_ms, created_at, data_digest)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) RETURNING id",
            params![
                f.trial_id,
                f.stream_key,
                f.data_through.to_string(),
                f.observations as i64,
                f.engine,
                f.seed.to_string(),
                f.scale,
                f.priors_json,
                f.result_json,
                f.converged,
                f.wall_ms,
                ts(now),
                f.data_digest
            ],
            |r| r.get(0),
        )?;
        audit(
            &tx,
            "daemon",
            "fit.stored",
            Some(f.trial_id),
            &serde_json::json!({
                "fit_id": id,
                "stream": f.stream_key,
                "observations": f.observations,
                "converged": f.converged,
            }),
            now,
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// The newest fit of a trial's stream.
    pub fn latest_fit(&self, trial_id: i64, stream_key: &str) -> Result<Option<FitRow>> {
        Ok(self.fits(trial_id, stream_key, 1)?.into_iter().next())
    }

    /// The newest `limit` fits of a trial's stream, newest first.
    pub fn fits(&self, trial_id: i64, stream_key: &str, limit: usize) -> Result<Vec<FitRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, trial_id, stream_key, data_through, observations, result_json, converged,
                    wall_ms, created_at, data_digest
             FROM fits WHERE trial_id = ?1 AND stream_key = ?2 ORDER BY id DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![trial_id, stream_key, limit as i64], fit_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Daily runs of a trial: `(local_date, status)`, in date order.
    pub fn daily_runs(&self, trial_id: i64) -> Result<Vec<(Date, String)>> {
        let mut stmt = self.conn.prepare(
            "SELECT local_date, status FROM daily_runs WHERE trial_id = ?1 ORDER BY local_date",
        )?;
        let rows = stmt.query_map([trial_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (d, s) = row?;
            out.push((parse_date(&d)?, s));
        }
        Ok(out)
    }

    /// Messages due for delivery at `now`: pending ones, and ones whose
    /// attempt was interrupted (still `sending` after their backoff).
    pub fn due_messages(&self, now: Timestamp, limit: usize) -> Result<Vec<OutboxRow>> {
        self.outbox_query(
            "WHERE status IN ('pending', 'sending') AND next_attempt_at <= ?1
             ORDER BY next_attempt_at, id LIMIT ?2",
            params![ts(now), limit as i64],
        )
    }

    /// The newest `limit` outbox messages.
    pub fn recent_messages(&self, limit: usize) -> Result<Vec<OutboxRow>> {
        self.outbox_query("ORDER BY id DESC LIMIT ?1", params![limit as i64])
    }

    /// The latest local date of a message of `kind` about `trial_id`.
    pub fn latest_message_date(&self, trial_id: i64, kind: &str) -> Result<Option<Date>> {
        let date: Option<String> = self.conn.query_row(
            "SELECT MAX(local_date) FROM outbox WHERE trial_id = ?1 AND kind = ?2",
            params![trial_id, kind],
            |r| r.get(0),
        )?;
        date.as_deref().map(parse_date).transpose()
    }

    fn outbox_query(&self, tail: &str, args: impl rusqlite::Params) -> Result<Vec<OutboxRow>> {
        let sql = format!(
            "SELECT id, key, kind, recipient, subject, body_text, body_html, message_id,
                    status, attempts, created_at, delivered_to, last_error, participant_id, local_date
             FROM outbox {tail}"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(args, |r| {
            Ok(OutboxRow {
                id: r.get(0)?,
                key: r.get(1)?,
                kind: r.get(2)?,
                recipient: r.get(3)?,
                subject: r.get(4)?,
                body_text: r.get(5)?,
                body_html: r.get(6)?,
                message_id: r.get(7)?,
                status: r.get(8)?,
                attempts: r.get(9)?,
                created_at: r.get(10)?,
                delivered_to: r.get(11)?,
                last_error: r.get(12)?,
                participant_id: r.get(13)?,
                local_date: r.get(14)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records that an attempt starts, before it starts: the row becomes
    /// `sending` and is not due again before `retry_at`, so a crash mid-send
    /// is retried later rather than immediately in a loop. A message about
    /// a trial's day whose trial is no longer running is withheld instead
    /// (marked failed and withheld), in the same transaction, and given
    /// back if it runs again (resumed, or its stop undone).
    pub fn mark_attempt(&mut self, id: i64, retry_at: Timestamp) -> Result<Attempt> {
        begin_attempt(&mut self.conn, &EMAIL_ATTEMPT, id, retry_at)
    }

    /// Marks a message delivered.
    pub fn mark_sent(&mut self, id: i64, delivered_to: &str, now: Timestamp) -> Result<()> {
        self.conn.execute(
            "UPDATE outbox SET status = 'sent', sent_at = ?2, delivered_to = ?3, last_error = NULL
             WHERE id = ?1",
            params![id, ts(now), delivered_to],
        )?;
        Ok(())
    }

    /// Records a temporary failure; the message is due again at `retry_at`.
    pub fn mark_retry(&mut self, id: i64, error: &str, retry_at: Timestamp) -> Result<()> {
        self.conn.execute(
            "UPDATE outbox SET status = 'pending', last_error = ?2, next_attempt_at = ?3 WHERE id = ?1",
            params![id, error, ts(retry_at)],
        )?;
        Ok(())
    }

    /// Makes every email waiting out a retry after a failure (pending, its
    /// last attempt ended with an error), and every push waiting (its own
    /// retry, or its channel's), due at `now`; returns how many emails and
    /// pushes. At start-up: a restart is how a setting is mended (an SMTP
    /// password, a push token), and what waited should not wait out a
    /// backoff of up to six hours more. An attempt a crash cut short
    /// (`sending`) keeps its backoff, so a message that crashes the daemon
    /// is not tried again at every restart.
    pub fn retry_waiting_now(&mut self, now: Timestamp) -> Result<(usize, usize)> {
        let tx = self.conn.transaction()?;
        let mails = tx.execute(
            "UPDATE outbox SET next_attempt_at = ?1
             WHERE status = 'pending' AND last_error IS NOT NULL AND next_attempt_at > ?1",
            [ts(now)],
        )?;
        let pushes = tx.execute(
            "UPDATE pushes SET next_attempt_at = ?1
             WHERE status = 'pending' AND next_attempt_at > ?1",
            [ts(now)],
        )?;
        tx.commit()?;
        Ok((mails, pushes))
    }

    /// Records a permanent failure: the message is not retried.
    pub fn mark_failed(&mut self, id: i64, error: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE outbox SET status = 'failed', last_error = ?2 WHERE id = ?1",
            params![id, error],
        )?;
        Ok(())
    }

    /// Gives push `channel` of participant `participant_id` every message
    /// of theirs queued since `since` that it has not had (a channel added
    /// later gets the last day's, not the whole history). Returns how many.
    pub fn queue_pushes(
        &mut self,
        participant_id: i64,
        channel: &str,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<usize> {
        Ok(self.conn.execute(
            "INSERT INTO pushes (message_id, channel, next_attempt_at, created_at)
             SELECT id, ?2, ?4, ?4 FROM outbox WHERE participant_id = ?1 AND created_at >= ?3
             ON CONFLICT (message_id, channel) DO NOTHING",
            params![participant_id, channel, ts(since), ts(now)],
        )?)
    }

    /// Pushes due now (pending, or a `sending` one whose attempt crashed
    /// and whose backoff has passed), oldest first, with their messages.
    pub fn due_pushes(&self, now: Timestamp, limit: usize) -> Result<Vec<PushDue>> {
        let mut stmt = self.conn.prepare(
            "SELECT p.id, p.channel, p.attempts, o.participant_id, o.kind, o.local_date,
                    o.subject, o.body_text
             FROM pushes p JOIN outbox o ON o.id = p.message_id
             WHERE p.status IN ('pending', 'sending') AND p.next_attempt_at <= ?1
             ORDER BY p.next_attempt_at, p.id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![ts(now), limit as i64], |r| {
            Ok(PushDue {
                id: r.get(0)?,
                channel: r.get(1)?,
                attempts: r.get(2)?,
                participant_id: r.get(3)?,
                kind: r.get(4)?,
                local_date: r.get(5)?,
                subject: r.get(6)?,
                body_text: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records that an attempt at push `id` starts, before it starts, as
    /// [`Store::mark_attempt`] does for the email (and withholds it alike).
    pub fn begin_push(&mut self, id: i64, retry_at: Timestamp) -> Result<Attempt> {
        begin_attempt(&mut self.conn, &PUSH_ATTEMPT, id, retry_at)
    }

    /// Records what happened to push `id` (its attempt is recorded before
    /// it starts: [`Store::begin_push`]).
    pub fn record_push(&mut self, id: i64, step: PushStep<'_>) -> Result<()> {
        match step {
            PushStep::Sent { at } => self.conn.execute(
                "UPDATE pushes SET status = 'sent', sent_at = ?2, last_error = NULL WHERE id = ?1",
                params![id, ts(at)],
            )?,
            PushStep::Retry { error, retry_at } => {
                // A failure to retry is the channel's (its server down, or
                // refusing it), not the message's: the channel's other
                // pending pushes wait as long, so that they neither fill
                // every run's batch nor knock on that server once a run.
                let tx = self.conn.transaction()?;
                tx.execute(
                    "UPDATE pushes SET status = 'pending', last_error = ?2, next_attempt_at = ?3
                     WHERE id = ?1",
                    params![id, error, ts(retry_at)],
                )?;
                tx.execute(
                    "UPDATE pushes SET next_attempt_at = ?2
                     WHERE status = 'pending' AND next_attempt_at < ?2
                       AND channel = (SELECT channel FROM pushes WHERE id = ?1)",
                    params![id, ts(retry_at)],
                )?;
                tx.commit()?;
                1
            }
            PushStep::Failed { error } => self.conn.execute(
                "UPDATE pushes SET status = 'failed', last_error = ?2 WHERE id = ?1",
                params![id, error],
            )?,
        };
        Ok(())
    }

    /// Every push of channels like `channel_prefix` (e.g. `ntfy:`), oldest
    /// first.
    pub fn pushes(&self, channel_prefix: &str) -> Result<Vec<PushRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT o.key, p.channel, p.status, p.attempts, p.last_error
             FROM pushes p JOIN outbox o ON o.id = p.message_id
             WHERE substr(p.channel, 1, length(?1)) = ?1 ORDER BY p.id",
        )?;
        let rows = stmt.query_map(params![channel_prefix], |r| {
            Ok(PushRow {
                message_key: r.get(0)?,
                channel: r.get(1)?,
                status: r.get(2)?,
                attempts: r.get(3)?,
                last_error: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Appends to the audit log.
    pub fn audit(
        &mut self,
        actor: &str,
        action: &str,
        trial_id: Option<i64>,
        detail: &serde_json::Value,
        now: Timestamp,
    ) -> Result<()> {
        audit(&self.conn, actor, action, trial_id, detail, now)
    }

    /// Messages not yet delivered (a cheap query for `/healthz`).
    pub fn outbox_backlog(&self) -> Result<i64> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM outbox WHERE status IN ('pending', 'sending')",
            [],
            |r| r.get(0),
        )?)
    }

    /// How delivery stands, emails and pushes together, for `/healthz`:
    /// counts only (the errors name servers, and `/healthz` is public).
    pub fn delivery_health(&self, now: Timestamp) -> Result<DeliveryHealth> {
        // Failed twice in a row, not one blip; given up on after being
        // tried (a message whose day passed before any try, a push of a
        // channel since removed, or a day's message withheld as its trial
        // no longer runs, is the policy's, not trouble), among those queued
        // in the last two days.
        let since = ts(now - jiff::SignedDuration::from_hours(48));
        let (retrying, failed_recently) = self.conn.query_row(
            "SELECT
                 (SELECT COUNT(*) FROM outbox
                   WHERE status IN ('pending', 'sending') AND last_error IS NOT NULL AND attempts >= 2)
               + (SELECT COUNT(*) FROM pushes
                   WHERE status IN ('pending', 'sending') AND last_error IS NOT NULL AND attempts >= 2),
                 (SELECT COUNT(*) FROM outbox WHERE status = 'failed' AND attempts > 0
                   AND created_at >= ?1 AND withheld = 0)
               + (SELECT COUNT(*) FROM pushes WHERE status = 'failed' AND attempts > 0
                   AND created_at >= ?1 AND withheld = 0)",
            params![since],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(DeliveryHealth {
            retrying,
            failed_recently,
        })
    }

    /// Row counts of the main tables.
    pub fn counts(&self) -> Result<Counts> {
        let one = |sql: &str| -> Result<i64> { Ok(self.conn.query_row(sql, [], |r| r.get(0))?) };
        Ok(Counts {
            participants: one("SELECT COUNT(*) FROM participants")?,
            observations: one("SELECT COUNT(*) FROM observations")?,
            trials: one("SELECT COUNT(*) FROM trials")?,
            schedule_days: one("SELECT COUNT(*) FROM schedule")?,
            daily_runs: one("SELECT COUNT(*) FROM daily_runs")?,
            outbox: one("SELECT COUNT(*) FROM outbox")?,
            outbox_pending: one("SELECT COUNT(*) FROM outbox WHERE status != 'sent'")?,
            fits: one("SELECT COUNT(*) FROM fits")?,
            audit: one("SELECT COUNT(*) FROM audit_log")?,
        })
    }
}

/// `path` with `suffix` appended to its file name (`nof1d.sqlite-wal`).
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// What in `path`'s folder shows that a database lived there before: a
/// non-empty write-ahead log or rollback journal (which may hold all its
/// data), the address file and mail folder that every earlier start left,
/// another SQLite file (a backup, a converted copy).
fn earlier_database_signs(path: &Path) -> Vec<String> {
    let mut signs = Vec::new();
    for suffix in ["-wal", "-journal"] {
        let p = sibling(path, suffix);
        if let Ok(m) = std::fs::metadata(&p)
            && m.len() > 0
        {
            signs.push(format!("{} ({} bytes)", p.display(), m.len()));
        }
    }
    if let Some(dir) = path.parent() {
        let addr = dir.join("listen.addr");
        if addr.exists() {
            signs.push(format!("{} (written by every start)", addr.display()));
        }
        let mail = dir.join("mail");
        if std::fs::read_dir(&mail).is_ok_and(|mut d| d.next().is_some()) {
            signs.push(format!("{} (emails written before)", mail.display()));
        }
        // Another SQLite file here (a backup, a converted copy) is one too.
        let own = path.file_name();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let text = name.to_string_lossy();
            let other_db = Some(name.as_os_str()) != own
                && (text.ends_with(".sqlite") || text.ends_with(".sqlite.rekey"));
            if other_db && entry.metadata().is_ok_and(|m| m.is_file() && m.len() > 0) {
                signs.push(format!(
                    "{} (another database file)",
                    entry.path().display()
                ));
            }
        }
    }
    signs
}

/// What [`rekey_file`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Rekeyed {
    /// Tables copied.
    pub tables: usize,
    /// Rows copied, all tables together (checked equal in the copy).
    pub rows: i64,
    /// Size of the new file.
    pub bytes: u64,
}

/// Converts the database at `path` from `from` to `to` (each a passphrase,
/// or `None` for a plain file): `nof1d encrypt` and `nof1d decrypt`.
///
/// Copy, verify, swap: SQLCipher's `sqlcipher_export` writes a new file
/// beside it (0600); the copy must pass `integrity_check` and have the same
/// schema version and the same row count in every table; only then is it
/// renamed over the old file (atomic). The caller holds the data-folder
/// lock, so no daemon writes meanwhile. A failure leaves the old file as it
/// was.
pub fn rekey_file(path: &Path, from: Option<&Secret>, to: Option<&Secret>) -> Result<Rekeyed> {
    let key_error = |detail: &str| StoreError::Key {
        path: path.into(),
        detail: detail.into(),
    };
    if !encryption_available() {
        return Err(key_error(
            "this nof1d was built without encryption (the cargo feature `encryption`, on by default)",
        ));
    }
    if from.is_none() && to.is_none() {
        return Err(key_error(
            "neither the old nor the new file is encrypted: nothing to do",
        ));
    }
    let file_error = |p: &Path, source| StoreError::File {
        path: p.into(),
        source,
    };
    if std::fs::metadata(path).map_or(true, |m| m.len() == 0) {
        return Err(StoreError::Refused(format!(
            "there is no database at {}",
            path.display()
        )));
    }
    let tmp = sibling(path, ".rekey");
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let p = sibling(&tmp, suffix);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(file_error(&p, e)),
            _ => {}
        }
    }
    let mut source = Store::open_keyed(path, from)?;
    source.checkpoint()?;
    // Another nof1d command (they do not take the folder lock) that writes
    // from now on changes this; checked again just before the swap.
    let data_version = |s: &Store| -> Result<i64> {
        Ok(s.conn.query_row("PRAGMA data_version", [], |r| r.get(0))?)
    };
    let version_at_start = data_version(&source)?;
    let version: i64 = source
        .conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tables: Vec<String> = {
        let mut stmt = source.conn.prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )?;
        stmt.query_map([], |r| r.get(0))?
            .collect::<std::result::Result<_, _>>()?
    };
    // Table names are identifiers, which SQL cannot take as parameters:
    // only the schema's own simple names are counted.
    if let Some(odd) = tables
        .iter()
        .find(|t| !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    {
        return Err(StoreError::Invalid(format!(
            "unexpected table name {odd:?}"
        )));
    }
    let count = |conn: &Connection, schema: &str| -> Result<Vec<i64>> {
        tables
            .iter()
            .map(|t| {
                Ok(
                    conn.query_row(&format!("SELECT COUNT(*) FROM {schema}.\"{t}\""), [], |r| {
                        r.get(0)
                    })?,
                )
            })
            .collect()
    };
    let before = count(&source.conn, "main")?;
    crate::service::private::create_new(&tmp).map_err(|e| file_error(&tmp, e))?;
    let new_key = to.map_or("", |k| k.expose());
    let tmp_text = tmp.to_string_lossy().into_owned();
    source.conn.execute(
        "ATTACH DATABASE ?1 AS rekeyed KEY ?2",
        params![tmp_text, new_key],
    )?;
    let exported = source
        .conn
        .query_row("SELECT sqlcipher_export('rekeyed')", [], |_| Ok(()))
        .and_then(|()| {
            source
                .conn
                .pragma_update(Some("rekeyed"), "user_version", version)
        });
    let detached = source.conn.execute("DETACH DATABASE rekeyed", []);
    if let Err(e) = exported.and(detached) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    let copy = Store::open_read_only_keyed(&tmp, to)?;
    let ok = copy.integrity_check()?;
    let copied_version: i64 = copy
        .conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let after = count(&copy.conn, "main")?;
    drop(copy);
    let changed = data_version(&source)? != version_at_start
        || std::fs::metadata(sibling(path, "-wal")).is_ok_and(|m| m.len() > 0);
    drop(source);
    if changed {
        let _ = std::fs::remove_file(&tmp);
        return Err(StoreError::Refused(format!(
            "{} changed while it was converted (another nof1d command wrote to it); it is unchanged: run this again with nothing else using the data folder",
            path.display()
        )));
    }
    if ok != "ok" || copied_version != version || after != before {
        let _ = std::fs::remove_file(&tmp);
        return Err(StoreError::Invalid(format!(
            "the converted copy did not match (integrity {ok}, schema {copied_version} vs {version}, rows {after:?} vs {before:?}); {} is unchanged",
            path.display()
        )));
    }
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| file_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_error(path, e))?;
    if let Some(dir) = path.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    let bytes = std::fs::metadata(path)
        .map_err(|e| file_error(path, e))?
        .len();
    Ok(Rekeyed {
        tables: tables.len(),
        rows: before.iter().sum(),
        bytes,
    })
}

/// True when SQLite was built with SQLCipher (the `encryption` feature).
pub fn encryption_available() -> bool {
    // Asked of SQLite once: it is a property of the build.
    static AVAILABLE: LazyLock<bool> = LazyLock::new(|| {
        Connection::open_in_memory()
            .and_then(|c| {
                c.query_row("PRAGMA cipher_version", [], |r| r.get::<_, String>(0))
                    .optional()
            })
            .is_ok_and(|v| v.is_some())
    });
    *AVAILABLE
}

/// Keys a freshly opened connection (`PRAGMA key`, before anything else
/// reads the file), refusing where SQLCipher is not built in.
fn apply_key(conn: &Connection, path: &Path, key: Option<&Secret>) -> Result<()> {
    let Some(key) = key else { return Ok(()) };
    if !encryption_available() {
        return Err(StoreError::Key {
            path: path.into(),
            detail: "database.key is set, but this nof1d was built without encryption (the cargo feature `encryption`, on by default)".into(),
        });
    }
    conn.pragma_update(None, "key", key.expose())?;
    Ok(())
}

/// A non-empty file that does not start with SQLite's magic header (an
/// encrypted database's first page is random-looking).
fn looks_encrypted(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| &head != b"SQLite format 3\0")
}

/// Refuses files that are not SQLite, not nof1d's, or from a newer nof1d,
/// without writing anything.
fn check_identity(conn: &Connection, path: &Path, keyed: bool) -> Result<()> {
    let version: i64 = match conn.query_row("PRAGMA user_version", [], |r| r.get(0)) {
        Ok(v) => v,
        Err(e) if keyed => {
            return Err(StoreError::Key {
                path: path.into(),
                detail: format!(
                    "cannot be read with database.key ({e}): the key is wrong, or the file is not encrypted (then remove database.key, or run `nof1d encrypt` with it set)"
                ),
            });
        }
        Err(e) => {
            let hint = if looks_encrypted(path) {
                "; if it is an encrypted nof1d database, set database.key to its passphrase"
            } else {
                ""
            };
            return Err(StoreError::NotADatabase {
                path: path.into(),
                detail: format!("{e}{hint}"),
            });
        }
    };
    if version > schema_version() {
        return Err(StoreError::TooNew {
            path: path.into(),
            found: version,
            supported: schema_version(),
        });
    }
    if version == 0 {
        let tables: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| StoreError::NotADatabase {
                path: path.into(),
                detail: e.to_string(),
            })?;
        if tables > 0 {
            return Err(StoreError::Foreign { path: path.into() });
        }
    }
    Ok(())
}

fn add_run_counts(tx: &Transaction<'_>, run_id: i64, counts: Upserted) -> Result<()> {
    tx.execute(
        "UPDATE source_runs SET stored = stored + ?2, updated = updated + ?3,
             unchanged = unchanged + ?4, withdrawn = withdrawn + ?5 WHERE id = ?1",
        params![
            run_id,
            counts.stored as i64,
            counts.updated as i64,
            counts.unchanged as i64,
            counts.withdrawn as i64
        ],
    )?;
    Ok(())
}

fn check_finite(observations: &[NewObservation]) -> Result<()> {
    if let Some(bad) = observations.iter().find(|o| !o.value.is_finite()) {
        return Err(StoreError::Refused(format!(
            "record {:?} of stream {:?} has a non-finite value",
            bad.source_record_id, bad.stream
        )));
    }
    Ok(())
}

/// Stores observations of one source: a record not yet stored is inserted;
/// one stored with another value, time or day is updated in place (sources
/// re-send whole days as they fill), as is one withdrawn and sent again
/// (restored); one stored as it is changes nothing.
fn upsert_observations(
    tx: &Transaction<'_>,
    source_id: i64,
    observations: &[NewObservation],
    now: Timestamp,
) -> Result<Upserted> {
    let participant_id: i64 = tx.query_row(
        "SELECT participant_id FROM sources WHERE id = ?1",
        [source_id],
        |r| r.get(0),
    )?;
    let mut counts = Upserted::default();
    let mut stream_ids: std::collections::HashMap<&str, i64> = Default::default();
    // Two plain statements rather than one upsert with RETURNING: a new
    // record (the bulk of an import) then costs one insert and no
    // statement journal; only a record already stored runs the update.
    let mut insert = tx.prepare_cached(
        "INSERT INTO observations
             (stream_id, source_id, source_record_id, observed_at, local_date, value, unit,
              inserted_at, ended_at, utc_offset, origin)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (source_id, source_record_id) DO NOTHING",
    )?;
    let mut update = tx.prepare_cached(
        "UPDATE observations SET
             stream_id = ?1, observed_at = ?4, local_date = ?5, value = ?6, unit = ?7,
             updated_at = ?8, ended_at = ?9, utc_offset = ?10, origin = ?11,
             withdrawn_at = NULL
         WHERE source_id = ?2 AND source_record_id = ?3
           AND (value IS NOT ?6 OR observed_at IS NOT ?4 OR ended_at IS NOT ?9
                OR local_date IS NOT ?5 OR stream_id IS NOT ?1 OR unit IS NOT ?7
                OR withdrawn_at IS NOT NULL)",
    )?;
    let now_text = ts(now);
    for o in observations {
        let stream_id = match stream_ids.get(o.stream.as_str()) {
            Some(id) => *id,
            None => {
                let id = ensure_stream(tx, participant_id, &o.stream, &o.unit, now)?;
                stream_ids.insert(&o.stream, id);
                id
            }
        };
        let values = params![
            stream_id,
            source_id,
            o.source_record_id,
            ts(o.observed_at),
            o.local_date.to_string(),
            o.value,
            o.unit,
            now_text,
            o.ended_at.map(ts),
            o.utc_offset.map(|off| off.to_string()),
            o.origin
        ];
        if insert.execute(values)? == 1 {
            counts.stored += 1;
        } else if update.execute(values)? == 1 {
            counts.updated += 1;
        } else {
            counts.unchanged += 1;
        }
    }
    Ok(counts)
}

fn ensure_stream(
    tx: &Transaction<'_>,
    participant_id: i64,
    key: &str,
    unit: &str,
    now: Timestamp,
) -> Result<i64> {
    tx.execute(
        "INSERT INTO streams (participant_id, key, unit, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (participant_id, key) DO NOTHING",
        params![participant_id, key, unit, ts(now)],
    )?;
    Ok(tx.query_row(
        "SELECT id FROM streams WHERE participant_id = ?1 AND key = ?2",
        params![participant_id, key],
        |r| r.get(0),
    )?)
}

/// Whether trial `?1`'s stop stands (cannot be undone): a decision stopped
/// it, or an adverse event was reported ([`Store::stop_stands`]).
const STOP_STANDS: &str =
    "SELECT EXISTS (SELECT 1 FROM decisions WHERE trial_id = ?1 AND action LIKE 'stop%')
     OR EXISTS (SELECT 1 FROM adverse_events WHERE trial_id = ?1)";

/// Message kinds about one day of a running trial: its assignment, its
/// evening reminder, the note that its data stopped coming.
const TRIAL_DAY_KINDS: [&str; 3] = ["assignment", "reminder", "nudge"];

/// Why outbox message `message` is not delivered, if it is one of
/// [`TRIAL_DAY_KINDS`] and its trial was stopped or paused after it was
/// queued (a person stopped it while the mail server was down, say): it
/// would tell them to do today what no longer runs.
fn withheld(tx: &Transaction<'_>, message: i64) -> Result<Option<String>> {
    let (kind, status): (String, Option<String>) = tx.query_row(
        "SELECT o.kind, t.status FROM outbox o LEFT JOIN trials t ON t.id = o.trial_id
         WHERE o.id = ?1",
        [message],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(match status {
        Some(status)
            if TRIAL_DAY_KINDS.contains(&kind.as_str())
                && status != TrialStatus::Running.as_str() =>
        {
            Some(format!("not delivered: its trial is {status}"))
        }
        _ => None,
    })
}

/// Gives back to the outbox what was withheld while trial `trial_id` was
/// paused or stopped, once it runs again (resumed, or its stop undone):
/// pending and due at `now`, by email and push. A day's message whose day
/// has passed meanwhile is then given up on at delivery, as any other.
fn give_back_withheld(tx: &Connection, trial_id: i64, now: Timestamp) -> Result<()> {
    tx.execute(
        "UPDATE pushes SET status = 'pending', withheld = 0, last_error = NULL,
                           next_attempt_at = ?2
         WHERE status = 'failed' AND withheld = 1
           AND message_id IN (SELECT id FROM outbox WHERE trial_id = ?1)",
        params![trial_id, ts(now)],
    )?;
    tx.execute(
        "UPDATE outbox SET status = 'pending', withheld = 0, last_error = NULL,
                           next_attempt_at = ?2
         WHERE trial_id = ?1 AND status = 'failed' AND withheld = 1",
        params![trial_id, ts(now)],
    )?;
    Ok(())
}

/// The statements of one delivery table that [`begin_attempt`] runs.
struct AttemptSql {
    /// The outbox message behind row `?1`.
    message: &'static str,
    /// Withholds row `?1`, with the reason `?2`.
    withhold: &'static str,
    /// Starts an attempt at row `?1`, due again at `?2` if it crashes.
    start: &'static str,
}

/// An email's attempt ([`Store::mark_attempt`]).
const EMAIL_ATTEMPT: AttemptSql = AttemptSql {
    message: "SELECT id FROM outbox WHERE id = ?1",
    withhold: "UPDATE outbox SET status = 'failed', withheld = 1, last_error = ?2 WHERE id = ?1",
    start: "UPDATE outbox SET status = 'sending', attempts = attempts + 1, next_attempt_at = ?2
            WHERE id = ?1",
};

/// A push's attempt ([`Store::begin_push`]).
const PUSH_ATTEMPT: AttemptSql = AttemptSql {
    message: "SELECT message_id FROM pushes WHERE id = ?1",
    withhold: "UPDATE pushes SET status = 'failed', withheld = 1, last_error = ?2 WHERE id = ?1",
    start: "UPDATE pushes SET status = 'sending', attempts = attempts + 1, next_attempt_at = ?2
            WHERE id = ?1",
};

/// Records that an attempt at row `id` starts, before it starts, or
/// withholds it ([`withheld`]), in one transaction: a trial stopped in
/// between cannot slip a day's message through.
fn begin_attempt(
    conn: &mut Connection,
    sql: &AttemptSql,
    id: i64,
    retry_at: Timestamp,
) -> Result<Attempt> {
    let tx = write_tx(conn)?;
    let message: i64 = tx.query_row(sql.message, [id], |r| r.get(0))?;
    if let Some(why) = withheld(&tx, message)? {
        tx.execute(sql.withhold, params![id, why])?;
        tx.commit()?;
        return Ok(Attempt::Withheld(why));
    }
    tx.execute(sql.start, params![id, ts(retry_at)])?;
    tx.commit()?;
    Ok(Attempt::Started)
}

/// Queues `m` unless its key is in the outbox already; whether it was.
fn enqueue(conn: &Connection, m: &NewMessage, now: Timestamp) -> Result<bool> {
    let inserted = conn.execute(
        "INSERT INTO outbox (key, participant_id, trial_id, kind, local_date, recipient, subject,
                             body_text, body_html, message_id, next_attempt_at, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)
         ON CONFLICT (key) DO NOTHING",
        params![
            m.key,
            m.participant_id,
            m.trial_id,
            m.kind,
            m.local_date.map(|d| d.to_string()),
            m.recipient,
            m.subject,
            m.body_text,
            m.body_html,
            m.message_id,
            ts(now)
        ],
    )?;
    Ok(inserted == 1)
}

/// Records an adverse event and, unless the trial is already stopped,
/// stops it for safety with its decision (inside the caller's transaction).
fn adverse_event_tx(
    tx: &Connection,
    trial_id: i64,
    local_date: Date,
    note: &str,
    channel: &str,
    actor: &str,
    now: Timestamp,
) -> Result<()> {
    tx.execute(
        "INSERT INTO adverse_events (trial_id, local_date, note, channel, reported_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![trial_id, local_date.to_string(), note, channel, ts(now)],
    )?;
    let status: String =
        tx.query_row("SELECT status FROM trials WHERE id = ?1", [trial_id], |r| {
            r.get(0)
        })?;
    if status != TrialStatus::Stopped.as_str() {
        tx.execute(
            "INSERT INTO decisions (trial_id, fit_id, rule, action, numbers_json, created_at, period)
             VALUES (?1, NULL, ?2, ?3, ?4, ?5, NULL)",
            params![
                trial_id,
                "participant reported an adverse event",
                Action::StopSafety.name(),
                serde_json::json!({"note": note, "channel": channel, "local_date": local_date.to_string()}).to_string(),
                ts(now)
            ],
        )?;
        change_status_tx(
            tx,
            &StatusChange {
                trial_id,
                to: TrialStatus::Stopped,
                actor,
                reason: "safety: adverse event reported",
                local_date,
                start_date: None,
                shifted: &[],
                reviewed: None,
            },
            now,
        )?;
    }
    Ok(())
}

/// One life-cycle change to make.
#[derive(Debug, Clone)]
pub struct StatusChange<'a> {
    /// The trial.
    pub trial_id: i64,
    /// The new status.
    pub to: TrialStatus,
    /// Who or what caused it ('daemon', 'cli', 'participant', ...).
    pub actor: &'a str,
    /// Why.
    pub reason: &'a str,
    /// The participant's local date.
    pub local_date: Date,
    /// Approval: the start date to set.
    pub start_date: Option<Date>,
    /// Resuming: the unrun schedule rows at their new dates.
    pub shifted: &'a [DatedDay],
    /// The SHA-256 of the protocol the person reviewed (an approval from a
    /// page that showed it): refused if the stored protocol is another,
    /// edited since in another tab or by another person.
    pub reviewed: Option<&'a str>,
}

/// A write transaction that takes the write lock at its start (IMMEDIATE).
/// The daemon, an importer and the command line each write on their own
/// connection: a deferred transaction that reads first and then writes
/// fails busy at once where another one wrote in between (SQLite cannot
/// wait there), while this one waits its turn for `busy_timeout`.
fn write_tx(conn: &mut Connection) -> rusqlite::Result<Transaction<'_>> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}

fn change_status_tx(tx: &Connection, c: &StatusChange<'_>, now: Timestamp) -> Result<()> {
    let from: Option<(String, String)> = tx
        .query_row(
            "SELECT status, protocol_hash FROM trials WHERE id = ?1",
            [c.trial_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((from, stored_hash)) = from else {
        return Err(StoreError::Refused(format!(
            "there is no trial {}",
            c.trial_id
        )));
    };
    if let Some(reviewed) = c.reviewed
        && reviewed != stored_hash
    {
        return Err(StoreError::Refused(format!(
            "trial {}'s protocol was changed after this page was shown (sha256 {stored_hash} \
             now): reload the page, review the new version and approve again",
            c.trial_id
        )));
    }
    let from_status = TrialStatus::parse(&from)
        .ok_or_else(|| StoreError::Invalid(format!("trial {} status {from:?}", c.trial_id)))?;
    if !from_status.can_become(c.to) {
        return Err(StoreError::Refused(format!(
            "trial {} is {from}; it cannot become {}",
            c.trial_id,
            c.to.as_str()
        )));
    }
    tx.execute(
        "UPDATE trials SET status = ?2, status_changed_at = ?3,
                stop_reason = CASE WHEN ?2 = 'stopped' THEN ?4 ELSE stop_reason END,
                start_date = COALESCE(?5, start_date)
         WHERE id = ?1",
        params![
            c.trial_id,
            c.to.as_str(),
            ts(now),
            c.reason,
            c.start_date.map(|d| d.to_string())
        ],
    )?;
    // Forward shifts: move the latest rows first so no two rows share a date midway.
    let mut shifted: Vec<&DatedDay> = c.shifted.iter().collect();
    shifted.sort_by_key(|r| std::cmp::Reverse(r.day));
    for r in shifted {
        tx.execute(
            "UPDATE schedule SET local_date = ?3 WHERE trial_id = ?1 AND day = ?2",
            params![c.trial_id, r.day, r.local_date.to_string()],
        )?;
    }
    if c.to == TrialStatus::Running {
        give_back_withheld(tx, c.trial_id, now)?;
    }
    tx.execute(
        "INSERT INTO trial_events (trial_id, from_status, to_status, actor, reason, local_date, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            c.trial_id,
            from,
            c.to.as_str(),
            c.actor,
            c.reason,
            c.local_date.to_string(),
            ts(now)
        ],
    )?;
    audit(
        tx,
        c.actor,
        &format!("trial.{}", c.to.as_str()),
        Some(c.trial_id),
        &serde_json::json!({"from": from, "reason": c.reason}),
        now,
    )
}

fn insert_schedule(tx: &Connection, trial_id: i64, rows: &[DatedDay]) -> Result<()> {
    let mut stmt = tx.prepare(
        "INSERT INTO schedule (trial_id, day, local_date, period, block, arm, washout)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for d in rows {
        stmt.execute(params![
            trial_id,
            d.day,
            d.local_date.to_string(),
            d.period,
            d.block,
            d.arm as i64,
            d.washout
        ])?;
    }
    Ok(())
}

fn participant_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ParticipantRow> {
    Ok(ParticipantRow {
        id: r.get(0)?,
        key: r.get(1)?,
        name: r.get(2)?,
        email: r.get(3)?,
        time_zone: r.get(4)?,
        assignment_time: r.get(5)?,
        is_demo: r.get(6)?,
    })
}

fn fit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FitRow> {
    Ok(FitRow {
        id: r.get(0)?,
        trial_id: r.get(1)?,
        stream_key: r.get(2)?,
        data_through: {
            let text: String = r.get(3)?;
            text.parse().map_err(|e: jiff::Error| {
                rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
            })?
        },
        observations: r.get(4)?,
        result_json: r.get(5)?,
        converged: r.get(6)?,
        wall_ms: r.get(7)?,
        created_at: r.get(8)?,
        data_digest: r.get(9)?,
    })
}

/// The status of trial `trial_id`, refused where there is no such trial or
/// it is not `participant_id`'s (a link or form may only touch its own).
fn owned_trial_status(
    tx: &rusqlite::Transaction<'_>,
    trial_id: i64,
    participant_id: i64,
) -> Result<String> {
    let trial: Option<(i64, String)> = tx
        .query_row(
            "SELECT participant_id, status FROM trials WHERE id = ?1",
            [trial_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((owner, status)) = trial else {
        return Err(StoreError::Refused(format!("there is no trial {trial_id}")));
    };
    if owner != participant_id {
        return Err(StoreError::Refused(
            "this trial belongs to another participant".into(),
        ));
    }
    Ok(status)
}

/// One adherence report or rating for one trial day, from a link or a form.
struct DayEntry<'a> {
    participant_id: i64,
    trial_id: i64,
    date: Date,
    what: &'a LinkWhat<'a>,
    channel: &'a str,
}

/// Records a day entry inside `tx`: `Ok(words)` when recorded, `Err(value)`
/// when the day already has a rating (the first rating of a day stands,
/// whichever channel gave it).
fn record_day_entry(
    tx: &rusqlite::Transaction<'_>,
    e: &DayEntry<'_>,
    now: Timestamp,
) -> Result<std::result::Result<String, f64>> {
    owned_trial_status(tx, e.trial_id, e.participant_id)?;
    let owner = e.participant_id;
    let day: Option<u32> = tx
        .query_row(
            "SELECT day FROM schedule WHERE trial_id = ?1 AND local_date = ?2",
            params![e.trial_id, e.date.to_string()],
            |r| r.get(0),
        )
        .optional()?;
    let Some(day) = day else {
        return Err(StoreError::Refused(format!(
            "{} is not a day of trial {}",
            e.date, e.trial_id
        )));
    };
    let words = match e.what {
        LinkWhat::Adherence(status) => {
            let earlier: Option<String> = tx
                .query_row(
                    "SELECT status FROM adherence WHERE trial_id = ?1 AND day = ?2",
                    params![e.trial_id, day],
                    |r| r.get(0),
                )
                .optional()?;
            tx.execute(
                "INSERT INTO adherence (trial_id, day, status, arm_taken, note, channel, reported_at)
                 VALUES (?1, ?2, ?3, NULL, '', ?5, ?4)
                 ON CONFLICT (trial_id, day) DO UPDATE SET status = excluded.status,
                     channel = excluded.channel, reported_at = excluded.reported_at",
                params![e.trial_id, day, status, ts(now), e.channel],
            )?;
            match earlier {
                Some(before) if before != *status => {
                    format!("recorded {status} for {} (replacing {before})", e.date)
                }
                _ => format!("recorded {status} for {}", e.date),
            }
        }
        LinkWhat::Rating {
            stream,
            unit,
            value,
            observed_at,
            source_id,
        } => {
            let stream_id = ensure_stream(tx, owner, stream, unit, now)?;
            let record = format!("rating/{}/{}/{stream}", e.trial_id, e.date);
            let inserted = tx.execute(
                "INSERT INTO observations
                     (stream_id, source_id, source_record_id, observed_at, local_date, value, unit, inserted_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (source_id, source_record_id) DO NOTHING",
                params![stream_id, source_id, record, ts(*observed_at), e.date.to_string(), value, unit, ts(now)],
            )?;
            if inserted == 1 {
                let obs_id = tx.last_insert_rowid();
                tx.execute(
                    "INSERT INTO self_reports (observation_id, channel, note, reported_at)
                     VALUES (?1, ?3, '', ?2)",
                    params![obs_id, ts(now), e.channel],
                )?;
                format!("recorded rating {value} for {}", e.date)
            } else {
                let earlier: f64 = tx.query_row(
                    "SELECT value FROM observations WHERE source_id = ?1 AND source_record_id = ?2",
                    params![source_id, record],
                    |r| r.get(0),
                )?;
                return Ok(Err(earlier));
            }
        }
    };
    Ok(Ok(words))
}

/// Inserts exchanges into the audit log; returns the last one's id.
fn insert_exchanges(
    conn: &Connection,
    participant_id: i64,
    exchanges: &[NewExchange],
    now: Timestamp,
) -> Result<Option<i64>> {
    let mut last = None;
    for e in exchanges {
        let body: String = e.response_body.chars().take(EXCHANGE_BODY_CHARS).collect();
        last = Some(conn.query_row(
            "INSERT INTO llm_exchanges (participant_id, purpose, proposer, attempt, question,
                 request_json, http_status, response_body, outcome, problems, started_at,
                 finished_at, recorded_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) RETURNING id",
            params![
                participant_id,
                e.purpose,
                e.proposer,
                e.attempt,
                e.question,
                e.request_json,
                e.http_status,
                body,
                e.outcome,
                e.problems,
                ts(e.started_at),
                ts(e.finished_at),
                ts(now)
            ],
            |r| r.get::<_, i64>(0),
        )?);
    }
    Ok(last)
}

/// Inserts a proposed trial with its first event and audit entry.
fn insert_proposal(
    conn: &Connection,
    p: &Proposal<'_>,
    hypothesis_id: Option<i64>,
    actor: &str,
    now: Timestamp,
) -> Result<i64> {
    let id: i64 = conn.query_row(
        "INSERT INTO trials (participant_id, hypothesis_id, protocol_id, protocol_toml,
                             protocol_hash, seed, status, created_at, status_changed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) RETURNING id",
        params![
            p.participant_id,
            hypothesis_id,
            p.protocol_id,
            p.protocol_toml,
            p.protocol_hash,
            p.seed.to_string(),
            TrialStatus::Proposed.as_str(),
            ts(now)
        ],
        |r| r.get(0),
    )?;
    conn.execute(
        "INSERT INTO trial_events (trial_id, from_status, to_status, actor, reason, at)
         VALUES (?1, NULL, ?2, ?3, 'proposed', ?4)",
        params![id, TrialStatus::Proposed.as_str(), actor, ts(now)],
    )?;
    audit(
        conn,
        actor,
        "trial.proposed",
        Some(id),
        &serde_json::json!({"protocol": p.protocol_id, "protocol_hash": p.protocol_hash,
                            "hypothesis": hypothesis_id}),
        now,
    )?;
    Ok(id)
}

fn audit(
    conn: &Connection,
    actor: &str,
    action: &str,
    trial_id: Option<i64>,
    detail: &serde_json::Value,
    now: Timestamp,
) -> Result<()> {
    conn.execute(
        "INSERT INTO audit_log (at, actor, action, trial_id, detail_json) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![ts(now), actor, action, trial_id, detail.to_string()],
    )?;
    Ok(())
}

/// The async face of the store: each call runs on tokio's blocking pool.
#[derive(Clone)]
pub struct Db {
    writer: Arc<Mutex<Store>>,
    reader: Arc<Mutex<Store>>,
    path: PathBuf,
}

impl Db {
    /// Opens the writer (migrating) and a read-only reader.
    pub fn open(path: &Path) -> Result<Db> {
        Db::open_keyed(path, None)
    }

    /// [`Db::open`] for a database encrypted with `key`.
    pub fn open_keyed(path: &Path, key: Option<&Secret>) -> Result<Db> {
        let writer = Store::open_keyed(path, key)?;
        let reader = Store::open_read_only_keyed(path, key)?;
        Ok(Db {
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
            path: path.to_path_buf(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the writer connection, off the async runtime.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T> + Send + 'static,
    {
        self.write_with(f).await
    }

    /// Runs `f` with the reader connection, off the async runtime.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T> + Send + 'static,
    {
        self.read_with(f).await
    }

    /// [`Db::write`] for work that can fail for reasons of its own besides
    /// the store's: `f`'s error type keeps them (it takes a [`StoreError`]).
    pub async fn write_with<T, E, F>(&self, f: F) -> std::result::Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut Store) -> std::result::Result<T, E> + Send + 'static,
    {
        let store = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = store.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| E::from(StoreError::Task(e.to_string())))?
    }

    /// [`Db::read`] for work with errors of its own (see [`Db::write_with`]).
    pub async fn read_with<T, E, F>(&self, f: F) -> std::result::Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&Store) -> std::result::Result<T, E> + Send + 'static,
    {
        let store = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let guard = store.lock().unwrap_or_else(|p| p.into_inner());
            f(&guard)
        })
        .await
        .map_err(|e| E::from(StoreError::Task(e.to_string())))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-11-25T08:00:00Z".parse().unwrap()
    }

    #[test]
    fn migrations_are_valid_and_version_matches() {
        MIGRATIONS.validate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db.sqlite")).unwrap();
        let v: i64 = s
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, schema_version());
    }

    #[test]
    fn design_failures_count_each_work_apart_and_keep_calibrations_from_before() {
        // A database of the schema before `design_failures`, with a
        // calibration given up on.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        {
            let mut conn = Connection::open(&path).unwrap();
            let before =
                Migrations::new(MIGRATION_FILES[..12].iter().map(|sql| M::up(sql)).collect());
            before.to_latest(&mut conn).unwrap();
            conn.execute(
                "INSERT INTO calibration_failures (protocol_hash, error, attempts, last_at)
                 VALUES ('old', 'the suite gave no threshold', 3, '2026-11-01T00:00:00Z')",
                [],
            )
            .unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        let old = ProtocolHash("old".into());
        let kept = s
            .design_failure(DesignWork::Calibration, &old)
            .unwrap()
            .unwrap();
        assert_eq!(
            (kept.error.as_str(), kept.attempts, kept.given_up()),
            ("the suite gave no threshold", 3, true)
        );
        assert_eq!(
            s.design_failure(DesignWork::Simulation, &old).unwrap(),
            None
        );
        // The two kinds of work count their attempts apart, and a stored
        // result forgets only its own kind's failure.
        let new = ProtocolHash("new".into());
        for attempt in 1..=3 {
            let n = s
                .record_design_failure(DesignWork::Simulation, &new, "no", now())
                .unwrap();
            assert_eq!(n, attempt);
        }
        assert_eq!(
            s.record_design_failure(DesignWork::Calibration, &new, "no", now())
                .unwrap(),
            1
        );
        s.put_design_simulation(&DesignSimulationRow {
            protocol_hash: "new".into(),
            trials: 1,
            report_json: "{}".into(),
            wall_ms: 1.0,
            created_at: ts(now()),
        })
        .unwrap();
        assert_eq!(
            s.design_failure(DesignWork::Simulation, &new).unwrap(),
            None
        );
        assert_eq!(
            s.design_failure(DesignWork::Calibration, &new)
                .unwrap()
                .map(|f| f.attempts),
            Some(1)
        );
    }

    #[test]
    fn a_trial_stopped_after_it_was_read_as_running_gets_no_new_day_and_its_days_messages_are_withheld()
     {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("db.sqlite")).unwrap();
        let pid = participant(&mut s);
        let start: Date = "2026-11-26".parse().unwrap();
        let id = magnesium_started(&mut s, pid, start);
        let day = |n: i64| start.checked_add(jiff::Span::new().days(n)).unwrap();
        let message = |d: Date| assignment(pid, id, d);
        assert!(
            s.record_daily_run(id, day(1), &[], &[message(day(1))], now())
                .unwrap()
        );
        let decision = NewMessage {
            key: format!("decision/a/{id}/1"),
            kind: "decision".into(),
            local_date: None,
            message_id: "<decision@nof1d>".into(),
            ..message(day(1))
        };
        assert!(s.enqueue_message(&decision, now()).unwrap());
        s.queue_pushes(pid, "ntfy:https://ntfy.example.org/t", now(), now())
            .unwrap();
        let ids: Vec<(i64, String)> = s
            .conn
            .prepare("SELECT p.id, o.kind FROM pushes p JOIN outbox o ON o.id = p.message_id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        assert_eq!(ids.len(), 2);
        // A decision (another job's) or a person stops it meanwhile.
        s.change_status(
            &StatusChange {
                trial_id: id,
                to: TrialStatus::Stopped,
                actor: "test",
                reason: "stopped for efficacy",
                local_date: day(1),
                start_date: None,
                shifted: &[],
                reviewed: None,
            },
            now(),
        )
        .unwrap();
        assert!(
            !s.record_daily_run(id, day(2), &[], &[message(day(2))], now())
                .unwrap()
        );
        assert_eq!(s.last_daily_run(id).unwrap(), Some(day(1)));
        // Nor a decision of a look that read it as running.
        let look = NewDecision {
            trial_id: id,
            fit_id: None,
            period: Some(1),
            rule: "test".into(),
            action: "drop_arm".into(),
            numbers_json: "{}".into(),
            stop: None,
            reschedule: None,
            messages: Vec::new(),
            thresholds_refined_at: None,
        };
        assert!(!s.record_decision(&look, "daemon", day(1), now()).unwrap());
        assert!(s.decisions(id).unwrap().is_empty());
        // A side effect reported after the stop by hand: its undo, checked
        // before the report, is refused in its write.
        s.record_adverse_event(id, day(1), "rash", "email-link", "participant", now())
            .unwrap();
        let undo = s.undo_stop(
            &StatusChange {
                trial_id: id,
                to: TrialStatus::Running,
                actor: "cli",
                reason: "undone",
                local_date: day(1),
                start_date: None,
                shifted: &[],
                reviewed: None,
            },
            now(),
        );
        assert!(
            matches!(&undo, Err(StoreError::Refused(why)) if why.contains("stop stands")),
            "{undo:?}"
        );
        assert_eq!(s.trial(id).unwrap().unwrap().status, TrialStatus::Stopped);
        let queued = s.recent_messages(50).unwrap();
        assert!(
            queued
                .iter()
                .all(|m| m.local_date.as_deref() != Some("2026-11-28")),
            "{queued:?}"
        );
        // The day's assignment queued before the stop (the mail server was
        // down, say) is withheld, by email and push; the decision goes.
        let later = now() + jiff::SignedDuration::from_mins(1);
        let why = Attempt::Withheld("not delivered: its trial is stopped".into());
        for m in &queued {
            let expected = if m.kind == "assignment" {
                why.clone()
            } else {
                Attempt::Started
            };
            assert_eq!(s.mark_attempt(m.id, later).unwrap(), expected, "{}", m.kind);
        }
        for (push, kind) in &ids {
            let expected = if kind == "assignment" {
                why.clone()
            } else {
                Attempt::Started
            };
            assert_eq!(s.begin_push(*push, later).unwrap(), expected, "{kind}");
        }
        let assignment = s
            .recent_messages(50)
            .unwrap()
            .into_iter()
            .find(|m| m.kind == "assignment")
            .unwrap();
        assert_eq!(
            (assignment.status.as_str(), assignment.attempts),
            ("failed", 0)
        );
        assert!(s.due_messages(now(), 50).unwrap().is_empty());
        assert!(s.due_pushes(now(), 50).unwrap().is_empty());
    }

    #[test]
    fn a_days_message_withheld_while_its_trial_is_paused_comes_back_when_it_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("db.sqlite")).unwrap();
        let pid = participant(&mut s);
        let start: Date = "2026-11-26".parse().unwrap();
        let id = magnesium_started(&mut s, pid, start);
        let m = assignment(pid, id, start);
        assert!(s.record_daily_run(id, start, &[], &[m], now()).unwrap());
        let mid: i64 = s.recent_messages(1).unwrap()[0].id;
        // Tried once while the server was down; then paused by hand.
        s.mark_attempt(mid, now()).unwrap();
        s.mark_retry(mid, "SMTP 421", now()).unwrap();
        let status = |s: &mut Store, to: TrialStatus| {
            s.change_status(
                &StatusChange {
                    trial_id: id,
                    to,
                    actor: "test",
                    reason: "by hand",
                    local_date: start,
                    start_date: None,
                    shifted: &[],
                    reviewed: None,
                },
                now(),
            )
            .unwrap();
        };
        status(&mut s, TrialStatus::Paused);
        assert_eq!(
            s.mark_attempt(mid, now()).unwrap(),
            Attempt::Withheld("not delivered: its trial is paused".into())
        );
        // The policy's, not trouble.
        assert_eq!(s.delivery_health(now()).unwrap().failed_recently, 0);
        // Resumed the same day: the day's assignment goes after all.
        status(&mut s, TrialStatus::Running);
        let due = s.due_messages(now(), 50).unwrap();
        assert_eq!(due.iter().map(|m| m.id).collect::<Vec<_>>(), vec![mid]);
        assert_eq!(s.mark_attempt(mid, now()).unwrap(), Attempt::Started);
    }

    #[test]
    fn a_started_trial_locks_its_designs_calibrated_arm_drop_threshold() {
        use crate::trial::protocol::Protocol;
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("db.sqlite")).unwrap();
        let pid = participant(&mut s);
        let text = include_str!("../../protocols/sleep-supplements.toml");
        let protocol = Protocol::parse(text, "sleep").unwrap();
        let hash = ProtocolHash::of(text);
        s.put_calibration(&CalibrationRow {
            protocol_hash: hash.0.clone(),
            target: 0.05,
            efficacy: 0.7952,
            boundary: Boundary::Constant,
            futility: Some(0.0114),
            drop_arm: Some(0.0125),
            binding: "trend".into(),
            report_json: "{}".into(),
            wall_ms: 1.0,
            created_at: ts(now()),
        })
        .unwrap();
        let calibration = s.calibration(&hash).unwrap().unwrap();
        assert_eq!(calibration.drop_arm, Some(0.0125));
        let start: Date = "2026-11-26".parse().unwrap();
        let first = Locking {
            thresholds: calibration.locked(),
            refined: false,
        };
        let id = started_on(&mut s, pid, text, 7, start, first);
        let locked = s.trial(id).unwrap().unwrap().locked.unwrap();
        assert_eq!(locked.drop_arm, Some(0.0125));
        // The trial decides with it, not the protocol's 0.05.
        let thresholds = crate::trial::decide::trial_thresholds(
            &protocol.decision,
            (protocol.design.min_blocks, protocol.design.max_blocks),
            Some(locked),
        );
        assert_eq!(
            (protocol.decision.drop_arm, thresholds.drop_arm),
            (0.05, 0.0125)
        );
    }

    #[test]
    fn a_running_trial_takes_its_designs_refinement_only_before_a_decisive_look() {
        use crate::trial::protocol::Protocol;
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("db.sqlite")).unwrap();
        let pid = participant(&mut s);
        let text = include_str!("../../protocols/caffeine-cutoff.toml");
        let protocol = Protocol::parse(text, "caffeine").unwrap();
        let hash = ProtocolHash::of(text);
        let min_blocks = protocol.design.min_blocks;
        let first = CalibrationRow {
            protocol_hash: hash.0.clone(),
            target: 0.05,
            efficacy: 0.9989,
            boundary: Boundary::Constant,
            futility: Some(0.0132),
            drop_arm: None,
            binding: "trend".into(),
            report_json: "{}".into(),
            wall_ms: 1.0,
            created_at: ts(now()),
        };
        s.put_calibration(&first).unwrap();
        // Two trials of the design, both started on its first calibration.
        let start: Date = "2026-11-26".parse().unwrap();
        let on_first = Locking {
            thresholds: first.locked(),
            refined: false,
        };
        let (early, late) = (
            started_on(&mut s, pid, text, 7, start, on_first),
            started_on(&mut s, pid, text, 8, start, on_first),
        );
        // A look before min_blocks only continued; `late` has taken its
        // first decisive look (one that continued, at min_blocks blocks).
        let look = |trial_id: i64, period: u32, blocks_done: u32| NewDecision {
            trial_id,
            fit_id: None,
            period: Some(period),
            rule: "test".into(),
            action: "continue".into(),
            numbers_json:
                serde_json::json!({"look": {"period": period, "blocks_done": blocks_done}})
                    .to_string(),
            stop: None,
            reschedule: None,
            messages: Vec::new(),
            thresholds_refined_at: None,
        };
        for (trial, period, blocks) in [(early, 1, 1), (late, 1, 1), (late, 5, min_blocks)] {
            assert!(
                s.record_decision(&look(trial, period, blocks), "test", start, now())
                    .unwrap()
            );
        }
        let refinement = Refinement {
            null_trials: 400,
            calibration: CalibrationRow {
                efficacy: 0.9714,
                futility: Some(0.0053),
                created_at: ts(now()),
                ..first.clone()
            },
        };
        assert!(s.refinement(&hash).unwrap().is_none());
        s.record_design_failure(DesignWork::Refinement, &hash, "once", now())
            .unwrap();
        s.put_refinement(&refinement).unwrap();
        // Stored, and its earlier failure forgotten.
        let stored = s.refinement(&hash).unwrap().unwrap();
        assert_eq!(
            (stored.null_trials, stored.calibration.efficacy),
            (400, 0.9714)
        );
        assert_eq!(
            s.design_failure(DesignWork::Refinement, &hash).unwrap(),
            None
        );
        let row = &stored.calibration;
        // Its first decisive day is some weeks after the start.
        let before = Deadline {
            min_blocks,
            refine_by: Some("2027-01-07".parse().unwrap()),
            today: start,
        };
        // On that day, or without one, a look that could stop it may be
        // under way: it keeps what it has.
        for deadline in [
            Deadline {
                today: "2027-01-07".parse().unwrap(),
                ..before
            },
            Deadline {
                refine_by: None,
                ..before
            },
        ] {
            assert_eq!(
                s.refine_thresholds(early, row, deadline, "daemon", now())
                    .unwrap(),
                Refined::Kept(KeptBecause::DecisiveDayCome)
            );
        }
        assert_eq!(
            s.refine_thresholds(early, row, before, "daemon", now())
                .unwrap(),
            Refined::Locked
        );
        assert_eq!(
            s.refine_thresholds(late, row, before, "daemon", now())
                .unwrap(),
            Refined::Kept(KeptBecause::DecisiveLookTaken)
        );
        // Once only.
        assert_eq!(
            s.refine_thresholds(early, row, before, "daemon", now())
                .unwrap(),
            Refined::Kept(KeptBecause::AlreadyRefined)
        );
        let took = s.trial(early).unwrap().unwrap();
        let locked = took.locked.unwrap();
        assert_eq!(
            (locked.efficacy, locked.futility, locked.source),
            (0.9714, Some(0.0053), ThresholdSource::Calibrated)
        );
        assert!(took.thresholds_refined_at.is_some());
        // A look taken on the thresholds it had before is not recorded: the
        // next run takes it again under the refined ones.
        assert!(
            !s.record_decision(&look(early, 2, 1), "test", start, now())
                .unwrap()
        );
        let again = NewDecision {
            thresholds_refined_at: took.thresholds_refined_at.clone(),
            ..look(early, 2, 1)
        };
        assert!(s.record_decision(&again, "test", start, now()).unwrap());
        let kept = s.trial(late).unwrap().unwrap();
        assert_eq!(kept.locked.map(|l| l.efficacy), Some(0.9989));
        assert_eq!(kept.thresholds_refined_at, None);
        // The audit log says what it replaced.
        let detail: String = s
            .conn
            .query_row(
                "SELECT detail_json FROM audit_log WHERE action = 'refine_threshold' AND trial_id = ?1",
                [early],
                |r| r.get(0),
            )
            .unwrap();
        let detail: serde_json::Value = serde_json::from_str(&detail).unwrap();
        assert_eq!(detail["was"]["efficacy"], 0.9989);
        assert_eq!(detail["efficacy"], 0.9714);
        // The first refinement stands; a trial of another design is refused.
        s.put_refinement(&Refinement {
            null_trials: 800,
            ..refinement.clone()
        })
        .unwrap();
        assert_eq!(s.refinement(&hash).unwrap().unwrap().null_trials, 400);
        let other = CalibrationRow {
            protocol_hash: "other".into(),
            ..first.clone()
        };
        let err = s
            .refine_thresholds(early, &other, before, "daemon", now())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("there is no trial {early} of the design")),
            "{err}"
        );
        // A trial that starts once the refinement is done locks it at its
        // start, and says so.
        let at_start = started_on(
            &mut s,
            pid,
            text,
            9,
            start,
            Locking {
                thresholds: row.locked(),
                refined: true,
            },
        );
        let t = s.trial(at_start).unwrap().unwrap();
        assert_eq!(t.locked.map(|l| l.efficacy), Some(0.9714));
        assert!(t.thresholds_refined_at.is_some());
        assert_eq!(
            s.refine_thresholds(at_start, row, before, "daemon", now())
                .unwrap(),
            Refined::Kept(KeptBecause::AlreadyRefined)
        );
        let locked_audit: String = s
            .conn
            .query_row(
                "SELECT detail_json FROM audit_log WHERE action = 'lock_threshold' AND trial_id = ?1",
                [at_start],
                |r| r.get(0),
            )
            .unwrap();
        assert!(locked_audit.contains("\"refined\":true"), "{locked_audit}");
        // A stopped trial keeps what it decided with.
        s.change_status(
            &StatusChange {
                trial_id: late,
                to: TrialStatus::Stopped,
                actor: "test",
                reason: "by hand",
                local_date: start,
                start_date: None,
                shifted: &[],
                reviewed: None,
            },
            now(),
        )
        .unwrap();
        assert_eq!(
            s.refine_thresholds(late, row, before, "daemon", now())
                .unwrap(),
            Refined::Kept(KeptBecause::NotRunning)
        );
    }

    #[test]
    fn kept_trials_outlast_a_reopening_until_their_work_is_stored() {
        use DesignWork::Calibration;
        let refining = DesignWork::Refinement;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let (hash, other) = (ProtocolHash::of("refined"), ProtocolHash::of("other"));
        let kept = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, t)| (k.to_string(), t.to_string()))
                .collect()
        };
        {
            let mut s = Store::open(&path).unwrap();
            assert!(s.kept_trials(refining, &hash).unwrap().is_empty());
            s.keep_trials(refining, &hash, &kept(&[("a", "1"), ("b", "2")]))
                .unwrap();
            // A key kept before keeps its text; another design's and the
            // calibration's are their own.
            s.keep_trials(refining, &hash, &kept(&[("a", "changed"), ("c", "3")]))
                .unwrap();
            s.keep_trials(refining, &other, &kept(&[("a", "other")]))
                .unwrap();
            s.keep_trials(Calibration, &hash, &kept(&[("a", "first")]))
                .unwrap();
            // A simulation keeps none.
            assert!(s.keep_trials(DesignWork::Simulation, &hash, &[]).is_err());
        }
        // The daemon stopped: a new connection finds them.
        let mut s = Store::open(&path).unwrap();
        let found = s.kept_trials(refining, &hash).unwrap();
        assert_eq!(found.len(), 3);
        assert_eq!((found["a"].as_str(), found["c"].as_str()), ("1", "3"));
        assert_eq!(s.kept_trials(Calibration, &hash).unwrap()["a"], "first");
        // Storing a work's result forgets its kept trials, not another's.
        let row = CalibrationRow {
            protocol_hash: hash.0.clone(),
            target: 0.05,
            efficacy: 0.97,
            boundary: Boundary::Constant,
            futility: Some(0.01),
            drop_arm: None,
            binding: "iid".into(),
            report_json: "{}".into(),
            wall_ms: 1.0,
            created_at: ts(now()),
        };
        s.put_calibration(&row).unwrap();
        assert!(s.kept_trials(Calibration, &hash).unwrap().is_empty());
        assert_eq!(s.kept_trials(refining, &hash).unwrap().len(), 3);
        s.put_refinement(&Refinement {
            null_trials: 400,
            calibration: row,
        })
        .unwrap();
        assert!(s.kept_trials(refining, &hash).unwrap().is_empty());
        assert_eq!(s.kept_trials(refining, &other).unwrap().len(), 1);
        // A design no longer due for a work keeps none of it.
        s.keep_trials(refining, &hash, &kept(&[("a", "again")]))
            .unwrap();
        s.keep_trials(Calibration, &other, &kept(&[("a", "first")]))
            .unwrap();
        assert!(s.any_kept_trials().unwrap());
        assert_eq!(
            s.forget_kept_trials_except(refining, std::slice::from_ref(&hash))
                .unwrap(),
            1
        );
        assert_eq!(s.kept_trials(refining, &hash).unwrap().len(), 1);
        assert!(s.kept_trials(refining, &other).unwrap().is_empty());
        assert_eq!(s.kept_trials(Calibration, &other).unwrap().len(), 1);
        assert_eq!(s.forget_kept_trials_except(refining, &[]).unwrap(), 1);
        assert_eq!(s.forget_kept_trials_except(Calibration, &[]).unwrap(), 1);
        assert!(s.kept_trials(refining, &hash).unwrap().is_empty());
        assert!(s.kept_trials(Calibration, &other).unwrap().is_empty());
        assert!(!s.any_kept_trials().unwrap());
    }

    #[test]
    fn a_given_up_refinement_is_tried_again_only_for_an_approved_trial() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("db.sqlite")).unwrap();
        let pid = participant(&mut s);
        let text = include_str!("../../protocols/caffeine-cutoff.toml");
        let hash = ProtocolHash::of(text);
        let start: Date = "2026-11-26".parse().unwrap();
        let running = started_on(
            &mut s,
            pid,
            text,
            7,
            start,
            Locking {
                thresholds: LockedThresholds {
                    efficacy: 0.9989,
                    source: ThresholdSource::Calibrated,
                    boundary: Boundary::Constant,
                    futility: Some(0.0132),
                    drop_arm: None,
                },
                refined: false,
            },
        );
        let refinement = DesignWork::Refinement;
        let retry = |s: &mut Store, id: i64| s.retry_design(id, refinement, "test", now());
        let refused = |r: Result<()>| match r {
            Err(StoreError::Refused(why)) => why,
            other => panic!("not refused: {other:?}"),
        };
        // Neither a proposal of the design nor a started trial (whoever
        // saw its estimates must not choose whether its rule changes).
        let proposal = s
            .propose_trial(
                &Proposal {
                    participant_id: pid,
                    protocol_id: "caffeine-cutoff",
                    protocol_toml: text,
                    protocol_hash: &hash.0,
                    seed: 9,
                },
                "test",
                now(),
            )
            .unwrap();
        for _ in 0..DesignFailure::ATTEMPTS {
            s.record_design_failure(refinement, &hash, "boom", now())
                .unwrap();
        }
        for trial in [proposal, running] {
            let why = refused(retry(&mut s, trial));
            assert!(why.contains("only an approved trial's refinement"), "{why}");
        }
        s.conn.execute("DELETE FROM design_failures", []).unwrap();
        approve(&mut s, proposal, start);
        // Not failed, or failed but not yet given up on: nothing to retry.
        assert!(refused(retry(&mut s, proposal)).contains("not been given up on"));
        for attempt in 1..DesignFailure::ATTEMPTS {
            s.record_design_failure(refinement, &hash, "boom", now())
                .unwrap();
            assert!(
                refused(retry(&mut s, proposal)).contains("not been given up on"),
                "attempt {attempt}"
            );
        }
        s.record_design_failure(refinement, &hash, "boom", now())
            .unwrap();
        // An approved trial's retry forgets the failure, and says so.
        retry(&mut s, proposal).unwrap();
        assert!(s.design_failure(refinement, &hash).unwrap().is_none());
        let audited: String = s
            .conn
            .query_row(
                "SELECT detail_json FROM audit_log WHERE action = 'refinement.retried' AND trial_id = ?1",
                [proposal],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            audited.contains("\"attempts\":3") && audited.contains("boom"),
            "{audited}"
        );
        // The calibration and simulation stay a proposal's to retry.
        for work in [DesignWork::Calibration, DesignWork::Simulation] {
            for _ in 0..DesignFailure::ATTEMPTS {
                s.record_design_failure(work, &hash, "boom", now()).unwrap();
            }
            let why = refused(s.retry_design(running, work, "test", now()));
            assert!(why.contains("only a proposal's"), "{why}");
        }
    }

    /// Approves the proposal `id` to start on `start`.
    fn approve(s: &mut Store, id: i64, start: Date) {
        s.change_status(
            &StatusChange {
                trial_id: id,
                to: TrialStatus::Approved,
                actor: "test",
                reason: "approved",
                local_date: start,
                start_date: Some(start),
                shifted: &[],
                reviewed: None,
            },
            now(),
        )
        .unwrap();
    }

    /// A trial of the protocol `text` for `pid`, proposed, approved and
    /// started on `start` with `locking`.
    fn started_on(
        s: &mut Store,
        pid: i64,
        text: &str,
        seed: u64,
        start: Date,
        locking: Locking,
    ) -> i64 {
        let protocol = crate::trial::protocol::Protocol::parse(text, "test").unwrap();
        let hash = ProtocolHash::of(text);
        let id = s
            .propose_trial(
                &Proposal {
                    participant_id: pid,
                    protocol_id: &protocol.id,
                    protocol_toml: text,
                    protocol_hash: &hash.0,
                    seed,
                },
                "test",
                now(),
            )
            .unwrap();
        approve(s, id, start);
        let schedule = crate::trial::lifecycle::dated(
            &protocol,
            &crate::trial::design::plan(&protocol, seed),
            start,
        )
        .unwrap();
        s.start_trial(id, start, &schedule, locking, &[], "test", now())
            .unwrap();
        id
    }

    /// A participant "a" in UTC, stored.
    fn participant(s: &mut Store) -> i64 {
        let p = crate::service::config::ParticipantConfig {
            key: "a".into(),
            name: "A".into(),
            email: "a@example.org".into(),
            time_zone: "UTC".into(),
            assignment_time: "07:00".into(),
            evening_reminder: "20:30".into(),
            missing_data_days: 3,
            streams: Vec::new(),
            goals: Vec::new(),
            imports: Vec::new(),
            home_assistant: Vec::new(),
            oura: Vec::new(),
            strava: Vec::new(),
            withings: Vec::new(),
            push: Vec::new(),
        }
        .resolve()
        .unwrap();
        s.upsert_participant(&p, false, now()).unwrap()
    }

    /// A weekly summary keyed `key` for participant `pid`, queued: its id.
    fn queued_summary(s: &mut Store, pid: i64, key: &str) -> i64 {
        let m = NewMessage {
            key: key.into(),
            participant_id: pid,
            trial_id: None,
            kind: "weekly_summary".into(),
            local_date: None,
            recipient: "a@example.org".into(),
            subject: "s".into(),
            body_text: "t".into(),
            body_html: "h".into(),
            message_id: format!("<{key}@nof1d>"),
        };
        assert!(s.enqueue_message(&m, now()).unwrap());
        s.conn
            .query_row("SELECT id FROM outbox WHERE key = ?1", [key], |r| r.get(0))
            .unwrap()
    }

    /// A magnesium-migraine trial of participant `pid` started on `start`,
    /// on its stated thresholds.
    fn magnesium_started(s: &mut Store, pid: i64, start: Date) -> i64 {
        let text = include_str!("../../protocols/magnesium-migraine.toml");
        let protocol = crate::trial::protocol::Protocol::parse(text, "magnesium").unwrap();
        let locking = Locking {
            thresholds: LockedThresholds::stated(&protocol.decision),
            refined: false,
        };
        started_on(s, pid, text, 7, start, locking)
    }

    /// Trial `trial_id`'s assignment for `date`, for participant `pid`.
    fn assignment(pid: i64, trial_id: i64, date: Date) -> NewMessage {
        NewMessage {
            key: format!("assignment/a/{trial_id}/{date}"),
            participant_id: pid,
            trial_id: Some(trial_id),
            kind: "assignment".into(),
            local_date: Some(date),
            recipient: "a@example.org".into(),
            subject: "s".into(),
            body_text: "t".into(),
            body_html: "h".into(),
            message_id: format!("<{date}@nof1d>"),
        }
    }

    #[test]
    fn delivery_trouble_is_what_was_tried_and_failed() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("db.sqlite")).unwrap();
        let pid = participant(&mut s);
        let mut message = |key: &str| queued_summary(&mut s, pid, key);
        let (blip, down, untried, refused): (i64, i64, i64, i64) = (
            message("blip"),
            message("down"),
            message("untried"),
            message("refused"),
        );
        let later = now() + jiff::SignedDuration::from_mins(10);
        let health = |s: &Store, at: Timestamp| s.delivery_health(at).unwrap();
        assert_eq!(
            health(&s, now()),
            DeliveryHealth {
                retrying: 0,
                failed_recently: 0
            }
        );
        // One failed attempt is a blip; two in a row are trouble.
        for (id, tries) in [(blip, 1), (down, 2)] {
            for _ in 0..tries {
                s.mark_attempt(id, later).unwrap();
                s.mark_retry(id, "SMTP 451", later).unwrap();
            }
        }
        // Given up on before any try (its day passed): the policy's.
        s.mark_failed(untried, "not delivered: its day has passed")
            .unwrap();
        // Tried and refused: trouble, for two days after it was queued.
        s.mark_attempt(refused, later).unwrap();
        s.mark_failed(refused, "SMTP 550").unwrap();
        assert_eq!(
            health(&s, now()),
            DeliveryHealth {
                retrying: 1,
                failed_recently: 1
            }
        );
        let in_three_days = now() + jiff::SignedDuration::from_hours(72);
        assert_eq!(
            health(&s, in_three_days),
            DeliveryHealth {
                retrying: 1,
                failed_recently: 0
            }
        );
        s.mark_sent(down, "smtp", later).unwrap();
        assert_eq!(
            health(&s, in_three_days),
            DeliveryHealth {
                retrying: 0,
                failed_recently: 0
            }
        );
    }

    #[test]
    fn a_restart_makes_what_waits_on_a_retry_due_but_not_an_attempt_a_crash_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("db.sqlite")).unwrap();
        let pid = participant(&mut s);
        let mut message = |key: &str| queued_summary(&mut s, pid, key);
        let (refused, crashed, fresh, sent): (i64, i64, i64, i64) = (
            message("refused"),
            message("crashed"),
            message("fresh"),
            message("sent"),
        );
        let later = now() + jiff::SignedDuration::from_hours(4);
        // Refused (an SMTP 535): waits four hours.
        s.mark_attempt(refused, later).unwrap();
        s.mark_retry(refused, "SMTP 535", later).unwrap();
        // An attempt that never ended (a crash mid-send): its backoff holds.
        s.mark_attempt(crashed, later).unwrap();
        s.mark_attempt(sent, later).unwrap();
        s.mark_sent(sent, "smtp", now()).unwrap();
        // Its pushes: one refused with the channel's others deferred, one
        // cut short by a crash on another channel.
        let channel = |s: &mut Store, name: &str| {
            s.queue_pushes(
                pid,
                name,
                now() - jiff::SignedDuration::from_hours(1),
                now(),
            )
            .unwrap();
        };
        channel(&mut s, "ntfy:https://ntfy.example.org/refused");
        channel(&mut s, "ntfy:https://ntfy.example.org/crashed");
        let push_id = |s: &Store, key: &str, channel: &str| -> i64 {
            s.conn
                .query_row(
                    "SELECT p.id FROM pushes p JOIN outbox o ON o.id = p.message_id
                     WHERE o.key = ?1 AND p.channel LIKE ?2",
                    params![key, format!("%/{channel}")],
                    |r| r.get(0),
                )
                .unwrap()
        };
        let refused_push = push_id(&s, "fresh", "refused");
        s.begin_push(refused_push, later).unwrap();
        s.record_push(
            refused_push,
            PushStep::Retry {
                error: "ntfy answered 403",
                retry_at: later,
            },
        )
        .unwrap();
        let crashed_push = push_id(&s, "fresh", "crashed");
        s.begin_push(crashed_push, later).unwrap();
        let restart = now() + jiff::SignedDuration::from_mins(5);
        let due_pushes = |s: &Store| -> Vec<i64> {
            s.due_pushes(restart, 50)
                .unwrap()
                .iter()
                .map(|p| p.id)
                .collect()
        };
        // Before: the crashed channel's three others; the refused one
        // deferred its channel's three others.
        assert_eq!(due_pushes(&s).len(), 3);
        assert!(
            s.due_messages(restart, 50)
                .unwrap()
                .iter()
                .all(|m| m.id == fresh)
        );
        assert_eq!(s.retry_waiting_now(restart).unwrap(), (1, 4));
        let mut due: Vec<i64> = s
            .due_messages(restart, 50)
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        due.sort();
        assert_eq!(due, vec![refused, fresh], "not {crashed} nor {sent}");
        // Every push but the one a crash cut short.
        let due = due_pushes(&s);
        assert_eq!(due.len(), 7);
        assert!(due.contains(&refused_push) && !due.contains(&crashed_push));
        // Nothing more the second time.
        assert_eq!(s.retry_waiting_now(restart).unwrap(), (0, 0));
    }

    #[test]
    fn observations_between_reads_only_those_dates_as_the_whole_stream_has_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("db.sqlite")).unwrap();
        let pid = participant(&mut s);
        let src = s.ensure_source(pid, "csv", "file", "{}", now()).unwrap();
        let day = |d: i8| jiff::civil::date(2026, 11, d);
        let sample = |id: String, d: i8, value: f64, origin: &str| NewObservation {
            origin: origin.into(),
            ..NewObservation::point("hrv", "ms", id, now(), day(d), value)
        };
        // A phone two a day over ten days, one withdrawn; a watch, four a
        // day on days 5 and 6 only: more than the phone on days 3 to 6 (8
        // against 7), so ranked on those days alone it would win, but the
        // phone has more samples in all and counts on the days both
        // measured.
        let mut obs: Vec<NewObservation> = (0..20)
            .map(|i| sample(format!("r{i}"), 1 + (i / 2) as i8, f64::from(i), "phone"))
            .collect();
        obs.extend((0..8).map(|i| sample(format!("w{i}"), 5 + (i / 4) as i8, 100.0, "watch")));
        let run = s.begin_run(src, RunWay::Poll, "", now()).unwrap();
        s.record_poll(src, run, &obs, &["r8".to_string()], None, now())
            .unwrap();
        let all = s.observations(pid, "hrv", &[]).unwrap();
        assert_eq!(all.len(), 19);
        assert!(all.iter().all(|o| o.2 < 100.0), "the phone counts: {all:?}");
        let (first, last) = (day(3), day(6));
        let between = s
            .observations_between(pid, "hrv", &[], (first, last))
            .unwrap();
        let expected: Vec<_> = all
            .iter()
            .filter(|o| (first..=last).contains(&o.1))
            .cloned()
            .collect();
        assert_eq!(between, expected);
        assert_eq!(between.len(), 7, "{between:?}");
        assert_eq!(s.observations_on(pid, "hrv", day(10)).unwrap().len(), 2);
    }

    #[test]
    fn reimport_never_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("db.sqlite")).unwrap();
        let pid = participant(&mut s);
        // Stored again, it is the same participant.
        assert_eq!(participant(&mut s), pid);
        let src = s.ensure_source(pid, "csv", "file", "{}", now()).unwrap();
        let obs: Vec<NewObservation> = (0..3)
            .map(|i| {
                NewObservation::point(
                    "hrv",
                    "ms",
                    format!("r{i}"),
                    now(),
                    "2026-11-25".parse().unwrap(),
                    50.0 + f64::from(i),
                )
            })
            .collect();
        let run = s.begin_run(src, RunWay::Poll, "", now()).unwrap();
        assert_eq!(
            s.record_poll(src, run, &obs, &[], Some("c1"), now())
                .unwrap()
                .stored,
            3
        );
        let again = s
            .record_poll(src, run, &obs, &[], Some("c2"), now())
            .unwrap();
        assert_eq!((again.stored, again.updated, again.unchanged), (0, 0, 3));
        // Re-sent with a new value (a day that filled up): updated in place.
        let mut resent = obs.clone();
        resent[2].value = 99.0;
        let third = s.record_poll(src, run, &resent, &[], None, now()).unwrap();
        assert_eq!((third.stored, third.updated, third.unchanged), (0, 1, 2));
        assert_eq!(s.observations(pid, "hrv", &[]).unwrap()[2].2, 99.0);
        assert_eq!(s.counts().unwrap().observations, 3);
        // Deleted at the source: withdrawn (kept, left out), once; sent
        // again: restored.
        let gone = ["r1".to_string(), "r404".to_string()];
        let fourth = s.record_poll(src, run, &[], &gone, None, now()).unwrap();
        assert_eq!(fourth.withdrawn, 1);
        assert_eq!(
            s.record_poll(src, run, &[], &gone, None, now())
                .unwrap()
                .withdrawn,
            0
        );
        let left: Vec<f64> = s
            .observations(pid, "hrv", &[])
            .unwrap()
            .iter()
            .map(|o| o.2)
            .collect();
        assert_eq!(left, [50.0, 99.0]);
        assert_eq!(s.counts().unwrap().observations, 3, "kept");
        assert_eq!(s.stream_counts(pid).unwrap()[0].1, 2);
        let back = s
            .record_poll(src, run, &obs[1..2], &[], None, now())
            .unwrap();
        assert_eq!(back.updated, 1, "restored");
        assert_eq!(s.observations(pid, "hrv", &[]).unwrap().len(), 3);
        let mut bad = obs.clone();
        bad[0].source_record_id = "r9".into();
        bad[1].value = f64::NAN;
        let e = s
            .record_poll(src, run, &bad, &[], Some("c3"), now())
            .unwrap_err()
            .to_string();
        assert!(e.contains("r1"), "{e}");
        assert_eq!(s.counts().unwrap().observations, 3);
        assert_eq!(s.sources().unwrap()[0].cursor.as_deref(), Some("c2"));
    }

    #[test]
    fn a_new_database_is_made_only_where_no_earlier_one_lived() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("nof1d.sqlite");
        // Beside a backup: refused, nothing created.
        std::fs::write(
            dir.path().join("nof1d-2026-12-01.sqlite"),
            b"SQLite format 3\0...",
        )
        .unwrap();
        let e = Store::open(&db).err().unwrap();
        assert!(matches!(e, StoreError::WouldStartOver { .. }), "{e}");
        assert!(e.to_string().contains("another database file"), "{e}");
        assert!(!db.exists());
        // A zero-length file beside a non-empty WAL: refused, both untouched.
        std::fs::remove_file(dir.path().join("nof1d-2026-12-01.sqlite")).unwrap();
        std::fs::write(&db, b"").unwrap();
        std::fs::write(dir.path().join("nof1d.sqlite-wal"), [7u8; 4096]).unwrap();
        let e = Store::open(&db).err().unwrap();
        assert!(
            e.to_string().contains("nof1d.sqlite-wal (4096 bytes)"),
            "{e}"
        );
        assert_eq!(
            std::fs::read(dir.path().join("nof1d.sqlite-wal")).unwrap(),
            vec![7u8; 4096]
        );
        assert_eq!(std::fs::metadata(&db).unwrap().len(), 0);
        // An empty folder: created, 0600.
        let fresh = tempfile::tempdir().unwrap();
        let db = fresh.path().join("nof1d.sqlite");
        Store::open(&db).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn newer_and_foreign_and_garbage_files_are_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let newer = dir.path().join("newer.sqlite");
        {
            let c = Connection::open(&newer).unwrap();
            c.pragma_update(None, "user_version", 99).unwrap();
            c.execute("CREATE TABLE x (a)", []).unwrap();
        }
        let before = std::fs::read(&newer).unwrap();
        let e = Store::open(&newer).err().unwrap();
        assert!(matches!(e, StoreError::TooNew { found: 99, .. }), "{e}");
        assert_eq!(std::fs::read(&newer).unwrap(), before);

        let foreign = dir.path().join("foreign.sqlite");
        Connection::open(&foreign)
            .unwrap()
            .execute("CREATE TABLE x (a)", [])
            .unwrap();
        let e = Store::open(&foreign).err().unwrap();
        assert!(matches!(e, StoreError::Foreign { .. }), "{e}");

        let garbage = dir.path().join("garbage.sqlite");
        std::fs::write(&garbage, vec![0x42u8; 8192]).unwrap();
        let e = Store::open(&garbage).err().unwrap();
        assert!(matches!(e, StoreError::NotADatabase { .. }), "{e}");
        assert_eq!(std::fs::read(&garbage).unwrap(), vec![0x42u8; 8192]);
    }

    #[test]
    fn ts_sorts_as_time() {
        let a: Timestamp = "2026-11-25T07:30:00.5Z".parse().unwrap();
        let b: Timestamp = "2026-11-25T07:30:01Z".parse().unwrap();
        assert!(ts(a) < ts(b));
        assert_eq!(ts(b), "2026-11-25T07:30:01Z");
    }

    #[test]
    fn a_renewed_grant_is_not_stored_over_a_connection_made_during_its_refresh() {
        use crate::service::oauth::Grant;
        use crate::service::sources::granted::Renewal;
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("db.sqlite")).unwrap();
        let pid = participant(&mut s);
        let src = s.ensure_source(pid, "oura", "oura", "{}", now()).unwrap();
        let grant = |token: &str| Grant {
            access_token: token.into(),
            refresh_token: Some(format!("refresh-{token}")),
            expires_at: None,
            scope: "daily".into(),
        };
        s.save_grant(src, &grant("first"), now()).unwrap();
        let later = now() + jiff::SignedDuration::from_mins(5);
        let renewal = |token: &str| Renewal {
            grant: grant(token),
            replaces_stored_at: now(),
            replaces_access_token: "first".into(),
        };
        // Nothing happened meanwhile: the renewal replaces the grant.
        assert!(
            s.save_renewed_grant(src, &renewal("renewed"), later)
                .unwrap()
        );
        assert_eq!(s.grant(src).unwrap().unwrap().grant.access_token, "renewed");
        // A renewal of a grant replaced since (the person connected again,
        // perhaps to another account) leaves the new connection alone.
        s.save_grant(src, &grant("reconnected"), later).unwrap();
        let stale = Renewal {
            replaces_stored_at: later,
            replaces_access_token: "renewed".into(),
            ..renewal("old-account")
        };
        assert!(!s.save_renewed_grant(src, &stale, later).unwrap());
        let stored = s.grant(src).unwrap().unwrap();
        assert_eq!(stored.grant.access_token, "reconnected");
        assert!(stored.is_connected());
    }

    #[test]
    fn an_approval_or_edit_made_on_another_version_of_the_protocol_is_refused_in_its_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("db.sqlite")).unwrap();
        let pid = participant(&mut s);
        let text = include_str!("../../protocols/magnesium-migraine.toml");
        let shown = ProtocolHash::of(text).0;
        let id = s
            .propose_trial(
                &Proposal {
                    participant_id: pid,
                    protocol_id: "magnesium",
                    protocol_toml: text,
                    protocol_hash: &shown,
                    seed: 7,
                },
                "test",
                now(),
            )
            .unwrap();
        // Edited in another tab after the first was shown.
        let edited = text.replacen("max_blocks", "# edited\nmax_blocks", 1);
        let edited_hash = ProtocolHash::of(&edited).0;
        let edit = ProposalEdit {
            trial_id: id,
            protocol_toml: &edited,
            protocol_hash: &edited_hash,
            edited_from: &shown,
            summary: "a comment",
            actor: "test",
        };
        s.edit_proposal(&edit, now()).unwrap();
        // The same edit from a page that showed the first version again: refused.
        let refused = s.edit_proposal(&edit, now()).unwrap_err();
        assert!(
            matches!(&refused, StoreError::Refused(e) if e.contains("was changed after this page was shown")),
            "{refused}"
        );
        let stale = StatusChange {
            trial_id: id,
            to: TrialStatus::Approved,
            actor: "test",
            reason: "approved",
            local_date: "2026-11-25".parse().unwrap(),
            start_date: Some("2026-11-26".parse().unwrap()),
            shifted: &[],
            reviewed: Some(&shown),
        };
        let refused = s.change_status(&stale, now()).unwrap_err();
        assert!(
            matches!(&refused, StoreError::Refused(e) if e.contains(&edited_hash)),
            "{refused}"
        );
        assert_eq!(s.trial(id).unwrap().unwrap().status, TrialStatus::Proposed);
        let current = StatusChange {
            reviewed: Some(&edited_hash),
            ..stale
        };
        s.change_status(&current, now()).unwrap();
        assert_eq!(s.trial(id).unwrap().unwrap().status, TrialStatus::Approved);
    }

    #[test]
    fn the_migration_marks_what_was_withheld_by_its_error_text_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("db.sqlite")).unwrap();
        let pid = participant(&mut s);
        let ids = [
            queued_summary(&mut s, pid, "a"),
            queued_summary(&mut s, pid, "b"),
        ];
        s.mark_failed(ids[0], "not delivered: its trial is stopped")
            .unwrap();
        s.mark_failed(ids[1], "SMTP 550 mailbox unavailable")
            .unwrap();
        // What the rows looked like before the column: withheld by text.
        s.conn
            .execute("UPDATE outbox SET withheld = 0", [])
            .unwrap();
        let backfill: String = MIGRATION_FILES[16]
            .split(';')
            .filter(|sql| sql.trim_start().starts_with("UPDATE"))
            .collect::<Vec<_>>()
            .join(";");
        s.conn.execute_batch(&backfill).unwrap();
        let withheld = |mid: i64| -> i64 {
            s.conn
                .query_row("SELECT withheld FROM outbox WHERE id = ?1", [mid], |r| {
                    r.get(0)
                })
                .unwrap()
        };
        assert_eq!((withheld(ids[0]), withheld(ids[1])), (1, 0));
    }
}

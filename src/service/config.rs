//! Configuration: one TOML file, every key optional, embedded defaults for the rest.
//!
//! `examples/nof1d.toml` documents every key with its
//! default; a test keeps it parseable. Secrets are never written in the file
//! itself: they are named by an environment variable or a file path
//! ([`SecretRef`]) and held in a [`Secret`] that never prints.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use jiff::civil::Time;
use jiff::tz::TimeZone;
use serde::Deserialize;

use crate::trial::calendar::parse_hhmm;
use crate::trial::protocol::is_slug;

/// Errors met while reading or checking the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML did not parse or a key was unknown or of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (it names the line and key).
        message: String,
    },
    /// A value parsed but makes no sense.
    #[error("config: {0}")]
    Invalid(String),
    /// A secret could not be resolved.
    #[error("config: secret {what}: {why}")]
    Secret {
        /// Which setting.
        what: String,
        /// Why it failed (never the secret's value).
        why: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Folder for the database, the lock, mail written as `.eml` and backups.
    pub data_dir: PathBuf,
    /// The database file itself: encryption at rest.
    pub database: DatabaseConfig,
    /// Logging.
    pub log: LogConfig,
    /// The dashboard / HTTP server.
    pub web: WebConfig,
    /// Outgoing mail.
    pub email: EmailConfig,
    /// How often the daemon's jobs tick.
    pub jobs: JobsConfig,
    /// Simulated time, for demos and tests.
    pub clock: ClockConfig,
    /// The demo participant.
    pub demo: DemoConfig,
    /// The people this instance runs trials for (a household may share one).
    pub participants: Vec<ParticipantConfig>,
    /// The LLM that proposes hypotheses; absent: the built-in proposer.
    pub llm: Option<LlmConfig>,
    /// How hypotheses become proposals.
    pub hypotheses: HypothesesConfig,
    /// Where the engine runs.
    pub engine: EngineConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./nof1d-data"),
            database: DatabaseConfig::default(),
            log: LogConfig::default(),
            web: WebConfig::default(),
            email: EmailConfig::default(),
            jobs: JobsConfig::default(),
            clock: ClockConfig::default(),
            demo: DemoConfig::default(),
            participants: Vec::new(),
            llm: None,
            hypotheses: HypothesesConfig::default(),
            engine: EngineConfig::default(),
        }
    }
}

/// Database settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// The passphrase that encrypts the database, its WAL and its backups
    /// (SQLCipher: AES-256, keys derived with PBKDF2-HMAC-SHA512), from an
    /// environment variable or a file. Set it, then run `nof1d encrypt` once
    /// to convert an existing database (a new one is created encrypted).
    pub key: Option<SecretRef>,
}

impl DatabaseConfig {
    /// The passphrase, if encryption is on (at least 128 bits, like
    /// `web.token`: `nof1d new-token` makes one).
    pub fn resolve_key(&self) -> Result<Option<Secret>, ConfigError> {
        let Some(key) = &self.key else {
            return Ok(None);
        };
        let secret = key.resolve("database.key")?;
        require_strength(
            &secret,
            "database.key",
            "Make a strong one with `nof1d new-token > key-file`, and keep a copy somewhere safe: without it the data cannot be read",
        )?;
        Ok(Some(secret))
    }
}

/// Logging settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter: `info`, `debug`, `nof1d=debug,tower_http=warn`, ...
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info,tokio_cron_scheduler=warn".into(),
            format: LogFormat::Text,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for journald / log shippers).
    Json,
}

/// HTTP server settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Address to bind. Anything but loopback needs a token or a password.
    pub listen: SocketAddr,
    /// Bearer token for scripts (investigator view) on every page and API call.
    pub token: Option<SecretRef>,
    /// Argon2 PHC hash of the participant's dashboard password (login page).
    pub password_hash: Option<String>,
    /// Argon2 PHC hash of the investigator's password: this login also sees
    /// future assignments and which code is which arm in blinded trials.
    pub investigator_password_hash: Option<String>,
    /// Host names (besides loopback names, IP addresses and the host of
    /// `email.public_url`) the dashboard answers to; any other `Host` is
    /// refused, which stops DNS-rebinding pages from reaching it.
    pub allowed_hosts: Vec<String>,
    /// The most connections served at once (1 to [`MAX_CONNECTIONS`]); more
    /// wait in the kernel's queue.
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers (1 to 300); a
    /// connection that has not is closed.
    pub header_timeout_seconds: u64,
    /// Seconds a request may take from its headers to the end of its answer
    /// (1 to 3600; a body that never arrives included).
    pub request_timeout_seconds: u64,
}

/// The most `web.max_connections` may be (each holds a file descriptor).
pub const MAX_CONNECTIONS: usize = 16_384;
/// The least entropy a `web.token` must have, in bits.
pub const TOKEN_MIN_BITS: f64 = 128.0;
/// The most virtual trials `jobs.design_trials` and `jobs.calibration_trials` may ask for.
pub const MAX_JOB_TRIALS: usize = 100_000;

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token: None,
            password_hash: None,
            investigator_password_hash: None,
            allowed_hosts: Vec::new(),
            max_connections: 256,
            header_timeout_seconds: 10,
            request_timeout_seconds: 60,
        }
    }
}

/// Outgoing mail settings. With no SMTP configured, mail is written as `.eml`
/// files under `data_dir/mail/`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailConfig {
    /// The From: address.
    pub from: String,
    /// The dashboard's address as participants reach it, for the links in
    /// emails (default: `http://` + `web.listen`).
    pub public_url: Option<String>,
    /// Days a one-click link in an email stays valid.
    pub link_valid_days: u32,
    /// Send each participant a weekly summary, with the first assignment of
    /// each ISO week (normally Monday's).
    pub weekly_summary: bool,
    /// The SMTP server; without it messages are written as `.eml` files.
    pub smtp: Option<SmtpConfig>,
}

impl Default for EmailConfig {
    fn default() -> Self {
        EmailConfig {
            from: "nof1d <nof1d@localhost>".into(),
            public_url: None,
            link_valid_days: 7,
            weekly_summary: false,
            smtp: None,
        }
    }
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (required); port 587.
    #[default]
    Starttls,
    /// TLS from the first byte; port 465.
    Implicit,
    /// No encryption: only for a relay on this machine or a test server.
    None,
}

/// An SMTP server to deliver through.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Host name (checked against the server's certificate).
    pub host: String,
    /// Port (default 587 for STARTTLS, 465 for implicit TLS, 25 without TLS).
    pub port: Option<u16>,
    /// Security.
    #[serde(default)]
    pub tls: SmtpTls,
    /// User name, when the server wants authentication.
    pub username: Option<String>,
    /// Password (`{ env = ... }` or `{ file = ... }`).
    pub password: Option<SecretRef>,
    /// Seconds before a connection or command times out.
    #[serde(default = "default_smtp_timeout")]
    pub timeout_seconds: u64,
}

fn default_smtp_timeout() -> u64 {
    30
}

impl SmtpConfig {
    /// The port in use.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Implicit => 465,
            SmtpTls::None => 25,
        })
    }
}

/// An OpenAI-compatible chat-completions endpoint (Ollama, llama.cpp's
/// server, vLLM, a hosted API).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// Base URL up to and including `/v1`, e.g. `http://127.0.0.1:11434/v1`.
    pub base_url: String,
    /// The model name the server knows.
    pub model: String,
    /// The API key, from an environment variable or a file (none for a
    /// local server).
    pub api_key: Option<SecretRef>,
    /// Seconds one request may take, the answer included.
    #[serde(default = "default_llm_timeout")]
    pub timeout_seconds: u64,
    /// Further tries after a time-out, a 429, a 5xx or a broken connection.
    #[serde(default = "default_llm_retries")]
    pub retries: u32,
    /// The longest wait before a retry, whatever `Retry-After` asks.
    #[serde(default = "default_llm_retry_wait")]
    pub max_retry_wait_seconds: u64,
    /// The most tokens an answer may take (`max_tokens`): a small model
    /// caught in a loop stops there instead of filling its context.
    #[serde(default = "default_llm_max_tokens")]
    pub max_tokens: u32,
    /// How the answer's shape is asked for: `json_schema` (strict
    /// structured output), `json_object` (JSON mode) or `none` (the prompt
    /// alone); a server that refuses the first falls back to the next.
    #[serde(default)]
    pub structured: Structured,
}

/// How a chat request asks for JSON.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Structured {
    /// `response_format: {type: json_schema, …}`.
    #[default]
    JsonSchema,
    /// `response_format: {type: json_object}`.
    JsonObject,
    /// No `response_format`: the prompt carries the schema.
    None,
}

fn default_llm_timeout() -> u64 {
    120
}
fn default_llm_retries() -> u32 {
    3
}
fn default_llm_retry_wait() -> u64 {
    60
}
fn default_llm_max_tokens() -> u32 {
    2048
}

/// Where the engine runs (`[engine]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// `auto` (the GPU where one is found and the work is large enough to
    /// gain: measured not to for simulations so far), `cpu` or `cuda` (the GPU; the
    /// CPU with a warning where there is none). With `cuda` a design's
    /// simulation keeps 512 fits in flight, on every core.
    pub backend: crate::engine::gpu::BackendChoice,
}

/// How hypotheses become proposals (`system.md`, "Hypotheses").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HypothesesConfig {
    /// A hypothesis whose uncertainty `sigma` is at or above `tau` becomes
    /// a proposed trial; below it, a recommendation that needs no experiment.
    pub tau: f64,
    /// The most hypotheses kept from one answer.
    pub per_question: usize,
    /// Days between scheduled proposals from each participant's goals (0: never).
    pub propose_every_days: u32,
}

impl Default for HypothesesConfig {
    fn default() -> Self {
        HypothesesConfig {
            tau: 0.3,
            per_question: 3,
            propose_every_days: 7,
        }
    }
}

/// Job periods, in real seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// How often data sources are polled.
    pub source_poll_seconds: u64,
    /// How often the daily-assignment check runs (it decides per participant
    /// whether their local assignment time has come).
    pub assignment_check_seconds: u64,
    /// How often the outbox is delivered.
    pub outbox_seconds: u64,
    /// How often running trials are checked for new data to refit.
    pub refit_seconds: u64,
    /// How often proposals are checked for a design not yet simulated.
    pub design_seconds: u64,
    /// How often participants are checked for scheduled proposals (they
    /// come every `hypotheses.propose_every_days`, and after a trial ends).
    pub hypotheses_seconds: u64,
    /// Virtual trials per condition when simulating a proposal's design
    /// (gaussian outcomes; the slower families use a twentieth, at least 10).
    pub design_trials: usize,
    /// Calibrate every design's efficacy threshold on the stress suite
    /// before its trial starts (an approved trial waits for it). Off: trials
    /// decide on their protocol's stated thresholds, and say so.
    pub calibrate: bool,
    /// The most null virtual trials the binding scenario of a calibration
    /// gets (every scenario starts with a quarter of it; a quarter, and at
    /// least the 29 that calibrating futility at 10% takes, run under the
    /// effect). Outcomes the Kalman filter fits (gaussian, normal noise).
    pub calibration_trials: usize,
    /// The same for the importance-sampled outcomes (the other families,
    /// Student-t noise), whose fits take about a hundred times as long;
    /// unset: a fifth of `calibration_trials`, at least 8. At the default
    /// 80 every scenario keeps its first 59 trials (none of which may stop
    /// falsely at 5%), which makes the threshold strict; more buys a lower
    /// threshold, hence power, for proportionally more time. Designs
    /// calibrated before it was set keep their stored calibration.
    pub calibration_trials_sampled: Option<usize>,
    /// Once a trial is approved, a design whose calibration gave the
    /// binding scenario fewer null trials than this is calibrated again on
    /// this many, in the background (after every proposal's own work); a
    /// running trial takes the refined thresholds only if they come before
    /// its first look that can stop it, so that one rule, fixed before any
    /// decision, takes them all. Unset: `calibration_trials`, so that the
    /// importance-sampled outcomes' quick calibration is refined to the size
    /// the gaussian ones get; 0: never refine.
    pub refinement_trials: Option<usize>,
    /// Threads the designs job's simulations and calibrations use (0: all
    /// cores; on a GPU the fits kept in flight are set by the device
    /// instead). A calibration runs for a minute or more in the background,
    /// beside the refits of running trials (a few fits each).
    pub design_threads: usize,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            source_poll_seconds: 60,
            assignment_check_seconds: 20,
            outbox_seconds: 10,
            refit_seconds: 60,
            design_seconds: 60,
            hypotheses_seconds: 3600,
            design_trials: 400,
            calibrate: true,
            calibration_trials: 400,
            calibration_trials_sampled: None,
            refinement_trials: None,
            design_threads: 0,
        }
    }
}

impl JobsConfig {
    /// The threads the designs job uses: `design_threads`, or all cores at 0.
    pub fn design_thread_count(&self) -> usize {
        match self.design_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The null trials a started design's calibration is refined to
    /// (`refinement_trials`, else `calibration_trials`; 0: never).
    pub fn refinement_trial_count(&self) -> usize {
        self.refinement_trials.unwrap_or(self.calibration_trials)
    }
}

/// Simulated time: `time_scale` simulated seconds pass per real second,
/// counted from the first start (the anchor is stored in the database so a
/// restart continues the same timeline). 1.0 is real time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockConfig {
    /// Simulated seconds per real second.
    pub time_scale: f64,
    /// The simulated instant the timeline starts from at first start
    /// (RFC 3339), e.g. just before a DST change, or a fixed instant at real
    /// speed so that a test sees the same day and hour whenever it runs;
    /// default: now.
    pub start: Option<String>,
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig {
            time_scale: 1.0,
            start: None,
        }
    }
}

/// The demo participant (`nof1d serve --demo` turns it on).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// Seed a simulated participant with history and a running trial.
    pub enabled: bool,
    /// The demo participant's IANA time zone.
    pub time_zone: String,
    /// The demo participant's evening reminder (`HH:MM`, or `off`: the
    /// simulated person answers by themselves at 21:00).
    pub evening_reminder: String,
    /// Days in a row without outcome data before the demo participant is
    /// nudged and the dashboard warns (0: off, the default: the simulated
    /// person's data come by themselves).
    pub missing_data_days: u32,
    /// Push channels for the demo participant's messages (to try ntfy or
    /// Home Assistant before a trial of one's own).
    pub push: Vec<crate::service::push::PushConfig>,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            enabled: false,
            time_zone: "Europe/London".into(),
            evening_reminder: "off".into(),
            missing_data_days: 0,
            push: Vec::new(),
        }
    }
}

/// One participant as written in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantConfig {
    /// Stable identifier (letters, digits, `-`, `_`); rows in the store hang on it.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Where the daily email goes.
    pub email: String,
    /// IANA time zone, e.g. `Europe/Berlin`.
    pub time_zone: String,
    /// Local time of the daily assignment email, `HH:MM`.
    #[serde(default = "default_assignment_time")]
    pub assignment_time: String,
    /// Local time of the evening reminder, sent on a trial day when the
    /// outcome is a self-report whose answer for the day has not come
    /// (`HH:MM`, or `off`).
    #[serde(default = "default_evening_reminder")]
    pub evening_reminder: String,
    /// After this many trial days in a row without outcome data, one email
    /// says so and the dashboard warns (0: off; at most
    /// `MAX_MISSING_DATA_DAYS`).
    #[serde(default = "default_missing_data_days")]
    pub missing_data_days: u32,
    /// Per-stream day rules and device preferences.
    #[serde(default)]
    pub streams: Vec<StreamConfig>,
    /// What the person wants to improve, in their words ("fewer migraine
    /// days", "calmer evenings"): scheduled proposals start from these.
    #[serde(default)]
    pub goals: Vec<String>,
    /// CSV and JSON files described by a mapping (column → stream, unit,
    /// time column and zone), imported from the inbox or `nof1d import`.
    #[serde(default)]
    pub imports: Vec<crate::service::sources::mapped::MappingConfig>,
    /// Home Assistant instances whose sensor entities are streams.
    #[serde(default)]
    pub home_assistant: Vec<crate::service::sources::home_assistant::HomeAssistantConfig>,
    /// Oura accounts (connected on the sources page).
    #[serde(default)]
    pub oura: Vec<crate::service::sources::granted::LoginConfig>,
    /// Strava accounts (connected on the sources page).
    #[serde(default)]
    pub strava: Vec<crate::service::sources::granted::LoginConfig>,
    /// Withings accounts (connected on the sources page).
    #[serde(default)]
    pub withings: Vec<crate::service::sources::granted::LoginConfig>,
    /// Push channels (ntfy, Home Assistant) that get every message beside
    /// the email.
    #[serde(default)]
    pub push: Vec<crate::service::push::PushConfig>,
}

/// One stream's settings for a participant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// The stream's key, e.g. `steps`.
    pub key: String,
    /// When its day starts: `HH:MM` after midnight (`04:00`: late nights
    /// count to the evening before) or `-HH:MM` before it (`-06:00`: 18:00
    /// the evening before, as sleep's wake-up day). Default: `-06:00` for
    /// sleep streams, `00:00` otherwise.
    pub day_start: Option<String>,
    /// Which end of an interval sample dates it: `start` or `end`.
    pub anchor: Option<crate::service::streams::Anchor>,
    /// Devices or apps in order of preference, matched as parts of the
    /// origin's name ("Watch", "iPhone"); one origin counts each day.
    #[serde(default)]
    pub prefer: Vec<String>,
}

fn default_evening_reminder() -> String {
    "20:30".into()
}

/// The longest `missing_data_days`: beyond it a silent source would go
/// unremarked for most of a trial.
pub const MAX_MISSING_DATA_DAYS: u32 = 60;

fn default_missing_data_days() -> u32 {
    3
}

fn default_assignment_time() -> String {
    "07:30".into()
}

/// A participant whose time zone and assignment time have been checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Participant {
    /// Stable identifier.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Email address.
    pub email: String,
    /// IANA name, as written.
    pub time_zone_name: String,
    /// The zone.
    pub time_zone: TimeZone,
    /// Local time of the daily assignment.
    pub assignment_time: Time,
    /// Local time of the evening reminder (`None`: off).
    pub evening_reminder: Option<Time>,
    /// Days in a row without outcome data before a nudge (`None`: off).
    pub missing_data_days: Option<u32>,
    /// Per-stream day rules and device preferences.
    pub streams: crate::service::streams::StreamRules,
    /// Mapped CSV/JSON imports, checked.
    pub imports: Vec<crate::service::sources::mapped::Mapping>,
}

impl ParticipantConfig {
    /// The login sources (Oura, Strava, Withings), each with its kind.
    pub fn logins(
        &self,
    ) -> impl Iterator<Item = (&'static str, &crate::service::sources::granted::LoginConfig)> {
        use crate::service::sources::{oura, strava, withings};
        (self.oura.iter().map(|c| (oura::KIND, c)))
            .chain(self.strava.iter().map(|c| (strava::KIND, c)))
            .chain(self.withings.iter().map(|c| (withings::KIND, c)))
    }

    /// Checks the key, zone and time; the error names the participant and key.
    pub fn resolve(&self) -> Result<Participant, ConfigError> {
        if !is_slug(&self.key) {
            return Err(ConfigError::Invalid(format!(
                "participants.key {:?}: use letters, digits, '-' or '_'",
                self.key
            )));
        }
        if !self.email.contains('@') {
            return Err(ConfigError::Invalid(format!(
                "participant {}: email {:?} is not an address",
                self.key, self.email
            )));
        }
        let time_zone = TimeZone::get(&self.time_zone).map_err(|e| {
            ConfigError::Invalid(format!(
                "participant {}: time_zone {:?} is not an IANA zone: {e}",
                self.key, self.time_zone
            ))
        })?;
        let assignment_time = parse_hhmm(&self.assignment_time).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "participant {}: assignment_time {:?} must be HH:MM (24-hour)",
                self.key, self.assignment_time
            ))
        })?;
        let evening_reminder = match self.evening_reminder.trim() {
            "off" => None,
            text => Some(parse_hhmm(text).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "participant {}: evening_reminder {text:?} must be HH:MM (24-hour) or \"off\"",
                    self.key
                ))
            })?),
        };
        if self.missing_data_days > MAX_MISSING_DATA_DAYS {
            return Err(ConfigError::Invalid(format!(
                "participant {}: missing_data_days {} must be 0 (off) to {MAX_MISSING_DATA_DAYS}",
                self.key, self.missing_data_days
            )));
        }
        let mut streams = crate::service::streams::StreamRules::default();
        for st in &self.streams {
            let default = crate::service::streams::DayRule::default_for(&st.key);
            let day_start = match &st.day_start {
                None => default.day_start,
                Some(text) => crate::service::streams::parse_day_start(text).ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "participant {}: streams {:?}: day_start {text:?} must be HH:MM or -HH:MM within 12 hours",
                        self.key, st.key
                    ))
                })?,
            };
            let rule = crate::service::streams::StreamRule {
                day: crate::service::streams::DayRule {
                    anchor: st.anchor.unwrap_or(default.anchor),
                    day_start,
                },
                prefer: st.prefer.clone(),
            };
            if streams.0.insert(st.key.clone(), rule).is_some() {
                return Err(ConfigError::Invalid(format!(
                    "participant {}: stream {:?} is configured twice",
                    self.key, st.key
                )));
            }
        }
        let mut imports: Vec<crate::service::sources::mapped::Mapping> = Vec::new();
        for m in &self.imports {
            let mapping = m.resolve(&self.key).map_err(ConfigError::Invalid)?;
            if imports.iter().any(|other| other.name == mapping.name) {
                return Err(ConfigError::Invalid(format!(
                    "participant {}: imports {:?} appears twice",
                    self.key, mapping.name
                )));
            }
            imports.push(mapping);
        }
        // Imports, Home Assistant and the login sources share one name space.
        let mut source_names: std::collections::BTreeSet<String> =
            imports.iter().map(|m| m.name.clone()).collect();
        let pulled = self
            .home_assistant
            .iter()
            .map(|ha| (ha.name.clone(), ha.check(&self.key)))
            .chain(
                self.logins()
                    .map(|(kind, o)| (o.source_name(kind), o.check(kind, &self.key))),
            );
        for (name, checked) in pulled {
            checked.map_err(ConfigError::Invalid)?;
            if !source_names.insert(name.clone()) {
                return Err(ConfigError::Invalid(format!(
                    "participant {}: source name {name:?} is used twice (imports, home_assistant, oura, strava and withings share names)",
                    self.key
                )));
            }
        }
        Ok(Participant {
            key: self.key.clone(),
            name: self.name.clone(),
            email: self.email.clone(),
            time_zone_name: self.time_zone.clone(),
            time_zone,
            assignment_time,
            evening_reminder,
            missing_data_days: (self.missing_data_days > 0).then_some(self.missing_data_days),
            streams,
            imports,
        })
    }
}

/// Where a secret comes from: an environment variable or a file (first line,
/// trimmed). Exactly one must be given.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Environment variable holding the secret.
    pub env: Option<String>,
    /// File holding the secret.
    pub file: Option<PathBuf>,
}

impl SecretRef {
    /// Reads the secret; `what` names the setting in errors.
    pub fn resolve(&self, what: &str) -> Result<Secret, ConfigError> {
        let err = |why: String| ConfigError::Secret {
            what: what.to_string(),
            why,
        };
        let value = match (&self.env, &self.file) {
            (Some(var), None) => std::env::var(var)
                .map_err(|_| err(format!("environment variable {var} is not set")))?,
            (None, Some(path)) => crate::limits::read_text(path, crate::limits::SECRET_FILE_BYTES)
                .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?
                .trim()
                .to_string(),
            _ => return Err(err("give exactly one of `env` or `file`".into())),
        };
        if value.is_empty() {
            return Err(err("it is empty".into()));
        }
        Ok(Secret(value))
    }
}

/// A secret value: its `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value read from elsewhere (tests, a prompt).
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// An estimate of a token's entropy in bits: its length times the bits of
/// the smallest alphabet it fits (hex 4, base64 6, printable ASCII 6.6).
/// Tokens of fewer than 8 distinct characters (`aaaa…`, `abab…`) get none:
/// a random token long enough to pass has many more.
pub fn token_bits(token: &str) -> f64 {
    let distinct = token
        .chars()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let len = token.chars().count();
    if distinct < 8 {
        return 0.0;
    }
    let per_char = if token.chars().all(|c| c.is_ascii_hexdigit()) {
        4.0
    } else if token
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "+/-_=".contains(c))
    {
        6.0
    } else {
        95f64.log2()
    };
    len as f64 * per_char
}

/// Refuses a `web.token` with less than [`TOKEN_MIN_BITS`] bits (checked
/// by the daemon at start-up, where the token is read; other commands do
/// not need it).
pub fn check_token(token: &Secret) -> Result<(), ConfigError> {
    require_strength(
        token,
        "web.token",
        "Make a strong one with `nof1d new-token > token-file` and point web.token at that file",
    )
}

/// Refuses `secret` (the setting `what`) below [`TOKEN_MIN_BITS`], saying
/// how to make a good one (`advice`).
fn require_strength(secret: &Secret, what: &str, advice: &str) -> Result<(), ConfigError> {
    let bits = token_bits(secret.expose());
    if bits < TOKEN_MIN_BITS {
        return Err(ConfigError::Invalid(format!(
            "{what} is too weak (about {bits:.0} bits; at least {TOKEN_MIN_BITS:.0} are needed, so that it cannot be guessed). {advice}"
        )));
    }
    Ok(())
}

impl Config {
    /// Loads `path`; a missing file is fine only when `required` is false
    /// (the default path), in which case embedded defaults are used.
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        let text = match crate::limits::read_text(path, crate::limits::SMALL_FILE_BYTES) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Config::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Config::parse(&text, path)
    }

    /// When participant `key` is reminded in the evening (`None`: off; the
    /// demo participant's from `[demo]`, off unless set).
    pub fn evening_reminder(&self, key: &str) -> Option<Time> {
        match self.participants.iter().find(|p| p.key == key) {
            Some(p) => p.resolve().ok().and_then(|p| p.evening_reminder),
            None if key == crate::service::demo::PARTICIPANT_KEY => {
                parse_hhmm(&self.demo.evening_reminder)
            }
            None => None,
        }
    }

    /// Participant `key`'s push channels (the demo participant's from
    /// `[demo]`).
    pub fn push(&self, key: &str) -> &[crate::service::push::PushConfig] {
        match self.participants.iter().find(|p| p.key == key) {
            Some(p) => &p.push,
            None if key == crate::service::demo::PARTICIPANT_KEY => &self.demo.push,
            None => &[],
        }
    }

    /// After how many trial days in a row without outcome data participant
    /// `key` is nudged and the dashboard warns (`None`: off; the demo
    /// participant's from `[demo]`).
    pub fn missing_data_days(&self, key: &str) -> Option<u32> {
        match self.participants.iter().find(|p| p.key == key) {
            Some(p) => p.resolve().ok().and_then(|p| p.missing_data_days),
            None if key == crate::service::demo::PARTICIPANT_KEY => {
                let days = self.demo.missing_data_days;
                (days > 0).then_some(days.min(MAX_MISSING_DATA_DAYS))
            }
            None => None,
        }
    }

    /// The stream rules of participant `key` (defaults for a participant the
    /// config does not name, such as the demo).
    pub fn stream_rules(&self, key: &str) -> crate::service::streams::StreamRules {
        self.participants
            .iter()
            .find(|p| p.key == key)
            .and_then(|p| p.resolve().ok())
            .map(|p| p.streams)
            .unwrap_or_default()
    }

    /// What importing a file for participant `key` needs: the stream rules
    /// and the mapped imports (none for a participant the config does not
    /// name, such as the demo).
    pub fn import_settings(&self, key: &str) -> crate::service::sources::ingest::ImportSettings {
        self.participants
            .iter()
            .find(|p| p.key == key)
            .and_then(|p| p.resolve().ok())
            .map(|p| crate::service::sources::ingest::ImportSettings {
                rules: p.streams,
                mappings: p.imports,
            })
            .unwrap_or_default()
    }

    /// Parses config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.check()?;
        Ok(config)
    }

    /// Checks what serde cannot: participants, time scale, job periods.
    pub fn check(&self) -> Result<(), ConfigError> {
        let mut keys = std::collections::BTreeSet::new();
        for p in &self.participants {
            p.resolve()?;
            if !keys.insert(p.key.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "participant key {:?} appears twice",
                    p.key
                )));
            }
        }
        if !(self.clock.time_scale.is_finite()
            && (1.0..=crate::limits::MAX_TIME_SCALE).contains(&self.clock.time_scale))
        {
            return Err(ConfigError::Invalid(format!(
                "clock.time_scale must be a number from 1 to 1000000 (got {})",
                self.clock.time_scale
            )));
        }
        TimeZone::get(&self.demo.time_zone).map_err(|e| {
            ConfigError::Invalid(format!(
                "demo.time_zone {:?} is not an IANA zone: {e}",
                self.demo.time_zone
            ))
        })?;
        if self.demo.evening_reminder != "off" && parse_hhmm(&self.demo.evening_reminder).is_none()
        {
            return Err(ConfigError::Invalid(format!(
                "demo.evening_reminder {:?} must be HH:MM (24-hour) or \"off\"",
                self.demo.evening_reminder
            )));
        }
        for (name, v) in [
            ("jobs.source_poll_seconds", self.jobs.source_poll_seconds),
            (
                "jobs.assignment_check_seconds",
                self.jobs.assignment_check_seconds,
            ),
            ("jobs.outbox_seconds", self.jobs.outbox_seconds),
            ("jobs.refit_seconds", self.jobs.refit_seconds),
            ("jobs.design_seconds", self.jobs.design_seconds),
            ("jobs.hypotheses_seconds", self.jobs.hypotheses_seconds),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
            }
        }
        if let Some(start) = &self.clock.start {
            start.parse::<jiff::Timestamp>().map_err(|e| {
                ConfigError::Invalid(format!(
                    "clock.start {start:?} is not an RFC 3339 instant: {e}"
                ))
            })?;
        }
        if self.email.link_valid_days == 0 {
            return Err(ConfigError::Invalid(
                "email.link_valid_days must be at least 1".into(),
            ));
        }
        let h = &self.hypotheses;
        if !(0.0..=1.0).contains(&h.tau) {
            return Err(ConfigError::Invalid(format!(
                "hypotheses.tau must be between 0 and 1 (got {})",
                h.tau
            )));
        }
        if !(1..=10).contains(&h.per_question) {
            return Err(ConfigError::Invalid(format!(
                "hypotheses.per_question must be from 1 to 10 (got {})",
                h.per_question
            )));
        }
        if let Some(llm) = &self.llm {
            let url = llm.base_url.trim();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "llm.base_url {url:?} must start with http:// or https:// (e.g. http://127.0.0.1:11434/v1)"
                )));
            }
            if llm.model.trim().is_empty() {
                return Err(ConfigError::Invalid("llm.model is empty".into()));
            }
            if !(1..=3600).contains(&llm.timeout_seconds) || llm.retries > 10 {
                return Err(ConfigError::Invalid(
                    "llm.timeout_seconds must be from 1 to 3600 and llm.retries at most 10".into(),
                ));
            }
            if !(256..=65_536).contains(&llm.max_tokens) {
                return Err(ConfigError::Invalid(format!(
                    "llm.max_tokens must be from 256 to 65536 (got {})",
                    llm.max_tokens
                )));
            }
            if let Some(key) = &llm.api_key {
                key.resolve("llm.api_key")?;
            }
        }
        if let Some(smtp) = &self.email.smtp {
            if smtp.host.trim().is_empty() {
                return Err(ConfigError::Invalid("email.smtp.host is empty".into()));
            }
            if smtp.password.is_some() != smtp.username.is_some() {
                return Err(ConfigError::Invalid(
                    "email.smtp: give both username and password, or neither".into(),
                ));
            }
            if let Some(p) = &smtp.password {
                p.resolve("email.smtp.password")?;
            }
        }
        let pushes = self
            .participants
            .iter()
            .map(|p| (format!("participants[{}].push", p.key), &p.push))
            .chain([("demo.push".to_string(), &self.demo.push)]);
        for (what, channels) in pushes {
            for (i, channel) in channels.iter().enumerate() {
                channel.check(&format!("{what}[{i}]"))?;
            }
        }
        if let Some(url) = &self.email.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(format!(
                "email.public_url {url:?} must start with http:// or https://"
            )));
        }
        for (key, hash) in [
            ("web.password_hash", &self.web.password_hash),
            (
                "web.investigator_password_hash",
                &self.web.investigator_password_hash,
            ),
        ] {
            if let Some(hash) = hash {
                argon2::PasswordHash::new(hash).map_err(|e| {
                    ConfigError::Invalid(format!("{key} is not an argon2 PHC string: {e}"))
                })?;
            }
        }
        if let (Some(a), Some(b)) = (
            &self.web.password_hash,
            &self.web.investigator_password_hash,
        ) && a == b
        {
            return Err(ConfigError::Invalid(
                "web.password_hash and web.investigator_password_hash must differ".into(),
            ));
        }
        for host in &self.web.allowed_hosts {
            if host.is_empty()
                || !host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
            {
                return Err(ConfigError::Invalid(format!(
                    "web.allowed_hosts: {host:?} is not a host name (give names like \"nof1d.home.arpa\", without scheme, port or final dot; IP addresses are always served)"
                )));
            }
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.web.max_connections) {
            return Err(ConfigError::Invalid(format!(
                "web.max_connections must be 1 to {MAX_CONNECTIONS} (got {})",
                self.web.max_connections
            )));
        }
        if !(1..=300).contains(&self.web.header_timeout_seconds) {
            return Err(ConfigError::Invalid(format!(
                "web.header_timeout_seconds must be 1 to 300 (got {})",
                self.web.header_timeout_seconds
            )));
        }
        if !(1..=3600).contains(&self.web.request_timeout_seconds) {
            return Err(ConfigError::Invalid(format!(
                "web.request_timeout_seconds must be 1 to 3600 (got {})",
                self.web.request_timeout_seconds
            )));
        }
        if self.jobs.design_threads > crate::limits::MAX_THREADS {
            return Err(ConfigError::Invalid(format!(
                "jobs.design_threads must be 0 (all cores) to {} (got {})",
                crate::limits::MAX_THREADS,
                self.jobs.design_threads
            )));
        }
        for (name, v) in [
            ("jobs.design_trials", Some(self.jobs.design_trials)),
            (
                "jobs.calibration_trials",
                Some(self.jobs.calibration_trials),
            ),
            (
                "jobs.calibration_trials_sampled",
                self.jobs.calibration_trials_sampled,
            ),
        ]
        .into_iter()
        .filter_map(|(name, v)| v.map(|v| (name, v)))
        {
            if !(1..=MAX_JOB_TRIALS).contains(&v) {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be 1 to {MAX_JOB_TRIALS} (got {v})"
                )));
            }
        }
        if let Some(v) = self.jobs.refinement_trials
            && v > MAX_JOB_TRIALS
        {
            return Err(ConfigError::Invalid(format!(
                "jobs.refinement_trials must be 0 (never refine) to {MAX_JOB_TRIALS} (got {v})"
            )));
        }
        Ok(())
    }

    /// Path of the SQLite database.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("nof1d.sqlite")
    }

    /// The base URL of links in emails, without a trailing slash.
    pub fn public_url(&self) -> String {
        self.email
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.web.listen))
            .trim_end_matches('/')
            .to_string()
    }

    /// Folder where undelivered-by-SMTP mail is written as `.eml`.
    pub fn mail_dir(&self) -> PathBuf {
        self.data_dir.join("mail")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_strength_counts_alphabet_and_length_and_refuses_repetition() {
        assert_eq!(token_bits("x"), 0.0);
        assert_eq!(token_bits(&"a".repeat(64)), 0.0);
        assert_eq!(token_bits(&"abcd".repeat(16)), 0.0);
        assert!(token_bits("s3cret-token") < TOKEN_MIN_BITS);
        // `openssl rand -hex 16`: exactly 128 bits.
        assert_eq!(token_bits("9f86d081884c7d659a2feaa0c55ad015"), 128.0);
        assert!(token_bits("9f86d081884c7d659a2feaa0c55ad01") < TOKEN_MIN_BITS);
        // `openssl rand -base64 24`.
        assert!(token_bits("q3V8mZ0x1Lk9Rt2bYw7cNp4JdF6hGs5A") >= TOKEN_MIN_BITS);
    }

    #[test]
    fn example_config_parses_and_matches_defaults() {
        let text = include_str!("../../examples/nof1d.toml");
        let parsed = Config::parse(text, Path::new("examples/nof1d.toml")).expect("example parses");
        let d = Config::default();
        assert_eq!(parsed.data_dir, d.data_dir);
        assert_eq!(parsed.web.listen, d.web.listen);
        assert_eq!(parsed.log.level, d.log.level);
        assert_eq!(parsed.jobs.outbox_seconds, d.jobs.outbox_seconds);
        assert_eq!(parsed.clock.time_scale, d.clock.time_scale);
        assert_eq!(parsed.participants.len(), 1);
    }

    #[test]
    fn sampled_calibration_trials_are_optional_and_bounded() {
        let parsed = Config::parse(
            "[jobs]\ncalibration_trials_sampled = 400\n",
            Path::new("c.toml"),
        )
        .expect("parses");
        assert_eq!(parsed.jobs.calibration_trials_sampled, Some(400));
        assert_eq!(Config::default().jobs.calibration_trials_sampled, None);
        let err = Config::parse(
            "[jobs]\ncalibration_trials_sampled = 0\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("jobs.calibration_trials_sampled must be 1 to"),
            "{err}"
        );
    }

    #[test]
    fn refinement_trials_default_to_the_calibration_size_and_zero_turns_them_off() {
        let parse = |text: &str| Config::parse(text, Path::new("c.toml"));
        let d = Config::default();
        assert_eq!(d.jobs.refinement_trial_count(), d.jobs.calibration_trials);
        let set = parse("[jobs]\ncalibration_trials = 100\n").expect("parses");
        assert_eq!(set.jobs.refinement_trial_count(), 100);
        let off = parse("[jobs]\nrefinement_trials = 0\n").expect("parses");
        assert_eq!(off.jobs.refinement_trial_count(), 0);
        let err = parse("[jobs]\nrefinement_trials = 100000000\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("jobs.refinement_trials must be 0 (never refine) to"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = Config::parse(
            "data_dir = \"x\"\n[web]\nlisten_at = 1\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("listen_at"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn bad_time_zone_and_time_are_rejected() {
        let text = "[[participants]]\nkey='a'\nname='A'\nemail='a@b'\ntime_zone='Mars/Olympus'\n";
        let err = Config::parse(text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("Mars/Olympus"), "{err}");
        let text = "[[participants]]\nkey='a'\nname='A'\nemail='a@b'\ntime_zone='UTC'\nassignment_time='7:3'\n";
        let err = Config::parse(text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("HH:MM"), "{err}");
    }

    #[test]
    fn a_job_period_of_zero_is_refused_by_name() {
        for key in [
            "source_poll_seconds",
            "assignment_check_seconds",
            "outbox_seconds",
            "refit_seconds",
            "design_seconds",
            "hypotheses_seconds",
        ] {
            let text = format!("[jobs]\n{key} = 0\n");
            let err = Config::parse(&text, Path::new("c.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("jobs.{key} must be at least 1")),
                "{err}"
            );
        }
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret("hunter2".into());
        assert!(!format!("{s:?} {s}").contains("hunter2"));
    }

    #[test]
    fn secret_from_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tok");
        std::fs::write(&f, "abc\n").unwrap();
        let r = SecretRef {
            env: None,
            file: Some(f),
        };
        assert_eq!(r.resolve("web.token").unwrap().expose(), "abc");
        let r = SecretRef {
            env: Some("NOF1D_TEST_SURELY_UNSET_VAR".into()),
            file: None,
        };
        let e = r.resolve("web.token").unwrap_err().to_string();
        assert!(e.contains("NOF1D_TEST_SURELY_UNSET_VAR"), "{e}");
    }
}

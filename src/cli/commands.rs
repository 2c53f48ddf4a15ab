//! The command table: `nof1d`'s subcommands (clap), logging set-up, and
//! each command's call into the library. This is the binary's edge, the
//! one place where errors become `anyhow` and an exit code.

use crate::limits;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::service::config::{Config, LogFormat};

#[derive(Parser)]
#[command(name = "nof1d", version, about = "Adaptive N-of-1 trial daemon")]
struct Cli {
    /// Configuration file. Without this flag, ./nof1d.toml is read if it
    /// exists, else embedded defaults are used.
    #[arg(long, global = true)]
    config: Option<PathBuf>,

    /// Log filter (overrides the config's log.level), e.g. `debug`.
    #[arg(long, global = true)]
    log_level: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: jobs, emails and the dashboard.
    Serve {
        /// Seed a simulated demo participant with a running trial.
        #[arg(long)]
        demo: bool,
        /// Address for the dashboard (default 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Data folder (default ./nof1d-data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Simulated seconds per real second, for demos and tests (1 = real
        /// time; at most 1,000,000).
        #[arg(long, value_parser = time_scale)]
        time_scale: Option<f64>,
    },
    /// Work with protocol files.
    Protocol {
        #[command(subcommand)]
        command: ProtocolCommand,
    },
    /// Fit the model to a CSV of (time, arm, outcome) rows and print each arm's effect.
    Analyze {
        /// CSV file with a time column (day number, date or timestamp), an arm column and an outcome column.
        #[arg(long)]
        data: PathBuf,
        /// Protocol file (arms, comparator, family, direction, MID, priors).
        #[arg(long)]
        protocol: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also print the fit's internals: hyperparameters, convergence
        /// diagnostics and the priors used.
        #[arg(long, short)]
        verbose: bool,
        /// Without a protocol: the comparator arm's label.
        #[arg(long)]
        comparator: Option<String>,
        /// Without a protocol: observation family.
        #[arg(long, default_value = "gaussian")]
        family: String,
        /// Without a protocol: minimal important difference: outcome units
        /// (>= 0, default 0) for gaussian; a rate or odds ratio (>= 1,
        /// default 1: any improvement) for the other families.
        #[arg(long, allow_negative_numbers = true, value_parser = finite)]
        mid: Option<f64>,
        /// Without a protocol: trials per observation (binomial family).
        #[arg(long)]
        trials: Option<u32>,
        /// Without a protocol, gaussian family: the measurement error,
        /// `normal` (default) or `student_t` (robust to outlying days,
        /// slower). With a protocol, its outcome's `noise` says it.
        #[arg(long)]
        noise: Option<String>,
        /// Without a protocol: `higher` or `lower` is better (default higher,
        /// said in a note).
        #[arg(long)]
        direction: Option<String>,
        /// How to read dates written with slashes: `dmy` (03/04/2026 is 3
        /// April) or `mdy` (March 4). Without it such dates are refused.
        #[arg(long)]
        date_order: Option<crate::cli::analyze::DateOrder>,
        /// Name of the time column (default: day, date, time or timestamp).
        #[arg(long)]
        time_col: Option<String>,
        /// Name of the arm column (default: arm).
        #[arg(long)]
        arm_col: Option<String>,
        /// Name of the outcome column (default: the one named after the
        /// protocol's outcome, else the one remaining column).
        #[arg(long)]
        outcome_col: Option<String>,
        /// Column with the arm actually taken: adds an as-treated analysis beside intention to treat.
        #[arg(long)]
        taken_col: Option<String>,
        /// Inference: `grid` (fast, deterministic), `nuts` (the NUTS reference)
        /// or `mcmc` (adaptive Metropolis, gradient-free).
        #[arg(long, default_value = "grid")]
        method: String,
        /// Seed for MCMC and P(best) draws.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where the posterior evaluations run: auto (the GPU where one is
        /// found and the series is long enough to gain), cpu or cuda.
        #[arg(long, default_value = "auto")]
        backend: crate::engine::gpu::BackendChoice,
    },
    /// Run whole virtual trials of a protocol (schedule, data, every refit and
    /// decision as the daemon takes them) and report its error rates.
    Simulate {
        /// Protocol file.
        #[arg(long)]
        protocol: PathBuf,
        /// True effect of each working arm (`--working-arms`) in the "effect"
        /// condition (outcome units; a ratio for log/logit families).
        /// Default: the MID.
        #[arg(long, allow_negative_numbers = true, value_parser = finite)]
        effect: Option<f64>,
        /// Virtual trials per condition (1 to 1,000,000).
        #[arg(long, default_value_t = 1000, value_parser = trials_count)]
        trials: usize,
        /// Print the JSON report on stdout instead of the table.
        #[arg(long)]
        json: bool,
        /// Also find the efficacy threshold that keeps false stops at or below
        /// TARGET (default 0.05) with 95% confidence, and check it on fresh
        /// virtual trials.
        #[arg(long, num_args = 0..=1, default_missing_value = "0.05", value_parser = target_rate)]
        calibrate: Option<f64>,
        /// Data: `prior` (from the model) or a stress scenario: iid, ar1,
        /// heavy_tails, skewed, rounded, trend, weekly, long_carryover,
        /// missing_run, non_adherence; `all` runs each in turn.
        #[arg(long, default_value = "prior")]
        scenario: String,
        /// Run every scenario that applies to the outcome as one table, with
        /// the betting test beside nof1d's rule; with --calibrate, find the
        /// one efficacy threshold that keeps the target in every scenario
        /// (sequentially: --trials is then the most null trials a scenario
        /// gets, the binding one; the others stop at a quarter of it).
        #[arg(long)]
        suite: bool,
        /// With --suite --calibrate: skip the check of the calibrated
        /// threshold on fresh null trials (a quarter of --trials a
        /// scenario), as the daemon's designs job does: with the daemon's
        /// `--trials` (jobs.calibration_trials) and threads, its time is
        /// then the daemon's.
        #[arg(long, requires_all = ["suite", "calibrate"])]
        no_fresh_check: bool,
        /// Probability that a day's observation is missing (0 to 0.95).
        #[arg(long, default_value_t = 0.1, value_parser = day_probability)]
        missing: f64,
        /// Probability that a day's assigned arm is not taken (the comparator
        /// is; 0 to 0.95).
        #[arg(long, default_value_t = 0.05, value_parser = day_probability)]
        non_adherence: f64,
        /// The true onset/washout half-life of every virtual trial, in days
        /// (above 0, at most 365), instead of a draw from the protocol's
        /// prior; the model keeps its prior. E.g. 0.05: the effect comes at
        /// once. The long-carryover scenario keeps its own.
        #[arg(long, value_parser = half_life_days)]
        true_half_life: Option<f64>,
        /// How many arms work in the effect condition (1 to 5, at most the
        /// arms besides the comparator): the first that many besides the
        /// comparator, each better by the effect (a stop for any of them
        /// finds a right arm; the drop rates show how often one that works
        /// was dropped). Not with --suite, which tries arm drops with one
        /// and then with two.
        #[arg(long, default_value_t = 1, conflicts_with = "suite", value_parser = clap::value_parser!(u8).range(1..=5))]
        working_arms: u8,
        /// Master seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Worker threads (default: all cores; at most 1024).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=crate::limits::MAX_THREADS as i64))]
        threads: Option<u16>,
        /// Where the refits' evaluations run: auto (the GPU where one is
        /// found and measured faster for simulations: not so far), cpu or cuda.
        #[arg(long, default_value = "auto")]
        backend: crate::engine::gpu::BackendChoice,
        /// Where to write the JSON report (default: simulate-<protocol>.json).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// What this machine gives the engine (CPU features, the GPU, its
    /// driver and NVRTC, the kernels checked against the CPU) and the
    /// database's health. Exits 1 when something is broken.
    Doctor {
        /// Data folder (default: from the config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Benchmarks and statistical checks of the engine (JSON on stdout).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Trials: list, propose, approve, pause, resume, stop, adverse events.
    Trial {
        /// Data folder (default: from the config).
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
        /// Who is acting, for the trial's record.
        #[arg(long, global = true, default_value = "investigator (cli)")]
        actor: String,
        #[command(subcommand)]
        command: TrialCommand,
    },
    /// A trial's report: protocol, schedule as run, adherence, each effect's
    /// posterior, the decision trail and the design's simulated error rates.
    Report {
        /// Trial id (see `nof1d trial list`).
        trial: i64,
        /// Output format: text, markdown or html.
        #[arg(long, default_value = "text")]
        format: String,
        /// Write to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Virtual trials for the design's error rates (0 to skip; at most 1,000,000).
        #[arg(long, default_value_t = 200, value_parser = trials_or_none)]
        sim_trials: usize,
        /// Data folder (default: from the config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Make a new push token for a participant's Health Auto Export source
    /// (shown once; the earlier token stops working) and print where the
    /// app should post.
    PushToken {
        /// The participant (may be left out when there is only one).
        #[arg(long)]
        participant: Option<String>,
        /// Data folder (default: from the config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Import files into a participant's data: Apple Health `export.zip` or
    /// `export.xml` (streamed), Health Auto Export JSON, and CSV or JSON
    /// files described by a mapping in the config (`[[participants.imports]]`).
    /// Safe while the daemon runs; importing a file again adds nothing
    /// already stored.
    Import {
        /// The participant (may be left out when there is only one).
        #[arg(long)]
        participant: Option<String>,
        /// Files to import.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Read the files through this mapping, whatever their names.
        #[arg(long)]
        mapping: Option<String>,
        /// Data folder (default: from the config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Ask in words: "does magnesium help my migraines?". The proposer (the
    /// configured LLM, else the built-in library) answers with hypotheses;
    /// each is checked, and those worth testing become proposed trials
    /// (`nof1d trial approve ID`). Safe while the daemon runs.
    Ask {
        /// The question.
        question: String,
        /// The participant (may be left out when there is only one).
        #[arg(long)]
        participant: Option<String>,
        /// Use the built-in library even when an LLM is configured.
        #[arg(long)]
        offline: bool,
        /// Data folder (default: from the config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Hypotheses: propose from the goals, or list what was proposed and
    /// every exchange with the proposer.
    Hypotheses {
        /// The participant (may be left out when there is only one).
        #[arg(long, global = true)]
        participant: Option<String>,
        /// Data folder (default: from the config).
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
        #[command(subcommand)]
        command: HypothesesCommand,
    },
    /// Print the argon2 hash of a dashboard password read from standard input
    /// (its first line), for `web.password_hash` or `web.investigator_password_hash`.
    HashPassword,
    /// Print a new random token (256 bits, 64 hex digits) for `web.token`.
    NewToken,
    /// Encrypt the database with `database.key` (SQLCipher, AES-256): copy,
    /// verify, swap. Stop the daemon first.
    Encrypt {
        /// Data folder (default: from the config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Decrypt the database encrypted with `database.key` back to a plain
    /// SQLite file (then remove `database.key`). Stop the daemon first.
    Decrypt {
        /// Data folder (default: from the config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Write a consistent copy of the database to FILE (safe while the daemon runs).
    Backup {
        /// Destination file (must not exist).
        file: PathBuf,
        /// Data folder (default: from the config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The GPU backend against the CPU engine on this machine: equivalence
    /// of evaluations, fits and simulated decisions, then throughput, fit
    /// time by length and a whole simulation (`bench/gpu-check.sh`).
    /// Without a GPU: why, and the host-compiled kernels' check.
    Gpu {
        /// Virtual trials per condition on the GPU (two conditions; 1 to 1,000,000).
        #[arg(long, default_value_t = 50_000, value_parser = trials_count)]
        trials: usize,
        /// Virtual trials per condition on the CPU (1 to 1,000,000).
        #[arg(long, default_value_t = 500, value_parser = trials_count)]
        cpu_trials: usize,
        /// Virtual trials per condition whose every decision is compared
        /// (1 to 1,000,000).
        #[arg(long, default_value_t = 50, value_parser = trials_count)]
        decision_trials: usize,
        /// Fits kept in flight on the GPU, one simulation each.
        #[arg(long, value_delimiter = ',', default_value = "256,2048", value_parser = trials_count)]
        in_flight: Vec<usize>,
        /// Series lengths for the fit timings (each 2 to 1,000,000).
        #[arg(long, value_delimiter = ',', default_value = "365,3000,10000,30000,100000", value_parser = trials_count)]
        fit_days: Vec<usize>,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also write the JSON report here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The proposer's prior meets the data: posterior error, interval
    /// coverage and the prior–data conflict measure for a prior that is
    /// right, wrong by 2 sd or wrong in sign (as stated and floored), and
    /// false stops under no effect with a wrong optimistic prior.
    PriorMeetsData {
        /// Simulated series per prior (1 to 1,000,000).
        #[arg(long, default_value_t = 200, value_parser = trials_count)]
        series: usize,
        /// Days per series (2 to 36,525).
        #[arg(long, default_value_t = 56, value_parser = series_days)]
        days: usize,
        /// Virtual trials per prior for the false stops (1 to 1,000,000).
        #[arg(long, default_value_t = 400, value_parser = trials_count)]
        trials: usize,
        /// Seed.
        #[arg(long, default_value_t = 5)]
        seed: u64,
    },
    /// Normal against Student-t measurement error, each fitted to series
    /// with normal and with heavy-tailed (t3) errors.
    RobustNoise {
        /// Series per kind of error (1 to 1,000,000).
        #[arg(long, default_value_t = 100, value_parser = trials_count)]
        series: usize,
        /// Days per series (2 to 36,525).
        #[arg(long, default_value_t = 84, value_parser = series_days)]
        days: usize,
        /// True effect, in units of the errors' sd.
        #[arg(long, default_value_t = 0.7, value_parser = finite)]
        effect: f64,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Time the filter and the grid fit on simulated two-arm data.
    Engine {
        /// Series lengths in days (each 2 to 36,525).
        #[arg(long, value_delimiter = ',', default_value = "365,3650", value_parser = series_days)]
        days: Vec<usize>,
        /// Grid fits per length (the median is reported; 1 to 1,000,000).
        #[arg(long, default_value_t = 20, value_parser = trials_count)]
        reps: usize,
        /// Also run the MCMC references: adaptive Metropolis with this many
        /// draws per chain, and NUTS (1 to 1,000,000).
        #[arg(long, value_parser = trials_count)]
        mcmc_draws: Option<usize>,
        /// Draws kept per NUTS chain (after 1500 warm-up), for a longer
        /// reference than the default (1 to 1,000,000).
        #[arg(long, default_value_t = 2000, value_parser = trials_count)]
        nuts_draws: usize,
        /// Threads a grid fit spreads its evaluations over (default: all
        /// cores up to 4; the simulator's fits run on 1, one trial a core).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=crate::limits::MAX_THREADS as i64))]
        threads: Option<u16>,
    },
    /// Print a simulated two-arm daily series as CSV (day,arm,y) for comparisons.
    Simulate {
        /// Days (2 to 36,525).
        #[arg(long, default_value_t = 365, value_parser = series_days)]
        days: usize,
        /// True effect of `treatment` against `control`.
        #[arg(long, default_value_t = -1.5, allow_negative_numbers = true, value_parser = finite)]
        effect: f64,
        /// Seed.
        #[arg(long, default_value_t = 11)]
        seed: u64,
    },
    /// Write an Apple Health export.xml shaped like a real one (iOS 16+
    /// header with its broken DTD; heart rate, steps from two devices,
    /// resting heart rate, HRV, weight, sleep stages, mindful sessions,
    /// workouts), for import tests and the import benchmark.
    AppleExport {
        /// Days of data (1 to 36,525).
        #[arg(long, default_value_t = 30, value_parser = series_days)]
        days: usize,
        /// Minutes between heart-rate samples (1 to 1440).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1440))]
        hr_minutes: u32,
        /// First day, YYYY-MM-DD.
        #[arg(long, default_value = "2026-01-01")]
        first: jiff::civil::Date,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Parse an Apple Health export without storing it (JSON: bytes,
    /// records, observations, seconds), to time the reader alone.
    AppleParse {
        /// export.xml or export.zip.
        file: PathBuf,
    },
    /// Print a Health Auto Export day (every metric, minute heart rate) as the app posts it.
    HaePayload {
        /// The day, YYYY-MM-DD.
        #[arg(long, default_value = "2026-11-20")]
        day: jiff::civil::Date,
    },
    /// Simulation-based calibration of a family's fit.
    Sbc {
        /// gaussian, poisson, bernoulli, binomial or beta.
        #[arg(long, default_value = "gaussian")]
        family: String,
        /// Gaussian family: `normal` or `student_t` measurement error.
        #[arg(long, default_value = "normal")]
        noise: String,
        /// Replications (1 to 1,000,000).
        #[arg(long, default_value_t = 1000, value_parser = trials_count)]
        reps: usize,
        /// Days per simulated series (2 to 36,525).
        #[arg(long, default_value_t = 84, value_parser = series_days)]
        days: usize,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Fit each replication twice with different seeds and compare the
        /// fits' own Monte Carlo error with the spread between them.
        #[arg(long)]
        mc_check: bool,
    },
}

#[derive(Subcommand)]
enum HypothesesCommand {
    /// Propose from the participant's goals (config `goals`), the catalog
    /// and past results, as the weekly job does.
    Propose {
        /// Use the built-in library even when an LLM is configured.
        #[arg(long)]
        offline: bool,
    },
    /// The hypotheses recorded, newest first, with their trials.
    List,
    /// The audit log: every exchange with the proposer, verbatim.
    Log {
        /// How many exchanges, newest first.
        #[arg(long, default_value_t = 10)]
        last: usize,
    },
}

#[derive(Subcommand)]
enum TrialCommand {
    /// List trials with their status.
    List,
    /// Propose a protocol for a participant (locks the protocol and draws the seed).
    Propose {
        /// Protocol file.
        file: PathBuf,
        /// Participant key (from the config; `demo` for the demo).
        #[arg(long)]
        participant: String,
    },
    /// Approve a proposed trial; it starts on --start (default: tomorrow).
    Approve {
        /// Trial id.
        id: i64,
        /// First day, YYYY-MM-DD in the participant's calendar.
        #[arg(long)]
        start: Option<String>,
        /// The clinician's agreement, in words ("Dr Lee, 3 Dec 2026"):
        /// needed for a protocol that changes prescribed medication.
        #[arg(long)]
        clinician: Option<String>,
    },
    /// Reject a proposed trial.
    Reject {
        /// Trial id.
        id: i64,
        /// Why.
        #[arg(long, default_value = "rejected")]
        reason: String,
    },
    /// Pause a running trial (holiday, illness).
    Pause {
        /// Trial id.
        id: i64,
        /// Why.
        #[arg(long, default_value = "paused")]
        reason: String,
    },
    /// Resume a paused trial; the rest of the schedule moves to start on --on (default today).
    Resume {
        /// Trial id.
        id: i64,
        /// YYYY-MM-DD.
        #[arg(long)]
        on: Option<String>,
    },
    /// Stop a trial by hand (it can be undone for 24 hours with `undo-stop`).
    Stop {
        /// Trial id.
        id: i64,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Undo a stop by hand made in the last 24 hours: the trial returns to
    /// where it was (a stop by a decision or for safety stands).
    UndoStop {
        /// Trial id.
        id: i64,
    },
    /// Print a trial's days (date, period, block, arm, adherence, the
    /// outcome's value) as CSV, or with --decisions its decisions (one row
    /// an arm of each look). The days read back with `nof1d analyze
    /// --protocol`.
    Export {
        /// Trial id.
        id: i64,
        /// The decisions instead of the days.
        #[arg(long)]
        decisions: bool,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Record an adverse event: the trial stops at once.
    AdverseEvent {
        /// Trial id.
        id: i64,
        /// What happened.
        #[arg(long)]
        note: String,
    },
}

#[derive(Subcommand)]
enum ProtocolCommand {
    /// Validate protocol files; print every problem with file, line and key.
    Check {
        /// Protocol TOML files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Parses the command line and runs the command; errors are printed with
/// their causes and end in a failure exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nof1d: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A finite number (`NaN` and infinities would run and report nonsense).
fn finite(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(v) => Err(format!("{v} is not a finite number")),
        Err(e) => Err(e.to_string()),
    }
}

/// `--noise` for `family`: `normal` or `student_t`, the latter for the
/// gaussian family only.
fn noise_model(
    noise: &str,
    family: crate::engine::spec::Family,
) -> anyhow::Result<crate::engine::spec::NoiseModel> {
    use crate::engine::spec::{Family, NoiseModel};
    let model = match noise {
        "normal" => NoiseModel::Normal,
        "student_t" => NoiseModel::StudentT,
        other => anyhow::bail!("--noise {other:?}: use normal or student_t"),
    };
    if model != NoiseModel::Normal && family != Family::Gaussian {
        anyhow::bail!(
            "--noise {noise}: only the gaussian family has a noise model (the others' variation comes from their own distribution)"
        );
    }
    Ok(model)
}

/// A count of virtual trials or repetitions: 1 to [`limits::MAX_SIMULATED_TRIALS`].
fn trials_count(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    if !(1..=limits::MAX_SIMULATED_TRIALS).contains(&n) {
        return Err(format!(
            "{n} is out of range: give 1 to {}",
            limits::MAX_SIMULATED_TRIALS
        ));
    }
    Ok(n)
}

/// Like [`trials_count`], with 0 meaning "none".
fn trials_or_none(s: &str) -> Result<usize, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    trials_count(s)
}

/// Days of a series: 2 to [`limits::MAX_SERIES_DAYS`].
fn series_days(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    if !(2..=limits::MAX_SERIES_DAYS).contains(&n) {
        return Err(format!(
            "{n} is out of range: give 2 to {}",
            limits::MAX_SERIES_DAYS
        ));
    }
    Ok(n)
}

/// A probability a day has some property: 0 to 0.95.
fn day_probability(s: &str) -> Result<f64, String> {
    let v = finite(s)?;
    if !(0.0..=0.95).contains(&v) {
        return Err(format!("{v} is out of range: give 0 to 0.95"));
    }
    Ok(v)
}

/// A half-life in days: above 0, at most a year.
fn half_life_days(s: &str) -> Result<f64, String> {
    let v = finite(s)?;
    if !(v > 0.0 && v <= 365.0) {
        return Err(format!(
            "{v} is out of range: give a half-life above 0 and at most 365 days"
        ));
    }
    Ok(v)
}

/// A false-stop target: between 0 and 0.5.
fn target_rate(s: &str) -> Result<f64, String> {
    let v = finite(s)?;
    if !(v > 0.0 && v < 0.5) {
        return Err(format!(
            "{v} is out of range: give a rate between 0 and 0.5"
        ));
    }
    Ok(v)
}

/// `--time-scale`: 1 (real time) to 1,000,000.
fn time_scale(s: &str) -> Result<f64, String> {
    let v = finite(s)?;
    if !(1.0..=limits::MAX_TIME_SCALE).contains(&v) {
        return Err(format!("{v} is out of range: give 1 to 1000000"));
    }
    Ok(v)
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    Ok(match &cli.config {
        Some(path) => Config::load(path, true)?,
        None => Config::load(std::path::Path::new("nof1d.toml"), false)?,
    })
}

fn init_logging(config: &Config, flag: Option<&str>) {
    let filter = flag
        .map(str::to_string)
        .or_else(|| std::env::var("NOF1D_LOG").ok())
        .unwrap_or_else(|| config.log.level.clone());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("nof1d: bad log filter {filter:?} ({e}); using info");
        tracing_subscriber::EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Protocol {
            command: ProtocolCommand::Check { files },
        } => Ok(check_protocols(files)),
        Command::Serve {
            demo,
            listen,
            data_dir,
            time_scale,
        } => {
            let mut config = load_config(&cli)?;
            config.demo.enabled |= *demo;
            if let Some(listen) = listen {
                config.web.listen = *listen;
            }
            if let Some(dir) = data_dir {
                config.data_dir = dir.clone();
            }
            if let Some(scale) = time_scale {
                config.clock.time_scale = *scale;
            }
            config.check()?;
            init_logging(&config, cli.log_level.as_deref());
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let served = runtime.block_on(crate::startup::serve(config));
            // A blocking task the shutdown abandoned (an LLM call, a
            // source's retries) is not waited for: the process ends.
            runtime.shutdown_timeout(std::time::Duration::from_secs(5));
            served?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Analyze {
            data,
            protocol,
            json,
            comparator,
            family,
            mid,
            trials,
            noise,
            direction,
            time_col,
            arm_col,
            outcome_col,
            taken_col,
            method,
            seed,
            backend,
            date_order,
            verbose,
        } => {
            // Warnings only by default: stdout carries the table or the JSON.
            init_logging(
                &Config::default(),
                cli.log_level.as_deref().or(Some("warn")),
            );
            let text = crate::limits::read_text(data, crate::limits::DATA_FILE_BYTES)
                .with_context(|| format!("cannot read {}", data.display()))?;
            let method = match method.as_str() {
                "grid" => crate::engine::fit::Method::Grid,
                "mcmc" => crate::engine::fit::Method::Mcmc,
                "nuts" => crate::engine::fit::Method::Nuts,
                other => anyhow::bail!("--method {other:?}: use grid, nuts or mcmc"),
            };
            let mut assumed = Vec::new();
            let (outcome, known_arms, comparator) = match protocol {
                Some(path) => {
                    if noise.is_some() {
                        anyhow::bail!(
                            "--noise is for analyses without a protocol: set `noise` in the protocol's [outcome] instead"
                        );
                    }
                    let (p, _) = crate::trial::protocol::check_file(path)?;
                    let keys: Vec<String> = p.arms.iter().map(|a| a.key.clone()).collect();
                    (p.outcome.clone(), Some(keys), p.comparator.clone())
                }
                None => {
                    let family: crate::engine::spec::Family = serde_json::from_value(serde_json::Value::String(family.clone()))
                        .map_err(|_| anyhow::anyhow!("--family {family:?}: use gaussian, poisson, bernoulli, binomial or beta"))?;
                    if direction.is_none() {
                        assumed.push(
                            "higher values are taken as better; pass --direction lower if lower is better (pain, anxiety, migraine days)".to_string(),
                        );
                    }
                    let direction = direction.as_deref().unwrap_or("higher");
                    let direction: crate::engine::spec::Direction =
                        serde_json::from_value(serde_json::Value::String(direction.to_string()))
                            .map_err(|_| {
                                anyhow::anyhow!("--direction {direction:?}: use higher or lower")
                            })?;
                    let mid = mid.unwrap_or(if family.has_ratio_mid() { 1.0 } else { 0.0 });
                    crate::engine::spec::Mid::check(family, mid, false)
                        .map_err(|why| anyhow::anyhow!("--mid: {why}"))?;
                    let comparator = match comparator {
                        Some(c) => c.clone(),
                        None => crate::cli::analyze::guess_comparator(&text, arm_col.as_deref()).ok_or_else(|| {
                            anyhow::anyhow!("which arm is the comparator? pass --comparator LABEL (or --protocol FILE)")
                        })?,
                    };
                    let mut outcome = crate::cli::analyze::ad_hoc_outcome(family, direction, mid);
                    outcome.trials = *trials;
                    outcome.noise = noise_model(noise.as_deref().unwrap_or("normal"), family)?;
                    (outcome, None, comparator)
                }
            };
            let request = crate::cli::analyze::Request {
                columns: crate::cli::analyze::Columns {
                    time: time_col.clone(),
                    arm: arm_col.clone(),
                    outcome: outcome_col.clone(),
                    taken: taken_col.clone(),
                    date_order: *date_order,
                    stream: protocol.is_some().then(|| outcome.stream.clone()),
                },
                outcome,
                known_arms,
                comparator,
                method,
                seed: *seed,
                backend: *backend,
                assumed,
            };
            let analysis = crate::cli::analyze::analyze(&text, &request)
                .map_err(|e| anyhow::anyhow!("{}: {e}", data.display()))?;
            eprintln!("nof1d analyze: fitted {}", analysis.backend);
            if *json {
                println!("{}", serde_json::to_string_pretty(&analysis)?);
            } else {
                print!("{}", crate::cli::analyze::render(&analysis, *verbose));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor { data_dir } => {
            let mut config = load_config(&cli)?;
            if let Some(dir) = data_dir {
                config.data_dir = dir.clone();
            }
            let key = config.database.resolve_key()?;
            let (text, healthy) =
                crate::cli::doctor::examine(&config.database_path(), key.as_ref());
            print!("{text}");
            Ok(if healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Bench {
            command:
                BenchCommand::Gpu {
                    trials,
                    cpu_trials,
                    decision_trials,
                    in_flight,
                    fit_days,
                    seed,
                    out,
                },
        } => {
            init_logging(
                &Config::default(),
                cli.log_level.as_deref().or(Some("warn")),
            );
            let report = crate::cli::bench_gpu::run(&crate::cli::bench_gpu::GpuBenchOptions {
                trials: *trials,
                cpu_trials: *cpu_trials,
                decision_trials: *decision_trials,
                fit_days: fit_days.clone(),
                in_flight: in_flight.clone(),
                seed: *seed,
            })?;
            print!("{}", crate::cli::bench_gpu::render(&report));
            if let Some(path) = out {
                std::fs::write(path, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command: BenchCommand::Simulate { days, effect, seed },
        } => {
            let series = crate::engine::generate::two_arm_series(*days, *effect, *seed);
            println!("day,arm,y");
            for (t, y) in series.t.iter().zip(&series.y) {
                let arm = ["control", "treatment"][series.path.arm_at(*t)];
                println!("{},{arm},{y:.6}", t.floor());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command:
                BenchCommand::AppleExport {
                    days,
                    hr_minutes,
                    first,
                    out,
                },
        } => {
            let file = std::fs::File::create(out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let mut writer = std::io::BufWriter::with_capacity(1 << 20, file);
            crate::service::sources::apple_health::write_sample_export(
                &mut writer,
                *first,
                u32::try_from(*days).unwrap_or(u32::MAX),
                *hr_minutes,
            )?;
            std::io::Write::flush(&mut writer)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command: BenchCommand::AppleParse { file },
        } => {
            let started = std::time::Instant::now();
            let input = crate::service::sources::apple_health::open_export(file)?;
            let bytes = std::fs::metadata(file)?.len();
            let report = crate::service::sources::apple_health::read_export(
                input,
                &jiff::tz::TimeZone::UTC,
                &crate::service::streams::StreamRules::default(),
                20_000,
                &mut |_| Ok::<(), std::convert::Infallible>(()),
            )
            .unwrap_or_else(|never| match never {});
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "{}",
                serde_json::json!({
                    "bytes": bytes,
                    "records": report.records,
                    "observations": report.observations,
                    "damaged": report.damaged,
                    "seconds": seconds,
                    "mb_per_s": bytes as f64 / 1e6 / seconds,
                })
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command: BenchCommand::HaePayload { day },
        } => {
            println!(
                "{}",
                crate::service::sources::health_auto_export::sample_payload(*day, "+0000")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command:
                BenchCommand::RobustNoise {
                    series,
                    days,
                    effect,
                    seed,
                },
        } => {
            init_logging(
                &Config::default(),
                cli.log_level.as_deref().or(Some("warn")),
            );
            let rows = crate::cli::bench::robust_noise(*series, *days, *effect, *seed);
            println!("{}", serde_json::to_string_pretty(&rows)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command:
                BenchCommand::PriorMeetsData {
                    series,
                    days,
                    trials,
                    seed,
                },
        } => {
            init_logging(
                &Config::default(),
                cli.log_level.as_deref().or(Some("warn")),
            );
            let r = crate::cli::bench::prior_meets_data(*series, *days, *trials, *seed);
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command:
                BenchCommand::Sbc {
                    family,
                    noise,
                    reps,
                    days,
                    seed,
                    mc_check,
                },
        } => {
            let family: crate::engine::spec::Family = serde_json::from_value(
                serde_json::Value::String(family.clone()),
            )
            .map_err(|_| {
                anyhow::anyhow!(
                    "--family {family:?}: use gaussian, poisson, bernoulli, binomial or beta"
                )
            })?;
            init_logging(
                &Config::default(),
                cli.log_level.as_deref().or(Some("warn")),
            );
            let noise = noise_model(noise, family)?;
            let r = crate::cli::bench::sbc(family, noise, *reps, *days, *seed, *mc_check);
            println!("{}", serde_json::to_string(&r)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command:
                BenchCommand::Engine {
                    days,
                    reps,
                    mcmc_draws,
                    nuts_draws,
                    threads,
                },
        } => {
            let protocol = crate::trial::protocol::Protocol::parse(
                crate::service::demo::PROTOCOL_TEXT,
                "demo protocol",
            )?;
            for &d in days {
                let timing = crate::cli::bench::engine(
                    d,
                    *reps,
                    *mcmc_draws,
                    *nuts_draws,
                    threads.map(usize::from),
                    &protocol.outcome.model_spec(),
                );
                println!("{}", serde_json::to_string(&timing)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate {
            protocol,
            effect,
            trials,
            json,
            calibrate,
            scenario,
            suite,
            no_fresh_check,
            missing,
            non_adherence,
            true_half_life,
            working_arms,
            seed,
            threads,
            backend,
            out,
        } => {
            init_logging(
                &Config::default(),
                cli.log_level.as_deref().or(Some("warn")),
            );
            let (p, text) = crate::trial::protocol::check_file(protocol)?;
            let scenarios = if scenario == "all" {
                crate::trial::scenario::Scenario::ALL.to_vec()
            } else {
                vec![
                    crate::trial::scenario::Scenario::parse(scenario).ok_or_else(|| {
                        anyhow::anyhow!(
                            "--scenario {scenario:?}: use one of {} or all",
                            crate::trial::scenario::Scenario::names()
                        )
                    })?,
                ]
            };
            let hash = crate::trial::protocol::ProtocolHash::of(&text);
            let threads_given = *threads;
            let threads = threads.map_or_else(
                || std::thread::available_parallelism().map_or(1, |n| n.get()),
                usize::from,
            );
            let chosen = crate::engine::gpu::choose_for(
                *backend,
                crate::engine::gpu::Workload::Trials { trials: *trials },
                p.outcome.fits_by_filter(),
            )?;
            eprintln!("nof1d simulate: refits {}", chosen.line);
            let device = chosen.device;
            // On a GPU the threads are the fits kept in flight.
            let threads = match (&device, threads_given) {
                (Some(_), None) => crate::engine::gpu::GPU_FITS_IN_FLIGHT,
                _ => threads,
            };
            if *suite {
                let base = crate::trial::simulate::SimOptions {
                    effect: *effect,
                    missing: *missing,
                    non_adherence: *non_adherence,
                    true_half_life: *true_half_life,
                    seed: *seed,
                    threads,
                    progress: !*json,
                    device: device.clone(),
                    ..Default::default()
                };
                let options = crate::trial::simulate::suite::SuiteOptions::sized(
                    base,
                    *calibrate,
                    *trials,
                    !*no_fresh_check,
                    p.decision.false_futility_target,
                );
                let report = crate::trial::simulate::suite::run_suite(&p, &hash, &options)?;
                if !*json {
                    print!("{}", crate::trial::simulate::suite::render_suite(&report));
                }
                let path = out
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(format!("suite-{}.json", p.id)));
                write_report(&path, &serde_json::to_string_pretty(&report)?, *json)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut reports = Vec::new();
            for s in scenarios {
                let options = crate::trial::simulate::SimOptions {
                    trials: *trials,
                    effect: *effect,
                    missing: *missing,
                    non_adherence: *non_adherence,
                    scenario: s,
                    seed: *seed,
                    threads,
                    calibrate: *calibrate,
                    progress: !*json,
                    device: device.clone(),
                    redesign: true,
                    true_half_life: *true_half_life,
                    watch: None,
                    working_arms: usize::from(*working_arms),
                    memo: None,
                };
                let report = crate::trial::simulate::simulate_protocol(&p, &hash, &options)?;
                if !*json {
                    print!("{}", crate::trial::simulate::render(&report));
                }
                reports.push(report);
            }
            let doc = if reports.len() == 1 {
                serde_json::to_string_pretty(&reports[0])?
            } else {
                serde_json::to_string_pretty(&reports)?
            };
            let path = out
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("simulate-{}.json", p.id)));
            write_report(&path, &doc, *json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Trial {
            data_dir,
            actor,
            command,
        } => {
            let (config, mut store) = open_existing_store(&cli, data_dir)?;
            let now = jiff::Timestamp::now();
            let date = |s: &Option<String>| -> anyhow::Result<Option<jiff::civil::Date>> {
                s.as_deref()
                    .map(|d| {
                        d.parse()
                            .map_err(|e| anyhow::anyhow!("date {d:?}: {e} (use YYYY-MM-DD)"))
                    })
                    .transpose()
            };
            use crate::service::actions;
            match command {
                TrialCommand::List => {
                    for t in store.trials()? {
                        println!(
                            "{:>4}  {:<10} {:<24} start {:<10} {}",
                            t.id,
                            t.status,
                            t.protocol_id,
                            t.start_date
                                .map(|d| d.to_string())
                                .unwrap_or_else(|| "-".into()),
                            t.stop_reason.unwrap_or_default()
                        );
                    }
                }
                TrialCommand::Propose { file, participant } => {
                    let text = crate::limits::read_text(file, crate::limits::SMALL_FILE_BYTES)
                        .with_context(|| format!("cannot read {}", file.display()))?;
                    let id = actions::propose(
                        &mut store,
                        participant,
                        &text,
                        &file.display().to_string(),
                        actor,
                        now,
                    )?;
                    println!(
                        "trial {id} proposed. Next: review it on /proposals (its design is simulated and calibrated in the background), then `nof1d trial approve {id}`."
                    );
                }
                TrialCommand::Approve {
                    id,
                    start,
                    clinician,
                } => {
                    let start = actions::approve(
                        &mut store,
                        *id,
                        date(start)?,
                        clinician.as_deref(),
                        None,
                        actor,
                        now,
                    )?;
                    println!(
                        "trial {id} approved; it starts on {start} once its threshold is calibrated (the daemon does both), and the first assignment email goes out that morning. Watch it on /trials/{id}."
                    );
                }
                TrialCommand::Reject { id, reason } => {
                    actions::stop(&mut store, *id, reason, actor, now)?;
                    println!("trial {id} rejected");
                }
                TrialCommand::Pause { id, reason } => {
                    actions::pause(&mut store, *id, reason, actor, now)?;
                    println!("trial {id} paused");
                }
                TrialCommand::Resume { id, on } => {
                    let days = actions::resume(&mut store, *id, date(on)?, actor, now)?;
                    println!("trial {id} resumed; the rest of its schedule moved {days} days");
                }
                TrialCommand::Stop { id, reason } => {
                    actions::stop(&mut store, *id, reason, actor, now)?;
                    println!(
                        "trial {id} stopped; changed your mind? `nof1d trial undo-stop {id}` within {} hours",
                        actions::STOP_UNDO_HOURS
                    );
                }
                TrialCommand::UndoStop { id } => {
                    let back = actions::undo_stop(&mut store, *id, actor, now)?;
                    println!("trial {id}'s stop undone: it is {back} again");
                }
                TrialCommand::Export { id, decisions, out } => {
                    use crate::service::export::{Table, trial_csv};
                    let table = if *decisions {
                        Table::Decisions
                    } else {
                        Table::Days
                    };
                    let text = trial_csv(&store, *id, table, |key| config.stream_rules(key), None)?;
                    match out {
                        Some(path) => {
                            std::fs::write(path, &text)
                                .with_context(|| format!("cannot write {}", path.display()))?;
                            eprintln!(
                                "wrote {} rows to {}",
                                text.lines().count().saturating_sub(1),
                                path.display()
                            );
                        }
                        None => print!("{text}"),
                    }
                }
                TrialCommand::AdverseEvent { id, note } => {
                    actions::adverse_event(&mut store, *id, note, "cli", actor, now)?;
                    println!("adverse event recorded; trial {id} stopped");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Report {
            trial,
            format,
            out,
            sim_trials,
            data_dir,
        } => {
            let mut config = load_config(&cli)?;
            if let Some(dir) = data_dir {
                config.data_dir = dir.clone();
            }
            let format = crate::cli::report::Format::parse(format).ok_or_else(|| {
                anyhow::anyhow!("--format {format:?}: use text, markdown or html")
            })?;
            let path = config.database_path();
            if !path.exists() {
                anyhow::bail!("no database at {}", path.display());
            }
            let key = config.database.resolve_key()?;
            let store = crate::service::store::Store::open_read_only_keyed(&path, key.as_ref())?;
            let text = crate::cli::report::render(&store, *trial, format, *sim_trials)?;
            match out {
                Some(file) => {
                    std::fs::write(file, &text)
                        .with_context(|| format!("cannot write {}", file.display()))?;
                    println!("report written to {}", file.display());
                }
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::HashPassword => {
            use argon2::PasswordHasher;
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("read the password from standard input")?;
            let password = line.trim_end_matches(['\r', '\n']);
            if password.chars().count() < 8 {
                anyhow::bail!("a dashboard password needs at least 8 characters");
            }
            let mut salt = [0u8; 16];
            getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("cannot draw a salt: {e}"))?;
            let salt = argon2::password_hash::SaltString::encode_b64(&salt)
                .map_err(|e| anyhow::anyhow!("salt: {e}"))?;
            let hash = argon2::Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
            println!("{hash}");
            Ok(ExitCode::SUCCESS)
        }
        Command::PushToken {
            participant,
            data_dir,
        } => {
            let (config, mut store) = open_existing_store(&cli, data_dir)?;
            let who = participant_of(&store, participant.as_deref())?;
            let now = jiff::Timestamp::now();
            let source = crate::service::sources::ingest::hae_source(&mut store, &who, now)?;
            let token = crate::service::sources::ingest::new_push_token(&mut store, source.id)?;
            let base = config
                .email
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{}", config.web.listen));
            println!("{token}");
            eprintln!(
                "push token for {} (source {}); shown this once, the earlier one no longer works.\n\
                 In Health Auto Export: Automations → REST API, URL {base}{}, format JSON,\n\
                 header Authorization: Bearer <the token above>.",
                who.key,
                source.name,
                crate::web::PUSH_PATH
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Ask {
            question,
            participant,
            offline,
            data_dir,
        } => {
            let (config, mut store) = open_existing_store(&cli, data_dir)?;
            let who = participant_of(&store, participant.as_deref())?;
            let report = run_proposer(
                &config,
                &mut store,
                &who,
                *offline,
                crate::service::hypotheses::Purpose::Ask,
                question,
            )?;
            print!(
                "{}",
                crate::cli::ask::render_report(&report, config.hypotheses.tau)
            );
            Ok(if report.failure.is_some() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Hypotheses {
            participant,
            data_dir,
            command,
        } => {
            let (config, mut store) = open_existing_store(&cli, data_dir)?;
            let who = participant_of(&store, participant.as_deref())?;
            match command {
                HypothesesCommand::Propose { offline } => {
                    let report = run_proposer(
                        &config,
                        &mut store,
                        &who,
                        *offline,
                        crate::service::hypotheses::Purpose::Propose,
                        "",
                    )?;
                    print!(
                        "{}",
                        crate::cli::ask::render_report(&report, config.hypotheses.tau)
                    );
                }
                HypothesesCommand::List => {
                    print!(
                        "{}",
                        crate::cli::ask::render_list(&store.hypotheses(who.id, 100)?)
                    );
                }
                HypothesesCommand::Log { last } => {
                    print!(
                        "{}",
                        crate::cli::ask::render_log(&store.llm_exchanges(who.id, *last)?)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Import {
            participant,
            files,
            mapping,
            data_dir,
        } => {
            let (config, mut store) = open_existing_store(&cli, data_dir)?;
            let who = participant_of(&store, participant.as_deref())?;
            let who = &who;
            let settings = config.import_settings(&who.key);
            let mut failed = 0;
            for file in files {
                let started = std::time::Instant::now();
                match crate::service::sources::ingest::import_file(
                    &mut store,
                    who,
                    &settings,
                    file,
                    mapping.as_deref(),
                    jiff::Timestamp::now(),
                ) {
                    Ok(report) => {
                        println!(
                            "{} ({:.1} s)",
                            report.summary(),
                            started.elapsed().as_secs_f64()
                        );
                        for p in &report.problems {
                            println!("  {p}");
                        }
                        if report.damaged.is_some() {
                            failed += 1;
                        }
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} of {} files were not imported whole", files.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::NewToken => {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes)
                .map_err(|e| anyhow::anyhow!("cannot draw random bytes: {e}"))?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Encrypt { data_dir } | Command::Decrypt { data_dir } => {
            let encrypt = matches!(cli.command, Command::Encrypt { .. });
            let mut config = load_config(&cli)?;
            if let Some(dir) = data_dir {
                config.data_dir = dir.clone();
            }
            let Some(key) = config.database.resolve_key()? else {
                anyhow::bail!(
                    "database.key is not set: put the passphrase in a file or an environment variable and name it in the config (see examples/nof1d.toml)"
                );
            };
            // The lock: no daemon may write while the file is swapped.
            let _lock = crate::service::lock::DataLock::acquire(&config.data_dir)?;
            let path = config.database_path();
            let (from, to) = if encrypt {
                (None, Some(&key))
            } else {
                (Some(&key), None)
            };
            let started = std::time::Instant::now();
            let done = crate::service::store::rekey_file(&path, from, to)?;
            println!(
                "{} {}: {} tables, {} rows copied and checked, {} bytes, in {:.1} s",
                if encrypt { "encrypted" } else { "decrypted" },
                path.display(),
                done.tables,
                done.rows,
                done.bytes,
                started.elapsed().as_secs_f64()
            );
            if encrypt {
                println!(
                    "Keep database.key safe: without it nothing can be read. Backups made before now are still plain files; new ones (`nof1d backup`) are encrypted with the same key."
                );
            } else {
                println!("Now remove database.key from the config before starting the daemon.");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup { file, data_dir } => {
            let mut config = load_config(&cli)?;
            if let Some(dir) = data_dir {
                config.data_dir = dir.clone();
            }
            if file.exists() {
                anyhow::bail!("{} already exists; choose a new file name", file.display());
            }
            let source = config.database_path();
            if !source.exists() {
                anyhow::bail!("no database at {}", source.display());
            }
            let key = config.database.resolve_key()?;
            let store = crate::service::store::Store::open_read_only_keyed(&source, key.as_ref())?;
            store
                .backup_to(file)
                .with_context(|| format!("backup to {}", file.display()))?;
            println!("backed up {} to {}", source.display(), file.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check_protocols(files: &[PathBuf]) -> ExitCode {
    let mut failed = 0;
    for file in files {
        match crate::trial::protocol::check_file(file) {
            Ok((p, text)) => println!(
                "{}: ok ({}: {} arms, {} design, up to {} days, sha256 {})",
                file.display(),
                p.id,
                p.arms.len(),
                format!("{:?}", p.design.kind).to_lowercase(),
                p.planned_days(),
                crate::trial::protocol::ProtocolHash::of(&text).short()
            ),
            Err(e) => {
                failed += 1;
                eprintln!("{e}");
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} protocol files have problems", files.len());
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Writes a simulation's JSON report to `path`; prints it too with `--json`
/// (else says where it went).
fn write_report(path: &std::path::Path, doc: &str, json: bool) -> anyhow::Result<()> {
    std::fs::write(path, doc).with_context(|| format!("cannot write {}", path.display()))?;
    if json {
        println!("{doc}");
    } else {
        println!("JSON report written to {}", path.display());
    }
    Ok(())
}

/// Runs the configured proposer (or the library, `offline` or with no
/// LLM configured) for a participant and records what it answered.
fn run_proposer(
    config: &Config,
    store: &mut crate::service::store::Store,
    who: &crate::service::store::ParticipantRow,
    offline: bool,
    purpose: crate::service::hypotheses::Purpose,
    question: &str,
) -> anyhow::Result<crate::service::hypotheses::AskReport> {
    use crate::service::hypotheses::{Proposer, ask};
    let client = match (&config.llm, offline) {
        (Some(llm), false) => Some(crate::service::llm::LlmClient::new(llm)?),
        _ => None,
    };
    let proposer = match &client {
        Some(c) => Proposer::Llm(c),
        None => Proposer::Library,
    };
    Ok(ask(
        store,
        config,
        proposer,
        who,
        purpose,
        question,
        "investigator (cli)",
        jiff::Timestamp::now(),
    )?)
}

/// The config (with `data_dir` applied) and the existing database.
fn open_existing_store(
    cli: &Cli,
    data_dir: &Option<PathBuf>,
) -> anyhow::Result<(crate::service::config::Config, crate::service::store::Store)> {
    let mut config = load_config(cli)?;
    if let Some(dir) = data_dir {
        config.data_dir = dir.clone();
    }
    let path = config.database_path();
    if !path.exists() {
        anyhow::bail!(
            "no database at {} (start the daemon once first)",
            path.display()
        );
    }
    let key = config.database.resolve_key()?;
    let store = crate::service::store::Store::open_keyed(&path, key.as_ref())?;
    Ok((config, store))
}

/// The participant named, or the only one that is not the demo; an error
/// lists the participants there are.
fn participant_of(
    store: &crate::service::store::Store,
    key: Option<&str>,
) -> anyhow::Result<crate::service::store::ParticipantRow> {
    let people = store.participants()?;
    let keys = people
        .iter()
        .map(|p| p.key.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    match key {
        Some(k) => people
            .iter()
            .find(|p| p.key == k)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no participant {k:?}; participants: {keys}")),
        None => {
            let real: Vec<_> = people.iter().filter(|p| !p.is_demo).collect();
            match real.as_slice() {
                [one] => Ok((*one).clone()),
                _ => anyhow::bail!(
                    "say whose data this is with --participant (participants: {keys})"
                ),
            }
        }
    }
}

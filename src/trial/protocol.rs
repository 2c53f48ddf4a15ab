//! Trial protocols: the TOML format, its validation, and its hash.
//!
//! A protocol fixes everything `statistics.md` leaves to the trial: arms (with
//! labels, instructions and blinded codes), the comparator, the primary and
//! secondary outcomes (stream, aggregation, family, direction, MID, scale,
//! priors), the design (period length, washout, blocks, design type), the
//! decision thresholds and the assignment time. `protocols/` ships real ones;
//! `nof1d protocol check` runs [`check_file`] and prints every problem with its
//! file, line and key.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::spec::{
    Direction, Family, Mid, ModelSpec, NoiseModel, NormalPrior, PriorOverrides,
};
use crate::trial::calendar::parse_hhmm;

/// Mixed into a trial's seed for the stream its blinded codes are drawn
/// from ("codes" in ASCII).
const CODES_STREAM: u64 = 0x0063_6f64_6573;

/// What a blinded trial's participant is shown on a run-in day: a supply
/// of its own, which the helper fills with the comparator (the key says
/// so), so that the run-in is the comparator, as the model has it, without
/// naming the comparator's code.
pub const BLINDED_RUN_IN: &str = "Run-in supply";

/// A protocol as written in its TOML file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Protocol {
    /// Identifier (letters, digits, `-`, `_`).
    pub id: String,
    /// One-line title shown to the participant.
    pub title: String,
    /// Longer description: the question, the rationale.
    #[serde(default)]
    pub description: String,
    /// The arm every other arm is compared with (its `key`).
    pub comparator: String,
    /// Blinded protocols show each arm's `code` instead of its label.
    #[serde(default)]
    pub blinded: bool,
    /// The arms, 2 to 6.
    pub arms: Vec<Arm>,
    /// The primary outcome: it drives decisions.
    pub outcome: Outcome,
    /// Secondary outcomes: fitted and reported the same way, never decisive.
    #[serde(default)]
    pub secondary: Vec<Outcome>,
    /// Periods, blocks, washout and design type.
    pub design: Design,
    /// Decision thresholds (`statistics.md` §5).
    #[serde(default)]
    pub decision: DecisionRules,
    /// When the daily assignment is sent.
    #[serde(default)]
    pub notification: Notification,
    /// Why this is worth testing, as the proposer (a person, the built-in
    /// library or an LLM) put it: shown on the proposals page.
    #[serde(default)]
    pub hypothesis: Option<Hypothesis>,
    /// The intervention changes prescribed medication or needs a clinician's
    /// eye: approval requires an explicit clinician-approved statement.
    #[serde(default)]
    pub needs_clinician: bool,
}

/// The reasoning behind a proposed protocol and its suspected causal graph.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Hypothesis {
    /// Why the treatment might change the outcome for this person.
    pub rationale: String,
    /// The proposer's own uncertainty that the effect exists, 0 (sure) to 1
    /// (no idea); absent when a person proposed it by hand.
    #[serde(default)]
    pub uncertainty: Option<f64>,
    /// Suspected other causes of the outcome (that might also drive the
    /// treatment in everyday life, which randomisation rules out).
    #[serde(default)]
    pub confounders: Vec<String>,
    /// Suspected steps between treatment and outcome (treatment → mediator
    /// → outcome): part of the effect, so never adjusted for.
    #[serde(default)]
    pub mediators: Vec<String>,
    /// Further suspected causal links `[from, to]` between the nodes above;
    /// `"treatment"` and `"outcome"` name those two nodes.
    #[serde(default)]
    pub edges: Vec<[String; 2]>,
    /// Covariates an analysis may adjust for: a valid back-door set
    /// (checked by `trial::causal::adjustment_problems`); recorded, not yet
    /// used by the model.
    #[serde(default)]
    pub adjust_for: Vec<String>,
    /// Who proposed it: `"llm:<model>"`, `"library"`, or absent (a person).
    #[serde(default)]
    pub proposed_by: Option<String>,
    /// The effect prior in `outcome.priors` is the proposer's expectation
    /// (sd floored so it cannot decide alone): every fit also reports the
    /// posterior under a sceptical prior and the prior–data conflict.
    #[serde(default)]
    pub prior_from_proposer: bool,
    /// The sd the proposer stated, before the floor: the prior–data
    /// conflict is measured against what it actually expected.
    #[serde(default)]
    pub stated_effect_sd: Option<f64>,
    /// What the proposer says to watch for.
    #[serde(default)]
    pub safety_notes: Vec<String>,
}

/// One arm of a trial.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Arm {
    /// Identifier, unique in the protocol.
    pub key: String,
    /// Name shown when the protocol is not blinded.
    pub label: String,
    /// What to do on a day of this arm.
    #[serde(default)]
    pub instructions: String,
    /// Coded label for blinded protocols ("bottle A").
    pub code: Option<String>,
}

/// How several observations on one day become one value.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// Mean of the day's values.
    #[default]
    Mean,
    /// Sum of the day's values.
    Sum,
    /// The last value of the day.
    Last,
    /// The largest value of the day.
    Max,
    /// How many observations the day has (sessions, events).
    Count,
    /// Keep every observation.
    All,
}

impl Aggregation {
    /// One day's value from its observations in time order (not empty);
    /// `All` keeps every observation and has no single value (the first
    /// is returned).
    pub fn of(self, day: &[f64]) -> f64 {
        let n = day.len() as f64;
        match self {
            Aggregation::Mean => day.iter().sum::<f64>() / n,
            Aggregation::Sum => day.iter().sum(),
            Aggregation::Last => day.last().copied().unwrap_or(f64::NAN),
            Aggregation::Max => day.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Aggregation::Count => n,
            Aggregation::All => day.first().copied().unwrap_or(f64::NAN),
        }
    }
}

/// True for non-empty identifiers of ASCII letters, digits, `-` and `_`.
pub fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// An outcome the trial measures.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    /// The observation stream (catalog key), e.g. `sleep_score`.
    pub stream: String,
    /// Unit, for display.
    #[serde(default)]
    pub unit: String,
    /// Day aggregation.
    #[serde(default)]
    pub aggregation: Aggregation,
    /// Observation family.
    pub family: Family,
    /// Which way is better.
    pub direction: Direction,
    /// Minimal important difference: outcome units (gaussian), or a ratio > 1
    /// (rate ratio or odds ratio) for the log and logit links.
    pub mid: f64,
    /// Log and logit links: the MID also as a difference in the outcome's
    /// own units, > 0: events or yes-days per 30 days (poisson, bernoulli),
    /// percentage points (binomial, beta). When given, decisions ask for a
    /// difference at least this large ("2 fewer migraine days a month");
    /// `mid`, the ratio, still draws the charts' reference lines.
    #[serde(default)]
    pub mid_natural: Option<f64>,
    /// The outcome's scale `S`; default: sd of run-in data, else of all data
    /// (their MAD first with Student-t noise: `engine::fit::SampleScale`).
    pub scale: Option<f64>,
    /// Number of trials per day (binomial only).
    pub trials: Option<u32>,
    /// Gaussian family: the measurement error's distribution, `normal`
    /// (default) or `student_t` (robust to outlying days; slower fits and
    /// calibrations).
    #[serde(default, skip_serializing_if = "NoiseModel::is_normal")]
    pub noise: NoiseModel,
    /// When the outcome is a rating the participant gives.
    pub self_report: Option<SelfReport>,
    /// Prior overrides; anything absent takes the design's default.
    #[serde(default)]
    pub priors: PriorOverrides,
}

/// What will record an outcome ([`Outcome::recorded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded<'a> {
    /// Its stream already has data from a source.
    Data,
    /// It has no data yet, but is a self-report asked each day (the
    /// question).
    SelfReport(&'a str),
}

impl Outcome {
    /// Whether anything will record this outcome: a stream that already
    /// has data (`has_data`), or a self-report question. A trial of an
    /// outcome nothing records could only end "inconclusive" for want of
    /// data, so proposing one is refused with this reason.
    pub fn recorded(&self, has_data: bool) -> Result<Recorded<'_>, String> {
        match (has_data, &self.self_report) {
            (true, _) => Ok(Recorded::Data),
            (false, Some(q)) => Ok(Recorded::SelfReport(&q.question)),
            (false, None) => Err(format!(
                "there is no {:?} stream in this person's data and it is not a self-report: connect a source that records it, or add an [outcome.self_report] question",
                self.stream
            )),
        }
    }

    /// Whether a fit of this outcome is the exact Kalman filter (gaussian,
    /// normal noise: milliseconds) rather than importance sampling (the
    /// other families and Student-t noise: tens to hundreds of
    /// milliseconds), which sizes its simulations and picks its backend.
    pub fn fits_by_filter(&self) -> bool {
        self.family == Family::Gaussian && self.noise == NoiseModel::Normal
    }

    /// The minimal important difference, stated and on the link scale.
    pub fn mid(&self) -> Mid {
        Mid::new(self.family, self.mid).with_natural(self.mid_natural)
    }

    /// What the engine is asked to fit for this outcome.
    pub fn model_spec(&self) -> ModelSpec {
        ModelSpec {
            family: self.family,
            trials: self.trials,
            noise: self.noise,
            direction: self.direction,
            mid: self.mid(),
            scale: self.scale,
            priors: self.priors.clone(),
        }
    }
}

/// A self-reported outcome: the question and its answer range.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SelfReport {
    /// The question asked in the email and on the form.
    pub question: String,
    /// Lowest answer.
    pub min: i32,
    /// Highest answer.
    pub max: i32,
}

/// How orders are drawn inside blocks (`statistics.md` §7).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DesignKind {
    /// Each block holds every active arm once, in a random order.
    Block,
    /// Two arms: AB or BA drawn per block.
    Counterbalanced,
    /// Two arms: blocks in pairs AB BA or BA AB.
    Abba,
    /// Three or more arms: rows of a Williams design (first-order carryover balanced).
    Williams,
}

/// What happens to washout days.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum WashoutHandling {
    /// Keep them: the onset/washout dynamics explain them.
    #[default]
    Model,
    /// Leave them out of the analysis.
    Exclude,
}

/// Periods and blocks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Design {
    /// Design type.
    #[serde(rename = "type")]
    pub kind: DesignKind,
    /// Days in one period (one arm).
    pub period_days: u32,
    /// Washout days at the start of each period.
    #[serde(default)]
    pub washout_days: u32,
    /// What the analysis does with washout days.
    #[serde(default)]
    pub washout: WashoutHandling,
    /// Days on the comparator before the first period (run-in).
    #[serde(default)]
    pub run_in_days: u32,
    /// No decision before this many blocks.
    pub min_blocks: u32,
    /// Stop as inconclusive after this many blocks.
    pub max_blocks: u32,
    /// Part of a factorial design: may run beside another factorial trial
    /// on the same outcome stream (otherwise such concurrent trials are refused).
    #[serde(default)]
    pub factorial: bool,
}

/// Analysis population.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Analysis {
    /// By assigned arm (intention to treat).
    #[default]
    Itt,
    /// By the arm actually taken, where adherence was reported.
    AsTreated,
}

/// Thompson-type adaptive allocation (`statistics.md` §5).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Allocation {
    /// Exponent `c` in `P(best)^c`.
    pub power: f64,
    /// Minimum probability of each active arm.
    pub floor: f64,
}

/// Decision thresholds (`statistics.md` §5).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionRules {
    /// Stop for efficacy when `P(delta > MID) >=` this for the best arm:
    /// the starting point; before the trial starts the daemon calibrates it
    /// so that false stops stay at or below `false_stop_target`.
    pub efficacy: f64,
    /// The false-stop rate under no effect that the calibrated efficacy
    /// threshold keeps in every stress scenario (`statistics.md` §5).
    pub false_stop_target: f64,
    /// Stop for futility when `P(delta > MID) <=` this for every active arm
    /// (0: never): the starting point; calibration sets it so that trials
    /// whose arm is better by the MID stop for futility at most at
    /// `false_futility_target`.
    pub futility: f64,
    /// The share of trials whose arm truly is better by the MID (or the
    /// design's effect) that the calibrated futility threshold may stop as
    /// futile, in every stress scenario; and the share the calibrated
    /// arm-drop threshold may drop it in.
    pub false_futility_target: f64,
    /// Drop an arm when `P(arm is best) <` this (K >= 3): the starting
    /// point; calibration keeps it or lowers it (half, a quarter, none) so
    /// that the arm that works is dropped at most at
    /// `false_futility_target`.
    pub drop_arm: f64,
    /// Which analysis drives decisions (both are reported).
    pub analysis: Analysis,
    /// Optional adaptive allocation.
    pub allocation: Option<Allocation>,
}

impl Default for DecisionRules {
    fn default() -> Self {
        DecisionRules {
            efficacy: 0.95,
            false_stop_target: 0.05,
            futility: 0.05,
            false_futility_target: 0.10,
            drop_arm: 0.05,
            analysis: Analysis::Itt,
            allocation: None,
        }
    }
}

/// Notification settings of a protocol.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    /// `HH:MM` local time of the daily assignment; default: the participant's.
    pub assignment_time: Option<String>,
}

/// One problem in a protocol file: where, which key, what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtocolIssue {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `design.period_days` or `arms[1].code`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ProtocolIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// Every problem found in one protocol text.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", render_issues(.source_name, .issues))]
pub struct ProtocolError {
    /// File name (for messages).
    pub source_name: String,
    /// The problems, in file order.
    pub issues: Vec<ProtocolIssue>,
}

fn render_issues(name: &str, issues: &[ProtocolIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("{name}:{i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// SHA-256 of a protocol's exact text, hex: what "locked protocol" means.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolHash(pub String);

impl ProtocolHash {
    /// Hashes the text.
    pub fn of(text: &str) -> ProtocolHash {
        let digest = Sha256::digest(text.as_bytes());
        ProtocolHash(digest.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// First 12 hex digits, for display.
    pub fn short(&self) -> &str {
        &self.0[..12.min(self.0.len())]
    }
}

impl fmt::Display for ProtocolHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Protocol {
    /// Parses and validates a protocol text; `source_name` is used in messages.
    pub fn parse(text: &str, source_name: &str) -> Result<Protocol, ProtocolError> {
        let protocol: Protocol = match toml::from_str(text) {
            Ok(p) => p,
            Err(e) => {
                let line = e.span().map(|s| line_of(text, s.start));
                return Err(ProtocolError {
                    source_name: source_name.into(),
                    issues: vec![ProtocolIssue {
                        line,
                        key: key_from_span(text, e.span()),
                        message: e.message().trim().to_string(),
                    }],
                });
            }
        };
        let mut issues = protocol.validate();
        if issues.is_empty() {
            return Ok(protocol);
        }
        locate(text, &mut issues);
        issues.sort_by_key(|i| i.line.unwrap_or(usize::MAX));
        Err(ProtocolError {
            source_name: source_name.into(),
            issues,
        })
    }

    /// The index of the comparator arm.
    pub fn comparator_index(&self) -> usize {
        self.arms
            .iter()
            .position(|a| a.key == self.comparator)
            .unwrap_or(0)
    }

    /// Index of an arm by key.
    pub fn arm_index(&self, key: &str) -> Option<usize> {
        self.arms.iter().position(|a| a.key == key)
    }

    /// What the participant is shown for an arm: its code when blinded.
    pub fn display_label(&self, arm: usize) -> &str {
        let a = &self.arms[arm];
        match (&a.code, self.blinded) {
            (Some(code), true) => code,
            _ => &a.label,
        }
    }

    /// The protocol as one trial runs it: in a blinded protocol the codes
    /// written in the file are the names to use, and which arm gets which
    /// is drawn from the trial's seed (a stream of its own, apart from the
    /// block orders'). A shipped protocol file is public, so codes fixed in
    /// it would give every user of it the same key. The text and its hash
    /// do not change; the key is the same every time the trial is loaded.
    pub fn with_trial_codes(mut self, seed: u64) -> Protocol {
        if !self.blinded {
            return self;
        }
        let mut codes: Vec<Option<String>> = self.arms.iter().map(|a| a.code.clone()).collect();
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ CODES_STREAM);
        codes.shuffle(&mut rng);
        for (arm, code) in self.arms.iter_mut().zip(codes) {
            arm.code = code;
        }
        self
    }

    /// What the participant is shown for a day on `arm`. In a blinded
    /// protocol's run-in no code is named: the run-in is on the comparator,
    /// so its code would give the key away.
    pub fn day_label(&self, arm: usize, run_in: bool) -> &str {
        if run_in && self.blinded {
            BLINDED_RUN_IN
        } else {
            self.display_label(arm)
        }
    }

    /// The colour slot an arm is drawn in, for the participant's eyes: in
    /// a blinded protocol the rank of its code among the codes (so a colour
    /// follows a code, not the arm behind it, whose place in the file is
    /// public); otherwise the arm's index.
    pub fn display_slot(&self, arm: usize) -> usize {
        match (self.blinded, &self.arms[arm].code) {
            (true, Some(code)) => self
                .arms
                .iter()
                .filter(|a| a.code.as_ref().is_some_and(|c| c < code))
                .count(),
            _ => arm,
        }
    }

    /// The arms' codes in order: how a blinded trial's participant sees the
    /// list of its arms (in the file's order they would follow the arms,
    /// comparator first or wherever the file puts it).
    pub fn codes_in_order(&self) -> Vec<String> {
        let mut codes: Vec<String> = (0..self.arms.len())
            .map(|a| self.display_label(a).to_string())
            .collect();
        codes.sort();
        codes
    }

    /// The key of a blinded trial, "Box 1 = Magnesium citrate 600 mg; Box 2
    /// = Placebo; Run-in supply = Placebo", codes in order: for the
    /// investigator (and the helper who fills the supplies) while the trial
    /// runs, and for the participant once it has ended.
    pub fn code_key(&self) -> Option<String> {
        if !self.blinded {
            return None;
        }
        let mut pairs: Vec<(&str, &str)> = self
            .arms
            .iter()
            .filter_map(|a| Some((a.code.as_deref()?, a.label.as_str())))
            .collect();
        pairs.sort();
        let comparator = &self.arms[self.comparator_index()].label;
        if self.design.run_in_days > 0 {
            pairs.push((BLINDED_RUN_IN, comparator));
        }
        Some(
            pairs
                .iter()
                .map(|(c, l)| format!("{c} = {l}"))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }

    /// All outcomes, primary first.
    pub fn outcomes(&self) -> impl Iterator<Item = &Outcome> {
        std::iter::once(&self.outcome).chain(self.secondary.iter())
    }

    /// Total planned days: run-in plus `max_blocks` blocks of every arm.
    pub fn planned_days(&self) -> u32 {
        self.design.run_in_days
            + self.design.max_blocks * self.arms.len() as u32 * self.design.period_days
    }

    /// Semantic checks serde cannot do. Returns every problem, unlocated.
    pub fn validate(&self) -> Vec<ProtocolIssue> {
        let mut v = Issues::default();
        if !is_slug(&self.id) {
            v.add("id", "must be letters, digits, '-' or '_' (at most 64)");
        }
        if self.title.trim().is_empty() {
            v.add("title", "must not be empty");
        }
        let k = self.arms.len();
        if !(2..=6).contains(&k) {
            v.add("arms", format!("a trial needs 2 to 6 arms (got {k})"));
        }
        let mut keys = BTreeSet::new();
        let mut codes = BTreeSet::new();
        for (i, arm) in self.arms.iter().enumerate() {
            if !is_slug(&arm.key) {
                v.add(
                    format!("arms[{i}].key"),
                    "must be letters, digits, '-' or '_'",
                );
            }
            if !keys.insert(arm.key.as_str()) {
                v.add(
                    format!("arms[{i}].key"),
                    format!("arm key {:?} is used twice", arm.key),
                );
            }
            if arm.label.trim().is_empty() {
                v.add(format!("arms[{i}].label"), "must not be empty");
            }
            match &arm.code {
                Some(code) if !codes.insert(code.as_str()) => v.add(
                    format!("arms[{i}].code"),
                    format!("code {code:?} is used twice"),
                ),
                None if self.blinded => v.add(
                    format!("arms[{i}]"),
                    "blinded protocols need a `code` for every arm",
                ),
                _ => {}
            }
        }
        if !keys.contains(self.comparator.as_str()) {
            v.add(
                "comparator",
                format!("{:?} is not the key of any arm", self.comparator),
            );
        }
        self.validate_outcome(&self.outcome, "outcome", &mut v);
        let mut streams = BTreeSet::from([self.outcome.stream.as_str()]);
        for (i, o) in self.secondary.iter().enumerate() {
            let path = format!("secondary[{i}]");
            self.validate_outcome(o, &path, &mut v);
            if !streams.insert(o.stream.as_str()) {
                v.add(
                    format!("{path}.stream"),
                    format!(
                        "stream {:?} is already an outcome of this protocol",
                        o.stream
                    ),
                );
            }
        }
        self.validate_design(&mut v);
        self.validate_decision(&mut v);
        if let Some(h) = &self.hypothesis {
            if h.rationale.trim().is_empty() {
                v.add("hypothesis.rationale", "must not be empty");
            }
            if let Some(u) = h.uncertainty
                && !(0.0..=1.0).contains(&u)
            {
                v.add(
                    "hypothesis.uncertainty",
                    format!("{u} must be between 0 and 1"),
                );
            }
            if let Err(e) = crate::trial::causal::CausalGraph::of(self) {
                v.add("hypothesis.edges", e.to_string());
            }
        }
        if let Some(t) = &self.notification.assignment_time
            && parse_hhmm(t).is_none()
        {
            v.add(
                "notification.assignment_time",
                format!("{t:?} must be HH:MM (24-hour)"),
            );
        }
        v.0
    }

    fn validate_outcome(&self, o: &Outcome, path: &str, v: &mut Issues) {
        if !is_slug(&o.stream) {
            v.add(
                format!("{path}.stream"),
                "must be letters, digits, '-' or '_'",
            );
        }
        if let Err(why) = crate::engine::spec::Mid::check(o.family, o.mid, true) {
            v.add(format!("{path}.mid"), why);
        }
        if let Some(k) = o.mid_natural {
            if !o.family.has_ratio_mid() {
                v.add(
                    format!("{path}.mid_natural"),
                    "is for the poisson, bernoulli, binomial and beta families; a gaussian MID is already in the outcome's units",
                );
            } else if !(k.is_finite() && k > 0.0) {
                v.add(
                    format!("{path}.mid_natural"),
                    format!(
                        "must be a positive difference ({}; got {k})",
                        crate::engine::natural::difference_unit(o.family)
                    ),
                );
            }
        }
        if let Some(s) = o.scale
            && !(s.is_finite() && s > 0.0)
        {
            v.add(
                format!("{path}.scale"),
                format!("must be a positive number (got {s})"),
            );
        }
        match (o.family, o.trials) {
            (Family::Binomial, None) => v.add(
                format!("{path}.trials"),
                "the binomial family needs `trials` (n per day)",
            ),
            (Family::Binomial, Some(0)) => v.add(format!("{path}.trials"), "must be at least 1"),
            (Family::Binomial, Some(_)) | (_, None) => {}
            (_, Some(_)) => v.add(
                format!("{path}.trials"),
                "`trials` is only meaningful for the binomial family",
            ),
        }
        if o.noise != NoiseModel::Normal && o.family != Family::Gaussian {
            v.add(
                format!("{path}.noise"),
                "a noise model is only meaningful for the gaussian family (the others' variation comes from their own distribution)",
            );
        }
        if o.family == Family::Bernoulli
            && matches!(
                o.aggregation,
                Aggregation::Mean | Aggregation::Sum | Aggregation::Count
            )
        {
            v.add(
                format!("{path}.aggregation"),
                "a yes/no outcome needs last, max or all (mean, sum and count are not yes/no)",
            );
        }
        if let Some(sr) = &o.self_report {
            if sr.question.trim().is_empty() {
                v.add(format!("{path}.self_report.question"), "must not be empty");
            }
            if sr.min >= sr.max || sr.max - sr.min > 100 {
                v.add(
                    format!("{path}.self_report"),
                    format!(
                        "need min < max with at most 100 steps (got {}..{})",
                        sr.min, sr.max
                    ),
                );
            }
        }
        let pp = format!("{path}.priors");
        let pr = &o.priors;
        let check_normal = |v: &mut Issues, key: String, p: &NormalPrior| {
            if !p.mean.is_finite() {
                v.add(format!("{key}.mean"), "must be a finite number");
            }
            if !(p.sd.is_finite() && p.sd > 0.0) {
                v.add(
                    format!("{key}.sd"),
                    format!("must be a positive number (got {})", p.sd),
                );
            }
        };
        if let Some(p) = &pr.effect {
            check_normal(v, format!("{pp}.effect"), p);
        }
        if let Some(p) = &pr.baseline {
            check_normal(v, format!("{pp}.baseline"), p);
        }
        for (arm, p) in &pr.effects {
            let key = format!("{pp}.effects.{arm}");
            if arm == &self.comparator {
                v.add(
                    key.clone(),
                    "the comparator has no effect parameter (beta_0 = 0)",
                );
            } else if self.arm_index(arm).is_none() {
                v.add(key.clone(), format!("{arm:?} is not the key of any arm"));
            }
            check_normal(v, key, p);
        }
        for (name, value) in [
            ("drift_sd_scale", pr.drift_sd_scale),
            ("drift_time_median_days", pr.drift_time_median_days),
            ("drift_time_log_sd", pr.drift_time_log_sd),
            ("half_life_median_days", pr.half_life_median_days),
            ("half_life_log_sd", pr.half_life_log_sd),
            ("noise_sd_scale", pr.noise_sd_scale),
            ("precision_median", pr.precision_median),
            ("precision_log_sd", pr.precision_log_sd),
        ] {
            if let Some(x) = value
                && !(x.is_finite() && x > 0.0)
            {
                v.add(
                    format!("{pp}.{name}"),
                    format!("must be a positive number (got {x})"),
                );
            }
        }
    }

    fn validate_design(&self, v: &mut Issues) {
        let d = &self.design;
        let k = self.arms.len();
        if !(1..=365).contains(&d.period_days) {
            v.add(
                "design.period_days",
                format!("must be 1 to 365 (got {})", d.period_days),
            );
        }
        if d.washout_days >= d.period_days.max(1) {
            v.add(
                "design.washout_days",
                format!(
                    "must be shorter than the period ({} >= {} days)",
                    d.washout_days, d.period_days
                ),
            );
        }
        if d.run_in_days > 365 {
            v.add(
                "design.run_in_days",
                format!("must be at most 365 (got {})", d.run_in_days),
            );
        }
        if d.min_blocks == 0 {
            v.add("design.min_blocks", "must be at least 1");
        }
        if d.max_blocks < d.min_blocks {
            v.add(
                "design.max_blocks",
                format!(
                    "must be at least min_blocks ({} < {})",
                    d.max_blocks, d.min_blocks
                ),
            );
        }
        if d.max_blocks > 100 {
            v.add(
                "design.max_blocks",
                format!("must be at most 100 (got {})", d.max_blocks),
            );
        }
        match d.kind {
            DesignKind::Counterbalanced | DesignKind::Abba if k != 2 => v.add(
                "design.type",
                format!(
                    "{:?} needs exactly 2 arms (got {k}); use block or williams",
                    d.kind
                )
                .to_lowercase(),
            ),
            DesignKind::Abba if d.max_blocks % 2 == 1 => v.add(
                "design.max_blocks",
                format!(
                    "abba uses blocks in pairs: max_blocks must be even (got {})",
                    d.max_blocks
                ),
            ),
            _ => {}
        }
    }

    fn validate_decision(&self, v: &mut Issues) {
        let r = &self.decision;
        if !(r.efficacy > 0.5 && r.efficacy < 1.0) {
            v.add(
                "decision.efficacy",
                format!("must be in (0.5, 1) (got {})", r.efficacy),
            );
        }
        if !(r.false_stop_target > 0.0 && r.false_stop_target < 0.5) {
            v.add(
                "decision.false_stop_target",
                format!("must be in (0, 0.5) (got {})", r.false_stop_target),
            );
        }
        if !(r.false_futility_target > 0.0 && r.false_futility_target < 0.5) {
            v.add(
                "decision.false_futility_target",
                format!("must be in (0, 0.5) (got {})", r.false_futility_target),
            );
        }
        if !(r.futility >= 0.0 && r.futility < 0.5) {
            v.add(
                "decision.futility",
                format!("must be in [0, 0.5) (got {})", r.futility),
            );
        }
        if !(r.drop_arm >= 0.0 && r.drop_arm < 0.5) {
            v.add(
                "decision.drop_arm",
                format!("must be in [0, 0.5) (got {})", r.drop_arm),
            );
        }
        if let Some(a) = &r.allocation {
            if !(a.power.is_finite() && a.power > 0.0) {
                v.add(
                    "decision.allocation.power",
                    format!("must be positive (got {})", a.power),
                );
            }
            let k = self.arms.len().max(1) as f64;
            if !(a.floor >= 0.0 && a.floor < 1.0 / k) {
                v.add(
                    "decision.allocation.floor",
                    format!(
                        "must be in [0, 1/K) = [0, {:.3}) (got {})",
                        1.0 / k,
                        a.floor
                    ),
                );
            }
        }
    }
}

#[derive(Default)]
struct Issues(Vec<ProtocolIssue>);

impl Issues {
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ProtocolIssue {
            line: None,
            key: key.into(),
            message: message.into(),
        });
    }
}

/// Reads and checks one protocol file.
pub fn check_file(path: &Path) -> Result<(Protocol, String), ProtocolError> {
    let name = path.display().to_string();
    let text = crate::limits::read_text(path, crate::limits::SMALL_FILE_BYTES).map_err(|e| {
        ProtocolError {
            source_name: name.clone(),
            issues: vec![ProtocolIssue {
                line: None,
                key: "(file)".into(),
                message: format!("cannot read: {e}"),
            }],
        }
    })?;
    let protocol = Protocol::parse(&text, &name)?;
    Ok((protocol, text))
}

/// 1-based line number of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The key on the line a serde error points at, for the message's key column.
fn key_from_span(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return "(document)".into();
    };
    let start = text[..span.start.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("").trim();
    match line.split_once('=') {
        Some((k, _)) => k.trim().to_string(),
        None => line.trim_matches(['[', ']']).to_string(),
    }
}

/// Fills in each issue's line by walking its key path through the spanned
/// document; a missing key points at the nearest table that exists.
fn locate(text: &str, issues: &mut [ProtocolIssue]) {
    let Ok(table) = toml::de::DeTable::parse(text) else {
        return;
    };
    let span = table.span();
    let root = toml::Spanned::new(span, toml::de::DeValue::Table(table.into_inner()));
    for issue in issues.iter_mut() {
        let mut node = &root;
        let mut span = None;
        for seg in path_segments(&issue.key) {
            let next = match seg {
                Seg::Key(k) => node.get_ref().get(k),
                Seg::Index(i) => node.get_ref().get(i),
            };
            match next {
                Some(n) => {
                    span = Some(n.span());
                    node = n;
                }
                None => break,
            }
        }
        issue.line = Some(span.map_or(1, |s| line_of(text, s.start)));
    }
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn path_segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        match part.split_once('[') {
            Some((name, rest)) => {
                out.push(Seg::Key(name));
                if let Ok(i) = rest.trim_end_matches(']').parse() {
                    out.push(Seg::Index(i));
                }
            }
            None => out.push(Seg::Key(part)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
id = "t"
title = "Test"
comparator = "placebo"

[[arms]]
key = "placebo"
label = "Placebo"

[[arms]]
key = "mg"
label = "Magnesium"

[outcome]
stream = "sleep_score"
family = "gaussian"
direction = "higher"
mid = 3.0

[design]
type = "counterbalanced"
period_days = 7
min_blocks = 2
max_blocks = 6
"#;

    #[test]
    fn good_protocol_parses() {
        let p = Protocol::parse(GOOD, "good.toml").unwrap();
        assert_eq!(p.comparator_index(), 0);
        assert_eq!(p.planned_days(), 6 * 2 * 7);
        assert_eq!(p.decision.efficacy, 0.95);
    }

    #[test]
    fn semantic_errors_name_line_and_key() {
        let bad = GOOD
            .replace("period_days = 7", "period_days = 0")
            .replace("comparator = \"placebo\"", "comparator = \"sugar\"");
        let err = Protocol::parse(&bad, "bad.toml").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("bad.toml:line 4: comparator:"), "{text}");
        assert!(
            text.contains("design.period_days: must be 1 to 365 (got 0)"),
            "{text}"
        );
        let line = err
            .issues
            .iter()
            .find(|i| i.key == "design.period_days")
            .unwrap()
            .line;
        assert_eq!(line, Some(22));
    }

    #[test]
    fn syntax_and_unknown_keys_are_located() {
        let bad = GOOD.replace("mid = 3.0", "mid = 3.0\nmdi = 2");
        let err = Protocol::parse(&bad, "x.toml").unwrap_err();
        assert_eq!(err.issues[0].line, Some(19), "{err}");
        assert!(err.issues[0].message.contains("mdi"), "{err}");
        let bad = GOOD.replace("family = \"gaussian\"", "family = \"gauss\"");
        let err = Protocol::parse(&bad, "x.toml").unwrap_err();
        assert!(err.to_string().contains("gauss"), "{err}");
        assert_eq!(err.issues[0].key, "family");
    }

    /// `noise` reads `normal` (the default, not written back, so that no
    /// protocol's text or hash changes) or `student_t`; the latter is
    /// refused for a family with no noise of its own, and a misspelling
    /// is named.
    #[test]
    fn the_noise_model_is_read_and_checked() {
        let p = Protocol::parse(GOOD, "good.toml").unwrap();
        assert_eq!(p.outcome.noise, NoiseModel::Normal);
        assert!(p.outcome.fits_by_filter());
        assert!(!toml::to_string(&p.outcome).unwrap().contains("noise"));
        let robust = GOOD.replace("mid = 3.0", "mid = 3.0\nnoise = \"student_t\"");
        let p = Protocol::parse(&robust, "robust.toml").unwrap();
        assert_eq!(p.outcome.noise, NoiseModel::StudentT);
        assert_eq!(p.outcome.model_spec().noise, NoiseModel::StudentT);
        assert!(!p.outcome.fits_by_filter());
        let counts = robust
            .replace("family = \"gaussian\"", "family = \"poisson\"")
            .replace("mid = 3.0", "mid = 1.5");
        let err = Protocol::parse(&counts, "x.toml").unwrap_err();
        assert!(
            err.to_string().contains(
                "outcome.noise: a noise model is only meaningful for the gaussian family"
            ),
            "{err}"
        );
        let typo = GOOD.replace("mid = 3.0", "mid = 3.0\nnoise = \"student\"");
        let err = Protocol::parse(&typo, "x.toml").unwrap_err();
        assert!(err.to_string().contains("student_t"), "{err}");
    }

    #[test]
    fn a_mid_in_the_outcomes_own_units_is_checked() {
        let counts = GOOD
            .replace("\"gaussian\"", "\"poisson\"")
            .replace("mid = 3.0", "mid = 1.25\nmid_natural = 2.0");
        let p = Protocol::parse(&counts, "x.toml").unwrap();
        assert_eq!(p.outcome.mid().natural(), Some(2.0));
        assert_eq!(p.outcome.mid().stated(), 1.25);
        let gaussian = GOOD.replace("mid = 3.0", "mid = 3.0\nmid_natural = 2.0");
        let err = Protocol::parse(&gaussian, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("outcome.mid_natural: is for the poisson"),
            "{err}"
        );
        let negative = counts.replace("mid_natural = 2.0", "mid_natural = -1.0");
        let err = Protocol::parse(&negative, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("must be a positive difference (per 30 days"),
            "{err}"
        );
    }

    #[test]
    fn ratio_mid_and_design_arms_checked() {
        let bad = GOOD
            .replace("\"gaussian\"", "\"poisson\"")
            .replace("mid = 3.0", "mid = 0.5");
        let err = Protocol::parse(&bad, "x.toml").unwrap_err().to_string();
        assert!(err.contains("ratio"), "{err}");
        let bad = GOOD.replace("\"counterbalanced\"", "\"williams\"");
        assert!(Protocol::parse(&bad, "x.toml").is_ok());
        let three = GOOD.replace(
            "[outcome]",
            "[[arms]]\nkey = \"zn\"\nlabel = \"Zinc\"\n\n[outcome]",
        );
        let err = Protocol::parse(&three, "x.toml").unwrap_err().to_string();
        assert!(
            err.contains("design.type: counterbalanced needs exactly 2 arms"),
            "{err}"
        );
    }

    #[test]
    fn blinded_codes_are_drawn_per_trial() {
        let text = include_str!("../../protocols/magnesium-migraine.toml");
        let file = Protocol::parse(text, "m.toml").unwrap();
        assert_eq!(
            file.arms[0].code.as_deref(),
            Some("Box 1"),
            "placebo first in the file"
        );
        // The same seed gives the same key; over 200 trials both keys occur,
        // each about half the time (binomial sd 7).
        let key = |seed: u64| file.clone().with_trial_codes(seed).code_key().unwrap();
        assert_eq!(key(7), key(7));
        let placebo_in_box_1 = (0..200u64)
            .filter(|&s| key(s).starts_with("Box 1 = Placebo"))
            .count();
        assert!((70..=130).contains(&placebo_in_box_1), "{placebo_in_box_1}");
        // A trial whose placebo is in Box 2: the participant's names and
        // colours follow the code, not the arm.
        let seed = (0..200u64)
            .find(|&s| key(s).starts_with("Box 1 = Magnesium"))
            .unwrap();
        let p = file.clone().with_trial_codes(seed);
        assert_eq!(
            p.code_key().unwrap(),
            "Box 1 = Magnesium citrate 600 mg; Box 2 = Placebo; Run-in supply = Placebo"
        );
        assert_eq!((p.display_label(0), p.display_label(1)), ("Box 2", "Box 1"));
        assert_eq!((p.display_slot(0), p.display_slot(1)), (1, 0));
        // The run-in (always the comparator) names no code.
        assert_eq!(p.day_label(0, true), BLINDED_RUN_IN);
        assert_eq!(p.day_label(0, false), "Box 2");
        // An unblinded protocol is left as it is.
        let open = Protocol::parse(GOOD, "x.toml").unwrap();
        assert_eq!(open.clone().with_trial_codes(3), open);
        assert_eq!(open.code_key(), None);
        assert_eq!(open.day_label(0, true), open.arms[0].label);
    }

    #[test]
    fn blinded_needs_codes() {
        let bad = GOOD.replace(
            "comparator = \"placebo\"",
            "comparator = \"placebo\"\nblinded = true",
        );
        let err = Protocol::parse(&bad, "x.toml").unwrap_err();
        assert_eq!(err.issues.len(), 2, "{err}");
        assert!(err.issues[0].message.contains("code"));
    }

    #[test]
    fn hash_is_stable_and_text_sensitive() {
        let a = ProtocolHash::of(GOOD);
        assert_eq!(a, ProtocolHash::of(GOOD));
        assert_ne!(a, ProtocolHash::of(&GOOD.replace("Test", "Test2")));
        assert_eq!(a.0.len(), 64);
    }

    #[test]
    fn shipped_protocols_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("protocols");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                if let Err(e) = check_file(&path) {
                    panic!("{e}");
                }
                n += 1;
            }
        }
        assert!(n >= 5, "expected the five shipped protocols, found {n}");
    }
}

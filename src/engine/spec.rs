//! What the engine is asked to fit: the observation family, which way is
//! better, the minimal important difference on the link scale, the scale and
//! the prior overrides (`statistics.md` §3–§5). Protocol files are turned
//! into this in `trial::protocol`; the engine knows nothing of them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Observation family (`statistics.md` §3).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Continuous, identity link.
    Gaussian,
    /// Counts per day, log link.
    Poisson,
    /// Yes/no days, logit link.
    Bernoulli,
    /// k of n, logit link.
    Binomial,
    /// Proportions in (0, 1), logit link.
    Beta,
}

impl Family {
    /// True for the log and logit links, where the MID is a ratio.
    pub fn has_ratio_mid(self) -> bool {
        !matches!(self, Family::Gaussian)
    }
}

/// The distribution of a continuous (gaussian-family) outcome's
/// measurement error around its latent level: `statistics.md` §3's
/// gaussian family, or its robust variant. The identity link and the
/// outcome's units either way.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NoiseModel {
    /// `y = eta + sigma_y e`, `e ~ Normal(0, 1)`: exact through the Kalman
    /// filter, milliseconds a fit.
    #[default]
    Normal,
    /// `y = eta + sigma_y e`, `e ~ Student-t` with [`STUDENT_T_DF`] degrees
    /// of freedom: a day's outlier (a bad night's sensor, a sick day) pulls
    /// the effect far less than under normal errors. Fitted as the
    /// non-gaussian families are (Laplace, refitted, importance-corrected),
    /// so a fit costs about as much as a bernoulli one.
    StudentT,
}

impl NoiseModel {
    /// The default, left out when a protocol is written back.
    pub fn is_normal(&self) -> bool {
        *self == NoiseModel::Normal
    }
}

/// Degrees of freedom of [`NoiseModel::StudentT`]: 4, the usual robust
/// default (Lange, Little & Taylor 1989): tails heavy enough that an
/// outlier's pull on the level fades (its score `(nu + 1) r / (nu s^2 + r^2)`
/// falls as `1/r`), a finite variance, and little lost when the errors are
/// normal after all. Fixed rather than estimated: a fifth hyperparameter
/// would multiply every fit's lattice.
pub const STUDENT_T_DF: f64 = 4.0;

/// Which way is better for the participant.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Higher values are better.
    Higher,
    /// Lower values are better.
    Lower,
}

impl Direction {
    /// `+1` or `-1`: `delta = sign * beta` is positive when better.
    pub fn sign(self) -> f64 {
        match self {
            Direction::Higher => 1.0,
            Direction::Lower => -1.0,
        }
    }
}

/// The minimal important difference: as the protocol states it, and on the
/// link scale where effects live (`statistics.md` §5). For the identity link
/// (gaussian) both are the same number in outcome units; for the log and
/// logit links the stated MID is a rate or odds ratio `r > 1` and its
/// link-scale value is `ln r`. This is the one place that conversion is made:
/// fits, decisions, the simulator and every chart take it from here.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mid {
    stated: f64,
    link: f64,
    natural: Option<f64>,
}

impl Mid {
    /// The MID `stated` for `family`: `link = ln(stated)` for the log and
    /// logit links, `stated` for the identity link.
    pub fn new(family: Family, stated: f64) -> Mid {
        let link = if family.has_ratio_mid() {
            stated.ln()
        } else {
            stated
        };
        Mid {
            stated,
            link,
            natural: None,
        }
    }

    /// The same MID, also stated as a difference in the outcome's own units
    /// (log and logit links): events or yes-days per 30 days (poisson,
    /// bernoulli) or percentage points (binomial, beta), as
    /// `engine::natural` computes them. When it is given, "better by the
    /// MID" means better by at least this difference, and decisions use it.
    pub fn with_natural(mut self, natural: Option<f64>) -> Mid {
        self.natural = natural;
        self
    }

    /// The MID as a difference in the outcome's own units, when stated so.
    pub fn natural(self) -> Option<f64> {
        self.natural
    }

    /// Checks a stated MID: outcome units, at least 0, for the identity
    /// link; for the log and logit links a rate or odds ratio, at least 1
    /// (1: any improvement counts; a protocol asks for more, `strict`).
    /// The error says what a ratio MID means.
    pub fn check(family: Family, stated: f64, strict: bool) -> Result<(), String> {
        if !stated.is_finite() {
            return Err(format!("must be a number (got {stated})"));
        }
        if !family.has_ratio_mid() {
            return if strict && stated <= 0.0 {
                Err(format!("must be a positive number (got {stated})"))
            } else if stated < 0.0 {
                Err(format!(
                    "must be 0 or more, in the outcome's units (got {stated})"
                ))
            } else {
                Ok(())
            };
        }
        let floor_ok = if strict { stated > 1.0 } else { stated >= 1.0 };
        if floor_ok {
            return Ok(());
        }
        let name = match family {
            Family::Poisson => "poisson",
            Family::Bernoulli => "bernoulli",
            Family::Binomial => "binomial",
            _ => "beta",
        };
        let ratio = if family == Family::Poisson {
            "rate ratio"
        } else {
            "odds ratio"
        };
        Err(format!(
            "for the {name} family the MID is a {ratio}, the smallest change by a factor that matters \
             (1.25: 25% {}; 1 counts any improvement), so it must be {} 1 (got {stated})",
            if family == Family::Poisson {
                "fewer or more events a day"
            } else {
                "lower or higher odds"
            },
            if strict { "above" } else { "at least" }
        ))
    }

    /// As the protocol states it: outcome units, or a ratio.
    pub fn stated(self) -> f64 {
        self.stated
    }

    /// On the link scale, where effects are estimated and compared.
    pub fn link(self) -> f64 {
        self.link
    }
}

/// A normal prior `Normal(mean, sd)`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NormalPrior {
    /// Mean.
    pub mean: f64,
    /// Standard deviation, > 0.
    pub sd: f64,
}

/// Prior overrides (`statistics.md` §4, defaults table). Every field is
/// optional; `None` means the documented default, computed from `S`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PriorOverrides {
    /// `beta_j ~ Normal(m, s)` for every arm (default `Normal(0, S)`).
    pub effect: Option<NormalPrior>,
    /// Per-arm overrides of `effect`, keyed by arm key.
    #[serde(default)]
    pub effects: BTreeMap<String, NormalPrior>,
    /// `mu ~ Normal(mean of data, 2 S)` by default.
    pub baseline: Option<NormalPrior>,
    /// HalfNormal scale of the drift's stationary sd (default `S`).
    pub drift_sd_scale: Option<f64>,
    /// Median of the drift correlation time `1/lambda` in days (default 3).
    pub drift_time_median_days: Option<f64>,
    /// Log-sd of the drift correlation time (default 1).
    pub drift_time_log_sd: Option<f64>,
    /// Median onset/washout half-life `ln 2 / kappa` in days (`h0`, default 1).
    pub half_life_median_days: Option<f64>,
    /// Log-sd of the half-life (default 0.75).
    pub half_life_log_sd: Option<f64>,
    /// HalfNormal scale of the measurement noise `sigma_y` (default `S`).
    pub noise_sd_scale: Option<f64>,
    /// Beta family: median of the precision `phi` (default 20).
    pub precision_median: Option<f64>,
    /// Beta family: log-sd of the precision (default 1).
    pub precision_log_sd: Option<f64>,
}

/// The model a fit is asked for (`statistics.md` §3–§4).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Observation family.
    pub family: Family,
    /// Trials per day (binomial only).
    pub trials: Option<u32>,
    /// Measurement error (gaussian family only).
    pub noise: NoiseModel,
    /// Which way is better.
    pub direction: Direction,
    /// The minimal important difference.
    pub mid: Mid,
    /// The outcome's scale `S`, when stated; else from run-in or all data.
    pub scale: Option<f64>,
    /// Prior overrides; anything absent takes the default of §4.
    pub priors: PriorOverrides,
}

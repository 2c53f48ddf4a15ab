//! Stress scenarios for virtual trials (`statistics.md` §5, §6): features
//! that real series have and the model does not assume, added to data
//! otherwise drawn from the priors. A design's stopping rule is calibrated
//! so that it keeps its false-stop target in every scenario of the suite.

use rand::RngExt;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::engine::generate::normal;
use crate::engine::spec::{Family, NoiseModel, STUDENT_T_DF};

/// A named stress scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Data exactly from the model, hyperparameters drawn from the priors.
    Prior,
    /// No drift at all: independent daily noise around the arm's level.
    Iid,
    /// Daily noise that is AR(1) with coefficient 0.7 (same sd), on top of
    /// the model's drift: the model's white observation noise is wrong.
    Ar1,
    /// Heavy-tailed noise: Student t with 3 degrees of freedom, same sd.
    HeavyTails,
    /// Skewed noise: a centred lognormal (log-sd 1), same sd.
    Skewed,
    /// Coarse outcomes: every value rounded to the outcome's whole units
    /// (the power of ten at or below the scale `S`).
    Rounded,
    /// A slow linear trend: one scale unit `S` over the planned trial.
    Trend,
    /// A day-of-week pattern: weekends `0.5 S` higher.
    Weekly,
    /// Carryover longer than a period: half-life 1.5 periods.
    LongCarryover,
    /// A run of 10 missing days at a random point after the first block.
    MissingRun,
    /// Poor adherence: 30% of days on the comparator instead of the
    /// assigned arm (the analysis stays intention to treat).
    NonAdherence,
}

/// The AR(1) coefficient of [`Scenario::Ar1`].
const AR1_COEFFICIENT: f64 = 0.7;

/// The share of days not on the assigned arm in [`Scenario::NonAdherence`].
const POOR_ADHERENCE: f64 = 0.3;

impl Scenario {
    /// Every scenario, in report order.
    pub const ALL: [Scenario; 11] = [
        Scenario::Prior,
        Scenario::Iid,
        Scenario::Ar1,
        Scenario::HeavyTails,
        Scenario::Skewed,
        Scenario::Rounded,
        Scenario::Trend,
        Scenario::Weekly,
        Scenario::LongCarryover,
        Scenario::MissingRun,
        Scenario::NonAdherence,
    ];

    /// The scenario's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Prior => "prior",
            Scenario::Iid => "iid",
            Scenario::Ar1 => "ar1",
            Scenario::HeavyTails => "heavy_tails",
            Scenario::Skewed => "skewed",
            Scenario::Rounded => "rounded",
            Scenario::Trend => "trend",
            Scenario::Weekly => "weekly",
            Scenario::LongCarryover => "long_carryover",
            Scenario::MissingRun => "missing_run",
            Scenario::NonAdherence => "non_adherence",
        }
    }

    /// Parses a scenario name.
    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// All scenario names, for error messages.
    pub fn names() -> String {
        Scenario::ALL.map(Scenario::name).join(", ")
    }

    /// Whether the scenario means anything for `family`: the noise shapes
    /// (iid, AR(1), heavy tails, skew, rounding) are about continuous
    /// outcomes; counts and proportions keep their own noise.
    pub fn applies_to(self, family: Family) -> bool {
        match self {
            Scenario::Iid
            | Scenario::Ar1
            | Scenario::HeavyTails
            | Scenario::Skewed
            | Scenario::Rounded => family == Family::Gaussian,
            _ => true,
        }
    }

    /// The suite a design is calibrated on: every scenario that applies.
    pub fn suite(family: Family) -> Vec<Scenario> {
        Scenario::ALL
            .into_iter()
            .filter(|s| s.applies_to(family))
            .collect()
    }

    /// The share of days on the comparator instead of the assigned arm.
    pub fn non_adherence(self, stated: f64) -> f64 {
        match self {
            Scenario::NonAdherence => stated.max(POOR_ADHERENCE),
            _ => stated,
        }
    }

    /// The scenario whose data this one's equal when no arm has an effect:
    /// long carryover and poor adherence change only what an arm does, so
    /// their null trials are the prior's (the same draws, in the same order).
    pub fn null_twin(self) -> Option<Scenario> {
        match self {
            Scenario::LongCarryover | Scenario::NonAdherence => Some(Scenario::Prior),
            _ => None,
        }
    }

    /// Whether the person's own drift is switched off.
    pub fn without_drift(self) -> bool {
        self == Scenario::Iid
    }
}

/// The daily noise of one virtual trial: unit standard deviation, shaped by
/// the scenario, with the state an AR(1) needs; in the `prior` scenario
/// the fitted model's own errors.
#[derive(Debug, Clone)]
pub struct Noise {
    scenario: Scenario,
    model: NoiseModel,
    previous: Option<f64>,
}

impl Noise {
    /// Fresh noise for a trial whose outcome is fitted with `model`.
    pub fn of(scenario: Scenario, model: NoiseModel) -> Noise {
        Noise {
            scenario,
            model,
            previous: None,
        }
    }

    /// The next day's noise: mean 0, sd 1; in the `prior` scenario of a
    /// Student-t outcome the model's Student-t error at unit scale (its sd
    /// is `sqrt(nu / (nu - 2))`), as the fit assumes.
    pub fn next(&mut self, rng: &mut ChaCha20Rng) -> f64 {
        match self.scenario {
            Scenario::Prior if self.model == NoiseModel::StudentT => {
                student_t(STUDENT_T_DF as usize, rng)
            }
            // t_3 has variance 3: rescaled to unit sd.
            Scenario::HeavyTails => student_t(3, rng) / 3f64.sqrt(),
            Scenario::Skewed => {
                // Lognormal(0, 1): mean e^(1/2), variance (e - 1) e.
                let e = std::f64::consts::E;
                (normal(rng).exp() - e.sqrt()) / ((e - 1.0) * e).sqrt()
            }
            Scenario::Ar1 => {
                let fresh = normal(rng);
                let next = match self.previous {
                    // Stationary from the first day.
                    None => fresh,
                    Some(p) => AR1_COEFFICIENT * p + (1.0 - AR1_COEFFICIENT.powi(2)).sqrt() * fresh,
                };
                self.previous = Some(next);
                next
            }
            _ => normal(rng),
        }
    }
}

/// A draw of Student's t with `nu` degrees of freedom (unit scale): a
/// normal over the root of a chi-square's mean, from `nu` squared normals
/// drawn first.
fn student_t(nu: usize, rng: &mut ChaCha20Rng) -> f64 {
    let chi: f64 = (0..nu).map(|_| normal(rng).powi(2)).sum();
    normal(rng) / (chi / nu as f64).sqrt()
}

/// The grain of [`Scenario::Rounded`]: the power of ten at or below `scale`.
pub fn rounding_grain(scale: f64) -> f64 {
    if scale > 0.0 && scale.is_finite() {
        10f64.powf(scale.log10().floor())
    } else {
        1.0
    }
}

/// Rounds `value` to the grain of `scale` ([`Scenario::Rounded`]).
pub fn rounded(value: f64, scale: f64) -> f64 {
    let grain = rounding_grain(scale);
    (value / grain).round() * grain
}

/// A random day to start the missing run of [`Scenario::MissingRun`]:
/// uniform from `first_block_end` to the planned end.
pub fn missing_run_start(first_block_end: u32, planned: u32, rng: &mut ChaCha20Rng) -> u32 {
    first_block_end + rng.random_range(0..planned.saturating_sub(first_block_end).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn moments(scenario: Scenario, n: usize) -> (f64, f64, f64) {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let mut noise = Noise::of(scenario, NoiseModel::Normal);
        let xs: Vec<f64> = (0..n).map(|_| noise.next(&mut rng)).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        let lag1 = xs
            .windows(2)
            .map(|w| (w[0] - mean) * (w[1] - mean))
            .sum::<f64>()
            / (n - 1) as f64
            / var;
        (mean, var.sqrt(), lag1)
    }

    /// The `prior` scenario of a Student-t outcome draws the model's own
    /// errors: t with 4 degrees of freedom, whose two-sided 5% point is
    /// 2.776 (200,000 draws: the share's se is 0.0005, 0.002 leaves 4).
    #[test]
    fn a_student_t_outcomes_prior_scenario_draws_t4_errors() {
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let mut noise = Noise::of(Scenario::Prior, NoiseModel::StudentT);
        let n = 200_000;
        let beyond = (0..n)
            .filter(|_| noise.next(&mut rng).abs() > 2.776)
            .count() as f64
            / n as f64;
        assert!((beyond - 0.05).abs() < 0.002, "{beyond}");
        // The stress scenarios keep their unit-sd shapes.
        let mut iid = Noise::of(Scenario::Iid, NoiseModel::StudentT);
        let beyond = (0..n).filter(|_| iid.next(&mut rng).abs() > 1.96).count() as f64 / n as f64;
        assert!((beyond - 0.05).abs() < 0.002, "{beyond}");
    }

    #[test]
    fn every_noise_shape_has_mean_zero_and_unit_sd() {
        // 200,000 draws: the mean's MC se is 1/sqrt(n) = 0.0022 for iid
        // noise (0.0053 for AR(1) 0.7, whose long-run variance is 5.7 times
        // larger); 0.02 is about 4 se of the AR(1) case. The sd's error is
        // larger for the heavy-tailed and skewed shapes (fourth moments of
        // 14 and 111 under lognormal(0,1), se about sqrt(111/4/n) = 0.012):
        // 0.05 leaves 4 se.
        for s in [
            Scenario::Prior,
            Scenario::HeavyTails,
            Scenario::Skewed,
            Scenario::Ar1,
        ] {
            let (mean, sd, lag1) = moments(s, 200_000);
            assert!(mean.abs() < 0.02, "{s:?} mean {mean}");
            assert!((sd - 1.0).abs() < 0.05, "{s:?} sd {sd}");
            let want = if s == Scenario::Ar1 { 0.7 } else { 0.0 };
            assert!((lag1 - want).abs() < 0.02, "{s:?} lag-1 correlation {lag1}");
        }
    }

    #[test]
    fn rounding_uses_the_outcomes_whole_units() {
        assert_eq!(rounding_grain(1.5), 1.0);
        assert_eq!(rounding_grain(10.0), 10.0);
        assert_eq!(rounding_grain(0.3), 0.1);
        assert_eq!(rounded(2.6, 1.5), 3.0);
        assert!((rounded(0.26, 0.3) - 0.3).abs() < 1e-12);
    }

    #[test]
    fn the_suite_holds_only_what_applies_to_the_family() {
        assert_eq!(Scenario::suite(Family::Gaussian).len(), Scenario::ALL.len());
        let counts = Scenario::suite(Family::Poisson);
        assert!(!counts.contains(&Scenario::Ar1));
        assert!(counts.contains(&Scenario::MissingRun));
        for s in Scenario::ALL {
            assert_eq!(Scenario::parse(s.name()), Some(s));
        }
    }
}

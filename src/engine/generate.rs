//! Data from the model (`statistics.md` §2): the OU drift plus onset/washout
//! dynamics the engine fits, simulated exactly over any gap with a seeded
//! ChaCha20 generator, and one observation of any family from its linear
//! predictor. The demo participant, the trial simulator, the benchmarks and
//! the calibration checks all draw from here.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::engine::model::{ArmPath, Series};
use crate::engine::spec::Family;

/// Parameters of the gaussian model on the outcome's scale.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelParams {
    /// Baseline level `mu`.
    pub mu: f64,
    /// Effect of each arm against the comparator, indexed by arm;
    /// the comparator's entry is 0.
    pub beta: Vec<f64>,
    /// Drift mean-reversion rate `lambda` (1/days).
    pub lambda: f64,
    /// Drift diffusion `sigma_x`.
    pub sigma_x: f64,
    /// Onset/washout rate `kappa` (1/days); half-life `ln 2 / kappa`.
    pub kappa: f64,
    /// Measurement noise sd `sigma_y`.
    pub sigma_y: f64,
}

/// One simulated observation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimulatedPoint {
    /// Time in days since the start.
    pub t: f64,
    /// Arm in force at `t`.
    pub arm: usize,
    /// The latent effect in force `e(t)`.
    pub effect: f64,
    /// The observed value `mu + x(t) + e(t) + noise`.
    pub y: f64,
}

/// Simulates one observation a day at `t = day + obs_offset` (`0 <= obs_offset < 1`),
/// where `arms[day]` is in force from the start of `day` to the start of `day + 1`.
///
/// Exact discretisation over a gap `D` with arm `a` constant (§2):
/// `x' = rho x + w`, `rho = exp(-lambda D)`, `Var w = sigma_x^2 (1 - rho^2) / (2 lambda)`;
/// `e' = psi e + (1 - psi) beta_a`, `psi = exp(-kappa D)`. Arm switches fall on
/// day boundaries, so each gap is split there. `x_0` is stationary, `e_0 = 0`.
pub fn simulate_daily(
    params: &ModelParams,
    arms: &[usize],
    obs_offset: f64,
    seed: u64,
) -> Vec<SimulatedPoint> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut state = Latent::stationary(params, &mut rng);
    let mut out = Vec::with_capacity(arms.len());
    for (day, &arm) in arms.iter().enumerate() {
        // From the start of the day (arm switch) to the observation.
        state.advance(params, obs_offset, params.beta[arm], &mut rng);
        let noise = params.sigma_y * normal(&mut rng);
        out.push(SimulatedPoint {
            t: day as f64 + obs_offset,
            arm,
            effect: state.e,
            y: params.mu + state.x + state.e + noise,
        });
        // From the observation to the end of the day.
        state.advance(params, 1.0 - obs_offset, params.beta[arm], &mut rng);
    }
    out
}

pub(crate) fn normal(rng: &mut ChaCha20Rng) -> f64 {
    StandardNormal.sample(rng)
}

/// The latent state `(x, e)` of §2, advanced exactly over any gap.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Latent {
    /// The drift `x`.
    pub(crate) x: f64,
    /// The effect in force `e`.
    pub(crate) e: f64,
}

impl Latent {
    /// `x_0` from the stationary distribution, `e_0 = 0`.
    pub(crate) fn stationary(params: &ModelParams, rng: &mut ChaCha20Rng) -> Latent {
        let sd = params.sigma_x / (2.0 * params.lambda).sqrt();
        Latent {
            x: sd * normal(rng),
            e: 0.0,
        }
    }

    /// `x' = rho x + w`, `rho = exp(-lambda D)`, `Var w = sigma_x^2 (1 - rho^2) / (2 lambda)`;
    /// `e' = psi e + (1 - psi) beta`, `psi = exp(-kappa D)` (§2).
    pub(crate) fn advance(
        &mut self,
        params: &ModelParams,
        d: f64,
        beta: f64,
        rng: &mut ChaCha20Rng,
    ) {
        if d <= 0.0 {
            return;
        }
        let sd = params.sigma_x / (2.0 * params.lambda).sqrt();
        let rho = (-params.lambda * d).exp();
        self.x = rho * self.x + sd * (1.0 - rho * rho).sqrt() * normal(rng);
        let psi = (-params.kappa * d).exp();
        self.e = psi * self.e + (1.0 - psi) * beta;
    }
}

/// An observation of `family` with linear predictor `eta` (identity for gaussian,
/// whose noise is already in `eta`; `precision` is the beta family's `phi`).
pub fn draw(
    family: Family,
    trials: Option<u32>,
    precision: f64,
    eta: f64,
    rng: &mut rand_chacha::ChaCha20Rng,
) -> f64 {
    use rand_distr::{Binomial, Distribution, Poisson};
    let p = 1.0 / (1.0 + (-eta).exp());
    match family {
        Family::Gaussian => eta,
        Family::Beta => {
            let mu = p.clamp(1e-9, 1.0 - 1e-9);
            // Keep draws off exact 0 and 1, which the beta density excludes.
            rand_distr::Beta::new(mu * precision, (1.0 - mu) * precision)
                .map_or(mu, |d| d.sample(rng))
                .clamp(1e-9, 1.0 - 1e-9)
        }
        Family::Poisson => Poisson::new(eta.exp().clamp(1e-9, 1e6)).map_or(0.0, |d| d.sample(rng)),
        Family::Bernoulli => f64::from(u8::from(rand::RngExt::random::<f64>(rng) < p)),
        Family::Binomial => {
            Binomial::new(u64::from(trials.unwrap_or(1)), p).map_or(0.0, |d| d.sample(rng) as f64)
        }
    }
}

/// A two-arm daily series of `days` days in weekly periods (AB BA ... by
/// counterbalanced pairs), simulated from the model with effect `beta`.
pub fn two_arm_series(days: usize, beta: f64, seed: u64) -> Series {
    let arms: Vec<usize> = (0..days).map(|d| (d / 7 + d / 14) % 2).collect();
    let params = ModelParams {
        mu: 5.0,
        beta: vec![0.0, beta],
        lambda: 1.0 / 4.0,
        sigma_x: 0.8 * 0.5f64.sqrt(),
        kappa: std::f64::consts::LN_2 / 1.5,
        sigma_y: 0.9,
    };
    daily_series(&simulate_daily(&params, &arms, 0.875, seed), &arms)
}

/// A two-arm series of `days` days of `family` (`statistics.md` §2) like
/// a real crossover: 14-day periods, each block's order by a fair coin, 8%
/// of days missing at random; drift sd 0.4 with a 5-day correlation time,
/// a 3-day onset/washout half-life, and per family a baseline and effect
/// on the link scale (poisson ln 1.5 and -0.5, bernoulli logit 0.3 and
/// -0.8, binomial of 7 logit 0.4 and 0.6, beta logit 0.85 and 0.3 with
/// precision 30). The check series of the engine's Monte Carlo tests.
pub fn family_series(family: Family, days: usize, seed: u64) -> Series {
    use rand::RngExt;
    let logit = |p: f64| (p / (1.0 - p)).ln();
    let (mu, beta, trials) = match family {
        Family::Gaussian => (0.0, 0.5, None),
        Family::Poisson => (1.5f64.ln(), -0.5, None),
        Family::Bernoulli => (logit(0.3), -0.8, None),
        Family::Binomial => (logit(0.4), 0.6, Some(7)),
        Family::Beta => (logit(0.85), 0.3, None),
    };
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut arms = Vec::with_capacity(days + 28);
    while arms.len() < days {
        let order = if rng.random::<f64>() < 0.5 {
            [0, 1]
        } else {
            [1, 0]
        };
        for arm in order {
            arms.extend(std::iter::repeat_n(arm, 14));
        }
    }
    arms.truncate(days);
    let params = ModelParams {
        mu,
        beta: vec![0.0, beta],
        lambda: 1.0 / 5.0,
        sigma_x: 0.4 * (2.0f64 / 5.0).sqrt(),
        kappa: std::f64::consts::LN_2 / 3.0,
        sigma_y: if family == Family::Gaussian { 0.5 } else { 0.0 },
    };
    let mut points = simulate_daily(&params, &arms, 0.5, rng.random());
    for p in points.iter_mut() {
        p.y = draw(family, trials, 30.0, p.y, &mut rng);
    }
    let kept: Vec<SimulatedPoint> = points
        .into_iter()
        .filter(|_| rng.random::<f64>() >= 0.08)
        .collect();
    daily_series(&kept, &arms)
}

/// A two-arm series from simulated daily points, the arm switching at the
/// start of each day whose arm differs from the day before.
pub fn daily_series(pts: &[SimulatedPoint], arms: &[usize]) -> Series {
    let mut starts = vec![0.0];
    let mut path_arms = vec![arms[0]];
    for d in 1..arms.len() {
        if arms[d] != arms[d - 1] {
            starts.push(d as f64);
            path_arms.push(arms[d]);
        }
    }
    Series {
        t: pts.iter().map(|p| p.t).collect(),
        y: pts.iter().map(|p| p.y).collect(),
        path: ArmPath {
            starts,
            arms: path_arms,
        },
        n_arms: 2,
        comparator: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> ModelParams {
        ModelParams {
            mu: 5.0,
            beta: vec![0.0, -2.0],
            lambda: 1.0 / 3.0,
            sigma_x: 0.8,
            kappa: std::f64::consts::LN_2 / 1.0,
            sigma_y: 0.5,
        }
    }

    #[test]
    fn deterministic_for_a_seed() {
        let arms: Vec<usize> = (0..50).map(|d| (d / 7) % 2).collect();
        assert_eq!(
            simulate_daily(&params(), &arms, 0.8, 3),
            simulate_daily(&params(), &arms, 0.8, 3)
        );
        assert_ne!(
            simulate_daily(&params(), &arms, 0.8, 3),
            simulate_daily(&params(), &arms, 0.8, 4)
        );
    }

    #[test]
    fn effect_relaxes_with_the_half_life() {
        // A long run on arm 1: after one half-life from a switch, e is half way.
        let mut arms = vec![0; 10];
        arms.extend(vec![1; 30]);
        let pts = simulate_daily(&params(), &arms, 0.0, 1);
        // Day 10 at offset 0: the switch just happened, e = 0; day 11: one half-life.
        assert!((pts[10].effect - 0.0).abs() < 1e-12);
        assert!((pts[11].effect - (-1.0)).abs() < 1e-12);
        assert!((pts[39].effect - (-2.0)).abs() < 1e-6);
    }

    #[test]
    fn drift_has_the_stationary_variance() {
        let p = ModelParams {
            sigma_y: 0.0,
            beta: vec![0.0],
            ..params()
        };
        let arms = vec![0; 200_000];
        let pts = simulate_daily(&p, &arms, 0.5, 9);
        let n = pts.len() as f64;
        let mean = pts.iter().map(|q| q.y).sum::<f64>() / n;
        let var = pts.iter().map(|q| (q.y - mean).powi(2)).sum::<f64>() / n;
        let target = p.sigma_x.powi(2) / (2.0 * p.lambda);
        // Autocorrelated draws (tau = 3 days): effective n ~ n / (2*3) ~ 33,000;
        // the relative sd of a variance estimate is sqrt(2/n_eff) ~ 0.8%; allow 4%.
        assert!((var / target - 1.0).abs() < 0.04, "{var} vs {target}");
    }
}

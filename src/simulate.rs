//! Simulating data from the model (`statistics.md` §2).
//!
//! The same OU drift plus onset/washout dynamics the engine fits, simulated
//! exactly over any gap, with a seeded ChaCha20 generator. The demo
//! participant's data come from here; the trial simulator will too.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};

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
    let mut z = || -> f64 { StandardNormal.sample(&mut rng) };
    let stationary_sd = params.sigma_x / (2.0 * params.lambda).sqrt();
    let mut x = stationary_sd * z();
    let mut e = 0.0;
    let mut out = Vec::with_capacity(arms.len());
    let advance = |x: &mut f64, e: &mut f64, d: f64, arm: usize, z: &mut dyn FnMut() -> f64| {
        if d <= 0.0 {
            return;
        }
        let rho = (-params.lambda * d).exp();
        *x = rho * *x + stationary_sd * (1.0 - rho * rho).sqrt() * z();
        let psi = (-params.kappa * d).exp();
        *e = psi * *e + (1.0 - psi) * params.beta[arm];
    };
    for (day, &arm) in arms.iter().enumerate() {
        // From the start of the day (arm switch) to the observation.
        advance(&mut x, &mut e, obs_offset, arm, &mut z);
        let noise = params.sigma_y * z();
        out.push(SimulatedPoint {
            t: day as f64 + obs_offset,
            arm,
            effect: e,
            y: params.mu + x + e + noise,
        });
        // From the observation to the end of the day.
        advance(&mut x, &mut e, 1.0 - obs_offset, arm, &mut z);
    }
    out
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

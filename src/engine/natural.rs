//! Effects in the person's own units (`statistics.md` §3: the log and logit
//! links). A poisson effect `beta` is a log rate ratio and a logit one a
//! log odds ratio: exact, but not what a person asks ("does magnesium cut
//! my migraine days?"). Beside it, each effect is given as the ratio
//! itself, `e^beta`, and as a difference on the outcome's own scale: events
//! or yes-days per [`PER_DAYS`] days (poisson, bernoulli), or percentage
//! points (binomial, beta), for a typical day of the person's own drift.
//!
//! Everything is computed from the posterior, never by plugging in its
//! mean: the ratio's mean is the mixture's `sum w_k exp(m_k + s_k^2 / 2)`
//! and its quantiles are `e^` the effect's (exactly); the difference's
//! mean and interval come from seeded draws of `(mu, beta, drift sd)` from
//! the mixture, each turned into
//!
//! - poisson: `PER_DAYS e^(mu + v/2) (e^beta - 1)`, since `E[e^(mu + beta +
//!   x)] = e^(mu + beta + v/2)` for a stationary drift `x ~ N(0, v)`;
//! - logit links: `E[sigmoid(mu + beta + x)] - E[sigmoid(mu + x)]`, by
//!   Gauss–Hermite quadrature over `x`, times `PER_DAYS` (bernoulli) or 100
//!   (percentage points).

use std::sync::OnceLock;

use nalgebra::{DMatrix, SymmetricEigen};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::engine::inference::{ComponentPicker, Marginal, Mixture};
use crate::engine::spec::Family;

/// The period a count or yes/no difference is given over: a month.
pub const PER_DAYS: f64 = 30.0;

/// Draws behind a difference's mean, interval and probabilities: a
/// probability's own Monte Carlo sd is then at most 0.004, well within the
/// fit's 0.01 tolerance.
const DRAWS: usize = 16_000;

/// One effect in the person's units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NaturalEffect {
    /// What `e^beta` is: "rate ratio" or "odds ratio".
    pub ratio_name: String,
    /// Posterior mean of `e^beta`.
    pub ratio_mean: f64,
    /// Its median and 90% central interval.
    pub ratio_median: f64,
    /// 90% central interval of the ratio.
    pub ratio_ci90: [f64; 2],
    /// The unit of the difference: "per 30 days" or "percentage points".
    pub difference_unit: String,
    /// Posterior mean of the difference (arm minus comparator).
    pub difference_mean: f64,
    /// Its 90% central interval.
    pub difference_ci90: [f64; 2],
    /// The Monte Carlo sd of `difference_mean` from the draws.
    pub difference_mc_sd: f64,
}

impl NaturalEffect {
    /// One sentence: the ratio and the difference, each with its 90%
    /// interval ("odds ratio 0.91 (90% interval 0.26 to 3.59); -0.31
    /// yes-days per 30 days (90% interval -5.85 to +5.89)").
    pub fn describe(&self) -> String {
        format!(
            "{} {:.2} (90% interval {:.2} to {:.2}); {:+.2} {} (90% interval {:+.2} to {:+.2})",
            self.ratio_name,
            self.ratio_median,
            self.ratio_ci90[0],
            self.ratio_ci90[1],
            self.difference_mean,
            self.difference_unit,
            self.difference_ci90[0],
            self.difference_ci90[1]
        )
    }
}

/// The natural-scale view of effects `1..=n_effects` of `mix` for `family`
/// (empty for gaussian, whose effects are already in outcome units);
/// `seed` makes the draws repeatable.
pub fn natural_effects(
    mix: &Mixture,
    family: Family,
    n_effects: usize,
    seed: u64,
) -> Vec<NaturalEffect> {
    if family == Family::Gaussian || mix.components.is_empty() {
        return Vec::new();
    }
    let ratio_name = if family == Family::Poisson {
        "rate ratio"
    } else {
        "odds ratio"
    };
    let difference_unit = difference_unit(family);
    (1..=n_effects)
        .map(|c| {
            let m = Marginal::of(mix, c);
            let ratio_mean = mix
                .weights
                .iter()
                .zip(&mix.components)
                .map(|(w, e)| {
                    let (mean, var) = (e.filter.b_mean[c], e.filter.b_cov[(c, c)].max(0.0));
                    w * (mean + 0.5 * var).exp()
                })
                .sum();
            let mut differences = difference_draws(mix, family, c, seed);
            differences.sort_by(f64::total_cmp);
            let n = differences.len() as f64;
            let mean = differences.iter().sum::<f64>() / n;
            let var = differences.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1.0);
            let at = |p: f64| differences[((p * n) as usize).min(differences.len() - 1)];
            NaturalEffect {
                ratio_name: ratio_name.to_string(),
                ratio_mean,
                ratio_median: m.quantile(0.5).exp(),
                ratio_ci90: [m.quantile(0.05).exp(), m.quantile(0.95).exp()],
                difference_unit: difference_unit.clone(),
                difference_mean: mean,
                difference_ci90: [at(0.05), at(0.95)],
                difference_mc_sd: (var / n).sqrt(),
            }
        })
        .collect()
}

/// The unit of a family's natural-scale difference.
pub fn difference_unit(family: Family) -> String {
    match family {
        Family::Gaussian => "outcome units".to_string(),
        Family::Poisson => format!("per {PER_DAYS} days"),
        Family::Bernoulli => format!("yes-days per {PER_DAYS} days"),
        Family::Binomial | Family::Beta => "percentage points".to_string(),
    }
}

/// `P(sign * difference >= k)` for effect `c`: the probability that the
/// arm is better than the comparator by at least `k` in the outcome's own
/// units, from the same draws as [`natural_effects`], and the Monte Carlo
/// sd of that share of draws.
pub fn prob_better_by(
    mix: &Mixture,
    family: Family,
    c: usize,
    sign: f64,
    k: f64,
    seed: u64,
) -> (f64, f64) {
    let draws = difference_draws(mix, family, c, seed);
    let n = draws.len() as f64;
    let p = draws.iter().filter(|d| sign * **d >= k).count() as f64 / n;
    (p, (p * (1.0 - p) / n).sqrt())
}

/// [`DRAWS`] draws of effect `c`'s natural-scale difference: a component by
/// its weight, then `(mu, beta_c)` from its joint normal, and the drift's
/// stationary variance from its `theta`.
fn difference_draws(mix: &Mixture, family: Family, c: usize, seed: u64) -> Vec<f64> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x6e61_7475_7261_6c00);
    let picker = ComponentPicker::of(mix);
    // The Cholesky factor of each component's (mu, beta_c) covariance.
    let factors: Vec<[f64; 3]> = mix
        .components
        .iter()
        .map(|e| {
            let (a, b, d) = (
                e.filter.b_cov[(0, 0)].max(0.0),
                e.filter.b_cov[(0, c)],
                e.filter.b_cov[(c, c)].max(0.0),
            );
            let l11 = a.sqrt();
            let l21 = if l11 > 0.0 { b / l11 } else { 0.0 };
            [l11, l21, (d - l21 * l21).max(0.0).sqrt()]
        })
        .collect();
    (0..DRAWS)
        .map(|_| {
            let k = picker.pick(&mut rng);
            let e = &mix.components[k];
            let [l11, l21, l22] = factors[k];
            let (z1, z2): (f64, f64) = (
                StandardNormal.sample(&mut rng),
                StandardNormal.sample(&mut rng),
            );
            let mu = e.filter.b_mean[0] + l11 * z1;
            let beta = e.filter.b_mean[c] + l21 * z1 + l22 * z2;
            let v = (2.0 * e.theta[1]).exp();
            difference(family, mu, beta, v)
        })
        .collect()
}

/// The difference arm minus comparator on the natural scale for baseline
/// `mu`, effect `beta` and drift variance `v` (module docs).
pub fn difference(family: Family, mu: f64, beta: f64, v: f64) -> f64 {
    match family {
        Family::Gaussian => beta,
        Family::Poisson => PER_DAYS * (mu + 0.5 * v).exp() * beta.exp_m1(),
        Family::Bernoulli => PER_DAYS * (mean_sigmoid(mu + beta, v) - mean_sigmoid(mu, v)),
        Family::Binomial | Family::Beta => {
            100.0 * (mean_sigmoid(mu + beta, v) - mean_sigmoid(mu, v))
        }
    }
}

/// The effect `beta` whose [`difference`] is `target` for baseline `mu`
/// and drift variance `v`: the inverse the simulator needs to set a
/// condition's true effect from a MID stated in the outcome's own units.
/// Poisson in closed form, `ln(1 + target / (PER_DAYS e^(mu + v/2)))`; the
/// logit links by bisection, since the difference rises with `beta`. `None`
/// where no effect reaches `target` (a drop larger than the baseline itself,
/// or past the scale's end).
pub fn beta_for_difference(family: Family, mu: f64, target: f64, v: f64) -> Option<f64> {
    match family {
        Family::Gaussian => Some(target),
        Family::Poisson => {
            let ratio = 1.0 + target / (PER_DAYS * (mu + 0.5 * v).exp());
            (ratio > 0.0 && ratio.is_finite()).then(|| ratio.ln())
        }
        Family::Bernoulli | Family::Binomial | Family::Beta => {
            let (mut lo, mut hi) = (-40.0, 40.0);
            let gap = |b: f64| difference(family, mu, b, v) - target;
            if gap(lo) >= 0.0 || gap(hi) <= 0.0 {
                return None;
            }
            // 80 halvings of an interval of 80: far below f64's resolution.
            for _ in 0..80 {
                let mid = 0.5 * (lo + hi);
                if gap(mid) < 0.0 {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            Some(0.5 * (lo + hi))
        }
    }
}

/// `E[sigmoid(a + x)]` for `x ~ N(0, v)`, by 24-point Gauss–Hermite quadrature.
fn mean_sigmoid(a: f64, v: f64) -> f64 {
    let sd = v.max(0.0).sqrt();
    hermite()
        .iter()
        .map(|(x, w)| w / (1.0 + (-(a + sd * x)).exp()))
        .sum()
}

/// Nodes and weights of the 24-point Gauss–Hermite rule for the standard
/// normal (probabilists' Hermite), by the Golub–Welsch eigenvalue method:
/// the Jacobi matrix has `sqrt(k)` beside its zero diagonal; its
/// eigenvalues are the nodes and the squared first components of its
/// eigenvectors the weights.
fn hermite() -> &'static [(f64, f64)] {
    static RULE: OnceLock<Vec<(f64, f64)>> = OnceLock::new();
    RULE.get_or_init(|| {
        let n = 24;
        let mut jacobi = DMatrix::<f64>::zeros(n, n);
        for k in 1..n {
            let b = (k as f64).sqrt();
            jacobi[(k - 1, k)] = b;
            jacobi[(k, k - 1)] = b;
        }
        let eig = SymmetricEigen::new(jacobi);
        (0..n)
            .map(|i| (eig.eigenvalues[i], eig.eigenvectors[(0, i)].powi(2)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_for_difference_inverts_difference() {
        for family in [
            Family::Poisson,
            Family::Bernoulli,
            Family::Binomial,
            Family::Beta,
        ] {
            for (mu, beta, v) in [(-1.1, -0.4, 0.0), (0.7, 0.3, 0.5), (-2.0, 1.2, 2.0)] {
                let d = difference(family, mu, beta, v);
                let back = beta_for_difference(family, mu, d, v)
                    .unwrap_or_else(|| panic!("{family:?}: {d} should be reachable"));
                assert!((back - beta).abs() < 1e-9, "{family:?}: {back} vs {beta}");
            }
        }
        // A fall of 40 events a month from a baseline of e^0 a day (30 a
        // month) cannot happen; nor can 60 percentage points up from 50%.
        assert_eq!(beta_for_difference(Family::Poisson, 0.0, -40.0, 0.0), None);
        assert_eq!(beta_for_difference(Family::Beta, 0.0, 60.0, 0.0), None);
        // The inverse at the difference's own sign: zero is no effect.
        assert_eq!(
            beta_for_difference(Family::Bernoulli, -1.0, 0.0, 0.3)
                .map(f64::abs)
                .map(|b| b < 1e-12),
            Some(true)
        );
    }

    #[test]
    fn hermite_rule_integrates_normal_moments() {
        let moment = |p: i32| hermite().iter().map(|(x, w)| w * x.powi(p)).sum::<f64>();
        assert!((moment(0) - 1.0).abs() < 1e-12);
        assert!(moment(1).abs() < 1e-12);
        assert!((moment(2) - 1.0).abs() < 1e-10);
        assert!((moment(4) - 3.0).abs() < 1e-9);
        // E[sigmoid(x)] = 1/2 by symmetry, for any spread.
        assert!((mean_sigmoid(0.0, 2.3) - 0.5).abs() < 1e-12);
    }
}

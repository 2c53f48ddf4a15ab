//! Non-Gaussian families (`statistics.md` §3): poisson (log link),
//! bernoulli and binomial (logit link).
//!
//! The latent path is still linear-Gaussian, so for fixed hyperparameters
//! the posterior of `(b, x)` is approximated by a Gaussian model with
//! pseudo-observations (the Laplace approximation, found by iterated Kalman
//! smoothing: Newton steps on the joint mode), and then corrected by
//! importance sampling from that Gaussian (the approach of the bssm R
//! package): with `(b, x)_s` drawn from the approximating posterior and
//! `log w_s = sum_i [log p(y_i | eta_si) - log N(y~_i; eta_si, H_i)]`,
//! `p(y | phi) = p_g(y~ | phi) E_g[w]` exactly, so the likelihood estimate is
//! unbiased and the weighted draws target the exact posterior of `b`.
//! Draws come in antithetic pairs. The correction's Monte Carlo error is
//! checked by simulation-based calibration (`bench sbc`), not assumed.

use nalgebra::{DMatrix, DVector};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::inference::{
    Eval, Evaluator, Priors, Theta, hyper_of, log_prior, prior_center, theta_in_range,
};
use crate::model::{
    FilterOutput, FilterPlan, Hyper, MAX_ARMS, ModelError, Series, augmented_filter_planned,
    design_rows, smoothed_drift_with,
};

/// A non-Gaussian observation model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Likelihood {
    /// Counts, log link.
    Poisson,
    /// 0/1, logit link.
    Bernoulli,
    /// k of `n`, logit link.
    Binomial(u32),
    /// Proportions in (0, 1), logit link of the mean, with precision `phi`:
    /// `y ~ Beta(mu phi, (1 - mu) phi)`.
    Beta(f64),
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `log(1 + e^x)` without overflow, as `max(x, 0) + ln(1 + e^-|x|)`. The
/// logarithm of `1 + u` (u in (0, 1]) rather than `ln_1p(u)`: it is several
/// times cheaper, and its absolute error, at most 2.3e-16, is all a sum of
/// log-likelihood terms sees.
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (1.0 + (-x.abs()).exp()).ln()
}

/// What `log p(y | eta)` needs of one observation that does not depend on
/// `eta`: worked out once per observation, not once per importance draw.
#[derive(Debug, Clone, Copy)]
struct ObsTerms {
    /// The terms free of `eta` (normalising constants).
    constant: f64,
    /// Beta: `ln y` and `ln(1 - y)`.
    ln_y: f64,
    ln_1m_y: f64,
}

impl Likelihood {
    /// `log p(y | eta)`, exact (normalising constants included).
    pub fn log_density(self, y: f64, eta: f64) -> f64 {
        let terms = self.obs_terms(y);
        self.log_kernel(y, eta, &terms) + terms.constant
    }

    /// The terms of `log p(y | eta)` free of `eta`, for [`Self::log_kernel`].
    fn obs_terms(self, y: f64) -> ObsTerms {
        use statrs::function::gamma::ln_gamma;
        let mut terms = ObsTerms {
            constant: 0.0,
            ln_y: 0.0,
            ln_1m_y: 0.0,
        };
        match self {
            Likelihood::Poisson => terms.constant = -ln_gamma(y + 1.0),
            Likelihood::Bernoulli => {}
            Likelihood::Binomial(n) => {
                terms.constant = statrs::function::factorial::ln_binomial(u64::from(n), y as u64)
            }
            Likelihood::Beta(phi) => {
                terms.constant = ln_gamma(phi);
                terms.ln_y = y.ln();
                terms.ln_1m_y = (1.0 - y).ln();
            }
        }
        terms
    }

    /// `sum_i log p(y_i | eta_i)` without the `eta`-free terms. For the
    /// logit families the softplus logarithms are taken of running products
    /// of `1 + e^-|eta|` (each factor in (1, 2], so 512 of them stay below
    /// 1e155): one logarithm per 512 observations instead of one each.
    fn sum_log_kernel(self, y: &[f64], eta: &[f64], terms: &[ObsTerms]) -> f64 {
        let n = match self {
            Likelihood::Bernoulli => 1.0,
            Likelihood::Binomial(n) => f64::from(n),
            _ => {
                return y
                    .iter()
                    .zip(eta)
                    .zip(terms)
                    .map(|((&y, &e), t)| self.log_kernel(y, e, t))
                    .sum();
            }
        };
        let mut sum = 0.0;
        let mut product = 1.0;
        for (i, (&y, &e)) in y.iter().zip(eta).enumerate() {
            // y eta - n softplus(eta), softplus(eta) = max(eta, 0) + ln(1 + e^-|eta|).
            sum += y * e - n * e.max(0.0);
            product *= 1.0 + (-e.abs()).exp();
            if i % 512 == 511 {
                sum -= n * product.ln();
                product = 1.0;
            }
        }
        sum - n * product.ln()
    }

    /// `log p(y | eta)` without its `eta`-free terms `terms.constant`.
    fn log_kernel(self, y: f64, eta: f64, terms: &ObsTerms) -> f64 {
        match self {
            Likelihood::Poisson => y * eta - eta.exp(),
            Likelihood::Bernoulli => y * eta - softplus(eta),
            Likelihood::Beta(phi) => {
                let mu = sigmoid(eta).clamp(1e-12, 1.0 - 1e-12);
                let (a, b) = (mu * phi, (1.0 - mu) * phi);
                use statrs::function::gamma::ln_gamma;
                -ln_gamma(a) - ln_gamma(b) + (a - 1.0) * terms.ln_y + (b - 1.0) * terms.ln_1m_y
            }
            Likelihood::Binomial(n) => y * eta - f64::from(n) * softplus(eta),
        }
    }

    /// First and second derivatives of `log p(y | eta)` in `eta`.
    fn derivatives(self, y: f64, eta: f64) -> (f64, f64) {
        match self {
            Likelihood::Poisson => {
                let m = eta.exp();
                (y - m, -m)
            }
            Likelihood::Bernoulli => {
                let p = sigmoid(eta);
                (y - p, -p * (1.0 - p))
            }
            Likelihood::Binomial(n) => {
                let n = f64::from(n);
                let p = sigmoid(eta);
                (y - n * p, -n * p * (1.0 - p))
            }
            Likelihood::Beta(phi) => {
                // Score, and minus the expected information (Fisher scoring):
                // always negative, so the pseudo-noise is always positive.
                use statrs::function::gamma::digamma;
                let mu = sigmoid(eta).clamp(1e-12, 1.0 - 1e-12);
                let (a, b) = (mu * phi, (1.0 - mu) * phi);
                let dmu = mu * (1.0 - mu);
                let score = phi * dmu * ((y / (1.0 - y)).ln() - (digamma(a) - digamma(b)));
                let info = phi * phi * dmu * dmu * (trigamma(a) + trigamma(b));
                (score, -info)
            }
        }
    }

    /// Checks that every value can come from this family.
    pub fn check(self, y: &[f64]) -> Result<(), ModelError> {
        for (i, &v) in y.iter().enumerate() {
            let ok = match self {
                Likelihood::Poisson => v >= 0.0 && v.fract() == 0.0,
                Likelihood::Bernoulli => v == 0.0 || v == 1.0,
                Likelihood::Binomial(n) => v >= 0.0 && v.fract() == 0.0 && v <= f64::from(n),
                Likelihood::Beta(_) => v > 0.0 && v < 1.0,
            };
            if !ok {
                let what = match self {
                    Likelihood::Poisson => "a count (0, 1, 2, ...)".to_string(),
                    Likelihood::Bernoulli => "0 or 1".to_string(),
                    Likelihood::Binomial(n) => format!("a whole number from 0 to {n}"),
                    Likelihood::Beta(_) => "a proportion strictly between 0 and 1".to_string(),
                };
                return Err(ModelError::Input(format!(
                    "observation {} is {v}, but the family needs {what}",
                    i + 1
                )));
            }
        }
        Ok(())
    }

    /// The link of the data's mean, where the baseline prior is centred (§4):
    /// `log(mean + 0.5)` for counts, the logit of the mean proportion clipped to [0.01, 0.99].
    pub fn link_of_mean(self, y: &[f64]) -> f64 {
        let mean = y.iter().sum::<f64>() / y.len().max(1) as f64;
        match self {
            Likelihood::Poisson => (mean + 0.5).ln(),
            Likelihood::Bernoulli => logit(mean.clamp(0.01, 0.99)),
            Likelihood::Binomial(n) => logit((mean / f64::from(n.max(1))).clamp(0.01, 0.99)),
            Likelihood::Beta(_) => logit(mean.clamp(0.01, 0.99)),
        }
    }
}

impl Likelihood {
    /// The link of one observation, nudged off the boundary: where Newton starts.
    fn link_of_value(self, y: f64) -> f64 {
        match self {
            Likelihood::Poisson => (y + 0.5).ln(),
            Likelihood::Bernoulli => logit((y + 0.5) / 2.0),
            Likelihood::Binomial(n) => logit((y + 0.5) / (f64::from(n) + 1.0)),
            Likelihood::Beta(_) => logit(y.clamp(0.01, 0.99)),
        }
    }
}

/// The trigamma function `psi_1(x)`, `x > 0`: the recurrence
/// `psi_1(x) = psi_1(x + 1) + 1/x^2` up to `x >= 10`, then the asymptotic series
/// `1/x + 1/(2x^2) + 1/(6x^3) - 1/(30x^5) + 1/(42x^7) - 1/(30x^9)` (error < 1e-12).
pub fn trigamma(mut x: f64) -> f64 {
    let mut acc = 0.0;
    while x < 10.0 {
        acc += 1.0 / (x * x);
        x += 1.0;
    }
    let x2 = 1.0 / (x * x);
    acc + 1.0 / x
        + x2 / 2.0
        + x2 / x * (1.0 / 6.0 - x2 * (1.0 / 30.0 - x2 * (1.0 / 42.0 - x2 / 30.0)))
}

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

/// The Gaussian approximating model at the joint mode.
#[derive(Debug, Clone)]
pub struct Approximation {
    /// Pseudo-observations `y~`.
    pub pseudo: Vec<f64>,
    /// Their noise variances `H`.
    pub noise: Vec<f64>,
    /// The mode of the linear predictor.
    pub eta: Vec<f64>,
    /// The approximating model's filter output (marginal and `b` posterior).
    pub filter: FilterOutput,
}

/// Finds the Laplace approximation by iterated Kalman smoothing: at the
/// current `eta`, `H_i = -1 / l''(eta_i)`, `y~_i = eta_i + H_i l'(eta_i)`; the
/// Gaussian model's posterior mean of `X b + x` is the next `eta`.
pub fn laplace(
    series: &Series,
    lik: Likelihood,
    h: &Hyper,
    priors: &Priors,
) -> Result<Approximation, ModelError> {
    let n = series.y.len();
    let rows = design_rows(series, h.kappa);
    let p = series.n_static();
    // Start at each observation's own link value (as GLM fitting does), not
    // at a common level: fewer Newton steps, and no overshoot on large counts.
    let mut eta: Vec<f64> = series.y.iter().map(|&y| lik.link_of_value(y)).collect();
    let mut pseudo = vec![0.0; n];
    let mut noise = vec![0.0; n];
    let mut damping = 1.0;
    let mut last_change = f64::INFINITY;
    let plan = FilterPlan::of(series);
    for _ in 0..200 {
        for i in 0..n {
            let (d1, d2) = lik.derivatives(series.y[i], eta[i]);
            let var = (-1.0 / d2).clamp(1e-8, 1e8);
            noise[i] = var;
            pseudo[i] = eta[i] + var * d1;
        }
        let filter =
            augmented_filter_planned(series, &plan, &pseudo, h, &priors.statics, Some(&noise))?;
        let drift = smoothed_drift_with(series, &pseudo, h, &filter.b_mean, Some(&noise));
        let mut change: f64 = 0.0;
        for i in 0..n {
            let fixed: f64 = (0..p).map(|c| rows[i][c] * filter.b_mean[c]).sum();
            let step = fixed + drift[i] - eta[i];
            change = change.max(step.abs());
            eta[i] += damping * step;
        }
        if change < 1e-6 {
            return Ok(Approximation {
                pseudo,
                noise,
                eta,
                filter,
            });
        }
        // Newton steps that stop shrinking are damped (halved each time).
        if change >= last_change {
            damping = (damping * 0.5_f64).max(1.0 / 64.0);
        }
        last_change = change;
    }
    Err(ModelError::Input(
        "the Laplace approximation did not converge".into(),
    ))
}

/// Forward filter of the approximating model's drift on `r = y~ - X b`,
/// stored so that many `b` can share it: the filtered means are linear in
/// `r`, so they are kept per column (outcome and each regressor).
struct Forward {
    means: Vec<[f64; MAX_ARMS + 1]>,
    p_filt: Vec<f64>,
    p_pred: Vec<f64>,
    rho: Vec<f64>,
    rows: Vec<[f64; MAX_ARMS]>,
}

fn forward(series: &Series, approx: &Approximation, h: &Hyper) -> Forward {
    let n = series.t.len();
    let p = series.n_static();
    let rows = design_rows(series, h.kappa);
    let var_x = h.drift_sd * h.drift_sd;
    let mut means = vec![[0.0; MAX_ARMS + 1]; n];
    let (mut p_filt, mut p_pred, mut rho) = (vec![0.0; n], vec![0.0; n], vec![1.0; n]);
    let mut a = [0.0; MAX_ARMS + 1];
    let mut pvar = var_x;
    let mut t_prev = 0.0;
    for i in 0..n {
        let r = (-h.lambda * (series.t[i] - t_prev)).exp();
        t_prev = series.t[i];
        rho[i] = r;
        pvar = r * r * pvar + var_x * (1.0 - r * r);
        p_pred[i] = pvar;
        let gain = pvar / (pvar + approx.noise[i]);
        for c in 0..=p {
            let obs = if c == 0 {
                approx.pseudo[i]
            } else {
                rows[i][c - 1]
            };
            a[c] *= r;
            a[c] += gain * (obs - a[c]);
        }
        pvar *= 1.0 - gain;
        p_filt[i] = pvar;
        means[i] = a;
    }
    Forward {
        means,
        p_filt,
        p_pred,
        rho,
        rows,
    }
}

/// One draw of the drift given `b`, by backward sampling, from standard
/// normals `z` (negate them for the antithetic draw).
fn backward_sample(f: &Forward, b: &DVector<f64>, z: &[f64], out: &mut [f64]) {
    let n = f.means.len();
    let p = b.len();
    let mean_at =
        |i: usize| -> f64 { f.means[i][0] - (0..p).map(|c| f.means[i][c + 1] * b[c]).sum::<f64>() };
    let mut next = mean_at(n - 1) + f.p_filt[n - 1].max(0.0).sqrt() * z[n - 1];
    out[n - 1] = next;
    for i in (0..n - 1).rev() {
        let m = mean_at(i);
        let j = f.p_filt[i] * f.rho[i + 1] / f.p_pred[i + 1];
        let mean = m + j * (next - f.rho[i + 1] * m);
        let var = (f.p_filt[i] * (1.0 - j * f.rho[i + 1])).max(0.0);
        next = mean + var.sqrt() * z[i];
        out[i] = next;
    }
}

/// The importance-sampling correction at one `phi`: returns the unbiased
/// log-likelihood estimate and the weighted mean and covariance of `b`.
pub fn corrected(
    series: &Series,
    lik: Likelihood,
    h: &Hyper,
    approx: &Approximation,
    pairs: usize,
    seed: u64,
) -> Option<FilterOutput> {
    let n = series.y.len();
    let p = series.n_static();
    let chol = approx.filter.b_cov.clone().cholesky()?.l();
    let fwd = forward(series, approx, h);
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut draws: Vec<(DVector<f64>, f64)> = Vec::with_capacity(2 * pairs);
    let mut x = vec![0.0; n];
    let mut z = vec![0.0; n];
    let mut eta = vec![0.0; n];
    // Every draw's log weight is sum_i [log p(y_i | eta_i) - log g_i(eta_i)];
    // the terms free of eta (the likelihood's constants, the Gaussian's
    // normalisation) are summed once here.
    let terms: Vec<ObsTerms> = series.y.iter().map(|&y| lik.obs_terms(y)).collect();
    let base: f64 = terms
        .iter()
        .zip(&approx.noise)
        .map(|(t, v)| t.constant + 0.5 * (2.0 * std::f64::consts::PI * v).ln())
        .sum();
    for _ in 0..pairs {
        let zb = DVector::from_fn(p, |_, _| -> f64 { StandardNormal.sample(&mut rng) });
        for v in z.iter_mut() {
            *v = StandardNormal.sample(&mut rng);
        }
        for sign in [1.0, -1.0] {
            let b = &approx.filter.b_mean + &chol * (&zb * sign);
            let zs: Vec<f64> = z.iter().map(|v| v * sign).collect();
            backward_sample(&fwd, &b, &zs, &mut x);
            let mut log_w = base;
            for (i, xi) in x.iter().enumerate() {
                eta[i] = (0..p).map(|c| fwd.rows[i][c] * b[c]).sum::<f64>() + xi;
                let d = approx.pseudo[i] - eta[i];
                log_w += 0.5 * d * d / approx.noise[i];
            }
            log_w += lik.sum_log_kernel(&series.y, &eta, &terms);
            draws.push((b, log_w));
        }
    }
    let top = draws.iter().map(|d| d.1).fold(f64::NEG_INFINITY, f64::max);
    if !top.is_finite() {
        return None;
    }
    let weights: Vec<f64> = draws.iter().map(|d| (d.1 - top).exp()).collect();
    let total: f64 = weights.iter().sum();
    let log_lik = approx.filter.log_lik + top + (total / draws.len() as f64).ln();
    let mut mean = DVector::<f64>::zeros(p);
    for ((b, _), w) in draws.iter().zip(&weights) {
        mean += b * (w / total);
    }
    let mut cov = DMatrix::<f64>::zeros(p, p);
    for ((b, _), w) in draws.iter().zip(&weights) {
        let d = b - &mean;
        cov += &d * d.transpose() * (w / total);
    }
    // The weighted covariance around the weighted mean underestimates the
    // spread when few draws carry the weight: divide by 1 - sum w_i^2
    // (normalised weights), the reliability-weights correction, which is
    // n / (n - 1) for equal weights.
    let sum_w2: f64 = weights.iter().map(|w| (w / total).powi(2)).sum();
    cov /= (1.0 - sum_w2).max(1e-3);
    // Few draws can give a covariance that is not positive definite; the
    // Laplace covariance is then the better estimate of the spread.
    let b_cov = if cov.clone().cholesky().is_some() {
        cov
    } else {
        approx.filter.b_cov.clone()
    };
    Some(FilterOutput {
        log_lik,
        b_mean: mean,
        b_cov,
    })
}

/// The evaluator for the non-Gaussian families: Laplace approximation plus
/// importance-sampling correction at each `theta` (three free coordinates:
/// there is no `sigma_y`).
pub struct LaplaceEvaluator<'a> {
    /// The data.
    pub series: &'a Series,
    /// The priors (link scale, `S = 1`).
    pub priors: &'a Priors,
    /// The observation model.
    pub likelihood: Likelihood,
    /// Antithetic pairs of importance draws per point.
    pub pairs: usize,
    /// Seed of the importance draws (the same draws at every point).
    pub seed: u64,
}

impl Evaluator for LaplaceEvaluator<'_> {
    fn dims(&self) -> usize {
        if matches!(self.likelihood, Likelihood::Beta(_)) {
            4
        } else {
            3
        }
    }

    fn start(&self) -> Theta {
        let mut t = prior_center(&self.priors.hyper);
        t[3] = self.priors.hyper.precision_median.ln();
        t
    }

    fn eval(&self, theta: &Theta) -> Option<Eval> {
        let dims = self.dims();
        if !theta_in_range(theta, dims) {
            return None;
        }
        let mut theta = *theta;
        let likelihood = match self.likelihood {
            Likelihood::Beta(_) => Likelihood::Beta(theta[3].exp()),
            other => {
                theta[3] = 0.0;
                other
            }
        };
        let h = hyper_of(&theta);
        let approx = laplace(self.series, likelihood, &h, self.priors).ok()?;
        // Common random numbers: the same standard normals at every point, so
        // the estimate is a smooth function of theta (mode search and
        // curvature by finite differences stay meaningful) and a fit is
        // deterministic for its seed.
        let filter = corrected(self.series, likelihood, &h, &approx, self.pairs, self.seed)?;
        let mut log_post = filter.log_lik + log_prior(&theta, &self.priors.hyper, 3);
        if dims == 4 {
            // phi ~ LogNormal(ln precision_median, precision_log_sd), on ln phi.
            let hp = &self.priors.hyper;
            let z = (theta[3] - hp.precision_median.ln()) / hp.precision_log_sd;
            log_post +=
                -0.5 * z * z - hp.precision_log_sd.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln();
        }
        log_post.is_finite().then_some(Eval {
            theta,
            log_post,
            filter,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivatives_match_finite_differences() {
        for (lik, y) in [
            (Likelihood::Poisson, 3.0),
            (Likelihood::Bernoulli, 1.0),
            (Likelihood::Binomial(7), 2.0),
        ] {
            for eta in [-2.0, 0.3, 1.7] {
                let h = 1e-5;
                let f = |e: f64| lik.log_density(y, e);
                let d1 = (f(eta + h) - f(eta - h)) / (2.0 * h);
                let d2 = (f(eta + h) - 2.0 * f(eta) + f(eta - h)) / (h * h);
                let (a1, a2) = lik.derivatives(y, eta);
                assert!((a1 - d1).abs() < 1e-6, "{lik:?} {eta}");
                assert!((a2 - d2).abs() < 1e-3, "{lik:?} {eta}: {a2} vs {d2}");
            }
        }
        // Densities are normalised.
        let total: f64 = (0..60)
            .map(|k| Likelihood::Poisson.log_density(k as f64, 1.2).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-12);
        let total: f64 = (0..=7)
            .map(|k| Likelihood::Binomial(7).log_density(k as f64, -0.4).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-12);
    }

    #[test]
    fn trigamma_known_values_and_beta_density() {
        let pi2 = std::f64::consts::PI.powi(2);
        assert!((trigamma(1.0) - pi2 / 6.0).abs() < 1e-11);
        assert!((trigamma(0.5) - pi2 / 2.0).abs() < 1e-11);
        assert!((trigamma(10.0) - 0.105_166_335_681_685_5).abs() < 1e-11);
        // The beta density integrates to one (midpoint rule on 20,000 cells).
        let lik = Likelihood::Beta(7.0);
        let n = 20_000;
        let total: f64 = (0..n)
            .map(|i| lik.log_density((i as f64 + 0.5) / n as f64, 0.6).exp() / n as f64)
            .sum();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
        // Its score matches a finite difference.
        let (d1, _) = lik.derivatives(0.3, 0.6);
        let h = 1e-6;
        let fd = (lik.log_density(0.3, 0.6 + h) - lik.log_density(0.3, 0.6 - h)) / (2.0 * h);
        assert!((d1 - fd).abs() < 1e-6, "{d1} vs {fd}");
    }

    #[test]
    fn values_outside_the_family_are_named() {
        let e = Likelihood::Bernoulli
            .check(&[0.0, 1.0, 2.0])
            .unwrap_err()
            .to_string();
        assert!(e.contains("observation 3 is 2"), "{e}");
        assert!(Likelihood::Poisson.check(&[0.0, 1.5]).is_err());
        assert!(Likelihood::Binomial(3).check(&[4.0]).is_err());
    }
}

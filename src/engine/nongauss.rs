//! Non-Gaussian families (`statistics.md` §3): poisson (log link),
//! bernoulli and binomial (logit link), beta (logit link of the mean, with
//! its precision as a fourth hyperparameter).
//!
//! The latent path is still linear-Gaussian, so for fixed hyperparameters
//! the posterior of `(b, x)` is approximated by a Gaussian model with
//! pseudo-observations (the Laplace approximation, found by iterated Kalman
//! smoothing: Newton steps on the joint mode), refitted to the likelihood
//! over its own draws (efficient importance sampling, [`efficient`]), and
//! then corrected by importance sampling from that Gaussian (the approach
//! of the bssm R package): with `(b, x)_s` drawn from the approximating
//! posterior and `log w_s = sum_i [log p(y_i | eta_si) - log N(y~_i; eta_si, H_i)]`,
//! `p(y | phi) = p_g(y~ | phi) E_g[w]` exactly, so the likelihood estimate is
//! unbiased and the weighted draws target the exact posterior of `b`.
//! Draws come in antithetic pairs, independent from one hyperparameter
//! point to the next (so that their errors average out over the grid), and
//! the effects' covariance uses the Gaussian's own as a control variate.
//! Each point keeps its draws' sums pair by pair, from which the fit
//! measures its Monte Carlo error (`mc_error`) and adds draws where that
//! error comes from.
//!
//! The mode search over the hyperparameters uses the Laplace approximation
//! alone (no draws), since it only places the grid; every grid point is
//! corrected.

use nalgebra::DVector;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::engine::inference::{
    Eval, Evaluator, Priors, Theta, hyper_of, log_prior, prior_center, theta_in_range,
};
use crate::engine::mc_error::ImportanceSums;
use crate::engine::model::{
    FilterOutput, FilterPlan, Hyper, MAX_ARMS, ModelError, Series, augmented_filter_planned,
    design_rows, smoothed_drift_planned,
};
use crate::engine::spec::STUDENT_T_DF;
use crate::engine::vecmath;

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
    /// Continuous, identity link, Student-t errors of scale `sigma_y` and
    /// [`STUDENT_T_DF`] degrees of freedom: `y = eta + sigma_y e`.
    StudentT(f64),
}

/// Refuses Student-t noise for data of which one value makes up 4/5 or more
/// (`nu / (nu + 1)`): the tied values' likelihood then grows without bound
/// as the noise scale shrinks (each gives `1/sigma`, each other value only
/// `sigma^nu`), so the posterior piles up at a scale of zero and fits the
/// ties exactly (a rating answered "5" on most days).
fn student_t_ties(y: &[f64]) -> Result<(), ModelError> {
    let mut sorted = y.to_vec();
    sorted.sort_by(f64::total_cmp);
    let Some(ties) = sorted.chunk_by(|a, b| a == b).max_by_key(|run| run.len()) else {
        return Ok(());
    };
    let (most, value) = (ties.len(), ties[0]);
    if (most as f64) * (STUDENT_T_DF + 1.0) >= STUDENT_T_DF * y.len() as f64 {
        return Err(ModelError::Input(format!(
            "{most} of the {} values are {value}: with Student-t noise that many equal values are fitted exactly (the noise scale shrinks to nothing); use normal noise for this outcome",
            y.len()
        )));
    }
    Ok(())
}

/// The Student-t log kernel of each observation into `out`, less its
/// constant: `-(nu + 1)/2 ln(1 + (y - eta)^2 / (nu sigma^2))`, with the
/// branch-free logarithm that vectorises (libm's `log1p` was a quarter of
/// a Student-t fit's time).
fn student_t_kernels_into(y: &[f64], eta: &[f64], sigma: f64, out: &mut Vec<f64>) {
    out.resize(eta.len(), 0.0);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        unsafe { student_t_kernels_avx2(y, eta, sigma, out) };
        return;
    }
    student_t_kernels(y, eta, sigma, out);
}

/// [`student_t_kernels`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn student_t_kernels_avx2(y: &[f64], eta: &[f64], sigma: f64, out: &mut [f64]) {
    student_t_kernels(y, eta, sigma, out);
}

/// See [`student_t_kernels_into`]; inlined into its callers so that it
/// takes their instruction set (the same bits either way).
#[inline(always)]
fn student_t_kernels(y: &[f64], eta: &[f64], sigma: f64, out: &mut [f64]) {
    let nu = STUDENT_T_DF;
    let inv = 1.0 / (nu * sigma * sigma);
    let half = -0.5 * (nu + 1.0);
    for ((o, &y), &e) in out.iter_mut().zip(y).zip(eta) {
        let r = y - e;
        *o = half * vecmath::ln(1.0 + r * r * inv);
    }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// What `log p(y | eta)` needs of the observations that does not depend on
/// `eta`: worked out once per point, not once per importance draw, and kept
/// column by column so that the beta kernels' loop vectorises.
#[derive(Debug, Clone, Default)]
struct ObsTerms {
    /// The sum of the terms free of `eta` (normalising constants).
    constant: f64,
    /// Beta: `ln y_i` and `ln(1 - y_i)`.
    ln_y: Vec<f64>,
    ln_1m_y: Vec<f64>,
}

impl Likelihood {
    /// The likelihood at hyperparameter point `theta`: beta's precision and
    /// Student-t's scale are its fourth coordinate (`ln phi`, `ln sigma_y`);
    /// the other families have no parameter there.
    pub fn at(self, theta: &Theta) -> Likelihood {
        match self {
            Likelihood::Beta(_) => Likelihood::Beta(theta[3].exp()),
            Likelihood::StudentT(_) => Likelihood::StudentT(theta[3].exp()),
            other => other,
        }
    }

    /// The scale of a pseudo-observation's noise variance: 1 on the link
    /// scales, `sigma_y^2` for Student-t, whose `eta` is in the outcome's
    /// units (a step count's variance is in the millions).
    fn variance_unit(self) -> f64 {
        match self {
            Likelihood::StudentT(sigma) => sigma * sigma,
            _ => 1.0,
        }
    }

    /// Whether `theta[3]` is a parameter of this likelihood ([`Self::at`]).
    fn has_fourth(self) -> bool {
        matches!(self, Likelihood::Beta(_) | Likelihood::StudentT(_))
    }

    /// `log p(y | eta)`, exact (normalising constants included).
    pub fn log_density(self, y: f64, eta: f64) -> f64 {
        let terms = self.obs_terms(&[y]);
        self.sum_log_kernel(&[y], &[eta], &terms, &mut Vec::new()) + terms.constant
    }

    /// The terms of `log p(y | eta)` free of `eta`, for [`Self::sum_log_kernel`].
    fn obs_terms(self, y: &[f64]) -> ObsTerms {
        use statrs::function::gamma::ln_gamma;
        let mut terms = ObsTerms::default();
        match self {
            Likelihood::Poisson => terms.constant = y.iter().map(|&y| -ln_gamma(y + 1.0)).sum(),
            Likelihood::Bernoulli => {}
            Likelihood::Binomial(n) => {
                terms.constant = y
                    .iter()
                    .map(|&y| statrs::function::factorial::ln_binomial(u64::from(n), y as u64))
                    .sum()
            }
            Likelihood::StudentT(sigma) => {
                // ln Gamma((nu+1)/2) - ln Gamma(nu/2) - ln(nu pi)/2 - ln sigma.
                let nu = STUDENT_T_DF;
                terms.constant = y.len() as f64
                    * (ln_gamma(0.5 * (nu + 1.0))
                        - ln_gamma(0.5 * nu)
                        - 0.5 * (nu * std::f64::consts::PI).ln()
                        - sigma.ln());
            }
            Likelihood::Beta(phi) => {
                terms.constant = y.len() as f64 * ln_gamma(phi);
                terms.ln_y = y.iter().map(|y| y.ln()).collect();
                terms.ln_1m_y = y.iter().map(|y| (1.0 - y).ln()).collect();
            }
        }
        terms
    }

    /// `sum_i log p(y_i | eta_i)` without the `eta`-free terms
    /// (`scratch` is working space). For the logit families the softplus
    /// logarithms are taken of running products of `1 + e^-|eta|` (each
    /// factor in (1, 2], so 512 of them stay below 1e155): one logarithm per
    /// 512 observations instead of one each.
    fn sum_log_kernel(
        self,
        y: &[f64],
        eta: &[f64],
        terms: &ObsTerms,
        scratch: &mut Vec<f64>,
    ) -> f64 {
        let n = match self {
            Likelihood::Bernoulli => 1.0,
            Likelihood::Binomial(n) => f64::from(n),
            Likelihood::Beta(phi) => {
                return sum_beta_kernels(eta, &terms.ln_y, &terms.ln_1m_y, phi, scratch);
            }
            Likelihood::Poisson => return y.iter().zip(eta).map(|(&y, &e)| y * e - e.exp()).sum(),
            Likelihood::StudentT(sigma) => {
                student_t_kernels_into(y, eta, sigma, scratch);
                return scratch.iter().sum();
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

    /// `log p(y_i | eta_i)` of each observation into `out`, without the
    /// `eta`-free terms.
    fn log_kernels(self, y: &[f64], eta: &[f64], terms: &ObsTerms, out: &mut Vec<f64>) {
        let n = match self {
            Likelihood::Bernoulli => 1.0,
            Likelihood::Binomial(n) => f64::from(n),
            Likelihood::Beta(phi) => {
                return beta_kernels_into(eta, &terms.ln_y, &terms.ln_1m_y, phi, out);
            }
            Likelihood::Poisson => {
                out.clear();
                out.extend(y.iter().zip(eta).map(|(&y, &e)| y * e - e.exp()));
                return;
            }
            Likelihood::StudentT(sigma) => {
                return student_t_kernels_into(y, eta, sigma, out);
            }
        };
        out.resize(eta.len(), 0.0);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            unsafe { logit_kernels_avx2(y, eta, n, out) };
            return;
        }
        logit_kernels(y, eta, n, out);
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
                // The score, and minus the observed information where that is
                // at least a quarter of the expected (Fisher) information,
                // else minus a quarter of the Fisher information: Newton's
                // quadratic convergence where the log density is concave
                // enough, and always a positive pseudo-noise. The max keeps
                // the noise continuous in eta, so the estimate stays smooth
                // in theta.
                let mu = sigmoid(eta).clamp(1e-12, 1.0 - 1e-12);
                let (a, b) = (mu * phi, (1.0 - mu) * phi);
                let dmu = mu * (1.0 - mu);
                // ln(y / (1 - y)) - (psi(a) - psi(b)), with one logarithm.
                let (pa, pb) = (Polygamma::at(a), Polygamma::at(b));
                let residual = (y * pb.shifted / ((1.0 - y) * pa.shifted)).ln()
                    - (pa.digamma_rest - pb.digamma_rest);
                let score = phi * dmu * residual;
                let fisher = phi * phi * dmu * dmu * (pa.trigamma + pb.trigamma);
                let observed = fisher - phi * dmu * (1.0 - 2.0 * mu) * residual;
                (score, -observed.max(0.25 * fisher))
            }
            Likelihood::StudentT(sigma) => {
                // With q = nu s^2 + r^2: the score (nu + 1) r / q and the
                // observed information (nu + 1)(nu s^2 - r^2) / q^2, which
                // turns negative beyond |r| = sqrt(nu) s (the density is not
                // log-concave); floored as beta's is, at a quarter of the
                // Fisher information (nu + 1) / ((nu + 3) s^2).
                let nu = STUDENT_T_DF;
                let r = y - eta;
                let s2 = nu * sigma * sigma;
                let q = s2 + r * r;
                let score = (nu + 1.0) * r / q;
                let observed = (nu + 1.0) * (s2 - r * r) / (q * q);
                let fisher = (nu + 1.0) / ((nu + 3.0) * sigma * sigma);
                (score, -observed.max(0.25 * fisher))
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
                // The kernel's logarithm takes r^2 / sigma^2 as a float.
                Likelihood::StudentT(_) => v.is_finite() && v.abs() < 1e100,
            };
            if !ok {
                let what = match self {
                    Likelihood::Poisson => "a count (0, 1, 2, ...)".to_string(),
                    Likelihood::Bernoulli => "0 or 1".to_string(),
                    Likelihood::Binomial(n) => format!("a whole number from 0 to {n}"),
                    Likelihood::Beta(_) => "a proportion strictly between 0 and 1".to_string(),
                    Likelihood::StudentT(_) => "a finite number below 1e100 in size".to_string(),
                };
                return Err(ModelError::Input(format!(
                    "observation {} is {v}, but the family needs {what}",
                    i + 1
                )));
            }
        }
        if matches!(self, Likelihood::StudentT(_)) {
            student_t_ties(y)?;
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
            Likelihood::StudentT(_) => mean,
        }
    }
}

impl Likelihood {
    /// When the Laplace approximation's Newton steps stop: the largest
    /// step in `eta`, 1e-6 on the link scales and 1e-6 noise scales for
    /// Student-t, whose `eta` is in the outcome's units. (1e-4 took 7 steps
    /// a point instead of 9.9, but `bench sbc --noise student_t --mc-check`
    /// then found the seed-to-seed spread 1.29 times the fits' own error
    /// estimate, against 1.03 at 1e-6.)
    fn newton_tolerance(self) -> f64 {
        match self {
            Likelihood::StudentT(sigma) => 1e-6 * sigma,
            _ => 1e-6,
        }
    }

    /// The link of one observation, nudged off the boundary: where Newton starts.
    fn link_of_value(self, y: f64) -> f64 {
        match self {
            Likelihood::Poisson => (y + 0.5).ln(),
            Likelihood::Bernoulli => logit((y + 0.5) / 2.0),
            Likelihood::Binomial(n) => logit((y + 0.5) / (f64::from(n) + 1.0)),
            Likelihood::Beta(_) => logit(y.clamp(0.01, 0.99)),
            Likelihood::StudentT(_) => y,
        }
    }
}

/// `S(z) - ln z (z - 1/2)`, the rest of Stirling's series for `ln Γ(z)`,
/// from `r = 1/z`: `-z + ln(2 pi)/2 + 1/(12z) - 1/(360z^3) + 1/(1260z^5) -
/// 1/(1680z^7) + 1/(1188z^9)`. At `z >= 8` the series' error is below its
/// next term, `691/(360360 z^11)` < 2.3e-13.
#[inline(always)]
fn stirling_rest(z: f64, r: f64) -> f64 {
    const HALF_LN_2PI: f64 = 0.918_938_533_204_672_8;
    let r2 = r * r;
    r * (1.0 / 12.0 - r2 * (1.0 / 360.0 - r2 * (1.0 / 1260.0 - r2 * (1.0 / 1680.0 - r2 / 1188.0))))
        - z
        + HALF_LN_2PI
}

/// `prod_{k=0}^{7} (x + k)`: `Γ(x + 8) / Γ(x)`.
#[inline(always)]
fn rising8(x: f64) -> f64 {
    (x * (x + 1.0)) * ((x + 2.0) * (x + 3.0)) * (((x + 4.0) * (x + 5.0)) * ((x + 6.0) * (x + 7.0)))
}

/// `-ln Γ(a) - ln Γ(b)`, for `a, b` in [1e-100, 1e15] (where the products
/// stay normal floats; here `a + b = phi` is at most e^20), with three
/// logarithms and no branch: `ln Γ(x) = S(x + 8) - ln prod_{k=0}^{7} (x + k)`
/// (the recurrence `Γ(x + 1) = x Γ(x)`), `S` Stirling's series
/// ([`stirling_rest`]). [`beta_kernel_block`] does the same in stages.
#[cfg(test)]
fn neg_ln_gamma_pair(a: f64, b: f64) -> f64 {
    let (za, zb) = (a + 8.0, b + 8.0);
    let inv = 1.0 / (za * zb);
    vecmath::ln(rising8(a) * rising8(b))
        - (za - 0.5) * vecmath::ln(za)
        - stirling_rest(za, zb * inv)
        - (zb - 0.5) * vecmath::ln(zb)
        - stirling_rest(zb, za * inv)
}

/// Observations per block of [`beta_kernel_block`].
const BETA_BLOCK: usize = 16;

/// The beta family's `log p(y | eta)` without its `eta`-free term
/// `ln Γ(phi)`, for a block of observations: `-ln Γ(a) - ln Γ(b) + (a - 1)
/// ln y + (b - 1) ln(1 - y)` with `a = mu phi`, `b = (1 - mu) phi`,
/// `mu = sigmoid(eta)`, and `ln Γ` as in [`neg_ln_gamma_pair`]. `mu` and
/// `1 - mu` are each computed directly (no cancellation in `1 - mu` for
/// large `eta`) and kept at least 1e-12, so that neither shape reaches 0.
///
/// Each stage is its own loop over the block: one observation's work is a
/// long chain of dependent operations, and a block's independent chains,
/// side by side in vector registers, keep the CPU busy while each waits.
// The stages index several arrays at once; iterators would hide that.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn beta_kernel_block(
    eta: &[f64; BETA_BLOCK],
    ln_y: &[f64; BETA_BLOCK],
    ln_1m_y: &[f64; BETA_BLOCK],
    phi: f64,
) -> [f64; BETA_BLOCK] {
    let (mut a, mut b) = ([0.0; BETA_BLOCK], [0.0; BETA_BLOCK]);
    for j in 0..BETA_BLOCK {
        let e = vecmath::exp_nonpositive(-eta[j].abs());
        let s = 1.0 / (1.0 + e);
        let es = e * s;
        let (mu, mu_c) = if eta[j] >= 0.0 { (s, es) } else { (es, s) };
        a[j] = mu.max(1e-12) * phi;
        b[j] = mu_c.max(1e-12) * phi;
    }
    let mut ln_rising = [0.0; BETA_BLOCK];
    for j in 0..BETA_BLOCK {
        ln_rising[j] = vecmath::ln(rising8(a[j]) * rising8(b[j]));
    }
    let mut ln_za = [0.0; BETA_BLOCK];
    for j in 0..BETA_BLOCK {
        ln_za[j] = vecmath::ln(a[j] + 8.0);
    }
    let mut ln_zb = [0.0; BETA_BLOCK];
    for j in 0..BETA_BLOCK {
        ln_zb[j] = vecmath::ln(b[j] + 8.0);
    }
    let mut out = [0.0; BETA_BLOCK];
    for j in 0..BETA_BLOCK {
        let (za, zb) = (a[j] + 8.0, b[j] + 8.0);
        let inv = 1.0 / (za * zb);
        out[j] = ln_rising[j]
            - (za - 0.5) * ln_za[j]
            - stirling_rest(za, zb * inv)
            - (zb - 0.5) * ln_zb[j]
            - stirling_rest(zb, za * inv)
            + (a[j] - 1.0) * ln_y[j]
            + (b[j] - 1.0) * ln_1m_y[j];
    }
    out
}

/// The beta kernel of every observation, summed in order. The kernels are
/// written to `scratch` first by loops without branches, which the
/// compiler vectorises (with AVX2 where the CPU has it); the sum then runs
/// in order, so the result has the same bits on every CPU.
fn sum_beta_kernels(
    eta: &[f64],
    ln_y: &[f64],
    ln_1m_y: &[f64],
    phi: f64,
    scratch: &mut Vec<f64>,
) -> f64 {
    beta_kernels_into(eta, ln_y, ln_1m_y, phi, scratch);
    scratch.iter().sum()
}

/// The beta kernel of every observation into `out` (resized to fit), with
/// AVX2 where the CPU has it.
fn beta_kernels_into(eta: &[f64], ln_y: &[f64], ln_1m_y: &[f64], phi: f64, out: &mut Vec<f64>) {
    out.resize(eta.len(), 0.0);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        unsafe { beta_kernels_avx2(eta, ln_y, ln_1m_y, phi, out) };
        return;
    }
    beta_kernels(eta, ln_y, ln_1m_y, phi, out);
}

/// [`beta_kernels`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn beta_kernels_avx2(eta: &[f64], ln_y: &[f64], ln_1m_y: &[f64], phi: f64, out: &mut [f64]) {
    beta_kernels(eta, ln_y, ln_1m_y, phi, out);
}

/// `out_i` = the beta kernel of observation `i`, block by block (the last
/// block padded with `eta = 0`, `y = 1/2`, whose kernels are dropped);
/// inlined into its callers so that it takes their instruction set.
#[inline(always)]
fn beta_kernels(eta: &[f64], ln_y: &[f64], ln_1m_y: &[f64], phi: f64, out: &mut [f64]) {
    let n = out.len().min(eta.len()).min(ln_y.len()).min(ln_1m_y.len());
    let mut start = 0;
    while start < n {
        let len = BETA_BLOCK.min(n - start);
        let mut block = (
            [0.0; BETA_BLOCK],
            [-std::f64::consts::LN_2; BETA_BLOCK],
            [-std::f64::consts::LN_2; BETA_BLOCK],
        );
        block.0[..len].copy_from_slice(&eta[start..start + len]);
        block.1[..len].copy_from_slice(&ln_y[start..start + len]);
        block.2[..len].copy_from_slice(&ln_1m_y[start..start + len]);
        let kernels = beta_kernel_block(&block.0, &block.1, &block.2, phi);
        out[start..start + len].copy_from_slice(&kernels[..len]);
        start += len;
    }
}

/// [`logit_kernels`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn logit_kernels_avx2(y: &[f64], eta: &[f64], n: f64, out: &mut [f64]) {
    logit_kernels(y, eta, n, out);
}

/// `out_i = y_i eta_i - n softplus(eta_i)`, the logit families' kernel of
/// each observation, in branch-free arithmetic that vectorises (the same
/// bits with or without AVX2); inlined into its callers so that it takes
/// their instruction set.
#[inline(always)]
fn logit_kernels(y: &[f64], eta: &[f64], n: f64, out: &mut [f64]) {
    for ((o, &y), &e) in out.iter_mut().zip(y).zip(eta) {
        let softplus = e.max(0.0) + vecmath::ln(1.0 + vecmath::exp_nonpositive(-e.abs()));
        *o = y * e - n * softplus;
    }
}

/// The trigamma function `psi_1(x)`, `x > 0`: the recurrence
/// `psi_1(x) = psi_1(x + 1) + 1/x^2` up to `x >= 10`, then the asymptotic series
/// `1/x + 1/(2x^2) + 1/(6x^3) - 1/(30x^5) + 1/(42x^7) - 1/(30x^9)` (error < 1e-12).
/// The tests' independent reference for [`Polygamma`], which computes it
/// beside the digamma from one logarithm.
#[cfg(test)]
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

/// `psi(x)` and `psi_1(x)` together, `x > 0`, with no logarithm taken:
/// the recurrences `psi(x) = psi(x + 1) - 1/x` and `psi_1(x) = psi_1(x + 1) +
/// 1/x^2` up to `z = x + k >= 10`, then the asymptotic series
/// `psi(z) = ln z - 1/(2z) - 1/(12z^2) + 1/(120z^4) - 1/(252z^6) +
/// 1/(240z^8) - 1/(132z^10)` (error below its next term, 691/(32760 z^12)
/// < 2.2e-14) and [`trigamma`]'s.
/// `psi(x) = ln(shifted) + digamma_rest`: the beta score takes a difference
/// of two of these, so its logarithms merge into one.
#[derive(Debug, Clone, Copy)]
struct Polygamma {
    /// `z`, the argument after the recurrence.
    shifted: f64,
    /// `psi(x) - ln z`.
    digamma_rest: f64,
    /// `psi_1(x)`.
    trigamma: f64,
}

impl Polygamma {
    #[inline(always)]
    fn at(mut x: f64) -> Polygamma {
        let (mut di, mut tri) = (0.0, 0.0);
        while x < 10.0 {
            let r = 1.0 / x;
            di -= r;
            tri += r * r;
            x += 1.0;
        }
        let r = 1.0 / x;
        let r2 = r * r;
        let di_series = -0.5 * r
            - r2 * (1.0 / 12.0
                - r2 * (1.0 / 120.0 - r2 * (1.0 / 252.0 - r2 * (1.0 / 240.0 - r2 / 132.0))));
        let tri_series =
            r + r2 / 2.0 + r2 * r * (1.0 / 6.0 - r2 * (1.0 / 30.0 - r2 * (1.0 / 42.0 - r2 / 30.0)));
        Polygamma {
            shifted: x,
            digamma_rest: di + di_series,
            trigamma: tri + tri_series,
        }
    }
}

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

/// The Gaussian approximating model: at the joint mode (Laplace), or
/// refitted over its own draws ([`efficient`]), whose `eta` is still
/// Laplace's mode (its filter's `b_mean` no longer is).
#[derive(Debug, Clone)]
pub struct Approximation {
    /// Pseudo-observations `y~`.
    pub pseudo: Vec<f64>,
    /// Their noise variances `H`.
    pub noise: Vec<f64>,
    /// The mode of the linear predictor (Laplace's, also after [`efficient`]).
    pub eta: Vec<f64>,
    /// The approximating model's filter output (marginal and `b` posterior).
    pub filter: FilterOutput,
    /// The design rows at the point's half-life ([`design_rows`]), which
    /// the importance draws use again.
    pub rows: Vec<[f64; MAX_ARMS]>,
}

/// Finds the Laplace approximation by iterated Kalman smoothing: at the
/// current `eta`, `H_i = -1 / l''(eta_i)`, `y~_i = eta_i + H_i l'(eta_i)`; the
/// Gaussian model's posterior mean of `X b + x` is the next `eta`. The
/// steps start at `start` (the mode at a nearby `phi`, as an evaluator
/// keeps it) or, without one, at each observation's own link value (as
/// GLM fitting does): fewer steps than from a common level, and no
/// overshoot on large counts.
pub fn laplace(
    series: &Series,
    lik: Likelihood,
    h: &Hyper,
    priors: &Priors,
    start: Option<&[f64]>,
) -> Result<Approximation, ModelError> {
    laplace_planned(series, &FilterPlan::of(series), lik, h, priors, start)
}

/// [`laplace`] with the series' filter plan made once by the caller (an
/// evaluator makes it once for all its points).
fn laplace_planned(
    series: &Series,
    plan: &FilterPlan,
    lik: Likelihood,
    h: &Hyper,
    priors: &Priors,
    start: Option<&[f64]>,
) -> Result<Approximation, ModelError> {
    let n = series.y.len();
    let rows = design_rows(series, h.kappa);
    let p = series.n_static();
    let mut eta: Vec<f64> = match start {
        Some(eta) if eta.len() == n => eta.to_vec(),
        _ => series.y.iter().map(|&y| lik.link_of_value(y)).collect(),
    };
    let mut pseudo = vec![0.0; n];
    let mut noise = vec![0.0; n];
    let mut damping = 1.0;
    let mut last_change = f64::INFINITY;
    let tolerance = lik.newton_tolerance();
    let unit = lik.variance_unit();
    for _ in 0..200 {
        for i in 0..n {
            let (d1, d2) = lik.derivatives(series.y[i], eta[i]);
            let var = noise_variance(-1.0 / d2, unit);
            noise[i] = var;
            pseudo[i] = eta[i] + var * d1;
        }
        let filter =
            augmented_filter_planned(series, plan, &pseudo, h, &priors.statics, Some(&noise))?;
        let drift = smoothed_drift_planned(
            series,
            plan,
            &rows,
            &pseudo,
            h,
            &filter.b_mean,
            Some(&noise),
        );
        let mut change: f64 = 0.0;
        for i in 0..n {
            let fixed: f64 = (0..p).map(|c| rows[i][c] * filter.b_mean[c]).sum();
            let step = fixed + drift[i] - eta[i];
            change = change.max(step.abs());
            eta[i] += damping * step;
        }
        if change < tolerance {
            return Ok(Approximation {
                pseudo,
                noise,
                eta,
                filter,
                rows,
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
/// `r`, so they are kept per column (outcome and each regressor). The
/// backward sampler's gain and noise sd do not depend on `b` either, so
/// they are worked out here once, not once per draw.
struct Forward<'a> {
    means: Vec<[f64; MAX_ARMS + 1]>,
    /// `J_i = P_i|i rho_{i+1} / P_{i+1}|i`, the backward sampler's gain.
    gain: Vec<f64>,
    /// `rho_{i+1}`.
    rho_next: Vec<f64>,
    /// The sd of `x_i | x_{i+1}, y~_{1..i}`: `sqrt(P_i|i (1 - J_i rho_{i+1}))`.
    sd: Vec<f64>,
    rows: &'a [[f64; MAX_ARMS]],
}

fn forward<'a>(series: &Series, approx: &'a Approximation, h: &Hyper) -> Forward<'a> {
    let n = series.t.len();
    let p = series.n_static();
    let rows = &approx.rows;
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
    let mut gain = vec![0.0; n];
    let mut rho_next = vec![0.0; n];
    let mut sd = vec![0.0; n];
    sd[n - 1] = p_filt[n - 1].max(0.0).sqrt();
    for i in 0..n - 1 {
        let j = p_filt[i] * rho[i + 1] / p_pred[i + 1];
        gain[i] = j;
        rho_next[i] = rho[i + 1];
        sd[i] = (p_filt[i] * (1.0 - j * rho[i + 1])).max(0.0).sqrt();
    }
    Forward {
        means,
        gain,
        rho_next,
        sd,
        rows,
    }
}

/// `D` draws of the drift, each given its `b`, by backward sampling from
/// standard normals `z` times `sign` (-1 for an antithetic draw); writes
/// each draw's linear predictor `eta = X b + x` of every observation. Each
/// draw is a chain of dependent steps backwards in time; `D` of them side
/// by side keep the CPU busy while each step waits for the one before.
fn backward_sample<const D: usize>(
    f: &Forward,
    b: &[[f64; MAX_ARMS]; D],
    p: usize,
    z: &[&[f64]; D],
    sign: &[f64; D],
    eta: &mut [Vec<f64>; D],
) {
    let n = f.means.len();
    let mut next = [0.0; D];
    for i in (0..n).rev() {
        let means = &f.means[i];
        let rows = &f.rows[i];
        for d in 0..D {
            let mut m = means[0];
            let mut fixed = 0.0;
            for c in 0..p {
                m -= means[c + 1] * b[d][c];
                fixed += rows[c] * b[d][c];
            }
            let noise = f.sd[i] * (z[d][i] * sign[d]);
            next[d] = if i == n - 1 {
                m + noise
            } else {
                m + f.gain[i] * (next[d] - f.rho_next[i] * m) + noise
            };
            eta[d][i] = fixed + next[d];
        }
    }
}

/// Where each hyperparameter point's importance draws come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Draws {
    /// Independent at every point, from the fit's seed and the point
    /// itself: the points' Monte Carlo errors then average out over the
    /// grid (or a chain) instead of adding up, and each point's error can
    /// be measured from its own pairs (`mc_error`). A point's draws do not
    /// depend on which other points were evaluated, or in what order.
    PerPoint,
    /// The same standard normals at every point (common random numbers):
    /// the estimate is then a smooth function of `theta`, which NUTS's
    /// numerical gradient needs; its error does not average out.
    Common,
}

/// The standard normals of a point's importance draws: for each antithetic
/// pair, `p` for the effects then `n` for the drift. Pair `k` comes from its
/// own stream (seeded by the point's seed and `k`), so a point can add
/// pairs later without drawing the first ones again.
#[derive(Debug, Clone)]
pub struct Normals {
    pairs: usize,
    p: usize,
    n: usize,
    values: Vec<f64>,
}

impl Normals {
    /// `pairs` pairs' worth for `p` static coefficients and `n` observations.
    pub fn new(pairs: usize, p: usize, n: usize, seed: u64) -> Normals {
        Normals::range(0..pairs, p, n, seed)
    }

    /// Pairs `range` (of the same sequence as [`Self::new`] draws).
    pub fn range(range: std::ops::Range<usize>, p: usize, n: usize, seed: u64) -> Normals {
        let pairs = range.len();
        let mut values = Vec::with_capacity(pairs * (p + n));
        for k in range {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(mix64(seed ^ mix64(k as u64)));
            values.extend((0..p + n).map(|_| -> f64 { StandardNormal.sample(&mut rng) }));
        }
        Normals {
            pairs,
            p,
            n,
            values,
        }
    }

    /// The effects' and the drift's normals of pair `k`.
    fn pair(&self, k: usize) -> (&[f64], &[f64]) {
        let one = &self.values[k * (self.p + self.n)..(k + 1) * (self.p + self.n)];
        one.split_at(self.p)
    }
}

/// SplitMix64's finaliser: nearby inputs, unrelated outputs.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed of the draws at `theta`: the fit's seed and the point's
/// coordinates mixed, so that nearby points get unrelated streams.
fn point_seed(seed: u64, theta: &Theta) -> u64 {
    theta
        .iter()
        .fold(mix64(seed ^ 0x9e37_79b9_7f4a_7c15), |h, v| {
            mix64(h ^ v.to_bits())
        })
}

/// What every importance weight at one point shares: the likelihood's
/// `eta`-free terms, `1 / H_i`, the sum of all `eta`-free terms, and
/// working space for the kernels.
struct WeightTerms {
    terms: ObsTerms,
    inv_noise: Vec<f64>,
    base: f64,
    scratch: Vec<f64>,
}

impl WeightTerms {
    fn new(lik: Likelihood, series: &Series, approx: &Approximation) -> WeightTerms {
        let terms = lik.obs_terms(&series.y);
        let inv_noise = approx.noise.iter().map(|v| 1.0 / v).collect();
        let base = terms.constant
            + approx
                .noise
                .iter()
                .map(|v| 0.5 * (2.0 * std::f64::consts::PI * v).ln())
                .sum::<f64>();
        WeightTerms {
            terms,
            inv_noise,
            base,
            scratch: Vec::with_capacity(series.y.len()),
        }
    }

    /// The log importance weight of the linear predictor `eta`,
    /// `sum_i [log p(y_i | eta_i) - log N(y~_i; eta_i, H_i)]`.
    fn log_weight(
        &mut self,
        lik: Likelihood,
        series: &Series,
        approx: &Approximation,
        eta: &[f64],
    ) -> f64 {
        let mut quadratic = 0.0;
        for ((&y_tilde, &e), &w) in approx.pseudo.iter().zip(eta).zip(&self.inv_noise) {
            let d = y_tilde - e;
            quadratic += d * d * w;
        }
        self.base
            + 0.5 * quadratic
            + lik.sum_log_kernel(&series.y, eta, &self.terms, &mut self.scratch)
    }
}

/// The importance-sampling correction at one `phi`: the unbiased
/// log-likelihood estimate and the weighted mean and covariance of `b`,
/// with the draws' sums pair by pair ([`ImportanceSums`]) for their Monte
/// Carlo error.
pub fn corrected(
    series: &Series,
    lik: Likelihood,
    h: &Hyper,
    approx: &Approximation,
    normals: &Normals,
) -> Option<FilterOutput> {
    Some(output_of(
        importance_sums(series, lik, h, approx, normals)?,
        approx,
    ))
}

/// One draw of the static coefficients from the approximation,
/// `b = b_mean + L (sign z_b)` with `L` the Cholesky factor of `b_cov`.
fn effects_draw(
    approx: &Approximation,
    chol: &nalgebra::DMatrix<f64>,
    zb: &[f64],
    sign: f64,
) -> [f64; MAX_ARMS] {
    let mut b = [0.0; MAX_ARMS];
    for (r, br) in b.iter_mut().enumerate().take(approx.filter.b_mean.len()) {
        *br = approx.filter.b_mean[r] + (0..=r).map(|c| chol[(r, c)] * (zb[c] * sign)).sum::<f64>();
    }
    b
}

/// The draws of `normals` at one `phi`, summed pair by pair.
fn importance_sums(
    series: &Series,
    lik: Likelihood,
    h: &Hyper,
    approx: &Approximation,
    normals: &Normals,
) -> Option<ImportanceSums> {
    let n = series.y.len();
    let p = series.n_static();
    if normals.p != p || normals.n != n {
        return None;
    }
    let chol = approx.filter.b_cov.clone().cholesky()?.l();
    let fwd = forward(series, approx, h);
    let mut draws: Vec<([f64; MAX_ARMS], f64)> = Vec::with_capacity(2 * normals.pairs);
    // Every draw's log weight is sum_i [log p(y_i | eta_i) - log g_i(eta_i)];
    // the terms free of eta (the likelihood's constants, the Gaussian's
    // normalisation) are summed once here.
    let mut weights_at = WeightTerms::new(lik, series, approx);
    let effects_of = |zb: &[f64], sign: f64| effects_draw(approx, &chol, zb, sign);
    // Two antithetic pairs at a time: four backward chains side by side.
    let mut etas: [Vec<f64>; 4] = std::array::from_fn(|_| vec![0.0; n]);
    for k in (0..normals.pairs).step_by(2) {
        let (zb0, z0) = normals.pair(k);
        let b0 = [effects_of(zb0, 1.0), effects_of(zb0, -1.0)];
        if k + 1 < normals.pairs {
            let (zb1, z1) = normals.pair(k + 1);
            let b = [b0[0], b0[1], effects_of(zb1, 1.0), effects_of(zb1, -1.0)];
            backward_sample(
                &fwd,
                &b,
                p,
                &[z0, z0, z1, z1],
                &[1.0, -1.0, 1.0, -1.0],
                &mut etas,
            );
            for (b, eta) in b.iter().zip(&etas) {
                draws.push((*b, weights_at.log_weight(lik, series, approx, eta)));
            }
        } else {
            let [first, second, ..] = &mut etas;
            let mut pair = [std::mem::take(first), std::mem::take(second)];
            backward_sample(&fwd, &b0, p, &[z0, z0], &[1.0, -1.0], &mut pair);
            for (b, eta) in b0.iter().zip(&pair) {
                draws.push((*b, weights_at.log_weight(lik, series, approx, eta)));
            }
        }
    }
    let top = draws.iter().map(|d| d.1).fold(f64::NEG_INFINITY, f64::max);
    if !top.is_finite() {
        return None;
    }
    let g_mean: Vec<f64> = approx.filter.b_mean.iter().copied().collect();
    let g_cov: Vec<f64> = (0..p * p)
        .map(|k| approx.filter.b_cov[(k / p, k % p)])
        .collect();
    let mut sums = ImportanceSums::new(p, approx.filter.log_lik + top, g_cov);
    for (i, (b, log_w)) in draws.iter().enumerate() {
        sums.add(i % 2 == 0, (log_w - top).exp(), &b[..p], &g_mean);
    }
    Some(sums)
}

/// A pseudo-observation's noise variance kept within `[1e-8, 1e8]` times
/// `unit` ([`Likelihood::variance_unit`]): a likelihood nearly flat or
/// nearly exact at an observation must not make the filter's arithmetic
/// overflow.
fn noise_variance(v: f64, unit: f64) -> f64 {
    v.clamp(1e-8 * unit, 1e8 * unit)
}

/// Antithetic pairs each iteration of [`efficient`] regresses on, and the
/// iterations: of 1 x 8, 2 x 4, 2 x 8, 3 x 8 and 2 x 16, 2 x 8 simulated
/// caffeine-cutoff's first 290 fits fastest (98 s; 143, 122, 131, 109 s),
/// the refit's own cost against the importance draws it saves.
const EIS_PAIRS: usize = 8;
/// See [`EIS_PAIRS`].
const EIS_ITERATIONS: usize = 2;
/// Mixed with the fit's seed into the seed of [`efficient`]'s draws: the
/// same draws at every point (the proposal is then a smooth, deterministic
/// function of the point), never those of the importance sums themselves,
/// which come from the fit's seed (common draws) or the point's.
const EIS_SALT: u64 = 0x0e15_0e15_0e15_0e15;

/// Efficient importance sampling (Richard & Zhang 2007; in the
/// pseudo-observation form of Koopman, Lit & Nguyen 2019): each
/// observation's Gaussian term `N(y~_i; eta_i, H_i)` is refitted by least
/// squares of `log p(y_i | eta)` on `(1, eta, eta^2)` over draws of the
/// proposal itself, instead of matching its curvature at the mode
/// (Laplace). The proposal then fits the likelihood where the posterior
/// lies, not only at its peak, and the importance weights' variance falls.
/// `normals` holds [`EIS_PAIRS`] pairs' worth. Where a Cholesky factor or a
/// filter fails the proposal stays as it was (a rare jump in an otherwise
/// smooth function of the point).
fn efficient(
    series: &Series,
    plan: &FilterPlan,
    lik: Likelihood,
    h: &Hyper,
    priors: &Priors,
    normals: &Normals,
    mut approx: Approximation,
) -> Approximation {
    let n = series.y.len();
    let p = series.n_static();
    let terms = lik.obs_terms(&series.y);
    let mut pairs: Vec<[Vec<f64>; 2]> = vec![[vec![0.0; n], vec![0.0; n]]; EIS_PAIRS];
    let mut kernels: Vec<Vec<f64>> = vec![vec![0.0; n]; 2 * EIS_PAIRS];
    for _ in 0..EIS_ITERATIONS {
        let Some(chol) = approx.filter.b_cov.clone().cholesky() else {
            break;
        };
        let chol = chol.l();
        let fwd = forward(series, &approx, h);
        for (k, pair) in pairs.iter_mut().enumerate() {
            let (zb, z) = normals.pair(k);
            let b = [
                effects_draw(&approx, &chol, zb, 1.0),
                effects_draw(&approx, &chol, zb, -1.0),
            ];
            backward_sample(&fwd, &b, p, &[z, z], &[1.0, -1.0], pair);
        }
        let etas: Vec<&[f64]> = pairs.iter().flatten().map(Vec::as_slice).collect();
        for (eta, out) in etas.iter().zip(kernels.iter_mut()) {
            lik.log_kernels(&series.y, eta, &terms, out);
        }
        let l: Vec<&[f64]> = kernels.iter().map(Vec::as_slice).collect();
        let mut pseudo = approx.pseudo.clone();
        let mut noise = approx.noise.clone();
        gaussian_terms(&etas, &l, lik.variance_unit(), &mut pseudo, &mut noise);
        let Ok(filter) =
            augmented_filter_planned(series, plan, &pseudo, h, &priors.statics, Some(&noise))
        else {
            break;
        };
        approx.pseudo = pseudo;
        approx.noise = noise;
        approx.filter = filter;
    }
    approx
}

/// For each observation `i`, the Gaussian term `N(y~_i; eta, H_i)` whose
/// logarithm best fits `l_i` over the draws (least squares): with
/// `l ~ c0 + c1 u + c2 u^2`, `u = eta - m_i` and `m_i` the draws' mean,
/// `H_i = -1 / (2 c2)` and `y~_i = m_i + c1 H_i` (the normal equations
/// solved by Cramer's rule). An observation whose fit does not curve down
/// (or is not a number) keeps the term it had. `etas[s]` and `l[s]` are
/// draw `s`'s values of every observation.
fn gaussian_terms(etas: &[&[f64]], l: &[&[f64]], unit: f64, pseudo: &mut [f64], noise: &mut [f64]) {
    let n = pseudo.len();
    let draws = etas.len() as f64;
    let mut m = vec![0.0; n];
    for eta in etas {
        for (m, e) in m.iter_mut().zip(eta.iter()) {
            *m += e / draws;
        }
    }
    // Sums of u, u^2, u^3, u^4 and of l, l u, l u^2, observation by
    // observation (draw by draw, so that the loops run along the arrays).
    let mut su = vec![[0.0; 4]; n];
    let mut sl = vec![[0.0; 3]; n];
    for (eta, l) in etas.iter().zip(l) {
        for i in 0..n {
            let u = eta[i] - m[i];
            let u2 = u * u;
            let s = &mut su[i];
            s[0] += u;
            s[1] += u2;
            s[2] += u2 * u;
            s[3] += u2 * u2;
            let t = &mut sl[i];
            t[0] += l[i];
            t[1] += l[i] * u;
            t[2] += l[i] * u2;
        }
    }
    for i in 0..n {
        let (a, [b, c, d, e]) = (draws, su[i]);
        let [t0, t1, t2] = sl[i];
        let det = a * (c * e - d * d) - b * (b * e - d * c) + c * (b * d - c * c);
        let c1 = (a * (t1 * e - d * t2) - t0 * (b * e - d * c) + c * (b * t2 - t1 * c)) / det;
        let c2 = (a * (c * t2 - t1 * d) - b * (b * t2 - t1 * c) + t0 * (b * d - c * c)) / det;
        let curves_down = c2 < 0.0 && c1.is_finite();
        if curves_down {
            let var = noise_variance(-0.5 / c2, unit);
            noise[i] = var;
            pseudo[i] = m[i] + c1 * var;
        }
    }
}

/// The point's estimate from its draws' sums.
fn output_of(mut sums: ImportanceSums, approx: &Approximation) -> FilterOutput {
    let p = sums.p();
    sums.smooth_tail();
    // The covariance with the approximating Gaussian's own as a control
    // variate (`ImportanceSums::estimate`): where the weights are nearly
    // equal the sampling noise of its two sample terms cancels, and what
    // is left is the correction the weights make. The weighted sample
    // covariance alone has a relative error near sqrt(2 / ESS) in the
    // variance (7% in an sd at 96 draws) even when the approximation is
    // exact. (The antithetic pairs already make the unweighted mean of the
    // draws g's mean, so the weighted mean needs no such term.)
    let (log_lik, mean, cov) = sums.estimate();
    let cov = nalgebra::DMatrix::from_row_slice(p, p, &cov);
    // Few draws can give a covariance that is not positive definite; the
    // approximating Gaussian's is then the better estimate of the spread.
    let b_cov = if cov.clone().cholesky().is_some() {
        cov
    } else {
        sums.mark_fell_back();
        approx.filter.b_cov.clone()
    };
    FilterOutput {
        log_lik,
        b_mean: DVector::from_vec(mean),
        b_cov,
        importance: Some(std::sync::Arc::new(sums)),
    }
}

/// The Laplace approximation of `log p(y | phi)`: the approximating model's
/// marginal likelihood times the importance weight at the mode, `log
/// p_g(y~ | phi) + log w(eta^)`, the integrand's value at its mode over the
/// Gaussian's. What `corrected` estimates exactly, at one draw's cost.
fn laplace_log_lik(series: &Series, lik: Likelihood, approx: &Approximation) -> f64 {
    let mut weights_at = WeightTerms::new(lik, series, approx);
    approx.filter.log_lik + weights_at.log_weight(lik, series, approx, &approx.eta)
}

/// The evaluator for the non-Gaussian families: Laplace approximation,
/// refitted ([`efficient`]), plus importance-sampling correction at each
/// `theta` (three free coordinates,
/// as there is no `sigma_y`; four for beta, whose fourth is `ln phi`, and
/// for Student-t, whose fourth is `ln sigma_y` as in the gaussian filter).
pub struct LaplaceEvaluator<'a> {
    series: &'a Series,
    priors: &'a Priors,
    likelihood: Likelihood,
    /// Antithetic pairs a point draws.
    pairs: usize,
    /// The fit's seed, from which every point's draws come.
    seed: u64,
    /// The normals every point shares under [`Draws::Common`].
    common: Option<Normals>,
    /// The normals of [`efficient`]'s draws, the same at every point.
    eis: Normals,
    /// The Laplace mode of `eta` at the search's start (the prior centre),
    /// where every point's Newton steps start: a smoothed fit of the data,
    /// nearer every point's mode than the raw link values (a 365-day beta
    /// fit: 3 steps a point instead of 4). Fixed before any point is
    /// evaluated, so the results do not depend on their order.
    warm_start: Option<Vec<f64>>,
    /// The series' filter plan, the same at every point.
    plan: FilterPlan,
}

impl<'a> LaplaceEvaluator<'a> {
    /// The evaluator of `series` under `priors` (on the link scale with
    /// `S = 1`; Student-t noise: the outcome's units and scale), with
    /// `pairs` antithetic pairs of importance draws per point, drawn from
    /// `seed` as `draws` says.
    pub fn new(
        series: &'a Series,
        priors: &'a Priors,
        likelihood: Likelihood,
        pairs: usize,
        seed: u64,
        draws: Draws,
    ) -> Self {
        let common = (draws == Draws::Common)
            .then(|| Normals::new(pairs, series.n_static(), series.y.len(), seed));
        let mut evaluator = LaplaceEvaluator {
            series,
            priors,
            likelihood,
            pairs,
            seed,
            common,
            eis: Normals::new(
                EIS_PAIRS,
                series.n_static(),
                series.y.len(),
                mix64(seed ^ EIS_SALT),
            ),
            warm_start: None,
            plan: FilterPlan::of(series),
        };
        evaluator.warm_start = evaluator
            .at(&evaluator.start())
            .and_then(|(_, lik, h)| {
                laplace_planned(series, &evaluator.plan, lik, &h, priors, None).ok()
            })
            .map(|approx| approx.eta);
        evaluator
    }

    /// [`Evaluator::eval`] with `pairs` antithetic pairs at this point
    /// (per-point draws; the first pairs are the same as with fewer): how
    /// a fit adds draws where its Monte Carlo error comes from.
    pub fn eval_with_pairs(&self, theta: &Theta, pairs: usize) -> Option<Eval> {
        let (theta, likelihood, h, approx) = self.proposal(theta)?;
        let own;
        let normals = match (&self.common, pairs == self.pairs) {
            (Some(common), true) => common,
            _ => {
                own = Normals::new(
                    pairs,
                    self.series.n_static(),
                    self.series.y.len(),
                    point_seed(self.seed, &theta),
                );
                &own
            }
        };
        let filter = corrected(self.series, likelihood, &h, &approx, normals)?;
        let log_post = filter.log_lik + self.log_prior(&theta);
        log_post.is_finite().then_some(Eval {
            theta,
            log_post,
            filter,
        })
    }

    /// `e` (an evaluation of this evaluator's, with per-point draws) with
    /// its draws extended to `pairs` pairs: the proposal is made again (it
    /// is deterministic, its own draws fixed), only the new pairs are drawn, and
    /// their sums are merged with the old ones. The same as
    /// [`Self::eval_with_pairs`] at `pairs`, at the cost of the new pairs.
    pub fn extend(&self, e: &Eval, pairs: usize) -> Option<Eval> {
        let old = e.filter.importance.as_deref()?;
        if self.common.is_some() || pairs <= old.pairs() {
            return self.eval_with_pairs(&e.theta, pairs);
        }
        let (theta, likelihood, h, approx) = self.proposal(&e.theta)?;
        let normals = Normals::range(
            old.pairs()..pairs,
            self.series.n_static(),
            self.series.y.len(),
            point_seed(self.seed, &theta),
        );
        let new = importance_sums(self.series, likelihood, &h, &approx, &normals)?;
        let mut sums = old.clone();
        sums.merge(new);
        let filter = output_of(sums, &approx);
        let log_post = filter.log_lik + self.log_prior(&theta);
        log_post.is_finite().then_some(Eval {
            theta,
            log_post,
            filter,
        })
    }

    /// Antithetic pairs a point draws by default.
    pub fn pairs(&self) -> usize {
        self.pairs
    }

    /// The family at `theta` (beta's precision and Student-t's scale are
    /// its fourth coordinate), with `theta[3]` zeroed where it is not free.
    fn at(&self, theta: &Theta) -> Option<(Theta, Likelihood, Hyper)> {
        if !theta_in_range(theta, self.dims()) {
            return None;
        }
        let mut theta = *theta;
        if !self.likelihood.has_fourth() {
            theta[3] = 0.0;
        }
        let likelihood = self.likelihood.at(&theta);
        Some((theta, likelihood, hyper_of(&theta)))
    }

    /// [`Self::approximate`] moved to the efficient importance proposal
    /// ([`efficient`]): what the importance draws come from.
    fn proposal(&self, theta: &Theta) -> Option<(Theta, Likelihood, Hyper, Approximation)> {
        let (theta, likelihood, h, approx) = self.approximate(theta)?;
        let approx = efficient(
            self.series,
            &self.plan,
            likelihood,
            &h,
            self.priors,
            &self.eis,
            approx,
        );
        Some((theta, likelihood, h, approx))
    }

    /// [`Self::at`] and the Laplace approximation there, from the warm start.
    fn approximate(&self, theta: &Theta) -> Option<(Theta, Likelihood, Hyper, Approximation)> {
        let (theta, likelihood, h) = self.at(theta)?;
        let start = self.warm_start.as_deref();
        let approx =
            laplace_planned(self.series, &self.plan, likelihood, &h, self.priors, start).ok()?;
        Some((theta, likelihood, h, approx))
    }

    /// The log prior of the free coordinates: Student-t's scale has the
    /// gaussian noise sd's prior.
    fn log_prior(&self, theta: &Theta) -> f64 {
        if matches!(self.likelihood, Likelihood::StudentT(_)) {
            return log_prior(theta, &self.priors.hyper, 4);
        }
        let mut lp = log_prior(theta, &self.priors.hyper, 3);
        if self.dims() == 4 {
            // phi ~ LogNormal(ln precision_median, precision_log_sd), on ln phi.
            let hp = &self.priors.hyper;
            let z = (theta[3] - hp.precision_median.ln()) / hp.precision_log_sd;
            lp += -0.5 * z * z - hp.precision_log_sd.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln();
        }
        lp
    }
}

impl Evaluator for LaplaceEvaluator<'_> {
    fn dims(&self) -> usize {
        if self.likelihood.has_fourth() { 4 } else { 3 }
    }

    fn start(&self) -> Theta {
        let mut t = prior_center(&self.priors.hyper);
        if !matches!(self.likelihood, Likelihood::StudentT(_)) {
            t[3] = self.priors.hyper.precision_median.ln();
        }
        t
    }

    fn eval(&self, theta: &Theta) -> Option<Eval> {
        self.eval_with_pairs(theta, self.pairs)
    }

    /// The Laplace approximation, without the importance draws: the mode
    /// search needs only a good centre for the lattice, which then
    /// integrates the corrected posterior (and checks its own error).
    fn search_log_post(&self, theta: &Theta) -> Option<f64> {
        let (theta, likelihood, _, approx) = self.approximate(theta)?;
        let log_post = laplace_log_lik(self.series, likelihood, &approx) + self.log_prior(&theta);
        log_post.is_finite().then_some(log_post)
    }

    fn search_is_approximate(&self) -> bool {
        true
    }

    /// A Laplace evaluation costs milliseconds: two points are worth two threads.
    fn min_split(&self) -> usize {
        2
    }
}

/// The fit's own priors of `series` for `family` (binomial: of 7 trials)
/// and its likelihood, for tests that build an evaluator.
#[cfg(test)]
pub(crate) fn test_priors(
    series: &Series,
    family: crate::engine::spec::Family,
) -> (Priors, Likelihood) {
    use crate::engine::fit::{FitSpec, Method, likelihood_of, priors_for};
    use crate::engine::inference::{GridOptions, McmcOptions};
    use crate::engine::spec::{Direction, Family, Mid, ModelSpec};
    let model = ModelSpec {
        family,
        trials: (family == Family::Binomial).then_some(7),
        noise: Default::default(),
        direction: Direction::Higher,
        mid: Mid::new(family, 1.2),
        scale: None,
        priors: Default::default(),
    };
    let spec = FitSpec {
        model: &model,
        arm_keys: vec!["a".into(), "b".into()],
        run_in: None,
        method: Method::Grid,
        seed: 5,
        mcmc: McmcOptions::default(),
        grid: GridOptions::default(),
        dropped: Vec::new(),
        path: false,
        intervals: false,
        device: None,
    };
    let (priors, _) = priors_for(series, &spec).expect("the test series has priors");
    let lik = likelihood_of(&model)
        .expect("a known family")
        .expect("not gaussian");
    (priors, lik)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each observation's kernel is its log density less a term free of
    /// `eta`, sums to [`Likelihood::sum_log_kernel`], and the logit
    /// families' vectorised kernels have the scalar ones' bits.
    #[test]
    fn per_observation_kernels_are_the_log_densities_less_constants() {
        let cases = [
            (Likelihood::Poisson, vec![0.0, 3.0, 7.0]),
            (Likelihood::Bernoulli, vec![0.0, 1.0, 1.0]),
            (Likelihood::Binomial(7), vec![0.0, 2.0, 7.0]),
            (Likelihood::Beta(12.0), vec![0.05, 0.5, 0.93]),
            (Likelihood::StudentT(0.8), vec![-40.0, 0.5, 3.0]),
        ];
        for (lik, y) in cases {
            let terms = lik.obs_terms(&y);
            let (mut out, mut scratch) = (Vec::new(), Vec::new());
            let mut offsets: Vec<Option<f64>> = vec![None; y.len()];
            for eta in [-30.0, -2.5, -0.1, 0.0, 0.4, 3.0, 30.0] {
                let etas = vec![eta; y.len()];
                lik.log_kernels(&y, &etas, &terms, &mut out);
                let sum = lik.sum_log_kernel(&y, &etas, &terms, &mut scratch);
                let total: f64 = out.iter().sum();
                assert!(
                    (total - sum).abs() < 1e-9 * (1.0 + sum.abs()),
                    "{lik:?} {eta}"
                );
                for (i, offset) in offsets.iter_mut().enumerate() {
                    let d = lik.log_density(y[i], eta) - out[i];
                    let first = *offset.get_or_insert(d);
                    // Relative to the kernel's size: e^30 leaves ~1e-3 of rounding.
                    let tolerance = 1e-9 * (1.0 + out[i].abs());
                    assert!((d - first).abs() < tolerance, "{lik:?} {eta}");
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            let eta: Vec<f64> = (0..37).map(|i| -20.0 + 1.1 * f64::from(i)).collect();
            let y: Vec<f64> = (0..37).map(|i| f64::from(i % 8)).collect();
            let (mut scalar, mut vector) = (vec![0.0; 37], vec![0.0; 37]);
            logit_kernels(&y, &eta, 7.0, &mut scalar);
            // SAFETY: the CPU has AVX2, checked just above.
            unsafe { logit_kernels_avx2(&y, &eta, 7.0, &mut vector) };
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&scalar), bits(&vector));
        }
    }

    #[test]
    fn a_gaussian_term_is_recovered_from_its_own_log_density() {
        // Observation 0 has a Gaussian log density (recovered exactly);
        // observation 1's curves up, and keeps the term it had.
        let (y_tilde, var) = (0.7, 0.3);
        let draws = [-1.0, -0.2, 0.1, 0.5, 0.9, 1.6];
        let etas: Vec<Vec<f64>> = draws.iter().map(|&e| vec![e, e]).collect();
        let l: Vec<Vec<f64>> = draws
            .iter()
            .map(|e| {
                let log_g = 4.2 - (y_tilde - e) * (y_tilde - e) / (2.0 * var);
                vec![log_g, -log_g]
            })
            .collect();
        let (mut pseudo, mut noise) = (vec![0.0, 9.0], vec![1.0, 2.0]);
        let etas: Vec<&[f64]> = etas.iter().map(Vec::as_slice).collect();
        let l: Vec<&[f64]> = l.iter().map(Vec::as_slice).collect();
        gaussian_terms(&etas, &l, 1.0, &mut pseudo, &mut noise);
        assert!((pseudo[0] - y_tilde).abs() < 1e-9, "{pseudo:?}");
        assert!((noise[0] - var).abs() < 1e-9, "{noise:?}");
        assert_eq!((pseudo[1], noise[1]), (9.0, 2.0));
    }

    /// The efficient proposal ([`efficient`]) estimates the same
    /// likelihood and effect as the Laplace one it starts from (both are
    /// exact importance sampling; a wrong weight would move the answer),
    /// with less Monte Carlo spread: over 16 seeds of 200 pairs at the
    /// prior centre of a 168-day series of each family, the two means
    /// agree within 4 standard errors of their difference, and the
    /// efficient one's seeds spread less.
    #[test]
    fn the_efficient_proposal_estimates_the_same_likelihood_with_less_spread() {
        use crate::engine::spec::Family;
        for family in [
            Family::Poisson,
            Family::Bernoulli,
            Family::Binomial,
            Family::Beta,
        ] {
            let series = crate::engine::generate::family_series(family, 168, 4);
            let (priors, lik) = test_priors(&series, family);
            let ev = LaplaceEvaluator::new(
                &series,
                &priors,
                lik,
                crate::engine::inference::IS_PAIRS,
                5,
                Draws::PerPoint,
            );
            let (_, lik, h, laplace) = ev.approximate(&ev.start()).unwrap();
            let eis = efficient(
                &series,
                &ev.plan,
                lik,
                &h,
                &priors,
                &ev.eis,
                laplace.clone(),
            );
            let estimates = |approx: &Approximation| -> (Vec<f64>, Vec<f64>) {
                (0..16u64)
                    .map(|seed| {
                        let normals = Normals::new(200, series.n_static(), series.y.len(), seed);
                        let sums = importance_sums(&series, lik, &h, approx, &normals).unwrap();
                        let (log_lik, mean, _) = sums.estimate();
                        (log_lik, mean[1])
                    })
                    .unzip()
            };
            let mean_sd = |x: &[f64]| {
                let m = x.iter().sum::<f64>() / x.len() as f64;
                let v = x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (x.len() - 1) as f64;
                (m, v.sqrt())
            };
            let (l_ll, l_b) = estimates(&laplace);
            let (e_ll, e_b) = estimates(&eis);
            let n = 16f64.sqrt();
            for (what, l, e) in [("log-likelihood", &l_ll, &e_ll), ("effect", &l_b, &e_b)] {
                let ((lm, ls), (em, es)) = (mean_sd(l), mean_sd(e));
                let se = (ls * ls + es * es).sqrt() / n;
                println!(
                    "{family:?} {what}: Laplace {lm:.4} (sd {ls:.4}), efficient {em:.4} (sd {es:.4})"
                );
                assert!(
                    (lm - em).abs() < 4.0 * se,
                    "{family:?} {what}: {lm} vs {em} (se {se})"
                );
                // Measured 2 to 4.5 times smaller; 16 seeds know an sd to ~18%.
                assert!(es < ls, "{family:?} {what}: sd {es} against Laplace's {ls}");
            }
        }
    }

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
    fn shifted_stirling_log_gamma_pairs_match_statrs() {
        use statrs::function::gamma::ln_gamma;
        let mut worst: f64 = 0.0;
        let mut values = vec![1e-12, 1e-6, 0.01, 0.5, 1.0, 2.0, 7.5, 8.0, 100.0, 4.85e8];
        values.extend((1..400).map(|i| f64::from(i) * 0.05));
        for &a in &values {
            for &b in &[1e-9, 0.3, 3.0, 19.0, 1e4] {
                let exact = -ln_gamma(a) - ln_gamma(b);
                let err = (neg_ln_gamma_pair(a, b) - exact).abs() / (1.0 + exact.abs());
                worst = worst.max(err);
            }
        }
        assert!(worst < 1e-12, "worst relative error {worst:e}");
    }

    #[test]
    fn beta_kernels_vectorised_equal_scalar_bits_and_the_exact_density() {
        use statrs::function::gamma::ln_gamma;
        let n = 1001;
        let phi = 23.7;
        let y: Vec<f64> = (0..n)
            .map(|i| (f64::from(i) + 0.5) / f64::from(n))
            .collect();
        let eta: Vec<f64> = (0..n).map(|i| f64::from(i) * 0.061 - 30.0).collect();
        let lik = Likelihood::Beta(phi);
        let terms = lik.obs_terms(&y);
        let mut scratch = Vec::new();
        let vectorised = lik.sum_log_kernel(&y, &eta, &terms, &mut scratch);
        let mut scalar = vec![0.0; y.len()];
        beta_kernels(&eta, &terms.ln_y, &terms.ln_1m_y, phi, &mut scalar);
        assert_eq!(vectorised.to_bits(), scalar.iter().sum::<f64>().to_bits());
        let exact: f64 = y
            .iter()
            .zip(&eta)
            .map(|(&y, &e)| {
                let mu = (1.0 / (1.0 + (-e).exp())).max(1e-12);
                let mu_c = (1.0 / (1.0 + e.exp())).max(1e-12);
                let (a, b) = (mu * phi, mu_c * phi);
                -ln_gamma(a) - ln_gamma(b) + (a - 1.0) * y.ln() + (b - 1.0) * (1.0 - y).ln()
            })
            .sum();
        assert!(
            (vectorised - exact).abs() < 1e-12 * exact.abs(),
            "{vectorised} vs {exact}"
        );
    }

    #[test]
    fn polygamma_matches_digamma_and_trigamma() {
        use statrs::function::gamma::digamma;
        for x in [1e-6, 0.01, 0.3, 1.0, 2.5, 9.99, 10.0, 37.0, 1e4, 1e9] {
            let p = Polygamma::at(x);
            let psi = p.shifted.ln() + p.digamma_rest;
            assert!(
                (psi - digamma(x)).abs() <= 1e-12 * (1.0 + digamma(x).abs()),
                "{x}"
            );
            assert!(
                (p.trigamma - trigamma(x)).abs() <= 1e-12 * trigamma(x),
                "{x}"
            );
        }
        // psi(1) = -Euler's gamma; psi_1(1) = pi^2 / 6.
        let one = Polygamma::at(1.0);
        assert!((one.shifted.ln() + one.digamma_rest + 0.577_215_664_901_532_9).abs() < 1e-13);
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
        let e = Likelihood::StudentT(1.0)
            .check(&[1.5, f64::NAN])
            .unwrap_err()
            .to_string();
        assert!(e.contains("observation 2") && e.contains("finite"), "{e}");
        let mut rating = vec![5.0; 16];
        rating[..3].copy_from_slice(&[4.0, 6.0, 7.0]);
        let e = Likelihood::StudentT(1.0)
            .check(&rating)
            .unwrap_err()
            .to_string();
        assert!(e.contains("13 of the 16 values are 5"), "{e}");
        rating[3] = 3.0;
        assert!(Likelihood::StudentT(1.0).check(&rating).is_ok());
    }

    /// The Student-t density is `statrs`' (location `eta`, scale `sigma`,
    /// `nu` degrees of freedom); its score is a finite difference's; its
    /// curvature is the observed information near the centre and the
    /// floor (a quarter of the Fisher information) in the tails, where the
    /// density stops being log-concave; and an outlier's score fades.
    #[test]
    fn student_t_density_score_and_floored_curvature() {
        use statrs::distribution::{Continuous, StudentsT};
        let sigma = 1.7;
        let lik = Likelihood::StudentT(sigma);
        let reference = StudentsT::new(0.4, sigma, STUDENT_T_DF).unwrap();
        for y in [-30.0, -2.0, 0.4, 1.1, 5.0] {
            let ours = lik.log_density(y, 0.4);
            let theirs = reference.ln_pdf(y);
            assert!((ours - theirs).abs() < 1e-12, "{y}: {ours} vs {theirs}");
        }
        let fisher = (STUDENT_T_DF + 1.0) / ((STUDENT_T_DF + 3.0) * sigma * sigma);
        let h = 1e-5;
        for (r, concave) in [(0.0, true), (0.9, true), (-2.5, true), (6.0, false)] {
            let eta = 0.4;
            let y = eta + r;
            let f = |e: f64| lik.log_density(y, e);
            let d1 = (f(eta + h) - f(eta - h)) / (2.0 * h);
            let d2 = (f(eta + h) - 2.0 * f(eta) + f(eta - h)) / (h * h);
            let (a1, a2) = lik.derivatives(y, eta);
            assert!((a1 - d1).abs() < 1e-6, "{r}: {a1} vs {d1}");
            if concave && -d2 > 0.25 * fisher {
                assert!((a2 - d2).abs() < 1e-3, "{r}: {a2} vs {d2}");
            } else {
                assert!((a2 + 0.25 * fisher).abs() < 1e-12, "{r}: {a2}");
            }
        }
        let score = |r: f64| lik.derivatives(0.4 + r, 0.4).0;
        assert!(score(100.0) < 0.1 * score(3.0), "an outlier's pull fades");
    }
}

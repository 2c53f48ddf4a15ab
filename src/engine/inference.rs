//! Inference over the hyperparameters (`statistics.md` §4).
//!
//! Given `theta = (ln tau, ln drift_sd, ln half_life, ln sigma_y)` — with
//! `tau = 1/lambda` the drift correlation time and `half_life = ln 2 / kappa` —
//! one augmented filter pass gives the exact marginal likelihood and the exact
//! Gaussian posterior of the effects. Two ways integrate over `theta`:
//!
//! - [`integrate_grid`], the fast path: find the mode, then sum over a lattice
//!   in whitened coordinates, grown outwards from the mode until the log
//!   posterior falls `cutoff` below its maximum (so long tails are followed,
//!   not cut at a fixed radius), on two lattices offset by half a step. Its
//!   error check compares the two lattices' sums with each other (step error)
//!   and the combined sum with the same sum over a narrower region (region error).
//! - [`sample_mcmc`], the reference: adaptive random-walk Metropolis chains,
//!   with split R-hat, bulk ESS and acceptance rates.
//!
//! Both give a weighted mixture of Gaussians for the effects
//! (Rao-Blackwellised), summarised by [`summarise_effects`]: quantiles and
//! `P(delta > MID)` come from the mixture, never from mean ± z·sd.
//!
//! [`Evaluator`] is the batch seam a GPU backend will implement: the log
//! posterior and the conditional effect posterior at many `theta` at once.

use rustc_hash::{FxHashMap, FxHashSet};

use nalgebra::{DMatrix, DVector, SymmetricEigen};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::engine::model::{
    FilterOutput, FilterPlan, Hyper, LANES, ModelError, Series, StaticPrior,
    augmented_filter_batch, augmented_filter_planned,
};

/// Number of hyperparameters.
pub const DIM: usize = 4;
/// A point in hyperparameter space (log scale).
pub type Theta = [f64; DIM];
/// Names of the `theta` coordinates' natural-scale quantities.
pub const THETA_NAMES: [&str; DIM] = ["drift_time_days", "drift_sd", "half_life_days", "noise_sd"];

/// Priors of the hyperparameters (§4 defaults table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HyperPriors {
    /// `1/lambda ~ LogNormal(ln median, log_sd)`.
    pub drift_time_median_days: f64,
    /// Log-sd of the drift correlation time.
    pub drift_time_log_sd: f64,
    /// Stationary drift sd `~ HalfNormal(scale)`.
    pub drift_sd_scale: f64,
    /// `ln 2 / kappa ~ LogNormal(ln h0, log_sd)`.
    pub half_life_median_days: f64,
    /// Log-sd of the half-life.
    pub half_life_log_sd: f64,
    /// `sigma_y ~ HalfNormal(scale)` (gaussian).
    pub noise_sd_scale: f64,
    /// Beta family: precision `phi ~ LogNormal(ln median, log_sd)`.
    pub precision_median: f64,
    /// Log-sd of the precision.
    pub precision_log_sd: f64,
}

/// All priors of one fit: hyperparameters and static coefficients.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Priors {
    /// Hyperparameter priors.
    pub hyper: HyperPriors,
    /// `(mu, beta_j...)` prior means and sds.
    pub statics: StaticPrior,
}

/// `theta` to the model's hyperparameters.
pub fn hyper_of(theta: &Theta) -> Hyper {
    Hyper {
        lambda: (-theta[0]).exp(),
        drift_sd: theta[1].exp(),
        kappa: std::f64::consts::LN_2 / theta[2].exp(),
        sigma_y: theta[3].exp(),
    }
}

/// The log prior density of `theta` (on the log scale, Jacobians
/// included), with the priors' constants worked out once: an evaluator
/// computes it at every point.
#[derive(Debug, Clone, Copy)]
pub struct LogPrior {
    /// `ln median` of the drift time and of the half-life.
    ln_median: [f64; 2],
    /// Their log-sds.
    log_sd: [f64; 2],
    /// HalfNormal scales of the drift sd and the noise sd.
    scale: [f64; 2],
    /// The normalising constants: of the first three coordinates, and of the fourth.
    constant: [f64; 2],
}

impl LogPrior {
    /// The log prior of `p`.
    pub fn new(p: &HyperPriors) -> LogPrior {
        let half_log_2pi = 0.5 * (2.0 * std::f64::consts::PI).ln();
        // ln X ~ N(ln median, log_sd^2): density of ln X itself.
        let log_normal = |log_sd: f64| -log_sd.ln() - half_log_2pi;
        // X ~ HalfNormal(scale): 2 / (sqrt(2 pi) scale), times the Jacobian X.
        let half_normal = |scale: f64| (2.0 / (2.0 * std::f64::consts::PI).sqrt() / scale).ln();
        LogPrior {
            ln_median: [p.drift_time_median_days.ln(), p.half_life_median_days.ln()],
            log_sd: [p.drift_time_log_sd, p.half_life_log_sd],
            scale: [p.drift_sd_scale, p.noise_sd_scale],
            constant: [
                log_normal(p.drift_time_log_sd)
                    + half_normal(p.drift_sd_scale)
                    + log_normal(p.half_life_log_sd),
                half_normal(p.noise_sd_scale),
            ],
        }
    }

    /// The worked-out constants in the order a GPU kernel reads them:
    /// `ln_median[2], log_sd[2], scale[2], constant[2]`.
    pub fn constants(&self) -> [f64; 8] {
        [
            self.ln_median[0],
            self.ln_median[1],
            self.log_sd[0],
            self.log_sd[1],
            self.scale[0],
            self.scale[1],
            self.constant[0],
            self.constant[1],
        ]
    }

    /// At the first `dims` coordinates of `theta`; the fourth, `ln sigma_y`,
    /// only for gaussian.
    pub fn at(&self, theta: &Theta, dims: usize) -> f64 {
        let z0 = (theta[0] - self.ln_median[0]) / self.log_sd[0];
        let z2 = (theta[2] - self.ln_median[1]) / self.log_sd[1];
        let x1 = theta[1].exp() / self.scale[0];
        let mut lp = self.constant[0] - 0.5 * (z0 * z0 + z2 * z2) - 0.5 * x1 * x1 + theta[1];
        if dims > 3 {
            let x3 = theta[3].exp() / self.scale[1];
            lp += self.constant[1] - 0.5 * x3 * x3 + theta[3];
        }
        lp
    }
}

/// Log prior density of the first `dims` coordinates of `theta` (see [`LogPrior`]).
pub fn log_prior(theta: &Theta, p: &HyperPriors, dims: usize) -> f64 {
    LogPrior::new(p).at(theta, dims)
}

/// The prior medians, a natural starting point.
pub fn prior_center(p: &HyperPriors) -> Theta {
    // HalfNormal(s) has median 0.674 s.
    [
        p.drift_time_median_days.ln(),
        (0.674 * p.drift_sd_scale).ln(),
        p.half_life_median_days.ln(),
        (0.674 * p.noise_sd_scale).ln(),
    ]
}

/// The log posterior at one `theta` with the conditional posterior of `b`.
#[derive(Debug, Clone)]
pub struct Eval {
    /// Where.
    pub theta: Theta,
    /// `log p(y | theta) + log p(theta)`.
    pub log_post: f64,
    /// `b | theta, y`.
    pub filter: FilterOutput,
}

/// The posterior over `theta` for one model: the interface inference works
/// against, and the batch seam a GPU backend implements.
pub trait Evaluator: Sync {
    /// How many leading coordinates of `theta` are free (3 without `sigma_y`, else 4).
    fn dims(&self) -> usize;
    /// Where the mode search starts (the prior centre).
    fn start(&self) -> Theta;
    /// The log posterior and conditional effect posterior at one point;
    /// `None` where the model cannot be evaluated.
    fn eval(&self, theta: &Theta) -> Option<Eval>;
    /// Many points at once. The CPU default splits them over up to `threads`
    /// threads (callers that already run one fit per core pass 1); a GPU
    /// backend evaluates the whole batch on the device.
    fn eval_batch(&self, thetas: &[Theta], threads: usize) -> Vec<Option<Eval>> {
        on_threads(thetas, threads, self.min_split(), |part| {
            part.iter().map(|t| self.eval(t)).collect()
        })
    }
    /// The log posterior the mode search minimises: by default `eval`'s; an
    /// evaluator with a cheaper approximation (the Laplace one, without
    /// importance draws) gives that, and says so in
    /// [`Self::search_is_approximate`].
    fn search_log_post(&self, theta: &Theta) -> Option<f64> {
        self.eval(theta).map(|e| e.log_post)
    }
    /// Whether [`Self::search_log_post`] is an approximation (the mode's
    /// exact value is then evaluated on its own).
    fn search_is_approximate(&self) -> bool {
        false
    }
    /// The smallest batch worth splitting over threads: a thread costs tens
    /// of microseconds to start, so cheap evaluations need many points.
    fn min_split(&self) -> usize {
        64
    }
}

/// Splits a batch over up to `threads` scoped threads (batches smaller than
/// `min_split` stay on the caller's), each running `eval_part` on its
/// share, in order.
pub(crate) fn on_threads<I: Sync, T: Send>(
    thetas: &[I],
    threads: usize,
    min_split: usize,
    eval_part: impl Fn(&[I]) -> Vec<T> + Sync,
) -> Vec<T> {
    if threads <= 1 || thetas.len() < min_split.max(2) {
        return eval_part(thetas);
    }
    let chunk = thetas.len().div_ceil(threads);
    let eval_part = &eval_part;
    std::thread::scope(|scope| {
        let handles: Vec<_> = thetas
            .chunks(chunk)
            .map(|part| scope.spawn(move || eval_part(part)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// The gaussian family's evaluator: one augmented filter pass per point.
pub struct CpuEvaluator<'a> {
    /// The data.
    pub series: &'a Series,
    /// The priors.
    pub priors: &'a Priors,
    /// The series' filter plan, made once for every pass.
    plan: FilterPlan,
    /// The hyperparameters' log prior.
    log_prior: LogPrior,
}

impl<'a> CpuEvaluator<'a> {
    /// The evaluator of `series` under `priors`.
    pub fn new(series: &'a Series, priors: &'a Priors) -> Self {
        CpuEvaluator {
            series,
            priors,
            plan: FilterPlan::of(series),
            log_prior: LogPrior::new(&priors.hyper),
        }
    }
}

/// True when every free coordinate is finite and within e^-20..e^20: beyond
/// that nothing is plausible, and the filters rely on the bound.
pub fn theta_in_range(theta: &Theta, dims: usize) -> bool {
    theta[..dims]
        .iter()
        .all(|v| v.is_finite() && v.abs() <= 20.0)
}

impl Evaluator for CpuEvaluator<'_> {
    fn dims(&self) -> usize {
        DIM
    }

    fn start(&self) -> Theta {
        prior_center(&self.priors.hyper)
    }

    fn eval(&self, theta: &Theta) -> Option<Eval> {
        if !theta_in_range(theta, DIM) {
            return None;
        }
        let filter = augmented_filter_planned(
            self.series,
            &self.plan,
            &self.series.y,
            &hyper_of(theta),
            &self.priors.statics,
            None,
        );
        self.complete(theta, filter.ok()?)
    }

    /// [`LANES`] points a filter pass ([`augmented_filter_batch`]): the same
    /// results as one at a time.
    fn eval_batch(&self, thetas: &[Theta], threads: usize) -> Vec<Option<Eval>> {
        on_threads(thetas, threads, self.min_split(), |part| {
            let mut out = Vec::with_capacity(part.len());
            let mut groups = part.chunks_exact(LANES);
            for group in &mut groups {
                if !group.iter().all(|t| theta_in_range(t, DIM)) {
                    out.extend(group.iter().map(|t| self.eval(t)));
                    continue;
                }
                let hs: [Hyper; LANES] = std::array::from_fn(|l| hyper_of(&group[l]));
                let filters = augmented_filter_batch(
                    self.series,
                    &self.plan,
                    &self.series.y,
                    &hs,
                    &self.priors.statics,
                );
                for (theta, filter) in group.iter().zip(filters) {
                    out.push(filter.ok().and_then(|f| self.complete(theta, f)));
                }
            }
            out.extend(groups.remainder().iter().map(|t| self.eval(t)));
            out
        })
    }
}

impl CpuEvaluator<'_> {
    /// The log posterior at `theta` from its filter pass.
    fn complete(&self, theta: &Theta, filter: FilterOutput) -> Option<Eval> {
        let log_post = filter.log_lik + self.log_prior.at(theta, DIM);
        log_post.is_finite().then_some(Eval {
            theta: *theta,
            log_post,
            filter,
        })
    }
}

/// A weighted mixture of the conditional effect posteriors.
#[derive(Debug, Clone)]
pub struct Mixture {
    /// Normalised weights.
    pub weights: Vec<f64>,
    /// The components (theta, b mean, b covariance).
    pub components: Vec<Eval>,
}

/// Draws a mixture component by its weight: the running sums of the
/// weights, searched for a uniform draw.
pub struct ComponentPicker {
    cumulative: Vec<f64>,
}

impl ComponentPicker {
    /// The picker of `mix`'s components.
    pub fn of(mix: &Mixture) -> ComponentPicker {
        let mut acc = 0.0;
        ComponentPicker {
            cumulative: mix
                .weights
                .iter()
                .map(|w| {
                    acc += w;
                    acc
                })
                .collect(),
        }
    }

    /// One component's index, drawn from `rng`.
    pub fn pick(&self, rng: &mut impl rand::Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let u = rng.random::<f64>() * total;
        self.cumulative
            .partition_point(|&c| c < u)
            .min(self.cumulative.len().saturating_sub(1))
    }
}

/// Minimises `f` by Nelder–Mead over the first `n` coordinates of `start`
/// (the others stay as they are), with initial step `step`.
fn nelder_mead(
    f: &mut dyn FnMut(&Theta) -> f64,
    start: Theta,
    n: usize,
    step: f64,
    max_evals: usize,
) -> (Theta, f64, usize) {
    let mut simplex: Vec<(Theta, f64)> = Vec::with_capacity(n + 1);
    simplex.push((start, f(&start)));
    for i in 0..n {
        let mut p = start;
        p[i] += step;
        simplex.push((p, f(&p)));
    }
    let mut evals = n + 1;
    while evals < max_evals {
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        let (best, worst) = (simplex[0].1, simplex[n].1);
        if (worst - best).abs() < 1e-7 * (1.0 + best.abs()) {
            break;
        }
        let mut centroid = start;
        for k in 0..n {
            centroid[k] = simplex[..n].iter().map(|(p, _)| p[k]).sum::<f64>() / n as f64;
        }
        let along = |t: f64| -> Theta {
            let mut q = start;
            for k in 0..n {
                q[k] = centroid[k] + t * (simplex[n].0[k] - centroid[k]);
            }
            q
        };
        let xr = along(-1.0);
        let fr = f(&xr);
        evals += 1;
        if fr < simplex[0].1 {
            let xe = along(-2.0);
            let fe = f(&xe);
            evals += 1;
            simplex[n] = if fe < fr { (xe, fe) } else { (xr, fr) };
        } else if fr < simplex[n - 1].1 {
            simplex[n] = (xr, fr);
        } else {
            let t = if fr < simplex[n].1 { -0.5 } else { 0.5 };
            let xc = along(t);
            let fc = f(&xc);
            evals += 1;
            if fc < simplex[n].1.min(fr) {
                simplex[n] = (xc, fc);
            } else {
                let best_point = simplex[0].0;
                for item in simplex.iter_mut().skip(1) {
                    for (x, b) in item.0.iter_mut().zip(best_point).take(n) {
                        *x = b + 0.5 * (*x - b);
                    }
                    item.1 = f(&item.0);
                    evals += 1;
                }
            }
        }
    }
    simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
    (simplex[0].0, simplex[0].1, evals)
}

/// Settings of the grid integration.
#[derive(Debug, Clone, Copy)]
pub struct GridOptions {
    /// Lattice step in whitened (posterior-sd) units.
    pub step: f64,
    /// Keep points whose log posterior is within this of the maximum. 7:
    /// on the same 32 series as `check_cutoff_drop`, the worst errors against
    /// the fine reference were 0.0042 sd in the mean, 0.51% in the sd and
    /// 0.0012 in P(better by MID) (8 gave 0.0034, 0.41%, 0.0011), all within
    /// the error check's tolerances, with 15% fewer evaluations; a fit whose
    /// region is too narrow is widened by the check.
    pub cutoff: f64,
    /// How much narrower the region of the error check is. 2 log units:
    /// against a fine reference grid (step 0.5, cutoff 12) on 32 series of
    /// 21 to 112 days, fits checked this way were as close as with 3 (worst
    /// 0.0034 sd in the mean, 0.41% in the sd, 0.001 in P(better by MID))
    /// with 19% fewer evaluations: 3 sent half of a simulator's fits to a
    /// wider-region retry that did not improve the worst error.
    pub check_cutoff_drop: f64,
    /// Points more than `cutoff - grow_margin` below the maximum are summed
    /// (when within `cutoff`) but do not grow the region further: in four
    /// dimensions most of a lattice region's evaluations are its outer
    /// shell, and the shell of the last log units adds little to the sums.
    /// 1.5: on the 64 series of `fit::tests::grid_error_survey`, the worst
    /// errors against the fine reference grid went from 0.0033 sd in the
    /// mean, 0.54% in the sd and 0.0016 in P(better by MID) (0: every kept
    /// point grows the region) to 0.0065 sd, 0.62% and 0.0027, within the
    /// error check's tolerances, with 37% fewer evaluations in the
    /// simulator's fits; 2 gave 0.0081 sd, 3 went past the sd tolerance
    /// (1.07%). The check's narrower region (`cutoff - check_cutoff_drop`)
    /// must lie inside the grown one, so that it is summed in full.
    pub grow_margin: f64,
    /// Safety cap on lattice points.
    pub max_points: usize,
    /// Non-gaussian families: antithetic pairs of importance draws each
    /// point starts with (a fit adds more where its Monte Carlo error
    /// needs them; [`IS_PAIRS`] says why 6).
    pub importance_pairs: usize,
    /// CPU threads one fit may use for its lattice evaluations.
    pub threads: usize,
}

impl Default for GridOptions {
    fn default() -> Self {
        GridOptions {
            step: 1.5,
            cutoff: 7.0,
            check_cutoff_drop: 2.0,
            grow_margin: 1.5,
            max_points: 40_000,
            importance_pairs: IS_PAIRS,
            threads: default_threads(),
        }
    }
}

/// Antithetic pairs of importance draws each hyperparameter point starts
/// with (non-gaussian families); `mc_error::refine` then adds draws where
/// the fit's Monte Carlo error comes from, until it is within tolerance.
/// With draws independent from point to point, few at every point and more
/// where needed beat many everywhere. 12 beat 24 (`bench/families.sh 365`:
/// 72, 83, 59 and 257 ms a fit for poisson, bernoulli, binomial and beta,
/// against 123, 91, 76 and 337 ms). Since the efficient importance
/// proposal, 6 beat 12: `bench sbc --mc-check` (84 days, seed 11) took 16%
/// less time for beta (200 replications), 10% for bernoulli (200) and 11%
/// for Student-t noise (150), with every fit converged, rank chi-squares of
/// 11.7, 2.9 and 3.9 (9 df), and the fits' own error estimate against the
/// observed seed-to-seed spread at ratios 1.04, 0.92 and 0.92 (1.01, 0.95
/// and 1.05 at 12; the spread itself 0.014, 0.009 and 0.014 posterior sd,
/// against 0.012, 0.007 and 0.015); magnesium-migraine's calibration took
/// 56.5 s instead of 64.3 s, to thresholds 0.9766 and 0.9763; and the seed
/// test (`fit::tests::non_gaussian_effects_do_not_depend_on_the_seed`)
/// passed at both.
pub const IS_PAIRS: usize = 6;

/// Up to four of the machine's cores, asked once: the answer reads cgroup
/// files, and a simulator makes thousands of fits a second.
fn default_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(4)
    })
}

/// Result of a grid integration.
#[derive(Debug, Clone)]
pub struct GridResult {
    /// The full mixture.
    pub mixture: Mixture,
    /// For each effect coefficient (`b[1..]`), its marginal under the sums
    /// of the error check: the first lattice alone, the shifted lattice
    /// alone, and both on the narrower region. Empty when a lattice kept no
    /// point (the check then cannot pass).
    pub checks: Vec<[Marginal; 3]>,
    /// The same three sums as membership of the mixture's components (the
    /// first lattice, the shifted one, the narrower region): for the
    /// Monte Carlo error of the check itself (`mc_error`).
    pub check_views: [Vec<bool>; 3],
    /// Posterior evaluations made (mode search, Hessian, lattice).
    pub evaluations: usize,
    /// Lattice points kept.
    pub points: usize,
    /// The mode found.
    pub mode: Theta,
    /// The work a retry with a wider region can reuse.
    pub reuse: GridReuse,
}

/// The smallest curvature of `-log p` the whitening uses (a flat direction
/// is explored with steps of at most `step / 0.5` on the log scale).
const WHITENING_FLOOR: f64 = 0.25;

/// The posterior mode (Nelder–Mead) and the whitening map `V diag(1/sqrt(eig))`
/// of the Hessian of `-log p` there (central differences).
fn whitening(
    ev: &dyn Evaluator,
    threads: usize,
    evaluations: &mut usize,
) -> Result<(Theta, f64, DMatrix<f64>), ModelError> {
    let dims = ev.dims();
    let mut neg = |t: &Theta| -> f64 { ev.search_log_post(t).map_or(f64::INFINITY, |lp| -lp) };
    let start = ev.start();
    let (m1, _, n1) = nelder_mead(&mut neg, start, dims, 0.7, 1500);
    let (mode, f_search, n2) = nelder_mead(&mut neg, m1, dims, 0.15, 1500);
    *evaluations += n1 + n2;
    let approximate = ev.search_is_approximate();
    let f_mode = if approximate {
        // The lattice's cutoffs need the exact value.
        *evaluations += 1;
        ev.eval(&mode).map_or(f64::INFINITY, |e| -e.log_post)
    } else {
        f_search
    };
    tracing::debug!(evaluations = n1 + n2, "posterior mode found");
    if !f_mode.is_finite() {
        return Err(ModelError::Input(
            "the posterior could not be evaluated anywhere near the prior".into(),
        ));
    }
    // Hessian of -log p by central differences, its points in one batch.
    let h = 0.02;
    let shifted = |d: &[(usize, f64)]| -> Theta {
        let mut t = mode;
        for &(i, s) in d {
            t[i] += s;
        }
        t
    };
    let mut points = Vec::new();
    for i in 0..dims {
        points.push(shifted(&[(i, h)]));
        points.push(shifted(&[(i, -h)]));
        for j in 0..i {
            for (si, sj) in [(h, h), (h, -h), (-h, h), (-h, -h)] {
                points.push(shifted(&[(i, si), (j, sj)]));
            }
        }
    }
    *evaluations += points.len();
    // The curvature of the search's own function: where that is an
    // approximation (Laplace, without importance draws), it is smooth, while
    // the exact values carry each point's independent Monte Carlo error,
    // which differences 0.02 apart would magnify; the lattice only needs a
    // good whitening.
    let (values, f_center): (Vec<f64>, f64) = if approximate {
        let values = on_threads(&points, threads, ev.min_split(), |part| {
            part.iter()
                .map(|t| ev.search_log_post(t).map_or(f64::INFINITY, |lp| -lp))
                .collect()
        });
        (values, f_search)
    } else {
        let values = ev
            .eval_batch(&points, threads)
            .into_iter()
            .map(|e| e.map_or(f64::INFINITY, |e| -e.log_post))
            .collect();
        (values, f_mode)
    };
    let mut next = values.iter().copied();
    let mut take = || next.next().unwrap_or(f64::INFINITY);
    let mut hess = DMatrix::<f64>::zeros(dims, dims);
    for i in 0..dims {
        let (fp, fm) = (take(), take());
        hess[(i, i)] = (fp - 2.0 * f_center + fm) / (h * h);
        for j in 0..i {
            let (fpp, fpm, fmp, fmm) = (take(), take(), take(), take());
            let v = (fpp - fpm - fmp + fmm) / (4.0 * h * h);
            hess[(i, j)] = v;
            hess[(j, i)] = v;
        }
    }
    // A mode within a difference step of the range's edge (a noise sd near
    // e^-20, where the drift explains the data alone) leaves some of these
    // points unevaluable: that coordinate's curvature is unknown, and
    // infinities would turn the whole whitening into NaN. It gets the
    // floor's curvature and no correlation, and the lattice finds the edge.
    let edge: Vec<bool> = (0..dims).map(|i| !hess[(i, i)].is_finite()).collect();
    for i in 0..dims {
        for j in 0..dims {
            if edge[i] || edge[j] || !hess[(i, j)].is_finite() {
                hess[(i, j)] = if i == j { WHITENING_FLOOR } else { 0.0 };
            }
        }
    }
    // Whitening: theta = mode + V diag(sqrt(1/eig)) z, with eigenvalues floored
    // so that a flat direction is explored with a bounded step.
    let eig = SymmetricEigen::new(hess);
    let mut map = DMatrix::<f64>::zeros(dims, dims);
    for k in 0..dims {
        let e = eig.eigenvalues[k].max(WHITENING_FLOOR);
        for r in 0..dims {
            map[(r, k)] = eig.eigenvectors[(r, k)] / e.sqrt();
        }
    }
    Ok((mode, f_mode, map))
}

/// Deterministic integration over `theta` on a lattice grown from the mode.
pub fn integrate_grid(ev: &dyn Evaluator, opts: &GridOptions) -> Result<GridResult, ModelError> {
    integrate_grid_reusing(ev, opts, None)
}

/// What one grid integration hands to a retry: the mode and the whitening
/// (valid at any step) and every point already evaluated (valid at the same
/// step: a wider region then costs only its new shell).
#[derive(Debug, Clone)]
pub struct GridReuse {
    step: f64,
    mode: Theta,
    f_mode: f64,
    map: DMatrix<f64>,
    evaluated: [Lattice; 2],
}

/// The points of one lattice evaluated so far: a map from lattice index
/// (packed, [`lattice_key`]) to a slot in `evals` (so the map moves small
/// entries as it grows, not evals).
#[derive(Debug, Clone, Default)]
struct Lattice {
    slot: FxHashMap<u64, u32>,
    evals: Vec<Option<Eval>>,
}

/// How far from the mode, in steps along any axis, a lattice may grow: its
/// indices then fit 16 bits each, and a point's four pack into one word
/// ([`lattice_key`]). Practically out of reach: `GridOptions::max_points`
/// stops growth long before, in all but a one-dimensional sliver tens of
/// thousands of steps long.
const LATTICE_REACH: i32 = 30_000;

// Four 16-bit indices fill one word.
const _: () = assert!(16 * DIM <= 64);

/// A lattice index as one word, 16 bits a coordinate: hashing one word
/// instead of four, in tables half the size, had been a twentieth of a
/// short series' fit. Indices are within [`LATTICE_REACH`].
fn lattice_key(n: &[i32; DIM]) -> u64 {
    debug_assert!(n.iter().all(|c| c.abs() <= LATTICE_REACH));
    n.iter()
        .fold(0u64, |key, &c| (key << 16) | u64::from(c as i16 as u16))
}

/// Room for the points of a typical lattice, reserved up front so that the
/// maps and vectors do not grow (and copy) step by step.
const LATTICE_CAPACITY: usize = 2048;

impl Lattice {
    fn sized() -> Lattice {
        let mut slot = FxHashMap::default();
        slot.reserve(LATTICE_CAPACITY);
        Lattice {
            slot,
            evals: Vec::with_capacity(LATTICE_CAPACITY),
        }
    }

    fn get(&self, n: &[i32; DIM]) -> Option<&Option<Eval>> {
        self.slot
            .get(&lattice_key(n))
            .map(|&i| &self.evals[i as usize])
    }

    fn contains(&self, n: &[i32; DIM]) -> bool {
        self.slot.contains_key(&lattice_key(n))
    }

    fn insert(&mut self, n: [i32; DIM], e: Option<Eval>) {
        self.slot.insert(lattice_key(&n), self.evals.len() as u32);
        self.evals.push(e);
    }
}

impl GridReuse {
    /// Nothing to reuse.
    pub fn empty() -> GridReuse {
        GridReuse {
            step: f64::NAN,
            mode: [0.0; DIM],
            f_mode: f64::NAN,
            map: DMatrix::zeros(0, 0),
            evaluated: [Lattice::default(), Lattice::default()],
        }
    }
}

/// [`integrate_grid`], reusing an earlier integration's work: its mode and
/// whitening always, and its evaluated points when the step is the same (a
/// retry that only widens the region).
pub fn integrate_grid_reusing(
    ev: &dyn Evaluator,
    opts: &GridOptions,
    reuse: Option<GridReuse>,
) -> Result<GridResult, ModelError> {
    let dims = ev.dims();
    let mut evaluations = 0;
    let (mode, f_mode, map, mut evaluated) = match reuse {
        Some(r) if r.map.nrows() == dims && r.step == opts.step => {
            (r.mode, r.f_mode, r.map, r.evaluated)
        }
        // Another step: the mode and the whitening still hold, the points do not.
        Some(r) if r.map.nrows() == dims => (
            r.mode,
            r.f_mode,
            r.map,
            [Lattice::sized(), Lattice::sized()],
        ),
        _ => {
            let (mode, f_mode, map) = whitening(ev, opts.threads, &mut evaluations)?;
            (mode, f_mode, map, [Lattice::sized(), Lattice::sized()])
        }
    };
    let point = |n: &[i32; DIM], offset: f64| -> Theta {
        let mut t = mode;
        for r in 0..dims {
            for (k, nk) in n.iter().enumerate().take(dims) {
                t[r] += map[(r, k)] * (f64::from(*nk) + offset) * opts.step;
            }
        }
        t
    };
    // Two lattices, the second shifted by half a step in every coordinate:
    // together a finer (body-centred) rule, and their difference is the
    // step-size error check.
    let mut max_lp = -f_mode;
    let mut kept_keys: Vec<Vec<[i32; DIM]>> = Vec::with_capacity(2);
    for (li, offset) in [0.0, 0.5].into_iter().enumerate() {
        let cache = &mut evaluated[li];
        let mut seen: FxHashSet<u64> = FxHashSet::default();
        seen.reserve(LATTICE_CAPACITY);
        let mut kept: Vec<[i32; DIM]> = Vec::with_capacity(LATTICE_CAPACITY);
        let mut frontier = vec![[0i32; DIM]];
        seen.insert(lattice_key(&[0; DIM]));
        while !frontier.is_empty() && seen.len() < opts.max_points {
            let missing: Vec<[i32; DIM]> = frontier
                .iter()
                .filter(|n| !cache.contains(n))
                .copied()
                .collect();
            let thetas: Vec<Theta> = missing.iter().map(|n| point(n, offset)).collect();
            let results = ev.eval_batch(&thetas, opts.threads);
            evaluations += thetas.len();
            for (n, e) in missing.into_iter().zip(results) {
                cache.insert(n, e);
            }
            let mut next = Vec::new();
            for n in &frontier {
                let Some(Some(e)) = cache.get(n) else {
                    continue;
                };
                max_lp = max_lp.max(e.log_post);
                if e.log_post < max_lp - opts.cutoff {
                    continue;
                }
                kept.push(*n);
                if e.log_post < max_lp - (opts.cutoff - opts.grow_margin) {
                    continue;
                }
                for k in 0..dims {
                    for d in [-1, 1] {
                        let mut m = *n;
                        m[k] += d;
                        if m[k].abs() <= LATTICE_REACH && seen.insert(lattice_key(&m)) {
                            next.push(m);
                        }
                    }
                }
            }
            frontier = next;
        }
        kept_keys.push(kept);
    }
    // Each kept point with its weight exp(log p - max), lattice by lattice.
    let lattices: Vec<Vec<(&Eval, f64)>> = kept_keys
        .iter()
        .zip(&evaluated)
        .map(|(keys, cache)| {
            keys.iter()
                .filter_map(|n| cache.get(n).and_then(Option::as_ref))
                .filter(|e| e.log_post >= max_lp - opts.cutoff)
                .map(|e| (e, (e.log_post - max_lp).exp()))
                .collect()
        })
        .collect();
    let points = lattices.iter().map(Vec::len).sum();
    if points == 0 {
        return Err(ModelError::Input(
            "the posterior could not be evaluated around its mode".into(),
        ));
    }
    let both = || lattices.iter().flatten();
    let total: f64 = both().map(|(_, w)| w).sum();
    let mixture = Mixture {
        weights: both().map(|(_, w)| w / total).collect(),
        components: both().map(|(e, _)| (*e).clone()).collect(),
    };
    // The error check's sums: each lattice alone, and both on the narrower
    // region, as marginals of each effect coefficient (no copies of the points).
    let narrow_cut = opts.cutoff - opts.check_cutoff_drop;
    let marginals = |parts: Vec<&(&Eval, f64)>| -> Vec<Marginal> {
        let weights: Vec<f64> = parts.iter().map(|(_, w)| *w).collect();
        let evals: Vec<&Eval> = parts.iter().map(|(e, _)| *e).collect();
        let p = evals.first().map_or(0, |e| e.filter.b_mean.len());
        (1..p)
            .map(|c| Marginal::of_parts(&weights, &evals, c))
            .collect()
    };
    let coarse = marginals(lattices[0].iter().collect());
    let shifted = marginals(lattices[1].iter().collect());
    let narrow = marginals(
        both()
            .filter(|(e, _)| e.log_post >= max_lp - narrow_cut)
            .collect(),
    );
    let checks = (0..coarse.len().min(shifted.len()).min(narrow.len()))
        .map(|i| [coarse[i].clone(), shifted[i].clone(), narrow[i].clone()])
        .collect();
    let in_first: Vec<bool> = lattices
        .iter()
        .enumerate()
        .flat_map(|(li, l)| std::iter::repeat_n(li == 0, l.len()))
        .collect();
    let check_views = [
        in_first.clone(),
        in_first.iter().map(|first| !first).collect(),
        both()
            .map(|(e, _)| e.log_post >= max_lp - narrow_cut)
            .collect(),
    ];
    Ok(GridResult {
        points,
        mixture,
        checks,
        check_views,
        evaluations,
        mode,
        reuse: GridReuse {
            step: opts.step,
            mode,
            f_mode,
            map,
            evaluated,
        },
    })
}

/// Settings of the MCMC reference.
#[derive(Debug, Clone, Copy)]
pub struct McmcOptions {
    /// Chains.
    pub chains: usize,
    /// Warm-up iterations per chain (proposal adapted, then discarded).
    pub warmup: usize,
    /// Kept draws per chain.
    pub draws: usize,
    /// Seed.
    pub seed: u64,
}

impl Default for McmcOptions {
    fn default() -> Self {
        McmcOptions {
            chains: 4,
            warmup: 3_000,
            draws: 10_000,
            seed: 1,
        }
    }
}

/// MCMC draws and their diagnostics.
#[derive(Debug, Clone)]
pub struct McmcResult {
    /// Draws per chain, each with its conditional effect posterior.
    pub chains: Vec<Vec<Eval>>,
    /// Acceptance rate per chain after warm-up.
    pub acceptance: Vec<f64>,
}

impl McmcResult {
    /// All draws as an equally weighted mixture.
    pub fn mixture(&self) -> Mixture {
        let components: Vec<Eval> = self.chains.iter().flatten().cloned().collect();
        let n = components.len() as f64;
        Mixture {
            weights: vec![1.0 / n; components.len()],
            components,
        }
    }
}

/// A chain's first point: the prior centre moved by `N(0, 0.5^2)` in each
/// free coordinate, drawn again until the posterior can be evaluated there.
fn dispersed_start(ev: &dyn Evaluator, rng: &mut ChaCha20Rng) -> Eval {
    loop {
        let mut t = ev.start();
        for v in t.iter_mut().take(ev.dims()) {
            let z: f64 = StandardNormal.sample(rng);
            *v += 0.5 * z;
        }
        if let Some(e) = ev.eval(&t) {
            return e;
        }
    }
}

/// Adaptive random-walk Metropolis over `theta` (Haario et al. 2001: proposal
/// covariance `2.38^2 / d` times the running covariance during warm-up, then
/// fixed). Chains start from dispersed points around the prior centre and
/// run on separate threads.
pub fn sample_mcmc(ev: &dyn Evaluator, opts: &McmcOptions) -> McmcResult {
    let dims = ev.dims();
    let run_chain = |c: usize| -> (Vec<Eval>, f64) {
        let mut rng =
            ChaCha20Rng::seed_from_u64(opts.seed.wrapping_mul(1000).wrapping_add(c as u64));
        let mut current = dispersed_start(ev, &mut rng);
        let mut cov = DMatrix::<f64>::identity(dims, dims) * 0.01;
        let mut mean = DVector::from_column_slice(&current.theta[..dims]);
        let mut m2 = DMatrix::<f64>::zeros(dims, dims);
        let mut chol = cov.clone().cholesky().map(|c| c.l());
        let mut kept = Vec::with_capacity(opts.draws);
        let mut accepted = 0usize;
        for it in 0..(opts.warmup + opts.draws) {
            let z = DVector::from_fn(dims, |_, _| -> f64 { StandardNormal.sample(&mut rng) });
            let step = chol.as_ref().map_or_else(|| z.clone() * 0.1, |l| l * &z);
            let mut proposal = current.theta;
            for k in 0..dims {
                proposal[k] += step[k];
            }
            if let Some(e) = ev.eval(&proposal) {
                let u: f64 = rng.random();
                if u.ln() < e.log_post - current.log_post {
                    current = e;
                    if it >= opts.warmup {
                        accepted += 1;
                    }
                }
            }
            if it < opts.warmup {
                // Welford update of the running mean and covariance.
                let x = DVector::from_column_slice(&current.theta[..dims]);
                let n = (it + 2) as f64;
                let delta = &x - &mean;
                mean += &delta / n;
                m2 += &delta * (&x - &mean).transpose();
                if it >= 200 && it % 50 == 0 {
                    cov = &m2 / (n - 1.0) * (2.38 * 2.38 / dims as f64)
                        + DMatrix::<f64>::identity(dims, dims) * 1e-6;
                    if let Some(c) = cov.clone().cholesky() {
                        chol = Some(c.l());
                    }
                }
            } else {
                kept.push(current.clone());
            }
        }
        (kept, accepted as f64 / opts.draws.max(1) as f64)
    };
    let results: Vec<(Vec<Eval>, f64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..opts.chains)
            .map(|c| scope.spawn(move || run_chain(c)))
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    McmcResult {
        acceptance: results.iter().map(|r| r.1).collect(),
        chains: results.into_iter().map(|r| r.0).collect(),
    }
}

/// Central-difference step (in theta's log units) of the NUTS gradient.
const NUTS_FD_STEP: f64 = 1e-5;

/// The acceptance statistic NUTS adapts its step size to.
const NUTS_TARGET_ACCEPT: f64 = 0.95;

impl McmcOptions {
    /// NUTS needs far fewer draws than random-walk Metropolis for the same
    /// effective sample size: 1500 warm-up and 2000 kept draws per chain.
    pub fn nuts_default() -> McmcOptions {
        McmcOptions {
            warmup: 1_500,
            draws: 2_000,
            ..McmcOptions::default()
        }
    }
}

/// Why NUTS could not evaluate a point: outside where the model can be
/// evaluated (a recoverable error, which nuts-rs treats as a divergence).
#[derive(Debug, thiserror::Error)]
#[error("the posterior cannot be evaluated at this point")]
struct OutsideSupport;

impl nuts_rs::LogpError for OutsideSupport {
    fn is_recoverable(&self) -> bool {
        true
    }
}

/// The log posterior over the free coordinates of `theta`, for nuts-rs.
struct NutsTarget<'a> {
    ev: &'a dyn Evaluator,
    dims: usize,
    evaluations: &'a std::sync::atomic::AtomicUsize,
}

impl NutsTarget<'_> {
    fn log_post(&self, free: &[f64]) -> Option<f64> {
        let mut theta = self.ev.start();
        theta[..self.dims].copy_from_slice(free);
        self.evaluations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.ev
            .eval(&theta)
            .map(|e| e.log_post)
            .filter(|v| v.is_finite())
    }
}

impl nuts_rs::HasDims for NutsTarget<'_> {
    fn dim_sizes(&self) -> std::collections::HashMap<String, u64> {
        [("theta".to_string(), self.dims as u64)]
            .into_iter()
            .collect()
    }
}

impl nuts_rs::CpuLogpFunc for NutsTarget<'_> {
    type LogpError = OutsideSupport;
    type FlowParameters = ();
    type ExpandedVector = Vec<f64>;

    fn dim(&self) -> usize {
        self.dims
    }

    fn logp(&mut self, position: &[f64], gradient: &mut [f64]) -> Result<f64, OutsideSupport> {
        let value = self.log_post(position).ok_or(OutsideSupport)?;
        let mut x = position.to_vec();
        for k in 0..self.dims {
            let at = x[k];
            x[k] = at + NUTS_FD_STEP;
            let up = self.log_post(&x).ok_or(OutsideSupport)?;
            x[k] = at - NUTS_FD_STEP;
            let down = self.log_post(&x).ok_or(OutsideSupport)?;
            x[k] = at;
            gradient[k] = (up - down) / (2.0 * NUTS_FD_STEP);
        }
        Ok(value)
    }

    fn expand_vector<R: rand::Rng + ?Sized>(
        &mut self,
        _rng: &mut R,
        position: &[f64],
    ) -> Result<Vec<f64>, nuts_rs::CpuMathError> {
        Ok(position.to_vec())
    }
}

/// NUTS over `theta` (`statistics.md` §4), the MCMC reference the grid is
/// checked against: nuts-rs's multinomial No-U-Turn sampler with its
/// step-size and diagonal mass-matrix adaptation during warm-up, one chain
/// per thread, chains started from dispersed points around the prior centre.
/// The evaluators give the log posterior only, so the gradient is by central
/// differences ([`NUTS_FD_STEP`]). A gradient error changes how far a
/// trajectory travels, not the target: the numerical gradient is a fixed
/// function of the position, so the leapfrog map stays reversible and
/// volume-preserving, and every point of a trajectory is weighted by its
/// exact log posterior.
pub fn sample_nuts(ev: &dyn Evaluator, opts: &McmcOptions) -> McmcNutsResult {
    use nuts_rs::{Chain, Settings};
    let center = ev.start();
    let dims = ev.dims();
    let evaluations = std::sync::atomic::AtomicUsize::new(0);
    let run_chain = |c: usize| -> Option<(Vec<Eval>, usize)> {
        let mut rng =
            ChaCha20Rng::seed_from_u64(opts.seed.wrapping_mul(1000).wrapping_add(c as u64));
        let start = dispersed_start(ev, &mut rng).theta[..dims].to_vec();
        let mut settings = nuts_rs::DiagNutsSettings {
            num_tune: opts.warmup as u64,
            num_draws: opts.draws as u64,
            ..Default::default()
        };
        // Smaller steps than the default 0.8 target: the long tail of the
        // noise sd, where the drift absorbs the noise (statistics.md §4),
        // otherwise gives divergent transitions.
        settings.adapt_options.step_size_settings.target_accept = NUTS_TARGET_ACCEPT;
        let target = NutsTarget {
            ev,
            dims,
            evaluations: &evaluations,
        };
        let mut chain = settings
            .new_chain(c as u64, nuts_rs::CpuMath::new(target), &mut rng)
            .ok()?;
        chain.set_position(&start).ok()?;
        let mut kept = Vec::with_capacity(opts.draws);
        let mut divergences = 0;
        for _ in 0..(opts.warmup + opts.draws) {
            let (position, progress) = chain.draw().ok()?;
            if progress.tuning {
                continue;
            }
            divergences += usize::from(progress.diverging);
            let mut theta = center;
            theta[..dims].copy_from_slice(&position);
            evaluations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            kept.push(ev.eval(&theta)?);
        }
        Some((kept, divergences))
    };
    let results: Vec<Option<(Vec<Eval>, usize)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..opts.chains)
            .map(|c| scope.spawn(move || run_chain(c)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().ok().flatten())
            .collect()
    });
    let failed = results.iter().filter(|r| r.is_none()).count();
    let results: Vec<(Vec<Eval>, usize)> = results.into_iter().flatten().collect();
    McmcNutsResult {
        divergences: results.iter().map(|r| r.1).collect(),
        draws: McmcResult {
            acceptance: Vec::new(),
            chains: results.into_iter().map(|r| r.0).collect(),
        },
        failed_chains: failed,
        evaluations: evaluations.into_inner(),
    }
}

/// What [`sample_nuts`] returns.
#[derive(Debug, Clone)]
pub struct McmcNutsResult {
    /// The draws (as from the Metropolis reference; no acceptance rates).
    pub draws: McmcResult,
    /// Divergent transitions per chain after warm-up.
    pub divergences: Vec<usize>,
    /// Chains that stopped on an unrecoverable error (none expected).
    pub failed_chains: usize,
    /// Posterior evaluations, gradients included.
    pub evaluations: usize,
}

/// Standard normal CDF `Phi(x)`.
pub fn norm_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

/// Standard normal quantile `Phi^-1(p)`.
pub fn norm_quantile(p: f64) -> f64 {
    -std::f64::consts::SQRT_2 * statrs::function::erf::erfc_inv(2.0 * p)
}

/// Marginal of coefficient `c` under a mixture: mean, sd, and a quantile function.
#[derive(Debug, Clone)]
pub struct Marginal {
    weights: Vec<f64>,
    means: Vec<f64>,
    sds: Vec<f64>,
}

impl Marginal {
    /// Coefficient `c` of `b` under the mixture of `parts` with weights
    /// proportional to `weights` (normalised here).
    fn of_parts(weights: &[f64], parts: &[&Eval], c: usize) -> Marginal {
        let total: f64 = weights.iter().sum();
        Marginal {
            weights: weights.iter().map(|w| w / total).collect(),
            means: parts.iter().map(|e| e.filter.b_mean[c]).collect(),
            sds: parts
                .iter()
                .map(|e| e.filter.b_cov[(c, c)].max(0.0).sqrt())
                .collect(),
        }
    }

    /// Coefficient `c` of `b` under `mix`.
    pub fn of(mix: &Mixture, c: usize) -> Marginal {
        Marginal {
            weights: mix.weights.clone(),
            means: mix.components.iter().map(|e| e.filter.b_mean[c]).collect(),
            sds: mix
                .components
                .iter()
                .map(|e| e.filter.b_cov[(c, c)].max(0.0).sqrt())
                .collect(),
        }
    }

    /// Mixture mean.
    pub fn mean(&self) -> f64 {
        self.weights
            .iter()
            .zip(&self.means)
            .map(|(w, m)| w * m)
            .sum()
    }

    /// Mixture sd.
    pub fn sd(&self) -> f64 {
        let mean = self.mean();
        let second: f64 = self
            .weights
            .iter()
            .zip(self.means.iter().zip(&self.sds))
            .map(|(w, (m, s))| w * (s * s + m * m))
            .sum();
        (second - mean * mean).max(0.0).sqrt()
    }

    /// `P(sign * b_c > threshold)`, exact under the mixture.
    pub fn prob_above(&self, sign: f64, threshold: f64) -> f64 {
        self.weights
            .iter()
            .zip(self.means.iter().zip(&self.sds))
            .map(|(w, (m, s))| {
                let x = sign * m - threshold;
                if *s > 0.0 {
                    w * norm_cdf(x / s)
                } else {
                    w * f64::from(u8::from(x > 0.0))
                }
            })
            .sum()
    }

    /// The `p` quantile of the mixture: Halley steps on its CDF (the density
    /// and its slope come with the CDF in the same pass over the components,
    /// so two passes usually reach 1e-12 sd), safeguarded by a bracket that
    /// each step narrows (bisection where a step would leave it).
    pub fn quantile(&self, p: f64) -> f64 {
        let (mean, sd) = (self.mean(), self.sd().max(1e-300));
        let (mut lo, mut hi) = (mean - 40.0 * sd, mean + 40.0 * sd);
        let mut x = mean + sd * norm_quantile(p);
        for _ in 0..60 {
            let (cdf, pdf, slope) = self.cdf_pdf(x);
            let err = cdf - p;
            if err.abs() < 1e-12 {
                break;
            }
            if err < 0.0 {
                lo = x;
            } else {
                hi = x;
            }
            let denominator = 2.0 * pdf * pdf - err * slope;
            let halley = x - 2.0 * err * pdf / denominator;
            if pdf > 0.0 && denominator > 0.0 && halley > lo && halley < hi {
                // Halley converges cubically: after a step this small the
                // error is far below 1e-12 sd, and another pass would only confirm it.
                let small = (halley - x).abs() < 1e-7 * sd;
                x = halley;
                if small {
                    break;
                }
            } else {
                x = 0.5 * (lo + hi);
            }
            if hi - lo < 1e-12 * sd {
                break;
            }
        }
        x
    }

    /// The mixture's CDF, density and density slope at `x`.
    fn cdf_pdf(&self, x: f64) -> (f64, f64, f64) {
        let mut cdf = 0.0;
        let mut pdf = 0.0;
        let mut slope = 0.0;
        let norm = 1.0 / (2.0 * std::f64::consts::PI).sqrt();
        for (w, (m, s)) in self.weights.iter().zip(self.means.iter().zip(&self.sds)) {
            if *s > 0.0 {
                let z = (x - m) / s;
                cdf += w * norm_cdf(z);
                let density = w * (-0.5 * z * z).exp() * norm / s;
                pdf += density;
                slope -= density * z / s;
            } else if x >= *m {
                cdf += w;
            }
        }
        (cdf, pdf, slope)
    }
}

/// One effect in a fit's output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EffectSummary {
    /// Arm key.
    pub arm: String,
    /// Posterior mean of `beta_j` (outcome units, link scale).
    pub mean: f64,
    /// Posterior sd.
    pub sd: f64,
    /// 50% central interval.
    pub ci50: [f64; 2],
    /// 90% central interval.
    pub ci90: [f64; 2],
    /// 95% central interval.
    pub ci95: [f64; 2],
    /// `P(direction * beta_j > MID)`.
    pub p_better_by_mid: f64,
    /// `P(direction * beta_j > 0)`.
    pub p_better: f64,
    /// `P(arm j is the best of all arms, the comparator included)`.
    pub p_best: f64,
    /// Log and logit links: the effect as a ratio and as a difference in
    /// the outcome's own units (`natural`); absent for gaussian, and where
    /// a fit skipped its intervals (simulations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub natural: Option<crate::engine::natural::NaturalEffect>,
}

/// A hyperparameter's posterior on its natural scale.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HyperSummary {
    /// Name.
    pub name: String,
    /// Posterior mean.
    pub mean: f64,
    /// Median.
    pub median: f64,
    /// 90% interval.
    pub ci90: [f64; 2],
}

/// Summaries of a mixture for the arms in `effect_arms` (indices `b[1..]`);
/// the credible intervals only when `intervals` (else NaN).
pub fn summarise_effects(
    mix: &Mixture,
    arm_names: &[String],
    sign: f64,
    mid_threshold: f64,
    p_best: &[f64],
    intervals: bool,
) -> Vec<EffectSummary> {
    arm_names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let m = Marginal::of(mix, i + 1);
            let ci = |lower: f64, upper: f64| -> [f64; 2] {
                if intervals {
                    [m.quantile(lower), m.quantile(upper)]
                } else {
                    [f64::NAN; 2]
                }
            };
            EffectSummary {
                arm: name.clone(),
                mean: m.mean(),
                sd: m.sd(),
                ci50: ci(0.25, 0.75),
                ci90: ci(0.05, 0.95),
                ci95: ci(0.025, 0.975),
                p_better_by_mid: m.prob_above(sign, mid_threshold),
                p_better: m.prob_above(sign, 0.0),
                p_best: p_best[i + 1],
                natural: None,
            }
        })
        .collect()
}

/// `P(arm is best)` for the comparator (index 0) and each effect arm, where
/// arm `j`'s advantage is `sign * beta_j` and the comparator's is 0, among
/// the arms still active (`active[j]`, effect order; the comparator always
/// competes; a dropped arm gets 0). Exact for one active effect; otherwise
/// by [`BEST_DRAWS`] seeded draws from the mixture ([`best_draws`]).
pub fn prob_best(mix: &Mixture, active: &[bool], sign: f64, seed: u64) -> Vec<f64> {
    let n_effects = active.len();
    let live: Vec<usize> = (1..=n_effects).filter(|&j| active[j - 1]).collect();
    if live.len() <= 1 {
        let mut out = vec![0.0; n_effects + 1];
        out[0] = 1.0;
        if let Some(&j) = live.first() {
            let p = Marginal::of(mix, j).prob_above(sign, 0.0);
            out[0] = 1.0 - p;
            out[j] = p;
        }
        return out;
    }
    let mut wins = vec![0usize; n_effects + 1];
    for (_, best) in best_draws(mix, active, sign, seed) {
        wins[best] += 1;
    }
    wins.iter().map(|&w| w as f64 / BEST_DRAWS as f64).collect()
}

/// Draws behind `P(best)` with two or more active effects.
pub const BEST_DRAWS: usize = 20_000;

/// [`BEST_DRAWS`] seeded draws of `b` from the mixture: for each, the
/// component it came from and the best arm (0 the comparator).
pub fn best_draws(mix: &Mixture, active: &[bool], sign: f64, seed: u64) -> Vec<(usize, usize)> {
    let live: Vec<usize> = (1..=active.len()).filter(|&j| active[j - 1]).collect();
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x5eed_0b35);
    let picker = ComponentPicker::of(mix);
    let chols: Vec<Option<DMatrix<f64>>> = mix
        .components
        .iter()
        .map(|e| e.filter.b_cov.clone().cholesky().map(|c| c.l()))
        .collect();
    (0..BEST_DRAWS)
        .map(|_| {
            let k = picker.pick(&mut rng);
            let e = &mix.components[k];
            let p = e.filter.b_mean.len();
            let z = DVector::from_fn(p, |_, _| -> f64 { StandardNormal.sample(&mut rng) });
            let b = match &chols[k] {
                Some(l) => &e.filter.b_mean + l * z,
                None => e.filter.b_mean.clone(),
            };
            let mut best = 0;
            let mut best_value = 0.0;
            for &j in &live {
                let v = sign * b[j];
                if v > best_value {
                    best = j;
                    best_value = v;
                }
            }
            (k, best)
        })
        .collect()
}

/// Posterior summaries of the hyperparameters named in `names` (the free
/// leading coordinates of `theta`) on their natural scale.
pub fn summarise_hyper(mix: &Mixture, names: &[&str]) -> Vec<HyperSummary> {
    (0..names.len())
        .map(|k| {
            let mut pts: Vec<(f64, f64)> = mix
                .components
                .iter()
                .zip(&mix.weights)
                .map(|(e, w)| (e.theta[k].exp(), *w))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let q = |p: f64| -> f64 {
                let mut acc = 0.0;
                for (x, w) in &pts {
                    acc += w;
                    if acc >= p {
                        return *x;
                    }
                }
                pts.last().map_or(f64::NAN, |x| x.0)
            };
            HyperSummary {
                name: names[k].to_string(),
                mean: pts.iter().map(|(x, w)| x * w).sum(),
                median: q(0.5),
                ci90: [q(0.05), q(0.95)],
            }
        })
        .collect()
}

/// Rank-normalised split R-hat and bulk ESS (Vehtari et al. 2021) of one
/// scalar across chains.
pub fn rhat_ess(chains: &[Vec<f64>]) -> (f64, f64) {
    // Split each chain in two halves.
    let mut split: Vec<Vec<f64>> = Vec::new();
    for c in chains {
        let half = c.len() / 2;
        if half < 4 {
            return (f64::NAN, 0.0);
        }
        split.push(c[..half].to_vec());
        split.push(c[c.len() - half..].to_vec());
    }
    // Rank-normalise all draws together.
    let mut all: Vec<(f64, usize, usize)> = Vec::new();
    for (ci, c) in split.iter().enumerate() {
        for (i, &v) in c.iter().enumerate() {
            all.push((v, ci, i));
        }
    }
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let s = all.len() as f64;
    let mut z: Vec<Vec<f64>> = split.iter().map(|c| vec![0.0; c.len()]).collect();
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        let value = norm_quantile((rank - 0.375) / (s + 0.25));
        for item in &all[i..=j] {
            z[item.1][item.2] = value;
        }
        i = j + 1;
    }
    let m = z.len() as f64;
    let n = z[0].len() as f64;
    let means: Vec<f64> = z.iter().map(|c| c.iter().sum::<f64>() / n).collect();
    let grand = means.iter().sum::<f64>() / m;
    let b = n / (m - 1.0) * means.iter().map(|x| (x - grand).powi(2)).sum::<f64>();
    let vars: Vec<f64> = z
        .iter()
        .zip(&means)
        .map(|(c, mu)| c.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / (n - 1.0))
        .collect();
    let w = vars.iter().sum::<f64>() / m;
    let var_plus = (n - 1.0) / n * w + b / n;
    let rhat = (var_plus / w).sqrt();
    // ESS with Geyer's initial monotone sequence on the combined autocorrelation.
    let nn = z[0].len();
    let mut rho = Vec::new();
    for lag in 0..nn {
        let mut acov = 0.0;
        for (c, mu) in z.iter().zip(&means) {
            let mut sum = 0.0;
            for t in 0..nn - lag {
                sum += (c[t] - mu) * (c[t + lag] - mu);
            }
            acov += sum / n;
        }
        acov /= m;
        let r = 1.0 - (w - acov) / var_plus;
        rho.push(r);
        if lag >= 3 && lag % 2 == 1 {
            let pair = rho[lag - 1] + rho[lag];
            if pair < 0.0 {
                rho.truncate(lag - 1);
                break;
            }
        }
    }
    let mut tau = -1.0;
    let mut prev_pair = f64::INFINITY;
    let mut k = 0;
    while k + 1 < rho.len() {
        let pair = (rho[k] + rho[k + 1]).min(prev_pair);
        tau += 2.0 * pair;
        prev_pair = pair;
        k += 2;
    }
    let ess = (m * n / tau.max(1.0 / (m * n).log10())).min(m * n * (m * n).log10());
    (rhat, ess)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A posterior that rises to the edge of the range in its last
    /// coordinate (as the noise sd's does when the drift explains the data)
    /// and is a unit gaussian in the others.
    struct AtTheEdge;

    impl Evaluator for AtTheEdge {
        fn dims(&self) -> usize {
            DIM
        }
        fn start(&self) -> Theta {
            [0.5, -0.5, 0.3, 0.0]
        }
        fn eval(&self, theta: &Theta) -> Option<Eval> {
            if !theta_in_range(theta, DIM) {
                return None;
            }
            let log_post = -0.5 * theta[..3].iter().map(|v| v * v).sum::<f64>() + 0.5 * theta[3];
            Some(Eval {
                theta: *theta,
                log_post,
                filter: FilterOutput {
                    log_lik: log_post,
                    b_mean: DVector::from_vec(vec![0.0, theta[0]]),
                    b_cov: DMatrix::identity(2, 2),
                    importance: None,
                },
            })
        }
    }

    #[test]
    fn a_mode_at_the_edge_of_the_range_still_gets_a_lattice() {
        let g = integrate_grid(
            &AtTheEdge,
            &GridOptions {
                threads: 1,
                ..GridOptions::default()
            },
        )
        .expect("a lattice around a mode at the edge");
        assert!(g.mode[3] > 19.0, "the mode is at the edge: {:?}", g.mode);
        assert!(g.points > 10);
        // The gaussian coordinates are integrated as usual: the effect's
        // mixture mean (theta[0]'s) is about 0 and its sd about sqrt(2).
        let m = Marginal::of(&g.mixture, 1);
        assert!(m.mean().abs() < 0.05, "{}", m.mean());
        assert!((m.sd() - 2f64.sqrt()).abs() < 0.1, "{}", m.sd());
    }

    #[test]
    fn log_prior_is_the_priors_densities_on_the_log_scale() {
        use statrs::distribution::{Continuous, LogNormal, Normal};
        let p = HyperPriors {
            drift_time_median_days: 14.0,
            drift_time_log_sd: 0.8,
            drift_sd_scale: 1.3,
            half_life_median_days: 2.5,
            half_life_log_sd: 0.6,
            noise_sd_scale: 0.7,
            precision_median: 20.0,
            precision_log_sd: 1.0,
        };
        let theta = [2.1, -0.4, 1.3, 0.2];
        // Density of ln X = density of X at x, times the Jacobian x.
        let on_log = |ln_pdf: f64, t: f64| ln_pdf + t;
        let log_normal = |median: f64, sd: f64, t: f64| {
            on_log(LogNormal::new(median.ln(), sd).unwrap().ln_pdf(t.exp()), t)
        };
        let half_normal = |scale: f64, t: f64| {
            on_log(
                Normal::new(0.0, scale).unwrap().ln_pdf(t.exp()) + 2f64.ln(),
                t,
            )
        };
        let three = log_normal(14.0, 0.8, theta[0])
            + half_normal(1.3, theta[1])
            + log_normal(2.5, 0.6, theta[2]);
        let four = three + half_normal(0.7, theta[3]);
        assert!((log_prior(&theta, &p, 3) - three).abs() < 1e-12);
        assert!((log_prior(&theta, &p, 4) - four).abs() < 1e-12);
    }

    #[test]
    fn normal_helpers() {
        // libm's erfc is accurate to about 1 ulp.
        assert!((norm_cdf(1.959963984540054) - 0.975).abs() < 1e-11);
        assert!((norm_quantile(0.975) - 1.959963984540054).abs() < 1e-9);
    }

    #[test]
    fn mixture_quantiles_and_tails_are_exact() {
        // Two equal components N(0,1) and N(4,1): the median is 2 by symmetry.
        let e = |m: f64| Eval {
            theta: [0.0; DIM],
            log_post: 0.0,
            filter: FilterOutput {
                log_lik: 0.0,
                b_mean: DVector::from_vec(vec![0.0, m]),
                b_cov: DMatrix::identity(2, 2),
                importance: None,
            },
        };
        let mix = Mixture {
            weights: vec![0.5, 0.5],
            components: vec![e(0.0), e(4.0)],
        };
        let m = Marginal::of(&mix, 1);
        assert!((m.quantile(0.5) - 2.0).abs() < 1e-9);
        assert!((m.mean() - 2.0).abs() < 1e-12);
        assert!((m.sd() - 5.0f64.sqrt()).abs() < 1e-12);
        let p = m.prob_above(1.0, 1.0);
        assert!((p - 0.5 * (norm_cdf(-1.0) + norm_cdf(3.0))).abs() < 1e-12);
    }

    #[test]
    fn rhat_and_ess_of_independent_chains() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let chains: Vec<Vec<f64>> = (0..4)
            .map(|_| (0..1000).map(|_| StandardNormal.sample(&mut rng)).collect())
            .collect();
        let (rhat, ess) = rhat_ess(&chains);
        assert!((rhat - 1.0).abs() < 0.01, "{rhat}");
        // Independent draws: ESS ~ 4000, with sampling error of a few hundred.
        assert!(ess > 3000.0 && ess < 5000.0, "{ess}");
        // Chains stuck at different places are caught.
        let bad: Vec<Vec<f64>> = (0..4)
            .map(|c| chains[c].iter().map(|x| x + c as f64).collect())
            .collect();
        assert!(rhat_ess(&bad).0 > 1.1);
    }
}

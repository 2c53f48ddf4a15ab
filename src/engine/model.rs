//! The state-space model and its exact Gaussian likelihood
//! (`statistics.md` §2 and §4).
//!
//! On the outcome scale `y_i = mu + sum_j beta_j w_j(t_i) + x(t_i) + eps_i`:
//! `x` is an Ornstein–Uhlenbeck drift, `w_j` is the indicator of arm `j`
//! passed through the onset/washout filter `dw = -kappa (w - 1[a(t) = j]) dt`,
//! and `eps ~ N(0, sigma_y^2)`. The static coefficients `b = (mu, beta_j)` enter
//! linearly, so one scalar Kalman filter run over the outcome and over each
//! regressor column together (the augmented filter of de Jong 1991) gives the
//! exact marginal likelihood `p(y | phi)` with `b` integrated out under its
//! Gaussian prior, and the exact Gaussian posterior of `b` given `phi`.
//! This is the same quantity as the `K + 2`-dimensional filter with `mu` and
//! `beta` carried in the state; `tests::augmented_filter_equals_dense_gaussian`
//! checks it against a brute-force dense computation to 1e-9.

use nalgebra::{DMatrix, DVector};

/// The most arms a trial may have (protocol validation enforces it).
pub const MAX_ARMS: usize = 6;

/// The arm in force, piecewise constant: `arms[i]` from `starts[i]` (days)
/// until `starts[i + 1]`. `starts` is increasing and `starts[0] <= 0` is the
/// arm in force from the origin.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmPath {
    /// Switch times, in days.
    pub starts: Vec<f64>,
    /// Arm from each switch time on.
    pub arms: Vec<usize>,
}

impl ArmPath {
    /// The arm in force at `t`.
    pub fn arm_at(&self, t: f64) -> usize {
        let i = self.starts.partition_point(|&s| s <= t);
        self.arms[i.saturating_sub(1)]
    }
}

/// One outcome series ready for the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Observation times in days since the origin, non-decreasing, `>= 0`.
    pub t: Vec<f64>,
    /// Observed values.
    pub y: Vec<f64>,
    /// The arm in force over time (assigned, or as taken).
    pub path: ArmPath,
    /// Number of arms `K`.
    pub n_arms: usize,
    /// The comparator arm (`beta = 0`).
    pub comparator: usize,
}

impl Series {
    /// Number of static coefficients: `mu` and one `beta` per non-comparator arm.
    pub fn n_static(&self) -> usize {
        self.n_arms
    }

    /// The non-comparator arms, in order: the `beta` coefficients `b[1..]`.
    pub fn effect_arms(&self) -> Vec<usize> {
        (0..self.n_arms).filter(|&a| a != self.comparator).collect()
    }

    /// Whether a fit of `other` is a fit of this series: the same
    /// observations, arms and comparator, and the same path up to the last
    /// observation. The model reads the path only there (the filter steps
    /// from one observation to the next; the plotted path takes the arm in
    /// force at each observation, a piece starting at it included), so arms
    /// scheduled after the last observation (a period whose days were all
    /// missed) change nothing.
    pub fn fits_alike(&self, other: &Series) -> bool {
        self.t == other.t
            && self.y == other.y
            && self.n_arms == other.n_arms
            && self.comparator == other.comparator
            && self.observed_path() == other.observed_path()
    }

    /// The path's pieces that start at or before the last observation (all
    /// of them when there is none).
    fn observed_path(&self) -> (&[f64], &[usize]) {
        let used = match self.t.last() {
            Some(&last) => self.path.starts.iter().take_while(|&&s| s <= last).count(),
            None => self.path.starts.len(),
        };
        (&self.path.starts[..used], &self.path.arms[..used])
    }
}

/// Hyperparameters `phi` (§2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hyper {
    /// Drift mean-reversion rate `lambda` (1/days).
    pub lambda: f64,
    /// Stationary sd of the drift, `sigma_x / sqrt(2 lambda)`.
    pub drift_sd: f64,
    /// Onset/washout rate `kappa` (1/days).
    pub kappa: f64,
    /// Measurement noise sd `sigma_y`.
    pub sigma_y: f64,
}

/// Gaussian prior of the static coefficients `b = (mu, beta_j...)`, independent.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StaticPrior {
    /// Prior means.
    pub mean: Vec<f64>,
    /// Prior sds.
    pub sd: Vec<f64>,
}

/// What one filter pass gives for fixed `phi`.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterOutput {
    /// `log p(y | phi)` with `b` integrated out under its prior.
    pub log_lik: f64,
    /// Posterior mean of `b` given `phi`.
    pub b_mean: DVector<f64>,
    /// Posterior covariance of `b` given `phi`.
    pub b_cov: DMatrix<f64>,
    /// Non-gaussian families: the importance draws behind the estimate,
    /// summed pair by pair (their effective sample size and Monte Carlo
    /// error come from these); `None` for the exact gaussian filter.
    pub importance: Option<std::sync::Arc<crate::engine::mc_error::ImportanceSums>>,
}

/// Errors of the numerical core.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// The posterior precision of `b` was not positive definite (no data for an arm and an improper prior).
    #[error("the posterior of the effects is degenerate (is every arm observed?)")]
    Degenerate,
    /// Bad input.
    #[error("{0}")]
    Input(String),
    /// The GPU failed a copy or a launch (the fit can be run again with
    /// `--backend cpu`).
    #[error("the GPU failed: {0}")]
    Device(String),
}

/// Gaps closer than this (days) share their cached exponentials.
const GAP_EPS: f64 = 1e-12;

/// `exp(-rate * d)` for the few distinct gaps `d` a series repeats (daily
/// data: 1, 2 after a missing day, the pieces around an arm switch): one
/// exponential per distinct gap and pass instead of one per step.
#[derive(Debug, Clone, Copy)]
struct ExpCache {
    rate: f64,
    gaps: [f64; 8],
    values: [f64; 8],
    len: usize,
    next: usize,
}

impl ExpCache {
    fn new(rate: f64) -> ExpCache {
        ExpCache {
            rate,
            gaps: [f64::NAN; 8],
            values: [0.0; 8],
            len: 0,
            next: 0,
        }
    }

    fn get(&mut self, d: f64) -> f64 {
        for i in 0..self.len {
            if (self.gaps[i] - d).abs() <= GAP_EPS {
                return self.values[i];
            }
        }
        let v = (-self.rate * d).exp();
        let slot = if self.len < 8 {
            self.len += 1;
            self.len - 1
        } else {
            self.next = (self.next + 1) % 8;
            self.next
        };
        self.gaps[slot] = d;
        self.values[slot] = v;
        v
    }
}

/// Advances the onset/washout regressors `w` from `t0` to `t1` along the arm
/// path: over each piece with arm `a` constant for `D` days,
/// `w_j <- psi w_j + (1 - psi) 1[a = j]`, `psi = exp(-kappa D)` (§2).
fn advance_w(
    w: &mut [f64; MAX_ARMS],
    path: &ArmPath,
    (t0, t1): (f64, f64),
    piece: &mut usize,
    psi_of: &mut ExpCache,
) {
    let mut t = t0;
    while t < t1 {
        while *piece + 1 < path.starts.len() && path.starts[*piece + 1] <= t {
            *piece += 1;
        }
        let end = if *piece + 1 < path.starts.len() {
            path.starts[*piece + 1].min(t1)
        } else {
            t1
        };
        // psi = exp(-kappa D); times like d + 0.8 make gaps that differ from 1
        // in the last bits, which the cache treats as equal.
        let psi = psi_of.get(end - t);
        let arm = path.arms[*piece];
        for wj in w.iter_mut() {
            *wj *= psi;
        }
        w[arm] += 1.0 - psi;
        t = end;
    }
}

/// What a filter pass needs of a series that does not depend on the
/// hyperparameters: the distinct gaps between observations and the pieces of
/// constant arm inside each gap, with their distinct lengths. Built once per
/// series, it turns the per-step work of [`advance_w`] and the gap
/// exponentials into table look-ups: a pass then computes one exponential per
/// distinct length (a handful for daily data) and none per step.
#[derive(Debug, Clone)]
pub struct FilterPlan {
    /// Distinct gap lengths.
    gaps: Vec<f64>,
    /// Per observation: index into `gaps` of the gap since the previous one.
    gap_of: Vec<u32>,
    /// Distinct piece lengths.
    pieces: Vec<f64>,
    /// Per observation `i`: its pieces are `steps[step_start[i]..step_start[i + 1]]`.
    step_start: Vec<u32>,
    /// `(index into pieces, arm in force)` of each piece, in time order.
    steps: Vec<(u32, u32)>,
}

/// Index of `v` in `values` (within [`GAP_EPS`]), appending it when new.
fn distinct_index(values: &mut Vec<f64>, v: f64) -> u32 {
    match values.iter().position(|x| (x - v).abs() <= GAP_EPS) {
        Some(i) => i as u32,
        None => {
            values.push(v);
            (values.len() - 1) as u32
        }
    }
}

/// A [`FilterPlan`]'s tables, for a backend that copies them elsewhere
/// (the GPU's packed series).
#[derive(Debug, Clone, Copy)]
pub struct PlanTables<'a> {
    /// Distinct gap lengths.
    pub gaps: &'a [f64],
    /// Per observation: index into `gaps`.
    pub gap_of: &'a [u32],
    /// Distinct piece lengths.
    pub pieces: &'a [f64],
    /// Per observation `i`: its pieces are `steps[step_start[i]..step_start[i + 1]]`.
    pub step_start: &'a [u32],
    /// `(index into pieces, arm in force)` of each piece, in time order.
    pub steps: &'a [(u32, u32)],
}

impl FilterPlan {
    /// The plan's tables, read-only.
    pub fn tables(&self) -> PlanTables<'_> {
        PlanTables {
            gaps: &self.gaps,
            gap_of: &self.gap_of,
            pieces: &self.pieces,
            step_start: &self.step_start,
            steps: &self.steps,
        }
    }

    /// The plan of `series`.
    pub fn of(series: &Series) -> FilterPlan {
        let path = &series.path;
        let mut plan = FilterPlan {
            gaps: Vec::new(),
            gap_of: Vec::with_capacity(series.t.len()),
            pieces: Vec::new(),
            step_start: Vec::with_capacity(series.t.len() + 1),
            steps: Vec::with_capacity(series.t.len() + path.starts.len()),
        };
        let mut piece = 0;
        let mut t_prev = 0.0;
        for &t1 in &series.t {
            plan.gap_of
                .push(distinct_index(&mut plan.gaps, t1 - t_prev));
            plan.step_start.push(plan.steps.len() as u32);
            // The same walk as `advance_w`.
            let mut t = t_prev;
            while t < t1 {
                while piece + 1 < path.starts.len() && path.starts[piece + 1] <= t {
                    piece += 1;
                }
                let end = if piece + 1 < path.starts.len() {
                    path.starts[piece + 1].min(t1)
                } else {
                    t1
                };
                let d = distinct_index(&mut plan.pieces, end - t);
                plan.steps.push((d, path.arms[piece] as u32));
                t = end;
            }
            t_prev = t1;
        }
        plan.step_start.push(plan.steps.len() as u32);
        plan
    }
}

/// The regressor row of each observation for a given `kappa`:
/// `[1, w_j(t_i) for each non-comparator arm j]`.
pub fn design_rows(series: &Series, kappa: f64) -> Vec<[f64; MAX_ARMS]> {
    let effect_arms = series.effect_arms();
    let mut w = [0.0; MAX_ARMS];
    let mut piece = 0;
    let mut psi_of = ExpCache::new(kappa);
    let mut t_prev = 0.0;
    let mut rows = Vec::with_capacity(series.t.len());
    for &t in &series.t {
        advance_w(&mut w, &series.path, (t_prev, t), &mut piece, &mut psi_of);
        t_prev = t;
        let mut row = [0.0; MAX_ARMS];
        row[0] = 1.0;
        for (c, &j) in effect_arms.iter().enumerate() {
            row[c + 1] = w[j];
        }
        rows.push(row);
    }
    rows
}

/// The augmented scalar Kalman filter (§4, de Jong 1991).
///
/// Runs the OU filter `x' = rho x + w`, `rho = exp(-lambda D)`,
/// `Var w = drift_sd^2 (1 - rho^2)`, `x_0 ~ N(0, drift_sd^2)`, over the outcome
/// and each regressor column, collecting `q = sum v^2/F`, `s = sum V'v/F`,
/// `S = sum V'V/F`. With the prior `b ~ N(m0, P0)`:
/// `A = S + P0^-1`, `b_hat = A^-1 (s + P0^-1 m0)`, and
/// `log p(y) = -1/2 [n log 2pi + sum log F + q + m0'P0^-1 m0 - b_hat'A b_hat + log|P0| + log|A|]`.
pub fn augmented_filter(
    series: &Series,
    h: &Hyper,
    prior: &StaticPrior,
) -> Result<FilterOutput, ModelError> {
    augmented_filter_with(series, &series.y, h, prior, None)
}

/// [`augmented_filter`] on other values `y` at the series' times, with
/// per-observation noise variances `noise` instead of `sigma_y^2` when given:
/// the Gaussian approximating model of the non-Gaussian families (§3).
pub fn augmented_filter_with(
    series: &Series,
    y: &[f64],
    h: &Hyper,
    prior: &StaticPrior,
    noise: Option<&[f64]>,
) -> Result<FilterOutput, ModelError> {
    augmented_filter_planned(series, &FilterPlan::of(series), y, h, prior, noise)
}

/// [`augmented_filter_with`] with the series' [`FilterPlan`] made beforehand
/// (an evaluator makes it once and runs thousands of passes).
pub fn augmented_filter_planned(
    series: &Series,
    plan: &FilterPlan,
    y: &[f64],
    h: &Hyper,
    prior: &StaticPrior,
    noise: Option<&[f64]>,
) -> Result<FilterOutput, ModelError> {
    let mut sums = [FilterSums::ZERO];
    lane_sums::<1>(series, plan, y, &[*h], noise, &mut sums);
    finish(series, &sums[0], prior)
}

/// Hyperparameter sets that [`augmented_filter_batch`] carries side by side.
pub const LANES: usize = 4;

/// [`augmented_filter_planned`] at [`LANES`] hyperparameter sets in one
/// pass over the data: the same results, bit for bit, at a fraction of the
/// time of separate passes (the batch path of the CPU evaluator).
pub fn augmented_filter_batch(
    series: &Series,
    plan: &FilterPlan,
    y: &[f64],
    hs: &[Hyper; LANES],
    prior: &StaticPrior,
) -> [Result<FilterOutput, ModelError>; LANES] {
    // The sums are written in place and read by reference: each lane's are
    // a few hundred bytes, and copying them had cost a tenth of a short fit.
    let mut sums = [FilterSums::ZERO; LANES];
    lane_sums::<LANES>(series, plan, y, hs, None, &mut sums);
    std::array::from_fn(|l| finish(series, &sums[l], prior))
}

/// The pass of [`filter_sums`], with AVX2 where the CPU has it: the lanes
/// then run four to an instruction. The arithmetic and its order are the
/// same on either path (no fused multiply-add), so the results are too.
fn lane_sums<const L: usize>(
    series: &Series,
    plan: &FilterPlan,
    y: &[f64],
    hs: &[Hyper; L],
    noise: Option<&[f64]>,
    out: &mut [FilterSums; L],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { lane_sums_avx2::<L>(series, plan, y, hs, noise, out) };
    }
    lane_sums_by_size::<L>(series, plan, y, hs, noise, out)
}

/// [`lane_sums_by_size`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn lane_sums_avx2<const L: usize>(
    series: &Series,
    plan: &FilterPlan,
    y: &[f64],
    hs: &[Hyper; L],
    noise: Option<&[f64]>,
    out: &mut [FilterSums; L],
) {
    lane_sums_by_size::<L>(series, plan, y, hs, noise, out)
}

/// [`filter_sums`] compiled once per number of coefficients so that its
/// small loops unroll (K = 2..6 arms); inlined into its callers so that it
/// takes their instruction set.
#[inline(always)]
fn lane_sums_by_size<const L: usize>(
    series: &Series,
    plan: &FilterPlan,
    y: &[f64],
    hs: &[Hyper; L],
    noise: Option<&[f64]>,
    out: &mut [FilterSums; L],
) {
    match series.n_static() {
        1 => filter_sums::<1, L>(series, plan, y, hs, noise, out),
        2 => filter_sums::<2, L>(series, plan, y, hs, noise, out),
        3 => filter_sums::<3, L>(series, plan, y, hs, noise, out),
        4 => filter_sums::<4, L>(series, plan, y, hs, noise, out),
        5 => filter_sums::<5, L>(series, plan, y, hs, noise, out),
        _ => filter_sums::<MAX_ARMS, L>(series, plan, y, hs, noise, out),
    }
}

/// From the pass's sums to the likelihood and the posterior of `b` (the
/// formulas of [`augmented_filter`]).
fn finish(
    series: &Series,
    sums: &FilterSums,
    prior: &StaticPrior,
) -> Result<FilterOutput, ModelError> {
    let n = series.t.len() as f64;
    match series.n_static() {
        1 => finish_sized::<1>(n, sums, prior),
        2 => finish_sized::<2>(n, sums, prior),
        3 => finish_sized::<3>(n, sums, prior),
        4 => finish_sized::<4>(n, sums, prior),
        5 => finish_sized::<5>(n, sums, prior),
        MAX_ARMS => finish_sized::<MAX_ARMS>(n, sums, prior),
        p => Err(ModelError::Input(format!(
            "{p} static coefficients: the model takes 1 to {MAX_ARMS}"
        ))),
    }
}

/// [`finish`] for `P` static coefficients and `n` observations, compiled
/// once per size as the pass is: its small loops unroll, and the
/// matrices on the stack are `P x P` (in a short series' fit this had
/// cost a third as much as the pass itself).
fn finish_sized<const P: usize>(
    n: f64,
    sums: &FilterSums,
    prior: &StaticPrior,
) -> Result<FilterOutput, ModelError> {
    let p = P;
    let FilterSums {
        sum_log_f,
        q,
        s,
        big_s,
    } = sums;
    let (sum_log_f, q) = (*sum_log_f, *q);
    // A = S + P0^-1 (lower triangle) and the right-hand side s + P0^-1 m0.
    let mut a = [[0.0; P]; P];
    let mut rhs = [0.0; P];
    let mut quad_m0 = 0.0;
    let mut det_p0 = 1.0;
    for c in 0..p {
        let var = prior.sd[c] * prior.sd[c];
        let prec = 1.0 / var;
        a[c][..=c].copy_from_slice(&big_s[c][..=c]);
        a[c][c] += prec;
        rhs[c] = s[c] + prec * prior.mean[c];
        quad_m0 += prec * prior.mean[c] * prior.mean[c];
        det_p0 *= var;
    }
    // Cholesky A = L L' on the stack (P <= 6: a general matrix library's
    // allocations would cost more than the arithmetic).
    let mut l = [[0.0; P]; P];
    let mut det_a = 1.0;
    for j in 0..p {
        let d = a[j][j] - (0..j).map(|k| l[j][k] * l[j][k]).sum::<f64>();
        if d.is_nan() || d <= 0.0 {
            return Err(ModelError::Degenerate);
        }
        det_a *= d;
        let l_jj = d.sqrt();
        l[j][j] = l_jj;
        for i in j + 1..p {
            l[i][j] = (a[i][j] - (0..j).map(|k| l[i][k] * l[j][k]).sum::<f64>()) / l_jj;
        }
    }
    // b_hat = A^-1 rhs: forward (L z = rhs), then back (L' b = z) substitution.
    let mut z = [0.0; P];
    for i in 0..p {
        z[i] = (rhs[i] - (0..i).map(|k| l[i][k] * z[k]).sum::<f64>()) / l[i][i];
    }
    let mut b = [0.0; P];
    for i in (0..p).rev() {
        b[i] = (z[i] - (i + 1..p).map(|k| l[k][i] * b[k]).sum::<f64>()) / l[i][i];
    }
    // A^-1 = L^-T L^-1, with M = L^-1 lower triangular.
    let mut m = [[0.0; P]; P];
    for j in 0..p {
        m[j][j] = 1.0 / l[j][j];
        for i in j + 1..p {
            m[i][j] = -(j..i).map(|k| l[i][k] * m[k][j]).sum::<f64>() / l[i][i];
        }
    }
    let b_cov = DMatrix::from_fn(p, p, |r, c| (r.max(c)..p).map(|k| m[k][r] * m[k][c]).sum());
    let rhs_b: f64 = (0..p).map(|c| rhs[c] * b[c]).sum();
    // The determinants as products, one logarithm each; P <= 6 factors of
    // bounded size cannot overflow, and a product that did is caught.
    let log_det = |det: f64, factors: &dyn Fn(usize) -> f64| -> f64 {
        if det.is_finite() && det > 0.0 {
            det.ln()
        } else {
            (0..p).map(|c| factors(c).ln()).sum()
        }
    };
    let log_det_a = log_det(det_a, &|c| l[c][c] * l[c][c]);
    let log_det_p0 = log_det(det_p0, &|c| prior.sd[c] * prior.sd[c]);
    let log_lik = -0.5
        * (n * (2.0 * std::f64::consts::PI).ln() + sum_log_f + q + quad_m0 - rhs_b
            + log_det_p0
            + log_det_a);
    Ok(FilterOutput {
        log_lik,
        b_mean: DVector::from_column_slice(&b[..p]),
        b_cov,
        importance: None,
    })
}

/// What the filter pass accumulates (§4): `sum log F`, `q = sum v^2/F`,
/// `s = sum V v/F` and the lower triangle of `S = sum V V'/F`. A backend
/// that accumulates them elsewhere (the GPU's parallel scan) hands them to
/// [`FilterSums::finish`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FilterSums {
    /// `sum log F`.
    pub sum_log_f: f64,
    /// `q = sum v^2 / F`.
    pub q: f64,
    /// `s = sum V v / F`.
    pub s: [f64; MAX_ARMS],
    /// The lower triangle of `S = sum V V' / F`.
    pub big_s: [[f64; MAX_ARMS]; MAX_ARMS],
}

impl FilterSums {
    /// All sums zero: what a pass starts from and writes over.
    pub const ZERO: FilterSums = FilterSums {
        sum_log_f: 0.0,
        q: 0.0,
        s: [0.0; MAX_ARMS],
        big_s: [[0.0; MAX_ARMS]; MAX_ARMS],
    };

    /// The likelihood and the posterior of `b` from the sums (the formulas
    /// of [`augmented_filter`]).
    pub fn finish(&self, series: &Series, prior: &StaticPrior) -> Result<FilterOutput, ModelError> {
        finish(series, self, prior)
    }
}

/// The augmented filter's pass over the observations for `P` static
/// coefficients (`P = K`: `mu` and one `beta` per non-comparator arm), for
/// `L` hyperparameter sets side by side over the same plan and values.
///
/// Each lane does exactly the scalar pass's arithmetic in the same order, so
/// a lane's sums are bit-for-bit those of a pass on its own; side by side,
/// the lanes' independent recursions (a division and a few multiply-adds a
/// step, each waiting on the last) overlap instead of waiting in turn.
#[inline(always)]
fn filter_sums<const P: usize, const L: usize>(
    series: &Series,
    plan: &FilterPlan,
    y: &[f64],
    hs: &[Hyper; L],
    noise: Option<&[f64]>,
    out: &mut [FilterSums; L],
) {
    // Regressor column c + 1 is arm effect_arm[c]'s onset/washout weight
    // (the arms of `Series::effect_arms`, without its allocation).
    let mut effect_arm = [0usize; MAX_ARMS];
    let arms = (0..series.n_arms).filter(|&a| a != series.comparator);
    for (c, j) in arms.take(MAX_ARMS).enumerate() {
        effect_arm[c] = j;
    }
    let var_x: [f64; L] = std::array::from_fn(|l| hs[l].drift_sd * hs[l].drift_sd);
    let var_y_h: [f64; L] = std::array::from_fn(|l| hs[l].sigma_y * hs[l].sigma_y);
    let mut pvar = var_x;
    let mut a_y = [0.0; L];
    let mut a_x = [[0.0; L]; MAX_ARMS];
    let mut sum_log_f = [0.0; L];
    // log F is summed as the log of a running product, taken every 8 steps:
    // one logarithm instead of 8. The evaluator keeps every sd within
    // e^-20..e^20, so F stays within 1e-18..1e18 and 8 factors cannot overflow.
    let mut prod_f = [1.0; L];
    let mut q = [0.0; L];
    let mut s = [[0.0; L]; MAX_ARMS];
    let mut big_s = [[[0.0; L]; MAX_ARMS]; MAX_ARMS];
    // Onset/washout regressors, advanced alongside the filter.
    let mut w = [[0.0; L]; MAX_ARMS];
    // One exponential per distinct gap and piece length (see `FilterPlan`).
    let rhos = ExpTable::<L>::new(std::array::from_fn(|l| hs[l].lambda), &plan.gaps);
    let psis = ExpTable::<L>::new(std::array::from_fn(|l| hs[l].kappa), &plan.pieces);
    let (rhos, psis) = (rhos.values(), psis.values());
    for (i, &y) in y.iter().enumerate().take(series.t.len()) {
        let var_y: [f64; L] = match noise {
            Some(n) => [n[i]; L],
            None => var_y_h,
        };
        let rho = &rhos[plan.gap_of[i] as usize];
        for &(d, arm) in &plan.steps[plan.step_start[i] as usize..plan.step_start[i + 1] as usize] {
            let psi = &psis[d as usize];
            for wj in w.iter_mut().take(P) {
                for l in 0..L {
                    wj[l] *= psi[l];
                }
            }
            for l in 0..L {
                w[arm as usize][l] += 1.0 - psi[l];
            }
        }
        let mut f = [0.0; L];
        let mut v = [0.0; L];
        let mut gain = [0.0; L];
        let mut inv_f = [0.0; L];
        for l in 0..L {
            pvar[l] = rho[l] * rho[l] * pvar[l] + var_x[l] * (1.0 - rho[l] * rho[l]);
            a_y[l] *= rho[l];
            f[l] = pvar[l] + var_y[l];
            v[l] = y - a_y[l];
            inv_f[l] = 1.0 / f[l];
            gain[l] = pvar[l] * inv_f[l];
            prod_f[l] *= f[l];
        }
        let mut vx = [[0.0; L]; MAX_ARMS];
        for l in 0..L {
            a_x[0][l] *= rho[l];
            vx[0][l] = 1.0 - a_x[0][l];
        }
        for c in 1..P {
            for l in 0..L {
                a_x[c][l] *= rho[l];
                vx[c][l] = w[effect_arm[c - 1]][l] - a_x[c][l];
            }
        }
        if i % 8 == 7 {
            for l in 0..L {
                sum_log_f[l] += prod_f[l].ln();
                prod_f[l] = 1.0;
            }
        }
        for l in 0..L {
            q[l] += v[l] * v[l] * inv_f[l];
        }
        for c in 0..P {
            for l in 0..L {
                let vc = vx[c][l] * inv_f[l];
                s[c][l] += vc * v[l];
                for d in 0..=c {
                    big_s[c][d][l] += vc * vx[d][l];
                }
                a_x[c][l] += gain[l] * vx[c][l];
            }
        }
        for l in 0..L {
            a_y[l] += gain[l] * v[l];
            pvar[l] *= var_y[l] * inv_f[l];
        }
    }
    for (l, sums) in out.iter_mut().enumerate() {
        sums.sum_log_f = sum_log_f[l] + prod_f[l].ln();
        sums.q = q[l];
        for c in 0..P {
            sums.s[c] = s[c][l];
            for (slot, lanes) in sums.big_s[c][..=c].iter_mut().zip(&big_s[c]) {
                *slot = lanes[l];
            }
        }
    }
}

/// `exp(-rate_l * x)` for each length `x` of a plan and each lane `l`: on
/// the stack for the usual handful (daily data has a few distinct gaps and
/// pieces), on the heap (an empty `Vec` allocates nothing otherwise) for
/// irregular series.
struct ExpTable<const L: usize> {
    small: [[f64; L]; 32],
    large: Vec<[f64; L]>,
    len: usize,
}

impl<const L: usize> ExpTable<L> {
    fn new(rates: [f64; L], lengths: &[f64]) -> ExpTable<L> {
        let row = |x: &f64| -> [f64; L] { std::array::from_fn(|l| (-rates[l] * x).exp()) };
        let mut table = ExpTable {
            small: [[0.0; L]; 32],
            large: Vec::new(),
            len: lengths.len(),
        };
        if lengths.len() <= table.small.len() {
            for (slot, x) in table.small.iter_mut().zip(lengths) {
                *slot = row(x);
            }
        } else {
            table.large = lengths.iter().map(row).collect();
        }
        table
    }

    fn values(&self) -> &[[f64; L]] {
        if self.len <= self.small.len() {
            &self.small[..self.len]
        } else {
            &self.large
        }
    }
}

/// Smoothed drift `E[x(t_i) | y, phi]` at every observation, with `b` at its
/// conditional posterior mean `b_mean` (Rauch–Tung–Striebel, §4).
///
/// The smoother is linear, so it runs on the outcome and on each regressor
/// column as the filter does: `E[x | y, b] = xs_y - Xs b`.
pub fn smoothed_drift(series: &Series, h: &Hyper, b_mean: &DVector<f64>) -> Vec<f64> {
    let plan = FilterPlan::of(series);
    let rows = design_rows(series, h.kappa);
    smoothed_drift_planned(series, &plan, &rows, &series.y, h, b_mean, None)
}

/// [`smoothed_drift`] on other values `y`, with per-observation noise
/// variances when given (the approximating Gaussian model), and with the
/// series' plan and its design rows at `h.kappa` made once by the
/// caller: the Laplace approximation's Newton steps smooth at one point
/// many times, and remaking the rows each time was a tenth of a Student-t
/// fit.
pub fn smoothed_drift_planned(
    series: &Series,
    plan: &FilterPlan,
    rows: &[[f64; MAX_ARMS]],
    y: &[f64],
    h: &Hyper,
    b_mean: &DVector<f64>,
    noise: Option<&[f64]>,
) -> Vec<f64> {
    let n = series.t.len();
    let p = series.n_static();
    let gap_rhos: Vec<f64> = plan.gaps.iter().map(|g| (-h.lambda * g).exp()).collect();
    let var_x = h.drift_sd * h.drift_sd;
    let var_y = h.sigma_y * h.sigma_y;
    // Column 0 is the outcome, 1..=p the regressors.
    let cols = p + 1;
    let mut filt = vec![[0.0; MAX_ARMS + 1]; n];
    let mut p_filt = vec![0.0; n];
    let mut p_pred = vec![0.0; n];
    let mut rhos = vec![1.0; n];
    let mut a = [0.0; MAX_ARMS + 1];
    let mut pvar = var_x;
    for i in 0..n {
        let rho = gap_rhos[plan.gap_of[i] as usize];
        rhos[i] = rho;
        pvar = rho * rho * pvar + var_x * (1.0 - rho * rho);
        p_pred[i] = pvar;
        let gain = pvar / (pvar + noise.map_or(var_y, |v| v[i]));
        for c in 0..cols {
            let obs = if c == 0 { y[i] } else { rows[i][c - 1] };
            a[c] *= rho;
            a[c] += gain * (obs - a[c]);
        }
        pvar *= 1.0 - gain;
        p_filt[i] = pvar;
        filt[i] = a;
    }
    let mut smooth = filt.clone();
    for i in (0..n.saturating_sub(1)).rev() {
        let j = p_filt[i] * rhos[i + 1] / p_pred[i + 1];
        for c in 0..cols {
            smooth[i][c] = filt[i][c] + j * (smooth[i + 1][c] - rhos[i + 1] * filt[i][c]);
        }
    }
    smooth
        .iter()
        .map(|s| s[0] - (0..p).map(|c| s[c + 1] * b_mean[c]).sum::<f64>())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `y ~ N(X m0, X P0 X' + Sigma_x + sigma_y^2 I)` computed densely.
    fn dense(series: &Series, h: &Hyper, prior: &StaticPrior) -> (f64, DVector<f64>, DMatrix<f64>) {
        let n = series.t.len();
        let p = series.n_static();
        let rows = design_rows(series, h.kappa);
        let x = DMatrix::from_fn(n, p, |i, c| rows[i][c]);
        let m0 = DVector::from_vec(prior.mean.clone());
        let p0 = DMatrix::from_diagonal(&DVector::from_iterator(p, prior.sd.iter().map(|s| s * s)));
        let mut sigma = DMatrix::from_fn(n, n, |i, k| {
            h.drift_sd.powi(2) * (-h.lambda * (series.t[i] - series.t[k]).abs()).exp()
        });
        for i in 0..n {
            sigma[(i, i)] += h.sigma_y.powi(2);
        }
        let y = DVector::from_vec(series.y.clone());
        let cov = &x * &p0 * x.transpose() + &sigma;
        let chol = cov.clone().cholesky().unwrap();
        let r = &y - &x * &m0;
        let alpha = chol.solve(&r);
        let log_det: f64 = 2.0 * chol.l().diagonal().iter().map(|d| d.ln()).sum::<f64>();
        let ll = -0.5 * (n as f64 * (2.0 * std::f64::consts::PI).ln() + log_det + r.dot(&alpha));
        // Posterior of b: precision X' Sigma^-1 X + P0^-1.
        let sc = sigma.cholesky().unwrap();
        let si_x = sc.solve(&x);
        let prec = x.transpose() * &si_x + p0.clone().try_inverse().unwrap();
        let post_cov = prec.clone().try_inverse().unwrap();
        let post_mean = &post_cov * (x.transpose() * sc.solve(&y) + p0.try_inverse().unwrap() * m0);
        (ll, post_mean, post_cov)
    }

    /// The hyperparameters the filter and smoother tests run at.
    fn hyper() -> Hyper {
        Hyper {
            lambda: 0.3,
            drift_sd: 0.8,
            kappa: 0.45,
            sigma_y: 0.6,
        }
    }

    fn series(k: usize) -> Series {
        // Irregular times, a missing stretch, two observations on one day,
        // and arm switches that fall inside gaps.
        let t = vec![
            0.3, 1.2, 2.0, 2.0, 3.7, 6.1, 6.4, 9.9, 10.2, 13.5, 14.0, 17.25, 21.0, 21.9,
        ];
        let y: Vec<f64> = t
            .iter()
            .enumerate()
            .map(|(i, tt)| 3.0 + (tt * 0.7_f64).sin() + 0.1 * i as f64)
            .collect();
        let starts: Vec<f64> = (0..8).map(|i| f64::from(i) * 3.5).collect();
        let arms = (0..8).map(|i| (i * 5 + 1) % k).collect();
        Series {
            t,
            y,
            path: ArmPath { starts, arms },
            n_arms: k,
            comparator: 0,
        }
    }

    #[test]
    fn series_alike_up_to_the_last_observation_fit_alike() {
        let s = series(3);
        let h = hyper();
        let prior = StaticPrior {
            mean: vec![3.0, 0.2, 0.2],
            sd: vec![1.0, 1.3, 1.6],
        };
        let filtered = |s: &Series| augmented_filter(s, &h, &prior).unwrap();
        assert_eq!(*s.t.last().unwrap(), 21.9);
        // Arms after the last observation (21.9): a changed last piece (from
        // 24.5) and one more piece (from 30) change nothing.
        let mut later = s.clone();
        later.path.arms[7] = (later.path.arms[7] + 1) % 3;
        later.path.starts.push(30.0);
        later.path.arms.push(2);
        assert!(s.fits_alike(&later) && later.fits_alike(&s));
        let (a, b) = (filtered(&s), filtered(&later));
        assert_eq!(a.log_lik.to_bits(), b.log_lik.to_bits());
        assert_eq!(a.b_mean, b.b_mean);
        assert_eq!(a.b_cov, b.b_cov);
        // The piece in force at the last observation (from 21.0) is read.
        let mut within = s.clone();
        within.path.arms[6] = (within.path.arms[6] + 1) % 3;
        assert!(!s.fits_alike(&within));
        assert_ne!(filtered(&within).log_lik, a.log_lik);
        // So is one that starts at it: the plotted path names its arm.
        let mut at_last = s.clone();
        at_last.path.starts.insert(7, 21.9);
        at_last.path.arms.insert(7, 2);
        assert_eq!(at_last.path.arm_at(21.9), 2);
        assert!(!s.fits_alike(&at_last));
        // So are the observations.
        let mut values = s.clone();
        values.y[3] += 0.5;
        assert!(!s.fits_alike(&values));
        let mut fewer = s.clone();
        fewer.t.pop();
        fewer.y.pop();
        assert!(!s.fits_alike(&fewer));
    }

    #[test]
    fn augmented_filter_equals_dense_gaussian() {
        for k in [2, 3, 6] {
            let s = series(k);
            let h = hyper();
            let prior = StaticPrior {
                mean: (0..k).map(|c| if c == 0 { 3.0 } else { 0.2 }).collect(),
                sd: (0..k).map(|c| 1.0 + 0.3 * c as f64).collect(),
            };
            let out = augmented_filter(&s, &h, &prior).unwrap();
            let (ll, mean, cov) = dense(&s, &h, &prior);
            assert!(
                (out.log_lik - ll).abs() < 1e-9,
                "k={k}: {} vs {ll}",
                out.log_lik
            );
            for c in 0..k {
                assert!((out.b_mean[c] - mean[c]).abs() < 1e-9, "k={k} mean {c}");
                for d in 0..k {
                    assert!(
                        (out.b_cov[(c, d)] - cov[(c, d)]).abs() < 1e-9,
                        "k={k} cov {c},{d}"
                    );
                }
            }
        }
    }

    #[test]
    fn batched_lanes_equal_single_passes_bit_for_bit() {
        for k in [2, 3, 6] {
            let s = series(k);
            let plan = FilterPlan::of(&s);
            let prior = StaticPrior {
                mean: vec![0.5; k],
                sd: vec![2.0; k],
            };
            let hs: [Hyper; LANES] = std::array::from_fn(|l| Hyper {
                lambda: 0.1 + 0.2 * l as f64,
                drift_sd: 0.5 + 0.3 * l as f64,
                kappa: 0.9 - 0.2 * l as f64,
                sigma_y: 0.4 + 0.1 * l as f64,
            });
            let batch = augmented_filter_batch(&s, &plan, &s.y, &hs, &prior);
            for (h, b) in hs.iter().zip(batch) {
                let one = augmented_filter_planned(&s, &plan, &s.y, h, &prior, None).unwrap();
                assert_eq!(b.unwrap(), one, "k={k}");
            }
        }
    }

    #[test]
    fn smoother_equals_dense_conditional_mean() {
        let s = series(3);
        let h = hyper();
        let b = DVector::from_vec(vec![3.1, 0.4, -0.2]);
        let got = smoothed_drift(&s, &h, &b);
        // Dense: E[x | y, b] = Sx (Sx + sy^2 I)^-1 (y - X b).
        let n = s.t.len();
        let rows = design_rows(&s, h.kappa);
        let sx = DMatrix::from_fn(n, n, |i, k| {
            h.drift_sd.powi(2) * (-h.lambda * (s.t[i] - s.t[k]).abs()).exp()
        });
        let mut cov = sx.clone();
        for i in 0..n {
            cov[(i, i)] += h.sigma_y.powi(2);
        }
        let r = DVector::from_fn(n, |i, _| {
            s.y[i] - (0..3).map(|c| rows[i][c] * b[c]).sum::<f64>()
        });
        let expect = &sx * cov.cholesky().unwrap().solve(&r);
        for i in 0..n {
            assert!(
                (got[i] - expect[i]).abs() < 1e-9,
                "{i}: {} vs {}",
                got[i],
                expect[i]
            );
        }
    }

    #[test]
    fn onset_filter_matches_closed_form() {
        let s = Series {
            t: vec![0.0, 1.0, 2.0, 5.0],
            y: vec![0.0; 4],
            path: ArmPath {
                starts: vec![0.0, 0.5],
                arms: vec![0, 1],
            },
            n_arms: 2,
            comparator: 0,
        };
        let kappa = 0.7;
        let rows = design_rows(&s, kappa);
        for (i, &t) in s.t.iter().enumerate() {
            let expect = if t <= 0.5 {
                0.0
            } else {
                1.0 - (-kappa * (t - 0.5)).exp()
            };
            assert!((rows[i][1] - expect).abs() < 1e-14);
        }
        assert_eq!(s.path.arm_at(0.2), 0);
        assert_eq!(s.path.arm_at(0.5), 1);
    }
}

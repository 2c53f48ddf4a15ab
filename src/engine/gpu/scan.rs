//! The parallel-in-time filter (`kernels/scan.cu`) driven from the host:
//! the sequence of launches, written once over [`ScanOps`], which the
//! host-compiled kernels ([`HostOps`], the tests) and the CUDA backend
//! implement. The sums it returns are finished on the CPU
//! ([`FilterSums::finish`]), as the sequential filter's are.

use crate::engine::gpu::host;
use crate::engine::inference::{Eval, LogPrior, Priors, Theta, theta_in_range};
use crate::engine::model::{FilterOutput, FilterPlan, FilterSums, MAX_ARMS, ModelError, Series};

/// A series as the scan reads it: per observation its gap since the last
/// (from the origin for the first), its value, and the pieces of constant
/// arm inside the gap (CSR: `step_start[i]..step_start[i + 1]`). Private
/// fields, made only by [`ScanSeries::of`], which checks what the kernels
/// index by (arms below `p`, `p` at most 6).
#[derive(Debug, Clone)]
pub struct ScanSeries {
    n: usize,
    p: usize,
    gap: Vec<f64>,
    y: Vec<f64>,
    step_start: Vec<i32>,
    piece_len: Vec<f64>,
    piece_arm: Vec<i32>,
    effect_arm: Vec<i32>,
}

impl ScanSeries {
    /// `series` with its plan.
    pub fn of(series: &Series) -> Result<ScanSeries, ModelError> {
        let n = series.t.len();
        if n == 0 || series.y.len() < n {
            return Err(ModelError::Input(
                "the scan needs at least one observation".into(),
            ));
        }
        let p = series.n_static();
        if p == 0
            || p > MAX_ARMS
            || series.path.arms.iter().any(|&a| a >= p)
            || series.comparator >= p
        {
            return Err(ModelError::Input(format!(
                "the scan takes 1 to {MAX_ARMS} arms, each arm in the path among them"
            )));
        }
        let plan = FilterPlan::of(series);
        let tables = plan.tables();
        let mut effect_arm = vec![0i32; MAX_ARMS];
        for (c, a) in series.effect_arms().into_iter().enumerate() {
            effect_arm[c] = a as i32;
        }
        Ok(ScanSeries {
            n,
            p: series.n_static(),
            gap: tables
                .gap_of
                .iter()
                .map(|&g| tables.gaps[g as usize])
                .collect(),
            y: series.y[..n].to_vec(),
            step_start: tables.step_start.iter().map(|&s| s as i32).collect(),
            piece_len: tables
                .steps
                .iter()
                .map(|&(d, _)| tables.pieces[d as usize])
                .collect(),
            piece_arm: tables.steps.iter().map(|&(_, a)| a as i32).collect(),
            effect_arm,
        })
    }

    /// Observations.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True for no observations (never: [`ScanSeries::of`] refuses them).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Bytes a step of one point takes on the device, all buffers together.
    pub fn bytes_per_step(&self) -> usize {
        let p = self.p;
        8 * (4 + (1 + p) + 2 + (2 + p) + (2 + p + p * (p + 1) / 2))
    }
}

/// Where the scan's kernels run: buffers and one method a kernel.
pub trait ScanOps {
    /// A buffer of doubles.
    type F;
    /// A buffer of ints.
    type I;
    /// `len` zeros.
    fn zeros(&self, len: usize) -> Result<Self::F, ModelError>;
    /// A copy of `v`.
    fn f64s(&self, v: &[f64]) -> Result<Self::F, ModelError>;
    /// A copy of `v`.
    fn i32s(&self, v: &[i32]) -> Result<Self::I, ModelError>;
    /// The first `len` doubles of `b`, on the host.
    fn read(&self, b: &Self::F, len: usize) -> Result<Vec<f64>, ModelError>;
    /// `scan_setup`.
    #[allow(clippy::too_many_arguments)]
    fn setup(
        &self,
        n: i64,
        batch: i64,
        thetas: &Self::F,
        gap: &Self::F,
        step_start: &Self::I,
        piece_len: &Self::F,
        piece_arm: &Self::I,
        p: i32,
        mob: &mut Self::F,
        wmap: &mut Self::F,
    ) -> Result<(), ModelError>;
    /// `scan_chunks`: each chunk's composition (`kind` 0 Möbius, 1 affine).
    #[allow(clippy::too_many_arguments)]
    fn chunks(
        &self,
        n: i64,
        batch: i64,
        chunk: i64,
        kind: i32,
        width: i32,
        elems: &Self::F,
        totals: &mut Self::F,
    ) -> Result<(), ModelError>;
    /// `scan_chunk_prefix`: the chunks' exclusive prefixes, in place.
    fn chunk_prefix(
        &self,
        chunks: i64,
        batch: i64,
        kind: i32,
        width: i32,
        totals: &mut Self::F,
    ) -> Result<(), ModelError>;
    /// `scan_apply`: every element's inclusive prefix, in place.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        n: i64,
        batch: i64,
        chunk: i64,
        kind: i32,
        width: i32,
        prefixes: &Self::F,
        elems: &mut Self::F,
    ) -> Result<(), ModelError>;
    /// `scan_gains`.
    #[allow(clippy::too_many_arguments)]
    fn gains(
        &self,
        n: i64,
        batch: i64,
        thetas: &Self::F,
        gap: &Self::F,
        y: &Self::F,
        p: i32,
        effect_arm: &Self::I,
        mob_prefix: &Self::F,
        w_prefix: &Self::F,
        fr: &mut Self::F,
        means: &mut Self::F,
    ) -> Result<(), ModelError>;
    /// `scan_terms`.
    #[allow(clippy::too_many_arguments)]
    fn terms(
        &self,
        n: i64,
        batch: i64,
        y: &Self::F,
        p: i32,
        effect_arm: &Self::I,
        w_prefix: &Self::F,
        means_prefix: &Self::F,
        fr: &Self::F,
        terms: &mut Self::F,
    ) -> Result<(), ModelError>;
    /// `sum_chunks`: each chunk's sum of terms.
    #[allow(clippy::too_many_arguments)]
    fn sum_chunks(
        &self,
        n: i64,
        batch: i64,
        chunk: i64,
        width: i32,
        terms: &Self::F,
        partial: &mut Self::F,
    ) -> Result<(), ModelError>;
    /// `sum_points`: each point's sum of its chunks.
    fn sum_points(
        &self,
        chunks: i64,
        batch: i64,
        width: i32,
        partial: &Self::F,
        totals: &mut Self::F,
    ) -> Result<(), ModelError>;
}

/// A series' arrays where the kernels read them.
pub struct Uploaded<O: ScanOps> {
    gap: O::F,
    y: O::F,
    step_start: O::I,
    piece_len: O::F,
    piece_arm: O::I,
    effect_arm: O::I,
}

/// Copies `s` for `ops`.
pub fn upload<O: ScanOps>(ops: &O, s: &ScanSeries) -> Result<Uploaded<O>, ModelError> {
    Ok(Uploaded {
        gap: ops.f64s(&s.gap)?,
        y: ops.f64s(&s.y)?,
        step_start: ops.i32s(&s.step_start)?,
        piece_len: ops.f64s(&s.piece_len)?,
        piece_arm: ops.i32s(&s.piece_arm)?,
        effect_arm: ops.i32s(&s.effect_arm)?,
    })
}

/// Elements a thread walks in turn in the chunked scans and sums: long
/// enough that the chunks' own prefix (one thread a point) is short,
/// short enough that a single point's series still spreads over hundreds
/// of threads (100,000 days: 391 chunks).
pub const CHUNK: usize = 256;

/// The inclusive prefix compositions of `elems` in place (three launches).
fn prefix_in_place<O: ScanOps>(
    ops: &O,
    n: usize,
    batch: usize,
    kind: i32,
    width: i32,
    elems: &mut O::F,
) -> Result<(), ModelError> {
    let chunks = n.div_ceil(CHUNK);
    let len = if kind == 0 { 4 } else { 1 + width as usize };
    let mut totals = ops.zeros(len * chunks * batch)?;
    let (ni, bi, ci) = (n as i64, batch as i64, CHUNK as i64);
    ops.chunks(ni, bi, ci, kind, width, elems, &mut totals)?;
    ops.chunk_prefix(chunks as i64, bi, kind, width, &mut totals)?;
    ops.apply(ni, bi, ci, kind, width, &totals, elems)
}

/// The filter's sums at every point of `thetas` (all within range) over
/// the series `s`, uploaded as `up`.
pub fn sums<O: ScanOps>(
    ops: &O,
    s: &ScanSeries,
    up: &Uploaded<O>,
    thetas: &[Theta],
) -> Result<Vec<FilterSums>, ModelError> {
    let batch = thetas.len();
    if batch == 0 {
        return Ok(Vec::new());
    }
    let (n, p) = (s.n, s.p);
    let elems = n * batch;
    let (ni, bi, pi) = (n as i64, batch as i64, p as i32);
    let flat: Vec<f64> = thetas.iter().flat_map(|t| *t).collect();
    let thetas_d = ops.f64s(&flat)?;
    let mut mob = ops.zeros(4 * elems)?;
    let mut w = ops.zeros((1 + p) * elems)?;
    ops.setup(
        ni,
        bi,
        &thetas_d,
        &up.gap,
        &up.step_start,
        &up.piece_len,
        &up.piece_arm,
        pi,
        &mut mob,
        &mut w,
    )?;
    prefix_in_place(ops, n, batch, 0, 0, &mut mob)?;
    prefix_in_place(ops, n, batch, 1, pi, &mut w)?;
    let mut fr = ops.zeros(2 * elems)?;
    let mut means = ops.zeros((2 + p) * elems)?;
    ops.gains(
        ni,
        bi,
        &thetas_d,
        &up.gap,
        &up.y,
        pi,
        &up.effect_arm,
        &mob,
        &w,
        &mut fr,
        &mut means,
    )?;
    drop(mob);
    prefix_in_place(ops, n, batch, 1, 1 + pi, &mut means)?;
    let width = 2 + p + p * (p + 1) / 2;
    let mut terms = ops.zeros(width * elems)?;
    ops.terms(
        ni,
        bi,
        &up.y,
        pi,
        &up.effect_arm,
        &w,
        &means,
        &fr,
        &mut terms,
    )?;
    let chunks = n.div_ceil(CHUNK);
    let mut partial = ops.zeros(width * chunks * batch)?;
    ops.sum_chunks(ni, bi, CHUNK as i64, width as i32, &terms, &mut partial)?;
    let mut summed = ops.zeros(width * batch)?;
    ops.sum_points(chunks as i64, bi, width as i32, &partial, &mut summed)?;
    let totals = ops.read(&summed, width * batch)?;
    Ok(totals
        .chunks_exact(width)
        .map(|t| {
            let mut sums = FilterSums {
                sum_log_f: t[0],
                q: t[1],
                s: [0.0; MAX_ARMS],
                big_s: [[0.0; MAX_ARMS]; MAX_ARMS],
            };
            let mut k = 2;
            for c in 0..p {
                sums.s[c] = t[k];
                k += 1;
            }
            for c in 0..p {
                for d in 0..=c {
                    sums.big_s[c][d] = t[k];
                    k += 1;
                }
            }
            sums
        })
        .collect())
}

/// Evaluations at `thetas` by the scan: out-of-range points are `None`
/// without a launch, the others finished as the CPU finishes its pass.
pub fn evaluate<O: ScanOps>(
    ops: &O,
    s: &ScanSeries,
    up: &Uploaded<O>,
    series: &Series,
    priors: &Priors,
    thetas: &[Theta],
) -> Result<Vec<Option<Eval>>, ModelError> {
    let valid: Vec<Theta> = thetas
        .iter()
        .filter(|t| theta_in_range(t, 4))
        .copied()
        .collect();
    let mut sums = sums(ops, s, up, &valid)?.into_iter();
    let log_prior = LogPrior::new(&priors.hyper);
    Ok(thetas
        .iter()
        .map(|theta| {
            if !theta_in_range(theta, 4) {
                return None;
            }
            let filter: FilterOutput = sums.next()?.finish(series, &priors.statics).ok()?;
            let log_post = filter.log_lik + log_prior.at(theta, 4);
            log_post.is_finite().then_some(Eval {
                theta: *theta,
                log_post,
                filter,
            })
        })
        .collect())
}

/// The scan's kernels compiled for the host (tests, `nof1d doctor`).
pub struct HostOps;

impl ScanOps for HostOps {
    type F = Vec<f64>;
    type I = Vec<i32>;
    fn zeros(&self, len: usize) -> Result<Vec<f64>, ModelError> {
        Ok(vec![0.0; len.max(1)])
    }
    fn f64s(&self, v: &[f64]) -> Result<Vec<f64>, ModelError> {
        Ok(v.to_vec())
    }
    fn i32s(&self, v: &[i32]) -> Result<Vec<i32>, ModelError> {
        Ok(v.to_vec())
    }
    fn read(&self, b: &Vec<f64>, len: usize) -> Result<Vec<f64>, ModelError> {
        Ok(b[..len.min(b.len())].to_vec())
    }
    fn setup(
        &self,
        n: i64,
        batch: i64,
        thetas: &Vec<f64>,
        gap: &Vec<f64>,
        step_start: &Vec<i32>,
        piece_len: &Vec<f64>,
        piece_arm: &Vec<i32>,
        p: i32,
        mob: &mut Vec<f64>,
        wmap: &mut Vec<f64>,
    ) -> Result<(), ModelError> {
        host::scan_setup(
            n, batch, thetas, gap, step_start, piece_len, piece_arm, p, mob, wmap,
        );
        Ok(())
    }
    fn chunks(
        &self,
        n: i64,
        batch: i64,
        chunk: i64,
        kind: i32,
        width: i32,
        elems: &Vec<f64>,
        totals: &mut Vec<f64>,
    ) -> Result<(), ModelError> {
        host::scan_chunks(n, batch, chunk, kind, width, elems, totals);
        Ok(())
    }
    fn chunk_prefix(
        &self,
        chunks: i64,
        batch: i64,
        kind: i32,
        width: i32,
        totals: &mut Vec<f64>,
    ) -> Result<(), ModelError> {
        host::scan_chunk_prefix(chunks, batch, kind, width, totals);
        Ok(())
    }
    fn apply(
        &self,
        n: i64,
        batch: i64,
        chunk: i64,
        kind: i32,
        width: i32,
        prefixes: &Vec<f64>,
        elems: &mut Vec<f64>,
    ) -> Result<(), ModelError> {
        host::scan_apply(n, batch, chunk, kind, width, prefixes, elems);
        Ok(())
    }
    fn gains(
        &self,
        n: i64,
        batch: i64,
        thetas: &Vec<f64>,
        gap: &Vec<f64>,
        y: &Vec<f64>,
        p: i32,
        effect_arm: &Vec<i32>,
        mob_prefix: &Vec<f64>,
        w_prefix: &Vec<f64>,
        fr: &mut Vec<f64>,
        means: &mut Vec<f64>,
    ) -> Result<(), ModelError> {
        host::scan_gains(
            n, batch, thetas, gap, y, p, effect_arm, mob_prefix, w_prefix, fr, means,
        );
        Ok(())
    }
    fn terms(
        &self,
        n: i64,
        batch: i64,
        y: &Vec<f64>,
        p: i32,
        effect_arm: &Vec<i32>,
        w_prefix: &Vec<f64>,
        means_prefix: &Vec<f64>,
        fr: &Vec<f64>,
        terms: &mut Vec<f64>,
    ) -> Result<(), ModelError> {
        host::scan_terms(
            n,
            batch,
            y,
            p,
            effect_arm,
            w_prefix,
            means_prefix,
            fr,
            terms,
        );
        Ok(())
    }
    fn sum_chunks(
        &self,
        n: i64,
        batch: i64,
        chunk: i64,
        width: i32,
        terms: &Vec<f64>,
        partial: &mut Vec<f64>,
    ) -> Result<(), ModelError> {
        host::sum_chunks(n, batch, chunk, width, terms, partial);
        Ok(())
    }
    fn sum_points(
        &self,
        chunks: i64,
        batch: i64,
        width: i32,
        partial: &Vec<f64>,
        totals: &mut Vec<f64>,
    ) -> Result<(), ModelError> {
        host::sum_points(chunks, batch, width, partial, totals);
        Ok(())
    }
}

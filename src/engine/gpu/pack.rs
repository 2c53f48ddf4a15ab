//! Series, plans and priors packed into the flat arrays the kernels read
//! (`kernels/filter.cu` documents the layout), and one item's output back
//! into an [`Eval`]. Pure: the host launcher and the CUDA backend share it.

use nalgebra::{DMatrix, DVector};

use crate::engine::inference::{Eval, LogPrior, Priors, Theta};
use crate::engine::model::{FilterOutput, FilterPlan, MAX_ARMS, ModelError, Series};

/// Integers in a series' header (`META_LEN` in `filter.cu`).
pub const META_LEN: usize = 17;
/// Doubles in one item's output (`OUT_LEN` in `filter.cu`).
pub const OUT_LEN: usize = 45;
// Header fields that are offsets (see `filter.cu`).
const META_Y: usize = 2;
const META_GAPS: usize = 3;
const META_PIECES: usize = 5;
const META_GAP_OF: usize = 7;
const META_STEP_START: usize = 8;
const META_STEPS: usize = 9;
const META_PRIOR: usize = 10;
const OUT_OK: usize = 0;
const OUT_LOG_POST: usize = 1;
const OUT_LOG_LIK: usize = 2;
const OUT_B_MEAN: usize = 3;
const OUT_B_COV: usize = 9;

/// `ln(2 pi)` as the CPU computes it, passed to the kernel so that both use
/// the same bits.
pub fn ln_2pi() -> f64 {
    (2.0 * std::f64::consts::PI).ln()
}

/// Many series in three flat arrays: per-series headers, integers (gap
/// indices, step starts, pieces) and doubles (values, lengths, priors).
/// The fields are private and only [`Packed::push`] (which makes each
/// series' plan itself and checks its arms) and [`Packed::append`] write
/// them: every offset and index in them is within the arrays, which is what
/// the kernels rely on.
#[derive(Debug, Clone, Default)]
pub struct Packed {
    meta: Vec<i32>,
    ints: Vec<i32>,
    reals: Vec<f64>,
}

/// An offset as the kernel's `int`: the packed arrays must stay below 2^31
/// entries (about 16 GiB of doubles, far beyond any batch nof1d makes).
fn offset(len: usize) -> Result<i32, ModelError> {
    i32::try_from(len).map_err(|_| {
        ModelError::Input(format!(
            "a GPU batch of {len} entries is too large (at most {})",
            i32::MAX
        ))
    })
}

impl Packed {
    /// Nothing packed yet.
    pub fn new() -> Packed {
        Packed::default()
    }

    /// `META_LEN` integers a series (for a backend to copy).
    pub fn meta(&self) -> &[i32] {
        &self.meta
    }

    /// Gap indices, step starts and `(piece, arm)` pairs.
    pub fn ints(&self) -> &[i32] {
        &self.ints
    }

    /// Values, distinct lengths and priors.
    pub fn reals(&self) -> &[f64] {
        &self.reals
    }

    /// How many series are packed.
    pub fn len(&self) -> usize {
        self.meta.len() / META_LEN
    }

    /// The static coefficients of packed series `s`; `None` when there is
    /// no such series.
    pub fn static_count(&self, s: u32) -> Option<usize> {
        self.meta
            .get(s as usize * META_LEN + 1)
            .map(|&p| p as usize)
    }

    /// True when nothing is packed.
    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// Appends `series` (its plan made here, so that it is the series' own)
    /// with its priors, and returns its index.
    pub fn push(&mut self, series: &Series, priors: &Priors) -> Result<u32, ModelError> {
        let p = series.n_static();
        if p == 0 || p > MAX_ARMS || priors.statics.mean.len() < p || priors.statics.sd.len() < p {
            return Err(ModelError::Input(format!(
                "a series of {p} static coefficients cannot be packed for the GPU"
            )));
        }
        // The kernel indexes its regressors by arm.
        if series.path.arms.iter().any(|&a| a >= p) || series.comparator >= p {
            return Err(ModelError::Input(format!(
                "an arm beyond the {p} the series has"
            )));
        }
        let plan = FilterPlan::of(series);
        if series.y.len() < series.t.len() {
            return Err(ModelError::Input(format!(
                "{} values for {} times",
                series.y.len(),
                series.t.len()
            )));
        }
        let tables = plan.tables();
        let index = u32::try_from(self.len())
            .map_err(|_| ModelError::Input("too many series in one GPU batch".into()))?;
        let n = offset(series.t.len())?;
        let y_off = offset(self.reals.len())?;
        self.reals.extend_from_slice(&series.y[..series.t.len()]);
        let gaps_off = offset(self.reals.len())?;
        self.reals.extend_from_slice(tables.gaps);
        let pieces_off = offset(self.reals.len())?;
        self.reals.extend_from_slice(tables.pieces);
        let prior_off = offset(self.reals.len())?;
        self.reals.extend_from_slice(&priors.statics.mean[..p]);
        self.reals.extend_from_slice(&priors.statics.sd[..p]);
        self.reals
            .extend_from_slice(&LogPrior::new(&priors.hyper).constants());
        let gap_of_off = offset(self.ints.len())?;
        self.ints.extend(tables.gap_of.iter().map(|&g| g as i32));
        let step_start_off = offset(self.ints.len())?;
        self.ints
            .extend(tables.step_start.iter().map(|&g| g as i32));
        let steps_off = offset(self.ints.len())?;
        for &(d, arm) in tables.steps {
            self.ints.push(d as i32);
            self.ints.push(arm as i32);
        }
        offset(self.ints.len())?;
        offset(self.reals.len())?;
        let mut effect_arm = [0i32; MAX_ARMS];
        for (c, a) in series.effect_arms().into_iter().enumerate() {
            effect_arm[c] = a as i32;
        }
        self.meta.extend_from_slice(&[
            n,
            p as i32,
            y_off,
            gaps_off,
            offset(tables.gaps.len())?,
            pieces_off,
            offset(tables.pieces.len())?,
            gap_of_off,
            step_start_off,
            steps_off,
            prior_off,
        ]);
        self.meta.extend_from_slice(&effect_arm);
        Ok(index)
    }
}

impl Packed {
    /// Appends every series of `other` (offsets moved past what is here)
    /// and returns the index the first of them gets; an error where the
    /// offsets would not fit the kernels' `int`.
    pub fn append(&mut self, other: &Packed) -> Result<u32, ModelError> {
        let too_large = || ModelError::Input("a GPU batch too large for 32-bit offsets".into());
        let first = u32::try_from(self.len()).map_err(|_| too_large())?;
        let reals = offset(self.reals.len())?;
        let ints = offset(self.ints.len())?;
        offset(self.reals.len() + other.reals.len())?;
        offset(self.ints.len() + other.ints.len())?;
        for header in other.meta.chunks_exact(META_LEN) {
            let mut h = [0i32; META_LEN];
            h.copy_from_slice(header);
            for k in [META_Y, META_GAPS, META_PIECES, META_PRIOR] {
                h[k] = h[k].checked_add(reals).ok_or_else(too_large)?;
            }
            for k in [META_GAP_OF, META_STEP_START, META_STEPS] {
                h[k] = h[k].checked_add(ints).ok_or_else(too_large)?;
            }
            self.meta.extend_from_slice(&h);
        }
        self.ints.extend_from_slice(&other.ints);
        self.reals.extend_from_slice(&other.reals);
        Ok(first)
    }
}

/// Every item's output decoded (`out` holds `OUT_LEN` doubles an item);
/// items naming no packed series are `None`.
pub fn decode_all(packed: &Packed, items: &[(u32, Theta)], out: &[f64]) -> Vec<Option<Eval>> {
    items
        .iter()
        .enumerate()
        .map(|(i, (s, theta))| {
            let p = packed.static_count(*s)?;
            decode(out.get(i * OUT_LEN..(i + 1) * OUT_LEN)?, theta, p)
        })
        .collect()
}

/// One item's output (`OUT_LEN` doubles) as the CPU evaluator's [`Eval`]
/// for `p` static coefficients; `None` where the kernel could not evaluate
/// (out of range, degenerate, not finite), as the CPU gives `None`.
pub fn decode(out: &[f64], theta: &Theta, p: usize) -> Option<Eval> {
    if out.len() < OUT_LEN || out[OUT_OK] != 1.0 {
        return None;
    }
    let b_mean = DVector::from_column_slice(&out[OUT_B_MEAN..OUT_B_MEAN + p]);
    let b_cov = DMatrix::from_fn(p, p, |r, c| out[OUT_B_COV + r * MAX_ARMS + c]);
    Some(Eval {
        theta: *theta,
        log_post: out[OUT_LOG_POST],
        filter: FilterOutput {
            log_lik: out[OUT_LOG_LIK],
            b_mean,
            b_cov,
            importance: None,
        },
    })
}

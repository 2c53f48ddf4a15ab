//! The series and points every check of a GPU backend against the CPU
//! engine uses: the unit tests, `nof1d doctor` and `nof1d bench gpu`. Two
//! to six arms, daily and irregular times (more distinct gaps than the
//! kernels table), short and long series.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::engine::gpu::Device;
use crate::engine::gpu::pack::Packed;
use crate::engine::inference::{CpuEvaluator, Eval, Evaluator, HyperPriors, Priors, Theta};
use crate::engine::model::{ArmPath, ModelError, Series, StaticPrior};

/// The hyperparameters' priors of the checks (the defaults for a scale of 1.3).
pub fn hyper() -> HyperPriors {
    HyperPriors {
        drift_time_median_days: 3.0,
        drift_time_log_sd: 1.0,
        drift_sd_scale: 1.3,
        half_life_median_days: 1.0,
        half_life_log_sd: 0.75,
        noise_sd_scale: 1.3,
        precision_median: 20.0,
        precision_log_sd: 1.0,
    }
}

/// A series of `days` with `arms` arms in periods of `period` days, some
/// days missing and, when `irregular`, times off the daily grid (many
/// distinct gaps, beyond the kernel's table of exponentials).
pub fn series(seed: u64, days: usize, arms: usize, period: usize, irregular: bool) -> Series {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut t = Vec::new();
    let mut y = Vec::new();
    for d in 0..days {
        if rng.random::<f64>() < 0.1 {
            continue;
        }
        let jitter = if irregular {
            rng.random::<f64>() * 0.9
        } else {
            0.8
        };
        t.push(d as f64 + jitter);
        y.push(3.0 + rng.random::<f64>() * 2.0 + (d / period % arms) as f64 * 0.4);
    }
    let mut starts = Vec::new();
    let mut path_arms = Vec::new();
    for p in 0..days.div_ceil(period) {
        starts.push((p * period) as f64);
        path_arms.push((p + seed as usize) % arms);
    }
    Series {
        t,
        y,
        path: ArmPath {
            starts,
            arms: path_arms,
        },
        n_arms: arms,
        comparator: 0,
    }
}

/// Priors of `arms` static coefficients: a wide baseline, effects around 0.
pub fn priors(arms: usize) -> Priors {
    Priors {
        hyper: hyper(),
        statics: StaticPrior {
            mean: std::iter::once(4.0)
                .chain(std::iter::repeat_n(0.0, arms - 1))
                .collect(),
            sd: std::iter::once(5.0)
                .chain(std::iter::repeat_n(1.3, arms - 1))
                .collect(),
        },
    }
}

/// `n` points spread over the plausible region of `theta` (and beyond it).
pub fn points(seed: u64, n: usize) -> Vec<Theta> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| std::array::from_fn(|_| rng.random::<f64>() * 5.0 - 2.5))
        .collect()
}

/// The equivalence set: `(arms, period, days, irregular)` cases with their
/// priors.
pub fn equivalence_set() -> Vec<(Series, Priors)> {
    [
        (2, 7, 60, false),
        (2, 14, 365, false),
        (3, 7, 120, true),
        (4, 5, 200, false),
        (6, 3, 90, true),
        (2, 7, 2000, true),
    ]
    .iter()
    .enumerate()
    .map(|(k, &(arms, period, days, irregular))| {
        (
            series(k as u64 + 1, days, arms, period, irregular),
            priors(arms),
        )
    })
    .collect()
}

/// Largest differences between two evaluations of the same points.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Agreement {
    /// Points compared.
    pub points: usize,
    /// Points one side evaluated and the other refused.
    pub refused_by_one: usize,
    /// Largest relative difference of the log posterior.
    pub log_post: f64,
    /// Largest relative difference of an effect posterior mean.
    pub b_mean: f64,
    /// Largest relative difference of an effect posterior covariance entry.
    pub b_cov: f64,
}

/// `|a - b|` relative to the larger, with a floor of 1.
fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / (1.0 + a.abs().max(b.abs()))
}

/// Folds one pair of evaluations into `agreement`.
fn compare(agreement: &mut Agreement, cpu: Option<&Eval>, other: Option<&Eval>) {
    agreement.points += 1;
    match (cpu, other) {
        (Some(c), Some(g)) => {
            agreement.log_post = agreement.log_post.max(relative(c.log_post, g.log_post));
            for (a, b) in c.filter.b_mean.iter().zip(g.filter.b_mean.iter()) {
                agreement.b_mean = agreement.b_mean.max(relative(*a, *b));
            }
            for (a, b) in c.filter.b_cov.iter().zip(g.filter.b_cov.iter()) {
                agreement.b_cov = agreement.b_cov.max(relative(*a, *b));
            }
        }
        (None, None) => {}
        _ => agreement.refused_by_one += 1,
    }
}

/// The host-compiled kernels against the CPU evaluator.
pub fn host_agreement(set: &[(Series, Priors)], thetas: &[Theta]) -> Result<Agreement, ModelError> {
    let mut packed = Packed::new();
    for (s, p) in set {
        packed.push(s, p)?;
    }
    let items: Vec<(u32, Theta)> = (0..set.len() as u32)
        .flat_map(|s| thetas.iter().map(move |t| (s, *t)))
        .collect();
    let got = super::host::filter_batch(&packed, &items);
    let mut a = Agreement::default();
    for ((s, theta), g) in items.iter().zip(&got) {
        let (series, priors) = &set[*s as usize];
        let c = CpuEvaluator::new(series, priors).eval(theta);
        compare(&mut a, c.as_ref(), g.as_ref());
    }
    Ok(a)
}

/// A device's evaluations against the CPU evaluator.
pub fn device_agreement(
    device: &dyn Device,
    set: &[(Series, Priors)],
    thetas: &[Theta],
) -> Result<Agreement, ModelError> {
    let mut a = Agreement::default();
    for (series, priors) in set {
        let cpu = CpuEvaluator::new(series, priors);
        let ev = device.gaussian(series, priors)?;
        let got = ev.eval_batch(thetas, 1);
        for (theta, g) in thetas.iter().zip(&got) {
            compare(&mut a, cpu.eval(theta).as_ref(), g.as_ref());
        }
    }
    Ok(a)
}

/// The host-compiled kernels against the CPU evaluator on a small set
/// (`nof1d doctor`).
pub fn quick_host_check() -> Result<Agreement, ModelError> {
    host_agreement(&equivalence_set()[..3], &points(11, 32))
}

/// The device against the CPU evaluator on a small set (`nof1d doctor`).
pub fn quick_device_check(device: &dyn Device) -> Result<Agreement, ModelError> {
    device_agreement(device, &equivalence_set()[..3], &points(11, 32))
}

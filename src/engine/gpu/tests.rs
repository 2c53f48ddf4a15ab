//! The kernels' arithmetic against the CPU engine, on every machine: the
//! same `.cu` sources compiled for the host ([`super::host`]).

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::host;
use super::pack::Packed;
use crate::engine::inference::{CpuEvaluator, Evaluator, HyperPriors, Priors, Theta};
use crate::engine::model::{ArmPath, FilterPlan, Series, StaticPrior};

fn hyper() -> HyperPriors {
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
fn series(seed: u64, days: usize, arms: usize, period: usize, irregular: bool) -> Series {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut t = Vec::new();
    let mut y = Vec::new();
    for d in 0..days {
        if rng.random::<f64>() < 0.1 {
            continue;
        }
        let jitter = if irregular { rng.random::<f64>() * 0.9 } else { 0.8 };
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

fn priors(arms: usize) -> Priors {
    Priors {
        hyper: hyper(),
        statics: StaticPrior {
            mean: std::iter::once(4.0).chain(std::iter::repeat_n(0.0, arms - 1)).collect(),
            sd: std::iter::once(5.0).chain(std::iter::repeat_n(1.3, arms - 1)).collect(),
        },
    }
}

fn points(seed: u64, n: usize) -> Vec<Theta> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| std::array::from_fn(|_| rng.random::<f64>() * 5.0 - 2.5))
        .collect()
}

/// Relative difference, with an absolute floor for values near zero.
fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

#[test]
fn host_kernel_matches_the_cpu_evaluator() {
    // Two to six arms, daily and irregular times, short and long series:
    // every point's log posterior, effect means and covariances agree.
    let cases = [
        (2, 7, 60, false),
        (2, 14, 365, false),
        (3, 7, 120, true),
        (4, 5, 200, false),
        (6, 3, 90, true),
    ];
    let mut packed = Packed::new();
    let mut owned = Vec::new();
    for (k, &(arms, period, days, irregular)) in cases.iter().enumerate() {
        let s = series(k as u64 + 1, days, arms, period, irregular);
        let p = priors(arms);
        packed
            .push(&s, &FilterPlan::of(&s), &p)
            .expect("packs");
        owned.push((s, p));
    }
    let thetas = points(7, 40);
    let items: Vec<(u32, Theta)> = (0..owned.len() as u32)
        .flat_map(|s| thetas.iter().map(move |t| (s, *t)))
        .collect();
    let got = host::filter_batch(&packed, &items);
    assert_eq!(got.len(), items.len());
    let mut compared = 0;
    for ((s, theta), gpu) in items.iter().zip(&got) {
        let (series, priors) = &owned[*s as usize];
        let cpu = CpuEvaluator::new(series, priors).eval(theta);
        match (cpu, gpu) {
            (None, None) => {}
            (Some(c), Some(g)) => {
                compared += 1;
                assert!(
                    close(c.log_post, g.log_post, 1e-12),
                    "log_post {} vs {} at {theta:?}",
                    c.log_post,
                    g.log_post
                );
                assert!(close(c.filter.log_lik, g.filter.log_lik, 1e-12));
                for (a, b) in c.filter.b_mean.iter().zip(g.filter.b_mean.iter()) {
                    assert!(close(*a, *b, 1e-10), "b_mean {a} vs {b}");
                }
                assert_eq!(c.filter.b_cov.shape(), g.filter.b_cov.shape());
                for (a, b) in c.filter.b_cov.iter().zip(g.filter.b_cov.iter()) {
                    assert!(close(*a, *b, 1e-10), "b_cov {a} vs {b}");
                }
            }
            (c, g) => panic!(
                "one side evaluated and the other not at {theta:?}: cpu {} gpu {}",
                c.is_some(),
                g.is_some()
            ),
        }
    }
    assert!(compared > items.len() / 2, "only {compared} points evaluated");
}

#[test]
fn host_kernel_refuses_what_the_cpu_refuses() {
    let s = series(3, 60, 2, 7, false);
    let p = priors(2);
    let mut packed = Packed::new();
    packed.push(&s, &FilterPlan::of(&s), &p).expect("packs");
    let items = [
        (0, [f64::NAN, 0.0, 0.0, 0.0]),
        (0, [0.0, 21.0, 0.0, 0.0]),
        (0, [0.0, 0.0, 0.0, f64::INFINITY]),
        // A series that was never packed.
        (5, [0.0; 4]),
        (0, [1.0, -0.5, 0.0, 0.2]),
    ];
    let got = host::filter_batch(&packed, &items);
    assert!(got[..4].iter().all(Option::is_none));
    assert!(got[4].is_some());
}

#[test]
fn appended_packs_evaluate_as_their_parts() {
    let (a, b) = (series(1, 80, 2, 7, false), series(2, 50, 3, 5, true));
    let (pa, pb) = (priors(2), priors(3));
    let mut one = Packed::new();
    one.push(&a, &FilterPlan::of(&a), &pa).expect("packs");
    let mut two = Packed::new();
    two.push(&b, &FilterPlan::of(&b), &pb).expect("packs");
    let mut both = Packed::new();
    assert_eq!(both.append(&one), 0);
    assert_eq!(both.append(&two), 1);
    let theta = [1.0, -0.3, 0.1, 0.0];
    let alone = host::filter_batch(&two, &[(0, theta)]);
    let together = host::filter_batch(&both, &[(1, theta), (0, theta)]);
    let (x, y) = (alone[0].as_ref().expect("evaluates"), together[0].as_ref().expect("evaluates"));
    assert_eq!(x.log_post.to_bits(), y.log_post.to_bits());
    assert!(together[1].is_some());
}

#[test]
fn kernel_sources_inline_their_header() {
    for (name, src) in super::KERNELS {
        let s = super::kernel_source(src);
        assert!(!s.contains("#include \"common.h\""), "{name}");
        assert!(s.contains("NOF1D_KERNEL"), "{name}");
    }
}

//! Simulation-based calibration, quick version (fixed seeds): for every
//! family the engine fits, the rank of the true effect among posterior draws
//! is uniform and the 50%/90% intervals cover at their nominal rates. The
//! full runs are `nof1d bench sbc --family F` (see bench/README.md).

use nof1d::engine::spec::{Family, NoiseModel};

fn check(family: Family, reps: usize, seed: u64) {
    check_noise(family, NoiseModel::Normal, reps, seed);
}

fn check_noise(family: Family, noise: NoiseModel, reps: usize, seed: u64) {
    let r = nof1d::cli::bench::sbc(family, noise, reps, 56, seed, false);
    assert!(r.replications + r.failed >= reps, "{r:?}");
    assert!(r.failed * 50 <= reps, "more than 2% of fits failed: {r:?}");
    let n = r.replications as f64;
    // Coverage within 3 binomial sds of nominal: sd = sqrt(p (1 - p) / n).
    let sd90 = (0.9 * 0.1 / n).sqrt();
    let sd50 = (0.5 * 0.5 / n).sqrt();
    assert!(
        (r.coverage90 - 0.9).abs() < 3.0 * sd90,
        "{family:?} {noise:?}: 90% coverage {}",
        r.coverage90
    );
    assert!(
        (r.coverage50 - 0.5).abs() < 3.0 * sd50,
        "{family:?} {noise:?}: 50% coverage {}",
        r.coverage50
    );
    // Ranks uniform: chi-square with 9 df exceeds 27.88 with probability 0.001.
    assert!(
        r.chi_square < 27.88,
        "{family:?} {noise:?}: ranks {:?}, chi2 {}",
        r.rank_histogram,
        r.chi_square
    );
}

#[test]
fn gaussian_fit_is_calibrated() {
    check(Family::Gaussian, 200, 20261125);
}

#[test]
fn student_t_noise_fit_is_calibrated() {
    check_noise(Family::Gaussian, NoiseModel::StudentT, 100, 20261206);
}

#[test]
fn poisson_fit_is_calibrated() {
    check(Family::Poisson, 100, 20261126);
}

#[test]
fn bernoulli_fit_is_calibrated() {
    check(Family::Bernoulli, 100, 20261127);
}

#[test]
fn binomial_fit_is_calibrated() {
    check(Family::Binomial, 100, 20261128);
}

#[test]
fn beta_fit_is_calibrated() {
    check(Family::Beta, 100, 20261202);
}

//! Simulation-based calibration of the gaussian fit, quick version (fixed
//! seed). The full run is `nof1d bench sbc` (see bench/README.md).

#[test]
fn gaussian_fit_is_calibrated() {
    let r = nof1d::bench::sbc(200, 56, 20261125);
    assert!(r.replications >= 195, "{r:?}");
    let n = r.replications as f64;
    // Coverage within 3 binomial sds of nominal: sd = sqrt(p (1 - p) / n).
    let sd90 = (0.9 * 0.1 / n).sqrt();
    let sd50 = (0.5 * 0.5 / n).sqrt();
    assert!(
        (r.coverage90 - 0.9).abs() < 3.0 * sd90,
        "90% coverage {}",
        r.coverage90
    );
    assert!(
        (r.coverage50 - 0.5).abs() < 3.0 * sd50,
        "50% coverage {}",
        r.coverage50
    );
    // Ranks uniform: chi-square with 9 df exceeds 27.88 with probability 0.001.
    assert!(
        r.chi_square < 27.88,
        "rank histogram {:?}, chi2 {}",
        r.rank_histogram,
        r.chi_square
    );
}

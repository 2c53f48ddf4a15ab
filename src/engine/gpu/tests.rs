//! The kernels' arithmetic against the CPU engine, on every machine: the
//! same `.cu` sources compiled for the host ([`super::host`]).

use super::host;
use super::pack::Packed;
use crate::engine::inference::{CpuEvaluator, Evaluator, Theta};

use super::check::{equivalence_set, points, priors, series};

#[test]
fn host_kernel_matches_the_cpu_evaluator() {
    // Two to six arms, daily and irregular times, short and long series:
    // every point's log posterior, effect means and covariances are the
    // CPU's bit for bit (the same operations in the same order, unfused,
    // with the same libm).
    let owned = equivalence_set();
    let mut packed = Packed::new();
    for (s, p) in &owned {
        packed.push(s, p).expect("packs");
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
                assert_eq!(
                    c.log_post.to_bits(),
                    g.log_post.to_bits(),
                    "log_post {} vs {} at {theta:?}",
                    c.log_post,
                    g.log_post
                );
                assert_eq!(c.filter.log_lik.to_bits(), g.filter.log_lik.to_bits());
                assert_eq!(c.filter.b_mean, g.filter.b_mean);
                assert_eq!(c.filter.b_cov, g.filter.b_cov);
            }
            (c, g) => panic!(
                "one side evaluated and the other not at {theta:?}: cpu {} gpu {}",
                c.is_some(),
                g.is_some()
            ),
        }
    }
    assert!(
        compared > items.len() / 2,
        "only {compared} points evaluated"
    );
}

#[test]
fn host_kernel_refuses_what_the_cpu_refuses() {
    let s = series(3, 60, 2, 7, false);
    let p = priors(2);
    let mut packed = Packed::new();
    packed.push(&s, &p).expect("packs");
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
    one.push(&a, &pa).expect("packs");
    let mut two = Packed::new();
    two.push(&b, &pb).expect("packs");
    let mut both = Packed::new();
    assert_eq!(both.append(&one).expect("fits"), 0);
    assert_eq!(both.append(&two).expect("fits"), 1);
    let theta = [1.0, -0.3, 0.1, 0.0];
    let alone = host::filter_batch(&two, &[(0, theta)]);
    let together = host::filter_batch(&both, &[(1, theta), (0, theta)]);
    let (x, y) = (
        alone[0].as_ref().expect("evaluates"),
        together[0].as_ref().expect("evaluates"),
    );
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

/// Every kernel compiles to PTX through NVRTC, for the oldest and the
/// newest architecture nof1d supports, with no device: a kernel that does
/// not compile for the GPU fails here. Skipped (with a line saying so)
/// where NVRTC is not installed, unless `NOF1D_REQUIRE_NVRTC=1`, which CI
/// sets after installing NVRTC from PyPI (`.ci/run`).
#[cfg(feature = "cuda")]
#[test]
fn every_kernel_compiles_to_ptx_with_nvrtc() {
    let required = std::env::var("NOF1D_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    let version = match super::cuda::nvrtc_version() {
        Ok(v) => v,
        Err(why) if !required => {
            eprintln!("skipped: {why} (set NOF1D_REQUIRE_NVRTC=1 to require it)");
            return;
        }
        Err(why) => panic!("NVRTC is required here: {why}"),
    };
    for arch in ["compute_75", "compute_90"] {
        let compiled = super::cuda::compile_kernels(Some(arch))
            .unwrap_or_else(|e| panic!("NVRTC {version}, {arch}: {e}"));
        assert_eq!(compiled.len(), super::KERNELS.len());
        for (name, ptx) in compiled {
            let text = ptx.to_src();
            assert!(
                text.contains(".entry"),
                "{name} for {arch} has no kernel entry"
            );
            // f64 all through. (The PTX does hold fma: CUDA's own exp and
            // log are written with it; `--fmad=false` keeps the kernel's
            // arithmetic unfused, and the device check measures the rest.)
            assert!(text.contains(".f64"), "{name} is not f64");
        }
    }
}

/// The parallel-in-time filter (host-compiled `scan.cu`) gives the
/// sequential filter's log posterior and effect posterior: the same sums
/// added in another order (by chunks of `scan::CHUNK` instead of one
/// running total) and the variance through composed Möbius maps, so equal
/// to rounding: 1e-9 relative on series of one to eight chunks, two to six
/// arms.
#[test]
fn scan_matches_the_sequential_filter() {
    use super::scan::{HostOps, ScanSeries, evaluate, upload};
    let cases = [
        (2, 7, 60, false),
        (2, 14, 2000, false),
        (3, 7, 120, true),
        (6, 3, 90, true),
        (2, 1, 5, false),
        (3, 7, 700, true),
    ];
    for (k, &(arms, period, days, irregular)) in cases.iter().enumerate() {
        let s = series(k as u64 + 11, days, arms, period, irregular);
        let p = priors(arms);
        let scan = ScanSeries::of(&s).expect("scans");
        let up = upload(&HostOps, &scan).expect("uploads");
        let mut thetas = points(k as u64, 24);
        thetas.push([f64::NAN, 0.0, 0.0, 0.0]);
        let got = evaluate(&HostOps, &scan, &up, &s, &p, &thetas).expect("evaluates");
        let cpu = CpuEvaluator::new(&s, &p);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()));
        let mut compared = 0;
        for (theta, g) in thetas.iter().zip(&got) {
            match (cpu.eval(theta), g) {
                (None, None) => {}
                (Some(c), Some(g)) => {
                    compared += 1;
                    assert!(
                        close(c.log_post, g.log_post),
                        "case {k}: log_post {} vs {} at {theta:?}",
                        c.log_post,
                        g.log_post
                    );
                    for (a, b) in c.filter.b_mean.iter().zip(g.filter.b_mean.iter()) {
                        assert!(close(*a, *b), "case {k}: b_mean {a} vs {b}");
                    }
                    for (a, b) in c.filter.b_cov.iter().zip(g.filter.b_cov.iter()) {
                        assert!(close(*a, *b), "case {k}: b_cov {a} vs {b}");
                    }
                }
                (c, g) => panic!(
                    "case {k}: cpu {} scan {} at {theta:?}",
                    c.is_some(),
                    g.is_some()
                ),
            }
        }
        assert!(compared >= 12, "case {k}: only {compared} compared");
    }
}

/// What the kernels index by is checked before anything reaches them: a
/// path naming an arm the series does not have, or more arms than the
/// kernels carry, is refused with an error.
#[test]
fn series_the_kernels_cannot_take_are_refused() {
    let mut s = series(4, 30, 2, 7, false);
    s.path.arms[1] = 5;
    let p = priors(2);
    let mut packed = Packed::new();
    assert!(packed.push(&s, &p).is_err());
    assert!(super::scan::ScanSeries::of(&s).is_err());
    assert!(packed.is_empty());
    let mut wide = series(4, 30, 2, 7, false);
    wide.n_arms = 7;
    assert!(packed.push(&wide, &priors(7)).is_err());
    assert!(super::scan::ScanSeries::of(&wide).is_err());
}

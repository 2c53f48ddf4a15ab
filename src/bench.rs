//! `nof1d bench engine`: timings of the engine on simulated data, printed as
//! JSON so that `bench/` scripts can compare them. No timing is asserted
//! anywhere in the tests; these figures go into notes.

use std::time::Instant;

use serde::Serialize;

use crate::fit::{FitSpec, Method, fit};
use crate::inference::{GridOptions, McmcOptions};
use crate::model::{ArmPath, Hyper, Series, StaticPrior, augmented_filter};
use crate::protocol::Outcome;
use crate::simulate::{ModelParams, simulate_daily};

/// A two-arm daily series of `days` days in weekly periods (AB BA ... by
/// counterbalanced pairs), simulated from the model with effect `beta`.
pub fn two_arm_series(days: usize, beta: f64, seed: u64) -> Series {
    let arms: Vec<usize> = (0..days).map(|d| (d / 7 + d / 14) % 2).collect();
    let params = ModelParams {
        mu: 5.0,
        beta: vec![0.0, beta],
        lambda: 1.0 / 4.0,
        sigma_x: 0.8 * 0.5f64.sqrt(),
        kappa: std::f64::consts::LN_2 / 1.5,
        sigma_y: 0.9,
    };
    let pts = simulate_daily(&params, &arms, 0.875, seed);
    let mut starts = vec![0.0];
    let mut path_arms = vec![arms[0]];
    for d in 1..days {
        if arms[d] != arms[d - 1] {
            starts.push(d as f64);
            path_arms.push(arms[d]);
        }
    }
    Series {
        t: pts.iter().map(|p| p.t).collect(),
        y: pts.iter().map(|p| p.y).collect(),
        path: ArmPath {
            starts,
            arms: path_arms,
        },
        n_arms: 2,
        comparator: 0,
    }
}

/// One line of the engine benchmark.
#[derive(Debug, Serialize)]
pub struct EngineTiming {
    /// Observations.
    pub days: usize,
    /// Mean time of one augmented filter pass, microseconds.
    pub filter_us: f64,
    /// Median wall time of a grid fit, milliseconds.
    pub grid_fit_ms: f64,
    /// Posterior evaluations per grid fit.
    pub grid_evaluations: usize,
    /// The grid's verdict.
    pub grid_converged: bool,
    /// Effect mean and sd from the grid.
    pub grid_effect: [f64; 2],
    /// MCMC reference (when asked): wall ms, effect mean and sd, min bulk ESS.
    pub mcmc: Option<McmcTiming>,
}

/// The MCMC reference run of a benchmark line.
#[derive(Debug, Serialize)]
pub struct McmcTiming {
    /// Wall time, milliseconds.
    pub wall_ms: f64,
    /// Effect mean and sd.
    pub effect: [f64; 2],
    /// Smallest bulk ESS (hyperparameters and effect).
    pub min_ess: f64,
    /// Effect ESS per second.
    pub effect_ess_per_s: f64,
    /// |grid mean - mcmc mean| / mcmc sd, and |grid sd / mcmc sd - 1|.
    pub grid_vs_mcmc: [f64; 2],
}

/// Times the filter and the grid fit at `days`, optionally against MCMC with `mcmc_draws` per chain.
pub fn engine(
    days: usize,
    reps: usize,
    mcmc_draws: Option<usize>,
    outcome: &Outcome,
) -> EngineTiming {
    let series = two_arm_series(days, -1.5, 11);
    let h = Hyper {
        lambda: 0.25,
        drift_sd: 0.8,
        kappa: 0.46,
        sigma_y: 0.9,
    };
    let prior = StaticPrior {
        mean: vec![5.0, 0.0],
        sd: vec![3.0, 1.5],
    };
    let n_filter = (2_000_000 / days.max(1)).clamp(100, 200_000);
    let t0 = Instant::now();
    let mut sink = 0.0;
    for _ in 0..n_filter {
        sink += augmented_filter(&series, &h, &prior).map_or(0.0, |o| o.log_lik);
    }
    let filter_us = t0.elapsed().as_secs_f64() * 1e6 / n_filter as f64;
    std::hint::black_box(sink);
    let spec = |method| FitSpec {
        outcome,
        arm_keys: vec!["control".into(), "treatment".into()],
        run_in_sd: None,
        method,
        seed: 1,
        mcmc: McmcOptions {
            draws: mcmc_draws.unwrap_or(5000),
            warmup: 3000,
            ..McmcOptions::default()
        },
        grid: GridOptions::default(),
    };
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let r = fit(&series, &spec(Method::Grid));
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        last = r.ok();
    }
    times.sort_by(f64::total_cmp);
    let grid = last.expect("grid fit on simulated data");
    let mcmc = mcmc_draws.map(|_| {
        let m = fit(&series, &spec(Method::Mcmc)).expect("mcmc fit on simulated data");
        let ess = m.diagnostics.ess_bulk.clone().unwrap_or_default();
        let min_ess = ess.values().copied().fold(f64::INFINITY, f64::min);
        let effect_ess = ess.get("effect:treatment").copied().unwrap_or(f64::NAN);
        let (gm, gs) = (grid.effects[0].mean, grid.effects[0].sd);
        let (mm, ms) = (m.effects[0].mean, m.effects[0].sd);
        McmcTiming {
            wall_ms: m.diagnostics.wall_ms,
            effect: [mm, ms],
            min_ess,
            effect_ess_per_s: effect_ess / (m.diagnostics.wall_ms / 1000.0),
            grid_vs_mcmc: [(gm - mm).abs() / ms, (gs / ms - 1.0).abs()],
        }
    });
    EngineTiming {
        days,
        filter_us,
        grid_fit_ms: times[times.len() / 2],
        grid_evaluations: grid.diagnostics.evaluations,
        grid_converged: grid.diagnostics.converged,
        grid_effect: [grid.effects[0].mean, grid.effects[0].sd],
        mcmc,
    }
}

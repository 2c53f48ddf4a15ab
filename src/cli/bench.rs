//! `nof1d bench engine|sbc`: timings of the engine on simulated data and
//! simulation-based calibration, printed as JSON so that `bench/` scripts
//! can compare them. No timing is asserted anywhere in the tests; these
//! figures go into notes.

use std::time::Instant;

use serde::Serialize;

use crate::engine::fit::{FitSpec, Method, fit};
use crate::engine::generate::draw;
use crate::engine::generate::{ModelParams, daily_series, simulate_daily, two_arm_series};
use crate::engine::inference::{GridOptions, McmcOptions};
use crate::engine::model::{
    FilterPlan, Hyper, LANES, StaticPrior, augmented_filter_batch, augmented_filter_planned,
};
use crate::engine::spec::{Family, ModelSpec, NoiseModel};

/// One line of the engine benchmark.
#[derive(Debug, Serialize)]
pub struct EngineTiming {
    /// Observations.
    pub days: usize,
    /// Mean time of one augmented filter pass, microseconds.
    pub filter_us: f64,
    /// The same per pass when passes run [`LANES`] side by side (the
    /// evaluator's batches), microseconds.
    pub filter_batch_us: f64,
    /// Median wall time of a grid fit, milliseconds.
    pub grid_fit_ms: f64,
    /// Threads the grid fit spread its evaluations over.
    pub grid_threads: usize,
    /// Posterior evaluations per grid fit.
    pub grid_evaluations: usize,
    /// The grid's verdict.
    pub grid_converged: bool,
    /// Effect mean and sd from the grid.
    pub grid_effect: [f64; 2],
    /// Adaptive Metropolis reference (when asked): wall ms, effect mean and sd, min bulk ESS.
    pub mcmc: Option<McmcTiming>,
    /// NUTS reference (when asked), with [`McmcOptions::nuts_default`].
    pub nuts: Option<McmcTiming>,
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
    /// The reference's own verdict (R-hat, ESS; no divergences for NUTS).
    pub converged: bool,
}

/// Times the filter and the grid fit at `days`, optionally against MCMC
/// with `mcmc_draws` per chain and NUTS with `nuts_draws` per chain; the
/// grid fit on `threads` threads (default: the grid's, all cores up to 4).
pub fn engine(
    days: usize,
    reps: usize,
    mcmc_draws: Option<usize>,
    nuts_draws: usize,
    threads: Option<usize>,
    model: &ModelSpec,
) -> EngineTiming {
    let series = two_arm_series(days, -1.5, 11);
    let grid_threads = threads.unwrap_or(GridOptions::default().threads);
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
    // One pass as the evaluator runs it: the series' plan is made once per
    // fit, not per pass.
    let plan = FilterPlan::of(&series);
    let t0 = Instant::now();
    let mut sink = 0.0;
    for _ in 0..n_filter {
        sink += augmented_filter_planned(&series, &plan, &series.y, &h, &prior, None)
            .map_or(0.0, |o| o.log_lik);
    }
    let filter_us = t0.elapsed().as_secs_f64() * 1e6 / n_filter as f64;
    // The same passes LANES at a time, as the evaluator's batches run them.
    let lanes: [Hyper; LANES] = std::array::from_fn(|l| Hyper {
        lambda: h.lambda * (1.0 + 0.01 * l as f64),
        ..h
    });
    let t0 = Instant::now();
    for _ in 0..n_filter.div_ceil(LANES) {
        for out in augmented_filter_batch(&series, &plan, &series.y, &lanes, &prior) {
            sink += out.map_or(0.0, |o| o.log_lik);
        }
    }
    let filter_batch_us =
        t0.elapsed().as_secs_f64() * 1e6 / (n_filter.div_ceil(LANES) * LANES) as f64;
    std::hint::black_box(sink);
    let spec = |method| FitSpec {
        model,
        arm_keys: vec!["control".into(), "treatment".into()],
        run_in: None,
        method,
        seed: 1,
        mcmc: McmcOptions {
            draws: mcmc_draws.unwrap_or(5000),
            warmup: 3000,
            ..McmcOptions::default()
        },
        grid: GridOptions {
            threads: grid_threads,
            ..GridOptions::default()
        },
        dropped: Vec::new(),
        path: true,
        intervals: true,
        device: None,
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
    let reference = |method: Method| {
        let spec = FitSpec {
            mcmc: match method {
                Method::Nuts => McmcOptions {
                    draws: nuts_draws,
                    ..McmcOptions::nuts_default()
                },
                _ => spec(method).mcmc,
            },
            ..spec(method)
        };
        let m = fit(&series, &spec).expect("reference fit on simulated data");
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
            converged: m.diagnostics.converged,
        }
    };
    let mcmc = mcmc_draws.map(|_| reference(Method::Mcmc));
    let nuts = mcmc_draws.map(|_| reference(Method::Nuts));
    EngineTiming {
        days,
        filter_us,
        filter_batch_us,
        grid_fit_ms: times[times.len() / 2],
        grid_threads,
        grid_evaluations: grid.diagnostics.evaluations,
        grid_converged: grid.diagnostics.converged,
        grid_effect: [grid.effects[0].mean, grid.effects[0].sd],
        mcmc,
        nuts,
    }
}

/// Result of simulation-based calibration (`statistics.md` §6).
#[derive(Debug, Serialize)]
pub struct SbcResult {
    /// Replications.
    pub replications: usize,
    /// Days per simulated series.
    pub days: usize,
    /// Rank of the true effect among 99 posterior draws, per replication (0..=99).
    pub ranks: Vec<usize>,
    /// Counts of ranks in 10 equal bins.
    pub rank_histogram: Vec<usize>,
    /// Pearson chi-square of the histogram against uniform (9 degrees of freedom).
    pub chi_square: f64,
    /// Share of replications whose 50% interval covered the truth.
    pub coverage50: f64,
    /// Share whose 90% interval covered the truth.
    pub coverage90: f64,
    /// Fits whose own check said "not converged".
    pub not_converged: usize,
    /// Fits that returned an error (left out of the ranks and coverage).
    pub failed: usize,
    /// With `mc_check`: the Monte Carlo error estimate against the
    /// observed seed-to-seed spread.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mc_check: Option<McCheck>,
}

/// Each replication fitted twice with different seeds: `observed` is
/// `sqrt(mean((m1 - m2)^2) / 2)`, the seed-to-seed sd of the effect's mean,
/// and `estimated` the root mean square of the fits' own `mc_error.mean`,
/// both in posterior sds; calibrated when `ratio` (observed / estimated) is
/// near 1.
#[derive(Debug, Clone, Serialize)]
pub struct McCheck {
    /// Replications with both fits.
    pub replications: usize,
    /// Observed seed-to-seed sd of the effect's mean (posterior sds).
    pub observed: f64,
    /// The fits' own estimate (root mean square, posterior sds).
    pub estimated: f64,
    /// `observed / estimated`.
    pub ratio: f64,
}

/// Simulation-based calibration of the gaussian fit: parameters drawn from
/// the prior (the SBC outcome's explicit priors, scale 1), a two-arm
/// counterbalanced series simulated from the model, fitted by the grid path;
/// the rank of the true effect among 99 posterior draws must be uniform and
/// the 50%/90% intervals must cover at their nominal rates.
/// With `mc_check` (non-gaussian families) each replication is fitted a
/// second time with another seed, to set the fits' own Monte Carlo error
/// estimate against the spread it estimates ([`McCheck`]). `noise`
/// (gaussian only) draws and fits Student-t errors instead of normal ones.
pub fn sbc(
    family: Family,
    noise: NoiseModel,
    replications: usize,
    days: usize,
    seed: u64,
    mc_check: bool,
) -> SbcResult {
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha20Rng;
    use rand_distr::{Distribution, StandardNormal};

    let outcome = sbc_outcome(family, noise);
    let student_t = noise == NoiseModel::StudentT;
    let t_errors = rand_distr::StudentT::new(crate::engine::spec::STUDENT_T_DF)
        .unwrap_or_else(|e| panic!("Student-t of fixed degrees of freedom: {e}"));
    let hp = &outcome.priors;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let normal = |rng: &mut ChaCha20Rng| -> f64 { StandardNormal.sample(rng) };
    let mut ranks = Vec::with_capacity(replications);
    let (mut cover50, mut cover90, mut not_converged, mut failed) = (0, 0, 0, 0);
    let (mut checked, mut observed2, mut estimated2) = (0usize, 0.0, 0.0);
    for rep in 0..replications {
        let tau = (3.0f64.ln() + normal(&mut rng)).exp();
        let drift_sd = hp.drift_sd_scale.unwrap_or(1.0) * normal(&mut rng).abs();
        let half_life = (0.75 * normal(&mut rng)).exp();
        let sigma_y = if family == Family::Gaussian {
            normal(&mut rng).abs()
        } else {
            0.0
        };
        let baseline = hp
            .baseline
            .map_or(0.0, |b| b.mean + b.sd * normal(&mut rng));
        let effect = hp.effect.map_or(0.0, |e| e.mean + e.sd * normal(&mut rng));
        let lambda = 1.0 / tau;
        let params = ModelParams {
            mu: baseline,
            beta: vec![0.0, effect],
            lambda,
            sigma_x: drift_sd * (2.0 * lambda).sqrt(),
            kappa: std::f64::consts::LN_2 / half_life,
            // Student-t errors are added below, at the same scale.
            sigma_y: if student_t { 0.0 } else { sigma_y },
        };
        let arms: Vec<usize> = {
            let order = crate::trial::design::block_orders(
                crate::trial::protocol::DesignKind::Counterbalanced,
                &[0, 1],
                days.div_ceil(14) as u32,
                rng.random(),
            );
            order
                .iter()
                .flat_map(|o| o.iter().flat_map(|&a| std::iter::repeat_n(a, 7)))
                .take(days)
                .collect()
        };
        let mut pts = simulate_daily(&params, &arms, 0.875, rng.random());
        // Non-gaussian families: the simulated level is the linear predictor.
        let precision = (20.0f64.ln() + normal(&mut rng)).exp();
        for p in pts.iter_mut() {
            p.y = draw(family, outcome.trials, precision, p.y, &mut rng);
            if student_t {
                p.y += sigma_y * t_errors.sample(&mut rng);
            }
        }
        let series = daily_series(&pts, &arms);
        let spec = FitSpec {
            model: &outcome,
            arm_keys: vec!["a".into(), "b".into()],
            run_in: None,
            method: Method::Grid,
            seed: rep as u64,
            mcmc: McmcOptions::default(),
            grid: GridOptions::default(),
            dropped: Vec::new(),
            path: false,
            intervals: true,
            device: None,
        };
        let (report, mix) = match crate::engine::fit::fit_with_mixture(&series, &spec) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(replication = rep, error = %e, "SBC fit failed");
                failed += 1;
                continue;
            }
        };
        if !report.diagnostics.converged {
            tracing::info!(
                replication = rep,
                reason = report.diagnostics.reason.as_deref().unwrap_or(""),
                "SBC fit not converged"
            );
            not_converged += 1;
        }
        let e = &report.effects[0];
        if mc_check && (family != Family::Gaussian || student_t) {
            let again = FitSpec {
                seed: rep as u64 + 1_000_000,
                intervals: false,
                ..spec.clone()
            };
            if let (Ok(other), Some(mc)) = (
                crate::engine::fit::fit(&series, &again),
                report.diagnostics.mc_error,
            ) && let Some(mc2) = other.diagnostics.mc_error
            {
                let d = (e.mean - other.effects[0].mean) / e.sd.max(1e-12);
                checked += 1;
                observed2 += d * d / 2.0;
                estimated2 += (mc.mean * mc.mean + mc2.mean * mc2.mean) / 2.0;
            }
        }
        cover50 += usize::from(e.ci50[0] <= effect && effect <= e.ci50[1]);
        cover90 += usize::from(e.ci90[0] <= effect && effect <= e.ci90[1]);
        // Rank of the truth among 99 draws from the posterior mixture.
        let mut below = 0;
        for _ in 0..99 {
            let u: f64 = rng.random();
            let mut acc = 0.0;
            let mut k = mix.weights.len() - 1;
            for (i, w) in mix.weights.iter().enumerate() {
                acc += w;
                if u < acc {
                    k = i;
                    break;
                }
            }
            let c = &mix.components[k].filter;
            let draw = c.b_mean[1] + c.b_cov[(1, 1)].max(0.0).sqrt() * normal(&mut rng);
            below += usize::from(draw < effect);
        }
        ranks.push(below);
    }
    let n = ranks.len();
    let mut hist = vec![0usize; 10];
    for &r in &ranks {
        hist[(r / 10).min(9)] += 1;
    }
    let expected = n as f64 / 10.0;
    let chi_square = hist
        .iter()
        .map(|&h| (h as f64 - expected).powi(2) / expected)
        .sum();
    SbcResult {
        replications: n,
        days,
        ranks,
        rank_histogram: hist,
        chi_square,
        coverage50: cover50 as f64 / n.max(1) as f64,
        coverage90: cover90 as f64 / n.max(1) as f64,
        not_converged,
        failed,
        mc_check: (checked > 0).then(|| {
            let observed = (observed2 / checked as f64).sqrt();
            let estimated = (estimated2 / checked as f64).sqrt();
            McCheck {
                replications: checked,
                observed,
                estimated,
                ratio: observed / estimated,
            }
        }),
    }
}

/// The outcome used by SBC: explicit priors, so that the prior does not
/// depend on the data (scale 1; the link scale for the non-gaussian families).
pub fn sbc_outcome(family: Family, noise: NoiseModel) -> ModelSpec {
    let (name, baseline, mid, trials) = match family {
        Family::Gaussian => ("gaussian", "{ mean = 0.0, sd = 2.0 }", 0.5, ""),
        Family::Poisson => ("poisson", "{ mean = 1.0, sd = 0.5 }", 1.25, ""),
        Family::Bernoulli => ("bernoulli", "{ mean = -0.5, sd = 0.5 }", 1.25, ""),
        Family::Binomial => ("binomial", "{ mean = -0.5, sd = 0.5 }", 1.25, "trials = 5"),
        Family::Beta => ("beta", "{ mean = 0.0, sd = 1.0 }", 1.25, ""),
    };
    let noise = match noise {
        NoiseModel::Normal => "",
        NoiseModel::StudentT => "noise = \"student_t\"",
    };
    let text = format!(
        "stream = \"y\"\nfamily = \"{name}\"\n{noise}\ndirection = \"higher\"\nmid = {mid}\nscale = 1.0\naggregation = \"last\"\n{trials}\n[priors]\nbaseline = {baseline}\neffect = {{ mean = 0.0, sd = 1.0 }}\ndrift_sd_scale = 0.5\n"
    );
    // A fixed, valid literal: parsing cannot fail.
    toml::from_str::<crate::trial::protocol::Outcome>(&text)
        .unwrap_or_else(|e| panic!("SBC outcome literal: {e}"))
        .model_spec()
}

/// One model fitted to one kind of error in [`robust_noise`].
#[derive(Debug, Clone, Serialize)]
pub struct NoiseRow {
    /// The errors the data were drawn with: `normal` or `t3`.
    pub errors: &'static str,
    /// The measurement error the model assumed.
    pub model: NoiseModel,
    /// Fits made (all converged or not; failures are left out).
    pub fits: usize,
    /// Fits that missed their error check's tolerance.
    pub not_converged: usize,
    /// Mean of the effect's posterior mean over its sd (the signal a
    /// stopping rule reads: power grows with it).
    pub mean_z: f64,
    /// Root mean square error of the posterior mean against the truth.
    pub rmse: f64,
    /// Mean posterior sd.
    pub mean_sd: f64,
    /// Share of 90% intervals that hold the truth.
    pub coverage90: f64,
    /// Milliseconds a fit, on one thread.
    pub ms_per_fit: f64,
}

/// Normal against Student-t measurement error (`noise = "student_t"`) on
/// the same series: `replications` two-arm series of `days` days (weekly
/// counterbalanced periods, effect `effect` in units of the errors' sd,
/// drift sd 0.5 with a 3-day correlation time, half-life 1 day), with
/// normal errors and with Student-t errors of 3 degrees of freedom (the
/// heavy-tails scenario's), each fitted with both models (`S = 1`, the
/// default priors). Where the errors are heavy-tailed a model that expects
/// them sees the effect more sharply (a larger `mean_z`); where they are
/// normal, this shows what it costs.
pub fn robust_noise(replications: usize, days: usize, effect: f64, seed: u64) -> Vec<NoiseRow> {
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha20Rng;
    use rand_distr::{Distribution, StandardNormal};

    let t3 = rand_distr::StudentT::new(3.0).unwrap_or_else(|e| panic!("Student-t(3): {e}"));
    let models = [NoiseModel::Normal, NoiseModel::StudentT].map(|noise| {
        let text = format!(
            "stream = \"y\"\nfamily = \"gaussian\"\n{}direction = \"higher\"\nmid = 0.0\nscale = 1.0\naggregation = \"last\"\n",
            if noise == NoiseModel::StudentT { "noise = \"student_t\"\n" } else { "" }
        );
        // A fixed, valid literal: parsing cannot fail.
        toml::from_str::<crate::trial::protocol::Outcome>(&text)
            .unwrap_or_else(|e| panic!("robust-noise outcome literal: {e}"))
            .model_spec()
    });
    let mut rows = Vec::new();
    for errors in ["normal", "t3"] {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut sums = [[0.0f64; 5]; 2];
        let (mut fits, mut not_converged) = ([0usize; 2], [0usize; 2]);
        for rep in 0..replications {
            let arms: Vec<usize> = crate::trial::design::block_orders(
                crate::trial::protocol::DesignKind::Counterbalanced,
                &[0, 1],
                days.div_ceil(14) as u32,
                rng.random(),
            )
            .iter()
            .flat_map(|o| o.iter().flat_map(|&a| std::iter::repeat_n(a, 7)))
            .take(days)
            .collect();
            let params = ModelParams {
                mu: 0.0,
                beta: vec![0.0, effect],
                lambda: 1.0 / 3.0,
                sigma_x: 0.5 * (2.0 / 3.0f64).sqrt(),
                kappa: std::f64::consts::LN_2,
                sigma_y: 0.0,
            };
            let mut pts = simulate_daily(&params, &arms, 0.875, rng.random());
            for p in pts.iter_mut() {
                p.y += match errors {
                    "normal" => StandardNormal.sample(&mut rng),
                    // t3 has variance 3: scaled to sd 1.
                    _ => t3.sample(&mut rng) / 3.0f64.sqrt(),
                };
            }
            let series = daily_series(&pts, &arms);
            for (m, model) in models.iter().enumerate() {
                let spec = FitSpec {
                    model,
                    arm_keys: vec!["a".into(), "b".into()],
                    run_in: None,
                    method: Method::Grid,
                    seed: rep as u64,
                    mcmc: McmcOptions::default(),
                    grid: GridOptions {
                        threads: 1,
                        ..GridOptions::default()
                    },
                    dropped: Vec::new(),
                    path: false,
                    intervals: true,
                    device: None,
                };
                let started = Instant::now();
                let Ok(report) = fit(&series, &spec) else {
                    continue;
                };
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                let e = &report.effects[0];
                fits[m] += 1;
                not_converged[m] += usize::from(!report.diagnostics.converged);
                let s = &mut sums[m];
                s[0] += e.mean / e.sd;
                s[1] += (e.mean - effect).powi(2);
                s[2] += e.sd;
                s[3] += f64::from(u8::from(e.ci90[0] <= effect && effect <= e.ci90[1]));
                s[4] += ms;
            }
        }
        for (m, model) in models.iter().enumerate() {
            let n = fits[m].max(1) as f64;
            let s = sums[m];
            rows.push(NoiseRow {
                errors,
                model: model.noise,
                fits: fits[m],
                not_converged: not_converged[m],
                mean_z: s[0] / n,
                rmse: (s[1] / n).sqrt(),
                mean_sd: s[2] / n,
                coverage90: s[3] / n,
                ms_per_fit: s[4] / n,
            });
        }
    }
    rows
}

/// One row of the prior-meets-data table.
#[derive(Debug, Serialize)]
pub struct PriorRow {
    /// Which prior: right, wrong by 2 sd, wrong in sign; floored or as stated.
    pub prior: String,
    /// The prior the fit used, `[mean, sd]`.
    pub used: [f64; 2],
    /// True effect.
    pub truth: f64,
    /// Root mean square error of the posterior mean with the prior, and
    /// with the sceptical prior.
    pub rmse: [f64; 2],
    /// Coverage of the 90% interval, with the prior and sceptical.
    pub coverage90: [f64; 2],
    /// Mean P(better by MID), with the prior and sceptical.
    pub p_mid: [f64; 2],
    /// Share of series where the conflict measure is below 0.05.
    pub conflict_share: f64,
    /// Median conflict p.
    pub conflict_median: f64,
    /// Series fitted.
    pub series: usize,
}

/// False stops of a design under no effect with a proposer's prior.
#[derive(Debug, Serialize)]
pub struct PriorFalseStops {
    /// Which prior.
    pub prior: String,
    /// `[mean, sd]` as used.
    pub used: [f64; 2],
    /// False stops for efficacy at the protocol's threshold, with its MC se.
    pub false_stops: [f64; 2],
    /// Virtual trials.
    pub trials: usize,
}

/// The whole prior-meets-data benchmark.
#[derive(Debug, Serialize)]
pub struct PriorMeetsData {
    /// Posterior error and conflict, per prior.
    pub fits: Vec<PriorRow>,
    /// False stops under no effect, per prior.
    pub false_stops: Vec<PriorFalseStops>,
}

/// The proposer's prior meets simulated data (`trial::prior_data`):
/// `series` two-arm series of `days` days with a true effect of `-mid`
/// (lower is better: the treatment helps by the MID), each fitted with a
/// proposer's prior that is right, wrong by 2 of its sds, or wrong in sign,
/// both as stated (sd 0.3 MID) and floored, beside the sceptical default;
/// then whole virtual trials of the meditation protocol under no effect
/// with a wrong optimistic prior (`trials` each), at its stated threshold.
pub fn prior_meets_data(series: usize, days: usize, trials: usize, seed: u64) -> PriorMeetsData {
    use crate::trial::hypothesis::prior_sd_floor;
    use crate::trial::prior_data::{conflict_p, data_alone};
    use crate::trial::protocol::Protocol;

    let protocol = Protocol::parse(
        crate::service::demo::PROTOCOL_TEXT,
        "meditation-anxiety.toml",
    )
    .expect("the shipped protocol parses");
    let mid = protocol.outcome.mid;
    let truth = -mid;
    let stated_sd = 0.3 * mid;
    let priors = [
        ("right", truth),
        ("wrong by 2 sd", truth - 2.0 * stated_sd),
        ("wrong in sign", -truth),
    ];
    let mut fits = Vec::new();
    for (name, mean) in priors {
        for floored in [false, true] {
            let sd = if floored {
                stated_sd.max(prior_sd_floor(mean, mid, protocol.outcome.direction))
            } else {
                stated_sd
            };
            let mut with = protocol.outcome.clone();
            with.priors.effects.insert(
                "meditation".into(),
                crate::engine::spec::NormalPrior { mean, sd },
            );
            let sceptical = protocol.outcome.clone();
            let (mw, ms) = (with.model_spec(), sceptical.model_spec());
            let mut sq = [0.0; 2];
            let mut cover = [0.0; 2];
            let mut pmid = [0.0; 2];
            let mut conflicts = Vec::new();
            let mut n = 0usize;
            for i in 0..series {
                let s = two_arm_series(days, truth, seed.wrapping_add(i as u64));
                let a = crate::trial::step::look_fit_spec(&mw, &protocol, seed, None, Vec::new());
                let b = crate::trial::step::look_fit_spec(&ms, &protocol, seed, None, Vec::new());
                let (Ok(ra), Ok(rb)) = (fit(&s, &a), fit(&s, &b)) else {
                    continue;
                };
                let (Some(ea), Some(eb)) = (
                    ra.effects.iter().find(|e| e.arm == "meditation"),
                    rb.effects.iter().find(|e| e.arm == "meditation"),
                ) else {
                    continue;
                };
                n += 1;
                for (k, e) in [ea, eb].into_iter().enumerate() {
                    sq[k] += (e.mean - truth).powi(2);
                    cover[k] += f64::from(u8::from(e.ci90[0] <= truth && truth <= e.ci90[1]));
                    pmid[k] += e.p_better_by_mid;
                }
                let sceptical_prior = rb.priors.effects.get("meditation").copied();
                if let Some(d) = sceptical_prior.and_then(|p| data_alone([eb.mean, eb.sd], p)) {
                    // Against the expectation as stated, as the trial page does.
                    conflicts.push(conflict_p([mean, stated_sd], d));
                }
            }
            let nf = n.max(1) as f64;
            conflicts.sort_by(f64::total_cmp);
            fits.push(PriorRow {
                prior: format!(
                    "{name}{}",
                    if floored { ", floored" } else { ", as stated" }
                ),
                used: [mean, sd],
                truth,
                rmse: [(sq[0] / nf).sqrt(), (sq[1] / nf).sqrt()],
                coverage90: [cover[0] / nf, cover[1] / nf],
                p_mid: [pmid[0] / nf, pmid[1] / nf],
                conflict_share: conflicts.iter().filter(|p| **p < 0.05).count() as f64
                    / conflicts.len().max(1) as f64,
                conflict_median: conflicts
                    .get(conflicts.len() / 2)
                    .copied()
                    .unwrap_or(f64::NAN),
                series: n,
            });
        }
    }
    // Under no effect, an optimistic prior (2 MIDs of benefit): false stops.
    let mut false_stops = Vec::new();
    let optimistic = -2.0 * mid;
    for (name, used) in [
        ("sceptical default", None),
        ("optimistic, as stated", Some([optimistic, stated_sd])),
        (
            "optimistic, floored",
            Some([
                optimistic,
                stated_sd.max(prior_sd_floor(optimistic, mid, protocol.outcome.direction)),
            ]),
        ),
    ] {
        let mut p = protocol.clone();
        if let Some([mean, sd]) = used {
            p.outcome.priors.effects.insert(
                "meditation".into(),
                crate::engine::spec::NormalPrior { mean, sd },
            );
        }
        let text = toml::to_string(&p).unwrap_or_default();
        let options = crate::trial::simulate::SimOptions {
            trials,
            seed,
            threads: 2,
            progress: false,
            ..Default::default()
        };
        if let Ok(r) = crate::trial::simulate::simulate_protocol(
            &p,
            &crate::trial::protocol::ProtocolHash::of(&text),
            &options,
        ) {
            let f = &r.default.no_effect.stop_efficacy;
            false_stops.push(PriorFalseStops {
                prior: name.into(),
                used: used.unwrap_or([0.0, f64::NAN]),
                false_stops: [f.rate, f.se],
                trials,
            });
        }
    }
    PriorMeetsData { fits, false_stops }
}

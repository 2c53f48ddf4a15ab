//! `nof1d bench gpu`: the GPU backend against the CPU engine on the same
//! machine, in one run (`bench/gpu-check.sh` runs it on a lent GPU):
//! equivalence of evaluations, of fits and of simulated decisions, then
//! batched likelihood throughput, fit time by series length, and a whole
//! simulation. Without a GPU it says why and checks the host-compiled
//! kernels only.

use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use crate::engine::gpu::check::{
    Agreement, device_agreement, equivalence_set, host_agreement, points,
};
use crate::engine::gpu::{self, BackendChoice, Device, SharedDevice, Workload};
use crate::engine::inference::{CpuEvaluator, Evaluator, Theta};

/// What `nof1d bench gpu` is asked.
#[derive(Debug, Clone)]
pub struct GpuBenchOptions {
    /// Virtual trials per condition run on the GPU (two conditions).
    pub trials: usize,
    /// Virtual trials per condition run on the CPU for the comparison.
    pub cpu_trials: usize,
    /// Virtual trials per condition whose every decision is compared.
    pub decision_trials: usize,
    /// Series lengths for the fit timings.
    pub fit_days: Vec<usize>,
    /// Fits kept in flight on the GPU, one simulation each.
    pub in_flight: Vec<usize>,
    /// Seed.
    pub seed: u64,
}

/// Whole fits, with and without the GPU.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FitAgreement {
    /// Fits compared.
    pub fits: usize,
    /// Largest difference of the effect mean, in posterior sds.
    pub mean_in_sd: f64,
    /// Largest relative difference of the effect sd.
    pub sd_relative: f64,
    /// Largest difference of P(better by MID).
    pub p_better_by_mid: f64,
    /// Fits whose `converged` differs.
    pub converged_differs: usize,
}

/// Virtual trials traced both ways.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DecisionAgreement {
    /// Trials traced.
    pub trials: usize,
    /// Looks compared.
    pub looks: usize,
    /// Looks whose action differs.
    pub actions_differ: usize,
    /// Largest difference of P(better by MID) at a look.
    pub p_better_by_mid: f64,
}

/// Throughput at one batch size.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BatchRow {
    /// Points a batch.
    pub batch: usize,
    /// Evaluations a second on all CPU cores.
    pub cpu_per_s: f64,
    /// Evaluations a second on the GPU (copies included).
    pub gpu_per_s: f64,
}

/// One fit's wall time at one length.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FitRow {
    /// Observations.
    pub days: usize,
    /// CPU seconds (wall, its grid on up to four cores).
    pub cpu_s: f64,
    /// GPU seconds, the sequential kernel (one thread a point).
    pub gpu_sequential_s: f64,
    /// GPU seconds, the parallel-in-time filter.
    pub gpu_scan_s: f64,
    /// Evaluations the CPU fit made.
    pub evaluations: usize,
    /// Largest difference of the effect mean between the CPU fit and the
    /// scan's, in posterior sds.
    pub scan_mean_in_sd: f64,
}

/// One simulation run on the GPU.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SimRun {
    /// Fits kept in flight (threads).
    pub in_flight: usize,
    /// Virtual trials (both conditions).
    pub trials: usize,
    /// Their fits.
    pub fits: usize,
    /// Wall seconds.
    pub wall_s: f64,
    /// False stops and power at the protocol's threshold.
    pub rates: [f64; 2],
}

/// A whole simulation both ways.
#[derive(Debug, Clone, Serialize)]
pub struct SimRow {
    /// Protocol.
    pub protocol: String,
    /// Planned days a trial.
    pub planned_days: u32,
    /// GPU runs, by fits in flight.
    pub gpu: Vec<SimRun>,
    /// The CPU run, on all cores.
    pub cpu: SimRun,
}

/// Everything `nof1d bench gpu` measured.
#[derive(Debug, Clone, Serialize)]
pub struct GpuReport {
    /// The device, or why there is none.
    pub device: String,
    /// Host-compiled kernels against the CPU evaluator.
    pub host_kernels: Agreement,
    /// The device against the CPU evaluator.
    pub device_kernels: Option<Agreement>,
    /// Whole fits.
    pub fits: Option<FitAgreement>,
    /// Simulated decisions.
    pub decisions: Option<DecisionAgreement>,
    /// Batched likelihood throughput at T = 365.
    pub likelihood: Vec<BatchRow>,
    /// The smallest batch at which the GPU is faster.
    pub likelihood_crossover_batch: Option<usize>,
    /// Fit time by length.
    pub fit_times: Vec<FitRow>,
    /// The smallest length at which a GPU fit (the faster filter) is
    /// faster than the CPU's.
    pub fit_crossover_days: Option<usize>,
    /// The smallest length at which the scan is faster than the
    /// sequential kernel.
    pub scan_from_days: Option<usize>,
    /// A whole simulation.
    pub simulation: Option<SimRow>,
}

/// The shipped protocol the fits and simulations use: two arms, gaussian,
/// 16 weeks of blocks after a week of run-in, a look every period.
fn bench_protocol() -> anyhow::Result<crate::trial::protocol::Protocol> {
    crate::trial::library::find(crate::trial::library::shipped(), "screen-cutoff")
        .map(|e| e.protocol.clone())
        .context("the shipped protocol screen-cutoff is missing")
}

fn fit_spec<'a>(
    model: &'a crate::engine::spec::ModelSpec,
    device: Option<&'a dyn Device>,
) -> crate::engine::fit::FitSpec<'a> {
    crate::engine::fit::FitSpec {
        model,
        arm_keys: vec!["usual".into(), "cutoff".into()],
        run_in: None,
        method: crate::engine::fit::Method::Grid,
        seed: 1,
        mcmc: crate::engine::inference::McmcOptions::default(),
        grid: crate::engine::inference::GridOptions::default(),
        dropped: Vec::new(),
        path: false,
        intervals: false,
        device,
    }
}

/// Whole fits with and without the device.
fn fit_agreement(
    device: &dyn Device,
    model: &crate::engine::spec::ModelSpec,
) -> anyhow::Result<FitAgreement> {
    let mut a = FitAgreement::default();
    for k in 0..30u64 {
        let days = [60, 112, 365][k as usize % 3];
        let series = crate::engine::generate::two_arm_series(
            days,
            if k % 2 == 0 { 0.0 } else { 0.5 },
            k + 1,
        );
        let cpu = crate::engine::fit::fit(&series, &fit_spec(model, None))?;
        let gpu = crate::engine::fit::fit(&series, &fit_spec(model, Some(device)))?;
        a.fits += 1;
        if cpu.diagnostics.converged != gpu.diagnostics.converged {
            a.converged_differs += 1;
        }
        for (c, g) in cpu.effects.iter().zip(&gpu.effects) {
            a.mean_in_sd = a.mean_in_sd.max((c.mean - g.mean).abs() / c.sd);
            a.sd_relative = a.sd_relative.max((c.sd - g.sd).abs() / c.sd);
            a.p_better_by_mid = a
                .p_better_by_mid
                .max((c.p_better_by_mid - g.p_better_by_mid).abs());
        }
    }
    Ok(a)
}

/// Every look of `n` virtual trials a condition, traced on the CPU and on
/// the device (many trials at once, so that the batcher gathers them).
fn decision_agreement(
    protocol: &crate::trial::protocol::Protocol,
    device: &SharedDevice,
    n: usize,
    seed: u64,
) -> anyhow::Result<DecisionAgreement> {
    use crate::trial::simulate::{SimOptions, trace_virtual_trial};
    let cpu_options = SimOptions {
        seed,
        ..SimOptions::default()
    };
    let gpu_options = SimOptions {
        device: Some(device.clone()),
        ..cpu_options.clone()
    };
    let effect = protocol.outcome.mid;
    let cases: Vec<(f64, u64)> = (0..n as u64)
        .flat_map(|i| [(0.0, 1000 + i), (effect, 2000 + i)])
        .collect();
    let traces = |options: &SimOptions,
                  threads: usize|
     -> Vec<anyhow::Result<Vec<crate::trial::simulate::TracedLook>>> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let out: std::sync::Mutex<Vec<Option<anyhow::Result<_>>>> =
            std::sync::Mutex::new((0..cases.len()).map(|_| None).collect());
        std::thread::scope(|scope| {
            for _ in 0..threads.min(cases.len()) {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&(e, s)) = cases.get(i) else { break };
                        let r = trace_virtual_trial(protocol, options, e, s)
                            .map_err(anyhow::Error::from);
                        if let Ok(mut o) = out.lock() {
                            o[i] = Some(r);
                        }
                    }
                });
            }
        });
        out.into_inner()
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("trial not run"))))
            .collect()
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = traces(&cpu_options, cores);
    let gpu = traces(&gpu_options, cases.len());
    let mut a = DecisionAgreement::default();
    for (c, g) in cpu.into_iter().zip(gpu) {
        let (c, g) = (c?, g?);
        a.trials += 1;
        a.looks += c.len().max(g.len());
        a.actions_differ += c.len().abs_diff(g.len());
        for (lc, lg) in c.iter().zip(&g) {
            if lc.decision.action != lg.decision.action {
                a.actions_differ += 1;
            }
            for (x, y) in lc.decision.arms.iter().zip(&lg.decision.arms) {
                a.p_better_by_mid = a
                    .p_better_by_mid
                    .max((x.p_better_by_mid - y.p_better_by_mid).abs());
            }
        }
    }
    Ok(a)
}

/// Seconds for `f`, repeated until at least `min_s` have passed.
fn rate(min_s: f64, mut f: impl FnMut() -> usize) -> f64 {
    let started = Instant::now();
    let mut done = 0;
    while started.elapsed().as_secs_f64() < min_s || done == 0 {
        done += f();
    }
    done as f64 / started.elapsed().as_secs_f64()
}

/// Batched likelihood throughput at T = 365, CPU and GPU.
fn likelihood(device: &dyn Device) -> anyhow::Result<Vec<BatchRow>> {
    let (series, priors) = (
        crate::engine::gpu::check::series(9, 365, 2, 14, false),
        crate::engine::gpu::check::priors(2),
    );
    let cpu = CpuEvaluator::new(&series, &priors);
    let gpu = device.gaussian(&series, &priors)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows = Vec::new();
    for batch in [1, 4, 16, 64, 256, 1024, 4096, 16_384, 65_536, 262_144] {
        let thetas: Vec<Theta> = points(batch as u64, batch)
            .into_iter()
            .map(|t| [t[0] * 0.4 + 1.0, t[1] * 0.4, t[2] * 0.4, t[3] * 0.4])
            .collect();
        let cpu_per_s = rate(0.3, || cpu.eval_batch(&thetas, cores).len());
        let gpu_per_s = rate(0.3, || gpu.eval_batch(&thetas, 1).len());
        eprintln!("  batch {batch:>7}: CPU {cpu_per_s:>12.0}/s  GPU {gpu_per_s:>12.0}/s");
        rows.push(BatchRow {
            batch,
            cpu_per_s,
            gpu_per_s,
        });
    }
    Ok(rows)
}

/// One fit's wall time at each length: CPU, GPU sequential, GPU scan.
fn fit_times(
    device: &dyn Device,
    model: &crate::engine::spec::ModelSpec,
    days: &[usize],
) -> anyhow::Result<Vec<FitRow>> {
    use crate::engine::gpu::{Filter, Forced};
    let mut rows = Vec::new();
    for &d in days {
        let series = crate::engine::generate::two_arm_series(d, 0.3, 5);
        let timed =
            |dev: Option<&dyn Device>| -> anyhow::Result<(f64, crate::engine::fit::FitReport)> {
                let started = Instant::now();
                let fit = crate::engine::fit::fit(&series, &fit_spec(model, dev))?;
                Ok((started.elapsed().as_secs_f64(), fit))
            };
        let (cpu_s, cpu) = timed(None)?;
        let (gpu_sequential_s, _) = timed(Some(&Forced(device, Filter::Sequential)))?;
        let (gpu_scan_s, scan) = timed(Some(&Forced(device, Filter::Scan)))?;
        let scan_mean_in_sd = cpu
            .effects
            .iter()
            .zip(&scan.effects)
            .map(|(c, g)| (c.mean - g.mean).abs() / c.sd)
            .fold(0.0, f64::max);
        eprintln!(
            "  fit of {d:>6} days: CPU {cpu_s:.3} s  GPU sequential {gpu_sequential_s:.3} s  GPU scan {gpu_scan_s:.3} s"
        );
        rows.push(FitRow {
            days: d,
            cpu_s,
            gpu_sequential_s,
            gpu_scan_s,
            evaluations: cpu.diagnostics.evaluations,
            scan_mean_in_sd,
        });
    }
    Ok(rows)
}

/// A whole simulation on the GPU at several numbers of fits in flight,
/// and on all CPU cores.
fn simulation(
    protocol: &crate::trial::protocol::Protocol,
    device: &SharedDevice,
    options: &GpuBenchOptions,
) -> anyhow::Result<SimRow> {
    use crate::trial::simulate::{SimOptions, simulate_protocol};
    let text = toml::to_string(protocol)?;
    let hash = crate::trial::protocol::ProtocolHash::of(&text);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let run =
        |trials: usize, threads: usize, device: Option<SharedDevice>| -> anyhow::Result<SimRun> {
            let r = simulate_protocol(
                protocol,
                &hash,
                &SimOptions {
                    trials,
                    seed: options.seed,
                    threads,
                    device,
                    ..SimOptions::default()
                },
            )?;
            let run = SimRun {
                in_flight: threads,
                trials: r.timing.trials,
                fits: r.timing.fits,
                wall_s: r.timing.wall_s,
                rates: [
                    r.default.no_effect.stop_efficacy.rate,
                    r.default.effect.stop_efficacy.rate,
                ],
            };
            eprintln!(
                "  {} threads: {} trials, {} fits in {:.1} s",
                threads, run.trials, run.fits, run.wall_s
            );
            Ok(run)
        };
    let mut gpu = Vec::new();
    for &in_flight in &options.in_flight {
        gpu.push(run(options.trials, in_flight, Some(device.clone()))?);
    }
    let cpu = run(options.cpu_trials, cores, None)?;
    Ok(SimRow {
        protocol: protocol.id.clone(),
        planned_days: protocol.planned_days(),
        gpu,
        cpu,
    })
}

/// Runs every part; the GPU parts only where a GPU is found.
pub fn run(options: &GpuBenchOptions) -> anyhow::Result<GpuReport> {
    let set = equivalence_set();
    let thetas = points(options.seed, 256);
    eprintln!("host-compiled kernels against the CPU evaluator");
    let host_kernels = host_agreement(&set, &thetas)?;
    let mut report = GpuReport {
        device: String::new(),
        host_kernels,
        device_kernels: None,
        fits: None,
        decisions: None,
        likelihood: Vec::new(),
        likelihood_crossover_batch: None,
        fit_times: Vec::new(),
        fit_crossover_days: None,
        scan_from_days: None,
        simulation: None,
    };
    let direct = match gpu::choose(
        BackendChoice::Cuda,
        Workload::Fit {
            observations: usize::MAX,
        },
    ) {
        Ok(c) => c,
        Err(why) => {
            report.device = format!("no GPU: {why}");
            return Ok(report);
        }
    };
    report.device = direct.line.clone();
    let Some(direct) = direct.device else {
        return Ok(report);
    };
    let batched = gpu::choose(BackendChoice::Cuda, Workload::Trials { trials: usize::MAX })?
        .device
        .context("no batcher")?;
    eprintln!("{}; the device against the CPU evaluator", report.device);
    report.device_kernels = Some(device_agreement(direct.get(), &set, &thetas)?);
    let protocol = bench_protocol()?;
    let model = protocol.outcome.model_spec();
    eprintln!("whole fits with and without the GPU");
    report.fits = Some(fit_agreement(direct.get(), &model)?);
    eprintln!("simulated decisions traced both ways");
    report.decisions = Some(decision_agreement(
        &protocol,
        &batched,
        options.decision_trials,
        options.seed,
    )?);
    eprintln!("batched likelihood throughput, T = 365");
    report.likelihood = likelihood(direct.get())?;
    report.likelihood_crossover_batch = report
        .likelihood
        .iter()
        .find(|r| r.gpu_per_s > r.cpu_per_s)
        .map(|r| r.batch);
    eprintln!("fit time by series length");
    report.fit_times = fit_times(direct.get(), &model, &options.fit_days)?;
    report.fit_crossover_days = report
        .fit_times
        .iter()
        .find(|r| r.gpu_sequential_s.min(r.gpu_scan_s) < r.cpu_s)
        .map(|r| r.days);
    report.scan_from_days = report
        .fit_times
        .iter()
        .find(|r| r.gpu_scan_s < r.gpu_sequential_s)
        .map(|r| r.days);
    eprintln!("a whole simulation of {}", protocol.id);
    report.simulation = Some(simulation(&protocol, &batched, options)?);
    Ok(report)
}

/// The report as a short table.
pub fn render(r: &GpuReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "device: {}", r.device);
    let agree = |out: &mut String, name: &str, a: &Agreement| {
        let _ = writeln!(
            out,
            "{name}: {} points, {} refused by one side; largest relative differences: log posterior {:.1e}, effect mean {:.1e}, covariance {:.1e}",
            a.points, a.refused_by_one, a.log_post, a.b_mean, a.b_cov
        );
    };
    agree(&mut out, "host kernels vs CPU", &r.host_kernels);
    if let Some(a) = &r.device_kernels {
        agree(&mut out, "device vs CPU", a);
    }
    if let Some(f) = &r.fits {
        let _ = writeln!(
            out,
            "fits: {} compared; largest differences: mean {:.1e} sd, sd {:.1e} relative, P(better by MID) {:.1e}; converged differs in {}",
            f.fits, f.mean_in_sd, f.sd_relative, f.p_better_by_mid, f.converged_differs
        );
    }
    if let Some(d) = &r.decisions {
        let _ = writeln!(
            out,
            "decisions: {} virtual trials, {} looks; actions differ at {}; largest P(better by MID) difference {:.1e}",
            d.trials, d.looks, d.actions_differ, d.p_better_by_mid
        );
    }
    if !r.likelihood.is_empty() {
        let _ = writeln!(out, "likelihood evaluations a second at T = 365:");
        for b in &r.likelihood {
            let _ = writeln!(
                out,
                "  batch {:>7}  CPU {:>12.0}  GPU {:>12.0}  ({:.1}x)",
                b.batch,
                b.cpu_per_s,
                b.gpu_per_s,
                b.gpu_per_s / b.cpu_per_s
            );
        }
        let _ = writeln!(
            out,
            "  GPU faster from batch {:?}",
            r.likelihood_crossover_batch
        );
    }
    if !r.fit_times.is_empty() {
        let _ = writeln!(out, "one fit:");
        for f in &r.fit_times {
            let _ = writeln!(
                out,
                "  {:>7} days  CPU {:>8.3} s  GPU sequential {:>8.3} s  GPU scan {:>8.3} s  ({} evaluations; scan vs CPU mean {:.1e} sd)",
                f.days, f.cpu_s, f.gpu_sequential_s, f.gpu_scan_s, f.evaluations, f.scan_mean_in_sd
            );
        }
        let _ = writeln!(
            out,
            "  GPU faster than the CPU from {:?} days; the scan faster than the sequential kernel from {:?} days",
            r.fit_crossover_days, r.scan_from_days
        );
    }
    if let Some(s) = &r.simulation {
        let line = |out: &mut String, name: &str, run: &SimRun| {
            let _ = writeln!(
                out,
                "  {name} {:>5} threads: {} trials, {} fits in {:.1} s ({:.2} ms a fit; 100,000 trials in {:.0} s); false stops {:.3}, power {:.3}",
                run.in_flight,
                run.trials,
                run.fits,
                run.wall_s,
                1000.0 * run.wall_s / run.fits.max(1) as f64,
                run.wall_s / run.trials.max(1) as f64 * 100_000.0,
                run.rates[0],
                run.rates[1]
            );
        };
        let _ = writeln!(
            out,
            "simulation of {} ({} days a trial):",
            s.protocol, s.planned_days
        );
        for g in &s.gpu {
            line(&mut out, "GPU", g);
        }
        line(&mut out, "CPU", &s.cpu);
    }
    out
}

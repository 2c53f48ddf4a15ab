//! The GPU backend: the gaussian family's posterior evaluations
//! (`kernels/filter.cu`) for many points and many series at once, behind
//! the engine's batch seam ([`crate::engine::inference::Evaluator`]).
//!
//! The kernels are compiled at run time by NVRTC through `cudarc`, loaded
//! dynamically: building nof1d needs no CUDA toolkit, and a machine without
//! a driver runs on the CPU and says why in one line ([`open`]). The same
//! kernel sources are compiled for the host as C ([`host`]), so every
//! machine's tests check their arithmetic against the CPU engine.

pub mod check;
pub mod host;
pub mod pack;
pub mod scan;

#[cfg(feature = "cuda")]
pub mod cuda;

use std::fmt;
use std::str::FromStr;

use crate::engine::inference::{Evaluator, Priors};
use crate::engine::model::{ModelError, Series};

/// The kernel sources, embedded: NVRTC compiles them where a GPU is found.
pub const KERNELS: [(&str, &str); 2] = [
    ("filter.cu", include_str!("../../../kernels/filter.cu")),
    ("scan.cu", include_str!("../../../kernels/scan.cu")),
];

/// The header every kernel includes (`kernels/common.h`).
pub const COMMON_H: &str = include_str!("../../../kernels/common.h");

/// Where posterior evaluations run, as a person asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// The GPU where one is found and it was measured faster for the
    /// workload ([`gains`]); the CPU otherwise.
    #[default]
    Auto,
    /// Always the CPU.
    Cpu,
    /// The GPU, or an error saying why there is none.
    Cuda,
}

impl FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "cpu" => Ok(BackendChoice::Cpu),
            "cuda" => Ok(BackendChoice::Cuda),
            other => Err(format!("unknown backend {other:?}: use auto, cpu or cuda")),
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Cpu => "cpu",
            BackendChoice::Cuda => "cuda",
        })
    }
}

/// A workload's size, for [`gains`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// One fit of a series this long (`nof1d analyze`, a refit).
    Fit {
        /// Observations.
        observations: usize,
    },
    /// Many fits at once: virtual trials of a simulation.
    Trials {
        /// Virtual trials.
        trials: usize,
    },
}

/// From this many observations a GPU fit evaluates its points with the
/// parallel-in-time filter (`kernels/scan.cu`) rather than one thread a
/// point: on an H200 the scan was faster from 3,000 days on (0.19 s against
/// 0.46 s a fit; 100,000 days: 0.68 s against 16 s), slower at 365 (0.19 s
/// against 0.08 s; `bench/results/gpu-check-4.log`).
pub const SCAN_FROM_OBSERVATIONS: usize = 3_000;

/// From this many observations `auto` fits a gaussian series on the GPU:
/// the shortest length measured faster there than on the CPU's cores.
pub const FIT_ON_GPU_FROM_OBSERVATIONS: usize = 100_000;

/// Whether `auto` uses the GPU for `workload`: only where the GPU was
/// measured faster than the CPU on the same machine, an H200 beside 16 CPU
/// cores (`nof1d bench gpu`, `bench/results/gpu-check-4.log`):
///
/// - one gaussian fit: faster only for very long series: 0.68 s against
///   0.79 s at 100,000 days (the parallel-in-time filter), but 0.42 s
///   against 0.20 s at 30,000 and 0.19 s against 0.01 s at 365. A fit's mode
///   search evaluates one point at a time, hundreds of times, and each is a
///   round of launches there and back;
/// - a simulation: never: 1.8 ms a fit at 512 or 2048 fits in flight
///   against 0.21 ms on the CPU's 16 threads (`gpu-check-3.log`), for the
///   same reason: each fit's evaluations wait on each other, so gathering
///   many fits' points into one launch cannot hide the rounds' latency.
///
/// Raw batched likelihood evaluations are about 3x faster there (batches of
/// 64 points and more), which no fit asks for one at a time. `--backend
/// cuda` still uses the GPU for anything, with the same answers.
pub fn gains(workload: Workload) -> bool {
    match workload {
        Workload::Fit { observations } => observations >= FIT_ON_GPU_FROM_OBSERVATIONS,
        Workload::Trials { .. } => false,
    }
}

/// A device that evaluates the gaussian family's posterior: what a fit asks
/// for in place of the CPU evaluator ([`crate::engine::fit::FitSpec::device`]).
pub trait Device: Sync + fmt::Debug {
    /// An evaluator of `series` under `priors` on the device.
    fn gaussian<'s>(
        &'s self,
        series: &'s Series,
        priors: &'s Priors,
    ) -> Result<Box<dyn Evaluator + 's>, ModelError>;

    /// [`Self::gaussian`] with the filter named (benchmarks compare them);
    /// a device with one filter ignores the choice.
    fn gaussian_with<'s>(
        &'s self,
        series: &'s Series,
        priors: &'s Priors,
        _filter: Filter,
    ) -> Result<Box<dyn Evaluator + 's>, ModelError> {
        self.gaussian(series, priors)
    }
}

/// Which filter a GPU evaluation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// By the series' length ([`SCAN_FROM_OBSERVATIONS`]).
    Auto,
    /// One thread a point, the steps in turn (`kernels/filter.cu`).
    Sequential,
    /// The parallel-in-time filter (`kernels/scan.cu`).
    Scan,
}

/// A device held to one filter.
#[derive(Debug)]
pub struct Forced<'d>(pub &'d dyn Device, pub Filter);

impl Device for Forced<'_> {
    fn gaussian<'s>(
        &'s self,
        series: &'s Series,
        priors: &'s Priors,
    ) -> Result<Box<dyn Evaluator + 's>, ModelError> {
        self.0.gaussian_with(series, priors, self.1)
    }
}

/// A device shared by settings that are cloned (a simulation's options).
#[derive(Debug, Clone)]
pub struct SharedDevice(pub std::sync::Arc<dyn Device + Send>);

impl SharedDevice {
    /// The device, borrowed for a fit.
    pub fn get(&self) -> &dyn Device {
        self.0.as_ref()
    }
}

/// Fits a simulation keeps in flight on a GPU: each waits for its batch,
/// and the batcher launches them together (the CPU runs one a core). 512
/// and 2048 measured the same (1.77 and 1.81 ms a fit); fewer threads cost
/// less memory.
pub const GPU_FITS_IN_FLIGHT: usize = 512;

/// The backend chosen for a workload, and the one line that says so.
#[derive(Debug, Clone)]
pub struct Chosen {
    /// The GPU; `None` for the CPU.
    pub device: Option<SharedDevice>,
    /// Where the work runs and why, in one line.
    pub line: String,
}

/// Chooses where `workload` runs: `cpu` always the CPU; `cuda` the GPU or
/// the error saying why there is none; `auto` the GPU where it is faster
/// for the workload's size ([`gains`]) and one is found, else the CPU with
/// the reason. Many fits at once (`Workload::Trials`) share a batcher.
pub fn choose(choice: BackendChoice, workload: Workload) -> Result<Chosen, NoGpu> {
    choose_for(choice, workload, true)
}

/// [`choose`] for a model the GPU may not evaluate: only the exact Kalman
/// filter's (`fits_by_filter`: gaussian with normal noise) runs there;
/// any other stays on the CPU, saying why, and never fails for want of a
/// GPU.
pub fn choose_for(
    choice: BackendChoice,
    workload: Workload,
    fits_by_filter: bool,
) -> Result<Chosen, NoGpu> {
    if !fits_by_filter {
        return Ok(Chosen {
            device: None,
            line: "on the CPU: the GPU evaluates the gaussian family with normal noise only".into(),
        });
    }
    let cpu = |why: String| Chosen {
        device: None,
        line: format!("on the CPU: {why}"),
    };
    match choice {
        BackendChoice::Cpu => Ok(cpu("--backend cpu".into())),
        BackendChoice::Auto if !gains(workload) => Ok(cpu(match workload {
            Workload::Fit { observations } => format!(
                "a fit of {observations} observations was measured faster there (the GPU gains from {FIT_ON_GPU_FROM_OBSERVATIONS}; --backend cuda uses it)"
            ),
            Workload::Trials { .. } => {
                "a simulation was measured faster there (--backend cuda uses the GPU)".into()
            }
        })),
        BackendChoice::Auto => Ok(on_gpu(workload).unwrap_or_else(|why| cpu(why.0))),
        BackendChoice::Cuda => on_gpu(workload),
    }
}

/// The GPU for `workload`, opened once a process.
#[cfg(feature = "cuda")]
fn on_gpu(workload: Workload) -> Result<Chosen, NoGpu> {
    use std::sync::{Arc, OnceLock};
    static OPENED: OnceLock<Result<Arc<cuda::Cuda>, NoGpu>> = OnceLock::new();
    let gpu = OPENED.get_or_init(|| open().map(Arc::new)).clone()?;
    let name = gpu.info().name.clone();
    let device: std::sync::Arc<dyn Device + Send> = match workload {
        Workload::Fit { .. } => gpu,
        Workload::Trials { .. } => std::sync::Arc::new(cuda::Batcher::new(gpu)?),
    };
    Ok(Chosen {
        device: Some(SharedDevice(device)),
        line: format!("on the GPU: {name}"),
    })
}

#[cfg(not(feature = "cuda"))]
fn on_gpu(_: Workload) -> Result<Chosen, NoGpu> {
    Err(open().err().unwrap_or_else(|| NoGpu(String::new())))
}

/// Why there is no GPU: one line for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NoGpu(pub String);

/// The GPU, opened: the driver loaded, device 0 chosen, the kernels
/// compiled. `Err` says in one line why not (no driver, no device, NVRTC
/// missing, a kernel that does not compile, or a build without the `cuda`
/// feature).
#[cfg(feature = "cuda")]
pub fn open() -> Result<cuda::Cuda, NoGpu> {
    cuda::Cuda::open()
}

/// Without the `cuda` feature there is never a GPU.
#[cfg(not(feature = "cuda"))]
pub fn open() -> Result<std::convert::Infallible, NoGpu> {
    Err(NoGpu(
        "this nof1d was built without the `cuda` feature".into(),
    ))
}

/// The kernel sources as NVRTC compiles them: `common.h` inlined in place
/// of its `#include` (NVRTC has no file system to find it on).
pub fn kernel_source(source: &str) -> String {
    source.replace(
        "#include \"common.h\"",
        COMMON_H.replace("#pragma once", "").as_str(),
    )
}

#[cfg(test)]
mod tests;

//! `nof1d doctor`: what this machine gives the engine, and the database's
//! health. Each line says what was found and, where something is missing,
//! why and what it costs.

use std::fmt::Write;
use std::path::Path;

use crate::engine::gpu::check;

/// The doctor's findings, as lines; `false` when something is broken (a
/// kernel that disagrees with the CPU, a damaged database), not merely
/// absent (no GPU is fine).
pub fn examine(database: &Path, key: Option<&crate::service::config::Secret>) -> (String, bool) {
    let mut out = String::new();
    let mut healthy = true;
    let _ = writeln!(out, "nof1d {}", env!("CARGO_PKG_VERSION"));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::arch::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    let avx2 = false;
    let _ = writeln!(
        out,
        "CPU: {cores} cores; AVX2 {} (the filter runs four hyperparameter sets an instruction {})",
        if avx2 { "yes" } else { "no" },
        if avx2 {
            "with it"
        } else {
            "only with AVX2: here one at a time, the same results"
        }
    );
    match check::quick_host_check() {
        Ok(a) if a.refused_by_one == 0 && a.log_post < 1e-9 => {
            let _ = writeln!(
                out,
                "kernels compiled for the host: agree with the CPU engine ({} points, largest relative difference {:.1e})",
                a.points, a.log_post
            );
        }
        Ok(a) => {
            healthy = false;
            let _ = writeln!(
                out,
                "kernels compiled for the host: DISAGREE with the CPU engine ({} refused by one side, largest relative difference {:.1e})",
                a.refused_by_one, a.log_post
            );
        }
        Err(e) => {
            healthy = false;
            let _ = writeln!(out, "kernels compiled for the host: {e}");
        }
    }
    gpu_lines(&mut out, &mut healthy);
    database_lines(&mut out, &mut healthy, database, key);
    (out, healthy)
}

#[cfg(feature = "cuda")]
fn gpu_lines(out: &mut String, healthy: &mut bool) {
    match crate::engine::gpu::cuda::nvrtc_version() {
        Ok(v) => {
            let _ = writeln!(out, "NVRTC: {v}");
        }
        Err(why) => {
            let _ = writeln!(out, "NVRTC: {why}");
        }
    }
    match crate::engine::gpu::open() {
        Ok(cuda) => {
            let i = cuda.info();
            let _ = writeln!(
                out,
                "GPU: {} (compute {}), {:.1} GiB, driver CUDA {}, kernels compiled by NVRTC {}",
                i.name,
                i.compute_capability,
                i.memory_bytes as f64 / (1u64 << 30) as f64,
                i.driver,
                i.nvrtc
            );
            match check::quick_device_check(&cuda) {
                Ok(a) if a.refused_by_one == 0 && a.log_post < 1e-9 && a.b_mean < 1e-7 => {
                    let _ = writeln!(
                        out,
                        "GPU against the CPU: agree ({} points, largest relative difference {:.1e} in the log posterior, {:.1e} in the effects)",
                        a.points, a.log_post, a.b_mean
                    );
                }
                Ok(a) => {
                    *healthy = false;
                    let _ = writeln!(
                        out,
                        "GPU against the CPU: DISAGREE ({} refused by one side; {:.1e} in the log posterior, {:.1e} in the effects): use --backend cpu",
                        a.refused_by_one, a.log_post, a.b_mean
                    );
                }
                Err(e) => {
                    *healthy = false;
                    let _ = writeln!(out, "GPU against the CPU: {e}");
                }
            }
        }
        Err(why) => {
            let _ = writeln!(out, "GPU: none, the engine runs on the CPU ({why})");
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn gpu_lines(out: &mut String, _healthy: &mut bool) {
    let _ = writeln!(
        out,
        "GPU: none, the engine runs on the CPU (built without the `cuda` feature)"
    );
}

fn database_lines(
    out: &mut String,
    healthy: &mut bool,
    database: &Path,
    key: Option<&crate::service::config::Secret>,
) {
    if !database.exists() {
        let _ = writeln!(
            out,
            "database: none at {} (the daemon has not run with this config)",
            database.display()
        );
        return;
    }
    let size = std::fs::metadata(database).map(|m| m.len()).unwrap_or(0);
    match crate::service::store::Store::open_read_only_keyed(database, key) {
        Ok(store) => match store.quick_check() {
            Ok(ok) if ok == "ok" => {
                let _ = writeln!(
                    out,
                    "database: {} ({:.1} MiB), quick_check ok",
                    database.display(),
                    size as f64 / (1u64 << 20) as f64
                );
            }
            Ok(problem) => {
                *healthy = false;
                let _ = writeln!(
                    out,
                    "database: {} FAILS quick_check: {problem} (restore a backup: see the README)",
                    database.display()
                );
            }
            Err(e) => {
                *healthy = false;
                let _ = writeln!(out, "database: {}: {e}", database.display());
            }
        },
        Err(e) => {
            *healthy = false;
            let _ = writeln!(
                out,
                "database: {} cannot be opened: {e}",
                database.display()
            );
        }
    }
}

//! The command line's work: analysing a CSV, reports, benchmarks.

pub mod analyze;
pub mod ask;
pub mod bench;
pub mod bench_gpu;
pub mod commands;
pub mod doctor;
pub mod report;

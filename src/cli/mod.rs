//! The command line's work: analysing a CSV, reports, benchmarks.

pub mod analyze;
pub mod ask;
pub mod bench;
pub mod commands;
pub mod report;

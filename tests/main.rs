//! The integration tests, one module a file, built as one test binary: one
//! compile and link instead of one for each file, and `cargo test` runs
//! them together, so the tests that wait on a daemon's clock share the
//! machine with those that keep it busy instead of queueing behind them.
//! Each starts the real `nof1d` binary (or the library) with its own data
//! folder and loopback ports, so none depends on another. A new file in
//! tests/ must be added below: with `autotests = false` (Cargo.toml) Cargo
//! builds only this target.

mod common;

mod analyze;
mod blinding;
mod cli;
mod crash;
mod daemon;
mod dashboard;
mod email;
mod encryption;
mod gpu_backend;
mod hardening;
mod home_assistant;
mod hypotheses;
mod oura;
mod properties;
mod push;
mod sbc;
mod source_properties;
mod sources;
mod strava;
mod trials;
mod withings;

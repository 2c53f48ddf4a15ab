//! nof1d: an adaptive N-of-1 trial daemon.
//!
//! One person's data go in; randomised crossover self-experiments, a
//! Bayesian state-space model and posterior decisions come out, with a daily
//! email and a small dashboard. Where to start reading:
//!
//! - [`daemon`]: what runs — the lock, the store, the jobs, the HTTP server —
//!   and how it shuts down. A thin async shell.
//! - [`store`]: the only module with SQL; every table is in `migrations/`.
//! - [`protocol`]: the trial protocol format and its validation.
//! - [`design`]: protocol + seed → schedule (pure).
//! - [`calendar`]: civil days in the participant's zone, and the clock.
//! - [`sources`]: adapters that yield observations (today: the demo).
//! - [`simulate`]: data from the model of `statistics.md` §2 (pure).
//! - [`model`], [`nongauss`], [`inference`], [`fit`]: the engine — the exact
//!   filter, the non-gaussian families, integration over hyperparameters,
//!   and a fit's report. [`trial`] feeds it from the store, [`analyze`] from a CSV.
//!   [`vecmath`]: the `ln` and `exp` its beta weights vectorise.
//! - [`notify`]: composing and delivering outbox messages.
//! - [`web`]: status page, `/healthz`, JSON API.
//! - [`config`], [`lock`], [`demo`]: settings, one daemon per data folder,
//!   the demo participant.
//!
//! The data flow and invariants are in `ARCHITECTURE.md`; the statistics in
//! `../shared/design/statistics.md`.

pub mod cli;
pub mod engine;
pub mod service;
pub mod startup;
pub mod trial;
pub mod web;

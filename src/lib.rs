//! nof1d: an adaptive N-of-1 trial daemon.
//!
//! One person's data go in; randomised crossover self-experiments, a
//! Bayesian state-space model and posterior decisions come out, with a daily
//! email and a small dashboard. The folders are the architecture, each
//! importing only from the ones above it in this list:
//!
//! - [`engine`]: the statistics, pure math. A model specification and a
//!   series in, a posterior out: the exact filter ([`engine::model`]), the
//!   non-gaussian families ([`engine::nongauss`]), integration over the
//!   hyperparameters ([`engine::inference`]), a fit and its report
//!   ([`engine::fit`]), the specification with the MID on the link scale
//!   ([`engine::spec`]), data drawn from the model ([`engine::generate`]).
//!   Knows nothing of protocol files, SQL or clocks.
//! - [`trial`]: trials, pure. The protocol format ([`trial::protocol`]),
//!   designs and schedules ([`trial::design`]), the life cycle and dated
//!   schedules ([`trial::lifecycle`]), the decision rules
//!   ([`trial::decide`]), the one look-to-decision [`trial::step`] that the
//!   daemon and the simulator share, stored data as model input
//!   ([`trial::series`]), whole virtual trials ([`trial::simulate`]), civil
//!   days ([`trial::calendar`]), the causal graph ([`trial::causal`]).
//! - [`service`]: everything that does I/O. The store, the only SQL
//!   ([`service::store`]); the jobs, each a thin async shell around the pure
//!   cores ([`service::jobs`]); data sources behind a registry
//!   ([`service::sources`]); the outbox's messages ([`service::notify`]);
//!   what a person does to a trial ([`service::actions`]); a trial loaded
//!   once per tick ([`service::loaded`]); configuration, the clock, the
//!   data-folder lock, signed links, the demo participant.
//! - [`web`]: the dashboard, one file a page, and its server-made charts.
//! - [`startup`]: builds and runs the service (store, jobs, web) until a
//!   signal; the one place that knows both the service and the web.
//! - [`cli`]: the command table and the commands that are not the daemon
//!   (`analyze`, `report`, `bench`).
//!
//! The data flow and invariants are in `ARCHITECTURE.md`; the statistics in
//! `../shared/design/statistics.md`.

pub mod cli;
pub mod engine;
pub mod limits;
pub mod service;
pub mod startup;
pub mod trial;
pub mod web;

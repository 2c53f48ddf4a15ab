//! The service: the store, the jobs, data sources, notifications, and what
//! a person does to a trial. Everything here does I/O.

pub mod actions;
pub mod app;
pub mod clock;
pub mod config;
pub mod demo;
pub mod export;
pub mod http;
pub mod hypotheses;
pub mod jobs;
pub mod links;
pub mod llm;
pub mod loaded;
pub mod lock;
pub mod notify;
pub mod oauth;
pub mod private;
pub mod push;
pub mod sources;
pub mod standing;
pub mod store;
pub mod streams;
pub mod units;

//! Trials: the protocol, its design and schedule, the life cycle, the
//! decision rules, and whole virtual trials. Pure: no SQL, no clock, no I/O.

pub mod betting;
pub mod calendar;
pub mod causal;
pub mod conclusion;
pub mod decide;
pub mod design;
pub mod gap;
pub mod hypothesis;
pub mod library;
pub mod lifecycle;
pub mod prior_data;
pub mod protocol;
pub mod scenario;
pub mod series;
pub mod simulate;
pub mod standing;
pub mod step;

//! The statistical engine: pure math (`statistics.md` §2–§4).
//!
//! It takes a model specification and a series and returns a posterior; it
//! knows nothing of protocol files, the store or the clock.

pub mod fit;
pub mod generate;
pub mod gpu;
pub mod inference;
pub mod mc_error;
pub mod model;
pub mod natural;
pub mod nongauss;
pub mod spec;
pub mod vecmath;

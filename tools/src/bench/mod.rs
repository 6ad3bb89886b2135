//! Pure logic of `weir-bench`: priority mixes, reports and plots.

pub mod mix;
pub mod plot;
pub mod report;

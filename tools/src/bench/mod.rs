//! Pure logic of `weir-bench`: priority mixes and reports.

pub mod mix;
pub mod report;

//! Shared code of the Weir command-line tools.
//!
//! [`bench`] holds the pure parts of `weir-bench` (priority mixes, latency summaries,
//! the report and its JSON shape) so they can be unit-tested.

pub mod bench;
pub mod cli;

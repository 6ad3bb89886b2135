//! The Weir command-line tools as a library, so the binaries stay thin and the parts
//! can be unit-tested.
//!
//! [`mod@bench`] is `weir-bench` (one module per mode); [`cli`] is the `weir` admin CLI
//! (one module per command family).

pub mod bench;
pub mod cli;
pub mod connect;

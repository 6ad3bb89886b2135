//! Subcommands of the `weir` CLI that live outside `bin/weir.rs`, one file per area.

pub mod quota;

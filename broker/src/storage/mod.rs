//! The storage engine: one append-only, segmented, memory-mapped log per shard.
//!
//! Layout of a shard directory (see each file's docs for details):
//!
//! ```text
//! 00000000000000000000.log        batches as on the wire (or sealed), base offsets stamped
//! 00000000000000000000.index      sparse offset index
//! 00000000000000000000.timeindex  sparse time index
//! 00000000000000012345.log ...    next segment, named by its first offset
//! .lock                           flock held by the one writer
//! .prepare-<id>.*                 next segment's files, made ahead of time
//! ```
//!
//! * `config.rs` — [`LogConfig`];
//! * `at_rest.rs` — encryption at rest: the keys, sealing and opening a batch;
//! * `segment.rs` — a segment's files, maps, and background preparation;
//! * `index.rs` — the sparse offset and time indexes;
//! * `active.rs` — the writer's position in the segment it appends to;
//! * `recovery.rs` — what `Log::open` checks and cuts, handed back as parts;
//! * `retention.rs` — which segments retention removes;
//! * `redact.rs` — deletion by key: tombstones, and redacting the records they delete;
//! * `workers.rs` — the bounded pool of threads that runs flushes, segment
//!   preparation and deletions in the background;
//! * `log.rs` — [`Log`] (the single writer, owner of the segment list) and
//!   [`LogReader`].
//!
//! Imports run one way, down that list's dependencies: `log` uses `recovery` and
//! `retention`, which use `segment`, `index`, `active` and `config`, never `log`.

mod active;
pub mod at_rest;
mod cache_window;
mod config;
mod error;
mod index;
mod log;
mod recovery;
pub mod redact;
mod retention;
mod segment;
mod truncate;
pub mod workers;

pub use config::{
    LogConfig, DEFAULT_PAGE_CACHE_WINDOW_BYTES, DEFAULT_PREALLOCATE_BYTES, DEFAULT_WRITE_CALL_BYTES,
};
pub use error::StorageError;
pub use log::{AppendInfo, Log, LogReader};
pub use truncate::{restart_closed_log, truncate_closed_log};

#[cfg(test)]
mod tests;

//! The fetch plane: reading a shard's log by offset ([`stream`]: Fetch, ListOffsets)
//! or as four priority-class lanes ([`priority`]: PriorityFetch), both as long polls
//! ([`poll`]) that answer as soon as enough data is there. A priority reader's aging
//! and fairness clocks are its session's ([`clocks`]).
//!
//! Reads never touch the shard writer: they read committed ranges straight from the
//! log's maps through a [`crate::storage::LogReader`] and send the batches as stored.

pub mod clocks;
pub mod poll;
pub mod priority;
pub mod stream;

pub use priority::priority_fetch;
pub use stream::{fetch, list_offsets};

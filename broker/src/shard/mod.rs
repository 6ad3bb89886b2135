//! A shard: one log, one writer thread that owns it, and any number of readers.
//!
//! Appends reach the writer through one bounded lane per priority class, so a flood of
//! low-class appends filling its lane never blocks a high-class sender. The writer
//! takes a group from the lanes in weighted-fair order with aging
//! ([`crate::scheduler::Wfq`]), bounded in bytes, and cut short when P0 work arrives
//! while a lower-class group is gathered (the P0 append is written next), checks
//! idempotent producers' sequences, copies the batches
//! into the log, publishes the new high-water mark, answers `leader` waiters, then
//! flushes once for the whole group when any waiter asked for `durable` (or the topic's
//! durability is `always`) and answers those. This is group commit: one flush serves
//! every concurrent durable producer. A small append that needs no flush, arriving
//! while the writer has nothing queued, is written in place by its caller through the
//! same checks (`writer::append_in_place`), sparing the two thread wake-ups of the
//! hand-off. Readers never touch the writer: they read the
//! log through a [`LogReader`](crate::storage::LogReader) and wait for new data on a
//! watch of the high-water mark.
//!
//! * `command.rs` — what passes between handle and writer: commands, answers,
//!   counters, the writer's settings;
//! * `handle.rs` — [`Shard`], what clients hold: enqueue, flush, read, close;
//! * `writer.rs` — the writer thread's loop and how it writes a group;
//! * `flusher.rs` — durable acknowledgements, pipelined group commit;
//! * `idempotence.rs` — producer sequences and retries;
//! * `class_index.rs` — offsets by priority class, for priority reads.

pub mod class_index;
mod command;
mod flusher;
mod handle;
pub mod idempotence;
pub mod writer;

pub use command::{
    AppendError, AppendOutcome, ClassStats, Layout, PendingAppend, ShardConfig,
    DEFAULT_GROUP_BYTES_MAX, MAX_GROUP_COMMANDS,
};
pub use handle::{Shard, PRODUCER_STATE_SCAN_OFFSETS};

#[cfg(test)]
mod tests;

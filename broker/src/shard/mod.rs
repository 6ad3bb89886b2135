//! A shard: one log, one writer thread that owns it, and any number of readers.
//!
//! Appends reach the writer through a bounded queue. The writer drains everything
//! queued (up to a bound), checks idempotent producers' sequences, copies the batches
//! into the log, publishes the new high-water mark, answers `leader` waiters, then
//! flushes once for the whole group when any waiter asked for `durable` (or the topic's
//! durability is `always`) and answers those. This is group commit: one flush serves
//! every concurrent durable producer. Readers never touch the writer: they read the
//! log through a [`LogReader`] and wait for new data on a watch of the high-water mark.

pub mod idempotence;
pub mod writer;

pub use writer::{AppendError, AppendOutcome, Shard, ShardConfig};

//! Priority scheduling: where work waits in the broker, it waits in per-class lanes
//! served by weighted fair queuing with aging ([`Wfq`]).
//!
//! Used by the shard writer (appends waiting to be written), the priority fetch (which
//! class's batch goes into a response next) and each connection's response queue
//! (which finished response is written to the socket next).

pub mod wfq;

pub use wfq::{Pick, Served, VirtualClock, Wfq, DEFAULT_AGING};

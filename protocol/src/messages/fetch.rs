//! Fetch and ListOffsets.

use super::Records;
use crate::wire_struct;

wire_struct! {
    /// Reads stored batches from one shard, starting at the batch holding `offset`.
    /// Waits up to `max_wait_ms` until at least `min_bytes` are available.
    pub struct FetchRequest {
        pub topic: String,
        pub shard: u32,
        pub offset: u64,
        /// Stop adding batches once this many bytes are in the response. The first batch
        /// is always returned whole, even when larger, so a consumer always progresses.
        pub max_bytes: u32,
        pub min_bytes: u32,
        pub max_wait_ms: u32,
    }
}

wire_struct! {
    /// Whole batches as stored. The first batch may start before `offset` (a consumer
    /// skips the records below the offset it asked for).
    pub struct FetchResponse {
        pub high_watermark: u64,
        pub log_start_offset: u64,
        pub records: Records,
    }
}

/// `ListOffsetsRequest::timestamp_ms` value asking for the high-water mark.
pub const LATEST_TIMESTAMP: i64 = -1;
/// `ListOffsetsRequest::timestamp_ms` value asking for the log start.
pub const EARLIEST_TIMESTAMP: i64 = -2;

wire_struct! {
    /// Finds an offset by time: the first record with timestamp >= `timestamp_ms`, or the
    /// log's ends for the special values -1 (latest) and -2 (earliest).
    pub struct ListOffsetsRequest {
        pub topic: String,
        pub shard: u32,
        pub timestamp_ms: i64,
    }
}

wire_struct! {
    /// The offset found. When no record is that recent, the high-water mark.
    pub struct ListOffsetsResponse {
        pub offset: u64,
        /// Timestamp of the batch found, or -1 for the special values.
        pub timestamp_ms: i64,
    }
}

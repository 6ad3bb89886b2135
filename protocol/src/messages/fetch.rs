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
        /// The topic's layout epoch (its reshards so far); a consumer that knows an
        /// older one refreshes Metadata before it hands out these records
        /// (PROTOCOL.md, "Resharding").
        pub layout_epoch: u32,
        pub records: Records,
    }
}

wire_struct! {
    /// Reads one shard in priority order: batches of classes P0..P3 are kept in four
    /// lanes, each read in offset order from its own cursor, and the broker picks which
    /// lane's next batch goes into the response by weighted fair queuing with aging.
    /// A long-poll waiting for `min_bytes` returns at once when P0 data arrives.
    pub struct PriorityFetchRequest {
        pub topic: String,
        pub shard: u32,
        /// Four offsets, one per class P0..P3: the lane's next batch is its first
        /// batch that holds or follows this offset.
        pub cursors: Vec<u64>,
        pub max_bytes: u32,
        pub min_bytes: u32,
        pub max_wait_ms: u32,
    }
}

wire_struct! {
    /// Whole batches as stored, in delivery order (not offset order). A batch's lane is
    /// the class of its header priority under the handshake's class bounds.
    pub struct PriorityFetchResponse {
        pub high_watermark: u64,
        pub log_start_offset: u64,
        /// Four offsets: each lane's cursor after this response (the offset after the
        /// lane's last batch in it, or, for a lane with no batch in it, the offset of
        /// its next batch or the high-water mark when it has none).
        pub cursors: Vec<u64>,
        /// As in FetchResponse.
        pub layout_epoch: u32,
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

//! Produce and InitProducerId.

use super::Records;
use crate::{wire_enum, wire_struct};

wire_enum! {
    /// What the broker waits for before it answers a produce.
    #[derive(Default)]
    pub enum Acks: "acks" {
        /// No response at all is sent; the client learns nothing.
        None = 0,
        /// Answered once the records are in the primary's log (page cache).
        #[default]
        Leader = 1,
        /// Answered once the records are flushed to disk on the primary.
        Durable = 2,
        /// Answered once the records are also persisted on the shard's mirror.
        Mirrored = 3,
    }
}

wire_struct! {
    /// Appends one or more record batches to one shard.
    pub struct ProduceRequest {
        pub topic: String,
        pub shard: u32,
        pub acks: Acks,
        /// How long the broker may wait for the ack level before it answers
        /// REQUEST_TIMED_OUT; 0 means the broker's default.
        pub timeout_ms: u32,
        /// Batches as built by the producer; `base_offset` and `leader_epoch` are 0.
        pub records: Records,
    }
}

wire_struct! {
    /// Where the request's batches landed.
    pub struct ProduceResponse {
        /// Offset of the first record of the first batch.
        pub base_offset: u64,
        /// Offset of the last record of the last batch.
        pub last_offset: u64,
        /// The shard's first stored offset, for the client's information.
        pub log_start_offset: u64,
        /// 1 when every batch was a retry already stored: nothing new was written and the
        /// offsets are those of the original write.
        pub duplicate: u8,
        /// The shard the records were stored on: the request's, or the one the broker
        /// chose for a produce sent to `ANY_SHARD`.
        pub shard: u32,
    }
}

wire_struct! {
    /// Gets a producer id for idempotent producing, or bumps the epoch of one the
    /// client already has (which fences older instances of the same producer).
    pub struct InitProducerIdRequest {
        /// 0 to get a new id.
        pub producer_id: u64,
        /// The epoch the client had; ignored when `producer_id` is 0.
        pub producer_epoch: u16,
    }
}

wire_struct! {
    /// The id and epoch to stamp on batches.
    pub struct InitProducerIdResponse {
        pub producer_id: u64,
        pub producer_epoch: u16,
    }
}

//! Queue mode of a consumer group: QueueFetch (lease), Ack, Nack, ExtendLease and
//! QueueStatus.
//!
//! In queue mode the broker, not the consumer, tracks what is done: it leases each
//! record to one consumer for a visibility timeout and waits for an ack or a nack per
//! record, so a slow or failing record never holds back the ones behind it. A lease is
//! named by `(topic, shard, offset, lease_id)`; the id changes on every delivery, so an
//! answer to an old delivery can never settle a newer one.

use bytes::Bytes;

use crate::wire_struct;

wire_struct! {
    /// Leases up to `max_messages` records of `topic` to the caller. Waits up to
    /// `max_wait_ms` while nothing is available.
    pub struct QueueFetchRequest {
        /// Queue group name (1..=249 bytes of `[A-Za-z0-9._-]`).
        pub group: String,
        /// Free-form consumer name, kept with each lease for status and logs.
        pub consumer: String,
        pub topic: String,
        /// 1..; the broker may return fewer.
        pub max_messages: u32,
        /// Visibility timeout of every lease in the answer; 0 = the broker's default.
        pub lease_ms: u32,
        pub max_wait_ms: u32,
    }
}

wire_struct! {
    /// One leased record.
    pub struct LeasedMessage {
        pub shard: u32,
        pub offset: u64,
        /// Names this delivery; Ack, Nack and ExtendLease must repeat it.
        pub lease_id: u64,
        /// 1 on the first delivery, 2 on the first retry, ...
        pub attempt: u32,
        /// Most deliveries the record's retry policy allows.
        pub max_attempts: u32,
        /// Priority class (0 = P0 .. 3 = P3) the broker put the record in.
        pub class: u8,
        /// The lease ends this many ms after the broker sent the answer.
        pub lease_ms: u32,
        /// The record as a single-record batch whose `base_offset` is `offset`.
        pub record: Bytes,
    }
}

wire_struct! {
    /// The leased records, oldest offset first per shard. Empty when nothing was
    /// available within the wait (or the group's circuit breaker is open).
    pub struct QueueFetchResponse {
        pub messages: Vec<LeasedMessage>,
    }
}

wire_struct! {
    /// Names one delivery.
    pub struct LeaseRef {
        pub shard: u32,
        pub offset: u64,
        pub lease_id: u64,
    }
}

wire_struct! {
    /// Marks leased records as done.
    pub struct AckRequest {
        pub group: String,
        pub topic: String,
        pub leases: Vec<LeaseRef>,
    }
}

wire_struct! {
    /// One error code per lease, in request order: 0 = acked and durable, or
    /// UNKNOWN_LEASE (31) when that delivery is no longer current (its lease expired
    /// and the record was handed out again, or it was already settled).
    pub struct AckResponse {
        pub results: Vec<u16>,
    }
}

wire_struct! {
    /// Reports that processing one leased record failed.
    pub struct NackRequest {
        pub group: String,
        pub topic: String,
        pub lease: LeaseRef,
        /// 1 = try again later under the retry policy; 0 = never retry (dead-letter now).
        pub retriable: u8,
        /// Error text kept as the record's last error (and in the dead-letter headers).
        pub reason: String,
    }
}

/// `NackResponse::outcome`: a retry is scheduled.
pub const NACK_RETRY_SCHEDULED: u8 = 0;
/// `NackResponse::outcome`: the record is in the dead-letter topic (durably).
pub const NACK_DEAD_LETTERED: u8 = 1;

wire_struct! {
    /// What the broker did with the failed record.
    pub struct NackResponse {
        /// 0 = retry scheduled, 1 = dead-lettered.
        pub outcome: u8,
        /// Failed attempts so far, this one included.
        pub attempts: u32,
        /// Delay before the next delivery (0 when dead-lettered).
        pub retry_in_ms: u32,
    }
}

wire_struct! {
    /// Extends one lease to `lease_ms` from now.
    pub struct ExtendLeaseRequest {
        pub group: String,
        pub topic: String,
        pub lease: LeaseRef,
        /// 0 = the broker's default lease.
        pub lease_ms: u32,
    }
}

wire_struct! {
    /// The lease now ends this many ms after the answer was sent.
    pub struct ExtendLeaseResponse {
        pub lease_ms: u32,
    }
}

wire_struct! {
    /// Asks for the state of queues. Empty group / topic = all.
    pub struct QueueStatusRequest {
        pub group: String,
        pub topic: String,
    }
}

/// `QueueStatus::breaker_state`: closed, records flow.
pub const BREAKER_CLOSED: u8 = 0;
/// `QueueStatus::breaker_state`: open, no record is leased.
pub const BREAKER_OPEN: u8 = 1;
/// `QueueStatus::breaker_state`: half-open, a share of requests is served.
pub const BREAKER_HALF_OPEN: u8 = 2;

wire_struct! {
    /// One shard of one queue.
    pub struct QueueShardStatus {
        pub shard: u32,
        /// Every offset below this is acked or dead-lettered.
        pub ack_floor: u64,
        /// The next offset the queue has not read yet.
        pub next_offset: u64,
        /// The shard's high-water mark.
        pub high_watermark: u64,
        /// Records currently leased.
        pub leased: u32,
        /// Records waiting for a retry (or for a lease after a restart).
        pub waiting: u32,
        /// Records being written to the dead-letter topic.
        pub dying: u32,
        /// Records done above the floor.
        pub done_above_floor: u32,
    }
}

wire_struct! {
    /// One queue: a group consuming one topic.
    pub struct QueueStatus {
        pub group: String,
        pub topic: String,
        /// 0 closed, 1 open, 2 half-open.
        pub breaker_state: u8,
        /// Milliseconds the breaker has been in that state.
        pub breaker_state_ms: u64,
        /// Acks / failures (nacks and expired leases) in the breaker's window.
        pub window_successes: u32,
        pub window_failures: u32,
        /// Counters since the queue was opened on this broker.
        pub leased: u64,
        pub acked: u64,
        pub nacked: u64,
        pub expired: u64,
        pub redelivered: u64,
        pub dead_lettered: u64,
        pub shards: Vec<QueueShardStatus>,
        /// While the breaker is open: milliseconds until it half-opens (the broker's
        /// `queue_breaker_open_for_ms` less the time open so far); 0 otherwise.
        pub breaker_reopens_in_ms: u64,
    }
}

wire_struct! {
    /// The queues asked for, sorted by group then topic.
    pub struct QueueStatusResponse {
        pub queues: Vec<QueueStatus>,
    }
}

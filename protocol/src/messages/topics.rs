//! Topic administration and metadata: CreateTopic, DeleteTopic, Metadata, DeleteKey.

use crate::{wire_enum, wire_struct};

wire_enum! {
    /// When a shard's log is flushed to disk.
    #[derive(Default)]
    pub enum Durability: "durability" {
        /// Left to the operating system's write-back.
        None = 0,
        /// Flushed every `flush_interval_ms`.
        #[default]
        Interval = 1,
        /// Flushed before a `durable` produce is acknowledged (group commit).
        Always = 2,
    }
}

wire_struct! {
    /// A topic's settings. Zero in a numeric field means "the broker's default".
    pub struct TopicConfig {
        pub durability: Durability,
        /// Flush period for `Interval` durability.
        pub flush_interval_ms: u32,
        /// Delete closed segments older than this; 0 keeps them forever.
        pub retention_ms: u64,
        /// Delete the oldest closed segments while a shard is larger than this; 0 = no limit.
        pub retention_bytes: u64,
        /// Size each segment file is preallocated to.
        pub segment_bytes: u64,
        /// Largest produce request's records, in bytes.
        pub max_message_bytes: u32,
        /// Priority (1..=10) given to records produced with priority 0 (unset).
        pub default_priority: u8,
        /// Complexity (1..=5) given to records produced with complexity 0 (unset).
        pub default_complexity: u8,
        /// How the broker derives a shard key for records produced without one:
        /// empty (never), `header:NAME` (the value of header NAME) or `json:FIELD` (the
        /// top-level field FIELD of a JSON object value, strings without quotes).
        pub shard_key_rule: String,
        /// Copies of each shard in a cluster, the primary included (1..=nodes); 0 =
        /// the broker's `default_replicas`. A single-node broker keeps one copy.
        pub replicas: u8,
        /// Fewest in-sync copies (the primary included) a `mirrored` produce needs;
        /// with fewer it is refused with NOT_ENOUGH_MIRRORS. 0 = the broker default
        /// (`default_min_in_sync`, capped at `replicas`).
        pub min_in_sync: u8,
    }
}

wire_struct! {
    /// Creates a topic with `shards` shards numbered 0..shards.
    pub struct CreateTopicRequest {
        pub name: String,
        pub shards: u32,
        pub config: TopicConfig,
    }
}

wire_struct! {
    /// The topic as created, defaults filled in.
    pub struct CreateTopicResponse {
        pub topic: TopicMetadata,
    }
}

wire_struct! {
    /// Deletes a topic and all its data.
    pub struct DeleteTopicRequest {
        pub name: String,
    }
}

wire_struct! {
    /// Empty: success is the error code 0.
    pub struct DeleteTopicResponse {}
}

wire_struct! {
    /// Deletes every record with `key` from a topic (the right to be forgotten): a
    /// tombstone on each shard at its current end. Readers never see those records
    /// again; compaction removes their bytes from disk within the broker's
    /// `delete_key_compact_ms`.
    pub struct DeleteKeyRequest {
        pub topic: String,
        /// The record key, 1..=65535 bytes.
        pub key: bytes::Bytes,
    }
}

wire_struct! {
    /// Where one shard's tombstone stands: records with the key below `below` are
    /// deleted; records produced later (at or above it) are not.
    pub struct TombstonePoint {
        pub shard: u32,
        pub below: u64,
    }
}

wire_struct! {
    /// One tombstone per shard of the topic.
    pub struct DeleteKeyResponse {
        pub shards: Vec<TombstonePoint>,
    }
}

wire_struct! {
    /// Asks for topics' settings and shards. An empty list means every topic.
    pub struct MetadataRequest {
        pub topics: Vec<String>,
    }
}

wire_struct! {
    /// One shard's current bounds.
    pub struct ShardMetadata {
        pub shard: u32,
        /// First offset still stored.
        pub log_start_offset: u64,
        /// Offset the next record will get; every offset below it is readable.
        pub high_watermark: u64,
    }
}

wire_struct! {
    /// One topic: its settings and shards.
    pub struct TopicMetadata {
        pub name: String,
        pub config: TopicConfig,
        /// Every shard the topic has, sealed ones included (a reshard that shrinks
        /// the topic seals shards; they stay readable and are never renumbered).
        pub shards: Vec<ShardMetadata>,
        /// The shards keys are hashed over and produce may write to: `0..active_shards`.
        pub active_shards: u32,
        /// The topic's reshards so far, oldest first (empty: never resharded); the
        /// last one's `epoch` is the topic's layout epoch.
        pub reshards: Vec<Reshard>,
    }
}

wire_struct! {
    /// One reshard of a topic (PROTOCOL.md, "Resharding"): from `from_shards` active
    /// shards to `to_shards`, and where it cut each shard's log.
    pub struct Reshard {
        /// 1 for a topic's first reshard, then 2, ...
        pub epoch: u32,
        pub from_shards: u32,
        pub to_shards: u32,
        /// Per shard, by number: its first offset written under `to_shards`. Shards
        /// past the end of the list did not exist yet (their start is 0).
        pub starts: Vec<u64>,
        /// Why: `operator` (ReshardTopic), or the automatic sharder's decision with
        /// the load and forecast that caused it.
        pub reason: String,
    }
}

wire_struct! {
    /// Changes a topic's active shard count to `shards` (grow or shrink) while it is
    /// in use: every shard's log is cut at one offset (the reshard's starts), shards
    /// `shards..` are sealed when shrinking, new shards are created when growing.
    /// Records of one key keep their order for consumers that follow PROTOCOL.md
    /// "Resharding".
    pub struct ReshardTopicRequest {
        pub topic: String,
        pub shards: u32,
    }
}

wire_struct! {
    /// The reshard as recorded.
    pub struct ReshardTopicResponse {
        pub reshard: Reshard,
    }
}

wire_struct! {
    /// A topic named in a Metadata request that is not described, and why
    /// (UNKNOWN_TOPIC when it does not exist).
    pub struct TopicError {
        pub name: String,
        /// An [`crate::ErrorCode`] number.
        pub error_code: u16,
    }
}

wire_struct! {
    /// The topics asked for that exist, sorted by name, and one error entry per named
    /// topic that could not be described, so one unknown name hides nothing else.
    pub struct MetadataResponse {
        /// Seconds since the broker started.
        pub uptime_s: u64,
        pub broker_software: String,
        pub topics: Vec<TopicMetadata>,
        /// Named topics not described, sorted by name; empty when every name was found.
        pub errors: Vec<TopicError>,
    }
}

//! Consumer groups and committed offsets: JoinGroup, Heartbeat, LeaveGroup,
//! CommitOffsets, FetchOffsets.

use crate::wire_struct;

wire_struct! {
    /// Joins a group (or re-joins after a rebalance). The broker assigns shards; the
    /// answer comes once the group's membership has settled.
    pub struct JoinGroupRequest {
        pub group: String,
        /// Empty on first join; the id the broker gave otherwise.
        pub member_id: String,
        pub client_id: String,
        /// Topics this member consumes.
        pub topics: Vec<String>,
        /// The broker removes the member when no heartbeat arrives within this time.
        pub session_timeout_ms: u32,
        /// How long the broker waits for every member to re-join during a rebalance.
        pub rebalance_timeout_ms: u32,
    }
}

wire_struct! {
    /// Shards of one topic.
    pub struct TopicShards {
        pub topic: String,
        pub shards: Vec<u32>,
    }
}

wire_struct! {
    /// This member's assignment for the new generation.
    pub struct JoinGroupResponse {
        pub member_id: String,
        pub generation: u32,
        pub assignment: Vec<TopicShards>,
    }
}

wire_struct! {
    /// Keeps a membership alive. Answered REBALANCE_IN_PROGRESS when the member must
    /// re-join to learn a new assignment.
    pub struct HeartbeatRequest {
        pub group: String,
        pub member_id: String,
        pub generation: u32,
    }
}

wire_struct! {
    /// Empty: success is the error code 0.
    pub struct HeartbeatResponse {}
}

wire_struct! {
    /// Leaves a group at once (its shards go to the others without waiting for a timeout).
    pub struct LeaveGroupRequest {
        pub group: String,
        pub member_id: String,
    }
}

wire_struct! {
    /// Empty: success is the error code 0.
    pub struct LeaveGroupResponse {}
}

wire_struct! {
    /// One committed position: the offset of the next record to consume.
    pub struct OffsetEntry {
        pub topic: String,
        pub shard: u32,
        pub offset: u64,
    }
}

wire_struct! {
    /// Stores offsets durably. A member of a group gives its id and generation; a
    /// consumer that manages its own shards gives an empty member id and generation 0.
    pub struct CommitOffsetsRequest {
        pub group: String,
        pub member_id: String,
        pub generation: u32,
        pub offsets: Vec<OffsetEntry>,
    }
}

wire_struct! {
    /// Empty: success is the error code 0 (every offset was stored durably).
    pub struct CommitOffsetsResponse {}
}

wire_struct! {
    /// One topic and shard.
    pub struct ShardRef {
        pub topic: String,
        pub shard: u32,
    }
}

wire_struct! {
    /// Reads committed offsets. An empty list means all of the group's.
    pub struct FetchOffsetsRequest {
        pub group: String,
        pub shards: Vec<ShardRef>,
    }
}

wire_struct! {
    /// The committed offsets that exist; shards with no commit are left out.
    pub struct FetchOffsetsResponse {
        pub offsets: Vec<OffsetEntry>,
    }
}

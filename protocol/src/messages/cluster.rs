//! The cluster apis: DescribeCluster (what clients and operators read), MirrorFetch
//! (how a mirror copies a primary's shard), and the two inter-node apis that carry the
//! consensus engine's messages (ConsensusRpc) and forwarded metadata changes
//! (ClusterWrite). A single-node broker answers DescribeCluster with `enabled = 0` and
//! refuses the other three with INVALID_REQUEST.

use super::Records;
use crate::{wire_enum, wire_struct};

/// Node id 0 means "no node" (no primary, no controller known).
pub const NO_NODE: u32 = 0;

/// `truncate_to` of a MirrorFetch answer that asks for no truncation.
pub const NO_TRUNCATION: u64 = u64::MAX;

wire_enum! {
    /// A node's role in the consensus engine, as the answering node last saw it.
    #[derive(Default)]
    pub enum ConsensusRole: "consensus role" {
        #[default]
        Unknown = 0,
        /// Leads the consensus group: the cluster's controller.
        Leader = 1,
        Follower = 2,
        Candidate = 3,
        Learner = 4,
    }
}

wire_struct! {
    /// Asks for the cluster: nodes, and the placement of the named topics' shards
    /// (every topic when the list is empty).
    pub struct DescribeClusterRequest {
        pub topics: Vec<String>,
    }
}

wire_struct! {
    /// One node of the cluster.
    pub struct NodeInfo {
        pub node_id: u32,
        /// Its protocol address, `host:port`, as clients should dial it.
        pub addr: String,
        /// 1 when the controller counts it alive (it answered the consensus engine's
        /// heartbeats within `node_timeout_ms`), else 0.
        pub alive: u8,
        pub role: ConsensusRole,
        /// 1 while it is being removed (`RemoveNode`): it takes no new copies and
        /// its copies are moving away; else 0.
        pub draining: u8,
        /// Moves of copies to or from it that are planned or running (0 once an added
        /// node holds its share, or a removed node holds nothing).
        pub moves_pending: u32,
    }
}

wire_struct! {
    /// Where one mirror of a shard stands, as its primary sees it.
    pub struct MirrorState {
        pub node_id: u32,
        /// The mirror holds every offset below this.
        pub offset: u64,
        /// Records the primary holds that the mirror does not.
        pub lag_records: u64,
        /// Milliseconds since the mirror last held everything the primary held.
        pub caught_up_ms_ago: u64,
    }
}

wire_struct! {
    /// One shard's copies.
    pub struct ShardPlacement {
        pub topic: String,
        pub shard: u32,
        /// The node that takes produce and serves reads; NO_NODE (0) while none can
        /// (no in-sync copy is alive).
        pub primary: u32,
        /// Bumped at every change of primary; mirrors and clients refuse older epochs.
        pub epoch: u32,
        /// Every node holding a copy, primary first.
        pub replicas: Vec<u32>,
        /// The copies that hold every acknowledged record (the primary included); a
        /// new primary is chosen only among them.
        pub in_sync: Vec<u32>,
        /// 1 when the answering node is this shard's primary and the fields below are
        /// its live view; 0 otherwise (they are then 0 and empty).
        pub live: u8,
        /// Records below this are held by every in-sync copy and readable.
        pub high_watermark: u64,
        pub mirrors: Vec<MirrorState>,
    }
}

wire_struct! {
    /// The cluster as the answering node knows it.
    pub struct DescribeClusterResponse {
        /// 0 for a single-node broker (every other field empty or 0).
        pub enabled: u8,
        /// The answering node.
        pub node_id: u32,
        /// The node leading the consensus group, or NO_NODE while none is known.
        pub controller: u32,
        pub nodes: Vec<NodeInfo>,
        /// Sorted by topic, then shard.
        pub shards: Vec<ShardPlacement>,
    }
}

wire_struct! {
    /// Asks for one shard's replication record: its copies and the history of changes
    /// to its primary and in-sync set (the newest 64), as the consensus engine holds
    /// them. Any node answers; a single-node broker refuses it with INVALID_REQUEST.
    pub struct DescribeShardHistoryRequest {
        pub topic: String,
        pub shard: u32,
    }
}

wire_struct! {
    /// One change of a shard's copies, with the state after it.
    pub struct ShardEvent {
        /// When its author (the controller, or the shard's primary) proposed it, ms
        /// since the Unix epoch by the author's clock.
        pub at_ms: i64,
        /// 0 created (copies placed), 1 primary changed (new epoch), 2 in-sync set
        /// changed (same primary and epoch), 3 move started (the target became a
        /// copy), 4 move finished (the source is no copy any more), 5 move given up
        /// (the target is no copy any more).
        pub kind: u8,
        pub epoch: u32,
        /// NO_NODE when no in-sync copy was alive.
        pub primary: u32,
        pub in_sync: Vec<u32>,
        /// Every copy after the change (empty in records older than moves).
        pub replicas: Vec<u32>,
        /// For kinds 3 to 5, why the copy moves: 0 an operator's ShardMove, 1 a node
        /// was added (AddNode) and the placement hash puts the copy there, 2 its node
        /// is being removed (RemoveNode). 0 for other kinds.
        pub cause: u8,
    }
}

wire_struct! {
    /// Moves one copy of a shard from node `from_node` (NO_NODE: its primary) to node
    /// `to_node`, which holds none: the target becomes a mirror and catches up; once it
    /// is in sync the primary moves to it if it was on the source, and the source stops
    /// being a copy. Answered once the move has started (DescribeShardHistory and
    /// DescribeCluster show its progress); a single-node broker refuses it with
    /// INVALID_REQUEST.
    pub struct ShardMoveRequest {
        pub topic: String,
        pub shard: u32,
        pub from_node: u32,
        pub to_node: u32,
    }
}

wire_struct! {
    /// The move started: the source node it moves from.
    pub struct ShardMoveResponse {
        pub from_node: u32,
    }
}

wire_struct! {
    /// The shard's replication record.
    pub struct DescribeShardHistoryResponse {
        pub topic: String,
        pub shard: u32,
        /// Every node holding a copy, in placement order.
        pub replicas: Vec<u32>,
        /// Oldest first.
        pub events: Vec<ShardEvent>,
    }
}

wire_struct! {
    /// A mirror's read of its primary's log: every batch from `fetch_offset` on, as
    /// stored. `last_epoch` is the epoch under which the mirror's record at
    /// `fetch_offset - 1` was written (0 when it holds nothing); the primary uses it to
    /// tell the mirror where their logs diverge.
    pub struct MirrorFetchRequest {
        pub topic: String,
        pub shard: u32,
        /// The fetching node.
        pub node_id: u32,
        /// The epoch the mirror believes the primary leads; an older one than the
        /// primary's is refused with FENCED_EPOCH, a newer one with NOT_PRIMARY.
        pub epoch: u32,
        pub fetch_offset: u64,
        pub last_epoch: u32,
        pub max_bytes: u32,
        /// Wait up to this long for records past `fetch_offset` when there are none.
        pub max_wait_ms: u32,
    }
}

wire_struct! {
    /// The start of one epoch in a shard's log: records from `start_offset` up to the
    /// next entry's start were written while `epoch` was the primary's.
    pub struct EpochStart {
        pub epoch: u32,
        pub start_offset: u64,
    }
}

wire_struct! {
    /// The primary's answer to a MirrorFetch.
    pub struct MirrorFetchResponse {
        pub epoch: u32,
        /// Offsets below this are held by every in-sync copy.
        pub high_watermark: u64,
        pub log_start_offset: u64,
        /// NO_TRUNCATION, or the offset the mirror must cut its log back to before it
        /// fetches again (its suffix from there diverges from the primary's log).
        /// `records` is then empty.
        pub truncate_to: u64,
        /// The primary's epoch history from the epoch holding `fetch_offset` on.
        pub epochs: Vec<EpochStart>,
        /// The primary's log end: how far behind the mirror is.
        pub log_end_offset: u64,
        /// Records per second the primary took over its last second or more: a lagging
        /// mirror catches up the busiest shards first.
        pub write_rate: u64,
        /// Last: runs to the end of the frame.
        pub records: Records,
    }
}

wire_struct! {
    /// Carries one message of the consensus engine between nodes. `kind`: 0 vote,
    /// 1 append entries, 2 install snapshot. `payload` is the engine's own message,
    /// serialized as JSON (PROTOCOL.md, "Consensus messages"); clients never send it.
    pub struct ConsensusRpcRequest {
        pub kind: u8,
        pub payload: bytes::Bytes,
    }
}

wire_struct! {
    /// The engine's answer, serialized as JSON.
    pub struct ConsensusRpcResponse {
        pub payload: bytes::Bytes,
    }
}

wire_struct! {
    /// A change of cluster metadata forwarded by a node to the controller, as JSON
    /// (PROTOCOL.md, "Cluster commands"); clients never send it.
    pub struct ClusterWriteRequest {
        pub command: bytes::Bytes,
    }
}

wire_struct! {
    /// The applied command's result, as JSON.
    pub struct ClusterWriteResponse {
        pub result: bytes::Bytes,
    }
}

wire_struct! {
    /// Adds node `node_id`, reachable at `addr` (`host:port`, as the other nodes and
    /// clients dial it), to the cluster. The node must be running with `--join`. The
    /// controller makes it a learner of the consensus engine, sends it the log, makes
    /// it a voter, records it in the metadata and plans the moves of the copies the
    /// placement hash now puts on it; answered then (the moves run afterwards:
    /// DescribeCluster's `moves_pending` follows them). Only the controller serves it
    /// (others answer NOT_COORDINATOR naming it); a single-node broker refuses it with
    /// INVALID_REQUEST. Adding a node being removed takes it back into service.
    pub struct AddNodeRequest {
        pub node_id: u32,
        pub addr: String,
    }
}

wire_struct! {
    /// The node is a voter and in the metadata.
    pub struct AddNodeResponse {
        /// Copies planned to move to it.
        pub moves_planned: u32,
    }
}

wire_struct! {
    /// Starts removing node `node_id`: it takes no new copies, each of its copies
    /// moves to the node the placement hash picks among the others, and once it holds
    /// none the controller takes it out of the consensus membership and the metadata
    /// (it is then gone from DescribeCluster; stop its process afterwards). Answered once
    /// the drain has started. Refused with INVALID_CONFIG when the other nodes would be
    /// too few for a shard's copies; any node serves it (forwarded to the controller).
    pub struct RemoveNodeRequest {
        pub node_id: u32,
    }
}

wire_struct! {
    /// The drain started.
    pub struct RemoveNodeResponse {
        /// Copies the node still holds (each will move).
        pub moves_pending: u32,
    }
}

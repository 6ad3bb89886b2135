//! The cluster: several nodes that keep copies of each shard and agree, through an
//! embedded consensus engine, on which copy is the primary.
//!
//! - `meta.rs`: the replicated metadata and its commands (the state machine);
//! - `placement.rs`: consistent hashing with virtual nodes (where copies go);
//! - `consensus/`: openraft, its storage and its network (who is controller, what is
//!   committed);
//! - `peer.rs`: a node's connection to another node;
//! - `replication/`: mirrors fetching from primaries, the in-sync set and high-water
//!   mark on primaries, epoch history and truncation;
//! - `controller.rs`: what the controller decides (failover, in-sync changes of dead
//!   nodes);
//! - `agent.rs`: what every node does when the metadata changes (open and close local
//!   copies, take or give up the primary role).
//!
//! A single-node broker has no `Cluster` at all (`BrokerState::cluster` is `None`).

pub mod consensus;
pub mod meta;
pub mod peer;
pub mod placement;

use std::collections::BTreeMap;
use std::sync::Arc;

use weir_protocol::messages::{DescribeClusterRequest, DescribeClusterResponse, NodeInfo};

use self::consensus::Consensus;
use self::meta::NodeId;
use self::peer::Peer;

/// A node's view of and part in the cluster.
#[derive(Debug)]
pub struct Cluster {
    pub node_id: NodeId,
    pub consensus: Arc<Consensus>,
    /// A connection to every other node.
    pub peers: BTreeMap<NodeId, Arc<Peer>>,
}

impl Cluster {
    /// Answers DescribeCluster from this node's view.
    pub fn describe(&self, request: &DescribeClusterRequest) -> DescribeClusterResponse {
        let meta = self.consensus.metadata().borrow().clone();
        let roles = self.consensus.roles();
        let alive = self.consensus.alive_nodes();
        let nodes = meta
            .nodes
            .iter()
            .map(|(&id, n)| NodeInfo {
                node_id: id as u32,
                addr: n.addr.clone(),
                alive: u8::from(alive.as_ref().map_or(true, |a| a.contains(&id))),
                role: roles.get(&id).copied().unwrap_or_default(),
            })
            .collect();
        let shards = meta
            .topics
            .iter()
            .filter(|(name, _)| request.topics.is_empty() || request.topics.contains(name))
            .flat_map(|(name, t)| {
                t.shards.iter().enumerate().map(move |(i, s)| {
                    weir_protocol::messages::ShardPlacement {
                        topic: name.clone(),
                        shard: i as u32,
                        primary: s.primary.unwrap_or(0) as u32,
                        epoch: s.epoch,
                        replicas: s.replicas.iter().map(|&n| n as u32).collect(),
                        in_sync: s.in_sync.iter().map(|&n| n as u32).collect(),
                        live: 0,
                        high_watermark: 0,
                        mirrors: Vec::new(),
                    }
                })
            })
            .collect();
        DescribeClusterResponse {
            enabled: 1,
            node_id: self.node_id as u32,
            controller: self.consensus.controller().unwrap_or(0) as u32,
            nodes,
            shards,
        }
    }
}

impl Cluster {
    /// Serves a mirror's MirrorFetch (this node should be the shard's primary).
    pub async fn mirror_fetch(
        &self,
        request: weir_protocol::messages::MirrorFetchRequest,
    ) -> Result<weir_protocol::messages::MirrorFetchResponse, crate::error::BrokerError> {
        let _ = request;
        Err(crate::error::BrokerError::new(
            weir_protocol::ErrorCode::NotPrimary,
            "mirroring not built yet",
        ))
    }
}

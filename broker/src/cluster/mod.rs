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
//!   nodes); `moves.rs`: the steps of a copy's move between nodes; `nodes.rs`: nodes
//!   added to and removed from a running cluster (the moves that follow);
//! - `agent.rs`: what every node does when the metadata changes (open and close local
//!   copies, take or give up the primary role);
//! - `queues.rs`: queue mode on a cluster (state through consensus, dead letters and
//!   other writes a node makes itself to a shard's primary).
//!
//! A single-node broker has no `Cluster` at all (`BrokerState::cluster` is `None`).

pub mod agent;
pub mod consensus;
pub mod controller;
pub mod meta;
pub mod moves;
pub mod nodes;
pub mod peer;
pub mod placement;
pub mod queues;
pub mod replication;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::task::JoinHandle;
use weir_protocol::messages::{
    DescribeClusterRequest, DescribeClusterResponse, MirrorFetchRequest, MirrorFetchResponse,
    NodeInfo, ShardPlacement,
};
use weir_protocol::ErrorCode;

use self::consensus::{Consensus, ConsensusConfig};
use self::meta::{ClusterMeta, NodeId};
use self::peer::PeerSet;
use self::replication::primary::PrimaryState;
use crate::config::Config;
use crate::error::BrokerError;
use crate::topics::TopicRegistry;

/// A node's view of and part in the cluster.
#[derive(Debug)]
pub struct Cluster {
    pub node_id: NodeId,
    pub config: Arc<Config>,
    pub consensus: Arc<Consensus>,
    /// A connection to every other node (learned from the metadata as nodes join).
    pub peers: Arc<PeerSet>,
    pub topics: Arc<TopicRegistry>,
    /// The shards this node leads, by topic and shard number.
    primaries: RwLock<HashMap<String, HashMap<u32, Arc<PrimaryState>>>>,
    /// The mirror tasks of the shards this node copies.
    mirrors: Mutex<HashMap<(String, u32), JoinHandle<()>>>,
    /// Mirrors held out of sync because their divergent suffix cannot be kept yet,
    /// and why (shown on `/health`).
    pub held: replication::held::HeldCopies,
    /// Catch-up permits of this node's lagging copies.
    pub backfill: Arc<replication::backfill::Backfill>,
}

impl Cluster {
    /// Starts the consensus engine (its storage in `<data_dir>/cluster`) and the
    /// connections to the other nodes. The agent and controller tasks start with
    /// [`Cluster::spawn_tasks`] once the broker's state exists.
    pub async fn start(
        config: Arc<Config>,
        topics: Arc<TopicRegistry>,
    ) -> anyhow::Result<Arc<Cluster>> {
        let peers_cfg = config.cluster_peers()?;
        let node_id = config.node_id;
        peer::set_partition_file(&config.cluster_partition_file);
        let consensus = Consensus::start(ConsensusConfig {
            node_id,
            peers: peers_cfg.clone(),
            dir: config.data_dir.join("cluster"),
            heartbeat: Duration::from_millis(config.cluster_heartbeat_ms),
            election_timeout: Duration::from_millis(config.cluster_election_timeout_ms),
            node_timeout: Duration::from_millis(config.node_timeout_ms),
            join: config.cluster_join,
        })
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the consensus engine: {}", e.message))?;
        let peers = Arc::new(PeerSet::new(node_id, &peers_cfg));
        tracing::info!(node_id, nodes = peers_cfg.len(), "cluster node started");
        Ok(Arc::new(Cluster {
            node_id,
            consensus,
            peers,
            topics,
            primaries: RwLock::new(HashMap::new()),
            mirrors: Mutex::new(HashMap::new()),
            held: Default::default(),
            backfill: Arc::new(replication::backfill::Backfill::new(
                config.mirror_catchup_parallel,
            )),
            config,
        }))
    }

    /// Starts the agent (metadata → local copies and roles) and the controller loop.
    /// `issued_below` learns the cluster's producer-id mark at every metadata change
    /// (the broker's producer-id table; see `agent::IssuedBelow`).
    pub fn spawn_tasks(
        self: &Arc<Self>,
        issued_below: agent::IssuedBelow,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        vec![
            tokio::spawn(agent::run(self.clone(), issued_below, shutdown.clone())),
            tokio::spawn(controller::run(self.clone(), shutdown)),
        ]
    }

    /// Stops the mirror tasks and the consensus engine.
    pub async fn shutdown(&self) {
        for (_, task) in self.mirrors.lock().expect("mirrors lock").drain() {
            task.abort();
        }
        self.consensus.shutdown().await;
    }

    /// The metadata as applied on this node.
    pub fn meta(&self) -> Arc<ClusterMeta> {
        self.consensus.metadata().borrow().clone()
    }

    /// The primary state of a shard this node leads, or the refusal a client of a
    /// shard it does not lead gets: NOT_PRIMARY naming the primary, or SHARD_OFFLINE.
    pub fn check_primary(&self, topic: &str, shard: u32) -> Result<Arc<PrimaryState>, BrokerError> {
        if let Some(p) = self
            .primaries
            .read()
            .expect("primaries lock")
            .get(topic)
            .and_then(|t| t.get(&shard))
        {
            if !p.is_resigned() {
                return Ok(p.clone());
            }
        }
        let meta = self.meta();
        Err(match meta.shard(topic, shard) {
            None => BrokerError::new(
                ErrorCode::NotPrimary,
                format!(
                    "{topic}/{shard} is not a shard of the cluster's metadata as node {} knows it",
                    self.node_id
                ),
            ),
            Some(e) => match e.primary {
                None => BrokerError::new(
                    ErrorCode::ShardOffline,
                    format!(
                        "{topic}/{shard} has no live in-sync copy (epoch {})",
                        e.epoch
                    ),
                ),
                Some(p) => BrokerError::new(
                    ErrorCode::NotPrimary,
                    format!(
                        "node {p} ({}) is the primary of {topic}/{shard} in epoch {}, not node {}",
                        meta.addr(p).unwrap_or("?"),
                        e.epoch,
                        self.node_id
                    ),
                ),
            },
        })
    }

    /// Consumer groups are coordinated by the controller; anyone else refuses them.
    pub fn check_coordinator(&self) -> Result<(), BrokerError> {
        match self.consensus.controller() {
            Some(c) if c == self.node_id => Ok(()),
            Some(c) => Err(BrokerError::new(
                ErrorCode::NotCoordinator,
                format!(
                    "node {c} ({}) coordinates consumer groups, not node {}",
                    self.meta().addr(c).unwrap_or("?"),
                    self.node_id
                ),
            )),
            None => Err(BrokerError::new(
                ErrorCode::NoController,
                "no controller is known right now; retry shortly",
            )),
        }
    }

    /// Serves a mirror's MirrorFetch.
    pub async fn mirror_fetch(
        &self,
        request: MirrorFetchRequest,
    ) -> Result<MirrorFetchResponse, BrokerError> {
        let p = self.check_primary(&request.topic, request.shard)?;
        let max = request
            .max_bytes
            .clamp(1, self.config.mirror_fetch_max_bytes) as usize;
        p.serve(&request, max).await
    }

    /// Answers DescribeCluster from this node's view.
    pub fn describe(&self, request: &DescribeClusterRequest) -> DescribeClusterResponse {
        let meta = self.meta();
        let roles = self.consensus.roles();
        let alive = self.consensus.alive_nodes();
        let nodes = meta
            .nodes
            .iter()
            .map(|(&id, n)| NodeInfo {
                node_id: id as u32,
                addr: n.addr.clone(),
                alive: u8::from(alive.as_ref().is_none_or(|a| a.contains(&id))),
                role: roles.get(&id).copied().unwrap_or_default(),
                draining: u8::from(n.draining),
                moves_pending: meta.moves_pending(id) as u32,
            })
            .collect();
        let primaries = self.primaries.read().expect("primaries lock");
        let mut shards = Vec::new();
        for (name, t) in &meta.topics {
            if !request.topics.is_empty() && !request.topics.contains(name) {
                continue;
            }
            for (i, s) in t.shards.iter().enumerate() {
                let live = primaries
                    .get(name)
                    .and_then(|m| m.get(&(i as u32)))
                    .filter(|p| !p.is_resigned() && p.epoch == s.epoch);
                shards.push(ShardPlacement {
                    topic: name.clone(),
                    shard: i as u32,
                    primary: s.primary.unwrap_or(0) as u32,
                    epoch: s.epoch,
                    replicas: s.replicas.iter().map(|&n| n as u32).collect(),
                    in_sync: s.in_sync.iter().map(|&n| n as u32).collect(),
                    live: u8::from(live.is_some()),
                    high_watermark: live.map_or(0, |p| p.shard.reader().high_watermark()),
                    mirrors: live.map(|p| p.mirror_states()).unwrap_or_default(),
                });
            }
        }
        DescribeClusterResponse {
            enabled: 1,
            node_id: self.node_id as u32,
            controller: self.consensus.controller().unwrap_or(0) as u32,
            nodes,
            shards,
        }
    }

    /// Every shard this node leads right now.
    pub fn led_shards(&self) -> Vec<Arc<PrimaryState>> {
        self.primaries
            .read()
            .expect("primaries lock")
            .values()
            .flat_map(|m| m.values().cloned())
            .collect()
    }
}

/// The control plane's cluster side: what goes through the consensus engine.
impl Cluster {
    /// CreateTopic on a cluster node: settings resolved here (defaults, ranges,
    /// replicas against the node count), the topic committed through the controller,
    /// and answered once this node has its local copy.
    pub async fn create_topic(
        &self,
        r: weir_protocol::messages::CreateTopicRequest,
    ) -> Result<weir_protocol::messages::TopicMetadata, BrokerError> {
        if !crate::names::valid_name(&r.name) {
            return Err(BrokerError::new(
                ErrorCode::InvalidTopicName,
                format!("{:?}: use 1 to 249 characters of [A-Za-z0-9._-]", r.name),
            ));
        }
        // Room for the reconciliation topic's name (`<name>.reconcile`), which a
        // returning primary creates when it must keep records it cuts.
        let reconcile = format!("{}{}", r.name, weir_protocol::headers::RECONCILE_SUFFIX);
        if !r.name.ends_with(weir_protocol::headers::RECONCILE_SUFFIX)
            && !crate::names::valid_name(&reconcile)
        {
            return Err(BrokerError::new(
                ErrorCode::InvalidTopicName,
                format!(
                    "{:?}: a cluster topic's name leaves room for {reconcile:?} (at most {} characters)",
                    r.name,
                    crate::names::MAX_TOPIC_NAME_BYTES - weir_protocol::headers::RECONCILE_SUFFIX.len()
                ),
            ));
        }
        let shards = match r.shards {
            0 => self.config.default_shards,
            n => n,
        };
        if shards > self.config.max_shards_per_topic {
            return Err(BrokerError::new(
                ErrorCode::InvalidConfig,
                format!(
                    "{shards} shards exceeds max_shards_per_topic {}",
                    self.config.max_shards_per_topic
                ),
            ));
        }
        let config = self.topics.resolve(r.config)?;
        let result = self
            .consensus
            .write(meta::Command::CreateTopic {
                name: r.name.clone(),
                shards,
                settings: meta::TopicSettings::from(&config),
                at_ms: crate::clock::now_ms(),
            })
            .await?;
        refusal(result)?;
        self.wait_local(&r.name, true).await?;
        Ok(self.topics.get(&r.name)?.metadata())
    }

    /// DescribeShardHistory: the shard's replication record from the applied metadata.
    pub fn shard_history(
        &self,
        r: &weir_protocol::messages::DescribeShardHistoryRequest,
    ) -> Result<weir_protocol::messages::DescribeShardHistoryResponse, BrokerError> {
        use weir_protocol::messages::{ShardEvent, NO_NODE};
        let meta = self.meta();
        let entry = shard_entry(&meta, &r.topic, r.shard)?;
        let ids = |v: &[NodeId]| v.iter().map(|&n| n as u32).collect::<Vec<u32>>();
        Ok(weir_protocol::messages::DescribeShardHistoryResponse {
            topic: r.topic.clone(),
            shard: r.shard,
            replicas: ids(&entry.replicas),
            events: entry
                .history
                .iter()
                .map(|e| ShardEvent {
                    at_ms: e.at_ms,
                    kind: e.kind.code(),
                    epoch: e.epoch,
                    primary: e.primary.map_or(NO_NODE, |p| p as u32),
                    in_sync: ids(&e.in_sync),
                    replicas: ids(&e.replicas),
                    cause: e.cause.code(),
                })
                .collect(),
        })
    }

    /// ShardMove: starts moving one copy (committed through the controller, which
    /// drives the rest: `moves.rs`).
    pub async fn start_move(
        &self,
        r: &weir_protocol::messages::ShardMoveRequest,
    ) -> Result<weir_protocol::messages::ShardMoveResponse, BrokerError> {
        use weir_protocol::messages::NO_NODE;
        let meta = self.meta();
        let entry = shard_entry(&meta, &r.topic, r.shard)?;
        let from = match r.from_node {
            NO_NODE => entry.primary.ok_or_else(|| {
                BrokerError::new(
                    ErrorCode::ShardOffline,
                    format!("{}/{} has no primary to move", r.topic, r.shard),
                )
            })?,
            n => NodeId::from(n),
        };
        let result = self
            .consensus
            .write(meta::Command::StartMove {
                topic: r.topic.clone(),
                shard: r.shard,
                expected_version: entry.version,
                from,
                to: NodeId::from(r.to_node),
                at_ms: crate::clock::now_ms(),
                cause: meta::MoveCause::Operator,
            })
            .await?;
        refusal(result)?;
        Ok(weir_protocol::messages::ShardMoveResponse {
            from_node: from as u32,
        })
    }

    /// AddNode, on the controller: the node becomes a voter of the consensus engine,
    /// then `AddNode` records it and plans its copies (`nodes.rs`).
    pub async fn add_node(
        &self,
        r: &weir_protocol::messages::AddNodeRequest,
    ) -> Result<weir_protocol::messages::AddNodeResponse, BrokerError> {
        self.check_coordinator()?;
        let id = NodeId::from(r.node_id);
        if id == 0 || !r.addr.contains(':') {
            return Err(BrokerError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "add node {}: give an id ≥ 1 and a HOST:PORT address, not {:?}",
                    r.node_id, r.addr
                ),
            ));
        }
        if self
            .meta()
            .nodes
            .get(&id)
            .is_some_and(|n| n.addr != r.addr && !n.draining)
        {
            return Err(BrokerError::new(
                ErrorCode::InvalidRequest,
                format!("node {id} is already in the cluster at another address"),
            ));
        }
        self.consensus
            .add_member(id, &r.addr, controller::MEMBERSHIP_WAIT)
            .await?;
        let before = self.meta().planned.len();
        refusal(
            self.consensus
                .write(meta::Command::AddNode {
                    id,
                    addr: r.addr.clone(),
                })
                .await?,
        )?;
        let meta = self.meta();
        let planned = meta.planned.iter().filter(|p| p.to == id).count();
        tracing::info!(node = id, addr = %r.addr, planned, before, "node added to the cluster");
        Ok(weir_protocol::messages::AddNodeResponse {
            moves_planned: planned as u32,
        })
    }

    /// RemoveNode: marks the node draining (committed through the controller, which
    /// moves its copies and then takes it out: `nodes.rs`, `controller.rs`).
    pub async fn remove_node(
        &self,
        r: &weir_protocol::messages::RemoveNodeRequest,
    ) -> Result<weir_protocol::messages::RemoveNodeResponse, BrokerError> {
        let id = NodeId::from(r.node_id);
        if !self.meta().nodes.contains_key(&id) {
            return Err(BrokerError::new(
                ErrorCode::InvalidRequest,
                format!("node {id} is not in the cluster"),
            ));
        }
        refusal(
            self.consensus
                .write(meta::Command::DrainNode { id })
                .await?,
        )?;
        Ok(weir_protocol::messages::RemoveNodeResponse {
            moves_pending: self.meta().moves_pending(id) as u32,
        })
    }

    /// DeleteTopic on a cluster node.
    pub async fn delete_topic(&self, name: &str) -> Result<(), BrokerError> {
        let result = self
            .consensus
            .write(meta::Command::DeleteTopic {
                name: name.to_string(),
            })
            .await?;
        refusal(result)?;
        self.wait_local(name, false).await
    }

    /// Waits (bounded) until the agent has created (or deleted) the local copy.
    pub(crate) async fn wait_local(&self, name: &str, present: bool) -> Result<(), BrokerError> {
        for _ in 0..200 {
            if self.topics.get(name).is_ok() == present {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(BrokerError::new(
            ErrorCode::RequestTimedOut,
            format!(
                "the change of topic {name:?} is committed but this node has not applied it yet"
            ),
        ))
    }

    /// A producer id no node has handed out.
    pub async fn allocate_producer_id(&self) -> Result<u64, BrokerError> {
        match self
            .consensus
            .write(meta::Command::AllocateProducerIds { count: 1 })
            .await?
        {
            meta::CommandResult::ProducerIds { first, .. } => Ok(first),
            other => refusal(other).and(Err(BrokerError::new(
                ErrorCode::Unknown,
                "the consensus engine answered the id allocation with something else",
            ))),
        }
    }

    /// Commits a group's offsets through the consensus engine.
    pub async fn commit_offsets(
        &self,
        group: &str,
        offsets: &[weir_protocol::messages::OffsetEntry],
    ) -> Result<(), BrokerError> {
        let result = self
            .consensus
            .write(meta::Command::CommitOffsets {
                group: group.to_string(),
                offsets: offsets
                    .iter()
                    .map(|o| (o.topic.clone(), o.shard, o.offset))
                    .collect(),
            })
            .await?;
        refusal(result)
    }

    /// A group's committed offsets (every one when `shards` is empty).
    pub fn committed_offsets(
        &self,
        group: &str,
        shards: &[weir_protocol::messages::ShardRef],
    ) -> Vec<weir_protocol::messages::OffsetEntry> {
        let meta = self.meta();
        let Some(g) = meta.offsets.get(group) else {
            return Vec::new();
        };
        let entry = |topic: &str, shard: u32, offset: u64| weir_protocol::messages::OffsetEntry {
            topic: topic.to_string(),
            shard,
            offset,
        };
        if shards.is_empty() {
            g.iter()
                .flat_map(|(t, m)| m.iter().map(move |(&s, &o)| entry(t, s, o)))
                .collect()
        } else {
            shards
                .iter()
                .filter_map(|s| {
                    g.get(&s.topic)
                        .and_then(|m| m.get(&s.shard))
                        .map(|&o| entry(&s.topic, s.shard, o))
                })
                .collect()
        }
    }
}

/// A command's refusal as the broker's error.
/// A shard's metadata entry, or UNKNOWN_TOPIC naming it.
fn shard_entry<'m>(
    meta: &'m ClusterMeta,
    topic: &str,
    shard: u32,
) -> Result<&'m meta::ShardEntry, BrokerError> {
    meta.shard(topic, shard).ok_or_else(|| {
        BrokerError::new(
            ErrorCode::UnknownTopic,
            format!("{topic}/{shard} is not in the cluster metadata"),
        )
    })
}

fn refusal(result: meta::CommandResult) -> Result<(), BrokerError> {
    match result {
        meta::CommandResult::Refused { code, message } => Err(BrokerError::new(
            ErrorCode::from_u16(code).unwrap_or(ErrorCode::Unknown),
            message,
        )),
        _ => Ok(()),
    }
}

/// The cluster's figures for `/metrics` and the status page.
impl crate::meters::ClusterGauges for Cluster {
    fn catchups(&self) -> (u64, u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.backfill.metrics;
        (
            self.backfill.active() as u64,
            m.finished.load(Relaxed),
            m.records.load(Relaxed),
            m.bytes.load(Relaxed),
        )
    }

    fn mirror_lag_records(&self) -> Vec<(String, u32, String, u64)> {
        self.led_shards()
            .iter()
            .flat_map(|p| {
                p.mirror_states().into_iter().map(|m| {
                    (
                        p.topic.clone(),
                        p.shard_no,
                        m.node_id.to_string(),
                        m.lag_records,
                    )
                })
            })
            .collect()
    }

    fn in_sync_nodes(&self) -> Vec<(String, u32, u64)> {
        self.led_shards()
            .iter()
            .map(|p| (p.topic.clone(), p.shard_no, p.in_sync().len() as u64))
            .collect()
    }

    fn placement(&self) -> crate::meters::ClusterPlacement {
        let d = self.describe(&DescribeClusterRequest { topics: vec![] });
        crate::meters::ClusterPlacement {
            node_id: u64::from(d.node_id),
            controller: u64::from(d.controller),
            nodes: d
                .nodes
                .iter()
                .map(|n| crate::meters::NodePlacement {
                    id: u64::from(n.node_id),
                    addr: n.addr.clone(),
                    alive: n.alive == 1,
                    role: format!("{:?}", n.role).to_lowercase(),
                })
                .collect(),
            shards: d
                .shards
                .iter()
                .map(|s| crate::meters::ShardCopies {
                    topic: s.topic.clone(),
                    shard: s.shard,
                    primary: u64::from(s.primary),
                    epoch: s.epoch,
                    replicas: s.replicas.iter().map(|&n| u64::from(n)).collect(),
                    in_sync: s.in_sync.iter().map(|&n| u64::from(n)).collect(),
                })
                .collect(),
        }
    }
}

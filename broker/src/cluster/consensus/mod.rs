//! The consensus engine: openraft embedded in every node, holding [`ClusterMeta`].
//!
//! STUB: the interface the rest of the broker uses. The implementation (openraft log
//! and state-machine storage in `<data_dir>/cluster/`, the network over ConsensusRpc,
//! forwarding of writes to the leader over ClusterWrite) replaces the bodies.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use weir_protocol::messages::{
    ClusterWriteRequest, ClusterWriteResponse, ConsensusRole, ConsensusRpcRequest,
    ConsensusRpcResponse,
};
use weir_protocol::ErrorCode;

use super::meta::{ClusterMeta, Command, CommandResult, NodeId};
use crate::error::BrokerError;

/// What the engine needs to start.
#[derive(Debug, Clone)]
pub struct ConsensusConfig {
    pub node_id: NodeId,
    /// Every voter, this node included: id → protocol address.
    pub peers: BTreeMap<NodeId, String>,
    /// Where the engine keeps its log, vote and snapshots (`<data_dir>/cluster`).
    pub dir: PathBuf,
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    /// A node that has not acknowledged a heartbeat for this long is not alive.
    pub node_timeout: Duration,
}

/// A running consensus engine.
#[derive(Debug)]
pub struct Consensus {
    config: ConsensusConfig,
    meta: watch::Sender<Arc<ClusterMeta>>,
}

impl Consensus {
    /// Opens the engine's storage in `config.dir` (recovering it), starts the engine and
    /// its network, and forms the cluster from `peers` if it was never formed.
    pub async fn start(config: ConsensusConfig) -> Result<Arc<Consensus>, BrokerError> {
        let (meta, _) = watch::channel(Arc::new(ClusterMeta::default()));
        Ok(Arc::new(Consensus { config, meta }))
    }

    /// The metadata as applied on this node; changes whenever a command is applied.
    pub fn metadata(&self) -> watch::Receiver<Arc<ClusterMeta>> {
        self.meta.subscribe()
    }

    /// Commits `command` through the controller (forwarded over ClusterWrite when this
    /// node is not it) and returns its result once it is applied on this node too.
    /// NO_CONTROLLER while no leader is known.
    pub async fn write(&self, command: Command) -> Result<CommandResult, BrokerError> {
        let _ = command;
        Err(BrokerError::new(
            ErrorCode::NoController,
            "consensus not built yet",
        ))
    }

    /// The controller (consensus leader) as this node knows it.
    pub fn controller(&self) -> Option<NodeId> {
        None
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// Each node's role as this node sees it.
    pub fn roles(&self) -> BTreeMap<NodeId, ConsensusRole> {
        BTreeMap::new()
    }

    /// On the controller: the nodes that acknowledged a heartbeat within
    /// `node_timeout` (itself included). `None` on other nodes, and on a controller
    /// elected less than `node_timeout` ago (it cannot judge yet).
    pub fn alive_nodes(&self) -> Option<BTreeSet<NodeId>> {
        None
    }

    /// Serves a ConsensusRpc from another node.
    pub async fn handle_rpc(
        &self,
        request: ConsensusRpcRequest,
    ) -> Result<ConsensusRpcResponse, BrokerError> {
        let _ = request;
        Err(BrokerError::new(
            ErrorCode::NoController,
            "consensus not built yet",
        ))
    }

    /// Serves a ClusterWrite from another node (this node should be the controller).
    pub async fn handle_write(
        &self,
        request: ClusterWriteRequest,
    ) -> Result<ClusterWriteResponse, BrokerError> {
        let _ = request;
        Err(BrokerError::new(
            ErrorCode::NoController,
            "consensus not built yet",
        ))
    }

    /// Stops the engine.
    pub async fn shutdown(&self) {}
}

//! Openraft's network over Weir's own protocol: each engine message is one
//! `ConsensusRpc` request (kind 0 vote, 1 append entries, 2 install snapshot) whose
//! payload is the openraft message as JSON, sent on the node's [`Peer`] connection.
//!
//! The network also remembers when each node last answered an AppendEntries (which
//! is what heartbeats are): the leader's view of which nodes are alive.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode, RPCTypes};
use serde::de::DeserializeOwned;
use serde::Serialize;
use weir_protocol::messages::ConsensusRpcRequest;
use weir_protocol::ResponseBody;

use super::super::meta::NodeId;
use super::super::peer::{Peer, PeerError};
use super::types::TypeConfig;

pub const KIND_VOTE: u8 = 0;
pub const KIND_APPEND: u8 = 1;
pub const KIND_SNAPSHOT: u8 = 2;

/// When each node last answered an AppendEntries from this node.
#[derive(Debug, Default)]
pub struct Liveness {
    answered: Mutex<HashMap<NodeId, Instant>>,
}

impl Liveness {
    fn record(&self, node: NodeId) {
        self.answered
            .lock()
            .expect("liveness lock")
            .insert(node, Instant::now());
    }

    /// The nodes that answered within `within`.
    pub fn answered_within(&self, within: Duration) -> Vec<NodeId> {
        self.answered
            .lock()
            .expect("liveness lock")
            .iter()
            .filter(|(_, at)| at.elapsed() < within)
            .map(|(&n, _)| n)
            .collect()
    }
}

/// Makes a [`Network`] per target node.
pub struct NetworkFactory {
    pub node_id: NodeId,
    pub peers: BTreeMap<NodeId, Arc<Peer>>,
    pub liveness: Arc<Liveness>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Network {
        let peer = self
            .peers
            .get(&target)
            .cloned()
            .unwrap_or_else(|| Arc::new(Peer::new(node.addr.clone())));
        Network {
            node_id: self.node_id,
            target,
            peer,
            liveness: self.liveness.clone(),
        }
    }
}

/// The engine's connection to one node.
pub struct Network {
    node_id: NodeId,
    target: NodeId,
    peer: Arc<Peer>,
    liveness: Arc<Liveness>,
}

/// How a failed call looks to openraft.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct CallError(String);

impl Network {
    async fn call<Req: Serialize, Resp: DeserializeOwned, E>(
        &self,
        kind: u8,
        action: RPCTypes,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        E: std::error::Error + DeserializeOwned,
        Result<Resp, RaftError<NodeId, E>>: DeserializeOwned,
    {
        let payload =
            serde_json::to_vec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let timeout = option.hard_ttl();
        let request = ConsensusRpcRequest {
            kind,
            payload: Bytes::from(payload),
        };
        let body = match self.peer.call(request, timeout).await {
            Ok(b) => b,
            Err(PeerError::TimedOut(_)) => {
                return Err(RPCError::Timeout(Timeout {
                    action,
                    id: self.node_id,
                    target: self.target,
                    timeout,
                }))
            }
            Err(e @ PeerError::Unreachable { .. }) => {
                return Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => return Err(RPCError::Network(NetworkError::new(&e))),
        };
        let ResponseBody::ConsensusRpc(body) = body else {
            let e = CallError(format!("node {} answered another api", self.target));
            return Err(RPCError::Network(NetworkError::new(&e)));
        };
        let answer: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&body.payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&AnyError::new(&e))))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let answer = self
            .call(KIND_APPEND, RPCTypes::AppendEntries, &rpc, &option)
            .await;
        if answer.is_ok() {
            self.liveness.record(self.target);
        }
        answer
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(KIND_SNAPSHOT, RPCTypes::InstallSnapshot, &rpc, &option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(KIND_VOTE, RPCTypes::Vote, &rpc, &option).await
    }
}

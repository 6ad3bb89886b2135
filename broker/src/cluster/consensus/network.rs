//! Openraft's network over Weir's own protocol: each engine message is one
//! `ConsensusRpc` request (kind 0 vote, 1 append entries, 2 install snapshot) whose
//! payload is the openraft message as JSON, sent on the node's [`Peer`] connection.
//!
//! The network also remembers when each node last answered an AppendEntries (which
//! is what heartbeats are), and when a connection to it was last refused: the
//! leader's view of which nodes are alive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
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

/// When each node last answered an AppendEntries from this node, and when a
/// connection to it was last refused.
#[derive(Debug, Default)]
pub struct Liveness {
    seen: Mutex<HashMap<NodeId, Seen>>,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    answered: Option<Instant>,
    refused: Option<Instant>,
}

impl Liveness {
    pub(crate) fn record(&self, node: NodeId) {
        self.entry(node, |s| s.answered = Some(Instant::now()));
    }

    /// A connection to `node` was refused: nothing listens on its port, so its
    /// process is gone (killed, crashed, stopped). It counts as dead at once, not
    /// after the node timeout — until it answers again.
    pub(crate) fn refused(&self, node: NodeId) {
        self.entry(node, |s| s.refused = Some(Instant::now()));
    }

    fn entry(&self, node: NodeId, f: impl FnOnce(&mut Seen)) {
        let mut seen = self.seen.lock().expect("liveness lock");
        f(seen.entry(node).or_insert(Seen {
            answered: None,
            refused: None,
        }));
    }

    /// The nodes refused at or after `since` and not answering since. A refusal from
    /// before `since` says nothing now (a node refused while it was still starting).
    pub fn refused_since(&self, since: Instant) -> Vec<NodeId> {
        self.seen
            .lock()
            .expect("liveness lock")
            .iter()
            .filter(|(_, s)| {
                s.refused
                    .is_some_and(|r| r >= since && s.answered.is_none_or(|a| a < r))
            })
            .map(|(&n, _)| n)
            .collect()
    }

    /// The nodes that answered within `within` and were not refused since.
    pub fn answered_within(&self, within: Duration) -> Vec<NodeId> {
        self.seen
            .lock()
            .expect("liveness lock")
            .iter()
            .filter(|(_, s)| match s.answered {
                Some(at) => at.elapsed() < within && s.refused.is_none_or(|r| r < at),
                None => false,
            })
            .map(|(&n, _)| n)
            .collect()
    }
}

/// Makes a [`Network`] per target node.
pub struct NetworkFactory {
    pub node_id: NodeId,
    pub peers: Arc<super::super::peer::PeerSet>,
    pub liveness: Arc<Liveness>,
    /// How long replication to an unreachable node waits before trying again.
    pub retry_unreachable: Duration,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Network {
        let peer = self
            .peers
            .get(&target)
            .unwrap_or_else(|| Arc::new(Peer::new(node.addr.clone())));
        Network {
            node_id: self.node_id,
            target,
            peer,
            liveness: self.liveness.clone(),
            retry_unreachable: self.retry_unreachable,
        }
    }
}

/// The engine's connection to one node.
pub struct Network {
    node_id: NodeId,
    target: NodeId,
    peer: Arc<Peer>,
    liveness: Arc<Liveness>,
    retry_unreachable: Duration,
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
            Err(e @ PeerError::Unreachable { refused, .. }) => {
                if refused {
                    self.liveness.refused(self.target);
                }
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
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
    /// openraft's default waits 500 ms after a node was unreachable; a node that comes
    /// back would then miss entries for that long, and lose the next election on its
    /// shorter log. A failed connect is cheap, so retry at the heartbeat's pace.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.retry_unreachable))
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_node_is_dead_until_it_answers_again() {
        let l = Liveness::default();
        let long = Duration::from_secs(60);
        assert!(l.answered_within(long).is_empty(), "never answered");
        let start = Instant::now();
        l.refused(3); // while it was starting, before it ever answered
        std::thread::sleep(Duration::from_millis(2));
        let leading = Instant::now();
        assert!(l.refused_since(leading).is_empty(), "an old refusal");
        assert_eq!(l.refused_since(start), vec![3]);
        l.record(2);
        l.record(3);
        assert_eq!(sorted(l.answered_within(long)), vec![2, 3]);
        std::thread::sleep(Duration::from_millis(2));
        l.refused(3);
        assert_eq!(
            l.answered_within(long),
            vec![2],
            "refused after its last answer"
        );
        assert_eq!(l.refused_since(leading), vec![3]);
        std::thread::sleep(Duration::from_millis(2));
        l.record(3);
        assert_eq!(sorted(l.answered_within(long)), vec![2, 3], "back");
        assert!(l.refused_since(start).is_empty());
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            l.answered_within(Duration::from_millis(1)).is_empty(),
            "answers older than the window do not count"
        );
    }

    fn sorted(mut v: Vec<NodeId>) -> Vec<NodeId> {
        v.sort_unstable();
        v
    }
}

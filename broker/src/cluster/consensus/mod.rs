//! The consensus engine: openraft embedded in every node, holding [`ClusterMeta`].
//!
//! Every node in `peers` is a voter. The engine's log, vote and snapshots live in
//! `<data_dir>/cluster/` (`log_store.rs`, `state_machine.rs`, formats in `files.rs`),
//! its messages travel as `ConsensusRpc` requests (`network.rs`), and a metadata change
//! made on a node that is not the leader (the controller) is forwarded to it as a
//! `ClusterWrite`. The rest of the broker sees only this module's [`Consensus`].

pub mod files;
mod log_store;
mod network;
mod state_machine;
pub use state_machine::QueueView;
pub mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ServerState};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use weir_protocol::messages::{
    ClusterWriteRequest, ClusterWriteResponse, ConsensusRole, ConsensusRpcRequest,
    ConsensusRpcResponse,
};
use weir_protocol::{ErrorCode, ResponseBody};

use super::meta::{ClusterMeta, Command, CommandResult, NodeEntry, NodeId};
use super::peer::{PeerError, PeerSet};
use crate::error::BrokerError;
use network::{Liveness, NetworkFactory};
use types::Raft;

pub use log_store::OpenError;

/// A snapshot of the metadata is taken every this many applied entries, and the log
/// before it dropped (keeping [`LOG_KEPT_AFTER_SNAPSHOT`] for slow followers).
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 1000;
/// Entries kept in the log behind the last snapshot.
pub const LOG_KEPT_AFTER_SNAPSHOT: u64 = 500;
/// The largest piece of a snapshot sent in one ConsensusRpc.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;
/// How long [`Consensus::write`] keeps trying while no leader is known or reachable.
pub const WRITE_RETRY_FOR: Duration = Duration::from_secs(2);
/// How long a write waits for its entry to be applied on this node.
const APPLY_WAIT: Duration = Duration::from_secs(5);
/// Pause between attempts while an election runs.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

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
    /// This node joins a running cluster (`weir cluster add-node` adds it): it never
    /// forms a cluster of its own from `peers`, it waits for the controller to
    /// replicate the cluster's log to it.
    pub join: bool,
}

/// A forwarded write's answer (the `result` of a ClusterWrite response): the log index
/// the command was committed at, so the forwarding node can wait until it has applied
/// it too, and the command's result.
#[derive(Debug, Serialize, Deserialize)]
struct WriteAnswer {
    log_index: u64,
    result: CommandResult,
}

/// A running consensus engine.
pub struct Consensus {
    config: ConsensusConfig,
    raft: Raft,
    meta: Arc<watch::Sender<Arc<ClusterMeta>>>,
    peers: Arc<PeerSet>,
    liveness: Arc<Liveness>,
    /// Since when this node is leader (None while it is not).
    leader_since: Arc<Mutex<Option<Instant>>>,
    watcher: tokio::task::JoinHandle<()>,
    /// The applied queue state (kept out of the published metadata).
    queues: state_machine::QueueView,
}

impl std::fmt::Debug for Consensus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consensus")
            .field("node_id", &self.config.node_id)
            .finish_non_exhaustive()
    }
}

fn storage_error(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::new(ErrorCode::StorageError, format!("consensus: {e}"))
}

fn no_controller(message: impl Into<String>) -> BrokerError {
    BrokerError::new(ErrorCode::NoController, message)
}

impl Consensus {
    /// Opens the engine's storage in `config.dir` (recovering it), starts the engine and
    /// its network, and forms the cluster from `peers` if it was never formed.
    pub async fn start(config: ConsensusConfig) -> Result<Arc<Consensus>, BrokerError> {
        let (tx, _) = watch::channel(Arc::new(ClusterMeta::default()));
        let meta = Arc::new(tx);
        let open_error = |e: OpenError| {
            let code = match e {
                OpenError::Corrupt { .. } => ErrorCode::CorruptStorage,
                OpenError::Io { .. } => ErrorCode::StorageError,
            };
            BrokerError::new(code, format!("consensus storage: {e}"))
        };
        let log = log_store::LogStore::open(&config.dir).map_err(open_error)?;
        let sm =
            state_machine::StateMachine::open(&config.dir, meta.clone()).map_err(open_error)?;
        let queues = sm.queue_view();

        let heartbeat_ms = config.heartbeat.as_millis().max(1) as u64;
        let election_ms = (config.election_timeout.as_millis() as u64).max(heartbeat_ms * 2);
        // openraft's follower campaigns once its leader lease (`election_timeout_max`)
        // and then its election timeout (drawn once per start from `min..max`) have
        // passed since the last heartbeat. Drawn at random, two followers often campaign
        // within a round trip of each other, split the vote and do it again at the same
        // spacing; so each node gets its own narrow window instead, in the order of the
        // node ids (see `election_bounds`), and followers campaign about 0.85 E to 1.15
        // E after the last heartbeat, E being `cluster_election_timeout_ms`.
        let rank = config
            .peers
            .keys()
            .position(|&id| id == config.node_id)
            .unwrap_or(0) as u64;
        let (election_min, election_max) =
            election_bounds(heartbeat_ms, election_ms, rank, config.peers.len() as u64);
        let raft_config = openraft::Config {
            cluster_name: "weir".into(),
            heartbeat_interval: heartbeat_ms,
            election_timeout_min: election_min,
            election_timeout_max: election_max,
            install_snapshot_timeout: election_ms.max(1000),
            // A chunk is sent as a JSON array of numbers (up to 4 bytes a byte): 1 MiB
            // keeps every ConsensusRpc far below the protocol's 16 MiB frame limit.
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY_ENTRIES),
            max_in_snapshot_log_to_keep: LOG_KEPT_AFTER_SNAPSHOT,
            purge_batch_size: 100,
            ..Default::default()
        }
        .validate()
        .map_err(|e| BrokerError::new(ErrorCode::InvalidConfig, format!("consensus: {e}")))?;

        let peers = Arc::new(PeerSet::new(config.node_id, &config.peers));
        let liveness = Arc::new(Liveness::default());
        let network = NetworkFactory {
            node_id: config.node_id,
            peers: peers.clone(),
            liveness: liveness.clone(),
            retry_unreachable: Duration::from_millis(heartbeat_ms),
        };
        let raft = Raft::new(config.node_id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(storage_error)?;

        // Every node forms the cluster with the same voter set; openraft documents that
        // initialising several nodes with the same membership is safe (each writes the
        // same membership entry at index 0), and a node that already holds a log
        // answers NotAllowed, which is fine.
        let initialized = raft.is_initialized().await.map_err(storage_error)?;
        if !initialized && config.join {
            tracing::info!(
                node_id = config.node_id,
                "waiting to be added to a running cluster (weir cluster add-node)"
            );
        } else if !initialized {
            // Ids only: the membership entry must be the same on every node, while
            // addresses are each node's own view (`--peers`; the network dials from
            // that map, and the metadata's SetNodes tells clients), so two nodes may
            // reach a third at different addresses (a proxy, a NAT).
            let members: BTreeMap<NodeId, BasicNode> = config
                .peers
                .keys()
                .map(|&id| (id, BasicNode::default()))
                .collect();
            match raft.initialize(members).await {
                Ok(()) => {}
                Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(storage_error(e)),
            }
        }

        let leader_since = Arc::new(Mutex::new(None));
        let watcher = tokio::spawn(watch_leadership(
            raft.clone(),
            config.clone(),
            meta.subscribe(),
            leader_since.clone(),
            peers.clone(),
        ));
        Ok(Arc::new(Consensus {
            config,
            raft,
            meta,
            peers,
            liveness,
            leader_since,
            watcher,
            queues,
        }))
    }

    /// The metadata as applied on this node; changes whenever a command is applied.
    pub fn metadata(&self) -> watch::Receiver<Arc<ClusterMeta>> {
        self.meta.subscribe()
    }

    /// Commits `command` through the controller (forwarded over ClusterWrite when this
    /// node is not it) and returns its result once it is applied on this node too.
    /// NO_CONTROLLER while no leader is known or reachable (after retrying for about
    /// [`WRITE_RETRY_FOR`]).
    pub async fn write(&self, command: Command) -> Result<CommandResult, BrokerError> {
        let deadline = tokio::time::Instant::now() + WRITE_RETRY_FOR;
        let mut last_reason = String::from("no controller known");
        loop {
            match self.raft.client_write(command.clone()).await {
                Ok(r) => return Ok(r.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    if let Some(leader) = f.leader_id.filter(|l| *l != self.config.node_id) {
                        match self.forward(leader, &command, deadline).await {
                            Ok(answer) => {
                                self.wait_applied(answer.log_index).await?;
                                return Ok(answer.result);
                            }
                            Err(Forward::Retry(reason)) => last_reason = reason,
                            Err(Forward::Fail(e)) => return Err(e),
                        }
                    }
                }
                Err(RaftError::APIError(e)) => {
                    return Err(BrokerError::new(ErrorCode::InvalidRequest, e.to_string()))
                }
                Err(RaftError::Fatal(e)) => {
                    return Err(no_controller(format!("consensus stopped: {e}")))
                }
            }
            if tokio::time::Instant::now() + RETRY_PAUSE >= deadline {
                return Err(no_controller(last_reason));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    async fn forward(
        &self,
        leader: NodeId,
        command: &Command,
        deadline: tokio::time::Instant,
    ) -> Result<WriteAnswer, Forward> {
        let Some(peer) = self.peers.get(&leader) else {
            return Err(Forward::Retry(format!(
                "controller {leader} is not a known peer"
            )));
        };
        let request = ClusterWriteRequest {
            command: Bytes::from(serde_json::to_vec(command).expect("commands serialize")),
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match peer.call(request, left.max(RETRY_PAUSE)).await {
            Ok(ResponseBody::ClusterWrite(r)) => serde_json::from_slice(&r.result).map_err(|e| {
                Forward::Fail(no_controller(format!(
                    "controller {leader} answered badly: {e}"
                )))
            }),
            Ok(_) => Err(Forward::Fail(no_controller(format!(
                "controller {leader} answered another api"
            )))),
            // Never sent, or refused before committing: safe to try again.
            Err(e @ PeerError::Unreachable { .. }) => Err(Forward::Retry(e.to_string())),
            Err(PeerError::Refused {
                code: ErrorCode::NoController,
                message,
            }) => Err(Forward::Retry(message)),
            Err(PeerError::Refused { code, message }) => {
                Err(Forward::Fail(BrokerError::new(code, message)))
            }
            // Sent, fate unknown: retrying could apply the command twice.
            Err(e) => Err(Forward::Fail(no_controller(format!(
                "controller {leader} did not answer, the change may or may not be applied: {e}"
            )))),
        }
    }

    async fn wait_applied(&self, index: u64) -> Result<(), BrokerError> {
        self.raft
            .wait(Some(APPLY_WAIT))
            .applied_index_at_least(Some(index), "write applied here")
            .await
            .map(|_| ())
            .map_err(|e| {
                BrokerError::new(
                    ErrorCode::NoController,
                    format!("committed, not yet applied on this node: {e}"),
                )
            })
    }

    /// The applied queue state.
    pub fn queue_view(&self) -> &state_machine::QueueView {
        &self.queues
    }

    /// The term in which this node leads, or `None` while it does not: queue tasks
    /// opened in one term are stopped when it ends (another node took them over, and
    /// their in-memory state may be behind what it committed since).
    pub fn leading_term(&self) -> Option<u64> {
        let m = self.raft.metrics().borrow().clone();
        (m.current_leader == Some(self.config.node_id) && m.state.is_leader())
            .then_some(m.current_term)
    }

    /// Waits until this node, as leader, has applied everything committed before the
    /// call (openraft's read index): state read afterwards is not behind any write a
    /// previous leader acknowledged.
    pub async fn catch_up(&self) -> Result<(), BrokerError> {
        self.raft
            .ensure_linearizable()
            .await
            .map(|_| ())
            .map_err(|e| no_controller(format!("not the controller any more: {e}")))
    }

    /// The controller (consensus leader) as this node knows it.
    pub fn controller(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// Each node's role as this node sees it: its own from its engine state; the
    /// leader it knows as leader; the other voters as followers.
    pub fn roles(&self) -> BTreeMap<NodeId, ConsensusRole> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let mut roles: BTreeMap<NodeId, ConsensusRole> = membership
            .nodes()
            .map(|(&id, _)| (id, ConsensusRole::Learner))
            .collect();
        for id in membership.voter_ids() {
            roles.insert(id, ConsensusRole::Follower);
        }
        if let Some(leader) = m.current_leader {
            roles.insert(leader, ConsensusRole::Leader);
        }
        let own = match m.state {
            ServerState::Leader => ConsensusRole::Leader,
            ServerState::Follower => ConsensusRole::Follower,
            ServerState::Candidate => ConsensusRole::Candidate,
            ServerState::Learner => ConsensusRole::Learner,
            ServerState::Shutdown => ConsensusRole::Unknown,
        };
        roles.insert(self.config.node_id, own);
        roles
    }

    /// On the controller: the nodes that acknowledged a heartbeat within
    /// `node_timeout` (itself included). `None` on other nodes, and on a controller
    /// elected less than `node_timeout` ago (it cannot judge yet).
    pub fn alive_nodes(&self) -> Option<BTreeSet<NodeId>> {
        let since = (*self.leader_since.lock().expect("leader lock"))?;
        // A new leader heartbeats every node at once, so after a few heartbeats a node
        // that has not answered is as good as dead: waiting the whole node_timeout
        // here would add it to every switchover that follows a controller's death.
        let grace = self.config.node_timeout.min(self.config.heartbeat * 3);
        if self.raft.metrics().borrow().state != ServerState::Leader {
            return None;
        }
        if since.elapsed() < grace {
            // Within the grace only a connection refused since this node leads (no
            // process listens on the node's port) counts: it needs no waiting. Every other node counts as
            // alive until the grace is over, so nothing is decided about it yet.
            let refused = self.liveness.refused_since(since);
            if refused.is_empty() {
                return None;
            }
            let mut alive: BTreeSet<NodeId> = self
                .members()
                .into_iter()
                .filter(|n| !refused.contains(n))
                .collect();
            alive.insert(self.config.node_id);
            return Some(alive);
        }
        let mut alive: BTreeSet<NodeId> = self
            .liveness
            .answered_within(self.config.node_timeout)
            .into_iter()
            .collect();
        alive.insert(self.config.node_id);
        Some(alive)
    }

    /// Every node of the engine's membership (voters and learners).
    pub fn members(&self) -> BTreeSet<NodeId> {
        let m = self.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .nodes()
            .map(|(&id, _)| id)
            .collect()
    }

    /// The voters of the engine's membership.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        let m = self.raft.metrics().borrow().clone();
        m.membership_config.membership().voter_ids().collect()
    }

    /// On the controller: makes node `id` (reached at `addr`) a voter. It is first
    /// added as a learner and sent the log until it holds everything (so the voters'
    /// quorum never waits on a node far behind), then the membership is changed to
    /// include it (openraft's joint consensus). Gives up after `within`: the node
    /// must be running, started with `join`.
    pub async fn add_member(
        &self,
        id: NodeId,
        addr: &str,
        within: Duration,
    ) -> Result<(), BrokerError> {
        self.peers.learn([(id, addr)]);
        let timed_out = || {
            BrokerError::new(
                ErrorCode::RequestTimedOut,
                format!(
                    "node {id} at {addr} did not catch up with the cluster's log within {within:?}: is it running, started with --join?"
                ),
            )
        };
        let node = BasicNode {
            addr: addr.to_string(),
        };
        // openraft's blocking add_learner gives up waiting for the learner after a short
        // while and answers Ok anyway: whether it caught up is checked here, on the
        // leader's replication metrics, up to `within`.
        let added = match self.raft.add_learner(id, node, false).await {
            Err(e) => Err(membership_error(e)),
            Ok(r) => {
                let target = r.log_id.index;
                self.raft
                    .wait(Some(within))
                    .metrics(
                        |m| {
                            m.replication
                                .as_ref()
                                .and_then(|r| r.get(&id).cloned().flatten())
                                .is_some_and(|l| l.index >= target)
                        },
                        "the new learner holds the log",
                    )
                    .await
                    .map(|_| ())
                    .map_err(|_| timed_out())
            }
        };
        if let Err(e) = added {
            // A learner that never caught up is taken out again, so no half-added node
            // lingers in the membership (a later controller would otherwise record it).
            if !self.voters().contains(&id) {
                let remove = openraft::ChangeMembers::RemoveNodes([id].into());
                if let Err(r) = self.raft.change_membership(remove, false).await {
                    tracing::warn!(node = id, error = %r, "taking back a learner that did not catch up");
                }
            }
            return Err(e);
        }
        let mut voters = self.voters();
        if voters.insert(id) {
            tokio::time::timeout(within, self.raft.change_membership(voters, false))
                .await
                .map_err(|_| timed_out())?
                .map_err(membership_error)?;
        }
        Ok(())
    }

    /// On the controller: takes node `id` out of the membership (a no-op when it is not
    /// in it). When `id` is this node, it steps down once the change is committed.
    pub async fn remove_member(&self, id: NodeId, within: Duration) -> Result<(), BrokerError> {
        if !self.members().contains(&id) {
            return Ok(());
        }
        let mut voters = self.voters();
        voters.remove(&id);
        if voters.is_empty() {
            return Err(BrokerError::new(
                ErrorCode::InvalidRequest,
                format!("node {id} is the cluster's last voter"),
            ));
        }
        tokio::time::timeout(within, self.raft.change_membership(voters, false))
            .await
            .map_err(|_| {
                BrokerError::new(
                    ErrorCode::RequestTimedOut,
                    format!(
                        "removing node {id} from the consensus membership took over {within:?}"
                    ),
                )
            })?
            .map_err(membership_error)?;
        Ok(())
    }

    /// Serves a ConsensusRpc from another node.
    pub async fn handle_rpc(
        &self,
        request: ConsensusRpcRequest,
    ) -> Result<ConsensusRpcResponse, BrokerError> {
        fn bad(e: serde_json::Error) -> BrokerError {
            BrokerError::new(ErrorCode::InvalidRequest, format!("consensus message: {e}"))
        }
        let payload = match request.kind {
            network::KIND_VOTE => {
                let rpc = serde_json::from_slice(&request.payload).map_err(bad)?;
                serde_json::to_vec(&self.raft.vote(rpc).await)
            }
            network::KIND_APPEND => {
                let rpc = serde_json::from_slice(&request.payload).map_err(bad)?;
                serde_json::to_vec(&self.raft.append_entries(rpc).await)
            }
            network::KIND_SNAPSHOT => {
                let rpc = serde_json::from_slice(&request.payload).map_err(bad)?;
                serde_json::to_vec(&self.raft.install_snapshot(rpc).await)
            }
            kind => {
                return Err(BrokerError::new(
                    ErrorCode::InvalidRequest,
                    format!("unknown consensus message kind {kind}"),
                ))
            }
        }
        .expect("openraft messages serialize");
        Ok(ConsensusRpcResponse {
            payload: Bytes::from(payload),
        })
    }

    /// Serves a ClusterWrite from another node (this node should be the controller).
    pub async fn handle_write(
        &self,
        request: ClusterWriteRequest,
    ) -> Result<ClusterWriteResponse, BrokerError> {
        let command: Command = serde_json::from_slice(&request.command).map_err(|e| {
            BrokerError::new(ErrorCode::InvalidRequest, format!("cluster command: {e}"))
        })?;
        match self.raft.client_write(command).await {
            Ok(r) => {
                let answer = WriteAnswer {
                    log_index: r.log_id.index,
                    result: r.data,
                };
                Ok(ClusterWriteResponse {
                    result: Bytes::from(serde_json::to_vec(&answer).expect("results serialize")),
                })
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(no_controller(match f.leader_id {
                    Some(l) => {
                        format!("node {} is not the controller; {l} is", self.config.node_id)
                    }
                    None => format!("node {} is not the controller", self.config.node_id),
                }))
            }
            Err(RaftError::APIError(e)) => {
                Err(BrokerError::new(ErrorCode::InvalidRequest, e.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(no_controller(format!("consensus stopped: {e}"))),
        }
    }

    /// Stops the engine.
    pub async fn shutdown(&self) {
        self.watcher.abort();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("consensus shutdown: {e}");
        }
    }
}

impl Drop for Consensus {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// openraft's `election_timeout_min` and `_max` for the node of rank `rank` (0-based,
/// in id order) among `nodes`, for a heartbeat of `heartbeat_ms` and an election after
/// about `election_ms` without one. The window 0.4 E .. 0.6 E is cut in one slot per
/// node and each node draws from the first half of its own slot, so no two nodes draw
/// the same timeout and a follower campaigns at `max + timeout`, between 0.8 E and
/// 1.2 E, at least a slot after the one ranked before it.
fn election_bounds(heartbeat_ms: u64, election_ms: u64, rank: u64, nodes: u64) -> (u64, u64) {
    let slot = (election_ms / 5 / nodes.max(1)).max(2);
    let min = (election_ms * 2 / 5 + rank.min(nodes) * slot).max(heartbeat_ms + 1);
    let max = min + slot / 2;
    (min, max)
}

/// A refused membership change as the broker's error.
fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> BrokerError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            no_controller(match f.leader_id {
                Some(l) => format!("membership changes are made by the controller, node {l}"),
                None => "no controller is known right now; retry shortly".to_string(),
            })
        }
        RaftError::APIError(e) => BrokerError::new(ErrorCode::InvalidRequest, e.to_string()),
        RaftError::Fatal(e) => no_controller(format!("consensus stopped: {e}")),
    }
}

/// How a forwarded write failed.
enum Forward {
    /// Nothing was committed; try again (another election may be running).
    Retry(String),
    Fail(BrokerError),
}

/// Follows the engine's state: notes when this node becomes leader (for
/// [`Consensus::alive_nodes`]) and, as a new leader, records the node set in the
/// metadata if it differs; learns the address of every node the metadata names.
async fn watch_leadership(
    raft: Raft,
    config: ConsensusConfig,
    mut meta: watch::Receiver<Arc<ClusterMeta>>,
    leader_since: Arc<Mutex<Option<Instant>>>,
    peers: Arc<PeerSet>,
) {
    let mut metrics = raft.metrics();
    let mut led_term = None;
    loop {
        peers.learn(
            meta.borrow_and_update()
                .nodes
                .iter()
                .map(|(&id, n)| (id, n.addr.as_str())),
        );
        let (state, term, last_log) = {
            let m = metrics.borrow_and_update();
            (m.state, m.current_term, m.last_log_index)
        };
        if state == ServerState::Leader {
            if led_term != Some(term) {
                led_term = Some(term);
                *leader_since.lock().expect("leader lock") = Some(Instant::now());
                tokio::spawn(record_nodes(
                    raft.clone(),
                    config.clone(),
                    meta.clone(),
                    last_log,
                ));
            }
        } else {
            led_term = None;
            *leader_since.lock().expect("leader lock") = None;
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() {
                return;
            },
            changed = meta.changed() => if changed.is_err() {
                return;
            },
        }
    }
}

/// As a new leader: once everything in the log is applied here, proposes `SetNodes`
/// when the metadata's nodes differ from what it should hold: on a new cluster, the
/// configured peers; later, the configured addresses of nodes it already names, and
/// every voter of the consensus membership it does not name yet (a node added while
/// the previous controller died before recording it), with the address the
/// membership or `--peers` gives. Nodes are never dropped here: only RemoveNode does.
async fn record_nodes(
    raft: Raft,
    config: ConsensusConfig,
    meta: watch::Receiver<Arc<ClusterMeta>>,
    last_log: Option<u64>,
) {
    let applied = raft
        .wait(Some(APPLY_WAIT))
        .applied_index_at_least(last_log, "leader caught up")
        .await;
    if applied.is_err() {
        return;
    }
    let current = meta.borrow().nodes.clone();
    let mut nodes = current.clone();
    // Voters only: a learner is a node still being added (AddNode records it).
    let members: BTreeMap<NodeId, String> = {
        let m = raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .filter(|(id, _)| voters.contains(id))
            .map(|(&id, n)| (id, n.addr.clone()))
            .collect()
    };
    for (&id, addr) in &config.peers {
        match nodes.get_mut(&id) {
            Some(n) => n.addr = addr.clone(),
            None if current.is_empty() => {
                nodes.insert(id, NodeEntry::new(addr.clone()));
            }
            None => {}
        }
    }
    for (id, addr) in members {
        let addr = config.peers.get(&id).cloned().unwrap_or(addr);
        if !addr.is_empty() {
            nodes.entry(id).or_insert_with(|| NodeEntry::new(addr));
        }
    }
    if current == nodes {
        return;
    }
    if let Err(e) = raft.client_write(Command::SetNodes { nodes }).await {
        tracing::warn!("recording the cluster's nodes: {e}");
    }
}

#[cfg(test)]
mod timing_tests {
    use super::election_bounds;

    #[test]
    fn election_windows_are_disjoint_and_valid() {
        for (hb, e) in [(100, 500), (10, 30), (50, 300), (1000, 2500)] {
            for n in 1..=7u64 {
                let windows: Vec<(u64, u64)> =
                    (0..n).map(|r| election_bounds(hb, e, r, n)).collect();
                for (i, &(min, max)) in windows.iter().enumerate() {
                    assert!(min > hb && max > min, "{hb} {e} {n}: {min}..{max}");
                    if let Some(&(next_min, _)) = windows.get(i + 1) {
                        assert!(next_min >= max, "{hb} {e} {n}: {windows:?}");
                    }
                }
            }
        }
    }
}

/// openraft's own conformance suite for the log store and state machine.
#[cfg(test)]
mod suite {
    use std::sync::Arc;

    use openraft::testing::{StoreBuilder, Suite};
    use tokio::sync::watch;

    use super::log_store::LogStore;
    use super::state_machine::StateMachine;
    use super::types::{StorageError, TypeConfig};
    use crate::cluster::meta::ClusterMeta;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().expect("temp dir");
            let log = LogStore::open(dir.path()).expect("log store");
            let (tx, _) = watch::channel(Arc::new(ClusterMeta::default()));
            let sm = StateMachine::open(dir.path(), Arc::new(tx)).expect("state machine");
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).expect("openraft storage suite");
    }
}

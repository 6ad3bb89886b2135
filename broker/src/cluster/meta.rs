//! The cluster's metadata — what the consensus engine replicates — and the commands
//! that change it. [`ClusterMeta::apply`] is the state machine: deterministic, so every
//! node that applies the same committed commands in the same order holds the same
//! metadata. Nothing here does I/O.
//!
//! Changes of a shard's primary and in-sync set are compare-and-set on the shard's
//! `version`, so a controller decision and a primary's in-sync change made from the
//! same old state cannot both apply: the second is refused and its author re-reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weir_protocol::messages::{Durability, TopicConfig};

use super::placement;
use crate::queue::state_log::{Event, QueueEvents, ShardRecovery};

/// A node's id, as given by `--node-id` (1 and up; 0 means "no node" on the wire).
pub type NodeId = u64;

/// Everything the consensus engine holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMeta {
    /// Every node and its protocol address.
    pub nodes: BTreeMap<NodeId, NodeEntry>,
    pub topics: BTreeMap<String, TopicEntry>,
    /// The first producer id not yet handed to any node.
    pub next_producer_id: u64,
    /// Committed offsets: group → topic → shard → next offset to consume.
    pub offsets: BTreeMap<String, BTreeMap<String, BTreeMap<u32, u64>>>,
    /// Queue state (acks, failures, dead-letterings folded per queue shard): group →
    /// topic → shard. Applied like everything else but not published on the metadata
    /// watch (see [`ClusterMeta::published`]): it changes at the rate of acks, and only
    /// the controller's queue tasks read it, when they start.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub queues: BTreeMap<String, BTreeMap<String, BTreeMap<u32, ShardRecovery>>>,
    /// Moves the controller still has to start, in order: the copies a node added to
    /// the cluster takes over (`nodes.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub planned: Vec<PlannedMove>,
}

/// One node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub addr: String,
    /// Being removed (`weir cluster remove-node`): it gets no new copies, the
    /// controller moves its copies to the other nodes, then takes it out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

impl NodeEntry {
    /// A node in service at `addr`.
    pub fn new(addr: impl Into<String>) -> NodeEntry {
        NodeEntry {
            addr: addr.into(),
            draining: false,
        }
    }
}

/// Why a copy moves (kept with the move and in the shard's history).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MoveCause {
    /// `weir shard move`.
    #[default]
    Operator,
    /// A node was added and the consistent hash places this copy on it.
    NodeAdded,
    /// Its node is being removed.
    NodeDrained,
}

impl MoveCause {
    /// The wire's number for it (PROTOCOL.md, DescribeShardHistory).
    pub fn code(self) -> u8 {
        match self {
            MoveCause::Operator => 0,
            MoveCause::NodeAdded => 1,
            MoveCause::NodeDrained => 2,
        }
    }
}

/// A move decided (when a node was added) and not started yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedMove {
    pub topic: String,
    pub shard: u32,
    pub from: NodeId,
    pub to: NodeId,
    pub cause: MoveCause,
}

/// One topic: its settings and where its shards' copies are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicEntry {
    pub settings: TopicSettings,
    pub shards: Vec<ShardEntry>,
}

/// Where one shard's copies are, and which of them may be trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// Every node with a copy; the first was the primary at creation.
    pub replicas: Vec<NodeId>,
    /// Takes produce and serves reads; `None` while no in-sync copy is alive.
    pub primary: Option<NodeId>,
    /// Bumped at every change of primary (fencing).
    pub epoch: u32,
    /// Copies holding every acknowledged record, the primary included. A primary is
    /// only ever chosen from this set.
    pub in_sync: Vec<NodeId>,
    /// Bumped at every change of this entry; the compare-and-set token.
    pub version: u64,
    /// The replication record's history: the newest [`HISTORY_MAX`] changes of this
    /// shard's copies, oldest first.
    #[serde(default)]
    pub history: Vec<HistoryEvent>,
    /// A move of one copy in progress (`weir shard move`), driven by the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving: Option<ShardMove>,
}

/// A copy on its way from one node to another: `to` is already a replica (a mirror
/// catching up); once it is in sync, the primary moves off `from` if it was there,
/// and `from` stops being a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMove {
    pub from: NodeId,
    pub to: NodeId,
    pub started_ms: i64,
    #[serde(default)]
    pub cause: MoveCause,
}

/// Changes kept per shard in [`ShardEntry::history`].
pub const HISTORY_MAX: usize = 64;

/// What changed in a shard's copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryKind {
    /// The shard was created with its copies placed.
    Created,
    /// A new primary (or none) and epoch.
    PrimaryChanged,
    /// The in-sync set changed under the same primary.
    InSyncChanged,
    /// A move started: the target node became a replica (not yet in sync).
    MoveStarted,
    /// A move finished: the source node is no longer a replica.
    MoveFinished,
    /// A move was given up: the target is no longer a replica.
    MoveAborted,
}

impl HistoryKind {
    /// The wire's number for it (PROTOCOL.md, DescribeShardHistory).
    pub fn code(self) -> u8 {
        match self {
            HistoryKind::Created => 0,
            HistoryKind::PrimaryChanged => 1,
            HistoryKind::InSyncChanged => 2,
            HistoryKind::MoveStarted => 3,
            HistoryKind::MoveFinished => 4,
            HistoryKind::MoveAborted => 5,
        }
    }
}

/// One change of a shard's copies, as the metadata holds it after the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEvent {
    /// When its author proposed it (ms since the Unix epoch, the author's clock).
    pub at_ms: i64,
    pub kind: HistoryKind,
    pub epoch: u32,
    pub primary: Option<NodeId>,
    pub in_sync: Vec<NodeId>,
    /// Every copy after the change (older records, from before moves existed, have
    /// none).
    #[serde(default)]
    pub replicas: Vec<NodeId>,
    /// For a move's events: why the copy moves.
    #[serde(default)]
    pub cause: MoveCause,
}

impl ShardEntry {
    /// Ends the move in progress: `MoveFinished` drops the source (the target is in
    /// sync and the primary is off the source), `MoveAborted` drops the target (which
    /// must not be the primary).
    fn end_move(
        &mut self,
        at_ms: i64,
        kind: HistoryKind,
        topic: &str,
        shard: u32,
    ) -> CommandResult {
        use weir_protocol::ErrorCode as E;
        let Some(m) = self.moving else {
            return refused(E::InvalidRequest, format!("{topic}/{shard} is not moving"));
        };
        let (dropped, why_not) = if kind == HistoryKind::MoveFinished {
            let ready = self.in_sync.contains(&m.to) && self.primary != Some(m.from);
            (
                m.from,
                (!ready).then(|| {
                    format!(
                "{topic}/{shard}: node {} is not in sync yet or node {} is still the primary",
                m.to, m.from
            )
                }),
            )
        } else {
            (
                m.to,
                (self.primary == Some(m.to))
                    .then(|| format!("{topic}/{shard}: node {} is already the primary", m.to)),
            )
        };
        if let Some(message) = why_not {
            return refused(E::InvalidRequest, message);
        }
        self.replicas.retain(|n| *n != dropped);
        self.in_sync.retain(|n| *n != dropped);
        self.version += 1;
        // Recorded while the move is still set, so the event keeps its cause.
        self.record(at_ms, kind);
        self.moving = None;
        CommandResult::Done
    }

    fn record(&mut self, at_ms: i64, kind: HistoryKind) {
        if self.history.len() >= HISTORY_MAX {
            self.history.remove(0);
        }
        self.history.push(HistoryEvent {
            at_ms,
            kind,
            epoch: self.epoch,
            primary: self.primary,
            in_sync: self.in_sync.clone(),
            replicas: self.replicas.clone(),
            cause: self.moving.map(|m| m.cause).unwrap_or_default(),
        });
    }
}

/// A topic's settings as stored in the metadata (the wire's `TopicConfig`, with the
/// broker's defaults already filled in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSettings {
    pub durability: u8,
    pub flush_interval_ms: u32,
    pub retention_ms: u64,
    pub retention_bytes: u64,
    pub segment_bytes: u64,
    pub max_message_bytes: u32,
    pub default_priority: u8,
    pub default_complexity: u8,
    pub shard_key_rule: String,
    pub replicas: u8,
    pub min_in_sync: u8,
}

impl From<&TopicConfig> for TopicSettings {
    fn from(c: &TopicConfig) -> Self {
        TopicSettings {
            durability: c.durability as u8,
            flush_interval_ms: c.flush_interval_ms,
            retention_ms: c.retention_ms,
            retention_bytes: c.retention_bytes,
            segment_bytes: c.segment_bytes,
            max_message_bytes: c.max_message_bytes,
            default_priority: c.default_priority,
            default_complexity: c.default_complexity,
            shard_key_rule: c.shard_key_rule.clone(),
            replicas: c.replicas,
            min_in_sync: c.min_in_sync,
        }
    }
}

impl From<&TopicSettings> for TopicConfig {
    fn from(s: &TopicSettings) -> Self {
        TopicConfig {
            durability: Durability::from_u8(s.durability).unwrap_or_default(),
            flush_interval_ms: s.flush_interval_ms,
            retention_ms: s.retention_ms,
            retention_bytes: s.retention_bytes,
            segment_bytes: s.segment_bytes,
            max_message_bytes: s.max_message_bytes,
            default_priority: s.default_priority,
            default_complexity: s.default_complexity,
            shard_key_rule: s.shard_key_rule.clone(),
            replicas: s.replicas,
            min_in_sync: s.min_in_sync,
        }
    }
}

/// A change of the metadata. Serialized as JSON in the consensus log and in
/// `ClusterWrite` requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Records the node set (applied once, by the first controller, and whenever a
    /// node's address changes).
    SetNodes {
        nodes: BTreeMap<NodeId, NodeEntry>,
    },
    /// Creates a topic; copies are placed by the consistent hash over the nodes.
    CreateTopic {
        name: String,
        shards: u32,
        settings: TopicSettings,
        /// When it was proposed (ms since the Unix epoch), for the shards' history.
        #[serde(default)]
        at_ms: i64,
    },
    DeleteTopic {
        name: String,
    },
    /// Makes `primary` the shard's primary (or none) with the next epoch, and sets its
    /// in-sync set; applies only while the shard's version is `expected_version`.
    SetPrimary {
        topic: String,
        shard: u32,
        expected_version: u64,
        primary: Option<NodeId>,
        in_sync: Vec<NodeId>,
        #[serde(default)]
        at_ms: i64,
    },
    /// Sets a shard's in-sync set under the same primary and epoch; applies only while
    /// the shard's version is `expected_version`.
    SetInSync {
        topic: String,
        shard: u32,
        expected_version: u64,
        in_sync: Vec<NodeId>,
        #[serde(default)]
        at_ms: i64,
    },
    /// Hands out `count` producer ids (a block for one node).
    AllocateProducerIds {
        count: u64,
    },
    /// Stores committed offsets of a group.
    CommitOffsets {
        group: String,
        offsets: Vec<(String, u32, u64)>,
    },
    /// Several commands in one consensus entry (a controller's decision round), applied
    /// in order with nothing between them; each keeps its own outcome (one that lost a
    /// compare-and-set race is refused alone). At most [`BATCH_MAX`] commands, none of
    /// them a batch.
    Batch {
        commands: Vec<Command>,
    },
    /// Starts moving the copy of `from` to `to` (who becomes a replica at once, out of
    /// sync); applies only while the shard's version is `expected_version` and no
    /// move is in progress.
    StartMove {
        topic: String,
        shard: u32,
        expected_version: u64,
        from: NodeId,
        to: NodeId,
        at_ms: i64,
        #[serde(default)]
        cause: MoveCause,
    },
    /// Ends the shard's move: `from` stops being a replica. Refused unless `to` is in
    /// sync and `from` is not the primary.
    FinishMove {
        topic: String,
        shard: u32,
        expected_version: u64,
        at_ms: i64,
    },
    /// Gives the shard's move up: `to` stops being a replica.
    AbortMove {
        topic: String,
        shard: u32,
        expected_version: u64,
        at_ms: i64,
    },
    /// Queue state events, in the order the queues' tasks made them (many queues' events
    /// share one entry: the controller's journal batches them).
    QueueEvents {
        queues: Vec<QueueEvents>,
    },
    /// Adds node `id` at `addr` (already a member of the consensus engine) and plans
    /// the moves that give it the copies the consistent hash now places on it
    /// (`nodes.rs`). Adding a node the metadata names takes it back into service.
    AddNode {
        id: NodeId,
        addr: String,
    },
    /// Starts removing node `id`: it gets no new copies and the controller moves its
    /// copies away. Refused when the other nodes are too few for some shard's copies.
    DrainNode {
        id: NodeId,
    },
    /// Takes node `id` out of the metadata; refused unless it is draining and holds
    /// no copy.
    RemoveNode {
        id: NodeId,
    },
    /// Drops the planned moves of a shard that no longer apply (its copies changed
    /// since they were planned).
    DropPlannedMoves {
        topic: String,
        shard: u32,
    },
}

/// Most commands in one [`Command::Batch`]; the controller splits a larger round.
pub const BATCH_MAX: usize = 4096;

/// What applying a command gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    Done,
    /// The topic as created.
    Topic(TopicEntry),
    /// The first of the ids handed out.
    ProducerIds {
        first: u64,
        count: u64,
    },
    /// Refused: an [`weir_protocol::ErrorCode`] number and why.
    Refused {
        code: u16,
        message: String,
    },
    /// A batch's outcomes, one per command, in order.
    Batch(Vec<CommandResult>),
}

pub(super) fn refused(code: weir_protocol::ErrorCode, message: impl Into<String>) -> CommandResult {
    CommandResult::Refused {
        code: code as u16,
        message: message.into(),
    }
}

/// Producer ids at or above this are handed out by the cluster; a single-node
/// broker's own block file starts far below it, so ids never collide when a node's
/// data directory held single-node data before.
pub const CLUSTER_PRODUCER_ID_BASE: u64 = 1 << 48;

impl ClusterMeta {
    /// Applies one committed command. Deterministic: it reads nothing but `self` and
    /// the command.
    pub fn apply(&mut self, command: &Command) -> CommandResult {
        use weir_protocol::ErrorCode as E;
        match command {
            Command::SetNodes { nodes } => {
                self.nodes = nodes.clone();
                CommandResult::Done
            }
            Command::CreateTopic {
                name,
                shards,
                settings,
                at_ms,
            } => {
                if self.topics.contains_key(name) {
                    return refused(E::TopicAlreadyExists, format!("topic {name:?} exists"));
                }
                let nodes = self.active_nodes();
                let replicas = usize::from(settings.replicas.max(1));
                if replicas > nodes.len() {
                    return refused(
                        E::InvalidConfig,
                        format!(
                            "replicas {replicas} is more than the cluster's {} nodes",
                            nodes.len()
                        ),
                    );
                }
                let shards = (0..*shards)
                    .map(|s| {
                        let copies = placement::place(name, s, &nodes, replicas);
                        let mut entry = ShardEntry {
                            moving: None,
                            primary: copies.first().copied(),
                            in_sync: copies.clone(),
                            replicas: copies,
                            epoch: 1,
                            version: 1,
                            history: Vec::new(),
                        };
                        entry.record(*at_ms, HistoryKind::Created);
                        entry
                    })
                    .collect();
                let entry = TopicEntry {
                    settings: settings.clone(),
                    shards,
                };
                self.topics.insert(name.clone(), entry.clone());
                CommandResult::Topic(entry)
            }
            Command::DeleteTopic { name } => {
                if self.topics.remove(name).is_none() {
                    return refused(E::UnknownTopic, format!("topic {name:?} does not exist"));
                }
                for groups in self.offsets.values_mut() {
                    groups.remove(name);
                }
                self.planned.retain(|p| p.topic != *name);
                // A topic created again under this name starts with fresh queues.
                for topics in self.queues.values_mut() {
                    topics.remove(name);
                }
                self.queues.retain(|_, topics| !topics.is_empty());
                CommandResult::Done
            }
            Command::SetPrimary {
                topic,
                shard,
                expected_version,
                primary,
                in_sync,
                at_ms,
            } => match self.shard_mut(topic, *shard, *expected_version) {
                Err(r) => r,
                Ok(entry) => {
                    if let Some(p) = primary {
                        if !entry.replicas.contains(p) {
                            return refused(E::InvalidRequest, format!("node {p} holds no copy"));
                        }
                    }
                    entry.primary = *primary;
                    entry.epoch += 1;
                    entry.in_sync = in_sync.clone();
                    entry.version += 1;
                    entry.record(*at_ms, HistoryKind::PrimaryChanged);
                    CommandResult::Done
                }
            },
            Command::SetInSync {
                topic,
                shard,
                expected_version,
                in_sync,
                at_ms,
            } => match self.shard_mut(topic, *shard, *expected_version) {
                Err(r) => r,
                Ok(entry) => {
                    entry.in_sync = in_sync.clone();
                    entry.version += 1;
                    entry.record(*at_ms, HistoryKind::InSyncChanged);
                    CommandResult::Done
                }
            },
            Command::AllocateProducerIds { count } => {
                let first = self.next_producer_id.max(CLUSTER_PRODUCER_ID_BASE);
                self.next_producer_id = first + count;
                CommandResult::ProducerIds {
                    first,
                    count: *count,
                }
            }
            Command::CommitOffsets { group, offsets } => {
                let g = self.offsets.entry(group.clone()).or_default();
                for (topic, shard, offset) in offsets {
                    if self.topics.contains_key(topic) {
                        g.entry(topic.clone()).or_default().insert(*shard, *offset);
                    }
                }
                CommandResult::Done
            }
            Command::Batch { commands } => {
                if commands.len() > BATCH_MAX
                    || commands.iter().any(|c| matches!(c, Command::Batch { .. }))
                {
                    return refused(
                        E::InvalidRequest,
                        format!("a batch holds at most {BATCH_MAX} commands, none a batch"),
                    );
                }
                CommandResult::Batch(commands.iter().map(|c| self.apply(c)).collect())
            }
            Command::StartMove {
                topic,
                shard,
                expected_version,
                from,
                to,
                at_ms,
                cause,
            } => {
                match self.nodes.get(to) {
                    None => {
                        return refused(
                            E::InvalidRequest,
                            format!("node {to} is not in the cluster"),
                        )
                    }
                    Some(n) if n.draining => {
                        return refused(
                            E::InvalidRequest,
                            format!("node {to} is being removed from the cluster"),
                        )
                    }
                    Some(_) => {}
                }
                self.planned
                    .retain(|p| !(p.topic == *topic && p.shard == *shard));
                match self.shard_mut(topic, *shard, *expected_version) {
                    Err(r) => r,
                    Ok(entry) => {
                        if let Some(m) = entry.moving {
                            return refused(
                                E::InvalidRequest,
                                format!(
                                    "{topic}/{shard} is already moving from node {} to node {}",
                                    m.from, m.to
                                ),
                            );
                        }
                        if !entry.replicas.contains(from) {
                            return refused(
                                E::InvalidRequest,
                                format!("node {from} holds no copy of {topic}/{shard}"),
                            );
                        }
                        if entry.replicas.contains(to) {
                            return refused(
                                E::InvalidRequest,
                                format!("node {to} already holds a copy of {topic}/{shard}"),
                            );
                        }
                        entry.replicas.push(*to);
                        entry.moving = Some(ShardMove {
                            from: *from,
                            to: *to,
                            started_ms: *at_ms,
                            cause: *cause,
                        });
                        entry.version += 1;
                        entry.record(*at_ms, HistoryKind::MoveStarted);
                        CommandResult::Done
                    }
                }
            }
            Command::FinishMove {
                topic,
                shard,
                expected_version,
                at_ms,
            } => match self.shard_mut(topic, *shard, *expected_version) {
                Err(r) => r,
                Ok(entry) => entry.end_move(*at_ms, HistoryKind::MoveFinished, topic, *shard),
            },
            Command::AbortMove {
                topic,
                shard,
                expected_version,
                at_ms,
            } => match self.shard_mut(topic, *shard, *expected_version) {
                Err(r) => r,
                Ok(entry) => entry.end_move(*at_ms, HistoryKind::MoveAborted, topic, *shard),
            },
            Command::QueueEvents { queues } => {
                for q in queues {
                    self.apply_queue_events(q);
                }
                CommandResult::Done
            }
            Command::AddNode { id, addr } => self.add_node(*id, addr),
            Command::DrainNode { id } => self.drain_node(*id),
            Command::RemoveNode { id } => self.remove_node(*id),
            Command::DropPlannedMoves { topic, shard } => {
                self.planned
                    .retain(|p| !(p.topic == *topic && p.shard == *shard));
                CommandResult::Done
            }
        }
    }

    /// Folds one queue's events in (the same fold as the single-node state log's
    /// replay). Events of a topic that no longer exists are dropped: its queues were
    /// forgotten with it.
    fn apply_queue_events(&mut self, q: &QueueEvents) {
        if !self.topics.contains_key(&q.topic) {
            return;
        }
        for (shard, ev) in &q.events {
            if *ev == Event::Forget {
                if let Some(topics) = self.queues.get_mut(&q.group) {
                    topics.remove(&q.topic);
                    if topics.is_empty() {
                        self.queues.remove(&q.group);
                    }
                }
                continue;
            }
            self.queues
                .entry(q.group.clone())
                .or_default()
                .entry(q.topic.clone())
                .or_default()
                .entry(*shard)
                .or_default()
                .apply(ev);
        }
    }

    /// The copy published on the metadata watch: everything but the queue state.
    pub fn published(&self) -> ClusterMeta {
        ClusterMeta {
            nodes: self.nodes.clone(),
            topics: self.topics.clone(),
            next_producer_id: self.next_producer_id,
            offsets: self.offsets.clone(),
            queues: BTreeMap::new(),
            planned: self.planned.clone(),
        }
    }

    /// The folded state of one queue (empty when it has none).
    pub fn queue_state(&self, group: &str, topic: &str) -> BTreeMap<u32, ShardRecovery> {
        self.queues
            .get(group)
            .and_then(|t| t.get(topic))
            .cloned()
            .unwrap_or_default()
    }

    fn shard_mut(
        &mut self,
        topic: &str,
        shard: u32,
        expected_version: u64,
    ) -> Result<&mut ShardEntry, CommandResult> {
        use weir_protocol::ErrorCode as E;
        let entry = self
            .topics
            .get_mut(topic)
            .ok_or_else(|| refused(E::UnknownTopic, format!("topic {topic:?} does not exist")))?
            .shards
            .get_mut(shard as usize)
            .ok_or_else(|| refused(E::UnknownShard, format!("{topic}/{shard} does not exist")))?;
        if entry.version != expected_version {
            return Err(refused(
                E::FencedEpoch,
                format!(
                    "{topic}/{shard} changed (version {} now, {expected_version} expected)",
                    entry.version
                ),
            ));
        }
        Ok(entry)
    }

    /// A shard's entry.
    pub fn shard(&self, topic: &str, shard: u32) -> Option<&ShardEntry> {
        self.topics.get(topic)?.shards.get(shard as usize)
    }

    /// A node's protocol address.
    pub fn addr(&self, node: NodeId) -> Option<&str> {
        self.nodes.get(&node).map(|n| n.addr.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> ClusterMeta {
        let mut m = ClusterMeta::default();
        let nodes = (1..=3)
            .map(|i| (i, NodeEntry::new(format!("127.0.0.1:{}", 7700 + i))))
            .collect();
        m.apply(&Command::SetNodes { nodes });
        m
    }

    fn settings(replicas: u8) -> TopicSettings {
        TopicSettings::from(&TopicConfig {
            replicas,
            min_in_sync: 2,
            ..TopicConfig::default()
        })
    }

    fn queue_events(topic: &str, events: Vec<(u32, Event)>) -> Command {
        Command::QueueEvents {
            queues: vec![QueueEvents {
                group: "g".into(),
                topic: topic.into(),
                events,
            }],
        }
    }

    #[test]
    fn queue_events_fold_like_the_state_log_and_stay_out_of_the_published_copy() {
        let mut m = three();
        m.apply(&Command::CreateTopic {
            name: "t".into(),
            shards: 2,
            settings: settings(3),
            at_ms: 0,
        });
        let failure = crate::queue::state_log::Failure {
            failures: 1,
            first_ms: 5,
            last_ms: 5,
            error: "boom".into(),
        };
        m.apply(&queue_events(
            "t",
            vec![
                (0, Event::Floor { offset: 0 }),
                (0, Event::Ack { offset: 0 }),
                (0, Event::Ack { offset: 2 }),
                (
                    1,
                    Event::Fail {
                        offset: 4,
                        failure: failure.clone(),
                        due_ms: 9,
                    },
                ),
                (
                    1,
                    Event::Dead {
                        offset: 3,
                        failures: 5,
                        dlq_shard: 1,
                        dlq_offset: 7,
                    },
                ),
            ],
        ));
        let q = m.queue_state("g", "t");
        assert_eq!(q[&0].floor, 1, "offset 0 acked: the floor moved past it");
        assert!(q[&0].done.contains(&2));
        assert_eq!(q[&1].failed[&4], (failure, 9));
        assert!(q[&1].done.contains(&3));
        assert_eq!(q[&1].dlq_high[&1], 7);
        // Acks come at the rate of consumers: the watchers never see them.
        assert!(m.published().queues.is_empty());
        assert_eq!(m.published().topics, m.topics);
        // Events of a topic that is gone are dropped; deleting a topic forgets its
        // queues, so one created again under the name starts fresh.
        m.apply(&queue_events("gone", vec![(0, Event::Ack { offset: 1 })]));
        assert!(m.queue_state("g", "gone").is_empty());
        m.apply(&Command::DeleteTopic { name: "t".into() });
        assert!(m.queues.is_empty());
        // FORGET drops one queue.
        m.apply(&Command::CreateTopic {
            name: "t".into(),
            shards: 1,
            settings: settings(3),
            at_ms: 0,
        });
        m.apply(&queue_events("t", vec![(0, Event::Ack { offset: 0 })]));
        assert_eq!(m.queue_state("g", "t")[&0].floor, 1);
        m.apply(&queue_events("t", vec![(0, Event::Forget)]));
        assert!(m.queue_state("g", "t").is_empty());
        // The queue state is part of snapshots.
        m.apply(&queue_events("t", vec![(0, Event::Ack { offset: 0 })]));
        let json = serde_json::to_vec(&m).unwrap();
        let back: ClusterMeta = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn topics_are_placed_on_distinct_nodes_with_the_primary_in_sync() {
        let mut m = three();
        let r = m.apply(&Command::CreateTopic {
            name: "t".into(),
            shards: 8,
            settings: settings(2),
            at_ms: 0,
        });
        let CommandResult::Topic(t) = r else {
            panic!("{r:?}")
        };
        for s in &t.shards {
            assert_eq!(s.replicas.len(), 2);
            assert_ne!(s.replicas[0], s.replicas[1]);
            assert_eq!(s.primary, Some(s.replicas[0]));
            assert_eq!(s.in_sync, s.replicas);
        }
        let r = m.apply(&Command::CreateTopic {
            name: "u".into(),
            shards: 1,
            settings: settings(4),
            at_ms: 0,
        });
        assert!(
            matches!(r, CommandResult::Refused { code, .. } if code == weir_protocol::ErrorCode::InvalidConfig as u16)
        );
    }

    #[test]
    fn primary_changes_are_compare_and_set_and_bump_the_epoch() {
        let mut m = three();
        m.apply(&Command::CreateTopic {
            name: "t".into(),
            shards: 1,
            settings: settings(3),
            at_ms: 0,
        });
        let s = m.shard("t", 0).unwrap().clone();
        let next = s.replicas[1];
        let cmd = Command::SetPrimary {
            topic: "t".into(),
            shard: 0,
            expected_version: s.version,
            primary: Some(next),
            in_sync: s.replicas[1..].to_vec(),
            at_ms: 1_000,
        };
        assert_eq!(m.apply(&cmd), CommandResult::Done);
        let after = m.shard("t", 0).unwrap();
        assert_eq!(after.epoch, s.epoch + 1);
        assert_eq!(after.primary, Some(next));
        // The same decision again, made from the old state, is refused.
        assert!(matches!(m.apply(&cmd), CommandResult::Refused { .. }));
        // The replication record: creation, then the switchover (the refused one is
        // not recorded), each with the state after it.
        let h = &m.shard("t", 0).unwrap().history;
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[0].kind, HistoryKind::Created);
        assert_eq!((h[0].epoch, h[0].primary), (1, Some(s.replicas[0])));
        assert_eq!(h[1].kind, HistoryKind::PrimaryChanged);
        assert_eq!(
            (h[1].at_ms, h[1].epoch, h[1].primary),
            (1_000, 2, Some(next))
        );
        assert_eq!(h[1].in_sync, s.replicas[1..].to_vec());
    }

    #[test]
    fn history_keeps_the_newest_changes() {
        let mut m = three();
        m.apply(&Command::CreateTopic {
            name: "t".into(),
            shards: 1,
            settings: settings(3),
            at_ms: 0,
        });
        for i in 0..(HISTORY_MAX as i64 + 10) {
            let s = m.shard("t", 0).unwrap().clone();
            let in_sync = if i % 2 == 0 {
                s.replicas.clone()
            } else {
                s.replicas[..2].to_vec()
            };
            let r = m.apply(&Command::SetInSync {
                topic: "t".into(),
                shard: 0,
                expected_version: s.version,
                in_sync,
                at_ms: i,
            });
            assert_eq!(r, CommandResult::Done);
        }
        let h = &m.shard("t", 0).unwrap().history;
        assert_eq!(h.len(), HISTORY_MAX);
        assert_eq!(h.last().unwrap().at_ms, HISTORY_MAX as i64 + 9);
        assert!(
            h.iter().all(|e| e.kind == HistoryKind::InSyncChanged),
            "creation aged out"
        );
    }

    #[test]
    fn producer_id_blocks_never_overlap() {
        let mut m = three();
        let a = m.apply(&Command::AllocateProducerIds { count: 100 });
        let b = m.apply(&Command::AllocateProducerIds { count: 100 });
        let (
            CommandResult::ProducerIds { first: fa, .. },
            CommandResult::ProducerIds { first: fb, .. },
        ) = (a, b)
        else {
            panic!()
        };
        assert!(fa >= CLUSTER_PRODUCER_ID_BASE);
        assert_eq!(fb, fa + 100);
    }

    #[test]
    fn a_batch_applies_each_command_and_a_stale_one_is_refused_alone() {
        let mut m = three();
        m.apply(&Command::CreateTopic {
            name: "t".into(),
            shards: 2,
            settings: settings(3),
            at_ms: 0,
        });
        let s0 = m.shard("t", 0).unwrap().clone();
        let s1 = m.shard("t", 1).unwrap().clone();
        let next = |s: &ShardEntry| *s.replicas.iter().find(|&&n| Some(n) != s.primary).unwrap();
        let batch = Command::Batch {
            commands: vec![
                Command::SetPrimary {
                    topic: "t".into(),
                    shard: 0,
                    expected_version: s0.version,
                    primary: Some(next(&s0)),
                    in_sync: vec![next(&s0)],
                    at_ms: 5,
                },
                // Stale: shard 1 is at version s1.version, not one behind it.
                Command::SetPrimary {
                    topic: "t".into(),
                    shard: 1,
                    expected_version: s1.version + 1,
                    primary: Some(next(&s1)),
                    in_sync: vec![next(&s1)],
                    at_ms: 5,
                },
            ],
        };
        let CommandResult::Batch(results) = m.apply(&batch) else {
            panic!("a batch answers a batch")
        };
        assert_eq!(results[0], CommandResult::Done);
        assert!(
            matches!(&results[1], CommandResult::Refused { code, .. } if *code == weir_protocol::ErrorCode::FencedEpoch as u16),
            "{:?}",
            results[1]
        );
        let a0 = m.shard("t", 0).unwrap();
        assert_eq!((a0.primary, a0.epoch), (Some(next(&s0)), s0.epoch + 1));
        assert_eq!(a0.history.last().unwrap().kind, HistoryKind::PrimaryChanged);
        assert_eq!(
            m.shard("t", 1).unwrap(),
            &s1,
            "the refused one changed nothing"
        );
    }

    #[test]
    fn a_nested_or_oversized_batch_is_refused_whole() {
        let mut m = three();
        let before = m.clone();
        let nested = Command::Batch {
            commands: vec![
                Command::AllocateProducerIds { count: 1 },
                Command::Batch {
                    commands: Vec::new(),
                },
            ],
        };
        assert!(matches!(m.apply(&nested), CommandResult::Refused { .. }));
        let oversized = Command::Batch {
            commands: vec![Command::AllocateProducerIds { count: 1 }; BATCH_MAX + 1],
        };
        assert!(matches!(m.apply(&oversized), CommandResult::Refused { .. }));
        assert_eq!(m, before, "nothing of a refused batch applies");
    }
}

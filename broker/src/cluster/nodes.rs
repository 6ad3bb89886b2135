//! Adding and removing nodes of a running cluster (`weir cluster add-node` /
//! `remove-node`, apis AddNode 46 and RemoveNode 47).
//!
//! Adding: the controller makes the new node (started with `--join`) a member of the
//! consensus engine — a learner sent the whole log, then a voter — and commits
//! `AddNode`, which plans the moves the consistent hash asks for now that the node is
//! on the ring: with virtual nodes only the copies whose arcs the new node's points cut
//! move to it, about `replicas / nodes` of them. Removing: `DrainNode` keeps new
//! copies off the node and the controller moves each of its copies to the node the
//! hash picks among the others; once it holds none, the controller takes it out of the
//! consensus membership and commits `RemoveNode`.
//!
//! Both go through the moves of `moves.rs` (mirror, catch up, switch the primary,
//! drop the old copy), at most [`MOVES_PARALLEL`] at a time across the cluster, each
//! in its shard's history with its cause. The plan lives in the metadata, so a new
//! controller carries on with it.

use std::collections::BTreeSet;

use weir_protocol::ErrorCode as E;

use super::meta::{
    refused, ClusterMeta, Command, CommandResult, MoveCause, NodeEntry, NodeId, PlannedMove,
};
use super::placement;

/// Moves in progress at once that the controller starts itself (a move an operator
/// started counts too); catch-up bandwidth is shared further by the mirrors'
/// backfill permits.
pub const MOVES_PARALLEL: usize = 4;

impl ClusterMeta {
    /// The nodes that take new copies (every node not being removed), in id order.
    pub fn active_nodes(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| !n.draining)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Whether some shard has a copy on `id`, or a move to or from it is planned.
    pub fn holds_copies(&self, id: NodeId) -> bool {
        self.topics
            .values()
            .flat_map(|t| &t.shards)
            .any(|s| s.replicas.contains(&id))
            || self.planned.iter().any(|p| p.from == id || p.to == id)
    }

    /// Moves planned or in progress that involve node `id`.
    pub fn moves_pending(&self, id: NodeId) -> usize {
        let running = self
            .topics
            .values()
            .flat_map(|t| &t.shards)
            .filter_map(|s| s.moving)
            .filter(|m| m.from == id || m.to == id)
            .count();
        let planned = self
            .planned
            .iter()
            .filter(|p| p.from == id || p.to == id)
            .count();
        // A node being removed has one pending move per copy it still holds.
        let draining = if self.nodes.get(&id).is_some_and(|n| n.draining) {
            self.topics
                .values()
                .flat_map(|t| &t.shards)
                .filter(|s| s.replicas.contains(&id) && s.moving.is_none())
                .count()
        } else {
            0
        };
        running + planned + draining
    }

    pub(super) fn add_node(&mut self, id: NodeId, addr: &str) -> CommandResult {
        if id == 0 || addr.is_empty() {
            return refused(E::InvalidRequest, "a node needs an id ≥ 1 and an address");
        }
        self.nodes.insert(id, NodeEntry::new(addr));
        let active = self.active_nodes();
        for (topic, t) in &self.topics {
            for (i, s) in t.shards.iter().enumerate() {
                let shard = i as u32;
                // A shard already moving keeps its copies; it is placed again the next
                // time a node is added.
                if s.replicas.contains(&id)
                    || s.moving.is_some()
                    || self
                        .planned
                        .iter()
                        .any(|p| p.topic == *topic && p.shard == shard)
                {
                    continue;
                }
                let wanted = placement::place(topic, shard, &active, s.replicas.len());
                if !wanted.contains(&id) {
                    continue;
                }
                // The copy the new node replaces: one the hash no longer wants there,
                // a mirror's before the primary's (moving a mirror costs no switchover).
                let unwanted: Vec<NodeId> = s
                    .replicas
                    .iter()
                    .copied()
                    .filter(|n| !wanted.contains(n))
                    .collect();
                let from = unwanted
                    .iter()
                    .copied()
                    .find(|n| s.primary != Some(*n))
                    .or(unwanted.first().copied());
                if let Some(from) = from {
                    self.planned.push(PlannedMove {
                        topic: topic.clone(),
                        shard,
                        from,
                        to: id,
                        cause: MoveCause::NodeAdded,
                    });
                }
            }
        }
        CommandResult::Done
    }

    pub(super) fn drain_node(&mut self, id: NodeId) -> CommandResult {
        if !self.nodes.contains_key(&id) {
            return refused(
                E::InvalidRequest,
                format!("node {id} is not in the cluster"),
            );
        }
        let others = self.active_nodes().into_iter().filter(|&n| n != id).count();
        let most = self
            .topics
            .iter()
            .flat_map(|(name, t)| t.shards.iter().map(move |s| (name, s.replicas.len())))
            .max_by_key(|(_, r)| *r);
        if let Some((topic, replicas)) = most {
            if replicas > others {
                return refused(
                    E::InvalidConfig,
                    format!(
                        "topic {topic:?} keeps {replicas} copies of a shard and only {others} nodes would be left: add a node first"
                    ),
                );
            }
        }
        if others == 0 {
            return refused(
                E::InvalidConfig,
                format!("node {id} is the cluster's last node"),
            );
        }
        if let Some(n) = self.nodes.get_mut(&id) {
            n.draining = true;
        }
        self.planned.retain(|p| p.to != id);
        CommandResult::Done
    }

    pub(super) fn remove_node(&mut self, id: NodeId) -> CommandResult {
        match self.nodes.get(&id) {
            None => CommandResult::Done,
            Some(n) if !n.draining => refused(
                E::InvalidRequest,
                format!("node {id} is in service: drain it first (remove-node does)"),
            ),
            Some(_) if self.holds_copies(id) => {
                refused(E::InvalidRequest, format!("node {id} still holds copies"))
            }
            Some(_) => {
                self.nodes.remove(&id);
                CommandResult::Done
            }
        }
    }
}

/// The moves to start this round: planned ones first (in plan order), then one per
/// shard that still has a copy on a draining node; none while [`MOVES_PARALLEL`] are
/// running. Also drops planned moves that no longer apply.
pub fn decide(meta: &ClusterMeta, alive: &BTreeSet<NodeId>, at_ms: i64) -> Vec<Command> {
    let mut out = Vec::new();
    let running = meta
        .topics
        .values()
        .flat_map(|t| &t.shards)
        .filter(|s| s.moving.is_some())
        .count();
    let mut budget = MOVES_PARALLEL.saturating_sub(running);
    let mut started: BTreeSet<(&str, u32)> = BTreeSet::new();
    let mut dropped: BTreeSet<(&str, u32)> = BTreeSet::new();
    let in_service = |n: &NodeId| meta.nodes.get(n).is_some_and(|e| !e.draining);
    for p in &meta.planned {
        let key = (p.topic.as_str(), p.shard);
        let Some(s) = meta.shard(&p.topic, p.shard) else {
            if dropped.insert(key) {
                out.push(Command::DropPlannedMoves {
                    topic: p.topic.clone(),
                    shard: p.shard,
                });
            }
            continue;
        };
        let stale = !s.replicas.contains(&p.from) || s.replicas.contains(&p.to);
        if stale || !in_service(&p.to) {
            if dropped.insert(key) {
                out.push(Command::DropPlannedMoves {
                    topic: p.topic.clone(),
                    shard: p.shard,
                });
            }
            continue;
        }
        if budget == 0 || s.moving.is_some() || !alive.contains(&p.to) || started.contains(&key) {
            continue;
        }
        out.push(Command::StartMove {
            topic: p.topic.clone(),
            shard: p.shard,
            expected_version: s.version,
            from: p.from,
            to: p.to,
            at_ms,
            cause: p.cause,
        });
        started.insert(key);
        budget -= 1;
    }
    if budget == 0 || !meta.nodes.values().any(|n| n.draining) {
        return out;
    }
    let targets: Vec<NodeId> = meta
        .active_nodes()
        .into_iter()
        .filter(|n| alive.contains(n))
        .collect();
    for (topic, t) in &meta.topics {
        for (i, s) in t.shards.iter().enumerate() {
            if budget == 0 {
                return out;
            }
            let shard = i as u32;
            if s.moving.is_some() || started.contains(&(topic.as_str(), shard)) {
                continue;
            }
            let Some(&from) = s.replicas.iter().find(|n| !in_service(n)) else {
                continue;
            };
            let to = placement::place(topic, shard, &targets, targets.len())
                .into_iter()
                .find(|n| !s.replicas.contains(n));
            if let Some(to) = to {
                out.push(Command::StartMove {
                    topic: topic.clone(),
                    shard,
                    expected_version: s.version,
                    from,
                    to,
                    at_ms,
                    cause: MoveCause::NodeDrained,
                });
                budget -= 1;
            }
        }
    }
    out
}

/// The nodes being removed that hold nothing any more: the controller takes each out
/// of the consensus membership, then commits RemoveNode.
pub fn drained(meta: &ClusterMeta) -> Vec<NodeId> {
    meta.nodes
        .iter()
        .filter(|(&id, n)| n.draining && !meta.holds_copies(id))
        .map(|(&id, _)| id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::meta::{HistoryKind, TopicSettings};
    use weir_protocol::messages::TopicConfig;

    fn cluster(nodes: u64, shards: u32, replicas: u8) -> ClusterMeta {
        let mut m = ClusterMeta::default();
        m.apply(&Command::SetNodes {
            nodes: (1..=nodes)
                .map(|i| (i, NodeEntry::new(format!("n{i}"))))
                .collect(),
        });
        let r = m.apply(&Command::CreateTopic {
            name: "t".into(),
            shards,
            settings: TopicSettings::from(&TopicConfig {
                replicas,
                min_in_sync: 1,
                ..TopicConfig::default()
            }),
            at_ms: 0,
        });
        assert!(matches!(r, CommandResult::Topic(_)), "{r:?}");
        m
    }

    /// Plays the controller and the mirrors: starts what `decide` starts, lets every
    /// target catch up at once and finishes the moves (`moves::decide`), until nothing
    /// is left to do. Returns how many moves ran.
    fn settle(m: &mut ClusterMeta, alive: &BTreeSet<NodeId>) -> usize {
        let mut moves = 0;
        for _ in 0..10_000 {
            let mut cmds = decide(m, alive, 1);
            moves += cmds
                .iter()
                .filter(|c| matches!(c, Command::StartMove { .. }))
                .count();
            // Every target catches up at once.
            for (topic, t) in &m.topics {
                for (i, s) in t.shards.iter().enumerate() {
                    if let Some(mv) = s.moving {
                        if !s.in_sync.contains(&mv.to) {
                            let mut in_sync = s.in_sync.clone();
                            in_sync.push(mv.to);
                            cmds.push(Command::SetInSync {
                                topic: topic.clone(),
                                shard: i as u32,
                                expected_version: s.version,
                                in_sync,
                                at_ms: 1,
                            });
                        }
                    }
                }
            }
            cmds.extend(crate::cluster::moves::decide(m, alive, 1));
            if cmds.is_empty() {
                return moves;
            }
            for c in &cmds {
                m.apply(c);
            }
        }
        panic!("never settled");
    }

    #[test]
    fn an_added_node_takes_over_its_share_of_copies_and_no_more() {
        let mut m = cluster(3, 60, 2);
        let before = m.clone();
        assert_eq!(
            m.apply(&Command::AddNode {
                id: 4,
                addr: "n4".into()
            }),
            CommandResult::Done
        );
        let planned = m.planned.len();
        // Ideal: 60 shards × 2 copies / 4 nodes = 30 copies move.
        assert!((15..=45).contains(&planned), "{planned} moves planned");
        assert!(m
            .planned
            .iter()
            .all(|p| p.to == 4 && p.cause == MoveCause::NodeAdded));
        // No more than MOVES_PARALLEL start in one round.
        let alive: BTreeSet<NodeId> = (1..=4).collect();
        let first = decide(&m, &alive, 1);
        assert_eq!(first.len(), MOVES_PARALLEL);
        let moved = settle(&mut m, &alive);
        assert_eq!(moved, planned);
        assert!(m.planned.is_empty());
        let active = m.active_nodes();
        for (i, s) in m.topics["t"].shards.iter().enumerate() {
            let mut want = placement::place("t", i as u32, &active, 2);
            let mut have = s.replicas.clone();
            want.sort();
            have.sort();
            assert_eq!(have, want, "shard {i} is where the hash puts it");
            let b = &before.topics["t"].shards[i];
            if s.replicas.contains(&4) {
                let kinds: Vec<_> = s.history.iter().map(|h| (h.kind, h.cause)).collect();
                assert!(kinds.contains(&(HistoryKind::MoveFinished, MoveCause::NodeAdded)));
            } else {
                assert_eq!(s.replicas, b.replicas, "shard {i} did not move");
            }
        }
    }

    #[test]
    fn a_drained_node_gives_every_copy_away_then_can_be_removed() {
        let mut m = cluster(4, 20, 2);
        assert!(
            matches!(
                m.apply(&Command::RemoveNode { id: 2 }),
                CommandResult::Refused { .. }
            ),
            "only a drained node is removed"
        );
        assert_eq!(m.apply(&Command::DrainNode { id: 2 }), CommandResult::Done);
        assert!(drained(&m).is_empty(), "it still holds copies");
        let alive: BTreeSet<NodeId> = (1..=4).collect();
        let moved = settle(&mut m, &alive);
        assert!(moved > 0);
        for s in &m.topics["t"].shards {
            assert!(!s.replicas.contains(&2));
            assert_eq!(s.replicas.len(), 2);
            assert_eq!(s.in_sync.len(), 2);
        }
        assert_eq!(m.moves_pending(2), 0);
        assert_eq!(drained(&m), vec![2]);
        assert_eq!(m.apply(&Command::RemoveNode { id: 2 }), CommandResult::Done);
        assert!(!m.nodes.contains_key(&2));
        assert_new_topic_avoids(&mut m, 2);
    }

    /// A topic created now has no copy on `node`.
    fn assert_new_topic_avoids(m: &mut ClusterMeta, node: NodeId) {
        let r = m.apply(&Command::CreateTopic {
            name: "u".into(),
            shards: 16,
            settings: m.topics["t"].settings.clone(),
            at_ms: 0,
        });
        assert!(matches!(r, CommandResult::Topic(_)), "{r:?}");
        assert!(m.topics["u"]
            .shards
            .iter()
            .all(|s| !s.replicas.contains(&node)));
    }

    #[test]
    fn draining_is_refused_when_too_few_nodes_would_be_left() {
        let mut m = cluster(3, 4, 3);
        let r = m.apply(&Command::DrainNode { id: 3 });
        assert!(matches!(r, CommandResult::Refused { .. }), "{r:?}");
        assert!(!m.nodes[&3].draining);
    }

    #[test]
    fn a_draining_node_gets_no_new_copies_and_a_dead_target_waits() {
        let mut m = cluster(4, 8, 2);
        m.apply(&Command::DrainNode { id: 1 });
        assert_new_topic_avoids(&mut m, 1);
        // With every other node dead, no move starts (no live target).
        let alive: BTreeSet<NodeId> = [1].into();
        assert!(decide(&m, &alive, 1).is_empty());
    }

    #[test]
    fn a_plan_made_stale_by_an_operator_move_is_dropped() {
        let mut m = cluster(3, 30, 1);
        m.apply(&Command::AddNode {
            id: 4,
            addr: "n4".into(),
        });
        let p = m.planned[0].clone();
        let s = m.shard(&p.topic, p.shard).unwrap().clone();
        // The operator moves that copy elsewhere first.
        let other = (1..=3).find(|n| !s.replicas.contains(n)).unwrap();
        let r = m.apply(&Command::StartMove {
            topic: p.topic.clone(),
            shard: p.shard,
            expected_version: s.version,
            from: p.from,
            to: other,
            at_ms: 1,
            cause: MoveCause::Operator,
        });
        assert_eq!(r, CommandResult::Done);
        assert!(
            !m.planned
                .iter()
                .any(|q| q.topic == p.topic && q.shard == p.shard),
            "starting a move of the shard drops its plan"
        );
    }
}

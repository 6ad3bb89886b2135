//! The steps of moving one copy of a shard to another node (`weir shard move`,
//! ShardMove api 45), decided by the controller from the applied metadata.
//!
//! `StartMove` (any node, through the consensus engine) makes the target a replica:
//! its agent starts a mirror task, the primary counts it among the copies, and it joins
//! the in-sync set once it holds everything (the primary proposes that, as for any
//! mirror that caught up). The controller then, one compare-and-set command per tick:
//! - moves the primary to the target when the source is the primary (a new epoch:
//!   the source is fenced like any old primary);
//! - finishes the move (`FinishMove`): the source stops being a replica, its agent
//!   stops its mirror task or primary role;
//! - gives the move up (`AbortMove`) when the target stops answering before it is in
//!   sync: the copies are as before the move.
//!
//! The move is state in the metadata (`ShardEntry::moving`), so a new controller goes
//! on with it, and every step is in the shard's history. A copy the target already
//! holds (a move given up and started again) is not sent again: its mirror fetches
//! from its own log end.

use std::collections::BTreeSet;

use super::meta::{ClusterMeta, Command, NodeId};

/// The next step of every move in progress.
pub fn decide(meta: &ClusterMeta, alive: &BTreeSet<NodeId>, at_ms: i64) -> Vec<Command> {
    let mut out = Vec::new();
    for (topic, t) in &meta.topics {
        for (i, s) in t.shards.iter().enumerate() {
            let Some(m) = s.moving else {
                continue;
            };
            // A dead primary is the failover's to replace first (`controller::decide`).
            if !s.primary.is_some_and(|p| alive.contains(&p)) {
                continue;
            }
            let (topic, shard, expected_version) = (topic.clone(), i as u32, s.version);
            if !s.in_sync.contains(&m.to) {
                if !alive.contains(&m.to) {
                    out.push(Command::AbortMove {
                        topic,
                        shard,
                        expected_version,
                        at_ms,
                    });
                }
            } else if s.primary == Some(m.from) {
                out.push(Command::SetPrimary {
                    topic,
                    shard,
                    expected_version,
                    primary: Some(m.to),
                    in_sync: s.in_sync.clone(),
                    at_ms,
                });
            } else {
                out.push(Command::FinishMove {
                    topic,
                    shard,
                    expected_version,
                    at_ms,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::meta::{CommandResult, HistoryKind, NodeEntry, TopicSettings};
    use weir_protocol::messages::TopicConfig;

    fn four_nodes_one_shard() -> ClusterMeta {
        let mut m = ClusterMeta::default();
        m.apply(&Command::SetNodes {
            nodes: (1..=4)
                .map(|i| (i, NodeEntry::new(format!("n{i}"))))
                .collect(),
        });
        let r = m.apply(&Command::CreateTopic {
            name: "t".into(),
            shards: 1,
            settings: TopicSettings::from(&TopicConfig {
                replicas: 2,
                min_in_sync: 1,
                ..TopicConfig::default()
            }),
            at_ms: 0,
        });
        assert!(matches!(r, CommandResult::Topic(_)), "{r:?}");
        m
    }

    fn apply_all(m: &mut ClusterMeta, alive: &BTreeSet<NodeId>) -> usize {
        let cmds = decide(m, alive, 1);
        for c in &cmds {
            assert_eq!(m.apply(c), CommandResult::Done, "{c:?}");
        }
        cmds.len()
    }

    #[test]
    fn a_move_off_the_primary_switches_the_primary_then_drops_the_source() {
        let mut m = four_nodes_one_shard();
        let s = m.topics["t"].shards[0].clone();
        let from = s.primary.unwrap();
        let to = (1..=4).find(|n| !s.replicas.contains(n)).unwrap();
        let alive: BTreeSet<NodeId> = (1..=4).collect();
        let start = Command::StartMove {
            topic: "t".into(),
            shard: 0,
            expected_version: s.version,
            from,
            to,
            at_ms: 1,
            cause: crate::cluster::meta::MoveCause::Operator,
        };
        assert_eq!(m.apply(&start), CommandResult::Done);
        // A second move of the same shard waits for the first.
        let again = Command::StartMove {
            topic: "t".into(),
            shard: 0,
            expected_version: m.topics["t"].shards[0].version,
            from,
            to,
            at_ms: 1,
            cause: crate::cluster::meta::MoveCause::Operator,
        };
        assert!(matches!(m.apply(&again), CommandResult::Refused { .. }));
        assert!(m.topics["t"].shards[0].replicas.contains(&to));
        // Not in sync yet: nothing to do.
        assert_eq!(apply_all(&mut m, &alive), 0);
        // The target caught up (the primary's in-sync proposal).
        let s = m.topics["t"].shards[0].clone();
        let mut in_sync = s.in_sync.clone();
        in_sync.push(to);
        m.apply(&Command::SetInSync {
            topic: "t".into(),
            shard: 0,
            expected_version: s.version,
            in_sync,
            at_ms: 1,
        });
        let epoch = m.topics["t"].shards[0].epoch;
        assert_eq!(apply_all(&mut m, &alive), 1);
        let s = m.topics["t"].shards[0].clone();
        assert_eq!(s.primary, Some(to), "the primary moved first");
        assert_eq!(s.epoch, epoch + 1);
        assert_eq!(apply_all(&mut m, &alive), 1);
        let s = m.topics["t"].shards[0].clone();
        assert!(!s.replicas.contains(&from) && !s.in_sync.contains(&from));
        assert_eq!(s.replicas.len(), 2);
        assert!(s.moving.is_none());
        let kinds: Vec<HistoryKind> = s.history.iter().map(|h| h.kind).collect();
        assert_eq!(
            kinds,
            [
                HistoryKind::Created,
                HistoryKind::MoveStarted,
                HistoryKind::InSyncChanged,
                HistoryKind::PrimaryChanged,
                HistoryKind::MoveFinished
            ]
        );
        assert_eq!(apply_all(&mut m, &alive), 0, "done");
    }

    #[test]
    fn a_move_whose_target_dies_before_it_is_in_sync_is_given_up() {
        let mut m = four_nodes_one_shard();
        let s = m.topics["t"].shards[0].clone();
        let to = (1..=4).find(|n| !s.replicas.contains(n)).unwrap();
        m.apply(&Command::StartMove {
            topic: "t".into(),
            shard: 0,
            expected_version: s.version,
            from: s.replicas[1],
            to,
            at_ms: 1,
            cause: crate::cluster::meta::MoveCause::Operator,
        });
        let alive: BTreeSet<NodeId> = (1..=4).filter(|n| *n != to).collect();
        assert_eq!(apply_all(&mut m, &alive), 1);
        let after = m.topics["t"].shards[0].clone();
        assert_eq!(after.replicas, s.replicas, "the copies are as before");
        assert!(after.moving.is_none());
        assert_eq!(after.history.last().unwrap().kind, HistoryKind::MoveAborted);
    }
}

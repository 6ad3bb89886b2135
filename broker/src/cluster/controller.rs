//! What the controller (the consensus leader) decides: when a node stops answering
//! heartbeats, each shard it led gets a new primary chosen among its live in-sync
//! copies (with the next epoch, which fences the old primary), and it leaves the
//! in-sync set of the shards it mirrored. A shard whose in-sync copies are all dead has
//! no primary (SHARD_OFFLINE) until one of them returns; an out-of-sync copy is never
//! made primary, so an acknowledged `mirrored` record is never lost to a switchover.
//!
//! Every decision is a compare-and-set command on the shard's version, made from the
//! controller's applied metadata; one that lost a race is refused and decided again
//! from the newer state on the next tick.
//!
//! One look at the nodes gives one decision round, and a round is one consensus entry
//! ([`Command::Batch`]): a node that led 300 shards dying costs one consensus write,
//! not 300 in a row, and every node applies the whole round at once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::meta::{ClusterMeta, Command, CommandResult, NodeId, BATCH_MAX};
use super::Cluster;

/// How often the controller looks at the nodes' liveness.
const TICK: Duration = Duration::from_millis(50);
/// How long a membership change may take before the controller tries again.
pub const MEMBERSHIP_WAIT: Duration = Duration::from_secs(10);

/// Runs until shutdown; decides only while this node is the controller.
pub async fn run(cluster: Arc<Cluster>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => {}
        }
        let Some(alive) = cluster.consensus.alive_nodes() else {
            continue;
        };
        let meta = cluster.meta();
        let now_ms = crate::clock::now_ms();
        let mut decisions = decide(&meta, &alive, now_ms);
        decisions.extend(super::moves::decide(&meta, &alive, now_ms));
        decisions.extend(super::nodes::decide(&meta, &alive, now_ms));
        for cmd in &decisions {
            tracing::info!(?cmd, "controller decision");
        }
        for entry in rounds(decisions) {
            match cluster.consensus.write(entry).await {
                Ok(CommandResult::Batch(results)) => {
                    let refused = results
                        .iter()
                        .filter(|r| matches!(r, CommandResult::Refused { .. }))
                        .count();
                    tracing::debug!(
                        decisions = results.len(),
                        refused,
                        "controller decisions applied (refused ones are decided again)"
                    );
                }
                Ok(r) => tracing::debug!(?r, "controller decision applied"),
                Err(e) => tracing::warn!(error = %e.message, "controller decisions not committed"),
            }
        }
        for id in super::nodes::drained(&meta) {
            remove_drained(&cluster, id).await;
        }
    }
}

/// Takes a drained node out of the consensus membership, then out of the metadata.
/// A failure is logged and tried again next tick (both steps are idempotent).
async fn remove_drained(cluster: &Cluster, id: NodeId) {
    if let Err(e) = cluster.consensus.remove_member(id, MEMBERSHIP_WAIT).await {
        tracing::warn!(node = id, error = %e.message, "removing a drained node from the consensus membership");
        return;
    }
    match cluster.consensus.write(Command::RemoveNode { id }).await {
        Ok(CommandResult::Refused { message, .. }) => {
            tracing::warn!(node = id, %message, "removing a drained node refused")
        }
        Ok(_) => tracing::info!(node = id, "node drained and removed from the cluster"),
        Err(e) => tracing::warn!(node = id, error = %e.message, "removing a drained node"),
    }
}

/// The consensus entries that carry one round of decisions: the single command as it
/// is, more as batches of at most [`BATCH_MAX`].
pub fn rounds(mut decisions: Vec<Command>) -> Vec<Command> {
    if decisions.len() <= 1 {
        return decisions;
    }
    let mut out = Vec::new();
    while !decisions.is_empty() {
        let rest = decisions.split_off(decisions.len().min(BATCH_MAX));
        out.push(Command::Batch {
            commands: std::mem::replace(&mut decisions, rest),
        });
    }
    out
}

/// The commands that bring every shard's primary and in-sync set in line with which
/// nodes are alive, stamped `at_ms` for the shards' history.
pub fn decide(meta: &ClusterMeta, alive: &BTreeSet<NodeId>, at_ms: i64) -> Vec<Command> {
    let mut out = Vec::new();
    for (topic, t) in &meta.topics {
        for (i, s) in t.shards.iter().enumerate() {
            let live_in_sync: Vec<NodeId> = s
                .in_sync
                .iter()
                .copied()
                .filter(|n| alive.contains(n))
                .collect();
            let primary_alive = s.primary.is_some_and(|p| alive.contains(&p));
            if !primary_alive {
                // Prefer the copies in placement order among the live in-sync ones.
                let next = s
                    .replicas
                    .iter()
                    .copied()
                    .find(|n| live_in_sync.contains(n));
                match next {
                    Some(n) => out.push(Command::SetPrimary {
                        topic: topic.clone(),
                        shard: i as u32,
                        expected_version: s.version,
                        primary: Some(n),
                        in_sync: live_in_sync,
                        at_ms,
                    }),
                    None if s.primary.is_some() => out.push(Command::SetPrimary {
                        topic: topic.clone(),
                        shard: i as u32,
                        expected_version: s.version,
                        primary: None,
                        // The dead copies still hold everything acknowledged: the first
                        // of them back becomes the primary.
                        in_sync: s.in_sync.clone(),
                        at_ms,
                    }),
                    None => {}
                }
            } else if live_in_sync.len() != s.in_sync.len() {
                out.push(Command::SetInSync {
                    topic: topic.clone(),
                    shard: i as u32,
                    expected_version: s.version,
                    in_sync: live_in_sync,
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
    use crate::cluster::meta::{NodeEntry, TopicSettings};
    use weir_protocol::messages::TopicConfig;

    fn cluster_with_topic() -> ClusterMeta {
        let mut m = ClusterMeta::default();
        m.apply(&Command::SetNodes {
            nodes: (1..=3)
                .map(|i| (i, NodeEntry::new(format!("n{i}"))))
                .collect(),
        });
        let r = m.apply(&Command::CreateTopic {
            name: "t".into(),
            shards: 4,
            settings: TopicSettings::from(&TopicConfig {
                replicas: 3,
                min_in_sync: 2,
                ..TopicConfig::default()
            }),
            at_ms: 0,
        });
        assert!(matches!(r, CommandResult::Topic(_)));
        m
    }

    fn apply_all(m: &mut ClusterMeta, cmds: Vec<Command>) {
        for c in cmds {
            assert_eq!(m.apply(&c), CommandResult::Done, "{c:?}");
        }
    }

    #[test]
    fn a_dead_primary_is_replaced_by_a_live_in_sync_copy_with_a_new_epoch() {
        let mut m = cluster_with_topic();
        let all: BTreeSet<NodeId> = [1, 2, 3].into();
        assert!(
            decide(&m, &all, 0).is_empty(),
            "nothing to do when all live"
        );
        let before = m.clone();
        let dead = m.shard("t", 0).unwrap().primary.unwrap();
        let alive: BTreeSet<NodeId> = all.iter().copied().filter(|&n| n != dead).collect();
        let cmds = decide(&m, &alive, 0);
        apply_all(&mut m, cmds);
        for i in 0..4 {
            let (b, a) = (before.shard("t", i).unwrap(), m.shard("t", i).unwrap());
            if b.primary == Some(dead) {
                assert_ne!(a.primary, Some(dead));
                assert!(a.primary.is_some());
                assert_eq!(a.epoch, b.epoch + 1);
            } else {
                assert_eq!(a.primary, b.primary);
                assert_eq!(a.epoch, b.epoch);
            }
            assert!(!a.in_sync.contains(&dead), "shard {i}");
        }
        assert!(decide(&m, &alive, 0).is_empty(), "stable once applied");
    }

    #[test]
    fn a_round_is_one_consensus_entry_that_moves_every_shard_of_the_dead_node() {
        let mut m = cluster_with_topic();
        let before = m.clone();
        let dead = m.shard("t", 0).unwrap().primary.unwrap();
        let alive: BTreeSet<NodeId> = [1, 2, 3].into_iter().filter(|&n| n != dead).collect();
        let decisions = decide(&m, &alive, 7);
        assert_eq!(
            decisions.len(),
            4,
            "every shard loses a copy or its primary"
        );
        let entries = rounds(decisions.clone());
        assert_eq!(entries.len(), 1, "one round, one entry");
        // The batch leaves the metadata exactly as the decisions one by one would.
        let mut one_by_one = m.clone();
        apply_all(&mut one_by_one, decisions);
        let r = m.apply(&entries[0]);
        assert_eq!(r, CommandResult::Batch(vec![CommandResult::Done; 4]));
        assert_eq!(m, one_by_one);
        for i in 0..4 {
            let (b, a) = (before.shard("t", i).unwrap(), m.shard("t", i).unwrap());
            assert_eq!(a.history.len(), b.history.len() + 1, "shard {i} history");
            assert_eq!(a.history.last().unwrap().at_ms, 7);
        }
        assert!(decide(&m, &alive, 8).is_empty(), "stable once applied");
    }

    #[test]
    fn a_large_round_is_split_into_batches_of_at_most_batch_max() {
        let cmd = Command::AllocateProducerIds { count: 1 };
        let single = rounds(vec![cmd.clone()]);
        assert_eq!(single, vec![cmd.clone()], "a lone decision goes as it is");
        assert!(rounds(Vec::new()).is_empty());
        let entries = rounds(vec![cmd; 2 * BATCH_MAX + 1]);
        let sizes: Vec<usize> = entries
            .iter()
            .map(|e| match e {
                Command::Batch { commands } => commands.len(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sizes, vec![BATCH_MAX, BATCH_MAX, 1]);
    }

    #[test]
    fn with_no_live_in_sync_copy_the_shard_goes_offline_and_returns_with_one() {
        let mut m = cluster_with_topic();
        let s = m.shard("t", 0).unwrap().clone();
        // Only the primary is in sync; then it dies.
        let p = s.primary.unwrap();
        m.apply(&Command::SetInSync {
            topic: "t".into(),
            shard: 0,
            expected_version: s.version,
            in_sync: vec![p],
            at_ms: 0,
        });
        let others: BTreeSet<NodeId> = [1, 2, 3].into_iter().filter(|&n| n != p).collect();
        let cmds: Vec<_> = decide(&m, &others, 0)
            .into_iter()
            .filter(|c| matches!(c, Command::SetPrimary { shard: 0, .. }))
            .collect();
        apply_all(&mut m, cmds);
        let s0 = m.shard("t", 0).unwrap();
        assert_eq!(
            s0.primary, None,
            "an out-of-sync copy is never made primary"
        );
        assert_eq!(s0.in_sync, vec![p]);
        let all: BTreeSet<NodeId> = [1, 2, 3].into();
        let cmds: Vec<_> = decide(&m, &all, 0)
            .into_iter()
            .filter(|c| matches!(c, Command::SetPrimary { shard: 0, .. }))
            .collect();
        apply_all(&mut m, cmds);
        assert_eq!(m.shard("t", 0).unwrap().primary, Some(p));
    }
}

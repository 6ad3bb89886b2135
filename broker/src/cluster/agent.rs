//! What every node does with the metadata it applies: create and delete its local
//! copies of topics, take or give up the primary role of each shard, run a mirror task
//! for each shard it copies, and — as a primary — propose in-sync changes when a mirror
//! falls behind or catches up.

use std::sync::Arc;
use std::time::Duration;

use weir_protocol::messages::TopicConfig;

use super::meta::{ClusterMeta, Command, CommandResult, HistoryKind, ShardEntry};
use super::replication::epochs::EpochHistory;
use super::replication::mirror;
use super::replication::primary::PrimaryState;
use super::Cluster;

/// Tells the broker's producer-id table that the cluster has handed out every id
/// below this mark (a callback, so the cluster does not import the broker's state).
pub type IssuedBelow = Arc<dyn Fn(u64) + Send + Sync>;

/// How often the agent looks again without a metadata change (retries, in-sync
/// checks).
const TICK: Duration = Duration::from_millis(200);

/// Runs until shutdown.
pub async fn run(
    cluster: Arc<Cluster>,
    issued_below: IssuedBelow,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut rx = cluster.consensus.metadata();
    let mut prev: Arc<ClusterMeta> = Arc::new(ClusterMeta::default());
    let mut tick = tokio::time::interval(TICK);
    loop {
        let meta = rx.borrow_and_update().clone();
        apply(&cluster, &issued_below, &prev, &meta).await;
        propose_in_sync_changes(&cluster).await;
        prev = meta;
        tokio::select! {
            _ = shutdown.changed() => break,
            r = rx.changed() => if r.is_err() { break },
            _ = tick.tick() => {}
        }
    }
}

/// Brings this node's copies and roles in line with `meta`.
async fn apply(
    cluster: &Arc<Cluster>,
    issued_below: &IssuedBelow,
    prev: &ClusterMeta,
    meta: &ClusterMeta,
) {
    issued_below(meta.next_producer_id);
    cluster
        .peers
        .learn(meta.nodes.iter().map(|(&id, n)| (id, n.addr.as_str())));
    // Deleted topics: only on seeing the deletion, never because a topic is missing
    // from metadata that may not be caught up yet.
    for name in prev.topics.keys() {
        if !meta.topics.contains_key(name) {
            give_up_topic(cluster, name);
            if let Err(e) = cluster.topics.delete(name).await {
                tracing::warn!(topic = %name, error = %e.message, "deleting the local copy failed");
            }
        }
    }
    for (name, t) in &meta.topics {
        if cluster.topics.get(name).is_err() {
            let config = TopicConfig::from(&t.settings);
            match cluster
                .topics
                .create(name, t.shards.len() as u32, config)
                .await
            {
                Ok(_) => tracing::info!(topic = %name, "local copy created"),
                Err(e) => {
                    tracing::error!(topic = %name, error = %e.message, "creating the local copy failed");
                    continue;
                }
            }
        }
        for (i, entry) in t.shards.iter().enumerate() {
            let i = i as u32;
            if !entry.replicas.contains(&cluster.node_id) {
                stop_mirror(cluster, name, i);
                resign(cluster, name, i);
                let held = prev
                    .shard(name, i)
                    .is_some_and(|p| p.replicas.contains(&cluster.node_id));
                let moved_away = entry
                    .history
                    .last()
                    .is_some_and(|h| h.kind == HistoryKind::MoveFinished);
                if held && moved_away {
                    drop_copy(cluster, name, i).await;
                }
            } else if entry.primary == Some(cluster.node_id) {
                lead(cluster, name, i, entry, usize::from(t.settings.min_in_sync)).await;
            } else {
                resign(cluster, name, i);
                ensure_mirror(cluster, name, i);
            }
        }
    }
}

/// Takes (or keeps) the primary role of a shard for the entry's epoch.
async fn lead(
    cluster: &Arc<Cluster>,
    topic: &str,
    shard_no: u32,
    entry: &ShardEntry,
    min_in_sync: usize,
) {
    let current = cluster
        .primaries
        .read()
        .expect("primaries lock")
        .get(topic)
        .and_then(|m| m.get(&shard_no))
        .cloned();
    if let Some(p) = &current {
        if p.epoch == entry.epoch && !p.is_resigned() {
            p.update(entry);
            return;
        }
        p.resign();
    }
    // Every copy the mirror task handed the writer is written before the epoch's start
    // is taken at the log's end: the flush queues behind them.
    let was_mirroring = stop_mirror(cluster, topic, shard_no);
    let Ok(shard) = cluster
        .topics
        .get(topic)
        .and_then(|t| t.shard(shard_no).cloned())
    else {
        return;
    };
    if was_mirroring {
        if let Err(e) = shard.flush().await {
            tracing::error!(topic, shard = shard_no, error = %e, "flushing before taking over failed");
            return;
        }
    }
    let epochs = EpochHistory::load(&cluster.topics.shard_dir(topic, shard_no));
    match PrimaryState::begin(
        topic,
        shard_no,
        cluster.node_id,
        entry,
        min_in_sync,
        shard,
        epochs,
    ) {
        Ok(p) => {
            tracing::info!(topic, shard = shard_no, epoch = entry.epoch, in_sync = ?entry.in_sync, "this node is now the primary");
            cluster
                .primaries
                .write()
                .expect("primaries lock")
                .entry(topic.to_string())
                .or_default()
                .insert(shard_no, Arc::new(p));
        }
        Err(e) => {
            tracing::error!(topic, shard = shard_no, error = %e.message, "taking over failed")
        }
    }
}

/// Frees the disk a copy that moved to another node used: its log is emptied (it
/// starts again at offset 0, as a node that never held it) and its epoch history
/// forgotten. A copy dropped because its move was given up is kept instead: started
/// again, the move then does not send it twice.
async fn drop_copy(cluster: &Cluster, topic: &str, shard_no: u32) {
    let mut epochs = EpochHistory::load(&cluster.topics.shard_dir(topic, shard_no));
    if let Err(e) = epochs.truncate(0) {
        tracing::warn!(topic, shard = shard_no, error = %e, "forgetting the moved copy's epochs failed");
        return;
    }
    match cluster.topics.restart_shard(topic, shard_no, 0).await {
        Ok(_) => tracing::info!(
            topic,
            shard = shard_no,
            "the copy moved away: its records are deleted here"
        ),
        Err(e) => {
            tracing::warn!(topic, shard = shard_no, error = %e.message, "deleting the moved copy failed")
        }
    }
}

/// Gives up the primary role of a shard, if this node has it.
fn resign(cluster: &Cluster, topic: &str, shard_no: u32) {
    let removed = cluster
        .primaries
        .write()
        .expect("primaries lock")
        .get_mut(topic)
        .and_then(|m| m.remove(&shard_no));
    if let Some(p) = removed {
        p.resign();
        tracing::info!(
            topic,
            shard = shard_no,
            epoch = p.epoch,
            "this node is no longer the primary"
        );
    }
}

fn give_up_topic(cluster: &Cluster, topic: &str) {
    cluster.held.release_topic(topic);
    if let Some(m) = cluster
        .primaries
        .write()
        .expect("primaries lock")
        .remove(topic)
    {
        for p in m.values() {
            p.resign();
        }
    }
    cluster
        .mirrors
        .lock()
        .expect("mirrors lock")
        .retain(|(t, _), task| {
            if t == topic {
                task.abort();
            }
            t != topic
        });
}

/// Starts the mirror task of a shard unless it runs.
fn ensure_mirror(cluster: &Arc<Cluster>, topic: &str, shard_no: u32) {
    let mut mirrors = cluster.mirrors.lock().expect("mirrors lock");
    let key = (topic.to_string(), shard_no);
    if mirrors.get(&key).is_some_and(|t| !t.is_finished()) {
        return;
    }
    let task = tokio::spawn(mirror::run(cluster.clone(), topic.to_string(), shard_no));
    mirrors.insert(key, task);
}

/// Stops the mirror task of a shard; whether there was one.
fn stop_mirror(cluster: &Cluster, topic: &str, shard_no: u32) -> bool {
    cluster.held.release(topic, shard_no);
    let task = cluster
        .mirrors
        .lock()
        .expect("mirrors lock")
        .remove(&(topic.to_string(), shard_no));
    match task {
        Some(t) => {
            t.abort();
            true
        }
        None => false,
    }
}

/// As a primary: mirrors that fell more than `mirror_lag_max_ms` behind leave the
/// in-sync set, mirrors that caught up join it (compare-and-set on the shard's
/// version, so a concurrent controller decision wins and this is tried again).
async fn propose_in_sync_changes(cluster: &Arc<Cluster>) {
    let lag_max = Duration::from_millis(cluster.config.mirror_lag_max_ms);
    for p in cluster.led_shards() {
        let Some((in_sync, version)) = p.wanted_in_sync(lag_max) else {
            continue;
        };
        let cmd = Command::SetInSync {
            topic: p.topic.clone(),
            shard: p.shard_no,
            expected_version: version,
            in_sync: in_sync.clone(),
            at_ms: crate::clock::now_ms(),
        };
        match cluster.consensus.write(cmd).await {
            Ok(CommandResult::Done) => {
                tracing::info!(topic = %p.topic, shard = p.shard_no, ?in_sync, "in-sync set changed")
            }
            Ok(r) => {
                tracing::debug!(topic = %p.topic, shard = p.shard_no, ?r, "in-sync change not applied")
            }
            Err(e) => {
                tracing::debug!(topic = %p.topic, shard = p.shard_no, error = %e.message, "in-sync change not committed")
            }
        }
    }
}

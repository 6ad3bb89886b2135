//! A returning primary keeps what it must cut. When the new primary tells a copy that
//! its log diverges (KIP-101/279: the records from `truncate_to` on were written under
//! an epoch the cluster moved past, so no in-sync copy holds them and none of them was
//! acknowledged as mirrored), the copy first writes those records to the topic
//! `<topic>.reconcile`, each with headers naming where it came from, and cuts its log
//! only once that write is acknowledged as mirrored. `weir reconcile replay T` writes
//! them back into `T` by a documented rule (last write wins by record timestamp).
//!
//! The copy is at-least-once: a node that dies between the acknowledged copy and the
//! cut copies the same records again when it returns; the origin headers identify a
//! record (node, shard, offset, epoch), and the replay tool skips repeats.

use std::sync::Arc;

use bytes::Bytes;
use weir_protocol::batch::{self, BatchBuilder, NewRecord};
use weir_protocol::ErrorCode;

use super::super::meta::Command;
use super::super::queues::produce_mirrored;
use super::super::Cluster;
use super::epochs::EpochHistory;
use crate::error::BrokerError;
use crate::shard::Shard;

use weir_protocol::headers::{
    RECONCILE_CUT_EPOCH as H_CUT_EPOCH, RECONCILE_EPOCH as H_EPOCH, RECONCILE_NODE as H_NODE,
    RECONCILE_OFFSET as H_OFFSET, RECONCILE_SHARD as H_SHARD, RECONCILE_SUFFIX,
    RECONCILE_TOPIC as H_TOPIC,
};

/// Most bytes of records per produce to the reconciliation topic.
const CHUNK_BYTES: usize = 512 * 1024;

/// The reconciliation topic of `topic`.
pub fn topic_for(topic: &str) -> String {
    format!("{topic}{RECONCILE_SUFFIX}")
}

/// Where the divergent records sit and why they are cut.
pub struct Suffix<'a> {
    pub topic: &'a str,
    pub shard_no: u32,
    pub shard: &'a Shard,
    /// The first offset cut (the primary's `truncate_to`).
    pub from: u64,
    /// This copy's log end.
    pub to: u64,
    /// The epoch of the primary that told this copy to cut.
    pub cut_epoch: u32,
}

/// Copies the records of `s` to the reconciliation topic, acknowledged as mirrored
/// (durable on a single copy); returns how many. Nothing to copy (an empty suffix)
/// is not an error.
pub async fn preserve(
    cluster: &Arc<Cluster>,
    s: &Suffix<'_>,
    epochs: &EpochHistory,
) -> Result<u64, BrokerError> {
    if s.from >= s.to {
        return Ok(0);
    }
    let target = topic_for(s.topic);
    let mut builder = BatchBuilder::new();
    let mut pending = 0usize;
    let mut copied = 0u64;
    let mut at = s.from;
    let reader = s.shard.reader();
    let node = cluster.node_id.to_string();
    let shard_text = s.shard_no.to_string();
    let cut_epoch = s.cut_epoch.to_string();
    while at < s.to {
        let before = at;
        let chunks = reader
            .read_unreplicated(at, CHUNK_BYTES)
            .map_err(|e| BrokerError::new(ErrorCode::StorageError, e.to_string()))?;
        if chunks.is_empty() {
            break;
        }
        for chunk in chunks {
            for b in batch::split(chunk) {
                let b =
                    b.map_err(|e| BrokerError::new(ErrorCode::CorruptStorage, e.to_string()))?;
                let parsed = batch::Batch::parse(b)
                    .map_err(|e| BrokerError::new(ErrorCode::CorruptStorage, e.to_string()))?;
                for r in parsed.records() {
                    at = r.offset + 1;
                    if r.offset < s.from || r.offset >= s.to {
                        continue;
                    }
                    let offset = r.offset.to_string();
                    let epoch = epochs.epoch_before(r.offset + 1).to_string();
                    let mut headers: Vec<(&str, &[u8])> = r
                        .headers
                        .iter()
                        .map(|h| (h.name.as_str(), h.value.as_ref()))
                        .collect();
                    headers.extend_from_slice(&[
                        (H_NODE, node.as_bytes()),
                        (H_TOPIC, s.topic.as_bytes()),
                        (H_SHARD, shard_text.as_bytes()),
                        (H_OFFSET, offset.as_bytes()),
                        (H_EPOCH, epoch.as_bytes()),
                        (H_CUT_EPOCH, cut_epoch.as_bytes()),
                    ]);
                    let rec = NewRecord {
                        priority: r.priority,
                        complexity: r.complexity,
                        timestamp_ms: r.timestamp_ms,
                        key: &r.key,
                        value: &r.value,
                        headers: &headers,
                    };
                    if pending > 0 && pending + rec.encoded_bytes() > CHUNK_BYTES {
                        let full = std::mem::take(&mut builder);
                        copied += send(cluster, &target, s, full).await?;
                        pending = 0;
                    }
                    pending += rec.encoded_bytes();
                    builder
                        .push(&rec)
                        .map_err(|e| BrokerError::new(ErrorCode::InvalidRecord, e.to_string()))?;
                }
                at = at.max(parsed.header().last_offset() + 1);
            }
        }
        if at == before {
            // Nothing past `at` came back: the copy ends earlier than its end said.
            break;
        }
    }
    if pending > 0 {
        copied += send(cluster, &target, s, builder).await?;
    }
    Ok(copied)
}

/// Produces one batch to the reconciliation topic's primary (creating the topic
/// first when it does not exist); returns the records it held.
async fn send(
    cluster: &Arc<Cluster>,
    target: &str,
    s: &Suffix<'_>,
    builder: BatchBuilder,
) -> Result<u64, BrokerError> {
    let bytes: Bytes = builder
        .finish()
        .map_err(|e| BrokerError::new(ErrorCode::InvalidRecord, e.to_string()))?;
    let records = batch::BatchHeader::read(&bytes).map_or(0, |h| u64::from(h.record_count));
    ensure_topic(cluster, target, s.topic).await?;
    produce_mirrored(cluster, target, 0, bytes).await?;
    Ok(records)
}

/// Creates `target` (one shard, the origin topic's settings) when the metadata has
/// no such topic; another copy creating it first is as good.
async fn ensure_topic(
    cluster: &Arc<Cluster>,
    target: &str,
    origin: &str,
) -> Result<(), BrokerError> {
    let meta = cluster.meta();
    if meta.topics.contains_key(target) {
        return Ok(());
    }
    let settings = meta
        .topics
        .get(origin)
        .map(|t| t.settings.clone())
        .ok_or_else(|| {
            BrokerError::new(
                ErrorCode::UnknownTopic,
                format!("{origin} is not in the cluster metadata"),
            )
        })?;
    cluster
        .consensus
        .write(Command::CreateTopic {
            name: target.to_string(),
            shards: 1,
            settings,
            at_ms: crate::clock::now_ms(),
        })
        .await?;
    Ok(())
}

//! Dead-letter topics: where records go after their last failed attempt, and how a
//! crash between "written to the dead-letter topic" and "recorded as dead" is healed.
//!
//! Order of writes, for one record: (1) append the record to `<topic><dlq_suffix>`
//! with a durable append, headers naming its source; (2) append a DEAD event to the
//! state log. A crash after (1) and before (2) leaves the record pending in the queue
//! but already in the dead-letter topic. So when a queue starts, it reads the tail of
//! each dead-letter shard past the highest dead-letter offset its state log knows
//! ([`ShardRecovery::dlq_high`](super::state_log::ShardRecovery)) and records every
//! record of its own (`weir.dlq.group` and `weir.dlq.source_topic` match) as dead,
//! without writing it again. So a record is in the dead-letter topic exactly once, or
//! still pending; never both, never neither.

use std::sync::Arc;

use bytes::Bytes;
use weir_protocol::batch::{Batch, BatchBuilder, BatchHeader, NewRecord, Record};
use weir_protocol::headers::{
    DLQ_ATTEMPTS, DLQ_ERROR, DLQ_FIRST_FAILURE_MS, DLQ_GROUP, DLQ_LAST_FAILURE_MS, DLQ_PREFIX,
    DLQ_SOURCE_OFFSET, DLQ_SOURCE_SHARD, DLQ_SOURCE_TOPIC,
};
use weir_protocol::messages::TopicConfig;
use weir_protocol::ErrorCode;

use super::state_log::Failure;
use crate::error::BrokerError;
use crate::topics::{Topic, TopicRegistry};

/// The dead-letter topic name of `topic`.
pub fn dlq_name(topic: &str, suffix: &str) -> String {
    format!("{topic}{suffix}")
}

/// The dead-letter topic, created on first use with as many shards as its source
/// (so source shard `s` goes to dead-letter shard `s`) and `retention_ms`.
pub async fn ensure_topic(
    topics: &Arc<TopicRegistry>,
    name: &str,
    shards: u32,
    retention_ms: u64,
) -> Result<Arc<Topic>, BrokerError> {
    if let Ok(t) = topics.get(name) {
        return Ok(t);
    }
    let config = TopicConfig {
        retention_ms,
        ..TopicConfig::default()
    };
    match topics.create(name, shards, config).await {
        Ok(t) => {
            tracing::info!(topic = name, "dead-letter topic created");
            Ok(t)
        }
        Err(e) if e.code == ErrorCode::TopicAlreadyExists => topics.get(name),
        Err(e) => Err(e),
    }
}

/// The dead-letter shard for source shard `shard`.
pub fn dlq_shard(dlq: &Topic, shard: u32) -> u32 {
    shard % dlq.shards.len().max(1) as u32
}

/// Builds the dead-letter batch for one record: the record's key, value, priority,
/// complexity, timestamp and headers, plus the `weir.dlq.*` headers.
pub fn build_batch(
    group: &str,
    topic: &str,
    shard: u32,
    rec: &Record,
    failure: &Failure,
) -> Result<(Bytes, BatchHeader), BrokerError> {
    let ours = [
        (DLQ_GROUP, group.to_string()),
        (DLQ_SOURCE_TOPIC, topic.to_string()),
        (DLQ_SOURCE_SHARD, shard.to_string()),
        (DLQ_SOURCE_OFFSET, rec.offset.to_string()),
        (DLQ_ATTEMPTS, failure.failures.to_string()),
        (DLQ_FIRST_FAILURE_MS, failure.first_ms.to_string()),
        (DLQ_LAST_FAILURE_MS, failure.last_ms.to_string()),
        (DLQ_ERROR, failure.error.clone()),
    ];
    let mut headers: Vec<(&str, &[u8])> = rec
        .headers
        .iter()
        .filter(|h| !h.name.starts_with(DLQ_PREFIX))
        .map(|h| (h.name.as_str(), h.value.as_ref()))
        .collect();
    headers.extend(ours.iter().map(|(n, v)| (*n, v.as_bytes())));
    let mut b = BatchBuilder::new();
    let bad =
        |e: weir_protocol::DecodeError| BrokerError::new(ErrorCode::InvalidRecord, e.to_string());
    b.push(&NewRecord {
        priority: rec.priority,
        complexity: rec.complexity,
        timestamp_ms: rec.timestamp_ms,
        key: &rec.key,
        value: &rec.value,
        headers: &headers,
    })
    .map_err(bad)?;
    let batch = b.finish().map_err(bad)?;
    let header = BatchHeader::read(&batch).map_err(bad)?;
    Ok((batch, header))
}

/// The value of header `name`, as text.
pub fn header<'a>(rec: &'a Record, name: &str) -> Option<&'a str> {
    rec.headers
        .iter()
        .find(|h| h.name == name)
        .and_then(|h| std::str::from_utf8(&h.value).ok())
}

/// One dead-letter record found by [`scan_tail`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub source_shard: u32,
    pub source_offset: u64,
    pub failures: u32,
    pub dlq_offset: u64,
}

/// Records of queue (`group`, `topic`) in dead-letter shard `dlq_shard` from offset
/// `from` to its high-water mark.
pub fn scan_tail(
    dlq: &Topic,
    dlq_shard: u32,
    from: u64,
    group: &str,
    topic: &str,
) -> Result<Vec<Found>, BrokerError> {
    let Ok(shard) = dlq.shard(dlq_shard) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    shard.reader().scan_batches(from, |bytes, _| {
        let batch = Batch::parse(bytes)
            .map_err(|e| BrokerError::new(ErrorCode::CorruptStorage, e.to_string()))?;
        for rec in batch.records() {
            if rec.offset < from
                || header(&rec, DLQ_GROUP) != Some(group)
                || header(&rec, DLQ_SOURCE_TOPIC) != Some(topic)
            {
                continue;
            }
            let num = |n| header(&rec, n).and_then(|v| v.parse::<u64>().ok());
            if let (Some(s), Some(o)) = (num(DLQ_SOURCE_SHARD), num(DLQ_SOURCE_OFFSET)) {
                out.push(Found {
                    source_shard: s as u32,
                    source_offset: o,
                    failures: num(DLQ_ATTEMPTS).unwrap_or(0) as u32,
                    dlq_offset: rec.offset,
                });
            }
        }
        Ok::<(), BrokerError>(())
    })?;
    Ok(out)
}

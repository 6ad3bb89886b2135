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
use weir_protocol::messages::TopicConfig;
use weir_protocol::ErrorCode;

use super::state_log::Failure;
use crate::error::BrokerError;
use crate::topics::{Topic, TopicRegistry};

/// Header: the queue group that dead-lettered the record.
pub const H_GROUP: &str = "weir.dlq.group";
/// Header: the topic the record came from.
pub const H_SOURCE_TOPIC: &str = "weir.dlq.source_topic";
/// Header: its shard there (decimal).
pub const H_SOURCE_SHARD: &str = "weir.dlq.source_shard";
/// Header: its offset there (decimal).
pub const H_SOURCE_OFFSET: &str = "weir.dlq.source_offset";
/// Header: deliveries that failed (decimal).
pub const H_ATTEMPTS: &str = "weir.dlq.attempts";
/// Header: first failure, ms since the Unix epoch (decimal).
pub const H_FIRST_FAILURE: &str = "weir.dlq.first_failure_ms";
/// Header: last failure, ms since the Unix epoch (decimal).
pub const H_LAST_FAILURE: &str = "weir.dlq.last_failure_ms";
/// Header: the last error text.
pub const H_ERROR: &str = "weir.dlq.error";
/// Prefix of every header the broker adds.
pub const H_PREFIX: &str = "weir.dlq.";

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
        (H_GROUP, group.to_string()),
        (H_SOURCE_TOPIC, topic.to_string()),
        (H_SOURCE_SHARD, shard.to_string()),
        (H_SOURCE_OFFSET, rec.offset.to_string()),
        (H_ATTEMPTS, failure.failures.to_string()),
        (H_FIRST_FAILURE, failure.first_ms.to_string()),
        (H_LAST_FAILURE, failure.last_ms.to_string()),
        (H_ERROR, failure.error.clone()),
    ];
    let mut headers: Vec<(&str, &[u8])> = rec
        .headers
        .iter()
        .filter(|h| !h.name.starts_with(H_PREFIX))
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
                || header(&rec, H_GROUP) != Some(group)
                || header(&rec, H_SOURCE_TOPIC) != Some(topic)
            {
                continue;
            }
            let num = |n| header(&rec, n).and_then(|v| v.parse::<u64>().ok());
            if let (Some(s), Some(o)) = (num(H_SOURCE_SHARD), num(H_SOURCE_OFFSET)) {
                out.push(Found {
                    source_shard: s as u32,
                    source_offset: o,
                    failures: num(H_ATTEMPTS).unwrap_or(0) as u32,
                    dlq_offset: rec.offset,
                });
            }
        }
        Ok::<(), BrokerError>(())
    })?;
    Ok(out)
}

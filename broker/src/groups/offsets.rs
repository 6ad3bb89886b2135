//! Committed offsets, stored durably in an internal log.
//!
//! Every commit is one record batch appended to the internal shard
//! `<data_dir>/internal/offsets` and flushed before it is acknowledged (group commit
//! makes concurrent commits share a flush). Each record's key is
//! `group \0 topic \0 shard` and its value the offset as 8 little-endian bytes; the
//! newest record for a key wins. On start-up the log is read once to rebuild the map,
//! so the batch format, CRCs and crash recovery of ordinary topics protect offsets too.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use weir_protocol::batch::{Batch, BatchBuilder, BatchHeader, NewRecord};
use weir_protocol::messages::{Durability, OffsetEntry};
use weir_protocol::ErrorCode;

use crate::error::BrokerError;
use crate::shard::{Shard, ShardConfig};
use crate::storage::LogConfig;

type Key = (String, String, u32);
/// Group → (topic, shard) → offset.
type OffsetMap = HashMap<String, HashMap<(String, u32), u64>>;

/// The broker's committed offsets.
#[derive(Debug)]
pub struct OffsetStore {
    shard: Arc<Shard>,
    offsets: RwLock<OffsetMap>,
}

/// Most distinct groups with committed offsets; commits for further new groups are
/// refused so arbitrary group names cannot grow the map without bound.
pub const MAX_COMMITTED_GROUPS: usize = 100_000;

fn encode_key(group: &str, topic: &str, shard: u32) -> Vec<u8> {
    format!("{group}\0{topic}\0{shard}").into_bytes()
}

fn decode_key(key: &[u8]) -> Option<Key> {
    let s = std::str::from_utf8(key).ok()?;
    let mut parts = s.split('\0');
    let group = parts.next()?.to_string();
    let topic = parts.next()?.to_string();
    let shard = parts.next()?.parse().ok()?;
    Some((group, topic, shard))
}

impl OffsetStore {
    /// Opens the internal log under `data_dir` and loads every committed offset.
    pub fn open(data_dir: &std::path::Path) -> Result<OffsetStore, BrokerError> {
        let dir = data_dir.join("internal").join("offsets");
        let config = ShardConfig {
            log: LogConfig {
                segment_bytes: 16 * 1024 * 1024,
                retention_ms: 0,
                retention_bytes: 0,
                ..LogConfig::default()
            },
            durability: Durability::Always,
            ..ShardConfig::default()
        };
        let shard = Shard::open(&dir, "offsets", config)
            .map_err(|e| BrokerError::new(ErrorCode::StorageError, format!("offsets log: {e}")))?;
        let mut offsets = OffsetMap::new();
        shard.reader().scan_batches(0, |bytes, _| {
            let batch = Batch::parse(bytes)
                .map_err(|e| BrokerError::new(ErrorCode::CorruptStorage, e.to_string()))?;
            for rec in batch.records() {
                if let (Some((group, topic, shard)), Ok(v)) = (
                    decode_key(&rec.key),
                    <[u8; 8]>::try_from(rec.value.as_ref()),
                ) {
                    offsets
                        .entry(group)
                        .or_default()
                        .insert((topic, shard), u64::from_le_bytes(v));
                }
            }
            Ok::<(), BrokerError>(())
        })?;
        Ok(OffsetStore {
            shard,
            offsets: RwLock::new(offsets),
        })
    }

    /// Stores offsets durably; returns once they are flushed.
    pub async fn commit(&self, group: &str, entries: &[OffsetEntry]) -> Result<(), BrokerError> {
        if entries.is_empty() {
            return Ok(());
        }
        {
            let map = self.offsets.read().expect("offsets lock");
            if !map.contains_key(group) && map.len() >= MAX_COMMITTED_GROUPS {
                return Err(BrokerError::new(
                    ErrorCode::InvalidConfig,
                    format!(
                        "offsets are stored for MAX_COMMITTED_GROUPS = {MAX_COMMITTED_GROUPS} groups already"
                    ),
                ));
            }
        }
        let now = crate::clock::now_ms();
        let mut builder = BatchBuilder::new();
        let keys: Vec<Vec<u8>> = entries
            .iter()
            .map(|e| encode_key(group, &e.topic, e.shard))
            .collect();
        for (e, key) in entries.iter().zip(&keys) {
            let value = e.offset.to_le_bytes();
            builder
                .push(&NewRecord {
                    key,
                    value: &value,
                    ..NewRecord::value(now, &[])
                })
                .map_err(|e| BrokerError::new(ErrorCode::InvalidRequest, e.to_string()))?;
        }
        let batch: Bytes = builder
            .finish()
            .map_err(|e| BrokerError::new(ErrorCode::InvalidRequest, e.to_string()))?;
        let header = BatchHeader::read(&batch).expect("built batch has a header");
        self.shard
            .append(vec![batch], vec![header], true)
            .await
            .map_err(|e| BrokerError::new(ErrorCode::StorageError, e.to_string()))?;
        let mut map = self.offsets.write().expect("offsets lock");
        for e in entries {
            map.entry(group.to_string())
                .or_default()
                .insert((e.topic.clone(), e.shard), e.offset);
        }
        Ok(())
    }

    /// The group's committed offset for one shard.
    pub fn get(&self, group: &str, topic: &str, shard: u32) -> Option<u64> {
        self.offsets
            .read()
            .expect("offsets lock")
            .get(group)?
            .get(&(topic.to_string(), shard))
            .copied()
    }

    /// Every committed offset of a group, sorted.
    pub fn all(&self, group: &str) -> Vec<OffsetEntry> {
        let map = self.offsets.read().expect("offsets lock");
        let mut v: Vec<OffsetEntry> = map
            .get(group)
            .into_iter()
            .flatten()
            .map(|((t, s), o)| OffsetEntry {
                topic: t.clone(),
                shard: *s,
                offset: *o,
            })
            .collect();
        v.sort_by(|a, b| (&a.topic, a.shard).cmp(&(&b.topic, b.shard)));
        v
    }

    /// Flushes and stops the internal log.
    pub async fn close(&self) {
        self.shard.close().await;
    }
}

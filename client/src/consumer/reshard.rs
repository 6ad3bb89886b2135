//! Reading across a reshard in key order (PROTOCOL.md, "Resharding"): a shard's
//! records written after a reshard that can move keys into it are read only once every
//! other shard has been read up to where that reshard cut it.
//!
//! The consumer keeps each topic's reshards (from Metadata). Before it fetches a shard
//! it asks [`weir_protocol::reshard::gate`]: blocked shards are not fetched this round,
//! and a fetch may hand out only records below the gate's limit. How far another shard
//! has been read is this consumer's position when it reads that shard, else its
//! group's committed offset (fetched at most every [`OTHERS_REFRESH`]), else — a
//! consumer without a group reading some shards only — it is not waited for: such a
//! consumer never sees that shard's records, so there is no order to keep with them.
//! Every fetch response carries the topic's layout epoch; a newer one than known makes
//! the consumer refresh the topic's layout before it hands out what it fetched.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use weir_protocol::messages::{FetchOffsetsRequest, Reshard, ShardRef};
use weir_protocol::reshard::{gate, others_done, Gate};

use super::Consumer;
use crate::client::expect_body;
use crate::error::Result;

/// How often a group member re-reads the commits of shards it does not read while one
/// of its shards waits for them.
pub(super) const OTHERS_REFRESH: Duration = Duration::from_millis(200);

/// One topic's layout as the consumer last learned it.
#[derive(Debug, Clone, Default)]
pub(super) struct Layout {
    pub epoch: u32,
    pub reshards: Arc<Vec<Reshard>>,
    /// Per shard, its log start then (below it nothing is left to wait for).
    pub log_starts: Vec<u64>,
}

impl Consumer {
    /// Learns the layouts of `topics` (after a (re)join, or a newer epoch seen in a
    /// fetch: then, with `add_new`, a consumer reading every shard of its topics
    /// without a group starts reading shards it did not know at their log start:
    /// every record in them was written after they were created).
    pub(super) async fn learn_layouts(&mut self, topics: &[String], add_new: bool) -> Result<()> {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        // A topic not created yet has no layout to learn (a group member may join
        // before it exists); it is learned with the fetch that first reads it.
        let meta = self.client.metadata_partial(&names).await?;
        let every_shard = add_new && self.config.group.is_none() && self.manual.is_none();
        for t in meta.topics {
            if every_shard {
                for s in &t.shards {
                    self.positions
                        .entry((t.name.clone(), s.shard))
                        .or_insert(s.log_start_offset);
                }
            }
            let layout = Layout {
                epoch: t.reshards.last().map_or(0, |r| r.epoch),
                reshards: Arc::new(t.reshards),
                log_starts: t.shards.iter().map(|s| s.log_start_offset).collect(),
            };
            self.layouts.insert(t.name, layout);
        }
        Ok(())
    }

    /// Whether a fetch response's layout epoch is newer than what this consumer knows
    /// of `topic`.
    pub(super) fn layout_is_stale(&self, topic: &str, epoch: u32) -> bool {
        self.layouts
            .get(topic)
            .map_or(epoch > 0, |l| epoch > l.epoch)
    }

    /// Refreshes the group's commits of shards this member does not read, when a
    /// gate waits on one of them and the last read is older than [`OTHERS_REFRESH`].
    pub(super) async fn refresh_others(&mut self) -> Result<()> {
        let Some(group) = self.config.group.clone() else {
            return Ok(());
        };
        if self.others_at.is_some_and(|t| t.elapsed() < OTHERS_REFRESH) {
            return Ok(());
        }
        let mut shards = Vec::new();
        for (topic, l) in &self.layouts {
            if l.reshards.is_empty() {
                continue;
            }
            for s in 0..l.log_starts.len() as u32 {
                if !self.positions.contains_key(&(topic.clone(), s)) {
                    shards.push(ShardRef {
                        topic: topic.clone(),
                        shard: s,
                    });
                }
            }
        }
        self.others_at = Some(tokio::time::Instant::now());
        if shards.is_empty() {
            return Ok(());
        }
        let req = FetchOffsetsRequest { group, shards };
        let got = expect_body!(self.client.call(req).await?, FetchOffsets)?;
        self.others = got
            .offsets
            .into_iter()
            .map(|e| ((e.topic, e.shard), e.offset))
            .collect();
        Ok(())
    }

    /// The gate of `shard` of `topic` at `offset` (see the module docs).
    pub(super) fn gate_of(&self, topic: &str, shard: u32, offset: u64) -> Gate {
        let Some(l) = self.layouts.get(topic) else {
            return Gate::Until { limit: u64::MAX };
        };
        if l.reshards.is_empty() {
            return Gate::Until { limit: u64::MAX };
        }
        let in_group = self.config.group.is_some();
        let read = |p: u32| -> u64 {
            let key = (topic.to_string(), p);
            let start = l.log_starts.get(p as usize).copied().unwrap_or(0);
            let got = match self.positions.get(&key) {
                Some(&pos) => pos,
                None if in_group => self.others.get(&key).copied().unwrap_or(0),
                None => u64::MAX,
            };
            got.max(start)
        };
        gate(&l.reshards, shard, offset, |j| {
            others_done(&l.reshards[j], shard, read)
        })
    }

    /// Where a group member with no committed offset for `shard` starts: a shard a
    /// reshard created, in a group that has read the topic before it (it committed
    /// other shards of it), is read from its log start, so nothing written to it
    /// since the reshard is skipped whatever the reset policy; else `None`.
    pub(super) fn reshard_start(
        &self,
        topic: &str,
        shard: u32,
        committed: &HashMap<(String, u32), u64>,
    ) -> Option<u64> {
        let l = self.layouts.get(topic)?;
        let first = l.reshards.first()?.from_shards;
        let read_before = committed.keys().any(|(t, _)| t == topic);
        (shard >= first && read_before)
            .then(|| l.log_starts.get(shard as usize).copied().unwrap_or(0))
    }
}

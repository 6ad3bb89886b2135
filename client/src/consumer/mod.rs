//! [`Consumer`]: reads records by offset, alone or as a member of a group.
//!
//! With a group, the broker assigns shards to members; a background task heartbeats
//! and raises a flag when the group rebalances. The next `poll` then commits (when
//! auto-commit is on), re-joins, and starts from the group's committed offsets (or the
//! reset policy when a shard has none). Without a group, the consumer reads every
//! shard of its topics (or those given to `assign`). Every fetched batch's CRC is
//! checked before any record of it is returned.
//!
//! This file holds the consumer's state and its small public methods; the rest is
//! split by concept: `config.rs` (settings and builder), `fetch.rs` (`poll`,
//! `poll_batches` and the fetch round), `batches.rs` (what a response decodes into),
//! `positions.rs` (cursor bookkeeping, per lane in priority order) and `group.rs`
//! (join, heartbeat, commit).

mod batches;
mod config;
mod fetch;
mod group;
mod positions;
mod reshard;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weir_protocol::classes::CLASS_COUNT;
use weir_protocol::messages::OffsetEntry;

pub use crate::record::Message;
pub use batches::ConsumedBatch;
pub use config::{ConsumerBuilder, ConsumerConfig, DeliveryOrder, OffsetReset};

use crate::client::Client;
use crate::error::{ClientError, Result};
use group::Membership;

/// Reads records; see the module docs.
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    topics: Vec<String>,
    membership: Option<Membership>,
    /// Raised by the heartbeat task (or `assign`); the next poll re-joins.
    rejoin: Arc<AtomicBool>,
    /// Next offset to read per assigned (topic, shard).
    positions: HashMap<(String, u32), u64>,
    manual: Option<Vec<(String, u32)>>,
    last_commit: tokio::time::Instant,
    /// Fetched messages not yet returned.
    buffered: VecDeque<Message>,
    /// Priority order only: the lane (class index) of each buffered message's batch.
    buffered_lanes: VecDeque<u8>,
    /// Fetched by `poll_batches` and not yet returned (offset order only).
    batches: VecDeque<ConsumedBatch>,
    /// Priority order only: each shard's four lane cursors; its position is their minimum.
    lanes: HashMap<(String, u32), [u64; CLASS_COUNT]>,
    /// Priority order only: the lane cursors the broker reported with the last fetch,
    /// which hold once every buffered message of that shard has been returned.
    lane_floors: HashMap<(String, u32), Vec<u64>>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    /// Per topic, its reshards as last learned (see `reshard.rs`).
    layouts: HashMap<String, reshard::Layout>,
    /// A group member's view of the group's commits of shards it does not read, and
    /// when it was fetched (for the reshard gate).
    others: HashMap<(String, u32), u64>,
    others_at: Option<tokio::time::Instant>,
    /// Fetches sent and not yet taken in, kept across polls: a fetch round waits for
    /// the first answer, not for every shard's long poll (see `fetch.rs`).
    in_flight: fetch::InFlight,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }
}

impl Consumer {
    /// A builder over `client`.
    pub fn builder(client: &Client) -> ConsumerBuilder {
        ConsumerBuilder {
            client: client.clone(),
            config: ConsumerConfig::default(),
            topics: Vec::new(),
        }
    }

    /// Reads these shards only, outside group management.
    pub fn assign(&mut self, shards: Vec<(String, u32)>) {
        self.manual = Some(shards);
        self.rejoin.store(true, Ordering::Release);
    }

    /// The shards this consumer currently reads, with its positions.
    pub fn positions(&self) -> Vec<OffsetEntry> {
        let mut v: Vec<_> = self
            .positions
            .iter()
            .map(|((t, s), o)| OffsetEntry {
                topic: t.clone(),
                shard: *s,
                offset: *o,
            })
            .collect();
        v.sort_by(|a, b| (&a.topic, a.shard).cmp(&(&b.topic, b.shard)));
        v
    }

    /// Moves the position of an assigned shard.
    pub fn seek(&mut self, topic: &str, shard: u32, offset: u64) -> Result<()> {
        match self.positions.get_mut(&(topic.to_string(), shard)) {
            Some(p) => {
                *p = offset;
                self.drop_buffered(topic, shard);
                self.batches
                    .retain(|b| !(&*b.topic == topic && b.shard == shard));
                // Lanes restart at the new position; cursors reported for the dropped
                // messages no longer apply.
                let key = (topic.to_string(), shard);
                self.lanes.remove(&key);
                self.lane_floors.remove(&key);
                Ok(())
            }
            None => Err(ClientError::Invalid(format!(
                "{topic}/{shard} is not assigned"
            ))),
        }
    }

    /// One message, waiting up to `timeout`.
    pub async fn next_message(&mut self, timeout: Duration) -> Result<Option<Message>> {
        Ok(self.poll(1, timeout).await?.pop())
    }

    /// The consumer as an endless `Stream` of messages.
    pub fn into_stream(self) -> impl futures_util::Stream<Item = Result<Message>> {
        futures_util::stream::unfold(self, |mut c| async move {
            loop {
                match c.poll(1, Duration::from_secs(1)).await {
                    Ok(mut v) if !v.is_empty() => return Some((Ok(v.remove(0)), c)),
                    Ok(_) => continue,
                    Err(e) => return Some((Err(e), c)),
                }
            }
        })
    }
}

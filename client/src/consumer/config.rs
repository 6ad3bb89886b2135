//! How a [`Consumer`] is set up: where it starts, in what order it reads, its group
//! timings, and the builder that collects them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use super::Consumer;
use crate::client::Client;
use crate::error::{ClientError, Result};

/// Where to start on a shard with no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    Earliest,
    Latest,
}

/// The order a consumer receives a shard's records in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryOrder {
    /// Offset order: the order the shard stored them.
    #[default]
    Offset,
    /// Priority order: the shard read as four class lanes (P0..P3), each in offset
    /// order, interleaved by the broker's weighted fair queuing with aging, so P0
    /// records come first while lower classes still get their share. Order holds per
    /// (shard key, class). The committed position of a shard is its lowest lane
    /// position, so after a restart or rebalance records of other classes above it
    /// may be delivered again (at least once).
    Priority,
}

/// Settings of a [`Consumer`].
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub group: Option<String>,
    pub reset: OffsetReset,
    /// Commit positions every `auto_commit_interval` and before a rebalance.
    pub auto_commit: bool,
    pub auto_commit_interval: Duration,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    /// Most bytes one fetch of one shard returns.
    pub max_fetch_bytes: u32,
    /// How long the broker may hold a fetch waiting for data.
    pub fetch_max_wait: Duration,
    /// Offset or priority order.
    pub order: DeliveryOrder,
    /// Where to start on these shards the first time they are assigned, ahead of a
    /// committed offset and of `reset` (for example to step past damaged data).
    pub start_offsets: HashMap<(String, u32), u64>,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            group: None,
            reset: OffsetReset::Latest,
            auto_commit: true,
            auto_commit_interval: Duration::from_secs(5),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
            max_fetch_bytes: 4 * 1024 * 1024,
            fetch_max_wait: Duration::from_millis(500),
            order: DeliveryOrder::Offset,
            start_offsets: HashMap::new(),
        }
    }
}

/// Builder of a [`Consumer`].
#[derive(Debug, Clone)]
pub struct ConsumerBuilder {
    pub(super) client: Client,
    pub(super) config: ConsumerConfig,
    pub(super) topics: Vec<String>,
}

impl ConsumerBuilder {
    /// Joins this consumer group.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.config.group = Some(group.into());
        self
    }
    /// Subscribes to a topic.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }
    /// Starts `shard` of `topic` at `offset` the first time it is assigned, whatever
    /// the group committed (a later commit then records the new position). For moving
    /// a consumer or a group past a range it must not read, such as damaged data.
    pub fn start_at(mut self, topic: impl Into<String>, shard: u32, offset: u64) -> Self {
        self.config
            .start_offsets
            .insert((topic.into(), shard), offset);
        self
    }
    /// Where to start without a committed offset.
    pub fn reset(mut self, reset: OffsetReset) -> Self {
        self.config.reset = reset;
        self
    }
    /// Automatic commits.
    pub fn auto_commit(mut self, on: bool) -> Self {
        self.config.auto_commit = on;
        self
    }
    /// Group session timeout.
    pub fn session_timeout(mut self, d: Duration) -> Self {
        self.config.session_timeout = d;
        self
    }
    /// Broker-side long-poll wait.
    pub fn fetch_max_wait(mut self, d: Duration) -> Self {
        self.config.fetch_max_wait = d;
        self
    }
    /// Most bytes one fetch of one shard returns (the first batch always whole).
    pub fn max_fetch_bytes(mut self, n: u32) -> Self {
        self.config.max_fetch_bytes = n;
        self
    }
    /// All settings at once.
    pub fn config(mut self, config: ConsumerConfig) -> Self {
        self.config = config;
        self
    }

    /// Offset order (the default) or priority order; see [`DeliveryOrder`].
    pub fn order(mut self, order: DeliveryOrder) -> Self {
        self.config.order = order;
        self
    }

    /// Creates the consumer. It joins its group on the first `poll`.
    pub fn build(self) -> Result<Consumer> {
        if self.topics.is_empty() {
            return Err(ClientError::Invalid(
                "subscribe to at least one topic".into(),
            ));
        }
        Ok(Consumer {
            client: self.client,
            config: self.config,
            topics: self.topics,
            membership: None,
            rejoin: Arc::new(AtomicBool::new(true)),
            positions: HashMap::new(),
            manual: None,
            last_commit: tokio::time::Instant::now(),
            buffered: VecDeque::new(),
            buffered_lanes: VecDeque::new(),
            batches: VecDeque::new(),
            lanes: HashMap::new(),
            lane_floors: HashMap::new(),
            heartbeat: None,
            layouts: HashMap::new(),
            others: HashMap::new(),
            others_at: None,
            in_flight: Default::default(),
        })
    }
}

//! [`Consumer`]: reads records by offset, alone or as a member of a group.
//!
//! With a group, the broker assigns shards to members; a background task heartbeats
//! and raises a flag when the group rebalances. The next `poll` then commits (when
//! auto-commit is on), re-joins, and starts from the group's committed offsets (or the
//! reset policy when a shard has none). Without a group, the consumer reads every
//! shard of its topics (or those given to `assign`). Every fetched batch's CRC is
//! checked before any record of it is returned.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use weir_protocol::batch::{self, Batch, Header};
use weir_protocol::classes::CLASS_COUNT;
use weir_protocol::messages::*;
use weir_protocol::{ErrorCode, Request, ResponseBody};

use crate::client::{expect_body, Client};
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
        }
    }
}

/// One consumed record. `key`, `value` and header values are slices of the fetched
/// response (no copy); `topic` is shared by every message of a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: Arc<str>,
    pub shard: u32,
    pub offset: u64,
    pub priority: u8,
    pub complexity: u8,
    pub timestamp_ms: i64,
    pub key: Bytes,
    pub value: Bytes,
    pub headers: Vec<Header>,
}

/// The records of one fetched batch at or above the consumer's position, handed out
/// whole by [`Consumer::poll_batches`]. Exists so a reader of many small records pays
/// per batch, not per record: nothing is decoded until [`ConsumedBatch::messages`] is
/// iterated, and the records stay in the fetched response's buffer.
#[derive(Debug, Clone)]
pub struct ConsumedBatch {
    topic: Arc<str>,
    shard: u32,
    /// The first offset handed out (a batch may start below the consumer's position).
    first: u64,
    body: BatchBody,
}

#[derive(Debug, Clone)]
enum BatchBody {
    /// A stored batch, checked (CRC and records) but not decoded.
    Stored(Batch),
    /// Messages an earlier `poll` had already decoded.
    Decoded(Vec<Message>),
}

impl ConsumedBatch {
    /// The topic.
    pub fn topic(&self) -> &Arc<str> {
        &self.topic
    }

    /// The shard.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// Offset of the first record handed out.
    pub fn first_offset(&self) -> u64 {
        self.first
    }

    /// One past the offset of the last record: the shard's position after this batch.
    pub fn next_offset(&self) -> u64 {
        match &self.body {
            BatchBody::Stored(b) => b.header().base_offset + u64::from(b.header().record_count),
            BatchBody::Decoded(v) => v.last().map_or(self.first, |m| m.offset + 1),
        }
    }

    /// Records handed out.
    pub fn len(&self) -> usize {
        match &self.body {
            BatchBody::Stored(_) => (self.next_offset() - self.first) as usize,
            BatchBody::Decoded(v) => v.len(),
        }
    }

    /// Whether no record is handed out.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored batch (CRC-checked), unless its records were already decoded.
    pub fn batch(&self) -> Option<&Batch> {
        match &self.body {
            BatchBody::Stored(b) => Some(b),
            BatchBody::Decoded(_) => None,
        }
    }

    /// The records as messages, decoded as the iterator goes.
    pub fn messages(&self) -> impl Iterator<Item = Message> + '_ {
        let (stored, decoded) = match &self.body {
            BatchBody::Stored(b) => (Some(b), None),
            BatchBody::Decoded(v) => (None, Some(v)),
        };
        let first = self.first;
        stored
            .into_iter()
            .flat_map(move |b| {
                b.records()
                    .filter(move |r| r.offset >= first)
                    .map(|r| message(&self.topic, self.shard, r))
            })
            .chain(decoded.into_iter().flat_map(|v| v.iter().cloned()))
    }
}

/// A consumed record as a [`Message`].
fn message(topic: &Arc<str>, shard: u32, r: weir_protocol::batch::Record) -> Message {
    Message {
        topic: topic.clone(),
        shard,
        offset: r.offset,
        priority: r.priority,
        complexity: r.complexity,
        timestamp_ms: r.timestamp_ms,
        key: r.key,
        value: r.value,
        headers: r.headers,
    }
}

/// Builder of a [`Consumer`].
#[derive(Debug, Clone)]
pub struct ConsumerBuilder {
    client: Client,
    config: ConsumerConfig,
    topics: Vec<String>,
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
        })
    }
}

#[derive(Debug, Clone)]
struct Membership {
    member_id: String,
    generation: u32,
}

/// Reads records; see the module docs.
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    topics: Vec<String>,
    membership: Option<Membership>,
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

    /// Up to `max` messages; waits up to `timeout` when none are ready.
    pub async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Message>> {
        let mut deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.rejoin.load(Ordering::Acquire) {
                self.rejoin_group().await?;
                // A rebalance can take up to the rebalance timeout; the caller's wait
                // for messages starts once the consumer has its shards.
                deadline = tokio::time::Instant::now() + timeout;
            }
            // Batches `poll_batches` fetched come first, as messages.
            while let Some(b) = self.batches.pop_front() {
                self.buffered.extend(b.messages());
            }
            if !self.buffered.is_empty() {
                let n = max.min(self.buffered.len());
                let out: Vec<Message> = self.buffered.drain(..n).collect();
                if self.config.order == DeliveryOrder::Priority {
                    let lanes: Vec<u8> = self.buffered_lanes.drain(..n).collect();
                    self.advance_lanes(&out, &lanes);
                    self.apply_lane_floors();
                } else {
                    self.advance(&out);
                }
                self.maybe_auto_commit().await;
                return Ok(out);
            }
            if !self.fetch_until(deadline, false).await? {
                return Ok(Vec::new());
            }
        }
    }

    /// One fetch round for `poll` (decoded messages) or `poll_batches` (whole
    /// batches), unless `deadline` has passed: then commits if due and returns false.
    async fn fetch_until(
        &mut self,
        deadline: tokio::time::Instant,
        whole_batches: bool,
    ) -> Result<bool> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            self.maybe_auto_commit().await;
            return Ok(false);
        }
        self.fetch_round(left.min(self.config.fetch_max_wait), whole_batches)
            .await?;
        let nothing = if whole_batches {
            self.batches.is_empty()
        } else {
            self.buffered.is_empty()
        };
        if nothing && self.positions.is_empty() {
            // Nothing assigned yet (a group still forming): do not spin.
            tokio::time::sleep(left.min(Duration::from_millis(100))).await;
        }
        Ok(true)
    }

    /// Whole fetched batches holding up to `max_records` records (at least one batch
    /// when any is ready); waits up to `timeout` when none are ready. Positions move
    /// past every returned batch, as `poll` moves them past every returned message.
    /// Costs a few operations per batch instead of a decoded [`Message`] per record;
    /// see [`ConsumedBatch`]. Offset order only (`DeliveryOrder::Priority` interleaves
    /// batches by class lanes and keeps per-message cursors: use `poll`).
    pub async fn poll_batches(
        &mut self,
        max_records: usize,
        timeout: Duration,
    ) -> Result<Vec<ConsumedBatch>> {
        if self.config.order == DeliveryOrder::Priority {
            return Err(ClientError::Invalid(
                "poll_batches reads in offset order; use poll for priority order".into(),
            ));
        }
        let mut deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.rejoin.load(Ordering::Acquire) {
                self.rejoin_group().await?;
                deadline = tokio::time::Instant::now() + timeout;
            }
            if !self.buffered.is_empty() {
                // Messages an earlier `poll` decoded go first, one batch per shard run.
                let n = max_records.max(1).min(self.buffered.len());
                let msgs: Vec<Message> = self.buffered.drain(..n).collect();
                self.advance(&msgs);
                let mut out: Vec<ConsumedBatch> = Vec::new();
                for m in msgs {
                    match out.last_mut() {
                        Some(ConsumedBatch {
                            topic,
                            shard,
                            body: BatchBody::Decoded(v),
                            ..
                        }) if *shard == m.shard && Arc::ptr_eq(topic, &m.topic) => v.push(m),
                        _ => out.push(ConsumedBatch {
                            topic: m.topic.clone(),
                            shard: m.shard,
                            first: m.offset,
                            body: BatchBody::Decoded(vec![m]),
                        }),
                    }
                }
                self.maybe_auto_commit().await;
                return Ok(out);
            }
            if !self.batches.is_empty() {
                let mut out = Vec::new();
                let mut n = 0;
                while let Some(b) = self.batches.front() {
                    if !out.is_empty() && n + b.len() > max_records {
                        break;
                    }
                    let b = self.batches.pop_front().expect("front exists");
                    n += b.len();
                    self.positions
                        .insert((b.topic.to_string(), b.shard), b.next_offset());
                    out.push(b);
                }
                self.maybe_auto_commit().await;
                return Ok(out);
            }
            if !self.fetch_until(deadline, true).await? {
                return Ok(Vec::new());
            }
        }
    }

    /// Offset order: each shard's position moves past its last returned message, once
    /// per run of that shard's messages (not once per message).
    fn advance(&mut self, out: &[Message]) {
        let mut i = 0;
        while i < out.len() {
            let first = &out[i];
            let mut j = i + 1;
            while j < out.len()
                && out[j].shard == first.shard
                && Arc::ptr_eq(&out[j].topic, &first.topic)
            {
                j += 1;
            }
            let last = &out[j - 1];
            self.positions
                .insert((last.topic.to_string(), last.shard), last.offset + 1);
            i = j;
        }
    }

    /// Priority order: each returned message moves its lane's cursor, and the shard's
    /// position is the lowest cursor.
    fn advance_lanes(&mut self, out: &[Message], lanes: &[u8]) {
        for (m, lane) in out.iter().zip(lanes) {
            let lane = usize::from(*lane);
            let key = (m.topic.to_string(), m.shard);
            let next = match self.lanes.get_mut(&key) {
                Some(lanes) => {
                    lanes[lane] = lanes[lane].max(m.offset + 1);
                    lanes.iter().copied().min().unwrap_or(m.offset + 1)
                }
                None => m.offset + 1,
            };
            self.positions.insert(key, next);
        }
    }

    /// Drops the buffered messages of one shard (after a seek).
    fn drop_buffered(&mut self, topic: &str, shard: u32) {
        let keep = |m: &Message| !(&*m.topic == topic && m.shard == shard);
        if self.buffered_lanes.is_empty() {
            self.buffered.retain(keep);
            return;
        }
        let (msgs, lanes): (VecDeque<Message>, VecDeque<u8>) = self
            .buffered
            .drain(..)
            .zip(self.buffered_lanes.drain(..))
            .filter(|(m, _)| keep(m))
            .unzip();
        self.buffered = msgs;
        self.buffered_lanes = lanes;
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

    /// Fetches every assigned shard once. With `whole`, keeps each batch for
    /// `poll_batches` instead of decoding its records into messages.
    async fn fetch_round(&mut self, wait: Duration, whole: bool) -> Result<()> {
        let priority = self.config.order == DeliveryOrder::Priority;
        let mut calls = FuturesUnordered::new();
        for ((topic, shard), offset) in &self.positions {
            let client = self.client.clone();
            let timeout = wait + self.client.config().request_timeout;
            let max_wait_ms = wait.as_millis() as u32;
            let (topic, shard, offset) = (topic.clone(), *shard, *offset);
            let lanes = if priority {
                let lanes = self
                    .lanes
                    .entry((topic.clone(), shard))
                    .or_insert([offset; CLASS_COUNT]);
                // A position moved from outside (seek, rejoin, reset) restarts every lane.
                if lanes.iter().copied().min() != Some(offset) {
                    *lanes = [offset; CLASS_COUNT];
                }
                Some(*lanes)
            } else {
                None
            };
            let req: Request = match lanes {
                Some(cursors) => PriorityFetchRequest {
                    topic: topic.clone(),
                    shard,
                    cursors: cursors.to_vec(),
                    max_bytes: self.config.max_fetch_bytes,
                    min_bytes: 1,
                    max_wait_ms,
                }
                .into(),
                None => FetchRequest {
                    topic: topic.clone(),
                    shard,
                    offset,
                    max_bytes: self.config.max_fetch_bytes,
                    min_bytes: 1,
                    max_wait_ms,
                }
                .into(),
            };
            calls.push(async move {
                let r = client.call_with_timeout(req, timeout).await;
                (topic, shard, offset, lanes, r)
            });
        }
        let classes = self.client.class_map();
        let mut reset = Vec::new();
        // THROTTLED (a fetch quota) says when to come back; asking sooner only spins.
        let mut pause = Duration::ZERO;
        while let Some((topic, shard, offset, lanes, r)) = calls.next().await {
            let body = match r {
                Ok(b) => b,
                Err(e) if e.code() == Some(ErrorCode::OffsetOutOfRange) => {
                    reset.push((topic, shard));
                    continue;
                }
                Err(e) if e.is_retriable() => {
                    tracing::debug!(error = %e, "fetch failed; will retry");
                    pause = pause.max(crate::flow::pushback_hint(&e).unwrap_or_default());
                    continue;
                }
                Err(e) => return Err(e),
            };
            let (records, reported) = match body {
                ResponseBody::Fetch(r) => (r.records, None),
                ResponseBody::PriorityFetch(r) => (r.records, Some(r.cursors)),
                other => {
                    return Err(ClientError::Protocol(format!(
                        "expected a fetch response, got {:?}",
                        other.api_key()
                    )))
                }
            };
            let mut served = [false; CLASS_COUNT];
            // One allocation per response; every message of it shares the name.
            let name: Arc<str> = topic.as_str().into();
            for b in split_batches(records.to_bytes()) {
                let batch = Batch::parse(b?)
                    .map_err(|e| ClientError::Protocol(format!("bad batch: {e}")))?;
                let lane = classes.class_of(batch.header().priority).index();
                served[lane] = true;
                let from = lanes.map_or(offset, |l| l[lane]);
                if whole {
                    let h = batch.header();
                    let first = from.max(h.base_offset);
                    if h.base_offset + u64::from(h.record_count) > first {
                        self.batches.push_back(ConsumedBatch {
                            topic: name.clone(),
                            shard,
                            first,
                            body: BatchBody::Stored(batch),
                        });
                    }
                    continue;
                }
                for r in batch.records() {
                    if r.offset < from {
                        continue;
                    }
                    self.buffered.push_back(message(&name, shard, r));
                    if priority {
                        self.buffered_lanes.push_back(lane as u8);
                    }
                }
            }
            // Lanes move as their messages are returned, and to where the broker says
            // their next batch is once all of this shard's messages have been returned.
            if let Some(reported) = reported {
                self.lane_floors.insert((topic.clone(), shard), reported);
            }
        }
        drop(calls);
        if priority {
            self.apply_lane_floors();
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause.min(wait)).await;
        }
        for (topic, shard) in reset {
            let pos = self.reset_position(&topic, shard).await?;
            self.positions.insert((topic, shard), pos);
        }
        Ok(())
    }

    /// Moves the lanes of every shard with no buffered message to the cursors the
    /// broker reported, and the shard's position to their minimum.
    fn apply_lane_floors(&mut self) {
        let done: Vec<(String, u32)> = {
            let buffered: HashSet<(&str, u32)> =
                self.buffered.iter().map(|m| (&*m.topic, m.shard)).collect();
            self.lane_floors
                .keys()
                .filter(|(t, s)| !buffered.contains(&(t.as_str(), *s)))
                .cloned()
                .collect()
        };
        for key in done {
            let floors = self.lane_floors.remove(&key).unwrap_or_default();
            if !self.positions.contains_key(&key) {
                continue; // no longer assigned
            }
            let Some(lanes) = self.lanes.get_mut(&key) else {
                continue;
            };
            for (l, f) in lanes.iter_mut().zip(floors) {
                *l = (*l).max(f);
            }
            if let Some(min) = lanes.iter().copied().min() {
                self.positions.insert(key, min);
            }
        }
    }

    async fn reset_position(&self, topic: &str, shard: u32) -> Result<u64> {
        let ts = match self.config.reset {
            OffsetReset::Earliest => EARLIEST_TIMESTAMP,
            OffsetReset::Latest => LATEST_TIMESTAMP,
        };
        let req = ListOffsetsRequest {
            topic: topic.to_string(),
            shard,
            timestamp_ms: ts,
        };
        Ok(expect_body!(self.client.call(req).await?, ListOffsets)?.offset)
    }

    async fn maybe_auto_commit(&mut self) {
        if self.config.auto_commit
            && self.config.group.is_some()
            && self.last_commit.elapsed() >= self.config.auto_commit_interval
        {
            if let Err(e) = self.commit().await {
                tracing::debug!(error = %e, "auto-commit failed");
            }
        }
    }

    /// The commit of every position returned so far, as this member (or as a consumer
    /// outside group management when it has not joined). `None` without a group.
    fn commit_request(&self) -> Option<CommitOffsetsRequest> {
        let group = self.config.group.clone()?;
        let (member_id, generation) = match &self.membership {
            Some(m) => (m.member_id.clone(), m.generation),
            None => (String::new(), 0),
        };
        Some(CommitOffsetsRequest {
            group,
            member_id,
            generation,
            offsets: self.positions(),
        })
    }

    /// Commits the positions of every message returned so far and waits until the
    /// broker has stored them durably.
    pub async fn commit(&mut self) -> Result<()> {
        let req = self
            .commit_request()
            .ok_or_else(|| ClientError::Invalid("commit needs a group".into()))?;
        self.last_commit = tokio::time::Instant::now();
        let body = self.client.call(req).await;
        if let Err(e) = &body {
            if must_rejoin(e) {
                self.rejoin.store(true, Ordering::Release);
            }
        }
        expect_body!(body?, CommitOffsets).map(|_| ())
    }

    /// Commits in the background; errors are logged.
    pub fn commit_async(&self) {
        let Some(req) = self.commit_request() else {
            return;
        };
        let client = self.client.clone();
        tokio::spawn(async move {
            if let Err(e) = client.call(req).await {
                tracing::warn!(error = %e, "async commit failed");
            }
        });
    }

    /// Leaves the group (committing first when auto-commit is on).
    pub async fn close(mut self) -> Result<()> {
        if self.config.auto_commit && self.membership.is_some() {
            let _ = self.commit().await;
        }
        if let (Some(group), Some(m)) = (self.config.group.clone(), self.membership.take()) {
            let req = LeaveGroupRequest {
                group,
                member_id: m.member_id,
            };
            let _ = self.client.call(req).await;
        }
        Ok(())
    }

    async fn rejoin_group(&mut self) -> Result<()> {
        self.buffered.clear();
        self.buffered_lanes.clear();
        self.batches.clear();
        // Positions come from the group's commits again; lane state of the old
        // assignment must not move them.
        self.lanes.clear();
        self.lane_floors.clear();
        let group_name = self.config.group.clone();
        let shards: Vec<(String, u32)> = match (&group_name, &self.manual) {
            (_, Some(manual)) => manual.clone(),
            (None, None) => {
                let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
                let meta = self.client.metadata(&topics).await?;
                meta.topics
                    .iter()
                    .flat_map(|t| t.shards.iter().map(|s| (t.name.clone(), s.shard)))
                    .collect()
            }
            (Some(group), None) => {
                if self.config.auto_commit && self.membership.is_some() {
                    let _ = self.commit().await;
                }
                let group = group.clone();
                let previous = self
                    .membership
                    .as_ref()
                    .map(|m| m.member_id.clone())
                    .unwrap_or_default();
                let req = JoinGroupRequest {
                    group: group.clone(),
                    member_id: previous,
                    client_id: "weir-consumer".into(),
                    topics: self.topics.clone(),
                    session_timeout_ms: self.config.session_timeout.as_millis() as u32,
                    rebalance_timeout_ms: self.config.rebalance_timeout.as_millis() as u32,
                };
                let timeout = self.config.rebalance_timeout + self.client.config().request_timeout;
                let body = match self
                    .client
                    .call_with_timeout(req.clone().into(), timeout)
                    .await
                {
                    Err(e) if e.code() == Some(ErrorCode::UnknownMemberId) => {
                        let fresh = JoinGroupRequest {
                            member_id: String::new(),
                            ..req
                        };
                        self.client.call_with_timeout(fresh.into(), timeout).await?
                    }
                    other => other?,
                };
                let resp: JoinGroupResponse = expect_body!(body, JoinGroup)?;
                self.membership = Some(Membership {
                    member_id: resp.member_id.clone(),
                    generation: resp.generation,
                });
                self.start_heartbeat(group, resp.member_id.clone(), resp.generation);
                resp.assignment
                    .iter()
                    .flat_map(|a| a.shards.iter().map(|s| (a.topic.clone(), *s)))
                    .collect()
            }
        };
        self.positions.clear();
        let committed: HashMap<(String, u32), u64> = match &self.config.group {
            Some(group) => {
                let req = FetchOffsetsRequest {
                    group: group.clone(),
                    shards: shards
                        .iter()
                        .map(|(t, s)| ShardRef {
                            topic: t.clone(),
                            shard: *s,
                        })
                        .collect(),
                };
                expect_body!(self.client.call(req).await?, FetchOffsets)?
                    .offsets
                    .into_iter()
                    .map(|e| ((e.topic, e.shard), e.offset))
                    .collect()
            }
            None => HashMap::new(),
        };
        for (topic, shard) in shards {
            let pos = match committed.get(&(topic.clone(), shard)) {
                Some(o) => *o,
                None => self.reset_position(&topic, shard).await?,
            };
            self.positions.insert((topic, shard), pos);
        }
        self.rejoin.store(false, Ordering::Release);
        Ok(())
    }

    fn start_heartbeat(&mut self, group: String, member_id: String, generation: u32) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        let client = self.client.clone();
        let flag = self.rejoin.clone();
        let every = (self.config.session_timeout / 4).max(Duration::from_millis(50));
        self.heartbeat = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let req = HeartbeatRequest {
                    group: group.clone(),
                    member_id: member_id.clone(),
                    generation,
                };
                match client.call(req).await {
                    Ok(ResponseBody::Heartbeat(_)) => {}
                    Err(e) if must_rejoin(&e) => {
                        flag.store(true, Ordering::Release);
                        return;
                    }
                    other => tracing::debug!(?other, "heartbeat failed"),
                }
            }
        }));
    }
}

/// Cuts a fetched record set into one `Bytes` per batch without checking them:
/// `Batch::parse` checks each batch's header, CRC and records once (`Records::batches`
/// would check the CRC a second time).
fn split_batches(mut buf: Bytes) -> impl Iterator<Item = Result<Bytes>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        match batch::peek_total_bytes(&buf) {
            Some(total) if total <= buf.len() => Some(Ok(buf.split_to(total))),
            _ => {
                let rest = buf.len();
                buf.clear();
                Some(Err(ClientError::Protocol(format!(
                    "bad batch from broker: {rest} bytes left, not a whole batch"
                ))))
            }
        }
    })
}

/// Whether the broker's answer means this member must re-join its group.
fn must_rejoin(e: &ClientError) -> bool {
    matches!(
        e.code(),
        Some(
            ErrorCode::RebalanceInProgress
                | ErrorCode::IllegalGeneration
                | ErrorCode::UnknownMemberId
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_protocol::batch::{BatchBuilder, NewRecord};

    fn one_batch(value: &[u8]) -> Bytes {
        let mut b = BatchBuilder::new();
        b.push(&NewRecord::value(1, value)).expect("push");
        b.finish().expect("finish")
    }

    #[test]
    fn split_batches_cuts_whole_batches_and_refuses_a_cut_one() {
        let (a, b) = (one_batch(b"first"), one_batch(b"second"));
        let both = Bytes::from([a.as_ref(), b.as_ref()].concat());
        let parts: Vec<Bytes> = split_batches(both.clone())
            .collect::<Result<_>>()
            .expect("two whole batches");
        assert_eq!(parts, vec![a.clone(), b]);
        // A record set cut inside its second batch is an error, never a short batch.
        let cut = both.slice(..both.len() - 3);
        let parts: Vec<Result<Bytes>> = split_batches(cut).collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].as_ref().expect("first is whole"), &a);
        assert!(matches!(parts[1], Err(ClientError::Protocol(_))));
        // A flipped byte is caught by Batch::parse, which checks the CRC.
        let mut bad = a.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let only = split_batches(Bytes::from(bad))
            .next()
            .expect("one")
            .expect("whole");
        assert!(Batch::parse(only).is_err());
    }
}

//! The producer's accumulator task: takes records from `send` and `send_batch`, places
//! each in the open batch of its (topic, shard, class) lane, and hands sealed batches
//! to the lane's sender.
//!
//! Per record it costs one topic lookup (a pointer comparison when the topic is the
//! previous record's), an index into the topic's lanes, and the encoding; clocks and
//! the class map are read once per run of records taken from the channel. A batch
//! leaves when it is full, at its linger deadline, or (with `linger = 0`) as soon as
//! its lane has fewer than `max_in_flight_per_shard` batches in flight: the lane's
//! sender reports every settled batch, so a backlog leaves as one batch the moment
//! there is room.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Mutex, Semaphore};
use tokio::time::Instant;
use weir_protocol::batch::{self, BatchBuilder, NewRecord};
use weir_protocol::classes::{ClassMap, CLASS_COUNT};
use weir_protocol::keys::KeyRule;
use weir_protocol::ErrorCode;
use xxhash_rust::xxh3::Xxh3DefaultBuilder;

use super::sender::{SenderMsg, ShardSender};
use super::{max_record_bytes, Msg, ProducerConfig};
use crate::client::Client;
use crate::delivery::{BatchShared, RecordMetadata, Waiters};
use crate::error::{ClientError, Result};
use crate::partitioner::shard_for_key;
use crate::record::{Partitioning, ProducerBatch, ProducerRecord};

/// Most records the accumulator takes from its channel before it looks at its timer
/// and at its lanes' room.
const RECORDS_PER_RUN: usize = 1024;

/// Least first capacity of a batch (it grows by doubling up to `max_batch_bytes`).
/// A batch starts at the size of its lane's previous batch: small batches, as
/// `linger = 0` sends when idle, should not each allocate a megabyte, and full ones
/// should not be copied while they grow.
const BATCH_START_BYTES: usize = 4 * 1024;

/// A lane: index of its topic in the accumulator, and `shard × CLASS_COUNT + class`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LaneId {
    topic: u32,
    lane: u32,
}

/// What the producer needs to know about a topic to place its records.
#[derive(Debug, Clone)]
struct TopicInfo {
    shards: u32,
    default_priority: u8,
    key_rule: KeyRule,
    /// Largest batch to build for this topic: `max_batch_bytes`, or less when the
    /// topic's `max_message_bytes` is smaller (the broker refuses larger requests).
    batch_bytes_max: usize,
}

struct TopicState {
    name: Arc<str>,
    info: TopicInfo,
    /// `shards × CLASS_COUNT` lanes.
    lanes: Vec<Lane>,
}

#[derive(Default)]
struct Lane {
    open: Option<Open>,
    sender: Option<mpsc::Sender<SenderMsg>>,
    /// Batches handed to the sender and not yet settled.
    outstanding: Arc<AtomicUsize>,
    /// Bytes of the lane's previous batch.
    last_bytes: usize,
}

struct Open {
    builder: BatchBuilder,
    waiters: Waiters,
    /// When a positive linger sends it anyway.
    deadline: Option<Instant>,
}

/// Who waits for the record being added.
enum NewWaiter<'a> {
    Record(oneshot::Sender<Result<RecordMetadata>>),
    Run(&'a Arc<BatchShared>),
}

impl NewWaiter<'_> {
    fn fail(self, e: ClientError) {
        match self {
            NewWaiter::Record(tx) => {
                let _ = tx.send(Err(e));
            }
            NewWaiter::Run(shared) => shared.failed(1, &e),
        }
    }
}

pub(super) struct Accumulator {
    client: Client,
    config: ProducerConfig,
    identity: Option<Arc<Mutex<(u64, u16)>>>,
    topics: Vec<TopicState>,
    by_name: HashMap<Arc<str>, u32, Xxh3DefaultBuilder>,
    /// The previous record's topic, so a run to one topic skips the hash lookup.
    last_topic: Option<(Arc<str>, u32)>,
    /// Lanes with an open batch.
    open_lanes: Vec<LaneId>,
    round_robin: u32,
    /// The producer's record permits, returned when records leave for their sender.
    queue: Arc<Semaphore>,
    /// Permits of records that failed before reaching a batch, returned after the run.
    rejected: usize,
    room_tx: mpsc::UnboundedSender<LaneId>,
    room_rx: Option<mpsc::UnboundedReceiver<LaneId>>,
    /// Read once per run.
    classes: ClassMap,
    now_ms: i64,
    max_record_bytes: usize,
    scratch: Vec<LaneId>,
}

impl Accumulator {
    pub(super) fn new(
        client: Client,
        config: ProducerConfig,
        identity: Option<Arc<Mutex<(u64, u16)>>>,
        queue: Arc<Semaphore>,
    ) -> Accumulator {
        let (room_tx, room_rx) = mpsc::unbounded_channel();
        Accumulator {
            classes: client.class_map(),
            client,
            max_record_bytes: max_record_bytes(&config),
            config,
            identity,
            topics: Vec::new(),
            by_name: HashMap::default(),
            last_topic: None,
            open_lanes: Vec::new(),
            round_robin: 0,
            queue,
            rejected: 0,
            room_tx,
            room_rx: Some(room_rx),
            now_ms: now_ms(),
            scratch: Vec::new(),
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut room_rx = self.room_rx.take().expect("room receiver");
        // One linger timer, moved only when the earliest deadline changes, and records
        // taken from the channel in runs: arming a fresh timer per record cost more than
        // encoding the record (perf: Tokio's timer lock and clock reads).
        let sleep = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        'run: loop {
            let next_deadline = self.next_deadline();
            if next_deadline != armed {
                if let Some(d) = next_deadline {
                    sleep.as_mut().reset(d);
                }
                armed = next_deadline;
            }
            let first = tokio::select! {
                m = rx.recv() => m,
                Some(lane) = room_rx.recv() => {
                    self.on_room(lane).await;
                    continue;
                }
                _ = &mut sleep, if armed.is_some() => {
                    self.dispatch_due().await;
                    armed = None;
                    continue;
                }
            };
            self.classes = self.client.class_map();
            self.now_ms = now_ms();
            let mut next = first;
            let mut taken = 0;
            loop {
                match next {
                    None => break 'run,
                    Some(Msg::Record(rec, waiter)) => {
                        taken += 1;
                        self.add_record(rec, waiter).await;
                    }
                    Some(Msg::Batch(b, shared)) => {
                        taken += b.records.len();
                        self.add_batch(b, shared).await;
                    }
                    Some(Msg::Flush(done)) => self.flush_all(done).await,
                }
                // Only take another message when it will be handled in this run.
                if taken >= RECORDS_PER_RUN {
                    break;
                }
                match rx.try_recv() {
                    Ok(m) => next = Some(m),
                    Err(_) => break,
                }
            }
            self.return_rejected();
            if self.config.linger.is_zero() {
                self.dispatch_ready().await;
            }
            // A busy channel must not keep lingering batches of quiet lanes waiting.
            if next_deadline.is_some_and(|d| d <= Instant::now()) {
                self.dispatch_due().await;
                armed = None;
            }
        }
        self.return_rejected();
        while let Some(id) = self.open_lanes.last().copied() {
            self.dispatch(id).await;
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.open_lanes
            .iter()
            .filter_map(|id| self.lane(*id).open.as_ref().and_then(|o| o.deadline))
            .min()
    }

    fn lane(&self, id: LaneId) -> &Lane {
        &self.topics[id.topic as usize].lanes[id.lane as usize]
    }

    fn lane_mut(&mut self, id: LaneId) -> &mut Lane {
        &mut self.topics[id.topic as usize].lanes[id.lane as usize]
    }

    fn has_room(&self, id: LaneId) -> bool {
        self.lane(id).outstanding.load(Ordering::Acquire) < self.config.max_in_flight_per_shard
    }

    fn return_rejected(&mut self) {
        if self.rejected > 0 {
            self.queue.add_permits(std::mem::take(&mut self.rejected));
        }
    }

    /// A batch of `lane` settled: with `linger = 0` its open batch may go now.
    async fn on_room(&mut self, id: LaneId) {
        if self.config.linger.is_zero() && self.lane(id).open.is_some() && self.has_room(id) {
            self.dispatch(id).await;
        }
    }

    /// `linger = 0`: sends every open batch whose lane has room.
    async fn dispatch_ready(&mut self) {
        let mut ready = std::mem::take(&mut self.scratch);
        ready.clear();
        ready.extend(
            self.open_lanes
                .iter()
                .copied()
                .filter(|id| self.has_room(*id)),
        );
        for id in ready.drain(..) {
            self.dispatch(id).await;
        }
        self.scratch = ready;
    }

    /// Sends every open batch whose linger has expired.
    async fn dispatch_due(&mut self) {
        let now = Instant::now();
        let mut due = std::mem::take(&mut self.scratch);
        due.clear();
        due.extend(self.open_lanes.iter().copied().filter(|id| {
            self.lane(*id)
                .open
                .as_ref()
                .and_then(|o| o.deadline)
                .is_some_and(|d| d <= now)
        }));
        for id in due.drain(..) {
            self.dispatch(id).await;
        }
        self.scratch = due;
    }

    /// Sends every open batch and answers `done` once all sent so far are settled.
    async fn flush_all(&mut self, done: oneshot::Sender<()>) {
        self.return_rejected();
        while let Some(id) = self.open_lanes.last().copied() {
            self.dispatch(id).await;
        }
        let mut acks = Vec::new();
        for lane in self.topics.iter().flat_map(|t| t.lanes.iter()) {
            let Some(s) = &lane.sender else { continue };
            let (tx, rx) = oneshot::channel();
            if s.send(SenderMsg::Flush(tx)).await.is_ok() {
                acks.push(rx);
            }
        }
        tokio::spawn(async move {
            for a in acks {
                let _ = a.await;
            }
            let _ = done.send(());
        });
    }

    /// The index of `topic`, asking the broker about it the first time.
    async fn topic(&mut self, topic: &Arc<str>) -> Result<u32> {
        if let Some((last, i)) = &self.last_topic {
            if Arc::ptr_eq(last, topic) || **last == **topic {
                return Ok(*i);
            }
        }
        if let Some(&i) = self.by_name.get(topic) {
            self.last_topic = Some((topic.clone(), i));
            return Ok(i);
        }
        let m = self.client.metadata(&[topic]).await?;
        let Some(t) = m.topics.into_iter().find(|t| !t.shards.is_empty()) else {
            return Err(ClientError::Broker {
                code: ErrorCode::UnknownTopic,
                message: format!("no topic {topic:?}"),
                retry_after_ms: 0,
            });
        };
        let topic_max = t.config.max_message_bytes as usize;
        let info = TopicInfo {
            shards: t.shards.len() as u32,
            default_priority: t.config.default_priority,
            key_rule: KeyRule::parse(&t.config.shard_key_rule).unwrap_or(KeyRule::None),
            batch_bytes_max: match topic_max {
                0 => self.config.max_batch_bytes,
                n => self.config.max_batch_bytes.min(n),
            },
        };
        let index = self.topics.len() as u32;
        let lanes = (0..info.shards as usize * CLASS_COUNT)
            .map(|_| Lane::default())
            .collect();
        self.topics.push(TopicState {
            name: topic.clone(),
            info,
            lanes,
        });
        self.by_name.insert(topic.clone(), index);
        Ok(index)
    }

    /// The class index of a record of `priority` (unset: the topic's default, as the
    /// broker fills it in before it picks the record's class).
    fn class_of(&self, priority: u8, info: &TopicInfo) -> u32 {
        let effective = if priority == batch::UNSET {
            info.default_priority
        } else {
            priority
        };
        self.classes.class_of(effective).index() as u32
    }

    /// A record as the builder takes it, with the producer's defaults filled in.
    fn new_record<'a>(
        &self,
        priority: Option<u8>,
        complexity: Option<u8>,
        timestamp_ms: Option<i64>,
        key: &'a Option<Bytes>,
        value: &'a Bytes,
        headers: &'a [(&'a str, &'a [u8])],
    ) -> NewRecord<'a> {
        NewRecord {
            priority: priority.unwrap_or(self.config.default_priority),
            complexity: complexity.unwrap_or(self.config.default_complexity),
            timestamp_ms: timestamp_ms.unwrap_or(self.now_ms),
            key: key.as_deref().unwrap_or(&[]),
            value,
            headers,
        }
    }

    /// The lane of a record of `priority` bound for `shard` of topic `t`.
    fn lane_id(&self, t: u32, shard: u32, priority: u8) -> LaneId {
        let class = self.class_of(priority, &self.topics[t as usize].info);
        LaneId {
            topic: t,
            lane: shard * CLASS_COUNT as u32 + class,
        }
    }

    async fn add_record(
        &mut self,
        mut rec: ProducerRecord,
        waiter: oneshot::Sender<Result<RecordMetadata>>,
    ) {
        let t = match self.topic(&rec.topic).await {
            Ok(t) => t,
            Err(e) => {
                self.rejected += 1;
                let _ = waiter.send(Err(e));
                return;
            }
        };
        let info = &self.topics[t as usize].info;
        let shards = info.shards;
        key_from_rule(info, &mut rec.key, &rec.headers, &rec.value);
        let shard = match (rec.shard, &rec.key) {
            (Some(s), _) if s < shards => s,
            (Some(s), _) => {
                self.rejected += 1;
                let _ = waiter.send(Err(ClientError::Invalid(format!(
                    "shard {s} out of range: topic has {shards}"
                ))));
                return;
            }
            (None, Some(k)) if !k.is_empty() => shard_for_key(k, shards),
            // Unkeyed records stick to one shard until its batch is sent.
            (None, _) => self.round_robin % shards,
        };
        let headers = header_refs(&rec.headers);
        let new = self.new_record(
            rec.priority,
            rec.complexity,
            rec.timestamp_ms,
            &rec.key,
            &rec.value,
            &headers,
        );
        let id = self.lane_id(t, shard, new.priority);
        if let Err(waiter) = self.push_open(id, &new, NewWaiter::Record(waiter)) {
            self.append(id, &new, waiter, 0).await;
        }
    }

    async fn add_batch(&mut self, b: ProducerBatch, shared: Arc<BatchShared>) {
        let n = b.records.len();
        let t = match self.topic(&b.topic).await {
            Ok(t) => t,
            Err(e) => {
                self.rejected += n;
                shared.failed(n as u64, &e);
                return;
            }
        };
        let shards = self.topics[t as usize].info.shards;
        let (fixed, batch_key): (Option<u32>, Option<Bytes>) = match b.partitioning {
            Partitioning::Shard(s) if s < shards => (Some(s), None),
            Partitioning::Shard(s) => {
                self.rejected += n;
                let e = ClientError::Invalid(format!("shard {s} out of range: topic has {shards}"));
                shared.failed(n as u64, &e);
                return;
            }
            Partitioning::Key(k) if !k.is_empty() => (Some(shard_for_key(&k, shards)), Some(k)),
            Partitioning::Key(_) | Partitioning::PerRecord => (None, None),
        };
        // Unkeyed records of one call stick to one shard.
        let sticky = self.round_robin % shards;
        let mut left = n;
        for mut rec in b.records {
            left -= 1;
            if rec.key.as_ref().is_none_or(|k| k.is_empty()) {
                if let Some(k) = &batch_key {
                    rec.key = Some(k.clone());
                }
            }
            key_from_rule(
                &self.topics[t as usize].info,
                &mut rec.key,
                &rec.headers,
                &rec.value,
            );
            let shard = match (fixed, &rec.key) {
                (Some(s), _) => s,
                (None, Some(k)) if !k.is_empty() => shard_for_key(k, shards),
                (None, _) => sticky,
            };
            let headers = header_refs(&rec.headers);
            let new = self.new_record(
                rec.priority,
                rec.complexity,
                rec.timestamp_ms,
                &rec.key,
                &rec.value,
                &headers,
            );
            let id = self.lane_id(t, shard, new.priority);
            if self.push_open(id, &new, NewWaiter::Run(&shared)).is_err() {
                // Room for the rest of the call, if it is like this record.
                let hint = new.encoded_bytes().saturating_mul(left + 1);
                self.append(id, &new, NewWaiter::Run(&shared), hint).await;
            }
        }
    }

    /// The common case without an await: the lane has an open batch that takes the
    /// record and stays below `max_batch_bytes`. Otherwise hands the waiter back for
    /// [`Accumulator::append`].
    fn push_open<'a>(
        &mut self,
        id: LaneId,
        new: &NewRecord<'_>,
        waiter: NewWaiter<'a>,
    ) -> std::result::Result<(), NewWaiter<'a>> {
        let max = self.topics[id.topic as usize].info.batch_bytes_max;
        let Some(open) = self.topics[id.topic as usize].lanes[id.lane as usize]
            .open
            .as_mut()
        else {
            return Err(waiter);
        };
        if open.builder.size_bytes() + new.encoded_bytes() >= max || open.builder.push(new).is_err()
        {
            return Err(waiter);
        }
        match waiter {
            NewWaiter::Record(tx) => open.waiters.push_record(tx),
            NewWaiter::Run(shared) => open.waiters.push_run(shared),
        }
        Ok(())
    }

    /// Adds one encoded record to its lane's open batch (sealing the open one first if
    /// the record would overflow it), then sends the batch if it is full. `hint` is the
    /// bytes a new batch should reserve at least (beyond the lane's previous size).
    async fn append(
        &mut self,
        id: LaneId,
        new: &NewRecord<'_>,
        waiter: NewWaiter<'_>,
        hint: usize,
    ) {
        let size = new.encoded_bytes();
        if size + batch::BATCH_HEADER_BYTES > self.max_record_bytes {
            self.rejected += 1;
            waiter.fail(ClientError::Invalid(
                "record larger than 16 × max_batch_bytes".into(),
            ));
            return;
        }
        let max = self.topics[id.topic as usize].info.batch_bytes_max;
        let overflow = self
            .lane(id)
            .open
            .as_ref()
            .is_some_and(|o| o.builder.size_bytes() + size > max);
        if overflow {
            self.dispatch(id).await;
        }
        let linger = self.config.linger;
        if self.lane(id).open.is_none() {
            let want = hint.max(self.lane(id).last_bytes).max(BATCH_START_BYTES);
            let cap = (batch::BATCH_HEADER_BYTES + want).min(max).min(4 << 20);
            self.lane_mut(id).open = Some(Open {
                builder: BatchBuilder::with_capacity(cap),
                waiters: Waiters::default(),
                deadline: (!linger.is_zero()).then(|| Instant::now() + linger),
            });
            self.open_lanes.push(id);
        }
        let open = self.lane_mut(id).open.as_mut().expect("opened above");
        if let Err(e) = open.builder.push(new) {
            self.rejected += 1;
            waiter.fail(ClientError::Invalid(e.to_string()));
            return;
        }
        match waiter {
            NewWaiter::Record(tx) => open.waiters.push_record(tx),
            NewWaiter::Run(shared) => open.waiters.push_run(shared),
        }
        if open.builder.size_bytes() >= max {
            self.dispatch(id).await;
        }
    }

    /// Hands the lane's open batch to its sender (starting the sender on first use).
    async fn dispatch(&mut self, id: LaneId) {
        if let Some(i) = self.open_lanes.iter().position(|l| *l == id) {
            self.open_lanes.swap_remove(i);
        }
        let Some(open) = self.lane_mut(id).open.take() else {
            return;
        };
        if open.waiters.is_empty() {
            return;
        }
        let records = open.builder.record_count() as usize;
        self.lane_mut(id).last_bytes = open.builder.size_bytes();
        self.round_robin = self.round_robin.wrapping_add(1);
        let sender = match &self.lane(id).sender {
            Some(s) => s.clone(),
            None => {
                let (tx, rx) = mpsc::channel(self.config.max_in_flight_per_shard * 2);
                let topic = &self.topics[id.topic as usize];
                let s = ShardSender {
                    client: self.client.clone(),
                    config: self.config.clone(),
                    identity: self.identity.clone(),
                    topic: topic.name.clone(),
                    shard: id.lane / CLASS_COUNT as u32,
                    lane: id,
                    outstanding: topic.lanes[id.lane as usize].outstanding.clone(),
                    room: self.room_tx.clone(),
                    epoch_used: None,
                    next_seq: 0,
                };
                tokio::spawn(s.run(rx));
                self.lane_mut(id).sender = Some(tx.clone());
                tx
            }
        };
        self.lane(id).outstanding.fetch_add(1, Ordering::AcqRel);
        let _ = sender
            .send(SenderMsg::Batch(open.builder, open.waiters))
            .await;
        self.queue.add_permits(records);
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A record without a key takes one from the topic's shard-key rule, exactly as the
/// broker would derive it.
fn key_from_rule(
    info: &TopicInfo,
    key: &mut Option<Bytes>,
    headers: &[(String, Bytes)],
    value: &Bytes,
) {
    if key.as_ref().is_none_or(|k| k.is_empty()) && info.key_rule != KeyRule::None {
        let headers = headers.iter().map(|(n, v)| (n.as_str(), v.as_ref()));
        *key = info.key_rule.derive(headers, value);
    }
}

/// Header fields as the builder takes them (no allocation when there are none).
fn header_refs(headers: &[(String, Bytes)]) -> Vec<(&str, &[u8])> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_ref()))
        .collect()
}

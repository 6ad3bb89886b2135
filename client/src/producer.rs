//! [`Producer`]: batches records per shard, sends them pipelined, retries without
//! duplicates.
//!
//! `send` puts a record into the open batch of its (shard, priority class) and returns
//! at once with a [`DeliveryFuture`]. A batch is sealed when it reaches
//! `max_batch_bytes` or has lingered for `linger`. Each (shard, class) has a sender
//! task that keeps up to `max_in_flight_per_shard` batches in flight on one connection;
//! the broker writes a connection's produces of one class to a shard in the order they
//! arrive, so order per (shard key, class) holds, while a P0 batch may overtake P3
//! batches sent before it. When a batch fails with a retriable error, every batch of
//! its class after it is re-sent in order after the backoff. With idempotence (the
//! default) each batch carries the producer id, epoch and a per-(shard, class)
//! sequence number, so a batch that was written but whose ack was lost is recognised
//! on retry and not written twice.
//!
//! A record without a key gets one from the topic's shard-key rule (if the topic has
//! one) before its shard is chosen, exactly as the broker would derive it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::time::Instant;
use weir_protocol::batch::{self, BatchBuilder, NewRecord};
use weir_protocol::keys::KeyRule;
use weir_protocol::messages::*;
use weir_protocol::{ErrorCode, ResponseBody};

use crate::client::{expect_body, Client};
use crate::error::{ClientError, Result};
use crate::flow::{self, Backpressure, Pushback};
use crate::partitioner::shard_for_key;

/// Settings of a [`Producer`].
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a batch may wait for more records before it is sent.
    pub linger: Duration,
    /// A batch is sent once it reaches this size.
    pub max_batch_bytes: usize,
    pub acks: Acks,
    /// Producer id + epoch + sequence numbers, so retries never duplicate.
    pub idempotent: bool,
    /// Attempts after the first for a retriable failure.
    pub retries: u32,
    /// Wait before a retry (doubled per attempt, capped at 32×).
    pub retry_backoff: Duration,
    /// Batches in flight per shard.
    pub max_in_flight_per_shard: usize,
    /// Priority of records that do not set one (1 highest … 10; 0 = the topic's
    /// default, filled in by the broker).
    pub default_priority: u8,
    /// Complexity of records that do not set one (1 … 5; 0 = the topic's default).
    pub default_complexity: u8,
    /// Longest wait for one produce's answer.
    pub request_timeout: Duration,
    /// Records that may wait in the producer before `send` waits for room.
    pub max_queued_records: usize,
    /// What to do when the queue is full or the broker says THROTTLED or SHED (see
    /// [`crate::flow`]).
    pub backpressure: Backpressure,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            linger: Duration::from_millis(5),
            max_batch_bytes: 1024 * 1024,
            acks: Acks::Leader,
            idempotent: true,
            retries: 10,
            retry_backoff: Duration::from_millis(50),
            max_in_flight_per_shard: 5,
            default_priority: batch::DEFAULT_PRIORITY,
            default_complexity: batch::DEFAULT_COMPLEXITY,
            request_timeout: Duration::from_secs(30),
            max_queued_records: 100_000,
            backpressure: Backpressure::default(),
        }
    }
}

/// One record to send.
#[derive(Debug, Clone)]
pub struct ProducerRecord {
    pub topic: String,
    /// The shard key: records with equal keys go to the same shard, in order.
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub priority: Option<u8>,
    pub complexity: Option<u8>,
    pub headers: Vec<(String, Bytes)>,
    /// Send to this shard instead of hashing the key.
    pub shard: Option<u32>,
    /// Milliseconds since the Unix epoch; now when unset.
    pub timestamp_ms: Option<i64>,
}

impl ProducerRecord {
    /// A record with a value and nothing else set.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        ProducerRecord {
            topic: topic.into(),
            key: None,
            value: value.into(),
            priority: None,
            complexity: None,
            headers: Vec::new(),
            shard: None,
            timestamp_ms: None,
        }
    }
    /// Sets the shard key.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }
    /// Sets the priority (1 highest … 10).
    pub fn priority(mut self, p: u8) -> Self {
        self.priority = Some(p);
        self
    }
    /// Sets the complexity (1 … 5).
    pub fn complexity(mut self, c: u8) -> Self {
        self.complexity = Some(c);
        self
    }
    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    /// Pins the shard.
    pub fn shard(mut self, shard: u32) -> Self {
        self.shard = Some(shard);
        self
    }
    /// Sets the timestamp.
    pub fn timestamp_ms(mut self, ts: i64) -> Self {
        self.timestamp_ms = Some(ts);
        self
    }
}

/// Where an acknowledged record is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMetadata {
    pub shard: u32,
    pub offset: u64,
}

/// Resolves when the record is acknowledged at the producer's ack level (immediately
/// after sending for `acks=none`, with offset `u64::MAX`).
pub struct DeliveryFuture {
    rx: oneshot::Receiver<Result<RecordMetadata>>,
}

impl std::future::Future for DeliveryFuture {
    type Output = Result<RecordMetadata>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed)))
    }
}

type Waiter = oneshot::Sender<Result<RecordMetadata>>;

enum Msg {
    Record(ProducerRecord, Waiter),
    Flush(oneshot::Sender<()>),
}

/// Builder of a [`Producer`].
#[derive(Debug, Clone)]
pub struct ProducerBuilder {
    client: Client,
    config: ProducerConfig,
}

impl ProducerBuilder {
    /// Linger time.
    pub fn linger(mut self, d: Duration) -> Self {
        self.config.linger = d;
        self
    }
    /// Maximum batch size in bytes.
    pub fn max_batch_bytes(mut self, n: usize) -> Self {
        self.config.max_batch_bytes = n;
        self
    }
    /// Ack level.
    pub fn acks(mut self, acks: Acks) -> Self {
        self.config.acks = acks;
        self
    }
    /// Idempotence (on by default).
    pub fn idempotent(mut self, on: bool) -> Self {
        self.config.idempotent = on;
        self
    }
    /// Retries for retriable errors.
    pub fn retries(mut self, n: u32) -> Self {
        self.config.retries = n;
        self
    }
    /// Backoff before the first retry.
    pub fn retry_backoff(mut self, d: Duration) -> Self {
        self.config.retry_backoff = d;
        self
    }
    /// In-flight batches per shard.
    pub fn max_in_flight_per_shard(mut self, n: usize) -> Self {
        self.config.max_in_flight_per_shard = n.max(1);
        self
    }
    /// Default priority of records.
    pub fn priority(mut self, p: u8) -> Self {
        self.config.default_priority = p;
        self
    }
    /// Default complexity of records.
    pub fn complexity(mut self, c: u8) -> Self {
        self.config.default_complexity = c;
        self
    }
    /// Back-pressure policy.
    pub fn backpressure(mut self, policy: Backpressure) -> Self {
        self.config.backpressure = policy;
        self
    }
    /// All settings at once.
    pub fn config(mut self, config: ProducerConfig) -> Self {
        self.config = config;
        self
    }

    /// Starts the producer (gets a producer id when idempotent).
    pub async fn build(self) -> Result<Producer> {
        let c = &self.config;
        if !batch::WIRE_PRIORITY_RANGE.contains(&c.default_priority) {
            return Err(ClientError::Invalid(
                "priority must be 1..=10 (or 0 for the topic's default)".into(),
            ));
        }
        if !batch::WIRE_COMPLEXITY_RANGE.contains(&c.default_complexity) {
            return Err(ClientError::Invalid(
                "complexity must be 1..=5 (or 0 for the topic's default)".into(),
            ));
        }
        let identity = if c.idempotent {
            let r = init_producer_id(&self.client, 0, 0).await?;
            Some(Arc::new(Mutex::new(r)))
        } else {
            None
        };
        let (tx, rx) = mpsc::channel(c.max_queued_records.max(1));
        let acc = Accumulator {
            client: self.client.clone(),
            config: self.config.clone(),
            identity,
            topics: HashMap::new(),
            open: HashMap::new(),
            senders: HashMap::new(),
            round_robin: 0,
        };
        tokio::spawn(acc.run(rx));
        Ok(Producer {
            tx,
            backpressure: self.config.backpressure,
        })
    }
}

async fn init_producer_id(client: &Client, id: u64, epoch: u16) -> Result<(u64, u16)> {
    let req = InitProducerIdRequest {
        producer_id: id,
        producer_epoch: epoch,
    };
    let r = expect_body!(client.call(req).await?, InitProducerId)?;
    Ok((r.producer_id, r.producer_epoch))
}

/// Sends records to a broker; see the module docs.
#[derive(Debug, Clone)]
pub struct Producer {
    tx: mpsc::Sender<Msg>,
    backpressure: Backpressure,
}

impl Producer {
    /// A builder over `client`.
    pub fn builder(client: &Client) -> ProducerBuilder {
        ProducerBuilder {
            client: client.clone(),
            config: ProducerConfig::default(),
        }
    }

    /// Queues a record. When `max_queued_records` are already queued, waits or fails
    /// as the back-pressure policy says (`ClientError::QueueFull`).
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture> {
        let (tx, rx) = oneshot::channel();
        let msg = Msg::Record(record, tx);
        match self.backpressure {
            Backpressure::Block => self.tx.send(msg).await.map_err(|_| ClientError::Closed)?,
            Backpressure::BlockFor(d) => match tokio::time::timeout(d, self.tx.send(msg)).await {
                Ok(r) => r.map_err(|_| ClientError::Closed)?,
                Err(_) => return Err(ClientError::QueueFull(format!("no room within {d:?}"))),
            },
            Backpressure::FailFast => self.tx.try_send(msg).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ClientError::QueueFull("no room".into()),
                mpsc::error::TrySendError::Closed(_) => ClientError::Closed,
            })?,
        }
        Ok(DeliveryFuture { rx })
    }

    /// Sends a record and waits for its acknowledgement.
    pub async fn send_and_wait(&self, record: ProducerRecord) -> Result<RecordMetadata> {
        self.send(record).await?.await
    }

    /// Sends every lingering batch and waits until every record sent before this call
    /// is acknowledged or failed.
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Flush(tx))
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)
    }
}

struct Open {
    builder: BatchBuilder,
    waiters: Vec<Waiter>,
    deadline: Instant,
}

/// What the producer needs to know about a topic to place its records.
#[derive(Debug, Clone)]
struct TopicInfo {
    shards: u32,
    default_priority: u8,
    key_rule: KeyRule,
}

/// Most records the accumulator takes from its channel before it looks at its timer.
const RECORDS_PER_RUN: usize = 1024;

/// A batch's destination: topic, shard and priority class index.
type LaneKey = (String, u32, u8);

struct Accumulator {
    client: Client,
    config: ProducerConfig,
    identity: Option<Arc<Mutex<(u64, u16)>>>,
    topics: HashMap<String, TopicInfo>,
    open: HashMap<LaneKey, Open>,
    senders: HashMap<LaneKey, mpsc::Sender<SenderMsg>>,
    round_robin: u32,
}

enum SenderMsg {
    Batch(BatchBuilder, Vec<Waiter>),
    Flush(oneshot::Sender<()>),
}

impl Accumulator {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        // One linger timer, moved only when the earliest deadline changes, and records
        // taken from the channel in runs: arming a fresh timer per record cost more than
        // encoding the record (perf: Tokio's timer lock and clock reads).
        let sleep = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        'run: loop {
            let next_deadline = self.open.values().map(|o| o.deadline).min();
            if next_deadline != armed {
                if let Some(d) = next_deadline {
                    sleep.as_mut().reset(d);
                }
                armed = next_deadline;
            }
            let first = tokio::select! {
                m = rx.recv() => m,
                _ = &mut sleep, if armed.is_some() => {
                    self.dispatch_due().await;
                    armed = None;
                    continue;
                }
            };
            let mut next = first;
            let mut taken = 0;
            loop {
                match next {
                    None => break 'run,
                    Some(Msg::Record(rec, waiter)) => self.add(rec, waiter).await,
                    Some(Msg::Flush(done)) => self.flush_all(done).await,
                }
                taken += 1;
                // Only take another message when it will be handled in this run.
                if taken == RECORDS_PER_RUN {
                    break;
                }
                match rx.try_recv() {
                    Ok(m) => next = Some(m),
                    Err(_) => break,
                }
            }
            // A busy channel must not keep lingering batches of quiet lanes waiting.
            if next_deadline.is_some_and(|d| d <= Instant::now()) {
                self.dispatch_due().await;
                armed = None;
            }
        }
        let keys: Vec<_> = self.open.keys().cloned().collect();
        for k in keys {
            self.dispatch(&k).await;
        }
    }

    /// Sends every open batch whose linger has expired.
    async fn dispatch_due(&mut self) {
        let now = Instant::now();
        let due: Vec<_> = self
            .open
            .iter()
            .filter(|(_, o)| o.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.dispatch(&k).await;
        }
    }

    /// Sends every open batch and answers `done` once all sent so far are settled.
    async fn flush_all(&mut self, done: oneshot::Sender<()>) {
        let keys: Vec<_> = self.open.keys().cloned().collect();
        for k in keys {
            self.dispatch(&k).await;
        }
        let mut acks = Vec::new();
        for s in self.senders.values() {
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

    async fn topic(&mut self, topic: &str) -> Result<TopicInfo> {
        if let Some(t) = self.topics.get(topic) {
            return Ok(t.clone());
        }
        let m = self.client.metadata(&[topic]).await?;
        let Some(t) = m.topics.into_iter().find(|t| !t.shards.is_empty()) else {
            return Err(ClientError::Broker {
                code: ErrorCode::UnknownTopic,
                message: format!("no topic {topic:?}"),
                retry_after_ms: 0,
            });
        };
        let info = TopicInfo {
            shards: t.shards.len() as u32,
            default_priority: t.config.default_priority,
            key_rule: KeyRule::parse(&t.config.shard_key_rule).unwrap_or(KeyRule::None),
        };
        self.topics.insert(topic.to_string(), info.clone());
        Ok(info)
    }

    async fn add(&mut self, mut rec: ProducerRecord, waiter: Waiter) {
        let topic = match self.topic(&rec.topic).await {
            Ok(t) => t,
            Err(e) => {
                let _ = waiter.send(Err(e));
                return;
            }
        };
        let shards = topic.shards;
        if rec.key.as_ref().is_none_or(|k| k.is_empty()) && topic.key_rule != KeyRule::None {
            let headers = rec.headers.iter().map(|(n, v)| (n.as_str(), v.as_ref()));
            rec.key = topic.key_rule.derive(headers, &rec.value);
        }
        let shard = match (rec.shard, &rec.key) {
            (Some(s), _) if s < shards => s,
            (Some(s), _) => {
                let _ = waiter.send(Err(ClientError::Invalid(format!(
                    "shard {s} out of range: topic has {shards}"
                ))));
                return;
            }
            (None, Some(k)) if !k.is_empty() => shard_for_key(k, shards),
            // Unkeyed records stick to one shard until its batch is sent.
            (None, _) => self.round_robin % shards,
        };
        let headers: Vec<(&str, &[u8])> = rec
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_ref()))
            .collect();
        let priority = rec.priority.unwrap_or(self.config.default_priority);
        // The broker fills an unset priority with the topic default before it picks
        // the record's class; do the same so sequences stay per class.
        let effective = if priority == batch::UNSET {
            topic.default_priority
        } else {
            priority
        };
        let class = self.client.class_map().class_of(effective).index() as u8;
        let new = NewRecord {
            priority,
            complexity: rec.complexity.unwrap_or(self.config.default_complexity),
            timestamp_ms: rec.timestamp_ms.unwrap_or_else(now_ms),
            key: rec.key.as_deref().unwrap_or(&[]),
            value: &rec.value,
            headers: &headers,
        };
        if new.encoded_bytes() + batch::BATCH_HEADER_BYTES
            > self.config.max_batch_bytes.max(1 << 20) * 16
        {
            let _ = waiter.send(Err(ClientError::Invalid(
                "record larger than 16 × max_batch_bytes".into(),
            )));
            return;
        }
        let key = (rec.topic.clone(), shard, class);
        // Seal the open batch first if this record would overflow it.
        let overflow = self.open.get(&key).is_some_and(|o| {
            o.builder.size_bytes() + new.encoded_bytes() > self.config.max_batch_bytes
        });
        if overflow {
            self.dispatch(&key).await;
        }
        let linger = self.config.linger;
        let cap = self.config.max_batch_bytes.min(4 << 20);
        let open = self.open.entry(key.clone()).or_insert_with(|| Open {
            builder: BatchBuilder::with_capacity(cap),
            waiters: Vec::new(),
            deadline: Instant::now() + linger,
        });
        if let Err(e) = open.builder.push(&new) {
            let _ = waiter.send(Err(ClientError::Invalid(e.to_string())));
            return;
        }
        open.waiters.push(waiter);
        if open.builder.size_bytes() >= self.config.max_batch_bytes || linger.is_zero() {
            self.dispatch(&key).await;
        }
    }

    async fn dispatch(&mut self, key: &LaneKey) {
        let Some(open) = self.open.remove(key) else {
            return;
        };
        if open.waiters.is_empty() {
            return;
        }
        self.round_robin = self.round_robin.wrapping_add(1);
        let sender = match self.senders.get(key) {
            Some(s) => s.clone(),
            None => {
                let (tx, rx) = mpsc::channel(self.config.max_in_flight_per_shard * 2);
                let s = ShardSender {
                    client: self.client.clone(),
                    config: self.config.clone(),
                    identity: self.identity.clone(),
                    topic: key.0.clone(),
                    shard: key.1,
                    epoch_used: None,
                    next_seq: 0,
                };
                tokio::spawn(s.run(rx));
                self.senders.insert(key.clone(), tx.clone());
                tx
            }
        };
        let _ = sender
            .send(SenderMsg::Batch(open.builder, open.waiters))
            .await;
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct Item {
    bytes: Bytes,
    record_count: u32,
    waiters: Vec<Waiter>,
    attempts: u32,
    /// First THROTTLED/SHED/breaker refusal of this batch (for `BlockFor`).
    pushed_back_since: Option<std::time::Instant>,
}

struct ShardSender {
    client: Client,
    config: ProducerConfig,
    identity: Option<Arc<Mutex<(u64, u16)>>>,
    topic: String,
    shard: u32,
    /// (producer id, epoch) the sequence numbers below belong to.
    epoch_used: Option<(u64, u16)>,
    next_seq: u32,
}

type InFlight =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<ProduceResponse>> + Send>>;

impl ShardSender {
    async fn stamp(&mut self, builder: BatchBuilder) -> Result<Item> {
        let count = builder.record_count();
        let builder = match &self.identity {
            Some(id) => {
                let ident = *id.lock().await;
                if self.epoch_used != Some(ident) {
                    self.epoch_used = Some(ident);
                    self.next_seq = 0;
                }
                let b = builder.producer(ident.0, ident.1, self.next_seq);
                self.next_seq = self.next_seq.wrapping_add(count);
                b
            }
            None => builder,
        };
        let bytes = builder
            .finish()
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        Ok(Item {
            bytes,
            record_count: count,
            waiters: Vec::new(),
            attempts: 0,
            pushed_back_since: None,
        })
    }

    /// Gives queued batches new sequence numbers under a new epoch (after a batch was
    /// given up, its successors would otherwise leave a gap).
    async fn bump_epoch(&mut self, queue: &mut VecDeque<Item>) -> Result<()> {
        let Some(id) = &self.identity else {
            return Ok(());
        };
        let mut ident = id.lock().await;
        if Some(*ident) == self.epoch_used {
            *ident = init_producer_id(&self.client, ident.0, ident.1).await?;
        }
        self.epoch_used = Some(*ident);
        self.next_seq = 0;
        for item in queue.iter_mut() {
            let mut v = item.bytes.to_vec();
            v[44..52].copy_from_slice(&ident.0.to_le_bytes());
            v[52..54].copy_from_slice(&ident.1.to_le_bytes());
            v[56..60].copy_from_slice(&self.next_seq.to_le_bytes());
            let crc = batch::compute_crc(&v);
            v[16..20].copy_from_slice(&crc.to_le_bytes());
            self.next_seq = self.next_seq.wrapping_add(item.record_count);
            item.bytes = Bytes::from(v);
        }
        Ok(())
    }

    fn send_one(&self, item: &Item) -> InFlight {
        let client = self.client.clone();
        let req = ProduceRequest {
            topic: self.topic.clone(),
            shard: self.shard,
            acks: self.config.acks,
            timeout_ms: self
                .config
                .request_timeout
                .as_millis()
                .min(u32::MAX as u128) as u32,
            records: Records::from_bytes(item.bytes.clone()),
        };
        let acks = self.config.acks;
        let timeout = self.config.request_timeout + Duration::from_secs(1);
        // The request is as urgent as its batch's most urgent record.
        let priority = batch::BatchHeader::read(&item.bytes).map_or(0, |h| h.priority);
        Box::pin(async move {
            client.breaker_admit()?;
            let outcome = async {
                let conn = client.connection().await?;
                if acks == Acks::None {
                    conn.send(req.into(), priority, false).await?;
                    return Ok(ProduceResponse {
                        base_offset: u64::MAX,
                        last_offset: u64::MAX,
                        log_start_offset: 0,
                        duplicate: 0,
                    });
                }
                let frame = conn.call(req.into(), priority, timeout).await?;
                let body: ResponseBody = crate::connection::into_body(frame)?;
                expect_body!(body, Produce)
            }
            .await;
            client.breaker_record(&outcome);
            outcome
        })
    }

    async fn run(mut self, mut rx: mpsc::Receiver<SenderMsg>) {
        let mut queue: VecDeque<Item> = VecDeque::new();
        let mut sent: VecDeque<Item> = VecDeque::new();
        let mut in_flight: FuturesOrdered<InFlight> = FuturesOrdered::new();
        let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
        let mut closed = false;
        let mut backoff_until: Option<Instant> = None;
        loop {
            if backoff_until.is_some_and(|t| Instant::now() >= t) {
                backoff_until = None;
            }
            while backoff_until.is_none() && sent.len() < self.config.max_in_flight_per_shard {
                let Some(item) = queue.pop_front() else { break };
                in_flight.push_back(self.send_one(&item));
                sent.push_back(item);
            }
            if queue.is_empty() && sent.is_empty() {
                for f in flushes.drain(..) {
                    let _ = f.send(());
                }
                if closed {
                    return;
                }
            }
            tokio::select! {
                msg = rx.recv(), if !closed && queue.len() < self.config.max_in_flight_per_shard => match msg {
                    None => closed = true,
                    Some(SenderMsg::Flush(f)) => flushes.push(f),
                    Some(SenderMsg::Batch(b, waiters)) => match self.stamp(b).await {
                        Ok(mut item) => {
                            item.waiters = waiters;
                            queue.push_back(item);
                        }
                        Err(e) => fail(waiters, e),
                    },
                },
                _ = async { tokio::time::sleep_until(backoff_until.expect("backoff")).await }, if backoff_until.is_some() => {}
                res = in_flight.next(), if !in_flight.is_empty() => {
                    let res = res.expect("non-empty");
                    let mut item = sent.pop_front().expect("sent matches in_flight");
                    match res {
                        Ok(r) => resolve(item, self.shard, r),
                        Err(e) => {
                            item.attempts += 1;
                            let push = flow::pushback(self.config.backpressure, &e, &mut item.pushed_back_since, std::time::Instant::now());
                            let retriable = match push {
                                Pushback::GiveUp => false,
                                Pushback::Wait(_) => {
                                    // Waiting out back-pressure is not a failed attempt.
                                    item.attempts -= 1;
                                    true
                                }
                                Pushback::No => e.is_retriable() || e.code() == Some(ErrorCode::OutOfOrderSequence),
                            };
                            // Everything sent after the failed batch settles first.
                            let mut again = VecDeque::new();
                            while let Some(r) = in_flight.next().await {
                                let later = sent.pop_front().expect("sent matches in_flight");
                                match r {
                                    Ok(r) => resolve(later, self.shard, r),
                                    Err(_) => again.push_back(later),
                                }
                            }
                            if retriable && item.attempts <= self.config.retries {
                                again.push_front(item);
                                let factor = 1u32 << (item_attempts(&again) - 1).min(5);
                                let mut wait = self.config.retry_backoff * factor;
                                if let Pushback::Wait(after) = push {
                                    wait = after;
                                }
                                backoff_until = Some(Instant::now() + wait);
                            } else {
                                tracing::warn!(topic = %self.topic, shard = self.shard, error = %e, "batch failed");
                                fail(std::mem::take(&mut item.waiters), e.clone());
                                if e.code() == Some(ErrorCode::ProducerFenced) {
                                    for it in again.drain(..).chain(queue.drain(..)) {
                                        fail(it.waiters, e.clone());
                                    }
                                }
                            }
                            while let Some(it) = again.pop_back() {
                                queue.push_front(it);
                            }
                            if !retriable || e.code() == Some(ErrorCode::OutOfOrderSequence) {
                                if let Err(e2) = self.bump_epoch(&mut queue).await {
                                    tracing::warn!(error = %e2, "could not bump producer epoch");
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn item_attempts(q: &VecDeque<Item>) -> u32 {
    q.front().map_or(1, |i| i.attempts.max(1))
}

fn resolve(item: Item, shard: u32, r: ProduceResponse) {
    for (i, w) in item.waiters.into_iter().enumerate() {
        let offset = if r.base_offset == u64::MAX {
            u64::MAX
        } else {
            r.base_offset + i as u64
        };
        let _ = w.send(Ok(RecordMetadata { shard, offset }));
    }
}

fn fail(waiters: Vec<Waiter>, e: ClientError) {
    for w in waiters {
        let _ = w.send(Err(e.clone()));
    }
}

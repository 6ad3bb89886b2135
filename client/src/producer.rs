//! [`Producer`]: batches records per shard, sends them pipelined, retries without
//! duplicates.
//!
//! `send` puts a record into the open batch of its (shard, priority class) and returns
//! at once with a [`DeliveryFuture`]; `send_batch` does the same for many records of
//! one topic and returns one [`BatchDeliveryFuture`] for all of them. A batch is sent
//! when its lane has room in flight (`linger = 0`, the default), when it reaches
//! `max_batch_bytes`, or after `linger` (see [`ProducerConfig::linger`]). Each (shard,
//! class) lane has a sender task (`producer/sender.rs`) that keeps a window of batches
//! in flight on one connection, sized from the lane's measured rate and round-trip
//! time up to `max_in_flight_per_shard` (`producer/window.rs`); the broker writes a
//! connection's produces of one class to a shard in the order they arrive, so order
//! per (shard key, class) holds, while a P0 batch may overtake P3 batches sent before
//! it. When a batch fails with a retriable error, every batch of its lane after it is
//! re-sent in order after the backoff. With idempotence (the default) each batch
//! carries the producer id, epoch and a per-(shard, class) sequence number, so a batch
//! that was written but whose ack was lost is recognised on retry and not written
//! twice.
//!
//! A record without a key gets one from the topic's shard-key rule (if the topic has
//! one) before its shard is chosen, exactly as the broker would derive it.
//!
//! Lanes are isolated: each priority class has its own pool of `max_queued_records`
//! record permits, and handing a batch to a lane's sender never waits, so a P3 lane
//! the broker cannot keep up with makes P3 sends wait while P0 sends go on.

mod accumulator;
mod sender;
mod window;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Mutex;
use weir_protocol::batch;
use weir_protocol::messages::*;

use crate::client::{expect_body, Client};
use crate::delivery::{BatchDeliveryFuture, BatchShared, DeliveryFuture, RecordMetadata};
use crate::error::{ClientError, Result};
use crate::flow::Backpressure;
use crate::record::{ProducerBatch, ProducerRecord};
use accumulator::{Blocked, Core};
use weir_protocol::classes::CLASS_COUNT;

/// Settings of a [`Producer`].
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a batch may wait for more records before it is sent.
    ///
    /// `ZERO` (the default) sends a (shard, class) lane's records as soon as the lane
    /// has fewer than `max_in_flight_per_shard` batches in flight; while it is full,
    /// records accumulate and leave together when a batch is acknowledged. So an idle
    /// producer adds no wait at all, and a busy one forms large batches by itself
    /// (as large as the backlog, up to `max_batch_bytes`). A positive linger instead
    /// holds every batch until it is full or `linger` has passed, in flight room or
    /// not: it trades latency for fewer, fuller requests when records trickle in, and
    /// Tokio's timer adds up to 1 ms to it.
    pub linger: Duration,
    /// A batch is sent once it reaches this size (or the topic's `max_message_bytes`,
    /// when that is smaller: the broker would refuse a larger batch).
    pub max_batch_bytes: usize,
    pub acks: Acks,
    /// Producer id + epoch + sequence numbers, so retries never duplicate.
    pub idempotent: bool,
    /// Attempts after the first for a retriable failure. With the default backoffs,
    /// 40 retries keep a record trying for about 10 s.
    pub retries: u32,
    /// Wait before a retry, doubled per attempt up to `retry_backoff_max`.
    pub retry_backoff: Duration,
    /// Longest wait between two retries. It bounds how long a record waits after the
    /// cause went away — in a cluster, after a switchover gave its shard a new
    /// primary — so keep it well under the switchover time you aim for.
    pub retry_backoff_max: Duration,
    /// Most batches in flight per (shard, class) lane: at most
    /// [`batch::IDEMPOTENT_WINDOW`] (5) for an idempotent producer, whose retries the
    /// broker recognises only among a lane's last five batches.
    pub max_in_flight_per_shard: usize,
    /// Size each lane's in-flight window from its measured rate and round-trip time,
    /// up to `max_in_flight_per_shard` (the default), instead of always keeping that
    /// many in flight: more batches in flight than the path needs only queue, and add
    /// their service time to every batch's latency. See `producer/window.rs`.
    pub adaptive_in_flight: bool,
    /// Priority of records that do not set one (1 highest … 10; 0 = the topic's
    /// default, filled in by the broker).
    pub default_priority: u8,
    /// Complexity of records that do not set one (1 … 5; 0 = the topic's default).
    pub default_complexity: u8,
    /// Longest wait for one produce's answer.
    pub request_timeout: Duration,
    /// Records of one priority class that may wait in the producer (in a batch not yet
    /// sent to the broker) before `send` and `send_batch` wait for room for that
    /// class. Each class has its own pool, so a saturated P3 lane never makes a P0
    /// record wait. A `send_batch` call of more records of one class than this is
    /// refused.
    pub max_queued_records: usize,
    /// What to do when the queue is full or the broker says THROTTLED or SHED (see
    /// [`crate::flow`]).
    pub backpressure: Backpressure,
    /// Load-aware placement of keyless records (`crate::routing` documents the
    /// scoring): `Some(period)` reads each known topic's shard loads from the broker's
    /// LoadHistory api every `period` and sends a keyless record to the better of two
    /// shards drawn at random; `None` (the default) keeps plain rotation. Keyed
    /// records always go by key. The loads come from the node that answers the api:
    /// in a cluster, shards held elsewhere score as average.
    pub load_aware_routing: Option<Duration>,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            linger: Duration::ZERO,
            max_batch_bytes: 1024 * 1024,
            acks: Acks::Leader,
            idempotent: true,
            retries: 40,
            retry_backoff: Duration::from_millis(50),
            retry_backoff_max: Duration::from_millis(250),
            max_in_flight_per_shard: 5,
            adaptive_in_flight: true,
            default_priority: batch::DEFAULT_PRIORITY,
            default_complexity: batch::DEFAULT_COMPLEXITY,
            request_timeout: Duration::from_secs(30),
            max_queued_records: 100_000,
            backpressure: Backpressure::default(),
            load_aware_routing: None,
        }
    }
}

/// The largest record a producer accepts (its encoded size plus a batch header).
fn max_record_bytes(config: &ProducerConfig) -> usize {
    config.max_batch_bytes.max(1 << 20) * 16
}

/// Builder of a [`Producer`].
#[derive(Debug, Clone)]
pub struct ProducerBuilder {
    client: Client,
    config: ProducerConfig,
    /// Producer id and epoch to continue from (see [`ProducerBuilder::resume`]).
    resume: Option<(u64, u16)>,
    types: Option<TypeCounter>,
}

/// Counts sent records per message type, named by a header, into a service's
/// telemetry ([`ProducerBuilder::count_types`]).
#[derive(Debug, Clone)]
struct TypeCounter {
    counter: crate::telemetry::TelemetryCounter,
    header: Arc<str>,
}

impl TypeCounter {
    fn count<'a>(&self, headers: impl IntoIterator<Item = &'a (String, Bytes)>) {
        if let Some((_, v)) = headers.into_iter().find(|(n, _)| **n == *self.header) {
            self.counter.count(&String::from_utf8_lossy(v), 1);
        }
    }
}

impl ProducerBuilder {
    /// Records that name their message type in header `header` are counted per type
    /// into `telemetry` as they are sent (PROTOCOL.md "Client telemetry"), so the
    /// broker keeps and forecasts the service's demand per type without the service
    /// counting itself. Records without the header are not counted.
    pub fn count_types(mut self, telemetry: &crate::Telemetry, header: &str) -> Self {
        self.types = Some(TypeCounter {
            counter: telemetry.counter(),
            header: header.into(),
        });
        self
    }

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
    /// Longest backoff between two retries.
    pub fn retry_backoff_max(mut self, d: Duration) -> Self {
        self.config.retry_backoff_max = d;
        self
    }
    /// Most in-flight batches per (shard, class) lane; the window adapts below it.
    pub fn max_in_flight_per_shard(mut self, n: usize) -> Self {
        self.config.max_in_flight_per_shard = n.max(1);
        self
    }
    /// Exactly `n` in-flight batches per (shard, class) lane (no adaptive window).
    pub fn fixed_in_flight_per_shard(mut self, n: usize) -> Self {
        self.config.max_in_flight_per_shard = n.max(1);
        self.config.adaptive_in_flight = false;
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
    /// Idempotent producers: continue an existing producer id instead of asking for a
    /// new one. `build` sends InitProducerId with `producer_id` and `epoch` (the
    /// newest epoch the id was used with), and the broker answers with the next epoch,
    /// which fences any older instance still sending under that id. A program that
    /// keeps its id across runs (e.g. `weir produce --producer-id-file`) uses this so
    /// that everything one id ever stored can be told apart in the log by the batch
    /// headers' `producer_id`. Sequences start at 0 in the new epoch. Ignored when
    /// idempotence is off.
    pub fn resume(mut self, producer_id: u64, epoch: u16) -> Self {
        self.resume = Some((producer_id, epoch));
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
        if c.max_in_flight_per_shard == 0 || c.max_batch_bytes == 0 {
            return Err(ClientError::Invalid(
                "max_in_flight_per_shard and max_batch_bytes must be > 0".into(),
            ));
        }
        // The broker remembers this many batches per lane: a retry of an older one
        // could not be recognised, and re-stamped it would be stored twice.
        if c.idempotent && c.max_in_flight_per_shard > batch::IDEMPOTENT_WINDOW {
            return Err(ClientError::Invalid(format!(
                "an idempotent producer keeps at most {} batches in flight per shard (max_in_flight_per_shard is {}); turn idempotence off for more",
                batch::IDEMPOTENT_WINDOW,
                c.max_in_flight_per_shard
            )));
        }
        let identity = if c.idempotent {
            let (id, epoch) = self.resume.unwrap_or((0, 0));
            let r = init_producer_id(&self.client, id, epoch).await?;
            Some(Arc::new(Identity::new(r)))
        } else {
            None
        };
        let max_queued_records = c.max_queued_records.max(1);
        let core = Core::new(
            self.client.clone(),
            self.config.clone(),
            identity.clone(),
            max_queued_records,
        );
        Ok(Producer {
            identity,
            core,
            max_queued_records,
            max_record_bytes: max_record_bytes(&self.config),
            backpressure: self.config.backpressure,
            types: self.types,
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

/// An idempotent producer's (producer id, epoch), shared by its lanes.
///
/// Read without waiting. A lane stamps batches with it while its requests are in
/// flight, and must not wait there: its requests, which it polls only between its own
/// steps, may hold a place another lane waits for (see `client.rs`, `Slot`). Moving it
/// to a new epoch (`ShardSender::bump_epoch`) is one lane at a time, under `bumping`,
/// and only by a lane with nothing in flight; a lane that tells a fencing of its own
/// doing from a newer instance's waits out a bump under way, also with nothing in
/// flight.
pub(crate) struct Identity {
    current: std::sync::Mutex<(u64, u16)>,
    bumping: Mutex<()>,
}

impl Identity {
    fn new(ident: (u64, u16)) -> Identity {
        Identity {
            current: std::sync::Mutex::new(ident),
            bumping: Mutex::new(()),
        }
    }

    /// The (producer id, epoch) the producer stamps now.
    pub(crate) fn get(&self) -> (u64, u16) {
        *self.current.lock().expect("identity lock")
    }

    pub(crate) fn set(&self, ident: (u64, u16)) {
        *self.current.lock().expect("identity lock") = ident;
    }

    /// The right to move the epoch (one lane at a time); waits for a bump under way.
    pub(crate) async fn bump_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.bumping.lock().await
    }
}

/// Sends records to a broker; see the module docs.
#[derive(Clone)]
pub struct Producer {
    /// (producer id, epoch) of an idempotent producer, shared with its senders (an
    /// epoch bump after a failed batch moves it).
    identity: Option<Arc<Identity>>,
    /// The lanes and the per-class record pools (`max_queued_records` places each,
    /// given back when a record's batch is first sent).
    core: Arc<Core>,
    max_queued_records: usize,
    max_record_bytes: usize,
    backpressure: Backpressure,
    /// Per-type counting into telemetry ([`ProducerBuilder::count_types`]).
    types: Option<TypeCounter>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("max_queued_records", &self.max_queued_records)
            .field("backpressure", &self.backpressure)
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// A builder over `client`.
    pub fn builder(client: &Client) -> ProducerBuilder {
        ProducerBuilder {
            client: client.clone(),
            config: ProducerConfig::default(),
            resume: None,
            types: None,
        }
    }

    /// The producer id and the newest epoch it stamps (`None` when not idempotent).
    /// The epoch grows when a failed batch makes the producer move on; a program that
    /// resumes the id later ([`ProducerBuilder::resume`]) should keep the newest.
    pub async fn identity(&self) -> Option<(u64, u16)> {
        self.identity.as_ref().map(|id| id.get())
    }

    /// Queues a record. When `max_queued_records` records of its class are already
    /// queued, waits or fails as the back-pressure policy says
    /// (`ClientError::QueueFull`).
    ///
    /// The record is encoded into its lane's open batch before this returns (the
    /// first record of a topic waits for the topic's metadata); its future shares the
    /// batch's completion.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture> {
        if let Some(t) = &self.types {
            t.count(&record.headers);
        }
        // The common case awaits nothing. The waits of the rare one (learning the
        // topic, a full class, a relayout) are boxed so that they do not size this
        // future: unboxed they made it 5 KB, copied on every call.
        match self.core.try_send(record, None) {
            Ok(fut) => Ok(fut),
            Err(blocked) => Box::pin(self.send_blocked(blocked)).await,
        }
    }

    /// `send` for a record `try_send` could not place at once: waits for what it
    /// lacked and tries again. Bounded: a topic is learnt once, and a class waited for
    /// at most twice (the class map may move once between the wait and the
    /// placement). Waits for a relayout after a reshard do not count: each ends.
    async fn send_blocked(&self, mut blocked: Blocked) -> Result<DeliveryFuture> {
        let mut tries = 1;
        loop {
            if tries >= 4 && !matches!(blocked, Blocked::Relayout(_)) {
                return Err(ClientError::QueueFull(
                    "the record's priority class kept moving".into(),
                ));
            }
            let (record, admitted) = match blocked {
                Blocked::Relayout(r) => {
                    self.core.wait_relaid(&r.topic).await;
                    tries -= 1;
                    (*r, None)
                }
                Blocked::Topic(r) => {
                    if let Err(e) = self.core.learn_topic(&r.topic).await {
                        return Ok(DeliveryFuture::failed(e));
                    }
                    (*r, None)
                }
                Blocked::Room(r, class) => {
                    self.admit(class, 1).await?;
                    (*r, Some(class))
                }
            };
            tries += 1;
            match self.core.try_send(record, admitted) {
                Ok(fut) => return Ok(fut),
                Err(b) => blocked = b,
            }
        }
    }

    /// Queues every record of `batch` with one call and returns one future for all of
    /// them. Each record is treated exactly as `send` would treat it (shard-key rule,
    /// priority class, idempotent sequence, retries, order per (shard, class)), but the
    /// call takes the producer's lock and the class permits once and costs one
    /// completion instead of one reference per record. Records of several
    /// priority classes are split into one batch per class (the broker refuses mixed
    /// classes in one produce). Waits for (or, by the back-pressure policy, refuses)
    /// room for all records at once; a record that can never be sent (a field out of
    /// range, too large) refuses the whole call before anything is queued.
    pub async fn send_batch(&self, batch: ProducerBatch) -> Result<BatchDeliveryFuture> {
        let n = batch.records.len();
        // One pass checks every record and notes whether any names its priority: the
        // common call names none, and its records are then counted by class without
        // a second pass.
        let mut any_priority = false;
        for r in &batch.records {
            self.check(r)?;
            any_priority |= r.priority.is_some();
        }
        let (shared, fut) = BatchShared::new(n as u64);
        if n == 0 {
            return Ok(fut);
        }
        if let Some(t) = &self.types {
            for r in &batch.records {
                t.count(&r.headers);
            }
        }
        let (counts, classes) = match self.core.batch_classes(&batch, any_priority) {
            Some(c) => c,
            None => {
                if let Err(e) = Box::pin(self.core.learn_topic(&batch.topic)).await {
                    shared.failed(n as u64, &e);
                    return Ok(fut);
                }
                self.core
                    .batch_classes(&batch, any_priority)
                    .ok_or(ClientError::Closed)?
            }
        };
        if let Some(&most) = counts.iter().max() {
            if most as usize > self.max_queued_records {
                return Err(ClientError::Invalid(format!(
                    "{most} records of one class in one call; max_queued_records is {}",
                    self.max_queued_records
                )));
            }
        }
        for class in 0..CLASS_COUNT {
            if counts[class] == 0 {
                continue;
            }
            if let Err(e) = self.admit(class, counts[class]).await {
                for (c, &k) in counts.iter().enumerate().take(class) {
                    self.core.untake(c, k as usize);
                }
                return Err(e);
            }
        }
        let mut call = (batch, shared, classes);
        while let Err(back) = self.core.add_batch(call.0, call.1, call.2) {
            // The topic is being laid out again after a reshard: the call keeps its
            // places and goes in once that is done.
            Box::pin(self.core.wait_relaid(&back.0.topic)).await;
            call = back;
        }
        Ok(fut)
    }

    /// How many batches the lane of (`topic`, `shard`, `priority`) keeps in flight now
    /// (see [`ProducerConfig::adaptive_in_flight`]); `None` until the producer has
    /// sent to the topic. For callers that pace themselves by the producer's window,
    /// as `weir-bench`'s closed loop does.
    pub fn in_flight_window(&self, topic: &str, shard: u32, priority: Option<u8>) -> Option<usize> {
        self.core.window_of(topic, shard, priority)
    }

    /// Sends a record and waits for its acknowledgement.
    pub async fn send_and_wait(&self, record: ProducerRecord) -> Result<RecordMetadata> {
        self.send(record).await?.await
    }

    /// Sends every lingering batch and waits until every record sent before this call
    /// is acknowledged or failed.
    pub async fn flush(&self) -> Result<()> {
        // A relayout after a reshard takes batches back from their lanes (a lane's
        // flush then returns early) and places their records in other lanes: a flush
        // that saw one start goes again once it is done.
        loop {
            self.core.wait_all_relaid().await;
            let (before, _) = self.core.relayout_state();
            for ack in self.core.flush_all() {
                ack.await.map_err(|_| ClientError::Closed)?;
            }
            if let (after, false) = self.core.relayout_state() {
                if after == before {
                    return Ok(());
                }
            }
        }
    }

    /// Takes places for `n` records of `class`, waiting or failing as the back-pressure
    /// policy says.
    async fn admit(&self, class: usize, n: u32) -> Result<()> {
        let n = n as usize;
        // With room, no policy applies: skip `BlockFor`'s timer (a clock read per call),
        // and the wait's state stays out of the callers' futures.
        if self.core.try_take(class, n) {
            return Ok(());
        }
        Box::pin(self.admit_wait(class, n)).await
    }

    /// `admit` when the class has no room now.
    async fn admit_wait(&self, class: usize, n: usize) -> Result<()> {
        let deadline = match self.backpressure {
            Backpressure::FailFast => return Err(ClientError::QueueFull("no room".into())),
            Backpressure::Block => None,
            Backpressure::BlockFor(d) => Some((tokio::time::Instant::now() + d, d)),
        };
        // Bounded by the deadline (or, with `Block`, by places coming back: every
        // sent batch gives its records' places back and wakes this loop).
        loop {
            let room = self.core.room(class).notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.core.try_take(class, n) {
                return Ok(());
            }
            match deadline {
                None => room.await,
                Some((at, d)) => {
                    if tokio::time::timeout_at(at, room).await.is_err() {
                        return Err(ClientError::QueueFull(format!("no room within {d:?}")));
                    }
                }
            }
        }
    }

    /// Refuses a batch record the accumulator could never encode.
    fn check(&self, r: &crate::record::BatchRecord) -> Result<()> {
        let bad = |why: &str| Err(ClientError::Invalid(why.into()));
        if r.priority
            .is_some_and(|p| !batch::WIRE_PRIORITY_RANGE.contains(&p))
        {
            return bad("priority must be 1..=10 (or 0 for the topic's default)");
        }
        if r.complexity
            .is_some_and(|c| !batch::WIRE_COMPLEXITY_RANGE.contains(&c))
        {
            return bad("complexity must be 1..=5 (or 0 for the topic's default)");
        }
        let key = r.key.as_ref().map_or(0, |k| k.len());
        if key > u16::MAX as usize || r.headers.len() > u16::MAX as usize {
            return bad("key or header list too long");
        }
        if r.headers.iter().any(|(n, _)| n.len() > u16::MAX as usize) {
            return bad("header name too long");
        }
        let size = batch::RECORD_MIN_BYTES
            + key
            + r.value.len()
            + r.headers
                .iter()
                .map(|(n, v)| 6 + n.len() + v.len())
                .sum::<usize>();
        if size + batch::BATCH_HEADER_BYTES > self.max_record_bytes {
            return bad("record larger than 16 × max_batch_bytes");
        }
        Ok(())
    }
}

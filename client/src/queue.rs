//! Queue mode: [`QueueConsumer`] leases records and settles each one with an ack or a
//! nack; [`Worker`] runs a handler over a queue with bounded concurrency per priority
//! class, a timeout per record, and the ack / nack done for you.
//!
//! The broker decides what is redelivered and when (retry policy per class, backoff,
//! then the dead-letter topic `<topic>.dlq`), so a consumer keeps no offsets. Delivery
//! is at-least-once: a record whose ack was lost (crash, expired lease) comes again,
//! with a higher `attempt`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use weir_protocol::batch::Batch;
use weir_protocol::classes::{Class, CLASS_COUNT};
use weir_protocol::messages::*;
use weir_protocol::ErrorCode;

use crate::client::{expect_body, Client};
use crate::error::{ClientError, Result};
use crate::record::Message;

/// One leased record: the record itself as every consumer receives it
/// ([`Message`], also reached through `Deref`, so `m.value` or `m.offset` read as on a
/// stream consumer's message) and what only queue mode has, the lease and its
/// delivery count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMessage {
    /// The record.
    pub message: Message,
    /// Names this delivery; an ack or nack must repeat it.
    pub lease_id: u64,
    /// 1 on the first delivery.
    pub attempt: u32,
    pub max_attempts: u32,
    pub class: Class,
    /// The lease ends this long after the broker answered.
    pub lease: Duration,
}

impl std::ops::Deref for QueueMessage {
    type Target = Message;

    fn deref(&self) -> &Message {
        &self.message
    }
}

impl QueueMessage {
    fn lease_ref(&self) -> LeaseRef {
        LeaseRef {
            shard: self.message.shard,
            offset: self.message.offset,
            lease_id: self.lease_id,
        }
    }

    /// Whether this is the last delivery the retry policy allows.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}

/// What the broker did with a nacked record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackOutcome {
    /// Delivered again after this delay.
    RetryIn(Duration),
    /// Sent to the dead-letter topic.
    DeadLettered,
}

/// Settings of a [`QueueConsumer`].
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Consumer name kept with leases, for status and logs.
    pub consumer: String,
    /// Visibility timeout of each lease (0 = the broker's default).
    pub lease: Duration,
    /// How long a fetch waits on the broker while nothing is available.
    pub max_wait: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            consumer: format!("weir-client-{}", std::process::id()),
            lease: Duration::ZERO,
            max_wait: Duration::from_millis(500),
        }
    }
}

/// Leases records of one topic as a member of a queue group.
#[derive(Debug, Clone)]
pub struct QueueConsumer {
    client: Client,
    group: String,
    topic: String,
    config: QueueConfig,
}

impl QueueConsumer {
    /// A consumer of `topic` in queue group `group`, with default settings.
    pub fn new(client: &Client, group: impl Into<String>, topic: impl Into<String>) -> Self {
        Self::with_config(client, group, topic, QueueConfig::default())
    }

    /// Like [`QueueConsumer::new`], with settings.
    pub fn with_config(
        client: &Client,
        group: impl Into<String>,
        topic: impl Into<String>,
        config: QueueConfig,
    ) -> Self {
        QueueConsumer {
            client: client.clone(),
            group: group.into(),
            topic: topic.into(),
            config,
        }
    }

    /// The group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Leases up to `max` records; empty when none came within the configured wait.
    pub async fn fetch(&self, max: u32) -> Result<Vec<QueueMessage>> {
        let req = QueueFetchRequest {
            group: self.group.clone(),
            consumer: self.config.consumer.clone(),
            topic: self.topic.clone(),
            max_messages: max.max(1),
            lease_ms: self.config.lease.as_millis().min(u128::from(u32::MAX)) as u32,
            max_wait_ms: self.config.max_wait.as_millis().min(u128::from(u32::MAX)) as u32,
        };
        let timeout = self.client.config().request_timeout + self.config.max_wait;
        let resp = self.client.call_with_timeout(req.into(), timeout).await?;
        let resp = expect_body!(resp, QueueFetch)?;
        let mut out = Vec::with_capacity(resp.messages.len());
        // One allocation per fetch; every message of it shares the name.
        let topic: Arc<str> = self.topic.as_str().into();
        for m in resp.messages {
            let batch = Batch::parse(m.record.clone())
                .map_err(|e| ClientError::Protocol(format!("leased record: {e}")))?;
            let mut rec = batch
                .records()
                .next()
                .ok_or_else(|| ClientError::Protocol("leased record batch is empty".into()))?;
            // The broker names the record by its place in the shard, not by the
            // offset inside the one-record batch it carries.
            rec.offset = m.offset;
            out.push(QueueMessage {
                message: Message::from_record(&topic, m.shard, rec),
                lease_id: m.lease_id,
                attempt: m.attempt,
                max_attempts: m.max_attempts,
                class: Class::from_index(usize::from(m.class)).unwrap_or(Class::P3),
                lease: Duration::from_millis(u64::from(m.lease_ms)),
            });
        }
        Ok(out)
    }

    /// Marks one record done. [`ErrorCode::UnknownLease`] when this delivery is no
    /// longer current (its lease expired; the record will be or was delivered again).
    pub async fn ack(&self, m: &QueueMessage) -> Result<()> {
        self.ack_many(std::slice::from_ref(m))
            .await?
            .pop()
            .unwrap_or(Ok(()))
    }

    /// Marks several records done in one request (durable when it returns); one
    /// result per record.
    pub async fn ack_many(&self, ms: &[QueueMessage]) -> Result<Vec<Result<()>>> {
        if ms.is_empty() {
            return Ok(Vec::new());
        }
        let req = AckRequest {
            group: self.group.clone(),
            topic: self.topic.clone(),
            leases: ms.iter().map(QueueMessage::lease_ref).collect(),
        };
        let resp = expect_body!(self.client.call(req).await?, Ack)?;
        if resp.results.len() != ms.len() {
            return Err(ClientError::Protocol(format!(
                "{} ack results for {} leases",
                resp.results.len(),
                ms.len()
            )));
        }
        Ok(resp
            .results
            .into_iter()
            .map(|c| match ErrorCode::from_u16(c) {
                Some(ErrorCode::None) => Ok(()),
                Some(code) => Err(ClientError::Broker {
                    code,
                    message: "ack refused".into(),
                    retry_after_ms: 0,
                }),
                None => Err(ClientError::Protocol(format!("unknown error code {c}"))),
            })
            .collect())
    }

    /// Reports that processing failed. `retriable = false` dead-letters the record now.
    pub async fn nack(
        &self,
        m: &QueueMessage,
        retriable: bool,
        reason: impl Into<String>,
    ) -> Result<NackOutcome> {
        let req = NackRequest {
            group: self.group.clone(),
            topic: self.topic.clone(),
            lease: m.lease_ref(),
            retriable: u8::from(retriable),
            reason: reason.into(),
        };
        let resp = expect_body!(self.client.call(req).await?, Nack)?;
        Ok(if resp.outcome == NACK_DEAD_LETTERED {
            NackOutcome::DeadLettered
        } else {
            NackOutcome::RetryIn(Duration::from_millis(u64::from(resp.retry_in_ms)))
        })
    }

    /// Extends a lease to `lease` from now; returns the lease granted.
    pub async fn extend(&self, m: &QueueMessage, lease: Duration) -> Result<Duration> {
        let req = ExtendLeaseRequest {
            group: self.group.clone(),
            topic: self.topic.clone(),
            lease: m.lease_ref(),
            lease_ms: lease.as_millis().clamp(1, u128::from(u32::MAX)) as u32,
        };
        let resp = expect_body!(self.client.call(req).await?, ExtendLease)?;
        Ok(Duration::from_millis(u64::from(resp.lease_ms)))
    }

    /// This queue's state on the broker.
    pub async fn status(&self) -> Result<QueueStatus> {
        let mut all = queue_status(&self.client, &self.group, &self.topic).await?;
        all.pop()
            .ok_or_else(|| ClientError::Protocol("broker returned no status for the queue".into()))
    }
}

/// The state of queues on the broker; empty `group` / `topic` match all.
pub async fn queue_status(client: &Client, group: &str, topic: &str) -> Result<Vec<QueueStatus>> {
    let req = QueueStatusRequest {
        group: group.to_string(),
        topic: topic.to_string(),
    };
    Ok(expect_body!(client.call(req).await?, QueueStatus)?.queues)
}

/// A handler's failure: retry later, or give up (dead-letter now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    pub retriable: bool,
    pub reason: String,
}

impl HandlerError {
    /// Try again under the retry policy.
    pub fn retry(reason: impl Into<String>) -> Self {
        HandlerError {
            retriable: true,
            reason: reason.into(),
        }
    }
    /// Never retry: dead-letter the record now.
    pub fn fatal(reason: impl Into<String>) -> Self {
        HandlerError {
            retriable: false,
            reason: reason.into(),
        }
    }
}

/// Counters of a [`Worker`] run.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub acked: AtomicU64,
    pub nacked: AtomicU64,
    pub timed_out: AtomicU64,
    /// Acks or nacks the broker refused or that failed in transit (those records
    /// come back after their lease).
    pub settle_errors: AtomicU64,
}

/// Runs a handler over a queue: see the module docs.
#[derive(Debug, Clone)]
pub struct Worker {
    consumer: QueueConsumer,
    concurrency: [usize; CLASS_COUNT],
    timeout: Duration,
    stats: Arc<WorkerStats>,
}

impl Worker {
    /// A worker with 8/4/2/1 concurrent handlers for P0..P3 and a 30 s timeout.
    pub fn new(consumer: QueueConsumer) -> Self {
        Worker {
            consumer,
            concurrency: [8, 4, 2, 1],
            timeout: Duration::from_secs(30),
            stats: Arc::new(WorkerStats::default()),
        }
    }

    /// Most handlers running at once per class P0..P3 (each at least 1). The worker
    /// holds at most the sum of these records at once; a record waiting for a slot of
    /// its class keeps its lease (extended every half lease).
    pub fn concurrency(mut self, per_class: [usize; CLASS_COUNT]) -> Self {
        self.concurrency = per_class.map(|c| c.max(1));
        self
    }

    /// Longest a handler may run on one record; past it the record is nacked
    /// (retriable) and the handler's future is dropped. While a handler runs, its lease
    /// is extended every half lease, so the timeout may be longer than the lease.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// The run's counters (shared, live).
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Leases and handles records until `stop` completes, then waits for the handlers
    /// in flight (each bounded by the timeout) and returns.
    pub async fn run<F, Fut>(self, handler: F, stop: impl Future<Output = ()>) -> Result<()>
    where
        F: Fn(QueueMessage) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), HandlerError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let slots: Vec<Arc<Semaphore>> = self
            .concurrency
            .iter()
            .map(|&n| Arc::new(Semaphore::new(n)))
            .collect();
        // Records held at once (running or waiting for a slot of their class): the
        // sum of the class limits. Bounds memory and leases held.
        let held = Arc::new(Semaphore::new(self.concurrency.iter().sum()));
        let mut tasks = tokio::task::JoinSet::new();
        tokio::pin!(stop);
        loop {
            while tasks.try_join_next().is_some() {}
            let first = tokio::select! {
                _ = &mut stop => break,
                p = held.clone().acquire_owned() => p.map_err(|_| ClientError::Closed)?,
            };
            let mut permits = vec![first];
            while let Ok(p) = held.clone().try_acquire_owned() {
                permits.push(p);
            }
            let fetched = tokio::select! {
                _ = &mut stop => break,
                r = self.consumer.fetch(permits.len() as u32) => r,
            };
            let msgs = match fetched {
                Ok(m) => m,
                Err(e) if e.is_retriable() => {
                    tracing::debug!(error = %e, "queue fetch failed; retrying");
                    drop(permits);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            for m in msgs {
                let Some(held_permit) = permits.pop() else {
                    break;
                };
                let slot = slots[m.class.index()].clone();
                let (handler, consumer) = (handler.clone(), self.consumer.clone());
                let (stats, timeout) = (self.stats.clone(), self.timeout);
                tasks.spawn(async move {
                    let _held = held_permit;
                    handle_one(&consumer, m, slot, handler.as_ref(), &stats, timeout).await;
                });
            }
        }
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

/// Runs the handler on one leased record once a slot of its class is free (its lease
/// is kept meanwhile), then acks it, or nacks it on a handler error or timeout.
async fn handle_one<F, Fut>(
    consumer: &QueueConsumer,
    m: QueueMessage,
    slot: Arc<Semaphore>,
    handler: &F,
    stats: &WorkerStats,
    timeout: Duration,
) where
    F: Fn(QueueMessage) -> Fut,
    Fut: Future<Output = std::result::Result<(), HandlerError>>,
{
    let mut lease = LeaseKeeper::new(m.lease, || extend_lease(consumer, &m));
    let Some(_slot) = wait_for_slot(slot, &mut lease).await else {
        return;
    };
    let outcome = run_one(handler(m.clone()), timeout, &mut lease).await;
    let settled = match outcome {
        Ok(Ok(())) => {
            stats.acked.fetch_add(1, Ordering::Relaxed);
            consumer.ack(&m).await
        }
        Ok(Err(e)) => {
            stats.nacked.fetch_add(1, Ordering::Relaxed);
            consumer.nack(&m, e.retriable, e.reason).await.map(|_| ())
        }
        Err(_) => {
            stats.timed_out.fetch_add(1, Ordering::Relaxed);
            let reason = format!("handler timed out after {} ms", timeout.as_millis());
            consumer.nack(&m, true, reason).await.map(|_| ())
        }
    };
    if let Err(e) = settled {
        stats.settle_errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(shard = m.shard, offset = m.offset, error = %e, "settling a record failed");
    }
}

/// Extends `m`'s lease by its length (a failure is only logged: the record may then
/// be delivered again after its lease, as after a crash).
async fn extend_lease(consumer: &QueueConsumer, m: &QueueMessage) {
    if let Err(e) = consumer.extend(m, m.lease).await {
        tracing::debug!(shard = m.shard, offset = m.offset, error = %e, "lease extension failed");
    }
}

/// Keeps one record's lease while it waits for a slot and while its handler runs: an
/// extension every half lease, polled beside the work it guards as a branch of the
/// same `select!` ([`LeaseKeeper::step`]), never awaited in place. A paused handler
/// could hold a lock of the client (a connection being opened) that the extension
/// waits for too; a tokio lock is handed to its next waiter whether or not that waiter
/// is polled, so neither would ever finish. An extension under way when the slot is
/// taken goes on during the handler's run (dropped, the lease could lapse before the
/// next one). Nothing is allocated unless an extension is due (most records are
/// handled within half a lease).
struct LeaseKeeper<Ext, ExtFut> {
    extend: Ext,
    extending: Option<Pin<Box<ExtFut>>>,
    lease: Duration,
    next: tokio::time::Instant,
}

impl<Ext, ExtFut> LeaseKeeper<Ext, ExtFut>
where
    Ext: Fn() -> ExtFut,
    ExtFut: Future<Output = ()>,
{
    fn new(lease: Duration, extend: Ext) -> Self {
        LeaseKeeper {
            extend,
            extending: None,
            lease,
            next: tokio::time::Instant::now() + Self::half(lease),
        }
    }

    fn half(lease: Duration) -> Duration {
        (lease / 2).max(Duration::from_millis(10))
    }

    /// Starts the next extension when it is due, or finishes the one under way. Never
    /// ends for a record without a lease. Cancel-safe: an extension under way is kept
    /// in `self`, not in this future.
    async fn step(&mut self) {
        if self.lease.is_zero() {
            return std::future::pending().await;
        }
        match self.extending.as_mut() {
            None => {
                tokio::time::sleep_until(self.next).await;
                self.extending = Some(Box::pin((self.extend)()));
            }
            Some(extension) => {
                extension.await;
                self.extending = None;
                self.next = tokio::time::Instant::now() + Self::half(self.lease);
            }
        }
    }
}

/// Runs one handler future with the timeout, keeping the record's lease meanwhile.
/// `Err(())` is a timeout.
async fn run_one<Fut, Ext, ExtFut>(
    fut: Fut,
    timeout: Duration,
    lease: &mut LeaseKeeper<Ext, ExtFut>,
) -> std::result::Result<std::result::Result<(), HandlerError>, ()>
where
    Fut: Future<Output = std::result::Result<(), HandlerError>>,
    Ext: Fn() -> ExtFut,
    ExtFut: Future<Output = ()>,
{
    tokio::pin!(fut);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            r = &mut fut => return Ok(r),
            _ = &mut deadline => return Err(()),
            _ = lease.step() => {}
        }
    }
}

/// Waits for a handler slot, keeping the record's lease meanwhile.
async fn wait_for_slot<Ext, ExtFut>(
    slot: Arc<Semaphore>,
    lease: &mut LeaseKeeper<Ext, ExtFut>,
) -> Option<tokio::sync::OwnedSemaphorePermit>
where
    Ext: Fn() -> ExtFut,
    ExtFut: Future<Output = ()>,
{
    let acquire = slot.acquire_owned();
    tokio::pin!(acquire);
    loop {
        tokio::select! {
            p = &mut acquire => return p.ok(),
            _ = lease.step() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// An extension that never ends (a lock it waits for is held by the paused work).
    fn stuck_extension(started: &AtomicU64) -> impl Fn() -> std::future::Pending<()> + '_ {
        move || {
            started.fetch_add(1, Ordering::SeqCst);
            std::future::pending()
        }
    }

    /// The handler finishes while an extension of its lease hangs: it is polled during
    /// the extension, not paused for it (a paused handler could hold the lock the
    /// extension waits for). Fails, by the test's own timeout, if the extension is
    /// awaited in place.
    #[tokio::test]
    async fn the_handler_runs_on_while_its_lease_is_extended() {
        let started = AtomicU64::new(0);
        let handler = async {
            tokio::time::sleep(Duration::from_millis(60)).await;
            Ok(())
        };
        let mut lease = LeaseKeeper::new(Duration::from_millis(20), stuck_extension(&started));
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            run_one(handler, Duration::from_secs(3), &mut lease),
        )
        .await
        .expect("the handler was not paused for the extension");
        assert!(matches!(r, Ok(Ok(()))));
        assert_eq!(
            started.load(Ordering::SeqCst),
            1,
            "one extension, still under way"
        );
    }

    /// An extension under way when the slot is taken is finished during the handler's
    /// run, not dropped (the next one would come only half a lease after the run
    /// began, and the lease could lapse). Lease 40 ms: the extension (40 ms) starts at
    /// 20 ms, the slot comes at 30, the handler runs 30–80. Dropped at 30, the next
    /// extension would start at 50 and not end before the handler (at 90). Time is
    /// paused (auto-advanced), so the order is exact.
    #[tokio::test(start_paused = true)]
    async fn an_extension_under_way_when_the_slot_comes_is_finished() {
        let (started, finished) = (AtomicU64::new(0), AtomicU64::new(0));
        let extend = || async {
            started.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(40)).await;
            finished.fetch_add(1, Ordering::SeqCst);
        };
        let slot = Arc::new(Semaphore::new(0));
        let freer = slot.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            freer.add_permits(1);
        });
        let mut lease = LeaseKeeper::new(Duration::from_millis(40), extend);
        let _permit = wait_for_slot(slot, &mut lease).await.expect("slot");
        assert_eq!(started.load(Ordering::SeqCst), 1, "one extension under way");
        assert_eq!(finished.load(Ordering::SeqCst), 0);
        let handler = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(())
        };
        let r = run_one(handler, Duration::from_secs(3), &mut lease).await;
        assert!(matches!(r, Ok(Ok(()))));
        assert_eq!(
            finished.load(Ordering::SeqCst),
            1,
            "the extension under way at the slot finished during the run"
        );
    }

    /// Likewise the wait for a handler slot goes on during an extension.
    #[tokio::test]
    async fn a_slot_is_taken_while_the_lease_is_extended() {
        let started = AtomicU64::new(0);
        let slot = Arc::new(Semaphore::new(0));
        let freer = slot.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(60)).await;
            freer.add_permits(1);
        });
        let mut lease = LeaseKeeper::new(Duration::from_millis(20), stuck_extension(&started));
        let permit = tokio::time::timeout(Duration::from_secs(5), wait_for_slot(slot, &mut lease))
            .await
            .expect("the slot wait was not paused for the extension");
        assert!(permit.is_some());
        assert_eq!(started.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_queue_message_reads_as_its_record_and_leases_by_its_place() {
        let m = QueueMessage {
            message: Message {
                topic: "jobs".into(),
                shard: 3,
                offset: 17,
                priority: 2,
                complexity: 1,
                timestamp_ms: 5,
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
                headers: Vec::new(),
            },
            lease_id: 9,
            attempt: 2,
            max_attempts: 2,
            class: Class::P0,
            lease: Duration::from_secs(30),
        };
        assert_eq!((&*m.topic, m.offset, &m.value[..]), ("jobs", 17, &b"v"[..]));
        let r = m.lease_ref();
        assert_eq!((r.shard, r.offset, r.lease_id), (3, 17, 9));
        assert!(m.is_last_attempt());
    }
}

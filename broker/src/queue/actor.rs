//! The task that owns one queue (a group consuming one topic): every shard's ack floor,
//! leases, retry timers, failure records and the circuit breaker. Requests reach it as
//! messages, so none of this state has a lock.
//!
//! Per shard it keeps a window `[floor, next)`: `floor` is the ack floor (everything
//! below is done), `next` the first offset never read. Each offset in the window is
//! either done (kept in a set until the floor passes it) or has an entry: leased,
//! waiting for its retry time, ready for a lease, or being written to the dead-letter
//! topic. The window is at most `queue_max_unacked_per_shard` long; when it is full no
//! new record is read from that shard until the floor moves, which bounds memory.
//! Lease expiries and retry times live in one `DelayQueue` (a hierarchical timing
//! wheel): nothing polls.
//!
//! This file is the task: its state, start-up from the state log, the command loop,
//! timers, snapshots and status. The rest is split by concept, each an `impl` block of
//! the same [`QueueActor`]:
//! - `window`: the lease window (leasing, reading new records, expiry bookkeeping);
//! - `settle`: ack, nack, extend, and what a failure does (retry or dead-letter);
//! - `dlq_pump`: writing dead letters and recording them, and healing at start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::time::DelayQueue;
use weir_protocol::classes::ClassMap;
use weir_protocol::messages::*;
use weir_protocol::ErrorCode;

use super::breaker::{BreakerSettings, QueueBreaker, State as BreakerState};
use super::dlq;
use super::state_log::{Event, ShardRecovery, StateLog};
use super::QueueMetrics;
use crate::clock::now_ms;
use crate::error::BrokerError;
use crate::retry::{Jitter, RetryPolicy};
use crate::shard::writer::PendingAppend;
use crate::topics::{Topic, TopicRegistry};

mod dlq_pump;
mod remote;
mod settle;
mod window;

/// Results of work the task handed to other tasks.
enum Internal {
    DeadWritten(dlq_pump::DeadLettered),
    /// A fetch of a shard this node holds no copy of (`remote.rs`).
    Fetched(remote::Fetched),
}
use window::{EntryState, ShardQueue, Timer};

/// Settings a queue task needs (resolved from the broker config).
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub policies: [RetryPolicy; 4],
    pub class_map: ClassMap,
    pub window: u64,
    pub default_lease: Duration,
    pub max_lease: Duration,
    pub breaker: BreakerSettings,
    pub dlq_suffix: String,
    pub dlq_retention_ms: u64,
    /// On a cluster node: dead letters go to a replicated topic through this.
    pub replicated: Option<Arc<dyn super::replicated::Replicator>>,
}

/// State shared between the task and the request handlers (read-only for them).
#[derive(Debug)]
pub struct QueueShared {
    /// Woken when records may have become available (new data, a retry due, the
    /// breaker letting traffic through, window space freed).
    pub available: Notify,
    /// The breaker's state code, for `/metrics`.
    pub breaker_state: AtomicU8,
    /// Records this queue dead-lettered since the broker started, for `/metrics` and
    /// the dead-letter alert.
    pub dead_lettered: std::sync::atomic::AtomicU64,
}

/// What a Nack's answer waits for: the FAIL event on disk, or the record in the
/// dead-letter topic and its DEAD event on disk.
pub enum NackDurable {
    Append(PendingAppend),
    Dead(oneshot::Receiver<Result<(), BrokerError>>),
}

/// What a handler asks of the queue task.
pub enum Command {
    Lease {
        max: u32,
        lease_ms: u32,
        reply: oneshot::Sender<Result<Vec<LeasedMessage>, BrokerError>>,
    },
    Ack {
        leases: Vec<LeaseRef>,
        reply: oneshot::Sender<(Vec<u16>, Option<PendingAppend>)>,
    },
    Nack {
        lease: LeaseRef,
        retriable: bool,
        reason: String,
        reply: oneshot::Sender<Result<(NackResponse, NackDurable), BrokerError>>,
    },
    Extend {
        lease: LeaseRef,
        lease_ms: u32,
        reply: oneshot::Sender<Result<ExtendLeaseResponse, BrokerError>>,
    },
    Status {
        reply: oneshot::Sender<QueueStatus>,
    },
    /// Compaction: write this queue's whole state to `log` (durably), then write every
    /// later event there.
    Snapshot {
        log: Arc<StateLog>,
        reply: oneshot::Sender<Result<(), BrokerError>>,
    },
    /// The topic was resharded: lease from its new shards too (sealed ones stay, as
    /// their records still wait to be leased).
    Resharded {
        topic: Arc<Topic>,
    },
    /// The topic was deleted: stop after everything queued before this (the events
    /// already appended stay ahead of the manager's FORGET).
    Stop {
        reply: oneshot::Sender<()>,
    },
}

/// The task; see the module docs.
pub struct QueueActor {
    group: String,
    topic_name: String,
    topic: Arc<Topic>,
    topics: Arc<TopicRegistry>,
    shards: Vec<ShardQueue>,
    timers: DelayQueue<(u32, u64, Timer)>,
    breaker: QueueBreaker,
    settings: QueueSettings,
    log: Arc<StateLog>,
    shared: Arc<QueueShared>,
    metrics: Arc<QueueMetrics>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    jitter: Jitter,
    next_lease: Arc<AtomicU64>,
    counts: [u64; 6],
    dlq: Option<Arc<Topic>>,
    /// Records waiting to be written to the dead-letter topic, and whether a write is
    /// in flight. One at a time, so the DEAD events of one queue are in the state log
    /// in dead-letter offset order, which is what the recovery scan relies on.
    dlq_pending: std::collections::VecDeque<(u32, u64)>,
    dlq_busy: bool,
    /// Round-robin start shard of the next lease.
    rr: usize,
    /// Nacks waiting for their record's dead-lettering to be durable.
    dead_waiters: HashMap<(u32, u64), oneshot::Sender<Result<(), BrokerError>>>,
    /// Highest dead-letter offset recorded per dead-letter shard (for snapshots).
    dlq_high: HashMap<u32, u64>,
    /// Tasks that wake lease waiters when a shard's high-water mark moves.
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

const C_LEASED: usize = 0;
const C_ACKED: usize = 1;
const C_NACKED: usize = 2;
const C_EXPIRED: usize = 3;
const C_REDELIVERED: usize = 4;
const C_DEAD: usize = 5;

impl QueueActor {
    /// Builds the task's state from what the state log says, heals dead-letterings cut
    /// short by a crash, and writes FLOOR events for shards the log did not know.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        group: String,
        topic: Arc<Topic>,
        topics: Arc<TopicRegistry>,
        mut recovered: HashMap<u32, ShardRecovery>,
        settings: QueueSettings,
        log: Arc<StateLog>,
        shared: Arc<QueueShared>,
        metrics: Arc<QueueMetrics>,
        next_lease: Arc<AtomicU64>,
    ) -> Result<QueueActor, BrokerError> {
        let now = Instant::now();
        let dlq_high = dlq_pump::merged_dlq_high(&recovered);
        let mut shards = Vec::with_capacity(topic.shards.len());
        let mut events = Vec::new();
        for (i, s) in topic.shards.iter().enumerate() {
            let rec = recovered.remove(&(i as u32)).unwrap_or_default();
            let (sq, floor) = ShardQueue::recovered(&rec, s.reader().log_start_offset());
            events.extend(floor.map(|ev| (i as u32, ev)));
            shards.push(sq);
        }
        if let Some(r) = &settings.replicated {
            for s in r.shards_without_copy(&topic.name) {
                if let Some(sq) = shards.get_mut(s as usize) {
                    sq.remote = Some(remote::RemoteFeed::new(sq.next));
                }
            }
        }
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let topic_name = topic.name.clone();
        let dlq_name = dlq::dlq_name(&topic_name, &settings.dlq_suffix);
        let dlq = topics.get(&dlq_name).ok();
        let mut actor = QueueActor {
            group,
            topic_name,
            topic,
            topics,
            shards,
            timers: DelayQueue::new(),
            breaker: QueueBreaker::new(settings.breaker, now),
            settings,
            log,
            shared,
            metrics,
            internal_tx,
            internal_rx,
            jitter: Jitter::from_clock(),
            next_lease,
            counts: [0; 6],
            dlq,
            dlq_pending: std::collections::VecDeque::new(),
            dlq_busy: false,
            rr: 0,
            dead_waiters: HashMap::new(),
            dlq_high,
            watchers: Vec::new(),
        };
        events.extend(actor.heal_dead_letters()?);
        if !events.is_empty() {
            actor.append_durably(&events).await?;
        }
        for sq in &mut actor.shards {
            sq.skip_recovered_done();
        }
        Ok(actor)
    }

    /// Appends `events` to the state log and waits until they are durable.
    async fn append_durably(&self, events: &[(u32, Event)]) -> Result<(), BrokerError> {
        let rx = self
            .log
            .append(&self.group, &self.topic_name, events)
            .await
            .map_err(|e| BrokerError::new(ErrorCode::StorageError, e.to_string()))?;
        rx.await
            .map_err(|_| BrokerError::new(ErrorCode::ShuttingDown, "state log closed"))?
            .map_err(|e| BrokerError::new(ErrorCode::StorageError, e.to_string()))?;
        Ok(())
    }

    /// Serves commands until every handle is gone.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        for s in self.topic.shards.clone() {
            self.watch(&s);
        }
        self.publish_breaker();
        loop {
            let reopen = self.breaker.reopens_at();
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Stop { reply }) => {
                        let _ = reply.send(());
                        break;
                    }
                    Some(c) => self.handle(c).await,
                    None => break,
                },
                Some(exp) = std::future::poll_fn(|cx| self.timers.poll_expired(cx)) => {
                    let (shard, offset, timer) = exp.into_inner();
                    self.on_timer(shard, offset, timer).await;
                }
                Some(msg) = self.internal_rx.recv() => self.on_internal(msg).await,
                _ = sleep_until_opt(reopen), if reopen.is_some() => {
                    if let Some(s) = self.breaker.poll(Instant::now()) {
                        self.breaker_changed(s);
                    }
                }
            }
        }
        for w in self.watchers.drain(..) {
            w.abort();
        }
    }

    /// Wakes lease waiters whenever `shard`'s high-water mark moves.
    fn watch(&mut self, shard: &Arc<crate::shard::Shard>) {
        let mut w = shard.watch_high_watermark();
        let shared = self.shared.clone();
        self.watchers.push(tokio::spawn(async move {
            while w.changed().await.is_ok() {
                shared.available.notify_waiters();
            }
        }));
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Lease {
                max,
                lease_ms,
                reply,
            } => {
                let r = self.lease(max, lease_ms);
                let _ = reply.send(r);
            }
            Command::Ack { leases, reply } => {
                let r = self.ack(&leases).await;
                let _ = reply.send(r);
            }
            Command::Nack {
                lease,
                retriable,
                reason,
                reply,
            } => {
                let r = self.nack(&lease, retriable, reason).await;
                let _ = reply.send(r);
            }
            Command::Extend {
                lease,
                lease_ms,
                reply,
            } => {
                let _ = reply.send(self.extend(&lease, lease_ms));
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Snapshot { log, reply } => {
                let events = self.snapshot_events();
                let r = log
                    .append_all_durably(&self.group, &self.topic_name, &events)
                    .await;
                if r.is_ok() {
                    self.log = log;
                }
                let _ = reply.send(r);
            }
            Command::Resharded { topic } => {
                for i in self.shards.len()..topic.shards.len() {
                    let s = topic.shards[i].clone();
                    let start = s.reader().log_start_offset();
                    let (sq, _) = ShardQueue::recovered(&Default::default(), start);
                    self.shards.push(sq);
                    self.watch(&s);
                }
                self.topic = topic;
                self.shared.available.notify_waiters();
            }
            // Taken by the task loop, which stops there.
            Command::Stop { reply } => {
                let _ = reply.send(());
            }
        }
    }

    /// Events that rebuild this queue's durable state (see `ShardRecovery::snapshot`).
    fn snapshot_events(&self) -> Vec<(u32, Event)> {
        let now = tokio::time::Instant::now();
        let wall = now_ms();
        let mut out = Vec::new();
        for (i, sq) in self.shards.iter().enumerate() {
            let s = i as u32;
            out.push((s, Event::Floor { offset: sq.floor }));
            for &offset in sq.done.iter().chain(&sq.recovered_done) {
                out.push((s, Event::Ack { offset }));
            }
            for (&offset, e) in &sq.entries {
                if e.failure.failures == 0 {
                    continue;
                }
                let due_ms = match (&e.state, e.timer) {
                    (EntryState::Waiting, Some(k)) => {
                        wall + self
                            .timers
                            .deadline(&k)
                            .saturating_duration_since(now)
                            .as_millis() as i64
                    }
                    _ => wall,
                };
                out.push((
                    s,
                    Event::Fail {
                        offset,
                        failure: e.failure.clone(),
                        due_ms,
                    },
                ));
            }
            for (&offset, (failure, due_ms)) in &sq.recovered_failed {
                out.push((
                    s,
                    Event::Fail {
                        offset,
                        failure: failure.clone(),
                        due_ms: *due_ms,
                    },
                ));
            }
        }
        for (&dlq_shard, &dlq_offset) in &self.dlq_high {
            out.push((
                0,
                Event::DlqHigh {
                    dlq_shard,
                    dlq_offset,
                },
            ));
        }
        out
    }

    async fn on_timer(&mut self, s: u32, offset: u64, timer: Timer) {
        let Some(e) = self.shards[s as usize].entries.get_mut(&offset) else {
            return;
        };
        match (timer, &e.state) {
            (Timer::LeaseExpiry { lease_id }, EntryState::Leased { lease_id: cur })
                if lease_id == *cur =>
            {
                e.timer = None;
                self.counts[C_EXPIRED] += 1;
                self.metrics.expired.fetch_add(1, Ordering::Relaxed);
                if let Err(err) = self.fail(s, offset, true, "lease expired".into()).await {
                    tracing::error!(error = %err, "recording an expired lease failed");
                }
            }
            (Timer::RetryDue, EntryState::Waiting) => self.make_ready(s, offset),
            (Timer::DlqRetry, EntryState::Dying) => {
                e.timer = None;
                self.dlq_pending.push_back((s, offset));
                self.pump_dead_letters();
            }
            _ => {}
        }
    }

    fn breaker_changed(&mut self, s: BreakerState) {
        let (ok, failed) = self.breaker.window_counts(Instant::now());
        let (group, topic) = (&self.group, &self.topic_name);
        match s {
            BreakerState::Open => tracing::warn!(%group, %topic, window_successes = ok,
                window_failures = failed, "circuit breaker open: delivery paused"),
            BreakerState::HalfOpen => tracing::info!(%group, %topic, state = s.name(),
                "circuit breaker half-open: leasing a share of the records asked for"),
            BreakerState::Closed => tracing::info!(%group, %topic, state = s.name(),
                "circuit breaker closed: delivery resumed"),
        }
        self.publish_breaker();
        self.shared.available.notify_waiters();
    }

    fn publish_breaker(&self) {
        self.shared
            .breaker_state
            .store(self.breaker.state().code(), Ordering::Relaxed);
    }

    fn status(&mut self) -> QueueStatus {
        let now = Instant::now();
        if let Some(s) = self.breaker.poll(now) {
            self.breaker_changed(s);
        }
        let (ok, failed) = self.breaker.window_counts(now);
        let shards = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, sq)| {
                let mut st = QueueShardStatus {
                    shard: i as u32,
                    ack_floor: sq.floor,
                    next_offset: sq.next,
                    high_watermark: match &sq.remote {
                        Some(feed) => feed.high_watermark,
                        None => self.topic.shards[i].reader().high_watermark(),
                    },
                    done_above_floor: (sq.done.len() + sq.recovered_done.len()) as u32,
                    waiting: sq.recovered_failed.len() as u32,
                    ..Default::default()
                };
                for e in sq.entries.values() {
                    match e.state {
                        EntryState::Leased { .. } => st.leased += 1,
                        EntryState::Waiting | EntryState::Ready => st.waiting += 1,
                        EntryState::Dying => st.dying += 1,
                    }
                }
                st
            })
            .collect();
        QueueStatus {
            group: self.group.clone(),
            topic: self.topic_name.clone(),
            breaker_state: self.breaker.state().code(),
            breaker_state_ms: self.breaker.in_state_for(now).as_millis() as u64,
            window_successes: ok,
            window_failures: failed,
            leased: self.counts[C_LEASED],
            acked: self.counts[C_ACKED],
            nacked: self.counts[C_NACKED],
            expired: self.counts[C_EXPIRED],
            redelivered: self.counts[C_REDELIVERED],
            dead_lettered: self.counts[C_DEAD],
            shards,
            breaker_reopens_in_ms: self
                .breaker
                .reopens_at()
                .map_or(0, |at| at.saturating_duration_since(now).as_millis() as u64),
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

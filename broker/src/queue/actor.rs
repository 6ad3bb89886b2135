//! The task that owns one queue (a group consuming one topic): every shard's ack floor,
//! leases, retry timers, failure records and the circuit breaker. Requests reach it as
//! messages, so none of this state has a lock.
//!
//! Per shard it keeps a window `[floor, next)`: `floor` is the ack floor (everything
//! below is done), `next` the first offset never read. Each offset in the window is
//! either done (kept in a set until the floor passes it) or has an [`Entry`]: leased,
//! waiting for its retry time, ready for a lease, or being written to the dead-letter
//! topic. The window is at most `queue_max_unacked_per_shard` long; when it is full no
//! new record is read from that shard until the floor moves, which bounds memory.
//! Lease expiries and retry times live in one `DelayQueue` (a hierarchical timing
//! wheel): nothing polls.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::time::{delay_queue, DelayQueue};
use weir_protocol::batch::{self, Batch, BatchBuilder, NewRecord, Record};
use weir_protocol::classes::{Class, ClassMap};
use weir_protocol::messages::*;
use weir_protocol::ErrorCode;

use super::breaker::{BreakerSettings, QueueBreaker, State as BreakerState};
use super::dlq;
use super::state_log::{Event, Failure, ShardRecovery, StateLog};
use super::QueueMetrics;
use crate::clock::now_ms;
use crate::error::BrokerError;
use crate::retry::{Jitter, RetryPolicy};
use crate::shard::writer::PendingAppend;
use crate::topics::{Topic, TopicRegistry};

/// Bytes read from a shard per look for new records.
const READ_BYTES: usize = 256 * 1024;
/// Most records taken for one dead-letter write.
const DLQ_BATCH_RECORDS: usize = 256;
/// Bytes after which a dead-letter write starts another append.
const DLQ_APPEND_BYTES: usize = 1 << 20;
/// Delay before a failed dead-letter write is tried again.
const DLQ_RETRY: Duration = Duration::from_secs(1);

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
}

/// State shared between the task and the request handlers (read-only for them).
#[derive(Debug)]
pub struct QueueShared {
    /// Woken when records may have become available (new data, a retry due, the
    /// breaker letting traffic through, window space freed).
    pub available: Notify,
    /// The breaker's state code, for `/metrics`.
    pub breaker_state: AtomicU8,
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
}

/// Results of work the task handed to other tasks.
enum Internal {
    DeadWritten(DeadLettered),
}

/// How a dead-letter write of records of source shard `shard` ended.
struct DeadLettered {
    shard: u32,
    dlq_shard: u32,
    /// (source offset, dead-letter offset) of the records durably written.
    written: Vec<(u64, u64)>,
    /// Records not written because of `error`; tried again after [`DLQ_RETRY`].
    failed: Vec<u64>,
    /// Records that cannot be read any more (deleted by retention).
    lost: Vec<(u64, BrokerError)>,
    error: Option<BrokerError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    LeaseExpiry {
        lease_id: u64,
    },
    RetryDue,
    /// A failed dead-letter write is tried again.
    DlqRetry,
}

#[derive(Debug)]
enum EntryState {
    Leased { lease_id: u64 },
    Waiting,
    Ready,
    Dying,
}

#[derive(Debug)]
struct Entry {
    class: Class,
    failure: Failure,
    state: EntryState,
    timer: Option<delay_queue::Key>,
}

struct ShardQueue {
    floor: u64,
    next: u64,
    entries: BTreeMap<u64, Entry>,
    done: BTreeSet<u64>,
    ready: BTreeSet<u64>,
    /// From the state log: offsets at or above `next` already done, and failures of
    /// offsets not yet read back into the window.
    recovered_done: BTreeSet<u64>,
    recovered_failed: BTreeMap<u64, (Failure, i64)>,
}

impl ShardQueue {
    fn advance_floor(&mut self) -> bool {
        let before = self.floor;
        while self.done.remove(&self.floor) {
            self.floor += 1;
        }
        self.floor != before
    }

    fn mark_done(&mut self, offset: u64) {
        self.entries.remove(&offset);
        self.ready.remove(&offset);
        if offset >= self.floor {
            self.done.insert(offset);
        }
        self.advance_floor();
    }
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
}

const C_LEASED: usize = 0;
const C_ACKED: usize = 1;
const C_NACKED: usize = 2;
const C_EXPIRED: usize = 3;
const C_REDELIVERED: usize = 4;
const C_DEAD: usize = 5;

fn unknown_lease(l: &LeaseRef) -> BrokerError {
    BrokerError::new(
        ErrorCode::UnknownLease,
        format!(
            "lease {} of {}/{} is not current",
            l.lease_id, l.shard, l.offset
        ),
    )
}

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
        let mut shards = Vec::with_capacity(topic.shards.len());
        let mut floors = Vec::new();
        // Highest dead-letter offset recorded, per dead-letter shard, over all shards.
        let mut dlq_high: HashMap<u32, u64> = HashMap::new();
        for r in recovered.values() {
            for (ds, o) in &r.dlq_high {
                let h = dlq_high.entry(*ds).or_insert(*o);
                *h = (*h).max(*o);
            }
        }
        for (i, s) in topic.shards.iter().enumerate() {
            let rec = recovered.remove(&(i as u32)).unwrap_or_default();
            let start = s.reader().log_start_offset();
            let floor = if rec.known {
                rec.floor.max(start)
            } else {
                start
            };
            if !rec.known {
                floors.push((i as u32, Event::Floor { offset: floor }));
            }
            shards.push(ShardQueue {
                floor,
                next: floor,
                entries: BTreeMap::new(),
                done: BTreeSet::new(),
                ready: BTreeSet::new(),
                recovered_done: rec.done.range(floor..).copied().collect(),
                recovered_failed: rec
                    .failed
                    .range(floor..)
                    .map(|(k, v)| (*k, v.clone()))
                    .collect(),
            });
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
            dlq_high: dlq_high.clone(),
        };
        // Heal: records in the dead-letter topic the state log does not call dead.
        let mut healed = Vec::new();
        if let Some(dlq) = actor.dlq.clone() {
            for ds in 0..dlq.shards.len() as u32 {
                let from = dlq_high.get(&ds).map_or(0, |h| h + 1);
                let found = dlq::scan_tail(&dlq, ds, from, &actor.group, &actor.topic_name)?;
                for f in found {
                    let Some(sq) = actor.shards.get_mut(f.source_shard as usize) else {
                        continue;
                    };
                    if f.source_offset < sq.floor || sq.recovered_done.contains(&f.source_offset) {
                        continue;
                    }
                    sq.recovered_done.insert(f.source_offset);
                    sq.recovered_failed.remove(&f.source_offset);
                    healed.push((
                        f.source_shard,
                        Event::Dead {
                            offset: f.source_offset,
                            failures: f.failures,
                            dlq_shard: ds,
                            dlq_offset: f.dlq_offset,
                        },
                    ));
                }
            }
        }
        if !healed.is_empty() {
            tracing::warn!(
                group = %actor.group,
                topic = %actor.topic_name,
                records = healed.len(),
                "found dead-lettered records the state log did not record (crash between the two writes); recorded them as dead"
            );
        }
        for (_, ev) in &healed {
            if let Event::Dead {
                dlq_shard,
                dlq_offset,
                ..
            } = ev
            {
                let h = actor.dlq_high.entry(*dlq_shard).or_insert(*dlq_offset);
                *h = (*h).max(*dlq_offset);
            }
        }
        floors.extend(healed);
        if !floors.is_empty() {
            let rx = actor
                .log
                .append(&actor.group, &actor.topic_name, &floors)
                .await
                .map_err(|e| BrokerError::new(ErrorCode::StorageError, e.to_string()))?;
            rx.await
                .map_err(|_| BrokerError::new(ErrorCode::ShuttingDown, "state log closed"))?
                .map_err(|e| BrokerError::new(ErrorCode::StorageError, e.to_string()))?;
        }
        for sq in &mut actor.shards {
            // Offsets already done at the floor move it at once.
            while sq.recovered_done.remove(&sq.floor) {
                sq.floor += 1;
                sq.next = sq.floor;
            }
        }
        Ok(actor)
    }

    /// Serves commands until every handle is gone.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut watchers = Vec::new();
        for s in &self.topic.shards {
            let mut w = s.watch_high_watermark();
            let shared = self.shared.clone();
            watchers.push(tokio::spawn(async move {
                while w.changed().await.is_ok() {
                    shared.available.notify_waiters();
                }
            }));
        }
        self.publish_breaker();
        loop {
            let reopen = self.breaker.reopens_at();
            tokio::select! {
                cmd = rx.recv() => match cmd {
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
        for w in watchers {
            w.abort();
        }
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

    fn lease_duration(&self, lease_ms: u32) -> Duration {
        if lease_ms == 0 {
            self.settings.default_lease
        } else {
            Duration::from_millis(u64::from(lease_ms)).min(self.settings.max_lease)
        }
    }

    fn lease(&mut self, max: u32, lease_ms: u32) -> Result<Vec<LeasedMessage>, BrokerError> {
        let now = Instant::now();
        if let Some(s) = self.breaker.poll(now) {
            self.breaker_changed(s);
        }
        let want = self.breaker.admit(max, now);
        let lease = self.lease_duration(lease_ms);
        let mut out = Vec::new();
        // Retries first (oldest offset first per shard), round-robin over shards,
        // starting at a different shard each call so no shard is always served last.
        let n = self.shards.len();
        let first = self.rr % n.max(1);
        self.rr = self.rr.wrapping_add(1);
        'retries: loop {
            let mut any = false;
            for s in (0..n).map(|i| (first + i) % n) {
                if out.len() as u32 >= want {
                    break 'retries;
                }
                let Some(&offset) = self.shards[s].ready.iter().next() else {
                    continue;
                };
                any = true;
                self.shards[s].ready.remove(&offset);
                match read_record(&self.topic, s as u32, offset) {
                    Ok(rec) => out.push(self.grant(s as u32, rec, lease)),
                    Err(e) if e.code == ErrorCode::OffsetOutOfRange => {
                        self.lost(s as u32, offset, e)
                    }
                    Err(e) => {
                        // Keep it ready: a read error must not lose the record.
                        self.shards[s].ready.insert(offset);
                        if out.is_empty() {
                            return Err(e);
                        }
                        return Ok(out);
                    }
                }
            }
            if !any {
                break;
            }
        }
        // Then records never delivered: a fair share per shard first, then whatever
        // is left from any shard.
        let share = (want.saturating_sub(out.len() as u32)).div_ceil(n.max(1) as u32);
        for pass in 0..2 {
            for s in (0..n).map(|i| (first + i) % n) {
                let left = want.saturating_sub(out.len() as u32);
                if left == 0 {
                    break;
                }
                let quota = if pass == 0 { left.min(share) } else { left };
                self.read_new(s as u32, quota, lease, &mut out)?;
            }
        }
        Ok(out)
    }

    /// Reads forward from `next` on shard `s`, leasing up to `want` records.
    fn read_new(
        &mut self,
        s: u32,
        want: u32,
        lease: Duration,
        out: &mut Vec<LeasedMessage>,
    ) -> Result<(), BrokerError> {
        let shard = self.topic.shards[s as usize].clone();
        let reader = shard.reader();
        let mut granted = 0u32;
        loop {
            let sq = &mut self.shards[s as usize];
            let start = reader.log_start_offset();
            if sq.next < start {
                tracing::warn!(group = %self.group, topic = %self.topic_name, shard = s, from = sq.next, to = start,
                    "records deleted by retention before they were done");
                sq.entries = sq.entries.split_off(&start);
                sq.done = sq.done.split_off(&start);
                sq.ready = sq.ready.split_off(&start);
                sq.next = start;
                sq.floor = sq.floor.max(start);
            }
            let hwm = reader.high_watermark();
            if granted >= want || sq.next >= hwm || sq.next - sq.floor >= self.settings.window {
                return Ok(());
            }
            let chunks = reader
                .read(sq.next, READ_BYTES)
                .map_err(|e| BrokerError::new(ErrorCode::StorageError, e.to_string()))?;
            if chunks.is_empty() {
                return Ok(());
            }
            let before = sq.next;
            'chunks: for chunk in chunks {
                for b in batch::split(chunk) {
                    let b = b
                        .and_then(Batch::parse)
                        .map_err(|e| BrokerError::new(ErrorCode::CorruptStorage, e.to_string()))?;
                    for rec in b.records() {
                        let sq = &mut self.shards[s as usize];
                        if rec.offset < sq.next {
                            continue;
                        }
                        if granted >= want || sq.next - sq.floor >= self.settings.window {
                            break 'chunks;
                        }
                        let offset = rec.offset;
                        sq.next = offset + 1;
                        if sq.recovered_done.remove(&offset) {
                            sq.mark_done(offset);
                            continue;
                        }
                        if let Some((failure, due_ms)) = sq.recovered_failed.remove(&offset) {
                            let class = self.settings.class_map.class_of(rec.priority);
                            let wait = Duration::from_millis((due_ms - now_ms()).max(0) as u64);
                            self.shards[s as usize].entries.insert(
                                offset,
                                Entry {
                                    class,
                                    failure,
                                    state: EntryState::Waiting,
                                    timer: None,
                                },
                            );
                            if wait.is_zero() {
                                self.make_ready(s, offset);
                                if granted < want {
                                    self.shards[s as usize].ready.remove(&offset);
                                    out.push(self.grant(s, rec, lease));
                                    granted += 1;
                                }
                            } else {
                                let key = self.timers.insert((s, offset, Timer::RetryDue), wait);
                                if let Some(e) = self.shards[s as usize].entries.get_mut(&offset) {
                                    e.timer = Some(key);
                                }
                            }
                            continue;
                        }
                        out.push(self.grant(s, rec, lease));
                        granted += 1;
                    }
                }
            }
            if self.shards[s as usize].next == before {
                return Ok(());
            }
        }
    }

    /// Leases one record (new or due again).
    fn grant(&mut self, s: u32, rec: Record, lease: Duration) -> LeasedMessage {
        let lease_id = self.next_lease.fetch_add(1, Ordering::Relaxed);
        let class = self.settings.class_map.class_of(rec.priority);
        let offset = rec.offset;
        let key = self
            .timers
            .insert((s, offset, Timer::LeaseExpiry { lease_id }), lease);
        let sq = &mut self.shards[s as usize];
        let entry = sq.entries.entry(offset).or_insert(Entry {
            class,
            failure: Failure::default(),
            state: EntryState::Waiting,
            timer: None,
        });
        if let Some(old) = entry.timer.take() {
            self.timers.try_remove(&old);
        }
        entry.timer = Some(key);
        entry.state = EntryState::Leased { lease_id };
        let attempt = entry.failure.failures + 1;
        self.counts[C_LEASED] += 1;
        self.metrics.leased.fetch_add(1, Ordering::Relaxed);
        if attempt > 1 {
            self.counts[C_REDELIVERED] += 1;
            self.metrics.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        LeasedMessage {
            shard: s,
            offset,
            lease_id,
            attempt,
            max_attempts: self.settings.policies[class.index()].max_attempts,
            class: class.index() as u8,
            lease_ms: lease.as_millis().min(u128::from(u32::MAX)) as u32,
            record: single_record_batch(&rec),
        }
    }

    /// A record that cannot be read any more (retention deleted it) is done.
    fn lost(&mut self, s: u32, offset: u64, e: BrokerError) {
        self.dead_waiters.remove(&(s, offset));
        tracing::warn!(group = %self.group, topic = %self.topic_name, shard = s, offset, error = %e,
            "record cannot be read any more; dropping it from the queue");
        self.shards[s as usize].mark_done(offset);
    }

    fn make_ready(&mut self, s: u32, offset: u64) {
        let sq = &mut self.shards[s as usize];
        if let Some(e) = sq.entries.get_mut(&offset) {
            e.state = EntryState::Ready;
            e.timer = None;
            sq.ready.insert(offset);
            self.shared.available.notify_waiters();
        }
    }

    /// The entry of `l` if `l` is its current lease.
    fn current(&mut self, l: &LeaseRef) -> Option<&mut Entry> {
        let e = self
            .shards
            .get_mut(l.shard as usize)?
            .entries
            .get_mut(&l.offset)?;
        match e.state {
            EntryState::Leased { lease_id } if lease_id == l.lease_id => Some(e),
            _ => None,
        }
    }

    async fn ack(&mut self, leases: &[LeaseRef]) -> (Vec<u16>, Option<PendingAppend>) {
        let now = Instant::now();
        let mut codes = Vec::with_capacity(leases.len());
        let mut events = Vec::new();
        for l in leases {
            let Some(e) = self.current(l) else {
                codes.push(ErrorCode::UnknownLease as u16);
                continue;
            };
            if let Some(k) = e.timer.take() {
                self.timers.try_remove(&k);
            }
            let sq = &mut self.shards[l.shard as usize];
            sq.mark_done(l.offset);
            events.push((l.shard, Event::Ack { offset: l.offset }));
            codes.push(0);
            self.counts[C_ACKED] += 1;
            self.metrics.acked.fetch_add(1, Ordering::Relaxed);
            if let Some(s) = self.breaker.acked(now) {
                self.breaker_changed(s);
            }
        }
        if events.is_empty() {
            return (codes, None);
        }
        self.shared.available.notify_waiters();
        match self
            .log
            .append(&self.group, &self.topic_name, &events)
            .await
        {
            Ok(rx) => (codes, Some(rx)),
            Err(e) => {
                tracing::error!(error = %e, "queue state log append failed");
                let code = ErrorCode::StorageError as u16;
                (
                    codes
                        .iter()
                        .map(|c| if *c == 0 { code } else { *c })
                        .collect(),
                    None,
                )
            }
        }
    }

    async fn nack(
        &mut self,
        l: &LeaseRef,
        retriable: bool,
        reason: String,
    ) -> Result<(NackResponse, NackDurable), BrokerError> {
        if self.current(l).is_none() {
            return Err(unknown_lease(l));
        }
        self.counts[C_NACKED] += 1;
        self.metrics.nacked.fetch_add(1, Ordering::Relaxed);
        let (resp, pending) = self.fail(l.shard, l.offset, retriable, reason).await?;
        let durable = match pending {
            Some(rx) => NackDurable::Append(rx),
            None => {
                let (tx, rx) = oneshot::channel();
                self.dead_waiters.insert((l.shard, l.offset), tx);
                NackDurable::Dead(rx)
            }
        };
        Ok((resp, durable))
    }

    /// One failed delivery (nack or expired lease): schedule the retry or dead-letter.
    async fn fail(
        &mut self,
        s: u32,
        offset: u64,
        retriable: bool,
        reason: String,
    ) -> Result<(NackResponse, Option<PendingAppend>), BrokerError> {
        let now = Instant::now();
        let wall = now_ms();
        if let Some(st) = self.breaker.failed(now) {
            self.breaker_changed(st);
        }
        let unit = self.jitter.unit();
        let Some(e) = self.shards[s as usize].entries.get_mut(&offset) else {
            return Err(BrokerError::new(ErrorCode::Unknown, "entry vanished"));
        };
        if let Some(k) = e.timer.take() {
            self.timers.try_remove(&k);
        }
        let f = &mut e.failure;
        f.failures += 1;
        if f.first_ms == 0 {
            f.first_ms = wall;
        }
        f.last_ms = wall;
        f.error = super::state_log::cut(&reason).to_string();
        let policy = self.settings.policies[e.class.index()];
        let failures = f.failures;
        if !retriable || !policy.may_retry(failures) {
            e.state = EntryState::Dying;
            self.dlq_pending.push_back((s, offset));
            self.pump_dead_letters();
            return Ok((
                NackResponse {
                    outcome: NACK_DEAD_LETTERED,
                    attempts: failures,
                    retry_in_ms: 0,
                },
                None,
            ));
        }
        let delay = policy.delay(failures, unit);
        e.state = EntryState::Waiting;
        let failure = e.failure.clone();
        let key = self.timers.insert((s, offset, Timer::RetryDue), delay);
        if let Some(e) = self.shards[s as usize].entries.get_mut(&offset) {
            e.timer = Some(key);
        }
        let ev = Event::Fail {
            offset,
            failure,
            due_ms: wall + delay.as_millis() as i64,
        };
        let rx = self
            .log
            .append(&self.group, &self.topic_name, &[(s, ev)])
            .await
            .map_err(|e| BrokerError::new(ErrorCode::StorageError, e.to_string()))?;
        Ok((
            NackResponse {
                outcome: NACK_RETRY_SCHEDULED,
                attempts: failures,
                retry_in_ms: delay.as_millis().min(u128::from(u32::MAX)) as u32,
            },
            Some(rx),
        ))
    }

    /// Writes waiting records to the dead-letter topic in another task: up to
    /// [`DLQ_BATCH_RECORDS`] records of one source shard in one durable append (one
    /// flush for all). Their DEAD events follow in one state-log batch in
    /// [`QueueActor::on_internal`] once that write is durable, before the next write
    /// starts.
    fn pump_dead_letters(&mut self) {
        if self.dlq_busy {
            return;
        }
        let Some(&(s, _)) = self.dlq_pending.front() else {
            return;
        };
        let mut take = Vec::new();
        let mut rest = std::collections::VecDeque::with_capacity(self.dlq_pending.len());
        for (ps, po) in self.dlq_pending.drain(..) {
            if ps == s && take.len() < DLQ_BATCH_RECORDS {
                take.push(po);
            } else {
                rest.push_back((ps, po));
            }
        }
        self.dlq_pending = rest;
        let items: Vec<(u64, Failure)> = take
            .into_iter()
            .filter_map(|o| {
                let e = self.shards[s as usize].entries.get(&o)?;
                matches!(e.state, EntryState::Dying).then(|| (o, e.failure.clone()))
            })
            .collect();
        if items.is_empty() {
            return self.pump_dead_letters();
        }
        self.dlq_busy = true;
        let topic = self.topic.clone();
        let topics = self.topics.clone();
        let group = self.group.clone();
        let name = dlq::dlq_name(&self.topic_name, &self.settings.dlq_suffix);
        let retention = self.settings.dlq_retention_ms;
        let tx = self.internal_tx.clone();
        let cached = self.dlq.clone();
        tokio::spawn(async move {
            let mut done = DeadLettered {
                shard: s,
                dlq_shard: 0,
                written: Vec::new(),
                failed: Vec::new(),
                lost: Vec::new(),
                error: None,
            };
            let dlq = match cached {
                Some(d) => Ok(d),
                None => {
                    dlq::ensure_topic(&topics, &name, topic.shards.len() as u32, retention).await
                }
            };
            let dlq = match dlq {
                Ok(d) => d,
                Err(e) => {
                    done.failed = items.iter().map(|(o, _)| *o).collect();
                    done.error = Some(e);
                    let _ = tx.send(Internal::DeadWritten(done));
                    return;
                }
            };
            done.dlq_shard = dlq::dlq_shard(&dlq, s);
            // Appends of at most DLQ_APPEND_BYTES (at least one record each), one after
            // the other; the first failure stops the rest.
            let mut at = 0;
            while at < items.len() && done.error.is_none() {
                let (mut batches, mut headers, mut offsets, mut bytes) =
                    (Vec::new(), Vec::new(), Vec::new(), 0usize);
                while at < items.len() && (batches.is_empty() || bytes < DLQ_APPEND_BYTES) {
                    let (offset, failure) = &items[at];
                    at += 1;
                    let built = read_record(&topic, s, *offset)
                        .and_then(|rec| dlq::build_batch(&group, &topic.name, s, &rec, failure));
                    match built {
                        Ok((batch, header)) => {
                            bytes += batch.len();
                            batches.push(batch);
                            headers.push(header);
                            offsets.push(*offset);
                        }
                        Err(e) if e.code == ErrorCode::OffsetOutOfRange => {
                            done.lost.push((*offset, e))
                        }
                        Err(e) => {
                            done.failed.push(*offset);
                            done.error = Some(e);
                            break;
                        }
                    }
                }
                if batches.is_empty() {
                    continue;
                }
                let appended = match dlq.shard(done.dlq_shard) {
                    Ok(shard) => shard
                        .append(batches, headers, true)
                        .await
                        .map_err(|e| BrokerError::new(ErrorCode::StorageError, e.to_string())),
                    Err(e) => Err(e),
                };
                match appended {
                    // One record per batch: the i-th landed at base + i.
                    Ok(out) => done.written.extend(
                        offsets
                            .iter()
                            .enumerate()
                            .map(|(i, o)| (*o, out.base_offset + i as u64)),
                    ),
                    Err(e) => {
                        done.failed.extend(offsets);
                        done.error = Some(e);
                    }
                }
            }
            done.failed.extend(items[at..].iter().map(|(o, _)| *o));
            let _ = tx.send(Internal::DeadWritten(done));
        });
    }

    async fn on_internal(&mut self, msg: Internal) {
        match msg {
            Internal::DeadWritten(done) => {
                self.dlq_busy = false;
                let s = done.shard;
                for (offset, e) in done.lost {
                    self.lost(s, offset, e);
                }
                if !done.written.is_empty() {
                    if self.dlq.is_none() {
                        let name = dlq::dlq_name(&self.topic_name, &self.settings.dlq_suffix);
                        self.dlq = self.topics.get(&name).ok();
                    }
                    self.record_dead(s, done.dlq_shard, &done.written).await;
                }
                if let Some(e) = done.error {
                    tracing::error!(group = %self.group, topic = %self.topic_name, shard = s,
                        records = done.failed.len(), error = %e, "dead-letter write failed; trying again");
                    for offset in done.failed {
                        if let Some(en) = self.shards[s as usize].entries.get_mut(&offset) {
                            let key = self.timers.insert((s, offset, Timer::DlqRetry), DLQ_RETRY);
                            en.timer = Some(key);
                        }
                    }
                }
                self.pump_dead_letters();
            }
        }
    }

    /// Appends the DEAD events of records now durably in the dead-letter topic (one
    /// state-log batch, in dead-letter offset order), marks them done, and answers the
    /// nacks waiting for them once the events are durable.
    async fn record_dead(&mut self, s: u32, dlq_shard: u32, written: &[(u64, u64)]) {
        let mut events = Vec::with_capacity(written.len());
        for &(offset, dlq_offset) in written {
            let failures = self.shards[s as usize]
                .entries
                .get(&offset)
                .map_or(0, |e| e.failure.failures);
            events.push((
                s,
                Event::Dead {
                    offset,
                    failures,
                    dlq_shard,
                    dlq_offset,
                },
            ));
            let high = self.dlq_high.entry(dlq_shard).or_insert(dlq_offset);
            *high = (*high).max(dlq_offset);
        }
        let waiters: Vec<_> = written
            .iter()
            .filter_map(|(o, _)| self.dead_waiters.remove(&(s, *o)))
            .collect();
        match self
            .log
            .append(&self.group, &self.topic_name, &events)
            .await
        {
            Ok(rx) => {
                tokio::spawn(async move {
                    let ok = matches!(rx.await, Ok(Ok(_)));
                    for w in waiters {
                        let _ = w.send(if ok {
                            Ok(())
                        } else {
                            Err(BrokerError::new(
                                ErrorCode::StorageError,
                                "dead-lettered, but not recorded durably",
                            ))
                        });
                    }
                });
            }
            // The records are in the dead-letter topic; the next start heals the
            // missing DEAD events from their headers.
            Err(e) => {
                tracing::error!(error = %e, "cannot record dead-letterings");
                for w in waiters {
                    let _ = w.send(Err(BrokerError::new(
                        ErrorCode::StorageError,
                        e.to_string(),
                    )));
                }
            }
        }
        for &(offset, _) in written {
            self.shards[s as usize].mark_done(offset);
            self.counts[C_DEAD] += 1;
            self.metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(group = %self.group, topic = %self.topic_name, shard = s, records = written.len(), "dead-lettered");
        self.shared.available.notify_waiters();
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

    fn extend(&mut self, l: &LeaseRef, lease_ms: u32) -> Result<ExtendLeaseResponse, BrokerError> {
        let d = self.lease_duration(lease_ms);
        let Some(e) = self.current(l) else {
            return Err(unknown_lease(l));
        };
        let key = e.timer;
        match key {
            Some(k) => self.timers.reset(&k, d),
            None => return Err(unknown_lease(l)),
        }
        Ok(ExtendLeaseResponse {
            lease_ms: d.as_millis().min(u128::from(u32::MAX)) as u32,
        })
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
                    high_watermark: self.topic.shards[i].reader().high_watermark(),
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
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Reads the record at `offset` of shard `s`.
pub fn read_record(topic: &Topic, s: u32, offset: u64) -> Result<Record, BrokerError> {
    let reader = topic.shard(s)?.reader();
    let chunks = reader.read(offset, 1).map_err(|e| {
        let code = match e {
            crate::storage::StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            _ => ErrorCode::StorageError,
        };
        BrokerError::new(code, e.to_string())
    })?;
    for chunk in chunks {
        for b in batch::split(chunk) {
            let b = b
                .and_then(Batch::parse)
                .map_err(|e| BrokerError::new(ErrorCode::CorruptStorage, e.to_string()))?;
            let found = b.records().find(|r| r.offset == offset);
            if let Some(r) = found {
                return Ok(r);
            }
        }
    }
    Err(BrokerError::new(
        ErrorCode::OffsetOutOfRange,
        format!("no record at {}/{s}/{offset}", topic.name),
    ))
}

/// The record re-encoded as a batch of one, `base_offset` stamped with its offset.
pub fn single_record_batch(rec: &Record) -> Bytes {
    let headers: Vec<(&str, &[u8])> = rec
        .headers
        .iter()
        .map(|h| (h.name.as_str(), h.value.as_ref()))
        .collect();
    let mut b = BatchBuilder::with_capacity(128 + rec.key.len() + rec.value.len());
    // The record came out of a validated batch, so it fits a batch again.
    let pushed = b.push(&NewRecord {
        priority: rec.priority,
        complexity: rec.complexity,
        timestamp_ms: rec.timestamp_ms,
        key: &rec.key,
        value: &rec.value,
        headers: &headers,
    });
    match pushed.and_then(|_| b.finish()) {
        Ok(bytes) => {
            let mut v = bytes.to_vec();
            batch::set_base_offset(&mut v, rec.offset);
            Bytes::from(v)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot re-encode a stored record");
            Bytes::new()
        }
    }
}

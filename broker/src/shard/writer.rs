//! The shard writer thread and its handle, [`Shard`].

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, watch};
use weir_protocol::batch::BatchHeader;
use weir_protocol::classes::{Class, ClassMap, CLASS_COUNT, DEFAULT_CLASS_WEIGHTS};
use weir_protocol::messages::Durability;

use super::class_index::ClassIndex;
use super::idempotence::{continues, ProducerTable, Verdict};
use crate::scheduler::{Wfq, DEFAULT_AGING};
use crate::storage::{Log, LogConfig, LogReader, StorageError};

/// Most appends the writer takes into one group before it writes and flushes it.
pub const MAX_GROUP_COMMANDS: usize = 1024;

/// Most bytes the writer takes into one group. Bounding the group bounds how long a
/// newly queued P0 append waits behind the group being written: it is scheduled into
/// the next one.
pub const DEFAULT_GROUP_BYTES_MAX: usize = 4 << 20;

/// How many of the newest offsets are scanned on open to rebuild producer state. A
/// producer idle for longer than this many records is forgotten, which only means
/// its next batch cannot be recognised as a retry of one written before that window.
pub const PRODUCER_STATE_SCAN_OFFSETS: u64 = 2_000_000;

/// Settings of one shard's writer.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    pub log: LogConfig,
    pub durability: Durability,
    /// Flush period for `Interval` durability.
    pub flush_interval_ms: u32,
    /// Appends that may wait in each class's lane; senders of that class wait when it
    /// is full (other classes do not). The writer holds up to as many again that it has
    /// taken from the lane and scheduled.
    pub queue_depth: usize,
    /// How often retention runs.
    pub retention_check_ms: u64,
    /// Priority → class map: which lane an append waits in.
    pub classes: ClassMap,
    /// WFQ weights of the lanes.
    pub weights: [u32; CLASS_COUNT],
    /// Aging thresholds of the lanes (see [`crate::scheduler::wfq`]).
    pub aging: [Duration; CLASS_COUNT],
    /// Most bytes written per group; see [`DEFAULT_GROUP_BYTES_MAX`].
    pub group_bytes_max: usize,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            log: LogConfig::default(),
            durability: Durability::Interval,
            flush_interval_ms: 1000,
            queue_depth: 1024,
            retention_check_ms: 30_000,
            classes: ClassMap::default(),
            weights: DEFAULT_CLASS_WEIGHTS,
            aging: DEFAULT_AGING,
            group_bytes_max: DEFAULT_GROUP_BYTES_MAX,
        }
    }
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    pub base_offset: u64,
    pub last_offset: u64,
    /// Every batch was a retry of one already stored; nothing was written.
    pub duplicate: bool,
}

/// Why an append was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("storage: {0}")]
    Storage(String),
    #[error("out of order sequence: expected {expected}, got {got}")]
    OutOfOrder { expected: u32, got: u32 },
    #[error("producer fenced by epoch {current_epoch}")]
    Fenced { current_epoch: u16 },
    #[error("shard is closed")]
    Closed,
}

struct AppendCmd {
    batches: Vec<Bytes>,
    headers: Vec<BatchHeader>,
    durable: bool,
    reply: Option<oneshot::Sender<Result<AppendOutcome, AppendError>>>,
}

impl AppendCmd {
    fn bytes(&self) -> usize {
        self.batches.iter().map(|b| b.len()).sum()
    }
}

enum Control {
    Flush(oneshot::Sender<Result<(), AppendError>>),
    Shutdown,
}

/// Per-class counters of one shard's writer, for `/metrics` and load signals.
#[derive(Debug, Default)]
pub struct ClassStats {
    /// Shard-wide: offsets below this were covered by a completed flush of this
    /// writer (0 until its first flush). Every durable acknowledgement is below it.
    pub flushed_offset: AtomicU64,
    /// Shard-wide: flushes completed (one may cover many durable appends).
    pub flushes: AtomicU64,
    /// Appends written (or answered as duplicates), per class.
    pub appends: [AtomicU64; CLASS_COUNT],
    /// Total microseconds appends waited in their lane before being written.
    pub wait_us: [AtomicU64; CLASS_COUNT],
    /// Longest wait of an append since the last time it was read and reset.
    pub wait_us_max: [AtomicU64; CLASS_COUNT],
}

/// Handle to one shard: cheap to share (`Arc`), used by every connection.
pub struct Shard {
    lanes: [mpsc::Sender<AppendCmd>; CLASS_COUNT],
    control: mpsc::Sender<Control>,
    classes: ClassMap,
    stats: Arc<ClassStats>,
    /// Built on the first priority-ordered read; see [`ClassIndex`].
    class_index: Mutex<ClassIndex>,
    reader: LogReader,
    hwm: watch::Receiver<u64>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("high_watermark", &*self.hwm.borrow())
            .finish()
    }
}

/// A queued append whose answer has not come yet.
pub type PendingAppend = oneshot::Receiver<Result<AppendOutcome, AppendError>>;

impl Shard {
    /// Opens (recovering) the log in `dir` and starts its writer thread.
    pub fn open(dir: &Path, name: &str, config: ShardConfig) -> Result<Arc<Shard>, StorageError> {
        let log = Log::open(dir, config.log.clone())?;
        let reader = log.reader();
        let producers = rebuild_producers(&reader, config.classes);
        let depth = config.queue_depth.max(1);
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..CLASS_COUNT).map(|_| mpsc::channel(depth)).unzip();
        let lanes: [mpsc::Sender<AppendCmd>; CLASS_COUNT] = senders
            .try_into()
            .map_err(|_| ())
            .expect("one lane per class");
        let receivers: [mpsc::Receiver<AppendCmd>; CLASS_COUNT] = receivers
            .try_into()
            .map_err(|_| ())
            .expect("one lane per class");
        let (control, control_rx) = mpsc::channel(16);
        let (hwm_tx, hwm_rx) = watch::channel(log.high_watermark());
        let stats = Arc::new(ClassStats::default());
        let classes = config.classes;
        let writer = Writer {
            log,
            producers,
            hwm: hwm_tx,
            stats: stats.clone(),
            config,
        };
        let thread = std::thread::Builder::new()
            .name(format!("weir-w-{name}"))
            .spawn(move || {
                // Made from a pinned core thread (CreateTopic), it would inherit the pin,
                // and so would its flush and segment threads.
                crate::affinity::unpin_current_thread();
                writer.run(receivers, control_rx)
            })
            .map_err(StorageError::from)?;
        Ok(Arc::new(Shard {
            lanes,
            control,
            classes,
            stats,
            class_index: Mutex::new(ClassIndex::default()),
            reader,
            hwm: hwm_rx,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Queues an append in the lane of its class: the class of its highest-priority
    /// batch. Returns once the append is in the lane, so appends of one class queued
    /// one after another by one task are written in that order; the receiver yields the
    /// outcome. `batches` must be validated, with `headers` their headers.
    pub async fn enqueue(
        &self,
        batches: Vec<Bytes>,
        headers: Vec<BatchHeader>,
        durable: bool,
    ) -> Result<PendingAppend, AppendError> {
        let class = self.class_of(&headers);
        let (reply, rx) = oneshot::channel();
        self.lanes[class.index()]
            .send(AppendCmd {
                batches,
                headers,
                durable,
                reply: Some(reply),
            })
            .await
            .map_err(|_| AppendError::Closed)?;
        Ok(rx)
    }

    /// The class an append of these batches is scheduled in.
    pub fn class_of(&self, headers: &[BatchHeader]) -> Class {
        let top = headers.iter().map(|h| h.priority).min().unwrap_or(u8::MAX);
        self.classes.class_of(top)
    }

    /// The priority → class map this shard schedules by.
    pub fn classes(&self) -> ClassMap {
        self.classes
    }

    /// The class index, caught up to the high-water mark; see [`ClassIndex`].
    pub fn class_index(&self) -> Result<std::sync::MutexGuard<'_, ClassIndex>, StorageError> {
        let mut index = self.class_index.lock().expect("class index lock");
        index.catch_up(&self.reader, &self.classes)?;
        Ok(index)
    }

    /// Whether bringing the class index up to date may take long: more than
    /// `offsets` records unscanned, or another caller scanning right now. Async callers
    /// then catch up on the blocking pool first, so a first priority read of a large
    /// log does not hold a connection runtime's thread for the whole scan.
    pub fn class_index_is_behind(&self, offsets: u64) -> bool {
        match self.class_index.try_lock() {
            Ok(index) => {
                self.reader
                    .high_watermark()
                    .saturating_sub(index.scanned_to())
                    > offsets
            }
            Err(_) => true,
        }
    }

    /// Appends waiting in `class`'s lane (not yet taken by the writer).
    pub fn queued(&self, class: Class) -> usize {
        let lane = &self.lanes[class.index()];
        lane.max_capacity() - lane.capacity()
    }

    /// The writer's per-class counters.
    pub fn stats(&self) -> &ClassStats {
        &self.stats
    }

    /// Queues an append and waits for its outcome.
    pub async fn append(
        &self,
        batches: Vec<Bytes>,
        headers: Vec<BatchHeader>,
        durable: bool,
    ) -> Result<AppendOutcome, AppendError> {
        let rx = self.enqueue(batches, headers, durable).await?;
        rx.await.map_err(|_| AppendError::Closed)?
    }

    /// Flushes everything written so far.
    pub async fn flush(&self) -> Result<(), AppendError> {
        let (reply, rx) = oneshot::channel();
        self.control
            .send(Control::Flush(reply))
            .await
            .map_err(|_| AppendError::Closed)?;
        rx.await.map_err(|_| AppendError::Closed)?
    }

    /// The log's readers' view.
    pub fn reader(&self) -> &LogReader {
        &self.reader
    }

    /// A watch that changes whenever the high-water mark advances.
    pub fn watch_high_watermark(&self) -> watch::Receiver<u64> {
        self.hwm.clone()
    }

    /// Stops the writer after it has written and flushed everything queued before
    /// this call, and waits for its thread. Later appends fail with
    /// [`AppendError::Closed`].
    pub async fn close(&self) {
        let _ = self.control.send(Control::Shutdown).await;
        let thread = self.thread.lock().expect("shard thread lock").take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

fn rebuild_producers(reader: &LogReader, classes: ClassMap) -> ProducerTable {
    let mut table = ProducerTable::new(classes);
    let from = reader
        .high_watermark()
        .saturating_sub(PRODUCER_STATE_SCAN_OFFSETS);
    let scanned = reader.scan_batches(from, |_, h| {
        table.record(h);
        Ok::<(), StorageError>(())
    });
    if let Err(e) = scanned {
        // Recovery already checked the log; a failure here only shortens the window
        // in which retries are recognised.
        tracing::warn!(error = %e, "producer state rebuilt from part of the log");
    }
    table
}

type Waiter = (
    oneshot::Sender<Result<AppendOutcome, AppendError>>,
    Result<AppendOutcome, AppendError>,
);

/// The writer thread's state: the only owner of the log and the producer table.
struct Writer {
    log: Log,
    producers: ProducerTable,
    hwm: watch::Sender<u64>,
    stats: Arc<ClassStats>,
    config: ShardConfig,
}

impl Writer {
    /// Runs the writer until shutdown or until every handle is gone.
    ///
    /// Each turn moves what has arrived in the lanes into the scheduler (at most
    /// `queue_depth` per class, so memory stays bounded and full lanes push back on
    /// their senders), takes a group in weighted-fair order up to `group_bytes_max`,
    /// writes it, and hands the appends that wait for durability to the [`Flusher`]
    /// (one flush at a time, in the background). Appends that arrive while
    /// a group is written compete for the next group, so a P0 append overtakes P3
    /// appends queued before it at the next group boundary.
    fn run(
        mut self,
        mut lanes: [mpsc::Receiver<AppendCmd>; CLASS_COUNT],
        mut control: mpsc::Receiver<Control>,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("writer runtime");
        rt.block_on(async move {
            let cfg = self.config.clone();
            let flush_every = Duration::from_millis(u64::from(cfg.flush_interval_ms.max(1)));
            let retention_every = Duration::from_millis(cfg.retention_check_ms.max(100));
            let interval_flush = cfg.durability == Durability::Interval;
            let depth = cfg.queue_depth.max(1);
            let mut wfq: Wfq<AppendCmd> = Wfq::new(cfg.weights, cfg.aging);
            let mut dirty = false;
            let mut next_flush = Instant::now() + flush_every;
            let mut next_retention = Instant::now() + retention_every;
            let mut flusher = Flusher {
                always: cfg.durability == Durability::Always,
                ..Flusher::default()
            };
            let mut flusher_replies = Vec::new();
            let ahead_bytes_max = cfg.group_bytes_max.saturating_mul(2);
            let mut shutdown = false;
            let mut open = [true; CLASS_COUNT];
            loop {
                let now = Instant::now();
                for (i, lane) in lanes.iter_mut().enumerate() {
                    let class = Class::from_index(i).expect("lane index");
                    while open[i] && wfq.lane_len(class) < depth {
                        match lane.try_recv() {
                            Ok(cmd) => {
                                let cost = cmd.bytes() as u64;
                                wfq.push(class, cmd, cost, now);
                            }
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => open[i] = false,
                        }
                    }
                }
                loop {
                    match control.try_recv() {
                        Ok(Control::Flush(reply)) => flusher.want(Vec::new(), Some(reply)),
                        Ok(Control::Shutdown) => shutdown = true,
                        Err(_) => break,
                    }
                }
                if shutdown {
                    // Everything queued before the shutdown is written and flushed.
                    for (i, lane) in lanes.iter_mut().enumerate() {
                        lane.close();
                        let class = Class::from_index(i).expect("lane index");
                        while let Ok(cmd) = lane.try_recv() {
                            let cost = cmd.bytes() as u64;
                            wfq.push(class, cmd, cost, now);
                        }
                    }
                    while !wfq.is_empty() {
                        let durable = self.write_group(&mut wfq, usize::MAX).2;
                        flusher.want(durable, None);
                    }
                    // One synchronous flush (it waits for a running one) answers
                    // everyone still waiting for durability.
                    let flushed = self.log.flush().map_err(|e| {
                        tracing::error!(error = %e, "flush failed");
                        AppendError::Storage(e.to_string())
                    });
                    if flushed.is_ok() {
                        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .flushed_offset
                            .fetch_max(self.log.high_watermark(), Ordering::Release);
                    }
                    flusher.answer_all(flushed);
                    break;
                }
                self.finish_flush(&mut flusher, None);
                // Durable writers may run ahead of the disk by at most this much: past
                // it, the writer waits for the running flush, so flushes stay short
                // and a backlog waits in the class lanes, where P0 overtakes it.
                let behind = flusher.running.is_some()
                    && flusher.has_waiters()
                    && flusher.written_since_start >= ahead_bytes_max;
                if !wfq.is_empty() && !behind {
                    let (wrote, bytes, durable) =
                        self.write_group(&mut wfq, cfg.group_bytes_max);
                    flusher.written_since_start += bytes;
                    dirty |= wrote;
                    if !durable.is_empty() || (wrote && cfg.durability == Durability::Always) {
                        flusher.want(durable, None);
                    }
                    self.start_flush(&mut flusher);
                } else if flusher.wanted && flusher.running.is_none() {
                    self.start_flush(&mut flusher);
                } else if !open.iter().any(|&o| o) && flusher.running.is_none() {
                    break; // every handle dropped without a shutdown
                } else {
                    let deadline = if interval_flush && dirty {
                        next_flush.min(next_retention)
                    } else {
                        next_retention
                    };
                    let [l0, l1, l2, l3] = &mut lanes;
                    // While waiting behind a flush, lanes fill only to their depth (then
                    // senders wait: backpressure).
                    let room = Class::ALL.map(|c| wfq.lane_len(c) < depth);
                    let mut flushed = None;
                    let running = flusher.running.as_mut().map(|r| &mut r.done);
                    let flush_done = async {
                        match running {
                            Some(done) => done
                                .await
                                .unwrap_or_else(|_| Err("flush thread ended".into())),
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        biased;
                        c = control.recv() => match c {
                            Some(Control::Flush(reply)) => flusher_replies.push(reply),
                            Some(Control::Shutdown) | None => shutdown = true,
                        },
                        r = flush_done => flushed = Some(r),
                        Some(cmd) = l0.recv(), if open[0] && room[0] => { let cost = cmd.bytes() as u64; wfq.push(Class::P0, cmd, cost, Instant::now()) }
                        Some(cmd) = l1.recv(), if open[1] && room[1] => { let cost = cmd.bytes() as u64; wfq.push(Class::P1, cmd, cost, Instant::now()) }
                        Some(cmd) = l2.recv(), if open[2] && room[2] => { let cost = cmd.bytes() as u64; wfq.push(Class::P2, cmd, cost, Instant::now()) }
                        Some(cmd) = l3.recv(), if open[3] && room[3] => { let cost = cmd.bytes() as u64; wfq.push(Class::P3, cmd, cost, Instant::now()) }
                        _ = tokio::time::sleep_until(deadline.into()) => {}
                    }
                    for reply in flusher_replies.drain(..) {
                        flusher.want(Vec::new(), Some(reply));
                    }
                    if let Some(r) = flushed {
                        self.finish_flush(&mut flusher, Some(r));
                    }
                }
                let now = Instant::now();
                if interval_flush && dirty && now >= next_flush {
                    // Off the writer thread: a second's worth of fdatasync must not stall
                    // the appends (and P0 work) queued behind it. If a flush is running,
                    // this one starts when it ends.
                    flusher.want(Vec::new(), None);
                    self.start_flush(&mut flusher);
                    dirty = false;
                    next_flush = now + flush_every;
                } else if !dirty {
                    next_flush = now + flush_every;
                }
                if now >= next_retention {
                    // Cheap here: it only detaches segments; their files are deleted
                    // on a thread of their own.
                    match self.log.apply_retention(crate::clock::now_ms()) {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(segments = n, "retention removed segments"),
                        Err(e) => tracing::error!(error = %e, "retention failed"),
                    }
                    next_retention = now + retention_every;
                }
            }
            if let Err(e) = self.log.flush() {
                tracing::error!(error = %e, "final flush failed");
            }
        });
    }

    /// Takes one group from the scheduler (at least one append when any is queued, then
    /// more while under `bytes_max` and [`MAX_GROUP_COMMANDS`]), writes it and answers
    /// `leader` waiters. Returns whether anything was written, and the waiters that
    /// must wait for a flush (the caller hands them to the [`Flusher`]).
    fn write_group(
        &mut self,
        wfq: &mut Wfq<AppendCmd>,
        bytes_max: usize,
    ) -> (bool, usize, Vec<Waiter>) {
        let now = Instant::now();
        let mut leader_waiters: Vec<Waiter> = Vec::new();
        let mut durable_waiters: Vec<Waiter> = Vec::new();
        let mut wrote = false;
        let mut bytes = 0usize;
        let mut count = 0usize;
        let mut top_class = None;
        while count < MAX_GROUP_COMMANDS && (count == 0 || bytes < bytes_max) {
            // A group that holds P0 work ends before lower-class work, so P0 acks are
            // not held back by writing P3 data. (A durable P0 ack may still wait for a
            // flush already running, then for its own.)
            if top_class == Some(Class::P0) && wfq.peek_class(now) != Some(Class::P0) {
                break;
            }
            let Some(served) = wfq.pop(now) else { break };
            top_class = Some(top_class.map_or(served.class, |c: Class| c.min(served.class)));
            let c = served.class.index();
            let waited_us = served.waited.as_micros() as u64;
            self.stats.appends[c].fetch_add(1, Ordering::Relaxed);
            self.stats.wait_us[c].fetch_add(waited_us, Ordering::Relaxed);
            self.stats.wait_us_max[c].fetch_max(waited_us, Ordering::Relaxed);
            let cmd = served.item;
            bytes += cmd.bytes();
            count += 1;
            let result = append_one(&mut self.log, &mut self.producers, cmd.batches, cmd.headers);
            if matches!(&result, Ok(o) if !o.duplicate) {
                wrote = true;
            }
            if let Some(reply) = cmd.reply {
                if cmd.durable && result.is_ok() {
                    durable_waiters.push((reply, result));
                } else {
                    leader_waiters.push((reply, result));
                }
            }
        }
        if wrote {
            let new = self.log.high_watermark();
            let old = self.hwm.send_replace(new);
            crate::invariant!(
                new >= old,
                "high-water mark monotonic",
                "the shard's watch would move from {old} back to {new}"
            );
        }
        for (reply, result) in leader_waiters {
            let _ = reply.send(result);
        }
        (wrote, bytes, durable_waiters)
    }

    /// Starts a background flush covering everything written so far, if one is wanted
    /// and none is running; the waiters queued until now ride on it.
    fn start_flush(&mut self, f: &mut Flusher) {
        if !f.wanted || f.running.is_some() {
            return;
        }
        let (tx, done) = oneshot::channel();
        match self.log.flush_in_background(move |r| {
            let _ = tx.send(r);
        }) {
            Ok(()) => {
                f.written_since_start = 0;
                f.running = Some(RunningFlush {
                    done,
                    covers: std::mem::take(&mut f.queued),
                    covers_to: self.log.high_watermark(),
                });
                f.wanted = false;
            }
            Err(e) => {
                // The log is failed: nothing waiting will ever be durable.
                tracing::error!(error = %e, "flush failed");
                let err = Err(AppendError::Storage(e.to_string()));
                let queued = std::mem::take(&mut f.queued);
                queued.answer(err);
                f.wanted = false;
            }
        }
    }

    /// Answers the running flush's waiters once it is done: with `result` when the
    /// caller already awaited it, else if it has finished meanwhile.
    fn finish_flush(&mut self, f: &mut Flusher, result: Option<Result<(), String>>) {
        let Some(running) = f.running.as_mut() else {
            return;
        };
        let r = match result {
            Some(r) => r,
            None => match running.done.try_recv() {
                Ok(r) => r,
                Err(oneshot::error::TryRecvError::Empty) => return,
                Err(oneshot::error::TryRecvError::Closed) => Err("flush thread ended".into()),
            },
        };
        let running = f.running.take().expect("checked above");
        match &r {
            Ok(()) => {
                self.stats.flushes.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .flushed_offset
                    .fetch_max(running.covers_to, Ordering::Release);
            }
            Err(e) => tracing::error!(error = %e, "flush failed"),
        }
        running.covers.answer(r.map_err(AppendError::Storage));
        // Whatever queued up meanwhile goes with the next flush, started at once.
        self.start_flush(f);
    }
}

/// Answers waiting for durability.
#[derive(Default)]
struct Durables {
    /// Appends acked once flushed, each with its append's own outcome.
    waiters: Vec<Waiter>,
    /// Explicit flush requests.
    replies: Vec<oneshot::Sender<Result<(), AppendError>>>,
}

impl Durables {
    fn answer(self, flushed: Result<(), AppendError>) {
        for (reply, result) in self.waiters {
            let _ = reply.send(flushed.clone().and(result));
        }
        for reply in self.replies {
            let _ = reply.send(flushed.clone());
        }
    }
}

/// A background flush and the answers that wait for it.
struct RunningFlush {
    done: oneshot::Receiver<Result<(), String>>,
    covers: Durables,
    /// The high-water mark when it started: everything below is durable once it is done.
    covers_to: u64,
}

/// Durable acknowledgements, pipelined: at most one flush runs (on its own thread)
/// while the writer keeps writing; answers that arrive meanwhile queue for the next
/// flush, which starts as soon as the running one ends. So a durable append waits for
/// at most the running flush plus its own, and the disk syncs one group while the next
/// is written, instead of the writer idling through every `fdatasync`.
#[derive(Default)]
struct Flusher {
    running: Option<RunningFlush>,
    queued: Durables,
    /// A flush should start (someone waits, or the topic's durability asks for one).
    wanted: bool,
    /// Bytes written since the running flush started (the next flush's share).
    written_since_start: usize,
    /// Every group of this shard needs a flush (`durability = always`).
    always: bool,
}

impl Flusher {
    fn want(
        &mut self,
        waiters: Vec<Waiter>,
        reply: Option<oneshot::Sender<Result<(), AppendError>>>,
    ) {
        self.queued.waiters.extend(waiters);
        self.queued.replies.extend(reply);
        self.wanted = true;
    }

    /// Whether anyone waits for the next flush.
    fn has_waiters(&self) -> bool {
        self.always || !self.queued.waiters.is_empty() || !self.queued.replies.is_empty()
    }

    /// Everyone waiting, running or queued, gets `flushed`.
    fn answer_all(&mut self, flushed: Result<(), AppendError>) {
        if let Some(r) = self.running.take() {
            r.covers.answer(flushed.clone());
        }
        std::mem::take(&mut self.queued).answer(flushed);
        self.wanted = false;
    }
}

fn append_one(
    log: &mut Log,
    producers: &mut ProducerTable,
    batches: Vec<Bytes>,
    headers: Vec<BatchHeader>,
) -> Result<AppendOutcome, AppendError> {
    let mut first: Option<u64> = None;
    let mut last = 0u64;
    let mut to_write = Vec::with_capacity(batches.len());
    let mut to_write_headers: Vec<BatchHeader> = Vec::with_capacity(batches.len());
    // Lanes accepted so far in this append, with their last sequence (only needed, and
    // only allocated, when there is more than one batch).
    let mut lanes =
        (batches.len() > 1).then(std::collections::HashMap::<(u64, u8), (u16, u32)>::new);
    for (batch, header) in batches.into_iter().zip(headers) {
        match producers.check(&header) {
            Verdict::Append => {
                // `check` sees the table as it was before this append, not this
                // append's earlier batches: a later batch of a lane must continue the
                // earlier one, or the append is refused. (Without this, two copies of
                // one batch in a request would both be written.)
                if let (Some(lanes), Some(lane)) = (lanes.as_mut(), producers.lane(&header)) {
                    let next = (header.producer_epoch, header.last_sequence());
                    if let Some((epoch, last)) = lanes.insert(lane, next) {
                        if !continues(epoch, last, &header) {
                            return Err(AppendError::OutOfOrder {
                                expected: last.wrapping_add(1),
                                got: header.base_sequence,
                            });
                        }
                    }
                }
                to_write.push(batch);
                to_write_headers.push(header);
            }
            Verdict::Duplicate {
                base_offset,
                last_offset,
            } => {
                if to_write.is_empty() {
                    first.get_or_insert(base_offset);
                    last = last_offset;
                }
            }
            Verdict::OutOfOrder { expected, got } => {
                return Err(AppendError::OutOfOrder { expected, got })
            }
            Verdict::Fenced { current_epoch } => return Err(AppendError::Fenced { current_epoch }),
        }
    }
    if to_write.is_empty() {
        let base = first.ok_or_else(|| AppendError::Storage("empty append".into()))?;
        return Ok(AppendOutcome {
            base_offset: base,
            last_offset: last,
            duplicate: true,
        });
    }
    let info = log
        .append(&to_write)
        .map_err(|e| AppendError::Storage(e.to_string()))?;
    let mut next = info.base_offset;
    for mut h in to_write_headers {
        h.base_offset = next;
        next += u64::from(h.record_count);
        producers.accept(&h);
    }
    Ok(AppendOutcome {
        base_offset: first.unwrap_or(info.base_offset),
        last_offset: info.last_offset,
        duplicate: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_protocol::batch::{BatchBuilder, NewRecord};

    fn config() -> ShardConfig {
        ShardConfig {
            log: LogConfig {
                segment_bytes: 1 << 20,
                ..LogConfig::default()
            },
            durability: Durability::Always,
            ..ShardConfig::default()
        }
    }

    fn batch(pid: u64, seq: u32, n: u32, tag: &str) -> (Bytes, BatchHeader) {
        sized_batch(5, pid, seq, n, tag, 0)
    }

    fn sized_batch(
        priority: u8,
        pid: u64,
        seq: u32,
        n: u32,
        tag: &str,
        pad: usize,
    ) -> (Bytes, BatchHeader) {
        let mut b = if pid == 0 {
            BatchBuilder::new()
        } else {
            BatchBuilder::new().producer(pid, 0, seq)
        };
        for i in 0..n {
            let v = format!("{tag}-{i}{}", "x".repeat(pad));
            let mut r = NewRecord::value(1, v.as_bytes());
            r.priority = priority;
            b.push(&r).unwrap();
        }
        let bytes = b.finish().unwrap();
        let h = BatchHeader::read(&bytes).unwrap();
        (bytes, h)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_durable_appends_get_dense_distinct_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let shard = Shard::open(dir.path(), "t", config()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..64 {
            let shard = shard.clone();
            tasks.push(tokio::spawn(async move {
                let (b, h) = batch(0, 0, 3, &format!("w{i}"));
                shard.append(vec![b], vec![h], true).await.unwrap()
            }));
        }
        let mut got = Vec::new();
        for t in tasks {
            let o = t.await.unwrap();
            assert_eq!(o.last_offset, o.base_offset + 2);
            got.push(o.base_offset);
        }
        got.sort();
        assert_eq!(got, (0..64).map(|i| i * 3).collect::<Vec<u64>>());
        assert_eq!(shard.reader().high_watermark(), 192);
        shard.close().await;
    }

    /// Durable acks are pipelined (the writer keeps writing while a flush runs), but
    /// each one is answered only after a flush that covers it completed; leader acks
    /// never wait for a flush; many durable appends share few flushes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn durable_acks_wait_for_a_covering_flush_while_writes_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let shard = Shard::open(
            dir.path(),
            "t",
            ShardConfig {
                durability: Durability::None,
                ..config()
            },
        )
        .unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let shard = shard.clone();
            tasks.push(tokio::spawn(async move {
                let durable = i % 2 == 0;
                let (b, h) = sized_batch(5, 0, 0, 2, &format!("a{i}"), 2000);
                let o = shard.append(vec![b], vec![h], durable).await.unwrap();
                // Read right when the ack arrives: the flush must already cover it.
                let flushed = shard.stats().flushed_offset.load(Ordering::Acquire);
                (durable, o.last_offset, flushed)
            }));
        }
        let mut durable_acks = 0;
        for t in tasks {
            let (durable, last, flushed) = t.await.unwrap();
            if durable {
                durable_acks += 1;
                assert!(
                    flushed > last,
                    "durable ack for offset {last} before a flush covered it (flushed to {flushed})"
                );
            }
        }
        assert_eq!(durable_acks, 100);
        let flushes = shard.stats().flushes.load(Ordering::Relaxed);
        assert!(
            (1..100).contains(&flushes),
            "{flushes} flushes for 100 durable appends"
        );
        shard.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_p0_append_overtakes_queued_p3_appends() {
        let dir = tempfile::tempdir().unwrap();
        let shard = Shard::open(
            dir.path(),
            "t",
            ShardConfig {
                group_bytes_max: 256 * 1024,
                durability: Durability::None,
                ..config()
            },
        )
        .unwrap();
        // 400 P3 appends of 64 KiB (25 MiB) queued in one go, then one P0 append.
        let (p3, h3) = sized_batch(10, 0, 0, 1, "p3", 64 * 1024);
        let mut pending = Vec::new();
        for _ in 0..400 {
            pending.push(
                shard
                    .enqueue(vec![p3.clone()], vec![h3], false)
                    .await
                    .unwrap(),
            );
        }
        let (p0, h0) = sized_batch(1, 0, 0, 1, "p0", 10);
        assert_eq!(shard.class_of(&[h0]), Class::P0);
        let p0_offset = shard
            .append(vec![p0], vec![h0], false)
            .await
            .unwrap()
            .base_offset;
        let mut after = 0;
        for rx in pending {
            if rx.await.unwrap().unwrap().base_offset > p0_offset {
                after += 1;
            }
        }
        // Groups are at most 256 KiB (4 appends), so the P0 append goes into one of the
        // first few groups after it arrives, ahead of most queued P3 appends.
        assert!(
            after >= 300,
            "only {after} of 400 P3 appends were written after P0"
        );
        let s = shard.stats();
        assert_eq!(s.appends[0].load(Ordering::Relaxed), 1);
        assert_eq!(s.appends[3].load(Ordering::Relaxed), 400);
        shard.close().await;
    }

    /// Batches of one append are checked against the producer table as it was before
    /// the append, so a second batch of one lane is refused rather than written
    /// unchecked (two copies of one batch would otherwise both be stored).
    #[tokio::test]
    async fn two_batches_of_one_lane_in_one_append_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let shard = Shard::open(dir.path(), "t", config()).unwrap();
        let (b0, h0) = batch(7, 0, 2, "a");
        assert_eq!(
            shard
                .append(vec![b0.clone(), b0.clone()], vec![h0, h0], true)
                .await,
            Err(AppendError::OutOfOrder {
                expected: 2,
                got: 0
            })
        );
        let (gap, hg) = batch(7, 5, 1, "gap");
        assert_eq!(
            shard
                .append(vec![b0.clone(), gap], vec![h0, hg], true)
                .await,
            Err(AppendError::OutOfOrder {
                expected: 2,
                got: 5
            })
        );
        assert_eq!(shard.reader().high_watermark(), 0, "nothing was written");
        // A lane's consecutive batches, and other producers' batches, are fine.
        let (b1, h1) = batch(7, 2, 2, "b");
        let (b2, h2) = batch(8, 0, 1, "c");
        let o = shard
            .append(vec![b0, b2, b1], vec![h0, h2, h1], true)
            .await
            .unwrap();
        assert_eq!((o.base_offset, o.last_offset), (0, 4));
        let (b3, h3) = batch(7, 4, 1, "d");
        assert_eq!(
            shard
                .append(vec![b3], vec![h3], true)
                .await
                .unwrap()
                .base_offset,
            5
        );
        shard.close().await;
    }

    /// Retention runs on the writer's schedule but deletes files on its own thread:
    /// old segments go while the writer goes on taking appends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_removes_segments_while_appends_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let shard = Shard::open(
            dir.path(),
            "t",
            ShardConfig {
                log: LogConfig {
                    segment_bytes: 8192,
                    retention_ms: 0,
                    retention_bytes: 32 * 1024,
                    ..LogConfig::default()
                },
                durability: Durability::None,
                retention_check_ms: 100,
                ..config()
            },
        )
        .unwrap();
        let (b, h) = sized_batch(5, 0, 0, 1, "r", 1000);
        let mut appended = 0u64;
        // Bounded: retention checks every 100 ms; 3,000 rounds of 1 ms are far more.
        for _ in 0..3000 {
            for _ in 0..10 {
                shard.append(vec![b.clone()], vec![h], false).await.unwrap();
                appended += 1;
            }
            if shard.reader().log_start_offset() > 0 && appended >= 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let start = shard.reader().log_start_offset();
        assert!(
            start > 0,
            "retention removed nothing after {appended} appends"
        );
        // The writer still takes appends after retention ran.
        let o = shard.append(vec![b.clone()], vec![h], false).await.unwrap();
        assert_eq!(o.base_offset, appended);
        shard.close().await;
        // Closing waits for running deletions: what is left on disk is bounded by
        // retention_bytes (+ the active segment and one being prepared), not by what
        // was appended.
        let logs = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_str().unwrap().ends_with(".log")
            })
            .count();
        assert!(
            logs * 8192 <= 32 * 1024 + 3 * 8192,
            "{logs} segment files after {appended} appends of 1 KiB"
        );
    }

    #[tokio::test]
    async fn retries_are_recognised_even_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let shard = Shard::open(dir.path(), "t", config()).unwrap();
        let (b0, h0) = batch(7, 0, 2, "a");
        let (b1, h1) = batch(7, 2, 2, "b");
        let first = shard
            .append(vec![b0.clone()], vec![h0], true)
            .await
            .unwrap();
        shard.append(vec![b1], vec![h1], true).await.unwrap();
        let again = shard
            .append(vec![b0.clone()], vec![h0], true)
            .await
            .unwrap();
        assert!(again.duplicate);
        assert_eq!(
            (again.base_offset, again.last_offset),
            (first.base_offset, first.last_offset)
        );
        let (gap, hg) = batch(7, 9, 1, "gap");
        assert_eq!(
            shard.append(vec![gap], vec![hg], true).await,
            Err(AppendError::OutOfOrder {
                expected: 4,
                got: 9
            })
        );
        shard.close().await;
        drop(shard);

        let shard = Shard::open(dir.path(), "t", config()).unwrap();
        let again = shard.append(vec![b0], vec![h0], true).await.unwrap();
        assert!(again.duplicate, "producer state is rebuilt from the log");
        assert_eq!(shard.reader().high_watermark(), 4);
        shard.close().await;
    }
}

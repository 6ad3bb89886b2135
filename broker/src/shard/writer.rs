//! The shard writer thread, and the appends written in place beside it.
//!
//! The writer's state (the log and the producer table, [`Writer`]) sits in a mutex
//! ([`Core`]). Each turn of [`run`] moves what has arrived in the class lanes into the
//! scheduler and, holding the state, writes one group taken in weighted-fair order and
//! hands the appends that wait for durability to the `Flusher` (`flusher.rs`);
//! otherwise it lets go of the state and waits for the next arrival, flush completion
//! or timer (interval flush, retention). While nothing is queued, a caller may write
//! a small append itself ([`append_in_place`]) through the same checks.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, watch};
use weir_protocol::batch::BatchHeader;
use weir_protocol::classes::{Class, CLASS_COUNT};
use weir_protocol::messages::Durability;

use super::command::{
    AppendCmd, AppendError, AppendOutcome, ClassStats, Control, DeleteKeyReply, Layout,
    ReplicaAppend, ShardConfig,
};
use super::flusher::{Flusher, Waiter};
use super::idempotence::{continues, ProducerTable, Verdict};
use crate::scheduler::Wfq;
use crate::spin::Spinner;
use crate::storage::Log;

/// Kept here for the modules that name them by these paths.
pub use super::command::{
    PendingAppend, DEFAULT_GROUP_BYTES_MAX, DEFAULT_IN_PLACE_BYTES_MAX, MAX_GROUP_COMMANDS,
};

/// The writer's state: the log and the producer table. The writer thread holds it
/// while it writes a group and lets go of it while it waits, so an append that finds
/// nothing queued can be written in place by the caller ([`append_in_place`]); `None`
/// once the writer thread has ended (the log is closed).
pub(super) type Core = Mutex<Option<Writer>>;

/// The writer's state, in [`Core`].
pub(super) struct Writer {
    pub log: Log,
    pub producers: ProducerTable,
    /// What readers see (the log's end, capped in a cluster); shared with the handle,
    /// which raises it when the replicated high-water mark moves.
    pub hwm: Arc<watch::Sender<u64>>,
    pub stats: Arc<ClassStats>,
    pub config: ShardConfig,
    /// The log refuses appends (`Log::trouble`) and the stats say so.
    pub troubled: bool,
    /// Written since the last interval flush started.
    pub dirty: bool,
}

/// The lanes appends arrive in, one per class, and whether each still has senders.
struct Lanes {
    rx: [mpsc::Receiver<AppendCmd>; CLASS_COUNT],
    open: [bool; CLASS_COUNT],
}

/// The P0 lane, as a group being written looks at it.
struct P0Lane<'a> {
    rx: &'a mut mpsc::Receiver<AppendCmd>,
    open: bool,
    /// How many P0 appends the scheduler may hold (`queue_depth`).
    room: usize,
}

impl P0Lane<'_> {
    /// Moves one P0 append that has arrived into the scheduler; whether there was one.
    fn take_one(&mut self, wfq: &mut Wfq<AppendCmd>) -> bool {
        if !self.open || wfq.lane_len(Class::P0) >= self.room {
            return false;
        }
        match self.rx.try_recv() {
            Ok(cmd) => {
                let cost = cmd.bytes() as u64;
                wfq.push(Class::P0, cmd, cost, Instant::now());
                true
            }
            // A closed lane is noticed by `take_arrivals` on the next turn.
            Err(_) => false,
        }
    }
}

/// What the writer loop keeps between turns.
struct Turns {
    wfq: Wfq<AppendCmd>,
    flusher: Flusher,
    next_flush: Instant,
    next_retention: Instant,
    /// When a stalled roll is tried again.
    next_retry: Instant,
    /// Mirror appends received, written at the start of the next turn.
    replicas: Vec<ReplicaAppend>,
    /// Deletions by key received, applied at the start of the next turn.
    deletions: Vec<(Vec<u8>, DeleteKeyReply)>,
    /// Layout seals received (reshards), applied at the start of the next turn.
    seals: Vec<(u32, tokio::sync::oneshot::Sender<u64>)>,
    next_compaction: Instant,
    compact_every: Duration,
    shutdown: bool,
    /// Settings derived from the config once.
    flush_every: Duration,
    retention_every: Duration,
    interval_flush: bool,
    depth: usize,
    /// Durable writers may run ahead of the disk by at most this many bytes.
    ahead_bytes_max: usize,
    /// How long the writer spins before it parks (`spin_wait_us`, adaptive).
    spinner: Spinner,
}

impl Turns {
    fn new(cfg: &ShardConfig) -> Self {
        let flush_every = Duration::from_millis(u64::from(cfg.flush_interval_ms.max(1)));
        let retention_every = Duration::from_millis(cfg.retention_check_ms.max(100));
        Turns {
            wfq: Wfq::new(cfg.weights, cfg.aging),
            flusher: Flusher::new(cfg.durability == Durability::Always),
            next_flush: Instant::now() + flush_every,
            next_retention: Instant::now() + retention_every,
            next_retry: Instant::now(),
            replicas: Vec::new(),
            deletions: Vec::new(),
            seals: Vec::new(),
            next_compaction: Instant::now()
                + Duration::from_millis(cfg.delete_key_compact_ms.max(10)),
            compact_every: Duration::from_millis(cfg.delete_key_compact_ms.max(10)),
            shutdown: false,
            flush_every,
            retention_every,
            interval_flush: cfg.durability == Durability::Interval,
            depth: cfg.queue_depth.max(1),
            ahead_bytes_max: cfg.group_bytes_max.saturating_mul(2),
            spinner: Spinner::new(cfg.spin_wait_us),
        }
    }
}

/// How often a writer whose log is stalled (the next segment could not be made, say on
/// a full disk) tries again when no append comes to try it.
const STALL_RETRY_EVERY: Duration = Duration::from_secs(1);

/// What one turn of the loop does when nothing else is due.
enum Step {
    Write,
    StartFlush,
    /// Every handle dropped without a shutdown.
    Exit,
    Wait,
}

/// Runs the writer until shutdown or until every handle is gone.
///
/// Each turn moves what has arrived in the lanes into the scheduler (at most
/// `queue_depth` per class, so memory stays bounded and full lanes push back on
/// their senders), takes a group in weighted-fair order up to `group_bytes_max`,
/// writes it, and hands the appends that wait for durability to the [`Flusher`]
/// (one flush at a time, in the background). Appends that arrive while
/// a group is written compete for the next group, so a P0 append overtakes P3
/// appends queued before it; one that arrives while a lower-class group is being
/// gathered cuts it and is written next (see [`Writer::write_group`]).
///
/// The thread holds `core` for each turn's work and lets go of it while it waits.
/// When it ends, it takes the writer's state out of `core` and flushes the log.
pub(super) fn run(
    core: Arc<Core>,
    lanes: [mpsc::Receiver<AppendCmd>; CLASS_COUNT],
    mut control: mpsc::Receiver<Control>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("writer runtime");
    let ended = rt.block_on(async move {
        let (mut t, stats) = {
            let guard = lock(&core);
            let w = guard
                .as_ref()
                .expect("the writer's state is there until it ends");
            (Turns::new(&w.config), w.stats.clone())
        };
        let mut lanes = Lanes {
            rx: lanes,
            open: [true; CLASS_COUNT],
        };
        loop {
            take_arrivals(&mut lanes, &mut t);
            take_control(&mut control, &mut t);
            let deadline = {
                let mut guard = lock(&core);
                let w = guard
                    .as_mut()
                    .expect("the writer's state is there until it ends");
                w.write_replicas(&mut t);
                w.delete_keys(&mut t);
                w.seal_layouts(&mut t);
                if t.shutdown {
                    w.shut_down(&mut lanes, &mut t);
                    return guard.take();
                }
                w.flusher_finish(&mut t, None);
                match next_step(&lanes, &t) {
                    Step::Write => {
                        w.write_next_group(&mut lanes, &mut t);
                        None
                    }
                    Step::StartFlush => {
                        t.flusher.start(&mut w.log);
                        None
                    }
                    Step::Exit => return guard.take(),
                    Step::Wait => Some(w.wake_by(&t)),
                }
            };
            let flushed = match deadline {
                Some(deadline) => wait(&mut lanes, &mut control, &mut t, deadline, &stats).await,
                None => None,
            };
            let mut guard = lock(&core);
            let w = guard
                .as_mut()
                .expect("the writer's state is there until it ends");
            if let Some(r) = flushed {
                w.flusher_finish(&mut t, Some(r));
            }
            w.on_timers(&mut t);
        }
    });
    if let Some(mut w) = ended {
        if let Err(e) = w.log.flush() {
            tracing::error!(error = %e, "final flush failed");
        }
    }
}

/// Locks the writer's state. Release builds abort on a panic (`invariant.rs`), so a
/// poisoned lock is met only in a test build, where the state is taken as it is.
fn lock(core: &Core) -> MutexGuard<'_, Option<Writer>> {
    core.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sleeps (without holding the writer's state) until an append arrives in a lane
/// with room, a control message, the running flush ends, or `deadline`. Returns the
/// running flush's result when it ended.
async fn wait(
    lanes: &mut Lanes,
    control: &mut mpsc::Receiver<Control>,
    t: &mut Turns,
    deadline: Instant,
    stats: &ClassStats,
) -> Option<Result<(), String>> {
    if let Some(round) = t.spinner.start() {
        let found = spin(lanes, control, t, round.budget());
        t.spinner.end(round, found);
        if found {
            stats.spin_takes.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    }
    stats.parks.fetch_add(1, Ordering::Relaxed);
    let open = lanes.open;
    let [l0, l1, l2, l3] = &mut lanes.rx;
    // While waiting behind a flush, lanes fill only to their depth (then
    // senders wait: backpressure).
    let room = Class::ALL.map(|c| t.wfq.lane_len(c) < t.depth);
    let mut flushed = None;
    let mut ctl = None;
    let running = t.flusher.running.as_mut().map(|r| &mut r.done);
    let flush_done = async {
        match running {
            Some(done) => done
                .await
                .unwrap_or_else(|_| Err("flush thread ended".into())),
            None => std::future::pending().await,
        }
    };
    let wfq = &mut t.wfq;
    tokio::select! {
        biased;
        c = control.recv() => ctl = Some(c),
        r = flush_done => flushed = Some(r),
        Some(cmd) = l0.recv(), if open[0] && room[0] => { let cost = cmd.bytes() as u64; wfq.push(Class::P0, cmd, cost, Instant::now()) }
        Some(cmd) = l1.recv(), if open[1] && room[1] => { let cost = cmd.bytes() as u64; wfq.push(Class::P1, cmd, cost, Instant::now()) }
        Some(cmd) = l2.recv(), if open[2] && room[2] => { let cost = cmd.bytes() as u64; wfq.push(Class::P2, cmd, cost, Instant::now()) }
        Some(cmd) = l3.recv(), if open[3] && room[3] => { let cost = cmd.bytes() as u64; wfq.push(Class::P3, cmd, cost, Instant::now()) }
        _ = tokio::time::sleep_until(deadline.into()) => {}
    }
    if let Some(c) = ctl {
        on_control(c, t);
    }
    flushed
}

impl Writer {
    /// Writes and flushes everything queued before the shutdown, answering everyone.
    fn shut_down(&mut self, lanes: &mut Lanes, t: &mut Turns) {
        let now = Instant::now();
        for (i, lane) in lanes.rx.iter_mut().enumerate() {
            lane.close();
            let class = Class::from_index(i).expect("lane index");
            while let Ok(cmd) = lane.try_recv() {
                let cost = cmd.bytes() as u64;
                t.wfq.push(class, cmd, cost, now);
            }
        }
        while !t.wfq.is_empty() {
            let durable = self.write_group(&mut t.wfq, usize::MAX, None).2;
            t.flusher.want(durable, None);
        }
        t.flusher.flush_and_answer_all(&mut self.log, &self.stats);
    }

    fn flusher_finish(&mut self, t: &mut Turns, result: Option<Result<(), String>>) {
        t.flusher.finish(&mut self.log, &self.stats, result);
    }

    /// Writes one group and lets the flusher know who waits for it. P0 appends that
    /// arrive while it is gathered cut it short (see [`Writer::write_group`]).
    fn write_next_group(&mut self, lanes: &mut Lanes, t: &mut Turns) {
        let p0 = P0Lane {
            open: lanes.open[Class::P0.index()],
            room: t.depth,
            rx: &mut lanes.rx[Class::P0.index()],
        };
        let (wrote, bytes, durable) =
            self.write_group(&mut t.wfq, self.config.group_bytes_max, Some(p0));
        t.flusher.written_since_start += bytes;
        self.dirty |= wrote;
        if !durable.is_empty() || (wrote && self.config.durability == Durability::Always) {
            t.flusher.want(durable, None);
        }
        t.flusher.start(&mut self.log);
    }

    /// When the writer must look up from waiting at the latest: the interval flush
    /// (while anything is unflushed), retention, key compaction, a stalled roll's retry.
    fn wake_by(&self, t: &Turns) -> Instant {
        let mut deadline = if t.interval_flush && self.dirty {
            t.next_flush.min(t.next_retention)
        } else {
            t.next_retention
        };
        if self.log.has_deleted_keys() {
            deadline = deadline.min(t.next_compaction);
        }
        if self.troubled {
            deadline = deadline.min(t.next_retry);
        }
        deadline
    }

    /// Writes the tombstones of deletions by key received, answering each.
    fn delete_keys(&mut self, t: &mut Turns) {
        for (key, reply) in t.deletions.drain(..) {
            let r = self
                .log
                .delete_key(&key)
                .map_err(|e| AppendError::Storage(e.to_string()));
            let _ = reply.send(r);
        }
    }

    /// Moves to a new layout epoch (a reshard), answering with the log's end: every
    /// append written before it was checked under the old epoch, and every later one
    /// must have been checked under the new (`write_group` refuses the others).
    fn seal_layouts(&mut self, t: &mut Turns) {
        for (epoch, reply) in t.seals.drain(..) {
            self.config.layout_epoch = epoch;
            let _ = reply.send(self.log.high_watermark());
        }
    }

    /// The interval flush and the retention check, when due.
    fn on_timers(&mut self, t: &mut Turns) {
        let now = Instant::now();
        if t.interval_flush && self.dirty && now >= t.next_flush {
            // Off the writer thread: a second's worth of fdatasync must not stall
            // the appends (and P0 work) queued behind it. If a flush is running,
            // this one starts when it ends.
            t.flusher.want(Vec::new(), None);
            t.flusher.start(&mut self.log);
            self.dirty = false;
            t.next_flush = now + t.flush_every;
        } else if !self.dirty {
            t.next_flush = now + t.flush_every;
        }
        if now >= t.next_retention {
            // Cheap here: it only detaches segments; their files are deleted
            // on a thread of their own.
            match self.log.apply_retention(crate::clock::now_ms()) {
                Ok(0) => {}
                Ok(n) => tracing::info!(segments = n, "retention removed segments"),
                Err(e) => tracing::error!(error = %e, "retention failed"),
            }
            t.next_retention = now + t.retention_every;
        }
        if now >= t.next_compaction {
            if self.log.has_deleted_keys() {
                match self.log.compact_deleted_keys() {
                    Ok(n) => tracing::info!(segments = n, "records deleted by key compacted away"),
                    Err(e) => {
                        tracing::error!(error = %e, "compacting deleted keys failed; retried later")
                    }
                }
                self.publish_trouble();
            }
            t.next_compaction = now + t.compact_every;
        }
        if self.troubled && now >= t.next_retry {
            self.log.retry_stalled();
            t.next_retry = now + STALL_RETRY_EVERY;
            self.publish_trouble();
        }
    }

    /// Tells readers' watch what they can see now: never offsets a failed append
    /// assigned, never past the replicated high-water mark. Only raises it (the cap
    /// may sit below what was visible when the shard opened without one).
    fn publish_visible(&self) {
        let new = self.log.visible_high_watermark();
        self.hwm.send_if_modified(|v| {
            let raise = new > *v;
            if raise {
                *v = new;
            }
            raise
        });
    }

    /// Writes the mirror appends received since the last turn, each only where it
    /// continues the log, and answers each with the log's new end. The producer table
    /// learns every batch, so this copy can answer retries as duplicates if it becomes
    /// the primary.
    fn write_replicas(&mut self, t: &mut Turns) {
        for r in std::mem::take(&mut t.replicas) {
            let end = self.log.high_watermark();
            let first = r.headers.first().map(|h| h.base_offset);
            let result = if first != Some(end) {
                Err(AppendError::Storage(format!(
                    "mirror append starts at {first:?}, the log ends at {end}"
                )))
            } else {
                match self.log.append(&r.batches) {
                    Ok(info) => {
                        crate::invariant!(
                            info.base_offset == end,
                            "mirrors keep the primary's offsets",
                            "a mirror append meant for {end} landed at {}",
                            info.base_offset
                        );
                        for h in &r.headers {
                            self.producers.accept(h);
                        }
                        self.dirty = true;
                        Ok(info.last_offset + 1)
                    }
                    Err(e) => Err(AppendError::Storage(e.to_string())),
                }
            };
            let _ = r.reply.send(result);
        }
        self.publish_visible();
        self.publish_trouble();
    }

    /// Tells `/health` and `/metrics` whether the log refuses appends, and why, before
    /// anyone hears of a refusal; only touches the shared stats while there is trouble
    /// or it just ended.
    fn publish_trouble(&mut self) {
        let trouble = self.log.trouble();
        if trouble.is_none() && !self.troubled {
            return;
        }
        self.troubled = trouble.is_some();
        *self.stats.trouble.lock().unwrap_or_else(|p| p.into_inner()) = trouble;
    }

    /// Takes one group from the scheduler (at least one append when any is queued, then
    /// more while under `bytes_max` and [`MAX_GROUP_COMMANDS`]), writes it and answers
    /// `leader` waiters. Returns whether anything was written, and the waiters that
    /// must wait for a flush (the caller hands them to the [`Flusher`]).
    ///
    /// While a group holds only lower-class work, the P0 lane (`p0`) is looked at
    /// before each further append: a P0 append that arrived meanwhile cuts the group
    /// (`ClassStats::group_cuts`). It joins the scheduler at once, the group takes no
    /// more lower-class work, and the P0 append is written next — in this group when
    /// the scheduler serves it first, else at the head of the next — so it waits
    /// behind at most one lower-class append instead of a whole group (up to
    /// `group_bytes_max`, 4 MiB by default).
    fn write_group(
        &mut self,
        wfq: &mut Wfq<AppendCmd>,
        bytes_max: usize,
        mut p0: Option<P0Lane<'_>>,
    ) -> (bool, usize, Vec<Waiter>) {
        let now = Instant::now();
        let mut leader_waiters: Vec<Waiter> = Vec::new();
        let mut durable_waiters: Vec<Waiter> = Vec::new();
        let mut wrote = false;
        let mut bytes = 0usize;
        let mut count = 0usize;
        let mut top_class = None;
        let mut cut = false;
        while count < MAX_GROUP_COMMANDS && (count == 0 || bytes < bytes_max) {
            if count > 0 && !cut && top_class != Some(Class::P0) {
                if let Some(lane) = p0.as_mut() {
                    if lane.take_one(wfq) {
                        cut = true;
                        self.stats.group_cuts.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            // A group that holds P0 work (or was cut by it) ends before lower-class
            // work, so P0 acks are not held back by writing P3 data. (A durable P0 ack
            // may still wait for a flush already running, then for its own.)
            if (cut || top_class == Some(Class::P0)) && wfq.peek_class(now) != Some(Class::P0) {
                break;
            }
            let Some(served) = wfq.pop(now) else { break };
            top_class = Some(top_class.map_or(served.class, |c: Class| c.min(served.class)));
            // From the hand-off to the lane, not from the scheduler's push: the time in
            // the lane is what a P0 append used to spend behind a whole group.
            let waited_us = served.item.queued_at.elapsed().as_micros() as u64;
            let cmd = served.item;
            bytes += cmd.bytes();
            count += 1;
            let result = self.serve(
                served.class,
                waited_us,
                cmd.layout,
                cmd.batches,
                cmd.headers,
            );
            // Written (or refused): an append in place no longer overtakes it.
            self.stats.pending.fetch_sub(1, Ordering::AcqRel);
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
            self.publish_visible();
        }
        self.publish_trouble();
        for (reply, result) in leader_waiters {
            let _ = reply.send(result);
        }
        (wrote, bytes, durable_waiters)
    }

    /// Serves one append of `class` that waited `waited_us`: checks its layout and
    /// sequences and writes it (or answers a retry), counting it in the class stats.
    /// The one place an append is written, from a group or in place.
    fn serve(
        &mut self,
        class: Class,
        waited_us: u64,
        layout: Layout,
        batches: Vec<Bytes>,
        headers: Vec<BatchHeader>,
    ) -> Result<AppendOutcome, AppendError> {
        let c = class.index();
        self.stats.appends[c].fetch_add(1, Ordering::Relaxed);
        self.stats.wait_us[c].fetch_add(waited_us, Ordering::Relaxed);
        self.stats.wait_us_max[c].fetch_max(waited_us, Ordering::Relaxed);
        self.stats.wait_histogram[c].observe_us(waited_us);
        let current = self.config.layout_epoch;
        if matches!(layout, Layout::Any) || layout == Layout::Checked(current) {
            append_one(&mut self.log, &mut self.producers, batches, headers)
        } else {
            // Routed under an earlier layout: a retry of what is stored here gets
            // its offsets (the first attempt's answer may have been lost), the
            // rest is refused and placed again by the client.
            already_stored(&self.producers, &headers, current)
        }
    }
}

/// What [`append_in_place`] did.
pub(super) enum InPlace {
    /// Written (or refused) in place; `wake`: the writer must be told that the log
    /// now holds unflushed bytes ([`Control::Wake`]).
    Done {
        result: Result<AppendOutcome, AppendError>,
        wake: bool,
    },
    /// Not taken here; queue it on the writer thread's lane as usual.
    Queue(Vec<Bytes>, Vec<BatchHeader>),
}

/// Writes an append of `class` on the calling thread instead of handing it to the
/// writer thread and waiting to hear back: two thread wake-ups fewer per produce,
/// which on a small VM cost more than the write itself. Only when that changes
/// nothing anyone can observe but the latency:
///
/// - nothing is queued for the writer (`ClassStats::pending` is 0, read under the
///   lock the writer writes under), so the append overtakes no earlier one — of its
///   own connection, whose earlier appends are counted before this one is tried, or
///   of a higher class;
/// - the writer is not holding the state (it is waiting, or the lock is free);
/// - the append needs no flush before its answer (`durable` is false and the topic's
///   durability is not `always`) and has at most `ShardConfig::in_place_bytes_max`
///   bytes;
/// - the log takes it without file work (`Log::appends_in_place`): no roll, no
///   allocation.
///
/// It goes through the same checks as a queued append (layout, sequences, retries;
/// [`Writer::serve`]); only the lane wait is skipped. Admission, quotas and shedding
/// happened before, in the produce path, as for every append.
pub(super) fn append_in_place(
    core: &Core,
    class: Class,
    durable: bool,
    batches: Vec<Bytes>,
    headers: Vec<BatchHeader>,
    layout: Layout,
) -> InPlace {
    if durable {
        return InPlace::Queue(batches, headers);
    }
    let Ok(mut guard) = core.try_lock() else {
        return InPlace::Queue(batches, headers);
    };
    let Some(w) = guard.as_mut() else {
        return InPlace::Queue(batches, headers);
    };
    let bytes: usize = batches.iter().map(Bytes::len).sum();
    let records = headers.iter().map(|h| u64::from(h.record_count)).sum();
    if bytes > w.config.in_place_bytes_max
        || w.config.durability == Durability::Always
        || w.stats.pending.load(Ordering::Acquire) != 0
        || !w.log.appends_in_place(batches.len(), bytes as u64, records)
    {
        return InPlace::Queue(batches, headers);
    }
    let result = w.serve(class, 0, layout, batches, headers);
    w.stats.in_place.fetch_add(1, Ordering::Relaxed);
    let wrote = matches!(&result, Ok(o) if !o.duplicate);
    if wrote {
        w.publish_visible();
    }
    w.publish_trouble();
    let wake = wrote && !w.dirty && w.config.durability == Durability::Interval;
    w.dirty |= wrote;
    InPlace::Done { result, wake }
}

/// Moves what has arrived in the lanes into the scheduler, at most `depth` per class.
fn take_arrivals(lanes: &mut Lanes, t: &mut Turns) {
    let now = Instant::now();
    for (i, lane) in lanes.rx.iter_mut().enumerate() {
        let class = Class::from_index(i).expect("lane index");
        while lanes.open[i] && t.wfq.lane_len(class) < t.depth {
            match lane.try_recv() {
                Ok(cmd) => {
                    let cost = cmd.bytes() as u64;
                    t.wfq.push(class, cmd, cost, now);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => lanes.open[i] = false,
            }
        }
    }
}

/// Takes what has come on the control channel (flush requests join the next flush).
fn take_control(control: &mut mpsc::Receiver<Control>, t: &mut Turns) {
    while let Ok(c) = control.try_recv() {
        on_control(Some(c), t);
    }
}

/// Takes one control message (`None`: every control sender is gone).
fn on_control(c: Option<Control>, t: &mut Turns) {
    match c {
        Some(Control::Flush(reply)) => t.flusher.want(Vec::new(), Some(reply)),
        Some(Control::Replicate(r)) => t.replicas.push(r),
        Some(Control::DeleteKey(k, reply)) => t.deletions.push((k, reply)),
        Some(Control::Seal(epoch, reply)) => t.seals.push((epoch, reply)),
        // The turn it ends re-reads the writer's state (`Writer::dirty`).
        Some(Control::Wake) => {}
        Some(Control::Shutdown) | None => t.shutdown = true,
    }
}

/// Watches the lanes, the control channel and the running flush for up to `budget`
/// before the writer parks (`spin_wait_us`, shortened by [`Spinner`] while cores are
/// contended); whether something came. Work that comes meanwhile is taken without the
/// thread wake-up a parked writer needs, which costs 20–100 µs on a small VM: the
/// price is a core kept busy for up to `budget` after each turn. Every 64 looks the
/// writer yields its core to any thread waiting for it.
fn spin(
    lanes: &mut Lanes,
    control: &mut mpsc::Receiver<Control>,
    t: &mut Turns,
    budget: Duration,
) -> bool {
    let until = Instant::now() + budget;
    let mut look = 0u32;
    loop {
        look = look.wrapping_add(1);
        for class in Class::ALL {
            let i = class.index();
            if !lanes.open[i] || t.wfq.lane_len(class) >= t.depth {
                continue;
            }
            if let Ok(cmd) = lanes.rx[i].try_recv() {
                let cost = cmd.bytes() as u64;
                t.wfq.push(class, cmd, cost, Instant::now());
                return true;
            }
        }
        match control.try_recv() {
            Ok(c) => {
                on_control(Some(c), t);
                return true;
            }
            Err(TryRecvError::Disconnected) => {
                on_control(None, t);
                return true;
            }
            Err(TryRecvError::Empty) => {}
        }
        if t.flusher.running_done() {
            return true;
        }
        if look.is_multiple_of(64) {
            if Instant::now() >= until {
                return false;
            }
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// What to do this turn, given what is queued and how far the disk is behind.
fn next_step(lanes: &Lanes, t: &Turns) -> Step {
    // Durable writers may run ahead of the disk by at most `ahead_bytes_max`: past
    // it, the writer waits for the running flush, so flushes stay short and a
    // backlog waits in the class lanes, where P0 overtakes it.
    let f = &t.flusher;
    let behind =
        f.running.is_some() && f.has_waiters() && f.written_since_start >= t.ahead_bytes_max;
    if !t.wfq.is_empty() && !behind {
        Step::Write
    } else if f.wanted && f.running.is_none() {
        Step::StartFlush
    } else if !lanes.open.iter().any(|&o| o) && f.running.is_none() {
        Step::Exit
    } else {
        Step::Wait
    }
}

/// The answer to an append routed under an earlier layout than `current`: when every
/// batch is a retry of one this shard stored (by its producer's sequence numbers), the
/// offsets they were stored at, as the first attempt was answered; else a refusal
/// that says nothing was written — [`AppendError::Fenced`] for a batch of a fenced
/// epoch (it may have been stored, as on any other path), otherwise
/// [`AppendError::LayoutChanged`], which therefore tells an idempotent producer that
/// its batch is not stored.
fn already_stored(
    producers: &ProducerTable,
    headers: &[BatchHeader],
    current: u32,
) -> Result<AppendOutcome, AppendError> {
    let mut outcome: Option<AppendOutcome> = None;
    let mut all_retries = true;
    for h in headers {
        match producers.check(h) {
            Verdict::Duplicate {
                base_offset,
                last_offset,
            } => {
                outcome
                    .get_or_insert(AppendOutcome {
                        base_offset,
                        last_offset,
                        duplicate: true,
                    })
                    .last_offset = last_offset;
            }
            Verdict::Fenced { current_epoch } => return Err(AppendError::Fenced { current_epoch }),
            Verdict::Append | Verdict::OutOfOrder { .. } => all_retries = false,
        }
    }
    outcome
        .filter(|_| all_retries)
        .ok_or(AppendError::LayoutChanged { current })
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
    use weir_protocol::classes::ClassMap;

    /// One append of one record at `priority`, with its reply's receiver.
    fn append(
        priority: u8,
    ) -> (
        AppendCmd,
        tokio::sync::oneshot::Receiver<Result<AppendOutcome, AppendError>>,
    ) {
        let mut b = BatchBuilder::new();
        let mut r = NewRecord::value(1, &[7u8; 1000][..]);
        r.priority = priority;
        b.push(&r).unwrap();
        let bytes = b.finish().unwrap();
        let h = BatchHeader::read(&bytes).unwrap();
        let (reply, rx) = tokio::sync::oneshot::channel();
        let cmd = AppendCmd {
            batches: vec![bytes],
            headers: vec![h],
            durable: false,
            layout: Layout::Checked(0),
            reply: Some(reply),
            queued_at: Instant::now(),
        };
        (cmd, rx)
    }

    fn writer(dir: &std::path::Path, config: ShardConfig) -> Writer {
        let log = Log::open(dir, config.log.clone()).unwrap();
        let (hwm, _) = watch::channel(0);
        Writer {
            log,
            producers: ProducerTable::new(ClassMap::default()),
            hwm: Arc::new(hwm),
            stats: Arc::new(ClassStats::default()),
            config,
            troubled: false,
            dirty: false,
        }
    }

    fn lanes() -> ([mpsc::Sender<AppendCmd>; CLASS_COUNT], Lanes) {
        let (tx, rx): (Vec<_>, Vec<_>) = (0..CLASS_COUNT).map(|_| mpsc::channel(64)).unzip();
        let lanes = Lanes {
            rx: rx.try_into().map_err(|_| ()).unwrap(),
            open: [true; CLASS_COUNT],
        };
        (tx.try_into().map_err(|_| ()).unwrap(), lanes)
    }

    /// Eight P3 appends are in the scheduler, all fitting one group; a P0 append
    /// arrives in its lane before the group is written. It cuts the group after the
    /// first P3 append and is written right behind it (offset 1), ahead of the other
    /// seven. Without the cut the group takes all eight and P0 lands at offset 8.
    #[test]
    fn a_p0_append_cuts_a_p3_group_and_is_written_next() {
        let dir = tempfile::tempdir().unwrap();
        let config = ShardConfig {
            durability: Durability::None,
            ..ShardConfig::default()
        };
        let mut w = writer(dir.path(), config.clone());
        let (tx, mut lanes) = lanes();
        let mut t = Turns::new(&config);
        let p3_priority = 10;
        assert_eq!(config.classes.class_of(p3_priority), Class::P3);
        let mut p3 = Vec::new();
        for _ in 0..8 {
            let (cmd, rx) = append(p3_priority);
            tx[Class::P3.index()]
                .try_send(cmd)
                .unwrap_or_else(|_| panic!("lane full"));
            p3.push(rx);
        }
        take_arrivals(&mut lanes, &mut t);
        assert_eq!(t.wfq.lane_len(Class::P3), 8);
        let (cmd, mut p0) = append(0);
        tx[Class::P0.index()]
            .try_send(cmd)
            .unwrap_or_else(|_| panic!("lane full"));

        w.write_next_group(&mut lanes, &mut t);
        let p0_offset = p0.try_recv().expect("P0 answered with the cut group");
        assert_eq!(p0_offset.unwrap().base_offset, 1);
        assert_eq!(w.stats.group_cuts.load(Ordering::Relaxed), 1);
        // The rest of the P3 appends are still queued, written by the next group.
        assert_eq!(t.wfq.lane_len(Class::P3), 7);
        w.write_next_group(&mut lanes, &mut t);
        let offsets: Vec<u64> = p3
            .iter_mut()
            .map(|rx| rx.try_recv().unwrap().unwrap().base_offset)
            .collect();
        assert_eq!(offsets, vec![0, 2, 3, 4, 5, 6, 7, 8]);
        // A group with nothing waiting in the P0 lane is not cut.
        assert_eq!(w.stats.group_cuts.load(Ordering::Relaxed), 1);
    }

    /// A group that already holds P0 work is not counted as cut by more P0 work; the
    /// P0 lane is read at the start of the next turn as before.
    #[test]
    fn p0_work_does_not_cut_a_p0_group() {
        let dir = tempfile::tempdir().unwrap();
        let config = ShardConfig {
            durability: Durability::None,
            ..ShardConfig::default()
        };
        let mut w = writer(dir.path(), config.clone());
        let (tx, mut lanes) = lanes();
        let mut t = Turns::new(&config);
        let (cmd, _a) = append(0);
        tx[0].try_send(cmd).unwrap_or_else(|_| panic!("lane full"));
        take_arrivals(&mut lanes, &mut t);
        let (cmd, _b) = append(0);
        tx[0].try_send(cmd).unwrap_or_else(|_| panic!("lane full"));
        w.write_next_group(&mut lanes, &mut t);
        assert_eq!(w.stats.group_cuts.load(Ordering::Relaxed), 0);
        assert_eq!(w.log.high_watermark(), 1);
    }

    /// What `append_in_place` takes and what it leaves to the writer thread: only a
    /// small, non-durable append on a writer with nothing pending, on a log that takes
    /// it without file work; it is then written at once, with the same answer a
    /// queued append gets.
    #[test]
    fn only_a_small_append_with_nothing_queued_is_written_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let config = ShardConfig {
            durability: Durability::Interval,
            in_place_bytes_max: 4096,
            ..ShardConfig::default()
        };
        let core: Core = Mutex::new(Some(writer(dir.path(), config.clone())));
        let stats = lock(&core).as_ref().unwrap().stats.clone();
        let try_one = |durable: bool, priority: u8| {
            let (cmd, _) = append(priority);
            let class = config.classes.class_of(priority);
            append_in_place(&core, class, durable, cmd.batches, cmd.headers, cmd.layout)
        };
        // Nothing queued: written in place at offset 0; the first unflushed bytes ask
        // for a wake-up (the interval flush), later ones do not.
        match try_one(false, 0) {
            InPlace::Done { result, wake } => {
                assert_eq!(result.unwrap().base_offset, 0);
                assert!(wake, "a parked writer must learn the log is dirty");
            }
            InPlace::Queue(..) => panic!("an idle writer's small append is queued"),
        }
        assert!(matches!(
            try_one(false, 10),
            InPlace::Done { wake: false, .. }
        ));
        assert_eq!(stats.in_place.load(Ordering::Relaxed), 2);
        assert_eq!(stats.appends[Class::P3.index()].load(Ordering::Relaxed), 1);
        // Something queued ahead: it must not be overtaken.
        stats.pending.store(1, Ordering::Release);
        assert!(matches!(try_one(false, 0), InPlace::Queue(..)));
        stats.pending.store(0, Ordering::Release);
        // A durable append waits for a flush: the writer's.
        assert!(matches!(try_one(true, 0), InPlace::Queue(..)));
        // Larger than the limit (each test append is about 1 KB).
        {
            let mut w = lock(&core);
            w.as_mut().unwrap().config.in_place_bytes_max = 100;
        }
        assert!(matches!(try_one(false, 0), InPlace::Queue(..)));
        {
            let mut w = lock(&core);
            let w = w.as_mut().unwrap();
            w.config.in_place_bytes_max = 4096;
            // `always` flushes every write.
            w.config.durability = Durability::Always;
        }
        assert!(matches!(try_one(false, 0), InPlace::Queue(..)));
        lock(&core).as_mut().unwrap().config.durability = Durability::Interval;
        // The writer thread holds the state (writing a group): not blocked on, queued.
        {
            let _held = lock(&core);
            assert!(matches!(try_one(false, 0), InPlace::Queue(..)));
        }
        // The writer thread has ended: the log is closed.
        let w = lock(&core).take();
        assert!(matches!(try_one(false, 0), InPlace::Queue(..)));
        assert_eq!(w.unwrap().log.high_watermark(), 2);
    }
}

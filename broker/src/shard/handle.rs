//! [`Shard`]: the handle every connection uses to reach one shard — queue an append
//! ([`Shard::enqueue`], answered through a [`PendingAppend`]), flush, read, watch the
//! high-water mark — and what opening one takes (recovering the log, rebuilding the
//! producer table, starting the writer thread of `writer.rs`).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use weir_protocol::batch::BatchHeader;
use weir_protocol::classes::{Class, ClassMap, CLASS_COUNT};

use super::class_index::ClassIndex;
use super::command::{
    AppendCmd, AppendError, AppendOutcome, ClassStats, Control, Layout, PendingAppend,
    ReplicaAppend, ShardConfig,
};
use super::idempotence::ProducerTable;
use super::writer::{append_in_place, Core, InPlace, Writer};
use crate::storage::{Log, LogReader, StorageError};

/// How many of the newest offsets are scanned on open to rebuild producer state. A
/// producer idle for longer than this many records is forgotten, which only means
/// its next batch cannot be recognised as a retry of one written before that window.
pub const PRODUCER_STATE_SCAN_OFFSETS: u64 = 2_000_000;

/// Damaged batches the producer-state rebuild steps over at most (beyond, it ends
/// there and keeps what it has).
const PRODUCER_STATE_DAMAGE_MAX: usize = 1024;

/// Handle to one shard: cheap to share (`Arc`), used by every connection.
pub struct Shard {
    lanes: [mpsc::Sender<AppendCmd>; CLASS_COUNT],
    /// The writer's state, for appends written in place (see
    /// [`Shard::enqueue_in_layout`]).
    core: Arc<Core>,
    control: mpsc::Sender<Control>,
    classes: ClassMap,
    stats: Arc<ClassStats>,
    /// Built on the first priority-ordered read; see [`ClassIndex`].
    class_index: Mutex<ClassIndex>,
    reader: LogReader,
    hwm: watch::Receiver<u64>,
    /// The writer's side of `hwm`, to raise it when the replicated high-water mark
    /// moves (a cluster).
    hwm_tx: Arc<watch::Sender<u64>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Newest epoch per producer id found in the log on open, until the broker takes
    /// it into its fencing table ([`Shard::take_recovered_epochs`]).
    recovered_epochs: Mutex<Vec<(u64, u16)>>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("high_watermark", &*self.hwm.borrow())
            .finish()
    }
}

impl Shard {
    /// Opens (recovering) the log in `dir` and starts its writer thread.
    pub fn open(dir: &Path, name: &str, config: ShardConfig) -> Result<Arc<Shard>, StorageError> {
        Shard::open_capped(dir, name, config, u64::MAX)
    }

    /// [`Shard::open`] with readers seeing nothing at or above `visible_cap` until
    /// [`Shard::raise_visible`] lifts it (a cluster node opens its copies with 0).
    pub fn open_capped(
        dir: &Path,
        name: &str,
        config: ShardConfig,
        visible_cap: u64,
    ) -> Result<Arc<Shard>, StorageError> {
        let log = Log::open(dir, config.log.clone())?;
        let reader = log.reader();
        // Producer state comes from the whole log, before the cap hides its tail: a
        // cluster copy opens capped at 0, and a table rebuilt under that cap knew no
        // batch, so a producer's retry of a batch this copy already held (after a
        // restart, or once it is promoted) was written again.
        let producers = rebuild_producers(&reader, config.classes);
        reader.reset_visible_cap(visible_cap);
        let recovered_epochs = Mutex::new(producers.newest_epochs().into_iter().collect());
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
        let (hwm_tx, hwm_rx) = watch::channel(log.visible_high_watermark());
        let hwm_tx = Arc::new(hwm_tx);
        let stats = Arc::new(ClassStats::default());
        let classes = config.classes;
        let writer = Writer {
            log,
            producers,
            hwm: hwm_tx.clone(),
            stats: stats.clone(),
            config,
            troubled: false,
            dirty: false,
        };
        let core = Arc::new(Mutex::new(Some(writer)));
        let thread_core = core.clone();
        let thread = std::thread::Builder::new()
            .name(format!("weir-w-{name}"))
            .spawn(move || {
                // Made from a pinned core thread (CreateTopic), it would inherit the pin,
                // and so would its flush and segment threads.
                crate::affinity::unpin_current_thread();
                super::writer::run(thread_core, receivers, control_rx)
            })
            .map_err(StorageError::from)?;
        Ok(Arc::new(Shard {
            lanes,
            core,
            control,
            classes,
            stats,
            class_index: Mutex::new(ClassIndex::default()),
            reader,
            hwm: hwm_rx,
            hwm_tx,
            thread: Mutex::new(Some(thread)),
            recovered_epochs,
        }))
    }

    /// The newest epoch of each producer id the log held when the shard opened (ids
    /// with epoch above 0), once: later calls get nothing.
    pub fn take_recovered_epochs(&self) -> Vec<(u64, u16)> {
        std::mem::take(&mut *self.recovered_epochs.lock().expect("recovered epochs lock"))
    }

    /// Queues an append in the lane of its class: the class of its highest-priority
    /// batch. Returns once the append is in the lane (or written), so appends queued
    /// one after another by one task are written in that order; the receiver yields the
    /// outcome. `batches` must be validated, with `headers` their headers.
    ///
    /// When the writer has nothing queued, a small append that needs no flush is
    /// written in place, on the caller's thread, and the receiver holds its outcome
    /// already (see `writer::append_in_place`).
    pub async fn enqueue(
        &self,
        batches: Vec<Bytes>,
        headers: Vec<BatchHeader>,
        durable: bool,
    ) -> Result<PendingAppend, AppendError> {
        self.enqueue_in_layout(batches, headers, durable, Layout::Any)
            .await
    }

    /// [`Shard::enqueue`] for batches whose keys were checked against `layout`:
    /// under [`Layout::Checked`] the writer refuses them with
    /// [`AppendError::LayoutChanged`] once a reshard has sealed that epoch, so no
    /// append checked before a reshard lands after its start; under [`Layout::Moved`]
    /// it only answers retries of batches already stored. [`Layout::Any`] skips the
    /// check (the broker's own writes: dead letters, reconciliation records).
    pub async fn enqueue_in_layout(
        &self,
        batches: Vec<Bytes>,
        headers: Vec<BatchHeader>,
        durable: bool,
        layout: Layout,
    ) -> Result<PendingAppend, AppendError> {
        let class = self.class_of(&headers);
        let (reply, rx) = oneshot::channel();
        let (batches, headers) =
            match append_in_place(&self.core, class, durable, batches, headers, layout) {
                InPlace::Done { result, wake } => {
                    if wake {
                        // A full control channel wakes the writer anyway.
                        let _ = self.control.try_send(Control::Wake);
                    }
                    let _ = reply.send(result);
                    return Ok(rx);
                }
                InPlace::Queue(batches, headers) => (batches, headers),
            };
        // Counted before it is in the lane, so no append of this caller after it is
        // written in place ahead of it; uncounted if it never gets there.
        let pending = Pending::count(&self.stats);
        self.lanes[class.index()]
            .send(AppendCmd {
                batches,
                headers,
                durable,
                layout,
                reply: Some(reply),
                queued_at: std::time::Instant::now(),
            })
            .await
            .map_err(|_| AppendError::Closed)?;
        pending.handed_over();
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

    /// Why the shard refuses appends right now (a stalled roll on a full disk, a
    /// failed log), or `None` when it takes them.
    pub fn trouble(&self) -> Option<String> {
        self.stats
            .trouble
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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

    /// Moves the writer to layout epoch `epoch` (a reshard) and returns the log's end
    /// then: the shard's first offset of the new epoch. Appends checked under another
    /// epoch are refused from then on (see [`Shard::enqueue_in_layout`]).
    pub async fn seal_layout(&self, epoch: u32) -> Result<u64, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.control
            .send(Control::Seal(epoch, reply))
            .await
            .map_err(|_| AppendError::Closed)?;
        rx.await.map_err(|_| AppendError::Closed)
    }

    /// Deletes every record with `key` below the shard's end (a tombstone; see
    /// `Log::delete_key`); returns the tombstone's offset.
    pub async fn delete_key(&self, key: Vec<u8>) -> Result<u64, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.control
            .send(Control::DeleteKey(key, reply))
            .await
            .map_err(|_| AppendError::Closed)?;
        rx.await.map_err(|_| AppendError::Closed)?
    }

    /// The log's readers' view.
    pub fn reader(&self) -> &LogReader {
        &self.reader
    }

    /// Lets readers see up to `cap` (the replicated high-water mark), never lowering
    /// what they see, and wakes everyone watching the high-water mark.
    pub fn raise_visible(&self, cap: u64) {
        self.reader.set_visible_cap(cap);
        let now = self.reader.high_watermark();
        self.hwm_tx.send_if_modified(|v| {
            let raise = now > *v;
            if raise {
                *v = now;
            }
            raise
        });
    }

    /// Writes batches copied from the primary at the offsets they carry (the first
    /// must start at this log's end); returns the log's new end. See
    /// [`ReplicaAppend`].
    pub async fn replicate(
        &self,
        batches: Vec<Bytes>,
        headers: Vec<BatchHeader>,
    ) -> Result<u64, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.control
            .send(Control::Replicate(ReplicaAppend {
                batches,
                headers,
                reply,
            }))
            .await
            .map_err(|_| AppendError::Closed)?;
        rx.await.map_err(|_| AppendError::Closed)?
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

impl Shard {
    /// Holds the writer's state as its thread does while it writes a group.
    #[cfg(test)]
    pub(super) fn hold_writer(&self) -> std::sync::MutexGuard<'_, Option<Writer>> {
        self.core.lock().expect("writer state lock")
    }

    /// [`Shard::close`] for threads outside any async runtime (the blocking pool).
    pub fn close_blocking(&self) {
        let _ = self.control.blocking_send(Control::Shutdown);
        let thread = self.thread.lock().expect("shard thread lock").take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// One append counted in `ClassStats::pending` while it is on its way into a lane:
/// the writer uncounts it once written; dropped before then (the lane closed, or the
/// caller gave up waiting for room), it uncounts itself.
struct Pending<'a> {
    stats: &'a ClassStats,
    handed_over: bool,
}

impl<'a> Pending<'a> {
    fn count(stats: &'a ClassStats) -> Self {
        stats.pending.fetch_add(1, Ordering::AcqRel);
        Pending {
            stats,
            handed_over: false,
        }
    }

    /// In the lane: from here the writer uncounts it.
    fn handed_over(mut self) {
        self.handed_over = true;
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.handed_over {
            self.stats.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn rebuild_producers(reader: &LogReader, classes: ClassMap) -> ProducerTable {
    let mut table = ProducerTable::new(classes);
    let from = reader
        .high_watermark()
        .saturating_sub(PRODUCER_STATE_SCAN_OFFSETS);
    // A damaged batch is stepped over: stopping there would leave every producer that
    // wrote after it at an old sequence, and its next batch refused as out of order.
    // (The damaged batch's own producer and sequence cannot be trusted, so a producer
    // whose last batch it was may have its next batch refused as out of order.)
    let scanned = reader.scan_intact_batches(
        from,
        PRODUCER_STATE_DAMAGE_MAX,
        |_, h| {
            table.record(h);
            Ok::<(), StorageError>(())
        },
        |from, to| tracing::warn!(from, to, "producer state: damaged batches stepped over"),
    );
    if let Err(e) = scanned {
        // Recovery already checked the log; a failure here only shortens the window
        // in which retries are recognised.
        tracing::warn!(error = %e, "producer state rebuilt from part of the log");
    }
    table
}

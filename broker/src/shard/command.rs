//! What passes between a shard's handle and its writer thread: the commands, the
//! answers, the shared counters and the writer's settings. A leaf of `shard/`, so the
//! handle, the writer and the flusher all import it and none imports the others back.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use weir_protocol::batch::BatchHeader;
use weir_protocol::classes::{ClassMap, CLASS_COUNT, DEFAULT_CLASS_WEIGHTS};
use weir_protocol::messages::Durability;

use crate::scheduler::DEFAULT_AGING;
use crate::storage::LogConfig;

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
    /// Routed under an older layout than the writer's (the topic was resharded after
    /// the produce was routed), and not a retry of batches stored here: nothing was
    /// written.
    #[error("the topic was resharded (layout epoch {current}) after this append was routed; refresh Metadata")]
    LayoutChanged { current: u32 },
}

/// The layout (the topic's reshards) an append's keys were checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Taken whatever the writer's epoch: the broker's own writes, which no key rule
    /// applies to.
    Any,
    /// Checked under this layout epoch: refused with [`AppendError::LayoutChanged`]
    /// once a reshard has sealed it.
    Checked(u32),
    /// Already found to belong to an earlier layout (a key that moved away, or a shard
    /// a reshard sealed). Nothing of it is written: a retry of batches this shard
    /// stored is answered with their offsets (a producer sending again after losing
    /// the answer, which a reshard must not turn into a second copy elsewhere), and
    /// anything else is refused with [`AppendError::LayoutChanged`].
    Moved,
}

/// One queued append, as it waits in its class's lane.
pub(super) struct AppendCmd {
    pub batches: Vec<Bytes>,
    pub headers: Vec<BatchHeader>,
    pub durable: bool,
    /// The layout the append's keys were checked against.
    pub layout: Layout,
    pub reply: Option<oneshot::Sender<Result<AppendOutcome, AppendError>>>,
    /// When it was handed to the lane (before any wait for room in it): lane waits
    /// are measured from here, so they include the time in the lane before the writer
    /// took it into its scheduler.
    pub queued_at: std::time::Instant,
}

impl AppendCmd {
    /// Its scheduling cost.
    pub(super) fn bytes(&self) -> usize {
        self.batches.iter().map(|b| b.len()).sum()
    }
}

/// Requests that are not appends.
pub(super) enum Control {
    Flush(oneshot::Sender<Result<(), AppendError>>),
    /// A mirror's copy of its primary's batches, written at the offsets the primary
    /// gave them (see [`ReplicaAppend`]).
    Replicate(ReplicaAppend),
    /// Delete every record with this key below the log's end (`Log::delete_key`);
    /// answered with the tombstone's offset.
    DeleteKey(Vec<u8>, DeleteKeyReply),
    /// From now on take only appends checked under this layout epoch (a reshard);
    /// answered with the log's end, the first offset of the new epoch.
    Seal(u32, oneshot::Sender<u64>),
    /// Nothing to do but look again: an append written in place left the log with
    /// unflushed bytes, so a parked writer must arm its interval flush.
    Wake,
    Shutdown,
}

/// Where a deletion by key is answered: the tombstone's offset, or why not.
pub(super) type DeleteKeyReply = oneshot::Sender<Result<u64, AppendError>>;

/// Batches copied from the primary, stamped with their offsets there. The writer
/// writes them only if the first starts at its log's end, and answers with the new end.
pub(super) struct ReplicaAppend {
    pub batches: Vec<Bytes>,
    pub headers: Vec<BatchHeader>,
    pub reply: oneshot::Sender<Result<u64, AppendError>>,
}

/// Per-class counters of one shard's writer, for `/metrics` and load signals.
#[derive(Debug, Default)]
pub struct ClassStats {
    /// Shard-wide: offsets below this were covered by a completed flush of this
    /// writer (0 until its first flush). Every durable acknowledgement is below it.
    pub flushed_offset: AtomicU64,
    /// Shard-wide: flushes completed (one may cover many durable appends).
    pub flushes: AtomicU64,
    /// Shard-wide: groups of lower-class appends cut short because a P0 append
    /// arrived while they were written (`weir_shard_group_cuts_total`).
    pub group_cuts: AtomicU64,
    /// Shard-wide: waits for work the writer ended while spinning (`spin_wait_us`),
    /// and waits it parked for (`weir_shard_idle_waits_total{how}`).
    pub spin_takes: AtomicU64,
    pub parks: AtomicU64,
    /// Shard-wide: appends handed to a lane and not yet written (or refused) by the
    /// writer thread. An append is written in place only while this is 0, so it never
    /// overtakes one queued before it (see `writer::append_in_place`).
    pub pending: AtomicU64,
    /// Shard-wide: appends written in place, on the caller's thread
    /// (`weir_shard_in_place_appends_total`).
    pub in_place: AtomicU64,
    /// Appends written (or answered as duplicates), per class.
    pub appends: [AtomicU64; CLASS_COUNT],
    /// Total microseconds appends waited in their lane before being written.
    pub wait_us: [AtomicU64; CLASS_COUNT],
    /// Longest wait of an append since the last time it was read and reset.
    pub wait_us_max: [AtomicU64; CLASS_COUNT],
    /// Lane waits per class, as a histogram (`weir_queue_wait_seconds`).
    pub wait_histogram: [crate::meters::Histogram; CLASS_COUNT],
    /// How long each completed flush took (`weir_flush_latency_seconds`).
    pub flush_latency: crate::meters::Histogram,
    /// Why the shard refuses appends right now (`Log::trouble`), for `/health` and
    /// `weir_shard_failed`; `None` when it takes them. Written by the writer only when
    /// it changes.
    pub trouble: std::sync::Mutex<Option<String>>,
    /// Records and bytes produced into and fetched from this shard (the load agents'
    /// per-shard rates; `Topic::io` sums the topic).
    pub io: crate::meters::TopicIo,
}

/// A queued append whose answer has not come yet.
pub type PendingAppend = oneshot::Receiver<Result<AppendOutcome, AppendError>>;

/// Most appends the writer takes into one group before it writes and flushes it.
pub const MAX_GROUP_COMMANDS: usize = 1024;

/// Most bytes the writer takes into one group. Bounding the group bounds how long a
/// newly queued P0 append waits behind the group being written: it is scheduled into
/// the next one.
pub const DEFAULT_GROUP_BYTES_MAX: usize = 4 << 20;

/// The default largest append written in place: one copy of at most this many bytes
/// into the page cache holds the caller's thread (a connection's runtime worker)
/// about as long as the two thread wake-ups it spares cost on a small VM; larger
/// appends go to the writer thread.
pub const DEFAULT_IN_PLACE_BYTES_MAX: usize = 64 << 10;

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
    /// How often pending deletions by key are compacted out of the log's files
    /// (`Log::compact_deleted_keys`): the bound on how long their bytes stay on disk.
    pub delete_key_compact_ms: u64,
    /// The topic's layout epoch when the shard opens (see [`Control::Seal`]).
    pub layout_epoch: u32,
    /// Most µs the writer keeps looking for work before it parks (`spin_wait_us`).
    pub spin_wait_us: u32,
    /// Largest append written in place on the caller's thread while the writer has
    /// nothing queued (`in_place_append_bytes`; 0: every append goes to the writer
    /// thread). See `writer::append_in_place`.
    pub in_place_bytes_max: usize,
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
            delete_key_compact_ms: 60_000,
            layout_epoch: 0,
            spin_wait_us: 0,
            in_place_bytes_max: DEFAULT_IN_PLACE_BYTES_MAX,
        }
    }
}

//! The log of one shard: a list of segments, one writer ([`Log`]) and any number of
//! lock-free-on-the-hot-path readers ([`LogReader`]).
//!
//! Publication protocol: the writer writes batches into the active file (`pwritev`, into
//! the page cache that readers' maps show), then stores the
//! segment's `len` and finally the log's high-water mark, each with `Release`. A reader
//! loads the log start and high-water mark with `Acquire`, clones the current segment
//! list (an `Arc<Vec<..>>` behind an `RwLock` held only for the clone), and never looks
//! past either. The list is replaced, never mutated, when a segment rolls or retention
//! deletes one, so a reader's snapshot stays valid for as long as it holds it.

use std::fs::File;
use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use bytes::Bytes;
use weir_protocol::batch::{self, BatchHeader, BATCH_HEADER_BYTES};
use weir_protocol::sealed;

use super::active::Active;
use super::at_rest::{self, AtRest};
use super::cache_window::{CacheWindow, ColdReads};
use super::config::LogConfig;
use super::error::{io_err, StorageError};
use super::index::{index_capacity, IndexEntry, IndexFile, SegmentIndex};
use super::index::{OFFSET_ENTRY_BYTES, TIME_ENTRY_BYTES};
use super::recovery::{self, Recovered};
use super::redact::{self, Tombstone};
use super::retention;
use super::segment::{self, sync_dir, Prepared, Segment};
use super::workers::{self, Task};

/// Offsets assigned by one `append`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record of the first batch.
    pub base_offset: u64,
    /// Offset of the last record of the last batch.
    pub last_offset: u64,
}

/// Batches of one `append` that land in one segment, in order, with the base offset
/// each gets (little-endian, as stored in its first 8 bytes).
struct Run<'a> {
    start: u64,
    stamps: Vec<[u8; 8]>,
    batches: Vec<&'a [u8]>,
}

impl<'a> Run<'a> {
    fn with_capacity(n: usize, start: u64) -> Self {
        Run {
            start,
            stamps: Vec::with_capacity(n),
            batches: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, base_offset: u64, batch: &'a [u8]) {
        self.stamps.push(base_offset.to_le_bytes());
        self.batches.push(batch);
    }

    /// Empties the run for a new segment starting at `start`.
    fn restart(&mut self, start: u64) {
        self.start = start;
        self.stamps.clear();
        self.batches.clear();
    }
}

/// What readers and the writer share.
pub(super) struct Shared {
    pub dir: PathBuf,
    pub segments: RwLock<Arc<Vec<Arc<Segment>>>>,
    pub high_watermark: AtomicU64,
    pub log_start_offset: AtomicU64,
    /// Readers see no offset at or above this (`u64::MAX` = no cap). In a cluster it is
    /// the shard's replicated high-water mark, below which every in-sync copy holds the
    /// log; the writer's own end (`high_watermark`) may run ahead of it.
    pub visible_cap: AtomicU64,
    /// Opens sealed batches for readers (encryption at rest).
    pub at_rest: Option<AtRest>,
    /// Pending deletions by key: readers redact what they match (`redact.rs`).
    /// Replaced whole by the writer; empty almost always, which `has_tombstones`
    /// tells readers without the lock.
    pub tombstones: RwLock<Arc<Vec<Tombstone>>>,
    pub has_tombstones: std::sync::atomic::AtomicBool,
    /// Dropped bytes readers faulted back in, to drop again (`page_cache_window_bytes`).
    pub cold_reads: std::sync::Mutex<ColdReads>,
    /// Bytes the page-cache window dropped so far (`page_cache_window_bytes`).
    pub page_cache_dropped: Arc<AtomicU64>,
    /// Appended bytes write-behind started writing back, and bytes it let go by in a
    /// burst (`write_behind_bytes`, `write_behind_max_bytes_per_sec`).
    pub write_behind_started: AtomicU64,
    pub write_behind_let_go: AtomicU64,
}

impl Shared {
    pub(super) fn snapshot(&self) -> Arc<Vec<Arc<Segment>>> {
        // A poisoned lock only means a panic elsewhere while swapping an Arc; the Arc
        // inside is always whole.
        Arc::clone(&self.segments.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn publish(&self, segments: Vec<Arc<Segment>>) {
        *self.segments.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(segments);
    }

    fn publish_tombstones(&self, t: Vec<Tombstone>) {
        let any = !t.is_empty();
        *self.tombstones.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(t);
        self.has_tombstones.store(any, Ordering::Release);
    }

    fn tombstones(&self) -> Option<Arc<Vec<Tombstone>>> {
        if !self.has_tombstones.load(Ordering::Acquire) {
            return None;
        }
        Some(Arc::clone(
            &self.tombstones.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

/// The single writer of one shard's log. Not `Clone`; readers come from [`Log::reader`].
pub struct Log {
    pub(super) config: LogConfig,
    pub(super) shared: Arc<Shared>,
    pub(super) active: Active,
    /// Closed segments not yet made durable (synced by the next `flush`).
    pending_sync: Vec<Arc<Segment>>,
    /// A segment file was renamed into place since the last directory fsync.
    dir_dirty: bool,
    next: Option<Task<Result<Prepared, StorageError>>>,
    /// A segment made ready by [`Log::retry_stalled`], used by the next roll.
    ready: Option<Prepared>,
    prepare_seq: u64,
    failed: Option<String>,
    /// The at-rest key of the batches in the active segment (`None` = plain); the
    /// segment rolls before a batch under another key would join them, so every
    /// segment holds one key's batches (see `at_rest.rs`).
    active_key: Option<u32>,
    /// Appends are refused because the next segment could not be made (a full disk);
    /// nothing was written, so the log is whole and leaves this state by itself once a
    /// retry succeeds.
    stalled: Option<Stall>,
    /// An interval flush running on a storage worker; see [`Log::flush_in_background`].
    pub(super) background_flush: Option<Task<Result<(), StorageError>>>,
    /// Retention deletions still unlinking files; see `retention::delete_in_background`.
    pub(super) deletions: Vec<retention::Deletion>,
    /// Where in the active file write-back was last started (`write_behind_bytes`).
    pub(super) write_behind_from: u64,
    /// The last write-back start, running on a storage worker (at most one at a time).
    pub(super) write_behind_job: Option<Task<()>>,
    /// When the current write-behind step passed its half, and [`APPENDED_BYTES`]
    /// then (`None` before that): the process's ingest rate since is what
    /// `write_behind_max_bytes_per_sec` is checked against at the step's end.
    write_behind_mark: Option<(Instant, u64)>,
    /// What of the log's files is still cached (`page_cache_window_bytes`).
    pub(super) cache_window: CacheWindow,
    _lock: File,
}

/// Bytes appended by all logs of this process: write-behind's measure of how fast
/// the machine is taking writes (see [`Log::write_behind`]). Process-wide on purpose:
/// brokers embedded in one process share its cores and disks.
static APPENDED_BYTES: AtomicU64 = AtomicU64::new(0);

impl Log {
    /// Opens (creating if needed) the log in `dir`, recovering a torn tail.
    pub fn open(dir: &Path, config: LogConfig) -> Result<Log, StorageError> {
        config.check()?;
        let Recovered {
            lock,
            closed,
            active,
        } = recovery::recover(dir, &config)?;
        let log_start = closed
            .first()
            .map_or(active.seg.base_offset, |s| s.base_offset);
        let mut segments = closed;
        segments.push(Arc::clone(&active.seg));
        let active_key = check_keys(&segments, config.at_rest.as_ref())?;
        let tombstones = redact::load(dir)?;
        let hwm = active.next_offset;
        let page_cache_dropped = Arc::new(AtomicU64::new(0));
        let window = config.page_cache_window_bytes;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            segments: RwLock::new(Arc::new(segments)),
            high_watermark: AtomicU64::new(hwm),
            log_start_offset: AtomicU64::new(log_start),
            visible_cap: AtomicU64::new(u64::MAX),
            at_rest: config.at_rest.clone(),
            tombstones: RwLock::new(Arc::new(Vec::new())),
            has_tombstones: std::sync::atomic::AtomicBool::new(false),
            cold_reads: std::sync::Mutex::new(ColdReads::new(
                window,
                Arc::clone(&page_cache_dropped),
            )),
            page_cache_dropped: Arc::clone(&page_cache_dropped),
            write_behind_started: AtomicU64::new(0),
            write_behind_let_go: AtomicU64::new(0),
        });
        shared.publish_tombstones(tombstones);
        let cache_window = CacheWindow::new(window, page_cache_dropped);
        let mut log = Log {
            config,
            shared,
            active,
            pending_sync: Vec::new(),
            dir_dirty: false,
            next: None,
            ready: None,
            prepare_seq: 0,
            failed: None,
            active_key,
            stalled: None,
            background_flush: None,
            deletions: Vec::new(),
            write_behind_from: 0,
            write_behind_job: None,
            write_behind_mark: None,
            cache_window,
            _lock: lock,
        };
        log.write_behind_from = log.active.pos;
        if log.active.pos * 2 >= log.active.capacity {
            log.start_prepare();
        }
        Ok(log)
    }

    /// Copies `batches` (each exactly one batch, already validated by the caller) into
    /// the log, stamping dense base offsets into the stored copies, and publishes them
    /// to readers. Does not flush. All elements are checked for framing before any is
    /// written. After an I/O error the log refuses further writes
    /// ([`StorageError::Failed`]) and whether the batches are stored is unknown until
    /// the log is reopened.
    pub fn append(&mut self, batches: &[Bytes]) -> Result<AppendInfo, StorageError> {
        self.check_failed()?;
        for (index, b) in batches.iter().enumerate() {
            check_framing(b).map_err(|detail| StorageError::InvalidBatch {
                index,
                detail: detail.into(),
            })?;
        }
        // Encryption at rest: the sealed copies are what the log stores (32 bytes
        // longer each), so the plan below sizes and places them.
        let sealed: Vec<Bytes>;
        let batches = match self
            .config
            .at_rest
            .as_ref()
            .filter(|k| k.write_key().is_some())
        {
            Some(keys) => {
                sealed = batches.iter().map(|b| keys.seal(b)).collect();
                &sealed[..]
            }
            None => batches,
        };
        let base_offset = self.active.next_offset;
        if batches.is_empty() {
            return Err(StorageError::InvalidBatch {
                index: 0,
                detail: "append needs at least one batch".into(),
            });
        }
        let published = self.shared.high_watermark.load(Ordering::Relaxed);
        crate::invariant!(
            base_offset == published,
            "offsets strictly increasing",
            "an append would start at offset {base_offset} but offsets below {published} are taken"
        );
        // Every segment this append rolls into is made before anything is written:
        // when that fails (a full disk), the append is refused with the log exactly as
        // it was, so it is not failed and a later attempt can succeed. The rolls then
        // happen exactly where that plan put them.
        let mut rolls = self.prepare_rolls(batches)?.into_iter().peekable();
        // Batches go into the active file with `pwritev`, one call per run of batches
        // that land in one segment (see `write_run`); the stamped base offset of each
        // is its own 8-byte slice, so the caller's bytes are never copied twice.
        let mut run = Run::with_capacity(batches.len(), self.active.pos);
        for (i, b) in batches.iter().enumerate() {
            let (count, max_ts) = counts(b);
            if let Some((_, next)) = rolls.next_if(|(at, _)| *at == i) {
                let rolled = self.write_run(&run).and_then(|()| self.roll(next));
                if let Err(e) = rolled {
                    self.failed = Some(e.to_string());
                    rolls.for_each(|(_, p)| p.discard());
                    return Err(e);
                }
                run.restart(self.active.pos);
            }
            let stamp = self.place_batch(b.len(), count, max_ts);
            run.push(stamp, b);
        }
        if let Err(e) = self.write_run(&run) {
            self.failed = Some(e.to_string());
            return Err(e);
        }
        self.active_key = self.write_key();
        self.publish_active();
        self.check_positions();
        self.publish_high_watermark();
        self.write_behind();
        self.cache_window
            .written(&self.active.seg.log, self.active.pos);
        // Prepare the next segment once this one is half full: early enough that the
        // background fallocate is done long before the roll, late enough that an idle
        // log does not hold a second preallocated file.
        if self.next.is_none() && self.active.pos * 2 >= self.active.capacity {
            self.start_prepare();
        }
        Ok(AppendInfo {
            base_offset,
            last_offset: self.active.next_offset - 1,
        })
    }

    /// Whether an append of `batches` batches, `bytes` and `records` long in all, lands
    /// in blocks the active segment already has: no roll, no allocation, no segment to
    /// make, so [`Log::append`] does nothing but the write itself (and, for an
    /// encrypted log, the sealing). An append made on a thread that must not wait for
    /// file work (a connection's, see `shard::writer::append_in_place`) takes only
    /// these; anything else goes to the shard's writer thread.
    pub fn appends_in_place(&self, batches: usize, bytes: u64, records: u64) -> bool {
        let a = &self.active;
        let key = self.write_key();
        let stored = match key {
            Some(_) => bytes + (sealed::SEAL_OVERHEAD * batches) as u64,
            None => bytes,
        };
        self.failed.is_none()
            && self.stalled.is_none()
            && !(a.pos > 0 && self.active_key != key)
            && a.pos + stored <= a.allocated
            && a.next_offset + records <= a.seg.base_offset + u64::from(u32::MAX) + 1
    }

    /// Starts write-back of the active file's bytes appended since the last start, once
    /// they reach `write_behind_bytes` (off at 0). The disk then takes the data as it
    /// comes instead of all at once in the next flush, whose `fdatasync` finds little
    /// left to write. A failure only loses the hint: the flush still writes everything.
    ///
    /// The start runs on a storage worker, not here: `sync_file_range` submits the
    /// pages itself, which took 18 % of the writer thread's time at 1 GB/s. While one
    /// start still runs the next waits, and then covers everything appended since.
    ///
    /// While this process appends faster than `write_behind_max_bytes_per_sec` (all
    /// its logs together, over the second half of this log's step), write-behind lets the
    /// bytes go by: in a burst the write-back it starts competes for the cores with
    /// the appends (an 8-shard burst of 0.8 GB in a second ran 15-20 % slower with it),
    /// while the flush and the page-cache window would write the same bytes back
    /// later in fewer, larger calls. At a steady, lower rate it is what keeps the
    /// flush short (BENCHMARKS.md, "Session 19").
    fn write_behind(&mut self) {
        let every = self.config.write_behind_bytes;
        let pos = self.active.pos;
        // The active file was cut back (a cluster copy truncated): start again there.
        self.write_behind_from = self.write_behind_from.min(pos);
        if every == 0 {
            return;
        }
        // The rate is measured over the second half of each step: recent, even when
        // the step began before an idle spell.
        if self.write_behind_mark.is_none()
            && pos >= self.write_behind_from.saturating_add(every / 2)
        {
            self.write_behind_mark = Some((Instant::now(), APPENDED_BYTES.load(Ordering::Relaxed)));
        }
        if pos < self.write_behind_from.saturating_add(every) {
            return;
        }
        if self
            .write_behind_job
            .as_mut()
            .is_some_and(|job| !job.is_finished())
        {
            return;
        }
        let bytes = pos - self.write_behind_from;
        if self.ingest_too_fast_for_write_behind() {
            self.write_behind_from = pos;
            self.shared
                .write_behind_let_go
                .fetch_add(bytes, Ordering::Relaxed);
            return;
        }
        let file = match self.active.seg.log.file.try_clone() {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(error = %e, "write-behind hint failed");
                return;
            }
        };
        let from = self.write_behind_from;
        self.write_behind_from = pos;
        self.shared
            .write_behind_started
            .fetch_add(bytes, Ordering::Relaxed);
        self.write_behind_job = Some(workers::run(move || {
            // In calls of a bounded size: one 8 MiB start held a core for milliseconds.
            segment::in_page_calls(from, pos, |a, b| {
                let started = segment::start_write_back(&file, a, b);
                if let Err(e) = &started {
                    tracing::debug!(error = %e, "write-behind hint failed");
                }
                started.is_ok()
            });
        }));
    }

    /// Whether the process appended faster than `write_behind_max_bytes_per_sec` since
    /// the mark of this log's step (half a step ago); the next step marks anew.
    fn ingest_too_fast_for_write_behind(&mut self) -> bool {
        // (Set at the latest in the call that reached the step's end.)
        let Some((then, before)) = self.write_behind_mark.take() else {
            return false;
        };
        let max = self.config.write_behind_max_bytes_per_sec;
        if max == 0 {
            return false;
        }
        let bytes = APPENDED_BYTES.load(Ordering::Relaxed);
        let secs = then.elapsed().as_secs_f64();
        bytes.saturating_sub(before) as f64 > max as f64 * secs
    }

    /// Lets readers see everything appended: the one place the high-water mark moves.
    /// It never moves back; there is no truncation path on a live log (recovery cuts a
    /// torn tail before the log is published to anyone).
    pub(super) fn publish_high_watermark(&self) {
        let new = self.active.next_offset;
        let old = self.shared.high_watermark.load(Ordering::Relaxed);
        crate::invariant!(
            new >= old,
            "high-water mark monotonic",
            "it would move from {old} back to {new}"
        );
        self.shared.high_watermark.store(new, Ordering::Release);
    }

    /// The active segment's positions: nothing is durable that was not written, and
    /// nothing is written past the preallocated end (readers' maps end there).
    fn check_positions(&self) {
        let a = &self.active;
        crate::invariant!(
            a.flushed_pos <= a.pos && a.pos <= a.allocated && a.allocated <= a.capacity,
            "flushed <= written <= end of the log",
            "segment {}: flushed {} written {} allocated {} end {}",
            a.seg.base_offset,
            a.flushed_pos,
            a.pos,
            a.allocated,
            a.capacity
        );
    }

    fn check_failed(&self) -> Result<(), StorageError> {
        match &self.failed {
            Some(m) => Err(StorageError::Failed(m.clone())),
            None => Ok(()),
        }
    }

    /// Gets the disk space `batches` will be written to, before any is written: grows
    /// the active file's blocks over what lands in it, and makes the segments the
    /// append rolls into (in order, each with blocks for what lands in it), returned
    /// with the index of the batch each is rolled to before. A batch rolls when it does
    /// not fit (by bytes, or by the index's 32-bit relative offsets); a made segment is
    /// never smaller than this plan assumes. On failure the segments already made are
    /// deleted, the log is marked stalled (see [`Log::trouble`]) and nothing else
    /// changes.
    fn prepare_rolls(&mut self, batches: &[Bytes]) -> Result<Vec<(usize, Prepared)>, StorageError> {
        // Walk the batches as `append` will place them, without placing them: where
        // the run in the active segment ends, and each new segment's size and run.
        let (mut pos, mut cap) = (self.active.pos, self.active.capacity);
        let (mut next, mut base) = (self.active.next_offset, self.active.seg.base_offset);
        let mut active_end = pos;
        let mut rolls: Vec<(usize, u64, u64)> = Vec::new();
        // A segment holds one at-rest key's batches: a new write key starts a new one.
        let key_changes = pos > 0 && self.active_key != self.write_key();
        for (i, b) in batches.iter().enumerate() {
            let (len, count) = (b.len() as u64, u64::from(counts(b).0));
            if pos + len > cap
                || next + count - 1 - base > u64::from(u32::MAX)
                || (i == 0 && key_changes)
            {
                rolls.push((i, len, 0));
                pos = 0;
                cap = len.max(self.config.segment_bytes);
                base = next;
            }
            pos += len;
            next += count;
            match rolls.last_mut() {
                Some((_, _, run)) => *run = pos,
                None => active_end = pos,
            }
        }
        if let Err(e) = self.grow_active(active_end) {
            return Err(self.stall(e, Retry::Grow(active_end)));
        }
        let mut made = Vec::with_capacity(rolls.len());
        for (at, need, run) in rolls {
            match self.take_prepared_for(need, run) {
                Ok(p) => made.push((at, p)),
                Err(e) => {
                    made.into_iter().for_each(|(_, p)| p.discard());
                    return Err(self.stall(e, Retry::Roll(need, run)));
                }
            }
        }
        if self.stalled.take().is_some() {
            tracing::info!("disk space could be allocated again; appends resume");
        }
        Ok(made)
    }

    /// The at-rest key new batches are sealed with (`None` = written plain).
    fn write_key(&self) -> Option<u32> {
        self.config.at_rest.as_ref().and_then(AtRest::write_key)
    }

    /// Marks the log stalled by `e` (appends refused, nothing written) and returns it.
    fn stall(&mut self, e: StorageError, retry: Retry) -> StorageError {
        if self.stalled.is_none() {
            tracing::warn!(error = %e, "cannot allocate disk space; appends are refused until it can be");
        }
        self.stalled = Some(Stall {
            cause: e.to_string(),
            retry,
        });
        e
    }

    /// Gives the active file real blocks up to at least `end` (whole steps of
    /// `preallocate_bytes`, never past the segment's capacity).
    fn grow_active(&mut self, end: u64) -> Result<(), StorageError> {
        let a = &mut self.active;
        if end <= a.allocated {
            return Ok(());
        }
        let to = self.config.allocation_for(end, a.capacity);
        segment::allocate(&a.seg.log.file, &a.seg.log.path, a.allocated, to)?;
        a.allocated = to;
        Ok(())
    }

    /// What keeps this log from taking appends, if anything: a stalled roll (cleared by
    /// itself when a retry succeeds, see [`Log::retry_stalled`]) or an earlier I/O
    /// error that failed it (until it is reopened).
    pub fn trouble(&self) -> Option<String> {
        if let Some(f) = &self.failed {
            return Some(format!("failed until reopened: {f}"));
        }
        self.stalled
            .as_ref()
            .map(|s| format!("cannot allocate disk space: {}", s.cause))
    }

    /// Retries making the segment a stalled roll needs (on the writer's timer, so the
    /// log leaves the stalled state when space returns even if no append comes). The
    /// segment made is kept for the next roll. Returns whether the log is still
    /// stalled.
    pub fn retry_stalled(&mut self) -> bool {
        let Some(retry) = self.stalled.as_ref().map(|s| s.retry) else {
            return false;
        };
        let tried = match retry {
            Retry::Grow(end) => self.grow_active(end),
            Retry::Roll(need, run) => self
                .take_prepared_for(need, run)
                .map(|p| self.ready = Some(p)),
        };
        match tried {
            Ok(()) => {
                self.stalled = None;
                tracing::info!("disk space could be allocated again; appends resume");
                false
            }
            Err(e) => {
                self.stalled = Some(Stall {
                    cause: e.to_string(),
                    retry,
                });
                true
            }
        }
    }

    /// Reserves room for a batch of `len` bytes at the active position: indexes it,
    /// advances the position and offsets, and returns the base offset to stamp into it.
    /// The bytes themselves are written by `write_run`.
    fn place_batch(&mut self, len: usize, count: u32, max_ts: i64) -> u64 {
        let a = &mut self.active;
        let pos = a.pos;
        debug_assert!(pos + len as u64 <= a.capacity);
        a.max_timestamp_ms = a.max_timestamp_ms.max(max_ts);
        if a.bytes_since_index >= u64::from(self.config.index_interval_bytes) && pos > 0 {
            // A full index only makes scans longer; it is sized so it never fills.
            a.seg.index.push(IndexEntry {
                relative_offset: (a.next_offset - a.seg.base_offset) as u32,
                position: pos as u32,
                max_timestamp_ms: a.max_timestamp_ms,
            });
            a.bytes_since_index = 0;
        }
        let base_offset = a.next_offset;
        // `check_framing` refused empty batches, so every batch takes at least one
        // offset and the next one starts strictly after it.
        crate::invariant!(
            count >= 1,
            "offsets strictly increasing",
            "a batch of {count} records at offset {base_offset}"
        );
        a.bytes_since_index += len as u64;
        a.pos += len as u64;
        a.next_offset += u64::from(count);
        base_offset
    }

    /// Writes `run` into the active file at the position it was started at. The bytes
    /// lie above the published `len`, so no reader looks at them until
    /// `publish_active`; readers then see them through their shared map of the same
    /// file (one page cache).
    fn write_run(&self, run: &Run<'_>) -> Result<(), StorageError> {
        if run.batches.is_empty() {
            return Ok(());
        }
        debug_assert_eq!(
            run.start + run.batches.iter().map(|b| b.len() as u64).sum::<u64>(),
            self.active.pos
        );
        let mut slices = Vec::with_capacity(run.batches.len() * 2);
        for (stamp, b) in run.stamps.iter().zip(&run.batches) {
            slices.push(IoSlice::new(stamp));
            slices.push(IoSlice::new(&b[8..]));
        }
        APPENDED_BYTES.fetch_add(self.active.pos - run.start, Ordering::Relaxed);
        let log = &self.active.seg.log;
        segment::write_all_at(
            &log.file,
            &log.path,
            &mut slices,
            run.start,
            self.config.write_call_bytes,
        )
    }

    fn publish_active(&self) {
        let a = &self.active;
        a.seg
            .max_timestamp_ms
            .store(a.max_timestamp_ms, Ordering::Relaxed);
        a.seg.next_offset.store(a.next_offset, Ordering::Relaxed);
        a.seg.len.store(a.pos, Ordering::Release);
    }

    fn new_prepare_id(&mut self) -> u64 {
        self.prepare_seq += 1;
        (u64::from(std::process::id()) << 32) | (self.prepare_seq & 0xFFFF_FFFF)
    }

    fn index_entries_for(&self, capacity: u64) -> usize {
        index_capacity(capacity, self.config.index_interval_bytes)
    }

    /// Starts preparing the next segment in the background.
    fn start_prepare(&mut self) {
        let id = self.new_prepare_id();
        let cap = self.config.segment_bytes;
        self.next = Some(segment::spawn_prepare(
            self.shared.dir.clone(),
            id,
            cap,
            self.config.first_allocation(cap),
            self.index_entries_for(cap),
        ));
    }

    /// A prepared segment of at least `need` bytes with blocks for its first `run`.
    fn take_prepared_for(&mut self, need: u64, run: u64) -> Result<Prepared, StorageError> {
        let mut p = self.take_prepared(need)?;
        if let Err(e) = p.grow_to(run) {
            // Kept for the next attempt: it only lacks blocks.
            self.ready = Some(p);
            return Err(e);
        }
        Ok(p)
    }

    /// A prepared segment of at least `need` bytes: one kept from an earlier attempt or
    /// the background one if it is big enough, otherwise one made now.
    fn take_prepared(&mut self, need: u64) -> Result<Prepared, StorageError> {
        if let Some(p) = self.ready.take() {
            if p.capacity >= need {
                return Ok(p);
            }
            p.discard();
        }
        if let Some(h) = self.next.take() {
            let p = h.join("segment preparer")?;
            match p {
                Ok(p) if p.capacity >= need => return Ok(p),
                Ok(p) => p.discard(),
                Err(e) => tracing::warn!(error = %e, "background segment preparation failed"),
            }
        }
        let cap = need.max(self.config.segment_bytes);
        let id = self.new_prepare_id();
        let allocated = self.config.first_allocation(cap);
        segment::prepare(
            &self.shared.dir,
            id,
            cap,
            allocated,
            self.index_entries_for(cap),
        )
    }

    /// Closes the active segment (if it holds anything) and makes `prepared` the new
    /// active segment, at the next offset.
    fn roll(&mut self, prepared: Prepared) -> Result<(), StorageError> {
        self.publish_active();
        // The closing segment's last bytes count in the page-cache window (an append
        // that rolls in its middle notes only the new segment afterwards).
        self.cache_window
            .note(&self.active.seg.log, self.active.pos);
        let dir = self.shared.dir.clone();
        let mut segments: Vec<Arc<Segment>> = self.shared.snapshot().as_ref().clone();
        let old = Arc::clone(&self.active.seg);
        if self.active.pos == 0 {
            // Empty active segment too small for one batch: replace it at the same base.
            segments.pop();
            old.delete_files()?;
        } else {
            let closed = Arc::new(close_segment(&old, self.active.pos)?);
            segments.pop();
            segments.push(Arc::clone(&closed));
            self.pending_sync.push(closed);
        }
        let (capacity, allocated) = (prepared.capacity, prepared.allocated);
        let seg = Arc::new(prepared.install(&dir, self.active.next_offset)?);
        segments.push(Arc::clone(&seg));
        self.shared.publish(segments);
        self.dir_dirty = true;
        self.active = Active {
            seg,
            pos: 0,
            capacity,
            allocated,
            next_offset: self.active.next_offset,
            bytes_since_index: 0,
            max_timestamp_ms: i64::MIN,
            flushed_pos: 0,
        };
        self.write_behind_from = 0;
        self.write_behind_mark = None;
        Ok(())
    }

    /// Makes everything appended so far durable: closed-but-unsynced segments and the
    /// active segment's file are `fdatasync`ed, and the
    /// directory is fsynced if a segment file appeared. Indexes are not synced on this
    /// path: recovery rebuilds them from the last entry it can verify.
    pub fn flush(&mut self) -> Result<(), StorageError> {
        self.check_failed()?;
        let r = self.flush_inner();
        if let Err(e) = &r {
            self.failed = Some(e.to_string());
        }
        r
    }

    /// Starts making everything appended so far durable on a storage worker and
    /// returns at once, so neither a periodic flush nor a durable acknowledgement stalls
    /// the writer (an `fdatasync` of a second's worth of appends can take hundreds of
    /// milliseconds): the writer keeps appending while the disk syncs. `on_done` is
    /// called on the worker with the outcome, once everything appended before this
    /// call is durable (or the flush failed). At most one runs at a time: a previous one
    /// is waited for first, so callers that must not block start the next one only after
    /// the previous `on_done` ran. A later [`Log::flush`] waits for it too, so a
    /// synchronous flush never overtakes it. Its failure fails the log like a
    /// synchronous flush's would, at the next call of either.
    pub fn flush_in_background(
        &mut self,
        on_done: impl FnOnce(Result<(), String>) + Send + 'static,
    ) -> Result<(), StorageError> {
        self.check_failed()?;
        self.join_background_flush()?;
        self.check_positions();
        let segments = std::mem::take(&mut self.pending_sync);
        let a = &mut self.active;
        let seg = Arc::clone(&a.seg);
        let dirty = a.pos > a.flushed_pos;
        a.flushed_pos = a.pos;
        let dir = std::mem::take(&mut self.dir_dirty).then(|| self.shared.dir.clone());
        let sync = move || -> Result<(), StorageError> {
            for s in segments {
                s.sync_all_files()?;
            }
            if dirty {
                seg.log.file.sync_data().map_err(io_err(&seg.log.path))?;
            }
            if let Some(dir) = dir {
                sync_dir(&dir)?;
            }
            Ok(())
        };
        let job = move || {
            let r = sync();
            on_done(r.as_ref().map(|_| ()).map_err(ToString::to_string));
            r
        };
        // The pool never fails to take a job (it runs it here when no worker can
        // start), so a thread limit slows flushes down but never fails the log.
        self.background_flush = Some(workers::run(job));
        Ok(())
    }

    /// Waits for the background flush, if any, and fails the log if it failed.
    fn join_background_flush(&mut self) -> Result<(), StorageError> {
        let Some(h) = self.background_flush.take() else {
            return Ok(());
        };
        let r = h.join("flush").and_then(|r| r);
        if let Err(e) = &r {
            self.failed = Some(e.to_string());
        }
        r
    }

    fn flush_inner(&mut self) -> Result<(), StorageError> {
        self.join_background_flush()?;
        self.check_positions();
        for s in std::mem::take(&mut self.pending_sync) {
            s.sync_all_files()?;
        }
        let a = &mut self.active;
        if a.pos > a.flushed_pos {
            // Only this file's unsynced tail is dirty (earlier flushes covered the
            // rest), so fdatasync of the whole file costs what a range sync would.
            a.seg
                .log
                .file
                .sync_data()
                .map_err(io_err(&a.seg.log.path))?;
            a.flushed_pos = a.pos;
        }
        if self.dir_dirty {
            sync_dir(&self.shared.dir)?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// A reader over this log; cheap, `Clone`, `Send + Sync`.
    pub fn reader(&self) -> LogReader {
        LogReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The next offset to assign.
    pub fn high_watermark(&self) -> u64 {
        self.active.next_offset
    }

    /// The high-water mark readers see: below [`Log::high_watermark`] only while an
    /// append that failed part way left offsets assigned but never published.
    pub fn published_high_watermark(&self) -> u64 {
        self.shared.high_watermark.load(Ordering::Acquire)
    }

    /// What readers see: the published high-water mark, capped by the replicated one
    /// in a cluster (see [`LogReader::set_visible_cap`]).
    pub fn visible_high_watermark(&self) -> u64 {
        self.published_high_watermark()
            .min(self.shared.visible_cap.load(Ordering::Acquire))
    }

    /// The first offset still held.
    pub fn log_start_offset(&self) -> u64 {
        self.shared.log_start_offset.load(Ordering::Acquire)
    }

    /// Bytes of batches held, over all segments.
    pub fn size_bytes(&self) -> u64 {
        self.shared.snapshot().iter().map(|s| s.size_bytes()).sum()
    }

    /// Removes closed segments that are too old or beyond the size limit (chosen by
    /// `retention.rs`) from the log and starts deleting their files on another thread
    /// ([`Log::wait_for_retention`] waits for that). Returns how many were removed.
    ///
    /// Safe against readers: the segment list is republished without the victims and
    /// the log start advanced before the files are unlinked; a reader still holding a
    /// snapshot or `Bytes` keeps the mapping alive through its `Arc`, and Linux keeps
    /// an unlinked file's pages until the last mapping goes.
    pub fn apply_retention(&mut self, now_ms: i64) -> Result<usize, StorageError> {
        if let Err(e) = self.reap_deletions(false) {
            tracing::error!(error = %e, "deleting segments removed by retention failed");
        }
        if self.deletions.len() >= retention::MAX_RUNNING_DELETIONS {
            return Ok(0);
        }
        let snap = self.shared.snapshot();
        let victims = retention::victims(&snap, &self.config, now_ms);
        if victims == 0 {
            return Ok(0);
        }
        let keep: Vec<_> = snap[victims..].to_vec();
        let new_start = keep[0].base_offset;
        let old_start = self.shared.log_start_offset.load(Ordering::Relaxed);
        crate::invariant!(
            old_start < new_start && new_start <= self.active.next_offset,
            "log start moves forward, never past the high-water mark",
            "retention would move it from {old_start} to {new_start} (high-water mark {})",
            self.active.next_offset
        );
        self.shared.publish(keep);
        self.shared
            .log_start_offset
            .store(new_start, Ordering::Release);
        self.pending_sync.retain(|s| s.base_offset >= new_start);
        let doomed = snap[..victims].to_vec();
        let dir = self.shared.dir.clone();
        self.deletions
            .push(retention::delete_in_background(doomed, snap, dir));
        Ok(victims)
    }

    /// Collects finished retention deletions, or waits for all of them when `wait`.
    /// Returns how many segments they deleted; the first failure is returned after
    /// every finished one is collected.
    fn reap_deletions(&mut self, wait: bool) -> Result<usize, StorageError> {
        let mut deleted = 0;
        let mut first_err = None;
        let mut running = Vec::new();
        for mut h in self.deletions.drain(..) {
            if !wait && !h.is_finished() {
                running.push(h);
                continue;
            }
            match h.join("retention deletion").and_then(|r| r) {
                Ok(n) => deleted += n,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        self.deletions = running;
        first_err.map_or(Ok(deleted), Err)
    }

    /// Waits until the files of every segment retention removed so far are deleted.
    /// Returns how many segments that was since the last call (or the first failure).
    pub fn wait_for_retention(&mut self) -> Result<usize, StorageError> {
        self.reap_deletions(true)
    }

    /// The directory this log lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Deletes every record with `key` below the log's end: writes a tombstone
    /// durably (`tombstones.json`) and publishes it, so no read that starts after
    /// this returns sees those records (they come redacted, see `redact.rs`).
    /// [`Log::compact_deleted_keys`] later removes their bytes. Returns the
    /// tombstone's offset: records with the key at or above it are not deleted.
    pub fn delete_key(&mut self, key: &[u8]) -> Result<u64, StorageError> {
        self.check_failed()?;
        let below = self.active.next_offset;
        let mut t = self
            .shared
            .tombstones()
            .map_or_else(Vec::new, |t| t.as_ref().clone());
        match t.iter_mut().find(|t| t.key == key) {
            Some(old) => old.below = old.below.max(below),
            None => t.push(Tombstone {
                key: key.to_vec(),
                below,
            }),
        }
        redact::save(&self.shared.dir, &t)?;
        self.shared.publish_tombstones(t);
        Ok(below)
    }

    /// Whether tombstones wait for [`Log::compact_deleted_keys`].
    pub fn has_deleted_keys(&self) -> bool {
        self.shared.has_tombstones.load(Ordering::Acquire)
    }

    /// Removes the records deleted by key from disk: rolls the active segment if it
    /// holds offsets below a tombstone, rewrites each closed segment below the
    /// tombstones that holds a deleted record (its batches redacted, sealed with the
    /// current write key when encrypting at rest) and renames it over the old file,
    /// then drops the tombstones. Runs on the writer (appends to this shard wait);
    /// costs one read of every segment below the newest tombstone. Returns how many
    /// segments were rewritten.
    pub fn compact_deleted_keys(&mut self) -> Result<usize, StorageError> {
        self.check_failed()?;
        let Some(tombstones) = self.shared.tombstones() else {
            return Ok(0);
        };
        let below = tombstones.iter().map(|t| t.below).max().unwrap_or(0);
        if self.active.pos > 0 && self.active.seg.base_offset < below {
            let p = self.take_prepared_for(self.config.segment_bytes, 0)?;
            if let Err(e) = self.roll(p) {
                self.failed = Some(e.to_string());
                return Err(e);
            }
            // The closed segment is made durable before its rewrite replaces it.
            self.flush()?;
        }
        let mut rewritten = 0;
        let snap = self.shared.snapshot();
        for i in 0..snap.len().saturating_sub(1) {
            let seg = &snap[i];
            if seg.base_offset >= below {
                break;
            }
            if let Some(new) = self.rewrite_segment(seg, &tombstones)? {
                let mut list = self.shared.snapshot().as_ref().clone();
                if let Some(slot) = list.iter_mut().find(|s| s.base_offset == seg.base_offset) {
                    *slot = Arc::new(new);
                }
                self.shared.publish(list);
                self.pending_sync
                    .retain(|s| s.base_offset != seg.base_offset);
                rewritten += 1;
            }
        }
        redact::save(&self.shared.dir, &[])?;
        self.shared.publish_tombstones(Vec::new());
        Ok(rewritten)
    }

    /// Rewrites one closed segment with the deleted records redacted, durably, or
    /// `None` when it holds none of them. A segment that cannot be read whole
    /// (damage) is left as it is, with an error.
    fn rewrite_segment(
        &self,
        seg: &Segment,
        tombstones: &[Tombstone],
    ) -> Result<Option<Segment>, StorageError> {
        let data = seg.committed();
        let mut plain_batches: Vec<Bytes> = Vec::new();
        let mut changed = false;
        let mut pos = 0;
        while pos < data.len() {
            let h = sealed::verify_stored(&data[pos..])
                .map_err(|e| corrupt(seg, pos, e.to_string()))?;
            let stored = seg.chunk(pos, pos + h.total_bytes());
            let plain = self.reader().open_sealed(vec![stored])?.remove(0);
            match redact::redact_batch(&plain, tombstones) {
                Some(r) => {
                    changed = true;
                    plain_batches.push(Bytes::from(r));
                }
                None => plain_batches.push(plain),
            }
            pos += h.total_bytes();
        }
        if !changed {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(data.len());
        for b in &plain_batches {
            match self
                .config
                .at_rest
                .as_ref()
                .filter(|k| k.write_key().is_some())
            {
                Some(k) => out.extend_from_slice(&k.seal(b)),
                None => out.extend_from_slice(b),
            }
        }
        let next_offset = seg.next_offset.load(Ordering::Acquire);
        let dir = &self.shared.dir;
        recovery::replace_closed(
            dir,
            seg.base_offset,
            next_offset,
            &out,
            self.config.index_interval_bytes,
        )
        .map(Some)
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = self.join_background_flush();
        // Before the directory lock goes: a reopen must not list files being unlinked.
        if let Err(e) = self.reap_deletions(true) {
            tracing::error!(error = %e, "deleting segments removed by retention failed");
        }
        if let Some(h) = self.next.take() {
            if let Ok(Ok(p)) = h.join("segment preparer") {
                p.discard();
            }
        }
        if let Some(p) = self.ready.take() {
            p.discard();
        }
    }
}

/// Why appends are refused while nothing is wrong with what is written.
struct Stall {
    cause: String,
    retry: Retry,
}

/// The allocation a stalled log tries again.
#[derive(Clone, Copy)]
enum Retry {
    /// Blocks for the active file up to this many bytes.
    Grow(u64),
    /// A new segment that holds at least this many bytes (first field), with blocks
    /// for its first so many (second).
    Roll(u64, u64),
}

/// Closes `seg` at `len` bytes: trims its files and maps its indexes read-only. The
/// log keeps its map (read-only already: the writer writes with `pwritev`; readers
/// never look past `len`). Mapping it again meant unmapping the old map on the writer
/// at every roll: once a consumer had read the segment through it, 4.5–9 ms per
/// 256 MiB segment on this VM, under the process's mmap lock, which also holds up
/// every other thread's page faults (BENCHMARKS.md, "Session 16"). That unmapping is
/// not gone but deferred, and done once per segment instead of twice: when the
/// segment is deleted (retention, on a storage worker) or when the last reader holding
/// a slice of it lets go, wherever that is. Until then the pages readers touched stay
/// mapped (they are page cache either way).
fn close_segment(seg: &Segment, len: u64) -> Result<Segment, StorageError> {
    let log = &seg.log;
    log.file.set_len(len).map_err(io_err(&log.path))?;
    let entries = seg.index.len();
    for (f, eb) in [
        (&seg.index.offsets, OFFSET_ENTRY_BYTES),
        (&seg.index.times, TIME_ENTRY_BYTES),
    ] {
        f.file()
            .set_len((entries * eb) as u64)
            .map_err(io_err(f.path()))?;
    }
    Ok(Segment {
        base_offset: seg.base_offset,
        log: Arc::clone(log),
        index: SegmentIndex {
            offsets: IndexFile::read_only(
                seg.index.offsets.path().to_path_buf(),
                OFFSET_ENTRY_BYTES,
            )?,
            times: IndexFile::read_only(seg.index.times.path().to_path_buf(), TIME_ENTRY_BYTES)?,
        },
        len: AtomicU64::new(len),
        next_offset: AtomicU64::new(seg.next_offset.load(Ordering::Acquire)),
        max_timestamp_ms: std::sync::atomic::AtomicI64::new(
            seg.max_timestamp_ms.load(Ordering::Acquire),
        ),
        closed: true,
    })
}

/// Checks that every sealed segment's key is configured and right, by opening the
/// first batch of each (a segment holds one key's batches). Returns the key of the
/// active (last) segment's batches. A failure names the key and the segment file.
fn check_keys(
    segments: &[Arc<Segment>],
    keys: Option<&AtRest>,
) -> Result<Option<u32>, StorageError> {
    let mut last = None;
    for seg in segments {
        let data = seg.committed();
        last = None;
        if data.is_empty() || !sealed::is_sealed(data) {
            continue;
        }
        let h = header_at(seg, data, 0)?;
        let first = &data[..h.total_bytes()];
        let parts = sealed::parse_sealed(first).map_err(|e| corrupt(seg, 0, e.to_string()))?;
        let opened = at_rest::open_chunk(keys, Bytes::copy_from_slice(first));
        if let Err(e) = opened {
            return Err(StorageError::AtRestKey {
                path: seg.log.path.clone(),
                detail: format!("{e}; refusing to open the log"),
            });
        }
        last = Some(parts.key_id);
    }
    Ok(last)
}

/// Checks that `b` is framed as exactly one batch (the caller validated its contents).
fn check_framing(b: &[u8]) -> Result<(), &'static str> {
    if b.len() < BATCH_HEADER_BYTES {
        return Err("shorter than a batch header");
    }
    if batch::peek_total_bytes(b) != Some(b.len()) {
        return Err("batch_length does not match the element's length");
    }
    if b.len() > u32::MAX as usize {
        return Err("batch larger than a segment can address");
    }
    if counts(b).0 == 0 {
        return Err("record_count is zero");
    }
    Ok(())
}

/// `(record_count, max_timestamp_ms)` of a framed batch.
fn counts(b: &[u8]) -> (u32, i64) {
    let count = u32::from_le_bytes(b[24..28].try_into().expect("4 bytes"));
    let max_ts = i64::from_le_bytes(b[36..44].try_into().expect("8 bytes"));
    (count, max_ts)
}

/// A read handle on a log. Never takes the writer's lock; see the module docs.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

impl LogReader {
    /// Visits every batch from the one holding `from` up to the high-water mark as it
    /// was when the scan started, in offset order, reading 4 MiB at a time. Batches are
    /// checked by [`LogReader::read`] first. The first error — a read's, or `visit`'s —
    /// ends the scan. Returns the offset after the last batch visited. For rebuilding
    /// state from a log on open (producer ids, committed offsets, queue state, the
    /// class index, dead letters).
    pub fn scan_batches<E: From<StorageError>>(
        &self,
        from: u64,
        mut visit: impl FnMut(Bytes, &BatchHeader) -> Result<(), E>,
    ) -> Result<u64, E> {
        const SCAN_READ_BYTES: usize = 4 << 20;
        let end = self.high_watermark();
        let mut at = from.max(self.log_start_offset());
        while at < end {
            let mut next = at;
            for mut chunk in self.read(at, SCAN_READ_BYTES)? {
                while !chunk.is_empty() {
                    let h = BatchHeader::read(&chunk).map_err(|e| StorageError::Corrupt {
                        path: self.shared.dir.clone(),
                        file_position: 0,
                        detail: format!("batch header at offset {next}: {e}"),
                    })?;
                    let batch = chunk.split_to(h.total_bytes().min(chunk.len()));
                    visit(batch, &h)?;
                    next = h.last_offset() + 1;
                }
            }
            if next <= at {
                break;
            }
            at = next;
        }
        Ok(at)
    }

    /// Whole batches starting with the one that holds `offset`, up to `max_bytes` (but
    /// always at least one batch when `offset < high_watermark`). Each returned `Bytes`
    /// is a zero-copy run of consecutive whole batches from one segment. Every batch
    /// served is checked (header, CRC, offset continuity). A bad batch ends the read:
    /// the intact batches before it are returned, and only when it is the first batch
    /// asked for does the read fail with [`StorageError::Corrupt`], naming the offset,
    /// so a reader gets every intact record up to the damage and then learns where it
    /// is (and can continue past it by offset).
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<Vec<Bytes>, StorageError> {
        self.read_below(offset, max_bytes, self.high_watermark())
    }

    /// [`LogReader::read`] up to the writer's own end, past the visible cap: what a
    /// primary sends its mirrors.
    pub fn read_unreplicated(
        &self,
        offset: u64,
        max_bytes: usize,
    ) -> Result<Vec<Bytes>, StorageError> {
        self.read_below(offset, max_bytes, self.log_end_offset())
    }

    fn read_below(
        &self,
        offset: u64,
        max_bytes: usize,
        hwm: u64,
    ) -> Result<Vec<Bytes>, StorageError> {
        let log_start = self.shared.log_start_offset.load(Ordering::Acquire);
        let out_of_range = |log_start| StorageError::OffsetOutOfRange {
            requested: offset,
            log_start,
            high_watermark: hwm,
        };
        if offset > hwm && offset <= self.log_end_offset() {
            // Written but not yet held by every in-sync copy (a cluster): nothing to
            // read yet, which is not an error.
            return Ok(Vec::new());
        }
        if offset < log_start || offset > hwm {
            return Err(out_of_range(log_start));
        }
        if offset == hwm {
            return Ok(Vec::new());
        }
        let snap = self.shared.snapshot();
        let i = snap.partition_point(|s| s.base_offset <= offset);
        if i == 0 {
            // Retention removed the segment between our loads.
            let start = snap.first().map_or(hwm, |s| s.base_offset);
            return Err(out_of_range(start));
        }
        let mut read = Reading {
            want: offset,
            hwm,
            taken: 0,
            max_bytes,
            out: Vec::new(),
            cold: Vec::new(),
        };
        for seg in &snap[i - 1..] {
            if read.want >= hwm {
                break;
            }
            match read.segment(seg, offset) {
                Ok(Segmented::Continue) => {}
                Ok(Segmented::Done) => break,
                Err(e) => {
                    log_corrupt(&e);
                    if read.out.is_empty() {
                        return Err(e);
                    }
                    // Serve what is intact; the next read from here reports the damage.
                    break;
                }
            }
        }
        if !read.cold.is_empty() {
            // A poisoned lock only means a panic elsewhere while noting ranges: the
            // list is still whole.
            let mut cold = (self.shared.cold_reads.lock()).unwrap_or_else(|p| p.into_inner());
            for (log, from, to) in read.cold {
                cold.read(&log, from, to);
            }
        }
        let out = self.open_sealed(read.out)?;
        Ok(match self.shared.tombstones() {
            None => out,
            Some(t) => out
                .into_iter()
                .map(|c| redact::redact_chunk(c, &t))
                .collect(),
        })
    }

    /// `chunks` with every sealed batch opened (encryption at rest); plain chunks stay
    /// zero-copy. A batch that cannot be opened is reported as corrupt, naming the key.
    fn open_sealed(&self, chunks: Vec<Bytes>) -> Result<Vec<Bytes>, StorageError> {
        // Without keys the log holds no sealed batch: `Log::open` refuses one
        // (`check_keys`), and this log's writer and compaction seal only with a key.
        // So the plain read path stays as it was, zero-copy and without a second walk.
        let Some(keys) = self.shared.at_rest.as_ref() else {
            return Ok(chunks);
        };
        let keys = Some(keys);
        chunks
            .into_iter()
            .map(|c| {
                at_rest::open_chunk(keys, c).map_err(|e| {
                    let e = StorageError::AtRestKey {
                        path: self.shared.dir.clone(),
                        detail: e.to_string(),
                    };
                    log_corrupt(&e);
                    e
                })
            })
            .collect()
    }

    /// Everything below it is readable: the next offset the writer will assign, or the
    /// replicated high-water mark when that is lower (a cluster).
    pub fn high_watermark(&self) -> u64 {
        self.shared
            .high_watermark
            .load(Ordering::Acquire)
            .min(self.shared.visible_cap.load(Ordering::Acquire))
    }

    /// The next offset the writer will assign (the log's end), whatever readers may see.
    pub fn log_end_offset(&self) -> u64 {
        self.shared.high_watermark.load(Ordering::Acquire)
    }

    /// Caps what readers see at `cap` (`u64::MAX` lifts the cap). Only raises it: the
    /// replicated high-water mark never moves back on a copy that serves reads.
    pub fn set_visible_cap(&self, cap: u64) {
        self.shared.visible_cap.fetch_max(cap, Ordering::AcqRel);
    }

    /// Starts the log with a cap of `cap`, whatever it was (a cluster node opens every
    /// shard with nothing visible until it knows it is the primary).
    pub fn reset_visible_cap(&self, cap: u64) {
        self.shared.visible_cap.store(cap, Ordering::Release);
    }

    /// Bytes dropped from the page cache so far by the log's page-cache window.
    pub fn page_cache_dropped_bytes(&self) -> u64 {
        self.shared.page_cache_dropped.load(Ordering::Relaxed)
    }

    /// Appended bytes write-behind started writing back, and bytes it let go by while
    /// the process appended too fast for it.
    pub fn write_behind_bytes(&self) -> (u64, u64) {
        (
            self.shared.write_behind_started.load(Ordering::Relaxed),
            self.shared.write_behind_let_go.load(Ordering::Relaxed),
        )
    }

    /// [`LogReader::scan_batches`] that steps over damaged batches instead of ending at
    /// the first: each damaged range (from [`LogReader::damage_end`]) is passed to
    /// `damaged` and the scan goes on after it, at most `damage_max` times (then it
    /// returns the offset of the next damage, where a later scan may go on). For state
    /// rebuilt from a log (the class index, producer sequences), where one bad batch
    /// must not hide the intact ones after it. Errors other than damage end the scan
    /// as in `scan_batches`.
    pub fn scan_intact_batches<E: From<StorageError>>(
        &self,
        from: u64,
        damage_max: usize,
        mut visit: impl FnMut(Bytes, &BatchHeader) -> Result<(), E>,
        mut damaged: impl FnMut(u64, u64),
    ) -> Result<u64, E> {
        /// Why a scan stopped: the log's error, or the visitor's.
        enum Stop<E> {
            Log(StorageError),
            Visit(E),
        }
        impl<E> From<StorageError> for Stop<E> {
            fn from(e: StorageError) -> Self {
                Stop::Log(e)
            }
        }
        let mut at = from;
        let mut steps = 0;
        loop {
            let mut reached = at.max(self.log_start_offset());
            let scanned = self.scan_batches(at, |b, h| {
                visit(b, h).map_err(Stop::Visit)?;
                reached = h.last_offset() + 1;
                Ok(())
            });
            match scanned {
                Ok(to) => return Ok(to),
                Err(Stop::Visit(e)) => return Err(e),
                Err(Stop::Log(StorageError::Corrupt { .. })) => {
                    if steps == damage_max {
                        tracing::warn!(
                            dir = %self.shared.dir.display(),
                            at = reached,
                            "scan stopped: more damaged batches than it steps over"
                        );
                        return Ok(reached);
                    }
                    steps += 1;
                    let end = self.damage_end(reached);
                    damaged(reached, end);
                    at = end;
                }
                Err(Stop::Log(e)) => return Err(E::from(e)),
            }
        }
    }

    /// The first offset after the damaged batch that holds `offset`, from that batch's
    /// header alone, unchecked: how a reader that must go on past damage (the class
    /// index) steps over it, where [`LogReader::read`] refuses it. When the header
    /// cannot be trusted (it runs past its segment, or claims more records than its
    /// bytes can hold), the damage is taken to reach the segment's next index point
    /// (where [`LogReader::read`] finds batches again), else the next segment's base
    /// offset (in the last segment, the high-water mark): every offset in between is
    /// one `read` refuses too. Always past `offset`.
    pub fn damage_end(&self, offset: u64) -> u64 {
        let hwm = self.high_watermark();
        let snap = self.shared.snapshot();
        let i = snap.partition_point(|s| s.base_offset <= offset);
        let segment_end = snap.get(i).map_or(hwm, |s| s.base_offset.min(hwm));
        let Some(seg) = i.checked_sub(1).map(|i| &snap[i]) else {
            return segment_end.max(offset + 1);
        };
        let rel = (offset - seg.base_offset).min(u64::from(u32::MAX)) as u32;
        let next_point = seg.index.offset_after(rel).map_or(segment_end, |r| {
            (seg.base_offset + u64::from(r)).min(segment_end)
        });
        let fallback = next_point.max(offset + 1);
        let probe = Reading {
            want: offset,
            hwm,
            taken: 0,
            max_bytes: 0,
            out: Vec::new(),
            cold: Vec::new(),
        };
        let data = seg.committed();
        let (mut pos, mut expect) = probe.anchor(seg, data, offset);
        // Bounded: every step moves past at least a header's bytes.
        while pos < data.len() {
            let Ok(h) = header_at(seg, data, pos) else {
                break;
            };
            let count = h.record_count as usize;
            if count == 0 || count > h.total_bytes() / weir_protocol::batch::RECORD_MIN_BYTES {
                break;
            }
            let last = expect + count as u64 - 1;
            if last >= offset {
                return (last + 1).clamp(offset + 1, fallback);
            }
            pos += h.total_bytes();
            expect = last + 1;
        }
        fallback
    }

    /// The first offset still held.
    pub fn log_start_offset(&self) -> u64 {
        self.shared.log_start_offset.load(Ordering::Acquire)
    }

    /// The first record whose timestamp is `>= ts_ms`, as (its offset, its timestamp),
    /// or `None` if every published record is older. It is in the first batch whose
    /// `max_timestamp_ms >= ts_ms` (no earlier batch holds one).
    pub fn offset_for_timestamp(&self, ts_ms: i64) -> Result<Option<(u64, i64)>, StorageError> {
        let hwm = self.high_watermark();
        let snap = self.shared.snapshot();
        for seg in snap.iter() {
            if seg.base_offset >= hwm {
                break;
            }
            if seg.max_timestamp_ms.load(Ordering::Acquire) < ts_ms {
                continue;
            }
            let data = seg.committed();
            let mut pos = seg.index.position_for_timestamp(ts_ms) as usize;
            while pos < data.len() {
                let h = header_at(seg, data, pos).inspect_err(log_corrupt)?;
                if h.base_offset >= hwm {
                    return Ok(None);
                }
                if h.max_timestamp_ms >= ts_ms {
                    let stored = seg.chunk(pos, pos + h.total_bytes());
                    let records = self.open_sealed(vec![stored])?.remove(0);
                    let found = weir_protocol::batch::record_timestamps(&records)
                        .zip(h.base_offset..)
                        .find(|&(ts, _)| ts >= ts_ms)
                        .map_or((h.base_offset, h.max_timestamp_ms), |(ts, o)| (o, ts));
                    return Ok(Some(found));
                }
                pos += h.total_bytes();
            }
        }
        Ok(None)
    }
}

/// The header of the batch at `pos`, checked to lie wholly inside `data`.
/// One [`LogReader::read`] in progress: the next offset wanted and what was taken.
struct Reading {
    want: u64,
    hwm: u64,
    taken: usize,
    max_bytes: usize,
    out: Vec<Bytes>,
    /// What of `out` was read from bytes the page-cache window had dropped.
    cold: Vec<(Arc<segment::MappedLog>, u64, u64)>,
}

/// How reading one segment ended.
enum Segmented {
    /// The segment is used up; the read goes on in the next one.
    Continue,
    /// The read is complete (`max_bytes`, or the high-water mark).
    Done,
}

impl Reading {
    /// Takes the batches of `seg` from `self.want` on. On damage, the intact batches
    /// of this segment before it are pushed first, then the error names the offset.
    fn segment(&mut self, seg: &Segment, first: u64) -> Result<Segmented, StorageError> {
        let data = seg.committed();
        let (mut pos, mut expect) = self.anchor(seg, data, first);
        // Skip batches wholly before `want` (headers only), counting offsets by
        // continuity from the anchor rather than trusting each header's base offset
        // (the one field the CRC does not cover), so a damaged one can be skipped.
        // Bounded: every batch is at least a header long.
        while pos < data.len() {
            let h = header_at(seg, data, pos).map_err(|e| self.at_offset(e))?;
            let last = expect + (h.last_offset() - h.base_offset);
            if last >= self.want {
                break;
            }
            pos += h.total_bytes();
            expect = last + 1;
        }
        let start = pos;
        let mut ended = Ok(Segmented::Continue);
        while pos < data.len() {
            let h = match sealed::verify_stored(&data[pos..]) {
                Ok(h)
                    if h.base_offset == self.want || (pos == start && h.base_offset == expect) =>
                {
                    h
                }
                Ok(h) => {
                    let detail = format!(
                        "batch base offset {} where {} was expected",
                        h.base_offset, self.want
                    );
                    ended = Err(self.at_offset(corrupt(seg, pos, detail)));
                    break;
                }
                Err(e) => {
                    ended = Err(self.at_offset(corrupt(seg, pos, e.to_string())));
                    break;
                }
            };
            let total = h.total_bytes();
            if h.base_offset >= self.hwm || (self.taken > 0 && self.taken + total > self.max_bytes)
            {
                ended = Ok(Segmented::Done);
                break;
            }
            self.taken += total;
            pos += total;
            self.want = h.last_offset() + 1;
            if self.taken >= self.max_bytes {
                ended = Ok(Segmented::Done);
                break;
            }
        }
        if pos > start {
            self.out.push(seg.chunk(start, pos));
            if (start as u64) < seg.log.dropped_to.load(Ordering::Acquire) {
                self.cold
                    .push((Arc::clone(&seg.log), start as u64, pos as u64));
            }
        }
        ended
    }

    /// Where to start scanning `seg` for `self.want`, and the offset of the batch
    /// there: the sparse index's point when the batch there agrees with it, else the
    /// segment's first batch (whose offset the file name gives).
    fn anchor(&self, seg: &Segment, data: &[u8], first: u64) -> (usize, u64) {
        if self.want != first || self.want < seg.base_offset {
            // A later segment (or a gap a cut segment left before this one): read
            // from its start.
            return (0, seg.base_offset);
        }
        let rel = (self.want - seg.base_offset).min(u64::from(u32::MAX)) as u32;
        let pos = seg.index.position_for_offset(rel) as usize;
        match header_at(seg, data, pos) {
            Ok(h) if pos > 0 && h.base_offset >= seg.base_offset && h.base_offset <= self.want => {
                (pos, h.base_offset)
            }
            _ => (0, seg.base_offset),
        }
    }

    /// A corruption error that also names the first offset it hides.
    fn at_offset(&self, e: StorageError) -> StorageError {
        match e {
            StorageError::Corrupt {
                path,
                file_position,
                detail,
            } => StorageError::Corrupt {
                path,
                file_position,
                detail: format!(
                    "{detail} (offset {} onwards cannot be read here)",
                    self.want
                ),
            },
            other => other,
        }
    }
}

fn header_at(seg: &Segment, data: &[u8], pos: usize) -> Result<BatchHeader, StorageError> {
    let h =
        sealed::read_stored_header(&data[pos..]).map_err(|e| corrupt(seg, pos, e.to_string()))?;
    if h.total_bytes() > data.len() - pos {
        return Err(corrupt(
            seg,
            pos,
            "batch runs past the end of the segment".into(),
        ));
    }
    Ok(h)
}

fn corrupt(seg: &Segment, pos: usize, detail: String) -> StorageError {
    StorageError::Corrupt {
        path: seg.log.path.clone(),
        file_position: pos as u64,
        detail,
    }
}

/// Logs a damaged batch met by a read, at most once per [`CORRUPT_LOG_EVERY`] across
/// the process, with how many reads met damage since the last line: readers retry a
/// damaged offset (long polls, each priority answer's lane heads), and one bad batch
/// must not flood the log.
fn log_corrupt(e: &StorageError) {
    static THROTTLE: LogThrottle = LogThrottle::new();
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let now_ms = START.get_or_init(Instant::now).elapsed().as_millis() as u64;
    if let Some(since) = THROTTLE.due(now_ms, CORRUPT_LOG_EVERY.as_millis() as u64) {
        tracing::error!(error = %e, reads_since_last_line = since, "corrupt batch in log; not served");
    }
}

/// How often a read that meets damage is logged at most ([`log_corrupt`]).
const CORRUPT_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// At most one line per period: [`LogThrottle::due`] says whether this event gets one,
/// and how many events went unlogged before it.
pub(super) struct LogThrottle {
    /// When the last line was written, in ms + 1 (0: never).
    last: AtomicU64,
    /// Events since that line.
    since: AtomicU64,
}

impl LogThrottle {
    pub(super) const fn new() -> Self {
        LogThrottle {
            last: AtomicU64::new(0),
            since: AtomicU64::new(0),
        }
    }

    /// `Some(events unlogged since the last line)` when an event at `now_ms` is to be
    /// logged (the first ever is), `None` within `every_ms` of the last line.
    pub(super) fn due(&self, now_ms: u64, every_ms: u64) -> Option<u64> {
        let since = self.since.fetch_add(1, Ordering::Relaxed);
        let now = now_ms + 1;
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= every_ms;
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.since.store(0, Ordering::Relaxed);
            return Some(since);
        }
        None
    }
}

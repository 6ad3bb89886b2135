//! The page-cache window of one log (`LogConfig::page_cache_window_bytes`): appended
//! bytes more than the window behind the newest are written back and dropped from the
//! page cache and from the log's maps, at most [`JOB_STEPS`] steps per job, on a
//! storage worker.
//!
//! Why: every byte a buffered write appends lands in a new page-cache page, and the
//! kernel keeps those pages for as long as memory lasts. Where new memory is dear —
//! on the benchmark VM, which hands free memory back to its host, a page never used
//! before costs about 30 µs to take back, so fresh page cache comes at ~130 MB/s while
//! the disk takes 1.9–2.5 GB/s with `O_DIRECT` — a log that lets go of pages it has
//! written back gives the kernel pages to reuse at once for the next appends: a C loop
//! writing 2 GiB with a 256 MiB window ran at 1.5 GB/s against 0.16 GB/s without
//! (BENCHMARKS.md, "Session 17"). It also bounds the page cache a busy log holds.
//!
//! Readers lose nothing: the data is on disk before its pages go (the write-back and
//! its wait use a descriptor of their own, so a write-back error is still reported to
//! the log's next flush, which fails the log), and a reader behind
//! the window faults them back in from the file (slower, as in any broker whose
//! consumers fall out of the cache). Pages a reader mapped are unmapped from the log's
//! map first (`MADV_DONTNEED`, harmless on a shared file mapping: the next access
//! reads the same bytes back), since the kernel does not drop mapped pages.

use std::collections::VecDeque;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use super::segment::MappedLog;
use super::workers::{self, Task};

/// Most steps one drop job writes back and drops: a job holds a thread of the storage
/// workers' pool (shared with flushes and segment preparation) while it waits.
const JOB_STEPS: u64 = 4;

/// Pages are dropped in whole pages, from page-aligned positions: the system's page
/// size (4 KiB on x86-64).
fn page() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: a plain query without arguments.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if n > 0 {
            n as u64
        } else {
            4096
        }
    })
}

/// Bytes of one log's files still in the page cache as far as the log knows: spans of
/// its segments, oldest first, the last one the active segment's.
pub(super) struct CacheWindow {
    /// Bytes to keep cached behind the newest appended byte; 0 = off.
    window: u64,
    /// How far past the window the cached bytes grow before a drop starts.
    step: u64,
    spans: VecDeque<Span>,
    cached: u64,
    /// The running drop (at most one at a time).
    job: Option<Task<()>>,
    /// Bytes dropped so far, by this window and by readers' second drops.
    dropped: Arc<AtomicU64>,
}

/// Held weakly: a segment retention deletes is let go at once (its map unmapped once
/// no reader holds it), not kept alive until the window reaches it.
struct Span {
    log: Weak<MappedLog>,
    from: u64,
    to: u64,
}

impl CacheWindow {
    pub(super) fn new(window: u64, dropped: Arc<AtomicU64>) -> CacheWindow {
        CacheWindow {
            window,
            step: (window / 8).clamp(page(), 16 * 1024 * 1024),
            spans: VecDeque::new(),
            cached: 0,
            job: None,
            dropped,
        }
    }

    /// Notes that `log`'s file holds appended bytes up to `pos` (the active segment;
    /// a new `log` means the previous one closed) and starts a drop once more than the
    /// window and a step are cached and no drop is running.
    pub(super) fn written(&mut self, log: &Arc<MappedLog>, pos: u64) {
        self.note(log, pos);
        self.drop_excess();
    }

    /// Notes that `log`'s file holds appended bytes up to `pos`, without starting a
    /// drop: for a segment about to close in the middle of an append, so its tail
    /// counts too.
    pub(super) fn note(&mut self, log: &Arc<MappedLog>, pos: u64) {
        if self.window == 0 {
            return;
        }
        match self.spans.back_mut() {
            // (The weak reference keeps the allocation, so its address is not reused.)
            Some(last) if std::ptr::eq(last.log.as_ptr(), Arc::as_ptr(log)) => {
                // Appended bytes only grow; never below what was taken already.
                let to = pos.max(last.to);
                self.cached += to - last.to;
                last.to = to;
            }
            _ if pos == 0 => {}
            _ => {
                self.spans.push_back(Span {
                    log: Arc::downgrade(log),
                    from: 0,
                    to: pos,
                });
                self.cached += pos;
            }
        }
    }

    /// Starts a drop of what is cached beyond the window, once that is more than a
    /// step and no drop is running.
    fn drop_excess(&mut self) {
        if self.cached < self.window.saturating_add(self.step)
            || self.job.as_mut().is_some_and(|j| !j.is_finished())
        {
            return;
        }
        let excess = (self.cached - self.window).min(self.step * JOB_STEPS);
        let ranges = self.take_oldest(excess);
        if !ranges.is_empty() {
            let dropped = Arc::clone(&self.dropped);
            self.job = Some(workers::run(move || {
                for (log, from, to) in ranges {
                    if drop_range(&log, from, to) {
                        log.dropped_to.fetch_max(to, Ordering::Release);
                        dropped.fetch_add(to - from, Ordering::Relaxed);
                    }
                }
            }));
        }
    }

    /// Takes up to `bytes` of the oldest cached spans off the window: whole closed
    /// spans, and from a span still growing only whole pages below its end.
    fn take_oldest(&mut self, mut bytes: u64) -> Vec<(Arc<MappedLog>, u64, u64)> {
        let mut out = Vec::new();
        let page = page();
        while bytes > 0 {
            let growing = self.spans.len() == 1;
            let Some(span) = self.spans.front_mut() else {
                break;
            };
            let log = span.log.upgrade();
            if !growing && (span.from >= span.to || log.is_none()) {
                // Used up, or deleted: nothing of it is left to drop.
                self.cached -= span.to - span.from;
                self.spans.pop_front();
                continue;
            }
            let Some(log) = log else {
                break; // the active segment's file went with its log
            };
            let mut end = span.from + bytes.min(span.to - span.from);
            if growing || end < span.to {
                end = end / page * page;
            }
            if end <= span.from {
                break;
            }
            out.push((log, span.from, end));
            let n = end - span.from;
            bytes = bytes.saturating_sub(n);
            self.cached -= n;
            span.from = end;
            if span.from == span.to && !growing {
                self.spans.pop_front();
            }
        }
        out
    }

    /// Bytes the window counts as cached (for tests).
    #[cfg(test)]
    pub(super) fn cached(&self) -> u64 {
        self.cached
    }
}

/// Ranges of dropped bytes that readers faulted back in, newest last: all but the
/// newest `keep` bytes of them are dropped again, so a reader catching up from far
/// behind the window recycles the pages it reads instead of taking new memory for
/// every one (the newest are left for the answers still being sent from them).
///
/// It holds its segments weakly: a segment retention deletes is let go at once.
pub(super) struct ColdReads {
    keep: u64,
    ranges: VecDeque<(Weak<MappedLog>, u64, u64)>,
    bytes: u64,
    /// Taken off `ranges`, waiting for the running job to end.
    due: Vec<(Weak<MappedLog>, u64, u64)>,
    job: Option<Task<()>>,
    /// How far ahead of the newest cold read the file was asked to be read in
    /// (`POSIX_FADV_WILLNEED`), so that the next read finds it cached instead of
    /// faulting it in from the disk 128 KiB at a time.
    ahead: Option<(Weak<MappedLog>, u64)>,
    ahead_job: Option<Task<()>>,
    dropped: Arc<AtomicU64>,
}

/// How far ahead of a cold read its file is read in.
const READ_AHEAD_BYTES: u64 = 8 * 1024 * 1024;

/// Most separate ranges waiting for the running drop job: readers jumping between
/// segments while one drop waits on the disk could otherwise grow the list without
/// bound.
const DUE_MAX: usize = 256;

impl ColdReads {
    pub(super) fn new(window: u64, dropped: Arc<AtomicU64>) -> ColdReads {
        ColdReads {
            keep: (window / 4).clamp(2 * page(), 32 * 1024 * 1024),
            ranges: VecDeque::new(),
            bytes: 0,
            due: Vec::new(),
            job: None,
            ahead: None,
            ahead_job: None,
            dropped,
        }
    }

    /// Notes that a reader read `[from, to)` of `log` (at least partly below its
    /// `dropped_to`), and drops what is due once no drop is running.
    pub(super) fn read(&mut self, log: &Arc<MappedLog>, from: u64, to: u64) {
        let to = to.min(log.dropped_to.load(Ordering::Acquire));
        let from = from / page() * page();
        if to <= from {
            return;
        }
        match self.ranges.back_mut() {
            // A reader going forward through one segment: one range, not one per read
            // (each range dropped costs an open and a few syscalls).
            Some((l, f, t))
                if std::ptr::eq(l.as_ptr(), Arc::as_ptr(log)) && from <= *t && to >= *f =>
            {
                let (nf, nt) = ((*f).min(from), (*t).max(to));
                self.bytes += (nt - nf) - (*t - *f);
                (*f, *t) = (nf, nt);
            }
            _ => {
                self.ranges.push_back((Arc::downgrade(log), from, to));
                self.bytes += to - from;
            }
        }
        // The oldest bytes beyond `keep` are due, in whole pages.
        let page = page();
        while self.bytes > self.keep {
            let Some((l, f, t)) = self.ranges.front_mut() else {
                break;
            };
            let n = (self.bytes - self.keep).min(*t - *f);
            let end = if *f + n == *t {
                *t
            } else {
                (*f + n) / page * page
            };
            if end <= *f {
                break;
            }
            let taken = (l.clone(), *f, end);
            *f = end;
            if *f >= *t {
                self.ranges.pop_front();
            }
            self.bytes -= taken.2 - taken.1;
            self.push_due(taken.0, taken.1, taken.2);
        }
        self.drop_due();
        self.read_ahead(log, to);
    }

    /// Adds `[from, to)` of `log` to the ranges due: onto the newest one when it ends
    /// where this begins (a reader going forward makes one range however long the
    /// running drop takes), else as a range of its own while fewer than [`DUE_MAX`]
    /// wait. Beyond that the range is let go: its pages stay cached until the kernel
    /// reclaims them, which costs memory, never data.
    fn push_due(&mut self, log: Weak<MappedLog>, from: u64, to: u64) {
        if let Some((l, _, t)) = self.due.last_mut() {
            if Weak::ptr_eq(l, &log) && *t == from {
                *t = to;
                return;
            }
        }
        if self.due.len() < DUE_MAX {
            self.due.push((log, from, to));
        }
    }

    /// Asks for the dropped bytes after `to` to be read in, on a storage worker (the
    /// kernel allocates their pages before it returns), once the last such request is
    /// less than half its length ahead.
    fn read_ahead(&mut self, log: &Arc<MappedLog>, to: u64) {
        let end = log.dropped_to.load(Ordering::Acquire);
        let from = match &self.ahead {
            Some((l, ahead)) if std::ptr::eq(l.as_ptr(), Arc::as_ptr(log)) && *ahead > to => {
                if *ahead - to > READ_AHEAD_BYTES / 2 {
                    return;
                }
                *ahead
            }
            _ => to,
        };
        let until = (to + READ_AHEAD_BYTES).min(end);
        if until <= from || self.ahead_job.as_mut().is_some_and(|j| !j.is_finished()) {
            return;
        }
        self.ahead = Some((Arc::downgrade(log), until));
        let log = Arc::clone(log);
        self.ahead_job = Some(workers::run(move || {
            // SAFETY: a plain syscall on a descriptor the `MappedLog` owns.
            unsafe {
                libc::posix_fadvise(
                    log.file.as_raw_fd(),
                    from as libc::off_t,
                    (until - from) as libc::off_t,
                    libc::POSIX_FADV_WILLNEED,
                );
            }
        }));
    }

    /// Starts dropping the ranges due, unless there are none or a drop is running.
    fn drop_due(&mut self) {
        if self.due.is_empty() || self.job.as_mut().is_some_and(|j| !j.is_finished()) {
            return;
        }
        let due = std::mem::take(&mut self.due);
        let dropped = Arc::clone(&self.dropped);
        self.job = Some(workers::run(move || {
            for (log, from, to) in due {
                // A segment deleted meanwhile needs no dropping.
                let Some(log) = log.upgrade() else { continue };
                if drop_range(&log, from, to) {
                    dropped.fetch_add(to - from, Ordering::Relaxed);
                }
            }
        }));
    }
}

/// Writes `[from, to)` of `log`'s file back, unmaps it from the log's map and drops it
/// from the page cache. Every step is a hint: a failure leaves the pages cached.
/// Returns whether the write-back succeeded (the pages could be dropped).
///
/// The write-back and its wait go through a descriptor of their own, opened by path
/// (and checked to be the same file): waiting on write-back consumes a write-back
/// error for the descriptor waited on, and the log's own descriptor must keep it for
/// the flush that follows, which then fails the log instead of acknowledging data the
/// disk never took.
fn drop_range(log: &MappedLog, from: u64, to: u64) -> bool {
    let Ok(own) = std::fs::File::open(&log.path) else {
        return false; // deleted or renamed meanwhile
    };
    match (own.metadata(), log.file.metadata()) {
        (Ok(a), Ok(b)) if a.dev() == b.dev() && a.ino() == b.ino() => {}
        _ => return false, // the path names another file now (compaction)
    }
    // The write-back is started in bounded calls too (what a burst let go by is all
    // dirty here), then waited for once.
    super::segment::in_page_calls(from, to, |a, b| {
        super::segment::start_write_back(&own, a, b).is_ok()
    });
    if let Err(e) = super::segment::write_back(&own, from, to, true) {
        tracing::warn!(
            path = %log.path.display(),
            error = %e,
            "page-cache window: write-back failed; the pages stay cached"
        );
        return false;
    }
    // In calls of a bounded size, so the drop never holds a core for long.
    super::segment::in_page_calls(from, to, |a, b| {
        unmap_and_drop(log, &own, a, b);
        true
    });
    true
}

/// Unmaps `[from, to)` from `log`'s map and drops it from the page cache (`own` is a
/// descriptor of the same file). `from` is page-aligned.
fn unmap_and_drop(log: &MappedLog, own: &std::fs::File, from: u64, to: u64) {
    // SAFETY: plain syscalls on a descriptor we own. `madvise` is given a page-aligned
    // range inside the log's map (`from` is page-aligned, `to` at most the segment's
    // written length, within the map), which the caller's `Arc` keeps alive.
    // `MADV_DONTNEED` on a shared file mapping only removes this process's page-table
    // entries: a reader's next access faults the same file bytes back in (they are
    // below the published length, never written again, and written back above), so no
    // reader can observe a change through a slice it holds.
    unsafe {
        let map_len = log.map.len() as u64;
        if from < map_len {
            let ptr = log.map.as_ptr().add(from as usize) as *mut libc::c_void;
            let n = (to.min(map_len) - from) as usize;
            if libc::madvise(ptr, n, libc::MADV_DONTNEED) != 0 {
                tracing::debug!(error = %std::io::Error::last_os_error(), "page-cache window: unmap failed");
            }
        }
        libc::posix_fadvise(
            own.as_raw_fd(),
            from as libc::off_t,
            (to - from) as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        );
    }
}

#[cfg(test)]
impl CacheWindow {
    /// Drops everything due (appends may have come while a drop ran) and waits.
    pub(super) fn settle(&mut self) {
        loop {
            if let Some(job) = self.job.take() {
                job.join("page-cache drop").unwrap();
            }
            self.drop_excess();
            if self.job.is_none() {
                return;
            }
        }
    }
}

#[cfg(test)]
impl ColdReads {
    /// The log and position up to which the last read-ahead asked.
    pub(super) fn ahead(&self) -> Option<(Arc<MappedLog>, u64)> {
        self.ahead
            .as_ref()
            .and_then(|(l, to)| Some((l.upgrade()?, *to)))
    }

    /// Drops everything due and waits for it.
    pub(super) fn settle(&mut self) {
        loop {
            if let Some(job) = self.job.take() {
                job.join("page-cache drop").unwrap();
            }
            if let Some(job) = self.ahead_job.take() {
                job.join("read-ahead").unwrap();
            }
            if self.due.is_empty() {
                return;
            }
            self.drop_due();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{CacheWindow, ColdReads, MappedLog};

    fn mapped(dir: &std::path::Path, name: &str, len: u64) -> Arc<MappedLog> {
        let path = dir.join(name);
        std::fs::write(&path, vec![7u8; len as usize]).unwrap();
        Arc::new(MappedLog::read_only(path).unwrap())
    }

    fn ranges(v: &[(Arc<MappedLog>, u64, u64)]) -> Vec<(String, u64, u64)> {
        v.iter()
            .map(|(l, f, t)| (l.path.file_name().unwrap().to_string_lossy().into(), *f, *t))
            .collect()
    }

    /// The oldest bytes go first: a closed segment's span whole (its unaligned end
    /// too), the growing one only in whole pages below its end, and never past it.
    #[test]
    fn the_oldest_spans_go_first_and_the_growing_one_in_whole_pages() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            mapped(dir.path(), "a", 65536),
            mapped(dir.path(), "b", 65536),
        );
        // A window too large to start drops by itself.
        let mut w = CacheWindow::new(u64::MAX / 4, Default::default());
        w.written(&a, 10_000);
        w.written(&a, 30_001);
        assert_eq!(w.cached(), 30_001);
        assert_eq!(ranges(&w.take_oldest(13_000)), [("a".into(), 0, 12_288)]);
        assert_eq!(w.cached(), 30_001 - 12_288);
        // `a` closes at 30,001; `b` grows.
        w.written(&b, 9_000);
        assert_eq!(w.cached(), 30_001 - 12_288 + 9_000);
        assert_eq!(
            ranges(&w.take_oldest(30_001 - 12_288 + 5_000)),
            [("a".into(), 12_288, 30_001), ("b".into(), 0, 4_096)]
        );
        // Less than a page of the growing span is left above the window: nothing.
        assert!(w.take_oldest(4_000).is_empty());
        assert_eq!(w.cached(), 9_000 - 4_096);
        // A lower position never takes back what was counted.
        w.written(&b, 6_000);
        assert_eq!(w.cached(), 9_000 - 4_096);
    }

    /// A segment that closes in the middle of an append has its tail noted before the
    /// next segment's first bytes, so all of it is dropped in turn; an empty segment
    /// (replaced at the roll) leaves no span that could hold the others up.
    #[test]
    fn a_segment_closing_mid_append_is_counted_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let a = mapped(dir.path(), "a", 65536);
        let e = mapped(dir.path(), "e", 4096);
        let b = mapped(dir.path(), "b", 65536);
        let mut w = CacheWindow::new(u64::MAX / 4, Default::default());
        w.written(&a, 10_000);
        w.note(&a, 50_000); // the roll
        w.note(&e, 0); // an empty segment replaced at the roll
        w.written(&b, 8_192);
        assert_eq!(w.cached(), 58_192);
        assert_eq!(
            ranges(&w.take_oldest(58_192)),
            [("a".into(), 0, 50_000), ("b".into(), 0, 8_192)]
        );
    }

    /// A reader going forward makes one range, and only its bytes beyond `keep` (the
    /// oldest, in whole pages) fall due; a read elsewhere starts another range.
    #[test]
    fn cold_reads_going_forward_make_one_range_and_keep_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let a = mapped(dir.path(), "a", 1 << 20);
        let b = mapped(dir.path(), "b", 1 << 20);
        for l in [&a, &b] {
            l.dropped_to
                .store(1 << 20, std::sync::atomic::Ordering::Release);
        }
        // keep = window / 4 = 64 KiB.
        let mut c = ColdReads::new(256 * 1024, Default::default());
        // Hold a running job so what falls due stays in `due` to be looked at.
        let (held, release) = crate::storage::workers::Task::held();
        c.job = Some(held);
        for i in 0..40u64 {
            c.read(&a, i * 3_000, (i + 1) * 3_000);
        }
        assert_eq!(c.ranges.len(), 1);
        let due: Vec<(u64, u64)> = c.due.iter().map(|(_, f, t)| (*f, *t)).collect();
        // While the job runs, everything due joins one range: no gap, no growth.
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].0, 0);
        let kept_from = due.last().unwrap().1;
        assert_eq!(kept_from % 4096, 0);
        assert_eq!(c.ranges[0].1, kept_from);
        assert_eq!(c.ranges[0].2, 120_000);
        assert!(120_000 - kept_from <= 64 * 1024 + 4096 && 120_000 - kept_from > 60 * 1024);
        c.read(&b, 0, 3_000);
        assert_eq!(c.ranges.len(), 2);
        release.send(Ok(())).unwrap();
    }

    /// Ranges that cannot join wait as ranges of their own, at most `DUE_MAX` of them
    /// while a drop runs; more are let go.
    #[test]
    fn ranges_waiting_for_a_running_drop_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let a = mapped(dir.path(), "a", 4 << 20);
        a.dropped_to
            .store(4 << 20, std::sync::atomic::Ordering::Release);
        // keep = 2 pages, the least: nearly every read falls due at once.
        let mut c = ColdReads::new(0, Default::default());
        let (held, release) = crate::storage::workers::Task::held();
        c.job = Some(held);
        // One page read, one skipped, going backwards: no range joins another.
        let read = |c: &mut ColdReads, i: u64| c.read(&a, 2 * i * 4096, (2 * i + 1) * 4096);
        for i in (200..500u64).rev().take(100) {
            read(&mut c, i);
        }
        assert!(c.due.len() >= 90, "separate ranges: {}", c.due.len());
        for i in (0..400u64).rev() {
            read(&mut c, i);
        }
        assert_eq!(c.due.len(), super::DUE_MAX, "capped, not grown");
        release.send(Ok(())).unwrap();
    }

    /// Off at 0: nothing is tracked.
    #[test]
    fn a_window_of_zero_tracks_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = mapped(dir.path(), "a", 65536);
        let mut w = CacheWindow::new(0, Default::default());
        w.written(&a, 65536);
        assert_eq!(w.cached(), 0);
        assert!(w.job.is_none());
    }
}

//! One segment: a `<base>.log` file of concatenated batches, memory-mapped, plus its
//! two index files.
//!
//! A segment is either *active* (the single writer appends batches to its preallocated
//! file with `pwritev`) or *closed* (trimmed to its real length). Both are mapped
//! read-only and shared; readers share segments through `Arc<Segment>` and only ever
//! look at bytes below the segment's published length `len`, which the writer stores
//! with `Release` after the write returned (the map and the writes share one page
//! cache, so the bytes are visible through the map from then on).
//!
//! Why not write through the map: a store into a never-touched page of a mapped file
//! faults, and the kernel zero-fills the new page-cache page before the copy lands on
//! it (for preallocated or sparse blocks alike; populating the map in advance only
//! moves that zeroing to another thread). perf showed that zeroing at about 31 % of
//! all CPU time when producing 1 KiB records. `pwritev` copies straight into fresh
//! page-cache pages without zeroing whole pages first, takes one syscall per append
//! (a request's batches) instead of a fault per page, and turns a full disk into an error value
//! instead of a `SIGBUS`.
//!
//! The next segment's files are created and `fallocate`d (real blocks, not a sparse
//! `set_len`, so a full disk shows up before a write, not in the middle of one) by
//! [`spawn_prepare`] on a storage worker while the current one fills; rolling then
//! only trims, remaps and renames. The `.log` gets its blocks in steps
//! (`LogConfig::preallocate_bytes`, [`allocate`]) as the writer needs them, and is
//! mapped over its whole capacity once.

use std::fs::{File, OpenOptions};
use std::io::IoSlice;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use memmap2::{MmapOptions, MmapRaw};

use super::error::{io_err, StorageError};
use super::index::{IndexFile, SegmentIndex, OFFSET_ENTRY_BYTES, TIME_ENTRY_BYTES};
use super::workers::{self, Task};

/// File-name extension of a segment's batches.
pub(crate) const LOG_EXT: &str = "log";
/// File-name extension of the sparse offset index.
pub(crate) const INDEX_EXT: &str = "index";
/// File-name extension of the time index.
pub(crate) const TIME_INDEX_EXT: &str = "timeindex";
/// Prefix of files being prepared for a future segment; deleted on open.
pub(crate) const PREPARE_PREFIX: &str = ".prepare-";

/// `<dir>/<base as 20 digits>.<ext>`.
pub(crate) fn segment_path(dir: &Path, base_offset: u64, ext: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{ext}"))
}

/// A mapped `.log` file.
pub(crate) struct MappedLog {
    pub path: PathBuf,
    pub file: File,
    pub map: MmapRaw,
    /// Bytes below this were dropped from the page cache once
    /// (`page_cache_window_bytes`): a reader that reads them again faults them back in,
    /// and hands them back to be dropped again (`cache_window::ColdReads`).
    pub dropped_to: AtomicU64,
}

impl MappedLog {
    pub(crate) fn new(path: PathBuf, file: File, map: MmapRaw) -> MappedLog {
        MappedLog {
            path,
            file,
            map,
            dropped_to: AtomicU64::new(0),
        }
    }

    /// Maps a closed segment read-only.
    pub(crate) fn read_only(path: PathBuf) -> Result<Self, StorageError> {
        let file = File::open(&path).map_err(io_err(&path))?;
        let map = MmapOptions::new()
            .map_raw_read_only(&file)
            .map_err(io_err(&path))?;
        Ok(MappedLog::new(path, file, map))
    }
}

/// A range of a mapped log, owned so `Bytes` can point into the map without copying.
struct MapChunk {
    log: Arc<MappedLog>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for MapChunk {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: chunks are only made (in `Segment::chunk`) for ranges below the
        // segment's published length, which the writer never writes again and never
        // truncates (closing trims the file to exactly that length; retention unlinks
        // the file, on its own thread, which leaves the mapping intact while this Arc
        // keeps it alive). The directory is flocked so no other Weir process writes
        // these files.
        unsafe { std::slice::from_raw_parts(self.log.map.as_ptr().add(self.start), self.len) }
    }
}

/// A segment as readers and the writer share it.
pub(crate) struct Segment {
    pub base_offset: u64,
    pub log: Arc<MappedLog>,
    pub index: SegmentIndex,
    /// Bytes of whole batches published to readers.
    pub len: AtomicU64,
    /// Offset after the last published batch.
    pub next_offset: AtomicU64,
    /// Largest `max_timestamp_ms` of the published batches (`i64::MIN` when empty).
    pub max_timestamp_ms: AtomicI64,
    pub closed: bool,
}

impl Segment {
    /// Published bytes, `[0, len)`.
    pub(crate) fn committed(&self) -> &[u8] {
        let len = self.len.load(Ordering::Acquire) as usize;
        if len == 0 {
            return &[];
        }
        // SAFETY: bytes below `len` were written into the file's page cache by a
        // `pwritev` that returned before `len` was stored with Release (loaded with
        // Acquire above), so this shared map of the same file shows them; they are never
        // written again by the single writer, and the file is never truncated below `len`
        // while mapped (see `MapChunk`). `len` never exceeds the map's length (the writer
        // checks capacity before writing), nor the file's (the map may reach past the
        // end of a file still growing in steps, where a read would fault; the writer
        // allocates blocks before it writes, so the file always covers `len`).
        unsafe { std::slice::from_raw_parts(self.log.map.as_ptr(), len) }
    }

    /// A zero-copy `Bytes` over `[start, end)`, which must lie in `committed()`.
    pub(crate) fn chunk(&self, start: usize, end: usize) -> Bytes {
        debug_assert!(end <= self.len.load(Ordering::Acquire) as usize && start <= end);
        Bytes::from_owner(MapChunk {
            log: Arc::clone(&self.log),
            start,
            len: end - start,
        })
    }

    /// Bytes on disk for size-based retention: the published log length.
    pub(crate) fn size_bytes(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// Unlinks the three files. Mappings stay valid for whoever still holds them.
    pub(crate) fn delete_files(&self) -> Result<(), StorageError> {
        for p in [
            self.log.path.as_path(),
            self.index.offsets.path(),
            self.index.times.path(),
        ] {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(p)(e)),
            }
        }
        Ok(())
    }

    /// Makes every byte of the three files durable (used for closed segments).
    pub(crate) fn sync_all_files(&self) -> Result<(), StorageError> {
        self.log.file.sync_data().map_err(io_err(&self.log.path))?;
        for f in [&self.index.offsets, &self.index.times] {
            f.file().sync_data().map_err(io_err(f.path()))?;
        }
        Ok(())
    }
}

/// Makes the directory's entries (files created, renamed or unlinked) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Most bytes one page-cache call of a background job (a write-back start, a drop's
/// `madvise` and `posix_fadvise`) covers; the job offers its core to waiting threads
/// between calls. The kernel spends about a microsecond per page in such a call, and
/// on a small machine the thread making it holds a core the writer, connections and
/// fetches are waiting for: one 16 MiB drop held it for 2-5 ms (BENCHMARKS.md,
/// "Session 19"). Smaller in tests, so that their jobs take several calls (a multiple
/// of the 4 KiB page, as `madvise` needs).
pub(crate) const PAGE_CALL_BYTES: u64 = if cfg!(test) { 16 * 1024 } else { 1024 * 1024 };

/// Calls `each` on `[from, to)` in consecutive pieces that end on multiples of
/// [`PAGE_CALL_BYTES`] (so each is at most that long, and page-aligned when `from`
/// is), yielding the thread's core between them. Stops early when `each` says false.
pub(crate) fn in_page_calls(from: u64, to: u64, mut each: impl FnMut(u64, u64) -> bool) {
    let mut at = from;
    while at < to {
        if at > from {
            std::thread::yield_now();
        }
        let end = to.min((at / PAGE_CALL_BYTES + 1) * PAGE_CALL_BYTES);
        if !each(at, end) {
            return;
        }
        at = end;
    }
}

/// Asks the kernel to start writing back `[from, to)` of `file` without waiting for
/// it (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): a hint that makes no data durable
/// (no metadata, no device cache flush), so only a later flush's `fdatasync` counts.
pub(crate) fn start_write_back(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    write_back(file, from, to, false)
}

/// Writes `[from, to)` of `file` back and, with `wait`, waits until it is (so its
/// pages are clean). Not a durability point either. Waiting consumes a write-back
/// error for the descriptor waited on: never wait on a descriptor a flush relies on.
pub(crate) fn write_back(file: &File, from: u64, to: u64, wait: bool) -> std::io::Result<()> {
    if to <= from {
        return Ok(());
    }
    let flags = if wait {
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER
    } else {
        libc::SYNC_FILE_RANGE_WRITE
    };
    // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
    let rc = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            (to - from) as libc::off64_t,
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Allocates real blocks for `[0, len)` of `file` (falls back to `set_len` where the
/// file system has no `fallocate`).
pub(crate) fn preallocate(file: &File, path: &Path, len: u64) -> Result<(), StorageError> {
    allocate(file, path, 0, len)
}

/// Allocates real blocks for `[from, to)` of `file`, extending it to `to` bytes if it
/// is shorter (falls back to `set_len` where the file system has no `fallocate`).
pub(crate) fn allocate(file: &File, path: &Path, from: u64, to: u64) -> Result<(), StorageError> {
    if to <= from {
        return Ok(());
    }
    let len = to;
    // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            0,
            from as libc::off_t,
            (to - from) as libc::off_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => file.set_len(len).map_err(io_err(path)),
        _ => Err(io_err(path)(err)),
    }
}

/// Writes all of `slices`, in order, at `offset` of `file`: `pwritev`, repeated after
/// a short write or an interrupt, with at most `IOV_MAX` slices and, unless
/// `call_bytes_max` is 0, at most that many bytes per call (see
/// [`LogConfig::write_call_bytes`](super::LogConfig::write_call_bytes): the kernel
/// sizes the page-cache folios of a buffered write by the call's length).
pub(crate) fn write_all_at(
    file: &File,
    path: &Path,
    mut slices: &mut [IoSlice<'_>],
    mut offset: u64,
    call_bytes_max: usize,
) -> Result<(), StorageError> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let rc = write_call(file, slices, offset, call_bytes_max);
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io_err(path)(err));
        }
        if rc == 0 {
            return Err(io_err(path)(std::io::ErrorKind::WriteZero.into()));
        }
        offset += rc as u64;
        IoSlice::advance_slices(&mut slices, rc as usize);
    }
    Ok(())
}

/// One `pwritev` of the first of `slices` (not empty), as many as fit in
/// `call_bytes_max` (0: no bound) and `IOV_MAX`; when the first alone is larger than
/// the bound, its first `call_bytes_max` bytes. Returns what `pwritev` returned.
fn write_call(file: &File, slices: &[IoSlice<'_>], offset: u64, call_bytes_max: usize) -> isize {
    const IOV_MAX: usize = 1024;
    let bound = if call_bytes_max == 0 {
        usize::MAX
    } else {
        call_bytes_max
    };
    let mut n = 0;
    let mut bytes = 0usize;
    while n < slices.len().min(IOV_MAX) && bytes + slices[n].len() <= bound {
        bytes += slices[n].len();
        n += 1;
    }
    let head;
    let iov: &[IoSlice<'_>] = if n == 0 {
        head = [IoSlice::new(&slices[0][..bound])];
        &head
    } else {
        &slices[..n]
    };
    // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix (std guarantees it);
    // the slices are live borrows for the duration of the call and the kernel only
    // reads them.
    unsafe {
        libc::pwritev(
            file.as_raw_fd(),
            iov.as_ptr().cast::<libc::iovec>(),
            iov.len() as libc::c_int,
            offset as libc::off_t,
        )
    }
}

/// Files made ready for a segment whose base offset is not known yet.
pub(crate) struct Prepared {
    /// Bytes the segment may grow to (its map's length).
    pub capacity: u64,
    /// Bytes of the `.log` file with real blocks (its length).
    pub allocated: u64,
    log_path: PathBuf,
    log_file: File,
    map: MmapRaw,
    index_entries: usize,
    index_path: PathBuf,
    index_file: File,
    time_path: PathBuf,
    time_file: File,
}

fn create_sized(path: &Path, len: u64) -> Result<File, StorageError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(path))?;
    preallocate(&f, path, len)?;
    Ok(f)
}

/// Creates, preallocates and maps the files of a future segment under temporary names:
/// `allocated` bytes of the `.log` get real blocks now (the writer grows it later),
/// while its map covers all of `capacity`, so it never needs remapping; readers only
/// look below the published length, which never passes the allocated end. The map is
/// read-only and not populated: populating would zero-fill every page (the cost
/// `pwritev` avoids), and readers only touch pages the writer has filled.
pub(crate) fn prepare(
    dir: &Path,
    id: u64,
    capacity: u64,
    allocated: u64,
    index_entries: usize,
) -> Result<Prepared, StorageError> {
    let name = |ext: &str| dir.join(format!("{PREPARE_PREFIX}{id}.{ext}"));
    let log_path = name(LOG_EXT);
    let index_path = name(INDEX_EXT);
    let time_path = name(TIME_INDEX_EXT);
    let allocated = allocated.min(capacity);
    let made = (|| {
        let log_file = create_sized(&log_path, allocated)?;
        let map = map_log(&log_file, &log_path, capacity)?;
        let index_file = create_sized(&index_path, (index_entries * OFFSET_ENTRY_BYTES) as u64)?;
        let time_file = create_sized(&time_path, (index_entries * TIME_ENTRY_BYTES) as u64)?;
        Ok::<_, StorageError>((log_file, map, index_file, time_file))
    })();
    let (log_file, map, index_file, time_file) = match made {
        Ok(m) => m,
        Err(e) => {
            // A failure (a full disk, typically) must not leave what it did make:
            // retried every second while a shard waits for space, the leftovers would
            // eat the space it waits for.
            for p in [&log_path, &index_path, &time_path] {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
    };
    Ok(Prepared {
        capacity,
        allocated,
        log_path,
        log_file,
        map,
        index_entries,
        index_path,
        index_file,
        time_path,
        time_file,
    })
}

/// Maps `capacity` bytes of a `.log` file read-only, however long the file is now.
pub(crate) fn map_log(file: &File, path: &Path, capacity: u64) -> Result<MmapRaw, StorageError> {
    MmapOptions::new()
        .len(capacity as usize)
        .map_raw_read_only(file)
        .map_err(io_err(path))
}

/// Runs [`prepare`] on the storage workers (`workers.rs`).
pub(crate) fn spawn_prepare(
    dir: PathBuf,
    id: u64,
    capacity: u64,
    allocated: u64,
    index_entries: usize,
) -> Task<Result<Prepared, StorageError>> {
    workers::run(move || prepare(&dir, id, capacity, allocated, index_entries))
}

impl Prepared {
    /// Gives the `.log` file real blocks up to `allocated` bytes (nothing is in it yet,
    /// so a failure changes nothing that matters).
    pub(crate) fn grow_to(&mut self, allocated: u64) -> Result<(), StorageError> {
        let to = allocated.min(self.capacity);
        allocate(&self.log_file, &self.log_path, self.allocated, to)?;
        self.allocated = self.allocated.max(to);
        Ok(())
    }

    /// Renames the files to their segment names and returns the empty active segment.
    pub(crate) fn install(self, dir: &Path, base_offset: u64) -> Result<Segment, StorageError> {
        let log_path = segment_path(dir, base_offset, LOG_EXT);
        let index_path = segment_path(dir, base_offset, INDEX_EXT);
        let time_path = segment_path(dir, base_offset, TIME_INDEX_EXT);
        // Index files first: a `.log` without indexes is fine on recovery, the reverse
        // is an orphan that `open` deletes.
        std::fs::rename(&self.index_path, &index_path).map_err(io_err(&index_path))?;
        std::fs::rename(&self.time_path, &time_path).map_err(io_err(&time_path))?;
        std::fs::rename(&self.log_path, &log_path).map_err(io_err(&log_path))?;
        debug_assert!(self.index_entries > 0);
        Ok(Segment {
            base_offset,
            log: Arc::new(MappedLog::new(log_path, self.log_file, self.map)),
            index: SegmentIndex {
                offsets: IndexFile::writable(index_path, self.index_file, OFFSET_ENTRY_BYTES, 0)?,
                times: IndexFile::writable(time_path, self.time_file, TIME_ENTRY_BYTES, 0)?,
            },
            len: AtomicU64::new(0),
            next_offset: AtomicU64::new(base_offset),
            max_timestamp_ms: AtomicI64::new(i64::MIN),
            closed: false,
        })
    }

    /// Deletes the prepared files (when the log shuts down before using them).
    pub(crate) fn discard(self) {
        for p in [&self.log_path, &self.index_path, &self.time_path] {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;

    use proptest::prelude::*;

    use super::{write_all_at, write_call};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Bounded or not, the file ends up holding the slices in order at the offset,
        /// and no single call carries more than the bound (nor nothing).
        #[test]
        fn bounded_writes_store_every_slice_in_order(
            lens in proptest::collection::vec(0usize..20_000, 1..12),
            bound in prop_oneof![Just(0usize), 1usize..5_000, Just(32 * 1024)],
            offset in 0u64..10_000,
        ) {
            let bufs: Vec<Vec<u8>> = lens
                .iter()
                .enumerate()
                .map(|(i, &n)| (0..n).map(|j| (i * 31 + j * 7) as u8).collect())
                .collect();
            let expected: Vec<u8> = bufs.concat();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("w.log");
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap();

            let mut slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
            let mut rest = &mut slices[..];
            IoSlice::advance_slices(&mut rest, 0);
            let mut at = offset;
            while !rest.is_empty() {
                let rc = write_call(&file, rest, at, bound);
                prop_assert!(rc > 0, "a call wrote {rc}");
                if bound != 0 {
                    prop_assert!(rc as usize <= bound, "{rc} bytes in one call, bound {bound}");
                }
                at += rc as u64;
                IoSlice::advance_slices(&mut rest, rc as usize);
            }
            let got = std::fs::read(&path).unwrap();
            prop_assert_eq!(got.get(offset as usize..).unwrap_or(&[]), &expected[..]);

            // The looping writer stores the same bytes.
            let file2_path = dir.path().join("w2.log");
            let file2 = std::fs::File::create(&file2_path).unwrap();
            let mut slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
            write_all_at(&file2, &file2_path, &mut slices, offset, bound).unwrap();
            let got = std::fs::read(&file2_path).unwrap();
            prop_assert_eq!(got.get(offset as usize..).unwrap_or(&[]), &expected[..]);
        }
    }
}

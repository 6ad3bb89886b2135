//! [`LogConfig`]: the tunables of one log, shared by the writer, recovery and
//! retention (so none of them imports another for it).

use super::at_rest::AtRest;
use super::error::StorageError;
use super::index::{index_capacity, OFFSET_ENTRY_BYTES, TIME_ENTRY_BYTES};

/// Tunables of one log. Sizes are upper bounds, not targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Largest size of a segment; it rolls when the next batch would not fit. At most
    /// `u32::MAX` (positions in the index are 32-bit).
    pub segment_bytes: u64,
    /// The active segment's file is given real blocks in steps of this many bytes
    /// (never beyond `segment_bytes`), a step ahead of the writer, instead of all of
    /// `segment_bytes` up front: an idle shard holds one step, not a whole segment.
    pub preallocate_bytes: u64,
    /// Bytes of batches between two sparse index points; bounds how far a read or
    /// recovery scans from an index point.
    pub index_interval_bytes: u32,
    /// Closed segments whose newest record is older than this are deleted; 0 = keep.
    pub retention_ms: u64,
    /// Oldest closed segments are deleted while the log is larger than this; 0 = no limit.
    pub retention_bytes: u64,
    /// Encryption at rest: new batches are sealed with its write key, sealed batches
    /// are opened for readers. `None` = no keys (sealed data cannot be opened).
    pub at_rest: Option<AtRest>,
    /// Write-behind: once this many bytes were appended since the last kick, a
    /// storage worker asks the kernel to start writing them back (`sync_file_range`,
    /// without waiting), so the next flush finds little dirty data. 0 = off (the
    /// kernel's own write-back and the flushes decide). Off in `LogConfig::default()`
    /// (internal logs); a broker's topic logs take `flush_write_behind_bytes`.
    pub write_behind_bytes: u64,
    /// Write-behind lets the bytes go by while the process appends faster than this
    /// (all its logs together, internal ones included), whether in a burst or
    /// steadily: that write-back is left to the flush and the page-cache window.
    /// 0 = no limit.
    pub write_behind_max_bytes_per_sec: u64,
    /// Most bytes one `pwritev` of appended batches carries; a larger append is
    /// written in several calls. 0 = one call per run of batches. The kernel gives a
    /// buffered write page-cache folios sized by the call's length, and on a VM whose
    /// guest hands free memory back to its host (virtio-balloon free page reporting)
    /// the large, high-order folios of a long call are far slower to allocate: on the
    /// benchmark machine 64 KiB calls wrote fresh pages at 0.8–1.4 GB/s and 32 KiB
    /// calls at 2.5 GB/s, but 128 KiB to 4 MiB calls at 100–140 MB/s
    /// ([`DEFAULT_WRITE_CALL_BYTES`], BENCHMARKS.md).
    pub write_call_bytes: usize,
    /// Appended bytes more than this far behind the newest are written back and
    /// dropped from the page cache (and the log's maps) in steps, on a storage worker;
    /// 0 = off (the kernel keeps them while memory lasts). Readers behind the window
    /// read from the file. See `cache_window.rs` for why.
    pub page_cache_window_bytes: u64,
}

/// Default [`LogConfig::preallocate_bytes`]: 16 MiB. Appends grow the file once per
/// step (one `fallocate`), rare enough not to show in append throughput (BENCHMARKS.md),
/// and a fresh shard holds 16 MiB instead of its whole 256 MiB segment.
pub const DEFAULT_PREALLOCATE_BYTES: u64 = 16 * 1024 * 1024;

/// Default [`LogConfig::write_call_bytes`]: 32 KiB, the fastest bound measured for
/// writing fresh page-cache pages on the benchmark VM; a 1 MiB append then takes 32
/// calls, a few tens of microseconds of syscall cost where one call would spend
/// milliseconds allocating large folios.
pub const DEFAULT_WRITE_CALL_BYTES: usize = 32 * 1024;

/// Default [`LogConfig::page_cache_window_bytes`]: 256 MiB per log, a second or more of
/// a fast producer's data for consumers reading close behind, and at most that much page
/// cache held per busy shard.
pub const DEFAULT_PAGE_CACHE_WINDOW_BYTES: u64 = 256 * 1024 * 1024;

impl Default for LogConfig {
    /// 256 MiB segments: large enough that rolling (trim, remap, rename) is rare and the
    /// per-segment file count stays small, small enough that preallocating and
    /// populating the next one in the background costs little memory on a small box,
    /// and that retention frees space in reasonable steps. 4 KiB index interval (one
    /// page scanned at most per lookup), 7-day retention, no size limit.
    fn default() -> Self {
        LogConfig {
            segment_bytes: 256 * 1024 * 1024,
            preallocate_bytes: DEFAULT_PREALLOCATE_BYTES,
            index_interval_bytes: 4096,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: 0,
            at_rest: None,
            write_behind_bytes: 0,
            write_behind_max_bytes_per_sec: 0,
            write_call_bytes: DEFAULT_WRITE_CALL_BYTES,
            page_cache_window_bytes: DEFAULT_PAGE_CACHE_WINDOW_BYTES,
        }
    }
}

impl LogConfig {
    /// Largest `segment_bytes` a log opens with: index entries hold 32-bit positions.
    /// Topic settings and the broker config are checked against it up front
    /// (`topics.rs`, `config.rs`), so a value a log would refuse is refused by name.
    pub const SEGMENT_BYTES_MAX: u64 = u32::MAX as u64;
    /// Smallest `index_interval_bytes` the broker accepts for topic logs: the index
    /// files are preallocated at 24 bytes per interval of the segment, so below this
    /// they would outgrow 2 % of it (and a smaller interval than one batch indexes
    /// every batch anyway).
    pub const INDEX_INTERVAL_BYTES_MIN: u32 = 1024;

    /// Disk bytes a new, empty log takes when it opens: its first segment's `.log`
    /// file and both index files are preallocated with real blocks. For checking free
    /// space before creating logs.
    pub fn reserved_bytes(&self) -> u64 {
        let entries = index_capacity(self.segment_bytes, self.index_interval_bytes) as u64;
        self.first_allocation(self.segment_bytes)
            + entries * (OFFSET_ENTRY_BYTES + TIME_ENTRY_BYTES) as u64
    }

    /// Bytes of real blocks a new segment that may grow to `capacity` starts with.
    pub(crate) fn first_allocation(&self, capacity: u64) -> u64 {
        capacity.min(self.preallocate_bytes.max(4096))
    }

    /// The allocation that covers `end` bytes of a segment that may grow to `capacity`:
    /// whole steps, at most `capacity`, at least `end`.
    pub(crate) fn allocation_for(&self, end: u64, capacity: u64) -> u64 {
        let step = self.preallocate_bytes.max(4096);
        end.div_ceil(step)
            .saturating_mul(step)
            .min(capacity)
            .max(end)
    }

    pub(crate) fn check(&self) -> Result<(), StorageError> {
        if self.segment_bytes < 4096 || self.segment_bytes > Self::SEGMENT_BYTES_MAX {
            return Err(StorageError::InvalidConfig(
                "segment_bytes must be in 4096..=4294967295",
            ));
        }
        if self.index_interval_bytes == 0 {
            return Err(StorageError::InvalidConfig(
                "index_interval_bytes must be > 0",
            ));
        }
        Ok(())
    }
}

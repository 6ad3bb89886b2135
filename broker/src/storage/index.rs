//! Sparse offset and time indexes of one segment, each a memory-mapped file of
//! fixed-size little-endian entries.
//!
//! One index point is written for the first batch that starts at least
//! `index_interval_bytes` after the previous point (never at position 0, which is
//! implicit). The same point goes into both files:
//!
//! ```text
//! .index      8 B per entry: u32 relative_offset, u32 position
//! .timeindex 16 B per entry: i64 max_timestamp_so_far_ms, u32 relative_offset, u32 position
//! ```
//!
//! Positions strictly increase, so a preallocated (zero-filled) tail ends the list. The
//! time index stores the running maximum of batch `max_timestamp_ms` up to and
//! including the indexed batch, which makes it monotonic and binary-searchable even
//! though producers' timestamps are not.
//!
//! The writer appends an entry through the map, then publishes the new count with
//! `Release`; readers load the count with `Acquire` and only look below it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use super::error::{io_err, StorageError};

/// Bytes of one `.index` entry.
pub(crate) const OFFSET_ENTRY_BYTES: usize = 8;
/// Bytes of one `.timeindex` entry.
pub(crate) const TIME_ENTRY_BYTES: usize = 16;

/// One index point, as held in both files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub relative_offset: u32,
    pub position: u32,
    pub max_timestamp_ms: i64,
}

/// Entries needed for a segment of `segment_bytes` indexed every `interval` bytes.
pub(crate) fn index_capacity(segment_bytes: u64, interval: u32) -> usize {
    (segment_bytes / u64::from(interval.max(1))) as usize + 2
}

/// Decodes the valid prefix of both index files' bytes: entries stop at the shorter
/// file, at the first entry whose position or offset does not strictly increase, and
/// at the first entry whose two halves disagree.
pub(crate) fn decode_entries(offsets: &[u8], times: &[u8]) -> Vec<IndexEntry> {
    let n = (offsets.len() / OFFSET_ENTRY_BYTES).min(times.len() / TIME_ENTRY_BYTES);
    let mut out: Vec<IndexEntry> = Vec::with_capacity(n);
    for i in 0..n {
        let o = &offsets[i * OFFSET_ENTRY_BYTES..(i + 1) * OFFSET_ENTRY_BYTES];
        let t = &times[i * TIME_ENTRY_BYTES..(i + 1) * TIME_ENTRY_BYTES];
        let e = IndexEntry {
            relative_offset: u32_at(o, 0),
            position: u32_at(o, 4),
            max_timestamp_ms: i64_at(t, 0),
        };
        let consistent = u32_at(t, 8) == e.relative_offset && u32_at(t, 12) == e.position;
        let increasing = match out.last() {
            Some(p) => {
                e.position > p.position
                    && e.relative_offset > p.relative_offset
                    && e.max_timestamp_ms >= p.max_timestamp_ms
            }
            None => e.position > 0,
        };
        if !consistent || !increasing {
            break;
        }
        out.push(e);
    }
    out
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// One mapped index file.
pub(crate) struct IndexFile {
    path: PathBuf,
    file: File,
    map: Option<MmapRaw>,
    entry_bytes: usize,
    capacity: usize,
    len: AtomicUsize,
}

impl IndexFile {
    /// Maps `file` (already sized) for writing, with `len` valid entries already in it.
    pub(crate) fn writable(
        path: PathBuf,
        file: File,
        entry_bytes: usize,
        len: usize,
    ) -> Result<Self, StorageError> {
        let file_len = file.metadata().map_err(io_err(&path))?.len() as usize;
        let map = if file_len == 0 {
            None
        } else {
            Some(MmapOptions::new().map_raw(&file).map_err(io_err(&path))?)
        };
        Ok(IndexFile {
            path,
            file,
            map,
            entry_bytes,
            capacity: file_len / entry_bytes,
            len: AtomicUsize::new(len.min(file_len / entry_bytes)),
        })
    }

    /// Maps a closed index read-only; every entry in the file is valid.
    pub(crate) fn read_only(path: PathBuf, entry_bytes: usize) -> Result<Self, StorageError> {
        let file = File::open(&path).map_err(io_err(&path))?;
        let file_len = file.metadata().map_err(io_err(&path))?.len() as usize;
        let map = if file_len == 0 {
            None
        } else {
            Some(
                MmapOptions::new()
                    .map_raw_read_only(&file)
                    .map_err(io_err(&path))?,
            )
        };
        let n = file_len / entry_bytes;
        Ok(IndexFile {
            path,
            file,
            map,
            entry_bytes,
            capacity: n,
            len: AtomicUsize::new(n),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Published entries.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// The published entries' bytes.
    fn bytes(&self) -> &[u8] {
        let n = self.len() * self.entry_bytes;
        match &self.map {
            // SAFETY: the first `len` entries were written before `len` was published
            // with Release (loaded above with Acquire) and the single writer never writes
            // below `len` again. The file is not truncated below `len` entries while this
            // map exists: the writer only trims a closed index to exactly `len` entries,
            // and the directory is locked against other writers (flock in `Log::open`).
            Some(m) if n > 0 => unsafe { std::slice::from_raw_parts(m.as_ptr(), n) },
            _ => &[],
        }
    }

    /// Appends one entry's bytes and publishes it. Returns false when full.
    ///
    /// Only the log's single writer (through `&mut Log`) calls this.
    pub(crate) fn push(&self, entry: &[u8]) -> bool {
        debug_assert_eq!(entry.len(), self.entry_bytes);
        let n = self.len.load(Ordering::Relaxed);
        let Some(map) = &self.map else { return false };
        if n >= self.capacity {
            return false;
        }
        // SAFETY: entry `n` lies inside the map (n < capacity = map bytes / entry_bytes)
        // and above the published count, so no reader looks at it until the Release
        // store below; only the single writer calls `push`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                entry.as_ptr(),
                map.as_mut_ptr().add(n * self.entry_bytes),
                self.entry_bytes,
            );
        }
        self.len.store(n + 1, Ordering::Release);
        true
    }
}

/// The pair of index files of one segment.
pub(crate) struct SegmentIndex {
    pub offsets: IndexFile,
    pub times: IndexFile,
}

impl SegmentIndex {
    /// Appends one index point to both files (false when full).
    pub(crate) fn push(&self, e: IndexEntry) -> bool {
        let mut o = [0u8; OFFSET_ENTRY_BYTES];
        o[..4].copy_from_slice(&e.relative_offset.to_le_bytes());
        o[4..].copy_from_slice(&e.position.to_le_bytes());
        let mut t = [0u8; TIME_ENTRY_BYTES];
        t[..8].copy_from_slice(&e.max_timestamp_ms.to_le_bytes());
        t[8..12].copy_from_slice(&e.relative_offset.to_le_bytes());
        t[12..].copy_from_slice(&e.position.to_le_bytes());
        // The time index is pushed first so that a reader that sees an offset entry
        // never finds the two counts differing the other way round.
        self.times.push(&t) && self.offsets.push(&o)
    }

    /// Published entry count (the smaller of the two files').
    pub(crate) fn len(&self) -> usize {
        self.offsets.len().min(self.times.len())
    }

    /// The last published index point.
    pub(crate) fn last(&self) -> Option<IndexEntry> {
        let n = self.len();
        if n == 0 {
            return None;
        }
        let o = &self.offsets.bytes()[(n - 1) * OFFSET_ENTRY_BYTES..];
        let t = &self.times.bytes()[(n - 1) * TIME_ENTRY_BYTES..];
        Some(IndexEntry {
            relative_offset: u32_at(o, 0),
            position: u32_at(o, 4),
            max_timestamp_ms: i64_at(t, 0),
        })
    }

    /// The number of index points at or before `relative_offset`: the index of the
    /// first one after it.
    fn points_up_to(&self, relative_offset: u32) -> usize {
        let b = self.offsets.bytes();
        let rel = |i: usize| u32_at(b, i * OFFSET_ENTRY_BYTES);
        let (mut lo, mut hi) = (0usize, b.len() / OFFSET_ENTRY_BYTES);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if rel(mid) <= relative_offset {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Position of the last index point at or before `relative_offset` (0 if none).
    pub(crate) fn position_for_offset(&self, relative_offset: u32) -> u32 {
        match self.points_up_to(relative_offset) {
            0 => 0,
            n => u32_at(self.offsets.bytes(), (n - 1) * OFFSET_ENTRY_BYTES + 4),
        }
    }

    /// The relative offset of the first index point after `relative_offset`, if any.
    pub(crate) fn offset_after(&self, relative_offset: u32) -> Option<u32> {
        let b = self.offsets.bytes();
        let i = self.points_up_to(relative_offset);
        (i < b.len() / OFFSET_ENTRY_BYTES).then(|| u32_at(b, i * OFFSET_ENTRY_BYTES))
    }

    /// Position of the last index point whose running max timestamp is below `ts_ms`:
    /// every batch before it (and it) is older than `ts_ms`, so a scan may start there.
    pub(crate) fn position_for_timestamp(&self, ts_ms: i64) -> u32 {
        let b = self.times.bytes();
        let n = b.len() / TIME_ENTRY_BYTES;
        let ts = |i: usize| i64_at(b, i * TIME_ENTRY_BYTES);
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if ts(mid) < ts_ms {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == 0 {
            0
        } else {
            u32_at(b, (lo - 1) * TIME_ENTRY_BYTES + 12)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(entries: &[(u32, u32, i64)]) -> (Vec<u8>, Vec<u8>) {
        let mut o = Vec::new();
        let mut t = Vec::new();
        for &(r, p, ts) in entries {
            o.extend_from_slice(&r.to_le_bytes());
            o.extend_from_slice(&p.to_le_bytes());
            t.extend_from_slice(&ts.to_le_bytes());
            t.extend_from_slice(&r.to_le_bytes());
            t.extend_from_slice(&p.to_le_bytes());
        }
        (o, t)
    }

    #[test]
    fn decode_stops_at_zero_fill_and_disagreement() {
        let (mut o, mut t) = enc(&[(3, 100, 5), (9, 300, 7), (12, 500, 7)]);
        o.extend_from_slice(&[0; 16]);
        t.extend_from_slice(&[0; 32]);
        assert_eq!(decode_entries(&o, &t).len(), 3);
        // Corrupt the second entry's time half: decoding keeps only the first.
        t[TIME_ENTRY_BYTES + 12] ^= 1;
        assert_eq!(decode_entries(&o, &t).len(), 1);
        assert_eq!(decode_entries(&[], &[]).len(), 0);
    }
}

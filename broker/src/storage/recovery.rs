//! Opening a log directory: lock it, find the segments, check them, and cut a torn tail.
//!
//! * Closed segments (all but the last) are trusted up to their last index point (whose
//!   batch header must name the offset the index says), and the batches after it are
//!   walked by header to the end of the file. If the walk stops early on zero bytes, the
//!   segment was never trimmed (a crash while rolling): it is cut there. If it stops on
//!   anything else, that is corruption inside a closed segment: it is logged and kept,
//!   and reads of it fail with `Corrupt` rather than serve it.
//! * The last segment is scanned with full CRC checks from the last index point whose
//!   batch verifies, and cut at the first short, zero-filled, corrupt or out-of-sequence
//!   batch. The cut region is released and preallocated again (so no stale batch can
//!   reappear behind a shorter new one), the indexes are rewritten, and it becomes the
//!   active segment.
//! * Segments must continue each other's offsets. A gap after a cut segment means the
//!   later segments hold data that was never flushed (flush syncs segments in order);
//!   they are deleted. A gap anywhere else refuses to open.

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Arc;

use memmap2::MmapOptions;
use weir_protocol::sealed;

use super::active::Active;
use super::config::LogConfig;
use super::error::{io_err, StorageError};
use super::index::{decode_entries, index_capacity, IndexEntry, IndexFile, SegmentIndex};
use super::index::{OFFSET_ENTRY_BYTES, TIME_ENTRY_BYTES};
use super::segment::{
    map_log, preallocate, prepare, segment_path, sync_dir, MappedLog, Segment, INDEX_EXT, LOG_EXT,
    PREPARE_PREFIX, TIME_INDEX_EXT,
};

/// The result of walking batches from some position.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Position after the last good batch.
    pub end: usize,
    pub next_offset: u64,
    pub max_timestamp_ms: i64,
    /// Index points for batches after the start.
    pub entries: Vec<IndexEntry>,
    pub bytes_since_index: u64,
    /// Why the walk stopped before the end of `data`.
    pub stop: Option<String>,
}

/// Walks the batches of `data` from `start` (which holds the batch with base offset
/// `offset`), checking header, bounds, offset continuity and, if `verify_crc`, CRC.
pub(crate) fn scan(
    data: &[u8],
    base_offset: u64,
    start: usize,
    offset: u64,
    max_timestamp_ms: i64,
    interval: u32,
    verify_crc: bool,
) -> Scan {
    let mut s = Scan {
        end: start,
        next_offset: offset,
        max_timestamp_ms,
        entries: Vec::new(),
        bytes_since_index: 0,
        stop: None,
    };
    // Bounded: each step advances by at least a batch header.
    while s.end < data.len() {
        let rest = &data[s.end..];
        let h = if verify_crc {
            sealed::verify_stored(rest)
        } else {
            sealed::read_stored_header(rest).and_then(|h| {
                if h.total_bytes() > rest.len() {
                    Err(weir_protocol::error::DecodeError::Truncated {
                        needed: h.total_bytes(),
                        remaining: rest.len(),
                    })
                } else {
                    Ok(h)
                }
            })
        };
        let h = match h {
            Ok(h) => h,
            Err(e) => {
                s.stop = Some(e.to_string());
                break;
            }
        };
        if h.base_offset != s.next_offset {
            s.stop = Some(format!(
                "base offset {} where {} was expected",
                h.base_offset, s.next_offset
            ));
            break;
        }
        if h.last_offset() - base_offset > u64::from(u32::MAX) {
            s.stop = Some("offset beyond the segment's 32-bit range".into());
            break;
        }
        s.max_timestamp_ms = s.max_timestamp_ms.max(h.max_timestamp_ms);
        if s.bytes_since_index >= u64::from(interval) && s.end > 0 {
            s.entries.push(IndexEntry {
                relative_offset: (h.base_offset - base_offset) as u32,
                position: s.end as u32,
                max_timestamp_ms: s.max_timestamp_ms,
            });
            s.bytes_since_index = 0;
        }
        s.bytes_since_index += h.total_bytes() as u64;
        s.end += h.total_bytes();
        s.next_offset = h.last_offset() + 1;
    }
    s
}

/// Where a scan resumes: the last trusted index entry's position, offset and running
/// max timestamp, or the segment's start when there is none.
fn resume_point(entries: &[IndexEntry], base: u64) -> (usize, u64, i64) {
    match entries.last() {
        Some(e) => (
            e.position as usize,
            base + u64::from(e.relative_offset),
            e.max_timestamp_ms,
        ),
        None => (0, base, i64::MIN),
    }
}

fn read_or_empty(path: &Path) -> Result<Vec<u8>, StorageError> {
    match std::fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn load_entries(dir: &Path, base: u64, file_len: usize) -> Result<Vec<IndexEntry>, StorageError> {
    let o = read_or_empty(&segment_path(dir, base, INDEX_EXT))?;
    let t = read_or_empty(&segment_path(dir, base, TIME_INDEX_EXT))?;
    let mut e = decode_entries(&o, &t);
    e.retain(|x| (x.position as usize) < file_len);
    Ok(e)
}

fn encode(entries: &[IndexEntry]) -> (Vec<u8>, Vec<u8>) {
    let mut o = Vec::with_capacity(entries.len() * OFFSET_ENTRY_BYTES);
    let mut t = Vec::with_capacity(entries.len() * TIME_ENTRY_BYTES);
    for e in entries {
        o.extend_from_slice(&e.relative_offset.to_le_bytes());
        o.extend_from_slice(&e.position.to_le_bytes());
        t.extend_from_slice(&e.max_timestamp_ms.to_le_bytes());
        t.extend_from_slice(&e.relative_offset.to_le_bytes());
        t.extend_from_slice(&e.position.to_le_bytes());
    }
    (o, t)
}

/// Rewrites a closed segment's index files with exactly `entries`, durably.
fn write_closed_index(dir: &Path, base: u64, entries: &[IndexEntry]) -> Result<(), StorageError> {
    let (o, t) = encode(entries);
    for (ext, bytes) in [(INDEX_EXT, o), (TIME_INDEX_EXT, t)] {
        let p = segment_path(dir, base, ext);
        let mut f = File::create(&p).map_err(io_err(&p))?;
        std::io::Write::write_all(&mut f, &bytes).map_err(io_err(&p))?;
        f.sync_data().map_err(io_err(&p))?;
    }
    Ok(())
}

enum ClosedOutcome {
    /// Whole and consistent (possibly after cutting an untrimmed zero tail).
    Ok { next_offset: u64, cut: bool },
    /// Corrupt inside; kept, served up to the damage.
    Corrupt,
}

/// Checks a closed segment's tail and makes its index files match; see module docs.
fn check_closed(dir: &Path, base: u64, cfg: &LogConfig) -> Result<ClosedOutcome, StorageError> {
    let path = segment_path(dir, base, LOG_EXT);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    let len = file.metadata().map_err(io_err(&path))?.len() as usize;
    if len == 0 {
        write_closed_index(dir, base, &[])?;
        return Ok(ClosedOutcome::Ok {
            next_offset: base,
            cut: false,
        });
    }
    let map = MmapOptions::new()
        .map_raw_read_only(&file)
        .map_err(io_err(&path))?;
    // SAFETY: the map covers the whole file, which nobody else changes: the directory
    // is flocked by this opening log and no writer exists yet.
    let data = unsafe { std::slice::from_raw_parts(map.as_ptr(), len) };
    let on_disk = load_entries(dir, base, len)?;
    let mut entries = on_disk.clone();
    let trusted = entries.last().is_some_and(|e| {
        sealed::read_stored_header(&data[e.position as usize..])
            .is_ok_and(|h| h.base_offset == base + u64::from(e.relative_offset))
    });
    if !trusted {
        entries.clear();
    }
    let (start, offset, max_ts) = resume_point(&entries, base);
    let s = scan(
        data,
        base,
        start,
        offset,
        max_ts,
        cfg.index_interval_bytes,
        false,
    );
    entries.extend_from_slice(&s.entries);
    let outcome = match &s.stop {
        None => ClosedOutcome::Ok {
            next_offset: s.next_offset,
            cut: false,
        },
        Some(_) if data[s.end..].iter().all(|&b| b == 0) => {
            tracing::warn!(path = %path.display(), at = s.end, "closed segment was not trimmed; cutting its zero tail");
            drop(map);
            file.set_len(s.end as u64).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
            write_closed_index(dir, base, &entries)?;
            return Ok(ClosedOutcome::Ok {
                next_offset: s.next_offset,
                cut: true,
            });
        }
        Some(why) => {
            tracing::error!(path = %path.display(), at = s.end, reason = %why, "corruption inside a closed segment; it will not be served past this point");
            ClosedOutcome::Corrupt
        }
    };
    if entries != on_disk {
        write_closed_index(dir, base, &entries)?;
    }
    Ok(outcome)
}

/// Replaces closed segment `base` (offsets `base..next_offset`) with `data`, durably
/// and crash-safely: `data` goes to a `.prepare-` file (deleted on open if a crash
/// leaves it) and is fsynced, the old index files are removed, the file is renamed
/// over `<base>.log` and the directory fsynced, then the index files are rebuilt from
/// `data`. A crash leaves the old or the new `.log` (an index without its points is
/// rebuilt by the next open). Returns the new segment, mapped read-only.
pub(crate) fn replace_closed(
    dir: &Path,
    base: u64,
    next_offset: u64,
    data: &[u8],
    interval: u32,
) -> Result<Segment, StorageError> {
    let scan = scan(data, base, 0, base, i64::MIN, interval, true);
    if scan.end != data.len() || scan.next_offset != next_offset {
        return Err(StorageError::Corrupt {
            path: segment_path(dir, base, LOG_EXT),
            file_position: scan.end as u64,
            detail: format!(
                "rewritten segment does not check: {}",
                scan.stop.unwrap_or_else(|| "offsets do not match".into())
            ),
        });
    }
    let tmp = dir.join(format!("{PREPARE_PREFIX}rewrite-{base:020}.{LOG_EXT}"));
    {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        std::io::Write::write_all(&mut f, data).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    for ext in [INDEX_EXT, TIME_INDEX_EXT] {
        let p = segment_path(dir, base, ext);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&p)(e)),
        }
    }
    let path = segment_path(dir, base, LOG_EXT);
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir)?;
    write_closed_index(dir, base, &scan.entries)?;
    sync_dir(dir)?;
    open_closed(dir, base, next_offset)
}

/// Opens a closed segment's files read-only.
fn open_closed(dir: &Path, base: u64, next_offset: u64) -> Result<Segment, StorageError> {
    let log = MappedLog::read_only(segment_path(dir, base, LOG_EXT))?;
    let len = log.map.len() as u64;
    let index = SegmentIndex {
        offsets: IndexFile::read_only(segment_path(dir, base, INDEX_EXT), OFFSET_ENTRY_BYTES)?,
        times: IndexFile::read_only(segment_path(dir, base, TIME_INDEX_EXT), TIME_ENTRY_BYTES)?,
    };
    // The newest timestamp: the last index point's running max (which covers every
    // batch up to it), then the batches after it (header walk; damage ends the walk).
    let last = index.last();
    let mut max_ts = last.map_or(i64::MIN, |e| e.max_timestamp_ms);
    let mut pos = last.map_or(0, |e| e.position as usize);
    let seg = Segment {
        base_offset: base,
        log: Arc::new(log),
        index,
        len: AtomicU64::new(len),
        next_offset: AtomicU64::new(next_offset),
        max_timestamp_ms: AtomicI64::new(i64::MIN),
        closed: true,
    };
    let data = seg.committed();
    while pos < data.len() {
        match sealed::read_stored_header(&data[pos..]) {
            Ok(h) if h.total_bytes() <= data.len() - pos => {
                max_ts = max_ts.max(h.max_timestamp_ms);
                pos += h.total_bytes();
            }
            _ => break,
        }
    }
    seg.max_timestamp_ms
        .store(max_ts, std::sync::atomic::Ordering::Release);
    Ok(seg)
}

fn release_and_preallocate(
    file: &File,
    path: &Path,
    keep: u64,
    capacity: u64,
) -> Result<(), StorageError> {
    file.set_len(keep).map_err(io_err(path))?;
    preallocate(file, path, capacity)?;
    file.sync_all().map_err(io_err(path))
}

/// Recovers the last segment and returns it as the writer's active segment.
fn recover_active(dir: &Path, base: u64, cfg: &LogConfig) -> Result<Active, StorageError> {
    let path = segment_path(dir, base, LOG_EXT);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    let len = file.metadata().map_err(io_err(&path))?.len() as usize;
    let (mut entries, s) = if len == 0 {
        (
            Vec::new(),
            scan(&[], base, 0, base, i64::MIN, cfg.index_interval_bytes, true),
        )
    } else {
        let map = MmapOptions::new()
            .map_raw_read_only(&file)
            .map_err(io_err(&path))?;
        // SAFETY: the map covers the whole file; the directory is flocked by this
        // opening log and the map is dropped before the file is resized below.
        let data = unsafe { std::slice::from_raw_parts(map.as_ptr(), len) };
        let mut entries = load_entries(dir, base, len)?;
        // The last index point whose batch verifies and names the expected offset.
        let keep = entries
            .iter()
            .rposition(|e| {
                sealed::verify_stored(&data[e.position as usize..])
                    .is_ok_and(|h| h.base_offset == base + u64::from(e.relative_offset))
            })
            .map_or(0, |i| i + 1);
        entries.truncate(keep);
        let (start, offset, max_ts) = resume_point(&entries, base);
        let s = scan(
            data,
            base,
            start,
            offset,
            max_ts,
            cfg.index_interval_bytes,
            true,
        );
        if let Some(why) = &s.stop {
            let zero = data[s.end..].iter().take(4096).all(|&b| b == 0);
            if !zero {
                tracing::warn!(path = %path.display(), at = s.end, reason = %why, "truncating torn tail of the log");
            }
        }
        drop(map);
        (entries, s)
    };
    entries.extend_from_slice(&s.entries);
    let end = s.end as u64;
    let capacity = cfg.segment_bytes.max(end);
    // Blocks for the data and the rest of its step (at least one step): the writer
    // grows the file from there.
    let allocated = cfg
        .allocation_for(end, capacity)
        .max(cfg.first_allocation(capacity));
    release_and_preallocate(&file, &path, end, allocated)?;
    let n_entries = index_capacity(capacity, cfg.index_interval_bytes).max(entries.len());
    let mut idx = Vec::new();
    for (ext, eb) in [
        (INDEX_EXT, OFFSET_ENTRY_BYTES),
        (TIME_INDEX_EXT, TIME_ENTRY_BYTES),
    ] {
        let p = segment_path(dir, base, ext);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .map_err(io_err(&p))?;
        release_and_preallocate(&f, &p, 0, (n_entries * eb) as u64)?;
        idx.push((p, f, eb));
    }
    let (tp, tf, teb) = idx.pop().expect("two index files");
    let (op, of, oeb) = idx.pop().expect("two index files");
    let index = SegmentIndex {
        offsets: IndexFile::writable(op, of, oeb, 0)?,
        times: IndexFile::writable(tp, tf, teb, 0)?,
    };
    for e in &entries {
        index.push(*e);
    }
    let map = map_log(&file, &path, capacity)?;
    let max_ts = s.max_timestamp_ms;
    let seg = Segment {
        base_offset: base,
        log: Arc::new(MappedLog::new(path, file, map)),
        index,
        len: AtomicU64::new(end),
        next_offset: AtomicU64::new(s.next_offset),
        max_timestamp_ms: AtomicI64::new(max_ts),
        closed: false,
    };
    Ok(Active {
        seg: Arc::new(seg),
        pos: end,
        capacity,
        allocated,
        next_offset: s.next_offset,
        bytes_since_index: s.bytes_since_index,
        max_timestamp_ms: max_ts,
        flushed_pos: end,
    })
}

fn lock_dir(dir: &Path) -> Result<File, StorageError> {
    let p = dir.join(".lock");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p)
        .map_err(io_err(&p))?;
    // SAFETY: plain syscall on a descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(StorageError::Locked {
            path: dir.to_path_buf(),
        });
    }
    Ok(f)
}

/// Lists segment base offsets and deletes leftovers (prepared files, orphan indexes).
fn list_segments(dir: &Path) -> Result<Vec<u64>, StorageError> {
    let mut bases = Vec::new();
    let mut others: Vec<(u64, PathBuf)> = Vec::new();
    for ent in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let ent = ent.map_err(io_err(dir))?;
        let path = ent.path();
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(PREPARE_PREFIX) {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
            continue;
        }
        let Some((stem, ext)) = name.split_once('.') else {
            continue;
        };
        let Ok(base) = stem.parse::<u64>() else {
            continue;
        };
        if stem.len() != 20 {
            continue;
        }
        match ext {
            LOG_EXT => bases.push(base),
            INDEX_EXT | TIME_INDEX_EXT => others.push((base, path)),
            _ => {}
        }
    }
    bases.sort_unstable();
    for (base, path) in others {
        if bases.binary_search(&base).is_err() {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(bases)
}

/// What recovery hands the log: the directory lock, the closed segments in offset
/// order, and the active segment to append to.
pub(crate) struct Recovered {
    pub lock: File,
    pub closed: Vec<Arc<Segment>>,
    pub active: Active,
}

/// Locks `dir` (creating it if needed) and recovers the segments in it; see the module
/// docs.
pub(crate) fn recover(dir: &Path, config: &LogConfig) -> Result<Recovered, StorageError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let lock = lock_dir(dir)?;
    let mut bases = list_segments(dir)?;
    if bases.is_empty() {
        let p = prepare(
            dir,
            u64::from(std::process::id()) << 32,
            config.segment_bytes,
            config.first_allocation(config.segment_bytes),
            index_capacity(config.segment_bytes, config.index_interval_bytes),
        )?;
        drop(p.install(dir, 0)?);
        sync_dir(dir)?;
        bases.push(0);
    }
    let mut closed: Vec<Arc<Segment>> = Vec::new();
    let mut last = bases.len() - 1;
    let mut i = 0;
    while i < last {
        let base = bases[i];
        let next_base = bases[i + 1];
        let next_offset = match check_closed(dir, base, config)? {
            ClosedOutcome::Ok { next_offset, cut } => {
                if next_offset != next_base {
                    if !cut || next_offset > next_base {
                        return Err(StorageError::Corrupt {
                            path: segment_path(dir, next_base, LOG_EXT),
                            file_position: 0,
                            detail: format!(
                                "segment starts at offset {next_base} but the previous one ends at {next_offset}"
                            ),
                        });
                    }
                    tracing::warn!(
                        from = next_base,
                        "deleting segments after a cut segment: they were never flushed"
                    );
                    for &b in &bases[i + 1..] {
                        for ext in [LOG_EXT, INDEX_EXT, TIME_INDEX_EXT] {
                            let p = segment_path(dir, b, ext);
                            let _ = std::fs::remove_file(&p);
                        }
                    }
                    sync_dir(dir)?;
                    bases.truncate(i + 1);
                    last = i;
                    break;
                }
                next_offset
            }
            ClosedOutcome::Corrupt => next_base,
        };
        closed.push(Arc::new(open_closed(dir, base, next_offset)?));
        i += 1;
    }
    let active = recover_active(dir, bases[last], config)?;
    Ok(Recovered {
        lock,
        closed,
        active,
    })
}

//! Cutting a closed log back to an offset: how a mirror drops the suffix in which it
//! diverges from its primary (PROTOCOL.md §Cluster, MirrorFetch).
//!
//! It works on the files of a log that is not open (the shard is closed first and
//! opened again after), so no reader or writer can hold a map of what is cut. Segments
//! that start at or after the cut are deleted, newest first; the segment holding the
//! cut is shortened to the start of the batch at that offset and its index files are
//! deleted, so the next open rebuilds them and treats it as the active segment
//! (recovery preallocates it again). Everything is fsynced before it returns, so a
//! crash part way leaves a log that recovery opens at some offset between the cut and
//! the old end — never with a hole, since deletion goes newest first.

use std::fs::OpenOptions;
use std::path::Path;

use weir_protocol::batch::BATCH_HEADER_BYTES;
use weir_protocol::sealed;

use super::error::{io_err, StorageError};
use super::segment::{segment_path, sync_dir, INDEX_EXT, LOG_EXT, TIME_INDEX_EXT};

/// Cuts the log in `dir` back so that its next offset is at most `to` (at the start of
/// the batch holding `to` when `to` falls inside a batch). Returns the log's end after
/// the cut (its next offset), or `to` when the log ended there already. The log must
/// not be open.
pub fn truncate_closed_log(dir: &Path, to: u64) -> Result<u64, StorageError> {
    let mut bases = list_bases(dir)?;
    bases.sort_unstable();
    // Newest first: a crash leaves a prefix of the segments, never a gap.
    while let Some(&base) = bases.last() {
        if base < to || bases.len() == 1 {
            break;
        }
        for ext in [INDEX_EXT, TIME_INDEX_EXT, LOG_EXT] {
            let p = segment_path(dir, base, ext);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&p)(e)),
            }
        }
        bases.pop();
    }
    sync_dir(dir)?;
    let Some(&base) = bases.last() else {
        return Ok(to);
    };
    let path = segment_path(dir, base, LOG_EXT);
    let data = std::fs::read(&path).map_err(io_err(&path))?;
    // Walk the batches by header to the one holding `to` (or the end of the data).
    let mut pos = 0usize;
    let mut next = base;
    while pos + BATCH_HEADER_BYTES <= data.len() && next < to {
        let Ok(h) = sealed::read_stored_header(&data[pos..]) else {
            break;
        };
        if h.base_offset != next || h.record_count == 0 || h.total_bytes() > data.len() - pos {
            break;
        }
        if h.last_offset() >= to {
            break;
        }
        pos += h.total_bytes();
        next = h.last_offset() + 1;
    }
    let file = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    file.set_len(pos as u64).map_err(io_err(&path))?;
    file.sync_all().map_err(io_err(&path))?;
    for ext in [INDEX_EXT, TIME_INDEX_EXT] {
        let p = segment_path(dir, base, ext);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&p)(e)),
        }
    }
    sync_dir(dir)?;
    Ok(next)
}

/// Empties the log in `dir` and makes it start at `base`: every segment is deleted
/// (newest first) and an empty `<base>.log` takes their place, so the next open has
/// `log_start = log_end = base` and appends from there. How a mirror whose primary no
/// longer holds the mirror's next offset (retention removed it) starts its copy over at
/// the primary's first record. The log must not be open.
pub fn restart_closed_log(dir: &Path, base: u64) -> Result<(), StorageError> {
    let mut bases = list_bases(dir)?;
    bases.sort_unstable();
    // The new start segment first: a crash part way leaves old segments below it and
    // the empty one, which opens as a log ending at the newest old segment's end or at
    // `base` — never a log that claims records it does not hold.
    let start = segment_path(dir, base, LOG_EXT);
    if !bases.contains(&base) {
        std::fs::File::create(&start).map_err(io_err(&start))?;
    }
    for &b in bases.iter().rev() {
        let exts: &[&str] = if b == base {
            &[INDEX_EXT, TIME_INDEX_EXT]
        } else {
            &[INDEX_EXT, TIME_INDEX_EXT, LOG_EXT]
        };
        for ext in exts {
            let p = segment_path(dir, b, ext);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&p)(e)),
            }
        }
    }
    let file = OpenOptions::new()
        .write(true)
        .open(&start)
        .map_err(io_err(&start))?;
    file.set_len(0).map_err(io_err(&start))?;
    file.sync_all().map_err(io_err(&start))?;
    sync_dir(dir)
}

fn list_bases(dir: &Path) -> Result<Vec<u64>, StorageError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for ent in entries {
        let ent = ent.map_err(io_err(dir))?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((stem, ext)) = name.split_once('.') else {
            continue;
        };
        if ext == LOG_EXT && stem.len() == 20 {
            if let Ok(b) = stem.parse::<u64>() {
                out.push(b);
            }
        }
    }
    Ok(out)
}

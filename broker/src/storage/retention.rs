//! Retention: delete whole closed segments, oldest first, when they are older than
//! `retention_ms` (judged by the newest record timestamp in the segment, as Kafka does)
//! or while the log is larger than `retention_bytes`. The active segment is never
//! deleted, and only a prefix of the log goes, so offsets stay contiguous.
//!
//! Safe against readers: the segment list is republished without the victims and the
//! log start advanced before the files are unlinked; a reader still holding a snapshot
//! or `Bytes` keeps the mapping alive through its `Arc`, and Linux keeps an unlinked
//! file's pages until the last mapping goes.

use std::sync::atomic::Ordering;

use super::error::StorageError;
use super::log::Log;

pub(crate) fn apply(log: &mut Log, now_ms: i64) -> Result<usize, StorageError> {
    let cfg = log.config.clone();
    if cfg.retention_ms == 0 && cfg.retention_bytes == 0 {
        return Ok(0);
    }
    let snap = log.shared.snapshot();
    let mut total: u64 = snap.iter().map(|s| s.size_bytes()).sum();
    let mut victims = 0usize;
    // Never the last (active) segment.
    for seg in snap.iter().take(snap.len().saturating_sub(1)) {
        if !seg.closed {
            break;
        }
        let newest = seg.max_timestamp_ms.load(Ordering::Acquire);
        let too_old = cfg.retention_ms > 0
            && (now_ms as i128 - newest as i128) > i128::from(cfg.retention_ms);
        let too_big = cfg.retention_bytes > 0 && total > cfg.retention_bytes;
        if !(too_old || too_big) {
            break;
        }
        total -= seg.size_bytes();
        victims += 1;
    }
    if victims == 0 {
        return Ok(0);
    }
    let keep: Vec<_> = snap[victims..].to_vec();
    let new_start = keep[0].base_offset;
    let old_start = log.shared.log_start_offset.load(Ordering::Relaxed);
    crate::invariant!(
        old_start < new_start && new_start <= log.active.next_offset,
        "log start moves forward, never past the high-water mark",
        "retention would move it from {old_start} to {new_start} (high-water mark {})",
        log.active.next_offset
    );
    log.shared.publish(keep);
    log.shared
        .log_start_offset
        .store(new_start, Ordering::Release);
    log.pending_sync.retain(|s| s.base_offset >= new_start);
    for seg in &snap[..victims] {
        tracing::info!(base_offset = seg.base_offset, "retention deletes segment");
        seg.delete_files()?;
    }
    log.dir_dirty = true;
    Ok(victims)
}

//! Retention: which whole closed segments go, oldest first — those older than
//! `retention_ms` (judged by the newest record timestamp in the segment, as Kafka does)
//! and those that keep the log larger than `retention_bytes`. The active segment is
//! never chosen, and only a prefix of the log goes, so offsets stay contiguous.
//!
//! This module only decides; [`Log::apply_retention`](super::Log::apply_retention),
//! the owner of the segment list, detaches the victims and deletes their files.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::config::LogConfig;
use super::segment::Segment;

/// How many of the oldest `segments` (the log's list, oldest first, active last)
/// retention removes at `now_ms`.
pub(crate) fn victims(segments: &[Arc<Segment>], config: &LogConfig, now_ms: i64) -> usize {
    if config.retention_ms == 0 && config.retention_bytes == 0 {
        return 0;
    }
    let mut total: u64 = segments.iter().map(|s| s.size_bytes()).sum();
    let mut victims = 0usize;
    // Never the last (active) segment.
    for seg in segments.iter().take(segments.len().saturating_sub(1)) {
        if !seg.closed {
            break;
        }
        let newest = seg.max_timestamp_ms.load(Ordering::Acquire);
        let too_old = config.retention_ms > 0
            && (now_ms as i128 - newest as i128) > i128::from(config.retention_ms);
        let too_big = config.retention_bytes > 0 && total > config.retention_bytes;
        if !(too_old || too_big) {
            break;
        }
        total -= seg.size_bytes();
        victims += 1;
    }
    victims
}

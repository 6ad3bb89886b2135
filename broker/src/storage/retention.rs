//! Retention: which whole closed segments go, oldest first — those older than
//! `retention_ms` (judged by the newest record timestamp in the segment, as Kafka does)
//! and those that keep the log larger than `retention_bytes`. The active segment is
//! never chosen, and only a prefix of the log goes, so offsets stay contiguous.
//!
//! [`victims`] decides; [`Log::apply_retention`](super::Log::apply_retention), the
//! owner of the segment list, detaches them (republishes the list without them and
//! advances the log start) and hands their files to [`delete_in_background`], so the
//! shard writer thread only does the cheap part.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::config::LogConfig;
use super::error::StorageError;
use super::segment::{sync_dir, Segment};
use super::workers::{self, Task};

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

/// Most deletions running at once per log; retention skips a check while this many
/// are still unlinking (they take milliseconds; checks are seconds apart). One: two
/// running side by side could delete a later segment before an earlier one, and a
/// crash between them would leave a hole in the segment list that recovery refuses.
pub(crate) const MAX_RUNNING_DELETIONS: usize = 1;

/// A deletion handed to the storage workers; yields how many segments it deleted.
pub(crate) type Deletion = Task<Result<usize, StorageError>>;

/// Deletes the files of `doomed`, segments the log has already detached (no new
/// reader can find them), on a storage worker (`workers.rs`), so the writer never
/// waits for unlinks or unmaps. `old_list` is the writer's last reference to the
/// segment list they were in: it is dropped there too, so the last `Arc` of a segment
/// (and with it the `munmap`) goes there or with a reader, never on the writer.
/// Readers still holding a segment keep its mapping: Linux keeps an unlinked file's
/// pages until the last mapping goes.
pub(crate) fn delete_in_background(
    doomed: Vec<Arc<Segment>>,
    old_list: Arc<Vec<Arc<Segment>>>,
    dir: PathBuf,
) -> Deletion {
    workers::run(move || delete(doomed, old_list, &dir))
}

fn delete(
    doomed: Vec<Arc<Segment>>,
    old_list: Arc<Vec<Arc<Segment>>>,
    dir: &Path,
) -> Result<usize, StorageError> {
    for seg in &doomed {
        tracing::info!(base_offset = seg.base_offset, "retention deletes segment");
        seg.delete_files()?;
    }
    // Durable now, not at the writer's next flush.
    sync_dir(dir)?;
    drop(old_list);
    Ok(doomed.len())
}

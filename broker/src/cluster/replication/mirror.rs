//! A shard copy in the mirror role: one task that copies the primary's log with
//! MirrorFetch, writes what it gets at the same offsets, and cuts its own log back
//! where the primary says the two diverge.
//!
//! The task reads the shard's primary and epoch from the metadata on every round, so a
//! switchover needs no restart of it; the agent stops it when this node becomes the
//! primary (and waits until every copy it handed the writer is written).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use weir_protocol::batch::{self, BatchHeader};
use weir_protocol::messages::{MirrorFetchRequest, MirrorFetchResponse, NO_TRUNCATION};
use weir_protocol::ResponseBody;

use super::epochs::EpochHistory;
use super::reconcile;
use crate::cluster::peer::PeerError;
use crate::cluster::Cluster;

/// Longest a MirrorFetch waits at the primary for new records.
pub const FETCH_WAIT_MS: u32 = 500;
/// Pause after a failed round (primary unreachable, refused).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What one round copied, and whether more is waiting at the primary.
#[derive(Debug, Default)]
struct Copied {
    /// The fetch came back full: the copy is catching up (`backfill.rs`).
    full: bool,
    records: u64,
    bytes: u64,
    /// How far behind the primary's log end the copy still is.
    behind: u64,
    /// The primary's write rate (records/s).
    write_rate: u64,
}

/// Copies `topic`/`shard_no` from its primary until the task is aborted. While the
/// copy is catching up it holds one of the node's catch-up permits (busiest shards
/// first); a copy that keeps pace needs none.
pub async fn run(cluster: Arc<Cluster>, topic: String, shard_no: u32) {
    let mut meta_rx = cluster.consensus.metadata();
    let mut epochs = EpochHistory::load(&cluster.topics.shard_dir(&topic, shard_no));
    let mut permit: Option<super::backfill::Permit> = None;
    let shard_dir = cluster.topics.shard_dir(&topic, shard_no);
    // A reservation left by a node that died catching up.
    let _ = std::fs::remove_file(shard_dir.join(super::reserve::FILE));
    let mut reserved: Option<super::reserve::Reservation> = None;
    loop {
        match round(&cluster, &topic, shard_no, &mut epochs).await {
            Ok(c) => {
                cluster.held.release(&topic, shard_no);
                if c.full && permit.is_none() {
                    let need = wait_for_room(&cluster, &topic, shard_no, &c).await;
                    let key = (topic.clone(), shard_no);
                    permit = Some(cluster.backfill.admit(key, c.write_rate, c.behind).await);
                    // Set the copy's room aside before it starts, leaving what the next
                    // fetch and a new segment take free for the log itself.
                    let lookahead = u64::from(cluster.config.mirror_fetch_max_bytes)
                        + catch_up_bytes(&cluster, &topic, &Copied::default());
                    reserved = match super::reserve::Reservation::take(
                        &shard_dir,
                        need.saturating_sub(lookahead),
                    ) {
                        Ok(r) => Some(r),
                        Err(e) => {
                            tracing::warn!(topic, shard = shard_no, error = %e, "setting disk space aside for the catch-up failed; copying without");
                            None
                        }
                    };
                }
                if let Some(p) = &permit {
                    p.copied(c.records, c.bytes);
                }
                if let Some(r) = &mut reserved {
                    r.shrink_by(c.bytes);
                }
                if !c.full {
                    reserved = None;
                    if let Some(p) = permit.take() {
                        p.finish();
                    }
                }
            }
            // A metadata change (a new primary after a switchover) ends the pause:
            // the in-sync mirrors are what the new primary's mirrored acks wait for.
            Err(Pause::Short) => {
                let _ = tokio::time::timeout(RETRY_PAUSE, meta_rx.changed()).await;
            }
            Err(Pause::Brief) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(Pause::UntilMetadata) => {
                let _ = tokio::time::timeout(Duration::from_millis(500), meta_rx.changed()).await;
            }
        }
    }
}

/// How often a catch-up waiting for disk space looks again.
const ROOM_RECHECK: Duration = Duration::from_secs(1);

/// The bytes a catch-up is expected to write: what is behind, at the size per record
/// of what the last fetch brought, plus the log's reserve for its next segment.
fn catch_up_bytes(cluster: &Cluster, topic: &str, c: &Copied) -> u64 {
    let per_record = c.bytes.checked_div(c.records).unwrap_or(0);
    let segment = cluster
        .topics
        .get(topic)
        .map_or(0, |t| t.config.segment_bytes);
    c.behind.saturating_mul(per_record).saturating_add(segment)
}

/// Before a catch-up starts, waits until the data directory's disk has room for all of
/// it: a copy that would fill the disk half way stops every shard of the node, so it
/// waits instead, held out of sync with the reason on `/health`, and starts once room
/// is made (retention, a bigger disk, a copy moved away).
/// Returns the bytes it expects the catch-up to write.
async fn wait_for_room(cluster: &Cluster, topic: &str, shard_no: u32, c: &Copied) -> u64 {
    let need = catch_up_bytes(cluster, topic, c);
    loop {
        let Some(disk) = crate::observe::process::disk(&cluster.config.data_dir) else {
            return need;
        };
        if disk.free_bytes >= need {
            cluster.held.release(topic, shard_no);
            return need;
        }
        cluster.held.hold(
            topic,
            shard_no,
            format!(
                "out of sync: catching up needs about {need} bytes ({} records behind) and {} are free on the data directory's disk; waiting for room, checked every {} s",
                c.behind,
                disk.free_bytes,
                ROOM_RECHECK.as_secs()
            ),
        );
        tracing::warn!(
            topic,
            shard = shard_no,
            need,
            free = disk.free_bytes,
            "catch-up waits for disk space"
        );
        tokio::time::sleep(ROOM_RECHECK).await;
    }
}

/// Why a round ended without copying.
enum Pause {
    /// A failed round: 100 ms, or until the metadata changes.
    Short,
    /// Refused by a primary that is a step behind or ahead: 20 ms.
    Brief,
    /// No primary to fetch from: until the metadata changes (at most 500 ms).
    UntilMetadata,
}

async fn round(
    cluster: &Arc<Cluster>,
    topic: &str,
    shard_no: u32,
    epochs: &mut EpochHistory,
) -> Result<Copied, Pause> {
    let meta = cluster.consensus.metadata().borrow().clone();
    let entry = meta.shard(topic, shard_no).ok_or(Pause::UntilMetadata)?;
    let primary = match entry.primary {
        Some(p) if p != cluster.node_id => p,
        _ => return Err(Pause::UntilMetadata),
    };
    let peer = cluster.peers.get(&primary).ok_or(Pause::UntilMetadata)?;
    let shard = cluster
        .topics
        .get(topic)
        .and_then(|t| t.shard(shard_no).cloned())
        .map_err(|_| Pause::UntilMetadata)?;
    let end = shard.reader().log_end_offset();
    let req = MirrorFetchRequest {
        topic: topic.to_string(),
        shard: shard_no,
        node_id: cluster.node_id as u32,
        epoch: entry.epoch,
        fetch_offset: end,
        last_epoch: epochs.epoch_before(end),
        max_bytes: cluster.config.mirror_fetch_max_bytes,
        max_wait_ms: FETCH_WAIT_MS,
    };
    let timeout = Duration::from_millis(u64::from(FETCH_WAIT_MS) + 2_000);
    let resp: MirrorFetchResponse = match peer.call(req, timeout).await {
        Ok(ResponseBody::MirrorFetch(r)) => r,
        Ok(_) => return Err(Pause::Short),
        Err(PeerError::Refused { code, message }) => {
            tracing::debug!(topic, shard = shard_no, %code, message, "mirror fetch refused");
            // The primary may not have applied the change this node already has (or
            // the other way round): look again shortly either way.
            return Err(Pause::Brief);
        }
        Err(e) => {
            tracing::debug!(topic, shard = shard_no, error = %e, "mirror fetch failed");
            return Err(Pause::Short);
        }
    };
    if resp.truncate_to != NO_TRUNCATION {
        tracing::warn!(
            topic,
            shard = shard_no,
            from = end,
            to = resp.truncate_to,
            epoch = entry.epoch,
            "mirror log diverges from the primary's: cutting it back"
        );
        // What is cut was never acknowledged as mirrored, but it may be a write a
        // client was told about (acks=leader) or still waits for: keep it first. The
        // reconciliation topic's own copies are only written with acks=mirrored by
        // this code, which retries until acknowledged, so their suffixes are cut bare.
        if !topic.ends_with(weir_protocol::headers::RECONCILE_SUFFIX) {
            let suffix = reconcile::Suffix {
                topic,
                shard_no,
                shard: &shard,
                from: resp.truncate_to,
                to: end,
                cut_epoch: entry.epoch,
            };
            match reconcile::preserve(cluster, &suffix, epochs).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    topic,
                    shard = shard_no,
                    records = n,
                    kept_in = %reconcile::topic_for(topic),
                    "divergent records kept for reconciliation"
                ),
                Err(e) => {
                    tracing::warn!(topic, shard = shard_no, error = %e.message, "keeping the divergent records failed; the cut waits");
                    cluster.held.hold(
                        topic,
                        shard_no,
                        format!(
                            "out of sync: its records {}..{} diverge from primary {primary}'s (epoch {}) and cannot be kept in {} yet ({}: {}); the cut waits for that, retried every {} ms",
                            resp.truncate_to,
                            end,
                            entry.epoch,
                            reconcile::topic_for(topic),
                            e.code,
                            e.message,
                            RETRY_PAUSE.as_millis()
                        ),
                    );
                    return Err(Pause::Short);
                }
            }
        }
        let (_, cut_end) = cluster
            .topics
            .truncate_shard(topic, shard_no, resp.truncate_to)
            .await
            .map_err(|e| {
                tracing::error!(topic, shard = shard_no, error = %e.message, "cutting the mirror back failed");
                Pause::Short
            })?;
        epochs.truncate(cut_end).map_err(|_| Pause::Short)?;
        return Ok(Copied::default());
    }
    if resp.log_start_offset > end {
        // The primary no longer holds this copy's next record (retention removed it):
        // the copy starts over at the primary's first record. What it held below is
        // older than anything the primary keeps, so nothing a reader could get is lost.
        tracing::info!(
            topic,
            shard = shard_no,
            from = end,
            to = resp.log_start_offset,
            "mirror copy starts over at its primary's log start"
        );
        cluster
            .topics
            .restart_shard(topic, shard_no, resp.log_start_offset)
            .await
            .map_err(|e| {
                tracing::error!(topic, shard = shard_no, error = %e.message, "starting the mirror copy over failed");
                Pause::Short
            })?;
        epochs.truncate(0).map_err(|_| Pause::Short)?;
        epochs
            .learn(&resp.epochs, resp.log_start_offset)
            .map_err(|_| Pause::Short)?;
        return Ok(Copied::default());
    }
    let bytes = resp.records.len_bytes() as u64;
    let full = bytes >= u64::from(cluster.config.mirror_fetch_max_bytes) / 2;
    let (batches, headers) = match split(&resp, end) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(
                topic,
                shard = shard_no,
                error = e,
                "bad records from the primary"
            );
            return Err(Pause::Short);
        }
    };
    let Some(last) = headers.last() else {
        shard.raise_visible(resp.high_watermark.min(end));
        return Ok(Copied::default());
    };
    let new_end = last.last_offset() + 1;
    let copied = Copied {
        full,
        records: new_end - end,
        bytes,
        behind: resp.log_end_offset.saturating_sub(new_end),
        write_rate: resp.write_rate,
    };
    // The epochs go first: a copy that dies between the two has an entry past its
    // end, which the next take-over or fetch trims; never records without an epoch.
    epochs
        .learn(&resp.epochs, new_end)
        .map_err(|_| Pause::Short)?;
    match shard.replicate(batches, headers).await {
        Ok(written_end) => {
            shard.raise_visible(resp.high_watermark.min(written_end));
            Ok(copied)
        }
        Err(crate::shard::AppendError::Closed) => {
            // A cut whose reopen failed left a closed handle in place: open the shard
            // again (a cut at the log's end changes nothing) instead of failing forever.
            tracing::warn!(
                topic,
                shard = shard_no,
                "mirror copy is closed; reopening it"
            );
            match cluster
                .topics
                .truncate_shard(topic, shard_no, u64::MAX)
                .await
            {
                Ok(_) => Ok(Copied::default()),
                Err(e) => {
                    tracing::error!(topic, shard = shard_no, error = %e.message, "reopening the mirror copy failed");
                    Err(Pause::Short)
                }
            }
        }
        Err(e) => {
            tracing::warn!(topic, shard = shard_no, error = %e, "writing the mirror copy failed");
            Err(Pause::Short)
        }
    }
}

/// The response's batches, each checked (header, CRC) and continuing from `end`.
fn split(resp: &MirrorFetchResponse, end: u64) -> Result<(Vec<Bytes>, Vec<BatchHeader>), String> {
    let mut batches = Vec::new();
    let mut headers = Vec::new();
    let mut next = end;
    for chunk in resp.records.chunks() {
        for b in batch::split(chunk.clone()) {
            let b = b.map_err(|e| e.to_string())?;
            let h = batch::verify(&b).map_err(|e| e.to_string())?;
            if h.base_offset != next {
                return Err(format!(
                    "batch at {} where {next} was expected",
                    h.base_offset
                ));
            }
            next = h.last_offset() + 1;
            headers.push(h);
            batches.push(b);
        }
    }
    Ok((batches, headers))
}

//! PriorityFetch: reading one shard as four class lanes, P0 first by weight.
//!
//! Each lane is the shard's batches of one class, in offset order, read from the
//! consumer's cursor for that lane ([`crate::shard::class_index::ClassIndex`] finds
//! them). Which lane's next batch goes into the response is decided by a fresh
//! [`Wfq`] per response: weighted fair by bytes, and aging by how far a batch is behind
//! the freshest lane head of the response (by newest record timestamp) — a lane head
//! further behind than its class's aging threshold goes before fresher batches of any
//! class, the furthest behind first, **once per aging period per lane and reader**;
//! the lane's other batches go by weight, and the weights hold across a reader's
//! answers (each answer's queue resumes the virtual time the reader's last answer left).
//! Both clocks are the session's ([`super::clocks::ReaderClocks`]) and are set only by
//! responses that are sent. So fresh P0 data waits behind at most one aged batch per
//! lane however far behind the reader is, and a backlogged lane gets its weighted
//! share of what a reader reads plus at least one batch per aging period, for every
//! reader of the shard alike. A backlog read long after it was written
//! is served by weight, not in offset order as wall-clock aging would. A long-poll
//! that waits for `min_bytes` returns as soon as P0 data is available: urgent data
//! cuts it short.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_protocol::batch::BatchHeader;
use weir_protocol::classes::{Class, CLASS_COUNT};
use weir_protocol::messages::{PriorityFetchRequest, PriorityFetchResponse, Records};
use weir_protocol::ErrorCode;

use super::clocks::{Picks, ReaderClocks, ShardClocks};
use super::poll::{long_poll, max_bytes};
use crate::clock::now_ms;
use crate::error::BrokerError;
use crate::scheduler::{Pick, VirtualClock, Wfq};
use crate::shard::Shard;
use crate::state::BrokerState;
use crate::storage::StorageError;

/// Unscanned records up to which the class index catches up inline (a few
/// milliseconds at most); beyond, on the blocking pool.
const INLINE_INDEX_CATCH_UP_MAX: u64 = 10_000;

/// A lane's next batch and its header; `None` when the lane has nothing more.
type Head = Option<(Bytes, BatchHeader)>;

/// A lane's next batch, or the damage on disk where the lane stops.
type LaneNext = Result<Head, Damage>;

/// A batch of a lane that cannot be read: its offset, and the error that names it.
struct Damage {
    at: u64,
    error: BrokerError,
}

/// One assembled response.
struct Assembled {
    batches: Vec<Bytes>,
    bytes: usize,
    cursors: [u64; CLASS_COUNT],
    has_p0: bool,
    /// The lanes that went ahead by aging in it, and when, and the virtual time its
    /// queue left: recorded in the reader's clocks only if this response is the one
    /// sent (a long-poll assembles and drops many).
    aged: Picks,
    wfq: VirtualClock,
}

/// Answers a PriorityFetch from the reader (session) whose clocks are `clocks`; see the
/// module docs.
pub async fn priority_fetch(
    state: &Arc<BrokerState>,
    clocks: &ReaderClocks,
    r: PriorityFetchRequest,
) -> Result<PriorityFetchResponse, BrokerError> {
    let topic = state.topics.get(&r.topic)?;
    let shard: &Arc<Shard> = topic.shard(r.shard)?;
    if let Some(c) = &state.cluster {
        c.check_primary(&r.topic, r.shard)?;
    }
    let mut cursors: [u64; CLASS_COUNT] = r.cursors.as_slice().try_into().map_err(|_| {
        BrokerError::new(
            ErrorCode::InvalidRequest,
            format!(
                "cursors must hold {CLASS_COUNT} offsets, got {}",
                r.cursors.len()
            ),
        )
    })?;
    let reader = shard.reader();
    if shard.class_index_is_behind(INLINE_INDEX_CATCH_UP_MAX) {
        let s = Arc::clone(shard);
        tokio::task::spawn_blocking(move || s.class_index().map(drop))
            .await
            .map_err(|e| BrokerError::new(ErrorCode::Unknown, format!("class index scan: {e}")))?
            .map_err(BrokerError::from)?;
    }
    let max_bytes = max_bytes(state, r.max_bytes);
    long_poll(state, shard, r.max_wait_ms, |last| {
        let hwm = reader.high_watermark();
        let start = reader.log_start_offset();
        for c in cursors.iter_mut() {
            // A lane above the high-water mark (the log lost an unflushed tail in a
            // crash) waits at the mark; one below the log start continues there.
            *c = (*c).clamp(start, hwm.max(start));
        }
        let a = assemble(
            state,
            shard,
            &cursors,
            max_bytes,
            clocks.get(&r.topic, r.shard),
        )?;
        // Urgent data ends the wait for `min_bytes` at once.
        let enough = a.bytes > 0 && (a.bytes >= r.min_bytes as usize || a.has_p0);
        if !enough && !last {
            return Ok(None);
        }
        let left = ShardClocks {
            aged: a.aged,
            wfq: a.wfq,
            cursors: a.cursors,
        };
        clocks.note(&r.topic, r.shard, left, Instant::now());
        state
            .metrics
            .fetch_bytes_total
            .fetch_add(a.bytes as u64, Ordering::Relaxed);
        let (records, bytes) = crate::meters::count_delivery(
            &state.meters,
            &topic.io,
            &shard.classes(),
            a.batches.iter().map(|b| b.as_ref()),
            now_ms(),
        );
        shard.stats().io.delivered(records, bytes);
        Ok(Some(PriorityFetchResponse {
            high_watermark: hwm,
            log_start_offset: start,
            cursors: a.cursors.to_vec(),
            layout_epoch: topic.layout_epoch(),
            records: Records::from_chunks(a.batches),
        }))
    })
    .await
}

/// Picks batches from the four lanes in WFQ order until `max_bytes` (the first batch
/// always fits, so a consumer always progresses), from the reader's clocks `last`.
fn assemble(
    state: &BrokerState,
    shard: &Shard,
    cursors: &[u64; CLASS_COUNT],
    max_bytes: usize,
    last: ShardClocks,
) -> Result<Assembled, BrokerError> {
    let reader = shard.reader();
    let index = shard.class_index().map_err(BrokerError::from)?;
    let scanned = index.scanned_to();
    let now = Instant::now();
    let aging = state.config.class_aging();
    // A lane keeps its carried place only if it resumes where the last answer left
    // it, so its head is the batch that waited.
    let same_head: [bool; CLASS_COUNT] = std::array::from_fn(|c| cursors[c] == last.cursors[c]);
    let mut wfq: Wfq<(Bytes, BatchHeader)> = Wfq::resume(
        state.config.class_weights(),
        aging,
        last.wfq.keep_heads(same_head),
    );
    // A lane may go ahead by aging once per aging period (see the module docs).
    let mut may_age: [bool; CLASS_COUNT] = std::array::from_fn(|c| {
        last.aged[c].is_none_or(|t| now.saturating_duration_since(t) >= aging[c])
    });
    // Lane `c`'s next batch at or after `from`, if it has one, or where the lane meets
    // damage on disk. Any other read error fails the answer.
    let read_next = |c: Class, from: u64| -> Result<LaneNext, BrokerError> {
        let Some(offset) = index.next(c, from) else {
            return Ok(Ok(None));
        };
        let damaged = |error| Ok(Err(Damage { at: offset, error }));
        let chunk = match reader.read(offset, 1) {
            Ok(chunks) => match chunks.into_iter().next() {
                Some(chunk) => chunk,
                None => return Ok(Ok(None)),
            },
            Err(e @ StorageError::Corrupt { .. }) => return damaged(BrokerError::from(e)),
            Err(e) => return Err(BrokerError::from(e)),
        };
        match BatchHeader::read(&chunk) {
            Ok(h) => Ok(Ok(Some((
                chunk.slice(..h.total_bytes().min(chunk.len())),
                h,
            )))),
            Err(e) => damaged(BrokerError::new(
                ErrorCode::CorruptStorage,
                format!("batch at offset {offset}: {e}"),
            )),
        }
    };
    let heads: Vec<(Class, LaneNext)> = Class::ALL
        .into_iter()
        .map(|c| Ok((c, read_next(c, cursors[c.index()])?)))
        .collect::<Result<_, BrokerError>>()?;
    // A lane that meets damage stops there (its cursor moves up to it) while the other
    // lanes go on, so everything intact before the damage is served first. Once no lane
    // has anything unread before the first damage, the answer is that error, even if
    // lanes have data after it: the reader learns where the damage is (and passes it
    // by moving its cursors beyond it) instead of a lane waiting there unseen.
    let first_damage = heads
        .iter()
        .filter_map(|(_, next)| next.as_ref().err().map(|d| d.at))
        .min();
    if let Some(at) = first_damage {
        let unread_before = heads
            .iter()
            .any(|(_, next)| matches!(next, Ok(Some((_, h))) if h.base_offset < at));
        if !unread_before {
            let damage = heads
                .into_iter()
                .find_map(|(_, next)| next.err().filter(|d| d.at == at))
                .expect("the first damage is a lane's");
            return Err(damage.error);
        }
    }
    // Aging is relative to the freshest lane head: a batch waits as long as it is older
    // than that. With data arriving the freshest head is about now, so a batch's wait
    // is its age in the log; in a backlog read long after it was written, every batch
    // would be "overdue" by wall-clock age and the answer would fall back to plain
    // offset order, so only the differences in age count, and the weights decide.
    let reference_ms = heads
        .iter()
        .filter_map(|(_, next)| {
            next.as_ref()
                .ok()?
                .as_ref()
                .map(|(_, h)| h.max_timestamp_ms)
        })
        .max()
        .unwrap_or_else(now_ms);
    let push = |c: Class, (batch, h): (Bytes, BatchHeader), wfq: &mut Wfq<_>, may_age: bool| {
        let since = if may_age {
            let behind_ms = reference_ms.saturating_sub(h.max_timestamp_ms).max(0) as u64;
            // Further behind than the process has run: as old as anything can be.
            now.checked_sub(Duration::from_millis(behind_ms))
                .unwrap_or(state.started)
        } else {
            now
        };
        wfq.push(c, (batch, h), h.total_bytes() as u64, since);
    };
    let mut out = Assembled {
        batches: Vec::new(),
        bytes: 0,
        cursors: *cursors,
        has_p0: false,
        aged: [None; CLASS_COUNT],
        wfq: VirtualClock::default(), // set in the loop below
    };
    for (c, next) in heads {
        let cursor = &mut out.cursors[c.index()];
        match next {
            Ok(Some(head)) => push(c, head, &mut wfq, may_age[c.index()]),
            // Nothing of this class up to the high-water mark.
            Ok(None) => *cursor = (*cursor).max(scanned),
            Err(d) => *cursor = (*cursor).max(d.at),
        }
    }
    loop {
        // The clock this answer leaves: after its last batch, so a batch that does not
        // fit keeps its place at the head of its lane.
        out.wfq = wfq.clock();
        let Some(s) = wfq.pop(now) else { break };
        let served = s.class;
        let (batch, h) = s.item;
        if !out.batches.is_empty() && out.bytes + batch.len() > max_bytes {
            // Does not fit: the lane resumes at this batch next time.
            let c = &mut out.cursors[served.index()];
            *c = (*c).max(h.base_offset);
            break;
        }
        if s.pick == Pick::Aged {
            may_age[served.index()] = false;
            out.aged[served.index()] = Some(now);
        }
        out.bytes += batch.len();
        out.has_p0 |= served == Class::P0;
        out.batches.push(batch);
        let last = h.last_offset();
        out.cursors[served.index()] = last + 1;
        match read_next(served, last + 1)? {
            Ok(Some(next)) => push(served, next, &mut wfq, may_age[served.index()]),
            Ok(None) => out.cursors[served.index()] = scanned.max(last + 1),
            Err(d) => out.cursors[served.index()] = d.at, // stops at the damage
        }
        if out.bytes >= max_bytes {
            out.wfq = wfq.clock();
            break;
        }
    }
    Ok(out)
}

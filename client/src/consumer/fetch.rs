//! Reading: `poll` and `poll_batches` hand out what earlier fetches buffered, and
//! when nothing is buffered run one fetch round: a request to every assigned shard that
//! has none in flight from its current position, in parallel, each long-polling on the
//! broker for at most `fetch_max_wait` (and the poll's time left), then the answers
//! that have come — the first one waited for, the others only if already there.
//! Fetches still waiting stay in flight for the next round ([`InFlight`]), so a record
//! on one shard is handed out as soon as it arrives, not once every idle shard's long
//! poll has run out. An answer counts only if it is its shard's latest fetch and the
//! shard's position has not moved since it was sent; a fetch replaced because the
//! position moved (a seek, a rejoin) is left to finish, and a shard has at most one
//! such fetch besides its current one. A shard's failure (a damaged batch, a refusal)
//! does not cost the other shards' answers of the round: they are buffered, and the
//! failure is returned after them, so the next polls hand their records out.
//!
//! In priority order a shard is fetched by its four lane cursors
//! (`PriorityFetchRequest`) and every buffered message remembers its lane, so
//! positions can move per lane as messages are returned (see `positions.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use weir_protocol::batch::{self, Batch};
use weir_protocol::classes::{ClassMap, CLASS_COUNT};
use weir_protocol::messages::*;
use weir_protocol::{ErrorCode, Request, ResponseBody};

use super::batches::{split_batches, BatchBody, ConsumedBatch};
use super::{Consumer, ConsumerConfig, DeliveryOrder, OffsetReset};
use crate::client::expect_body;
use crate::error::{ClientError, Result};
use crate::record::Message;
use weir_protocol::reshard::Gate;

/// The lane cursors of a shard in priority order (`None` in offset order).
type Lanes = Option<[u64; CLASS_COUNT]>;

/// How long a round waits after a fetch failed without saying when to come back.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// How long a shard whose fetch failed for good (damage, a refusal) is not fetched
/// again from the same position: the other shards are read meanwhile, and a caller
/// that polls on after the error does not make the consumer spin on that shard.
const FAILED_SHARD_REST: Duration = Duration::from_millis(100);

/// A fetch on its way: which fetch it is, and its answer once it comes.
type Pending =
    std::pin::Pin<Box<dyn std::future::Future<Output = (Fetched, Result<ResponseBody>)> + Send>>;

/// The consumer's fetches in flight (see the module docs).
#[derive(Default)]
pub(super) struct InFlight {
    /// In a mutex only so that the consumer stays `Sync` (the futures are not): every
    /// access is through `get_mut`, which takes no lock.
    calls: std::sync::Mutex<FuturesUnordered<Pending>>,
    /// Per shard, the fetch whose answer counts: its id, and the position and lane
    /// cursors it asked from. A fetch replaced here (the position moved) is left to
    /// finish and its answer dropped.
    current: std::collections::HashMap<(String, u32), (u64, u64, Lanes)>,
    /// Per shard, replaced fetches still out (no new one is sent while there is one:
    /// each holds a request slot on the connection until its long poll ends).
    replaced: std::collections::HashMap<(String, u32), u32>,
    /// Per shard whose last fetch failed for good: the position it failed at, and
    /// until when it rests ([`FAILED_SHARD_REST`]; moving the position ends the rest).
    resting: std::collections::HashMap<(String, u32), (u64, tokio::time::Instant)>,
    next_id: u64,
}

/// The fetches in flight (see [`InFlight::calls`]).
fn calls(f: &mut InFlight) -> &mut FuturesUnordered<Pending> {
    f.calls.get_mut().unwrap_or_else(|p| p.into_inner())
}

/// Keeps a round's first failure (returned after the round's other answers are
/// handled) and marks the shard to rest.
fn note_failure(
    failed: &mut Option<ClientError>,
    rest: &mut Vec<((String, u32), u64)>,
    f: &Fetched,
    e: ClientError,
) {
    rest.push(((f.topic.clone(), f.shard), f.offset));
    failed.get_or_insert(e);
}

/// Which fetch a response answers.
struct Fetched {
    id: u64,
    topic: String,
    shard: u32,
    offset: u64,
    lanes: Lanes,
    /// Records at or above this offset wait for a reshard's other shards
    /// (`reshard.rs`): they are not handed out.
    limit: u64,
}

impl Consumer {
    /// Up to `max` messages; waits up to `timeout` when none are ready.
    pub async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Message>> {
        let mut deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.rejoin.load(Ordering::Acquire) {
                self.rejoin_group().await?;
                // A rebalance can take up to the rebalance timeout; the caller's wait
                // for messages starts once the consumer has its shards.
                deadline = tokio::time::Instant::now() + timeout;
            }
            // Batches `poll_batches` fetched come first, as messages.
            while let Some(b) = self.batches.pop_front() {
                self.buffered.extend(b.messages());
            }
            if !self.buffered.is_empty() {
                let n = max.min(self.buffered.len());
                let out: Vec<Message> = if n == self.buffered.len() {
                    // Everything buffered: the deque's buffer becomes the Vec (no copy
                    // when it never wrapped, as a buffer only pushed to never does).
                    Vec::from(std::mem::take(&mut self.buffered))
                } else {
                    self.buffered.drain(..n).collect()
                };
                if self.config.order == DeliveryOrder::Priority {
                    let lanes: Vec<u8> = self.buffered_lanes.drain(..n).collect();
                    self.advance_lanes(&out, &lanes);
                    self.apply_lane_floors();
                } else {
                    self.advance(&out);
                }
                self.maybe_auto_commit().await;
                return Ok(out);
            }
            if !self.fetch_until(deadline, false).await? {
                return Ok(Vec::new());
            }
        }
    }

    /// Whole fetched batches holding up to `max_records` records (at least one batch
    /// when any is ready); waits up to `timeout` when none are ready. Positions move
    /// past every returned batch, as `poll` moves them past every returned message.
    /// Costs a few operations per batch instead of a decoded [`Message`] per record;
    /// see [`ConsumedBatch`]. Offset order only (`DeliveryOrder::Priority` interleaves
    /// batches by class lanes and keeps per-message cursors: use `poll`).
    pub async fn poll_batches(
        &mut self,
        max_records: usize,
        timeout: Duration,
    ) -> Result<Vec<ConsumedBatch>> {
        if self.config.order == DeliveryOrder::Priority {
            return Err(ClientError::Invalid(
                "poll_batches reads in offset order; use poll for priority order".into(),
            ));
        }
        let mut deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.rejoin.load(Ordering::Acquire) {
                self.rejoin_group().await?;
                deadline = tokio::time::Instant::now() + timeout;
            }
            if !self.buffered.is_empty() {
                // Messages an earlier `poll` decoded go first, one batch per shard run.
                let n = max_records.max(1).min(self.buffered.len());
                let msgs: Vec<Message> = self.buffered.drain(..n).collect();
                self.advance(&msgs);
                let out = ConsumedBatch::from_decoded(msgs);
                self.maybe_auto_commit().await;
                return Ok(out);
            }
            if !self.batches.is_empty() {
                let out = self.take_batches(max_records);
                self.maybe_auto_commit().await;
                return Ok(out);
            }
            if !self.fetch_until(deadline, true).await? {
                return Ok(Vec::new());
            }
        }
    }

    /// Fetched batches up to `max_records` records (at least one), moving positions
    /// past each.
    fn take_batches(&mut self, max_records: usize) -> Vec<ConsumedBatch> {
        let mut out = Vec::new();
        let mut n = 0;
        while let Some(b) = self.batches.front() {
            if !out.is_empty() && n + b.len() > max_records {
                break;
            }
            let b = self.batches.pop_front().expect("front exists");
            n += b.len();
            self.positions
                .insert((b.topic.to_string(), b.shard), b.next_offset());
            out.push(b);
        }
        out
    }

    /// One fetch round for `poll` (decoded messages) or `poll_batches` (whole
    /// batches), unless `deadline` has passed: then commits if due and returns false.
    async fn fetch_until(
        &mut self,
        deadline: tokio::time::Instant,
        whole_batches: bool,
    ) -> Result<bool> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            self.maybe_auto_commit().await;
            return Ok(false);
        }
        self.fetch_round(left.min(self.config.fetch_max_wait), whole_batches)
            .await?;
        let nothing = if whole_batches {
            self.batches.is_empty()
        } else {
            self.buffered.is_empty()
        };
        if nothing && self.positions.is_empty() {
            // Nothing assigned yet (a group still forming): do not spin.
            tokio::time::sleep(left.min(Duration::from_millis(100))).await;
        }
        Ok(true)
    }

    /// One fetch round (see the module docs): sends a fetch to every assigned shard
    /// without one in flight, waits up to `wait` for the first answer and takes in
    /// every answer there by then. With `whole`, keeps each batch for `poll_batches`
    /// instead of decoding its records into messages.
    async fn fetch_round(&mut self, wait: Duration, whole: bool) -> Result<()> {
        let priority = self.config.order == DeliveryOrder::Priority;
        if self.layouts.values().any(|l| !l.reshards.is_empty()) {
            if let Err(e) = self.refresh_others().await {
                tracing::debug!(error = %e, "could not read the group's commits for a reshard gate");
            }
        }
        let mut blocked = 0usize;
        let now = tokio::time::Instant::now();
        let positions = &self.positions;
        self.in_flight
            .resting
            .retain(|key, (at, until)| positions.get(key) == Some(at) && now < *until);
        for ((topic, shard), offset) in &self.positions {
            let limit = match self.gate_of(topic, *shard, *offset) {
                Gate::Blocked { .. } => {
                    blocked += 1;
                    continue;
                }
                Gate::Until { limit } => limit,
            };
            let lanes = if priority {
                Some(lane_cursors(&mut self.lanes, topic, *shard, *offset))
            } else {
                None
            };
            let key = (topic.clone(), *shard);
            if self.in_flight.resting.contains_key(&key) {
                continue; // failed here for good a moment ago
            }
            if self.in_flight.replaced.get(&key).is_some_and(|n| *n > 0) {
                continue; // a replaced fetch is still out: send once it has ended
            }
            if let Some((_, o, l)) = self.in_flight.current.get(&key) {
                if *o == *offset && *l == lanes {
                    continue; // still waiting for this very read
                }
            }
            let id = self.in_flight.next_id;
            self.in_flight.next_id += 1;
            if self
                .in_flight
                .current
                .insert(key.clone(), (id, *offset, lanes))
                .is_some()
            {
                *self.in_flight.replaced.entry(key).or_default() += 1;
            }
            let client = self.client.clone();
            let timeout = wait + self.client.config().request_timeout;
            let (topic, shard, offset) = (topic.clone(), *shard, *offset);
            let req = fetch_request(&self.config, &topic, shard, offset, lanes, wait);
            calls(&mut self.in_flight).push(Box::pin(async move {
                let r = client.call_with_timeout(req, timeout).await;
                let fetched = Fetched {
                    id,
                    topic,
                    shard,
                    offset,
                    lanes,
                    limit,
                };
                (fetched, r)
            }));
        }
        // The first answer (or the round's wait), then every other one already there.
        let mut answers = Vec::new();
        // At least a timer tick: with `fetch_max_wait` 0 the round still gives the
        // fetches it just sent a moment to be answered, instead of returning at once
        // to a caller that would loop.
        let first = wait.max(Duration::from_millis(1));
        let calls = calls(&mut self.in_flight);
        if !calls.is_empty() {
            if let Ok(Some(a)) = tokio::time::timeout(first, calls.next()).await {
                answers.push(a);
            }
            while let Some(Some(a)) = calls.next().now_or_never() {
                answers.push(a);
            }
        } else if let Some(until) = self.in_flight.resting.values().map(|r| r.1).min() {
            // Only resting shards: wait for the first rest to end, not spin.
            tokio::time::sleep_until(until.min(now + first)).await;
        }
        let classes = self.client.class_map();
        let mut reset = Vec::new();
        // THROTTLED (a fetch quota) says when to come back; asking sooner only spins.
        let mut pause = Duration::ZERO;
        let mut stale = Vec::new();
        // A shard's failure (a damaged batch, a refusal) must not hide the other
        // shards' answers: every answer is handled, and the first failure is returned
        // after them (what they brought stays buffered for the next poll).
        let mut failed = None;
        let mut rest = Vec::new();
        answers.retain(|(fetched, _)| self.answer_counts(fetched));
        for (mut fetched, r) in answers {
            let body = match r {
                Ok(b) => b,
                Err(e) if e.code() == Some(ErrorCode::OffsetOutOfRange) => {
                    reset.push((fetched.topic, fetched.shard));
                    continue;
                }
                Err(e) if e.is_retriable() => {
                    tracing::debug!(error = %e, "fetch failed; will retry");
                    // Not at once: a fetch that fails fast would otherwise be sent
                    // again in a tight loop.
                    let hint = crate::flow::pushback_hint(&e).unwrap_or(RETRY_PAUSE);
                    pause = pause.max(hint);
                    continue;
                }
                Err(e) => {
                    note_failure(&mut failed, &mut rest, &fetched, e);
                    continue;
                }
            };
            let epoch = match &body {
                ResponseBody::Fetch(r) => r.layout_epoch,
                ResponseBody::PriorityFetch(r) => r.layout_epoch,
                _ => 0,
            };
            if self.layout_is_stale(&fetched.topic, epoch) {
                // Resharded since the gate was asked: decide again once the new
                // layout is known.
                stale.push((fetched, body));
                continue;
            }
            // The gate as it is now: this fetch may have been sent rounds ago, before
            // another shard's answer taught the consumer a reshard.
            match self.gate_of(&fetched.topic, fetched.shard, fetched.offset) {
                Gate::Blocked { .. } => continue, // fetched again once the gate opens
                Gate::Until { limit } => fetched.limit = fetched.limit.min(limit),
            }
            if let Err(e) = self.take_response(&fetched, body, whole, &classes) {
                note_failure(&mut failed, &mut rest, &fetched, e);
            }
        }
        self.rest(std::mem::take(&mut rest));
        if !stale.is_empty() {
            let mut topics: Vec<String> = stale.iter().map(|(f, _)| f.topic.clone()).collect();
            topics.sort();
            topics.dedup();
            self.learn_layouts(&topics, true).await?;
            for (mut fetched, body) in stale {
                match self.gate_of(&fetched.topic, fetched.shard, fetched.offset) {
                    Gate::Blocked { .. } => continue,
                    Gate::Until { limit } => fetched.limit = limit,
                }
                if let Err(e) = self.take_response(&fetched, body, whole, &classes) {
                    note_failure(&mut failed, &mut rest, &fetched, e);
                }
            }
        }
        if blocked > 0 && self.buffered.is_empty() && self.batches.is_empty() {
            // Nothing was read and some shards wait for others (a group member waits
            // for commits): do not spin.
            tokio::time::sleep(wait.min(Duration::from_millis(20))).await;
        }
        if priority {
            self.apply_lane_floors();
        }
        if !pause.is_zero() && self.buffered.is_empty() && self.batches.is_empty() {
            // Only when nothing came: records other shards brought go out now.
            tokio::time::sleep(pause.min(wait)).await;
        }
        for (topic, shard) in reset {
            let pos = self.reset_position(&topic, shard).await?;
            self.positions.insert((topic, shard), pos);
        }
        self.rest(rest);
        failed.map_or(Ok(()), Err)
    }

    /// Rests shards whose fetch failed for good, each at the position it failed at
    /// ([`FAILED_SHARD_REST`]).
    fn rest(&mut self, failed_at: Vec<((String, u32), u64)>) {
        let until = tokio::time::Instant::now() + FAILED_SHARD_REST;
        for (key, at) in failed_at {
            self.in_flight.resting.insert(key, (at, until));
        }
    }

    /// Whether an answer is its shard's latest fetch, asked from where the shard still
    /// is (a seek, a rejoin or a reset since makes it stale); takes it off the books.
    fn answer_counts(&mut self, f: &Fetched) -> bool {
        let key = (f.topic.clone(), f.shard);
        match self.in_flight.current.get(&key) {
            Some((id, ..)) if *id == f.id => {
                self.in_flight.current.remove(&key);
            }
            _ => {
                // A replaced fetch has ended.
                if let Some(n) = self.in_flight.replaced.get_mut(&key) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.in_flight.replaced.remove(&key);
                    }
                }
                return false;
            }
        }
        let lanes_now = self.lanes.get(&key).copied();
        self.positions.get(&key) == Some(&f.offset) && (f.lanes.is_none() || f.lanes == lanes_now)
    }

    /// Buffers one shard's fetch response: whole batches for `poll_batches`, else
    /// decoded messages (with their lanes in priority order), skipping records below
    /// the position (or the lane's cursor) that was asked for.
    fn take_response(
        &mut self,
        f: &Fetched,
        body: ResponseBody,
        whole: bool,
        classes: &ClassMap,
    ) -> Result<()> {
        let (records, reported) = match body {
            ResponseBody::Fetch(r) => (r.records, None),
            ResponseBody::PriorityFetch(r) => (r.records, Some(r.cursors)),
            other => {
                return Err(ClientError::Protocol(format!(
                    "expected a fetch response, got {:?}",
                    other.api_key()
                )))
            }
        };
        let priority = self.config.order == DeliveryOrder::Priority;
        // One allocation per response; every message of it shares the name.
        let name: Arc<str> = f.topic.as_str().into();
        let records = records.to_bytes();
        if !whole {
            // Room for every record of the response at once, instead of growing the
            // buffer batch by batch (each growth copies every message buffered so
            // far). A count is trusted only as far as its batch's bytes can hold, and
            // the whole at most `RESERVE_MAX` (beyond that the buffer grows as it fills).
            const RESERVE_MAX: usize = 1 << 16;
            let n: usize = split_batches(records.clone())
                .filter_map(|b| b.ok())
                .filter_map(|b| {
                    let h = batch::BatchHeader::read(&b).ok()?;
                    (h.base_offset < f.limit)
                        .then(|| (h.record_count as usize).min(b.len() / batch::RECORD_MIN_BYTES))
                })
                .sum();
            self.buffered.reserve(n.min(RESERVE_MAX));
        }
        for b in split_batches(records) {
            let b = b?;
            // Names where the damage is, so that a reader can seek past it.
            let bad_at = |at: String, e: weir_protocol::DecodeError| {
                ClientError::Protocol(format!(
                    "bad batch at offset {at} of topic {} shard {}: {e}",
                    f.topic, f.shard
                ))
            };
            let header = batch::BatchHeader::read(&b)
                .map_err(|e| bad_at(format!("{} or after", f.offset), e))?;
            let bad = |e| bad_at(header.base_offset.to_string(), e);
            // The lane (from the header's priority) says which records are new; the
            // CRC and the records are checked by the decoding pass below.
            if header.base_offset >= f.limit {
                continue; // after a reshard's cut, waiting for the other shards
            }
            let lane = classes.class_of(header.priority).index();
            let from = f.lanes.map_or(f.offset, |l| l[lane]);
            if whole {
                let batch = Batch::parse(b).map_err(bad)?;
                let h = batch.header();
                let first = from.max(h.base_offset);
                if h.base_offset + u64::from(h.record_count) > first {
                    self.batches.push_back(ConsumedBatch {
                        topic: name.clone(),
                        shard: f.shard,
                        first,
                        body: BatchBody::Stored(batch),
                    });
                }
                continue;
            }
            // One pass checks the batch and decodes its records (a bad batch hands
            // none of them out).
            let before = self.buffered.len();
            let buffered = &mut self.buffered;
            let checked = batch::decode_records(&b, |r| {
                if r.offset >= from {
                    buffered.push_back(Message::from_record(&name, f.shard, r));
                }
            });
            if let Err(e) = checked {
                self.buffered.truncate(before);
                return Err(bad(e));
            }
            if priority {
                let added = self.buffered.len() - before;
                self.buffered_lanes
                    .extend(std::iter::repeat_n(lane as u8, added));
            }
        }
        // Lanes move as their messages are returned, and to where the broker says
        // their next batch is once all of this shard's messages have been returned.
        if let Some(mut reported) = reported {
            for c in &mut reported {
                *c = (*c).min(f.limit);
            }
            self.lane_floors
                .insert((f.topic.clone(), f.shard), reported);
        }
        Ok(())
    }

    /// The offset `reset` names for a shard with no (or an out-of-range) position.
    pub(super) async fn reset_position(&self, topic: &str, shard: u32) -> Result<u64> {
        let ts = match self.config.reset {
            OffsetReset::Earliest => EARLIEST_TIMESTAMP,
            OffsetReset::Latest => LATEST_TIMESTAMP,
        };
        let req = ListOffsetsRequest {
            topic: topic.to_string(),
            shard,
            timestamp_ms: ts,
        };
        Ok(expect_body!(self.client.call(req).await?, ListOffsets)?.offset)
    }
}

/// A shard's lane cursors for the next priority fetch; a position moved from outside
/// (seek, rejoin, reset) restarts every lane there.
fn lane_cursors(
    lanes: &mut std::collections::HashMap<(String, u32), [u64; CLASS_COUNT]>,
    topic: &str,
    shard: u32,
    offset: u64,
) -> [u64; CLASS_COUNT] {
    let lanes = lanes
        .entry((topic.to_string(), shard))
        .or_insert([offset; CLASS_COUNT]);
    if lanes.iter().copied().min() != Some(offset) {
        *lanes = [offset; CLASS_COUNT];
    }
    *lanes
}

/// A fetch by offset, or by lane cursors in priority order.
fn fetch_request(
    config: &ConsumerConfig,
    topic: &str,
    shard: u32,
    offset: u64,
    lanes: Lanes,
    wait: Duration,
) -> Request {
    let max_wait_ms = wait.as_millis() as u32;
    match lanes {
        Some(cursors) => PriorityFetchRequest {
            topic: topic.to_string(),
            shard,
            cursors: cursors.to_vec(),
            max_bytes: config.max_fetch_bytes,
            min_bytes: 1,
            max_wait_ms,
        }
        .into(),
        None => FetchRequest {
            topic: topic.to_string(),
            shard,
            offset,
            max_bytes: config.max_fetch_bytes,
            min_bytes: 1,
            max_wait_ms,
        }
        .into(),
    }
}

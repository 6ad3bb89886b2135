//! The lease window of each shard: which records are leased, waiting for their retry
//! time, ready again or done, and how new records are read into it. A lease takes the
//! records due again first, then new ones, a fair share per shard; the window never
//! grows past `queue_max_unacked_per_shard`, so a slow group cannot make the broker hold
//! more than that.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::time::delay_queue;
use weir_protocol::batch::{self, Batch, BatchBuilder, NewRecord, Record};
use weir_protocol::classes::Class;
use weir_protocol::messages::*;
use weir_protocol::ErrorCode;

use super::{QueueActor, C_LEASED, C_REDELIVERED};
use crate::clock::now_ms;
use crate::error::BrokerError;
use crate::queue::state_log::{Event, Failure, ShardRecovery};
use crate::topics::Topic;

/// Bytes read from a shard per look for new records.
const READ_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    LeaseExpiry {
        lease_id: u64,
    },
    RetryDue,
    /// A failed dead-letter write is tried again.
    DlqRetry,
}

#[derive(Debug)]
pub(super) enum EntryState {
    Leased { lease_id: u64 },
    Waiting,
    Ready,
    Dying,
}

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) class: Class,
    pub(super) failure: Failure,
    pub(super) state: EntryState,
    pub(super) timer: Option<delay_queue::Key>,
}

pub(super) struct ShardQueue {
    pub(super) floor: u64,
    pub(super) next: u64,
    pub(super) entries: BTreeMap<u64, Entry>,
    pub(super) done: BTreeSet<u64>,
    pub(super) ready: BTreeSet<u64>,
    /// From the state log: offsets at or above `next` already done, and failures of
    /// offsets not yet read back into the window.
    pub(super) recovered_done: BTreeSet<u64>,
    pub(super) recovered_failed: BTreeMap<u64, (Failure, i64)>,
    /// Set when this node holds no copy of the shard (a cluster): records come from
    /// its primary (`remote.rs`).
    pub(super) remote: Option<super::remote::RemoteFeed>,
}

impl ShardQueue {
    /// The window of a shard as the state log left it (`start`: its log start offset),
    /// and the FLOOR event to write when the log did not know the shard.
    pub(super) fn recovered(rec: &ShardRecovery, start: u64) -> (ShardQueue, Option<Event>) {
        let floor = if rec.known {
            rec.floor.max(start)
        } else {
            start
        };
        let sq = ShardQueue {
            floor,
            next: floor,
            entries: BTreeMap::new(),
            done: BTreeSet::new(),
            ready: BTreeSet::new(),
            recovered_done: rec.done.range(floor..).copied().collect(),
            recovered_failed: rec
                .failed
                .range(floor..)
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
            remote: None,
        };
        (sq, (!rec.known).then_some(Event::Floor { offset: floor }))
    }

    /// Records below `start` were deleted by retention: they leave the window.
    pub(super) fn skip_deleted(&mut self, start: u64) {
        if let Some(feed) = self.remote.as_mut() {
            feed.held.retain(|&o, _| o >= start);
            feed.buf.retain(|r| r.offset >= start);
        }
        self.entries = self.entries.split_off(&start);
        self.done = self.done.split_off(&start);
        self.ready = self.ready.split_off(&start);
        self.next = start;
        self.floor = self.floor.max(start);
    }

    /// Offsets already done at the floor move it at once.
    pub(super) fn skip_recovered_done(&mut self) {
        while self.recovered_done.remove(&self.floor) {
            self.floor += 1;
            self.next = self.floor;
        }
    }

    pub(super) fn advance_floor(&mut self) -> bool {
        let before = self.floor;
        while self.done.remove(&self.floor) {
            self.floor += 1;
        }
        self.floor != before
    }

    pub(super) fn mark_done(&mut self, offset: u64) {
        if let Some(feed) = self.remote.as_mut() {
            feed.held.remove(&offset);
        }
        self.entries.remove(&offset);
        self.ready.remove(&offset);
        if offset >= self.floor {
            self.done.insert(offset);
        }
        self.advance_floor();
    }
}

impl QueueActor {
    pub(super) fn lease_duration(&self, lease_ms: u32) -> Duration {
        if lease_ms == 0 {
            self.settings.default_lease
        } else {
            Duration::from_millis(u64::from(lease_ms)).min(self.settings.max_lease)
        }
    }

    pub(super) fn lease(
        &mut self,
        max: u32,
        lease_ms: u32,
    ) -> Result<Vec<LeasedMessage>, BrokerError> {
        let now = Instant::now();
        if let Some(s) = self.breaker.poll(now) {
            self.breaker_changed(s);
        }
        let want = self.breaker.admit(max, now);
        let lease = self.lease_duration(lease_ms);
        let mut out = Vec::new();
        // Retries first (oldest offset first per shard), round-robin over shards,
        // starting at a different shard each call so no shard is always served last.
        let n = self.shards.len();
        let first = self.rr % n.max(1);
        self.rr = self.rr.wrapping_add(1);
        'retries: loop {
            let mut any = false;
            for s in (0..n).map(|i| (first + i) % n) {
                if out.len() as u32 >= want {
                    break 'retries;
                }
                let Some(&offset) = self.shards[s].ready.iter().next() else {
                    continue;
                };
                any = true;
                self.shards[s].ready.remove(&offset);
                match self.record_at(s as u32, offset) {
                    Ok(rec) => out.push(self.grant(s as u32, rec, lease)),
                    Err(e) if e.code == ErrorCode::OffsetOutOfRange => {
                        self.lost(s as u32, offset, e)
                    }
                    Err(e) => {
                        // Keep it ready: a read error must not lose the record.
                        self.shards[s].ready.insert(offset);
                        if out.is_empty() {
                            return Err(e);
                        }
                        return Ok(out);
                    }
                }
            }
            if !any {
                break;
            }
        }
        // Then records never delivered: a fair share per shard first, then whatever
        // is left from any shard.
        let share = (want.saturating_sub(out.len() as u32)).div_ceil(n.max(1) as u32);
        for pass in 0..2 {
            for s in (0..n).map(|i| (first + i) % n) {
                let left = want.saturating_sub(out.len() as u32);
                if left == 0 {
                    break;
                }
                let quota = if pass == 0 { left.min(share) } else { left };
                self.read_new(s as u32, quota, lease, &mut out)?;
            }
        }
        Ok(out)
    }

    /// Reads forward from `next` on shard `s`, leasing up to `want` records.
    pub(super) fn read_new(
        &mut self,
        s: u32,
        want: u32,
        lease: Duration,
        out: &mut Vec<LeasedMessage>,
    ) -> Result<(), BrokerError> {
        if self.shards[s as usize].remote.is_some() {
            self.read_new_remote(s, want, lease, out);
            return Ok(());
        }
        let shard = self.topic.shards[s as usize].clone();
        let reader = shard.reader();
        let mut granted = 0u32;
        loop {
            let sq = &mut self.shards[s as usize];
            let start = reader.log_start_offset();
            if sq.next < start {
                tracing::warn!(group = %self.group, topic = %self.topic_name, shard = s, from = sq.next, to = start,
                    "records deleted by retention before they were done");
                sq.skip_deleted(start);
            }
            let hwm = reader.high_watermark();
            if granted >= want || sq.next >= hwm || sq.next - sq.floor >= self.settings.window {
                return Ok(());
            }
            let chunks = reader
                .read(sq.next, READ_BYTES)
                .map_err(|e| BrokerError::new(ErrorCode::StorageError, e.to_string()))?;
            if chunks.is_empty() {
                return Ok(());
            }
            let before = sq.next;
            'chunks: for chunk in chunks {
                for b in batch::split(chunk) {
                    let b = b
                        .and_then(Batch::parse)
                        .map_err(|e| BrokerError::new(ErrorCode::CorruptStorage, e.to_string()))?;
                    for rec in b.records() {
                        let sq = &mut self.shards[s as usize];
                        if rec.offset < sq.next {
                            continue;
                        }
                        if granted >= want || sq.next - sq.floor >= self.settings.window {
                            break 'chunks;
                        }
                        self.take_new(s, rec, want, lease, &mut granted, out);
                    }
                }
            }
            if self.shards[s as usize].next == before {
                return Ok(());
            }
        }
    }

    /// Takes record `rec` (never in the window before) of shard `s` into the window:
    /// done already (by the state log), failed before (back to its retry time), or
    /// leased now.
    pub(super) fn take_new(
        &mut self,
        s: u32,
        rec: Record,
        want: u32,
        lease: Duration,
        granted: &mut u32,
        out: &mut Vec<LeasedMessage>,
    ) {
        let sq = &mut self.shards[s as usize];
        let offset = rec.offset;
        sq.next = offset + 1;
        if sq.recovered_done.remove(&offset) {
            sq.mark_done(offset);
            return;
        }
        if let Some((failure, due_ms)) = sq.recovered_failed.remove(&offset) {
            let lease_now = (*granted < want).then_some(lease);
            if let Some(m) = self.resume_failed(s, rec, failure, due_ms, lease_now) {
                out.push(m);
                *granted += 1;
            }
            return;
        }
        out.push(self.grant(s, rec, lease));
        *granted += 1;
    }

    /// A record that failed before a restart comes back into the window: ready (and
    /// leased at once when `lease` is given) if its retry time has passed, else waiting
    /// for it.
    fn resume_failed(
        &mut self,
        s: u32,
        rec: Record,
        failure: Failure,
        due_ms: i64,
        lease: Option<Duration>,
    ) -> Option<LeasedMessage> {
        let offset = rec.offset;
        let class = self.settings.class_map.class_of(rec.priority);
        let wait = Duration::from_millis((due_ms - now_ms()).max(0) as u64);
        self.hold(s, &rec);
        self.shards[s as usize].entries.insert(
            offset,
            Entry {
                class,
                failure,
                state: EntryState::Waiting,
                timer: None,
            },
        );
        if wait.is_zero() {
            self.make_ready(s, offset);
            let lease = lease?;
            self.shards[s as usize].ready.remove(&offset);
            return Some(self.grant(s, rec, lease));
        }
        let key = self.timers.insert((s, offset, Timer::RetryDue), wait);
        if let Some(e) = self.shards[s as usize].entries.get_mut(&offset) {
            e.timer = Some(key);
        }
        None
    }

    /// The record at `offset` of shard `s`, from the window of a remote shard or the
    /// local copy.
    pub(super) fn record_at(&self, s: u32, offset: u64) -> Result<Record, BrokerError> {
        match &self.shards[s as usize].remote {
            Some(feed) => feed.held.get(&offset).cloned().ok_or_else(|| {
                BrokerError::new(
                    ErrorCode::OffsetOutOfRange,
                    format!("{}/{s}/{offset} is not held any more", self.topic_name),
                )
            }),
            None => read_record(&self.topic, s, offset),
        }
    }

    /// Leases one record (new or due again).
    pub(super) fn grant(&mut self, s: u32, rec: Record, lease: Duration) -> LeasedMessage {
        self.hold(s, &rec);
        let lease_id = self.next_lease.fetch_add(1, Ordering::Relaxed);
        let class = self.settings.class_map.class_of(rec.priority);
        let offset = rec.offset;
        let key = self
            .timers
            .insert((s, offset, Timer::LeaseExpiry { lease_id }), lease);
        let sq = &mut self.shards[s as usize];
        let entry = sq.entries.entry(offset).or_insert(Entry {
            class,
            failure: Failure::default(),
            state: EntryState::Waiting,
            timer: None,
        });
        if let Some(old) = entry.timer.take() {
            self.timers.try_remove(&old);
        }
        entry.timer = Some(key);
        entry.state = EntryState::Leased { lease_id };
        let attempt = entry.failure.failures + 1;
        self.counts[C_LEASED] += 1;
        self.metrics.leased.fetch_add(1, Ordering::Relaxed);
        if attempt > 1 {
            self.counts[C_REDELIVERED] += 1;
            self.metrics.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        LeasedMessage {
            shard: s,
            offset,
            lease_id,
            attempt,
            max_attempts: self.settings.policies[class.index()].max_attempts,
            class: class.index() as u8,
            lease_ms: lease.as_millis().min(u128::from(u32::MAX)) as u32,
            record: single_record_batch(&rec),
        }
    }

    /// A record that cannot be read any more (retention deleted it) is done.
    pub(super) fn lost(&mut self, s: u32, offset: u64, e: BrokerError) {
        self.dead_waiters.remove(&(s, offset));
        tracing::warn!(group = %self.group, topic = %self.topic_name, shard = s, offset, error = %e,
            "record cannot be read any more; dropping it from the queue");
        self.shards[s as usize].mark_done(offset);
    }

    pub(super) fn make_ready(&mut self, s: u32, offset: u64) {
        let sq = &mut self.shards[s as usize];
        if let Some(e) = sq.entries.get_mut(&offset) {
            e.state = EntryState::Ready;
            e.timer = None;
            sq.ready.insert(offset);
            self.shared.available.notify_waiters();
        }
    }

    /// The entry of `l` if `l` is its current lease.
    pub(super) fn current(&mut self, l: &LeaseRef) -> Option<&mut Entry> {
        let e = self
            .shards
            .get_mut(l.shard as usize)?
            .entries
            .get_mut(&l.offset)?;
        match e.state {
            EntryState::Leased { lease_id } if lease_id == l.lease_id => Some(e),
            _ => None,
        }
    }
}

/// Reads the record at `offset` of shard `s`.
pub fn read_record(topic: &Topic, s: u32, offset: u64) -> Result<Record, BrokerError> {
    let reader = topic.shard(s)?.reader();
    let chunks = reader.read(offset, 1).map_err(|e| {
        let code = match e {
            crate::storage::StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            _ => ErrorCode::StorageError,
        };
        BrokerError::new(code, e.to_string())
    })?;
    for chunk in chunks {
        for b in batch::split(chunk) {
            let b = b
                .and_then(Batch::parse)
                .map_err(|e| BrokerError::new(ErrorCode::CorruptStorage, e.to_string()))?;
            let found = b.records().find(|r| r.offset == offset);
            if let Some(r) = found {
                return Ok(r);
            }
        }
    }
    Err(BrokerError::new(
        ErrorCode::OffsetOutOfRange,
        format!("no record at {}/{s}/{offset}", topic.name),
    ))
}

/// The record re-encoded as a batch of one, `base_offset` stamped with its offset.
pub fn single_record_batch(rec: &Record) -> Bytes {
    let headers: Vec<(&str, &[u8])> = rec
        .headers
        .iter()
        .map(|h| (h.name.as_str(), h.value.as_ref()))
        .collect();
    let mut b = BatchBuilder::with_capacity(128 + rec.key.len() + rec.value.len());
    // The record came out of a validated batch, so it fits a batch again.
    let pushed = b.push(&NewRecord {
        priority: rec.priority,
        complexity: rec.complexity,
        timestamp_ms: rec.timestamp_ms,
        key: &rec.key,
        value: &rec.value,
        headers: &headers,
    });
    match pushed.and_then(|_| b.finish()) {
        Ok(bytes) => {
            let mut v = bytes.to_vec();
            batch::set_base_offset(&mut v, rec.offset);
            Bytes::from(v)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot re-encode a stored record");
            Bytes::new()
        }
    }
}

//! How a producer tells its callers that records were stored: the futures `send` and
//! `send_batch` return, and the waiter list each wire batch carries.
//!
//! A wire batch holds its waiters as runs: one entry per `send` record, and one entry
//! per run of consecutive records of one `send_batch` call, so acknowledging a batch of
//! 1,000 records from one call costs one lock and one wake, not 1,000.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::sync::oneshot;

use crate::error::{ClientError, Result};

/// Where an acknowledged record is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMetadata {
    pub shard: u32,
    pub offset: u64,
}

/// Resolves when the record is acknowledged at the producer's ack level (immediately
/// after sending for `acks=none`, with offset `u64::MAX`).
///
/// Every `send` record of one wire batch shares one completion ([`RecordSlot`]) and
/// knows its index in the batch, so a record costs a reference count, not a channel
/// of its own; a future dropped unpolled costs nothing more.
pub struct DeliveryFuture {
    inner: Delivery,
}

enum Delivery {
    /// Waiting for record `index` of the batch behind `slot`; `waker` is where this
    /// future's waker sits in the slot's list once it was polled.
    Pending {
        slot: Arc<RecordSlot>,
        index: u32,
        waker: Option<usize>,
    },
    /// Settled before it reached a batch (a record that can never be sent).
    Ready(Option<Result<RecordMetadata>>),
}

impl DeliveryFuture {
    /// Record `index` of the batch whose `send` records share `slot`.
    pub(crate) fn pending(slot: Arc<RecordSlot>, index: u32) -> DeliveryFuture {
        DeliveryFuture {
            inner: Delivery::Pending {
                slot,
                index,
                waker: None,
            },
        }
    }

    /// A record that failed before it reached a batch.
    pub(crate) fn failed(e: ClientError) -> DeliveryFuture {
        DeliveryFuture {
            inner: Delivery::Ready(Some(Err(e))),
        }
    }
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.inner {
            Delivery::Ready(r) => Poll::Ready(r.take().unwrap_or(Err(ClientError::Closed))),
            Delivery::Pending { slot, index, waker } => {
                let mut st = slot.state.lock().expect("record slot");
                match &mut *st {
                    SlotState::Stored { shard, base_offset } => {
                        let offset = match *base_offset {
                            u64::MAX => u64::MAX,
                            base => base + u64::from(*index),
                        };
                        Poll::Ready(Ok(RecordMetadata {
                            shard: *shard,
                            offset,
                        }))
                    }
                    SlotState::Failed(e) => Poll::Ready(Err(e.clone())),
                    SlotState::PerRecord(outcomes) => Poll::Ready(
                        outcomes
                            .get(*index as usize)
                            .cloned()
                            .unwrap_or(Err(ClientError::Closed)),
                    ),
                    SlotState::Pending(wakers) => {
                        match waker.and_then(|i| wakers.get_mut(i)) {
                            Some(w) if w.will_wake(cx.waker()) => {}
                            Some(w) => w.clone_from(cx.waker()),
                            None => {
                                *waker = Some(wakers.len());
                                wakers.push(cx.waker().clone());
                            }
                        }
                        Poll::Pending
                    }
                }
            }
        }
    }
}

/// The shared completion of the `send` records of one wire batch.
pub(crate) struct RecordSlot {
    state: Mutex<SlotState>,
}

enum SlotState {
    /// Wakers of the futures polled so far.
    Pending(Vec<Waker>),
    /// The batch was stored from `base_offset` (`u64::MAX` with `acks=none`).
    Stored {
        shard: u32,
        base_offset: u64,
    },
    Failed(ClientError),
    /// The batch's records were settled one by one (it was re-routed after a reshard:
    /// its records went to other batches, see [`Rerouted`]); index = record.
    PerRecord(Arc<Vec<Result<RecordMetadata>>>),
}

impl RecordSlot {
    fn new() -> Arc<RecordSlot> {
        Arc::new(RecordSlot {
            state: Mutex::new(SlotState::Pending(Vec::new())),
        })
    }

    /// Settles the slot once; later calls do nothing.
    fn settle(&self, outcome: SlotState) {
        let wakers = {
            let mut st = self.state.lock().expect("record slot");
            match &mut *st {
                SlotState::Pending(w) => {
                    let w = std::mem::take(w);
                    *st = outcome;
                    w
                }
                _ => return,
            }
        };
        for w in wakers {
            w.wake();
        }
    }
}

/// Consecutive records of one `send_batch` call stored together: offsets
/// `base_offset .. base_offset + count` of `shard` (`base_offset` is `u64::MAX` with
/// `acks=none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveredRange {
    /// The shard the records are stored in.
    pub shard: u32,
    /// Offset of the first record of the range.
    pub base_offset: u64,
    /// Records in the range.
    pub count: u32,
}

/// Where the records of one `send_batch` call are stored.
///
/// `ranges` is sorted by (shard, base offset). Records of one (shard, priority class)
/// keep their call order, so a call to one shard whose records share a class is stored
/// as consecutive ranges in call order (usually exactly one). Records of several
/// classes are split per class, and a class may be stored after another one sent
/// later in the call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchMetadata {
    /// Where the call's records are stored, sorted by (shard, base offset).
    pub ranges: Vec<DeliveredRange>,
}

impl BatchMetadata {
    /// Records acknowledged (the call's record count once it succeeded).
    pub fn record_count(&self) -> u64 {
        self.ranges.iter().map(|r| u64::from(r.count)).sum()
    }
}

/// Resolves once every record of one `send_batch` call is acknowledged or has failed:
/// `Ok` with where they are stored, or the first error. After an error some records of
/// the call (other shards or classes, or batches acknowledged before the failure) may
/// have been stored; none was stored twice.
pub struct BatchDeliveryFuture {
    pub(crate) rx: oneshot::Receiver<Result<BatchMetadata>>,
}

impl Future for BatchDeliveryFuture {
    type Output = Result<BatchMetadata>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed)))
    }
}

/// The shared completion of one `send_batch` call.
pub(crate) struct BatchShared {
    state: Mutex<BatchState>,
}

struct BatchState {
    /// Records not yet settled.
    remaining: u64,
    ranges: Vec<DeliveredRange>,
    error: Option<ClientError>,
    done: Option<oneshot::Sender<Result<BatchMetadata>>>,
}

impl BatchShared {
    /// A completion for `records` records and the future that waits for it.
    pub(crate) fn new(records: u64) -> (Arc<BatchShared>, BatchDeliveryFuture) {
        let (tx, rx) = oneshot::channel();
        let shared = Arc::new(BatchShared {
            state: Mutex::new(BatchState {
                remaining: records,
                ranges: Vec::new(),
                error: None,
                done: Some(tx),
            }),
        });
        if records == 0 {
            shared.finish(&mut shared.state.lock().expect("batch state"));
        }
        (shared, BatchDeliveryFuture { rx })
    }

    /// `count` records of the call were stored from `base_offset` of `shard`.
    pub(crate) fn stored(&self, shard: u32, base_offset: u64, count: u32) {
        let mut st = self.state.lock().expect("batch state");
        st.ranges.push(DeliveredRange {
            shard,
            base_offset,
            count,
        });
        st.remaining = st.remaining.saturating_sub(u64::from(count));
        self.finish(&mut st);
    }

    /// `count` records of the call failed with `e`.
    pub(crate) fn failed(&self, count: u64, e: &ClientError) {
        let mut st = self.state.lock().expect("batch state");
        st.error.get_or_insert_with(|| e.clone());
        st.remaining = st.remaining.saturating_sub(count);
        self.finish(&mut st);
    }

    fn finish(&self, st: &mut BatchState) {
        if st.remaining > 0 {
            return;
        }
        let Some(done) = st.done.take() else { return };
        let outcome = match st.error.take() {
            Some(e) => Err(e),
            None => {
                let mut ranges = std::mem::take(&mut st.ranges);
                ranges.sort_unstable_by_key(|r| (r.shard, r.base_offset));
                Ok(BatchMetadata { ranges })
            }
        };
        let _ = done.send(outcome);
    }
}

/// The waiters of one wire batch: the one slot its `send` records share (each future
/// knows its record's index), and runs of consecutive records of `send_batch` calls.
/// Dropped unsettled (its sender gone), every waiter learns `ClientError::Closed`.
#[derive(Default)]
pub(crate) struct Waiters {
    slot: Option<Arc<RecordSlot>>,
    /// (call, index in the batch of the run's first record, records).
    runs: Vec<(Arc<BatchShared>, u32, u32)>,
    /// Records re-routed here from an earlier batch: (its collector, index in this
    /// batch of the run's first record, index in the collector of it, records).
    forwards: Vec<(Arc<Rerouted>, u32, u32, u32)>,
}

/// The records of one wire batch that was taken back from its lane after a reshard
/// and whose records were placed again, each in the batch of its new shard: it
/// collects each record's outcome and, once all are in, settles the batch's original
/// waiters record by record.
pub(crate) struct Rerouted {
    state: Mutex<ReroutedState>,
    /// How many times these records were re-routed (bounds a loop of reshards).
    pub(crate) depth: u32,
}

struct ReroutedState {
    original: Option<Waiters>,
    outcomes: Vec<Option<Result<RecordMetadata>>>,
    remaining: usize,
}

impl Rerouted {
    /// A collector for `records` records whose batch had `original` waiters.
    pub(crate) fn new(original: Waiters, records: usize) -> Arc<Rerouted> {
        let depth = original
            .forwards
            .iter()
            .map(|f| f.0.depth)
            .max()
            .unwrap_or(0)
            + 1;
        Arc::new(Rerouted {
            state: Mutex::new(ReroutedState {
                original: Some(original),
                outcomes: vec![None; records],
                remaining: records,
            }),
            depth,
        })
    }

    /// Record `index` settled.
    pub(crate) fn settle(&self, index: u32, outcome: Result<RecordMetadata>) {
        let done = {
            let mut st = self.state.lock().expect("rerouted");
            let Some(slot) = st.outcomes.get_mut(index as usize) else {
                return;
            };
            if slot.is_some() {
                return;
            }
            *slot = Some(outcome);
            st.remaining -= 1;
            if st.remaining > 0 {
                return;
            }
            let outcomes: Vec<Result<RecordMetadata>> = std::mem::take(&mut st.outcomes)
                .into_iter()
                .map(|o| o.unwrap_or(Err(ClientError::Closed)))
                .collect();
            st.original.take().map(|w| (w, outcomes))
        };
        if let Some((waiters, outcomes)) = done {
            waiters.settle_each(outcomes);
        }
    }
}

impl Drop for Rerouted {
    fn drop(&mut self) {
        // Records never placed again (their new batches dropped) fail as closed.
        let st = self.state.get_mut().expect("rerouted");
        if let Some(w) = st.original.take() {
            w.fail(&ClientError::Closed);
        }
    }
}

impl Waiters {
    /// Adds record `index` of the batch, from `send`: the completion its future shares.
    pub(crate) fn push_record(&mut self) -> Arc<RecordSlot> {
        self.slot.get_or_insert_with(RecordSlot::new).clone()
    }

    /// Adds record `index` of the batch, from a `send_batch` call, extending the call's
    /// run when the batch's previous record came from the same call.
    pub(crate) fn push_run(&mut self, shared: &Arc<BatchShared>, index: u32) {
        if let Some((s, start, n)) = self.runs.last_mut() {
            if Arc::ptr_eq(s, shared) && *start + *n == index {
                *n += 1;
                return;
            }
        }
        self.runs.push((shared.clone(), index, 1));
    }

    /// Adds record `index` of the batch: record `from` of a re-routed batch.
    pub(crate) fn push_forward(&mut self, rerouted: &Arc<Rerouted>, index: u32, from: u32) {
        if let Some((r, start, first, n)) = self.forwards.last_mut() {
            if Arc::ptr_eq(r, rerouted) && *start + *n == index && *first + *n == from {
                *n += 1;
                return;
            }
        }
        self.forwards.push((rerouted.clone(), index, from, 1));
    }

    /// How many times the batch's re-routed records were re-routed already.
    pub(crate) fn reroute_depth(&self) -> u32 {
        self.forwards.iter().map(|f| f.0.depth).max().unwrap_or(0)
    }

    /// Whether no record waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.slot.is_none() && self.runs.is_empty() && self.forwards.is_empty()
    }

    /// Settles the batch record by record (index = record in the batch).
    fn settle_each(mut self, outcomes: Vec<Result<RecordMetadata>>) {
        let at = |i: u32| {
            outcomes
                .get(i as usize)
                .cloned()
                .unwrap_or(Err(ClientError::Closed))
        };
        for (shared, start, n) in std::mem::take(&mut self.runs) {
            for i in start..start + n {
                match at(i) {
                    Ok(m) => shared.stored(m.shard, m.offset, 1),
                    Err(e) => shared.failed(1, &e),
                }
            }
        }
        for (r, start, first, n) in std::mem::take(&mut self.forwards) {
            for j in 0..n {
                r.settle(first + j, at(start + j));
            }
        }
        if let Some(slot) = self.slot.take() {
            slot.settle(SlotState::PerRecord(Arc::new(outcomes)));
        }
    }

    /// The batch was stored from `base_offset` (`u64::MAX`: offsets unknown, acks=none).
    pub(crate) fn resolve(mut self, shard: u32, base_offset: u64) {
        for (shared, start, n) in std::mem::take(&mut self.runs) {
            let offset = match base_offset {
                u64::MAX => u64::MAX,
                base => base + u64::from(start),
            };
            shared.stored(shard, offset, n);
        }
        for (r, start, first, n) in std::mem::take(&mut self.forwards) {
            for j in 0..n {
                let offset = match base_offset {
                    u64::MAX => u64::MAX,
                    base => base + u64::from(start + j),
                };
                r.settle(first + j, Ok(RecordMetadata { shard, offset }));
            }
        }
        if let Some(slot) = self.slot.take() {
            slot.settle(SlotState::Stored { shard, base_offset });
        }
    }

    /// The batch failed with `e`.
    pub(crate) fn fail(mut self, e: &ClientError) {
        self.fail_all(e);
    }

    fn fail_all(&mut self, e: &ClientError) {
        for (shared, _, n) in std::mem::take(&mut self.runs) {
            shared.failed(u64::from(n), e);
        }
        for (r, _, first, n) in std::mem::take(&mut self.forwards) {
            for j in 0..n {
                r.settle(first + j, Err(e.clone()));
            }
        }
        if let Some(slot) = self.slot.take() {
            slot.settle(SlotState::Failed(e.clone()));
        }
    }
}

impl Drop for Waiters {
    fn drop(&mut self) {
        if !self.is_empty() {
            self.fail_all(&ClientError::Closed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now<T>(f: impl Future<Output = T>) -> T {
        futures_util::FutureExt::now_or_never(f).expect("settled")
    }

    /// A batch of two `send` records and a run of two `send_batch` records is taken
    /// back and its records placed again in two new batches (one stored, one failed):
    /// each original future gets its own record's outcome, and a record re-routed a
    /// second time settles through both collectors.
    #[test]
    fn rerouted_records_settle_their_original_futures_one_by_one() {
        let mut original = Waiters::default();
        let slot = original.push_record();
        let (f0, f1) = (
            DeliveryFuture::pending(slot.clone(), 0),
            DeliveryFuture::pending(slot, 1),
        );
        let (shared, call) = BatchShared::new(2);
        original.push_run(&shared, 2);
        original.push_run(&shared, 3);
        let first = Rerouted::new(original, 4);
        assert_eq!(first.depth, 1);
        // New batch A on shard 3 holds records 0 and 2 at indexes 5 and 6.
        let mut a = Waiters::default();
        a.push_forward(&first, 5, 0);
        a.push_forward(&first, 6, 2);
        // New batch B holds records 1 and 3, and is taken back again.
        let mut b = Waiters::default();
        b.push_forward(&first, 0, 1);
        b.push_forward(&first, 1, 3);
        assert_eq!(b.reroute_depth(), 1);
        let second = Rerouted::new(b, 2);
        assert_eq!(second.depth, 2);
        let mut c = Waiters::default();
        c.push_forward(&second, 0, 0);
        c.push_forward(&second, 1, 1);
        a.resolve(3, 100);
        c.resolve(1, 7);
        assert_eq!(
            now(f0).unwrap(),
            RecordMetadata {
                shard: 3,
                offset: 105
            }
        );
        assert_eq!(
            now(f1).unwrap(),
            RecordMetadata {
                shard: 1,
                offset: 7
            }
        );
        let m = now(call).unwrap();
        assert_eq!(m.record_count(), 2);
        assert_eq!(
            m.ranges,
            [
                DeliveredRange {
                    shard: 1,
                    base_offset: 8,
                    count: 1
                },
                DeliveredRange {
                    shard: 3,
                    base_offset: 106,
                    count: 1
                },
            ]
        );
    }

    /// A re-routed record that fails, or whose new batch is dropped, fails its
    /// original future (never left waiting).
    #[test]
    fn a_rerouted_record_that_fails_or_is_dropped_fails_its_future() {
        let mut original = Waiters::default();
        let slot = original.push_record();
        let (f0, f1) = (
            DeliveryFuture::pending(slot.clone(), 0),
            DeliveryFuture::pending(slot, 1),
        );
        let r = Rerouted::new(original, 2);
        let mut a = Waiters::default();
        a.push_forward(&r, 0, 0);
        let mut b = Waiters::default();
        b.push_forward(&r, 0, 1);
        drop(r);
        a.fail(&ClientError::Invalid("refused".into()));
        drop(b);
        assert!(matches!(now(f0), Err(ClientError::Invalid(_))));
        assert!(matches!(now(f1), Err(ClientError::Closed)));
    }
}

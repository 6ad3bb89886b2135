//! How a producer tells its callers that records were stored: the futures `send` and
//! `send_batch` return, and the waiter list each wire batch carries.
//!
//! A wire batch holds its waiters as runs: one entry per `send` record, and one entry
//! per run of consecutive records of one `send_batch` call, so acknowledging a batch of
//! 1,000 records from one call costs one lock and one wake, not 1,000.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

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
pub struct DeliveryFuture {
    pub(crate) rx: oneshot::Receiver<Result<RecordMetadata>>,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed)))
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

/// Who waits for some records of a wire batch, in record order.
pub(crate) enum Waiter {
    /// One record of `send`.
    Record(oneshot::Sender<Result<RecordMetadata>>),
    /// A run of consecutive records of one `send_batch` call.
    Run(Arc<BatchShared>, u32),
}

impl Waiter {
    fn records(&self) -> u32 {
        match self {
            Waiter::Record(_) => 1,
            Waiter::Run(_, n) => *n,
        }
    }
}

/// The waiters of one wire batch.
#[derive(Default)]
pub(crate) struct Waiters(Vec<Waiter>);

impl Waiters {
    /// Adds the next record of `send`.
    pub(crate) fn push_record(&mut self, tx: oneshot::Sender<Result<RecordMetadata>>) {
        self.0.push(Waiter::Record(tx));
    }

    /// Adds the next record of a `send_batch` call, extending the call's run when the
    /// previous record of this batch came from the same call.
    pub(crate) fn push_run(&mut self, shared: &Arc<BatchShared>) {
        if let Some(Waiter::Run(s, n)) = self.0.last_mut() {
            if Arc::ptr_eq(s, shared) {
                *n += 1;
                return;
            }
        }
        self.0.push(Waiter::Run(shared.clone(), 1));
    }

    /// Whether no record waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The batch was stored from `base_offset` (`u64::MAX`: offsets unknown, acks=none).
    pub(crate) fn resolve(self, shard: u32, base_offset: u64) {
        let mut index = 0u64;
        for w in self.0 {
            let offset = if base_offset == u64::MAX {
                u64::MAX
            } else {
                base_offset + index
            };
            index += u64::from(w.records());
            match w {
                Waiter::Record(tx) => {
                    let _ = tx.send(Ok(RecordMetadata { shard, offset }));
                }
                Waiter::Run(shared, n) => shared.stored(shard, offset, n),
            }
        }
    }

    /// The batch failed with `e`.
    pub(crate) fn fail(self, e: &ClientError) {
        for w in self.0 {
            match w {
                Waiter::Record(tx) => {
                    let _ = tx.send(Err(e.clone()));
                }
                Waiter::Run(shared, n) => shared.failed(u64::from(n), e),
            }
        }
    }
}

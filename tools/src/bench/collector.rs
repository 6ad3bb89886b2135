//! The other half of a producer: a task that awaits the SDK's delivery futures in the
//! order they complete and times them, so the sending loop never waits on an ack
//! (except for a free slot in closed loop's window).

use std::time::Instant;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use weir_client::{BatchDeliveryFuture, DeliveryFuture};

use super::report::{new_histogram, record_ns};
use super::timeline::Timeline;

/// One future the collector awaits, with what is needed to time it.
pub struct Pending {
    pub batch_start: Instant,
    /// (priority class, intended send time) of each record timed for per-class
    /// figures: at most the one record of a `send`, every record of a `send_batch`.
    pub classes: Vec<(usize, Instant)>,
    /// Records of the batch this future closes (0: not the last of its batch).
    pub batch_count: u64,
    pub measured: bool,
    pub fut: Delivery,
    /// Closed loop: the batch's slot in the producer's window, freed on its ack.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// The SDK future of one `send` or one `send_batch`.
pub enum Delivery {
    Record(DeliveryFuture),
    Batch(BatchDeliveryFuture),
}

impl Delivery {
    async fn wait(self) -> Result<(), weir_client::ClientError> {
        match self {
            Delivery::Record(f) => f.await.map(|_| ()),
            Delivery::Batch(f) => f.await.map(|_| ()),
        }
    }
}

/// What one producer's collector saw.
pub struct ProdStats {
    pub batches: Histogram<u64>,
    pub classes: [Histogram<u64>; 4],
    pub acked: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub last_ack: Option<Instant>,
    /// Measured batches by the time of their ack since `origin`, the run's start
    /// (see `timeline.rs`).
    pub timeline: Timeline,
    origin: Instant,
}

impl ProdStats {
    fn new(origin: Instant) -> Self {
        ProdStats {
            timeline: Timeline::counting("batches"),
            origin,
            batches: new_histogram(),
            classes: std::array::from_fn(|_| new_histogram()),
            acked: 0,
            errors: 0,
            first_error: None,
            last_ack: None,
        }
    }

    /// Times one completed delivery (counted only if it closes a measured batch).
    fn record(&mut self, p: &Timing, at: Instant, r: Result<(), weir_client::ClientError>) {
        match r {
            Ok(()) => {
                for (cl, start) in &p.classes {
                    record_ns(&mut self.classes[*cl], (at - *start).as_nanos() as u64);
                }
                if p.batch_count > 0 && p.measured {
                    let latency_ns = (at - p.batch_start).as_nanos() as u64;
                    record_ns(&mut self.batches, latency_ns);
                    let at_ns = at.saturating_duration_since(self.origin).as_nanos() as u64;
                    self.timeline.record(at_ns, latency_ns);
                    self.acked += p.batch_count;
                    self.last_ack = Some(self.last_ack.map_or(at, |l| l.max(at)));
                }
            }
            Err(e) => {
                self.errors += p.batch_count;
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// A [`Pending`] without its future and permit: what is left to time it by.
struct Timing {
    batch_start: Instant,
    classes: Vec<(usize, Instant)>,
    batch_count: u64,
    measured: bool,
}

/// Awaits a producer's delivery futures and times them, until the producer hangs up
/// and every future has completed; the timeline counts from `origin`.
pub async fn collect(mut rx: mpsc::UnboundedReceiver<Pending>, origin: Instant) -> ProdStats {
    let mut st = ProdStats::new(origin);
    let mut inflight = FuturesUnordered::new();
    let mut open = true;
    while open || !inflight.is_empty() {
        let done = tokio::select! {
            p = rx.recv(), if open => match p {
                None => { open = false; continue; }
                Some(p) => {
                    let meta = Timing {
                        batch_start: p.batch_start,
                        classes: p.classes,
                        batch_count: p.batch_count,
                        measured: p.measured,
                    };
                    let (fut, permit) = (p.fut, p.permit);
                    inflight.push(async move {
                        let r = fut.wait().await;
                        drop(permit);
                        (meta, Instant::now(), r)
                    });
                    continue;
                }
            },
            Some(d) = inflight.next(), if !inflight.is_empty() => d,
        };
        let (p, at, r) = done;
        st.record(&p, at, r);
    }
    st
}

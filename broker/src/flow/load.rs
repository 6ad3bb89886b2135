//! The load signal that drives shedding, from three measured quantities.
//!
//! ```text
//! load = max( pending_produce_bytes / flow_load_pending_bytes,
//!             memory_used_bytes     / flow_memory_bytes,
//!             produce_latency_ewma  / flow_load_latency_target_ms )
//! ```
//!
//! - *pending produce bytes*: records queued on shard writers and not yet acknowledged
//!   (the queue depth of the write path, in bytes, counted around the enqueue and the
//!   ack in the produce handler, so the shard writer needs no hooks);
//! - *memory used*: request bytes held under the broker-wide budget;
//! - *latency*: an exponentially weighted moving average of the time from enqueue to
//!   ack, updated every tick (100 ms) with that tick's mean (weight 0.3), and decayed by
//!   the same weight on ticks without acks, so it falls back once traffic stops.
//!
//! The largest ratio wins because any one saturated resource is overload; averaging
//! them would hide a full write queue behind idle memory. The value is in per mille
//! (1000 = at the reference), computed on demand from atomics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Weight of the newest tick in the latency average, in per mille.
const EWMA_WEIGHT_PERMILLE: u64 = 300;

/// Measured inputs of the load signal.
#[derive(Debug)]
pub struct LoadSignal {
    pending_bytes: AtomicU64,
    pending_reference: u64,
    latency_target_us: u64,
    latency_ewma_us: AtomicU64,
    tick_sum_us: AtomicU64,
    tick_count: AtomicU64,
}

impl LoadSignal {
    /// A signal with the two references (both > 0).
    pub fn new(pending_reference: u64, latency_target: Duration) -> Self {
        LoadSignal {
            pending_bytes: AtomicU64::new(0),
            pending_reference: pending_reference.max(1),
            latency_target_us: (latency_target.as_micros() as u64).max(1),
            latency_ewma_us: AtomicU64::new(0),
            tick_sum_us: AtomicU64::new(0),
            tick_count: AtomicU64::new(0),
        }
    }

    /// A produce of `bytes` was queued.
    pub fn enqueued(&self, bytes: u64) {
        self.pending_bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    /// A produce of `bytes` was answered; `latency` from enqueue to ack when it
    /// succeeded.
    pub fn finished(&self, bytes: u64, latency: Option<Duration>) {
        self.pending_bytes.fetch_sub(bytes, Ordering::AcqRel);
        if let Some(l) = latency {
            self.tick_sum_us
                .fetch_add(l.as_micros() as u64, Ordering::Relaxed);
            self.tick_count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Folds the last tick's acks into the latency average.
    pub fn tick(&self) {
        let n = self.tick_count.swap(0, Ordering::Relaxed);
        let sum = self.tick_sum_us.swap(0, Ordering::Relaxed);
        let sample = sum.checked_div(n).unwrap_or(0);
        let old = self.latency_ewma_us.load(Ordering::Relaxed);
        let new = (sample * EWMA_WEIGHT_PERMILLE + old * (1000 - EWMA_WEIGHT_PERMILLE)) / 1000;
        self.latency_ewma_us.store(new, Ordering::Relaxed);
    }

    /// Produce bytes queued and not yet acknowledged.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes.load(Ordering::Acquire)
    }

    /// The reference for pending bytes.
    pub fn pending_reference(&self) -> u64 {
        self.pending_reference
    }

    /// The latency average in µs.
    pub fn latency_ewma_us(&self) -> u64 {
        self.latency_ewma_us.load(Ordering::Relaxed)
    }

    /// The latency target in µs.
    pub fn latency_target_us(&self) -> u64 {
        self.latency_target_us
    }

    /// The load in per mille, given the memory budget's use.
    pub fn load_permille(&self, memory_used: u64, memory_total: u64) -> u32 {
        let ratio = |v: u64, r: u64| (u128::from(v) * 1000 / u128::from(r.max(1))) as u64;
        let l = ratio(self.pending_bytes(), self.pending_reference)
            .max(ratio(memory_used, memory_total))
            .max(ratio(self.latency_ewma_us(), self.latency_target_us));
        l.min(u64::from(u32::MAX)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_ratio_is_the_load() {
        let s = LoadSignal::new(1000, Duration::from_millis(100));
        assert_eq!(s.load_permille(0, 100), 0);
        s.enqueued(850);
        assert_eq!(s.load_permille(0, 100), 850);
        assert_eq!(s.load_permille(90, 100), 900);
        s.finished(850, None);
        assert_eq!(s.load_permille(10, 100), 100);
    }

    #[test]
    fn latency_average_rises_with_slow_acks_and_decays_without_traffic() {
        let s = LoadSignal::new(1 << 30, Duration::from_millis(100));
        for _ in 0..20 {
            s.enqueued(1);
            s.finished(1, Some(Duration::from_millis(200)));
            s.tick();
        }
        // Converges towards 200 ms = 2000 per mille of the 100 ms target.
        let high = s.load_permille(0, 1);
        assert!(high > 1900 && high <= 2000, "{high}");
        for _ in 0..20 {
            s.tick();
        }
        let low = s.load_permille(0, 1);
        assert!(low < 10, "{low}");
    }
}

//! The in-flight window of one producer lane: how many batches it keeps sent and
//! unacknowledged, sized from what the lane measures, as TCP's BBR sizes a congestion
//! window from the bottleneck rate and the round-trip time.
//!
//! A lane that keeps more batches in flight than the path needs gains no throughput:
//! the extra batches only queue (in the socket, in the broker) and every batch's
//! latency grows by their service time. The window is therefore
//!
//! ```text
//! window = floor(rate_max × fixed_latency_min / batch_bytes) + 2,  within 1 ..= max
//! ```
//!
//! - `rate_max`: the path's capacity: bytes acknowledged over the time spanned by a
//!   run of [`RATE_SPAN`] + 1 acknowledgements of batches each sent before its
//!   predecessor was acknowledged (so the path had work queued throughout and never
//!   paused). A span of several acknowledgements, not one gap, because the broker
//!   acknowledges a group commit's batches together. A lane with less to send than
//!   the path could take has no such runs and never lowers the estimate.
//! - `fixed_latency_min`: the least round-trip time of a batch minus its transfer time
//!   at `rate_max`, i.e. the part of a round trip no batch size removes (network
//!   and wake-up latency).
//! - `batch_bytes`: the mean size of the lane's recent batches.
//!
//! The first term is the bandwidth-delay product in batches; the `+ 2` is one batch
//! being transferred and one being prepared, so the path never idles while a
//! response is on its way. On loopback with 1 MB batches this gives 2; with small
//! batches or a long round trip it gives the configured maximum. Estimates are kept
//! for two periods of [`PERIOD`] (windowed maximum and minimum), so the window
//! follows a path that changes. Until both estimates exist the window is the maximum,
//! as a fixed window was before.
//!
//! Known limit: a window below the path's BDP understates the capacity (the path
//! pauses between the window's batches), hence the fixed latency, so on a path whose
//! round trip grew the window climbs about one batch per estimate period (1–2 s)
//! rather than at once; the `+ 2` is what lets it climb.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long an estimate lasts: a windowed max/min keeps the current and the previous
/// period's value.
pub(super) const PERIOD: Duration = Duration::from_secs(1);

/// How often a busy lane sends a batch alone to measure the fixed latency
/// (a tenth of [`PERIOD`]: enough samples for each period's minimum, at the cost of
/// one round trip with a single batch in flight per probe).
pub(super) const PROBE_EVERY: Duration = Duration::from_millis(100);

/// Back-to-back acknowledgements one capacity sample spans (beyond the first).
const RATE_SPAN: usize = 8;

/// The window the accumulator reads and the sender sets.
#[derive(Debug)]
pub(super) struct Window {
    current: AtomicUsize,
}

impl Window {
    /// A window at `max_in_flight_per_shard` until measurements size it.
    pub(super) fn new(config: &super::ProducerConfig) -> Window {
        Window {
            current: AtomicUsize::new(config.max_in_flight_per_shard.max(1)),
        }
    }

    /// Batches the lane may have in flight now.
    pub(super) fn get(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    pub(super) fn set(&self, n: usize) {
        self.current.store(n, Ordering::Relaxed);
    }
}

/// A windowed extreme: the best of this period's and the previous period's samples.
#[derive(Debug, Clone, Copy)]
struct Windowed {
    current: Option<f64>,
    previous: Option<f64>,
    since: Option<Instant>,
}

impl Windowed {
    const fn new() -> Windowed {
        Windowed {
            current: None,
            previous: None,
            since: None,
        }
    }

    fn add(&mut self, v: f64, now: Instant, better: fn(f64, f64) -> f64) {
        match self.since {
            Some(s) if now.duration_since(s) < PERIOD => {}
            _ => {
                self.previous = self.current.take();
                self.since = Some(now);
            }
        }
        self.current = Some(self.current.map_or(v, |c| better(c, v)));
    }

    fn get(&self, better: fn(f64, f64) -> f64) -> Option<f64> {
        match (self.current, self.previous) {
            (Some(a), Some(b)) => Some(better(a, b)),
            (a, b) => a.or(b),
        }
    }
}

/// What a lane's sender measures to size its window.
#[derive(Debug)]
pub(super) struct Estimator {
    max: usize,
    adaptive: bool,
    rate_max: Windowed,
    fixed_min: Windowed,
    /// Mean batch size (exponentially weighted, 1/8 per batch).
    batch_bytes: Option<f64>,
    /// When the previous batch was acknowledged.
    last_ack: Option<Instant>,
    /// The current run of back-to-back acknowledgements: (when, bytes), oldest first.
    run: [(Instant, u64); RATE_SPAN + 1],
    run_len: usize,
    /// When a batch last went out alone (its round trip had no queueing of the lane).
    last_alone: Option<Instant>,
    /// The lane holds one batch in flight until one goes out alone.
    probing: bool,
}

impl Estimator {
    /// `max`: the configured window; `adaptive`: whether to size below it.
    pub(super) fn new(max: usize, adaptive: bool) -> Estimator {
        Estimator {
            max: max.max(1),
            adaptive,
            rate_max: Windowed::new(),
            fixed_min: Windowed::new(),
            batch_bytes: None,
            last_ack: None,
            run: [(Instant::now(), 0); RATE_SPAN + 1],
            run_len: 0,
            last_alone: None,
            probing: false,
        }
    }

    /// A batch of `bytes` was acknowledged at `now`, `rtt` after it was sent; `alone`:
    /// it was sent while no other batch of the lane was in flight. Returns the window.
    ///
    /// The fixed latency is measured on batches sent alone only (a batch queued behind
    /// others of its lane measures the queue); a lane that has sent none for
    /// [`PROBE_EVERY`] holds one batch in flight until one goes out alone (as BBR's
    /// PROBE_RTT), which costs about one round trip of throughput per probe.
    pub(super) fn settled(
        &mut self,
        bytes: usize,
        rtt: Duration,
        alone: bool,
        now: Instant,
    ) -> usize {
        if !self.adaptive {
            return self.max;
        }
        let bytes_f = bytes as f64;
        self.batch_bytes = Some(match self.batch_bytes {
            Some(m) => m + (bytes_f - m) / 8.0,
            None => bytes_f,
        });
        // Sent before its predecessor was acknowledged: the path went from one to the
        // other without a pause.
        let sent = now.checked_sub(rtt).unwrap_or(now);
        let back_to_back = self.last_ack.is_some_and(|prev| sent < prev);
        if !back_to_back {
            self.run_len = 0;
        }
        if self.run_len == self.run.len() {
            self.run.copy_within(1.., 0);
            self.run_len -= 1;
        }
        self.run[self.run_len] = (now, bytes as u64);
        self.run_len += 1;
        if self.run_len == self.run.len() {
            let span = now.duration_since(self.run[0].0).as_secs_f64();
            let acked: u64 = self.run[1..].iter().map(|(_, b)| b).sum();
            if span > 0.0 {
                self.rate_max.add(acked as f64 / span, now, f64::max);
            }
        }
        self.last_ack = Some(now);
        let rate = self.rate_max.get(f64::max);
        match rate {
            // Without a rate the transfer time is unknown: the sample would count it
            // as fixed latency.
            Some(rate) if alone => {
                let fixed = (rtt.as_secs_f64() - bytes_f / rate).max(0.0);
                self.fixed_min.add(fixed, now, f64::min);
                self.last_alone = Some(now);
                self.probing = false;
            }
            Some(_) => {
                let stale = self
                    .last_alone
                    .is_none_or(|t| now.duration_since(t) >= PROBE_EVERY);
                self.probing |= stale;
            }
            None => {}
        }
        self.window()
    }

    /// The window the estimates give (the maximum until they exist).
    pub(super) fn window(&self) -> usize {
        if !self.adaptive {
            return self.max;
        }
        if self.probing {
            return 1;
        }
        let (Some(rate), Some(fixed), Some(bytes)) = (
            self.rate_max.get(f64::max),
            self.fixed_min.get(f64::min),
            self.batch_bytes,
        ) else {
            return self.max;
        };
        if bytes <= 0.0 {
            return self.max;
        }
        let bdp = rate * fixed / bytes;
        let w = if bdp.is_finite() {
            bdp.floor().min(self.max as f64) as usize + 2
        } else {
            self.max
        };
        w.clamp(1, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A lane that always has a batch waiting, on a path with `fixed_us` of round-trip
    /// latency and one server taking `service_us` per batch in order. Returns the
    /// window after `n` acknowledgements and the highest latency of the last half.
    fn simulate(
        est: &mut Estimator,
        start: Instant,
        n: usize,
        bytes: usize,
        service_us: f64,
        fixed_us: f64,
    ) -> (usize, f64) {
        let at = |us: f64| start + Duration::from_nanos((us * 1000.0) as u64);
        let mut now = 0.0f64;
        let mut server_free = 0.0f64;
        // (sent, ack, alone)
        let mut in_flight: VecDeque<(f64, f64, bool)> = VecDeque::new();
        let mut worst = 0.0f64;
        for i in 0..n {
            while in_flight.len() < est.window() {
                let alone = in_flight.is_empty();
                let begin = (now + fixed_us / 2.0).max(server_free);
                server_free = begin + service_us;
                in_flight.push_back((now, server_free + fixed_us / 2.0, alone));
            }
            let (sent, ack, alone) = in_flight.pop_front().expect("one in flight");
            now = ack;
            if i >= n / 2 {
                worst = worst.max(ack - sent);
            }
            let rtt = Duration::from_nanos(((ack - sent) * 1000.0) as u64);
            est.settled(bytes, rtt, alone, at(now));
        }
        (est.window(), worst)
    }

    #[test]
    fn large_batches_on_a_short_path_keep_two_in_flight() {
        // 1 MB per 500 µs (2 GB/s), 30 µs fixed: the BDP is 0.06 batches.
        let mut est = Estimator::new(5, true);
        assert_eq!(est.window(), 5, "the maximum until measured");
        let (w, worst) = simulate(&mut est, Instant::now(), 200, 1 << 20, 500.0, 30.0);
        assert_eq!(w, 2);
        // Two in flight: a batch waits for at most one other.
        assert!(worst <= 2.0 * 500.0 + 30.0 + 1.0, "worst {worst} µs");
    }

    #[test]
    fn small_batches_or_a_long_path_keep_more_in_flight() {
        let mut est = Estimator::new(5, true);
        let (w, _) = simulate(&mut est, Instant::now(), 200, 4096, 20.0, 200.0);
        assert_eq!(w, 5, "a BDP of 10 batches is capped at the maximum");
        // 1 MB per ms over a 3 ms path: the BDP is 3 batches, and 2 more.
        let mut est = Estimator::new(8, true);
        let (w, _) = simulate(&mut est, Instant::now(), 200, 1 << 20, 1000.0, 3000.0);
        assert_eq!(w, 5);
    }

    #[test]
    fn a_lane_that_never_keeps_the_path_busy_keeps_the_maximum() {
        let mut est = Estimator::new(5, true);
        let t = Instant::now();
        let mut w = 0;
        for i in 0..100u64 {
            let now = t + Duration::from_millis(i);
            w = est.settled(1 << 20, Duration::from_micros(600), true, now);
        }
        assert_eq!(
            w, 5,
            "no rate was measured, so nothing sizes the window down"
        );
    }

    #[test]
    fn acknowledgements_in_pairs_do_not_inflate_the_capacity() {
        // A broker that commits two batches at once: their acks come together, every
        // 1 ms for 2 MB (2 GB/s), with 30 µs of fixed latency and 5 in flight.
        let mut est = Estimator::new(5, true);
        let t = Instant::now();
        let mut w = 0;
        for i in 0..400u32 {
            let now = t + Duration::from_micros(u64::from(1000 * (i / 2) + 1000));
            let alone = i % 97 == 0;
            let rtt = if alone {
                Duration::from_micros(530)
            } else {
                Duration::from_micros(2500)
            };
            w = est.settled(1 << 20, rtt, alone, now);
        }
        assert_eq!(w, 2);
    }

    #[test]
    fn a_fixed_window_stays_fixed() {
        let mut est = Estimator::new(3, false);
        let (w, _) = simulate(&mut est, Instant::now(), 200, 1 << 20, 500.0, 30.0);
        assert_eq!(w, 3);
    }

    #[test]
    fn the_window_follows_a_path_that_grows_longer() {
        let mut est = Estimator::new(6, true);
        let t = Instant::now();
        assert_eq!(simulate(&mut est, t, 200, 1 << 20, 500.0, 30.0).0, 2);
        // Later the path has 2 ms of fixed latency. A window below the BDP measures
        // less than the capacity (and so less fixed latency), so the window climbs by
        // about a batch each time the old estimates age out, until it covers the new
        // BDP (4 batches, and 2): within some ten seconds of traffic.
        let later = t + PERIOD * 3;
        let (w, _) = simulate(&mut est, later, 12_000, 1 << 20, 500.0, 2000.0);
        assert_eq!(w, 6);
    }
}

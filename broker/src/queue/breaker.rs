//! The circuit breaker of one queue (a group consuming one topic).
//!
//! When most deliveries fail (nacks and expired leases), retrying them at full speed
//! only burns the consumers and whatever they call. The breaker watches the outcomes in
//! a sliding window (ten buckets); when the failure share passes a threshold with
//! enough samples it **opens**: no record is leased for `open` time, and records simply
//! wait in the log (nothing is dropped or dead-lettered by the breaker). Then it is
//! **half-open**: only a share of the requested records is leased; once enough of their
//! outcomes are in, it closes if the success share reaches `close_pct`, else it opens
//! again. Pure state machine driven by the queue task's clock; no I/O.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Breaker settings (from the `queue_breaker_*` config keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    pub enabled: bool,
    pub window: Duration,
    /// Opens when failures are more than this percentage of outcomes...
    pub failure_pct: u32,
    /// ...and there are at least this many outcomes in the window. Also the number of
    /// half-open outcomes needed to decide.
    pub min_samples: u32,
    pub open: Duration,
    /// Percentage of requested records leased while half-open.
    pub half_open_pct: u32,
    /// Closes when at least this percentage of half-open outcomes succeeded.
    pub close_pct: u32,
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open { until: Instant },
    HalfOpen,
}

impl State {
    /// Wire value (`BREAKER_CLOSED` / `_OPEN` / `_HALF_OPEN`).
    pub fn code(self) -> u8 {
        match self {
            State::Closed => weir_protocol::messages::BREAKER_CLOSED,
            State::Open { .. } => weir_protocol::messages::BREAKER_OPEN,
            State::HalfOpen => weir_protocol::messages::BREAKER_HALF_OPEN,
        }
    }

    /// `closed`, `open` or `half-open`.
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen => "half-open",
        }
    }
}

const BUCKETS: u32 = 10;

/// One breaker. See the module docs.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
    since: Instant,
    /// (bucket start, successes, failures), oldest first.
    buckets: VecDeque<(Instant, u32, u32)>,
    half_requested: u64,
    half_admitted: u64,
    half_ok: u32,
    half_failed: u32,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig, now: Instant) -> Breaker {
        Breaker {
            config,
            state: State::Closed,
            since: now,
            buckets: VecDeque::new(),
            half_requested: 0,
            half_admitted: 0,
            half_ok: 0,
            half_failed: 0,
        }
    }

    /// The current state (after applying the clock).
    pub fn state(&self) -> State {
        self.state
    }

    /// How long the breaker has been in its state.
    pub fn in_state_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.since)
    }

    /// When an open breaker turns half-open.
    pub fn reopens_at(&self) -> Option<Instant> {
        match self.state {
            State::Open { until } => Some(until),
            _ => None,
        }
    }

    /// Successes and failures in the window.
    pub fn window_counts(&self, now: Instant) -> (u32, u32) {
        let horizon = now.checked_sub(self.config.window);
        self.buckets
            .iter()
            .filter(|(t, _, _)| horizon.is_none_or(|h| *t >= h))
            .fold((0, 0), |(s, f), (_, bs, bf)| (s + bs, f + bf))
    }

    fn set(&mut self, state: State, now: Instant) -> Option<State> {
        if std::mem::discriminant(&state) == std::mem::discriminant(&self.state) {
            return None;
        }
        self.state = state;
        self.since = now;
        self.half_requested = 0;
        self.half_admitted = 0;
        self.half_ok = 0;
        self.half_failed = 0;
        if state == State::Closed {
            self.buckets.clear();
        }
        Some(state)
    }

    /// Applies the clock: an open breaker whose time is up turns half-open. Returns the
    /// new state when it changed.
    pub fn poll(&mut self, now: Instant) -> Option<State> {
        match self.state {
            State::Open { until } if now >= until => self.set(State::HalfOpen, now),
            _ => None,
        }
    }

    /// How many of `want` records may be leased now.
    pub fn admit(&mut self, want: u32, now: Instant) -> u32 {
        if !self.config.enabled {
            return want;
        }
        self.poll(now);
        match self.state {
            State::Closed => want,
            State::Open { .. } => 0,
            State::HalfOpen => {
                self.half_requested += u64::from(want);
                let share = (self.half_requested * u64::from(self.config.half_open_pct.min(100)))
                    .div_ceil(100);
                let allowed = share
                    .saturating_sub(self.half_admitted)
                    .min(u64::from(want));
                self.half_admitted += allowed;
                allowed as u32
            }
        }
    }

    /// Records one delivery's outcome. Returns the new state when it changed.
    pub fn record(&mut self, success: bool, now: Instant) -> Option<State> {
        if !self.config.enabled {
            return None;
        }
        self.poll(now);
        let width = self.config.window / BUCKETS;
        match self.buckets.back_mut() {
            Some((start, s, f)) if now.saturating_duration_since(*start) < width => {
                if success {
                    *s += 1
                } else {
                    *f += 1
                }
            }
            _ => self
                .buckets
                .push_back((now, u32::from(success), u32::from(!success))),
        }
        if let Some(h) = now.checked_sub(self.config.window) {
            while self.buckets.front().is_some_and(|(t, _, _)| *t < h) {
                self.buckets.pop_front();
            }
        }
        let min = self.config.min_samples.max(1);
        match self.state {
            State::Closed => {
                let (ok, failed) = self.window_counts(now);
                let total = ok + failed;
                if total >= min
                    && u64::from(failed) * 100
                        > u64::from(self.config.failure_pct) * u64::from(total)
                {
                    return self.set(
                        State::Open {
                            until: now + self.config.open,
                        },
                        now,
                    );
                }
                None
            }
            State::Open { .. } => None,
            State::HalfOpen => {
                if success {
                    self.half_ok += 1;
                } else {
                    self.half_failed += 1;
                }
                let total = self.half_ok + self.half_failed;
                let close = u64::from(self.config.close_pct.min(100));
                // Failures that already make the close share unreachable reopen early.
                let hopeless = u64::from(self.half_failed) * 100 > (100 - close) * u64::from(min);
                if hopeless {
                    return self.set(
                        State::Open {
                            until: now + self.config.open,
                        },
                        now,
                    );
                }
                if total >= min {
                    if u64::from(self.half_ok) * 100 >= close * u64::from(total) {
                        return self.set(State::Closed, now);
                    }
                    return self.set(
                        State::Open {
                            until: now + self.config.open,
                        },
                        now,
                    );
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            enabled: true,
            window: Duration::from_secs(60),
            failure_pct: 50,
            min_samples: 10,
            open: Duration::from_secs(30),
            half_open_pct: 10,
            close_pct: 90,
        }
    }

    #[test]
    fn opens_only_past_the_threshold_with_enough_samples() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config(), t0);
        // 9 failures: not enough samples.
        for _ in 0..9 {
            assert_eq!(b.record(false, t0), None);
        }
        assert_eq!(b.state(), State::Closed);
        let mut b = Breaker::new(config(), t0);
        // 10 successes and 10 failures: exactly 50%, not more.
        for _ in 0..10 {
            b.record(true, t0);
        }
        for _ in 0..10 {
            assert_eq!(b.record(false, t0), None);
        }
        assert_eq!(b.state(), State::Closed);
        assert!(matches!(b.record(false, t0), Some(State::Open { .. })));
        assert_eq!(b.admit(100, t0), 0);
    }

    #[test]
    fn old_outcomes_leave_the_window() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config(), t0);
        for _ in 0..9 {
            b.record(false, t0);
        }
        let later = t0 + Duration::from_secs(61);
        b.record(false, later);
        assert_eq!(b.state(), State::Closed, "the first 9 failures expired");
        assert_eq!(b.window_counts(later), (0, 1));
    }

    #[test]
    fn half_open_admits_a_share_then_closes_or_reopens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config(), t0);
        for _ in 0..10 {
            b.record(false, t0);
        }
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(b.poll(t1), Some(State::HalfOpen));
        // 10% of 100 requested records.
        let admitted: u32 = (0..10).map(|_| b.admit(10, t1)).sum();
        assert_eq!(admitted, 10);
        for _ in 0..9 {
            b.record(true, t1);
        }
        assert_eq!(b.record(true, t1), Some(State::Closed));
        assert_eq!(b.admit(100, t1), 100);

        // Reopen: two failures out of 10 cannot reach 90%.
        for _ in 0..10 {
            b.record(false, t1);
        }
        let t2 = t1 + Duration::from_secs(30);
        b.poll(t2);
        assert_eq!(b.state(), State::HalfOpen);
        b.record(false, t2);
        assert!(matches!(b.record(false, t2), Some(State::Open { .. })));
    }

    #[test]
    fn disabled_breaker_never_limits() {
        let t0 = Instant::now();
        let mut b = Breaker::new(
            BreakerConfig {
                enabled: false,
                ..config()
            },
            t0,
        );
        for _ in 0..100 {
            b.record(false, t0);
        }
        assert_eq!(b.admit(7, t0), 7);
    }
}

//! The circuit breaker state machine, shared by the broker (one per queue) and the SDK
//! (one per client), so both open, half-open and close by the same rules and are
//! configured with the same words.
//!
//! When most outcomes fail, trying again at full speed only burns whoever does the
//! work. The breaker counts successes and failures over a sliding `window` (ten
//! buckets, so an outcome leaves the window up to a tenth of it early). **Closed** →
//! **open** when the window holds at least `min_samples` outcomes and failures are
//! more than `failure_pct` percent of them. Open admits nothing for exactly
//! `open_for`, then the breaker is **half-open**: it admits `half_open_pct` percent of
//! what is asked for (counted over everything asked since it half-opened, the first
//! request always getting one through); after `half_open_samples` outcomes it closes
//! if at least `close_pct` percent succeeded and opens again otherwise, and it opens
//! again as soon as the failures make that share unreachable. Open never closes
//! without a half-open trial.
//!
//! What counts as an outcome is the user's business: the queue counts acks against
//! nacks and expired leases, the SDK counts calls that failed in a way that says the
//! broker is unwell. The time is an argument (`now`), so this is tested without
//! sleeping; there is no I/O, no runtime, no floating point.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::messages::{BREAKER_CLOSED, BREAKER_HALF_OPEN, BREAKER_OPEN};

/// Breaker settings. The broker reads them from the `queue_breaker_*` config keys (the
/// same names, durations in `_ms`), the SDK from `ClientConfig::breaker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// The sliding window over which outcomes are counted.
    pub window: Duration,
    /// Opens when failures are more than this percentage (0..=100) of the window...
    pub failure_pct: u32,
    /// ...and the window holds at least this many outcomes.
    pub min_samples: u32,
    /// How long it stays open.
    pub open_for: Duration,
    /// Percentage (1..=100) of what is asked for that is admitted while half-open.
    pub half_open_pct: u32,
    /// Half-open outcomes needed to decide between closing and opening again.
    pub half_open_samples: u32,
    /// Closes when at least this percentage (0..=100) of half-open outcomes succeeded.
    pub close_pct: u32,
}

impl Default for BreakerConfig {
    /// The SDK's defaults (the broker's come from its config, where
    /// `half_open_samples` is `queue_breaker_min_samples`).
    fn default() -> Self {
        BreakerConfig {
            window: Duration::from_secs(60),
            failure_pct: 50,
            min_samples: 20,
            open_for: Duration::from_secs(30),
            half_open_pct: 10,
            half_open_samples: 10,
            close_pct: 90,
        }
    }
}

/// The three states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Everything is admitted; outcomes are counted in the window.
    Closed,
    /// Nothing is admitted until `open_for` has passed.
    Open,
    /// A share is admitted; its outcomes decide.
    HalfOpen,
}

impl State {
    /// Wire value (`BREAKER_CLOSED` / `_OPEN` / `_HALF_OPEN` in QueueStatus and the
    /// `weir_queue_breaker_state` metric).
    pub fn code(self) -> u8 {
        match self {
            State::Closed => BREAKER_CLOSED,
            State::Open => BREAKER_OPEN,
            State::HalfOpen => BREAKER_HALF_OPEN,
        }
    }

    /// The state of a wire value; `None` for a value this version does not know.
    pub fn from_code(code: u8) -> Option<State> {
        match code {
            BREAKER_CLOSED => Some(State::Closed),
            BREAKER_OPEN => Some(State::Open),
            BREAKER_HALF_OPEN => Some(State::HalfOpen),
            _ => None,
        }
    }

    /// `closed`, `open` or `half_open`.
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// Buckets of the sliding window; also the most the window ever holds.
pub const BUCKETS: u32 = 10;

/// Outcomes of one sub-window.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    start: Instant,
    ok: u32,
    failed: u32,
}

/// One breaker. See the module docs.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
    /// When the breaker entered `state`.
    since: Instant,
    /// Outcomes, oldest first, at most `BUCKETS`. Counted in every state (what opened
    /// the breaker stays visible while it is open); emptied when it closes.
    buckets: VecDeque<Bucket>,
    /// Half-open: everything asked for, what was admitted, and the trial outcomes.
    half_requested: u64,
    half_admitted: u64,
    half_ok: u32,
    half_failed: u32,
    transitions: u64,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig, now: Instant) -> Breaker {
        Breaker {
            config,
            state: State::Closed,
            since: now,
            buckets: VecDeque::with_capacity(BUCKETS as usize),
            half_requested: 0,
            half_admitted: 0,
            half_ok: 0,
            half_failed: 0,
            transitions: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The state as of the last call that took a `now`.
    pub fn state(&self) -> State {
        self.state
    }

    /// The state at `now` without changing anything: an open breaker whose time is up
    /// reads as half-open (the next [`Breaker::poll`] makes it so).
    pub fn state_at(&self, now: Instant) -> State {
        match self.reopens_at() {
            Some(at) if now >= at => State::HalfOpen,
            _ => self.state,
        }
    }

    /// How long the breaker has been in its state.
    pub fn in_state_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.since)
    }

    /// When an open breaker turns half-open (`None` when closed or half-open, or when
    /// `open_for` is too long for the clock: then it stays open).
    pub fn reopens_at(&self) -> Option<Instant> {
        match self.state {
            State::Open => self.since.checked_add(self.config.open_for),
            _ => None,
        }
    }

    /// State changes so far.
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// Successes and failures in the window at `now`.
    pub fn window_counts(&self, now: Instant) -> (u32, u32) {
        self.buckets
            .iter()
            .filter(|b| self.in_window(b, now))
            .fold((0u32, 0u32), |(ok, failed), b| {
                (ok.saturating_add(b.ok), failed.saturating_add(b.failed))
            })
    }

    fn in_window(&self, bucket: &Bucket, now: Instant) -> bool {
        now.saturating_duration_since(bucket.start) < self.config.window
    }

    /// Applies the clock: an open breaker whose time is up turns half-open. Returns the
    /// new state when it changed.
    pub fn poll(&mut self, now: Instant) -> Option<State> {
        match self.reopens_at() {
            Some(at) if now >= at => self.go(State::HalfOpen, now),
            _ => None,
        }
    }

    /// How many of `want` may go ahead now: all when closed, none when open, the
    /// half-open share otherwise. Callers that log state changes call
    /// [`Breaker::poll`] first.
    pub fn admit(&mut self, want: u32, now: Instant) -> u32 {
        self.poll(now);
        match self.state {
            State::Closed => want,
            State::Open => 0,
            State::HalfOpen => {
                self.half_requested += u64::from(want);
                let pct = u64::from(self.config.half_open_pct.clamp(1, 100));
                let share = (self.half_requested * pct).div_ceil(100);
                let allowed = share
                    .saturating_sub(self.half_admitted)
                    .min(u64::from(want));
                self.half_admitted += allowed;
                allowed as u32
            }
        }
    }

    /// Records one outcome. Returns the new state when it changed.
    pub fn record(&mut self, success: bool, now: Instant) -> Option<State> {
        let polled = self.poll(now);
        self.count(success, now);
        let changed = match self.state {
            State::Closed => self.judge_window(now),
            State::Open => None,
            State::HalfOpen => self.judge_trial(success, now),
        };
        changed.or(polled)
    }

    /// Adds an outcome to the window, dropping buckets that left it.
    fn count(&mut self, success: bool, now: Instant) {
        while self
            .buckets
            .front()
            .is_some_and(|b| !self.in_window(b, now))
        {
            self.buckets.pop_front();
        }
        // Rounded up, so that BUCKETS buckets always span the whole window.
        let width_ns = self.config.window.as_nanos().div_ceil(u128::from(BUCKETS));
        let width = Duration::from_nanos(width_ns.min(u128::from(u64::MAX)) as u64);
        match self.buckets.back_mut() {
            Some(b) if now.saturating_duration_since(b.start) < width => {
                if success {
                    b.ok = b.ok.saturating_add(1);
                } else {
                    b.failed = b.failed.saturating_add(1);
                }
            }
            _ => self.buckets.push_back(Bucket {
                start: now,
                ok: u32::from(success),
                failed: u32::from(!success),
            }),
        }
        debug_assert!(self.buckets.len() <= BUCKETS as usize);
    }

    /// Closed: opens when the window holds enough outcomes and too many failed.
    fn judge_window(&mut self, now: Instant) -> Option<State> {
        let (ok, failed) = self.window_counts(now);
        let total = u64::from(ok) + u64::from(failed);
        let too_many = u64::from(failed) * 100 > u64::from(self.config.failure_pct) * total;
        if total >= u64::from(self.config.min_samples.max(1)) && too_many {
            return self.go(State::Open, now);
        }
        None
    }

    /// Half-open: closes or opens again once the trial outcomes decide.
    fn judge_trial(&mut self, success: bool, now: Instant) -> Option<State> {
        if success {
            self.half_ok += 1;
        } else {
            self.half_failed += 1;
        }
        let samples = u64::from(self.config.half_open_samples.max(1));
        let close_pct = u64::from(self.config.close_pct.min(100));
        // Failures that already make the close share unreachable open it again early.
        let hopeless = u64::from(self.half_failed) * 100 > (100 - close_pct) * samples;
        if hopeless {
            return self.go(State::Open, now);
        }
        let total = u64::from(self.half_ok) + u64::from(self.half_failed);
        if total >= samples {
            if u64::from(self.half_ok) * 100 >= close_pct * total {
                return self.go(State::Closed, now);
            }
            return self.go(State::Open, now);
        }
        None
    }

    fn go(&mut self, to: State, now: Instant) -> Option<State> {
        if to == self.state {
            return None;
        }
        debug_assert!(
            !(self.state == State::Open && to == State::Closed),
            "an open breaker closes only through a half-open trial"
        );
        self.state = to;
        self.since = now;
        self.transitions += 1;
        self.half_requested = 0;
        self.half_admitted = 0;
        self.half_ok = 0;
        self.half_failed = 0;
        if to == State::Closed {
            self.buckets.clear();
        }
        Some(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// The queue's defaults: half-open decides after `min_samples` outcomes.
    fn queue_config() -> BreakerConfig {
        BreakerConfig {
            window: 60 * S,
            failure_pct: 50,
            min_samples: 10,
            open_for: 30 * S,
            half_open_pct: 10,
            half_open_samples: 10,
            close_pct: 90,
        }
    }

    fn record_n(b: &mut Breaker, now: Instant, ok: u32, failed: u32) -> Option<State> {
        let mut last = None;
        for _ in 0..ok {
            last = b.record(true, now).or(last);
        }
        for _ in 0..failed {
            last = b.record(false, now).or(last);
        }
        last
    }

    #[test]
    fn opens_only_past_the_threshold_with_enough_samples() {
        let t0 = Instant::now();
        let mut b = Breaker::new(queue_config(), t0);
        // 9 failures: not enough samples.
        assert_eq!(record_n(&mut b, t0, 0, 9), None);
        assert_eq!(b.state(), State::Closed);
        // 10 successes and 10 failures: exactly 50 %, not more.
        let mut b = Breaker::new(queue_config(), t0);
        assert_eq!(record_n(&mut b, t0, 10, 10), None);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.record(false, t0), Some(State::Open));
        assert_eq!(b.admit(100, t0), 0);
        assert_eq!(b.reopens_at(), Some(t0 + 30 * S));
        // What opened it stays visible while open.
        assert_eq!(b.window_counts(t0), (10, 11));
    }

    #[test]
    fn the_sdk_defaults_open_after_twenty_failed_calls() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig::default(), t0);
        assert_eq!(record_n(&mut b, t0, 0, 19), None);
        assert_eq!(b.state_at(t0), State::Closed);
        assert_eq!(b.record(false, t0), Some(State::Open));
        assert_eq!(b.reopens_at(), Some(t0 + 30 * S));
    }

    #[test]
    fn old_outcomes_leave_the_window() {
        let t0 = Instant::now();
        let mut b = Breaker::new(queue_config(), t0);
        record_n(&mut b, t0, 0, 9);
        let later = t0 + 61 * S;
        b.record(false, later);
        assert_eq!(b.state(), State::Closed, "the first 9 failures expired");
        assert_eq!(b.window_counts(later), (0, 1));
        // An outcome exactly one window old is out.
        assert_eq!(b.window_counts(later + 60 * S), (0, 0));
        assert_eq!(
            b.window_counts(later + 60 * S - Duration::from_nanos(1)),
            (0, 1)
        );
    }

    #[test]
    fn half_open_admits_a_share_then_closes_or_reopens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(queue_config(), t0);
        record_n(&mut b, t0, 0, 10);
        assert_eq!(b.poll(t0 + 30 * S - Duration::from_nanos(1)), None);
        let t1 = t0 + 30 * S;
        assert_eq!(b.state_at(t1), State::HalfOpen);
        assert_eq!(b.state(), State::Open, "state_at changes nothing");
        assert_eq!(b.poll(t1), Some(State::HalfOpen));
        // 10 % of 100 requested records.
        let admitted: u32 = (0..10).map(|_| b.admit(10, t1)).sum();
        assert_eq!(admitted, 10);
        assert_eq!(record_n(&mut b, t1, 9, 0), None);
        assert_eq!(b.record(true, t1), Some(State::Closed));
        assert_eq!(b.window_counts(t1), (0, 0), "closing starts a new window");
        assert_eq!(b.admit(100, t1), 100);

        // Reopen: two failures out of 10 cannot reach 90 %.
        record_n(&mut b, t1, 0, 10);
        let t2 = t1 + 30 * S;
        b.poll(t2);
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(b.record(false, t2), None);
        assert_eq!(b.record(false, t2), Some(State::Open));
        assert_eq!(b.state_at(t2 + 29 * S), State::Open);
        assert_eq!(b.state_at(t2 + 30 * S), State::HalfOpen);
        assert_eq!(b.transitions(), 6);
    }

    #[test]
    fn half_open_lets_the_first_single_request_through_then_one_in_ten() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig::default(), t0);
        record_n(&mut b, t0, 0, 20);
        let t1 = t0 + 30 * S;
        let admitted: Vec<usize> = (0..100).filter(|_| b.admit(1, t1) == 1).collect();
        assert_eq!(admitted, vec![0, 10, 20, 30, 40, 50, 60, 70, 80, 90]);
        // 9 of 10 trial calls succeed: closed.
        assert_eq!(record_n(&mut b, t1, 9, 0), None);
        assert_eq!(b.record(false, t1), Some(State::Closed));
        assert_eq!(b.admit(1, t1), 1);
        assert_eq!(b.transitions(), 3);
    }

    #[test]
    fn an_outcome_after_the_open_time_is_a_trial() {
        let t0 = Instant::now();
        let mut b = Breaker::new(queue_config(), t0);
        record_n(&mut b, t0, 0, 10);
        // Recorded while open: counted in the window, decides nothing.
        assert_eq!(record_n(&mut b, t0 + S, 20, 0), None);
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.record(false, t0 + 30 * S), Some(State::HalfOpen));
        assert_eq!(b.record(false, t0 + 30 * S), Some(State::Open));
    }

    #[test]
    fn wire_codes_and_names() {
        for s in [State::Closed, State::Open, State::HalfOpen] {
            assert_eq!(State::from_code(s.code()), Some(s));
        }
        assert_eq!(
            (
                State::Closed.code(),
                State::Open.code(),
                State::HalfOpen.code()
            ),
            (0, 1, 2)
        );
        assert_eq!(State::from_code(3), None);
        assert_eq!(State::HalfOpen.name(), "half_open");
    }
}

//! Flow control in the SDK: what a producer does when it cannot send now
//! ([`Backpressure`]), and a [`CircuitBreaker`] that stops calling a broker that keeps
//! failing.
//!
//! **Backpressure.** A producer meets back-pressure in two places: its own queue is
//! full (`max_queued_records`), or the broker refused a batch with THROTTLED or SHED
//! (or the breaker is open) and said when to come back (`retry_after_ms`). The
//! producer's [`Backpressure`] policy decides for both: wait as long as it takes, wait
//! up to a bound, or fail at once so the application can decide (drop, spill, degrade).
//! Waiting on THROTTLED/SHED never uses up the producer's `retries`, which are for
//! failures, and it always waits at least the broker's `retry_after_ms`.
//!
//! **Circuit breaker.** A pure state machine that takes the time as an argument, so it
//! is tested without sleeping; [`crate::Client`] wraps every call in it when
//! `ClientConfig::breaker` is set. Closed → Open when, over the last `window`, at
//! least `min_calls` calls were made and more than `failure_rate` of them failed.
//! Open refuses every call (`ClientError::CircuitOpen`, with the time left) for
//! `open_for`. Then HalfOpen lets `half_open_share` of calls through; after
//! `half_open_calls` of those, it closes if at least `close_success_rate` succeeded and
//! opens again otherwise. Only failures that say the broker is unwell count: I/O
//! errors, timeouts, and UNKNOWN, STORAGE_ERROR, REQUEST_TIMED_OUT, SHUTTING_DOWN. A
//! refusal of a bad request (UNKNOWN_TOPIC ...) is the broker working, and THROTTLED or
//! SHED is the broker protecting itself, handled by [`Backpressure`]; neither counts.
//! The breaker is off by default: a client that must ride out a broker restart (the
//! producer's retries do that) would otherwise be refused for `open_for` after it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use weir_protocol::ErrorCode;

use crate::error::ClientError;

/// What a producer does when it cannot send now; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backpressure {
    /// Wait as long as it takes (honouring every `retry_after_ms`).
    Block,
    /// Wait, but fail a record or batch that has waited longer than this in total.
    BlockFor(Duration),
    /// Fail at once with the broker's error (or `ClientError::QueueFull`).
    FailFast,
}

impl Default for Backpressure {
    fn default() -> Self {
        Backpressure::BlockFor(Duration::from_secs(30))
    }
}

/// What to do with a batch the broker pushed back on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushback {
    /// Not back-pressure: the ordinary retry rules apply.
    No,
    /// Send it again after this long, without using up a retry.
    Wait(Duration),
    /// Fail it with the broker's error.
    GiveUp,
}

/// The error's retry hint when it is back-pressure (THROTTLED, SHED, breaker open).
pub fn pushback_hint(e: &ClientError) -> Option<Duration> {
    match e {
        ClientError::Broker {
            code: ErrorCode::Throttled | ErrorCode::Shed,
            retry_after_ms,
            ..
        } => Some(Duration::from_millis(u64::from(*retry_after_ms))),
        ClientError::CircuitOpen { retry_after_ms } => Some(Duration::from_millis(*retry_after_ms)),
        _ => None,
    }
}

/// Applies `policy` to a failed send. `since` is when this batch was first pushed back
/// (set here on the first push-back).
pub fn pushback(
    policy: Backpressure,
    e: &ClientError,
    since: &mut Option<Instant>,
    now: Instant,
) -> Pushback {
    let Some(hint) = pushback_hint(e) else {
        return Pushback::No;
    };
    let wait = hint.max(Duration::from_millis(1));
    match policy {
        Backpressure::FailFast => Pushback::GiveUp,
        Backpressure::Block => Pushback::Wait(wait),
        Backpressure::BlockFor(limit) => {
            let first = *since.get_or_insert(now);
            if now.saturating_duration_since(first) + wait > limit {
                Pushback::GiveUp
            } else {
                Pushback::Wait(wait)
            }
        }
    }
}

/// Settings of a [`CircuitBreaker`]; the defaults are those of the design.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Open when more than this share of calls in the window failed.
    pub failure_rate: f64,
    /// The sliding window over which the failure rate is measured.
    pub window: Duration,
    /// Fewest calls in the window before the rate is trusted.
    pub min_calls: u32,
    /// How long the breaker stays open.
    pub open_for: Duration,
    /// Share of calls let through while half-open.
    pub half_open_share: f64,
    /// Trial calls needed to decide while half-open.
    pub half_open_calls: u32,
    /// Close again when at least this share of the trial calls succeeded.
    pub close_success_rate: f64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_rate: 0.5,
            window: Duration::from_secs(60),
            min_calls: 20,
            open_for: Duration::from_secs(30),
            half_open_share: 0.1,
            half_open_calls: 10,
            close_success_rate: 0.9,
        }
    }
}

/// The three states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// Sub-windows of the sliding window.
const SLOTS: u32 = 10;

#[derive(Debug, Clone, Copy)]
struct Slot {
    start: Instant,
    ok: u32,
    failed: u32,
}

/// The breaker's state machine; see the module docs.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: BreakerState,
    /// Closed: outcomes per sub-window, oldest first (at most `SLOTS` + 1).
    slots: VecDeque<Slot>,
    /// Open: until when.
    open_until: Option<Instant>,
    /// HalfOpen: share accumulator (per mille) and trial outcomes.
    accumulator: u32,
    trial_ok: u32,
    trial_failed: u32,
    transitions: u64,
}

/// A call the breaker refused, with the time until it may let calls through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub retry_after: Duration,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreaker {
            config,
            state: BreakerState::Closed,
            slots: VecDeque::new(),
            open_until: None,
            accumulator: 0,
            trial_ok: 0,
            trial_failed: 0,
            transitions: 0,
        }
    }

    /// The state at `now` (an open breaker whose time is up reads as half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match (self.state, self.open_until) {
            (BreakerState::Open, Some(t)) if now >= t => BreakerState::HalfOpen,
            (s, _) => s,
        }
    }

    /// State changes so far.
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    fn go(&mut self, to: BreakerState, now: Instant) {
        self.transitions += 1;
        self.state = to;
        self.slots.clear();
        self.trial_ok = 0;
        self.trial_failed = 0;
        match to {
            BreakerState::Open => self.open_until = Some(now + self.config.open_for),
            BreakerState::HalfOpen => {
                self.open_until = None;
                // The first call after the open period goes through.
                self.accumulator = 1000;
            }
            BreakerState::Closed => self.open_until = None,
        }
    }

    /// Asks to make a call at `now`; returns the state change it caused, if any.
    pub fn admit(&mut self, now: Instant) -> (Result<(), Refused>, Option<BreakerState>) {
        let mut changed = None;
        if self.state(now) == BreakerState::HalfOpen && self.state == BreakerState::Open {
            self.go(BreakerState::HalfOpen, now);
            changed = Some(BreakerState::HalfOpen);
        }
        let r = match self.state {
            BreakerState::Closed => Ok(()),
            BreakerState::Open => Err(Refused {
                retry_after: self
                    .open_until
                    .map_or(Duration::ZERO, |t| t.saturating_duration_since(now)),
            }),
            BreakerState::HalfOpen => {
                if self.accumulator >= 1000 {
                    self.accumulator -= 1000;
                    Ok(())
                } else {
                    let share = (self.config.half_open_share.clamp(0.0, 1.0) * 1000.0) as u32;
                    self.accumulator += share.max(1);
                    Err(Refused {
                        retry_after: Duration::from_millis(100),
                    })
                }
            }
        };
        (r, changed)
    }

    /// Records the outcome of an admitted call; returns the state change, if any.
    pub fn record(&mut self, now: Instant, success: bool) -> Option<BreakerState> {
        match self.state {
            BreakerState::Open => None,
            BreakerState::HalfOpen => {
                if success {
                    self.trial_ok += 1;
                } else {
                    self.trial_failed += 1;
                }
                let n = self.config.half_open_calls.max(1);
                // Successes needed among n trials (the epsilon keeps 10 × 0.9 at 9).
                let needed = (f64::from(n) * self.config.close_success_rate - 1e-9).ceil();
                let allowed_failures = n.saturating_sub(needed.max(0.0) as u32);
                if self.trial_failed > allowed_failures {
                    self.go(BreakerState::Open, now);
                    Some(BreakerState::Open)
                } else if self.trial_ok + self.trial_failed >= n {
                    self.go(BreakerState::Closed, now);
                    Some(BreakerState::Closed)
                } else {
                    None
                }
            }
            BreakerState::Closed => {
                let slot_len = self.config.window / SLOTS;
                while self
                    .slots
                    .front()
                    .is_some_and(|s| now.saturating_duration_since(s.start) >= self.config.window)
                {
                    self.slots.pop_front();
                }
                match self.slots.back_mut() {
                    Some(s) if now.saturating_duration_since(s.start) < slot_len => {
                        if success {
                            s.ok += 1
                        } else {
                            s.failed += 1
                        }
                    }
                    _ => self.slots.push_back(Slot {
                        start: now,
                        ok: u32::from(success),
                        failed: u32::from(!success),
                    }),
                }
                let (ok, failed) = self.slots.iter().fold((0u64, 0u64), |(o, f), s| {
                    (o + u64::from(s.ok), f + u64::from(s.failed))
                });
                let total = ok + failed;
                if total >= u64::from(self.config.min_calls)
                    && failed as f64 > self.config.failure_rate * total as f64
                {
                    self.go(BreakerState::Open, now);
                    Some(BreakerState::Open)
                } else {
                    None
                }
            }
        }
    }
}

/// Whether an outcome counts as a failure of the broker for the breaker.
pub fn is_breaker_failure(e: &ClientError) -> bool {
    match e {
        ClientError::Io(_) | ClientError::Timeout(_) | ClientError::Protocol(_) => true,
        ClientError::Broker { code, .. } => matches!(
            code,
            ErrorCode::Unknown
                | ErrorCode::StorageError
                | ErrorCode::RequestTimedOut
                | ErrorCode::ShuttingDown
        ),
        _ => false,
    }
}

/// A [`CircuitBreaker`] shared by a client's callers, logging its state changes.
#[derive(Debug)]
pub struct SharedBreaker {
    inner: std::sync::Mutex<CircuitBreaker>,
}

impl SharedBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        SharedBreaker {
            inner: std::sync::Mutex::new(CircuitBreaker::new(config)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CircuitBreaker> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a call now or refuses it with `ClientError::CircuitOpen`.
    pub fn admit(&self) -> Result<(), ClientError> {
        let (r, changed) = self.lock().admit(Instant::now());
        log_change(changed);
        r.map_err(|r| ClientError::CircuitOpen {
            retry_after_ms: r.retry_after.as_millis().max(1) as u64,
        })
    }

    /// Records an admitted call's outcome.
    pub fn record<T>(&self, outcome: &Result<T, ClientError>) {
        let success = !matches!(outcome, Err(e) if is_breaker_failure(e));
        let changed = self.lock().record(Instant::now(), success);
        log_change(changed);
    }

    /// The state now.
    pub fn state(&self) -> BreakerState {
        self.lock().state(Instant::now())
    }

    /// State changes so far.
    pub fn transitions(&self) -> u64 {
        self.lock().transitions()
    }
}

fn log_change(changed: Option<BreakerState>) {
    match changed {
        Some(BreakerState::Open) => {
            tracing::warn!("circuit breaker opened: the broker keeps failing; calls are refused")
        }
        Some(BreakerState::HalfOpen) => {
            tracing::info!("circuit breaker half-open: letting a share of calls through")
        }
        Some(BreakerState::Closed) => tracing::info!("circuit breaker closed: calls flow again"),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn record_n(
        b: &mut CircuitBreaker,
        now: Instant,
        ok: u32,
        failed: u32,
    ) -> Option<BreakerState> {
        let mut last = None;
        for _ in 0..ok {
            last = b.record(now, true).or(last);
        }
        for _ in 0..failed {
            last = b.record(now, false).or(last);
        }
        last
    }

    #[test]
    fn opens_over_half_failures_with_enough_calls_only() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(BreakerConfig::default());
        // 19 calls, all failed: below min_calls.
        assert_eq!(record_n(&mut b, t0, 0, 19), None);
        assert_eq!(b.state(t0), BreakerState::Closed);
        assert_eq!(b.record(t0, false), Some(BreakerState::Open));
        assert_eq!(
            b.admit(t0).0,
            Err(Refused {
                retry_after: 30 * S
            })
        );
        // Exactly 50 % failed is not "more than 50 %".
        let mut b = CircuitBreaker::new(BreakerConfig::default());
        assert_eq!(record_n(&mut b, t0, 10, 10), None);
        assert_eq!(b.record(t0, false), Some(BreakerState::Open));
    }

    #[test]
    fn old_outcomes_leave_the_window() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(BreakerConfig::default());
        record_n(&mut b, t0, 0, 15);
        // A minute later the 15 failures are gone: 15 more do not open it.
        let t1 = t0 + 61 * S;
        assert_eq!(record_n(&mut b, t1, 10, 10), None);
        assert_eq!(b.state(t1), BreakerState::Closed);
    }

    #[test]
    fn half_open_lets_a_tenth_through_and_closes_at_ninety_percent() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(BreakerConfig::default());
        record_n(&mut b, t0, 0, 20);
        assert!(b.admit(t0 + 29 * S).0.is_err());
        let t1 = t0 + 30 * S;
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        // Over 100 attempts, 10 get through (the first one among them).
        let (first, changed) = b.admit(t1);
        assert!(first.is_ok());
        assert_eq!(changed, Some(BreakerState::HalfOpen));
        let admitted = 1 + (1..100).filter(|_| b.admit(t1).0.is_ok()).count();
        assert_eq!(admitted, 10);
        // 9 of 10 trial calls succeed: closed.
        assert_eq!(record_n(&mut b, t1, 9, 0), None);
        assert_eq!(b.record(t1, false), Some(BreakerState::Closed));
        assert!(b.admit(t1).0.is_ok());
        assert_eq!(b.transitions(), 3);
    }

    #[test]
    fn a_second_trial_failure_reopens() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(BreakerConfig::default());
        record_n(&mut b, t0, 0, 20);
        let t1 = t0 + 30 * S;
        assert!(b.admit(t1).0.is_ok());
        assert_eq!(b.record(t1, false), None);
        assert_eq!(b.record(t1, false), Some(BreakerState::Open));
        assert_eq!(b.state(t1 + 29 * S), BreakerState::Open);
        assert_eq!(b.state(t1 + 30 * S), BreakerState::HalfOpen);
    }

    #[test]
    fn which_errors_count() {
        assert!(is_breaker_failure(&ClientError::Io("reset".into())));
        assert!(is_breaker_failure(&ClientError::Timeout(5)));
        let broker = |code| ClientError::Broker {
            code,
            message: String::new(),
            retry_after_ms: 10,
        };
        assert!(is_breaker_failure(&broker(ErrorCode::StorageError)));
        assert!(!is_breaker_failure(&broker(ErrorCode::UnknownTopic)));
        assert!(!is_breaker_failure(&broker(ErrorCode::Throttled)));
        assert!(!is_breaker_failure(&broker(ErrorCode::Shed)));
    }

    #[test]
    fn backpressure_policies() {
        let t0 = Instant::now();
        let shed = ClientError::Broker {
            code: ErrorCode::Shed,
            message: String::new(),
            retry_after_ms: 200,
        };
        let other = ClientError::Io("x".into());
        let mut since = None;
        assert_eq!(
            pushback(Backpressure::Block, &other, &mut since, t0),
            Pushback::No
        );
        assert_eq!(
            pushback(Backpressure::Block, &shed, &mut since, t0),
            Pushback::Wait(Duration::from_millis(200))
        );
        assert_eq!(
            pushback(Backpressure::FailFast, &shed, &mut since, t0),
            Pushback::GiveUp
        );
        let mut since = None;
        let p = Backpressure::BlockFor(S);
        assert_eq!(
            pushback(p, &shed, &mut since, t0),
            Pushback::Wait(Duration::from_millis(200))
        );
        assert_eq!(
            pushback(p, &shed, &mut since, t0 + Duration::from_millis(800)),
            Pushback::Wait(Duration::from_millis(200))
        );
        assert_eq!(
            pushback(p, &shed, &mut since, t0 + Duration::from_millis(801)),
            Pushback::GiveUp
        );
    }
}

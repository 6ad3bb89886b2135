//! Flow control in the SDK: what a producer does when it cannot send now
//! ([`Backpressure`]), and a circuit breaker that stops calling a broker that keeps
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
//! **Circuit breaker.** The state machine is [`weir_protocol::breaker`], the same one
//! every broker queue runs, with the same settings ([`BreakerConfig`]: `window`,
//! `failure_pct`, `min_samples`, `open_for`, `half_open_pct`, `half_open_samples`,
//! `close_pct`); [`crate::Client`] wraps every call in it when `ClientConfig::breaker`
//! is set. Closed → open when, over the last `window`, at least `min_samples` calls
//! were made and more than `failure_pct` percent of them failed. Open refuses every
//! call (`ClientError::CircuitOpen`, with the time left) for `open_for`. Then half-open
//! lets `half_open_pct` percent of calls through (the first one among them); after
//! `half_open_samples` of those, it closes if at least `close_pct` percent succeeded and
//! opens again otherwise. What is specific to the SDK is here: which outcomes count.
//! Only failures that say the broker is unwell do: I/O errors, timeouts, and UNKNOWN,
//! STORAGE_ERROR, REQUEST_TIMED_OUT, SHUTTING_DOWN. A refusal of a bad request
//! (UNKNOWN_TOPIC ...) is the broker working, and THROTTLED or SHED is the broker
//! protecting itself, handled by [`Backpressure`]; neither counts. The breaker is off
//! by default: a client that must ride out a broker restart (the producer's retries do
//! that) would otherwise be refused for `open_for` after it.

use std::time::{Duration, Instant};

use weir_protocol::breaker::Breaker;
pub use weir_protocol::breaker::{BreakerConfig, State as BreakerState};
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

/// The client's breaker: the shared state machine behind a lock, fed with the
/// outcomes [`is_breaker_failure`] sorts, logging its state changes.
#[derive(Debug)]
pub struct SharedBreaker {
    inner: std::sync::Mutex<Breaker>,
}

/// How long a caller refused by a half-open breaker waits before asking again.
const HALF_OPEN_RETRY_AFTER: Duration = Duration::from_millis(100);

impl SharedBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        SharedBreaker {
            inner: std::sync::Mutex::new(Breaker::new(config, Instant::now())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a call now or refuses it with `ClientError::CircuitOpen`.
    pub fn admit(&self) -> Result<(), ClientError> {
        let (changed, refused_for) = {
            let mut b = self.lock();
            // Read under the lock, so the breaker sees the clock move forward only.
            let now = Instant::now();
            let changed = b.poll(now);
            let refused_for = match (b.admit(1, now), b.state(), b.reopens_at()) {
                (1, _, _) => None,
                (_, BreakerState::HalfOpen, _) => Some(HALF_OPEN_RETRY_AFTER),
                (_, _, Some(at)) => Some(at.saturating_duration_since(now)),
                // Open for longer than the clock can say.
                (_, _, None) => Some(Duration::MAX),
            };
            (changed, refused_for)
        };
        log_change(changed);
        match refused_for {
            None => Ok(()),
            Some(d) => Err(ClientError::CircuitOpen {
                retry_after_ms: d.as_millis().clamp(1, u128::from(u64::MAX)) as u64,
            }),
        }
    }

    /// Records an admitted call's outcome.
    pub fn record<T>(&self, outcome: &Result<T, ClientError>) {
        let success = !matches!(outcome, Err(e) if is_breaker_failure(e));
        let changed = {
            let mut b = self.lock();
            let now = Instant::now();
            b.record(success, now)
        };
        log_change(changed);
    }

    /// The state now.
    pub fn state(&self) -> BreakerState {
        self.lock().state_at(Instant::now())
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

    #[test]
    fn the_shared_breaker_opens_on_broker_failures_only_and_refuses_with_the_time_left() {
        let b = SharedBreaker::new(BreakerConfig {
            min_samples: 3,
            ..Default::default()
        });
        let unknown_topic: Result<(), ClientError> = Err(ClientError::Broker {
            code: ErrorCode::UnknownTopic,
            message: String::new(),
            retry_after_ms: 0,
        });
        for _ in 0..10 {
            b.admit().expect("closed");
            b.record(&unknown_topic);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        // A refused bad request is the broker working: 10 of them and 10 timeouts are
        // exactly half failed, not more.
        for _ in 0..10 {
            b.admit().expect("closed");
            b.record::<()>(&Err(ClientError::Timeout(5)));
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.admit().expect("closed");
        b.record::<()>(&Err(ClientError::Io("reset".into())));
        assert_eq!(b.state(), BreakerState::Open);
        match b.admit() {
            Err(ClientError::CircuitOpen { retry_after_ms }) => {
                assert!(retry_after_ms > 29_000 && retry_after_ms <= 30_000)
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(b.transitions(), 1);
    }

    #[test]
    fn half_open_lets_the_first_call_through_and_asks_the_next_to_come_back_soon() {
        let b = SharedBreaker::new(BreakerConfig {
            min_samples: 1,
            open_for: Duration::ZERO,
            ..Default::default()
        });
        b.admit().expect("closed");
        b.record::<()>(&Err(ClientError::Timeout(5)));
        // Open for no time at all: the next call finds it half-open.
        b.admit().expect("the first trial call");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(matches!(
            b.admit(),
            Err(ClientError::CircuitOpen {
                retry_after_ms: 100
            })
        ));
        assert_eq!(b.transitions(), 2);
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

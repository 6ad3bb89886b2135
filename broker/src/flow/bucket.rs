//! A token bucket in bytes, the unit of every rate quota.
//!
//! Tokens refill at `rate` bytes per second up to `burst`. A produce is admitted while
//! the bucket holds at least `min(bytes, burst)` tokens and then takes all its bytes, so
//! the level may go below zero (debt): a request larger than the burst still passes
//! once, and the client then waits out its debt. Fetches are charged after the fact (the
//! broker only knows a fetch's size once it has read it) and wait while in debt. Time is
//! passed in, so the bucket is tested without sleeping.

use std::time::{Duration, Instant};

/// One token bucket. `rate == 0` means unlimited.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    /// Tokens in bytes; negative while in debt.
    level: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket; `burst == 0` means one second's worth of `rate`.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        let burst = if burst == 0 { rate } else { burst };
        TokenBucket {
            rate,
            burst,
            level: burst as f64,
            last: now,
        }
    }

    /// Changes rate and burst, keeping the level (clamped to the new burst).
    pub fn reconfigure(&mut self, rate: u64, burst: u64, now: Instant) {
        self.refill(now);
        self.rate = rate;
        self.burst = if burst == 0 { rate } else { burst };
        self.level = self.level.min(self.burst as f64);
        if rate == 0 {
            self.level = 0.0;
        }
    }

    /// The most tokens it holds.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// True when the bucket limits nothing.
    pub fn unlimited(&self) -> bool {
        self.rate == 0
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.level = (self.level + dt * self.rate as f64).min(self.burst as f64);
    }

    /// Takes `bytes` if at least `min(bytes, burst)` tokens are there; otherwise takes
    /// nothing and says how long until they will be.
    pub fn try_take(&mut self, bytes: u64, now: Instant) -> Result<(), Duration> {
        self.try_take_keeping(bytes, 0, now)
    }

    /// [`TokenBucket::try_take`] that also leaves `keep` tokens in the bucket: it
    /// needs `min(bytes + keep, burst)` (a reserve for more important requests).
    pub fn try_take_keeping(
        &mut self,
        bytes: u64,
        keep: u64,
        now: Instant,
    ) -> Result<(), Duration> {
        if self.unlimited() {
            return Ok(());
        }
        self.refill(now);
        let need = bytes.saturating_add(keep).min(self.burst) as f64;
        if self.level >= need {
            self.level -= bytes as f64;
            Ok(())
        } else {
            Err(self.time_to(need))
        }
    }

    /// Takes `bytes` unconditionally (the level may go into debt).
    pub fn charge(&mut self, bytes: u64, now: Instant) {
        if self.unlimited() {
            return;
        }
        self.refill(now);
        self.level -= bytes as f64;
    }

    /// How long until the bucket is out of debt; zero when it is not in debt.
    pub fn debt_wait(&mut self, now: Instant) -> Duration {
        if self.unlimited() {
            return Duration::ZERO;
        }
        self.refill(now);
        self.time_to(0.0)
    }

    fn time_to(&self, level: f64) -> Duration {
        if self.level >= level {
            return Duration::ZERO;
        }
        // Rounded up to a whole millisecond so a retry after it finds the tokens there.
        let ms = (level - self.level) * 1000.0 / self.rate as f64;
        Duration::from_millis(ms.ceil() as u64).max(Duration::from_millis(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 2000, t0);
        assert!(b.try_take(1500, t0).is_ok());
        assert!(b.try_take(500, t0).is_ok());
        // Empty: 100 bytes need 100 ms at 1000 B/s.
        assert_eq!(b.try_take(100, t0), Err(Duration::from_millis(100)));
        assert!(b.try_take(100, t0 + Duration::from_millis(100)).is_ok());
        // Refill is capped at the burst.
        let later = t0 + Duration::from_secs(60);
        assert!(b.try_take(2000, later).is_ok());
        assert!(b.try_take(1, later).is_err());
    }

    #[test]
    fn a_request_larger_than_the_burst_passes_once_then_waits_out_its_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 1000, t0);
        assert!(b.try_take(5000, t0).is_ok());
        // Level is -4000: the next byte needs 4001 ms.
        assert_eq!(b.try_take(1, t0), Err(Duration::from_millis(4001)));
        assert_eq!(b.debt_wait(t0), Duration::from_millis(4000));
    }

    #[test]
    fn fetch_charges_into_debt_and_zero_rate_is_unlimited() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 0, t0);
        assert_eq!(b.debt_wait(t0), Duration::ZERO);
        b.charge(3000, t0);
        assert_eq!(b.debt_wait(t0), Duration::from_millis(2000));
        assert_eq!(
            b.debt_wait(t0 + Duration::from_millis(1500)),
            Duration::from_millis(500)
        );
        let mut u = TokenBucket::new(0, 0, t0);
        u.charge(u64::MAX / 2, t0);
        assert!(u.try_take(u64::MAX / 2, t0).is_ok());
        assert_eq!(u.debt_wait(t0), Duration::ZERO);
    }

    #[test]
    fn reconfigure_keeps_debt_and_clamps_credit() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 5000, t0);
        b.reconfigure(100, 200, t0);
        assert!(b.try_take(200, t0).is_ok());
        assert!(b.try_take(1, t0).is_err());
        b.reconfigure(0, 0, t0);
        assert!(b.try_take(1_000_000, t0).is_ok());
    }
}

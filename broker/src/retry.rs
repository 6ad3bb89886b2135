//! Retry policies: how many deliveries a record gets and how long to wait between them.
//!
//! A policy belongs to a priority class (P0..P3, from the record's priority through the
//! broker's class map), so urgent work retries fast and bulk work backs off. The delay
//! after the n-th failure is `base` (fixed), `base * n` (linear) or `base * 2^(n-1)`
//! (exponential), capped at `max`, then spread by ± `jitter_pct` percent so that a
//! burst of failures does not come back as a burst of retries. Pure functions, no I/O.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the delay grows with the number of failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    /// Always `base`.
    Fixed,
    /// `base * failures`.
    Linear,
    /// `base * 2^(failures - 1)`.
    Exponential,
}

impl Backoff {
    /// Parses `fixed`, `linear` or `exponential`.
    pub fn parse(s: &str) -> Option<Backoff> {
        match s {
            "fixed" => Some(Backoff::Fixed),
            "linear" => Some(Backoff::Linear),
            "exponential" => Some(Backoff::Exponential),
            _ => None,
        }
    }
}

/// The retry policy of one class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Deliveries in total (the first one included); after the last failure the record
    /// goes to the dead-letter topic. At least 1.
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub base: Duration,
    pub max: Duration,
    /// Each delay is moved by up to this percentage, up or down (0..=100).
    pub jitter_pct: u32,
}

impl RetryPolicy {
    /// Delay before the next delivery after `failures` failed attempts (≥ 1), before
    /// jitter.
    pub fn base_delay(&self, failures: u32) -> Duration {
        let n = failures.max(1);
        let d = match self.backoff {
            Backoff::Fixed => self.base,
            Backoff::Linear => self.base.saturating_mul(n),
            Backoff::Exponential => self.base.saturating_mul(1u32 << (n - 1).min(31)),
        };
        d.min(self.max)
    }

    /// [`RetryPolicy::base_delay`] with jitter; `unit` is a random number in [0, 1).
    /// Never above `max`.
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        let d = self.base_delay(failures).as_secs_f64();
        let spread = f64::from(self.jitter_pct.min(100)) / 100.0;
        let factor = 1.0 + spread * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((d * factor).max(0.0)).min(self.max)
    }

    /// Whether a record that has failed `failures` times may be delivered again.
    pub fn may_retry(&self, failures: u32) -> bool {
        failures < self.max_attempts
    }
}

/// A tiny xorshift generator for jitter: no need for cryptographic randomness, and
/// the broker keeps no dependency for it.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// Seeded from the clock.
    pub fn from_clock() -> Jitter {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9);
        Jitter(t | 1)
    }

    /// A number in [0, 1).
    pub fn unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(backoff: Backoff, base_ms: u64, max_ms: u64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            backoff,
            base: Duration::from_millis(base_ms),
            max: Duration::from_millis(max_ms),
            jitter_pct: 0,
        }
    }

    #[test]
    fn delays_grow_as_documented_and_stop_at_max() {
        let ms = |p: RetryPolicy| -> Vec<u128> {
            (1..=5).map(|n| p.base_delay(n).as_millis()).collect()
        };
        assert_eq!(ms(p(Backoff::Fixed, 300, 1000)), [300; 5]);
        assert_eq!(
            ms(p(Backoff::Linear, 300, 1000)),
            [300, 600, 900, 1000, 1000]
        );
        assert_eq!(
            ms(p(Backoff::Exponential, 100, 1000)),
            [100, 200, 400, 800, 1000]
        );
        // No overflow for absurd failure counts.
        assert_eq!(
            p(Backoff::Exponential, 100, 5000).base_delay(u32::MAX),
            Duration::from_millis(5000)
        );
    }

    #[test]
    fn jitter_stays_within_its_band_and_under_max() {
        let mut policy = p(Backoff::Fixed, 1000, 10_000);
        policy.jitter_pct = 20;
        let mut j = Jitter::from_clock();
        for _ in 0..1000 {
            let d = policy.delay(1, j.unit()).as_millis();
            assert!((800..=1200).contains(&d), "{d}");
        }
        policy.max = Duration::from_millis(1000);
        assert!(policy.delay(1, 0.999).as_millis() <= 1000);
    }

    #[test]
    fn attempts_are_counted_from_the_first_delivery() {
        let policy = RetryPolicy {
            max_attempts: 3,
            ..p(Backoff::Fixed, 1, 1)
        };
        assert!(policy.may_retry(1));
        assert!(policy.may_retry(2));
        assert!(!policy.may_retry(3));
    }
}

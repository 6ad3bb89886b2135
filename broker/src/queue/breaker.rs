//! The circuit breaker of one queue (a group consuming one topic): the shared state
//! machine of [`weir_protocol::breaker`] (the SDK runs the same one), plus what only a
//! queue has.
//!
//! When most deliveries fail, retrying them at full speed only burns the consumers and
//! whatever they call. An ack is a success; a nack or an expired lease is a failure.
//! Open, the queue leases nothing and records simply wait in the log (nothing is
//! dropped or dead-lettered by the breaker); half-open, it leases a share of the
//! records asked for ([`QueueBreaker::admit`]). A queue's breaker can be switched off
//! (`queue_breaker_enabled`), and the half-open trial is `queue_breaker_min_samples`
//! outcomes, as it was before the SDK and the broker shared the machine. Nothing of it
//! is persisted: a restarted broker starts every breaker closed.

use std::time::{Duration, Instant};

use weir_protocol::breaker::Breaker;
pub use weir_protocol::breaker::{BreakerConfig, State};

use crate::config::Config;

/// A queue's breaker settings (the `queue_breaker_*` config keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    pub enabled: bool,
    pub machine: BreakerConfig,
}

impl BreakerSettings {
    /// From the broker's config.
    pub fn from_config(config: &Config) -> BreakerSettings {
        BreakerSettings {
            enabled: config.queue_breaker_enabled,
            machine: BreakerConfig {
                window: Duration::from_millis(config.queue_breaker_window_ms),
                failure_pct: config.queue_breaker_failure_pct,
                min_samples: config.queue_breaker_min_samples,
                open_for: Duration::from_millis(config.queue_breaker_open_for_ms),
                half_open_pct: config.queue_breaker_half_open_pct,
                half_open_samples: config.queue_breaker_min_samples,
                close_pct: config.queue_breaker_close_pct,
            },
        }
    }
}

/// One queue's breaker; a switched-off one is always closed and counts nothing.
#[derive(Debug)]
pub struct QueueBreaker {
    machine: Option<Breaker>,
    created: Instant,
}

impl QueueBreaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings, now: Instant) -> QueueBreaker {
        QueueBreaker {
            machine: settings
                .enabled
                .then(|| Breaker::new(settings.machine, now)),
            created: now,
        }
    }

    /// The state as of the last call that took a `now`.
    pub fn state(&self) -> State {
        self.machine.as_ref().map_or(State::Closed, Breaker::state)
    }

    /// How long the breaker has been in its state.
    pub fn in_state_for(&self, now: Instant) -> Duration {
        match &self.machine {
            Some(b) => b.in_state_for(now),
            None => now.saturating_duration_since(self.created),
        }
    }

    /// When an open breaker turns half-open (the queue task sets a timer for it).
    pub fn reopens_at(&self) -> Option<Instant> {
        self.machine.as_ref().and_then(Breaker::reopens_at)
    }

    /// Acks and failures in the window.
    pub fn window_counts(&self, now: Instant) -> (u32, u32) {
        self.machine
            .as_ref()
            .map_or((0, 0), |b| b.window_counts(now))
    }

    /// Applies the clock; returns the new state when it changed.
    pub fn poll(&mut self, now: Instant) -> Option<State> {
        self.machine.as_mut().and_then(|b| b.poll(now))
    }

    /// How many of `want` records may be leased now.
    pub fn admit(&mut self, want: u32, now: Instant) -> u32 {
        match &mut self.machine {
            Some(b) => b.admit(want, now),
            None => want,
        }
    }

    /// A delivery was acked. Returns the new state when it changed.
    pub fn acked(&mut self, now: Instant) -> Option<State> {
        self.machine.as_mut().and_then(|b| b.record(true, now))
    }

    /// A delivery was nacked or its lease expired. Returns the new state when it
    /// changed.
    pub fn failed(&mut self, now: Instant) -> Option<State> {
        self.machine.as_mut().and_then(|b| b.record(false, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(enabled: bool) -> BreakerSettings {
        BreakerSettings {
            enabled,
            machine: BreakerConfig {
                window: Duration::from_secs(60),
                failure_pct: 50,
                min_samples: 10,
                open_for: Duration::from_secs(30),
                half_open_pct: 10,
                half_open_samples: 10,
                close_pct: 90,
            },
        }
    }

    #[test]
    fn the_config_keys_reach_the_machine_and_min_samples_is_also_the_trial() {
        let config = Config {
            queue_breaker_min_samples: 7,
            queue_breaker_open_for_ms: 1234,
            ..Default::default()
        };
        let s = BreakerSettings::from_config(&config);
        assert!(s.enabled);
        assert_eq!(s.machine.min_samples, 7);
        assert_eq!(s.machine.half_open_samples, 7);
        assert_eq!(s.machine.open_for, Duration::from_millis(1234));
        assert_eq!(s.machine.failure_pct, config.queue_breaker_failure_pct);
        assert_eq!(s.machine.close_pct, config.queue_breaker_close_pct);
    }

    #[test]
    fn nacks_open_it_and_open_leases_nothing() {
        let t0 = Instant::now();
        let mut b = QueueBreaker::new(settings(true), t0);
        for _ in 0..9 {
            assert_eq!(b.failed(t0), None);
        }
        assert_eq!(b.failed(t0), Some(State::Open));
        assert_eq!(b.admit(100, t0), 0);
        assert_eq!(b.state().code(), weir_protocol::messages::BREAKER_OPEN);
        assert_eq!(b.window_counts(t0), (0, 10));
        assert_eq!(b.reopens_at(), Some(t0 + Duration::from_secs(30)));
    }

    #[test]
    fn disabled_breaker_never_limits() {
        let t0 = Instant::now();
        let mut b = QueueBreaker::new(settings(false), t0);
        for _ in 0..100 {
            assert_eq!(b.failed(t0), None);
        }
        assert_eq!(b.admit(7, t0), 7);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.window_counts(t0), (0, 0));
        assert_eq!(b.reopens_at(), None);
    }
}

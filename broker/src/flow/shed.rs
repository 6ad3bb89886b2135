//! Load shedding by priority class, with a cool-down and gradual recovery.
//!
//! Each class P1..P3 has a load threshold and a share to shed (defaults: P1 25 % at
//! 80 % load, P2 50 % at 85 %, P3 75 % at 90 %). P0 is never shed. A class starts
//! shedding its full share as soon as the load reaches its threshold and keeps it for
//! `shed_cooldown_ms` after the load was last at or above it, so a load that hovers
//! around the threshold does not flap. Then the share falls linearly to zero over
//! `shed_recovery_ms`, so traffic comes back gradually instead of all at once (which
//! would push the load straight back up).
//!
//! Which requests are shed is decided by a counter, not a random draw: each request
//! adds the current share to an accumulator and is shed when it crosses 1000 per mille.
//! With a 25 % share exactly one request in four is shed, which tests can count on.

use std::time::{Duration, Instant};

use weir_protocol::classes::{Class, CLASS_COUNT};

/// Thresholds and shares of P1..P3, in per mille, plus the timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShedSettings {
    /// Load (per mille) at which P1, P2, P3 start shedding.
    pub thresholds_permille: [u32; CLASS_COUNT - 1],
    /// Share (per mille) of P1, P2, P3 shed while over the threshold.
    pub shares_permille: [u32; CLASS_COUNT - 1],
    pub cooldown: Duration,
    pub recovery: Duration,
}

#[derive(Debug, Clone, Copy, Default)]
struct ClassState {
    /// Last time the load was at or above this class's threshold.
    last_over: Option<Instant>,
    accumulator: u32,
    shed_total: u64,
}

/// The shedding state of every class. Owned by one `Mutex` in `FlowControl`; each
/// decision is a few arithmetic operations.
#[derive(Debug)]
pub struct ShedPolicy {
    settings: ShedSettings,
    enabled: bool,
    classes: [ClassState; CLASS_COUNT],
}

impl ShedPolicy {
    /// A policy with nothing shed yet.
    pub fn new(settings: ShedSettings, enabled: bool) -> Self {
        ShedPolicy {
            settings,
            enabled,
            classes: [ClassState::default(); CLASS_COUNT],
        }
    }

    /// The share (per mille) of `class` being shed at `now` given `load`, updating the
    /// class's over-threshold time.
    fn share(&mut self, class: Class, load_permille: u32, now: Instant) -> u32 {
        if !self.enabled || class == Class::P0 {
            return 0;
        }
        let i = class.index() - 1;
        let s = self.settings;
        let st = &mut self.classes[class.index()];
        if load_permille >= s.thresholds_permille[i] {
            st.last_over = Some(now);
            return s.shares_permille[i];
        }
        let Some(t) = st.last_over else { return 0 };
        let since = now.saturating_duration_since(t);
        if since < s.cooldown {
            return s.shares_permille[i];
        }
        let into_recovery = since - s.cooldown;
        if into_recovery >= s.recovery {
            st.last_over = None;
            st.accumulator = 0;
            return 0;
        }
        let left = 1.0 - into_recovery.as_secs_f64() / s.recovery.as_secs_f64();
        (f64::from(s.shares_permille[i]) * left).round() as u32
    }

    /// Decides one request of `class`: `Some(retry_after)` when it is shed.
    pub fn decide(&mut self, class: Class, load_permille: u32, now: Instant) -> Option<Duration> {
        let share = self.share(class, load_permille, now);
        let st = &mut self.classes[class.index()];
        if share == 0 {
            st.accumulator = 0;
            return None;
        }
        st.accumulator += share;
        if st.accumulator < 1000 {
            return None;
        }
        st.accumulator -= 1000;
        st.shed_total += 1;
        // Come back when the cool-down would be over if the load dropped now.
        let since = st
            .last_over
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        let retry = self
            .settings
            .cooldown
            .saturating_sub(since)
            .clamp(Duration::from_millis(50), Duration::from_secs(5));
        Some(retry)
    }

    /// Share (per mille) each class is shed at now, and its total, without deciding.
    pub fn status(&mut self, load_permille: u32, now: Instant) -> [(u32, u64); CLASS_COUNT] {
        let mut out = [(0, 0); CLASS_COUNT];
        for c in Class::ALL {
            // Reading the share must not start a shedding period by itself.
            let saved = self.classes[c.index()];
            let share = self.share(c, load_permille, now);
            self.classes[c.index()] = saved;
            out[c.index()] = (share, saved.shed_total);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> ShedSettings {
        ShedSettings {
            thresholds_permille: [800, 850, 900],
            shares_permille: [250, 500, 750],
            cooldown: Duration::from_secs(5),
            recovery: Duration::from_secs(10),
        }
    }

    fn count_shed(p: &mut ShedPolicy, class: Class, load: u32, now: Instant, n: usize) -> usize {
        (0..n)
            .filter(|_| p.decide(class, load, now).is_some())
            .count()
    }

    #[test]
    fn shares_at_thresholds_and_p0_never() {
        let t0 = Instant::now();
        let mut p = ShedPolicy::new(defaults(), true);
        assert_eq!(count_shed(&mut p, Class::P3, 899, t0, 100), 0);
        assert_eq!(count_shed(&mut p, Class::P3, 900, t0, 100), 75);
        assert_eq!(count_shed(&mut p, Class::P2, 850, t0, 100), 50);
        assert_eq!(count_shed(&mut p, Class::P1, 800, t0, 100), 25);
        assert_eq!(
            count_shed(&mut p, Class::P1, 799, t0 + Duration::from_secs(60), 100),
            0
        );
        assert_eq!(count_shed(&mut p, Class::P0, 100_000, t0, 1000), 0);
        let mut off = ShedPolicy::new(defaults(), false);
        assert_eq!(count_shed(&mut off, Class::P3, 100_000, t0, 100), 0);
    }

    #[test]
    fn cooldown_holds_then_recovery_is_gradual() {
        let t0 = Instant::now();
        let mut p = ShedPolicy::new(defaults(), true);
        assert_eq!(count_shed(&mut p, Class::P3, 950, t0, 4), 3);
        // Load gone, but within the cool-down: still 75 %.
        let t = t0 + Duration::from_secs(4);
        assert_eq!(count_shed(&mut p, Class::P3, 0, t, 100), 75);
        // Half way through the recovery: 37.5 % rounds to 38 %.
        let t = t0 + Duration::from_secs(10);
        assert_eq!(p.status(0, t)[3].0, 375);
        let n = count_shed(&mut p, Class::P3, 0, t, 1000);
        assert!((370..=380).contains(&n), "{n}");
        // After the recovery: nothing.
        let t = t0 + Duration::from_secs(16);
        assert_eq!(count_shed(&mut p, Class::P3, 0, t, 100), 0);
        assert_eq!(p.status(0, t)[3], (0, 75 + 3 + n as u64));
    }

    #[test]
    fn retry_after_is_the_rest_of_the_cooldown() {
        let t0 = Instant::now();
        let mut p = ShedPolicy::new(defaults(), true);
        let r = (0..4).find_map(|_| p.decide(Class::P3, 1000, t0)).unwrap();
        assert_eq!(r, Duration::from_secs(5));
        let t = t0 + Duration::from_millis(4990);
        let r = (0..4).find_map(|_| p.decide(Class::P3, 0, t)).unwrap();
        assert_eq!(r, Duration::from_millis(50));
    }

    #[test]
    fn status_does_not_start_shedding() {
        let t0 = Instant::now();
        let mut p = ShedPolicy::new(defaults(), true);
        assert_eq!(p.status(1000, t0)[3], (750, 0));
        assert_eq!(p.status(0, t0)[3], (0, 0));
    }
}

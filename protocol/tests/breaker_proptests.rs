//! Property tests of the circuit breaker's invariants over random settings and random
//! sequences of requests, outcomes and clock steps: an open breaker never closes
//! without a half-open trial, stays open exactly `open_for`, admits nothing while open
//! and exactly the half-open share while half-open, counts outcomes only within the
//! window, and opens or closes only when the counted outcomes say so.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use weir_protocol::breaker::{Breaker, BreakerConfig, State, BUCKETS};

#[derive(Debug, Clone)]
enum Op {
    Admit(u32),
    Record(bool),
    Poll,
}

fn op() -> impl Strategy<Value = (u64, Op)> {
    (
        // u64::MAX: to the instant the open time is up, to hit the boundary exactly.
        prop_oneof![3 => Just(0u64), 2 => 0u64..2_000, 1 => 0u64..40_000, 1 => Just(u64::MAX)],
        prop_oneof![
            (0u32..50).prop_map(Op::Admit),
            any::<bool>().prop_map(Op::Record),
            // Failures are likelier, so the breaker gets to open.
            Just(Op::Record(false)),
            Just(Op::Poll),
        ],
    )
}

fn config() -> impl Strategy<Value = BreakerConfig> {
    (
        (1u64..60_000, 0u32..=100, 1u32..30, 1u64..40_000),
        (1u32..=100, 1u32..20, 0u32..=100),
    )
        .prop_map(
            |((window, failure_pct, min_samples, open_for), (half_pct, half_samples, close))| {
                BreakerConfig {
                    window: Duration::from_millis(window),
                    failure_pct,
                    min_samples,
                    open_for: Duration::from_millis(open_for),
                    half_open_pct: half_pct,
                    half_open_samples: half_samples,
                    close_pct: close,
                }
            },
        )
}

/// What the test knows independently of the breaker.
struct Model {
    /// Outcomes (time, success) since the breaker was last closed or created.
    outcomes: Vec<(Instant, bool)>,
    opened_at: Option<Instant>,
    half_requested: u64,
    half_admitted: u64,
    trial: (u64, u64),
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn breaker_invariants(config in config(), ops in prop::collection::vec(op(), 1..300)) {
        let t0 = Instant::now();
        let mut b = Breaker::new(config, t0);
        let mut now = t0;
        let mut m = Model {
            outcomes: Vec::new(),
            opened_at: None,
            half_requested: 0,
            half_admitted: 0,
            trial: (0, 0),
        };
        let width = Duration::from_nanos(config.window.as_nanos().div_ceil(u128::from(BUCKETS)) as u64);
        for (step_ms, op) in ops {
            if step_ms == u64::MAX {
                now = b.reopens_at().map_or(now, |at| at.max(now));
            } else {
                now += Duration::from_millis(step_ms);
            }
            let before = b.state();
            let transitions = b.transitions();
            // Open lasts exactly `open_for`.
            if before == State::Open {
                let until = m.opened_at.unwrap() + config.open_for;
                prop_assert_eq!(b.reopens_at(), Some(until));
                let expected = if now >= until { State::HalfOpen } else { State::Open };
                prop_assert_eq!(b.state_at(now), expected);
            }
            // Every call takes the clock: a half-open period starts in this step.
            if before == State::Open && b.state_at(now) == State::HalfOpen {
                m.half_requested = 0;
                m.half_admitted = 0;
                m.trial = (0, 0);
            }
            let trial = b.state_at(now) == State::HalfOpen;
            let mut recorded = false;
            match op {
                Op::Poll => {
                    b.poll(now);
                }
                Op::Admit(want) => {
                    let admitted = b.admit(want, now);
                    match b.state() {
                        State::Closed => prop_assert_eq!(admitted, want),
                        State::Open => prop_assert_eq!(admitted, 0),
                        State::HalfOpen => {
                            m.half_requested += u64::from(want);
                            m.half_admitted += u64::from(admitted);
                            prop_assert!(admitted <= want);
                            prop_assert_eq!(
                                m.half_admitted,
                                (m.half_requested * u64::from(config.half_open_pct)).div_ceil(100)
                            );
                        }
                    }
                }
                Op::Record(success) => {
                    m.outcomes.push((now, success));
                    if trial {
                        if success { m.trial.0 += 1 } else { m.trial.1 += 1 }
                    }
                    b.record(success, now);
                    recorded = true;
                }
            }
            let after = b.state();
            prop_assert_eq!(after, b.state_at(now), "every call applies the clock");
            let moved = b.transitions() - transitions;
            // Legal steps only; two at once only through half-open (an outcome that
            // arrives when the open time is up is the first trial).
            match (before, after, moved) {
                (_, _, 0) => prop_assert_eq!(before, after),
                (State::Closed, State::Open, 1)
                | (State::Open, State::HalfOpen, 1)
                | (State::HalfOpen, State::Open, 1)
                | (State::HalfOpen, State::Closed, 1)
                | (State::Open, State::Closed, 2)
                | (State::Open, State::Open, 2) => {}
                other => prop_assert!(false, "illegal step {:?}", other),
            }
            if before == State::Open && moved > 0 {
                prop_assert!(now >= m.opened_at.unwrap() + config.open_for);
            }
            if !recorded {
                prop_assert!(after != State::Closed || before == State::Closed);
                prop_assert!(moved <= 1);
            }
            if recorded {
                let (ok, failed) = b.window_counts(now);
                let total = u64::from(ok) + u64::from(failed);
                let (t_ok, t_failed) = m.trial;
                match (before, after) {
                    (State::Closed, State::Open) => {
                        prop_assert!(total >= u64::from(config.min_samples));
                        prop_assert!(u64::from(failed) * 100 > u64::from(config.failure_pct) * total);
                    }
                    (State::Closed, State::Closed) => {
                        prop_assert!(
                            total < u64::from(config.min_samples)
                                || u64::from(failed) * 100 <= u64::from(config.failure_pct) * total
                        );
                    }
                    (_, State::Closed) => {
                        prop_assert!(t_ok + t_failed >= u64::from(config.half_open_samples));
                        prop_assert!(t_ok * 100 >= u64::from(config.close_pct) * (t_ok + t_failed));
                    }
                    (_, State::HalfOpen) => {
                        prop_assert!(t_ok + t_failed < u64::from(config.half_open_samples));
                    }
                    _ => {}
                }
            }
            if moved > 0 && after == State::Open {
                m.opened_at = Some(now);
            }
            if moved > 0 && after == State::Closed {
                m.outcomes.clear();
            }
            // Counted only within the window: an outcome one window old is out, one
            // younger than the window less a bucket is in.
            let (ok, failed) = b.window_counts(now);
            let upper = m.outcomes.iter().filter(|(t, _)| now - *t < config.window);
            let lower = m.outcomes.iter().filter(|(t, _)| now - *t + width < config.window);
            let count = |it: &mut dyn Iterator<Item = &(Instant, bool)>, want: bool| {
                it.filter(|(_, s)| *s == want).count() as u32
            };
            prop_assert!(ok <= count(&mut upper.clone(), true));
            prop_assert!(failed <= count(&mut upper.clone(), false));
            prop_assert!(ok >= count(&mut lower.clone(), true));
            prop_assert!(failed >= count(&mut lower.clone(), false));
        }
    }
}

//! The adaptive spin budget behind `spin_wait_us`: how long a thread that ran out of
//! work keeps looking before it sleeps.
//!
//! Spinning spares the wake-up of a sleeping thread (20–100 µs on a small VM) only
//! while a core is spare; once every core is wanted, a spinner takes CPU from the very
//! threads that would bring it work, and latency gets worse, not better (BENCHMARKS.md,
//! "Spinning instead of sleeping"). So a [`Spinner`] watches for that: a spinning
//! thread yields its core now and then, and when the kernel did give the core to
//! someone else during a spin (the thread's involuntary context switches went up),
//! the budget halves. A spin that found work untroubled doubles it back, up to the
//! configured most. At zero the thread only sleeps, and every [`PROBE_EVERY`]-th wait
//! tries a small spin again, so spinning comes back when the cores are free again.

use std::time::Duration;

/// Waits at a budget of zero between two probing spins.
pub const PROBE_EVERY: u32 = 64;

/// One thread's spin budget (a shard writer, or a runtime worker's fetches).
#[derive(Debug, Clone)]
pub struct Spinner {
    max_us: u32,
    now_us: u32,
    /// Waits since the budget fell to zero (for the next probe).
    idle_waits: u32,
}

/// A spin under way: what [`Spinner::end`] compares against.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    switches: u64,
    budget: Duration,
}

impl Round {
    /// How long this spin may last.
    pub fn budget(&self) -> Duration {
        self.budget
    }
}

impl Spinner {
    /// A spinner allowed `max_us` µs per wait (0: never spins).
    pub fn new(max_us: u32) -> Self {
        Spinner {
            max_us,
            now_us: max_us,
            idle_waits: 0,
        }
    }

    /// The budget the next spin gets now.
    pub fn budget_us(&self) -> u32 {
        self.now_us
    }

    /// Starts a spin; `None` when this wait should sleep at once (spinning is off, or
    /// backed off and not due for a probe).
    pub fn start(&mut self) -> Option<Round> {
        if self.max_us == 0 {
            return None;
        }
        let us = if self.now_us > 0 {
            self.now_us
        } else {
            self.idle_waits += 1;
            if self.idle_waits < PROBE_EVERY {
                return None;
            }
            self.idle_waits = 0;
            (self.max_us / 8).max(1)
        };
        Some(Round {
            switches: involuntary_switches(),
            budget: Duration::from_micros(u64::from(us)),
        })
    }

    /// Ends a spin: `found` is whether work came during it.
    pub fn end(&mut self, round: Round, found: bool) {
        let lost_core = involuntary_switches() > round.switches;
        self.settle(round, found, lost_core);
    }

    /// The next budget after a spin that found work or not, and lost its core or not.
    fn settle(&mut self, round: Round, found: bool, lost_core: bool) {
        let spun_us = round.budget.as_micros() as u32;
        self.now_us = if lost_core {
            spun_us / 2
        } else if found {
            spun_us.saturating_mul(2).clamp(1, self.max_us)
        } else {
            // The gap between arrivals is longer than the budget: spinning wasted
            // the budget, but took nobody's core. Keep it.
            spun_us.min(self.max_us)
        };
        if self.now_us > 0 {
            self.idle_waits = 0;
        }
    }
}

/// The calling thread's involuntary context switches so far: times the kernel took
/// its core while it could have run, a yield to a waiting thread included.
fn involuntary_switches() -> u64 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `usage` is a valid, writable rusage; RUSAGE_THREAD exists on Linux
        // and only writes into it.
        unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            if libc::getrusage(libc::RUSAGE_THREAD, &mut usage) == 0 {
                return usage.ru_nivcsw as u64;
            }
        }
        0
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(us: u32) -> Round {
        Round {
            switches: 0,
            budget: Duration::from_micros(u64::from(us)),
        }
    }

    #[test]
    fn off_never_spins() {
        let mut s = Spinner::new(0);
        for _ in 0..(PROBE_EVERY * 2) {
            assert!(s.start().is_none());
        }
    }

    /// A spin during which the thread lost its core halves the budget; down at zero
    /// the thread sleeps, probing with an eighth of the most every PROBE_EVERY waits;
    /// untroubled spins that find work double it back to the most.
    #[test]
    fn a_contended_spin_backs_off_and_a_free_one_comes_back() {
        let mut s = Spinner::new(200);
        assert_eq!(s.start().unwrap().budget(), Duration::from_micros(200));
        s.settle(round(200), true, true);
        assert_eq!(s.budget_us(), 100);
        let mut halvings = 1;
        while s.budget_us() > 0 {
            let r = s.start().unwrap();
            s.settle(round(r.budget().as_micros() as u32), true, true);
            halvings += 1;
        }
        assert_eq!(halvings, 8, "200 → 100 → … → 1 → 0");
        let mut slept = 0;
        let probe = loop {
            match s.start() {
                None => slept += 1,
                Some(r) => break r,
            }
        };
        assert_eq!(slept, PROBE_EVERY - 1);
        assert_eq!(probe.budget(), Duration::from_micros(25));
        s.settle(round(25), true, false);
        assert_eq!(s.budget_us(), 50);
        for _ in 0..5 {
            let r = s.start().unwrap();
            s.settle(round(r.budget().as_micros() as u32), true, false);
        }
        assert_eq!(s.budget_us(), 200);
        // A spin that found nothing, untroubled, keeps its budget.
        s.settle(round(200), false, false);
        assert_eq!(s.budget_us(), 200);
    }

    /// The switch count comes from the kernel and moves when the thread gives its
    /// core away.
    #[test]
    #[cfg(target_os = "linux")]
    fn involuntary_switches_are_read() {
        let before = involuntary_switches();
        // Four busy threads per core: this one is bound to be switched out.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let others: Vec<_> = (0..cores * 4)
            .map(|_| {
                std::thread::spawn(|| {
                    let until = std::time::Instant::now() + Duration::from_millis(100);
                    while std::time::Instant::now() < until {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        let until = std::time::Instant::now() + Duration::from_millis(100);
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
        for o in others {
            o.join().unwrap();
        }
        assert!(involuntary_switches() > before);
    }
}

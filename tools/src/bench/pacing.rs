//! Open loop's default pacing tick, from what one timer sleep costs on this machine.
//!
//! An open-loop producer sleeps until its next message is due. Where arming a timer
//! is cheap (a few hundred ns on bare metal) it can wake for every message; on a
//! small virtual machine one 10 µs `nanosleep` costs 12–17 µs of CPU (`limits.sh`
//! `sleep_10us`), so at 100k msgs/s the load generator alone took more than one of
//! the two cores and the broker it measured got what was left. Without
//! `--pacing-tick-us`, a producer therefore wakes at most once per
//! [`tick_for`] of the measured cost: about eight sleeps' CPU, so its wake-ups take at
//! most an eighth of a core. Each message is still timed from its own intended send
//! time, so the wait for the tick is in every latency figure.

use std::time::{Duration, Instant};

/// Sleeps measured at start (about 5 ms on a slow VM).
const SLEEPS: u32 = 200;

/// The tick is at least this many times one sleep's CPU.
const TICK_PER_SLEEP_CPU: u32 = 8;

/// Bounds of the automatic tick.
const TICK_MIN: Duration = Duration::from_micros(10);
const TICK_MAX: Duration = Duration::from_millis(1);

/// What one 10 µs `nanosleep` costs this thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SleepCost {
    /// CPU (user + system) per call.
    pub cpu: Duration,
    /// Wall-clock time per call.
    pub wall: Duration,
}

/// Gives the calling thread a 1 µs timer slack. Open-loop pacing sleeps until each
/// message is due; with the default 50 µs slack every sleep overshoots by up to that
/// much, which the e2e latency (measured from the due time) would count.
pub fn fine_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000u64, 0u64, 0u64, 0u64) };
}

/// Measures [`SleepCost`] over [`SLEEPS`] sleeps, on a thread of its own with the
/// producers' timer slack ([`fine_timer_slack`]).
pub fn measure_sleep() -> SleepCost {
    std::thread::spawn(|| {
        fine_timer_slack();
        measure_here()
    })
    .join()
    .unwrap_or(SleepCost {
        cpu: Duration::ZERO,
        wall: Duration::ZERO,
    })
}

fn measure_here() -> SleepCost {
    let cpu0 = thread_cpu();
    let t0 = Instant::now();
    for _ in 0..SLEEPS {
        std::thread::sleep(Duration::from_micros(10));
    }
    SleepCost {
        cpu: thread_cpu().saturating_sub(cpu0) / SLEEPS,
        wall: t0.elapsed() / SLEEPS,
    }
}

/// The automatic tick for a sleep that costs `cost`: [`TICK_PER_SLEEP_CPU`] times its
/// CPU, rounded up to 10 µs, within [`TICK_MIN`]..=[`TICK_MAX`].
pub fn tick_for(cost: SleepCost) -> Duration {
    let raw = cost.cpu * TICK_PER_SLEEP_CPU;
    let tens = raw.as_micros().div_ceil(10) as u64;
    Duration::from_micros(tens * 10).clamp(TICK_MIN, TICK_MAX)
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes into the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(cpu_ns: u64) -> SleepCost {
        SleepCost {
            cpu: Duration::from_nanos(cpu_ns),
            wall: Duration::from_nanos(cpu_ns * 2),
        }
    }

    #[test]
    fn the_tick_is_eight_sleeps_of_cpu_in_bounds() {
        // This VM: 13.6 µs a sleep → 108.8 µs → 110 µs.
        assert_eq!(tick_for(cost(13_600)), Duration::from_micros(110));
        // Cheap timers: the floor.
        assert_eq!(tick_for(cost(300)), Duration::from_micros(10));
        assert_eq!(tick_for(cost(0)), Duration::from_micros(10));
        // A pathological machine: the ceiling.
        assert_eq!(tick_for(cost(400_000)), Duration::from_millis(1));
    }

    #[test]
    fn a_measured_sleep_takes_at_least_its_length() {
        let c = measure_sleep();
        assert!(c.wall >= Duration::from_micros(10), "{c:?}");
        assert!(
            c.cpu <= c.wall * 2,
            "one thread cannot burn much more than it waits: {c:?}"
        );
    }
}

//! The long poll shared by Fetch and PriorityFetch, and the size bound of an answer.

use std::cell::RefCell;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::BrokerError;
use crate::shard::Shard;
use crate::spin::{Round, Spinner};
use crate::state::BrokerState;

/// The most record bytes one fetch response carries: what the client asked for, within
/// the frame size (less room for the headers), and at least 1 so a fetch progresses.
pub fn max_bytes(state: &BrokerState, requested: u32) -> usize {
    (requested as usize)
        .min((state.config.max_frame_bytes as usize).saturating_sub(1024))
        .max(1)
}

/// A long-poll read: calls `fill(last)` now and again whenever the shard's high-water
/// mark moves, until it answers. `last` is true once the wait (`max_wait_ms`, capped
/// by `max_fetch_wait_ms`) is over or the broker is shutting down; `fill` must answer
/// then.
pub async fn long_poll<T>(
    state: &BrokerState,
    shard: &Shard,
    max_wait_ms: u32,
    mut fill: impl FnMut(bool) -> Result<Option<T>, BrokerError>,
) -> Result<T, BrokerError> {
    let wait = Duration::from_millis(u64::from(max_wait_ms.min(state.config.max_fetch_wait_ms)));
    let deadline = Instant::now() + wait;
    let mut hwm_rx = shard.watch_high_watermark();
    let mut shutdown = state.shutdown.clone();
    loop {
        hwm_rx.borrow_and_update();
        let last = Instant::now() >= deadline || *shutdown.borrow();
        if let Some(answer) = fill(last)? {
            return Ok(answer);
        }
        if let Some((round, thread)) = start_spin(state.config.spin_wait_us) {
            let budget = round
                .budget()
                .min(deadline.saturating_duration_since(Instant::now()));
            let moved = spin(budget, &mut hwm_rx, &shutdown).await;
            end_spin(round, thread, moved);
            if moved {
                continue;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = hwm_rx.changed() => {}
            _ = shutdown.changed() => {}
        }
    }
}

thread_local! {
    /// The fetch spin budget of this runtime worker (with the `spin_wait_us` it was
    /// made for): contention is a matter of the thread's core, not of one fetch.
    static FETCH_SPINNER: RefCell<Option<(u32, Spinner)>> = const { RefCell::new(None) };
}

/// Starts a fetch spin on this thread's [`Spinner`]: its round and the thread.
fn start_spin(max_us: u32) -> Option<(Round, ThreadId)> {
    if max_us == 0 {
        return None;
    }
    FETCH_SPINNER.with(|s| {
        let mut s = s.borrow_mut();
        if s.as_ref().is_none_or(|(max, _)| *max != max_us) {
            *s = Some((max_us, Spinner::new(max_us)));
        }
        let (_, spinner) = s.as_mut().expect("set above");
        spinner
            .start()
            .map(|round| (round, std::thread::current().id()))
    })
}

/// Ends a fetch spin. A task that moved to another worker during its spin says
/// nothing about either thread's core.
fn end_spin(round: Round, thread: ThreadId, moved: bool) {
    if std::thread::current().id() != thread {
        return;
    }
    FETCH_SPINNER.with(|s| {
        if let Some((_, spinner)) = s.borrow_mut().as_mut() {
            spinner.end(round, moved);
        }
    });
}

/// Keeps the task running for up to `budget` (`spin_wait_us`) while it watches the
/// high-water mark; whether it moved (or the broker began to shut down). A spinning
/// task keeps its runtime worker awake, so the append that moves the mark is seen
/// without waking a parked thread; `yield_now` lets the worker run every other task
/// that is ready meanwhile.
async fn spin(
    budget: Duration,
    hwm_rx: &mut watch::Receiver<u64>,
    shutdown: &watch::Receiver<bool>,
) -> bool {
    if budget.is_zero() {
        return false;
    }
    let until = Instant::now() + budget;
    loop {
        if hwm_rx.has_changed().unwrap_or(true) || *shutdown.borrow() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spin sees the mark move (and ends then, long before its budget), and ends
    /// with false when its budget runs out with the mark still.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spinning_fetch_sees_the_mark_move() {
        let (hwm_tx, mut hwm_rx) = watch::channel(0u64);
        let (_stop, shutdown) = watch::channel(false);
        let moved = tokio::spawn(async move {
            tokio::task::yield_now().await;
            hwm_tx.send(1).unwrap();
            hwm_tx
        });
        assert!(spin(Duration::from_secs(600), &mut hwm_rx, &shutdown).await);
        let _hwm_tx = moved.await.unwrap();
        hwm_rx.borrow_and_update();
        assert!(!spin(Duration::from_millis(2), &mut hwm_rx, &shutdown).await);
        assert!(!spin(Duration::ZERO, &mut hwm_rx, &shutdown).await);
    }
}

//! The long poll shared by Fetch and PriorityFetch, and the size bound of an answer.

use std::time::{Duration, Instant};

use crate::error::BrokerError;
use crate::shard::Shard;
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
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = hwm_rx.changed() => {}
            _ = shutdown.changed() => {}
        }
    }
}

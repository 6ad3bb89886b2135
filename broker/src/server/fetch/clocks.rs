//! [`ReaderClocks`]: one priority reader's clocks, per shard it reads in priority order
//! — when each lane last went ahead of fresher data by aging, and where the weighted
//! fair queue's virtual time stood after the last answer.
//!
//! PriorityFetch builds a fresh [`crate::scheduler::Wfq`] for every answer
//! (`priority.rs`). Both clocks carry what must outlast one answer, per reader, not per
//! shard: every session (a TCP connection or an in-process client) keeps its own, so
//! - a lane goes ahead by aging once per aging period of its class *for this reader*:
//!   one reader's aged picks never use up another's;
//! - the weights hold across answers: a lane whose batch waited at the head of its
//!   lane keeps its place in virtual time ([`VirtualClock`]), so a low class whose
//!   higher classes fill whole answers still gets its weighted share of the bytes, not
//!   only its aged picks.
//!
//! Two consumers that share one SDK `Client` share its connection, and so its clocks.
//! Bounded: at most [`READER_SHARDS_MAX`] shards per session; a new one past that
//! takes the place of the one read least recently, whose lanes then start afresh (no
//! carried place; a lane may age again at once: still one aged batch per lane per
//! answer at most, so fresh P0 data waits behind no more than that).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use weir_protocol::classes::CLASS_COUNT;

use crate::scheduler::VirtualClock;

/// Shards whose clocks one session keeps at most.
pub const READER_SHARDS_MAX: usize = 256;

/// When each lane last went ahead by aging.
pub type Picks = [Option<Instant>; CLASS_COUNT];

/// A reader's clocks for one shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardClocks {
    pub aged: Picks,
    pub wfq: VirtualClock,
}

#[derive(Debug)]
struct Kept {
    clocks: ShardClocks,
    /// When an answer last recorded them (the least recent goes first when full).
    used: Instant,
}

/// One session's clocks; see the module docs.
#[derive(Debug, Default)]
pub struct ReaderClocks {
    shards: Mutex<HashMap<(String, u32), Kept>>,
}

impl ReaderClocks {
    /// This reader's clocks for `topic`/`shard` (fresh ones if it has none).
    pub fn get(&self, topic: &str, shard: u32) -> ShardClocks {
        let shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        // One small allocation per priority read, not per batch.
        shards
            .get(&(topic.to_string(), shard))
            .map(|k| k.clocks)
            .unwrap_or_default()
    }

    /// Records the clocks an answer that was sent leaves: its aged picks (a lane's time
    /// only moves forward) and its queue's virtual time.
    pub fn note(&self, topic: &str, shard: u32, aged: Picks, wfq: VirtualClock, now: Instant) {
        let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        let key = (topic.to_string(), shard);
        if !shards.contains_key(&key) && shards.len() >= READER_SHARDS_MAX {
            let oldest = shards
                .iter()
                .min_by_key(|(_, k)| k.used)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                shards.remove(&oldest);
            }
        }
        let kept = shards.entry(key).or_insert(Kept {
            clocks: ShardClocks::default(),
            used: now,
        });
        kept.used = now;
        kept.clocks.wfq = wfq;
        for (mine, new) in kept.clocks.aged.iter_mut().zip(aged) {
            *mine = (*mine).max(new);
        }
    }

    /// Shards with clocks kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn clocks_are_per_shard_and_aged_picks_only_move_forward() {
        let c = ReaderClocks::default();
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(5);
        let wfq = VirtualClock::default();
        assert_eq!(c.get("t", 0), ShardClocks::default());
        c.note("t", 0, [None, None, None, Some(t1)], wfq, t1);
        c.note("t", 0, [Some(t0), None, None, Some(t0)], wfq, t1);
        assert_eq!(c.get("t", 0).aged, [Some(t0), None, None, Some(t1)]);
        assert_eq!(c.get("t", 1), ShardClocks::default());
        assert_eq!(c.get("u", 0), ShardClocks::default());
    }

    #[test]
    fn a_full_table_gives_the_least_recently_read_shard_up() {
        let c = ReaderClocks::default();
        let t0 = Instant::now();
        let wfq = VirtualClock::default();
        let pick = [None, None, None, Some(t0)];
        for s in 0..READER_SHARDS_MAX as u32 {
            c.note("t", s, pick, wfq, t0 + Duration::from_millis(u64::from(s)));
        }
        assert_eq!(c.len(), READER_SHARDS_MAX);
        // Shard 0 read again: shard 1 is now the least recent.
        let later = t0 + Duration::from_secs(1);
        c.note("t", 0, pick, wfq, later);
        c.note("t", 10_000, pick, wfq, later);
        assert_eq!(c.len(), READER_SHARDS_MAX);
        assert_eq!(c.get("t", 10_000).aged, pick);
        assert_eq!(c.get("t", 0).aged, pick);
        assert_eq!(c.get("t", 1), ShardClocks::default(), "given up");
        assert_eq!(c.get("t", 2).aged, pick);
    }
}

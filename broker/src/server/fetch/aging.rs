//! [`ReaderClocks`]: one priority reader's aging clocks — when each lane of each shard
//! it reads in priority order last went ahead of fresher data by aging.
//!
//! PriorityFetch lets a lane go ahead by aging once per aging period of its class
//! (`priority.rs`). The period is counted per reader, not per shard: every session (a
//! TCP connection or an in-process client) keeps its own clocks, so one reader's aged
//! picks never use up another's, and each reader's backlogged lane moves at least once
//! per period however its higher classes fill its answers. Two consumers that share
//! one SDK `Client` share its connection, and so its clocks.
//!
//! Bounded: at most [`READER_SHARDS_MAX`] shards per session. A clock older than its
//! class's period says nothing (the lane may age again), so a full table first drops
//! those; if it is still full, the pick is not recorded, and that lane may go ahead by
//! aging again in the reader's next answer — one batch per lane per answer at most, so
//! fresh P0 data still waits behind no more than one aged batch per lane.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use weir_protocol::classes::CLASS_COUNT;

/// Shards whose clocks one session keeps at most.
pub const READER_SHARDS_MAX: usize = 256;

/// When each lane last went ahead by aging, per (topic, shard) a reader reads.
pub type Picks = [Option<Instant>; CLASS_COUNT];

/// One session's aging clocks; see the module docs.
#[derive(Debug, Default)]
pub struct ReaderClocks {
    picks: Mutex<HashMap<(String, u32), Picks>>,
}

impl ReaderClocks {
    /// When each lane of `topic`/`shard` last went ahead by aging for this reader.
    pub fn get(&self, topic: &str, shard: u32) -> Picks {
        let picks = self.picks.lock().unwrap_or_else(|p| p.into_inner());
        // One small allocation per priority read, not per batch.
        picks
            .get(&(topic.to_string(), shard))
            .copied()
            .unwrap_or_default()
    }

    /// Records the aged picks of an answer that was sent (a lane's time only moves
    /// forward). `aging` (the classes' periods) and `now` decide which clocks are
    /// spent when the table is full.
    pub fn note(
        &self,
        topic: &str,
        shard: u32,
        new: Picks,
        aging: &[Duration; CLASS_COUNT],
        now: Instant,
    ) {
        if new.iter().all(Option::is_none) {
            return;
        }
        let mut picks = self.picks.lock().unwrap_or_else(|p| p.into_inner());
        let key = (topic.to_string(), shard);
        if !picks.contains_key(&key) && picks.len() >= READER_SHARDS_MAX {
            picks.retain(|_, p| {
                p.iter().zip(aging).any(|(t, period)| {
                    t.is_some_and(|t| now.saturating_duration_since(t) < *period)
                })
            });
            if picks.len() >= READER_SHARDS_MAX {
                return;
            }
        }
        let mine = picks.entry(key).or_default();
        for (mine, new) in mine.iter_mut().zip(new) {
            *mine = (*mine).max(new);
        }
    }

    /// Shards with clocks kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.picks.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGING: [Duration; CLASS_COUNT] = [
        Duration::from_millis(100),
        Duration::from_millis(200),
        Duration::from_millis(400),
        Duration::from_millis(800),
    ];

    #[test]
    fn clocks_are_per_shard_and_only_move_forward() {
        let c = ReaderClocks::default();
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(5);
        assert_eq!(c.get("t", 0), [None; CLASS_COUNT]);
        c.note("t", 0, [None, None, None, Some(t1)], &AGING, t1);
        c.note("t", 0, [Some(t0), None, None, Some(t0)], &AGING, t1);
        assert_eq!(c.get("t", 0), [Some(t0), None, None, Some(t1)]);
        assert_eq!(c.get("t", 1), [None; CLASS_COUNT]);
        assert_eq!(c.get("u", 0), [None; CLASS_COUNT]);
        // An answer without aged picks leaves no entry behind.
        c.note("v", 0, [None; CLASS_COUNT], &AGING, t1);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_full_table_drops_spent_clocks_and_never_grows_past_its_bound() {
        let c = ReaderClocks::default();
        let t0 = Instant::now();
        for s in 0..READER_SHARDS_MAX as u32 {
            c.note("t", s, [None, None, None, Some(t0)], &AGING, t0);
        }
        assert_eq!(c.len(), READER_SHARDS_MAX);
        // Every clock still within P3's period: the new pick is not recorded.
        let soon = t0 + Duration::from_millis(10);
        c.note("t", 10_000, [None, None, None, Some(soon)], &AGING, soon);
        assert_eq!(c.len(), READER_SHARDS_MAX);
        assert_eq!(c.get("t", 10_000), [None; CLASS_COUNT]);
        // A known shard is still updated.
        c.note("t", 3, [None, None, None, Some(soon)], &AGING, soon);
        assert_eq!(c.get("t", 3)[3], Some(soon));
        // Once the period has passed the spent clocks go, and the new one is kept.
        let later = t0 + Duration::from_millis(900);
        c.note("t", 10_000, [Some(later), None, None, None], &AGING, later);
        assert_eq!(c.get("t", 10_000)[0], Some(later));
        assert!(
            c.len() < READER_SHARDS_MAX,
            "spent clocks dropped: {}",
            c.len()
        );
    }
}

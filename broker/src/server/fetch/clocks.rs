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
//! A carried place belongs to the batch that waited: the clocks keep the lane cursors
//! the answer left, and a next read from other cursors (a seek, a retry of an older
//! read) starts those lanes afresh. Two consumers that share one SDK `Client` share its
//! connection, and so its clocks; two reads of one shard overlapping on one session
//! (a retry after a timeout) keep the clock of the one that went further, and may both
//! take a lane's aged pick.
//!
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

/// A reader's clocks for one shard: what one answer leaves for the next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardClocks {
    /// When each lane last went ahead by aging.
    pub aged: Picks,
    /// The answer's queue's virtual time and its waiting heads' places.
    pub wfq: VirtualClock,
    /// The lane cursors the answer left: where those waiting heads are.
    pub cursors: [u64; CLASS_COUNT],
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
    inner: Mutex<Shards>,
}

/// Per topic, per shard (by topic first, so a look-up needs no owned key).
#[derive(Debug, Default)]
struct Shards {
    by_topic: HashMap<String, HashMap<u32, Kept>>,
    len: usize,
}

impl ReaderClocks {
    /// This reader's clocks for `topic`/`shard` (fresh ones if it has none).
    pub fn get(&self, topic: &str, shard: u32) -> ShardClocks {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .by_topic
            .get(topic)
            .and_then(|t| t.get(&shard))
            .map(|k| k.clocks)
            .unwrap_or_default()
    }

    /// Records what an answer that was sent leaves: its aged picks (a lane's time only
    /// moves forward) and, unless an overlapping answer already went further, its
    /// queue's clock and cursors.
    pub fn note(&self, topic: &str, shard: u32, left: ShardClocks, now: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let known = inner
            .by_topic
            .get(topic)
            .is_some_and(|t| t.contains_key(&shard));
        if !known {
            if inner.len >= READER_SHARDS_MAX {
                inner.forget_least_recent();
            }
            inner.len += 1;
        }
        // The topic's name is copied only the first time it is read.
        if !inner.by_topic.contains_key(topic) {
            inner.by_topic.insert(topic.to_string(), HashMap::new());
        }
        let kept = inner
            .by_topic
            .get_mut(topic)
            .expect("inserted above")
            .entry(shard)
            .or_insert(Kept {
                clocks: ShardClocks::default(),
                used: now,
            });
        kept.used = now;
        if !left.wfq.is_behind(&kept.clocks.wfq) {
            kept.clocks.wfq = left.wfq;
            kept.clocks.cursors = left.cursors;
        }
        for (mine, new) in kept.clocks.aged.iter_mut().zip(left.aged) {
            *mine = (*mine).max(new);
        }
    }

    /// Shards with clocks kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().unwrap().len
    }
}

impl Shards {
    fn forget_least_recent(&mut self) {
        let oldest = self
            .by_topic
            .iter()
            .flat_map(|(t, shards)| shards.iter().map(move |(s, k)| (k.used, t, *s)))
            .min()
            .map(|(_, t, s)| (t.clone(), s));
        let Some((topic, shard)) = oldest else {
            return;
        };
        if let Some(shards) = self.by_topic.get_mut(&topic) {
            if shards.remove(&shard).is_some() {
                self.len -= 1;
            }
            if shards.is_empty() {
                self.by_topic.remove(&topic);
            }
        }
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
        let left = |aged| ShardClocks {
            aged,
            ..Default::default()
        };
        assert_eq!(c.get("t", 0), ShardClocks::default());
        c.note("t", 0, left([None, None, None, Some(t1)]), t1);
        c.note("t", 0, left([Some(t0), None, None, Some(t0)]), t1);
        assert_eq!(c.get("t", 0).aged, [Some(t0), None, None, Some(t1)]);
        assert_eq!(c.get("t", 1), ShardClocks::default());
        assert_eq!(c.get("u", 0), ShardClocks::default());
    }

    #[test]
    fn an_overlapping_answer_that_went_less_far_leaves_the_clock_alone() {
        use crate::scheduler::{Wfq, DEFAULT_AGING};
        use weir_protocol::classes::{Class, DEFAULT_CLASS_WEIGHTS};
        let c = ReaderClocks::default();
        let t0 = Instant::now();
        let mut q: Wfq<()> = Wfq::new(DEFAULT_CLASS_WEIGHTS, DEFAULT_AGING);
        q.push(Class::P0, (), 1000, t0);
        q.pop(t0);
        let further = ShardClocks {
            wfq: q.clock(),
            cursors: [5; CLASS_COUNT],
            ..Default::default()
        };
        let behind = ShardClocks {
            aged: [Some(t0), None, None, None],
            cursors: [1; CLASS_COUNT],
            ..Default::default()
        };
        c.note("t", 0, further, t0);
        c.note("t", 0, behind, t0);
        let got = c.get("t", 0);
        assert_eq!((got.wfq, got.cursors), (further.wfq, further.cursors));
        assert_eq!(got.aged[0], Some(t0), "its aged pick still counts");
    }

    #[test]
    fn a_full_table_gives_the_least_recently_read_shard_up() {
        let c = ReaderClocks::default();
        let t0 = Instant::now();
        let pick = [None, None, None, Some(t0)];
        let left = ShardClocks {
            aged: pick,
            ..Default::default()
        };
        for s in 0..READER_SHARDS_MAX as u32 {
            c.note("t", s, left, t0 + Duration::from_millis(u64::from(s)));
        }
        assert_eq!(c.len(), READER_SHARDS_MAX);
        // Shard 0 read again: shard 1 is now the least recent.
        let later = t0 + Duration::from_secs(1);
        c.note("t", 0, left, later);
        c.note("u", 10_000, left, later);
        assert_eq!(c.len(), READER_SHARDS_MAX);
        assert_eq!(c.get("u", 10_000).aged, pick);
        assert_eq!(c.get("t", 0).aged, pick);
        assert_eq!(c.get("t", 1), ShardClocks::default(), "given up");
        assert_eq!(c.get("t", 2).aged, pick);
    }
}

//! Per-shard producer state: makes retried batches from idempotent producers free of
//! duplicates.
//!
//! For each producer id the shard remembers its newest epoch, the last sequence number
//! it stored, and the offsets of its last few batches. A batch whose sequence range
//! equals a remembered one is a retry: it is answered with the original offsets and not
//! written again. A batch that is neither a retry nor the next sequence is refused
//! (OUT_OF_ORDER_SEQUENCE), and one from an older epoch is fenced (PRODUCER_FENCED).
//! The state lives only in the shard's writer thread and is rebuilt from the log's
//! batch headers when the shard opens.
//!
//! Sequences run per (producer, priority class): the shard writer schedules each class
//! in its own lane, so batches of different classes may be written in a different order
//! than they were sent, while batches of one class never are. The SDK keeps one
//! sequence per (shard, class) to match. A batch's class is the class of its header's
//! priority (its highest-priority record).

use std::collections::{HashMap, VecDeque};

use weir_protocol::batch::{BatchHeader, NO_PRODUCER_ID};
use weir_protocol::classes::ClassMap;

/// How many recent batches per producer lane are remembered for de-duplication: the
/// protocol's window (a producer keeps at most this many in flight per lane).
pub const RETAINED_BATCHES: usize = weir_protocol::batch::IDEMPOTENT_WINDOW;

/// Most producers remembered per shard; the least recently seen is forgotten beyond it.
pub const MAX_PRODUCERS: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stored {
    first_seq: u32,
    last_seq: u32,
    base_offset: u64,
    last_offset: u64,
}

#[derive(Debug, Default)]
struct Producer {
    epoch: u16,
    last_seq: Option<u32>,
    recent: VecDeque<Stored>,
    last_seen: u64,
}

/// What to do with one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not from an idempotent producer, or the next expected sequence: write it.
    Append,
    /// A retry of a stored batch: answer with these offsets, write nothing.
    Duplicate { base_offset: u64, last_offset: u64 },
    /// Sequence gap or overlap that is not an exact retry.
    OutOfOrder { expected: u32, got: u32 },
    /// The producer's epoch is older than one already seen.
    Fenced { current_epoch: u16 },
}

/// Whether `h` is the next batch of a lane whose newest batch had `epoch` and ended at
/// sequence `last_seq`: the next sequence in that epoch, or sequence 0 of a newer one.
pub fn continues(epoch: u16, last_seq: u32, h: &BatchHeader) -> bool {
    if h.producer_epoch == epoch {
        h.base_sequence == last_seq.wrapping_add(1)
    } else {
        h.producer_epoch > epoch && h.base_sequence == 0
    }
}

/// The producers known to one shard, by (producer id, class index).
#[derive(Debug, Default)]
pub struct ProducerTable {
    producers: HashMap<(u64, u8), Producer>,
    classes: ClassMap,
    clock: u64,
}

impl ProducerTable {
    /// An empty table that keeps sequences per class of `classes`.
    pub fn new(classes: ClassMap) -> Self {
        ProducerTable {
            classes,
            ..ProducerTable::default()
        }
    }

    /// The sequence lane a batch belongs to, `None` for a batch without a producer.
    pub fn lane(&self, h: &BatchHeader) -> Option<(u64, u8)> {
        (h.producer_id != NO_PRODUCER_ID).then(|| self.key(h))
    }

    fn key(&self, h: &BatchHeader) -> (u64, u8) {
        (
            h.producer_id,
            self.classes.class_of(h.priority).index() as u8,
        )
    }

    /// Decides what to do with a batch before it is written.
    pub fn check(&self, h: &BatchHeader) -> Verdict {
        if h.producer_id == NO_PRODUCER_ID {
            return Verdict::Append;
        }
        let Some(p) = self.producers.get(&self.key(h)) else {
            // A producer this shard has not seen in the window it remembers: either new
            // or idle for longer than the window. Its batch cannot be a retry of a
            // batch in the window, so it is accepted at any sequence.
            return Verdict::Append;
        };
        if h.producer_epoch < p.epoch {
            return Verdict::Fenced {
                current_epoch: p.epoch,
            };
        }
        if h.producer_epoch > p.epoch {
            return if h.base_sequence == 0 {
                Verdict::Append
            } else {
                Verdict::OutOfOrder {
                    expected: 0,
                    got: h.base_sequence,
                }
            };
        }
        let last_seq = h.last_sequence();
        if let Some(s) = p
            .recent
            .iter()
            .find(|s| s.first_seq == h.base_sequence && s.last_seq == last_seq)
        {
            return Verdict::Duplicate {
                base_offset: s.base_offset,
                last_offset: s.last_offset,
            };
        }
        let expected = p.last_seq.map_or(0, |s| s.wrapping_add(1));
        if h.base_sequence == expected {
            Verdict::Append
        } else {
            Verdict::OutOfOrder {
                expected,
                got: h.base_sequence,
            }
        }
    }

    /// Records a batch just written after [`ProducerTable::check`] said
    /// [`Verdict::Append`] for it. Its base sequence continues its lane (see
    /// [`continues`]) unless the lane is unknown: `check` saw to that, and the writer
    /// refuses an append whose later batch does not continue an earlier one of its
    /// lane (`check` does not see batches of the same append).
    pub fn accept(&mut self, h: &BatchHeader) {
        if let Some(p) = self.lane(h).and_then(|k| self.producers.get(&k)) {
            crate::invariant!(
                p.last_seq.is_some_and(|last| continues(p.epoch, last, h)),
                "sequence continuity per producer lane",
                "producer {} epoch {} (lane at epoch {}, last sequence {:?}) accepted at sequence {}",
                h.producer_id,
                h.producer_epoch,
                p.epoch,
                p.last_seq,
                h.base_sequence
            );
        }
        self.record(h);
    }

    /// Records a batch found in the log on recovery (or written; see
    /// [`ProducerTable::accept`]). Nothing is asserted: a lane forgotten under
    /// [`MAX_PRODUCERS`] may have been accepted at any sequence, so the log may hold
    /// gaps that were legal when written.
    pub fn record(&mut self, h: &BatchHeader) {
        if h.producer_id == NO_PRODUCER_ID {
            return;
        }
        self.clock += 1;
        let key = self.key(h);
        let p = self.producers.entry(key).or_default();
        if h.producer_epoch != p.epoch {
            p.epoch = h.producer_epoch;
            p.recent.clear();
        }
        p.last_seq = Some(h.last_sequence());
        p.last_seen = self.clock;
        if p.recent.len() == RETAINED_BATCHES {
            p.recent.pop_front();
        }
        p.recent.push_back(Stored {
            first_seq: h.base_sequence,
            last_seq: h.last_sequence(),
            base_offset: h.base_offset,
            last_offset: h.last_offset(),
        });
        if self.producers.len() > MAX_PRODUCERS {
            self.evict_oldest();
        }
    }

    /// The newest epoch of each producer id in the table, over all its class lanes,
    /// for ids whose epoch is above 0: what the broker-wide fencing table
    /// (`crate::producer_ids`) learns from this shard's log on recovery.
    pub fn newest_epochs(&self) -> HashMap<u64, u16> {
        let mut out: HashMap<u64, u16> = HashMap::new();
        for (&(id, _), p) in &self.producers {
            if p.epoch > 0 {
                let e = out.entry(id).or_insert(0);
                *e = (*e).max(p.epoch);
            }
        }
        out
    }

    fn evict_oldest(&mut self) {
        if let Some((&key, _)) = self.producers.iter().min_by_key(|(_, p)| p.last_seen) {
            self.producers.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_protocol::batch::{BatchBuilder, NewRecord};

    fn header(pid: u64, epoch: u16, seq: u32, n: u32, base: u64) -> BatchHeader {
        header_at(5, pid, epoch, seq, n, base)
    }

    fn header_at(priority: u8, pid: u64, epoch: u16, seq: u32, n: u32, base: u64) -> BatchHeader {
        let mut b = BatchBuilder::new().producer(pid, epoch, seq);
        for _ in 0..n {
            let mut r = NewRecord::value(0, b"x");
            r.priority = priority;
            b.push(&r).unwrap();
        }
        let mut h = BatchHeader::read(&b.finish().unwrap()).unwrap();
        h.base_offset = base;
        h
    }

    #[test]
    fn retry_is_a_duplicate_with_original_offsets() {
        let mut t = ProducerTable::default();
        let h = header(1, 0, 0, 3, 10);
        assert_eq!(t.check(&h), Verdict::Append);
        t.record(&h);
        assert_eq!(
            t.check(&header(1, 0, 0, 3, 0)),
            Verdict::Duplicate {
                base_offset: 10,
                last_offset: 12
            }
        );
        assert_eq!(t.check(&header(1, 0, 3, 1, 0)), Verdict::Append);
    }

    #[test]
    fn gaps_and_old_epochs_are_refused() {
        let mut t = ProducerTable::default();
        t.record(&header(1, 2, 0, 1, 0));
        assert_eq!(
            t.check(&header(1, 2, 5, 1, 0)),
            Verdict::OutOfOrder {
                expected: 1,
                got: 5
            }
        );
        assert_eq!(
            t.check(&header(1, 1, 1, 1, 0)),
            Verdict::Fenced { current_epoch: 2 }
        );
        assert_eq!(t.check(&header(1, 3, 0, 1, 0)), Verdict::Append);
        assert!(matches!(
            t.check(&header(1, 3, 4, 1, 0)),
            Verdict::OutOfOrder { .. }
        ));
        // Unknown producers start wherever they are.
        assert_eq!(t.check(&header(9, 0, 4, 1, 0)), Verdict::Append);
    }

    #[test]
    fn accepting_the_next_sequence_or_a_new_epoch_holds_the_invariant() {
        let mut t = ProducerTable::default();
        t.accept(&header(1, 0, 0, 3, 0));
        t.accept(&header(1, 0, 3, 2, 3));
        t.accept(&header(1, 1, 0, 1, 5));
        // Unknown lanes start anywhere.
        t.accept(&header(2, 0, 40, 1, 6));
    }

    #[test]
    #[should_panic(expected = "invariant violated: sequence continuity per producer lane")]
    fn accepting_a_sequence_gap_violates_the_invariant() {
        let mut t = ProducerTable::default();
        t.accept(&header(1, 0, 0, 3, 0));
        // check() would say OutOfOrder; accepting it anyway is a writer bug.
        t.accept(&header(1, 0, 4, 1, 3));
    }

    #[test]
    #[should_panic(expected = "invariant violated: sequence continuity per producer lane")]
    fn accepting_a_new_epoch_not_at_zero_violates_the_invariant() {
        let mut t = ProducerTable::default();
        t.accept(&header(1, 0, 0, 3, 0));
        t.accept(&header(1, 1, 7, 1, 3));
    }

    #[test]
    fn newest_epochs_are_per_id_over_every_class() {
        let mut t = ProducerTable::new(ClassMap::default());
        t.record(&header_at(1, 4, 2, 0, 1, 0));
        t.record(&header_at(10, 4, 5, 0, 1, 1));
        t.record(&header_at(10, 6, 0, 0, 1, 2));
        assert_eq!(t.newest_epochs(), HashMap::from([(4, 5)]));
    }

    #[test]
    fn each_class_has_its_own_sequence() {
        let mut t = ProducerTable::new(ClassMap::default());
        // P0 (priority 1) and P3 (priority 10) batches of one producer, each starting
        // at sequence 0: both are the next in their own class.
        let p0 = header_at(1, 4, 0, 0, 2, 0);
        let p3 = header_at(10, 4, 0, 0, 2, 2);
        t.record(&p0);
        assert_eq!(t.check(&p3), Verdict::Append);
        t.record(&p3);
        assert_eq!(t.check(&header_at(2, 4, 0, 2, 1, 0)), Verdict::Append);
        assert!(matches!(
            t.check(&header_at(9, 4, 0, 5, 1, 0)),
            Verdict::OutOfOrder { expected: 2, .. }
        ));
        // A retry is recognised within its class only.
        assert_eq!(
            t.check(&header_at(10, 4, 0, 0, 2, 0)),
            Verdict::Duplicate {
                base_offset: 2,
                last_offset: 3
            }
        );
    }
}

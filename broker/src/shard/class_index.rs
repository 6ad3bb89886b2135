//! [`ClassIndex`]: where each priority class's batches are in a shard's log, for
//! priority-ordered reads.
//!
//! The log is one offset-ordered sequence; a consumer that wants P0 data first reads it
//! as four lanes, one per class. The index keeps, per class, the runs of consecutive
//! batches of that class as `[start, end)` offset ranges, so "the first class-c batch
//! at or after offset o" is a binary search. It is built lazily — only shards that are
//! ever read in priority order pay for it — by scanning batch headers from where the
//! last scan stopped up to the high-water mark, and it drops runs below the log start
//! after retention. Memory: 16 bytes per change of class along the log. A batch damaged on
//! disk is in every lane (its class cannot be trusted): each lane's reader stops at it with
//! the read's error, and the intact batches on either side stay readable.

use std::collections::VecDeque;

use weir_protocol::classes::{Class, ClassMap, CLASS_COUNT};

use crate::storage::{LogReader, StorageError};

/// Damaged batches one [`ClassIndex::catch_up`] steps over at most.
const DAMAGE_STEPS_MAX: usize = 64;

/// Adds `[start, end)` to a lane, joining it to the lane's last run when they touch.
fn add_run(lane: &mut VecDeque<(u64, u64)>, start: u64, end: u64) {
    match lane.back_mut() {
        Some(run) if run.1 == start => run.1 = end,
        _ => lane.push_back((start, end)),
    }
}

/// Runs of each class's batches in one shard's log; see the module docs.
#[derive(Debug, Default)]
pub struct ClassIndex {
    runs: [VecDeque<(u64, u64)>; CLASS_COUNT],
    scanned_to: u64,
}

impl ClassIndex {
    /// Extends the index to the reader's high-water mark and drops what retention
    /// removed.
    pub fn catch_up(&mut self, reader: &LogReader, classes: &ClassMap) -> Result<(), StorageError> {
        let start = reader.log_start_offset();
        for lane in &mut self.runs {
            while lane.front().is_some_and(|r| r.1 <= start) {
                lane.pop_front();
            }
        }
        // A damaged batch does not end the index: its offsets go into every lane, so
        // that each lane's reader meets the damage where it lies (the read fails there,
        // naming the offset, until the reader moves past it) and every intact batch
        // around it stays readable. Bounded per call; the next call goes on.
        // Both closures note how far the index got: a batch's end, or a damage's.
        let reached = std::cell::Cell::new(self.scanned_to.max(start));
        let runs = std::cell::RefCell::new(&mut self.runs);
        let scanned = reader.scan_intact_batches(
            self.scanned_to,
            DAMAGE_STEPS_MAX,
            |_, h| {
                let lane = classes.class_of(h.priority).index();
                add_run(
                    &mut runs.borrow_mut()[lane],
                    h.base_offset,
                    h.last_offset() + 1,
                );
                reached.set(h.last_offset() + 1);
                Ok::<(), StorageError>(())
            },
            |from, to| {
                for lane in runs.borrow_mut().iter_mut() {
                    add_run(lane, from, to);
                }
                reached.set(to);
            },
        );
        match scanned {
            Ok(to) => {
                self.scanned_to = to;
                Ok(())
            }
            Err(e) => {
                // What was visited is in the index: the next call goes on from there
                // (not from the start, which would add those runs twice).
                self.scanned_to = reached.get();
                Err(e)
            }
        }
    }

    /// The offset to read class `class`'s next batch from: `from` itself when a batch of
    /// that class holds it, else the start of the class's next run; `None` when the class
    /// has nothing at or after `from` (as far as the index has scanned).
    pub fn next(&self, class: Class, from: u64) -> Option<u64> {
        let lane = &self.runs[class.index()];
        let i = lane.partition_point(|r| r.1 <= from);
        lane.get(i).map(|r| r.0.max(from))
    }

    /// How far the index has scanned.
    pub fn scanned_to(&self) -> u64 {
        self.scanned_to
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Log, LogConfig};
    use weir_protocol::batch::{BatchBuilder, NewRecord};

    fn batch(priority: u8, records: usize) -> bytes::Bytes {
        let mut b = BatchBuilder::new();
        for _ in 0..records {
            let mut r = NewRecord::value(0, b"v");
            r.priority = priority;
            b.push(&r).unwrap();
        }
        b.finish().unwrap()
    }

    #[test]
    fn finds_each_class_next_batch_and_catches_up_incrementally() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(
            dir.path(),
            LogConfig {
                segment_bytes: 1 << 20,
                ..LogConfig::default()
            },
        )
        .unwrap();
        // Offsets: P3 [0,10) [10,20), P0 [20,22), P3 [22,32), P1 [32,35).
        for (p, n) in [(10, 10), (9, 10), (1, 2), (10, 10), (4, 3)] {
            log.append(&[batch(p, n)]).unwrap();
        }
        let classes = ClassMap::default();
        let mut index = ClassIndex::default();
        index.catch_up(&log.reader(), &classes).unwrap();
        assert_eq!(index.scanned_to(), 35);
        assert_eq!(index.next(Class::P3, 0), Some(0));
        assert_eq!(
            index.next(Class::P3, 10),
            Some(10),
            "consecutive batches merge"
        );
        assert_eq!(index.next(Class::P3, 20), Some(22));
        assert_eq!(index.next(Class::P3, 32), None);
        assert_eq!(index.next(Class::P0, 0), Some(20));
        assert_eq!(index.next(Class::P1, 0), Some(32));
        assert_eq!(index.next(Class::P2, 0), None);
        log.append(&[batch(7, 1)]).unwrap();
        index.catch_up(&log.reader(), &classes).unwrap();
        assert_eq!(index.next(Class::P2, 0), Some(35));
        assert_eq!(index.scanned_to(), 36);
    }

    /// A batch damaged on disk does not end the index: it is in every lane (so each
    /// lane's reader meets it), and the batches after it are indexed as before.
    #[test]
    fn a_damaged_batch_is_in_every_lane_and_the_scan_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
        // Offsets: P3 [0,2), P0 [2,3) (to be damaged), P3 [3,5), P1 [5,6).
        let batches = [batch(10, 2), batch(1, 1), batch(10, 2), batch(4, 1)];
        for b in &batches {
            log.append(std::slice::from_ref(b)).unwrap();
        }
        log.flush().unwrap();
        let file = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "log"))
            .unwrap();
        let mut bytes = std::fs::read(&file).unwrap();
        // The P0 batch's last byte (a record's value), so its CRC fails.
        let end = batches[0].len() + batches[1].len();
        bytes[end - 1] ^= 0x20;
        std::fs::write(&file, &bytes).unwrap();
        let reader = log.reader();
        assert!(reader.read(2, 1).is_err(), "the damage is seen");
        let mut index = ClassIndex::default();
        index.catch_up(&reader, &ClassMap::default()).unwrap();
        assert_eq!(index.scanned_to(), 6);
        for c in Class::ALL {
            assert_eq!(index.next(c, 2), Some(2), "{c:?} meets the damage");
        }
        assert_eq!(index.next(Class::P3, 0), Some(0));
        assert_eq!(index.next(Class::P3, 3), Some(3));
        assert_eq!(index.next(Class::P1, 3), Some(5));
        assert_eq!(index.next(Class::P0, 3), None);
    }
}

//! [`ClassIndex`]: where each priority class's batches are in a shard's log, for
//! priority-ordered reads.
//!
//! The log is one offset-ordered sequence; a consumer that wants P0 data first reads it
//! as four lanes, one per class. The index keeps, per class, the runs of consecutive
//! batches of that class as `[start, end)` offset ranges, so "the first class-c batch
//! at or after offset o" is a binary search. It is built lazily — only shards that are
//! ever read in priority order pay for it — by scanning batch headers from where the
//! last scan stopped up to the high-water mark, and it drops runs below the log start
//! after retention. Memory: 16 bytes per change of class along the log.

use std::collections::VecDeque;

use weir_protocol::classes::{Class, ClassMap, CLASS_COUNT};

use crate::storage::{LogReader, StorageError};

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
        let runs = &mut self.runs;
        self.scanned_to = reader.scan_batches(self.scanned_to, |_, h| {
            let lane = &mut runs[classes.class_of(h.priority).index()];
            match lane.back_mut() {
                Some(run) if run.1 == h.base_offset => run.1 = h.last_offset() + 1,
                _ => lane.push_back((h.base_offset, h.last_offset() + 1)),
            }
            Ok::<(), StorageError>(())
        })?;
        Ok(())
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
}

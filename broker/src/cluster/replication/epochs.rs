//! A shard copy's epoch history: which epoch wrote which offsets (Kafka's
//! leader-epoch checkpoint). A primary adds `(epoch, its log end)` when it takes over;
//! a mirror copies the primary's entries as it copies the records they cover. With it
//! a primary tells a mirror where their logs diverge (PROTOCOL.md §MirrorFetch).
//!
//! Kept in `<shard dir>/epochs.json`, replaced atomically (write, fsync, rename, fsync
//! the directory). A missing or unreadable file is an empty history: the copy then
//! looks entirely divergent and refetches from the primary, which is slow but safe.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weir_protocol::messages::EpochStart;

const FILE: &str = "epochs.json";

/// One entry: records from `start` to the next entry's start were written in `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub epoch: u32,
    pub start: u64,
}

/// The history of one copy, oldest first; epochs and starts strictly increase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochHistory {
    dir: PathBuf,
    entries: Vec<Entry>,
}

impl EpochHistory {
    /// Loads the history kept in `dir` (empty when there is none or it is damaged).
    pub fn load(dir: &Path) -> EpochHistory {
        let entries = std::fs::read(dir.join(FILE))
            .ok()
            .map(|b| decode(&b))
            .unwrap_or_default();
        EpochHistory {
            dir: dir.to_path_buf(),
            entries,
        }
    }

    fn save(&self) -> std::io::Result<()> {
        crate::files::write_atomically(&self.dir, FILE, &encode(&self.entries))
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The newest epoch.
    pub fn last_epoch(&self) -> u32 {
        self.entries.last().map_or(0, |e| e.epoch)
    }

    /// The epoch that wrote the record just below `end` (0 when `end` is 0 or the
    /// history does not cover it).
    pub fn epoch_before(&self, end: u64) -> u32 {
        if end == 0 {
            return 0;
        }
        self.entries
            .iter()
            .rev()
            .find(|e| e.start < end)
            .map_or(0, |e| e.epoch)
    }

    /// Records that `epoch` starts writing at `start` (a primary taking over at its
    /// log end). Does nothing when the history already has this or a newer epoch.
    pub fn begin(&mut self, epoch: u32, start: u64) -> std::io::Result<()> {
        if epoch <= self.last_epoch() {
            return Ok(());
        }
        // An epoch that wrote nothing is replaced by the one that starts where it did.
        while self.entries.last().is_some_and(|e| e.start >= start) {
            self.entries.pop();
        }
        self.entries.push(Entry { epoch, start });
        self.save()
    }

    /// Takes the primary's entries that begin below `end` (this copy's log end after
    /// writing what it fetched) and are newer than what it has.
    pub fn learn(&mut self, primary: &[EpochStart], end: u64) -> std::io::Result<()> {
        let mut changed = false;
        for e in primary {
            if e.start_offset < end && e.epoch > self.last_epoch() {
                while self
                    .entries
                    .last()
                    .is_some_and(|l| l.start >= e.start_offset)
                {
                    self.entries.pop();
                }
                self.entries.push(Entry {
                    epoch: e.epoch,
                    start: e.start_offset,
                });
                changed = true;
            }
        }
        if changed {
            self.save()?;
        }
        Ok(())
    }

    /// Forgets the entries of offsets at or above `end` (the log was cut there).
    pub fn truncate(&mut self, end: u64) -> std::io::Result<()> {
        let before = self.entries.len();
        self.entries.retain(|e| e.start < end);
        if self.entries.len() != before {
            self.save()?;
        }
        Ok(())
    }

    /// Where a copy whose newest record below `fetch_offset` was written in
    /// `last_epoch` must cut its log before copying from this one, whose log ends at
    /// `log_end`: `None` when it need not. The end of `last_epoch` here is the start of
    /// the first newer epoch (or `log_end`); a copy holding records of `last_epoch`
    /// beyond that end, or of an epoch this copy never had, diverges from there.
    pub fn divergence(&self, last_epoch: u32, fetch_offset: u64, log_end: u64) -> Option<u64> {
        if fetch_offset == 0 {
            return None;
        }
        if fetch_offset > log_end {
            return Some(log_end.min(self.end_of(last_epoch, log_end)));
        }
        if last_epoch == 0 {
            // Records with no known epoch: start over.
            return Some(0);
        }
        let end = self.end_of(last_epoch, log_end);
        (end < fetch_offset).then_some(end)
    }

    /// The offset after the last record `epoch` wrote here (see [`Self::divergence`]).
    fn end_of(&self, epoch: u32, log_end: u64) -> u64 {
        match self.entries.iter().find(|e| e.epoch > epoch) {
            Some(next) => next.start,
            None => log_end,
        }
    }

    /// The entries from the one holding `offset` on, as sent to a mirror.
    pub fn from_offset(&self, offset: u64) -> Vec<EpochStart> {
        let first = self
            .entries
            .iter()
            .rposition(|e| e.start <= offset)
            .unwrap_or(0);
        self.entries[first..]
            .iter()
            .map(|e| EpochStart {
                epoch: e.epoch,
                start_offset: e.start,
            })
            .collect()
    }
}

/// The history `epochs.json` holds: a JSON array of `{"epoch":E,"start":S}`, epochs
/// and starts strictly increasing. Anything else (damaged, out of order) is an empty
/// history, never a panic.
pub fn decode(bytes: &[u8]) -> Vec<Entry> {
    serde_json::from_slice::<Vec<Entry>>(bytes)
        .ok()
        .filter(|e| well_formed(e))
        .unwrap_or_default()
}

/// The bytes of `epochs.json` for `entries`.
pub fn encode(entries: &[Entry]) -> Vec<u8> {
    serde_json::to_vec(entries).expect("epochs serialise")
}

/// Whether `entries` is a history: epochs and starts strictly increase.
pub fn well_formed(entries: &[Entry]) -> bool {
    entries
        .windows(2)
        .all(|w| w[0].epoch < w[1].epoch && w[0].start < w[1].start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(entries: &[(u32, u64)]) -> EpochHistory {
        EpochHistory {
            dir: PathBuf::new(),
            entries: entries
                .iter()
                .map(|&(epoch, start)| Entry { epoch, start })
                .collect(),
        }
    }

    #[test]
    fn divergence_follows_kip_101() {
        // The new primary took over at 80 in epoch 2; the old primary wrote 0..100 in
        // epoch 1: it must cut back to 80.
        let primary = hist(&[(1, 0), (2, 80)]);
        assert_eq!(primary.divergence(1, 100, 120), Some(80));
        // A mirror that stopped at 60 in epoch 1 goes on from there.
        assert_eq!(primary.divergence(1, 60, 120), None);
        // A mirror of the current epoch is fine anywhere up to the end.
        assert_eq!(primary.divergence(2, 120, 120), None);
        // An epoch the primary never had (3, an isolated old primary's): cut to where
        // the primary's next newer epoch starts, or its end.
        assert_eq!(primary.divergence(3, 130, 120), Some(120));
        // Records without an epoch: start over.
        assert_eq!(primary.divergence(0, 10, 120), Some(0));
        assert_eq!(primary.divergence(0, 0, 120), None);
    }

    #[test]
    fn history_file_round_trips_and_damage_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = EpochHistory::load(dir.path());
        assert_eq!(h.last_epoch(), 0);
        h.begin(1, 0).unwrap();
        h.learn(
            &[
                EpochStart {
                    epoch: 1,
                    start_offset: 0,
                },
                EpochStart {
                    epoch: 3,
                    start_offset: 50,
                },
                EpochStart {
                    epoch: 4,
                    start_offset: 90,
                },
            ],
            60,
        )
        .unwrap();
        assert_eq!(
            h.entries(),
            &[
                Entry { epoch: 1, start: 0 },
                Entry {
                    epoch: 3,
                    start: 50
                }
            ]
        );
        assert_eq!(h.epoch_before(50), 1);
        assert_eq!(h.epoch_before(51), 3);
        let again = EpochHistory::load(dir.path());
        assert_eq!(again.entries(), h.entries());
        h.truncate(50).unwrap();
        assert_eq!(
            EpochHistory::load(dir.path()).entries(),
            &[Entry { epoch: 1, start: 0 }]
        );
        std::fs::write(dir.path().join(FILE), b"[{\"epoch\":2").unwrap();
        assert!(EpochHistory::load(dir.path()).entries().is_empty());
        std::fs::write(
            dir.path().join(FILE),
            br#"[{"epoch":2,"start":5},{"epoch":1,"start":9}]"#,
        )
        .unwrap();
        assert!(EpochHistory::load(dir.path()).entries().is_empty());
    }

    proptest::proptest! {
        /// Whatever bytes the file holds, loading gives a well-formed history (or an
        /// empty one), never a panic.
        #[test]
        fn any_file_loads_as_a_well_formed_history(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(FILE), &bytes).unwrap();
            let h = EpochHistory::load(dir.path());
            proptest::prop_assert!(well_formed(h.entries()));
        }

        /// A well-formed history survives encoding; a history with any pair out of
        /// order decodes as empty rather than as a history the checks would trust.
        #[test]
        fn histories_round_trip_and_disorder_is_refused(
            steps in proptest::collection::vec((1u32..5, 1u64..1000), 0..20),
            swap in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let mut entries = Vec::new();
            let (mut epoch, mut start) = (0u32, 0u64);
            for (de, ds) in steps {
                epoch += de;
                entries.push(Entry { epoch, start });
                start += ds;
            }
            proptest::prop_assert_eq!(decode(&encode(&entries)), entries.clone());
            if entries.len() >= 2 {
                let i = swap.index(entries.len() - 1);
                entries.swap(i, i + 1);
                proptest::prop_assert!(decode(&encode(&entries)).is_empty());
            }
        }

        /// Bytes that are almost a history (one flipped bit, or cut short) decode as
        /// a well-formed history or as none.
        #[test]
        fn a_damaged_history_decodes_well_formed_or_empty(
            n in 1usize..10,
            flip in proptest::prelude::any::<proptest::sample::Index>(),
            bit in 0u8..8,
            cut in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let entries: Vec<Entry> = (0..n as u32)
                .map(|i| Entry { epoch: i + 1, start: u64::from(i) * 10 })
                .collect();
            let mut bytes = encode(&entries);
            let at = flip.index(bytes.len());
            bytes[at] ^= 1 << bit;
            proptest::prop_assert!(well_formed(&decode(&bytes)));
            let good = encode(&entries);
            let short = decode(&good[..cut.index(good.len())]);
            proptest::prop_assert!(short.is_empty(), "a cut file is never a history");
        }
    }
}

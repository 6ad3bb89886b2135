//! The consensus engine's log and vote on disk, as openraft's [`RaftLogStorage`].
//!
//! Openraft may only be told a vote or an appended entry is stored once it survives a
//! crash, so both are fsync'd first: the vote is a small file replaced whole
//! (write-then-rename), the log one append-only file of framed entries. Entries are
//! also kept in memory (cluster metadata changes are few and small; a snapshot every
//! [`super::SNAPSHOT_EVERY_ENTRIES`] bounds them), so reads never touch the disk.
//! Opening the store scans the file and cuts it back at the first torn or corrupt
//! entry — what a `kill -9` during an append leaves — as segment recovery does.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader, StorageIOError};

use super::files::{self, FrameError};
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};

pub const LOG_FILE: &str = "log";
pub const VOTE_FILE: &str = "vote";
pub const PURGED_FILE: &str = "purged";

/// Why the log store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file} is damaged: {error}")]
    Corrupt { file: PathBuf, error: FrameError },
}

struct Inner {
    dir: PathBuf,
    file: File,
    /// Each entry and the file offset of its frame.
    entries: BTreeMap<u64, (Entry, u64)>,
    file_bytes: u64,
    vote: Option<Vote>,
    purged: Option<LogId>,
}

/// The log and vote; clones share them (openraft reads the log from several tasks).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, OpenError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(OpenError::Io {
            file: path.to_owned(),
            source,
        }),
    }
}

fn decode_file<T: for<'de> serde::Deserialize<'de>>(path: &Path) -> Result<Option<T>, OpenError> {
    match read_optional(path)? {
        None => Ok(None),
        Some(b) => files::decode_document(&b)
            .map(Some)
            .map_err(|error| OpenError::Corrupt {
                file: path.to_owned(),
                error,
            }),
    }
}

impl LogStore {
    /// Opens (creating) the log in `dir`, cutting it back after its last whole entry.
    pub fn open(dir: &Path) -> Result<LogStore, OpenError> {
        let io = |file: &Path| {
            let file = file.to_owned();
            move |source| OpenError::Io { file, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let vote: Option<Vote> = decode_file(&dir.join(VOTE_FILE))?;
        let purged: Option<Option<LogId>> = decode_file(&dir.join(PURGED_FILE))?;
        let purged = purged.flatten();
        let path = dir.join(LOG_FILE);
        let bytes = read_optional(&path)?.unwrap_or_default();
        let scan = files::scan_log(&bytes);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        if let Some(stop) = &scan.stop {
            tracing::warn!(
                file = %path.display(),
                kept_bytes = scan.valid_bytes,
                dropped_bytes = bytes.len() as u64 - scan.valid_bytes,
                "consensus log cut back at a damaged entry: {stop}"
            );
            file.set_len(scan.valid_bytes).map_err(io(&path))?;
            file.sync_all().map_err(io(&path))?;
        }
        file.seek(SeekFrom::Start(scan.valid_bytes))
            .map_err(io(&path))?;
        let purged_index = purged.map(|p| p.index);
        let entries = scan
            .entries
            .into_iter()
            .filter(|(e, _)| Some(e.log_id.index) > purged_index)
            .map(|(e, at)| (e.log_id.index, (e, at)))
            .collect();
        Ok(LogStore {
            inner: Arc::new(Mutex::new(Inner {
                dir: dir.to_owned(),
                file,
                entries,
                file_bytes: scan.valid_bytes,
                vote,
                purged,
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("log store lock")
    }
}

impl Inner {
    /// Rewrites the log file with the entries still held (after a purge), through a
    /// temporary file renamed over it.
    fn rewrite(&mut self) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut offsets = Vec::with_capacity(self.entries.len());
        for (index, (entry, _)) in &self.entries {
            offsets.push((*index, buf.len() as u64));
            files::put_entry(&mut buf, entry);
        }
        let tmp = self.dir.join(format!("{LOG_FILE}.tmp"));
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.dir.join(LOG_FILE))?;
        File::open(&self.dir)?.sync_all()?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dir.join(LOG_FILE))?;
        file.seek(SeekFrom::End(0))?;
        self.file = file;
        self.file_bytes = buf.len() as u64;
        for (index, at) in offsets {
            if let Some(e) = self.entries.get_mut(&index) {
                e.1 = at;
            }
        }
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let inner = self.lock();
        Ok(inner
            .entries
            .range(range)
            .map(|(_, (e, _))| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = self.lock();
        let last = inner.entries.values().next_back().map(|(e, _)| e.log_id);
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: last.or(inner.purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut inner = self.lock();
        crate::files::write_atomically(&inner.dir, VOTE_FILE, &files::encode_document(vote))
            .map_err(|e| StorageIOError::write_vote(&e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.lock().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        match self.append_durably(entries) {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let err = StorageIOError::write_logs(&e);
                callback.log_io_completed(Err(e));
                Err(err.into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.truncate_from(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.purge_upto(log_id)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

impl LogStore {
    /// Appends `entries` and returns once they are on disk (fsync'd).
    pub fn append_durably(&self, entries: impl IntoIterator<Item = Entry>) -> std::io::Result<()> {
        let mut inner = self.lock();
        let mut buf = Vec::new();
        let mut added = Vec::new();
        for entry in entries {
            let at = inner.file_bytes + buf.len() as u64;
            files::put_entry(&mut buf, &entry);
            added.push((entry, at));
        }
        if let Err(e) = inner
            .file
            .write_all(&buf)
            .and_then(|()| inner.file.sync_data())
        {
            // Whatever reached the file is not acknowledged; put the write position
            // back so the next append does not leave a hole, and cut the rest (the
            // next open would cut it anyway).
            let back = inner.file_bytes;
            let _ = inner.file.set_len(back);
            let _ = inner.file.seek(SeekFrom::Start(back));
            return Err(e);
        }
        inner.file_bytes += buf.len() as u64;
        for (entry, at) in added {
            inner.entries.insert(entry.log_id.index, (entry, at));
        }
        Ok(())
    }

    /// Deletes the entries from `index` on (a conflicting suffix).
    pub fn truncate_from(&self, index: u64) -> std::io::Result<()> {
        let mut inner = self.lock();
        let Some(&(_, at)) = inner.entries.get(&index) else {
            return Ok(());
        };
        inner.file.set_len(at)?;
        inner.file.sync_all()?;
        inner.file.seek(SeekFrom::Start(at))?;
        inner.file_bytes = at;
        inner.entries.split_off(&index);
        Ok(())
    }

    /// Forgets the entries up to `log_id` (they are in a snapshot).
    pub fn purge_upto(&self, log_id: LogId) -> std::io::Result<()> {
        let mut inner = self.lock();
        // The mark first: a crash before the rewrite leaves entries the mark says to
        // skip, never a log that starts after a missing entry.
        crate::files::write_atomically(
            &inner.dir,
            PURGED_FILE,
            &files::encode_document(&Some(log_id)),
        )?;
        inner.purged = Some(log_id);
        inner.entries = inner.entries.split_off(&(log_id.index + 1));
        inner.rewrite()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::meta::Command;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::AllocateProducerIds { count: index }),
        }
    }

    async fn append(store: &mut LogStore, entries: Vec<Entry>) {
        store.append_durably(entries).unwrap();
    }

    async fn all(store: &mut LogStore) -> Vec<u64> {
        store
            .try_get_log_entries(..)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    #[tokio::test]
    async fn entries_vote_truncation_and_purge_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(dir.path()).unwrap();
        append(&mut s, (1..=10).map(entry).collect()).await;
        s.save_vote(&Vote::new(4, 2)).await.unwrap();
        s.truncate_from(8).unwrap();
        s.purge_upto(LogId::new(CommittedLeaderId::new(1, 1), 3))
            .unwrap();
        append(&mut s, vec![entry(8)]).await;
        drop(s);
        let mut s = LogStore::open(dir.path()).unwrap();
        assert_eq!(all(&mut s).await, vec![4, 5, 6, 7, 8]);
        assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(4, 2)));
        let state = s.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(3));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(8));
    }

    #[tokio::test]
    async fn a_torn_last_entry_is_cut_at_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(dir.path()).unwrap();
        append(&mut s, (1..=3).map(entry).collect()).await;
        let two = s.lock().entries[&3].1;
        drop(s);
        let path = dir.path().join(LOG_FILE);
        let full = std::fs::read(&path).unwrap();
        for cut in two..full.len() as u64 {
            std::fs::write(&path, &full[..cut as usize]).unwrap();
            let mut s = LogStore::open(dir.path()).unwrap();
            assert_eq!(all(&mut s).await, vec![1, 2], "cut at {cut}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), two);
            // And the log goes on from there.
            append(&mut s, vec![entry(3)]).await;
            drop(s);
            let mut s = LogStore::open(dir.path()).unwrap();
            assert_eq!(all(&mut s).await, vec![1, 2, 3]);
        }
    }

    #[tokio::test]
    async fn a_corrupt_entry_ends_the_log_there() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(dir.path()).unwrap();
        append(&mut s, (1..=5).map(entry).collect()).await;
        let third = s.lock().entries[&3].1 as usize;
        drop(s);
        let path = dir.path().join(LOG_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[third + files::FRAME_HEADER_BYTES + 1] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let mut s = LogStore::open(dir.path()).unwrap();
        assert_eq!(all(&mut s).await, vec![1, 2]);
    }

    #[test]
    fn a_damaged_vote_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(VOTE_FILE), b"\x05\0\0\0\0\0\0\0abc").unwrap();
        assert!(matches!(
            LogStore::open(dir.path()),
            Err(OpenError::Corrupt { .. })
        ));
    }
}

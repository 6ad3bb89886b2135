//! The replicated state machine: [`ClusterMeta`] with openraft's bookkeeping (the last
//! applied entry and membership), and its snapshots.
//!
//! Committed commands go through [`ClusterMeta::apply`] and every new state is
//! published on a `watch`, which is what the rest of the broker reads. The state lives
//! in memory only; what survives a crash is the snapshot file (the metadata as of some
//! entry, replaced whole by write-then-rename) plus the log, whose committed entries
//! openraft applies again after a restart.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, Snapshot, StorageIOError};
use tokio::sync::watch;

use super::super::meta::{ClusterMeta, Command, CommandResult};
use super::files::{self, SnapshotFile};
use super::log_store::OpenError;
use super::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

pub const SNAPSHOT_FILE: &str = "snapshot";

struct Inner {
    meta: ClusterMeta,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// The last snapshot built or installed, as stored in the snapshot file.
    snapshot: Option<SnapshotFile>,
}

/// The state machine; clones share it (the snapshot builder is one).
#[derive(Clone)]
pub struct StateMachine {
    dir: PathBuf,
    inner: Arc<Mutex<Inner>>,
    publish: Arc<watch::Sender<Arc<ClusterMeta>>>,
    snapshots_built: Arc<AtomicU64>,
}

impl StateMachine {
    /// Loads the last snapshot from `dir` (if any) and publishes its metadata.
    pub fn open(
        dir: &Path,
        publish: Arc<watch::Sender<Arc<ClusterMeta>>>,
    ) -> Result<StateMachine, OpenError> {
        let path = dir.join(SNAPSHOT_FILE);
        let snapshot: Option<SnapshotFile> = match std::fs::read(&path) {
            Ok(b) => Some(
                files::decode_document(&b).map_err(|error| OpenError::Corrupt {
                    file: path.clone(),
                    error,
                })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(OpenError::Io { file: path, source }),
        };
        let inner = match &snapshot {
            Some(s) => Inner {
                meta: s.data.clone(),
                last_applied: s.meta.last_log_id,
                membership: s.meta.last_membership.clone(),
                snapshot: snapshot.clone(),
            },
            None => Inner {
                meta: ClusterMeta::default(),
                last_applied: None,
                membership: StoredMembership::default(),
                snapshot: None,
            },
        };
        publish.send_replace(Arc::new(inner.meta.published()));
        Ok(StateMachine {
            dir: dir.to_owned(),
            inner: Arc::new(Mutex::new(inner)),
            publish,
            snapshots_built: Arc::default(),
        })
    }

    /// A handle that reads the queue state as applied (not published on the watch).
    pub fn queue_view(&self) -> QueueView {
        QueueView(self.inner.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("state machine lock")
    }

    /// Writes the snapshot file (off the async workers) and hands `file` back.
    async fn store(
        &self,
        file: SnapshotFile,
    ) -> Result<SnapshotFile, (SnapshotFile, std::io::Error)> {
        let dir = self.dir.clone();
        let bytes = files::encode_document(&file);
        let written = tokio::task::spawn_blocking(move || {
            crate::files::write_atomically(&dir, SNAPSHOT_FILE, &bytes)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match written {
            Ok(()) => Ok(file),
            Err(e) => Err((file, e)),
        }
    }
}

/// Reads the applied queue state of the state machine it came from.
#[derive(Clone)]
pub struct QueueView(Arc<Mutex<Inner>>);

impl std::fmt::Debug for QueueView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueView")
    }
}

impl QueueView {
    /// One queue's folded state, per shard.
    pub fn queue(
        &self,
        group: &str,
        topic: &str,
    ) -> std::collections::BTreeMap<u32, crate::queue::state_log::ShardRecovery> {
        self.0
            .lock()
            .expect("state machine lock")
            .meta
            .queue_state(group, topic)
    }

    /// Whether `group` consumes any topic as a queue.
    pub fn has_group(&self, group: &str) -> bool {
        self.0
            .lock()
            .expect("state machine lock")
            .meta
            .queues
            .contains_key(group)
    }
}

fn snapshot_of(file: &SnapshotFile) -> Snapshot<TypeConfig> {
    let data = serde_json::to_vec(&file.data).expect("metadata serializes");
    Snapshot {
        meta: file.meta.clone(),
        snapshot: Box::new(Cursor::new(data)),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, last_applied, membership) = {
            let inner = self.lock();
            (
                inner.meta.clone(),
                inner.last_applied,
                inner.membership.clone(),
            )
        };
        let seq = self.snapshots_built.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last_applied {
            Some(l) => format!(
                "{}-{}-{}-{seq}",
                l.leader_id.term, l.leader_id.node_id, l.index
            ),
            None => format!("none-{seq}"),
        };
        let file = SnapshotFile {
            meta: SnapshotMeta {
                last_log_id: last_applied,
                last_membership: membership,
                snapshot_id,
            },
            data: meta,
        };
        let file = self
            .store(file)
            .await
            .map_err(|(file, e)| StorageIOError::write_snapshot(Some(file.meta.signature()), &e))?;
        let snapshot = snapshot_of(&file);
        self.lock().snapshot = Some(file);
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let inner = self.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut inner = self.lock();
        let mut results = Vec::new();
        // Queue events change nothing the watchers of the metadata read: a batch of
        // only those is not published (it comes at the rate of acks).
        let mut changed = false;
        for entry in entries {
            inner.last_applied = Some(entry.log_id);
            let result = match &entry.payload {
                EntryPayload::Blank => CommandResult::Done,
                EntryPayload::Normal(command) => {
                    changed |= !matches!(command, Command::QueueEvents { .. });
                    inner.meta.apply(command)
                }
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    CommandResult::Done
                }
            };
            results.push(result);
        }
        if changed {
            self.publish.send_replace(Arc::new(inner.meta.published()));
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data: ClusterMeta = serde_json::from_slice(snapshot.get_ref())
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let file = SnapshotFile {
            meta: meta.clone(),
            data,
        };
        let file = self
            .store(file)
            .await
            .map_err(|(_, e)| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let mut inner = self.lock();
        inner.meta = file.data.clone();
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.snapshot = Some(file);
        self.publish.send_replace(Arc::new(inner.meta.published()));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.lock().snapshot.as_ref().map(snapshot_of))
    }
}

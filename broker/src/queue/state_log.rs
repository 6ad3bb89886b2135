//! Durable queue state: acks, failures and dead-letterings, as records in an internal
//! log under `<data_dir>/internal/queue`.
//!
//! The log is an ordinary shard (same batch format, CRCs and crash recovery as topics)
//! written with durable appends, so group commit lets many queues share one flush. Each
//! record's key is `group \0 topic \0 shard`; its value is one event:
//!
//! ```text
//! kind u8 = 1 ACK    offset u64
//! kind u8 = 2 FAIL   offset u64, failures u32, due_ms i64, first_failure_ms i64,
//!                    last_failure_ms i64, error (u16 length + UTF-8)
//! kind u8 = 3 DEAD   offset u64, failures u32, dlq_shard u32, dlq_offset u64
//! kind u8 = 4 FLOOR  offset u64   (every offset below is done; written when a queue
//!                                  shard starts, so replay need not start at 0)
//! kind u8 = 5 DLQ_HIGH dlq_shard u32, dlq_offset u64 (snapshots only)
//! ```
//!
//! The log is kept in generations so it can be compacted without touching the storage
//! engine: see [`open_all`].
//!
//! Replaying the log in order rebuilds, per queue shard, the ack floor, the offsets done
//! above it, and the failure record of each pending offset. The same folding runs
//! live, so the rebuilt state equals the state at the last durable record.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use weir_protocol::batch::{Batch, BatchBuilder, BatchHeader, NewRecord};
use weir_protocol::messages::Durability;
use weir_protocol::ErrorCode;

use crate::error::BrokerError;
use crate::shard::writer::PendingAppend;
use crate::shard::{AppendError, AppendOutcome, Shard, ShardConfig};
use crate::storage::LogConfig;

/// Events per batch when a snapshot is written.
pub const SNAPSHOT_BATCH: usize = 1000;

/// Longest error text kept per record (longer ones are cut at a character boundary).
pub const MAX_ERROR_BYTES: usize = 1024;

/// Why a record failed, kept until it is done.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Failure {
    /// Failed deliveries so far.
    pub failures: u32,
    pub first_ms: i64,
    pub last_ms: i64,
    pub error: String,
}

/// One state change. (Serde is for a cluster, where events travel in consensus
/// entries instead of this log: `queue::replicated`.)
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Event {
    Ack {
        offset: u64,
    },
    Fail {
        offset: u64,
        failure: Failure,
        due_ms: i64,
    },
    Dead {
        offset: u64,
        failures: u32,
        dlq_shard: u32,
        dlq_offset: u64,
    },
    Floor {
        offset: u64,
    },
    /// Highest dead-letter offset recorded for dead-letter shard `dlq_shard`; written
    /// by snapshots so the crash-healing scan still starts at the right place.
    DlqHigh {
        dlq_shard: u32,
        dlq_offset: u64,
    },
    /// The queue's topic was deleted: forget every earlier event of this queue (all
    /// shards), so a topic recreated under the same name starts with a fresh queue.
    Forget,
}

/// `s` cut to at most [`MAX_ERROR_BYTES`] at a character boundary.
pub fn cut(s: &str) -> &str {
    let mut end = s.len().min(MAX_ERROR_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Event {
    /// The value bytes.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(48);
        match self {
            Event::Ack { offset } => {
                b.put_u8(1);
                b.put_u64_le(*offset);
            }
            Event::Fail {
                offset,
                failure,
                due_ms,
            } => {
                b.put_u8(2);
                b.put_u64_le(*offset);
                b.put_u32_le(failure.failures);
                b.put_i64_le(*due_ms);
                b.put_i64_le(failure.first_ms);
                b.put_i64_le(failure.last_ms);
                let e = cut(&failure.error);
                b.put_u16_le(e.len() as u16);
                b.put_slice(e.as_bytes());
            }
            Event::Dead {
                offset,
                failures,
                dlq_shard,
                dlq_offset,
            } => {
                b.put_u8(3);
                b.put_u64_le(*offset);
                b.put_u32_le(*failures);
                b.put_u32_le(*dlq_shard);
                b.put_u64_le(*dlq_offset);
            }
            Event::Floor { offset } => {
                b.put_u8(4);
                b.put_u64_le(*offset);
            }
            Event::DlqHigh {
                dlq_shard,
                dlq_offset,
            } => {
                b.put_u8(5);
                b.put_u32_le(*dlq_shard);
                b.put_u64_le(*dlq_offset);
            }
            Event::Forget => b.put_u8(6),
        }
        b.freeze()
    }

    /// Parses value bytes; `None` for anything malformed (such a record is skipped with
    /// a warning: the CRC already vouched for the bytes, so only a newer format could
    /// produce one).
    pub fn decode(v: &[u8]) -> Option<Event> {
        let mut r = weir_protocol::wire::Reader::new(Bytes::copy_from_slice(v));
        let ev = match r.u8().ok()? {
            1 => Event::Ack {
                offset: r.u64().ok()?,
            },
            2 => {
                let offset = r.u64().ok()?;
                let failures = r.u32().ok()?;
                let due_ms = r.i64().ok()?;
                let first_ms = r.i64().ok()?;
                let last_ms = r.i64().ok()?;
                let n = r.u16().ok()? as usize;
                let error = String::from_utf8(r.take(n).ok()?.to_vec()).ok()?;
                Event::Fail {
                    offset,
                    failure: Failure {
                        failures,
                        first_ms,
                        last_ms,
                        error,
                    },
                    due_ms,
                }
            }
            3 => Event::Dead {
                offset: r.u64().ok()?,
                failures: r.u32().ok()?,
                dlq_shard: r.u32().ok()?,
                dlq_offset: r.u64().ok()?,
            },
            4 => Event::Floor {
                offset: r.u64().ok()?,
            },
            5 => Event::DlqHigh {
                dlq_shard: r.u32().ok()?,
                dlq_offset: r.u64().ok()?,
            },
            6 => Event::Forget,
            _ => return None,
        };
        r.finish().ok()?;
        Some(ev)
    }
}

/// What the log says about one queue shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardRecovery {
    /// Every offset below is done.
    pub floor: u64,
    /// Done (acked or dead) offsets at or above the floor.
    pub done: BTreeSet<u64>,
    /// Pending offsets that failed before: their failure and when they are due.
    pub failed: BTreeMap<u64, (Failure, i64)>,
    /// Highest dead-letter offset recorded, per dead-letter shard.
    pub dlq_high: HashMap<u32, u64>,
    /// Whether any record exists for this shard.
    pub known: bool,
}

impl ShardRecovery {
    /// Folds one event in (the same rule live and on replay).
    pub fn apply(&mut self, ev: &Event) {
        self.known = true;
        match ev {
            Event::Ack { offset } => self.mark_done(*offset),
            Event::Dead {
                offset,
                dlq_shard,
                dlq_offset,
                ..
            } => {
                self.mark_done(*offset);
                let h = self.dlq_high.entry(*dlq_shard).or_insert(*dlq_offset);
                *h = (*h).max(*dlq_offset);
            }
            Event::DlqHigh {
                dlq_shard,
                dlq_offset,
            } => {
                let h = self.dlq_high.entry(*dlq_shard).or_insert(*dlq_offset);
                *h = (*h).max(*dlq_offset);
            }
            Event::Fail {
                offset,
                failure,
                due_ms,
            } => {
                if *offset >= self.floor && !self.done.contains(offset) {
                    self.failed.insert(*offset, (failure.clone(), *due_ms));
                }
            }
            Event::Floor { offset } => {
                if *offset > self.floor {
                    self.floor = *offset;
                    self.done = self.done.split_off(offset);
                    self.failed = self.failed.split_off(offset);
                }
                self.advance();
            }
            // Whole-queue: handled where the queue's shards are kept (`replay_into`).
            Event::Forget => {}
        }
    }

    /// Events that rebuild this state when folded into an empty one (compaction).
    pub fn snapshot(&self) -> Vec<Event> {
        let mut out = vec![Event::Floor { offset: self.floor }];
        out.extend(self.done.iter().map(|&offset| Event::Ack { offset }));
        out.extend(
            self.failed
                .iter()
                .map(|(&offset, (failure, due_ms))| Event::Fail {
                    offset,
                    failure: failure.clone(),
                    due_ms: *due_ms,
                }),
        );
        out.extend(
            self.dlq_high
                .iter()
                .map(|(&dlq_shard, &dlq_offset)| Event::DlqHigh {
                    dlq_shard,
                    dlq_offset,
                }),
        );
        out
    }

    fn mark_done(&mut self, offset: u64) {
        self.failed.remove(&offset);
        if offset >= self.floor {
            self.done.insert(offset);
        }
        self.advance();
    }

    fn advance(&mut self) {
        while self.done.remove(&self.floor) {
            self.floor += 1;
        }
    }
}

/// The events of one queue, as a cluster's consensus entry carries them
/// (`cluster::meta::Command::QueueEvents`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueEvents {
    pub group: String,
    pub topic: String,
    /// (shard, event), in order.
    pub events: Vec<(u32, Event)>,
}

/// One queue's events waiting for the journal task.
pub struct JournalItem {
    pub(super) events: QueueEvents,
    pub(super) reply: tokio::sync::oneshot::Sender<Result<AppendOutcome, AppendError>>,
}

/// Queues `events` of one queue for the journal; the receiver resolves when they are
/// committed (the state log's [`PendingAppend`], so the queue task cannot tell the
/// two apart).
pub async fn journal(
    tx: &tokio::sync::mpsc::Sender<JournalItem>,
    group: &str,
    topic: &str,
    events: &[(u32, Event)],
) -> Result<PendingAppend, AppendError> {
    let (reply, rx) = tokio::sync::oneshot::channel();
    let item = JournalItem {
        events: QueueEvents {
            group: group.to_string(),
            topic: topic.to_string(),
            events: events.to_vec(),
        },
        reply,
    };
    tx.send(item).await.map_err(|_| AppendError::Closed)?;
    Ok(rx)
}

/// Queue name → shard → recovered state.
pub type Recovered = HashMap<(String, String), HashMap<u32, ShardRecovery>>;

fn encode_key(group: &str, topic: &str, shard: u32) -> Vec<u8> {
    format!("{group}\0{topic}\0{shard}").into_bytes()
}

fn decode_key(key: &[u8]) -> Option<(String, String, u32)> {
    let s = std::str::from_utf8(key).ok()?;
    let mut parts = s.split('\0');
    let group = parts.next()?.to_string();
    let topic = parts.next()?.to_string();
    let shard = parts.next()?.parse().ok()?;
    Some((group, topic, shard))
}

/// Name of generation directories: `<data_dir>/internal/queue/<generation:020>`.
fn generation_dir(root: &Path, generation: u64) -> PathBuf {
    root.join(format!("{generation:020}"))
}

/// One generation of the internal log of queue state (see [`open_all`]), or, on a
/// cluster node, the journal that commits events through the consensus engine.
#[derive(Debug)]
pub struct StateLog {
    generation: u64,
    dir: PathBuf,
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    /// The local log (a single-node broker).
    Shard(Arc<Shard>),
    /// A cluster node: events go to `queue::replicated`'s journal task.
    Replicated(tokio::sync::mpsc::Sender<JournalItem>),
}

/// The state log's directory under a data directory.
pub fn root(data_dir: &Path) -> PathBuf {
    data_dir.join("internal").join("queue")
}

/// Opens every generation under `<data_dir>/internal/queue`, oldest first, and
/// replays them in that order into one [`Recovered`]. Generations are what compaction
/// produces: a new one starts with a snapshot of every queue and takes all later
/// events; the older ones are deleted once the snapshot is complete. Replaying all of
/// them in order is always right, because folding is monotone (floors only rise,
/// done offsets stay done) and a snapshot restates, never contradicts, what came
/// before. Creates generation 1 when there is none. Returns the generations, newest
/// last, and the replayed state.
pub fn open_all(data_dir: &Path) -> Result<(Vec<StateLog>, Recovered), BrokerError> {
    let root = root(data_dir);
    std::fs::create_dir_all(&root).map_err(|e| {
        BrokerError::new(ErrorCode::StorageError, format!("{}: {e}", root.display()))
    })?;
    let mut generations = Vec::new();
    let entries = std::fs::read_dir(&root).map_err(|e| {
        BrokerError::new(ErrorCode::StorageError, format!("{}: {e}", root.display()))
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".trash-") {
            // A compaction's retired generation whose deletion was cut short.
            let _ = std::fs::remove_dir_all(entry.path());
        } else if let Ok(g) = name.parse::<u64>() {
            generations.push(g);
        }
    }
    generations.sort_unstable();
    if generations.is_empty() {
        generations.push(1);
    }
    let mut recovered = Recovered::new();
    let mut logs = Vec::with_capacity(generations.len());
    for g in generations {
        let log = StateLog::open_generation(&root, g)?;
        log.replay_into(&mut recovered)?;
        logs.push(log);
    }
    Ok((logs, recovered))
}

impl StateLog {
    /// Opens (creating) generation `generation` under `root`.
    pub fn open_generation(root: &Path, generation: u64) -> Result<StateLog, BrokerError> {
        let dir = generation_dir(root, generation);
        let config = ShardConfig {
            log: LogConfig {
                segment_bytes: 16 * 1024 * 1024,
                retention_ms: 0,
                retention_bytes: 0,
                ..LogConfig::default()
            },
            durability: Durability::Always,
            ..ShardConfig::default()
        };
        let shard =
            Shard::open(&dir, &format!("queue-state-{generation}"), config).map_err(|e| {
                BrokerError::new(ErrorCode::StorageError, format!("queue state log: {e}"))
            })?;
        Ok(StateLog {
            generation,
            dir,
            backend: Backend::Shard(shard),
        })
    }

    /// The state log of a cluster node: appends go to the journal behind `tx`.
    /// Compaction never runs on it (the consensus engine's snapshots compact).
    pub fn replicated(tx: tokio::sync::mpsc::Sender<JournalItem>) -> StateLog {
        StateLog {
            generation: 0,
            dir: PathBuf::new(),
            backend: Backend::Replicated(tx),
        }
    }

    /// Whether events go through the consensus engine.
    pub fn is_replicated(&self) -> bool {
        matches!(self.backend, Backend::Replicated(_))
    }

    fn shard(&self) -> Option<&Arc<Shard>> {
        match &self.backend {
            Backend::Shard(s) => Some(s),
            Backend::Replicated(_) => None,
        }
    }

    /// This log's generation number.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Records written to this generation.
    pub fn records(&self) -> u64 {
        self.shard().map_or(0, |s| {
            let r = s.reader();
            r.high_watermark() - r.log_start_offset()
        })
    }

    /// Folds every event of this generation into `recovered`.
    fn replay_into(&self, recovered: &mut Recovered) -> Result<(), BrokerError> {
        let Some(shard) = self.shard() else {
            return Ok(());
        };
        let mut skipped = 0u64;
        shard.reader().scan_batches(0, |bytes, _| {
            let batch = Batch::parse(bytes)
                .map_err(|e| BrokerError::new(ErrorCode::CorruptStorage, e.to_string()))?;
            for rec in batch.records() {
                match (decode_key(&rec.key), Event::decode(&rec.value)) {
                    (Some((g, t, _)), Some(Event::Forget)) => {
                        recovered.remove(&(g, t));
                    }
                    (Some((g, t, s)), Some(ev)) => recovered
                        .entry((g, t))
                        .or_default()
                        .entry(s)
                        .or_default()
                        .apply(&ev),
                    _ => skipped += 1,
                }
            }
            Ok::<(), BrokerError>(())
        })?;
        if skipped > 0 {
            tracing::warn!(
                skipped,
                generation = self.generation,
                "queue state log: records not understood were skipped"
            );
        }
        Ok(())
    }

    /// Closes this generation and deletes its files: renamed out of the way first
    /// (atomic), so a crash mid-deletion never leaves a half generation to replay.
    pub async fn retire(&self) -> Result<(), BrokerError> {
        let Some(shard) = self.shard() else {
            return Ok(());
        };
        shard.close().await;
        let root = self.dir.parent().map(Path::to_path_buf).unwrap_or_default();
        let trash = root.join(format!(".trash-{:020}", self.generation));
        let io = |e: std::io::Error| BrokerError::new(ErrorCode::StorageError, e.to_string());
        let dir = self.dir.clone();
        // File work off the async thread (the control runtime has only one).
        tokio::task::spawn_blocking(move || {
            std::fs::rename(&dir, &trash).map_err(io)?;
            std::fs::File::open(&root)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
            std::fs::remove_dir_all(&trash).map_err(io)
        })
        .await
        .map_err(|e| BrokerError::new(ErrorCode::Unknown, format!("retiring a generation: {e}")))?
    }

    /// Queues events of one queue for a durable append; the receiver says when they
    /// are on disk. Events queued by one task are written in that order.
    pub async fn append(
        &self,
        group: &str,
        topic: &str,
        events: &[(u32, Event)],
    ) -> Result<PendingAppend, AppendError> {
        let shard = match &self.backend {
            Backend::Shard(s) => s,
            Backend::Replicated(tx) => return journal(tx, group, topic, events).await,
        };
        let now = crate::clock::now_ms();
        let mut builder = BatchBuilder::new();
        for (shard, ev) in events {
            let key = encode_key(group, topic, *shard);
            let value = ev.encode();
            builder
                .push(&NewRecord {
                    key: &key,
                    value: &value,
                    ..NewRecord::value(now, &[])
                })
                .map_err(|e| AppendError::Storage(e.to_string()))?;
        }
        let batch = builder
            .finish()
            .map_err(|e| AppendError::Storage(e.to_string()))?;
        let header = BatchHeader::read(&batch).map_err(|e| AppendError::Storage(e.to_string()))?;
        shard.enqueue(vec![batch], vec![header], true).await
    }

    /// Appends `events` in batches of at most [`SNAPSHOT_BATCH`] and waits until all
    /// are durable.
    pub async fn append_all_durably(
        &self,
        group: &str,
        topic: &str,
        events: &[(u32, Event)],
    ) -> Result<(), BrokerError> {
        let mut pending = Vec::new();
        for chunk in events.chunks(SNAPSHOT_BATCH) {
            pending.push(
                self.append(group, topic, chunk)
                    .await
                    .map_err(|e| BrokerError::new(ErrorCode::StorageError, e.to_string()))?,
            );
        }
        for rx in pending {
            rx.await
                .map_err(|_| BrokerError::new(ErrorCode::ShuttingDown, "state log closed"))?
                .map_err(|e| BrokerError::new(ErrorCode::StorageError, e.to_string()))?;
        }
        Ok(())
    }

    /// Flushes and stops the log.
    pub async fn close(&self) {
        if let Some(s) = self.shard() {
            s.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip() {
        let evs = [
            Event::Ack { offset: 7 },
            Event::Fail {
                offset: 9,
                failure: Failure {
                    failures: 2,
                    first_ms: 1,
                    last_ms: 2,
                    error: "boom ü".into(),
                },
                due_ms: 5,
            },
            Event::Dead {
                offset: 3,
                failures: 5,
                dlq_shard: 1,
                dlq_offset: 44,
            },
            Event::Floor { offset: 100 },
            Event::DlqHigh {
                dlq_shard: 2,
                dlq_offset: 9,
            },
        ];
        for ev in evs {
            assert_eq!(Event::decode(&ev.encode()), Some(ev));
        }
        assert_eq!(Event::decode(&[9, 0]), None);
        assert_eq!(Event::decode(&[1, 0, 0]), None);
    }

    proptest::proptest! {
        /// The state log is read back from disk: no bytes may panic the decoder, and
        /// whatever it accepts re-encodes to the same bytes.
        #[test]
        fn any_value_bytes_decode_without_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            if let Some(ev) = Event::decode(&bytes) {
                let again = ev.encode();
                proptest::prop_assert_eq!(again.as_ref(), &bytes[..]);
            }
        }
    }

    fn event() -> impl proptest::strategy::Strategy<Value = Event> {
        use proptest::prelude::*;
        prop_oneof![
            (0u64..40).prop_map(|offset| Event::Ack { offset }),
            (0u64..40, 1u32..5, 0i64..100).prop_map(|(offset, failures, due_ms)| Event::Fail {
                offset,
                failure: Failure {
                    failures,
                    first_ms: 1,
                    last_ms: 2,
                    error: "e".into(),
                },
                due_ms,
            }),
            (0u64..40, 0u32..3, 0u64..100).prop_map(|(offset, dlq_shard, dlq_offset)| {
                Event::Dead {
                    offset,
                    failures: 3,
                    dlq_shard,
                    dlq_offset,
                }
            }),
            (0u64..20).prop_map(|offset| Event::Floor { offset }),
            (0u32..3, 0u64..100).prop_map(|(dlq_shard, dlq_offset)| Event::DlqHigh {
                dlq_shard,
                dlq_offset,
            }),
        ]
    }

    proptest::proptest! {
        /// Compaction is only safe if a snapshot rebuilds exactly the state it was
        /// taken from, alone and when replayed after the history it replaces, and if
        /// later events fold the same on top of either.
        #[test]
        fn a_snapshot_rebuilds_the_state_it_was_taken_from(
            history in proptest::collection::vec(event(), 0..60),
            later in proptest::collection::vec(event(), 0..20),
        ) {
            // Every state in the recovered map has seen at least one event.
            let mut state = ShardRecovery::default();
            state.apply(&Event::Floor { offset: 0 });
            for ev in &history {
                state.apply(ev);
            }
            let mut from_snapshot = ShardRecovery::default();
            for ev in state.snapshot() {
                from_snapshot.apply(&ev);
            }
            proptest::prop_assert_eq!(&from_snapshot, &state);
            let mut both = state.clone();
            for ev in state.snapshot() {
                both.apply(&ev);
            }
            proptest::prop_assert_eq!(&both, &state);
            for ev in &later {
                state.apply(ev);
                from_snapshot.apply(ev);
            }
            proptest::prop_assert_eq!(from_snapshot, state);
        }
    }

    #[test]
    fn folding_advances_the_floor_over_done_offsets_only() {
        let mut s = ShardRecovery::default();
        s.apply(&Event::Floor { offset: 10 });
        s.apply(&Event::Ack { offset: 11 });
        assert_eq!(s.floor, 10);
        s.apply(&Event::Fail {
            offset: 12,
            failure: Failure::default(),
            due_ms: 0,
        });
        s.apply(&Event::Ack { offset: 10 });
        assert_eq!(s.floor, 12);
        assert!(s.failed.contains_key(&12));
        s.apply(&Event::Dead {
            offset: 12,
            failures: 3,
            dlq_shard: 0,
            dlq_offset: 4,
        });
        assert_eq!(s.floor, 13);
        assert!(s.failed.is_empty() && s.done.is_empty());
        assert_eq!(s.dlq_high[&0], 4);
        // A late ack below the floor changes nothing.
        s.apply(&Event::Ack { offset: 3 });
        assert_eq!(s.floor, 13);
    }

    #[tokio::test]
    async fn appended_events_are_replayed_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut logs, rec) = open_all(dir.path()).unwrap();
            assert!(rec.is_empty());
            let log = logs.pop().unwrap();
            let rx = log
                .append(
                    "g",
                    "t",
                    &[
                        (0, Event::Floor { offset: 0 }),
                        (0, Event::Ack { offset: 0 }),
                        (0, Event::Ack { offset: 2 }),
                        (1, Event::Floor { offset: 5 }),
                    ],
                )
                .await
                .unwrap();
            rx.await.unwrap().unwrap();
            log.close().await;
        }
        let (logs, rec) = open_all(dir.path()).unwrap();
        assert_eq!(logs.len(), 1);
        let log = &logs[0];
        let q = &rec[&("g".to_string(), "t".to_string())];
        assert_eq!(q[&0].floor, 1);
        assert!(q[&0].done.contains(&2));
        assert_eq!(q[&1].floor, 5);
        log.close().await;
    }
}

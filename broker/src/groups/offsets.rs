//! Committed offsets, stored durably as a snapshot plus a tail log, compacted as they
//! grow.
//!
//! Every commit is one record batch appended to the *tail*, an internal shard, and
//! flushed before it is acknowledged (group commit makes concurrent commits share a
//! flush). Each record's key is `group \0 topic \0 shard` and its value the offset as
//! 8 little-endian bytes; the newest record for a key wins. So the batch format, CRCs
//! and crash recovery of ordinary topics protect offsets too.
//!
//! Replaying every commit ever made at each start would grow without bound, so once
//! the tail holds more than [`OffsetsConfig::compact_ratio`] times the last snapshot's
//! size (and at least [`OffsetsConfig::compact_min_bytes`]), the live map is written
//! as a snapshot and a new, empty tail generation takes the next commits:
//!
//! ```text
//! <data_dir>/internal/offsets/                 tail generation 0 (also what brokers
//!                                              before compaction wrote)
//! <data_dir>/internal/offsets.snapshot         the live map, naming its tail generation
//! <data_dir>/internal/offsets-<generation:020>/ tail generation ≥ 1
//! ```
//!
//! Compaction, with commits held off (so the map is exactly what the tail holds):
//! 1. open the empty tail generation `g + 1`;
//! 2. write the snapshot naming `g + 1` to `offsets.snapshot.tmp`, fsync it, rename it
//!    over `offsets.snapshot`, fsync the directory;
//! 3. send commits to `g + 1`; only then close and delete generation `g`.
//!
//! On open, the snapshot (if any) names the one tail to replay; every other tail
//! directory is a leftover and is deleted. A crash before step 2's rename leaves the
//! old snapshot and tail `g`, which hold every acknowledged commit (and `g + 1` is
//! empty); after it, the new snapshot holds them all and `g` is stale. Either way the
//! newest committed offset of every key survives.
//!
//! Snapshot format, version 1, all integers little-endian:
//!
//! ```text
//! bytes 0..8    magic "WEIROFSN"
//! bytes 8..10   version u16 = 1
//! bytes 10..18  tail generation u64: the tail whose records follow this snapshot
//! bytes 18..26  entry count u64
//! then per entry, sorted by (group, topic, shard):
//!               group length u32, group UTF-8 bytes,
//!               topic length u32, topic UTF-8 bytes,
//!               shard u32, offset u64
//! last 4 bytes  CRC-32 (IEEE) of every byte before it
//! ```
//!
//! A snapshot whose magic, version, lengths or CRC do not check refuses the open
//! (CORRUPT_STORAGE): it was renamed into place whole and fsynced, so only damage or
//! a newer format can produce one, and guessing would lose offsets.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use weir_protocol::batch::{Batch, BatchBuilder, BatchHeader, NewRecord};
use weir_protocol::messages::{Durability, OffsetEntry};
use weir_protocol::ErrorCode;

use crate::error::BrokerError;
use crate::shard::{Shard, ShardConfig};
use crate::storage::LogConfig;

type Key = (String, String, u32);
/// Group → (topic, shard) → offset.
type OffsetMap = HashMap<String, HashMap<(String, u32), u64>>;

/// Most distinct groups with committed offsets; commits for further new groups are
/// refused so arbitrary group names cannot grow the map without bound.
pub const MAX_COMMITTED_GROUPS: usize = 100_000;

/// Name of the snapshot file in `<data_dir>/internal`.
pub const SNAPSHOT_FILE: &str = "offsets.snapshot";

const SNAPSHOT_MAGIC: &[u8; 8] = b"WEIROFSN";
const SNAPSHOT_VERSION: u16 = 1;
/// Magic, version, tail generation, entry count.
const SNAPSHOT_HEADER_BYTES: usize = 8 + 2 + 8 + 8;

/// Tunables of the offset store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetsConfig {
    /// Segment size of the tail log.
    pub segment_bytes: u64,
    /// The tail is never compacted below this many bytes: a small tail replays fast
    /// and compacting it would only churn files.
    pub compact_min_bytes: u64,
    /// Compact once the tail holds this many times the last snapshot's bytes, so
    /// rewriting the snapshot costs at most `1 / compact_ratio` of what was appended.
    pub compact_ratio: u64,
}

impl Default for OffsetsConfig {
    /// 16 MiB tail segments; compaction at 4 MiB of tail (about 40,000 single-offset
    /// commits, a replay of well under a second) or 4 × the snapshot, whichever is
    /// larger. Disk use then stays below a segment plus 5 × the live map.
    fn default() -> Self {
        OffsetsConfig {
            segment_bytes: 16 * 1024 * 1024,
            compact_min_bytes: 4 * 1024 * 1024,
            compact_ratio: 4,
        }
    }
}

/// The tail generation commits go to.
#[derive(Debug)]
struct Tail {
    generation: u64,
    dir: PathBuf,
    shard: Arc<Shard>,
}

/// The broker's committed offsets.
#[derive(Debug)]
pub struct OffsetStore {
    /// `<data_dir>/internal`.
    root: PathBuf,
    config: OffsetsConfig,
    /// Commits hold it shared from append to map update; compaction holds it
    /// exclusively, so the map it snapshots is exactly what the tail holds.
    tail: tokio::sync::RwLock<Tail>,
    offsets: RwLock<OffsetMap>,
    /// Bytes of batches in the current tail.
    tail_bytes: AtomicU64,
    /// Size of the last snapshot written or read (0 when there is none).
    snapshot_bytes: AtomicU64,
    compacting: AtomicBool,
}

fn encode_key(group: &str, topic: &str, shard: u32) -> Vec<u8> {
    format!("{group}\0{topic}\0{shard}").into_bytes()
}

fn decode_key(key: &[u8]) -> Option<Key> {
    let s = std::str::from_utf8(key).ok()?;
    let mut parts = s.split('\0');
    let group = parts.next()?.to_string();
    let topic = parts.next()?.to_string();
    let shard = parts.next()?.parse().ok()?;
    Some((group, topic, shard))
}

fn storage_err(what: impl std::fmt::Display) -> BrokerError {
    BrokerError::new(ErrorCode::StorageError, format!("offsets: {what}"))
}

fn corrupt(path: &Path, what: &str) -> BrokerError {
    BrokerError::new(
        ErrorCode::CorruptStorage,
        format!("{}: {what}", path.display()),
    )
}

/// The directory of tail generation `generation` under `root`.
fn tail_dir(root: &Path, generation: u64) -> PathBuf {
    if generation == 0 {
        root.join("offsets")
    } else {
        root.join(format!("offsets-{generation:020}"))
    }
}

/// The generation a directory name under `root` is the tail of, if it is one.
fn tail_generation(name: &str) -> Option<u64> {
    if name == "offsets" {
        return Some(0);
    }
    let digits = name.strip_prefix("offsets-")?;
    (digits.len() == 20).then(|| digits.parse().ok()).flatten()
}

/// The snapshot bytes of `map`, naming `generation` as its tail; see the module docs.
fn encode_snapshot(generation: u64, map: &OffsetMap) -> Vec<u8> {
    let mut entries: Vec<(&str, &str, u32, u64)> = map
        .iter()
        .flat_map(|(g, m)| m.iter().map(|((t, s), o)| (g.as_str(), t.as_str(), *s, *o)))
        .collect();
    entries.sort_unstable();
    let body: usize = entries
        .iter()
        .map(|(g, t, _, _)| 4 + g.len() + 4 + t.len() + 4 + 8)
        .sum();
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + body + 4);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (g, t, s, o) in entries {
        for name in [g, t] {
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
        }
        out.extend_from_slice(&s.to_le_bytes());
        out.extend_from_slice(&o.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Parses snapshot bytes into (tail generation, map); `Err` names what does not check.
fn decode_snapshot(bytes: &[u8]) -> Result<(u64, OffsetMap), &'static str> {
    if bytes.len() < SNAPSHOT_HEADER_BYTES + 4 || &bytes[..8] != SNAPSHOT_MAGIC {
        return Err("not an offsets snapshot (magic)");
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err("snapshot CRC does not match");
    }
    let mut r = weir_protocol::wire::Reader::new(Bytes::copy_from_slice(&body[8..]));
    const SHORT: &str = "snapshot shorter than its entry count";
    if r.u16().map_err(|_| SHORT)? != SNAPSHOT_VERSION {
        return Err("unsupported snapshot version");
    }
    let generation = r.u64().map_err(|_| SHORT)?;
    let count = r.u64().map_err(|_| SHORT)?;
    let mut map = OffsetMap::new();
    // Bounded by the bytes: every entry takes at least 20 of them.
    for _ in 0..count {
        let mut name = || -> Result<String, &'static str> {
            let n = r.u32().map_err(|_| SHORT)? as usize;
            let b = r.take(n).map_err(|_| SHORT)?;
            String::from_utf8(b.to_vec()).map_err(|_| "snapshot name is not UTF-8")
        };
        let (group, topic) = (name()?, name()?);
        let shard = r.u32().map_err(|_| SHORT)?;
        let offset = r.u64().map_err(|_| SHORT)?;
        map.entry(group).or_default().insert((topic, shard), offset);
    }
    r.finish()
        .map_err(|_| "bytes after the last snapshot entry")?;
    Ok((generation, map))
}

impl OffsetStore {
    /// Opens the store under `data_dir` with the default [`OffsetsConfig`] and loads
    /// every committed offset.
    pub fn open(data_dir: &Path) -> Result<OffsetStore, BrokerError> {
        Self::open_with(data_dir, OffsetsConfig::default())
    }

    /// Opens the store under `data_dir`: reads the snapshot, deletes tail generations
    /// it does not name (leftovers of a compaction cut short), and replays its tail.
    pub fn open_with(data_dir: &Path, config: OffsetsConfig) -> Result<OffsetStore, BrokerError> {
        let root = data_dir.join("internal");
        std::fs::create_dir_all(&root).map_err(storage_err)?;
        let snapshot_path = root.join(SNAPSHOT_FILE);
        let (generation, mut offsets, snapshot_bytes) = match std::fs::read(&snapshot_path) {
            Ok(bytes) => {
                let (g, map) =
                    decode_snapshot(&bytes).map_err(|what| corrupt(&snapshot_path, what))?;
                (g, map, bytes.len() as u64)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, OffsetMap::new(), 0),
            Err(e) => return Err(storage_err(e)),
        };
        remove_stale_tails(&root, generation)?;
        let dir = tail_dir(&root, generation);
        let shard = open_tail(&dir, &config)?;
        let mut tail_bytes = 0u64;
        shard.reader().scan_batches(0, |bytes, h| {
            tail_bytes += h.total_bytes() as u64;
            let batch = Batch::parse(bytes)
                .map_err(|e| BrokerError::new(ErrorCode::CorruptStorage, e.to_string()))?;
            for rec in batch.records() {
                if let (Some((group, topic, shard)), Ok(v)) = (
                    decode_key(&rec.key),
                    <[u8; 8]>::try_from(rec.value.as_ref()),
                ) {
                    offsets
                        .entry(group)
                        .or_default()
                        .insert((topic, shard), u64::from_le_bytes(v));
                }
            }
            Ok::<(), BrokerError>(())
        })?;
        Ok(OffsetStore {
            root,
            config,
            tail: tokio::sync::RwLock::new(Tail {
                generation,
                dir,
                shard,
            }),
            offsets: RwLock::new(offsets),
            tail_bytes: AtomicU64::new(tail_bytes),
            snapshot_bytes: AtomicU64::new(snapshot_bytes),
            compacting: AtomicBool::new(false),
        })
    }

    /// Stores offsets durably; returns once they are flushed. May compact first (see
    /// the module docs), which delays this one commit by a snapshot write.
    pub async fn commit(&self, group: &str, entries: &[OffsetEntry]) -> Result<(), BrokerError> {
        if entries.is_empty() {
            return Ok(());
        }
        {
            let map = self.offsets.read().expect("offsets lock");
            if !map.contains_key(group) && map.len() >= MAX_COMMITTED_GROUPS {
                return Err(BrokerError::new(
                    ErrorCode::InvalidConfig,
                    format!(
                        "offsets are stored for MAX_COMMITTED_GROUPS = {MAX_COMMITTED_GROUPS} groups already"
                    ),
                ));
            }
        }
        let now = crate::clock::now_ms();
        let mut builder = BatchBuilder::new();
        let keys: Vec<Vec<u8>> = entries
            .iter()
            .map(|e| encode_key(group, &e.topic, e.shard))
            .collect();
        for (e, key) in entries.iter().zip(&keys) {
            let value = e.offset.to_le_bytes();
            builder
                .push(&NewRecord {
                    key,
                    value: &value,
                    ..NewRecord::value(now, &[])
                })
                .map_err(|e| BrokerError::new(ErrorCode::InvalidRequest, e.to_string()))?;
        }
        let batch: Bytes = builder
            .finish()
            .map_err(|e| BrokerError::new(ErrorCode::InvalidRequest, e.to_string()))?;
        let header = BatchHeader::read(&batch).expect("built batch has a header");
        let len = batch.len() as u64;
        {
            let tail = self.tail.read().await;
            tail.shard
                .append(vec![batch], vec![header], true)
                .await
                .map_err(|e| BrokerError::new(ErrorCode::StorageError, e.to_string()))?;
            self.tail_bytes.fetch_add(len, Ordering::Relaxed);
            let mut map = self.offsets.write().expect("offsets lock");
            for e in entries {
                map.entry(group.to_string())
                    .or_default()
                    .insert((e.topic.clone(), e.shard), e.offset);
            }
        }
        self.maybe_compact().await;
        Ok(())
    }

    /// Tail bytes past which the next commit compacts.
    fn compact_threshold(&self) -> u64 {
        self.config.compact_min_bytes.max(
            self.config
                .compact_ratio
                .saturating_mul(self.snapshot_bytes.load(Ordering::Relaxed)),
        )
    }

    /// Compacts if the tail has outgrown its bound and no compaction runs. A failure is
    /// logged and retried at a later commit: the old tail still takes commits.
    async fn maybe_compact(&self) {
        if self.tail_bytes.load(Ordering::Relaxed) < self.compact_threshold()
            || self.compacting.swap(true, Ordering::AcqRel)
        {
            return;
        }
        // Cleared however this ends, even if the commit waiting here is dropped:
        // otherwise no compaction would ever run again until a restart.
        struct Running<'a>(&'a AtomicBool);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _running = Running(&self.compacting);
        match self.compact().await {
            Ok(generation) => tracing::info!(generation, "offsets log compacted"),
            Err(e) => tracing::warn!(error = %e, "offsets log compaction failed; will retry"),
        }
    }

    /// Snapshot, then switch to a new tail, then delete the old one; see the module
    /// docs for why each step is where it is. Returns the new tail's generation.
    async fn compact(&self) -> Result<u64, BrokerError> {
        // Preparing the empty next tail (a preallocated, fsynced segment) need not hold
        // commits off; only one compaction runs, so the generation cannot move meanwhile.
        let generation = self.tail.read().await.generation + 1;
        let next = self.start_generation(generation).await?;
        let mut tail = self.tail.write().await;
        crate::invariant!(
            tail.generation + 1 == generation,
            "one offsets compaction at a time",
            "tail generation {} while compacting into {generation}",
            tail.generation
        );
        let snapshot_bytes = match self.write_snapshot(next.generation).await {
            Ok(n) => n,
            // The rename may have happened before the failure (the directory's fsync
            // failed): then the snapshot on disk names `next`, and the next start would
            // delete the old tail; commits must go to `next` from here, as on success.
            Err(e) if self.snapshot_names(next.generation).await => {
                tracing::warn!(error = %e, "offsets snapshot written but not confirmed durable; switching to its tail");
                0
            }
            Err(e) => {
                discard(next).await;
                return Err(e);
            }
        };
        // The snapshot is durable: from here a crash recovers from it and `next`.
        let old = std::mem::replace(&mut *tail, next);
        self.tail_bytes.store(0, Ordering::Relaxed);
        self.snapshot_bytes.store(snapshot_bytes, Ordering::Relaxed);
        drop(tail);
        discard(old).await;
        Ok(generation)
    }

    /// Opens the empty tail generation `generation` (removing any leftover of it).
    async fn start_generation(&self, generation: u64) -> Result<Tail, BrokerError> {
        let dir = tail_dir(&self.root, generation);
        let config = self.config.clone();
        let open_dir = dir.clone();
        // Creating a log preallocates and fsyncs: off the async thread.
        let shard = tokio::task::spawn_blocking(move || {
            match std::fs::remove_dir_all(&open_dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(storage_err(e)),
            }
            open_tail(&open_dir, &config)
        })
        .await
        .map_err(storage_err)??;
        Ok(Tail {
            generation,
            dir,
            shard,
        })
    }

    /// Writes the live map as the snapshot naming tail `generation`, durably (temp
    /// file, fsync, rename, fsync the directory). Returns its size.
    /// Whether the snapshot file on disk names tail `generation`.
    async fn snapshot_names(&self, generation: u64) -> bool {
        let path = self.root.join(SNAPSHOT_FILE);
        tokio::task::spawn_blocking(move || {
            std::fs::read(&path)
                .ok()
                .and_then(|b| decode_snapshot(&b).ok())
                .is_some_and(|(g, _)| g == generation)
        })
        .await
        .unwrap_or(false)
    }

    async fn write_snapshot(&self, generation: u64) -> Result<u64, BrokerError> {
        let bytes = encode_snapshot(generation, &self.offsets.read().expect("offsets lock"));
        let root = self.root.clone();
        let len = bytes.len() as u64;
        tokio::task::spawn_blocking(move || {
            crate::files::write_atomically(&root, SNAPSHOT_FILE, &bytes)
        })
        .await
        .map_err(storage_err)?
        .map_err(storage_err)?;
        Ok(len)
    }

    /// The group's committed offset for one shard.
    pub fn get(&self, group: &str, topic: &str, shard: u32) -> Option<u64> {
        self.offsets
            .read()
            .expect("offsets lock")
            .get(group)?
            .get(&(topic.to_string(), shard))
            .copied()
    }

    /// Whether the group has any committed offset: it is then a streaming group for
    /// good (queue mode refuses its name, see `server::queue`).
    pub fn has_group(&self, group: &str) -> bool {
        let map = self.offsets.read().expect("offsets lock");
        map.get(group).is_some_and(|m| !m.is_empty())
    }

    /// Up to `max` committed offsets of all groups as (group, topic, shard, offset),
    /// sorted; for consumer lag in `/metrics` and the status page.
    pub fn every(&self, max: usize) -> Vec<(String, String, u32, u64)> {
        let map = self.offsets.read().expect("offsets lock");
        let mut v: Vec<_> = map
            .iter()
            .flat_map(|(g, m)| {
                m.iter()
                    .map(move |((t, s), o)| (g.clone(), t.clone(), *s, *o))
            })
            .take(max)
            .collect();
        v.sort();
        v
    }

    /// Every committed offset of a group, sorted.
    pub fn all(&self, group: &str) -> Vec<OffsetEntry> {
        let map = self.offsets.read().expect("offsets lock");
        let mut v: Vec<OffsetEntry> = map
            .get(group)
            .into_iter()
            .flatten()
            .map(|((t, s), o)| OffsetEntry {
                topic: t.clone(),
                shard: *s,
                offset: *o,
            })
            .collect();
        v.sort_by(|a, b| (&a.topic, a.shard).cmp(&(&b.topic, b.shard)));
        v
    }

    /// Flushes and stops the tail log.
    pub async fn close(&self) {
        self.tail.read().await.shard.close().await;
    }
}

/// Opens (creating) the tail log in `dir`.
fn open_tail(dir: &Path, config: &OffsetsConfig) -> Result<Arc<Shard>, BrokerError> {
    let shard_config = ShardConfig {
        log: LogConfig {
            segment_bytes: config.segment_bytes,
            retention_ms: 0,
            retention_bytes: 0,
            ..LogConfig::default()
        },
        durability: Durability::Always,
        ..ShardConfig::default()
    };
    Shard::open(dir, "offsets", shard_config)
        .map_err(|e| BrokerError::new(ErrorCode::StorageError, format!("offsets log: {e}")))
}

/// Deletes every tail directory under `root` but generation `keep`'s.
fn remove_stale_tails(root: &Path, keep: u64) -> Result<(), BrokerError> {
    for entry in std::fs::read_dir(root).map_err(storage_err)? {
        let entry = entry.map_err(storage_err)?;
        let name = entry.file_name();
        let Some(g) = name.to_str().and_then(tail_generation) else {
            continue;
        };
        if g != keep {
            tracing::info!(
                generation = g,
                "removing an offsets tail left by compaction"
            );
            std::fs::remove_dir_all(entry.path()).map_err(storage_err)?;
        }
    }
    Ok(())
}

/// Closes a tail and deletes its directory; a failure only leaves a leftover that the
/// next open deletes.
async fn discard(tail: Tail) {
    tail.shard.close().await;
    let dir = tail.dir;
    let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir)).await;
    if !matches!(removed, Ok(Ok(()))) {
        tracing::warn!(
            generation = tail.generation,
            "could not delete an old offsets tail"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(topic: &str, shard: u32, offset: u64) -> OffsetEntry {
        OffsetEntry {
            topic: topic.into(),
            shard,
            offset,
        }
    }

    /// Apparent bytes of every file under `dir`.
    fn bytes_under(dir: &Path) -> u64 {
        let mut total = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            total += if m.is_dir() {
                bytes_under(&e.path())
            } else {
                m.len()
            };
        }
        total
    }

    fn small() -> OffsetsConfig {
        OffsetsConfig {
            segment_bytes: 64 * 1024,
            compact_min_bytes: 64 * 1024,
            compact_ratio: 4,
        }
    }

    /// 100,000 commits over 400 keys from 16 concurrent committers: the files stay
    /// bounded (without compaction the tail alone would be several MiB), and a
    /// reopened store holds exactly the last offset committed for every key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_commits_stay_bounded_and_reopen_to_the_last_offsets() {
        const COMMITS: u64 = 100_000;
        const TASKS: u64 = 16;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OffsetStore::open_with(dir.path(), small()).unwrap());
        // Key k = (group k % 50, topic k / 50 % 2, shard k / 100); task t commits keys
        // with k % TASKS == t, so each key's last value is known.
        let key = |k: u64| {
            (
                format!("group-{}", k % 50),
                format!("t{}", k / 50 % 2),
                (k / 100) as u32,
            )
        };
        let value = |i: u64| (i * 7919) % 1_000_003; // not monotonic, like seeks
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in (t..COMMITS).step_by(TASKS as usize) {
                    let (g, topic, s) = key(i % 400);
                    store
                        .commit(&g, &[entry(&topic, s, value(i))])
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut expected = HashMap::new();
        for i in 0..COMMITS {
            expected.insert(key(i % 400), value(i));
        }
        let on_disk = bytes_under(&dir.path().join("internal"));
        assert!(
            on_disk < 1024 * 1024,
            "{on_disk} bytes on disk after {COMMITS} commits"
        );
        assert!(store.tail.read().await.generation > 10);
        store.close().await;
        drop(store);

        let store = OffsetStore::open_with(dir.path(), small()).unwrap();
        let mut keys = 0;
        for ((g, t, s), want) in &expected {
            assert_eq!(store.get(g, t, *s), Some(*want), "{g}/{t}/{s}");
            keys += 1;
        }
        assert_eq!(keys, 400);
        let total: usize = (0..50)
            .map(|g| store.all(&format!("group-{g}")).len())
            .sum();
        assert_eq!(total, 400, "no key beyond the committed ones");
        store.close().await;
    }

    /// A crash after the snapshot became durable but before commits moved to the new
    /// tail and the old one was deleted: both tails and the new snapshot are on disk.
    /// Nothing is lost, and later commits go on from there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_between_snapshot_and_tail_switch_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = OffsetStore::open_with(dir.path(), small()).unwrap();
        store
            .commit("g", &[entry("a", 0, 10), entry("a", 1, 11)])
            .await
            .unwrap();
        store.commit("g", &[entry("a", 0, 12)]).await.unwrap();
        store.commit("h", &[entry("b", 3, 5)]).await.unwrap();
        let next = store.start_generation(1).await.unwrap();
        store.write_snapshot(1).await.unwrap();
        // "Crash": stop both logs as they are, switch nothing, delete nothing.
        next.shard.close().await;
        store.close().await;
        drop(store);
        let internal = dir.path().join("internal");
        assert!(internal.join(SNAPSHOT_FILE).exists());
        assert!(tail_dir(&internal, 0).exists() && tail_dir(&internal, 1).exists());

        let store = OffsetStore::open_with(dir.path(), small()).unwrap();
        assert_eq!(store.get("g", "a", 0), Some(12));
        assert_eq!(store.get("g", "a", 1), Some(11));
        assert_eq!(store.get("h", "b", 3), Some(5));
        assert!(!tail_dir(&internal, 0).exists(), "the stale tail is gone");
        store.commit("g", &[entry("a", 1, 99)]).await.unwrap();
        store.close().await;
        drop(store);
        let store = OffsetStore::open_with(dir.path(), small()).unwrap();
        assert_eq!(store.get("g", "a", 1), Some(99));
        assert_eq!(store.get("g", "a", 0), Some(12));
        store.close().await;
    }

    /// A crash before the snapshot's rename: the next tail exists (empty) and so may a
    /// half-written temporary snapshot; the old snapshot and tail are what count.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_before_the_snapshot_rename_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = OffsetStore::open_with(dir.path(), small()).unwrap();
        store.commit("g", &[entry("a", 0, 1)]).await.unwrap();
        store.compact().await.unwrap();
        store.commit("g", &[entry("a", 0, 2)]).await.unwrap();
        let next = store.start_generation(2).await.unwrap();
        next.shard.close().await;
        store.close().await;
        drop(store);
        let internal = dir.path().join("internal");
        std::fs::write(internal.join(format!("{SNAPSHOT_FILE}.tmp")), b"WEIROF").unwrap();

        let store = OffsetStore::open_with(dir.path(), small()).unwrap();
        assert_eq!(store.get("g", "a", 0), Some(2));
        assert_eq!(store.tail.read().await.generation, 1);
        assert!(!tail_dir(&internal, 2).exists());
        store.close().await;
    }

    #[test]
    fn snapshots_round_trip_and_damage_is_refused() {
        let mut map = OffsetMap::new();
        map.entry("g".into())
            .or_default()
            .insert(("t".into(), 3), 42);
        map.entry("ü".into())
            .or_default()
            .insert(("x".into(), 0), u64::MAX);
        let bytes = encode_snapshot(7, &map);
        assert_eq!(&bytes[..8], b"WEIROFSN");
        assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 1);
        assert_eq!(decode_snapshot(&bytes), Ok((7, map)));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(decode_snapshot(&bad).is_err(), "flip at byte {i} accepted");
        }
        assert!(decode_snapshot(&bytes[..bytes.len() - 1]).is_err());
        assert_eq!(
            decode_snapshot(&encode_snapshot(0, &OffsetMap::new())),
            Ok((0, OffsetMap::new()))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_snapshot_refuses_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = OffsetStore::open_with(dir.path(), small()).unwrap();
        store.commit("g", &[entry("a", 0, 1)]).await.unwrap();
        store.compact().await.unwrap();
        store.close().await;
        drop(store);
        let path = dir.path().join("internal").join(SNAPSHOT_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let err = OffsetStore::open_with(dir.path(), small()).unwrap_err();
        assert_eq!(err.code, ErrorCode::CorruptStorage);
    }

    proptest::proptest! {
        /// The snapshot is read from disk: no bytes may panic the decoder.
        #[test]
        fn any_snapshot_bytes_decode_without_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128)) {
            let _ = decode_snapshot(&bytes);
        }

        /// Past the magic and the CRC (which random bytes almost never pass): any body
        /// with a correct magic and CRC parses to an answer or a named error, never a
        /// panic and never more entries than its bytes can hold.
        #[test]
        fn any_framed_snapshot_body_decodes_without_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let mut bytes = SNAPSHOT_MAGIC.to_vec();
            bytes.extend_from_slice(&body);
            let crc = crc32fast::hash(&bytes);
            bytes.extend_from_slice(&crc.to_le_bytes());
            if let Ok((_, map)) = decode_snapshot(&bytes) {
                let entries: usize = map.values().map(|m| m.len()).sum();
                proptest::prop_assert!(entries * 20 <= body.len());
            }
        }
    }

    #[test]
    fn tail_directory_names_round_trip() {
        let root = Path::new("/x");
        for g in [0, 1, 42, u64::MAX] {
            let d = tail_dir(root, g);
            assert_eq!(
                tail_generation(d.file_name().unwrap().to_str().unwrap()),
                Some(g)
            );
        }
        assert_eq!(tail_generation("offsets.snapshot"), None);
        assert_eq!(tail_generation("offsets-12"), None);
    }
}

//! The topic registry: which topics exist, their settings and their shards.
//!
//! Topic metadata is the control plane: created and deleted rarely, read on every
//! request. Readers clone an `Arc<Topic>` out of a briefly held read lock; create and
//! delete are serialised by one async mutex and persisted to `topics.json` in the data
//! directory with write-to-temp, fsync, rename, fsync-directory, so a crash leaves
//! either the old or the new list, never a torn one.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use weir_protocol::batch;
use weir_protocol::messages::{Reshard, ShardMetadata, TopicConfig, TopicMetadata};

use crate::inject::Injector;
use weir_protocol::keys::KeyRule;
use weir_protocol::ErrorCode;

use crate::config::{Config, DurabilitySetting};
use crate::error::BrokerError;
use crate::files::write_atomically;
use crate::names::{valid_name, MAX_TOPIC_NAME_BYTES};
use crate::shard::{Shard, ShardConfig};
use crate::storage::at_rest::AtRest;
use crate::storage::LogConfig;

const METADATA_FILE: &str = "topics.json";

/// Shards of all `topics`, counted against [`Config::max_shards`].
fn shard_count(topics: &HashMap<String, Arc<Topic>>) -> u64 {
    topics.values().map(|t| t.shards.len() as u64).sum()
}

/// One topic and its open shards.
#[derive(Debug)]
pub struct Topic {
    pub name: String,
    /// Settings with every default resolved.
    pub config: TopicConfig,
    /// Fills unset record metadata (see [`crate::inject`]).
    pub injector: Injector,
    /// Every shard, sealed ones included: a reshard never renumbers or removes one.
    pub shards: Vec<Arc<Shard>>,
    /// The shards keys are hashed over and produce may write: `0..active`.
    pub active: u32,
    /// The topic's reshards, oldest first (`weir_protocol::reshard`).
    pub reshards: Arc<Vec<Reshard>>,
    /// Records and bytes in and out, for `/metrics` and the status page (shared with
    /// the topic's replacement when a shard is truncated, so the counters go on).
    pub io: Arc<crate::meters::TopicIo>,
}

impl Topic {
    /// The shard with this number, or UNKNOWN_SHARD.
    pub fn shard(&self, shard: u32) -> Result<&Arc<Shard>, BrokerError> {
        self.shards.get(shard as usize).ok_or_else(|| {
            BrokerError::new(
                ErrorCode::UnknownShard,
                format!(
                    "topic {} has {} shards, not {shard}",
                    self.name,
                    self.shards.len()
                ),
            )
        })
    }

    /// The layout epoch: how many reshards the topic has had.
    pub fn layout_epoch(&self) -> u32 {
        self.reshards.last().map_or(0, |r| r.epoch)
    }

    /// The shard produce may write to, or why not: UNKNOWN_SHARD past the end,
    /// LAYOUT_CHANGED for a shard a reshard sealed.
    pub fn active_shard(&self, shard: u32) -> Result<&Arc<Shard>, BrokerError> {
        let s = self.shard(shard)?;
        if shard >= self.active {
            return Err(BrokerError::new(
                ErrorCode::LayoutChanged,
                format!(
                    "shard {shard} of topic {} is sealed since reshard epoch {}: the topic writes to shards 0..{}; refresh Metadata",
                    self.name,
                    self.layout_epoch(),
                    self.active
                ),
            ));
        }
        Ok(s)
    }

    /// The topic's metadata as sent to clients.
    pub fn metadata(&self) -> TopicMetadata {
        TopicMetadata {
            name: self.name.clone(),
            config: self.config.clone(),
            active_shards: self.active,
            reshards: self.reshards.as_ref().clone(),
            shards: self
                .shards
                .iter()
                .enumerate()
                .map(|(i, s)| ShardMetadata {
                    shard: i as u32,
                    log_start_offset: s.reader().log_start_offset(),
                    high_watermark: s.reader().high_watermark(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct TopicRecord {
    name: String,
    shards: u32,
    durability: DurabilitySetting,
    flush_interval_ms: u32,
    retention_ms: u64,
    retention_bytes: u64,
    segment_bytes: u64,
    max_message_bytes: u32,
    #[serde(default)]
    default_priority: u8,
    #[serde(default)]
    default_complexity: u8,
    #[serde(default)]
    shard_key_rule: String,
    #[serde(default)]
    replicas: u8,
    #[serde(default)]
    min_in_sync: u8,
    /// Absent in files written before resharding existed: all shards are active.
    #[serde(default)]
    active_shards: Option<u32>,
    #[serde(default)]
    reshards: Vec<ReshardRecord>,
}

/// One reshard as `topics.json` keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReshardRecord {
    epoch: u32,
    from_shards: u32,
    to_shards: u32,
    starts: Vec<u64>,
    #[serde(default)]
    reason: String,
}

impl From<&Reshard> for ReshardRecord {
    fn from(r: &Reshard) -> Self {
        ReshardRecord {
            epoch: r.epoch,
            from_shards: r.from_shards,
            to_shards: r.to_shards,
            starts: r.starts.clone(),
            reason: r.reason.clone(),
        }
    }
}

impl From<ReshardRecord> for Reshard {
    fn from(r: ReshardRecord) -> Self {
        Reshard {
            epoch: r.epoch,
            from_shards: r.from_shards,
            to_shards: r.to_shards,
            starts: r.starts,
            reason: r.reason,
        }
    }
}

/// Most reshards one topic keeps: each is a line in every Metadata answer and a
/// check per gated shard in every consumer.
pub const MAX_RESHARDS: usize = 64;

#[derive(Debug, Default, Serialize, Deserialize)]
struct MetadataFile {
    topics: Vec<TopicRecord>,
}

/// All topics of a broker.
#[derive(Debug)]
pub struct TopicRegistry {
    dir: PathBuf,
    config: Arc<Config>,
    /// Encryption-at-rest keys of topic logs (none = plain).
    at_rest: Option<AtRest>,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    changes: tokio::sync::Mutex<()>,
}

fn durability_setting(d: weir_protocol::messages::Durability) -> DurabilitySetting {
    use weir_protocol::messages::Durability as D;
    match d {
        D::None => DurabilitySetting::None,
        D::Interval => DurabilitySetting::Interval,
        D::Always => DurabilitySetting::Always,
    }
}

impl TopicRegistry {
    /// Loads the topic list from the data directory and opens (recovers) every shard.
    pub fn open(config: Arc<Config>) -> Result<TopicRegistry, BrokerError> {
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(dir.join("topics")).map_err(storage_err)?;
        let path = dir.join(METADATA_FILE);
        let file: MetadataFile = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                BrokerError::new(
                    ErrorCode::CorruptStorage,
                    format!("{}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => MetadataFile::default(),
            Err(e) => return Err(storage_err(e)),
        };
        let at_rest = config
            .load_at_rest()
            .map_err(|e| BrokerError::new(ErrorCode::InvalidConfig, e))?;
        let registry = TopicRegistry {
            dir,
            config,
            at_rest,
            topics: RwLock::new(HashMap::new()),
            changes: tokio::sync::Mutex::new(()),
        };
        for rec in file.topics {
            let topic_config = TopicConfig {
                durability: rec.durability.into(),
                flush_interval_ms: rec.flush_interval_ms,
                retention_ms: rec.retention_ms,
                retention_bytes: rec.retention_bytes,
                segment_bytes: rec.segment_bytes,
                max_message_bytes: rec.max_message_bytes,
                default_priority: rec.default_priority,
                default_complexity: rec.default_complexity,
                shard_key_rule: rec.shard_key_rule,
                replicas: rec.replicas,
                min_in_sync: rec.min_in_sync,
            };
            // Topics written before these settings existed get their defaults; a
            // stored value outside today's ranges stops the start by name.
            let topic_config = registry.resolve(topic_config).map_err(|e| {
                BrokerError::new(
                    e.code,
                    format!("topic {:?} in {}: {}", rec.name, path.display(), e.message),
                )
            })?;
            let reshards: Vec<Reshard> = rec.reshards.into_iter().map(Reshard::from).collect();
            let active = rec.active_shards.unwrap_or(rec.shards).min(rec.shards);
            let mut topic = registry.open_topic(&rec.name, rec.shards, topic_config, &reshards)?;
            topic.active = active;
            topic.reshards = Arc::new(reshards);
            registry
                .topics
                .write()
                .expect("topics lock")
                .insert(rec.name.clone(), Arc::new(topic));
        }
        let held = shard_count(&registry.topics.read().expect("topics lock"));
        if held > u64::from(registry.config.max_shards) {
            // Opened anyway: refusing would hide data that is on disk.
            tracing::warn!(
                shards = held,
                max_shards = registry.config.max_shards,
                "the topics on disk hold more shards than max_shards; no topic can be created until some are deleted"
            );
        }
        Ok(registry)
    }

    fn topic_dir(&self, name: &str) -> PathBuf {
        self.dir.join("topics").join(name)
    }

    /// The directory of one shard's log (and, in a cluster, its epoch history).
    pub fn shard_dir(&self, name: &str, shard: u32) -> PathBuf {
        self.topic_dir(name).join(shard.to_string())
    }

    /// Opens shards `0..shards` of a topic (all active, no reshards: the caller sets
    /// both when the topic has had reshards; the writers start in the last one's
    /// layout epoch).
    fn open_topic(
        &self,
        name: &str,
        shards: u32,
        config: TopicConfig,
        reshards: &[Reshard],
    ) -> Result<Topic, BrokerError> {
        let epoch = reshards.last().map_or(0, |r| r.epoch);
        let opened = self.open_shards(name, 0..shards, &config, epoch)?;
        let injector =
            Injector::new(&config).map_err(|e| BrokerError::new(ErrorCode::InvalidConfig, e))?;
        Ok(Topic {
            name: name.to_string(),
            injector,
            config,
            shards: opened,
            active: shards,
            reshards: Arc::new(reshards.to_vec()),
            io: Default::default(),
        })
    }

    /// Opens shards `range` of a topic, their writers in layout epoch `epoch`; on a
    /// failure closes those it opened.
    fn open_shards(
        &self,
        name: &str,
        range: std::ops::Range<u32>,
        config: &TopicConfig,
        epoch: u32,
    ) -> Result<Vec<Arc<Shard>>, BrokerError> {
        let mut opened: Vec<Arc<Shard>> = Vec::with_capacity(range.len());
        for i in range {
            let mut shard_config = self.shard_config(config)?;
            shard_config.layout_epoch = epoch;
            let dir = self.topic_dir(name).join(i.to_string());
            let shard = match Shard::open_capped(
                &dir,
                &format!("{name}-{i}"),
                shard_config,
                self.opening_cap(),
            ) {
                Ok(s) => s,
                Err(e) => {
                    // Stop the writers already started before anyone removes their
                    // directories (CreateTopic does).
                    for s in &opened {
                        s.close_blocking();
                    }
                    return Err(BrokerError::new(
                        ErrorCode::StorageError,
                        format!("opening {}: {e}", dir.display()),
                    ));
                }
            };
            opened.push(shard);
        }
        Ok(opened)
    }

    /// The topic with this name, or UNKNOWN_TOPIC.
    pub fn get(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        self.topics
            .read()
            .expect("topics lock")
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::new(ErrorCode::UnknownTopic, format!("no topic {name:?}")))
    }

    /// Every topic, sorted by name.
    pub fn list(&self) -> Vec<Arc<Topic>> {
        let mut v: Vec<_> = self
            .topics
            .read()
            .expect("topics lock")
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Fills zero fields of a requested config with the broker's defaults and checks ranges.
    pub fn resolve(&self, mut c: TopicConfig) -> Result<TopicConfig, BrokerError> {
        let d = &self.config;
        if c.flush_interval_ms == 0 {
            c.flush_interval_ms = d.default_flush_interval_ms;
        }
        if c.retention_ms == 0 {
            c.retention_ms = d.default_retention_ms;
        }
        if c.retention_bytes == 0 {
            c.retention_bytes = d.default_retention_bytes;
        }
        if c.segment_bytes == 0 {
            c.segment_bytes = d.default_segment_bytes;
        }
        if c.max_message_bytes == 0 {
            c.max_message_bytes = d.default_max_message_bytes;
        }
        if c.default_priority == batch::UNSET {
            c.default_priority = batch::DEFAULT_PRIORITY;
        }
        if c.default_complexity == batch::UNSET {
            c.default_complexity = batch::DEFAULT_COMPLEXITY;
        }
        let invalid = |m: String| Err(BrokerError::new(ErrorCode::InvalidConfig, m));
        let nodes = d.peers.len().max(1);
        if c.replicas == 0 {
            c.replicas = d.default_replicas.min(nodes.min(255) as u8);
        }
        if usize::from(c.replicas) > nodes {
            return invalid(if nodes == 1 {
                format!(
                    "replicas {}: a single-node broker keeps one copy of each shard",
                    c.replicas
                )
            } else {
                format!(
                    "replicas {} is more than the cluster's {nodes} nodes",
                    c.replicas
                )
            });
        }
        if c.min_in_sync == 0 {
            c.min_in_sync = d.default_min_in_sync.min(c.replicas);
        }
        if c.min_in_sync > c.replicas {
            return invalid(format!(
                "min_in_sync {} is more than replicas {}",
                c.min_in_sync, c.replicas
            ));
        }
        if !batch::PRIORITY_RANGE.contains(&c.default_priority) {
            return invalid(format!(
                "default_priority {} outside 1..=10",
                c.default_priority
            ));
        }
        if !batch::COMPLEXITY_RANGE.contains(&c.default_complexity) {
            return invalid(format!(
                "default_complexity {} outside 1..=5",
                c.default_complexity
            ));
        }
        if let Err(e) = KeyRule::parse(&c.shard_key_rule) {
            return invalid(e);
        }
        // The range a shard's log opens with (`LogConfig::check`), so a topic that is
        // accepted here always opens, now and at the next start.
        if c.segment_bytes < 64 * 1024 || c.segment_bytes > LogConfig::SEGMENT_BYTES_MAX {
            return invalid(format!(
                "segment_bytes {} outside 65536..=4294967295",
                c.segment_bytes
            ));
        }
        if c.max_message_bytes > d.max_frame_bytes {
            return invalid(format!(
                "max_message_bytes {} exceeds the broker's max_frame_bytes {}",
                c.max_message_bytes, d.max_frame_bytes
            ));
        }
        if u64::from(c.max_message_bytes) > c.segment_bytes {
            return invalid("max_message_bytes exceeds segment_bytes".to_string());
        }
        Ok(c)
    }

    /// Creates a topic, persists it, and returns it. The file work (directories,
    /// preallocation, fsyncs) runs on the blocking pool, not on the calling runtime's
    /// thread, which in `thread_per_core` mode serves a whole core's connections.
    pub async fn create(
        self: &Arc<Self>,
        name: &str,
        shards: u32,
        config: TopicConfig,
    ) -> Result<Arc<Topic>, BrokerError> {
        if !valid_name(name) {
            return Err(BrokerError::new(
                ErrorCode::InvalidTopicName,
                format!("{name:?}: use 1 to {MAX_TOPIC_NAME_BYTES} characters of [A-Za-z0-9._-]"),
            ));
        }
        let shards = if shards == 0 {
            self.config.default_shards
        } else {
            shards
        };
        if shards > self.config.max_shards_per_topic {
            return Err(BrokerError::new(
                ErrorCode::InvalidConfig,
                format!(
                    "{shards} shards exceeds max_shards_per_topic {}",
                    self.config.max_shards_per_topic
                ),
            ));
        }
        let config = self.resolve(config)?;
        let _guard = self.changes.lock().await;
        {
            let topics = self.topics.read().expect("topics lock");
            if topics.contains_key(name) {
                return Err(BrokerError::new(
                    ErrorCode::TopicAlreadyExists,
                    format!("topic {name:?} already exists"),
                ));
            }
            if topics.len() >= self.config.max_topics {
                return Err(BrokerError::new(
                    ErrorCode::InvalidConfig,
                    format!(
                        "broker already holds max_topics = {}",
                        self.config.max_topics
                    ),
                ));
            }
            // Every shard is a writer thread: the broker-wide cap, not just the
            // per-topic one, bounds them.
            let held = shard_count(&topics);
            if held + u64::from(shards) > u64::from(self.config.max_shards) {
                return Err(BrokerError::new(
                    ErrorCode::InvalidConfig,
                    format!(
                        "{shards} more shards would exceed max_shards = {}: the broker holds {held}",
                        self.config.max_shards
                    ),
                ));
            }
        }
        let dir = self.topic_dir(name);
        let this = Arc::clone(self);
        let (owned_name, owned_dir) = (name.to_string(), dir.clone());
        let topic = blocking(move || {
            // Leftovers of a create that crashed before its metadata was written.
            if owned_dir.exists() {
                tracing::warn!(topic = %owned_name, "removing orphaned topic directory");
                std::fs::remove_dir_all(&owned_dir).map_err(storage_err)?;
            }
            this.check_free_space(shards, &config)?;
            match this.open_topic(&owned_name, shards, config, &[]) {
                Ok(t) => Ok(Arc::new(t)),
                Err(e) => {
                    // Shards opened before the failure hold preallocated blocks that
                    // nothing would ever free: remove them.
                    if let Err(rm) = std::fs::remove_dir_all(&owned_dir) {
                        if rm.kind() != std::io::ErrorKind::NotFound {
                            tracing::warn!(topic = %owned_name, error = %rm, "could not remove a topic that failed to create");
                        }
                    }
                    Err(e)
                }
            }
        })
        .await?;
        let mut next = self.topics.read().expect("topics lock").clone();
        next.insert(name.to_string(), topic.clone());
        let this = Arc::clone(self);
        let persisted = blocking(move || this.persist(&next).map(|()| next)).await;
        let next = match persisted {
            Ok(next) => next,
            Err(e) => {
                for s in &topic.shards {
                    s.close().await;
                }
                let _ = blocking(move || std::fs::remove_dir_all(&dir).map_err(storage_err)).await;
                return Err(e);
            }
        };
        *self.topics.write().expect("topics lock") = next;
        tracing::info!(topic = name, shards, "topic created");
        Ok(topic)
    }

    /// Refuses a topic whose shards would reserve more disk than is free: each shard's
    /// log preallocates its first segment and indexes when it opens.
    fn check_free_space(&self, shards: u32, config: &TopicConfig) -> Result<(), BrokerError> {
        let per_shard = self.log_config(config).reserved_bytes();
        let need = per_shard.saturating_mul(u64::from(shards));
        let topics = self.dir.join("topics");
        let free = free_bytes(&topics).map_err(storage_err)?;
        if need > free {
            return Err(BrokerError::new(
                ErrorCode::StorageError,
                format!(
                    "not enough free disk space: {shards} shards of segment_bytes {} reserve {need} bytes, {free} are free in {}",
                    config.segment_bytes,
                    topics.display()
                ),
            ));
        }
        Ok(())
    }

    /// The writer settings of a topic's shards.
    fn shard_config(&self, config: &TopicConfig) -> Result<ShardConfig, BrokerError> {
        Ok(ShardConfig {
            log: self.log_config(config),
            durability: config.durability,
            flush_interval_ms: config.flush_interval_ms,
            queue_depth: self.config.shard_queue_depth,
            classes: self
                .config
                .class_map()
                .map_err(|e| BrokerError::new(ErrorCode::InvalidConfig, e.to_string()))?,
            weights: self.config.class_weights(),
            aging: self.config.class_aging(),
            group_bytes_max: self.config.shard_group_bytes_max,
            delete_key_compact_ms: self.config.delete_key_compact_ms,
            retention_check_ms: self.config.retention_check_ms,
            layout_epoch: 0,
            spin_wait_us: self.config.spin_wait_us,
            in_place_bytes_max: self.config.in_place_append_bytes,
        })
    }

    /// The log settings of a topic's shards.
    fn log_config(&self, config: &TopicConfig) -> LogConfig {
        LogConfig {
            segment_bytes: config.segment_bytes,
            preallocate_bytes: self.config.segment_preallocate_bytes,
            index_interval_bytes: self.config.index_interval_bytes,
            retention_ms: config.retention_ms,
            retention_bytes: config.retention_bytes,
            at_rest: self.at_rest.clone(),
            write_behind_bytes: self.config.flush_write_behind_bytes,
            write_behind_max_bytes_per_sec: self.config.flush_write_behind_max_bytes_per_second,
            write_call_bytes: self.config.segment_write_call_bytes,
            page_cache_window_bytes: self.config.page_cache_window_bytes,
        }
    }

    /// What readers of a freshly opened shard may see: everything on a single node;
    /// nothing on a cluster node until it learns it is the shard's primary and what
    /// the copies hold (`cluster::replication` raises it).
    fn opening_cap(&self) -> u64 {
        if self.config.is_cluster() {
            0
        } else {
            u64::MAX
        }
    }

    /// Cuts one shard's log back to `to` (a mirror whose suffix diverges from its
    /// primary's): closes the shard, truncates its files, opens it again and puts the
    /// new handle in place. Returns the new handle and the log's end after the cut.
    pub async fn truncate_shard(
        &self,
        name: &str,
        shard: u32,
        to: u64,
    ) -> Result<(Arc<Shard>, u64), BrokerError> {
        let r = self
            .rewrite_shard(name, shard, move |dir| {
                crate::storage::truncate_closed_log(dir, to)
            })
            .await?;
        tracing::info!(topic = name, shard, to, end = r.1, "shard truncated");
        Ok(r)
    }

    /// Empties one shard's log and starts it at `base` (a mirror whose primary no
    /// longer holds the mirror's next record: retention removed it): closes the shard,
    /// replaces its files with an empty segment at `base`, opens it again.
    pub async fn restart_shard(
        &self,
        name: &str,
        shard: u32,
        base: u64,
    ) -> Result<Arc<Shard>, BrokerError> {
        let (fresh, _) = self
            .rewrite_shard(name, shard, move |dir| {
                crate::storage::restart_closed_log(dir, base).map(|()| base)
            })
            .await?;
        tracing::info!(
            topic = name,
            shard,
            base,
            "shard restarted at the primary's log start"
        );
        Ok(fresh)
    }

    /// Closes a shard, changes its files with `op` (which returns the log's end), opens
    /// it again and puts the new handle in place.
    async fn rewrite_shard(
        &self,
        name: &str,
        shard: u32,
        op: impl FnOnce(&std::path::Path) -> Result<u64, crate::storage::StorageError> + Send + 'static,
    ) -> Result<(Arc<Shard>, u64), BrokerError> {
        let _guard = self.changes.lock().await;
        let topic = self.get(name)?;
        let old = topic.shard(shard)?.clone();
        old.close().await;
        let dir = self.topic_dir(name).join(shard.to_string());
        let label = format!("{name}-{shard}");
        let mut shard_config = self.shard_config(&topic.config)?;
        shard_config.layout_epoch = topic.layout_epoch();
        let cap = self.opening_cap();
        let (fresh, end) = blocking(move || {
            let end =
                op(&dir).map_err(|e| BrokerError::new(ErrorCode::StorageError, e.to_string()))?;
            let fresh = Shard::open_capped(&dir, &label, shard_config, cap).map_err(|e| {
                BrokerError::new(
                    ErrorCode::StorageError,
                    format!("reopening {}: {e}", dir.display()),
                )
            })?;
            Ok((fresh, end))
        })
        .await?;
        let mut shards = topic.shards.clone();
        shards[shard as usize] = fresh.clone();
        let injector = Injector::new(&topic.config)
            .map_err(|e| BrokerError::new(ErrorCode::InvalidConfig, e))?;
        let replaced = Topic {
            name: topic.name.clone(),
            config: topic.config.clone(),
            injector,
            shards,
            active: topic.active,
            reshards: topic.reshards.clone(),
            io: topic.io.clone(),
        };
        self.topics
            .write()
            .expect("topics lock")
            .insert(name.to_string(), Arc::new(replaced));
        Ok((fresh, end))
    }

    /// Deletes every record with `key` from every shard of `topic` (tombstones);
    /// returns each shard's tombstone offset.
    pub async fn delete_key(
        &self,
        topic: &str,
        key: bytes::Bytes,
    ) -> Result<Vec<(u32, u64)>, BrokerError> {
        let t = self.get(topic)?;
        let mut out = Vec::with_capacity(t.shards.len());
        for (i, s) in t.shards.iter().enumerate() {
            let below = s.delete_key(key.to_vec()).await.map_err(|e| {
                BrokerError::new(ErrorCode::StorageError, format!("shard {i}: {e}"))
            })?;
            out.push((i as u32, below));
        }
        tracing::info!(
            topic,
            shards = out.len(),
            "tombstones written for a deleted key"
        );
        Ok(out)
    }

    /// Changes a topic's active shard count to `to` while it is in use (see
    /// `weir_protocol::reshard` for the rule consumers follow): new shards are created
    /// when growing; every writer is moved to the next layout epoch, which cuts its log
    /// at one offset (the reshard's start there) and from then on refuses appends
    /// checked under the old shard count; the starts are flushed, then the reshard is
    /// persisted in `topics.json`, and only then do produce checks use the new count.
    /// A failure before the reshard is persisted puts the writers back in the old
    /// epoch and removes the new shards: the topic is as before.
    pub async fn reshard(
        self: &Arc<Self>,
        name: &str,
        to: u32,
        reason: String,
    ) -> Result<Reshard, BrokerError> {
        let invalid = |m: String| Err(BrokerError::new(ErrorCode::InvalidRequest, m));
        if self.config.is_cluster() {
            return invalid(
                "resharding a topic on a cluster is not supported yet (its new shards would need placement and mirrors): create a topic with the shard count wanted"
                    .into(),
            );
        }
        let _guard = self.changes.lock().await;
        let topic = self.get(name)?;
        if to == 0 {
            return invalid("a topic needs at least one shard".into());
        }
        if to == topic.active {
            return invalid(format!("topic {name:?} already has {to} active shards"));
        }
        if to > self.config.max_shards_per_topic {
            return Err(BrokerError::new(
                ErrorCode::InvalidConfig,
                format!(
                    "{to} shards exceeds max_shards_per_topic {}",
                    self.config.max_shards_per_topic
                ),
            ));
        }
        if topic.reshards.len() >= MAX_RESHARDS {
            return invalid(format!(
                "topic {name:?} has had {MAX_RESHARDS} reshards, the most one topic keeps"
            ));
        }
        let physical = topic.shards.len() as u32;
        let added = to.saturating_sub(physical);
        if added > 0 {
            let held = shard_count(&self.topics.read().expect("topics lock"));
            if held + u64::from(added) > u64::from(self.config.max_shards) {
                return Err(BrokerError::new(
                    ErrorCode::InvalidConfig,
                    format!(
                        "{added} more shards would exceed max_shards = {}: the broker holds {held}",
                        self.config.max_shards
                    ),
                ));
            }
        }
        let old_epoch = topic.layout_epoch();
        let epoch = old_epoch + 1;
        // New shards first (their writers start in the new epoch): a failure here
        // changes nothing.
        let fresh = if added > 0 {
            let this = Arc::clone(self);
            let (owned, config) = (name.to_string(), topic.config.clone());
            blocking(move || {
                for i in physical..to {
                    // Left by a reshard that failed or crashed before it was recorded.
                    let dir = this.shard_dir(&owned, i);
                    if dir.exists() {
                        tracing::warn!(topic = %owned, shard = i, "removing an orphaned shard directory");
                        std::fs::remove_dir_all(&dir).map_err(storage_err)?;
                    }
                }
                this.check_free_space(added, &config)?;
                this.open_shards(&owned, physical..to, &config, epoch)
            })
            .await?
        } else {
            Vec::new()
        };
        let recorded = self.cut_and_record(&topic, &fresh, to, epoch, reason).await;
        match recorded {
            Ok(reshard) => {
                tracing::info!(
                    topic = name,
                    epoch,
                    from = topic.active,
                    to,
                    starts = ?reshard.starts,
                    reason = %reshard.reason,
                    "topic resharded"
                );
                Ok(reshard)
            }
            Err(e) => {
                for s in &topic.shards {
                    let _ = s.seal_layout(old_epoch).await;
                }
                for s in &fresh {
                    s.close().await;
                }
                for i in physical..to {
                    let dir = self.shard_dir(name, i);
                    let _ =
                        blocking(move || std::fs::remove_dir_all(&dir).map_err(storage_err)).await;
                }
                Err(e)
            }
        }
    }

    /// The part of [`TopicRegistry::reshard`] that can fail after the new shards
    /// exist: cuts every old shard's log in the new epoch, flushes the cuts, persists
    /// the reshard and puts the new topic in place.
    async fn cut_and_record(
        self: &Arc<Self>,
        topic: &Arc<Topic>,
        fresh: &[Arc<Shard>],
        to: u32,
        epoch: u32,
        reason: String,
    ) -> Result<Reshard, BrokerError> {
        let cut_err = |i: usize, e: crate::shard::AppendError| {
            BrokerError::new(ErrorCode::StorageError, format!("shard {i}: {e}"))
        };
        let mut starts = Vec::with_capacity(topic.shards.len() + fresh.len());
        for (i, s) in topic.shards.iter().enumerate() {
            starts.push(s.seal_layout(epoch).await.map_err(|e| cut_err(i, e))?);
        }
        for s in fresh {
            starts.push(s.reader().high_watermark());
        }
        // A start must hold after a crash: below it is the old epoch's data, which a
        // crash must not shorten so that new-epoch records fall below the start.
        for (i, s) in topic.shards.iter().enumerate() {
            s.flush().await.map_err(|e| cut_err(i, e))?;
        }
        let reshard = Reshard {
            epoch,
            from_shards: topic.active,
            to_shards: to,
            starts,
            reason,
        };
        let mut shards = topic.shards.clone();
        shards.extend(fresh.iter().cloned());
        let mut reshards = topic.reshards.as_ref().clone();
        reshards.push(reshard.clone());
        let injector = Injector::new(&topic.config)
            .map_err(|e| BrokerError::new(ErrorCode::InvalidConfig, e))?;
        let replaced = Arc::new(Topic {
            name: topic.name.clone(),
            config: topic.config.clone(),
            injector,
            shards,
            active: to,
            reshards: Arc::new(reshards),
            io: topic.io.clone(),
        });
        let mut next = self.topics.read().expect("topics lock").clone();
        next.insert(topic.name.clone(), replaced);
        let this = Arc::clone(self);
        let next = blocking(move || this.persist(&next).map(|()| next)).await?;
        *self.topics.write().expect("topics lock") = next;
        Ok(reshard)
    }

    /// Deletes a topic and its data.
    pub async fn delete(&self, name: &str) -> Result<(), BrokerError> {
        let _guard = self.changes.lock().await;
        let mut next = self.topics.read().expect("topics lock").clone();
        let topic = next.remove(name).ok_or_else(|| {
            BrokerError::new(ErrorCode::UnknownTopic, format!("no topic {name:?}"))
        })?;
        self.persist(&next)?;
        *self.topics.write().expect("topics lock") = next;
        for s in &topic.shards {
            s.close().await;
        }
        let dir = self.topic_dir(name);
        if let Err(e) = blocking(move || std::fs::remove_dir_all(&dir).map_err(storage_err)).await {
            tracing::warn!(topic = name, error = %e, "could not remove topic directory");
        }
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    /// Flushes and stops every shard writer.
    pub async fn close(&self) {
        for topic in self.list() {
            for s in &topic.shards {
                s.close().await;
            }
        }
    }

    fn persist(&self, topics: &HashMap<String, Arc<Topic>>) -> Result<(), BrokerError> {
        let mut file = MetadataFile::default();
        let mut names: Vec<_> = topics.keys().collect();
        names.sort();
        for name in names {
            let t = &topics[name];
            file.topics.push(TopicRecord {
                name: t.name.clone(),
                shards: t.shards.len() as u32,
                durability: durability_setting(t.config.durability),
                flush_interval_ms: t.config.flush_interval_ms,
                retention_ms: t.config.retention_ms,
                retention_bytes: t.config.retention_bytes,
                segment_bytes: t.config.segment_bytes,
                max_message_bytes: t.config.max_message_bytes,
                default_priority: t.config.default_priority,
                default_complexity: t.config.default_complexity,
                shard_key_rule: t.config.shard_key_rule.clone(),
                replicas: t.config.replicas,
                min_in_sync: t.config.min_in_sync,
                active_shards: Some(t.active),
                reshards: t.reshards.iter().map(ReshardRecord::from).collect(),
            });
        }
        let bytes = serde_json::to_vec_pretty(&file).expect("metadata serialises");
        write_atomically(&self.dir, METADATA_FILE, &bytes).map_err(storage_err)
    }
}

fn storage_err(e: std::io::Error) -> BrokerError {
    BrokerError::new(ErrorCode::StorageError, e.to_string())
}

/// Bytes an unprivileged writer may still allocate on the file system of `path`.
fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out value
    // that the call fills in; nothing else is passed.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Runs file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BrokerError> + Send + 'static,
) -> Result<T, BrokerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BrokerError::new(ErrorCode::Unknown, format!("file work failed: {e}")))?
}

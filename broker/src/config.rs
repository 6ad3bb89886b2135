//! Broker configuration: defaults, then a TOML file, then `WEIR_*` environment
//! variables, then command-line flags, each overriding the one before.
//!
//! Every limit the broker enforces is a field here with a sane default; CONFIG.md
//! (the reference) lists them. Unknown keys and out-of-range values are errors at
//! start-up, never silently ignored.

use std::net::SocketAddr;
use std::ops::Not;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_protocol::classes::{ClassMap, CLASS_COUNT, DEFAULT_CLASS_BOUNDS, DEFAULT_CLASS_WEIGHTS};
use weir_protocol::messages::{Durability, Quota, QuotaEntry};

use crate::scheduler::DEFAULT_AGING;
use crate::storage::at_rest::{AtRest, KeySource};
use crate::storage::LogConfig;

/// Environment variables with this prefix set config keys (`WEIR_MAX_CONNECTIONS=10`).
pub const ENV_PREFIX: &str = "WEIR_";

/// Old key names still accepted (in files and as `WEIR_*` variables), with the key
/// each now sets. A file that sets both an old name and its new one is refused.
pub const DEPRECATED_KEYS: &[(&str, &str)] = &[
    // Renamed to share the SDK's breaker vocabulary (`open_for`).
    ("queue_breaker_open_ms", "queue_breaker_open_for_ms"),
];

/// `WEIR_*` variables that are not config keys: read by the binaries, the tools and
/// the project's own tests. Any other unknown `WEIR_*` name is warned about.
pub const NOT_CONFIG_ENV: &[&str] = &[
    "WEIR_LOG",
    "WEIR_LOG_FORMAT",
    "WEIR_CONFIG",
    "WEIR_BROKER",
    "WEIR_BLESS",
    "WEIR_CRASH_CHILD_DIR",
    "WEIR_CRASH_ROUNDS",
    // Client side of security (weir, weir-bench) and the bootstrap admin's password.
    "WEIR_TLS_CA",
    "WEIR_USER",
    "WEIR_PASSWORD",
    "WEIR_API_KEY",
    "WEIR_ADMIN_PASSWORD",
    "WEIR_NEW_PASSWORD",
    "WEIR_CLUSTER_SECRET",
];

/// `WEIR_*` variables starting with this hold at-rest keys (`at_rest_keys`,
/// `N=env:WEIR_AT_REST_KEY_N`), not settings.
pub const AT_REST_KEY_ENV_PREFIX: &str = "WEIR_AT_REST_KEY_";

/// The config key nearest to `key` by edit distance, if it is near enough to be a
/// likely misspelling (at most a third of its length away).
fn closest_key<'a>(key: &str, known: &'a toml::Table) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    }
    known
        .keys()
        .map(|k| (distance(key, k), k.as_str()))
        .min()
        .filter(|(d, _)| *d <= key.len().max(3) / 3)
        .map(|(_, k)| k)
}

/// The current name of `key`.
fn current_key(key: &str) -> &str {
    DEPRECATED_KEYS
        .iter()
        .find(|(old, _)| *old == key)
        .map_or(key, |(_, new)| new)
}

/// Default of [`Config::max_shards`]. Each shard runs a writer thread and keeps a
/// preallocated segment: 4096 threads stay far below Linux's default per-user and
/// system thread limits (tens of thousands) with room for connections, runtimes and
/// flush threads, and are more shards than one host's disks and cores serve well.
pub const DEFAULT_MAX_SHARDS: u32 = 4096;

/// Largest accepted [`Config::max_shards`]: beyond it a broker would need more threads
/// than any kernel default allows.
pub const MAX_SHARDS_LIMIT: u32 = 1_000_000;

/// The longest `spin_wait_us` accepted: a spin longer than a few scheduler ticks only
/// burns a core.
pub const SPIN_WAIT_US_MAX: u32 = 10_000;

/// The largest `in_place_append_bytes` accepted: a larger copy into the page cache
/// would hold a connection's runtime thread (and every connection it serves) for
/// milliseconds on a cold page cache.
pub const IN_PLACE_APPEND_BYTES_MAX: usize = 1 << 20;

/// Every setting of a broker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Protocol listener.
    pub listen: SocketAddr,
    /// HTTP health and metrics listener.
    pub http: SocketAddr,
    /// Where topics, offsets and metadata are stored.
    pub data_dir: PathBuf,
    /// Largest request frame accepted, length prefix excluded.
    pub max_frame_bytes: u32,
    /// Most open client connections (TCP connections and in-process sessions
    /// together); further ones are closed at once.
    pub max_connections: usize,
    /// Requests one connection may have in flight; the broker stops reading from a
    /// connection that reaches it until a response is written.
    pub max_in_flight_per_connection: usize,
    /// How connections are run: `multi_thread` (one work-stealing Tokio runtime) or
    /// `thread_per_core` (one single-threaded runtime per core, each pinned to its
    /// core; a connection stays on the runtime it was handed to). See ARCHITECTURE.md
    /// §Threads for the measured difference.
    pub runtime: RuntimeSetting,
    /// Connection runtimes in `thread_per_core` mode; 0 = one per available CPU.
    pub runtime_threads: usize,
    /// Let the kernel back the `weir-broker` process's memory with transparent huge
    /// pages (its system policy applies). Off by default: a first touch of a 2 MiB
    /// page is one page fault that zeroes 2 MiB on the touching thread
    /// (`crate::huge_pages`). Read by the binary only; an embedded broker leaves the
    /// process's setting alone.
    pub transparent_huge_pages: bool,
    /// Close a connection that sent nothing (not even a heartbeat) for this long.
    pub idle_timeout_ms: u64,
    /// Close a connection whose peer takes longer than this to send the rest of a frame
    /// it started, or to accept a response.
    pub io_timeout_ms: u64,
    /// Longest a produce waits for its ack level when the request gives no timeout.
    pub produce_timeout_ms: u32,
    /// Longest long-poll a fetch may ask for.
    pub max_fetch_wait_ms: u32,
    /// Defaults for new topics.
    pub default_shards: u32,
    pub default_flush_interval_ms: u32,
    pub default_segment_bytes: u64,
    pub default_retention_ms: u64,
    pub default_retention_bytes: u64,
    pub default_max_message_bytes: u32,
    /// Sparse offset index: one entry per this many log bytes.
    pub index_interval_bytes: u32,
    /// A topic shard's active segment file gets real blocks in steps of this many
    /// bytes (at most the topic's `segment_bytes`) instead of all at once.
    pub segment_preallocate_bytes: u64,
    /// Write-behind of topic shards: start write-back of every this many appended
    /// bytes (`sync_file_range`, on a storage worker), so interval and durable flushes
    /// find little dirty data; 0 = off. On by default since session 19, adaptive
    /// (`flush_write_behind_max_bytes_per_second`; BENCHMARKS.md, "Session 19").
    pub flush_write_behind_bytes: u64,
    /// Write-behind lets appended bytes go by while the broker's process appends
    /// faster than this (all its logs together, measured over the second half of each
    /// write-behind step), in a burst or steadily: that write-back is left to the
    /// flushes and the page-cache window. 0 = no limit.
    pub flush_write_behind_max_bytes_per_second: u64,
    /// Most bytes a topic shard's writer hands the kernel in one `pwritev`; larger
    /// appends take several calls. 0 = one call per run of batches. Bounded, the page
    /// cache gets small folios, which a VM that returns free memory to its host
    /// allocates many times faster ([`crate::storage::LogConfig::write_call_bytes`]).
    pub segment_write_call_bytes: usize,
    /// Per topic shard: appended bytes more than this far behind the newest are
    /// written back and dropped from the page cache; 0 = off. Keeps a busy shard's
    /// page cache bounded and lets new appends reuse its pages, which on a VM that
    /// returns free memory to its host is many times faster than new memory
    /// ([`crate::storage::LogConfig::page_cache_window_bytes`]).
    pub page_cache_window_bytes: u64,
    /// Appends waiting in each priority class's lane of one shard writer.
    pub shard_queue_depth: usize,
    /// Most bytes a shard writer writes (and flushes) as one group; smaller groups let
    /// P0 appends overtake queued lower-class ones sooner, larger ones flush less often.
    pub shard_group_bytes_max: usize,
    /// Most µs a shard writer, and a fetch waiting for new records, keep looking for
    /// work before they sleep; 0 = sleep at once. Spinning spares the thread wake-up
    /// on the path of each message at the price of a busy core; the budget shrinks
    /// while the spinning thread loses its core to others (`crate::spin`).
    pub spin_wait_us: u32,
    /// Largest append a connection writes into a shard's log itself, in place of
    /// handing it to the shard's writer thread, while that writer has nothing queued
    /// and the append needs no flush; 0 = never. Spares two thread wake-ups per small
    /// produce (`weir_shard_in_place_appends_total`).
    pub in_place_append_bytes: usize,
    /// Consumer groups: default and bounds of session timeouts.
    pub group_min_session_timeout_ms: u32,
    pub group_max_session_timeout_ms: u32,
    /// Most topics a broker holds.
    pub max_topics: usize,
    /// Most shards one topic may have.
    pub max_shards_per_topic: u32,
    /// Most shards of all topics together. Each shard is an OS thread (its writer)
    /// with a preallocated segment, so this bounds threads and disk, which
    /// `max_topics × max_shards_per_topic` does not; see [`DEFAULT_MAX_SHARDS`].
    pub max_shards: u32,
    /// Most threads of the storage engine's background pool (flushes, segment
    /// preparation, retention deletions) shared by every shard; see
    /// `storage/workers.rs`.
    pub storage_threads: usize,
    /// Upper priority bound of classes P0, P1 and P2 (P3 takes the rest); see
    /// `weir_protocol::classes`.
    pub priority_class_bounds: Vec<u8>,
    /// Weighted-fair-queuing weights of P0..P3.
    pub priority_class_weights: Vec<u32>,
    /// Aging thresholds of P0..P3 in milliseconds: work that has waited this long at
    /// the head of its class's lane is served before fresher work of any class.
    pub priority_aging_ms: Vec<u64>,
    /// Flow control (see `flow/` and ARCHITECTURE.md "Flow control"): produce bytes
    /// held broker-wide between decode and ack; over it, produces get THROTTLED.
    pub flow_memory_bytes: u64,
    /// Unanswered request bytes per connection; over it the broker stops reading that
    /// connection until responses are written.
    pub flow_connection_in_flight_bytes: u64,
    /// Bytes of large frames (over 64 KiB) still arriving, broker-wide; connections
    /// wait (are not read) for their share.
    pub flow_receive_bytes: u64,
    /// SO_SNDBUF of client sockets (0 = the OS default, auto-tuned). Bounds how many
    /// responses a client that does not read can leave in the kernel before the
    /// broker's writer stalls and, after `io_timeout_ms`, closes the connection.
    pub flow_socket_send_buffer_bytes: u32,
    /// Load reference: this many produce bytes queued and not yet acked is 100 % load.
    pub flow_load_pending_bytes: u64,
    /// Load reference: this average produce ack latency is 100 % load.
    pub flow_load_latency_target_ms: u64,
    /// Shed low-priority produces when the load crosses the thresholds below.
    pub shed_enabled: bool,
    /// Load (percent) at which P1, P2, P3 start shedding.
    pub shed_thresholds_percent: Vec<u32>,
    /// Share (percent) of P1, P2, P3 produces shed while over the threshold.
    pub shed_shares_percent: Vec<u32>,
    /// Keep shedding this long after the load was last over the threshold.
    pub shed_cooldown_ms: u64,
    /// Then reduce the shed share linearly to zero over this long.
    pub shed_recovery_ms: u64,
    /// Default quota of every client id without its own entry (0 = no limit).
    pub quota_default_produce_bytes_per_s: u64,
    pub quota_default_produce_burst_bytes: u64,
    pub quota_default_fetch_bytes_per_s: u64,
    pub quota_default_fetch_burst_bytes: u64,
    pub quota_default_max_connections: u32,
    pub quota_default_max_queued_bytes: u64,
    /// Longest a fetch is delayed for its fetch quota; longer waits get THROTTLED.
    pub quota_max_delay_ms: u64,
    /// Per-client quotas (`[[quota_clients]]` tables; config file only).
    pub quota_clients: Vec<QuotaClientConfig>,
    /// Queue mode: lease length when a QueueFetch gives none.
    pub queue_default_lease_ms: u32,
    /// Queue mode: longest lease a QueueFetch or ExtendLease may ask for.
    pub queue_max_lease_ms: u32,
    /// Queue mode: most offsets between a shard's ack floor and the next record to
    /// read (leased, waiting for a retry, or done above the floor). When full, no new
    /// record of that shard is leased until the floor moves. Bounds memory per shard.
    pub queue_max_unacked_per_shard: u32,
    /// Queue mode: most queues (group, topic) one broker serves.
    pub queue_max_queues: usize,
    /// Queue mode: requests waiting for one queue's task.
    pub queue_command_depth: usize,
    /// Queue mode: most records one QueueFetch returns.
    pub queue_max_fetch_messages: u32,
    /// Retry policy per class P0..P3: deliveries in total before dead-lettering.
    pub retry_max_attempts: Vec<u32>,
    /// Retry policy per class: `fixed`, `linear` or `exponential`.
    pub retry_backoff: Vec<String>,
    /// Retry policy per class: base delay.
    pub retry_base_delay_ms: Vec<u64>,
    /// Retry policy per class: longest delay.
    pub retry_max_delay_ms: Vec<u64>,
    /// Retry policy per class: ± jitter in percent of the delay.
    pub retry_jitter_pct: Vec<u32>,
    /// Dead-letter topic of topic T: T followed by this suffix.
    pub dlq_suffix: String,
    /// Retention of dead-letter topics created by the broker.
    pub dlq_retention_ms: u64,
    /// Circuit breaker of each queue: on or off.
    pub queue_breaker_enabled: bool,
    /// Circuit breaker: sliding window of outcomes.
    pub queue_breaker_window_ms: u64,
    /// Circuit breaker: opens when failures exceed this percentage of the window...
    pub queue_breaker_failure_pct: u32,
    /// ...with at least this many outcomes; also the half-open sample size.
    pub queue_breaker_min_samples: u32,
    /// Circuit breaker: how long it stays open (the SDK's `BreakerConfig::open_for`;
    /// `queue_breaker_open_ms` is the deprecated name).
    #[serde(alias = "queue_breaker_open_ms")]
    pub queue_breaker_open_for_ms: u64,
    /// Circuit breaker: percentage of requested records leased while half-open.
    pub queue_breaker_half_open_pct: u32,
    /// Circuit breaker: closes when this percentage of half-open outcomes succeeded.
    pub queue_breaker_close_pct: u32,
    /// Queue state log: start a new generation with a snapshot of every queue (and
    /// delete the older ones) once the current one holds this many records.
    pub queue_state_compact_records: u64,
    /// Health: warning and critical thresholds of the deepest backlog (records waiting
    /// in shard writer lanes, or a consumer group's lag on one shard).
    pub health_queue_depth_records: Vec<u64>,
    /// Health: warning and critical thresholds of the average produce latency over
    /// the last second.
    pub health_delay_ms: Vec<u64>,
    /// Health: warning and critical thresholds of the share of requests that failed
    /// over `health_error_window_ms`.
    pub health_error_rate_permille: Vec<u64>,
    /// Health: the window the error rate is measured over ("sustained").
    pub health_error_window_ms: u64,
    /// Health: warning and critical thresholds of resource use (memory budget, disk,
    /// open files), in percent.
    pub health_resource_percent: Vec<u64>,
    /// Alerts: POST each alert transition as JSON to this `http://` URL ("" = none).
    pub alert_webhook_url: String,
    /// Alerts: longest a webhook POST may take.
    pub alert_webhook_timeout_ms: u64,
    /// Alerts: a dead-letter alert resolves once no record was dead-lettered for this
    /// long.
    pub alert_dead_letter_hold_ms: u64,
    /// Alerts: a consumer group's lag that grew at every check for this long fires.
    pub alert_lag_growing_ms: u64,
    /// Alerts: P0 produce latency target (99th percentile over the last 10 s).
    pub alert_p0_latency_ms: u64,
    /// Alerts: fires when the data directory's disk has less free space (percent).
    pub alert_disk_free_percent: u64,
    /// Requests slower than this are logged (warn) and counted; 0 = never.
    pub slow_request_ms: u64,
    /// This node's id in a cluster (1 and up); 0 = a single-node broker.
    pub node_id: u64,
    /// Every node of the cluster, this one included, as `ID=HOST:PORT` (protocol
    /// addresses). Empty for a single-node broker.
    pub peers: Vec<String>,
    /// This node joins a running cluster instead of forming one from `peers`: it waits
    /// until `weir cluster add-node` on the cluster adds it. `peers` then names this
    /// node and at least one node of the cluster (the rest is learned from it).
    pub cluster_join: bool,
    /// How often the controller's consensus engine sends heartbeats.
    pub cluster_heartbeat_ms: u64,
    /// A follower that hears no heartbeat for this long (up to twice it, randomised)
    /// starts an election.
    pub cluster_election_timeout_ms: u64,
    /// The controller counts a node dead when it has not acknowledged a heartbeat for
    /// this long, and moves the primaries it held to in-sync mirrors.
    pub node_timeout_ms: u64,
    /// A primary removes a mirror from the in-sync set when the mirror has not held
    /// everything the primary holds for this long.
    pub mirror_lag_max_ms: u64,
    /// Most bytes one MirrorFetch returns.
    pub mirror_fetch_max_bytes: u32,
    /// Lagging copies of a node that catch up at once (busiest shards first).
    pub mirror_catchup_parallel: usize,
    /// Copies per shard when CreateTopic asks for 0 (capped at the cluster's nodes).
    pub default_replicas: u8,
    /// In-sync copies a `mirrored` produce needs when CreateTopic asks for 0 (capped
    /// at the topic's replicas).
    pub default_min_in_sync: u8,
    /// Fault injection for tests: while a file exists at this path, the node acts as
    /// cut off from every other node (its calls to them fail, theirs to it are
    /// refused) while clients still reach it. Empty = off.
    pub cluster_partition_file: String,
    /// PEM CA certificate(s) that sign the other nodes' certificates. A cluster node
    /// whose protocol port speaks TLS (`tls_cert`) speaks TLS on its links to the
    /// other nodes too, and trusts only peers whose certificate chains to this CA;
    /// required then, refused otherwise.
    pub cluster_tls_ca: PathBuf,
    /// TLS on the protocol port (`security/tls.rs`): PEM certificate chain; empty =
    /// plain TCP. Reloaded from disk when it changes.
    pub tls_cert: PathBuf,
    /// PEM private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: PathBuf,
    /// PEM CA certificates that sign client certificates; when set every client must
    /// present one (mutual TLS), and its subject's common name is its principal.
    pub tls_client_ca: PathBuf,
    /// Oldest TLS version offered: `"1.3"` (default) or `"1.2"`.
    pub tls_min_version: TlsVersion,
    /// Serve the HTTP port over TLS too, with `tls_cert` and `tls_key` (reloaded the
    /// same way); no client certificate is asked for there. Needs `tls_cert`.
    pub http_tls: bool,
    /// `off` (default): nobody authenticates and nothing is checked. `required`:
    /// every connection authenticates (SCRAM-SHA-256, an API key, or a client
    /// certificate) and every request is checked against the ACLs; audit log on.
    pub auth: AuthSetting,
    /// Encryption at rest of topic data (`storage/at_rest.rs`, STORAGE.md §Sealed
    /// batches): AES-256-GCM keys as `ID=file:PATH` or `ID=env:VARIABLE`, each holding
    /// 64 hex digits. Keys stay listed while data sealed with them is kept.
    pub at_rest_keys: Vec<String>,
    /// Id of the key new topic batches are sealed with; 0 (default) = written plain.
    pub at_rest_write_key: u32,
    /// Deletion by key (DeleteKey): how often each shard compacts the records deleted
    /// since, rewriting the segments that hold them; the bound on how long their
    /// bytes stay on disk after a DeleteKey is answered.
    pub delete_key_compact_ms: u64,
    /// How often each shard applies its topic's retention (deletes closed segments
    /// past `retention_ms` or `retention_bytes`).
    pub retention_check_ms: u64,
    /// Automatic sharding (`autoshard.rs`): split a topic whose load (with
    /// `auto_reshard_mode = predictive`, its forecast) nears its shards' capacity,
    /// merge one that stays cold. Off by default; single node only.
    pub auto_reshard: bool,
    /// `predictive` (act on the larger of the ingest rate now and the upper bound of
    /// its forecast) or `reactive` (the rate now only).
    pub auto_reshard_mode: AutoReshardMode,
    /// Records per second one shard is planned to take: a topic splits past 80 % of
    /// its shards' sum, and is sized to run at 60 %.
    pub shard_capacity_records_per_s: u64,
    /// Least time between two automatic reshards of one topic (also after an
    /// operator's), so decisions never flap.
    pub auto_reshard_interval_s: u64,
    /// How long a topic must stay under 30 % of the capacity of the shards a merge
    /// would leave before it merges.
    pub auto_reshard_cold_s: u64,
    /// Most shards automatic sharding gives a topic.
    pub auto_reshard_max_shards: u32,
    /// Where the broker puts the keyless records of a Produce sent to shard
    /// `ANY_SHARD` (PROTOCOL.md, "Key → shard"): `load` scores the topic's shards by
    /// lane wait, ingest rate and forecast with two random choices
    /// (`weir_protocol::routing`); `round_robin` takes them in turn.
    pub keyless_placement: KeylessPlacement,
}

/// The `keyless_placement` setting.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum KeylessPlacement {
    #[default]
    Load,
    RoundRobin,
}

/// The `auto_reshard_mode` setting.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AutoReshardMode {
    #[default]
    Predictive,
    Reactive,
}

/// The `auth` setting.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthSetting {
    Off,
    Required,
}

/// The `tls_min_version` setting.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

/// One `[[quota_clients]]` table: a client id's quota. Omitted limits are 0 (none).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaClientConfig {
    pub client_id: String,
    pub produce_bytes_per_s: u64,
    pub produce_burst_bytes: u64,
    pub fetch_bytes_per_s: u64,
    pub fetch_burst_bytes: u64,
    pub max_connections: u32,
    pub max_queued_bytes: u64,
}

/// The `runtime` setting: how the data plane's connections are scheduled.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeSetting {
    /// One multi-threaded, work-stealing Tokio runtime runs everything.
    MultiThread,
    /// One current-thread runtime per core runs connections; control tasks (accept,
    /// HTTP, groups, queues) stay on the runtime that started the broker.
    ThreadPerCore,
}

impl Config {
    /// Connection runtimes to start in `thread_per_core` mode.
    pub fn connection_runtimes(&self) -> usize {
        if self.runtime_threads > 0 {
            return self.runtime_threads;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Durability as written in config files: `none`, `interval` or `always`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DurabilitySetting {
    None,
    Interval,
    Always,
}

impl From<DurabilitySetting> for Durability {
    fn from(d: DurabilitySetting) -> Self {
        match d {
            DurabilitySetting::None => Durability::None,
            DurabilitySetting::Interval => Durability::Interval,
            DurabilitySetting::Always => Durability::Always,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7700".parse().expect("addr"),
            http: "127.0.0.1:7701".parse().expect("addr"),
            data_dir: PathBuf::from("./weir-data"),
            max_frame_bytes: weir_protocol::frame::DEFAULT_MAX_FRAME_BYTES,
            max_connections: 10_000,
            runtime: RuntimeSetting::MultiThread,
            runtime_threads: 0,
            transparent_huge_pages: false,
            max_in_flight_per_connection: 64,
            idle_timeout_ms: 10 * 60 * 1000,
            io_timeout_ms: 30_000,
            produce_timeout_ms: 30_000,
            max_fetch_wait_ms: 30_000,
            default_shards: 1,
            default_flush_interval_ms: 1000,
            default_segment_bytes: 256 * 1024 * 1024,
            default_retention_ms: 7 * 24 * 3600 * 1000,
            default_retention_bytes: 0,
            default_max_message_bytes: 8 * 1024 * 1024,
            index_interval_bytes: 4096,
            segment_preallocate_bytes: crate::storage::DEFAULT_PREALLOCATE_BYTES,
            flush_write_behind_bytes: 8 * 1024 * 1024,
            flush_write_behind_max_bytes_per_second: 256 * 1024 * 1024,
            segment_write_call_bytes: crate::storage::DEFAULT_WRITE_CALL_BYTES,
            page_cache_window_bytes: crate::storage::DEFAULT_PAGE_CACHE_WINDOW_BYTES,
            shard_queue_depth: 1024,
            shard_group_bytes_max: crate::shard::writer::DEFAULT_GROUP_BYTES_MAX,
            spin_wait_us: 0,
            in_place_append_bytes: crate::shard::writer::DEFAULT_IN_PLACE_BYTES_MAX,
            group_min_session_timeout_ms: 1000,
            group_max_session_timeout_ms: 300_000,
            max_topics: 10_000,
            max_shards_per_topic: 1024,
            max_shards: DEFAULT_MAX_SHARDS,
            storage_threads: crate::storage::workers::DEFAULT_MAX_THREADS,
            priority_class_bounds: DEFAULT_CLASS_BOUNDS.to_vec(),
            priority_class_weights: DEFAULT_CLASS_WEIGHTS.to_vec(),
            priority_aging_ms: DEFAULT_AGING.iter().map(|d| d.as_millis() as u64).collect(),
            flow_memory_bytes: 256 * 1024 * 1024,
            flow_connection_in_flight_bytes: 64 * 1024 * 1024,
            flow_receive_bytes: 256 * 1024 * 1024,
            flow_socket_send_buffer_bytes: 0,
            flow_load_pending_bytes: 64 * 1024 * 1024,
            flow_load_latency_target_ms: 1000,
            shed_enabled: true,
            shed_thresholds_percent: vec![80, 85, 90],
            shed_shares_percent: vec![25, 50, 75],
            shed_cooldown_ms: 5000,
            shed_recovery_ms: 10_000,
            quota_default_produce_bytes_per_s: 0,
            quota_default_produce_burst_bytes: 0,
            quota_default_fetch_bytes_per_s: 0,
            quota_default_fetch_burst_bytes: 0,
            quota_default_max_connections: 0,
            quota_default_max_queued_bytes: 0,
            quota_max_delay_ms: 1000,
            quota_clients: Vec::new(),
            queue_default_lease_ms: 30_000,
            queue_max_lease_ms: 12 * 3600 * 1000,
            queue_max_unacked_per_shard: 10_000,
            queue_max_queues: 1000,
            queue_command_depth: 1024,
            queue_max_fetch_messages: 1000,
            // P0 critical, P1 standard, P2 and P3 batch.
            retry_max_attempts: vec![5, 3, 2, 2],
            retry_backoff: ["exponential", "linear", "fixed", "fixed"]
                .map(String::from)
                .to_vec(),
            retry_base_delay_ms: vec![500, 5000, 30_000, 30_000],
            retry_max_delay_ms: vec![5000, 10_000, 30_000, 30_000],
            retry_jitter_pct: vec![10, 10, 10, 10],
            dlq_suffix: ".dlq".to_string(),
            dlq_retention_ms: 7 * 24 * 3600 * 1000,
            queue_breaker_enabled: true,
            queue_breaker_window_ms: 60_000,
            queue_breaker_failure_pct: 50,
            queue_breaker_min_samples: 20,
            queue_breaker_open_for_ms: 30_000,
            queue_breaker_half_open_pct: 10,
            queue_breaker_close_pct: 90,
            queue_state_compact_records: 1_000_000,
            // Seed 002 §5: warning at > 5k messages, > 500 ms, > 0.1 %, > 80 %;
            // critical at > 10k, > 1 s, > 1 %, > 90 %.
            health_queue_depth_records: vec![5000, 10_000],
            health_delay_ms: vec![500, 1000],
            health_error_rate_permille: vec![1, 10],
            health_error_window_ms: 60_000,
            health_resource_percent: vec![80, 90],
            alert_webhook_url: String::new(),
            alert_webhook_timeout_ms: 2000,
            alert_dead_letter_hold_ms: 60_000,
            alert_lag_growing_ms: 300_000,
            alert_p0_latency_ms: 100,
            alert_disk_free_percent: 10,
            slow_request_ms: 1000,
            node_id: 0,
            peers: Vec::new(),
            cluster_join: false,
            cluster_heartbeat_ms: 50,
            cluster_election_timeout_ms: 300,
            node_timeout_ms: 600,
            mirror_lag_max_ms: 2_000,
            mirror_fetch_max_bytes: 4 << 20,
            mirror_catchup_parallel: 2,
            default_replicas: 3,
            default_min_in_sync: 2,
            cluster_partition_file: String::new(),
            cluster_tls_ca: PathBuf::new(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            tls_client_ca: PathBuf::new(),
            tls_min_version: TlsVersion::V1_3,
            http_tls: false,
            auth: AuthSetting::Off,
            at_rest_keys: Vec::new(),
            at_rest_write_key: 0,
            delete_key_compact_ms: 60_000,
            retention_check_ms: 30_000,
            auto_reshard: false,
            auto_reshard_mode: AutoReshardMode::Predictive,
            keyless_placement: KeylessPlacement::Load,
            shard_capacity_records_per_s: 100_000,
            auto_reshard_interval_s: 300,
            auto_reshard_cold_s: 600,
            auto_reshard_max_shards: 64,
        }
    }
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, overridden by the TOML file at `file` (if any), then by `WEIR_*`
    /// variables from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        for (old, new) in DEPRECATED_KEYS {
            if let Some(value) = table.remove(*old) {
                if table.contains_key(*new) {
                    return Err(ConfigError::Invalid(format!(
                        "{old} is the deprecated name of {new}: set only {new}"
                    )));
                }
                table.insert(new.to_string(), value);
            }
        }
        let known = toml::Table::try_from(Config::default())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        for (name, value) in env {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = current_key(&key.to_ascii_lowercase()).to_string();
            let Some(default) = known.get(&key) else {
                if !NOT_CONFIG_ENV.contains(&name.as_str())
                    && !name.starts_with(AT_REST_KEY_ENV_PREFIX)
                {
                    // A misspelt setting would otherwise be ignored without a word.
                    let hint = closest_key(&key, &known)
                        .map(|k| format!("; did you mean {ENV_PREFIX}{}?", k.to_ascii_uppercase()))
                        .unwrap_or_default();
                    tracing::warn!("{name} is not a Weir setting and is ignored{hint}");
                }
                continue;
            };
            let parsed = match default {
                toml::Value::Integer(_) => value
                    .parse::<i64>()
                    .map(toml::Value::Integer)
                    .map_err(|_| ConfigError::Invalid(format!("{name}={value}: not an integer")))?,
                toml::Value::Boolean(_) => value
                    .parse::<bool>()
                    .map(toml::Value::Boolean)
                    .map_err(|_| ConfigError::Invalid(format!("{name}={value}: not a boolean")))?,
                // Lists are written comma-separated: WEIR_PRIORITY_CLASS_WEIGHTS=8,4,2,1;
                // lists of words the same way: WEIR_RETRY_BACKOFF=fixed,linear,fixed,fixed.
                toml::Value::Array(items)
                    if key == "peers"
                        || key == "at_rest_keys"
                        || items
                            .first()
                            .is_some_and(|v| matches!(v, toml::Value::String(_))) =>
                {
                    toml::Value::Array(
                        value
                            .split(',')
                            .map(|v| toml::Value::String(v.trim().to_string()))
                            .collect(),
                    )
                }
                toml::Value::Array(_) => toml::Value::Array(
                    value
                        .split(',')
                        .map(|v| v.trim().parse::<i64>().map(toml::Value::Integer))
                        .collect::<Result<_, _>>()
                        .map_err(|_| {
                            ConfigError::Invalid(format!(
                                "{name}={value}: not a comma-separated list of integers"
                            ))
                        })?,
                ),
                _ => toml::Value::String(value),
            };
            table.insert(key, parsed);
        }
        let config: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// `at_rest_keys` parsed: `(id, source)` per entry, ids unique and at least 1.
    pub fn at_rest_key_sources(&self) -> Result<Vec<(u32, KeySource)>, String> {
        let mut out: Vec<(u32, KeySource)> = Vec::with_capacity(self.at_rest_keys.len());
        for entry in &self.at_rest_keys {
            let bad = || {
                format!("at_rest_keys entry {entry:?}: expected ID=file:PATH or ID=env:VARIABLE")
            };
            let (id, source) = entry.split_once('=').ok_or_else(bad)?;
            let id: u32 = id.trim().parse().map_err(|_| bad())?;
            if id == 0 {
                return Err(format!("at_rest_keys entry {entry:?}: key ids start at 1"));
            }
            let source = match source.split_once(':') {
                Some(("file", p)) if !p.is_empty() => KeySource::File(PathBuf::from(p)),
                Some(("env", v)) if !v.is_empty() => KeySource::Env(v.to_string()),
                _ => return Err(bad()),
            };
            if out.iter().any(|(i, _)| *i == id) {
                return Err(format!("at_rest_keys: key id {id} is listed twice"));
            }
            out.push((id, source));
        }
        Ok(out)
    }

    /// The at-rest keys, read from their files and variables; `None` when none is
    /// configured. A key that cannot be read stops the broker, naming it.
    pub fn load_at_rest(&self) -> Result<Option<AtRest>, String> {
        let sources = self.at_rest_key_sources()?;
        if sources.is_empty() {
            return Ok(None);
        }
        AtRest::load(&sources, self.at_rest_write_key).map(Some)
    }

    /// Checks ranges that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.max_frame_bytes < 1024 {
            return bad("max_frame_bytes must be at least 1024");
        }
        if self.default_max_message_bytes > self.max_frame_bytes {
            return bad("default_max_message_bytes must not exceed max_frame_bytes");
        }
        if self.max_in_flight_per_connection == 0 || self.max_connections == 0 {
            return bad("max_in_flight_per_connection and max_connections must be > 0");
        }
        if self.runtime_threads > 1024 {
            return bad("runtime_threads must be in 0..=1024");
        }
        let tls_cert = !self.tls_cert.as_os_str().is_empty();
        if tls_cert == self.tls_key.as_os_str().is_empty() {
            return bad("tls_cert and tls_key are set together or not at all");
        }
        if !tls_cert && !self.tls_client_ca.as_os_str().is_empty() {
            return bad("tls_client_ca needs tls_cert and tls_key");
        }
        if !tls_cert && self.http_tls {
            return bad("http_tls needs tls_cert and tls_key");
        }
        if self.shard_capacity_records_per_s == 0 {
            return bad("shard_capacity_records_per_s must be at least 1");
        }
        if self.auto_reshard_max_shards == 0
            || self.auto_reshard_max_shards > self.max_shards_per_topic
        {
            return bad("auto_reshard_max_shards must be in 1..=max_shards_per_topic");
        }
        if self.auto_reshard_interval_s == 0 {
            return bad("auto_reshard_interval_s must be at least 1");
        }
        if self.retention_check_ms < 100 {
            return bad("retention_check_ms must be at least 100");
        }
        if self.delete_key_compact_ms < 10 {
            return bad("delete_key_compact_ms must be at least 10");
        }
        let keys = self.at_rest_key_sources().map_err(ConfigError::Invalid)?;
        if self.at_rest_write_key != 0 && !keys.iter().any(|(id, _)| *id == self.at_rest_write_key)
        {
            return Err(ConfigError::Invalid(format!(
                "at_rest_write_key = {} names no key of at_rest_keys",
                self.at_rest_write_key
            )));
        }
        if self.default_segment_bytes < 64 * 1024
            || self.default_segment_bytes > LogConfig::SEGMENT_BYTES_MAX
        {
            // The same range CreateTopic accepts (`TopicRegistry::resolve`).
            return bad("default_segment_bytes must be in 65536..=4294967295");
        }
        if self.segment_preallocate_bytes < 64 * 1024
            || self.segment_preallocate_bytes > LogConfig::SEGMENT_BYTES_MAX
        {
            return bad("segment_preallocate_bytes must be in 65536..=4294967295");
        }
        if self.flush_write_behind_bytes != 0 && self.flush_write_behind_bytes < 64 * 1024 {
            return bad("flush_write_behind_bytes must be 0 (off) or at least 65536");
        }
        if self.segment_write_call_bytes != 0 && self.segment_write_call_bytes < 4096 {
            return bad("segment_write_call_bytes must be 0 (no bound) or at least 4096");
        }
        if self.page_cache_window_bytes != 0 && self.page_cache_window_bytes < 1024 * 1024 {
            return bad("page_cache_window_bytes must be 0 (off) or at least 1048576");
        }
        if self.index_interval_bytes < LogConfig::INDEX_INTERVAL_BYTES_MIN {
            // 0 would make every topic log refuse to open.
            return bad("index_interval_bytes must be at least 1024");
        }
        if self.default_segment_bytes < u64::from(self.default_max_message_bytes) {
            // Every CreateTopic with the defaults would be refused INVALID_CONFIG.
            return Err(ConfigError::Invalid(format!(
                "default_segment_bytes ({}) must be at least default_max_message_bytes ({})",
                self.default_segment_bytes, self.default_max_message_bytes
            )));
        }
        if self.default_shards == 0 || self.default_shards > self.max_shards_per_topic {
            return bad("default_shards must be in 1..=max_shards_per_topic");
        }
        if self.max_shards < self.default_shards || self.max_shards > MAX_SHARDS_LIMIT {
            return bad("max_shards must be in default_shards..=1000000");
        }
        if self.storage_threads == 0 || self.storage_threads > 1024 {
            return bad("storage_threads must be in 1..=1024");
        }
        if self.shard_queue_depth == 0 {
            return bad("shard_queue_depth must be > 0");
        }
        if self.shard_group_bytes_max < 4096 {
            return bad("shard_group_bytes_max must be at least 4096");
        }
        if self.spin_wait_us > SPIN_WAIT_US_MAX {
            return bad("spin_wait_us must be at most 10000");
        }
        if self.in_place_append_bytes > IN_PLACE_APPEND_BYTES_MAX {
            return bad("in_place_append_bytes must be at most 1048576");
        }
        if self.group_min_session_timeout_ms > self.group_max_session_timeout_ms {
            return bad("group_min_session_timeout_ms exceeds group_max_session_timeout_ms");
        }
        self.class_map()?;
        if self.priority_class_weights.len() != CLASS_COUNT
            || self
                .priority_class_weights
                .iter()
                .any(|&w| w == 0 || w > 1000)
        {
            return bad("priority_class_weights must be 4 weights in 1..=1000");
        }
        self.retry_policies()?;
        if self.queue_default_lease_ms == 0 || self.queue_default_lease_ms > self.queue_max_lease_ms
        {
            return bad("queue_default_lease_ms must be in 1..=queue_max_lease_ms");
        }
        if self.queue_max_unacked_per_shard == 0
            || self.queue_max_queues == 0
            || self.queue_command_depth == 0
            || self.queue_max_fetch_messages == 0
        {
            return bad("queue_max_unacked_per_shard, queue_max_queues, queue_command_depth and queue_max_fetch_messages must be > 0");
        }
        if crate::names::valid_name(&format!("x{}", self.dlq_suffix)).not()
            || self.dlq_suffix.is_empty()
        {
            return bad("dlq_suffix must be non-empty and use only [A-Za-z0-9._-]");
        }
        if self.queue_breaker_window_ms < 10
            || self.queue_breaker_failure_pct > 100
            || self.queue_breaker_half_open_pct == 0
            || self.queue_breaker_half_open_pct > 100
            || self.queue_breaker_close_pct > 100
            || self.queue_breaker_min_samples == 0
        {
            return bad("queue_breaker_*: window_ms >= 10, percentages in 0..=100 (half_open_pct 1..=100), min_samples > 0");
        }
        if self.queue_state_compact_records < 10 {
            return bad("queue_state_compact_records must be at least 10");
        }
        if self.priority_aging_ms.len() != CLASS_COUNT
            || self
                .priority_aging_ms
                .iter()
                .any(|&a| a == 0 || a > 3_600_000)
        {
            return bad("priority_aging_ms must be 4 durations in 1..=3600000");
        }
        self.validate_flow()?;
        self.validate_cluster()?;
        self.validate_observe()
    }

    /// Whether this broker is a node of a cluster.
    pub fn is_cluster(&self) -> bool {
        self.node_id != 0 || !self.peers.is_empty()
    }

    /// The `peers` setting as node id → protocol address.
    pub fn cluster_peers(&self) -> Result<std::collections::BTreeMap<u64, String>, ConfigError> {
        let bad = |m: String| ConfigError::Invalid(m);
        let mut out = std::collections::BTreeMap::new();
        for p in &self.peers {
            let (id, addr) = p
                .split_once('=')
                .ok_or_else(|| bad(format!("peers entry {p:?}: write ID=HOST:PORT")))?;
            let id: u64 =
                id.trim().parse().ok().filter(|&i| i > 0).ok_or_else(|| {
                    bad(format!("peers entry {p:?}: the id must be a number ≥ 1"))
                })?;
            let addr = addr.trim();
            if addr
                .rsplit_once(':')
                .and_then(|(_, port)| port.parse::<u16>().ok())
                .is_none()
            {
                return Err(bad(format!(
                    "peers entry {p:?}: the address must be HOST:PORT"
                )));
            }
            if out.insert(id, addr.to_string()).is_some() {
                return Err(bad(format!("peers names node {id} twice")));
            }
        }
        Ok(out)
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.default_replicas == 0 || self.default_min_in_sync == 0 {
            return bad("default_replicas and default_min_in_sync must be at least 1");
        }
        if !self.is_cluster() {
            return Ok(());
        }
        if self.mirror_fetch_max_bytes < 65_536
            || self.mirror_fetch_max_bytes > self.max_frame_bytes
        {
            return bad("mirror_fetch_max_bytes must be in 65536..=max_frame_bytes");
        }
        if self.node_id == 0 {
            return bad("peers is set but node_id is not: give --node-id (1 and up)");
        }
        let peers = self.cluster_peers()?;
        if !peers.contains_key(&self.node_id) {
            return Err(ConfigError::Invalid(format!(
                "peers must name this node too (node_id {}), with the address other nodes reach it at",
                self.node_id
            )));
        }
        if !(10..=10_000).contains(&self.cluster_heartbeat_ms) {
            return bad("cluster_heartbeat_ms must be in 10..=10000");
        }
        if self.cluster_election_timeout_ms <= 2 * self.cluster_heartbeat_ms {
            return bad("cluster_election_timeout_ms must be more than 2 × cluster_heartbeat_ms");
        }
        if self.node_timeout_ms < 2 * self.cluster_heartbeat_ms {
            return bad("node_timeout_ms must be at least 2 × cluster_heartbeat_ms");
        }
        if !(1..=1024).contains(&self.mirror_catchup_parallel) {
            return bad("mirror_catchup_parallel must be in 1..=1024");
        }
        if self.mirror_lag_max_ms < 100 {
            return bad("mirror_lag_max_ms must be at least 100");
        }
        let tls = !self.tls_cert.as_os_str().is_empty();
        let ca = !self.cluster_tls_ca.as_os_str().is_empty();
        if tls && !ca {
            return bad(
                "a cluster node whose protocol port speaks TLS (tls_cert) needs cluster_tls_ca: \
                 the CA that signs the other nodes' certificates, checked on every link between nodes",
            );
        }
        if ca && !tls {
            return bad("cluster_tls_ca needs tls_cert and tls_key (links between nodes speak TLS only when the protocol port does)");
        }
        Ok(())
    }

    fn validate_observe(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        for (name, pair) in [
            (
                "health_queue_depth_records",
                &self.health_queue_depth_records,
            ),
            ("health_delay_ms", &self.health_delay_ms),
            (
                "health_error_rate_permille",
                &self.health_error_rate_permille,
            ),
            ("health_resource_percent", &self.health_resource_percent),
        ] {
            if pair.len() != 2 || pair[0] > pair[1] {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be [warning, critical] with warning <= critical"
                )));
            }
        }
        if self.health_error_rate_permille[1] > 1000 || self.health_resource_percent[1] > 100 {
            return bad("health_error_rate_permille must be at most 1000 and health_resource_percent at most 100");
        }
        if !(1000..=3_600_000).contains(&self.health_error_window_ms) {
            return bad("health_error_window_ms must be in 1000..=3600000");
        }
        if !self.alert_webhook_url.is_empty() && !self.alert_webhook_url.starts_with("http://") {
            return bad("alert_webhook_url must be empty or an http:// URL");
        }
        if !(1..=60_000).contains(&self.alert_webhook_timeout_ms) {
            return bad("alert_webhook_timeout_ms must be in 1..=60000");
        }
        if self.alert_disk_free_percent > 100 {
            return bad("alert_disk_free_percent must be at most 100");
        }
        Ok(())
    }

    fn validate_flow(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.flow_memory_bytes < 1024 * 1024 {
            return bad("flow_memory_bytes must be at least 1048576");
        }
        if self.flow_receive_bytes < 1024 * 1024 {
            // A frame larger than the budget takes all of it, so any size works; tiny
            // ones would only serialise every large frame.
            return bad("flow_receive_bytes must be at least 1048576");
        }
        if self.flow_connection_in_flight_bytes < 1024 {
            return bad("flow_connection_in_flight_bytes must be at least 1024");
        }
        if self.flow_socket_send_buffer_bytes != 0
            && !(4096..=64 * 1024 * 1024).contains(&self.flow_socket_send_buffer_bytes)
        {
            return bad("flow_socket_send_buffer_bytes must be 0 or in 4096..=67108864");
        }
        if self.flow_load_pending_bytes == 0 || self.flow_load_latency_target_ms == 0 {
            return bad("flow_load_pending_bytes and flow_load_latency_target_ms must be > 0");
        }
        let t = &self.shed_thresholds_percent;
        if t.len() != CLASS_COUNT - 1
            || t.iter().any(|&p| p == 0 || p > 1000)
            || t[0] > t[1]
            || t[1] > t[2]
        {
            return bad(
                "shed_thresholds_percent must be 3 non-decreasing values in 1..=1000 (P1, P2, P3)",
            );
        }
        let s = &self.shed_shares_percent;
        if s.len() != CLASS_COUNT - 1 || s.iter().any(|&p| p > 100) {
            return bad("shed_shares_percent must be 3 values in 0..=100 (P1, P2, P3)");
        }
        if self.shed_cooldown_ms > 3_600_000 || self.shed_recovery_ms > 3_600_000 {
            return bad("shed_cooldown_ms and shed_recovery_ms must be at most 3600000");
        }
        if self.quota_max_delay_ms > 60_000 {
            return bad("quota_max_delay_ms must be at most 60000");
        }
        let mut seen = std::collections::HashSet::new();
        for q in &self.quota_clients {
            if q.client_id.is_empty() || q.client_id.len() > 255 {
                return bad("quota_clients: client_id must be 1..=255 bytes (the default quota is quota_default_*)");
            }
            if !seen.insert(q.client_id.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "quota_clients: client_id {:?} appears twice",
                    q.client_id
                )));
            }
        }
        Ok(())
    }

    /// The default quota from the `quota_default_*` keys.
    pub fn default_quota(&self) -> Quota {
        Quota {
            produce_bytes_per_s: self.quota_default_produce_bytes_per_s,
            produce_burst_bytes: self.quota_default_produce_burst_bytes,
            fetch_bytes_per_s: self.quota_default_fetch_bytes_per_s,
            fetch_burst_bytes: self.quota_default_fetch_burst_bytes,
            max_connections: self.quota_default_max_connections,
            max_queued_bytes: self.quota_default_max_queued_bytes,
        }
    }

    /// The `[[quota_clients]]` entries.
    pub fn quota_entries(&self) -> Vec<QuotaEntry> {
        self.quota_clients
            .iter()
            .map(|q| QuotaEntry {
                client_id: q.client_id.clone(),
                quota: Quota {
                    produce_bytes_per_s: q.produce_bytes_per_s,
                    produce_burst_bytes: q.produce_burst_bytes,
                    fetch_bytes_per_s: q.fetch_bytes_per_s,
                    fetch_burst_bytes: q.fetch_burst_bytes,
                    max_connections: q.max_connections,
                    max_queued_bytes: q.max_queued_bytes,
                },
            })
            .collect()
    }

    /// The retry policies of P0..P3 these settings describe.
    pub fn retry_policies(&self) -> Result<[crate::retry::RetryPolicy; CLASS_COUNT], ConfigError> {
        let bad = |m: String| ConfigError::Invalid(m);
        if self.retry_max_attempts.len() != CLASS_COUNT
            || self.retry_backoff.len() != CLASS_COUNT
            || self.retry_base_delay_ms.len() != CLASS_COUNT
            || self.retry_max_delay_ms.len() != CLASS_COUNT
            || self.retry_jitter_pct.len() != CLASS_COUNT
        {
            return Err(bad(
                "retry_* settings must each hold 4 values (P0..P3)".into()
            ));
        }
        let mut out = Vec::with_capacity(CLASS_COUNT);
        for i in 0..CLASS_COUNT {
            let backoff =
                crate::retry::Backoff::parse(&self.retry_backoff[i]).ok_or_else(|| {
                    bad(format!(
                        "retry_backoff[{i}] = {:?}: use fixed, linear or exponential",
                        self.retry_backoff[i]
                    ))
                })?;
            let (attempts, base, max, jitter) = (
                self.retry_max_attempts[i],
                self.retry_base_delay_ms[i],
                self.retry_max_delay_ms[i],
                self.retry_jitter_pct[i],
            );
            if !(1..=1000).contains(&attempts) {
                return Err(bad(format!(
                    "retry_max_attempts[{i}] = {attempts}: use 1..=1000"
                )));
            }
            if base > max || max > 24 * 3600 * 1000 {
                return Err(bad(format!(
                    "retry delays of P{i}: base {base} ms must be <= max {max} ms <= 1 day"
                )));
            }
            if jitter > 100 {
                return Err(bad(format!(
                    "retry_jitter_pct[{i}] = {jitter}: use 0..=100"
                )));
            }
            out.push(crate::retry::RetryPolicy {
                max_attempts: attempts,
                backoff,
                base: std::time::Duration::from_millis(base),
                max: std::time::Duration::from_millis(max),
                jitter_pct: jitter,
            });
        }
        Ok(out.try_into().expect("4 policies"))
    }

    /// The priority → class map these settings describe.
    pub fn class_map(&self) -> Result<ClassMap, ConfigError> {
        let bounds: [u8; CLASS_COUNT - 1] = self
            .priority_class_bounds
            .as_slice()
            .try_into()
            .map_err(|_| {
                ConfigError::Invalid("priority_class_bounds must hold 3 bounds".to_string())
            })?;
        ClassMap::new(bounds)
            .map_err(|e| ConfigError::Invalid(format!("priority_class_bounds: {e}")))
    }

    /// The aging thresholds of P0..P3 (valid once [`Config::validate`] passed).
    pub fn class_aging(&self) -> [Duration; CLASS_COUNT] {
        let mut a = DEFAULT_AGING;
        for (d, s) in a.iter_mut().zip(&self.priority_aging_ms) {
            *d = Duration::from_millis(*s);
        }
        a
    }

    /// The WFQ weights of P0..P3 (valid once [`Config::validate`] passed).
    pub fn class_weights(&self) -> [u32; CLASS_COUNT] {
        let mut w = DEFAULT_CLASS_WEIGHTS;
        for (d, s) in w.iter_mut().zip(&self.priority_class_weights) {
            *d = *s;
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_settings_parse_from_env_lists_and_bad_ones_are_refused() {
        let env = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        let c = Config::load(None, env("WEIR_PRIORITY_CLASS_WEIGHTS", "16, 4,2,1")).unwrap();
        assert_eq!(c.class_weights(), [16, 4, 2, 1]);
        let c = Config::load(None, env("WEIR_PRIORITY_CLASS_BOUNDS", "1,3,9")).unwrap();
        assert_eq!(c.class_map().unwrap().class_of(2).index(), 1);
        for (k, v) in [
            ("WEIR_PRIORITY_CLASS_WEIGHTS", "8,4,2"),
            ("WEIR_PRIORITY_CLASS_WEIGHTS", "8,0,2,1"),
            ("WEIR_PRIORITY_CLASS_WEIGHTS", "8,x,2,1"),
            ("WEIR_PRIORITY_CLASS_BOUNDS", "5,3,8"),
            ("WEIR_PRIORITY_CLASS_BOUNDS", "2,5,8,9"),
        ] {
            assert!(Config::load(None, env(k, v)).is_err(), "{k}={v} accepted");
        }
    }

    #[test]
    fn flow_and_quota_settings_load_from_file_and_env_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.toml");
        std::fs::write(
            &path,
            "quota_default_max_connections = 50\n\
             [[quota_clients]]\nclient_id = \"billing\"\nproduce_bytes_per_s = 1000\n",
        )
        .unwrap();
        let env = vec![(
            "WEIR_SHED_THRESHOLDS_PERCENT".to_string(),
            "70,80,95".to_string(),
        )];
        let c = Config::load(Some(&path), env).unwrap();
        assert_eq!(c.default_quota().max_connections, 50);
        assert_eq!(c.quota_entries()[0].client_id, "billing");
        assert_eq!(c.quota_entries()[0].quota.produce_bytes_per_s, 1000);
        assert_eq!(c.shed_thresholds_percent, vec![70, 80, 95]);
        let c = Config::load(None, vec![("WEIR_SPIN_WAIT_US".into(), "50".into())]).unwrap();
        assert_eq!(c.spin_wait_us, 50);
        let c = Config::load(
            None,
            vec![("WEIR_SEGMENT_WRITE_CALL_BYTES".into(), "0".into())],
        );
        assert_eq!(c.unwrap().segment_write_call_bytes, 0);
        let env1 = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        for (k, v) in [
            ("WEIR_SHED_THRESHOLDS_PERCENT", "90,85,80"),
            ("WEIR_SHED_THRESHOLDS_PERCENT", "80,85"),
            ("WEIR_SHED_SHARES_PERCENT", "25,50,150"),
            ("WEIR_FLOW_MEMORY_BYTES", "100"),
            ("WEIR_FLOW_LOAD_PENDING_BYTES", "0"),
            ("WEIR_QUOTA_MAX_DELAY_MS", "600000"),
            ("WEIR_SPIN_WAIT_US", "10001"),
            ("WEIR_IN_PLACE_APPEND_BYTES", "1048577"),
            ("WEIR_SEGMENT_WRITE_CALL_BYTES", "4095"),
            ("WEIR_PAGE_CACHE_WINDOW_BYTES", "4096"),
        ] {
            assert!(Config::load(None, env1(k, v)).is_err(), "{k}={v} accepted");
        }
        std::fs::write(&path, "[[quota_clients]]\nclient_id = \"\"\n").unwrap();
        assert!(Config::load(Some(&path), vec![]).is_err());
    }

    #[test]
    fn retry_settings_parse_from_env_lists_and_bad_ones_are_refused() {
        use crate::retry::Backoff;
        let p = Config::default().retry_policies().unwrap();
        // The documented defaults: P0 critical, P1 standard, P2/P3 batch.
        assert_eq!((p[0].max_attempts, p[0].backoff), (5, Backoff::Exponential));
        assert_eq!(p[0].max.as_millis(), 5000);
        assert_eq!((p[1].max_attempts, p[1].backoff), (3, Backoff::Linear));
        assert_eq!(p[1].max.as_millis(), 10_000);
        assert_eq!((p[3].max_attempts, p[3].backoff), (2, Backoff::Fixed));
        assert_eq!(p[3].base.as_millis(), 30_000);
        let env = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        let c = Config::load(
            None,
            env("WEIR_RETRY_BACKOFF", "fixed, linear,fixed,exponential"),
        )
        .unwrap();
        assert_eq!(c.retry_policies().unwrap()[3].backoff, Backoff::Exponential);
        let c = Config::load(None, env("WEIR_QUEUE_BREAKER_ENABLED", "false")).unwrap();
        assert!(!c.queue_breaker_enabled);
        for (k, v) in [
            ("WEIR_RETRY_BACKOFF", "fixed,linear,fixed"),
            ("WEIR_RETRY_BACKOFF", "fixed,linear,fixed,cubic"),
            ("WEIR_RETRY_MAX_ATTEMPTS", "0,3,2,2"),
            ("WEIR_RETRY_BASE_DELAY_MS", "9000,5000,30000,30000"),
            ("WEIR_RETRY_JITTER_PCT", "10,10,10,101"),
            ("WEIR_QUEUE_MAX_UNACKED_PER_SHARD", "0"),
            ("WEIR_QUEUE_BREAKER_HALF_OPEN_PCT", "0"),
            ("WEIR_DLQ_SUFFIX", "/dlq"),
            ("WEIR_QUEUE_DEFAULT_LEASE_MS", "0"),
        ] {
            assert!(Config::load(None, env(k, v)).is_err(), "{k}={v} accepted");
        }
    }

    #[test]
    fn the_old_breaker_open_key_is_still_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.toml");
        std::fs::write(&path, "queue_breaker_open_ms = 800\n").unwrap();
        let c = Config::load(Some(&path), Vec::new()).unwrap();
        assert_eq!(c.queue_breaker_open_for_ms, 800);
        let old_env = vec![("WEIR_QUEUE_BREAKER_OPEN_MS".into(), "900".into())];
        let c = Config::load(Some(&path), old_env).unwrap();
        assert_eq!(c.queue_breaker_open_for_ms, 900, "env overrides the file");
        let new_env = vec![("WEIR_QUEUE_BREAKER_OPEN_FOR_MS".into(), "700".into())];
        assert_eq!(
            Config::load(Some(&path), new_env)
                .unwrap()
                .queue_breaker_open_for_ms,
            700
        );
        let c: Config = toml::from_str("queue_breaker_open_ms = 600").unwrap();
        assert_eq!(c.queue_breaker_open_for_ms, 600);
        std::fs::write(
            &path,
            "queue_breaker_open_ms = 800\nqueue_breaker_open_for_ms = 700\n",
        )
        .unwrap();
        assert!(
            Config::load(Some(&path), Vec::new()).is_err(),
            "both names set"
        );
    }

    #[test]
    fn env_overrides_file_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.toml");
        std::fs::write(&path, "max_connections = 5\ndata_dir = \"/tmp/x\"\n").unwrap();
        let env = vec![
            ("WEIR_MAX_CONNECTIONS".to_string(), "7".to_string()),
            ("WEIR_LISTEN".to_string(), "127.0.0.1:9000".to_string()),
            ("WEIR_LOG".to_string(), "debug".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ];
        let c = Config::load(Some(&path), env).unwrap();
        assert_eq!(c.max_connections, 7);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.max_frame_bytes, Config::default().max_frame_bytes);
    }

    #[test]
    fn a_misspelt_setting_gets_a_suggestion() {
        let known = toml::Table::try_from(Config::default()).unwrap();
        assert_eq!(
            closest_key("max_conections", &known),
            Some("max_connections")
        );
        assert_eq!(closest_key("io_timeout_sm", &known), Some("io_timeout_ms"));
        assert_eq!(closest_key("completely_unrelated_thing", &known), None);
    }

    #[test]
    fn segments_smaller_than_the_default_message_limit_are_refused_at_start() {
        let c = Config {
            default_segment_bytes: 1 << 20,
            default_max_message_bytes: 2 << 20,
            ..Config::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("default_segment_bytes"), "{e}");
        let ok = Config {
            default_segment_bytes: 2 << 20,
            ..c
        };
        ok.validate().unwrap();
    }

    #[test]
    fn bad_config_is_a_named_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.toml");
        std::fs::write(&path, "no_such_key = 1\n").unwrap();
        assert!(matches!(
            Config::load(Some(&path), vec![]),
            Err(ConfigError::Invalid(_))
        ));
        let env = vec![("WEIR_MAX_CONNECTIONS".into(), "lots".into())];
        assert!(Config::load(None, env).is_err());
        let env = vec![("WEIR_MAX_FRAME_BYTES".into(), "10".into())];
        assert!(Config::load(None, env).is_err());
    }

    #[test]
    fn a_tls_cluster_node_needs_the_cluster_ca_and_the_ca_needs_tls() {
        let env = |extra: &[(&str, &str)]| {
            let mut e: Vec<(String, String)> = vec![
                ("WEIR_NODE_ID".into(), "1".into()),
                (
                    "WEIR_PEERS".into(),
                    "1=127.0.0.1:7700,2=127.0.0.1:7710".into(),
                ),
            ];
            e.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            e
        };
        let tls = [("WEIR_TLS_CERT", "n.pem"), ("WEIR_TLS_KEY", "n.key")];
        let err = Config::load(None, env(&tls)).unwrap_err().to_string();
        assert!(err.contains("needs cluster_tls_ca"), "{err}");
        let mut with_ca = tls.to_vec();
        with_ca.push(("WEIR_CLUSTER_TLS_CA", "ca.pem"));
        let c = Config::load(None, env(&with_ca)).unwrap();
        assert_eq!(c.cluster_tls_ca, PathBuf::from("ca.pem"));
        let err = Config::load(None, env(&[("WEIR_CLUSTER_TLS_CA", "ca.pem")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cluster_tls_ca needs tls_cert"), "{err}");
        // A single node with TLS needs no cluster CA.
        let single: Vec<(String, String)> = tls
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(None, single).unwrap();
    }
}

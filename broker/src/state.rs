//! [`BrokerState`]: what every connection and background task of a running broker
//! shares, and the [`Metrics`] counters they bump.
//!
//! A leaf of the server: the protocol server, the HTTP listener and the broker's
//! start-up all import it; it imports none of them.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{watch, Semaphore};

use crate::config::Config;
use crate::groups::{Coordinator, OffsetStore};
use crate::producer_ids::ProducerIds;
use crate::queue::QueueManager;
use crate::topics::TopicRegistry;

/// Counters exported on `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub requests_total: AtomicU64,
    pub request_errors_total: AtomicU64,
    pub produce_bytes_total: AtomicU64,
    pub produce_records_total: AtomicU64,
    pub fetch_bytes_total: AtomicU64,
    /// Telemetry records read (`telemetry`): reports taken, records that were not a
    /// report, reports of pairs beyond the followed maximum.
    pub telemetry_reports: [AtomicU64; 3],
    /// Requests read on each connection runtime (`thread_per_core` mode; empty
    /// otherwise): how evenly the cores share the work.
    pub requests_on_core: Vec<AtomicU64>,
}

/// Everything a connection needs; shared by all of them.
#[derive(Debug)]
pub struct BrokerState {
    pub config: Arc<Config>,
    pub topics: Arc<TopicRegistry>,
    pub groups: Coordinator,
    pub offsets: OffsetStore,
    pub producer_ids: ProducerIds,
    pub started: Instant,
    pub metrics: Metrics,
    /// Latency histograms of the request paths (lock-free; `/metrics`).
    pub meters: crate::meters::Meters,
    /// The load agents' history of this node and its shards (`load_history`, sampled by `observe::sampler`).
    pub load: crate::load_history::LoadHistory,
    /// Advanced by every produce the broker places (`server::placement`): the seed of
    /// its two random choices, and the turn of `keyless_placement = round_robin`.
    pub placement_seed: std::sync::atomic::AtomicU64,
    pub shutdown: watch::Receiver<bool>,
    /// Backpressure, quotas and load shedding.
    pub flow: Arc<crate::flow::FlowControl>,
    /// Queue mode of consumer groups (leases, retries, dead letters, breakers).
    pub queues: QueueManager,
    /// This node's part in a cluster; `None` for a single-node broker.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// TLS, authentication, authorization and audit (`security/`).
    pub security: crate::security::Security,
    /// The `max_connections` slots, shared by TCP connections and in-process
    /// sessions: each holds one while it is open.
    pub connection_slots: Arc<Semaphore>,
}

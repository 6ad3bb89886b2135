//! `GET /status`: one JSON document with what the status page and `weir status` show
//! (health, alerts, topics and shards, consumer lag, per-class latency, breakers,
//! shedding, and in a cluster the mirrors). Rates are left to the reader: it polls and
//! divides the difference of two counters by the time between them.

use std::sync::atomic::Ordering;

use serde::Serialize;
use weir_protocol::classes::Class;

use super::alerts::{Alert, Transition};
use super::health::HealthReport;
use super::lag::Lag;
use super::Observer;
use crate::clock::now_ms;
use crate::state::BrokerState;

/// Most topics listed (the page stays readable and the answer bounded).
pub const TOPICS_MAX: usize = 1000;

#[derive(Debug, Serialize)]
pub struct Status {
    pub at_ms: i64,
    pub uptime_seconds: u64,
    pub health: HealthReport,
    pub alerts: Vec<Alert>,
    pub recent_alerts: Vec<Transition>,
    pub topics: Vec<TopicStatus>,
    pub groups: Vec<Lag>,
    pub latency: Vec<ClassLatency>,
    pub queues: Vec<QueueStatus>,
    pub shedding: Vec<ClassShed>,
    pub load_permille: u32,
    pub requests_total: u64,
    pub request_errors_total: u64,
    pub connections_open: u64,
    /// In a cluster: each shard's mirrors and how far behind they are (empty alone).
    pub mirrors: Vec<MirrorStatus>,
    /// In a cluster: the nodes and each shard's primary and copies (absent alone).
    pub cluster: Option<crate::meters::ClusterPlacement>,
}

#[derive(Debug, Serialize)]
pub struct TopicStatus {
    pub name: String,
    pub records_in: u64,
    pub bytes_in: u64,
    pub records_out: u64,
    pub bytes_out: u64,
    /// Records held: high-water mark minus log start, all shards.
    pub records: u64,
    pub shards: Vec<ShardStatus>,
}

#[derive(Debug, Serialize)]
pub struct ShardStatus {
    pub shard: u32,
    pub log_start_offset: u64,
    pub high_watermark: u64,
    pub queued: u64,
    pub trouble: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ClassLatency {
    pub class: &'static str,
    pub produces: u64,
    pub mean_ms: f64,
    /// Upper bounds of the buckets holding the 50th and 99th percentiles (since start).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_delivery_age_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct QueueStatus {
    pub group: String,
    pub topic: String,
    pub breaker: &'static str,
    pub dead_lettered: u64,
}

#[derive(Debug, Serialize)]
pub struct ClassShed {
    pub class: &'static str,
    pub shed_permille: u32,
    pub shed_total: u64,
}

#[derive(Debug, Serialize)]
pub struct MirrorStatus {
    pub topic: String,
    pub shard: u32,
    pub node: String,
    pub lag_records: u64,
}

/// The status document now.
pub fn status(state: &BrokerState, observer: &Observer) -> Status {
    let topics = state
        .topics
        .list()
        .into_iter()
        .take(TOPICS_MAX)
        .map(|t| {
            let shards: Vec<ShardStatus> = t
                .shards
                .iter()
                .enumerate()
                .map(|(i, s)| ShardStatus {
                    shard: i as u32,
                    log_start_offset: s.reader().log_start_offset(),
                    high_watermark: s.reader().high_watermark(),
                    queued: Class::ALL.iter().map(|&c| s.queued(c) as u64).sum(),
                    trouble: s.trouble(),
                })
                .collect();
            TopicStatus {
                name: t.name.clone(),
                records_in: t.io.records_in.load(Ordering::Relaxed),
                bytes_in: t.io.bytes_in.load(Ordering::Relaxed),
                records_out: t.io.records_out.load(Ordering::Relaxed),
                bytes_out: t.io.bytes_out.load(Ordering::Relaxed),
                records: shards
                    .iter()
                    .map(|s| s.high_watermark.saturating_sub(s.log_start_offset))
                    .sum(),
                shards,
            }
        })
        .collect();
    let latency = Class::ALL
        .into_iter()
        .map(|c| {
            let p = super::produce_class(state, c);
            let age = state.meters.delivery_age[c.index()].snapshot();
            ClassLatency {
                class: c.name(),
                produces: p.count,
                mean_ms: p.mean_seconds() * 1000.0,
                p50_ms: p.quantile_bound(0.5) * 1000.0,
                p99_ms: p.quantile_bound(0.99) * 1000.0,
                mean_delivery_age_ms: age.mean_seconds() * 1000.0,
            }
        })
        .collect();
    let flow = state.flow.status();
    let (alerts, recent_alerts) = observer.with_alerts(|b| {
        (
            b.firing.values().cloned().collect(),
            b.recent.iter().rev().take(20).cloned().collect(),
        )
    });
    let m = &state.metrics;
    Status {
        at_ms: now_ms(),
        uptime_seconds: state.started.elapsed().as_secs(),
        health: (*observer.health()).clone(),
        alerts,
        recent_alerts,
        topics,
        groups: super::lag::consumer_lag(state, super::LAG_ENTRIES_MAX),
        latency,
        queues: state
            .queues
            .queue_gauges()
            .into_iter()
            .map(|(group, topic, b, dead_lettered)| QueueStatus {
                group,
                topic,
                breaker: weir_protocol::breaker::State::from_code(b)
                    .map_or("unknown", |s| s.name()),
                dead_lettered,
            })
            .collect(),
        shedding: flow
            .classes
            .iter()
            .map(|c| ClassShed {
                class: Class::from_index(c.class as usize).map_or("?", Class::name),
                shed_permille: c.shed_permille,
                shed_total: c.shed_total,
            })
            .collect(),
        load_permille: flow.load_permille,
        requests_total: m.requests_total.load(Ordering::Relaxed),
        request_errors_total: m.request_errors_total.load(Ordering::Relaxed),
        connections_open: m.connections_open.load(Ordering::Relaxed),
        cluster: state.meters.cluster.get().map(|c| c.placement()),
        mirrors: state
            .meters
            .cluster
            .get()
            .map(|c| {
                c.mirror_lag_records()
                    .into_iter()
                    .map(|(topic, shard, node, lag_records)| MirrorStatus {
                        topic,
                        shard,
                        node,
                        lag_records,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

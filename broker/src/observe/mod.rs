//! Observability: what `/metrics`, `/health`, `/ready`, `/alerts`, `/status` and the
//! status page show, computed from the broker's shared state.
//!
//! The request paths only bump atomics (`crate::meters`); everything here runs off
//! them: [`run`] judges health and alerts once a second into the [`Observer`],
//! [`collect`] encodes `/metrics` with `prometheus-client` at scrape time, and
//! [`status`] builds the JSON the status page and `weir status` read. Nothing here
//! is on the produce or fetch path.

pub mod alerts;
pub mod collect;
pub mod health;
pub mod lag;
pub mod process;
pub mod requests;
pub mod sampler;
pub mod status;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use weir_protocol::classes::Class;

use crate::clock::now_ms;
use crate::meters::HistogramSnapshot;
use crate::state::BrokerState;
use alerts::{AlertBook, Condition, Webhook};
use health::{HealthReport, Inputs, Level, Thresholds};

/// Most consumer-lag entries (group, topic, shard) read per check or page.
pub const LAG_ENTRIES_MAX: usize = 10_000;

/// Window of the P0 latency alert.
const P0_WINDOW: Duration = Duration::from_secs(10);

/// How long a mirror may stay behind before `mirror_out_of_sync` fires.
const MIRROR_GRACE: Duration = Duration::from_secs(10);

/// The latest health report and the alert book, shared with the HTTP side.
#[derive(Debug)]
pub struct Observer {
    health: Mutex<Arc<HealthReport>>,
    alerts: Mutex<AlertBook>,
    thresholds: Thresholds,
}

impl Observer {
    pub fn new(config: &crate::config::Config) -> Arc<Observer> {
        Arc::new(Observer {
            health: Mutex::new(Arc::new(HealthReport::default())),
            alerts: Mutex::new(AlertBook::default()),
            thresholds: Thresholds::from_config(config),
        })
    }

    /// The latest health report (all healthy before the first check).
    pub fn health(&self) -> Arc<HealthReport> {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the alert book.
    pub fn with_alerts<R>(&self, f: impl FnOnce(&AlertBook) -> R) -> R {
        f(&self.alerts.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// What one check remembers for the next.
#[derive(Default)]
struct Memory {
    /// All produce latencies, summed, at the last check.
    produce: HistogramSnapshot,
    /// (when, requests, errors) over the error window.
    requests: VecDeque<(Instant, u64, u64)>,
    /// P0 produce latency snapshots over `P0_WINDOW`.
    p0: VecDeque<(Instant, HistogramSnapshot)>,
    /// Dead-letter count of each queue and when it last grew.
    dead: HashMap<(String, String), (u64, Instant)>,
    /// Lag of each (group, topic, shard): the last value, and since when and from
    /// what value it has not shrunk.
    lag: HashMap<(String, String, u32), (u64, Instant, u64)>,
    /// Since when each mirror has been behind.
    mirrors: HashMap<(String, u32, String), Instant>,
}

/// Checks health and alerts every second until shutdown.
pub async fn run(
    state: Arc<BrokerState>,
    observer: Arc<Observer>,
    mut shutdown: watch::Receiver<bool>,
) {
    let webhook = Webhook::parse(&state.config.alert_webhook_url);
    let timeout = Duration::from_millis(state.config.alert_webhook_timeout_ms);
    let mut memory = Memory::default();
    let mut sampler = sampler::Sampler::default();
    let mut sharder = crate::autoshard::AutoSharder::default();
    let mut telemetry = crate::telemetry::TelemetryReader::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => {}
        }
        sampler.sample(&state);
        telemetry.tick(&state);
        sharder.tick(&state).await;
        let (report, conditions) = check(&state, &observer.thresholds, &mut memory);
        *observer.health.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(report);
        let transitions = observer
            .alerts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .update(conditions, now_ms());
        for t in transitions {
            alerts::log(&t);
            if let Some(hook) = webhook.clone() {
                let body = serde_json::to_string(&t).unwrap_or_default();
                tokio::spawn(async move {
                    if let Err(e) = hook.post(&body, timeout).await {
                        tracing::warn!(error = %e, "alert webhook failed");
                    }
                });
            }
        }
    }
}

/// One check: the health report and the alert conditions that hold now.
fn check(
    state: &BrokerState,
    thresholds: &Thresholds,
    memory: &mut Memory,
) -> (HealthReport, Vec<Condition>) {
    let now = Instant::now();
    let config = &state.config;
    let mut inputs = Inputs::default();
    let mut conditions = Vec::new();

    // Backlogs: writer lanes, and consumer lag.
    for t in state.topics.list() {
        for (i, s) in t.shards.iter().enumerate() {
            let queued: u64 = Class::ALL.iter().map(|&c| s.queued(c) as u64).sum();
            if queued > inputs.queue_depth {
                inputs.queue_depth = queued;
                inputs.queue_depth_where = format!("writer of {}/{i}", t.name);
            }
            if let Some(cause) = s.trouble() {
                inputs
                    .storage_trouble
                    .push(format!("{}/{i}: {cause}", t.name));
            }
        }
    }
    let lags = lag::consumer_lag(state, LAG_ENTRIES_MAX);
    let mut seen = HashMap::new();
    for l in &lags {
        if l.records > inputs.queue_depth {
            inputs.queue_depth = l.records;
            inputs.queue_depth_where = format!("group {} on {}/{}", l.group, l.topic, l.shard);
        }
        let key = (l.group.clone(), l.topic.clone(), l.shard);
        let (last, since, from) = memory
            .lag
            .get(&key)
            .copied()
            .unwrap_or((l.records, now, l.records));
        let entry = if l.records < last || l.records == 0 {
            (l.records, now, l.records)
        } else {
            (l.records, since, from)
        };
        let hold = Duration::from_millis(config.alert_lag_growing_ms);
        if entry.0 > entry.2 && now.duration_since(entry.1) >= hold {
            conditions.push(Condition {
                id: format!("consumer_lag_growing:{}/{}/{}", l.group, l.topic, l.shard),
                rule: "consumer_lag_growing",
                severity: "warning",
                message: format!(
                    "group {} on {}/{}: lag grew from {} to {} records over {:.0} s",
                    l.group,
                    l.topic,
                    l.shard,
                    entry.2,
                    entry.0,
                    now.duration_since(entry.1).as_secs_f64()
                ),
            });
        }
        seen.insert(key, entry);
    }
    memory.lag = seen;

    // Produce latency over the last second.
    let produce = produce_total(state);
    inputs.delay_seconds = produce.since(&memory.produce).mean_seconds();
    memory.produce = produce;

    // Error rate over the window.
    let m = &state.metrics;
    let (reqs, errs) = (
        m.requests_total.load(Ordering::Relaxed),
        m.request_errors_total.load(Ordering::Relaxed),
    );
    memory.requests.push_back((now, reqs, errs));
    let window = Duration::from_millis(config.health_error_window_ms);
    // Keep one sample at or beyond the window's start, so the window is never empty.
    while memory
        .requests
        .get(1)
        .is_some_and(|(t, _, _)| now.duration_since(*t) >= window)
    {
        memory.requests.pop_front();
    }
    if let Some(&(_, r0, e0)) = memory.requests.front() {
        let (dr, de) = (reqs.saturating_sub(r0), errs.saturating_sub(e0));
        inputs.requests_in_window = dr;
        inputs.error_rate_permille = if dr == 0 {
            0.0
        } else {
            1000.0 * de as f64 / dr as f64
        };
    }

    // Resources: memory budget, disk, open files.
    let flow = state.flow.status();
    let mut resource = |what: &str, pct: f64| {
        if pct > inputs.resource_percent || inputs.resource_what.is_empty() {
            inputs.resource_percent = pct;
            inputs.resource_what = what.to_string();
        }
    };
    if flow.memory_budget_bytes > 0 {
        resource(
            "produce memory budget",
            100.0 * flow.memory_used_bytes as f64 / flow.memory_budget_bytes as f64,
        );
    }
    let disk = process::disk(&config.data_dir);
    if let Some(d) = disk {
        resource("data directory disk", d.used_percent());
        let free_pct = 100.0 - d.used_percent();
        if free_pct < config.alert_disk_free_percent as f64 {
            conditions.push(Condition {
                id: "disk_free_low".into(),
                rule: "disk_free_low",
                severity: "critical",
                message: format!(
                    "{:.1} % of the data directory's disk is free ({} bytes; alert under {} %)",
                    free_pct, d.free_bytes, config.alert_disk_free_percent
                ),
            });
        }
    }
    let p = process::process();
    if let (Some(open), Some(max)) = (p.open_fds, p.max_fds) {
        if max > 0 {
            resource("open files", 100.0 * open as f64 / max as f64);
        }
    }

    let report = health::evaluate(thresholds, &inputs, now_ms());
    for c in &report.components {
        if c.level != Level::Healthy {
            conditions.push(Condition {
                id: format!("health_{}", c.name),
                rule: health_rule(c.name),
                severity: if c.level == Level::Critical {
                    "critical"
                } else {
                    "warning"
                },
                message: format!("{} {}: {}", c.name, c.level.name(), c.detail),
            });
        }
    }

    // Dead letters, breakers.
    let hold = Duration::from_millis(config.alert_dead_letter_hold_ms);
    let mut dead = HashMap::new();
    for (group, topic, breaker, dead_lettered) in state.queues.queue_gauges() {
        let key = (group.clone(), topic.clone());
        let (last, at) = memory.dead.get(&key).copied().unwrap_or((0, now));
        let at = if dead_lettered > last { now } else { at };
        if dead_lettered > 0 && now.duration_since(at) < hold {
            conditions.push(Condition {
                id: format!("dead_letter:{group}/{topic}"),
                rule: "dead_letter",
                severity: "warning",
                message: format!(
                    "queue {group} on {topic} dead-lettered a record ({dead_lettered} since start) to {topic}{}",
                    config.dlq_suffix
                ),
            });
        }
        dead.insert(key, (dead_lettered, at));
        if weir_protocol::breaker::State::from_code(breaker)
            == Some(weir_protocol::breaker::State::Open)
        {
            conditions.push(Condition {
                id: format!("breaker_open:{group}/{topic}"),
                rule: "breaker_open",
                severity: "warning",
                message: format!("the circuit breaker of queue {group} on {topic} is open"),
            });
        }
    }
    memory.dead = dead;

    // Shedding.
    for c in &flow.classes {
        if c.shed_permille > 0 {
            let name = Class::from_index(c.class as usize).map_or("?", Class::name);
            conditions.push(Condition {
                id: format!("shedding:{name}"),
                rule: "shedding",
                severity: "warning",
                message: format!(
                    "shedding {}.{} % of {name} produces (load {}.{} %)",
                    c.shed_permille / 10,
                    c.shed_permille % 10,
                    flow.load_permille / 10,
                    flow.load_permille % 10
                ),
            });
        }
    }

    // P0 latency over the last 10 s.
    let p0 = produce_class(state, Class::P0);
    memory.p0.push_back((now, p0.clone()));
    while memory
        .p0
        .front()
        .is_some_and(|(t, _)| now.duration_since(*t) > P0_WINDOW)
    {
        memory.p0.pop_front();
    }
    if let Some((_, old)) = memory.p0.front() {
        let d = p0.since(old);
        let p99 = d.quantile_bound(0.99);
        let target = config.alert_p0_latency_ms as f64 / 1000.0;
        if d.count > 0 && p99 > target {
            conditions.push(Condition {
                id: "p0_latency".into(),
                rule: "p0_latency",
                severity: "critical",
                message: format!(
                    "P0 produce latency p99 up to {:.0} ms over the last {} s (target {} ms, {} produces)",
                    p99 * 1000.0,
                    P0_WINDOW.as_secs(),
                    config.alert_p0_latency_ms,
                    d.count
                ),
            });
        }
    }

    // Mirrors (cluster hook).
    if let Some(cluster) = state.meters.cluster.get() {
        let mut behind = HashMap::new();
        for (topic, shard, node, lag) in cluster.mirror_lag_records() {
            if lag == 0 {
                continue;
            }
            let key = (topic.clone(), shard, node.clone());
            let since = memory.mirrors.get(&key).copied().unwrap_or(now);
            if now.duration_since(since) >= MIRROR_GRACE {
                conditions.push(Condition {
                    id: format!("mirror_out_of_sync:{topic}/{shard}/{node}"),
                    rule: "mirror_out_of_sync",
                    severity: "critical",
                    message: format!("mirror {node} of {topic}/{shard} is {lag} records behind"),
                });
            }
            behind.insert(key, since);
        }
        memory.mirrors = behind;
    }
    (report, conditions)
}

/// The alert rule of a health component.
fn health_rule(component: &str) -> &'static str {
    match component {
        "queues" => "health_queues",
        "latency" => "health_latency",
        "errors" => "health_errors",
        "resources" => "health_resources",
        _ => "health_storage",
    }
}

/// Produce latency of every class and ack level, summed.
pub fn produce_total(state: &BrokerState) -> HistogramSnapshot {
    let mut s = HistogramSnapshot::default();
    for c in Class::ALL {
        s.add(&produce_class(state, c));
    }
    s
}

/// Produce latency of one class, every ack level summed.
pub fn produce_class(state: &BrokerState, class: Class) -> HistogramSnapshot {
    let mut s = HistogramSnapshot::default();
    for h in &state.meters.produce[class.index()] {
        s.add(&h.snapshot());
    }
    s
}

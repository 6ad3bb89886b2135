//! `/metrics`: every series of METRICS.md, encoded at scrape time in the Prometheus
//! text format by `prometheus-client`.
//!
//! The broker's figures live in its own atomics (`state::Metrics`, `meters`, shard
//! stats, queue and flow counters); a [`Scrape`] is a `prometheus-client` collector
//! that reads them when scraped, so nothing is registered or locked on the hot path.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use weir_protocol::classes::Class;

use super::alerts::RULES;
use super::Observer;
use crate::meters::{HistogramSnapshot, ACK_LEVELS, FETCH_APIS};
use crate::state::BrokerState;

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Labels of one sample.
type Labels = Vec<(&'static str, String)>;

/// Reads the broker's figures when scraped.
#[derive(Debug)]
pub struct Scrape {
    pub state: Arc<BrokerState>,
    pub observer: Arc<Observer>,
}

/// The whole `/metrics` text.
pub fn metrics_text(state: &Arc<BrokerState>, observer: &Arc<Observer>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape {
        state: state.clone(),
        observer: observer.clone(),
    }));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

fn gauge<V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, V)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        if labels.is_empty() {
            m.encode_gauge(&v)?;
        } else {
            m.encode_family(&labels)?.encode_gauge(&v)?;
        }
    }
    Ok(())
}

/// `name` without its `_total`: the encoder appends it to counters.
fn counter<V: EncodeCounterValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, V)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        if labels.is_empty() {
            m.encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        } else {
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
    }
    Ok(())
}

fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, HistogramSnapshot)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in rows {
        if labels.is_empty() {
            m.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets, None)?;
        } else {
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                h.sum_seconds,
                h.count,
                &h.buckets,
                None,
            )?;
        }
    }
    Ok(())
}

fn one<V>(v: V) -> [(Labels, V); 1] {
    [(Vec::new(), v)]
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn class_label(c: Class) -> Labels {
    vec![("class", c.name().to_string())]
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        self.connections(&mut enc)?;
        self.latency(&mut enc)?;
        self.topics(&mut enc)?;
        self.queues(&mut enc)?;
        self.flow(&mut enc)?;
        self.process(&mut enc)?;
        self.load(&mut enc)?;
        self.health(&mut enc)?;
        self.cluster(&mut enc)
    }
}

impl Scrape {
    fn connections(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let m = &self.state.metrics;
        gauge(
            enc,
            "weir_connections_open",
            "Client connections open now.",
            one(load(&m.connections_open)),
        )?;
        let counters = [
            (
                "weir_connections",
                "Client connections accepted.",
                &m.connections_total,
            ),
            (
                "weir_connections_refused",
                "Connections closed at once (max_connections or a connection quota).",
                &m.connections_refused,
            ),
            ("weir_requests", "Requests read.", &m.requests_total),
            (
                "weir_request_errors",
                "Requests answered with an error (or failed without an answer).",
                &m.request_errors_total,
            ),
            (
                "weir_produce_bytes",
                "Record batch bytes stored by produces.",
                &m.produce_bytes_total,
            ),
            (
                "weir_produce_records",
                "Records stored by produces.",
                &m.produce_records_total,
            ),
            (
                "weir_fetch_bytes",
                "Record batch bytes served by Fetch and PriorityFetch.",
                &m.fetch_bytes_total,
            ),
        ];
        for (name, help, v) in counters {
            counter(enc, name, help, one(load(v)))?;
        }
        counter(
            enc,
            "weir_requests_on_core",
            "Requests read on each connection runtime (thread_per_core only).",
            m.requests_on_core
                .iter()
                .enumerate()
                .map(|(i, v)| (vec![("core", i.to_string())], load(v))),
        )?;
        counter(
            enc,
            "weir_slow_requests",
            "Requests slower than slow_request_ms.",
            one(load(&self.state.meters.slow_requests)),
        )?;
        gauge(
            enc,
            "weir_uptime_seconds",
            "Seconds since the broker started.",
            one(self.state.started.elapsed().as_secs()),
        )
    }

    fn latency(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let meters = &self.state.meters;
        let mut rows = Vec::new();
        for c in Class::ALL {
            for (a, level) in ACK_LEVELS.iter().enumerate() {
                let mut l = class_label(c);
                l.push(("acks", level.to_string()));
                rows.push((l, meters.produce[c.index()][a].snapshot()));
            }
        }
        histogram(
            enc,
            "weir_produce_latency_seconds",
            "Produce latency from decoding the request to its answer, per class and ack level.",
            rows,
        )?;
        histogram(
            enc,
            "weir_fetch_latency_seconds",
            "Latency of record-delivering requests from decode to answer (long-poll waits included), per api.",
            FETCH_APIS
                .iter()
                .zip(&meters.fetch)
                .map(|(api, h)| (vec![("api", api.to_string())], h.snapshot())),
        )?;
        histogram(
            enc,
            "weir_delivery_age_seconds",
            "Age of delivered record batches (now minus the batch's first timestamp) by Fetch and PriorityFetch, per class.",
            Class::ALL
                .into_iter()
                .map(|c| (class_label(c), meters.delivery_age[c.index()].snapshot())),
        )
    }

    fn topics(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let topics = self.state.topics.list();
        let io = |f: fn(&crate::meters::TopicIo) -> &AtomicU64| {
            topics
                .iter()
                .map(move |t| (vec![("topic", t.name.clone())], load(f(&t.io))))
                .collect::<Vec<_>>()
        };
        counter(
            enc,
            "weir_topic_in_records",
            "Records stored per topic.",
            io(|i| &i.records_in),
        )?;
        counter(
            enc,
            "weir_topic_in_bytes",
            "Batch bytes stored per topic.",
            io(|i| &i.bytes_in),
        )?;
        counter(
            enc,
            "weir_topic_out_records",
            "Records delivered per topic by Fetch and PriorityFetch.",
            io(|i| &i.records_out),
        )?;
        counter(
            enc,
            "weir_topic_out_bytes",
            "Batch bytes delivered per topic by Fetch and PriorityFetch.",
            io(|i| &i.bytes_out),
        )?;
        let shards: Vec<(Labels, &Arc<crate::shard::Shard>)> = topics
            .iter()
            .flat_map(|t| {
                t.shards
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (vec![("topic", t.name.clone()), ("shard", i.to_string())], s))
            })
            .collect();
        gauge(
            enc,
            "weir_shard_high_watermark",
            "Next offset to be written on each shard.",
            shards
                .iter()
                .map(|(l, s)| (l.clone(), s.reader().high_watermark())),
        )?;
        gauge(
            enc,
            "weir_shard_failed",
            "1 while the shard refuses appends (see /ready), else 0.",
            shards
                .iter()
                .map(|(l, s)| (l.clone(), u64::from(s.trouble().is_some()))),
        )?;
        gauge(
            enc,
            "weir_shard_flushed_offset",
            "Offsets below this are covered by a completed flush.",
            shards
                .iter()
                .map(|(l, s)| (l.clone(), load(&s.stats().flushed_offset))),
        )?;
        counter(
            enc,
            "weir_shard_flushes",
            "Flushes completed per shard.",
            shards
                .iter()
                .map(|(l, s)| (l.clone(), load(&s.stats().flushes))),
        )?;
        counter(
            enc,
            "weir_shard_page_cache_dropped_bytes",
            "Bytes written back and dropped from the page cache per shard (page_cache_window_bytes), by the window and again after readers faulted them back in.",
            shards
                .iter()
                .map(|(l, s)| (l.clone(), s.reader().page_cache_dropped_bytes()))
                .collect::<Vec<_>>(),
        )?;
        let mut write_behind = Vec::new();
        for (l, s) in &shards {
            let (started, let_go) = s.reader().write_behind_bytes();
            for (how, n) in [("started", started), ("let_go", let_go)] {
                let mut l = l.clone();
                l.push(("how", how.to_string()));
                write_behind.push((l, n));
            }
        }
        counter(
            enc,
            "weir_shard_write_behind_bytes",
            "Appended bytes write-behind started writing back (flush_write_behind_bytes), or let go by while the broker appended faster than flush_write_behind_max_bytes_per_second.",
            write_behind,
        )?;
        counter(
            enc,
            "weir_shard_group_cuts",
            "Write groups of lower-class appends cut short by a P0 append, per shard.",
            shards
                .iter()
                .map(|(l, s)| (l.clone(), load(&s.stats().group_cuts))),
        )?;
        let mut idle = Vec::new();
        for (l, s) in &shards {
            for (how, n) in [
                ("spun", &s.stats().spin_takes),
                ("parked", &s.stats().parks),
            ] {
                let mut l = l.clone();
                l.push(("how", how.to_string()));
                idle.push((l, load(n)));
            }
        }
        counter(
            enc,
            "weir_shard_idle_waits",
            "Times a shard writer ran out of work, by how the wait ended: work found while spinning (spin_wait_us) or the thread parked.",
            idle,
        )?;
        counter(
            enc,
            "weir_shard_in_place_appends",
            "Appends a connection wrote into the shard's log itself, the writer thread having nothing queued (in_place_append_bytes).",
            shards
                .iter()
                .map(|(l, s)| (l.clone(), load(&s.stats().in_place)))
                .collect::<Vec<_>>(),
        )?;
        let per_class = |f: &dyn Fn(&crate::shard::Shard, Class) -> u64| {
            let mut rows = Vec::new();
            for (l, s) in &shards {
                for c in Class::ALL {
                    let mut l = l.clone();
                    l.push(("class", c.name().to_string()));
                    rows.push((l, f(s, c)));
                }
            }
            rows
        };
        gauge(
            enc,
            "weir_shard_queued",
            "Appends waiting in each class lane of each shard writer.",
            per_class(&|s, c| s.queued(c) as u64),
        )?;
        counter(
            enc,
            "weir_shard_appends",
            "Appends written (or answered as duplicates) per shard and class.",
            per_class(&|s, c| load(&s.stats().appends[c.index()])),
        )?;
        counter(
            enc,
            "weir_shard_wait_us",
            "Microseconds appends waited in their lane, summed, per shard and class.",
            per_class(&|s, c| load(&s.stats().wait_us[c.index()])),
        )?;
        gauge(
            enc,
            "weir_shard_wait_us_max",
            "Longest lane wait (us) since the previous scrape, per shard and class (reset by each scrape).",
            per_class(&|s, c| s.stats().wait_us_max[c.index()].swap(0, Ordering::Relaxed)),
        )?;
        // Per class, all shards together.
        let empty = || crate::meters::Histogram::default().snapshot();
        let mut depth = [0u64; 4];
        let mut wait: [HistogramSnapshot; 4] = std::array::from_fn(|_| empty());
        let mut flush = empty();
        for (_, s) in &shards {
            for c in Class::ALL {
                depth[c.index()] += s.queued(c) as u64;
                wait[c.index()].add(&s.stats().wait_histogram[c.index()].snapshot());
            }
            flush.add(&s.stats().flush_latency.snapshot());
        }
        gauge(
            enc,
            "weir_queue_depth_records",
            "Appends waiting in the writer lanes of all shards, per class.",
            Class::ALL
                .into_iter()
                .map(|c| (class_label(c), depth[c.index()])),
        )?;
        histogram(
            enc,
            "weir_queue_wait_seconds",
            "How long appends waited in their writer lane, per class (all shards).",
            Class::ALL
                .into_iter()
                .map(|c| (class_label(c), wait[c.index()].clone())),
        )?;
        histogram(
            enc,
            "weir_flush_latency_seconds",
            "Duration of background group-commit flushes (all shards).",
            one(flush),
        )?;
        let lags = super::lag::consumer_lag(&self.state, super::LAG_ENTRIES_MAX);
        let lag_labels = |l: &super::lag::Lag| {
            vec![
                ("group", l.group.clone()),
                ("topic", l.topic.clone()),
                ("shard", l.shard.to_string()),
            ]
        };
        gauge(
            enc,
            "weir_consumer_lag_records",
            "Records between a consumer group's committed offset and the shard's high-water mark.",
            lags.iter().map(|l| (lag_labels(l), l.records)),
        )?;
        gauge(
            enc,
            "weir_consumer_lag_seconds",
            "Age of the first record a consumer group has not consumed (0 when caught up).",
            lags.iter().map(|l| (lag_labels(l), l.seconds)),
        )
    }

    fn queues(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let q = &self.state.queues.metrics;
        let counters = [
            ("weir_queue_leased", "Queue-mode records leased.", &q.leased),
            (
                "weir_queue_acked",
                "Queue-mode records acknowledged.",
                &q.acked,
            ),
            ("weir_queue_nacked", "Queue-mode records nacked.", &q.nacked),
            (
                "weir_queue_lease_expired",
                "Queue-mode leases that expired.",
                &q.expired,
            ),
            (
                "weir_queue_redelivered",
                "Queue-mode records delivered again.",
                &q.redelivered,
            ),
            (
                "weir_queue_dead_lettered",
                "Queue-mode records moved to a dead-letter topic.",
                &q.dead_lettered,
            ),
        ];
        for (name, help, v) in counters {
            counter(enc, name, help, one(load(v)))?;
        }
        let queues = self.state.queues.queue_gauges();
        let labels = |g: &str, t: &str| vec![("group", g.to_string()), ("topic", t.to_string())];
        gauge(
            enc,
            "weir_queue_breaker_state",
            "Circuit breaker of each queue: 0 closed, 1 open, 2 half-open.",
            queues
                .iter()
                .map(|(g, t, b, _)| (labels(g, t), u64::from(*b))),
        )?;
        counter(
            enc,
            "weir_dlq_records",
            "Records each queue (group, topic) dead-lettered since the broker started.",
            queues.iter().map(|(g, t, _, d)| (labels(g, t), *d)),
        )
    }

    fn flow(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let s = self.state.flow.status();
        gauge(
            enc,
            "weir_flow_load_permille",
            "Load signal in per mille.",
            one(u64::from(s.load_permille)),
        )?;
        gauge(
            enc,
            "weir_flow_memory_used_bytes",
            "Produce bytes held between decode and ack.",
            one(s.memory_used_bytes),
        )?;
        gauge(
            enc,
            "weir_flow_memory_budget_bytes",
            "The broker-wide produce memory budget (flow_memory_bytes).",
            one(s.memory_budget_bytes),
        )?;
        gauge(
            enc,
            "weir_flow_pending_produce_bytes",
            "Produce bytes queued and not yet acknowledged.",
            one(s.pending_produce_bytes),
        )?;
        gauge(
            enc,
            "weir_flow_produce_latency_ewma_us",
            "Moving average of produce ack latency (us) used by the load signal.",
            one(s.produce_latency_ewma_us),
        )?;
        let name = |c: u8| {
            Class::from_index(c as usize)
                .map_or("?", Class::name)
                .to_string()
        };
        counter(
            enc,
            "weir_flow_shed",
            "Produce requests refused with SHED, per class.",
            s.classes
                .iter()
                .map(|c| (vec![("class", name(c.class))], c.shed_total)),
        )?;
        counter(
            enc,
            "weir_shed_records",
            "Records in produces refused with SHED, per class.",
            Class::ALL.into_iter().map(|c| {
                (
                    class_label(c),
                    load(&self.state.meters.shed_records[c.index()]),
                )
            }),
        )?;
        gauge(
            enc,
            "weir_flow_shed_permille",
            "Share of produces of each class being shed now, per mille.",
            s.classes
                .iter()
                .map(|c| (vec![("class", name(c.class))], u64::from(c.shed_permille))),
        )
    }

    fn process(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let p = super::process::process();
        counter(
            enc,
            "weir_process_cpu_seconds",
            "User and system CPU time of the broker process.",
            p.cpu_seconds.map(|v| (Vec::new(), v)),
        )?;
        gauge(
            enc,
            "weir_process_resident_memory_bytes",
            "Resident memory of the broker process (VmRSS).",
            p.resident_bytes.map(|v| (Vec::new(), v)),
        )?;
        gauge(
            enc,
            "weir_process_anonymous_memory_bytes",
            "Resident anonymous memory (RssAnon): heap and stacks, not mapped files.",
            p.anonymous_bytes.map(|v| (Vec::new(), v)),
        )?;
        gauge(
            enc,
            "weir_process_open_fds",
            "Open file descriptors.",
            p.open_fds.map(|v| (Vec::new(), v)),
        )?;
        gauge(
            enc,
            "weir_process_max_fds",
            "Soft limit on open file descriptors.",
            p.max_fds.map(|v| (Vec::new(), v)),
        )?;
        gauge(
            enc,
            "weir_process_transparent_huge_pages",
            "0 when transparent huge pages are turned off for the process (PR_SET_THP_DISABLE), 1 when the system policy applies.",
            p.transparent_huge_pages.map(|v| (Vec::new(), v)),
        )?;
        let d = super::process::disk(&self.state.config.data_dir);
        gauge(
            enc,
            "weir_disk_free_bytes",
            "Free bytes (for unprivileged writers) on the data directory's filesystem.",
            d.map(|d| (Vec::new(), d.free_bytes)),
        )?;
        gauge(
            enc,
            "weir_disk_used_bytes",
            "Used bytes on the data directory's filesystem.",
            d.map(|d| (Vec::new(), d.used_bytes)),
        )?;
        gauge(
            enc,
            "weir_disk_total_bytes",
            "Size of the data directory's filesystem.",
            d.map(|d| (Vec::new(), d.total_bytes)),
        )
    }

    /// The load agents' newest one-second sample (`load_history`).
    fn load(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let shards = self.state.load.latest();
        let labels = |t: &str, s: u32| vec![("topic", t.to_string()), ("shard", s.to_string())];
        type Field = fn(&crate::load_history::ShardPoint) -> u32;
        let rates: [(&str, &str, Field); 4] = [
            (
                "weir_shard_ingest_records_per_second",
                "Records appended to each shard over the last second (load agents).",
                |p| p.records_in,
            ),
            (
                "weir_shard_ingest_bytes_per_second",
                "Bytes produced into each shard over the last second (load agents).",
                |p| p.bytes_in,
            ),
            (
                "weir_shard_egress_records_per_second",
                "Records fetched from each shard over the last second (load agents).",
                |p| p.records_out,
            ),
            (
                "weir_shard_egress_bytes_per_second",
                "Bytes fetched from each shard over the last second (load agents).",
                |p| p.bytes_out,
            ),
        ];
        for (name, help, f) in rates {
            gauge(
                enc,
                name,
                help,
                shards
                    .iter()
                    .map(|(t, s, p, _)| (labels(t, *s), u64::from(f(p)))),
            )?;
        }
        gauge(
            enc,
            "weir_shard_ingest_forecast_records_per_second",
            "Each shard's ingest rate forecast 60 s ahead by its best model (load agents).",
            shards
                .iter()
                .map(|(t, s, _, f)| (labels(t, *s), f.records_in_per_s)),
        )?;
        let reports = &self.state.metrics.telemetry_reports;
        counter(
            enc,
            "weir_telemetry_reports",
            "Client telemetry records read, by outcome (ok, invalid, dropped).",
            ["ok", "invalid", "dropped"]
                .iter()
                .zip(reports)
                .map(|(o, n)| (vec![("outcome", o.to_string())], n.load(Ordering::Relaxed))),
        )?;
        let demands = self.state.load.latest_demands();
        let pair = |s: &str, t: &str| vec![("service", s.to_string()), ("type", t.to_string())];
        gauge(
            enc,
            "weir_demand_records_per_second",
            "Records per second of each message type a service reported sending (client telemetry).",
            demands
                .iter()
                .map(|(s, t, p, _, _)| (pair(s, t), u64::from(p.records))),
        )?;
        gauge(
            enc,
            "weir_demand_forecast_records_per_second",
            "Each (service, type) demand forecast 60 s ahead by its best model (client telemetry).",
            demands
                .iter()
                .map(|(s, t, _, _, f)| (pair(s, t), f.records_in_per_s)),
        )?;
        gauge(
            enc,
            "weir_demand_expected_records_per_second",
            "The demand each service said it expects per message type (client telemetry).",
            demands
                .iter()
                .map(|(s, t, _, r, _)| (pair(s, t), r.expected_per_s.max(0.0).round() as u64)),
        )?;
        gauge(
            enc,
            "weir_process_cpu_permille",
            "CPU time of the broker process over the last second, per mille of one core.",
            self.state
                .load
                .latest_node()
                .map(|p| (Vec::new(), u64::from(p.cpu_permille))),
        )
    }

    fn health(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let h = self.observer.health();
        let mut rows: Vec<(Labels, u64)> = vec![(
            vec![("component", "overall".to_string())],
            u64::from(h.overall.code()),
        )];
        rows.extend(h.components.iter().map(|c| {
            (
                vec![("component", c.name.to_string())],
                u64::from(c.level.code()),
            )
        }));
        gauge(
            enc,
            "weir_health_state",
            "Health of each component and overall: 0 healthy, 1 degraded, 2 critical.",
            rows,
        )?;
        let (firing, fired) = self
            .observer
            .with_alerts(|b| (b.firing_by_rule(), b.fired_total.clone()));
        gauge(
            enc,
            "weir_alerts_firing",
            "Alerts firing now, per rule.",
            RULES.iter().map(|r| {
                (
                    vec![("rule", r.to_string())],
                    firing.get(r).copied().unwrap_or(0),
                )
            }),
        )?;
        counter(
            enc,
            "weir_alerts_fired",
            "Alerts that fired since the broker started, per rule.",
            RULES.iter().map(|r| {
                (
                    vec![("rule", r.to_string())],
                    fired.get(r).copied().unwrap_or(0),
                )
            }),
        )
    }

    /// Only when a cluster layer registered its gauges (`Meters::cluster`).
    fn cluster(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let Some(c) = self.state.meters.cluster.get() else {
            return Ok(());
        };
        gauge(
            enc,
            "weir_cluster_mirror_lag_records",
            "Records each mirror of a shard is behind its primary.",
            c.mirror_lag_records()
                .into_iter()
                .map(|(t, s, n, v)| (vec![("topic", t), ("shard", s.to_string()), ("node", n)], v)),
        )?;
        gauge(
            enc,
            "weir_cluster_in_sync_nodes",
            "Nodes in each shard's in-sync set, the primary included.",
            c.in_sync_nodes()
                .into_iter()
                .map(|(t, s, v)| (vec![("topic", t), ("shard", s.to_string())], v)),
        )?;
        let (active, finished, records, bytes) = c.catchups();
        gauge(
            enc,
            "weir_cluster_catchups_active",
            "This node's copies catching up now (mirror_catchup_parallel at most).",
            [(Vec::new(), active)],
        )?;
        counter(
            enc,
            "weir_cluster_catchups_finished",
            "Catch-ups of this node's copies that finished since start.",
            [(Vec::new(), finished)],
        )?;
        counter(
            enc,
            "weir_cluster_catchup_bytes",
            "Bytes this node's catching-up copies fetched since start.",
            [(Vec::new(), bytes)],
        )?;
        counter(
            enc,
            "weir_cluster_catchup_records",
            "Records this node's catching-up copies fetched since start.",
            [(Vec::new(), records)],
        )
    }
}

//! Load agents: once a second (from `observe::run`), what each shard and the node did —
//! records and bytes in and out, lane depths, lane wait, produce and fetch latency,
//! CPU, memory, disk — into the broker's [`crate::load_history::LoadHistory`].
//!
//! The sample reads the same atomics `/metrics` reads (`crate::meters`, the shard
//! writers' `ClassStats`, `observe::process`) and differences them against the previous
//! second, so nothing is added to the produce or fetch path.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use weir_protocol::classes::{Class, CLASS_COUNT};

use crate::load_history::{NodePoint, ShardPoint};
use crate::meters::HistogramSnapshot;
use crate::state::BrokerState;

/// Counters of one shard at the previous sample.
#[derive(Debug, Default)]
struct ShardCounters {
    hwm: u64,
    bytes_in: u64,
    records_out: u64,
    bytes_out: u64,
    appends: u64,
    wait_us: u64,
    /// Lane waits of every class, summed.
    waits: HistogramSnapshot,
}

/// Counters of the node at the previous sample.
#[derive(Debug, Default)]
struct NodeCounters {
    records_in: u64,
    bytes_in: u64,
    records_out: u64,
    bytes_out: u64,
    produce: HistogramSnapshot,
    fetch: HistogramSnapshot,
    cpu_seconds: Option<f64>,
    at: Option<std::time::Instant>,
}

/// What the previous sample read, to difference against.
#[derive(Debug, Default)]
pub struct Sampler {
    node_prev: NodeCounters,
    shards: HashMap<(String, u32), ShardCounters>,
}

/// `new - old` per second over `secs`, saturating.
fn rate(new: u64, old: u64, secs: f64) -> f64 {
    new.saturating_sub(old) as f64 / secs
}

fn sat_u32(v: f64) -> u32 {
    v.clamp(0.0, u32::MAX as f64).round() as u32
}

fn us(seconds: f64) -> u32 {
    sat_u32(seconds * 1e6)
}

impl Sampler {
    /// Takes one sample of the node and of every shard (call once a second) into
    /// `state.load`. The first call (and a shard's first) only reads the counters.
    pub fn sample(&mut self, state: &BrokerState) {
        let now = std::time::Instant::now();
        let at_s = (crate::clock::now_ms() / 1000).clamp(0, i64::from(u32::MAX)) as u32;
        let history = &state.load;
        let secs = self
            .node_prev
            .at
            .map(|t| now.duration_since(t).as_secs_f64().max(1e-3));
        self.node_prev.at = Some(now);

        // Shards.
        let topics = state.topics.list();
        let mut seen: Vec<(String, u32)> = Vec::new();
        let mut node_out = (0u64, 0u64);
        let mut node_queued = [0u32; CLASS_COUNT];
        for t in &topics {
            node_out.0 += t.io.records_out.load(Ordering::Relaxed);
            node_out.1 += t.io.bytes_out.load(Ordering::Relaxed);
            for (i, s) in t.shards.iter().enumerate() {
                let stats = s.stats();
                let mut queued = [0u16; CLASS_COUNT];
                for c in Class::ALL {
                    let q = s.queued(c);
                    queued[c.index()] = q.min(u16::MAX as usize) as u16;
                    node_queued[c.index()] = node_queued[c.index()].saturating_add(q as u32);
                }
                let key = (t.name.clone(), i as u32);
                let c = ShardCounters {
                    hwm: s.reader().high_watermark(),
                    bytes_in: stats.io.bytes_in.load(Ordering::Relaxed),
                    records_out: stats.io.records_out.load(Ordering::Relaxed),
                    bytes_out: stats.io.bytes_out.load(Ordering::Relaxed),
                    appends: stats
                        .appends
                        .iter()
                        .map(|a| a.load(Ordering::Relaxed))
                        .sum(),
                    wait_us: stats
                        .wait_us
                        .iter()
                        .map(|a| a.load(Ordering::Relaxed))
                        .sum(),
                    waits: {
                        let mut w = HistogramSnapshot::default();
                        for h in &stats.wait_histogram {
                            w.add(&h.snapshot());
                        }
                        w
                    },
                };
                seen.push(key.clone());
                let Some(prev) = self.shards.get_mut(&key) else {
                    self.shards.insert(key, c);
                    continue;
                };
                if let Some(secs) = secs {
                    let records_in = rate(c.hwm, prev.hwm, secs);
                    let appends = c.appends.saturating_sub(prev.appends);
                    let p = ShardPoint {
                        at_s,
                        records_in: sat_u32(records_in),
                        bytes_in: sat_u32(rate(c.bytes_in, prev.bytes_in, secs)),
                        records_out: sat_u32(rate(c.records_out, prev.records_out, secs)),
                        bytes_out: sat_u32(rate(c.bytes_out, prev.bytes_out, secs)),
                        queued,
                        queue_wait_us_mean: c
                            .wait_us
                            .saturating_sub(prev.wait_us)
                            .checked_div(appends)
                            .unwrap_or(0)
                            .min(u64::from(u32::MAX))
                            as u32,
                        queue_wait_us_p99: us(c.waits.since(&prev.waits).quantile_bound(0.99)),
                    };
                    history.record_shard(&t.name, i as u32, p, records_in);
                }
                *prev = c;
            }
        }
        if self.shards.len() > seen.len() {
            let seen: std::collections::HashSet<_> = seen.into_iter().collect();
            self.shards.retain(|k, _| seen.contains(k));
            history.retain_shards(|t, s| seen.contains(&(t.to_string(), s)));
        }

        // Node.
        let m = &state.metrics;
        let records_in = m.produce_records_total.load(Ordering::Relaxed);
        let bytes_in = m.produce_bytes_total.load(Ordering::Relaxed);
        let produce = super::produce_total(state);
        let mut fetch = HistogramSnapshot::default();
        for h in &state.meters.fetch {
            fetch.add(&h.snapshot());
        }
        let process = super::process::process();
        let prev = &self.node_prev;
        if let Some(secs) = secs {
            let p = produce.since(&prev.produce);
            let cpu = match (process.cpu_seconds, prev.cpu_seconds) {
                (Some(a), Some(b)) => sat_u32((a - b).max(0.0) / secs * 1000.0),
                _ => 0,
            };
            let records_in_rate = rate(records_in, prev.records_in, secs);
            let point = NodePoint {
                at_s,
                records_in: records_in_rate.round() as u64,
                bytes_in: rate(bytes_in, prev.bytes_in, secs).round() as u64,
                records_out: rate(node_out.0, prev.records_out, secs).round() as u64,
                bytes_out: rate(node_out.1, prev.bytes_out, secs).round() as u64,
                queued: node_queued,
                produce_latency_us_p50: us(p.quantile_bound(0.5)),
                produce_latency_us_p99: us(p.quantile_bound(0.99)),
                fetch_latency_us_p99: us(fetch.since(&prev.fetch).quantile_bound(0.99)),
                cpu_permille: cpu,
                resident_bytes: process.resident_bytes.unwrap_or(0),
                disk_used_bytes: super::process::disk(&state.config.data_dir)
                    .map_or(0, |d| d.used_bytes),
            };
            history.record_node(point, records_in_rate);
        }
        self.node_prev = NodeCounters {
            records_in,
            bytes_in,
            records_out: node_out.0,
            bytes_out: node_out.1,
            produce,
            fetch,
            cpu_seconds: process.cpu_seconds,
            at: Some(now),
        };
    }
}

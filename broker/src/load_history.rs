//! The load history: what the load agents (`observe::sampler`) measured each second
//! of the node and of each shard, and what services report of their demand per message
//! type (client telemetry, `crate::telemetry`), kept in fixed-size rings — the last
//! hour at one second, the last day in one-minute buckets — with a forecast of each
//! series' rate (`crate::forecast`).
//!
//! Memory does not depend on traffic: each series holds [`SECOND_SLOTS`] +
//! [`MINUTE_SLOTS`] samples, at most [`SHARDS_MAX`] shards are followed (the first
//! seen; the node's series covers them all) and at most [`DEMANDS_MAX`] (service,
//! message type) pairs. The LoadHistory api (PROTOCOL.md), `weir
//! status` and the `weir_shard_*_per_second` gauges read it; resharding and routing
//! can call [`LoadHistory::answer`] or [`LoadHistory::latest`]. A leaf below the
//! shared state: it imports only `forecast`, `error` and the protocol.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use weir_protocol::classes::CLASS_COUNT;
use weir_protocol::messages::{
    DemandHistory, DemandSample, LoadForecast, LoadHistoryRequest, LoadHistoryResponse,
    NodeLoadSample, ShardLoadHistory, ShardLoadSample,
};
use weir_protocol::routing::ShardLoad;

use crate::error::BrokerError;
use crate::forecast::Selector;
use weir_protocol::error::ErrorCode;

/// One-second samples kept per series: one hour.
pub const SECOND_SLOTS: usize = 3600;
/// One-minute buckets kept per series: one day.
pub const MINUTE_SLOTS: usize = 1440;
/// Most shards followed. A shard sample is 36 bytes, so the rings of one shard take
/// about 180 KiB and all of them at most about 23 MiB.
pub const SHARDS_MAX: usize = 128;
/// Most (service, message type) demand series followed (the first reported): each
/// takes about 40 KiB, so at most about 10 MiB.
pub const DEMANDS_MAX: usize = 256;
/// Most samples in one LoadHistory answer, all series together (about 6 MiB).
pub const ANSWER_SAMPLES_MAX: usize = 65_536;
/// How far ahead the ingest forecast looks, in seconds.
pub const FORECAST_HORIZON_S: usize = 60;

/// A ring that keeps the newest `cap` values.
#[derive(Debug)]
pub struct Ring<T> {
    slots: Vec<T>,
    cap: usize,
    /// Where the next value goes once full.
    next: usize,
}

impl<T: Copy> Ring<T> {
    pub fn new(cap: usize) -> Self {
        Ring {
            slots: Vec::new(),
            cap: cap.max(1),
            next: 0,
        }
    }

    pub fn push(&mut self, v: T) {
        if self.slots.len() < self.cap {
            self.slots.push(v);
        } else {
            self.slots[self.next] = v;
        }
        self.next = (self.next + 1) % self.cap;
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The newest `n` values, oldest first.
    pub fn newest(&self, n: usize) -> Vec<T> {
        let len = self.slots.len();
        let n = n.min(len);
        let start = if len < self.cap {
            len - n
        } else {
            (self.next + self.cap - n) % self.cap
        };
        (0..n)
            .map(|i| self.slots[(start + i) % len.max(1)])
            .collect()
    }

    /// The newest value.
    pub fn last(&self) -> Option<T> {
        self.newest(1).first().copied()
    }
}

/// One second (or one minute bucket: means of the rates, maxima of the rest) of one
/// shard. Compact on purpose: rates saturate at `u32::MAX` per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardPoint {
    /// Unix seconds at the start of the interval.
    pub at_s: u32,
    pub records_in: u32,
    pub bytes_in: u32,
    pub records_out: u32,
    pub bytes_out: u32,
    /// Appends waiting in each class's lane at the sample.
    pub queued: [u16; CLASS_COUNT],
    /// Mean time appends written in the interval waited in their lane.
    pub queue_wait_us_mean: u32,
    /// The 99th percentile of those waits (upper bound of its histogram bucket).
    pub queue_wait_us_p99: u32,
}

/// One second (or one minute bucket: the mean) of one (service, message type)'s
/// demand: the rate its service's newest telemetry report gave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DemandPoint {
    pub at_s: u32,
    pub records: u32,
}

impl Bucket for DemandPoint {
    fn at_s(&self) -> u32 {
        self.at_s
    }
    fn set_at_s(&mut self, at_s: u32) {
        self.at_s = at_s;
    }
    fn absorb(&mut self, o: &Self) {
        self.records = self.records.saturating_add(o.records);
    }
    fn finish(&mut self, s: u32) {
        self.records /= s.max(1);
    }
}

/// What a service's newest telemetry report said of one message type
/// (`crate::telemetry`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Report {
    /// Records of the type the service sent (or handled) per second.
    pub sent_per_s: f64,
    /// The demand it expects, per second.
    pub expected_per_s: f64,
    /// Its own load, 0..=1.
    pub load: f64,
    /// Unix seconds of the report (its record's timestamp).
    pub at_s: i64,
}

/// One (service, message type): its samples and newest report.
#[derive(Debug)]
struct Demand {
    series: Series<DemandPoint>,
    report: Report,
}

/// One second (or one minute bucket) of the node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodePoint {
    pub at_s: u32,
    pub records_in: u64,
    pub bytes_in: u64,
    pub records_out: u64,
    pub bytes_out: u64,
    pub queued: [u32; CLASS_COUNT],
    /// Upper bounds of the latency buckets holding the quantile (the histograms'
    /// resolution, `crate::meters::LATENCY_BOUNDS_US`).
    pub produce_latency_us_p50: u32,
    pub produce_latency_us_p99: u32,
    pub fetch_latency_us_p99: u32,
    /// CPU time of the broker process per wall time, per mille of one core.
    pub cpu_permille: u32,
    pub resident_bytes: u64,
    /// Used bytes of the data directory's filesystem.
    pub disk_used_bytes: u64,
}

/// Folds one-second points into a one-minute bucket.
pub trait Bucket: Copy + Default {
    fn at_s(&self) -> u32;
    fn set_at_s(&mut self, at_s: u32);
    /// Adds a second: rates summed, gauges maxed.
    fn absorb(&mut self, other: &Self);
    /// Divides the summed rates by the seconds absorbed.
    fn finish(&mut self, seconds: u32);
}

impl Bucket for ShardPoint {
    fn at_s(&self) -> u32 {
        self.at_s
    }
    fn set_at_s(&mut self, at_s: u32) {
        self.at_s = at_s;
    }
    fn absorb(&mut self, o: &Self) {
        self.records_in = self.records_in.saturating_add(o.records_in);
        self.bytes_in = self.bytes_in.saturating_add(o.bytes_in);
        self.records_out = self.records_out.saturating_add(o.records_out);
        self.bytes_out = self.bytes_out.saturating_add(o.bytes_out);
        for (a, b) in self.queued.iter_mut().zip(o.queued) {
            *a = (*a).max(b);
        }
        self.queue_wait_us_mean = self.queue_wait_us_mean.max(o.queue_wait_us_mean);
        self.queue_wait_us_p99 = self.queue_wait_us_p99.max(o.queue_wait_us_p99);
    }
    fn finish(&mut self, s: u32) {
        let s = s.max(1);
        self.records_in /= s;
        self.bytes_in /= s;
        self.records_out /= s;
        self.bytes_out /= s;
    }
}

impl Bucket for NodePoint {
    fn at_s(&self) -> u32 {
        self.at_s
    }
    fn set_at_s(&mut self, at_s: u32) {
        self.at_s = at_s;
    }
    fn absorb(&mut self, o: &Self) {
        self.records_in += o.records_in;
        self.bytes_in += o.bytes_in;
        self.records_out += o.records_out;
        self.bytes_out += o.bytes_out;
        for (a, b) in self.queued.iter_mut().zip(o.queued) {
            *a = (*a).max(b);
        }
        self.produce_latency_us_p50 = self.produce_latency_us_p50.max(o.produce_latency_us_p50);
        self.produce_latency_us_p99 = self.produce_latency_us_p99.max(o.produce_latency_us_p99);
        self.fetch_latency_us_p99 = self.fetch_latency_us_p99.max(o.fetch_latency_us_p99);
        self.cpu_permille = self.cpu_permille.max(o.cpu_permille);
        self.resident_bytes = self.resident_bytes.max(o.resident_bytes);
        self.disk_used_bytes = self.disk_used_bytes.max(o.disk_used_bytes);
    }
    fn finish(&mut self, s: u32) {
        let s = u64::from(s.max(1));
        self.records_in /= s;
        self.bytes_in /= s;
        self.records_out /= s;
        self.bytes_out /= s;
    }
}

/// One series: its second and minute rings, the minute being filled, and the ingest
/// forecast.
#[derive(Debug)]
pub struct Series<P> {
    pub seconds: Ring<P>,
    pub minutes: Ring<P>,
    /// The minute being filled: (its first second, sum so far, seconds in it).
    open: Option<(P, u32)>,
    forecast: Selector,
}

impl<P: Bucket> Series<P> {
    fn new() -> Self {
        Series {
            seconds: Ring::new(SECOND_SLOTS),
            minutes: Ring::new(MINUTE_SLOTS),
            open: None,
            forecast: Selector::new(FORECAST_HORIZON_S, None),
        }
    }

    fn push(&mut self, p: P, records_in: f64) {
        self.seconds.push(p);
        self.forecast.update(records_in);
        let minute = p.at_s() / 60 * 60;
        match &mut self.open {
            Some((acc, n)) if acc.at_s() == minute => {
                acc.absorb(&p);
                *n += 1;
            }
            open => {
                if let Some((mut done, n)) = open.take() {
                    done.finish(n);
                    self.minutes.push(done);
                }
                let mut acc = P::default();
                acc.absorb(&p);
                acc.set_at_s(minute);
                *open = Some((acc, 1));
            }
        }
    }

    fn forecast(&self) -> LoadForecast {
        let f = self.forecast.forecast();
        let clamp = |v: f64| {
            if v.is_finite() {
                v.max(0.0).round() as u64
            } else {
                0
            }
        };
        LoadForecast {
            horizon_s: FORECAST_HORIZON_S as u32,
            records_in_per_s: clamp(f.value),
            low_per_s: clamp(f.low),
            high_per_s: clamp(f.high),
            model: f.model.to_string(),
        }
    }
}

#[derive(Debug)]
struct Inner {
    node: Series<NodePoint>,
    shards: HashMap<(String, u32), Series<ShardPoint>>,
    /// Each topic's newest figures per shard (index = shard), as placement reads them
    /// ([`LoadHistory::placement`]): one lookup per placed produce.
    placement: HashMap<String, Arc<Vec<Option<ShardLoad>>>>,
    /// Per (service, message type), from client telemetry.
    demands: HashMap<(String, String), Demand>,
}

/// The load history of this node and its shards.
#[derive(Debug)]
pub struct LoadHistory {
    inner: Mutex<Inner>,
}

impl Default for LoadHistory {
    fn default() -> Self {
        LoadHistory {
            inner: Mutex::new(Inner {
                node: Series::new(),
                shards: HashMap::new(),
                placement: HashMap::new(),
                demands: HashMap::new(),
            }),
        }
    }
}

impl LoadHistory {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds one second of the node; `records_in` feeds its forecast.
    pub fn record_node(&self, p: NodePoint, records_in: f64) {
        self.lock().node.push(p, records_in);
    }

    /// Adds one second of a shard, unless [`SHARDS_MAX`] other shards are followed.
    pub fn record_shard(&self, topic: &str, shard: u32, p: ShardPoint, records_in: f64) {
        let mut inner = self.lock();
        let key = (topic.to_string(), shard);
        let forecast = if let Some(s) = inner.shards.get_mut(&key) {
            s.push(p, records_in);
            s.forecast()
        } else if inner.shards.len() < SHARDS_MAX {
            let mut s = Series::new();
            s.push(p, records_in);
            let f = s.forecast();
            inner.shards.insert(key, s);
            f
        } else {
            return;
        };
        let load = ShardLoad {
            queued: p.queued.iter().map(|&q| u64::from(q)).sum(),
            queue_wait_us: u64::from(p.queue_wait_us_mean),
            records_in_per_s: f64::from(p.records_in),
            forecast_records_in_per_s: forecast.records_in_per_s as f64,
        };
        let slots = inner.placement.entry(topic.to_string()).or_default();
        let slots = Arc::make_mut(slots);
        let i = shard as usize;
        if slots.len() <= i {
            slots.resize(i + 1, None);
        }
        slots[i] = Some(load);
    }

    /// Adds one second of a (service, message type)'s demand, from its newest
    /// report, unless [`DEMANDS_MAX`] others are followed. False when it was not
    /// followed.
    pub fn record_demand(&self, service: &str, message_type: &str, at_s: u32, r: Report) -> bool {
        let mut inner = self.lock();
        let key = (service.to_string(), message_type.to_string());
        if !inner.demands.contains_key(&key) && inner.demands.len() >= DEMANDS_MAX {
            return false;
        }
        let d = inner.demands.entry(key).or_insert_with(|| Demand {
            series: Series::new(),
            report: r,
        });
        let records = r.sent_per_s.clamp(0.0, f64::from(u32::MAX)).round() as u32;
        d.series
            .push(DemandPoint { at_s, records }, f64::from(records));
        d.report = r;
        true
    }

    /// Forgets the (service, message type) pairs with no sample since `before_s`
    /// (Unix seconds), so pairs whose services stopped reporting free their places
    /// among the [`DEMANDS_MAX`] followed.
    pub fn forget_demands_before(&self, before_s: u32) {
        self.lock()
            .demands
            .retain(|_, d| d.series.seconds.last().is_some_and(|p| p.at_s >= before_s));
    }

    /// The newest demand of each followed (service, message type), with its report
    /// and forecast, sorted (for `/metrics`).
    pub fn latest_demands(&self) -> Vec<(String, String, DemandPoint, Report, LoadForecast)> {
        let inner = self.lock();
        let mut out: Vec<_> = inner
            .demands
            .iter()
            .filter_map(|((s, t), d)| {
                Some((
                    s.clone(),
                    t.clone(),
                    d.series.seconds.last()?,
                    d.report,
                    d.series.forecast(),
                ))
            })
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    /// The newest figures of `topic`'s shards (index = shard; `None` for a shard not
    /// sampled yet or not followed), for placing a keyless produce.
    pub fn placement(&self, topic: &str) -> Option<Arc<Vec<Option<ShardLoad>>>> {
        self.lock().placement.get(topic).cloned()
    }

    /// Forgets every shard `keep` says is gone (a deleted topic).
    pub fn retain_shards(&self, mut keep: impl FnMut(&str, u32) -> bool) {
        let mut inner = self.lock();
        inner.shards.retain(|(t, s), _| keep(t, *s));
        inner.placement.retain(|t, slots| {
            let slots = Arc::make_mut(slots);
            for (s, slot) in slots.iter_mut().enumerate() {
                if !keep(t, s as u32) {
                    *slot = None;
                }
            }
            slots.iter().any(Option::is_some)
        });
    }

    /// The newest one-second point of each followed shard with its ingest forecast,
    /// sorted by topic then shard (for `/metrics`).
    pub fn latest(&self) -> Vec<(String, u32, ShardPoint, LoadForecast)> {
        let inner = self.lock();
        let mut out: Vec<_> = inner
            .shards
            .iter()
            .filter_map(|((t, s), series)| {
                Some((t.clone(), *s, series.seconds.last()?, series.forecast()))
            })
            .collect();
        out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        out
    }

    /// The newest one-second point of the node.
    pub fn latest_node(&self) -> Option<NodePoint> {
        self.lock().node.seconds.last()
    }

    /// Answers a LoadHistory request.
    pub fn answer(&self, req: &LoadHistoryRequest) -> Result<LoadHistoryResponse, BrokerError> {
        let minutes = match req.resolution_s {
            1 => false,
            60 => true,
            r => {
                return Err(BrokerError::new(
                    ErrorCode::InvalidRequest,
                    format!("resolution_s must be 1 or 60, not {r}"),
                ))
            }
        };
        let inner = self.lock();
        let mut keys: Vec<&(String, u32)> = inner
            .shards
            .keys()
            .filter(|(t, _)| req.topic.is_empty() || *t == req.topic)
            .collect();
        keys.sort();
        let cap = if minutes { MINUTE_SLOTS } else { SECOND_SLOTS };
        let asked = match req.max_samples {
            0 => cap,
            n => (n as usize).min(cap),
        };
        // Demand is per service, not per topic: answered for the whole node only.
        let mut demand_keys: Vec<&(String, String)> = if req.topic.is_empty() {
            inner.demands.keys().collect()
        } else {
            Vec::new()
        };
        demand_keys.sort();
        let series_count = keys.len() + demand_keys.len() + 1;
        let per_series = asked.min(ANSWER_SAMPLES_MAX / series_count).max(1);
        let pick = |s: &Series<NodePoint>| {
            if minutes {
                s.minutes.newest(per_series)
            } else {
                s.seconds.newest(per_series)
            }
        };
        let node = pick(&inner.node).iter().map(node_sample).collect();
        let shards = keys
            .into_iter()
            .map(|k| {
                let series = &inner.shards[k];
                let points = if minutes {
                    series.minutes.newest(per_series)
                } else {
                    series.seconds.newest(per_series)
                };
                ShardLoadHistory {
                    topic: k.0.clone(),
                    shard: k.1,
                    forecast: series.forecast(),
                    samples: points.iter().map(shard_sample).collect(),
                }
            })
            .collect();
        let demands = demand_keys
            .into_iter()
            .map(|k| {
                let d = &inner.demands[k];
                let points = if minutes {
                    d.series.minutes.newest(per_series)
                } else {
                    d.series.seconds.newest(per_series)
                };
                DemandHistory {
                    service: k.0.clone(),
                    message_type: k.1.clone(),
                    forecast: d.series.forecast(),
                    expected_per_s: d.report.expected_per_s.max(0.0).round() as u64,
                    load_permille: (d.report.load.clamp(0.0, 1.0) * 1000.0).round() as u32,
                    reported_at_s: d.report.at_s,
                    samples: points
                        .iter()
                        .map(|p| DemandSample {
                            at_s: i64::from(p.at_s),
                            records_per_s: u64::from(p.records),
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(LoadHistoryResponse {
            resolution_s: req.resolution_s,
            node_forecast: inner.node.forecast(),
            node,
            shards,
            demands,
        })
    }
}

fn node_sample(p: &NodePoint) -> NodeLoadSample {
    NodeLoadSample {
        at_s: i64::from(p.at_s),
        records_in_per_s: p.records_in,
        bytes_in_per_s: p.bytes_in,
        records_out_per_s: p.records_out,
        bytes_out_per_s: p.bytes_out,
        queued: p.queued.to_vec(),
        produce_latency_us_p50: u64::from(p.produce_latency_us_p50),
        produce_latency_us_p99: u64::from(p.produce_latency_us_p99),
        fetch_latency_us_p99: u64::from(p.fetch_latency_us_p99),
        cpu_permille: p.cpu_permille,
        resident_bytes: p.resident_bytes,
        disk_used_bytes: p.disk_used_bytes,
    }
}

fn shard_sample(p: &ShardPoint) -> ShardLoadSample {
    ShardLoadSample {
        at_s: i64::from(p.at_s),
        records_in_per_s: u64::from(p.records_in),
        bytes_in_per_s: u64::from(p.bytes_in),
        records_out_per_s: u64::from(p.records_out),
        bytes_out_per_s: u64::from(p.bytes_out),
        queued: p.queued.iter().map(|&q| u32::from(q)).collect(),
        queue_wait_us_mean: u64::from(p.queue_wait_us_mean),
        queue_wait_us_p99: u64::from(p.queue_wait_us_p99),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demand_pairs_beyond_the_maximum_wait_until_a_silent_pair_is_forgotten() {
        let h = LoadHistory::default();
        let r = Report {
            sent_per_s: 5.0,
            ..Default::default()
        };
        for i in 0..DEMANDS_MAX {
            assert!(h.record_demand("s", &format!("t{i}"), 100, r));
        }
        assert!(!h.record_demand("s", "late", 100, r), "beyond the maximum");
        // t0 goes on reporting; the others fall silent and are forgotten.
        assert!(h.record_demand("s", "t0", 5000, r));
        h.forget_demands_before(5000 - 3600);
        assert_eq!(h.latest_demands().len(), 1);
        assert!(h.record_demand("s", "late", 5001, r), "a place came free");
        assert_eq!(h.latest_demands().len(), 2);
    }

    #[test]
    fn placement_figures_follow_the_newest_sample_and_forget_deleted_shards() {
        let h = LoadHistory::default();
        assert!(h.placement("t").is_none());
        let p = |at_s, records_in, wait| ShardPoint {
            at_s,
            records_in,
            queued: [1, 0, 2, 0],
            queue_wait_us_mean: wait,
            ..Default::default()
        };
        h.record_shard("t", 2, p(100, 50, 7), 50.0);
        h.record_shard("t", 2, p(101, 80, 9), 80.0);
        h.record_shard("t", 0, p(101, 10, 1), 10.0);
        let f = h.placement("t").expect("figures");
        assert_eq!(f.len(), 3);
        assert!(f[1].is_none());
        let two = f[2].expect("shard 2");
        assert_eq!(
            (two.queued, two.queue_wait_us, two.records_in_per_s),
            (3, 9, 80.0)
        );
        h.retain_shards(|_, s| s != 2);
        let f = h.placement("t").expect("shard 0 kept");
        assert!(f[0].is_some() && f[2].is_none());
        h.retain_shards(|_, _| false);
        assert!(h.placement("t").is_none(), "a deleted topic has no figures");
    }

    #[test]
    fn a_ring_keeps_the_newest_values_in_order() {
        let mut r = Ring::new(3);
        assert!(r.is_empty() && r.newest(5).is_empty());
        r.push(1);
        r.push(2);
        assert_eq!(r.newest(5), vec![1, 2]);
        for v in 3..=7 {
            r.push(v);
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.newest(3), vec![5, 6, 7]);
        assert_eq!(r.newest(2), vec![6, 7]);
        assert_eq!(r.last(), Some(7));
    }

    #[test]
    fn seconds_fold_into_minute_buckets_with_mean_rates_and_max_gauges() {
        let mut s: Series<ShardPoint> = Series::new();
        for i in 0..120u32 {
            let p = ShardPoint {
                at_s: 6000 + i,
                records_in: if i < 60 { 10 } else { 30 },
                queued: [i as u16, 0, 0, 0],
                ..ShardPoint::default()
            };
            s.push(p, f64::from(p.records_in));
        }
        s.push(
            ShardPoint {
                at_s: 6120,
                ..ShardPoint::default()
            },
            0.0,
        );
        let m = s.minutes.newest(10);
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].at_s, m[0].records_in, m[0].queued[0]), (6000, 10, 59));
        assert_eq!(
            (m[1].at_s, m[1].records_in, m[1].queued[0]),
            (6060, 30, 119)
        );
        assert_eq!(s.seconds.len(), 121);
    }

    #[test]
    fn memory_is_bounded_by_the_rings_whatever_the_samples() {
        let mut s: Series<NodePoint> = Series::new();
        for i in 0..(SECOND_SLOTS as u32 + 200 * 60) {
            s.push(
                NodePoint {
                    at_s: i,
                    ..NodePoint::default()
                },
                1.0,
            );
        }
        assert_eq!(s.seconds.len(), SECOND_SLOTS);
        assert!(s.minutes.len() <= MINUTE_SLOTS);
        assert_eq!(std::mem::size_of::<ShardPoint>(), 36);
    }
}

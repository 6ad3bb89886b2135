//! Meters recorded on the hot path: lock-free histograms and per-topic counters.
//!
//! A produce, a fetch or a shard writer's append must not take a lock to be measured,
//! so every meter here is a fixed set of atomics bumped with relaxed `fetch_add`s; the
//! `/metrics` scrape (`observe::collect`) reads them and hands them to the Prometheus
//! encoder. A leaf: it imports nothing of the broker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use weir_protocol::batch::BatchHeader;
use weir_protocol::classes::{ClassMap, CLASS_COUNT};

/// Upper bounds (µs) of the latency buckets: 100 µs to 10 s.
pub const LATENCY_BOUNDS_US: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Upper bounds (µs) of the record-age buckets: 1 ms to 1 h.
pub const AGE_BOUNDS_US: &[u64] = &[
    1_000,
    5_000,
    10_000,
    50_000,
    100_000,
    500_000,
    1_000_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
    900_000_000,
    3_600_000_000,
];

/// A histogram of durations with fixed buckets: one relaxed `fetch_add` on the bucket
/// and one on the sum per observation.
#[derive(Debug)]
pub struct Histogram {
    bounds_us: &'static [u64],
    /// One more than `bounds_us`: the last counts what is above every bound.
    buckets: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::with_bounds(LATENCY_BOUNDS_US)
    }
}

/// What a scrape reads from a [`Histogram`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound in seconds, observations in this bucket alone), finite bounds only.
    pub buckets: Vec<(f64, u64)>,
    /// Every observation, the overflow bucket's included.
    pub count: u64,
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    /// Adds another snapshot with the same bounds (shards summed into one series).
    pub fn add(&mut self, other: &HistogramSnapshot) {
        if self.buckets.is_empty() {
            self.buckets = other.buckets.iter().map(|&(b, _)| (b, 0)).collect();
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            a.1 += b.1;
        }
        self.count += other.count;
        self.sum_seconds += other.sum_seconds;
    }

    /// Mean observation in seconds (0 when empty).
    pub fn mean_seconds(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_seconds / self.count as f64
        }
    }

    /// The upper bound (seconds) of the bucket holding the `q` quantile (0..=1); the
    /// largest bound when it is above all of them; 0 when empty.
    pub fn quantile_bound(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let want = (self.count as f64 * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for &(bound, n) in &self.buckets {
            seen += n;
            if seen >= want {
                return bound;
            }
        }
        self.buckets.last().map_or(0.0, |b| b.0)
    }

    /// This snapshot minus an earlier one of the same histogram.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: self
                .buckets
                .iter()
                .zip(earlier.buckets.iter().chain(std::iter::repeat(&(0.0, 0))))
                .map(|(&(b, n), &(_, m))| (b, n.saturating_sub(m)))
                .collect(),
            count: self.count.saturating_sub(earlier.count),
            sum_seconds: (self.sum_seconds - earlier.sum_seconds).max(0.0),
        }
    }
}

impl Histogram {
    /// An empty histogram with these bucket bounds (µs, increasing).
    pub fn with_bounds(bounds_us: &'static [u64]) -> Self {
        Histogram {
            bounds_us,
            buckets: (0..=bounds_us.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records one observation of `us` microseconds.
    pub fn observe_us(&self, us: u64) {
        let i = self.bounds_us.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        self.observe_us(d.as_micros().min(u128::from(u64::MAX)) as u64);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut count = 0;
        let buckets = self
            .bounds_us
            .iter()
            .zip(self.buckets.iter())
            .map(|(&b, n)| {
                let n = n.load(Ordering::Relaxed);
                count += n;
                (b as f64 / 1e6, n)
            })
            .collect();
        count += self.buckets[self.bounds_us.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            count,
            sum_seconds: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// Ack levels a produce may ask for, as labelled in `/metrics`.
pub const ACK_LEVELS: [&str; 4] = ["none", "leader", "durable", "mirrored"];

/// Apis that deliver records, as labelled in `weir_fetch_latency_seconds`.
pub const FETCH_APIS: [&str; 3] = ["fetch", "priority_fetch", "queue_fetch"];

/// Index of `FETCH_APIS` entries.
pub mod fetch_api {
    pub const FETCH: usize = 0;
    pub const PRIORITY_FETCH: usize = 1;
    pub const QUEUE_FETCH: usize = 2;
}

/// Where the cluster layer publishes its gauges for `/metrics` and the status page:
/// set once (`Meters::cluster`) by whatever runs replication.
pub trait ClusterGauges: std::fmt::Debug + Send + Sync {
    /// One entry per (topic, shard, mirror node): records the mirror is behind.
    fn mirror_lag_records(&self) -> Vec<(String, u32, String, u64)>;
    /// One entry per (topic, shard): nodes in its in-sync set, the primary included.
    fn in_sync_nodes(&self) -> Vec<(String, u32, u64)>;
    /// The nodes (id, address, alive, consensus role) and each shard's placement
    /// (topic, shard, primary or 0, epoch, replicas, in-sync set), for the status page.
    fn placement(&self) -> ClusterPlacement;
    /// Catch-ups of this node's lagging copies: (running now, finished, records
    /// copied, bytes copied) since start.
    fn catchups(&self) -> (u64, u64, u64, u64);
}

/// What the status page shows of the cluster.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ClusterPlacement {
    pub node_id: u64,
    pub controller: u64,
    pub nodes: Vec<NodePlacement>,
    pub shards: Vec<ShardCopies>,
}

/// One node as the status page shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodePlacement {
    pub id: u64,
    pub addr: String,
    pub alive: bool,
    pub role: String,
}

/// One shard's copies as the status page shows them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShardCopies {
    pub topic: String,
    pub shard: u32,
    pub primary: u64,
    pub epoch: u32,
    pub replicas: Vec<u64>,
    pub in_sync: Vec<u64>,
}

/// Broker-wide histograms and counters of the request paths.
#[derive(Debug)]
pub struct Meters {
    /// Produce latency from decode to answer, `[class][ack level]`.
    pub produce: [[Histogram; ACK_LEVELS.len()]; CLASS_COUNT],
    /// Fetch latency from decode to answer (long-poll waits included), by api.
    pub fetch: [Histogram; FETCH_APIS.len()],
    /// Age of delivered records (now minus the batch's first timestamp), per class.
    pub delivery_age: [Histogram; CLASS_COUNT],
    /// Requests slower than `slow_request_ms`.
    pub slow_requests: AtomicU64,
    /// Records in produces refused with SHED, per class.
    pub shed_records: [AtomicU64; CLASS_COUNT],
    /// Cluster gauges, once a cluster layer registers them (hook; none standalone).
    pub cluster: OnceLock<Arc<dyn ClusterGauges>>,
}

impl Default for Meters {
    fn default() -> Self {
        Meters {
            produce: std::array::from_fn(|_| std::array::from_fn(|_| Histogram::default())),
            fetch: std::array::from_fn(|_| Histogram::default()),
            delivery_age: std::array::from_fn(|_| Histogram::with_bounds(AGE_BOUNDS_US)),
            slow_requests: AtomicU64::new(0),
            shed_records: Default::default(),
            cluster: OnceLock::new(),
        }
    }
}

/// Records and bytes into and out of one topic (all its shards).
#[derive(Debug, Default)]
pub struct TopicIo {
    pub records_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub records_out: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl TopicIo {
    /// Counts records and bytes a produce stored.
    pub fn produced(&self, records: u64, bytes: u64) {
        self.records_in.fetch_add(records, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts records and bytes a fetch delivered.
    pub fn delivered(&self, records: u64, bytes: u64) {
        self.records_out.fetch_add(records, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Counts what a fetch delivers from `chunks` (log bytes holding whole batches):
/// records and bytes on the topic's counters, and each batch's age (`now_ms` minus its
/// first timestamp) in its class's `delivery_age`. Reads batch headers only. Returns
/// the (records, bytes) counted, for the shard's own counters.
pub fn count_delivery<'a>(
    meters: &Meters,
    io: &TopicIo,
    classes: &ClassMap,
    chunks: impl IntoIterator<Item = &'a [u8]>,
    now_ms: i64,
) -> (u64, u64) {
    let (mut records, mut bytes) = (0u64, 0u64);
    for chunk in chunks {
        bytes += chunk.len() as u64;
        let mut rest = chunk;
        while let Ok(h) = BatchHeader::read(rest) {
            records += u64::from(h.record_count);
            let age_ms = now_ms.saturating_sub(h.base_timestamp_ms).max(0) as u64;
            meters.delivery_age[classes.class_of(h.priority).index()]
                .observe_us(age_ms.saturating_mul(1000));
            match rest.get(h.total_bytes()..) {
                Some(r) if !r.is_empty() => rest = r,
                _ => break,
            }
        }
    }
    io.delivered(records, bytes);
    (records, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_is_not_below_them() {
        let h = Histogram::default();
        h.observe_us(100); // on the first bound
        h.observe_us(101); // next bucket
        h.observe_us(20_000_000); // above all
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.0001, 1));
        assert_eq!(s.buckets[1], (0.00025, 1));
        assert_eq!(s.buckets.iter().map(|b| b.1).sum::<u64>(), 2);
        assert!((s.sum_seconds - 20.000201).abs() < 1e-9);
        assert_eq!(s.quantile_bound(0.5), 0.00025);
        assert_eq!(s.quantile_bound(1.0), 10.0);
    }

    #[test]
    fn snapshots_add_and_subtract() {
        let h = Histogram::default();
        h.observe_us(300);
        let a = h.snapshot();
        h.observe_us(300);
        h.observe_us(2_000_000);
        let b = h.snapshot();
        let d = b.since(&a);
        assert_eq!(d.count, 2);
        assert!((d.mean_seconds() - 1.00015).abs() < 1e-9);
        let mut sum = HistogramSnapshot::default();
        sum.add(&a);
        sum.add(&b);
        assert_eq!(sum.count, 4);
        assert_eq!(sum.buckets[2].1, 3);
    }

    proptest::proptest! {
        /// Log bytes of any shape (a torn or corrupt chunk) are walked without panic
        /// or endless loop, and counted as bytes.
        #[test]
        fn delivery_counting_survives_any_bytes(
            chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..300), 0..4),
            now_ms in proptest::num::i64::ANY,
        ) {
            let m = Meters::default();
            let io = TopicIo::default();
            count_delivery(&m, &io, &ClassMap::default(), chunks.iter().map(|c| c.as_slice()), now_ms);
            let total: usize = chunks.iter().map(|c| c.len()).sum();
            proptest::prop_assert_eq!(io.bytes_out.load(Ordering::Relaxed), total as u64);
        }
    }

    #[test]
    fn delivery_counts_records_and_ages_by_class() {
        use weir_protocol::batch::{BatchBuilder, NewRecord};
        let batch = |n: usize, ts: i64| {
            let mut b = BatchBuilder::new();
            for _ in 0..n {
                b.push(&NewRecord::value(ts, b"v")).unwrap();
            }
            b.finish().unwrap()
        };
        let (a, b) = (batch(3, 1_000), batch(2, 1_000));
        let class = ClassMap::default()
            .class_of(BatchHeader::read(&a).unwrap().priority)
            .index();
        let chunk: Vec<u8> = [a.as_ref(), b.as_ref()].concat();
        let m = Meters::default();
        let io = TopicIo::default();
        count_delivery(&m, &io, &ClassMap::default(), [chunk.as_slice()], 3_000);
        assert_eq!(io.records_out.load(Ordering::Relaxed), 5);
        assert_eq!(io.bytes_out.load(Ordering::Relaxed), chunk.len() as u64);
        let age = m.delivery_age[class].snapshot();
        assert_eq!(age.count, 2, "one observation per batch");
        assert!((age.mean_seconds() - 2.0).abs() < 1e-9);
    }
}

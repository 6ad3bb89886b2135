//! What every mode shares while it runs: the settings, the clock the figures count
//! from, the progress counters, and how producers and consumers split the shards.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Map};
use weir_protocol::batch::{BATCH_HEADER_BYTES, RECORD_MIN_BYTES};

use super::args::{Args, Mode};
use super::mix::CLASS_NAMES;
use super::plot::{Curve, PlotData};

/// When a producer (or the run) stops.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// After this many measured messages.
    Messages(u64),
    /// At this instant.
    Until(Instant),
}

impl Stop {
    /// `--duration` after the warmup, else `--messages` (default 1,000,000).
    pub fn of(run: &Run) -> Stop {
        match run.cli.duration {
            Some(d) => Stop::Until(run.warmup_end + Duration::from_secs_f64(d)),
            None => Stop::Messages(run.cli.messages.unwrap_or(1_000_000)),
        }
    }

    /// The progress bar's length: known only when counting messages.
    pub fn total(self) -> Option<u64> {
        match self {
            Stop::Messages(m) => Some(m),
            Stop::Until(_) => None,
        }
    }
}

/// Fixed for the whole run.
pub struct Run {
    pub cli: Args,
    pub shards: u32,
    /// Everything is timed from here; e2e payloads carry nanoseconds since `base`.
    pub base: Instant,
    pub warmup_end: Instant,
    /// Messages handed to producers / taken from consumers so far (progress display).
    pub progress: AtomicU64,
    /// (seconds since `base`, messages per second) every half second, for `--plot`.
    pub samples: Mutex<Vec<(f64, f64)>>,
    /// Messages sent by all producers (for e2e's consumers to know when to stop).
    pub sent: AtomicU64,
    pub producers_done: AtomicBool,
    /// Without --in-flight: each producer lane's adaptive window when it finished.
    pub windows: Mutex<Vec<usize>>,
}

impl Run {
    /// Starts the clock: warmup and every figure count from now.
    pub fn new(cli: Args, shards: u32) -> Arc<Run> {
        let base = Instant::now();
        Arc::new(Run {
            warmup_end: base + Duration::from_secs_f64(cli.warmup),
            cli,
            shards,
            base,
            progress: AtomicU64::new(0),
            samples: Mutex::new(Vec::new()),
            sent: AtomicU64::new(0),
            producers_done: AtomicBool::new(false),
            windows: Mutex::new(Vec::new()),
        })
    }

    /// The producers' `max_batch_bytes`: exactly `--batch` records of `--size` bytes.
    pub fn max_batch_bytes(&self) -> usize {
        BATCH_HEADER_BYTES + self.cli.batch * (RECORD_MIN_BYTES + self.cli.size)
    }

    /// The run's settings as the report's `settings` object.
    pub fn settings(&self) -> Map<String, serde_json::Value> {
        let c = &self.cli;
        let mut m = Map::new();
        m.insert("producers".into(), json!(c.producers));
        if c.mode != Mode::Produce {
            m.insert("consumers".into(), json!(c.consumers));
        }
        m.insert("shards".into(), json!(self.shards));
        m.insert("size".into(), json!(c.size));
        m.insert("batch".into(), json!(c.batch));
        m.insert("linger_ms".into(), json!(c.linger_ms));
        m.insert("api".into(), json!(c.api.name()));
        m.insert("acks".into(), json!(c.acks.name()));
        if c.replicas != 0 || c.min_in_sync != 0 {
            m.insert("replicas".into(), json!(c.replicas));
            m.insert("min_in_sync".into(), json!(c.min_in_sync));
        }
        m.insert(
            "in_flight".into(),
            c.in_flight.map_or(json!("adaptive"), |n| json!(n)),
        );
        m.insert("rate".into(), json!(c.rate));
        if c.rate.is_some() && matches!(c.mode, Mode::Produce | Mode::E2e) {
            m.insert(
                "pacing_tick_us".into(),
                json!(c.pacing_tick_us.unwrap_or(0)),
            );
        }
        m.insert(
            "priority_mix".into(),
            json!(c.priority_mix.as_ref().map(|m| m.to_string())),
        );
        if c.mode != Mode::Produce {
            m.insert(
                "order".into(),
                json!(format!("{:?}", c.order).to_lowercase()),
            );
            m.insert("fetch_bytes".into(), json!(c.fetch_bytes()));
        }
        m.insert("class_per_producer".into(), json!(c.class_per_producer));
        m.insert("warmup_s".into(), json!(c.warmup));
        m.insert("embedded".into(), json!(c.embedded));
        let transport = if c.embedded {
            c.transport.name()
        } else {
            "tcp"
        };
        m.insert("transport".into(), json!(transport));
        m.insert("huge_pages".into(), json!(c.huge_pages));
        m.insert(
            "durability".into(),
            json!(format!("{:?}", c.durability).to_lowercase()),
        );
        m
    }

    /// The curves (all, then each class of the mix) and throughput samples to plot.
    pub fn plot_data(&self, all: &Histogram<u64>, classes: &[Histogram<u64>; 4]) -> PlotData {
        let c = &self.cli;
        let mut curves = vec![Curve::from_histogram("all", all)];
        if let Some(m) = &c.priority_mix {
            for k in m.classes() {
                curves.push(Curve::from_histogram(CLASS_NAMES[k], &classes[k]));
            }
        }
        PlotData {
            title: format!(
                "weir-bench {} — {} B messages, {} producers, {} shards",
                c.mode.name(),
                c.size,
                c.producers,
                self.shards
            ),
            curves,
            throughput: self.samples.lock().map(|v| v.clone()).unwrap_or_default(),
        }
    }
}

/// Shards of worker `i` of `n` over `shards` shards.
pub fn shards_of(i: usize, n: usize, shards: u32) -> Vec<u32> {
    let mine: Vec<u32> = (0..shards).filter(|s| *s as usize % n == i).collect();
    if mine.is_empty() {
        vec![(i as u32) % shards]
    } else {
        mine
    }
}

/// Splits `total` over `n` workers.
pub fn share(total: u64, n: usize, i: usize) -> u64 {
    total / n as u64 + u64::from((i as u64) < total % n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_and_differ_by_at_most_one() {
        let parts: Vec<u64> = (0..3).map(|i| share(10, 3, i)).collect();
        assert_eq!(parts, vec![4, 3, 3]);
    }

    #[test]
    fn every_shard_has_one_worker_and_extra_workers_wrap() {
        assert_eq!(shards_of(0, 2, 5), vec![0, 2, 4]);
        assert_eq!(shards_of(1, 2, 5), vec![1, 3]);
        assert_eq!(shards_of(3, 4, 2), vec![1]);
    }
}

//! `weir-bench ramp`: does prediction pay? A topic that starts with one shard gets a
//! 5× ramp (by default `--rate / 5` → `--rate` records/s over `--ramp-s`, with
//! `--hold-s` before and after) on an embedded broker with automatic sharding on, once
//! with `auto_reshard_mode = predictive` and once `reactive`, each on a fresh broker.
//! Reports per 10 s window the offered rate and the produce latency (intended send
//! time → acknowledgement) p50/p99, the time and reason of every reshard, and the p99
//! of the worst window after the ramp started against the pre-ramp p99.
//!
//! The shard capacity the sharder plans with is `--capacity` records/s (default twice
//! the starting rate, so the start runs at 50 % and the end needs about four shards).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use weir_client::embedded::EmbeddedBroker;
use weir_client::{Admin, Producer, ProducerRecord};

use super::args::Args;

const TOPIC: &str = "ramp";
const WINDOW_S: u64 = 10;

/// The run's shape: records/s at `t` seconds.
#[derive(Debug, Clone, Copy)]
struct Shape {
    from: f64,
    to: f64,
    hold_s: f64,
    ramp_s: f64,
}

impl Shape {
    fn rate_at(&self, t: f64) -> f64 {
        if t < self.hold_s {
            self.from
        } else if t < self.hold_s + self.ramp_s {
            self.from + (self.to - self.from) * (t - self.hold_s) / self.ramp_s
        } else {
            self.to
        }
    }

    fn total_s(&self) -> f64 {
        self.hold_s * 2.0 + self.ramp_s
    }

    /// Records due by `t` (the integral of the rate).
    fn due(&self, t: f64) -> f64 {
        let h = self.hold_s;
        let r = self.ramp_s;
        if t < h {
            self.from * t
        } else if t < h + r {
            let x = t - h;
            self.from * h + self.from * x + (self.to - self.from) * x * x / (2.0 * r)
        } else {
            self.from * h + (self.from + self.to) * r / 2.0 + self.to * (t - h - r)
        }
    }
}

/// Runs both modes and returns one JSON object.
pub async fn run_ramp(cli: Args) -> anyhow::Result<serde_json::Value> {
    let to = cli.rate.unwrap_or(100_000.0);
    let shape = Shape {
        from: cli.from_rate.unwrap_or(to / 5.0),
        to,
        hold_s: cli.hold_s,
        ramp_s: cli.ramp_s,
    };
    let capacity = cli.capacity.unwrap_or(shape.from * 2.0).max(1.0) as u64;
    let mut out = serde_json::Map::new();
    for mode in ["predictive", "reactive"] {
        if !cli.json {
            eprintln!(
                "ramp: {mode} run, {:.0} → {:.0} records/s",
                shape.from, shape.to
            );
        }
        let r = one_run(&cli, shape, capacity, mode).await?;
        out.insert(mode.to_string(), r);
    }
    Ok(json!({
        "mode": "ramp",
        "from_per_s": shape.from,
        "to_per_s": shape.to,
        "hold_s": shape.hold_s,
        "ramp_s": shape.ramp_s,
        "size": cli.size,
        "capacity_per_shard": capacity,
        "window_s": WINDOW_S,
        "runs": out,
    }))
}

async fn one_run(
    cli: &Args,
    shape: Shape,
    capacity: u64,
    mode: &str,
) -> anyhow::Result<serde_json::Value> {
    let dir = super::target::TempDir::new()?;
    let env = [
        ("WEIR_AUTO_RESHARD".to_string(), "true".to_string()),
        ("WEIR_AUTO_RESHARD_MODE".to_string(), mode.to_string()),
        (
            "WEIR_SHARD_CAPACITY_RECORDS_PER_S".to_string(),
            capacity.to_string(),
        ),
        ("WEIR_AUTO_RESHARD_INTERVAL_S".to_string(), "10".to_string()),
        ("WEIR_AUTO_RESHARD_COLD_S".to_string(), "3600".to_string()),
    ];
    let config = weir_broker::Config {
        listen: "127.0.0.1:0".parse()?,
        http: "127.0.0.1:0".parse()?,
        data_dir: dir.0.clone(),
        ..weir_broker::Config::load(None, std::env::vars().chain(env)).context("broker settings")?
    };
    let broker = EmbeddedBroker::start(config)
        .await
        .context("embedded broker")?;
    let client = broker.client().await?;
    Admin::new(client.clone())
        .create_topic(TOPIC, 1, Default::default())
        .await?;
    let producer = Producer::builder(&client).build().await?;
    let started = Instant::now();
    let total = shape.total_s();
    let windows = (total / WINDOW_S as f64).ceil() as usize;
    let hist = Arc::new(std::sync::Mutex::new(
        (0..windows)
            .map(|_| Histogram::<u64>::new_with_bounds(1, 60_000_000, 3))
            .collect::<Result<Vec<_>, _>>()?,
    ));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Acknowledgements, timed from their intended send time.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let collector = {
        let (hist, errors) = (hist.clone(), errors.clone());
        tokio::spawn(async move {
            let mut pending = FuturesUnordered::new();
            loop {
                tokio::select! {
                    got = rx.recv() => match got {
                        Some((at, f)) => pending.push(async move { (at, f.await) }),
                        None => break,
                    },
                    Some((at, r)) = pending.next(), if !pending.is_empty() => {
                        record(&hist, &errors, started, at, r);
                    }
                }
            }
            while let Some((at, r)) = pending.next().await {
                record(&hist, &errors, started, at, r);
            }
        })
    };
    // The topic's reshards, as the monitor sees them.
    let actions = Arc::new(std::sync::Mutex::new(Vec::new()));
    let monitor = {
        let (admin, actions) = (Admin::new(client.clone()), actions.clone());
        tokio::spawn(async move {
            let mut seen = 0;
            while started.elapsed().as_secs_f64() < total + 1.0 {
                if let Ok(t) = admin.describe_topic(TOPIC).await {
                    for r in t.reshards.iter().skip(seen) {
                        actions.lock().unwrap().push(json!({
                            "t_s": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                            "from": r.from_shards,
                            "to": r.to_shards,
                            "reason": r.reason,
                        }));
                    }
                    seen = t.reshards.len();
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let value = vec![b'x'; cli.size.max(1)];
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let t = started.elapsed().as_secs_f64();
        if t >= total {
            break;
        }
        let due = shape.due(t) as u64;
        while sent < due {
            // The record's intended send time: when the schedule made it due.
            let at = intended(&shape, sent);
            match producer
                .send(ProducerRecord::new(TOPIC, value.clone()))
                .await
            {
                Ok(f) => {
                    let _ = tx.send((at, f));
                }
                Err(_) => {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            sent += 1;
        }
    }
    drop(tx);
    let _ = producer.flush().await;
    collector.await?;
    monitor.await?;
    broker.shutdown().await;
    let hist = hist.lock().unwrap();
    let mut rows = Vec::new();
    let mut pre_p99 = 0u64;
    let mut worst_after = 0u64;
    for (i, h) in hist.iter().enumerate() {
        let t0 = (i as u64 * WINDOW_S) as f64;
        let p99 = h.value_at_quantile(0.99);
        if t0 + WINDOW_S as f64 <= shape.hold_s {
            pre_p99 = pre_p99.max(p99);
        } else {
            worst_after = worst_after.max(p99);
        }
        rows.push(json!({
            "t_s": t0,
            "offered_per_s": shape.rate_at(t0 + WINDOW_S as f64 / 2.0).round(),
            "acked": h.len(),
            "p50_us": h.value_at_quantile(0.5),
            "p99_us": p99,
        }));
    }
    let actions = actions.lock().unwrap().clone();
    Ok(json!({
        "windows": rows,
        "actions": actions,
        "p99_pre_ramp_us": pre_p99,
        "p99_worst_from_ramp_us": worst_after,
        "worst_over_pre": if pre_p99 > 0 { worst_after as f64 / pre_p99 as f64 } else { 0.0 },
        "errors": errors.load(std::sync::atomic::Ordering::Relaxed),
        "sent": sent,
    }))
}

/// Seconds after the start at which record `n` was due (inverse of `Shape::due`, by
/// bisection).
fn intended(shape: &Shape, n: u64) -> f64 {
    let (mut lo, mut hi) = (0.0, shape.total_s());
    for _ in 0..40 {
        let mid = (lo + hi) / 2.0;
        if shape.due(mid) < n as f64 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

fn record(
    hist: &std::sync::Mutex<Vec<Histogram<u64>>>,
    errors: &std::sync::atomic::AtomicU64,
    started: Instant,
    at: f64,
    r: weir_client::Result<weir_client::RecordMetadata>,
) {
    if r.is_err() {
        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return;
    }
    let lat_us = ((started.elapsed().as_secs_f64() - at) * 1e6).max(1.0) as u64;
    let w = (at as u64 / WINDOW_S) as usize;
    let mut h = hist.lock().unwrap();
    if let Some(h) = h.get_mut(w) {
        let _ = h.record(lat_us.min(60_000_000));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_integrates_its_rate() {
        let s = Shape {
            from: 100.0,
            to: 500.0,
            hold_s: 10.0,
            ramp_s: 20.0,
        };
        assert_eq!(s.due(10.0), 1000.0);
        assert_eq!(s.due(30.0), 1000.0 + 300.0 * 20.0);
        assert_eq!(s.due(40.0), 7000.0 + 5000.0);
        assert!((intended(&s, 1000) - 10.0).abs() < 1e-6);
        assert_eq!(s.rate_at(20.0), 300.0);
    }
}

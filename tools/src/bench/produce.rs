//! `weir-bench produce`: producers send as fast as their window allows (or at
//! `--rate`), and the report times each batch from its first send to its ack.
//!
//! Also the producer side of the other modes: consume preloads with
//! [`run_producers`], e2e runs them next to its consumers.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use weir_client::Producer;

use super::args::{AckArg, Args, Mode};
use super::collector::{collect, ProdStats};
use super::producer::produce_loop;
use super::progress::spawn_progress;
use super::report::{class_summaries, new_histogram, LatencySummary, Report};
use super::run::{share, Run, Stop};
use super::target::Target;
use super::timeline::Timeline;

/// Runs the produce mode and reports its figures.
pub async fn run_produce(
    cli: Args,
    target: &Target,
    handle: tokio::runtime::Handle,
) -> anyhow::Result<Report> {
    let probe = Run::new(cli.clone(), target.shards);
    let producers = build_producers(&probe, target).await?;
    let run = Run::new(cli, target.shards);
    let stop = Stop::of(&run);
    let progress = spawn_progress(run.clone(), "produce", stop.total());
    let stats = run_producers(&run, producers, stop, &handle).await;
    progress.store(true, Ordering::Relaxed);
    let totals = ProduceTotals::sum(&run, &stats?)?;
    Ok(produce_report(&run, totals))
}

/// Builds one producer per `--producers`, each on its own connection.
pub async fn build_producers(run: &Run, target: &Target) -> anyhow::Result<Vec<Producer>> {
    let c = &run.cli;
    let mut v = Vec::new();
    for _ in 0..c.producers {
        let client = target.connect().await?;
        let mut b = Producer::builder(&client)
            .acks(c.acks.acks())
            .linger(Duration::from_secs_f64(c.linger_ms / 1000.0))
            .max_batch_bytes(run.max_batch_bytes());
        if let Some(n) = c.in_flight {
            b = b.fixed_in_flight_per_shard(n);
        }
        let p = b.build().await?;
        v.push(p);
    }
    Ok(v)
}

/// Runs the producers to completion, each on its own thread with its own collector
/// task; returns each one's collector figures.
pub async fn run_producers(
    run: &Arc<Run>,
    producers: Vec<Producer>,
    stop: Stop,
    handle: &tokio::runtime::Handle,
) -> anyhow::Result<Vec<ProdStats>> {
    let n = producers.len();
    let mut waits = Vec::new();
    for (i, producer) in producers.into_iter().enumerate() {
        let stop = match stop {
            Stop::Messages(m) => Stop::Messages(share(m, n, i)),
            s => s,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let collector = tokio::spawn(collect(rx, run.base));
        let (done_tx, done_rx) = oneshot::channel();
        let run2 = run.clone();
        let h = handle.clone();
        std::thread::Builder::new()
            .name(format!("producer-{i}"))
            .spawn(move || {
                super::pacing::fine_timer_slack();
                let r = h.block_on(produce_loop(run2, producer, i, stop, tx));
                let _ = done_tx.send(r);
            })?;
        waits.push((done_rx, collector));
    }
    let mut stats = Vec::new();
    let mut first_err = None;
    for (done, collector) in waits {
        match done.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => first_err = first_err.or(Some(e)),
            Err(_) => first_err = first_err.or(Some(anyhow::anyhow!("producer thread died"))),
        }
        stats.push(collector.await?);
    }
    run.producers_done.store(true, Ordering::Release);
    match first_err {
        Some(e) => Err(e),
        None => Ok(stats),
    }
}

/// The producers' figures merged.
struct ProduceTotals {
    batches: Histogram<u64>,
    classes: [Histogram<u64>; 4],
    acked: u64,
    errors: u64,
    /// The last measured ack: the end of the measured time.
    end: Instant,
    timeline: Timeline,
    notes: Vec<String>,
}

impl ProduceTotals {
    fn sum(run: &Run, stats: &[ProdStats]) -> anyhow::Result<ProduceTotals> {
        let mut t = ProduceTotals {
            batches: new_histogram(),
            classes: std::array::from_fn(|_| new_histogram()),
            acked: 0,
            errors: 0,
            end: run.warmup_end,
            timeline: Timeline::counting("batches"),
            notes: Vec::new(),
        };
        for s in stats {
            t.batches.add(&s.batches)?;
            t.timeline.merge(&s.timeline);
            for (a, b) in t.classes.iter_mut().zip(&s.classes) {
                a.add(b)?;
            }
            t.acked += s.acked;
            t.errors += s.errors;
            if let Some(l) = s.last_ack {
                t.end = t.end.max(l);
            }
            if let Some(e) = &s.first_error {
                t.notes.push(format!("send failed: {e}"));
            }
        }
        Ok(t)
    }
}

fn produce_report(run: &Run, t: ProduceTotals) -> Report {
    let c = &run.cli;
    let mut notes = t.notes;
    notes.push(format!(
        "--batch {} → max_batch_bytes {} (exactly {} records of {} B), linger {} ms, {} batches in flight per shard",
        c.batch,
        run.max_batch_bytes(),
        c.batch,
        c.size,
        c.linger_ms,
        c.in_flight
            .map_or("adaptive (≤ 5)".to_string(), |n| n.to_string())
    ));
    let windows = run.windows.lock().expect("windows").clone();
    if !windows.is_empty() {
        notes.push(format!(
            "adaptive in-flight windows at the end: {windows:?}"
        ));
    }
    if c.acks == AckArg::None {
        notes.push("acks=none: a batch counts as acknowledged once written to the socket".into());
    }
    let mut set = run.settings();
    set.insert("max_batch_bytes".into(), json!(run.max_batch_bytes()));
    Report {
        mode: Mode::Produce.name().into(),
        messages: t.acked,
        bytes: t.acked * c.size as u64,
        duration_s: (t.end - run.warmup_end).as_secs_f64(),
        latency_kind: if c.priority_mix.is_some() {
            "all: per batch, first send → ack of its last record; classes: per record, send → ack"
                .into()
        } else {
            "per batch: first send → ack of its last record".into()
        },
        latency: LatencySummary::from_histogram(&t.batches),
        from_send: None,
        classes: class_summaries(&t.classes, &c.priority_mix),
        classes_from_send: BTreeMap::new(),
        errors: t.errors,
        settings: set,
        notes,
        plot: run.plot_data(&t.batches, &t.classes),
        timeline: Some(t.timeline),
    }
}

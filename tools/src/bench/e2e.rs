//! `weir-bench e2e`: producers and consumers run together; each payload carries its
//! intended send time, so the consumer times every message from send to `poll`.
//!
//! Consumers start at the end of the topic before anything is sent, and stop once
//! the producers are done and every sent message has come out.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use weir_client::{Consumer, Message, OffsetReset};

use super::args::{Args, Mode};
use super::collector::ProdStats;
use super::consume::ConsStats;
use super::mix::class_of_priority;
use super::produce::{build_producers, run_producers};
use super::progress::spawn_progress;
use super::report::{class_summaries, new_histogram, record_ns, LatencySummary, Report};
use super::run::{shards_of, Run, Stop};
use super::target::Target;
use super::timeline::Timeline;

/// Runs the e2e mode and reports its figures.
pub async fn run_e2e(
    cli: Args,
    target: &Target,
    handle: tokio::runtime::Handle,
) -> anyhow::Result<Report> {
    let shards = target.shards;
    let probe = Run::new(cli.clone(), shards);
    let producers = build_producers(&probe, target).await?;
    let consumers = build_consumers(&cli, target).await?;
    let run = Run::new(cli, shards);
    let stop = Stop::of(&run);
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for consumer in consumers {
        tasks.push(tokio::spawn(e2e_consume_loop(
            run.clone(),
            consumer,
            received.clone(),
        )));
    }
    let progress = spawn_progress(run.clone(), "e2e (sent)", stop.total());
    let pstats = run_producers(&run, producers, stop, &handle).await;
    run.producers_done.store(true, Ordering::Release);
    let mut st = Vec::new();
    for t in tasks {
        st.push(t.await?);
    }
    progress.store(true, Ordering::Relaxed);
    e2e_report(&run, &st, &pstats?)
}

/// At most one consumer per shard, each positioned at the end of its shards.
async fn build_consumers(cli: &Args, target: &Target) -> anyhow::Result<Vec<Consumer>> {
    let shards = target.shards;
    let n = cli.consumers.min(shards as usize);
    let mut consumers = Vec::new();
    for j in 0..n {
        let mine = shards_of(j, n, shards);
        let client = target.connect().await?;
        let mut consumer = Consumer::builder(&client)
            .topic(cli.topic.clone())
            .reset(OffsetReset::Latest)
            .order(cli.order.order())
            .max_fetch_bytes(cli.fetch_bytes())
            .build()?;
        consumer.assign(mine.iter().map(|s| (cli.topic.clone(), *s)).collect());
        consumer.poll(1, Duration::ZERO).await?; // start at the end, before sending
        consumers.push(consumer);
    }
    Ok(consumers)
}

/// Polls until the producers are done and every sent message was received.
async fn e2e_consume_loop(
    run: Arc<Run>,
    mut consumer: Consumer,
    received: Arc<AtomicU64>,
) -> ConsStats {
    let mut st = ConsStats::new();
    let mut idle_since = Instant::now();
    loop {
        if run.producers_done.load(Ordering::Acquire)
            && received.load(Ordering::Acquire) >= run.sent.load(Ordering::Acquire)
        {
            break;
        }
        match consumer.poll(100_000, Duration::from_millis(100)).await {
            Ok(msgs) if !msgs.is_empty() => {
                let now = Instant::now();
                time_messages(&run, &mut st, &msgs, now);
                let n = msgs.len() as u64;
                st.received += n;
                received.fetch_add(n, Ordering::AcqRel);
                st.last = Some(now);
                idle_since = now;
            }
            Ok(_) => {
                if run.producers_done.load(Ordering::Acquire)
                    && idle_since.elapsed() > Duration::from_secs(10)
                {
                    st.first_error =
                        Some("no messages for 10 s after the producers finished; giving up".into());
                    break;
                }
            }
            Err(e) => {
                st.errors += 1;
                st.first_error = Some(e.to_string());
                break;
            }
        }
    }
    st
}

/// Records each message's latency: `now` minus the send time in its first 8 bytes
/// (messages sent during the warmup are received but not timed).
fn time_messages(run: &Run, st: &mut ConsStats, msgs: &[Message], now: Instant) {
    let warmup_ns = (run.warmup_end - run.base).as_nanos() as u64;
    let now_ns = (now - run.base).as_nanos() as u64;
    for m in msgs {
        let Some(ts) = m.value.get(..8) else {
            continue;
        };
        let ts = u64::from_le_bytes(ts.try_into().expect("8 bytes"));
        if ts < warmup_ns {
            continue;
        }
        let lat = now_ns.saturating_sub(ts);
        record_ns(&mut st.latency, lat);
        st.timeline.record(now_ns, lat);
        let class = class_of_priority(m.priority);
        if let Some(sent) = m.value.get(8..16) {
            let sent = u64::from_le_bytes(sent.try_into().expect("8 bytes"));
            let from_send = now_ns.saturating_sub(sent);
            record_ns(&mut st.from_send, from_send);
            record_ns(&mut st.classes_from_send[class], from_send);
        }
        record_ns(&mut st.classes[class], lat);
        st.measured += 1;
    }
}

fn e2e_report(run: &Run, st: &[ConsStats], pstats: &[ProdStats]) -> anyhow::Result<Report> {
    let c = &run.cli;
    let mut lat = new_histogram();
    let mut from_send = new_histogram();
    let mut classes: [Histogram<u64>; 4] = std::array::from_fn(|_| new_histogram());
    let mut classes_from_send: [Histogram<u64>; 4] = std::array::from_fn(|_| new_histogram());
    let mut timeline = Timeline::default();
    let (mut measured, mut got, mut errors, mut end) = (0u64, 0u64, 0u64, run.warmup_end);
    let mut notes = Vec::new();
    for s in st {
        lat.add(&s.latency)?;
        from_send.add(&s.from_send)?;
        timeline.merge(&s.timeline);
        for (a, b) in classes.iter_mut().zip(&s.classes) {
            a.add(b)?;
        }
        for (a, b) in classes_from_send.iter_mut().zip(&s.classes_from_send) {
            a.add(b)?;
        }
        got += s.received;
        measured += s.measured;
        errors += s.errors;
        if let Some(l) = s.last {
            end = end.max(l);
        }
        if let Some(e) = &s.first_error {
            notes.push(format!("consumer: {e}"));
        }
    }
    for s in pstats {
        errors += s.errors;
        if let Some(e) = &s.first_error {
            notes.push(format!("send failed: {e}"));
        }
    }
    let sent = run.sent.load(Ordering::Acquire);
    if got != sent {
        notes.push(format!(
            "MISMATCH: sent {sent} messages, consumers received {got}"
        ));
        errors += sent.abs_diff(got);
    }
    notes.push(format!(
        "--batch {} → max_batch_bytes {}, linger {} ms",
        c.batch,
        run.max_batch_bytes(),
        c.linger_ms
    ));
    Ok(Report {
        mode: Mode::E2e.name().into(),
        messages: measured,
        bytes: measured * c.size as u64,
        duration_s: (end - run.warmup_end).as_secs_f64(),
        latency_kind: if c.rate.is_some() {
            "per message, intended send time (open loop) → out of the consumer's poll".into()
        } else {
            "per message, send time (closed loop) → out of the consumer's poll".into()
        },
        latency: LatencySummary::from_histogram(&lat),
        from_send: (c.size >= 16 && !from_send.is_empty())
            .then(|| LatencySummary::from_histogram(&from_send)),
        classes: class_summaries(&classes, &c.priority_mix),
        classes_from_send: if c.size >= 16 {
            class_summaries(&classes_from_send, &c.priority_mix)
        } else {
            BTreeMap::new()
        },
        errors,
        settings: run.settings(),
        notes,
        plot: run.plot_data(&lat, &classes),
        timeline: Some(timeline),
    })
}

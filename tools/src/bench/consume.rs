//! `weir-bench consume`: consumers read the topic from its earliest offset to the
//! high watermarks seen at the start (preloading what `--messages` asks for that is
//! not there yet, untimed), and the report times each poll that returned messages.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use weir_client::{Client, Consumer, OffsetReset};
use weir_protocol::messages::{ListOffsetsRequest, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};
use weir_protocol::ResponseBody;

use super::args::{ApiArg, Args, Mode};
use super::produce::{build_producers, run_producers};
use super::progress::spawn_progress;
use super::report::{group_digits, new_histogram, record_ns, LatencySummary, Report};
use super::run::{shards_of, Run, Stop};
use super::target::Target;
use super::timeline::Timeline;

/// What one consumer saw (consume and e2e).
pub struct ConsStats {
    pub latency: Histogram<u64>,
    /// e2e: from the producer's hand-off to the SDK (see `Report::from_send`).
    pub from_send: Histogram<u64>,
    pub classes: [Histogram<u64>; 4],
    /// e2e: `from_send` per priority class.
    pub classes_from_send: [Histogram<u64>; 4],
    /// e2e: latency over time (see `timeline.rs`).
    pub timeline: Timeline,
    pub received: u64,
    pub measured: u64,
    pub last: Option<Instant>,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl ConsStats {
    pub fn new() -> Self {
        ConsStats {
            latency: new_histogram(),
            from_send: new_histogram(),
            classes: std::array::from_fn(|_| new_histogram()),
            classes_from_send: std::array::from_fn(|_| new_histogram()),
            timeline: Timeline::default(),
            received: 0,
            measured: 0,
            last: None,
            errors: 0,
            first_error: None,
        }
    }
}

impl Default for ConsStats {
    fn default() -> Self {
        Self::new()
    }
}

/// One consumer with the end offset of each of its shards and how many it must read.
struct Reader {
    consumer: Consumer,
    ends: HashMap<u32, u64>,
    target: u64,
}

/// Runs the consume mode and reports its figures.
pub async fn run_consume(
    cli: Args,
    target: &Target,
    handle: tokio::runtime::Handle,
) -> anyhow::Result<Report> {
    let want = cli
        .messages
        .unwrap_or(if cli.duration.is_some() { 0 } else { 1_000_000 });
    let mut notes = Vec::new();
    notes.extend(preload(&cli, target, want, &handle).await?);
    let readers = build_readers(&cli, target).await?;
    let total: u64 = readers.iter().map(|r| r.target).sum();
    let run = Run::new(cli, target.shards);
    let until = run
        .cli
        .duration
        .map(|d| run.base + Duration::from_secs_f64(d));
    let progress = spawn_progress(run.clone(), "consume", Some(total));
    let mut tasks = Vec::new();
    for r in readers {
        tasks.push(tokio::spawn(consume_loop(run.clone(), r, until)));
    }
    let mut st = Vec::new();
    for t in tasks {
        st.push(t.await?);
    }
    progress.store(true, Ordering::Relaxed);
    consume_report(&run, &st, total, until.is_some(), notes)
}

/// Produces (untimed) what the topic lacks of `want` messages; returns a note if it did.
async fn preload(
    cli: &Args,
    target: &Target,
    want: u64,
    handle: &tokio::runtime::Handle,
) -> anyhow::Result<Option<String>> {
    let ranges = shard_ranges(&target.admin, &cli.topic, target.shards).await?;
    let have: u64 = ranges.iter().map(|(lo, hi)| hi - lo).sum();
    if have >= want {
        return Ok(None);
    }
    let missing = want - have;
    if !cli.json {
        eprintln!(
            "preloading {} messages with {} producer(s) (not timed)…",
            group_digits(missing),
            cli.producers
        );
    }
    let mut pre = cli.clone();
    pre.rate = None;
    pre.warmup = 0.0;
    pre.priority_mix = None;
    pre.mode = Mode::Produce;
    let prerun = Run::new(pre, target.shards);
    let producers = build_producers(&prerun, target).await?;
    let prerun = Run::new(prerun.cli.clone(), target.shards);
    let t = Instant::now();
    let stats = run_producers(&prerun, producers, Stop::Messages(missing), handle).await?;
    let errors: u64 = stats.iter().map(|s| s.errors).sum();
    if errors > 0 {
        bail!("preload: {errors} messages failed");
    }
    Ok(Some(format!(
        "preloaded {} messages in {:.2} s before consuming",
        group_digits(missing),
        t.elapsed().as_secs_f64()
    )))
}

/// One consumer per `--consumers`, each positioned at the earliest offset of its
/// shards and told to read up to the high watermarks seen now.
async fn build_readers(cli: &Args, target: &Target) -> anyhow::Result<Vec<Reader>> {
    let shards = target.shards;
    let ranges = shard_ranges(&target.admin, &cli.topic, shards).await?;
    let mut readers = Vec::new();
    for j in 0..cli.consumers {
        // Consumers beyond the shard count get nothing to read.
        let mine = if cli.consumers > shards as usize && j >= shards as usize {
            Vec::new()
        } else {
            shards_of(j, cli.consumers, shards)
        };
        let client = target.connect().await?;
        let mut consumer = Consumer::builder(&client)
            .topic(cli.topic.clone())
            .reset(OffsetReset::Earliest)
            .order(cli.order.order())
            .max_fetch_bytes(cli.fetch_bytes())
            .build()?;
        consumer.assign(mine.iter().map(|s| (cli.topic.clone(), *s)).collect());
        let ends: HashMap<u32, u64> = mine.iter().map(|s| (*s, ranges[*s as usize].1)).collect();
        let target: u64 = mine
            .iter()
            .map(|s| ranges[*s as usize].1 - ranges[*s as usize].0)
            .sum();
        if !mine.is_empty() {
            consumer.poll(1, Duration::ZERO).await?; // resolve positions before timing
        }
        readers.push(Reader {
            consumer,
            ends,
            target,
        });
    }
    Ok(readers)
}

async fn list_offset(client: &Client, topic: &str, shard: u32, ts: i64) -> anyhow::Result<u64> {
    let req = ListOffsetsRequest {
        topic: topic.to_string(),
        shard,
        timestamp_ms: ts,
    };
    match client.call(req).await? {
        ResponseBody::ListOffsets(r) => Ok(r.offset),
        other => bail!("unexpected response {:?}", other.api_key()),
    }
}

/// (earliest, high watermark) of every shard.
async fn shard_ranges(
    client: &Client,
    topic: &str,
    shards: u32,
) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut v = Vec::new();
    for s in 0..shards {
        let lo = list_offset(client, topic, s, EARLIEST_TIMESTAMP).await?;
        let hi = list_offset(client, topic, s, LATEST_TIMESTAMP).await?;
        v.push((lo, hi.max(lo)));
    }
    Ok(v)
}

/// Polls until the reader has its target (or `until`), timing each poll.
async fn consume_loop(run: Arc<Run>, mut r: Reader, until: Option<Instant>) -> ConsStats {
    let mut st = ConsStats::new();
    let mut idle_since = Instant::now();
    while st.received < r.target {
        if until.is_some_and(|u| Instant::now() >= u) {
            break;
        }
        let t = Instant::now();
        match poll_counted(&mut r.consumer, run.cli.api, &r.ends).await {
            Ok(Some(n)) => {
                let now = Instant::now();
                record_ns(&mut st.latency, (now - t).as_nanos() as u64);
                st.received += n;
                st.last = Some(now);
                idle_since = now;
                run.progress.fetch_add(n, Ordering::Relaxed);
            }
            Ok(None) => {
                if idle_since.elapsed() > Duration::from_secs(10) {
                    st.first_error = Some(format!(
                        "no messages for 10 s with {} of {} read; giving up",
                        st.received, r.target
                    ));
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

/// One `poll_batches` (`--api batch`) or `poll` (`--api record`): the records it
/// returned that lie below their shard's end offset at the start of the run
/// (`None`: the poll returned nothing).
async fn poll_counted(
    consumer: &mut Consumer,
    api: ApiArg,
    ends: &HashMap<u32, u64>,
) -> weir_client::Result<Option<u64>> {
    if api == ApiArg::Batch {
        let batches = consumer
            .poll_batches(100_000, Duration::from_millis(100))
            .await?;
        Ok((!batches.is_empty()).then(|| {
            batches
                .iter()
                .map(|b| {
                    let end = ends.get(&b.shard()).copied().unwrap_or(0);
                    end.min(b.next_offset()).saturating_sub(b.first_offset())
                })
                .sum()
        }))
    } else {
        let msgs = consumer.poll(100_000, Duration::from_millis(100)).await?;
        Ok((!msgs.is_empty()).then(|| {
            // Messages come in runs of one shard: one map lookup per run.
            let mut end = (u32::MAX, 0u64);
            msgs.iter()
                .filter(|m| {
                    if m.shard != end.0 {
                        end = (m.shard, ends.get(&m.shard).copied().unwrap_or(0));
                    }
                    m.offset < end.1
                })
                .count() as u64
        }))
    }
}

fn consume_report(
    run: &Run,
    st: &[ConsStats],
    total: u64,
    timed: bool,
    mut notes: Vec<String>,
) -> anyhow::Result<Report> {
    let c = &run.cli;
    let mut lat = new_histogram();
    let (mut got, mut errors, mut end) = (0u64, 0u64, run.base);
    for s in st {
        lat.add(&s.latency)?;
        got += s.received;
        errors += s.errors;
        if let Some(l) = s.last {
            end = end.max(l);
        }
        if let Some(e) = &s.first_error {
            notes.push(format!("consumer: {e}"));
        }
    }
    if !timed && got < total {
        notes.push(format!("MISSING: expected {total} messages, got {got}"));
        errors += total - got;
    }
    Ok(Report {
        mode: Mode::Consume.name().into(),
        messages: got,
        bytes: got * c.size as u64,
        duration_s: (end - run.base).as_secs_f64(),
        latency_kind: "per poll that returned messages".into(),
        latency: LatencySummary::from_histogram(&lat),
        from_send: None,
        classes: BTreeMap::new(),
        classes_from_send: BTreeMap::new(),
        errors,
        settings: run.settings(),
        notes,
        plot: run.plot_data(&lat, &std::array::from_fn(|_| new_histogram())),
        timeline: None,
    })
}

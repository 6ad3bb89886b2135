//! `weir-bench`: Weir's load generator.
//!
//! ```text
//! weir-bench produce --embedded --size 1024 --batch 1000 --messages 1000000
//! weir-bench consume --embedded --producers 8 --consumers 8 --shards 8 --size 100
//! weir-bench e2e --embedded --rate 100000 --duration 10 --linger-ms 1
//! ```
//!
//! How it measures (also in BENCHMARKS.md):
//! - `--batch N` sets the producer's `max_batch_bytes` to exactly N records of `--size`
//!   bytes (60-byte batch header + N × (18-byte record overhead + size)), so the SDK
//!   seals a batch after N records; `--linger-ms` seals earlier when records come slower.
//!   Batches are pipelined: the SDK keeps `--in-flight` batches in flight per shard,
//!   and in closed loop each producer keeps at most `--in-flight` batches
//!   unacknowledged (so latency is the pipeline's, not queueing inside the SDK). The
//!   bench never calls `flush()` except once at the end.
//! - `--api batch` (the default) hands each batch of `--batch` records to the SDK with
//!   one `send_batch` call, as iggy-bench sends a batch with one call of its SDK;
//!   `--api record` calls `send` per record. In open loop (`--rate`), a batch call
//!   carries every message due when the producer wakes (up to `--batch`), so no message
//!   waits for later ones.
//! - produce latency is per batch: from the (intended) send time of a batch's first
//!   record to the acknowledgement of its last record (its `DeliveryFuture`, or the
//!   `BatchDeliveryFuture` of the call). With a priority mix, per-class latency is per
//!   record: intended send → its ack (with `--api batch`, the ack of its call).
//! - e2e latency is per message: the intended send time (nanoseconds since the run's
//!   start) sits in the first 8 bytes of each payload; the consumer subtracts it from
//!   its clock when the message comes out of `poll`.
//! - `--rate R` is open loop: message k of the whole run is due at start + k/R, each
//!   producer sends its messages at their due times (sleeping on its own thread) and
//!   latency counts from the due time, so a stall shows as latency, not as a lower rate.
//! - consume latency is the duration of each `poll` call that returned messages.
//! - `--warmup S`: the first S seconds run at full settings and are left out of every
//!   figure; `--messages` and `--duration` count after the warmup.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Map};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use weir_client::embedded::EmbeddedBroker;
use weir_client::{
    Acks, Admin, BatchDeliveryFuture, BatchRecord, Client, Consumer, DeliveryFuture, DeliveryOrder,
    OffsetReset, Producer, ProducerBatch, ProducerRecord, TopicConfig,
};
use weir_protocol::batch::{BATCH_HEADER_BYTES, RECORD_MIN_BYTES};
use weir_protocol::messages::{ListOffsetsRequest, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};
use weir_protocol::ResponseBody;
use weir_tools::bench::mix::{class_of_priority, PriorityMix, CLASS_NAMES};
use weir_tools::bench::plot::{Curve, PlotData};
use weir_tools::bench::report::{group_digits, new_histogram, record_ns, LatencySummary, Report};

/// Load-test a Weir broker: produce, consume, or end to end.
#[derive(Parser, Debug, Clone)]
#[command(version, about, after_help = AFTER_HELP)]
struct Cli {
    #[arg(value_enum)]
    mode: Mode,
    /// Broker address (ignored with --embedded).
    #[arg(long, default_value = "127.0.0.1:7700", env = "WEIR_BROKER")]
    broker: String,
    /// Start a broker in this process, with a temporary data directory (WEIR_* variables
    /// set its other settings, as for weir-broker).
    #[arg(long)]
    embedded: bool,
    /// Producer count (each with its own connection and thread).
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Consumer count (each with its own connection), for consume and e2e.
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    #[arg(long, default_value = "weir-bench")]
    topic: String,
    /// Shards of the topic (default: the larger of --producers and --consumers).
    /// Producer i sends to shards i, i+P, …; consumer j reads shards j, j+C, ….
    #[arg(long)]
    shards: Option<u32>,
    /// Messages to send (after warmup); default 1,000,000 unless --duration is given.
    #[arg(long, conflicts_with = "duration")]
    messages: Option<u64>,
    /// Seconds to run (after warmup).
    #[arg(long)]
    duration: Option<f64>,
    /// Payload bytes per message (e2e needs at least 8).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Messages per batch: the producer's max_batch_bytes is set to fit exactly this many.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Longest a batch waits for more messages, in ms (fractions allowed); 0 sends a
    /// batch as soon as its lane has room in flight (the SDK's default).
    #[arg(long, default_value_t = 5.0)]
    linger_ms: f64,
    /// How producers hand records to the SDK: `batch` = one `send_batch` call per
    /// batch of --batch records (as iggy-bench sends a batch with one call; in open
    /// loop, one call per wake-up with every message then due), `record` = one `send`
    /// per record. consume's consumers: `batch` = `poll_batches` (whole batches,
    /// records not decoded), `record` = `poll` (one decoded message per record).
    #[arg(long, value_enum, default_value_t = ApiArg::Batch)]
    api: ApiArg,
    #[arg(long, value_enum, default_value_t = AckArg::Leader)]
    acks: AckArg,
    /// Batches in flight per shard and producer.
    #[arg(long, default_value_t = 5)]
    in_flight: usize,
    /// Open loop: total messages per second over all producers.
    #[arg(long)]
    rate: Option<f64>,
    /// Share of messages per priority class, e.g. "p0=5,p3=95"
    /// (p0 = priorities 1–2, p1 = 3–5, p2 = 6–8, p3 = 9–10).
    #[arg(long)]
    priority_mix: Option<PriorityMix>,
    /// With a mix: each producer sends one class only (one producer per class of the
    /// mix, the rest to its largest class), and with --rate each class's producers
    /// share the class's part of the rate. Models separate critical and bulk services.
    #[arg(long, requires = "priority_mix")]
    class_per_producer: bool,
    /// Consumers read in `offset` order or `priority` order (class lanes, P0 first).
    #[arg(long, value_enum, default_value_t = OrderArg::Offset)]
    order: OrderArg,
    /// Seconds run first and left out of the figures.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Print one JSON object on stdout instead of the summary.
    #[arg(long)]
    json: bool,
    /// Also draw the latency percentile curve (per class with a mix) and throughput
    /// over time into this file: `.svg`, or `.html` for a page holding the SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
}

const AFTER_HELP: &str = "Produce latency is per batch (first send → ack of the batch's last \
record); e2e latency is per message, measured at the consumer from the intended send time; \
consume latency is per poll. MB = 10^6 payload bytes.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OrderArg {
    Offset,
    Priority,
}

impl OrderArg {
    fn order(self) -> DeliveryOrder {
        match self {
            OrderArg::Offset => DeliveryOrder::Offset,
            OrderArg::Priority => DeliveryOrder::Priority,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Produce,
    Consume,
    E2e,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Produce => "produce",
            Mode::Consume => "consume",
            Mode::E2e => "e2e",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ApiArg {
    Batch,
    Record,
}

impl ApiArg {
    fn name(self) -> &'static str {
        match self {
            ApiArg::Batch => "batch",
            ApiArg::Record => "record",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum AckArg {
    None,
    Leader,
    Durable,
}

impl AckArg {
    fn acks(self) -> Acks {
        match self {
            AckArg::None => Acks::None,
            AckArg::Leader => Acks::Leader,
            AckArg::Durable => Acks::Durable,
        }
    }
    fn name(self) -> &'static str {
        match self {
            AckArg::None => "none",
            AckArg::Leader => "leader",
            AckArg::Durable => "durable",
        }
    }
}

/// When a producer (or the run) stops.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// After this many measured messages.
    Messages(u64),
    /// At this instant.
    Until(Instant),
}

/// Fixed for the whole run.
struct Run {
    cli: Cli,
    shards: u32,
    /// Everything is timed from here; e2e payloads carry nanoseconds since `base`.
    base: Instant,
    warmup_end: Instant,
    /// Messages handed to producers / taken from consumers so far (progress display).
    progress: AtomicU64,
    /// (seconds since `base`, messages per second) every half second, for `--plot`.
    samples: std::sync::Mutex<Vec<(f64, f64)>>,
    /// Messages sent by all producers (for e2e's consumers to know when to stop).
    sent: AtomicU64,
    producers_done: AtomicBool,
}

impl Run {
    fn max_batch_bytes(&self) -> usize {
        BATCH_HEADER_BYTES + self.cli.batch * (RECORD_MIN_BYTES + self.cli.size)
    }
}

/// One future the collector awaits.
struct Pending {
    batch_start: Instant,
    /// (priority class, intended send time) of each record timed for per-class
    /// figures: at most the one record of a `send`, every record of a `send_batch`.
    classes: Vec<(usize, Instant)>,
    /// Records of the batch this future closes (0: not the last of its batch).
    batch_count: u64,
    measured: bool,
    fut: Delivery,
    /// Closed loop: the batch's slot in the producer's window, freed on its ack.
    permit: Option<OwnedSemaphorePermit>,
}

/// The SDK future of one `send` or one `send_batch`.
enum Delivery {
    Record(DeliveryFuture),
    Batch(BatchDeliveryFuture),
}

impl Delivery {
    async fn wait(self) -> Result<(), weir_client::ClientError> {
        match self {
            Delivery::Record(f) => f.await.map(|_| ()),
            Delivery::Batch(f) => f.await.map(|_| ()),
        }
    }
}

/// What one producer's collector saw.
struct ProdStats {
    batches: Histogram<u64>,
    classes: [Histogram<u64>; 4],
    acked: u64,
    errors: u64,
    first_error: Option<String>,
    last_ack: Option<Instant>,
}

impl ProdStats {
    fn new() -> Self {
        ProdStats {
            batches: new_histogram(),
            classes: std::array::from_fn(|_| new_histogram()),
            acked: 0,
            errors: 0,
            first_error: None,
            last_ack: None,
        }
    }
}

/// What one consumer saw.
struct ConsStats {
    latency: Histogram<u64>,
    classes: [Histogram<u64>; 4],
    received: u64,
    measured: u64,
    last: Option<Instant>,
    errors: u64,
    first_error: Option<String>,
}

impl ConsStats {
    fn new() -> Self {
        ConsStats {
            latency: new_histogram(),
            classes: std::array::from_fn(|_| new_histogram()),
            received: 0,
            measured: 0,
            last: None,
            errors: 0,
            first_error: None,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = check(&cli) {
        eprintln!("weir-bench: {e:#}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = cli.json;
    let plot = cli.plot.clone();
    let result = rt.block_on(run(cli, rt.handle().clone()));
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(report) => {
            if let Some(path) = &plot {
                let text = if path.extension().is_some_and(|e| e == "html") {
                    weir_tools::bench::plot::html(&report.plot)
                } else {
                    weir_tools::bench::plot::svg(&report.plot)
                };
                if let Err(e) = std::fs::write(path, text) {
                    eprintln!("weir-bench: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.human());
            }
            if report.errors > 0 {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("weir-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(cli: &Cli) -> anyhow::Result<()> {
    if cli.producers == 0 || cli.consumers == 0 {
        bail!("--producers and --consumers must be at least 1");
    }
    if cli.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if cli.mode == Mode::E2e && cli.size < 8 {
        bail!("e2e needs --size of at least 8 (the payload carries an 8-byte send time)");
    }
    if cli.rate.is_some_and(|r| !r.is_finite() || r <= 0.0) {
        bail!("--rate must be a positive number");
    }
    if cli.duration.is_some_and(|d| !d.is_finite() || d <= 0.0) {
        bail!("--duration must be a positive number of seconds");
    }
    let ok = |v: f64| v.is_finite() && v >= 0.0;
    if !ok(cli.warmup) || !ok(cli.linger_ms) {
        bail!("--warmup and --linger-ms must be ≥ 0");
    }
    if cli.shards == Some(0) {
        bail!("--shards must be at least 1");
    }
    Ok(())
}

/// A fresh directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("weir-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn run(cli: Cli, handle: tokio::runtime::Handle) -> anyhow::Result<Report> {
    let mut _dir = None;
    let mut embedded = None;
    let addr = if cli.embedded {
        let dir = TempDir::new()?;
        // WEIR_* variables tune the embedded broker as they would a weir-broker
        // process (e.g. WEIR_RUNTIME=thread_per_core, WEIR_SHED_ENABLED=false); the
        // addresses and data directory are always the bench's own.
        let config = weir_broker::Config {
            listen: "127.0.0.1:0".parse()?,
            http: "127.0.0.1:0".parse()?,
            data_dir: dir.0.clone(),
            ..weir_broker::Config::load(None, std::env::vars())
                .context("WEIR_* settings for the embedded broker")?
        };
        let b = EmbeddedBroker::start(config)
            .await
            .context("starting the embedded broker")?;
        let addr = b.addr().to_string();
        if !cli.json {
            eprintln!("embedded broker on {addr}, data in {}", dir.0.display());
        }
        _dir = Some(dir);
        embedded = Some(b);
        addr
    } else {
        cli.broker.clone()
    };
    let admin_client = Client::connect(addr.clone())
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let want_shards = cli
        .shards
        .unwrap_or(cli.producers.max(cli.consumers) as u32);
    let admin = Admin::new(admin_client.clone());
    let shards = match admin
        .create_topic(&cli.topic, want_shards, TopicConfig::default())
        .await
    {
        Ok(t) => t.shards.len() as u32,
        Err(e) => {
            let t = admin
                .describe_topic(&cli.topic)
                .await
                .with_context(|| format!("creating topic {}: {e}", cli.topic))?;
            let n = t.shards.len() as u32;
            if n != want_shards {
                eprintln!(
                    "weir-bench: topic {} exists with {n} shards (not {want_shards}); using it",
                    cli.topic
                );
            }
            n
        }
    };
    let report = match cli.mode {
        Mode::Produce => run_produce(cli, shards, &addr, handle).await,
        Mode::Consume => run_consume(cli, shards, &addr, &admin_client, handle).await,
        Mode::E2e => run_e2e(cli, shards, &addr, handle).await,
    };
    if let Some(b) = embedded {
        b.shutdown().await;
    }
    report
}

fn new_run(cli: Cli, shards: u32) -> Arc<Run> {
    let base = Instant::now();
    Arc::new(Run {
        warmup_end: base + Duration::from_secs_f64(cli.warmup),
        cli,
        shards,
        base,
        progress: AtomicU64::new(0),
        samples: std::sync::Mutex::new(Vec::new()),
        sent: AtomicU64::new(0),
        producers_done: AtomicBool::new(false),
    })
}

/// Shards of worker `i` of `n` over `shards` shards.
fn shards_of(i: usize, n: usize, shards: u32) -> Vec<u32> {
    let mine: Vec<u32> = (0..shards).filter(|s| *s as usize % n == i).collect();
    if mine.is_empty() {
        vec![(i as u32) % shards]
    } else {
        mine
    }
}

/// Splits `total` over `n` workers.
fn share(total: u64, n: usize, i: usize) -> u64 {
    total / n as u64 + u64::from((i as u64) < total % n as u64)
}

fn settings(run: &Run) -> Map<String, serde_json::Value> {
    let c = &run.cli;
    let mut m = Map::new();
    m.insert("producers".into(), json!(c.producers));
    if c.mode != Mode::Produce {
        m.insert("consumers".into(), json!(c.consumers));
    }
    m.insert("shards".into(), json!(run.shards));
    m.insert("size".into(), json!(c.size));
    m.insert("batch".into(), json!(c.batch));
    m.insert("linger_ms".into(), json!(c.linger_ms));
    m.insert("api".into(), json!(c.api.name()));
    m.insert("acks".into(), json!(c.acks.name()));
    m.insert("in_flight".into(), json!(c.in_flight));
    m.insert("rate".into(), json!(c.rate));
    m.insert(
        "priority_mix".into(),
        json!(c.priority_mix.as_ref().map(|m| m.to_string())),
    );
    if c.mode != Mode::Produce {
        m.insert(
            "order".into(),
            json!(format!("{:?}", c.order).to_lowercase()),
        );
    }
    m.insert("class_per_producer".into(), json!(c.class_per_producer));
    m.insert("warmup_s".into(), json!(c.warmup));
    m.insert("embedded".into(), json!(c.embedded));
    m
}

/// Prints progress on stderr every half second while `done` is false (terminals only).
fn spawn_progress(run: Arc<Run>, label: &'static str, total: Option<u64>) -> Arc<AtomicBool> {
    let done = Arc::new(AtomicBool::new(false));
    // A bar on stderr only when it is a terminal, so JSON on stdout and logs stay clean.
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = match total {
            Some(t) => ProgressBar::new(t),
            None => ProgressBar::new_spinner(),
        };
        let template = if total.is_some() {
            "{prefix}: [{bar:30}] {human_pos}/{human_len} msgs  {msg}  {elapsed}"
        } else {
            "{prefix}: {spinner} {human_pos} msgs  {msg}  {elapsed}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label);
        bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
        bar
    });
    let flag = done.clone();
    tokio::spawn(async move {
        let mut last = 0u64;
        let mut last_t = Instant::now();
        while !flag.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let n = run.progress.load(Ordering::Relaxed);
            let now = Instant::now();
            let rate = (n - last) as f64 / (now - last_t).as_secs_f64();
            last = n;
            last_t = now;
            if let Ok(mut v) = run.samples.lock() {
                v.push(((now - run.base).as_secs_f64(), rate));
            }
            if let Some(bar) = &bar {
                bar.set_position(n);
                bar.set_message(format!("{} msgs/s", group_digits(rate as u64)));
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    });
    done
}

/// Builds one producer per `--producers`, each on its own connection.
async fn build_producers(run: &Run, addr: &str) -> anyhow::Result<Vec<Producer>> {
    let c = &run.cli;
    let mut v = Vec::new();
    for _ in 0..c.producers {
        let client = Client::connect(addr.to_string()).await?;
        let p = Producer::builder(&client)
            .acks(c.acks.acks())
            .linger(Duration::from_secs_f64(c.linger_ms / 1000.0))
            .max_batch_bytes(run.max_batch_bytes())
            .max_in_flight_per_shard(c.in_flight)
            .build()
            .await?;
        v.push(p);
    }
    Ok(v)
}

/// Runs the producers to completion; returns each one's collector figures.
async fn run_producers(
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
        let collector = tokio::spawn(collect(rx));
        let (done_tx, done_rx) = oneshot::channel();
        let run2 = run.clone();
        let h = handle.clone();
        std::thread::Builder::new()
            .name(format!("producer-{i}"))
            .spawn(move || {
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

/// One producer's sending loop, on its own thread (so open-loop pacing can sleep
/// precisely without blocking the runtime).
async fn produce_loop(
    run: Arc<Run>,
    producer: Producer,
    idx: usize,
    stop: Stop,
    tx: mpsc::UnboundedSender<Pending>,
) -> anyhow::Result<()> {
    let c = &run.cli;
    let shards = shards_of(idx, c.producers, run.shards);
    let e2e = c.mode == Mode::E2e;
    let payload = Bytes::from(vec![0x5au8; c.size]);
    let mut picker = c.priority_mix.as_ref().map(|m| m.picker());
    // Message k of this producer is due at base + (k·P + idx) / rate: producers share
    // the rate equally, each sending every P-th slot.
    let mut step = c.rate.map(|r| 1.0 / r);
    let mut p = c.producers as f64;
    let mut phase = idx as f64;
    let fixed = match (&c.priority_mix, c.class_per_producer) {
        (Some(mix), true) => {
            let (class, n) = producer_class(mix, idx, c.producers);
            let prio = weir_tools::bench::mix::CLASS_PRIORITIES[class].0;
            // This producer sends 1/n of its class's share of the rate.
            if let Some(r) = c.rate {
                let my_rate = r * mix.fraction(class) / n as f64;
                step = Some(1.0 / my_rate);
                p = 1.0;
                phase = idx as f64 / c.producers as f64;
            }
            Some((class, prio))
        }
        _ => None,
    };
    let topic: Arc<str> = c.topic.as_str().into();
    let by_batch = c.api == ApiArg::Batch;
    let mut k: u64 = 0;
    let mut measured_count: u64 = 0;
    let mut sent: u64 = 0;
    let mut batch_no = 0usize;
    // Closed loop keeps at most --in-flight batches unacknowledged per producer, so
    // batch latency is the pipeline's, not the time spent queued inside the SDK.
    let window = Arc::new(Semaphore::new(c.in_flight.max(1)));
    'run: loop {
        let shard = shards[batch_no % shards.len()];
        batch_no += 1;
        let mut held: Option<Pending> = None;
        let mut n: u64 = 0;
        let mut batch_start = run.base;
        let mut measured = false;
        let mut stopping = false;
        let mut permit = match step {
            None => Some(window.clone().acquire_owned().await?),
            Some(_) => None,
        };
        let mut batch =
            by_batch.then(|| ProducerBatch::with_capacity(topic.clone(), c.batch).shard(shard));
        let mut classes = Vec::new();
        while (n as usize) < c.batch {
            let intended = match step {
                Some(step) => {
                    let due = run.base + Duration::from_secs_f64((k as f64 * p + phase) * step);
                    let now = Instant::now();
                    if due > now {
                        // Open loop, batch api: one call carries what is due now.
                        if n > 0 && by_batch {
                            break;
                        }
                        std::thread::sleep(due - now);
                    }
                    due
                }
                None => Instant::now(),
            };
            if n == 0 {
                batch_start = intended;
                measured = intended >= run.warmup_end;
            }
            match stop {
                Stop::Messages(m) if measured && measured_count >= m => stopping = true,
                Stop::Until(t) if intended >= t => stopping = true,
                _ => {}
            }
            if stopping {
                break;
            }
            let value = if e2e {
                let mut b = BytesMut::with_capacity(c.size);
                b.put_u64_le(intended.saturating_duration_since(run.base).as_nanos() as u64);
                b.resize(c.size, 0x5a);
                b.freeze()
            } else {
                payload.clone()
            };
            let mut priority = None;
            if let Some(p) = picker.as_mut() {
                let (cl, prio) = fixed.unwrap_or_else(|| p.next_pick());
                priority = Some(prio);
                if !e2e && measured {
                    classes.push((cl, intended));
                }
            }
            if let Some(b) = batch.as_mut() {
                let mut rec = BatchRecord::new(value);
                rec.priority = priority;
                b.push_record(rec);
            } else {
                let mut rec = ProducerRecord::new(topic.clone(), value).shard(shard);
                rec.priority = priority;
                let fut = producer.send(rec).await?;
                if let Some(h) = held.take() {
                    if !h.classes.is_empty() {
                        let _ = tx.send(h);
                    }
                }
                held = Some(Pending {
                    batch_start,
                    classes: std::mem::take(&mut classes),
                    batch_count: 0,
                    measured,
                    fut: Delivery::Record(fut),
                    permit: None,
                });
            }
            k += 1;
            n += 1;
            if measured {
                measured_count += 1;
            }
        }
        if let Some(b) = batch.take().filter(|b| !b.is_empty()) {
            held = Some(Pending {
                batch_start,
                classes,
                batch_count: 0,
                measured,
                fut: Delivery::Batch(producer.send_batch(b).await?),
                permit: None,
            });
        }
        if let Some(mut h) = held.take() {
            h.batch_count = n;
            h.permit = permit.take();
            let _ = tx.send(h);
        }
        sent += n;
        run.progress.fetch_add(n, Ordering::Relaxed);
        if stopping {
            break 'run;
        }
    }
    run.sent.fetch_add(sent, Ordering::Release);
    producer.flush().await?;
    Ok(())
}

/// The class producer `idx` of `producers` sends with `--class-per-producer`, and how
/// many producers send that class: one per class of the mix, the rest to its largest.
fn producer_class(mix: &PriorityMix, idx: usize, producers: usize) -> (usize, usize) {
    let classes: Vec<usize> = mix.classes().collect();
    let largest = classes
        .iter()
        .copied()
        .max_by(|a, b| mix.fraction(*a).total_cmp(&mix.fraction(*b)))
        .unwrap_or(0);
    let minor: Vec<usize> = classes.iter().copied().filter(|c| *c != largest).collect();
    if idx < minor.len() && producers > minor.len() {
        (minor[idx], 1)
    } else {
        (largest, producers.saturating_sub(minor.len()).max(1))
    }
}

/// Awaits a producer's delivery futures and times them.
async fn collect(mut rx: mpsc::UnboundedReceiver<Pending>) -> ProdStats {
    struct Pending2 {
        batch_start: Instant,
        classes: Vec<(usize, Instant)>,
        batch_count: u64,
        measured: bool,
    }
    let mut st = ProdStats::new();
    let mut inflight = FuturesUnordered::new();
    let mut open = true;
    while open || !inflight.is_empty() {
        let done = tokio::select! {
            p = rx.recv(), if open => match p {
                None => { open = false; continue; }
                Some(p) => {
                    let meta = Pending2 {
                        batch_start: p.batch_start,
                        classes: p.classes,
                        batch_count: p.batch_count,
                        measured: p.measured,
                    };
                    let (fut, permit) = (p.fut, p.permit);
                    inflight.push(async move {
                        let r = fut.wait().await;
                        drop(permit);
                        (meta, Instant::now(), r)
                    });
                    continue;
                }
            },
            Some(d) = inflight.next(), if !inflight.is_empty() => d,
        };
        let (p, at, r) = done;
        match r {
            Ok(_) => {
                for (cl, start) in &p.classes {
                    record_ns(&mut st.classes[*cl], (at - *start).as_nanos() as u64);
                }
                if p.batch_count > 0 && p.measured {
                    record_ns(&mut st.batches, (at - p.batch_start).as_nanos() as u64);
                    st.acked += p.batch_count;
                    st.last_ack = Some(st.last_ack.map_or(at, |l| l.max(at)));
                }
            }
            Err(e) => {
                st.errors += p.batch_count;
                st.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    st
}

/// The curves (all, then each class of the mix) and throughput samples to plot.
fn plot_data(run: &Run, all: &Histogram<u64>, classes: &[Histogram<u64>; 4]) -> PlotData {
    let c = &run.cli;
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
            run.shards
        ),
        curves,
        throughput: run.samples.lock().map(|v| v.clone()).unwrap_or_default(),
    }
}

fn class_summaries(
    hists: &[Histogram<u64>; 4],
    mix: &Option<PriorityMix>,
) -> BTreeMap<String, LatencySummary> {
    let mut out = BTreeMap::new();
    if let Some(m) = mix {
        for c in m.classes() {
            out.insert(
                CLASS_NAMES[c].to_string(),
                LatencySummary::from_histogram(&hists[c]),
            );
        }
    }
    out
}

async fn run_produce(
    cli: Cli,
    shards: u32,
    addr: &str,
    handle: tokio::runtime::Handle,
) -> anyhow::Result<Report> {
    let probe = new_run(cli.clone(), shards);
    let producers = build_producers(&probe, addr).await?;
    let run = new_run(cli, shards);
    let stop = match run.cli.duration {
        Some(d) => Stop::Until(run.warmup_end + Duration::from_secs_f64(d)),
        None => Stop::Messages(run.cli.messages.unwrap_or(1_000_000)),
    };
    let total = match stop {
        Stop::Messages(m) => Some(m),
        _ => None,
    };
    let progress = spawn_progress(run.clone(), "produce", total);
    let stats = run_producers(&run, producers, stop, &handle).await;
    progress.store(true, Ordering::Relaxed);
    let stats = stats?;
    let c = &run.cli;
    let mut batches = new_histogram();
    let mut classes: [Histogram<u64>; 4] = std::array::from_fn(|_| new_histogram());
    let (mut acked, mut errors, mut end) = (0u64, 0u64, run.warmup_end);
    let mut notes = Vec::new();
    for s in &stats {
        batches.add(&s.batches)?;
        for (a, b) in classes.iter_mut().zip(&s.classes) {
            a.add(b)?;
        }
        acked += s.acked;
        errors += s.errors;
        if let Some(l) = s.last_ack {
            end = end.max(l);
        }
        if let Some(e) = &s.first_error {
            notes.push(format!("send failed: {e}"));
        }
    }
    notes.push(format!(
        "--batch {} → max_batch_bytes {} (exactly {} records of {} B), linger {} ms, {} batches in flight per shard",
        c.batch,
        run.max_batch_bytes(),
        c.batch,
        c.size,
        c.linger_ms,
        c.in_flight
    ));
    if c.acks == AckArg::None {
        notes.push("acks=none: a batch counts as acknowledged once written to the socket".into());
    }
    let mut set = settings(&run);
    set.insert("max_batch_bytes".into(), json!(run.max_batch_bytes()));
    Ok(Report {
        mode: Mode::Produce.name().into(),
        messages: acked,
        bytes: acked * c.size as u64,
        duration_s: (end - run.warmup_end).as_secs_f64(),
        latency_kind: if c.priority_mix.is_some() {
            "all: per batch, first send → ack of its last record; classes: per record, send → ack"
                .into()
        } else {
            "per batch: first send → ack of its last record".into()
        },
        latency: LatencySummary::from_histogram(&batches),
        classes: class_summaries(&classes, &c.priority_mix),
        errors,
        settings: set,
        notes,
        plot: plot_data(&run, &batches, &classes),
    })
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

async fn run_consume(
    cli: Cli,
    shards: u32,
    addr: &str,
    admin: &Client,
    handle: tokio::runtime::Handle,
) -> anyhow::Result<Report> {
    let want = cli
        .messages
        .unwrap_or(if cli.duration.is_some() { 0 } else { 1_000_000 });
    let mut notes = Vec::new();
    let ranges = shard_ranges(admin, &cli.topic, shards).await?;
    let have: u64 = ranges.iter().map(|(lo, hi)| hi - lo).sum();
    if have < want {
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
        let prerun = new_run(pre, shards);
        let producers = build_producers(&prerun, addr).await?;
        let prerun = new_run(prerun.cli.clone(), shards);
        let t = Instant::now();
        let stats = run_producers(&prerun, producers, Stop::Messages(missing), &handle).await?;
        let errors: u64 = stats.iter().map(|s| s.errors).sum();
        if errors > 0 {
            bail!("preload: {errors} messages failed");
        }
        notes.push(format!(
            "preloaded {} messages in {:.2} s before consuming",
            group_digits(missing),
            t.elapsed().as_secs_f64()
        ));
    }
    let ranges = shard_ranges(admin, &cli.topic, shards).await?;
    // Consumers read from the earliest offset to the high watermarks seen now.
    let mut consumers = Vec::new();
    for j in 0..cli.consumers {
        let mine = shards_of(j, cli.consumers, shards);
        let mine = if cli.consumers > shards as usize && j >= shards as usize {
            Vec::new()
        } else {
            mine
        };
        let client = Client::connect(addr.to_string()).await?;
        let mut consumer = Consumer::builder(&client)
            .topic(cli.topic.clone())
            .reset(OffsetReset::Earliest)
            .order(cli.order.order())
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
        consumers.push((consumer, ends, target));
    }
    let total: u64 = consumers.iter().map(|c| c.2).sum();
    let run = new_run(cli, shards);
    let until = run
        .cli
        .duration
        .map(|d| run.base + Duration::from_secs_f64(d));
    let progress = spawn_progress(run.clone(), "consume", Some(total));
    let mut tasks = Vec::new();
    for (consumer, ends, target) in consumers {
        let run = run.clone();
        tasks.push(tokio::spawn(consume_loop(
            run, consumer, ends, target, until,
        )));
    }
    let mut st = Vec::new();
    for t in tasks {
        st.push(t.await?);
    }
    progress.store(true, Ordering::Relaxed);
    let c = &run.cli;
    let mut lat = new_histogram();
    let (mut got, mut errors, mut end) = (0u64, 0u64, run.base);
    for s in &st {
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
    if until.is_none() && got < total {
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
        classes: BTreeMap::new(),
        errors,
        settings: settings(&run),
        notes,
        plot: plot_data(&run, &lat, &std::array::from_fn(|_| new_histogram())),
    })
}

async fn consume_loop(
    run: Arc<Run>,
    mut consumer: Consumer,
    ends: HashMap<u32, u64>,
    target: u64,
    until: Option<Instant>,
) -> ConsStats {
    let mut st = ConsStats::new();
    let mut idle_since = Instant::now();
    while st.received < target {
        if until.is_some_and(|u| Instant::now() >= u) {
            break;
        }
        let t = Instant::now();
        // Records returned by this poll that lie below their shard's end offset at the
        // start of the run (`None`: the poll returned nothing).
        let polled: weir_client::Result<Option<u64>> = if run.cli.api == ApiArg::Batch {
            consumer
                .poll_batches(100_000, Duration::from_millis(100))
                .await
                .map(|batches| {
                    (!batches.is_empty()).then(|| {
                        batches
                            .iter()
                            .map(|b| {
                                let end = ends.get(&b.shard()).copied().unwrap_or(0);
                                end.min(b.next_offset()).saturating_sub(b.first_offset())
                            })
                            .sum()
                    })
                })
        } else {
            consumer
                .poll(100_000, Duration::from_millis(100))
                .await
                .map(|msgs| {
                    (!msgs.is_empty()).then(|| {
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
                    })
                })
        };
        match polled {
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
                        "no messages for 10 s with {} of {target} read; giving up",
                        st.received
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

async fn run_e2e(
    cli: Cli,
    shards: u32,
    addr: &str,
    handle: tokio::runtime::Handle,
) -> anyhow::Result<Report> {
    let probe = new_run(cli.clone(), shards);
    let producers = build_producers(&probe, addr).await?;
    let mut consumers = Vec::new();
    for j in 0..cli.consumers.min(shards as usize) {
        let mine = shards_of(j, cli.consumers.min(shards as usize), shards);
        let client = Client::connect(addr.to_string()).await?;
        let mut consumer = Consumer::builder(&client)
            .topic(cli.topic.clone())
            .reset(OffsetReset::Latest)
            .order(cli.order.order())
            .build()?;
        consumer.assign(mine.iter().map(|s| (cli.topic.clone(), *s)).collect());
        consumer.poll(1, Duration::ZERO).await?; // start at the end, before sending
        consumers.push(consumer);
    }
    let run = new_run(cli, shards);
    let stop = match run.cli.duration {
        Some(d) => Stop::Until(run.warmup_end + Duration::from_secs_f64(d)),
        None => Stop::Messages(run.cli.messages.unwrap_or(1_000_000)),
    };
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for consumer in consumers {
        tasks.push(tokio::spawn(e2e_consume_loop(
            run.clone(),
            consumer,
            received.clone(),
        )));
    }
    let total = match stop {
        Stop::Messages(m) => Some(m),
        _ => None,
    };
    let progress = spawn_progress(run.clone(), "e2e (sent)", total);
    let pstats = run_producers(&run, producers, stop, &handle).await;
    run.producers_done.store(true, Ordering::Release);
    let mut st = Vec::new();
    for t in tasks {
        st.push(t.await?);
    }
    progress.store(true, Ordering::Relaxed);
    let pstats = pstats?;
    let c = &run.cli;
    let mut lat = new_histogram();
    let mut classes: [Histogram<u64>; 4] = std::array::from_fn(|_| new_histogram());
    let (mut measured, mut got, mut errors, mut end) = (0u64, 0u64, 0u64, run.warmup_end);
    let mut notes = Vec::new();
    for s in &st {
        lat.add(&s.latency)?;
        for (a, b) in classes.iter_mut().zip(&s.classes) {
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
    for s in &pstats {
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
        classes: class_summaries(&classes, &c.priority_mix),
        errors,
        settings: settings(&run),
        notes,
        plot: plot_data(&run, &lat, &classes),
    })
}

async fn e2e_consume_loop(
    run: Arc<Run>,
    mut consumer: Consumer,
    received: Arc<AtomicU64>,
) -> ConsStats {
    let mut st = ConsStats::new();
    let warmup_ns = (run.warmup_end - run.base).as_nanos() as u64;
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
                let now_ns = (now - run.base).as_nanos() as u64;
                for m in &msgs {
                    let Some(ts) = m.value.get(..8) else {
                        continue;
                    };
                    let ts = u64::from_le_bytes(ts.try_into().expect("8 bytes"));
                    if ts < warmup_ns {
                        continue;
                    }
                    let lat = now_ns.saturating_sub(ts);
                    record_ns(&mut st.latency, lat);
                    record_ns(&mut st.classes[class_of_priority(m.priority)], lat);
                    st.measured += 1;
                }
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

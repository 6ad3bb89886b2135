//! `weir-bench`'s command line: the flags, their value enums and the checks clap
//! cannot express. Every mode reads its settings from [`Args`].

use std::path::PathBuf;

use anyhow::bail;
use clap::{Parser, ValueEnum};
use weir_client::{Acks, DeliveryOrder};

use super::mix::PriorityMix;

/// Load-test a Weir broker: produce, consume, or end to end.
#[derive(Parser, Debug, Clone)]
#[command(version, about, after_help = AFTER_HELP)]
pub struct Args {
    #[arg(value_enum)]
    pub mode: Mode,
    /// Broker address, or a cluster's node addresses separated by commas (ignored
    /// with --embedded).
    #[arg(long, default_value = "127.0.0.1:7700", env = "WEIR_BROKER")]
    pub broker: String,
    /// TLS to reach a secured broker.
    #[command(flatten)]
    pub connect: crate::connect::ConnectArgs,
    /// Start a broker in this process, with a temporary data directory (WEIR_* variables
    /// set its other settings, as for weir-broker).
    #[arg(long)]
    pub embedded: bool,
    /// How the bench's clients reach an --embedded broker: `in-process` (channels, no
    /// socket; the default) or `tcp` (loopback, as another process would).
    #[arg(long, value_enum, default_value_t = TransportArg::InProcess)]
    pub transport: TransportArg,
    /// Producer count (each with its own connection and thread).
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Consumer count (each with its own connection), for consume and e2e.
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    #[arg(long, default_value = "weir-bench")]
    pub topic: String,
    /// Shards of the topic (default: the larger of --producers and --consumers).
    /// Producer i sends to shards i, i+P, …; consumer j reads shards j, j+C, ….
    #[arg(long)]
    pub shards: Option<u32>,
    /// Copies of each shard when the bench creates the topic, the primary included
    /// (0 = the broker's default; a single-node broker keeps one). For `--acks
    /// mirrored` on a cluster.
    #[arg(long, default_value_t = 0)]
    pub replicas: u8,
    /// The topic's durability when the bench creates it: `none` (left to the OS's
    /// write-back), `interval` (the default: flushed every flush_interval_ms) or
    /// `always`.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Interval)]
    pub durability: DurabilityArg,
    /// In-sync copies a mirrored produce needs, when the bench creates the topic
    /// (0 = the broker's default).
    #[arg(long, default_value_t = 0)]
    pub min_in_sync: u8,
    /// Messages to send (after warmup); default 1,000,000 unless --duration is given.
    #[arg(long, conflicts_with = "duration")]
    pub messages: Option<u64>,
    /// Seconds to run (after warmup).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Payload bytes per message (e2e needs at least 8).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Messages per batch: the producer's max_batch_bytes is set to fit exactly this many.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Longest a batch waits for more messages, in ms (fractions allowed); 0 sends a
    /// batch as soon as its lane has room in flight (the SDK's default).
    #[arg(long, default_value_t = 5.0)]
    pub linger_ms: f64,
    /// How producers hand records to the SDK: `batch` = one `send_batch` call per
    /// batch of --batch records (as iggy-bench sends a batch with one call; in open
    /// loop, one call per wake-up with every message then due), `record` = one `send`
    /// per record. consume's consumers: `batch` = `poll_batches` (whole batches,
    /// records not decoded), `record` = `poll` (one decoded message per record).
    #[arg(long, value_enum, default_value_t = ApiArg::Batch)]
    pub api: ApiArg,
    #[arg(long, value_enum, default_value_t = AckArg::Leader)]
    pub acks: AckArg,
    /// Batches in flight per shard and producer, fixed: 1..=5 (the producers are
    /// idempotent, and the broker recognises retries among a lane's last five
    /// batches). Unset: the SDK's default
    /// adaptive window (up to 5 per lane), and a closed-loop producer keeps as many
    /// batches outstanding as its lane's current window (so none queues inside the
    /// SDK, as with a fixed --in-flight).
    #[arg(long)]
    pub in_flight: Option<usize>,
    /// Open loop: total messages per second over all producers.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop: how a producer thread waits until its next message is due. `sleep`
    /// asks the kernel for a timer each time; below ~50 µs between messages that costs
    /// more CPU than the broker (a virtual machine's timer is slow to arm) and wakes
    /// late. `spin` yields its core to any other runnable thread until the time comes
    /// (sleeping only for waits over 2 ms): punctual, but the thread never idles.
    #[arg(long, value_enum, default_value_t = PacingArg::Sleep)]
    pub pacing: PacingArg,
    /// Open loop: a producer thread waits at least this many µs between its wake-ups
    /// and sends what is due by then together (one batch with `--api batch`). Fewer
    /// timer wake-ups leave more CPU to the broker on a small machine; each message's
    /// latency is still timed from its own intended send time, so the wait shows in
    /// it. 0: wake for every message's time. Default with `--pacing sleep`: eight times
    /// the CPU one timer sleep costs on this machine, measured at start (see
    /// `bench/pacing.rs`; the report's settings and notes give the figure); with
    /// `--pacing spin`, 0.
    #[arg(long)]
    pub pacing_tick_us: Option<u64>,
    /// Let the kernel give this process transparent huge pages. Off by default, as in
    /// weir-broker (`transparent_huge_pages`): the first touch of a 2 MiB page stalls
    /// the touching thread while the kernel zeroes it, which shows up in the tails
    /// the bench measures.
    #[arg(long)]
    pub huge_pages: bool,
    /// Share of messages per priority class, e.g. "p0=5,p3=95"
    /// (p0 = priorities 1–2, p1 = 3–5, p2 = 6–8, p3 = 9–10).
    #[arg(long)]
    pub priority_mix: Option<PriorityMix>,
    /// With a mix: each producer sends one class only (one producer per class of the
    /// mix, the rest to its largest class), and with --rate each class's producers
    /// share the class's part of the rate. Models separate critical and bulk services.
    #[arg(long, requires = "priority_mix")]
    pub class_per_producer: bool,
    /// Consumers read in `offset` order or `priority` order (class lanes, P0 first).
    #[arg(long, value_enum, default_value_t = OrderArg::Offset)]
    pub order: OrderArg,
    /// Consumers ask for at most this many bytes per shard in one fetch (the SDK's
    /// `max_fetch_bytes`; its default when unset).
    #[arg(long)]
    pub fetch_bytes: Option<u32>,
    /// Seconds run first and left out of the figures.
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// Print one JSON object on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// failover: cluster nodes the bench starts (weir-broker processes on loopback).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// failover: how many times the primary of shard 0 is killed (kill -9) and
    /// restarted.
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// failover: the weir-broker binary to start (default: the one beside weir-bench).
    #[arg(long)]
    pub broker_bin: Option<PathBuf>,
    /// failover: kill the primary of a shard that is not on the controller, when one
    /// of the `--shards` is (without it, shard 0's primary, wherever it is).
    #[arg(long)]
    pub avoid_controller: bool,
    /// failover: keep the nodes' data directories and logs after the run.
    #[arg(long)]
    pub keep_data: bool,
    /// Also draw the latency percentile curve (per class with a mix) and throughput
    /// over time into this file: `.svg`, or `.html` for a page holding the SVG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// forecast: the trace to replay, `unix_seconds,value` lines.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// forecast: how far ahead to forecast, in seconds.
    #[arg(long, default_value_t = 60)]
    pub horizon_s: u64,
    /// forecast: the season in seconds (default: detected on the trace's first half).
    #[arg(long)]
    pub season_s: Option<u64>,
    /// trace: the shape of the load produced.
    #[arg(long, value_enum, default_value_t = Profile::Ramp)]
    pub profile: Profile,
    /// trace: the period of the diurnal profile, in seconds (a compressed day).
    #[arg(long, default_value_t = 600.0)]
    pub period_s: f64,
    /// trace: where to write the recorded trace.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// ramp: the starting rate in records/s (default `--rate / 5`; `--rate` is the
    /// end rate, default 100000).
    #[arg(long)]
    pub from_rate: Option<f64>,
    /// ramp: seconds the rate rises from `--from-rate` to `--rate`.
    #[arg(long, default_value_t = 60.0)]
    pub ramp_s: f64,
    /// ramp: seconds held at the starting rate before, and at the end rate after.
    #[arg(long, default_value_t = 20.0)]
    pub hold_s: f64,
    /// ramp: records/s one shard is planned to take (`shard_capacity_records_per_s`;
    /// default twice the starting rate).
    #[arg(long)]
    pub capacity: Option<f64>,
}

const AFTER_HELP: &str = "Produce latency is per batch (first send → ack of the batch's last \
record); e2e latency is per message, measured at the consumer from the intended send time; \
consume latency is per poll. MB = 10^6 payload bytes.";

impl Args {
    /// The consumers' `max_fetch_bytes`: `--fetch-bytes`, else the SDK's default.
    pub fn fetch_bytes(&self) -> u32 {
        self.fetch_bytes
            .unwrap_or_else(|| weir_client::ConsumerConfig::default().max_fetch_bytes)
    }

    /// Rejects settings clap accepts but no run can use (exit code 2 in the binary).
    pub fn check(&self) -> anyhow::Result<()> {
        if self.producers == 0 || self.consumers == 0 {
            bail!("--producers and --consumers must be at least 1");
        }
        if self.batch == 0 {
            bail!("--batch must be at least 1");
        }
        if self.mode == Mode::Failover && (self.nodes < 2 || self.kills == 0 || self.size < 20) {
            bail!("failover needs --nodes ≥ 2, --kills ≥ 1 and --size ≥ 20 (the value carries a 20-digit sequence number)");
        }
        if self.mode == Mode::E2e && self.size < 8 {
            bail!("e2e needs --size of at least 8 (the payload carries an 8-byte send time)");
        }
        if self.fetch_bytes == Some(0) {
            bail!("--fetch-bytes must be at least 1");
        }
        if self.rate.is_some_and(|r| !r.is_finite() || r <= 0.0) {
            bail!("--rate must be a positive number");
        }
        if self.duration.is_some_and(|d| !d.is_finite() || d <= 0.0) {
            bail!("--duration must be a positive number of seconds");
        }
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        if !ok(self.warmup) || !ok(self.linger_ms) {
            bail!("--warmup and --linger-ms must be ≥ 0");
        }
        if self.mode == Mode::Forecast && (self.trace.is_none() || self.horizon_s == 0) {
            bail!("forecast needs --trace FILE.csv and --horizon-s ≥ 1");
        }
        if self.mode == Mode::Trace
            && (self.out.is_none() || self.duration.is_none() || self.rate.is_none())
        {
            bail!("trace needs --out FILE.csv, --duration and --rate");
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if self.mode == Mode::Ramp
            && !(positive(self.ramp_s)
                && self.hold_s.is_finite()
                && self.hold_s >= 0.0
                && self.from_rate.is_none_or(positive)
                && self.capacity.is_none_or(positive))
        {
            bail!("ramp needs --ramp-s > 0, --hold-s ≥ 0, and positive --from-rate and --capacity");
        }
        if !(self.period_s.is_finite() && self.period_s > 0.0) {
            bail!("--period-s must be a positive number of seconds");
        }
        if self.shards == Some(0) {
            bail!("--shards must be at least 1");
        }
        if let Some(p) = &self.plot {
            // The plot is drawn as SVG; a `.png` holding SVG text opens as a broken image.
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            if !ext.eq_ignore_ascii_case("svg") && !ext.eq_ignore_ascii_case("html") {
                bail!(
                    "--plot {}: the plot is SVG; name the file .svg (or .html for a page holding it)",
                    p.display()
                );
            }
        }
        Ok(())
    }
}

/// What the run measures; each has its own module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Produce,
    Consume,
    E2e,
    /// Starts its own cluster (`--nodes`), kills the primary `--kills` times under
    /// mirrored load and reports switchover times; `--broker` is not used.
    Failover,
    /// Backtests the forecaster on `--trace` and prints one JSON object.
    Forecast,
    /// Produces along `--profile` and records the broker's measured ingest rate
    /// (LoadHistory) into `--out`, one line a second.
    Trace,
    /// A 5× ramp on a one-shard topic of an embedded broker with automatic sharding,
    /// predictive then reactive: produce latency per 10 s window and every reshard.
    Ramp,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Produce => "produce",
            Mode::Consume => "consume",
            Mode::E2e => "e2e",
            Mode::Failover => "failover",
            Mode::Forecast => "forecast",
            Mode::Trace => "trace",
            Mode::Ramp => "ramp",
        }
    }
}

/// `--pacing`: how an open-loop producer waits for its next message's time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PacingArg {
    Sleep,
    Spin,
}

/// `--order`: the consumers' delivery order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OrderArg {
    Offset,
    Priority,
}

impl OrderArg {
    pub fn order(self) -> DeliveryOrder {
        match self {
            OrderArg::Offset => DeliveryOrder::Offset,
            OrderArg::Priority => DeliveryOrder::Priority,
        }
    }
}

/// `--durability`: the bench topic's durability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    None,
    Interval,
    Always,
}

impl DurabilityArg {
    pub fn durability(self) -> weir_client::Durability {
        match self {
            DurabilityArg::None => weir_client::Durability::None,
            DurabilityArg::Interval => weir_client::Durability::Interval,
            DurabilityArg::Always => weir_client::Durability::Always,
        }
    }
}

/// `--transport`: how clients reach an embedded broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    InProcess,
    Tcp,
}

impl TransportArg {
    pub fn name(self) -> &'static str {
        match self {
            TransportArg::InProcess => "in-process",
            TransportArg::Tcp => "tcp",
        }
    }
}

/// `--api`: one SDK call per batch or per record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ApiArg {
    Batch,
    Record,
}

impl ApiArg {
    pub fn name(self) -> &'static str {
        match self {
            ApiArg::Batch => "batch",
            ApiArg::Record => "record",
        }
    }
}

/// `--acks`: what the producers wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AckArg {
    None,
    Leader,
    Durable,
    /// Every in-sync copy of the shard holds the batch (a cluster; a single node
    /// answers it like durable, or refuses it when a topic needs more copies).
    Mirrored,
}

impl AckArg {
    pub fn acks(self) -> Acks {
        match self {
            AckArg::None => Acks::None,
            AckArg::Leader => Acks::Leader,
            AckArg::Durable => Acks::Durable,
            AckArg::Mirrored => Acks::Mirrored,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            AckArg::None => "none",
            AckArg::Leader => "leader",
            AckArg::Durable => "durable",
            AckArg::Mirrored => "mirrored",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(args: &[&str]) -> anyhow::Result<()> {
        Args::try_parse_from(std::iter::once("weir-bench").chain(args.iter().copied()))
            .expect("flags parse")
            .check()
    }

    #[test]
    fn plot_must_be_svg_or_html() {
        assert!(check(&["produce", "--plot", "x.svg"]).is_ok());
        assert!(check(&["produce", "--plot", "x.HTML"]).is_ok());
        let e = check(&["produce", "--plot", "x.png"]).expect_err("png refused");
        assert!(e.to_string().contains(".svg"), "{e}");
        assert!(check(&["produce", "--plot", "plot"]).is_err());
    }
}

/// The shape of a recorded trace's load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// From 20 % to 100 % of --rate, linearly over the run.
    Ramp,
    /// A compressed day: 60 % ± 40 % of --rate, a sine of period --period-s.
    Diurnal,
    /// 30 % of --rate, with bursts to 100 % of 5–20 s starting at random.
    Bursty,
    /// Independent uniform draws between 50 % and 150 % of --rate, one per second.
    Noise,
}

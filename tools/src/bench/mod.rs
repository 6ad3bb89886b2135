//! `weir-bench`, Weir's load generator: one module per mode ([`produce`], [`consume`],
//! [`e2e`]) over shared parts (the run's settings and clock in [`mod@run`], the broker in
//! [`target`], the progress bar, priority mixes, the report and its plot).
//! [`failover`] starts a cluster of its own and is run apart from the others.
//! `bin/weir-bench.rs` only parses [`args::Args`], calls [`run()`] and prints.
//!
//! How it measures (also in BENCHMARKS.md):
//! - `--batch N` sets the producer's `max_batch_bytes` to exactly N records of `--size`
//!   bytes (60-byte batch header + N × (18-byte record overhead + size)), so the SDK
//!   seals a batch after N records; `--linger-ms` seals earlier when records come slower.
//!   Batches are pipelined: the SDK keeps `--in-flight` batches in flight per shard
//!   (without it, its adaptive window), and in closed loop each producer keeps at most
//!   that many batches unacknowledged (so latency is the pipeline's, not queueing
//!   inside the SDK). The bench never calls `flush()` except once at the end.
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
//!   producer sends its messages at their due times (sleeping on its own thread, and
//!   waking at most once per pacing tick: by default eight times the CPU one timer
//!   sleep costs here, see [`pacing`]) and latency counts from the due time, so a
//!   stall or the wait for the tick shows as latency, not as a lower rate.
//! - consume latency is the duration of each `poll` call that returned messages.
//! - `--warmup S`: the first S seconds run at full settings and are left out of every
//!   figure; `--messages` and `--duration` count after the warmup.

pub mod args;
mod collector;
pub mod consume;
pub mod e2e;
pub mod failover;
pub mod forecast;
pub mod mix;
pub mod pacing;
pub mod plot;
pub mod produce;
mod producer;
mod progress;
pub mod ramp;
pub mod report;
pub mod run;
pub mod target;
pub mod timeline;

use args::{Args, Mode};
use report::Report;
use target::Target;

/// Runs one bench: prepares the broker and topic, runs the mode, stops the embedded
/// broker (whatever the outcome).
pub async fn run(mut cli: Args, handle: tokio::runtime::Handle) -> anyhow::Result<Report> {
    let pacing_note = resolve_pacing_tick(&mut cli);
    let target = Target::prepare(&cli).await?;
    let cpu_before = process_cpu_ns();
    let embedded = cli.embedded;
    let report = match cli.mode {
        Mode::Produce => produce::run_produce(cli, &target, handle).await,
        Mode::Consume => consume::run_consume(cli, &target, handle).await,
        Mode::E2e => e2e::run_e2e(cli, &target, handle).await,
        Mode::Failover => unreachable!("failover runs through failover::run_failover"),
        Mode::Forecast | Mode::Trace => {
            unreachable!("forecast and trace run through the forecast module")
        }
        Mode::Ramp => unreachable!("ramp runs through ramp::run_ramp"),
    };
    let cpu_ns = process_cpu_ns().saturating_sub(cpu_before);
    target.shutdown().await;
    report.map(|mut r| {
        r.notes.extend(pacing_note);
        if r.messages > 0 {
            // The whole process: with --embedded that is the broker and the clients.
            let per_message = cpu_ns as f64 / r.messages as f64;
            r.settings
                .insert("cpu_ns_per_message".into(), serde_json::json!(per_message.round()));
            r.notes.push(format!(
                "CPU of this process (user + system, warmup and setup included): {:.0} ns per message{}",
                per_message,
                if embedded { ", broker included" } else { "" }
            ));
        }
        r
    })
}

/// Open loop with sleeping producers and no `--pacing-tick-us`: measures what a timer
/// sleep costs here and sets the tick from it ([`pacing`]); returns the report's note.
fn resolve_pacing_tick(cli: &mut Args) -> Option<String> {
    let paced = matches!(cli.mode, Mode::Produce | Mode::E2e) && cli.rate.is_some();
    if !paced || cli.pacing != args::PacingArg::Sleep || cli.pacing_tick_us.is_some() {
        return None;
    }
    let cost = pacing::measure_sleep();
    let tick = pacing::tick_for(cost);
    cli.pacing_tick_us = Some(tick.as_micros() as u64);
    Some(format!(
        "pacing tick {} µs (automatic: a 10 µs sleep costs {:.1} µs of CPU and takes {:.1} µs here; --pacing-tick-us 0 wakes for every message)",
        tick.as_micros(),
        cost.cpu.as_nanos() as f64 / 1e3,
        cost.wall.as_nanos() as f64 / 1e3,
    ))
}

/// User plus system CPU time this process has used, in nanoseconds.
fn process_cpu_ns() -> u64 {
    // SAFETY: getrusage only writes into the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0;
    }
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    ns(u.ru_utime) + ns(u.ru_stime)
}

/// Writes the `--plot` file: HTML for a `.html` path, else SVG (`Args::check` refuses
/// any other extension).
pub fn write_plot(path: &std::path::Path, data: &plot::PlotData) -> std::io::Result<()> {
    let text = if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("html"))
    {
        plot::html(data)
    } else {
        plot::svg(data)
    };
    std::fs::write(path, text)
}

//! `weir queue status` and `weir consume --mode queue`: the operator's side of queue
//! mode (dead letters are in `dlq.rs`).
//!
//! A queue whose records keep failing opens its circuit breaker and then leases
//! nothing for a while. Both commands say so in words, from what QueueStatus carries
//! (state, time in it, the window's outcomes, and while open how long until it
//! half-opens).

use std::io::Write;
use std::time::{Duration, Instant};

use clap::Subcommand;
use weir_client::{Client, QueueConfig, QueueConsumer};
use weir_protocol::messages::*;

use super::consume::{write_message, ConsumeArgs};
use super::{Interrupted, Signals};

/// The broker's default `queue_breaker_half_open_pct` (CONFIG.md).
const DEFAULT_HALF_OPEN_PCT: u32 = 10;
/// How often an idle queue consumer asks why nothing is leased.
const BREAKER_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often the pause note is repeated while the breaker stays open.
const BREAKER_NOTE_EVERY: Duration = Duration::from_secs(10);

/// Queue-mode group commands.
#[derive(Subcommand, Debug)]
pub enum QueueCmd {
    /// Breaker state (and why it is open), counters and per-shard floors of queues.
    #[command(after_help = "\
weir queue status            every queue
weir queue status TOPIC      the queues of TOPIC (also: --topic TOPIC)
weir queue status TOPIC --group G")]
    Status {
        /// Only queues of this topic (all when left out).
        #[arg(value_name = "TOPIC", conflicts_with = "topic")]
        topic_arg: Option<String>,
        /// Only this group's queues.
        #[arg(long, default_value = "")]
        group: String,
        /// The same as the TOPIC argument (kept for scripts that pass it as a flag).
        #[arg(long, default_value = "")]
        topic: String,
    },
}

/// Runs one queue command.
pub async fn run(client: &Client, cmd: QueueCmd) -> anyhow::Result<()> {
    match cmd {
        QueueCmd::Status {
            topic_arg,
            group,
            topic,
        } => {
            let topic = topic_arg.unwrap_or(topic);
            queue_status(client, &group, &topic).await
        }
    }
}

fn breaker_name(code: u8) -> &'static str {
    match code {
        BREAKER_CLOSED => "closed",
        BREAKER_OPEN => "open",
        BREAKER_HALF_OPEN => "half-open",
        _ => "unknown",
    }
}

/// `weir queue status`: every queue's breaker, counters and shards.
pub async fn queue_status(client: &Client, group: &str, topic: &str) -> anyhow::Result<()> {
    let queues = weir_client::queue_status(client, group, topic).await?;
    print_queues(&queues);
    Ok(())
}

/// Prints queue states (also used by `weir status`).
pub fn print_queues(queues: &[QueueStatus]) {
    println!("{} queues", queues.len());
    for q in queues {
        println!(
            "  {} on {}: breaker {} for {} ms (window {} ok / {} failed); leased {} acked {} nacked {} expired {} redelivered {} dead-lettered {}",
            q.group, q.topic, breaker_name(q.breaker_state), q.breaker_state_ms,
            q.window_successes, q.window_failures, q.leased, q.acked, q.nacked, q.expired,
            q.redelivered, q.dead_lettered
        );
        if let Some(why) = breaker_explanation(q) {
            println!("    {why}");
        }
        for s in &q.shards {
            println!(
                "    shard {}: floor {} next {} hwm {}; leased {} waiting {} dying {} done above floor {}",
                s.shard, s.ack_floor, s.next_offset, s.high_watermark, s.leased, s.waiting,
                s.dying, s.done_above_floor
            );
        }
    }
}

/// In words, why a queue's breaker is not closed and what that means for deliveries;
/// `None` when it is closed.
pub fn breaker_explanation(q: &QueueStatus) -> Option<String> {
    let (ok, failed) = (u64::from(q.window_successes), u64::from(q.window_failures));
    let outcomes = ok + failed;
    let pct = (failed * 100).checked_div(outcomes).unwrap_or(0);
    let window = format!(
        "{failed} of the {outcomes} outcomes in its window failed ({pct}%; failures are nacks and expired leases)"
    );
    match q.breaker_state {
        BREAKER_OPEN => Some(format!(
            "breaker open because too many deliveries failed: {window}. Deliveries are paused \
                 (nothing is leased, so nothing is retried or dead-lettered) since it opened {} ms \
                 ago; it half-opens in {} ms",
            q.breaker_state_ms, q.breaker_reopens_in_ms
        )),
        BREAKER_HALF_OPEN => Some(format!(
            "breaker half-open for {} ms (it had opened because too many deliveries failed): \
             only a share of the records asked for is leased (queue_breaker_half_open_pct, \
             default {}%) until enough of them succeed; now {window}",
            q.breaker_state_ms, DEFAULT_HALF_OPEN_PCT
        )),
        BREAKER_CLOSED => None,
        other => Some(format!("breaker in unknown state {other}")),
    }
}

/// `weir consume TOPIC --group G --mode queue`: leases records, prints them in
/// `--format`, then acks each after `--ack-after-ms` (or nacks every one with
/// `--nack-all`). While nothing is leased it looks at the queue's breaker and says on
/// standard error when deliveries are paused by it.
pub async fn consume_queue(client: &Client, group: &str, args: &ConsumeArgs) -> anyhow::Result<()> {
    let mut signals = Signals::new()?;
    let (count, timeout_ms) = (args.count, args.timeout_ms);
    let q = QueueConsumer::with_config(
        client,
        group,
        &args.topic,
        QueueConfig {
            consumer: "weir-cli".into(),
            lease: Duration::ZERO,
            max_wait: Duration::from_millis(timeout_ms.clamp(1, 500)),
        },
    );
    let classes = client.class_map();
    let mut handled = 0usize;
    let mut idle_since = Instant::now();
    let mut breaker = BreakerWatch::default();
    let mut out = std::io::stdout().lock();
    while count.is_none_or(|c| handled < c) {
        let want = count.map_or(100, |c| (c - handled).min(100)) as u32;
        let msgs = tokio::select! {
            r = q.fetch(want) => r?,
            signal = signals.recv() => return Err(Interrupted { signal }.into()),
        };
        if msgs.is_empty() {
            breaker.check(&q).await;
            if idle_since.elapsed() >= Duration::from_millis(timeout_ms) {
                break;
            }
            continue;
        }
        breaker.resumed();
        idle_since = Instant::now();
        for m in msgs {
            write_message(&mut out, &m.message, args.format, &classes)?;
            if args.nack_all {
                q.nack(&m, true, "nacked by weir consume --nack-all")
                    .await?;
            } else {
                if args.ack_after_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(args.ack_after_ms)).await;
                }
                q.ack(&m).await?;
            }
            handled += 1;
        }
        out.flush()?;
    }
    Ok(())
}

/// What an idle queue consumer last said about the breaker.
#[derive(Default)]
struct BreakerWatch {
    checked: Option<Instant>,
    /// State and time of the last note printed.
    noted: Option<(u8, Instant)>,
}

impl BreakerWatch {
    /// At most every [`BREAKER_CHECK_EVERY`]: asks for the queue's state and, when the
    /// breaker is not closed, notes it on standard error (again on a change of state
    /// or every [`BREAKER_NOTE_EVERY`]).
    async fn check(&mut self, q: &QueueConsumer) {
        if self
            .checked
            .is_some_and(|t| t.elapsed() < BREAKER_CHECK_EVERY)
        {
            return;
        }
        self.checked = Some(Instant::now());
        // The queue may not exist yet (nothing fetched): nothing to say then.
        let Ok(status) = q.status().await else { return };
        let Some(why) = breaker_explanation(&status) else {
            self.resumed();
            return;
        };
        let repeat = match self.noted {
            Some((state, at)) => {
                state != status.breaker_state || at.elapsed() >= BREAKER_NOTE_EVERY
            }
            None => true,
        };
        if repeat {
            let held = if status.breaker_state == BREAKER_OPEN {
                "paused"
            } else {
                "throttled"
            };
            eprintln!(
                "weir consume: deliveries of queue {} on {} are {held} by its circuit breaker: {why}",
                status.group, status.topic
            );
            self.noted = Some((status.breaker_state, Instant::now()));
        }
    }

    /// Records arrived (or the breaker is closed): say so once if a pause was noted.
    fn resumed(&mut self) {
        if self.noted.take().is_some() {
            eprintln!("weir consume: deliveries resumed");
        }
    }
}

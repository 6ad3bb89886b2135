//! `weir queue status` and `weir consume --mode queue`: the operator's side of queue
//! mode (dead letters are in `dlq.rs`).

use std::io::Write;
use std::time::{Duration, Instant};

use clap::Subcommand;
use weir_client::{Client, QueueConfig, QueueConsumer};
use weir_protocol::messages::*;

/// Queue-mode group commands.
#[derive(Subcommand, Debug)]
pub enum QueueCmd {
    /// Breaker state, counters and per-shard floors of queues.
    Status {
        #[arg(long, default_value = "")]
        group: String,
        #[arg(long, default_value = "")]
        topic: String,
    },
}

/// Runs one queue command.
pub async fn run(client: &Client, cmd: QueueCmd) -> anyhow::Result<()> {
    match cmd {
        QueueCmd::Status { group, topic } => queue_status(client, &group, &topic).await,
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
        for s in &q.shards {
            println!(
                "    shard {}: floor {} next {} hwm {}; leased {} waiting {} dying {} done above floor {}",
                s.shard, s.ack_floor, s.next_offset, s.high_watermark, s.leased, s.waiting,
                s.dying, s.done_above_floor
            );
        }
    }
}

/// `weir consume TOPIC --group G --mode queue`: leases records, prints their values,
/// then acks each after `ack_after_ms` (or nacks every one with `nack_all`).
pub async fn consume_queue(
    client: &Client,
    topic: &str,
    group: &str,
    count: Option<usize>,
    timeout_ms: u64,
    nack_all: bool,
    ack_after_ms: u64,
) -> anyhow::Result<()> {
    let q = QueueConsumer::with_config(
        client,
        group,
        topic,
        QueueConfig {
            consumer: "weir-cli".into(),
            lease: Duration::ZERO,
            max_wait: Duration::from_millis(timeout_ms.clamp(1, 500)),
        },
    );
    let mut handled = 0usize;
    let mut idle_since = Instant::now();
    let mut out = std::io::stdout().lock();
    while count.is_none_or(|c| handled < c) {
        let want = count.map_or(100, |c| (c - handled).min(100)) as u32;
        let msgs = q.fetch(want).await?;
        if msgs.is_empty() {
            if idle_since.elapsed() >= Duration::from_millis(timeout_ms) {
                break;
            }
            continue;
        }
        idle_since = Instant::now();
        for m in msgs {
            out.write_all(&m.value)?;
            out.write_all(b"\n")?;
            if nack_all {
                q.nack(&m, true, "nacked by weir consume --nack-all")
                    .await?;
            } else {
                if ack_after_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(ack_after_ms)).await;
                }
                q.ack(&m).await?;
            }
            handled += 1;
        }
        out.flush()?;
    }
    Ok(())
}

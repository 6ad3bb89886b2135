//! `weir produce TOPIC`: one message per line of standard input.
//!
//! Acknowledgements are awaited in rounds of at most 10,000 so memory stays bounded
//! however long the input is; the last round's failures are counted and reported.

use std::io::BufRead;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use weir_client::{Acks, Client, DeliveryFuture, Producer, ProducerRecord};

/// Acknowledgements held in memory before the producer waits for them.
const PENDING_MAX: usize = 10_000;

/// Flags of `weir produce`.
#[derive(Args, Debug)]
pub struct ProduceArgs {
    pub topic: String,
    /// Shard key for every line.
    #[arg(long, conflicts_with = "key_field")]
    pub key: Option<String>,
    /// Take the key from this whitespace-separated field of each line (1-based).
    #[arg(long)]
    pub key_field: Option<usize>,
    /// Priority 1 (highest) … 10; 0 leaves it to the topic's default.
    #[arg(long, default_value_t = 5)]
    pub priority: u8,
    /// Complexity 1 … 5; 0 leaves it to the topic's default.
    #[arg(long, default_value_t = 1)]
    pub complexity: u8,
    #[arg(long, value_enum, default_value_t = AckArg::Leader)]
    pub acks: AckArg,
}

/// `--acks`: what each message waits for.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum AckArg {
    None,
    Leader,
    Durable,
}

/// Sends every line of standard input, then waits for the acknowledgements.
pub async fn run(client: &Client, args: ProduceArgs) -> anyhow::Result<()> {
    if args.key_field == Some(0) {
        bail!("--key-field is 1-based");
    }
    let producer = Producer::builder(client)
        .acks(match args.acks {
            AckArg::None => Acks::None,
            AckArg::Leader => Acks::Leader,
            AckArg::Durable => Acks::Durable,
        })
        .priority(args.priority)
        .complexity(args.complexity)
        .build()
        .await?;
    let mut pending = Vec::new();
    let stdin = std::io::stdin();
    for (n, line) in stdin.lock().lines().enumerate() {
        let line = line.context("reading standard input")?;
        let mut rec = ProducerRecord::new(args.topic.clone(), line.clone());
        if let Some(k) = key_of(&args, &line, n)? {
            rec = rec.key(k);
        }
        pending.push(producer.send(rec).await?);
        if pending.len() >= PENDING_MAX {
            for p in pending.drain(..) {
                p.await?;
            }
        }
    }
    producer.flush().await?;
    wait_last(pending).await
}

/// The key of line `n` (0-based): `--key`, or its `--key-field`.
fn key_of(args: &ProduceArgs, line: &str, n: usize) -> anyhow::Result<Option<String>> {
    Ok(match args.key_field {
        Some(f) => Some(
            line.split_whitespace()
                .nth(f - 1)
                .with_context(|| format!("line {} has no field {f}", n + 1))?
                .to_string(),
        ),
        None => args.key.clone(),
    })
}

/// Waits for the last round of acknowledgements; fails naming how many were refused.
async fn wait_last(pending: Vec<DeliveryFuture>) -> anyhow::Result<()> {
    let mut failed = 0usize;
    let mut first_err = None;
    let total = pending.len();
    for p in pending {
        if let Err(e) = p.await {
            failed += 1;
            first_err.get_or_insert(e);
        }
    }
    if let Some(e) = first_err {
        bail!("{failed} of the last {total} messages were not acknowledged: {e}");
    }
    Ok(())
}

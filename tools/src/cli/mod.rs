//! The `weir` CLI: its command tree and one module per command family. `run` only
//! dispatches; `bin/weir.rs` only parses and runs.

pub mod consume;
pub mod dlq;
pub mod group;
pub mod produce;
pub mod queue;
pub mod quota;
pub mod status;
pub mod topic;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir_client::{Admin, Client};

/// Administer a Weir broker, produce to it and consume from it.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    /// Broker address.
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:7700",
        env = "WEIR_BROKER"
    )]
    pub broker: String,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Every command, in the order `weir --help` lists them.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(topic::TopicCmd),
    /// Send one message per line of standard input.
    Produce(produce::ProduceArgs),
    /// Print messages, one per line.
    Consume(consume::ConsumeArgs),
    /// Broker version, uptime, topics, shards, offsets and queues.
    Status,
    /// Committed offsets of a group.
    Offsets { group: String },
    /// Per-client quotas: get, set, remove.
    #[command(subcommand)]
    Quota(quota::QuotaCmd),
    /// Inspect and replay dead-letter topics.
    #[command(subcommand)]
    Dlq(dlq::DlqCmd),
    /// Queue-mode groups.
    #[command(subcommand)]
    Queue(queue::QueueCmd),
}

/// Connects to the broker and runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = Client::connect(cli.broker.clone())
        .await
        .with_context(|| format!("cannot reach broker at {}", cli.broker))?;
    let admin = Admin::new(client.clone());
    match cli.cmd {
        Cmd::Topic(cmd) => topic::run(&admin, cmd).await,
        Cmd::Produce(args) => produce::run(&client, args).await,
        Cmd::Consume(args) => consume::run(&client, args).await,
        Cmd::Status => status::run(&client, &admin, &cli.broker).await,
        Cmd::Offsets { group } => group::offsets(&admin, &group).await,
        Cmd::Quota(cmd) => quota::run(&admin, cmd).await,
        Cmd::Dlq(cmd) => dlq::run(&client, cmd).await,
        Cmd::Queue(cmd) => queue::run(&client, cmd).await,
    }
}

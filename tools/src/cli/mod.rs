//! The `weir` CLI: its command tree and one module per command family. `run` only
//! dispatches; `bin/weir.rs` only parses, runs and turns the outcome into an exit
//! code ([`Interrupted`] and [`Failed`] carry theirs).

pub mod acl;
pub mod audit;
pub mod cluster;
pub mod consume;
pub mod dlq;
pub mod group;
pub mod nodes;
pub mod produce;
pub mod queue;
pub mod quota;
pub mod reconcile;
pub mod status;
pub mod top;
pub mod topic;
pub mod user;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir_client::{Admin, Client};

/// Administer a Weir broker, produce to it and consume from it.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    /// Broker address; for a cluster, a comma-separated list of node addresses
    /// (tried in turn: any one that answers is enough).
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:7700",
        env = "WEIR_BROKER"
    )]
    pub broker: String,
    /// TLS and credentials to reach a secured broker.
    #[command(flatten)]
    pub connect: crate::connect::ConnectArgs,
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
    #[command(after_help = produce::AFTER_HELP)]
    Produce(produce::ProduceArgs),
    /// Print messages, one per line.
    #[command(after_help = consume::AFTER_HELP)]
    Consume(consume::ConsumeArgs),
    /// Broker version, uptime, topics, shards, offsets and queues; health, alerts
    /// and consumer lag from the broker's HTTP listener.
    Status {
        /// The broker's HTTP listener [default: the broker's host, its port + 1].
        #[arg(long, env = "WEIR_HTTP")]
        http: Option<String>,
    },
    /// A live view (like htop) of rates, lag and latency per topic, group and class,
    /// from the broker's HTTP listener; Ctrl-C ends it.
    Top {
        /// The broker's HTTP listener [default: the broker's host, its port + 1].
        #[arg(long, env = "WEIR_HTTP")]
        http: Option<String>,
        /// Stop after this many screens (0 = never).
        #[arg(long, default_value_t = 0)]
        iterations: u64,
    },
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
    /// A cluster's nodes and shard placement.
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Move a shard's copies between a cluster's nodes.
    #[command(subcommand)]
    Shard(cluster::ShardCmd),
    /// Records a returning primary had to cut, kept in `<topic>.reconcile`: list them
    /// or write them back.
    #[command(subcommand)]
    Reconcile(reconcile::ReconcileCmd),
    /// Users of a broker with authentication (SCRAM-SHA-256 passwords).
    #[command(subcommand)]
    User(user::UserCmd),
    /// API keys of a broker with authentication.
    #[command(subcommand)]
    Key(user::KeyCmd),
    /// Access control: who may do what on which topics, groups, the cluster.
    #[command(subcommand)]
    Acl(acl::AclCmd),
    /// Roles: named sets of grants given to users.
    #[command(subcommand)]
    Role(acl::RoleCmd),
    /// Show or verify a broker's audit log (reads the file, not the broker).
    #[command(subcommand)]
    Audit(audit::AuditCmd),
}

/// A command stopped by SIGINT or SIGTERM after finishing cleanly (a consumer
/// committed what it printed); `weir` exits with 128 + the signal number.
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted by signal {}", self.signal)
    }
}

impl std::error::Error for Interrupted {}

/// A command that failed and has already said why on standard error (e.g. the
/// summary of `weir produce`); `weir` exits with `code` and prints nothing more.
#[derive(Debug)]
pub struct Failed {
    pub code: u8,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "failed (exit code {})", self.code)
    }
}

impl std::error::Error for Failed {}

/// SIGINT and SIGTERM, registered once so neither kills the process while a command
/// still has something to finish (a commit, a summary).
pub struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Takes over SIGINT and SIGTERM for the rest of the process.
    pub fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// The number of the next signal that arrives (2 or 15).
    pub async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.interrupt.recv() => 2,
            _ = self.terminate.recv() => 15,
        }
    }
}

/// Connects to the broker and runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Cmd::Audit(cmd) = cli.cmd {
        return audit::run(cmd);
    }
    let client = Client::connect_with(cli.broker.clone(), cli.connect.client_config()?)
        .await
        .with_context(|| format!("cannot reach broker at {}", cli.broker))?;
    let admin = Admin::new(client.clone());
    match cli.cmd {
        Cmd::Topic(cmd) => topic::run(&admin, cmd).await,
        Cmd::Produce(args) => produce::run(&client, args).await,
        // The stream reader (consume.rs) and the queue reader (queue.rs, which shares
        // consume's flags and output) are chosen here, so neither imports the other.
        Cmd::Consume(args) => match args.mode {
            consume::Mode::Queue => {
                let group = args.group.clone().context("--mode queue needs --group")?;
                queue::consume_queue(&client, &group, &args).await
            }
            consume::Mode::Stream => consume::consume_stream(&client, args).await,
        },
        Cmd::Status { http } => status::run(&client, &admin, &cli.broker, http).await,
        Cmd::Top { http, iterations } => {
            let http = match http {
                Some(h) => h,
                None => status::default_http(&cli.broker)?,
            };
            top::run(&http, iterations).await
        }
        Cmd::Offsets { group } => group::offsets(&admin, &group).await,
        Cmd::Quota(cmd) => quota::run(&admin, cmd).await,
        Cmd::Dlq(cmd) => dlq::run(&client, cmd).await,
        Cmd::Queue(cmd) => queue::run(&client, cmd).await,
        Cmd::Cluster(cmd) => cluster::run(&admin, cmd).await,
        Cmd::Shard(cmd) => cluster::run_shard(&admin, cmd).await,
        Cmd::Reconcile(cmd) => reconcile::run(&client, cmd).await,
        Cmd::User(cmd) => user::run_user(&admin, cmd).await,
        Cmd::Key(cmd) => user::run_key(&admin, cmd).await,
        Cmd::Acl(cmd) => acl::run_acl(&admin, cmd).await,
        Cmd::Role(cmd) => acl::run_role(&admin, cmd).await,
        Cmd::Audit(_) => unreachable!("handled before connecting"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clap's own consistency checks (conflicting names, bad `requires`) over every
    /// subcommand, which otherwise fire only when that subcommand is parsed.
    #[test]
    fn the_command_tree_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    /// The caller's credentials come before the command; `user add`'s own
    /// `--password` is the new user's.
    #[test]
    fn credentials_and_a_new_password_do_not_collide() {
        let cli = Cli::try_parse_from([
            "weir",
            "--user",
            "admin",
            "--password",
            "a",
            "user",
            "add",
            "bob",
            "--password",
            "b",
        ])
        .unwrap();
        assert_eq!(cli.connect.user.as_deref(), Some("admin"));
        assert_eq!(cli.connect.password.as_deref(), Some("a"));
        match cli.cmd {
            Cmd::User(user::UserCmd::Add { name, new_password }) => {
                assert_eq!((name.as_str(), new_password.as_str()), ("bob", "b"));
            }
            other => panic!("{other:?}"),
        }
    }
}

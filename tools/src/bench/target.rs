//! The broker a run talks to: the one at `--broker`, or one started in this process
//! with `--embedded` (reached in-process, or over loopback with `--transport tcp`),
//! and the bench topic on it (created, or reused as it is).

use std::path::PathBuf;

use anyhow::Context;
use weir_client::embedded::EmbeddedBroker;
use weir_client::{Admin, Client, TopicConfig};

use super::args::{Args, TransportArg};

/// A reachable broker with the bench topic, and what must be stopped after the run.
pub struct Target {
    pub addr: String,
    /// How every connection of the run is made (TLS flags).
    pub config: weir_client::ClientConfig,
    /// The connection used for setup and, in consume, for reading offsets.
    pub admin: Client,
    /// Shards the topic really has (an existing topic keeps its own count).
    pub shards: u32,
    embedded: Option<EmbeddedBroker>,
    /// Whether clients reach the embedded broker in-process.
    in_process: bool,
    /// Dropped after the embedded broker stops, which removes its data.
    _dir: Option<TempDir>,
}

impl Target {
    /// Starts the embedded broker if asked, connects, and makes sure the topic exists.
    pub async fn prepare(cli: &Args) -> anyhow::Result<Target> {
        let (addr, embedded, dir) = if cli.embedded {
            let (b, dir) = start_embedded(cli.json).await?;
            (b.addr().to_string(), Some(b), Some(dir))
        } else {
            (cli.broker.clone(), None, None)
        };
        let config = cli.connect.client_config()?;
        let in_process = cli.embedded && cli.transport == TransportArg::InProcess;
        let admin = match (&embedded, in_process) {
            (Some(b), true) => b.client_with(config.clone()).await,
            _ => Client::connect_with(addr.clone(), config.clone()).await,
        }
        .with_context(|| format!("connecting to {addr}"))?;
        let shards = ensure_topic(cli, &admin).await?;
        Ok(Target {
            addr,
            config,
            admin,
            shards,
            embedded,
            in_process,
            _dir: dir,
        })
    }

    /// A new client (its own connection, or in-process session) to the broker.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let client = match (&self.embedded, self.in_process) {
            (Some(b), true) => b.client_with(self.config.clone()).await,
            _ => Client::connect_with(self.addr.clone(), self.config.clone()).await,
        };
        client.with_context(|| format!("connecting to {}", self.addr))
    }

    /// Stops the embedded broker (if any) and removes its data directory.
    pub async fn shutdown(self) {
        if let Some(b) = self.embedded {
            b.shutdown().await;
        }
    }
}

async fn start_embedded(quiet: bool) -> anyhow::Result<(EmbeddedBroker, TempDir)> {
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
    if !quiet {
        eprintln!(
            "embedded broker on {}, data in {}",
            b.addr(),
            dir.0.display()
        );
    }
    Ok((b, dir))
}

/// Creates the topic with `--shards` (and `--replicas`, `--min-in-sync`), or takes the
/// existing one and its shard count.
async fn ensure_topic(cli: &Args, client: &Client) -> anyhow::Result<u32> {
    let want_shards = cli
        .shards
        .unwrap_or(cli.producers.max(cli.consumers) as u32);
    let admin = Admin::new(client.clone());
    let config = TopicConfig {
        replicas: cli.replicas,
        min_in_sync: cli.min_in_sync,
        durability: cli.durability.durability(),
        ..TopicConfig::default()
    };
    match admin.create_topic(&cli.topic, want_shards, config).await {
        Ok(t) => Ok(t.shards.len() as u32),
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
            Ok(n)
        }
    }
}

/// A fresh directory under the system's temp dir, removed on drop.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new() -> anyhow::Result<TempDir> {
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

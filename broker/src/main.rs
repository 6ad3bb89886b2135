//! `weir-broker`: runs a Weir broker until SIGINT or SIGTERM.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use weir_broker::config::RuntimeSetting;
use weir_broker::{Broker, Config};

/// The Weir message broker.
///
/// Settings come from defaults, then --config FILE (TOML), then WEIR_* environment
/// variables (WEIR_MAX_CONNECTIONS=100), then these flags. See CONFIG.md.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Protocol listener [default 127.0.0.1:7700].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// HTTP health and metrics listener [default 127.0.0.1:7701].
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Data directory [default ./weir-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// TOML configuration file.
    #[arg(long, env = "WEIR_CONFIG")]
    config: Option<PathBuf>,
    /// PEM certificate chain: serve the protocol port over TLS (config `tls_cert`).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (config `tls_key`).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA of client certificates: require mutual TLS (config `tls_client_ca`).
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
    /// PEM CA of the other cluster nodes' certificates: links between nodes speak
    /// TLS and check the peer against it (config `cluster_tls_ca`; needs --tls-cert).
    #[arg(long)]
    cluster_tls_ca: Option<PathBuf>,
    /// `required`: every connection authenticates and every request is checked
    /// against the ACLs (config `auth`). With no user yet, WEIR_ADMIN_PASSWORD
    /// creates `admin`.
    #[arg(long, value_parser = ["off", "required"])]
    auth: Option<String>,
    /// Encryption at rest: a key as ID=file:PATH or ID=env:VARIABLE (64 hex digits);
    /// repeat for old keys still needed to read (config `at_rest_keys`).
    #[arg(long = "at-rest-key")]
    at_rest_key: Vec<String>,
    /// Id of the at-rest key new data is sealed with (config `at_rest_write_key`).
    #[arg(long)]
    at_rest_write_key: Option<u32>,
    /// This node's id in a cluster (1 and up). Without it the broker is a single node.
    #[arg(long)]
    node_id: Option<u64>,
    /// Every node of the cluster, this one included: ID=HOST:PORT,ID=HOST:PORT,...
    /// (protocol addresses).
    #[arg(long, value_delimiter = ',')]
    peers: Option<Vec<String>>,
    /// Join a running cluster (added with `weir cluster add-node`) instead of forming
    /// one: `--peers` names this node and at least one node of the cluster.
    #[arg(long)]
    join: bool,
    /// Log line format on stderr: `text` (for people) or `json` (one object a line,
    /// with the request span's fields, for log shippers).
    #[arg(long, env = "WEIR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// `--log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match args.log_format {
        LogFormat::Text => {
            // Colour only for a person at a terminal: escape codes in a log file or a
            // pipe are noise.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .init();
        }
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    let mut config = Config::load(args.config.as_deref(), std::env::vars())?;
    if let Some(a) = args.listen {
        config.listen = a;
    }
    if let Some(a) = args.http {
        config.http = a;
    }
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(p) = args.tls_cert {
        config.tls_cert = p;
    }
    if let Some(p) = args.tls_key {
        config.tls_key = p;
    }
    if let Some(p) = args.tls_client_ca {
        config.tls_client_ca = p;
    }
    if let Some(p) = args.cluster_tls_ca {
        config.cluster_tls_ca = p;
    }
    match args.auth.as_deref() {
        Some("required") => config.auth = weir_broker::config::AuthSetting::Required,
        Some(_) => config.auth = weir_broker::config::AuthSetting::Off,
        None => {}
    }
    if !args.at_rest_key.is_empty() {
        config.at_rest_keys = args.at_rest_key;
    }
    if let Some(k) = args.at_rest_write_key {
        config.at_rest_write_key = k;
    }
    if let Some(n) = args.node_id {
        config.node_id = n;
    }
    if let Some(p) = args.peers {
        config.peers = p;
    }
    if args.join {
        config.cluster_join = true;
    }
    config.validate()?;
    // Before the runtime and the broker allocate their working memory: the flag
    // covers faults from now on, and pages already touched stay as they are.
    weir_broker::huge_pages::apply(config.transparent_huge_pages);
    // Thread-per-core runs connections on runtimes of their own (server::runtimes);
    // the control plane then needs only one thread.
    let rt = match config.runtime {
        RuntimeSetting::MultiThread => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("weir")
            .build()?,
        RuntimeSetting::ThreadPerCore => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("weir")
            .build()?,
    };
    rt.block_on(async move {
        let broker = Broker::start(config).await?;
        // Tests and scripts read this line to learn the bound ports.
        println!(
            "weir-broker listening on {} http {}",
            broker.addr(),
            broker.http_addr()
        );
        wait_for_signal().await;
        tracing::info!("shutting down");
        broker.shutdown().await;
        Ok(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

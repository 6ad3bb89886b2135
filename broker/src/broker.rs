//! [`Broker`]: a running broker, started from a [`Config`], in its own process
//! (`weir-broker`) or embedded in a program.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::RuntimeSetting;
use crate::server::runtimes::CoreRuntimes;

use crate::config::Config;
use crate::error::BrokerError;
use crate::groups::{Coordinator, OffsetStore};
use crate::producer_ids::ProducerIds;
use crate::queue::QueueManager;
use crate::state::{BrokerState, Metrics};
use crate::topics::TopicRegistry;
use weir_protocol::ErrorCode;

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    state: Arc<BrokerState>,
    addr: SocketAddr,
    http_addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Broker {
    /// Opens the data directory (recovering every shard), binds both listeners and
    /// starts serving. Port 0 in an address picks a free port; see [`Broker::addr`].
    pub async fn start(config: Config) -> anyhow::Result<Broker> {
        config.validate()?;
        let config = Arc::new(config);
        let stores = Stores::open(config.clone()).await?;
        // The bootstrap admin's password is read from the environment, never from a
        // config file or a flag (which would leave it in files and process lists).
        let admin_password = std::env::var("WEIR_ADMIN_PASSWORD").ok();
        let security = crate::security::Security::open(&config, admin_password.as_deref())?;
        let listener = bind(config.listen, "protocol").await?;
        let http_listener = bind(config.http, "HTTP").await?;
        let addr = listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        if let Ok(secret) = std::env::var(crate::security::CLUSTER_SECRET_ENV) {
            crate::cluster::peer::set_link_secret(&secret);
        }
        if config.is_cluster() {
            if let Some(tls) = crate::security::tls::link_client_config(&config)? {
                crate::cluster::peer::set_link_tls(Arc::new(tls));
            }
        }
        let cluster = if config.is_cluster() {
            Some(crate::cluster::Cluster::start(config.clone(), stores.topics.clone()).await?)
        } else {
            None
        };
        let mut state = stores.into_state(config, shutdown_rx.clone(), security);
        state.cluster = cluster.clone();
        if let Some(c) = &cluster {
            let gauges: Arc<dyn crate::meters::ClusterGauges> = c.clone();
            let _ = state.meters.cluster.set(gauges);
            state
                .queues
                .set_replicator(Arc::new(crate::cluster::queues::ClusterQueues::new(
                    c.clone(),
                )));
        }
        let state = Arc::new(state);
        state.security.restore_quotas(&state.flow);
        let observer = crate::observe::Observer::new(&state.config);
        let cores = match state.config.runtime {
            RuntimeSetting::MultiThread => None,
            RuntimeSetting::ThreadPerCore => {
                let n = state.config.connection_runtimes();
                tracing::info!(runtimes = n, "connections run thread-per-core");
                Some(CoreRuntimes::start(n)?)
            }
        };
        let mut tasks = vec![
            tokio::spawn(crate::server::serve(
                listener,
                state.clone(),
                shutdown_rx.clone(),
                cores,
            )),
            tokio::spawn(crate::http::serve(
                http_listener,
                state.clone(),
                observer.clone(),
                shutdown_rx.clone(),
            )),
            tokio::spawn(crate::observe::run(
                state.clone(),
                observer,
                shutdown_rx.clone(),
            )),
            tokio::spawn(tick(state.clone(), shutdown_rx.clone())),
        ];
        if let Some(c) = &cluster {
            let s = state.clone();
            let issued_below: crate::cluster::agent::IssuedBelow =
                Arc::new(move |next| s.producer_ids.set_cluster_issued_below(next));
            tasks.extend(c.spawn_tasks(issued_below, shutdown_rx));
        }
        tracing::info!(%addr, %http_addr, data_dir = %state.config.data_dir.display(), "weir broker started");
        Ok(Broker {
            state,
            addr,
            http_addr,
            shutdown_tx,
            tasks,
        })
    }

    /// The protocol listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The HTTP listener's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Shared state, for embedding programs and tests.
    pub fn state(&self) -> &Arc<BrokerState> {
        &self.state
    }

    /// A session in this process, without a socket (see [`crate::server::inproc`]):
    /// answers go to `deliver`, requests are started through the end returned. Must be
    /// called on a Tokio runtime.
    pub fn connect_in_process(
        &self,
        deliver: crate::server::inproc::Deliver,
    ) -> crate::server::inproc::InProcess {
        crate::server::inproc::connect(&self.state, deliver)
    }

    /// Graceful shutdown: stop accepting, let in-flight requests finish (bounded by
    /// `io_timeout_ms`), then flush and close every shard.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(c) = &self.state.cluster {
            c.shutdown().await;
        }
        self.state.queues.close().await;
        self.state.topics.close().await;
        self.state.offsets.close().await;
        tracing::info!("weir broker stopped");
    }
}

/// What the data directory holds, opened (and recovered) before anything listens.
struct Stores {
    topics: Arc<TopicRegistry>,
    offsets: OffsetStore,
    producer_ids: ProducerIds,
    queues: QueueManager,
}

impl Stores {
    /// Opens every store on the blocking pool: recovery reads and may truncate files.
    async fn open(config: Arc<Config>) -> anyhow::Result<Stores> {
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", dir.display()))?;
        let stores = tokio::task::spawn_blocking(move || {
            crate::storage::workers::set_max_threads(config.storage_threads);
            let topics = Arc::new(TopicRegistry::open(config.clone())?);
            let offsets = OffsetStore::open(&config.data_dir)?;
            let queues = QueueManager::open(&config, topics.clone())?;
            let producer_ids = ProducerIds::open(config.data_dir.clone())
                .map_err(|e| BrokerError::new(ErrorCode::StorageError, e.to_string()))?;
            // Fencing survives a restart: the newest epoch of each producer id in any
            // shard's log fences older ones on every shard.
            for topic in topics.list() {
                for shard in &topic.shards {
                    for (id, epoch) in shard.take_recovered_epochs() {
                        producer_ids.observe(id, epoch);
                    }
                }
            }
            Ok::<_, BrokerError>(Stores {
                topics,
                offsets,
                producer_ids,
                queues,
            })
        })
        .await?
        .map_err(|e| anyhow::anyhow!("cannot open data directory {}: {e}", dir.display()))?;
        stores
            .queues
            .forget_missing_topics()
            .await
            .map_err(|e| anyhow::anyhow!("cannot forget the queues of deleted topics: {e}"))?;
        Ok(stores)
    }

    /// The state every connection and task shares.
    fn into_state(
        self,
        config: Arc<Config>,
        shutdown: watch::Receiver<bool>,
        security: crate::security::Security,
    ) -> BrokerState {
        let requests_on_core = match config.runtime {
            RuntimeSetting::MultiThread => Vec::new(),
            RuntimeSetting::ThreadPerCore => (0..config.connection_runtimes())
                .map(|_| AtomicU64::new(0))
                .collect(),
        };
        BrokerState {
            connection_slots: Arc::new(tokio::sync::Semaphore::new(config.max_connections)),
            flow: crate::flow::FlowControl::new(&config),
            groups: Coordinator::new(
                self.topics.clone(),
                config.group_min_session_timeout_ms,
                config.group_max_session_timeout_ms,
            ),
            config,
            topics: self.topics,
            offsets: self.offsets,
            producer_ids: self.producer_ids,
            started: Instant::now(),
            metrics: Metrics {
                requests_on_core,
                ..Metrics::default()
            },
            meters: Default::default(),
            load: Default::default(),
            placement_seed: Default::default(),
            shutdown,
            queues: self.queues,
            security,
            cluster: None,
        }
    }
}

/// Binds a listener; the error names which one and where.
async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for {what} on {addr}: {e}"))
}

/// The broker's clock: group sessions and flow control every 100 ms, queue state log
/// compaction every second (in its own task: it waits for flushes).
async fn tick(state: Arc<BrokerState>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut compact_tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => {
                state.groups.tick();
                state.flow.tick();
                state.queues.check_term();
            }
            _ = compact_tick.tick() => {
                let s = state.clone();
                tokio::spawn(async move { s.queues.maybe_compact().await });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path) -> Config {
        Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            http: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.to_path_buf(),
            ..Config::default()
        }
    }

    #[tokio::test]
    async fn start_up_errors_name_the_listener_or_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let mut c = config(&dir.path().join("a"));
        c.listen = addr;
        let e = Broker::start(c).await.unwrap_err().to_string();
        assert!(e.contains(&format!("protocol on {addr}")), "{e}");

        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let e = Broker::start(config(&file.join("data")))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(&file.join("data").display().to_string()), "{e}");
    }
}

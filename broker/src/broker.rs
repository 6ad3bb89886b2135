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
use crate::groups::{Coordinator, OffsetStore};
use crate::producer_ids::ProducerIds;
use crate::queue::QueueManager;
use crate::state::{BrokerState, Metrics};
use crate::topics::TopicRegistry;

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
        std::fs::create_dir_all(&config.data_dir)?;
        let open_config = config.clone();
        let (topics, offsets, producer_ids, queues) = tokio::task::spawn_blocking(move || {
            let topics = Arc::new(TopicRegistry::open(open_config.clone())?);
            let offsets = OffsetStore::open(&open_config.data_dir)?;
            let queues = QueueManager::open(&open_config, topics.clone())?;
            let producer_ids = ProducerIds::open(open_config.data_dir.clone()).map_err(|e| {
                crate::error::BrokerError::new(
                    weir_protocol::ErrorCode::StorageError,
                    e.to_string(),
                )
            })?;
            Ok::<_, crate::error::BrokerError>((topics, offsets, producer_ids, queues))
        })
        .await??;
        let listener = TcpListener::bind(config.listen).await?;
        let http_listener = TcpListener::bind(config.http).await?;
        let addr = listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let groups = Coordinator::new(
            topics.clone(),
            config.group_min_session_timeout_ms,
            config.group_max_session_timeout_ms,
        );
        let flow = crate::flow::FlowControl::new(&config);
        let requests_on_core = match config.runtime {
            RuntimeSetting::MultiThread => Vec::new(),
            RuntimeSetting::ThreadPerCore => (0..config.connection_runtimes())
                .map(|_| AtomicU64::new(0))
                .collect(),
        };
        let state = Arc::new(BrokerState {
            flow,
            config,
            topics,
            groups,
            offsets,
            producer_ids,
            started: Instant::now(),
            metrics: Metrics {
                requests_on_core,
                ..Metrics::default()
            },
            shutdown: shutdown_rx.clone(),
            queues,
        });
        let cores = match state.config.runtime {
            RuntimeSetting::MultiThread => None,
            RuntimeSetting::ThreadPerCore => {
                let n = state.config.connection_runtimes();
                tracing::info!(runtimes = n, "connections run thread-per-core");
                Some(CoreRuntimes::start(n)?)
            }
        };
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(crate::server::serve(
            listener,
            state.clone(),
            shutdown_rx.clone(),
            cores,
        )));
        tasks.push(tokio::spawn(crate::http::serve(
            http_listener,
            state.clone(),
            shutdown_rx.clone(),
        )));
        let ticker_state = state.clone();
        let mut ticker_shutdown = shutdown_rx;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut compact_tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = ticker_shutdown.changed() => break,
                    _ = tick.tick() => {
                        ticker_state.groups.tick();
                        ticker_state.flow.tick();
                    }
                    // Compacts the queue state log when it grew (in its own task: it
                    // waits for flushes).
                    _ = compact_tick.tick() => {
                        let s = ticker_state.clone();
                        tokio::spawn(async move { s.queues.maybe_compact().await });
                    }
                }
            }
        }));
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

    /// Graceful shutdown: stop accepting, let in-flight requests finish (bounded by
    /// `io_timeout_ms`), then flush and close every shard.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.state.queues.close().await;
        self.state.topics.close().await;
        self.state.offsets.close().await;
        tracing::info!("weir broker stopped");
    }
}

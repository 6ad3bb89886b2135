//! [`Broker`]: a running broker, started from a [`Config`], in its own process
//! (`weir-broker`) or embedded in a program.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
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
use crate::topics::TopicRegistry;

/// Counters exported on `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub requests_total: AtomicU64,
    pub request_errors_total: AtomicU64,
    pub produce_bytes_total: AtomicU64,
    pub produce_records_total: AtomicU64,
    pub fetch_bytes_total: AtomicU64,
    /// Requests read on each connection runtime (`thread_per_core` mode; empty
    /// otherwise): how evenly the cores share the work.
    pub requests_on_core: Vec<AtomicU64>,
}

/// Everything a connection needs; shared by all of them.
#[derive(Debug)]
pub struct BrokerState {
    pub config: Arc<Config>,
    pub topics: Arc<TopicRegistry>,
    pub groups: Coordinator,
    pub offsets: OffsetStore,
    pub producer_ids: ProducerIds,
    pub started: Instant,
    pub metrics: Metrics,
    pub shutdown: watch::Receiver<bool>,
    /// Backpressure, quotas and load shedding.
    pub flow: Arc<crate::flow::FlowControl>,
    /// Queue mode of consumer groups (leases, retries, dead letters, breakers).
    pub queues: QueueManager,
}

impl BrokerState {
    /// Prometheus text exposition of the counters and per-shard offsets.
    pub fn metrics_text(&self) -> String {
        use std::fmt::Write;
        let m = &self.metrics;
        let mut out = String::new();
        let counters = [
            ("weir_connections_open", &m.connections_open),
            ("weir_connections_total", &m.connections_total),
            ("weir_connections_refused_total", &m.connections_refused),
            ("weir_requests_total", &m.requests_total),
            ("weir_request_errors_total", &m.request_errors_total),
            ("weir_produce_bytes_total", &m.produce_bytes_total),
            ("weir_produce_records_total", &m.produce_records_total),
            ("weir_fetch_bytes_total", &m.fetch_bytes_total),
        ];
        for (name, v) in counters {
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
        for (core, v) in m.requests_on_core.iter().enumerate() {
            let _ = writeln!(
                out,
                "weir_requests_on_core_total{{core=\"{core}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let q = &self.queues.metrics;
        let queue_counters = [
            ("weir_queue_leased_total", &q.leased),
            ("weir_queue_acked_total", &q.acked),
            ("weir_queue_nacked_total", &q.nacked),
            ("weir_queue_lease_expired_total", &q.expired),
            ("weir_queue_redelivered_total", &q.redelivered),
            ("weir_queue_dead_lettered_total", &q.dead_lettered),
        ];
        for (name, v) in queue_counters {
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
        for (group, topic, state) in self.queues.breaker_states() {
            let _ = writeln!(
                out,
                "weir_queue_breaker_state{{group=\"{group}\",topic=\"{topic}\"}} {state}"
            );
        }
        let _ = writeln!(
            out,
            "weir_uptime_seconds {}",
            self.started.elapsed().as_secs()
        );
        for t in self.topics.list() {
            for (i, s) in t.shards.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "weir_shard_high_watermark{{topic=\"{}\",shard=\"{i}\"}} {}",
                    t.name,
                    s.reader().high_watermark()
                );
                let st = s.stats();
                let _ = writeln!(
                    out,
                    "weir_shard_flushed_offset{{topic=\"{}\",shard=\"{i}\"}} {}",
                    t.name,
                    st.flushed_offset.load(Ordering::Relaxed)
                );
                let _ = writeln!(
                    out,
                    "weir_shard_flushes_total{{topic=\"{}\",shard=\"{i}\"}} {}",
                    t.name,
                    st.flushes.load(Ordering::Relaxed)
                );
                for c in weir_protocol::classes::Class::ALL {
                    let k = c.index();
                    let labels =
                        format!("topic=\"{}\",shard=\"{i}\",class=\"{}\"", t.name, c.name());
                    let _ = writeln!(out, "weir_shard_queued{{{labels}}} {}", s.queued(c));
                    let _ = writeln!(
                        out,
                        "weir_shard_appends_total{{{labels}}} {}",
                        st.appends[k].load(Ordering::Relaxed)
                    );
                    let _ = writeln!(
                        out,
                        "weir_shard_wait_us_total{{{labels}}} {}",
                        st.wait_us[k].load(Ordering::Relaxed)
                    );
                    // The longest wait since the last scrape.
                    let _ = writeln!(
                        out,
                        "weir_shard_wait_us_max{{{labels}}} {}",
                        st.wait_us_max[k].swap(0, Ordering::Relaxed)
                    );
                }
            }
        }
        out.push_str(&self.flow.metrics_text());
        out
    }
}

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
                crate::topics::BrokerError::new(
                    weir_protocol::ErrorCode::StorageError,
                    e.to_string(),
                )
            })?;
            Ok::<_, crate::topics::BrokerError>((topics, offsets, producer_ids, queues))
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

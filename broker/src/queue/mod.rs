//! Queue mode of consumer groups: per-record leases with ack / nack, retries with
//! backoff, dead-letter topics, and a circuit breaker per queue.
//!
//! A *queue* is a group consuming one topic in queue mode. Each queue is owned by one
//! task ([`actor`]) that request handlers talk to through a bounded channel; the
//! [`QueueManager`] finds or starts that task. What must survive a crash (acks,
//! failures with their attempt counts, dead-letterings) is written to an internal log
//! ([`state_log`]) before the client is told; what is cheap to lose (leases in flight)
//! is not, so after a crash those records are simply delivered again (at-least-once).
//!
//! - [`crate::retry`]: policies per priority class and their backoff (shared with config);
//! - [`breaker`]: the circuit breaker of a queue (the shared state machine of
//!   `weir_protocol::breaker` and what only a queue has);
//! - [`dlq`]: dead-letter records, headers, and crash healing;
//! - [`state_log`]: durable events and their replay;
//! - [`actor`]: the queue task;
//! - [`replicated`]: on a cluster, events committed through the consensus engine and
//!   queues served by the controller.

pub mod actor;
pub mod breaker;
pub mod dlq;
pub mod replicated;
pub mod state_log;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Notify};
use weir_protocol::messages::*;
use weir_protocol::ErrorCode;

use crate::config::Config;
use crate::error::BrokerError;
use crate::names::{valid_name, MAX_TOPIC_NAME_BYTES};
use crate::topics::TopicRegistry;
use actor::{Command, NackDurable, QueueActor, QueueSettings, QueueShared};
use breaker::BreakerSettings;
use replicated::Replicator;
use state_log::{Recovered, StateLog};

/// A queue's name and the events that rebuild its state.
type QueueSnapshot = ((String, String), Vec<(u32, state_log::Event)>);

/// Longest DeleteTopic waits for one of its queues' tasks to stop.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Longest a Nack waits for the dead-lettering it caused to become durable.
pub const DEAD_LETTER_WAIT: Duration = Duration::from_secs(10);

/// Broker-wide queue counters for `/metrics`.
#[derive(Debug, Default)]
pub struct QueueMetrics {
    pub leased: AtomicU64,
    pub acked: AtomicU64,
    pub nacked: AtomicU64,
    pub expired: AtomicU64,
    pub redelivered: AtomicU64,
    pub dead_lettered: AtomicU64,
}

/// A running queue task.
#[derive(Debug)]
struct QueueHandle {
    tx: mpsc::Sender<Command>,
    shared: Arc<QueueShared>,
}

/// Finds or starts the task of each queue.
#[derive(Debug)]
pub struct QueueManager {
    topics: Arc<TopicRegistry>,
    settings: QueueSettings,
    max_queues: usize,
    command_depth: usize,
    max_fetch_messages: u32,
    /// The state log generation new events go to.
    log: RwLock<Arc<StateLog>>,
    /// Older generations, replayed at start and deleted by the next compaction.
    old_logs: tokio::sync::Mutex<Vec<Arc<StateLog>>>,
    /// `<data_dir>/internal/queue`.
    log_root: std::path::PathBuf,
    /// Compact once the current generation holds this many records.
    compact_records: u64,
    compacting: tokio::sync::Mutex<()>,
    /// What the state log said at start, for queues not opened yet.
    recovered: Mutex<Recovered>,
    /// Open queues. Looked up on every request under a read lock held for a map
    /// lookup only; opening a queue is serialised by `opening` instead.
    queues: RwLock<HashMap<(String, String), Arc<QueueHandle>>>,
    opening: tokio::sync::Mutex<()>,
    next_lease: Arc<AtomicU64>,
    pub metrics: Arc<QueueMetrics>,
    /// The runtime queue actors run on: the one that opened the broker (the control
    /// runtime), not whichever connection runtime served a queue's first request.
    runtime: Option<tokio::runtime::Handle>,
    /// On a cluster node: the consensus engine behind the queue state.
    replicated: OnceLock<Arc<dyn Replicator>>,
    /// The consensus term the open queues belong to (0: none yet).
    term: AtomicU64,
}

fn settings(config: &Config) -> Result<QueueSettings, BrokerError> {
    let invalid = |m: String| BrokerError::new(ErrorCode::InvalidConfig, m);
    let policies = config
        .retry_policies()
        .map_err(|e| invalid(e.to_string()))?;
    Ok(QueueSettings {
        policies,
        class_map: config.class_map().map_err(|e| invalid(e.to_string()))?,
        window: u64::from(config.queue_max_unacked_per_shard),
        default_lease: Duration::from_millis(u64::from(config.queue_default_lease_ms)),
        max_lease: Duration::from_millis(u64::from(config.queue_max_lease_ms)),
        breaker: BreakerSettings::from_config(config),
        dlq_suffix: config.dlq_suffix.clone(),
        dlq_retention_ms: config.dlq_retention_ms,
        replicated: None,
    })
}

impl QueueManager {
    /// Opens the state log under the data directory and replays it.
    pub fn open(config: &Config, topics: Arc<TopicRegistry>) -> Result<QueueManager, BrokerError> {
        let (mut logs, recovered) = state_log::open_all(&config.data_dir)?;
        let log = Arc::new(logs.pop().expect("open_all returns a generation"));
        let old_logs = logs.into_iter().map(Arc::new).collect();
        // Lease ids are unique across restarts: they start at the clock in ms << 20.
        let seed = (crate::clock::now_ms().max(1) as u64) << 20;
        Ok(QueueManager {
            topics,
            settings: settings(config)?,
            max_queues: config.queue_max_queues,
            command_depth: config.queue_command_depth,
            max_fetch_messages: config.queue_max_fetch_messages,
            log: RwLock::new(log),
            old_logs: tokio::sync::Mutex::new(old_logs),
            log_root: state_log::root(&config.data_dir),
            compact_records: config.queue_state_compact_records,
            compacting: tokio::sync::Mutex::new(()),
            recovered: Mutex::new(recovered),
            queues: RwLock::new(HashMap::new()),
            opening: tokio::sync::Mutex::new(()),
            next_lease: Arc::new(AtomicU64::new(seed)),
            metrics: Arc::new(QueueMetrics::default()),
            runtime: tokio::runtime::Handle::try_current().ok(),
            replicated: OnceLock::new(),
            term: AtomicU64::new(0),
        })
    }

    /// Makes this a cluster node's queue manager: queue state goes through
    /// `replicator` from now on (the local state log is not used; a data directory
    /// that held single-node queue state is said so once), and queues open only while
    /// this node is the controller. Called once, at start, before any request.
    pub fn set_replicator(&self, replicator: Arc<dyn Replicator>) {
        let (tx, rx) = tokio::sync::mpsc::channel(replicated::JOURNAL_DEPTH);
        let task = replicated::run_journal(rx, replicator.clone());
        match &self.runtime {
            Some(rt) => rt.spawn(task),
            None => tokio::spawn(task),
        };
        if self.replicated.set(replicator).is_err() {
            tracing::error!("queue replicator set twice; keeping the first");
            return;
        }
        *self.log.write().expect("log lock") = Arc::new(StateLog::replicated(tx));
        let local = std::mem::take(&mut *self.recovered.lock().expect("recovered lock"));
        if !local.is_empty() {
            tracing::warn!(
                queues = local.len(),
                "this data directory holds single-node queue state; a cluster node keeps queue state in the consensus engine and ignores it"
            );
        }
    }

    /// On a cluster node: the queues may be served here only while this node leads;
    /// the first request of a new term drops the queues of an earlier one and waits
    /// until this node has applied everything committed before it.
    async fn ensure_term(&self) -> Result<(), BrokerError> {
        let Some(r) = self.replicated.get() else {
            return Ok(());
        };
        let Some(term) = r.leading_term() else {
            return Err(BrokerError::new(
                ErrorCode::NotCoordinator,
                "this node is not the controller, which serves every queue of a cluster",
            ));
        };
        if self.term.load(Ordering::Acquire) == term {
            return Ok(());
        }
        let _opening = self.opening.lock().await;
        if self.term.load(Ordering::Acquire) == term {
            return Ok(());
        }
        self.drop_queues("a new controller term");
        r.catch_up().await?;
        self.term.store(term, Ordering::Release);
        tracing::info!(term, "serving queues in this controller term");
        Ok(())
    }

    /// Stops every open queue task (they end when their last sender goes).
    fn drop_queues(&self, why: &str) {
        let dropped = {
            let mut queues = self.queues.write().expect("queues lock");
            let n = queues.len();
            queues.clear();
            n
        };
        if dropped > 0 {
            tracing::info!(queues = dropped, why, "queue tasks stopped");
        }
    }

    /// Called periodically: on a cluster node that stopped leading, stops its queue
    /// tasks at once (their timers would otherwise go on dead-lettering records the
    /// new controller also serves).
    pub fn check_term(&self) {
        let Some(r) = self.replicated.get() else {
            return;
        };
        let held = self.term.load(Ordering::Acquire);
        if held != 0 && r.leading_term() != Some(held) {
            self.term.store(0, Ordering::Release);
            self.drop_queues("this node no longer leads the cluster");
        }
    }

    /// Whether `group` is used in queue mode (on this broker, since it started or in
    /// its state log).
    pub fn is_queue_group(&self, group: &str) -> bool {
        if self.replicated.get().is_some_and(|r| r.has_group(group)) {
            return true;
        }
        self.queues
            .read()
            .expect("queues lock")
            .keys()
            .any(|(g, _)| g == group)
            || self
                .recovered
                .lock()
                .expect("recovered lock")
                .keys()
                .any(|(g, _)| g == group)
    }

    /// (group, topic, breaker state code, records dead-lettered since start) of every
    /// open queue, sorted.
    pub fn queue_gauges(&self) -> Vec<(String, String, u8, u64)> {
        let mut v: Vec<_> = self
            .queues
            .read()
            .expect("queues lock")
            .iter()
            .map(|((g, t), h)| {
                (
                    g.clone(),
                    t.clone(),
                    h.shared.breaker_state.load(Ordering::Relaxed),
                    h.shared.dead_lettered.load(Ordering::Relaxed),
                )
            })
            .collect();
        v.sort();
        v
    }

    async fn queue(&self, group: &str, topic: &str) -> Result<Arc<QueueHandle>, BrokerError> {
        if !valid_name(group) {
            return Err(BrokerError::new(
                ErrorCode::InvalidGroupName,
                format!("{group:?}: use 1 to 249 characters of [A-Za-z0-9._-]"),
            ));
        }
        self.ensure_term().await?;
        let key = (group.to_string(), topic.to_string());
        let live = |m: &HashMap<(String, String), Arc<QueueHandle>>| {
            m.get(&key).filter(|q| !q.tx.is_closed()).cloned()
        };
        if let Some(q) = live(&self.queues.read().expect("queues lock")) {
            return Ok(q);
        }
        let _opening = self.opening.lock().await;
        if let Some(q) = live(&self.queues.read().expect("queues lock")) {
            return Ok(q);
        }
        let t = self.topics.get(topic)?;
        // Its dead letters go to `<topic><dlq_suffix>`: a topic whose name leaves no
        // room for the suffix could never dead-letter, so it cannot be a queue.
        let dlq = dlq::dlq_name(topic, &self.settings.dlq_suffix);
        if !valid_name(&dlq) {
            return Err(BrokerError::new(
                ErrorCode::InvalidTopicName,
                format!(
                    "topic {topic:?} cannot be consumed as a queue: its dead-letter topic name {} bytes long would exceed {MAX_TOPIC_NAME_BYTES} bytes",
                    dlq.len()
                ),
            ));
        }
        {
            let queues = self.queues.read().expect("queues lock");
            if queues.len() >= self.max_queues && !queues.contains_key(&key) {
                return Err(BrokerError::new(
                    ErrorCode::InvalidConfig,
                    format!(
                        "broker already holds queue_max_queues = {} queues",
                        self.max_queues
                    ),
                ));
            }
        }
        // Cloned, and removed only once the queue is open: a failed open must not
        // forget what the state log said.
        let recovered = match self.replicated.get() {
            Some(r) => r.queue_state(group, topic),
            None => self
                .recovered
                .lock()
                .expect("recovered lock")
                .get(&key)
                .cloned()
                .unwrap_or_default(),
        };
        let log = self.log.read().expect("log lock").clone();
        let mut settings = self.settings.clone();
        settings.replicated = self.replicated.get().cloned();
        let shared = Arc::new(QueueShared {
            available: Notify::new(),
            breaker_state: AtomicU8::new(0),
            dead_lettered: AtomicU64::new(0),
        });
        let actor = QueueActor::open(
            group.to_string(),
            t,
            self.topics.clone(),
            recovered,
            settings,
            log,
            shared.clone(),
            self.metrics.clone(),
            self.next_lease.clone(),
        )
        .await?;
        let (tx, rx) = mpsc::channel(self.command_depth.max(1));
        match &self.runtime {
            Some(rt) => rt.spawn(actor.run(rx)),
            None => tokio::spawn(actor.run(rx)),
        };
        self.recovered.lock().expect("recovered lock").remove(&key);
        let handle = Arc::new(QueueHandle { tx, shared });
        self.queues
            .write()
            .expect("queues lock")
            .insert(key, handle.clone());
        tracing::info!(group, topic, "queue opened");
        Ok(handle)
    }

    async fn ask<T>(
        &self,
        q: &QueueHandle,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, BrokerError> {
        let (tx, rx) = oneshot::channel();
        q.tx.send(make(tx))
            .await
            .map_err(|_| BrokerError::new(ErrorCode::ShuttingDown, "queue task stopped"))?;
        rx.await
            .map_err(|_| BrokerError::new(ErrorCode::ShuttingDown, "queue task stopped"))
    }

    /// QueueFetch: leases records, waiting up to `max_wait` (already capped by the
    /// broker's `max_fetch_wait_ms`) while there are none.
    pub async fn fetch(
        &self,
        r: QueueFetchRequest,
        max_wait: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<QueueFetchResponse, BrokerError> {
        if r.max_messages == 0 {
            return Err(BrokerError::new(
                ErrorCode::InvalidRequest,
                "max_messages is 0",
            ));
        }
        let q = self.queue(&r.group, &r.topic).await?;
        let max = r.max_messages.min(self.max_fetch_messages);
        let deadline = Instant::now() + max_wait;
        loop {
            let notified = q.shared.available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let messages = self
                .ask(&q, |reply| Command::Lease {
                    max,
                    lease_ms: r.lease_ms,
                    reply,
                })
                .await??;
            if !messages.is_empty() || Instant::now() >= deadline || *shutdown.borrow() {
                return Ok(QueueFetchResponse { messages });
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline.into()) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Ack: answers once the acks are durable.
    pub async fn ack(&self, r: AckRequest) -> Result<AckResponse, BrokerError> {
        let q = self.queue(&r.group, &r.topic).await?;
        let (mut results, pending) = self
            .ask(&q, |reply| Command::Ack {
                leases: r.leases,
                reply,
            })
            .await?;
        if let Some(rx) = pending {
            let durable = matches!(rx.await, Ok(Ok(_)));
            if !durable {
                for c in results.iter_mut().filter(|c| **c == 0) {
                    *c = ErrorCode::StorageError as u16;
                }
            }
        }
        Ok(AckResponse { results })
    }

    /// Nack: answers once the failure is durable, or, when the record is
    /// dead-lettered, once it is in the dead-letter topic and recorded as dead (at most
    /// [`DEAD_LETTER_WAIT`]; after that the write goes on and the answer is
    /// REQUEST_TIMED_OUT).
    pub async fn nack(&self, r: NackRequest) -> Result<NackResponse, BrokerError> {
        let q = self.queue(&r.group, &r.topic).await?;
        let (resp, durable) = self
            .ask(&q, |reply| Command::Nack {
                lease: r.lease,
                retriable: r.retriable != 0,
                reason: r.reason,
                reply,
            })
            .await??;
        let not_durable = || {
            BrokerError::new(
                ErrorCode::StorageError,
                "the failure could not be recorded durably",
            )
        };
        match durable {
            NackDurable::Append(rx) => match rx.await {
                Ok(Ok(_)) => {}
                _ => return Err(not_durable()),
            },
            NackDurable::Dead(rx) => match tokio::time::timeout(DEAD_LETTER_WAIT, rx).await {
                Ok(Ok(r)) => r?,
                Ok(Err(_)) => return Err(not_durable()),
                Err(_) => {
                    return Err(BrokerError::new(
                        ErrorCode::RequestTimedOut,
                        "dead-lettering not confirmed in time; it is being retried",
                    ))
                }
            },
        }
        Ok(resp)
    }

    /// ExtendLease.
    pub async fn extend(&self, r: ExtendLeaseRequest) -> Result<ExtendLeaseResponse, BrokerError> {
        let q = self.queue(&r.group, &r.topic).await?;
        self.ask(&q, |reply| Command::Extend {
            lease: r.lease,
            lease_ms: r.lease_ms,
            reply,
        })
        .await?
    }

    /// QueueStatus of the queues open on this broker (a named queue is opened).
    pub async fn status(&self, r: QueueStatusRequest) -> Result<QueueStatusResponse, BrokerError> {
        self.ensure_term().await?;
        if !r.group.is_empty() && !r.topic.is_empty() {
            self.queue(&r.group, &r.topic).await?;
        }
        let handles: Vec<(String, String, Arc<QueueHandle>)> = {
            let queues = self.queues.read().expect("queues lock");
            queues
                .iter()
                .filter(|((g, t), _)| {
                    (r.group.is_empty() || *g == r.group) && (r.topic.is_empty() || *t == r.topic)
                })
                .map(|((g, t), h)| (g.clone(), t.clone(), h.clone()))
                .collect()
        };
        let mut queues = Vec::with_capacity(handles.len());
        for (_, _, h) in handles {
            if let Ok(s) = self.ask(&h, |reply| Command::Status { reply }).await {
                queues.push(s);
            }
        }
        queues.sort_by(|a, b| (&a.group, &a.topic).cmp(&(&b.group, &b.topic)));
        Ok(QueueStatusResponse { queues })
    }

    /// Compacts the state log when its current generation has grown past
    /// `queue_state_compact_records` (or older generations are left from a compaction
    /// cut short). Called periodically; at most one runs at a time.
    pub async fn maybe_compact(&self) {
        let Ok(_running) = self.compacting.try_lock() else {
            return;
        };
        let current = self.log.read().expect("log lock").clone();
        if current.is_replicated() {
            // The consensus engine's snapshots compact a cluster's queue state.
            return;
        }
        let leftovers = !self.old_logs.lock().await.is_empty();
        if current.records() < self.compact_records && !leftovers {
            return;
        }
        match self.compact(current).await {
            Ok(generation) => tracing::info!(generation, "queue state log compacted"),
            Err(e) => tracing::warn!(error = %e, "queue state log compaction failed; will retry"),
        }
    }

    /// Starts a new generation with a snapshot of every queue, then deletes the older
    /// ones. A crash at any point leaves generations whose in-order replay is the
    /// current state (see `state_log::open_all`).
    async fn compact(&self, current: Arc<StateLog>) -> Result<u64, BrokerError> {
        // No queue opens (with the old generation) while the snapshot is taken.
        let _opening = self.opening.lock().await;
        let (root, generation) = (self.log_root.clone(), current.generation() + 1);
        // Creating a generation preallocates and fsyncs: off the async thread.
        let next = Arc::new(
            tokio::task::spawn_blocking(move || StateLog::open_generation(&root, generation))
                .await
                .map_err(|e| {
                    BrokerError::new(ErrorCode::Unknown, format!("opening a generation: {e}"))
                })??,
        );
        // Queues not opened since the start: their replayed state, as is.
        let unopened: Vec<QueueSnapshot> = self
            .recovered
            .lock()
            .expect("recovered lock")
            .iter()
            .map(|(k, shards)| {
                let events = shards
                    .iter()
                    .flat_map(|(s, r)| r.snapshot().into_iter().map(move |e| (*s, e)))
                    .collect();
                (k.clone(), events)
            })
            .collect();
        for ((group, topic), events) in unopened {
            next.append_all_durably(&group, &topic, &events).await?;
        }
        // Open queues: each writes its snapshot and switches to the new generation.
        let handles: Vec<Arc<QueueHandle>> = self
            .queues
            .read()
            .expect("queues lock")
            .values()
            .cloned()
            .collect();
        for h in handles {
            let log = next.clone();
            self.ask(&h, |reply| Command::Snapshot { log, reply })
                .await??;
        }
        *self.log.write().expect("log lock") = next.clone();
        let mut old = self.old_logs.lock().await;
        old.push(current);
        for log in old.drain(..) {
            log.retire().await?;
        }
        Ok(next.generation())
    }

    /// A topic was resharded: its open queues lease from its new shards too. (Queues
    /// not open yet read the topic's shards when they open.)
    pub async fn topic_resharded(&self, topic: &Arc<crate::topics::Topic>) {
        let live: Vec<Arc<QueueHandle>> = {
            let queues = self.queues.read().expect("queues lock");
            queues
                .iter()
                .filter(|((_, t), _)| *t == topic.name)
                .map(|(_, h)| h.clone())
                .collect()
        };
        for h in live {
            let _ =
                h.tx.send(Command::Resharded {
                    topic: topic.clone(),
                })
                .await;
        }
    }

    /// Stops the queues of a deleted topic and forgets their state durably (a FORGET
    /// event per queue), so a topic recreated under the same name starts with fresh
    /// queues: the old topic's ack floors would otherwise hide the new topic's records,
    /// and its tasks would keep leasing the deleted records from files they hold open.
    pub async fn forget_topic(&self, topic: &str) -> Result<(), BrokerError> {
        // No compaction snapshots, and no queue opens, while the queues go.
        let _compacting = self.compacting.lock().await;
        let _opening = self.opening.lock().await;
        let live: Vec<((String, String), Arc<QueueHandle>)> = {
            let mut queues = self.queues.write().expect("queues lock");
            let keys: Vec<_> = queues.keys().filter(|(_, t)| t == topic).cloned().collect();
            keys.into_iter()
                .filter_map(|k| queues.remove(&k).map(|h| (k, h)))
                .collect()
        };
        let mut groups: std::collections::BTreeSet<String> =
            live.iter().map(|((g, _), _)| g.clone()).collect();
        self.recovered
            .lock()
            .expect("recovered lock")
            .retain(|(g, t), _| {
                if t == topic {
                    groups.insert(g.clone());
                }
                t != topic
            });
        for (_, h) in &live {
            // Already stopped is fine: nothing more can reach it. Bounded, so one busy
            // task cannot hold every queue open of the broker behind it.
            let stop = self.ask(h, |reply| Command::Stop { reply });
            let _ = tokio::time::timeout(STOP_WAIT, stop).await;
        }
        let keys: Vec<(String, String)> = groups
            .iter()
            .map(|g| (g.clone(), topic.to_string()))
            .collect();
        self.append_forgets(&keys).await?;
        if !groups.is_empty() {
            tracing::info!(
                topic,
                queues = groups.len(),
                "topic deleted: its queues stopped and forgotten"
            );
        }
        Ok(())
    }

    /// Queues the state log remembers for topics that no longer exist (a crash came
    /// between a topic's deletion and the FORGET of its queues): forgotten now, durably,
    /// before a topic of the same name can be created again.
    pub async fn forget_missing_topics(&self) -> Result<(), BrokerError> {
        let missing: Vec<(String, String)> = {
            let mut recovered = self.recovered.lock().expect("recovered lock");
            let keys: Vec<_> = recovered
                .keys()
                .filter(|(_, t)| self.topics.get(t).is_err())
                .cloned()
                .collect();
            for k in &keys {
                recovered.remove(k);
            }
            keys
        };
        if !missing.is_empty() {
            tracing::info!(
                queues = missing.len(),
                "forgetting queues of deleted topics"
            );
        }
        self.append_forgets(&missing).await
    }

    /// Appends one FORGET per (group, topic), all queued before any is awaited so they
    /// share group commits, and waits until every one is durable.
    async fn append_forgets(&self, queues: &[(String, String)]) -> Result<(), BrokerError> {
        let log = self.log.read().expect("log lock").clone();
        let mut pending = Vec::with_capacity(queues.len());
        for (group, topic) in queues {
            let p = log
                .append(group, topic, &[(0, state_log::Event::Forget)])
                .await
                .map_err(|e| BrokerError::new(ErrorCode::StorageError, e.to_string()))?;
            pending.push(p);
        }
        for p in pending {
            p.await
                .map_err(|_| BrokerError::new(ErrorCode::ShuttingDown, "state log closed"))?
                .map_err(|e| BrokerError::new(ErrorCode::StorageError, e.to_string()))?;
        }
        Ok(())
    }

    /// Stops every queue task and closes the state log.
    pub async fn close(&self) {
        self.queues.write().expect("queues lock").clear();
        let current = self.log.read().expect("log lock").clone();
        current.close().await;
        for log in self.old_logs.lock().await.iter() {
            log.close().await;
        }
    }
}

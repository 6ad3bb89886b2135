//! Queue mode on a cluster: the queue state is replicated by the consensus engine, and
//! dead letters go to a replicated topic.
//!
//! On a single node, a queue's durable events (acks, failures, dead-letterings) go to
//! the local state log. On a cluster node they must survive the loss of the node, so
//! every queue runs on the controller (the consensus leader, which also coordinates
//! consumer groups) and its events are committed as consensus entries; every node
//! folds them into the same per-shard state the local log's replay builds
//! (`cluster::meta`), so the node elected next opens each queue where the last one
//! left it. Nothing else changes in the queue task: it still waits for an event to be
//! durable (here: committed on a majority) before it answers the client.
//!
//! A controller's queue tasks live for one term: when this node stops leading (or
//! leads again after another node did), they are dropped and reopened from the
//! applied state once this node has applied everything committed before
//! ([`Replicator::catch_up`]). Events an old task still sends after its term are facts
//! about offsets (done, failed, dead-lettered), true whoever records them, so they
//! need no fencing.
//!
//! The cluster implements [`Replicator`] (`cluster::queues`); this module only holds
//! the interface and the journal task, so the queue code does not depend on the
//! cluster's.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::state_log::{JournalItem, QueueEvents, ShardRecovery};
use crate::error::BrokerError;
use crate::shard::{AppendError, AppendOutcome};
use crate::topics::Topic;

/// A boxed future (the trait is used as `dyn`).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Most events per consensus entry: a busy controller's acks share entries up to this.
pub const ENTRY_EVENTS_MAX: usize = 4096;

/// Appends waiting for the journal task before `append` waits.
pub const JOURNAL_DEPTH: usize = 1024;

/// What queue mode needs from a cluster.
pub trait Replicator: Send + Sync + std::fmt::Debug {
    /// Commits the events (in this order) and resolves once they are applied here.
    fn commit(&self, queues: Vec<QueueEvents>) -> BoxFuture<Result<(), BrokerError>>;
    /// One queue's folded state as applied on this node.
    fn queue_state(&self, group: &str, topic: &str) -> HashMap<u32, ShardRecovery>;
    /// Whether `group` consumes any topic as a queue (in the applied state).
    fn has_group(&self, group: &str) -> bool;
    /// The consensus term while this node leads, `None` otherwise.
    fn leading_term(&self) -> Option<u64>;
    /// Shards of `topic` this node holds no copy of: the queue task reads them from
    /// their primaries ([`Replicator::fetch`]).
    fn shards_without_copy(&self, topic: &str) -> Vec<u32>;
    /// Fetch from the primary of `topic`/`shard` (records below its high-water mark
    /// only), waiting up to `max_wait_ms` there while nothing is new.
    fn fetch(
        &self,
        topic: String,
        shard: u32,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> BoxFuture<Result<weir_protocol::messages::FetchResponse, BrokerError>>;
    /// Waits until everything committed before the call is applied here.
    fn catch_up(&self) -> BoxFuture<Result<(), BrokerError>>;
    /// The dead-letter topic `name` (created through the consensus engine with the
    /// settings of `source` when it does not exist), once this node has opened it.
    fn dead_letter_topic(
        &self,
        name: String,
        source: String,
        shards: u32,
        retention_ms: u64,
    ) -> BoxFuture<Result<Arc<Topic>, BrokerError>>;
    /// Appends `batches` to `topic`/`shard` on its primary, acknowledged once every
    /// in-sync copy holds them; returns the first offset written.
    fn append_mirrored(
        &self,
        topic: String,
        shard: u32,
        batches: Vec<Bytes>,
    ) -> BoxFuture<Result<u64, BrokerError>>;
}

/// The journal task: commits waiting events in arrival order, as many as are waiting
/// (up to [`ENTRY_EVENTS_MAX`]) in one consensus entry, one entry at a time. One
/// entry at a time keeps every queue's events in the order its task made them.
pub async fn run_journal(mut rx: mpsc::Receiver<JournalItem>, replicator: Arc<dyn Replicator>) {
    while let Some(first) = rx.recv().await {
        let mut events = first.events.events.len();
        let mut items = vec![first];
        while events < ENTRY_EVENTS_MAX {
            match rx.try_recv() {
                Ok(item) => {
                    events += item.events.events.len();
                    items.push(item);
                }
                Err(_) => break,
            }
        }
        let (queues, replies): (Vec<QueueEvents>, Vec<_>) =
            items.into_iter().map(|i| (i.events, i.reply)).unzip();
        let result = replicator.commit(queues).await;
        if let Err(e) = &result {
            tracing::warn!(error = %e, events, "queue state not committed");
        }
        for reply in replies {
            let _ = reply.send(match &result {
                Ok(()) => Ok(AppendOutcome {
                    base_offset: 0,
                    last_offset: 0,
                    duplicate: false,
                }),
                Err(e) => Err(AppendError::Storage(e.to_string())),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::state_log::{journal, Event};
    use std::sync::Mutex;

    /// Records what it commits; fails commits while `fail` is set.
    #[derive(Debug, Default)]
    struct Fake {
        entries: Mutex<Vec<Vec<QueueEvents>>>,
        fail: std::sync::atomic::AtomicBool,
    }

    impl Replicator for Fake {
        fn commit(&self, queues: Vec<QueueEvents>) -> BoxFuture<Result<(), BrokerError>> {
            let fail = self.fail.load(std::sync::atomic::Ordering::Relaxed);
            if !fail {
                self.entries.lock().unwrap().push(queues);
            }
            Box::pin(async move {
                if fail {
                    Err(BrokerError::new(
                        weir_protocol::ErrorCode::NoController,
                        "no controller",
                    ))
                } else {
                    Ok(())
                }
            })
        }
        fn queue_state(&self, _: &str, _: &str) -> HashMap<u32, ShardRecovery> {
            HashMap::new()
        }
        fn has_group(&self, _: &str) -> bool {
            false
        }
        fn leading_term(&self) -> Option<u64> {
            Some(1)
        }
        fn shards_without_copy(&self, _: &str) -> Vec<u32> {
            Vec::new()
        }
        fn catch_up(&self) -> BoxFuture<Result<(), BrokerError>> {
            Box::pin(async { Ok(()) })
        }
        fn fetch(
            &self,
            _: String,
            _: u32,
            _: u64,
            _: u32,
            _: u32,
        ) -> BoxFuture<Result<weir_protocol::messages::FetchResponse, BrokerError>> {
            unreachable!("not used by the journal")
        }
        fn dead_letter_topic(
            &self,
            _: String,
            _: String,
            _: u32,
            _: u64,
        ) -> BoxFuture<Result<Arc<Topic>, BrokerError>> {
            unreachable!("not used by the journal")
        }
        fn append_mirrored(
            &self,
            _: String,
            _: u32,
            _: Vec<Bytes>,
        ) -> BoxFuture<Result<u64, BrokerError>> {
            unreachable!("not used by the journal")
        }
    }

    #[tokio::test]
    async fn waiting_events_share_an_entry_in_order_and_failures_reach_every_waiter() {
        let fake = Arc::new(Fake::default());
        let (tx, rx) = mpsc::channel(JOURNAL_DEPTH);
        // Queued before the task runs, so they are all waiting at its first look.
        let mut pending = Vec::new();
        for i in 0..10u64 {
            let events = [(0, Event::Ack { offset: i })];
            pending.push(journal(&tx, "g", "t", &events).await.unwrap());
        }
        let task = tokio::spawn(run_journal(rx, fake.clone()));
        for p in pending {
            assert!(matches!(p.await, Ok(Ok(_))));
        }
        {
            let entries = fake.entries.lock().unwrap();
            assert_eq!(entries.len(), 1, "ten waiting appends, one consensus entry");
            let offsets: Vec<u64> = entries[0]
                .iter()
                .flat_map(|q| q.events.iter())
                .map(|(_, e)| match e {
                    Event::Ack { offset } => *offset,
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(offsets, (0..10).collect::<Vec<_>>(), "in the order queued");
        }
        fake.fail.store(true, std::sync::atomic::Ordering::Relaxed);
        let p = journal(&tx, "g", "t", &[(0, Event::Ack { offset: 99 })])
            .await
            .unwrap();
        assert!(
            matches!(p.await, Ok(Err(AppendError::Storage(_)))),
            "a commit that failed is no durable append"
        );
        drop(tx);
        task.await.unwrap();
    }
}

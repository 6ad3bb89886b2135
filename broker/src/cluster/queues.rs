//! What queue mode needs from the cluster (`queue::replicated::Replicator`): queue
//! state committed through the consensus engine, dead-letter topics created through
//! it, and writes to a shard's primary acknowledged as mirrored.
//!
//! Also the one place a node produces to another shard's primary itself
//! ([`produce_mirrored`]): dead letters and the reconciliation topic both go that way.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use weir_protocol::messages::{
    Acks, FetchRequest, FetchResponse, ProduceRequest, ProduceResponse, Records, TopicConfig,
};
use weir_protocol::{ErrorCode, ResponseBody};

use super::meta::{self, Command, NodeId};
use super::peer::{Peer, PeerError};
use super::{refusal, Cluster};
use crate::error::BrokerError;
use crate::queue::replicated::{BoxFuture, Replicator};
use crate::queue::state_log::{QueueEvents, ShardRecovery};
use crate::topics::Topic;

/// Longest wait for a shard to have a primary before a write to it gives up.
const PRIMARY_WAIT: Duration = Duration::from_secs(10);
/// How long the primary may take to get a mirrored write acknowledged.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(10);

/// The cluster as queue mode sees it.
#[derive(Debug)]
pub struct ClusterQueues {
    cluster: Arc<Cluster>,
}

impl ClusterQueues {
    pub fn new(cluster: Arc<Cluster>) -> ClusterQueues {
        ClusterQueues { cluster }
    }
}

impl Replicator for ClusterQueues {
    fn commit(&self, queues: Vec<QueueEvents>) -> BoxFuture<Result<(), BrokerError>> {
        let c = self.cluster.clone();
        Box::pin(async move {
            let result = c.consensus.write(Command::QueueEvents { queues }).await?;
            refusal(result)
        })
    }

    fn queue_state(&self, group: &str, topic: &str) -> HashMap<u32, ShardRecovery> {
        self.cluster
            .consensus
            .queue_view()
            .queue(group, topic)
            .into_iter()
            .collect()
    }

    fn has_group(&self, group: &str) -> bool {
        self.cluster.consensus.queue_view().has_group(group)
    }

    fn leading_term(&self) -> Option<u64> {
        self.cluster.consensus.leading_term()
    }

    fn shards_without_copy(&self, topic: &str) -> Vec<u32> {
        let me = self.cluster.node_id;
        self.cluster
            .meta()
            .topics
            .get(topic)
            .map(|t| {
                (0..t.shards.len() as u32)
                    .filter(|&s| !t.shards[s as usize].replicas.contains(&me))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn fetch(
        &self,
        topic: String,
        shard: u32,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> BoxFuture<Result<FetchResponse, BrokerError>> {
        let c = self.cluster.clone();
        Box::pin(async move {
            let primary = primary_of(&c, &topic, shard).await?;
            let peer = c.peers.get(&primary).ok_or_else(|| {
                BrokerError::new(
                    ErrorCode::NotPrimary,
                    format!("the primary of {topic}/{shard} is this node, which holds no copy"),
                )
            })?;
            let req = FetchRequest {
                topic: topic.clone(),
                shard,
                offset,
                max_bytes,
                min_bytes: 1,
                max_wait_ms,
            };
            let timeout = Duration::from_millis(u64::from(max_wait_ms)) + PRODUCE_TIMEOUT;
            match peer.call(req, timeout).await {
                Ok(ResponseBody::Fetch(r)) => Ok(r),
                Ok(_) => Err(BrokerError::new(
                    ErrorCode::InvalidRequest,
                    format!("the primary of {topic}/{shard} answered another api"),
                )),
                Err(PeerError::Refused { code, message }) => Err(BrokerError::new(code, message)),
                Err(e) => Err(BrokerError::new(ErrorCode::RequestTimedOut, e.to_string())),
            }
        })
    }

    fn catch_up(&self) -> BoxFuture<Result<(), BrokerError>> {
        let c = self.cluster.clone();
        Box::pin(async move { c.consensus.catch_up().await })
    }

    fn dead_letter_topic(
        &self,
        name: String,
        source: String,
        shards: u32,
        retention_ms: u64,
    ) -> BoxFuture<Result<Arc<Topic>, BrokerError>> {
        let c = self.cluster.clone();
        Box::pin(async move {
            if !c.meta().topics.contains_key(&name) {
                // Copies as many and as safe as the source's; the broker's defaults
                // otherwise, with the dead-letter retention.
                let source_settings = c
                    .meta()
                    .topics
                    .get(&source)
                    .map(|t| t.settings.clone())
                    .ok_or_else(|| {
                        BrokerError::new(
                            ErrorCode::UnknownTopic,
                            format!("{source} is not in the cluster metadata"),
                        )
                    })?;
                let config = c.topics.resolve(TopicConfig {
                    retention_ms,
                    ..TopicConfig::default()
                })?;
                let mut settings = meta::TopicSettings::from(&config);
                settings.replicas = source_settings.replicas;
                settings.min_in_sync = source_settings.min_in_sync;
                let result = c
                    .consensus
                    .write(Command::CreateTopic {
                        name: name.clone(),
                        shards,
                        settings,
                        at_ms: crate::clock::now_ms(),
                    })
                    .await?;
                match refusal(result) {
                    Err(e) if e.code != ErrorCode::TopicAlreadyExists => return Err(e),
                    _ => tracing::info!(topic = %name, "dead-letter topic created"),
                }
            }
            c.wait_local(&name, true).await?;
            c.topics.get(&name)
        })
    }

    fn append_mirrored(
        &self,
        topic: String,
        shard: u32,
        batches: Vec<Bytes>,
    ) -> BoxFuture<Result<u64, BrokerError>> {
        let c = self.cluster.clone();
        Box::pin(async move {
            let mut bytes = BytesMut::with_capacity(batches.iter().map(Bytes::len).sum());
            for b in &batches {
                bytes.extend_from_slice(b);
            }
            let r = produce_mirrored(&c, &topic, shard, bytes.freeze()).await?;
            Ok(r.base_offset)
        })
    }
}

/// Produces `records` (whole batches) to `topic`/`shard` on its primary with
/// `acks=mirrored`, waiting up to [`PRIMARY_WAIT`] for the shard to have one. The
/// primary may be this node: it is then reached through its own protocol port, so
/// the write takes exactly the path of a client's.
pub async fn produce_mirrored(
    cluster: &Cluster,
    topic: &str,
    shard: u32,
    records: Bytes,
) -> Result<ProduceResponse, BrokerError> {
    let primary = primary_of(cluster, topic, shard).await?;
    let peer = match cluster.peers.get(&primary) {
        Some(p) => p.clone(),
        None => Arc::new(Peer::new(own_addr(cluster)?)),
    };
    let req = ProduceRequest {
        topic: topic.to_string(),
        shard,
        acks: Acks::Mirrored,
        timeout_ms: PRODUCE_TIMEOUT.as_millis() as u32,
        records: Records::from_bytes(records),
    };
    match peer
        .call(req, PRODUCE_TIMEOUT + Duration::from_secs(2))
        .await
    {
        Ok(ResponseBody::Produce(r)) => Ok(r),
        Ok(_) => Err(BrokerError::new(
            ErrorCode::InvalidRequest,
            format!("the primary of {topic}/{shard} answered another api"),
        )),
        Err(PeerError::Refused { code, message }) => Err(BrokerError::new(code, message)),
        Err(e) => Err(BrokerError::new(ErrorCode::RequestTimedOut, e.to_string())),
    }
}

/// The primary of `topic`/`shard`, waiting (bounded) while it has none.
async fn primary_of(cluster: &Cluster, topic: &str, shard: u32) -> Result<NodeId, BrokerError> {
    let deadline = Instant::now() + PRIMARY_WAIT;
    loop {
        let meta = cluster.meta();
        match meta.topics.get(topic) {
            None => {
                return Err(BrokerError::new(
                    ErrorCode::UnknownTopic,
                    format!("{topic} is not in the cluster metadata"),
                ))
            }
            Some(t) => {
                if let Some(p) = t.shards.get(shard as usize).and_then(|s| s.primary) {
                    return Ok(p);
                }
            }
        }
        if Instant::now() > deadline {
            return Err(BrokerError::new(
                ErrorCode::ShardOffline,
                format!("{topic}/{shard} has no primary"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// This node's own protocol address, as its `--peers` entry names it.
fn own_addr(cluster: &Cluster) -> Result<String, BrokerError> {
    cluster
        .config
        .cluster_peers()
        .ok()
        .and_then(|p| p.get(&cluster.node_id).cloned())
        .ok_or_else(|| {
            BrokerError::new(
                ErrorCode::InvalidConfig,
                "this node is not in its own --peers list",
            )
        })
}

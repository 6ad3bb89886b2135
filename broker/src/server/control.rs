//! The control plane: handshake, topics, metadata, producer ids, consumer groups and
//! their offsets, quotas and flow status.
//!
//! Control requests are rare next to produce and fetch and may take locks or touch
//! files (topic create/delete, offset commits run their file work on the blocking
//! pool); none of them is on a shard's data path.

use std::sync::Arc;

use weir_protocol::messages::*;
use weir_protocol::wire::Wire;
use weir_protocol::{ApiKey, ErrorCode, ResponseBody};

use crate::error::BrokerError;
use crate::state::BrokerState;

/// Software name and version sent in ApiVersions and Metadata.
pub fn broker_software() -> String {
    format!("weir {}", env!("CARGO_PKG_VERSION"))
}

/// The handshake's answer: apis and versions, frame limit, priority classes.
pub fn api_versions(state: &BrokerState) -> ApiVersionsResponse {
    ApiVersionsResponse {
        broker_software: broker_software(),
        max_frame_bytes: state.config.max_frame_bytes,
        apis: ApiKey::ALL
            .iter()
            .map(|a| ApiVersionRange {
                api_key: *a as u16,
                min_version: a.min_version(),
                max_version: a.max_version(),
            })
            .collect(),
        class_bounds: state
            .config
            .class_map()
            .unwrap_or_default()
            .bounds()
            .to_vec(),
        class_weights: state.config.class_weights().to_vec(),
    }
}

/// Topics and metadata.
pub async fn create_topic(
    state: &BrokerState,
    r: CreateTopicRequest,
) -> Result<ResponseBody, BrokerError> {
    if let Some(c) = &state.cluster {
        return Ok(CreateTopicResponse {
            topic: c.create_topic(r).await?,
        }
        .into());
    }
    let t = state.topics.create(&r.name, r.shards, r.config).await?;
    Ok(CreateTopicResponse {
        topic: t.metadata(),
    }
    .into())
}

pub async fn delete_topic(
    state: &BrokerState,
    r: DeleteTopicRequest,
) -> Result<ResponseBody, BrokerError> {
    if let Some(c) = &state.cluster {
        c.delete_topic(&r.name).await?;
        return Ok(DeleteTopicResponse {}.into());
    }
    state.topics.delete(&r.name).await?;
    // Its queues go with it (a recreated topic starts with fresh ones).
    state.queues.forget_topic(&r.name).await.map_err(|e| {
        BrokerError::new(
            e.code,
            format!(
                "topic deleted, but forgetting its queues failed: {}",
                e.message
            ),
        )
    })?;
    Ok(DeleteTopicResponse {}.into())
}

/// Changes a topic's active shard count (`TopicRegistry::reshard`); groups reading it
/// rebalance onto the new shards.
pub async fn reshard_topic(
    state: &BrokerState,
    r: ReshardTopicRequest,
) -> Result<ResponseBody, BrokerError> {
    let reshard = reshard(state, &r.topic, r.shards, "operator".into()).await?;
    Ok(ReshardTopicResponse { reshard }.into())
}

/// Reshards `topic` to `shards` (an operator's or the automatic sharder's) and has
/// the groups and open queues reading it follow.
pub async fn reshard(
    state: &BrokerState,
    topic: &str,
    shards: u32,
    reason: String,
) -> Result<Reshard, BrokerError> {
    let reshard = state.topics.reshard(topic, shards, reason).await?;
    state.groups.topic_resharded(topic);
    if let Ok(t) = state.topics.get(topic) {
        state.queues.topic_resharded(&t).await;
    }
    Ok(reshard)
}

/// Writes a tombstone for `r.key` on every shard of `r.topic` (see
/// `Log::delete_key`): from the answer on, no reader sees a record with that key
/// below it, and compaction removes their bytes within `delete_key_compact_ms`.
pub async fn delete_key(
    state: &BrokerState,
    r: DeleteKeyRequest,
) -> Result<ResponseBody, BrokerError> {
    if state.cluster.is_some() {
        // Mirrors copy batches from their primary and would keep the records.
        return Err(BrokerError::new(
            ErrorCode::InvalidRequest,
            "DeleteKey is not supported on a cluster yet (mirrors would keep the records)",
        ));
    }
    if r.key.is_empty() || r.key.len() > usize::from(u16::MAX) {
        return Err(BrokerError::new(
            ErrorCode::InvalidRequest,
            "DeleteKey needs a key of 1..=65535 bytes",
        ));
    }
    let shards = state.topics.delete_key(&r.topic, r.key).await?;
    Ok(DeleteKeyResponse {
        shards: shards
            .into_iter()
            .map(|(shard, below)| TombstonePoint { shard, below })
            .collect(),
    }
    .into())
}

/// Describes the named topics (each once, sorted by name) or every topic. A named
/// topic that does not exist gets an error entry (UNKNOWN_TOPIC) instead of failing
/// the request, so one unknown name hides none of the others.
/// The answer is bounded by the frame limit: a request whose answer would not fit is
/// refused (INVALID_REQUEST, naming the limit) instead of built, so a small request
/// naming one topic many times, or a broker with very many topics, cannot make the
/// broker build an answer larger than any client accepts.
pub fn metadata(state: &BrokerState, r: MetadataRequest) -> Result<ResponseBody, BrokerError> {
    let mut errors = Vec::new();
    let topics = if r.topics.is_empty() {
        state.topics.list()
    } else {
        let mut seen = std::collections::HashSet::with_capacity(r.topics.len().min(1024));
        let mut found = Vec::new();
        for n in r.topics.iter().filter(|n| seen.insert(n.as_str())) {
            match state.topics.get(n) {
                Ok(t) => found.push(t),
                Err(e) => errors.push(TopicError {
                    name: n.clone(),
                    error_code: e.code as u16,
                }),
            }
        }
        found
    };
    errors.sort_by(|a, b| a.name.cmp(&b.name));
    let limit = (state.config.max_frame_bytes as usize).saturating_sub(METADATA_HEAD_ROOM);
    // Error entries are no larger than the names the request carried, but count too.
    let mut size: usize = errors.iter().map(|e| 2 + e.name.len() + 2).sum();
    if size > limit {
        return Err(BrokerError::new(
            ErrorCode::InvalidRequest,
            format!(
                "the answer would exceed max_frame_bytes ({}) with the error entries of {} unknown topics; ask for fewer topics per request",
                state.config.max_frame_bytes,
                errors.len()
            ),
        ));
    }
    let mut scratch = bytes::BytesMut::new();
    let mut described = Vec::with_capacity(topics.len());
    for t in &topics {
        let m = t.metadata();
        scratch.clear();
        m.encode(&mut scratch);
        size += scratch.len();
        if size > limit {
            return Err(BrokerError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "the answer would exceed max_frame_bytes ({}) after {} of {} topics; ask for fewer topics per request",
                    state.config.max_frame_bytes,
                    described.len(),
                    topics.len()
                ),
            ));
        }
        described.push(m);
    }
    described.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(MetadataResponse {
        uptime_s: state.started.elapsed().as_secs(),
        broker_software: broker_software(),
        topics: described,
        errors,
    }
    .into())
}

/// Room a Metadata answer leaves in a frame for the response header and its own fields.
const METADATA_HEAD_ROOM: usize = 1024;

/// A new producer id (id 0, or the id's epochs used up), or the next epoch of an
/// issued one: one above the newest epoch of the id the broker knows, which fences
/// every older instance on every shard at once (`producer_ids.rs`). An id this broker
/// never issued is UNKNOWN_PRODUCER_ID.
pub fn init_producer_id(
    state: &BrokerState,
    r: InitProducerIdRequest,
) -> Result<ResponseBody, BrokerError> {
    let bumped = match r.producer_id {
        0 => None,
        id => state.producer_ids.bump(id, r.producer_epoch)?,
    };
    let resp = match bumped {
        Some(epoch) => InitProducerIdResponse {
            producer_id: r.producer_id,
            producer_epoch: epoch,
        },
        None if state.cluster.is_some() => {
            return Err(BrokerError::new(
                ErrorCode::Unknown,
                "cluster producer ids are handed out by init_producer_id_cluster",
            ))
        }
        None => InitProducerIdResponse {
            producer_id: state
                .producer_ids
                .allocate()
                .map_err(|e| BrokerError::new(ErrorCode::StorageError, e.to_string()))?,
            producer_epoch: 0,
        },
    };
    Ok(resp.into())
}

/// InitProducerId on a cluster node: a new id comes from the consensus engine, so no
/// two nodes ever hand out the same one.
pub async fn init_producer_id_cluster(
    state: &BrokerState,
    r: InitProducerIdRequest,
) -> Result<ResponseBody, BrokerError> {
    let cluster = state.cluster.as_ref().expect("a cluster node");
    if r.producer_id != 0 {
        if let Some(epoch) = state.producer_ids.bump(r.producer_id, r.producer_epoch)? {
            return Ok(InitProducerIdResponse {
                producer_id: r.producer_id,
                producer_epoch: epoch,
            }
            .into());
        }
    }
    let id = cluster.allocate_producer_id().await?;
    state.producer_ids.set_cluster_issued_below(id + 1);
    Ok(InitProducerIdResponse {
        producer_id: id,
        producer_epoch: 0,
    }
    .into())
}

/// In a cluster, consumer groups live on the controller.
fn coordinator(state: &BrokerState) -> Result<(), BrokerError> {
    match &state.cluster {
        Some(c) => c.check_coordinator(),
        None => Ok(()),
    }
}

/// Consumer groups in streaming (offset) mode.
pub async fn join_group(
    state: &Arc<BrokerState>,
    r: JoinGroupRequest,
) -> Result<ResponseBody, BrokerError> {
    coordinator(state)?;
    super::queue::refuse_queue_group(state, &r.group)?;
    Ok(state.groups.join(r).await?.into())
}

pub fn heartbeat(state: &BrokerState, r: HeartbeatRequest) -> Result<ResponseBody, BrokerError> {
    coordinator(state)?;
    state
        .groups
        .heartbeat(&r.group, &r.member_id, r.generation)?;
    Ok(HeartbeatResponse {}.into())
}

pub fn leave_group(state: &BrokerState, r: LeaveGroupRequest) -> Result<ResponseBody, BrokerError> {
    coordinator(state)?;
    state.groups.leave(&r.group, &r.member_id)?;
    Ok(LeaveGroupResponse {}.into())
}

pub async fn commit_offsets(
    state: &BrokerState,
    r: CommitOffsetsRequest,
) -> Result<ResponseBody, BrokerError> {
    // Offsets would make a queue group's name a streaming group's too.
    super::queue::refuse_queue_group(state, &r.group)?;
    state
        .groups
        .check_commit(&r.group, &r.member_id, r.generation)?;
    coordinator(state)?;
    for e in &r.offsets {
        let t = state.topics.get(&e.topic)?;
        t.shard(e.shard)?;
    }
    if let Some(c) = &state.cluster {
        c.commit_offsets(&r.group, &r.offsets).await?;
        return Ok(CommitOffsetsResponse {}.into());
    }
    state.offsets.commit(&r.group, &r.offsets).await?;
    Ok(CommitOffsetsResponse {}.into())
}

pub fn fetch_offsets(
    state: &BrokerState,
    r: FetchOffsetsRequest,
) -> Result<ResponseBody, BrokerError> {
    coordinator(state)?;
    if let Some(c) = &state.cluster {
        return Ok(FetchOffsetsResponse {
            offsets: c.committed_offsets(&r.group, &r.shards),
        }
        .into());
    }
    let offsets = if r.shards.is_empty() {
        state.offsets.all(&r.group)
    } else {
        r.shards
            .iter()
            .filter_map(|s| {
                state
                    .offsets
                    .get(&r.group, &s.topic, s.shard)
                    .map(|offset| OffsetEntry {
                        topic: s.topic.clone(),
                        shard: s.shard,
                        offset,
                    })
            })
            .collect()
    };
    Ok(FetchOffsetsResponse { offsets }.into())
}

/// DescribeCluster: the cluster as this node knows it, or `enabled = 0`.
pub fn describe_cluster(
    state: &BrokerState,
    r: weir_protocol::messages::DescribeClusterRequest,
) -> weir_protocol::messages::DescribeClusterResponse {
    match &state.cluster {
        Some(c) => c.describe(&r),
        None => weir_protocol::messages::DescribeClusterResponse::default(),
    }
}

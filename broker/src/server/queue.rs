//! Queue mode of consumer groups on the wire: QueueFetch (lease records), Ack, Nack,
//! ExtendLease and QueueStatus, answered by the group's queue task
//! ([`crate::queue::QueueManager`]).

use std::time::Duration;

use weir_protocol::messages::{QueueFetchRequest, QueueStatusRequest};
use weir_protocol::{ErrorCode, ResponseBody};

use crate::error::BrokerError;
use crate::state::BrokerState;

/// Refuses a group name that is a streaming (offset) group: one with live members, or
/// with committed offsets (its history, which outlives its members). PROTOCOL.md
/// ("Queue mode") states the rule; JoinGroup and CommitOffsets hold the other side.
pub fn refuse_streaming_group(state: &BrokerState, group: &str) -> Result<(), BrokerError> {
    let why = if state.groups.has_group(group) {
        "has live members"
    } else if state.offsets.has_group(group) {
        "has committed offsets"
    } else {
        return Ok(());
    };
    Err(BrokerError::new(
        ErrorCode::NotQueueGroup,
        format!("group {group:?} is a streaming (offset) group: it {why}"),
    ))
}

/// Refuses a group name used in queue mode (an open queue, or one in the queue state
/// log) for streaming use: JoinGroup and CommitOffsets.
pub fn refuse_queue_group(state: &BrokerState, group: &str) -> Result<(), BrokerError> {
    if state.queues.is_queue_group(group) {
        return Err(BrokerError::new(
            ErrorCode::NotQueueGroup,
            format!("group {group:?} is used in queue mode"),
        ));
    }
    Ok(())
}

/// QueueStatus; naming a group and a topic opens that queue, so then a streaming
/// group's name is refused as in QueueFetch.
pub async fn queue_status(
    state: &BrokerState,
    r: QueueStatusRequest,
) -> Result<ResponseBody, BrokerError> {
    if !r.group.is_empty() && !r.topic.is_empty() {
        refuse_streaming_group(state, &r.group)?;
    }
    Ok(state.queues.status(r).await?.into())
}

/// Leases records to a queue consumer, waiting up to `max_wait_ms` (capped by
/// `max_fetch_wait_ms`) for some. A group that streams by offset cannot also lease.
pub async fn queue_fetch(
    state: &BrokerState,
    r: QueueFetchRequest,
) -> Result<ResponseBody, BrokerError> {
    refuse_streaming_group(state, &r.group)?;
    let wait = Duration::from_millis(u64::from(r.max_wait_ms.min(state.config.max_fetch_wait_ms)));
    Ok(state
        .queues
        .fetch(r, wait, state.shutdown.clone())
        .await?
        .into())
}

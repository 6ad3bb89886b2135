//! Queue mode of consumer groups on the wire: QueueFetch (lease records), Ack, Nack,
//! ExtendLease and QueueStatus, answered by the group's queue task
//! ([`crate::queue::QueueManager`]).

use std::time::Duration;

use weir_protocol::messages::QueueFetchRequest;
use weir_protocol::{ErrorCode, ResponseBody};

use crate::error::BrokerError;
use crate::state::BrokerState;

/// Leases records to a queue consumer, waiting up to `max_wait_ms` (capped by
/// `max_fetch_wait_ms`) for some. A group that streams by offset cannot also lease.
pub async fn queue_fetch(
    state: &BrokerState,
    r: QueueFetchRequest,
) -> Result<ResponseBody, BrokerError> {
    if state.groups.has_group(&r.group) {
        return Err(BrokerError::new(
            ErrorCode::NotQueueGroup,
            format!("group {:?} is a streaming (offset) group", r.group),
        ));
    }
    let wait = Duration::from_millis(u64::from(r.max_wait_ms.min(state.config.max_fetch_wait_ms)));
    Ok(state
        .queues
        .fetch(r, wait, state.shutdown.clone())
        .await?
        .into())
}

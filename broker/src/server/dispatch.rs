//! Routes a decoded request (every api but Produce, which the connection queues in
//! order itself) to its plane and turns the result into a response frame.

use std::sync::Arc;

use weir_protocol::frame::{RequestHeader, ResponseFrame};
use weir_protocol::{ErrorCode, Request, ResponseBody};

use super::{admission, control, fetch, queue};
use crate::error::BrokerError;
use crate::flow::quota::ClientState;
use crate::state::BrokerState;

/// Answers one request from `client`.
pub async fn answer(
    state: &Arc<BrokerState>,
    client: &ClientState,
    header: &RequestHeader,
    request: Request,
) -> ResponseFrame {
    match request {
        // Fetches are admitted against the client's fetch quota.
        Request::Fetch(_) | Request::PriorityFetch(_) => {
            admission::fetch(
                state,
                client,
                header,
                respond(header, route(state, request)),
            )
            .await
        }
        request => respond(header, route(state, request)).await,
    }
}

async fn respond(
    header: &RequestHeader,
    result: impl std::future::Future<Output = Result<ResponseBody, BrokerError>>,
) -> ResponseFrame {
    match result.await {
        Ok(body) => ResponseFrame::ok(header, body),
        Err(e) => {
            tracing::debug!(api = header.api_key, code = %e.code, message = %e.message, "request refused");
            ResponseFrame::error(header, e.code, 0, e.message)
        }
    }
}

/// The cluster, or the refusal of an inter-node api by a single-node broker.
fn cluster_of(state: &BrokerState) -> Result<&Arc<crate::cluster::Cluster>, BrokerError> {
    state.cluster.as_ref().ok_or_else(|| {
        BrokerError::new(
            ErrorCode::InvalidRequest,
            "this broker is a single node, not a cluster node",
        )
    })
}

async fn route(state: &Arc<BrokerState>, request: Request) -> Result<ResponseBody, BrokerError> {
    Ok(match request {
        // Data plane: reads.
        Request::Fetch(r) => fetch::fetch(state, r).await?.into(),
        Request::PriorityFetch(r) => fetch::priority_fetch(state, r).await?.into(),
        Request::ListOffsets(r) => fetch::list_offsets(state, r)?.into(),
        // Queue mode.
        Request::QueueFetch(r) => queue::queue_fetch(state, r).await?,
        Request::Ack(r) => state.queues.ack(r).await?.into(),
        Request::Nack(r) => state.queues.nack(r).await?.into(),
        Request::ExtendLease(r) => state.queues.extend(r).await?.into(),
        Request::QueueStatus(r) => queue::queue_status(state, r).await?,
        // Control plane.
        Request::ApiVersions(_) => control::api_versions(state).into(),
        Request::CreateTopic(r) => control::create_topic(state, r).await?,
        Request::DeleteTopic(r) => control::delete_topic(state, r).await?,
        Request::Metadata(r) => control::metadata(state, r)?,
        Request::InitProducerId(r) if state.cluster.is_some() => {
            control::init_producer_id_cluster(state, r).await?
        }
        Request::InitProducerId(r) => control::init_producer_id(state, r)?,
        Request::JoinGroup(r) => control::join_group(state, r).await?,
        Request::Heartbeat(r) => control::heartbeat(state, r)?,
        Request::LeaveGroup(r) => control::leave_group(state, r)?,
        Request::CommitOffsets(r) => control::commit_offsets(state, r).await?,
        Request::FetchOffsets(r) => control::fetch_offsets(state, r)?,
        Request::DescribeQuotas(r) => state.flow.describe_quotas(r)?.into(),
        Request::AlterQuotas(r) => state.flow.alter_quotas(r)?.into(),
        Request::FlowStatus(_) => state.flow.status().into(),
        // Cluster.
        Request::DescribeCluster(r) => control::describe_cluster(state, r).into(),
        Request::MirrorFetch(r) => cluster_of(state)?.mirror_fetch(r).await?.into(),
        Request::ConsensusRpc(r) => cluster_of(state)?.consensus.handle_rpc(r).await?.into(),
        Request::ClusterWrite(r) => cluster_of(state)?.consensus.handle_write(r).await?.into(),
        Request::Produce(_) => {
            return Err(BrokerError::new(
                ErrorCode::Unknown,
                "produce is queued by the connection (server::produce)",
            ))
        }
    })
}

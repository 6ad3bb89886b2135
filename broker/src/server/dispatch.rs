//! Routes a decoded request (every api but Produce, which the connection queues in
//! order itself) to its plane and turns the result into a response frame.

use std::sync::Arc;

use weir_protocol::frame::{RequestHeader, ResponseFrame};
use weir_protocol::{ErrorCode, Request, ResponseBody};

use super::fetch::clocks::ReaderClocks;
use super::{admission, control, fetch, queue};
use crate::error::BrokerError;
use crate::flow::quota::ClientState;
use crate::state::BrokerState;

/// Answers one request from `client`, on a session whose priority reads keep their
/// clocks in `clocks`.
pub async fn answer(
    state: &Arc<BrokerState>,
    client: &ClientState,
    clocks: &ReaderClocks,
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
                respond(header, route(state, clocks, request)),
            )
            .await
        }
        request => respond(header, route(state, clocks, request)).await,
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
    let c = state.cluster.as_ref().ok_or_else(|| {
        BrokerError::new(
            ErrorCode::InvalidRequest,
            "this broker is a single node, not a cluster node",
        )
    })?;
    if crate::cluster::peer::partitioned() {
        return Err(BrokerError::new(
            ErrorCode::ShuttingDown,
            "this node is cut off from the cluster (cluster_partition_file exists)",
        ));
    }
    Ok(c)
}

async fn route(
    state: &Arc<BrokerState>,
    clocks: &ReaderClocks,
    request: Request,
) -> Result<ResponseBody, BrokerError> {
    use crate::meters::fetch_api;
    let started = std::time::Instant::now();
    let timed = |api: usize| state.meters.fetch[api].observe(started.elapsed());
    Ok(match request {
        // Data plane: reads.
        Request::Fetch(r) => {
            let r = fetch::fetch(state, r).await;
            timed(fetch_api::FETCH);
            r?.into()
        }
        Request::PriorityFetch(r) => {
            let r = fetch::priority_fetch(state, clocks, r).await;
            timed(fetch_api::PRIORITY_FETCH);
            r?.into()
        }
        Request::ListOffsets(r) => fetch::list_offsets(state, r)?.into(),
        // Queue mode.
        Request::QueueFetch(r) => {
            let r = queue::queue_fetch(state, r).await;
            timed(fetch_api::QUEUE_FETCH);
            r?
        }
        Request::Ack(r) => state.queues.ack(r).await?.into(),
        Request::Nack(r) => state.queues.nack(r).await?.into(),
        Request::ExtendLease(r) => state.queues.extend(r).await?.into(),
        Request::QueueStatus(r) => queue::queue_status(state, r).await?,
        // Control plane.
        Request::ApiVersions(_) => control::api_versions(state).into(),
        Request::CreateTopic(r) => control::create_topic(state, r).await?,
        Request::DeleteTopic(r) => control::delete_topic(state, r).await?,
        Request::DeleteKey(r) => control::delete_key(state, r).await?,
        Request::ReshardTopic(r) => control::reshard_topic(state, r).await?,
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
        Request::AlterQuotas(r) => alter_quotas(state, r).await?.into(),
        Request::FlowStatus(_) => state.flow.status().into(),
        Request::LoadHistory(r) => state.load.answer(&r)?.into(),
        // Cluster.
        Request::DescribeCluster(r) => control::describe_cluster(state, r).into(),
        Request::DescribeShardHistory(r) => cluster_of(state)?.shard_history(&r)?.into(),
        Request::ShardMove(r) => cluster_of(state)?.start_move(&r).await?.into(),
        Request::AddNode(r) => cluster_of(state)?.add_node(&r).await?.into(),
        Request::RemoveNode(r) => cluster_of(state)?.remove_node(&r).await?.into(),
        Request::MirrorFetch(r) => cluster_of(state)?.mirror_fetch(r).await?.into(),
        Request::ConsensusRpc(r) => cluster_of(state)?.consensus.handle_rpc(r).await?.into(),
        Request::ClusterWrite(r) => cluster_of(state)?.consensus.handle_write(r).await?.into(),
        Request::Produce(_) => {
            return Err(BrokerError::new(
                ErrorCode::Unknown,
                "produce is queued by the connection (server::produce)",
            ))
        }
        // Security: authentication runs in the connection's reader, administration
        // in `security::admin`, both started by the connection.
        Request::Authenticate(_)
        | Request::UpsertUser(_)
        | Request::DeleteUser(_)
        | Request::ListUsers(_)
        | Request::CreateApiKey(_)
        | Request::RevokeApiKey(_)
        | Request::ListApiKeys(_)
        | Request::AlterAcls(_)
        | Request::DescribeAcls(_) => {
            return Err(BrokerError::new(
                ErrorCode::Unknown,
                "security apis are started by the connection (security::)",
            ))
        }
    })
}

/// AlterQuotas: in force at once, then recorded (`security.json`) so a restart keeps
/// it. A change that could not be recorded is answered STORAGE_ERROR, saying it holds
/// only until the broker restarts.
async fn alter_quotas(
    state: &Arc<BrokerState>,
    r: weir_protocol::messages::AlterQuotasRequest,
) -> Result<weir_protocol::messages::AlterQuotasResponse, BrokerError> {
    let remove = r.remove == 1;
    let resp = state.flow.alter_quotas(r)?;
    let (st, id, quota) = (
        state.clone(),
        resp.entry.client_id.clone(),
        resp.entry.quota.clone(),
    );
    tokio::task::spawn_blocking(move || {
        st.security.persist_quota(&id, (!remove).then_some(&quota))
    })
    .await
    .map_err(|e| BrokerError::new(ErrorCode::Unknown, e.to_string()))?
    .map_err(|e| {
        BrokerError::new(
            ErrorCode::StorageError,
            format!("quota changed until the broker restarts, not recorded: {e}"),
        )
    })?;
    Ok(resp)
}

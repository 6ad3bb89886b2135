//! Admission: whether a request may go ahead now, decided in one place for every api.
//!
//! A request meets these guards in order:
//! 1. **Receive budget** (`flow::receive`, in the connection's framing): a connection
//!    stops reading its socket while the broker-wide receive budget cannot hold the
//!    frame at the front of its buffer, and while its own in-flight counts are full.
//! 2. **Handshake**: a client id may hold at most its quota's `max_connections`.
//! 3. **Produce**: load shedding by priority class first (it protects the broker),
//!    then the broker-wide memory budget, then the client's produce quota, all before
//!    anything is queued, so a refused produce was never accepted. P0 is never shed,
//!    and the memory budget and the client's quota keep their last eighth for P0, so
//!    P3 is throttled first.
//! 4. **Fetch** (Fetch and PriorityFetch): the client's fetch quota; the request waits
//!    up to `quota_max_delay_ms` for it, and the bytes served are charged after.
//!
//! Every other api is admitted as it is: its cost is bounded by the frame size and
//! the connection's in-flight limits.

use std::future::Future;
use std::sync::Arc;

use weir_protocol::classes::Class;
use weir_protocol::frame::{RequestHeader, ResponseFrame, ResponsePayload};
use weir_protocol::{ErrorCode, ResponseBody};

use crate::flow::quota::{ClientState, ConnectionSlot};
use crate::flow::{ProduceTicket, Refusal};
use crate::state::BrokerState;

/// Takes one of `client_id`'s connection slots, or THROTTLED with a retry hint.
pub fn handshake(state: &BrokerState, client_id: &str) -> Result<ConnectionSlot, Refusal> {
    state.flow.quotas().connect(client_id).map_err(|t| Refusal {
        code: ErrorCode::Throttled,
        retry_after_ms: t.retry_after.as_millis().min(u128::from(u32::MAX)) as u32,
        message: t.message,
    })
}

/// Admits a produce of `bytes` in `class` from `client`; the ticket carries its
/// flow-control accounting until the produce is answered.
pub fn produce(
    state: &BrokerState,
    client: &Arc<ClientState>,
    class: Class,
    bytes: u64,
) -> Result<ProduceTicket, Refusal> {
    state.flow.admit_produce(client, class, bytes)
}

/// Serves a fetch within `client`'s fetch quota: waits for it, runs `serve`, and
/// charges the record bytes of the answer.
pub async fn fetch(
    state: &BrokerState,
    client: &ClientState,
    header: &RequestHeader,
    serve: impl Future<Output = ResponseFrame>,
) -> ResponseFrame {
    if let Err(r) = state.flow.before_fetch(client).await {
        return ResponseFrame::error(header, r.code, r.retry_after_ms, r.message);
    }
    let resp = serve.await;
    state.flow.after_fetch(client, served_bytes(&resp) as u64);
    resp
}

/// Record bytes in a fetch answer (0 for anything else).
fn served_bytes(resp: &ResponseFrame) -> usize {
    match &resp.payload {
        ResponsePayload::Ok(ResponseBody::Fetch(f)) => f.records.len_bytes(),
        ResponsePayload::Ok(ResponseBody::PriorityFetch(f)) => f.records.len_bytes(),
        _ => 0,
    }
}

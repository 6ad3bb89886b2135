//! The in-process transport: a program that embeds the broker reaches it through a
//! bounded channel and a delivery function instead of a socket.
//!
//! Requests arrive as typed [`RequestFrame`]s on a bounded channel (nothing encoded or
//! decoded; a produce's record batches are the `Bytes` the producer built) and answers
//! leave as typed [`ResponseFrame`]s through the client's [`Deliver`] function, which
//! hands each to the request's waiter (a fetch's records are `Bytes` pointing into
//! the log's mapped segments, each holding its map alive). Everything between is the TCP connection's
//! path: the same [`Session`] (permits, authentication, quotas, shedding, produce
//! admission and ordering, ack levels) and the same weighted-fair response loop
//! ([`super::responses::write_loop`]). What the socket path has and this one does not
//! need: framing, the receive budget for frames still arriving (a request here is
//! already in memory), TLS, and the idle timeout (the session ends when the client
//! drops its end). In-process sessions do not take a `max_connections` slot; a client
//! id's `max_connections` quota still counts them.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;
use weir_protocol::classes::Class;
use weir_protocol::frame::{RequestFrame, ResponseFrame, ResponsePayload};
use weir_protocol::{ErrorCode, Request, ResponseBody};

use super::responses::{write_loop, Outgoing, Permits, ResponseSink};
use super::session::{Close, Session};
use crate::security::Identity;
use crate::state::BrokerState;

/// Bytes charged to the in-flight byte budget for a request beyond its record bytes
/// (what its header and fields would take on the wire, roughly).
const REQUEST_OVERHEAD_BYTES: u64 = 64;

/// Takes each answer of an in-process session, in the broker's weighted-fair order,
/// as soon as it is sent (the SDK hands it straight to the request's waiter, without a
/// task of its own in between). Returns false when the client has gone; the session
/// then ends. Dropped when the session ends.
pub type Deliver = Box<dyn FnMut(ResponseFrame) -> bool + Send>;

/// Opens an in-process session with the broker, whose answers go to `deliver`;
/// returns the requests' sender (at most `max_in_flight_per_connection` queued). The
/// session runs on the caller's runtime until the client drops the sender,
/// `deliver` refuses an answer, or the broker shuts down.
pub fn connect(state: &Arc<BrokerState>, deliver: Deliver) -> mpsc::Sender<RequestFrame> {
    let depth = state.config.max_in_flight_per_connection.max(1);
    let (req_tx, req_rx) = mpsc::channel(depth);
    tokio::spawn(run(state.clone(), req_rx, deliver));
    req_tx
}

/// One session from open to close.
async fn run(
    state: Arc<BrokerState>,
    mut requests: mpsc::Receiver<RequestFrame>,
    deliver: Deliver,
) {
    let m = &state.metrics;
    m.connections_open.fetch_add(1, Ordering::Relaxed);
    m.connections_total.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel::<Outgoing>(state.config.max_in_flight_per_connection);
    let writer = {
        let config = state.config.clone();
        let sink = DeliverSink { deliver };
        tokio::spawn(async move { write_loop(sink, rx, &config).await })
    };
    let mut session = Session::new(state.clone(), Identity::default(), tx);
    let mut shutdown = state.shutdown.clone();
    let mut how = Close::Drain;
    // A session opened after shutdown began closes at once.
    while !*shutdown.borrow_and_update() {
        let tx = session.responses();
        let permit = tokio::select! {
            p = session.request_permit() => p,
            _ = shutdown.changed() => break,
            _ = tx.closed() => break,
        };
        let frame = tokio::select! {
            f = requests.recv() => f,
            _ = shutdown.changed() => break,
            _ = tx.closed() => break,
        };
        let Some(frame) = frame else {
            how = Close::PeerGone;
            break;
        };
        let bytes_permit = tokio::select! {
            p = session.bytes_permit(request_bytes(&frame.request)) => p,
            _ = shutdown.changed() => break,
            _ = tx.closed() => break,
        };
        session.count_request();
        let permits = (permit, bytes_permit);
        // What a frame decoder checks that the types do not.
        if frame.header.priority > 10 {
            let resp = ResponseFrame::error(
                &frame.header,
                ErrorCode::InvalidRequest,
                0,
                format!("priority {} is not 0..=10", frame.header.priority),
            );
            session.send(Class::P0, resp, Some(permits)).await;
            continue;
        }
        if session.start(frame, permits).await.is_some() {
            break;
        }
    }
    session.close(writer, how).await;
    m.connections_open.fetch_sub(1, Ordering::Relaxed);
}

/// What a request holds of the in-flight byte budget: its record bytes plus a fixed
/// overhead (nothing is encoded to measure it).
fn request_bytes(request: &Request) -> u64 {
    let records = match request {
        Request::Produce(p) => p.records.len_bytes() as u64,
        _ => 0,
    };
    records + REQUEST_OVERHEAD_BYTES
}

/// The response side of an in-process session: the client's [`Deliver`].
struct DeliverSink {
    deliver: Deliver,
}

impl ResponseSink for DeliverSink {
    type Ready = (ResponseFrame, Option<Permits>);

    fn prepare(&mut self, resp: ResponseFrame, permits: Option<Permits>) -> (Self::Ready, u64) {
        let records = match &resp.payload {
            ResponsePayload::Ok(ResponseBody::Fetch(f)) => f.records.len_bytes(),
            ResponsePayload::Ok(ResponseBody::PriorityFetch(f)) => f.records.len_bytes(),
            _ => 0,
        };
        let cost = records as u64 + REQUEST_OVERHEAD_BYTES;
        ((resp, permits), cost)
    }

    async fn send_round(&mut self, round: &mut Vec<Self::Ready>) -> std::io::Result<()> {
        // Each response's permits are released once the client took it. The client
        // never blocks here: it hands answers to waiters it holds one per request in
        // flight, which the permits bound.
        for (resp, _permits) in round.drain(..) {
            if !(self.deliver)(resp) {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
        }
        Ok(())
    }

    async fn finish(&mut self) {}
}

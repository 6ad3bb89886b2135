//! The in-process transport: a program that embeds the broker reaches it through
//! function calls instead of a socket.
//!
//! A request is a typed [`RequestFrame`] (nothing encoded or decoded; a produce's
//! record batches are the `Bytes` the producer built) that the client starts in its
//! own task ([`InProcess::submit`]), and each answer is a typed [`ResponseFrame`] that
//! the task which finished the request hands to the client's [`Deliver`] function,
//! which wakes the request's waiter (a fetch's records are `Bytes` pointing into the
//! log's mapped segments, each holding its map alive). So a request costs no task hop
//! of its own on the way in or out: a produce goes from the caller to its shard's
//! lane, and its ack from the writer's answer to the caller.
//!
//! Everything between is the TCP connection's path: the same [`Session`] (in-flight
//! permits, authentication, quotas, shedding, produce admission and ordering, ack
//! levels), and the same `max_connections` slots. What the socket path has and this
//! one does not need: framing, the receive budget for frames still arriving (a request
//! here is already in memory), TLS, the idle timeout (the session ends when the client
//! drops its end), and the write loop with its weighted-fair order: handing an answer
//! over never blocks, so no answer ever waits behind another and there is nothing to
//! order.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit};
use weir_protocol::classes::Class;
use weir_protocol::frame::{RequestFrame, ResponseFrame};
use weir_protocol::{ErrorCode, Request};

pub use super::direct::Deliver;
use super::direct::Direct;
use super::session::{Close, Out, Session};
use crate::security::Identity;
use crate::state::BrokerState;

/// Bytes charged to the in-flight byte budget for a request beyond its record bytes
/// (what its header and fields would take on the wire, roughly).
const REQUEST_OVERHEAD_BYTES: u64 = 64;

/// The client's end of an in-process session. [`InProcess::submit`] starts a request
/// in the calling task, so a request reaches its handler (a produce its shard's
/// lane) without a task hop; dropping it ends the session.
pub struct InProcess {
    core: Arc<Core>,
    /// Dropped with the client's end: the session's closer then ends it.
    _open: oneshot::Sender<()>,
}

/// What the client's end and the session's closer share.
struct Core {
    state: Arc<BrokerState>,
    /// `None` once closed, or from the start when refused at `max_connections`.
    session: tokio::sync::Mutex<Option<Open>>,
    direct: Arc<Direct>,
    /// A session beyond `max_connections` answers its first request with this.
    refusal: Mutex<Option<ResponseFrame>>,
    /// The session itself decided to end (a refused handshake).
    ended: Notify,
}

/// An open session and the `max_connections` slot it holds.
struct Open {
    session: Session,
    _slot: OwnedSemaphorePermit,
}

/// Opens an in-process session with the broker, whose answers go to `deliver`. The
/// session lasts until the client drops the returned end, `deliver` refuses an answer,
/// or the broker shuts down. It holds one of the `max_connections` slots TCP
/// connections take; beyond them its first request is answered with the same
/// THROTTLED connection error a refused socket gets, and it is closed.
pub fn connect(state: &Arc<BrokerState>, deliver: Deliver) -> InProcess {
    let m = &state.metrics;
    let direct = Arc::new(Direct {
        deliver: Mutex::new(Some(deliver)),
        gone: Notify::new(),
    });
    let (open_tx, open_rx) = oneshot::channel();
    let open = match state.connection_slots.clone().try_acquire_owned() {
        Ok(slot) => {
            m.connections_open.fetch_add(1, Ordering::Relaxed);
            m.connections_total.fetch_add(1, Ordering::Relaxed);
            let out = Out::Direct(direct.clone());
            Some(Open {
                session: Session::new(state.clone(), Identity::default(), out),
                _slot: slot,
            })
        }
        Err(_) => {
            m.connections_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("max_connections reached; closing new in-process session");
            None
        }
    };
    let refused = open.is_none();
    let core = Arc::new(Core {
        state: state.clone(),
        refusal: Mutex::new(refused.then(|| super::full_refusal(state))),
        session: tokio::sync::Mutex::new(open),
        direct,
        ended: Notify::new(),
    });
    if !refused {
        tokio::spawn(closer(core.clone(), open_rx));
    }
    InProcess {
        core,
        _open: open_tx,
    }
}

impl InProcess {
    /// Starts one request in the calling task, as a TCP connection's reader starts a
    /// frame: it waits for the session's in-flight permits (back-pressure), then the
    /// [`Session`] admits and starts it in the order `submit` calls take the session
    /// (first come, first served), and its answer comes through `deliver`. False when
    /// the session is closed (the request was not started). A call dropped before it
    /// returns may not have started its request; like a TCP client that stopped
    /// waiting, the caller cannot tell.
    ///
    /// The future owns what it needs (`'static`), so a caller that cannot go on polling
    /// it (see the client's `Connection::send`) can hand it to a task of its own: one
    /// left unpolled part-way would hold the session, and every later request of the
    /// session would wait behind it.
    pub fn submit(&self, frame: RequestFrame) -> impl Future<Output = bool> + Send + 'static {
        let core = self.core.clone();
        async move { core.submit(frame).await }
    }
}

impl Core {
    async fn submit(&self, frame: RequestFrame) -> bool {
        let core = self;
        let mut guard = core.session.lock().await;
        let Some(open) = guard.as_mut() else {
            // Refused at max_connections: the first request learns why (the
            // connection error fails every waiting request on the client's end).
            let refusal = core.refusal.lock().expect("refusal lock").take();
            return match refusal {
                Some(r) => {
                    core.direct.deliver(r);
                    core.direct.close();
                    true
                }
                None => false,
            };
        };
        let session = &mut open.session;
        let mut shutdown = core.state.shutdown.clone();
        if *shutdown.borrow_and_update() {
            return false;
        }
        let permit = tokio::select! {
            p = session.request_permit() => p,
            _ = shutdown.changed() => return false,
            _ = core.direct.closed() => return false,
        };
        let bytes_permit = tokio::select! {
            p = session.bytes_permit(request_bytes(&frame.request)) => p,
            _ = shutdown.changed() => return false,
            _ = core.direct.closed() => return false,
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
            return true;
        }
        if session.start(frame, permits).await.is_some() {
            core.ended.notify_one();
        }
        true
    }
}

/// Ends a session when the client drops its end or stops taking answers (at once),
/// when the session itself ends, or when the broker shuts down (answers still to come
/// get `io_timeout_ms`), as a TCP connection ends.
async fn closer(core: Arc<Core>, open: oneshot::Receiver<()>) {
    let mut shutdown = core.state.shutdown.clone();
    let how = tokio::select! {
        _ = open => Close::PeerGone,
        _ = core.direct.closed() => Close::PeerGone,
        _ = core.ended.notified() => Close::Drain,
        // A session opened after shutdown began closes at once.
        _ = shutdown.wait_for(|s| *s) => Close::Drain,
    };
    let taken = core.session.lock().await.take();
    if let Some(open) = taken {
        open.session.close(None, how).await;
        core.direct.close();
        core.state
            .metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
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

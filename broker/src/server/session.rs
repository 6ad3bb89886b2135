//! The per-request path every transport shares: a peer's session with the broker.
//!
//! A TCP connection ([`super::connection`]) cuts frames out of its socket and the
//! in-process transport ([`super::inproc`]) takes typed requests in its caller's task;
//! both then hand each request to the same [`Session`]: the permits that bound what
//! one peer holds unanswered, authentication and authorization, the handshake that
//! binds a client id's quota, produce admission and queuing in arrival order
//! ([`super::produce`], [`super::admission`], [`super::acks`]), and every other api in
//! its own task ([`super::dispatch`]). A socket's answers leave through its
//! weighted-fair response queue ([`super::responses`]); an in-process client takes
//! each answer as it is sent ([`Out::Direct`]: no socket to share, so none waits
//! behind another). So shedding, throttling, quotas, priority classes and ack levels
//! cannot differ by transport.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::Instrument;
use weir_protocol::batch::DEFAULT_PRIORITY;
use weir_protocol::classes::{Class, ClassMap};
use weir_protocol::frame::{RequestFrame, ResponseFrame, PRIORITY_UNSPECIFIED};
use weir_protocol::messages::ApiVersionsRequest;
use weir_protocol::{ErrorCode, FrameError, Request};

use super::fetch::clocks::ReaderClocks;
use super::produce::{self, Started};
use super::responses::{Outgoing, Permits};
use super::{admission, control, dispatch};
use crate::flow::quota::{ClientState, ConnectionSlot};
use crate::observe::requests::RequestTimer;
use crate::security::Identity;
use crate::state::BrokerState;

/// Why a transport stopped reading requests.
pub(super) type End = Result<(), FrameError>;

/// Where a session's answers go.
#[derive(Clone)]
pub(super) enum Out {
    /// The transport's write loop ([`super::responses::write_loop`]), which orders the
    /// answers ready together by class while the socket is busy.
    Loop(mpsc::Sender<Outgoing>),
    /// Straight to an in-process client, from the task that finished the request
    /// ([`super::direct::Direct`]): handing over an answer never blocks, so there is
    /// no queue to order and no task hop.
    Direct(Arc<super::direct::Direct>),
}

impl Out {
    /// Resolves once nobody takes answers any more (the peer or its write loop is gone).
    pub(super) async fn closed(&self) {
        match self {
            Out::Loop(tx) => tx.closed().await,
            Out::Direct(d) => d.closed().await,
        }
    }
}

/// Sends responses (to the write loop or the in-process client) and counts request
/// errors: every error response and every failed produce that sends none
/// (`acks=none`), each exactly once.
#[derive(Clone)]
struct Responder {
    out: Out,
    state: Arc<BrokerState>,
}

impl Responder {
    async fn send(&self, class: Class, resp: ResponseFrame, permits: Option<Permits>) {
        if resp.error_code() != ErrorCode::None {
            self.count_error();
        }
        // The permits go with the response and are released once it is written (or
        // handed over), so unwritten responses count as in flight.
        match &self.out {
            Out::Loop(tx) => {
                let _ = tx.send((class, resp, permits)).await;
            }
            Out::Direct(d) => {
                d.deliver(resp);
                drop(permits);
            }
        }
    }

    async fn send_produce(&self, class: Class, outcome: produce::Outcome, permits: Permits) {
        match outcome.response {
            Some(resp) => self.send(class, resp, Some(permits)).await,
            None if outcome.failed => self.count_error(),
            None => {}
        }
    }

    fn count_error(&self) {
        self.state
            .metrics
            .request_errors_total
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Who is on the other end, for quotas: the client id's quota state, and the
/// connection slot the handshake took (none before it: the empty id's quota applies,
/// without counting as one of its connections).
struct Quota {
    client: Arc<ClientState>,
    slot: Option<ConnectionSlot>,
}

/// How the connection ends: whether answers still to come (a long-poll fetch, a
/// JoinGroup waiting for its rebalance, a produce waiting for its ack) are waited for.
///
/// Either way the request tasks themselves are never cancelled: a handler stopped
/// half-way could leave a topic deleted but its queues not forgotten, or release a
/// produce's flow-control accounting while its batches still wait in the writer. They
/// run to their end detached; only the connection (its socket, its write loop and its
/// `max_connections` slot) goes, and their answers are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Close {
    /// The peer closed the connection: nobody will read the answers, so the
    /// connection ends at once and its slot is free again.
    PeerGone,
    /// Anything else (shutdown, a framing error to report, a stalled peer): answers
    /// still to come get up to `io_timeout_ms` to be written.
    Drain,
}

/// One peer's session: who it is, what it holds unanswered, and where its answers go.
pub(super) struct Session {
    state: Arc<BrokerState>,
    /// Who the peer has proved to be (`security/`).
    identity: Identity,
    /// Requests held unanswered (`max_in_flight_per_connection`).
    in_flight: Arc<Semaphore>,
    /// Request bytes held unanswered (`flow_connection_in_flight_bytes`).
    in_flight_bytes: Arc<Semaphore>,
    bytes_limit: u32,
    quota: Quota,
    out: Responder,
    classes: ClassMap,
    io_timeout: Duration,
    /// This peer's PriorityFetch clocks (aging and fair-queuing): each reader has its own.
    clocks: Arc<ReaderClocks>,
}

impl Session {
    /// A session whose answers go to `out`.
    pub(super) fn new(state: Arc<BrokerState>, identity: Identity, out: Out) -> Session {
        let cfg = &state.config;
        let bytes_limit = cfg.flow_connection_in_flight_bytes.min(u64::from(u32::MAX)) as u32;
        Session {
            identity,
            in_flight: Arc::new(Semaphore::new(cfg.max_in_flight_per_connection)),
            in_flight_bytes: Arc::new(Semaphore::new(bytes_limit as usize)),
            bytes_limit,
            quota: Quota {
                client: state.flow.quotas().client(""),
                slot: None,
            },
            classes: cfg.class_map().unwrap_or_default(),
            io_timeout: Duration::from_millis(cfg.io_timeout_ms),
            clocks: Arc::default(),
            out: Responder {
                out,
                state: state.clone(),
            },
            state,
        }
    }

    /// Where answers go, to notice when nobody takes them any more.
    pub(super) fn responses(&self) -> Out {
        self.out.out.clone()
    }

    /// One of the `max_in_flight_per_connection` request slots; waits while all are
    /// held (back-pressure: the transport stops taking requests).
    pub(super) async fn request_permit(&self) -> OwnedSemaphorePermit {
        self.in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed")
    }

    /// `request_bytes` of the connection's in-flight byte budget (capped at the whole
    /// budget, so one large request still goes alone).
    pub(super) async fn bytes_permit(&self, request_bytes: u64) -> OwnedSemaphorePermit {
        let n = request_bytes.min(u64::from(self.bytes_limit)) as u32;
        self.in_flight_bytes
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("semaphore never closed")
    }

    /// Sends a response that answers no started request (a frame that could not be
    /// decoded, a connection error).
    pub(super) async fn send(&self, class: Class, resp: ResponseFrame, permits: Option<Permits>) {
        self.out.send(class, resp, permits).await;
    }

    /// Counts a request taken from the transport (`weir_requests_total`, per core).
    pub(super) fn count_request(&self) {
        let m = &self.state.metrics;
        m.requests_total.fetch_add(1, Ordering::Relaxed);
        if let Some(core) = super::runtimes::current_core() {
            if let Some(n) = m.requests_on_core.get(core) {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Starts one request: a handshake that names a new client id and a produce's
    /// queuing run here, in order; everything else in its own task. `Some` ends the
    /// connection.
    pub(super) async fn start(&mut self, frame: RequestFrame, permits: Permits) -> Option<End> {
        let header = frame.header;
        let class = self.classes.class_of(match header.priority {
            PRIORITY_UNSPECIFIED => DEFAULT_PRIORITY,
            p => p,
        });
        let state = self.state.clone();
        let out = self.out.clone();
        // Security (off by default): authentication runs here, in order; every other
        // request is checked before it starts.
        let request = match frame.request {
            Request::Authenticate(req) => {
                return self.authenticate(&header, class, req, permits).await;
            }
            request => request,
        };
        if let Err(refusal) = state
            .security
            .authorize(&mut self.identity, &header, &request)
        {
            out.send(class, refusal, Some(permits)).await;
            return None;
        }
        let audited = state.security.admin_change(&request);
        match request {
            // With authentication required, quotas follow the authenticated principal,
            // not the id a client claims.
            Request::ApiVersions(_) if state.security.required => {
                let resp = ResponseFrame::ok(&header, control::api_versions(&state));
                out.send(class, resp, Some(permits)).await;
            }
            Request::ApiVersions(hs) if !self.quota.is(&hs.client_id) => {
                return self.handshake(&header, class, hs, permits).await;
            }
            Request::Produce(req) => {
                let client = self.quota.client.clone();
                let timer = RequestTimer::begin(&header, &client);
                match produce::start(&state, &client, &header, req).await {
                    Started::Refused(outcome) => {
                        out.send_produce(class, outcome, permits).await;
                        timer.finish(&state);
                    }
                    Started::Queued(queued) if queued.answered() => {
                        // Written in place: nothing to wait for, no task to wake.
                        let outcome = queued.finish(&state).await;
                        out.send_produce(class, outcome, permits).await;
                        timer.finish(&state);
                    }
                    Started::Queued(queued) => {
                        let span = timer.span();
                        tokio::spawn(
                            async move {
                                let outcome = queued.finish(&state).await;
                                out.send_produce(class, outcome, permits).await;
                                timer.finish(&state);
                            }
                            .instrument(span),
                        );
                    }
                }
            }
            request => {
                let client = self.quota.client.clone();
                let clocks = self.clocks.clone();
                // Only administrative requests (with an audit log) need who sent them.
                let identity = audited.as_ref().map(|_| self.identity.clone());
                let timer = RequestTimer::begin(&header, &client);
                let span = timer.span();
                tokio::spawn(
                    async move {
                        let resp = if crate::security::admin::handles(&request) {
                            crate::security::admin::answer(&state, &header, request).await
                        } else {
                            dispatch::answer(&state, &client, &clocks, &header, request).await
                        };
                        if let (Some(change), Some(identity)) = (&audited, &identity) {
                            state.security.audit_change(identity, change, &resp);
                        }
                        out.send(class, resp, Some(permits)).await;
                        timer.finish(&state);
                    }
                    .instrument(span),
                );
            }
        }
        None
    }

    /// One Authenticate step. Once the principal is known (and authentication is
    /// required) the connection takes the principal's quota, as a handshake takes
    /// a client id's: over its `max_connections` it is refused and closed.
    async fn authenticate(
        &mut self,
        header: &weir_protocol::frame::RequestHeader,
        class: Class,
        req: weir_protocol::messages::AuthenticateRequest,
        permits: Permits,
    ) -> Option<End> {
        let state = self.state.clone();
        let resp = state
            .security
            .authenticate(&mut self.identity, header, req)
            .await;
        let principal = match (&self.identity.principal, resp.error_code()) {
            (Some(p), ErrorCode::None) if state.security.required => p.clone(),
            _ => {
                self.out.send(class, resp, Some(permits)).await;
                return None;
            }
        };
        if self.quota.is(&principal) {
            self.out.send(class, resp, Some(permits)).await;
            return None;
        }
        match admission::handshake(&state, &principal) {
            Ok(slot) => {
                self.quota.client = slot.client().clone();
                self.quota.slot = Some(slot);
                self.out.send(class, resp, Some(permits)).await;
                None
            }
            Err(r) => {
                tracing::info!(%principal, "{}; closing connection", r.message);
                let resp = ResponseFrame::error(header, r.code, r.retry_after_ms, r.message);
                self.out.send(class, resp, None).await;
                Some(Ok(()))
            }
        }
    }

    /// Binds the connection to the handshake's client id, or refuses it (THROTTLED)
    /// and ends the connection.
    async fn handshake(
        &mut self,
        header: &weir_protocol::frame::RequestHeader,
        class: Class,
        hs: ApiVersionsRequest,
        permits: Permits,
    ) -> Option<End> {
        match admission::handshake(&self.state, &hs.client_id) {
            Ok(slot) => {
                self.quota.client = slot.client().clone();
                self.quota.slot = Some(slot);
                let resp = ResponseFrame::ok(header, control::api_versions(&self.state));
                self.out.send(class, resp, Some(permits)).await;
                None
            }
            Err(r) => {
                tracing::info!(client_id = %hs.client_id, "{}; closing connection", r.message);
                let resp = ResponseFrame::error(header, r.code, r.retry_after_ms, r.message);
                self.out.send(class, resp, None).await;
                Some(Ok(()))
            }
        }
    }

    /// Closes the connection: answers still to come are waited for (within
    /// `io_timeout_ms`) or dropped, per `how`; the transport and the slot go either way.
    /// `writer` is the write loop (none for direct answers).
    pub(super) async fn close(self, writer: Option<JoinHandle<()>>, how: Close) {
        let Session {
            in_flight,
            state,
            out,
            quota,
            io_timeout,
            ..
        } = self;
        if how == Close::Drain {
            let _ = tokio::time::timeout(
                io_timeout,
                in_flight.acquire_many(state.config.max_in_flight_per_connection as u32),
            )
            .await;
        }
        let direct = match &out.out {
            Out::Direct(d) => Some(d.clone()),
            Out::Loop(_) => None,
        };
        drop(out);
        // The write loop ends once every request task has dropped its responder; one
        // still parked must not hold the socket: after the drain (or at once when the
        // peer is gone), what has not been written is not waited for.
        let grace = match how {
            Close::Drain => io_timeout,
            Close::PeerGone => Duration::ZERO,
        };
        if let Some(mut writer) = writer {
            if tokio::time::timeout(grace, &mut writer).await.is_err() {
                writer.abort();
            }
        }
        // Direct answers: the same, nothing handed over after the drain.
        if let Some(d) = direct {
            d.close();
        }
        drop(quota);
    }
}

impl Quota {
    /// Whether the handshake already bound this client id.
    fn is(&self, client_id: &str) -> bool {
        self.slot.as_ref().map(|s| s.client().id()) == Some(client_id)
    }
}

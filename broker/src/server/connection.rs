//! One client connection: framing, the permits that bound it, the order requests are
//! started in, and the one place request errors are counted.
//!
//! The reader decodes frames in order. Work whose order matters (queuing a produce on
//! its shard's writer, [`super::produce::start`]) is done in the reader loop itself,
//! so two produces pipelined on one connection to one shard are written in the order
//! they were sent. Everything else, including waiting for an append's ack or a
//! long-poll fetch, runs in its own task ([`super::dispatch`]), and each response goes
//! to the write loop ([`super::responses`]) as soon as it is ready, so a quick request
//! never waits behind a slow one.
//!
//! Memory per connection is bounded: at most `max_in_flight_per_connection` requests
//! and `flow_connection_in_flight_bytes` request bytes are held unanswered (the reader
//! stops reading the socket when either is reached, plus the one frame that tipped it
//! over, at most `max_frame_bytes`).
//!
//! A peer that closes the connection is gone: the connection ends at once, so it never
//! keeps its `max_connections` slot while a request of its is parked (a long-poll
//! fetch, a JoinGroup waiting for its rebalance); such requests run to their end
//! detached and their answers are dropped.
//!
//! The handshake binds the connection to a client id for quotas
//! ([`super::admission::handshake`]): a handshake over the id's `max_connections` is
//! answered THROTTLED and the connection closed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::codec::{Decoder, FramedRead};
use tracing::Instrument;
use weir_protocol::batch::DEFAULT_PRIORITY;
use weir_protocol::classes::{Class, ClassMap};
use weir_protocol::frame::{RequestFrame, ResponseFrame, PRIORITY_UNSPECIFIED};
use weir_protocol::messages::ApiVersionsRequest;
use weir_protocol::{ErrorCode, FrameError, Request, ServerCodec};

use super::produce::{self, Started};
use super::responses::{write_loop, Outgoing, Permits};
use super::{admission, control, dispatch};
use crate::flow::quota::{ClientState, ConnectionSlot};
use crate::flow::receive::{GatedRead, ReceiveGate};
use crate::observe::requests::RequestTimer;
use crate::security::Identity;
use crate::state::BrokerState;

/// Serves one connection until the peer closes it, it fails, or the broker shuts down.
pub async fn run(
    sock: TcpStream,
    peer: std::net::SocketAddr,
    state: Arc<BrokerState>,
) -> Result<(), FrameError> {
    let (rd, wr) = sock.into_split();
    serve_split(rd, wr, state, Identity::new(peer, None)).await
}

/// [`run`] over any stream (a TLS session), whose transport may already have proved
/// who the peer is (`identity`: a client certificate's principal).
pub async fn run_stream<S>(
    stream: S,
    state: Arc<BrokerState>,
    identity: Identity,
) -> Result<(), FrameError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    serve_split(rd, wr, state, identity).await
}

async fn serve_split<R, W>(
    rd: R,
    wr: W,
    state: Arc<BrokerState>,
    identity: Identity,
) -> Result<(), FrameError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = Connection::new(state, rd, wr, identity);
    let result = conn.serve().await;
    let how = conn.close_how;
    conn.close(how).await;
    result
}

/// Sends responses to the write loop and counts request errors: every error response
/// and every failed produce that sends none (`acks=none`), each exactly once.
#[derive(Clone)]
struct Responder {
    tx: mpsc::Sender<Outgoing>,
    state: Arc<BrokerState>,
}

impl Responder {
    async fn send(&self, class: Class, resp: ResponseFrame, permits: Option<Permits>) {
        if resp.error_code() != ErrorCode::None {
            self.count_error();
        }
        // The permits go with the response and are released once it is written, so
        // unwritten responses count as in flight.
        let _ = self.tx.send((class, resp, permits)).await;
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

/// Who is on the other end: the client id's quota state, and the connection slot the
/// handshake took (none before it: the empty id's quota applies, without counting as
/// one of its connections).
struct Session {
    client: Arc<ClientState>,
    slot: Option<ConnectionSlot>,
}

/// Why the reader stopped.
type End = Result<(), FrameError>;

/// How the connection ends: whether answers still to come (a long-poll fetch, a
/// JoinGroup waiting for its rebalance, a produce waiting for its ack) are waited for.
///
/// Either way the request tasks themselves are never cancelled: a handler stopped
/// half-way could leave a topic deleted but its queues not forgotten, or release a
/// produce's flow-control accounting while its batches still wait in the writer. They
/// run to their end detached; only the connection (its socket, its write loop and its
/// `max_connections` slot) goes, and their answers are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// The peer closed the connection: nobody will read the answers, so the
    /// connection ends at once and its slot is free again.
    PeerGone,
    /// Anything else (shutdown, a framing error to report, a stalled peer): answers
    /// still to come get up to `io_timeout_ms` to be written.
    Drain,
}

struct Connection<R> {
    state: Arc<BrokerState>,
    frames: FramedRead<GatedRead<R>, SizedCodec>,
    /// Who the peer has proved to be (`security/`).
    identity: Identity,
    /// Requests held unanswered (`max_in_flight_per_connection`).
    in_flight: Arc<Semaphore>,
    /// Request bytes held unanswered (`flow_connection_in_flight_bytes`).
    in_flight_bytes: Arc<Semaphore>,
    bytes_limit: u32,
    session: Session,
    out: Responder,
    writer: JoinHandle<()>,
    classes: ClassMap,
    idle: Duration,
    io_timeout: Duration,
    shutdown: watch::Receiver<bool>,
    close_how: Close,
}

impl<R: AsyncRead + Unpin + Send + 'static> Connection<R> {
    fn new<W: AsyncWrite + Unpin + Send + 'static>(
        state: Arc<BrokerState>,
        rd: R,
        wr: W,
        identity: Identity,
    ) -> Connection<R> {
        let cfg = &state.config;
        let gate = state.flow.receive_gate();
        let frames = FramedRead::with_capacity(
            GatedRead::new(rd, gate.clone()),
            SizedCodec::new(cfg.max_frame_bytes, gate),
            64 * 1024,
        );
        let bytes_limit = cfg.flow_connection_in_flight_bytes.min(u64::from(u32::MAX)) as u32;
        let (tx, rx) = mpsc::channel::<Outgoing>(cfg.max_in_flight_per_connection);
        let io_timeout = Duration::from_millis(cfg.io_timeout_ms);
        Connection {
            frames,
            identity,
            in_flight: Arc::new(Semaphore::new(cfg.max_in_flight_per_connection)),
            in_flight_bytes: Arc::new(Semaphore::new(bytes_limit as usize)),
            bytes_limit,
            session: Session {
                client: state.flow.quotas().client(""),
                slot: None,
            },
            writer: {
                let config = state.config.clone();
                tokio::spawn(async move { write_loop(wr, rx, &config).await })
            },
            classes: cfg.class_map().unwrap_or_default(),
            idle: Duration::from_millis(cfg.idle_timeout_ms),
            io_timeout,
            shutdown: state.shutdown.clone(),
            close_how: Close::Drain,
            out: Responder {
                tx,
                state: state.clone(),
            },
            state,
        }
    }

    /// Reads and starts requests until the connection ends.
    async fn serve(&mut self) -> End {
        loop {
            let tx = self.out.tx.clone();
            let permit = tokio::select! {
                p = self.in_flight.clone().acquire_owned() => p.expect("semaphore never closed"),
                _ = self.shutdown.changed() => return Ok(()),
                _ = tx.closed() => return Ok(()),
            };
            let frame = self.read_frame().await?;
            let Some(frame) = frame else { return Ok(()) };
            // Backpressure by not reading: hold this frame's bytes until it is answered.
            let frame_bytes = (self.frames.decoder().last_frame_bytes as u64)
                .min(u64::from(self.bytes_limit)) as u32;
            let bytes_permit = tokio::select! {
                p = self.in_flight_bytes.clone().acquire_many_owned(frame_bytes) => p.expect("semaphore never closed"),
                _ = self.shutdown.changed() => return Ok(()),
                _ = tx.closed() => return Ok(()),
            };
            self.count_request();
            let permits = (permit, bytes_permit);
            let frame = match frame {
                Ok(f) => f,
                Err(bad) => {
                    let resp = match bad.header {
                        Some(h) => {
                            ResponseFrame::error(&h, bad.error.code(), 0, bad.error.to_string())
                        }
                        None => ResponseFrame::connection_error(
                            ErrorCode::InvalidRequest,
                            bad.error.to_string(),
                        ),
                    };
                    self.out.send(Class::P0, resp, Some(permits)).await;
                    continue;
                }
            };
            if let Some(end) = self.start(frame, permits).await {
                return end;
            }
        }
    }

    /// The next frame: `Ok(None)` when the connection should end quietly (peer closed,
    /// idle, stalled mid-frame, shutdown), `Err` after an unframeable input (answered
    /// with a connection error first).
    async fn read_frame(&mut self) -> Result<Option<<ServerCodec as Decoder>::Item>, FrameError> {
        let tx = self.out.tx.clone();
        let next = tokio::select! {
            n = next_frame(&mut self.frames, self.idle, self.io_timeout) => n,
            _ = self.shutdown.changed() => return Ok(None),
            _ = tx.closed() => return Ok(None),
        };
        match next {
            Err(Stalled::Idle) => {
                tracing::debug!("idle timeout");
                Ok(None)
            }
            Err(Stalled::MidFrame) => {
                tracing::info!("peer stalled in the middle of a frame; closing connection");
                Ok(None)
            }
            Ok(None) => {
                self.close_how = Close::PeerGone;
                Ok(None)
            }
            Ok(Some(Err(FrameError::Decode(e)))) => {
                tracing::info!(error = %e, "unframeable input; closing connection");
                let resp = ResponseFrame::connection_error(e.code(), e.to_string());
                self.out.send(Class::P0, resp, None).await;
                Err(FrameError::Decode(e))
            }
            Ok(Some(Err(e))) => Err(e),
            Ok(Some(Ok(frame))) => Ok(Some(frame)),
        }
    }

    fn count_request(&self) {
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
    async fn start(&mut self, frame: RequestFrame, permits: Permits) -> Option<End> {
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
            Request::ApiVersions(hs) if !self.session.is(&hs.client_id) => {
                return self.handshake(&header, class, hs, permits).await;
            }
            Request::Produce(req) => {
                let client = self.session.client.clone();
                let timer = RequestTimer::begin(&header, &client);
                match produce::start(&state, &client, &header, req).await {
                    Started::Refused(outcome) => {
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
                let client = self.session.client.clone();
                // Only administrative requests (with an audit log) need who sent them.
                let identity = audited.as_ref().map(|_| self.identity.clone());
                let timer = RequestTimer::begin(&header, &client);
                let span = timer.span();
                tokio::spawn(
                    async move {
                        let resp = if crate::security::admin::handles(&request) {
                            crate::security::admin::answer(&state, &header, request).await
                        } else {
                            dispatch::answer(&state, &client, &header, request).await
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
        if self.session.is(&principal) {
            self.out.send(class, resp, Some(permits)).await;
            return None;
        }
        match admission::handshake(&state, &principal) {
            Ok(slot) => {
                self.session.client = slot.client().clone();
                self.session.slot = Some(slot);
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
                self.session.client = slot.client().clone();
                self.session.slot = Some(slot);
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
    /// `io_timeout_ms`) or dropped, per `how`; the socket and the slot go either way.
    async fn close(self, how: Close) {
        let Connection {
            in_flight,
            state,
            out,
            mut writer,
            session,
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
        drop(out);
        // The write loop ends once every request task has dropped its responder; one
        // still parked must not hold the socket: after the drain (or at once when the
        // peer is gone), what has not been written is not waited for.
        let grace = match how {
            Close::Drain => io_timeout,
            Close::PeerGone => Duration::ZERO,
        };
        if tokio::time::timeout(grace, &mut writer).await.is_err() {
            writer.abort();
        }
        drop(session);
    }
}

impl Session {
    /// Whether the handshake already bound this client id.
    fn is(&self, client_id: &str) -> bool {
        self.slot.as_ref().map(|s| s.client().id()) == Some(client_id)
    }
}

/// [`ServerCodec`] that also remembers the length of the last frame it cut, so the
/// reader can hold that many bytes of the connection's in-flight budget.
/// It also tells the connection's receive gate what the frame at the front of the
/// buffer needs (`flow::receive`).
struct SizedCodec {
    inner: ServerCodec,
    /// `max_frame_bytes` plus the length prefix: a longer announcement is refused by
    /// `inner` and must not touch the receive budget or the buffer first.
    max_total: usize,
    last_frame_bytes: usize,
    gate: ReceiveGate,
}

impl SizedCodec {
    fn new(max_frame_bytes: u32, gate: ReceiveGate) -> Self {
        SizedCodec {
            inner: ServerCodec::new(max_frame_bytes),
            max_total: max_frame_bytes as usize + 4,
            last_frame_bytes: 0,
            gate,
        }
    }
}

impl Decoder for SizedCodec {
    type Item = <ServerCodec as Decoder>::Item;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, FrameError> {
        let len = match src.get(..4) {
            Some(p) => u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize + 4,
            None => 0,
        };
        // A large frame still arriving asks the receive budget first. The codec grows
        // the buffer only with what arrived; once the budget has granted the frame's
        // bytes it gets its whole room at once (one allocation, before the codec's own
        // bounded step, which then has nothing to add).
        if len <= self.max_total {
            self.gate.observe(src);
        }
        let held = self.gate.held() as usize;
        if len > src.len() && held > 0 {
            src.reserve((len - src.len()).min(held));
        }
        let out = self.inner.decode(src)?;
        if out.is_some() {
            self.last_frame_bytes = len;
            // The next decode (FramedRead calls it before reading again) observes the
            // frame that may already be at the front of the buffer.
            self.gate.frame_done();
        }
        Ok(out)
    }
}

/// Why the reader stopped waiting for the next frame.
enum Stalled {
    /// Nothing arrived for `idle_timeout_ms`.
    Idle,
    /// A frame was started but not finished within `io_timeout_ms`.
    MidFrame,
}

/// The next frame from `frames`, or [`Stalled`]. A peer between frames may stay silent
/// for `idle`; one that started a frame must finish it within `io_timeout` (checked
/// once per `io_timeout` slice, so it is closed within two of them), so a stalled peer
/// cannot pin a frame-sized read buffer until the idle timeout.
async fn next_frame<R: tokio::io::AsyncRead + Unpin>(
    frames: &mut FramedRead<GatedRead<R>, SizedCodec>,
    idle: Duration,
    io_timeout: Duration,
) -> Result<Option<Result<<ServerCodec as Decoder>::Item, FrameError>>, Stalled> {
    let started = tokio::time::Instant::now();
    let slice = io_timeout.min(idle).max(Duration::from_millis(1));
    let mut partial_since: Option<tokio::time::Instant> = None;
    loop {
        // Cancel-safe: FramedRead keeps what it has read in its own buffer.
        if let Ok(next) = tokio::time::timeout(slice, frames.next()).await {
            return Ok(next);
        }
        let now = tokio::time::Instant::now();
        if frames.read_buffer().is_empty() {
            partial_since = None;
            if now.duration_since(started) >= idle {
                return Err(Stalled::Idle);
            }
        } else if now.duration_since(*partial_since.get_or_insert(now)) >= io_timeout {
            return Err(Stalled::MidFrame);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A length prefix over the frame limit is refused before it touches the receive
    /// budget or the read buffer (it used to take the whole budget and reserve up to
    /// 256 MiB first).
    #[test]
    fn an_oversized_prefix_reserves_nothing_before_its_refusal() {
        let budget = Arc::new(Semaphore::new(256 << 20));
        let gate = ReceiveGate::new(budget.clone(), 256 << 20);
        let mut codec = SizedCodec::new(16 << 20, gate.clone());
        let mut src = BytesMut::with_capacity(64);
        src.extend_from_slice(&u32::MAX.to_le_bytes());
        src.extend_from_slice(&[4, 0, 0, 0, 1, 0, 0, 0, 5]);
        assert!(codec.decode(&mut src).is_err());
        assert_eq!(gate.held(), 0);
        assert_eq!(budget.available_permits(), 256 << 20);
        assert!(src.capacity() < 1 << 20, "capacity {}", src.capacity());
    }

    /// A large frame within the limit is granted and gets its whole buffer at once.
    #[test]
    fn a_large_frame_within_the_limit_is_granted_its_buffer() {
        let budget = Arc::new(Semaphore::new(256 << 20));
        let gate = ReceiveGate::new(budget.clone(), 256 << 20);
        let mut codec = SizedCodec::new(16 << 20, gate.clone());
        let mut src = BytesMut::with_capacity(64);
        src.extend_from_slice(&(1u32 << 20).to_le_bytes());
        src.extend_from_slice(&[4, 0, 0, 0, 1, 0, 0, 0, 5]);
        assert!(codec.decode(&mut src).unwrap().is_none());
        assert_eq!(gate.held() as usize, (1 << 20) + 4);
        assert!(src.capacity() >= (1 << 20) + 4);
    }
}

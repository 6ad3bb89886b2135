//! One client connection: a reader loop and a writer task.
//!
//! The reader decodes frames in order. Work whose order matters (queuing a produce on
//! its shard's writer) is done in the reader loop itself, so two produces pipelined on
//! one connection to one shard are written in the order they were sent. Everything
//! else, including waiting for an append's ack or a long-poll fetch, runs in its own
//! task, and each response goes to the writer as soon as it is ready: responses may
//! leave out of order (clients match them by correlation id), so a quick request never
//! waits behind a slow one. Responses that are ready at the same time leave in
//! weighted-fair order of their requests' priority classes ([`crate::scheduler::Wfq`]),
//! so a P0 answer is written before queued P3 ones and waits behind at most the one
//! response already being written (frames are never interleaved).
//!
//! Memory per connection is bounded: at most `max_in_flight_per_connection` requests
//! and `flow_connection_in_flight_bytes` request bytes are held unanswered (the reader
//! stops reading the socket when either is reached, plus the one frame that tipped it
//! over, at most `max_frame_bytes`). A peer that does not read its responses stalls
//! the writer; after `io_timeout_ms` the connection is closed.
//!
//! The handshake binds the connection to a client id for quotas (`flow::quota`): a
//! handshake over the id's `max_connections` is answered THROTTLED and the connection
//! closed. Fetches wait here for the client's fetch quota and are charged after.

use std::io::IoSlice;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::{Decoder, FramedRead};
use weir_protocol::batch::DEFAULT_PRIORITY;
use weir_protocol::classes::Class;
use weir_protocol::frame::{ResponseFrame, ResponsePayload, PRIORITY_UNSPECIFIED};
use weir_protocol::{ErrorCode, FrameError, Request, ResponseBody, ServerCodec};

use super::handlers;
use crate::flow::quota::{ClientState, ConnectionSlot};
use crate::flow::receive::{GatedRead, ReceiveGate};
use crate::scheduler::Wfq;
use crate::state::BrokerState;

/// A write round stops taking responses once it holds this many bytes (it then writes
/// them and picks the most urgent waiting response again)...
const WRITE_ROUND_BYTES: usize = 256 * 1024;
/// ... or this many slices (the kernel takes at most 1,024 per `writev`).
const WRITE_ROUND_SLICES: usize = 512;

/// Serves one connection until the peer closes it, it fails, or the broker shuts down.
pub async fn run(sock: TcpStream, state: Arc<BrokerState>) -> Result<(), FrameError> {
    let (rd, wr) = sock.into_split();
    let cfg = &state.config;
    let gate = state.flow.receive_gate();
    let mut frames = FramedRead::with_capacity(
        GatedRead::new(rd, gate.clone()),
        SizedCodec::new(cfg.max_frame_bytes, gate),
        64 * 1024,
    );
    let in_flight = Arc::new(Semaphore::new(cfg.max_in_flight_per_connection));
    let bytes_limit = cfg.flow_connection_in_flight_bytes.min(u64::from(u32::MAX)) as u32;
    let in_flight_bytes = Arc::new(Semaphore::new(bytes_limit as usize));
    // Until the handshake names a client id, the connection uses the empty id's quota
    // without counting as one of its connections.
    let mut client: Arc<ClientState> = state.flow.quotas().client("");
    let mut slot: Option<ConnectionSlot> = None;
    let (tx, rx) = mpsc::channel::<Outgoing>(cfg.max_in_flight_per_connection);
    let io_timeout = Duration::from_millis(cfg.io_timeout_ms);
    let classes = cfg.class_map().unwrap_or_default();
    let wfq = Wfq::new(cfg.class_weights(), cfg.class_aging());
    let writer = tokio::spawn(write_loop(wr, rx, wfq, io_timeout));
    let idle = Duration::from_millis(cfg.idle_timeout_ms);
    let mut shutdown = state.shutdown.clone();
    let result = loop {
        let permit = tokio::select! {
            p = in_flight.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.changed() => break Ok(()),
            _ = tx.closed() => break Ok(()),
        };
        let next = tokio::select! {
            n = next_frame(&mut frames, idle, io_timeout) => n,
            _ = shutdown.changed() => break Ok(()),
            _ = tx.closed() => break Ok(()),
        };
        let frame = match next {
            Err(Stalled::Idle) => {
                tracing::debug!("idle timeout");
                break Ok(());
            }
            Err(Stalled::MidFrame) => {
                tracing::info!("peer stalled in the middle of a frame; closing connection");
                break Ok(());
            }
            Ok(None) => break Ok(()),
            Ok(Some(Err(FrameError::Decode(e)))) => {
                tracing::info!(error = %e, "unframeable input; closing connection");
                state
                    .metrics
                    .request_errors_total
                    .fetch_add(1, Ordering::Relaxed);
                let _ = tx
                    .send((
                        Class::P0,
                        ResponseFrame::connection_error(e.code(), e.to_string()),
                        None,
                    ))
                    .await;
                break Err(FrameError::Decode(e));
            }
            Ok(Some(Err(e))) => break Err(e),
            Ok(Some(Ok(frame))) => frame,
        };
        // Backpressure by not reading: hold this frame's bytes until it is answered.
        let frame_bytes =
            (frames.decoder().last_frame_bytes as u64).min(u64::from(bytes_limit)) as u32;
        let bytes_permit = tokio::select! {
            p = in_flight_bytes.clone().acquire_many_owned(frame_bytes) => p.expect("semaphore never closed"),
            _ = shutdown.changed() => break Ok(()),
            _ = tx.closed() => break Ok(()),
        };
        let permit = (permit, bytes_permit);
        state.metrics.requests_total.fetch_add(1, Ordering::Relaxed);
        if let Some(core) = super::runtimes::current_core() {
            if let Some(n) = state.metrics.requests_on_core.get(core) {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
        let frame = match frame {
            Ok(f) => f,
            Err(bad) => {
                state
                    .metrics
                    .request_errors_total
                    .fetch_add(1, Ordering::Relaxed);
                let resp = match bad.header {
                    Some(h) => ResponseFrame::error(&h, bad.error.code(), 0, bad.error.to_string()),
                    None => ResponseFrame::connection_error(
                        ErrorCode::InvalidRequest,
                        bad.error.to_string(),
                    ),
                };
                let _ = tx.send((Class::P0, resp, Some(permit))).await;
                continue;
            }
        };
        let header = frame.header;
        let class = classes.class_of(match header.priority {
            PRIORITY_UNSPECIFIED => DEFAULT_PRIORITY,
            p => p,
        });
        match frame.request {
            Request::ApiVersions(hs)
                if slot.as_ref().map(|s| s.client().id()) != Some(hs.client_id.as_str()) =>
            {
                match state.flow.quotas().connect(&hs.client_id) {
                    Ok(s) => {
                        client = s.client().clone();
                        slot = Some(s);
                        let resp =
                            handlers::handle(&state, &header, Request::ApiVersions(hs)).await;
                        let _ = tx.send((class, resp, Some(permit))).await;
                    }
                    Err(t) => {
                        tracing::info!(client_id = %hs.client_id, "{}; closing connection", t.message);
                        let retry = t.retry_after.as_millis().min(u128::from(u32::MAX)) as u32;
                        let _ = tx
                            .send((
                                class,
                                ResponseFrame::error(
                                    &header,
                                    ErrorCode::Throttled,
                                    retry,
                                    t.message,
                                ),
                                None,
                            ))
                            .await;
                        break Ok(());
                    }
                }
            }
            req @ (Request::Fetch(_) | Request::PriorityFetch(_)) => {
                let tx = tx.clone();
                let state = state.clone();
                let client = client.clone();
                tokio::spawn(async move {
                    let resp = match state.flow.before_fetch(&client).await {
                        Err(r) => {
                            ResponseFrame::error(&header, r.code, r.retry_after_ms, r.message)
                        }
                        Ok(()) => {
                            let resp = handlers::handle(&state, &header, req).await;
                            let served = match &resp.payload {
                                ResponsePayload::Ok(ResponseBody::Fetch(f)) => {
                                    f.records.len_bytes()
                                }
                                ResponsePayload::Ok(ResponseBody::PriorityFetch(f)) => {
                                    f.records.len_bytes()
                                }
                                _ => 0,
                            };
                            state.flow.after_fetch(&client, served as u64);
                            resp
                        }
                    };
                    if resp.error_code() != ErrorCode::None {
                        state
                            .metrics
                            .request_errors_total
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = tx.send((class, resp, Some(permit))).await;
                });
            }
            Request::Produce(req) => {
                // Queued here, in connection order; answered in its own task.
                let pending = handlers::produce_start(&state, &client, &header, req).await;
                let tx = tx.clone();
                let state = state.clone();
                tokio::spawn(async move {
                    match pending.finish(&state).await {
                        // The permits go with the response and are released once it
                        // is written, so unwritten responses count as in flight.
                        Some(resp) => {
                            let _ = tx.send((class, resp, Some(permit))).await;
                        }
                        None => drop(permit),
                    }
                });
            }
            request => {
                let tx = tx.clone();
                let state = state.clone();
                tokio::spawn(async move {
                    let resp = handlers::handle(&state, &header, request).await;
                    if resp.error_code() != ErrorCode::None {
                        state
                            .metrics
                            .request_errors_total
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = tx.send((class, resp, Some(permit))).await;
                });
            }
        }
    };
    // Let every in-flight request finish and its response be written, then close.
    let _ = tokio::time::timeout(
        io_timeout,
        in_flight.acquire_many(state.config.max_in_flight_per_connection as u32),
    )
    .await;
    drop(tx);
    let _ = writer.await;
    drop(slot);
    result
}

/// [`ServerCodec`] that also remembers the length of the last frame it cut, so the
/// reader can hold that many bytes of the connection's in-flight budget.
/// It also tells the connection's receive gate what the frame at the front of the
/// buffer needs (`flow::receive`).
struct SizedCodec {
    inner: ServerCodec,
    last_frame_bytes: usize,
    gate: ReceiveGate,
}

impl SizedCodec {
    fn new(max_frame_bytes: u32, gate: ReceiveGate) -> Self {
        SizedCodec {
            inner: ServerCodec::new(max_frame_bytes),
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
        let out = self.inner.decode(src)?;
        if out.is_some() {
            self.last_frame_bytes = len;
            self.gate.frame_done();
        }
        self.gate.observe(src);
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

/// The request-count and request-bytes permits of one request.
type Permits = (OwnedSemaphorePermit, OwnedSemaphorePermit);

/// A finished response, the class of the request it answers, and that request's
/// permits, held until the response is written: a peer that reads slowly keeps its
/// requests counted as in flight, so the reader stops and the queue of ready
/// responses stays within `max_in_flight_per_connection` and the byte bound.
type Outgoing = (Class, ResponseFrame, Option<Permits>);

/// An encoded response waiting for the socket.
struct Encoded {
    head: BytesMut,
    tail: Vec<Bytes>,
    _permits: Option<Permits>,
}

impl Encoded {
    fn new(resp: &ResponseFrame, permits: Option<Permits>) -> Self {
        let mut head = BytesMut::new();
        let mut tail = Vec::new();
        resp.encode_split(&mut head, &mut tail);
        Encoded {
            head,
            tail,
            _permits: permits,
        }
    }

    fn len(&self) -> usize {
        self.head.len() + self.tail.iter().map(Bytes::len).sum::<usize>()
    }
}

/// Writes responses as they finish, most urgent class first (weighted-fair with aging
/// among the ones waiting), coalescing small ones into one write.
async fn write_loop(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Outgoing>,
    mut ready: Wfq<Encoded>,
    io_timeout: Duration,
) {
    // One gathered write per round: response heads and record sets (straight from the
    // log's map) as separate slices, small tails included, so no response is copied.
    let mut chunks: Vec<Bytes> = Vec::with_capacity(64);
    let mut held: Vec<Option<Permits>> = Vec::new();
    let mut open = true;
    loop {
        if ready.is_empty() {
            match rx.recv().await {
                Some((class, resp, permits)) => {
                    let e = Encoded::new(&resp, permits);
                    let cost = e.len() as u64;
                    ready.push(class, e, cost, Instant::now());
                }
                None => break,
            }
        }
        // Everything that finished meanwhile competes for the next write.
        while open {
            match rx.try_recv() {
                Ok((class, resp, permits)) => {
                    let e = Encoded::new(&resp, permits);
                    let cost = e.len() as u64;
                    ready.push(class, e, cost, Instant::now());
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        let mut round_bytes = 0;
        while round_bytes < WRITE_ROUND_BYTES && chunks.len() < WRITE_ROUND_SLICES {
            let Some(served) = ready.pop(Instant::now()) else {
                break;
            };
            let Encoded {
                head,
                tail,
                _permits: permits,
            } = served.item;
            // Released once the bytes are on the socket, not when queued here.
            held.push(permits);
            round_bytes += head.len();
            chunks.push(head.freeze());
            for c in tail {
                round_bytes += c.len();
                chunks.push(c);
            }
        }
        if write_all_vectored(&mut wr, &chunks, io_timeout)
            .await
            .is_err()
        {
            return;
        }
        chunks.clear();
        held.clear();
        if !open && ready.is_empty() {
            break;
        }
    }
    let _ = wr.shutdown().await;
}

/// Writes every byte of `chunks` in order with `writev`; a peer that accepts nothing
/// for `io_timeout` (per call, so a slow but moving reader is fine) fails it.
async fn write_all_vectored(
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    chunks: &[Bytes],
    io_timeout: Duration,
) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
    let mut rest = &mut slices[..];
    IoSlice::advance_slices(&mut rest, 0);
    while !rest.is_empty() {
        let n = rest.len().min(WRITE_ROUND_SLICES);
        let written = match tokio::time::timeout(io_timeout, wr.write_vectored(&rest[..n])).await {
            Ok(r) => r?,
            Err(_) => {
                tracing::info!("peer is not reading its responses; closing connection");
                return Err(std::io::ErrorKind::TimedOut.into());
            }
        };
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, written);
    }
    Ok(())
}

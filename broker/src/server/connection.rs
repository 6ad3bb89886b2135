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
//! are held (the reader stops reading the socket when that many are unanswered), each
//! at most `max_frame_bytes`. A peer that does not read its responses stalls the
//! writer; after `io_timeout_ms` the connection is closed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::{Decoder, FramedRead};
use weir_protocol::batch::DEFAULT_PRIORITY;
use weir_protocol::classes::Class;
use weir_protocol::frame::{ResponseFrame, PRIORITY_UNSPECIFIED};
use weir_protocol::{ErrorCode, FrameError, Request, ServerCodec};

use super::handlers;
use crate::broker::BrokerState;
use crate::scheduler::Wfq;

/// Tail chunks smaller than this are copied into the write buffer rather than written
/// with their own system call.
const COPY_TAIL_BELOW_BYTES: usize = 64 * 1024;

/// Serves one connection until the peer closes it, it fails, or the broker shuts down.
pub async fn run(sock: TcpStream, state: Arc<BrokerState>) -> Result<(), FrameError> {
    let (rd, wr) = sock.into_split();
    let cfg = &state.config;
    let mut frames =
        FramedRead::with_capacity(rd, ServerCodec::new(cfg.max_frame_bytes), 64 * 1024);
    let in_flight = Arc::new(Semaphore::new(cfg.max_in_flight_per_connection));
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
                    ))
                    .await;
                break Err(FrameError::Decode(e));
            }
            Ok(Some(Err(e))) => break Err(e),
            Ok(Some(Ok(frame))) => frame,
        };
        state.metrics.requests_total.fetch_add(1, Ordering::Relaxed);
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
                let _ = tx.send((Class::P0, resp)).await;
                continue;
            }
        };
        let header = frame.header;
        let class = classes.class_of(match header.priority {
            PRIORITY_UNSPECIFIED => DEFAULT_PRIORITY,
            p => p,
        });
        match frame.request {
            Request::Produce(req) => {
                // Queued here, in connection order; answered in its own task.
                let pending = handlers::produce_start(&state, &header, req).await;
                let tx = tx.clone();
                let state = state.clone();
                tokio::spawn(async move {
                    if let Some(resp) = pending.finish(&state).await {
                        let _ = tx.send((class, resp)).await;
                    }
                    drop(permit);
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
                    let _ = tx.send((class, resp)).await;
                    drop(permit);
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
    result
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
    frames: &mut FramedRead<R, ServerCodec>,
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

/// A finished response and the class of the request it answers.
type Outgoing = (Class, ResponseFrame);

/// An encoded response waiting for the socket.
struct Encoded {
    head: BytesMut,
    tail: Vec<Bytes>,
}

impl Encoded {
    fn new(resp: &ResponseFrame) -> Self {
        let mut head = BytesMut::new();
        let mut tail = Vec::new();
        resp.encode_split(&mut head, &mut tail);
        Encoded { head, tail }
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
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut open = true;
    loop {
        if ready.is_empty() {
            match rx.recv().await {
                Some((class, resp)) => {
                    let e = Encoded::new(&resp);
                    let cost = e.len() as u64;
                    ready.push(class, e, cost, Instant::now());
                }
                None => break,
            }
        }
        // Everything that finished meanwhile competes for the next write.
        while open {
            match rx.try_recv() {
                Ok((class, resp)) => {
                    let e = Encoded::new(&resp);
                    let cost = e.len() as u64;
                    ready.push(class, e, cost, Instant::now());
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        while buf.len() < 256 * 1024 {
            let Some(served) = ready.pop(Instant::now()) else {
                break;
            };
            let Encoded { head, tail } = served.item;
            buf.extend_from_slice(&head);
            let tail_bytes: usize = tail.iter().map(Bytes::len).sum();
            if tail_bytes < COPY_TAIL_BELOW_BYTES {
                for c in &tail {
                    buf.extend_from_slice(c);
                }
            } else {
                // Large record sets go from the log's map to the socket without a copy;
                // the next response is chosen again after this one.
                if write_all(&mut wr, &buf, io_timeout).await.is_err() {
                    return;
                }
                buf.clear();
                for c in &tail {
                    if write_all(&mut wr, c, io_timeout).await.is_err() {
                        return;
                    }
                }
                break;
            }
        }
        if write_all(&mut wr, &buf, io_timeout).await.is_err() {
            return;
        }
        buf.clear();
        if !open && ready.is_empty() {
            break;
        }
    }
    let _ = wr.shutdown().await;
}

async fn write_all(
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    bytes: &[u8],
    io_timeout: Duration,
) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    match tokio::time::timeout(io_timeout, wr.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => {
            tracing::info!("peer is not reading its responses; closing connection");
            Err(std::io::ErrorKind::TimedOut.into())
        }
    }
}

//! One TCP (or TLS) client connection: framing, timeouts, and the order requests are
//! read in. What happens to each request is the transport-independent
//! [`super::session`], which the in-process transport ([`super::inproc`]) shares.
//!
//! The reader decodes frames in order and hands each to the session, which queues a
//! produce on its shard's writer before the next frame is read (so two produces
//! pipelined on one connection to one shard are written in the order they were sent)
//! and runs everything else in its own task; each response goes to the write loop
//! ([`super::responses`]) as soon as it is ready, so a quick request never waits
//! behind a slow one.
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

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::codec::{Decoder, FramedRead};
use weir_protocol::classes::Class;
use weir_protocol::frame::ResponseFrame;
use weir_protocol::{ErrorCode, FrameError, ServerCodec};

use super::responses::{write_loop, Outgoing, SocketSink};
use super::session::{Close, End, Out, Session};
use crate::flow::receive::{GatedRead, ReceiveGate};
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
    let Connection {
        frames,
        session,
        writer,
        close_how,
        ..
    } = conn;
    // The reader goes first: its share of the broker-wide receive budget (granted, or
    // a place in the budget's first-come queue) is given back now, not after the
    // close's drain (up to twice `io_timeout`), during which a queued place nobody
    // polls would hold back every other connection's large frames.
    drop(frames);
    session.close(Some(writer), close_how).await;
    result
}

/// A TCP (or TLS) connection: the framing in front of its [`Session`].
struct Connection<R> {
    frames: FramedRead<GatedRead<R>, SizedCodec>,
    session: Session,
    writer: JoinHandle<()>,
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
        let (tx, rx) = mpsc::channel::<Outgoing>(cfg.max_in_flight_per_connection);
        Connection {
            frames,
            writer: {
                let config = state.config.clone();
                tokio::spawn(
                    async move { write_loop(SocketSink::new(wr, &config), rx, &config).await },
                )
            },
            idle: Duration::from_millis(cfg.idle_timeout_ms),
            io_timeout: Duration::from_millis(cfg.io_timeout_ms),
            shutdown: state.shutdown.clone(),
            close_how: Close::Drain,
            session: Session::new(state, identity, Out::Loop(tx)),
        }
    }

    /// Reads and starts requests until the connection ends.
    async fn serve(&mut self) -> End {
        loop {
            let tx = self.session.responses();
            let permit = tokio::select! {
                p = self.session.request_permit() => p,
                _ = self.shutdown.changed() => return Ok(()),
                _ = tx.closed() => return Ok(()),
            };
            let frame = self.read_frame().await?;
            let Some(frame) = frame else { return Ok(()) };
            // Backpressure by not reading: hold this frame's bytes until it is answered.
            let frame_bytes = self.frames.decoder().last_frame_bytes as u64;
            let bytes_permit = tokio::select! {
                p = self.session.bytes_permit(frame_bytes) => p,
                _ = self.shutdown.changed() => return Ok(()),
                _ = tx.closed() => return Ok(()),
            };
            self.session.count_request();
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
                    self.session.send(Class::P0, resp, Some(permits)).await;
                    continue;
                }
            };
            if let Some(end) = self.session.start(frame, permits).await {
                return end;
            }
        }
    }

    /// The next frame: `Ok(None)` when the connection should end quietly (peer closed,
    /// idle, stalled mid-frame, shutdown), `Err` after an unframeable input (answered
    /// with a connection error first).
    async fn read_frame(&mut self) -> Result<Option<<ServerCodec as Decoder>::Item>, FrameError> {
        let tx = self.session.responses();
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
                self.session.send(Class::P0, resp, None).await;
                Err(FrameError::Decode(e))
            }
            Ok(Some(Err(e))) => Err(e),
            Ok(Some(Ok(frame))) => Ok(Some(frame)),
        }
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
    use tokio::sync::Semaphore;

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

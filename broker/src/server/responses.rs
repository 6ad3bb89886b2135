//! Ordered sending of one TCP connection's responses: most urgent class first,
//! coalesced. (An in-process session hands each answer over as it is finished,
//! `session::Out::Direct`: nothing waits there, so there is nothing to order.)
//!
//! Responses reach the write loop as their requests finish, in any order (clients
//! match them by correlation id). Those ready at the same time leave in weighted-fair
//! order of their requests' priority classes ([`crate::scheduler::Wfq`]), so a P0
//! answer is written before queued P3 ones and waits behind at most the one write
//! already on the socket (frames are never interleaved). A peer that does not read
//! its responses stalls the loop; after `io_timeout_ms` the connection is closed.

use std::io::IoSlice;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use weir_protocol::classes::Class;
use weir_protocol::frame::ResponseFrame;

use crate::config::Config;
use crate::scheduler::Wfq;

/// A write round stops taking responses once it holds this many bytes (it then writes
/// them and picks the most urgent waiting response again)...
const WRITE_ROUND_BYTES: usize = 256 * 1024;
/// ... or this many responses.
const WRITE_ROUND_RESPONSES: usize = 256;
/// A `writev` passes at most this many slices (the kernel takes at most 1,024).
const WRITE_ROUND_SLICES: usize = 512;

/// The request-count and request-bytes permits of one request.
pub type Permits = (OwnedSemaphorePermit, OwnedSemaphorePermit);

/// A finished response, the class of the request it answers, and that request's
/// permits, held until the response is written: a peer that reads slowly keeps its
/// requests counted as in flight, so the reader stops and the queue of ready
/// responses stays within `max_in_flight_per_connection` and the byte bound.
pub type Outgoing = (Class, ResponseFrame, Option<Permits>);

/// Where a connection's responses go once the write loop has ordered them (a socket:
/// [`SocketSink`]).
pub trait ResponseSink {
    /// A response made ready for this sink, holding its request's permits.
    type Ready;
    /// Prepares a response, and says what it costs the weighted-fair order (bytes).
    fn prepare(&mut self, resp: ResponseFrame, permits: Option<Permits>) -> (Self::Ready, u64);
    /// Sends one round, in order, and releases its permits once sent. An error ends
    /// the loop (the peer is gone or stalled).
    fn send_round(
        &mut self,
        round: &mut Vec<Self::Ready>,
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
    /// The loop is over: nothing more will be sent.
    fn finish(&mut self) -> impl std::future::Future<Output = ()> + Send;
}

/// An encoded response waiting for the socket.
pub struct Encoded {
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

/// A socket's writing half: responses are encoded and written with one gathered
/// `writev` per round, response heads and record sets (straight from the log's map)
/// as separate slices, so no record is copied.
pub struct SocketSink<W> {
    wr: W,
    io_timeout: Duration,
    chunks: Vec<Bytes>,
}

impl<W: tokio::io::AsyncWrite + Unpin + Send> SocketSink<W> {
    pub fn new(wr: W, config: &Config) -> Self {
        SocketSink {
            wr,
            io_timeout: Duration::from_millis(config.io_timeout_ms),
            chunks: Vec::with_capacity(64),
        }
    }
}

impl<W: tokio::io::AsyncWrite + Unpin + Send> ResponseSink for SocketSink<W> {
    type Ready = Encoded;

    fn prepare(&mut self, resp: ResponseFrame, permits: Option<Permits>) -> (Encoded, u64) {
        let e = Encoded::new(&resp, permits);
        let cost = e.len() as u64;
        (e, cost)
    }

    async fn send_round(&mut self, round: &mut Vec<Encoded>) -> std::io::Result<()> {
        // The permits stay in `round` until the bytes are on the socket.
        for e in round.iter_mut() {
            self.chunks.push(std::mem::take(&mut e.head).freeze());
            self.chunks.append(&mut e.tail);
        }
        let r = write_all_vectored(&mut self.wr, &self.chunks, self.io_timeout).await;
        self.chunks.clear();
        round.clear();
        r
    }

    async fn finish(&mut self) {
        let _ = self.wr.shutdown().await;
    }
}

/// Sends responses as they finish, most urgent class first (weighted-fair with aging
/// among the ones waiting), several per round.
pub async fn write_loop<S: ResponseSink>(
    mut sink: S,
    mut rx: mpsc::Receiver<Outgoing>,
    config: &Config,
) {
    let mut ready: Wfq<(S::Ready, u64)> = Wfq::new(config.class_weights(), config.class_aging());
    let mut round: Vec<S::Ready> = Vec::with_capacity(64);
    let mut open = true;
    loop {
        if ready.is_empty() {
            match rx.recv().await {
                Some((class, resp, permits)) => {
                    let (r, cost) = sink.prepare(resp, permits);
                    ready.push(class, (r, cost), cost, Instant::now());
                }
                None => break,
            }
        }
        // Everything that finished meanwhile competes for the next round.
        while open {
            match rx.try_recv() {
                Ok((class, resp, permits)) => {
                    let (r, cost) = sink.prepare(resp, permits);
                    ready.push(class, (r, cost), cost, Instant::now());
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        let mut round_bytes = 0;
        while round_bytes < WRITE_ROUND_BYTES && round.len() < WRITE_ROUND_RESPONSES {
            let Some(served) = ready.pop(Instant::now()) else {
                break;
            };
            let (r, cost) = served.item;
            round_bytes += cost as usize;
            round.push(r);
        }
        if sink.send_round(&mut round).await.is_err() {
            return;
        }
        if !open && ready.is_empty() {
            break;
        }
    }
    sink.finish().await;
}

/// Writes every byte of `chunks` in order with `writev`; a peer that accepts nothing
/// for `io_timeout` (per call, so a slow but moving reader is fine) fails it.
async fn write_all_vectored<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
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

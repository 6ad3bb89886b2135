//! Ordered writes of one connection's responses: most urgent class first, coalesced.
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
/// ... or this many slices (the kernel takes at most 1,024 per `writev`).
const WRITE_ROUND_SLICES: usize = 512;

/// The request-count and request-bytes permits of one request.
pub type Permits = (OwnedSemaphorePermit, OwnedSemaphorePermit);

/// A finished response, the class of the request it answers, and that request's
/// permits, held until the response is written: a peer that reads slowly keeps its
/// requests counted as in flight, so the reader stops and the queue of ready
/// responses stays within `max_in_flight_per_connection` and the byte bound.
pub type Outgoing = (Class, ResponseFrame, Option<Permits>);

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
pub async fn write_loop<W: tokio::io::AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Outgoing>,
    config: &Config,
) {
    let mut ready: Wfq<Encoded> = Wfq::new(config.class_weights(), config.class_aging());
    let io_timeout = Duration::from_millis(config.io_timeout_ms);
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

//! The broker-wide budget for large frames still arriving.
//!
//! A frame's bytes are read into the connection's buffer before the broker can act on
//! them, so without a limit every connection could hold a partial frame of up to
//! `max_frame_bytes` at once. A connection whose next frame announces more than
//! [`LARGE_FRAME_BYTES`] must take that many bytes from `flow_receive_bytes` before
//! the rest of the frame is read; while the budget is short, the broker simply does not
//! read that socket (TCP back-pressure). The bytes are given back when the frame has
//! been cut from the buffer, where the in-flight and produce budgets take over. A peer
//! left waiting longer than `io_timeout_ms` in the middle of its frame is closed like
//! any stalled peer.
//!
//! [`ReceiveGate`] is shared by the connection's decoder, which says how much the
//! frame at the front of the buffer needs, and [`GatedRead`], which will not read the
//! socket until that much is granted.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// Frames up to this size are read without asking the budget; the connection's
/// initial read buffer holds them anyway.
pub const LARGE_FRAME_BYTES: usize = 64 * 1024;

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

#[derive(Default)]
struct GateState {
    /// Bytes the frame at the front of the buffer needs before more is read.
    need: Option<u32>,
    granted: Option<OwnedSemaphorePermit>,
    acquiring: Option<Acquire>,
}

/// One connection's claim on the receive budget.
#[derive(Clone)]
pub struct ReceiveGate {
    budget: Arc<Semaphore>,
    total: u32,
    state: Arc<Mutex<GateState>>,
}

impl std::fmt::Debug for ReceiveGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiveGate")
            .field("total", &self.total)
            .finish()
    }
}

impl ReceiveGate {
    /// A gate drawing from `budget`, which holds `total` bytes.
    pub fn new(budget: Arc<Semaphore>, total: u32) -> Self {
        ReceiveGate {
            budget,
            total,
            state: Arc::new(Mutex::new(GateState::default())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A frame was cut from the buffer: the grant it used goes back.
    pub fn frame_done(&self) {
        let mut s = self.lock();
        s.need = None;
        s.granted = None;
        s.acquiring = None;
    }

    /// Called by the decoder with the buffer's contents: asks for a grant when a large
    /// frame has started and is not complete, and gives it back when none is there.
    pub fn observe(&self, buffered: &[u8]) {
        let mut s = self.lock();
        let announced = match buffered.get(..4) {
            Some(p) => u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize + 4,
            None => 0,
        };
        if announced > LARGE_FRAME_BYTES && buffered.len() < announced {
            if s.granted.is_none() && s.need.is_none() {
                let need = (announced as u64).min(u64::from(self.total)) as u32;
                s.need = Some(need);
                // Granted at once when the budget has room, so the decoder can give the
                // frame its whole buffer before the next read (one allocation, not a
                // growing series of them).
                if let Ok(p) = self.budget.clone().try_acquire_many_owned(need) {
                    s.granted = Some(p);
                }
            }
        } else {
            // No large partial frame at the front: nothing is needed or held.
            s.need = None;
            s.granted = None;
            s.acquiring = None;
        }
    }

    /// Whether reading may go on; registers the waker while the grant is pending.
    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.lock();
        let Some(need) = s.need else {
            return Poll::Ready(Ok(()));
        };
        if s.granted.is_some() {
            return Poll::Ready(Ok(()));
        }
        let budget = self.budget.clone();
        let fut = s
            .acquiring
            .get_or_insert_with(|| Box::pin(budget.acquire_many_owned(need)));
        match fut.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(p)) => {
                s.granted = Some(p);
                s.acquiring = None;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(_)) => Poll::Ready(Err(io::Error::other("receive budget closed"))),
        }
    }

    /// Bytes of the budget this connection holds now.
    pub fn held(&self) -> u32 {
        self.lock()
            .granted
            .as_ref()
            .map_or(0, |p| p.num_permits() as u32)
    }
}

/// A reader that does not read while its gate waits for a grant.
pub struct GatedRead<R> {
    inner: R,
    gate: ReceiveGate,
}

impl<R> GatedRead<R> {
    /// Wraps `inner`.
    pub fn new(inner: R, gate: ReceiveGate) -> Self {
        GatedRead { inner, gate }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for GatedRead<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.gate.poll_ready(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_read(cx, buf),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn prefix(len: u32) -> Vec<u8> {
        len.to_le_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_large_partial_frame_waits_for_the_budget_and_gives_it_back() {
        let budget = Arc::new(Semaphore::new(200_000));
        let a = ReceiveGate::new(budget.clone(), 200_000);
        let b = ReceiveGate::new(budget.clone(), 200_000);
        // A: a 150 000-byte frame has started: it gets a grant.
        a.observe(&prefix(150_000));
        let mut ra = GatedRead::new(&b"rest"[..], a.clone());
        let mut buf = [0u8; 4];
        ra.read_exact(&mut buf).await.unwrap();
        assert_eq!(a.held(), 150_004);
        // B: another one does not fit; its reader waits.
        b.observe(&prefix(150_000));
        let mut rb = GatedRead::new(&b"more"[..], b.clone());
        let blocked = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            rb.read_exact(&mut buf),
        )
        .await;
        assert!(blocked.is_err(), "B read without a grant");
        // A's frame was cut from its buffer: the grant goes back and B proceeds.
        a.frame_done();
        a.observe(&[]);
        assert_eq!(a.held(), 0);
        rb.read_exact(&mut buf).await.unwrap();
        assert_eq!(b.held(), 150_004);
        // Small frames never ask.
        let c = ReceiveGate::new(budget, 200_000);
        c.observe(&prefix(1000));
        let mut rc = GatedRead::new(&b"tiny"[..], c.clone());
        rc.read_exact(&mut buf).await.unwrap();
        assert_eq!(c.held(), 0);
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_budget_takes_all_of_it() {
        let budget = Arc::new(Semaphore::new(100_000));
        let g = ReceiveGate::new(budget.clone(), 100_000);
        g.observe(&prefix(1 << 20));
        let mut r = GatedRead::new(&b"x"[..], g.clone());
        let mut buf = [0u8; 1];
        r.read_exact(&mut buf).await.unwrap();
        assert_eq!(g.held(), 100_000);
        assert_eq!(budget.available_permits(), 0);
        drop(r);
        drop(g);
        assert_eq!(budget.available_permits(), 100_000);
    }
}

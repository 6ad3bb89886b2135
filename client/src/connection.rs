//! One multiplexed connection to a broker: TCP (or TLS), or in-process channels to an
//! embedded broker.
//!
//! Over TCP, requests are written by a writer task in the order they are sent;
//! responses are read by a reader task and matched to their requests by correlation
//! id, so they may arrive in any order. In-process, the calling task starts each
//! request in the broker's session itself and the broker hands each answer to its
//! waiter (no tasks of the connection's own). A failed connection fails every waiting
//! request with [`ClientError::Io`]; [`crate::Client`] then opens a new one.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;
use weir_protocol::frame::{RequestFrame, ResponseFrame, ResponsePayload};
use weir_protocol::{ClientCodec, Request, ResponseBody};

use crate::error::{ClientError, Result};
use crate::tls::Connector;

type Waiters = Arc<Mutex<Option<HashMap<u32, oneshot::Sender<ResponseFrame>>>>>;

/// Requests queued for the writer task at most.
const WRITE_QUEUE: usize = 1024;

/// An in-process session's requests side (feature `embedded`; see
/// [`Connection::in_process`]).
pub(crate) trait InProcessSession: Send + Sync {
    /// Starts a request; false when the session is closed (the request was not
    /// started). The future must be polled to its end once polled at all: part-way it
    /// may hold the session, which every later request waits for.
    fn submit(&self, frame: RequestFrame) -> Pin<Box<dyn Future<Output = bool> + Send>>;
}

/// Where a connection's requests go.
enum Requests {
    /// The writer task of a socket.
    Writer(mpsc::Sender<RequestFrame>),
    /// An in-process session, started in the calling task.
    InProcess(Box<dyn InProcessSession>),
}

impl std::fmt::Debug for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Requests::Writer(_) => "socket",
            Requests::InProcess(_) => "in-process",
        })
    }
}

/// A live connection.
#[derive(Debug)]
pub struct Connection {
    tx: Requests,
    waiters: Waiters,
    next_id: AtomicU32,
    dead: Arc<AtomicBool>,
    pub(crate) max_frame_bytes: u32,
}

impl Connection {
    /// Connects (over TLS with `tls`) and starts the reader and writer tasks.
    pub(crate) async fn connect(
        addr: &str,
        connect_timeout: Duration,
        tls: Option<&Connector>,
    ) -> Result<Connection> {
        let connected = async {
            let sock = TcpStream::connect(addr).await?;
            sock.set_nodelay(true)?;
            match tls {
                None => {
                    let (rd, wr) = sock.into_split();
                    Ok(Self::start(rd, wr))
                }
                Some(tls) => {
                    let (rd, wr) = tokio::io::split(tls.connect(addr, sock).await?);
                    Ok(Self::start(rd, wr))
                }
            }
        };
        tokio::time::timeout(connect_timeout, connected)
            .await
            .map_err(|_| ClientError::Timeout(connect_timeout.as_millis() as u64))?
    }

    /// Starts the writer and reader tasks on the two halves of a connected stream.
    fn start<R, W>(rd: R, mut wr: W) -> Connection
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<RequestFrame>(WRITE_QUEUE);
        let waiters: Waiters = Arc::new(Mutex::new(Some(HashMap::new())));
        let dead = Arc::new(AtomicBool::new(false));
        let w_dead = dead.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            let mut tail: Vec<Bytes> = Vec::new();
            while let Some(first) = rx.recv().await {
                let mut next = Some(first);
                while let Some(req) = next.take() {
                    req.encode_split(&mut buf, &mut tail);
                    for c in tail.drain(..) {
                        if c.len() >= 64 * 1024 {
                            if wr.write_all(&buf).await.is_err() || wr.write_all(&c).await.is_err()
                            {
                                w_dead.store(true, Ordering::Release);
                                return;
                            }
                            buf.clear();
                        } else {
                            buf.extend_from_slice(&c);
                        }
                    }
                    if buf.len() < 1 << 20 {
                        next = rx.try_recv().ok();
                    }
                }
                if wr.write_all(&buf).await.is_err() {
                    w_dead.store(true, Ordering::Release);
                    return;
                }
                buf.clear();
            }
        });
        let r_waiters = waiters.clone();
        let r_dead = dead.clone();
        tokio::spawn(async move {
            let mut frames = FramedRead::with_capacity(rd, ClientCodec::default(), 256 * 1024);
            while let Some(frame) = frames.next().await {
                let Ok(frame) = frame else { break };
                if !hand_over(&r_waiters, frame) {
                    break;
                }
            }
            r_dead.store(true, Ordering::Release);
            // Dropping the senders fails every waiter.
            r_waiters.lock().expect("waiters lock").take();
        });
        Connection {
            tx: Requests::Writer(tx),
            waiters,
            next_id: AtomicU32::new(1),
            dead,
            max_frame_bytes: weir_protocol::frame::DEFAULT_MAX_FRAME_BYTES,
        }
    }

    /// A connection over an in-process transport (feature `embedded`): the calling
    /// task starts each request in the broker's session as a typed frame, and the
    /// broker hands each answer straight to its waiter (no writer or reader task,
    /// nothing encoded, decoded or copied, no socket). `dial` opens the session with
    /// the delivery function.
    pub(crate) fn in_process(
        dial: impl FnOnce(Deliver) -> Box<dyn InProcessSession>,
    ) -> Connection {
        let waiters: Waiters = Arc::new(Mutex::new(Some(HashMap::new())));
        let dead = Arc::new(AtomicBool::new(false));
        let mut end = SessionEnd {
            waiters: waiters.clone(),
            dead: dead.clone(),
        };
        let deliver: Deliver = Box::new(move |frame| {
            let open = hand_over(&end.waiters, frame);
            if !open {
                end.close();
            }
            open
        });
        Connection {
            tx: Requests::InProcess(dial(deliver)),
            waiters,
            next_id: AtomicU32::new(1),
            dead,
            max_frame_bytes: weir_protocol::frame::DEFAULT_MAX_FRAME_BYTES,
        }
    }

    /// True once the connection has failed.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Sends a request and waits for its response.
    pub async fn call(
        &self,
        request: Request,
        priority: u8,
        timeout: Duration,
    ) -> Result<ResponseFrame> {
        let rx = self
            .send(request, priority, true)
            .await?
            .expect("response expected");
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(ClientError::Timeout(timeout.as_millis() as u64)),
            Ok(Err(_)) => Err(ClientError::Io(
                "connection closed before the response".into(),
            )),
            Ok(Ok(frame)) => Ok(frame),
        }
    }

    /// Queues a request for writing. With `expect_response`, returns the receiver of its
    /// response; the request is written in the order of calls on this connection.
    pub async fn send(
        &self,
        request: Request,
        priority: u8,
        expect_response: bool,
    ) -> Result<Option<oneshot::Receiver<ResponseFrame>>> {
        if self.is_dead() {
            return Err(ClientError::Io("connection is closed".into()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = RequestFrame::new(id, request);
        frame.header.priority = priority;
        let rx = if expect_response {
            let (tx, rx) = oneshot::channel();
            match self.waiters.lock().expect("waiters lock").as_mut() {
                Some(m) => m.insert(id, tx),
                None => return Err(ClientError::Io("connection is closed".into())),
            };
            Some(rx)
        } else {
            None
        };
        let sent = match &self.tx {
            Requests::Writer(tx) => tx.send(frame).await.is_ok(),
            Requests::InProcess(session) => {
                // Started in the calling task when nothing makes it wait (the common
                // case: no task hop). When it must wait (in-flight permits, a full
                // shard lane) it goes on in a task of its own: the caller may stop
                // polling this call's future for a while (a task with several requests
                // in flight polls each only now and then), and a request left part-way
                // would hold the session, so every later request, including one that
                // would let that caller go on, would wait for it forever. The session
                // takes requests in order, so one handed to a task still starts before
                // any later call's. This call still waits for the task (the caller
                // keeps its back-pressure); leaving it unpolled no longer holds
                // anything.
                let mut submit = session.submit(frame);
                match std::future::poll_fn(|cx| std::task::Poll::Ready(submit.as_mut().poll(cx)))
                    .await
                {
                    std::task::Poll::Ready(started) => started,
                    std::task::Poll::Pending => tokio::spawn(submit).await.unwrap_or(false),
                }
            }
        };
        if !sent {
            if let Some(m) = self.waiters.lock().expect("waiters lock").as_mut() {
                m.remove(&id);
            }
            return Err(ClientError::Io("connection is closed".into()));
        }
        Ok(rx)
    }
}

/// How an in-process session hands answers to the client; see
/// [`Connection::in_process`].
pub(crate) type Deliver = Box<dyn FnMut(ResponseFrame) -> bool + Send>;

/// Held by an in-process session's delivery function: when the session ends (the
/// broker drops the function), the connection is dead and every waiter fails.
struct SessionEnd {
    waiters: Waiters,
    dead: Arc<AtomicBool>,
}

impl SessionEnd {
    fn close(&mut self) {
        self.dead.store(true, Ordering::Release);
        self.waiters.lock().expect("waiters lock").take();
    }
}

impl Drop for SessionEnd {
    fn drop(&mut self) {
        self.close();
    }
}

/// Hands a response to the request waiting for it. False when the broker closed the
/// connection (every waiter then got that answer).
fn hand_over(waiters: &Waiters, frame: ResponseFrame) -> bool {
    let waiter = waiters
        .lock()
        .expect("waiters lock")
        .as_mut()
        .and_then(|m| m.remove(&frame.correlation_id));
    match waiter {
        Some(w) => {
            let _ = w.send(frame);
        }
        None if frame.api_key == weir_protocol::frame::CONNECTION_API_KEY => {
            tracing::warn!(?frame.payload, "broker closed the connection");
            // Every waiting request fails with the broker's named error
            // (TLS_REQUIRED, THROTTLED at max_connections, ...).
            let waiting = waiters.lock().expect("waiters lock").take();
            for (_, w) in waiting.into_iter().flatten() {
                let _ = w.send(frame.clone());
            }
            return false;
        }
        None => tracing::debug!(id = frame.correlation_id, "response nobody waits for"),
    }
    true
}

/// Turns a response into its body or the broker's error.
pub fn into_body(frame: ResponseFrame) -> Result<ResponseBody> {
    match frame.payload {
        ResponsePayload::Ok(body) => Ok(body),
        ResponsePayload::Err(code, e) => Err(ClientError::Broker {
            code,
            message: e.message,
            retry_after_ms: e.retry_after_ms,
        }),
    }
}

//! The protocol server: accepts connections and runs one [`connection`] task each.
//!
//! Connections are bounded by `max_connections`, TCP connections and in-process
//! sessions together (extra ones get a THROTTLED connection error, are closed at once
//! and counted). The server is split by plane:
//!
//! - [`session`]: the per-request path every transport shares — the permits that
//!   bound a peer, authentication, the order requests start in, the one count of
//!   request errors; [`responses`]: a socket's ordered answers;
//! - [`connection`]: a TCP (or TLS) connection's framing in front of a session;
//!   [`inproc`]: the in-process transport (typed requests started in the caller's
//!   task) in front of the same session;
//! - [`admission`]: quotas, shedding and memory, for every api in one place;
//! - [`produce`]: the data plane's write side, with [`acks`], the one owner of "when
//!   may this produce be answered";
//! - [`fetch`]: the data plane's read side (Fetch, PriorityFetch, ListOffsets);
//! - [`queue`]: queue mode (leases, ack, nack);
//! - [`control`]: handshake, topics, metadata, producer ids, groups, quotas;
//! - [`dispatch`]: routes every request but Produce to its plane;
//! - [`runtimes`]: the thread-per-core connection runtimes.

pub mod acks;
pub mod admission;
pub mod connection;
pub mod control;
pub mod direct;
pub mod dispatch;
pub mod fetch;
pub mod inproc;
pub mod placement;
pub mod produce;
pub mod queue;
pub mod responses;
pub mod runtimes;
pub mod session;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit};

use weir_protocol::frame::ResponseFrame;
use weir_protocol::ErrorCode;

use crate::state::BrokerState;
use runtimes::CoreRuntimes;

/// Accepts until `shutdown` turns true, then waits for open connections to finish.
/// With `cores` (thread-per-core mode) connections run on those runtimes, which are
/// stopped at the end; otherwise on the caller's runtime.
pub async fn serve(
    listener: TcpListener,
    state: Arc<BrokerState>,
    mut shutdown: watch::Receiver<bool>,
    cores: Option<CoreRuntimes>,
) {
    let slots = state.connection_slots.clone();
    // Told to connections refused at max_connections, so the client sees a named error.
    let refusal = {
        let mut b = bytes::BytesMut::new();
        full_refusal(&state).encode(&mut b);
        b.freeze()
    };
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let (sock, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    state.metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, "max_connections reached; closing new connection");
                    // Never blocks: a new socket's send buffer is empty.
                    let _ = sock.try_write(&refusal);
                    drop(sock);
                    continue;
                };
                configure(&sock, peer, &state.config);
                hand_off(&mut conns, cores.as_ref(), sock, peer, state.clone(), slot);
                // Reap finished connection tasks so the set stays small.
                while conns.try_join_next().is_some() {}
            }
        }
    }
    drop(listener);
    let grace = std::time::Duration::from_millis(state.config.io_timeout_ms);
    if tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        conns.abort_all();
    }
    if let Some(cores) = cores {
        // Joining the threads blocks briefly; keep it off the async workers.
        let _ = tokio::task::spawn_blocking(move || cores.stop()).await;
    }
}

/// The connection error a connection (or in-process session) opened beyond
/// `max_connections` gets before it is closed.
pub(crate) fn full_refusal(state: &BrokerState) -> ResponseFrame {
    ResponseFrame::connection_error(
        ErrorCode::Throttled,
        format!(
            "broker at max_connections ({}); retry later",
            state.config.max_connections
        ),
    )
}

/// One connection from accept to close, counted in the metrics and holding its
/// `max_connections` slot.
async fn run_connection(
    sock: TcpStream,
    peer: std::net::SocketAddr,
    state: Arc<BrokerState>,
    slot: OwnedSemaphorePermit,
) {
    state
        .metrics
        .connections_open
        .fetch_add(1, Ordering::Relaxed);
    state
        .metrics
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    let result = match &state.security.tls {
        None => connection::run(sock, peer, state.clone()).await,
        Some(tls) => {
            let timeout = std::time::Duration::from_millis(state.config.io_timeout_ms);
            match tls.accept(sock, timeout, &tls_required()).await {
                Ok((stream, principal)) => {
                    let identity = crate::security::Identity::new(peer, principal);
                    connection::run_stream(stream, state.clone(), identity).await
                }
                Err(e) => {
                    tracing::info!(%peer, error = %e, "TLS connection refused");
                    Ok(())
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection closed with error");
    }
    state
        .metrics
        .connections_open
        .fetch_sub(1, Ordering::Relaxed);
    drop(slot);
}

/// What a plain-TCP client of the TLS port is told before the socket closes.
fn tls_required() -> bytes::Bytes {
    let mut b = bytes::BytesMut::new();
    ResponseFrame::connection_error(
        ErrorCode::TlsRequired,
        "this port speaks TLS: connect with TLS (weir --tls-ca FILE)".to_string(),
    )
    .encode(&mut b);
    b.freeze()
}

/// Socket options every connection gets.
fn configure(sock: &TcpStream, peer: std::net::SocketAddr, config: &crate::config::Config) {
    let _ = sock.set_nodelay(true);
    if config.flow_socket_send_buffer_bytes > 0 {
        let size = config.flow_socket_send_buffer_bytes as usize;
        if let Err(e) = socket2::SockRef::from(sock).set_send_buffer_size(size) {
            tracing::warn!(%peer, error = %e, "cannot set the socket send buffer");
        }
    }
}

/// Runs an accepted connection on the caller's runtime, or on the next core runtime
/// in thread-per-core mode.
fn hand_off(
    conns: &mut tokio::task::JoinSet<()>,
    cores: Option<&CoreRuntimes>,
    sock: TcpStream,
    peer: std::net::SocketAddr,
    state: Arc<BrokerState>,
    slot: OwnedSemaphorePermit,
) {
    let Some(cores) = cores else {
        conns.spawn(run_connection(sock, peer, state, slot));
        return;
    };
    // A Tokio socket belongs to the reactor that registered it: move it out as a std
    // socket and register it on the target.
    let sock = match sock.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot hand the connection to a core");
            return;
        }
    };
    conns.spawn_on(
        async move {
            match TcpStream::from_std(sock) {
                Ok(sock) => run_connection(sock, peer, state, slot).await,
                Err(e) => tracing::warn!(%peer, error = %e, "cannot register the connection"),
            }
        },
        cores.pick(),
    );
}

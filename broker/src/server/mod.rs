//! The protocol server: accepts connections and runs one [`connection`] task each.
//!
//! Connections are bounded by `max_connections` (extra ones get a THROTTLED
//! connection error, are closed at once and counted). Requests are decoded and answered by [`handlers`].

pub mod connection;
pub mod handlers;
pub mod priority_fetch;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use weir_protocol::frame::ResponseFrame;
use weir_protocol::ErrorCode;

use crate::broker::BrokerState;

/// Accepts until `shutdown` turns true, then waits for open connections to finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<BrokerState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(state.config.max_connections));
    // Told to connections refused at max_connections, so the client sees a named error.
    let refusal = {
        let mut b = bytes::BytesMut::new();
        ResponseFrame::connection_error(
            ErrorCode::Throttled,
            format!(
                "broker at max_connections ({}); retry later",
                state.config.max_connections
            ),
        )
        .encode(&mut b);
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
                let _ = sock.set_nodelay(true);
                if state.config.flow_socket_send_buffer_bytes > 0 {
                    let size = state.config.flow_socket_send_buffer_bytes as usize;
                    if let Err(e) = socket2::SockRef::from(&sock).set_send_buffer_size(size) {
                        tracing::warn!(%peer, error = %e, "cannot set the socket send buffer");
                    }
                }
                let state = state.clone();
                conns.spawn(async move {
                    state.metrics.connections_open.fetch_add(1, Ordering::Relaxed);
                    state.metrics.connections_total.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = connection::run(sock, state.clone()).await {
                        tracing::debug!(%peer, error = %e, "connection closed with error");
                    }
                    state.metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
                    drop(slot);
                });
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
}

//! The HTTP side listener: health, readiness, metrics, alerts, the status document
//! and the status page, served by `axum` on `hyper`.
//!
//! It must not be a way to exhaust the broker: one request per connection, the
//! request head capped at 8 KiB (hyper's read buffer; larger heads get 431), the head
//! read within 5 s and the whole exchange done within [`CONNECTION_TIME`]. Every page
//! reads shared state; none writes it.

mod alerts;
mod health;
mod metrics;
mod page;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::observe::Observer;
use crate::state::BrokerState;

/// Largest request head (hyper's smallest allowed read buffer).
pub const MAX_HEAD_BYTES: usize = 8192;

/// Longest time to read a request head.
pub const HEAD_TIME: Duration = Duration::from_secs(5);

/// Longest a connection may take from accept to the end of its answer.
pub const CONNECTION_TIME: Duration = Duration::from_secs(10);

/// What a plain-HTTP client of a TLS HTTP port (`http_tls`) is told before the close.
const HTTPS_REQUIRED: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 40\r\nConnection: close\r\n\r\nthis port speaks HTTPS (TLS): use https\n";

/// What every handler reads.
#[derive(Clone)]
pub struct Shared {
    pub state: Arc<BrokerState>,
    pub observer: Arc<Observer>,
}

/// The routes.
pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/", get(page::index))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(metrics::metrics))
        .route("/alerts", get(alerts::alerts))
        .route("/status", get(page::status))
        .with_state(shared)
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<BrokerState>,
    observer: Arc<Observer>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let app = router(Shared {
        state: state.clone(),
        observer,
    });
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let Ok((sock, _)) = accepted else { continue };
                let service = TowerToHyperService::new(app.clone());
                let state = state.clone();
                tokio::spawn(async move {
                    let mut http = hyper::server::conn::http1::Builder::new();
                    http.max_buf_size(MAX_HEAD_BYTES)
                        .keep_alive(false)
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEAD_TIME);
                    // The handshake counts against the connection's time too.
                    let _ = tokio::time::timeout(CONNECTION_TIME, async move {
                        match state.security.http_tls.as_ref() {
                            None => {
                                let _ = http.serve_connection(TokioIo::new(sock), service).await;
                            }
                            Some(tls) => {
                                let Ok((stream, _)) = tls.accept(sock, HEAD_TIME, HTTPS_REQUIRED).await
                                else {
                                    return;
                                };
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    })
                    .await;
                });
            }
        }
    }
}

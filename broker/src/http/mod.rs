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
    let app = router(Shared { state, observer });
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let Ok((sock, _)) = accepted else { continue };
                let service = TowerToHyperService::new(app.clone());
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .max_buf_size(MAX_HEAD_BYTES)
                        .keep_alive(false)
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEAD_TIME)
                        .serve_connection(TokioIo::new(sock), service);
                    let _ = tokio::time::timeout(CONNECTION_TIME, conn).await;
                });
            }
        }
    }
}

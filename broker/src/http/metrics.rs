//! `GET /metrics`: the Prometheus text exposition (`observe::collect`).

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;

use super::Shared;
use crate::observe::collect;

pub async fn metrics(
    State(s): State<Shared>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(CONTENT_TYPE, collect::CONTENT_TYPE)],
        collect::metrics_text(&s.state, &s.observer),
    )
}

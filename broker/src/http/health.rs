//! `GET /health` (the process is alive and serving) and `GET /ready` (every shard
//! takes appends: a load balancer may send produces here).

use axum::extract::State;
use axum::http::StatusCode;

use super::Shared;

/// Always `200 ok` while the listener answers; the health *state* (healthy, degraded,
/// critical) is in `/status` and `weir_health_state`.
pub async fn health() -> &'static str {
    "ok\n"
}

/// `200 ok` while every shard takes appends; else `503` with one line per shard that
/// does not, `degraded: <topic>/<shard>: <cause>`, so an orchestrator sees the broker
/// cannot take all writes, and an operator sees which and why. `503 shutting down`
/// once shutdown began.
pub async fn ready(State(s): State<Shared>) -> (StatusCode, String) {
    use std::fmt::Write;
    if *s.state.shutdown.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    }
    let mut body = String::new();
    for t in s.state.topics.list() {
        for (i, shard) in t.shards.iter().enumerate() {
            if let Some(cause) = shard.trouble() {
                let _ = writeln!(body, "degraded: {}/{i}: {cause}", t.name);
            }
        }
    }
    if body.is_empty() {
        (StatusCode::OK, "ok\n".into())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

//! `GET /health` (the process is alive and serving) and `GET /ready` (every shard
//! takes appends: a load balancer may send produces here).

use axum::extract::State;
use axum::http::StatusCode;

use super::Shared;

/// Always `200` while the listener answers, the body starting `ok`; the health *state*
/// (healthy, degraded, critical) is in `/status` and `weir_health_state`. On a cluster
/// node, one more line per mirror held out of sync because its divergent suffix cannot
/// be kept yet, `held: <topic>/<shard>: <why>` (`cluster/replication/held.rs`).
pub async fn health(State(s): State<Shared>) -> String {
    let held = s
        .state
        .cluster
        .as_ref()
        .map(|c| c.held.lines())
        .unwrap_or_default();
    health_body(&held)
}

/// `ok`, then one `held: ...` line per held copy.
fn health_body(held: &[String]) -> String {
    let mut body = String::from("ok\n");
    for line in held {
        body.push_str("held: ");
        body.push_str(line);
        body.push('\n');
    }
    body
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

#[cfg(test)]
mod tests {
    use super::health_body;

    #[test]
    fn health_names_held_copies_after_ok() {
        assert_eq!(health_body(&[]), "ok\n");
        assert_eq!(
            health_body(&["t/3: out of sync: why".to_string()]),
            "ok\nheld: t/3: out of sync: why\n"
        );
    }
}

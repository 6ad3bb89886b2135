//! The HTTP side listener: `GET /health` and `GET /metrics` (Prometheus text).
//!
//! Deliberately tiny: one request per connection, request head capped at 8 KiB and
//! read within 5 s, so it cannot be used to exhaust the broker.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::state::BrokerState;

const MAX_HEAD_BYTES: usize = 8192;

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<BrokerState>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let Ok((mut sock, _)) = accepted else { continue };
                let state = state.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(5), handle(&mut sock, &state)).await;
                });
            }
        }
    }
}

async fn handle(sock: &mut tokio::net::TcpStream, state: &BrokerState) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > MAX_HEAD_BYTES {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body) = match (method, path) {
        ("GET", "/health") => health(state),
        ("GET", "/metrics") => ("200 OK", metrics_text(state)),
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(resp.as_bytes()).await?;
    sock.shutdown().await
}

/// `200 ok` while every shard takes appends; else `503` with one line per shard that
/// does not, `degraded: <topic>/<shard>: <cause>`, so a load balancer or orchestrator
/// sees the broker cannot take all writes, and an operator sees which and why.
fn health(state: &BrokerState) -> (&'static str, String) {
    use std::fmt::Write;
    let mut body = String::new();
    for t in state.topics.list() {
        for (i, s) in t.shards.iter().enumerate() {
            if let Some(cause) = s.trouble() {
                let _ = writeln!(body, "degraded: {}/{i}: {cause}", t.name);
            }
        }
    }
    if body.is_empty() {
        ("200 OK", "ok\n".to_string())
    } else {
        ("503 Service Unavailable", body)
    }
}

/// Prometheus text exposition of the counters and per-shard offsets.
pub fn metrics_text(state: &BrokerState) -> String {
    use std::fmt::Write;
    let m = &state.metrics;
    let mut out = String::new();
    let counters = [
        ("weir_connections_open", &m.connections_open),
        ("weir_connections_total", &m.connections_total),
        ("weir_connections_refused_total", &m.connections_refused),
        ("weir_requests_total", &m.requests_total),
        ("weir_request_errors_total", &m.request_errors_total),
        ("weir_produce_bytes_total", &m.produce_bytes_total),
        ("weir_produce_records_total", &m.produce_records_total),
        ("weir_fetch_bytes_total", &m.fetch_bytes_total),
    ];
    for (name, v) in counters {
        let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
    }
    for (core, v) in m.requests_on_core.iter().enumerate() {
        let _ = writeln!(
            out,
            "weir_requests_on_core_total{{core=\"{core}\"}} {}",
            v.load(Ordering::Relaxed)
        );
    }
    write_queues(&mut out, state);
    let _ = writeln!(
        out,
        "weir_uptime_seconds {}",
        state.started.elapsed().as_secs()
    );
    for t in state.topics.list() {
        for (i, s) in t.shards.iter().enumerate() {
            write_shard(&mut out, &t.name, i, s);
        }
    }
    out.push_str(&state.flow.metrics_text());
    out
}

/// Queue-mode counters and breaker states.
fn write_queues(out: &mut String, state: &BrokerState) {
    use std::fmt::Write;
    let q = &state.queues.metrics;
    let queue_counters = [
        ("weir_queue_leased_total", &q.leased),
        ("weir_queue_acked_total", &q.acked),
        ("weir_queue_nacked_total", &q.nacked),
        ("weir_queue_lease_expired_total", &q.expired),
        ("weir_queue_redelivered_total", &q.redelivered),
        ("weir_queue_dead_lettered_total", &q.dead_lettered),
    ];
    for (name, v) in queue_counters {
        let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
    }
    for (group, topic, state) in state.queues.breaker_states() {
        let _ = writeln!(
            out,
            "weir_queue_breaker_state{{group=\"{group}\",topic=\"{topic}\"}} {state}"
        );
    }
}

/// One shard's offsets, flushes and per-class queue figures.
fn write_shard(out: &mut String, topic: &str, i: usize, s: &crate::shard::Shard) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "weir_shard_high_watermark{{topic=\"{}\",shard=\"{i}\"}} {}",
        topic,
        s.reader().high_watermark()
    );
    let st = s.stats();
    let _ = writeln!(
        out,
        "weir_shard_failed{{topic=\"{}\",shard=\"{i}\"}} {}",
        topic,
        u8::from(s.trouble().is_some())
    );
    let _ = writeln!(
        out,
        "weir_shard_flushed_offset{{topic=\"{}\",shard=\"{i}\"}} {}",
        topic,
        st.flushed_offset.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "weir_shard_flushes_total{{topic=\"{}\",shard=\"{i}\"}} {}",
        topic,
        st.flushes.load(Ordering::Relaxed)
    );
    for c in weir_protocol::classes::Class::ALL {
        let k = c.index();
        let labels = format!("topic=\"{}\",shard=\"{i}\",class=\"{}\"", topic, c.name());
        let _ = writeln!(out, "weir_shard_queued{{{labels}}} {}", s.queued(c));
        let _ = writeln!(
            out,
            "weir_shard_appends_total{{{labels}}} {}",
            st.appends[k].load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "weir_shard_wait_us_total{{{labels}}} {}",
            st.wait_us[k].load(Ordering::Relaxed)
        );
        // The longest wait since the last scrape.
        let _ = writeln!(
            out,
            "weir_shard_wait_us_max{{{labels}}} {}",
            st.wait_us_max[k].swap(0, Ordering::Relaxed)
        );
    }
}

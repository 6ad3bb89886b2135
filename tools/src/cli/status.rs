//! `weir status`: one screen of the broker's state — topics and offsets, flow control
//! (from `quota`) and queues (from `queue`) over the protocol; health, alerts and
//! consumer lag from the HTTP listener's `GET /status` (METRICS.md).

use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_client::{Admin, Client};

use super::{queue, quota};

/// Largest `/status` answer read (the broker bounds what it lists).
const STATUS_MAX_BYTES: u64 = 64 << 20;

/// Prints the broker's version, uptime, shard offsets, flow status and queues, then
/// its health, alerts and consumer lag.
pub async fn run(
    client: &Client,
    admin: &Admin,
    broker: &str,
    http: Option<String>,
) -> anyhow::Result<()> {
    let m = admin.status().await?;
    println!("{} at {}, up {} s", m.broker_software, broker, m.uptime_s);
    println!("{} topics", m.topics.len());
    for t in m.topics {
        for s in t.shards {
            println!(
                "  {}/{}: offsets [{}, {})",
                t.name, s.shard, s.log_start_offset, s.high_watermark
            );
        }
    }
    let flow = admin.flow_status().await?;
    print!("{}", quota::format_flow_status(&flow));
    let queues = weir_client::queue_status(client, "", "").await?;
    queue::print_queues(&queues);
    let http = match http {
        Some(h) => h,
        None => default_http(broker)?,
    };
    match http_status(&http).await {
        Ok(s) => print!("{}", format_health(&s)),
        Err(e) => println!("health: unknown ({e:#}; give the HTTP listener with --http)"),
    }
    Ok(())
}

/// The broker's host with its port + 1 (7700 → 7701, the default listeners).
pub fn default_http(broker: &str) -> anyhow::Result<String> {
    let (host, port) = broker.rsplit_once(':').context("--broker has no port")?;
    let port: u16 = port.parse().context("--broker port")?;
    Ok(format!("{host}:{}", port.wrapping_add(1)))
}

/// `GET /status` from the HTTP listener at `addr`, within 10 s.
pub async fn http_status(addr: &str) -> anyhow::Result<Value> {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot reach {addr}"))?;
        s.write_all(
            format!("GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut out = Vec::new();
        s.take(STATUS_MAX_BYTES).read_to_end(&mut out).await?;
        let text = String::from_utf8_lossy(&out);
        let (head, body) = text.split_once("\r\n\r\n").context("not an HTTP answer")?;
        anyhow::ensure!(
            head.starts_with("HTTP/1.1 200"),
            "{addr}: {}",
            head.lines().next().unwrap_or("")
        );
        serde_json::from_str(body).context("/status is not JSON")
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .context("no answer within 10 s")?
}

/// Health, firing alerts and consumer lag, one line each.
pub fn format_health(s: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let str_of = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let _ = writeln!(out, "health: {}", str_of(&s["health"]["overall"]));
    for c in s["health"]["components"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  {:<10} {:<9} {}",
            str_of(&c["name"]),
            str_of(&c["level"]),
            str_of(&c["detail"])
        );
    }
    let alerts = s["alerts"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "alerts: {} firing", alerts.len());
    for a in &alerts {
        let _ = writeln!(
            out,
            "  [{}] {}: {}",
            str_of(&a["severity"]),
            str_of(&a["rule"]),
            str_of(&a["message"])
        );
    }
    let groups = s["groups"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "consumer lag: {} group shards", groups.len());
    for g in &groups {
        let _ = writeln!(
            out,
            "  {} {}/{}: {} records, {:.1} s (committed {}, end {})",
            str_of(&g["group"]),
            str_of(&g["topic"]),
            g["shard"],
            g["records"],
            g["seconds"].as_f64().unwrap_or(0.0),
            g["committed"],
            g["high_watermark"]
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_listener_defaults_to_the_next_port() {
        assert_eq!(default_http("127.0.0.1:7700").unwrap(), "127.0.0.1:7701");
        assert!(default_http("nohost").is_err());
    }

    #[test]
    fn health_alerts_and_lag_are_one_line_each() {
        let s = serde_json::json!({
            "health": {"overall": "degraded", "components": [
                {"name": "queues", "level": "degraded", "detail": "deepest backlog 6000 records"}]},
            "alerts": [{"severity": "warning", "rule": "dead_letter", "message": "queue g on t dead-lettered a record"}],
            "groups": [{"group": "g", "topic": "t", "shard": 0, "records": 6000, "seconds": 2.5,
                        "committed": 10, "high_watermark": 6010}]
        });
        let text = format_health(&s);
        assert!(text.starts_with("health: degraded\n"), "{text}");
        assert!(
            text.contains("[warning] dead_letter: queue g on t"),
            "{text}"
        );
        assert!(
            text.contains("g t/0: 6000 records, 2.5 s (committed 10, end 6010)"),
            "{text}"
        );
    }
}

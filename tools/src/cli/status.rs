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
    match admin.load_history("", 1, LOAD_SECONDS).await {
        Ok(h) => print!("{}", format_load(&h)),
        Err(e) => println!("load: unknown ({e})"),
    }
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

/// Seconds of load history `weir status` averages.
const LOAD_SECONDS: u32 = 10;

/// The load agents' view: the node's and each shard's rates averaged over the samples
/// given, and each ingest forecast with its interval and model.
pub fn format_load(h: &weir_client::LoadHistoryResponse) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mean = |v: &mut dyn Iterator<Item = u64>| {
        let (sum, n) = v.fold((0u64, 0u64), |(s, n), x| (s + x, n + 1));
        sum.checked_div(n).unwrap_or(0)
    };
    let f = |f: &weir_client::LoadForecast| {
        format!(
            "{} rec/s in {} s [{}, {}] ({})",
            f.records_in_per_s, f.horizon_s, f.low_per_s, f.high_per_s, f.model
        )
    };
    let n = &h.node;
    let _ = writeln!(
        out,
        "load (last {} s): in {} rec/s {} B/s, out {} rec/s {} B/s, cpu {:.1} %, rss {} MiB, produce p99 ≤ {} us; forecast {}",
        n.len(),
        mean(&mut n.iter().map(|s| s.records_in_per_s)),
        mean(&mut n.iter().map(|s| s.bytes_in_per_s)),
        mean(&mut n.iter().map(|s| s.records_out_per_s)),
        mean(&mut n.iter().map(|s| s.bytes_out_per_s)),
        mean(&mut n.iter().map(|s| u64::from(s.cpu_permille))) as f64 / 10.0,
        n.last().map_or(0, |s| s.resident_bytes >> 20),
        n.iter().map(|s| s.produce_latency_us_p99).max().unwrap_or(0),
        f(&h.node_forecast)
    );
    for s in &h.shards {
        let x = &s.samples;
        let _ = writeln!(
            out,
            "  {}/{}: in {} rec/s, out {} rec/s, queued {}; forecast {}",
            s.topic,
            s.shard,
            mean(&mut x.iter().map(|p| p.records_in_per_s)),
            mean(&mut x.iter().map(|p| p.records_out_per_s)),
            x.last()
                .map_or(0, |p| p.queued.iter().map(|&q| u64::from(q)).sum::<u64>()),
            f(&s.forecast)
        );
    }
    if !h.demands.is_empty() {
        let _ = writeln!(out, "demand (client telemetry):");
    }
    for d in &h.demands {
        let _ = writeln!(
            out,
            "  {} {}: sends {} rec/s, expects {} rec/s, load {:.0} %; forecast {}",
            d.service,
            d.message_type,
            mean(&mut d.samples.iter().map(|p| p.records_per_s)),
            d.expected_per_s,
            f64::from(d.load_permille) / 10.0,
            f(&d.forecast)
        );
    }
    out
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
    fn load_lines_average_the_samples_and_show_forecasts() {
        use weir_client::{
            DemandHistory, DemandSample, LoadForecast, LoadHistoryResponse, NodeLoadSample,
            ShardLoadHistory, ShardLoadSample,
        };
        let fc = LoadForecast {
            horizon_s: 60,
            records_in_per_s: 300,
            low_per_s: 250,
            high_per_s: 350,
            model: "holt".into(),
        };
        let node = |r| NodeLoadSample {
            records_in_per_s: r,
            cpu_permille: 250,
            resident_bytes: 64 << 20,
            ..Default::default()
        };
        let h = LoadHistoryResponse {
            resolution_s: 1,
            node_forecast: fc.clone(),
            node: vec![node(100), node(300)],
            shards: vec![ShardLoadHistory {
                topic: "t".into(),
                shard: 1,
                forecast: fc.clone(),
                samples: vec![ShardLoadSample {
                    records_in_per_s: 40,
                    queued: vec![1, 2, 0, 0],
                    ..Default::default()
                }],
            }],
            demands: vec![DemandHistory {
                service: "checkout".into(),
                message_type: "order.created".into(),
                forecast: fc.clone(),
                expected_per_s: 500,
                load_permille: 420,
                reported_at_s: 0,
                samples: vec![
                    DemandSample {
                        at_s: 0,
                        records_per_s: 100,
                    },
                    DemandSample {
                        at_s: 1,
                        records_per_s: 140,
                    },
                ],
            }],
        };
        let text = format_load(&h);
        assert!(text.contains("in 200 rec/s"), "{text}");
        assert!(
            text.contains("cpu 25.0 %") && text.contains("rss 64 MiB"),
            "{text}"
        );
        assert!(
            text.contains("checkout order.created: sends 120 rec/s, expects 500 rec/s, load 42 %"),
            "{text}"
        );
        assert!(text.contains("t/1: in 40 rec/s, out 0 rec/s, queued 3; forecast 300 rec/s in 60 s [250, 350] (holt)"), "{text}");
    }

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

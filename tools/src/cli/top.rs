//! `weir top`: a live terminal view of the broker (like `htop`): health, firing
//! alerts, and per topic the records in and out per second, per group the lag, per
//! class the produce latency. Polls the HTTP listener's `GET /status` every second and
//! computes rates from the difference of two polls.

use std::collections::HashMap;
use std::fmt::Write;
use std::time::Duration;

use serde_json::Value;

use super::status::http_status;

/// Polls and redraws every second, `iterations` times (0 = until interrupted).
pub async fn run(http: &str, iterations: u64) -> anyhow::Result<()> {
    let mut previous: Option<Value> = None;
    let mut n = 0u64;
    loop {
        let now = http_status(http).await?;
        // Clear the screen and go home, then draw.
        print!("\x1b[2J\x1b[H{}", frame(&now, previous.as_ref()));
        previous = Some(now);
        n += 1;
        if iterations != 0 && n >= iterations {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One screen from the newest status and the one before it.
pub fn frame(now: &Value, before: Option<&Value>) -> String {
    let mut out = String::new();
    let s = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    let dt = before.map_or(0.0, |b| {
        (now["at_ms"].as_i64().unwrap_or(0) - b["at_ms"].as_i64().unwrap_or(0)) as f64 / 1000.0
    });
    let rate = |a: u64, b: Option<u64>| match b {
        Some(b) if dt > 0.0 => format!("{:.0}", a.saturating_sub(b) as f64 / dt),
        _ => "-".to_string(),
    };
    let _ = writeln!(
        out,
        "weir top · {} · up {} s · load {:.1} % · {} connections · {} alerts firing",
        s(&now["health"]["overall"]),
        u(&now["uptime_seconds"]),
        u(&now["load_permille"]) as f64 / 10.0,
        u(&now["connections_open"]),
        now["alerts"].as_array().map_or(0, Vec::len)
    );
    for a in now["alerts"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  [{}] {}", s(&a["severity"]), s(&a["message"]));
    }
    let old: HashMap<String, &Value> = before
        .and_then(|b| b["topics"].as_array())
        .into_iter()
        .flatten()
        .map(|t| (s(&t["name"]), t))
        .collect();
    let _ = writeln!(
        out,
        "\n{:<32} {:>6} {:>14} {:>12} {:>12}",
        "TOPIC", "SHARDS", "RECORDS", "IN/s", "OUT/s"
    );
    for t in now["topics"].as_array().into_iter().flatten() {
        let b = old.get(&s(&t["name"]));
        let _ = writeln!(
            out,
            "{:<32} {:>6} {:>14} {:>12} {:>12}",
            s(&t["name"]),
            t["shards"].as_array().map_or(0, Vec::len),
            u(&t["records"]),
            rate(u(&t["records_in"]), b.map(|b| u(&b["records_in"]))),
            rate(u(&t["records_out"]), b.map(|b| u(&b["records_out"])))
        );
    }
    let _ = writeln!(
        out,
        "\n{:<24} {:<24} {:>5} {:>12} {:>10}",
        "GROUP", "TOPIC", "SHARD", "LAG", "LAG s"
    );
    for g in now["groups"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<24} {:<24} {:>5} {:>12} {:>10.1}",
            s(&g["group"]),
            s(&g["topic"]),
            u(&g["shard"]),
            u(&g["records"]),
            g["seconds"].as_f64().unwrap_or(0.0)
        );
    }
    let _ = writeln!(
        out,
        "\n{:<6} {:>12} {:>10} {:>10} {:>10}",
        "CLASS", "PRODUCES", "MEAN ms", "P50<= ms", "P99<= ms"
    );
    for l in now["latency"].as_array().into_iter().flatten() {
        let f = |v: &Value| v.as_f64().unwrap_or(0.0);
        let _ = writeln!(
            out,
            "{:<6} {:>12} {:>10.2} {:>10} {:>10}",
            s(&l["class"]),
            u(&l["produces"]),
            f(&l["mean_ms"]),
            f(&l["p50_ms"]),
            f(&l["p99_ms"])
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_two_polls() {
        let a = serde_json::json!({"at_ms": 1000, "topics": [{"name": "t", "records_in": 10, "records_out": 0, "records": 10, "shards": [{}]}]});
        let b = serde_json::json!({"at_ms": 3000, "topics": [{"name": "t", "records_in": 110, "records_out": 50, "records": 110, "shards": [{}]}]});
        let first = frame(&a, None);
        assert!(first.contains("t ") && first.contains(" -"), "{first}");
        let f = frame(&b, Some(&a));
        let line = f.lines().find(|l| l.starts_with("t ")).unwrap();
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols, ["t", "1", "110", "50", "25"], "{f}");
    }
}

//! Observability against a real broker process: `/metrics` parsed with a Prometheus
//! text-format parser holds every series METRICS.md documents, with its type and
//! labels (and nothing undocumented); alerts fire and resolve under induced
//! conditions (a dead-lettered record, a stopped consumer, a P3 flood that is shed),
//! each transition logged once and POSTed to a webhook.
//!
//! Alert windows are shortened through `WEIR_ALERT_*` so the file runs in seconds.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_client::{
    Acks, Admin, Client, Consumer, ConsumerConfig, NackOutcome, OffsetReset, Producer,
    ProducerRecord, QueueConfig, QueueConsumer,
};
use weir_tests::{
    cli_binary, connect, http_get, metric, proc_status, workspace_root, BrokerProcess,
};

/// The body of an HTTP answer.
fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

async fn json(broker: &BrokerProcess, path: &str) -> Value {
    let a = http_get(broker.http_addr(), path).await;
    serde_json::from_str(body(&a)).unwrap_or_else(|e| panic!("{path}: {e}: {a}"))
}

/// Polls `/alerts` until `pred` holds (at most 30 s).
async fn wait_alerts(broker: &BrokerProcess, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = json(broker, "/alerts").await;
        if pred(&a) {
            return a;
        }
        assert!(Instant::now() < deadline, "{what} never happened: {a}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn firing(a: &Value, id: &str) -> bool {
    a["firing"]
        .as_array()
        .expect("firing")
        .iter()
        .any(|x| x["id"] == id)
}

fn resolved(a: &Value, id: &str) -> bool {
    !firing(a, id)
        && a["recent"]
            .as_array()
            .expect("recent")
            .iter()
            .any(|x| x["id"] == id && x["state"] == "resolved")
}

async fn produce(client: &Client, topic: &str, n: usize, priority: u8) {
    let p = Producer::builder(client)
        .acks(Acks::Durable)
        .linger(Duration::from_millis(1))
        .build()
        .await
        .expect("producer");
    for i in 0..n {
        p.send_and_wait(ProducerRecord::new(topic, format!("r{i}")).priority(priority))
            .await
            .expect("produce");
    }
}

/// Consumes `n` records of `topic` as `group` from the start and commits them.
async fn consume_and_commit(client: &Client, group: &str, topic: &str, n: usize) {
    let mut c = Consumer::builder(client)
        .config(ConsumerConfig {
            reset: OffsetReset::Earliest,
            auto_commit: false,
            fetch_max_wait: Duration::from_millis(100),
            ..Default::default()
        })
        .group(group)
        .topic(topic)
        .build()
        .expect("consumer");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = 0;
    while got < n {
        assert!(Instant::now() < deadline, "consumed only {got} of {n}");
        got += c
            .poll(n - got, Duration::from_millis(200))
            .await
            .expect("poll")
            .len();
    }
    c.commit().await.expect("commit");
    c.close().await.expect("close");
}

/// Takes one record of `topic` as queue `group` and dead-letters it.
async fn dead_letter_one(client: &Client, group: &str, topic: &str) {
    let q = QueueConsumer::with_config(
        client,
        group,
        topic,
        QueueConfig {
            consumer: "it".into(),
            lease: Duration::from_secs(30),
            max_wait: Duration::from_millis(100),
        },
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        assert!(Instant::now() < deadline, "no record to dead-letter");
        if let Some(m) = q.fetch(1).await.expect("queue fetch").pop() {
            break m;
        }
    };
    assert_eq!(
        q.nack(&m, false, "poison").await.expect("nack"),
        NackOutcome::DeadLettered
    );
}

/// A documented series: type and label names, and whether it always has samples.
#[derive(Debug)]
struct Documented {
    kind: String,
    labels: BTreeSet<String>,
    always: bool,
}

/// The series table of METRICS.md.
fn documented() -> BTreeMap<String, Documented> {
    let text = std::fs::read_to_string(workspace_root().join("METRICS.md")).expect("METRICS.md");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `name` | type | labels | unit | when | meaning |
        if cells.len() < 7 || !cells[1].starts_with("`weir_") {
            continue;
        }
        let name = cells[1].trim_matches('`').to_string();
        let labels = cells[3]
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        out.insert(
            name,
            Documented {
                kind: cells[2].to_string(),
                labels,
                always: cells[5] == "always",
            },
        );
    }
    out
}

#[test]
fn the_prometheus_rules_file_uses_only_documented_series() {
    let rules = std::fs::read_to_string(workspace_root().join("docs/alerts/weir-rules.yml"))
        .expect("docs/alerts/weir-rules.yml");
    let docs = documented();
    let mut used = BTreeSet::new();
    for (i, _) in rules.match_indices("weir_") {
        let name: String = rules[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        used.insert(name);
    }
    assert!(used.len() > 10, "{used:?}");
    for name in &used {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| docs.contains_key(*b)))
            .unwrap_or(name);
        assert!(docs.contains_key(base), "{name} is not in METRICS.md");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_hold_every_documented_series_with_its_type_and_labels() {
    let broker = BrokerProcess::start();
    let client = connect(&broker.addr(), Duration::from_secs(5)).await;
    let admin = Admin::new(client.clone());
    admin
        .create_topic("orders", 2, Default::default())
        .await
        .expect("create");
    // Something for every labelled family: records in and out, a group's commit (lag),
    // a queue with a dead letter (breaker state, DLQ count), a durable flush.
    produce(&client, "orders", 20, 5).await;
    consume_and_commit(&client, "billing", "orders", 10).await;
    dead_letter_one(&client, "workers", "orders").await;

    let answer = http_get(broker.http_addr(), "/metrics").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{answer}"
    );
    let scrape = prometheus_parse::Scrape::parse(body(&answer).lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text format");
    // name -> (type, label names) as scraped; histograms under their base name.
    let mut seen: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    let histograms: BTreeSet<String> = scrape
        .samples
        .iter()
        .filter(|s| matches!(s.value, prometheus_parse::Value::Histogram(_)))
        .map(|s| s.metric.clone())
        .collect();
    for s in &scrape.samples {
        // A histogram's `_sum` and `_count` lines belong to it.
        let part_of_histogram = ["_sum", "_count"].iter().any(|suffix| {
            s.metric
                .strip_suffix(suffix)
                .is_some_and(|base| histograms.contains(base))
        });
        if part_of_histogram {
            continue;
        }
        let kind = match s.value {
            prometheus_parse::Value::Counter(_) => "counter",
            prometheus_parse::Value::Gauge(_) => "gauge",
            prometheus_parse::Value::Histogram(_) => "histogram",
            prometheus_parse::Value::Summary(_) => "summary",
            prometheus_parse::Value::Untyped(_) => "untyped",
        };
        let labels: BTreeSet<String> = s.labels.keys().cloned().collect();
        let prev = seen
            .entry(s.metric.clone())
            .or_insert_with(|| (kind.to_string(), labels.clone()));
        assert_eq!(
            prev,
            &(kind.to_string(), labels),
            "{} is consistent",
            s.metric
        );
    }
    let docs = documented();
    assert!(docs.len() >= 50, "METRICS.md lists {} series", docs.len());
    for (name, d) in &docs {
        match seen.get(name) {
            Some((kind, labels)) => {
                assert_eq!(kind, &d.kind, "{name}: type");
                assert_eq!(labels, &d.labels, "{name}: labels");
            }
            None => assert!(
                !d.always,
                "{name} is documented as always present but missing"
            ),
        }
    }
    for name in seen.keys() {
        assert!(
            docs.contains_key(name),
            "{name} is served but not in METRICS.md"
        );
    }

    // A few values that must follow from what the test did.
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => *v,
                prometheus_parse::Value::Histogram(b) => {
                    b.iter().map(|c| c.count).fold(0.0, f64::max)
                }
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("{name} {labels:?} not scraped"))
    };
    assert_eq!(
        value("weir_topic_in_records_total", &[("topic", "orders")]),
        20.0
    );
    assert!(value("weir_topic_out_records_total", &[("topic", "orders")]) >= 10.0);
    // Priority 5 is P1; every produce was acks=durable (the +Inf bucket is the count).
    assert_eq!(
        value(
            "weir_produce_latency_seconds",
            &[("class", "p1"), ("acks", "durable")]
        ),
        20.0
    );
    assert!(value("weir_delivery_age_seconds", &[("class", "p1")]) >= 1.0);
    assert!(value("weir_flush_latency_seconds", &[]) >= 1.0);
    let lag: f64 = scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == "weir_consumer_lag_records" && s.labels.get("group") == Some("billing")
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(lag, 10.0, "20 records, 10 committed");
    assert_eq!(
        value(
            "weir_dlq_records_total",
            &[("group", "workers"), ("topic", "orders")]
        ),
        1.0
    );
    assert!(value("weir_process_resident_memory_bytes", &[]) > 0.0);
    assert!(value("weir_disk_total_bytes", &[]) > 0.0);

    // `weir status` shows health, alerts and the group's lag from the same broker.
    let out = tokio::task::spawn_blocking({
        let (addr, http) = (broker.addr(), broker.http_addr().to_string());
        move || {
            Command::new(cli_binary())
                .args(["--broker", &addr, "status", "--http", &http])
                .env_remove("WEIR_BROKER")
                .env_remove("WEIR_HTTP")
                .stdin(Stdio::null())
                .output()
                .expect("run weir status")
        }
    })
    .await
    .expect("weir status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("\nhealth: "), "{text}");
    assert!(text.contains("\nalerts: "), "{text}");
    assert!(text.contains("consumer lag: 2 group shards"), "{text}");
    assert!(text.contains("billing orders/0: "), "{text}");
    // `weir top` draws two screens from the same api and stops.
    let out = tokio::task::spawn_blocking({
        let (addr, http) = (broker.addr(), broker.http_addr().to_string());
        move || {
            Command::new(cli_binary())
                .args([
                    "--broker",
                    &addr,
                    "top",
                    "--iterations",
                    "2",
                    "--http",
                    &http,
                ])
                .env_remove("WEIR_BROKER")
                .env_remove("WEIR_HTTP")
                .stdin(Stdio::null())
                .output()
                .expect("run weir top")
        }
    })
    .await
    .expect("weir top");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("weir top · ").count(), 2, "{text}");
    assert!(text.contains("\norders "), "{text}");
    assert!(text.contains("\nbilling "), "{text}");
}

/// A webhook receiver: collects the bodies POSTed to it.
async fn webhook() -> (String, Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", l.local_addr().expect("addr"));
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let g = g.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Head, then Content-Length bytes of body (bounded: 64 KiB).
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 || buf.len() > 65536 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            g.lock().unwrap().push(body.to_string());
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                                .await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, got, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_and_lag_alerts_fire_and_resolve_once_each_and_reach_the_webhook() {
    let (url, posted, hook) = webhook().await;
    let broker = BrokerProcess::start_with_env(&[
        ("WEIR_ALERT_DEAD_LETTER_HOLD_MS", "2000"),
        ("WEIR_ALERT_LAG_GROWING_MS", "2000"),
        ("WEIR_ALERT_WEBHOOK_URL", &url),
    ]);
    let client = connect(&broker.addr(), Duration::from_secs(5)).await;
    let admin = Admin::new(client.clone());
    for t in ["jobs", "events"] {
        admin
            .create_topic(t, 1, Default::default())
            .await
            .expect("create");
    }

    // A dead-lettered record fires `dead_letter`; it resolves after the hold.
    produce(&client, "jobs", 1, 5).await;
    dead_letter_one(&client, "workers", "jobs").await;
    let id = "dead_letter:workers/jobs";
    let a = wait_alerts(&broker, "the dead-letter alert", |a| firing(a, id)).await;
    let alert = a["firing"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == id)
        .unwrap()
        .clone();
    assert_eq!(alert["rule"], "dead_letter");
    assert!(
        alert["message"].as_str().unwrap().contains("jobs.dlq"),
        "{alert}"
    );
    wait_alerts(&broker, "the dead-letter alert resolving", |a| {
        resolved(a, id)
    })
    .await;

    // A consumer that stopped while records keep coming: `consumer_lag_growing`.
    produce(&client, "events", 5, 5).await;
    consume_and_commit(&client, "reader", "events", 5).await;
    let lag_id = "consumer_lag_growing:reader/events/0";
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut produced = 5;
    loop {
        produce(&client, "events", 1, 5).await;
        produced += 1;
        if firing(&json(&broker, "/alerts").await, lag_id) {
            break;
        }
        assert!(Instant::now() < deadline, "lag alert never fired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The consumer comes back and catches up: the alert resolves.
    consume_and_commit(&client, "reader", "events", produced - 5).await;
    wait_alerts(&broker, "the lag alert resolving", |a| resolved(a, lag_id)).await;

    // Each transition logged once.
    let log = broker.log();
    for (what, n) in [
        ("alert firing: queue workers on jobs", 1),
        ("alert resolved: queue workers on jobs", 1),
    ] {
        assert_eq!(log.matches(what).count(), n, "{what} in\n{log}");
    }
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("alert firing") && l.contains(lag_id))
            .count(),
        1,
        "{log}"
    );
    // And POSTed to the webhook.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let bodies = posted.lock().unwrap().clone();
        let states: Vec<(String, String)> = bodies
            .iter()
            .filter_map(|b| serde_json::from_str::<Value>(b).ok())
            .map(|v| {
                (
                    v["id"].as_str().unwrap_or("").to_string(),
                    v["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let has = |id: &str, st: &str| states.iter().any(|(i, s)| i == id && s == st);
        if has(id, "firing")
            && has(id, "resolved")
            && has(lag_id, "firing")
            && has(lag_id, "resolved")
        {
            break;
        }
        assert!(Instant::now() < deadline, "webhook got {states:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = http_get(broker.http_addr(), "/metrics").await;
    assert!(
        m.contains("weir_alerts_fired_total{rule=\"dead_letter\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("weir_alerts_fired_total{rule=\"consumer_lag_growing\"} 1"),
        "{m}"
    );
    hook.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p3_flood_that_is_shed_fires_the_shedding_alert_which_resolves_after() {
    // Any produce latency above 10 µs is over 1 % load: a P3 flood is shed at once.
    // Every append goes through the shard's writer thread, whose hand-off alone takes
    // longer than that (one written in place by the connection may not).
    let broker = BrokerProcess::start_with_env(&[
        ("WEIR_IN_PLACE_APPEND_BYTES", "0"),
        ("WEIR_FLOW_LOAD_LATENCY_TARGET_MS", "1"),
        ("WEIR_SHED_THRESHOLDS_PERCENT", "1,1,1"),
        ("WEIR_SHED_COOLDOWN_MS", "300"),
        ("WEIR_SHED_RECOVERY_MS", "300"),
    ]);
    let client = connect(&broker.addr(), Duration::from_secs(5)).await;
    Admin::new(client.clone())
        .create_topic("flood", 1, Default::default())
        .await
        .expect("create");
    let p = Producer::builder(&client)
        .acks(Acks::Leader)
        .retries(0)
        .linger(Duration::from_millis(0))
        .build()
        .await
        .expect("producer");
    let id = "shedding:p3";
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0u64;
    loop {
        // Refusals (SHED) are the point; their errors are expected.
        for _ in 0..50 {
            let _ = p
                .send_and_wait(ProducerRecord::new("flood", format!("f{i}")).priority(10))
                .await;
            i += 1;
        }
        if firing(&json(&broker, "/alerts").await, id) {
            break;
        }
        assert!(Instant::now() < deadline, "shedding alert never fired");
    }
    // The flood stops; the load falls and shedding ends.
    wait_alerts(&broker, "the shedding alert resolving", |a| resolved(a, id)).await;
    let status = json(&broker, "/status").await;
    let p3 = status["shedding"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["class"] == "p3")
        .unwrap()
        .clone();
    assert!(p3["shed_total"].as_u64().unwrap() > 0, "{p3}");
    let m = http_get(broker.http_addr(), "/metrics").await;
    let shed: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("weir_shed_records_total{class=\"p3\"} "))
        .and_then(|v| v.parse().ok())
        .expect("weir_shed_records_total");
    assert!(shed > 0, "{m}");
    let log = broker.log();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("alert firing") && l.contains(id))
            .count(),
        1,
        "{log}"
    );
}

/// `weir-broker` turns transparent huge pages off for itself unless
/// `transparent_huge_pages = true`, which also clears the flag the broker inherits
/// from the process that started it (here this test's, set first), and `/metrics`
/// says which; the kernel's own `THP_enabled` line of `/proc/PID/status` (Linux 5.0
/// on) is the witness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_turns_transparent_huge_pages_off_unless_allowed() {
    weir_broker::huge_pages::disable_for_process().expect("PR_SET_THP_DISABLE");
    for (env, allowed) in [
        (&[][..], 0),
        (&[("WEIR_TRANSPARENT_HUGE_PAGES", "true")][..], 1),
    ] {
        let broker = BrokerProcess::start_with_env(env);
        let pid = broker.pid().expect("broker pid");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        if status.contains("THP_enabled:") {
            assert_eq!(proc_status(pid, "THP_enabled:"), allowed, "{env:?}");
        }
        assert_eq!(
            metric(&broker, "weir_process_transparent_huge_pages").await,
            allowed,
            "{env:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_the_http_limits() {
    let broker = BrokerProcess::start();
    let h = http_get(broker.http_addr(), "/health").await;
    assert!(h.starts_with("HTTP/1.1 200") && body(&h) == "ok\n", "{h}");
    let r = http_get(broker.http_addr(), "/ready").await;
    assert!(r.starts_with("HTTP/1.1 200") && body(&r) == "ok\n", "{r}");
    let nf = http_get(broker.http_addr(), "/nope").await;
    assert!(nf.starts_with("HTTP/1.1 404"), "{nf}");
    // The status document names every health component; the first check may not
    // have run yet, but the components are listed once it has.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = json(&broker, "/status").await;
        let names: Vec<&str> = s["health"]["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        if !names.is_empty() {
            assert_eq!(
                names,
                ["queues", "latency", "errors", "resources", "storage"]
            );
            break;
        }
        assert!(Instant::now() < deadline, "no health check ran: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A request head over 8 KiB is refused, and the listener keeps serving.
    let mut s = tokio::net::TcpStream::connect(broker.http_addr())
        .await
        .expect("connect");
    let head = format!(
        "GET /health HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let _ = s.write_all(head.as_bytes()).await;
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await;
    // 431, or (when the unread rest of the head makes the kernel reset the connection
    // before the answer is read) nothing: never an answer to the request.
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 431"), "{out}");
    let h = http_get(broker.http_addr(), "/health").await;
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_span_and_slow_requests_are_logged_and_counted() {
    let broker = BrokerProcess::start_with_env(&[
        ("WEIR_LOG_FORMAT", "json"),
        ("WEIR_LOG", "info,weir_broker::observe::requests=debug"),
        // A long-poll fetch that waits 300 ms is slow at 100 ms.
        ("WEIR_SLOW_REQUEST_MS", "100"),
    ]);
    let client = connect(&broker.addr(), Duration::from_secs(5)).await;
    Admin::new(client.clone())
        .create_topic("quiet", 1, Default::default())
        .await
        .expect("create");
    let mut c = Consumer::builder(&client)
        .config(ConsumerConfig {
            reset: OffsetReset::Earliest,
            fetch_max_wait: Duration::from_millis(300),
            ..Default::default()
        })
        .topic("quiet")
        .build()
        .expect("consumer");
    // Nothing to read: each poll's fetch waits out its 300 ms.
    let _ = c.poll(1, Duration::from_millis(700)).await.expect("poll");
    let deadline = Instant::now() + Duration::from_secs(10);
    let slow = loop {
        let log = broker.log();
        let lines: Vec<Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        let slow: Vec<Value> = lines
            .iter()
            .filter(|v| {
                v["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("slow request"))
            })
            .cloned()
            .collect();
        let done = lines.iter().any(|v| {
            v["fields"]["message"] == "request done"
                && v["span"]["api"] == "CreateTopic"
                && v["span"]["correlation_id"].is_u64()
                && v["span"]["client_id"].is_string()
                && v["fields"]["duration_us"].is_u64()
        });
        if !slow.is_empty() && done {
            break slow;
        }
        assert!(
            Instant::now() < deadline,
            "no slow request or span in:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let s = &slow[0]["fields"];
    assert_eq!(s["api"], "Fetch", "{s}");
    assert!(s["duration_ms"].as_u64().unwrap() >= 100, "{s}");
    assert!(
        s["correlation_id"].is_u64() && s["client_id"].is_string(),
        "{s}"
    );
    assert_eq!(slow[0]["level"], "WARN");
    let m = http_get(broker.http_addr(), "/metrics").await;
    let n: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("weir_slow_requests_total "))
        .and_then(|v| v.parse().ok())
        .expect("weir_slow_requests_total");
    assert!(n >= 1, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_requests_turn_the_errors_component_critical_and_it_recovers() {
    // Any failed request in a 1 s window is critical.
    let broker = BrokerProcess::start_with_env(&[
        ("WEIR_HEALTH_ERROR_RATE_PERMILLE", "0,0"),
        ("WEIR_HEALTH_ERROR_WINDOW_MS", "1000"),
    ]);
    let client = connect(&broker.addr(), Duration::from_secs(5)).await;
    let errors_level = |s: &Value| {
        s["health"]["components"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "errors")
            .map(|c| c["level"].as_str().unwrap_or("").to_string())
    };
    let admin = Admin::new(client.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // UNKNOWN_TOPIC: an error response.
        assert!(admin.delete_topic("missing").await.is_err());
        let s = json(&broker, "/status").await;
        if errors_level(&s).as_deref() == Some("critical") {
            assert_eq!(s["health"]["overall"], "critical", "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "errors never went critical: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_alerts(&broker, "the errors alert", |a| firing(a, "health_errors")).await;
    let m = http_get(broker.http_addr(), "/metrics").await;
    assert!(
        m.contains("weir_health_state{component=\"errors\"} 2"),
        "{m}"
    );
    // No more failures: the window empties and the alert resolves.
    wait_alerts(&broker, "the errors alert resolving", |a| {
        resolved(a, "health_errors")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p0_latency_over_its_target_and_a_full_disk_fire_their_alerts() {
    // A 0 ms target: any P0 produce is over it. 100 % free wanted: any disk is short.
    let broker = BrokerProcess::start_with_env(&[
        ("WEIR_ALERT_P0_LATENCY_MS", "0"),
        ("WEIR_ALERT_DISK_FREE_PERCENT", "100"),
    ]);
    let client = connect(&broker.addr(), Duration::from_secs(5)).await;
    Admin::new(client.clone())
        .create_topic("urgent", 1, Default::default())
        .await
        .expect("create");
    wait_alerts(&broker, "the disk alert", |a| firing(a, "disk_free_low")).await;
    // Priority 1 is P0.
    produce(&client, "urgent", 3, 1).await;
    let a = wait_alerts(&broker, "the P0 latency alert", |a| firing(a, "p0_latency")).await;
    let p0 = a["firing"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "p0_latency")
        .unwrap()
        .clone();
    assert_eq!(p0["severity"], "critical", "{p0}");
    // No P0 produce for the 10 s window: it resolves.
    wait_alerts(&broker, "the P0 latency alert resolving", |a| {
        resolved(a, "p0_latency")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opened_breaker_fires_its_alert_until_it_half_opens() {
    let broker = BrokerProcess::start_with_env(&[
        ("WEIR_RETRY_MAX_ATTEMPTS", "50,50,50,50"),
        ("WEIR_RETRY_BACKOFF", "fixed,fixed,fixed,fixed"),
        ("WEIR_RETRY_BASE_DELAY_MS", "10,10,10,10"),
        ("WEIR_RETRY_MAX_DELAY_MS", "10,10,10,10"),
        ("WEIR_QUEUE_BREAKER_MIN_SAMPLES", "5"),
        ("WEIR_QUEUE_BREAKER_OPEN_FOR_MS", "3000"),
    ]);
    let client = connect(&broker.addr(), Duration::from_secs(5)).await;
    Admin::new(client.clone())
        .create_topic("fragile", 1, Default::default())
        .await
        .expect("create");
    produce(&client, "fragile", 20, 5).await;
    let q = QueueConsumer::with_config(
        &client,
        "ops",
        "fragile",
        QueueConfig {
            consumer: "it".into(),
            lease: Duration::from_secs(30),
            max_wait: Duration::from_millis(100),
        },
    );
    let id = "breaker_open:ops/fragile";
    // Everything fails until the breaker opens (it then leases nothing).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for m in q.fetch(4).await.expect("fetch") {
            q.nack(&m, true, "downstream down").await.expect("nack");
        }
        if firing(&json(&broker, "/alerts").await, id) {
            break;
        }
        assert!(Instant::now() < deadline, "breaker alert never fired");
    }
    let m = http_get(broker.http_addr(), "/metrics").await;
    assert!(
        m.contains("weir_alerts_firing{rule=\"breaker_open\"} 1"),
        "{m}"
    );
    // After its open time the breaker half-opens: the alert resolves.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for m in q.fetch(1).await.expect("fetch") {
            q.ack(&m).await.expect("ack");
        }
        if resolved(&json(&broker, "/alerts").await, id) {
            break;
        }
        assert!(Instant::now() < deadline, "breaker alert never resolved");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

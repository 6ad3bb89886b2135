//! Queue mode against a real broker process: retries with the configured backoff and
//! attempts, dead-lettering with its headers, replay from the dead-letter topic, SIGKILL
//! during a retry storm (nothing lost, nothing twice in the dead-letter topic), and the
//! circuit breaker opening, half-opening and closing without losing a record.
//!
//! Retry delays are shortened through `WEIR_RETRY_*` so the whole file runs in seconds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_client::{
    Acks, Admin, Client, NackOutcome, Producer, ProducerRecord, QueueConfig, QueueConsumer,
    QueueMessage,
};
use weir_protocol::messages::{BREAKER_CLOSED, BREAKER_HALF_OPEN, BREAKER_OPEN};
use weir_protocol::ErrorCode;
use weir_tests::over_both_transports;
use weir_tests::transport::SdkBroker;
use weir_tests::{cli_binary, connect, http_get, read_all, BrokerProcess};

fn header<'a>(m: &'a weir_client::Message, name: &str) -> Option<&'a str> {
    m.headers
        .iter()
        .find(|h| h.name == name)
        .and_then(|h| std::str::from_utf8(&h.value).ok())
}

/// Runs `weir --broker ADDR ARGS...` (bounded by 30 s) and returns stdout; panics on
/// failure.
/// Runs the `weir` CLI (another process, over TCP) against the broker at `addr`.
async fn weir(addr: String, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(cli_binary())
            .arg("--broker")
            .arg(&addr)
            .args(&args)
            .env_remove("WEIR_BROKER")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weir");
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("weir {args:?} did not exit within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("output");
        assert!(
            out.status.success(),
            "weir {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    })
    .await
    .expect("cli task")
}

async fn produce(client: &Client, topic: &str, records: Vec<ProducerRecord>) {
    let producer = Producer::builder(client)
        .acks(Acks::Durable)
        .linger(Duration::from_millis(1))
        .build()
        .await
        .expect("producer");
    let mut pending = Vec::new();
    for r in records {
        assert_eq!(&*r.topic, topic);
        pending.push(producer.send(r).await.expect("send"));
    }
    producer.flush().await.expect("flush");
    for p in pending {
        p.await.expect("ack");
    }
}

fn consumer(client: &Client, group: &str, topic: &str, lease_ms: u64) -> QueueConsumer {
    QueueConsumer::with_config(
        client,
        group,
        topic,
        QueueConfig {
            consumer: "it".into(),
            lease: Duration::from_millis(lease_ms),
            max_wait: Duration::from_millis(100),
        },
    )
}

/// Retry settings per class P0..P3 used by the first test: P0 exponential 100 ms × 4
/// attempts, P1 linear 200 ms × 3 attempts, no jitter.
const RETRY_ENV: [(&str, &str); 6] = [
    ("WEIR_RETRY_MAX_ATTEMPTS", "4,3,2,2"),
    ("WEIR_RETRY_BACKOFF", "exponential,linear,fixed,fixed"),
    ("WEIR_RETRY_BASE_DELAY_MS", "100,200,150,150"),
    ("WEIR_RETRY_MAX_DELAY_MS", "1000,1000,150,150"),
    ("WEIR_RETRY_JITTER_PCT", "0,0,0,0"),
    ("WEIR_QUEUE_BREAKER_ENABLED", "false"),
];

over_both_transports! {
    async fn failing_records_reach_the_dlq_after_their_attempts_with_backoff_and_headers_and_replay_brings_them_back(t) {
        let broker = SdkBroker::start_with_env(t, &RETRY_ENV).await;
        let client = broker.client().await;
        Admin::new(client.clone())
            .create_topic("jobs", 1, Default::default())
            .await
            .expect("create");
        produce(
            &client,
            "jobs",
            vec![
                ProducerRecord::new("jobs", "urgent")
                    .priority(1)
                    .key("k0")
                    .header("trace", "t-urgent"),
                ProducerRecord::new("jobs", "normal")
                    .priority(4)
                    .header("trace", "t-normal"),
            ],
        )
        .await;
        let q = consumer(&client, "workers", "jobs", 5000);
        // value → [(attempt, time leased)]
        let mut seen: BTreeMap<String, Vec<(u32, Instant)>> = BTreeMap::new();
        let mut dead = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        while dead.len() < 2 {
            assert!(
                Instant::now() < deadline,
                "not dead-lettered in time: {seen:?}"
            );
            for m in q.fetch(10).await.expect("fetch") {
                let v = String::from_utf8(m.value.to_vec()).unwrap();
                seen.entry(v.clone())
                    .or_default()
                    .push((m.attempt, Instant::now()));
                let outcome = q
                    .nack(&m, true, format!("boom-{}", m.attempt))
                    .await
                    .expect("nack");
                if m.is_last_attempt() {
                    assert_eq!(outcome, NackOutcome::DeadLettered, "{v}");
                    dead.insert(v);
                } else {
                    assert!(matches!(outcome, NackOutcome::RetryIn(_)), "{v}");
                }
            }
        }
        // Exactly the configured attempts, in order, with the configured delays.
        let expect: [(&str, &[u64]); 2] = [("urgent", &[100, 200, 400]), ("normal", &[200, 400])];
        for (v, delays) in expect {
            let s = &seen[v];
            let attempts: Vec<u32> = s.iter().map(|(a, _)| *a).collect();
            assert_eq!(
                attempts,
                (1..=delays.len() as u32 + 1).collect::<Vec<_>>(),
                "{v}"
            );
            for (i, d) in delays.iter().enumerate() {
                let gap = s[i + 1].1.duration_since(s[i].1).as_millis() as u64;
                // The client polls with 100 ms long-polls, so a redelivery is seen at most
                // a poll round-trip late; never early.
                assert!(
                    gap + 15 >= *d && gap <= d + 400,
                    "{v}: gap {i} was {gap} ms, configured {d} ms"
                );
            }
        }

        // The dead-letter topic holds each record once, with its headers. The two records
        // are of different classes, so either may have been stored first: look up where.
        let source = read_all(&client, "jobs", 2, Duration::from_secs(5)).await;
        let offset_of = |v: &str| {
            source
                .iter()
                .find(|m| m.value == v.as_bytes())
                .map(|m| m.offset.to_string())
                .expect("source record")
        };
        let dlq = read_all(&client, "jobs.dlq", 2, Duration::from_secs(5)).await;
        assert_eq!(dlq.len(), 2, "{dlq:?}");
        for m in &dlq {
            let v = String::from_utf8(m.value.to_vec()).unwrap();
            let offset = offset_of(&v);
            let offset = offset.as_str();
            let attempts = if v == "urgent" { "4" } else { "3" };
            assert_eq!(header(m, "weir.dlq.source_topic"), Some("jobs"));
            assert_eq!(header(m, "weir.dlq.source_shard"), Some("0"));
            assert_eq!(header(m, "weir.dlq.source_offset"), Some(offset));
            assert_eq!(header(m, "weir.dlq.attempts"), Some(attempts));
            assert_eq!(header(m, "weir.dlq.group"), Some("workers"));
            assert_eq!(
                header(m, "weir.dlq.error"),
                Some(format!("boom-{attempts}").as_str())
            );
            assert_eq!(header(m, "trace"), Some(format!("t-{v}").as_str()));
            let first: i64 = header(m, "weir.dlq.first_failure_ms")
                .unwrap()
                .parse()
                .unwrap();
            let last: i64 = header(m, "weir.dlq.last_failure_ms")
                .unwrap()
                .parse()
                .unwrap();
            let total: i64 = if v == "urgent" { 700 } else { 600 };
            assert!(last - first >= total - 20, "{v}: {first}..{last}");
            if v == "urgent" {
                assert_eq!(m.key.as_ref(), b"k0");
                assert_eq!(m.priority, 1);
            }
        }

        // The tools see them; replay sends them back to the source topic once.
        let listed = weir(broker.addr(), &["dlq", "list", "jobs"]).await;
        assert!(
            listed.contains("boom-4") && listed.contains("boom-3"),
            "{listed}"
        );
        let shown = weir(broker.addr(), &["dlq", "show", "jobs", "--count", "1"]).await;
        let first: serde_json::Value = serde_json::from_str(shown.lines().next().unwrap()).unwrap();
        assert_eq!(first["headers"]["weir.dlq.source_topic"], "jobs", "{shown}");
        assert_eq!(shown.lines().count(), 1);
        // A filtered replay to another topic sends only what matches, and does not move
        // the remembered position.
        Admin::new(client.clone())
            .create_topic("jobs-retry", 1, Default::default())
            .await
            .expect("create");
        let filtered = weir(
            broker.addr(),
            &[
                "dlq",
                "replay",
                "jobs",
                "--to",
                "jobs-retry",
                "--filter",
                "error=boom-4",
            ],
        )
        .await;
        assert!(filtered.contains("replayed 1 of 2"), "{filtered}");
        let retry = read_all(&client, "jobs-retry", 1, Duration::from_secs(5)).await;
        assert_eq!(retry.len(), 1);
        assert_eq!(retry[0].value.as_ref(), b"urgent");
        assert!(header(&retry[0], "weir.replayed_from").is_some_and(|v| v.starts_with("jobs.dlq/0/")));
        let replayed = weir(broker.addr(), &["dlq", "replay", "jobs"]).await;
        assert!(replayed.contains("replayed 2"), "{replayed}");
        let again = weir(broker.addr(), &["dlq", "replay", "jobs"]).await;
        assert!(again.contains("replayed 0"), "{again}");
        let mut back = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while back.len() < 2 && Instant::now() < deadline {
            for m in q.fetch(10).await.expect("fetch") {
                assert_eq!(m.attempt, 1, "a replayed record starts over");
                assert!(m.offset >= 2, "replayed records are new records");
                assert!(m.headers.iter().all(|h| !h.name.starts_with("weir.dlq.")));
                q.ack(&m).await.expect("ack");
                back.push(String::from_utf8(m.value.to_vec()).unwrap());
            }
        }
        back.sort();
        assert_eq!(back, ["normal", "urgent"]);
        let st = q.status().await.expect("status");
        assert_eq!(st.shards[0].ack_floor, 4, "{st:?}");
        assert_eq!((st.dead_lettered, st.acked, st.nacked), (2, 2, 7), "{st:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_survive_a_restart_and_stale_leases_are_refused() {
    let mut broker = BrokerProcess::start_with_env(&RETRY_ENV);
    let client = connect(&broker.addr(), Duration::from_secs(5)).await;
    Admin::new(client.clone())
        .create_topic("tasks", 2, Default::default())
        .await
        .expect("create");
    let records = (0..40)
        .map(|i| ProducerRecord::new("tasks", format!("t{i}")).key(format!("k{i}")))
        .collect();
    produce(&client, "tasks", records).await;
    let q = consumer(&client, "g", "tasks", 300);
    let mut acked = BTreeSet::new();
    let mut held: Vec<QueueMessage> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while acked.len() + held.len() < 40 {
        assert!(Instant::now() < deadline);
        for m in q.fetch(40).await.expect("fetch") {
            if m.offset % 2 == 0 {
                q.ack(&m).await.expect("ack");
                acked.insert(String::from_utf8(m.value.to_vec()).unwrap());
            } else {
                held.push(m);
            }
        }
    }
    // Extending keeps a lease; letting one run out makes its ack stale.
    q.extend(&held[0], Duration::from_secs(10))
        .await
        .expect("extend");
    tokio::time::sleep(Duration::from_millis(500)).await;
    q.ack(&held[0])
        .await
        .expect("extended lease is still current");
    acked.insert(String::from_utf8(held[0].value.to_vec()).unwrap());
    let err = q.ack(&held[1]).await.expect_err("expired lease");
    assert_eq!(err.code(), Some(ErrorCode::UnknownLease));

    broker.kill9();
    broker.restart();
    let client = connect(&broker.addr(), Duration::from_secs(10)).await;
    let q = consumer(&client, "g", "tasks", 5000);
    let mut again = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while again.len() + acked.len() < 40 {
        assert!(Instant::now() < deadline, "{} redelivered", again.len());
        for m in q.fetch(40).await.expect("fetch") {
            let v = String::from_utf8(m.value.to_vec()).unwrap();
            assert!(
                !acked.contains(&v),
                "{v} was acked before the crash yet came back"
            );
            assert!(again.insert(v.clone()), "{v} delivered twice after restart");
            q.ack(&m).await.expect("ack");
        }
    }
    let st = q.status().await.expect("status");
    for s in &st.shards {
        assert_eq!(s.ack_floor, s.high_watermark, "{st:?}");
    }
}

/// One queue worker of the storm test: poison records (value `p…`) always fail,
/// flaky ones (`f…`) fail on their first attempt, the rest succeed. Records whose
/// ack was sent are noted before sending.
async fn storm_worker(
    addr: String,
    acked: Arc<Mutex<HashMap<String, u32>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let client = Client::connect(addr.clone()).await.expect("connect");
    let q = consumer(&client, "storm", "storm", 2000);
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        let msgs = match q.fetch(50).await {
            Ok(m) => m,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut ok = Vec::new();
        for m in msgs {
            let v = String::from_utf8(m.value.to_vec()).unwrap();
            if v.starts_with('p') || (v.starts_with('f') && m.attempt == 1) {
                let _ = q.nack(&m, true, "storm failure").await;
            } else {
                *acked.lock().unwrap().entry(v).or_default() += 1;
                ok.push(m);
            }
        }
        let _ = q.ack_many(&ok).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_retry_storm_loses_nothing_and_dead_letters_each_record_once() {
    let env = [
        ("WEIR_RETRY_MAX_ATTEMPTS", "3,3,3,3"),
        ("WEIR_RETRY_BACKOFF", "fixed,fixed,fixed,fixed"),
        ("WEIR_RETRY_BASE_DELAY_MS", "30,30,30,30"),
        ("WEIR_RETRY_MAX_DELAY_MS", "30,30,30,30"),
        ("WEIR_RETRY_JITTER_PCT", "0,0,0,0"),
        ("WEIR_QUEUE_BREAKER_ENABLED", "false"),
    ];
    let mut broker = BrokerProcess::start_with_env(&env);
    let client = connect(&broker.addr(), Duration::from_secs(5)).await;
    Admin::new(client.clone())
        .create_topic("storm", 2, Default::default())
        .await
        .expect("create");
    const N: usize = 900;
    let value = |i: usize| match i % 3 {
        0 => format!("p{i}"),
        1 => format!("f{i}"),
        _ => format!("g{i}"),
    };
    let records = (0..N)
        .map(|i| ProducerRecord::new("storm", value(i)).key(format!("k{i}")))
        .collect();
    produce(&client, "storm", records).await;

    let acked: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    for round in 0..2u64 {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers: Vec<_> = (0..2)
            .map(|_| tokio::spawn(storm_worker(broker.addr(), acked.clone(), stop.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(150 + 200 * round)).await;
        broker.kill9();
        stop.store(true, std::sync::atomic::Ordering::Release);
        for w in workers {
            tokio::time::timeout(Duration::from_secs(20), w)
                .await
                .expect("worker stops")
                .expect("worker");
        }
        broker.restart();
    }
    // Finish the work on the restarted broker.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = tokio::spawn(storm_worker(broker.addr(), acked.clone(), stop.clone()));
    let client = connect(&broker.addr(), Duration::from_secs(10)).await;
    let q = consumer(&client, "storm", "storm", 2000);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = q.status().await.expect("status");
        if st
            .shards
            .iter()
            .all(|s| s.ack_floor == s.high_watermark && s.leased + s.waiting + s.dying == 0)
        {
            break;
        }
        assert!(Instant::now() < deadline, "queue never drained: {st:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    worker.await.expect("worker");

    let dlq = read_all(&client, "storm.dlq", N / 3, Duration::from_secs(10)).await;
    let mut in_dlq: HashMap<String, usize> = HashMap::new();
    for m in &dlq {
        *in_dlq
            .entry(String::from_utf8(m.value.to_vec()).unwrap())
            .or_default() += 1;
    }
    let acked = acked.lock().unwrap();
    for i in 0..N {
        let v = value(i);
        if v.starts_with('p') {
            assert_eq!(
                in_dlq.get(&v),
                Some(&1),
                "{v} must be in the DLQ exactly once"
            );
            assert!(!acked.contains_key(&v));
        } else {
            assert!(acked.contains_key(&v), "{v} was never acked: lost");
            assert!(!in_dlq.contains_key(&v), "{v} was acked yet dead-lettered");
        }
    }
    assert_eq!(dlq.len(), N / 3, "nothing else in the DLQ");
    let redelivered_after_ack = acked.values().filter(|n| **n > 1).count();
    let healed = broker.log().matches("the state log did not record").count();
    eprintln!(
        "storm: {} acked ({} acked more than once: at-least-once across crashes), {} dead-lettered, {healed} restarts healed a cut dead-lettering",
        acked.len(),
        redelivered_after_ack,
        dlq.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_half_opens_and_closes_without_losing_a_record() {
    let env = [
        ("WEIR_RETRY_MAX_ATTEMPTS", "50,50,50,50"),
        ("WEIR_RETRY_BACKOFF", "fixed,fixed,fixed,fixed"),
        ("WEIR_RETRY_BASE_DELAY_MS", "10,10,10,10"),
        ("WEIR_RETRY_MAX_DELAY_MS", "10,10,10,10"),
        ("WEIR_QUEUE_BREAKER_WINDOW_MS", "10000"),
        ("WEIR_QUEUE_BREAKER_FAILURE_PCT", "50"),
        ("WEIR_QUEUE_BREAKER_MIN_SAMPLES", "10"),
        ("WEIR_QUEUE_BREAKER_OPEN_MS", "800"),
        ("WEIR_QUEUE_BREAKER_HALF_OPEN_PCT", "50"),
        ("WEIR_QUEUE_BREAKER_CLOSE_PCT", "90"),
    ];
    let broker = BrokerProcess::start_with_env(&env);
    let client = connect(&broker.addr(), Duration::from_secs(5)).await;
    Admin::new(client.clone())
        .create_topic("fragile", 1, Default::default())
        .await
        .expect("create");
    const N: usize = 40;
    produce(
        &client,
        "fragile",
        (0..N)
            .map(|i| ProducerRecord::new("fragile", format!("r{i}")))
            .collect(),
    )
    .await;
    let q = consumer(&client, "ops", "fragile", 5000);

    // Everything fails: the breaker opens after 10 failures.
    let mut failures = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "breaker never opened");
        let msgs = q.fetch(4).await.expect("fetch");
        for m in &msgs {
            q.nack(m, true, "downstream down").await.expect("nack");
            failures += 1;
        }
        if q.status().await.expect("status").breaker_state == BREAKER_OPEN {
            break;
        }
    }
    let opened = Instant::now();
    assert!(
        (10..=13).contains(&failures),
        "opened after {failures} failures"
    );
    // Open: nothing is leased although records are waiting.
    assert!(q.fetch(10).await.expect("fetch").is_empty());
    let st = q.status().await.expect("status");
    assert!(
        st.shards[0].waiting + (st.shards[0].high_watermark - st.shards[0].next_offset) as u32 > 0
    );
    // Half-open after the open time: only a share of what is asked is leased.
    let mut acked = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "breaker never half-opened");
        if q.status().await.expect("status").breaker_state == BREAKER_HALF_OPEN {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        opened.elapsed() >= Duration::from_millis(700),
        "open for {:?}",
        opened.elapsed()
    );
    let msgs = q.fetch(10).await.expect("fetch");
    assert!(
        !msgs.is_empty() && msgs.len() <= 5,
        "half-open leased {}",
        msgs.len()
    );
    // Recovered downstream: successes close it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pending = msgs;
    loop {
        for m in pending.drain(..) {
            q.ack(&m).await.expect("ack");
            acked.insert(String::from_utf8(m.value.to_vec()).unwrap());
        }
        let st = q.status().await.expect("status");
        if st.breaker_state == BREAKER_CLOSED && acked.len() == N {
            assert!(st.shards[0].ack_floor == N as u64, "{st:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acked {} of {N}; {st:?}",
            acked.len()
        );
        pending = q.fetch(10).await.expect("fetch");
    }
    // No record was lost or dead-lettered by the breaker.
    assert_eq!(acked.len(), N);
    let meta = Admin::new(client.clone())
        .list_topics()
        .await
        .expect("topics");
    assert!(
        meta.iter().all(|t| t.name != "fragile.dlq"),
        "nothing was dead-lettered"
    );
    let status = weir(broker.addr(), &["queue", "status"]).await;
    assert!(
        status.contains("ops") && status.contains("closed"),
        "{status}"
    );
    let log = broker.log();
    assert!(
        log.contains("circuit breaker open"),
        "state changes are logged"
    );
    assert!(log.contains("half-open"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettering_cut_short_by_a_crash_is_healed_not_repeated() {
    // The state a crash between the two writes leaves: the record is in the
    // dead-letter topic (with the broker's headers) but the queue never recorded it
    // as dead, so it is still pending.
    let mut broker = BrokerProcess::start_with_env(&RETRY_ENV);
    let client = connect(&broker.addr(), Duration::from_secs(5)).await;
    let admin = Admin::new(client.clone());
    admin
        .create_topic("heal", 1, Default::default())
        .await
        .expect("create");
    admin
        .create_topic("heal.dlq", 1, Default::default())
        .await
        .expect("create dlq");
    produce(
        &client,
        "heal",
        (0..3)
            .map(|i| ProducerRecord::new("heal", format!("r{i}")))
            .collect(),
    )
    .await;
    let mut dead = ProducerRecord::new("heal.dlq", "r1");
    for (k, v) in [
        ("weir.dlq.group", "g"),
        ("weir.dlq.source_topic", "heal"),
        ("weir.dlq.source_shard", "0"),
        ("weir.dlq.source_offset", "1"),
        ("weir.dlq.attempts", "3"),
        ("weir.dlq.error", "boom"),
    ] {
        dead = dead.header(k, v);
    }
    // Another group's dead letter of the same record must not count for group g.
    let other = ProducerRecord::new("heal.dlq", "r2")
        .header("weir.dlq.group", "other")
        .header("weir.dlq.source_topic", "heal")
        .header("weir.dlq.source_shard", "0")
        .header("weir.dlq.source_offset", "2");
    produce(&client, "heal.dlq", vec![dead, other]).await;

    let q = consumer(&client, "g", "heal", 5000);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < 2 && Instant::now() < deadline {
        for m in q.fetch(10).await.expect("fetch") {
            got.push(String::from_utf8(m.value.to_vec()).unwrap());
            q.ack(&m).await.expect("ack");
        }
    }
    assert!(
        q.fetch(10).await.expect("fetch").is_empty(),
        "r1 must not come back"
    );
    assert_eq!(got, ["r0", "r2"]);
    assert_eq!(q.status().await.expect("status").shards[0].ack_floor, 3);
    assert!(broker.log().contains("the state log did not record"));

    // The healing was recorded durably: after a crash nothing comes back either.
    broker.kill9();
    broker.restart();
    let client = connect(&broker.addr(), Duration::from_secs(10)).await;
    let q = consumer(&client, "g", "heal", 5000);
    assert!(q.fetch(10).await.expect("fetch").is_empty());
    let dlq = read_all(&client, "heal.dlq", 2, Duration::from_secs(5)).await;
    assert_eq!(
        dlq.len(),
        2,
        "nothing was written to the dead-letter topic again"
    );
}

over_both_transports! {
    async fn worker_bounds_concurrency_per_class_times_out_slow_handlers_and_settles_everything(t) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use weir_client::{HandlerError, Worker};
        let env = [
            ("WEIR_RETRY_MAX_ATTEMPTS", "3,3,3,3"),
            ("WEIR_RETRY_BACKOFF", "fixed,fixed,fixed,fixed"),
            ("WEIR_RETRY_BASE_DELAY_MS", "30,30,30,30"),
            ("WEIR_RETRY_MAX_DELAY_MS", "30,30,30,30"),
            ("WEIR_QUEUE_BREAKER_ENABLED", "false"),
        ];
        let broker = SdkBroker::start_with_env(t, &env).await;
        let client = broker.client().await;
        Admin::new(client.clone())
            .create_topic("work", 1, Default::default())
            .await
            .expect("create");
        // 12 urgent (P0) records, then 6 bulk (P3): 2 slow the first time, 2 bad.
        let mut records = Vec::new();
        for i in 0..12 {
            let v = match i {
                3 | 7 => format!("slow{i}"),
                5 | 9 => format!("bad{i}"),
                _ => format!("ok{i}"),
            };
            records.push(ProducerRecord::new("work", v).priority(1));
        }
        for i in 12..18 {
            records.push(ProducerRecord::new("work", format!("ok{i}")).priority(9));
        }
        produce(&client, "work", records).await;

        let running = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let peak = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let done = Arc::new(Mutex::new(BTreeSet::new()));
        let worker = Worker::new(consumer(&client, "w", "work", 5000))
            .concurrency([3, 1, 1, 1])
            .timeout(Duration::from_millis(300));
        let stats = worker.stats();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (r, p, d) = (running.clone(), peak.clone(), done.clone());
        let run = tokio::spawn(worker.run(
            move |m: QueueMessage| {
                let (r, p, d) = (r.clone(), p.clone(), d.clone());
                async move {
                    let i = usize::from(m.class.index() != 0);
                    let now = r[i].fetch_add(1, Ordering::SeqCst) + 1;
                    p[i].fetch_max(now, Ordering::SeqCst);
                    // Counts down even when the worker drops a timed-out handler.
                    struct Running(Arc<[AtomicUsize; 2]>, usize);
                    impl Drop for Running {
                        fn drop(&mut self) {
                            self.0[self.1].fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    let _running = Running(r.clone(), i);
                    let v = String::from_utf8(m.value.to_vec()).unwrap();
                    let slow = v.starts_with("slow") && m.attempt == 1;
                    tokio::time::sleep(Duration::from_millis(if slow { 2000 } else { 60 })).await;
                    if v.starts_with("bad") {
                        return Err(HandlerError::fatal("cannot parse"));
                    }
                    d.lock().unwrap().insert(v);
                    Ok(())
                }
            },
            async {
                let _ = stop_rx.await;
            },
        ));
        let q = consumer(&client, "w", "work", 5000);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let st = q.status().await.expect("status");
            if st.shards[0].ack_floor == 18 {
                break;
            }
            assert!(Instant::now() < deadline, "not settled: {st:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = stop_tx.send(());
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("worker stops")
            .expect("join")
            .expect("run");
        assert!(
            peak[0].load(Ordering::SeqCst) <= 3,
            "P0 ran {} at once",
            peak[0].load(Ordering::SeqCst)
        );
        assert!(
            peak[0].load(Ordering::SeqCst) >= 2,
            "P0 concurrency was used"
        );
        assert_eq!(
            peak[1].load(Ordering::SeqCst),
            1,
            "P3 ran more than 1 at once"
        );
        assert_eq!(stats.timed_out.load(Ordering::Relaxed), 2);
        let done = done.lock().unwrap().clone();
        assert_eq!(done.len(), 16, "{done:?}");
        assert!(done.contains("slow3") && done.contains("slow7"));
        let dlq = read_all(&client, "work.dlq", 2, Duration::from_secs(5)).await;
        let mut bad: Vec<String> = dlq
            .iter()
            .map(|m| String::from_utf8(m.value.to_vec()).unwrap())
            .collect();
        bad.sort();
        assert_eq!(bad, ["bad5", "bad9"]);
        for m in &dlq {
            assert_eq!(
                header(m, "weir.dlq.attempts"),
                Some("1"),
                "fatal errors are not retried"
            );
            assert_eq!(header(m, "weir.dlq.error"), Some("cannot parse"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_consume_in_queue_mode_acks_or_nacks_what_it_prints() {
    let broker = BrokerProcess::start_with_env(&RETRY_ENV);
    let client = connect(&broker.addr(), Duration::from_secs(5)).await;
    Admin::new(client.clone())
        .create_topic("cliq", 1, Default::default())
        .await
        .expect("create");
    produce(
        &client,
        "cliq",
        (0..3)
            .map(|i| ProducerRecord::new("cliq", format!("v{i}")))
            .collect(),
    )
    .await;
    let args = ["consume", "cliq", "--group", "c", "--mode", "queue"];
    let nacked = weir(
        broker.addr(),
        &[&args[..], &["--nack-all", "--count", "1"]].concat(),
    )
    .await;
    assert_eq!(nacked.lines().collect::<Vec<_>>(), ["v0"]);
    let printed = weir(
        broker.addr(),
        &[&args[..], &["--count", "3", "--ack-after-ms", "5"]].concat(),
    )
    .await;
    let mut lines: Vec<&str> = printed.lines().collect();
    lines.sort();
    assert_eq!(lines, ["v0", "v1", "v2"], "the nacked record comes back");
    let q = consumer(&client, "c", "cliq", 1000);
    let st = q.status().await.expect("status");
    assert_eq!(
        (st.shards[0].ack_floor, st.acked, st.nacked),
        (3, 3, 1),
        "{st:?}"
    );
    let status = weir(broker.addr(), &["status"]).await;
    assert!(status.contains("c on cliq: breaker"), "{status}");
}

over_both_transports! {
    async fn a_fetch_shares_its_records_across_shards(t) {
        let broker = SdkBroker::start_with_env(t, &RETRY_ENV).await;
        let client = broker.client().await;
        Admin::new(client.clone())
            .create_topic("wide", 2, Default::default())
            .await
            .expect("create");
        let records = (0..20)
            .map(|i| ProducerRecord::new("wide", format!("w{i}")).shard(i % 2))
            .collect();
        produce(&client, "wide", records).await;
        let q = consumer(&client, "fair", "wide", 5000);
        for _ in 0..3 {
            let msgs = q.fetch(4).await.expect("fetch");
            let per: Vec<usize> = (0..2)
                .map(|s| msgs.iter().filter(|m| m.shard == s).count())
                .collect();
            assert_eq!(
                per,
                [2, 2],
                "a fetch of 4 from 2 busy shards takes 2 from each"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_counts_and_expired_leases_survive_a_crash() {
    // P1 (priority 4): 3 attempts, linear 200 ms.
    let mut broker = BrokerProcess::start_with_env(&RETRY_ENV);
    let client = connect(&broker.addr(), Duration::from_secs(5)).await;
    Admin::new(client.clone())
        .create_topic("durable", 1, Default::default())
        .await
        .expect("create");
    produce(
        &client,
        "durable",
        vec![ProducerRecord::new("durable", "x").priority(4)],
    )
    .await;
    let fetch_one = |q: QueueConsumer| async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            assert!(Instant::now() < deadline, "record never came back");
            if let Some(m) = q.fetch(1).await.expect("fetch").pop() {
                return m;
            }
        }
    };
    // Attempt 1 is nacked; attempt 2's lease (300 ms) runs out: that is a failure too.
    let q = consumer(&client, "d", "durable", 300);
    let m = fetch_one(q.clone()).await;
    assert_eq!(m.attempt, 1);
    q.nack(&m, true, "first").await.expect("nack");
    let m = fetch_one(q.clone()).await;
    assert_eq!(m.attempt, 2);
    let deadline = Instant::now() + Duration::from_secs(5);
    while q.status().await.expect("status").expired == 0 {
        assert!(Instant::now() < deadline, "lease never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    broker.kill9();
    broker.restart();
    let client = connect(&broker.addr(), Duration::from_secs(10)).await;
    let q = consumer(&client, "d", "durable", 5000);
    let m = fetch_one(q.clone()).await;
    assert_eq!(m.attempt, 3, "both failures were durable");
    assert!(m.is_last_attempt());
    assert_eq!(
        q.nack(&m, true, "third").await.expect("nack"),
        NackOutcome::DeadLettered
    );
    let dlq = read_all(&client, "durable.dlq", 1, Duration::from_secs(5)).await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(header(&dlq[0], "weir.dlq.attempts"), Some("3"));
    // The metrics page shows the queue counters and the breaker state.
    let metrics = http_get(broker.http_addr(), "/metrics").await;
    assert!(
        metrics.contains("weir_queue_dead_lettered_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weir_queue_breaker_state{group=\"d\",topic=\"durable\"} 0"),
        "{metrics}"
    );
}

over_both_transports! {
    async fn worker_extends_the_leases_of_handlers_that_outlive_them(t) {
        use weir_client::Worker;
        let broker = SdkBroker::start_with_env(t, &RETRY_ENV).await;
        let client = broker.client().await;
        Admin::new(client.clone())
            .create_topic("long", 1, Default::default())
            .await
            .expect("create");
        produce(
            &client,
            "long",
            (0..3)
                .map(|i| ProducerRecord::new("long", format!("l{i}")))
                .collect(),
        )
        .await;
        // Leases of 300 ms, handlers of 900 ms, timeout 3 s.
        let worker = Worker::new(consumer(&client, "slow", "long", 300))
            .concurrency([4, 4, 4, 4])
            .timeout(Duration::from_secs(3));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let seen = attempts.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(worker.run(
            move |m: QueueMessage| {
                seen.lock().unwrap().push(m.attempt);
                async move {
                    tokio::time::sleep(Duration::from_millis(900)).await;
                    Ok(())
                }
            },
            async {
                let _ = stop_rx.await;
            },
        ));
        let q = consumer(&client, "slow", "long", 300);
        let deadline = Instant::now() + Duration::from_secs(10);
        let st = loop {
            let st = q.status().await.expect("status");
            if st.shards[0].ack_floor == 3 {
                break st;
            }
            assert!(Instant::now() < deadline, "{st:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let _ = stop_tx.send(());
        run.await.expect("join").expect("run");
        assert_eq!(st.expired, 0, "no lease ran out: {st:?}");
        assert_eq!(*attempts.lock().unwrap(), [1, 1, 1]);
    }
}

/// Generation directories of the queue state log.
fn state_generations(broker: &BrokerProcess) -> Vec<u64> {
    let dir = broker.data_dir().join("internal").join("queue");
    let mut g: Vec<u64> = std::fs::read_dir(dir)
        .expect("state log dir")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect();
    g.sort_unstable();
    g
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_log_compaction_keeps_acks_and_attempt_counts_across_crashes() {
    let mut env = RETRY_ENV.to_vec();
    env.push(("WEIR_QUEUE_STATE_COMPACT_RECORDS", "50"));
    let mut broker = BrokerProcess::start_with_env(&env);
    let client = connect(&broker.addr(), Duration::from_secs(5)).await;
    let admin = Admin::new(client.clone());
    for t in ["compact", "other"] {
        admin
            .create_topic(t, 1, Default::default())
            .await
            .expect("create");
    }
    let records = |t: &'static str, n: usize| {
        (0..n)
            .map(move |i| ProducerRecord::new(t, format!("{t}{i}")).priority(4))
            .collect::<Vec<_>>()
    };
    produce(&client, "compact", records("compact", 300)).await;
    produce(&client, "other", records("other", 300)).await;

    // Ack everything except every tenth record, which fails once.
    let q = consumer(&client, "c", "compact", 60_000);
    let mut settled = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while settled < 300 {
        assert!(Instant::now() < deadline);
        let msgs = q.fetch(50).await.expect("fetch");
        let (fail, ok): (Vec<_>, Vec<_>) = msgs.into_iter().partition(|m| m.offset % 10 == 0);
        for m in &fail {
            q.nack(m, true, "once").await.expect("nack");
        }
        for r in q.ack_many(&ok).await.expect("ack") {
            r.expect("acked");
        }
        settled += fail.len() + ok.len();
    }
    let wait_for_compaction = |broker: &BrokerProcess, above: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let g = state_generations(broker);
            if g.len() == 1 && g[0] > above {
                return g[0];
            }
            assert!(Instant::now() < deadline, "no compaction: {g:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let first = wait_for_compaction(&broker, 1);

    // Crash, then let another queue's traffic compact again while queue c is not
    // open yet: its state must be carried over from the replay.
    broker.kill9();
    broker.restart();
    let client = connect(&broker.addr(), Duration::from_secs(10)).await;
    let other = consumer(&client, "o", "other", 60_000);
    let mut n = 0;
    while n < 300 {
        let msgs = other.fetch(50).await.expect("fetch");
        n += msgs.len();
        other.ack_many(&msgs).await.expect("ack");
    }
    wait_for_compaction(&broker, first);
    broker.kill9();
    broker.restart();
    let client = connect(&broker.addr(), Duration::from_secs(10)).await;
    let q = consumer(&client, "c", "compact", 60_000);
    let mut back = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while back.len() < 30 {
        assert!(Instant::now() < deadline, "{} came back", back.len());
        for m in q.fetch(50).await.expect("fetch") {
            assert_eq!(m.offset % 10, 0, "acked record {} came back", m.offset);
            assert_eq!(m.attempt, 2, "the failure was kept through compactions");
            assert!(back.insert(m.offset), "{} twice", m.offset);
        }
    }
    assert!(q.fetch(50).await.expect("fetch").is_empty());
    let st = q.status().await.expect("status");
    assert_eq!(
        st.shards[0].ack_floor, 0,
        "offset 0 is still pending: {st:?}"
    );
}

over_both_transports! {
    async fn a_group_name_is_either_a_queue_or_a_stream(t) {
        let broker = SdkBroker::start_with_env(t, &RETRY_ENV).await;
        let client = broker.client().await;
        Admin::new(client.clone())
            .create_topic("mixed", 1, Default::default())
            .await
            .expect("create");
        produce(&client, "mixed", vec![ProducerRecord::new("mixed", "m")]).await;
        // Queue first: joining it as a streaming group is refused.
        let q = consumer(&client, "as-queue", "mixed", 5000);
        assert_eq!(q.fetch(1).await.expect("fetch").len(), 1);
        let mut stream = weir_client::Consumer::builder(&client)
            .group("as-queue")
            .topic("mixed")
            .build()
            .expect("consumer");
        let err = stream
            .poll(1, Duration::from_millis(200))
            .await
            .expect_err("a queue group cannot join as a stream");
        assert_eq!(err.code(), Some(ErrorCode::NotQueueGroup), "{err}");
        // Stream first: leasing as a queue is refused while it has members.
        let mut stream = weir_client::Consumer::builder(&client)
            .group("as-stream")
            .topic("mixed")
            .build()
            .expect("consumer");
        stream
            .poll(1, Duration::from_millis(200))
            .await
            .expect("poll");
        let err = consumer(&client, "as-stream", "mixed", 5000)
            .fetch(1)
            .await
            .expect_err("a streaming group cannot lease");
        assert_eq!(err.code(), Some(ErrorCode::NotQueueGroup), "{err}");
        assert_eq!(
            consumer(&client, "", "mixed", 5000)
                .fetch(1)
                .await
                .expect_err("empty group")
                .code(),
            Some(ErrorCode::InvalidGroupName)
        );
    }
}

over_both_transports! {
    /// Issue 22: a topic whose name leaves no room for the dead-letter suffix could never
    /// dead-letter (a final nack would hang); it is refused for queue use up front, by
    /// name, while shorter names work.
    async fn a_topic_too_long_to_have_a_dead_letter_topic_is_refused_as_a_queue(t) {
        use weir_protocol::messages::QueueFetchRequest;
        let broker = SdkBroker::start(t).await;
        let client = broker.client().await;
        let admin = Admin::new(client.clone());
        let long = "q".repeat(247);
        for name in [long.as_str(), "short"] {
            admin
                .create_topic(name, 1, weir_client::TopicConfig::default())
                .await
                .expect("create topic");
        }
        let fetch = |topic: &str| QueueFetchRequest {
            group: "g".into(),
            consumer: "c".into(),
            topic: topic.into(),
            max_messages: 1,
            lease_ms: 0,
            max_wait_ms: 0,
        };
        match client.call(fetch(&long)).await {
            Err(weir_client::ClientError::Broker { code, message, .. }) => {
                assert_eq!(code, ErrorCode::InvalidTopicName, "{message}");
                assert!(message.contains("dead-letter"), "{message}");
            }
            other => panic!("expected INVALID_TOPIC_NAME, got {other:?}"),
        }
        client
            .call(fetch("short"))
            .await
            .expect("a short name works");
    }
}

/// Leases and acks every record it can get within `within`, returning their values.
async fn take_all(q: &QueueConsumer, within: Duration) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        for m in q.fetch(100).await.expect("fetch") {
            got.push(String::from_utf8(m.value.to_vec()).unwrap());
            q.ack(&m).await.expect("ack");
        }
    }
    got.sort();
    got
}

/// Issue 22: deleting a topic stops and forgets its queues. A topic recreated under
/// the same name gets fresh queues: they never lease the deleted records, and the old
/// queue's acks (its floor) do not hide the new records, before or after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_topics_queues_are_forgotten_and_a_recreated_topic_starts_clean() {
    let mut broker = BrokerProcess::start();
    let client = connect(&broker.addr(), Duration::from_secs(10)).await;
    let admin = Admin::new(client.clone());
    let records = |prefix: &str| {
        (0..3)
            .map(|i| ProducerRecord::new("t", format!("{prefix}-{i}")))
            .collect::<Vec<_>>()
    };
    admin
        .create_topic("t", 1, Default::default())
        .await
        .unwrap();
    produce(&client, "t", records("old")).await;
    // Queue `a` consumes (and acks) the old records; queue `b` is only opened.
    let a = consumer(&client, "a", "t", 5000);
    assert_eq!(
        take_all(&a, Duration::from_millis(600)).await,
        ["old-0", "old-1", "old-2"]
    );
    let b = consumer(&client, "b", "t", 5000);
    b.status().await.expect("open queue b");
    admin.delete_topic("t").await.unwrap();
    admin
        .create_topic("t", 1, Default::default())
        .await
        .unwrap();
    produce(&client, "t", records("new")).await;
    // Live: b's task must read the new topic, not the deleted files.
    let b = consumer(&client, "b", "t", 5000);
    assert_eq!(
        take_all(&b, Duration::from_millis(600)).await,
        ["new-0", "new-1", "new-2"]
    );

    // Across a restart: a's acks of the old topic must not hide the new records.
    admin.delete_topic("t").await.unwrap();
    admin
        .create_topic("t", 1, Default::default())
        .await
        .unwrap();
    produce(&client, "t", records("newer")).await;
    drop(client);
    broker.kill9();
    broker.restart();
    let client = connect(&broker.addr(), Duration::from_secs(10)).await;
    let a = consumer(&client, "a", "t", 5000);
    assert_eq!(
        take_all(&a, Duration::from_millis(600)).await,
        ["newer-0", "newer-1", "newer-2"]
    );
}

/// A crash between a topic's deletion (topics.json rewritten) and the FORGET of its
/// queues: on the next start the broker forgets queues whose topic no longer exists,
/// so a topic created again under that name does not inherit their ack floors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_of_a_topic_deleted_by_a_cut_short_delete_are_forgotten_at_start() {
    let mut broker = BrokerProcess::start();
    let client = connect(&broker.addr(), Duration::from_secs(10)).await;
    let admin = Admin::new(client.clone());
    let records = |prefix: &str| {
        (0..3)
            .map(|i| ProducerRecord::new("t", format!("{prefix}-{i}")))
            .collect::<Vec<_>>()
    };
    admin
        .create_topic("t", 1, Default::default())
        .await
        .unwrap();
    produce(&client, "t", records("old")).await;
    let a = consumer(&client, "a", "t", 5000);
    assert_eq!(
        take_all(&a, Duration::from_millis(600)).await,
        ["old-0", "old-1", "old-2"]
    );
    drop(client);
    broker.kill9();
    // What the cut-short delete left: t gone from topics.json, its queue's events kept.
    let list = broker.data_dir().join("topics.json");
    let mut file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&list).unwrap()).unwrap();
    file["topics"]
        .as_array_mut()
        .unwrap()
        .retain(|t| t["name"] != "t");
    std::fs::write(&list, serde_json::to_vec(&file).unwrap()).unwrap();
    std::fs::remove_dir_all(broker.data_dir().join("topics").join("t")).unwrap();
    broker.restart();
    let client = connect(&broker.addr(), Duration::from_secs(10)).await;
    let admin = Admin::new(client.clone());
    admin
        .create_topic("t", 1, Default::default())
        .await
        .unwrap();
    produce(&client, "t", records("new")).await;
    // And across one more restart, so the forgetting must have been durable.
    drop(client);
    broker.kill9();
    broker.restart();
    let client = connect(&broker.addr(), Duration::from_secs(10)).await;
    let a = consumer(&client, "a", "t", 5000);
    assert_eq!(
        take_all(&a, Duration::from_millis(600)).await,
        ["new-0", "new-1", "new-2"]
    );
}

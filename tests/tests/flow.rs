//! Flow control against a real broker: per-client quotas throttle with a retry-after
//! and change at runtime through the admin api; a flood of P3 records is shed while
//! every P0 record is accepted, and everything acknowledged is in the log (nothing
//! shed was written); the producer's back-pressure policies; the SDK's circuit breaker
//! across a broker outage; and `weir quota` / `weir status`.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weir_client::{
    Acks, Admin, Backpressure, BreakerConfig, BreakerState, Client, ClientConfig, ClientError,
    Durability, Producer, ProducerConfig, ProducerRecord, Quota, TopicConfig,
};
use weir_protocol::batch::{BatchBuilder, NewRecord};
use weir_protocol::messages::{FetchRequest, ProduceRequest, Records};
use weir_protocol::{ErrorCode, ResponseBody};
use weir_tests::over_both_transports;
use weir_tests::transport::SdkBroker;
use weir_tests::{cli_binary, connect, read_to_end, BrokerProcess};

/// Generous bound on any single wait in these tests.
const WAIT: Duration = Duration::from_secs(20);

async fn client_as(broker: &SdkBroker, id: &str) -> Result<Client, ClientError> {
    let config = ClientConfig {
        client_id: id.to_string(),
        ..Default::default()
    };
    match broker.embedded() {
        Some(b) => b.client_with(config).await,
        None => Client::connect_with(broker.addr(), config).await,
    }
}

/// A produce request of one batch with one record of `value_bytes` bytes.
fn produce(topic: &str, value_bytes: usize) -> ProduceRequest {
    let value = vec![b'q'; value_bytes];
    let mut b = BatchBuilder::new();
    b.push(&NewRecord::value(1_700_000_000_000, &value))
        .expect("record");
    ProduceRequest {
        topic: topic.to_string(),
        shard: 0,
        acks: Acks::Leader,
        timeout_ms: 0,
        records: Records::from_bytes(b.finish().expect("batch")),
    }
}

fn fetch(topic: &str) -> FetchRequest {
    FetchRequest {
        topic: topic.to_string(),
        shard: 0,
        offset: 0,
        max_bytes: 4 << 20,
        min_bytes: 1,
        max_wait_ms: 0,
    }
}

fn retry_after(e: &ClientError) -> u32 {
    match e {
        ClientError::Broker { retry_after_ms, .. } => *retry_after_ms,
        other => panic!("expected a broker refusal, got {other}"),
    }
}

over_both_transports! {
    async fn quotas_throttle_with_retry_after_and_change_at_runtime(t) {
        let broker = SdkBroker::start_with_env(t, &[("WEIR_QUOTA_MAX_DELAY_MS", "2000")]).await;
        let admin = Admin::new(broker.client().await);
        admin
            .create_topic("q", 1, TopicConfig::default())
            .await
            .expect("create");

        // Produce rate: 20 000 B/s with a 20 000 B burst for client "slow".
        let quota = Quota {
            produce_bytes_per_s: 20_000,
            produce_burst_bytes: 20_000,
            ..Default::default()
        };
        let entry = admin.set_quota("slow", quota.clone()).await.expect("set");
        assert_eq!(entry.quota, quota);
        let listed = admin.describe_quotas(&[]).await.expect("describe");
        assert_eq!(listed.len(), 2, "default and slow: {listed:?}");
        assert!(listed[0].client_id.is_empty());

        let slow = client_as(&broker, "slow").await.expect("connect slow");
        slow.call(produce("q", 15_000))
            .await
            .expect("within the burst");
        let err = slow
            .call(produce("q", 15_000))
            .await
            .expect_err("over the rate");
        assert_eq!(err.code(), Some(ErrorCode::Throttled), "{err}");
        let after = retry_after(&err);
        // About 10 000 missing bytes at 20 000 B/s: ~500 ms.
        assert!((100..=1000).contains(&after), "retry_after_ms {after}");
        // Another client id is not affected.
        let other = client_as(&broker, "other").await.expect("connect other");
        for _ in 0..5 {
            other
                .call(produce("q", 15_000))
                .await
                .expect("other client");
        }
        // After the retry-after the same request is accepted.
        tokio::time::sleep(Duration::from_millis(u64::from(after) + 50)).await;
        slow.call(produce("q", 15_000))
            .await
            .expect("accepted after waiting retry_after_ms");

        // Runtime change: lifting the quota applies to the live connection at once.
        admin.remove_quota("slow").await.expect("remove");
        for _ in 0..5 {
            slow.call(produce("q", 15_000))
                .await
                .expect("no quota any more");
        }

        // A producer with the Block policy waits out the quota instead of failing: 100 KB
        // at 50 KB/s after a 50 KB burst takes at least ~1 s, and every record is acked.
        admin
            .set_quota(
                "paced",
                Quota {
                    produce_bytes_per_s: 50_000,
                    produce_burst_bytes: 50_000,
                    ..Default::default()
                },
            )
            .await
            .expect("set paced");
        let paced = client_as(&broker, "paced").await.expect("connect paced");
        let producer = Producer::builder(&paced)
            .backpressure(Backpressure::Block)
            .max_batch_bytes(8 * 1024)
            .build()
            .await
            .expect("producer");
        let started = Instant::now();
        let mut pending = Vec::new();
        for i in 0..100 {
            pending.push(
                producer
                    .send(ProducerRecord::new("q", vec![b'p'; 1000]).key(format!("{i}")))
                    .await
                    .expect("queue"),
            );
        }
        for p in pending {
            p.await.expect("paced record acked");
        }
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(800),
            "100 KB at 50 KB/s (50 KB burst) finished in {took:?}"
        );
        let status = admin.flow_status().await.expect("flow status");
        let paced_status = status
            .clients
            .iter()
            .find(|c| c.client_id == "paced")
            .expect("paced listed");
        assert!(paced_status.throttled_total > 0, "{paced_status:?}");
        assert_eq!(paced_status.connections, 1);

        // Connections per client id.
        admin
            .set_quota(
                "two",
                Quota {
                    max_connections: 2,
                    ..Default::default()
                },
            )
            .await
            .expect("set two");
        let a = client_as(&broker, "two").await.expect("first");
        let _b = client_as(&broker, "two").await.expect("second");
        let err = client_as(&broker, "two").await.expect_err("third refused");
        assert_eq!(err.code(), Some(ErrorCode::Throttled), "{err}");
        drop(a);
        let deadline = Instant::now() + WAIT;
        loop {
            match client_as(&broker, "two").await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("a slot never freed after a disconnect: {e}"),
            }
        }

        // Fetch quota: 100 000 B/s. A 250 KB fetch leaves 150 KB of debt, so the next fetch
        // is delayed ~1.5 s (under quota_max_delay_ms = 2000); after it, 250 KB of debt
        // needs 2.5 s, more than the cap, so the third fetch is THROTTLED.
        admin
            .create_topic("f", 1, TopicConfig::default())
            .await
            .expect("create f");
        for _ in 0..5 {
            other.call(produce("f", 50_000)).await.expect("fill f");
        }
        admin
            .set_quota(
                "reader",
                Quota {
                    fetch_bytes_per_s: 100_000,
                    fetch_burst_bytes: 100_000,
                    ..Default::default()
                },
            )
            .await
            .expect("set reader");
        let reader = client_as(&broker, "reader").await.expect("connect reader");
        let first = reader.call(fetch("f")).await.expect("first fetch");
        let ResponseBody::Fetch(first) = first else {
            panic!("not a fetch response")
        };
        assert!(first.records.len_bytes() >= 250_000);
        let t = Instant::now();
        reader.call(fetch("f")).await.expect("delayed fetch");
        let delayed = t.elapsed();
        assert!(
            delayed >= Duration::from_millis(1200),
            "second fetch answered after {delayed:?}"
        );
        let err = reader
            .call(fetch("f"))
            .await
            .expect_err("third fetch throttled");
        assert_eq!(err.code(), Some(ErrorCode::Throttled), "{err}");
        assert!(retry_after(&err) > 2000, "{err:?}");
        // A consumer of that client honours the retry-after instead of spinning: over 1.5 s
        // of polling it is throttled a handful of times, not thousands.
        let throttled = |s: &weir_client::FlowStatusResponse| {
            s.clients
                .iter()
                .find(|c| c.client_id == "reader")
                .map_or(0, |c| c.throttled_total)
        };
        let before = throttled(&admin.flow_status().await.expect("status"));
        let mut consumer = weir_client::Consumer::builder(&reader)
            .topic("f")
            .reset(weir_client::OffsetReset::Earliest)
            .fetch_max_wait(Duration::from_millis(500))
            .build()
            .expect("consumer");
        let polled = consumer
            .poll(1000, Duration::from_millis(1500))
            .await
            .expect("poll while throttled");
        let after = throttled(&admin.flow_status().await.expect("status"));
        assert!(
            after - before <= 10,
            "consumer fetched {} times while throttled (got {} messages)",
            after - before,
            polled.len()
        );
    }
}

over_both_transports! {
    async fn the_broker_memory_budget_throttles_produces_that_do_not_fit_and_frees_on_ack(t) {
        // A 1 MiB budget and eight pipelined 600 KB produces to an `always` topic (each
        // holds its bytes until flushed): they cannot all fit at once.
        let broker = SdkBroker::start_with_env(t, &[("WEIR_FLOW_MEMORY_BYTES", "1048576")]).await;
        let client = broker.client().await;
        let admin = Admin::new(client.clone());
        admin
            .create_topic(
                "mem",
                1,
                TopicConfig {
                    durability: Durability::Always,
                    ..Default::default()
                },
            )
            .await
            .expect("create");
        let durable = || ProduceRequest {
            acks: Acks::Durable,
            ..produce("mem", 600_000)
        };
        // Pipelined on the client's one connection.
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let (c, req) = (client.clone(), durable());
                tokio::spawn(async move { c.call(req).await })
            })
            .collect();
        let mut throttled = 0;
        for call in calls {
            match &call.await.expect("call task") {
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.code(), Some(ErrorCode::Throttled), "{e}");
                    assert_eq!(retry_after(e), 100);
                    throttled += 1;
                }
            }
        }
        assert!(throttled > 0, "8 x 600 KB fit a 1 MiB budget");
        assert!(throttled < 8, "nothing fit");
        let status = admin.flow_status().await.expect("status");
        assert_eq!(status.memory_budget_bytes, 1 << 20);
        assert_eq!(
            status.memory_used_bytes, 0,
            "every answered produce gave its bytes back"
        );
        // One at a time they all fit.
        for _ in 0..throttled {
            client.call(durable()).await.expect("fits once alone");
        }
    }
}

over_both_transports! {
    async fn a_p3_flood_is_shed_while_every_p0_record_is_accepted_and_nothing_acked_is_lost(t) {
        // 4 KiB of produce bytes waiting for their ack counts as full load, so a flood with
        // several batches in flight drives the load far over P3's 90 % threshold whatever
        // the machine's speed. `always` durability makes every ack wait for a flush.
        let broker = SdkBroker::start_with_env(t, &[
            ("WEIR_FLOW_LOAD_PENDING_BYTES", "4096"),
            ("WEIR_SHED_COOLDOWN_MS", "1000"),
            ("WEIR_SHED_RECOVERY_MS", "1000"),
        ]).await;
        let client = broker.client().await;
        let admin = Admin::new(client.clone());
        admin
            .create_topic(
                "mixed",
                2,
                TopicConfig {
                    durability: Durability::Always,
                    ..Default::default()
                },
            )
            .await
            .expect("create");

        // P3 (priority 10): fail fast, no retries, so every shed batch is visible.
        let flood_client = client_as(&broker, "flood").await.expect("flood client");
        let flood = Producer::builder(&flood_client)
            .priority(10)
            .acks(Acks::Durable)
            .idempotent(false)
            .retries(0)
            .backpressure(Backpressure::FailFast)
            .max_batch_bytes(16 * 1024)
            .max_in_flight_per_shard(5)
            .build()
            .await
            .expect("flood producer");
        // P0 (priority 1): also fail fast, so a single SHED or THROTTLED fails the test.
        let vip_client = client_as(&broker, "vip").await.expect("vip client");
        let vip = Producer::builder(&vip_client)
            .priority(1)
            .acks(Acks::Durable)
            .retries(0)
            .backpressure(Backpressure::FailFast)
            .build()
            .await
            .expect("p0 producer");

        const FLOOD: usize = 3000;
        const P0: usize = 300;
        let value = |tag: &str, i: usize| format!("{tag}-{i:05}-{}", "x".repeat(1000));
        let flood_task = tokio::spawn(async move {
            let mut pending = Vec::with_capacity(FLOOD);
            for i in 0..FLOOD {
                pending.push((
                    i,
                    flood
                        .send(ProducerRecord::new("mixed", value("p3", i)))
                        .await
                        .expect("queue p3"),
                ));
            }
            let (mut acked, mut shed) = (BTreeSet::new(), 0usize);
            for (i, p) in pending {
                match p.await {
                    Ok(_) => {
                        acked.insert(i);
                    }
                    Err(e) if e.code() == Some(ErrorCode::Shed) => shed += 1,
                    Err(e) => panic!("p3 record {i}: unexpected error {e}"),
                }
            }
            (acked, shed)
        });
        let vip_task = tokio::spawn(async move {
            for i in 0..P0 {
                vip.send_and_wait(ProducerRecord::new("mixed", value("p0", i)).key(format!("{i}")))
                    .await
                    .unwrap_or_else(|e| panic!("p0 record {i} refused: {e}"));
            }
        });
        let (acked, shed) = tokio::time::timeout(Duration::from_secs(45), flood_task)
            .await
            .expect("flood finished in time")
            .expect("flood task");
        tokio::time::timeout(Duration::from_secs(45), vip_task)
            .await
            .expect("p0 finished in time")
            .expect("every p0 record accepted");
        assert!(shed > 0, "the flood never triggered shedding");
        assert!(!acked.is_empty(), "some of the flood must get through");
        assert_eq!(acked.len() + shed, FLOOD);

        let status = admin.flow_status().await.expect("flow status");
        assert_eq!(status.classes[0].shed_total, 0, "P0 never shed");
        assert!(status.classes[3].shed_total > 0, "{status:?}");

        // Everything acknowledged is in the log, and nothing shed is.
        let stored = read_to_end(&client, "mixed", WAIT).await;
        let mut p0 = BTreeSet::new();
        let mut p3 = BTreeSet::new();
        for m in &stored {
            let v = String::from_utf8(m.value.to_vec()).expect("utf8");
            let i: usize = v[3..8].parse().expect("index");
            let fresh = match &v[..2] {
                "p0" => p0.insert(i),
                "p3" => p3.insert(i),
                other => panic!("unexpected record {other}"),
            };
            assert!(fresh, "duplicate record {}", &v[..8]);
        }
        assert_eq!(
            p0,
            (0..P0).collect::<BTreeSet<_>>(),
            "every P0 record stored"
        );
        assert_eq!(
            p3, acked,
            "stored P3 records are exactly the acknowledged ones"
        );
        eprintln!(
            "p3 flood: {} acked, {shed} shed; broker shed {} P3 batches",
            acked.len(),
            status.classes[3].shed_total
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_queue_full_fails_fast_or_after_the_bound() {
    let mut broker = BrokerProcess::start();
    let client = connect(&broker.addr(), WAIT).await;
    Admin::new(client.clone())
        .create_topic("bp", 1, TopicConfig::default())
        .await
        .expect("create");
    let build = |backpressure| {
        Producer::builder(&client)
            .config(ProducerConfig {
                linger: Duration::ZERO,
                max_in_flight_per_shard: 1,
                idempotent: false,
                max_queued_records: 1,
                backpressure,
                ..Default::default()
            })
            .build()
    };
    let fail_fast = build(Backpressure::FailFast).await.expect("producer");
    let block_for = build(Backpressure::BlockFor(Duration::from_millis(300)))
        .await
        .expect("producer");
    fail_fast
        .send_and_wait(ProducerRecord::new("bp", "warm"))
        .await
        .expect("topic known");
    block_for
        .send_and_wait(ProducerRecord::new("bp", "warm"))
        .await
        .expect("topic known");
    // With the broker gone nothing drains: the queue fills within a few records.
    broker.kill9();
    let mut full_at = None;
    for i in 0..100 {
        match fail_fast.send(ProducerRecord::new("bp", "x")).await {
            Ok(_) => {}
            Err(ClientError::QueueFull(_)) => {
                full_at = Some(i);
                break;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(full_at.is_some(), "FailFast never reported a full queue");
    let mut waited = None;
    for _ in 0..100 {
        let t = Instant::now();
        match block_for.send(ProducerRecord::new("bp", "x")).await {
            Ok(_) => {}
            Err(ClientError::QueueFull(_)) => {
                waited = Some(t.elapsed());
                break;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    let waited = waited.expect("BlockFor never reported a full queue");
    assert!(
        waited >= Duration::from_millis(300),
        "gave up after {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_breaker_opens_when_the_broker_is_down_and_closes_after_it_returns() {
    let mut broker = BrokerProcess::start();
    let config = ClientConfig {
        breaker: Some(BreakerConfig {
            min_samples: 5,
            window: Duration::from_secs(10),
            open_for: Duration::from_millis(1000),
            half_open_samples: 2,
            ..Default::default()
        }),
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let client = Client::connect_with(broker.addr(), config)
        .await
        .expect("connect");
    client.metadata(&[]).await.expect("healthy");
    assert_eq!(client.breaker_state(), Some(BreakerState::Closed));
    broker.kill9();
    // Calls fail (connection refused); after 5 failures the breaker opens.
    let mut failures = 0;
    while client.breaker_state() == Some(BreakerState::Closed) {
        let e = client.metadata(&[]).await.expect_err("broker is down");
        assert!(!matches!(e, ClientError::CircuitOpen { .. }));
        failures += 1;
        assert!(failures <= 6, "still closed after {failures} failures");
    }
    assert_eq!(client.breaker_state(), Some(BreakerState::Open));
    // Open: refused at once, without touching the network.
    let t = Instant::now();
    let e = client.metadata(&[]).await.expect_err("open");
    assert!(
        matches!(e, ClientError::CircuitOpen { retry_after_ms } if retry_after_ms <= 1000),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_millis(100));
    broker.restart();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(client.breaker_state(), Some(BreakerState::HalfOpen));
    // Half-open lets a tenth of the calls through; two good trial calls close it.
    let deadline = Instant::now() + WAIT;
    while client.breaker_state() != Some(BreakerState::Closed) {
        assert!(Instant::now() < deadline, "breaker never closed");
        match client.metadata(&[]).await {
            Ok(_) | Err(ClientError::CircuitOpen { .. }) => {}
            Err(e) => panic!("broker is back but the call failed: {e}"),
        }
    }
    client.metadata(&[]).await.expect("closed again");
}

#[test]
fn weir_quota_and_status_commands() {
    let broker = BrokerProcess::start();
    let run = |args: &[&str]| -> String {
        let out = Command::new(cli_binary())
            .arg("--broker")
            .arg(broker.addr())
            .args(args)
            .env_remove("WEIR_BROKER")
            .stdin(Stdio::null())
            .output()
            .expect("run weir");
        assert!(
            out.status.success(),
            "weir {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    };
    let set = run(&[
        "quota",
        "set",
        "billing",
        "--produce-bytes-per-s",
        "1000",
        "--max-connections",
        "3",
    ]);
    assert!(set.contains("billing\tproduce 1000/s"), "{set}");
    let set = run(&["quota", "set", "billing", "--fetch-bytes-per-s", "500"]);
    assert!(
        set.contains("produce 1000/s")
            && set.contains("fetch 500/s")
            && set.contains("connections 3"),
        "set keeps the limits not given: {set}"
    );
    let got = run(&["quota", "get"]);
    assert!(got.starts_with("(default)"), "{got}");
    assert!(got.contains("billing"), "{got}");
    let removed = run(&["quota", "remove", "billing"]);
    assert!(removed.contains("produce -/s"), "{removed}");
    let status = run(&["status"]);
    assert!(status.contains("flow: load"), "{status}");
    assert!(status.contains("shedding: P0 0.0% (0 shed)"), "{status}");
}

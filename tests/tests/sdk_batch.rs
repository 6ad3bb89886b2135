//! `Producer::send_batch` against a real broker: one call, one future, and every
//! guarantee of `send` — order per (shard, class), no duplicates across retries after
//! lost acks, records of several classes split per class, the topic's shard-key rule,
//! errors reaching the one future, and `max_queued_records` counting records.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use weir_client::partitioner::shard_for_key;
use weir_client::{
    Acks, Admin, Backpressure, BatchMetadata, BatchRecord, ClientError, Message, Partitioning,
    Producer, ProducerBatch, ProducerConfig, ProducerRecord, TopicConfig,
};
use weir_protocol::ErrorCode;
use weir_tests::over_both_transports;
use weir_tests::transport::SdkBroker;
use weir_tests::{connect, read_all, BehindProxy, BrokerProcess};

const WAIT: Duration = Duration::from_secs(5);

fn value_of(m: &Message) -> String {
    String::from_utf8(m.value.to_vec()).expect("utf8")
}

/// Every (shard, offset) a batch's metadata names, in range order.
fn offsets(md: &BatchMetadata) -> Vec<(u32, u64)> {
    md.ranges
        .iter()
        .flat_map(|r| (0..u64::from(r.count)).map(move |i| (r.shard, r.base_offset + i)))
        .collect()
}

over_both_transports! {
    async fn one_call_is_stored_in_call_order_at_the_offsets_its_future_names(t) {
        let broker = SdkBroker::start(t).await;
        let client = broker.client().await;
        Admin::new(client.clone())
            .create_topic("orders", 3, TopicConfig::default())
            .await
            .expect("create");
        // Small batches, so one call of 500 records spans many wire batches.
        let producer = Producer::builder(&client)
            .max_batch_bytes(2048)
            .build()
            .await
            .expect("producer");
        let mut calls = Vec::new();
        for c in 0..4 {
            let mut batch = ProducerBatch::with_capacity("orders", 500).shard(1);
            for i in 0..500 {
                batch.push(format!("{c}-{i:04}"));
            }
            calls.push(producer.send_batch(batch).await.expect("queued"));
        }
        let mut named = Vec::new();
        for f in calls {
            let md = f.await.expect("acknowledged");
            assert_eq!(md.record_count(), 500);
            assert!(md.ranges.len() > 1, "2 KiB batches split 500 records");
            assert!(md.ranges.iter().all(|r| r.shard == 1));
            named.extend(offsets(&md));
        }
        // Ranges of one shard and class are contiguous, in call order.
        let expected: Vec<(u32, u64)> = (0..2000).map(|o| (1, o)).collect();
        assert_eq!(named, expected);

        let msgs = read_all(&client, "orders", 2000, Duration::from_secs(20)).await;
        assert_eq!(msgs.len(), 2000);
        for m in &msgs {
            assert_eq!(m.shard, 1);
            let (c, i) = value_of(m)
                .split_once('-')
                .map(|(c, i)| {
                    (
                        c.parse::<u64>().expect("call"),
                        i.parse::<u64>().expect("index"),
                    )
                })
                .expect("value");
            assert_eq!(m.offset, c * 500 + i, "record {c}-{i} out of call order");
        }
    }
}

over_both_transports! {
    async fn records_of_two_classes_in_one_call_are_split_per_class_and_keep_their_order(t) {
        let broker = SdkBroker::start(t).await;
        let client = broker.client().await;
        Admin::new(client.clone())
            .create_topic("mixed", 1, TopicConfig::default())
            .await
            .expect("create");
        let producer = Producer::builder(&client).build().await.expect("producer");
        let mut batch = ProducerBatch::new("mixed").shard(0);
        for i in 0..300 {
            // Priority 1 is P0, 9 is P3 (default class bounds); interleaved record by record.
            let priority = if i % 3 == 0 { 1 } else { 9 };
            batch.push_record(BatchRecord::new(format!("{i:03}")).priority(priority));
        }
        // The broker refuses a produce that mixes classes, so this only succeeds when the
        // producer split the call.
        let md = producer
            .send_batch(batch)
            .await
            .expect("queued")
            .await
            .expect("acknowledged");
        assert_eq!(md.record_count(), 300);
        assert!(md.ranges.len() >= 2, "two classes, two batches at least");

        let msgs = read_all(&client, "mixed", 300, Duration::from_secs(20)).await;
        assert_eq!(msgs.len(), 300);
        for class_priority in [1u8, 9] {
            let vs: Vec<u32> = msgs
                .iter()
                .filter(|m| m.priority == class_priority)
                .map(|m| value_of(m).parse().expect("index"))
                .collect();
            assert_eq!(vs.len(), if class_priority == 1 { 100 } else { 200 });
            assert!(
                vs.windows(2).all(|w| w[0] < w[1]),
                "priority {class_priority} out of call order: {vs:?}"
            );
        }
        // Each stored batch holds one class only.
        let stored: HashSet<(u32, u64)> = msgs.iter().map(|m| (m.shard, m.offset)).collect();
        let named: HashSet<(u32, u64)> = offsets(&md).into_iter().collect();
        assert_eq!(stored, named, "the future names exactly the stored offsets");
        for r in &md.ranges {
            let prios: HashSet<u8> = msgs
                .iter()
                .filter(|m| m.offset >= r.base_offset && m.offset < r.base_offset + u64::from(r.count))
                .map(|m| m.priority)
                .collect();
            assert_eq!(prios.len(), 1, "range {r:?} mixes classes");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_retries_after_disconnects_write_no_duplicates() {
    const CALLS: usize = 100;
    const PER_CALL: usize = 40;
    let BehindProxy {
        broker: _broker,
        direct,
        proxy,
        client,
    } = BehindProxy::start("payments", 3).await;
    let producer = Producer::builder(&client)
        .acks(Acks::Leader)
        .max_batch_bytes(1024)
        .retries(20)
        .retry_backoff(Duration::from_millis(20))
        .build()
        .await
        .expect("producer");
    let send = {
        let producer = producer.clone();
        tokio::spawn(async move {
            let mut futures = Vec::new();
            for c in 0..CALLS {
                // Keyed per record: each call spreads over the three shards.
                let mut batch = ProducerBatch::new("payments");
                for i in 0..PER_CALL {
                    let n = c * PER_CALL + i;
                    batch.push_record(
                        BatchRecord::new(format!("{n:06}")).key(format!("k{}", n % 11)),
                    );
                }
                futures.push(producer.send_batch(batch).await.expect("send"));
                // Paced so the cuts below land while batches are in flight.
                tokio::time::sleep(Duration::from_millis(8)).await;
            }
            futures
        })
    };
    let mut cuts = 0;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(90)).await;
        if send.is_finished() {
            break;
        }
        proxy.cut();
        cuts += 1;
    }
    let futures = send.await.expect("sender task");
    assert!(cuts >= 4, "only {cuts} cuts landed during the send");
    let mut named = HashSet::new();
    for (c, f) in futures.into_iter().enumerate() {
        let md = tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("ack in time")
            .unwrap_or_else(|e| panic!("call {c} not acknowledged: {e}"));
        assert_eq!(md.record_count(), PER_CALL as u64);
        for o in offsets(&md) {
            assert!(named.insert(o), "offset {o:?} named twice");
        }
    }
    assert!(proxy.connections() > 1, "the producer reconnected");

    let total = CALLS * PER_CALL;
    let msgs = read_all(&direct, "payments", total, Duration::from_secs(30)).await;
    let mut values = HashSet::new();
    for m in &msgs {
        assert!(
            values.insert(value_of(m)),
            "record {} stored twice",
            value_of(m)
        );
    }
    assert_eq!(msgs.len(), total, "exactly every record once");
    for shard in 0..3 {
        let vs: Vec<String> = msgs
            .iter()
            .filter(|m| m.shard == shard)
            .map(value_of)
            .collect();
        assert!(
            vs.windows(2).all(|w| w[0] < w[1]),
            "shard {shard} out of order"
        );
    }
    for m in &msgs {
        let n: usize = value_of(m).parse().expect("n");
        let key = format!("k{}", n % 11);
        assert_eq!(
            m.shard,
            shard_for_key(key.as_bytes(), 3),
            "{n} on the wrong shard"
        );
    }
    let stored: HashSet<(u32, u64)> = msgs.iter().map(|m| (m.shard, m.offset)).collect();
    assert_eq!(stored, named, "the futures name exactly the stored offsets");
}

over_both_transports! {
    async fn keys_come_from_the_batch_key_or_the_topics_rule_like_send(t) {
        let broker = SdkBroker::start(t).await;
        let client = broker.client().await;
        let admin = Admin::new(client.clone());
        admin
            .create_topic(
                "jobs",
                4,
                TopicConfig {
                    shard_key_rule: "json:user_id".into(),
                    ..Default::default()
                },
            )
            .await
            .expect("create");
        let producer = Producer::builder(&client).build().await.expect("producer");
        // Keys from the rule, per record.
        let mut by_rule = ProducerBatch::new("jobs");
        for u in 0..20 {
            by_rule.push(format!(r#"{{"user_id":"u-{u}","n":{u}}}"#));
        }
        // One key for the whole call.
        let mut by_key = ProducerBatch::new("jobs").key("tenant-7");
        for n in 0..20 {
            by_key.push(format!(r#"{{"n":{n}}}"#));
        }
        let a = producer.send_batch(by_rule).await.expect("queued");
        let b = producer.send_batch(by_key).await.expect("queued");
        a.await.expect("rule batch");
        b.await.expect("key batch");
        let msgs = read_all(&client, "jobs", 40, Duration::from_secs(20)).await;
        assert_eq!(msgs.len(), 40);
        for m in &msgs {
            assert!(!m.key.is_empty(), "every record got a key");
            assert_eq!(
                m.shard,
                shard_for_key(&m.key, 4),
                "key {:?} on the wrong shard",
                m.key
            );
        }
        let tenant: Vec<&Message> = msgs.iter().filter(|m| &m.key[..] == b"tenant-7").collect();
        assert_eq!(tenant.len(), 20);
        let users: HashSet<Bytes> = msgs
            .iter()
            .filter(|m| m.key.starts_with(b"u-"))
            .map(|m| m.key.clone())
            .collect();
        assert_eq!(users.len(), 20, "each record's own key from the rule");
        // `send` of the same record lands on the same shard as the batch put it.
        let md = producer
            .send_and_wait(ProducerRecord::new("jobs", r#"{"user_id":"u-3"}"#))
            .await
            .expect("send");
        let u3 = msgs.iter().find(|m| &m.key[..] == b"u-3").expect("u-3");
        assert_eq!(md.shard, u3.shard);
    }
}

over_both_transports! {
    async fn errors_reach_the_one_future_or_refuse_the_call(t) {
        let broker = SdkBroker::start(t).await;
        let client = broker.client().await;
        Admin::new(client.clone())
            .create_topic(
                "small",
                2,
                TopicConfig {
                    max_message_bytes: 1024,
                    ..Default::default()
                },
            )
            .await
            .expect("create");
        let producer = Producer::builder(&client)
            .config(ProducerConfig {
                max_queued_records: 1000,
                retries: 2,
                retry_backoff: Duration::from_millis(10),
                ..Default::default()
            })
            .build()
            .await
            .expect("producer");

        // Unknown topic: the broker's answer, through the future.
        let mut b = ProducerBatch::new("nope");
        b.push("x");
        let e = producer
            .send_batch(b)
            .await
            .expect("queued")
            .await
            .expect_err("no topic");
        assert_eq!(e.code(), Some(ErrorCode::UnknownTopic), "{e}");

        // A shard the topic does not have.
        let mut b = ProducerBatch::new("small").shard(5);
        b.push("x");
        let e = producer
            .send_batch(b)
            .await
            .expect("queued")
            .await
            .expect_err("bad shard");
        assert!(matches!(e, ClientError::Invalid(_)), "{e}");

        // A record the broker refuses (over the topic's max_message_bytes) fails the call,
        // even though the call's records on the other shard were stored.
        let mut b = ProducerBatch::new("small").partitioning(Partitioning::PerRecord);
        b.push_record(BatchRecord::new("fine").key("a"));
        b.push_record(BatchRecord::new(vec![7u8; 4096]).key("b"));
        let e = producer
            .send_batch(b)
            .await
            .expect("queued")
            .await
            .expect_err("too large");
        assert!(matches!(e, ClientError::Broker { .. }), "{e}");

        // Values no record may have refuse the call before anything is queued.
        let mut b = ProducerBatch::new("small");
        b.push_record(BatchRecord::new("x").priority(11));
        assert!(matches!(
            producer.send_batch(b).await,
            Err(ClientError::Invalid(_))
        ));
        // More records than the producer may hold at once can never be admitted.
        let mut b = ProducerBatch::new("small");
        for _ in 0..1001 {
            b.push("x");
        }
        assert!(matches!(
            producer.send_batch(b).await,
            Err(ClientError::Invalid(_))
        ));
        // An empty call resolves at once.
        let md = producer
            .send_batch(ProducerBatch::new("small"))
            .await
            .expect("queued")
            .await;
        assert_eq!(md.expect("empty").record_count(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_queued_records_counts_the_records_of_a_batch() {
    let mut broker = BrokerProcess::start();
    let client = connect(&broker.addr(), WAIT).await;
    Admin::new(client.clone())
        .create_topic("bp", 1, TopicConfig::default())
        .await
        .expect("create");
    let producer = Producer::builder(&client)
        .config(ProducerConfig {
            max_in_flight_per_shard: 1,
            idempotent: false,
            max_queued_records: 100,
            backpressure: Backpressure::FailFast,
            ..Default::default()
        })
        .build()
        .await
        .expect("producer");
    producer
        .send_and_wait(ProducerRecord::new("bp", "warm"))
        .await
        .expect("topic known");
    // With the broker gone nothing drains. The first call fills the one in-flight slot;
    // the next calls wait in the producer, and a call that does not fit is refused
    // whole while smaller ones still fit.
    broker.kill9();
    let call = |n: usize| {
        let mut b = ProducerBatch::new("bp");
        for _ in 0..n {
            b.push("x");
        }
        b
    };
    let _in_flight = producer.send_batch(call(60)).await.expect("in flight");
    // Give the accumulator time to hand it to its sender (bounded wait).
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _waiting = producer
        .send_batch(call(60))
        .await
        .expect("fits: 60 of 100");
    match producer.send_batch(call(60)).await {
        Err(ClientError::QueueFull(_)) => {}
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("120 records queued with max_queued_records = 100"),
    }
    let _also = producer
        .send_batch(call(40))
        .await
        .expect("fits: 100 of 100");
    assert!(matches!(
        producer.send(ProducerRecord::new("bp", "one more")).await,
        Err(ClientError::QueueFull(_))
    ));
}

over_both_transports! {
    /// The producer never builds a batch the topic would refuse: with the default 1 MiB
    /// `max_batch_bytes` and a topic whose `max_message_bytes` is 64 KiB, a call of 1 MB
    /// of records is stored whole, in batches the broker accepts.
    async fn batches_stay_within_the_topics_max_message_bytes(t) {
        let broker = SdkBroker::start(t).await;
        let client = broker.client().await;
        Admin::new(client.clone())
            .create_topic(
                "small",
                1,
                TopicConfig {
                    max_message_bytes: 64 * 1024,
                    ..TopicConfig::default()
                },
            )
            .await
            .expect("create");
        let producer = Producer::builder(&client).build().await.expect("producer");
        let mut batch = ProducerBatch::with_capacity("small", 1000).shard(0);
        for i in 0..1000 {
            batch.push(format!("{i:04}{}", "x".repeat(1020)));
        }
        let md = producer
            .send_batch(batch)
            .await
            .expect("queued")
            .await
            .expect("every record accepted");
        assert_eq!(md.record_count(), 1000);
        // One record alone larger than the topic allows is still the broker's to refuse.
        let big = producer
            .send_and_wait(ProducerRecord::new("small", vec![b'y'; 70 * 1024]))
            .await;
        match big {
            Err(ClientError::Broker { code, .. }) => assert_eq!(code, ErrorCode::MessageTooLarge),
            other => panic!("a 70 KiB record went through: {other:?}"),
        }
        let got = read_all(&client, "small", 1000, WAIT).await;
        assert_eq!(got.len(), 1000);
    }
}

over_both_transports! {
    /// `flush` waits for the records sent before it, not for an idle producer: with
    /// another task sending without pause, it still returns, and every record sent before
    /// it is settled by then.
    async fn flush_returns_under_continuous_load_with_earlier_records_settled(t) {
        use futures_util::FutureExt;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;

        let broker = SdkBroker::start(t).await;
        let client = broker.client().await;
        Admin::new(client.clone())
            .create_topic("busy", 1, TopicConfig::default())
            .await
            .expect("create");
        let producer = Producer::builder(&client).build().await.expect("producer");
        let stop = Arc::new(AtomicBool::new(false));
        let flood = {
            let (producer, stop) = (producer.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 5_000_000 {
                    // The acknowledgement of a flood record is not awaited.
                    drop(
                        producer
                            .send(ProducerRecord::new("busy", format!("flood {n}")))
                            .await
                            .expect("queued"),
                    );
                    n += 1;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut before = Vec::new();
        for i in 0..1000 {
            before.push(
                producer
                    .send(ProducerRecord::new("busy", format!("before {i}")))
                    .await
                    .expect("queued"),
            );
        }
        tokio::time::timeout(Duration::from_secs(15), producer.flush())
            .await
            .expect("flush returned while another task kept sending")
            .expect("flush");
        stop.store(true, Ordering::Relaxed);
        // Polled outside Tokio's co-operative budget, which would report some of 1,000
        // ready futures as pending within one task turn.
        let unsettled = tokio::task::unconstrained(async move {
            let mut unsettled = 0;
            for f in before {
                match f.now_or_never() {
                    Some(r) => {
                        r.expect("acknowledged");
                    }
                    None => unsettled += 1,
                }
            }
            unsettled
        })
        .await;
        assert_eq!(
            unsettled, 0,
            "records sent before the flush still pending after it"
        );
        flood.await.expect("flooder");
    }
}

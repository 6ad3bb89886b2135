//! Live resharding (issue 18 part 3) against a real broker process, and the tests
//! that need no process of their own (no kill, no proxy) also over the in-process
//! transport. The main one: a topic grows from 2 to 4 shards and shrinks to 3 while
//! keyed producers and a consumer run, with a kill -9 racing the second reshard.
//! Afterwards every acknowledged record is stored exactly once, and both the consumer
//! that ran through it all and a fresh one reading from the start see each key's
//! records in the order they were produced.
//!
//! Each key is produced by its own task, one record at a time (the next once the
//! previous is acknowledged), so its order is defined; a record refused with
//! LAYOUT_CHANGED (routed before the producer learned of a reshard) or lost to the kill
//! is sent again under a new attempt number, so a value names one attempt.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_client::{
    Admin, Client, Consumer, DeliveryFuture, Message, OffsetReset, Producer, ProducerRecord,
    RecordMetadata,
};
use weir_tests::over_both_transports;
use weir_tests::transport::{SdkBroker, Transport};
use weir_tests::{connect, read_to_end, BehindProxy, BrokerProcess, CutProxy};

const TOPIC: &str = "orders";
const KEYS: usize = 24;
/// Bound on the records one key task sends.
const MAX_PER_KEY: u64 = 20_000;

/// (key, seq, attempt) of a value `k{key}:{seq}:{attempt}`.
fn parse(v: &[u8]) -> (usize, u64, u32) {
    let s = std::str::from_utf8(v).expect("utf8");
    let mut it = s.split(':');
    let k = it.next().unwrap()[1..].parse().unwrap();
    let seq = it.next().unwrap().parse().unwrap();
    let attempt = it.next().unwrap().parse().unwrap();
    (k, seq, attempt)
}

/// Checks that in `delivered` (delivery order) each key's sequence numbers never go
/// back; returns how many records broke it, with the first few described.
fn order_breaks(delivered: &[Message]) -> (usize, Vec<String>) {
    let mut last: HashMap<usize, (u64, u32, u64)> = HashMap::new();
    let mut breaks = 0;
    let mut shown = Vec::new();
    for m in delivered {
        let (k, seq, _) = parse(&m.value);
        if let Some(&(prev, shard, offset)) = last.get(&k) {
            if seq < prev {
                breaks += 1;
                if shown.len() < 5 {
                    shown.push(format!(
                        "key {k}: seq {seq} at {}/{} after seq {prev} at {shard}/{offset}",
                        m.shard, m.offset
                    ));
                }
            }
        }
        let e = last.entry(k).or_insert((seq, m.shard, m.offset));
        if seq >= e.0 {
            *e = (seq, m.shard, m.offset);
        }
    }
    (breaks, shown)
}

/// One task per key, each sending its key's records one at a time (the next once the
/// previous is acknowledged) until `stop`; a failed send is sent again as a new
/// attempt of the same seq. Acknowledged values go to `acked`; LAYOUT_CHANGED answers
/// are counted in `refusals`.
fn key_producers(
    producer: &Arc<Producer>,
    stop: &Arc<AtomicBool>,
    acked: &Arc<Mutex<Vec<String>>>,
    refusals: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..KEYS)
        .map(|k| {
            let (producer, stop, acked, refusals) = (
                producer.clone(),
                stop.clone(),
                acked.clone(),
                refusals.clone(),
            );
            tokio::spawn(async move {
                let mut attempt = 0u32;
                let mut seq = 0u64;
                while seq < MAX_PER_KEY && !stop.load(Ordering::Acquire) {
                    attempt += 1;
                    let value = format!("k{k}:{seq}:{attempt}");
                    let rec = ProducerRecord::new(TOPIC, value.clone()).key(format!("key-{k}"));
                    let sent = match producer.send(rec).await {
                        Ok(f) => f.await,
                        Err(e) => Err(e),
                    };
                    match sent {
                        Ok(_) => {
                            acked.lock().unwrap().push(value);
                            seq += 1;
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        Err(e) => {
                            if e.code() == Some(weir_protocol::ErrorCode::LayoutChanged) {
                                refusals.fetch_add(1, Ordering::Relaxed);
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            })
        })
        .collect()
}

/// Stops [`key_producers`] and waits (bounded) for every task to end.
async fn stop_producers(stop: &AtomicBool, producers: Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, Ordering::Release);
    for p in producers {
        tokio::time::timeout(Duration::from_secs(60), p)
            .await
            .expect("producer task ends")
            .expect("producer task");
    }
}

/// A broker with a two-shard topic and [`key_producers`] running on it.
struct KeyedLoad {
    broker: SdkBroker,
    admin: Admin,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    refusals: Arc<AtomicU64>,
    producers: Vec<tokio::task::JoinHandle<()>>,
}

/// A broker with [`TOPIC`] created with two shards, and a client over `t`.
async fn two_shard_topic(t: Transport) -> (SdkBroker, weir_client::Client, Admin) {
    let broker = SdkBroker::start(t).await;
    let client = broker.client().await;
    let admin = Admin::new(client.clone());
    admin
        .create_topic(TOPIC, 2, Default::default())
        .await
        .expect("create topic");
    (broker, client, admin)
}

impl KeyedLoad {
    async fn start(t: Transport) -> KeyedLoad {
        let (broker, client, admin) = two_shard_topic(t).await;
        let producer = Arc::new(
            Producer::builder(&client)
                .retries(20)
                .retry_backoff(Duration::from_millis(20))
                .build()
                .await
                .expect("producer"),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<String>>> = Arc::default();
        let refusals = Arc::new(AtomicU64::new(0));
        let producers = key_producers(&producer, &stop, &acked, &refusals);
        KeyedLoad {
            broker,
            admin,
            stop,
            acked,
            refusals,
            producers,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_keep_their_order_through_a_grow_a_kill_and_a_shrink() {
    let KeyedLoad {
        broker,
        admin,
        stop,
        acked,
        refusals: layout_refusals,
        producers,
    } = KeyedLoad::start(Transport::Tcp).await;
    // It kills the broker: a process.
    let SdkBroker::Process(mut broker) = broker else {
        unreachable!("a TCP broker is a process")
    };

    // A consumer reading every shard from the start while all of it happens.
    let live: Arc<Mutex<Vec<Message>>> = Arc::default();
    let reader = {
        let (live, stop, addr) = (live.clone(), stop.clone(), broker.addr());
        tokio::spawn(async move {
            let client = connect(&addr, Duration::from_secs(5)).await;
            let mut consumer = Consumer::builder(&client)
                .topic(TOPIC)
                .reset(OffsetReset::Earliest)
                .fetch_max_wait(Duration::from_millis(50))
                .max_fetch_bytes(16 * 1024)
                .build()
                .expect("consumer");
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
                match consumer.poll(1000, Duration::from_millis(100)).await {
                    Ok(got) => live.lock().unwrap().extend(got),
                    Err(e) => {
                        eprintln!("live consumer: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        })
    };

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let grown = admin.reshard_topic(TOPIC, 4).await.expect("grow to 4");
    assert_eq!((grown.epoch, grown.from_shards, grown.to_shards), (1, 2, 4));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The shrink races a kill -9: recorded or not, the topic is whole afterwards.
    let shrink = {
        let admin = admin.clone();
        tokio::spawn(async move { admin.reshard_topic(TOPIC, 3).await })
    };
    tokio::time::sleep(Duration::from_millis(3)).await;
    broker.kill9();
    broker.restart();
    // Its answer may be lost with the broker (the client then tries again, and a
    // shrink already recorded is refused as a no-op): what counts is the topic.
    let answered = tokio::time::timeout(Duration::from_secs(30), shrink).await;
    eprintln!("the shrink racing the kill answered {answered:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let active = loop {
        match admin.describe_topic(TOPIC).await {
            Ok(t) => break t.active_shards,
            Err(e) => {
                assert!(Instant::now() < deadline, "broker back: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    eprintln!("after the kill the topic has {active} active shards");
    if active != 3 {
        assert_eq!(active, 4, "the shrink is recorded whole or not at all");
        admin.reshard_topic(TOPIC, 3).await.expect("shrink to 3");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_producers(&stop, producers).await;
    reader.await.expect("live consumer task");

    let meta = admin.describe_topic(TOPIC).await.expect("describe");
    assert_eq!(meta.active_shards, 3);
    assert_eq!(meta.shards.len(), 4, "the sealed shard stays readable");
    assert_eq!(meta.reshards.len(), 2);
    assert!(
        meta.shards.iter().all(|s| s.high_watermark > 0),
        "every shard got records: {:?}",
        meta.shards
    );

    // Every acknowledged value is stored exactly once.
    let client = connect(&broker.addr(), Duration::from_secs(5)).await;
    let stored = read_to_end(&client, TOPIC, Duration::from_secs(60)).await;
    let mut count: HashMap<&[u8], usize> = HashMap::new();
    for m in &stored {
        *count.entry(&m.value[..]).or_default() += 1;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 1000,
        "only {} records acknowledged",
        acked.len()
    );
    let mut missing = 0;
    for v in &acked {
        match count.get(v.as_bytes()) {
            Some(1) => {}
            Some(n) => panic!("acknowledged {v} stored {n} times"),
            None => missing += 1,
        }
    }
    assert_eq!(missing, 0, "{missing} acknowledged records missing");
    // Each key's acknowledged records are stored once per seq.
    let mut per_key: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for v in &acked {
        let (k, seq, _) = parse(v.as_bytes());
        per_key.entry(k).or_default().push(seq);
    }
    for (k, seqs) in &per_key {
        assert!(
            seqs.iter().enumerate().all(|(i, s)| *s == i as u64),
            "key {k}: acknowledged seqs not 0..n"
        );
    }

    // Key order, for a fresh reader and for the one that read through the reshards.
    let (breaks, shown) = order_breaks(&stored);
    assert_eq!(breaks, 0, "fresh reader: {shown:?}");
    let live = live.lock().unwrap().clone();
    let (breaks, shown) = order_breaks(&live);
    assert_eq!(breaks, 0, "live reader: {shown:?}");
    eprintln!(
        "acked {}, stored {}, live read {}, LAYOUT_CHANGED answers {}",
        acked.len(),
        stored.len(),
        live.len(),
        layout_refusals.load(Ordering::Relaxed)
    );
}

/// (global poll counter, member, shard, value) of one delivery.
type Delivery = (u64, usize, u32, String);

over_both_transports! {
    /// A group of two members reading while the topic grows from 2 to 4 shards: the
    /// group rebalances onto the new shards (both get used), every acknowledged record is
    /// delivered, and in the order the members received them (a counter shared by both)
    /// each key's first deliveries go 0, 1, 2, ... — a member handed a key's new shard
    /// waits until the group has committed the key's old shard up to the cut. Members
    /// commit after every poll, as `tests/consumer_group.rs` does, and read more slowly
    /// than the keys are produced, so the old shards still hold a backlog of a key's
    /// records when its new shard gets the next ones (without the gate a member reads
    /// those first).
    async fn a_group_rebalances_onto_new_shards_and_keeps_key_order(t) {
        let KeyedLoad {
            broker,
            admin,
            stop,
            acked,
            refusals,
            producers,
        } = KeyedLoad::start(t).await;

        let deliveries: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let counter = Arc::new(AtomicU64::new(0));
        let members_stop = Arc::new(AtomicBool::new(false));
        let mut members = Vec::new();
        for member in 0..2 {
            let (deliveries, counter, stop, client) = (
                deliveries.clone(),
                counter.clone(),
                members_stop.clone(),
                broker.client().await,
            );
            members.push(tokio::spawn(async move {
                let mut consumer = Consumer::builder(&client)
                    .topic(TOPIC)
                    .group("readers")
                    .auto_commit(false)
                    .reset(OffsetReset::Earliest)
                    .session_timeout(Duration::from_secs(3))
                    .fetch_max_wait(Duration::from_millis(50))
                    .max_fetch_bytes(8 * 1024)
                    .build()
                    .expect("consumer");
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
                    // Slower than the producers (about 3k records/s for the two), so
                    // the old shards hold a backlog when the new ones get records.
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    match consumer.poll(50, Duration::from_millis(100)).await {
                        Ok(got) => {
                            let n = counter.fetch_add(1, Ordering::AcqRel);
                            {
                                let mut d = deliveries.lock().unwrap();
                                for m in got {
                                    let v = String::from_utf8(m.value.to_vec()).unwrap();
                                    d.push((n, member, m.shard, v));
                                }
                            }
                            if let Err(e) = consumer.commit().await {
                                eprintln!("member {member}: commit: {e}");
                            }
                        }
                        Err(e) => {
                            eprintln!("member {member}: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                let _ = consumer.close().await;
            }));
        }

        tokio::time::sleep(Duration::from_millis(2000)).await;
        admin.reshard_topic(TOPIC, 4).await.expect("grow to 4");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        stop_producers(&stop, producers).await;
        let acked = acked.lock().unwrap().clone();
        // Let the members read what is left.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let seen: std::collections::HashSet<String> = deliveries
                .lock()
                .unwrap()
                .iter()
                .map(|d| d.3.clone())
                .collect();
            if acked.iter().all(|v| seen.contains(v)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} acknowledged records delivered",
                acked.iter().filter(|v| seen.contains(*v)).count(),
                acked.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        members_stop.store(true, Ordering::Release);
        for m in members {
            m.await.expect("member task");
        }

        let mut d = deliveries.lock().unwrap().clone();
        d.sort_by_key(|x| x.0);
        let shards: std::collections::BTreeSet<u32> = d.iter().map(|x| x.2).collect();
        assert_eq!(
            shards.into_iter().collect::<Vec<_>>(),
            [0, 1, 2, 3],
            "the group reads the new shards"
        );
        let members: std::collections::BTreeSet<usize> = d.iter().map(|x| x.1).collect();
        assert_eq!(members.len(), 2, "both members got records");
        // Per key, the first delivery of each seq comes in seq order.
        let mut next: HashMap<usize, u64> = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for (n, member, shard, v) in &d {
            let (k, seq, _) = parse(v.as_bytes());
            let want = next.entry(k).or_insert(0);
            if seq < *want || !seen.insert((k, seq)) {
                continue; // delivered again after a rebalance, or a stored unacknowledged attempt
            }
            assert_eq!(
                seq, *want,
                "key {k}: seq {seq} delivered (poll {n}, member {member}, shard {shard}) \
                 before seq {want}"
            );
            *want += 1;
        }
        eprintln!(
            "acked {}, delivered {}, LAYOUT_CHANGED answers {}",
            acked.len(),
            d.len(),
            refusals.load(Ordering::Relaxed)
        );
    }
}

over_both_transports! {
    /// An open queue (queue mode) leases from the shards a reshard adds: records written
    /// to them after the queue opened are leased, acknowledged, and none twice.
    async fn an_open_queue_leases_from_new_shards(t) {
        let broker = SdkBroker::start(t).await;
        let client = broker.client().await;
        let admin = Admin::new(client.clone());
        admin
            .create_topic("jobs", 1, Default::default())
            .await
            .expect("create topic");
        let producer = Producer::builder(&client).build().await.expect("producer");
        let q = weir_client::QueueConsumer::with_config(
            &client,
            "workers",
            "jobs",
            weir_client::QueueConfig {
                max_wait: Duration::from_millis(100),
                ..Default::default()
            },
        );
        let send = |i: usize| ProducerRecord::new("jobs", format!("job-{i}")).key(format!("k{i}"));
        for i in 0..10 {
            producer.send_and_wait(send(i)).await.expect("produce");
        }
        let mut leased = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while leased.len() < 10 && Instant::now() < deadline {
            leased.extend(q.fetch(50).await.expect("lease"));
        }
        assert_eq!(leased.len(), 10);
        admin.reshard_topic("jobs", 3).await.expect("grow to 3");
        // Keys sent again until they land: the first sends after the reshard may come
        // back LAYOUT_CHANGED while the producer learns the new count.
        let mut stored_on = std::collections::BTreeSet::new();
        for i in 10..60 {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match producer.send_and_wait(send(i)).await {
                    Ok(md) => {
                        stored_on.insert(md.shard);
                        break;
                    }
                    Err(e) => {
                        assert!(Instant::now() < deadline, "job-{i}: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
        assert!(
            stored_on.contains(&1) && stored_on.contains(&2),
            "records went to the new shards: {stored_on:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while leased.len() < 60 && Instant::now() < deadline {
            leased.extend(q.fetch(50).await.expect("lease"));
        }
        let values: std::collections::BTreeSet<String> = leased
            .iter()
            .map(|m| String::from_utf8(m.message.value.to_vec()).unwrap())
            .collect();
        assert_eq!(leased.len(), 60, "every job leased once");
        assert_eq!(values.len(), 60);
        let shards: std::collections::BTreeSet<u32> =
            leased.iter().map(|m| m.message.shard).collect();
        assert!(shards.contains(&2), "leased from a new shard: {shards:?}");
        for r in q.ack_many(&leased).await.expect("ack") {
            r.expect("ack accepted");
        }
    }
}

over_both_transports! {
    /// With `auto_reshard` on, a topic whose ingest passes its shards' capacity is split
    /// by the broker itself, and merged again once it has stayed cold; both decisions are
    /// in the topic's history with the load that caused them. (Capacity is set tiny so a
    /// test can pass it.)
    async fn the_broker_splits_a_hot_topic_and_merges_it_when_cold(t) {
        let broker = SdkBroker::start_with_env(t, &[
            ("WEIR_AUTO_RESHARD", "true"),
            ("WEIR_SHARD_CAPACITY_RECORDS_PER_S", "400"),
            ("WEIR_AUTO_RESHARD_INTERVAL_S", "3"),
            ("WEIR_AUTO_RESHARD_COLD_S", "3"),
        ])
        .await;
        let client = broker.client().await;
        let admin = Admin::new(client.clone());
        admin
            .create_topic("hot", 1, Default::default())
            .await
            .expect("create topic");
        let producer = Producer::builder(&client).build().await.expect("producer");
        // About 1000 records/s, keyless (so the producer follows the shard count without
        // refusals), until the topic has split.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut i = 0u64;
        let split = loop {
            for _ in 0..50 {
                let _ = producer
                    .send(ProducerRecord::new("hot", format!("v{i}")))
                    .await;
                i += 1;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if i.is_multiple_of(1000) {
                let t = admin.describe_topic("hot").await.expect("describe");
                if t.active_shards > 1 {
                    break t;
                }
            }
            assert!(Instant::now() < deadline, "no split within 60 s");
        };
        producer.flush().await.expect("flush");
        let first = &split.reshards[0];
        assert_eq!(first.from_shards, 1);
        assert!(first.to_shards >= 2);
        assert!(
            first.reason.starts_with("auto split") && first.reason.contains("forecast"),
            "{}",
            first.reason
        );
        // Idle now: cold for 3 s past the 3 s interval, it merges back.
        let deadline = Instant::now() + Duration::from_secs(60);
        let merged = loop {
            let t = admin.describe_topic("hot").await.expect("describe");
            if t.reshards.len() > 1 {
                break t;
            }
            assert!(Instant::now() < deadline, "no merge within 60 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let second = &merged.reshards[1];
        assert!(second.to_shards < second.from_shards, "{second:?}");
        assert!(second.reason.starts_with("auto merge"), "{}", second.reason);
        eprintln!("split: {}\nmerge: {}", first.reason, second.reason);
    }
}

over_both_transports! {
    /// Pipelined sends: one task sends every key's records back to back without waiting
    /// for any acknowledgement, while the topic grows 2 → 4 and shrinks 4 → 3. The
    /// producer takes back the batches the reshards caught (refused LAYOUT_CHANGED, or
    /// still queued under the old count) and places their records again by the new count
    /// before any later record, so every send succeeds (none comes back LAYOUT_CHANGED
    /// for the caller to resend) and a fresh reader sees each key's records exactly once
    /// and in the order they were sent. Before, the refused records failed and pipelined
    /// records of the same key could overtake them.
    async fn pipelined_sends_of_a_key_keep_their_order_across_reshards(t) {
        const TOTAL: u64 = 30_000;
        const PIPE_KEYS: usize = 16;
        let (_broker, client, admin) = two_shard_topic(t).await;
        let producer = Producer::builder(&client).build().await.expect("producer");
        let sent = Arc::new(AtomicU64::new(0));
        let resharder = {
            let (admin, sent) = (admin.clone(), sent.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                for (at, to) in [(TOTAL / 4, 4), (TOTAL / 2, 3)] {
                    while sent.load(Ordering::Acquire) < at {
                        assert!(started.elapsed() < Duration::from_secs(60), "sends stalled");
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    admin.reshard_topic(TOPIC, to).await.expect("reshard");
                }
            })
        };
        let mut futures = Vec::with_capacity(TOTAL as usize);
        for i in 0..TOTAL {
            let k = i as usize % PIPE_KEYS;
            let seq = i / PIPE_KEYS as u64;
            let rec = ProducerRecord::new(TOPIC, format!("k{k}:{seq}:1")).key(format!("key-{k}"));
            futures.push(producer.send(rec).await.expect("queued"));
            sent.store(i + 1, Ordering::Release);
            if i % 200 == 0 {
                // Let the reshards land while sends are in flight.
                tokio::task::yield_now().await;
            }
        }
        tokio::time::timeout(Duration::from_secs(60), resharder)
            .await
            .expect("reshards in time")
            .expect("resharder");
        let mut failed = Vec::new();
        for (i, f) in futures.into_iter().enumerate() {
            match tokio::time::timeout(Duration::from_secs(60), f)
                .await
                .expect("every send settles")
            {
                Ok(_) => {}
                Err(e) => failed.push(format!("record {i}: {e}")),
            }
        }
        assert!(
            failed.is_empty(),
            "{} sends failed, first: {:?}",
            failed.len(),
            &failed[..failed.len().min(3)]
        );
        let meta = admin.describe_topic(TOPIC).await.expect("describe");
        assert_eq!((meta.active_shards, meta.reshards.len()), (3, 2));
        let stored = read_to_end(&client, TOPIC, Duration::from_secs(60)).await;
        assert_eq!(stored.len() as u64, TOTAL, "every record stored once");
        let mut seen = std::collections::HashSet::new();
        for m in &stored {
            assert!(seen.insert(m.value.clone()), "stored twice: {:?}", m.value);
        }
        let (breaks, shown) = order_breaks(&stored);
        assert_eq!(breaks, 0, "{shown:?}");
    }
}

/// A reshard while a producer's batches are stored but not acknowledged (their answers
/// lost, then the connection): the producer sends them again after the reshard, to
/// their old shard, and the broker answers a retry of a stored batch with its offsets
/// even where its keys have moved (a grow) or its shard is sealed (a shrink). So every
/// record is acknowledged and stored once. (Before: such retries were answered
/// LAYOUT_CHANGED and the SDK placed the records again by the new count, all but the
/// first batch of each lane, which it had not marked as perhaps stored: stored twice.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grow_while_answers_are_lost_stores_each_record_once() {
    reshard_while_answers_are_lost(2, 4).await;
}

/// [`a_grow_while_answers_are_lost_stores_each_record_once`] for a shrink: retries
/// reach shards the reshard sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shrink_while_answers_are_lost_stores_each_record_once() {
    reshard_while_answers_are_lost(4, 2).await;
}

async fn reshard_while_answers_are_lost(from: u32, to: u32) {
    const RECORDS: usize = 600;
    let link = ProxiedProducer::start(from).await;
    link.proxy.mute();
    let send = link.spawn_sends(RECORDS);
    // The lanes' windows fill and those batches are stored; none is answered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored_unanswered = link
        .admin
        .describe_topic(TOPIC)
        .await
        .expect("describe")
        .shards
        .iter()
        .map(|s| s.high_watermark)
        .sum::<u64>()
        - 1;
    // Several batches per lane (256 bytes hold about six of these records).
    assert!(
        stored_unanswered >= 10 * u64::from(from),
        "only {stored_unanswered} records stored while the answers were lost"
    );
    link.proxy.block();
    let done = link.admin.reshard_topic(TOPIC, to).await.expect("reshard");
    assert_eq!((done.from_shards, done.to_shards), (from, to));
    tokio::time::sleep(Duration::from_millis(100)).await;
    link.proxy.heal();

    let mut acked: BTreeMap<(u32, u64), String> = BTreeMap::new();
    for (i, md) in acknowledged(send).await.into_iter().enumerate() {
        let prev = acked.insert((md.shard, md.offset), format!("r{i:04}"));
        assert!(prev.is_none(), "records {prev:?} and {i} acked at {md:?}");
    }
    for m in link.stored_once(RECORDS).await {
        let v = String::from_utf8(m.value.to_vec()).expect("utf8");
        if v != "warm-up" {
            assert_eq!(
                acked.get(&(m.shard, m.offset)),
                Some(&v),
                "the ack of {v} names where it is stored"
            );
        }
    }
}

/// Records whose attempts failed on a lost connection (the producer cannot tell
/// whether they were stored) and were then answered LAYOUT_CHANGED once the broker
/// could be reached again: that answer says they are not stored (the broker looks for
/// a retry first), so the producer places them again by the new count and they are
/// acknowledged, where they used to fail as of unknown fate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_refused_for_a_reshard_after_a_lost_connection_are_placed_again() {
    const RECORDS: usize = 300;
    let link = ProxiedProducer::start(2).await;
    // Every attempt now meets a connection that closes at once.
    link.proxy.block();
    let send = link.spawn_sends(RECORDS);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let done = link.admin.reshard_topic(TOPIC, 4).await.expect("grow to 4");
    assert_eq!(done.to_shards, 4);
    link.proxy.heal();

    let moved = acknowledged(send)
        .await
        .iter()
        .filter(|md| md.shard >= 2)
        .count();
    assert!(moved > 0, "no record went to the new shards");
    link.stored_once(RECORDS).await;
}

/// A broker with [`TOPIC`], and a producer that reaches it through a [`CutProxy`]
/// (small batches, five in flight per lane, quick retries) and has stored one record,
/// `warm-up`.
struct ProxiedProducer {
    _broker: BrokerProcess,
    direct: Client,
    admin: Admin,
    proxy: CutProxy,
    producer: Producer,
}

impl ProxiedProducer {
    async fn start(shards: u32) -> ProxiedProducer {
        let BehindProxy {
            broker,
            direct,
            proxy,
            client,
        } = BehindProxy::start(TOPIC, shards).await;
        let admin = Admin::new(direct.clone());
        let producer = Producer::builder(&client)
            .linger(Duration::from_millis(1))
            .max_batch_bytes(256)
            .fixed_in_flight_per_shard(5)
            .retries(50)
            .retry_backoff(Duration::from_millis(20))
            .retry_backoff_max(Duration::from_millis(100))
            .build()
            .await
            .expect("producer");
        producer
            .send_and_wait(ProducerRecord::new(TOPIC, "warm-up").key("key-0"))
            .await
            .expect("first record");
        ProxiedProducer {
            _broker: broker,
            direct,
            admin,
            proxy,
            producer,
        }
    }

    /// Sends `r0000`, `r0001`, ... (keys `key-0` .. `key-23` in turn) from a task,
    /// which yields their futures.
    fn spawn_sends(&self, records: usize) -> tokio::task::JoinHandle<Vec<DeliveryFuture>> {
        let producer = self.producer.clone();
        tokio::spawn(async move {
            let mut futures = Vec::with_capacity(records);
            for i in 0..records {
                let rec =
                    ProducerRecord::new(TOPIC, format!("r{i:04}")).key(format!("key-{}", i % KEYS));
                futures.push(producer.send(rec).await.expect("send"));
            }
            futures
        })
    }

    /// The topic as stored, checked to hold each of `records` sends and the warm-up
    /// exactly once.
    async fn stored_once(&self, records: usize) -> Vec<Message> {
        let messages = read_to_end(&self.direct, TOPIC, Duration::from_secs(30)).await;
        let mut count: HashMap<String, usize> = HashMap::new();
        for m in &messages {
            *count
                .entry(String::from_utf8(m.value.to_vec()).expect("utf8"))
                .or_default() += 1;
        }
        let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "stored more than once: {twice:?}");
        assert_eq!(messages.len(), records + 1, "every record once");
        messages
    }
}

/// Every send of [`ProxiedProducer::spawn_sends`] acknowledged (in time), in order.
async fn acknowledged(send: tokio::task::JoinHandle<Vec<DeliveryFuture>>) -> Vec<RecordMetadata> {
    let futures = tokio::time::timeout(Duration::from_secs(60), send)
        .await
        .expect("sends queued in time")
        .expect("sender task");
    let mut out = Vec::with_capacity(futures.len());
    for (i, f) in futures.into_iter().enumerate() {
        out.push(
            tokio::time::timeout(Duration::from_secs(60), f)
                .await
                .expect("ack in time")
                .unwrap_or_else(|e| panic!("record {i} not acknowledged: {e}")),
        );
    }
    out
}

//! Produce to a multi-shard topic and read everything back: every record exactly once,
//! records of one key on one shard and in the order they were sent.

use std::collections::HashMap;
use std::time::Duration;

use weir_client::{Admin, Producer, ProducerRecord};
use weir_tests::over_both_transports;
use weir_tests::transport::SdkBroker;
use weir_tests::{connect, metric, read_all, BrokerProcess};

const SHARDS: u32 = 4;
const KEYS: usize = 20;
const SEQS: usize = 100;

over_both_transports! {
    async fn keyed_records_keep_order_per_key_across_shards(t) {
        let broker = SdkBroker::start(t).await;
        keyed_round_trip(broker.client().await).await;
    }
}

/// The same guarantees with connections on pinned per-core runtimes; the broker must
/// really run them there (its threads are named `weir-core-<i>`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_per_core_runtime_keeps_the_same_guarantees() {
    let broker = BrokerProcess::start_with_env(&[
        ("WEIR_RUNTIME", "thread_per_core"),
        ("WEIR_RUNTIME_THREADS", "3"),
    ]);
    let pid = broker.pid().expect("broker pid");
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("list broker threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .filter(|n| n.starts_with("weir-core-"))
        .collect();
    names.sort();
    assert_eq!(names, ["weir-core-0", "weir-core-1", "weir-core-2"]);
    // More connections than cores, so the round robin uses every core.
    let extra = [
        connect(&broker.addr(), Duration::from_secs(5)).await,
        connect(&broker.addr(), Duration::from_secs(5)).await,
    ];
    keyed_round_trip(connect(&broker.addr(), Duration::from_secs(5)).await).await;
    drop(extra);
    // Every request was read on a core thread, and every core served some.
    let mut on_cores = 0;
    for core in 0..3 {
        let name = format!("weir_requests_on_core_total{{core=\"{core}\"}}");
        let n = metric(&broker, &name).await;
        assert!(n > 0, "core {core} served no request");
        on_cores += n;
    }
    assert_eq!(on_cores, metric(&broker, "weir_requests_total").await);
    // Core threads are pinned to one CPU each; the shard writers, made by a
    // CreateTopic served on a core thread, must not inherit that pin.
    let process_cpus = cpus_allowed(&format!("/proc/{pid}/status"));
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).expect("list broker threads") {
        let dir = entry.expect("thread entry").path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let cpus = cpus_allowed(&dir.join("status").to_string_lossy());
        if name.starts_with("weir-core-") && process_cpus.len() > 1 {
            assert_eq!(cpus.len(), 1, "{} not pinned: {cpus:?}", name.trim());
        }
        if name.starts_with("weir-w-orders") {
            assert_eq!(
                cpus,
                process_cpus,
                "writer {} kept a core's pin",
                name.trim()
            );
        }
    }
}

/// The CPUs a `/proc/.../status` file says the thread may run on.
fn cpus_allowed(status: &str) -> Vec<u32> {
    let text = std::fs::read_to_string(status).expect("read status");
    let list = text
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim()
        .to_string();
    list.split(',')
        .flat_map(|part| match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().unwrap()..=b.parse::<u32>().unwrap()).collect(),
            None => vec![part.parse::<u32>().unwrap()],
        })
        .collect()
}

async fn keyed_round_trip(client: weir_client::Client) {
    Admin::new(client.clone())
        .create_topic("orders", SHARDS, Default::default())
        .await
        .expect("create topic");

    // Interleave keys so every batch mixes keys and every shard gets many batches.
    let producer = Producer::builder(&client)
        .linger(Duration::from_millis(2))
        .max_batch_bytes(4 * 1024)
        .build()
        .await
        .expect("producer");
    let mut acks = Vec::with_capacity(KEYS * SEQS);
    for seq in 0..SEQS {
        for k in 0..KEYS {
            let rec = ProducerRecord::new("orders", format!("k{k}:{seq}")).key(format!("k{k}"));
            acks.push((k, seq, producer.send(rec).await.expect("send")));
        }
    }
    let mut acked = HashMap::new();
    for (k, seq, f) in acks {
        let md = tokio::time::timeout(Duration::from_secs(30), f)
            .await
            .expect("ack in time")
            .expect("acked");
        assert!(
            acked.insert((md.shard, md.offset), (k, seq)).is_none(),
            "two records acked at {md:?}"
        );
    }

    let messages = read_all(&client, "orders", KEYS * SEQS, Duration::from_secs(30)).await;
    assert_eq!(messages.len(), KEYS * SEQS, "every record exactly once");

    let mut seen: HashMap<(u32, u64), ()> = HashMap::new();
    let mut shard_of_key: HashMap<String, u32> = HashMap::new();
    // Per shard, messages arrive in offset order; collect values per key in that order.
    let mut by_shard: HashMap<u32, Vec<&weir_client::Message>> = HashMap::new();
    for m in &messages {
        assert!(
            seen.insert((m.shard, m.offset), ()).is_none(),
            "duplicate {}/{}",
            m.shard,
            m.offset
        );
        by_shard.entry(m.shard).or_default().push(m);
    }
    assert_eq!(
        by_shard.len() as u32,
        SHARDS,
        "20 keys spread over all 4 shards"
    );
    let mut values_of_key: HashMap<String, Vec<usize>> = HashMap::new();
    for (shard, ms) in &by_shard {
        assert!(
            ms.windows(2).all(|w| w[0].offset < w[1].offset),
            "shard {shard} out of offset order"
        );
        for m in ms {
            let key = String::from_utf8(m.key.to_vec()).expect("utf8 key");
            let value = String::from_utf8(m.value.to_vec()).expect("utf8 value");
            let (vk, seq) = value.split_once(':').expect("key:seq");
            assert_eq!(vk, key, "value belongs to its key");
            let seq: usize = seq.parse().expect("seq");
            // The record is where its ack said it is.
            let k: usize = key[1..].parse().expect("key number");
            assert_eq!(
                acked.get(&(m.shard, m.offset)),
                Some(&(k, seq)),
                "ack offset matches stored record"
            );
            let s = *shard_of_key.entry(key.clone()).or_insert(*shard);
            assert_eq!(s, *shard, "key {key} on two shards");
            values_of_key.entry(key).or_default().push(seq);
        }
    }
    assert_eq!(values_of_key.len(), KEYS);
    for (key, seqs) in values_of_key {
        assert_eq!(
            seqs,
            (0..SEQS).collect::<Vec<_>>(),
            "key {key}: values out of send order or missing"
        );
    }
}

over_both_transports! {
    /// A consumer of several shards hands out a record that reaches one of them as soon
    /// as it is there, without waiting for the other shards' long polls to run out
    /// (before, a fetch round waited for every shard's answer: up to `fetch_max_wait`
    /// late whenever some shard was idle). Both orders.
    async fn a_record_on_one_shard_is_not_held_back_by_idle_shards(t) {
        use weir_client::{Consumer, DeliveryOrder, OffsetReset};
        let broker = SdkBroker::start(t).await;
        let client = broker.client().await;
        Admin::new(client.clone())
            .create_topic("idle", SHARDS, Default::default())
            .await
            .expect("create topic");
        let producer = Producer::builder(&client).build().await.expect("producer");
        for (round, order) in [DeliveryOrder::Offset, DeliveryOrder::Priority]
            .into_iter()
            .enumerate()
        {
            let mut consumer = Consumer::builder(&client)
                .topic("idle")
                .reset(OffsetReset::Latest)
                .order(order)
                .fetch_max_wait(Duration::from_secs(20))
                .build()
                .expect("consumer");
            // Resolves the positions (at the end); the poll below sends a 20 s long
            // poll to every shard.
            assert!(consumer
                .poll(10, Duration::ZERO)
                .await
                .expect("first poll")
                .is_empty());
            let waiting = tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let got = consumer.poll(10, Duration::from_secs(30)).await;
                (started.elapsed(), got)
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            let value = format!("only-{round}");
            producer
                .send_and_wait(ProducerRecord::new("idle", value.clone()).shard(2))
                .await
                .expect("produce");
            let (waited, got) = waiting.await.expect("poll task");
            let got = got.expect("poll");
            assert_eq!(got.len(), 1, "{order:?}");
            assert_eq!((got[0].shard, &got[0].value[..]), (2, value.as_bytes()));
            // Well inside the idle shards' 20 s: the record did not wait for them.
            assert!(
                waited < Duration::from_secs(10),
                "{order:?}: the record came after {waited:?}"
            );
        }
    }
}

over_both_transports! {
    /// A seek while long polls are in flight: the shard is read again from the new
    /// position, and every record comes once per pass, in order (the fetch sent from
    /// the old position is left to finish and its answer dropped).
    async fn a_seek_with_long_polls_in_flight_reads_each_record_once(t) {
        use weir_client::{Consumer, Message, OffsetReset};
        let broker = SdkBroker::start(t).await;
        let client = broker.client().await;
        Admin::new(client.clone())
            .create_topic("seek", 2, Default::default())
            .await
            .expect("create topic");
        let producer = Producer::builder(&client).build().await.expect("producer");
        let send = |i: u32| ProducerRecord::new("seek", format!("v{i}")).shard(1);
        for i in 0..3 {
            producer.send_and_wait(send(i)).await.expect("produce");
        }
        let mut consumer = Consumer::builder(&client)
            .topic("seek")
            .reset(OffsetReset::Earliest)
            .fetch_max_wait(Duration::from_millis(1500))
            .build()
            .expect("consumer");
        async fn read(c: &mut Consumer, n: usize) -> Vec<Message> {
            let mut got = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while got.len() < n && tokio::time::Instant::now() < deadline {
                got.extend(c.poll(10, Duration::from_millis(200)).await.expect("poll"));
            }
            got
        }
        let offsets = |m: &[Message]| m.iter().map(|m| (m.shard, m.offset)).collect::<Vec<_>>();
        let first = read(&mut consumer, 3).await;
        assert_eq!(offsets(&first), [(1, 0), (1, 1), (1, 2)]);
        // Both shards have long polls in flight now (shard 1 from offset 3).
        tokio::time::sleep(Duration::from_millis(100)).await;
        consumer.seek("seek", 1, 1).expect("seek");
        let again = read(&mut consumer, 2).await;
        assert_eq!(offsets(&again), [(1, 1), (1, 2)]);
        // A new record reaches both the fetch from before the seek (sent from 3) and
        // the one after: it is handed out once.
        producer.send_and_wait(send(3)).await.expect("produce");
        let new = read(&mut consumer, 1).await;
        assert_eq!(offsets(&new), [(1, 3)]);
        let more = consumer.poll(10, Duration::from_millis(2000)).await.expect("poll");
        assert!(more.is_empty(), "delivered again: {:?}", offsets(&more));
    }
}

over_both_transports! {
    /// A batch damaged on disk on one shard hides nothing intact: every shard's
    /// records, and the damaged shard's record before the damage, are handed out; a poll
    /// that meets the damage fails naming its offset; a seek past it reads on. In
    /// priority order the damaged shard's intact record was never handed out before
    /// (the broker's class index stopped at the damage, and an answer failed whole when
    /// any lane met it). Several fresh consumers, so that the order in which the shards
    /// answer varies. Both orders.
    async fn a_damaged_batch_on_one_shard_does_not_hide_the_others(t) {
        use weir_client::{Consumer, DeliveryOrder, OffsetReset};
        let broker = SdkBroker::start(t).await;
        let client = broker.client().await;
        Admin::new(client.clone())
            .create_topic("damaged", SHARDS, Default::default())
            .await
            .expect("create topic");
        let producer = Producer::builder(&client).build().await.expect("producer");
        // One batch per record: shard 3's second batch is the damaged one.
        for shard in 0..SHARDS {
            for i in 0..3 {
                let value = format!("record-{shard}-{i}-of-the-damaged-topic");
                producer
                    .send_and_wait(ProducerRecord::new("damaged", value).shard(shard))
                    .await
                    .expect("produce");
            }
        }
        weir_tests::damage_first(&broker.data_dir(), b"record-3-1-of-the-damaged-topic");
        let healthy: Vec<(u32, u64)> = (0..SHARDS - 1)
            .flat_map(|s| (0..3).map(move |o| (s, o)))
            .chain([(3, 0)])
            .collect();
        for order in [DeliveryOrder::Offset, DeliveryOrder::Priority] {
            for attempt in 0..4 {
                let mut consumer = Consumer::builder(&client)
                    .topic("damaged")
                    .reset(OffsetReset::Earliest)
                    .order(order)
                    .fetch_max_wait(Duration::from_millis(200))
                    .build()
                    .expect("consumer");
                let mut got = Vec::new();
                let mut errors = Vec::new();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                for _ in 0..1000 {
                    if tokio::time::Instant::now() > deadline {
                        break;
                    }
                    match consumer.poll(100, Duration::from_millis(300)).await {
                        Ok(m) => got.extend(m.iter().map(|m| (m.shard, m.offset))),
                        Err(e) => errors.push(e.to_string()),
                    }
                    if got.len() >= healthy.len() && !errors.is_empty() {
                        break;
                    }
                }
                got.sort();
                assert_eq!(got, healthy, "{order:?}, consumer {attempt}: {errors:?}");
                assert!(!errors.is_empty(), "{order:?}: the damage went unreported");
                for e in &errors {
                    assert!(e.contains("offset 1 "), "{order:?}: names where the damage is: {e}");
                }
                // Every shard's position is past what it handed out and no further: the
                // damaged shard's at the damage (in priority order, every lane's cursor
                // moved up to it, not only the lanes that had records before it).
                let positions: Vec<_> =
                    consumer.positions().iter().map(|p| (p.shard, p.offset)).collect();
                assert_eq!(positions, [(0, 3), (1, 3), (2, 3), (3, 1)], "{order:?}");
                if attempt == 0 {
                    // Polling on after the error does not fetch the damaged shard at
                    // every poll: it rests between tries (100 ms), and the error comes
                    // again after each rest.
                    let started = tokio::time::Instant::now();
                    let mut again = 0;
                    for _ in 0..10_000 {
                        if started.elapsed() >= Duration::from_secs(1) {
                            break;
                        }
                        if consumer.poll(100, Duration::from_millis(50)).await.is_err() {
                            again += 1;
                        }
                    }
                    assert!((1..=30).contains(&again), "{order:?}: {again} errors in 1 s");
                    // Past the damage: the batch is lost, what follows is read.
                    consumer.seek("damaged", 3, 2).expect("seek");
                    let after = consumer.poll(100, Duration::from_secs(5)).await.expect("poll");
                    let after: Vec<_> = after.iter().map(|m| (m.shard, m.offset)).collect();
                    assert_eq!(after, [(3, 2)], "{order:?}");
                }
            }
        }
    }
}

/// A consumer that does not long-poll (`fetch_max_wait` 0) still reads everything,
/// also on a current-thread runtime, where its fetches, their answers and the polls
/// share one thread.
#[test]
fn a_consumer_that_does_not_long_poll_reads_on_a_current_thread_runtime() {
    use weir_client::{Consumer, OffsetReset};
    let broker = BrokerProcess::start();
    let addr = broker.addr();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let got = rt.block_on(async move {
            let client = connect(&addr, Duration::from_secs(5)).await;
            Admin::new(client.clone())
                .create_topic("nowait", SHARDS, Default::default())
                .await
                .expect("create topic");
            let producer = Producer::builder(&client).build().await.expect("producer");
            for i in 0..20 {
                let rec = ProducerRecord::new("nowait", format!("v{i}"));
                producer.send_and_wait(rec).await.expect("produce");
            }
            let mut consumer = Consumer::builder(&client)
                .topic("nowait")
                .reset(OffsetReset::Earliest)
                .fetch_max_wait(Duration::ZERO)
                .build()
                .expect("consumer");
            let mut got = 0;
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while got < 20 && std::time::Instant::now() < deadline {
                got += consumer
                    .poll(100, Duration::from_millis(100))
                    .await
                    .expect("poll")
                    .len();
            }
            got
        });
        let _ = tx.send(got);
    });
    let got = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the consumer's runtime is stuck");
    assert_eq!(got, 20, "records read");
}

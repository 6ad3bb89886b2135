//! A broker restart keeps topics, data and committed group offsets: after a graceful
//! SIGTERM, and after SIGKILL for data acknowledged with `acks=durable` and offsets
//! committed (commits are acknowledged once stored durably). A batch damaged on disk
//! before the active segment's last index point costs only its own records across a
//! restart (damage after that point is cut at recovery like a torn tail).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use weir_client::{Acks, Admin, Client, Consumer, OffsetReset, Producer, ProducerRecord};
use weir_tests::{connect, produce_raw, read_all, BrokerProcess};

const TOPIC: &str = "events";
const SHARDS: u32 = 3;
const RECORDS: usize = 600;
const CONSUME_BEFORE: usize = 250;
const GROUP: &str = "billing";

#[derive(Clone, Copy, Debug)]
enum Stop {
    Graceful,
    Kill,
}

async fn group_consumer(client: &Client) -> Consumer {
    Consumer::builder(client)
        .group(GROUP)
        .topic(TOPIC)
        .reset(OffsetReset::Earliest)
        .auto_commit(false)
        .fetch_max_wait(Duration::from_millis(100))
        .build()
        .expect("consumer")
}

async fn restart_keeps_data_and_offsets(stop: Stop, acks: Acks) {
    let mut broker = BrokerProcess::start();
    let client = connect(&broker.addr(), Duration::from_secs(5)).await;
    Admin::new(client.clone())
        .create_topic(TOPIC, SHARDS, Default::default())
        .await
        .expect("create topic");
    let producer = Producer::builder(&client)
        .acks(acks)
        .build()
        .await
        .expect("producer");
    let mut futures = Vec::new();
    for i in 0..RECORDS {
        let rec = ProducerRecord::new(TOPIC, format!("value-{i}")).key(format!("key-{}", i % 17));
        futures.push(producer.send(rec).await.expect("send"));
    }
    // (shard, offset) → value, as acknowledged.
    let mut stored: BTreeMap<(u32, u64), String> = BTreeMap::new();
    for (i, f) in futures.into_iter().enumerate() {
        let md = f.await.expect("acked");
        stored.insert((md.shard, md.offset), format!("value-{i}"));
    }
    assert_eq!(stored.len(), RECORDS);

    // Consume part of it in a group and commit.
    let mut consumer = group_consumer(&client).await;
    let mut before = Vec::new();
    for _ in 0..200 {
        if before.len() >= CONSUME_BEFORE {
            break;
        }
        let want = CONSUME_BEFORE - before.len();
        before.extend(
            consumer
                .poll(want, Duration::from_millis(300))
                .await
                .expect("poll"),
        );
    }
    assert_eq!(before.len(), CONSUME_BEFORE, "consumed the first part");
    consumer.commit().await.expect("commit");
    let committed: HashMap<u32, u64> = consumer
        .positions()
        .into_iter()
        .map(|e| (e.shard, e.offset))
        .collect();
    // The consumer simply vanishes with the broker (no leave), as in a crash.
    drop(consumer);
    drop(producer);
    drop(client);

    match stop {
        Stop::Graceful => {
            let status = broker.terminate();
            assert!(status.success(), "graceful shutdown exits 0, got {status}");
        }
        Stop::Kill => broker.kill9(),
    }
    broker.restart();
    let client = connect(&broker.addr(), Duration::from_secs(10)).await;

    // The topic and every acknowledged record survived, at the same offsets.
    let topic = Admin::new(client.clone())
        .describe_topic(TOPIC)
        .await
        .expect("topic after restart");
    assert_eq!(topic.shards.len() as u32, SHARDS);
    let all = read_all(&client, TOPIC, RECORDS, Duration::from_secs(30)).await;
    let got: BTreeMap<(u32, u64), String> = all
        .iter()
        .map(|m| {
            (
                (m.shard, m.offset),
                String::from_utf8(m.value.to_vec()).expect("utf8"),
            )
        })
        .collect();
    assert_eq!(all.len(), RECORDS, "no record lost or duplicated");
    assert_eq!(got, stored, "records at their acknowledged offsets");

    // The group's committed offsets survived...
    let offsets: HashMap<u32, u64> = Admin::new(client.clone())
        .group_offsets(GROUP)
        .await
        .expect("group offsets")
        .into_iter()
        .filter(|e| e.topic == TOPIC)
        .map(|e| (e.shard, e.offset))
        .collect();
    assert_eq!(offsets, committed, "committed offsets after restart");

    // ...and the group resumes exactly after them: nothing consumed twice, nothing skipped.
    let mut consumer = group_consumer(&client).await;
    let mut after = Vec::new();
    for _ in 0..200 {
        if after.len() >= RECORDS - CONSUME_BEFORE {
            break;
        }
        after.extend(
            consumer
                .poll(1000, Duration::from_millis(300))
                .await
                .expect("poll"),
        );
    }
    // A short extra look for anything delivered twice.
    after.extend(
        consumer
            .poll(1000, Duration::from_millis(300))
            .await
            .expect("poll"),
    );
    for shard in 0..SHARDS {
        let first = after
            .iter()
            .filter(|m| m.shard == shard)
            .map(|m| m.offset)
            .min();
        let start = committed.get(&shard).copied().unwrap_or(0);
        let end = stored.keys().filter(|(s, _)| *s == shard).count() as u64;
        if start < end {
            assert_eq!(
                first,
                Some(start),
                "shard {shard} resumes at its committed offset"
            );
        } else {
            assert_eq!(
                first, None,
                "shard {shard} was fully consumed before the restart"
            );
        }
    }
    let mut seen: BTreeMap<(u32, u64), String> = BTreeMap::new();
    for m in before.iter().chain(after.iter()) {
        let v = String::from_utf8(m.value.to_vec()).expect("utf8");
        assert!(
            seen.insert((m.shard, m.offset), v).is_none(),
            "{}/{} delivered twice to the group",
            m.shard,
            m.offset
        );
    }
    assert_eq!(
        seen, stored,
        "the group saw everything exactly once across the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_restart_keeps_data_and_committed_offsets() {
    restart_keeps_data_and_offsets(Stop::Graceful, Acks::Leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_restart_keeps_durable_data_and_committed_offsets() {
    restart_keeps_data_and_offsets(Stop::Kill, Acks::Durable).await;
}

/// A batch damaged on disk in the middle of a shard's log (before the active segment's
/// last index point) costs only its own records across a restart: the intact batches after it are still there, and a retry of one
/// of them is still recognised as a duplicate (the broker rebuilds producer sequences
/// from the log; a rebuild that stopped at the damage forgot every batch after it, so
/// the retry was refused as out of order, and the SDK would have stored it again under
/// a new epoch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_batch_costs_only_its_records_across_a_restart() {
    use weir_protocol::batch::{BatchBuilder, NewRecord};
    use weir_protocol::messages::InitProducerIdRequest;
    use weir_protocol::ResponseBody;

    let mut broker = BrokerProcess::start();
    let client = connect(&broker.addr(), Duration::from_secs(5)).await;
    Admin::new(client.clone())
        .create_topic("rot", 1, Default::default())
        .await
        .expect("create topic");
    let (id, epoch) = match client
        .call(InitProducerIdRequest {
            producer_id: 0,
            producer_epoch: 0,
        })
        .await
        .expect("producer id")
    {
        ResponseBody::InitProducerId(r) => (r.producer_id, r.producer_epoch),
        other => panic!("unexpected {:?}", other.api_key()),
    };
    // One batch per record, sequence = offset: offset 1 is damaged; 30 batches of
    // ~1 KB after it pass the segment's next index point (every 4 KiB), so recovery
    // keeps them.
    let pad = "x".repeat(1000);
    let mut values = vec!["rot-0".to_string(), "rot-1-to-be-damaged".to_string()];
    values.extend((2..32).map(|i| format!("rot-{i}-{pad}")));
    let batch = |seq: u32, value: &str| {
        let mut b = BatchBuilder::new().producer(id, epoch, seq);
        b.push(&NewRecord::value(0, value.as_bytes()))
            .expect("record");
        b.finish().expect("batch")
    };
    for (i, v) in values.iter().enumerate() {
        let at = produce_raw(&client, "rot", batch(i as u32, v))
            .await
            .expect("produce");
        assert_eq!(at, i as u64);
    }
    weir_tests::damage_first(&broker.data_dir(), b"rot-1-to-be-damaged");
    let status = broker.terminate();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    broker.restart();
    let client = connect(&broker.addr(), Duration::from_secs(10)).await;

    // A retry of the last batch: the original offset, not stored again.
    let again = produce_raw(&client, "rot", batch(31, &values[31])).await;
    assert_eq!(again, Ok(31), "a retry after the restart is a duplicate");
    // The next sequence goes on.
    let next = produce_raw(&client, "rot", batch(32, "after-restart")).await;
    assert_eq!(next, Ok(32));

    // Everything but the damaged record is there, read past the damage.
    let mut consumer = Consumer::builder(&client)
        .topic("rot")
        .start_at("rot", 0, 2)
        .build()
        .expect("consumer");
    let mut got = Vec::new();
    for _ in 0..100 {
        got.extend(
            consumer
                .poll(100, Duration::from_millis(200))
                .await
                .expect("poll past the damage"),
        );
        if got.len() >= 31 {
            break;
        }
    }
    let got: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8(m.value.to_vec()).expect("utf8"))
        .collect();
    let mut want = values[2..].to_vec();
    want.push("after-restart".into());
    assert_eq!(got, want);
}

//! Queue mode on a cluster of real `weir-broker` processes: the queue state (acks,
//! dead-letterings) is committed through the consensus engine and dead letters go to a
//! replicated topic, so after kill -9 of the controller (which serves every queue) the
//! next controller goes on where it stopped: nothing acknowledged or dead-lettered is
//! delivered again, everything else is, and the dead-letter topic keeps its records.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use weir_client::{
    Acks, Admin, Client, NackOutcome, Producer, ProducerRecord, QueueConfig, QueueConsumer,
    TopicConfig,
};
use weir_tests::{connect, read_all, read_to_end, ClusterProcesses};

const RECORDS: usize = 120;
/// Records `0..ACKED` are acknowledged and `ACKED..DEAD` dead-lettered before the kill.
const ACKED: usize = 60;
const DEAD: usize = 70;
/// After the kill, these are dead-lettered by the new controller.
const DEAD_AFTER: std::ops::Range<usize> = 100..105;

/// The controller's id, once one is known and every node is listed.
async fn controller(client: &Client, nodes: usize, within: Duration) -> u32 {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(d) = Admin::new(client.clone()).describe_cluster().await {
            if d.controller != 0 && d.nodes.len() == nodes {
                return d.controller;
            }
        }
        assert!(Instant::now() < deadline, "no controller within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn index_of(value: &[u8]) -> usize {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.strip_prefix("job-"))
        .and_then(|v| v.parse().ok())
        .expect("a job-N value")
}

/// Leases until `want` distinct records came or `within` passed; returns the messages
/// (the caller settles them).
async fn lease(q: &QueueConsumer, want: usize, within: Duration) -> Vec<weir_client::QueueMessage> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        match q.fetch(50).await {
            Ok(ms) => out.extend(ms),
            // An election or a switchover in progress; the SDK already retried.
            Err(e) => {
                eprintln!("queue fetch failed; trying again: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_state_and_dead_letters_survive_kill_9_of_the_controller() {
    let mut c = ClusterProcesses::start(3, &[]);
    let client = connect(&c.bootstrap(), Duration::from_secs(20)).await;
    let first = controller(&client, 3, Duration::from_secs(20)).await;
    let admin = Admin::new(client.clone());
    let config = TopicConfig {
        replicas: 3,
        ..TopicConfig::default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match admin.create_topic("jobs", 2, config.clone()).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("create topic: trying again: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("create topic: {e}"),
        }
    }
    let producer = Producer::builder(&client)
        .acks(Acks::Mirrored)
        .build()
        .await
        .expect("producer");
    for i in 0..RECORDS {
        producer
            .send_and_wait(ProducerRecord::new("jobs", format!("job-{i}")).key(format!("k{i}")))
            .await
            .expect("mirrored produce");
    }

    let q = QueueConsumer::with_config(
        &client,
        "workers",
        "jobs",
        QueueConfig {
            lease: Duration::from_secs(60),
            max_wait: Duration::from_millis(200),
            ..QueueConfig::default()
        },
    );
    // Everything leased once; the first ACKED acknowledged, the next ones
    // dead-lettered, the rest left leased when the controller dies.
    let leased = lease(&q, RECORDS, Duration::from_secs(30)).await;
    let distinct: BTreeSet<usize> = leased.iter().map(|m| index_of(&m.message.value)).collect();
    assert_eq!(distinct.len(), RECORDS, "every record leased once");
    let (to_ack, rest): (Vec<_>, Vec<_>) = leased
        .into_iter()
        .partition(|m| index_of(&m.message.value) < ACKED);
    for r in q.ack_many(&to_ack).await.expect("ack") {
        r.expect("ack accepted");
    }
    let mut dead_before = BTreeMap::new();
    for m in rest
        .iter()
        .filter(|m| (ACKED..DEAD).contains(&index_of(&m.message.value)))
    {
        let outcome = q.nack(m, false, "poison").await.expect("nack");
        assert_eq!(outcome, NackOutcome::DeadLettered);
        dead_before.insert(
            index_of(&m.message.value),
            (m.message.shard, m.message.offset),
        );
    }

    c.node(first).kill9();
    let second = controller(&client, 3, Duration::from_secs(20)).await;
    let second = {
        // The killed node may still be named until the others notice.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut id = second;
        while id == first {
            assert!(
                Instant::now() < deadline,
                "no new controller after the kill"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            id = controller(&client, 3, Duration::from_secs(20)).await;
        }
        id
    };
    assert_ne!(second, first);

    // The new controller: only the records neither acknowledged nor dead-lettered come
    // back (their leases lived in the old controller's memory only).
    let again = lease(&q, RECORDS - DEAD, Duration::from_secs(30)).await;
    let got: BTreeSet<usize> = again.iter().map(|m| index_of(&m.message.value)).collect();
    let expected: BTreeSet<usize> = (DEAD..RECORDS).collect();
    assert_eq!(
        got, expected,
        "after the switchover exactly the unsettled records are delivered"
    );
    // The new controller dead-letters too, and acknowledges the rest.
    let (dying, done): (Vec<_>, Vec<_>) = again
        .into_iter()
        .partition(|m| DEAD_AFTER.contains(&index_of(&m.message.value)));
    for m in &dying {
        let outcome = q.nack(m, false, "poison after").await.expect("nack");
        assert_eq!(outcome, NackOutcome::DeadLettered);
    }
    for r in q.ack_many(&done).await.expect("ack") {
        r.expect("ack accepted");
    }
    // Nothing is left: a fetch comes back empty.
    let left = lease(&q, 1, Duration::from_secs(2)).await;
    assert!(
        left.is_empty(),
        "settled records delivered again: {:?}",
        left.iter()
            .map(|m| index_of(&m.message.value))
            .collect::<Vec<_>>()
    );

    // The dead-letter topic is a cluster topic: readable through the survivors, with
    // every record dead-lettered by either controller, once each.
    let dlq = read_to_end(&client, "jobs.dlq", Duration::from_secs(20)).await;
    let mut dead: Vec<usize> = dlq.iter().map(|m| index_of(&m.value)).collect();
    dead.sort_unstable();
    let want: Vec<usize> = (ACKED..DEAD).chain(DEAD_AFTER).collect();
    assert_eq!(dead, want, "dead-letter topic holds each dead record once");
    for m in dlq.iter().filter(|m| index_of(&m.value) < DEAD) {
        let (shard, offset) = dead_before[&index_of(&m.value)];
        let header = |name: &str| {
            m.headers
                .iter()
                .find(|h| h.name == name)
                .map(|h| String::from_utf8_lossy(&h.value).into_owned())
        };
        assert_eq!(header("weir.dlq.source_shard"), Some(shard.to_string()));
        assert_eq!(header("weir.dlq.source_offset"), Some(offset.to_string()));
    }
    let view = Admin::new(client.clone())
        .describe_cluster()
        .await
        .expect("describe");
    assert!(
        view.shards.iter().any(|s| s.topic == "jobs.dlq"),
        "the dead-letter topic is in the cluster metadata"
    );
}

/// A topic with one copy per shard on three nodes: the controller holds only some of
/// its shards and reads the others from their primaries. Every record is leased, a
/// retried one comes back (re-read from what the controller holds, not from a copy),
/// and a dead-lettered one reaches the dead-letter topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_serves_a_queue_of_shards_it_holds_no_copy_of() {
    let c = ClusterProcesses::start(3, &[]);
    let client = connect(&c.bootstrap(), Duration::from_secs(20)).await;
    let ctl = controller(&client, 3, Duration::from_secs(20)).await;
    let admin = Admin::new(client.clone());
    let config = TopicConfig {
        replicas: 1,
        min_in_sync: 1,
        ..TopicConfig::default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match admin.create_topic("spread", 6, config.clone()).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("create topic: trying again: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("create topic: {e}"),
        }
    }
    let view = admin.describe_cluster().await.expect("describe");
    let elsewhere = view
        .shards
        .iter()
        .filter(|s| s.topic == "spread" && !s.replicas.contains(&ctl))
        .count();
    assert!(elsewhere > 0, "some shard has no copy on the controller");
    let producer = Producer::builder(&client).build().await.expect("producer");
    let n = 90;
    for i in 0..n {
        producer
            .send_and_wait(ProducerRecord::new("spread", format!("job-{i}")).key(format!("k{i}")))
            .await
            .expect("produce");
    }
    let q = QueueConsumer::with_config(
        &client,
        "spread-workers",
        "spread",
        QueueConfig {
            lease: Duration::from_secs(60),
            max_wait: Duration::from_millis(200),
            ..QueueConfig::default()
        },
    );
    let leased = lease(&q, n, Duration::from_secs(30)).await;
    let got: BTreeSet<usize> = leased.iter().map(|m| index_of(&m.message.value)).collect();
    assert_eq!(got, (0..n).collect::<BTreeSet<_>>(), "every record leased");
    let shards: BTreeSet<u32> = leased.iter().map(|m| m.message.shard).collect();
    assert_eq!(shards.len(), 6, "records of every shard");
    // One record of a shard the controller holds no copy of is retried, one is
    // dead-lettered; the rest are acknowledged.
    let remote: BTreeSet<u32> = view
        .shards
        .iter()
        .filter(|s| s.topic == "spread" && !s.replicas.contains(&ctl))
        .map(|s| s.shard)
        .collect();
    let mut of_remote = leased.iter().filter(|m| remote.contains(&m.message.shard));
    let retry = of_remote
        .next()
        .expect("a record of a remote shard")
        .clone();
    let dead = of_remote.next().expect("another one").clone();
    match q.nack(&retry, true, "try again").await.expect("nack") {
        NackOutcome::RetryIn(_) => {}
        other => panic!("retriable nack: {other:?}"),
    }
    assert_eq!(
        q.nack(&dead, false, "poison").await.expect("nack"),
        NackOutcome::DeadLettered
    );
    let rest: Vec<_> = leased
        .iter()
        .filter(|m| m.lease_id != retry.lease_id && m.lease_id != dead.lease_id)
        .cloned()
        .collect();
    for r in q.ack_many(&rest).await.expect("ack") {
        r.expect("ack accepted");
    }
    let again = lease(&q, 1, Duration::from_secs(30)).await;
    assert_eq!(again.len(), 1, "the retried record comes back");
    assert_eq!(again[0].message.value, retry.message.value);
    assert_eq!(again[0].message.offset, retry.message.offset);
    assert_eq!(again[0].attempt, 2);
    q.ack(&again[0]).await.expect("ack");
    assert!(lease(&q, 1, Duration::from_secs(2)).await.is_empty());
    // (Not `read_to_end`: its high-water marks come from Metadata, which a node without
    // a copy of a shard answers from its empty local copy.)
    let dlq = read_all(&client, "spread.dlq", 1, Duration::from_secs(20)).await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].value, dead.message.value);
}

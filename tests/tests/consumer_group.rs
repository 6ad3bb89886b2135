//! A consumer group while members join, leave and vanish, under live produce load.
//!
//! Each member polls in its own task on its own connection and commits synchronously
//! after every poll (auto-commit off), so everything it was handed is committed before
//! it can re-join. The coordinator rebalances eagerly: a shard moves only after its old
//! owner re-joined (having stopped and committed) or was removed. Under those rules
//! every record is delivered exactly once overall, and a shard's records are handed out
//! in offset order even across owners. The test asserts exactly that:
//!
//! - every acknowledged record is delivered, with its value;
//! - per shard, deliveries in global order (a counter taken when `poll` returned, before
//!   the commit) have offsets 0, 1, 2, ... with no repeat and no step back: if two
//!   members had consumed a shard at once, both would have started from the same
//!   committed offset and an offset would repeat;
//! - no commit was refused (a refusal would mean a member lost its shards while it
//!   still thought it owned them);
//! - shards did change owners (the rebalances really happened), and every member got
//!   records.
//!
//! The member that vanishes stops between polls, after its commit, and is dropped
//! without LeaveGroup: the broker removes it when its 1 s session expires.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_client::{Admin, Client, Consumer, ConsumerConfig, OffsetReset, Producer, ProducerRecord};
use weir_tests::over_both_transports;
use weir_tests::transport::SdkBroker;

const TOPIC: &str = "tasks";
const GROUP: &str = "workers";
const SHARDS: u32 = 6;
const RECORDS: usize = 3000;

#[derive(Debug, Clone)]
struct Delivery {
    member: usize,
    seq: u64,
    shard: u32,
    offset: u64,
    value: String,
}

#[derive(Default)]
struct Log {
    deliveries: Mutex<Vec<Delivery>>,
    seq: AtomicU64,
    commit_failures: AtomicUsize,
}

struct Member {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// How a member stops.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// Commits and sends LeaveGroup.
    Leave,
    /// Stops after its last commit and disappears without a word.
    Vanish,
}

async fn start_member(client: Client, id: usize, log: Arc<Log>, exit: Exit) -> Member {
    let stop = Arc::new(AtomicBool::new(false));
    let config = ConsumerConfig {
        reset: OffsetReset::Earliest,
        auto_commit: false,
        session_timeout: Duration::from_secs(1),
        rebalance_timeout: Duration::from_secs(5),
        fetch_max_wait: Duration::from_millis(100),
        ..Default::default()
    };
    let mut consumer = Consumer::builder(&client)
        .config(config)
        .group(GROUP)
        .topic(TOPIC)
        .build()
        .expect("consumer");
    let task = {
        let stop = stop.clone();
        tokio::spawn(async move {
            // Bounded: the test stops every member well within this.
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
                let batch = match consumer.poll(200, Duration::from_millis(100)).await {
                    Ok(b) => b,
                    Err(e) => panic!("member {id}: poll failed: {e}"),
                };
                if batch.is_empty() {
                    continue;
                }
                {
                    let mut d = log.deliveries.lock().expect("log");
                    for m in batch {
                        d.push(Delivery {
                            member: id,
                            seq: log.seq.fetch_add(1, Ordering::SeqCst),
                            shard: m.shard,
                            offset: m.offset,
                            value: String::from_utf8(m.value.to_vec()).expect("utf8"),
                        });
                    }
                }
                if let Err(e) = consumer.commit().await {
                    eprintln!("member {id}: commit refused: {e}");
                    log.commit_failures.fetch_add(1, Ordering::SeqCst);
                }
            }
            match exit {
                Exit::Leave => consumer.close().await.expect("leave"),
                Exit::Vanish => drop(consumer),
            }
        })
    };
    Member { stop, task }
}

async fn stop_member(m: Member) {
    m.stop.store(true, Ordering::Release);
    tokio::time::timeout(Duration::from_secs(20), m.task)
        .await
        .expect("member stops in time")
        .expect("member task");
}

over_both_transports! {
    async fn members_join_and_leave_every_record_once_no_shard_shared(t) {
        let broker = SdkBroker::start_with_env(t, &[("WEIR_GROUP_MIN_SESSION_TIMEOUT_MS", "200")]).await;
        let client = broker.client().await;
        Admin::new(client.clone())
            .create_topic(TOPIC, SHARDS, Default::default())
            .await
            .expect("create topic");

        // Live load: 3000 keyed records over roughly four seconds.
        let producer = Producer::builder(&client).build().await.expect("producer");
        let produce = tokio::spawn(async move {
            let mut acks = Vec::with_capacity(RECORDS);
            for i in 0..RECORDS {
                let rec = ProducerRecord::new(TOPIC, format!("v{i}")).key(format!("k{}", i % 29));
                acks.push((format!("v{i}"), producer.send(rec).await.expect("send")));
                if i % 100 == 99 {
                    tokio::time::sleep(Duration::from_millis(130)).await;
                }
            }
            let mut stored = BTreeMap::new();
            for (v, f) in acks {
                let md = f.await.expect("acked");
                stored.insert((md.shard, md.offset), v);
            }
            stored
        });

        let log = Arc::new(Log::default());
        let m1 = start_member(broker.client().await, 1, log.clone(), Exit::Leave).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        let m2 = start_member(broker.client().await, 2, log.clone(), Exit::Vanish).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        let m3 = start_member(broker.client().await, 3, log.clone(), Exit::Leave).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        stop_member(m1).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        let m4 = start_member(broker.client().await, 4, log.clone(), Exit::Leave).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        stop_member(m2).await;

        let stored = tokio::time::timeout(Duration::from_secs(30), produce)
            .await
            .expect("producer finishes")
            .expect("producer task");
        assert_eq!(stored.len(), RECORDS);
        // Wait (bounded) for the remaining members to drain everything.
        let deadline = Instant::now() + Duration::from_secs(30);
        while log.deliveries.lock().expect("log").len() < RECORDS && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A little longer, so a late duplicate would be seen.
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop_member(m3).await;
        stop_member(m4).await;

        let mut deliveries = log.deliveries.lock().expect("log").clone();
        deliveries.sort_by_key(|d| d.seq);
        assert_eq!(
            log.commit_failures.load(Ordering::SeqCst),
            0,
            "no commit was refused"
        );

        let mut by_shard: HashMap<u32, Vec<&Delivery>> = HashMap::new();
        for d in &deliveries {
            assert_eq!(
                stored.get(&(d.shard, d.offset)),
                Some(&d.value),
                "member {} got {}/{} = {} which is not what was acked there",
                d.member,
                d.shard,
                d.offset,
                d.value
            );
            by_shard.entry(d.shard).or_default().push(d);
        }
        let mut handoffs = 0;
        for shard in 0..SHARDS {
            let ds = by_shard.get(&shard).map(Vec::as_slice).unwrap_or(&[]);
            let expected = stored.keys().filter(|(s, _)| *s == shard).count();
            for (i, d) in ds.iter().enumerate() {
                assert_eq!(
                    d.offset, i as u64,
                    "shard {shard}: delivery #{i} (to member {}) has offset {}; a repeat or step back means two members read the shard at once or a record was delivered twice",
                    d.member, d.offset
                );
            }
            assert_eq!(ds.len(), expected, "shard {shard}: every record delivered");
            handoffs += ds.windows(2).filter(|w| w[0].member != w[1].member).count();
        }
        assert_eq!(deliveries.len(), RECORDS, "every record exactly once");
        assert!(
            handoffs >= 2,
            "shards changed owners only {handoffs} times; rebalances did not happen"
        );
        for member in 1..=4 {
            assert!(
                deliveries.iter().any(|d| d.member == member),
                "member {member} never got a record"
            );
        }
    }
}

//! SIGKILL of the broker during `acks=durable` produce load: every record the broker
//! acknowledged is there after restart, with the same value at the same offset.
//!
//! Rounds: 3 by default, `WEIR_CRASH_ROUNDS=N` for more. Each round produces on a fresh
//! connection, kills the broker at a different moment of the load, restarts it on the
//! same data directory and checks every acknowledgement of every round so far.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weir_client::{Acks, Admin, DeliveryFuture, Producer, ProducerRecord};
use weir_tests::{connect, read_to_end, BrokerProcess};

const TOPIC: &str = "ledger";
const SHARDS: u32 = 2;
/// Records one round sends at most (the kill normally comes first).
const MAX_RECORDS_PER_ROUND: usize = 200_000;

fn rounds() -> usize {
    std::env::var("WEIR_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .clamp(1, 1000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_durable_ack_survives_sigkill() {
    let mut broker = BrokerProcess::start();
    {
        let client = connect(&broker.addr(), Duration::from_secs(5)).await;
        Admin::new(client)
            .create_topic(TOPIC, SHARDS, Default::default())
            .await
            .expect("create topic");
    }
    // Every acknowledgement of every round: (shard, offset) → value.
    let mut acked: BTreeMap<(u32, u64), String> = BTreeMap::new();
    for round in 0..rounds() {
        let client = connect(&broker.addr(), Duration::from_secs(10)).await;
        let producer = Producer::builder(&client)
            .acks(Acks::Durable)
            .linger(Duration::from_millis(1))
            .max_batch_bytes(8 * 1024)
            .retries(2)
            .retry_backoff(Duration::from_millis(20))
            .build()
            .await
            .expect("producer");
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, DeliveryFuture)>();
        let sender = {
            let stop = stop.clone();
            tokio::spawn(async move {
                for i in 0..MAX_RECORDS_PER_ROUND {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let value = format!("r{round}-{i:07}");
                    let rec = ProducerRecord::new(TOPIC, value.clone()).key(format!("k{}", i % 13));
                    match producer.send(rec).await {
                        Ok(f) => {
                            if tx.send((value, f)).is_err() {
                                break;
                            }
                        }
                        Err(_) => break,
                    }
                    if i % 100 == 99 {
                        // Paced (≤ 50k records/s) so reading back stays quick.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            })
        };
        // Waits for acknowledgements in send order and keeps the successful ones.
        let collector = tokio::spawn(async move {
            let mut ok = Vec::new();
            let mut failed = 0usize;
            while let Some((value, f)) = rx.recv().await {
                match f.await {
                    Ok(md) => ok.push((md.shard, md.offset, value)),
                    Err(_) => failed += 1,
                }
            }
            (ok, failed)
        });

        // Kill at a different point of the load each round.
        let load_ms = 300 + 150 * (round as u64 % 4);
        tokio::time::sleep(Duration::from_millis(load_ms)).await;
        broker.kill9();
        stop.store(true, Ordering::Release);
        tokio::time::timeout(Duration::from_secs(30), sender)
            .await
            .expect("sender stops")
            .expect("sender task");
        broker.restart();
        // Records still being retried may land on the restarted broker; those acks
        // count too.
        let (ok, failed) = tokio::time::timeout(Duration::from_secs(60), collector)
            .await
            .expect("every send resolves")
            .expect("collector task");
        assert!(
            !ok.is_empty(),
            "round {round}: nothing was acknowledged before the kill"
        );
        for (shard, offset, value) in ok.iter().cloned() {
            if let Some(prev) = acked.insert((shard, offset), value.clone()) {
                panic!("round {round}: {shard}/{offset} acknowledged twice ({prev}, {value})");
            }
        }

        let client = connect(&broker.addr(), Duration::from_secs(10)).await;
        let stored = read_to_end(&client, TOPIC, Duration::from_secs(60)).await;
        let mut at: HashMap<(u32, u64), String> = HashMap::new();
        let mut count_of: HashMap<&str, usize> = HashMap::new();
        for m in &stored {
            let v = String::from_utf8(m.value.to_vec()).expect("utf8");
            assert!(
                at.insert((m.shard, m.offset), v).is_none(),
                "offset {}/{} read twice",
                m.shard,
                m.offset
            );
        }
        for v in at.values() {
            *count_of.entry(v.as_str()).or_default() += 1;
        }
        // The log has no holes: offsets 0..high-water on every shard.
        for shard in 0..SHARDS {
            let n = at.keys().filter(|(s, _)| *s == shard).count() as u64;
            assert!(
                (0..n).all(|o| at.contains_key(&(shard, o))),
                "round {round}: shard {shard} has gaps"
            );
        }
        for ((shard, offset), value) in &acked {
            assert_eq!(
                at.get(&(*shard, *offset)),
                Some(value),
                "round {round}: acknowledged record lost or changed at {shard}/{offset}"
            );
            assert_eq!(
                count_of.get(value.as_str()),
                Some(&1),
                "round {round}: {value} stored more than once"
            );
        }
        eprintln!(
            "round {round}: killed after {load_ms} ms, {} acked, {failed} failed, {} stored in total",
            ok.len(),
            stored.len()
        );
    }
}

//! Moving a shard's copies between the nodes of a real 3-node cluster (`weir shard
//! move`, issue 16): a mirror's copy moved with the CLI waiting for the end; then the
//! primary's copy moved under keyed `acks=mirrored` load with kill -9 of the source
//! right after the move started. The move finishes (or is given up) by itself; every
//! acknowledged record is there once, in key order; the replication record shows every
//! step.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_client::{Acks, Admin, Client, Producer, ProducerRecord, TopicConfig};
use weir_protocol::messages::NO_NODE;
use weir_tests::{cli_binary, connect, read_all, ClusterProcesses};

const KEYS: usize = 5;

/// The shard's copies, in-sync set and primary, once a controller answers.
async fn placement(client: &Client, topic: &str) -> (Vec<u32>, Vec<u32>, u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(d) = Admin::new(client.clone()).describe_cluster().await {
            if let Some(s) = d.shards.iter().find(|s| s.topic == topic && s.shard == 0) {
                if d.controller != 0 {
                    return (s.replicas.clone(), s.in_sync.clone(), s.primary);
                }
            }
        }
        assert!(Instant::now() < deadline, "no placement of {topic}/0");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// History kinds (DescribeShardHistory).
const MOVE_STARTED: u8 = 3;
const MOVE_FINISHED: u8 = 4;
const MOVE_ABORTED: u8 = 5;

/// Waits until the latest move of the shard finished or was given up; returns which.
async fn move_outcome(client: &Client, topic: &str, within: Duration) -> u8 {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(h) = Admin::new(client.clone()).shard_history(topic, 0).await {
            let last = h
                .events
                .iter()
                .map(|e| e.kind)
                .rfind(|k| [MOVE_STARTED, MOVE_FINISHED, MOVE_ABORTED].contains(k));
            if let Some(k @ (MOVE_FINISHED | MOVE_ABORTED)) = last {
                return k;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the move did not end within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_moves_under_mirrored_load_even_when_its_source_is_killed() {
    let mut c = ClusterProcesses::start(3, &[]);
    let client = connect(&c.bootstrap(), Duration::from_secs(20)).await;
    let admin = Admin::new(client.clone());
    let config = TopicConfig {
        replicas: 2,
        min_in_sync: 1,
        ..TopicConfig::default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = admin.create_topic("mv", 1, config.clone()).await {
        assert!(Instant::now() < deadline, "create topic: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Some data, so the moved copy has something to catch up.
    let producer = Producer::builder(&client)
        .acks(Acks::Mirrored)
        .build()
        .await
        .expect("producer");
    let value = "x".repeat(1000);
    let mut acked: Vec<(usize, u64)> = Vec::new();
    let mut futs = Vec::new();
    for seq in 0..3000u64 {
        let key = (seq as usize) % KEYS;
        let rec = ProducerRecord::new("mv", format!("{seq}:{value}")).key(format!("k{key}"));
        futs.push((key, seq, producer.send(rec).await.expect("send")));
    }
    for (key, seq, f) in futs {
        f.await.expect("mirrored ack");
        acked.push((key, seq));
    }

    // 1. The mirror's copy, with the CLI waiting for the end.
    let (replicas, _, primary) = placement(&client, "mv").await;
    let mirror = *replicas.iter().find(|n| **n != primary).unwrap();
    let spare = (1..=3).find(|n| !replicas.contains(n)).unwrap();
    let out = Command::new(cli_binary())
        .args([
            "--broker",
            &c.bootstrap(),
            "shard",
            "move",
            "mv/0",
            "--to",
            &spare.to_string(),
            "--from",
            &mirror.to_string(),
            "--timeout-s",
            "60",
        ])
        .output()
        .expect("weir shard move");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("move finished"),
        "weir shard move: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (replicas, in_sync, p) = placement(&client, "mv").await;
    assert_eq!(p, primary, "moving a mirror leaves the primary");
    assert!(replicas.contains(&spare) && !replicas.contains(&mirror));
    assert!(in_sync.contains(&spare));

    // 2. The primary's copy, under load, with its node killed right after the start.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (producer, stop) = (producer.clone(), stop.clone());
        let value = value.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut seq = 3000u64;
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                let key = (seq as usize) % KEYS;
                let rec =
                    ProducerRecord::new("mv", format!("{seq}:{value}")).key(format!("k{key}"));
                // A failed send may still be stored: it is not counted, and a second
                // copy of it would show as a duplicate below.
                if let Ok(f) = producer.send(rec).await {
                    if f.await.is_ok() {
                        acked.push((key, seq));
                    }
                }
                seq += 1;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let source = primary;
    let target = mirror; // holds no copy since step 1
    admin
        .move_shard("mv", 0, None, target)
        .await
        .expect("move starts");
    c.node(source).kill9();
    let outcome = move_outcome(&client, "mv", Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    acked.extend(load.await.expect("load task"));

    let (replicas, in_sync, p) = placement(&client, "mv").await;
    match outcome {
        MOVE_FINISHED => {
            assert!(replicas.contains(&target) && !replicas.contains(&source));
            assert!(in_sync.contains(&target));
        }
        _ => assert!(
            !replicas.contains(&target),
            "a move given up leaves no copy on its target"
        ),
    }
    assert!(
        p != NO_NODE && p != source,
        "a live primary, not the killed node"
    );

    // Every acknowledged record once, per-key order kept.
    let all = read_all(&client, "mv", acked.len(), Duration::from_secs(60)).await;
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    let mut last_per_key: BTreeMap<Vec<u8>, (u64, u64)> = BTreeMap::new();
    let mut sorted = all.clone();
    sorted.sort_by_key(|m| m.offset);
    for m in &sorted {
        let v = std::str::from_utf8(&m.value).unwrap();
        let seq: u64 = v.split(':').next().unwrap().parse().unwrap();
        *seen.entry(seq).or_default() += 1;
        if let Some((prev_seq, prev_offset)) = last_per_key.insert(m.key.to_vec(), (seq, m.offset))
        {
            assert!(
                prev_seq < seq,
                "key order broken: seq {seq} at offset {} after seq {prev_seq} at {prev_offset}",
                m.offset
            );
        }
    }
    let dup: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dup.is_empty(), "stored twice: {dup:?}");
    let acked_seqs: BTreeSet<u64> = acked.iter().map(|(_, s)| *s).collect();
    let lost: Vec<_> = acked_seqs
        .iter()
        .filter(|s| !seen.contains_key(s))
        .collect();
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
    assert!(acked.len() > 3000, "the load ran during the move");

    // The replication record shows both moves, each one once started and ended.
    let h = admin.shard_history("mv", 0).await.expect("history");
    let kinds: Vec<u8> = h.events.iter().map(|e| e.kind).collect();
    eprintln!(
        "history kinds {kinds:?}; second move {}; {} acknowledged",
        if outcome == MOVE_FINISHED {
            "finished"
        } else {
            "given up"
        },
        acked.len()
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == MOVE_STARTED).count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == MOVE_FINISHED).count()
            + kinds.iter().filter(|k| **k == MOVE_ABORTED).count(),
        2,
        "{kinds:?}"
    );
    let last = h.events.last().unwrap();
    assert_eq!(
        last.replicas, replicas,
        "the record holds the copies after each change"
    );
}

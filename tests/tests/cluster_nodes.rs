//! Adding and removing nodes of a running 3-node cluster under keyed `acks=mirrored`
//! load (issue 16): a fourth node started with `--join` is added with `weir cluster
//! add-node`; the copies the placement hash now puts on it move there (and only
//! those), each move in its shard's history with the cause "node added". Then node 2
//! is removed with `weir cluster remove-node`: its copies move to the others, it
//! leaves the membership and the metadata, and is killed. Every acknowledged record is
//! there once, in key order, and the cluster still takes writes.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_client::{Acks, Admin, Client, Producer, ProducerRecord, TopicConfig};
use weir_protocol::messages::DescribeClusterResponse;
use weir_tests::{cli_binary, connect, http_get, read_all, ClusterProcesses, Tmpfs};

const TOPIC: &str = "grow";
const SHARDS: u32 = 12;
const KEYS: usize = 24;
/// History kind of a finished move, and the cause "node added" / "node removed".
const MOVE_FINISHED: u8 = 4;
const NODE_ADDED: u8 = 1;
const NODE_REMOVED: u8 = 2;

async fn describe(client: &Client) -> DescribeClusterResponse {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(d) = Admin::new(client.clone()).describe_cluster().await {
            if d.controller != 0 {
                return d;
            }
        }
        assert!(Instant::now() < deadline, "no controller answers");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Bytes of records a node's copy of `topic`/`shard` holds on disk: the non-zero
/// prefix of each segment file (segments are preallocated with zeros).
fn held_bytes(c: &mut ClusterProcesses, node: u32, topic: &str, shard: u32) -> usize {
    let dir = c
        .node(node)
        .data_dir()
        .join("topics")
        .join(topic)
        .join(shard.to_string());
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| {
            let data = std::fs::read(e.path()).unwrap_or_default();
            data.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1)
        })
        .sum()
}

/// Creates a topic once a controller takes it (the cluster may still be electing).
async fn create_topic(admin: &Admin, name: &str, shards: u32, config: &TopicConfig) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = admin.create_topic(name, shards, config.clone()).await {
        assert!(Instant::now() < deadline, "create topic {name}: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (60 s at most) until the latest change of `topic`/0 is a finished move.
async fn move_finished(admin: &Admin, topic: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = admin.shard_history(topic, 0).await.expect("history");
        if h.events.last().is_some_and(|e| e.kind == MOVE_FINISHED) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {:?}", h.events);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `weir` against the cluster; panics with its output when it fails.
fn weir(bootstrap: &str, args: &[&str]) -> String {
    let out = Command::new(cli_binary())
        .arg("--broker")
        .arg(bootstrap)
        .args(args)
        .output()
        .expect("weir runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "weir {args:?}: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_takes_its_share_and_a_node_removed_gives_everything_away() {
    let mut c = ClusterProcesses::start(3, &[]);
    let client = connect(&c.bootstrap(), Duration::from_secs(20)).await;
    let admin = Admin::new(client.clone());
    let config = TopicConfig {
        replicas: 2,
        min_in_sync: 1,
        ..TopicConfig::default()
    };
    create_topic(&admin, TOPIC, SHARDS, &config).await;
    let before = describe(&client).await;

    let producer = Producer::builder(&client)
        .acks(Acks::Mirrored)
        .build()
        .await
        .expect("producer");
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (producer, stop) = (producer.clone(), stop.clone());
        tokio::spawn(async move {
            let value = "v".repeat(200);
            let mut acked = Vec::new();
            let started = Instant::now();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(150) {
                let key = (seq as usize) % KEYS;
                let rec =
                    ProducerRecord::new(TOPIC, format!("{seq}:{value}")).key(format!("k{key}"));
                // A failed send may still be stored: it is not counted, and a second
                // copy of it would show as a duplicate below.
                if let Ok(f) = producer.send(rec).await {
                    if f.await.is_ok() {
                        acked.push(seq);
                    }
                }
                seq += 1;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 1. Node 4 joins and is added.
    let id = c.join(&[]);
    assert_eq!(id, 4);
    let addr = c.node(4).addr();
    let add_started = Instant::now();
    let out = weir(
        &c.bootstrap(),
        &["cluster", "add-node", "4", &addr, "--timeout-s", "90"],
    );
    assert!(out.contains("holds its share"), "{out}");
    let add_took = add_started.elapsed();
    let after_add = describe(&client).await;
    assert!(after_add.nodes.iter().any(|n| n.node_id == 4));
    let moved: Vec<u32> = after_add
        .shards
        .iter()
        .filter(|s| s.replicas.contains(&4))
        .map(|s| s.shard)
        .collect();
    // 12 shards × 2 copies over 4 nodes: ideally 6 copies move; consistent hashing
    // keeps it near that, never all of them.
    assert!(
        !moved.is_empty() && moved.len() < SHARDS as usize,
        "copies on node 4: {moved:?}"
    );
    let mut deleted_checked = 0;
    for s in &after_add.shards {
        let old = before.shards.iter().find(|b| b.shard == s.shard).unwrap();
        if !s.replicas.contains(&4) {
            let (mut a, mut b) = (s.replicas.clone(), old.replicas.clone());
            a.sort();
            b.sort();
            assert_eq!(a, b, "shard {} moved without a reason", s.shard);
        }
        assert_eq!(s.replicas.len(), 2);
        // The copy that moved to node 4 is deleted from its old node.
        for &gone in old.replicas.iter().filter(|n| !s.replicas.contains(n)) {
            assert_eq!(
                held_bytes(&mut c, gone, TOPIC, s.shard),
                0,
                "node {gone} still holds records of {TOPIC}/{} after it moved",
                s.shard
            );
        }
        if s.replicas.contains(&4) && held_bytes(&mut c, 4, TOPIC, s.shard) > 0 {
            deleted_checked += 1;
        }
    }
    assert!(deleted_checked > 0, "no moved copy with records to check");
    eprintln!(
        "add-node: {} of {} copies moved to node 4 in {add_took:?} (under load)",
        moved.len(),
        2 * SHARDS
    );
    let h = admin.shard_history(TOPIC, moved[0]).await.expect("history");
    assert!(
        h.events
            .iter()
            .any(|e| e.kind == MOVE_FINISHED && e.cause == NODE_ADDED),
        "history of {TOPIC}/{}: {:?}",
        moved[0],
        h.events
    );

    // 2. Node 2 is removed.
    let remove_started = Instant::now();
    let out = weir(
        &c.bootstrap(),
        &["cluster", "remove-node", "2", "--timeout-s", "90"],
    );
    assert!(out.contains("has left the cluster"), "{out}");
    eprintln!(
        "remove-node: node 2's copies moved away and node 2 out in {:?}",
        remove_started.elapsed()
    );
    let after_remove = describe(&client).await;
    assert!(after_remove.nodes.iter().all(|n| n.node_id != 2));
    for s in &after_remove.shards {
        assert!(
            !s.replicas.contains(&2),
            "shard {} kept a copy on 2",
            s.shard
        );
        assert_eq!(s.replicas.len(), 2, "shard {}", s.shard);
    }
    let drained = before
        .shards
        .iter()
        .find(|s| s.replicas.contains(&2))
        .unwrap()
        .shard;
    let h = admin.shard_history(TOPIC, drained).await.expect("history");
    assert!(
        h.events
            .iter()
            .any(|e| e.kind == MOVE_FINISHED && e.cause == NODE_REMOVED),
        "history of {TOPIC}/{drained}: {:?}",
        h.events
    );
    c.node(2).kill9();
    // The cluster goes on without it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = load.await.expect("load task");
    assert!(acked.len() > 100, "only {} acknowledged", acked.len());
    let last = *acked.last().unwrap();
    let f = producer
        .send(ProducerRecord::new(TOPIC, format!("{}:after", last + 1)).key("k0"))
        .await
        .expect("send after removal");
    f.await.expect("the three nodes left take writes");

    // Every acknowledged record once, per-key order kept.
    let bootstrap = c
        .nodes
        .iter()
        .filter(|n| n.is_running())
        .map(|n| n.addr())
        .collect::<Vec<_>>()
        .join(",");
    let reader = connect(&bootstrap, Duration::from_secs(20)).await;
    let all = read_all(&reader, TOPIC, acked.len() + 1, Duration::from_secs(60)).await;
    let mut sorted = all.clone();
    sorted.sort_by_key(|m| (m.shard, m.offset));
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    let mut last_per_key: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for m in &sorted {
        let v = std::str::from_utf8(&m.value).unwrap();
        let seq: u64 = v.split(':').next().unwrap().parse().unwrap();
        *seen.entry(seq).or_default() += 1;
        if let Some(prev) = last_per_key.insert(m.key.to_vec(), seq) {
            assert!(prev < seq, "key order broken: {seq} after {prev}");
        }
    }
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|s| !seen.contains_key(s))
        .collect();
    let dup: Vec<u64> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, _)| *s)
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged records lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(dup.is_empty(), "duplicated: {dup:?}");
}

/// A copy moved to a node that holds none, after retention removed the start of the
/// primary's log: the new copy starts at the primary's first record (it cannot fetch
/// offset 0 any more), catches up, takes over, and serves every record retention kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_moves_after_retention_removed_the_start_of_the_log() {
    let c = ClusterProcesses::start(3, &[("WEIR_RETENTION_CHECK_MS", "200")]);
    let client = connect(&c.bootstrap(), Duration::from_secs(20)).await;
    let admin = Admin::new(client.clone());
    let config = TopicConfig {
        replicas: 1,
        min_in_sync: 1,
        segment_bytes: 64 * 1024,
        max_message_bytes: 16 * 1024,
        retention_bytes: 128 * 1024,
        ..TopicConfig::default()
    };
    create_topic(&admin, "old", 1, &config).await;
    let producer = Producer::builder(&client)
        .acks(Acks::Leader)
        .build()
        .await
        .expect("producer");
    const RECORDS: u64 = 2_000;
    let value = "r".repeat(500);
    let mut futs = Vec::new();
    for seq in 0..RECORDS {
        let rec = ProducerRecord::new("old", format!("{seq}:{value}")).key("k");
        futs.push(producer.send(rec).await.expect("send"));
    }
    for f in futs {
        f.await.expect("ack");
    }
    // Wait until retention has removed the log's first segments.
    let first_offset = |msgs: &[weir_client::Message]| msgs.iter().map(|m| m.offset).min();
    let deadline = Instant::now() + Duration::from_secs(20);
    let start = loop {
        let msgs = read_all(&client, "old", 1, Duration::from_secs(5)).await;
        if let Some(o) = first_offset(&msgs).filter(|&o| o > 0) {
            break o;
        }
        assert!(
            Instant::now() < deadline,
            "retention never removed a segment"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };

    let d = describe(&client).await;
    let s = d.shards.iter().find(|s| s.topic == "old").unwrap();
    let from = s.primary;
    let to = (1..=3).find(|n| !s.replicas.contains(n)).unwrap();
    admin
        .move_shard("old", 0, None, to)
        .await
        .expect("move starts");
    move_finished(&admin, "old", "the move did not finish").await;
    let d = describe(&client).await;
    let s = d.shards.iter().find(|s| s.topic == "old").unwrap();
    assert_eq!(s.primary, to, "the new copy leads");
    assert_eq!(s.replicas, vec![to], "the old copy on node {from} is gone");

    // The new copy serves every record from where retention left the log, and more.
    let f = producer
        .send(ProducerRecord::new("old", format!("{RECORDS}:after")).key("k"))
        .await
        .expect("send");
    f.await.expect("ack after the move");
    let expected = (RECORDS + 1 - start) as usize;
    let msgs = read_all(&client, "old", expected, Duration::from_secs(30)).await;
    let mut offsets: Vec<u64> = msgs.iter().map(|m| m.offset).collect();
    offsets.sort_unstable();
    assert!(offsets[0] >= start, "records below the primary's log start");
    let (lo, hi) = (offsets[0], *offsets.last().unwrap());
    assert_eq!(hi, RECORDS, "the record written after the move");
    assert_eq!(
        offsets,
        (lo..=hi).collect::<Vec<_>>(),
        "dense offsets, each once"
    );
    for m in &msgs {
        let seq: u64 = std::str::from_utf8(&m.value)
            .unwrap()
            .split(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(seq, m.offset, "record {seq} at offset {}", m.offset);
    }
}

/// A copy that would not fit on its new node's disk does not start copying: it waits,
/// held out of sync with the reason on that node's `/health`, instead of filling the
/// disk half way (which would stop every shard of the node). Once the disk grows, the
/// catch-up runs and the move finishes. Mounting needs root; without it the test says
/// so and returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_waits_for_disk_room_and_starts_when_there_is_some() {
    let mounted = std::sync::Mutex::new(Vec::new());
    let failed = std::sync::Mutex::new(None);
    // Node 3's data directory is a 48 MiB tmpfs (the internal logs take 32 of them).
    let mut c = ClusterProcesses::start_prepared(
        3,
        |_| vec![("WEIR_SEGMENT_PREALLOCATE_BYTES".into(), "65536".into())],
        |id, dir| {
            if id == 3 {
                std::fs::create_dir_all(dir).expect("data dir");
                match Tmpfs::mount(dir, "48m") {
                    Ok(t) => mounted.lock().unwrap().push(t),
                    Err(e) => *failed.lock().unwrap() = Some(e),
                }
            }
        },
    );
    if let Some(e) = failed.lock().unwrap().take() {
        eprintln!("SKIPPED: cannot mount a tmpfs for node 3's data directory ({e}); run as root");
        return;
    }
    let client = connect(&c.bootstrap(), Duration::from_secs(20)).await;
    let admin = Admin::new(client.clone());
    let config = TopicConfig {
        replicas: 1,
        min_in_sync: 1,
        segment_bytes: 1 << 20,
        max_message_bytes: 64 * 1024,
        ..TopicConfig::default()
    };
    create_topic(&admin, "wide", 1, &config).await;
    let d = describe(&client).await;
    let primary = d.shards.iter().find(|s| s.topic == "wide").unwrap().primary;
    if primary == 3 {
        admin
            .move_shard("wide", 0, None, 1)
            .await
            .expect("move off node 3");
        let deadline = Instant::now() + Duration::from_secs(30);
        while describe(&client)
            .await
            .shards
            .iter()
            .any(|s| s.topic == "wide" && s.replicas != vec![1])
        {
            assert!(
                Instant::now() < deadline,
                "the empty copy did not move off node 3"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // 24 MiB: more than node 3 has free.
    let producer = Producer::builder(&client)
        .acks(Acks::Leader)
        .build()
        .await
        .expect("producer");
    let value = "w".repeat(4096);
    let mut futs = Vec::new();
    for seq in 0..6_000u64 {
        futs.push(
            producer
                .send(ProducerRecord::new("wide", format!("{seq}:{value}")))
                .await
                .expect("send"),
        );
    }
    for f in futs {
        f.await.expect("ack");
    }
    admin
        .move_shard("wide", 0, None, 3)
        .await
        .expect("move starts");
    let health = c.node(3).http_addr();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = http_get(health, "/health").await;
        if body.contains("held: wide/0: out of sync: catching up needs about") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 never said it waits for room: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // It waits: the move does not finish while the disk is too small.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let h = admin.shard_history("wide", 0).await.expect("history");
    assert_ne!(
        h.events.last().unwrap().kind,
        MOVE_FINISHED,
        "{:?}",
        h.events
    );

    // Room is made: the catch-up starts by itself and the move finishes.
    let data = c.node(3).data_dir();
    let out = Command::new("mount")
        .args(["-o", "remount,size=256m"])
        .arg(&data)
        .output()
        .expect("remount");
    assert!(
        out.status.success(),
        "remount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    move_finished(
        &admin,
        "wide",
        "the move did not finish once there was room",
    )
    .await;
    let body = http_get(health, "/health").await;
    assert!(!body.contains("held: wide/0"), "{body}");
    let msgs = read_all(&client, "wide", 6_000, Duration::from_secs(60)).await;
    assert_eq!(msgs.len(), 6_000, "every record, served by node 3");
    drop(c);
    drop(mounted);
}

//! A cluster of real `weir-broker` processes on loopback: mirrored produce, kill -9 of
//! a shard's primary, switchover to an in-sync mirror with a new epoch, the old primary
//! back as a mirror, and every copy byte-identical afterwards.
//!
//! Rounds of the kill loop: 3 by default, `WEIR_CLUSTER_ROUNDS=20` for the issue's
//! full proof (each round kills the current primary and restarts it).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use weir_client::{Acks, Admin, Client, Producer, ProducerRecord, TopicConfig};
use weir_protocol::messages::{DescribeClusterRequest, DescribeClusterResponse};
use weir_protocol::{ErrorCode, ResponseBody};
use weir_tests::{read_all, read_to_end, ClusterProcesses};

fn rounds() -> usize {
    std::env::var("WEIR_CLUSTER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .clamp(1, 1000)
}

/// One node's DescribeCluster answer, if it answers within a second. Raw frames on
/// one connection of its own, closed after: the SDK would learn the cluster and open
/// connections to every node, which this polling does not need.
async fn describe(addr: &str) -> Option<DescribeClusterResponse> {
    use futures_util::{SinkExt, StreamExt};
    use weir_protocol::codec::ClientCodec;
    use weir_protocol::frame::{RequestFrame, ResponsePayload};
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let mut framed = tokio_util::codec::Framed::new(stream, ClientCodec::default());
        framed
            .send(RequestFrame::new(
                1,
                DescribeClusterRequest { topics: vec![] },
            ))
            .await
            .ok()?;
        match framed.next().await?.ok()?.payload {
            ResponsePayload::Ok(ResponseBody::DescribeCluster(d)) => Some(d),
            _ => None,
        }
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()?
}

/// Waits until some running node names a controller; returns its view.
async fn wait_for_controller(c: &ClusterProcesses, within: Duration) -> DescribeClusterResponse {
    let deadline = Instant::now() + within;
    loop {
        for n in c.nodes.iter().filter(|n| n.is_running()) {
            if let Some(d) = describe(&n.addr()).await {
                if d.controller != 0 && d.nodes.len() == c.nodes.len() {
                    return d;
                }
            }
        }
        assert!(Instant::now() < deadline, "no controller within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a topic through any node, retrying while no controller is known.
async fn create_topic(
    c: &ClusterProcesses,
    name: &str,
    shards: u32,
    replicas: u8,
    min_in_sync: u8,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for n in c.nodes.iter().filter(|n| n.is_running()) {
            let Ok(client) = Client::connect(n.addr()).await else {
                continue;
            };
            let config = TopicConfig {
                replicas,
                min_in_sync,
                ..TopicConfig::default()
            };
            match Admin::new(client).create_topic(name, shards, config).await {
                Ok(t) => {
                    assert_eq!(t.config.replicas, replicas);
                    return;
                }
                Err(e) => eprintln!("create topic via {}: {e}", n.addr()),
            }
        }
        assert!(Instant::now() < deadline, "topic {name} not created");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The shard's (primary, epoch, in-sync set) as the running nodes other than `not`
/// see it — the answer with the highest epoch, since a node that was cut off may
/// still describe an old one — once that primary is a running node other than `not`.
async fn wait_for_primary(
    c: &ClusterProcesses,
    topic: &str,
    shard: u32,
    not: Option<u32>,
    within: Duration,
) -> (u32, u32, Vec<u32>) {
    let deadline = Instant::now() + within;
    loop {
        let mut best: Option<(u32, u32, Vec<u32>)> = None;
        for (i, n) in c.nodes.iter().enumerate() {
            if !n.is_running() || Some(i as u32 + 1) == not {
                continue;
            }
            if let Some(d) = describe(&n.addr()).await {
                if let Some(s) = d
                    .shards
                    .iter()
                    .find(|s| s.topic == topic && s.shard == shard)
                {
                    if best.as_ref().is_none_or(|b| s.epoch > b.1) {
                        best = Some((s.primary, s.epoch, s.in_sync.clone()));
                    }
                }
            }
        }
        if let Some((p, epoch, in_sync)) = best {
            if p != 0 && Some(p) != not && c.nodes[p as usize - 1].is_running() {
                return (p, epoch, in_sync);
            }
        }
        assert!(
            Instant::now() < deadline,
            "{topic}/{shard}: no running primary other than {not:?} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `node` is back in the shard's in-sync set.
async fn wait_in_sync(c: &ClusterProcesses, topic: &str, shard: u32, node: u32, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (p, _, in_sync) = wait_for_primary(c, topic, shard, None, within).await;
        if in_sync.contains(&node) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}/{shard}: node {node} not back in sync within {within:?} (primary {p}, in sync {in_sync:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Produces `values` (keyed) to the shard's primary with acks=mirrored; returns the
/// (offset, value) of every acknowledged record.
async fn produce_mirrored(addr: &str, topic: &str, values: &[String]) -> Vec<(u64, String)> {
    let client = Client::connect(addr).await.expect("connect to primary");
    let producer = Producer::builder(&client)
        .acks(Acks::Mirrored)
        .linger(Duration::from_millis(1))
        .build()
        .await
        .expect("producer");
    let mut futs = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        let rec = ProducerRecord::new(topic.to_string(), v.clone()).key(format!("k{}", i % 7));
        futs.push((v.clone(), producer.send(rec).await.expect("send")));
    }
    let mut out = Vec::with_capacity(futs.len());
    for (v, f) in futs {
        let md = f.await.expect("mirrored ack");
        out.push((md.offset, v));
    }
    out
}

/// Every copy of the shard, read from the stopped nodes' data directories, is the
/// same bytes up to the shortest copy's end; returns the ends.
fn copies_identical(c: &ClusterProcesses, topic: &str, shard: u32) -> Vec<u64> {
    use weir_broker::storage::{Log, LogConfig};
    let mut copies: Vec<Vec<u8>> = Vec::new();
    let mut ends = Vec::new();
    for n in &c.nodes {
        let dir = n
            .data_dir()
            .join("topics")
            .join(topic)
            .join(shard.to_string());
        let log = Log::open(&dir, LogConfig::default()).expect("open copy");
        let r = log.reader();
        let mut bytes = Vec::new();
        let mut at = r.log_start_offset();
        while at < r.log_end_offset() {
            let chunks = r.read_unreplicated(at, 1 << 20).expect("read copy");
            for ch in chunks {
                for b in weir_protocol::batch::split(ch) {
                    let b = b.expect("whole batch");
                    let h = weir_protocol::batch::verify(&b).expect("valid batch");
                    at = h.last_offset() + 1;
                    bytes.extend_from_slice(&b);
                }
            }
        }
        ends.push(r.log_end_offset());
        copies.push(bytes);
    }
    let shortest = copies.iter().map(|c| c.len()).min().unwrap_or(0);
    for (i, copy) in copies.iter().enumerate() {
        assert_eq!(
            &copy[..shortest],
            &copies[0][..shortest],
            "node {}'s copy differs from node 1's",
            i + 1
        );
    }
    ends
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_records_survive_kill_9_of_the_primary_round_after_round() {
    let mut c = ClusterProcesses::start(3, &[]);
    wait_for_controller(&c, Duration::from_secs(20)).await;
    create_topic(&c, "ledger", 1, 3, 2).await;
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut switchovers = Vec::new();
    for round in 0..rounds() {
        let (p, epoch, _) = wait_for_primary(&c, "ledger", 0, None, Duration::from_secs(20)).await;
        let values: Vec<String> = (0..500).map(|i| format!("r{round}-{i:05}")).collect();
        let addr = c.node(p).addr();
        for (offset, v) in produce_mirrored(&addr, "ledger", &values).await {
            assert!(
                acked.insert(offset, v.clone()).is_none(),
                "offset {offset} acked twice"
            );
        }
        c.node(p).kill9();
        let killed = Instant::now();
        let (q, new_epoch, in_sync) =
            wait_for_primary(&c, "ledger", 0, Some(p), Duration::from_secs(20)).await;
        // The successor takes a mirrored produce.
        let qaddr = c.node(q).addr();
        let probe = format!("r{round}-after");
        for (offset, v) in produce_mirrored(&qaddr, "ledger", std::slice::from_ref(&probe)).await {
            assert!(
                acked.insert(offset, v).is_none(),
                "offset {offset} acked twice"
            );
        }
        switchovers.push(killed.elapsed());
        assert!(new_epoch > epoch, "epoch {epoch} → {new_epoch}");
        assert!(!in_sync.contains(&p), "a dead node left the in-sync set");
        // Everything acknowledged so far is readable, in order, once, on the successor.
        let client = Client::connect(qaddr.clone()).await.expect("connect");
        let stored = read_to_end(&client, "ledger", Duration::from_secs(30)).await;
        let read: BTreeMap<u64, String> = stored
            .iter()
            .map(|m| (m.offset, String::from_utf8(m.value.to_vec()).expect("utf8")))
            .collect();
        assert_eq!(read.len(), stored.len(), "an offset read twice");
        for (offset, v) in &acked {
            assert_eq!(
                read.get(offset),
                Some(v),
                "round {round}: acked offset {offset} lost"
            );
        }
        let mut seen = std::collections::HashSet::new();
        assert!(
            read.values().all(|v| seen.insert(v.clone())),
            "a record stored twice"
        );
        c.node(p).restart();
        wait_in_sync(&c, "ledger", 0, p, Duration::from_secs(30)).await;
    }
    eprintln!("kill -9 → first mirrored ack on the successor: {switchovers:?}");
    // The replication record holds every switchover: the placement, then one primary
    // change per kill with rising epochs (in-sync changes in between).
    let client = Client::connect(c.bootstrap()).await.expect("connect");
    let h = Admin::new(client)
        .shard_history("ledger", 0)
        .await
        .expect("shard history");
    assert_eq!(h.replicas.len(), 3);
    assert_eq!(h.events.first().map(|e| e.kind), Some(0), "{:?}", h.events);
    let changes: Vec<_> = h.events.iter().filter(|e| e.kind == 1).collect();
    assert_eq!(changes.len(), rounds(), "{:?}", h.events);
    assert!(changes.windows(2).all(|w| w[0].epoch < w[1].epoch));
    assert!(h
        .events
        .windows(2)
        .all(|w| w[0].at_ms <= w[1].at_ms + 1_000));
    let out = std::process::Command::new(weir_tests::cli_binary())
        .args(["--broker", &c.bootstrap(), "cluster", "history", "ledger/0"])
        .env_remove("WEIR_BROKER")
        .output()
        .expect("run weir");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("primary changed").count(), rounds(), "{text}");
    for n in &mut c.nodes {
        n.terminate();
    }
    let ends = copies_identical(&c, "ledger", 0);
    let total = acked.keys().max().copied().unwrap_or(0) + 1;
    assert!(
        ends.iter().all(|&e| e >= total),
        "copy ends {ends:?}, {total} acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirrored_produce_with_too_few_in_sync_copies_is_refused_by_name() {
    let mut c = ClusterProcesses::start(3, &[]);
    wait_for_controller(&c, Duration::from_secs(20)).await;
    create_topic(&c, "strict", 1, 3, 3).await;
    let (p, _, _) = wait_for_primary(&c, "strict", 0, None, Duration::from_secs(20)).await;
    let addr = c.node(p).addr();
    assert_eq!(
        produce_mirrored(&addr, "strict", &["before".to_string()])
            .await
            .len(),
        1
    );
    // Stop a mirror: it leaves the in-sync set, which is then below min_in_sync.
    let mirror = (1..=3).find(|&n| n != p).unwrap();
    c.node(mirror).kill9();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, _, in_sync) =
            wait_for_primary(&c, "strict", 0, None, Duration::from_secs(20)).await;
        if !in_sync.contains(&mirror) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stopped mirror stayed in sync"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = Client::connect(addr.clone()).await.expect("connect");
    let producer = Producer::builder(&client)
        .acks(Acks::Mirrored)
        .retries(0)
        .build()
        .await
        .expect("producer");
    let err = producer
        .send(ProducerRecord::new("strict", "refused"))
        .await
        .expect("queued")
        .await
        .expect_err("too few in-sync copies");
    assert_eq!(err.code(), Some(ErrorCode::NotEnoughMirrors), "{err}");
    // acks=leader still works: the primary takes it.
    let leader = Producer::builder(&client)
        .acks(Acks::Leader)
        .build()
        .await
        .expect("producer");
    leader
        .send(ProducerRecord::new("strict", "leader"))
        .await
        .expect("queued")
        .await
        .expect("acks=leader answered");
    // The mirror comes back and catches up: mirrored works again.
    c.node(mirror).restart();
    wait_in_sync(&c, "strict", 0, mirror, Duration::from_secs(30)).await;
    assert_eq!(
        produce_mirrored(&addr, "strict", &["after".to_string()])
            .await
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_primary_stops_acknowledging_and_rejoins_as_an_identical_mirror() {
    // Produce waits end after 3 s, so the isolated primary's refusal comes quickly.
    let c = ClusterProcesses::start(3, &[("WEIR_PRODUCE_TIMEOUT_MS", "3000")]);
    let view = wait_for_controller(&c, Duration::from_secs(20)).await;
    create_topic(&c, "iso", 6, 3, 2).await;
    // A shard whose primary is not the controller, so the cut also takes the
    // primary away from the consensus majority.
    let mut target = None;
    for shard in 0..6 {
        let (p, epoch, _) = wait_for_primary(&c, "iso", shard, None, Duration::from_secs(20)).await;
        if p != view.controller {
            target = Some((shard, p, epoch));
            break;
        }
    }
    let Some((shard, p, epoch)) = target else {
        panic!(
            "every shard's primary is the controller (node {})",
            view.controller
        );
    };
    // A node still starting when the topic was created is out of sync until it has
    // caught up; the cut must leave the majority with two in-sync copies.
    for n in 1..=3 {
        wait_in_sync(&c, "iso", shard, n, Duration::from_secs(30)).await;
    }
    let key_for_shard = |i: usize| -> String {
        // A key that lands on `shard` (the broker refuses keys on the wrong shard).
        (0..)
            .map(|k| format!("k{i}-{k}"))
            .find(|k| weir_protocol::keys::shard_for_key(k.as_bytes(), 6) == shard)
            .expect("a key")
    };
    let paddr = c.nodes[p as usize - 1].addr();
    // The cut-off node cannot hand out producer ids (that needs the consensus
    // majority), so the writes sent to it are not idempotent.
    let produce = |addr: String, values: Vec<String>, acks: Acks, idempotent: bool| {
        let keys: Vec<String> = (0..values.len()).map(key_for_shard).collect();
        async move {
            let client = Client::connect(addr).await.expect("connect");
            // An idempotent producer may retry (a retry is answered as a duplicate if
            // the first attempt was stored): just after the switchover the successor
            // can answer NOT_ENOUGH_MIRRORS (retriable) until it has heard its
            // remaining mirror under the new epoch. The cut-off primary's writes get
            // no retry, so each is refused or acknowledged on its first attempt.
            let producer = Producer::builder(&client)
                .acks(acks)
                .idempotent(idempotent)
                .retries(if idempotent { 10 } else { 0 })
                .build()
                .await
                .expect("producer");
            let mut out = Vec::new();
            for (v, k) in values.into_iter().zip(keys) {
                let f = producer
                    .send(ProducerRecord::new("iso", v.clone()).key(k))
                    .await
                    .expect("queued");
                out.push((v, f.await));
            }
            out
        }
    };
    let before: Vec<String> = (0..50).map(|i| format!("before-{i}")).collect();
    let mut acked = Vec::new();
    for (v, r) in produce(paddr.clone(), before, Acks::Mirrored, true).await {
        let md = r.expect("mirrored ack before the cut");
        assert_eq!(md.shard, shard);
        acked.push((md.offset, v));
    }

    c.isolate(p);
    let (q, new_epoch, in_sync) =
        wait_for_primary(&c, "iso", shard, Some(p), Duration::from_secs(20)).await;
    assert!(new_epoch > epoch && !in_sync.contains(&p));
    // The majority side serves mirrored produce...
    let qaddr = c.nodes[q as usize - 1].addr();
    let during: Vec<String> = (0..20).map(|i| format!("majority-{i}")).collect();
    for (v, r) in produce(qaddr.clone(), during, Acks::Mirrored, true).await {
        acked.push((r.expect("mirrored ack on the successor").offset, v));
    }
    // ...and the cut-off primary acknowledges no mirrored write (it may still take
    // acks=leader writes, which it will lose when it rejoins).
    for (v, r) in produce(
        paddr.clone(),
        vec!["isolated".into()],
        Acks::Mirrored,
        false,
    )
    .await
    {
        assert!(
            r.is_err(),
            "the isolated primary acknowledged {v} as mirrored"
        );
    }
    let _ = produce(
        paddr.clone(),
        vec!["isolated-leader".into()],
        Acks::Leader,
        false,
    )
    .await;

    c.heal();
    wait_in_sync(&c, "iso", shard, p, Duration::from_secs(30)).await;
    // Every mirrored acknowledgement is on the primary, once; the cut-off writes are not.
    let (primary, _, _) = wait_for_primary(&c, "iso", shard, None, Duration::from_secs(20)).await;
    let client = Client::connect(c.nodes[primary as usize - 1].addr())
        .await
        .expect("connect");
    let stored = read_to_end(&client, "iso", Duration::from_secs(30)).await;
    let values: Vec<(u64, String)> = stored
        .iter()
        .filter(|m| m.shard == shard)
        .map(|m| (m.offset, String::from_utf8(m.value.to_vec()).expect("utf8")))
        .collect();
    for (offset, v) in &acked {
        assert!(
            values.contains(&(*offset, v.clone())),
            "acked {v} at {offset} lost"
        );
    }
    assert!(
        !values.iter().any(|(_, v)| v.starts_with("isolated")),
        "a cut-off write survived"
    );
    // ...but they are not lost: the returning primary kept them in iso.reconcile,
    // naming itself, the shard, the offsets and epochs they had.
    // Read through the whole cluster: the node answering for "iso" may hold no copy of
    // the reconciliation topic, and Metadata from such a node does not know its end.
    let everyone = Client::connect(c.bootstrap()).await.expect("connect");
    let kept = read_all(&everyone, "iso.reconcile", 1_000, Duration::from_secs(10)).await;
    let kept_values: Vec<String> = kept
        .iter()
        .map(|m| String::from_utf8(m.value.to_vec()).expect("utf8"))
        .collect();
    assert!(
        kept_values.contains(&"isolated-leader".to_string()),
        "the acks=leader write on the cut-off primary was kept: {kept_values:?}"
    );
    let header = |m: &weir_client::Message, name: &str| -> String {
        m.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| String::from_utf8_lossy(&h.value).into_owned())
            .unwrap_or_default()
    };
    for m in &kept {
        assert_eq!(header(m, "weir.reconcile.node"), p.to_string());
        assert_eq!(header(m, "weir.reconcile.topic"), "iso");
        assert_eq!(header(m, "weir.reconcile.shard"), shard.to_string());
        assert_eq!(header(m, "weir.reconcile.epoch"), epoch.to_string());
        let offset: u64 = header(m, "weir.reconcile.offset").parse().expect("offset");
        assert!(
            acked.iter().all(|(o, _)| *o != offset) || values.iter().any(|(o, _)| *o == offset),
            "kept offset {offset} is neither acknowledged nor cut"
        );
    }
    let origins: std::collections::BTreeSet<String> = kept
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                header(m, "weir.reconcile.offset"),
                header(m, "weir.reconcile.epoch")
            )
        })
        .collect();
    // `weir reconcile replay iso` writes them back (last write wins by timestamp: no
    // later write of their keys exists), once however often it runs.
    let replay = || {
        let out = std::process::Command::new(weir_tests::cli_binary())
            .args(["--broker", &c.bootstrap(), "reconcile", "replay", "iso"])
            .env_remove("WEIR_BROKER")
            .output()
            .expect("run weir");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = replay();
    assert!(
        first.starts_with(&format!("replayed {} of {}", origins.len(), kept.len())),
        "{first}"
    );
    assert!(
        replay().starts_with("replayed 0 of"),
        "a second replay wrote again"
    );
    let after = read_to_end(&client, "iso", Duration::from_secs(30)).await;
    let mut back: Vec<String> = after
        .iter()
        .map(|m| String::from_utf8(m.value.to_vec()).expect("utf8"))
        .filter(|v| v.starts_with("isolated"))
        .collect();
    back.sort();
    let mut want = kept_values.clone();
    want.sort();
    want.dedup();
    assert_eq!(back, want, "every kept record back once");
    let mut c = c;
    for n in &mut c.nodes {
        n.terminate();
    }
    copies_identical(&c, "iso", shard);
}

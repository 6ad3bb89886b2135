//! The SDK's cluster routing against a fake two-node cluster: two TCP servers on
//! 127.0.0.1 speaking Weir's protocol (`ServerCodec`) that answer just enough —
//! handshake, DescribeCluster, Metadata, InitProducerId, Produce, FetchOffsets — to
//! check where the client sends what, without a real cluster. The fake keeps one
//! shared "cluster state" (which node is the primary of `t/0`, which is the
//! controller) that a test flips to stage a switchover.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;
use weir_client::{Admin, Client, ClientConfig, Consumer, OffsetReset, Producer, ProducerRecord};
use weir_protocol::batch::BatchHeader;
use weir_protocol::classes::DEFAULT_CLASS_BOUNDS;
use weir_protocol::codec::ServerCodec;
use weir_protocol::frame::{ResponseFrame, DEFAULT_MAX_FRAME_BYTES};
use weir_protocol::messages::*;
use weir_protocol::{ApiKey, ErrorCode, Request};

/// A batch as a fake node received it.
#[derive(Debug, Clone)]
struct Received {
    node: u32,
    bytes: Bytes,
}

/// What a Produce to the current primary does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnProduce {
    /// Store and answer.
    Store,
    /// Store, hand the primary role to the other node (which holds a copy of the log:
    /// it was an in-sync mirror), and drop the connection before answering: the
    /// client cannot know whether the batch was stored.
    StoreThenDie,
}

#[derive(Debug)]
struct Cluster {
    addrs: Mutex<Vec<String>>,
    primary: AtomicU32,
    epoch: AtomicU32,
    controller: AtomicU32,
    on_produce: Mutex<OnProduce>,
    /// Each node's log of `t/0`: stored batches.
    logs: Mutex<[Vec<Bytes>; 2]>,
    /// Every Produce a node got, refused or not.
    produces: Mutex<Vec<Received>>,
    /// (node, api) of every other request.
    calls: Mutex<Vec<(u32, ApiKey)>>,
    /// InitProducerId answers NO_CONTROLLER while this is above 0 (an election).
    elections: AtomicU32,
    /// Node i+1 is down: it closes every connection, new or open, unanswered.
    down: [AtomicBool; 2],
}

impl Cluster {
    fn calls_of(&self, api: ApiKey) -> Vec<u32> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|(_, a)| *a == api)
            .map(|(n, _)| *n)
            .collect()
    }
    fn switch_primary(&self, to: u32) {
        self.primary.store(to, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }
}

/// Starts nodes 1 and 2; returns the shared state (addresses in node order).
async fn fake_cluster(primary: u32, controller: u32) -> Arc<Cluster> {
    let cluster = Arc::new(Cluster {
        addrs: Mutex::new(Vec::new()),
        primary: AtomicU32::new(primary),
        epoch: AtomicU32::new(1),
        controller: AtomicU32::new(controller),
        on_produce: Mutex::new(OnProduce::Store),
        logs: Mutex::new([Vec::new(), Vec::new()]),
        produces: Mutex::new(Vec::new()),
        calls: Mutex::new(Vec::new()),
        elections: AtomicU32::new(0),
        down: [AtomicBool::new(false), AtomicBool::new(false)],
    });
    for node in 1..=2u32 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        cluster
            .addrs
            .lock()
            .unwrap()
            .push(listener.local_addr().unwrap().to_string());
        let c = cluster.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(node, c.clone(), sock));
            }
        });
    }
    cluster
}

async fn serve(node: u32, c: Arc<Cluster>, sock: tokio::net::TcpStream) {
    let mut framed = Framed::new(sock, ServerCodec::new(DEFAULT_MAX_FRAME_BYTES));
    while let Some(Ok(Ok(frame))) = framed.next().await {
        if c.down[node as usize - 1].load(Ordering::SeqCst) {
            return;
        }
        let h = frame.header;
        let api = frame.request.api_key();
        let reply = match frame.request {
            Request::ApiVersions(_) => ResponseFrame::ok(
                &h,
                ApiVersionsResponse {
                    broker_software: "fake".into(),
                    max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
                    apis: ApiKey::ALL
                        .iter()
                        .map(|a| ApiVersionRange {
                            api_key: *a as u16,
                            min_version: a.min_version(),
                            max_version: a.max_version(),
                        })
                        .collect(),
                    class_bounds: DEFAULT_CLASS_BOUNDS.to_vec(),
                    class_weights: vec![8, 4, 2, 1],
                },
            ),
            Request::DescribeCluster(_) => {
                c.calls.lock().unwrap().push((node, api));
                let addrs = c.addrs.lock().unwrap().clone();
                ResponseFrame::ok(
                    &h,
                    DescribeClusterResponse {
                        enabled: 1,
                        node_id: node,
                        controller: c.controller.load(Ordering::SeqCst),
                        nodes: addrs
                            .iter()
                            .enumerate()
                            .map(|(i, a)| NodeInfo {
                                node_id: i as u32 + 1,
                                addr: a.clone(),
                                alive: 1,
                                role: ConsensusRole::Follower,
                                draining: 0,
                                moves_pending: 0,
                            })
                            .collect(),
                        shards: vec![ShardPlacement {
                            topic: "t".into(),
                            shard: 0,
                            primary: c.primary.load(Ordering::SeqCst),
                            epoch: c.epoch.load(Ordering::SeqCst),
                            replicas: vec![1, 2],
                            in_sync: vec![1, 2],
                            ..Default::default()
                        }],
                    },
                )
            }
            Request::Metadata(_) => {
                c.calls.lock().unwrap().push((node, api));
                ResponseFrame::ok(
                    &h,
                    MetadataResponse {
                        broker_software: "fake".into(),
                        topics: vec![TopicMetadata {
                            name: "t".into(),
                            config: TopicConfig {
                                max_message_bytes: 1 << 20,
                                default_priority: 5,
                                ..Default::default()
                            },
                            shards: vec![ShardMetadata::default()],
                            active_shards: 1,
                            reshards: Vec::new(),
                        }],
                        ..Default::default()
                    },
                )
            }
            Request::InitProducerId(_) => {
                c.calls.lock().unwrap().push((node, api));
                let electing = c
                    .elections
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if electing {
                    ResponseFrame::error(&h, ErrorCode::NoController, 0, "election running")
                } else {
                    ResponseFrame::ok(
                        &h,
                        InitProducerIdResponse {
                            producer_id: 7,
                            producer_epoch: 0,
                        },
                    )
                }
            }
            Request::ListOffsets(_) | Request::Fetch(_)
                if c.primary.load(Ordering::SeqCst) != node =>
            {
                c.calls.lock().unwrap().push((node, api));
                ResponseFrame::error(&h, ErrorCode::NotPrimary, 0, "not the primary")
            }
            Request::ListOffsets(_) => {
                c.calls.lock().unwrap().push((node, api));
                ResponseFrame::ok(
                    &h,
                    ListOffsetsResponse {
                        offset: 0,
                        timestamp_ms: -1,
                    },
                )
            }
            Request::Fetch(f) => {
                c.calls.lock().unwrap().push((node, api));
                let log = c.logs.lock().unwrap()[node as usize - 1].clone();
                let mut chunks = Vec::new();
                for i in 0..log.len() {
                    let base = first_offset(&log, i);
                    let count = BatchHeader::read(&log[i]).unwrap().record_count as u64;
                    if base + count > f.offset {
                        let mut b = log[i].to_vec();
                        weir_protocol::batch::set_base_offset(&mut b, base);
                        chunks.push(Bytes::from(b));
                    }
                }
                ResponseFrame::ok(
                    &h,
                    FetchResponse {
                        high_watermark: records_in(&log),
                        log_start_offset: 0,
                        layout_epoch: 0,
                        records: Records::from_chunks(chunks),
                    },
                )
            }
            Request::Produce(p) => {
                let bytes = p.records.to_bytes();
                c.produces.lock().unwrap().push(Received {
                    node,
                    bytes: bytes.clone(),
                });
                if c.primary.load(Ordering::SeqCst) != node {
                    ResponseFrame::error(&h, ErrorCode::NotPrimary, 0, "not the primary")
                } else {
                    let mut logs = c.logs.lock().unwrap();
                    let log = &mut logs[node as usize - 1];
                    let head = BatchHeader::read(&bytes).unwrap();
                    let same = |b: &Bytes| {
                        let o = BatchHeader::read(b).unwrap();
                        (o.producer_id, o.producer_epoch, o.base_sequence)
                            == (head.producer_id, head.producer_epoch, head.base_sequence)
                    };
                    let (base, duplicate) = match log.iter().position(same) {
                        Some(i) => (first_offset(log, i), 1),
                        None => {
                            log.push(bytes.clone());
                            (first_offset(log, log.len() - 1), 0)
                        }
                    };
                    let mode = *c.on_produce.lock().unwrap();
                    if mode == OnProduce::StoreThenDie && duplicate == 0 {
                        let copy = log.clone();
                        let other = 3 - node;
                        logs[other as usize - 1] = copy;
                        *c.on_produce.lock().unwrap() = OnProduce::Store;
                        c.switch_primary(other);
                        return; // drops the connection unanswered
                    }
                    ResponseFrame::ok(
                        &h,
                        ProduceResponse {
                            base_offset: base,
                            last_offset: base + head.record_count as u64 - 1,
                            log_start_offset: 0,
                            duplicate,
                            shard: 0,
                        },
                    )
                }
            }
            Request::FetchOffsets(_) => {
                c.calls.lock().unwrap().push((node, api));
                if c.controller.load(Ordering::SeqCst) == node {
                    ResponseFrame::ok(&h, FetchOffsetsResponse::default())
                } else {
                    ResponseFrame::error(&h, ErrorCode::NotCoordinator, 0, "not the controller")
                }
            }
            other => ResponseFrame::error(
                &h,
                ErrorCode::InvalidRequest,
                0,
                format!("the fake does not answer {:?}", other.api_key()),
            ),
        };
        if framed.send(reply).await.is_err() {
            return;
        }
    }
}

fn first_offset(log: &[Bytes], i: usize) -> u64 {
    log[..i]
        .iter()
        .map(|b| BatchHeader::read(b).unwrap().record_count as u64)
        .sum()
}

fn addr(c: &Cluster, node: u32) -> String {
    c.addrs.lock().unwrap()[node as usize - 1].clone()
}

fn produced_on(c: &Cluster, node: u32) -> Vec<Bytes> {
    c.produces
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.node == node)
        .map(|r| r.bytes.clone())
        .collect()
}

fn records_in(log: &[Bytes]) -> u64 {
    log.iter()
        .map(|b| BatchHeader::read(b).unwrap().record_count as u64)
        .sum()
}

async fn connect(c: &Cluster, first: u32) -> Client {
    let list = format!("{},{}", addr(c, first), addr(c, 3 - first));
    let config = ClientConfig {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    Client::connect_with(list, config).await.unwrap()
}

#[tokio::test]
async fn produce_goes_to_the_shard_primary() {
    let c = fake_cluster(2, 1).await;
    let client = connect(&c, 1).await;
    let view = client.cluster_view().expect("a cluster");
    assert_eq!(view.primary("t", 0), Some(2));
    let producer = Producer::builder(&client).build().await.unwrap();
    for i in 0..20 {
        let m = producer
            .send_and_wait(ProducerRecord::new("t", format!("v{i}")))
            .await
            .unwrap();
        assert_eq!(m.offset, i);
    }
    assert!(produced_on(&c, 1).is_empty(), "node 1 is not the primary");
    assert_eq!(records_in(&c.logs.lock().unwrap()[1]), 20);
    assert_eq!(client.cluster_refreshes(), 0);
}

#[tokio::test]
async fn not_primary_refreshes_once_and_resends_the_same_batches() {
    let c = fake_cluster(2, 1).await;
    let client = connect(&c, 1).await;
    let producer = Producer::builder(&client)
        .max_in_flight_per_shard(5)
        .build()
        .await
        .unwrap();
    producer
        .send_and_wait(ProducerRecord::new("t", "before"))
        .await
        .unwrap();
    // Switchover: node 1 takes over with the same log; node 2 now refuses.
    {
        let mut logs = c.logs.lock().unwrap();
        logs[0] = logs[1].clone();
    }
    c.switch_primary(1);
    let mut futures = Vec::new();
    for i in 0..50 {
        futures.push(
            producer
                .send(ProducerRecord::new("t", format!("after{i}")))
                .await
                .unwrap(),
        );
    }
    for f in futures {
        f.await.unwrap();
    }
    assert_eq!(
        client.cluster_refreshes(),
        1,
        "every refused batch waits for one refresh"
    );
    // Every batch node 2 refused reached node 1 byte for byte: same producer id,
    // epoch and sequence numbers, no re-stamping.
    let refused: Vec<Bytes> = produced_on(&c, 2).into_iter().skip(1).collect();
    assert!(!refused.is_empty());
    let on_one = produced_on(&c, 1);
    for b in &refused {
        assert!(
            on_one.contains(b),
            "a refused batch was changed or not resent"
        );
    }
    let log = c.logs.lock().unwrap()[0].clone();
    assert_eq!(records_in(&log), 51, "no record lost or written twice");
    let mut seqs: Vec<u32> = log
        .iter()
        .map(|b| BatchHeader::read(b).unwrap().base_sequence)
        .collect();
    let sorted = {
        let mut s = seqs.clone();
        s.sort();
        s
    };
    assert_eq!(seqs, sorted, "sequences in order on the new primary");
    seqs.dedup();
    assert_eq!(seqs.len(), log.len());
}

#[tokio::test]
async fn a_lost_answer_is_retried_on_the_new_primary_as_a_duplicate() {
    let c = fake_cluster(2, 1).await;
    let client = connect(&c, 1).await;
    let producer = Producer::builder(&client).build().await.unwrap();
    producer
        .send_and_wait(ProducerRecord::new("t", "first"))
        .await
        .unwrap();
    *c.on_produce.lock().unwrap() = OnProduce::StoreThenDie;
    let m = producer
        .send_and_wait(ProducerRecord::new("t", "second"))
        .await
        .unwrap();
    assert_eq!(
        m.offset, 1,
        "the original offset, from the duplicate answer"
    );
    let log = c.logs.lock().unwrap()[0].clone();
    assert_eq!(records_in(&log), 2, "stored once");
    let died_on = produced_on(&c, 2).pop().unwrap();
    let retried = produced_on(&c, 1).pop().unwrap();
    assert_eq!(died_on, retried, "the very same batch was sent again");
}

#[tokio::test]
async fn group_calls_go_to_the_controller_and_follow_it() {
    let c = fake_cluster(1, 2).await;
    let client = connect(&c, 1).await;
    let admin = Admin::new(client.clone());
    admin.group_offsets("g").await.unwrap();
    assert_eq!(c.calls_of(ApiKey::FetchOffsets), vec![2]);
    // The controller moves; the stale view's node answers NOT_COORDINATOR.
    c.controller.store(1, Ordering::SeqCst);
    admin.group_offsets("g").await.unwrap();
    assert_eq!(c.calls_of(ApiKey::FetchOffsets), vec![2, 2, 1]);
    assert_eq!(client.cluster_refreshes(), 1);
}

#[tokio::test]
async fn a_dead_bootstrap_address_is_skipped() {
    let c = fake_cluster(2, 1).await;
    // A port nothing listens on (bound, then closed).
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let client = Client::connect(format!("{dead},{}", addr(&c, 1)))
        .await
        .unwrap();
    assert_eq!(client.bootstrap_addrs().len(), 2);
    let admin = Admin::new(client);
    let d = admin.describe_cluster().await.unwrap();
    assert_eq!(d.enabled, 1);
    assert_eq!(d.nodes.len(), 2);
    let at_two = admin.describe_cluster_at(&addr(&c, 2)).await.unwrap();
    assert_eq!(at_two.node_id, 2, "asked of node 2 itself");
}

#[tokio::test]
async fn a_consumer_reads_from_the_primary_and_follows_a_switchover() {
    let c = fake_cluster(2, 1).await;
    let client = connect(&c, 1).await;
    let producer = Producer::builder(&client).build().await.unwrap();
    for i in 0..10 {
        producer
            .send_and_wait(ProducerRecord::new("t", format!("v{i}")))
            .await
            .unwrap();
    }
    let mut consumer = Consumer::builder(&client)
        .topic("t")
        .reset(OffsetReset::Earliest)
        .build()
        .unwrap();
    let mut values = Vec::new();
    poll_until(&mut consumer, &mut values, 10).await;
    assert!(!c.calls_of(ApiKey::Fetch).is_empty());
    assert!(
        c.calls_of(ApiKey::Fetch).iter().all(|n| *n == 2),
        "reads go to the primary"
    );
    assert!(c.calls_of(ApiKey::ListOffsets).iter().all(|n| *n == 2));
    // Switchover to node 1, which holds the same log.
    {
        let mut logs = c.logs.lock().unwrap();
        logs[0] = logs[1].clone();
    }
    c.switch_primary(1);
    for i in 10..15 {
        producer
            .send_and_wait(ProducerRecord::new("t", format!("v{i}")))
            .await
            .unwrap();
    }
    poll_until(&mut consumer, &mut values, 15).await;
    let expected: Vec<String> = (0..15).map(|i| format!("v{i}")).collect();
    assert_eq!(values, expected, "every record once, in order");
    assert!(
        c.calls_of(ApiKey::Fetch).contains(&1),
        "reads moved to node 1"
    );
}

#[tokio::test]
async fn no_controller_is_waited_out() {
    let c = fake_cluster(2, 1).await;
    let client = connect(&c, 1).await;
    c.elections.store(2, Ordering::SeqCst);
    Producer::builder(&client).build().await.unwrap();
    assert_eq!(c.calls_of(ApiKey::InitProducerId).len(), 3);
    assert_eq!(c.elections.load(Ordering::SeqCst), 0);
}

/// Polls until `values` holds `n` records (or 200 polls have passed).
async fn poll_until(consumer: &mut Consumer, values: &mut Vec<String>, n: usize) {
    for _ in 0..200 {
        if values.len() >= n {
            break;
        }
        for m in consumer.poll(100, Duration::from_millis(20)).await.unwrap() {
            values.push(String::from_utf8(m.value.to_vec()).unwrap());
        }
    }
}

#[tokio::test]
async fn a_down_primary_is_left_once_the_cluster_names_its_successor() {
    let c = fake_cluster(2, 1).await;
    let client = connect(&c, 1).await;
    let producer = Producer::builder(&client)
        .retry_backoff(Duration::from_millis(20))
        .build()
        .await
        .unwrap();
    producer
        .send_and_wait(ProducerRecord::new("t", "first"))
        .await
        .unwrap();
    // Node 2 goes down; the cluster names node 1 (which holds the same log) only a
    // little later, so the client first finds the view still naming node 2 and can
    // no longer even connect to it.
    c.down[1].store(true, Ordering::SeqCst);
    {
        let mut logs = c.logs.lock().unwrap();
        logs[0] = logs[1].clone();
    }
    let elect = {
        let c = c.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.switch_primary(1);
        })
    };
    let m = producer
        .send_and_wait(ProducerRecord::new("t", "second"))
        .await
        .unwrap();
    elect.await.unwrap();
    assert_eq!(m.offset, 1);
    assert_eq!(records_in(&c.logs.lock().unwrap()[0]), 2);
    assert!(
        client.cluster_refreshes() >= 2,
        "asked again while the view still named the down node"
    );
}

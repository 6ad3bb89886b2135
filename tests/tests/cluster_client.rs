//! The client side of clusters against a real single-node broker: it answers
//! DescribeCluster with `enabled = 0`, so the SDK keeps one connection and behaves as
//! before clusters existed — also when given a list of addresses, a dead one first —
//! and `weir cluster status` says it is a single node instead of failing. `weir cluster
//! status` against a cluster is run against a fake one (two TCP servers answering the
//! handshake and DescribeCluster, and a third node that is down). Routing across nodes
//! is tested against a fake cluster in `client/tests/cluster_routing.rs`.

use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;
use weir_protocol::classes::DEFAULT_CLASS_BOUNDS;
use weir_protocol::codec::ServerCodec;
use weir_protocol::frame::{ResponseFrame, DEFAULT_MAX_FRAME_BYTES};
use weir_protocol::messages::*;
use weir_protocol::{ApiKey, ErrorCode, Request};

use weir_client::{Admin, Consumer, OffsetReset, Producer, ProducerRecord};
use weir_tests::{cli_binary, connect, BrokerProcess};

/// An address nothing listens on (bound, then closed).
fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_in_an_address_list_works_as_before() {
    let broker = BrokerProcess::start();
    let list = format!("{},{}", dead_addr(), broker.addr());
    let client = connect(&list, Duration::from_secs(10)).await;
    assert!(
        client.cluster_view().is_none(),
        "a single node is no cluster"
    );
    let admin = Admin::new(client.clone());
    let d = admin.describe_cluster().await.expect("describe cluster");
    assert_eq!(d.enabled, 0);
    admin
        .create_topic("single", 2, Default::default())
        .await
        .expect("create");
    let producer = Producer::builder(&client).build().await.expect("producer");
    for i in 0..10 {
        producer
            .send_and_wait(ProducerRecord::new("single", format!("v{i}")).key(format!("k{i}")))
            .await
            .expect("produce");
    }
    let mut consumer = Consumer::builder(&client)
        .topic("single")
        .reset(OffsetReset::Earliest)
        .build()
        .expect("consumer");
    let mut got = 0;
    for _ in 0..50 {
        got += consumer
            .poll(100, Duration::from_millis(200))
            .await
            .expect("poll")
            .len();
        if got >= 10 {
            break;
        }
    }
    assert_eq!(got, 10);
    assert_eq!(client.cluster_refreshes(), 0);
}

#[test]
fn cluster_status_of_a_single_node_says_so() {
    let broker = BrokerProcess::start();
    let list = format!("{},{}", dead_addr(), broker.addr());
    for (format, expect) in [
        ("text", "single-node broker"),
        ("json", "\"enabled\":false"),
    ] {
        let out = Command::new(cli_binary())
            .args(["--broker", &list, "cluster", "status", "--format", format])
            .env_remove("WEIR_BROKER")
            .output()
            .expect("run weir");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(expect), "{stdout}");
    }
}

/// What fake node `id` (of nodes 1..=3 at `addrs`) answers to DescribeCluster: node 1
/// is the controller and the primary of `t/0`, so only its answer carries the shard's
/// live fields.
fn fake_answer(id: u32, addrs: &[String]) -> DescribeClusterResponse {
    let role = |n: u32| match (id == n, n) {
        (true, 1) => ConsensusRole::Leader,
        (true, _) => ConsensusRole::Follower,
        _ => ConsensusRole::Unknown,
    };
    DescribeClusterResponse {
        enabled: 1,
        node_id: id,
        controller: 1,
        nodes: addrs
            .iter()
            .enumerate()
            .map(|(i, a)| NodeInfo {
                node_id: i as u32 + 1,
                addr: a.clone(),
                alive: u8::from(i < 2),
                role: role(i as u32 + 1),
                draining: 0,
                moves_pending: 0,
            })
            .collect(),
        shards: vec![ShardPlacement {
            topic: "t".into(),
            shard: 0,
            primary: 1,
            epoch: 4,
            replicas: vec![1, 2, 3],
            in_sync: vec![1, 2],
            live: u8::from(id == 1),
            high_watermark: if id == 1 { 42 } else { 0 },
            mirrors: if id == 1 {
                vec![MirrorState {
                    node_id: 2,
                    offset: 39,
                    lag_records: 3,
                    caught_up_ms_ago: 7,
                }]
            } else {
                Vec::new()
            },
        }],
    }
}

async fn fake_node(id: u32, listener: TcpListener, addrs: Vec<String>) {
    while let Ok((sock, _)) = listener.accept().await {
        let addrs = addrs.clone();
        tokio::spawn(async move {
            let mut framed = Framed::new(sock, ServerCodec::new(DEFAULT_MAX_FRAME_BYTES));
            while let Some(Ok(Ok(frame))) = framed.next().await {
                let h = frame.header;
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
                    Request::DescribeCluster(_) => ResponseFrame::ok(&h, fake_answer(id, &addrs)),
                    _ => ResponseFrame::error(&h, ErrorCode::InvalidRequest, 0, "fake"),
                };
                if framed.send(reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_merges_every_node_and_shows_a_down_one() {
    let l1 = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let l2 = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addrs = vec![
        l1.local_addr().expect("addr").to_string(),
        l2.local_addr().expect("addr").to_string(),
        dead_addr(),
    ];
    let n1 = tokio::spawn(fake_node(1, l1, addrs.clone()));
    let n2 = tokio::spawn(fake_node(2, l2, addrs.clone()));
    // Asked through node 2, which knows no live fields: they come from node 1.
    let run = |format: &'static str| {
        let broker = addrs[1].clone();
        tokio::task::spawn_blocking(move || {
            let out = Command::new(cli_binary())
                .args(["--broker", &broker, "cluster", "status", "--format", format])
                .env_remove("WEIR_BROKER")
                .output()
                .expect("run weir");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).expect("utf8")
        })
    };
    let json: serde_json::Value =
        serde_json::from_str(&run("json").await.expect("weir")).expect("json");
    assert_eq!(json["controller"], 1);
    let reachable: Vec<bool> = json["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["reachable"].as_bool().expect("bool"))
        .collect();
    assert_eq!(reachable, vec![true, true, false]);
    assert_eq!(json["nodes"][0]["role"], "leader");
    assert_eq!(json["nodes"][1]["role"], "follower");
    assert_eq!(json["nodes"][2]["alive"], false);
    let shard = &json["shards"][0];
    assert_eq!(shard["topic"], "t");
    assert_eq!(shard["epoch"], 4);
    assert_eq!(shard["in_sync"], serde_json::json!([1, 2]));
    assert_eq!(shard["high_watermark"], 42);
    assert_eq!(shard["mirrors"][0]["node"], 2);
    assert_eq!(shard["mirrors"][0]["lag_records"], 3);
    let text = run("text").await.expect("weir");
    let row = text.lines().find(|l| l.contains("t/0")).expect("shard row");
    assert!(row.contains("42") && row.contains("2:3"), "{text}");
    let down = text
        .lines()
        .find(|l| l.contains(&addrs[2]))
        .expect("node 3 row");
    assert!(down.contains("no"), "{text}");
    n1.abort();
    n2.abort();
}

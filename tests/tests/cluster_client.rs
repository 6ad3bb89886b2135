//! The client side of clusters against a real single-node broker: it answers
//! DescribeCluster with `enabled = 0`, so the SDK keeps one connection and behaves as
//! before clusters existed — also when given a list of addresses, a dead one first —
//! and `weir cluster status` says it is a single node instead of failing. (Routing
//! across nodes is tested against a fake cluster in `client/tests/cluster_routing.rs`.)

use std::process::Command;
use std::time::Duration;

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

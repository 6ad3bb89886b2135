//! `auth = required` on a three-node cluster: the nodes' links to each other
//! authenticate with the cluster secret (`WEIR_CLUSTER_SECRET`, mechanism WEIR-NODE),
//! so consensus, forwarding and mirroring work while every client must log in; a
//! wrong secret is refused.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use weir_client::{
    Acks, Admin, Client, ClientConfig, Credentials, Producer, ProducerRecord, TopicConfig,
};
use weir_protocol::codec::ClientCodec;
use weir_protocol::frame::{RequestFrame, ResponsePayload};
use weir_protocol::messages::AuthenticateRequest;
use weir_protocol::{ErrorCode, ResponseBody};
use weir_tests::{read_all, ClusterProcesses};

const WAIT: Duration = Duration::from_secs(60);
const SECRET: &str = "correct horse battery staple";

fn admin_config() -> ClientConfig {
    ClientConfig {
        credentials: Some(Credentials::Password {
            user: "admin".into(),
            password: "admin-pw".into(),
        }),
        request_timeout: Duration::from_secs(20),
        ..ClientConfig::default()
    }
}

/// One Authenticate with the WEIR-NODE mechanism on a fresh connection: the principal
/// on success, the error code otherwise.
async fn node_login(addr: &str, secret: &str) -> Result<String, ErrorCode> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut framed = tokio_util::codec::Framed::new(stream, ClientCodec::default());
    framed
        .send(RequestFrame::new(
            1,
            AuthenticateRequest {
                mechanism: "WEIR-NODE".into(),
                payload: bytes::Bytes::copy_from_slice(secret.as_bytes()),
            },
        ))
        .await
        .expect("send");
    let frame = tokio::time::timeout(Duration::from_secs(10), framed.next())
        .await
        .expect("answer in time")
        .expect("a frame")
        .expect("decodes");
    match frame.payload {
        ResponsePayload::Ok(ResponseBody::Authenticate(a)) => Ok(a.principal),
        ResponsePayload::Err(code, _) => Err(code),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_runs_with_auth_required_when_its_links_prove_the_cluster_secret() {
    let c = ClusterProcesses::start(
        3,
        &[
            ("WEIR_AUTH", "required"),
            ("WEIR_ADMIN_PASSWORD", "admin-pw"),
            ("WEIR_CLUSTER_SECRET", SECRET),
        ],
    );
    // Creating a replicated topic needs a controller (consensus between the nodes,
    // over authenticated links) and its placement on every node.
    let deadline = Instant::now() + WAIT;
    let client = loop {
        let attempt = async {
            let client = Client::connect_with(c.bootstrap(), admin_config()).await?;
            let config = TopicConfig {
                replicas: 3,
                min_in_sync: 2,
                ..TopicConfig::default()
            };
            Admin::new(client.clone())
                .create_topic("guarded", 1, config)
                .await?;
            Ok::<_, weir_client::ClientError>(client)
        };
        match attempt.await {
            Ok(client) => break client,
            Err(e) => {
                assert!(Instant::now() < deadline, "no replicated topic: {e}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    // Mirrored acks need the mirrors' MirrorFetch calls to the primary to be allowed.
    let deadline = Instant::now() + WAIT;
    let acked = loop {
        let producer = Producer::builder(&client)
            .acks(Acks::Mirrored)
            .build()
            .await
            .expect("producer");
        let mut futs = Vec::new();
        for i in 0..50 {
            futs.push(
                producer
                    .send(ProducerRecord::new("guarded", format!("v{i}")))
                    .await
                    .expect("send"),
            );
        }
        let mut ok = 0;
        for f in futs {
            if f.await.is_ok() {
                ok += 1;
            }
        }
        if ok == 50 {
            break ok;
        }
        assert!(
            Instant::now() < deadline,
            "mirrored produce never fully acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(acked, 50);
    let got = read_all(&client, "guarded", 50, Duration::from_secs(20)).await;
    assert!(got.len() >= 50, "read {} records", got.len());

    // The mechanism itself: the right secret names the node principal, a wrong one is
    // refused.
    let addr = c.nodes[0].addr();
    assert_eq!(node_login(&addr, SECRET).await, Ok("weir.node".to_string()));
    assert_eq!(
        node_login(&addr, "wrong secret").await,
        Err(ErrorCode::AuthenticationFailed)
    );
}

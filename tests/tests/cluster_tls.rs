//! A cluster whose protocol port speaks TLS: the links between nodes (consensus,
//! forwarding, mirroring) speak TLS too, each node checking the others' certificates
//! against `cluster_tls_ca`, and with `auth = required` they authenticate with the
//! cluster secret inside TLS. A node whose certificate and CA come from another
//! authority cannot join; the others keep working without it.

use std::path::Path;
use std::time::{Duration, Instant};

use weir_client::{
    Acks, Admin, Client, ClientConfig, Credentials, Producer, ProducerRecord, TlsConfig,
    TopicConfig,
};
use weir_tests::certs::{CertFiles, TestCa};
use weir_tests::{read_all, ClusterProcesses};

const WAIT: Duration = Duration::from_secs(60);
const SECRET: &str = "tls cluster secret";

/// The settings of a node serving TLS with `server`, trusting `ca` for its peers,
/// with authentication required.
fn node_env(server: &CertFiles, ca: &Path) -> Vec<(String, String)> {
    [
        ("WEIR_TLS_CERT", server.cert.display().to_string()),
        ("WEIR_TLS_KEY", server.key.display().to_string()),
        ("WEIR_CLUSTER_TLS_CA", ca.display().to_string()),
        ("WEIR_AUTH", "required".to_string()),
        ("WEIR_ADMIN_PASSWORD", "admin-pw".to_string()),
        ("WEIR_CLUSTER_SECRET", SECRET.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn admin_config(ca: &Path) -> ClientConfig {
    ClientConfig {
        tls: Some(TlsConfig {
            ca: ca.to_path_buf(),
            cert: None,
            key: None,
            server_name: None,
        }),
        credentials: Some(Credentials::Password {
            user: "admin".into(),
            password: "admin-pw".into(),
        }),
        request_timeout: Duration::from_secs(20),
        ..ClientConfig::default()
    }
}

/// Creates a topic with three copies (two in sync needed) through `bootstrap`,
/// retrying while the cluster elects its controller; then produces 50 records with
/// `mirrored` acks until all 50 are acknowledged, and reads them back.
async fn mirrored_produce_is_acknowledged(bootstrap: String, ca: &Path, topic: &str) {
    mirrored_produce_is_acknowledged_with(bootstrap, admin_config(ca), topic).await
}

/// [`mirrored_produce_is_acknowledged`] with a client configured by `config`.
async fn mirrored_produce_is_acknowledged_with(
    bootstrap: String,
    config: ClientConfig,
    topic: &str,
) {
    let deadline = Instant::now() + WAIT;
    let client = loop {
        let attempt = async {
            let client = Client::connect_with(bootstrap.clone(), config.clone()).await?;
            let settings = TopicConfig {
                replicas: 3,
                min_in_sync: 2,
                ..TopicConfig::default()
            };
            Admin::new(client.clone())
                .create_topic(topic, 1, settings)
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
    let deadline = Instant::now() + WAIT;
    loop {
        let producer = Producer::builder(&client)
            .acks(Acks::Mirrored)
            .build()
            .await
            .expect("producer");
        let mut futs = Vec::new();
        for i in 0..50 {
            futs.push(
                producer
                    .send(ProducerRecord::new(topic, format!("v{i}")))
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
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mirrored produce never fully acknowledged ({ok} of 50)"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let got = read_all(&client, topic, 50, Duration::from_secs(20)).await;
    assert!(got.len() >= 50, "read {} records", got.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_with_auth_required_elects_and_acknowledges_mirrored_produce() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "cluster");
    let server = ca.server(dir.path(), "node");
    let c = ClusterProcesses::start_each(3, |_| node_env(&server, &ca.cert));
    mirrored_produce_is_acknowledged(c.bootstrap(), &ca.cert, "sealed").await;

    // Every node took part over TLS: each knows the controller, and the shard's
    // in-sync set holds all three copies (each mirror fetched over a TLS link).
    let client = Client::connect_with(c.bootstrap(), admin_config(&ca.cert))
        .await
        .expect("client");
    let admin = Admin::new(client);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut views = Vec::new();
        for n in &c.nodes {
            views.push(admin.describe_cluster_at(&n.addr()).await.expect("view"));
        }
        let controllers: Vec<u32> = views.iter().map(|v| v.controller).collect();
        let in_sync = views[0]
            .shards
            .iter()
            .find(|s| s.topic == "sealed")
            .map(|s| s.in_sync.len());
        if controllers.iter().all(|&x| x != 0 && x == controllers[0]) && in_sync == Some(3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nodes disagree on the controller {controllers:?} or the copies are not all in sync ({in_sync:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for n in &c.nodes {
        assert!(
            !n.log().contains("TLS handshake with node"),
            "a link failed its handshake:\n{}",
            n.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_mutual_tls_the_nodes_present_their_certificates_to_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "cluster");
    let node = ca.node(dir.path(), "weir-node");
    let app = ca.client(dir.path(), "app", false);
    // Every port asks for a client certificate: a link that did not present the
    // node's own would be refused, and no controller would be elected.
    let c = ClusterProcesses::start_each(3, |_| {
        vec![
            ("WEIR_TLS_CERT".into(), node.cert.display().to_string()),
            ("WEIR_TLS_KEY".into(), node.key.display().to_string()),
            ("WEIR_TLS_CLIENT_CA".into(), ca.cert.display().to_string()),
            ("WEIR_CLUSTER_TLS_CA".into(), ca.cert.display().to_string()),
        ]
    });
    let config = ClientConfig {
        tls: Some(TlsConfig {
            ca: ca.cert.clone(),
            cert: Some(app.cert.clone()),
            key: Some(app.key.clone()),
            server_name: None,
        }),
        request_timeout: Duration::from_secs(20),
        ..ClientConfig::default()
    };
    mirrored_produce_is_acknowledged_with(c.bootstrap(), config, "mutual").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_certificate_the_others_do_not_trust_cannot_join() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "cluster");
    let server = ca.server(dir.path(), "node");
    let stranger_ca = TestCa::new(dir.path(), "stranger");
    let stranger = stranger_ca.server(dir.path(), "stranger");
    let mut c = ClusterProcesses::start_each(3, |id| {
        if id == 3 {
            node_env(&stranger, &stranger_ca.cert)
        } else {
            node_env(&server, &ca.cert)
        }
    });
    // Nodes 1 and 2 are a majority: they elect a controller and serve mirrored
    // produce on their own.
    let majority = format!("{},{}", c.nodes[0].addr(), c.nodes[1].addr());
    mirrored_produce_is_acknowledged(majority, &ca.cert, "without-3").await;

    // Node 3 never heard from a controller: it refuses the others' certificates and
    // they refuse its, so it knows of none, and says why in its log.
    let stranger_addr = c.node(3).addr();
    let client = Client::connect_with(stranger_addr.clone(), admin_config(&stranger_ca.cert))
        .await
        .expect("client of node 3");
    let view = Admin::new(client)
        .describe_cluster_at(&stranger_addr)
        .await
        .expect("node 3's view");
    assert_eq!(view.controller, 0, "node 3 learnt of a controller");
    let log = c.node(3).log();
    assert!(
        log.contains("TLS handshake with node at") && log.contains("UnknownIssuer"),
        "node 3's log does not say why it cannot reach the others:\n{log}"
    );
    // And the controller (node 1 or 2, whichever leads: it dials node 3 for
    // heartbeats) names the link to node 3 as failing on its side.
    let named = format!("TLS handshake with node at {stranger_addr}");
    let logs = [c.node(1).log(), c.node(2).log()];
    assert!(
        logs.iter()
            .any(|l| l.contains(&named) && l.contains("UnknownIssuer")),
        "neither node 1 nor node 2 logs the link to node 3:\n{}\n---\n{}",
        logs[0],
        logs[1]
    );
}

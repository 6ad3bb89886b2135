//! TLS on the protocol port, end to end against real broker processes: a round trip
//! over TLS, a plain-TCP client told TLS_REQUIRED by name, an untrusted certificate,
//! certificate rotation without a restart, mutual TLS (no certificate, an expired
//! one, one from another CA), the `weir` CLI's `--tls-ca`, and a broker that refuses
//! to start with a key file it cannot read.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use weir_client::{
    Admin, Client, ClientConfig, ClientError, Producer, ProducerRecord, TlsConfig, TopicConfig,
};
use weir_protocol::ErrorCode;
use weir_tests::certs::{CertFiles, TestCa};
use weir_tests::{broker_binary, cli_binary, read_all, BrokerProcess};

/// Longest any one wait in these tests.
const WAIT: Duration = Duration::from_secs(20);

fn tls_env(files: &CertFiles) -> Vec<(&'static str, String)> {
    vec![
        ("WEIR_TLS_CERT", files.cert.display().to_string()),
        ("WEIR_TLS_KEY", files.key.display().to_string()),
    ]
}

fn start(env: &[(&'static str, String)]) -> BrokerProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    BrokerProcess::start_with_env(&env)
}

fn tls(ca: &Path, client: Option<&CertFiles>) -> ClientConfig {
    ClientConfig {
        tls: Some(TlsConfig {
            ca: ca.to_path_buf(),
            cert: client.map(|c| c.cert.clone()),
            key: client.map(|c| c.key.clone()),
            server_name: None,
        }),
        request_timeout: WAIT,
        ..ClientConfig::default()
    }
}

/// The connection failed in the TLS layer or was closed by it (not a broker answer).
fn is_transport_failure(r: &Result<Client, ClientError>) -> bool {
    matches!(r, Err(ClientError::Io(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_over_tls_and_plain_tcp_is_told_tls_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "main");
    let broker = start(&tls_env(&ca.server(dir.path(), "server")));

    let client = Client::connect_with(broker.addr(), tls(&ca.cert, None))
        .await
        .expect("TLS client");
    Admin::new(client.clone())
        .create_topic("secure", 2, TopicConfig::default())
        .await
        .unwrap();
    let producer = Producer::builder(&client).build().await.unwrap();
    for i in 0..20 {
        producer
            .send_and_wait(ProducerRecord::new("secure", format!("m{i}")).key(format!("k{i}")))
            .await
            .unwrap();
    }
    let got = read_all(&client, "secure", 20, WAIT).await;
    assert_eq!(got.len(), 20);

    // Plain TCP: the broker answers with a named connection error, in plain text.
    match Client::connect(broker.addr()).await {
        Err(ClientError::Broker { code, message, .. }) => {
            assert_eq!(code, ErrorCode::TlsRequired, "{message}");
        }
        other => panic!("plain TCP against the TLS port: {other:?}"),
    }

    // A client that trusts another CA refuses the broker's certificate.
    let other = TestCa::new(dir.path(), "other");
    let refused = Client::connect_with(broker.addr(), tls(&other.cert, None)).await;
    assert!(is_transport_failure(&refused), "{refused:?}");
    // The broker is still up and serving.
    Admin::new(client).list_topics().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestCa::new(dir.path(), "first");
    let live = CertFiles {
        cert: dir.path().join("live.pem"),
        key: dir.path().join("live.key"),
    };
    let replace = |from: &CertFiles| {
        // Written aside and renamed over, as a certificate manager does.
        std::fs::copy(&from.cert, dir.path().join("next.pem")).unwrap();
        std::fs::copy(&from.key, dir.path().join("next.key")).unwrap();
        std::fs::rename(dir.path().join("next.key"), &live.key).unwrap();
        std::fs::rename(dir.path().join("next.pem"), &live.cert).unwrap();
    };
    replace(&first.server(dir.path(), "s1"));
    let broker = start(&tls_env(&live));
    let old = Client::connect_with(broker.addr(), tls(&first.cert, None))
        .await
        .expect("first certificate");

    let second = TestCa::new(dir.path(), "second");
    replace(&second.server(dir.path(), "s2"));
    let new = Client::connect_with(broker.addr(), tls(&second.cert, None))
        .await
        .expect("the rotated certificate is served to new connections");
    let stale = Client::connect_with(broker.addr(), tls(&first.cert, None)).await;
    assert!(is_transport_failure(&stale), "{stale:?}");
    // The connection made before the rotation keeps working.
    Admin::new(old).list_topics().await.unwrap();
    Admin::new(new).list_topics().await.unwrap();
    assert!(broker.log().contains("TLS certificate reloaded"));

    // A broken rotation (a key without its certificate) keeps the last good one.
    std::fs::write(&live.cert, "not a certificate").unwrap();
    Client::connect_with(broker.addr(), tls(&second.cert, None))
        .await
        .expect("the previous certificate is kept");
    assert!(broker.log().contains("keeping the previous certificate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_missing_expired_and_foreign_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "main");
    let mut env = tls_env(&ca.server(dir.path(), "server"));
    env.push(("WEIR_TLS_CLIENT_CA", ca.cert.display().to_string()));
    let broker = start(&env);

    let good = ca.client(dir.path(), "orders-service", false);
    let client = Client::connect_with(broker.addr(), tls(&ca.cert, Some(&good)))
        .await
        .expect("a valid client certificate");
    Admin::new(client.clone()).list_topics().await.unwrap();

    let none = Client::connect_with(broker.addr(), tls(&ca.cert, None)).await;
    assert!(is_transport_failure(&none), "no certificate: {none:?}");
    let expired = ca.client(dir.path(), "old-service", true);
    let r = Client::connect_with(broker.addr(), tls(&ca.cert, Some(&expired))).await;
    assert!(is_transport_failure(&r), "expired certificate: {r:?}");
    let other = TestCa::new(dir.path(), "other");
    let foreign = other.client(dir.path(), "intruder", false);
    let r = Client::connect_with(broker.addr(), tls(&ca.cert, Some(&foreign))).await;
    assert!(is_transport_failure(&r), "foreign certificate: {r:?}");

    Admin::new(client).list_topics().await.unwrap();
    let log = broker.log();
    assert!(log.contains("TLS connection refused"), "{log}");
}

/// Runs `weir --broker ADDR ARGS...`, killed after [`WAIT`].
fn weir(addr: &str, args: &[&str]) -> Output {
    let mut child = Command::new(cli_binary())
        .arg("--broker")
        .arg(addr)
        .args(args)
        .env_remove("WEIR_BROKER")
        .env_remove("WEIR_TLS_CA")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir");
    wait_bounded(&mut child);
    child.wait_with_output().expect("weir output")
}

fn wait_bounded(child: &mut std::process::Child) {
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("command did not finish within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_cli_connects_with_tls_ca_and_names_the_error_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "main");
    let broker = start(&tls_env(&ca.server(dir.path(), "server")));
    let ca_path = ca.cert.display().to_string();
    let out = weir(
        &broker.addr(),
        &["--tls-ca", &ca_path, "topic", "create", "cli-tls"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = weir(&broker.addr(), &["topic", "list", "--tls-ca", &ca_path]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("cli-tls"));
    let out = weir(&broker.addr(), &["topic", "list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TLS_REQUIRED"), "{err}");
}

#[test]
fn the_broker_refuses_to_start_with_a_key_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "main");
    let server = ca.server(dir.path(), "server");
    let missing = dir.path().join("missing.key");
    let mut child = Command::new(broker_binary())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("WEIR_TLS_CERT", &server.cert)
        .env("WEIR_TLS_KEY", &missing)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir-broker");
    wait_bounded(&mut child);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.key"), "{err}");
}

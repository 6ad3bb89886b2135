//! TLS on the HTTP port (`http_tls`): health and metrics over HTTPS with the protocol
//! port's certificate, a plain-HTTP client told to use HTTPS, a rotated certificate
//! served to the next connection without a restart, and `http_tls` without a
//! certificate refused at start.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_tests::certs::{CertFiles, TestCa};
use weir_tests::{broker_binary, BrokerProcess};

const WAIT: Duration = Duration::from_secs(20);

/// GET `path` over HTTPS, trusting only `ca`; the whole response as text.
async fn https_get(addr: SocketAddr, ca: &Path, path: &str) -> std::io::Result<String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(c.expect("CA cert")).expect("add CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let exchange = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("127.0.0.1").expect("name").to_owned();
        let mut s = connector.connect(name, tcp).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut out = Vec::new();
        // The server may close without close_notify after its answer; what arrived counts.
        let r = s.read_to_end(&mut out).await;
        if out.is_empty() {
            r?;
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .map_err(|_| std::io::Error::other("timed out"))?
}

/// GET over plain TCP; the whole response.
async fn plain_get(addr: SocketAddr, path: &str) -> String {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .expect("plain GET answered")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_port_speaks_tls_and_reloads_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestCa::new(dir.path(), "first");
    let live = CertFiles {
        cert: dir.path().join("live.pem"),
        key: dir.path().join("live.key"),
    };
    let replace = |from: &CertFiles| {
        std::fs::copy(&from.cert, dir.path().join("next.pem")).unwrap();
        std::fs::copy(&from.key, dir.path().join("next.key")).unwrap();
        std::fs::rename(dir.path().join("next.key"), &live.key).unwrap();
        std::fs::rename(dir.path().join("next.pem"), &live.cert).unwrap();
    };
    replace(&first.server(dir.path(), "s1"));
    let broker = BrokerProcess::start_with_env(&[
        ("WEIR_TLS_CERT", live.cert.to_str().unwrap()),
        ("WEIR_TLS_KEY", live.key.to_str().unwrap()),
        ("WEIR_HTTP_TLS", "true"),
    ]);
    let http = broker.http_addr();
    let health = https_get(http, &first.cert, "/health")
        .await
        .expect("HTTPS health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let metrics = https_get(http, &first.cert, "/metrics")
        .await
        .expect("HTTPS metrics");
    assert!(metrics.contains("weir_"), "{metrics}");

    let plain = plain_get(http, "/health").await;
    assert!(
        plain.starts_with("HTTP/1.1 400") && plain.contains("HTTPS"),
        "{plain}"
    );

    // Rotation: the next connection gets the new certificate.
    let second = TestCa::new(dir.path(), "second");
    replace(&second.server(dir.path(), "s2"));
    let health = https_get(http, &second.cert, "/health")
        .await
        .expect("the rotated certificate is served");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        https_get(http, &first.cert, "/health").await.is_err(),
        "old CA no longer fits"
    );
}

#[test]
fn http_tls_without_a_certificate_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(broker_binary())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("WEIR_HTTP_TLS", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the broker started with http_tls and no certificate");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("http_tls needs tls_cert"), "{err}");
}

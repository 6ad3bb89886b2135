//! TLS on the protocol port (and, with `http_tls`, the HTTP port): the server configuration built from PEM files, reloaded
//! when the files change on disk (certificate rotation without a restart), and the
//! identity a client certificate proves (mutual TLS).
//!
//! Only TLS 1.3 is offered unless `tls_min_version = "1.2"`; the cipher suites are
//! rustls' (with the ring provider): AES-GCM and ChaCha20-Poly1305 only, ECDHE key
//! exchange only. Each accepted connection asks [`TlsServer::acceptor`] for the current
//! configuration, which first compares the files' size, modification time and inode
//! with what was loaded: a rotation is picked up by the next connection, at the cost of
//! three `stat` calls per accept. A rotation that fails to load (a key written before
//! its certificate, a typo) keeps the old configuration and logs why; open
//! connections keep the certificate they were accepted with.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, TlsVersion};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{what} {path} holds no certificate")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA {path} refused: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error("cluster CA {path} (cluster_tls_ca) refused: {reason}")]
    ClusterCa { path: PathBuf, reason: String },
}

/// The files a server configuration is built from.
#[derive(Debug, Clone)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    min_version: TlsVersion,
}

/// What identifies a version of a file: a rotation changes at least one of these.
type Stamp = Option<(std::time::SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

impl Files {
    fn stamps(&self) -> [Stamp; 3] {
        [
            stamp(&self.cert),
            stamp(&self.key),
            self.client_ca.as_deref().and_then(stamp),
        ]
    }

    fn build(&self) -> Result<ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = match self.min_version {
            TlsVersion::V1_3 => &[&rustls::version::TLS13],
            TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs("client CA", path)? {
                    roots.add(cert).map_err(|e| TlsError::ClientCa {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| TlsError::ClientCa {
                            path: path.clone(),
                            reason: e.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let certs = read_certs("certificate", &self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|source| TlsError::Read {
            what: "private key",
            path: self.key.clone(),
            source,
        })?;
        Ok(builder.with_single_cert(certs, key)?)
    }
}

/// Every certificate in a PEM file; at least one.
pub fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The broker's TLS side: the current acceptor, rebuilt when its files change.
pub struct TlsServer {
    files: Files,
    current: Mutex<(TlsAcceptor, [Stamp; 3])>,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("files", &self.files)
            .finish()
    }
}

impl TlsServer {
    /// The TLS side the config asks for: `None` when `tls_cert` is unset. Fails (so
    /// the broker does not start) when the files cannot be loaded.
    pub fn from_config(config: &Config) -> Result<Option<TlsServer>, TlsError> {
        if config.tls_cert.as_os_str().is_empty() {
            return Ok(None);
        }
        let files = Files {
            cert: config.tls_cert.clone(),
            key: config.tls_key.clone(),
            client_ca: (!config.tls_client_ca.as_os_str().is_empty())
                .then(|| config.tls_client_ca.clone()),
            min_version: config.tls_min_version,
        };
        let stamps = files.stamps();
        let acceptor = TlsAcceptor::from(Arc::new(files.build()?));
        Ok(Some(TlsServer {
            files,
            current: Mutex::new((acceptor, stamps)),
        }))
    }

    /// The TLS side of the HTTP port: `None` unless `http_tls` is on. The protocol
    /// port's certificate and key (reloaded the same way), without client
    /// certificates, so probes and scrapers need only the CA.
    pub fn for_http(config: &Config) -> Result<Option<TlsServer>, TlsError> {
        if !config.http_tls || config.tls_cert.as_os_str().is_empty() {
            return Ok(None);
        }
        let files = Files {
            cert: config.tls_cert.clone(),
            key: config.tls_key.clone(),
            client_ca: None,
            min_version: config.tls_min_version,
        };
        let stamps = files.stamps();
        let acceptor = TlsAcceptor::from(Arc::new(files.build()?));
        Ok(Some(TlsServer {
            files,
            current: Mutex::new((acceptor, stamps)),
        }))
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The acceptor for a new connection, rebuilt first if a file changed since the
    /// last build (or the last failed attempt: a broken rotation is logged once).
    pub fn acceptor(&self) -> TlsAcceptor {
        let stamps = self.files.stamps();
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.1 != stamps {
            current.1 = stamps;
            match self.files.build() {
                Ok(config) => {
                    current.0 = TlsAcceptor::from(Arc::new(config));
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "TLS files changed but cannot be loaded; keeping the previous certificate"
                ),
            }
        }
        current.0.clone()
    }
}

/// The client side of the links between cluster nodes (`cluster/peer.rs`): `None`
/// when the protocol port speaks plain TCP (`tls_cert` unset), so links do too.
/// Otherwise a peer's certificate must chain to `cluster_tls_ca` and name the host of
/// its `peers` address (an IP address or a DNS name); the node's own `tls_cert` and
/// `tls_key` are presented when a peer asks for a client certificate (its port has
/// `tls_client_ca`). Read once at start: a rotated CA needs a restart of the links'
/// side (the port itself reloads its certificate as before).
pub fn link_client_config(config: &Config) -> Result<Option<rustls::ClientConfig>, TlsError> {
    if config.tls_cert.as_os_str().is_empty() {
        return Ok(None);
    }
    let ca = &config.cluster_tls_ca;
    let mut roots = RootCertStore::empty();
    for cert in read_certs("cluster CA", ca)? {
        roots.add(cert).map_err(|e| TlsError::ClusterCa {
            path: ca.clone(),
            reason: e.to_string(),
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match config.tls_min_version {
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let chain = read_certs("certificate", &config.tls_cert)?;
    let key = PrivateKeyDer::from_pem_file(&config.tls_key).map_err(|source| TlsError::Read {
        what: "private key",
        path: config.tls_key.clone(),
        source,
    })?;
    Ok(Some(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?,
    ))
}

/// The principal a verified client certificate names: its subject's common name.
pub fn peer_principal(conn: &rustls::ServerConnection) -> Option<String> {
    let cert = conn.peer_certificates()?.first()?;
    super::x509::subject_common_name(cert)
}

/// Why a connection to the TLS port did not become a TLS session.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The first byte is not a TLS handshake record: a plain-TCP client. It was told
    /// so in a Weir connection error before the socket was closed.
    #[error("plain TCP on the TLS port")]
    NotTls,
    #[error("TLS handshake timed out")]
    TimedOut,
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
}

/// TLS records of the handshake start with this content type.
const HANDSHAKE_RECORD: u8 = 0x16;

impl TlsServer {
    /// Runs the server side of the handshake on an accepted socket, within `timeout`.
    /// A peer whose first byte is not a TLS handshake record gets `refusal` (a Weir
    /// connection error naming `TLS_REQUIRED`) in plain text, so a client that forgot
    /// `--tls-ca` sees why instead of a reset.
    pub async fn accept(
        &self,
        sock: tokio::net::TcpStream,
        timeout: std::time::Duration,
        refusal: &[u8],
    ) -> Result<
        (
            tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
            Option<String>,
        ),
        AcceptError,
    > {
        let acceptor = self.acceptor();
        let handshake = async {
            let mut first = [0u8; 1];
            let n = sock
                .peek(&mut first)
                .await
                .map_err(AcceptError::Handshake)?;
            if n == 1 && first[0] != HANDSHAKE_RECORD {
                refuse_plain(sock, refusal).await;
                return Err(AcceptError::NotTls);
            }
            acceptor.accept(sock).await.map_err(AcceptError::Handshake)
        };
        let stream = tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| AcceptError::TimedOut)??;
        let principal = peer_principal(stream.get_ref().1);
        Ok((stream, principal))
    }
}

/// Tells a plain-TCP peer why it is refused. What it already sent is read and
/// dropped (a little, briefly) after the answer: closing a socket with unread bytes
/// resets the connection, and the reset could reach the peer before the answer.
async fn refuse_plain(mut sock: tokio::net::TcpStream, refusal: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if sock.write_all(refusal).await.is_err() || sock.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let drain = async {
        for _ in 0..16 {
            match sock.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
}

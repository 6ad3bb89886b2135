//! TLS for the SDK: which CA to trust, and the client certificate to present when the
//! broker asks for one (mutual TLS, where the certificate's common name is the
//! client's principal).
//!
//! Built on rustls with the ring provider; TLS 1.3 and 1.2 are offered and the broker
//! chooses (a Weir broker offers only 1.3 unless configured otherwise). The server's
//! certificate is checked against `ca` only, never the system store: a broker's
//! certificate is usually signed by a private CA.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::{ClientError, Result};

/// TLS settings of a [`crate::ClientConfig`].
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// PEM file of the CA certificates that sign the broker's certificate.
    pub ca: PathBuf,
    /// PEM client certificate chain for mutual TLS (with `key`); none when empty.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// The name the broker's certificate must carry; defaults to the host part of
    /// the address the client connects to (a DNS name or an IP address).
    pub server_name: Option<String>,
}

/// A connector built once from a [`TlsConfig`] (files read at build time).
#[derive(Clone)]
pub(crate) struct Connector {
    inner: TlsConnector,
    server_name: Option<String>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("server_name", &self.server_name)
            .finish()
    }
}

fn bad(what: &str, path: &std::path::Path, e: impl std::fmt::Display) -> ClientError {
    ClientError::Invalid(format!("TLS {what} {}: {e}", path.display()))
}

impl Connector {
    /// Reads the files and builds the rustls configuration.
    pub(crate) fn new(config: &TlsConfig) -> Result<Connector> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(&config.ca)
            .map_err(|e| bad("CA", &config.ca, e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad("CA", &config.ca, e))?;
        if certs.is_empty() {
            return Err(bad("CA", &config.ca, "no certificate in the file"));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad("CA", &config.ca, e))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| ClientError::Invalid(format!("TLS: {e}")))?
            .with_root_certificates(roots);
        let tls = match (&config.cert, &config.key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| bad("certificate", cert, e))?
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| bad("certificate", cert, e))?;
                let key_der =
                    PrivateKeyDer::from_pem_file(key).map_err(|e| bad("private key", key, e))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| bad("certificate", cert, e))?
            }
            _ => {
                return Err(ClientError::Invalid(
                    "a TLS client certificate needs its key, and a key its certificate".into(),
                ))
            }
        };
        Ok(Connector {
            inner: TlsConnector::from(Arc::new(tls)),
            server_name: config.server_name.clone(),
        })
    }

    /// Runs the client side of the handshake on a connected socket to `addr`.
    pub(crate) async fn connect(
        &self,
        addr: &str,
        sock: TcpStream,
    ) -> Result<TlsStream<TcpStream>> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => host_of(addr).to_string(),
        };
        let name = ServerName::try_from(name.clone())
            .map_err(|e| ClientError::Invalid(format!("TLS server name {name:?}: {e}")))?;
        self.inner
            .connect(name, sock)
            .await
            .map_err(|e| ClientError::Io(format!("TLS handshake: {e}")))
    }
}

/// The host part of "host:port", "[v6]:port" or a bare host.
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((host, _)) => host,
        None => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_strips_the_port() {
        assert_eq!(host_of("127.0.0.1:7700"), "127.0.0.1");
        assert_eq!(host_of("broker.example:7700"), "broker.example");
        assert_eq!(host_of("[::1]:7700"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }
}

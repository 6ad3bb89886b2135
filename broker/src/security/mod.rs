//! Security: who is on the other end of a connection and what they may do.
//!
//! Off by default (an embedded broker or the README's first commands need none of
//! it); each piece is switched on by its own settings. [`tls`] encrypts the protocol
//! port and, with a client CA, proves a service's identity by its certificate
//! ([`x509`] reads the name out of it).

pub mod tls;
pub mod x509;

use std::sync::Arc;

use crate::config::Config;

/// Who a connection's peer has proved to be. Empty until the transport (a verified
/// client certificate) or an authentication exchange names a principal.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The authenticated principal (a user, an API key's owner, a certificate's
    /// common name).
    pub principal: Option<Arc<str>>,
    /// Where the connection comes from, for the audit log.
    pub peer: Option<std::net::SocketAddr>,
}

/// Everything a connection needs to know about security, built once at start.
#[derive(Debug)]
pub struct Security {
    /// TLS on the protocol port, when `tls_cert` is set.
    pub tls: Option<tls::TlsServer>,
}

/// Why the security settings could not be put in force; the broker does not start.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

impl Security {
    /// Loads what the config switches on.
    pub fn from_config(config: &Config) -> Result<Security, SecurityError> {
        Ok(Security {
            tls: tls::TlsServer::from_config(config)?,
        })
    }

    /// No security at all (tests of other parts).
    pub fn off() -> Security {
        Security { tls: None }
    }
}

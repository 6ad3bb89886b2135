//! Authentication for the SDK: the client's side of the Authenticate api, run on
//! every new connection right after the version handshake when
//! [`crate::ClientConfig::credentials`] is set, and the user, API-key and ACL
//! administration calls ([`crate::Admin`]).
//!
//! With a password the client runs SCRAM-SHA-256 and checks the broker's final
//! signature, so it also knows the broker holds its credential; the password never
//! crosses the wire. An API key is sent as it is (use TLS).

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use weir_protocol::messages::{AuthenticateRequest, ScramCredential};
use weir_protocol::scram::{self, ClientFirst};

use crate::connection::{into_body, Connection};
use crate::error::expect_body;
use crate::error::{ClientError, Result};

/// How a client proves who it is to a broker with `auth = "required"`.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A user and its password (SCRAM-SHA-256).
    Password { user: String, password: String },
    /// An API key, `wk_<id>_<secret>`, as `weir key create` printed it.
    ApiKey(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Password { user, .. } => write!(f, "Password {{ user: {user:?}, .. }}"),
            Credentials::ApiKey(_) => f.write_str("ApiKey(..)"),
        }
    }
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| ClientError::Invalid("no randomness available".into()))?;
    Ok(b)
}

/// The credential a broker stores for `password` (random salt, 4096 iterations), so
/// `Admin::upsert_user` never sends the password itself.
pub fn credential_for(password: &str) -> Result<ScramCredential> {
    let salt = random::<16>()?;
    let c = scram::credential(password, &salt, scram::MIN_ITERATIONS)
        .map_err(|e| ClientError::Invalid(e.to_string()))?;
    Ok(ScramCredential {
        salt: c.salt.into(),
        iterations: c.iterations,
        stored_key: c.stored_key.to_vec().into(),
        server_key: c.server_key.to_vec().into(),
    })
}

async fn step(
    conn: &Connection,
    mechanism: &str,
    payload: String,
    timeout: Duration,
) -> Result<(String, bool, String)> {
    let req = AuthenticateRequest {
        mechanism: mechanism.to_string(),
        payload: payload.into_bytes().into(),
    };
    let body = into_body(conn.call(req.into(), 0, timeout).await?)?;
    let resp = expect_body!(body, Authenticate)?;
    let text = String::from_utf8(resp.payload.to_vec())
        .map_err(|_| ClientError::Protocol("Authenticate payload is not UTF-8".into()))?;
    Ok((text, resp.done == 1, resp.principal))
}

fn protocol(e: scram::ScramError) -> ClientError {
    ClientError::Protocol(format!("SCRAM: {e}"))
}

/// Authenticates `conn`; returns the principal the broker names.
pub(crate) async fn authenticate(
    conn: &Connection,
    creds: &Credentials,
    timeout: Duration,
) -> Result<String> {
    match creds {
        Credentials::ApiKey(key) => {
            let (_, done, principal) = step(conn, "API-KEY", key.clone(), timeout).await?;
            if !done {
                return Err(ClientError::Protocol(
                    "API-KEY took more than one step".into(),
                ));
            }
            Ok(principal)
        }
        Credentials::Password { user, password } => {
            let first = ClientFirst {
                user: user.clone(),
                nonce: URL_SAFE_NO_PAD.encode(random::<18>()?),
            };
            let (server_first, done, _) =
                step(conn, scram::MECHANISM, first.message(), timeout).await?;
            if done {
                return Err(ClientError::Protocol("SCRAM ended after one step".into()));
            }
            let (fin, expected) =
                scram::client_final(&first, &server_first, password).map_err(protocol)?;
            let (server_final, done, principal) =
                step(conn, scram::MECHANISM, fin.message(), timeout).await?;
            scram::check_server_final(server_final.as_bytes(), &expected).map_err(protocol)?;
            if !done {
                return Err(ClientError::Protocol(
                    "SCRAM did not end after two steps".into(),
                ));
            }
            Ok(principal)
        }
    }
}

//! Authentication: the broker's side of the Authenticate api (SCRAM-SHA-256 for
//! users, API keys for services), and API keys themselves.
//!
//! SCRAM runs in two Authenticate requests on one connection; between them the
//! connection keeps the exchange ([`Pending`]). An unknown user gets a made-up salt
//! derived from its name and fails at the proof like a wrong password, so the answers
//! do not tell which user names exist. An API key is `wk_<key_id>_<secret>`; the
//! broker keeps an Argon2id hash of the secret and checks it on the blocking pool
//! (tens of milliseconds by design), so a connection presenting keys waits for its
//! own checks without holding up anyone else's.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use weir_protocol::scram::{self, ClientFinal, ClientFirst, Credential, ServerFirst};

use super::store::Snapshot;

/// The API-key mechanism's name in AuthenticateRequest.
pub const API_KEY_MECHANISM: &str = "API-KEY";
/// The mechanism cluster nodes authenticate their links to each other with: the
/// payload is the cluster secret (`WEIR_CLUSTER_SECRET`), the principal [`NODE_PRINCIPAL`].
pub const NODE_MECHANISM: &str = "WEIR-NODE";
/// The principal of a node's link to another node; it may do everything. A user or
/// key of the same name gets nothing from the name: the grant comes with the
/// mechanism.
pub const NODE_PRINCIPAL: &str = "weir.node";
/// Every API key starts with this.
pub const KEY_PREFIX: &str = "wk_";
/// PBKDF2 iterations of credentials the broker makes itself (the bootstrap admin).
pub const ITERATIONS: u32 = 4096;

/// A SCRAM exchange between its two steps.
#[derive(Debug, Clone)]
pub struct Pending {
    user: String,
    first_bare: String,
    server_first: String,
    /// `None` for an unknown user: the exchange goes on and fails at the proof.
    credential: Option<Credential>,
}

impl Pending {
    /// The user name the client claimed.
    pub fn user(&self) -> &str {
        &self.user
    }
}

/// Why authentication failed; the client is told only AUTHENTICATION_FAILED and
/// this text, the audit log gets the same.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("unknown mechanism {0:?}; SCRAM-SHA-256, API-KEY and WEIR-NODE are spoken")]
    Mechanism(String),
    #[error(transparent)]
    Scram(#[from] scram::ScramError),
    #[error("unknown user or wrong password")]
    BadCredentials,
    #[error("the client's final message does not continue this exchange")]
    NoExchange,
    #[error("unknown or revoked API key")]
    BadKey,
    #[error("wrong cluster secret, or this node has none (WEIR_CLUSTER_SECRET)")]
    BadNodeSecret,
    #[error("no randomness available")]
    Random,
}

fn random_bytes<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| AuthError::Random)?;
    Ok(b)
}

/// A fresh random salt for a new credential.
pub fn new_salt() -> Result<[u8; 16], AuthError> {
    random_bytes::<16>()
}

/// SCRAM's first step: answers the client-first message with the server-first one.
pub fn scram_first(snapshot: &Snapshot, payload: &[u8]) -> Result<(Pending, String), AuthError> {
    let (first, first_bare) = ClientFirst::parse(payload)?;
    let credential = snapshot
        .stored
        .users
        .get(&first.user)
        .and_then(|u| u.credential());
    let (salt, iterations) = match &credential {
        Some(c) => (c.salt.clone(), c.iterations),
        None => {
            // The same made-up salt for the same unknown name every time.
            let d = ring::digest::digest(
                &ring::digest::SHA256,
                format!("weir unknown user {}", first.user).as_bytes(),
            );
            (d.as_ref()[..16].to_vec(), ITERATIONS)
        }
    };
    let nonce = format!(
        "{}{}",
        first.nonce,
        URL_SAFE_NO_PAD.encode(random_bytes::<18>()?)
    );
    let server_first = ServerFirst {
        nonce,
        salt,
        iterations,
    }
    .message();
    Ok((
        Pending {
            user: first.user,
            first_bare,
            server_first: server_first.clone(),
            credential,
        },
        server_first,
    ))
}

/// SCRAM's second step: checks the proof; on success the user's name and the
/// server-final message.
pub fn scram_final(pending: Pending, payload: &[u8]) -> Result<(String, String), AuthError> {
    let fin = ClientFinal::parse(payload)?;
    let nonce = pending
        .server_first
        .strip_prefix("r=")
        .and_then(|s| s.split(',').next())
        .ok_or(AuthError::NoExchange)?;
    if fin.nonce != nonce {
        return Err(AuthError::NoExchange);
    }
    let credential = pending.credential.ok_or(AuthError::BadCredentials)?;
    let server = scram::server_final(
        &credential,
        &pending.first_bare,
        &pending.server_first,
        &fin,
    )
    .map_err(|_| AuthError::BadCredentials)?;
    Ok((pending.user, server.message()))
}

/// A new API key: its id, the whole key to hand out once, and the hash to store.
pub fn new_api_key() -> Result<(String, String, String), AuthError> {
    let id: String = random_bytes::<8>()?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let secret = URL_SAFE_NO_PAD.encode(random_bytes::<32>()?);
    let salt = SaltString::encode_b64(&random_bytes::<16>()?).map_err(|_| AuthError::Random)?;
    let hash = Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map_err(|_| AuthError::Random)?
        .to_string();
    Ok((id.clone(), format!("{KEY_PREFIX}{id}_{secret}"), hash))
}

/// Checks an API key against the store (Argon2: call it on the blocking pool);
/// the key's principal on success.
pub fn check_api_key(snapshot: &Arc<Snapshot>, key: &[u8]) -> Result<String, AuthError> {
    let key = std::str::from_utf8(key).map_err(|_| AuthError::BadKey)?;
    let (id, secret) = key
        .strip_prefix(KEY_PREFIX)
        .and_then(|k| k.split_once('_'))
        .ok_or(AuthError::BadKey)?;
    let stored = snapshot.stored.api_keys.get(id).ok_or(AuthError::BadKey)?;
    let hash = PasswordHash::new(&stored.hash).map_err(|_| AuthError::BadKey)?;
    Argon2::default()
        .verify_password(secret.as_bytes(), &hash)
        .map_err(|_| AuthError::BadKey)?;
    Ok(stored.principal.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::store::{Stored, StoredKey, StoredUser};

    fn snapshot_with(stored: Stored) -> Arc<Snapshot> {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::security::store::Store::open(dir.path()).unwrap();
        store
            .update(|s| {
                *s = stored;
                Ok::<_, crate::security::store::StoreError>(())
            })
            .unwrap();
        store.snapshot()
    }

    fn exchange(snap: &Snapshot, user: &str, password: &str) -> Result<String, AuthError> {
        let first = ClientFirst {
            user: user.into(),
            nonce: "clientnonce".into(),
        };
        let (pending, server_first) = scram_first(snap, first.message().as_bytes())?;
        let (fin, expected) = scram::client_final(&first, &server_first, password)?;
        let (who, server_final) = scram_final(pending, fin.message().as_bytes())?;
        scram::check_server_final(server_final.as_bytes(), &expected)?;
        Ok(who)
    }

    #[test]
    fn scram_accepts_the_password_and_nothing_else() {
        let mut s = Stored::default();
        let cred = scram::credential("s3cret", &[9; 16], 4096).unwrap();
        s.users
            .insert("alice".into(), StoredUser::from_credential(&cred));
        let snap = snapshot_with(s);
        assert_eq!(exchange(&snap, "alice", "s3cret").unwrap(), "alice");
        assert_eq!(
            exchange(&snap, "alice", "guess"),
            Err(AuthError::BadCredentials)
        );
        assert_eq!(
            exchange(&snap, "mallory", "s3cret"),
            Err(AuthError::BadCredentials)
        );
    }

    #[test]
    fn api_keys_check_against_their_hash_and_only_while_stored() {
        let (id, key, hash) = new_api_key().unwrap();
        assert!(key.starts_with("wk_"));
        let mut s = Stored::default();
        s.api_keys.insert(
            id.clone(),
            StoredKey {
                principal: "orders-service".into(),
                description: String::new(),
                created_ms: 0,
                hash: hash.clone(),
            },
        );
        assert!(!hash.contains(&key[20..]), "the secret is not stored");
        let snap = snapshot_with(s.clone());
        assert_eq!(
            check_api_key(&snap, key.as_bytes()).unwrap(),
            "orders-service"
        );
        let wrong = format!("{}x", &key[..key.len() - 1]);
        assert_eq!(
            check_api_key(&snap, wrong.as_bytes()),
            Err(AuthError::BadKey)
        );
        s.api_keys.remove(&id);
        let revoked = snapshot_with(s);
        assert_eq!(
            check_api_key(&revoked, key.as_bytes()),
            Err(AuthError::BadKey)
        );
    }
}

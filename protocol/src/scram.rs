//! SCRAM-SHA-256 (RFC 5802 with RFC 7677's hash), the password mechanism of the
//! Authenticate api: the message grammar both sides speak and the key arithmetic.
//!
//! Pure functions, no randomness and no I/O: callers bring the nonces and salts, so
//! the broker, the SDK and the test vectors share one implementation. The subset
//! spoken is the one Kafka and Redpanda speak: no channel binding (the GS2 header is
//! always `n,,`, `c=biws`), no authorization identity, no extensions. The broker
//! stores only a user's salt, iteration count, StoredKey and ServerKey, never the
//! password or anything a password can be derived from faster than by PBKDF2.
//!
//! Every parser here reads bytes a peer sent: each is bounded (messages over
//! [`MAX_MESSAGE_BYTES`] are refused before parsing), returns a named
//! [`ScramError`], and is property-tested and fuzzed.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::{digest, hmac, pbkdf2};

/// The mechanism's name in AuthenticateRequest.
pub const MECHANISM: &str = "SCRAM-SHA-256";
/// Fewest PBKDF2 iterations a credential may use (RFC 7677's minimum).
pub const MIN_ITERATIONS: u32 = 4096;
/// Most PBKDF2 iterations a client accepts from a server (bounds a hostile server's
/// cost) and a broker accepts in a credential.
pub const MAX_ITERATIONS: u32 = 1_000_000;
/// Salt lengths accepted, in bytes.
pub const SALT_BYTES: std::ops::RangeInclusive<usize> = 16..=64;
/// Longest SCRAM message either side accepts.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Bytes of SHA-256 output: keys, proofs, signatures.
pub const KEY_BYTES: usize = 32;

/// Why a SCRAM message or exchange was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("SCRAM message longer than {MAX_MESSAGE_BYTES} bytes")]
    TooLong,
    #[error("SCRAM message is not UTF-8")]
    NotUtf8,
    #[error("SCRAM message malformed: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported (GS2 header must be \"n,,\")")]
    ChannelBinding,
    #[error("the server's nonce does not extend the client's")]
    NonceMismatch,
    #[error("iteration count {0} outside {MIN_ITERATIONS}..={MAX_ITERATIONS}")]
    Iterations(u32),
    #[error("salt of {0} bytes; 16..=64 expected")]
    Salt(usize),
    #[error("the proof does not match: wrong password")]
    BadProof,
    #[error("the server's signature does not match: not the broker holding the credential")]
    BadServerSignature,
}

/// What a broker stores for one user: derived from the password, never reversible
/// to it (RFC 5802 §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: [u8; KEY_BYTES],
    pub server_key: [u8; KEY_BYTES],
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; KEY_BYTES] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    let mut out = [0u8; KEY_BYTES];
    out.copy_from_slice(tag.as_ref());
    out
}

fn sha256(data: &[u8]) -> [u8; KEY_BYTES] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; KEY_BYTES];
    out.copy_from_slice(d.as_ref());
    out
}

fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; KEY_BYTES] {
    let mut out = [0u8; KEY_BYTES];
    let n = std::num::NonZeroU32::new(iterations.max(1)).expect("at least 1");
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        n,
        salt,
        password.as_bytes(),
        &mut out,
    );
    out
}

/// The credential a broker stores for `password` (checked: iterations and salt in
/// range).
pub fn credential(password: &str, salt: &[u8], iterations: u32) -> Result<Credential, ScramError> {
    check_parameters(salt.len(), iterations)?;
    let salted = salted_password(password, salt, iterations);
    let client_key = hmac_sha256(&salted, b"Client Key");
    Ok(Credential {
        salt: salt.to_vec(),
        iterations,
        stored_key: sha256(&client_key),
        server_key: hmac_sha256(&salted, b"Server Key"),
    })
}

/// Refuses salts and iteration counts outside the accepted ranges.
pub fn check_parameters(salt_bytes: usize, iterations: u32) -> Result<(), ScramError> {
    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
        return Err(ScramError::Iterations(iterations));
    }
    if !SALT_BYTES.contains(&salt_bytes) {
        return Err(ScramError::Salt(salt_bytes));
    }
    Ok(())
}

fn text(bytes: &[u8]) -> Result<&str, ScramError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(ScramError::TooLong);
    }
    std::str::from_utf8(bytes).map_err(|_| ScramError::NotUtf8)
}

/// `key=value` attribute `key` at the front of `part`.
fn attr(part: Option<&str>, key: char) -> Result<&str, ScramError> {
    let part = part.ok_or(ScramError::Malformed("attribute missing"))?;
    let mut chars = part.chars();
    if chars.next() != Some(key) || chars.next() != Some('=') {
        return Err(ScramError::Malformed("unexpected attribute"));
    }
    Ok(&part[2..])
}

/// A nonce: printable ASCII except ',' (RFC 5802), non-empty.
fn check_nonce(n: &str) -> Result<(), ScramError> {
    if n.is_empty() || !n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',') {
        return Err(ScramError::Malformed("bad nonce"));
    }
    Ok(())
}

fn b64(s: &str) -> Result<Vec<u8>, ScramError> {
    B64.decode(s)
        .map_err(|_| ScramError::Malformed("bad base64"))
}

fn key_b64(s: &str) -> Result<[u8; KEY_BYTES], ScramError> {
    b64(s)?
        .try_into()
        .map_err(|_| ScramError::Malformed("key is not 32 bytes"))
}

/// The client's first message: who, and the client's nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    pub user: String,
    pub nonce: String,
}

impl ClientFirst {
    /// `n=<user>,r=<nonce>` (RFC 5802 `client-first-message-bare`; `=` and `,` in
    /// the name written `=3D` and `=2C`).
    pub fn bare(&self) -> String {
        let user = self.user.replace('=', "=3D").replace(',', "=2C");
        format!("n={user},r={}", self.nonce)
    }

    /// The whole message as sent: GS2 header `n,,` then the bare part.
    pub fn message(&self) -> String {
        format!("n,,{}", self.bare())
    }

    /// Parses a client-first message; also returns its bare part (the server needs
    /// it verbatim for the AuthMessage).
    pub fn parse(bytes: &[u8]) -> Result<(ClientFirst, String), ScramError> {
        let s = text(bytes)?;
        let bare = s.strip_prefix("n,,").ok_or(ScramError::ChannelBinding)?;
        let mut parts = bare.split(',');
        let user = attr(parts.next(), 'n')?;
        let nonce = attr(parts.next(), 'r')?;
        if parts.next().is_some() {
            return Err(ScramError::Malformed("extensions are not supported"));
        }
        check_nonce(nonce)?;
        let user = unescape_name(user)?;
        if user.is_empty() {
            return Err(ScramError::Malformed("empty user name"));
        }
        Ok((
            ClientFirst {
                user,
                nonce: nonce.to_string(),
            },
            bare.to_string(),
        ))
    }
}

fn unescape_name(s: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let esc = rest
            .get(i..i + 3)
            .ok_or(ScramError::Malformed("bad name escape"))?;
        out.push(match esc {
            "=3D" => '=',
            "=2C" => ',',
            _ => return Err(ScramError::Malformed("bad name escape")),
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The server's first message: the combined nonce, the salt and iteration count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFirst {
    pub nonce: String,
    pub salt: Vec<u8>,
    pub iterations: u32,
}

impl ServerFirst {
    /// `r=<nonce>,s=<base64 salt>,i=<iterations>`.
    pub fn message(&self) -> String {
        format!(
            "r={},s={},i={}",
            self.nonce,
            B64.encode(&self.salt),
            self.iterations
        )
    }

    /// Parses and checks a server-first message (nonce, salt and iteration ranges).
    pub fn parse(bytes: &[u8]) -> Result<ServerFirst, ScramError> {
        let s = text(bytes)?;
        let mut parts = s.split(',');
        let nonce = attr(parts.next(), 'r')?;
        let salt = b64(attr(parts.next(), 's')?)?;
        let iterations = attr(parts.next(), 'i')?
            .parse::<u32>()
            .map_err(|_| ScramError::Malformed("bad iteration count"))?;
        if parts.next().is_some() {
            return Err(ScramError::Malformed("extensions are not supported"));
        }
        check_nonce(nonce)?;
        check_parameters(salt.len(), iterations)?;
        Ok(ServerFirst {
            nonce: nonce.to_string(),
            salt,
            iterations,
        })
    }
}

/// The client's final message: the nonce again and the proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFinal {
    pub nonce: String,
    pub proof: [u8; KEY_BYTES],
}

impl ClientFinal {
    /// `c=biws,r=<nonce>` (`client-final-message-without-proof`).
    pub fn without_proof(&self) -> String {
        format!("c=biws,r={}", self.nonce)
    }

    /// The whole message: `c=biws,r=<nonce>,p=<base64 proof>`.
    pub fn message(&self) -> String {
        format!("{},p={}", self.without_proof(), B64.encode(self.proof))
    }

    pub fn parse(bytes: &[u8]) -> Result<ClientFinal, ScramError> {
        let s = text(bytes)?;
        let mut parts = s.split(',');
        if attr(parts.next(), 'c')? != "biws" {
            return Err(ScramError::ChannelBinding);
        }
        let nonce = attr(parts.next(), 'r')?;
        let proof = key_b64(attr(parts.next(), 'p')?)?;
        if parts.next().is_some() {
            return Err(ScramError::Malformed("extensions are not supported"));
        }
        check_nonce(nonce)?;
        Ok(ClientFinal {
            nonce: nonce.to_string(),
            proof,
        })
    }
}

/// The server's final message: its signature, which proves it holds the credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFinal {
    pub signature: [u8; KEY_BYTES],
}

impl ServerFinal {
    /// `v=<base64 signature>`.
    pub fn message(&self) -> String {
        format!("v={}", B64.encode(self.signature))
    }

    pub fn parse(bytes: &[u8]) -> Result<ServerFinal, ScramError> {
        let s = text(bytes)?;
        let signature = key_b64(attr(Some(s), 'v')?)?;
        Ok(ServerFinal { signature })
    }
}

/// `client-first-bare , server-first , client-final-without-proof`.
fn auth_message(client_first_bare: &str, server_first: &str, final_without_proof: &str) -> String {
    format!("{client_first_bare},{server_first},{final_without_proof}")
}

/// The client's side, after the server's first message: the final message to send,
/// and the server signature to expect back.
pub fn client_final(
    first: &ClientFirst,
    server_first_message: &str,
    password: &str,
) -> Result<(ClientFinal, [u8; KEY_BYTES]), ScramError> {
    let server = ServerFirst::parse(server_first_message.as_bytes())?;
    if !server.nonce.starts_with(&first.nonce) || server.nonce.len() == first.nonce.len() {
        return Err(ScramError::NonceMismatch);
    }
    let salted = salted_password(password, &server.salt, server.iterations);
    let client_key = hmac_sha256(&salted, b"Client Key");
    let stored_key = sha256(&client_key);
    let mut fin = ClientFinal {
        nonce: server.nonce,
        proof: [0; KEY_BYTES],
    };
    let auth = auth_message(&first.bare(), server_first_message, &fin.without_proof());
    let signature = hmac_sha256(&stored_key, auth.as_bytes());
    for (p, (k, s)) in fin.proof.iter_mut().zip(client_key.iter().zip(signature)) {
        *p = k ^ s;
    }
    let server_key = hmac_sha256(&salted, b"Server Key");
    Ok((fin, hmac_sha256(&server_key, auth.as_bytes())))
}

/// The server's side of the final step: checks the client's proof against the
/// stored credential and returns the server's final message.
pub fn server_final(
    credential: &Credential,
    client_first_bare: &str,
    server_first_message: &str,
    fin: &ClientFinal,
) -> Result<ServerFinal, ScramError> {
    let auth = auth_message(
        client_first_bare,
        server_first_message,
        &fin.without_proof(),
    );
    let signature = hmac_sha256(&credential.stored_key, auth.as_bytes());
    let mut client_key = [0u8; KEY_BYTES];
    for (k, (p, s)) in client_key.iter_mut().zip(fin.proof.iter().zip(signature)) {
        *k = p ^ s;
    }
    if !same(&sha256(&client_key), &credential.stored_key) {
        return Err(ScramError::BadProof);
    }
    Ok(ServerFinal {
        signature: hmac_sha256(&credential.server_key, auth.as_bytes()),
    })
}

/// The client's last check: the server proved it holds the credential.
pub fn check_server_final(bytes: &[u8], expected: &[u8; KEY_BYTES]) -> Result<(), ScramError> {
    let fin = ServerFinal::parse(bytes)?;
    if !same(&fin.signature, expected) {
        return Err(ScramError::BadServerSignature);
    }
    Ok(())
}

/// Equality whose time does not depend on where two keys differ.
pub fn same(a: &[u8; KEY_BYTES], b: &[u8; KEY_BYTES]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 §3's example exchange, byte for byte.
    #[test]
    fn the_rfc_7677_example_exchange() {
        let first = ClientFirst {
            user: "user".into(),
            nonce: "rOprNGfwEbeRWgbNEkqO".into(),
        };
        assert_eq!(first.message(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                            s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let (fin, expected) = client_final(&first, server_first, "pencil").unwrap();
        assert_eq!(
            fin.message(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let cred = credential("pencil", &salt, 4096).unwrap();
        let (parsed_first, bare) = ClientFirst::parse(first.message().as_bytes()).unwrap();
        assert_eq!(parsed_first, first);
        let parsed_fin = ClientFinal::parse(fin.message().as_bytes()).unwrap();
        let server = server_final(&cred, &bare, server_first, &parsed_fin).unwrap();
        assert_eq!(
            server.message(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        check_server_final(server.message().as_bytes(), &expected).unwrap();
    }

    #[test]
    fn a_wrong_password_is_refused_by_name() {
        let first = ClientFirst {
            user: "u".into(),
            nonce: "abc".into(),
        };
        let sf = ServerFirst {
            nonce: "abcdef".into(),
            salt: vec![7; 16],
            iterations: 4096,
        };
        let cred = credential("right", &sf.salt, 4096).unwrap();
        let (fin, _) = client_final(&first, &sf.message(), "wrong").unwrap();
        assert_eq!(
            server_final(&cred, &first.bare(), &sf.message(), &fin),
            Err(ScramError::BadProof)
        );
    }

    #[test]
    fn names_with_separators_round_trip() {
        let first = ClientFirst {
            user: "a=b,c".into(),
            nonce: "n".into(),
        };
        assert_eq!(first.bare(), "n=a=3Db=2Cc,r=n");
        assert_eq!(
            ClientFirst::parse(first.message().as_bytes()).unwrap().0,
            first
        );
    }

    #[test]
    fn hostile_servers_are_refused() {
        let first = ClientFirst {
            user: "u".into(),
            nonce: "abc".into(),
        };
        let many = "r=abcd,s=AAAAAAAAAAAAAAAAAAAAAA==,i=4000000000";
        assert!(matches!(
            client_final(&first, many, "p"),
            Err(ScramError::Iterations(_))
        ));
        let other_nonce = "r=xyz1,s=AAAAAAAAAAAAAAAAAAAAAA==,i=4096";
        assert_eq!(
            client_final(&first, other_nonce, "p").unwrap_err(),
            ScramError::NonceMismatch
        );
    }
}

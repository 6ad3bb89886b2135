//! Encryption at rest: the keys a broker seals topic batches with, and sealing and
//! opening one batch (the layout is `weir_protocol::sealed`, STORAGE.md §"Sealed
//! batches").
//!
//! AES-256-GCM from `ring`, which the broker already links for TLS: no new crypto
//! dependency, and ring's AEAD is constant-time and uses AES-NI/CLMUL where the CPU
//! has them. Each batch gets a fresh random 96-bit nonce from the operating system's
//! generator (`getrandom`), so a nonce never repeats under one key in practice (the
//! usual bound for random GCM nonces is 2^32 batches per key; rotate well before).
//!
//! Keys have numeric ids (1..) chosen by the operator; the id is stored in every
//! sealed batch, so old data stays readable while its key is configured and new data
//! is sealed with the write key. A segment holds batches of one key only (the log
//! rolls when the write key changes), so checking the first batch of each segment at
//! open proves every key the data needs is present and right.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use weir_protocol::sealed::{self, NONCE_BYTES, TAG_BYTES};
use weir_protocol::DecodeError;

/// Where a key's 32 bytes come from: 64 hex digits (surrounding whitespace ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file holding the hex digits (keep it readable by the broker's user only).
    File(PathBuf),
    /// An environment variable holding them.
    Env(String),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File(p) => write!(f, "file {}", p.display()),
            KeySource::Env(v) => write!(f, "environment variable {v}"),
        }
    }
}

/// Why a sealed batch could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The stored bytes are not a sealed batch.
    #[error("sealed batch is malformed: {0}")]
    Layout(#[from] DecodeError),
    /// It names a key this broker does not have.
    #[error("sealed with at-rest key {0}, which is not configured")]
    UnknownKey(u32),
    /// Its tag does not verify: a different key under the same id, or tampering.
    #[error("at-rest key {id} ({origin}) does not open it: wrong key, or the data was altered")]
    WrongKey { id: u32, origin: String },
}

struct Key {
    source: String,
    aead: LessSafeKey,
}

struct Keyring {
    keys: BTreeMap<u32, Key>,
    write: Option<u32>,
    rng: SystemRandom,
}

/// The keys of a broker. Cheap to clone (shared).
#[derive(Clone)]
pub struct AtRest(Arc<Keyring>);

impl fmt::Debug for AtRest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key bytes.
        f.debug_struct("AtRest")
            .field("key_ids", &self.0.keys.keys().collect::<Vec<_>>())
            .field("write", &self.0.write)
            .finish()
    }
}

impl PartialEq for AtRest {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for AtRest {}

/// Parses 64 hex digits (whitespace around them ignored) into a 32-byte key.
pub fn parse_key_hex(text: &str) -> Result<[u8; 32], String> {
    let t = text.trim();
    if t.len() != 64 {
        return Err(format!(
            "expected 64 hex digits (32 bytes), found {} characters",
            t.len()
        ));
    }
    let mut out = [0u8; 32];
    for (i, pair) in t.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).map_err(|_| "not hex".to_string())?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| "not hex digits".to_string())?;
    }
    Ok(out)
}

impl AtRest {
    /// Reads every key from its source. `write` (0 = none: new data is written plain)
    /// must be one of them. Every failure names the key id and its source.
    pub fn load(keys: &[(u32, KeySource)], write: u32) -> Result<AtRest, String> {
        let mut material = Vec::with_capacity(keys.len());
        for (id, source) in keys {
            let text = match source {
                KeySource::File(p) => std::fs::read_to_string(p)
                    .map_err(|e| format!("at-rest key {id}: cannot read {source}: {e}"))?,
                KeySource::Env(v) => std::env::var(v)
                    .map_err(|_| format!("at-rest key {id}: {source} is not set"))?,
            };
            let bytes =
                parse_key_hex(&text).map_err(|e| format!("at-rest key {id} ({source}): {e}"))?;
            material.push((*id, bytes, source.to_string()));
        }
        AtRest::new(material, write)
    }

    /// A keyring from raw keys `(id, key, where it came from)`.
    pub fn new(keys: Vec<(u32, [u8; 32], String)>, write: u32) -> Result<AtRest, String> {
        let mut map = BTreeMap::new();
        for (id, mut bytes, source) in keys {
            if id == 0 {
                return Err(format!("at-rest key ids start at 1 ({source} has id 0)"));
            }
            let unbound = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| format!("at-rest key {id}: not an AES-256 key"))?;
            bytes.fill(0);
            let key = Key {
                source,
                aead: LessSafeKey::new(unbound),
            };
            if map.insert(id, key).is_some() {
                return Err(format!("at-rest key {id} is configured twice"));
            }
        }
        if write != 0 && !map.contains_key(&write) {
            return Err(format!(
                "at_rest_write_key = {write} but no at-rest key has id {write}"
            ));
        }
        Ok(AtRest(Arc::new(Keyring {
            keys: map,
            write: (write != 0).then_some(write),
            rng: SystemRandom::new(),
        })))
    }

    /// The key new batches are sealed with; `None` = written plain.
    pub fn write_key(&self) -> Option<u32> {
        self.0.write
    }

    /// Seals one whole plain batch with the write key (the caller has checked its
    /// framing). Returns it unchanged when there is no write key.
    pub fn seal(&self, plain: &Bytes) -> Bytes {
        let Some(id) = self.0.write else {
            return plain.clone();
        };
        let key = &self.0.keys[&id];
        let mut nonce = [0u8; NONCE_BYTES];
        // getrandom fails only on a kernel without it (before Linux 3.17) or an
        // exhausted seccomp filter: nothing the broker could write safely past.
        self.0
            .rng
            .fill(&mut nonce)
            .expect("the operating system's random generator works");
        let mut out = sealed::layout_sealed(plain, id, &nonce);
        let tag_at = out.len() - TAG_BYTES;
        let (head, tail) = out.split_at_mut(sealed::CIPHERTEXT_START);
        let aad = Aad::from(&head[sealed::AAD]);
        let (records, tag_slot) = tail.split_at_mut(tag_at - sealed::CIPHERTEXT_START);
        let tag = key
            .aead
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), aad, records)
            .expect("AES-GCM seals any length a segment holds");
        tag_slot.copy_from_slice(tag.as_ref());
        sealed::finish_sealed(&mut out);
        Bytes::from(out)
    }

    /// Opens one whole sealed batch into its plain batch (CRC restamped).
    pub fn open(&self, stored: &[u8]) -> Result<Vec<u8>, OpenError> {
        let parts = sealed::parse_sealed(stored)?;
        let key = self
            .0
            .keys
            .get(&parts.key_id)
            .ok_or(OpenError::UnknownKey(parts.key_id))?;
        let mut out = sealed::layout_plain(stored, &parts);
        let (head, body) = out.split_at_mut(weir_protocol::batch::BATCH_HEADER_BYTES);
        let _ = head;
        let opened = key
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(*parts.nonce),
                Aad::from(parts.aad),
                body,
            )
            .map_err(|_| OpenError::WrongKey {
                id: parts.key_id,
                origin: key.source.clone(),
            })?
            .len();
        out.truncate(weir_protocol::batch::BATCH_HEADER_BYTES + opened);
        sealed::finish_plain(&mut out);
        Ok(out)
    }

    /// `chunk` (whole stored batches, already checked) with every sealed batch opened.
    /// A chunk without sealed batches is returned as is (zero copy).
    pub fn open_chunk(&self, chunk: Bytes) -> Result<Bytes, OpenError> {
        open_chunk(Some(self), chunk)
    }
}

/// [`AtRest::open_chunk`] for a log that may have no keys: a sealed batch is then an
/// [`OpenError::UnknownKey`].
pub fn open_chunk(keys: Option<&AtRest>, chunk: Bytes) -> Result<Bytes, OpenError> {
    let mut pos = 0;
    let mut any = false;
    while pos < chunk.len() {
        let h = sealed::read_stored_header(&chunk[pos..])?;
        any |= h.attributes == sealed::SEALED;
        pos += h.total_bytes();
    }
    if !any {
        return Ok(chunk);
    }
    let mut out = Vec::with_capacity(chunk.len());
    let mut pos = 0;
    while pos < chunk.len() {
        let h = sealed::read_stored_header(&chunk[pos..])?;
        let end = (pos + h.total_bytes()).min(chunk.len());
        let stored = &chunk[pos..end];
        if h.attributes == sealed::SEALED {
            let Some(keys) = keys else {
                let id = sealed::parse_sealed(stored)?.key_id;
                return Err(OpenError::UnknownKey(id));
            };
            out.extend_from_slice(&keys.open(stored)?);
        } else {
            out.extend_from_slice(stored);
        }
        pos = end;
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use weir_protocol::batch::{self, BatchBuilder, NewRecord};

    fn ring(keys: &[(u32, u8)], write: u32) -> AtRest {
        AtRest::new(
            keys.iter()
                .map(|&(id, b)| (id, [b; 32], format!("test key {id}")))
                .collect(),
            write,
        )
        .unwrap()
    }

    fn plain(values: &[Vec<u8>]) -> Bytes {
        let mut b = BatchBuilder::new();
        for (i, v) in values.iter().enumerate() {
            b.push(&NewRecord::value(i as i64, v)).unwrap();
        }
        b.finish().unwrap()
    }

    #[test]
    fn seal_hides_the_records_and_open_restores_them() {
        let k = ring(&[(1, 1)], 1);
        let p = plain(&[b"the secret value 123".to_vec()]);
        let s = k.seal(&p);
        assert_eq!(s.len(), p.len() + sealed::SEAL_OVERHEAD);
        assert!(!s.windows(10).any(|w| w == b"secret val"));
        assert!(sealed::verify_stored(&s).is_ok());
        assert_eq!(k.open(&s).unwrap(), p.to_vec());
        // Two seals of the same batch differ (fresh nonce).
        assert_ne!(k.seal(&p), s);
    }

    #[test]
    fn wrong_and_missing_keys_are_named() {
        let p = plain(&[b"v".to_vec()]);
        let s = ring(&[(1, 1)], 1).seal(&p);
        let wrong = ring(&[(1, 2)], 1);
        let e = wrong.open(&s).unwrap_err();
        assert!(matches!(e, OpenError::WrongKey { id: 1, .. }), "{e}");
        assert!(e.to_string().contains("test key 1"));
        let other = ring(&[(2, 1)], 2);
        assert!(matches!(other.open(&s), Err(OpenError::UnknownKey(1))));
        assert!(matches!(
            open_chunk(None, s.clone()),
            Err(OpenError::UnknownKey(1))
        ));
    }

    #[test]
    fn rotation_reads_both_keys() {
        let p = plain(&[b"old".to_vec()]);
        let old = ring(&[(1, 1)], 1).seal(&p);
        let both = ring(&[(1, 1), (2, 2)], 2);
        let new = both.seal(&p);
        assert_eq!(sealed::parse_sealed(&new).unwrap().key_id, 2);
        let mut chunk = old.to_vec();
        chunk.extend_from_slice(&new);
        chunk.extend_from_slice(&p);
        let opened = both.open_chunk(Bytes::from(chunk)).unwrap();
        let mut want = p.to_vec();
        want.extend_from_slice(&p);
        want.extend_from_slice(&p);
        assert_eq!(opened, Bytes::from(want));
    }

    #[test]
    fn key_material_and_config_errors() {
        assert!(parse_key_hex(&"ab".repeat(32)).is_ok());
        assert!(parse_key_hex(&format!(" {}\n", "0f".repeat(32))).is_ok());
        assert!(parse_key_hex(&"ab".repeat(31)).is_err());
        assert!(parse_key_hex(&"zz".repeat(32)).is_err());
        assert!(AtRest::new(vec![(1, [0; 32], "a".into())], 2).is_err());
        assert!(AtRest::new(vec![(0, [0; 32], "a".into())], 0).is_err());
        assert!(AtRest::new(vec![(1, [0; 32], "a".into()), (1, [1; 32], "b".into())], 1).is_err());
        let e = AtRest::load(
            &[(3, KeySource::Env("WEIR_TEST_SURELY_UNSET_KEY_VAR".into()))],
            3,
        )
        .unwrap_err();
        assert!(e.contains("at-rest key 3") && e.contains("WEIR_TEST_SURELY_UNSET_KEY_VAR"));
    }

    proptest! {
        /// Any batch seals and opens back to itself; any change of a stored byte is
        /// refused (CRC or tag), never opened to other data; arbitrary bytes never panic.
        #[test]
        fn seal_open_round_trip(
            values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..5),
            flip in any::<prop::sample::Index>(),
            junk in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let k = ring(&[(1, 7)], 1);
            let p = plain(&values);
            let s = k.seal(&p);
            prop_assert_eq!(k.open(&s).unwrap(), p.to_vec());
            prop_assert!(batch::verify(&k.open(&s).unwrap()).is_ok());
            let mut bad = s.to_vec();
            let i = flip.index(bad.len());
            bad[i] ^= 0x01;
            // base_offset and leader_epoch are outside CRC and tag by design (the
            // writer stamps the first); every other byte is covered.
            if !(0..8).contains(&i) && !(12..16).contains(&i) {
                prop_assert!(k.open(&bad).is_err());
            }
            let _ = k.open(&junk);
            let _ = open_chunk(Some(&k), Bytes::from(junk.clone()));
            let _ = sealed::read_stored_header(&junk);
            let _ = sealed::verify_stored(&junk);
        }
    }
}

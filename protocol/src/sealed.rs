//! The sealed batch: how a record batch is stored when the broker encrypts data at rest
//! (STORAGE.md §"Sealed batches"). Never sent on the wire: readers of the log get the
//! batch back as it was produced.
//!
//! A sealed batch keeps the 60-byte batch header in the clear (offsets, counts,
//! timestamps and producer fields are what recovery, the indexes, retention and
//! idempotence need without a key), sets `attributes` to [`SEALED`], and replaces the
//! records with:
//!
//! ```text
//! 60 u32        key_id      which at-rest key sealed it (1..)
//! 64 [u8; 12]   nonce       random, never reused with one key
//! 76 [u8; n]    ciphertext  AES-256-GCM of the records (n = their plain length)
//! 76+n [u8; 16] tag         GCM tag; additional data = bytes [20, 64) as stored
//! ```
//!
//! `batch_length` counts the stored bytes (32 more than the plain batch's) and `crc`
//! is the CRC-32 of the stored bytes `[20, end)`, so recovery finds and checks batches
//! of a sealed log exactly as of a plain one. This module only lays the bytes out and
//! parses them; the cipher lives in the broker (`storage/at_rest.rs`).

use crate::batch::{self, BatchHeader, BATCH_HEADER_BYTES, CRC_START};
use crate::error::DecodeError;

/// `attributes` of a sealed batch. Batches on the wire must have 0.
pub const SEALED: u8 = 0x80;
/// Bytes of the key id.
pub const KEY_ID_BYTES: usize = 4;
/// Bytes of the GCM nonce.
pub const NONCE_BYTES: usize = 12;
/// Bytes of the GCM tag.
pub const TAG_BYTES: usize = 16;
/// Bytes a sealed batch has beyond its plain batch.
pub const SEAL_OVERHEAD: usize = KEY_ID_BYTES + NONCE_BYTES + TAG_BYTES;
/// Where the ciphertext starts.
pub const CIPHERTEXT_START: usize = BATCH_HEADER_BYTES + KEY_ID_BYTES + NONCE_BYTES;
/// The additional authenticated data: the CRC-covered header (with `attributes`
/// = [`SEALED`]) and the key id.
pub const AAD: std::ops::Range<usize> = CRC_START..BATCH_HEADER_BYTES + KEY_ID_BYTES;

/// Whether the stored batch at the start of `buf` is sealed (looks at one byte).
pub fn is_sealed(buf: &[u8]) -> bool {
    buf.get(21) == Some(&SEALED)
}

/// The header of the stored batch at the start of `buf`, plain or sealed, with the
/// checks of [`BatchHeader::read`]; a sealed one has `attributes == SEALED` and must be
/// long enough for its key id, nonce, tag and one record.
pub fn read_stored_header(buf: &[u8]) -> Result<BatchHeader, DecodeError> {
    if !is_sealed(buf) || buf.len() < BATCH_HEADER_BYTES {
        return BatchHeader::read(buf);
    }
    let mut plain = [0u8; BATCH_HEADER_BYTES];
    plain.copy_from_slice(&buf[..BATCH_HEADER_BYTES]);
    plain[21] = 0;
    let mut h = BatchHeader::read(&plain)?;
    if h.total_bytes() < CIPHERTEXT_START + batch::RECORD_MIN_BYTES + TAG_BYTES {
        return Err(DecodeError::InvalidBatch(
            "sealed batch too short for its key id, nonce, a record and tag",
        ));
    }
    h.attributes = SEALED;
    Ok(h)
}

/// [`batch::verify`] for stored batches: header (plain or sealed), bounds and CRC of
/// the stored bytes.
pub fn verify_stored(buf: &[u8]) -> Result<BatchHeader, DecodeError> {
    let h = read_stored_header(buf)?;
    let total = h.total_bytes();
    if buf.len() < total {
        return Err(DecodeError::Truncated {
            needed: total,
            remaining: buf.len(),
        });
    }
    let computed = batch::compute_crc(&buf[..total]);
    if computed != h.crc {
        return Err(DecodeError::BadCrc {
            stored: h.crc,
            computed,
        });
    }
    Ok(h)
}

/// The parts of one sealed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedParts<'a> {
    /// Its stored header (`attributes == SEALED`, stored length and CRC).
    pub header: BatchHeader,
    pub key_id: u32,
    pub nonce: &'a [u8; NONCE_BYTES],
    /// Bytes `[20, 64)`: the GCM additional data.
    pub aad: &'a [u8],
    /// Ciphertext followed by the 16-byte tag.
    pub ciphertext_and_tag: &'a [u8],
}

impl SealedParts<'_> {
    /// Length of the plain batch this one opens to.
    pub fn plain_bytes(&self) -> usize {
        self.header.total_bytes() - SEAL_OVERHEAD
    }
}

/// Parses exactly one sealed batch (no bytes after it), CRC checked.
pub fn parse_sealed(stored: &[u8]) -> Result<SealedParts<'_>, DecodeError> {
    if !is_sealed(stored) {
        return Err(DecodeError::InvalidBatch("batch is not sealed"));
    }
    let header = verify_stored(stored)?;
    if header.total_bytes() != stored.len() {
        return Err(DecodeError::TrailingBytes(
            stored.len().saturating_sub(header.total_bytes()),
        ));
    }
    let key_id = u32::from_le_bytes(stored[60..64].try_into().expect("4 bytes"));
    if key_id == 0 {
        return Err(DecodeError::InvalidBatch("sealed batch with key id 0"));
    }
    Ok(SealedParts {
        header,
        key_id,
        nonce: stored[64..CIPHERTEXT_START].try_into().expect("12 bytes"),
        aad: &stored[AAD],
        ciphertext_and_tag: &stored[CIPHERTEXT_START..],
    })
}

/// Lays out the sealed form of the plain batch `plain` (one whole batch, header
/// fields checked by the caller) with the records still in the clear: the caller
/// encrypts `[CIPHERTEXT_START, len - TAG_BYTES)` in place with additional data
/// `[AAD]`, writes the tag into the last 16 bytes, then calls [`finish_sealed`].
pub fn layout_sealed(plain: &[u8], key_id: u32, nonce: &[u8; NONCE_BYTES]) -> Vec<u8> {
    let records = &plain[BATCH_HEADER_BYTES..];
    let total = plain.len() + SEAL_OVERHEAD;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&plain[..BATCH_HEADER_BYTES]);
    out[21] = SEALED;
    let batch_length = (total - batch::BATCH_LENGTH_PREFIX_BYTES) as u32;
    out[8..12].copy_from_slice(&batch_length.to_le_bytes());
    out.extend_from_slice(&key_id.to_le_bytes());
    out.extend_from_slice(nonce);
    out.extend_from_slice(records);
    out.resize(total, 0);
    out
}

/// Stamps the CRC of a sealed batch whose ciphertext and tag are written.
pub fn finish_sealed(sealed: &mut [u8]) {
    let crc = batch::compute_crc(sealed);
    sealed[16..20].copy_from_slice(&crc.to_le_bytes());
}

/// Lays out the plain batch of `parts` with the ciphertext and tag still in place of
/// the records: the caller decrypts `[60, len)` in place, drops the last 16 bytes (the
/// tag) and calls [`finish_plain`].
pub fn layout_plain(stored: &[u8], parts: &SealedParts<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(stored.len() - KEY_ID_BYTES - NONCE_BYTES);
    out.extend_from_slice(&stored[..BATCH_HEADER_BYTES]);
    out[21] = 0;
    let batch_length = (parts.plain_bytes() - batch::BATCH_LENGTH_PREFIX_BYTES) as u32;
    out[8..12].copy_from_slice(&batch_length.to_le_bytes());
    out.extend_from_slice(parts.ciphertext_and_tag);
    out
}

/// Stamps the CRC of an opened plain batch (its records decrypted, tag dropped).
pub fn finish_plain(plain: &mut [u8]) {
    let crc = batch::compute_crc(plain);
    plain[16..20].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchBuilder, NewRecord};

    fn plain() -> Vec<u8> {
        let mut b = BatchBuilder::new();
        b.push(&NewRecord::value(5, b"hello")).unwrap();
        b.finish().unwrap().to_vec()
    }

    #[test]
    fn layout_round_trips_without_a_cipher() {
        let p = plain();
        let mut s = layout_sealed(&p, 7, &[9; NONCE_BYTES]);
        finish_sealed(&mut s);
        let parts = parse_sealed(&s).unwrap();
        assert_eq!(parts.key_id, 7);
        assert_eq!(parts.nonce, &[9; NONCE_BYTES]);
        assert_eq!(parts.plain_bytes(), p.len());
        assert_eq!(parts.header.record_count, 1);
        let mut back = layout_plain(&s, &parts);
        back.truncate(back.len() - TAG_BYTES);
        finish_plain(&mut back);
        assert_eq!(back, p);
        assert!(batch::verify(&back).is_ok());
        // A sealed batch is not a wire batch.
        assert!(batch::verify(&s).is_err());
    }

    #[test]
    fn damage_is_refused() {
        let p = plain();
        let mut s = layout_sealed(&p, 7, &[9; NONCE_BYTES]);
        finish_sealed(&mut s);
        let mut bad = s.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            parse_sealed(&bad),
            Err(DecodeError::BadCrc { .. })
        ));
        assert!(parse_sealed(&s[..s.len() - 1]).is_err());
        assert!(parse_sealed(&p).is_err());
        let mut zero = layout_sealed(&p, 0, &[9; NONCE_BYTES]);
        finish_sealed(&mut zero);
        assert!(parse_sealed(&zero).is_err());
    }
}

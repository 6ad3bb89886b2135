//! Deletion by key (the right to be forgotten): tombstones and redaction.
//!
//! A tombstone says "records with this key below this offset are deleted". The log
//! keeps its tombstones in `tombstones.json` (replaced atomically) until compaction has
//! rewritten every closed segment below them; until then readers get each matching
//! record *redacted*: same offset, priority, complexity and timestamp, empty key and
//! value, and the single header [`REDACTED`]. Offsets in Weir are dense (a record's
//! offset is its position in its batch), so a deleted record leaves this placeholder
//! rather than a gap. Compaction writes the same redacted batches to disk.

use std::path::Path;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use weir_protocol::batch::{self, Batch, BatchBuilder, NewRecord};
use weir_protocol::headers::REDACTED;

use super::error::{io_err, StorageError};

/// The file of a log's pending tombstones.
pub const TOMBSTONES_FILE: &str = "tombstones.json";

/// Records whose key is `key` at offsets below `below` are deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The key, lowercase hex in the file.
    #[serde(with = "hex_bytes")]
    pub key: Vec<u8>,
    pub below: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tombstones: Vec<Tombstone>,
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let text: String = v.iter().map(|b| format!("{b:02x}")).collect();
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd number of hex digits"));
        }
        (0..text.len())
            .step_by(2)
            .map(|i| {
                text.get(i..i + 2)
                    .and_then(|p| u8::from_str_radix(p, 16).ok())
                    .ok_or_else(|| serde::de::Error::custom("not hex"))
            })
            .collect()
    }
}

/// The pending tombstones of the log in `dir` (none when the file is missing). A file
/// that does not parse refuses to open the log, naming it.
pub fn load(dir: &Path) -> Result<Vec<Tombstone>, StorageError> {
    let path = dir.join(TOMBSTONES_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<File>(&bytes)
            .map(|f| f.tombstones)
            .map_err(|e| StorageError::Corrupt {
                path,
                file_position: 0,
                detail: format!("tombstones do not parse: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Replaces the tombstone file of `dir` (write, fsync, rename, fsync the directory);
/// an empty list removes it.
pub fn save(dir: &Path, tombstones: &[Tombstone]) -> Result<(), StorageError> {
    let path = dir.join(TOMBSTONES_FILE);
    if tombstones.is_empty() {
        for p in [path.clone(), dir.join(format!("{TOMBSTONES_FILE}.tmp"))] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&p)(e)),
            }
        }
        return super::segment::sync_dir(dir);
    }
    let text = serde_json::to_vec(&File {
        tombstones: tombstones.to_vec(),
    })
    .expect("tombstones serialise");
    crate::files::write_atomically(dir, TOMBSTONES_FILE, &text).map_err(io_err(&path))
}

/// Whether the record with `key` at `offset` is deleted by one of `tombstones`.
fn deleted(tombstones: &[Tombstone], key: &[u8], offset: u64) -> bool {
    !key.is_empty()
        && tombstones
            .iter()
            .any(|t| offset < t.below && t.key.as_slice() == key)
}

/// The plain batch `plain` (one whole, valid batch) with every record a tombstone
/// deletes redacted, or `None` when it has none (the common case: only the keys are
/// looked at). Header fields (offsets, producer, sequence, timestamps, priority) are
/// kept, so idempotence, indexes and priority reads see the same batch.
pub fn redact_batch(plain: &[u8], tombstones: &[Tombstone]) -> Option<Vec<u8>> {
    if tombstones.is_empty() {
        return None;
    }
    let h = batch::BatchHeader::read(plain).ok()?;
    let hit = batch::record_keys(plain)
        .zip(h.base_offset..)
        .any(|(k, o)| deleted(tombstones, k, o));
    if !hit {
        return None;
    }
    // A batch read from the log verified; one that does not parse fully is served as
    // it is (reads report corruption by CRC, not here).
    let parsed = Batch::parse(Bytes::copy_from_slice(plain)).ok()?;
    let mut b = BatchBuilder::with_capacity(plain.len()).producer(
        h.producer_id,
        h.producer_epoch,
        h.base_sequence,
    );
    let redacted_headers: [(&str, &[u8]); 1] = [(REDACTED, b"")];
    for r in parsed.records() {
        let headers: Vec<(&str, &[u8])> = r
            .headers
            .iter()
            .map(|x| (x.name.as_str(), &x.value[..]))
            .collect();
        let gone = deleted(tombstones, &r.key, r.offset);
        let rec = NewRecord {
            priority: r.priority,
            complexity: r.complexity,
            timestamp_ms: r.timestamp_ms,
            key: if gone { b"" } else { &r.key },
            value: if gone { b"" } else { &r.value },
            headers: if gone { &redacted_headers } else { &headers },
        };
        b.push(&rec).ok()?;
    }
    let mut out = b.finish().ok()?.to_vec();
    // Fields outside the CRC that the builder does not know: the stamped base offset
    // and the leader epoch.
    out[..8].copy_from_slice(&plain[..8]);
    out[12..16].copy_from_slice(&plain[12..16]);
    Some(out)
}

/// `chunk` (whole plain batches) with deleted records redacted; unchanged (zero
/// copy) when no record in it is deleted.
pub fn redact_chunk(chunk: Bytes, tombstones: &[Tombstone]) -> Bytes {
    let mut pos = 0;
    let mut out: Option<Vec<u8>> = None;
    while pos < chunk.len() {
        let Some(total) = batch::peek_total_bytes(&chunk[pos..]) else {
            break;
        };
        let end = (pos + total).min(chunk.len());
        match redact_batch(&chunk[pos..end], tombstones) {
            Some(r) => {
                let o = out.get_or_insert_with(|| chunk[..pos].to_vec());
                o.extend_from_slice(&r);
            }
            None => {
                if let Some(o) = out.as_mut() {
                    o.extend_from_slice(&chunk[pos..end]);
                }
            }
        }
        pos = end;
    }
    match out {
        Some(mut o) => {
            o.extend_from_slice(&chunk[pos..]);
            Bytes::from(o)
        }
        None => chunk,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_of(records: &[(&[u8], &[u8])], base: u64) -> Vec<u8> {
        let mut b = BatchBuilder::new().producer(9, 1, 100);
        for (i, (k, v)) in records.iter().enumerate() {
            b.push(&NewRecord {
                priority: 3,
                complexity: 2,
                timestamp_ms: 1_000 + i as i64,
                key: k,
                value: v,
                headers: &[("h", b"x")],
            })
            .unwrap();
        }
        let mut out = b.finish().unwrap().to_vec();
        batch::set_base_offset(&mut out, base);
        out
    }

    fn ts(key: &[u8], below: u64) -> Tombstone {
        Tombstone {
            key: key.to_vec(),
            below,
        }
    }

    #[test]
    fn only_records_with_the_key_below_the_tombstone_are_redacted() {
        let plain = batch_of(
            &[
                (b"alice", b"a-secret"),
                (b"bob", b"b-data"),
                (b"alice", b"a-2"),
            ],
            10,
        );
        assert_eq!(redact_batch(&plain, &[ts(b"carol", 100)]), None);
        assert_eq!(
            redact_batch(&plain, &[ts(b"alice", 10)]),
            None,
            "tombstone before them"
        );
        // Below 12: the record at 10 goes, the one at 12 stays.
        let r = redact_batch(&plain, &[ts(b"alice", 12)]).unwrap();
        let h = batch::verify(&r).unwrap();
        let p = batch::verify(&plain).unwrap();
        assert_eq!(
            (
                h.base_offset,
                h.record_count,
                h.producer_id,
                h.base_sequence,
                h.priority,
                h.max_timestamp_ms
            ),
            (
                p.base_offset,
                p.record_count,
                p.producer_id,
                p.base_sequence,
                p.priority,
                p.max_timestamp_ms
            )
        );
        let recs: Vec<_> = Batch::parse(Bytes::from(r.clone()))
            .unwrap()
            .records()
            .collect();
        assert_eq!(recs[0].key, Bytes::new());
        assert_eq!(recs[0].value, Bytes::new());
        assert_eq!(recs[0].headers.len(), 1);
        assert_eq!(recs[0].headers[0].name, REDACTED);
        assert_eq!(recs[0].offset, 10);
        assert_eq!(&recs[1].value[..], b"b-data");
        assert_eq!(&recs[2].value[..], b"a-2");
        assert!(!r.windows(8).any(|w| w == b"a-secret"));
    }

    #[test]
    fn chunks_are_redacted_batch_by_batch() {
        let a = batch_of(&[(b"k", b"keep-1")], 0);
        let b = batch_of(&[(b"gone", b"drop-me")], 1);
        let c = batch_of(&[(b"k", b"keep-2")], 2);
        let chunk = Bytes::from([a.clone(), b.clone(), c.clone()].concat());
        let same = redact_chunk(chunk.clone(), &[ts(b"other", 9)]);
        assert_eq!(
            same.as_ptr(),
            chunk.as_ptr(),
            "zero copy when nothing matches"
        );
        let out = redact_chunk(chunk, &[ts(b"gone", 9)]);
        assert!(!out.windows(7).any(|w| w == b"drop-me"));
        assert!(out.starts_with(&a) && out.ends_with(&c));
        let split: Vec<_> = batch::split(out).collect::<Result<_, _>>().unwrap();
        assert_eq!(split.len(), 3);
    }

    #[test]
    fn the_file_round_trips_and_empties() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_empty());
        let t = vec![ts(b"\x00\xffkey", 7)];
        save(dir.path(), &t).unwrap();
        assert_eq!(load(dir.path()).unwrap(), t);
        save(dir.path(), &[]).unwrap();
        assert!(!dir.path().join(TOMBSTONES_FILE).exists());
        std::fs::write(dir.path().join(TOMBSTONES_FILE), b"{nope").unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains(TOMBSTONES_FILE), "{e}");
    }
}

//! The byte formats of the consensus engine's files in `<data_dir>/cluster/` and their
//! decoders, kept apart from the I/O so they can be property-tested (and fuzzed) on
//! their own. Every file is made of frames — `length u32 LE`, `crc32 u32 LE` of the
//! payload, then the payload, a JSON document — so a torn write or a flipped bit is
//! found before any JSON is trusted. STORAGE.md, "Cluster metadata (consensus)",
//! describes the files.

use serde::{Deserialize, Serialize};

use super::super::meta::ClusterMeta;
use super::types::{Entry, SnapshotMeta};

/// Bytes before a frame's payload: length and CRC.
pub const FRAME_HEADER_BYTES: usize = 8;

/// The largest payload a frame may announce. Metadata entries are a few hundred bytes
/// and a snapshot of thousands of topics a few MiB; a larger length is corruption.
pub const FRAME_PAYLOAD_MAX_BYTES: u32 = 64 * 1024 * 1024;

/// Why bytes are not a valid frame (or not the document it should hold).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("torn frame: {needed} bytes needed, {present} present")]
    Torn { needed: usize, present: usize },
    #[error("frame announces {0} bytes, over the limit")]
    TooLarge(u32),
    #[error("frame crc {stored:#010x} does not match its payload ({computed:#010x})")]
    BadCrc { stored: u32, computed: u32 },
    #[error("frame payload is not the expected JSON: {0}")]
    Json(String),
    #[error("log entry {found} where {expected} was expected")]
    Gap { expected: u64, found: u64 },
    #[error("{0} bytes after the document")]
    Trailing(usize),
}

/// Appends `payload` as one frame to `out`.
pub fn put_frame(out: &mut Vec<u8>, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("frame payload under 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Reads the frame at the start of `buf`: its payload and the bytes it takes.
pub fn take_frame(buf: &[u8]) -> Result<(&[u8], usize), FrameError> {
    if buf.len() < FRAME_HEADER_BYTES {
        return Err(FrameError::Torn {
            needed: FRAME_HEADER_BYTES,
            present: buf.len(),
        });
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    if len > FRAME_PAYLOAD_MAX_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    let stored = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let total = FRAME_HEADER_BYTES + len as usize;
    if buf.len() < total {
        return Err(FrameError::Torn {
            needed: total,
            present: buf.len(),
        });
    }
    let payload = &buf[FRAME_HEADER_BYTES..total];
    let computed = crc32fast::hash(payload);
    if computed != stored {
        return Err(FrameError::BadCrc { stored, computed });
    }
    Ok((payload, total))
}

/// Encodes `value` as a file holding one frame.
pub fn encode_document<T: Serialize>(value: &T) -> Vec<u8> {
    let json = serde_json::to_vec(value).expect("metadata types serialize");
    let mut out = Vec::with_capacity(json.len() + FRAME_HEADER_BYTES);
    put_frame(&mut out, &json);
    out
}

/// Decodes a file holding exactly one frame of `T`.
pub fn decode_document<T: for<'de> Deserialize<'de>>(buf: &[u8]) -> Result<T, FrameError> {
    let (payload, used) = take_frame(buf)?;
    if used != buf.len() {
        return Err(FrameError::Trailing(buf.len() - used));
    }
    serde_json::from_slice(payload).map_err(|e| FrameError::Json(e.to_string()))
}

/// The snapshot file: the metadata as of `meta.last_log_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFile {
    pub meta: SnapshotMeta,
    pub data: ClusterMeta,
}

/// Appends `entry` to `out` as one log frame.
pub fn put_entry(out: &mut Vec<u8>, entry: &Entry) {
    let json = serde_json::to_vec(entry).expect("log entries serialize");
    put_frame(out, &json);
}

/// What a scan of a log file found.
#[derive(Debug)]
pub struct LogScan {
    /// Each whole entry and the file offset of its frame, in order, with consecutive
    /// indexes.
    pub entries: Vec<(Entry, u64)>,
    /// Bytes up to the end of the last whole entry; the file is cut back to this.
    pub valid_bytes: u64,
    /// Why the scan stopped before the end of the file, if it did.
    pub stop: Option<FrameError>,
}

/// Reads every whole entry of a log file, stopping at the first torn or corrupt frame
/// or at an entry whose index does not follow the previous one.
pub fn scan_log(buf: &[u8]) -> LogScan {
    let mut entries: Vec<(Entry, u64)> = Vec::new();
    let mut at = 0usize;
    let mut stop = None;
    while at < buf.len() {
        let entry = take_frame(&buf[at..]).and_then(|(payload, used)| {
            let entry: Entry =
                serde_json::from_slice(payload).map_err(|e| FrameError::Json(e.to_string()))?;
            if let Some((last, _)) = entries.last() {
                let expected = last.log_id.index + 1;
                if entry.log_id.index != expected {
                    return Err(FrameError::Gap {
                        expected,
                        found: entry.log_id.index,
                    });
                }
            }
            Ok((entry, used))
        });
        match entry {
            Ok((entry, used)) => {
                entries.push((entry, at as u64));
                at += used;
            }
            Err(e) => {
                stop = Some(e);
                break;
            }
        }
    }
    LogScan {
        entries,
        valid_bytes: at as u64,
        stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::meta::{Command, NodeEntry};
    use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};
    use proptest::prelude::*;

    fn entry(term: u64, index: u64, name: &str) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Command::DeleteTopic { name: name.into() }),
        }
    }

    fn log_of(entries: &[Entry]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            put_entry(&mut out, e);
        }
        out
    }

    #[test]
    fn an_entry_is_the_json_storage_md_describes() {
        let json = serde_json::to_string(&entry(3, 7, "t")).unwrap();
        assert_eq!(
            json,
            r#"{"log_id":{"leader_id":{"term":3,"node_id":1},"index":7},"payload":{"Normal":{"DeleteTopic":{"name":"t"}}}}"#
        );
    }

    #[test]
    fn a_log_round_trips() {
        let entries: Vec<Entry> = (1..=5).map(|i| entry(1, i, "t")).collect();
        let buf = log_of(&entries);
        let scan = scan_log(&buf);
        assert!(scan.stop.is_none());
        assert_eq!(scan.valid_bytes, buf.len() as u64);
        let got: Vec<Entry> = scan.entries.into_iter().map(|(e, _)| e).collect();
        assert_eq!(got, entries);
    }

    #[test]
    fn a_log_cut_anywhere_in_its_last_entry_keeps_the_others() {
        let entries: Vec<Entry> = (1..=3).map(|i| entry(2, i, "topic")).collect();
        let buf = log_of(&entries);
        let last_start = log_of(&entries[..2]).len();
        for cut in last_start..buf.len() {
            let scan = scan_log(&buf[..cut]);
            assert_eq!(scan.entries.len(), 2, "cut at {cut}");
            assert_eq!(scan.valid_bytes, last_start as u64);
            if cut > last_start {
                assert!(matches!(scan.stop, Some(FrameError::Torn { .. })), "{cut}");
            }
        }
    }

    #[test]
    fn a_corrupt_entry_stops_the_scan_there() {
        let entries: Vec<Entry> = (1..=4).map(|i| entry(1, i, "t")).collect();
        let mut buf = log_of(&entries);
        let second = log_of(&entries[..1]).len();
        buf[second + FRAME_HEADER_BYTES + 3] ^= 0x40;
        let scan = scan_log(&buf);
        assert_eq!(scan.entries.len(), 1);
        assert_eq!(scan.valid_bytes, second as u64);
        assert!(matches!(scan.stop, Some(FrameError::BadCrc { .. })));
    }

    #[test]
    fn an_entry_out_of_sequence_stops_the_scan() {
        let buf = log_of(&[entry(1, 1, "a"), entry(1, 2, "b"), entry(1, 7, "c")]);
        let scan = scan_log(&buf);
        assert_eq!(scan.entries.len(), 2);
        assert_eq!(
            scan.stop,
            Some(FrameError::Gap {
                expected: 3,
                found: 7
            })
        );
    }

    #[test]
    fn documents_round_trip_and_refuse_damage() {
        let vote = Vote::new_committed(3, 2);
        let buf = encode_document(&vote);
        assert_eq!(decode_document::<Vote<u64>>(&buf), Ok(vote));
        let mut meta = ClusterMeta::default();
        meta.nodes.insert(1, NodeEntry::new("127.0.0.1:1"));
        let snap = SnapshotFile {
            meta: SnapshotMeta {
                last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 9)),
                last_membership: Default::default(),
                snapshot_id: "1-9-1".into(),
            },
            data: meta,
        };
        let buf = encode_document(&snap);
        assert_eq!(decode_document::<SnapshotFile>(&buf), Ok(snap));
        let mut longer = buf.clone();
        longer.push(0);
        assert_eq!(
            decode_document::<SnapshotFile>(&longer),
            Err(FrameError::Trailing(1))
        );
        let huge = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        assert!(matches!(
            decode_document::<Vote<u64>>(&huge),
            Err(FrameError::TooLarge(_))
        ));
    }

    fn arb_entry() -> impl Strategy<Value = (u64, String)> {
        (1u64..5, "[a-z]{0,12}")
    }

    proptest! {
        #[test]
        fn any_log_round_trips(items in proptest::collection::vec(arb_entry(), 0..20)) {
            let entries: Vec<Entry> = items
                .iter()
                .enumerate()
                .map(|(i, (t, n))| entry(*t, i as u64 + 1, n))
                .collect();
            let buf = log_of(&entries);
            let scan = scan_log(&buf);
            prop_assert!(scan.stop.is_none());
            let got: Vec<Entry> = scan.entries.into_iter().map(|(e, _)| e).collect();
            prop_assert_eq!(got, entries);
        }

        #[test]
        fn a_truncated_or_flipped_log_keeps_a_clean_prefix(
            items in proptest::collection::vec(arb_entry(), 1..10),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let entries: Vec<Entry> = items
                .iter()
                .enumerate()
                .map(|(i, (t, n))| entry(*t, i as u64 + 1, n))
                .collect();
            let mut buf = log_of(&entries);
            let at = flip.index(buf.len());
            buf[at] ^= 1 << bit;
            let buf = &buf[..cut.index(buf.len() + 1)];
            let scan = scan_log(buf);
            // What is kept is a prefix of what was written, ending at a frame boundary.
            prop_assert!(scan.entries.len() <= entries.len());
            for ((got, _), want) in scan.entries.iter().zip(&entries) {
                prop_assert_eq!(got, want);
            }
            prop_assert!(scan.valid_bytes <= buf.len() as u64);
            prop_assert_eq!(scan.stop.is_none(), scan.valid_bytes == buf.len() as u64);
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = scan_log(&bytes);
            let _ = decode_document::<Vote<u64>>(&bytes);
            let _ = decode_document::<SnapshotFile>(&bytes);
            let _ = decode_document::<Option<openraft::LogId<u64>>>(&bytes);
        }

        #[test]
        fn a_damaged_document_is_refused_by_name(cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), bit in 0u8..8) {
            let vote = Vote::new(7, 3);
            let mut buf = encode_document(&vote);
            let at = flip.index(buf.len());
            buf[at] ^= 1 << bit;
            prop_assert!(decode_document::<Vote<u64>>(&buf).is_err());
            let good = encode_document(&vote);
            let n = cut.index(good.len());
            prop_assert!(decode_document::<Vote<u64>>(&good[..n]).is_err());
        }
    }

    /// The fuzz targets' seeds (`broker/fuzz/seeds/<target>/`): valid files as the
    /// encoders write them, so fuzzing starts from inputs that get past the CRC and
    /// the JSON. `WEIR_BLESS=1` writes them; otherwise they must match.
    #[test]
    fn fuzz_seeds_are_what_the_encoders_write() {
        use crate::cluster::meta::TopicSettings;
        use crate::cluster::replication::epochs;
        let batch = Entry {
            log_id: LogId::new(CommittedLeaderId::new(2, 1), 3),
            payload: EntryPayload::Normal(Command::Batch {
                commands: vec![Command::SetPrimary {
                    topic: "t".into(),
                    shard: 0,
                    expected_version: 1,
                    primary: Some(2),
                    in_sync: vec![2, 3],
                    at_ms: 1,
                }],
            }),
        };
        let create = Entry {
            log_id: LogId::new(CommittedLeaderId::new(2, 1), 2),
            payload: EntryPayload::Normal(Command::CreateTopic {
                name: "t".into(),
                shards: 2,
                settings: TopicSettings::from(&weir_protocol::messages::TopicConfig::default()),
                at_ms: 0,
            }),
        };
        let blank = Entry {
            log_id: LogId::new(CommittedLeaderId::new(2, 1), 1),
            payload: EntryPayload::Blank,
        };
        let entries = [blank, create, batch];
        // The framed mode of `consensus_log` frames every chunk between 0xFF bytes.
        let mut unframed = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            if i > 0 {
                unframed.push(0xFF);
            }
            unframed.extend_from_slice(&serde_json::to_vec(e).unwrap());
        }
        let mut meta = ClusterMeta::default();
        meta.nodes.insert(1, NodeEntry::new("127.0.0.1:7700"));
        let snapshot = SnapshotFile {
            meta: SnapshotMeta {
                last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 9)),
                last_membership: Default::default(),
                snapshot_id: "1-9-1".into(),
            },
            data: meta,
        };
        let vote = Vote::new_committed(3, 2);
        let mark: Option<openraft::LogId<u64>> = Some(LogId::new(CommittedLeaderId::new(2, 1), 3));
        let history = [
            epochs::Entry { epoch: 1, start: 0 },
            epochs::Entry {
                epoch: 3,
                start: 50,
            },
        ];
        let seeds: Vec<(&str, &str, Vec<u8>)> = vec![
            ("consensus_log", "log", log_of(&entries)),
            ("consensus_log", "entries_unframed", unframed),
            ("consensus_documents", "vote", encode_document(&vote)),
            (
                "consensus_documents",
                "vote_unframed",
                serde_json::to_vec(&vote).unwrap(),
            ),
            ("consensus_documents", "committed", encode_document(&mark)),
            (
                "consensus_documents",
                "snapshot",
                encode_document(&snapshot),
            ),
            (
                "consensus_documents",
                "snapshot_unframed",
                serde_json::to_vec(&snapshot).unwrap(),
            ),
            ("epochs_decode", "history", epochs::encode(&history)),
        ];
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
        let bless = std::env::var_os("WEIR_BLESS").is_some();
        for (target, name, bytes) in seeds {
            let path = root.join(target).join(name);
            if bless {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            } else {
                let stored = std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("{}: {e} (WEIR_BLESS=1 writes it)", path.display()));
                assert_eq!(
                    stored,
                    bytes,
                    "{} is stale (WEIR_BLESS=1 rewrites it)",
                    path.display()
                );
            }
        }
        // And they decode.
        assert_eq!(scan_log(&log_of(&entries)).entries.len(), 3);
        assert_eq!(
            decode_document::<SnapshotFile>(&encode_document(&snapshot)),
            Ok(snapshot)
        );
        assert_eq!(epochs::decode(&epochs::encode(&history)), history.to_vec());
    }
}

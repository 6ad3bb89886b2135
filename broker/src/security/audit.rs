//! The audit log: authentication attempts, refused requests and every administrative
//! change (who, what, when, from where), appended to `<data_dir>/audit.log`, one JSON
//! object per line, each carrying the SHA-256 of the entry before it.
//!
//! An entry's `hash` is SHA-256 over its other fields as written (`prev` included),
//! and `prev` is the hash of the previous entry (64 zeros for the first), so editing,
//! inserting or deleting an entry breaks the chain at that entry and
//! [`verify`] names it. What a chain cannot show is the loss of its newest entries
//! (a truncated file is a shorter valid chain); ship the log elsewhere for that.
//!
//! Administrative changes are written with `fdatasync` before the change is answered;
//! authentication attempts and refusals are written without it (a flood of bad
//! passwords must not become a flood of syncs), and a connection writes at most
//! [`DENIALS_PER_CONNECTION`] refusal entries.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The file's name in the data directory.
pub const FILE: &str = "audit.log";
/// `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Refusals one connection may write; the next one writes a note that it stops.
pub const DENIALS_PER_CONNECTION: u32 = 100;

/// One entry, in the order its fields are written and hashed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// 1, 2, 3, ... in file order.
    pub seq: u64,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// Who: the authenticated principal, or what was claimed (a user name) for an
    /// authentication attempt, or empty.
    pub principal: String,
    /// From where: the peer's address, or empty for the broker itself.
    pub peer: String,
    /// What: `authenticate`, `denied`, `create_topic`, `upsert_user`, ...
    pub action: String,
    /// On what: a topic, a user, a key id, an ACL entry, a mechanism.
    pub target: String,
    /// `ok`, or why not.
    pub outcome: String,
    /// The previous entry's hash.
    pub prev: String,
    /// SHA-256 (hex) over this entry's other fields, as JSON in this order.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

impl Entry {
    fn digest(&self) -> String {
        let mut body = self.clone();
        body.hash.clear();
        let json = serde_json::to_vec(&body).expect("entry serializes");
        hex(ring::digest::digest(&ring::digest::SHA256, &json).as_ref())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What one record call says happened.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub principal: &'a str,
    pub peer: Option<std::net::SocketAddr>,
    pub action: &'a str,
    pub target: &'a str,
    pub outcome: &'a str,
}

/// Why the audit log could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

struct Tail {
    file: File,
    seq: u64,
    last_hash: String,
}

/// The open audit log.
pub struct AuditLog {
    path: PathBuf,
    tail: Mutex<Tail>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish()
    }
}

impl AuditLog {
    /// Opens (or creates) `dir/audit.log` and finds where the chain ends. A torn last
    /// line (a crash in the middle of a write) is cut off; an entry that does not
    /// parse elsewhere is left for [`verify`] to report, and the chain continues
    /// from the last entry that does.
    pub fn open(dir: &Path) -> Result<AuditLog, AuditError> {
        let path = dir.join(FILE);
        let io = |source| AuditError::Io {
            path: path.clone(),
            source,
        };
        let mut seq = 0;
        let mut last_hash = GENESIS.to_string();
        let mut good_len = 0u64;
        if let Ok(f) = File::open(&path) {
            let mut reader = BufReader::new(f);
            let mut line = String::new();
            let mut at = 0u64;
            loop {
                line.clear();
                let n = reader.read_line(&mut line).map_err(io)?;
                if n == 0 {
                    break;
                }
                at += n as u64;
                if !line.ends_with('\n') {
                    break; // torn: cut below
                }
                good_len = at;
                if let Ok(e) = serde_json::from_str::<Entry>(line.trim_end()) {
                    seq = e.seq;
                    last_hash = e.hash;
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        if file.metadata().map_err(io)?.len() > good_len {
            file.set_len(good_len).map_err(io)?;
        }
        Ok(AuditLog {
            path,
            tail: Mutex::new(Tail {
                file,
                seq,
                last_hash,
            }),
        })
    }

    /// Appends one entry; with `sync`, it is on disk when this returns. A write that
    /// fails is logged (the broker keeps serving; the chain stays whole because the
    /// entry is not counted).
    pub fn record(&self, event: Event<'_>, sync: bool) {
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let mut entry = Entry {
            seq: tail.seq + 1,
            time_ms: crate::clock::now_ms(),
            principal: event.principal.to_string(),
            peer: event.peer.map(|p| p.to_string()).unwrap_or_default(),
            action: event.action.to_string(),
            target: event.target.to_string(),
            outcome: event.outcome.to_string(),
            prev: tail.last_hash.clone(),
            hash: String::new(),
        };
        entry.hash = entry.digest();
        let mut line = serde_json::to_vec(&entry).expect("entry serializes");
        line.push(b'\n');
        let written =
            tail.file
                .write_all(&line)
                .and_then(|()| if sync { tail.file.sync_data() } else { Ok(()) });
        match written {
            Ok(()) => {
                tail.seq = entry.seq;
                tail.last_hash = entry.hash;
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot write the audit log")
            }
        }
    }
}

/// Why a chain does not verify: the first entry that breaks it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    #[error("line {line}: not an audit entry ({reason})")]
    Unreadable { line: u64, reason: String },
    #[error("line {line}: entry {seq} out of sequence (expected {expected})")]
    Sequence { line: u64, seq: u64, expected: u64 },
    #[error("line {line}: entry {seq} does not follow the entry before it (its prev is not that entry's hash): an entry was removed or inserted before it")]
    Chain { line: u64, seq: u64 },
    #[error("line {line}: entry {seq} was changed after it was written (its hash does not match its contents)")]
    Tampered { line: u64, seq: u64 },
}

/// Checks a whole log: every line an entry, numbered 1, 2, 3 ..., each naming the
/// previous entry's hash, each hash matching its entry. Returns the number of entries.
pub fn verify(text: &str) -> Result<u64, Broken> {
    let mut prev = GENESIS.to_string();
    let mut count = 0u64;
    for (i, raw) in text.lines().enumerate() {
        let line = i as u64 + 1;
        let e: Entry = serde_json::from_str(raw).map_err(|err| Broken::Unreadable {
            line,
            reason: err.to_string(),
        })?;
        if e.seq != count + 1 {
            return Err(Broken::Sequence {
                line,
                seq: e.seq,
                expected: count + 1,
            });
        }
        if e.prev != prev {
            return Err(Broken::Chain { line, seq: e.seq });
        }
        if e.hash != e.digest() {
            return Err(Broken::Tampered { line, seq: e.seq });
        }
        prev = e.hash;
        count += 1;
    }
    Ok(count)
}

/// Parses every readable entry (for `weir audit show`).
pub fn entries(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event<'a>(action: &'a str, target: &'a str) -> Event<'a> {
        Event {
            principal: "alice",
            peer: Some("127.0.0.1:5000".parse().unwrap()),
            action,
            target,
            outcome: "ok",
        }
    }

    #[test]
    fn a_written_chain_verifies_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        log.record(event("create_topic", "orders"), true);
        log.record(event("delete_topic", "orders"), false);
        drop(log);
        let log = AuditLog::open(dir.path()).unwrap();
        log.record(event("upsert_user", "bob"), true);
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert_eq!(verify(&text), Ok(3));
    }

    #[test]
    fn edits_removals_and_torn_tails_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        for t in ["a", "b", "c", "d"] {
            log.record(event("create_topic", t), false);
        }
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        let lines: Vec<&str> = text.lines().collect();

        let edited = text.replacen("\"target\":\"b\"", "\"target\":\"x\"", 1);
        assert_eq!(verify(&edited), Err(Broken::Tampered { line: 2, seq: 2 }));

        let removed = [lines[0], lines[2], lines[3]].join("\n");
        assert!(matches!(
            verify(&removed),
            Err(Broken::Sequence { line: 2, .. })
        ));

        // Renumbering after a removal still breaks the chain at that entry.
        let e3: Entry = serde_json::from_str(lines[2]).unwrap();
        let renumbered = Entry { seq: 2, ..e3 };
        let forged = [
            lines[0].to_string(),
            serde_json::to_string(&renumbered).unwrap(),
        ]
        .join("\n");
        assert_eq!(verify(&forged), Err(Broken::Chain { line: 2, seq: 2 }));

        // A torn last line is cut when the log is opened again; the chain goes on.
        std::fs::write(dir.path().join(FILE), format!("{text}{{\"seq\":5,")).unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        log.record(event("create_topic", "e"), false);
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert_eq!(verify(&text), Ok(5));
    }

    proptest! {
        /// Arbitrary text never panics the verifier.
        #[test]
        fn verify_never_panics(text in ".{0,400}") {
            let _ = verify(&text);
            let _ = entries(&text);
        }
    }
}

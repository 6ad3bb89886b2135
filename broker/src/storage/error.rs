//! Storage errors. Every failure the log can report has a name, and corruption carries
//! the file and byte position so an operator can find it.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// What went wrong in the storage engine.
#[derive(Debug, Error)]
pub enum StorageError {
    /// An operating-system call failed on `path`.
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Stored bytes failed a length, header or CRC check. Never served as data.
    #[error("corrupt data in {path} at byte {file_position}: {detail}")]
    Corrupt {
        path: PathBuf,
        file_position: u64,
        detail: String,
    },
    /// A read asked for an offset the log does not hold.
    #[error("offset {requested} is outside the log [{log_start}, {high_watermark}]")]
    OffsetOutOfRange {
        requested: u64,
        log_start: u64,
        high_watermark: u64,
    },
    /// An element handed to `append` is not exactly one well-formed batch.
    #[error("append element {index} is not one batch: {detail}")]
    InvalidBatch { index: usize, detail: String },
    /// The configuration cannot work.
    #[error("invalid log config: {0}")]
    InvalidConfig(&'static str),
    /// Sealed data (encryption at rest) needs a key that is missing or does not open
    /// it. Refuses to open the log, naming the key.
    #[error("log {path}: {detail}")]
    AtRestKey { path: PathBuf, detail: String },
    /// Another writer (in this or another process) holds the directory's lock.
    #[error("log directory {path} is locked by another writer")]
    Locked { path: PathBuf },
    /// An earlier write or flush failed; the log refuses further writes until reopened,
    /// because what reached the disk is unknown (the lesson of "fsyncgate").
    #[error("log is failed after an earlier error and must be reopened: {0}")]
    Failed(String),
}

/// Maps an `io::Error` on `path` to [`StorageError::Io`].
pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl From<std::io::Error> for StorageError {
    /// For I/O failures not tied to one file (spawning a thread, say); the path is empty.
    fn from(source: std::io::Error) -> Self {
        StorageError::Io {
            path: PathBuf::new(),
            source,
        }
    }
}

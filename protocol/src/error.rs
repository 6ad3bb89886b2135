//! Error codes carried on the wire and the decoder's error type.
//!
//! Every refusal the broker can send is an [`ErrorCode`] with a stable number, a
//! name, and a retry hint; PROTOCOL.md lists them in the same order. [`DecodeError`]
//! is what the decoders return for bad bytes; each maps to the code the broker answers
//! with, so "bad input gets a named error" holds by construction.

use thiserror::Error;

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident = $num:literal, retriable = $retry:literal; )*) => {
        /// A response's outcome. `None` (0) is success; every other value names a refusal.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum ErrorCode {
            $( $(#[$doc])* $name = $num, )*
        }

        impl ErrorCode {
            /// Every code, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            /// The code for a wire value, if it is one we know.
            pub fn from_u16(v: u16) -> Option<ErrorCode> {
                match v {
                    $( $num => Some(ErrorCode::$name), )*
                    _ => None,
                }
            }

            /// Whether a client may send the same request again (after `retry_after_ms`
            /// when the broker gave one) and expect it to succeed.
            pub fn is_retriable(self) -> bool {
                match self {
                    $( ErrorCode::$name => $retry, )*
                }
            }

            /// The variant's name (`InvalidRequest`); PROTOCOL.md writes the same name
            /// in upper snake case (`INVALID_REQUEST`).
            pub fn name(self) -> &'static str {
                match self {
                    $( ErrorCode::$name => stringify!($name), )*
                }
            }
        }
    };
}

error_codes! {
    /// Success.
    None = 0, retriable = false;
    /// The broker failed in a way it did not expect; the request may or may not have taken effect.
    Unknown = 1, retriable = true;
    /// The request frame or body could not be decoded (bad field, trailing bytes, bad UTF-8).
    InvalidRequest = 2, retriable = false;
    /// The api key in the request header is not one the broker knows.
    UnknownApi = 3, retriable = false;
    /// The broker does not speak this version of this api; see ApiVersions.
    UnsupportedVersion = 4, retriable = false;
    /// A frame's length prefix is over the broker's maximum frame size. The connection is closed.
    FrameTooLarge = 5, retriable = false;
    /// A record batch failed its CRC check: it was damaged in transit. Resending it may succeed.
    CorruptMessage = 6, retriable = true;
    /// A record batch is malformed (bad lengths, counts, magic, timestamps).
    InvalidBatch = 7, retriable = false;
    /// A record's priority is outside 1..=10 or its complexity outside 1..=5.
    InvalidRecord = 8, retriable = false;
    /// A produce request's records are larger than the topic's or broker's limit.
    MessageTooLarge = 9, retriable = false;
    /// The topic does not exist.
    UnknownTopic = 10, retriable = false;
    /// The topic exists but has no shard with this number.
    UnknownShard = 11, retriable = false;
    /// A topic with this name already exists.
    TopicAlreadyExists = 12, retriable = false;
    /// The topic name is empty, longer than 249 bytes, or has characters outside `[A-Za-z0-9._-]`.
    InvalidTopicName = 13, retriable = false;
    /// A topic or broker setting is out of its allowed range.
    InvalidConfig = 14, retriable = false;
    /// The fetch offset is below the log start or above the high-water mark.
    OffsetOutOfRange = 15, retriable = false;
    /// The client is over a quota or the broker's memory budget, or at a connection limit; retry after `retry_after_ms`.
    Throttled = 16, retriable = true;
    /// The broker is overloaded and shed this request by priority class; retry after `retry_after_ms`.
    Shed = 17, retriable = true;
    /// The request did not complete within its timeout; it may still take effect.
    RequestTimedOut = 18, retriable = true;
    /// The batch's sequence number is not the next one expected for this producer and shard.
    OutOfOrderSequence = 19, retriable = false;
    /// A newer epoch of this producer id exists; this producer is fenced.
    ProducerFenced = 20, retriable = false;
    /// The broker never issued this producer id; call InitProducerId with id 0 for a new one.
    UnknownProducerId = 21, retriable = true;
    /// The group does not know this member id (expired or never joined); join again.
    UnknownMemberId = 22, retriable = true;
    /// The generation is not the group's current one; join again.
    IllegalGeneration = 23, retriable = true;
    /// The group is rebalancing; join again to get the new assignment.
    RebalanceInProgress = 24, retriable = true;
    /// The group name is empty or longer than 249 bytes.
    InvalidGroupName = 25, retriable = false;
    /// The broker could not write to or read from its disk (full disk, I/O error).
    StorageError = 26, retriable = true;
    /// Stored data failed its CRC check on read; it is never served.
    CorruptStorage = 27, retriable = false;
    /// This broker is not the primary for the shard (or not a node of the cluster that
    /// holds it); the message names the primary it knows. Refresh metadata
    /// (DescribeCluster) and retry there.
    NotPrimary = 28, retriable = true;
    /// The broker is shutting down; retry against it after it restarts, or another broker.
    ShuttingDown = 29, retriable = true;
    /// Too many requests are in flight on this connection.
    TooManyInFlight = 30, retriable = true;
    /// The lease named is not the record's current delivery (it expired and the record was handed out again, or it was settled).
    UnknownLease = 31, retriable = false;
    /// The group is a streaming (offset) group and cannot be used in queue mode, or the other way round.
    NotQueueGroup = 32, retriable = false;
    /// A keyed record was produced to a shard other than the one its key belongs on
    /// (PROTOCOL.md, "Key → shard"); the message names the right shard.
    WrongShard = 33, retriable = false;
    /// A `mirrored` produce found fewer in-sync copies than the topic's `min_in_sync`;
    /// nothing was written. Retry once mirrors have caught up.
    NotEnoughMirrors = 34, retriable = true;
    /// A MirrorFetch named an epoch older than the primary's: the fetching node has
    /// not yet learned of a newer primary. Refresh metadata.
    FencedEpoch = 35, retriable = true;
    /// The cluster has no controller right now (an election is running), or this
    /// node cannot reach it.
    NoController = 36, retriable = true;
    /// Consumer-group requests in a cluster go to the group coordinator (the
    /// controller); the message names it. Refresh with DescribeCluster and retry there.
    NotCoordinator = 37, retriable = true;
    /// No copy of the shard that holds every acknowledged record is alive; the shard
    /// takes no produce and serves no reads until one returns.
    ShardOffline = 38, retriable = true;
    /// The topic was resharded after this request was routed (or the shard is sealed
    /// by a reshard): nothing was written. Refresh Metadata and route again.
    LayoutChanged = 39, retriable = true;
    /// The port speaks TLS and the client sent plain TCP. Sent in plain text as a
    /// connection error, then the connection is closed.
    TlsRequired = 40, retriable = false;
    /// Authentication failed: unknown user, wrong password, unknown or revoked API
    /// key, or a malformed exchange. The connection stays unauthenticated.
    AuthenticationFailed = 41, retriable = false;
    /// The broker requires authentication and this connection has not authenticated;
    /// only ApiVersions and Authenticate are answered.
    AuthenticationRequired = 42, retriable = false;
    /// The principal has no grant for this operation on this resource.
    NotAuthorized = 43, retriable = false;
    /// The user, API key or ACL entry named does not exist.
    UnknownPrincipal = 44, retriable = false;
}

/// The code as PROTOCOL.md names it, with its number: `UNKNOWN_TOPIC (10)`. The Rust
/// variant name (`UnknownTopic`) stays an implementation detail.
impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for (i, c) in self.name().chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                f.write_char('_')?;
            }
            f.write_char(c.to_ascii_uppercase())?;
        }
        write!(f, " ({})", *self as u16)
    }
}

/// Why bytes could not be decoded. Never a panic: every decoder returns one of these.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The input ended before a field did.
    #[error("truncated: needed {needed} more bytes, {remaining} remain")]
    Truncated { needed: usize, remaining: usize },
    /// A body decoded completely but bytes were left over.
    #[error("{0} trailing bytes after the body")]
    TrailingBytes(usize),
    /// A string field is not UTF-8.
    #[error("string field is not valid UTF-8")]
    InvalidUtf8,
    /// An enumerated field has a value outside its range.
    #[error("field {field} has invalid value {value}")]
    InvalidEnum { field: &'static str, value: u64 },
    /// The api key is unknown.
    #[error("unknown api key {0}")]
    UnknownApi(u16),
    /// The api is known but not at this version.
    #[error("api {api} does not support version {version}")]
    UnsupportedVersion { api: u16, version: u16 },
    /// A frame's length prefix exceeds the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge { len: u64, max: u32 },
    /// A frame's length prefix is smaller than its header.
    #[error("frame of {len} bytes is shorter than its {min}-byte header")]
    FrameTooShort { len: u32, min: u32 },
    /// A response header carries an error code we do not know.
    #[error("unknown error code {0}")]
    UnknownErrorCode(u16),
    /// A record batch's CRC does not match its contents.
    #[error("batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    /// A record batch is malformed.
    #[error("invalid batch: {0}")]
    InvalidBatch(&'static str),
    /// A record inside a batch has an out-of-range field.
    #[error("invalid record: {0}")]
    InvalidRecord(&'static str),
}

impl DecodeError {
    /// The wire error code the broker answers with for this decode failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::Truncated { .. }
            | DecodeError::TrailingBytes(_)
            | DecodeError::InvalidUtf8
            | DecodeError::InvalidEnum { .. }
            | DecodeError::UnknownErrorCode(_)
            | DecodeError::FrameTooShort { .. } => ErrorCode::InvalidRequest,
            DecodeError::UnknownApi(_) => ErrorCode::UnknownApi,
            DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            DecodeError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::BadCrc { .. } => ErrorCode::CorruptMessage,
            DecodeError::InvalidBatch(_) => ErrorCode::InvalidBatch,
            DecodeError::InvalidRecord(_) => ErrorCode::InvalidRecord,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_ascend() {
        // Ranges are handed out per feature (34-39 cluster, 40-49 security), so the
        // numbering may have gaps; it is strictly ascending and round-trips.
        let mut last = None;
        for code in ErrorCode::ALL {
            assert!(Some(*code as u16) > last, "codes ascend: {code:?}");
            last = Some(*code as u16);
            assert_eq!(ErrorCode::from_u16(*code as u16), Some(*code));
        }
        let max = last.expect("codes");
        assert_eq!(ErrorCode::from_u16(max + 1), None);
    }

    /// Messages show a code as PROTOCOL.md's error table names it, never the Rust
    /// variant: every code's shown name is the one in the table, with its number.
    #[test]
    fn codes_are_shown_by_their_documented_names() {
        let spec = include_str!("../../PROTOCOL.md");
        for code in ErrorCode::ALL {
            let shown = code.to_string();
            let (name, number) = shown.split_once(' ').expect("NAME (n)");
            assert_eq!(number, format!("({})", *code as u16));
            assert!(
                name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{shown}"
            );
            let row = format!("| {:<4} | `{name}`", *code as u16);
            assert!(spec.contains(&row), "PROTOCOL.md has no row {row:?}");
        }
        assert_eq!(ErrorCode::UnknownTopic.to_string(), "UNKNOWN_TOPIC (10)");
    }
}

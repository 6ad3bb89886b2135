//! [`BrokerError`]: a refusal with the wire code a client sees.
//!
//! Shared vocabulary of every broker module (topics, queues, groups, handlers), so it
//! lives in a leaf module that imports nothing of the broker but storage's error type.

use weir_protocol::ErrorCode;

/// An error with the wire code it maps to.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct BrokerError {
    pub code: ErrorCode,
    pub message: String,
}

impl From<crate::storage::StorageError> for BrokerError {
    /// Storage failures as clients see them: reads outside the log are
    /// OFFSET_OUT_OF_RANGE, bytes that fail their checks CORRUPT_STORAGE, anything else
    /// STORAGE_ERROR.
    fn from(e: crate::storage::StorageError) -> Self {
        use crate::storage::StorageError;
        let code = match &e {
            StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            StorageError::Corrupt { .. } => ErrorCode::CorruptStorage,
            _ => ErrorCode::StorageError,
        };
        BrokerError::new(code, e.to_string())
    }
}

impl BrokerError {
    /// A refusal with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        BrokerError {
            code,
            message: message.into(),
        }
    }
}

//! The SDK's error type.

use weir_protocol::ErrorCode;

/// Everything that can go wrong talking to a broker.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The broker refused the request with a named error.
    #[error("broker refused: {code}: {message}")]
    Broker {
        code: ErrorCode,
        message: String,
        retry_after_ms: u32,
    },
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Io(String),
    /// The broker sent bytes this client could not decode.
    #[error("protocol: {0}")]
    Protocol(String),
    /// No answer within the request timeout.
    #[error("timed out after {0} ms")]
    Timeout(u64),
    /// Bad arguments from the caller.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The producer or consumer was closed.
    #[error("closed")]
    Closed,
    /// The client's circuit breaker is open: the broker kept failing, so the call was
    /// not made. Try again after `retry_after_ms`.
    #[error("circuit breaker open; retry after {retry_after_ms} ms")]
    CircuitOpen { retry_after_ms: u64 },
    /// The producer's queue is full and its back-pressure policy does not wait (longer).
    #[error("producer queue full: {0}")]
    QueueFull(String),
}

impl ClientError {
    /// Whether a failed produce certainly did not store its records: the broker refused
    /// it by name (except the codes that can come after the append: a timed-out ack
    /// level, shutdown, unknown; and PRODUCER_FENCED, which also answers a retry of a
    /// batch stored before the fence), or the SDK refused it before sending. Otherwise
    /// its fate is unknown: it may have been stored.
    pub fn certainly_not_stored(&self) -> bool {
        match self {
            ClientError::Broker { code, .. } => !matches!(
                code,
                ErrorCode::RequestTimedOut
                    | ErrorCode::ShuttingDown
                    | ErrorCode::Unknown
                    | ErrorCode::ProducerFenced
            ),
            ClientError::CircuitOpen { .. }
            | ClientError::QueueFull(_)
            | ClientError::Invalid(_) => true,
            ClientError::Io(_)
            | ClientError::Timeout(_)
            | ClientError::Protocol(_)
            | ClientError::Closed => false,
        }
    }

    /// Whether sending the same request again may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Broker { code, .. } => code.is_retriable(),
            ClientError::Io(_)
            | ClientError::Timeout(_)
            | ClientError::CircuitOpen { .. }
            | ClientError::QueueFull(_) => true,
            ClientError::Protocol(_) | ClientError::Invalid(_) | ClientError::Closed => false,
        }
    }

    /// The broker's error code, if the broker refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Broker { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e.to_string())
    }
}

/// Result alias of the SDK.
pub type Result<T> = std::result::Result<T, ClientError>;

/// The body of a response of the expected api, or a protocol error naming both.
macro_rules! expect_body {
    ($body:expr, $variant:ident) => {
        match $body {
            ::weir_protocol::ResponseBody::$variant(b) => Ok(b),
            other => Err($crate::error::ClientError::Protocol(format!(
                "expected {} response, got {:?}",
                stringify!($variant),
                other.api_key()
            ))),
        }
    };
}
pub(crate) use expect_body;

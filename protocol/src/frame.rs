//! Frames: the length prefix and the request and response headers around a body.
//!
//! ```text
//! request  = u32 length | u16 api_key | u16 api_version | u32 correlation_id | u8 priority | body
//! response = u32 length | u16 api_key | u16 api_version | u32 correlation_id | u16 error_code | body
//! ```
//! `length` counts the bytes after itself. A response's body is the api's response body
//! when `error_code` is 0 and an [`ErrorBody`] otherwise.

use bytes::{BufMut, Bytes, BytesMut};

use crate::api::{ApiKey, Request, ResponseBody};
use crate::error::{DecodeError, ErrorCode};
use crate::wire::{Reader, Wire};
use crate::wire_struct;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;
/// Bytes of a request header (after the length prefix).
pub const REQUEST_HEADER_BYTES: u32 = 9;
/// Bytes of a response header (after the length prefix).
pub const RESPONSE_HEADER_BYTES: u32 = 10;
/// Default largest frame (length prefix excluded) either side accepts: 16 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 16 * 1024 * 1024;
/// `api_key` of a response that is about the connection rather than one request (for
/// example FRAME_TOO_LARGE before the connection is closed). Its correlation id is 0.
pub const CONNECTION_API_KEY: u16 = 0xFFFF;
/// `priority` in a request header that leaves the choice to the broker.
pub const PRIORITY_UNSPECIFIED: u8 = 0;

/// The fixed fields in front of every request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub api_key: u16,
    pub api_version: u16,
    /// Chosen by the client and echoed in the response. Responses on one connection may
    /// arrive in any order; the id pairs them with their requests.
    pub correlation_id: u32,
    /// 0 (unspecified) or 1..=10: how urgently the broker should serve this request.
    pub priority: u8,
}

impl RequestHeader {
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(RequestHeader {
            api_key: r.u16()?,
            api_version: r.u16()?,
            correlation_id: r.u32()?,
            priority: r.u8()?,
        })
    }
}

/// A request with its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFrame {
    pub header: RequestHeader,
    pub request: Request,
}

impl RequestFrame {
    /// A request at the newest version this build speaks, with no priority.
    pub fn new(correlation_id: u32, request: impl Into<Request>) -> Self {
        let request = request.into();
        let api = request.api_key();
        RequestFrame {
            header: RequestHeader {
                api_key: api as u16,
                api_version: api.max_version(),
                correlation_id,
                priority: PRIORITY_UNSPECIFIED,
            },
            request,
        }
    }

    /// Encodes the whole frame, length prefix included, into `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        let start = dst.len();
        let mut tail = Vec::new();
        self.encode_split(dst, &mut tail);
        debug_assert!(tail.is_empty() || start <= dst.len());
        for c in tail {
            dst.put_slice(&c);
        }
        patch_len(dst, start);
    }

    /// Encodes the frame as `head` followed by `tail` chunks (zero-copy record sets).
    /// The length prefix in `head` already counts the tail.
    pub fn encode_split(&self, head: &mut BytesMut, tail: &mut Vec<Bytes>) {
        let start = head.len();
        head.put_u32_le(0);
        head.put_u16_le(self.header.api_key);
        head.put_u16_le(self.header.api_version);
        head.put_u32_le(self.header.correlation_id);
        head.put_u8(self.header.priority);
        let tail_from = tail.len();
        self.request.encode_body(head, tail);
        let tail_bytes: usize = tail[tail_from..].iter().map(Bytes::len).sum();
        let len = head.len() - start - LENGTH_PREFIX_BYTES + tail_bytes;
        head[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    }

    /// Decodes a frame whose length prefix was already removed. A failure after the
    /// header was read carries the header, so the broker can answer that request.
    pub fn decode(frame: Bytes) -> Result<Self, BadRequest> {
        let mut r = Reader::new(frame);
        let header = RequestHeader::read(&mut r).map_err(|error| BadRequest {
            header: None,
            error,
        })?;
        if header.priority > 10 {
            return Err(BadRequest {
                header: Some(header),
                error: DecodeError::InvalidEnum {
                    field: "priority",
                    value: u64::from(header.priority),
                },
            });
        }
        let body = r.take(r.remaining()).expect("remaining bytes");
        match Request::decode(header.api_key, header.api_version, body) {
            Ok(request) => Ok(RequestFrame { header, request }),
            Err(error) => Err(BadRequest {
                header: Some(header),
                error,
            }),
        }
    }
}

/// A request frame that framed correctly but whose content is bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest {
    /// The header, when it could be read.
    pub header: Option<RequestHeader>,
    pub error: DecodeError,
}

/// The fixed fields in front of every response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHeader {
    pub api_key: u16,
    pub api_version: u16,
    pub correlation_id: u32,
    pub error_code: u16,
}

wire_struct! {
    /// The body of every response whose error code is not 0.
    pub struct ErrorBody {
        /// How long the client should wait before retrying; 0 when it need not wait.
        pub retry_after_ms: u32,
        /// A human-readable explanation for logs.
        pub message: String,
    }
}

/// A response's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponsePayload {
    Ok(ResponseBody),
    Err(ErrorCode, ErrorBody),
}

/// A response with its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseFrame {
    pub api_key: u16,
    pub api_version: u16,
    pub correlation_id: u32,
    pub payload: ResponsePayload,
}

impl ResponseFrame {
    /// A success answering the request with this header.
    pub fn ok(req: &RequestHeader, body: impl Into<ResponseBody>) -> Self {
        ResponseFrame {
            api_key: req.api_key,
            api_version: req.api_version,
            correlation_id: req.correlation_id,
            payload: ResponsePayload::Ok(body.into()),
        }
    }

    /// A refusal answering the request with this header.
    pub fn error(
        req: &RequestHeader,
        code: ErrorCode,
        retry_after_ms: u32,
        message: impl Into<String>,
    ) -> Self {
        ResponseFrame {
            api_key: req.api_key,
            api_version: req.api_version,
            correlation_id: req.correlation_id,
            payload: ResponsePayload::Err(
                code,
                ErrorBody {
                    retry_after_ms,
                    message: message.into(),
                },
            ),
        }
    }

    /// A connection-level refusal (api key 0xFFFF, correlation id 0).
    pub fn connection_error(code: ErrorCode, message: impl Into<String>) -> Self {
        let header = RequestHeader {
            api_key: CONNECTION_API_KEY,
            api_version: 0,
            correlation_id: 0,
            priority: 0,
        };
        Self::error(&header, code, 0, message)
    }

    /// The error code, `ErrorCode::None` on success.
    pub fn error_code(&self) -> ErrorCode {
        match &self.payload {
            ResponsePayload::Ok(_) => ErrorCode::None,
            ResponsePayload::Err(code, _) => *code,
        }
    }

    /// The api this answers, if it is one this build knows.
    pub fn api(&self) -> Option<ApiKey> {
        ApiKey::from_u16(self.api_key)
    }

    /// Encodes the whole frame, length prefix included, into `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        let start = dst.len();
        let mut tail = Vec::new();
        self.encode_split(dst, &mut tail);
        for c in tail {
            dst.put_slice(&c);
        }
        patch_len(dst, start);
    }

    /// Encodes the frame as `head` then `tail` chunks; see [`RequestFrame::encode_split`].
    pub fn encode_split(&self, head: &mut BytesMut, tail: &mut Vec<Bytes>) {
        let start = head.len();
        head.put_u32_le(0);
        head.put_u16_le(self.api_key);
        head.put_u16_le(self.api_version);
        head.put_u32_le(self.correlation_id);
        head.put_u16_le(self.error_code() as u16);
        let tail_from = tail.len();
        match &self.payload {
            ResponsePayload::Ok(body) => body.encode_body(head, tail),
            ResponsePayload::Err(_, body) => body.encode(head),
        }
        let tail_bytes: usize = tail[tail_from..].iter().map(Bytes::len).sum();
        let len = head.len() - start - LENGTH_PREFIX_BYTES + tail_bytes;
        head[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    }

    /// Decodes a frame whose length prefix was already removed.
    pub fn decode(frame: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(frame);
        let api_key = r.u16()?;
        let api_version = r.u16()?;
        let correlation_id = r.u32()?;
        let raw_code = r.u16()?;
        let code = ErrorCode::from_u16(raw_code).ok_or(DecodeError::UnknownErrorCode(raw_code))?;
        let payload = if code == ErrorCode::None {
            let body = r.take(r.remaining())?;
            ResponsePayload::Ok(ResponseBody::decode(api_key, api_version, body)?)
        } else {
            let body = ErrorBody::decode(&mut r)?;
            r.finish()?;
            ResponsePayload::Err(code, body)
        };
        Ok(ResponseFrame {
            api_key,
            api_version,
            correlation_id,
            payload,
        })
    }
}

fn patch_len(dst: &mut BytesMut, start: usize) {
    let len = (dst.len() - start - LENGTH_PREFIX_BYTES) as u32;
    dst[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

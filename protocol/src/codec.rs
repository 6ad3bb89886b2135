//! tokio-util codecs: [`ServerCodec`] for the broker's side of a connection and
//! [`ClientCodec`] for a client's.
//!
//! Both read the 4-byte length prefix first and refuse a frame over the configured
//! maximum (or under its header size) before reading or reserving any of its body.
//! Only then do they wait for the whole frame, which they cut out of the read buffer
//! without copying; record sets inside it are slices of that buffer.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::DecodeError;
use crate::frame::{
    BadRequest, RequestFrame, ResponseFrame, DEFAULT_MAX_FRAME_BYTES, LENGTH_PREFIX_BYTES,
    REQUEST_HEADER_BYTES, RESPONSE_HEADER_BYTES,
};

/// A failure that ends the connection: the byte stream can no longer be framed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Decode(#[from] DecodeError),
}

/// Cuts one frame (without its length prefix) off the front of `src`, if it is all there.
pub fn split_frame(
    src: &mut BytesMut,
    min_bytes: u32,
    max_bytes: u32,
) -> Result<Option<bytes::Bytes>, DecodeError> {
    if src.len() < LENGTH_PREFIX_BYTES {
        return Ok(None);
    }
    let len = u32::from_le_bytes([src[0], src[1], src[2], src[3]]);
    if len > max_bytes {
        return Err(DecodeError::FrameTooLarge {
            len: u64::from(len),
            max: max_bytes,
        });
    }
    if len < min_bytes {
        return Err(DecodeError::FrameTooShort {
            len,
            min: min_bytes,
        });
    }
    let total = LENGTH_PREFIX_BYTES + len as usize;
    if src.len() < total {
        src.reserve(total - src.len());
        return Ok(None);
    }
    src.advance(LENGTH_PREFIX_BYTES);
    Ok(Some(src.split_to(len as usize).freeze()))
}

/// The broker's codec: decodes requests, encodes responses.
///
/// A frame that cannot be framed (too large, too short) is a [`FrameError`]: the broker
/// answers with a connection error and closes. A frame that frames but whose body is
/// bad is yielded as `Err(BadRequest)`: the broker answers that request with the named
/// error and keeps the connection.
#[derive(Debug, Clone, Copy)]
pub struct ServerCodec {
    max_frame_bytes: u32,
}

impl ServerCodec {
    /// A codec refusing frames over `max_frame_bytes`.
    pub fn new(max_frame_bytes: u32) -> Self {
        ServerCodec { max_frame_bytes }
    }
}

impl Default for ServerCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl Decoder for ServerCodec {
    type Item = Result<RequestFrame, BadRequest>;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, FrameError> {
        match split_frame(src, REQUEST_HEADER_BYTES, self.max_frame_bytes)? {
            None => Ok(None),
            Some(frame) => Ok(Some(RequestFrame::decode(frame))),
        }
    }
}

impl Encoder<ResponseFrame> for ServerCodec {
    type Error = FrameError;

    fn encode(&mut self, item: ResponseFrame, dst: &mut BytesMut) -> Result<(), FrameError> {
        item.encode(dst);
        Ok(())
    }
}

/// A client's codec: encodes requests, decodes responses. Any bad response is fatal.
#[derive(Debug, Clone, Copy)]
pub struct ClientCodec {
    max_frame_bytes: u32,
}

impl ClientCodec {
    /// A codec refusing frames over `max_frame_bytes`.
    pub fn new(max_frame_bytes: u32) -> Self {
        ClientCodec { max_frame_bytes }
    }
}

impl Default for ClientCodec {
    fn default() -> Self {
        // A fetch response may carry a full frame of records plus its header.
        Self::new(DEFAULT_MAX_FRAME_BYTES + 1024)
    }
}

impl Decoder for ClientCodec {
    type Item = ResponseFrame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<ResponseFrame>, FrameError> {
        match split_frame(src, RESPONSE_HEADER_BYTES, self.max_frame_bytes)? {
            None => Ok(None),
            Some(frame) => Ok(Some(ResponseFrame::decode(frame)?)),
        }
    }
}

impl Encoder<RequestFrame> for ClientCodec {
    type Error = FrameError;

    fn encode(&mut self, item: RequestFrame, dst: &mut BytesMut) -> Result<(), FrameError> {
        item.encode(dst);
        Ok(())
    }
}

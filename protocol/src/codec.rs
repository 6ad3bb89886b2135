//! tokio-util codecs: [`ServerCodec`] for the broker's side of a connection and
//! [`ClientCodec`] for a client's.
//!
//! Both read the 4-byte length prefix first and refuse a frame over the configured
//! maximum (or under its header size) before reading or reserving any of its body.
//! Only then do they wait for the whole frame, which they cut out of the read buffer
//! without copying; record sets inside it are slices of that buffer.
//!
//! The server's codec never reserves buffer space for a length it was only told:
//! it grows the read buffer by at most [`SERVER_RESERVE_AHEAD_BYTES`] beyond what has
//! arrived, so memory follows the bytes a peer actually sent (a peer announcing 16 MiB
//! and sending 13 bytes costs 13 bytes, not 16 MiB). The broker reserves a large frame
//! whole only once its receive budget has granted the bytes (`flow::receive`).

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

/// The most read-buffer space [`ServerCodec`] reserves beyond what has arrived.
pub const SERVER_RESERVE_AHEAD_BYTES: usize = 64 * 1024;

/// Cuts one frame (without its length prefix) off the front of `src`, if it is all
/// there; otherwise reserves room for the rest of it (trusting the announced length:
/// for a peer that is trusted, such as a client's broker).
pub fn split_frame(
    src: &mut BytesMut,
    min_bytes: u32,
    max_bytes: u32,
) -> Result<Option<bytes::Bytes>, DecodeError> {
    split_frame_reserving(src, min_bytes, max_bytes, usize::MAX)
}

/// [`split_frame`] that reserves at most `reserve_ahead` bytes beyond what `src`
/// holds while a frame is incomplete.
pub fn split_frame_reserving(
    src: &mut BytesMut,
    min_bytes: u32,
    max_bytes: u32,
    reserve_ahead: usize,
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
        src.reserve((total - src.len()).min(reserve_ahead));
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
        match split_frame_reserving(
            src,
            REQUEST_HEADER_BYTES,
            self.max_frame_bytes,
            SERVER_RESERVE_AHEAD_BYTES,
        )? {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A header announcing a large frame, then the bytes of its body as they arrive:
    /// the server's buffer grows with what arrived, never to the announced length.
    #[test]
    fn the_server_codec_reserves_only_a_bounded_step_beyond_what_arrived() {
        let announced: u32 = 16 << 20;
        let mut src = BytesMut::new();
        src.extend_from_slice(&announced.to_le_bytes());
        src.extend_from_slice(&[4, 0, 0, 0, 1, 0, 0, 0, 5]);
        let mut codec = ServerCodec::new(announced);
        assert!(codec.decode(&mut src).unwrap().is_none());
        assert!(
            src.capacity() <= src.len() + 2 * SERVER_RESERVE_AHEAD_BYTES,
            "capacity {} after 13 bytes",
            src.capacity()
        );
        // The trusting variant (a client reading its broker) reserves it whole.
        let mut trusting = BytesMut::from(&src[..]);
        assert!(split_frame(&mut trusting, 9, announced).unwrap().is_none());
        assert!(trusting.capacity() >= announced as usize + 4);
    }

    #[test]
    fn a_frame_that_arrives_in_pieces_is_cut_whole() {
        let mut frame = BytesMut::new();
        let body = vec![7u8; 200_000];
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&body);
        let mut src = BytesMut::new();
        let mut out = None;
        for piece in frame.chunks(10_000) {
            assert!(out.is_none());
            src.extend_from_slice(piece);
            out = split_frame_reserving(&mut src, 9, 1 << 20, SERVER_RESERVE_AHEAD_BYTES).unwrap();
        }
        assert_eq!(out.expect("whole frame").len(), body.len());
        assert!(src.is_empty());
    }
}

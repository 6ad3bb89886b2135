//! Round trips the api property tests share: a request frame through the client's
//! encoder and the server's decoder delivered in two reads, a response frame the other
//! way.

use bytes::BytesMut;
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};
use weir_protocol::codec::{ClientCodec, ServerCodec};
use weir_protocol::frame::{RequestFrame, ResponseFrame, ResponsePayload};
use weir_protocol::ResponseBody;

/// Encodes `frame`, delivers the bytes in two reads split at `split` and checks the
/// server decodes exactly it, nothing before the last byte and nothing left over.
pub fn request_round_trip(frame: RequestFrame, split: usize) -> Result<(), TestCaseError> {
    let mut wire = BytesMut::new();
    ClientCodec::default()
        .encode(frame.clone(), &mut wire)
        .unwrap();
    let cut = split.min(wire.len());
    let mut buf = BytesMut::from(&wire[..cut]);
    let mut codec = ServerCodec::default();
    let first = codec.decode(&mut buf).unwrap();
    if cut < wire.len() {
        prop_assert!(first.is_none());
        buf.extend_from_slice(&wire[cut..]);
    }
    let decoded = match first {
        Some(f) => f,
        None => codec.decode(&mut buf).unwrap().expect("whole frame"),
    };
    prop_assert_eq!(decoded.unwrap(), frame);
    prop_assert!(buf.is_empty());
    Ok(())
}

/// `body` as an Ok response with correlation id `id`, through the server's encoder and
/// the client's decoder.
pub fn response_round_trip(body: ResponseBody, id: u32) -> Result<(), TestCaseError> {
    let api = body.api_key();
    let frame = ResponseFrame {
        api_key: api as u16,
        api_version: api.max_version(),
        correlation_id: id,
        payload: ResponsePayload::Ok(body),
    };
    let mut wire = BytesMut::new();
    ServerCodec::default()
        .encode(frame.clone(), &mut wire)
        .unwrap();
    let decoded = ClientCodec::default()
        .decode(&mut wire)
        .unwrap()
        .expect("whole frame");
    prop_assert_eq!(decoded, frame);
    Ok(())
}

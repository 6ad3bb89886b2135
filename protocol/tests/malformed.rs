//! Malformed input through the codecs: each bad frame yields its documented error (the
//! `DecodeError` and the wire `ErrorCode` that PROTOCOL.md lists for it), never a panic,
//! and never makes the codec reserve more memory than a frame length it has validated.

use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::Decoder;
use weir_protocol::batch::{self, BatchBuilder, NewRecord};
use weir_protocol::frame::{BadRequest, DEFAULT_MAX_FRAME_BYTES};
use weir_protocol::messages::*;
use weir_protocol::{
    ClientCodec, DecodeError, ErrorCode, FrameError, Request, RequestFrame, ResponseFrame,
    ServerCodec,
};

/// What the server codec made of the front of a buffer.
#[derive(Debug)]
enum Outcome {
    /// Not a whole frame yet.
    Incomplete,
    Frame(Box<RequestFrame>),
    /// Framed, but the body is bad: the broker answers this request and keeps going.
    Refused(BadRequest),
    /// Cannot be framed: the broker answers with a connection error and closes.
    Fatal(DecodeError),
}

fn server(codec: &mut ServerCodec, buf: &mut BytesMut) -> Outcome {
    match codec.decode(buf) {
        Ok(None) => Outcome::Incomplete,
        Ok(Some(Ok(f))) => Outcome::Frame(Box::new(f)),
        Ok(Some(Err(bad))) => Outcome::Refused(bad),
        Err(FrameError::Decode(e)) => Outcome::Fatal(e),
        Err(FrameError::Io(e)) => panic!("decode never does i/o: {e}"),
    }
}

fn server_once(bytes: &[u8]) -> Outcome {
    server(&mut ServerCodec::default(), &mut BytesMut::from(bytes))
}

/// A request frame with an explicit header and raw body.
fn raw_request(api_key: u16, api_version: u16, correlation_id: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.put_u32_le(9 + body.len() as u32);
    v.put_u16_le(api_key);
    v.put_u16_le(api_version);
    v.put_u32_le(correlation_id);
    v.put_u8(0);
    v.put_slice(body);
    v
}

fn encode(f: &RequestFrame) -> Vec<u8> {
    let mut b = BytesMut::new();
    f.encode(&mut b);
    b.to_vec()
}

fn api_versions(correlation_id: u32) -> Vec<u8> {
    encode(&RequestFrame::new(
        correlation_id,
        ApiVersionsRequest {
            client_software: "test".into(),
            client_id: String::new(),
        },
    ))
}

fn one_batch() -> Bytes {
    let mut b = BatchBuilder::new();
    b.push(&NewRecord {
        priority: 2,
        complexity: 1,
        timestamp_ms: 1_000,
        key: b"k",
        value: b"payload",
        headers: &[("h", b"v")],
    })
    .unwrap();
    b.finish().unwrap()
}

fn produce(records: Bytes) -> Vec<u8> {
    encode(&RequestFrame::new(
        3,
        ProduceRequest {
            topic: "t".into(),
            shard: 0,
            acks: Acks::Durable,
            timeout_ms: 0,
            records: Records::from_bytes(records),
        },
    ))
}

fn assert_refused(o: Outcome, error: DecodeError, code: ErrorCode, correlation_id: u32) {
    match o {
        Outcome::Refused(bad) => {
            assert_eq!(bad.error, error);
            assert_eq!(bad.error.code(), code);
            let h = bad.header.expect("header is readable");
            assert_eq!(h.correlation_id, correlation_id);
        }
        other => panic!("expected refusal with {error:?}, got {other:?}"),
    }
}

fn assert_fatal(o: Outcome, error: DecodeError, code: ErrorCode) {
    match o {
        Outcome::Fatal(e) => {
            assert_eq!(e, error);
            assert_eq!(e.code(), code);
        }
        other => panic!("expected fatal {error:?}, got {other:?}"),
    }
}

#[test]
fn garbage_is_refused_without_panicking() {
    let inputs: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: weir\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        &[0xff; 64],
        &[0x00; 64],
        &[0x0a, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0],
    ];
    for input in inputs {
        let mut codec = ServerCodec::default();
        let mut buf = BytesMut::from(*input);
        // Drive the codec until it stops: every step is a frame, a refusal, or the end.
        for _ in 0..input.len() + 1 {
            match server(&mut codec, &mut buf) {
                Outcome::Incomplete | Outcome::Fatal(_) => break,
                Outcome::Frame(_) | Outcome::Refused(_) => {}
            }
        }
        let mut client = ClientCodec::default();
        let mut buf = BytesMut::from(*input);
        for _ in 0..input.len() + 1 {
            match client.decode(&mut buf) {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
    // An HTTP request reads as a length prefix of "GET " = 0x20544547 bytes.
    assert_fatal(
        server_once(b"GET / HTTP/1.1\r\n\r\n"),
        DecodeError::FrameTooLarge {
            len: 0x2054_4547,
            max: DEFAULT_MAX_FRAME_BYTES,
        },
        ErrorCode::FrameTooLarge,
    );
    // Zeroes are a zero-length frame: shorter than any header.
    assert_fatal(
        server_once(&[0; 16]),
        DecodeError::FrameTooShort { len: 0, min: 9 },
        ErrorCode::InvalidRequest,
    );
}

#[test]
fn four_gib_length_prefix_is_refused_before_any_reservation() {
    let mut buf = BytesMut::with_capacity(16);
    buf.put_slice(&[0xff, 0xff, 0xff, 0xff]);
    let cap = buf.capacity();
    assert_fatal(
        server(&mut ServerCodec::default(), &mut buf),
        DecodeError::FrameTooLarge {
            len: u64::from(u32::MAX),
            max: DEFAULT_MAX_FRAME_BYTES,
        },
        ErrorCode::FrameTooLarge,
    );
    assert_eq!(buf.capacity(), cap, "no reservation for a refused frame");

    let mut buf = BytesMut::with_capacity(16);
    buf.put_slice(&[0xff, 0xff, 0xff, 0xff]);
    assert!(matches!(
        ClientCodec::default().decode(&mut buf),
        Err(FrameError::Decode(DecodeError::FrameTooLarge { .. }))
    ));
    assert_eq!(buf.capacity(), cap);
}

#[test]
fn configured_maximum_is_enforced_on_both_sides_of_it() {
    let mut codec = ServerCodec::new(1024);
    // Exactly the maximum frames (it then waits for the body)...
    let mut buf = BytesMut::new();
    buf.put_u32_le(1024);
    assert!(matches!(server(&mut codec, &mut buf), Outcome::Incomplete));
    // ...and reserves no more than that frame.
    assert!(
        buf.capacity() <= 2 * (4 + 1024),
        "capacity {}",
        buf.capacity()
    );
    // One byte over is refused with the configured maximum in the error.
    let mut buf = BytesMut::new();
    buf.put_u32_le(1025);
    assert_fatal(
        server(&mut codec, &mut buf),
        DecodeError::FrameTooLarge {
            len: 1025,
            max: 1024,
        },
        ErrorCode::FrameTooLarge,
    );
}

/// A server never reserves room for a length it was only told (issue 22: 1,000 peers
/// each announcing 16 MiB and sending 13 bytes must not cost 16 GiB): it grows by at
/// most `SERVER_RESERVE_AHEAD_BYTES` past what arrived. A client trusts its broker
/// and reserves the whole announced frame at once.
#[test]
fn waiting_for_a_large_frame_reserves_only_a_bounded_step_on_the_server() {
    use weir_protocol::codec::{ClientCodec, SERVER_RESERVE_AHEAD_BYTES};
    let mut buf = BytesMut::with_capacity(8);
    buf.put_u32_le(DEFAULT_MAX_FRAME_BYTES);
    assert!(matches!(
        server(&mut ServerCodec::default(), &mut buf),
        Outcome::Incomplete
    ));
    assert!(
        buf.capacity() <= 8 + 2 * SERVER_RESERVE_AHEAD_BYTES,
        "capacity {}",
        buf.capacity()
    );
    let mut buf = BytesMut::with_capacity(8);
    buf.put_u32_le(DEFAULT_MAX_FRAME_BYTES);
    assert!(ClientCodec::default().decode(&mut buf).unwrap().is_none());
    let frame = 4 + DEFAULT_MAX_FRAME_BYTES as usize;
    assert!(buf.capacity() >= frame);
    assert!(buf.capacity() <= 2 * frame, "capacity {}", buf.capacity());
}

#[test]
fn length_below_header_size_is_refused() {
    for len in 0..9u32 {
        let mut v = len.to_le_bytes().to_vec();
        v.extend(std::iter::repeat_n(0u8, len as usize));
        assert_fatal(
            server_once(&v),
            DecodeError::FrameTooShort { len, min: 9 },
            ErrorCode::InvalidRequest,
        );
    }
    // Responses have a 10-byte header.
    let mut v = 9u32.to_le_bytes().to_vec();
    v.extend([0u8; 9]);
    match ClientCodec::default().decode(&mut BytesMut::from(&v[..])) {
        Err(FrameError::Decode(e)) => {
            assert_eq!(e, DecodeError::FrameTooShort { len: 9, min: 10 })
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_api_and_unsupported_version_keep_the_connection() {
    let mut stream = raw_request(99, 0, 7, &[]);
    stream.extend(raw_request(0, 7, 8, &api_versions(0)[13..]));
    stream.extend(api_versions(9));
    let mut codec = ServerCodec::default();
    let mut buf = BytesMut::from(&stream[..]);
    assert_refused(
        server(&mut codec, &mut buf),
        DecodeError::UnknownApi(99),
        ErrorCode::UnknownApi,
        7,
    );
    assert_refused(
        server(&mut codec, &mut buf),
        DecodeError::UnsupportedVersion { api: 0, version: 7 },
        ErrorCode::UnsupportedVersion,
        8,
    );
    // The next frame on the same connection decodes normally.
    match server(&mut codec, &mut buf) {
        Outcome::Frame(f) => assert_eq!(f.header.correlation_id, 9),
        other => panic!("{other:?}"),
    }
    assert!(buf.is_empty());
}

#[test]
fn truncated_body_is_refused() {
    assert_refused(
        server_once(&raw_request(0, 0, 1, &[20, 0, b'a', b'b'])),
        DecodeError::Truncated {
            needed: 20,
            remaining: 2,
        },
        ErrorCode::InvalidRequest,
        1,
    );
    // A fixed-size field cut short.
    assert_refused(
        server_once(&raw_request(7, 0, 2, &[1, 2, 3])),
        DecodeError::Truncated {
            needed: 8,
            remaining: 3,
        },
        ErrorCode::InvalidRequest,
        2,
    );
}

#[test]
fn stream_ending_mid_frame_is_an_error_at_eof() {
    let frame = api_versions(1);
    for cut in 1..frame.len() {
        let mut codec = ServerCodec::default();
        let mut buf = BytesMut::from(&frame[..cut]);
        assert!(matches!(server(&mut codec, &mut buf), Outcome::Incomplete));
        assert!(matches!(codec.decode_eof(&mut buf), Err(FrameError::Io(_))));
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let mut body = api_versions(0)[13..].to_vec();
    body.push(0);
    assert_refused(
        server_once(&raw_request(0, 0, 4, &body)),
        DecodeError::TrailingBytes(1),
        ErrorCode::InvalidRequest,
        4,
    );
}

#[test]
fn bad_utf8_is_refused() {
    assert_refused(
        server_once(&raw_request(0, 0, 5, &[3, 0, b'a', 0xff, b'b'])),
        DecodeError::InvalidUtf8,
        ErrorCode::InvalidRequest,
        5,
    );
}

#[test]
fn bad_enum_is_refused() {
    let mut frame = produce(one_batch());
    // 13-byte frame header, topic "t" (2 + 1), shard (4): then acks.
    frame[13 + 3 + 4] = 9;
    assert_refused(
        server_once(&frame),
        DecodeError::InvalidEnum {
            field: "acks",
            value: 9,
        },
        ErrorCode::InvalidRequest,
        3,
    );
    let mut frame = api_versions(6);
    frame[12] = 200;
    assert_refused(
        server_once(&frame),
        DecodeError::InvalidEnum {
            field: "priority",
            value: 200,
        },
        ErrorCode::InvalidRequest,
        6,
    );
}

#[test]
fn bad_batch_crc_inside_a_produce_is_corrupt_message() {
    let good = one_batch();
    let mut bad = good.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0x80;
    let frame = produce(Bytes::from(bad.clone()));
    // Framing and body decode succeed: records are opaque to the codec...
    let req = match server_once(&frame) {
        Outcome::Frame(f) => f.request,
        other => panic!("{other:?}"),
    };
    let Request::Produce(p) = req else {
        panic!("not a produce")
    };
    // ...and batch validation names the damage.
    let errors: Vec<_> = p.records.batches().collect();
    assert_eq!(errors.len(), 1);
    let err = errors[0].clone().unwrap_err();
    assert!(matches!(err, DecodeError::BadCrc { .. }), "{err:?}");
    assert_eq!(err.code(), ErrorCode::CorruptMessage);
    assert!(ErrorCode::CorruptMessage.is_retriable());
    assert_eq!(batch::validate(&bad).unwrap_err(), err);
    // A good batch after a bad one is not reached: split stops at the first error.
    let mut two = bad;
    two.extend_from_slice(&good);
    assert_eq!(batch::split(Bytes::from(two)).count(), 1);
}

#[test]
fn bad_responses_are_fatal_for_the_client() {
    let mut codec = ClientCodec::default();
    // Unknown error code.
    let mut v = Vec::new();
    v.put_u32_le(10 + 6);
    v.put_u16_le(0);
    v.put_u16_le(0);
    v.put_u32_le(1);
    v.put_u16_le(999);
    v.put_u32_le(0);
    v.put_u16_le(0);
    assert!(matches!(
        codec.decode(&mut BytesMut::from(&v[..])),
        Err(FrameError::Decode(DecodeError::UnknownErrorCode(999)))
    ));
    // Error body cut short.
    let mut v = Vec::new();
    v.put_u32_le(10 + 3);
    v.put_u16_le(4);
    v.put_u16_le(0);
    v.put_u32_le(1);
    v.put_u16_le(ErrorCode::Shed as u16);
    v.put_slice(&[1, 2, 3]);
    assert!(matches!(
        codec.decode(&mut BytesMut::from(&v[..])),
        Err(FrameError::Decode(DecodeError::Truncated { .. }))
    ));
    // Success on the connection api key: there is no body type for it.
    let mut v = Vec::new();
    v.put_u32_le(10);
    v.put_u16_le(0xFFFF);
    v.put_u16_le(0);
    v.put_u32_le(0);
    v.put_u16_le(0);
    assert!(matches!(
        codec.decode(&mut BytesMut::from(&v[..])),
        Err(FrameError::Decode(DecodeError::UnknownApi(0xFFFF)))
    ));
    // A connection error decodes.
    let mut b = BytesMut::new();
    ResponseFrame::connection_error(ErrorCode::FrameTooLarge, "too big").encode(&mut b);
    let f = codec.decode(&mut b).unwrap().unwrap();
    assert_eq!(f.error_code(), ErrorCode::FrameTooLarge);
    assert_eq!((f.api_key, f.correlation_id), (0xFFFF, 0));
}

#[test]
fn every_decode_error_maps_to_a_documented_code() {
    let cases = [
        (
            DecodeError::Truncated {
                needed: 1,
                remaining: 0,
            },
            ErrorCode::InvalidRequest,
        ),
        (DecodeError::TrailingBytes(1), ErrorCode::InvalidRequest),
        (DecodeError::InvalidUtf8, ErrorCode::InvalidRequest),
        (
            DecodeError::InvalidEnum {
                field: "acks",
                value: 9,
            },
            ErrorCode::InvalidRequest,
        ),
        (DecodeError::UnknownApi(99), ErrorCode::UnknownApi),
        (
            DecodeError::UnsupportedVersion { api: 0, version: 9 },
            ErrorCode::UnsupportedVersion,
        ),
        (
            DecodeError::FrameTooLarge { len: 1, max: 0 },
            ErrorCode::FrameTooLarge,
        ),
        (
            DecodeError::FrameTooShort { len: 1, min: 9 },
            ErrorCode::InvalidRequest,
        ),
        (
            DecodeError::UnknownErrorCode(999),
            ErrorCode::InvalidRequest,
        ),
        (
            DecodeError::BadCrc {
                stored: 0,
                computed: 1,
            },
            ErrorCode::CorruptMessage,
        ),
        (DecodeError::InvalidBatch("x"), ErrorCode::InvalidBatch),
        (DecodeError::InvalidRecord("x"), ErrorCode::InvalidRecord),
    ];
    for (e, code) in cases {
        assert_eq!(e.code(), code, "{e:?}");
    }
}

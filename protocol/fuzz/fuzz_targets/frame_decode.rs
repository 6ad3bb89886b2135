//! Arbitrary bytes through both codecs and the frame decoders: no panic, and every
//! frame the codec yields re-encodes to a frame that decodes to the same value.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;
use weir_protocol::{ClientCodec, RequestFrame, ResponseFrame, ServerCodec};

fuzz_target!(|data: &[u8]| {
    // Small maximum so the fuzzer can reach "whole frame" paths with short inputs.
    let mut codec = ServerCodec::new(64 * 1024);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(item)) = codec.decode(&mut buf) {
        if let Ok(frame) = item {
            let mut out = BytesMut::new();
            frame.encode(&mut out);
            let again = RequestFrame::decode(out.freeze().slice(4..)).expect("re-decode");
            assert_eq!(again, frame);
        }
    }
    let _ = codec.decode_eof(&mut buf);

    let mut codec = ClientCodec::new(64 * 1024);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        let mut out = BytesMut::new();
        frame.encode(&mut out);
        let again = ResponseFrame::decode(out.freeze().slice(4..)).expect("re-decode");
        assert_eq!(again, frame);
    }

    let raw = Bytes::copy_from_slice(data);
    let _ = RequestFrame::decode(raw.clone());
    let _ = ResponseFrame::decode(raw);
});

//! Arbitrary bytes through the decoders of the consensus engine's one-document files
//! (vote, commit mark, purge mark, snapshot): no panic, and a document that decodes
//! encodes to a file that decodes to the same value. Each input is tried as a whole
//! file and, to get past the CRC, as the payload of a correct frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openraft::{LogId, Vote};
use weir_broker::cluster::consensus::files::{
    decode_document, encode_document, put_frame, SnapshotFile,
};

fn round_trip<T>(buf: &[u8])
where
    T: serde::Serialize + for<'de> serde::Deserialize<'de> + PartialEq + std::fmt::Debug,
{
    if let Ok(value) = decode_document::<T>(buf) {
        let again = decode_document::<T>(&encode_document(&value)).expect("re-encoded decodes");
        assert_eq!(again, value);
    }
}

fn all(buf: &[u8]) {
    round_trip::<Vote<u64>>(buf);
    round_trip::<Option<LogId<u64>>>(buf);
    round_trip::<SnapshotFile>(buf);
}

fuzz_target!(|data: &[u8]| {
    all(data);
    let mut framed = Vec::with_capacity(data.len() + 8);
    put_frame(&mut framed, data);
    all(&framed);
});

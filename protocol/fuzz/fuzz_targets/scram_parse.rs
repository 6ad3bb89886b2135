//! Arbitrary bytes through every SCRAM-SHA-256 message parser (what Authenticate
//! payloads carry): no panic, and a message that parses re-encodes to one that parses
//! to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_protocol::scram::{ClientFinal, ClientFirst, ServerFinal, ServerFirst};

fuzz_target!(|data: &[u8]| {
    if let Ok((first, _)) = ClientFirst::parse(data) {
        let again = ClientFirst::parse(first.message().as_bytes()).expect("re-parse");
        assert_eq!(again.0, first);
    }
    if let Ok(sf) = ServerFirst::parse(data) {
        assert_eq!(ServerFirst::parse(sf.message().as_bytes()).expect("re-parse"), sf);
    }
    if let Ok(fin) = ClientFinal::parse(data) {
        assert_eq!(ClientFinal::parse(fin.message().as_bytes()).expect("re-parse"), fin);
    }
    if let Ok(fin) = ServerFinal::parse(data) {
        assert_eq!(ServerFinal::parse(fin.message().as_bytes()).expect("re-parse"), fin);
    }
});

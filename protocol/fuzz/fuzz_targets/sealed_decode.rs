//! Arbitrary bytes through the readers of stored (possibly sealed, encrypted-at-rest)
//! batches: no panic; a sealed batch that parses has a key id, its stated length, and
//! lays out back to a plain batch of the length it claims.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_protocol::sealed;

fuzz_target!(|data: &[u8]| {
    let _ = sealed::read_stored_header(data);
    let _ = sealed::verify_stored(data);
    if let Ok(parts) = sealed::parse_sealed(data) {
        assert!(parts.key_id >= 1);
        assert_eq!(parts.header.total_bytes(), data.len());
        let mut plain = sealed::layout_plain(data, &parts);
        plain.truncate(plain.len() - sealed::TAG_BYTES);
        assert_eq!(plain.len(), parts.plain_bytes());
        sealed::finish_plain(&mut plain);
    }
});

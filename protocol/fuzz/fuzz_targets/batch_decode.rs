//! Arbitrary bytes through batch validation, splitting, parsing, record iteration and
//! the consumer's one-pass decode (same verdict and records as parse + iterate),
//! and every parsed record through the shard-key rules the broker applies on produce:
//! no panic, and a batch that validates yields exactly `record_count` records.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use weir_protocol::batch::{self, Batch};
use weir_protocol::keys::KeyRule;

fuzz_target!(|data: &[u8]| {
    let _ = batch::validate_summary(data);
    // The walkers the broker runs on produced batches (key → shard check, ListOffsets by
    // record timestamp) and the SDK's re-stamping: bounded and panic-free on any bytes.
    assert!(batch::record_keys(data).count() <= data.len() / 4 + 1);
    assert!(batch::record_timestamps(data).count() <= data.len() / 4 + 1);
    let mut restamped = data.to_vec();
    if batch::restamp_producer(&mut restamped, 7, 1, 0).is_ok() {
        assert!(batch::verify(&restamped).is_ok(), "a restamped batch verifies");
    }
    let rules = [
        KeyRule::parse("json:user_id").expect("rule"),
        KeyRule::parse("header:tenant").expect("rule"),
    ];
    let raw = Bytes::copy_from_slice(data);
    for part in batch::split(raw.clone()) {
        let Ok(part) = part else { break };
        if let Ok(b) = Batch::parse(part) {
            let h = *b.header();
            let n = b
                .records()
                .map(|r| {
                    for rule in &rules {
                        let headers = r.headers.iter().map(|h| (h.name.as_str(), &h.value[..]));
                        if let Some(k) = rule.derive(headers, &r.value) {
                            assert!(!k.is_empty() && k.len() <= u16::MAX as usize);
                        }
                    }
                    (r.offset, r.timestamp_ms, r.headers.len())
                })
                .count();
            assert_eq!(n, h.record_count as usize);
            let _ = (h.last_offset(), h.last_sequence());
        }
    }
    // The consumer's one-pass check-and-decode gives the same verdict and records as
    // validating first and iterating after.
    let mut decoded = Vec::new();
    let one_pass = batch::decode_records(&raw, |r| decoded.push(r));
    match Batch::parse(raw) {
        Ok(b) => {
            assert!(b.records().count() >= 1);
            assert_eq!(one_pass.ok(), Some(*b.header()));
            assert_eq!(decoded, b.records().collect::<Vec<_>>());
        }
        Err(e) => assert_eq!(one_pass.err(), Some(e)),
    }
});

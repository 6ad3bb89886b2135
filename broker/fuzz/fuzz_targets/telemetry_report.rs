//! Arbitrary bytes as a client telemetry record's value (`telemetry::parse`): no
//! panic, and a report that parses holds what the broker promises (names 1..=128
//! bytes, finite non-negative rates, load in 0..=1).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_broker::telemetry::parse;

fuzz_target!(|data: &[u8]| {
    if let Ok((service, message_type, r)) = parse(data, 0) {
        assert!((1..=128).contains(&service.len()));
        assert!((1..=128).contains(&message_type.len()));
        assert!(r.sent_per_s.is_finite() && r.sent_per_s >= 0.0);
        assert!(r.expected_per_s.is_finite() && r.expected_per_s >= 0.0);
        assert!((0.0..=1.0).contains(&r.load));
    }
});

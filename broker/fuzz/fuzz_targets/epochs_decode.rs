//! Arbitrary bytes as a shard copy's `epochs.json`: no panic, the history decoded is
//! well formed (epochs and starts strictly increasing) or empty, and it survives
//! encoding unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_broker::cluster::replication::epochs::{decode, encode, well_formed};

fuzz_target!(|data: &[u8]| {
    let entries = decode(data);
    assert!(well_formed(&entries));
    assert_eq!(decode(&encode(&entries)), entries);
});

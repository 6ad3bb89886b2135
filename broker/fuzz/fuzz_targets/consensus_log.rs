//! Arbitrary bytes through the scan of a consensus log file (`<data_dir>/cluster/`,
//! `scan_log`): no panic; what is kept is a run of whole frames with consecutive
//! indexes, ending where the scan says, and it stops before the end exactly when it
//! names a reason. Random bytes rarely pass a frame's CRC, so the input is also
//! framed (each chunk between 0xFF bytes with a correct length and CRC) to reach the
//! JSON decoding of entries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_broker::cluster::consensus::files::{put_frame, scan_log, take_frame};

fn check(buf: &[u8]) {
    let scan = scan_log(buf);
    assert!(scan.valid_bytes <= buf.len() as u64);
    assert_eq!(scan.stop.is_none(), scan.valid_bytes == buf.len() as u64);
    let mut at = 0u64;
    for (i, (entry, offset)) in scan.entries.iter().enumerate() {
        assert_eq!(*offset, at, "entries are whole frames, one after another");
        let (_, used) = take_frame(&buf[at as usize..]).expect("a kept frame reads again");
        at += used as u64;
        if i > 0 {
            assert_eq!(entry.log_id.index, scan.entries[i - 1].0.log_id.index + 1);
        }
    }
    assert_eq!(at, scan.valid_bytes);
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut framed = Vec::with_capacity(data.len() + 64);
    for chunk in data.split(|&b| b == 0xFF) {
        put_frame(&mut framed, chunk);
    }
    check(&framed);
});

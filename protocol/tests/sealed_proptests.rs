//! Property tests for the sealed (encrypted-at-rest) batch layout decoder: any plain
//! batch lays out and parses back with its header fields and key id intact, any byte
//! changed in the CRC-covered region is refused, and arbitrary or mutated bytes never
//! panic the stored-batch readers.

use proptest::collection::vec;
use proptest::prelude::*;
use weir_protocol::batch::{self, BatchBuilder, NewRecord, CRC_START};
use weir_protocol::sealed::{self, NONCE_BYTES, TAG_BYTES};

fn plain_batch(values: &[Vec<u8>], ts: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for (i, v) in values.iter().enumerate() {
        b.push(&NewRecord::value(ts + i as i64, v)).unwrap();
    }
    b.finish().unwrap().to_vec()
}

proptest! {
    #[test]
    fn layout_parses_back(
        values in vec(vec(any::<u8>(), 0..64), 1..6),
        ts in 0i64..1 << 40,
        key_id in 1u32..,
        nonce in any::<[u8; NONCE_BYTES]>(),
    ) {
        let p = plain_batch(&values, ts);
        let ph = batch::verify(&p).unwrap();
        let mut s = sealed::layout_sealed(&p, key_id, &nonce);
        sealed::finish_sealed(&mut s);
        let parts = sealed::parse_sealed(&s).unwrap();
        prop_assert_eq!(parts.key_id, key_id);
        prop_assert_eq!(parts.nonce, &nonce);
        prop_assert_eq!(parts.plain_bytes(), p.len());
        prop_assert_eq!(parts.ciphertext_and_tag.len(), p.len() - batch::BATCH_HEADER_BYTES + TAG_BYTES);
        let h = parts.header;
        prop_assert_eq!(h.attributes, sealed::SEALED);
        prop_assert_eq!(
            (h.record_count, h.base_timestamp_ms, h.max_timestamp_ms, h.priority, h.producer_id),
            (ph.record_count, ph.base_timestamp_ms, ph.max_timestamp_ms, ph.priority, ph.producer_id)
        );
        prop_assert_eq!(sealed::read_stored_header(&s).unwrap(), h);
        // A plain batch reads through the stored-batch readers unchanged.
        prop_assert_eq!(sealed::verify_stored(&p).unwrap(), ph);
        // Back to the plain layout (the cipher is the identity here).
        let mut back = sealed::layout_plain(&s, &parts);
        back.truncate(back.len() - TAG_BYTES);
        sealed::finish_plain(&mut back);
        prop_assert_eq!(back, p);
    }

    #[test]
    fn any_changed_covered_byte_is_refused(
        values in vec(vec(any::<u8>(), 0..64), 1..4),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let p = plain_batch(&values, 1);
        let mut s = sealed::layout_sealed(&p, 3, &[7; NONCE_BYTES]);
        sealed::finish_sealed(&mut s);
        let i = CRC_START + at.index(s.len() - CRC_START);
        s[i] ^= 1 << bit;
        prop_assert!(sealed::parse_sealed(&s).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..512), sealed_flag in any::<bool>()) {
        let mut data = data;
        if sealed_flag && data.len() > 21 {
            data[21] = sealed::SEALED;
        }
        let _ = sealed::read_stored_header(&data);
        let _ = sealed::verify_stored(&data);
        if let Ok(parts) = sealed::parse_sealed(&data) {
            prop_assert!(parts.key_id >= 1);
            prop_assert_eq!(parts.header.total_bytes(), data.len());
            let _ = sealed::layout_plain(&data, &parts);
        }
    }
}

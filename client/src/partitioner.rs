//! Key → shard: xxh3 of the key, then jump consistent hash over the shard count, as
//! PROTOCOL.md ("Key → shard") specifies it. The function lives in `weir-protocol`
//! because the broker holds the same rule: it refuses a keyed record produced to
//! another shard (WRONG_SHARD).

pub use weir_protocol::keys::{jump_hash, shard_for_key};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_spread() {
        let mut counts = [0u32; 8];
        for i in 0..8000u32 {
            let s = shard_for_key(&i.to_le_bytes(), 8);
            assert_eq!(s, shard_for_key(&i.to_le_bytes(), 8));
            counts[s as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800 && c < 1200), "{counts:?}");
    }

    #[test]
    fn growing_moves_few_keys() {
        let moved = (0..10_000u32)
            .filter(|i| shard_for_key(&i.to_le_bytes(), 10) != shard_for_key(&i.to_le_bytes(), 11))
            .count();
        // About 1/11 of keys should move.
        assert!(moved > 600 && moved < 1300, "{moved}");
    }
}

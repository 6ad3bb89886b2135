//! Key → shard: xxh3 of the key, then jump consistent hash over the shard count.
//!
//! Jump consistent hash (Lamping and Veach, 2014) moves only about 1/n of the keys
//! when a topic grows from n to n+1 shards, which is what a live split needs.

use xxhash_rust::xxh3::xxh3_64;

/// The shard of `key` among `shards` (> 0).
pub fn shard_for_key(key: &[u8], shards: u32) -> u32 {
    jump_hash(xxh3_64(key), shards.max(1))
}

/// Jump consistent hash of a 64-bit key into `buckets` buckets.
pub fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

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

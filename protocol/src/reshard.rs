//! Resharding: a topic's shard count changes while producers and consumers run, and
//! a key's records stay in order for every consumer that follows the rule here.
//!
//! Keys are placed by jump consistent hash ([`crate::keys::shard_for_key`]). Growing
//! from `n` to `m` shards moves keys only *into* the new shards `n..m` (from any old
//! one); shrinking moves keys only *out of* the dropped shards `m..n` (into any kept
//! one). A reshard is an epoch: the broker cuts every shard's log at one offset (its
//! `start` for the new epoch: everything below was written under the old shard count,
//! everything from it on under the new), and dropped shards are sealed (readable, never
//! written again). Physical shards are never renumbered or deleted by a reshard, so a
//! topic's shard list only grows; its *active* count is the one keys are hashed over.
//!
//! **The consumer rule** (PROTOCOL.md, "Resharding"): a shard `t` that keys can move
//! into at reshard `j` (`t >= from` when growing, `t < to` when shrinking) is *gated*
//! there: its records from `starts[t]` of reshard `j` on are read only once every other
//! shard `p` has been read up to `starts[p]` of the same reshard. Records of a key
//! written before the reshard all sit below those starts on the key's old shard, so
//! they are read first; records written after it sit on the key's new shard at or
//! above its start. The rule is checked against every earlier reshard too (a consumer
//! may start behind several), and since starts never decrease, a later reshard's
//! requirement covers an earlier one's.

use crate::messages::Reshard;

/// Whether keys can move into `shard` at reshard `r` (so its records from
/// `r.starts[shard]` on wait for the other shards to be read up to theirs).
pub fn gated(r: &Reshard, shard: u32) -> bool {
    if r.to_shards > r.from_shards {
        shard >= r.from_shards
    } else {
        shard < r.to_shards
    }
}

/// Where reshard `r` cut `shard`'s log: its first offset of the new epoch. A shard
/// that did not exist yet holds nothing from before, so 0.
pub fn start(r: &Reshard, shard: u32) -> u64 {
    r.starts.get(shard as usize).copied().unwrap_or(0)
}

/// What a consumer at `offset` on `shard` may read now, given `done(j)`: whether every
/// other shard has been read up to its start of reshard `j` (an index into
/// `reshards`, oldest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Nothing may be read yet: the records at `offset` wait for reshard `reshard`'s
    /// other shards.
    Blocked { reshard: usize },
    /// Records below `limit` may be read (`u64::MAX`: no limit).
    Until { limit: u64 },
}

/// The [`Gate`] of `shard` at `offset`. `done` is asked only for reshards that gate
/// `shard`.
pub fn gate(
    reshards: &[Reshard],
    shard: u32,
    offset: u64,
    mut done: impl FnMut(usize) -> bool,
) -> Gate {
    let mut limit = u64::MAX;
    for (j, r) in reshards.iter().enumerate() {
        if !gated(r, shard) {
            continue;
        }
        let s = start(r, shard);
        if s >= limit {
            break; // starts never decrease: nothing later can lower the limit
        }
        if done(j) {
            continue;
        }
        if s <= offset {
            return Gate::Blocked { reshard: j };
        }
        limit = s;
    }
    Gate::Until { limit }
}

/// Whether every shard but `shard` has been read up to its start of `r`, with
/// `read(p)` the offset up to which shard `p` has been read (its consumer's position,
/// or its log start when retention removed what lay below).
pub fn others_done(r: &Reshard, shard: u32, mut read: impl FnMut(u32) -> u64) -> bool {
    (0..r.starts.len() as u32)
        .filter(|&p| p != shard)
        .all(|p| read(p) >= start(r, p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::shard_for_key;

    fn r(from: u32, to: u32, starts: &[u64]) -> Reshard {
        Reshard {
            epoch: 1,
            from_shards: from,
            to_shards: to,
            starts: starts.to_vec(),
            reason: String::new(),
        }
    }

    #[test]
    fn growing_gates_only_the_new_shards_and_shrinking_only_the_kept_ones() {
        let grow = r(2, 4, &[10, 20, 0, 0]);
        assert!(!gated(&grow, 0) && !gated(&grow, 1));
        assert!(gated(&grow, 2) && gated(&grow, 3));
        let shrink = r(4, 2, &[30, 40, 5, 6]);
        assert!(gated(&shrink, 0) && gated(&shrink, 1));
        assert!(!gated(&shrink, 2) && !gated(&shrink, 3));
    }

    #[test]
    fn jump_hash_moves_keys_only_the_way_gating_assumes() {
        for (from, to) in [(1, 3), (2, 5), (4, 2), (7, 3), (3, 4)] {
            let rs = r(from, to, &[]);
            for k in 0..5000u32 {
                let key = k.to_be_bytes();
                let (a, b) = (shard_for_key(&key, from), shard_for_key(&key, to));
                if a != b {
                    assert!(
                        gated(&rs, b),
                        "key moved {a} -> {b} ({from} -> {to}) into an ungated shard"
                    );
                }
            }
        }
    }

    #[test]
    fn a_gated_shard_blocks_at_its_start_and_limits_below_it() {
        let rs = [r(2, 3, &[100, 50, 0])];
        // Shard 2 starts at 0 in the new epoch: blocked until 0 and 1 are read to 100, 50.
        assert_eq!(gate(&rs, 2, 0, |_| false), Gate::Blocked { reshard: 0 });
        assert_eq!(gate(&rs, 2, 0, |_| true), Gate::Until { limit: u64::MAX });
        // Shard 0 is not gated (keys only leave it).
        assert_eq!(gate(&rs, 0, 0, |_| false), Gate::Until { limit: u64::MAX });
        // Shrink back: shard 0 gated at 130, so a reader at 120 may read up to 130.
        let rs = [r(2, 3, &[100, 50, 0]), r(3, 2, &[130, 60, 7])];
        assert_eq!(gate(&rs, 0, 120, |_| false), Gate::Until { limit: 130 });
        assert_eq!(gate(&rs, 0, 130, |_| false), Gate::Blocked { reshard: 1 });
    }

    #[test]
    fn others_done_ignores_the_shard_itself_and_counts_shards_that_did_not_exist() {
        let rs = r(2, 3, &[100, 50, 0]);
        assert!(!others_done(&rs, 2, |p| [99, 50, 0][p as usize]));
        assert!(others_done(&rs, 2, |p| [100, 50, 0][p as usize]));
        assert!(others_done(&rs, 0, |p| [0, 50, 0][p as usize]));
    }
}

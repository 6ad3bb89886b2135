//! Where a shard's copies go: consistent hashing with virtual nodes. Each node owns
//! [`VNODES`] points on a 64-bit ring; a shard hashes to a point and its copies are
//! the first distinct nodes met walking the ring clockwise from there. Adding a node
//! takes over only the arcs its own points cut, so few shards move.

use xxhash_rust::xxh3::xxh3_64;

/// A node's id (the same as `meta::NodeId`; spelled out so this leaf imports nothing).
pub type NodeId = u64;

/// Points per node on the ring.
pub const VNODES: u32 = 64;

/// The `replicas` nodes that hold `topic`/`shard`, primary first. Returns fewer when
/// there are fewer nodes.
pub fn place(topic: &str, shard: u32, nodes: &[NodeId], replicas: usize) -> Vec<NodeId> {
    let mut ring: Vec<(u64, NodeId)> = nodes
        .iter()
        .flat_map(|&n| (0..VNODES).map(move |v| (point(n, v), n)))
        .collect();
    ring.sort_unstable();
    let key = {
        let mut k = topic.as_bytes().to_vec();
        k.push(0);
        k.extend_from_slice(&shard.to_le_bytes());
        xxh3_64(&k)
    };
    let start = ring.partition_point(|&(p, _)| p < key);
    let mut out = Vec::with_capacity(replicas);
    for i in 0..ring.len() {
        let node = ring[(start + i) % ring.len()].1;
        if !out.contains(&node) {
            out.push(node);
            if out.len() == replicas {
                break;
            }
        }
    }
    out
}

fn point(node: NodeId, vnode: u32) -> u64 {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&node.to_le_bytes());
    k[8..].copy_from_slice(&vnode.to_le_bytes());
    xxh3_64(&k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_distinct_and_stable() {
        let nodes = [1, 2, 3];
        for s in 0..64 {
            let p = place("orders", s, &nodes, 3);
            assert_eq!(p.len(), 3);
            let mut d = p.clone();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 3);
            assert_eq!(p, place("orders", s, &nodes, 3));
        }
        assert_eq!(place("x", 0, &[1], 3), vec![1]);
    }

    #[test]
    fn adding_a_node_moves_few_primaries() {
        let before: Vec<_> = (0..1000)
            .map(|s| place("t", s, &[1, 2, 3, 4], 1)[0])
            .collect();
        let after: Vec<_> = (0..1000)
            .map(|s| place("t", s, &[1, 2, 3, 4, 5], 1)[0])
            .collect();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        // Ideal is 1/5 of the shards; modulo placement would move about 4/5.
        assert!(moved < 350, "{moved} of 1000 moved");
        assert!(after.iter().zip(&before).all(|(a, b)| a == b || *a == 5));
        // Every node gets a share.
        for n in 1..=5 {
            assert!(after.iter().filter(|&&x| x == n).count() > 100, "node {n}");
        }
    }
}

//! Load-aware placement of keyless records: which shard a record without a key goes
//! to. The Rust SDK places its own records with it when
//! `ProducerConfig::load_aware_routing` is on (loads from the LoadHistory api); the
//! broker places with it a Produce sent to [`ANY_SHARD`] (PROTOCOL.md, "Key → shard"),
//! for clients that leave placement to it. One scoring, so both place alike.
//!
//! Keyed records always go by key (PROTOCOL.md, "Key → shard"); this only picks among
//! a topic's shards for records that have none. The loads are the newest one-second
//! sample of each shard and its forecast, as LoadHistory reports them.
//!
//! Scoring (lower is better), for a record of priority `p` (1 highest … 10) and
//! complexity `c` (1 … 5):
//!
//! ```text
//! latency    = queue_wait_us_mean / 1000 + queued appends (all classes)
//! delay      = latency / (mean latency over the shards + 1)
//! load       = max(records_in_per_s, forecast_records_in_per_s) / mean over the shards
//! urgency    = 1.0 for p 1–2, 0.6 for p 3–5, 0.3 for p 6–10
//! heaviness  = 0.5 + c / 5
//! score      = urgency × delay + heaviness × load
//! ```
//!
//! so urgent records avoid the shard whose writer keeps appends waiting, and heavy
//! records the shard with the least headroom (the busiest now or in a minute). A shard
//! without figures scores as an average one (latency 0, load 1). Power of two choices:
//! two distinct shards are drawn and the lower score wins, so producers that all see
//! the same figures do not all pile onto the one "best" shard. The SDK's draw is a
//! hash of a seed it advances each time it sends a batch, so keyless records stick to
//! one shard until their batch goes, as without routing; the broker's seed advances
//! with each produce it places.

/// The `shard` of a Produce that leaves placement to the broker (PROTOCOL.md, "Key →
/// shard"): keyed records go to their key's shard, keyless ones by [`choose`].
pub const ANY_SHARD: u32 = u32::MAX;

/// One shard's figures as the router uses them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ShardLoad {
    /// Appends waiting in the shard's lanes (all classes).
    pub queued: u64,
    /// Mean lane wait of the appends written in the last second.
    pub queue_wait_us: u64,
    pub records_in_per_s: f64,
    /// The broker's forecast of the ingest rate 60 s ahead.
    pub forecast_records_in_per_s: f64,
}

impl From<&crate::messages::ShardLoadHistory> for ShardLoad {
    fn from(h: &crate::messages::ShardLoadHistory) -> Self {
        let last = h.samples.last();
        ShardLoad {
            queued: last.map_or(0, |s| s.queued.iter().map(|&q| u64::from(q)).sum()),
            queue_wait_us: last.map_or(0, |s| s.queue_wait_us_mean),
            records_in_per_s: last.map_or(0.0, |s| s.records_in_per_s as f64),
            forecast_records_in_per_s: h.forecast.records_in_per_s as f64,
        }
    }
}

/// How much a record of `priority` weighs latency.
fn urgency(priority: u8) -> f64 {
    match priority {
        0..=2 => 1.0,
        3..=5 => 0.6,
        _ => 0.3,
    }
}

/// A shard's latency term: lane wait in ms plus the appends waiting.
fn latency(l: &ShardLoad) -> f64 {
    l.queue_wait_us as f64 / 1000.0 + l.queued as f64
}

/// The score of one shard (lower is better); `mean_rate` and `mean_latency` are the
/// topic's means over the shards with figures.
pub fn score(
    load: Option<&ShardLoad>,
    mean_rate: f64,
    mean_latency: f64,
    priority: u8,
    complexity: u8,
) -> f64 {
    let (delay, relative) = match load {
        Some(l) => (
            latency(l) / (mean_latency.max(0.0) + 1.0),
            l.records_in_per_s.max(l.forecast_records_in_per_s) / mean_rate.max(1.0),
        ),
        None => (0.0, 1.0),
    };
    let heaviness = 0.5 + f64::from(complexity.clamp(1, 5)) / 5.0;
    urgency(priority) * delay + heaviness * relative
}

/// A 64-bit mix (splitmix64's finaliser) of the seed, for the two draws.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The shard for a keyless record among `shards`, given each shard's figures (index =
/// shard; missing ones score as average). The same seed gives the same shard.
pub fn choose(
    loads: &[Option<ShardLoad>],
    shards: u32,
    priority: u8,
    complexity: u8,
    seed: u64,
) -> u32 {
    if shards <= 1 {
        return 0;
    }
    let r = mix(seed);
    let a = (r % u64::from(shards)) as u32;
    // A second shard, distinct from the first.
    let b = ((u64::from(a) + 1 + (r >> 32) % u64::from(shards - 1)) % u64::from(shards)) as u32;
    let known: Vec<&ShardLoad> = loads.iter().take(shards as usize).flatten().collect();
    let n = known.len().max(1) as f64;
    let mean_rate = known
        .iter()
        .map(|l| l.records_in_per_s.max(l.forecast_records_in_per_s))
        .sum::<f64>()
        / n;
    let mean_latency = known.iter().map(|l| latency(l)).sum::<f64>() / n;
    let of = |s: u32| {
        let l = loads.get(s as usize).and_then(|l| l.as_ref());
        score(l, mean_rate, mean_latency, priority, complexity)
    };
    if of(b) < of(a) {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(queued: u64, wait_us: u64, rate: f64, forecast: f64) -> Option<ShardLoad> {
        Some(ShardLoad {
            queued,
            queue_wait_us: wait_us,
            records_in_per_s: rate,
            forecast_records_in_per_s: forecast,
        })
    }

    #[test]
    fn a_hot_shard_is_never_chosen_and_the_rest_share_the_records() {
        let mut loads = vec![load(0, 100, 1000.0, 1000.0); 8];
        loads[3] = load(500, 50_000, 20_000.0, 30_000.0);
        let mut counts = [0u32; 8];
        for seed in 0..8000 {
            counts[choose(&loads, 8, 5, 1, seed) as usize] += 1;
        }
        assert_eq!(counts[3], 0, "{counts:?}");
        for (i, &c) in counts.iter().enumerate() {
            if i != 3 {
                assert!(c > 600, "shard {i} got {c}: {counts:?}");
            }
        }
    }

    #[test]
    fn equal_loads_spread_evenly_and_a_seed_sticks() {
        let loads = vec![load(0, 0, 100.0, 100.0); 4];
        let mut counts = [0u32; 4];
        for seed in 0..4000 {
            counts[choose(&loads, 4, 5, 1, seed) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 700), "{counts:?}");
        assert_eq!(choose(&loads, 4, 5, 1, 42), choose(&loads, 4, 5, 1, 42));
        assert_eq!(choose(&loads, 1, 5, 1, 42), 0);
        // No figures at all: every shard is average, the draw decides.
        assert!(choose(&[], 4, 5, 1, 7) < 4);
    }

    #[test]
    fn urgent_records_avoid_waiting_and_heavy_records_avoid_busy_shards() {
        // Shard 0: fast writer but busy (three times the mean ingest, rising).
        // Shard 1: idle but its writer keeps appends waiting 8 ms.
        let loads = vec![load(0, 0, 3000.0, 4000.0), load(4, 8_000, 200.0, 200.0)];
        for seed in 0..50 {
            assert_eq!(
                choose(&loads, 2, 1, 1, seed),
                0,
                "P0 goes where appends do not wait"
            );
            assert_eq!(
                choose(&loads, 2, 10, 5, seed),
                1,
                "heavy bulk goes where there is headroom"
            );
        }
    }

    #[test]
    fn the_forecast_counts_before_the_rate_rises() {
        // Same now, but shard 0 is forecast to triple.
        let loads = vec![load(0, 0, 1000.0, 3000.0), load(0, 0, 1000.0, 1000.0)];
        let s = |i: usize| score(loads[i].as_ref(), 2000.0, 0.0, 5, 3);
        assert!(s(0) > s(1));
        assert_eq!(choose(&loads, 2, 5, 3, 1), 1);
    }
}

//! Placement of a Produce sent to [`ANY_SHARD`]: the broker, not the client, picks the
//! shard (PROTOCOL.md, "Key → shard"), so a client in any language gets load-aware
//! placement of keyless records without reading loads itself.
//!
//! Keyed records still go by key: a request whose keyed records all belong on one
//! shard goes there, and one whose keys belong on several is refused (a produce goes
//! to one shard). Keyless records go where [`routing::choose`] scores best, from the
//! load agents' newest figures of the topic's shards (`LoadHistory::placement`), or in
//! turn with `keyless_placement = round_robin`; shards in trouble (refusing appends)
//! are left out while another can take them. Idempotent batches are refused: their
//! sequences run per shard, so their client must name it. In a cluster only shards
//! whose primary is this node are candidates.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use weir_protocol::batch::{self, BatchHeader, NO_PRODUCER_ID, UNSET};
use weir_protocol::keys::shard_for_key;
use weir_protocol::routing::{self, ANY_SHARD};
use weir_protocol::ErrorCode;

use crate::config::KeylessPlacement;
use crate::error::BrokerError;
use crate::state::BrokerState;
use crate::topics::Topic;

/// The shard for a produce sent to [`ANY_SHARD`], from its checked and filled batches.
pub(super) fn place(
    state: &BrokerState,
    topic: &Topic,
    batches: &[Bytes],
    headers: &[BatchHeader],
) -> Result<u32, BrokerError> {
    if headers.iter().any(|h| h.producer_id != NO_PRODUCER_ID) {
        return Err(BrokerError::new(
            ErrorCode::InvalidRequest,
            format!(
                "shard {ANY_SHARD:#x} (the broker places) takes no idempotent batches: their sequences run per shard, so name the shard"
            ),
        ));
    }
    if let Some(shard) = keyed_shard(batches, topic.active)? {
        return Ok(shard);
    }
    let candidates = candidates(topic, |s| {
        state
            .cluster
            .as_ref()
            .is_none_or(|c| c.check_primary(&topic.name, s).is_ok())
    });
    if candidates.is_empty() {
        return Err(BrokerError::new(
            ErrorCode::NotPrimary,
            format!("no shard of {} has its primary on this node", topic.name),
        ));
    }
    let figures = match state.config.keyless_placement {
        KeylessPlacement::Load => state.load.placement(&topic.name),
        KeylessPlacement::RoundRobin => None,
    };
    let seed = state.placement_seed.fetch_add(1, Ordering::Relaxed);
    Ok(choose_keyless(
        &candidates,
        figures.as_deref().map(Vec::as_slice),
        batches,
        headers,
        seed,
    ))
}

/// The active shards a keyless produce may go to: those whose primary is this node
/// (`primary`), and of those the ones that take appends now: a shard in trouble (a
/// full disk, a failed log; `/health` names it) is left out while another can take
/// the records, so a fault in one shard does not fail a client that let the broker
/// choose. When every one is in trouble they all stay (the answer names the cause).
fn candidates(topic: &Topic, primary: impl Fn(u32) -> bool) -> Vec<u32> {
    let mine: Vec<u32> = (0..topic.active).filter(|&s| primary(s)).collect();
    let healthy: Vec<u32> = mine
        .iter()
        .copied()
        .filter(|&s| {
            topic
                .shards
                .get(s as usize)
                .is_some_and(|shard| shard.trouble().is_none())
        })
        .collect();
    if healthy.is_empty() {
        mine
    } else {
        healthy
    }
}

/// The shard for keyless batches among `candidates` (not empty): by load when there
/// are `figures` (index = shard), else in turn by `seed`.
fn choose_keyless(
    candidates: &[u32],
    figures: Option<&[Option<routing::ShardLoad>]>,
    batches: &[Bytes],
    headers: &[BatchHeader],
    seed: u64,
) -> u32 {
    let n = candidates.len() as u32;
    let i = match figures {
        None => (seed % u64::from(n)) as u32,
        Some(f) => {
            let loads: Vec<Option<routing::ShardLoad>> = candidates
                .iter()
                .map(|&s| f.get(s as usize).copied().flatten())
                .collect();
            let (priority, complexity) = urgency_and_weight(batches, headers);
            routing::choose(&loads, n, priority, complexity, seed)
        }
    };
    candidates[i as usize]
}

/// The one shard the request's keyed records belong on (`None` when it has none).
fn keyed_shard(batches: &[Bytes], shards: u32) -> Result<Option<u32>, BrokerError> {
    let mut found: Option<(u32, usize, usize)> = None;
    for (b, bytes) in batches.iter().enumerate() {
        for (r, key) in batch::record_keys(bytes).enumerate() {
            if key.is_empty() {
                continue;
            }
            let shard = shard_for_key(key, shards);
            match found {
                None => found = Some((shard, b, r)),
                Some((s, b0, r0)) if s != shard => {
                    return Err(BrokerError::new(
                        ErrorCode::WrongShard,
                        format!(
                            "record {r0} of batch {b0} belongs on shard {s} and record {r} of batch {b} on shard {shard} of {shards}: a produce goes to one shard, send them apart"
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
    }
    Ok(found.map(|(s, _, _)| s))
}

/// The most urgent priority of the batches (1 highest) and the heaviest complexity of
/// their records, unset ones as the defaults.
fn urgency_and_weight(batches: &[Bytes], headers: &[BatchHeader]) -> (u8, u8) {
    let priority = headers
        .iter()
        .map(|h| h.priority)
        .filter(|&p| p != UNSET)
        .min()
        .unwrap_or(batch::DEFAULT_PRIORITY);
    let complexity = batches
        .iter()
        .flat_map(|b| batch::record_complexities(b))
        .max()
        .filter(|&c| c != UNSET)
        .unwrap_or(batch::DEFAULT_COMPLEXITY);
    (priority, complexity)
}

#[cfg(test)]
mod tests {
    use weir_protocol::batch::{BatchBuilder, NewRecord};
    use weir_protocol::routing::ShardLoad;

    use super::*;

    /// One batch of records with these keys, `priority` and `complexity`.
    fn batch(keys: &[&str], priority: u8, complexity: u8) -> (Bytes, BatchHeader) {
        let mut b = BatchBuilder::new();
        for k in keys {
            b.push(&NewRecord {
                priority,
                complexity,
                timestamp_ms: 1_700_000_000_000,
                key: k.as_bytes(),
                value: b"v",
                headers: &[],
            })
            .expect("record");
        }
        let bytes = b.finish().expect("batch");
        let h = batch::validate(&bytes).expect("valid");
        (bytes, h)
    }

    fn load(queued: u64, wait_us: u64, rate: f64) -> Option<ShardLoad> {
        Some(ShardLoad {
            queued,
            queue_wait_us: wait_us,
            records_in_per_s: rate,
            forecast_records_in_per_s: rate,
        })
    }

    #[test]
    fn keyed_records_go_by_key_and_keys_of_two_shards_are_refused() {
        let key = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| shard_for_key(k.as_bytes(), 4) == 3)
            .unwrap();
        let (b, _) = batch(&["", &key, ""], 5, 1);
        assert_eq!(keyed_shard(&[b], 4).unwrap(), Some(3));
        let (b, _) = batch(&["", ""], 5, 1);
        assert_eq!(keyed_shard(&[b], 4).unwrap(), None);
        let other = (0..)
            .map(|i| format!("o{i}"))
            .find(|k| shard_for_key(k.as_bytes(), 4) == 1)
            .unwrap();
        let (b1, _) = batch(&[&key], 5, 1);
        let (b2, _) = batch(&["", &other], 5, 1);
        let e = keyed_shard(&[b1, b2], 4).unwrap_err();
        assert_eq!(e.code, ErrorCode::WrongShard);
        assert!(
            e.message.contains("record 0 of batch 0 belongs on shard 3")
                && e.message.contains("record 1 of batch 1 on shard 1"),
            "{}",
            e.message
        );
    }

    #[test]
    fn injected_loads_steer_keyless_records_by_priority_and_complexity() {
        // Shard 0: its writer keeps appends waiting 20 ms. Shard 1: three times the
        // mean ingest. Shard 2: quiet. Shard 3 has no figures (average).
        let figures = vec![
            load(6, 20_000, 1000.0),
            load(0, 0, 6000.0),
            load(0, 100, 500.0),
            None,
        ];
        let all = [0, 1, 2, 3];
        let mut urgent = [0u32; 4];
        let mut heavy = [0u32; 4];
        let (ub, uh) = batch(&["", ""], 1, 1);
        let (hb, hh) = batch(&[""], 10, 5);
        for seed in 0..2000 {
            urgent[choose_keyless(&all, Some(&figures), std::slice::from_ref(&ub), &[uh], seed)
                as usize] += 1;
            heavy[choose_keyless(&all, Some(&figures), std::slice::from_ref(&hb), &[hh], seed)
                as usize] += 1;
        }
        assert_eq!(urgent[0], 0, "P0 never goes where appends wait: {urgent:?}");
        assert_eq!(
            heavy[1], 0,
            "heavy records never go to the busiest shard: {heavy:?}"
        );
        assert!(
            urgent[2] > urgent[1] && heavy[2] > heavy[0],
            "{urgent:?} {heavy:?}"
        );
        assert!(urgent[2] > 0 && heavy[2] > 0 && heavy[3] > 0);
    }

    #[test]
    fn without_figures_keyless_records_take_the_candidates_in_turn() {
        let (b, h) = batch(&[""], 5, 1);
        let picks: Vec<u32> = (0..6)
            .map(|seed| choose_keyless(&[1, 4, 6], None, std::slice::from_ref(&b), &[h], seed))
            .collect();
        assert_eq!(picks, [1, 4, 6, 1, 4, 6]);
        // Only candidates are ever chosen (a cluster node's own primaries).
        let figures = vec![load(0, 0, 1.0); 8];
        for seed in 0..500 {
            let s = choose_keyless(
                &[2, 5],
                Some(&figures),
                std::slice::from_ref(&b),
                &[h],
                seed,
            );
            assert!(s == 2 || s == 5, "{s}");
        }
    }

    #[tokio::test]
    async fn a_shard_in_trouble_is_left_out_while_another_takes_appends() {
        let dir = tempfile::tempdir().unwrap();
        let config = std::sync::Arc::new(crate::config::Config {
            data_dir: dir.path().to_path_buf(),
            ..crate::config::Config::default()
        });
        let topics = std::sync::Arc::new(crate::topics::TopicRegistry::open(config).unwrap());
        topics
            .create("t", 3, weir_protocol::messages::TopicConfig::default())
            .await
            .unwrap();
        let t = topics.get("t").unwrap();
        assert_eq!(candidates(&t, |_| true), [0, 1, 2]);
        assert_eq!(
            candidates(&t, |s| s != 0),
            [1, 2],
            "only this node's primaries"
        );
        let trouble = |s: usize, cause: Option<&str>| {
            *t.shards[s].stats().trouble.lock().unwrap() = cause.map(str::to_string);
        };
        trouble(1, Some("disk full"));
        assert_eq!(candidates(&t, |_| true), [0, 2]);
        trouble(0, Some("disk full"));
        trouble(2, Some("log failed"));
        assert_eq!(
            candidates(&t, |_| true),
            [0, 1, 2],
            "all in trouble: the answer names the cause"
        );
        trouble(2, None);
        assert_eq!(
            candidates(&t, |_| true),
            [2],
            "a shard that recovers is chosen again"
        );
    }

    #[test]
    fn urgency_is_the_most_urgent_batch_and_weight_the_heaviest_record() {
        let (b1, h1) = batch(&[""], 7, 2);
        let (b2, h2) = batch(&["", ""], 3, 4);
        assert_eq!(urgency_and_weight(&[b1, b2], &[h1, h2]), (3, 4));
        let (b, h) = batch(&[""], UNSET, UNSET);
        assert_eq!(
            urgency_and_weight(&[b], &[h]),
            (batch::DEFAULT_PRIORITY, batch::DEFAULT_COMPLEXITY)
        );
    }
}

//! Consumer lag of streaming consumer groups: per group, topic and shard, how many
//! records lie between the group's committed offset and the shard's high-water mark,
//! and how old the first of them is.

use serde::Serialize;
use weir_protocol::batch::BatchHeader;

use crate::clock::now_ms;
use crate::state::BrokerState;

/// One group's lag on one shard.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lag {
    pub group: String,
    pub topic: String,
    pub shard: u32,
    pub committed: u64,
    pub high_watermark: u64,
    /// Records not consumed yet (committed offsets below the log start count from it).
    pub records: u64,
    /// Age of the first unconsumed record's batch (its first timestamp); 0 when none.
    pub seconds: f64,
}

/// The lag of up to `max` committed (group, topic, shard) offsets whose topic exists.
/// Reads one batch header per lagging shard.
pub fn consumer_lag(state: &BrokerState, max: usize) -> Vec<Lag> {
    let now = now_ms();
    let mut out = Vec::new();
    for (group, topic, shard, committed) in state.offsets.every(max) {
        let Ok(t) = state.topics.get(&topic) else {
            continue;
        };
        let Ok(s) = t.shard(shard) else { continue };
        let reader = s.reader();
        let hwm = reader.high_watermark();
        let from = committed.max(reader.log_start_offset());
        let records = hwm.saturating_sub(from);
        let seconds = if records == 0 {
            0.0
        } else {
            reader
                .read(from, 1)
                .ok()
                .and_then(|chunks| chunks.into_iter().next())
                .and_then(|c| BatchHeader::read(&c).ok())
                .map_or(0.0, |h| {
                    now.saturating_sub(h.base_timestamp_ms).max(0) as f64 / 1000.0
                })
        };
        out.push(Lag {
            group,
            topic,
            shard,
            committed,
            high_watermark: hwm,
            records,
            seconds,
        });
    }
    out
}

//! Fetch (a shard's batches from an offset) and ListOffsets (an offset by time or end).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use weir_protocol::messages::{
    FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, Records,
    EARLIEST_TIMESTAMP, LATEST_TIMESTAMP,
};
use weir_protocol::ErrorCode;

use super::poll::{long_poll, max_bytes};
use crate::error::BrokerError;
use crate::shard::Shard;
use crate::state::BrokerState;

/// Answers a Fetch: the batches from `r.offset`, waiting for `min_bytes` up to
/// `max_wait_ms`.
pub async fn fetch(
    state: &Arc<BrokerState>,
    r: FetchRequest,
) -> Result<FetchResponse, BrokerError> {
    let topic = state.topics.get(&r.topic)?;
    let shard: &Arc<Shard> = topic.shard(r.shard)?;
    if let Some(c) = &state.cluster {
        c.check_primary(&r.topic, r.shard)?;
    }
    let reader = shard.reader();
    let max_bytes = max_bytes(state, r.max_bytes);
    long_poll(state, shard, r.max_wait_ms, |last| {
        let hwm = reader.high_watermark();
        let start = reader.log_start_offset();
        if r.offset < start || r.offset > hwm {
            return Err(BrokerError::new(
                ErrorCode::OffsetOutOfRange,
                format!("offset {} outside [{start}, {hwm}]", r.offset),
            ));
        }
        let chunks = if r.offset < hwm {
            reader.read(r.offset, max_bytes)?
        } else {
            Vec::new()
        };
        let bytes: usize = chunks.iter().map(|c| c.len()).sum();
        if !last && (bytes == 0 || bytes < r.min_bytes as usize) {
            return Ok(None);
        }
        state
            .metrics
            .fetch_bytes_total
            .fetch_add(bytes as u64, Ordering::Relaxed);
        let (records, bytes) = crate::meters::count_delivery(
            &state.meters,
            &topic.io,
            &shard.classes(),
            chunks.iter().map(|c| c.as_ref()),
            crate::clock::now_ms(),
        );
        shard.stats().io.delivered(records, bytes);
        Ok(Some(FetchResponse {
            high_watermark: hwm,
            log_start_offset: start,
            layout_epoch: topic.layout_epoch(),
            records: Records::from_chunks(chunks),
        }))
    })
    .await
}

/// Answers a ListOffsets: the log's end or start, or the first offset at or after a
/// timestamp.
pub fn list_offsets(
    state: &BrokerState,
    r: ListOffsetsRequest,
) -> Result<ListOffsetsResponse, BrokerError> {
    let topic = state.topics.get(&r.topic)?;
    let reader = topic.shard(r.shard)?.reader();
    if let Some(c) = &state.cluster {
        c.check_primary(&r.topic, r.shard)?;
    }
    let end = ListOffsetsResponse {
        offset: reader.high_watermark(),
        timestamp_ms: -1,
    };
    Ok(match r.timestamp_ms {
        LATEST_TIMESTAMP => end,
        EARLIEST_TIMESTAMP => ListOffsetsResponse {
            offset: reader.log_start_offset(),
            timestamp_ms: -1,
        },
        ts => match reader.offset_for_timestamp(ts)? {
            Some((offset, timestamp_ms)) => ListOffsetsResponse {
                offset,
                timestamp_ms,
            },
            None => end,
        },
    })
}

//! Property tests for LoadHistory (api 48): every request and answer round-trips
//! through the codecs at any read boundary, and truncated or mutated bodies are named
//! errors, never panics. (The frame_decode fuzz target covers it with every other api.)

mod common;

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use weir_protocol::frame::RequestFrame;
use weir_protocol::messages::*;
use weir_protocol::{ApiKey, Request, ResponseBody};

fn s() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{0,24}"
}

fn request() -> impl Strategy<Value = Request> {
    (s(), any::<u32>(), any::<u32>()).prop_map(|(topic, resolution_s, max_samples)| {
        LoadHistoryRequest {
            topic,
            resolution_s,
            max_samples,
        }
        .into()
    })
}

fn forecast() -> impl Strategy<Value = LoadForecast> {
    (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>(), s()).prop_map(
        |(horizon_s, records_in_per_s, low_per_s, high_per_s, model)| LoadForecast {
            horizon_s,
            records_in_per_s,
            low_per_s,
            high_per_s,
            model,
        },
    )
}

fn node_sample() -> impl Strategy<Value = NodeLoadSample> {
    (
        (
            any::<i64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        ),
        vec(any::<u32>(), 0..5),
        (any::<u64>(), any::<u64>(), any::<u64>()),
        (any::<u32>(), any::<u64>(), any::<u64>()),
    )
        .prop_map(
            |((at_s, ri, bi, ro, bo), queued, (p50, p99, f99), (cpu, rss, disk))| NodeLoadSample {
                at_s,
                records_in_per_s: ri,
                bytes_in_per_s: bi,
                records_out_per_s: ro,
                bytes_out_per_s: bo,
                queued,
                produce_latency_us_p50: p50,
                produce_latency_us_p99: p99,
                fetch_latency_us_p99: f99,
                cpu_permille: cpu,
                resident_bytes: rss,
                disk_used_bytes: disk,
            },
        )
}

fn shard_sample() -> impl Strategy<Value = ShardLoadSample> {
    (
        (
            any::<i64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        ),
        vec(any::<u32>(), 0..5),
        (any::<u64>(), any::<u64>()),
    )
        .prop_map(
            |((at_s, ri, bi, ro, bo), queued, (queue_wait_us_mean, queue_wait_us_p99))| {
                ShardLoadSample {
                    at_s,
                    records_in_per_s: ri,
                    bytes_in_per_s: bi,
                    records_out_per_s: ro,
                    bytes_out_per_s: bo,
                    queued,
                    queue_wait_us_mean,
                    queue_wait_us_p99,
                }
            },
        )
}

fn response() -> impl Strategy<Value = ResponseBody> {
    (
        any::<u32>(),
        forecast(),
        vec(node_sample(), 0..4),
        vec(
            (s(), any::<u32>(), forecast(), vec(shard_sample(), 0..4)).prop_map(
                |(topic, shard, forecast, samples)| ShardLoadHistory {
                    topic,
                    shard,
                    forecast,
                    samples,
                },
            ),
            0..3,
        ),
        vec(
            (
                (s(), s(), forecast()),
                (any::<u64>(), any::<u32>(), any::<i64>()),
                vec(
                    (any::<i64>(), any::<u64>()).prop_map(|(at_s, records_per_s)| DemandSample {
                        at_s,
                        records_per_s,
                    }),
                    0..4,
                ),
            )
                .prop_map(
                    |(
                        (service, message_type, forecast),
                        (expected_per_s, load_permille, reported_at_s),
                        samples,
                    )| {
                        DemandHistory {
                            service,
                            message_type,
                            forecast,
                            expected_per_s,
                            load_permille,
                            reported_at_s,
                            samples,
                        }
                    },
                ),
            0..3,
        ),
    )
        .prop_map(|(resolution_s, node_forecast, node, shards, demands)| {
            LoadHistoryResponse {
                resolution_s,
                node_forecast,
                node,
                shards,
                demands,
            }
            .into()
        })
}

proptest! {
    #[test]
    fn load_history_requests_round_trip_at_any_read_boundary(req in request(), id in any::<u32>(), split in 0usize..64) {
        common::request_round_trip(RequestFrame::new(id, req), split)?;
    }

    #[test]
    fn load_history_responses_round_trip(body in response(), id in any::<u32>()) {
        common::response_round_trip(body, id)?;
    }

    #[test]
    fn truncated_or_mutated_load_history_bodies_never_panic(body in response(), req in request(), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut head = BytesMut::new();
        let mut tail = Vec::new();
        body.encode_body(&mut head, &mut tail);
        let full = head.freeze();
        let n = cut.index(full.len());
        prop_assert!(ResponseBody::decode(48, 0, full.slice(..n)).is_err());
        let mut m = full.to_vec();
        let i = flip.index(m.len());
        m[i] ^= 1 << bit;
        let _ = ResponseBody::decode(48, 0, m.into());

        let mut head = BytesMut::new();
        req.encode_body(&mut head, &mut tail);
        let full = head.freeze();
        let n = cut.index(full.len());
        prop_assert!(Request::decode(48, 0, full.slice(..n)).is_err());
        let mut m = full.to_vec();
        let i = flip.index(m.len());
        m[i] ^= 1 << bit;
        let _ = Request::decode(48, 0, m.into());
    }
}

#[test]
fn load_history_is_api_48_version_0() {
    assert_eq!(ApiKey::LoadHistory as u16, 48);
    assert_eq!(ApiKey::from_u16(48), Some(ApiKey::LoadHistory));
    assert_eq!(ApiKey::LoadHistory.max_version(), 0);
    assert_eq!(ApiKey::from_u16(49), Some(ApiKey::ReshardTopic));
}

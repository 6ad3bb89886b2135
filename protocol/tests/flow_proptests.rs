//! Property tests for the flow-control admin messages (DescribeQuotas, AlterQuotas,
//! FlowStatus) and the handshake's client id: every value round-trips through the
//! codecs, and truncated or mutated bodies are named errors, never panics.

mod common;

use bytes::BytesMut;
use proptest::prelude::*;
use weir_protocol::frame::RequestFrame;
use weir_protocol::messages::*;
use weir_protocol::{ApiKey, Request, ResponseBody};

fn s() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{0,24}"
}

fn quota() -> impl Strategy<Value = Quota> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(|(a, b, c, d, e, f)| Quota {
            produce_bytes_per_s: a,
            produce_burst_bytes: b,
            fetch_bytes_per_s: c,
            fetch_burst_bytes: d,
            max_connections: e,
            max_queued_bytes: f,
        })
}

fn entry() -> impl Strategy<Value = QuotaEntry> {
    (s(), quota()).prop_map(|(client_id, quota)| QuotaEntry { client_id, quota })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (s(), s()).prop_map(|(client_software, client_id)| ApiVersionsRequest {
            client_software,
            client_id
        }
        .into()),
        proptest::collection::vec(s(), 0..8)
            .prop_map(|client_ids| DescribeQuotasRequest { client_ids }.into()),
        (s(), 0u8..=1, quota()).prop_map(|(client_id, remove, quota)| AlterQuotasRequest {
            client_id,
            remove,
            quota
        }
        .into()),
        Just(FlowStatusRequest {}.into()),
    ]
}

fn flow_status() -> impl Strategy<Value = FlowStatusResponse> {
    (
        any::<u32>(),
        any::<[u64; 6]>(),
        proptest::collection::vec((0u8..4, any::<u32>(), any::<u64>()), 0..5),
        proptest::collection::vec((s(), any::<u32>(), any::<u64>(), any::<u64>()), 0..5),
    )
        .prop_map(|(load, n, classes, clients)| FlowStatusResponse {
            load_permille: load,
            memory_used_bytes: n[0],
            memory_budget_bytes: n[1],
            pending_produce_bytes: n[2],
            pending_produce_reference_bytes: n[3],
            produce_latency_ewma_us: n[4],
            produce_latency_target_us: n[5],
            classes: classes
                .into_iter()
                .map(|(class, shed_permille, shed_total)| ClassFlowStatus {
                    class,
                    shed_permille,
                    shed_total,
                })
                .collect(),
            clients: clients
                .into_iter()
                .map(
                    |(client_id, connections, queued_bytes, throttled_total)| ClientFlowStatus {
                        client_id,
                        connections,
                        queued_bytes,
                        throttled_total,
                    },
                )
                .collect(),
        })
}

fn response() -> impl Strategy<Value = ResponseBody> {
    prop_oneof![
        proptest::collection::vec(entry(), 0..6)
            .prop_map(|entries| DescribeQuotasResponse { entries }.into()),
        entry().prop_map(|entry| AlterQuotasResponse { entry }.into()),
        flow_status().prop_map(ResponseBody::from),
    ]
}

proptest! {
    #[test]
    fn flow_requests_round_trip_through_the_codecs(req in request(), id in any::<u32>(), split in 0usize..200) {
        common::request_round_trip(RequestFrame::new(id, req), split)?;
    }

    #[test]
    fn flow_responses_round_trip(body in response(), id in any::<u32>()) {
        common::response_round_trip(body, id)?;
    }

    #[test]
    fn truncated_or_mutated_flow_bodies_never_panic(body in response(), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut head = BytesMut::new();
        let mut tail = Vec::new();
        body.encode_body(&mut head, &mut tail);
        let full = head.freeze();
        let api = body.api_key() as u16;
        if !full.is_empty() {
            let n = cut.index(full.len());
            // A strict prefix of a body is always refused with a named error.
            prop_assert!(ResponseBody::decode(api, 0, full.slice(..n)).is_err());
            let mut m = full.to_vec();
            let i = flip.index(m.len());
            m[i] ^= 1 << bit;
            let _ = ResponseBody::decode(api, 0, m.into());
        }
    }
}

#[test]
fn flow_apis_use_keys_20_to_22() {
    assert_eq!(ApiKey::DescribeQuotas as u16, 20);
    assert_eq!(ApiKey::AlterQuotas as u16, 21);
    assert_eq!(ApiKey::FlowStatus as u16, 22);
    for k in [20u16, 21, 22] {
        assert!(ApiKey::from_u16(k).is_some());
    }
}

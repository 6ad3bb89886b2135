//! Property tests for the queue-mode bodies (QueueFetch, Ack, Nack, ExtendLease,
//! QueueStatus): every request and response round-trips through its frame, and
//! truncated or mutated encodings of them never panic the decoders (they fail with a
//! named error or decode to some other valid value).

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use weir_protocol::frame::RequestHeader;
use weir_protocol::messages::*;
use weir_protocol::{Request, RequestFrame, ResponseBody, ResponseFrame, ResponsePayload};

fn s() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn lease() -> impl Strategy<Value = LeaseRef> {
    (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(shard, offset, lease_id)| LeaseRef {
        shard,
        offset,
        lease_id,
    })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (s(), s(), s(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
            |(group, consumer, topic, max_messages, lease_ms, max_wait_ms)| {
                Request::QueueFetch(QueueFetchRequest {
                    group,
                    consumer,
                    topic,
                    max_messages,
                    lease_ms,
                    max_wait_ms,
                })
            }
        ),
        (s(), s(), vec(lease(), 0..5)).prop_map(|(group, topic, leases)| Request::Ack(
            AckRequest {
                group,
                topic,
                leases
            }
        )),
        (s(), s(), lease(), any::<u8>(), s()).prop_map(
            |(group, topic, lease, retriable, reason)| {
                Request::Nack(NackRequest {
                    group,
                    topic,
                    lease,
                    retriable,
                    reason,
                })
            }
        ),
        (s(), s(), lease(), any::<u32>()).prop_map(|(group, topic, lease, lease_ms)| {
            Request::ExtendLease(ExtendLeaseRequest {
                group,
                topic,
                lease,
                lease_ms,
            })
        }),
        (s(), s())
            .prop_map(|(group, topic)| Request::QueueStatus(QueueStatusRequest { group, topic })),
    ]
}

fn leased() -> impl Strategy<Value = LeasedMessage> {
    (
        lease(),
        any::<u32>(),
        any::<u32>(),
        any::<u8>(),
        any::<u32>(),
        vec(any::<u8>(), 0..64),
    )
        .prop_map(
            |(l, attempt, max_attempts, class, lease_ms, record)| LeasedMessage {
                shard: l.shard,
                offset: l.offset,
                lease_id: l.lease_id,
                attempt,
                max_attempts,
                class,
                lease_ms,
                record: Bytes::from(record),
            },
        )
}

fn shard_status() -> impl Strategy<Value = QueueShardStatus> {
    (any::<[u64; 3]>(), any::<[u32; 5]>()).prop_map(|(o, c)| QueueShardStatus {
        shard: c[0],
        ack_floor: o[0],
        next_offset: o[1],
        high_watermark: o[2],
        leased: c[1],
        waiting: c[2],
        dying: c[3],
        done_above_floor: c[4],
    })
}

fn queue_status() -> impl Strategy<Value = QueueStatus> {
    (
        s(),
        s(),
        any::<u8>(),
        any::<[u64; 8]>(),
        any::<[u32; 2]>(),
        vec(shard_status(), 0..3),
    )
        .prop_map(|(group, topic, breaker_state, n, w, shards)| QueueStatus {
            group,
            topic,
            breaker_state,
            breaker_state_ms: n[0],
            window_successes: w[0],
            window_failures: w[1],
            leased: n[1],
            acked: n[2],
            nacked: n[3],
            expired: n[4],
            redelivered: n[5],
            dead_lettered: n[6],
            shards,
            breaker_reopens_in_ms: n[7],
        })
}

fn response() -> impl Strategy<Value = ResponseBody> {
    prop_oneof![
        vec(leased(), 0..4)
            .prop_map(|messages| ResponseBody::QueueFetch(QueueFetchResponse { messages })),
        vec(any::<u16>(), 0..6).prop_map(|results| ResponseBody::Ack(AckResponse { results })),
        (any::<u8>(), any::<u32>(), any::<u32>()).prop_map(|(outcome, attempts, retry_in_ms)| {
            ResponseBody::Nack(NackResponse {
                outcome,
                attempts,
                retry_in_ms,
            })
        }),
        any::<u32>()
            .prop_map(|lease_ms| ResponseBody::ExtendLease(ExtendLeaseResponse { lease_ms })),
        vec(queue_status(), 0..3)
            .prop_map(|queues| ResponseBody::QueueStatus(QueueStatusResponse { queues })),
    ]
}

fn header(api_key: u16, correlation_id: u32) -> RequestHeader {
    RequestHeader {
        api_key,
        api_version: 0,
        correlation_id,
        priority: 0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn queue_requests_round_trip(req in request(), id in any::<u32>()) {
        let frame = RequestFrame::new(id, req);
        let mut b = BytesMut::new();
        frame.encode(&mut b);
        let decoded = RequestFrame::decode(b.freeze().slice(4..)).unwrap();
        prop_assert_eq!(decoded, frame);
    }

    #[test]
    fn queue_responses_round_trip(body in response(), id in any::<u32>()) {
        let h = header(body.api_key() as u16, id);
        let frame = ResponseFrame::ok(&h, body);
        let mut b = BytesMut::new();
        frame.encode(&mut b);
        let decoded = ResponseFrame::decode(b.freeze().slice(4..)).unwrap();
        prop_assert_eq!(decoded, frame);
    }

    #[test]
    fn cut_or_mutated_queue_frames_never_panic(
        req in request(),
        body in response(),
        cut in any::<usize>(),
        edits in vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let mut rb = BytesMut::new();
        RequestFrame::new(1, req).encode(&mut rb);
        let mut sb = BytesMut::new();
        ResponseFrame::ok(&header(body.api_key() as u16, 1), body).encode(&mut sb);
        for (is_request, bytes) in [(true, rb.to_vec()), (false, sb.to_vec())] {
            let body = &bytes[4..];
            // Truncated: always an error, never a panic.
            let n = cut % body.len();
            let cut_short = Bytes::copy_from_slice(&body[..n]);
            if is_request {
                prop_assert!(RequestFrame::decode(cut_short).is_err());
            } else {
                prop_assert!(ResponseFrame::decode(cut_short).is_err());
            }
            let mut m = body.to_vec();
            for (at, v) in &edits {
                let len = m.len();
                m[at % len] = *v;
            }
            let _ = RequestFrame::decode(Bytes::from(m.clone()));
            if let Ok(f) = ResponseFrame::decode(Bytes::from(m)) {
                if let ResponsePayload::Ok(b) = f.payload {
                    let _ = b.api_key();
                }
            }
        }
    }
}

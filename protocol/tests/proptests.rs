//! Property tests for the codec: every request and response round-trips, through the
//! codecs too and across arbitrary read boundaries; built batches parse back to their
//! records; arbitrary and mutated bytes never panic a decoder; and every single-bit
//! flip in a batch's CRC-covered region is caught; re-stamped producer fields read
//! back in a valid batch.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use tokio_util::codec::Decoder;
use weir_protocol::batch::{self, Batch, BatchBuilder, NewRecord, CRC_START};
use weir_protocol::frame::{ErrorBody, RequestHeader};
use weir_protocol::messages::*;
use weir_protocol::{
    ClientCodec, ErrorCode, Request, RequestFrame, ResponseBody, ResponseFrame, ResponsePayload,
    ServerCodec,
};

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

/// Strings of any Unicode, short enough to stay under the u16 length limit.
fn s() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn strings() -> impl Strategy<Value = Vec<String>> {
    vec(s(), 0..4)
}

/// Record sets are opaque to the frame codec: any bytes, in any chunking.
fn records() -> impl Strategy<Value = Records> {
    vec(vec(any::<u8>(), 0..48), 0..3).prop_map(|chunks| {
        Records::from_chunks(chunks.into_iter().map(Bytes::from).collect::<Vec<_>>())
    })
}

fn acks() -> impl Strategy<Value = Acks> {
    prop_oneof![
        Just(Acks::None),
        Just(Acks::Leader),
        Just(Acks::Durable),
        Just(Acks::Mirrored)
    ]
}

fn topic_config() -> impl Strategy<Value = TopicConfig> {
    (
        prop_oneof![
            Just(Durability::None),
            Just(Durability::Interval),
            Just(Durability::Always)
        ],
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        (any::<u8>(), any::<u8>(), s(), any::<u8>(), any::<u8>()),
    )
        .prop_map(
            |(durability, f, rm, rb, sb, mm, (dp, dc, rule, replicas, min_in_sync))| TopicConfig {
                durability,
                flush_interval_ms: f,
                retention_ms: rm,
                retention_bytes: rb,
                segment_bytes: sb,
                max_message_bytes: mm,
                default_priority: dp,
                default_complexity: dc,
                shard_key_rule: rule,
                replicas,
                min_in_sync,
            },
        )
}

fn shard_metadata() -> impl Strategy<Value = ShardMetadata> {
    (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(shard, l, h)| ShardMetadata {
        shard,
        log_start_offset: l,
        high_watermark: h,
    })
}

fn reshard() -> impl Strategy<Value = Reshard> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        vec(any::<u64>(), 0..5),
        s(),
    )
        .prop_map(|(epoch, from_shards, to_shards, starts, reason)| Reshard {
            epoch,
            from_shards,
            to_shards,
            starts,
            reason,
        })
}

fn topic_metadata() -> impl Strategy<Value = TopicMetadata> {
    (
        s(),
        topic_config(),
        vec(shard_metadata(), 0..4),
        any::<u32>(),
        vec(reshard(), 0..3),
    )
        .prop_map(
            |(name, config, shards, active_shards, reshards)| TopicMetadata {
                name,
                config,
                shards,
                active_shards,
                reshards,
            },
        )
}

fn offset_entry() -> impl Strategy<Value = OffsetEntry> {
    (s(), any::<u32>(), any::<u64>()).prop_map(|(topic, shard, offset)| OffsetEntry {
        topic,
        shard,
        offset,
    })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (s(), s()).prop_map(|(client_software, client_id)| ApiVersionsRequest {
            client_software,
            client_id
        }
        .into()),
        (s(), any::<u32>(), topic_config()).prop_map(|(name, shards, config)| CreateTopicRequest {
            name,
            shards,
            config
        }
        .into()),
        s().prop_map(|name| DeleteTopicRequest { name }.into()),
        strings().prop_map(|topics| MetadataRequest { topics }.into()),
        (s(), any::<u32>(), acks(), any::<u32>(), records()).prop_map(
            |(topic, shard, acks, timeout_ms, records)| ProduceRequest {
                topic,
                shard,
                acks,
                timeout_ms,
                records
            }
            .into()
        ),
        (
            s(),
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(
                |(topic, shard, offset, max_bytes, min_bytes, max_wait_ms)| {
                    FetchRequest {
                        topic,
                        shard,
                        offset,
                        max_bytes,
                        min_bytes,
                        max_wait_ms,
                    }
                    .into()
                }
            ),
        (
            s(),
            any::<u32>(),
            vec(any::<u64>(), 0..6),
            (any::<u32>(), any::<u32>(), any::<u32>())
        )
            .prop_map(
                |(topic, shard, cursors, (max_bytes, min_bytes, max_wait_ms))| {
                    PriorityFetchRequest {
                        topic,
                        shard,
                        cursors,
                        max_bytes,
                        min_bytes,
                        max_wait_ms,
                    }
                    .into()
                }
            ),
        (s(), any::<u32>(), any::<i64>()).prop_map(|(topic, shard, timestamp_ms)| {
            ListOffsetsRequest {
                topic,
                shard,
                timestamp_ms,
            }
            .into()
        }),
        (any::<u64>(), any::<u16>()).prop_map(|(producer_id, producer_epoch)| {
            InitProducerIdRequest {
                producer_id,
                producer_epoch,
            }
            .into()
        }),
        (s(), s(), s(), strings(), any::<u32>(), any::<u32>()).prop_map(
            |(group, member_id, client_id, topics, session_timeout_ms, rebalance_timeout_ms)| {
                JoinGroupRequest {
                    group,
                    member_id,
                    client_id,
                    topics,
                    session_timeout_ms,
                    rebalance_timeout_ms,
                }
                .into()
            }
        ),
        (s(), s(), any::<u32>()).prop_map(|(group, member_id, generation)| {
            HeartbeatRequest {
                group,
                member_id,
                generation,
            }
            .into()
        }),
        (s(), s()).prop_map(|(group, member_id)| LeaveGroupRequest { group, member_id }.into()),
        (s(), s(), any::<u32>(), vec(offset_entry(), 0..4)).prop_map(
            |(group, member_id, generation, offsets)| CommitOffsetsRequest {
                group,
                member_id,
                generation,
                offsets,
            }
            .into()
        ),
        (
            s(),
            vec(
                (s(), any::<u32>()).prop_map(|(topic, shard)| ShardRef { topic, shard }),
                0..4
            )
        )
            .prop_map(|(group, shards)| FetchOffsetsRequest { group, shards }.into()),
        strings().prop_map(|topics| DescribeClusterRequest { topics }.into()),
        (s(), any::<u32>())
            .prop_map(|(topic, shard)| DescribeShardHistoryRequest { topic, shard }.into()),
        (s(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
            |(topic, shard, from_node, to_node)| ShardMoveRequest {
                topic,
                shard,
                from_node,
                to_node
            }
            .into()
        ),
        (any::<u32>(), s()).prop_map(|(node_id, addr)| AddNodeRequest { node_id, addr }.into()),
        any::<u32>().prop_map(|node_id| RemoveNodeRequest { node_id }.into()),
        (s(), any::<u32>())
            .prop_map(|(topic, shards)| ReshardTopicRequest { topic, shards }.into()),
        (
            s(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(
                |(topic, shard, node_id, epoch, fetch_offset, last_epoch, mb, mw)| {
                    MirrorFetchRequest {
                        topic,
                        shard,
                        node_id,
                        epoch,
                        fetch_offset,
                        last_epoch,
                        max_bytes: mb,
                        max_wait_ms: mw,
                    }
                    .into()
                }
            ),
        (any::<u8>(), vec(any::<u8>(), 0..64)).prop_map(|(kind, p)| ConsensusRpcRequest {
            kind,
            payload: Bytes::from(p)
        }
        .into()),
        vec(any::<u8>(), 0..64).prop_map(|c| ClusterWriteRequest {
            command: Bytes::from(c)
        }
        .into()),
    ]
}

fn node_info() -> impl Strategy<Value = NodeInfo> {
    (
        any::<u32>(),
        s(),
        any::<u8>(),
        0u8..5,
        any::<u8>(),
        any::<u32>(),
    )
        .prop_map(
            |(node_id, addr, alive, role, draining, moves_pending)| NodeInfo {
                node_id,
                addr,
                alive,
                role: ConsensusRole::from_u8(role).expect("role"),
                draining,
                moves_pending,
            },
        )
}

fn shard_placement() -> impl Strategy<Value = ShardPlacement> {
    (
        (s(), any::<u32>(), any::<u32>(), any::<u32>()),
        (
            vec(any::<u32>(), 0..4),
            vec(any::<u32>(), 0..4),
            any::<u8>(),
            any::<u64>(),
        ),
        vec(
            (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(node_id, offset, lag_records, caught_up_ms_ago)| MirrorState {
                    node_id,
                    offset,
                    lag_records,
                    caught_up_ms_ago,
                },
            ),
            0..3,
        ),
    )
        .prop_map(
            |((topic, shard, primary, epoch), (replicas, in_sync, live, hwm), mirrors)| {
                ShardPlacement {
                    topic,
                    shard,
                    primary,
                    epoch,
                    replicas,
                    in_sync,
                    live,
                    high_watermark: hwm,
                    mirrors,
                }
            },
        )
}

fn response_body() -> impl Strategy<Value = ResponseBody> {
    prop_oneof![
        (
            s(),
            any::<u32>(),
            vec(
                (any::<u16>(), any::<u16>(), any::<u16>()).prop_map(|(k, a, b)| {
                    ApiVersionRange {
                        api_key: k,
                        min_version: a,
                        max_version: b,
                    }
                }),
                0..14
            )
        )
            .prop_map(|(broker_software, max_frame_bytes, apis)| {
                ApiVersionsResponse {
                    broker_software,
                    max_frame_bytes,
                    apis,
                    class_bounds: vec![2, 5, 8],
                    class_weights: vec![8, 4, 2, 1],
                }
                .into()
            }),
        topic_metadata().prop_map(|topic| CreateTopicResponse { topic }.into()),
        Just(DeleteTopicResponse {}.into()),
        (
            any::<u64>(),
            s(),
            vec(topic_metadata(), 0..3),
            vec((s(), any::<u16>()), 0..3)
        )
            .prop_map(
                |(uptime_s, broker_software, topics, errors)| MetadataResponse {
                    uptime_s,
                    broker_software,
                    topics,
                    errors: errors
                        .into_iter()
                        .map(|(name, error_code)| TopicError { name, error_code })
                        .collect(),
                }
                .into()
            ),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u8>(),
            any::<u32>()
        )
            .prop_map(|(b, l, s, d, shard)| {
                ProduceResponse {
                    base_offset: b,
                    last_offset: l,
                    log_start_offset: s,
                    duplicate: d,
                    shard,
                }
                .into()
            }),
        (any::<u64>(), any::<u64>(), any::<u32>(), records()).prop_map(|(h, l, e, records)| {
            FetchResponse {
                high_watermark: h,
                log_start_offset: l,
                layout_epoch: e,
                records,
            }
            .into()
        }),
        (
            any::<u64>(),
            any::<u64>(),
            vec(any::<u64>(), 0..6),
            any::<u32>(),
            records()
        )
            .prop_map(|(h, l, cursors, layout_epoch, records)| {
                PriorityFetchResponse {
                    high_watermark: h,
                    log_start_offset: l,
                    cursors,
                    layout_epoch,
                    records,
                }
                .into()
            }),
        (any::<u64>(), any::<i64>()).prop_map(|(offset, timestamp_ms)| {
            ListOffsetsResponse {
                offset,
                timestamp_ms,
            }
            .into()
        }),
        (any::<u64>(), any::<u16>()).prop_map(|(producer_id, producer_epoch)| {
            InitProducerIdResponse {
                producer_id,
                producer_epoch,
            }
            .into()
        }),
        (
            s(),
            any::<u32>(),
            vec(
                (s(), vec(any::<u32>(), 0..4))
                    .prop_map(|(topic, shards)| TopicShards { topic, shards }),
                0..3
            )
        )
            .prop_map(|(member_id, generation, assignment)| {
                JoinGroupResponse {
                    member_id,
                    generation,
                    assignment,
                }
                .into()
            }),
        Just(HeartbeatResponse {}.into()),
        Just(LeaveGroupResponse {}.into()),
        Just(CommitOffsetsResponse {}.into()),
        vec(offset_entry(), 0..4).prop_map(|offsets| FetchOffsetsResponse { offsets }.into()),
        (
            any::<u8>(),
            any::<u32>(),
            any::<u32>(),
            vec(node_info(), 0..3),
            vec(shard_placement(), 0..3)
        )
            .prop_map(|(enabled, node_id, controller, nodes, shards)| {
                DescribeClusterResponse {
                    enabled,
                    node_id,
                    controller,
                    nodes,
                    shards,
                }
                .into()
            }),
        (
            s(),
            any::<u32>(),
            vec(any::<u32>(), 0..4),
            vec(
                (
                    any::<i64>(),
                    any::<u8>(),
                    any::<u32>(),
                    any::<u32>(),
                    vec(any::<u32>(), 0..4),
                    vec(any::<u32>(), 0..4),
                    any::<u8>()
                )
                    .prop_map(
                        |(at_ms, kind, epoch, primary, in_sync, replicas, cause)| {
                            ShardEvent {
                                at_ms,
                                kind,
                                epoch,
                                primary,
                                in_sync,
                                replicas,
                                cause,
                            }
                        }
                    ),
                0..4
            )
        )
            .prop_map(|(topic, shard, replicas, events)| {
                DescribeShardHistoryResponse {
                    topic,
                    shard,
                    replicas,
                    events,
                }
                .into()
            }),
        any::<u32>().prop_map(|from_node| ShardMoveResponse { from_node }.into()),
        reshard().prop_map(|reshard| ReshardTopicResponse { reshard }.into()),
        any::<u32>().prop_map(|moves_planned| AddNodeResponse { moves_planned }.into()),
        any::<u32>().prop_map(|moves_pending| RemoveNodeResponse { moves_pending }.into()),
        (
            (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()),
            vec(
                (any::<u32>(), any::<u64>()).prop_map(|(epoch, start_offset)| EpochStart {
                    epoch,
                    start_offset
                }),
                0..3
            ),
            records(),
            (any::<u64>(), any::<u64>())
        )
            .prop_map(
                |((epoch, hwm, lso, truncate_to), epochs, records, (end, rate))| {
                    MirrorFetchResponse {
                        epoch,
                        high_watermark: hwm,
                        log_start_offset: lso,
                        truncate_to,
                        epochs,
                        records,
                        log_end_offset: end,
                        write_rate: rate,
                    }
                    .into()
                }
            ),
        vec(any::<u8>(), 0..64).prop_map(|p| ConsensusRpcResponse {
            payload: Bytes::from(p)
        }
        .into()),
        vec(any::<u8>(), 0..64).prop_map(|r| ClusterWriteResponse {
            result: Bytes::from(r)
        }
        .into()),
    ]
}

fn request_frame() -> impl Strategy<Value = RequestFrame> {
    (any::<u32>(), 0u8..=10, request()).prop_map(|(id, priority, request)| {
        let mut f = RequestFrame::new(id, request);
        f.header.priority = priority;
        f
    })
}

fn response_frame() -> impl Strategy<Value = ResponseFrame> {
    let ok = (any::<u32>(), response_body()).prop_map(|(id, body)| {
        let api = body.api_key();
        let h = RequestHeader {
            api_key: api as u16,
            api_version: api.max_version(),
            correlation_id: id,
            priority: 0,
        };
        ResponseFrame::ok(&h, body)
    });
    let err = (
        any::<u16>(),
        any::<u16>(),
        any::<u32>(),
        1..ErrorCode::ALL.len(),
        any::<u32>(),
        s(),
    )
        .prop_map(|(api_key, api_version, id, code, retry, message)| {
            let h = RequestHeader {
                api_key,
                api_version,
                correlation_id: id,
                priority: 0,
            };
            ResponseFrame::error(&h, ErrorCode::ALL[code], retry, message)
        });
    prop_oneof![3 => ok, 1 => err]
}

#[derive(Debug, Clone)]
struct Rec {
    priority: u8,
    complexity: u8,
    timestamp_ms: i64,
    key: Vec<u8>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

fn rec(base_ts: i64) -> impl Strategy<Value = Rec> {
    (
        1u8..=10,
        1u8..=5,
        -100_000i64..100_000,
        vec(any::<u8>(), 0..16),
        vec(any::<u8>(), 0..64),
        vec((s(), vec(any::<u8>(), 0..8)), 0..3),
    )
        .prop_map(
            move |(priority, complexity, delta, key, value, headers)| Rec {
                priority,
                complexity,
                timestamp_ms: base_ts + delta,
                key,
                value,
                headers,
            },
        )
}

/// A batch's records and optional producer fields.
fn batch_input() -> impl Strategy<Value = (Vec<Rec>, Option<(u64, u16, u32)>)> {
    (-1_000_000_000i64..2_000_000_000_000).prop_flat_map(|base| {
        (
            vec(rec(base), 1..8),
            proptest::option::of((1u64.., any::<u16>(), any::<u32>())),
        )
    })
}

fn build(records: &[Rec], producer: Option<(u64, u16, u32)>) -> Bytes {
    let mut b = BatchBuilder::new();
    if let Some((id, epoch, seq)) = producer {
        b = b.producer(id, epoch, seq);
    }
    for r in records {
        let headers: Vec<(&str, &[u8])> = r
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        b.push(&NewRecord {
            priority: r.priority,
            complexity: r.complexity,
            timestamp_ms: r.timestamp_ms,
            key: &r.key,
            value: &r.value,
            headers: &headers,
        })
        .unwrap();
    }
    b.finish().unwrap()
}

fn encode_req(frames: &[RequestFrame]) -> Vec<u8> {
    let mut b = BytesMut::new();
    for f in frames {
        f.encode(&mut b);
    }
    b.to_vec()
}

fn encode_resp(frames: &[ResponseFrame]) -> Vec<u8> {
    let mut b = BytesMut::new();
    for f in frames {
        f.encode(&mut b);
    }
    b.to_vec()
}

/// Feeds `bytes` to `decode` in pieces cut at `cuts`, collecting every item.
fn feed<T>(
    bytes: &[u8],
    cuts: &[usize],
    mut decode: impl FnMut(&mut BytesMut) -> Option<T>,
) -> Vec<T> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(bytes.len());
    points.sort_unstable();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut from = 0;
    for to in points {
        buf.extend_from_slice(&bytes[from..to]);
        from = to;
        while let Some(item) = decode(&mut buf) {
            out.push(item);
        }
    }
    assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
    out
}

/// Overwrites a few bytes of a valid encoding: reaches deeper than random bytes.
fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8)]) -> Vec<u8> {
    if !bytes.is_empty() {
        for (at, v) in edits {
            let n = bytes.len();
            bytes[at % n] = *v;
        }
    }
    bytes
}

/// Runs every decoder that reads network bytes; none may panic.
fn decode_everything(bytes: &[u8]) {
    let mut codec = ServerCodec::new(1 << 20);
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(_)) = codec.decode(&mut buf) {}
    let mut codec = ClientCodec::new(1 << 20);
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(_)) = codec.decode(&mut buf) {}
    let b = Bytes::copy_from_slice(bytes);
    let _ = ResponseFrame::decode(b.clone());
    let _ = RequestFrame::decode(b.clone());
    let _ = batch::validate(bytes);
    for part in batch::split(b.clone()).flatten() {
        if let Ok(batch) = Batch::parse(part) {
            for r in batch.records() {
                let _ = (r.offset, r.timestamp_ms, r.key.len());
            }
            let _ = (batch.header().last_offset(), batch.header().last_sequence());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn requests_round_trip(frame in request_frame()) {
        let bytes = encode_req(std::slice::from_ref(&frame));
        let decoded = RequestFrame::decode(Bytes::copy_from_slice(&bytes[4..])).unwrap();
        prop_assert_eq!(&decoded, &frame);
        let mut buf = BytesMut::from(&bytes[..]);
        let via_codec = ServerCodec::default().decode(&mut buf).unwrap().unwrap().unwrap();
        prop_assert_eq!(via_codec, frame);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn responses_round_trip(frame in response_frame()) {
        let bytes = encode_resp(std::slice::from_ref(&frame));
        let decoded = ResponseFrame::decode(Bytes::copy_from_slice(&bytes[4..])).unwrap();
        prop_assert_eq!(&decoded, &frame);
        let mut buf = BytesMut::from(&bytes[..]);
        let via_codec = ClientCodec::default().decode(&mut buf).unwrap().unwrap();
        prop_assert_eq!(via_codec, frame);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn request_stream_survives_any_read_boundaries(
        frames in vec(request_frame(), 1..5),
        cuts in vec(any::<usize>(), 0..8),
    ) {
        let bytes = encode_req(&frames);
        let mut codec = ServerCodec::default();
        let got = feed(&bytes, &cuts, |b| codec.decode(b).unwrap().map(|r| r.unwrap()));
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn response_stream_survives_any_read_boundaries(
        frames in vec(response_frame(), 1..5),
        cuts in vec(any::<usize>(), 0..8),
    ) {
        let bytes = encode_resp(&frames);
        let mut codec = ClientCodec::default();
        let got = feed(&bytes, &cuts, |b| codec.decode(b).unwrap());
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn error_bodies_round_trip(retry in any::<u32>(), message in s(), code in 1..ErrorCode::ALL.len()) {
        let h = RequestHeader { api_key: 4, api_version: 0, correlation_id: 1, priority: 0 };
        let f = ResponseFrame::error(&h, ErrorCode::ALL[code], retry, message.clone());
        let bytes = encode_resp(std::slice::from_ref(&f));
        let d = ResponseFrame::decode(Bytes::copy_from_slice(&bytes[4..])).unwrap();
        prop_assert_eq!(
            d.payload,
            ResponsePayload::Err(ErrorCode::ALL[code], ErrorBody { retry_after_ms: retry, message })
        );
    }

    #[test]
    fn built_batches_parse_back((records, producer) in batch_input()) {
        let bytes = build(&records, producer);
        let b = Batch::parse(bytes.clone()).unwrap();
        let h = *b.header();
        prop_assert_eq!(h.record_count as usize, records.len());
        prop_assert_eq!(h.priority, records.iter().map(|r| r.priority).min().unwrap());
        prop_assert_eq!(h.base_timestamp_ms, records[0].timestamp_ms);
        prop_assert_eq!(h.max_timestamp_ms, records.iter().map(|r| r.timestamp_ms).max().unwrap());
        let (id, epoch, seq) = producer.unwrap_or((batch::NO_PRODUCER_ID, 0, batch::NO_SEQUENCE));
        prop_assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (id, epoch, seq));
        let got: Vec<_> = b.records().collect();
        prop_assert_eq!(got.len(), records.len());
        for (i, (g, r)) in got.iter().zip(&records).enumerate() {
            prop_assert_eq!(g.offset, i as u64);
            prop_assert_eq!(g.priority, r.priority);
            prop_assert_eq!(g.complexity, r.complexity);
            prop_assert_eq!(g.timestamp_ms, r.timestamp_ms);
            prop_assert_eq!(g.key.as_ref(), r.key.as_slice());
            prop_assert_eq!(g.value.as_ref(), r.value.as_slice());
            let headers: Vec<(String, Vec<u8>)> =
                g.headers.iter().map(|h| (h.name.clone(), h.value.to_vec())).collect();
            prop_assert_eq!(&headers, &r.headers);
        }
        // Concatenated with itself, split finds two batches.
        let mut two = bytes.to_vec();
        two.extend_from_slice(&bytes);
        let parts: Vec<_> = batch::split(Bytes::from(two)).collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(parts.len(), 2);
        prop_assert_eq!(&parts[0], &bytes);
    }

    #[test]
    fn stamping_outside_the_crc_keeps_batches_valid(
        (records, producer) in batch_input(),
        base_offset in 0u64..u64::MAX / 2,
        epoch in any::<u32>(),
    ) {
        let mut v = build(&records, producer).to_vec();
        batch::set_base_offset(&mut v, base_offset);
        batch::set_leader_epoch(&mut v, epoch);
        let h = batch::validate(&v).unwrap();
        prop_assert_eq!((h.base_offset, h.leader_epoch), (base_offset, epoch));
        prop_assert_eq!(h.last_offset(), base_offset + records.len() as u64 - 1);
    }

    #[test]
    fn restamped_batches_validate_and_read_back_the_new_producer_fields(
        (records, producer) in batch_input(),
        (id, epoch, seq) in (any::<u64>(), any::<u16>(), any::<u32>()),
        base_offset in 0u64..u64::MAX / 2,
    ) {
        let original = build(&records, producer);
        let mut v = original.to_vec();
        batch::set_base_offset(&mut v, base_offset);
        batch::restamp_producer(&mut v, id, epoch, seq).unwrap();
        let h = batch::validate(&v).unwrap();
        prop_assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (id, epoch, seq));
        prop_assert_eq!(h.base_offset, base_offset);
        let before = batch::BatchHeader::read(&original).unwrap();
        prop_assert_eq!(
            (h.record_count, h.priority, h.max_timestamp_ms),
            (before.record_count, before.priority, before.max_timestamp_ms)
        );
        // Only the producer fields and the CRC changed.
        for (i, (a, b)) in original.iter().zip(&v).enumerate() {
            if !(0..8).contains(&i) && !(16..20).contains(&i) && !(44..54).contains(&i)
                && !(56..60).contains(&i)
            {
                prop_assert_eq!(a, b, "byte {} changed", i);
            }
        }
    }

    #[test]
    fn any_flipped_bit_in_the_crc_region_is_caught(
        (records, producer) in batch_input(),
        at in any::<usize>(),
        bit in 0u8..8,
    ) {
        let mut v = build(&records, producer).to_vec();
        let i = CRC_START + at % (v.len() - CRC_START);
        v[i] ^= 1 << bit;
        prop_assert!(batch::validate(&v).is_err(), "flip of bit {} at byte {} not caught", bit, i);
        prop_assert!(batch::verify(&v).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        decode_everything(&bytes);
    }

    #[test]
    fn mutated_frames_never_panic(
        frames in vec(request_frame(), 1..3),
        responses in vec(response_frame(), 1..3),
        edits in vec((any::<usize>(), any::<u8>()), 1..4),
    ) {
        decode_everything(&mutate(encode_req(&frames), &edits));
        decode_everything(&mutate(encode_resp(&responses), &edits));
    }

    #[test]
    fn mutated_batches_never_panic(
        (records, producer) in batch_input(),
        edits in vec((any::<usize>(), any::<u8>()), 1..4),
        reseal in any::<bool>(),
    ) {
        let mut v = mutate(build(&records, producer).to_vec(), &edits);
        if reseal && v.len() >= CRC_START {
            // Fix the CRC so the damage reaches the header and record checks.
            let crc = batch::compute_crc(&v);
            v[16..20].copy_from_slice(&crc.to_le_bytes());
        }
        decode_everything(&v);
        // The consumer's one-pass decode agrees with validate-then-iterate on any
        // damaged batch: the same verdict, and the same records when it is valid.
        let bytes = Bytes::from(v);
        let mut decoded = Vec::new();
        let one_pass = batch::decode_records(&bytes, |r| decoded.push(r));
        match Batch::parse(bytes.clone()) {
            Ok(b) => {
                prop_assert_eq!(one_pass.ok(), Some(*b.header()));
                prop_assert_eq!(decoded, b.records().collect::<Vec<_>>());
            }
            Err(e) => prop_assert_eq!(one_pass.err(), Some(e)),
        }
    }

    #[test]
    fn one_pass_decoding_reads_back_built_batches((records, producer) in batch_input()) {
        let bytes = build(&records, producer);
        let mut decoded = Vec::new();
        let h = batch::decode_records(&bytes, |r| decoded.push(r)).unwrap();
        let b = Batch::parse(bytes).unwrap();
        prop_assert_eq!(&h, b.header());
        prop_assert_eq!(decoded.len(), records.len());
        prop_assert_eq!(decoded, b.records().collect::<Vec<_>>());
    }
}

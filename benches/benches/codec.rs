//! Codec hot paths: encoding and decoding a Produce request carrying 1000 records,
//! validating a batch (the broker does this on every produce), and building a batch
//! with `BatchBuilder` (the client does this on every send).
//!
//! Run: `cargo bench -p weir-benches --bench codec`.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weir_protocol::batch::{self, BatchBuilder, NewRecord};
use weir_protocol::codec::split_frame;
use weir_protocol::frame::{DEFAULT_MAX_FRAME_BYTES, LENGTH_PREFIX_BYTES, REQUEST_HEADER_BYTES};
use weir_protocol::messages::{Acks, ProduceRequest, Records};
use weir_protocol::{Request, RequestFrame};

const RECORDS: usize = 1000;
const SIZES: &[(usize, &str)] = &[(100, "1000x100B"), (1024, "1000x1KiB")];

fn values(size: usize) -> Vec<Vec<u8>> {
    (0..RECORDS)
        .map(|i| (0..size).map(|j| (i * 31 + j) as u8).collect())
        .collect()
}

fn build(values: &[Vec<u8>]) -> Bytes {
    let total: usize = values.iter().map(|v| v.len() + 64).sum();
    let mut b = BatchBuilder::with_capacity(total);
    for (i, v) in values.iter().enumerate() {
        let key = (i as u32 % 64).to_le_bytes();
        b.push(&NewRecord {
            priority: 1 + (i % 10) as u8,
            complexity: 1,
            timestamp_ms: 1_700_000_000_000 + i as i64,
            key: &key,
            value: v,
            headers: &[],
        })
        .unwrap();
    }
    b.finish().unwrap()
}

fn produce(batch: Bytes) -> RequestFrame {
    RequestFrame::new(
        1,
        ProduceRequest {
            topic: "bench".into(),
            shard: 0,
            acks: Acks::Leader,
            timeout_ms: 0,
            records: Records::from_bytes(batch),
        },
    )
}

/// What `ServerCodec::decode` does once a whole frame is buffered: cut it out of the
/// read buffer (O(1), no copy) and decode it. The read buffer is a `Bytes` clone here so
/// the measurement is the decode, not a copy of the input.
fn decode(frame: &Bytes) -> RequestFrame {
    RequestFrame::decode(frame.slice(LENGTH_PREFIX_BYTES..)).unwrap()
}

/// The codec's framing step on its own, for the record: it cuts, it does not copy.
fn split(encoded: &BytesMut) -> Bytes {
    let mut buf = encoded.clone();
    let body = split_frame(&mut buf, REQUEST_HEADER_BYTES, DEFAULT_MAX_FRAME_BYTES)
        .unwrap()
        .unwrap();
    assert!(buf.is_empty());
    body
}

fn produce_request(c: &mut Criterion) {
    let mut g = c.benchmark_group("produce_request");
    for &(size, name) in SIZES {
        let frame = produce(build(&values(size)));
        let mut encoded = BytesMut::new();
        frame.encode(&mut encoded);
        assert_eq!(split(&encoded).len() + LENGTH_PREFIX_BYTES, encoded.len());
        let frozen = encoded.clone().freeze();
        g.throughput(Throughput::Bytes(encoded.len() as u64));

        g.bench_function(BenchmarkId::new("encode", name), |b| {
            let mut buf = BytesMut::with_capacity(encoded.len());
            b.iter(|| {
                buf.clear();
                black_box(&frame).encode(&mut buf);
                black_box(buf.len())
            })
        });
        // Zero-copy path: the header is written, the records are handed over as a chunk.
        g.bench_function(BenchmarkId::new("encode_split", name), |b| {
            let mut head = BytesMut::with_capacity(64);
            let mut tail = Vec::with_capacity(1);
            b.iter(|| {
                head.clear();
                tail.clear();
                black_box(&frame).encode_split(&mut head, &mut tail);
                black_box(tail.len())
            })
        });
        g.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter(|| {
                let f = decode(&frozen);
                black_box(f)
            })
        });
        g.bench_function(BenchmarkId::new("decode_and_validate", name), |b| {
            b.iter(|| {
                let f = decode(&frozen);
                let Request::Produce(p) = f.request else {
                    unreachable!()
                };
                for part in p.records.batches() {
                    black_box(batch::validate(&part.unwrap()).unwrap());
                }
            })
        });
    }
    g.finish();
}

fn batch_validate(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch_validate");
    for &(size, name) in SIZES {
        let batch = build(&values(size));
        g.throughput(Throughput::Bytes(batch.len() as u64));
        g.bench_function(BenchmarkId::new("validate", name), |b| {
            b.iter(|| black_box(batch::validate(black_box(&batch)).unwrap()))
        });
        g.bench_function(BenchmarkId::new("verify_crc_only", name), |b| {
            b.iter(|| black_box(batch::verify(black_box(&batch)).unwrap()))
        });
    }
    g.finish();
}

fn batch_build(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch_build");
    for &(size, name) in SIZES {
        let values = values(size);
        g.throughput(Throughput::Bytes(build(&values).len() as u64));
        g.bench_function(BenchmarkId::new("BatchBuilder", name), |b| {
            b.iter(|| black_box(build(black_box(&values))))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = produce_request, batch_validate, batch_build
}
criterion_main!(benches);

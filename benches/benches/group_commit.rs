//! Group commit: many concurrent appenders with `durable` acks on one shard.
//!
//! Each appender sends batches of 1 KiB records and waits for each to be flushed
//! before sending the next, as a producer with `acks=durable` and one batch in flight
//! would. The shard writer drains whatever is queued, writes it, and flushes once for
//! the whole group, so throughput should approach the disk's fdatasync'd sequential
//! write bandwidth at the group's size, not one flush per appender.
//!
//! Run: `cargo bench -p weir-benches --bench group_commit`

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weir_broker::shard::{Shard, ShardConfig};
use weir_broker::storage::LogConfig;
use weir_protocol::batch::{BatchBuilder, BatchHeader, NewRecord};
use weir_protocol::messages::Durability;

fn make_batch(records: usize, size: usize) -> (Bytes, BatchHeader) {
    let value = vec![0x5a; size];
    let mut b = BatchBuilder::with_capacity(records * (size + 32));
    for _ in 0..records {
        b.push(&NewRecord::value(1, &value)).unwrap();
    }
    let bytes = b.finish().unwrap();
    let h = BatchHeader::read(&bytes).unwrap();
    (bytes, h)
}

fn group_commit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("group_commit_durable");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for &(appenders, records) in &[(1usize, 100usize), (64, 100), (64, 10)] {
        let (batch, header) = make_batch(records, 1024);
        let per_round = 4usize;
        group.throughput(Throughput::Bytes(
            (batch.len() * appenders * per_round) as u64,
        ));
        let id = BenchmarkId::from_parameter(format!("{appenders}x{records}x1KiB"));
        group.bench_with_input(id, &appenders, |b, &appenders| {
            let dir = tempfile::tempdir().unwrap();
            let config = ShardConfig {
                log: LogConfig {
                    segment_bytes: 256 << 20,
                    ..LogConfig::default()
                },
                durability: Durability::Always,
                ..ShardConfig::default()
            };
            let shard: Arc<Shard> =
                rt.block_on(async { Shard::open(dir.path(), "bench", config).unwrap() });
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let mut tasks = Vec::with_capacity(appenders);
                        for _ in 0..appenders {
                            let shard = shard.clone();
                            let (batch, header) = (batch.clone(), header);
                            tasks.push(tokio::spawn(async move {
                                for _ in 0..per_round {
                                    shard
                                        .append(vec![batch.clone()], vec![header], true)
                                        .await
                                        .unwrap();
                                }
                            }));
                        }
                        for t in tasks {
                            t.await.unwrap();
                        }
                    }
                    start.elapsed()
                })
            });
            rt.block_on(shard.close());
        });
    }
    group.finish();
}

criterion_group!(benches, group_commit);
criterion_main!(benches);

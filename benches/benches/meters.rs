//! What measuring costs on the hot path: one histogram observation (uncontended, and
//! with two threads bumping the same histogram, as two connection tasks would), and
//! counting a fetch's delivered records and ages from its batch headers.
//!
//! Run: `cargo bench -p weir-benches --bench meters`.

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use weir_broker::meters::{count_delivery, Histogram, Meters, TopicIo};
use weir_protocol::batch::{BatchBuilder, NewRecord};
use weir_protocol::classes::ClassMap;

fn observe(c: &mut Criterion) {
    let h = Histogram::default();
    c.bench_function("histogram_observe", |b| {
        let mut us = 0u64;
        b.iter(|| {
            us = (us + 337) % 2_000_000;
            h.observe_us(black_box(us));
        })
    });
    c.bench_function("histogram_observe_2_threads", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for t in 0..2u64 {
                    let h = &h;
                    s.spawn(move || {
                        for i in 0..iters {
                            h.observe_us(black_box((i * 337 + t) % 2_000_000));
                        }
                    });
                }
            });
            // Per observation of one thread: both ran `iters` side by side.
            start.elapsed()
        })
    });
}

fn delivery(c: &mut Criterion) {
    // A 1 MiB fetch answer: 100-record batches of 1 KiB values (about ten).
    let value = vec![7u8; 1024];
    let mut chunk = Vec::new();
    while chunk.len() < 1 << 20 {
        let mut b = BatchBuilder::new();
        for _ in 0..100 {
            b.push(&NewRecord::value(1_700_000_000_000, &value))
                .expect("push");
        }
        chunk.extend_from_slice(&b.finish().expect("batch"));
    }
    let (m, io, classes) = (Meters::default(), TopicIo::default(), ClassMap::default());
    let mut g = c.benchmark_group("count_delivery");
    g.throughput(Throughput::Bytes(chunk.len() as u64));
    g.bench_function("1MiB_of_100x1KiB_batches", |b| {
        b.iter(|| count_delivery(&m, &io, &classes, [chunk.as_slice()], 1_700_000_001_000))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = observe, delivery
}
criterion_main!(benches);

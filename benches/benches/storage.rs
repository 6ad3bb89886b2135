//! Storage hot paths: appending batches of 1, 100 and 1000 records of 100 B and 1 KiB
//! without flushing (durability `none`) and with a flush after every append
//! (`always` with one waiter), a group-commit shape (64 batches, one flush), and
//! sequential reads from a warm map.
//!
//! Run: `cargo bench -p weir-benches --bench storage`. Data goes to a temporary
//! directory under `$TMPDIR` (default /tmp); the log is recreated outside the timed
//! region whenever it passes 2 GiB.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weir_broker::storage::{Log, LogConfig};
use weir_protocol::batch::{BatchBuilder, NewRecord};

const RECORD_SIZES: &[(usize, &str)] = &[(100, "100B"), (1024, "1KiB")];
const BATCH_RECORDS: &[usize] = &[1, 100, 1000];
const LOG_BYTES_MAX: u64 = 2 << 30;

fn batch(records: usize, value_bytes: usize) -> Bytes {
    let mut b = BatchBuilder::with_capacity(records * (value_bytes + 24) + 64);
    let v: Vec<u8> = (0..value_bytes).map(|i| (i * 7) as u8).collect();
    for i in 0..records {
        b.push(&NewRecord::value(1_700_000_000_000 + i as i64, &v))
            .unwrap();
    }
    b.finish().unwrap()
}

/// A log in a fresh temporary directory (the directory lives as long as the log).
struct BenchLog {
    log: Option<Log>,
    dir: Option<tempfile::TempDir>,
}

impl BenchLog {
    fn new() -> Self {
        let mut s = BenchLog {
            log: None,
            dir: None,
        };
        s.reset();
        s
    }
    fn reset(&mut self) {
        self.log = None;
        self.dir = None;
        let dir = tempfile::tempdir().unwrap();
        self.log = Some(Log::open(dir.path(), LogConfig::default()).unwrap());
        self.dir = Some(dir);
    }
    fn log(&mut self) -> &mut Log {
        self.log.as_mut().unwrap()
    }
    fn recycle_if_big(&mut self) {
        if self.log().size_bytes() > LOG_BYTES_MAX {
            self.reset();
        }
    }
}

fn append(c: &mut Criterion) {
    let state = RefCell::new(BenchLog::new());
    for flush in [false, true] {
        let mut g = c.benchmark_group(if flush {
            "append_flush_each"
        } else {
            "append_no_flush"
        });
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        for &(size, size_name) in RECORD_SIZES {
            for &n in BATCH_RECORDS {
                let b = [batch(n, size)];
                g.throughput(Throughput::Bytes(b[0].len() as u64));
                g.bench_function(BenchmarkId::new(size_name, n), |bench| {
                    bench.iter_custom(|iters| {
                        let mut st = state.borrow_mut();
                        st.recycle_if_big();
                        let log = st.log();
                        let t = Instant::now();
                        for _ in 0..iters {
                            log.append(&b).unwrap();
                            if flush {
                                log.flush().unwrap();
                            }
                        }
                        t.elapsed()
                    })
                });
            }
        }
        g.finish();
    }
    // Group commit: the shard writer drains 64 waiters' batches, flushes once.
    let mut g = c.benchmark_group("append_group64_flush");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for &(size, size_name) in RECORD_SIZES {
        for &n in &[1usize, 16] {
            let group: Vec<Bytes> = (0..64).map(|_| batch(n, size)).collect();
            let bytes: usize = group.iter().map(|b| b.len()).sum();
            g.throughput(Throughput::Bytes(bytes as u64));
            g.bench_function(BenchmarkId::new(size_name, n), |bench| {
                bench.iter_custom(|iters| {
                    let mut st = state.borrow_mut();
                    st.recycle_if_big();
                    let log = st.log();
                    let t = Instant::now();
                    for _ in 0..iters {
                        log.append(&group).unwrap();
                        log.flush().unwrap();
                    }
                    t.elapsed()
                })
            });
        }
    }
    g.finish();
}

fn read(c: &mut Criterion) {
    let mut g = c.benchmark_group("read_sequential_warm");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for &(size, size_name, n) in &[(1024usize, "1KiB", 1000usize), (100, "100B", 1)] {
        let mut st = BenchLog::new();
        let b = [batch(n, size)];
        let target: u64 = 256 << 20;
        let per = b[0].len() as u64;
        for _ in 0..target.div_ceil(per) {
            st.log().append(&b).unwrap();
        }
        let reader = st.log().reader();
        let hwm = reader.high_watermark();
        const MAX_BYTES: usize = 1 << 20;
        // Bytes one read returns at offset 0 (whole batches up to 1 MiB).
        let per_read: usize = reader
            .read(0, MAX_BYTES)
            .unwrap()
            .iter()
            .map(|c| c.len())
            .sum();
        g.throughput(Throughput::Bytes(per_read as u64));
        g.bench_function(BenchmarkId::new(size_name, n), |bench| {
            let mut off = 0u64;
            bench.iter(|| {
                let chunks = reader.read(off, MAX_BYTES).unwrap();
                let mut got = 0usize;
                let mut last_end = off;
                for c in &chunks {
                    got += c.len();
                }
                // Advance by the records returned: 1 MiB / batch size batches.
                last_end += (got as u64 / per) * n as u64;
                off = if last_end >= hwm { 0 } else { last_end };
                got
            })
        });
        drop(reader);
    }
    g.finish();
}

criterion_group!(benches, append, read);
criterion_main!(benches);

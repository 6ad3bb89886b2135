//! Tests of a whole shard through its handle: offsets, group commit, priority
//! scheduling, idempotence across restarts, retention beside appends.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use weir_protocol::batch::{BatchBuilder, BatchHeader, NewRecord};
use weir_protocol::classes::Class;
use weir_protocol::messages::Durability;

use super::*;
use crate::storage::LogConfig;

fn config() -> ShardConfig {
    ShardConfig {
        log: LogConfig {
            segment_bytes: 1 << 20,
            ..LogConfig::default()
        },
        durability: Durability::Always,
        ..ShardConfig::default()
    }
}

/// Appends one batch (`batch(pid, seq, n, tag)`) and returns its base offset.
async fn append_batch(shard: &Shard, pid: u64, seq: u32, n: u32, tag: &str, durable: bool) -> u64 {
    let (b, h) = batch(pid, seq, n, tag);
    shard
        .append(vec![b], vec![h], durable)
        .await
        .unwrap()
        .base_offset
}

fn batch(pid: u64, seq: u32, n: u32, tag: &str) -> (Bytes, BatchHeader) {
    sized_batch(5, pid, seq, n, tag, 0)
}

fn sized_batch(
    priority: u8,
    pid: u64,
    seq: u32,
    n: u32,
    tag: &str,
    pad: usize,
) -> (Bytes, BatchHeader) {
    let mut b = if pid == 0 {
        BatchBuilder::new()
    } else {
        BatchBuilder::new().producer(pid, 0, seq)
    };
    for i in 0..n {
        let v = format!("{tag}-{i}{}", "x".repeat(pad));
        let mut r = NewRecord::value(1, v.as_bytes());
        r.priority = priority;
        b.push(&r).unwrap();
    }
    let bytes = b.finish().unwrap();
    let h = BatchHeader::read(&bytes).unwrap();
    (bytes, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_durable_appends_get_dense_distinct_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let shard = Shard::open(dir.path(), "t", config()).unwrap();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let shard = shard.clone();
        tasks.push(tokio::spawn(async move {
            let (b, h) = batch(0, 0, 3, &format!("w{i}"));
            shard.append(vec![b], vec![h], true).await.unwrap()
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        let o = t.await.unwrap();
        assert_eq!(o.last_offset, o.base_offset + 2);
        got.push(o.base_offset);
    }
    got.sort();
    assert_eq!(got, (0..64).map(|i| i * 3).collect::<Vec<u64>>());
    assert_eq!(shard.reader().high_watermark(), 192);
    shard.close().await;
}

/// Durable acks are pipelined (the writer keeps writing while a flush runs), but
/// each one is answered only after a flush that covers it completed; leader acks
/// never wait for a flush; many durable appends share few flushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_acks_wait_for_a_covering_flush_while_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let shard = Shard::open(
        dir.path(),
        "t",
        ShardConfig {
            durability: Durability::None,
            ..config()
        },
    )
    .unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let shard = shard.clone();
        tasks.push(tokio::spawn(async move {
            let durable = i % 2 == 0;
            let (b, h) = sized_batch(5, 0, 0, 2, &format!("a{i}"), 2000);
            let o = shard.append(vec![b], vec![h], durable).await.unwrap();
            // Read right when the ack arrives: the flush must already cover it.
            let flushed = shard.stats().flushed_offset.load(Ordering::Acquire);
            (durable, o.last_offset, flushed)
        }));
    }
    let mut durable_acks = 0;
    for t in tasks {
        let (durable, last, flushed) = t.await.unwrap();
        if durable {
            durable_acks += 1;
            assert!(
                flushed > last,
                "durable ack for offset {last} before a flush covered it (flushed to {flushed})"
            );
        }
    }
    assert_eq!(durable_acks, 100);
    let flushes = shard.stats().flushes.load(Ordering::Relaxed);
    assert!(
        (1..100).contains(&flushes),
        "{flushes} flushes for 100 durable appends"
    );
    shard.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p0_append_overtakes_queued_p3_appends() {
    let dir = tempfile::tempdir().unwrap();
    let shard = Shard::open(
        dir.path(),
        "t",
        ShardConfig {
            group_bytes_max: 256 * 1024,
            durability: Durability::None,
            ..config()
        },
    )
    .unwrap();
    // 400 P3 appends of 64 KiB (25 MiB) queued in one go, then one P0 append.
    let (p3, h3) = sized_batch(10, 0, 0, 1, "p3", 64 * 1024);
    let mut pending = Vec::new();
    for _ in 0..400 {
        pending.push(
            shard
                .enqueue(vec![p3.clone()], vec![h3], false)
                .await
                .unwrap(),
        );
    }
    let (p0, h0) = sized_batch(1, 0, 0, 1, "p0", 10);
    assert_eq!(shard.class_of(&[h0]), Class::P0);
    let p0_offset = shard
        .append(vec![p0], vec![h0], false)
        .await
        .unwrap()
        .base_offset;
    let mut after = 0;
    for rx in pending {
        if rx.await.unwrap().unwrap().base_offset > p0_offset {
            after += 1;
        }
    }
    // Groups are at most 256 KiB (4 appends), so the P0 append goes into one of the
    // first few groups after it arrives, ahead of most queued P3 appends.
    assert!(
        after >= 300,
        "only {after} of 400 P3 appends were written after P0"
    );
    let s = shard.stats();
    assert_eq!(s.appends[0].load(Ordering::Relaxed), 1);
    assert_eq!(s.appends[3].load(Ordering::Relaxed), 400);
    shard.close().await;
}

/// Batches of one append are checked against the producer table as it was before
/// the append, so a second batch of one lane is refused rather than written
/// unchecked (two copies of one batch would otherwise both be stored).
#[tokio::test]
async fn two_batches_of_one_lane_in_one_append_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let shard = Shard::open(dir.path(), "t", config()).unwrap();
    let (b0, h0) = batch(7, 0, 2, "a");
    assert_eq!(
        shard
            .append(vec![b0.clone(), b0.clone()], vec![h0, h0], true)
            .await,
        Err(AppendError::OutOfOrder {
            expected: 2,
            got: 0
        })
    );
    let (gap, hg) = batch(7, 5, 1, "gap");
    assert_eq!(
        shard
            .append(vec![b0.clone(), gap], vec![h0, hg], true)
            .await,
        Err(AppendError::OutOfOrder {
            expected: 2,
            got: 5
        })
    );
    assert_eq!(shard.reader().high_watermark(), 0, "nothing was written");
    // A lane's consecutive batches, and other producers' batches, are fine.
    let (b1, h1) = batch(7, 2, 2, "b");
    let (b2, h2) = batch(8, 0, 1, "c");
    let o = shard
        .append(vec![b0, b2, b1], vec![h0, h2, h1], true)
        .await
        .unwrap();
    assert_eq!((o.base_offset, o.last_offset), (0, 4));
    assert_eq!(append_batch(&shard, 7, 4, 1, "d", true).await, 5);
    shard.close().await;
}

/// Retention runs on the writer's schedule but deletes files on its own thread:
/// old segments go while the writer goes on taking appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_segments_while_appends_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let shard = Shard::open(
        dir.path(),
        "t",
        ShardConfig {
            log: LogConfig {
                segment_bytes: 8192,
                retention_ms: 0,
                retention_bytes: 32 * 1024,
                ..LogConfig::default()
            },
            durability: Durability::None,
            retention_check_ms: 100,
            ..config()
        },
    )
    .unwrap();
    let (b, h) = sized_batch(5, 0, 0, 1, "r", 1000);
    let mut appended = 0u64;
    // Bounded: retention checks every 100 ms; 3,000 rounds of 1 ms are far more.
    for _ in 0..3000 {
        for _ in 0..10 {
            shard.append(vec![b.clone()], vec![h], false).await.unwrap();
            appended += 1;
        }
        if shard.reader().log_start_offset() > 0 && appended >= 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let start = shard.reader().log_start_offset();
    assert!(
        start > 0,
        "retention removed nothing after {appended} appends"
    );
    // The writer still takes appends after retention ran.
    let o = shard.append(vec![b.clone()], vec![h], false).await.unwrap();
    assert_eq!(o.base_offset, appended);
    appended += 1;
    let segment_files = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_str().unwrap().ends_with(".log")
            })
            .count()
    };
    // What is left on disk is bounded by retention_bytes (+ the active segment
    // and one being prepared), not by what was appended. Appends may outrun a
    // 100 ms check on a loaded machine, so the bound holds once a check has run
    // after the last append: wait for that (bounded, 10 s).
    let bound = 32 * 1024 + 3 * 8192;
    for _ in 0..1000 {
        if segment_files() * 8192 <= bound {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shard.close().await;
    // Closing waits for running deletions and deletes nothing more itself.
    let logs = segment_files();
    assert!(
        logs * 8192 <= bound,
        "{logs} segment files after {appended} appends of 1 KiB"
    );
}

#[tokio::test]
async fn retries_are_recognised_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let shard = Shard::open(dir.path(), "t", config()).unwrap();
    let (b0, h0) = batch(7, 0, 2, "a");
    let (b1, h1) = batch(7, 2, 2, "b");
    let first = shard
        .append(vec![b0.clone()], vec![h0], true)
        .await
        .unwrap();
    shard.append(vec![b1], vec![h1], true).await.unwrap();
    let again = shard
        .append(vec![b0.clone()], vec![h0], true)
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(
        (again.base_offset, again.last_offset),
        (first.base_offset, first.last_offset)
    );
    let (gap, hg) = batch(7, 9, 1, "gap");
    assert_eq!(
        shard.append(vec![gap], vec![hg], true).await,
        Err(AppendError::OutOfOrder {
            expected: 4,
            got: 9
        })
    );
    shard.close().await;
    drop(shard);

    let shard = Shard::open(dir.path(), "t", config()).unwrap();
    let again = shard.append(vec![b0], vec![h0], true).await.unwrap();
    assert!(again.duplicate, "producer state is rebuilt from the log");
    assert_eq!(shard.reader().high_watermark(), 4);
    shard.close().await;
}

/// A cluster copy opens with its readers capped at 0 (until the primary's high-water
/// mark reaches it); its producer state must still come from the whole log, or a
/// producer's retry of a batch it already holds — after a restart, or once the copy is
/// promoted — is written twice.
#[tokio::test]
async fn retries_are_recognised_after_a_capped_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let shard = Shard::open(dir.path(), "t", config()).unwrap();
    let (b0, h0) = batch(7, 0, 2, "a");
    let (b1, h1) = batch(7, 2, 2, "b");
    shard.append(vec![b0], vec![h0], true).await.unwrap();
    shard
        .append(vec![b1.clone()], vec![h1], true)
        .await
        .unwrap();
    shard.close().await;
    drop(shard);

    let shard = Shard::open_capped(dir.path(), "t", config(), 0).unwrap();
    let again = shard.append(vec![b1], vec![h1], true).await.unwrap();
    assert!(
        again.duplicate,
        "a retry of the last batch after a capped reopen"
    );
    assert_eq!((again.base_offset, again.last_offset), (2, 3));
    shard.raise_visible(u64::MAX);
    assert_eq!(shard.reader().log_end_offset(), 4, "nothing written twice");
    shard.close().await;
}

/// Appends one at a time, `gap` apart, and returns the writer's (spun, parked) waits.
async fn idle_waits(spin_wait_us: u32, gap: Duration) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ShardConfig {
        durability: Durability::None,
        spin_wait_us,
        // Every append through the writer thread, whose waits are counted.
        in_place_bytes_max: 0,
        ..config()
    };
    let shard = Shard::open(dir.path(), "t", cfg).unwrap();
    for i in 0..20u64 {
        let (b, h) = batch(0, 0, 1, &format!("s{i}"));
        let o = shard.append(vec![b], vec![h], false).await.unwrap();
        assert_eq!(o.base_offset, i);
        tokio::time::sleep(gap).await;
    }
    // Control messages are still taken while the writer spins.
    shard.flush().await.unwrap();
    let s = shard.stats();
    let waits = (
        s.spin_takes.load(Ordering::Relaxed),
        s.parks.load(Ordering::Relaxed),
    );
    shard.close().await;
    waits
}

/// With `spin_wait_us`, a writer that runs out of work keeps looking instead of
/// parking its thread, and an append that comes within the spin is taken by it;
/// without, every wait parks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_writer_takes_appends_without_parking() {
    let (spun, parked) = idle_waits(10_000, Duration::from_micros(200)).await;
    // Each append after the first comes about a millisecond after the last was
    // answered, within the 10 ms spin. The spin backs off while the writer loses its
    // core to other threads (`crate::spin`; other tests run beside this one), so
    // not every wait ends spinning, but the first spins get the whole budget.
    assert!(spun >= 1, "spun {spun}, parked {parked}");
    let (spun, parked) = idle_waits(0, Duration::from_micros(200)).await;
    assert_eq!(spun, 0);
    assert!(parked >= 20, "parked {parked}");
}

/// After a reshard sealed the layout a produce was routed under, the writer writes
/// nothing of it, but a retry of batches it stored before (the first answer lost) gets
/// their offsets, under a stale epoch or as an append already found to have moved.
#[tokio::test]
async fn a_retry_routed_under_an_earlier_layout_gets_its_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let shard = Shard::open(dir.path(), "t", config()).unwrap();
    let enqueue = |b: &Bytes, h: BatchHeader, layout| {
        let (b, shard) = (b.clone(), &shard);
        async move {
            shard
                .enqueue_in_layout(vec![b], vec![h], true, layout)
                .await
                .unwrap()
                .await
                .unwrap()
        }
    };
    let (b0, h0) = batch(7, 0, 2, "a");
    let (b1, h1) = batch(7, 2, 3, "b");
    let first = enqueue(&b0, h0, Layout::Checked(0)).await.unwrap();
    let second = enqueue(&b1, h1, Layout::Checked(0)).await.unwrap();
    assert_eq!(shard.seal_layout(1).await, Ok(5));

    for layout in [Layout::Checked(0), Layout::Moved] {
        let again = enqueue(&b1, h1, layout).await.unwrap();
        assert!(again.duplicate, "{layout:?}");
        assert_eq!(
            (again.base_offset, again.last_offset),
            (second.base_offset, second.last_offset)
        );
    }
    // Two retries in one append: the first one's start, the last one's end.
    let both = shard
        .enqueue_in_layout(vec![b0, b1.clone()], vec![h0, h1], true, Layout::Moved)
        .await
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (both.base_offset, both.last_offset, both.duplicate),
        (first.base_offset, second.last_offset, true)
    );
    // New records routed under the old layout are refused, also beside a retry.
    let (b2, h2) = batch(7, 5, 1, "c");
    for layout in [Layout::Checked(0), Layout::Moved] {
        assert_eq!(
            enqueue(&b2, h2, layout).await,
            Err(AppendError::LayoutChanged { current: 1 })
        );
    }
    let mixed = shard
        .enqueue_in_layout(
            vec![b1.clone(), b2.clone()],
            vec![h1, h2],
            true,
            Layout::Moved,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(mixed, Err(AppendError::LayoutChanged { current: 1 }));
    // Nothing of them was written; under the new epoch the same batch is.
    assert_eq!(shard.reader().high_watermark(), 5);
    let written = enqueue(&b2, h2, Layout::Checked(1)).await.unwrap();
    assert_eq!((written.base_offset, written.duplicate), (5, false));
    // Once the producer's lane moved to a newer epoch, a batch of the old one is
    // refused as fenced, as on any path: LAYOUT_CHANGED would say it is not stored.
    let mut next = BatchBuilder::new().producer(7, 1, 0);
    next.push(&NewRecord::value(1, &b"d"[..])).unwrap();
    let next = next.finish().unwrap();
    let hn = BatchHeader::read(&next).unwrap();
    enqueue(&next, hn, Layout::Checked(1)).await.unwrap();
    for layout in [Layout::Checked(0), Layout::Moved] {
        assert_eq!(
            enqueue(&b1, h1, layout).await,
            Err(AppendError::Fenced { current_epoch: 1 })
        );
    }
    shard.close().await;
}

/// Small appends to an idle shard are written in place, on the caller's thread, and
/// the interval flush still covers them: the first one wakes the parked writer, whose
/// wait was not armed for a flush (without the wake-up nothing would be flushed until
/// the retention check, 30 s away).
#[tokio::test]
async fn appends_written_in_place_are_covered_by_the_interval_flush() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ShardConfig {
        durability: Durability::Interval,
        flush_interval_ms: 20,
        ..config()
    };
    let shard = Shard::open(dir.path(), "t", cfg).unwrap();
    // Let the writer run out of work and park.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..5u64 {
        assert_eq!(
            append_batch(&shard, 0, 0, 1, &format!("p{i}"), false).await,
            i
        );
    }
    // The first at least: the wake-up it sends may have the writer hold its state
    // for a turn while a later one comes, which then queues.
    assert!(shard.stats().in_place.load(Ordering::Relaxed) >= 1);
    assert_eq!(shard.reader().high_watermark(), 5);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while shard.stats().flushed_offset.load(Ordering::Acquire) < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "the in-place appends were never flushed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shard.close().await;
}

/// An append queued for the writer is counted until written, so a later append of
/// the same caller queues behind it instead of being written first in place; once
/// the writer has written it the count is back at 0 and appends go in place again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Held on purpose across the enqueue, which only tries the lock.
#[allow(clippy::await_holding_lock)]
async fn an_append_never_overtakes_one_queued_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ShardConfig {
        durability: Durability::Interval,
        ..config()
    };
    let shard = Shard::open(dir.path(), "t", cfg).unwrap();
    let held = shard.hold_writer();
    // The writer's state is held (as while it writes a group): this one queues.
    let (b, h) = batch(0, 0, 1, "first");
    let first = shard.enqueue(vec![b], vec![h], false).await.unwrap();
    assert_eq!(shard.stats().pending.load(Ordering::Acquire), 1);
    drop(held);
    let (b, h) = batch(0, 0, 1, "second");
    let second = shard.append(vec![b], vec![h], false).await.unwrap();
    assert_eq!(first.await.unwrap().unwrap().base_offset, 0);
    assert_eq!(
        second.base_offset, 1,
        "the later append overtook the queued one"
    );
    assert_eq!(shard.stats().pending.load(Ordering::Acquire), 0);
    // Once the writer has gone back to waiting (not holding its state).
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = shard.stats().in_place.load(Ordering::Relaxed);
    assert_eq!(append_batch(&shard, 0, 0, 1, "third", false).await, 2);
    assert_eq!(shard.stats().in_place.load(Ordering::Relaxed), before + 1);
    shard.close().await;
}

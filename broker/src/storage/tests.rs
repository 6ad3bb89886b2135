//! Unit tests of the storage engine: round trips, read semantics, recovery from a
//! damaged tail (property test), corruption in closed segments, retention.

use std::path::Path;

use bytes::Bytes;
use proptest::prelude::*;
use weir_protocol::batch::{self, BatchBuilder, NewRecord};

use super::*;

/// A valid batch of `records` records whose values are derived from `seed`.
fn make_batch(seed: u64, records: u32, value_len: usize, ts_ms: i64) -> Bytes {
    let mut b = BatchBuilder::with_capacity(64 + records as usize * (value_len + 18));
    for r in 0..records {
        let v: Vec<u8> = (0..value_len)
            .map(|i| {
                (seed
                    .wrapping_mul(31)
                    .wrapping_add(u64::from(r) * 7 + i as u64)) as u8
            })
            .collect();
        b.push(&NewRecord::value(ts_ms + i64::from(r), &v)).unwrap();
    }
    b.finish().unwrap()
}

fn small_config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 256,
        retention_ms: 0,
        retention_bytes: 0,
        // Small steps, so appends grow the file often.
        preallocate_bytes: 16 * 1024,
        at_rest: None,
        write_behind_bytes: 0,
        write_behind_max_bytes_per_sec: 0,
        // Odd-sized calls, so appends are split, batches and stamps cut mid-way.
        write_call_bytes: 3001,
        // A small window, so appends drop what readers read back.
        page_cache_window_bytes: 48 * 1024,
    }
}

/// The batch as stored: `b` with its base offset stamped.
fn stamped(b: &Bytes, base: u64) -> Vec<u8> {
    let mut v = b.to_vec();
    batch::set_base_offset(&mut v, base);
    v
}

/// Every batch of the log from `from`, split, via repeated reads.
fn read_all(r: &LogReader, from: u64) -> Result<Vec<Bytes>, StorageError> {
    let mut out = Vec::new();
    let mut off = from;
    for _ in 0..1_000_000 {
        let chunks = r.read(off, 64 * 1024)?;
        if chunks.is_empty() {
            return Ok(out);
        }
        for c in chunks {
            for b in batch::split(c) {
                let b = b.expect("served batches verify");
                let h = batch::verify(&b).unwrap();
                off = h.last_offset() + 1;
                out.push(b);
            }
        }
    }
    panic!("read_all did not terminate");
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .filter(|p| !p.file_name().unwrap().to_str().unwrap().starts_with('.'))
        .collect();
    v.sort();
    v
}

/// `Log::appends_in_place` says yes only for appends that need no file work: every
/// append it allowed left the active segment and its allocation as they were, and
/// every append that grew the file or rolled was one it refused.
#[test]
fn appends_in_place_are_exactly_those_that_neither_allocate_nor_roll() {
    let dir = tempfile::tempdir().unwrap();
    // 64 KiB segments grown in 16 KiB steps: many grows and rolls.
    let mut log = Log::open(dir.path(), small_config(64 * 1024)).unwrap();
    let (mut allowed, mut refused) = (0, 0);
    for i in 0..400u64 {
        let b = make_batch(i, 1 + (i % 4) as u32, 50 + (i as usize * 37) % 900, 1);
        let records = u64::from(batch::BatchHeader::read(&b).unwrap().record_count);
        let in_place = log.appends_in_place(1, b.len() as u64, records);
        let (base, allocated) = (log.active.seg.base_offset, log.active.allocated);
        log.append(std::slice::from_ref(&b)).unwrap();
        let file_work = log.active.seg.base_offset != base || log.active.allocated != allocated;
        assert_eq!(
            in_place, !file_work,
            "append {i}: in place {in_place}, file work {file_work}"
        );
        if in_place {
            allowed += 1;
        } else {
            refused += 1;
        }
    }
    assert!(
        allowed > 100 && refused > 10,
        "allowed {allowed}, refused {refused}"
    );
}

/// A roll keeps the map the segment was read through (no unmapping on the writer at a
/// roll; see `close_segment`); what was read before the roll stays valid, and the
/// closed segment reads the same afterwards.
#[test]
fn a_roll_keeps_the_closed_segments_map() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config(8192)).unwrap();
    let first = make_batch(0, 3, 100, 1);
    log.append(std::slice::from_ref(&first)).unwrap();
    let r = log.reader();
    let held = r.read(0, 1 << 20).unwrap();
    let written_through = std::sync::Arc::clone(&log.active.seg.log);
    let base = log.active.seg.base_offset;
    let mut i = 1;
    while log.active.seg.base_offset == base {
        log.append(&[make_batch(i, 2, 300, 1)]).unwrap();
        i += 1;
        assert!(i < 1000, "no roll");
    }
    let segments = log.shared.snapshot();
    let closed = &segments[0];
    assert!(closed.closed);
    assert!(
        std::sync::Arc::ptr_eq(&closed.log, &written_through),
        "the closed segment was mapped again"
    );
    let want = stamped(&first, 0);
    assert!(held[0].as_ref() == want.as_slice(), "read before the roll");
    let again = r.read(0, 1 << 20).unwrap();
    assert!(again[0].starts_with(&want), "read after the roll");
    assert_eq!(read_all(&r, 0).unwrap().len() as u64, i);
}

#[test]
fn append_then_read_back_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config(8192)).unwrap();
    let mut expected = Vec::new();
    for i in 0..200u64 {
        let b = make_batch(
            i,
            1 + (i % 5) as u32,
            10 + (i as usize * 13) % 300,
            1000 + i as i64,
        );
        let info = log.append(std::slice::from_ref(&b)).unwrap();
        let h = batch::BatchHeader::read(&b).unwrap();
        assert_eq!(
            info.last_offset - info.base_offset + 1,
            u64::from(h.record_count)
        );
        expected.push(stamped(&b, info.base_offset));
    }
    assert!(
        segment_files(dir.path()).len() > 3,
        "test must roll segments"
    );
    let r = log.reader();
    let got = read_all(&r, 0).unwrap();
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g.as_ref(), e.as_slice());
    }
    // Reading from an offset in the middle of a batch starts with that batch.
    let h = batch::verify(&expected[50]).unwrap();
    let first = r.read(h.last_offset(), 1).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].as_ref(), expected[50].as_slice());
    // Clean reopen keeps everything and continues at the same offset.
    let hwm = log.high_watermark();
    drop(r);
    drop(log);
    let mut log = Log::open(dir.path(), small_config(8192)).unwrap();
    assert_eq!(log.high_watermark(), hwm);
    let got = read_all(&log.reader(), 0).unwrap();
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g.as_ref(), e.as_slice());
    }
    let info = log.append(&[make_batch(999, 2, 5, 5)]).unwrap();
    assert_eq!(info.base_offset, hwm);
}

/// A background page-cache job's range is covered exactly, in order, by calls of at
/// most `PAGE_CALL_BYTES`.
#[test]
fn page_calls_cover_the_range_in_bounded_pieces() {
    for (from, to) in [
        (0, 0),
        (5, 6),
        (4096, 3 * segment::PAGE_CALL_BYTES + 77),
        (0, 1 << 20),
    ] {
        let mut pieces = Vec::new();
        segment::in_page_calls(from, to, |a, b| {
            pieces.push((a, b));
            true
        });
        let mut at = from;
        for &(a, b) in &pieces {
            assert_eq!(a, at, "pieces follow each other");
            assert!(b > a && b - a <= segment::PAGE_CALL_BYTES, "piece {a}..{b}");
            assert!(
                b == to || b % segment::PAGE_CALL_BYTES == 0,
                "piece {a}..{b} ends on a boundary"
            );
            at = b;
        }
        assert_eq!(at, to.max(from), "{from}..{to} covered: {pieces:?}");
    }
    // A false from the call stops the job.
    let mut calls = 0;
    segment::in_page_calls(0, 4 * segment::PAGE_CALL_BYTES, |_, _| {
        calls += 1;
        false
    });
    assert_eq!(calls, 1);
}

/// Write-behind starts write-back every `write_behind_bytes` of the active file and
/// again from the start of a new segment; the data reads back the same either way.
#[test]
fn write_behind_kicks_every_step_and_restarts_after_a_roll() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        write_behind_bytes: 64 * 1024,
        ..small_config(1 << 20)
    };
    let mut log = Log::open(dir.path(), config.clone()).unwrap();
    let mut expected = Vec::new();
    let mut kicks = Vec::new();
    for i in 0..100u64 {
        let b = make_batch(i, 4, 2000, 1000);
        let info = log.append(std::slice::from_ref(&b)).unwrap();
        expected.push(stamped(&b, info.base_offset));
        if kicks.last() != Some(&log.write_behind_from) {
            kicks.push(log.write_behind_from);
        }
        // Each start runs on a storage worker; let it end so none is deferred.
        if let Some(job) = log.write_behind_job.take() {
            job.join("write-behind").unwrap();
        }
    }
    // ~800 KiB in a 1 MiB segment: about a dozen kicks, each at least a step apart.
    assert!(kicks.len() >= 10, "kicks at {kicks:?}");
    for w in kicks.windows(2) {
        assert!(w[1] >= w[0] + 64 * 1024, "kicks at {kicks:?}");
    }
    assert!(log.write_behind_from <= log.active.pos);
    // Past the roll the new segment starts again from its beginning.
    for i in 100..200u64 {
        let b = make_batch(i, 4, 2000, 1000);
        let info = log.append(std::slice::from_ref(&b)).unwrap();
        expected.push(stamped(&b, info.base_offset));
    }
    assert!(segment_files(dir.path()).len() > 1, "test must roll");
    assert!(log.write_behind_from <= log.active.pos);
    log.flush().unwrap();
    let got = read_all(&log.reader(), 0).unwrap();
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g.as_ref(), e.as_slice());
    }
    // Off by default: no kick is ever recorded.
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config(1 << 20)).unwrap();
    for i in 0..50u64 {
        log.append(&[make_batch(i, 4, 2000, 1000)]).unwrap();
    }
    assert_eq!(log.write_behind_from, 0);
}

/// While the process appends faster than `write_behind_max_bytes_per_sec`, write-behind
/// starts no write-back and lets the bytes go by (the flush writes them); at a rate
/// under the limit it starts again.
#[test]
fn write_behind_lets_a_burst_go_by() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        write_behind_bytes: 64 * 1024,
        // Any burst is over one byte per second.
        write_behind_max_bytes_per_sec: 1,
        ..small_config(1 << 20)
    };
    let mut log = Log::open(dir.path(), config).unwrap();
    let mut passed = Vec::new();
    for i in 0..40u64 {
        log.append(&[make_batch(i, 4, 2000, 1000)]).unwrap();
        assert!(log.write_behind_job.is_none(), "no start in a burst");
        if passed.last() != Some(&log.write_behind_from) {
            passed.push(log.write_behind_from);
        }
    }
    // The decision points moved on a step at a time: nothing is left to start later.
    assert!(passed.len() >= 4, "passed at {passed:?}");
    assert!(log.active.pos - log.write_behind_from < 64 * 1024);
    let (started, let_go) = log.reader().write_behind_bytes();
    assert_eq!(
        (started, let_go),
        (0, log.write_behind_from),
        "counted as let go"
    );
    // The same appends under a limit they stay below start write-back.
    log.config.write_behind_max_bytes_per_sec = u64::MAX;
    let from = log.write_behind_from;
    for i in 40..80u64 {
        log.append(&[make_batch(i, 4, 2000, 1000)]).unwrap();
        if log.write_behind_job.is_some() {
            break;
        }
    }
    assert!(log.write_behind_job.is_some(), "a start under the limit");
    assert!(log.write_behind_from > from);
    assert_eq!(
        log.reader().write_behind_bytes(),
        (log.write_behind_from - from, from),
        "counted as started"
    );
}

/// A write-back start still running defers the next one, which then covers every
/// byte appended meanwhile: the writer never waits for one, and never starts two.
#[test]
fn write_behind_waits_for_the_running_start_and_then_covers_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        write_behind_bytes: 64 * 1024,
        ..small_config(1 << 20)
    };
    let mut log = Log::open(dir.path(), config).unwrap();
    // A start that is still running (a slow disk's).
    let (job, release) = workers::Task::held();
    log.write_behind_job = Some(job);
    for i in 0..20u64 {
        log.append(&[make_batch(i, 4, 2000, 1000)]).unwrap();
    }
    assert!(log.active.pos >= 128 * 1024, "two steps appended");
    assert_eq!(log.write_behind_from, 0, "no start while one runs");
    release.send(Ok(())).unwrap();
    log.append(&[make_batch(20, 4, 2000, 1000)]).unwrap();
    assert_eq!(
        log.write_behind_from, log.active.pos,
        "the next start covers the whole gap"
    );
    assert!(log.write_behind_job.is_some());
}

/// One `append` of many batches is written with few vectored writes: groups that
/// cross segment rolls and groups of more slices than one `pwritev` takes (2 per batch,
/// 1,024 per call) must come back byte for byte, with dense offsets, also after reopen.
#[test]
fn grouped_appends_cross_rolls_and_the_iovec_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config(64 * 1024)).unwrap();
    let mut expected = Vec::new();
    let mut seed = 0u64;
    for group in [1usize, 7, 40, 700, 3, 1500, 2] {
        let batches: Vec<Bytes> = (0..group)
            .map(|i| {
                seed += 1;
                make_batch(seed, 1 + (i % 3) as u32, 5 + (i * 7) % 90, seed as i64)
            })
            .collect();
        let info = log.append(&batches).unwrap();
        let mut next = info.base_offset;
        for b in &batches {
            expected.push(stamped(b, next));
            next += u64::from(batch::BatchHeader::read(b).unwrap().record_count);
        }
        assert_eq!(next - 1, info.last_offset);
    }
    assert!(
        segment_files(dir.path()).len() > 6,
        "test must roll segments"
    );
    let check = |log: &Log| {
        let got = read_all(&log.reader(), 0).unwrap();
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(g.as_ref(), e.as_slice());
        }
    };
    check(&log);
    drop(log);
    let log = Log::open(dir.path(), small_config(64 * 1024)).unwrap();
    check(&log);
}

#[test]
fn read_bounds_and_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config(1 << 20)).unwrap();
    let r = log.reader();
    assert!(
        r.read(0, 100).unwrap().is_empty(),
        "empty log reads nothing at hwm"
    );
    let batches: Vec<Bytes> = (0..10).map(|i| make_batch(i, 3, 100, 0)).collect();
    let info = log.append(&batches).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (0, 29));
    assert_eq!(r.high_watermark(), 30);
    assert!(r.read(30, 100).unwrap().is_empty());
    assert!(matches!(
        r.read(31, 100),
        Err(StorageError::OffsetOutOfRange {
            requested: 31,
            high_watermark: 30,
            ..
        })
    ));
    // max_bytes smaller than one batch still returns exactly one whole batch.
    let one = r.read(4, 1).unwrap();
    assert_eq!(one.concat(), stamped(&batches[1], 3));
    // max_bytes of two and a half batches returns two.
    let two = r.read(0, batches[0].len() * 5 / 2).unwrap();
    assert_eq!(two.concat().len(), batches[0].len() * 2);
    // Invalid framing is refused before anything is written.
    let mut bad = batches[0].to_vec();
    bad.push(0);
    let err = log
        .append(&[batches[0].clone(), Bytes::from(bad)])
        .unwrap_err();
    assert!(
        matches!(err, StorageError::InvalidBatch { index: 1, .. }),
        "{err}"
    );
    assert_eq!(log.high_watermark(), 30);
}

#[test]
fn second_writer_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let _log = Log::open(dir.path(), small_config(1 << 16)).unwrap();
    assert!(matches!(
        Log::open(dir.path(), small_config(1 << 16)),
        Err(StorageError::Locked { .. })
    ));
}

#[test]
fn batch_larger_than_a_segment_gets_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config(4096)).unwrap();
    let small = make_batch(1, 1, 10, 0);
    let big = make_batch(2, 4, 3000, 0);
    assert!(big.len() > 4096);
    log.append(&[small.clone(), big.clone(), small.clone()])
        .unwrap();
    log.flush().unwrap();
    let got = read_all(&log.reader(), 0).unwrap();
    assert_eq!(got[1].as_ref(), stamped(&big, 1).as_slice());
    drop(log);
    let log = Log::open(dir.path(), small_config(4096)).unwrap();
    assert_eq!(read_all(&log.reader(), 0).unwrap().len(), 3);
    assert_eq!(log.high_watermark(), 6);
}

#[test]
fn offset_for_timestamp_finds_first_newer_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config(4096)).unwrap();
    for i in 0..100i64 {
        log.append(&[make_batch(i as u64, 2, 100, i * 10)]).unwrap();
    }
    let r = log.reader();
    // Batch i holds offsets 2i, 2i+1 and timestamps 10i, 10i+1; the answer is the
    // record, not its batch's base offset and newest timestamp.
    assert_eq!(r.offset_for_timestamp(0).unwrap(), Some((0, 0)));
    assert_eq!(r.offset_for_timestamp(505).unwrap(), Some((102, 510)));
    assert_eq!(r.offset_for_timestamp(511).unwrap(), Some((103, 511)));
    assert_eq!(r.offset_for_timestamp(512).unwrap(), Some((104, 520)));
    assert_eq!(r.offset_for_timestamp(10_000).unwrap(), None);
    drop(r);
    drop(log);
    let log = Log::open(dir.path(), small_config(4096)).unwrap();
    assert_eq!(
        log.reader().offset_for_timestamp(511).unwrap(),
        Some((103, 511))
    );
}

#[test]
fn bit_flip_in_closed_segment_is_a_named_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config(4096)).unwrap();
    for i in 0..40u64 {
        log.append(&[make_batch(i, 1, 200, 0)]).unwrap();
    }
    log.flush().unwrap();
    drop(log);
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    // Flip one bit in the middle of the first (closed) segment's records.
    let target = &files[0];
    let mut bytes = std::fs::read(target).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x04;
    std::fs::write(target, &bytes).unwrap();
    let log = Log::open(dir.path(), small_config(4096)).unwrap();
    let r = log.reader();
    let mut corrupt_seen = 0;
    for off in 0..log.high_watermark() {
        match r.read(off, 1) {
            Ok(v) => {
                for c in v {
                    for b in batch::split(c) {
                        b.expect("served data always verifies");
                    }
                }
            }
            Err(StorageError::Corrupt { path, .. }) => {
                assert_eq!(&path, target);
                corrupt_seen += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(corrupt_seen, 1, "exactly the damaged batch is refused");
    // The later segments are still there: nothing was cut.
    assert_eq!(log.high_watermark(), 40);
}

/// Issue 22 §2: a damaged base-offset field (outside the CRC) in the middle of a
/// segment. A read from 0 must serve every intact batch before it, a read at the
/// damaged batch must name its offset, and a read past it must work.
#[test]
fn damage_in_the_middle_hides_none_of_the_intact_batches_around_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config(1 << 20)).unwrap();
    let batches: Vec<Bytes> = (0..30u64).map(|i| make_batch(i, 1, 100, 0)).collect();
    for b in &batches {
        log.append(std::slice::from_ref(b)).unwrap();
    }
    log.flush().unwrap();
    drop(log);
    // The 11th batch (offset 10) starts after ten whole batches.
    let files = segment_files(dir.path());
    let at: usize = batches[..10].iter().map(|b| b.len()).sum();
    let mut bytes = std::fs::read(&files[0]).unwrap();
    // Base offset is the first field of the batch header: make it 999.
    bytes[at..at + 8].copy_from_slice(&999u64.to_le_bytes());
    std::fs::write(&files[0], &bytes).unwrap();
    let log = Log::open(dir.path(), small_config(1 << 20)).unwrap();
    assert_eq!(
        log.high_watermark(),
        30,
        "recovery cut nothing of a closed range"
    );
    let r = log.reader();
    // From 0, in one big read: the ten intact batches before the damage.
    let served: Vec<Bytes> = r
        .read(0, 1 << 20)
        .expect("intact batches are served")
        .into_iter()
        .flat_map(|c| batch::split(c).map(|b| b.unwrap()).collect::<Vec<_>>())
        .collect();
    assert_eq!(served.len(), 10);
    for (i, b) in served.iter().enumerate() {
        assert_eq!(&b[..], &stamped(&batches[i], i as u64)[..]);
    }
    // At the damage: a named error that says which offset.
    match r.read(10, 1 << 20) {
        Err(StorageError::Corrupt { detail, .. }) => {
            assert!(detail.contains("offset 10"), "{detail}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Past it: the rest is all there.
    let rest = read_all(&r, 11).unwrap();
    assert_eq!(rest.len(), 19);
}

/// `damage_end` steps over a damaged batch by its header: the first offset after it
/// when the header holds (a payload byte flipped, so the CRC fails); when the header's
/// length cannot be trusted, the segment's next index point (where reads find batches
/// again), or the next segment's start when no index point follows.
#[test]
fn damage_end_steps_over_a_damaged_batch() {
    let dir = tempfile::tempdir().unwrap();
    // Segments of 40 KB, batches of 4 records (offsets 4i..4i+4) of ~4 KB, an index
    // point at every batch (interval 256 bytes).
    let mut log = Log::open(dir.path(), small_config(40_000)).unwrap();
    let batches: Vec<Bytes> = (0..20u64).map(|i| make_batch(i, 4, 1000, 0)).collect();
    for b in &batches {
        log.append(std::slice::from_ref(b)).unwrap();
    }
    log.flush().unwrap();
    let files = segment_files(dir.path());
    assert!(files.len() >= 2, "{files:?}");
    drop(log);
    let name = |p: &std::path::PathBuf| -> u64 {
        p.file_stem().unwrap().to_str().unwrap().parse().unwrap()
    };
    let second_base = name(&files[1]);
    assert!(second_base > 24, "the damage below is in the first segment");
    let at = |i: usize| -> usize { batches[..i].iter().map(|b| b.len()).sum() };
    let mut bytes = std::fs::read(&files[0]).unwrap();
    // Batch 2 (offsets 8..12): a payload byte flipped.
    bytes[at(2) + batches[2].len() - 5] ^= 0x20;
    // Batch 4 (offsets 16..20) and the segment's last batch: lengths that run past
    // the segment.
    let last = (second_base / 4 - 1) as usize;
    for i in [4, last] {
        bytes[at(i) + 8..at(i) + 12].copy_from_slice(&u32::MAX.to_le_bytes());
    }
    std::fs::write(&files[0], &bytes).unwrap();
    let log = Log::open(dir.path(), small_config(40_000)).unwrap();
    let r = log.reader();
    assert!(matches!(r.read(8, 1), Err(StorageError::Corrupt { .. })));
    for o in 8..12 {
        assert_eq!(r.damage_end(o), 12, "from offset {o}");
    }
    assert_eq!(r.read(12, 1).unwrap().len(), 1, "readable after the damage");
    assert!(matches!(r.read(16, 1), Err(StorageError::Corrupt { .. })));
    // Its length cannot be trusted: the damage reaches the next index point.
    assert_eq!(r.damage_end(16), 20);
    assert_eq!(r.read(20, 1).unwrap().len(), 1);
    // No index point after it: the damage reaches the next segment.
    let last_offset = last as u64 * 4;
    assert!(matches!(
        r.read(last_offset, 1),
        Err(StorageError::Corrupt { .. })
    ));
    assert_eq!(r.damage_end(last_offset), second_base);
    assert_eq!(r.read(second_base, 1).unwrap().len(), 1);
}

#[test]
fn retention_by_size_keeps_bytes_alive_for_readers() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(4096);
    cfg.retention_bytes = 10_000;
    let mut log = Log::open(dir.path(), cfg).unwrap();
    let first = make_batch(0, 1, 500, 0);
    log.append(std::slice::from_ref(&first)).unwrap();
    let r = log.reader();
    let held = r.read(0, 1).unwrap();
    for i in 1..100u64 {
        log.append(&[make_batch(i, 1, 500, 0)]).unwrap();
    }
    let before = log.size_bytes();
    let deleted = log.apply_retention(0).unwrap();
    assert!(deleted > 0);
    // The files are deleted on another thread; the writer did not wait for it.
    assert_eq!(log.deletions.len(), 1);
    assert_eq!(log.wait_for_retention().unwrap(), deleted);
    assert!(log.size_bytes() < before);
    assert!(log.size_bytes() <= 10_000 + 4096, "{}", log.size_bytes());
    assert!(log.log_start_offset() > 0);
    assert!(!dir.path().join("00000000000000000000.log").exists());
    assert!(matches!(
        r.read(0, 1),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    // Bytes taken before the deletion still read correctly.
    assert_eq!(held.concat(), stamped(&first, 0));
    // The rest reads from the new start, and the start survives a reopen.
    let start = log.log_start_offset();
    assert_eq!(read_all(&r, start).unwrap().len() as u64, 100 - start);
    drop(r);
    drop(log);
    let log = Log::open(dir.path(), small_config(4096)).unwrap();
    assert_eq!(log.log_start_offset(), start);
}

#[test]
fn retention_by_age_spares_active_and_young_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(4096);
    cfg.retention_ms = 1_000;
    let mut log = Log::open(dir.path(), cfg).unwrap();
    // Old batches (ts 0..) then young ones (ts 1_000_000..).
    for i in 0..30i64 {
        log.append(&[make_batch(i as u64, 1, 500, i)]).unwrap();
    }
    for i in 0..30i64 {
        log.append(&[make_batch(i as u64, 1, 500, 1_000_000 + i)])
            .unwrap();
    }
    let segs_before = segment_files(dir.path()).len();
    let deleted = log.apply_retention(1_000_500).unwrap();
    assert!(deleted > 0 && deleted < segs_before);
    // Everything left is young or shares a segment with young data.
    let r = log.reader();
    let left = read_all(&r, log.log_start_offset()).unwrap();
    assert!(left.len() >= 30 && left.len() < 60, "{}", left.len());
    // Far in the future everything closed goes, but never the active segment (a
    // pass is skipped while the previous deletion still runs: let it finish first).
    log.wait_for_retention().unwrap();
    log.apply_retention(i64::MAX).unwrap();
    log.wait_for_retention().unwrap();
    assert_eq!(segment_files(dir.path()).len(), 1);
    assert!(log.reader().read(log.log_start_offset(), 1).is_ok());
}

#[test]
fn readers_on_other_threads_see_only_whole_published_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config(16 * 1024)).unwrap();
    let r = log.reader();
    let reader = std::thread::spawn(move || {
        let mut off = 0u64;
        for _ in 0..50_000_000 {
            if off >= 2000 {
                break;
            }
            let chunks = r.read(off, 8192).unwrap();
            if chunks.is_empty() {
                std::thread::yield_now();
            }
            for c in chunks {
                for b in batch::split(c) {
                    let h = batch::verify(&b.unwrap()).unwrap();
                    assert_eq!(h.base_offset, off);
                    off = h.last_offset() + 1;
                }
            }
        }
        off
    });
    for i in 0..1000u64 {
        log.append(&[make_batch(i, 2, 50, 0)]).unwrap();
    }
    assert_eq!(reader.join().unwrap(), 2000);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Damage the log's tail (cut, or overwrite with garbage from a random byte): after
    /// reopen, every batch before the damage is intact, nothing after it is served, and
    /// appends continue right after the last intact batch.
    #[test]
    fn damaged_tail_recovers_to_last_intact_batch(
        sizes in proptest::collection::vec((1u32..5, 0usize..400), 1..60),
        cut_frac in 0.0f64..1.0,
        garbage in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_config(4096);
        let mut log = Log::open(dir.path(), cfg.clone()).unwrap();
        // (segment file position is tracked through the reader's chunks)
        let mut stored: Vec<(u64, Vec<u8>)> = Vec::new();
        for (i, &(n, len)) in sizes.iter().enumerate() {
            let b = make_batch(seed ^ i as u64, n, len, i as i64);
            let info = log.append(std::slice::from_ref(&b)).unwrap();
            stored.push((info.base_offset, stamped(&b, info.base_offset)));
        }
        log.flush().unwrap();
        drop(log);
        // Damage the last segment at a random byte of its written part.
        let files = segment_files(dir.path());
        let last = files.last().unwrap();
        let base: u64 = last.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        let mut bytes = std::fs::read(last).unwrap();
        // Written length = sum of the batches in this segment.
        let in_last: Vec<&(u64, Vec<u8>)> = stored.iter().filter(|(o, _)| *o >= base).collect();
        let written: usize = in_last.iter().map(|(_, b)| b.len()).sum();
        let at = ((written as f64) * cut_frac) as usize;
        if garbage {
            let mut x = seed | 1;
            for byte in &mut bytes[at..written] {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                *byte ^= (x as u8) | 1; // always changes the byte
            }
            std::fs::write(last, &bytes).unwrap();
        } else {
            std::fs::OpenOptions::new().write(true).open(last).unwrap().set_len(at as u64).unwrap();
        }
        // Expected survivors: all batches before `base`, and those in the last segment
        // that end at or before `at`.
        let mut pos = 0usize;
        let mut expected: Vec<&(u64, Vec<u8>)> = stored.iter().filter(|(o, _)| *o < base).collect();
        for e in &in_last {
            if pos + e.1.len() <= at {
                expected.push(e);
            }
            pos += e.1.len();
        }
        let mut log = Log::open(dir.path(), cfg).unwrap();
        let got = read_all(&log.reader(), 0).unwrap();
        prop_assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(&expected) {
            prop_assert_eq!(g.as_ref(), e.1.as_slice());
        }
        let next = expected.last().map_or(0, |e| batch::verify(&e.1).unwrap().last_offset() + 1);
        prop_assert_eq!(log.high_watermark(), next);
        let info = log.append(&[make_batch(7, 1, 10, 0)]).unwrap();
        prop_assert_eq!(info.base_offset, next);
        log.flush().unwrap();
        drop(log);
        let log = Log::open(dir.path(), small_config(4096)).unwrap();
        prop_assert_eq!(log.high_watermark(), next + 1);
        prop_assert_eq!(read_all(&log.reader(), 0).unwrap().len(), expected.len() + 1);
    }
}

#[test]
fn background_flushes_run_beside_appends_across_rolls_and_reopen_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config(64 * 1024)).unwrap();
    let mut expected = Vec::new();
    let mut done = Vec::new();
    for i in 0..200u64 {
        let b = make_batch(i, 3, 500, 1_000 + i as i64);
        expected.push(b.clone());
        log.append(&[b]).unwrap();
        if i % 7 == 0 {
            // Starts one (after the previous one, if it still runs).
            let (tx, rx) = std::sync::mpsc::channel();
            log.flush_in_background(move |r| tx.send(r).unwrap())
                .unwrap();
            done.push(rx);
        }
    }
    // A synchronous flush waits for the background one before it returns.
    log.flush().unwrap();
    assert!(log.background_flush.is_none());
    // Every flush reported its outcome exactly once.
    assert_eq!(done.len(), 29);
    for rx in done {
        assert_eq!(rx.try_recv(), Ok(Ok(())));
        assert!(rx.try_recv().is_err());
    }
    assert_eq!(log.active.flushed_pos, log.active.pos);
    let hwm = log.high_watermark();
    drop(log);
    let log = Log::open(dir.path(), small_config(64 * 1024)).unwrap();
    assert_eq!(log.high_watermark(), hwm);
    let got = read_all(&log.reader(), 0).unwrap();
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(&g[20..], &e[20..], "batch {i}");
    }
}

#[test]
fn a_log_keeps_working_when_no_background_thread_can_be_started() {
    // Spawning fails on this thread: segment preparation and flushes that would need a
    // new storage worker wait for a running one or run here, and the log never fails.
    workers::FAIL_SPAWN.with(|f| f.set(true));
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config(64 * 1024)).unwrap();
    for i in 0..200u64 {
        log.append(&[make_batch(i, 3, 500, 1_000 + i as i64)])
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        log.flush_in_background(move |r| tx.send(r).unwrap())
            .unwrap();
        log.flush().unwrap();
        assert_eq!(rx.try_recv(), Ok(Ok(())), "flush {i}");
    }
    workers::FAIL_SPAWN.with(|f| f.set(false));
    assert!(log.active.seg.base_offset > 0, "the log rolled");
    assert_eq!(read_all(&log.reader(), 0).unwrap().len(), 200);
}

fn log_file_len(dir: &Path, base: u64) -> u64 {
    std::fs::metadata(dir.join(format!("{base:020}.log")))
        .unwrap()
        .len()
}

#[test]
fn the_active_segment_is_given_blocks_in_steps_not_whole() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 1 << 20,
        preallocate_bytes: 64 * 1024,
        ..small_config(1 << 20)
    };
    let mut log = Log::open(dir.path(), config.clone()).unwrap();
    assert_eq!(
        log_file_len(dir.path(), 0),
        64 * 1024,
        "one step, not 1 MiB"
    );
    let mut expected = Vec::new();
    // About 100 KiB: the file grows by whole steps as the writer needs them.
    for i in 0..100u64 {
        let b = make_batch(i, 1, 1000, 1_000 + i as i64);
        expected.push(b.clone());
        log.append(&[b]).unwrap();
    }
    let len = log.active.pos;
    assert!(len > 64 * 1024 && len <= 128 * 1024, "{len}");
    assert_eq!(log_file_len(dir.path(), 0), 128 * 1024);
    // An append that spans a roll: the new segment, too, starts with one step.
    let big: Vec<Bytes> = (100..1100u64)
        .map(|i| make_batch(i, 1, 1000, 1_000 + i as i64))
        .collect();
    expected.extend(big.iter().cloned());
    log.append(&big).unwrap();
    let active = log.active.seg.base_offset;
    assert!(active > 0, "rolled");
    assert!(log_file_len(dir.path(), active) <= 1 << 20);
    drop(log);
    let log = Log::open(dir.path(), config).unwrap();
    let got = read_all(&log.reader(), 0).unwrap();
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(&g[20..], &e[20..]);
    }
    // Reopened: the data plus the rest of its step, not the whole segment.
    let reopened = log_file_len(dir.path(), active);
    assert!(
        reopened < 1 << 20 && reopened >= log.active.pos,
        "{reopened}"
    );
}

#[test]
fn the_largest_segment_size_opens_without_reserving_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: LogConfig::SEGMENT_BYTES_MAX,
        ..LogConfig::default()
    };
    let mut log = Log::open(dir.path(), config).unwrap();
    log.append(&[make_batch(1, 10, 100, 1_000)]).unwrap();
    assert_eq!(log_file_len(dir.path(), 0), DEFAULT_PREALLOCATE_BYTES);
}

/// The invariants `Log` asserts in every build, each driven into its bad state
/// through the writer's crate-private fields (no public path can get there).
mod invariants {
    use super::*;

    fn log_with_one_batch(dir: &Path) -> Log {
        let mut log = Log::open(dir, small_config(1 << 20)).unwrap();
        log.append(&[make_batch(1, 3, 10, 0)]).unwrap();
        log
    }

    #[test]
    #[should_panic(expected = "invariant violated: offsets strictly increasing")]
    fn an_append_below_the_high_water_mark() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = log_with_one_batch(dir.path());
        log.active.next_offset = 1;
        let _ = log.append(&[make_batch(2, 1, 10, 0)]);
    }

    #[test]
    #[should_panic(expected = "invariant violated: high-water mark monotonic")]
    fn the_high_water_mark_moving_back() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_with_one_batch(dir.path());
        log.shared
            .high_watermark
            .store(10, std::sync::atomic::Ordering::Relaxed);
        log.publish_high_watermark();
    }

    #[test]
    #[should_panic(expected = "invariant violated: flushed <= written <= end of the log")]
    fn flushed_past_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = log_with_one_batch(dir.path());
        log.active.flushed_pos = log.active.pos + 1;
        let _ = log.flush();
    }

    #[test]
    #[should_panic(expected = "invariant violated: flushed <= written <= end of the log")]
    fn written_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = log_with_one_batch(dir.path());
        log.active.capacity = log.active.pos - 1;
        let _ = log.flush_in_background(|_| {});
    }

    #[test]
    #[should_panic(expected = "invariant violated: log start moves forward")]
    fn retention_moving_the_log_start_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = small_config(4096);
        cfg.retention_bytes = 1;
        let mut log = Log::open(dir.path(), cfg).unwrap();
        for i in 0..40u64 {
            log.append(&[make_batch(i, 1, 500, 0)]).unwrap();
        }
        log.shared
            .log_start_offset
            .store(1_000, std::sync::atomic::Ordering::Relaxed);
        let _ = log.apply_retention(0);
    }

    #[test]
    fn a_healthy_log_holds_them_across_rolls_and_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), small_config(8192)).unwrap();
        for i in 0..200 {
            log.append(&[make_batch(i, 2, 100, 0)]).unwrap();
            if i % 7 == 0 {
                log.flush().unwrap();
            }
        }
        assert_eq!(log.high_watermark(), 400);
    }
}

/// A segment preparation that fails part way leaves none of its files behind; retried
/// every second while a shard waits for space, leftovers would eat the space it waits
/// for.
#[test]
fn a_failed_segment_preparation_leaves_no_files() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the last file goes makes it fail after the others were made,
    // on any filesystem and without asking for space (a huge preallocation would fill
    // a disk on a filesystem that allows it, failing other tests beside this one).
    let blocker = dir.path().join(format!(
        "{}7.{}",
        segment::PREPARE_PREFIX,
        segment::TIME_INDEX_EXT
    ));
    std::fs::create_dir(&blocker).unwrap();
    let r = segment::prepare(dir.path(), 7, 1 << 20, 1 << 16, 1 << 10);
    assert!(
        r.is_err(),
        "the time index cannot be created over a directory"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| *p != blocker)
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A mirror's cut: after `truncate_closed_log` the log reopens exactly at the cut,
/// serves every batch below it unchanged, nothing at or above it, and appends from
/// there — across segment boundaries, at a batch start and inside a batch.
#[test]
fn truncating_a_closed_log_cuts_back_to_the_batch_and_appends_again() {
    for (cut, expect_end) in [
        (0u64, 0u64),
        (30, 30),
        (31, 30),
        (95, 95),
        (200, 200),
        (201, 200),
        // A cut past the end changes nothing: how a mirror reopens a closed copy.
        (u64::MAX, 200),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let batches: Vec<Bytes> = (0..40)
            .map(|i| make_batch(i, 5, 100, 1_000 + i as i64))
            .collect();
        {
            let mut log = Log::open(dir.path(), small_config(64 * 1024)).unwrap();
            for b in &batches {
                log.append(std::slice::from_ref(b)).unwrap();
            }
            assert_eq!(log.high_watermark(), 200);
            log.flush().unwrap();
        }
        let end = truncate_closed_log(dir.path(), cut).unwrap();
        assert_eq!(end, expect_end, "cut at {cut}");
        let mut log = Log::open(dir.path(), small_config(64 * 1024)).unwrap();
        assert_eq!(log.high_watermark(), expect_end, "cut at {cut}");
        let kept = read_all(&log.reader(), 0).unwrap();
        assert_eq!(kept.len() as u64, expect_end / 5);
        for (i, b) in kept.iter().enumerate() {
            assert_eq!(&b[..], &stamped(&batches[i], i as u64 * 5)[..]);
        }
        // Appends continue at the cut, and survive another reopen.
        let fresh = make_batch(999, 3, 10, 5_000);
        let info = log.append(std::slice::from_ref(&fresh)).unwrap();
        assert_eq!(info.base_offset, expect_end);
        log.flush().unwrap();
        drop(log);
        let log = Log::open(dir.path(), small_config(64 * 1024)).unwrap();
        assert_eq!(log.high_watermark(), expect_end + 3);
        let all = read_all(&log.reader(), 0).unwrap();
        assert_eq!(&all.last().unwrap()[..], &stamped(&fresh, expect_end)[..]);
    }
}

/// A mirror starting over at its primary's first record: after `restart_closed_log`
/// the log is empty, starts and ends at the new base, refuses reads below it, appends
/// from there and keeps that across a reopen; the old segments are gone.
#[test]
fn restarting_a_closed_log_empties_it_at_the_new_base() {
    for base in [0u64, 7, 150, 1_000] {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = Log::open(dir.path(), small_config(64 * 1024)).unwrap();
            for i in 0..40 {
                log.append(&[make_batch(i, 5, 100, 1_000)]).unwrap();
            }
            log.flush().unwrap();
        }
        restart_closed_log(dir.path(), base).unwrap();
        let mut log = Log::open(dir.path(), small_config(64 * 1024)).unwrap();
        assert_eq!(log.high_watermark(), base, "base {base}");
        assert_eq!(log.reader().log_start_offset(), base, "base {base}");
        assert!(read_all(&log.reader(), base).unwrap().is_empty());
        if base > 0 {
            assert!(matches!(
                log.reader().read(0, 1 << 20),
                Err(StorageError::OffsetOutOfRange { .. })
            ));
        }
        let fresh = make_batch(999, 3, 10, 5_000);
        assert_eq!(
            log.append(std::slice::from_ref(&fresh))
                .unwrap()
                .base_offset,
            base
        );
        log.flush().unwrap();
        drop(log);
        let log = Log::open(dir.path(), small_config(64 * 1024)).unwrap();
        assert_eq!(log.high_watermark(), base + 3);
        let all = read_all(&log.reader(), base).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(&all[0][..], &stamped(&fresh, base)[..]);
        let logs = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "log")
            })
            .count();
        assert_eq!(logs, 1, "only the new start segment is left (base {base})");
    }
}

/// The cap readers see in a cluster: reads stop below it, a read between the cap and
/// the log's end is empty (not out of range), and the unreplicated read goes past it.
#[test]
fn the_visible_cap_hides_what_is_not_replicated() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config(64 * 1024)).unwrap();
    for i in 0..4 {
        log.append(&[make_batch(i, 5, 10, 1_000)]).unwrap();
    }
    let r = log.reader();
    r.reset_visible_cap(10);
    assert_eq!(r.high_watermark(), 10);
    assert_eq!(r.log_end_offset(), 20);
    assert_eq!(read_all(&r, 0).unwrap().len(), 2);
    assert!(r.read(15, 1 << 20).unwrap().is_empty());
    assert!(matches!(
        r.read(21, 1 << 20),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    let all: usize = r
        .read_unreplicated(0, 1 << 20)
        .unwrap()
        .into_iter()
        .map(|c| batch::split(c).count())
        .sum();
    assert_eq!(all, 4);
    r.set_visible_cap(5);
    assert_eq!(r.high_watermark(), 10, "the cap only rises");
    r.set_visible_cap(u64::MAX);
    assert_eq!(r.high_watermark(), 20);
}

// ---- Encryption at rest ----

fn keys(list: &[(u32, u8)], write: u32) -> at_rest::AtRest {
    at_rest::AtRest::new(
        list.iter()
            .map(|&(id, b)| (id, [b; 32], format!("test key {id}")))
            .collect(),
        write,
    )
    .unwrap()
}

fn sealed_config(list: &[(u32, u8)], write: u32) -> LogConfig {
    LogConfig {
        at_rest: Some(keys(list, write)),
        ..small_config(64 * 1024)
    }
}

/// A batch whose one record's value is `marker` repeated, so its plain bytes are easy
/// to look for in files.
fn marked_batch(marker: &[u8], ts_ms: i64) -> Bytes {
    let mut b = BatchBuilder::new();
    b.push(&NewRecord::value(ts_ms, &marker.repeat(8))).unwrap();
    b.finish().unwrap()
}

fn files_contain(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let data = std::fs::read(e.unwrap().path()).unwrap_or_default();
        data.windows(needle.len()).any(|w| w == needle)
    })
}

#[test]
fn sealed_log_serves_plain_batches_and_stores_none() {
    let dir = tempfile::tempdir().unwrap();
    let marker = b"PLAINTEXT-MARKER-0001";
    let mut log = Log::open(dir.path(), sealed_config(&[(1, 1)], 1)).unwrap();
    let mut expected = Vec::new();
    // Enough to roll a few 64 KiB segments and cross index points.
    for i in 0..600u64 {
        let b = marked_batch(marker, 1_000 + i as i64);
        let info = log.append(std::slice::from_ref(&b)).unwrap();
        expected.push(stamped(&b, info.base_offset));
    }
    log.flush().unwrap();
    assert!(segment_files(dir.path()).len() > 1, "rolled");
    let got: Vec<Vec<u8>> = read_all(&log.reader(), 0)
        .unwrap()
        .iter()
        .map(|b| b.to_vec())
        .collect();
    assert_eq!(got, expected);
    assert_eq!(
        log.reader().offset_for_timestamp(1_100).unwrap(),
        Some((100, 1_100))
    );
    assert!(!files_contain(dir.path(), marker));
    drop(log);
    // Recovery of the sealed tail, then the same reads.
    let log = Log::open(dir.path(), sealed_config(&[(1, 1)], 1)).unwrap();
    let got: Vec<Vec<u8>> = read_all(&log.reader(), 0)
        .unwrap()
        .iter()
        .map(|b| b.to_vec())
        .collect();
    assert_eq!(got, expected);
    assert!(!files_contain(dir.path(), marker));
}

#[test]
fn a_plain_log_does_store_the_marker() {
    // The control for the test above: the search would find plain bytes.
    let dir = tempfile::tempdir().unwrap();
    let marker = b"PLAINTEXT-MARKER-0002";
    let mut log = Log::open(dir.path(), small_config(64 * 1024)).unwrap();
    log.append(&[marked_batch(marker, 1)]).unwrap();
    log.flush().unwrap();
    assert!(files_contain(dir.path(), marker));
}

#[test]
fn wrong_or_missing_at_rest_key_refuses_to_open_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), sealed_config(&[(1, 1)], 1)).unwrap();
    log.append(&[marked_batch(b"x", 1)]).unwrap();
    log.flush().unwrap();
    drop(log);
    let wrong = Log::open(dir.path(), sealed_config(&[(1, 9)], 1))
        .err()
        .unwrap();
    let msg = wrong.to_string();
    assert!(matches!(wrong, StorageError::AtRestKey { .. }), "{msg}");
    assert!(
        msg.contains("at-rest key 1") && msg.contains("test key 1"),
        "{msg}"
    );
    let missing = Log::open(dir.path(), sealed_config(&[(2, 2)], 2))
        .err()
        .unwrap();
    assert!(
        missing
            .to_string()
            .contains("at-rest key 1, which is not configured"),
        "{missing}"
    );
    let none = Log::open(dir.path(), small_config(64 * 1024))
        .err()
        .unwrap();
    assert!(none.to_string().contains("at-rest key 1"), "{none}");
    // The right key still opens it.
    assert!(Log::open(dir.path(), sealed_config(&[(1, 1)], 1)).is_ok());
}

#[test]
fn key_rotation_keeps_old_data_readable_and_seals_new_data_with_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    // Plain data first, then key 1, then key 2: three generations of one log.
    for (config, n) in [
        (small_config(64 * 1024), 3u64),
        (sealed_config(&[(1, 1)], 1), 3),
        (sealed_config(&[(1, 1), (2, 2)], 2), 3),
    ] {
        let mut log = Log::open(dir.path(), config).unwrap();
        for i in 0..n {
            let b = make_batch(i, 2, 50, 1);
            let info = log.append(std::slice::from_ref(&b)).unwrap();
            expected.push(stamped(&b, info.base_offset));
        }
        log.flush().unwrap();
    }
    // One segment per key (the log rolled at each change of key).
    let segs = segment_files(dir.path());
    assert_eq!(segs.len(), 3, "{segs:?}");
    let key_of = |p: &std::path::PathBuf| {
        let d = std::fs::read(p).unwrap();
        weir_protocol::sealed::parse_sealed(
            &d[..weir_protocol::sealed::read_stored_header(&d)
                .unwrap()
                .total_bytes()],
        )
        .map(|s| s.key_id)
        .ok()
    };
    assert_eq!(
        segs.iter().map(key_of).collect::<Vec<_>>(),
        vec![None, Some(1), Some(2)]
    );
    let log = Log::open(dir.path(), sealed_config(&[(1, 1), (2, 2)], 2)).unwrap();
    let got: Vec<Vec<u8>> = read_all(&log.reader(), 0)
        .unwrap()
        .iter()
        .map(|b| b.to_vec())
        .collect();
    assert_eq!(got, expected);
    drop(log);
    // Dropping the old key while its data is kept refuses to open, naming key 1.
    let e = Log::open(dir.path(), sealed_config(&[(2, 2)], 2))
        .err()
        .unwrap();
    assert!(e.to_string().contains("at-rest key 1"), "{e}");
}

#[test]
fn a_torn_sealed_tail_is_cut_like_a_plain_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), sealed_config(&[(1, 1)], 1)).unwrap();
    let a = make_batch(1, 3, 40, 1);
    let b = make_batch(2, 3, 40, 1);
    log.append(std::slice::from_ref(&a)).unwrap();
    log.append(&[b]).unwrap();
    log.flush().unwrap();
    drop(log);
    // Cut the second (sealed) batch in half, as a crash mid-write would.
    let path = segment_files(dir.path())[0].clone();
    let data = std::fs::read(&path).unwrap();
    let first = weir_protocol::sealed::read_stored_header(&data)
        .unwrap()
        .total_bytes();
    let second = weir_protocol::sealed::read_stored_header(&data[first..])
        .unwrap()
        .total_bytes();
    let mut torn = data[..first + second / 2].to_vec();
    torn.resize(data.len(), 0);
    std::fs::write(&path, &torn).unwrap();
    let log = Log::open(dir.path(), sealed_config(&[(1, 1)], 1)).unwrap();
    assert_eq!(log.high_watermark(), 3);
    let got: Vec<Vec<u8>> = read_all(&log.reader(), 0)
        .unwrap()
        .iter()
        .map(|b| b.to_vec())
        .collect();
    assert_eq!(got, vec![stamped(&a, 0)]);
}

#[test]
fn a_flipped_bit_in_a_sealed_closed_segment_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), sealed_config(&[(1, 1)], 1)).unwrap();
    for i in 0..200 {
        log.append(&[make_batch(i, 2, 100, 1)]).unwrap();
    }
    log.flush().unwrap();
    drop(log);
    let path = segment_files(dir.path())[0].clone();
    let mut data = std::fs::read(&path).unwrap();
    let first = weir_protocol::sealed::read_stored_header(&data)
        .unwrap()
        .total_bytes();
    // Inside the second batch's ciphertext.
    data[first + 100] ^= 0x40;
    std::fs::write(&path, &data).unwrap();
    let log = Log::open(dir.path(), sealed_config(&[(1, 1)], 1)).unwrap();
    let r = log.reader();
    assert!(
        r.read(0, 1).is_ok(),
        "the batch before the damage is served"
    );
    let e = r.read(2, 1).unwrap_err();
    assert!(matches!(e, StorageError::Corrupt { .. }), "{e}");
}

// ---- Deletion by key ----

fn keyed_batch(key: &[u8], value: &[u8], ts_ms: i64) -> Bytes {
    let mut b = BatchBuilder::new();
    b.push(&NewRecord {
        priority: 5,
        complexity: 1,
        timestamp_ms: ts_ms,
        key,
        value,
        headers: &[],
    })
    .unwrap();
    b.finish().unwrap()
}

/// (key, value) of every record of the log, via reads.
fn records_of(log: &Log) -> Vec<(Vec<u8>, Vec<u8>)> {
    read_all(&log.reader(), 0)
        .unwrap()
        .into_iter()
        .flat_map(|b| {
            batch::Batch::parse(b)
                .unwrap()
                .records()
                .map(|r| (r.key.to_vec(), r.value.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn delete_key_case(config: LogConfig) {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), config.clone()).unwrap();
    for i in 0..300 {
        let (k, v): (&[u8], Vec<u8>) = if i % 3 == 0 {
            (b"user-42", format!("FORGET-ME-{i:04}").into_bytes())
        } else {
            (b"user-7", format!("keep-me-{i:04}").into_bytes())
        };
        log.append(&[keyed_batch(k, &v, i)]).unwrap();
    }
    log.flush().unwrap();
    assert!(segment_files(dir.path()).len() > 1, "several segments");
    let below = log.delete_key(b"user-42").unwrap();
    assert_eq!(below, 300);
    // Produced after the tombstone: not deleted.
    log.append(&[keyed_batch(b"user-42", b"FORGET-ME-late", 999)])
        .unwrap();
    let recs = records_of(&log);
    assert_eq!(recs.len(), 301, "offsets stay dense");
    assert!(recs[..300]
        .iter()
        .all(|(k, v)| k != b"user-42" && !v.starts_with(b"FORGET")));
    assert_eq!(
        recs.iter()
            .filter(|(_, v)| v.starts_with(b"keep-me"))
            .count(),
        200
    );
    assert_eq!(recs[300], (b"user-42".to_vec(), b"FORGET-ME-late".to_vec()));
    // Until compaction the bytes are still on disk, and the tombstone survives a reopen.
    assert!(files_contain(dir.path(), b"FORGET-ME-0000") || config.at_rest.is_some());
    drop(log);
    let mut log = Log::open(dir.path(), config.clone()).unwrap();
    assert!(log.has_deleted_keys());
    assert!(!records_of(&log)[..300]
        .iter()
        .any(|(_, v)| v.starts_with(b"FORGET")));
    let n = log.compact_deleted_keys().unwrap();
    assert!(n >= 2, "rewrote {n} segments");
    assert!(!log.has_deleted_keys());
    assert!(!dir.path().join(redact::TOMBSTONES_FILE).exists());
    let after = records_of(&log);
    assert_eq!(after, recs);
    // Only the late record (written after the tombstone) is left: in plain logs its
    // bytes; in sealed logs none.
    assert!(!files_contain(dir.path(), b"FORGET-ME-0"));
    assert!(!files_contain(dir.path(), b"user-42") || config.at_rest.is_none());
    // Appends go on after compaction, and a reopen checks the rewritten segments.
    log.append(&[keyed_batch(b"x", b"after", 1000)]).unwrap();
    log.flush().unwrap();
    drop(log);
    let log = Log::open(dir.path(), config).unwrap();
    let mut want = recs;
    want.push((b"x".to_vec(), b"after".to_vec()));
    assert_eq!(records_of(&log), want);
    assert!(!files_contain(dir.path(), b"FORGET-ME-0"));
}

#[test]
fn deleted_keys_are_hidden_at_once_and_compacted_off_disk() {
    delete_key_case(small_config(8 * 1024));
}

#[test]
fn deleted_keys_are_compacted_out_of_sealed_logs() {
    delete_key_case(LogConfig {
        at_rest: Some(keys(&[(1, 1)], 1)),
        ..small_config(8 * 1024)
    });
}

/// Pages of `seg`'s log map in `[from, to)` that are in the page cache (`mincore`).
fn resident_pages(seg: &segment::Segment, from: u64, to: u64) -> usize {
    let page = 4096u64;
    let (from, to) = (from / page * page, to.min(seg.log.map.len() as u64));
    if to <= from {
        return 0;
    }
    let n = (to - from).div_ceil(page) as usize;
    let mut v = vec![0u8; n];
    // SAFETY: a page-aligned range inside the segment's live map; `v` has one byte
    // per page of it.
    let rc = unsafe {
        libc::mincore(
            seg.log.map.as_ptr().add(from as usize) as *mut libc::c_void,
            (to - from) as usize,
            v.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    v.iter().filter(|b| *b & 1 == 1).count()
}

/// With a page-cache window, what lies more than the window (and a step) behind the
/// newest append leaves the page cache, across segment rolls, while readers hold
/// slices of it; the newest bytes stay; and everything reads back exactly, the
/// dropped bytes from the file.
#[test]
fn bytes_behind_the_page_cache_window_leave_the_cache_and_read_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    // tmpfs keeps its pages whatever the log asks; only a disk file system can show it.
    let tmpfs = {
        let c = std::ffi::CString::new(dir.path().to_str().unwrap()).unwrap();
        // SAFETY: a valid C string and a zeroed out-struct the call fills.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
        rc != 0 || st.f_type == libc::TMPFS_MAGIC
    };
    let window = 256 * 1024u64;
    let config = LogConfig {
        page_cache_window_bytes: window,
        ..small_config(1 << 20)
    };
    let mut log = Log::open(dir.path(), config).unwrap();
    let reader = log.reader();
    let mut expected = Vec::new();
    let mut held = Vec::new();
    for i in 0..400u64 {
        let b = make_batch(i, 4, 2000, 1000);
        let info = log.append(std::slice::from_ref(&b)).unwrap();
        expected.push(stamped(&b, info.base_offset));
        if i % 50 == 0 {
            // A reader maps these pages and keeps its slices while they are dropped.
            let read = read_all(&reader, info.base_offset).unwrap();
            held.push((i as usize, read[0].clone()));
        }
        if i % 16 == 0 {
            log.cache_window.settle();
        }
    }
    log.cache_window.settle();
    assert!(segment_files(dir.path()).len() > 2, "test must roll");
    let segments = log.shared.snapshot();
    let total: u64 = segments
        .iter()
        .map(|s| s.len.load(std::sync::atomic::Ordering::Acquire))
        .sum();
    assert!(total > 3 * 1024 * 1024, "wrote {total} bytes");
    // Everything but the window and at most a step was dropped, and counted.
    let dropped = reader.page_cache_dropped_bytes();
    assert!(
        dropped + window + 64 * 1024 >= total && dropped <= total,
        "{dropped} of {total} bytes counted as dropped"
    );
    if !tmpfs {
        // Everything but the newest window and a step (the window of this config is
        // 256 KiB, its step 32 KiB) left the cache: the closed segments but the last
        // ~300 KiB hold no resident page.
        let mut behind = total;
        let mut resident_old = 0;
        for s in segments.iter() {
            let len = s.len.load(std::sync::atomic::Ordering::Acquire);
            // Bytes of this segment below here are more than window + step behind.
            let old_below = behind.saturating_sub(window + 64 * 1024);
            resident_old += resident_pages(s, 0, old_below.min(len));
            behind -= len;
        }
        // (A few pages of slack: the kernel's drop is best effort.)
        assert!(
            resident_old <= 4,
            "{resident_old} pages older than the window stayed cached"
        );
        let active = segments.last().unwrap();
        let len = active.len.load(std::sync::atomic::Ordering::Acquire);
        assert!(
            resident_pages(active, len.saturating_sub(64 * 1024), len) > 0,
            "the newest pages should still be cached"
        );
    }
    // A read from far behind asks for the dropped bytes after it to be read in ahead
    // of the next read (here the rest of the first segment, which was dropped whole).
    // Whether the kernel reads them is its own affair: the request is what is checked.
    let first = reader.read(0, 1).unwrap();
    assert_eq!(first[0].as_ref(), expected[0].as_slice());
    {
        let mut cold = log.shared.cold_reads.lock().unwrap();
        cold.settle();
        let (ahead_log, ahead_to) = cold.ahead().expect("no read-ahead was asked for");
        assert!(std::sync::Arc::ptr_eq(&ahead_log, &segments[0].log));
        assert_eq!(
            ahead_to,
            segments[0].len.load(std::sync::atomic::Ordering::Acquire)
        );
    }
    for (i, h) in &held {
        assert_eq!(h.as_ref(), expected[*i].as_slice(), "a held slice changed");
    }
    // A reader catching up from the start faults the dropped bytes back in; all but
    // the newest quarter window of them (64 KiB) is dropped again behind it. (The
    // answer is compared only after the pages are counted: comparing touches them.)
    let got = read_all(&reader, 0).unwrap();
    log.shared.cold_reads.lock().unwrap().settle();
    if !tmpfs {
        let mut behind = total;
        let mut resident_old = 0;
        let mut old_pages = 0;
        for s in segments.iter() {
            let len = s.len.load(std::sync::atomic::Ordering::Acquire);
            let old_below = behind.saturating_sub(window + 64 * 1024).min(len);
            resident_old += resident_pages(s, 0, old_below);
            old_pages += old_below.div_ceil(4096) as usize;
            behind -= len;
        }
        // Without the second drop every one of them stays (~700 pages). With it, 64
        // KiB are kept, and the kernel skips pages still locked for the read-ahead's
        // I/O when the drop comes: up to a third of them stayed in runs beside the other
        // storage tests, none when run alone.
        assert!(
            resident_old * 2 < old_pages,
            "{resident_old} of {old_pages} pages read back from behind the window stayed cached"
        );
    }
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g.as_ref(), e.as_slice());
    }
}

/// A read that keeps meeting one damaged batch is logged once per period, with the
/// count of the reads in between.
#[test]
fn damage_is_logged_at_most_once_a_period() {
    let t = super::log::LogThrottle::new();
    assert_eq!(t.due(0, 1000), Some(0), "the first is logged");
    for ms in [1, 10, 500, 999] {
        assert_eq!(t.due(ms, 1000), None);
    }
    assert_eq!(t.due(1000, 1000), Some(4), "four reads since the last line");
    assert_eq!(t.due(1500, 1000), None);
    assert_eq!(t.due(5000, 1000), Some(1));
}

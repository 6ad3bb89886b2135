//! Crash test of the storage engine with a real process: a child (this same test
//! binary, re-executed in child mode) appends and flushes in a loop and prints each
//! acknowledged base offset; the parent kills it with SIGKILL at a random moment,
//! reopens the log, and checks that every acknowledged batch is present and
//! byte-identical, and that the log continues densely. `WEIR_CRASH_ROUNDS` sets the
//! number of rounds (default 50). The same runs with encryption at rest (every batch
//! sealed with AES-256-GCM; default 20 rounds) check that a sealed log recovers alike.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_broker::storage::at_rest::AtRest;
use weir_broker::storage::{Log, LogConfig};
use weir_protocol::batch::{self, BatchBuilder, NewRecord};

const CHILD_ENV: &str = "WEIR_CRASH_CHILD_DIR";
/// Set (to anything) in the child's environment: the log seals its batches.
const SEALED_ENV: &str = "WEIR_CRASH_CHILD_SEALED";

fn config(sealed: bool) -> LogConfig {
    // Small segments so that kills also land while a segment rolls.
    LogConfig {
        segment_bytes: 64 * 1024,
        index_interval_bytes: 1024,
        retention_ms: 0,
        retention_bytes: 0,
        // Small steps, so appends grow the file often.
        preallocate_bytes: 16 * 1024,
        at_rest: sealed
            .then(|| AtRest::new(vec![(1, [0x5a; 32], "crash test key".into())], 1).expect("keys")),
        // Write-behind on, unlimited, so that kills also land while write-back starts.
        write_behind_bytes: 64 * 1024,
        write_behind_max_bytes_per_sec: 0,
        write_call_bytes: weir_broker::storage::DEFAULT_WRITE_CALL_BYTES,
        page_cache_window_bytes: 1 << 20,
    }
}

/// The batch the child writes at `base`: a pure function of its offset, so the parent
/// knows what every stored batch must hold.
fn batch_for(base: u64) -> Bytes {
    let records = 1 + (base % 4) as u32;
    let len = ((base * 37) % 2000) as usize;
    let mut b = BatchBuilder::new();
    for r in 0..records {
        let v: Vec<u8> = (0..len)
            .map(|i| (base as usize + i * 3 + r as usize) as u8)
            .collect();
        b.push(&NewRecord::value(base as i64, &v)).unwrap();
    }
    let mut v = b.finish().unwrap().to_vec();
    batch::set_base_offset(&mut v, base);
    Bytes::from(v)
}

/// Child mode: append (1-3 batches per group), flush, then report. Does nothing when
/// run as an ordinary test.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let sealed = std::env::var_os(SEALED_ENV).is_some();
    let mut log = Log::open(Path::new(&dir), config(sealed)).expect("child opens the log");
    let mut out = std::io::stdout().lock();
    for _ in 0..10_000_000u64 {
        let mut next = log.high_watermark();
        let group = 1 + (next % 3) as usize;
        let mut batches = Vec::with_capacity(group);
        let mut bases = Vec::with_capacity(group);
        for _ in 0..group {
            let b = batch_for(next);
            bases.push(next);
            next += u64::from(batch::verify(&b).unwrap().record_count);
            batches.push(b);
        }
        let info = log.append(&batches).expect("append");
        assert_eq!(info.base_offset, bases[0]);
        log.flush().expect("flush");
        for base in bases {
            writeln!(out, "ACK {base}").unwrap();
        }
        out.flush().unwrap();
    }
}

/// xorshift64*, seeded from the clock: no dependency, different moments each run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Reopens the log and checks it; returns its high-water mark.
fn verify_log(dir: &Path, acked: &BTreeSet<u64>, sealed: bool) -> u64 {
    let log = Log::open(dir, config(sealed)).expect("reopen after kill");
    if let Ok(first) = std::fs::read(dir.join("00000000000000000000.log")) {
        if first.len() > 60 && first[8..12] != [0; 4] {
            assert_eq!(
                weir_protocol::sealed::is_sealed(&first),
                sealed,
                "the stored batches are sealed exactly when the log has a write key"
            );
        }
    }
    let r = log.reader();
    let hwm = log.high_watermark();
    let mut off = 0u64;
    let mut seen = BTreeSet::new();
    for _ in 0..10_000_000 {
        let chunks = r.read(off, 1 << 20).expect("read after recovery");
        if chunks.is_empty() {
            break;
        }
        for c in chunks {
            for b in batch::split(c) {
                let b = b.expect("every stored batch verifies");
                let h = batch::verify(&b).unwrap();
                assert_eq!(h.base_offset, off, "offsets are dense");
                assert_eq!(b, batch_for(off), "batch at {off} is byte-identical");
                seen.insert(off);
                off = h.last_offset() + 1;
            }
        }
    }
    assert_eq!(off, hwm);
    for a in acked {
        assert!(
            seen.contains(a),
            "acked batch at offset {a} lost (hwm {hwm})"
        );
    }
    hwm
}

#[test]
fn sigkill_never_loses_acked_batches() {
    crash_rounds(false, 50);
}

#[test]
fn sigkill_never_loses_acked_sealed_batches() {
    crash_rounds(true, 20);
}

fn crash_rounds(sealed: bool, default_rounds: usize) {
    let rounds: usize = std::env::var("WEIR_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_rounds);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}, {rounds} rounds");
    let mut rng = Rng(seed);
    let mut acked = BTreeSet::new();
    let mut kills_mid_run = 0;
    let started = Instant::now();
    for round in 0..rounds {
        let mut cmd = Command::new(&exe);
        cmd.args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if sealed {
            cmd.env(SEALED_ENV, "1");
        } else {
            cmd.env_remove(SEALED_ENV);
        }
        let mut child = cmd.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(10 + rng.next() % 120));
        child.kill().unwrap(); // SIGKILL
        let mut text = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "child must die by the kill, not finish");
        // Only whole lines count: the kill may cut the last one.
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        let before = acked.len();
        for line in complete.lines() {
            if let Some(n) = line.strip_prefix("ACK ") {
                acked.insert(n.parse::<u64>().expect("ACK line"));
            }
        }
        if acked.len() > before {
            kills_mid_run += 1;
        }
        let hwm = verify_log(dir.path(), &acked, sealed);
        if round % 10 == 0 {
            eprintln!("round {round}: {} acked, hwm {hwm}", acked.len());
        }
    }
    eprintln!(
        "{rounds} rounds in {:?}, {} acked batches",
        started.elapsed(),
        acked.len()
    );
    // Guard against a test that never exercised anything.
    assert!(
        kills_mid_run >= rounds / 2,
        "only {kills_mid_run} of {rounds} rounds acked anything before the kill"
    );
}

//! A full disk: the broker's data directory on a small tmpfs. Produces that no longer
//! fit get an explicit STORAGE_ERROR, the broker stays up and keeps serving, and every
//! record acknowledged before is still readable. `/ready` and `/metrics` name the
//! shard that cannot take writes, other shards keep taking them (new producers can
//! start), and once space is freed the shard takes writes again without a restart.
//!
//! Mounting needs root (as on the project's CI machines); without it the test says so
//! and returns.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use weir_client::{Acks, Admin, ClientError, Producer, ProducerBatch, TopicConfig};
use weir_protocol::ErrorCode;
use weir_tests::{connect, http_get, read_all, BrokerProcess, Tmpfs};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_produces_by_name_and_loses_nothing_acknowledged() {
    // 1 MiB segments, each allocated whole: the disk runs out at a roll.
    fill_refuse_and_recover(1 << 20, &[], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_while_a_segment_grows_stalls_and_recovers_the_same_way() {
    // 8 MiB segments allocated in 64 KiB steps: the disk runs out while the active
    // segment grows, between rolls.
    let env = [("WEIR_SEGMENT_PREALLOCATE_BYTES", "65536")];
    fill_refuse_and_recover(8 << 20, &env, false).await;
}

/// Fills the disk through one shard until a produce is refused, checks what the broker
/// says and serves meanwhile, frees space and checks the shard recovers by itself.
/// `at_roll`: whether the disk runs out making the next segment (else growing one).
async fn fill_refuse_and_recover(segment_bytes: u64, env: &[(&str, &str)], at_roll: bool) {
    let dir = BrokerProcess::new_dir();
    // The internal logs take 32 MiB; about 16 MiB is left for the topic.
    let _disk = match Tmpfs::mount(&dir.path().join("data"), "48m") {
        Ok(d) => d,
        Err(e) => {
            eprintln!("SKIPPED: cannot mount a tmpfs for the data directory ({e}); run as root");
            return;
        }
    };
    let broker = BrokerProcess::start_in(dir, env);
    let client = connect(&broker.addr(), WAIT).await;
    let admin = Admin::new(client.clone());
    let small = TopicConfig {
        segment_bytes,
        max_message_bytes: 256 << 10,
        ..TopicConfig::default()
    };
    admin
        .create_topic("full", 1, small.clone())
        .await
        .expect("create topic");
    // Its segment is reserved now: it keeps room however full the disk gets.
    admin
        .create_topic("roomy", 1, small.clone())
        .await
        .expect("create topic");
    // Space to free later.
    admin
        .create_topic("ballast", 4, small.clone())
        .await
        .expect("create topic");
    let producer = Producer::builder(&client)
        .acks(Acks::Durable)
        .retries(0)
        .build()
        .await
        .expect("producer");

    // 200 KiB per call, up to 40 MB in all: far more than the disk holds.
    let mut acked = 0usize;
    let mut refusal = None;
    for call in 0..200 {
        match producer
            .send_batch(big_batch(call))
            .await
            .expect("queued")
            .await
        {
            Ok(md) => acked += md.record_count() as usize,
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let refusal = refusal.expect("the disk never filled up");
    match &refusal {
        ClientError::Broker { code, message, .. } => {
            assert_eq!(*code, ErrorCode::StorageError, "{message}");
            assert!(
                message.contains("No space left"),
                "the message names the cause: {message}"
            );
        }
        other => panic!("expected STORAGE_ERROR, got {other:?}"),
    }
    assert!(acked >= 2_000, "only {acked} records fit before the error");

    // Still up, and saying which shard cannot take writes, and why.
    let health = http_get(broker.http_addr(), "/ready").await;
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    // The file that could not get space: a next segment being made, or the active one.
    assert_eq!(health.contains("/.prepare-"), at_roll, "{health}");
    assert!(
        health.contains("degraded: full/0: ") && health.contains("No space left"),
        "{health}"
    );
    let metrics = http_get(broker.http_addr(), "/metrics").await;
    assert!(
        metrics.contains("weir_shard_failed{topic=\"full\",shard=\"0\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weir_shard_failed{topic=\"roomy\",shard=\"0\"} 0"),
        "{metrics}"
    );
    // Other shards are unaffected: a new producer starts and writes where there is room.
    let other = Producer::builder(&client)
        .acks(Acks::Durable)
        .retries(0)
        .build()
        .await
        .expect("a producer starts on a full disk");
    other
        .send_and_wait(weir_client::ProducerRecord::new("roomy", "fits").shard(0))
        .await
        .expect("a shard with room takes writes");
    // A later produce that needs the next segment is refused by name too (the roll is
    // tried again, and fails again, while the disk stays full).
    let again = producer
        .send_batch(big_batch(999))
        .await
        .expect("queued")
        .await;
    assert!(
        matches!(&again, Err(ClientError::Broker { code, message, .. })
            if *code == ErrorCode::StorageError && message.contains("No space left")),
        "a later produce is refused by name too: {again:?}"
    );
    let got = read_all(&client, "full", acked, Duration::from_secs(30)).await;
    assert_eq!(got.len(), acked, "every acknowledged record is readable");
    assert!(got.windows(2).all(|w| w[0].offset + 1 == w[1].offset));

    // Space returns: the shard leaves the degraded state by itself (the writer retries
    // the roll on its timer), without a restart, and takes writes again.
    admin.delete_topic("ballast").await.expect("delete topic");
    let mut health = String::new();
    for _ in 0..300 {
        health = http_get(broker.http_addr(), "/ready").await;
        if health.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(health.contains("\r\n\r\nok"), "{health}");
    let metrics = http_get(broker.http_addr(), "/metrics").await;
    assert!(
        metrics.contains("weir_shard_failed{topic=\"full\",shard=\"0\"} 0"),
        "{metrics}"
    );
    let md = producer
        .send_and_wait(weir_client::ProducerRecord::new("full", "after").shard(0))
        .await
        .expect("the shard takes writes once space is back");
    assert_eq!(
        md.offset, acked as u64,
        "right after the acknowledged records"
    );
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_start_on_a_disk_that_filled_before_any_roll() {
    let dir = BrokerProcess::new_dir();
    let data = dir.path().join("data");
    let _disk = match Tmpfs::mount(&data, "48m") {
        Ok(d) => d,
        Err(e) => {
            eprintln!("SKIPPED: cannot mount a tmpfs for the data directory ({e}); run as root");
            return;
        }
    };
    let broker = BrokerProcess::start_in(dir, &[]);
    let client = connect(&broker.addr(), WAIT).await;
    Admin::new(client.clone())
        .create_topic(
            "roomy",
            1,
            TopicConfig {
                segment_bytes: 1 << 20,
                max_message_bytes: 256 << 10,
                ..TopicConfig::default()
            },
        )
        .await
        .expect("create topic");
    // Something else fills the disk to the last byte; the topic's segment, reserved
    // when it was made, still has room.
    fill(&data.join("filler"));
    let producer = Producer::builder(&client)
        .acks(Acks::Durable)
        .retries(0)
        .build()
        .await
        .expect("a producer (its id block) starts on a full disk");
    let md = producer
        .send_and_wait(weir_client::ProducerRecord::new("roomy", "fits").shard(0))
        .await
        .expect("a shard with room takes writes");
    assert_eq!(md.offset, 0);
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_topic_checks_free_space_first_and_leaves_nothing_when_it_fails() {
    let dir = BrokerProcess::new_dir();
    let data = dir.path().join("data");
    // Few inodes: the free-space check (blocks) passes, and creating the shards' files
    // runs out part way, a failure after some shards already reserved their segments.
    let _disk = match Tmpfs::mount_with(&data, "size=48m,nr_inodes=120") {
        Ok(d) => d,
        Err(e) => {
            eprintln!("SKIPPED: cannot mount a tmpfs for the data directory ({e}); run as root");
            return;
        }
    };
    let broker = BrokerProcess::start_in(dir, &[]);
    let client = connect(&broker.addr(), WAIT).await;
    let admin = Admin::new(client.clone());
    let used = || df_used(&data);
    let before = used();

    // 100 shards of 1 MiB: far more than the 16 MiB left. Refused before anything is
    // made, naming the need and what is free.
    let one_mib = TopicConfig {
        segment_bytes: 1 << 20,
        max_message_bytes: 256 << 10,
        ..TopicConfig::default()
    };
    let refused = admin
        .create_topic("greedy", 100, one_mib.clone())
        .await
        .expect_err("refused");
    match &refused {
        ClientError::Broker { code, message, .. } => {
            assert_eq!(*code, ErrorCode::StorageError, "{message}");
            assert!(message.contains("free disk space"), "{message}");
        }
        other => panic!("expected STORAGE_ERROR, got {other:?}"),
    }
    assert!(!data.join("topics/greedy").exists(), "nothing was made");

    // 40 shards of 64 KiB fit in blocks but not in inodes: fails part way, and the
    // shards made before the failure are removed.
    let small = TopicConfig {
        segment_bytes: 64 << 10,
        max_message_bytes: 32 << 10,
        ..TopicConfig::default()
    };
    let failed = admin.create_topic("many", 40, small.clone()).await;
    assert!(
        matches!(&failed, Err(ClientError::Broker { code, .. }) if *code == ErrorCode::StorageError),
        "{failed:?}"
    );
    assert!(!data.join("topics/many").exists(), "no orphaned shards");
    assert_eq!(used(), before, "every reserved block was given back");
    // And the space is usable: a smaller topic is created.
    admin
        .create_topic("few", 2, small)
        .await
        .expect("create topic");
    drop(broker);
}

/// Bytes used on the file system of `path`, as `df` counts them.
fn df_used(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=used", "-B1"])
        .arg(path)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df prints the used bytes")
}

/// Writes zeros to `path` until the file system has no byte left.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in [1 << 20, 4096, 1] {
        let buf = vec![0u8; chunk];
        // Bounded: the tmpfs is 48 MiB.
        for _ in 0..100_000 {
            if f.write_all(&buf).is_err() {
                break;
            }
        }
    }
    let _ = f.sync_all();
}

/// 200 records of about 1 KiB for shard 0 of "full": about 200 KiB.
fn big_batch(call: u32) -> ProducerBatch {
    let mut batch = ProducerBatch::with_capacity("full", 200).shard(0);
    for i in 0..200 {
        batch.push(format!("{call:03}-{i:03}-{}", "z".repeat(1000)));
    }
    batch
}

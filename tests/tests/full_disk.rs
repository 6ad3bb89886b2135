//! A full disk: the broker's data directory on a small tmpfs. Produces that no longer
//! fit get an explicit STORAGE_ERROR, the broker stays up and keeps serving, and every
//! record acknowledged before is still readable.
//!
//! Mounting needs root (as on the project's CI machines); without it the test says so
//! and returns.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use weir_client::{Acks, Admin, ClientError, Producer, ProducerBatch, TopicConfig};
use weir_protocol::ErrorCode;
use weir_tests::{connect, http_get, read_all, BrokerProcess};

const WAIT: Duration = Duration::from_secs(10);

/// A tmpfs mounted on a directory; unmounted (and the directory removed) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_produces_by_name_and_loses_nothing_acknowledged() {
    let dir = BrokerProcess::new_dir();
    // The internal logs take 32 MiB; about 16 MiB is left for the topic.
    let _disk = match Tmpfs::mount(&dir.path().join("data"), "48m") {
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
            "full",
            1,
            TopicConfig {
                segment_bytes: 1 << 20,
                max_message_bytes: 256 << 10,
                ..TopicConfig::default()
            },
        )
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
        let mut batch = ProducerBatch::with_capacity("full", 200).shard(0);
        for i in 0..200 {
            batch.push(format!("{call:03}-{i:03}-{}", "z".repeat(1000)));
        }
        match producer.send_batch(batch).await.expect("queued").await {
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

    // Still up: health, metadata, and every acknowledged record, in order.
    let health = http_get(broker.http_addr(), "/health").await;
    assert!(
        health.ends_with("ok") || health.contains("\r\n\r\nok"),
        "{health}"
    );
    let again = producer
        .send_and_wait(weir_client::ProducerRecord::new("full", "more").shard(0))
        .await;
    assert!(
        matches!(&again, Err(ClientError::Broker { code, .. }) if *code == ErrorCode::StorageError),
        "a later produce is refused by name too: {again:?}"
    );
    let got = read_all(&client, "full", acked, Duration::from_secs(30)).await;
    assert_eq!(got.len(), acked, "every acknowledged record is readable");
    assert!(got.windows(2).all(|w| w[0].offset + 1 == w[1].offset));
    drop(broker);
}

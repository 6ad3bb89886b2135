//! Broker-wide limits enforced by the topic registry: `max_shards` bounds the shards
//! (writer threads) of all topics together, and a data directory already over it
//! still opens whole.

use std::sync::Arc;

use weir_broker::config::Config;
use weir_broker::topics::TopicRegistry;
use weir_protocol::messages::TopicConfig;
use weir_protocol::ErrorCode;

fn config(dir: &std::path::Path, max_shards: u32) -> Arc<Config> {
    Arc::new(Config {
        data_dir: dir.to_path_buf(),
        // Small segments: every shard preallocates one.
        default_segment_bytes: 64 * 1024,
        default_max_message_bytes: 32 * 1024,
        max_shards,
        ..Config::default()
    })
}

#[tokio::test]
async fn create_topic_is_refused_past_max_shards_and_reopen_keeps_every_topic() {
    let dir = tempfile::tempdir().unwrap();
    let topics = Arc::new(TopicRegistry::open(config(dir.path(), 5)).unwrap());
    topics.create("a", 3, TopicConfig::default()).await.unwrap();
    let refused = topics
        .create("b", 3, TopicConfig::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::InvalidConfig);
    assert!(
        refused.message.contains("max_shards = 5") && refused.message.contains("holds 3"),
        "{}",
        refused.message
    );
    assert!(
        topics.get("b").is_err(),
        "nothing of the refused topic exists"
    );
    // What still fits is accepted, up to the cap exactly.
    topics.create("b", 2, TopicConfig::default()).await.unwrap();
    assert!(topics.create("c", 1, TopicConfig::default()).await.is_err());
    // Deleting frees shards.
    topics.delete("a").await.unwrap();
    topics.create("c", 3, TopicConfig::default()).await.unwrap();
    topics.close().await;
    drop(topics);

    // A lower cap on restart: every topic on disk opens all the same.
    let topics = TopicRegistry::open(config(dir.path(), 2)).unwrap();
    let mut names: Vec<_> = topics
        .list()
        .iter()
        .map(|t| (t.name.clone(), t.shards.len()))
        .collect();
    names.sort();
    assert_eq!(names, [("b".to_string(), 2), ("c".to_string(), 3)]);
    assert!(Arc::new(topics)
        .create("d", 1, TopicConfig::default())
        .await
        .is_err());
}

#[test]
fn max_shards_is_validated() {
    for (max_shards, ok) in [(0, false), (1, true), (4096, true), (2_000_000, false)] {
        let c = Config {
            max_shards,
            ..Config::default()
        };
        assert_eq!(c.validate().is_ok(), ok, "max_shards = {max_shards}");
    }
    assert_eq!(
        Config::default().max_shards,
        weir_broker::config::DEFAULT_MAX_SHARDS
    );
}

#[tokio::test]
async fn segment_bytes_a_log_cannot_open_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let topics = Arc::new(TopicRegistry::open(config(dir.path(), 16)).unwrap());
    let too_big = TopicConfig {
        segment_bytes: 1 << 33,
        ..TopicConfig::default()
    };
    let refused = topics.create("big", 1, too_big).await.unwrap_err();
    assert_eq!(
        refused.code,
        ErrorCode::InvalidConfig,
        "{}",
        refused.message
    );
    assert!(
        refused.message.contains("segment_bytes"),
        "{}",
        refused.message
    );
    topics.close().await;
    drop(topics);

    // A topics.json that holds such a topic stops the start by name, not by a
    // storage error from deep inside a shard.
    let json = r#"{"topics":[{"name":"huge","shards":1,"durability":"interval",
        "flush_interval_ms":1000,"retention_ms":0,"retention_bytes":0,
        "segment_bytes":8589934592,"max_message_bytes":1024}]}"#;
    std::fs::write(dir.path().join("topics.json"), json).unwrap();
    let e = TopicRegistry::open(config(dir.path(), 16)).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidConfig, "{}", e.message);
    assert!(
        e.message.contains("huge") && e.message.contains("segment_bytes"),
        "{}",
        e.message
    );
}

#[test]
fn storage_settings_a_log_cannot_open_with_are_refused_at_start() {
    for (segment, interval, ok) in [
        (1u64 << 20, 4096u32, true),
        (u64::from(u32::MAX), 4096, true),
        (u64::from(u32::MAX) + 1, 4096, false),
        (1 << 20, 0, false),
        (1 << 20, 1023, false),
        (1 << 20, 1024, true),
    ] {
        let c = Config {
            default_segment_bytes: segment,
            index_interval_bytes: interval,
            default_max_message_bytes: 1 << 20,
            ..Config::default()
        };
        let r = c.validate();
        assert_eq!(
            r.is_ok(),
            ok,
            "segment {segment} interval {interval}: {r:?}"
        );
        if let Err(e) = r {
            let e = e.to_string();
            assert!(
                e.contains("default_segment_bytes") || e.contains("index_interval_bytes"),
                "{e}"
            );
        }
    }
}

/// Disk blocks allocated under `dir`, in bytes.
fn allocated_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let md = entry.metadata().unwrap();
        total += if md.is_dir() {
            allocated_bytes(&entry.path())
        } else {
            md.blocks() * 512
        };
    }
    total
}

#[tokio::test]
async fn a_new_topic_reserves_a_step_of_each_segment_not_all_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = Arc::new(Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    });
    let topics = Arc::new(TopicRegistry::open(config).unwrap());
    // The README's quick start: 4 shards of 256 MiB segments.
    topics
        .create("quick", 4, TopicConfig::default())
        .await
        .unwrap();
    let used = allocated_bytes(&dir.path().join("topics/quick"));
    // Per shard: one 16 MiB step of the .log plus its 1.5 MiB of index files.
    let per_shard = (16 << 20) + (3 << 19);
    assert!(
        used <= 4 * per_shard + (1 << 20),
        "4 shards take {used} bytes"
    );
    topics.close().await;
}

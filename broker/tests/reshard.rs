//! Resharding at the registry: the cut every writer makes, what is refused after it,
//! and what a restart keeps. (The end-to-end proof with producers, consumers and a
//! kill -9 is `tests/tests/reshard.rs`.)

use std::sync::Arc;

use bytes::Bytes;
use weir_broker::config::Config;
use weir_broker::shard::{AppendError, Layout};
use weir_broker::topics::TopicRegistry;
use weir_protocol::batch::{BatchBuilder, BatchHeader, NewRecord};
use weir_protocol::messages::TopicConfig;
use weir_protocol::ErrorCode;

fn config(dir: &std::path::Path) -> Arc<Config> {
    Arc::new(Config {
        data_dir: dir.to_path_buf(),
        default_segment_bytes: 64 * 1024,
        default_max_message_bytes: 32 * 1024,
        ..Config::default()
    })
}

fn batch(n: u32) -> (Bytes, BatchHeader) {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        b.push(&NewRecord::value(1, format!("v{i}").as_bytes()))
            .unwrap();
    }
    let bytes = b.finish().unwrap();
    let h = BatchHeader::read(&bytes).unwrap();
    (bytes, h)
}

async fn append(
    topics: &TopicRegistry,
    shard: u32,
    n: u32,
    layout: Layout,
) -> Result<u64, AppendError> {
    let t = topics.get("t").unwrap();
    let (b, h) = batch(n);
    let rx = t.shards[shard as usize]
        .enqueue_in_layout(vec![b], vec![h], false, layout)
        .await?;
    rx.await
        .map_err(|_| AppendError::Closed)?
        .map(|o| o.base_offset)
}

#[tokio::test]
async fn a_reshard_cuts_every_log_at_its_end_refuses_older_appends_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let topics = Arc::new(TopicRegistry::open(config(dir.path())).unwrap());
    topics.create("t", 2, TopicConfig::default()).await.unwrap();
    append(&topics, 0, 5, Layout::Checked(0)).await.unwrap();
    append(&topics, 1, 3, Layout::Checked(0)).await.unwrap();

    // Grow 2 -> 3: the starts are the logs' ends; the new shard starts at 0.
    let r = topics.reshard("t", 3, "operator".into()).await.unwrap();
    assert_eq!((r.epoch, r.from_shards, r.to_shards), (1, 2, 3));
    assert_eq!(r.starts, [5, 3, 0]);
    let t = topics.get("t").unwrap();
    assert_eq!((t.shards.len(), t.active, t.layout_epoch()), (3, 3, 1));
    // An append checked under the old shard count is refused, nothing written.
    assert_eq!(
        append(&topics, 0, 1, Layout::Checked(0)).await.unwrap_err(),
        AppendError::LayoutChanged { current: 1 }
    );
    assert_eq!(append(&topics, 0, 1, Layout::Checked(1)).await.unwrap(), 5);
    assert_eq!(append(&topics, 2, 2, Layout::Checked(1)).await.unwrap(), 0);
    // The broker's own writes are not keyed by the layout.
    assert_eq!(append(&topics, 1, 1, Layout::Any).await.unwrap(), 3);

    // Refusals: the same count, none, too many reshards are named.
    assert_eq!(
        topics
            .reshard("t", 3, "operator".into())
            .await
            .unwrap_err()
            .code,
        ErrorCode::InvalidRequest
    );
    assert_eq!(
        topics
            .reshard("t", 0, "operator".into())
            .await
            .unwrap_err()
            .code,
        ErrorCode::InvalidRequest
    );
    assert_eq!(
        topics
            .reshard("nope", 2, "operator".into())
            .await
            .unwrap_err()
            .code,
        ErrorCode::UnknownTopic
    );

    topics.close().await;
    drop(topics);
    let topics = Arc::new(TopicRegistry::open(config(dir.path())).unwrap());
    let t = topics.get("t").unwrap();
    assert_eq!((t.shards.len(), t.active, t.layout_epoch()), (3, 3, 1));
    assert_eq!(t.reshards[0].starts, [5, 3, 0]);
    // The writers reopen in the recorded epoch.
    assert!(matches!(
        append(&topics, 2, 1, Layout::Checked(0)).await,
        Err(AppendError::LayoutChanged { current: 1 })
    ));
    assert_eq!(append(&topics, 2, 1, Layout::Checked(1)).await.unwrap(), 2);

    // Shrink 3 -> 1: shards 1 and 2 are sealed (still there, never written).
    let r = topics.reshard("t", 1, "operator".into()).await.unwrap();
    assert_eq!((r.epoch, r.from_shards, r.to_shards), (2, 3, 1));
    assert_eq!(r.starts, [6, 4, 3]);
    let t = topics.get("t").unwrap();
    assert_eq!(t.shards.len(), 3);
    assert_eq!(
        t.active_shard(1).unwrap_err().code,
        ErrorCode::LayoutChanged
    );
    assert!(t.active_shard(0).is_ok());
    assert_eq!(t.metadata().reshards.len(), 2);

    // Growing again reuses a sealed shard: its start is where it was sealed.
    let r = topics.reshard("t", 2, "operator".into()).await.unwrap();
    assert_eq!(r.starts, [6, 4, 3]);
    assert_eq!(topics.get("t").unwrap().shards.len(), 3);
    topics.close().await;
}

//! Starts a broker inside this process, creates a topic, produces keyed records and
//! reads them back as a consumer group.
//!
//! Run with: `cargo run -p weir-client --features embedded --example quickstart`

use std::time::Duration;

use weir_client::embedded::EmbeddedBroker;
use weir_client::{Admin, Consumer, OffsetReset, Producer, ProducerRecord, TopicConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("weir-quickstart-{}", std::process::id()));
    let config = weir_broker::Config {
        listen: "127.0.0.1:0".parse()?,
        http: "127.0.0.1:0".parse()?,
        data_dir: dir.clone(),
        ..Default::default()
    };
    let broker = EmbeddedBroker::start(config).await?;
    let client = broker.client().await?;
    Admin::new(client.clone())
        .create_topic("orders", 2, TopicConfig::default())
        .await?;

    let producer = Producer::builder(&client).build().await?;
    for (user, amount) in [("alice", 10), ("bob", 20), ("alice", 5)] {
        let at = producer
            .send_and_wait(ProducerRecord::new("orders", format!("{user} paid {amount}")).key(user))
            .await?;
        println!("stored at shard {} offset {}", at.shard, at.offset);
    }

    let mut consumer = Consumer::builder(&client)
        .group("billing")
        .topic("orders")
        .reset(OffsetReset::Earliest)
        .build()?;
    for m in consumer.poll(10, Duration::from_secs(5)).await? {
        println!(
            "{}/{} {}",
            m.shard,
            m.offset,
            String::from_utf8_lossy(&m.value)
        );
    }
    consumer.commit().await?;
    consumer.close().await?;
    broker.shutdown().await;
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

//! `Consumer::poll_batches` against a real broker: whole batches from the consumer's
//! position (never a record below it, never one twice), positions and commits that
//! move past every returned batch, and `poll` / `poll_batches` mixed on one consumer
//! without losing or repeating a record.

use std::collections::BTreeMap;
use std::time::Duration;

use weir_client::{
    Admin, ConsumedBatch, Consumer, DeliveryOrder, OffsetReset, Producer, ProducerBatch,
    TopicConfig,
};
use weir_tests::over_both_transports;
use weir_tests::transport::SdkBroker;

/// (shard, offset) → value of every message of `batches`, checking each batch's count.
fn collect(batches: &[ConsumedBatch], into: &mut BTreeMap<(u32, u64), String>) {
    for b in batches {
        let msgs: Vec<_> = b.messages().collect();
        assert_eq!(msgs.len(), b.len(), "len() counts what messages() yields");
        assert_eq!(msgs.first().map(|m| m.offset), Some(b.first_offset()));
        assert_eq!(msgs.last().map(|m| m.offset + 1), Some(b.next_offset()));
        for m in msgs {
            assert_eq!(m.shard, b.shard());
            let v = String::from_utf8(m.value.to_vec()).expect("utf8");
            assert!(
                into.insert((m.shard, m.offset), v).is_none(),
                "{}/{} delivered twice",
                m.shard,
                m.offset
            );
        }
    }
}

over_both_transports! {
    async fn poll_batches_hands_out_whole_batches_from_the_position_once(t) {
        let broker = SdkBroker::start(t).await;
        let client = broker.client().await;
        Admin::new(client.clone())
            .create_topic("t", 2, TopicConfig::default())
            .await
            .expect("create");
        let producer = Producer::builder(&client)
            .max_batch_bytes(4096)
            .build()
            .await
            .expect("producer");
        for shard in 0..2 {
            let mut b = ProducerBatch::new("t").shard(shard);
            for i in 0..1000 {
                b.push(format!("{shard}-{i:04}"));
            }
            producer
                .send_batch(b)
                .await
                .expect("queued")
                .await
                .expect("stored");
        }

        let mut consumer = Consumer::builder(&client)
            .group("g")
            .topic("t")
            .reset(OffsetReset::Earliest)
            .fetch_max_wait(Duration::from_millis(100))
            .build()
            .expect("consumer");
        // The first poll joins the group; then start shard 0 inside a stored batch.
        let mut got = BTreeMap::new();
        let first = consumer
            .poll_batches(1, Duration::from_secs(5))
            .await
            .expect("poll");
        assert_eq!(
            first.len(),
            1,
            "max_records 1 still hands out one whole batch"
        );
        collect(&first, &mut got);
        consumer.seek("t", 0, 333).expect("seek");
        got.retain(|(s, _), _| *s != 0);
        // Mixed: a few messages by poll, then the rest by poll_batches.
        for m in consumer
            .poll(7, Duration::from_secs(5))
            .await
            .expect("poll")
        {
            let v = String::from_utf8(m.value.to_vec()).expect("utf8");
            assert!(got.insert((m.shard, m.offset), v).is_none());
        }
        for _ in 0..200 {
            if got.len() >= 2000 - 333 {
                break;
            }
            let batches = consumer
                .poll_batches(300, Duration::from_millis(500))
                .await
                .expect("poll");
            collect(&batches, &mut got);
        }
        let expected: BTreeMap<(u32, u64), String> = (0..2u32)
            .flat_map(|s| {
                let from = if s == 0 { 333 } else { 0 };
                (from..1000u64).map(move |i| ((s, i), format!("{s}-{i:04}")))
            })
            .collect();
        assert_eq!(got, expected, "every record from the positions, once");
        let positions: Vec<u64> = consumer.positions().iter().map(|p| p.offset).collect();
        assert_eq!(positions, vec![1000, 1000]);
        consumer.commit().await.expect("commit");
        consumer.close().await.expect("leave");

        // A fresh member of the group starts after everything returned: nothing left.
        let mut again = Consumer::builder(&client)
            .group("g")
            .topic("t")
            .fetch_max_wait(Duration::from_millis(100))
            .build()
            .expect("consumer");
        let rest = again
            .poll_batches(1000, Duration::from_millis(500))
            .await
            .expect("poll");
        assert!(
            rest.is_empty(),
            "committed positions cover returned batches"
        );

        // Priority order keeps per-message cursors: poll_batches refuses it.
        let mut prio = Consumer::builder(&client)
            .topic("t")
            .order(DeliveryOrder::Priority)
            .build()
            .expect("consumer");
        assert!(prio
            .poll_batches(10, Duration::from_millis(10))
            .await
            .is_err());
    }
}

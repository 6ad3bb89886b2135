//! The SDK's lanes against a real broker: a P3 lane the broker cannot keep up with
//! must not hold back a P0 record sent on the same `Producer` — neither at admission
//! (each class has its own `max_queued_records` pool) nor in the accumulator (a full
//! P3 lane never blocks the hand-off of other lanes' batches) — and the per-record
//! futures `send` returns name the offsets the records were stored at.

use std::collections::HashMap;
use std::time::Duration;

use weir_client::{
    Admin, Backpressure, ClientError, Producer, ProducerConfig, ProducerRecord, TopicConfig,
};
use weir_tests::over_both_transports;
use weir_tests::read_all;
use weir_tests::transport::SdkBroker;

const WAIT: Duration = Duration::from_secs(5);

/// P3 records queued before the P0 one.
const FLOOD: usize = 3000;

over_both_transports! {
    async fn a_saturated_p3_lane_does_not_hold_back_a_p0_send_on_the_same_producer(t) {
        let broker = SdkBroker::start(t).await;
        let client = broker.client().await;
        Admin::new(client.clone())
            .create_topic("lanes", 1, TopicConfig::default())
            .await
            .expect("create");
        // Two 100-byte records per batch and one batch in flight per lane: the P3 lane
        // drains a few records per round trip while the flood arrives at memory speed.
        let producer = Producer::builder(&client)
            .config(ProducerConfig {
                max_batch_bytes: 256,
                max_in_flight_per_shard: 1,
                adaptive_in_flight: false,
                max_queued_records: FLOOD,
                backpressure: Backpressure::FailFast,
                ..Default::default()
            })
            .build()
            .await
            .expect("producer");
        producer
            .send_and_wait(ProducerRecord::new("lanes", vec![0u8; 100]).priority(10))
            .await
            .expect("topic known");

        let mut p3 = Vec::with_capacity(FLOOD);
        for i in 0..FLOOD {
            let mut value = vec![0u8; 100];
            value[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let rec = ProducerRecord::new("lanes", value).priority(10);
            match producer.send(rec).await {
                Ok(f) => p3.push(f),
                Err(e) => panic!("P3 record {i} refused: {e}"),
            }
        }
        // The P3 pool is (nearly) used up, and the P3 lane has hundreds of batches
        // waiting. A P0 record takes from its own pool and its batch leaves at once.
        let p0 = producer
            .send(ProducerRecord::new("lanes", b"urgent".to_vec()).priority(1))
            .await
            .unwrap_or_else(|e: ClientError| panic!("P0 send refused behind the P3 flood: {e}"))
            .await
            .expect("P0 stored");
        // Stored ahead of most of the flood queued before it (before lanes were
        // isolated, the P0 record left only after all but the last few P3 batches).
        assert!(
            p0.offset < 1 + FLOOD as u64 / 2,
            "P0 stored at offset {} behind the P3 backlog",
            p0.offset
        );

        // Every P3 record is stored once, in send order, at the offset its future names.
        let mut offsets = Vec::with_capacity(FLOOD);
        for f in p3 {
            offsets.push(f.await.expect("P3 stored").offset);
        }
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "P3 order kept");
        assert!(!offsets.contains(&p0.offset));
        let stored = read_all(&client, "lanes", FLOOD + 2, WAIT * 6).await;
        assert_eq!(stored.len(), FLOOD + 2);
        let by_offset: HashMap<u64, &[u8]> = stored.iter().map(|m| (m.offset, &m.value[..])).collect();
        for (i, off) in offsets.iter().enumerate() {
            let value = by_offset.get(off).expect("named offset stored");
            assert_eq!(value[..8], (i as u64).to_le_bytes(), "record {i} at {off}");
        }
        assert_eq!(by_offset.get(&p0.offset).copied(), Some(&b"urgent"[..]));
    }
}

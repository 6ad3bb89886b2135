//! Load agents against a real broker, over both transports: records produced to one shard of a
//! two-shard topic show up in that shard's LoadHistory samples (and fetched ones as
//! egress), the idle shard stays at zero, the node series carries process figures,
//! the forecast names a model, and a bad resolution is a named error that leaves the
//! broker serving.

use std::time::{Duration, Instant};

use weir_client::{Admin, ClientError, Producer, ProducerBatch, TopicConfig};
use weir_protocol::ErrorCode;
use weir_tests::over_both_transports;
use weir_tests::read_to_end;
use weir_tests::transport::SdkBroker;

const WAIT: Duration = Duration::from_secs(30);

over_both_transports! {
    async fn produced_and_fetched_records_show_in_the_shards_history(t) {
        let broker = SdkBroker::start(t).await;
        let client = broker.client().await;
        let admin = Admin::new(client.clone());
        admin
            .create_topic("load", 2, TopicConfig::default())
            .await
            .expect("create");
        let producer = Producer::builder(&client).build().await.expect("producer");
        const RECORDS: u64 = 6_000;
        // Spread over several seconds so more than one sample sees traffic.
        for _ in 0..6 {
            let mut batch = ProducerBatch::with_capacity("load", 1000).shard(0);
            for _ in 0..1000 {
                batch.push(vec![b'v'; 100]);
            }
            producer
                .send_batch(batch)
                .await
                .expect("send")
                .await
                .expect("ack");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let read = read_to_end(&client, "load", WAIT).await;
        assert_eq!(read.len() as u64, RECORDS);

        // Poll (bounded) until the samples account for what was produced and fetched.
        let deadline = Instant::now() + WAIT;
        let (shard0, shard1, h) = loop {
            let h = admin.load_history("load", 1, 0).await.expect("history");
            let of = |s: u32| h.shards.iter().find(|x| x.shard == s).cloned();
            if let (Some(a), Some(b)) = (of(0), of(1)) {
                let ins: u64 = a.samples.iter().map(|s| s.records_in_per_s).sum();
                let outs: u64 = a.samples.iter().map(|s| s.records_out_per_s).sum();
                if ins >= RECORDS / 3 && outs >= RECORDS / 3 {
                    break (a, b, h);
                }
            }
            assert!(
                Instant::now() < deadline,
                "history never showed the records: {h:?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        let ins: u64 = shard0.samples.iter().map(|s| s.records_in_per_s).sum();
        // Rates are per measured second; summed, they come to the records produced give or
        // take the sampling intervals' jitter.
        assert!(
            ins <= 3 * RECORDS,
            "{ins} records/s summed for {RECORDS} produced"
        );
        assert!(shard0
            .samples
            .iter()
            .any(|s| s.bytes_in_per_s >= 100 * s.records_in_per_s && s.records_in_per_s > 0));
        assert!(shard0.samples.iter().all(|s| s.queued.len() == 4));
        // Seconds with appends have a lane-wait percentile (at least the first bucket's
        // bound, 100 us); seconds without have none.
        assert!(shard0.samples.iter().any(|s| s.queue_wait_us_p99 >= 100));
        assert!(shard1.samples.iter().all(|s| s.queue_wait_us_p99 == 0));
        assert!(
            shard0.samples.windows(2).all(|w| w[0].at_s < w[1].at_s),
            "oldest first"
        );
        assert!(
            shard1
                .samples
                .iter()
                .all(|s| s.records_in_per_s == 0 && s.records_out_per_s == 0),
            "the idle shard saw traffic: {shard1:?}"
        );
        assert_eq!(shard0.forecast.horizon_s, 60);
        assert!(!shard0.forecast.model.is_empty());
        assert!(!h.node.is_empty());
        let node_in: u64 = h.node.iter().map(|s| s.records_in_per_s).sum();
        assert!(node_in >= RECORDS / 3, "node ingest {node_in}");
        assert!(h.node.iter().all(|s| s.resident_bytes > 0));
        assert!(h.node.iter().any(|s| s.produce_latency_us_p99 > 0));

        // max_samples bounds each series; the minute resolution answers too.
        let two = admin.load_history("", 1, 2).await.expect("history");
        assert!(two.node.len() <= 2 && two.shards.iter().all(|s| s.samples.len() <= 2));
        assert_eq!(two.shards.len(), 2);
        admin.load_history("load", 60, 0).await.expect("minutes");
        let other = admin
            .load_history("nope", 1, 0)
            .await
            .expect("no such topic");
        assert!(other.shards.is_empty());

        // A bad resolution is refused by name; the broker keeps serving.
        match admin.load_history("load", 7, 0).await {
            Err(ClientError::Broker { code, .. }) => assert_eq!(code, ErrorCode::InvalidRequest),
            other => panic!("expected INVALID_REQUEST, got {other:?}"),
        }
        admin
            .load_history("load", 1, 1)
            .await
            .expect("still serving");
    }
}

over_both_transports! {
    /// With load-aware routing on, keyless records avoid the shard another producer keeps
    /// busy; every record is still acknowledged and stored once.
    async fn keyless_records_avoid_a_busy_shard_with_load_aware_routing(t) {
        let broker = SdkBroker::start(t).await;
        let client = broker.client().await;
        let admin = Admin::new(client.clone());
        admin
            .create_topic("routed", 2, TopicConfig::default())
            .await
            .expect("create");
        // Shard 0 is kept busy by a pinned producer for the whole test.
        let busy = Producer::builder(&client).build().await.expect("producer");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let hot = tokio::spawn(async move {
            let mut rounds = 0u32;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) && rounds < 2_000 {
                rounds += 1;
                let mut batch = ProducerBatch::with_capacity("routed", 500).shard(0);
                for _ in 0..500 {
                    batch.push(vec![b'h'; 100]);
                }
                busy.send_batch(batch)
                    .await
                    .expect("send")
                    .await
                    .expect("ack");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        // Wait (bounded) until the broker reports shard 0 busy.
        let deadline = Instant::now() + WAIT;
        loop {
            let h = admin.load_history("routed", 1, 1).await.expect("history");
            let busy = |s: &weir_protocol::messages::ShardLoadHistory| {
                s.shard == 0 && s.samples.last().is_some_and(|x| x.records_in_per_s > 1000)
            };
            if h.shards.iter().any(busy) {
                break;
            }
            assert!(Instant::now() < deadline, "shard 0 never looked busy");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let routed = Producer::builder(&client)
            .config(weir_client::ProducerConfig {
                load_aware_routing: Some(Duration::from_millis(200)),
                ..Default::default()
            })
            .build()
            .await
            .expect("producer");
        // The first send learns the topic; give the refresher a period to read loads.
        routed
            .send_and_wait(weir_client::ProducerRecord::new("routed", "warm"))
            .await
            .expect("warm");
        tokio::time::sleep(Duration::from_millis(600)).await;
        let mut on = [0u32; 2];
        for i in 0..200 {
            let m = routed
                .send_and_wait(weir_client::ProducerRecord::new("routed", format!("k{i}")))
                .await
                .expect("send");
            on[m.shard as usize] += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        hot.await.expect("hot producer");
        // Without routing, rotation would put half on each shard.
        assert!(on[1] >= 180, "keyless records per shard: {on:?}");
    }
}

//! The idempotent producer across forced disconnects: a proxy between producer and
//! broker drops the connection several times mid-stream, so batches are written but
//! their acks are lost and the producer re-sends them on a new connection. The topic
//! must end up with every record exactly once, in send order per shard.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use weir_client::{Acks, Admin, Producer, ProducerRecord};
use weir_tests::over_both_transports;
use weir_tests::transport::SdkBroker;
use weir_tests::{read_all, BehindProxy};

const TOPIC: &str = "payments";
const SHARDS: u32 = 3;
const RECORDS: usize = 4000;
const CHUNK: usize = 40;
const CUTS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_after_disconnects_write_no_duplicates() {
    let BehindProxy {
        broker: _broker,
        direct,
        proxy,
        client,
    } = BehindProxy::start(TOPIC, SHARDS).await;
    let producer = Producer::builder(&client)
        .acks(Acks::Leader)
        .linger(Duration::from_millis(1))
        .max_batch_bytes(1024)
        .retries(20)
        .retry_backoff(Duration::from_millis(20))
        .build()
        .await
        .expect("producer");

    let send = {
        let producer = producer.clone();
        tokio::spawn(async move {
            let mut futures = Vec::with_capacity(RECORDS);
            for i in 0..RECORDS {
                let rec = ProducerRecord::new(TOPIC, format!("{i:06}")).key(format!("k{}", i % 11));
                futures.push(producer.send(rec).await.expect("send"));
                if i % CHUNK == CHUNK - 1 {
                    // Paced so the cuts below land while batches are in flight.
                    tokio::time::sleep(Duration::from_millis(8)).await;
                }
            }
            futures
        })
    };
    let mut cuts = 0;
    for _ in 0..CUTS {
        tokio::time::sleep(Duration::from_millis(90)).await;
        if send.is_finished() {
            break;
        }
        proxy.cut();
        cuts += 1;
    }
    let futures = send.await.expect("sender task");
    assert!(
        cuts >= 4,
        "only {cuts} cuts landed during the send; slow the sender down"
    );

    let mut acked: BTreeMap<(u32, u64), String> = BTreeMap::new();
    for (i, f) in futures.into_iter().enumerate() {
        let md = tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("ack in time")
            .unwrap_or_else(|e| panic!("record {i} not acknowledged: {e}"));
        let prev = acked.insert((md.shard, md.offset), format!("{i:06}"));
        assert!(
            prev.is_none(),
            "records {prev:?} and {i} acked at the same offset {md:?}"
        );
    }
    assert!(
        proxy.connections() > 1,
        "the producer reconnected after the cuts"
    );

    let messages = read_all(&direct, TOPIC, RECORDS, Duration::from_secs(30)).await;
    let mut values = HashSet::new();
    for m in &messages {
        let v = String::from_utf8(m.value.to_vec()).expect("utf8");
        assert!(values.insert(v.clone()), "record {v} stored twice");
    }
    assert_eq!(messages.len(), RECORDS, "exactly every record once");
    for shard in 0..SHARDS {
        let vs: Vec<&str> = messages
            .iter()
            .filter(|m| m.shard == shard)
            .map(|m| std::str::from_utf8(&m.value).expect("utf8"))
            .collect();
        assert!(
            vs.windows(2).all(|w| w[0] < w[1]),
            "shard {shard} out of send order"
        );
    }
    let stored: BTreeMap<(u32, u64), String> = messages
        .iter()
        .map(|m| {
            (
                (m.shard, m.offset),
                String::from_utf8(m.value.to_vec()).expect("utf8"),
            )
        })
        .collect();
    assert_eq!(
        stored, acked,
        "every ack names the offset its record is stored at"
    );
}

over_both_transports! {
    /// `ProducerBuilder::resume`: a producer continuing an id gets the next epoch of it,
    /// and the instance it continues is fenced on the shard both wrote to.
    async fn a_resumed_producer_id_fences_the_older_instance(t) {
        let broker = SdkBroker::start(t).await;
        let client = broker.client().await;
        Admin::new(client.clone())
            .create_topic("resumed", 1, Default::default())
            .await
            .expect("create topic");
        let first = Producer::builder(&client).build().await.expect("producer");
        let (id, epoch) = first.identity().await.expect("idempotent");
        first
            .send_and_wait(ProducerRecord::new("resumed", "one"))
            .await
            .expect("stored");
        let second = Producer::builder(&client)
            .resume(id, epoch)
            .build()
            .await
            .expect("producer");
        assert_eq!(second.identity().await, Some((id, epoch + 1)));
        second
            .send_and_wait(ProducerRecord::new("resumed", "two"))
            .await
            .expect("stored");
        let fenced = first
            .send_and_wait(ProducerRecord::new("resumed", "three"))
            .await
            .expect_err("the older instance is fenced");
        assert_eq!(
            fenced.code(),
            Some(weir_protocol::ErrorCode::ProducerFenced),
            "{fenced}"
        );
        // Fenced for good: the older instance does not take a new epoch back (which would
        // fence the newer one in turn), so it keeps failing and the newer keeps working.
        let again = first
            .send_and_wait(ProducerRecord::new("resumed", "four"))
            .await
            .expect_err("the older instance stays fenced");
        assert_eq!(
            again.code(),
            Some(weir_protocol::ErrorCode::ProducerFenced),
            "{again}"
        );
        second
            .send_and_wait(ProducerRecord::new("resumed", "five"))
            .await
            .expect("the newer instance is not fenced back");
        assert_eq!(second.identity().await, Some((id, epoch + 1)));
    }
}

over_both_transports! {
    /// An idempotent producer keeps at most the broker's window of batches in flight
    /// per lane (`batch::IDEMPOTENT_WINDOW`): past it, a retry of a stored batch would
    /// not be recognised (the broker remembers a lane's last five) and would be stored
    /// again under a new epoch. A producer without idempotence may keep more.
    async fn an_idempotent_producer_keeps_no_more_in_flight_than_the_broker_remembers(t) {
        let broker = SdkBroker::start(t).await;
        let client = broker.client().await;
        let window = weir_protocol::batch::IDEMPOTENT_WINDOW;
        for fixed in [false, true] {
            let b = Producer::builder(&client);
            let b = if fixed {
                b.fixed_in_flight_per_shard(window + 1)
            } else {
                b.max_in_flight_per_shard(window + 1)
            };
            match b.build().await {
                Err(weir_client::ClientError::Invalid(m)) => {
                    assert!(m.contains("at most 5"), "{m}")
                }
                Err(e) => panic!("refused for the wrong reason: {e}"),
                Ok(_) => panic!("{} in flight accepted for an idempotent producer", window + 1),
            }
        }
        Producer::builder(&client)
            .max_in_flight_per_shard(window)
            .build()
            .await
            .expect("the window itself");
        Producer::builder(&client)
            .idempotent(false)
            .max_in_flight_per_shard(window + 1)
            .build()
            .await
            .expect("more without idempotence");
    }
}

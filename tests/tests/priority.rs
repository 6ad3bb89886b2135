//! Priority classes against a real broker process: a P3 flood saturates one shard and
//! P0 batches still overtake the P3 backlog; a P0 answer overtakes P3 answers queued on
//! the same connection; priority-ordered reads; unset metadata gets the topic's
//! defaults.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use weir_client::{Admin, Client};
use weir_protocol::batch::{BatchBuilder, BatchHeader, NewRecord, UNSET};
use weir_protocol::messages::{Durability, TopicConfig};
use weir_protocol::{ErrorCode, ResponseBody};
use weir_tests::over_both_transports;
use weir_tests::transport::SdkBroker;
use weir_tests::{connect, produce_raw as produce, read_all, BrokerProcess};

/// One single-batch produce: `records` records of `size` bytes at `priority`.
fn batch(priority: u8, records: usize, size: usize) -> bytes::Bytes {
    batch_at(priority, records, size, 0)
}

/// [`batch`] with every record stamped `timestamp_ms`.
fn batch_at(priority: u8, records: usize, size: usize, timestamp_ms: i64) -> bytes::Bytes {
    let value = vec![b'x'; size];
    let mut b = BatchBuilder::with_capacity(records * (size + 32) + 64);
    for _ in 0..records {
        let mut r = NewRecord::value(timestamp_ms, &value);
        r.priority = priority;
        b.push(&r).unwrap();
    }
    b.finish().unwrap()
}

/// Milliseconds since the Unix epoch, as record timestamps count them.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

over_both_transports! {
    async fn p0_produces_overtake_a_saturating_p3_backlog(t) {
        // Small groups (4 P3 batches each) so the writer's queue, not one huge group, holds
        // the backlog.
        let broker = SdkBroker::start_with_env(t, &[("WEIR_SHARD_GROUP_BYTES_MAX", "262144")]).await;
        let admin_client = broker.client().await;
        Admin::new(admin_client.clone())
            .create_topic(
                "mixed",
                1,
                TopicConfig {
                    // Every group is flushed: the writer is the bottleneck, so the P3 lane
                    // holds a backlog for the whole run.
                    durability: Durability::Always,
                    ..Default::default()
                },
            )
            .await
            .expect("create topic");

        // (send time, base offset) of every acknowledged P3 batch.
        let p3_acks: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut flooders = Vec::new();
        for _ in 0..6 {
            let client = broker.client().await;
            let acks = p3_acks.clone();
            let stop = stop.clone();
            flooders.push(tokio::spawn(async move {
                let body = batch(10, 64, 1024);
                let mut in_flight = FuturesUnordered::new();
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    while !stop.load(Ordering::Relaxed) && in_flight.len() < 16 {
                        let client = client.clone();
                        let body = body.clone();
                        in_flight.push(async move {
                            let sent = Instant::now();
                            (sent, produce(&client, "mixed", body).await)
                        });
                    }
                    match in_flight.next().await {
                        Some((sent, Ok(offset))) => acks.lock().unwrap().push((sent, offset)),
                        Some((_, Err(e))) => panic!("P3 produce failed: {e}"),
                        None => break,
                    }
                    assert!(Instant::now() < deadline, "flood did not stop");
                }
            }));
        }

        // Let the backlog build, then send P0 batches one at a time.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let p0_client = broker.client().await;
        let mut p0 = Vec::new();
        for _ in 0..20 {
            let sent = Instant::now();
            let offset = produce(&p0_client, "mixed", batch(1, 1, 100))
                .await
                .expect("P0 produce");
            p0.push((sent, offset, sent.elapsed()));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for f in flooders {
            f.await.expect("flooder");
        }

        // A P0 batch overtook every P3 batch that was sent before it but stored after it.
        let p3 = p3_acks.lock().unwrap().clone();
        assert!(
            p3.len() > 200,
            "the flood was too small to matter: {}",
            p3.len()
        );
        let mut overtaken_total = 0;
        let mut overtook_backlog = 0;
        for (sent, offset, _) in &p0 {
            let overtaken = p3.iter().filter(|(s, o)| s < sent && o > offset).count();
            overtaken_total += overtaken;
            if overtaken >= 8 {
                overtook_backlog += 1;
            }
        }
        let mut p0_latency: Vec<Duration> = p0.iter().map(|p| p.2).collect();
        p0_latency.sort();
        eprintln!(
            "P3 batches acked: {}; P0 batches that overtook >= 8 queued P3 batches: {overtook_backlog}/20 \
             (P3 batches overtaken in total: {overtaken_total}); P0 ack latency median {:?}, max {:?}",
            p3.len(),
            p0_latency[10],
            p0_latency[19]
        );
        assert!(
            overtook_backlog >= 15,
            "P0 batches did not overtake the P3 backlog: {overtook_backlog}/20"
        );

        // Nothing acknowledged was lost: every acked offset is readable, with its class.
        let expected = p3.len() * 64 + p0.len();
        let msgs = read_all(&admin_client, "mixed", expected, Duration::from_secs(60)).await;
        assert_eq!(msgs.len(), expected);
        for (_, offset, _) in &p0 {
            let m = msgs
                .iter()
                .find(|m| m.offset == *offset)
                .expect("P0 stored");
            assert_eq!(m.priority, 1);
        }
    }
}

over_both_transports! {
    async fn unset_metadata_gets_topic_defaults_and_keys_come_from_the_rule(t) {
        let broker = SdkBroker::start(t).await;
        let client = broker.client().await;
        let admin = Admin::new(client.clone());
        admin
            .create_topic(
                "jobs",
                1,
                TopicConfig {
                    default_priority: 2,
                    default_complexity: 4,
                    shard_key_rule: "json:user_id".into(),
                    ..Default::default()
                },
            )
            .await
            .expect("create topic");
        let mut b = BatchBuilder::new();
        let mut unset = NewRecord::value(0, br#"{"user_id":"u-9","job":1}"#);
        unset.priority = UNSET;
        unset.complexity = UNSET;
        b.push(&unset).unwrap();
        let mut set = NewRecord::value(0, br#"{"job":2}"#);
        set.priority = 7;
        set.complexity = 1;
        b.push(&set).unwrap();
        produce(&client, "jobs", b.finish().unwrap())
            .await
            .expect("produce");
        let msgs = read_all(&client, "jobs", 2, Duration::from_secs(10)).await;
        assert_eq!((msgs[0].priority, msgs[0].complexity), (2, 4));
        assert_eq!(&msgs[0].key[..], b"u-9");
        assert_eq!((msgs[1].priority, msgs[1].complexity), (7, 1));
        assert!(msgs[1].key.is_empty());

        // Bad settings and out-of-range values are named errors, never clamped.
        let bad = admin
            .create_topic(
                "bad",
                1,
                TopicConfig {
                    shard_key_rule: "xml:a".into(),
                    ..Default::default()
                },
            )
            .await
            .expect_err("bad rule accepted");
        assert_eq!(bad.code(), Some(ErrorCode::InvalidConfig));
        let mut raw = batch(5, 1, 10).to_vec();
        raw[60 + 4] = 11; // first record's priority
        raw[22] = 5;
        let crc = weir_protocol::batch::compute_crc(&raw);
        raw[16..20].copy_from_slice(&crc.to_le_bytes());
        let err = produce(&client, "jobs", raw.into()).await.unwrap_err();
        assert!(err.contains("INVALID_RECORD"), "{err}");
    }
}

over_both_transports! {
    async fn a_priority_ordered_consumer_gets_p0_ahead_of_a_p3_backlog_and_everything_once(t) {
        use weir_client::{Consumer, DeliveryOrder, OffsetReset};

        let broker = SdkBroker::start(t).await;
        let client = broker.client().await;
        Admin::new(client.clone())
            .create_topic("lanes", 1, TopicConfig::default())
            .await
            .expect("create topic");
        // 200 P3 batches of 60 records, then 5 P0 batches of 2 records, then 50 more P3.
        // 12,000 records before the first P0 one: more than the broker indexes inline, so
        // the first read also takes the class index's catch-up on the blocking pool.
        for _ in 0..200 {
            produce(&client, "lanes", batch(10, 60, 20)).await.unwrap();
        }
        for _ in 0..5 {
            produce(&client, "lanes", batch(1, 2, 100)).await.unwrap();
        }
        for _ in 0..50 {
            produce(&client, "lanes", batch(9, 10, 100)).await.unwrap();
        }
        let total = 200 * 60 + 5 * 2 + 50 * 10;

        let mut consumer = Consumer::builder(&client)
            .topic("lanes")
            .group("lane-readers")
            .reset(OffsetReset::Earliest)
            .order(DeliveryOrder::Priority)
            .build()
            .unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.len() < total && Instant::now() < deadline {
            got.extend(consumer.poll(100, Duration::from_secs(1)).await.unwrap());
        }
        assert_eq!(got.len(), total, "every record once");
        let mut offsets: Vec<u64> = got.iter().map(|m| m.offset).collect();
        offsets.sort();
        offsets.dedup();
        assert_eq!(offsets.len(), total, "no record twice");
        // The P0 records, stored after 12,000 P3 records, come within the first response.
        let first_p0 = got.iter().position(|m| m.priority == 1).unwrap();
        let last_p0 = got.iter().rposition(|m| m.priority == 1).unwrap();
        assert!(
            last_p0 < 200,
            "P0 records delivered at {first_p0}..={last_p0} of {total}"
        );
        // Within a class, offset order holds.
        for class in [1u8, 9, 10] {
            let o: Vec<u64> = got
                .iter()
                .filter(|m| m.priority == class)
                .map(|m| m.offset)
                .collect();
            assert!(
                o.windows(2).all(|w| w[0] < w[1]),
                "class {class} out of order"
            );
        }
        // Once everything was returned, the committed position is the end of the shard.
        consumer.commit().await.unwrap();
        let pos = consumer.positions();
        assert_eq!(pos[0].offset, total as u64);
    }
}

over_both_transports! {
    async fn a_reader_far_behind_on_p3_still_gets_fresh_p0_data_first(t) {
        use weir_protocol::messages::{PriorityFetchRequest, PriorityFetchResponse};

        // P3's aging threshold at 2 s (default 800 ms), so the steps that must fall
        // inside one period have room on a slow machine.
        let broker =
            SdkBroker::start_with_env(t, &[("WEIR_PRIORITY_AGING_MS", "100,200,400,2000")]).await;
        let client = broker.client().await;
        Admin::new(client.clone())
            .create_topic("behind", 1, TopicConfig::default())
            .await
            .expect("create topic");
        // A P3 backlog a minute older than the P0 data after it: what a priority reader
        // sees when it has fallen a minute behind a P3 flood (every P3 batch is overdue).
        // 40 batches of 10 × 100 B, about 1.2 KB each.
        let now_ms = now_ms();
        for _ in 0..40 {
            produce(&client, "behind", batch_at(10, 10, 100, now_ms - 60_000))
                .await
                .unwrap();
        }
        for _ in 0..2 {
            produce(&client, "behind", batch_at(1, 2, 100, now_ms)).await.unwrap();
        }
        // A second priority reader of the shard, on its own connection.
        let other = broker.client().await;
        let fetch_by = |client: &Client, cursors: Vec<u64>, min_bytes: u32, wait_ms: u32| {
            let client = client.clone();
            async move {
                let req = PriorityFetchRequest {
                    topic: "behind".into(),
                    shard: 0,
                    cursors,
                    max_bytes: 8 * 1024,
                    min_bytes,
                    max_wait_ms: wait_ms,
                };
                match client.call(req).await.expect("priority fetch") {
                    ResponseBody::PriorityFetch(r) => r,
                    other => panic!("unexpected {:?}", other.api_key()),
                }
            }
        };
        let fetch = |cursors, min_bytes, wait_ms| fetch_by(&client, cursors, min_bytes, wait_ms);
        let priorities = |r: &PriorityFetchResponse| -> Vec<u8> {
            r.records
                .batches()
                .map(|b| BatchHeader::read(&b.unwrap()).unwrap().priority)
                .collect()
        };
        // The first answer: one aged P3 batch (aging still moves the backlog), then
        // the P0 data; the rest of the 8 KiB is P3 by weight. Had every overdue P3
        // batch gone first, 8 KiB of P3 would fill the answer and P0 would wait for
        // the whole backlog.
        let r = fetch(vec![0; 4], 1, 0).await;
        let first_at = Instant::now();
        let p = priorities(&r);
        let mut seen = p.len();
        assert_eq!(&p[..3], &[10, 1, 1], "answer's batches by priority: {p:?}");
        assert!(p[3..].iter().all(|&x| x == 10), "{p:?}");
        assert_eq!(r.cursors[0], 404, "the P0 lane read to the end: {:?}", r.cursors);
        // Aging periods are per reader: the other reader, as far behind, gets its own
        // aged P3 batch first, within the period the first reader just used.
        let o = fetch_by(&other, vec![0; 4], 1, 0).await;
        let op = priorities(&o);
        assert_eq!(&op[..3], &[10, 1, 1], "other reader's answer: {op:?}");
        // Within P3's aging period the lane gets no second aged pick: new P0 data goes
        // ahead of the rest of the backlog at once.
        produce(&client, "behind", batch_at(1, 2, 100, now_ms)).await.unwrap();
        let r = fetch(r.cursors.clone(), 1, 0).await;
        let p = priorities(&r);
        assert!(first_at.elapsed() < Duration::from_secs(2), "too slow for the test");
        assert_eq!(p[0], 1, "fresh P0 first, no aged P3 ahead of it: {p:?}");
        seen += p.len();
        // After the period P3 ages again, and the answers a long-poll assembles and
        // drops while it waits for `min_bytes` do not use the pick up: the answer it
        // sends at its deadline starts with the aged P3 batch, ahead of fresh P1 data.
        tokio::time::sleep(Duration::from_millis(2_200).saturating_sub(first_at.elapsed())).await;
        produce(&client, "behind", batch_at(4, 2, 100, now_ms)).await.unwrap();
        let r = fetch(r.cursors.clone(), 10 << 20, 300).await;
        let p = priorities(&r);
        assert_eq!(&p[..2], &[10, 4], "aged P3, then P1: {p:?}");
        seen += p.len();
        // Every batch comes exactly once over the reads.
        let mut cursors = r.cursors.clone();
        for _ in 0..100 {
            let r = fetch(cursors.clone(), 1, 0).await;
            if r.records.batches().count() == 0 {
                break;
            }
            seen += r.records.batches().count();
            cursors = r.cursors.clone();
        }
        assert_eq!(seen, 40 + 3 + 1, "each of the 44 batches once");
    }
}

/// A one-shard `topic` holding one P3 batch at `p3_at` among 21 batches, the others
/// P0, all of one size and fresh (no aging).
async fn one_p3_among_p0(client: &Client, topic: &str, p3_at: usize) {
    Admin::new(client.clone())
        .create_topic(topic, 1, TopicConfig::default())
        .await
        .expect("create topic");
    let ts = now_ms();
    for i in 0..21 {
        let priority = if i == p3_at { 10 } else { 1 };
        produce(client, topic, batch_at(priority, 1, 100, ts))
            .await
            .unwrap();
    }
}

/// Reads `topic` to its end with PriorityFetch answers of at most `max_bytes`, each
/// expected to hold one batch; `seek` may move the cursors before answer `n`. The
/// priorities of the batches in the order read.
async fn read_by_answers(
    client: &Client,
    topic: &str,
    max_bytes: u32,
    seek: impl Fn(usize, &mut Vec<u64>),
) -> Vec<u8> {
    use weir_protocol::messages::PriorityFetchRequest;
    let mut cursors = vec![0u64; 4];
    let mut order = Vec::new();
    for answer in 0..40 {
        seek(answer, &mut cursors);
        let req = PriorityFetchRequest {
            topic: topic.into(),
            shard: 0,
            cursors: cursors.clone(),
            max_bytes,
            min_bytes: 1,
            max_wait_ms: 0,
        };
        let r = match client.call(req).await.expect("priority fetch") {
            ResponseBody::PriorityFetch(r) => r,
            other => panic!("unexpected {:?}", other.api_key()),
        };
        let batches: Vec<_> = r.records.batches().map(|b| b.unwrap()).collect();
        if batches.is_empty() {
            break;
        }
        assert_eq!(batches.len(), 1, "{topic}");
        order.push(BatchHeader::read(&batches[0]).unwrap().priority);
        cursors = r.cursors.clone();
    }
    assert_eq!(order.len(), 21, "{topic}: every batch once: {order:?}");
    order
}

over_both_transports! {
    async fn a_low_class_keeps_its_weighted_share_across_a_readers_answers(t) {
        let broker = SdkBroker::start(t).await;
        let client = broker.client().await;
        let size = batch_at(10, 1, 100, 0).len() as u32;
        let p3_at = |order: &[u8]| order.iter().position(|&p| p == 10);
        // Answers of one batch each, P0 filling every answer, so only weights that hold
        // across answers let P3 in before P0 runs out: with weights 8:1 and equal sizes
        // P3's batch is the 9th; a queue started afresh for every answer would put it
        // last, 21st. `max_bytes` 1 ends each answer after its first batch (the first
        // always fits); 1.5 batches ends it at a second batch that does not fit, which
        // must keep its place for the next answer.
        for (topic, max_bytes) in [("share", 1), ("share-cut", size * 3 / 2)] {
            one_p3_among_p0(&client, topic, 0).await;
            let order = read_by_answers(&client, topic, max_bytes, |_, _| {}).await;
            assert_eq!(p3_at(&order), Some(8), "{topic}: P3 after 8 P0 batches: {order:?}");
        }
        // A lane that does not resume where the last answer left it (here P3's cursor
        // moved from 0 to its batch's own offset before the 5th answer, as a seek would)
        // starts afresh: its place from the first answers is gone, and P3 comes 13th.
        one_p3_among_p0(&client, "share-seek", 1).await;
        let seek = |answer: usize, cursors: &mut Vec<u64>| {
            if answer == 4 {
                assert_eq!(cursors[3], 0, "P3 not read yet");
                cursors[3] = 1;
            }
        };
        let order = read_by_answers(&client, "share-seek", 1, seek).await;
        assert_eq!(p3_at(&order), Some(12), "P3 after 12 P0 batches: {order:?}");
    }
}

over_both_transports! {
    async fn a_long_poll_waiting_on_p3_data_is_cut_short_by_p0_data(t) {
        use weir_protocol::messages::PriorityFetchRequest;

        let broker = SdkBroker::start(t).await;
        let client = broker.client().await;
        Admin::new(client.clone())
            .create_topic("poll", 1, TopicConfig::default())
            .await
            .expect("create topic");
        produce(&client, "poll", batch(10, 5, 100)).await.unwrap();
        let fetch = |client: Client| async move {
            let req = PriorityFetchRequest {
                topic: "poll".into(),
                shard: 0,
                cursors: vec![0; 4],
                max_bytes: 1 << 20,
                // Far more than will ever arrive: only P0 data or the deadline ends the wait.
                min_bytes: 10 << 20,
                max_wait_ms: 8_000,
            };
            let started = Instant::now();
            match client.call(req).await.expect("priority fetch") {
                ResponseBody::PriorityFetch(r) => (started.elapsed(), r),
                other => panic!("unexpected {:?}", other.api_key()),
            }
        };
        // Without P0 data, the long-poll holds the P3 data until its deadline.
        let (waited, r) = fetch(client.clone()).await;
        assert!(
            waited >= Duration::from_millis(7_500),
            "returned after {waited:?}"
        );
        assert_eq!(r.records.batches().count(), 1);

        // With P0 data arriving 300 ms in, it returns at once, P0 first.
        let poller = tokio::spawn(fetch(client.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        produce(&client, "poll", batch(1, 1, 100)).await.unwrap();
        let (waited, r) = poller.await.unwrap();
        assert!(
            waited < Duration::from_secs(4),
            "P0 did not cut the wait: {waited:?}"
        );
        let batches: Vec<_> = r.records.batches().map(|b| b.unwrap()).collect();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0][22], 1, "the P0 batch comes first");
        // Every lane has read up to the high-water mark.
        assert_eq!(r.cursors, vec![6, 6, 6, 6]);
    }
}

over_both_transports! {
    async fn a_produce_request_mixing_classes_is_refused_whole(t) {
        let broker = SdkBroker::start(t).await;
        let client = broker.client().await;
        Admin::new(client.clone())
            .create_topic("mixed-req", 1, TopicConfig::default())
            .await
            .expect("create topic");
        let mut two = batch(1, 1, 10).to_vec();
        two.extend_from_slice(&batch(10, 1, 10));
        let err = produce(&client, "mixed-req", two.into()).await.unwrap_err();
        assert!(
            err.contains("INVALID_BATCH") && err.contains("one priority class"),
            "{err}"
        );
        // Two batches of one class are fine, and nothing of the refused request was stored.
        let mut same = batch(9, 1, 10).to_vec();
        same.extend_from_slice(&batch(10, 1, 10));
        assert_eq!(produce(&client, "mixed-req", same.into()).await.unwrap(), 0);
    }
}

/// On one connection, answers go out most urgent class first: a client that stops
/// reading lets P3 fetch answers pile up in the broker's write queue; a P0 request sent
/// after them is answered ahead of most of them once the client reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p0_answer_overtakes_queued_p3_answers_on_one_connection() {
    use bytes::{Buf, BytesMut};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use weir_protocol::frame::{RequestFrame, ResponseFrame};
    use weir_protocol::messages::{FetchRequest, MetadataRequest};

    const P3_FETCHES: u32 = 40;
    // Small socket buffers, so the broker's writes block after a few answers and the
    // rest wait in its queue.
    let broker = BrokerProcess::start_with_env(&[("WEIR_FLOW_SOCKET_SEND_BUFFER_BYTES", "4096")]);
    let client = connect(&broker.addr(), Duration::from_secs(5)).await;
    Admin::new(client.clone())
        .create_topic("answers", 1, TopicConfig::default())
        .await
        .expect("create topic");
    for _ in 0..40 {
        produce(&client, "answers", batch(10, 64, 1024))
            .await
            .unwrap();
    }

    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut s = sock
        .connect(broker.addr().parse().expect("addr"))
        .await
        .expect("connect");
    let mut out = BytesMut::new();
    for id in 1..=P3_FETCHES {
        let mut f = RequestFrame::new(
            id,
            FetchRequest {
                topic: "answers".into(),
                shard: 0,
                offset: 0,
                max_bytes: 256 * 1024,
                min_bytes: 0,
                max_wait_ms: 0,
            },
        );
        f.header.priority = 10;
        f.encode(&mut out);
    }
    s.write_all(&out).await.expect("send P3 fetches");
    // Let the broker answer them all into its (blocked) write queue.
    tokio::time::sleep(Duration::from_millis(500)).await;
    out.clear();
    let p0_id = 1000;
    let mut f = RequestFrame::new(p0_id, MetadataRequest { topics: vec![] });
    f.header.priority = 1;
    f.encode(&mut out);
    s.write_all(&out).await.expect("send P0 request");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Read every answer; note the order of correlation ids.
    let mut order = Vec::new();
    let mut buf = BytesMut::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while order.len() < P3_FETCHES as usize + 1 {
        assert!(Instant::now() < deadline, "answers missing: got {order:?}");
        while buf.len() >= 4 {
            let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
            if buf.len() < 4 + len {
                break;
            }
            buf.advance(4);
            let frame = ResponseFrame::decode(buf.split_to(len).freeze()).expect("answer");
            order.push(frame.correlation_id);
        }
        if order.len() == P3_FETCHES as usize + 1 {
            break;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read_buf(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(n > 0, "connection closed after {order:?}");
    }
    let p0_at = order
        .iter()
        .position(|&id| id == p0_id)
        .expect("P0 answered");
    let p3_after = order.len() - 1 - p0_at;
    eprintln!(
        "P0 answer at position {p0_at} of {}; {p3_after} P3 answers after it",
        order.len()
    );
    assert!(
        p3_after >= 30,
        "the P0 answer waited behind {p0_at} queued P3 answers (order {order:?})"
    );
}

over_both_transports! {
    /// A priority-ordered consumer keeps a cursor per class lane; a seek must reset them
    /// all, so everything from the new position is delivered again, exactly once each.
    async fn seeking_a_priority_consumer_back_redelivers_every_lane(t) {
        use weir_client::{Consumer, DeliveryOrder, OffsetReset};

        /// Sorted offsets of everything the consumer returns until `total` arrived (and a
        /// little longer, so extra records would show).
        async fn drain(consumer: &mut Consumer, total: usize) -> Vec<u64> {
            let mut got = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            while got.len() < total && Instant::now() < deadline {
                got.extend(
                    consumer
                        .poll(100, Duration::from_millis(500))
                        .await
                        .unwrap(),
                );
            }
            got.extend(
                consumer
                    .poll(100, Duration::from_millis(300))
                    .await
                    .unwrap(),
            );
            let mut offsets: Vec<u64> = got.iter().map(|m| m.offset).collect();
            offsets.sort();
            offsets
        }

        let broker = SdkBroker::start(t).await;
        let client = broker.client().await;
        Admin::new(client.clone())
            .create_topic("rewind", 1, TopicConfig::default())
            .await
            .expect("create topic");
        // P3, P0, P3, P1: every lane has records, interleaved in the log.
        for p in [10u8, 1, 10, 4, 10, 1] {
            produce(&client, "rewind", batch(p, 5, 50)).await.unwrap();
        }
        let total = 30;
        let mut consumer = Consumer::builder(&client)
            .topic("rewind")
            .reset(OffsetReset::Earliest)
            .order(DeliveryOrder::Priority)
            .build()
            .unwrap();
        consumer.assign(vec![("rewind".to_string(), 0)]);
        let all: Vec<u64> = (0..total as u64).collect();
        assert_eq!(drain(&mut consumer, total).await, all, "first pass");
        consumer.seek("rewind", 0, 0).unwrap();
        assert_eq!(drain(&mut consumer, total).await, all, "after seeking to 0");
        // Part way through (P0 lanes ahead of the others), seek to the very position the
        // consumer reports: the lanes must restart there too, so the P0 records already
        // returned come again.
        consumer.seek("rewind", 0, 0).unwrap();
        let first = consumer.poll(7, Duration::from_secs(5)).await.unwrap();
        assert!(
            first.iter().any(|m| m.priority == 1),
            "P0 first in priority order"
        );
        let at = consumer.positions()[0].offset;
        consumer.seek("rewind", 0, at).unwrap();
        assert_eq!(
            drain(&mut consumer, total - at as usize).await,
            (at..total as u64).collect::<Vec<_>>(),
            "after seeking to the reported position {at}"
        );
        // Seeking into the middle: exactly the records from there on.
        consumer.seek("rewind", 0, 12).unwrap();
        assert_eq!(
            drain(&mut consumer, total - 12).await,
            (12..total as u64).collect::<Vec<_>>(),
            "after seeking to 12"
        );
    }
}

over_both_transports! {
    /// Issue 22 §10: a backlog read long after it was written. P3 and P0 batches written
    /// alternately a minute ago are all far older than every aging threshold; aging by
    /// wall-clock age made them all "overdue" and the answer came in plain offset order.
    /// Aging relative to the freshest lane head keeps the weights in charge: P0 first.
    async fn an_old_backlog_is_served_by_weight_not_in_offset_order(t) {
        use weir_protocol::messages::PriorityFetchRequest;

        let broker = SdkBroker::start(t).await;
        let client = broker.client().await;
        Admin::new(client.clone())
            .create_topic("backlog", 1, TopicConfig::default())
            .await
            .expect("create topic");
        let minute_ago = now_ms() - 60_000;
        for i in 0..20i64 {
            let priority = if i % 2 == 0 { 10 } else { 1 };
            let mut b = BatchBuilder::with_capacity(256);
            let mut r = NewRecord::value(minute_ago + 10 * i, b"payload");
            r.priority = priority;
            b.push(&r).unwrap();
            produce(&client, "backlog", b.finish().unwrap())
                .await
                .unwrap();
        }
        let req = PriorityFetchRequest {
            topic: "backlog".into(),
            shard: 0,
            cursors: vec![0; 4],
            max_bytes: 1 << 20,
            min_bytes: 0,
            max_wait_ms: 0,
        };
        let r = match client.call(req).await.expect("priority fetch") {
            ResponseBody::PriorityFetch(r) => r,
            other => panic!("unexpected {:?}", other.api_key()),
        };
        let priorities: Vec<u8> = r.records.batches().map(|b| b.unwrap()[22]).collect();
        assert_eq!(priorities.len(), 20, "{priorities:?}");
        // Weights 8:1 between P0 and P3 with equal sizes: the first several are all P0.
        assert!(
            priorities[..6].iter().all(|&p| p == 1),
            "served in this order: {priorities:?}"
        );
    }
}

over_both_transports! {
    /// Damage that appears after the class index was built (bit rot under running
    /// readers) stops only its own lane, and the reader learns of it as soon as nothing
    /// intact before it is left unread, even while another class has plenty of data
    /// after it; a seek past it reads on. Before, the error came only with an empty
    /// answer, so the lane stopped unseen for as long as P0 data kept the answers full.
    async fn damage_after_indexing_is_reported_while_other_classes_have_data(t) {
        use weir_client::{Consumer, DeliveryOrder, OffsetReset, Producer, ProducerRecord};
        let broker = SdkBroker::start(t).await;
        let client = broker.client().await;
        Admin::new(client.clone())
            .create_topic("rot", 1, TopicConfig::default())
            .await
            .expect("create topic");
        let producer = Producer::builder(&client).build().await.expect("producer");
        // Offsets 0 and 1 at priority 5, class P1 (1 to be damaged), then 200 P0
        // batches (2..202).
        let values = ["rot-0-kept", "rot-1-to-be-damaged"];
        for v in values {
            let r = ProducerRecord::new("rot", v).priority(5);
            producer.send_and_wait(r).await.expect("produce");
        }
        for i in 0..200 {
            let r = ProducerRecord::new("rot", format!("rot-p0-{i}")).priority(1);
            producer.send_and_wait(r).await.expect("produce");
        }
        let reader = |start_from_offset: Option<u64>| {
            let b = Consumer::builder(&client)
                .topic("rot")
                .reset(OffsetReset::Earliest)
                .order(DeliveryOrder::Priority)
                .fetch_max_wait(Duration::from_millis(100))
                // A few batches per answer: many answers hold P0 data.
                .max_fetch_bytes(256);
            match start_from_offset {
                Some(o) => b.start_at("rot", 0, o),
                None => b,
            }
            .build()
            .expect("consumer")
        };
        // A first priority read builds the shard's class index over intact data.
        let mut first = reader(None);
        let mut n = 0;
        for _ in 0..200 {
            n += first.poll(1000, Duration::from_millis(200)).await.expect("poll").len();
            if n == 202 {
                break;
            }
        }
        assert_eq!(n, 202);
        weir_tests::damage_first(&broker.data_dir(), b"rot-1-to-be-damaged");

        let mut consumer = reader(None);
        let mut got = Vec::new();
        let mut error = None;
        for _ in 0..500 {
            match consumer.poll(1000, Duration::from_millis(200)).await {
                Ok(m) => got.extend(m.iter().map(|m| m.offset)),
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
            if got.len() == 201 {
                break;
            }
        }
        let error = error.expect("the damage is reported");
        assert!(error.contains("offset 1 "), "names the damage: {error}");
        assert!(got.contains(&0), "the intact record before the damage: {got:?}");
        assert!(
            got.len() < 101,
            "reported while P0 data after it was still unread: {} records first",
            got.len()
        );
        // Past the damage: everything after it, once.
        let mut past = reader(Some(2));
        let mut rest = Vec::new();
        for _ in 0..200 {
            rest.extend(past.poll(1000, Duration::from_millis(200)).await.expect("poll"));
            if rest.len() >= 200 {
                break;
            }
        }
        let mut offsets: Vec<u64> = rest.iter().map(|m| m.offset).collect();
        offsets.sort();
        assert_eq!(offsets, (2..202).collect::<Vec<u64>>());
    }
}

//! The in-process transport's own promises, beyond the SDK suite it shares with TCP:
//! a fetched record set is a slice of the log's mapped segment (no copy) that stays
//! valid after retention deleted the segment's file, clients in other processes
//! (over loopback TCP) use the same embedded broker at the same time, and in-process
//! sessions count toward `max_connections` like TCP ones.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_client::{Admin, Producer, ProducerRecord, TopicConfig};
use weir_protocol::batch::{BatchBuilder, NewRecord};
use weir_protocol::messages::{Acks, FetchRequest, ProduceRequest, Records};
use weir_protocol::{ErrorCode, ResponseBody};
use weir_tests::read_all;
use weir_tests::transport::{SdkBroker, Transport};

const WAIT: Duration = Duration::from_secs(20);
const SEGMENT_BYTES: u64 = 64 * 1024;

/// One batch of one record of `value_bytes` bytes, all `fill`.
fn batch(value_bytes: usize, fill: u8) -> Bytes {
    let value = vec![fill; value_bytes];
    let mut b = BatchBuilder::new();
    b.push(&NewRecord::value(1_700_000_000_000, &value))
        .expect("record");
    b.finish().expect("batch")
}

/// The `/proc/self/maps` line of the mapping that holds `addr`, if any.
fn mapping_of(addr: usize) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines()
        .find(|l| {
            let range = l.split_whitespace().next().unwrap_or("");
            let Some((a, b)) = range.split_once('-') else {
                return false;
            };
            let a = usize::from_str_radix(a, 16).unwrap_or(usize::MAX);
            let b = usize::from_str_radix(b, 16).unwrap_or(0);
            a <= addr && addr < b
        })
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetched_slice_points_into_the_segment_and_outlives_its_deletion_by_retention() {
    let broker =
        SdkBroker::start_with_env(Transport::InProcess, &[("WEIR_RETENTION_CHECK_MS", "100")])
            .await;
    let client = broker.client().await;
    Admin::new(client.clone())
        .create_topic(
            "kept",
            1,
            TopicConfig {
                segment_bytes: SEGMENT_BYTES,
                retention_bytes: SEGMENT_BYTES,
                max_message_bytes: 32 * 1024,
                ..TopicConfig::default()
            },
        )
        .await
        .expect("create");
    let produce = |fill: u8| ProduceRequest {
        topic: "kept".into(),
        shard: 0,
        acks: Acks::Leader,
        timeout_ms: 0,
        records: Records::from_bytes(batch(8 * 1024, fill)),
    };
    // Enough to fill the first segment and start a second.
    for i in 0..10u8 {
        client.call(produce(i)).await.expect("produce");
    }
    let fetched = match client
        .call(FetchRequest {
            topic: "kept".into(),
            shard: 0,
            offset: 0,
            max_bytes: 16 * 1024,
            min_bytes: 1,
            max_wait_ms: 0,
        })
        .await
        .expect("fetch")
    {
        ResponseBody::Fetch(f) => f.records,
        other => panic!("expected a fetch answer, got {other:?}"),
    };
    assert!(!fetched.is_empty());
    let copy = fetched.to_bytes().to_vec();
    // Zero copy: the slice is inside a mapping of the first segment's file.
    let chunk = &fetched.chunks()[0];
    let first_segment = format!("{:020}.log", 0);
    let mapping = mapping_of(chunk.as_ptr() as usize).expect("slice is in a mapping");
    assert!(
        mapping.contains(&first_segment) && !mapping.ends_with("(deleted)"),
        "slice not in the live segment's map: {mapping}"
    );
    let path = mapping
        .split_whitespace()
        .last()
        .expect("mapped path")
        .to_string();
    assert!(std::path::Path::new(&path).exists());

    // Keep producing until retention deleted the first segment's file.
    let deadline = Instant::now() + WAIT;
    let mut fill = 10u8;
    while std::path::Path::new(&path).exists() {
        assert!(Instant::now() < deadline, "retention never deleted {path}");
        client.call(produce(fill)).await.expect("produce");
        fill = fill.wrapping_add(1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The file is gone; the map the slice holds is still there, and so are its bytes.
    let mapping = mapping_of(chunk.as_ptr() as usize).expect("map kept alive by the slice");
    assert!(
        mapping.contains(&first_segment) && mapping.ends_with("(deleted)"),
        "{mapping}"
    );
    assert_eq!(fetched.to_bytes().as_ref(), &copy[..]);
    for b in fetched.batches() {
        b.expect("batch still whole, CRC checked");
    }
    // Once the last slice goes, so does the map.
    let addr = chunk.as_ptr() as usize;
    drop(fetched);
    let gone = mapping_of(addr).is_none_or(|m| !m.contains(&first_segment));
    assert!(gone, "the deleted segment stays mapped with no slice left");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_and_network_clients_share_one_embedded_broker() {
    let broker = SdkBroker::start(Transport::InProcess).await;
    let local = broker.client().await;
    let remote = weir_tests::connect(&broker.addr(), WAIT).await;
    assert!(local.is_in_process() && !remote.is_in_process());
    Admin::new(remote.clone())
        .create_topic("shared", 2, TopicConfig::default())
        .await
        .expect("create over TCP");
    let from_local = Producer::builder(&local).build().await.expect("producer");
    let from_remote = Producer::builder(&remote).build().await.expect("producer");
    for i in 0..100 {
        let key = format!("k{}", i % 7);
        from_local
            .send_and_wait(ProducerRecord::new("shared", format!("local-{i}")).key(key.clone()))
            .await
            .expect("in-process send");
        from_remote
            .send_and_wait(ProducerRecord::new("shared", format!("remote-{i}")).key(key))
            .await
            .expect("TCP send");
    }
    // Each side reads what both wrote.
    for reader in [&local, &remote] {
        let got = read_all(reader, "shared", 200, WAIT).await;
        assert_eq!(got.len(), 200);
        let locals = got
            .iter()
            .filter(|m| m.value.starts_with(b"local-"))
            .count();
        assert_eq!(locals, 100);
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_client_fails_cleanly_once_the_embedded_broker_stopped() {
    let broker = SdkBroker::start(Transport::InProcess).await;
    let client = broker.client().await;
    client.metadata(&[]).await.expect("answered while running");
    broker.stop().await;
    // The session ended with the broker: calls fail (a new session is refused at
    // once), they do not hang.
    for _ in 0..3 {
        let r = tokio::time::timeout(WAIT, client.metadata(&[]))
            .await
            .expect("no hang after shutdown");
        assert!(r.is_err(), "answered after shutdown: {r:?}");
    }
}

/// In-process sessions hold `max_connections` slots as TCP connections do: beyond them
/// a new in-process session is refused with THROTTLED (and so is a TCP connection),
/// each refusal is counted, and a closed session frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_sessions_count_toward_max_connections_like_tcp_ones() {
    let broker =
        SdkBroker::start_with_env(Transport::InProcess, &[("WEIR_MAX_CONNECTIONS", "2")]).await;
    let embedded = broker.embedded().expect("embedded broker");
    let metrics = &embedded.broker().state().metrics;
    let first = embedded.client().await.expect("first session");
    let second = embedded.client().await.expect("second session");
    assert_eq!(metrics.connections_open.load(Ordering::Relaxed), 2);
    let refused = embedded
        .client()
        .await
        .expect_err("a third in-process session is beyond max_connections");
    assert_eq!(refused.code(), Some(ErrorCode::Throttled), "{refused}");
    assert!(refused.to_string().contains("max_connections"), "{refused}");
    // A TCP connection competes for the same slots.
    embedded
        .tcp_client()
        .await
        .expect_err("a TCP connection is beyond max_connections too");
    assert_eq!(metrics.connections_refused.load(Ordering::Relaxed), 2);
    assert_eq!(metrics.connections_open.load(Ordering::Relaxed), 2);
    second
        .metadata(&[])
        .await
        .expect("the open sessions still work");
    // Closing one frees its slot (once its session has seen the client go).
    drop(first);
    let mut again = None;
    for _ in 0..100 {
        match embedded.client().await {
            Ok(c) => {
                again = Some(c);
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::Throttled), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let again = again.expect("a slot freed by the closed session");
    again.metadata(&[]).await.expect("the new session works");
    drop((second, again));
    broker.stop().await;
}

/// A request whose caller polls it once and then, for a while, not again (a producer
/// lane does this while it waits for its epoch lock) must not hold up the session: it
/// goes on by itself, and a later request is answered. Before, the first poll took the
/// session and kept it while waiting for an in-flight place, so a later request, here
/// one that would have let the first caller go on, waited forever (seen in CI as a
/// producer lane's InitProducerId that never came back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_its_caller_stops_polling_does_not_hold_up_the_session() {
    let broker = SdkBroker::start_with_env(
        Transport::InProcess,
        &[("WEIR_MAX_IN_FLIGHT_PER_CONNECTION", "2")],
    )
    .await;
    let c = broker.client().await;
    Admin::new(c.clone())
        .create_topic("idle", 1, TopicConfig::default())
        .await
        .expect("create");
    // Two long polls on an empty shard take both in-flight places for a second.
    let long_poll = || {
        let c = c.clone();
        tokio::spawn(async move {
            c.call(FetchRequest {
                topic: "idle".into(),
                shard: 0,
                offset: 0,
                max_bytes: 1024,
                min_bytes: 1,
                max_wait_ms: 1000,
            })
            .await
        })
    };
    let polls = [long_poll(), long_poll()];
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A third request must wait for a place: polled once, it is pending, and then
    // left alone.
    let mut third = Box::pin(c.metadata(&["idle"]));
    let first_poll =
        std::future::poll_fn(|cx| std::task::Poll::Ready(third.as_mut().poll(cx))).await;
    assert!(first_poll.is_pending(), "the third request had to wait");
    // A fourth, from elsewhere, is answered once the long polls end.
    let fourth = tokio::time::timeout(WAIT, c.metadata(&["idle"])).await;
    assert!(
        fourth.is_ok(),
        "a later request waited behind one its caller had stopped polling"
    );
    fourth.unwrap().expect("fourth answered");
    third.await.expect("the third is answered too");
    for p in polls {
        p.await.expect("task").expect("long poll answered");
    }
    broker.stop().await;
}

/// `send` and `send_batch` keep their waits (learning a topic, a full class, a
/// relayout) out of their own futures: a caller may move the future on every call,
/// and with the waits inline it was over 5 KB (336 bytes without).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_send_futures_stay_small() {
    let broker = SdkBroker::start(Transport::InProcess).await;
    let client = broker.client().await;
    let p = Producer::builder(&client).build().await.expect("producer");
    let record = weir_client::ProducerRecord::new("x", bytes::Bytes::from_static(b"v"));
    let send = p.send(record);
    assert!(
        std::mem::size_of_val(&send) <= 1024,
        "{}",
        std::mem::size_of_val(&send)
    );
    drop(send);
    let send = p.send_batch(weir_client::ProducerBatch::with_capacity("x", 1));
    assert!(
        std::mem::size_of_val(&send) <= 1024,
        "{}",
        std::mem::size_of_val(&send)
    );
    drop(send);
    broker.stop().await;
}

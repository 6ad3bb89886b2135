//! Hostile and broken clients: a frame trickled one byte a second, thousands of idle
//! connections, and a client that sends produces and never reads its responses. Each
//! ends in a timeout or refusal and a closed connection, a well-behaved client keeps
//! working throughout, and the broker's memory stays within its documented bound.
//!
//! Garbage bytes and a 4 GiB length prefix (FRAME_TOO_LARGE, then close) are covered
//! by `bad_input.rs`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use weir_client::{Acks, Admin, Client, Producer, ProducerRecord, TopicConfig};
use weir_protocol::batch::{BatchBuilder, NewRecord};
use weir_protocol::frame::{RequestFrame, ResponseFrame, CONNECTION_API_KEY};
use weir_protocol::messages::{ProduceRequest, Records};
use weir_protocol::ErrorCode;
use weir_tests::{connect, metric, proc_status, read_all, BrokerProcess};

const WAIT: Duration = Duration::from_secs(20);

/// A well-behaved client producing in the background until stopped; counts its acks
/// and panics (failing the test) on any error.
struct Bystander {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Bystander {
    async fn start(client: &Client, topic: &str) -> Bystander {
        Admin::new(client.clone())
            .create_topic(topic, 1, TopicConfig::default())
            .await
            .expect("create bystander topic");
        let producer = Producer::builder(client)
            .acks(Acks::Leader)
            .build()
            .await
            .expect("producer");
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let (s, a, topic) = (stop.clone(), acked.clone(), topic.to_string());
        let task = tokio::spawn(async move {
            let mut i = 0u64;
            while !s.load(Ordering::Acquire) && i < 1_000_000 {
                tokio::time::timeout(
                    WAIT,
                    producer.send_and_wait(ProducerRecord::new(topic.clone(), format!("b-{i}"))),
                )
                .await
                .expect("bystander produce answered in time")
                .expect("bystander produce accepted");
                a.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Bystander { stop, acked, task }
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Stops and returns how many records were acknowledged.
    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Release);
        let acked = self.acked.clone();
        self.task.await.expect("bystander never failed");
        acked.load(Ordering::Relaxed)
    }
}

/// Waits until the broker closes `s` (EOF or reset); `Err` with the time waited if it
/// is still open after `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Result<Duration, Duration> {
    closed_with(s, within).await.map(|(t, _)| t)
}

/// Like [`closed_within`], also returning the (first 4 KiB of the) bytes received
/// before the close.
async fn closed_with(s: &mut TcpStream, within: Duration) -> Result<(Duration, Vec<u8>), Duration> {
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    loop {
        let left = within.saturating_sub(t.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return Err(t.elapsed()),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok((t.elapsed(), got)),
            // Responses (e.g. a connection error frame) before the close.
            Ok(Ok(n)) => {
                let room = 4096usize.saturating_sub(got.len());
                got.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_trickled_one_byte_a_second_is_cut_off_after_the_io_timeout() {
    let broker = BrokerProcess::start_with_env(&[("WEIR_IO_TIMEOUT_MS", "2000")]);
    let client = connect(&broker.addr(), WAIT).await;
    let bystander = Bystander::start(&client, "trickle-bystander").await;
    let s = TcpStream::connect(broker.addr()).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    // A 64-byte frame, one byte a second: it would take over a minute to arrive.
    let mut frame = vec![60u8, 0, 0, 0];
    frame.extend_from_slice(&[0u8; 60]);
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let mut sent = 0usize;
        for b in frame {
            if wr.write_all(&[b]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        sent
    });
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf)).await;
    let took = started.elapsed();
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "trickling connection still open after {took:?}: {closed:?}"
    );
    // Closed within two io-timeout slices of the first byte, long before the frame
    // could have been completed.
    assert!(took <= Duration::from_secs(6), "closed after {took:?}");
    writer.abort();
    let acked = bystander.finish().await;
    assert!(acked > 0, "the bystander kept producing ({acked} acks)");
    assert!(broker.log().contains("stalled in the middle of a frame"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_connections_are_refused_or_timed_out_while_a_client_keeps_producing() {
    const IDLE: usize = 2000;
    const MAX: u64 = 256;
    let broker = BrokerProcess::start_with_env(&[
        ("WEIR_MAX_CONNECTIONS", "256"),
        ("WEIR_IDLE_TIMEOUT_MS", "3000"),
    ]);
    let client = connect(&broker.addr(), WAIT).await;
    let bystander = Bystander::start(&client, "idle-bystander").await;
    let before = bystander.acked();

    // Open the idle connections in waves of 100 (so the listen backlog never
    // overflows) and look at each wave at once: a refused connection gets a THROTTLED
    // connection error and is closed; an accepted one stays open and silent. Looking
    // right away keeps idle-timeout closes (3 s) out of the picture.
    let t0 = Instant::now();
    let (mut refused, mut max_open) = (0usize, 0u64);
    let mut accepted = Vec::new();
    for _ in 0..IDLE / 100 {
        let wave: Vec<_> = (0..100)
            .map(|_| {
                let addr = broker.addr();
                tokio::spawn(async move {
                    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
                        .await
                        .expect("connect in time")
                        .expect("connect");
                    let closed = closed_with(&mut s, Duration::from_millis(300)).await;
                    (s, closed.ok().map(|(_, bytes)| bytes))
                })
            })
            .collect();
        for w in wave {
            match w.await.expect("connect task") {
                (_, Some(bytes)) => {
                    assert!(bytes.len() > 4, "refused without an error frame");
                    let frame = ResponseFrame::decode(bytes[4..].to_vec().into())
                        .expect("connection error frame");
                    assert_eq!(frame.api_key, CONNECTION_API_KEY);
                    assert_eq!(frame.error_code(), ErrorCode::Throttled);
                    refused += 1;
                }
                (s, None) => accepted.push(s),
            }
        }
        let open = metric(&broker, "weir_connections_open").await;
        assert!(
            open <= MAX,
            "{open} connections open with max_connections {MAX}"
        );
        max_open = max_open.max(open);
    }
    let opened = t0.elapsed();
    assert!(refused >= IDLE / 2, "only {refused} of {IDLE} refused");
    // Every accepted one is closed by the idle timeout (3 s, checked every 3 s).
    let waits: Vec<_> = accepted
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move { closed_within(&mut s, Duration::from_secs(15)).await })
        })
        .collect();
    let accepted = waits.len();
    for w in waits {
        w.await
            .expect("wait task")
            .unwrap_or_else(|t| panic!("idle connection still open after {t:?}"));
    }
    let acked = bystander.finish().await;
    assert!(
        acked > before,
        "the bystander kept producing during the storm ({before} → {acked})"
    );
    // Slots are free again: a new client connects.
    let fresh = connect(&broker.addr(), WAIT).await;
    fresh
        .metadata(&[])
        .await
        .expect("new client after the storm");
    eprintln!(
        "idle storm: {IDLE} opened in {opened:?}: {refused} refused with THROTTLED, {accepted} accepted and closed by the idle timeout, at most {max_open} open at once; bystander acked {}",
        acked - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frames_still_arriving_share_a_broker_wide_receive_budget() {
    // A 1 MiB budget for large frames in transit. A slow client holds ~900 KB of it
    // with a frame it sends in two parts, 1.5 s apart; a second client's 900 KB frame
    // is not read (so not answered) until the first frame is complete.
    let broker = BrokerProcess::start_with_env(&[
        ("WEIR_FLOW_RECEIVE_BYTES", "1048576"),
        ("WEIR_IO_TIMEOUT_MS", "5000"),
    ]);
    let client = connect(&broker.addr(), WAIT).await;
    Admin::new(client.clone())
        .create_topic("rx", 1, TopicConfig::default())
        .await
        .expect("create");
    let produce = |n: usize| {
        let value = vec![b'r'; n];
        let mut b = BatchBuilder::new();
        b.push(&NewRecord::value(1_700_000_000_000, &value))
            .expect("record");
        ProduceRequest {
            topic: "rx".into(),
            shard: 0,
            acks: Acks::Leader,
            timeout_ms: 0,
            records: Records::from_bytes(b.finish().expect("batch")),
        }
    };
    let mut slow = TcpStream::connect(broker.addr()).await.expect("connect");
    let mut frame = BytesMut::new();
    RequestFrame::new(1, produce(900_000)).encode(&mut frame);
    slow.write_all(&frame[..100_000]).await.expect("first part");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let other = client.clone();
    let t = Instant::now();
    let second = tokio::spawn(async move {
        other.call(produce(900_000)).await.expect("second produce");
        t.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !second.is_finished(),
        "the second frame was read while the budget was held"
    );
    slow.write_all(&frame[100_000..])
        .await
        .expect("second part");
    let mut len = [0u8; 4];
    tokio::time::timeout(WAIT, slow.read_exact(&mut len))
        .await
        .expect("slow client answered in time")
        .expect("slow client answered");
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    slow.read_exact(&mut body).await.expect("response body");
    let resp = ResponseFrame::decode(body.into()).expect("response");
    assert_eq!(resp.error_code(), ErrorCode::None, "{resp:?}");
    let waited = tokio::time::timeout(WAIT, second)
        .await
        .expect("second answered in time")
        .expect("second task");
    assert!(
        waited >= Duration::from_millis(1400),
        "second frame answered after {waited:?}"
    );
    eprintln!("receive budget: the second 900 KB frame waited {waited:?} for the first");
}

/// `VmRSS` and `RssAnon` of a process, in bytes.
fn rss(pid: u32) -> (u64, u64) {
    (proc_status(pid, "VmRSS:"), proc_status(pid, "RssAnon:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_responses_keeps_broker_memory_bounded() {
    const IN_FLIGHT_BYTES: u64 = 4 << 20;
    const FRAME: usize = 16 * 1024;
    const MAX_FRAMES: usize = 20_000;
    // The in-flight byte bound (4 MiB, ~250 frames) binds before the request count
    // (1024). A 16 KiB socket send buffer makes the kernel hold few responses, so the
    // stall comes after a few MiB instead of after the OS's auto-tuned 4 MiB of
    // 40-byte responses (~100 000 produces).
    let broker = BrokerProcess::start_with_env(&[
        ("WEIR_IO_TIMEOUT_MS", "3000"),
        ("WEIR_FLOW_CONNECTION_IN_FLIGHT_BYTES", "4194304"),
        ("WEIR_MAX_IN_FLIGHT_PER_CONNECTION", "1024"),
        ("WEIR_FLOW_SOCKET_SEND_BUFFER_BYTES", "16384"),
    ]);
    let pid = broker.pid().expect("broker pid");
    let client = connect(&broker.addr(), WAIT).await;
    Admin::new(client.clone())
        .create_topic("sink", 1, TopicConfig::default())
        .await
        .expect("create sink");
    let bystander = Bystander::start(&client, "rss-bystander").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss0, anon0) = rss(pid);
    let produced0 = metric(&broker, "weir_produce_bytes_total").await;

    // Sample the broker's memory every 50 ms while the hostile client runs.
    let sampling = Arc::new(AtomicBool::new(true));
    let (flag, max_rss, max_anon) = (
        sampling.clone(),
        Arc::new(AtomicU64::new(rss0)),
        Arc::new(AtomicU64::new(anon0)),
    );
    let (mr, ma) = (max_rss.clone(), max_anon.clone());
    let sampler = std::thread::spawn(move || {
        let t = Instant::now();
        while flag.load(Ordering::Acquire) && t.elapsed() < Duration::from_secs(40) {
            let (r, a) = rss(pid);
            mr.fetch_max(r, Ordering::Relaxed);
            ma.fetch_max(a, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(50));
        }
    });

    // The hostile client: a tiny receive buffer, 16 KiB produces, never a read.
    let sock = TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut s = sock
        .connect(broker.addr().parse().expect("addr"))
        .await
        .expect("connect");
    let value = vec![b'h'; FRAME];
    let mut b = BatchBuilder::new();
    b.push(&NewRecord::value(1_700_000_000_000, &value))
        .expect("record");
    let batch = b.finish().expect("batch");
    let mut sent = 0usize;
    let mut stalled = false;
    let mut buf = BytesMut::new();
    while sent < MAX_FRAMES {
        buf.clear();
        RequestFrame::new(
            sent as u32 + 1,
            ProduceRequest {
                topic: "sink".into(),
                shard: 0,
                acks: Acks::Leader,
                timeout_ms: 0,
                records: Records::from_bytes(batch.clone()),
            },
        )
        .encode(&mut buf);
        match tokio::time::timeout(Duration::from_secs(2), s.write_all(&buf)).await {
            Ok(Ok(())) => sent += 1,
            // The broker stopped reading (or closed): back-pressure reached the sender.
            Ok(Err(_)) | Err(_) => {
                stalled = true;
                break;
            }
        }
    }
    // The broker gives up on a peer that does not read within io_timeout (3 s).
    let closed = closed_within(&mut s, Duration::from_secs(15)).await;
    sampling.store(false, Ordering::Release);
    sampler.join().expect("sampler");
    let produced = metric(&broker, "weir_produce_bytes_total").await - produced0;
    let (rss_max, anon_max) = (
        max_rss.load(Ordering::Relaxed),
        max_anon.load(Ordering::Relaxed),
    );

    // Documented bound for one connection's request memory: its in-flight bytes, plus
    // the frame that tipped it over and the read buffer holding it (one max frame:
    // here 16 KiB + 64 KiB), plus slack for the allocator and runtime. Log pages the
    // broker wrote are mapped into it and count in VmRSS, so VmRSS may also grow by the
    // bytes it accepted into the log.
    let slack = 16u64 << 20;
    let anon_bound = IN_FLIGHT_BYTES + 2 * FRAME as u64 + (64 << 10) + slack;
    eprintln!(
        "never-reading client: sent {sent} x {FRAME} B frames (stalled: {stalled}), closed: {closed:?}; \
         broker accepted {produced} B; VmRSS {} → max {} MiB; RssAnon {} → max {} MiB (anon bound +{} MiB)",
        rss0 >> 20,
        rss_max >> 20,
        anon0 >> 20,
        anon_max >> 20,
        anon_bound >> 20
    );
    assert!(
        stalled,
        "the broker never pushed back on a client that does not read"
    );
    assert!(closed.is_ok(), "connection still open: {closed:?}");
    assert!(
        anon_max - anon0 <= anon_bound,
        "RssAnon grew by {} bytes, over the bound {anon_bound}",
        anon_max - anon0
    );
    assert!(
        rss_max - rss0 <= anon_bound + produced,
        "VmRSS grew by {} bytes, over {anon_bound} + {produced} accepted",
        rss_max - rss0
    );
    let acked = bystander.finish().await;
    assert!(acked > 0);
    // And the bystander's records are all there.
    let got = read_all(&client, "rss-bystander", acked as usize, WAIT).await;
    assert_eq!(got.len() as u64, acked);
}

/// Issue 22 §1: a connection that sends only a 13-byte header announcing a 16 MiB frame
/// must not make the broker reserve memory for the frame; memory follows the bytes that
/// arrived. Before the fix each such connection cost the broker about 2 MiB of
/// anonymous memory (the read buffer was grown to the announced length at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_announcing_large_frames_that_never_come_cost_no_frame_sized_memory() {
    const CONNECTIONS: usize = 300;
    // A receive budget of two such frames: those two may reserve their frame (the
    // budget is the documented bound for large frames still arriving); the other
    // 298 must cost only what they sent.
    let broker = BrokerProcess::start_with_env(&[("WEIR_FLOW_RECEIVE_BYTES", "33554432")]);
    let pid = broker.pid().expect("broker pid");
    // Warm the broker up with one ordinary connection first, so its runtime threads
    // and allocator arenas already exist before the baseline.
    drop(connect(&broker.addr(), WAIT).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, anon_before) = rss(pid);
    let mut header = Vec::with_capacity(13);
    header.extend_from_slice(&(16u32 << 20).to_le_bytes());
    header.extend_from_slice(&4u16.to_le_bytes()); // api key: Metadata
    header.extend_from_slice(&0u16.to_le_bytes()); // api version
    header.extend_from_slice(&1u32.to_le_bytes()); // correlation id
    header.push(5); // priority
    let mut held = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let mut s = TcpStream::connect(broker.addr()).await.expect("connect");
        s.write_all(&header).await.expect("send header");
        held.push(s);
    }
    // Give the broker time to read every header (bounded: 2 s).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, anon_after) = rss(pid);
    let grown = anon_after.saturating_sub(anon_before);
    eprintln!(
        "{CONNECTIONS} connections with a 16 MiB header each: RssAnon {} → {} MiB",
        anon_before >> 20,
        anon_after >> 20
    );
    // 300 connections at ~2 MiB each would be ~600 MiB; their buffers as received
    // (13 bytes in a 64 KiB first buffer) are well under 1 MiB each.
    assert!(
        grown < 96 << 20,
        "RssAnon grew by {} MiB for {CONNECTIONS} headers",
        grown >> 20
    );
    drop(held);
}

/// Issue 22: a client that closes its connection while a request is parked (here a
/// JoinGroup waiting for a rebalance that cannot finish for a minute) must not keep
/// its connection slot: the broker notices the peer is gone and frees it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_frees_its_slot_while_its_request_is_parked() {
    const MAX: usize = 4;
    let max = MAX.to_string();
    let broker = BrokerProcess::start_with_env(&[("WEIR_MAX_CONNECTIONS", max.as_str())]);
    let join = |member: &str| {
        let mut b = BytesMut::new();
        RequestFrame::new(
            1,
            weir_protocol::messages::JoinGroupRequest {
                group: "parked".into(),
                member_id: String::new(),
                client_id: member.into(),
                topics: vec!["t".into()],
                session_timeout_ms: 60_000,
                rebalance_timeout_ms: 60_000,
            },
        )
        .encode(&mut b);
        b
    };
    // The group's first member joins at once, then never heartbeats or re-joins: a
    // later join waits for it until the 60 s rebalance deadline.
    let mut first = TcpStream::connect(broker.addr()).await.expect("connect");
    first.write_all(&join("first")).await.expect("join");
    let mut len = [0u8; 4];
    tokio::time::timeout(WAIT, first.read_exact(&mut len))
        .await
        .expect("first join answered in time")
        .expect("first join answered");
    let mut parked = Vec::new();
    for i in 0..MAX - 1 {
        let mut s = TcpStream::connect(broker.addr()).await.expect("connect");
        s.write_all(&join(&format!("parked-{i}")))
            .await
            .expect("join");
        parked.push(s);
    }
    // They are parked: no answer yet, and every slot is taken.
    let mut one = [0u8; 1];
    let quiet = tokio::time::timeout(Duration::from_millis(500), parked[0].read(&mut one)).await;
    assert!(quiet.is_err(), "a parked join was answered: {quiet:?}");
    assert_eq!(metric(&broker, "weir_connections_open").await, MAX as u64);
    drop(parked);
    // Bounded wait (far below the 60 s the joins would otherwise hold the slots).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut open = MAX as u64;
    while Instant::now() < deadline {
        open = metric(&broker, "weir_connections_open").await;
        if open == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(open, 1, "connections still open after their peers closed");
    // And a new client gets a slot.
    let client = connect(&broker.addr(), WAIT).await;
    drop(client);
    drop(first);
}

/// Sends one request frame on `s` and reads its answer.
async fn round_trip(
    s: &mut TcpStream,
    request: impl Into<weir_protocol::Request>,
) -> ResponseFrame {
    let mut b = BytesMut::new();
    RequestFrame::new(7, request).encode(&mut b);
    s.write_all(&b).await.expect("send request");
    let mut len = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut len))
        .await
        .expect("answered in time")
        .expect("answered");
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).await.expect("response body");
    ResponseFrame::decode(body.into()).expect("response")
}

/// Issue 22: Metadata must not amplify. A request naming one topic 100,000 times gets
/// that topic once; an answer that would not fit in a frame is refused by name instead
/// of built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_answers_each_topic_once_and_never_beyond_the_frame_limit() {
    use weir_protocol::frame::ResponsePayload;
    use weir_protocol::messages::MetadataRequest;
    use weir_protocol::ResponseBody;
    // Small segments: 64 shards preallocate 64 of them.
    let broker = BrokerProcess::start_with_env(&[
        ("WEIR_DEFAULT_SEGMENT_BYTES", "1048576"),
        ("WEIR_DEFAULT_MAX_MESSAGE_BYTES", "1048576"),
    ]);
    let client = connect(&broker.addr(), WAIT).await;
    Admin::new(client.clone())
        .create_topic("amplified", 64, TopicConfig::default())
        .await
        .expect("create topic");
    let mut s = TcpStream::connect(broker.addr()).await.expect("connect");
    let resp = round_trip(
        &mut s,
        MetadataRequest {
            topics: vec!["amplified".to_string(); 100_000],
        },
    )
    .await;
    match resp.payload {
        ResponsePayload::Ok(ResponseBody::Metadata(m)) => {
            assert_eq!(m.topics.len(), 1, "one entry per distinct name");
            assert_eq!(m.topics[0].shards.len(), 64);
        }
        other => panic!("unexpected answer {other:?}"),
    }
    drop(client);

    // A broker with 4 KiB frames: 20 topics with long names do not fit in one answer.
    let small = BrokerProcess::start_with_env(&[
        ("WEIR_MAX_FRAME_BYTES", "4096"),
        ("WEIR_DEFAULT_MAX_MESSAGE_BYTES", "4096"),
        ("WEIR_DEFAULT_SEGMENT_BYTES", "1048576"),
    ]);
    let client = connect(&small.addr(), WAIT).await;
    let admin = Admin::new(client.clone());
    let names: Vec<String> = (0..20)
        .map(|i| format!("{i:03}-{}", "n".repeat(240)))
        .collect();
    for n in &names {
        admin
            .create_topic(n, 1, TopicConfig::default())
            .await
            .expect("create topic");
    }
    let mut s = TcpStream::connect(small.addr()).await.expect("connect");
    let all = round_trip(&mut s, MetadataRequest { topics: Vec::new() }).await;
    assert_eq!(all.error_code(), ErrorCode::InvalidRequest, "{all:?}");
    // Asking for fewer works, and the connection is still usable.
    let few = round_trip(
        &mut s,
        MetadataRequest {
            topics: names[..3].to_vec(),
        },
    )
    .await;
    assert_eq!(few.error_code(), ErrorCode::None, "{few:?}");
}

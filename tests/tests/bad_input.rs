//! Bad input gets named errors and never takes the broker down: unknown topics,
//! oversized messages, unframeable and malformed frames, unsupported versions, and
//! clients that vanish or stall in the middle of a frame. Afterwards a client that
//! connected before all of it, and a new one, still produce and consume.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_client::{Admin, Client, Producer, ProducerRecord, TopicConfig};
use weir_protocol::frame::{RequestFrame, ResponseFrame, ResponsePayload, CONNECTION_API_KEY};
use weir_protocol::messages::{ApiVersionsRequest, FetchRequest, MetadataRequest};
use weir_protocol::{ApiKey, ErrorCode};
use weir_tests::{connect, read_all, BrokerProcess};

/// Longest wait for any one answer or close on a raw socket.
const WAIT: Duration = Duration::from_secs(5);

/// Reads one response frame; `None` when the broker closed the connection.
async fn read_frame(s: &mut TcpStream) -> Option<ResponseFrame> {
    let mut len = [0u8; 4];
    match tokio::time::timeout(WAIT, s.read_exact(&mut len)).await {
        Err(_) => panic!("no response and no close within {WAIT:?}"),
        Ok(Err(_)) => return None,
        Ok(Ok(_)) => {}
    }
    let len = u32::from_le_bytes(len) as usize;
    assert!(len <= 1 << 20, "response frame of {len} bytes");
    let mut body = vec![0u8; len];
    tokio::time::timeout(WAIT, s.read_exact(&mut body))
        .await
        .expect("rest of the frame in time")
        .expect("rest of the frame");
    Some(ResponseFrame::decode(body.into()).expect("decodable response"))
}

/// Asserts the broker closes the connection (EOF or reset) within [`WAIT`].
async fn assert_closed(s: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
        Err(_) => panic!("{what}: connection still open after {WAIT:?}"),
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("{what}: unexpected {n} more bytes instead of a close"),
    }
}

fn encode(frame: &RequestFrame) -> BytesMut {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    buf
}

/// A frame with a hand-made header and body.
fn raw_frame(
    api_key: u16,
    api_version: u16,
    correlation_id: u32,
    priority: u8,
    body: &[u8],
) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u32_le(9 + body.len() as u32);
    b.put_u16_le(api_key);
    b.put_u16_le(api_version);
    b.put_u32_le(correlation_id);
    b.put_u8(priority);
    b.put_slice(body);
    b
}

fn assert_error(resp: &ResponseFrame, api_key: u16, correlation_id: u32, code: ErrorCode) {
    assert_eq!(resp.api_key, api_key, "api key echoed");
    assert_eq!(resp.correlation_id, correlation_id, "correlation id echoed");
    match &resp.payload {
        ResponsePayload::Err(c, _) => assert_eq!(*c, code),
        ResponsePayload::Ok(b) => panic!("expected {code}, got a success {:?}", b.api_key()),
    }
}

async fn assert_connection_error(s: &mut TcpStream, code: ErrorCode, what: &str) {
    let resp = read_frame(s)
        .await
        .unwrap_or_else(|| panic!("{what}: closed without a connection error frame"));
    assert_error(&resp, CONNECTION_API_KEY, 0, code);
    assert_closed(s, what).await;
}

/// A request on a raw connection that must succeed: the connection is still usable.
async fn assert_usable(s: &mut TcpStream, correlation_id: u32) {
    let req = RequestFrame::new(
        correlation_id,
        ApiVersionsRequest {
            client_software: "raw".into(),
            client_id: String::new(),
        },
    );
    s.write_all(&encode(&req)).await.expect("write");
    let resp = read_frame(s).await.expect("connection still open");
    assert_eq!(resp.correlation_id, correlation_id);
    assert!(
        matches!(resp.payload, ResponsePayload::Ok(_)),
        "ApiVersions succeeds: {resp:?}"
    );
}

async fn raw(broker: &BrokerProcess) -> TcpStream {
    TcpStream::connect(broker.addr())
        .await
        .expect("raw connect")
}

async fn produce_and_consume(client: &Client, topic: &str, n: usize) {
    let producer = Producer::builder(client).build().await.expect("producer");
    for i in 0..n {
        producer
            .send_and_wait(ProducerRecord::new(topic, format!("{topic}-{i}")))
            .await
            .expect("produce after bad input");
    }
    let got = read_all(client, topic, n, Duration::from_secs(20)).await;
    // Unkeyed records spread over the shards: compare as sets.
    let mut values: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8(m.value.to_vec()).expect("utf8"))
        .collect();
    values.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("{topic}-{i}")).collect();
    want.sort();
    assert_eq!(values, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_named_errors_and_the_broker_keeps_serving() {
    let broker = BrokerProcess::start();
    // Connected before any bad input; must still work at the end.
    let bystander = connect(&broker.addr(), Duration::from_secs(5)).await;
    let admin = Admin::new(bystander.clone());
    admin
        .create_topic(
            "small",
            1,
            TopicConfig {
                max_message_bytes: 1024,
                ..Default::default()
            },
        )
        .await
        .expect("create topic");

    // Unknown topic, through the SDK: producing, fetching, describing.
    let producer = Producer::builder(&bystander)
        .build()
        .await
        .expect("producer");
    let err = producer
        .send_and_wait(ProducerRecord::new("no-such-topic", "x"))
        .await
        .expect_err("produce to an unknown topic");
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopic), "{err}");
    let err = bystander
        .call(FetchRequest {
            topic: "no-such-topic".into(),
            shard: 0,
            offset: 0,
            max_bytes: 1024,
            min_bytes: 1,
            max_wait_ms: 0,
        })
        .await
        .expect_err("fetch from an unknown topic");
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopic), "{err}");
    let err = admin
        .describe_topic("no-such-topic")
        .await
        .expect_err("describe");
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopic), "{err}");

    // Oversized message: over the topic's 1 KiB max_message_bytes.
    let err = producer
        .send_and_wait(ProducerRecord::new("small", vec![b'x'; 4096]))
        .await
        .expect_err("oversized message");
    assert_eq!(err.code(), Some(ErrorCode::MessageTooLarge), "{err}");
    assert!(!err.is_retriable());
    // The same producer still works for a message that fits.
    producer
        .send_and_wait(ProducerRecord::new("small", "fits"))
        .await
        .expect("small message after an oversized one");

    // Garbage that cannot be framed: its first four bytes read as a huge length.
    let mut s = raw(&broker).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: weir\r\n\r\n")
        .await
        .expect("write");
    assert_connection_error(&mut s, ErrorCode::FrameTooLarge, "HTTP garbage").await;

    // A 4 GiB length prefix: refused from the prefix alone, nothing reserved.
    let mut s = raw(&broker).await;
    s.write_all(&u32::MAX.to_le_bytes()).await.expect("write");
    assert_connection_error(&mut s, ErrorCode::FrameTooLarge, "4 GiB prefix").await;

    // A frame shorter than the request header.
    let mut s = raw(&broker).await;
    s.write_all(&[3, 0, 0, 0, 1, 2, 3]).await.expect("write");
    assert_connection_error(&mut s, ErrorCode::InvalidRequest, "too-short frame").await;

    // Frames that frame but are bad: named per-request errors, connection kept.
    let mut s = raw(&broker).await;
    let mut v = RequestFrame::new(7, MetadataRequest { topics: vec![] });
    v.header.api_version = 99;
    s.write_all(&encode(&v)).await.expect("write");
    let resp = read_frame(&mut s)
        .await
        .expect("answer to unsupported version");
    assert_error(
        &resp,
        ApiKey::Metadata as u16,
        7,
        ErrorCode::UnsupportedVersion,
    );
    assert_eq!(resp.api_version, 99, "api version echoed");
    assert_usable(&mut s, 8).await;

    s.write_all(&raw_frame(0x7777, 0, 9, 0, b"whatever"))
        .await
        .expect("write");
    let resp = read_frame(&mut s).await.expect("answer to unknown api");
    assert_error(&resp, 0x7777, 9, ErrorCode::UnknownApi);
    assert_usable(&mut s, 10).await;

    // Metadata claiming 1000 topic names and carrying none: truncated body.
    s.write_all(&raw_frame(
        ApiKey::Metadata as u16,
        0,
        11,
        0,
        &1000u32.to_le_bytes(),
    ))
    .await
    .expect("write");
    let resp = read_frame(&mut s).await.expect("answer to truncated body");
    assert_error(
        &resp,
        ApiKey::Metadata as u16,
        11,
        ErrorCode::InvalidRequest,
    );
    // Valid Metadata body plus trailing junk.
    s.write_all(&raw_frame(
        ApiKey::Metadata as u16,
        0,
        12,
        0,
        &[0, 0, 0, 0, 0xAB],
    ))
    .await
    .expect("write");
    let resp = read_frame(&mut s).await.expect("answer to trailing bytes");
    assert_error(
        &resp,
        ApiKey::Metadata as u16,
        12,
        ErrorCode::InvalidRequest,
    );
    // Header priority over 10.
    s.write_all(&raw_frame(
        ApiKey::Metadata as u16,
        0,
        13,
        11,
        &[0, 0, 0, 0],
    ))
    .await
    .expect("write");
    let resp = read_frame(&mut s).await.expect("answer to bad priority");
    assert_error(
        &resp,
        ApiKey::Metadata as u16,
        13,
        ErrorCode::InvalidRequest,
    );
    assert_usable(&mut s, 14).await;
    drop(s);

    // Clients that disconnect in the middle of a frame, in the header and in the body.
    for cut_at in [2usize, 6, 20] {
        let mut s = raw(&broker).await;
        let frame = encode(&RequestFrame::new(
            1,
            MetadataRequest {
                topics: vec!["small".into(); 8],
            },
        ));
        assert!(frame.len() > cut_at);
        s.write_all(&frame[..cut_at]).await.expect("write");
        drop(s);
    }
    // A frame that announces 1 MiB and sends a little of it, then hangs up.
    let mut s = raw(&broker).await;
    s.write_all(&(1u32 << 20).to_le_bytes())
        .await
        .expect("write");
    s.write_all(&[0u8; 100]).await.expect("write");
    drop(s);

    // The broker kept serving: the bystander's connection and a brand-new client.
    let topics = admin
        .list_topics()
        .await
        .expect("list topics on the old connection");
    assert!(topics.iter().any(|t| t.name == "small"));
    admin
        .create_topic("after", 2, Default::default())
        .await
        .expect("create after bad input");
    produce_and_consume(&bystander, "after", 50).await;
    let fresh = connect(&broker.addr(), Duration::from_secs(5)).await;
    Admin::new(fresh.clone())
        .create_topic("fresh", 1, Default::default())
        .await
        .expect("create from a new client");
    produce_and_consume(&fresh, "fresh", 50).await;
}

/// A client that starts a frame and then stalls is cut off after `io_timeout_ms`, so a
/// slow or malicious peer cannot pin a frame buffer for the idle timeout (10 minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_mid_frame_is_disconnected_after_the_io_timeout() {
    let broker = BrokerProcess::start_with_env(&[("WEIR_IO_TIMEOUT_MS", "300")]);
    let client = connect(&broker.addr(), Duration::from_secs(5)).await;
    let mut s = raw(&broker).await;
    s.write_all(&(1u32 << 20).to_le_bytes())
        .await
        .expect("write");
    s.write_all(&[0u8; 100]).await.expect("write");
    // Stay connected and silent; the broker must close within WAIT (much more than 300 ms).
    assert_closed(&mut s, "stalled mid-frame").await;
    // A client that is idle between frames is not affected by the io timeout.
    tokio::time::sleep(Duration::from_millis(600)).await;
    client
        .metadata(&[])
        .await
        .expect("idle client between frames still connected");
}

/// Issue 22 §5: a misspelt `WEIR_*` setting is named in the log with the setting it
/// probably meant, and a log that is not a terminal carries no colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelt_setting_is_warned_about_in_a_plain_log() {
    let broker = BrokerProcess::start_with_env(&[("WEIR_MAX_CONECTIONS", "5")]);
    let log = broker.log();
    assert!(
        log.contains("WEIR_MAX_CONECTIONS is not a Weir setting")
            && log.contains("did you mean WEIR_MAX_CONNECTIONS?"),
        "{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a log file: {log:?}"
    );
}

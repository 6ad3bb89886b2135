//! A fuzzer that drives a live broker with mutated and extreme requests (issue 22).
//!
//! The corpus is every valid request frame of PROTOCOL.md's vectors
//! (`protocol/tests/vectors/{requests,queue}.json`). Each request sent is one of them,
//! mutated: bytes flipped, a field overwritten with an extreme value (0, 1, the
//! largest values of 8, 16 and 32 bits), a region repeated (arrays and strings grow),
//! the body cut short or extended, two frames spliced. Most are re-framed with a
//! correct length prefix so they reach the request decoders and handlers; some keep
//! a wrong one so they hit the framing layer. They go out pipelined over a few
//! connections whose answers are drained and thrown away; a connection the broker
//! closes is replaced.
//!
//! Throughout, the broker must stay up, `/health` must answer, a well-behaved
//! bystander client must keep producing and reading back its records, and the
//! broker's anonymous memory and thread count must stay bounded; at the end it must
//! stop cleanly on SIGTERM, and its log must hold no panic and no violated invariant.
//!
//! Safety of the machine, not of the broker: a mutated CreateTopic may ask for huge
//! segments and each shard preallocates one, so the harness caps `segment_bytes` of
//! CreateTopic requests at 4 MiB (the broker's own free-space check is tested
//! elsewhere), and the broker runs with `max_shards = 256`.
//!
//! Default: a smoke run of 1,500 requests. Longer:
//! `WEIR_FUZZ_REQUESTS=200000 cargo test -p weir-tests --test fuzz_live -- --nocapture`;
//! `WEIR_FUZZ_SEED=N` repeats a run (the seed is printed).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use weir_client::{Acks, Admin, Client, Producer, ProducerRecord};
use weir_protocol::frame::RequestFrame;
use weir_protocol::messages::{AlterQuotasRequest, Quota};
use weir_protocol::Request;
use weir_tests::{connect, http_get, proc_status, read_all, BrokerProcess};

const CONNECTIONS: usize = 4;
/// Bounds the broker must hold however hostile the traffic.
const RSS_ANON_MAX: u64 = 1 << 30;
const THREADS_MAX: u64 = 512;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: deterministic from the seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// Request bodies (without their length prefix) from the vectors.
fn corpus() -> Vec<Vec<u8>> {
    let dir = weir_tests::workspace_root().join("protocol/tests/vectors");
    let mut out = Vec::new();
    for file in ["requests.json", "queue.json"] {
        let text = std::fs::read_to_string(dir.join(file)).expect("vectors");
        let v: serde_json::Value = serde_json::from_str(&text).expect("vectors json");
        for vector in v["vectors"].as_array().expect("vectors array") {
            if vector["kind"] == "request" {
                let frame = unhex(vector["hex"].as_str().expect("hex"));
                out.push(frame[4..].to_vec());
            }
        }
    }
    assert!(out.len() >= 20, "only {} request vectors", out.len());
    out
}

/// One mutated request frame, length prefix included.
fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut body = corpus[rng.below(corpus.len())].clone();
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(body.len());
        match rng.below(6) {
            0 => body[at] ^= 1 << rng.below(8),
            1 => {
                let extreme: [u64; 6] = [0, 1, 0xff, 0xffff, 0x7fff_ffff, 0xffff_ffff];
                let v = extreme[rng.below(extreme.len())].to_le_bytes();
                let width = [1, 2, 4][rng.below(3)];
                for (i, b) in v.iter().take(width).enumerate() {
                    if let Some(slot) = body.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
            2 => {
                // Repeat a region (grows an array or a string), bounded.
                let len = 1 + rng.below(64.min(body.len() - at));
                let region = body[at..at + len].to_vec();
                let times = 1 + rng.below(2000);
                let mut grown = Vec::with_capacity(body.len() + len * times);
                grown.extend_from_slice(&body[..at]);
                for _ in 0..times {
                    grown.extend_from_slice(&region);
                }
                grown.extend_from_slice(&body[at..]);
                body = grown;
            }
            3 => body.truncate(at.max(9)),
            4 => body.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
            _ => {
                let other = &corpus[rng.below(corpus.len())];
                let from = rng.below(other.len());
                body.truncate(at.max(9));
                body.extend_from_slice(&other[from..]);
            }
        }
    }
    cap_segments(&mut body);
    let mut frame = Vec::with_capacity(body.len() + 4);
    let len = if rng.below(20) == 0 {
        // Sometimes a wrong length, for the framing layer.
        rng.next() as u32 % (body.len() as u32 + 64)
    } else {
        body.len() as u32
    };
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// Keeps a CreateTopic from preallocating huge segments on this machine's disk.
fn cap_segments(body: &mut Vec<u8>) {
    let Ok(mut f) = RequestFrame::decode(Bytes::copy_from_slice(body)) else {
        return;
    };
    if let Request::CreateTopic(r) = &mut f.request {
        r.config.segment_bytes = r.config.segment_bytes.min(4 << 20);
        let mut b = BytesMut::new();
        f.encode(&mut b);
        *body = b[4..].to_vec();
    }
}

/// `RssAnon` (bytes) and thread count of a process.
fn usage(pid: u32) -> (u64, u64) {
    (proc_status(pid, "RssAnon:"), proc_status(pid, "Threads:"))
}

/// A raw connection whose answers a task drains (and drops) until the broker closes it.
async fn open(addr: &str) -> OwnedWriteHalf {
    let s = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, wr) = s.into_split();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(60), rd.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
        }
    });
    wr
}

/// The bystander: produces one record and reads everything back.
async fn bystander_round(client: &Client, producer: &Producer, sent: &mut usize) {
    let value = format!("bystander-{sent}");
    producer
        .send(ProducerRecord::new("fuzz-bystander", value))
        .await
        .expect("bystander send")
        .await
        .expect("bystander ack");
    *sent += 1;
    let got = read_all(client, "fuzz-bystander", *sent, Duration::from_secs(20)).await;
    assert_eq!(
        got.len(),
        *sent,
        "bystander reads back everything it produced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_broker_survives_mutated_and_extreme_requests() {
    let requests = env_u64("WEIR_FUZZ_REQUESTS", 1_500);
    let seed = env_u64(
        "WEIR_FUZZ_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    ) | 1;
    eprintln!("fuzz_live: {requests} requests, WEIR_FUZZ_SEED={seed}");
    let mut rng = Rng(seed);
    let corpus = corpus();
    let mut broker = BrokerProcess::start_with_env(&[
        ("WEIR_MAX_SHARDS", "256"),
        ("WEIR_DEFAULT_SEGMENT_BYTES", "1048576"),
        ("WEIR_DEFAULT_MAX_MESSAGE_BYTES", "1048576"),
        ("WEIR_MAX_FETCH_WAIT_MS", "200"),
        ("WEIR_IO_TIMEOUT_MS", "2000"),
    ]);
    let pid = broker.pid().expect("broker pid");
    let addr = broker.addr();
    let client = connect(&addr, Duration::from_secs(10)).await;
    Admin::new(client.clone())
        .create_topic("fuzz-bystander", 1, Default::default())
        .await
        .expect("bystander topic");
    // The bystander's own quota entry (no limits), so a mutated AlterQuotas of the
    // default quota cannot throttle it.
    client
        .call(AlterQuotasRequest {
            client_id: "fuzz-bystander".into(),
            remove: 0,
            quota: Quota::default(),
        })
        .await
        .expect("bystander quota");
    let bystander = weir_client::Client::connect_with(
        addr.clone(),
        weir_client::ClientConfig {
            client_id: "fuzz-bystander".into(),
            ..Default::default()
        },
    )
    .await
    .expect("bystander client");
    let producer = Producer::builder(&bystander)
        .acks(Acks::Leader)
        .build()
        .await
        .expect("bystander producer");
    let mut sent = 0;
    let mut conns = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        conns.push(open(&addr).await);
    }
    let (mut replaced, mut peak_anon, mut peak_threads) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    for i in 0..requests {
        let frame = mutate(&mut rng, &corpus);
        let c = rng.below(CONNECTIONS);
        let ok = matches!(
            tokio::time::timeout(Duration::from_secs(2), conns[c].write_all(&frame)).await,
            Ok(Ok(()))
        );
        if !ok {
            // Closed by the broker (a framing error, a stall): a fresh one.
            conns[c] = open(&addr).await;
            replaced += 1;
        }
        if i % 250 == 249 || i + 1 == requests {
            let (anon, threads) = usage(pid);
            peak_anon = peak_anon.max(anon);
            peak_threads = peak_threads.max(threads);
            assert!(anon < RSS_ANON_MAX, "RssAnon {anon} after {i} requests");
            assert!(
                threads < THREADS_MAX,
                "{threads} threads after {i} requests"
            );
            assert_eq!(
                http_get(broker.http_addr(), "/health").await.lines().last(),
                Some("ok"),
                "health after {i} requests"
            );
            bystander_round(&bystander, &producer, &mut sent).await;
        }
    }
    eprintln!(
        "fuzz_live: {requests} requests in {:?}, {replaced} connections replaced, peak RssAnon {} MiB, peak threads {peak_threads}, bystander round trips {sent}",
        started.elapsed(),
        peak_anon >> 20
    );
    drop(conns);
    drop(producer);
    drop(bystander);
    drop(client);
    let status = broker.terminate();
    assert!(status.success(), "broker exit {status:?}");
    let log = broker.log();
    for bad in ["panicked", "invariant violated"] {
        assert!(!log.contains(bad), "{bad} in the broker log:\n{log}");
    }
}

//! Encryption at rest against real broker processes: produced values never appear in
//! the data directory's files, reads and a restart see them whole, a key rotation keeps
//! the old data readable while new data is sealed with the new key, and a wrong or
//! missing key makes the broker refuse to start, naming the key.

use std::path::Path;
use std::time::Duration;

use weir_client::{Acks, Admin, Producer, ProducerRecord};
use weir_tests::{connect, read_all, BrokerProcess};

const TOPIC: &str = "secrets";
const WAIT: Duration = Duration::from_secs(20);
const KEY_1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const KEY_2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const OTHER: &str = "9999999999999999999999999999999999999999999999999999999999999999";

/// Every file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// The files under `dir` whose bytes contain `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut all = Vec::new();
    files(dir, &mut all);
    all.into_iter()
        .filter(|p| {
            let data = std::fs::read(p).unwrap_or_default();
            data.windows(needle.len()).any(|w| w == needle)
        })
        .collect()
}

async fn produce(broker: &BrokerProcess, prefix: &str, n: usize) {
    let client = connect(&broker.addr(), Duration::from_secs(5)).await;
    let producer = Producer::builder(&client)
        .acks(Acks::Durable)
        .build()
        .await
        .expect("producer");
    let mut acks = Vec::new();
    for i in 0..n {
        let rec = ProducerRecord::new(TOPIC, format!("{prefix}-{i:04}")).key(format!("k{i}"));
        acks.push(producer.send(rec).await.expect("send"));
    }
    for a in acks {
        a.await.expect("acked");
    }
}

async fn values(broker: &BrokerProcess, expected: usize) -> Vec<String> {
    let client = connect(&broker.addr(), Duration::from_secs(5)).await;
    let mut v: Vec<String> = read_all(&client, TOPIC, expected, WAIT)
        .await
        .into_iter()
        .map(|m| String::from_utf8(m.value.to_vec()).expect("utf-8"))
        .collect();
    v.sort();
    v
}

fn expected(prefixes: &[(&str, usize)]) -> Vec<String> {
    let mut v: Vec<String> = prefixes
        .iter()
        .flat_map(|(p, n)| (0..*n).map(move |i| format!("{p}-{i:04}")))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_data_stays_unreadable_on_disk_and_keys_rotate() {
    let mut broker = BrokerProcess::start_with_env(&[
        ("WEIR_AT_REST_KEYS", "1=env:WEIR_AT_REST_KEY_1"),
        ("WEIR_AT_REST_WRITE_KEY", "1"),
        ("WEIR_AT_REST_KEY_1", KEY_1),
    ]);
    let client = connect(&broker.addr(), Duration::from_secs(5)).await;
    Admin::new(client.clone())
        .create_topic(TOPIC, 2, Default::default())
        .await
        .expect("create topic");
    produce(&broker, "first-secret-value", 200).await;
    assert_eq!(
        values(&broker, 200).await,
        expected(&[("first-secret-value", 200)])
    );
    let data = broker.data_dir();
    assert!(
        files_holding(&data, b"first-secret-value").is_empty(),
        "plain values on disk: {:?}",
        files_holding(&data, b"first-secret-value")
    );

    // Rotation: key 2 writes, key 1 still reads.
    broker.terminate();
    broker.set_env(
        "WEIR_AT_REST_KEYS",
        "1=env:WEIR_AT_REST_KEY_1,2=env:WEIR_AT_REST_KEY_2",
    );
    broker.set_env("WEIR_AT_REST_WRITE_KEY", "2");
    broker.set_env("WEIR_AT_REST_KEY_2", KEY_2);
    broker.restart();
    produce(&broker, "second-secret-value", 100).await;
    let both = expected(&[("first-secret-value", 200), ("second-secret-value", 100)]);
    assert_eq!(values(&broker, 300).await, both);
    assert!(files_holding(&data, b"second-secret-value").is_empty());
    broker.terminate();

    // Key 1 missing while its data is kept: refused, naming key 1.
    let err = broker.start_refused(
        &[
            ("WEIR_AT_REST_KEYS", "2=env:WEIR_AT_REST_KEY_2"),
            ("WEIR_AT_REST_WRITE_KEY", "2"),
        ],
        WAIT,
    );
    assert!(
        err.contains("at-rest key 1, which is not configured"),
        "{err}"
    );
    // Key 1 present but wrong: refused, naming key 1 and where it came from.
    let err = broker.start_refused(&[("WEIR_AT_REST_KEY_1", OTHER)], WAIT);
    assert!(
        err.contains("at-rest key 1") && err.contains("WEIR_AT_REST_KEY_1"),
        "{err}"
    );
    // The write key's variable unset: refused, naming it.
    let err = broker.start_refused(&[("WEIR_AT_REST_KEY_2", "")], WAIT);
    assert!(err.contains("at-rest key 2"), "{err}");

    // With both right keys again, everything is still there.
    broker.restart();
    assert_eq!(values(&broker, 300).await, both);
}

//! Deletion by key against a real broker process: after `weir topic delete-key` (and
//! the DeleteKey api) readers never see the deleted records (they come redacted, at
//! their offsets), later records with the key are kept, compaction removes the bytes
//! from every file of the data directory within `delete_key_compact_ms`, and a restart
//! changes none of that. Also with encryption at rest, and refusals: an unknown topic,
//! an empty key, a principal without `delete` on the topic.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use weir_client::{
    Acks, Admin, Client, ClientConfig, ClientError, Credentials, Producer, ProducerRecord,
};
use weir_protocol::headers::REDACTED;
use weir_protocol::messages::{AclEntry, Operation, ResourceType};
use weir_protocol::ErrorCode;
use weir_tests::{cli_binary, connect, read_all, BrokerProcess};

const TOPIC: &str = "people";
const WAIT: Duration = Duration::from_secs(20);

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

/// The files under `dir` holding `needle`.
fn holding(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut all = Vec::new();
    files(dir, &mut all);
    all.into_iter()
        .filter(|p| {
            std::fs::read(p)
                .unwrap_or_default()
                .windows(needle.len())
                .any(|w| w == needle)
        })
        .collect()
}

async fn produce(client: &Client, records: &[(String, String)]) {
    let producer = Producer::builder(client)
        .acks(Acks::Durable)
        .build()
        .await
        .expect("producer");
    let mut acks = Vec::new();
    for (k, v) in records {
        acks.push(
            producer
                .send(ProducerRecord::new(TOPIC, v.clone()).key(k.clone()))
                .await
                .expect("send"),
        );
    }
    for a in acks {
        a.await.expect("acked");
    }
}

/// (key, value, redacted) of every record, sorted by value.
async fn contents(client: &Client, n: usize) -> Vec<(String, String, bool)> {
    let mut v: Vec<_> = read_all(client, TOPIC, n, WAIT)
        .await
        .into_iter()
        .map(|m| {
            let redacted = m.headers.iter().any(|h| h.name == REDACTED);
            (
                String::from_utf8(m.key.to_vec()).unwrap(),
                String::from_utf8(m.value.to_vec()).unwrap(),
                redacted,
            )
        })
        .collect();
    v.sort_by(|a, b| a.1.cmp(&b.1));
    v
}

async fn forget_a_key(env: &[(&str, &str)]) {
    let mut broker = BrokerProcess::start_with_env(env);
    let client = connect(&broker.addr(), Duration::from_secs(5)).await;
    let admin = Admin::new(client.clone());
    // Small segments, so the records span several closed segments.
    admin
        .create_topic(
            TOPIC,
            2,
            weir_client::TopicConfig {
                segment_bytes: 64 * 1024,
                max_message_bytes: 32 * 1024,
                ..Default::default()
            },
        )
        .await
        .expect("create");
    let mut records = Vec::new();
    for i in 0..600 {
        if i % 4 == 0 {
            records.push(("subject-17".to_string(), format!("FORGET-{i:04}-PERSONAL")));
        } else {
            records.push((
                format!("other-{}", i % 9),
                format!("keep-{i:04}-{}", "x".repeat(200)),
            ));
        }
    }
    produce(&client, &records).await;

    // The CLI writes the tombstones.
    let out = Command::new(cli_binary())
        .args([
            "--broker",
            &broker.addr(),
            "topic",
            "delete-key",
            TOPIC,
            "subject-17",
        ])
        .output()
        .expect("run weir");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("shard 0") && said.contains("shard 1"),
        "{said}"
    );

    // Later records with the key are kept.
    produce(
        &client,
        &[("subject-17".to_string(), "LATER-kept".to_string())],
    )
    .await;

    let check = |got: Vec<(String, String, bool)>| {
        assert_eq!(got.len(), 601, "every offset still there");
        let redacted = got.iter().filter(|r| r.2).count();
        assert_eq!(redacted, 150, "the deleted records come redacted");
        assert!(got.iter().all(|(_, v, _)| !v.starts_with("FORGET")));
        assert!(got
            .iter()
            .filter(|r| r.2)
            .all(|(k, v, _)| k.is_empty() && v.is_empty()));
        assert_eq!(
            got.iter()
                .filter(|(_, v, _)| v.starts_with("keep-"))
                .count(),
            450
        );
        assert!(got.contains(&("subject-17".into(), "LATER-kept".into(), false)));
    };
    check(contents(&client, 601).await);

    // Compaction removes the bytes from disk (bounded wait: delete_key_compact_ms is
    // 200 ms here).
    let data = broker.data_dir();
    let deadline = Instant::now() + WAIT;
    while !holding(&data, b"-PERSONAL").is_empty() {
        assert!(
            Instant::now() < deadline,
            "deleted bytes still on disk: {:?}",
            holding(&data, b"-PERSONAL")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check(contents(&client, 601).await);

    // And after a restart: still gone, still redacted, the rest intact.
    broker.terminate();
    assert!(holding(&data, b"-PERSONAL").is_empty());
    broker.restart();
    let client = connect(&broker.addr(), Duration::from_secs(5)).await;
    check(contents(&client, 601).await);
    assert!(holding(&data, b"-PERSONAL").is_empty());

    // Refusals.
    let admin = Admin::new(client.clone());
    match admin.delete_key("no-such-topic", b"k").await {
        Err(ClientError::Broker { code, .. }) => assert_eq!(code, ErrorCode::UnknownTopic),
        other => panic!("unknown topic: {other:?}"),
    }
    match admin.delete_key(TOPIC, b"").await {
        Err(ClientError::Broker { code, .. }) => assert_eq!(code, ErrorCode::InvalidRequest),
        other => panic!("empty key: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_is_hidden_then_gone_from_disk_across_a_restart() {
    forget_a_key(&[("WEIR_DELETE_KEY_COMPACT_MS", "200")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_is_compacted_out_of_sealed_segments() {
    forget_a_key(&[
        ("WEIR_DELETE_KEY_COMPACT_MS", "200"),
        ("WEIR_AT_REST_KEYS", "1=env:WEIR_AT_REST_KEY_1"),
        ("WEIR_AT_REST_WRITE_KEY", "1"),
        (
            "WEIR_AT_REST_KEY_1",
            "3333333333333333333333333333333333333333333333333333333333333333",
        ),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_key_needs_delete_on_the_topic() {
    let broker = BrokerProcess::start_with_env(&[
        ("WEIR_AUTH", "required"),
        ("WEIR_ADMIN_PASSWORD", "admin-pw"),
    ]);
    let login = |user: &str, pw: &str| {
        Client::connect_with(
            broker.addr(),
            ClientConfig {
                credentials: Some(Credentials::Password {
                    user: user.into(),
                    password: pw.into(),
                }),
                request_timeout: WAIT,
                ..ClientConfig::default()
            },
        )
    };
    let admin = Admin::new(login("admin", "admin-pw").await.expect("admin"));
    admin
        .create_topic(TOPIC, 1, Default::default())
        .await
        .expect("create");
    admin
        .upsert_user("reader", "reader-pw")
        .await
        .expect("user");
    admin
        .alter_acl(
            AclEntry {
                principal: "reader".into(),
                resource_type: ResourceType::Topic,
                pattern: TOPIC.into(),
                operation: Operation::Consume,
            },
            false,
        )
        .await
        .expect("grant");
    let reader = Admin::new(login("reader", "reader-pw").await.expect("reader"));
    match reader.delete_key(TOPIC, b"k").await {
        Err(ClientError::Broker { code, .. }) => assert_eq!(code, ErrorCode::NotAuthorized),
        other => panic!("expected a refusal: {other:?}"),
    }
    admin
        .alter_acl(
            AclEntry {
                principal: "reader".into(),
                resource_type: ResourceType::Topic,
                pattern: TOPIC.into(),
                operation: Operation::Delete,
            },
            false,
        )
        .await
        .expect("grant delete");
    let points = reader.delete_key(TOPIC, b"k").await.expect("now allowed");
    assert_eq!(points.len(), 1);
}

//! PROTOCOL.md's promises, checked against a real broker with raw requests (issue 14:
//! a client written from the spec alone must see what the spec says). Each test
//! names the rule it holds.

use std::time::Duration;

use bytes::Bytes;
use weir_client::{Admin, Client, ClientError, Producer, ProducerRecord};
use weir_protocol::batch::{BatchBuilder, NewRecord};
use weir_protocol::keys::shard_for_key;
use weir_protocol::messages::{
    Acks, CommitOffsetsRequest, CreateTopicRequest, InitProducerIdRequest, InitProducerIdResponse,
    ListOffsetsRequest, ListOffsetsResponse, LoadHistoryRequest, OffsetEntry, ProduceRequest,
    ProduceResponse, QueueFetchRequest, Records, TopicConfig,
};
use weir_protocol::routing::ANY_SHARD;
use weir_protocol::{ErrorCode, ResponseBody};
use weir_tests::over_both_transports;
use weir_tests::transport::SdkBroker;
use weir_tests::{connect, read_to_end, BrokerProcess};

const T0: i64 = 1_700_000_000_000;

async fn client(broker: &SdkBroker) -> Client {
    broker.client().await
}

async fn create(c: &Client, name: &str, shards: u32) -> u32 {
    let t = Admin::new(c.clone())
        .create_topic(name, shards, TopicConfig::default())
        .await
        .expect("create topic");
    t.shards.len() as u32
}

/// One batch of records `(timestamp_ms, key)`, optionally from an idempotent producer.
fn batch(records: &[(i64, &[u8])], producer: Option<(u64, u16, u32)>) -> Bytes {
    let mut b = BatchBuilder::new();
    if let Some((id, epoch, seq)) = producer {
        b = b.producer(id, epoch, seq);
    }
    for &(ts, key) in records {
        let mut r = NewRecord::value(ts, b"v");
        r.key = key;
        b.push(&r).unwrap();
    }
    b.finish().unwrap()
}

async fn produce(
    c: &Client,
    topic: &str,
    shard: u32,
    batch: Bytes,
) -> Result<ProduceResponse, ClientError> {
    let req = ProduceRequest {
        topic: topic.into(),
        shard,
        acks: Acks::Leader,
        timeout_ms: 0,
        records: Records::from_bytes(batch),
    };
    match c.call(req).await? {
        ResponseBody::Produce(r) => Ok(r),
        other => panic!("unexpected {:?}", other.api_key()),
    }
}

async fn list_offsets(c: &Client, topic: &str, timestamp_ms: i64) -> ListOffsetsResponse {
    let req = ListOffsetsRequest {
        topic: topic.into(),
        shard: 0,
        timestamp_ms,
    };
    match c.call(req).await.expect("list offsets") {
        ResponseBody::ListOffsets(r) => r,
        other => panic!("unexpected {:?}", other.api_key()),
    }
}

fn code(r: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    r.expect_err("refused").code().expect("a broker error")
}

over_both_transports! {
    /// §"Key → shard": a keyed record produced to another shard than its key's is refused
    /// with WRONG_SHARD naming the right shard, whether the key was sent or derived by
    /// the topic's shard-key rule; on its own shard it is stored, and keyless records go
    /// anywhere. Before, any client could store one key on two shards.
    async fn a_keyed_record_on_the_wrong_shard_is_refused_naming_the_right_one(t) {
        let broker = SdkBroker::start(t).await;
        let c = client(&broker).await;
        create(&c, "keyed", 7).await;
        let right = shard_for_key("東京".as_bytes(), 7);
        let wrong = (right + 3) % 7;
        let b = batch(&[(T0, "東京".as_bytes())], None);
        let e = produce(&c, "keyed", wrong, b.clone())
            .await
            .expect_err("wrong shard");
        assert_eq!(e.code(), Some(ErrorCode::WrongShard), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("belongs on shard {right} of 7, not shard {wrong}")),
            "{e}"
        );
        produce(&c, "keyed", right, b).await.expect("its own shard");
        produce(&c, "keyed", wrong, batch(&[(T0, b"")], None))
            .await
            .expect("a keyless record goes anywhere");

        let config = TopicConfig {
            shard_key_rule: "header:tenant".into(),
            ..TopicConfig::default()
        };
        Admin::new(c.clone())
            .create_topic("derived", 7, config)
            .await
            .expect("create");
        let mut b = BatchBuilder::new();
        let headers: &[(&str, &[u8])] = &[("tenant", "東京".as_bytes())];
        let mut r = NewRecord::value(T0, b"v");
        r.headers = headers;
        b.push(&r).unwrap();
        let b = b.finish().unwrap();
        assert_eq!(
            code(produce(&c, "derived", wrong, b.clone()).await),
            ErrorCode::WrongShard,
            "a derived key counts like a key sent"
        );
        produce(&c, "derived", right, b)
            .await
            .expect("derived key's shard");
    }
}

async fn init(
    c: &Client,
    producer_id: u64,
    producer_epoch: u16,
) -> Result<InitProducerIdResponse, ClientError> {
    let req = InitProducerIdRequest {
        producer_id,
        producer_epoch,
    };
    match c.call(req).await? {
        ResponseBody::InitProducerId(r) => Ok(r),
        other => panic!("unexpected {:?}", other.api_key()),
    }
}

/// A keyless one-record batch of producer (`id`, `epoch`) at `seq`, of `priority`.
fn idem(id: u64, epoch: u16, seq: u32, priority: u8) -> Bytes {
    let mut b = BatchBuilder::new().producer(id, epoch, seq);
    let mut r = NewRecord::value(T0, b"v");
    r.priority = priority;
    b.push(&r).unwrap();
    b.finish().unwrap()
}

/// §"InitProducerId": bumping the epoch fences the old instance on every shard and
/// class at once — also where the new instance never wrote — and still after a
/// restart. Before, the zombie kept writing on every lane the new epoch had not
/// reached.
#[tokio::test]
async fn a_new_epoch_fences_the_old_instance_on_every_shard() {
    let mut broker = BrokerProcess::start();
    let c = connect(&broker.addr(), Duration::from_secs(5)).await;
    create(&c, "fence", 2).await;
    let old = init(&c, 0, 0).await.expect("new id");
    let id = old.producer_id;
    produce(&c, "fence", 0, idem(id, 0, 0, 5))
        .await
        .expect("old instance writes");
    let new = init(&c, id, old.producer_epoch).await.expect("bump");
    assert_eq!(new.producer_epoch, 1);
    // The zombie, on a shard and in classes the new instance never touched.
    for (shard, priority) in [(1, 5), (0, 9), (0, 5)] {
        let seq = u32::from(shard == 0 && priority == 5);
        assert_eq!(
            code(produce(&c, "fence", shard, idem(id, 0, seq, priority)).await),
            ErrorCode::ProducerFenced,
            "shard {shard} priority {priority}"
        );
    }
    produce(&c, "fence", 0, idem(id, 1, 0, 5))
        .await
        .expect("new instance writes");
    // An old instance bumping again goes past the newest epoch, not to 1 again.
    assert_eq!(init(&c, id, 0).await.unwrap().producer_epoch, 2);
    produce(&c, "fence", 1, idem(id, 2, 0, 5))
        .await
        .expect("newest writes");

    drop(c);
    broker.terminate();
    broker.restart();
    let c = connect(&broker.addr(), Duration::from_secs(5)).await;
    assert_eq!(
        code(produce(&c, "fence", 0, idem(id, 1, 1, 5)).await),
        ErrorCode::ProducerFenced,
        "epoch 2, in shard 1's log, fences shard 0 after a restart"
    );
    produce(&c, "fence", 1, idem(id, 2, 1, 5))
        .await
        .expect("an id from before the restart");
}

over_both_transports! {
    /// The SDK under per-id fencing: when one of its lanes gives a batch up and moves the
    /// producer to a new epoch, its other lanes' batches still in flight at the old epoch
    /// are fenced by the broker; the SDK re-stamps and resends them (they were not
    /// stored), so every record of the busy lane is stored exactly once, in order.
    async fn the_sdk_follows_its_own_epoch_bump_on_every_lane(t) {
        const N: usize = 4000;
        let broker = SdkBroker::start(t).await;
        let c = client(&broker).await;
        create(&c, "bump", 2).await;
        let producer = Producer::builder(&c)
            .max_batch_bytes(512)
            .build()
            .await
            .expect("producer");
        let key = (0u32..)
            .map(|i| format!("k{i}"))
            .find(|k| shard_for_key(k.as_bytes(), 2) == 0)
            .unwrap();
        let mut sent = Vec::with_capacity(N);
        let mut refused = None;
        for i in 0..N {
            let rec = ProducerRecord::new("bump", format!("{i:05}")).shard(0);
            sent.push(producer.send(rec).await.expect("queued"));
            if i == N / 2 {
                // Certainly not stored: its lane gives it up and bumps the epoch.
                let wrong = ProducerRecord::new("bump", "x").key(key.clone()).shard(1);
                refused = Some(producer.send(wrong).await.expect("queued"));
            }
        }
        let e = refused.unwrap().await.expect_err("wrong shard");
        assert_eq!(e.code(), Some(ErrorCode::WrongShard), "{e}");
        for (i, f) in sent.into_iter().enumerate() {
            f.await.unwrap_or_else(|e| panic!("record {i}: {e}"));
        }
        let values: Vec<String> = read_to_end(&c, "bump", Duration::from_secs(30))
            .await
            .into_iter()
            .filter(|m| m.shard == 0)
            .map(|m| String::from_utf8(m.value.to_vec()).unwrap())
            .collect();
        let expected: Vec<String> = (0..N).map(|i| format!("{i:05}")).collect();
        assert_eq!(values, expected, "every record once, in order");
    }
}

over_both_transports! {
    /// §"Error codes": UNKNOWN_PRODUCER_ID for an id the broker never issued, whatever
    /// the sequence, in Produce and InitProducerId. Before, a made-up id was accepted.
    async fn a_producer_id_never_issued_is_unknown(t) {
        let broker = SdkBroker::start(t).await;
        let c = client(&broker).await;
        create(&c, "made-up", 1).await;
        let issued = init(&c, 0, 0).await.expect("new id").producer_id;
        let made_up = issued + 10_000;
        for seq in [0, 5] {
            assert_eq!(
                code(produce(&c, "made-up", 0, idem(made_up, 0, seq, 5)).await),
                ErrorCode::UnknownProducerId,
                "sequence {seq}"
            );
        }
        assert_eq!(
            code(init(&c, made_up, 0).await),
            ErrorCode::UnknownProducerId
        );
        produce(&c, "made-up", 0, idem(issued, 0, 0, 5))
            .await
            .expect("an issued id");
    }
}

over_both_transports! {
    /// §"ListOffsets": the answer is the first *record* with timestamp ≥ T, its offset and
    /// its own timestamp, not the base offset and newest timestamp of its batch.
    async fn list_offsets_by_time_answers_with_the_first_record(t) {
        let broker = SdkBroker::start(t).await;
        let c = client(&broker).await;
        create(&c, "times", 1).await;
        let batches: [&[(i64, &[u8])]; 3] = [
            &[(T0, b""), (T0 + 1000, b""), (T0 + 2000, b"")],
            &[(T0 + 3000, b""), (T0 + 5000, b"")],
            &[(T0 + 6000, b""), (T0 + 5500, b""), (T0 + 7000, b"")],
        ];
        for b in batches {
            produce(&c, "times", 0, batch(b, None))
                .await
                .expect("produce");
        }
        for (asked, offset, ts) in [
            (T0, 0, T0),
            (T0 + 1, 1, T0 + 1000),
            (T0 + 4000, 4, T0 + 5000),
            (T0 + 5200, 5, T0 + 6000),
            (T0 + 6500, 7, T0 + 7000),
        ] {
            let r = list_offsets(&c, "times", asked).await;
            assert_eq!(
                (r.offset, r.timestamp_ms),
                (offset, ts),
                "asked T0+{}",
                asked - T0
            );
        }
    }
}

over_both_transports! {
    /// §"Metadata": an unknown name gets an error entry and hides none of the others.
    /// Before, it failed the whole request with UNKNOWN_TOPIC.
    async fn metadata_answers_per_topic(t) {
        let broker = SdkBroker::start(t).await;
        let c = client(&broker).await;
        create(&c, "known", 2).await;
        let m = c
            .metadata_partial(&["nope", "known", "also-nope", "known"])
            .await
            .expect("metadata");
        let names: Vec<&str> = m.topics.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["known"]);
        let errors: Vec<(&str, u16)> = m
            .errors
            .iter()
            .map(|e| (e.name.as_str(), e.error_code))
            .collect();
        let unknown = ErrorCode::UnknownTopic as u16;
        assert_eq!(errors, [("also-nope", unknown), ("nope", unknown)]);
        assert_eq!(
            code(c.metadata(&["known", "nope"]).await),
            ErrorCode::UnknownTopic,
            "the SDK's all-or-nothing call"
        );
        assert!(c.metadata(&[]).await.expect("all").errors.is_empty());
    }
}

async fn commit(c: &Client, group: &str, topic: &str) -> Result<ResponseBody, ClientError> {
    c.call(CommitOffsetsRequest {
        group: group.into(),
        member_id: String::new(),
        generation: 0,
        offsets: vec![OffsetEntry {
            topic: topic.into(),
            shard: 0,
            offset: 0,
        }],
    })
    .await
}

async fn lease(c: &Client, group: &str, topic: &str) -> Result<ResponseBody, ClientError> {
    c.call(QueueFetchRequest {
        group: group.into(),
        consumer: "c".into(),
        topic: topic.into(),
        max_messages: 1,
        lease_ms: 0,
        max_wait_ms: 0,
    })
    .await
}

over_both_transports! {
    /// §"Queue mode": a group name belongs to one mode for good. A group with committed
    /// offsets and no live member is still a streaming group (before, it could start
    /// leasing), and a queue group cannot commit offsets.
    async fn a_group_name_keeps_its_mode_without_live_members(t) {
        let broker = SdkBroker::start(t).await;
        let c = client(&broker).await;
        create(&c, "modes", 1).await;
        commit(&c, "streaming", "modes").await.expect("commit");
        assert_eq!(
            code(lease(&c, "streaming", "modes").await),
            ErrorCode::NotQueueGroup
        );
        lease(&c, "queueing", "modes").await.expect("lease");
        assert_eq!(
            code(commit(&c, "queueing", "modes").await),
            ErrorCode::NotQueueGroup
        );
    }
}

over_both_transports! {
    /// §"CreateTopic": `shards` = 0 means the broker's `default_shards`.
    async fn zero_shards_means_the_broker_default(t) {
        let broker = SdkBroker::start_with_env(t, &[("WEIR_DEFAULT_SHARDS", "3")]).await;
        let c = client(&broker).await;
        let req = CreateTopicRequest {
            name: "dflt".into(),
            shards: 0,
            config: TopicConfig::default(),
        };
        let ResponseBody::CreateTopic(r) = c.call(req).await.expect("create") else {
            panic!("not a CreateTopic answer");
        };
        assert_eq!(r.topic.shards.len(), 3);
    }
}

over_both_transports! {
    /// §"ListOffsets": with no record at or after the time asked for, the answer is the
    /// high-water mark with timestamp -1 (and -1 for the special times too).
    async fn list_offsets_past_the_newest_record_is_the_end_with_timestamp_minus_one(t) {
        let broker = SdkBroker::start(t).await;
        let c = client(&broker).await;
        create(&c, "lo", 1).await;
        produce(&c, "lo", 0, batch(&[(T0, b""), (T0 + 1000, b"")], None))
            .await
            .expect("produce");
        let r = list_offsets(&c, "lo", T0 + 5000).await;
        assert_eq!((r.offset, r.timestamp_ms), (2, -1));
        let r = list_offsets(&c, "lo", -1).await;
        assert_eq!((r.offset, r.timestamp_ms), (2, -1));
        let r = list_offsets(&c, "lo", -2).await;
        assert_eq!((r.offset, r.timestamp_ms), (0, -1));
    }
}

/// One batch of keyless records of priority 10 and complexity 5 (bulk, heavy).
fn heavy_keyless(n: usize) -> Bytes {
    let mut b = BatchBuilder::new();
    for _ in 0..n {
        let mut r = NewRecord::value(T0, b"heavy");
        r.priority = 10;
        r.complexity = 5;
        b.push(&r).unwrap();
    }
    b.finish().unwrap()
}

/// The newest one-second ingest rate the load agents report for each shard of `topic`.
async fn ingest_rates(c: &Client, topic: &str) -> Vec<(u32, u64)> {
    let req = LoadHistoryRequest {
        topic: topic.into(),
        resolution_s: 1,
        max_samples: 1,
    };
    match c.call(req).await.expect("load history") {
        ResponseBody::LoadHistory(r) => r
            .shards
            .iter()
            .map(|s| (s.shard, s.samples.last().map_or(0, |p| p.records_in_per_s)))
            .collect(),
        other => panic!("unexpected {:?}", other.api_key()),
    }
}

over_both_transports! {
    /// §"Key → shard", placed by the broker: a Produce sent to ANY_SHARD puts keyed
    /// records on their key's shard, refuses an idempotent batch and records whose keys
    /// belong on two shards, and puts keyless records where the load agents' figures
    /// say: while shard 0 takes a steady stream, heavy keyless records all go to shard
    /// 1 (a broker placing them in turn would put half on shard 0). The answer names
    /// the shard, and the records are stored there.
    async fn the_broker_places_a_produce_sent_to_any_shard(t) {
        let broker = SdkBroker::start(t).await;
        let c = client(&broker).await;
        create(&c, "placed", 2).await;
        let key_on = |shard: u32| {
            (0u32..)
                .map(|i| format!("k{i}"))
                .find(|k| shard_for_key(k.as_bytes(), 2) == shard)
                .unwrap()
        };
        let (k1, k0) = (key_on(1), key_on(0));
        let r = produce(&c, "placed", ANY_SHARD, batch(&[(T0, k1.as_bytes()), (T0, b"")], None))
            .await
            .expect("keyed, placed by key");
        assert_eq!(r.shard, 1);
        let two = batch(&[(T0, k1.as_bytes()), (T0, k0.as_bytes())], None);
        assert_eq!(code(produce(&c, "placed", ANY_SHARD, two).await), ErrorCode::WrongShard);
        let id = init(&c, 0, 0).await.expect("producer id").producer_id;
        let idempotent = batch(&[(T0, b"")], Some((id, 0, 0)));
        assert_eq!(
            code(produce(&c, "placed", ANY_SHARD, idempotent).await),
            ErrorCode::InvalidRequest
        );

        // Shard 0 takes a stream of produces until the agents report it.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stream = {
            let (c, stop) = (c.clone(), stop.clone());
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && started.elapsed() < Duration::from_secs(30)
                {
                    produce(&c, "placed", 0, heavy_keyless(200)).await.expect("stream");
                }
            })
        };
        let started = std::time::Instant::now();
        loop {
            let rates = ingest_rates(&c, "placed").await;
            if rates.iter().any(|&(s, r)| s == 0 && r >= 1000) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "shard 0 never busy: {rates:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut placed = Vec::new();
        for _ in 0..20 {
            let r = produce(&c, "placed", ANY_SHARD, heavy_keyless(1)).await.expect("placed");
            placed.push(r.shard);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        stream.await.expect("stream task");
        assert!(placed.iter().all(|&s| s == 1), "heavy keyless records avoid busy shard 0: {placed:?}");
        let on_1 = read_to_end(&c, "placed", Duration::from_secs(30))
            .await
            .into_iter()
            .filter(|m| m.shard == 1 && &m.value[..] == b"heavy")
            .count();
        assert_eq!(on_1, 20, "every placed record is on the shard its answer named");
    }
}

over_both_transports! {
    /// `keyless_placement = round_robin`: a Produce sent to ANY_SHARD without keys goes
    /// to the topic's shards in turn.
    async fn round_robin_placement_takes_the_shards_in_turn(t) {
        let broker =
            SdkBroker::start_with_env(t, &[("WEIR_KEYLESS_PLACEMENT", "round_robin")]).await;
        let c = client(&broker).await;
        create(&c, "turns", 3).await;
        let mut placed = Vec::new();
        for _ in 0..6 {
            let r = produce(&c, "turns", ANY_SHARD, heavy_keyless(1)).await.expect("placed");
            placed.push(r.shard);
        }
        let first = placed[0];
        let expected: Vec<u32> = (0..6).map(|i| (first + i) % 3).collect();
        assert_eq!(placed, expected);
    }
}

/// §"Resharding", "Retries across a reshard": an idempotent batch is matched against
/// what its shard stored before the layout, so a retry of a stored batch is answered
/// with its original offsets (`duplicate` = 1) after its key moved (a grow) or its
/// shard was sealed (a shrink); new batches and non-idempotent ones routed under the
/// earlier layout are LAYOUT_CHANGED, and nothing of them is written.
#[tokio::test]
async fn a_retry_after_a_reshard_gets_its_offsets_and_nothing_else_is_written() {
    let broker = BrokerProcess::start();
    let c = connect(&broker.addr(), Duration::from_secs(5)).await;
    let admin = Admin::new(c.clone());
    create(&c, "moves", 2).await;
    let p = init(&c, 0, 0).await.expect("producer id");
    let (id, epoch) = (p.producer_id, p.producer_epoch);
    // A key on shard 0 that moves to the new shard 2 when the topic grows.
    let key = (0..)
        .map(|i| format!("key-{i}"))
        .find(|k| shard_for_key(k.as_bytes(), 2) == 0 && shard_for_key(k.as_bytes(), 3) == 2)
        .expect("a moving key");
    let old = 0;
    let keyed = |seq: Option<u32>| batch(&[(T0, key.as_bytes())], seq.map(|s| (id, epoch, s)));
    let first = produce(&c, "moves", old, keyed(Some(0)))
        .await
        .expect("stored before the grow");
    // A keyless batch on shard 1, which a shrink will seal (its own sequence lane).
    let keyless = |seq: Option<u32>| batch(&[(T0, b"")], seq.map(|s| (id, epoch, s)));
    let on_one = produce(&c, "moves", 1, keyless(Some(0)))
        .await
        .expect("stored on shard 1");
    admin.reshard_topic("moves", 3).await.expect("grow");

    let again = produce(&c, "moves", old, keyed(Some(0)))
        .await
        .expect("the retry is answered");
    assert_eq!(
        (again.base_offset, again.duplicate),
        (first.base_offset, 1),
        "a retry of a stored batch whose key moved"
    );
    assert_eq!(
        code(produce(&c, "moves", old, keyed(Some(1))).await),
        ErrorCode::LayoutChanged,
        "a new batch of the moved key"
    );
    assert_eq!(
        code(produce(&c, "moves", old, keyed(None)).await),
        ErrorCode::LayoutChanged,
        "a non-idempotent batch of the moved key"
    );

    admin.reshard_topic("moves", 1).await.expect("shrink");
    let again = produce(&c, "moves", 1, keyless(Some(0)))
        .await
        .expect("the retry on a sealed shard is answered");
    assert_eq!(
        (again.base_offset, again.duplicate),
        (on_one.base_offset, 1),
        "a retry of a stored batch on a sealed shard"
    );
    for b in [keyless(Some(1)), keyless(None)] {
        assert_eq!(
            code(produce(&c, "moves", 1, b).await),
            ErrorCode::LayoutChanged,
            "new records on a sealed shard"
        );
    }
    // Nothing refused was written: each shard holds only what was stored first.
    let t = admin.describe_topic("moves").await.expect("describe");
    let stored: u64 = t.shards.iter().map(|s| s.high_watermark).sum();
    assert_eq!(stored, 2, "{:?}", t.shards);
}

//! The SDK's record types. Going out, what a producer is given to send: one
//! [`ProducerRecord`] for `send`, or a [`ProducerBatch`] of many records for one topic
//! for `send_batch`. Coming in, the one [`Message`] every consumer receives: a
//! stream `Consumer` returns it as is, a `QueueConsumer` wraps it with its lease
//! (`QueueMessage`).
//!
//! Topics are `Arc<str>`: a caller sending millions of records to one topic clones a
//! pointer per record, not a string, and every message of one fetch shares one name.

use std::sync::Arc;

use bytes::Bytes;
use weir_protocol::batch::Header;

/// One record to send. Not a [`Message`]: before the broker stores it a record has
/// no offset, and key, priority, complexity, shard and timestamp are choices left
/// open (`None`) for the producer and broker to fill in.
#[derive(Debug, Clone)]
pub struct ProducerRecord {
    pub topic: Arc<str>,
    /// The shard key: records with equal keys go to the same shard, in order.
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub priority: Option<u8>,
    pub complexity: Option<u8>,
    pub headers: Vec<(String, Bytes)>,
    /// Send to this shard instead of hashing the key.
    pub shard: Option<u32>,
    /// Milliseconds since the Unix epoch; when unset, the time of `send` from the
    /// coarse real-time clock (within one kernel tick, 1–10 ms, of a precise read).
    pub timestamp_ms: Option<i64>,
}

impl ProducerRecord {
    /// A record with a value and nothing else set.
    pub fn new(topic: impl Into<Arc<str>>, value: impl Into<Bytes>) -> Self {
        ProducerRecord {
            topic: topic.into(),
            key: None,
            value: value.into(),
            priority: None,
            complexity: None,
            headers: Vec::new(),
            shard: None,
            timestamp_ms: None,
        }
    }
    /// Sets the shard key.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }
    /// Sets the priority (1 highest … 10).
    pub fn priority(mut self, p: u8) -> Self {
        self.priority = Some(p);
        self
    }
    /// Sets the complexity (1 … 5).
    pub fn complexity(mut self, c: u8) -> Self {
        self.complexity = Some(c);
        self
    }
    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    /// Pins the shard. A keyed record (its own key or one the topic's shard-key rule
    /// derives) must be pinned to its key's shard, or the broker refuses it with
    /// WRONG_SHARD (PROTOCOL.md, "Key → shard"); pin keyless records freely.
    pub fn shard(mut self, shard: u32) -> Self {
        self.shard = Some(shard);
        self
    }
    /// Sets the timestamp.
    pub fn timestamp_ms(mut self, ts: i64) -> Self {
        self.timestamp_ms = Some(ts);
        self
    }
}

/// How the records of one [`ProducerBatch`] are spread over the topic's shards.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Partitioning {
    /// Each record by its own key; a record without one gets a key from the topic's
    /// shard-key rule, and records still without a key all go to one shard chosen for
    /// the call (so an unkeyed call stays one batch). `Key` with an empty key means
    /// this too.
    #[default]
    PerRecord,
    /// Every record to this shard. The SDK does not hash keys then, but the broker
    /// refuses a call's records with WRONG_SHARD when a keyed one (its own key or the
    /// shard-key rule's) belongs on another shard (PROTOCOL.md, "Key → shard").
    Shard(u32),
    /// Every record to the shard of this key; records without a key of their own
    /// store it as theirs, as if each had been sent with `ProducerRecord::key`.
    Key(Bytes),
}

/// One record of a [`ProducerBatch`]: a [`ProducerRecord`] without topic or shard
/// (the batch holds them once for all its records, which is what makes it cheap).
#[derive(Debug, Clone, Default)]
pub struct BatchRecord {
    /// The shard key (see [`Partitioning`]).
    pub key: Option<Bytes>,
    /// The payload, stored as given.
    pub value: Bytes,
    /// 1 highest … 10; the producer's default when unset.
    pub priority: Option<u8>,
    /// 1 … 5; the producer's default when unset.
    pub complexity: Option<u8>,
    pub headers: Vec<(String, Bytes)>,
    /// Milliseconds since the Unix epoch; the time the producer takes the call when
    /// unset.
    pub timestamp_ms: Option<i64>,
}

impl BatchRecord {
    /// A record with a value and nothing else set.
    pub fn new(value: impl Into<Bytes>) -> Self {
        BatchRecord {
            value: value.into(),
            ..Default::default()
        }
    }
    /// Sets the shard key.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }
    /// Sets the priority (1 highest … 10).
    pub fn priority(mut self, p: u8) -> Self {
        self.priority = Some(p);
        self
    }
    /// Sets the complexity (1 … 5).
    pub fn complexity(mut self, c: u8) -> Self {
        self.complexity = Some(c);
        self
    }
    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    /// Sets the timestamp.
    pub fn timestamp_ms(mut self, ts: i64) -> Self {
        self.timestamp_ms = Some(ts);
        self
    }
}

/// Many records for one topic, handed to the producer in one call of
/// `Producer::send_batch` and acknowledged by one future. Exists because a per-record
/// `send` costs a channel message and a completion per record; a batch costs one of
/// each, and its records are encoded straight into the wire batch.
#[derive(Debug, Clone)]
pub struct ProducerBatch {
    pub(crate) topic: Arc<str>,
    pub(crate) partitioning: Partitioning,
    pub(crate) records: Vec<BatchRecord>,
}

impl ProducerBatch {
    /// An empty batch for `topic`, spread by [`Partitioning::PerRecord`].
    pub fn new(topic: impl Into<Arc<str>>) -> Self {
        Self::with_capacity(topic, 0)
    }

    /// Like [`ProducerBatch::new`], with room for `records` records.
    pub fn with_capacity(topic: impl Into<Arc<str>>, records: usize) -> Self {
        ProducerBatch {
            topic: topic.into(),
            partitioning: Partitioning::PerRecord,
            records: Vec::with_capacity(records),
        }
    }

    /// Sends every record to `shard`. Keyed records must belong there (see
    /// [`Partitioning::Shard`]).
    pub fn shard(mut self, shard: u32) -> Self {
        self.partitioning = Partitioning::Shard(shard);
        self
    }

    /// Sends every record to the shard of `key` (and stores it as the key of records
    /// that have none).
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.partitioning = Partitioning::Key(key.into());
        self
    }

    /// Sets how records are spread over shards.
    pub fn partitioning(mut self, p: Partitioning) -> Self {
        self.partitioning = p;
        self
    }

    /// Adds a record with just a value.
    pub fn push(&mut self, value: impl Into<Bytes>) -> &mut Self {
        self.records.push(BatchRecord::new(value));
        self
    }

    /// Adds a record.
    pub fn push_record(&mut self, record: BatchRecord) -> &mut Self {
        self.records.push(record);
        self
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Records added.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record was added.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

impl Extend<BatchRecord> for ProducerBatch {
    fn extend<I: IntoIterator<Item = BatchRecord>>(&mut self, iter: I) {
        self.records.extend(iter);
    }
}

/// One received record, as the broker stored it: every field is set. `key`, `value`
/// and header values are slices of the fetched response (no copy); `topic` is shared
/// by every message of a fetch. Queue mode hands the same type out inside a
/// `QueueMessage`, next to the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: Arc<str>,
    pub shard: u32,
    pub offset: u64,
    pub priority: u8,
    pub complexity: u8,
    pub timestamp_ms: i64,
    pub key: Bytes,
    pub value: Bytes,
    pub headers: Vec<Header>,
}

impl Message {
    /// A decoded record of `topic`/`shard` as a message (moves its buffers, no copy).
    pub(crate) fn from_record(
        topic: &Arc<str>,
        shard: u32,
        r: weir_protocol::batch::Record,
    ) -> Message {
        Message {
            topic: topic.clone(),
            shard,
            offset: r.offset,
            priority: r.priority,
            complexity: r.complexity,
            timestamp_ms: r.timestamp_ms,
            key: r.key,
            value: r.value,
            headers: r.headers,
        }
    }
}

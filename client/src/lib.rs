//! Weir's async Rust SDK.
//!
//! ```no_run
//! # async fn demo() -> weir_client::Result<()> {
//! use weir_client::{Admin, Client, Consumer, Producer, ProducerRecord, OffsetReset};
//! let client = Client::connect("127.0.0.1:7700").await?;
//! Admin::new(client.clone()).create_topic("orders", 4, Default::default()).await?;
//! let producer = Producer::builder(&client).build().await?;
//! producer.send_and_wait(ProducerRecord::new("orders", "hello").key("user-1")).await?;
//! let mut consumer = Consumer::builder(&client).group("billing").topic("orders")
//!     .reset(OffsetReset::Earliest).build()?;
//! for m in consumer.poll(100, std::time::Duration::from_secs(1)).await? {
//!     println!("{} {:?}", m.offset, m.value);
//! }
//! consumer.commit().await?;
//! # Ok(()) }
//! ```
//!
//! - [`Client`] — one broker connection, shared, reconnecting.
//! - [`Producer`] — batching, pipelined, idempotent by default; `send` per record or
//!   `send_batch` for many records of one topic with one future.
//! - [`Consumer`] — by offset, alone or in a group.
//! - [`QueueConsumer`] and [`Worker`] — queue mode: per-record ack / nack, retries,
//!   dead letters.
//! - [`Message`] — a received record, the same for both: `Consumer::poll` returns
//!   messages, a [`QueueMessage`] holds one (`m.message`, or `m.value` through
//!   `Deref`) next to its lease and attempt count.
//! - [`Admin`] — topics, quotas and the broker's flow state.
//! - [`auth`] — authentication ([`ClientConfig::credentials`]: a password or an API key).
//! - [`tls`] — TLS and mutual TLS to the broker ([`ClientConfig::tls`]).
//! - [`flow`] — producer back-pressure policy and the client's circuit breaker.
//! - With the `embedded` feature, [`embedded::EmbeddedBroker`] runs a broker in-process;
//!   its `client()` reaches it through in-memory channels instead of a socket. Same
//!   API and the same guarantees (ack levels, idempotence, order, priority classes,
//!   quotas, shedding); what differs is only cost: no frame encoding, no socket
//!   copies, and fetched records are zero-copy slices of the broker's mapped log.

pub mod admin;
pub mod auth;
pub mod client;
pub mod cluster;
pub mod connection;
pub mod consumer;
pub mod delivery;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod error;
pub mod flow;
pub mod partitioner;
pub mod producer;
pub mod queue;
pub mod record;
pub use weir_protocol::routing;
pub mod telemetry;
pub mod tls;

pub use admin::Admin;
pub use auth::Credentials;
pub use client::{Client, ClientConfig};
pub use cluster::ClusterView;
pub use consumer::{ConsumedBatch, Consumer, ConsumerConfig, DeliveryOrder, OffsetReset};
pub use delivery::{
    BatchDeliveryFuture, BatchMetadata, DeliveredRange, DeliveryFuture, RecordMetadata,
};
pub use error::{ClientError, Result};
pub use flow::{Backpressure, BreakerConfig, BreakerState};
pub use producer::{Producer, ProducerConfig};
pub use queue::{
    queue_status, HandlerError, NackOutcome, QueueConfig, QueueConsumer, QueueMessage, Worker,
    WorkerStats,
};
pub use record::{BatchRecord, Message, Partitioning, ProducerBatch, ProducerRecord};
pub use telemetry::Telemetry;
pub use tls::TlsConfig;
pub use weir_protocol::messages::{
    Acks, DemandHistory, DemandSample, Durability, FlowStatusResponse, LoadForecast,
    LoadHistoryResponse, NodeLoadSample, Quota, QuotaEntry, Reshard, ShardLoadHistory,
    ShardLoadSample, TopicConfig,
};

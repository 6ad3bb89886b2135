//! The Weir broker: storage, shards, topics, groups, and the protocol server.
//!
//! Start one with [`Broker::start`]; the `weir-broker` binary is a thin wrapper that
//! reads the configuration and waits for a signal. ARCHITECTURE.md at the repository
//! root walks the path of one message through these modules.

// Leaf vocabulary: imported by the modules below, importing none of them back.
pub mod affinity;
pub mod autoshard;
pub mod clock;
pub mod error;
pub mod files;
pub mod forecast;
pub mod huge_pages;
pub mod invariant;
pub mod load_history;
pub mod meters;
pub mod names;
pub mod retry;
pub mod spin;

pub mod broker;
pub mod cluster;
pub mod config;
pub mod flow;
pub mod groups;
pub mod http;
pub mod inject;
pub mod observe;
pub mod producer_ids;
pub mod queue;
pub mod scheduler;
pub mod security;
pub mod server;
pub mod shard;
pub mod state;
pub mod storage;
pub mod telemetry;
pub mod topics;

pub use broker::Broker;
pub use config::Config;
pub use error::BrokerError;
pub use state::BrokerState;

//! Weir's wire protocol: frames, requests, responses, record batches and the codec.
//!
//! This crate does no I/O and has no runtime. Everything that turns bytes from a socket
//! or a disk into values lives here, is bounds-checked, never panics on bad input, and
//! has property tests and a fuzz target. PROTOCOL.md at the repository root describes
//! the same format byte for byte for implementers in other languages.
//!
//! - [`frame`]: length prefix and headers; [`codec`]: tokio-util codecs.
//! - [`api`]: the table of apis; [`messages`]: their bodies.
//! - [`batch`]: the record batch, the unit of storage.
//! - [`sealed`]: a batch as stored when the broker encrypts data at rest.
//! - [`breaker`]: the circuit breaker state machine of queues and of the SDK.
//! - [`classes`]: priorities 1..=10 grouped into the classes P0..P3.
//! - [`keys`]: shard-key rules shared by broker and SDK.
//! - [`reshard`]: the rule that keeps a key's records in order across a reshard.
//! - [`scram`]: SCRAM-SHA-256, the password mechanism of Authenticate.
//! - [`headers`]: names of the record headers Weir writes (dead letters, replays).
//! - [`error`]: wire error codes and decode errors.

pub mod api;
pub mod batch;
pub mod breaker;
pub mod classes;
pub mod codec;
pub mod error;
pub mod frame;
pub mod headers;
pub mod keys;
pub mod messages;
pub mod reshard;
pub mod routing;
pub mod scram;
pub mod sealed;
pub mod wire;

pub use api::{ApiKey, Request, ResponseBody};
pub use codec::{ClientCodec, FrameError, ServerCodec};
pub use error::{DecodeError, ErrorCode};
pub use frame::{RequestFrame, RequestHeader, ResponseFrame, ResponsePayload};

//! Request and response bodies, one file per area of the protocol.
//!
//! Each body is a struct whose wire form is its fields in order (see `wire_struct!`).
//! Where a body carries records, the records are its last field, so a sender can write
//! the fixed part from a buffer and the stored batches straight after it.

pub mod cluster;
pub mod fetch;
pub mod flow;
pub mod groups;
pub mod handshake;
pub mod load;
pub mod produce;
pub mod queue;
pub mod records;
pub mod security;
pub mod topics;

pub use cluster::*;
pub use fetch::*;
pub use flow::*;
pub use groups::*;
pub use handshake::*;
pub use load::*;
pub use produce::*;
pub use queue::*;
pub use records::Records;
pub use security::*;
pub use topics::*;

//! Consumer groups: membership and shard assignment ([`coordinator`]) and committed
//! offsets ([`offsets`]).

pub mod coordinator;
pub mod offsets;

pub use coordinator::Coordinator;
pub use offsets::OffsetStore;

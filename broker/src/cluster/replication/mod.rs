//! Copying shards between nodes: the primary's side (`primary.rs`), the mirror's
//! (`mirror.rs`) and the epoch history both use to find where two copies diverge
//! (`epochs.rs`). PROTOCOL.md §Cluster specifies MirrorFetch.

pub mod epochs;
pub mod mirror;
pub mod primary;

//! Copying shards between nodes: the primary's side (`primary.rs`), the mirror's
//! (`mirror.rs`) and the epoch history both use to find where two copies diverge
//! (`epochs.rs`). PROTOCOL.md §Cluster specifies MirrorFetch. A copy that must cut
//! a divergent suffix keeps it in the topic's reconciliation topic first
//! (`reconcile.rs`). A lagging copy catches up busiest shards first, a few at a time
//! (`backfill.rs`), once its disk has room for all of it, which it sets aside before
//! the copy starts (`reserve.rs`).

pub mod backfill;
pub mod epochs;
pub mod held;
pub mod mirror;
pub mod primary;
pub mod reconcile;
pub mod reserve;

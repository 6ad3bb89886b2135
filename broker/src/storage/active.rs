//! [`Active`]: the writer's position in the segment it appends to. Recovery builds it
//! from what it finds on disk; the log owns and advances it.

use std::sync::Arc;

use super::segment::Segment;

/// Writer-side state of the active segment.
pub(crate) struct Active {
    pub seg: Arc<Segment>,
    /// Write position (== published len between appends).
    pub pos: u64,
    /// Bytes the segment may grow to (its map's length); it rolls beyond.
    pub capacity: u64,
    /// Bytes of the file with real blocks (its length); grown in steps up to
    /// `capacity`, always before a write needs them.
    pub allocated: u64,
    pub next_offset: u64,
    pub bytes_since_index: u64,
    pub max_timestamp_ms: i64,
    /// Bytes below this are known durable.
    pub flushed_pos: u64,
}

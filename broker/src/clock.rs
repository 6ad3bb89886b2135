//! The wall clock, read in one place.
//!
//! Record timestamps, queue due times and retention ages are wall-clock milliseconds
//! since the Unix epoch; everything that measures a duration uses `Instant` instead.

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

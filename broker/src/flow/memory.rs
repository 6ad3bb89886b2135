//! The broker-wide memory budget for request bytes.
//!
//! Produce records are held in memory from the moment they are decoded until their
//! shard writer acknowledges them. Every produce takes its size from one shared budget
//! (`flow_memory_bytes`) before it is queued and gives it back when it is answered. A
//! produce that does not fit is refused with THROTTLED and a retry-after at once rather
//! than waited for: a waiting reader loop would hold the frame anyway, and one slow
//! shard must not make every connection stall. The per-connection bound (stop reading)
//! lives in `server/connection.rs`.
//!
//! The last [`P0_RESERVE_DIVISOR`]th of the budget is P0's alone: P1–P3 produces fit
//! only below it ([`MemoryBudget::try_acquire_for`]), so a flood of lower-class
//! produces that fills the budget throttles those classes and never P0, which is
//! throttled only once the whole budget is held.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use weir_protocol::classes::Class;

/// P0 alone may use the last `1 / P0_RESERVE_DIVISOR` of the budget (32 MiB of the
/// default 256 MiB).
pub const P0_RESERVE_DIVISOR: u64 = 8;

/// A budget of bytes. Cheap to share.
#[derive(Debug)]
pub struct MemoryBudget {
    total: u64,
    used: AtomicU64,
}

/// Bytes held under a [`MemoryBudget`]; given back on drop.
#[derive(Debug)]
pub struct MemoryPermit {
    budget: Arc<MemoryBudget>,
    bytes: u64,
}

impl MemoryBudget {
    /// A budget of `total` bytes.
    pub fn new(total: u64) -> Arc<Self> {
        Arc::new(MemoryBudget {
            total,
            used: AtomicU64::new(0),
        })
    }

    /// Takes `bytes` if they fit, else `None`. A request larger than the whole budget
    /// is admitted only when nothing else is held, so it cannot starve.
    pub fn try_acquire(self: &Arc<Self>, bytes: u64) -> Option<MemoryPermit> {
        self.try_acquire_below(bytes, self.total)
    }

    /// [`MemoryBudget::try_acquire`] for a produce of `class`: P1–P3 fit only below
    /// the P0 reserve, P0 in the whole budget.
    pub fn try_acquire_for(self: &Arc<Self>, class: Class, bytes: u64) -> Option<MemoryPermit> {
        let limit = if class == Class::P0 {
            self.total
        } else {
            self.total - self.total / P0_RESERVE_DIVISOR
        };
        self.try_acquire_below(bytes, limit)
    }

    fn try_acquire_below(self: &Arc<Self>, bytes: u64, limit: u64) -> Option<MemoryPermit> {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let fits = cur.saturating_add(bytes) <= limit || cur == 0;
            if !fits {
                return None;
            }
            match self.used.compare_exchange_weak(
                cur,
                cur + bytes,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(MemoryPermit {
                        budget: self.clone(),
                        bytes,
                    })
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The budget.
    pub fn total(&self) -> u64 {
        self.total
    }
}

impl Drop for MemoryPermit {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_bounded_and_given_back() {
        let b = MemoryBudget::new(100);
        let p1 = b.try_acquire(60).unwrap();
        assert!(b.try_acquire(50).is_none());
        let p2 = b.try_acquire(40).unwrap();
        assert_eq!(b.used(), 100);
        drop(p1);
        assert_eq!(b.used(), 40);
        drop(p2);
        assert_eq!(b.used(), 0);
        // Larger than the budget: only alone.
        let big = b.try_acquire(500).unwrap();
        assert!(b.try_acquire(1).is_none());
        drop(big);
        assert_eq!(b.used(), 0);
    }

    /// Lower classes fill the budget only up to the P0 reserve; P0 still fits then,
    /// and is refused only once the whole budget is held.
    #[test]
    fn lower_classes_leave_the_p0_reserve() {
        let b = MemoryBudget::new(800);
        let p3 = b.try_acquire_for(Class::P3, 700).unwrap();
        assert!(b.try_acquire_for(Class::P3, 1).is_none());
        assert!(b.try_acquire_for(Class::P1, 1).is_none());
        let p0 = b.try_acquire_for(Class::P0, 100).unwrap();
        assert_eq!(b.used(), 800);
        assert!(b.try_acquire_for(Class::P0, 1).is_none());
        drop(p0);
        drop(p3);
        // Alone, a lower class may still take a request larger than its share.
        let big = b.try_acquire_for(Class::P3, 900).unwrap();
        drop(big);
        assert_eq!(b.used(), 0);
    }
}

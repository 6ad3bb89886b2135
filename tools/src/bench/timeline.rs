//! Latency over time: for every 100 ms of the run, how many messages came out (e2e,
//! by the consumers' clock) or batches were acknowledged (produce), how many of them
//! took over 1 ms and over 5 ms, and the slowest.
//!
//! A percentile says how large the tail is, not when it happens. Stalls that come at
//! a steady beat (a flush every second, a segment roll, a page-cache drop) show as
//! slots with many slow messages at that period; a load that is too high for the
//! machine shows as slow messages spread over every slot.

use std::time::Duration;

use serde_json::{json, Value};

/// The width of one slot.
pub const SLOT: Duration = Duration::from_millis(100);

/// At most this many slots (one hour); later messages count in the last one.
const SLOTS_MAX: usize = 36_000;

/// Latencies above these count as slow (ns).
const OVER_1MS_NS: u64 = 1_000_000;
const OVER_5MS_NS: u64 = 5_000_000;

/// One slot's counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub messages: u64,
    pub over_1ms: u64,
    pub over_5ms: u64,
    pub max_ns: u64,
}

/// The slots of one run, indexed by time since the run's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    slots: Vec<Slot>,
    /// What one count is: "messages" (e2e) or "batches" (produce); also the JSON key.
    unit: &'static str,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline::counting("messages")
    }
}

impl Timeline {
    /// An empty timeline whose counts are `unit` ("messages", "batches").
    pub fn counting(unit: &'static str) -> Self {
        Timeline {
            slots: Vec::new(),
            unit,
        }
    }

    /// What one count is.
    pub fn unit(&self) -> &'static str {
        self.unit
    }

    /// Counts one message (or batch) that came out (or was acknowledged) `at_ns` after
    /// the run's start, `latency_ns` late.
    pub fn record(&mut self, at_ns: u64, latency_ns: u64) {
        let i = ((at_ns / SLOT.as_nanos() as u64) as usize).min(SLOTS_MAX - 1);
        if self.slots.len() <= i {
            self.slots.resize(i + 1, Slot::default());
        }
        let s = &mut self.slots[i];
        s.messages += 1;
        s.over_1ms += u64::from(latency_ns > OVER_1MS_NS);
        s.over_5ms += u64::from(latency_ns > OVER_5MS_NS);
        s.max_ns = s.max_ns.max(latency_ns);
    }

    /// Adds another consumer's (or producer's) counts, slot by slot.
    pub fn merge(&mut self, other: &Timeline) {
        debug_assert_eq!(self.unit, other.unit, "timelines of one kind");
        if self.slots.len() < other.slots.len() {
            self.slots.resize(other.slots.len(), Slot::default());
        }
        for (a, b) in self.slots.iter_mut().zip(&other.slots) {
            a.messages += b.messages;
            a.over_1ms += b.over_1ms;
            a.over_5ms += b.over_5ms;
            a.max_ns = a.max_ns.max(b.max_ns);
        }
    }

    /// The slots that received messages, with their start in seconds since the run's
    /// start.
    fn used(&self) -> impl Iterator<Item = (f64, &Slot)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.messages > 0)
            .map(|(i, s)| (i as f64 * SLOT.as_secs_f64(), s))
    }

    /// `[{"t_s", "messages" (or "batches"), "over_1ms", "over_5ms", "max_us"}, …]`,
    /// one object per slot that counted anything.
    pub fn to_json(&self) -> Value {
        self.used()
            .map(|(t, s)| {
                let mut o = json!({
                    "t_s": (t * 10.0).round() / 10.0,
                    "over_1ms": s.over_1ms,
                    "over_5ms": s.over_5ms,
                    "max_us": (s.max_ns as f64 / 100.0).round() / 10.0,
                });
                o[self.unit] = json!(s.messages);
                o
            })
            .collect()
    }

    /// The `n` slots with the most messages over 5 ms (then over 1 ms), worst first.
    pub fn worst(&self, n: usize) -> Vec<(f64, Slot)> {
        let mut v: Vec<(f64, Slot)> = self.used().map(|(t, s)| (t, *s)).collect();
        v.sort_by(|a, b| {
            (b.1.over_5ms, b.1.over_1ms, b.1.max_ns).cmp(&(a.1.over_5ms, a.1.over_1ms, a.1.max_ns))
        });
        v.truncate(n);
        v
    }

    /// How many used slots hold at least one message over 5 ms, and how many are used.
    pub fn slow_slots(&self) -> (usize, usize) {
        self.used().fold((0, 0), |(slow, used), (_, s)| {
            (slow + usize::from(s.over_5ms > 0), used + 1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_land_in_their_slot_and_merge_by_slot() {
        let mut a = Timeline::default();
        a.record(50_000_000, 200_000); // slot 0, fast
        a.record(250_000_000, 2_000_000); // slot 2, over 1 ms
        let mut b = Timeline::default();
        b.record(260_000_000, 7_000_000); // slot 2, over 5 ms
        a.merge(&b);
        assert_eq!(a.slots.len(), 3);
        assert_eq!(a.slots[1], Slot::default());
        assert_eq!(
            a.slots[2],
            Slot {
                messages: 2,
                over_1ms: 2,
                over_5ms: 1,
                max_ns: 7_000_000
            }
        );
        assert_eq!(a.slow_slots(), (1, 2));
        let worst = a.worst(1);
        assert_eq!(worst.len(), 1);
        assert!((worst[0].0 - 0.2).abs() < 1e-9);
        let j = a.to_json();
        assert_eq!(
            j.as_array().map(Vec::len),
            Some(2),
            "empty slots are left out"
        );
        assert_eq!(j[1]["max_us"], 7000.0);
    }

    #[test]
    fn a_produce_timeline_counts_batches() {
        let mut t = Timeline::counting("batches");
        t.record(150_000_000, 3_000_000);
        let j = t.to_json();
        assert_eq!(j[0]["batches"], 1);
        assert!(j[0].get("messages").is_none());
        assert_eq!(t.unit(), "batches");
    }

    #[test]
    fn the_number_of_slots_is_bounded() {
        let mut t = Timeline::default();
        t.record(u64::MAX, 1);
        assert_eq!(t.slots.len(), SLOTS_MAX);
        assert_eq!(t.slots[SLOTS_MAX - 1].messages, 1);
    }
}

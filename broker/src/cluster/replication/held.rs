//! Copies held out of sync on purpose: a mirror whose log diverges from its primary's
//! cuts the divergent suffix only after keeping it in the reconciliation topic
//! (`reconcile.rs`); while that cannot be done the cut waits, so the copy stays out of
//! sync and retries. This registry says why, per shard, for `/health` — a warning in
//! the log every 100 ms is easy to miss, an out-of-sync copy in `weir cluster status`
//! says nothing of the cause.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Most shards listed (the rest are counted), so `/health` stays small.
pub const LISTED_MAX: usize = 100;

/// Why each held copy waits: (topic, shard) → reason.
#[derive(Debug, Default)]
pub struct HeldCopies {
    held: Mutex<BTreeMap<(String, u32), String>>,
}

impl HeldCopies {
    /// Records (or replaces) why `topic`/`shard` waits.
    pub fn hold(&self, topic: &str, shard: u32, why: String) {
        self.lock().insert((topic.to_string(), shard), why);
    }

    /// The copy moved on (its cut went through, or it is no longer a mirror here).
    pub fn release(&self, topic: &str, shard: u32) {
        let mut held = self.lock();
        if !held.is_empty() {
            held.remove(&(topic.to_string(), shard));
        }
    }

    /// Forgets every shard of `topic` (deleted, or no copy here any more).
    pub fn release_topic(&self, topic: &str) {
        self.lock().retain(|(t, _), _| t != topic);
    }

    /// One line per held copy, `topic/shard: why`, sorted; at most [`LISTED_MAX`],
    /// then one line counting the others.
    pub fn lines(&self) -> Vec<String> {
        let held = self.lock();
        let mut out: Vec<String> = held
            .iter()
            .take(LISTED_MAX)
            .map(|((t, s), why)| format!("{t}/{s}: {why}"))
            .collect();
        if held.len() > LISTED_MAX {
            out.push(format!("... and {} more", held.len() - LISTED_MAX));
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, u32), String>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_copy_is_listed_with_its_reason_until_released() {
        let h = HeldCopies::default();
        assert!(h.lines().is_empty());
        h.hold("b", 1, "second".into());
        h.hold("a", 7, "first".into());
        h.hold("a", 7, "first, again".into());
        assert_eq!(h.lines(), vec!["a/7: first, again", "b/1: second"]);
        h.release("a", 7);
        assert_eq!(h.lines(), vec!["b/1: second"]);
        h.hold("b", 2, "x".into());
        h.release_topic("b");
        assert!(h.lines().is_empty());
    }

    #[test]
    fn the_list_is_bounded() {
        let h = HeldCopies::default();
        for s in 0..(LISTED_MAX as u32 + 5) {
            h.hold("t", s, "why".into());
        }
        let lines = h.lines();
        assert_eq!(lines.len(), LISTED_MAX + 1);
        assert_eq!(lines.last().unwrap(), "... and 5 more");
    }
}

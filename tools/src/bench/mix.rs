//! Priority classes and `--priority-mix "p0=5,p3=95"`.
//!
//! Priorities run from 1 (most urgent) to 10 and fall into four classes:
//! 1–2 → `p0`, 3–5 → `p1`, 6–8 → `p2`, 9–10 → `p3`. A mix gives the share of messages
//! per class; shares are weights and need not add up to 100.

use std::fmt;
use std::str::FromStr;

/// Class names, indexed by class number.
pub const CLASS_NAMES: [&str; 4] = ["p0", "p1", "p2", "p3"];

/// The priorities of each class (inclusive).
pub const CLASS_PRIORITIES: [(u8, u8); 4] = [(1, 2), (3, 5), (6, 8), (9, 10)];

/// The class of a priority (out-of-range priorities clamp to the nearest class).
pub fn class_of_priority(p: u8) -> usize {
    match p {
        0..=2 => 0,
        3..=5 => 1,
        6..=8 => 2,
        _ => 3,
    }
}

/// The share of messages per class.
#[derive(Debug, Clone, PartialEq)]
pub struct PriorityMix {
    /// Weight per class; at least one is positive.
    pub weights: [f64; 4],
}

impl PriorityMix {
    /// The classes with a positive weight.
    pub fn classes(&self) -> impl Iterator<Item = usize> + '_ {
        (0..4).filter(|&c| self.weights[c] > 0.0)
    }

    /// The fraction (0…1) of messages in class `c`.
    pub fn fraction(&self, c: usize) -> f64 {
        self.weights[c] / self.weights.iter().sum::<f64>()
    }

    /// A deterministic picker that follows this mix exactly (smooth weighted
    /// round-robin: after n picks each class is within one pick of its share).
    pub fn picker(&self) -> MixPicker {
        MixPicker {
            weights: self.weights,
            total: self.weights.iter().sum(),
            current: [0.0; 4],
            picks: [0; 4],
        }
    }
}

impl fmt::Display for PriorityMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .classes()
            .map(|c| format!("{}={}", CLASS_NAMES[c], self.weights[c]))
            .collect();
        write!(f, "{}", parts.join(","))
    }
}

impl FromStr for PriorityMix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut weights = [0.0f64; 4];
        let mut seen = [false; 4];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected CLASS=SHARE, e.g. p0=5"))?;
            let name = name.trim().to_ascii_lowercase();
            let c = CLASS_NAMES
                .iter()
                .position(|n| *n == name)
                .ok_or_else(|| format!("{name:?}: unknown class (use p0, p1, p2 or p3)"))?;
            if seen[c] {
                return Err(format!("class {name} given twice"));
            }
            seen[c] = true;
            let w: f64 = value
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: share is not a number"))?;
            if !w.is_finite() || w < 0.0 {
                return Err(format!("{part:?}: share must be a finite number ≥ 0"));
            }
            weights[c] = w;
        }
        if weights.iter().sum::<f64>() <= 0.0 {
            return Err("a priority mix needs at least one class with a positive share".into());
        }
        Ok(PriorityMix { weights })
    }
}

/// Picks (class, priority) pairs following a [`PriorityMix`]; within a class the
/// priorities take turns.
#[derive(Debug, Clone)]
pub struct MixPicker {
    weights: [f64; 4],
    total: f64,
    current: [f64; 4],
    picks: [u64; 4],
}

impl MixPicker {
    /// The next message's class and priority.
    pub fn next_pick(&mut self) -> (usize, u8) {
        let mut best = 0;
        for c in 0..4 {
            self.current[c] += self.weights[c];
            if self.current[c] > self.current[best] {
                best = c;
            }
        }
        self.current[best] -= self.total;
        let (lo, hi) = CLASS_PRIORITIES[best];
        let n = self.picks[best];
        self.picks[best] += 1;
        (best, lo + (n % u64::from(hi - lo + 1)) as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_of_priorities() {
        let classes: Vec<usize> = (1..=10).map(class_of_priority).collect();
        assert_eq!(classes, vec![0, 0, 1, 1, 1, 2, 2, 2, 3, 3]);
        for (c, (lo, hi)) in CLASS_PRIORITIES.iter().enumerate() {
            assert_eq!(class_of_priority(*lo), c);
            assert_eq!(class_of_priority(*hi), c);
        }
    }

    #[test]
    fn parses_a_mix() {
        let m: PriorityMix = "p0=5,p3=95".parse().unwrap();
        assert_eq!(m.weights, [5.0, 0.0, 0.0, 95.0]);
        assert_eq!(m.classes().collect::<Vec<_>>(), vec![0, 3]);
        assert!((m.fraction(0) - 0.05).abs() < 1e-12);
        assert_eq!(m.to_string(), "p0=5,p3=95");
        let m: PriorityMix = " P1 = 1.5 , p2=0.5 ,".parse().unwrap();
        assert_eq!(m.weights, [0.0, 1.5, 0.5, 0.0]);
        assert!((m.fraction(1) - 0.75).abs() < 1e-12);
    }

    #[test]
    fn rejects_bad_mixes() {
        for bad in [
            "",
            "p4=1",
            "p0",
            "p0=x",
            "p0=-1",
            "p0=0,p1=0",
            "p0=1,p0=2",
            "p0=inf",
            "q=1",
        ] {
            assert!(bad.parse::<PriorityMix>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn picker_follows_the_mix_exactly() {
        let m: PriorityMix = "p0=5,p3=95".parse().unwrap();
        let mut p = m.picker();
        let mut counts = [0u32; 4];
        let mut prios = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let (c, prio) = p.next_pick();
            assert_eq!(class_of_priority(prio), c);
            counts[c] += 1;
            prios.insert(prio);
        }
        assert_eq!(counts, [50, 0, 0, 950]);
        assert_eq!(prios.into_iter().collect::<Vec<_>>(), vec![1, 2, 9, 10]);
        // Spread out, not in runs: the first 20 picks already hold one p0.
        let mut p = m.picker();
        assert!((0..20).any(|_| p.next_pick().0 == 0));
    }
}

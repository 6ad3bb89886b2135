//! Priority classes: how the ten message priorities group into the four classes the
//! broker schedules, sheds and retries by.
//!
//! Priority 1 is the highest and 10 the lowest. A [`ClassMap`] cuts that range into
//! classes P0 (most important) to P3 with three upper bounds; the default is 1–2 → P0,
//! 3–5 → P1, 6–8 → P2, 9–10 → P3. Each class has a weight for weighted fair queuing
//! (default 8:4:2:1). Broker and SDK must agree on the map: the broker sends it in the
//! ApiVersions handshake.

use std::fmt;

/// Number of priority classes.
pub const CLASS_COUNT: usize = 4;

/// Default upper priority bound of P0, P1 and P2 (P3 takes the rest).
pub const DEFAULT_CLASS_BOUNDS: [u8; CLASS_COUNT - 1] = [2, 5, 8];

/// Default WFQ weights of P0..P3.
pub const DEFAULT_CLASS_WEIGHTS: [u32; CLASS_COUNT] = [8, 4, 2, 1];

/// A priority class: `P0` is the most important.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Class(u8);

impl Class {
    /// The most important class.
    pub const P0: Class = Class(0);
    /// The second class.
    pub const P1: Class = Class(1);
    /// The third class.
    pub const P2: Class = Class(2);
    /// The least important class.
    pub const P3: Class = Class(3);
    /// Every class, most important first.
    pub const ALL: [Class; CLASS_COUNT] = [Class::P0, Class::P1, Class::P2, Class::P3];

    /// The class with this index (0..4).
    pub fn from_index(i: usize) -> Option<Class> {
        (i < CLASS_COUNT).then_some(Class(i as u8))
    }

    /// Index 0..4, for arrays indexed by class.
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// `"p0"` .. `"p3"`, as used in config files, metrics and JSON reports.
    pub fn name(self) -> &'static str {
        ["p0", "p1", "p2", "p3"][self.index()]
    }

    /// Parses `"p0"`..`"p3"` (either case).
    pub fn parse(s: &str) -> Option<Class> {
        match s.to_ascii_lowercase().as_str() {
            "p0" => Some(Class::P0),
            "p1" => Some(Class::P1),
            "p2" => Some(Class::P2),
            "p3" => Some(Class::P3),
            _ => None,
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "P{}", self.0)
    }
}

/// Maps priorities 1..=10 to classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassMap {
    bounds: [u8; CLASS_COUNT - 1],
}

impl Default for ClassMap {
    fn default() -> Self {
        ClassMap {
            bounds: DEFAULT_CLASS_BOUNDS,
        }
    }
}

impl ClassMap {
    /// A map from the upper priority bounds of P0, P1 and P2. Bounds must rise strictly
    /// and stay within 1..=9 so that every class holds at least one priority.
    pub fn new(bounds: [u8; CLASS_COUNT - 1]) -> Result<ClassMap, String> {
        let ok = bounds[0] >= 1 && bounds.windows(2).all(|w| w[0] < w[1]) && bounds[2] <= 9;
        if !ok {
            return Err(format!(
                "class bounds {bounds:?} must rise strictly within 1..=9 (each class needs a priority)"
            ));
        }
        Ok(ClassMap { bounds })
    }

    /// The upper bounds of P0, P1 and P2.
    pub fn bounds(&self) -> [u8; CLASS_COUNT - 1] {
        self.bounds
    }

    /// The class of a priority. Priorities outside 1..=10 are refused by the batch
    /// validator before they get here; for robustness 0 maps to P0 and >10 to P3.
    pub fn class_of(&self, priority: u8) -> Class {
        let i = self.bounds.iter().take_while(|&&b| priority > b).count();
        Class(i as u8)
    }

    /// The range of priorities in a class.
    pub fn priorities(&self, class: Class) -> std::ops::RangeInclusive<u8> {
        let lo = if class.0 == 0 {
            1
        } else {
            self.bounds[class.index() - 1] + 1
        };
        let hi = if class.index() == CLASS_COUNT - 1 {
            10
        } else {
            self.bounds[class.index()]
        };
        lo..=hi
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_map_matches_the_documented_ranges() {
        let m = ClassMap::default();
        let classes: Vec<u8> = (1..=10).map(|p| m.class_of(p).0).collect();
        assert_eq!(classes, [0, 0, 1, 1, 1, 2, 2, 2, 3, 3]);
        assert_eq!(m.priorities(Class::P0), 1..=2);
        assert_eq!(m.priorities(Class::P3), 9..=10);
    }

    #[test]
    fn bad_bounds_are_refused() {
        assert!(ClassMap::new([0, 5, 8]).is_err());
        assert!(ClassMap::new([2, 2, 8]).is_err());
        assert!(ClassMap::new([2, 5, 10]).is_err());
        assert!(ClassMap::new([1, 2, 3]).is_ok());
    }

    #[test]
    fn every_priority_lands_in_the_class_whose_range_holds_it() {
        for bounds in [[1, 2, 3], [2, 5, 8], [7, 8, 9], [3, 4, 9]] {
            let m = ClassMap::new(bounds).unwrap();
            for p in 1..=10u8 {
                assert!(m.priorities(m.class_of(p)).contains(&p), "{bounds:?} {p}");
            }
        }
    }
}

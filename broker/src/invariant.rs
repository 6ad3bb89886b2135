//! Run-time invariants, checked in release builds too.
//!
//! A `debug_assert!` protects only the builds nobody runs in production. The states
//! guarded here (offsets going backwards, a high-water mark moving back, a durable
//! position ahead of the written one, a producer lane skipping a sequence) would
//! corrupt data silently if they ever happened, so the broker stops instead: release
//! builds use `panic = "abort"`, and a crash is recovered from the log, while a
//! corrupt log is not. Hence [`invariant!`](crate::invariant!) is used only for what no input — network
//! bytes, disk bytes, configuration — can cause, only a bug in the broker, and only
//! where the check is O(1) on its path.
//!
//! The panic message names the invariant, so a crash report says which promise broke:
//! `invariant violated: <name>: <details>`.

/// Checks `cond`; when it is false, panics with
/// `invariant violated: <name>: <details>`, where `name` is a string literal naming
/// the invariant and the optional rest is a `format!` string and its arguments.
///
/// ```should_panic
/// let (old, new) = (7u64, 5u64);
/// weir_broker::invariant!(new >= old, "high-water mark monotonic", "{old} -> {new}");
/// ```
#[macro_export]
macro_rules! invariant {
    ($cond:expr, $name:literal $(,)?) => {
        if !$cond {
            $crate::invariant::violated($name, format_args!("{}", stringify!($cond)))
        }
    };
    ($cond:expr, $name:literal, $($details:tt)+) => {
        if !$cond {
            $crate::invariant::violated($name, format_args!($($details)+))
        }
    };
}

/// The slow path of [`invariant!`](crate::invariant!), kept out of line so the check itself stays a
/// compare and a never-taken branch.
#[cold]
#[inline(never)]
#[track_caller]
pub fn violated(name: &str, details: std::fmt::Arguments<'_>) -> ! {
    panic!("invariant violated: {name}: {details}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_violation_names_the_invariant_and_its_details() {
        let r = std::panic::catch_unwind(|| {
            let (old, new) = (7u64, 5u64);
            crate::invariant!(new >= old, "high-water mark monotonic", "{old} -> {new}");
        });
        let msg = *r.expect_err("must panic").downcast::<String>().unwrap();
        assert_eq!(msg, "invariant violated: high-water mark monotonic: 7 -> 5");
    }

    #[test]
    fn without_details_the_condition_is_the_detail() {
        let r = std::panic::catch_unwind(|| {
            let x = 1;
            crate::invariant!(x == 2, "x is two");
        });
        let msg = *r.expect_err("must panic").downcast::<String>().unwrap();
        assert_eq!(msg, "invariant violated: x is two: x == 2");
    }

    #[test]
    fn a_held_invariant_does_nothing() {
        crate::invariant!(1 + 1 == 2, "arithmetic", "{}", 2);
    }
}

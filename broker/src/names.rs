//! Names clients choose (topics, groups): what is allowed, checked in one place.
//!
//! A topic name becomes a directory name, so it must never be able to escape the data
//! directory or collide with the files beside it.

/// Longest topic name, in bytes.
pub const MAX_TOPIC_NAME_BYTES: usize = 249;

/// Checks a topic (or group) name: 1..=249 bytes of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOPIC_NAME_BYTES
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("orders.v1_eu-west"));
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"x".repeat(250)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}

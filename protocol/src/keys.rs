//! Shard keys: how a key is derived for a record produced without one, and which shard
//! a key belongs on.
//!
//! A topic may name a rule (`header:NAME` or `json:FIELD`, see PROTOCOL.md). The broker
//! applies it when it stores a keyless record, and the SDK applies the same code before
//! it picks a shard, so records with equal derived keys land on the same shard.
//!
//! Key → shard is [`shard_for_key`]: XXH3-64 of the key bytes (seed 0), then jump
//! consistent hash (Lamping and Veach, 2014) over the shard count. Jump hash moves only
//! about 1/n of the keys when a topic grows from n to n+1 shards. PROTOCOL.md ("Key →
//! shard") writes it down for other languages, and `tests/vectors/shard_keys.json` pins
//! it; the broker refuses a keyed record on another shard (WRONG_SHARD).

use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_64;

/// The shard a non-empty `key` belongs on among `shards` shards (0 is treated as 1).
/// An empty key is "no key": such a record may go to any shard, and this function is
/// not consulted for it.
pub fn shard_for_key(key: &[u8], shards: u32) -> u32 {
    jump_hash(xxh3_64(key), shards.max(1))
}

/// Jump consistent hash of a 64-bit value into `buckets` (> 0) buckets, exactly as the
/// paper's reference code computes it (the division in IEEE double precision).
pub fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

/// Where a topic's shard keys come from for records produced without one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRule {
    /// Records keep whatever key they came with.
    None,
    /// The value of this record header.
    Header(String),
    /// This top-level field of a JSON object value; a string field gives its text
    /// without quotes, any other JSON value its compact encoding.
    JsonField(String),
}

impl KeyRule {
    /// Parses `""`, `header:NAME` or `json:FIELD` (NAME and FIELD non-empty, ≤ 255 bytes).
    pub fn parse(s: &str) -> Result<KeyRule, String> {
        if s.is_empty() {
            return Ok(KeyRule::None);
        }
        let (kind, name) = s
            .split_once(':')
            .ok_or_else(|| format!("shard_key_rule {s:?}: expected header:NAME or json:FIELD"))?;
        if name.is_empty() || name.len() > 255 {
            return Err(format!("shard_key_rule {s:?}: name must be 1..=255 bytes"));
        }
        match kind {
            "header" => Ok(KeyRule::Header(name.to_string())),
            "json" => Ok(KeyRule::JsonField(name.to_string())),
            _ => Err(format!("shard_key_rule {s:?}: kind must be header or json")),
        }
    }

    /// The key this rule derives from a record's headers and value, if any. Empty
    /// results and results longer than a key may be (65,535 bytes) count as none.
    pub fn derive<'a>(
        &self,
        mut headers: impl Iterator<Item = (&'a str, &'a [u8])>,
        value: &[u8],
    ) -> Option<Bytes> {
        match self {
            KeyRule::None => None,
            KeyRule::Header(name) => headers
                .find(|(n, _)| n == name)
                .map(|(_, v)| Bytes::copy_from_slice(v)),
            KeyRule::JsonField(field) => {
                let value: serde_json::Value = serde_json::from_slice(value).ok()?;
                match value.get(field)? {
                    serde_json::Value::String(s) => Some(Bytes::from(s.clone())),
                    serde_json::Value::Null => None,
                    other => Some(Bytes::from(other.to_string())),
                }
            }
        }
        .filter(|k| !k.is_empty() && k.len() <= u16::MAX as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_rules_are_named_errors() {
        for bad in ["header", "header:", "xml:a", ":a"] {
            assert!(KeyRule::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            KeyRule::parse("json:user_id").unwrap(),
            KeyRule::JsonField("user_id".into())
        );
    }

    #[test]
    fn derive_reads_headers_and_json_fields() {
        let h: &[(&str, &[u8])] = &[("a", b"1"), ("tenant", b"acme")];
        let rule = KeyRule::parse("header:tenant").unwrap();
        assert_eq!(rule.derive(h.iter().copied(), b"").unwrap(), "acme");
        let rule = KeyRule::parse("json:user_id").unwrap();
        let none = std::iter::empty();
        assert_eq!(rule.derive(none, br#"{"user_id":"u1"}"#).unwrap(), "u1");
        assert_eq!(
            rule.derive(std::iter::empty(), br#"{"user_id":7}"#)
                .unwrap(),
            "7"
        );
        assert_eq!(
            rule.derive(std::iter::empty(), br#"{"user_id":null}"#),
            None
        );
        assert_eq!(rule.derive(std::iter::empty(), br#"{"user_id":""}"#), None);
        assert_eq!(rule.derive(std::iter::empty(), b"[1,2]"), None);
        assert_eq!(rule.derive(std::iter::empty(), b"not json"), None);
    }

    proptest::proptest! {
        #[test]
        fn any_value_and_rule_text_never_panic(
            rule in "[a-z:_]{0,12}",
            value in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
            json_key in "[a-z_]{1,8}",
            json_val in "[ -~]{0,16}",
        ) {
            let _ = KeyRule::parse(&rule).map(|r| r.derive(std::iter::empty(), &value));
            let doc = serde_json::json!({ json_key.clone(): json_val.clone() }).to_string();
            let r = KeyRule::parse(&format!("json:{json_key}")).unwrap();
            let got = r.derive(std::iter::empty(), doc.as_bytes());
            proptest::prop_assert_eq!(
                got,
                (!json_val.is_empty()).then(|| Bytes::from(json_val.clone()))
            );
        }
    }
}

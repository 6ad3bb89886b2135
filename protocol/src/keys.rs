//! Shard-key rules: how a key is derived for a record produced without one.
//!
//! A topic may name a rule (`header:NAME` or `json:FIELD`, see PROTOCOL.md). The broker
//! applies it when it stores a keyless record, and the SDK applies the same code before
//! it picks a shard, so records with equal derived keys land on the same shard.

use bytes::Bytes;

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

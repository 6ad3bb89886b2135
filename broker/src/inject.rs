//! Metadata injection: every stored record has a priority, a complexity and, when the
//! topic asks for it, a shard key — even when its producer gave none.
//!
//! Producers may send priority or complexity 0 ("unset") and records without a key.
//! Before a batch is queued for its shard, [`Injector::apply`] re-encodes it with the
//! topic's default priority and complexity and, when the topic has a shard-key rule, a
//! key taken from a header or from a field of a JSON value. Only batches that need it
//! are re-encoded (the validator counts unset fields in the pass it already makes), so
//! the common case — an SDK that fills every field — costs nothing. Re-encoding keeps
//! the producer id, epoch and sequence, so idempotent retries still match. Values out
//! of range were refused by the validator with INVALID_RECORD; nothing is clamped.

use bytes::Bytes;
use weir_protocol::batch::{
    self, Batch, BatchBuilder, BatchHeader, NewRecord, RecordSummary, UNSET,
};
use weir_protocol::keys::KeyRule;
use weir_protocol::messages::TopicConfig;
use weir_protocol::ErrorCode;

use crate::error::BrokerError;

/// A topic's injection settings, resolved once when the topic is opened.
#[derive(Debug, Clone)]
pub struct Injector {
    default_priority: u8,
    default_complexity: u8,
    key_rule: KeyRule,
}

impl Injector {
    /// The injector for a topic whose config was resolved (defaults filled in).
    pub fn new(config: &TopicConfig) -> Result<Injector, String> {
        Ok(Injector {
            default_priority: config.default_priority,
            default_complexity: config.default_complexity,
            key_rule: KeyRule::parse(&config.shard_key_rule)?,
        })
    }

    /// Whether a batch with this summary must be re-encoded.
    pub fn needs(&self, summary: &RecordSummary) -> bool {
        !summary.complete() || self.derives_keys(summary)
    }

    /// Whether re-encoding a batch with this summary gives some record a key it was
    /// sent without (from the topic's shard-key rule).
    pub fn derives_keys(&self, summary: &RecordSummary) -> bool {
        summary.keyless > 0 && self.key_rule != KeyRule::None
    }

    /// Re-encodes a validated batch with defaults and derived keys filled in, when it
    /// needs that; otherwise returns it unchanged.
    pub fn apply(
        &self,
        bytes: Bytes,
        header: BatchHeader,
        summary: &RecordSummary,
    ) -> Result<(Bytes, BatchHeader), BrokerError> {
        if !self.needs(summary) {
            return Ok((bytes, header));
        }
        let invalid = |e: weir_protocol::DecodeError| BrokerError::new(e.code(), e.to_string());
        let parsed = Batch::parse(bytes.clone()).map_err(invalid)?;
        let mut out = BatchBuilder::with_capacity(bytes.len() + 64);
        if header.producer_id != batch::NO_PRODUCER_ID {
            out = out.producer(
                header.producer_id,
                header.producer_epoch,
                header.base_sequence,
            );
        }
        for r in parsed.records() {
            let key = if r.key.is_empty() {
                let headers = r
                    .headers
                    .iter()
                    .map(|h| (h.name.as_str(), h.value.as_ref()));
                self.key_rule.derive(headers, &r.value).unwrap_or_default()
            } else {
                r.key.clone()
            };
            let headers: Vec<(&str, &[u8])> = r
                .headers
                .iter()
                .map(|h| (h.name.as_str(), h.value.as_ref()))
                .collect();
            out.push(&NewRecord {
                priority: if r.priority == UNSET {
                    self.default_priority
                } else {
                    r.priority
                },
                complexity: if r.complexity == UNSET {
                    self.default_complexity
                } else {
                    r.complexity
                },
                timestamp_ms: r.timestamp_ms,
                key: &key,
                value: &r.value,
                headers: &headers,
            })
            .map_err(invalid)?;
        }
        let rewritten = out.finish().map_err(invalid)?;
        let h = BatchHeader::read(&rewritten)
            .map_err(|e| BrokerError::new(ErrorCode::Unknown, format!("re-encoded batch: {e}")))?;
        Ok((rewritten, h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(rule: &str) -> Injector {
        Injector::new(&TopicConfig {
            default_priority: 3,
            default_complexity: 2,
            shard_key_rule: rule.to_string(),
            ..TopicConfig::default()
        })
        .unwrap()
    }

    fn encode(records: &[NewRecord<'_>], producer: Option<(u64, u16, u32)>) -> Bytes {
        let mut b = BatchBuilder::new();
        if let Some((p, e, s)) = producer {
            b = b.producer(p, e, s);
        }
        for r in records {
            b.push(r).unwrap();
        }
        b.finish().unwrap()
    }

    fn run(inj: &Injector, bytes: Bytes) -> Batch {
        let (h, summary) = batch::validate_summary(&bytes).unwrap();
        let (out, oh) = inj.apply(bytes, h, &summary).unwrap();
        let parsed = Batch::parse(out).unwrap();
        assert_eq!(parsed.header(), &oh);
        parsed
    }

    #[test]
    fn unset_fields_get_the_topic_defaults_and_set_ones_are_kept() {
        let mut unset = NewRecord::value(1000, b"a");
        unset.priority = UNSET;
        unset.complexity = UNSET;
        let mut set = NewRecord::value(1001, b"b");
        set.priority = 9;
        set.complexity = 5;
        let b = run(&topic(""), encode(&[unset, set], Some((7, 2, 40))));
        let recs: Vec<_> = b.records().collect();
        assert_eq!((recs[0].priority, recs[0].complexity), (3, 2));
        assert_eq!((recs[1].priority, recs[1].complexity), (9, 5));
        assert_eq!(recs[1].timestamp_ms, 1001);
        let h = b.header();
        assert_eq!(
            h.priority, 3,
            "the header summarises the filled-in priorities"
        );
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (7, 2, 40)
        );
    }

    #[test]
    fn keys_come_from_a_header_or_a_json_field_and_existing_keys_win() {
        let headers: &[(&str, &[u8])] = &[("tenant", b"acme")];
        let mut from_header = NewRecord::value(0, b"{}");
        from_header.headers = headers;
        let b = run(&topic("header:tenant"), encode(&[from_header], None));
        assert_eq!(&b.records().next().unwrap().key[..], b"acme");

        let json = NewRecord::value(0, br#"{"user_id": "u-17", "n": 1}"#);
        let number = NewRecord::value(0, br#"{"user_id": 42}"#);
        let not_json = NewRecord::value(0, b"plain text");
        let mut keyed = NewRecord::value(0, br#"{"user_id": "other"}"#);
        keyed.key = b"mine";
        let b = run(
            &topic("json:user_id"),
            encode(&[json, number, not_json, keyed], None),
        );
        let keys: Vec<Bytes> = b.records().map(|r| r.key).collect();
        assert_eq!(keys, [&b"u-17"[..], b"42", b"", b"mine"]);
    }

    #[test]
    fn complete_batches_are_passed_through_untouched() {
        let bytes = encode(&[NewRecord::value(0, b"x")], None);
        let (h, summary) = batch::validate_summary(&bytes).unwrap();
        let inj = topic("");
        assert!(!inj.needs(&summary));
        let (out, _) = inj.apply(bytes.clone(), h, &summary).unwrap();
        assert_eq!(out.as_ptr(), bytes.as_ptr(), "not copied");
    }
}

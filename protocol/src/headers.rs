//! Names of the record headers Weir itself writes, so the broker that writes them, and
//! the SDK and CLI that read or strip them, cannot drift apart. PROTOCOL.md §"Dead-letter
//! records" lists the same names with what their values mean; every value is UTF-8
//! text, numbers in decimal.

/// Prefix of every header the broker adds to a dead-lettered record. A record that is
/// dead-lettered again (or replayed) loses its old ones first.
pub const DLQ_PREFIX: &str = "weir.dlq.";
/// The queue group that gave up on the record.
pub const DLQ_GROUP: &str = "weir.dlq.group";
/// The topic the record came from.
pub const DLQ_SOURCE_TOPIC: &str = "weir.dlq.source_topic";
/// Its shard there.
pub const DLQ_SOURCE_SHARD: &str = "weir.dlq.source_shard";
/// Its offset there.
pub const DLQ_SOURCE_OFFSET: &str = "weir.dlq.source_offset";
/// Deliveries that failed.
pub const DLQ_ATTEMPTS: &str = "weir.dlq.attempts";
/// First failure, ms since the Unix epoch.
pub const DLQ_FIRST_FAILURE_MS: &str = "weir.dlq.first_failure_ms";
/// Last failure, ms since the Unix epoch.
pub const DLQ_LAST_FAILURE_MS: &str = "weir.dlq.last_failure_ms";
/// The last error text.
pub const DLQ_ERROR: &str = "weir.dlq.error";

/// Every dead-letter header the broker writes, in the order it writes them.
pub const DLQ_HEADERS: [&str; 8] = [
    DLQ_GROUP,
    DLQ_SOURCE_TOPIC,
    DLQ_SOURCE_SHARD,
    DLQ_SOURCE_OFFSET,
    DLQ_ATTEMPTS,
    DLQ_FIRST_FAILURE_MS,
    DLQ_LAST_FAILURE_MS,
    DLQ_ERROR,
];

/// Set by `weir dlq replay` on a record it copies back: `<dlq topic>/<shard>/<offset>`
/// of the dead-letter record it came from.
pub const REPLAYED_FROM: &str = "weir.replayed_from";

/// The one header of a record deleted by key (DeleteKey): the broker serves it in place
/// of the record, with an empty key and value, so offsets stay dense. Its value is
/// empty.
pub const REDACTED: &str = "weir.redacted";

/// Suffix of a topic's reconciliation topic: `<topic>.reconcile` holds the records a
/// returning primary had to cut from its copy (never acknowledged as mirrored), each
/// with the `weir.reconcile.*` headers below; `weir reconcile replay` writes them back.
pub const RECONCILE_SUFFIX: &str = ".reconcile";
/// Prefix of every reconciliation header.
pub const RECONCILE_PREFIX: &str = "weir.reconcile.";
/// The node whose copy held the record.
pub const RECONCILE_NODE: &str = "weir.reconcile.node";
/// The topic it was cut from.
pub const RECONCILE_TOPIC: &str = "weir.reconcile.topic";
/// Its shard there.
pub const RECONCILE_SHARD: &str = "weir.reconcile.shard";
/// Its offset there (on the node that cut it).
pub const RECONCILE_OFFSET: &str = "weir.reconcile.offset";
/// The leader epoch it was written under.
pub const RECONCILE_EPOCH: &str = "weir.reconcile.epoch";
/// The epoch of the primary whose log it diverged from.
pub const RECONCILE_CUT_EPOCH: &str = "weir.reconcile.cut_epoch";
/// Set by `weir reconcile replay` on a record it writes back:
/// `<node>/<shard>/<offset>/<epoch>` of the cut record, so a second replay skips it.
pub const RECONCILED_FROM: &str = "weir.reconciled_from";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dead_letter_header_has_the_prefix_and_its_own_name() {
        for (i, h) in DLQ_HEADERS.iter().enumerate() {
            assert!(h.starts_with(DLQ_PREFIX), "{h}");
            assert!(!DLQ_HEADERS[..i].contains(h), "{h} twice");
        }
        assert!(!REPLAYED_FROM.starts_with(DLQ_PREFIX), "replay keeps it");
    }

    #[test]
    fn protocol_md_names_the_same_headers() {
        let doc = include_str!("../../PROTOCOL.md");
        for h in DLQ_HEADERS {
            assert!(
                doc.contains(&format!("| `{h}` |")),
                "{h} not in PROTOCOL.md"
            );
        }
        assert!(
            doc.contains(&format!("`{REPLAYED_FROM}`")),
            "{REPLAYED_FROM}"
        );
    }
}

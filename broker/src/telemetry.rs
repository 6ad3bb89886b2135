//! Client telemetry: services publish their own state on the topic
//! [`TELEMETRY_TOPIC`] (PROTOCOL.md, "Client telemetry"; the Rust SDK's
//! `Telemetry`), and the broker reads it here, once a second from the observer loop,
//! into the load history's demand series per (service, message type), each with its
//! forecast (`crate::load_history`). The LoadHistory api, `/metrics` and `weir status`
//! show them.
//!
//! A report is one record whose value is a JSON object:
//! `{"service": S, "type": T, "sent_per_s": R, "expected_per_s": E, "load": L}`
//! (`expected_per_s` and `load` optional). A record that is not one is counted as
//! invalid and skipped; nothing a client writes there can stop the reading or grow
//! memory past [`crate::load_history::DEMANDS_MAX`] pairs.
//!
//! Each second, every pair whose newest report was read less than [`STALE_S`] ago
//! gets one sample: that report's `sent_per_s`. A pair whose service stopped
//! reporting gets none (its series pauses rather than falling to a made-up zero), and
//! after an hour without samples it is forgotten, freeing its place.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Deserialize;
use weir_protocol::batch;

use crate::load_history::Report;
use crate::state::BrokerState;

/// The topic services publish telemetry on.
pub const TELEMETRY_TOPIC: &str = "__weir_telemetry";

/// A pair whose newest report is older than this (as read) gets no more samples.
pub const STALE_S: u64 = 30;

/// Most bytes read from the topic per second (a backlog is caught up over seconds).
const READ_BYTES_PER_TICK: usize = 1 << 20;

/// Longest service id or message type taken, in bytes.
const NAME_MAX: usize = 128;

/// A report as it is written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    service: String,
    #[serde(rename = "type")]
    message_type: String,
    sent_per_s: f64,
    #[serde(default)]
    expected_per_s: f64,
    #[serde(default)]
    load: f64,
}

/// A report parsed from one record's value, or why not.
pub fn parse(value: &[u8], timestamp_ms: i64) -> Result<(String, String, Report), String> {
    let w: Wire = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    for (what, name) in [("service", &w.service), ("type", &w.message_type)] {
        if name.is_empty() || name.len() > NAME_MAX {
            return Err(format!("{what} must be 1..={NAME_MAX} bytes"));
        }
    }
    let rate_ok = |v: f64| v.is_finite() && v >= 0.0;
    if !rate_ok(w.sent_per_s) || !rate_ok(w.expected_per_s) {
        return Err("rates must be finite and ≥ 0".into());
    }
    if !(0.0..=1.0).contains(&w.load) {
        return Err("load must be in 0..=1".into());
    }
    Ok((
        w.service,
        w.message_type,
        Report {
            sent_per_s: w.sent_per_s,
            expected_per_s: w.expected_per_s,
            load: w.load,
            at_s: timestamp_ms.div_euclid(1000),
        },
    ))
}

/// Reads the telemetry topic; one per broker, driven by the observer loop.
#[derive(Debug, Default)]
pub struct TelemetryReader {
    /// Next offset to read, per shard of the topic.
    next: HashMap<usize, u64>,
    /// The newest report of each pair and when it was read.
    newest: HashMap<(String, String), (Report, Instant)>,
}

impl TelemetryReader {
    /// Reads what arrived since the last tick and adds this second's demand samples.
    pub fn tick(&mut self, state: &BrokerState) {
        let now = Instant::now();
        if let Ok(topic) = state.topics.get(TELEMETRY_TOPIC) {
            for (i, shard) in topic.shards.iter().enumerate() {
                self.read_shard(state, i, shard.reader(), now);
            }
        }
        let at_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()) as u32;
        // A pair silent for the history's hour frees its place.
        state
            .load
            .forget_demands_before(at_s.saturating_sub(crate::load_history::SECOND_SLOTS as u32));
        let fresh = Duration::from_secs(STALE_S);
        let dropped = &state.metrics.telemetry_reports[2];
        self.newest.retain(|(service, t), (report, read_at)| {
            if now.duration_since(*read_at) > fresh {
                return false;
            }
            if !state.load.record_demand(service, t, at_s, *report) {
                dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            true
        });
    }

    fn read_shard(
        &mut self,
        state: &BrokerState,
        i: usize,
        reader: &crate::storage::LogReader,
        now: Instant,
    ) {
        let [ok, invalid, _] = &state.metrics.telemetry_reports;
        let start = reader.log_start_offset();
        let next = self.next.entry(i).or_insert(start);
        // Retention may have removed what was not read yet, and a log cut back (a
        // copy truncated on a cluster) may now end below the position.
        *next = (*next).max(start).min(reader.high_watermark().max(start));
        let runs = match reader.read(*next, READ_BYTES_PER_TICK) {
            Ok(r) => r,
            Err(e) => {
                // A damaged batch: skip past it, keep the rest readable.
                tracing::warn!(offset = *next, error = %e, "telemetry topic: unreadable batch skipped");
                *next += 1;
                return;
            }
        };
        for run in runs {
            for b in batch::split(run) {
                let Ok(b) = b else { break };
                let mut last = None;
                let decoded = batch::decode_records(&b, |r| {
                    last = Some(r.offset);
                    if r.offset < *next {
                        return;
                    }
                    match parse(&r.value, r.timestamp_ms) {
                        Ok((service, t, report)) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            self.newest.insert((service, t), (report, now));
                        }
                        Err(e) => {
                            invalid.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(offset = r.offset, error = %e, "telemetry record is not a report");
                        }
                    }
                });
                match (decoded, last) {
                    (Ok(h), _) => {
                        *next = (*next).max(h.base_offset + u64::from(h.record_count));
                    }
                    (Err(_), Some(o)) => *next = (*next).max(o + 1),
                    (Err(_), None) => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_parses_and_anything_else_is_named() {
        let (s, t, r) = parse(
            br#"{"service":"checkout","type":"order.created","sent_per_s":12.5,"expected_per_s":40,"load":0.25}"#,
            1_767_225_600_500,
        )
        .expect("report");
        assert_eq!((s.as_str(), t.as_str()), ("checkout", "order.created"));
        assert_eq!(
            r,
            Report {
                sent_per_s: 12.5,
                expected_per_s: 40.0,
                load: 0.25,
                at_s: 1_767_225_600
            }
        );
        let minimal = parse(br#"{"service":"a","type":"b","sent_per_s":0}"#, 0).expect("minimal");
        assert_eq!((minimal.2.expected_per_s, minimal.2.load), (0.0, 0.0));
        for bad in [
            &b"not json"[..],
            br#"{"service":"","type":"b","sent_per_s":1}"#,
            br#"{"service":"a","type":"b","sent_per_s":-1}"#,
            br#"{"service":"a","type":"b","sent_per_s":1,"load":2}"#,
            br#"{"service":"a","type":"b"}"#,
            br#"{"service":"a","type":"b","sent_per_s":1,"extra":1}"#,
            b"",
        ] {
            assert!(parse(bad, 0).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let long = format!(
            r#"{{"service":"{}","type":"b","sent_per_s":1}}"#,
            "x".repeat(129)
        );
        assert!(parse(long.as_bytes(), 0).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = parse(&bytes, 0);
        }

        #[test]
        fn written_reports_parse_back(
            service in "[a-z0-9._-]{1,40}",
            t in "[a-z0-9._-]{1,40}",
            sent in 0.0f64..1e9,
            expected in 0.0f64..1e9,
            load in 0.0f64..=1.0,
            ts in 0i64..4_000_000_000_000,
        ) {
            let v = serde_json::json!({
                "service": service, "type": t, "sent_per_s": sent,
                "expected_per_s": expected, "load": load,
            });
            let (s2, t2, r) = parse(v.to_string().as_bytes(), ts).expect("a written report");
            proptest::prop_assert_eq!((s2, t2), (service, t));
            // JSON text keeps a float to within its last digit.
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1.0);
            proptest::prop_assert!(close(r.sent_per_s, sent) && close(r.expected_per_s, expected) && close(r.load, load), "{r:?}");
            proptest::prop_assert_eq!(r.at_s, ts / 1000);
        }
    }
}

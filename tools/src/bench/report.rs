//! Latency summaries from hdrhistogram and the bench report (human text and JSON).
//!
//! Histograms record nanoseconds; summaries and JSON give microseconds. MB is
//! 1,000,000 bytes of message payload (keys, headers and framing not counted).

use std::collections::BTreeMap;
use std::fmt::Write;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use super::mix::{PriorityMix, CLASS_NAMES};
use super::timeline::{Timeline, SLOT};

/// Percentiles reported, with their JSON keys.
pub const QUANTILES: [(&str, f64); 5] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p99", 0.99),
    ("p999", 0.999),
    ("p9999", 0.9999),
];

/// A histogram of nanoseconds from 1 ns to one hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// Records `ns` (clamped into the histogram's range).
pub fn record_ns(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.max(1));
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    /// p50, p90, p99, p99.9, p99.99 (same order as [`QUANTILES`]).
    pub quantiles_us: [f64; 5],
    pub max_us: f64,
}

impl LatencySummary {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        let mut quantiles_us = [0.0; 5];
        if !h.is_empty() {
            for (i, (_, q)) in QUANTILES.iter().enumerate() {
                quantiles_us[i] = us(h.value_at_quantile(*q));
            }
        }
        LatencySummary {
            count: h.len(),
            quantiles_us,
            max_us: if h.is_empty() { 0.0 } else { us(h.max()) },
        }
    }

    /// `{"p50", "p90", "p99", "p999", "p9999", "max", "count"}`, values in µs.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        for (i, (k, _)) in QUANTILES.iter().enumerate() {
            m.insert((*k).into(), json!(round1(self.quantiles_us[i])));
        }
        m.insert("max".into(), json!(round1(self.max_us)));
        m.insert("count".into(), json!(self.count));
        Value::Object(m)
    }

    /// One line: `p50 123.4  p90 …  max …  (n=…)`, values in µs.
    pub fn human(&self) -> String {
        let labels = ["p50", "p90", "p99", "p99.9", "p99.99"];
        let mut s = String::new();
        for (l, v) in labels.iter().zip(self.quantiles_us) {
            let _ = write!(s, "{l} {}  ", fmt_us(v));
        }
        let _ = write!(s, "max {}  (n={})", fmt_us(self.max_us), self.count);
        s
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Microseconds as µs below 10 ms, as ms above.
pub fn fmt_us(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1}ms", us / 1000.0)
    } else {
        format!("{us:.1}µs")
    }
}

/// The outcome of one bench run.
#[derive(Debug, Clone)]
pub struct Report {
    pub mode: String,
    /// Messages measured (after warmup).
    pub messages: u64,
    /// Payload bytes measured.
    pub bytes: u64,
    pub duration_s: f64,
    /// What the latency measures, e.g. "per batch: first send → ack of its last record".
    pub latency_kind: String,
    pub latency: LatencySummary,
    /// e2e in open loop: the same messages timed from when the producer handed each to
    /// the SDK instead of from when it was due, so a load generator that woke late
    /// (its own sleep on a busy machine) shows as the difference between the two.
    pub from_send: Option<LatencySummary>,
    /// Per priority class ("p0" …), when a mix was given.
    pub classes: BTreeMap<String, LatencySummary>,
    /// e2e with a mix: each class timed from the hand-off to the SDK (`from_send`).
    pub classes_from_send: BTreeMap<String, LatencySummary>,
    /// Failed sends, lost messages and the like.
    pub errors: u64,
    /// The settings, echoed into the JSON under "settings".
    pub settings: Map<String, Value>,
    /// Notes printed under the summary (and in JSON under "notes").
    pub notes: Vec<String>,
    /// Latency curves and throughput over time, for `--plot`.
    pub plot: crate::bench::plot::PlotData,
    /// e2e: latency per 100 ms of the consumers' clock; produce: of the acks
    /// (`timeline.rs`).
    pub timeline: Option<Timeline>,
}

impl Report {
    pub fn msgs_per_s(&self) -> f64 {
        if self.duration_s > 0.0 {
            self.messages as f64 / self.duration_s
        } else {
            0.0
        }
    }

    pub fn mb_per_s(&self) -> f64 {
        if self.duration_s > 0.0 {
            self.bytes as f64 / 1e6 / self.duration_s
        } else {
            0.0
        }
    }

    /// One JSON object: mode, messages, bytes, duration_s, msgs_per_s, mb_per_s,
    /// latency_us {p50, p90, p99, p999, p9999, max, count}, classes {pN: {…}},
    /// latency_from_send_us (e2e; else null), classes_from_send_us {pN: {…}} (e2e with
    /// a mix; else empty), latency_kind, errors, settings, notes,
    /// timeline (e2e: one object per 100 ms of receive time; produce: of ack time,
    /// counting batches; else null).
    pub fn to_json(&self) -> Value {
        let by_class = |m: &BTreeMap<String, LatencySummary>| -> Map<String, Value> {
            m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()
        };
        json!({
            "mode": self.mode,
            "messages": self.messages,
            "bytes": self.bytes,
            "duration_s": (self.duration_s * 1e6).round() / 1e6,
            "msgs_per_s": self.msgs_per_s().round(),
            "mb_per_s": round1(self.mb_per_s()),
            "latency_us": self.latency.to_json(),
            "latency_from_send_us": self.from_send.as_ref().map(|l| l.to_json()),
            "classes": by_class(&self.classes),
            "classes_from_send_us": by_class(&self.classes_from_send),
            "latency_kind": self.latency_kind,
            "errors": self.errors,
            "settings": self.settings,
            "notes": self.notes,
            "timeline": self.timeline.as_ref().map(Timeline::to_json),
        })
    }

    /// The human summary.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let settings: Vec<String> = self
            .settings
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                Value::String(t) => format!("{k}={t}"),
                other => format!("{k}={other}"),
            })
            .collect();
        let _ = writeln!(s, "weir-bench {}  [{}]", self.mode, settings.join(" "));
        let _ = writeln!(
            s,
            "  {} messages, {:.1} MB in {:.3} s",
            group_digits(self.messages),
            self.bytes as f64 / 1e6,
            self.duration_s
        );
        let _ = writeln!(
            s,
            "  throughput  {} msgs/s   {:.1} MB/s",
            group_digits(self.msgs_per_s().round() as u64),
            self.mb_per_s()
        );
        let _ = writeln!(s, "  latency ({})", self.latency_kind);
        let _ = writeln!(s, "    all  {}", self.latency.human());
        if let Some(l) = &self.from_send {
            let _ = writeln!(s, "    from the SDK call  {}", l.human());
        }
        for (k, v) in &self.classes {
            let _ = writeln!(s, "    {k:<4} {}", v.human());
            if let Some(f) = self.classes_from_send.get(k) {
                let _ = writeln!(s, "    {k:<4} from the SDK call  {}", f.human());
            }
        }
        if let Some(t) = &self.timeline {
            let (slow, used) = t.slow_slots();
            let one = if t.unit() == "batches" {
                "batch"
            } else {
                "message"
            };
            let _ = writeln!(
                s,
                "  over time: {slow} of {used} slots of {} ms hold a {one} over 5 ms",
                SLOT.as_millis()
            );
            for (at, w) in t.worst(3).iter().filter(|(_, w)| w.over_1ms > 0) {
                let _ = writeln!(
                    s,
                    "    at {at:.1} s: {} of {} {} over 5 ms, {} over 1 ms, max {:.1} ms",
                    w.over_5ms,
                    w.messages,
                    t.unit(),
                    w.over_1ms,
                    w.max_ns as f64 / 1e6
                );
            }
        }
        let _ = writeln!(s, "  errors  {}", self.errors);
        for n in &self.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        s
    }
}

/// Latency summaries of the classes in `mix` (empty without a mix).
pub fn class_summaries(
    hists: &[Histogram<u64>; 4],
    mix: &Option<PriorityMix>,
) -> BTreeMap<String, LatencySummary> {
    let mut out = BTreeMap::new();
    if let Some(m) = mix {
        for c in m.classes() {
            out.insert(
                CLASS_NAMES[c].to_string(),
                LatencySummary::from_histogram(&hists[c]),
            );
        }
    }
    out
}

/// 1234567 → "1,234,567".
pub fn group_digits(n: u64) -> String {
    let d = n.to_string();
    let mut out = String::new();
    let first = match d.len() % 3 {
        0 => 3,
        r => r,
    };
    out.push_str(&d[..first]);
    for chunk in d.as_bytes()[first..].chunks(3) {
        out.push(',');
        out.push_str(std::str::from_utf8(chunk).expect("ascii digits"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_a_histogram() {
        let mut h = new_histogram();
        for us in 1..=10_000u64 {
            record_ns(&mut h, us * 1000);
        }
        let s = LatencySummary::from_histogram(&h);
        assert_eq!(s.count, 10_000);
        let near = |v: f64, want: f64| (v - want).abs() / want < 0.002;
        assert!(near(s.quantiles_us[0], 5000.0), "{s:?}");
        assert!(near(s.quantiles_us[1], 9000.0), "{s:?}");
        assert!(near(s.quantiles_us[2], 9900.0), "{s:?}");
        assert!(near(s.quantiles_us[3], 9990.0), "{s:?}");
        assert!(near(s.quantiles_us[4], 9999.0), "{s:?}");
        assert!(near(s.max_us, 10_000.0), "{s:?}");
    }

    #[test]
    fn empty_histogram_is_zeros() {
        let s = LatencySummary::from_histogram(&new_histogram());
        assert_eq!(s.count, 0);
        assert_eq!(s.quantiles_us, [0.0; 5]);
        assert_eq!(s.max_us, 0.0);
        record_ns(&mut new_histogram(), 0); // clamps, does not panic
    }

    fn report() -> Report {
        let mut h = new_histogram();
        record_ns(&mut h, 250_000);
        let lat = LatencySummary::from_histogram(&h);
        let mut classes = BTreeMap::new();
        classes.insert("p0".to_string(), lat.clone());
        classes.insert("p3".to_string(), lat.clone());
        let mut classes_from_send = BTreeMap::new();
        classes_from_send.insert("p0".to_string(), lat.clone());
        Report {
            mode: "e2e".into(),
            messages: 2_000_000,
            bytes: 2_048_000_000,
            duration_s: 2.0,
            latency_kind: "end to end".into(),
            from_send: None,
            latency: lat,
            classes,
            classes_from_send,
            errors: 0,
            settings: Map::new(),
            notes: vec![],
            plot: Default::default(),
            timeline: None,
        }
    }

    #[test]
    fn an_e2e_timeline_shows_in_json_and_names_its_worst_slot() {
        let mut r = report();
        assert!(r.to_json()["timeline"].is_null(), "no timeline, null");
        let mut t = Timeline::default();
        t.record(50_000_000, 100_000); // 0.0 s: fast
        t.record(350_000_000, 6_000_000); // 0.3 s: over 5 ms
        r.timeline = Some(t);
        let j = r.to_json();
        assert_eq!(j["timeline"].as_array().map(Vec::len), Some(2));
        assert_eq!(j["timeline"][1]["over_5ms"], 1);
        let text = r.human();
        assert!(
            text.contains("1 of 2 slots of 100 ms hold a message over 5 ms"),
            "{text}"
        );
        assert!(
            text.contains("at 0.3 s: 1 of 1 messages over 5 ms"),
            "{text}"
        );
        assert!(
            !text.contains("at 0.0 s"),
            "a slot with nothing over 1 ms is not named"
        );
        // produce's timeline counts batches, in JSON and in words.
        let mut t = Timeline::counting("batches");
        t.record(350_000_000, 6_000_000);
        r.timeline = Some(t);
        assert_eq!(r.to_json()["timeline"][0]["batches"], 1);
        let text = r.human();
        assert!(
            text.contains("1 of 1 slots of 100 ms hold a batch over 5 ms"),
            "{text}"
        );
        assert!(text.contains("1 of 1 batches over 5 ms"), "{text}");
    }

    #[test]
    fn json_has_the_documented_keys() {
        let j = report().to_json();
        for k in [
            "mode",
            "messages",
            "bytes",
            "duration_s",
            "msgs_per_s",
            "mb_per_s",
            "latency_us",
            "classes",
        ] {
            assert!(j.get(k).is_some(), "missing {k}");
        }
        assert_eq!(j["mode"], "e2e");
        assert_eq!(j["messages"], 2_000_000);
        assert_eq!(j["msgs_per_s"], 1_000_000.0);
        assert_eq!(j["mb_per_s"], 1024.0);
        let lat_keys = ["p50", "p90", "p99", "p999", "p9999", "max"];
        for k in lat_keys {
            let v = j["latency_us"][k].as_f64().unwrap();
            assert!((v - 250.0).abs() < 0.5, "{k} = {v}");
            for c in ["p0", "p3"] {
                assert!(j["classes"][c][k].is_number(), "classes.{c}.{k}");
            }
        }
        assert_eq!(j["classes"].as_object().unwrap().len(), 2);
        assert!(j["classes_from_send_us"]["p0"]["p99"].is_number());
        assert!(j["classes_from_send_us"].get("p3").is_none());
        // One line of valid JSON.
        let text = j.to_string();
        assert!(!text.contains('\n'));
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), j);
    }

    #[test]
    fn human_summary_mentions_the_figures() {
        let h = report().human();
        assert!(h.contains("1,000,000 msgs/s"), "{h}");
        assert!(h.contains("1024.0 MB/s"), "{h}");
        assert!(h.contains("p99.99"), "{h}");
        assert!(h.contains("p3 "), "{h}");
        assert!(h.contains("p0   from the SDK call"), "{h}");
        assert!(!h.contains("p3   from the SDK call"), "{h}");
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1000), "1,000");
        assert_eq!(fmt_us(12_345.0), "12.3ms");
    }
}

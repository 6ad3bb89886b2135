//! Client telemetry (PROTOCOL.md, "Client telemetry"): a service publishes its own
//! state on the broker's telemetry topic — per message type, the records it sent (or
//! handled) per second and the demand it expects, and its own load — and the broker
//! keeps a history and a forecast of each (service, message type), next to its shards'
//! (LoadHistory api, `/metrics`, `weir status`).
//!
//! ```no_run
//! # async fn f(client: weir_client::Client) -> weir_client::Result<()> {
//! use std::time::Duration;
//! let t = weir_client::Telemetry::start(&client, "checkout", Duration::from_secs(1)).await?;
//! t.count("order.created", 1); // each time the service sends one
//! t.expect("order.created", 2_000.0); // what it expects to send per second soon
//! t.set_load(0.4); // its own load, 0..=1
//! t.shutdown().await; // publishes a last report
//! # Ok(()) }
//! ```
//!
//! A producer built with `ProducerBuilder::count_types(&telemetry, "type")` counts the
//! records it sends that name their message type in header `type`, so a service whose
//! records carry their type need not count at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use weir_protocol::messages::TopicConfig;
use weir_protocol::ErrorCode;

use crate::{Admin, Client, Producer, ProducerRecord, Result};

/// The topic telemetry goes to (the broker reads it; PROTOCOL.md).
pub const TELEMETRY_TOPIC: &str = "__weir_telemetry";

/// Most message types one `Telemetry` reports (as many pairs as a broker follows);
/// more are not counted, so type names taken from records cannot grow it without end.
pub const TYPES_MAX: usize = 256;

/// Longest message type name, in bytes (the broker refuses longer ones).
pub const TYPE_NAME_MAX: usize = 128;

/// How long the telemetry topic keeps reports when this SDK creates it.
const RETENTION_MS: u64 = 60 * 60 * 1000;

/// One message type's figures since the last report.
#[derive(Debug, Default, Clone, Copy)]
struct TypeFigures {
    count: u64,
    expected_per_s: f64,
}

#[derive(Debug, Default)]
struct Figures {
    types: HashMap<String, TypeFigures>,
    load: f64,
}

/// A service's telemetry publisher: counts are taken in memory (a lock and an add)
/// and published every interval by a task of its own.
#[derive(Debug)]
pub struct Telemetry {
    figures: Arc<Mutex<Figures>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// A handle that counts into a [`Telemetry`] (cheap to clone; what
/// `ProducerBuilder::count_types` holds).
#[derive(Debug, Clone)]
pub struct TelemetryCounter {
    figures: Arc<Mutex<Figures>>,
}

impl TelemetryCounter {
    /// Counts `records` of `message_type` sent (or handled) by the service. A type
    /// name that is empty or longer than [`TYPE_NAME_MAX`], or a new type beyond
    /// [`TYPES_MAX`], is not counted.
    pub fn count(&self, message_type: &str, records: u64) {
        let mut f = self.figures.lock().expect("telemetry lock");
        if let Some(t) = f.types.get_mut(message_type) {
            t.count += records;
        } else if admissible(&f, message_type) {
            f.types.insert(
                message_type.to_string(),
                TypeFigures {
                    count: records,
                    ..Default::default()
                },
            );
        }
    }
}

impl Telemetry {
    /// A counting handle for other parts of the service (and producers).
    pub fn counter(&self) -> TelemetryCounter {
        TelemetryCounter {
            figures: self.figures.clone(),
        }
    }

    /// Starts publishing `service`'s reports every `interval` (at least 100 ms),
    /// creating the telemetry topic (1 shard, an hour's retention) if it does not
    /// exist yet.
    pub async fn start(
        client: &Client,
        service: impl Into<String>,
        interval: Duration,
    ) -> Result<Telemetry> {
        let service = service.into();
        match Admin::new(client.clone())
            .create_topic(
                TELEMETRY_TOPIC,
                1,
                TopicConfig {
                    retention_ms: RETENTION_MS,
                    ..TopicConfig::default()
                },
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => {}
            Err(e) => return Err(e),
        }
        let producer = Producer::builder(client).build().await?;
        let figures = Arc::new(Mutex::new(Figures::default()));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(publish(
            producer,
            service,
            figures.clone(),
            interval.max(Duration::from_millis(100)),
            stopped,
        ));
        Ok(Telemetry {
            figures,
            stop,
            task,
        })
    }

    /// Counts `records` of `message_type` sent (or handled) by the service.
    pub fn count(&self, message_type: &str, records: u64) {
        self.counter().count(message_type, records);
    }

    /// The demand the service expects of `message_type`, per second (kept until
    /// changed).
    pub fn expect(&self, message_type: &str, per_s: f64) {
        let mut f = self.figures.lock().expect("telemetry lock");
        if !f.types.contains_key(message_type) && !admissible(&f, message_type) {
            return;
        }
        f.types
            .entry(message_type.to_string())
            .or_default()
            .expected_per_s = if per_s.is_finite() {
            per_s.max(0.0)
        } else {
            0.0
        };
    }

    /// The service's own load, 0..=1 (clamped).
    pub fn set_load(&self, load: f64) {
        let load = if load.is_finite() {
            load.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.figures.lock().expect("telemetry lock").load = load;
    }

    /// Publishes a last report and stops.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Whether a type not followed yet may be: its name fits and there is room.
fn admissible(f: &Figures, message_type: &str) -> bool {
    (1..=TYPE_NAME_MAX).contains(&message_type.len()) && f.types.len() < TYPES_MAX
}

/// One report's value (PROTOCOL.md, "Client telemetry").
fn report(
    service: &str,
    message_type: &str,
    sent_per_s: f64,
    expected_per_s: f64,
    load: f64,
) -> String {
    serde_json::json!({
        "service": service,
        "type": message_type,
        "sent_per_s": sent_per_s,
        "expected_per_s": expected_per_s,
        "load": load,
    })
    .to_string()
}

async fn publish(
    producer: Producer,
    service: String,
    figures: Arc<Mutex<Figures>>,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut since = Instant::now();
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stopped.changed() => true,
        };
        let now = Instant::now();
        let secs = now.duration_since(since).as_secs_f64().max(1e-3);
        since = now;
        let values: Vec<String> = {
            let mut f = figures.lock().expect("telemetry lock");
            let load = f.load;
            f.types
                .iter_mut()
                .map(|(t, fig)| {
                    let sent = std::mem::take(&mut fig.count) as f64 / secs;
                    report(&service, t, sent, fig.expected_per_s, load)
                })
                .collect()
        };
        let mut acks = Vec::with_capacity(values.len());
        for v in values {
            let rec = ProducerRecord::new(TELEMETRY_TOPIC, v).key(service.clone());
            match producer.send(rec).await {
                Ok(a) => acks.push(a),
                Err(e) => tracing::debug!(error = %e, "telemetry report not queued"),
            }
        }
        for a in acks {
            if let Err(e) = a.await {
                // Telemetry is best effort: the service goes on whatever the broker says.
                tracing::debug!(error = %e, "telemetry report not stored");
            }
        }
        if last {
            break;
        }
    }
    let _ = producer.flush().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_bounded_in_number_and_name_length() {
        let c = TelemetryCounter {
            figures: Arc::new(Mutex::new(Figures::default())),
        };
        for i in 0..TYPES_MAX + 50 {
            c.count(&format!("t{i}"), 1);
        }
        c.count("", 1);
        c.count(&"x".repeat(TYPE_NAME_MAX + 1), 1);
        let f = c.figures.lock().unwrap();
        assert_eq!(f.types.len(), TYPES_MAX);
        assert!(f.types.contains_key("t0") && !f.types.contains_key(&format!("t{TYPES_MAX}")));
        drop(f);
        c.count("t0", 2);
        assert_eq!(
            c.figures.lock().unwrap().types["t0"].count,
            3,
            "known types still count"
        );
    }

    #[test]
    fn a_report_is_the_documented_json() {
        let v: serde_json::Value =
            serde_json::from_str(&report("checkout", "order.created", 12.5, 40.0, 0.25)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"service": "checkout", "type": "order.created",
                "sent_per_s": 12.5, "expected_per_s": 40.0, "load": 0.25})
        );
    }
}

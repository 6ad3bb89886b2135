//! Health states: each component and the broker as a whole is healthy, degraded or
//! critical, judged every second against the thresholds of seed 002 §5 (configurable,
//! `health_*` in CONFIG.md).
//!
//! Pure: [`evaluate`] turns measured [`Inputs`] into a [`HealthReport`], so the rules
//! are tested without a broker; `observe::run` gathers the inputs.

use serde::Serialize;

use crate::config::Config;

/// How well a component (or the broker) is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    #[default]
    Healthy,
    Degraded,
    Critical,
}

impl Level {
    /// 0, 1, 2: the value of `weir_health_state`.
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Healthy => "healthy",
            Level::Degraded => "degraded",
            Level::Critical => "critical",
        }
    }
}

/// One component's state and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Component {
    pub name: &'static str,
    pub level: Level,
    /// What was measured, and the threshold crossed if any.
    pub detail: String,
}

/// Every component and the worst of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HealthReport {
    pub overall: Level,
    pub components: Vec<Component>,
    /// When it was computed (Unix ms).
    pub at_ms: i64,
}

/// The measurements one evaluation judges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inputs {
    /// Deepest backlog: appends waiting in one shard's writer lanes, or one consumer
    /// group's lag on one shard, whichever is larger; and where.
    pub queue_depth: u64,
    pub queue_depth_where: String,
    /// Average produce latency over the last second (seconds; 0 without produces).
    pub delay_seconds: f64,
    /// Failed requests per thousand over the error window, and requests seen in it.
    pub error_rate_permille: f64,
    pub requests_in_window: u64,
    /// Highest resource use in percent, and which resource.
    pub resource_percent: f64,
    pub resource_what: String,
    /// Shards that refuse appends: `topic/shard: cause`.
    pub storage_trouble: Vec<String>,
}

/// Warning and critical thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    pub queue_depth: [u64; 2],
    pub delay_ms: [u64; 2],
    pub error_rate_permille: [u64; 2],
    pub resource_percent: [u64; 2],
}

impl Thresholds {
    /// The `health_*` settings (validated to be pairs).
    pub fn from_config(c: &Config) -> Self {
        let pair = |v: &[u64]| [v[0], v[1]];
        Thresholds {
            queue_depth: pair(&c.health_queue_depth_records),
            delay_ms: pair(&c.health_delay_ms),
            error_rate_permille: pair(&c.health_error_rate_permille),
            resource_percent: pair(&c.health_resource_percent),
        }
    }
}

/// Above the critical threshold is critical, above the warning one degraded.
fn judge(value: f64, t: [u64; 2]) -> Level {
    if value > t[1] as f64 {
        Level::Critical
    } else if value > t[0] as f64 {
        Level::Degraded
    } else {
        Level::Healthy
    }
}

/// Judges `i` against `t`.
pub fn evaluate(t: &Thresholds, i: &Inputs, at_ms: i64) -> HealthReport {
    let mut components = vec![
        Component {
            name: "queues",
            level: judge(i.queue_depth as f64, t.queue_depth),
            detail: format!(
                "deepest backlog {} records{} (warning > {}, critical > {})",
                i.queue_depth,
                if i.queue_depth_where.is_empty() {
                    String::new()
                } else {
                    format!(" at {}", i.queue_depth_where)
                },
                t.queue_depth[0],
                t.queue_depth[1]
            ),
        },
        Component {
            name: "latency",
            level: judge(i.delay_seconds * 1000.0, t.delay_ms),
            detail: format!(
                "average produce latency {:.1} ms over the last second (warning > {} ms, critical > {} ms)",
                i.delay_seconds * 1000.0,
                t.delay_ms[0],
                t.delay_ms[1]
            ),
        },
        Component {
            name: "errors",
            level: judge(i.error_rate_permille, t.error_rate_permille),
            detail: format!(
                "{:.2} % of {} requests failed (warning > {} ‰, critical > {} ‰)",
                i.error_rate_permille / 10.0,
                i.requests_in_window,
                t.error_rate_permille[0],
                t.error_rate_permille[1]
            ),
        },
        Component {
            name: "resources",
            level: judge(i.resource_percent, t.resource_percent),
            detail: format!(
                "{} at {:.1} % (warning > {} %, critical > {} %)",
                if i.resource_what.is_empty() {
                    "nothing measured"
                } else {
                    &i.resource_what
                },
                i.resource_percent,
                t.resource_percent[0],
                t.resource_percent[1]
            ),
        },
    ];
    components.push(Component {
        name: "storage",
        level: if i.storage_trouble.is_empty() {
            Level::Healthy
        } else {
            Level::Critical
        },
        detail: if i.storage_trouble.is_empty() {
            "every shard takes appends".to_string()
        } else {
            format!("refusing appends: {}", i.storage_trouble.join("; "))
        },
    });
    HealthReport {
        overall: components.iter().map(|c| c.level).max().unwrap_or_default(),
        components,
        at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Thresholds {
        Thresholds::from_config(&Config::default())
    }

    fn level(r: &HealthReport, name: &str) -> Level {
        r.components.iter().find(|c| c.name == name).unwrap().level
    }

    #[test]
    fn seed_thresholds_are_the_defaults() {
        assert_eq!(
            seed(),
            Thresholds {
                queue_depth: [5000, 10_000],
                delay_ms: [500, 1000],
                error_rate_permille: [1, 10],
                resource_percent: [80, 90],
            }
        );
    }

    #[test]
    fn each_threshold_moves_its_component_and_the_worst_one_is_overall() {
        let t = seed();
        let quiet = evaluate(&t, &Inputs::default(), 0);
        assert_eq!(quiet.overall, Level::Healthy);
        let cases: [(&str, Inputs, Level); 9] = [
            (
                "queues",
                Inputs {
                    queue_depth: 5000,
                    ..Default::default()
                },
                Level::Healthy,
            ),
            (
                "queues",
                Inputs {
                    queue_depth: 5001,
                    ..Default::default()
                },
                Level::Degraded,
            ),
            (
                "queues",
                Inputs {
                    queue_depth: 10_001,
                    ..Default::default()
                },
                Level::Critical,
            ),
            (
                "latency",
                Inputs {
                    delay_seconds: 0.6,
                    ..Default::default()
                },
                Level::Degraded,
            ),
            (
                "latency",
                Inputs {
                    delay_seconds: 1.2,
                    ..Default::default()
                },
                Level::Critical,
            ),
            (
                "errors",
                Inputs {
                    error_rate_permille: 2.0,
                    ..Default::default()
                },
                Level::Degraded,
            ),
            (
                "errors",
                Inputs {
                    error_rate_permille: 11.0,
                    ..Default::default()
                },
                Level::Critical,
            ),
            (
                "resources",
                Inputs {
                    resource_percent: 85.0,
                    ..Default::default()
                },
                Level::Degraded,
            ),
            (
                "storage",
                Inputs {
                    storage_trouble: vec!["t/0: full".into()],
                    ..Default::default()
                },
                Level::Critical,
            ),
        ];
        for (name, inputs, want) in cases {
            let r = evaluate(&t, &inputs, 0);
            assert_eq!(level(&r, name), want, "{name} {inputs:?}");
            assert_eq!(r.overall, want, "{name} {inputs:?}");
        }
    }
}

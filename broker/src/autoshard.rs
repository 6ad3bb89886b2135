//! Automatic sharding (seed 001's shard manager): with `auto_reshard = true` the broker
//! splits a topic whose ingest nears its shards' capacity and merges one that stays
//! cold, through the same reshard an operator runs (`TopicRegistry::reshard`), so keys
//! keep their order.
//!
//! Every [`CHECK_EVERY`] the observer's loop hands [`AutoSharder::tick`] the load
//! agents' newest second of each shard with its ingest forecast (`load_history`). Per
//! topic it sums its active shards: the rate now (mean of the last
//! [`SMOOTH_SAMPLES`] seconds) and the forecast's upper bound. [`decide`] plans:
//!
//! - **split** when the demand — in `predictive` mode the larger of the rate now and
//!   the forecast's upper bound, in `reactive` mode the rate now — passes
//!   [`SPLIT_AT`] of the shards' capacity (`shard_capacity_records_per_s` each): to as
//!   many shards as run it at [`TARGET`], at most 4× and `auto_reshard_max_shards`;
//! - **merge** when both the rate now and the forecast's upper bound stay under
//!   [`COLD_AT`] of what the merged shards (at most half as many) could take, for
//!   `auto_reshard_cold_s`;
//! - never two decisions for one topic within `auto_reshard_interval_s` (an operator's
//!   reshard counts), so it cannot flap.
//!
//! Each decision is logged and recorded in the reshard's `reason` (the topic's
//! history, `weir topic describe`), with the rate and forecast that caused it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_protocol::messages::LoadForecast;

use crate::config::AutoReshardMode;
use crate::state::BrokerState;

/// How often decisions are taken.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Seconds of rate averaged for "now".
pub const SMOOTH_SAMPLES: usize = 5;
/// Seconds a topic is watched before its first decision.
pub const WARMUP_SAMPLES: u32 = 10;
/// Split when demand passes this share of the shards' capacity.
pub const SPLIT_AT: f64 = 0.8;
/// A reshard sizes the topic to run at this share of capacity.
pub const TARGET: f64 = 0.6;
/// Merge when demand stays under this share of the merged shards' capacity.
pub const COLD_AT: f64 = 0.3;

/// What [`decide`] plans for one topic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Plan {
    Hold,
    Split {
        to: u32,
        demand: f64,
    },
    /// Cold enough to merge to `to` shards, if it stays so for `auto_reshard_cold_s`.
    Merge {
        to: u32,
        demand: f64,
    },
}

/// The plan for a topic of `active` shards whose ingest is `now` records/s with a
/// forecast upper bound of `ahead_high` (see the module docs).
pub fn decide(
    active: u32,
    now: f64,
    ahead_high: f64,
    capacity: f64,
    max: u32,
    mode: AutoReshardMode,
) -> Plan {
    let active = active.max(1);
    let demand = match mode {
        AutoReshardMode::Predictive => now.max(ahead_high),
        AutoReshardMode::Reactive => now,
    };
    let sized = |d: f64| {
        (d / (TARGET * capacity))
            .ceil()
            .max(1.0)
            .min(f64::from(u32::MAX)) as u32
    };
    if demand > SPLIT_AT * capacity * f64::from(active) && active < max {
        let to = sized(demand)
            .max(active + 1)
            .min(active.saturating_mul(4))
            .min(max);
        return Plan::Split { to, demand };
    }
    if active > 1 {
        // Cold means cold now and ahead, whatever the mode.
        let cold = now.max(ahead_high);
        let to = sized(cold).max(active.div_ceil(2));
        if to < active && cold < COLD_AT * capacity * f64::from(to) {
            return Plan::Merge { to, demand: cold };
        }
    }
    Plan::Hold
}

/// One topic as the sharder follows it.
#[derive(Debug, Default)]
struct Followed {
    /// Summed ingest of the active shards, newest last.
    rates: std::collections::VecDeque<f64>,
    seen: u32,
    /// Layout epoch last seen (a change not made here is an operator's reshard).
    epoch: u32,
    last_change: Option<Instant>,
    cold_since: Option<Instant>,
}

/// The automatic sharder's memory between ticks.
#[derive(Debug, Default)]
pub struct AutoSharder {
    topics: HashMap<String, Followed>,
}

impl AutoSharder {
    /// Takes this tick's decisions and carries them out.
    pub async fn tick(&mut self, state: &Arc<BrokerState>) {
        let c = &state.config;
        if !c.auto_reshard || state.cluster.is_some() {
            return;
        }
        let now = Instant::now();
        // Per topic: (sum of the rates now, sum of the forecasts' upper bounds, a
        // forecast to describe).
        let mut load: HashMap<String, (f64, f64, f64, Option<LoadForecast>)> = HashMap::new();
        let latest = state.load.latest();
        for topic in state.topics.list() {
            if topic.name.starts_with("__") {
                continue;
            }
            let mut sum = (0.0, 0.0, 0.0, None);
            for (_, s, p, f) in latest.iter().filter(|(t, ..)| *t == topic.name) {
                if *s >= topic.active {
                    continue;
                }
                sum.0 += f64::from(p.records_in);
                sum.1 += f.high_per_s as f64;
                sum.2 += f.records_in_per_s as f64;
                if sum.3.is_none() {
                    sum.3 = Some(f.clone());
                }
            }
            load.insert(topic.name.clone(), sum);
        }
        self.topics.retain(|t, _| load.contains_key(t));
        for (name, (rate, high, point, example)) in load {
            let Ok(topic) = state.topics.get(&name) else {
                continue;
            };
            let f = self.topics.entry(name.clone()).or_default();
            if f.epoch != topic.layout_epoch() {
                f.epoch = topic.layout_epoch();
                f.last_change = Some(now);
                f.rates.clear();
            }
            f.rates.push_back(rate);
            while f.rates.len() > SMOOTH_SAMPLES {
                f.rates.pop_front();
            }
            f.seen = f.seen.saturating_add(1);
            if f.seen < WARMUP_SAMPLES {
                continue;
            }
            let smoothed = f.rates.iter().sum::<f64>() / f.rates.len().max(1) as f64;
            let plan = decide(
                topic.active,
                smoothed,
                high,
                c.shard_capacity_records_per_s as f64,
                c.auto_reshard_max_shards,
                c.auto_reshard_mode,
            );
            let (to, demand, kind) = match plan {
                Plan::Hold => {
                    f.cold_since = None;
                    continue;
                }
                Plan::Merge { to, demand } => {
                    let since = *f.cold_since.get_or_insert(now);
                    if now.duration_since(since) < Duration::from_secs(c.auto_reshard_cold_s) {
                        continue;
                    }
                    (to, demand, "merge")
                }
                Plan::Split { to, demand } => {
                    f.cold_since = None;
                    (to, demand, "split")
                }
            };
            let interval = Duration::from_secs(c.auto_reshard_interval_s);
            if f.last_change
                .is_some_and(|t| now.duration_since(t) < interval)
            {
                continue;
            }
            let (horizon, model) = example.map_or((0, String::new()), |e| (e.horizon_s, e.model));
            let reason = format!(
                "auto {kind} ({mode:?}): ingest {smoothed:.0}/s now, forecast {point:.0}/s (95% up to {high:.0}/s, {model}) at +{horizon}s; demand {demand:.0}/s on {active} shards of {cap}/s",
                mode = c.auto_reshard_mode,
                active = topic.active,
                cap = c.shard_capacity_records_per_s,
            );
            match crate::server::control::reshard(state, &name, to, reason.clone()).await {
                Ok(r) => {
                    tracing::info!(topic = %name, epoch = r.epoch, from = r.from_shards, to, %reason, "automatic reshard");
                    f.epoch = r.epoch;
                    f.last_change = Some(now);
                    f.cold_since = None;
                    f.rates.clear();
                }
                Err(e) => {
                    tracing::warn!(topic = %name, to, error = %e.message, "automatic reshard failed");
                    // Not again before the interval: a failing reshard must not spin.
                    f.last_change = Some(now);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AutoReshardMode::{Predictive, Reactive};

    #[test]
    fn a_forecast_past_capacity_splits_ahead_only_in_predictive_mode() {
        // 2 shards of 1000/s: 1000/s now is 50 %; a forecast of 2000/s is past 80 %.
        assert_eq!(
            decide(2, 1000.0, 2000.0, 1000.0, 64, Predictive),
            Plan::Split {
                to: 4,
                demand: 2000.0
            }
        );
        assert_eq!(decide(2, 1000.0, 2000.0, 1000.0, 64, Reactive), Plan::Hold);
        // Reactive splits once the rate itself is past the threshold.
        assert_eq!(
            decide(2, 1700.0, 0.0, 1000.0, 64, Reactive),
            Plan::Split {
                to: 3,
                demand: 1700.0
            }
        );
    }

    #[test]
    fn splits_are_bounded_and_merges_halve_at_most() {
        // A huge demand grows 4x at most, and never past the maximum.
        assert_eq!(
            decide(2, 1e9, 0.0, 1000.0, 64, Predictive),
            Plan::Split { to: 8, demand: 1e9 }
        );
        assert_eq!(
            decide(2, 1e9, 0.0, 1000.0, 5, Predictive),
            Plan::Split { to: 5, demand: 1e9 }
        );
        assert_eq!(decide(5, 1e9, 0.0, 1000.0, 5, Predictive), Plan::Hold);
        // Idle: 8 shards merge to 4, not to 1.
        assert_eq!(
            decide(8, 0.0, 0.0, 1000.0, 64, Predictive),
            Plan::Merge { to: 4, demand: 0.0 }
        );
        // A forecast of more load keeps it from merging, in either mode.
        assert_eq!(decide(8, 0.0, 3000.0, 1000.0, 64, Reactive), Plan::Hold);
        // One shard never merges.
        assert_eq!(decide(1, 0.0, 0.0, 1000.0, 64, Predictive), Plan::Hold);
    }

    #[test]
    fn the_band_between_merge_and_split_holds() {
        // 4 shards of 1000/s: split above 3200/s, merge (to 2) below 600/s.
        for d in [700.0, 1500.0, 3000.0, 3200.0] {
            assert_eq!(decide(4, d, d, 1000.0, 64, Predictive), Plan::Hold, "{d}");
        }
        assert!(matches!(
            decide(4, 3300.0, 0.0, 1000.0, 64, Predictive),
            Plan::Split { .. }
        ));
        assert!(matches!(
            decide(4, 500.0, 500.0, 1000.0, 64, Predictive),
            Plan::Merge { to: 2, .. }
        ));
    }
}

//! `GET /alerts`: firing alerts, recent transitions and counts per rule, as JSON.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::Shared;
use crate::observe::alerts::{Alert, Transition};

#[derive(Serialize)]
pub struct Alerts {
    pub firing: Vec<Alert>,
    /// Newest first.
    pub recent: Vec<Transition>,
    pub fired_total: BTreeMap<&'static str, u64>,
}

pub async fn alerts(State(s): State<Shared>) -> Json<Alerts> {
    Json(s.observer.with_alerts(|b| Alerts {
        firing: b.firing.values().cloned().collect(),
        recent: b.recent.iter().rev().cloned().collect(),
        fired_total: b.fired_total.clone(),
    }))
}

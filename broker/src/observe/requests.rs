//! One tracing span per request (api, correlation id, client id) and its duration:
//! logged at debug level when it ends, at warn level (and counted in
//! `weir_slow_requests_total`) when it took longer than `slow_request_ms`.
//!
//! A disabled debug span costs a level check, so the produce path pays one
//! `Instant::now()` per request when debug logging is off.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Span;
use weir_protocol::frame::RequestHeader;
use weir_protocol::ApiKey;

use crate::flow::quota::ClientState;
use crate::state::BrokerState;

/// A request being served.
#[derive(Debug)]
pub struct RequestTimer {
    started: Instant,
    span: Span,
    api: &'static str,
    correlation_id: u32,
    client: Arc<ClientState>,
}

impl RequestTimer {
    /// Starts timing the request of `header` from `client_id`.
    pub fn begin(header: &RequestHeader, client: &Arc<ClientState>) -> RequestTimer {
        let client_id = client.id();
        let api = ApiKey::from_u16(header.api_key).map_or("unknown", ApiKey::name);
        RequestTimer {
            started: Instant::now(),
            span: tracing::debug_span!(
                "request",
                api,
                correlation_id = header.correlation_id,
                client_id
            ),
            api,
            correlation_id: header.correlation_id,
            client: client.clone(),
        }
    }

    /// The request's span, to instrument the task that serves it.
    pub fn span(&self) -> Span {
        self.span.clone()
    }

    /// The request was answered.
    pub fn finish(self, state: &BrokerState) {
        let took = self.started.elapsed();
        let _in = self.span.enter();
        tracing::debug!(duration_us = took.as_micros() as u64, "request done");
        let slow = state.config.slow_request_ms;
        if slow > 0 && took >= Duration::from_millis(slow) {
            state.meters.slow_requests.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                api = self.api,
                correlation_id = self.correlation_id,
                client_id = self.client.id(),
                duration_ms = took.as_millis() as u64,
                "slow request (over slow_request_ms = {slow})"
            );
        }
    }
}

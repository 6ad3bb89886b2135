//! Settling a lease: an ack makes the record done, a nack or an expired lease is a
//! failure that schedules a retry (with the class's backoff) or hands the record to the
//! dead-letter pump, and an extension moves the lease's expiry. Every outcome also
//! feeds the queue's circuit breaker.

use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::oneshot;
use weir_protocol::messages::*;
use weir_protocol::ErrorCode;

use super::window::{EntryState, Timer};
use super::{NackDurable, QueueActor, C_ACKED, C_NACKED};
use crate::clock::now_ms;
use crate::error::BrokerError;
use crate::queue::state_log::Event;
use crate::shard::writer::PendingAppend;

fn unknown_lease(l: &LeaseRef) -> BrokerError {
    BrokerError::new(
        ErrorCode::UnknownLease,
        format!(
            "lease {} of {}/{} is not current",
            l.lease_id, l.shard, l.offset
        ),
    )
}

impl QueueActor {
    pub(super) async fn ack(&mut self, leases: &[LeaseRef]) -> (Vec<u16>, Option<PendingAppend>) {
        let now = Instant::now();
        let mut codes = Vec::with_capacity(leases.len());
        let mut events = Vec::new();
        for l in leases {
            let Some(e) = self.current(l) else {
                codes.push(ErrorCode::UnknownLease as u16);
                continue;
            };
            if let Some(k) = e.timer.take() {
                self.timers.try_remove(&k);
            }
            let sq = &mut self.shards[l.shard as usize];
            sq.mark_done(l.offset);
            events.push((l.shard, Event::Ack { offset: l.offset }));
            codes.push(0);
            self.counts[C_ACKED] += 1;
            self.metrics.acked.fetch_add(1, Ordering::Relaxed);
            if let Some(s) = self.breaker.acked(now) {
                self.breaker_changed(s);
            }
        }
        if events.is_empty() {
            return (codes, None);
        }
        self.shared.available.notify_waiters();
        match self
            .log
            .append(&self.group, &self.topic_name, &events)
            .await
        {
            Ok(rx) => (codes, Some(rx)),
            Err(e) => {
                tracing::error!(error = %e, "queue state log append failed");
                let code = ErrorCode::StorageError as u16;
                (
                    codes
                        .iter()
                        .map(|c| if *c == 0 { code } else { *c })
                        .collect(),
                    None,
                )
            }
        }
    }

    pub(super) async fn nack(
        &mut self,
        l: &LeaseRef,
        retriable: bool,
        reason: String,
    ) -> Result<(NackResponse, NackDurable), BrokerError> {
        if self.current(l).is_none() {
            return Err(unknown_lease(l));
        }
        self.counts[C_NACKED] += 1;
        self.metrics.nacked.fetch_add(1, Ordering::Relaxed);
        let (resp, pending) = self.fail(l.shard, l.offset, retriable, reason).await?;
        let durable = match pending {
            Some(rx) => NackDurable::Append(rx),
            None => {
                let (tx, rx) = oneshot::channel();
                self.dead_waiters.insert((l.shard, l.offset), tx);
                NackDurable::Dead(rx)
            }
        };
        Ok((resp, durable))
    }

    /// One failed delivery (nack or expired lease): schedule the retry or dead-letter.
    pub(super) async fn fail(
        &mut self,
        s: u32,
        offset: u64,
        retriable: bool,
        reason: String,
    ) -> Result<(NackResponse, Option<PendingAppend>), BrokerError> {
        let now = Instant::now();
        let wall = now_ms();
        if let Some(st) = self.breaker.failed(now) {
            self.breaker_changed(st);
        }
        let unit = self.jitter.unit();
        let Some(e) = self.shards[s as usize].entries.get_mut(&offset) else {
            return Err(BrokerError::new(ErrorCode::Unknown, "entry vanished"));
        };
        if let Some(k) = e.timer.take() {
            self.timers.try_remove(&k);
        }
        let f = &mut e.failure;
        f.failures += 1;
        if f.first_ms == 0 {
            f.first_ms = wall;
        }
        f.last_ms = wall;
        f.error = crate::queue::state_log::cut(&reason).to_string();
        let policy = self.settings.policies[e.class.index()];
        let failures = f.failures;
        if !retriable || !policy.may_retry(failures) {
            e.state = EntryState::Dying;
            self.dlq_pending.push_back((s, offset));
            self.pump_dead_letters();
            return Ok((
                NackResponse {
                    outcome: NACK_DEAD_LETTERED,
                    attempts: failures,
                    retry_in_ms: 0,
                },
                None,
            ));
        }
        let delay = policy.delay(failures, unit);
        e.state = EntryState::Waiting;
        let failure = e.failure.clone();
        let key = self.timers.insert((s, offset, Timer::RetryDue), delay);
        if let Some(e) = self.shards[s as usize].entries.get_mut(&offset) {
            e.timer = Some(key);
        }
        let ev = Event::Fail {
            offset,
            failure,
            due_ms: wall + delay.as_millis() as i64,
        };
        let rx = self
            .log
            .append(&self.group, &self.topic_name, &[(s, ev)])
            .await
            .map_err(|e| BrokerError::new(ErrorCode::StorageError, e.to_string()))?;
        Ok((
            NackResponse {
                outcome: NACK_RETRY_SCHEDULED,
                attempts: failures,
                retry_in_ms: delay.as_millis().min(u128::from(u32::MAX)) as u32,
            },
            Some(rx),
        ))
    }

    pub(super) fn extend(
        &mut self,
        l: &LeaseRef,
        lease_ms: u32,
    ) -> Result<ExtendLeaseResponse, BrokerError> {
        let d = self.lease_duration(lease_ms);
        let Some(e) = self.current(l) else {
            return Err(unknown_lease(l));
        };
        let key = e.timer;
        match key {
            Some(k) => self.timers.reset(&k, d),
            None => return Err(unknown_lease(l)),
        }
        Ok(ExtendLeaseResponse {
            lease_ms: d.as_millis().min(u128::from(u32::MAX)) as u32,
        })
    }
}

//! Flow control: keeps the broker up and fair when clients misbehave or load exceeds
//! capacity, without ever dropping what it has accepted.
//!
//! Every refusal here happens *before* a produce is queued on its shard, so a refused
//! produce was never accepted; the client gets a named error with a retry-after.
//!
//! | limit | where | when it bites | what the client sees |
//! |---|---|---|---|
//! | `flow_connection_in_flight_bytes` | `server/connection.rs` | one connection's unanswered request bytes | the broker stops reading the socket (TCP backpressure), no error |
//! | `flow_receive_bytes` ([`receive`]) | `server/connection.rs` | large frames still arriving, broker-wide | the same |
//! | `max_in_flight_per_connection` | `server/connection.rs` | one connection's unanswered requests | the same |
//! | `flow_memory_bytes` ([`memory`]) | produce | produce bytes held broker-wide | THROTTLED + retry-after |
//! | quotas ([`quota`]) | handshake, produce, fetch | a client id's rate, connections, queued bytes | THROTTLED (+ retry-after); fetches are delayed first |
//! | shedding ([`shed`], [`load`]) | produce | load over a class's threshold | SHED + retry-after |
//!
//! Stopping the reader is right for the per-connection bounds: it slows exactly the
//! connection that sends too much and costs nothing. The broker-wide budget and the
//! quotas answer instead, because a connection stalled on a shared resource would also
//! stall its other, innocent requests (fetches, heartbeats), and the client can only
//! back off sensibly if told how long.

pub mod bucket;
pub mod load;
pub mod memory;
pub mod quota;
pub mod receive;
pub mod shed;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_protocol::classes::{Class, CLASS_COUNT};
use weir_protocol::messages::*;
use weir_protocol::ErrorCode;

use crate::config::Config;
use crate::error::BrokerError;
use load::LoadSignal;
use memory::{MemoryBudget, MemoryPermit};
use quota::{ClientState, QuotaRegistry};
use shed::{ShedPolicy, ShedSettings};

/// Most clients listed in a FlowStatus response.
pub const STATUS_MAX_CLIENTS: usize = 1000;

/// A produce refused by flow control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// THROTTLED or SHED.
    pub code: ErrorCode,
    pub retry_after_ms: u32,
    pub message: String,
}

impl Refusal {
    fn new(code: ErrorCode, retry_after: Duration, message: String) -> Self {
        Refusal {
            code,
            retry_after_ms: retry_after.as_millis().clamp(1, u128::from(u32::MAX)) as u32,
            message,
        }
    }
}

/// The broker's flow-control state, shared by every connection.
#[derive(Debug)]
pub struct FlowControl {
    memory: Arc<MemoryBudget>,
    receive: Arc<tokio::sync::Semaphore>,
    receive_total: u32,
    load: LoadSignal,
    shed: Mutex<ShedPolicy>,
    quotas: QuotaRegistry,
    max_delay: Duration,
}

/// An admitted produce: holds its memory and queued bytes until dropped (when the
/// produce is answered), and times its acknowledgement for the load signal.
#[derive(Debug)]
pub struct ProduceTicket {
    flow: Arc<FlowControl>,
    client: Arc<ClientState>,
    bytes: u64,
    enqueued: Option<Instant>,
    acked: Option<Duration>,
    _memory: MemoryPermit,
}

impl ProduceTicket {
    /// The produce was queued on its shard writer: its bytes now count as pending.
    pub fn enqueued(&mut self) {
        self.flow.load.enqueued(self.bytes);
        self.enqueued = Some(Instant::now());
    }

    /// The shard writer acknowledged it.
    pub fn acked(&mut self) {
        self.acked = self.enqueued.map(|t| t.elapsed());
    }
}

impl Drop for ProduceTicket {
    fn drop(&mut self) {
        if self.enqueued.is_some() {
            self.flow.load.finished(self.bytes, self.acked);
        }
        self.client.produce_done(self.bytes);
    }
}

impl FlowControl {
    /// Flow control as configured.
    pub fn new(config: &Config) -> Arc<Self> {
        let pct = |v: &[u32]| -> [u32; CLASS_COUNT - 1] {
            let mut out = [0; CLASS_COUNT - 1];
            for (o, p) in out.iter_mut().zip(v) {
                *o = p * 10;
            }
            out
        };
        let settings = ShedSettings {
            thresholds_permille: pct(&config.shed_thresholds_percent),
            shares_permille: pct(&config.shed_shares_percent),
            cooldown: Duration::from_millis(config.shed_cooldown_ms),
            recovery: Duration::from_millis(config.shed_recovery_ms),
        };
        let receive_total = config.flow_receive_bytes.min(u64::from(u32::MAX)) as u32;
        Arc::new(FlowControl {
            memory: MemoryBudget::new(config.flow_memory_bytes),
            receive: Arc::new(tokio::sync::Semaphore::new(receive_total as usize)),
            receive_total,
            load: LoadSignal::new(
                config.flow_load_pending_bytes,
                Duration::from_millis(config.flow_load_latency_target_ms),
            ),
            shed: Mutex::new(ShedPolicy::new(settings, config.shed_enabled)),
            quotas: QuotaRegistry::new(
                config.default_quota(),
                config.quota_entries(),
                config.max_connections.max(1000),
            ),
            max_delay: Duration::from_millis(config.quota_max_delay_ms),
        })
    }

    /// A connection's gate on the broker-wide receive budget.
    pub fn receive_gate(&self) -> receive::ReceiveGate {
        receive::ReceiveGate::new(self.receive.clone(), self.receive_total)
    }

    /// The quota registry (handshakes register connections here).
    pub fn quotas(&self) -> &QuotaRegistry {
        &self.quotas
    }

    /// The load now, in per mille.
    pub fn load_permille(&self) -> u32 {
        self.load
            .load_permille(self.memory.used(), self.memory.total())
    }

    /// Called every 100 ms by the broker's ticker.
    pub fn tick(&self) {
        self.load.tick();
    }

    /// Decides a produce of `bytes` whose most important record is in `class`, from
    /// `client`: shedding first (it protects the broker), then the broker-wide memory
    /// budget, then the client's quotas (last, so a refused produce costs the client
    /// no tokens).
    pub fn admit_produce(
        self: &Arc<Self>,
        client: &Arc<ClientState>,
        class: Class,
        bytes: u64,
    ) -> Result<ProduceTicket, Refusal> {
        let now = Instant::now();
        let load = self.load_permille();
        let shed = self
            .shed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .decide(class, load, now);
        if let Some(retry) = shed {
            return Err(Refusal::new(
                ErrorCode::Shed,
                retry,
                format!(
                    "broker load {}.{}% sheds part of {class}; retry later",
                    load / 10,
                    load % 10
                ),
            ));
        }
        let Some(memory) = self.memory.try_acquire_for(class, bytes) else {
            return Err(Refusal::new(
                ErrorCode::Throttled,
                Duration::from_millis(100),
                format!(
                    "broker memory budget full ({} of {} bytes held)",
                    self.memory.used(),
                    self.memory.total()
                ),
            ));
        };
        if let Err(t) = client.admit_produce(bytes, class, now) {
            return Err(Refusal::new(ErrorCode::Throttled, t.retry_after, t.message));
        }
        Ok(ProduceTicket {
            flow: self.clone(),
            client: client.clone(),
            bytes,
            enqueued: None,
            acked: None,
            _memory: memory,
        })
    }

    /// Waits until `client` may fetch again; `Err` (THROTTLED) when that would take
    /// longer than `quota_max_delay_ms`.
    pub async fn before_fetch(&self, client: &ClientState) -> Result<(), Refusal> {
        let wait = client.fetch_wait(Instant::now());
        if wait.is_zero() {
            return Ok(());
        }
        if wait > self.max_delay {
            return Err(Refusal::new(
                ErrorCode::Throttled,
                wait,
                format!("client {:?} is over its fetch quota", client.id()),
            ));
        }
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// Charges a served fetch to `client`'s fetch quota.
    pub fn after_fetch(&self, client: &ClientState, bytes: u64) {
        client.fetch_served(bytes, Instant::now());
    }

    /// DescribeQuotas.
    pub fn describe_quotas(
        &self,
        r: DescribeQuotasRequest,
    ) -> Result<DescribeQuotasResponse, BrokerError> {
        Ok(DescribeQuotasResponse {
            entries: self.quotas.describe(&r.client_ids)?,
        })
    }

    /// AlterQuotas.
    pub fn alter_quotas(&self, r: AlterQuotasRequest) -> Result<AlterQuotasResponse, BrokerError> {
        let entry = self.quotas.alter(&r.client_id, r.remove == 1, r.quota)?;
        tracing::info!(client_id = %entry.client_id, quota = ?entry.quota, "quota changed");
        Ok(AlterQuotasResponse { entry })
    }

    /// FlowStatus.
    pub fn status(&self) -> FlowStatusResponse {
        let load = self.load_permille();
        let classes = self
            .shed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .status(load, Instant::now());
        FlowStatusResponse {
            load_permille: load,
            memory_used_bytes: self.memory.used(),
            memory_budget_bytes: self.memory.total(),
            pending_produce_bytes: self.load.pending_bytes(),
            pending_produce_reference_bytes: self.load.pending_reference(),
            produce_latency_ewma_us: self.load.latency_ewma_us(),
            produce_latency_target_us: self.load.latency_target_us(),
            classes: classes
                .iter()
                .enumerate()
                .map(|(i, (share, total))| ClassFlowStatus {
                    class: i as u8,
                    shed_permille: *share,
                    shed_total: *total,
                })
                .collect(),
            clients: self
                .quotas
                .live(STATUS_MAX_CLIENTS)
                .iter()
                .map(|c| ClientFlowStatus {
                    client_id: c.id().to_string(),
                    connections: c.connections(),
                    queued_bytes: c.queued_bytes(),
                    throttled_total: c.throttled_total(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(f: impl FnOnce(&mut Config)) -> Config {
        let mut c = Config::default();
        f(&mut c);
        c.validate().unwrap();
        c
    }

    #[test]
    fn p3_is_shed_under_load_while_p0_always_passes_and_tickets_release_everything() {
        // A 1000-byte pending reference: one queued 1000-byte produce is 100 % load.
        let flow = FlowControl::new(&config(|c| c.flow_load_pending_bytes = 1000));
        let client = flow.quotas().client("t");
        let mut held = flow
            .admit_produce(&client, Class::P3, 1000)
            .expect("idle broker admits");
        held.enqueued();
        assert_eq!(flow.load_permille(), 1000);
        let mut shed = 0;
        for _ in 0..100 {
            assert!(flow.admit_produce(&client, Class::P0, 10).is_ok());
            match flow.admit_produce(&client, Class::P3, 10) {
                Ok(_) => {}
                Err(r) => {
                    assert_eq!(r.code, ErrorCode::Shed);
                    assert!(r.retry_after_ms > 0);
                    shed += 1;
                }
            }
        }
        assert_eq!(shed, 75);
        held.acked();
        drop(held);
        assert_eq!(flow.load.pending_bytes(), 0);
        assert_eq!(flow.memory.used(), 0);
        assert_eq!(client.queued_bytes(), 0);
        let s = flow.status();
        assert_eq!(s.classes[3].shed_total, 75);
        assert_eq!(s.classes[0].shed_total, 0);
    }

    #[test]
    fn memory_budget_throttles() {
        let flow = FlowControl::new(&config(|c| {
            c.flow_memory_bytes = 2 << 20;
            c.shed_enabled = false;
        }));
        let client = flow.quotas().client("");
        let _a = flow.admit_produce(&client, Class::P3, 1 << 20).unwrap();
        // P3 stops at the P0 reserve (the last eighth), P0 does not.
        let r = flow.admit_produce(&client, Class::P3, 1 << 20).unwrap_err();
        assert_eq!(r.code, ErrorCode::Throttled);
        assert!(r.message.contains("memory budget"), "{}", r.message);
        let _b = flow.admit_produce(&client, Class::P0, 1 << 20).unwrap();
        let r = flow.admit_produce(&client, Class::P0, 1).unwrap_err();
        assert_eq!(r.code, ErrorCode::Throttled);
        assert!(r.message.contains("memory budget"), "{}", r.message);
    }

    #[tokio::test]
    async fn fetches_are_delayed_then_throttled() {
        let flow = FlowControl::new(&config(|c| {
            c.quota_default_fetch_bytes_per_s = 10_000;
            c.quota_max_delay_ms = 150;
        }));
        let client = flow.quotas().client("f");
        flow.before_fetch(&client).await.unwrap();
        flow.after_fetch(&client, 11_000);
        // 1000 bytes of debt: a 100 ms delay, under the 150 ms cap.
        let t = Instant::now();
        flow.before_fetch(&client).await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(90));
        flow.after_fetch(&client, 5000);
        let r = flow.before_fetch(&client).await.unwrap_err();
        assert_eq!(r.code, ErrorCode::Throttled);
    }
}

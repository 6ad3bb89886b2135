//! Flow control administration: DescribeQuotas, AlterQuotas and FlowStatus.
//!
//! Quotas are per client id (the `client_id` a client sends in its ApiVersions
//! handshake; clients of one tenant share one). The empty client id names the default
//! quota, which applies to every client without its own entry. In a [`Quota`], 0 in a
//! field means "no limit". FlowStatus reports the broker's load signal, its shedding
//! state per priority class and the clients it is tracking, for `weir status`.

use crate::wire_struct;

wire_struct! {
    /// The limits of one client id. 0 in any field means "no limit".
    pub struct Quota {
        /// Sustained produce rate (bytes of records per second).
        pub produce_bytes_per_s: u64,
        /// Produce bytes a client may send at once above the sustained rate (the token
        /// bucket's size); 0 = one second's worth.
        pub produce_burst_bytes: u64,
        /// Sustained fetch rate (bytes of records served per second).
        pub fetch_bytes_per_s: u64,
        /// Fetch bucket size; 0 = one second's worth.
        pub fetch_burst_bytes: u64,
        /// Open connections that may carry this client id at once.
        pub max_connections: u32,
        /// Bytes of this client's produces accepted but not yet acknowledged.
        pub max_queued_bytes: u64,
    }
}

wire_struct! {
    /// One client id and its quota; an empty `client_id` is the default quota.
    pub struct QuotaEntry {
        pub client_id: String,
        pub quota: Quota,
    }
}

wire_struct! {
    /// Asks for quota entries; an empty list means every entry, default included.
    pub struct DescribeQuotasRequest {
        pub client_ids: Vec<String>,
    }
}

wire_struct! {
    /// The entries asked for that exist, sorted by client id (the default first).
    pub struct DescribeQuotasResponse {
        pub entries: Vec<QuotaEntry>,
    }
}

wire_struct! {
    /// Sets (or, with `remove` = 1, deletes) the quota of one client id, effective for
    /// the next request of every connection of that client. The broker records each
    /// change and applies it again at every later start (PROTOCOL.md, AlterQuotas).
    pub struct AlterQuotasRequest {
        pub client_id: String,
        /// 1 = delete the entry (the client falls back to the default quota); the
        /// default entry cannot be deleted, only set.
        pub remove: u8,
        pub quota: Quota,
    }
}

wire_struct! {
    /// The entry in effect after the change (the default one after a removal).
    pub struct AlterQuotasResponse {
        pub entry: QuotaEntry,
    }
}

wire_struct! {
    /// Asks for the broker's flow-control state.
    pub struct FlowStatusRequest {}
}

wire_struct! {
    /// Shedding state of one priority class.
    pub struct ClassFlowStatus {
        /// 0 = P0 .. 3 = P3.
        pub class: u8,
        /// Share of this class's produces being refused with SHED now, in per mille.
        pub shed_permille: u32,
        /// Produces of this class refused with SHED since the broker started.
        pub shed_total: u64,
    }
}

wire_struct! {
    /// Flow state of one client id with open connections.
    pub struct ClientFlowStatus {
        pub client_id: String,
        pub connections: u32,
        /// Bytes of its produces accepted and not yet acknowledged.
        pub queued_bytes: u64,
        /// Requests refused with THROTTLED (or fetches delayed) since tracking began.
        pub throttled_total: u64,
    }
}

wire_struct! {
    /// The broker's flow-control state; ARCHITECTURE.md defines the load signal.
    pub struct FlowStatusResponse {
        /// Load in per mille: the largest of the three ratios below (1000 = at capacity).
        pub load_permille: u32,
        /// Request bytes held under the broker-wide memory budget.
        pub memory_used_bytes: u64,
        pub memory_budget_bytes: u64,
        /// Produce bytes queued on shard writers and not yet acknowledged.
        pub pending_produce_bytes: u64,
        pub pending_produce_reference_bytes: u64,
        /// Moving average of produce acknowledgement latency, and its target.
        pub produce_latency_ewma_us: u64,
        pub produce_latency_target_us: u64,
        /// P0..P3.
        pub classes: Vec<ClassFlowStatus>,
        /// Client ids with open connections, sorted, at most 1000.
        pub clients: Vec<ClientFlowStatus>,
    }
}

//! LoadHistory: what the broker's load agents measured, per second for the last hour
//! or per minute for the last day, for the node and for each shard, with a forecast of
//! each ingest rate. Operators read it with `weir status`; SDKs read it to route
//! keyless records; the resharding logic reads it to act before a shard saturates.

use crate::wire_struct;

wire_struct! {
    /// Asks for the load history of the node and of one topic's shards (every
    /// topic's when `topic` is empty).
    pub struct LoadHistoryRequest {
        pub topic: String,
        /// 1 (one-second samples, the last hour) or 60 (one-minute buckets, the last
        /// day); anything else is refused with INVALID_REQUEST.
        pub resolution_s: u32,
        /// The newest this many samples per series; 0 = all kept. The broker may send
        /// fewer (at most 65,536 samples in one answer, shared evenly by the series).
        pub max_samples: u32,
    }
}

wire_struct! {
    /// The forecast of an ingest rate `horizon_s` seconds after the newest sample, by
    /// the model that has done best on this series lately, with a 95 % interval.
    pub struct LoadForecast {
        pub horizon_s: u32,
        pub records_in_per_s: u64,
        pub low_per_s: u64,
        pub high_per_s: u64,
        /// `naive`, `ses`, `holt`, `holt_damped`, `holt_winters` or `ar_rls`.
        pub model: String,
    }
}

wire_struct! {
    /// One interval of the node. Rates are per second (means in a minute bucket);
    /// the other fields are the value at the sample (maxima in a minute bucket).
    pub struct NodeLoadSample {
        /// Unix seconds at the start of the interval.
        pub at_s: i64,
        pub records_in_per_s: u64,
        pub bytes_in_per_s: u64,
        pub records_out_per_s: u64,
        pub bytes_out_per_s: u64,
        /// Appends waiting in the writer lanes of all shards, per class P0..P3.
        pub queued: Vec<u32>,
        /// Produce and fetch latency quantiles over the interval, as the upper bound
        /// of the latency bucket that holds them (0 without requests).
        pub produce_latency_us_p50: u64,
        pub produce_latency_us_p99: u64,
        pub fetch_latency_us_p99: u64,
        /// CPU time of the broker process per wall time, per mille of one core.
        pub cpu_permille: u32,
        pub resident_bytes: u64,
        /// Used bytes of the data directory's filesystem.
        pub disk_used_bytes: u64,
    }
}

wire_struct! {
    /// One interval of one shard.
    pub struct ShardLoadSample {
        pub at_s: i64,
        /// Records appended (high-water mark advance) per second.
        pub records_in_per_s: u64,
        pub bytes_in_per_s: u64,
        pub records_out_per_s: u64,
        pub bytes_out_per_s: u64,
        /// Appends waiting in the shard's lanes, per class P0..P3.
        pub queued: Vec<u32>,
        /// Mean time appends written in the interval waited in their lane.
        pub queue_wait_us_mean: u64,
        /// Their 99th percentile, as the upper bound of the latency bucket holding it.
        pub queue_wait_us_p99: u64,
    }
}

wire_struct! {
    /// One shard's samples, oldest first, and its ingest forecast.
    pub struct ShardLoadHistory {
        pub topic: String,
        pub shard: u32,
        pub forecast: LoadForecast,
        pub samples: Vec<ShardLoadSample>,
    }
}

wire_struct! {
    /// One second (or minute bucket) of a service's demand for one message type: the
    /// rate its newest telemetry report gave.
    pub struct DemandSample {
        pub at_s: i64,
        pub records_per_s: u64,
    }
}

wire_struct! {
    /// What services report of one message type on the telemetry topic
    /// (`__weir_telemetry`, PROTOCOL.md "Client telemetry"): the rate they send, its
    /// forecast, and what they say they expect.
    pub struct DemandHistory {
        pub service: String,
        pub message_type: String,
        /// The broker's forecast of `records_per_s`, as for a shard's ingest.
        pub forecast: LoadForecast,
        /// The demand the service said it expects (its newest report), per second.
        pub expected_per_s: u64,
        /// The service's own load in its newest report, per mille.
        pub load_permille: u32,
        /// Unix seconds of the newest report.
        pub reported_at_s: i64,
        pub samples: Vec<DemandSample>,
    }
}

wire_struct! {
    /// The node's samples and the followed shards' (sorted by topic, then shard; at
    /// most 128 shards are followed per node), and with `topic` empty, the demand
    /// services report (sorted by service, then message type).
    pub struct LoadHistoryResponse {
        pub resolution_s: u32,
        pub node_forecast: LoadForecast,
        /// Oldest first.
        pub node: Vec<NodeLoadSample>,
        pub shards: Vec<ShardLoadHistory>,
        pub demands: Vec<DemandHistory>,
    }
}

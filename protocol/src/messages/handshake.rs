//! ApiVersions: the handshake that tells each side which api versions the other speaks.

use crate::wire_struct;

wire_struct! {
    /// Sent first on every connection. The broker answers with what it supports; the
    /// client then uses, for each api, the highest version both sides know.
    pub struct ApiVersionsRequest {
        /// Free-form client name and version, for the broker's logs.
        pub client_software: String,
        /// Who the client is, for quotas: clients sharing an id share its quota (the
        /// empty id gets the default quota).
        pub client_id: String,
    }
}

wire_struct! {
    /// One api the broker speaks and the range of versions it accepts.
    pub struct ApiVersionRange {
        pub api_key: u16,
        pub min_version: u16,
        pub max_version: u16,
    }
}

wire_struct! {
    /// The broker's side of the handshake.
    pub struct ApiVersionsResponse {
        /// The broker's software version, e.g. "weir 0.1.0".
        pub broker_software: String,
        /// Largest frame, length prefix excluded, the broker accepts.
        pub max_frame_bytes: u32,
        /// Every api the broker speaks.
        pub apis: Vec<ApiVersionRange>,
        /// Highest priority number of classes P0, P1 and P2 (three values; P3 takes the
        /// rest). Idempotent producers keep one sequence per (shard, class).
        pub class_bounds: Vec<u8>,
        /// Weighted-fair-queuing weights of P0..P3 (four values).
        pub class_weights: Vec<u32>,
    }
}

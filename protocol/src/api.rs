//! The api table: every request type, its key, its versions, and its response type.
//!
//! One macro invocation below is the single list of apis; the enums [`ApiKey`],
//! [`Request`] and [`ResponseBody`] and their decoders are generated from it, so an api
//! cannot be half-added.

use bytes::{Bytes, BytesMut};

use crate::error::DecodeError;
use crate::messages::*;
use crate::wire::{Reader, Wire};

macro_rules! apis {
    ($( $(#[$doc:meta])* $variant:ident = $key:literal, v $min:literal ..= $max:literal, $req:ident => $resp:ident; )*) => {
        /// Identifies a request type on the wire.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum ApiKey {
            $( $(#[$doc])* $variant = $key, )*
        }

        impl ApiKey {
            /// Every api, in key order.
            pub const ALL: &'static [ApiKey] = &[$(ApiKey::$variant),*];

            /// The api for a wire value.
            pub fn from_u16(v: u16) -> Option<ApiKey> {
                match v { $( $key => Some(ApiKey::$variant), )* _ => None }
            }

            /// Oldest version this build speaks.
            pub fn min_version(self) -> u16 {
                match self { $( ApiKey::$variant => $min, )* }
            }

            /// Newest version this build speaks.
            pub fn max_version(self) -> u16 {
                match self { $( ApiKey::$variant => $max, )* }
            }

            /// The api's name as in PROTOCOL.md.
            pub fn name(self) -> &'static str {
                match self { $( ApiKey::$variant => stringify!($variant), )* }
            }
        }

        /// A decoded request body.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Request {
            $( $variant($req), )*
        }

        impl Request {
            /// Which api this is.
            pub fn api_key(&self) -> ApiKey {
                match self { $( Request::$variant(_) => ApiKey::$variant, )* }
            }

            /// Appends the body's encoding.
            pub fn encode_body(&self, head: &mut BytesMut, tail: &mut Vec<Bytes>) {
                match self { $( Request::$variant(b) => b.encode_split(head, tail), )* }
            }

            fn decode_known(api: ApiKey, r: &mut Reader) -> Result<Self, DecodeError> {
                Ok(match api { $( ApiKey::$variant => Request::$variant(<$req>::decode(r)?), )* })
            }
        }

        $( impl From<$req> for Request { fn from(b: $req) -> Self { Request::$variant(b) } } )*

        /// A decoded successful response body.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum ResponseBody {
            $( $variant($resp), )*
        }

        impl ResponseBody {
            /// Which api this answers.
            pub fn api_key(&self) -> ApiKey {
                match self { $( ResponseBody::$variant(_) => ApiKey::$variant, )* }
            }

            /// Appends the body's encoding.
            pub fn encode_body(&self, head: &mut BytesMut, tail: &mut Vec<Bytes>) {
                match self { $( ResponseBody::$variant(b) => b.encode_split(head, tail), )* }
            }

            fn decode_known(api: ApiKey, r: &mut Reader) -> Result<Self, DecodeError> {
                Ok(match api { $( ApiKey::$variant => ResponseBody::$variant(<$resp>::decode(r)?), )* })
            }
        }

        $( impl From<$resp> for ResponseBody { fn from(b: $resp) -> Self { ResponseBody::$variant(b) } } )*
    };
}

apis! {
    /// Handshake: which versions each side speaks.
    ApiVersions = 0, v 0..=0, ApiVersionsRequest => ApiVersionsResponse;
    /// Create a topic.
    CreateTopic = 1, v 0..=0, CreateTopicRequest => CreateTopicResponse;
    /// Delete a topic.
    DeleteTopic = 2, v 0..=0, DeleteTopicRequest => DeleteTopicResponse;
    /// Topics, their settings and shard bounds.
    Metadata = 3, v 0..=0, MetadataRequest => MetadataResponse;
    /// Append record batches to a shard.
    Produce = 4, v 0..=0, ProduceRequest => ProduceResponse;
    /// Read record batches from a shard.
    Fetch = 5, v 0..=0, FetchRequest => FetchResponse;
    /// Find an offset by timestamp.
    ListOffsets = 6, v 0..=0, ListOffsetsRequest => ListOffsetsResponse;
    /// Get or bump an idempotent producer id.
    InitProducerId = 7, v 0..=0, InitProducerIdRequest => InitProducerIdResponse;
    /// Join a consumer group.
    JoinGroup = 8, v 0..=0, JoinGroupRequest => JoinGroupResponse;
    /// Keep a group membership alive.
    Heartbeat = 9, v 0..=0, HeartbeatRequest => HeartbeatResponse;
    /// Leave a consumer group.
    LeaveGroup = 10, v 0..=0, LeaveGroupRequest => LeaveGroupResponse;
    /// Store committed offsets.
    CommitOffsets = 11, v 0..=0, CommitOffsetsRequest => CommitOffsetsResponse;
    /// Read committed offsets.
    FetchOffsets = 12, v 0..=0, FetchOffsetsRequest => FetchOffsetsResponse;
    /// Lease records of a topic to a queue-mode consumer.
    QueueFetch = 13, v 0..=0, QueueFetchRequest => QueueFetchResponse;
    /// Mark leased records done.
    Ack = 14, v 0..=0, AckRequest => AckResponse;
    /// Report a leased record failed (retry later or dead-letter).
    Nack = 15, v 0..=0, NackRequest => NackResponse;
    /// Extend a lease.
    ExtendLease = 16, v 0..=0, ExtendLeaseRequest => ExtendLeaseResponse;
    /// Queue state: floors, leases, retries, circuit breaker.
    QueueStatus = 17, v 0..=0, QueueStatusRequest => QueueStatusResponse;
    /// Read per-client quotas.
    DescribeQuotas = 20, v 0..=0, DescribeQuotasRequest => DescribeQuotasResponse;
    /// Set or remove one client's quota at runtime.
    AlterQuotas = 21, v 0..=0, AlterQuotasRequest => AlterQuotasResponse;
    /// The broker's load, shedding and per-client flow state.
    FlowStatus = 22, v 0..=0, FlowStatusRequest => FlowStatusResponse;
    /// Read a shard in priority order (per-class lanes, WFQ with aging).
    PriorityFetch = 25, v 0..=0, PriorityFetchRequest => PriorityFetchResponse;
    /// Delete every record with a key from a topic (tombstone, then compaction).
    DeleteKey = 26, v 0..=0, DeleteKeyRequest => DeleteKeyResponse;
    /// The cluster's nodes and where each shard's copies are.
    DescribeCluster = 40, v 0..=0, DescribeClusterRequest => DescribeClusterResponse;
    /// A mirror reads its primary's log (inter-node).
    MirrorFetch = 41, v 0..=0, MirrorFetchRequest => MirrorFetchResponse;
    /// One consensus-engine message between nodes (inter-node).
    ConsensusRpc = 42, v 0..=0, ConsensusRpcRequest => ConsensusRpcResponse;
    /// A metadata change forwarded to the controller (inter-node).
    ClusterWrite = 43, v 0..=0, ClusterWriteRequest => ClusterWriteResponse;
    /// One shard's replication record: copies and the history of their changes.
    DescribeShardHistory = 44, v 0..=0, DescribeShardHistoryRequest => DescribeShardHistoryResponse;
    /// Move one copy of a shard to another node.
    ShardMove = 45, v 0..=0, ShardMoveRequest => ShardMoveResponse;
    /// Add a node (started with --join) to a running cluster.
    AddNode = 46, v 0..=0, AddNodeRequest => AddNodeResponse;
    /// Drain a node of its copies and take it out of the cluster.
    RemoveNode = 47, v 0..=0, RemoveNodeRequest => RemoveNodeResponse;
    /// The load agents' history of the node and its shards, with ingest forecasts.
    LoadHistory = 48, v 0..=0, LoadHistoryRequest => LoadHistoryResponse;
    /// Change a topic's shard count while it is in use.
    ReshardTopic = 49, v 0..=0, ReshardTopicRequest => ReshardTopicResponse;
    /// One step of authentication (SCRAM-SHA-256 or an API key).
    Authenticate = 50, v 0..=0, AuthenticateRequest => AuthenticateResponse;
    /// Create a user or change its password (its SCRAM credential).
    UpsertUser = 51, v 0..=0, UpsertUserRequest => UpsertUserResponse;
    /// Delete a user.
    DeleteUser = 52, v 0..=0, DeleteUserRequest => DeleteUserResponse;
    /// List user names.
    ListUsers = 53, v 0..=0, ListUsersRequest => ListUsersResponse;
    /// Issue an API key.
    CreateApiKey = 54, v 0..=0, CreateApiKeyRequest => CreateApiKeyResponse;
    /// Revoke an API key.
    RevokeApiKey = 55, v 0..=0, RevokeApiKeyRequest => RevokeApiKeyResponse;
    /// List API keys (without secrets).
    ListApiKeys = 56, v 0..=0, ListApiKeysRequest => ListApiKeysResponse;
    /// Add or remove an ACL entry (a grant, or a role membership).
    AlterAcls = 57, v 0..=0, AlterAclsRequest => AlterAclsResponse;
    /// List ACL entries.
    DescribeAcls = 58, v 0..=0, DescribeAclsRequest => DescribeAclsResponse;
}

/// Checks the api key and version, giving the named error for each failure.
pub fn check_api(api_key: u16, version: u16) -> Result<ApiKey, DecodeError> {
    let api = ApiKey::from_u16(api_key).ok_or(DecodeError::UnknownApi(api_key))?;
    if version < api.min_version() || version > api.max_version() {
        return Err(DecodeError::UnsupportedVersion {
            api: api_key,
            version,
        });
    }
    Ok(api)
}

impl Request {
    /// Decodes a request body of the given api and version; the body must be consumed
    /// exactly.
    pub fn decode(api_key: u16, version: u16, body: Bytes) -> Result<Self, DecodeError> {
        let api = check_api(api_key, version)?;
        let mut r = Reader::new(body);
        let req = Self::decode_known(api, &mut r)?;
        r.finish()?;
        Ok(req)
    }
}

impl ResponseBody {
    /// Decodes a success response body of the given api and version.
    pub fn decode(api_key: u16, version: u16, body: Bytes) -> Result<Self, DecodeError> {
        let api = check_api(api_key, version)?;
        let mut r = Reader::new(body);
        let resp = Self::decode_known(api, &mut r)?;
        r.finish()?;
        Ok(resp)
    }
}

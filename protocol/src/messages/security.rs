//! Security apis: authentication (Authenticate), users and API keys, and access
//! control lists.
//!
//! Authenticate runs right after ApiVersions on a broker with `auth = "required"`;
//! until it succeeds only ApiVersions and Authenticate are answered (every other api
//! gets AUTHENTICATION_REQUIRED). The administration apis need the `admin`
//! operation on the cluster. PROTOCOL.md §Authentication and §Authorization give the
//! exchanges and the rules.

use bytes::Bytes;

use crate::{wire_enum, wire_struct};

wire_struct! {
    /// One step of an authentication exchange. `mechanism` is `SCRAM-SHA-256` (two
    /// steps: client-first, then client-final) or `API-KEY` (one step: the key).
    pub struct AuthenticateRequest {
        pub mechanism: String,
        /// The mechanism's message (SCRAM text, or the API key), as bytes.
        pub payload: Bytes,
    }
}

wire_struct! {
    /// The broker's step. `done` = 1 when the connection is authenticated (then
    /// `principal` names who it is); SCRAM's first step answers `done` = 0 with the
    /// server-first message.
    pub struct AuthenticateResponse {
        pub payload: Bytes,
        pub done: u8,
        pub principal: String,
    }
}

wire_struct! {
    /// A SCRAM-SHA-256 credential, computed by the client from the password so the
    /// broker never sees the password (`weir_protocol::scram::credential`).
    pub struct ScramCredential {
        pub salt: Bytes,
        pub iterations: u32,
        pub stored_key: Bytes,
        pub server_key: Bytes,
    }
}

wire_struct! {
    /// Creates a user or replaces its credential (a password change).
    pub struct UpsertUserRequest {
        pub name: String,
        pub credential: ScramCredential,
    }
}

wire_struct! {
    /// `created` = 1 for a new user, 0 for a changed password.
    pub struct UpsertUserResponse {
        pub created: u8,
    }
}

wire_struct! {
    /// Deletes a user; its connections already open stay authenticated until they close.
    pub struct DeleteUserRequest {
        pub name: String,
    }
}

wire_struct! {
    pub struct DeleteUserResponse {}
}

wire_struct! {
    pub struct ListUsersRequest {}
}

wire_struct! {
    /// User names, sorted.
    pub struct ListUsersResponse {
        pub users: Vec<String>,
    }
}

wire_struct! {
    /// Issues an API key whose connections act as `principal`.
    pub struct CreateApiKeyRequest {
        pub principal: String,
        pub description: String,
    }
}

wire_struct! {
    /// The key, shown this once: the broker keeps only a salted hash of its secret.
    pub struct CreateApiKeyResponse {
        pub key_id: String,
        /// What a client presents: `wk_<key_id>_<secret>`.
        pub key: String,
    }
}

wire_struct! {
    pub struct RevokeApiKeyRequest {
        pub key_id: String,
    }
}

wire_struct! {
    pub struct RevokeApiKeyResponse {}
}

wire_struct! {
    pub struct ListApiKeysRequest {}
}

wire_struct! {
    /// One API key, without its secret.
    pub struct ApiKeyEntry {
        pub key_id: String,
        pub principal: String,
        pub description: String,
        pub created_ms: u64,
    }
}

wire_struct! {
    pub struct ListApiKeysResponse {
        pub keys: Vec<ApiKeyEntry>,
    }
}

wire_enum! {
    /// What an ACL entry is about.
    #[derive(Default)]
    pub enum ResourceType: "resource_type" {
        #[default]
        Topic = 1,
        Group = 2,
        /// The broker itself: quotas, flow state, users, keys, ACLs.
        Cluster = 3,
        /// A role: the entry makes `principal` a member of the role named by `pattern`.
        Role = 4,
    }
}

wire_enum! {
    /// What an ACL entry allows.
    #[derive(Default)]
    pub enum Operation: "operation" {
        Produce = 1,
        Consume = 2,
        Create = 3,
        Delete = 4,
        Alter = 5,
        #[default]
        Describe = 6,
        /// Every operation on the matching resources.
        Admin = 7,
        /// Membership of a role (resource type Role only).
        Member = 8,
    }
}

impl ResourceType {
    /// Every resource type.
    pub const ALL: [ResourceType; 4] = [
        ResourceType::Topic,
        ResourceType::Group,
        ResourceType::Cluster,
        ResourceType::Role,
    ];

    /// The lower-case name the CLI and the broker's files use.
    pub fn name(self) -> &'static str {
        match self {
            ResourceType::Topic => "topic",
            ResourceType::Group => "group",
            ResourceType::Cluster => "cluster",
            ResourceType::Role => "role",
        }
    }

    /// The type of a [`ResourceType::name`].
    pub fn from_name(name: &str) -> Option<ResourceType> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 8] = [
        Operation::Produce,
        Operation::Consume,
        Operation::Create,
        Operation::Delete,
        Operation::Alter,
        Operation::Describe,
        Operation::Admin,
        Operation::Member,
    ];

    /// The lower-case name the CLI and the broker's files use.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Produce => "produce",
            Operation::Consume => "consume",
            Operation::Create => "create",
            Operation::Delete => "delete",
            Operation::Alter => "alter",
            Operation::Describe => "describe",
            Operation::Admin => "admin",
            Operation::Member => "member",
        }
    }

    /// The operation of an [`Operation::name`].
    pub fn from_name(name: &str) -> Option<Operation> {
        Self::ALL.into_iter().find(|o| o.name() == name)
    }
}

wire_struct! {
    /// One grant: `principal` (a user, a key's principal, a certificate's common
    /// name, or `role:<name>`) may do `operation` on resources of `resource_type`
    /// whose name matches `pattern` (exact, or a prefix when it ends in `*`; `*`
    /// alone matches every name; the cluster's pattern is `*`).
    pub struct AclEntry {
        pub principal: String,
        pub resource_type: ResourceType,
        pub pattern: String,
        pub operation: Operation,
    }
}

wire_struct! {
    /// Adds (`remove` = 0) or removes (`remove` = 1) one entry.
    pub struct AlterAclsRequest {
        pub remove: u8,
        pub entry: AclEntry,
    }
}

wire_struct! {
    /// `changed` = 0 when the entry was already there (add) or absent (remove).
    pub struct AlterAclsResponse {
        pub changed: u8,
    }
}

wire_struct! {
    /// Entries of `principal`, or every entry when it is empty.
    pub struct DescribeAclsRequest {
        pub principal: String,
    }
}

wire_struct! {
    pub struct DescribeAclsResponse {
        pub entries: Vec<AclEntry>,
    }
}

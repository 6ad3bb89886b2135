//! The type configuration that plugs Weir's metadata into openraft: node ids are the
//! `--node-id` numbers, the replicated commands are [`Command`]s, their results
//! [`CommandResult`]s, and snapshots travel as bytes in memory (the metadata is small).

use std::io::Cursor;

use super::super::meta::{Command, CommandResult};

openraft::declare_raft_types!(
    /// Weir's openraft types.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type Vote = openraft::Vote<u64>;
pub type StorageError = openraft::StorageError<u64>;
pub type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;
pub type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;

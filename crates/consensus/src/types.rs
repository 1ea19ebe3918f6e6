//! The openraft type configuration of berth: what a log entry carries (opaque command bytes),
//! what applying one returns, and what a member is (name and URLs).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A member of the cluster as the membership config records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Human-readable name (etcd's `--name`).
    pub name: String,
    /// Peer URLs (replication traffic).
    pub peer_urls: Vec<String>,
    /// Client URLs (where the member serves its client APIs).
    pub client_urls: Vec<String>,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name, self.peer_urls.join(","))
    }
}

/// A log entry's payload: one command of the group's state machine, as opaque bytes (the meta
/// group's are `berth.store.Request`s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftRequest(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl fmt::Display for RaftRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request({} bytes)", self.0.len())
    }
}

/// The result of applying an entry, as opaque bytes from the group's state machine (empty for
/// entries that carry no command).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftResponse(#[serde(with = "serde_bytes")] pub Vec<u8>);

openraft::declare_raft_types!(
    /// berth's Raft types.
    pub TypeConfig:
        D = RaftRequest,
        R = RaftResponse,
        NodeId = u64,
        Node = Member,
        AsyncRuntime = crate::runtime::BerthRuntime,
);

/// A log id of this configuration.
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
/// A vote of this configuration.
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
/// A log entry of this configuration.
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
/// Membership as stored with the state.
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
/// A membership change of this configuration.
pub type Change = openraft::ChangeMembers<u64, Member>;

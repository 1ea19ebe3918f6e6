//! berth's replication: every write goes through an openraft log before the group's state
//! applies it, on every member, in the same order. A single node is a cluster of one.
//!
//! Consensus knows nothing of what it replicates: commands and results are opaque bytes, and
//! the state behind them is a [`GroupState`] (the server wraps the MVCC store as the `meta`
//! group's). Every peer message names its group, and one [`PeerRouter`] serves every group of
//! a member, so other groups can run beside `meta` on the same ports.
//!
//! # Layout
//! - [`env`]: how peers are dialed and where storage work runs (real or simulated).
//! - [`runtime`]: tokio for openraft, with random draws a simulation can seed.
//! - [`types`]: the openraft type configuration (entries carry opaque command bytes).
//! - [`group`]: a group's name and the byte-level operations its state offers.
//! - [`wal`]: the Raft log's segment files and state file.
//! - [`log_store`]: openraft's log storage over [`wal`], with group-committed fsyncs.
//! - [`state_machine`]: applies entries to the group's state; snapshots are views of it.
//! - [`identity`]: every peer message names its cluster, target member and group; others are
//!   refused.
//! - [`network`]: how members reach each other (gRPC client side).
//! - [`peer`]: the peer gRPC service (server side), routing to each group's replica.
//! - [`wire`]: openraft messages as blobs, and the typed not-the-leader refusal.
//! - `forwarder`: a follower's writes to the leader over one long-lived stream.
//! - `batch_counts`: how many requests share one round, for `/metrics`.
//! - `read_batch`: a follower's concurrent read-index requests share one round to the leader.
//! - `write_batch`: concurrent writes share one Raft call (and one log append).
//! - [`replica`]: a running member: bootstrap, propose, read-index, status.

mod batch_counts;
pub mod env;
mod forwarder;
#[cfg(test)]
mod fuzz_corpus;
pub mod group;
pub mod identity;
pub mod log_store;
pub mod network;
pub mod peer;
mod read_batch;
pub mod replica;
pub mod runtime;
pub mod state_machine;
mod sync;
pub mod types;
pub mod wal;
pub mod wire;
mod write_batch;

pub use batch_counts::BatchCounts;
pub use env::{Dialer, Environment, StorageIo, TcpDialer, TlsDialer, Transport};
pub use group::{ApplyError, GroupId, GroupState, GroupView};
pub use network::PeerChannel;
pub use peer::PeerRouter;
pub use replica::{
    fetch_cluster_id, MemberEntry, ProposeError, RaftStatus, Replica, ReplicaConfig, Role, Sharing,
    StartError,
};
pub use runtime::seed_thread_rng;
pub use types::{Change, Member};

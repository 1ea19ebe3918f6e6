//! berth's replication: every write goes through an openraft log before the MVCC store
//! applies it, on every member, in the same order. A single node is a cluster of one.
//!
//! # Layout
//! - [`env`]: how peers are dialed and where storage work runs (real or simulated).
//! - [`runtime`]: tokio for openraft, with random draws a simulation can seed.
//! - [`types`]: the openraft type configuration (entries carry encoded commands).
//! - [`codec`]: commands and results ↔ their protobuf form in the log.
//! - [`wal`]: the Raft log's segment files and state file.
//! - [`log_store`]: openraft's log storage over [`wal`], with group-committed fsyncs.
//! - [`state_machine`]: applies entries to the store; snapshots as store snapshot files.
//! - [`identity`]: every peer message names its cluster and target member; others are refused.
//! - [`network`]: how members reach each other (gRPC client side).
//! - [`peer`]: the peer gRPC service (server side).
//! - `forwarder`: a follower's writes to the leader over one long-lived stream.
//! - `batch_counts`: how many requests share one round, for `/metrics`.
//! - `read_batch`: a follower's concurrent read-index requests share one round to the leader.
//! - `write_batch`: concurrent writes share one Raft call (and one log append).
//! - [`replica`]: a running member: bootstrap, propose, read-index, status.

mod batch_counts;
pub mod codec;
pub mod env;
mod forwarder;
#[cfg(test)]
mod fuzz_corpus;
pub mod identity;
pub mod log_store;
pub mod network;
pub mod peer;
mod read_batch;
pub mod replica;
pub mod runtime;
pub mod state_machine;
pub mod types;
pub mod wal;
mod write_batch;

pub use batch_counts::BatchCounts;
pub use env::{Dialer, Environment, StorageIo, TcpDialer, Transport};
pub use replica::{
    fetch_cluster_id, MemberEntry, ProposeError, RaftStatus, Replica, ReplicaConfig, Sharing,
    StartError,
};
pub use runtime::seed_thread_rng;
pub use types::Member;

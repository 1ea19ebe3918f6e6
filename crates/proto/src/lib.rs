//! etcd v3 wire-compatible protobuf messages and gRPC service stubs.
//!
//! # Layout
//! - [`mvccpb`]: key-value and event messages shared by KV and Watch.
//! - [`authpb`]: users, roles and permissions.
//! - [`etcdserverpb`]: the KV, Watch, Lease, Cluster, Maintenance and Auth services.
//! - [`berth::raft`]: berth's replication messages and peer service.
//!
//! The `.proto` files under `proto/etcd` are written by us from etcd's documented wire format;
//! names and field numbers match etcd exactly so every etcd client works unchanged.

#![allow(missing_docs, clippy::all)]

/// Key-value and event messages (`mvccpb`).
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// Users, roles and permissions (`authpb`).
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// etcd v3 services and their request/response messages (`etcdserverpb`).
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// berth's own protocols.
pub mod berth {
    /// Replication: log commands, their results, and the peer service (`berth.raft`).
    pub mod raft {
        tonic::include_proto!("berth.raft");
    }
}

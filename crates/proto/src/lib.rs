//! etcd v3 wire-compatible protobuf messages and gRPC service stubs.
//!
//! # Layout
//! - [`mvccpb`]: key-value and event messages shared by KV and Watch.
//! - [`authpb`]: users, roles and permissions.
//! - [`etcdserverpb`]: the KV, Watch, Lease, Cluster, Maintenance and Auth services.
//! - [`berth::raft`]: berth's peer service (consensus over opaque entries).
//! - [`berth::store`]: the store's log commands and results; [`berth::lease`]: the leader's
//!   lease service; [`berth::nats`]: core NATS between members.
//! - [`watch_frame`] and [`etcd_watch`]: the Watch service with pre-encoded responses.
//! - [`keys`]: etcd's prefix → range_end convention, shared by the CLI and the bench.
//! - [`nacos`]: Nacos 2.x's gRPC client protocol.
//!
//! The `.proto` files under `proto/etcd` are written by us from etcd's documented wire format;
//! names and field numbers match etcd exactly so every etcd client works unchanged.

#![allow(missing_docs, clippy::all)]

/// etcd's key-range conventions.
pub mod keys {
    /// The `range_end` that covers every key starting with `prefix` (etcd's `--prefix`): the
    /// prefix with its last byte below 0xff incremented; `\0` ("no upper bound") when the prefix
    /// is empty or all 0xff.
    pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
        let mut end = prefix.to_vec();
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                return end;
            }
        }
        vec![0]
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn prefix_end_follows_etcd() {
            use super::prefix_end;
            assert_eq!(prefix_end(b"foo"), b"fop".to_vec());
            assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
            assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
            assert_eq!(prefix_end(b""), vec![0]);
        }
    }
}

/// Nacos 2.x's client protocol: `Payload`s carrying JSON, the unary `Request` service and
/// the `BiRequestStream` service (the proto has no package).
#[allow(non_camel_case_types)]
pub mod nacos {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

/// Key-value and event messages (`mvccpb`).
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// Users, roles and permissions (`authpb`).
pub mod authpb {
    tonic::include_proto!("authpb");
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// etcd v3 services and their request/response messages (`etcdserverpb`).
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// The Watch service with [`watch_frame::WatchFrame`] responses (server side only).
pub mod etcd_watch {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.Watch.rs"));
}

pub mod watch_frame;

/// The client side of etcd's auth: every request carries the `token` metadata that an
/// `Authenticate` call returned (what etcdctl's `--user` does).
pub mod client {
    use tonic::metadata::{errors::InvalidMetadataValue, Ascii, MetadataValue};

    /// Adds a token to every request it sees (none: requests go as they are).
    #[derive(Debug, Clone, Default)]
    pub struct Token(Option<MetadataValue<Ascii>>);

    impl Token {
        /// A token as `Authenticate` returned it.
        pub fn new(token: &str) -> Result<Token, InvalidMetadataValue> {
            Ok(Token(Some(token.parse()?)))
        }
    }

    impl tonic::service::Interceptor for Token {
        fn call(
            &mut self,
            mut req: tonic::Request<()>,
        ) -> Result<tonic::Request<()>, tonic::Status> {
            if let Some(t) = &self.0 {
                req.metadata_mut().insert("token", t.clone());
            }
            Ok(req)
        }
    }

    /// A channel whose requests carry a [`Token`].
    pub type Transport =
        tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Token>;
}

/// gRPC's standard health checking protocol (`grpc.health.v1`).
pub mod grpc_health {
    #![allow(missing_docs)]
    tonic::include_proto!("grpc.health.v1");
}

/// berth's own protocols.
pub mod berth {
    /// Replication: the peer service, over opaque entries (`berth.raft`).
    pub mod raft {
        tonic::include_proto!("berth.raft");
    }
    /// The meta group's log commands and their results (`berth.store`).
    pub mod store {
        tonic::include_proto!("berth.store");
    }
    /// Lease renewals and TTL queries sent to the leader (`berth.lease`).
    pub mod lease {
        tonic::include_proto!("berth.lease");
    }
    /// Core NATS interest and messages between members (`berth.nats`).
    pub mod nats {
        tonic::include_proto!("berth.nats");
    }
    /// The gateway's cluster-wide rate-limit shares, taken from the leader (`berth.gateway`).
    pub mod gateway {
        tonic::include_proto!("berth.gateway");
    }
}

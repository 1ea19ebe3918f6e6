//! The workloads, one file per family; each turns a [`Config`](crate::Config) and the dialed
//! connections into a [`Report`](crate::Report).
//!
//! # Layout
//! - [`kv`]: `put`, `range`, `txn` (compare-and-swap) and `mixed`, with the keyspace prefill.
//! - [`watch`]: watchers spread over streams and one timestamping writer.
//! - [`lease`]: a keep-alive storm over granted leases.
//! - [`consul`]: the registry family over Consul's HTTP API (register, heartbeat, discover,
//!   blocking watchers).
//! - [`nacos`]: the configuration and naming family over Nacos's APIs.
//! - [`nats`]: core NATS publish/subscribe over the raw protocol.
//! - [`jetstream`]: JetStream publishes with acknowledgements, over the same protocol.

pub mod consul;
pub mod jetstream;
pub mod kv;
pub mod lease;
pub mod nacos;
pub mod nats;
pub mod watch;

use berth_proto::client::Transport;

/// The connection client `i` uses: connections are shared round-robin.
pub(crate) fn conn_for(channels: &[Transport], i: usize) -> Transport {
    // `run` rejects an empty list, so the index is always in range.
    channels[i % channels.len()].clone()
}

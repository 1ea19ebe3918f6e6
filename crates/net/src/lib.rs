//! berth's connection plumbing, shared by the client and peer servers, the peer network and the
//! CLI: how listeners accept, sockets that coalesce their writes, and a TCP connector for tonic
//! channels using them.
//!
//! - [`listen`]: binds listeners (backlog 4096) and accepts from them without spinning on
//!   errors, bounding how long a new connection may stay silent.
//! - [`coalesce`]: buffers a connection's writes and flushes them after one yield.
//! - [`connect`]: dials TCP for tonic channels (no Nagle delay, writes coalesced).
//! - [`tls`]: TLS (rustls, ring) for listeners and connectors: certificates from files,
//!   re-read on change, client certificate checks, etcd's cipher suite and version flags.

pub mod coalesce;
pub mod connect;
pub mod listen;
pub mod tls;

pub use coalesce::CoalescedWrites;
pub use connect::TcpConnector;
pub use listen::{FirstBytes, Incoming};

//! berth's connection plumbing, shared by the client and peer servers, the peer network and the
//! CLI: sockets that coalesce their writes, and a TCP connector for tonic channels using them.
//!
//! - [`coalesce`]: buffers a connection's writes and flushes them after one yield.
//! - [`connect`]: dials TCP for tonic channels (no Nagle delay, writes coalesced).

pub mod coalesce;
pub mod connect;

pub use coalesce::CoalescedWrites;
pub use connect::TcpConnector;

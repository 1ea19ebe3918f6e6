//! berth's MVCC key-value state machine: revisions, the key index, leases, the watch hub,
//! snapshots and the embedded storage engine (redb). No networking lives here.
//!
//! # Layout
//! - [`revision`]: the (main, sub) revision pair and its storage encoding.
//! - [`index`]: in-memory key → revision history, and etcd's key-span convention.
//! - [`lease`]: lease TTLs, attached keys and expiry order.
//! - `backend`: redb tables and value encoding.
//! - `read`: Range over any revision.
//! - [`apply`]: the write path (Put, DeleteRange, Txn, Compact, lease grant/revoke).
//! - [`codec`]: commands and results ↔ their bytes in the Raft log.
//! - [`watch`]: the watch hub fan-out.
//! - [`store`]: the [`Store`] tying it together, with group-committed batches.
//! - [`snapshot`]: consistent dumps and restore.
//!
//! Writes arrive as [`Command`]s, encoded by [`codec`], so that the consensus layer carries
//! them in its log as opaque bytes and every member applies them in the same order (a single
//! node is a cluster of one on the same path).

pub mod apply;
mod backend;
pub mod codec;
pub mod error;
mod file;
pub mod index;
pub mod lease;
mod read;
pub mod revision;
pub mod snapshot;
pub mod store;
pub mod watch;

pub use apply::{check_txn_duplicates, Applied, Command};
pub use error::{Result, StoreError};
pub use index::KeySpan;
pub use lease::{LeaseInfo, LeaseLimits};
pub use store::{Store, StoreOptions, StoreStats, StoreView};
pub use watch::{Delivery, DeliveryItem, WatchHandle, WatchSink, WatchSpec};

#[cfg(test)]
mod tests;

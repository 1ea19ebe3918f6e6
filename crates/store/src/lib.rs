//! berth's MVCC key-value state machine: revisions, the key index, leases, the watch hub,
//! snapshots and the embedded storage engine (redb). No networking lives here.
//!
//! # Layout
//! - [`revision`]: the (main, sub) revision pair and its storage encoding.
//! - [`keyspace`]: the [`Keyspace`]s (user, auth, registry, …) that partition the keys while
//!   sharing one revision counter; every read, write and watch names one.
//! - [`index`]: in-memory key → revision history, one map per keyspace, and etcd's key-span
//!   convention (a span is always relative to one keyspace).
//! - [`lease`]: lease TTLs, attached keys and expiry order.
//! - `backend`: redb tables and value encoding (the keyspace rides in a change's flag byte).
//! - `layout`: the file's layout version, upgraded and stamped once when a file is opened.
//! - `read`: Range over any revision.
//! - [`apply`]: the write path (Put, DeleteRange, Txn, Compact, lease grant/revoke).
//! - [`codec`]: commands and results ↔ their bytes in the Raft log.
//! - [`watch`]: the watch hub fan-out.
//! - [`store`]: the [`Store`] tying it together: opening, reads and batched writes in
//!   `store.rs`; watch registration and replay, lease pass-throughs, and maintenance (flush,
//!   snapshots, hashes, defragmentation) in `store/{watch,lease,maintenance}.rs`.
//! - [`snapshot`]: consistent dumps and restore (berth's record stream, `BERTHSNAP2`, between
//!   members; either format for `snapshot restore`).
//! - `etcd_snapshot`: snapshots in etcd's layout (a bbolt file, plus a `berth` bucket) for
//!   clients: what the Maintenance Snapshot stream sends, and restores from etcd.
//! - [`etcd_auth`]: etcd's auth buckets ↔ the `Auth` keyspace's records, for those snapshots.
//! - `file`: the database file as redb's backend, with the crash-simulation switch.
//! - `sync`: the crate's poison-tolerant lock helper.
//!
//! Writes arrive as [`Command`]s, encoded by [`codec`]: the consensus layer carries them in
//! its Raft log as opaque bytes and every member applies them in log order through
//! [`Store::apply_batch_with`] (a single node is a cluster of one on the same path).

pub mod apply;
mod backend;
pub mod codec;
pub mod error;
pub mod etcd_auth;
mod etcd_snapshot;
mod file;
pub mod index;
pub mod keyspace;
mod layout;
pub mod lease;
mod read;
pub mod revision;
pub mod snapshot;
pub mod store;
mod sync;
pub mod watch;

pub use apply::{check_txn_duplicates, Applied, Command, Entry, Guard};
pub use error::{Result, StoreError};
pub use index::KeySpan;
pub use keyspace::Keyspace;
pub use lease::{LeaseInfo, LeaseLimits};
pub use store::{Store, StoreOptions, StoreStats, StoreView};
pub use watch::{Delivery, DeliveryItem, WatchHandle, WatchSink, WatchSpec};

#[cfg(test)]
mod keyspace_tests;
#[cfg(test)]
mod tests;

//! berth's registry domain: nodes, service instances, health checks and Consul KV metadata,
//! kept as records in the store's `Registry` keyspace, and the catalog view every member
//! builds from them. No wire types: the Consul face (and the Nacos face later) translate.
//!
//! - [`model`]: the records (a node, a service instance, a check and its definition, the
//!   metadata Consul keeps beside a KV key);
//! - [`layout`]: where each record lives in the `Registry` keyspace;
//! - [`catalog`]: the in-memory view built from the records, with the index (a store
//!   revision) of every result a blocking query can wait on;
//! - [`register`]: validation of a registration, and the records it writes;
//! - [`naming`]: Nacos instances on this model (names, IDs, metadata, liveness);
//! - [`error`]: what the domain refuses.
//!
//! The server runs the view and proposes writes (`crates/server/src/registry.rs`).

pub mod catalog;
pub mod error;
pub mod layout;
pub mod model;
pub mod naming;
pub mod register;

pub use catalog::{Catalog, Topic};
pub use error::RegistryError;
pub use model::{Behavior, Check, CheckKind, CheckStatus, KvMeta, Node, Service, Session};

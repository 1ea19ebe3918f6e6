//! berth's configuration center domain: configuration items addressed by namespace, group
//! and data ID, their versions (every publish is one), gray (beta) releases and namespaces,
//! kept as records in the store's `Config` keyspace. No wire types: the Nacos face and
//! berth's own API translate.
//!
//! - [`archive`]: a namespace as a .tar.gz;
//! - [`diff`]: the difference between two versions;
//! - [`model`]: the records (an item, a kept version, a beta, a namespace) and MD5;
//! - [`layout`]: where each record lives in the `Config` keyspace;
//! - [`rules`]: what a valid name, type and content are;
//! - [`error`]: what the domain refuses.
//!
//! The server keeps a view of the items and proposes writes (`crates/server/src/config_center`).

pub mod archive;
pub mod diff;
pub mod error;
pub mod layout;
pub mod model;
pub mod rules;

pub use error::ConfigError;
pub use model::{
    md5_hex, Author, Beta, ContentType, Item, ItemKey, Namespace, Op, Reader, Version,
};

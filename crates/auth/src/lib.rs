//! berth's security domain: one model of users, roles and permissions that every face maps
//! its credentials onto (an etcd token or client-certificate CN today; a Consul ACL token, a
//! Nacos login, a NATS CONNECT user or a gateway consumer later), with no wire types.
//!
//! - [`model`]: users, roles, permissions (etcd's model; a permission names a keyspace);
//! - [`perms`]: a user's grants merged into intervals for one-search checks;
//! - [`view`]: the whole auth state at one auth revision, immutable;
//! - [`change`]: every change as a pure function of a view (etcd's rules and errors);
//! - [`layout`]: how the state is kept in the store's `Auth` keyspace;
//! - [`password`]: bcrypt; [`token`]: simple and JWT tokens.
//!
//! The server holds the live view, proposes changes through consensus, and enforces checks
//! (`crates/server/src/auth.rs`); faces only translate.

pub mod change;
pub mod error;
pub mod layout;
pub mod model;
pub mod password;
pub mod perms;
pub mod token;
pub mod view;

pub use error::AuthError;
pub use model::{Access, Permission, Role, User, ROOT};
pub use token::{Identity, Tokens};
pub use view::AuthView;

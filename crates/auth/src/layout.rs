//! Where the auth state lives in the store's `Auth` keyspace (berth's own layout; etcd keeps
//! the same facts in its `auth`, `authUsers` and `authRoles` buckets):
//!
//! | key | value |
//! |---|---|
//! | `enabled` | `1` or `0` |
//! | `secret` | 32 random bytes, new at each enable: the key simple tokens are signed with |
//! | `revision` | rewritten by every change: its mod revision is the auth revision |
//! | `user/<name>` | a [`User`](crate::User) as JSON |
//! | `role/<name>` | a [`Role`](crate::Role) as JSON |
//!
//! etcd-format snapshots carry these records as etcd's buckets: `berth_store::etcd_auth`
//! translates them both ways, so it follows this layout and the records' JSON (checked by
//! `view.rs`'s tests).
//!
//! Every change is one store txn that compares `revision`'s mod revision with the one its
//! checks were made against and rewrites `revision`: two concurrent changes cannot both pass
//! on the same state, and the auth revision moves exactly when the auth state does.

/// `1` while auth is on.
pub const ENABLED: &[u8] = b"enabled";
/// The simple-token signing key.
pub const SECRET: &[u8] = b"secret";
/// Rewritten by every change.
pub const REVISION: &[u8] = b"revision";
/// Prefix of user records.
pub const USER_PREFIX: &[u8] = b"user/";
/// Prefix of role records.
pub const ROLE_PREFIX: &[u8] = b"role/";

/// The key of user `name`.
pub fn user_key(name: &str) -> Vec<u8> {
    [USER_PREFIX, name.as_bytes()].concat()
}

/// The key of role `name`.
pub fn role_key(name: &str) -> Vec<u8> {
    [ROLE_PREFIX, name.as_bytes()].concat()
}

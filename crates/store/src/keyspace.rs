//! Keyspaces: disjoint sets of keys inside one store, all sharing one revision counter.
//!
//! The user keyspace is what etcd clients (and Consul KV) see; the others hold system
//! resources (auth, registry, config, gateway, messaging) that faces reach only through their
//! own domain. Invariants, kept by the store:
//! - every key lives in exactly one keyspace, and a read, a write, a txn (all its compares and
//!   ops) or a watch names one keyspace and never sees or touches a key of another: a
//!   [`KeySpan`](crate::KeySpan) is always relative to the keyspace it is used in, so
//!   `range_end = "\0"` from `""` (etcd's "every key") means every key *of that keyspace*;
//! - keys handed out (key-values, events, lease key lists) never carry a tag: the keyspace is
//!   known from the call that produced them;
//! - revisions, compaction, leases and alarms are store-wide: one sequence of revisions covers
//!   every keyspace, a compaction compacts them all, and a lease's keys may live in several
//!   keyspaces (revoking or expiring it deletes each in its own keyspace, in one revision).
//!
//! On disk the keyspace is the upper seven bits of a stored change's flag byte (see
//! `backend.rs`), so changes written before keyspaces existed read as user-keyspace changes.

/// A keyspace. The numeric ID is stable: it is stored with every change and carried in the
/// Raft log (`berth.store.Request.keyspace`, where 0 — absent — is [`Keyspace::User`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(u8)]
pub enum Keyspace {
    /// What etcd (and Consul KV) clients read and write. The etcd face uses only this one.
    #[default]
    User = 0,
    /// Users, roles and permissions.
    Auth = 1,
    /// Service registry records.
    Registry = 2,
    /// Configuration entries (e.g. Nacos config).
    Config = 3,
    /// Gateway routes, upstreams, consumers and certificates.
    Gateway = 4,
    /// Messaging state (streams, consumers).
    Messaging = 5,
}

impl Keyspace {
    /// Every keyspace, in ID order (`ALL[ks.index()] == ks`).
    pub const ALL: [Keyspace; 6] = [
        Keyspace::User,
        Keyspace::Auth,
        Keyspace::Registry,
        Keyspace::Config,
        Keyspace::Gateway,
        Keyspace::Messaging,
    ];

    /// Number of keyspaces.
    pub const COUNT: usize = Self::ALL.len();

    /// Highest ID the storage encoding can hold (seven bits); new keyspaces take the next
    /// free ID below it.
    pub const MAX_ID: u8 = 127;

    /// The keyspace's stable numeric ID.
    pub const fn id(self) -> u8 {
        self as u8
    }

    /// Position in [`Keyspace::ALL`] (the ID, as an index for per-keyspace tables).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The keyspace with ID `id`, if this build knows it.
    pub fn from_id(id: u32) -> Option<Keyspace> {
        Self::ALL.get(usize::try_from(id).ok()?).copied()
    }

    /// Lower-case name (for logs and errors).
    pub fn name(self) -> &'static str {
        match self {
            Keyspace::User => "user",
            Keyspace::Auth => "auth",
            Keyspace::Registry => "registry",
            Keyspace::Config => "config",
            Keyspace::Gateway => "gateway",
            Keyspace::Messaging => "messaging",
        }
    }
}

impl std::fmt::Display for Keyspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_round_trip() {
        for (i, ks) in Keyspace::ALL.iter().enumerate() {
            assert_eq!(ks.index(), i);
            assert_eq!(Keyspace::from_id(u32::from(ks.id())), Some(*ks));
            assert!(ks.id() <= Keyspace::MAX_ID);
        }
        assert_eq!(Keyspace::from_id(0), Some(Keyspace::User));
        assert_eq!(Keyspace::from_id(Keyspace::COUNT as u32), None);
        assert_eq!(Keyspace::from_id(u32::MAX), None);
    }
}

//! What a Raft group replicates, as consensus sees it: opaque command bytes applied in log
//! order by a [`GroupState`], which keeps its own snapshots. Consensus never decodes a
//! command; the state (today the MVCC store of the `meta` group, wrapped in the server) does.
//!
//! The five operations are exactly what openraft's state machine needs: apply a batch with
//! the applied log id beside it in one transaction, read that metadata back, take a durable
//! view to send as a snapshot, and install a snapshot received from the leader.

use std::fmt;
use std::io;
use std::sync::Arc;

/// A Raft group's name: it is carried on every peer RPC (routing it to that group's replica
/// on the receiving member) and names the group's directory, `groups/<name>/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(Arc<str>);

impl GroupId {
    /// The group every member runs: membership, leases, the key-value store.
    pub const META: &'static str = "meta";

    /// The `meta` group.
    pub fn meta() -> GroupId {
        GroupId(Self::META.into())
    }

    /// A group by name; `None` unless it is 1–64 characters of `[a-z0-9_-]` (it becomes a
    /// directory name and a gRPC metadata value).
    pub fn new(name: &str) -> Option<GroupId> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        ok.then(|| GroupId(name.into()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a batch could not be applied. Either way Raft stops (the entries stay in the log, and
/// the member with them): skipping an entry would let members diverge.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Command `at` (its position in the batch) is not one this build can decode; nothing of
    /// the batch was applied.
    #[error("{reason}")]
    Undecodable {
        /// Position in the batch.
        at: usize,
        /// What the decoder said.
        reason: String,
    },
    /// The state could not be written.
    #[error(transparent)]
    Storage(#[from] io::Error),
}

/// A group's replicated state, driven by its Raft state machine. `apply` and `install` come
/// one at a time from openraft's state-machine task; [`GroupState::check`] (any task),
/// [`GroupState::durable_view`] and [`GroupState::meta`] (snapshot building, on blocking
/// threads) may run at the same time as `apply`, so an implementation must serialize them
/// itself (the store does, under its writer lock).
pub trait GroupState: Send + Sync + 'static {
    /// Whether `command` is one this group can apply (a leader refuses a forwarded write
    /// that is not, rather than commit an entry no member can apply).
    fn check(&self, command: &[u8]) -> Result<(), String>;

    /// Applies `commands` in order, and writes `meta` (a key and value) in the same
    /// transaction; returns one encoded result per command. Needs no fsync of its own: the
    /// Raft log holds the commands durably and is replayed from the last durable state.
    fn apply(&self, commands: &[&[u8]], meta: (&str, &[u8])) -> Result<Vec<Vec<u8>>, ApplyError>;

    /// A value written by [`GroupState::apply`] (as of the last apply or install).
    fn meta(&self, key: &str) -> io::Result<Option<Vec<u8>>>;

    /// Makes everything applied durable and returns a read view of exactly that state.
    fn durable_view(&self) -> io::Result<Arc<dyn GroupView>>;

    /// Replaces the whole state with a snapshot stream (the format [`GroupView::write_to`]
    /// produces), checking it all before anything is replaced.
    fn install(&self, snapshot: &mut dyn io::Read) -> io::Result<()>;
}

/// A read-only, durable view of a group's state: what a snapshot sends.
pub trait GroupView: Send + Sync + fmt::Debug {
    /// A metadata value as of the view.
    fn meta(&self, key: &str) -> io::Result<Option<Vec<u8>>>;

    /// Writes the view as a snapshot stream, chunk by chunk (blocking).
    fn write_to(&self, sink: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()>;
}

#[cfg(test)]
mod tests {
    use super::GroupId;

    #[test]
    fn group_names_are_safe_as_directory_and_metadata() {
        assert_eq!(GroupId::meta().as_str(), "meta");
        assert!(GroupId::new("jetstream-orders_2").is_some());
        for bad in ["", "Meta", "../x", "a/b", "a b", &"x".repeat(65)] {
            assert!(GroupId::new(bad).is_none(), "{bad:?}");
        }
    }
}

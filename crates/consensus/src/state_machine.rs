//! The Raft state machine: applies committed entries to the group's [`GroupState`] in
//! batches, keeping the applied log id and membership in the same transaction; its snapshots
//! are the state itself.
//!
//! Batches are applied without their own fsync: the Raft log already holds them durably, and
//! after a crash openraft re-applies from the last durable applied id. A snapshot is a durable
//! commit of the state plus a read view of exactly that state ([`GroupView`]): building one
//! copies nothing, so the log can be purged behind durable state at the cost of one commit,
//! and the bytes are only produced when the view is sent to a member that needs them (like
//! etcd, whose snapshots are its bolt file). A snapshot received from a leader arrives as a
//! file, installed and then deleted. Snapshot writing and installing run where [`StorageIo`]
//! says (blocking threads in production).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::type_config::alias::SnapshotOf;
use openraft::{EntryPayload, OptionalSend};

use crate::env::StorageIo;
use crate::group::{ApplyError, GroupState, GroupView};
use crate::sync::io_err;
use crate::types::{LogId, RaftResponse, SnapshotMeta, StoredMembership, TypeConfig};

/// Metadata key holding `(applied log id, membership)`.
const RAFT_STATE: &str = "raft.state";

/// A snapshot's data: a view of the local state, or a snapshot stream received in a file.
#[derive(Debug, Clone)]
pub enum GroupSnapshot {
    /// The local state as of the snapshot, written out when it is sent.
    View(Arc<dyn GroupView>),
    /// A snapshot stream (the format of [`GroupView::write_to`]) in a file.
    File(PathBuf),
}

impl GroupSnapshot {
    /// Writes the snapshot stream, chunk by chunk, to `sink` (blocking: run it off the async
    /// runtime's threads).
    pub fn write_to(&self, mut sink: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        match self {
            GroupSnapshot::View(view) => view.write_to(&mut sink),
            GroupSnapshot::File(path) => {
                let mut file = std::fs::File::open(path)?;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = std::io::Read::read(&mut file, &mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    sink(&buf[..n])?;
                }
            }
        }
    }
}

/// What earlier versions kept in the snapshot directory: snapshot copies and their metadata,
/// and files of interrupted builds and transfers. None of it is needed any more.
fn remove_stale_files(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let stale = name.starts_with("snap-")
            || name.starts_with("receiving-")
            || name.starts_with("installing-")
            || name == "building.tmp"
            || name == "meta.tmp";
        if stale {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// Makes the state durable and takes a view of it as a snapshot; the flag says whether
/// anything was ever applied (without, the snapshot is of an empty state).
fn durable_snapshot(
    state: &dyn GroupState,
) -> io::Result<(SnapshotOf<TypeConfig, GroupSnapshot>, bool)> {
    let view = state.durable_view()?;
    let blob = view.meta(RAFT_STATE)?;
    let applied = blob.is_some();
    let (last_log_id, last_membership): (Option<LogId>, StoredMembership) = match blob {
        Some(b) => rmp_serde::from_slice(&b).map_err(io_err)?,
        None => (None, StoredMembership::default()),
    };
    let snapshot = Snapshot {
        meta: SnapshotMeta {
            last_log_id,
            last_membership,
        },
        snapshot: GroupSnapshot::View(view),
    };
    Ok((snapshot, applied))
}

/// Snapshot activity, for metrics.
#[derive(Debug, Default)]
pub struct SnapshotCounters {
    /// Snapshots built locally.
    pub built: std::sync::atomic::AtomicU64,
    /// Snapshots received from a leader and installed.
    pub installed: std::sync::atomic::AtomicU64,
}

/// The state machine over a group's [`GroupState`].
pub struct StateMachine {
    state: Arc<dyn GroupState>,
    dir: PathBuf,
    counters: Arc<SnapshotCounters>,
    io: StorageIo,
    /// The membership last applied (as stored in the `RAFT_STATE` blob), kept so that each
    /// batch does not read and decode the blob again; `None` until first needed and after a
    /// snapshot replaces the state.
    membership: Option<StoredMembership>,
}

impl StateMachine {
    /// A state machine applying to `state`, keeping received snapshots in `dir`, doing
    /// storage work where `io` says.
    pub fn new(state: Arc<dyn GroupState>, dir: &Path, io: StorageIo) -> io::Result<StateMachine> {
        std::fs::create_dir_all(dir)?;
        remove_stale_files(dir)?;
        Ok(StateMachine {
            state,
            dir: dir.to_path_buf(),
            counters: Arc::default(),
            io,
            membership: None,
        })
    }

    /// Counters of snapshots built and installed.
    pub fn counters(&self) -> Arc<SnapshotCounters> {
        self.counters.clone()
    }

    fn raft_state(state: &dyn GroupState) -> io::Result<(Option<LogId>, StoredMembership)> {
        match state.meta(RAFT_STATE)? {
            Some(b) => rmp_serde::from_slice(&b).map_err(io_err),
            None => Ok((None, StoredMembership::default())),
        }
    }
}

/// Builds snapshots of the state.
pub struct Builder {
    state: Arc<dyn GroupState>,
    counters: Arc<SnapshotCounters>,
    io: StorageIo,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    type SnapshotData = GroupSnapshot;

    async fn build_snapshot(&mut self) -> io::Result<SnapshotOf<TypeConfig, GroupSnapshot>> {
        let state = self.state.clone();
        let counters = self.counters.clone();
        self.io
            .run(move || {
                counters
                    .built
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Everything the snapshot covers is durable before the log behind it is purged.
                let (snapshot, _) = durable_snapshot(&*state)?;
                tracing::info!(index = ?snapshot.meta.last_log_id.map(|l| l.index), "snapshot taken");
                Ok(snapshot)
            })
            .await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = GroupSnapshot;
    type SnapshotBuilder = Builder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        Self::raft_state(&*self.state)
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let mut membership = match self.membership.take() {
            Some(m) => m,
            None => Self::raft_state(&*self.state)?.1,
        };
        let mut last = None;
        let mut cmds: Vec<Vec<u8>> = Vec::new();
        let mut indexes: Vec<u64> = Vec::new();
        // For each entry: its responder and the index of its command in `cmds`, if any.
        let mut slots = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            last = Some(entry.log_id);
            let slot = match entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(req) => {
                    cmds.push(req.0);
                    indexes.push(entry.log_id.index);
                    Some(cmds.len() - 1)
                }
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(entry.log_id), m);
                    None
                }
            };
            slots.push((responder, slot));
        }
        if slots.is_empty() {
            self.membership = Some(membership);
            return Ok(());
        }
        let raft_state = rmp_serde::to_vec(&(last, &membership)).map_err(io_err)?;
        // On this task: a batch's commit is not fsynced (the Raft log is the durable record)
        // and the store's fan-out to watchers is one queue push per watch stream, so a
        // hand-off to a blocking thread would cost more than it saves.
        let commands: Vec<&[u8]> = cmds.iter().map(Vec::as_slice).collect();
        let results = match self.state.apply(&commands, (RAFT_STATE, &raft_state)) {
            Ok(results) => results,
            Err(ApplyError::Undecodable { at, reason }) => {
                // Never skipped: a build that could decode it (another decoder limit, a newer
                // command) would apply it and the members would diverge, and its writer was
                // told nothing. Stopping here stops Raft (a storage error), which stops the
                // member; the entry stays in the log.
                let index = indexes.get(at).copied().unwrap_or_default();
                tracing::error!(index, error = %reason, "a committed log entry cannot be decoded; stopping");
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "committed log entry {index} cannot be decoded ({reason}); this member \
                         stops rather than skip it (run a berth build that can read it)"
                    ),
                ));
            }
            Err(ApplyError::Storage(e)) => return Err(e),
        };
        self.membership = Some(membership);
        for (responder, slot) in slots {
            let Some(responder) = responder else { continue };
            let resp = match slot.and_then(|i| results.get(i)) {
                Some(r) => RaftResponse(r.clone()),
                None => RaftResponse::default(),
            };
            responder.send(resp);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        Builder {
            state: self.state.clone(),
            counters: self.counters.clone(),
            io: self.io,
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: GroupSnapshot,
    ) -> io::Result<()> {
        let state = self.state.clone();
        let dir = self.dir.clone();
        let meta = meta.clone();
        self.membership = None;
        self.counters
            .installed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.io
            .run(move || {
                let path = match &snapshot {
                    GroupSnapshot::File(path) => path.clone(),
                    GroupSnapshot::View(_) => {
                        // Another state's view (only tests hand one over directly): write it
                        // out, then install it like a received one.
                        let path = dir.join("installing-view.tmp");
                        let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
                        snapshot.write_to(|chunk| std::io::Write::write_all(&mut out, chunk))?;
                        std::io::Write::flush(&mut out)?;
                        path
                    }
                };
                let installed = std::fs::File::open(&path)
                    .map(std::io::BufReader::new)
                    .and_then(|mut file| state.install(&mut file));
                let _ = std::fs::remove_file(&path);
                installed?;
                // The stream carries its own applied id; it must be the one openraft was told.
                let (applied, _) = StateMachine::raft_state(&*state)?;
                if applied != meta.last_log_id {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "installed snapshot holds applied id {applied:?}, its metadata says {:?}",
                            meta.last_log_id
                        ),
                    ));
                }
                tracing::info!(index = ?meta.last_log_id.map(|l| l.index), "installed snapshot from the leader");
                Ok(())
            })
            .await
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> io::Result<Option<SnapshotOf<TypeConfig, GroupSnapshot>>> {
        let state = self.state.clone();
        self.io
            .run(move || {
                let (snapshot, applied) = durable_snapshot(&*state)?;
                Ok(applied.then_some(snapshot))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Entry, RaftRequest};
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// A group state in memory: commands are kept in order; an empty command cannot be
    /// decoded.
    #[derive(Default)]
    struct MemState {
        commands: Mutex<Vec<Vec<u8>>>,
        meta: Mutex<HashMap<String, Vec<u8>>>,
    }

    impl GroupState for MemState {
        fn check(&self, command: &[u8]) -> Result<(), String> {
            if command.is_empty() {
                Err("empty command".into())
            } else {
                Ok(())
            }
        }

        fn apply(
            &self,
            commands: &[&[u8]],
            meta: (&str, &[u8]),
        ) -> Result<Vec<Vec<u8>>, ApplyError> {
            if let Some(at) = commands.iter().position(|c| self.check(c).is_err()) {
                return Err(ApplyError::Undecodable {
                    at,
                    reason: "empty command".into(),
                });
            }
            let mut applied = self.commands.lock().expect("lock");
            applied.extend(commands.iter().map(|c| c.to_vec()));
            let mut kept = self.meta.lock().expect("lock");
            kept.insert(meta.0.to_string(), meta.1.to_vec());
            Ok(commands
                .iter()
                .map(|c| c.len().to_le_bytes().to_vec())
                .collect())
        }

        fn meta(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
            Ok(self.meta.lock().expect("lock").get(key).cloned())
        }

        fn durable_view(&self) -> io::Result<Arc<dyn GroupView>> {
            Err(io::Error::other("not in this test"))
        }

        fn install(&self, _snapshot: &mut dyn io::Read) -> io::Result<()> {
            Err(io::Error::other("not in this test"))
        }
    }

    fn entry(index: u64, bytes: Vec<u8>) -> io::Result<EntryResponder<TypeConfig>> {
        Ok((
            Entry {
                log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
                payload: EntryPayload::Normal(RaftRequest(bytes)),
            },
            None,
        ))
    }

    /// An entry no member can decode used to be skipped with an ERROR (its writer told
    /// nothing, and a build with another decoder would apply it): it fails the apply, which
    /// stops Raft, names the entry's log index, and nothing of its batch is applied.
    #[tokio::test]
    async fn an_undecodable_entry_stops_the_apply_instead_of_being_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = Arc::new(MemState::default());
        let mut sm =
            StateMachine::new(state.clone(), dir.path(), StorageIo::Inline).expect("state machine");
        let batch = futures::stream::iter([entry(1, b"put".to_vec()), entry(2, Vec::new())]);
        let err = sm.apply(batch).await.expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string().contains("entry 2 cannot be decoded"),
            "{err}"
        );
        assert!(state.commands.lock().expect("lock").is_empty());
        assert_eq!(sm.applied_state().await.expect("state").0, None);
        // A batch it can apply goes through, with its applied id beside it.
        let batch = futures::stream::iter([entry(1, b"put".to_vec())]);
        sm.apply(batch).await.expect("applied");
        assert_eq!(*state.commands.lock().expect("lock"), vec![b"put".to_vec()]);
        let applied = sm.applied_state().await.expect("state").0;
        assert_eq!(applied.map(|l| l.index), Some(1));
    }
}

//! The Raft state machine: applies committed entries to the MVCC store in batches, keeping the
//! applied log id and membership in the same transaction; its snapshots are the store itself.
//!
//! Batches are applied without their own fsync: the Raft log already holds them durably, and
//! after a crash openraft re-applies from the last durable applied id. A snapshot is a durable
//! commit of the store plus a read view of exactly that state ([`berth_store::StoreView`]):
//! building one copies nothing, so the log can be purged behind durable state at the cost of
//! one commit, and the bytes are only produced when the view is sent to a member that needs
//! them (like etcd, whose snapshots are its bolt file). A snapshot received from a leader
//! arrives as a file, installed and then deleted. Snapshot writing and installing run where
//! [`StorageIo`] says (blocking threads in production).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_store::{Command, Store, StoreView};
use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::type_config::alias::SnapshotOf;
use openraft::{EntryPayload, OptionalSend};

use crate::codec::{decode_command, encode_result};
use crate::env::StorageIo;
use crate::types::{LogId, RaftResponse, SnapshotMeta, StoredMembership, TypeConfig};

/// Blob in the store holding `(applied log id, membership)`.
const RAFT_STATE: &str = "raft.state";

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// A snapshot's data: a view of the local store, or a snapshot stream received in a file.
#[derive(Debug, Clone)]
pub enum StoreSnapshot {
    /// The local store as of the snapshot, written out when it is sent.
    View(Arc<StoreView>),
    /// A store snapshot stream (the format of [`Store::snapshot`]) in a file.
    File(PathBuf),
}

impl StoreSnapshot {
    /// Writes the snapshot stream, chunk by chunk, to `sink` (blocking: run it off the async
    /// runtime's threads).
    pub fn write_to(&self, mut sink: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        match self {
            StoreSnapshot::View(view) => view
                .write_snapshot(|chunk| sink(chunk).map_err(berth_store::StoreError::Io))
                .map_err(io_err),
            StoreSnapshot::File(path) => {
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

/// Makes the store durable and takes a view of it as a snapshot; the flag says whether
/// anything was ever applied (without, the snapshot is of an empty store).
fn durable_snapshot(store: &Store) -> io::Result<(SnapshotOf<TypeConfig, StoreSnapshot>, bool)> {
    let view = store.durable_view().map_err(io_err)?;
    let blob = view.blob(RAFT_STATE).map_err(io_err)?;
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
        snapshot: StoreSnapshot::View(Arc::new(view)),
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

/// The state machine over a [`Store`].
pub struct StateMachine {
    store: Arc<Store>,
    dir: PathBuf,
    counters: Arc<SnapshotCounters>,
    io: StorageIo,
    /// The membership last applied (as stored in the `RAFT_STATE` blob), kept so that each
    /// batch does not read and decode the blob again; `None` until first needed and after a
    /// snapshot replaces the store.
    membership: Option<StoredMembership>,
}

impl StateMachine {
    /// A state machine applying to `store`, keeping snapshots in `dir`, doing storage work
    /// where `io` says.
    pub fn new(store: Arc<Store>, dir: &Path, io: StorageIo) -> io::Result<StateMachine> {
        std::fs::create_dir_all(dir)?;
        remove_stale_files(dir)?;
        Ok(StateMachine {
            store,
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

    fn raft_state(store: &Store) -> io::Result<(Option<LogId>, StoredMembership)> {
        match store.blob(RAFT_STATE).map_err(io_err)? {
            Some(b) => rmp_serde::from_slice(&b).map_err(io_err),
            None => Ok((None, StoredMembership::default())),
        }
    }
}

/// Builds snapshots of the store.
pub struct Builder {
    store: Arc<Store>,
    counters: Arc<SnapshotCounters>,
    io: StorageIo,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    type SnapshotData = StoreSnapshot;

    async fn build_snapshot(&mut self) -> io::Result<SnapshotOf<TypeConfig, StoreSnapshot>> {
        let store = self.store.clone();
        let counters = self.counters.clone();
        self.io
            .run(move || {
                counters
                    .built
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Everything the snapshot covers is durable before the log behind it is purged.
                let (snapshot, _) = durable_snapshot(&store)?;
                tracing::info!(index = ?snapshot.meta.last_log_id.map(|l| l.index), "snapshot taken");
                Ok(snapshot)
            })
            .await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = StoreSnapshot;
    type SnapshotBuilder = Builder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        Self::raft_state(&self.store)
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let mut membership = match self.membership.take() {
            Some(m) => m,
            None => Self::raft_state(&self.store)?.1,
        };
        let mut last = None;
        let mut cmds: Vec<Command> = Vec::new();
        // For each entry: its responder and the index of its command in `cmds`, if any.
        let mut slots = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            last = Some(entry.log_id);
            let slot = match entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(req) => match decode_command(&req.0) {
                    Ok(cmd) => {
                        cmds.push(cmd);
                        Some(cmds.len() - 1)
                    }
                    Err(e) => {
                        // Never skipped: a build that could decode it (another decoder limit,
                        // a newer command) would apply it and the members would diverge, and
                        // its writer was told nothing. Stopping here stops Raft (a storage
                        // error), which stops the member; the entry stays in the log.
                        tracing::error!(index = entry.log_id.index, error = %e, "a committed log entry cannot be decoded; stopping");
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "committed log entry {} cannot be decoded ({e}); this member stops \
                                 rather than skip it (run a berth build that can read it)",
                                entry.log_id.index
                            ),
                        ));
                    }
                },
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
        let state = rmp_serde::to_vec(&(last, &membership)).map_err(io_err)?;
        // On this task: a batch's redb commit is not fsynced (the Raft log is the durable
        // record) and fan-out to watchers is one queue push per watch stream, so a hand-off to
        // a blocking thread would cost more than it saves.
        let results = self
            .store
            .apply_batch_with(&cmds, &[(RAFT_STATE, state)], false)
            .map_err(io_err)?;
        self.membership = Some(membership);
        for (responder, slot) in slots {
            let Some(responder) = responder else { continue };
            let resp = match slot.and_then(|i| results.get(i)) {
                Some(r) => RaftResponse(encode_result(r)),
                None => RaftResponse::default(),
            };
            responder.send(resp);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        Builder {
            store: self.store.clone(),
            counters: self.counters.clone(),
            io: self.io,
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: StoreSnapshot,
    ) -> io::Result<()> {
        let store = self.store.clone();
        let dir = self.dir.clone();
        let meta = meta.clone();
        self.membership = None;
        self.counters
            .installed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.io
            .run(move || {
                let path = match &snapshot {
                    StoreSnapshot::File(path) => path.clone(),
                    StoreSnapshot::View(_) => {
                        // Another store's view (only tests hand one over directly): write it
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
                    .and_then(|file| store.install_snapshot(file).map_err(io_err));
                let _ = std::fs::remove_file(&path);
                installed?;
                // The stream carries its own applied id; it must be the one openraft was told.
                let (applied, _) = StateMachine::raft_state(&store)?;
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
    ) -> io::Result<Option<SnapshotOf<TypeConfig, StoreSnapshot>>> {
        let store = self.store.clone();
        self.io
            .run(move || {
                let (snapshot, applied) = durable_snapshot(&store)?;
                Ok(applied.then_some(snapshot))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode_command;
    use crate::types::{Entry, RaftRequest};
    use berth_proto::etcdserverpb::PutRequest;
    use berth_store::StoreOptions;

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
    /// nothing, and a build with another decoder would apply it): it now fails the apply,
    /// which stops Raft, and nothing of its batch is applied.
    #[tokio::test]
    async fn an_undecodable_entry_stops_the_apply_instead_of_being_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("store"), StoreOptions::default()).expect("store");
        let mut sm = StateMachine::new(store.clone(), &dir.path().join("snap"), StorageIo::Inline)
            .expect("sm");
        let put = encode_command(&Command::Put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        }));
        let garbage = vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f];
        let batch = futures::stream::iter([entry(1, put), entry(2, garbage)]);
        let err = sm.apply(batch).await.expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string().contains("entry 2 cannot be decoded"),
            "{err}"
        );
        assert_eq!(store.revision(), 1, "nothing of the batch was applied");
        assert_eq!(sm.applied_state().await.expect("state").0, None);
    }
}

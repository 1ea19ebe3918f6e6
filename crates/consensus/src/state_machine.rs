//! The Raft state machine: applies committed entries to the MVCC store in batches, keeps the
//! applied log id and membership in the same transaction, and builds/installs snapshots as
//! files holding a store snapshot.
//!
//! Batches are applied without their own fsync: the Raft log already holds them durably, and
//! after a crash openraft re-applies from the last durable applied id. The store is flushed
//! before every snapshot (so the log is only purged behind durable state). Applying and
//! snapshot files run where [`StorageIo`] says (blocking threads in production).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_store::{Command, Store};
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

/// A snapshot on disk: a store snapshot stream in a file.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    /// Where the snapshot bytes are.
    pub path: PathBuf,
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

fn meta_path(snapshot: &Path) -> PathBuf {
    snapshot.with_extension("meta")
}

/// Records `snapshot` (with its meta) as the current one and deletes older ones.
fn keep_current(dir: &Path, snapshot: &Path, meta: &SnapshotMeta) -> io::Result<PathBuf> {
    let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
    let final_path = dir.join(format!("snap-{index:020}.bin"));
    if snapshot != final_path {
        std::fs::rename(snapshot, &final_path)?;
    }
    let meta_bytes = rmp_serde::to_vec(meta).map_err(io_err)?;
    let tmp = dir.join("meta.tmp");
    std::fs::write(&tmp, meta_bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, meta_path(&final_path))?;
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        let stem_is_snap = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("snap-"));
        if stem_is_snap && p != final_path && p != meta_path(&final_path) {
            let _ = std::fs::remove_file(&p);
        }
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok(final_path)
}

/// Builds snapshots of the store.
pub struct Builder {
    store: Arc<Store>,
    dir: PathBuf,
    counters: Arc<SnapshotCounters>,
    io: StorageIo,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> io::Result<SnapshotOf<TypeConfig, SnapshotFile>> {
        let store = self.store.clone();
        let dir = self.dir.clone();
        let counters = self.counters.clone();
        self.io.run(move || {
            counters.built.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Everything the snapshot covers must be durable before the log behind it is purged.
            store.flush().map_err(io_err)?;
            let tmp = dir.join("building.tmp");
            let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            let blob = store
                .snapshot_with_blob(RAFT_STATE, |chunk| {
                    std::io::Write::write_all(&mut file, chunk).map_err(berth_store::StoreError::Io)
                })
                .map_err(io_err)?;
            let file = file.into_inner().map_err(io_err)?;
            file.sync_all()?;
            let (last_log_id, last_membership): (Option<LogId>, StoredMembership) = match blob {
                Some(b) => rmp_serde::from_slice(&b).map_err(io_err)?,
                None => (None, StoredMembership::default()),
            };
            let meta = SnapshotMeta {
                last_log_id,
                last_membership,
            };
            let path = keep_current(&dir, &tmp, &meta)?;
            tracing::info!(index = ?meta.last_log_id.map(|l| l.index), path = %path.display(), "built snapshot");
            Ok(Snapshot {
                meta,
                snapshot: SnapshotFile { path },
            })
        })
        .await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
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
                        // Every member decodes the same bytes the same way, so skipping is
                        // consistent; it would mean a member wrote an entry it cannot read.
                        tracing::error!(index = entry.log_id.index, error = %e, "skipping undecodable entry");
                        None
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
            dir: self.dir.clone(),
            counters: self.counters.clone(),
            io: self.io,
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> io::Result<()> {
        let store = self.store.clone();
        let dir = self.dir.clone();
        let meta = meta.clone();
        self.membership = None;
        self.counters
            .installed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.io.run(move || {
            let file = std::io::BufReader::new(std::fs::File::open(&snapshot.path)?);
            store.install_snapshot(file).map_err(io_err)?;
            keep_current(&dir, &snapshot.path, &meta)?;
            tracing::info!(index = ?meta.last_log_id.map(|l| l.index), "installed snapshot from the leader");
            Ok(())
        })
        .await
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> io::Result<Option<SnapshotOf<TypeConfig, SnapshotFile>>> {
        let dir = self.dir.clone();
        self.io
            .run(move || {
                let mut newest: Option<PathBuf> = None;
                for entry in std::fs::read_dir(&dir)? {
                    let p = entry?.path();
                    let is_snap = p.extension().is_some_and(|e| e == "bin")
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("snap-"));
                    if is_snap && meta_path(&p).exists() && newest.as_ref().is_none_or(|n| p > *n) {
                        newest = Some(p);
                    }
                }
                let Some(path) = newest else { return Ok(None) };
                let meta: SnapshotMeta =
                    rmp_serde::from_slice(&std::fs::read(meta_path(&path))?).map_err(io_err)?;
                Ok(Some(Snapshot {
                    meta,
                    snapshot: SnapshotFile { path },
                }))
            })
            .await
    }
}

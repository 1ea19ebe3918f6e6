//! openraft's log storage over [`Wal`] (segment files): appends become readable at once and
//! durable in batches — one flusher thread fsyncs whatever has been appended meanwhile and then
//! reports every waiting append (group commit), while appends go on. Everything else runs on the
//! calling task: reads and appends are single positioned reads and writes.
//!
//! A log written by earlier versions (a redb file, `log.redb`) is moved into segment files
//! once, the first time the directory is opened.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::env::StorageIo;
use crate::types::{Entry, LogId, TypeConfig, Vote};
use crate::wal::{Records, Wal, WalState};

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn encode<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    rmp_serde::to_vec(v).map_err(io_err)
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> io::Result<T> {
    rmp_serde::from_slice(b).map_err(io_err)
}

/// Told the duration and number of entries of every log fsync (for metrics).
pub type FlushObserver = Arc<dyn Fn(std::time::Duration, usize) + Send + Sync>;

struct Inner {
    wal: Wal,
    /// The flusher thread's queue; `None` with inline storage IO (appends fsync themselves).
    flush: Option<mpsc::Sender<(IOFlushed<TypeConfig>, usize)>>,
    observer: Option<FlushObserver>,
}

impl Inner {
    /// Fsyncs and reports the result to every waiting append.
    fn flush_and_report(&self, waiting: Vec<(IOFlushed<TypeConfig>, usize)>) {
        let started = std::time::Instant::now();
        let result = self.wal.sync();
        if let Err(e) = &result {
            tracing::error!(error = %e, "flushing the Raft log failed");
        }
        if let Some(observe) = &self.observer {
            observe(started.elapsed(), waiting.iter().map(|(_, n)| n).sum());
        }
        for (cb, _) in waiting {
            cb.io_completed(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| io::Error::new(e.kind(), e.to_string())),
            );
        }
    }
}

/// The log store; cheap to clone (clones share the files).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

impl LogStore {
    /// Opens or creates the log in `dir` and starts its flusher thread.
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        Self::open_with(dir, None, StorageIo::Threads)
    }

    /// [`LogStore::open`], reporting every fsync to `observer`. With [`StorageIo::Inline`] there
    /// is no flusher thread: every append is fsynced before it is reported.
    pub fn open_with(
        dir: &Path,
        observer: Option<FlushObserver>,
        io: StorageIo,
    ) -> io::Result<LogStore> {
        let wal = Wal::open(dir)?;
        legacy::migrate(dir, &wal)?;
        let (flush, queue) = match io {
            StorageIo::Threads => {
                let (tx, rx) = mpsc::channel();
                (Some(tx), Some(rx))
            }
            StorageIo::Inline => (None, None),
        };
        let inner = Arc::new(Inner {
            wal,
            flush,
            observer,
        });
        if let Some(rx) = queue {
            let weak = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name("berth-log-flush".into())
                .spawn(move || flusher(weak, rx))?;
        }
        Ok(LogStore { inner })
    }
}

/// Fsyncs appended entries in batches and reports each batch's appends as flushed.
fn flusher(inner: std::sync::Weak<Inner>, rx: mpsc::Receiver<(IOFlushed<TypeConfig>, usize)>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        waiting.extend(rx.try_iter());
        let Some(inner) = inner.upgrade() else { return };
        inner.flush_and_report(waiting);
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        self.inner
            .wal
            .read(from, to)?
            .iter()
            .map(|b| decode(b))
            .collect()
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        Ok(self.inner.wal.state().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let purged = self.inner.wal.state().purged;
        let last = match self.inner.wal.last_index() {
            Some(i) => match self.inner.wal.read(i, i + 1)?.first() {
                Some(b) => Some(decode::<Entry>(b)?.log_id),
                None => purged,
            },
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        let vote = *vote;
        self.inner.wal.set_state(|s| s.vote = Some(vote), true)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        // Losing the newest committed id in a crash only means re-learning it from the leader;
        // it is written with the next vote or purge.
        self.inner.wal.set_state(|s| s.committed = committed, false)
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(self.inner.wal.state().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut records: Records = Vec::new();
        for e in entries {
            records.push((e.log_id.index, encode(&e)?));
        }
        let count = records.len();
        // Visible now, durable with the flusher's next fsync.
        self.inner.wal.append(records)?;
        match &self.inner.flush {
            Some(queue) => queue
                .send((callback, count))
                .map_err(|_| io::Error::other("log flusher stopped")),
            None => {
                self.inner.flush_and_report(vec![(callback, count)]);
                Ok(())
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        self.inner.wal.truncate_after(last_log_id.map(|l| l.index))
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        self.inner.wal.purge(log_id)
    }
}

/// The log format of earlier versions: one redb database, `log.redb`.
mod legacy {
    use super::*;
    use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

    const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
    const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");

    /// Moves a `log.redb` in `dir` into `wal` (which must be empty), then renames it to
    /// `log.redb.migrated`.
    pub(super) fn migrate(dir: &Path, wal: &Wal) -> io::Result<()> {
        let path = dir.join("log.redb");
        if !path.exists() {
            return Ok(());
        }
        if wal.last_index().is_some() {
            return Err(io::Error::other(format!(
                "{} holds both an old log.redb and segment files: move one of them away",
                dir.display()
            )));
        }
        let db = Database::open(&path).map_err(io_err)?;
        let txn = db.begin_read().map_err(io_err)?;
        let state = txn.open_table(STATE).map_err(io_err)?;
        let get = |key: &str| -> io::Result<Option<Vec<u8>>> {
            Ok(state.get(key).map_err(io_err)?.map(|g| g.value().to_vec()))
        };
        let vote: Option<Vote> = get("vote")?.map(|b| decode(&b)).transpose()?;
        let committed: Option<LogId> = get("committed")?
            .map(|b| decode::<Option<LogId>>(&b))
            .transpose()?
            .flatten();
        let purged: Option<LogId> = get("purged")?.map(|b| decode(&b)).transpose()?;
        let entries = txn.open_table(ENTRIES).map_err(io_err)?;
        let mut records: Records = Vec::new();
        for item in entries.iter().map_err(io_err)? {
            let (k, v) = item.map_err(io_err)?;
            records.push((k.value(), v.value().to_vec()));
        }
        let n = records.len();
        wal.set_state(
            |s| {
                *s = WalState {
                    vote,
                    committed,
                    purged,
                }
            },
            true,
        )?;
        wal.append(records)?;
        wal.sync()?;
        drop(entries);
        drop(state);
        drop(txn);
        drop(db);
        std::fs::rename(&path, dir.join("log.redb.migrated"))?;
        tracing::info!(entries = n, dir = %dir.display(), "moved the Raft log from log.redb to segment files");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::entry::RaftEntry;
    use redb::{Database, TableDefinition};

    fn log_id(index: u64) -> LogId {
        openraft::testing::log_id::<TypeConfig>(2, 1, index)
    }

    #[tokio::test]
    async fn a_redb_log_of_an_earlier_version_is_moved_into_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = Database::create(dir.path().join("log.redb")).expect("create");
            let w = db.begin_write().expect("write");
            {
                let mut entries = w
                    .open_table(TableDefinition::<u64, &[u8]>::new("entries"))
                    .expect("entries");
                for i in 4..8 {
                    let e = Entry::new_blank(log_id(i));
                    entries
                        .insert(i, encode(&e).expect("encode").as_slice())
                        .expect("insert");
                }
                let mut state = w
                    .open_table(TableDefinition::<&str, &[u8]>::new("state"))
                    .expect("state");
                let vote = Vote::new(2, 1);
                state
                    .insert("vote", encode(&vote).expect("encode").as_slice())
                    .expect("vote");
                state
                    .insert("purged", encode(&log_id(3)).expect("encode").as_slice())
                    .expect("purged");
            }
            w.commit().expect("commit");
        }
        let mut log = LogStore::open(dir.path()).expect("open");
        assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(2, 1)));
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(log_id(3)));
        assert_eq!(state.last_log_id, Some(log_id(7)));
        let got = log.try_get_log_entries(4..8).await.expect("entries");
        assert_eq!(
            got.iter().map(|e| e.log_id).collect::<Vec<_>>(),
            (4..8).map(log_id).collect::<Vec<_>>()
        );
        assert!(!dir.path().join("log.redb").exists());
        assert!(dir.path().join("log.redb.migrated").exists());
        drop(log);
        // Opening again finds the segments and nothing to move.
        let mut log = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(
            log.get_log_state().await.expect("state").last_log_id,
            Some(log_id(7))
        );
    }
}

//! openraft's log storage over [`Wal`] (segment files): appends become readable at once and
//! durable in batches — one flusher thread fsyncs whatever has been appended meanwhile and then
//! reports every waiting append (group commit), while appends go on. Where nothing else could
//! go on meanwhile (a follower, or a leader without peers), an append that finds the flusher
//! idle, while fsyncs are fast, is fsynced on the calling task instead: a lone write then skips
//! waking the flusher thread and being woken by it. Everything else runs on the calling task: reads and appends are single
//! positioned reads and writes.
//!
//! A log written by earlier versions (a redb file, `log.redb`) is moved into segment files
//! once, the first time the directory is opened.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::env::StorageIo;
use crate::sync::io_err;
use crate::types::{Entry, LogId, TypeConfig, Vote};
use crate::wal::{Records, Wal, WalState};

fn encode<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    rmp_serde::to_vec(v).map_err(io_err)
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> io::Result<T> {
    rmp_serde::from_slice(b).map_err(io_err)
}

/// Told the duration and number of entries of every log fsync (for metrics).
pub type FlushObserver = Arc<dyn Fn(Duration, usize) + Send + Sync>;

/// An append is fsynced on the calling task only while the last fsync took less than this: a
/// disk that has turned slow holds up the async runtime's thread at most once before appends
/// go back to the flusher.
const INLINE_FSYNC_MAX: Duration = Duration::from_millis(1);

struct Inner {
    wal: Wal,
    /// The flusher thread's queue; `None` with inline storage IO (appends fsync themselves).
    flush: Option<mpsc::Sender<(IOFlushed<TypeConfig>, usize)>>,
    observer: Option<FlushObserver>,
    /// Appends handed to the flusher thread and not yet reported.
    queued: AtomicUsize,
    /// How long the last fsync took, in microseconds.
    last_fsync_us: AtomicU64,
    /// Whether appends may be fsynced on the calling task (see [`LogStore::flush_inline`]).
    inline_allowed: AtomicBool,
    /// When the log was opened: the zero of `last_append_us`.
    opened: Instant,
    /// When the last append came, in microseconds since `opened`.
    last_append_us: AtomicU64,
}

impl Inner {
    /// Whether an append may be fsynced on the calling task: it is allowed here, nothing is
    /// waiting for the flusher (so reports stay in append order), the disk has been quick, and
    /// appends come slower than fsyncs take. Under a steady stream of appends the flusher
    /// thread is better: appends made during one fsync share the next one.
    fn may_flush_inline(&self) -> bool {
        let now = u64::try_from(self.opened.elapsed().as_micros()).unwrap_or(u64::MAX);
        let since_last = now.saturating_sub(self.last_append_us.swap(now, Ordering::Relaxed));
        let fsync = self.last_fsync_us.load(Ordering::Relaxed);
        self.inline_allowed.load(Ordering::Relaxed)
            && self.queued.load(Ordering::Acquire) == 0
            && fsync < INLINE_FSYNC_MAX.as_micros() as u64
            && since_last > 2 * fsync
    }

    /// Fsyncs and reports the result to every waiting append.
    fn flush_and_report(&self, waiting: Vec<(IOFlushed<TypeConfig>, usize)>) {
        let started = Instant::now();
        let result = self.wal.sync();
        let took = started.elapsed();
        self.last_fsync_us.store(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if let Err(e) = &result {
            tracing::error!(error = %e, "flushing the Raft log failed");
        }
        if let Some(observe) = &self.observer {
            observe(took, waiting.iter().map(|(_, n)| n).sum());
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
            queued: AtomicUsize::new(0),
            last_fsync_us: AtomicU64::new(0),
            inline_allowed: AtomicBool::new(false),
            opened: Instant::now(),
            last_append_us: AtomicU64::new(0),
        });
        if let Some(rx) = queue {
            let weak = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name("berth-log-flush".into())
                .spawn(move || flusher(weak, rx))?;
        }
        Ok(LogStore { inner })
    }

    /// Lets lone appends be fsynced on the calling task (`true`) or always hands them to the
    /// flusher thread (`false`, the default). Allow it only where the caller has nothing else
    /// to do until the append is durable: a leader with peers must not, as it sends the new
    /// entries to its followers while its own fsync runs.
    pub fn flush_inline(&self, allowed: bool) {
        self.inner.inline_allowed.store(allowed, Ordering::Relaxed);
    }
}

/// Fsyncs appended entries in batches and reports each batch's appends as flushed.
fn flusher(inner: std::sync::Weak<Inner>, rx: mpsc::Receiver<(IOFlushed<TypeConfig>, usize)>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        waiting.extend(rx.try_iter());
        let Some(inner) = inner.upgrade() else { return };
        let n = waiting.len();
        inner.flush_and_report(waiting);
        inner.queued.fetch_sub(n, Ordering::AcqRel);
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
            Some(queue) if !self.inner.may_flush_inline() => {
                self.inner.queued.fetch_add(1, Ordering::AcqRel);
                queue.send((callback, count)).map_err(|_| {
                    self.inner.queued.fetch_sub(1, Ordering::AcqRel);
                    io::Error::other("log flusher stopped")
                })
            }
            _ => {
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

    /// Appends entry `index` with a callback that signals its result.
    async fn append_signalled(
        log: &mut LogStore,
        index: u64,
    ) -> openraft::type_config::alias::OneshotReceiverOf<TypeConfig, Result<(), io::Error>> {
        use openraft::type_config::TypeConfigExt;
        let (tx, rx) = TypeConfig::oneshot();
        log.append([Entry::new_blank(log_id(index))], IOFlushed::signal(tx))
            .await
            .expect("append");
        rx
    }

    #[tokio::test]
    async fn a_lone_append_is_fsynced_on_the_calling_task_only_where_allowed_and_while_the_disk_is_quick(
    ) {
        use futures::FutureExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = LogStore::open(dir.path()).expect("open");
        // Not allowed (the default): the flusher thread reports it.
        append_signalled(&mut log, 1)
            .await
            .await
            .expect("sender kept")
            .expect("flushed");
        let deadline = Instant::now() + Duration::from_secs(5);
        while log.inner.queued.load(Ordering::Acquire) != 0 {
            assert!(Instant::now() < deadline, "queued append never counted out");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        log.flush_inline(true);
        // Idle flusher, quick disk (whatever this machine's is), appends far apart: reported
        // before `append` returns.
        log.inner.last_fsync_us.store(0, Ordering::Relaxed);
        let rx = append_signalled(&mut log, 2).await;
        let reported = rx.now_or_never().expect("reported during the append");
        reported.expect("sender kept").expect("flushed");
        assert_eq!(log.inner.queued.load(Ordering::Acquire), 0);

        // A slow last fsync: the flusher thread takes the next appends, in order. (Its own
        // quick fsyncs would allow inline ones again, so the slow one is set before each.)
        let mut waiting = Vec::new();
        for i in 3..7 {
            log.inner
                .last_fsync_us
                .store(INLINE_FSYNC_MAX.as_micros() as u64 + 1, Ordering::Relaxed);
            waiting.push(append_signalled(&mut log, i).await);
        }
        for rx in waiting {
            rx.await.expect("sender kept").expect("flushed");
        }
        // The flusher counts its appends out after reporting them.
        let deadline = Instant::now() + Duration::from_secs(5);
        while log.inner.queued.load(Ordering::Acquire) != 0 {
            assert!(
                Instant::now() < deadline,
                "queued appends never counted out"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id, Some(log_id(6)));
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

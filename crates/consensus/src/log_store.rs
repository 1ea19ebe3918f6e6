//! The Raft log on disk, in its own redb file: entries, vote, committed id and purge mark.
//! Appends become readable at once and durable in batches: one flusher thread fsyncs
//! whatever has been appended meanwhile and then reports every waiting append (group commit).
//! Everything else runs on the calling task: reads and fsync-free transactions are shorter
//! than a hand-off to a blocking thread.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::env::StorageIo;
use crate::types::{Entry, LogId, TypeConfig, Vote};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";
const FLUSHES: &str = "flushes";

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
    db: Database,
    /// The flusher thread's queue; `None` with inline storage IO (appends fsync themselves).
    flush: Option<mpsc::Sender<(IOFlushed<TypeConfig>, usize)>>,
    observer: Option<FlushObserver>,
}

impl Inner {
    fn get_state<T: DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        let txn = self.db.begin_read().map_err(io_err)?;
        let table = txn.open_table(STATE).map_err(io_err)?;
        let raw = table.get(key).map_err(io_err)?;
        raw.map(|g| decode(g.value())).transpose()
    }

    fn put_state<T: Serialize>(&self, key: &str, value: &T, durable: bool) -> io::Result<()> {
        let bytes = encode(value)?;
        let mut txn = self.db.begin_write().map_err(io_err)?;
        if !durable {
            txn.set_durability(redb::Durability::None).map_err(io_err)?;
        }
        txn.open_table(STATE)
            .map_err(io_err)?
            .insert(key, bytes.as_slice())
            .map_err(io_err)?;
        txn.commit().map_err(io_err)
    }

    /// Makes every earlier non-durable commit durable: one durable commit persists them all.
    fn flush(&self) -> io::Result<()> {
        let txn = self.db.begin_write().map_err(io_err)?;
        {
            let mut t = txn.open_table(STATE).map_err(io_err)?;
            let n: u64 = match t.get(FLUSHES).map_err(io_err)? {
                Some(g) => decode(g.value())?,
                None => 0,
            };
            t.insert(FLUSHES, encode(&(n + 1))?.as_slice())
                .map_err(io_err)?;
        }
        txn.commit().map_err(io_err)
    }

    /// Flushes and reports the result to every waiting append.
    fn flush_and_report(&self, waiting: Vec<(IOFlushed<TypeConfig>, usize)>) {
        let started = std::time::Instant::now();
        let result = self.flush();
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

/// The log store; cheap to clone (clones share the database).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

impl LogStore {
    /// Opens or creates the log in `dir/log.redb` and starts its flusher thread.
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
        std::fs::create_dir_all(dir)?;
        // Entries are read back soon after they are written, or not at all: a small cache.
        let db = Database::builder()
            .set_cache_size(16 << 20)
            .create(dir.join("log.redb"))
            .map_err(io_err)?;
        {
            let w = db.begin_write().map_err(io_err)?;
            w.open_table(ENTRIES).map_err(io_err)?;
            w.open_table(STATE).map_err(io_err)?;
            w.commit().map_err(io_err)?;
        }
        if io == StorageIo::Inline {
            let inner = Arc::new(Inner {
                db,
                flush: None,
                observer,
            });
            return Ok(LogStore { inner });
        }
        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            db,
            flush: Some(tx),
            observer,
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("berth-log-flush".into())
            .spawn(move || flusher(weak, rx))?;
        Ok(LogStore { inner })
    }

    /// Runs one short storage step on the calling task. Every step is a read or a redb
    /// transaction without fsync (those that fsync are rare: votes and truncations), so
    /// handing it to a blocking thread would cost more in wake-ups than the step itself.
    fn step<T>(&self, f: impl FnOnce(&Inner) -> io::Result<T>) -> io::Result<T> {
        f(&self.inner)
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
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        self.step(move |inner| {
            let txn = inner.db.begin_read().map_err(io_err)?;
            let table = txn.open_table(ENTRIES).map_err(io_err)?;
            let mut out = Vec::new();
            for item in table.range(bounds).map_err(io_err)? {
                let (_, v) = item.map_err(io_err)?;
                out.push(decode(v.value())?);
            }
            Ok(out)
        })
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.step(|inner| inner.get_state(VOTE))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        self.step(|inner| {
            let purged: Option<LogId> = inner.get_state(PURGED)?;
            let txn = inner.db.begin_read().map_err(io_err)?;
            let table = txn.open_table(ENTRIES).map_err(io_err)?;
            let last = match table.last().map_err(io_err)? {
                Some((_, v)) => Some(decode::<Entry>(v.value())?.log_id),
                None => purged,
            };
            Ok(LogState {
                last_purged_log_id: purged,
                last_log_id: last,
            })
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        let vote = *vote;
        self.step(move |inner| inner.put_state(VOTE, &vote, true))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        // Losing the newest committed id in a crash only means re-learning it from the leader.
        self.step(move |inner| inner.put_state(COMMITTED, &committed, false))
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        self.step(|inner| Ok(inner.get_state::<Option<LogId>>(COMMITTED)?.flatten()))
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for e in entries {
            encoded.push((e.log_id.index, encode(&e)?));
        }
        self.step(move |inner| {
            let mut txn = inner.db.begin_write().map_err(io_err)?;
            // Visible now, durable with the flusher's next commit.
            txn.set_durability(redb::Durability::None).map_err(io_err)?;
            {
                let mut table = txn.open_table(ENTRIES).map_err(io_err)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice()).map_err(io_err)?;
                }
            }
            txn.commit().map_err(io_err)?;
            let count = encoded.len();
            match &inner.flush {
                Some(queue) => queue
                    .send((callback, count))
                    .map_err(|_| io::Error::other("log flusher stopped")),
                None => {
                    inner.flush_and_report(vec![(callback, count)]);
                    Ok(())
                }
            }
        })
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        self.step(move |inner| {
            let from = last_log_id.map(|l| l.index + 1).unwrap_or(0);
            let txn = inner.db.begin_write().map_err(io_err)?;
            {
                let mut table = txn.open_table(ENTRIES).map_err(io_err)?;
                table.retain_in(from.., |_, _| false).map_err(io_err)?;
            }
            txn.commit().map_err(io_err)
        })
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        self.step(move |inner| {
            let txn = {
                let mut txn = inner.db.begin_write().map_err(io_err)?;
                txn.set_durability(redb::Durability::None).map_err(io_err)?;
                txn
            };
            {
                let mut table = txn.open_table(ENTRIES).map_err(io_err)?;
                table
                    .retain_in(..=log_id.index, |_, _| false)
                    .map_err(io_err)?;
                txn.open_table(STATE)
                    .map_err(io_err)?
                    .insert(PURGED, encode(&log_id)?.as_slice())
                    .map_err(io_err)?;
            }
            txn.commit().map_err(io_err)
        })
    }
}

//! The store: one redb database plus the in-memory key index, lessor and watch hub. This file
//! opens the database file and rebuilds the in-memory state from it, and holds the read API and
//! the batched write API; watches, leases and maintenance are `impl Store` blocks in
//! `store/watch.rs`, `store/lease.rs` and `store/maintenance.rs`.
//!
//! Invariant: readers never look past [`Store::revision`], which moves only after a batch has
//! committed. A committed batch is *visible*; whether it is also *durable* depends on how it
//! was applied (the consensus layer applies with `durable == false`, because its Raft log is
//! what makes a write durable, and the store reaches disk at the next durable commit).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use berth_proto::etcdserverpb::{RangeRequest, RangeResponse, TxnRequest, TxnResponse};
use berth_proto::mvccpb::KeyValue;
use redb::{Database, ReadableDatabase, ReadableTable};

use crate::apply::{read_alarms, read_counters, Applied, Command, Entry, Guard, Writer};
use crate::backend::{decode, Change, BLOBS, LEASES, META, META_APPLIED, REVS};
use crate::error::{DbResult, Result, StoreError};
use crate::file::SeverableFile;
use crate::index::{KeyIndex, KeySpan, KeyVersion};
use crate::keyspace::Keyspace;
use crate::lease::{LeaseLimits, Lessor};
use crate::read;
use crate::revision::Revision;
use crate::sync::LockExt;
use crate::watch::Hub;
use berth_proto::etcdserverpb::{AlarmMember, AlarmType};

mod lease;
mod maintenance;
mod watch;

pub use maintenance::StoreView;

/// Most events a catching-up watcher receives in one response.
const REPLAY_CHUNK: usize = 1000;
/// How stale the database size may be.
const SIZE_REFRESH: Duration = Duration::from_millis(100);

/// Options for opening a store.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Lease TTL limits.
    pub lease_limits: LeaseLimits,
    /// redb page cache in bytes (0 = engine default).
    pub cache_bytes: usize,
}

/// Counts a caller may export.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreStats {
    /// Newest revision.
    pub revision: i64,
    /// Compaction mark.
    pub compacted: i64,
    /// Keys in the index (live or with history).
    pub keys: usize,
    /// Leases.
    pub leases: usize,
    /// Watchers.
    pub watchers: usize,
    /// Size of the database file in bytes.
    pub db_size: u64,
}

/// The MVCC key-value store.
pub struct Store {
    me: Weak<Store>,
    path: PathBuf,
    /// Write-locked only while defragmenting; every transaction takes it shared.
    db: RwLock<Database>,
    index: RwLock<KeyIndex>,
    lessor: Mutex<Lessor>,
    /// Newest revision whose batch has committed (is visible); readers never look past it.
    /// Not necessarily durable: see the module doc.
    current: AtomicI64,
    hub: Mutex<Hub>,
    /// Commands applied so far (persisted in `meta` with every batch that writes).
    applied: AtomicU64,
    /// Size of the database file, refreshed after commits at most every `SIZE_REFRESH`.
    db_size: AtomicU64,
    /// Serializes write batches; holds when the database file's size was last read.
    writer: Mutex<Instant>,
    /// Runtime for watch replay tasks, when the store was opened inside one.
    runtime: Option<tokio::runtime::Handle>,
    /// Thrown by [`Store::sever_file`]: nothing more reaches the database file.
    severed: Arc<AtomicBool>,
    /// Active alarms, as applied (replicated through [`Command::Alarm`]).
    alarms: Mutex<Vec<AlarmMember>>,
    /// Whether a NOSPACE alarm is among them (read for every write request).
    no_space: AtomicBool,
}

/// Opens (or creates) the database file at `path` through the switch `severed`.
fn open_file(builder: &redb::Builder, path: &Path, severed: &Arc<AtomicBool>) -> Result<Database> {
    builder
        .create_with_backend(SeverableFile::open(path, severed.clone()).db()?)
        .db()
}

fn has_no_space(alarms: &[AlarmMember]) -> bool {
    alarms.iter().any(|a| a.alarm == AlarmType::Nospace as i32)
}

impl Store {
    /// Opens (or creates) the store in `dir`, rebuilding the index from stored history.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Arc<Store>> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("kv.redb");
        let mut builder = Database::builder();
        if opts.cache_bytes > 0 {
            builder.set_cache_size(opts.cache_bytes);
        }
        let severed = Arc::new(AtomicBool::new(false));
        let db = open_file(&builder, &path, &severed)?;
        crate::layout::prepare(&db)?;
        let (index, lessor, current, applied) = Self::load(&db, opts.lease_limits)?;
        let alarms = Self::load_alarms(&db)?;
        let db_size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        tracing::info!(
            path = %path.display(),
            revision = current,
            compacted = index.compacted(),
            keys = index.key_count(),
            leases = lessor.len(),
            "store opened"
        );
        Ok(Arc::new_cyclic(|me| Store {
            me: me.clone(),
            path,
            db: RwLock::new(db),
            index: RwLock::new(index),
            lessor: Mutex::new(lessor),
            current: AtomicI64::new(current),
            hub: Mutex::new(Hub::default()),
            applied: AtomicU64::new(applied),
            db_size: AtomicU64::new(db_size),
            writer: Mutex::new(Instant::now()),
            runtime: tokio::runtime::Handle::try_current().ok(),
            severed,
            no_space: AtomicBool::new(has_no_space(&alarms)),
            alarms: Mutex::new(alarms),
        }))
    }

    fn load_alarms(db: &Database) -> Result<Vec<AlarmMember>> {
        let r = db.begin_read().db()?;
        read_alarms(&r.open_table(META).db()?)
    }

    /// The active alarms, as every member applied them.
    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.alarms.locked().clone()
    }

    /// Whether a NOSPACE alarm is active: writes that grow the database are refused.
    pub fn no_space(&self) -> bool {
        self.no_space.load(Ordering::Acquire)
    }

    fn set_alarms(&self, alarms: Vec<AlarmMember>) {
        self.no_space
            .store(has_no_space(&alarms), Ordering::Release);
        *self.alarms.locked() = alarms;
    }

    fn load(db: &Database, limits: LeaseLimits) -> Result<(KeyIndex, Lessor, i64, u64)> {
        let r = db.begin_read().db()?;
        let revs = r.open_table(REVS).db()?;
        let meta = r.open_table(META).db()?;
        let leases = r.open_table(LEASES).db()?;
        let counters = read_counters(&meta)?;
        let (mut current, compacted) = (counters.revision, counters.compacted);
        let mut index = KeyIndex::default();
        index.set_compacted(compacted);
        let mut lessor = Lessor::new(limits);
        let now = Instant::now();
        for item in leases.iter().db()? {
            let (id, ttl) = item.db()?;
            lessor.insert(id.value(), ttl.value(), now);
        }
        for item in revs.iter().db()? {
            let (k, v) = item.db()?;
            let rev = Revision::from_key(k.value());
            let Change {
                kv,
                tombstone,
                keyspace,
            } = decode(v.value())?;
            current = current.max(rev.main);
            let ver = if tombstone {
                KeyVersion {
                    rev,
                    create: 0,
                    version: 0,
                    lease: 0,
                }
            } else {
                KeyVersion {
                    rev,
                    create: kv.create_revision,
                    version: kv.version,
                    lease: kv.lease,
                }
            };
            index.restore(keyspace, &kv.key, ver);
        }
        // Attach every live key, of every keyspace, to its lease.
        for ks in Keyspace::ALL {
            index.for_each_live(ks, &KeySpan::From(Vec::new()), current, |k, v| {
                if v.lease != 0 {
                    lessor.attach(v.lease, ks, k);
                }
                true
            });
        }
        // A fresh store starts at revision 1, as etcd's does.
        Ok((index, lessor, current.max(1), counters.applied))
    }

    /// Commands applied so far (every batch that wrote; see the module doc for when they
    /// are durable).
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Newest visible revision (every batch up to it has committed; see the module doc).
    pub fn revision(&self) -> i64 {
        self.current.load(Ordering::Acquire)
    }

    /// Size of the database file in bytes, as of the last commit.
    pub fn db_size(&self) -> u64 {
        self.db_size.load(Ordering::Acquire)
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves a Range request over user keys at the newest visible revision (or an older one
    /// it names). Callers make it linearizable by waiting for a read index first.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        self.range_in(Keyspace::User, req)
    }

    /// [`Store::range`] over the keys of `ks`.
    pub fn range_in(&self, ks: Keyspace, req: &RangeRequest) -> Result<RangeResponse> {
        let current = self.revision();
        let db = self.db.shared();
        // The snapshot is taken after `current` is read, so it holds every revision ≤ current,
        // and before the index is read, so values compacted away later are still in it.
        let txn = db.begin_read().db()?;
        let revs = txn.open_table(REVS).db()?;
        let index = self.index.shared();
        read::range(&index, &revs, ks, req, current)
    }

    /// The live key-value of user key `key` as of `rev`, if any (used for watch `prev_kv`).
    pub fn get_at(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>> {
        self.get_at_in(Keyspace::User, key, rev)
    }

    /// [`Store::get_at`] for a key of `ks`.
    pub fn get_at_in(&self, ks: Keyspace, key: &[u8], rev: i64) -> Result<Option<KeyValue>> {
        let db = self.db.shared();
        let txn = db.begin_read().db()?;
        let revs = txn.open_table(REVS).db()?;
        let index = self.index.shared();
        if rev < index.compacted() {
            return Ok(None);
        }
        match index.get(ks, key, rev) {
            Some(v) => Ok(Some(read::materialize(&revs, key, v, true)?)),
            None => Ok(None),
        }
    }

    /// Applies a batch of commands on user keys in one durable transaction (one fsync for
    /// all of them), then publishes the new revision and notifies watchers. Results are in
    /// command order. (Consensus applies through [`Store::apply_batch_with`] without the fsync
    /// instead.)
    ///
    /// An `Err` here means the storage engine failed: the in-memory state may be ahead of
    /// disk and the caller must stop serving (as etcd does on a backend failure).
    pub fn apply_batch(&self, cmds: &[Command]) -> Result<Vec<Result<Applied>>> {
        self.apply_batch_in(Keyspace::User, cmds)
    }

    /// [`Store::apply_batch`] on the keys of `ks`.
    pub fn apply_batch_in(&self, ks: Keyspace, cmds: &[Command]) -> Result<Vec<Result<Applied>>> {
        self.apply_commands(cmds.iter().map(|c| (ks, None, c)), cmds.len(), &[], true)
    }

    /// Evaluates a txn that cannot write (no put or delete on any path) at the newest visible
    /// revision, with no log entry, as etcd serves read-only txns after a read index. It runs
    /// on the write path's evaluator inside a write transaction that is then dropped (nothing
    /// is written), so it holds the writer lock while it runs and sees exactly a batch
    /// boundary. A txn that could write is refused, never applied.
    pub fn txn_read(&self, t: TxnRequest) -> Result<TxnResponse> {
        self.txn_read_in(Keyspace::User, t)
    }

    /// [`Store::txn_read`] over the keys of `ks`.
    pub fn txn_read_in(&self, ks: Keyspace, t: TxnRequest) -> Result<TxnResponse> {
        if !crate::apply::txn_is_read_only(&t) {
            return Err(StoreError::Corrupt(
                "txn_read given a txn that can write".into(),
            ));
        }
        match self.apply_batch_in(ks, &[Command::Txn(t)])?.pop() {
            Some(Ok(Applied::Txn(resp))) => Ok(resp),
            Some(Err(e)) => Err(e),
            other => Err(StoreError::Corrupt(format!(
                "a read-only txn produced {other:?}"
            ))),
        }
    }

    /// [`Store::apply_batch`] for a consensus layer: `blobs` are written in the same
    /// transaction (e.g. the applied log id), and with `durable == false` the batch is visible
    /// at once but reaches disk only with a later durable batch or [`Store::flush`] — the
    /// replicated log, not the store, is then what makes the write durable. Each entry names
    /// its keyspace and guard (as its log entry does).
    pub fn apply_batch_with(
        &self,
        entries: &[Entry],
        blobs: &[(&str, &[u8])],
        durable: bool,
    ) -> Result<Vec<Result<Applied>>> {
        self.apply_commands(
            entries
                .iter()
                .map(|e| (e.keyspace, e.guard.as_ref(), &e.command)),
            entries.len(),
            blobs,
            durable,
        )
    }

    /// The newest revision at which a key of `ks` in `span` was put or deleted (0: none
    /// since the history compaction kept). Reads only the in-memory index.
    pub fn last_change_in(&self, ks: Keyspace, span: &KeySpan) -> i64 {
        self.index.shared().last_change(ks, span)
    }

    /// The mod revision of `key` in `ks` as applied here (0 if absent): what a [`Guard`]
    /// on it names. Reads only the in-memory index.
    pub fn mod_revision_in(&self, ks: Keyspace, key: &[u8]) -> i64 {
        let current = self.revision();
        self.index
            .shared()
            .get(ks, key, current)
            .map_or(0, |v| v.rev.main)
    }

    fn apply_commands<'c>(
        &self,
        cmds: impl Iterator<Item = (Keyspace, Option<&'c Guard>, &'c Command)>,
        count: usize,
        blobs: &[(&str, &[u8])],
        durable: bool,
    ) -> Result<Vec<Result<Applied>>> {
        let mut size_read = self.writer.locked();
        let db = self.db.shared();
        let mut txn = db.begin_write().db()?;
        if !durable {
            txn.set_durability(redb::Durability::None).db()?;
        }
        let first = self.revision() + 1;
        let mut alarm_changed = false;
        let (results, events, current, dirty, alarms) = {
            let mut revs = txn.open_table(REVS).db()?;
            let mut leases = txn.open_table(LEASES).db()?;
            let mut meta = txn.open_table(META).db()?;
            let mut index = self.index.locked();
            let mut lessor = self.lessor.locked();
            let mut alarms = self.alarms.locked().clone();
            let mut w = Writer {
                index: &mut index,
                lessor: &mut lessor,
                revs: &mut revs,
                leases: &mut leases,
                meta: &mut meta,
                alarms: &mut alarms,
                current: first - 1,
                events: Vec::new(),
                ks: Keyspace::User,
                mixed: false,
                now: Instant::now(),
                dirty: false,
            };
            let mut results = Vec::with_capacity(count);
            for (ks, guard, cmd) in cmds {
                if guard.is_some_and(|g| !w.guard_holds(g)) {
                    results.push(Err(StoreError::GuardStale));
                    continue;
                }
                alarm_changed |= matches!(cmd, Command::Alarm(_));
                let r = w.apply(ks, cmd);
                if let Err(StoreError::Storage(e)) = r {
                    return Err(StoreError::Storage(e));
                }
                results.push(r);
            }
            if !blobs.is_empty() {
                let mut table = txn.open_table(BLOBS).db()?;
                for (name, value) in blobs {
                    table.insert(*name, *value).db()?;
                }
                w.dirty = true;
            }
            if w.dirty {
                let applied = self.applied.load(Ordering::Acquire) + count as u64;
                w.meta.insert(META_APPLIED, applied as i64).db()?;
            }
            (results, w.events, w.current, w.dirty, alarms)
        };
        if dirty {
            txn.commit().db()?;
            if alarm_changed {
                self.set_alarms(alarms);
            }
            self.applied.fetch_add(count as u64, Ordering::AcqRel);
            // The size feeds the space quota and metrics; reading it at most every
            // SIZE_REFRESH saves a stat per batch.
            if size_read.elapsed() >= SIZE_REFRESH {
                *size_read = Instant::now();
                let size = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
                self.db_size.store(size, Ordering::Release);
            }
        } else {
            txn.abort().db()?;
        }
        drop(db);
        self.publish(events, first, current);
        Ok(results)
    }

    /// Counts for status and metrics.
    pub fn stats(&self) -> StoreStats {
        let (keys, compacted) = {
            let ix = self.index.shared();
            (ix.key_count(), ix.compacted())
        };
        StoreStats {
            revision: self.revision(),
            compacted,
            keys,
            leases: self.lessor.locked().len(),
            watchers: self.hub.locked().len(),
            db_size: self.db_size(),
        }
    }

    /// The stored blob `name`, if any.
    pub fn blob(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let txn = self.db.shared().begin_read().db()?;
        StoreView { txn }.blob(name)
    }
}

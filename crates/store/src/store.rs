//! The store: one redb database plus the in-memory key index, lessor and watch hub, with the
//! read API, the batched (group-committed) write API and the watch API on top.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use berth_proto::etcdserverpb::{RangeRequest, RangeResponse};
use berth_proto::mvccpb::{event::EventType, Event, KeyValue};
use redb::{Database, ReadableDatabase, ReadableTable};

use crate::apply::{read_alarms, read_counters, Applied, Command, Writer};
use crate::backend::{decode, BLOBS, LEASES, META, META_APPLIED, REVS};
use crate::error::{DbResult, Result, StoreError};
use crate::file::SeverableFile;
use crate::index::{KeyIndex, KeySpan, KeyVersion};
use crate::lease::{LeaseInfo, LeaseLimits, Lessor};
use crate::read;
use crate::revision::Revision;
use crate::watch::{Hub, WatchHandle, WatchSink, WatchSpec, Watcher};
use berth_proto::etcdserverpb::{AlarmMember, AlarmType};

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
    /// Newest revision whose batch is durable; readers never look past it.
    current: AtomicI64,
    hub: Mutex<Hub>,
    /// Commands applied (persisted with each durable batch).
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data (every mutation is a
    // single step), so recover the guard instead of propagating the poison.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read_lock<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write_lock<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
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
        {
            let w = db.begin_write().db()?;
            w.open_table(REVS).db()?;
            w.open_table(META).db()?;
            w.open_table(LEASES).db()?;
            w.open_table(BLOBS).db()?;
            w.commit().db()?;
        }
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
        lock(&self.alarms).clone()
    }

    /// Whether a NOSPACE alarm is active: writes that grow the database are refused.
    pub fn no_space(&self) -> bool {
        self.no_space.load(Ordering::Acquire)
    }

    fn set_alarms(&self, alarms: Vec<AlarmMember>) {
        self.no_space
            .store(has_no_space(&alarms), Ordering::Release);
        *lock(&self.alarms) = alarms;
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
            let (kv, tombstone) = decode(v.value())?;
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
            index.restore(&kv.key, ver);
        }
        // Attach every live key to its lease.
        index.for_each_live(&KeySpan::From(Vec::new()), current, |k, v| {
            if v.lease != 0 {
                lessor.attach(v.lease, k);
            }
            true
        });
        // A fresh store starts at revision 1, as etcd's does.
        Ok((index, lessor, current.max(1), counters.applied))
    }

    /// Newest durable revision.
    pub fn revision(&self) -> i64 {
        self.current.load(Ordering::Acquire)
    }

    /// Commands applied to durable state so far (survives restarts; the log index of a
    /// single member).
    pub fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Size of the database file in bytes, as of the last commit.
    pub fn db_size(&self) -> u64 {
        self.db_size.load(Ordering::Acquire)
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves a Range request (linearizable on a single member: it reads the newest durable state).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        let current = self.revision();
        let db = read_lock(&self.db);
        // The snapshot is taken after `current` is read, so it holds every revision ≤ current,
        // and before the index is read, so values compacted away later are still in it.
        let txn = db.begin_read().db()?;
        let revs = txn.open_table(REVS).db()?;
        let index = read_lock(&self.index);
        read::range(&index, &revs, req, current)
    }

    /// The live key-value of `key` as of `rev`, if any (used for watch `prev_kv`).
    pub fn get_at(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>> {
        let db = read_lock(&self.db);
        let txn = db.begin_read().db()?;
        let revs = txn.open_table(REVS).db()?;
        let index = read_lock(&self.index);
        if rev < index.compacted() {
            return Ok(None);
        }
        match index.get(key, rev) {
            Some(v) => Ok(Some(read::materialize(&revs, key, v, true)?)),
            None => Ok(None),
        }
    }

    /// Applies a batch of commands in one durable transaction (one fsync for all of them),
    /// then publishes the new revision and notifies watchers. Results are in command order.
    ///
    /// An `Err` here means the storage engine failed: the in-memory state may be ahead of
    /// disk and the caller must stop serving (as etcd does on a backend failure).
    pub fn apply_batch(&self, cmds: &[Command]) -> Result<Vec<Result<Applied>>> {
        self.apply_batch_with(cmds, &[], true)
    }

    /// [`Store::apply_batch`] for a consensus layer: `blobs` are written in the same
    /// transaction (e.g. the applied log id), and with `durable == false` the batch is visible
    /// at once but reaches disk only with a later durable batch or [`Store::flush`] — the
    /// replicated log, not the store, is then what makes the write durable.
    pub fn apply_batch_with(
        &self,
        cmds: &[Command],
        blobs: &[(&str, &[u8])],
        durable: bool,
    ) -> Result<Vec<Result<Applied>>> {
        let mut size_read = lock(&self.writer);
        let db = read_lock(&self.db);
        let mut txn = db.begin_write().db()?;
        if !durable {
            txn.set_durability(redb::Durability::None).db()?;
        }
        let first = self.revision() + 1;
        let (results, events, current, dirty, alarms) = {
            let mut revs = txn.open_table(REVS).db()?;
            let mut leases = txn.open_table(LEASES).db()?;
            let mut meta = txn.open_table(META).db()?;
            let mut index = write_lock(&self.index);
            let mut lessor = lock(&self.lessor);
            let mut alarms = lock(&self.alarms).clone();
            let mut w = Writer {
                index: &mut index,
                lessor: &mut lessor,
                revs: &mut revs,
                leases: &mut leases,
                meta: &mut meta,
                alarms: &mut alarms,
                current: first - 1,
                events: Vec::new(),
                now: Instant::now(),
                dirty: false,
            };
            let mut results = Vec::with_capacity(cmds.len());
            for cmd in cmds {
                let r = w.apply(cmd);
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
                let applied = self.applied.load(Ordering::Acquire) + cmds.len() as u64;
                w.meta.insert(META_APPLIED, applied as i64).db()?;
            }
            (results, w.events, w.current, w.dirty, alarms)
        };
        if dirty {
            txn.commit().db()?;
            if cmds.iter().any(|c| matches!(c, Command::Alarm(_))) {
                self.set_alarms(alarms);
            }
            self.applied.fetch_add(cmds.len() as u64, Ordering::AcqRel);
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

    /// Makes `current` visible and hands the batch's events to watchers, atomically with
    /// respect to watcher registration so no watcher sees a gap or a duplicate.
    fn publish(&self, events: Vec<Event>, first: i64, current: i64) {
        let behind = {
            let mut hub = lock(&self.hub);
            self.current.store(current, Ordering::Release);
            if events.is_empty() {
                return;
            }
            let behind = hub.dispatch(&events, first, current);
            hub.catching_up += behind.len();
            behind
        };
        for (id, w, from) in behind {
            tracing::debug!(
                watch_id = w.watch_id,
                from,
                "watcher fell behind, replaying from history"
            );
            self.spawn_catch_up(id, w, from);
        }
    }

    /// Registers a watcher whose responses go to `tx` tagged with `watch_id`. A start revision
    /// at or below the newest one replays history first, then continues live.
    pub fn watch(&self, spec: WatchSpec, watch_id: i64, sink: WatchSink) -> WatchHandle {
        let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut hub = lock(&self.hub);
        let id = hub.new_id();
        let current = self.revision();
        let start = spec.start_rev;
        let w = Watcher {
            spec,
            watch_id,
            sink,
            cancelled: cancelled.clone(),
        };
        if start == 0 || start > current {
            hub.add(id, w);
        } else {
            hub.catching_up += 1;
            drop(hub);
            self.spawn_catch_up(id, w, start);
        }
        WatchHandle { id, cancelled }
    }

    /// Stops a watch; no response for it is sent after this returns (except one in flight).
    pub fn cancel_watch(&self, h: &WatchHandle) {
        h.cancelled.store(true, Ordering::Release);
        lock(&self.hub).remove(h.id);
    }

    /// The newest revision, read so that every event up to it has already been handed to
    /// synced watchers' channels (what a progress notification may promise).
    pub fn progress_revision(&self) -> i64 {
        let _hub = lock(&self.hub);
        self.revision()
    }

    /// True when the watcher is live (not replaying history).
    pub fn watch_synced(&self, h: &WatchHandle) -> bool {
        lock(&self.hub).is_synced(h.id)
    }

    fn spawn_catch_up(&self, id: u64, w: Watcher, from: i64) {
        let Some(store) = self.me.upgrade() else {
            return;
        };
        // Writes may be applied on a thread outside the runtime: use the one the store was
        // opened on when the current thread has none.
        let handle = tokio::runtime::Handle::try_current()
            .ok()
            .or_else(|| self.runtime.clone());
        match handle {
            Some(h) => {
                h.spawn(async move {
                    store.catch_up(id, w, from).await;
                });
            }
            None => {
                tracing::error!(
                    watch_id = w.watch_id,
                    "no async runtime to replay a watch; dropping it"
                );
                lock(&self.hub).catching_up -= 1;
            }
        }
    }

    /// Replays history from `next` until the watcher reaches the newest revision, then puts
    /// it back into the hub (under the hub lock, so no live event is missed or repeated).
    async fn catch_up(&self, id: u64, w: Watcher, mut next: i64) {
        loop {
            if w.is_cancelled() {
                break;
            }
            let upto = self.revision();
            if next <= upto {
                match self.history(&w.spec, next, upto, REPLAY_CHUNK) {
                    Ok((events, reached)) => {
                        next = reached + 1;
                        if !events.is_empty() && !w.sink.send(w.delivery(reached, events, 0)).await
                        {
                            break;
                        }
                        continue;
                    }
                    Err(StoreError::Compacted) => {
                        let compacted = read_lock(&self.index).compacted();
                        let notice = w.delivery(self.revision(), Vec::new(), compacted);
                        let _ = w.sink.send(notice).await;
                        break;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "watch replay failed");
                        break;
                    }
                }
            }
            let mut hub = lock(&self.hub);
            if self.revision() < next {
                hub.catching_up -= 1;
                if !w.is_cancelled() {
                    let mut w = w;
                    w.spec.start_rev = w.spec.start_rev.max(next);
                    hub.add(id, w);
                }
                return;
            }
        }
        lock(&self.hub).catching_up -= 1;
    }

    /// Stored events for `spec` in revisions `from..=to`, at most about `max` of them (whole
    /// revisions only). Returns the events and the last revision covered.
    fn history(
        &self,
        spec: &WatchSpec,
        from: i64,
        to: i64,
        max: usize,
    ) -> Result<(Vec<Event>, i64)> {
        let db = read_lock(&self.db);
        let txn = db.begin_read().db()?;
        if from < read_lock(&self.index).compacted() {
            return Err(StoreError::Compacted);
        }
        let revs = txn.open_table(REVS).db()?;
        let mut events = Vec::new();
        let mut reached = to;
        for item in revs
            .range(Revision::first_key(from)..Revision::first_key(to + 1))
            .db()?
        {
            let (k, v) = item.db()?;
            let rev = Revision::from_key(k.value());
            if events.len() >= max && rev.sub == 0 {
                reached = rev.main - 1;
                break;
            }
            let (kv, tombstone) = decode(v.value())?;
            let ev = Event {
                r#type: if tombstone {
                    EventType::Delete
                } else {
                    EventType::Put
                } as i32,
                kv: Some(kv),
                prev_kv: None,
            };
            if spec.wants(&ev) {
                events.push(ev);
            }
        }
        Ok((events, reached))
    }

    /// Makes every earlier non-durable batch durable (one fsync).
    pub fn flush(&self) -> Result<()> {
        let _serial = lock(&self.writer);
        Self::durable_commit(&read_lock(&self.db))
    }

    /// A durable commit of `db` (the caller holds the writer lock).
    fn durable_commit(db: &Database) -> Result<()> {
        let txn = db.begin_write().db()?;
        {
            // A write so the commit is never elided.
            let mut meta = txn.open_table(META).db()?;
            let n = meta.get("flushes").db()?.map(|g| g.value()).unwrap_or(0);
            meta.insert("flushes", n + 1).db()?;
        }
        txn.commit().db()
    }

    /// The stored blob `name`, if any.
    pub fn blob(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let txn = read_lock(&self.db).begin_read().db()?;
        StoreView { txn }.blob(name)
    }

    /// Replaces the whole store with the content of a snapshot stream, live: readers see the
    /// old state until the new one is complete, and every watcher is moved to replay from
    /// the revision it had reached (or told it was compacted).
    pub fn install_snapshot(&self, input: impl std::io::Read) -> Result<()> {
        let _serial = lock(&self.writer);
        let staging = self.path.with_extension("installing");
        if staging.exists() {
            std::fs::remove_dir_all(&staging)?;
        }
        crate::snapshot::restore(input, &staging)?;
        let limits = lock(&self.lessor).limits();
        let mut db = write_lock(&self.db);
        // Swap files under the exclusive lock: close the old database by replacing it with the
        // new one opened from its final path.
        std::fs::rename(staging.join("kv.redb"), &self.path)?;
        std::fs::remove_dir_all(&staging)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        *db = open_file(&Database::builder(), &self.path, &self.severed)?;
        let (index, lessor, current, applied) = Self::load(&db, limits)?;
        self.set_alarms(Self::load_alarms(&db)?);
        let mut hub = lock(&self.hub);
        *write_lock(&self.index) = index;
        *lock(&self.lessor) = lessor;
        self.applied.store(applied, Ordering::Release);
        let before = self.current.swap(current, Ordering::AcqRel);
        self.db_size.store(
            std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0),
            Ordering::Release,
        );
        let moved = hub.drain_all();
        hub.catching_up += moved.len();
        drop(hub);
        drop(db);
        tracing::info!(
            revision = current,
            previous = before,
            watchers = moved.len(),
            "installed snapshot"
        );
        for (id, w) in moved {
            let from = w.spec.start_rev.max(before + 1).min(current + 1);
            self.spawn_catch_up(id, w, from);
        }
        Ok(())
    }

    /// Restarts a lease's TTL; returns the TTL or `LeaseNotFound`.
    pub fn lease_renew(&self, id: i64) -> Result<i64> {
        lock(&self.lessor)
            .renew(id, Instant::now())
            .ok_or(StoreError::LeaseNotFound)
    }

    /// Remaining TTL and keys of a lease.
    pub fn lease_info(&self, id: i64) -> Option<LeaseInfo> {
        lock(&self.lessor).info(id, Instant::now())
    }

    /// True when the lease exists.
    pub fn lease_exists(&self, id: i64) -> bool {
        lock(&self.lessor).contains(id)
    }

    /// All lease IDs.
    pub fn lease_ids(&self) -> Vec<i64> {
        lock(&self.lessor).ids()
    }

    /// Leases whose TTL has run out (each reported once per retry interval).
    pub fn expired_leases(&self, max: usize) -> Vec<i64> {
        lock(&self.lessor).take_expired(Instant::now(), max)
    }

    /// When the next lease runs out, if any lease exists.
    pub fn next_lease_expiry(&self) -> Option<Instant> {
        lock(&self.lessor).next_expiry()
    }

    /// Restarts every lease's TTL (used when this member starts leading).
    pub fn renew_all_leases(&self) {
        lock(&self.lessor).renew_all(Instant::now());
    }

    /// Lease TTL limits in force.
    pub fn lease_limits(&self) -> LeaseLimits {
        lock(&self.lessor).limits()
    }

    /// Counts for status and metrics.
    pub fn stats(&self) -> StoreStats {
        let (keys, compacted) = {
            let ix = read_lock(&self.index);
            (ix.key_count(), ix.compacted())
        };
        StoreStats {
            revision: self.revision(),
            compacted,
            keys,
            leases: lock(&self.lessor).len(),
            watchers: lock(&self.hub).len(),
            db_size: self.db_size(),
        }
    }

    /// CRC-32C over every stored change at or below `rev` (0 = newest), as etcd's HashKV.
    /// Returns (hash, compaction revision, revision hashed).
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64)> {
        let current = self.revision();
        let db = read_lock(&self.db);
        let txn = db.begin_read().db()?;
        let compacted = read_lock(&self.index).compacted();
        let rev = if rev <= 0 { current } else { rev };
        if rev > current {
            return Err(StoreError::FutureRevision);
        }
        if rev < compacted {
            return Err(StoreError::Compacted);
        }
        let revs = txn.open_table(REVS).db()?;
        let mut h = crc32c::crc32c(&[]);
        for item in revs.range(..Revision::first_key(rev + 1)).db()? {
            let (k, v) = item.db()?;
            h = crc32c::crc32c_append(h, &k.value().to_be_bytes());
            h = crc32c::crc32c_append(h, v.value());
        }
        Ok((h, compacted, rev))
    }

    /// CRC-32C over the whole logical content (changes, leases, counters).
    pub fn hash(&self) -> Result<u32> {
        let mut h = crc32c::crc32c(&[]);
        let txn = read_lock(&self.db).begin_read().db()?;
        crate::snapshot::write_records(&txn, |chunk| {
            h = crc32c::crc32c_append(h, chunk);
            Ok(())
        })?;
        Ok(h)
    }

    /// Writes a consistent snapshot of the store, chunk by chunk, to `sink`.
    pub fn snapshot(&self, sink: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let txn = read_lock(&self.db).begin_read().db()?;
        crate::snapshot::write_snapshot(&txn, None, sink).map(|_| ())
    }

    /// Cuts the store off from its database file, as a kill -9 would: nothing written after
    /// this reaches the file, including the clean close that would otherwise make pending
    /// non-durable commits durable. For crash simulations that run members in one process.
    pub fn sever_file(&self) {
        self.severed.store(true, Ordering::Release);
    }

    /// Makes everything applied so far durable and returns a view of exactly that state,
    /// which stays as it is while later writes go on (it pins the pages it reads until it is
    /// dropped, so keep it only as long as it is needed). Costs one durable commit; nothing is
    /// copied until the view is written out.
    pub fn durable_view(&self) -> Result<StoreView> {
        let _serial = lock(&self.writer);
        let db = read_lock(&self.db);
        Self::durable_commit(&db)?;
        // Under the writer lock no batch can commit between the two.
        let txn = db.begin_read().db()?;
        Ok(StoreView { txn })
    }

    /// Rewrites the database file to its smallest size. Waits for in-flight transactions.
    pub fn defragment(&self) -> Result<()> {
        let _serial = lock(&self.writer);
        let mut db = write_lock(&self.db);
        let before = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        while db.compact().map_err(|e| StoreError::Storage(e.into()))? {}
        let after = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        self.db_size.store(after, Ordering::Release);
        tracing::info!(before, after, "defragmented");
        Ok(())
    }
}

/// A consistent, read-only view of the store as of one moment (see [`Store::durable_view`]).
pub struct StoreView {
    txn: redb::ReadTransaction,
}

impl StoreView {
    /// The blob `name` as of this view.
    pub fn blob(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let table = self.txn.open_table(BLOBS).db()?;
        Ok(table.get(name).db()?.map(|g| g.value().to_vec()))
    }

    /// Writes this view as a snapshot stream (the format of [`Store::snapshot`]), chunk by
    /// chunk, to `sink`.
    pub fn write_snapshot(&self, sink: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        crate::snapshot::write_snapshot(&self.txn, None, sink).map(|_| ())
    }
}

impl std::fmt::Debug for StoreView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreView")
    }
}

//! Maintenance of the [`Store`]: flushes, durable views and snapshots (written and
//! installed), hashes for consistency checks, defragmentation, and the crash-simulation
//! switch. Everything that replaces or rewrites the database file holds the writer lock, so
//! no batch runs concurrently.

use std::sync::atomic::Ordering;

use redb::{Database, ReadableDatabase, ReadableTable};

use super::{open_file, Store};
use crate::backend::{BLOBS, META, REVS};
use crate::error::{DbResult, Result, StoreError};
use crate::revision::Revision;
use crate::sync::LockExt;

impl Store {
    /// Makes every earlier non-durable batch durable (one fsync).
    pub fn flush(&self) -> Result<()> {
        let _serial = self.writer.locked();
        Self::durable_commit(&self.db.shared())
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

    /// Replaces the whole store with the content of a snapshot stream, live: readers see the
    /// old state until the new one is complete, and every watcher is moved to replay from
    /// the revision it had reached (or told it was compacted).
    pub fn install_snapshot(&self, input: impl std::io::Read) -> Result<()> {
        let _serial = self.writer.locked();
        let staging = self.path.with_extension("installing");
        if staging.exists() {
            std::fs::remove_dir_all(&staging)?;
        }
        crate::snapshot::restore(input, &staging)?;
        let limits = self.lessor.locked().limits();
        let mut db = self.db.locked();
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
        let mut hub = self.hub.locked();
        *self.index.locked() = index;
        *self.lessor.locked() = lessor;
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

    /// CRC-32C over every stored change at or below `rev` (0 = newest), as etcd's HashKV.
    /// Returns (hash, compaction revision, revision hashed).
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64)> {
        let current = self.revision();
        let db = self.db.shared();
        let txn = db.begin_read().db()?;
        let compacted = self.index.shared().compacted();
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
        let txn = self.db.shared().begin_read().db()?;
        crate::snapshot::write_records(&txn, |chunk| {
            h = crc32c::crc32c_append(h, chunk);
            Ok(())
        })?;
        Ok(h)
    }

    /// Writes a consistent snapshot of the store in etcd's format, chunk by chunk, to `sink`:
    /// a bbolt file in etcd's backend layout (with berth's own state in a `berth` bucket),
    /// then the SHA-256 of the file, as etcd's snapshot stream ends. This is what clients
    /// receive (`etcdctl snapshot save`); see `etcd_snapshot.rs`. The file is laid out in an
    /// unnamed temporary file beside the database first (bbolt's meta pages, at the front,
    /// name pages written last), so memory stays bounded.
    pub fn etcd_snapshot(&self, mut sink: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        use sha2::{Digest, Sha256};
        use std::io::{BufWriter, Read, Seek, SeekFrom};

        let txn = self.db.shared().begin_read().db()?;
        let dir = self.path.parent().unwrap_or(std::path::Path::new("."));
        let out = BufWriter::new(tempfile::tempfile_in(dir)?);
        let out = crate::etcd_snapshot::write(&txn, out)?;
        drop(txn);
        let mut file = out
            .into_inner()
            .map_err(|e| StoreError::Io(e.into_error()))?;
        file.seek(SeekFrom::Start(0))?;
        let mut sha = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
            sink(&buf[..n])?;
        }
        sink(&sha.finalize())
    }

    /// Writes a consistent snapshot of the store in berth's own format (`BERTHSNAP2`, what
    /// members send one another), chunk by chunk, to `sink`.
    pub fn snapshot(&self, sink: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let txn = self.db.shared().begin_read().db()?;
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
        let _serial = self.writer.locked();
        let db = self.db.shared();
        Self::durable_commit(&db)?;
        // Under the writer lock no batch can commit between the two.
        let txn = db.begin_read().db()?;
        Ok(StoreView { txn })
    }

    /// Rewrites the database file to its smallest size. Waits for in-flight transactions.
    pub fn defragment(&self) -> Result<()> {
        let _serial = self.writer.locked();
        let mut db = self.db.locked();
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
    pub(super) txn: redb::ReadTransaction,
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

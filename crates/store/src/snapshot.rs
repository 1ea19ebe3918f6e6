//! Snapshots: a consistent, checksummed dump of every table, streamed in chunks, and the
//! restore that turns such a dump back into a store directory.
//!
//! Format: magic, then records `[table u8][key len u32][key][value len u32][value]`, an end
//! marker, zero padding to a multiple of 512 bytes, then the SHA-256 of everything before it.
//! The padding and trailing digest follow etcd's snapshot stream convention, which `etcdctl
//! snapshot save` checks (size ≡ 32 mod 512).
//!
//! Versions, told apart by the magic: `BERTHSNAP1` (before keyspaces) and `BERTHSNAP2`, whose
//! revision records may hold changes of every keyspace (the keyspace ID is in the stored
//! change's flag byte, see `backend.rs`). Both are read: a version-1 snapshot's records are
//! version-2 records of the user keyspace, and the restored file is stamped with the current
//! layout (`layout.rs`). Only version 2 is written, so a build that predates keyspaces refuses
//! a snapshot that may hold system keys instead of reading them as user keys.

use std::io::Read;
use std::path::Path;

use redb::{Database, ReadTransaction, ReadableTable};
use sha2::{Digest, Sha256};

use crate::backend::{BLOBS, LEASES, META, REVS};
use crate::error::{DbResult, Result, StoreError};
use crate::keyspace::Keyspace;

const MAGIC: &[u8] = b"BERTHSNAP2\n";
/// The magic of snapshots written before keyspaces (still installed).
const MAGIC_V1: &[u8] = b"BERTHSNAP1\n";
// Both versions' records start at the same offset.
const _: () = assert!(MAGIC.len() == MAGIC_V1.len());
const TAG_REV: u8 = 1;
const TAG_META: u8 = 2;
const TAG_LEASE: u8 = 3;
const TAG_BLOB: u8 = 4;
const TAG_END: u8 = 0xff;
const CHUNK: usize = 64 * 1024;
const ALIGN: usize = 512;
const DIGEST: usize = 32;

/// Buffers records and hands them to the sink in chunks.
struct Chunker<F: FnMut(&[u8]) -> Result<()>> {
    buf: Vec<u8>,
    sha: Sha256,
    len: usize,
    sink: F,
}

impl<F: FnMut(&[u8]) -> Result<()>> Chunker<F> {
    fn new(sink: F) -> Self {
        Chunker {
            buf: Vec::with_capacity(CHUNK * 2),
            sha: Sha256::new(),
            len: 0,
            sink,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.sha.update(bytes);
        self.len += bytes.len();
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= CHUNK {
            (self.sink)(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    fn record(&mut self, tag: u8, key: &[u8], value: &[u8]) -> Result<()> {
        self.put(&[tag])?;
        self.put(&(key.len() as u32).to_le_bytes())?;
        self.put(key)?;
        self.put(&(value.len() as u32).to_le_bytes())?;
        self.put(value)
    }

    fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            (self.sink)(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// Streams every record of one read transaction (no magic, no trailer).
pub(crate) fn write_records(
    txn: &ReadTransaction,
    sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let mut c = Chunker::new(sink);
    records(txn, &mut c, None, false)?;
    c.flush()
}

/// Streams every record except the user keyspace's revisions, then the end marker (no magic,
/// no trailer): what an etcd-format snapshot carries in its `berth` bucket beside etcd's
/// `key` bucket, which holds the user keyspace's revisions.
pub(crate) fn write_records_but_user_revisions(
    txn: &ReadTransaction,
    sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let mut c = Chunker::new(sink);
    records(txn, &mut c, None, true)?;
    c.put(&[TAG_END])?;
    c.flush()
}

fn records<F: FnMut(&[u8]) -> Result<()>>(
    txn: &ReadTransaction,
    c: &mut Chunker<F>,
    want_blob: Option<&str>,
    skip_user_revisions: bool,
) -> Result<Option<Vec<u8>>> {
    let mut wanted = None;
    for item in txn.open_table(BLOBS).db()?.iter().db()? {
        let (k, v) = item.db()?;
        if Some(k.value()) == want_blob {
            wanted = Some(v.value().to_vec());
        }
        c.record(TAG_BLOB, k.value().as_bytes(), v.value())?;
    }
    for item in txn.open_table(META).db()?.iter().db()? {
        let (k, v) = item.db()?;
        c.record(TAG_META, k.value().as_bytes(), &v.value().to_be_bytes())?;
    }
    for item in txn.open_table(LEASES).db()?.iter().db()? {
        let (k, v) = item.db()?;
        c.record(
            TAG_LEASE,
            &k.value().to_be_bytes(),
            &v.value().to_be_bytes(),
        )?;
    }
    for item in txn.open_table(REVS).db()?.iter().db()? {
        let (k, v) = item.db()?;
        if skip_user_revisions && crate::backend::flag(v.value())?.1 == Keyspace::User {
            continue;
        }
        c.record(TAG_REV, &k.value().to_be_bytes(), v.value())?;
    }
    Ok(wanted)
}

/// Streams a complete snapshot (magic, records, checksum trailer).
pub(crate) fn write_snapshot(
    txn: &ReadTransaction,
    want_blob: Option<&str>,
    sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<Option<Vec<u8>>> {
    let mut c = Chunker::new(sink);
    c.put(MAGIC)?;
    let wanted = records(txn, &mut c, want_blob, false)?;
    c.put(&[TAG_END])?;
    let pad = (ALIGN - c.len % ALIGN) % ALIGN;
    c.put(&vec![0u8; pad])?;
    let digest = c.sha.clone().finalize();
    c.buf.extend_from_slice(&digest);
    c.flush()?;
    Ok(wanted)
}

fn corrupt(msg: &str) -> StoreError {
    StoreError::Corrupt(format!("snapshot: {msg}"))
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if data.len() < n {
        return Err(corrupt("truncated"));
    }
    let (head, rest) = data.split_at(n);
    *data = rest;
    Ok(head)
}

fn take_len(data: &mut &[u8]) -> Result<usize> {
    let b = take(data, 4)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

fn be_i64(b: &[u8]) -> Result<i64> {
    let arr: [u8; 8] = b.try_into().map_err(|_| corrupt("bad integer"))?;
    Ok(i64::from_be_bytes(arr))
}

/// Checks a snapshot's checksum and writes its content as a new store in `dir`
/// (which must not already hold one). Returns the number of records restored.
pub fn restore(input: impl Read, dir: &Path) -> Result<u64> {
    restore_inner(input, dir, true)
}

/// Like [`restore`], without the consensus layer's blobs: the data starts a new cluster
/// (what `berth snapshot restore` does, as `etcdctl snapshot restore` does for etcd).
pub fn restore_data_only(input: impl Read, dir: &Path) -> Result<u64> {
    restore_inner(input, dir, false)
}

/// One record of a snapshot, checked: what restoring it writes.
#[derive(Debug, PartialEq)]
pub enum SnapshotRecord<'a> {
    /// A revision of a key (its encoded value decodes).
    Revision(u128, &'a [u8]),
    /// A store counter (or an alarm).
    Meta(&'a str, i64),
    /// A lease and its TTL.
    Lease(i64, i64),
    /// A consensus-layer blob.
    Blob(&'a str, &'a [u8]),
}

/// Checks a whole snapshot (size, magic, SHA-256, every record, every revision's encoding)
/// and returns its records, so that a damaged or hostile snapshot is refused before anything
/// is written. Every byte a peer or a file gives is checked here: no length is trusted.
pub fn parse_snapshot(data: &[u8]) -> Result<Vec<SnapshotRecord<'_>>> {
    let known = data.starts_with(MAGIC) || data.starts_with(MAGIC_V1);
    if data.len() < ALIGN + DIGEST || data.len() % ALIGN != DIGEST || !known {
        return Err(corrupt("not a berth snapshot"));
    }
    let (body, digest) = data.split_at(data.len() - DIGEST);
    if Sha256::digest(body).as_slice() != digest {
        return Err(corrupt("SHA-256 mismatch"));
    }
    parse_records(&body[MAGIC.len()..])
}

/// Checks a record stream (records, the end marker, zero padding) and returns its records.
pub(crate) fn parse_records(mut rest: &[u8]) -> Result<Vec<SnapshotRecord<'_>>> {
    let mut out = Vec::new();
    loop {
        let tag = take(&mut rest, 1)?[0];
        if tag == TAG_END {
            break;
        }
        let klen = take_len(&mut rest)?;
        let key = take(&mut rest, klen)?;
        let vlen = take_len(&mut rest)?;
        let value = take(&mut rest, vlen)?;
        let text = |what: &str| std::str::from_utf8(key).map_err(|_| corrupt(what));
        out.push(match tag {
            TAG_REV => {
                let k: [u8; 16] = key.try_into().map_err(|_| corrupt("bad revision"))?;
                crate::backend::decode(value)?;
                SnapshotRecord::Revision(u128::from_be_bytes(k), value)
            }
            TAG_META => SnapshotRecord::Meta(text("bad meta key")?, be_i64(value)?),
            TAG_LEASE => SnapshotRecord::Lease(be_i64(key)?, be_i64(value)?),
            TAG_BLOB => SnapshotRecord::Blob(text("bad blob name")?, value),
            _ => return Err(corrupt("unknown record")),
        });
    }
    if rest.iter().any(|b| *b != 0) {
        return Err(corrupt("data after the end marker"));
    }
    Ok(out)
}

/// Frames arbitrary bytes as a snapshot body (magic, padding, a correct SHA-256) so that the
/// records themselves are parsed, and parses the unframed bytes too (the fuzz target
/// `snapshot` drives this). Never a panic.
#[doc(hidden)]
pub fn fuzz_parse(data: &[u8]) {
    let _ = parse_snapshot(data);
    let mut framed = MAGIC.to_vec();
    framed.extend_from_slice(data);
    framed.resize(framed.len().div_ceil(ALIGN).max(1) * ALIGN, 0);
    let digest = Sha256::digest(&framed);
    framed.extend_from_slice(&digest);
    if let Ok(records) = parse_snapshot(&framed) {
        assert!(records.len() <= data.len());
    }
}

/// The records of a snapshot of `data`, without the magic and the trailer: what the fuzz
/// target `snapshot` takes as input (used to write its seed corpus).
#[doc(hidden)]
pub fn fuzz_body(snapshot: &[u8]) -> Option<&[u8]> {
    let body = snapshot.get(MAGIC.len()..snapshot.len().checked_sub(DIGEST)?)?;
    let end = body.iter().rposition(|b| *b != 0)? + 1;
    Some(&body[..end])
}

fn restore_inner(mut input: impl Read, dir: &Path, keep_blobs: bool) -> Result<u64> {
    let mut data = Vec::new();
    input.read_to_end(&mut data)?;
    if crate::etcd_snapshot::is_bbolt(&data) {
        let decoded = crate::etcd_snapshot::decode(&data)?;
        return write_store(&decoded.records()?, dir, keep_blobs);
    }
    if !data.starts_with(MAGIC) && !data.starts_with(MAGIC_V1) {
        return Err(corrupt(
            "neither a berth snapshot nor a bbolt database (an etcd snapshot)",
        ));
    }
    write_store(&parse_snapshot(&data)?, dir, keep_blobs)
}

/// Writes checked records as a new store in `dir` (which must not already hold one).
fn write_store(records: &[SnapshotRecord<'_>], dir: &Path, keep_blobs: bool) -> Result<u64> {
    let path = dir.join("kv.redb");
    if path.exists() {
        return Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} already exists", path.display()),
        )));
    }
    std::fs::create_dir_all(dir)?;
    let db = Database::create(&path).db()?;
    let txn = db.begin_write().db()?;
    {
        let mut revs = txn.open_table(REVS).db()?;
        let mut meta = txn.open_table(META).db()?;
        let mut leases = txn.open_table(LEASES).db()?;
        let mut blobs = txn.open_table(BLOBS).db()?;
        for record in records {
            match *record {
                SnapshotRecord::Revision(k, v) => {
                    revs.insert(k, v).db()?;
                }
                // Alarms name members of the cluster the snapshot came from: a new cluster
                // starts without them.
                SnapshotRecord::Meta(k, _)
                    if !keep_blobs && k.starts_with(crate::apply::ALARM_PREFIX) => {}
                SnapshotRecord::Meta(k, v) => {
                    meta.insert(k, v).db()?;
                }
                SnapshotRecord::Lease(id, ttl) => {
                    leases.insert(id, ttl).db()?;
                }
                SnapshotRecord::Blob(k, v) if keep_blobs => {
                    blobs.insert(k, v).db()?;
                }
                SnapshotRecord::Blob(..) => {}
            }
        }
    }
    txn.commit().db()?;
    // Stamps the current layout (and refuses a file of a newer one) before anyone opens it.
    crate::layout::prepare(&db)?;
    Ok(records.len() as u64)
}

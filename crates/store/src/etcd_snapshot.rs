//! Snapshots in etcd's format: a bbolt database laid out as etcd's backend, so that `etcdctl
//! snapshot status|restore` and `etcd` read what berth streams, and `berth snapshot restore`
//! reads what etcd streams (the bbolt file itself is `berth-bbolt`'s business).
//!
//! # What berth writes
//! - `key`: every revision of the user keyspace, as etcd keeps them: the key is the
//!   revision (`main` u64 big-endian, `_`, `sub` u64 big-endian) plus a trailing `t` for a
//!   deletion, the value the `mvccpb.KeyValue` (for a deletion: the key and mod revision).
//! - `meta`: `finishedCompactRev` and `scheduledCompactRev` (the compaction point, as a
//!   17-byte revision, when there is one) and `consistent_index` (8 bytes big-endian; etcdctl
//!   rewrites it on restore).
//! - `lease`: lease ID (8 bytes big-endian) → `leasepb.Lease{ID=1, TTL=2}`.
//! - `auth`, `authUsers`, `authRoles`: the `Auth` keyspace's users, roles (their grants on the
//!   user keyspace; etcd has no other) and enabled flag, and the auth revision, as etcd keeps
//!   them (`etcd_auth.rs`).
//! - `alarm`, `cluster`, `members`, `members_removed`: empty, as in a fresh etcd.
//! - `berth` (etcd ignores it): `digest` (below), `format` = `2`, then
//!   `records/<chunk u64 BE>` values that concatenate to berth's own record stream
//!   (`snapshot.rs`) of everything *but* the user keyspace's revisions: system keyspaces'
//!   revisions (the `Auth` keyspace's included, with grants on every keyspace), counters,
//!   leases, blobs.
//!
//! etcd keeps the `berth` bucket it does not know, even after it changed the keys: a file
//! that went berth → etcd → (writes) → etcd snapshot would bring back berth's stale state.
//! So `digest` is the SHA-256 of what berth wrote in the buckets etcd changes when it writes
//! (every entry of `key`, `lease`, `auth`, `authUsers` and `authRoles`, and the compaction
//! entries of `meta`); when the file's buckets no longer match it, the `berth` bucket is
//! ignored and the file is read as etcd's. (Format `1`, written before berth wrote the auth
//! buckets, has a digest without them and is still read.)
//!
//! # What berth reads
//! A bbolt file (with or without the 32-byte SHA-256 trailer `etcdctl snapshot save` keeps;
//! when present it must match). With a `berth` bucket, the store is rebuilt exactly: its
//! records plus the user revisions of `key`. Without one it is etcd's: every revision of
//! `key` (the history since etcd's last compaction, deletions included), the compaction
//! point from `meta`, the leases of `lease` with their TTLs (keys attach to their leases
//! when the store loads, from each key's newest revision), and the users, roles and enabled
//! flag of the auth buckets, as `Auth` keyspace records written at the newest revision (sub
//! revisions after its user changes, so the store's revision stays etcd's; that revision is
//! berth's auth revision, and a fresh token-signing secret comes with auth on). etcd's
//! members and alarms are not carried over (a restore starts a new cluster, as `etcdctl
//! snapshot restore` does), nor are tokens.

use std::collections::BTreeMap;
use std::io::{Seek, Write};

use berth_bbolt::{BoltError, Db, Writer};
use berth_proto::mvccpb::KeyValue;
use prost::Message;
use redb::{ReadTransaction, ReadableTable};
use sha2::{Digest, Sha256};

use crate::backend::{
    encode, flag, LEASES, META, META_APPLIED, META_COMPACTED, META_REVISION, REVS,
};
use crate::error::{DbResult, Result, StoreError};
use crate::etcd_auth::{self, EtcdAuth};
use crate::keyspace::Keyspace;
use crate::revision::Revision;
use crate::snapshot::{parse_records, SnapshotRecord};

const KEY: &[u8] = b"key";
const META_BUCKET: &[u8] = b"meta";
const LEASE: &[u8] = b"lease";
const BERTH: &[u8] = b"berth";
const EMPTY: [&[u8]; 4] = [b"alarm", b"cluster", b"members", b"members_removed"];
const DIGEST_KEY: &[u8] = b"digest";
const FORMAT_KEY: &[u8] = b"format";
/// The `berth` bucket's format: `2` = the digest covers the auth buckets too.
const FORMAT: &[u8] = b"2";
/// The format before berth wrote the auth buckets (its digest does not cover them).
const FORMAT_V1: &[u8] = b"1";
const CHUNK_PREFIX: &[u8] = b"records/";
const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
const CONSISTENT_INDEX: &[u8] = b"consistent_index";
const TOMBSTONE: u8 = b't';
const DIGEST: usize = 32;
const ALIGN: usize = 512;

/// etcd's `leasepb.Lease`, as stored in its `lease` bucket.
#[derive(Clone, PartialEq, Message)]
struct LeasePb {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

fn corrupt(msg: String) -> StoreError {
    StoreError::Corrupt(format!("etcd snapshot: {msg}"))
}

fn bolt(e: BoltError) -> StoreError {
    match e {
        BoltError::Io(e) => StoreError::Io(e),
        other => corrupt(other.to_string()),
    }
}

/// The SHA-256 of the entries etcd changes when it writes (see the module doc).
#[derive(Default)]
struct EtcdView(Sha256);

impl EtcdView {
    fn entry(&mut self, bucket: &[u8], k: &[u8], v: &[u8]) {
        for part in [bucket, k, v] {
            self.0.update((part.len() as u32).to_le_bytes());
            self.0.update(part);
        }
    }
}

/// etcd's 17-byte revision key (`main`, `_`, `sub`), plus `t` for a deletion.
fn rev_key(rev: Revision, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(&(rev.main as u64).to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&(rev.sub as u64).to_be_bytes());
    if tombstone {
        k.push(TOMBSTONE);
    }
    k
}

/// Reads etcd's revision key: (revision, tombstone).
fn parse_rev_key(k: &[u8]) -> Option<(Revision, bool)> {
    let tombstone = match k.len() {
        17 => false,
        18 if k[17] == TOMBSTONE => true,
        _ => return None,
    };
    if k[8] != b'_' {
        return None;
    }
    let main = i64::try_from(u64::from_be_bytes(k[..8].try_into().ok()?)).ok()?;
    let sub = i64::try_from(u64::from_be_bytes(k[9..17].try_into().ok()?)).ok()?;
    Some((Revision::new(main, sub), tombstone))
}

/// Writes the store as seen by `txn` into `out` as an etcd backend file (no trailer).
pub(crate) fn write<W: Write + Seek>(txn: &ReadTransaction, out: W) -> Result<W> {
    let mut w = Writer::new(out).map_err(bolt)?;
    let meta = txn.open_table(META).db()?;
    let get = |k: &str| -> Result<i64> { Ok(meta.get(k).db()?.map(|g| g.value()).unwrap_or(0)) };
    let (compacted, applied) = (get(META_COMPACTED)?, get(META_APPLIED)?);
    let mut view = EtcdView::default();

    // The `Auth` keyspace as of `txn`: key → (value, mod revision).
    let mut auth: BTreeMap<Vec<u8>, (Vec<u8>, i64)> = BTreeMap::new();
    let mut b = w.bucket(KEY).map_err(bolt)?;
    for item in txn.open_table(REVS).db()?.iter().db()? {
        let (k, v) = item.db()?;
        let (tombstone, ks, body) = flag(v.value())?;
        let rev = Revision::from_key(k.value());
        match ks {
            Keyspace::User => {
                let key = rev_key(rev, tombstone);
                view.entry(KEY, &key, body);
                b.put(&key, body).map_err(bolt)?;
            }
            Keyspace::Auth => {
                let kv = KeyValue::decode(body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                if tombstone {
                    auth.remove(&kv.key);
                } else {
                    auth.insert(kv.key, (kv.value, rev.main));
                }
            }
            _ => {}
        }
    }
    b.finish().map_err(bolt)?;

    let mut b = w.bucket(META_BUCKET).map_err(bolt)?;
    b.put(CONSISTENT_INDEX, &(applied.max(0) as u64).to_be_bytes())
        .map_err(bolt)?;
    if compacted > 0 {
        let at = rev_key(Revision::new(compacted, 0), false);
        for k in [FINISHED_COMPACT, SCHEDULED_COMPACT] {
            view.entry(META_BUCKET, k, &at);
            b.put(k, &at).map_err(bolt)?;
        }
    }
    b.finish().map_err(bolt)?;

    let mut leases = Vec::new();
    for item in txn.open_table(LEASES).db()?.iter().db()? {
        let (id, ttl) = item.db()?;
        let (id, ttl) = (id.value(), ttl.value());
        let pb = LeasePb {
            id,
            ttl,
            remaining_ttl: 0,
        };
        leases.push(((id as u64).to_be_bytes(), pb.encode_to_vec()));
    }
    leases.sort();
    let mut b = w.bucket(LEASE).map_err(bolt)?;
    for (k, v) in &leases {
        view.entry(LEASE, k, v);
        b.put(k, v).map_err(bolt)?;
    }
    b.finish().map_err(bolt)?;

    let revision = auth.get(etcd_auth::REVISION).map_or(0, |(_, m)| *m);
    let records = auth.into_iter().map(|(k, (v, _))| (k, v)).collect();
    let etcd = etcd_auth::to_etcd(&records, revision);
    for (name, entries) in etcd.buckets() {
        let mut b = w.bucket(name).map_err(bolt)?;
        for (k, v) in entries {
            view.entry(name, k, v);
            b.put(k, v).map_err(bolt)?;
        }
        b.finish().map_err(bolt)?;
    }

    for name in EMPTY {
        w.bucket(name).map_err(bolt)?.finish().map_err(bolt)?;
    }

    let mut b = w.bucket(BERTH).map_err(bolt)?;
    b.put(DIGEST_KEY, &view.0.finalize()).map_err(bolt)?;
    b.put(FORMAT_KEY, FORMAT).map_err(bolt)?;
    let mut n = 0u64;
    crate::snapshot::write_records_but_user_revisions(txn, |chunk| {
        let mut key = CHUNK_PREFIX.to_vec();
        key.extend_from_slice(&n.to_be_bytes());
        n += 1;
        b.put(&key, chunk).map_err(bolt)
    })?;
    b.finish().map_err(bolt)?;
    w.finish().map_err(bolt)
}

/// True when `data` starts like a bbolt file (meta page 0's magic).
pub(crate) fn is_bbolt(data: &[u8]) -> bool {
    data.get(16..20)
        .is_some_and(|m| m == berth_bbolt::MAGIC.to_le_bytes())
}

/// What a bbolt snapshot holds, decoded and checked, ready to become store records.
pub(crate) struct Decoded {
    /// The user keyspace's revisions (and, for a file written by etcd, the `Auth` keyspace's
    /// records): storage key → stored change.
    revisions: Vec<(u128, Vec<u8>)>,
    /// berth's own record stream (the `berth` bucket), when the file was written by berth.
    native: Option<Vec<u8>>,
    /// Counters (for a file written by etcd).
    meta: Vec<(&'static str, i64)>,
    /// Leases and TTLs (for a file written by etcd).
    leases: Vec<(i64, i64)>,
}

impl Decoded {
    /// The records to restore.
    pub(crate) fn records(&self) -> Result<Vec<SnapshotRecord<'_>>> {
        let mut out = match &self.native {
            Some(stream) => parse_records(stream)?,
            None => Vec::new(),
        };
        out.extend(
            self.revisions
                .iter()
                .map(|(k, v)| SnapshotRecord::Revision(*k, v)),
        );
        out.extend(self.meta.iter().map(|(k, v)| SnapshotRecord::Meta(k, *v)));
        out.extend(
            self.leases
                .iter()
                .map(|(id, ttl)| SnapshotRecord::Lease(*id, *ttl)),
        );
        Ok(out)
    }
}

/// Checks the trailer (if any) and decodes a bbolt snapshot.
pub(crate) fn decode(data: &[u8]) -> Result<Decoded> {
    let file = if data.len() % ALIGN == DIGEST {
        let (file, digest) = data.split_at(data.len() - DIGEST);
        if Sha256::digest(file).as_slice() != digest {
            return Err(corrupt(
                "SHA-256 trailer mismatch (damaged or truncated)".into(),
            ));
        }
        file
    } else {
        data
    };
    let db = Db::open(file).map_err(bolt)?;
    let entries = |name: &[u8]| -> Result<Vec<berth_bbolt::Entry<'_>>> {
        match db.bucket(name).map_err(bolt)? {
            Some(b) => b.entries().map_err(bolt),
            None => Ok(Vec::new()),
        }
    };
    if db.bucket(KEY).map_err(bolt)?.is_none() {
        return Err(corrupt(
            "no `key` bucket: not an etcd or berth snapshot".into(),
        ));
    }
    let mut newest = 0i64;
    let mut revisions = Vec::new();
    let mut view = EtcdView::default();
    let meta_entries = entries(META_BUCKET)?;
    let lease_entries = entries(LEASE)?;
    for e in entries(KEY)? {
        view.entry(KEY, e.key, e.value);
        let (rev, tombstone) = parse_rev_key(e.key)
            .ok_or_else(|| corrupt(format!("`key` bucket: bad revision key {:02x?}", e.key)))?;
        let kv = KeyValue::decode(e.value)
            .map_err(|err| corrupt(format!("`key` bucket: revision {}: {err}", rev.main)))?;
        let stored = if tombstone {
            let kv = KeyValue {
                key: kv.key,
                mod_revision: rev.main,
                ..Default::default()
            };
            encode(Keyspace::User, &kv, true)
        } else {
            encode(Keyspace::User, &kv, false)
        };
        newest = newest.max(rev.main);
        revisions.push((rev.to_key(), stored));
    }
    for e in &meta_entries {
        if e.key == FINISHED_COMPACT || e.key == SCHEDULED_COMPACT {
            view.entry(META_BUCKET, e.key, e.value);
        }
    }
    for e in &lease_entries {
        view.entry(LEASE, e.key, e.value);
    }
    // What format 1 covered; format 2 adds the auth buckets.
    let digest_v1 = view.0.clone().finalize();
    let mut etcd_buckets = EtcdAuth::default();
    for (name, bucket) in [
        (etcd_auth::AUTH_BUCKET, &mut etcd_buckets.auth),
        (etcd_auth::USERS_BUCKET, &mut etcd_buckets.users),
        (etcd_auth::ROLES_BUCKET, &mut etcd_buckets.roles),
    ] {
        for e in entries(name)? {
            view.entry(name, e.key, e.value);
            bucket.push((e.key.to_vec(), e.value.to_vec()));
        }
    }
    let digest_v2 = view.0.finalize();
    let mut berth = entries(BERTH)?;
    let digest = berth.iter().find(|e| e.key == DIGEST_KEY).map(|e| e.value);
    let format = berth.iter().find(|e| e.key == FORMAT_KEY).map(|e| e.value);
    let expected = match format {
        Some(FORMAT) => Some(digest_v2.as_slice()),
        Some(FORMAT_V1) => Some(digest_v1.as_slice()),
        _ => None,
    };
    if !berth.is_empty()
        && expected.is_none()
        && digest.is_some_and(|d| d == digest_v2.as_slice() || d == digest_v1.as_slice())
    {
        return Err(corrupt(
            "the `berth` bucket has an unknown format (written by a newer berth?)".into(),
        ));
    }
    if !berth.is_empty() && (expected.is_none() || digest != expected) {
        tracing::warn!(
            "the file's etcd buckets changed after berth wrote it (etcd wrote to it): \
             restoring etcd's data, without berth's own state"
        );
        berth.clear();
    }
    if !berth.is_empty() {
        let mut stream = Vec::new();
        let chunks = berth
            .iter()
            .filter(|e| e.key != FORMAT_KEY && e.key != DIGEST_KEY);
        for (i, e) in chunks.enumerate() {
            let mut want = CHUNK_PREFIX.to_vec();
            want.extend_from_slice(&(i as u64).to_be_bytes());
            if e.key != want {
                return Err(corrupt(format!(
                    "`berth` bucket: unexpected entry {:?}",
                    String::from_utf8_lossy(e.key)
                )));
            }
            stream.extend_from_slice(e.value);
        }
        return Ok(Decoded {
            revisions,
            native: Some(stream),
            meta: Vec::new(),
            leases: Vec::new(),
        });
    }
    // A file written by etcd.
    let mut compacted = 0i64;
    for e in &meta_entries {
        if e.key == FINISHED_COMPACT || e.key == SCHEDULED_COMPACT {
            let (rev, _) = parse_rev_key(e.value).ok_or_else(|| {
                corrupt(format!(
                    "`meta` bucket: bad {}",
                    String::from_utf8_lossy(e.key)
                ))
            })?;
            // A scheduled compaction etcd had not finished is finished by the restore.
            compacted = compacted.max(rev.main);
        }
    }
    let mut leases = Vec::new();
    for e in &lease_entries {
        let id: [u8; 8] = e
            .key
            .try_into()
            .map_err(|_| corrupt(format!("`lease` bucket: bad lease ID {:02x?}", e.key)))?;
        let id = i64::from_be_bytes(id);
        let pb = LeasePb::decode(e.value)
            .map_err(|err| corrupt(format!("`lease` bucket: lease {id:x}: {err}")))?;
        leases.push((id, pb.ttl.max(1)));
    }
    let mut revision = newest.max(compacted);
    let auth = etcd_auth::from_etcd(&etcd_buckets)?;
    if !auth.is_empty() {
        // The auth records share the newest revision (after its last change of a user key),
        // so the restored store goes on from etcd's revision.
        revision = revision.max(1);
        let first_sub = revisions
            .iter()
            .map(|(k, _)| Revision::from_key(*k))
            .filter(|r| r.main == revision)
            .map(|r| r.sub.saturating_add(1))
            .max()
            .unwrap_or(0);
        if i64::MAX - first_sub < auth.len() as i64 {
            return Err(corrupt(format!(
                "`key` bucket: no sub revision of {revision} left for the auth records"
            )));
        }
        for (i, (key, value)) in auth.iter().cloned().enumerate() {
            let kv = KeyValue {
                key,
                value,
                create_revision: revision,
                mod_revision: revision,
                version: 1,
                lease: 0,
            };
            // In range: checked above.
            let at = Revision::new(revision, first_sub + i as i64);
            revisions.push((at.to_key(), encode(Keyspace::Auth, &kv, false)));
        }
    }
    let mut meta = vec![(META_REVISION, revision)];
    if compacted > 0 {
        meta.push((META_COMPACTED, compacted));
    }
    tracing::info!(
        revisions = revisions.len(),
        leases = leases.len(),
        revision,
        compacted,
        users = etcd_buckets.users.len(),
        roles = etcd_buckets.roles.len(),
        auth_records = auth.len(),
        "read an etcd snapshot"
    );
    Ok(Decoded {
        revisions,
        native: None,
        meta,
        leases,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use berth_proto::etcdserverpb::{
        CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest,
    };

    use super::*;
    use crate::{Applied, Command, Store, StoreOptions};

    fn apply_in(s: &Store, ks: Keyspace, cmd: Command) -> Applied {
        s.apply_batch_in(ks, &[cmd])
            .expect("batch")
            .remove(0)
            .expect("applied")
    }

    fn put(s: &Store, ks: Keyspace, k: &str, v: &str, lease: i64) {
        apply_in(
            s,
            ks,
            Command::Put(PutRequest {
                key: k.into(),
                value: v.into(),
                lease,
                ..Default::default()
            }),
        );
    }

    fn get(s: &Store, ks: Keyspace, k: &str, rev: i64) -> Option<KeyValue> {
        let req = RangeRequest {
            key: k.into(),
            revision: rev,
            ..Default::default()
        };
        s.range_in(ks, &req).expect("range").kvs.into_iter().next()
    }

    fn etcd_snapshot_of(s: &Store) -> Vec<u8> {
        let mut out = Vec::new();
        s.etcd_snapshot(|c| {
            out.extend_from_slice(c);
            Ok(())
        })
        .expect("snapshot");
        out
    }

    #[test]
    fn berth_state_survives_the_etcd_format_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path(), StoreOptions::default()).expect("open");
        apply_in(
            &s,
            Keyspace::User,
            Command::LeaseGrant(LeaseGrantRequest { ttl: 90, id: 7 }),
        );
        for i in 0..400 {
            put(&s, Keyspace::User, &format!("k{i:03}"), &"v".repeat(i), 0);
        }
        put(&s, Keyspace::User, "leased", "x", 7);
        put(&s, Keyspace::Registry, "svc/a", "10.0.0.1", 7);
        put(&s, Keyspace::Auth, "user/root", "secret", 0);
        apply_in(
            &s,
            Keyspace::User,
            Command::Compaction(CompactionRequest {
                revision: 100,
                physical: false,
            }),
        );
        apply_in(
            &s,
            Keyspace::User,
            Command::DeleteRange(DeleteRangeRequest {
                key: b"k005".to_vec(),
                ..Default::default()
            }),
        );
        put(&s, Keyspace::Config, "late", "1", 0);
        let snap = etcd_snapshot_of(&s);
        assert_eq!(snap.len() % ALIGN, DIGEST, "etcd's trailer convention");
        assert!(is_bbolt(&snap));

        let target = tempfile::tempdir().expect("tempdir");
        crate::snapshot::restore(snap.as_slice(), target.path()).expect("restore");
        let r = Store::open(target.path(), StoreOptions::default()).expect("open restored");
        assert_eq!(r.hash().expect("hash"), s.hash().expect("hash"));
        assert_eq!(r.revision(), s.revision());
        assert_eq!(
            r.hash_kv(0).expect("hash_kv"),
            s.hash_kv(0).expect("hash_kv")
        );
        let registry = get(&r, Keyspace::Registry, "svc/a", 0).expect("registry key");
        assert_eq!(registry.value, b"10.0.0.1");
        assert!(
            get(&r, Keyspace::User, "svc/a", 0).is_none(),
            "keyspaces stay apart"
        );
        assert!(get(&r, Keyspace::Auth, "user/root", 0).is_some());
        let info = r.lease_info(7).expect("lease");
        assert_eq!(info.granted, 90);
        assert_eq!(info.keys.len(), 2);
    }

    #[test]
    fn a_berth_bucket_left_behind_by_etcd_writes_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path(), StoreOptions::default()).expect("open");
        put(&s, Keyspace::User, "a", "1", 0);
        put(&s, Keyspace::Registry, "r", "1", 0);
        let snap = etcd_snapshot_of(&s);
        let file = &snap[..snap.len() - DIGEST];
        // What etcd does to the file after a write: `key` changes, `berth` stays.
        let db = Db::open(file).expect("open");
        let mut w = Writer::new(Cursor::new(Vec::new())).expect("writer");
        for e in db.root().entries().expect("root") {
            let mut b = w.bucket(e.key).expect("bucket");
            let entries = db
                .root()
                .open(&e)
                .expect("open")
                .entries()
                .expect("entries");
            for x in &entries {
                b.put(x.key, x.value).expect("put");
            }
            if e.key == KEY {
                let kv = KeyValue {
                    key: b"b".to_vec(),
                    value: b"etcd".to_vec(),
                    create_revision: 9,
                    mod_revision: 9,
                    version: 1,
                    lease: 0,
                };
                b.put(&rev_key(Revision::new(9, 0), false), &kv.encode_to_vec())
                    .expect("put");
            }
            b.finish().expect("finish");
        }
        let changed = w.finish().expect("file").into_inner();
        let target = tempfile::tempdir().expect("tempdir");
        crate::snapshot::restore_data_only(changed.as_slice(), target.path()).expect("restore");
        let r = Store::open(target.path(), StoreOptions::default()).expect("open");
        assert_eq!(r.revision(), 9);
        assert_eq!(get(&r, Keyspace::User, "b", 0).expect("b").value, b"etcd");
        assert!(
            get(&r, Keyspace::Registry, "r", 0).is_none(),
            "berth's stale state dropped"
        );
        // Unchanged, the same file keeps berth's state.
        let target = tempfile::tempdir().expect("tempdir");
        crate::snapshot::restore_data_only(file, target.path()).expect("restore");
        let r = Store::open(target.path(), StoreOptions::default()).expect("open");
        assert!(get(&r, Keyspace::Registry, "r", 0).is_some());
    }

    /// Builds a file the way etcd lays out its backend.
    fn etcd_file(trailer: bool) -> Vec<u8> {
        let kv = |k: &str, v: &str, create, m, version, lease| {
            KeyValue {
                key: k.into(),
                value: v.into(),
                create_revision: create,
                mod_revision: m,
                version,
                lease,
            }
            .encode_to_vec()
        };
        let mut w = Writer::new(Cursor::new(Vec::new())).expect("writer");
        let mut b = w.bucket(KEY).expect("key");
        // Compacted at 3: revision 2 (a's first value) is gone, 3 is a's newest before it.
        b.put(
            &rev_key(Revision::new(3, 0), false),
            &kv("a", "a2", 2, 3, 2, 0),
        )
        .expect("put");
        b.put(
            &rev_key(Revision::new(4, 0), false),
            &kv("b", "b1", 4, 4, 1, 0x77),
        )
        .expect("put");
        b.put(
            &rev_key(Revision::new(5, 0), true),
            &KeyValue {
                key: b"a".to_vec(),
                ..Default::default()
            }
            .encode_to_vec(),
        )
        .expect("put");
        b.put(
            &rev_key(Revision::new(6, 0), false),
            &kv("c", "c1", 6, 6, 1, 0),
        )
        .expect("put");
        b.put(
            &rev_key(Revision::new(6, 1), false),
            &kv("d", "d1", 6, 6, 1, 0),
        )
        .expect("put");
        b.finish().expect("finish");
        let mut b = w.bucket(META_BUCKET).expect("meta");
        b.put(CONSISTENT_INDEX, &9u64.to_be_bytes()).expect("put");
        b.put(FINISHED_COMPACT, &rev_key(Revision::new(3, 0), false))
            .expect("put");
        b.finish().expect("finish");
        let mut b = w.bucket(LEASE).expect("lease");
        let pb = LeasePb {
            id: 0x77,
            ttl: 60,
            remaining_ttl: 0,
        };
        b.put(&0x77u64.to_be_bytes(), &pb.encode_to_vec())
            .expect("put");
        b.finish().expect("finish");
        w.bucket(b"members")
            .expect("members")
            .finish()
            .expect("finish");
        let mut file = w.finish().expect("file").into_inner();
        if trailer {
            let digest = Sha256::digest(&file);
            file.extend_from_slice(&digest);
        }
        file
    }

    #[test]
    fn an_etcd_file_restores_with_history_compaction_and_leases() {
        for trailer in [true, false] {
            let target = tempfile::tempdir().expect("tempdir");
            crate::snapshot::restore_data_only(etcd_file(trailer).as_slice(), target.path())
                .expect("restore");
            let r = Store::open(target.path(), StoreOptions::default()).expect("open");
            assert_eq!(r.revision(), 6);
            assert!(get(&r, Keyspace::User, "a", 0).is_none(), "deleted at 5");
            let a = get(&r, Keyspace::User, "a", 4).expect("a at 4");
            assert_eq!(
                (a.value.as_slice(), a.create_revision, a.version),
                (&b"a2"[..], 2, 2)
            );
            let d = get(&r, Keyspace::User, "d", 0).expect("d");
            assert_eq!((d.create_revision, d.mod_revision), (6, 6));
            let req = RangeRequest {
                key: b"a".to_vec(),
                revision: 2,
                ..Default::default()
            };
            assert!(matches!(r.range(&req), Err(StoreError::Compacted)));
            let info = r.lease_info(0x77).expect("lease");
            assert_eq!(info.granted, 60);
            assert_eq!(info.keys, vec![(Keyspace::User, b"b".to_vec())]);
        }
    }

    #[test]
    fn damaged_etcd_files_are_refused_with_a_reason() {
        let restore = |data: &[u8]| {
            let target = tempfile::tempdir().expect("tempdir");
            crate::snapshot::restore_data_only(data, target.path())
                .expect_err("damage goes unnoticed")
                .to_string()
        };
        let file = etcd_file(true);
        let mut flipped = file.clone();
        flipped[3 * 4096 + 100] ^= 1;
        assert!(
            restore(&flipped).contains("SHA-256"),
            "{}",
            restore(&flipped)
        );
        let bare = etcd_file(false);
        assert!(restore(&bare[..bare.len() - 4096]).contains("truncated"));
        assert!(restore(&bare[..4000]).contains("bbolt"));
        assert!(restore(b"garbage").contains("neither"));
        // A revision key that is not etcd's.
        let mut w = Writer::new(Cursor::new(Vec::new())).expect("writer");
        let mut b = w.bucket(KEY).expect("key");
        b.put(b"not-a-revision", b"").expect("put");
        b.finish().expect("finish");
        let odd = w.finish().expect("file").into_inner();
        assert!(
            restore(&odd).contains("bad revision key"),
            "{}",
            restore(&odd)
        );
    }

    /// Copies a bbolt file, letting `change` edit each bucket's entries (name, entries).
    fn rewrite(
        file: &[u8],
        mut change: impl FnMut(&[u8], &mut Vec<(Vec<u8>, Vec<u8>)>),
    ) -> Vec<u8> {
        let db = Db::open(file).expect("open");
        let mut w = Writer::new(Cursor::new(Vec::new())).expect("writer");
        for e in db.root().entries().expect("root") {
            let mut entries: Vec<(Vec<u8>, Vec<u8>)> = db
                .root()
                .open(&e)
                .expect("open")
                .entries()
                .expect("entries")
                .iter()
                .map(|x| (x.key.to_vec(), x.value.to_vec()))
                .collect();
            change(e.key, &mut entries);
            entries.sort();
            let mut b = w.bucket(e.key).expect("bucket");
            for (k, v) in &entries {
                b.put(k, v).expect("put");
            }
            b.finish().expect("finish");
        }
        w.finish().expect("file").into_inner()
    }

    fn bucket(file: &[u8], name: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let db = Db::open(file).expect("open");
        let b = db.bucket(name).expect("bucket").expect("present");
        b.entries()
            .expect("entries")
            .iter()
            .map(|x| (x.key.to_vec(), x.value.to_vec()))
            .collect()
    }

    fn auth_records(s: &Store) -> BTreeMap<Vec<u8>, (Vec<u8>, i64)> {
        let all = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        };
        s.range_in(Keyspace::Auth, &all)
            .expect("range")
            .kvs
            .into_iter()
            .map(|kv| (kv.key, (kv.value, kv.mod_revision)))
            .collect()
    }

    /// A store with auth on: root, alice with a role granting the user keyspace and the
    /// registry keyspace, as berth-auth writes them.
    fn store_with_auth(dir: &std::path::Path) -> std::sync::Arc<Store> {
        let s = Store::open(dir, StoreOptions::default()).expect("open");
        put(&s, Keyspace::User, "a", "1", 0);
        for (k, v) in [
            (
                "role/reader",
                r#"{"name":"reader","permissions":[{"access":"read","key":"YQ==","range_end":"Yg=="},{"keyspace":2,"access":"readwrite","key":"c3ZjLw=="}]}"#,
            ),
            (
                "user/alice",
                r#"{"name":"alice","password":"$2b$04$alice","roles":["reader"],"epoch":5}"#,
            ),
            (
                "user/root",
                r#"{"name":"root","password":"$2b$04$root","roles":["root"],"epoch":6}"#,
            ),
            ("enabled", "1"),
            ("secret", "0123456789abcdef0123456789abcdef"),
            ("revision", ""),
        ] {
            put(&s, Keyspace::Auth, k, v, 0);
        }
        put(&s, Keyspace::Auth, "user/gone", r#"{"name":"gone"}"#, 0);
        apply_in(
            &s,
            Keyspace::Auth,
            Command::DeleteRange(DeleteRangeRequest {
                key: b"user/gone".to_vec(),
                ..Default::default()
            }),
        );
        put(&s, Keyspace::Auth, "revision", "", 0);
        put(&s, Keyspace::User, "b", "2", 0);
        s
    }

    #[test]
    fn auth_crosses_the_etcd_format_both_ways() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store_with_auth(dir.path());
        let auth_revision = s.mod_revision_in(Keyspace::Auth, b"revision");
        let snap = etcd_snapshot_of(&s);
        let file = &snap[..snap.len() - DIGEST];

        // etcd's buckets hold the live users and roles (the deleted user is gone).
        assert_eq!(
            bucket(file, b"auth"),
            vec![
                (b"authEnabled".to_vec(), vec![1]),
                (
                    b"authRevision".to_vec(),
                    (auth_revision as u64).to_be_bytes().to_vec()
                ),
            ]
        );
        let users: Vec<Vec<u8>> = bucket(file, b"authUsers")
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(users, [b"alice".to_vec(), b"root".to_vec()]);
        let roles = bucket(file, b"authRoles");
        assert_eq!(roles.len(), 1);
        let reader = berth_proto::authpb::Role::decode(roles[0].1.as_slice()).expect("role");
        assert_eq!(
            reader.key_permission.len(),
            1,
            "the user keyspace's grant only"
        );
        assert_eq!(
            (
                reader.key_permission[0].key.as_slice(),
                reader.key_permission[0].range_end.as_slice()
            ),
            (&b"a"[..], &b"b"[..])
        );

        // berth → berth: the `berth` bucket's records, exactly (the registry grant too).
        let target = tempfile::tempdir().expect("tempdir");
        crate::snapshot::restore_data_only(snap.as_slice(), target.path()).expect("restore");
        let r = Store::open(target.path(), StoreOptions::default()).expect("open");
        assert_eq!(auth_records(&r), auth_records(&s));

        // etcd → berth: the same file without the `berth` bucket is etcd's.
        let etcd = rewrite(file, |name, entries| {
            if name == BERTH {
                entries.clear();
            }
        });
        let target = tempfile::tempdir().expect("tempdir");
        crate::snapshot::restore_data_only(etcd.as_slice(), target.path()).expect("restore");
        let r = Store::open(target.path(), StoreOptions::default()).expect("open");
        assert_eq!(r.revision(), s.revision(), "goes on from etcd's revision");
        assert_eq!(get(&r, Keyspace::User, "b", 0).expect("b").value, b"2");
        let got = auth_records(&r);
        let keys: Vec<&[u8]> = got.keys().map(Vec::as_slice).collect();
        assert_eq!(
            keys,
            [
                &b"enabled"[..],
                b"revision",
                b"role/reader",
                b"secret",
                b"user/alice",
                b"user/root"
            ]
        );
        assert!(
            got.values().all(|(_, m)| *m == s.revision()),
            "written at the newest revision"
        );
        assert_eq!(got[&b"enabled"[..]].0, b"1");
        assert_eq!(got[&b"secret"[..]].0.len(), 32);
        let alice: serde_json::Value =
            serde_json::from_slice(&got[&b"user/alice"[..]].0).expect("json");
        assert_eq!(
            alice,
            serde_json::json!({"name": "alice", "password": "$2b$04$alice", "roles": ["reader"], "epoch": 0})
        );
        let reader: serde_json::Value =
            serde_json::from_slice(&got[&b"role/reader"[..]].0).expect("json");
        assert_eq!(
            reader,
            serde_json::json!({"name": "reader", "permissions": [{"access": "read", "key": "YQ==", "range_end": "Yg=="}]})
        );
        // The user keyspace's newest revision is untouched by the auth records beside it.
        let b = get(&r, Keyspace::User, "b", 0).expect("b");
        assert_eq!((b.mod_revision, b.version), (s.revision(), 1));
    }

    #[test]
    fn auth_changed_by_etcd_makes_the_file_etcds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store_with_auth(dir.path());
        put(&s, Keyspace::Registry, "r", "1", 0);
        let snap = etcd_snapshot_of(&s);
        let file = &snap[..snap.len() - DIGEST];
        // etcd deleted alice (and moved its auth revision).
        let changed = rewrite(file, |name, entries| {
            if name == etcd_auth::USERS_BUCKET {
                entries.retain(|(k, _)| k != b"alice");
            }
            if name == etcd_auth::AUTH_BUCKET {
                for (k, v) in entries.iter_mut() {
                    if k == b"authRevision" {
                        *v = 1000u64.to_be_bytes().to_vec();
                    }
                }
            }
        });
        let target = tempfile::tempdir().expect("tempdir");
        crate::snapshot::restore_data_only(changed.as_slice(), target.path()).expect("restore");
        let r = Store::open(target.path(), StoreOptions::default()).expect("open");
        assert!(
            get(&r, Keyspace::Registry, "r", 0).is_none(),
            "berth's state dropped"
        );
        let got = auth_records(&r);
        assert!(got.contains_key(&b"user/root"[..]) && !got.contains_key(&b"user/alice"[..]));
    }

    #[test]
    fn a_format_1_berth_bucket_is_still_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path(), StoreOptions::default()).expect("open");
        put(&s, Keyspace::User, "a", "1", 0);
        put(&s, Keyspace::Registry, "r", "1", 0);
        let snap = etcd_snapshot_of(&s);
        let file = &snap[..snap.len() - DIGEST];
        // As an earlier berth wrote it (empty auth buckets, a digest without them), after
        // etcd started on it (which writes its auth revision).
        let mut view = EtcdView::default();
        for (k, v) in bucket(file, KEY) {
            view.entry(KEY, &k, &v);
        }
        let digest = view.0.finalize().to_vec();
        let old = rewrite(file, |name, entries| {
            if name == BERTH {
                for (k, v) in entries.iter_mut() {
                    if k == DIGEST_KEY {
                        *v = digest.clone();
                    } else if k == FORMAT_KEY {
                        *v = FORMAT_V1.to_vec();
                    }
                }
            } else if name == etcd_auth::AUTH_BUCKET {
                *entries = vec![(b"authRevision".to_vec(), 1u64.to_be_bytes().to_vec())];
            } else if name == etcd_auth::USERS_BUCKET || name == etcd_auth::ROLES_BUCKET {
                entries.clear();
            }
        });
        let target = tempfile::tempdir().expect("tempdir");
        crate::snapshot::restore_data_only(old.as_slice(), target.path()).expect("restore");
        let r = Store::open(target.path(), StoreOptions::default()).expect("open");
        assert!(
            get(&r, Keyspace::Registry, "r", 0).is_some(),
            "berth's state kept"
        );
        // An unknown format whose digest checks out is refused, not misread.
        let newer = rewrite(file, |name, entries| {
            if name == BERTH {
                for (k, v) in entries.iter_mut() {
                    if k == FORMAT_KEY {
                        *v = b"3".to_vec();
                    }
                }
            }
        });
        let target = tempfile::tempdir().expect("tempdir");
        let err = crate::snapshot::restore_data_only(newer.as_slice(), target.path())
            .expect_err("unknown format read");
        assert!(err.to_string().contains("unknown format"), "{err}");
    }

    #[test]
    fn revision_keys_match_etcd() {
        let k = rev_key(Revision::new(0x0102, 3), false);
        assert_eq!(k, b"\0\0\0\0\0\0\x01\x02_\0\0\0\0\0\0\0\x03");
        assert_eq!(parse_rev_key(&k), Some((Revision::new(0x0102, 3), false)));
        let t = rev_key(Revision::new(7, 0), true);
        assert_eq!(t.len(), 18);
        assert_eq!(parse_rev_key(&t), Some((Revision::new(7, 0), true)));
        assert_eq!(parse_rev_key(&t[..16]), None);
        let mut bad = k.clone();
        bad[8] = b'-';
        assert_eq!(parse_rev_key(&bad), None);
        assert_eq!(
            parse_rev_key(&[0xff; 17]),
            None,
            "negative revisions are refused"
        );
    }

    #[test]
    fn lease_encoding_matches_leasepb() {
        // leasepb.Lease{ID: 5, TTL: 30}: field 1 varint 5, field 2 varint 30.
        let pb = LeasePb {
            id: 5,
            ttl: 30,
            remaining_ttl: 0,
        };
        assert_eq!(pb.encode_to_vec(), vec![0x08, 5, 0x10, 30]);
    }
}

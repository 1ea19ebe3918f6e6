//! Keyspace tests of the whole store: spans, txns, watches and leases stay inside their
//! keyspace, every keyspace shares one revision sequence and one compaction, and files and
//! snapshots written before keyspaces existed open and behave as they did.

use std::sync::Arc;
use std::time::Duration;

use berth_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use berth_proto::etcdserverpb::request_op::Request as Op;
use berth_proto::etcdserverpb::*;
use berth_proto::mvccpb::KeyValue;
use prost::Message;
use redb::{Database, ReadableDatabase};
use tokio::sync::mpsc;

use crate::backend::{LAYOUT, LEASES, META, META_LAYOUT, REVS};
use crate::revision::Revision;
use crate::*;

const U: Keyspace = Keyspace::User;
const R: Keyspace = Keyspace::Registry;

fn open(dir: &std::path::Path) -> Arc<Store> {
    Store::open(dir, StoreOptions::default()).expect("open store")
}

fn apply_in(s: &Store, ks: Keyspace, cmd: Command) -> Result<Applied> {
    s.apply_batch_in(ks, &[cmd]).expect("batch").remove(0)
}

fn put_in(s: &Store, ks: Keyspace, k: &str, v: &str, lease: i64) -> i64 {
    let cmd = Command::Put(PutRequest {
        key: k.into(),
        value: v.into(),
        lease,
        ..Default::default()
    });
    match apply_in(s, ks, cmd) {
        Ok(Applied::Put(p)) => p.header.expect("header").revision,
        other => panic!("put failed: {other:?}"),
    }
}

/// Every key etcd's "everything" span (`""` to `"\0"`) reaches in `ks`, with values.
fn all_in(s: &Store, ks: Keyspace, rev: i64) -> Vec<(String, String)> {
    let r = s
        .range_in(
            ks,
            &RangeRequest {
                key: Vec::new(),
                range_end: vec![0],
                revision: rev,
                ..Default::default()
            },
        )
        .expect("range");
    r.kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn spans_never_leave_their_keyspace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    put_in(&s, U, "a", "user-a", 0);
    put_in(&s, R, "a", "reg-a", 0);
    put_in(&s, R, "", "reg-empty", 0);
    put_in(&s, R, "\u{7f}zz", "reg-high", 0);
    put_in(&s, U, "b", "user-b", 0);
    assert_eq!(all_in(&s, U, 0), pairs(&[("a", "user-a"), ("b", "user-b")]));
    assert_eq!(
        all_in(&s, R, 0),
        pairs(&[("", "reg-empty"), ("a", "reg-a"), ("\u{7f}zz", "reg-high")])
    );
    assert!(all_in(&s, Keyspace::Gateway, 0).is_empty());
    // A single-key read and the prefix convention stay inside too.
    let one = s.range(&RangeRequest {
        key: b"a".to_vec(),
        ..Default::default()
    });
    assert_eq!(one.expect("get").kvs[0].value, b"user-a");
    // etcdctl del --prefix "" in the user keyspace: only user keys go.
    let del = apply_in(
        &s,
        U,
        Command::DeleteRange(DeleteRangeRequest {
            key: Vec::new(),
            range_end: vec![0],
            prev_kv: true,
        }),
    );
    match del {
        Ok(Applied::DeleteRange(d)) => {
            assert_eq!(d.deleted, 2);
            let keys: Vec<&[u8]> = d.prev_kvs.iter().map(|kv| kv.key.as_slice()).collect();
            assert_eq!(
                keys,
                [b"a".as_slice(), b"b".as_slice()],
                "keys carry no tag"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(all_in(&s, U, 0).is_empty());
    assert_eq!(all_in(&s, R, 0).len(), 3, "the registry is untouched");
    // Counts and history per keyspace: the user keys existed at revision 6.
    assert_eq!(all_in(&s, U, 6).len(), 2);
}

#[test]
fn keyspaces_share_one_revision_sequence_and_one_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    assert_eq!(put_in(&s, U, "k", "1", 0), 2);
    assert_eq!(put_in(&s, R, "k", "1", 0), 3);
    assert_eq!(put_in(&s, Keyspace::Config, "k", "1", 0), 4);
    assert_eq!(put_in(&s, U, "k", "2", 0), 5);
    assert_eq!(put_in(&s, R, "k", "2", 0), 6);
    assert_eq!(s.revision(), 6);
    let kv = |ks| {
        s.range_in(
            ks,
            &RangeRequest {
                key: b"k".to_vec(),
                ..Default::default()
            },
        )
        .expect("get")
    };
    let (u, r) = (kv(U), kv(R));
    assert_eq!(u.header.as_ref().map(|h| h.revision), Some(6));
    assert_eq!(r.header.as_ref().map(|h| h.revision), Some(6));
    assert_eq!(
        (
            u.kvs[0].create_revision,
            u.kvs[0].mod_revision,
            u.kvs[0].version
        ),
        (2, 5, 2),
        "versions count per key of a keyspace"
    );
    assert_eq!(
        (
            r.kvs[0].create_revision,
            r.kvs[0].mod_revision,
            r.kvs[0].version
        ),
        (3, 6, 2)
    );
    // The registry's value at revision 4 is its first; the user's, too.
    assert_eq!(all_in(&s, R, 4), pairs(&[("k", "1")]));
    // One compaction covers every keyspace.
    let c = apply_in(
        &s,
        R,
        Command::Compaction(CompactionRequest {
            revision: 5,
            physical: false,
        }),
    );
    assert!(c.is_ok(), "{c:?}");
    for ks in [U, R] {
        let old = s.range_in(
            ks,
            &RangeRequest {
                key: b"k".to_vec(),
                revision: 4,
                ..Default::default()
            },
        );
        assert!(matches!(old, Err(StoreError::Compacted)), "{ks}: {old:?}");
    }
    assert_eq!(all_in(&s, R, 5), pairs(&[("k", "1")]), "kept: live at 5");
    // After a restart the keyspaces and the revision are rebuilt alike.
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.revision(), 6);
    assert_eq!(all_in(&s, U, 0), pairs(&[("k", "2")]));
    assert_eq!(all_in(&s, R, 0), pairs(&[("k", "2")]));
    assert_eq!(all_in(&s, Keyspace::Config, 0), pairs(&[("k", "1")]));
    assert_eq!(put_in(&s, R, "n", "x", 0), 7);
}

#[test]
fn a_txn_compares_reads_and_writes_in_one_keyspace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    put_in(&s, U, "only-user", "v", 0);
    let txn = TxnRequest {
        compare: vec![Compare {
            key: b"only-user".to_vec(),
            result: CompareResult::Greater as i32,
            target: CompareTarget::Version as i32,
            target_union: Some(TargetUnion::Version(0)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(Op::RequestPut(PutRequest {
                key: b"hit".to_vec(),
                ..Default::default()
            })),
        }],
        failure: vec![
            RequestOp {
                request: Some(Op::RequestPut(PutRequest {
                    key: b"miss".to_vec(),
                    ..Default::default()
                })),
            },
            RequestOp {
                request: Some(Op::RequestRange(RangeRequest {
                    key: Vec::new(),
                    range_end: vec![0],
                    ..Default::default()
                })),
            },
        ],
    };
    // In the registry the user key does not exist: the compare fails there.
    match apply_in(&s, R, Command::Txn(txn.clone())) {
        Ok(Applied::Txn(t)) => {
            assert!(!t.succeeded);
            let Some(response_op::Response::ResponseRange(r)) = &t.responses[1].response else {
                panic!("{t:?}")
            };
            let keys: Vec<&[u8]> = r.kvs.iter().map(|kv| kv.key.as_slice()).collect();
            assert_eq!(keys, [b"miss".as_slice()], "the txn reads its own keyspace");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(all_in(&s, R, 0), pairs(&[("miss", "")]));
    assert_eq!(all_in(&s, U, 0), pairs(&[("only-user", "v")]));
    // The same txn in the user keyspace succeeds, and so does a read-only one there.
    match apply_in(&s, U, Command::Txn(txn)) {
        Ok(Applied::Txn(t)) => assert!(t.succeeded),
        other => panic!("{other:?}"),
    }
    let read = TxnRequest {
        success: vec![RequestOp {
            request: Some(Op::RequestRange(RangeRequest {
                key: Vec::new(),
                range_end: vec![0],
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    let count = |t: TxnResponse| match &t.responses[0].response {
        Some(response_op::Response::ResponseRange(r)) => r.count,
        other => panic!("{other:?}"),
    };
    assert_eq!(count(s.txn_read(read.clone()).expect("read")), 2);
    assert_eq!(count(s.txn_read_in(R, read).expect("read")), 1);
}

/// `key` of `ks` as a multi-keyspace txn names it.
fn tagged(ks: Keyspace, key: &str) -> Vec<u8> {
    let mut k = vec![ks.id()];
    k.extend_from_slice(key.as_bytes());
    k
}

fn put_op(key: Vec<u8>, value: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key,
            value: value.into(),
            ..Default::default()
        })),
    }
}

#[test]
fn a_multi_keyspace_txn_compares_and_writes_across_keyspaces_at_one_revision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    put_in(&s, U, "k", "user", 0);
    let lock_rev = put_in(&s, R, "lock/k", "held", 0);
    put_in(&s, R, "gone/a", "1", 0);
    put_in(&s, R, "gone/b", "2", 0);
    // The same key in the user keyspace has another mod revision: the compare reads the
    // registry's.
    let txn = |lock_rev: i64| TxnRequest {
        compare: vec![Compare {
            key: tagged(R, "lock/k"),
            target: CompareTarget::Mod as i32,
            result: CompareResult::Equal as i32,
            target_union: Some(TargetUnion::ModRevision(lock_rev)),
            ..Default::default()
        }],
        success: vec![
            put_op(tagged(U, "k"), "new"),
            put_op(tagged(R, "lock/k"), "released"),
            RequestOp {
                request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                    key: tagged(R, "gone/"),
                    range_end: tagged(R, "gone0"),
                    ..Default::default()
                })),
            },
            RequestOp {
                request: Some(Op::RequestRange(RangeRequest {
                    key: tagged(U, ""),
                    range_end: tagged(U, "\0"),
                    ..Default::default()
                })),
            },
        ],
        failure: vec![],
    };
    let rev = match apply_in(&s, U, Command::MultiTxn(txn(lock_rev))) {
        Ok(Applied::Txn(t)) => {
            assert!(t.succeeded);
            let Some(response_op::Response::ResponseRange(r)) = &t.responses[3].response else {
                panic!("{t:?}")
            };
            let keys: Vec<&[u8]> = r.kvs.iter().map(|kv| kv.key.as_slice()).collect();
            assert_eq!(
                keys,
                [b"k".as_slice()],
                "reads see the user keyspace, untagged"
            );
            t.header.expect("header").revision
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(rev, lock_rev + 3, "one revision for the whole txn");
    assert_eq!(all_in(&s, U, 0), pairs(&[("k", "new")]));
    assert_eq!(all_in(&s, R, 0), pairs(&[("lock/k", "released")]));
    // The compare now fails (the lock moved): nothing is written.
    match apply_in(&s, U, Command::MultiTxn(txn(lock_rev))) {
        Ok(Applied::Txn(t)) => assert!(!t.succeeded),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.revision(), rev);
    // A key without a valid keyspace byte, or a range across keyspaces, is refused before
    // anything is written, even after valid ops.
    for bad in [
        vec![put_op(tagged(U, "x"), "1"), put_op(vec![99, b'y'], "2")],
        vec![
            put_op(tagged(U, "x"), "1"),
            RequestOp {
                request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                    key: tagged(U, "a"),
                    range_end: tagged(R, "z"),
                    ..Default::default()
                })),
            },
        ],
        vec![put_op(tagged(U, "x"), "1"), put_op(Vec::new(), "2")],
    ] {
        let t = TxnRequest {
            success: bad,
            ..Default::default()
        };
        assert!(matches!(
            apply_in(&s, U, Command::MultiTxn(t)),
            Err(StoreError::Corrupt(_))
        ));
        assert_eq!(s.revision(), rev);
        assert_eq!(all_in(&s, U, 0), pairs(&[("k", "new")]));
    }
}

fn spec(ks: Keyspace, start_rev: i64) -> WatchSpec {
    WatchSpec {
        keyspace: ks,
        span: KeySpan::new(b"", b"\0"),
        start_rev,
        no_put: false,
        no_delete: false,
    }
}

/// Collects (key, value, revision) of events until `n` arrived.
async fn events(rx: &mut mpsc::Receiver<Delivery>, n: usize) -> Vec<(String, String, i64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let d = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("events in time")
            .expect("open");
        for item in d.items {
            for ev in item.events.iter() {
                let kv = ev.kv.as_ref().expect("kv");
                out.push((
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    String::from_utf8_lossy(&kv.value).into_owned(),
                    kv.mod_revision,
                ));
            }
        }
    }
    out
}

#[tokio::test]
async fn watches_see_only_their_keyspace_live_and_replayed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let (utx, mut urx) = mpsc::channel(16);
    let (rtx, mut rrx) = mpsc::channel(16);
    let single = WatchSpec {
        span: KeySpan::new(b"k", b""),
        ..spec(R, 0)
    };
    let (stx, mut srx) = mpsc::channel(16);
    s.watch(spec(U, 0), 1, WatchSink::new(utx));
    s.watch(spec(R, 0), 2, WatchSink::new(rtx));
    s.watch(single, 3, WatchSink::new(stx));
    put_in(&s, U, "k", "u1", 0);
    put_in(&s, R, "k", "r1", 0);
    put_in(&s, U, "x", "u2", 0);
    put_in(&s, R, "y", "r2", 0);
    assert_eq!(
        events(&mut urx, 2).await,
        [("k".into(), "u1".into(), 2), ("x".into(), "u2".into(), 4)]
    );
    assert_eq!(
        events(&mut rrx, 2).await,
        [("k".into(), "r1".into(), 3), ("y".into(), "r2".into(), 5)]
    );
    assert_eq!(events(&mut srx, 1).await, [("k".into(), "r1".into(), 3)]);
    // A watch from the past replays only its keyspace's history, then follows.
    let (tx, mut rx) = mpsc::channel(16);
    s.watch(spec(R, 1), 4, WatchSink::new(tx));
    put_in(&s, U, "z", "u3", 0);
    put_in(&s, R, "z", "r3", 0);
    assert_eq!(
        events(&mut rx, 3).await,
        [
            ("k".into(), "r1".into(), 3),
            ("y".into(), "r2".into(), 5),
            ("z".into(), "r3".into(), 7)
        ]
    );
    assert!(urx.try_recv().is_ok(), "the user watcher got u3");
    assert!(urx.try_recv().is_err() && rrx.try_recv().is_ok());
    assert!(
        srx.try_recv().is_err(),
        "the single-key watcher saw nothing else"
    );
}

#[test]
fn a_lease_revoke_deletes_its_keys_in_every_keyspace_in_one_revision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let grant = Command::LeaseGrant(LeaseGrantRequest { ttl: 30, id: 7 });
    assert!(apply_in(&s, R, grant).is_ok());
    put_in(&s, U, "k", "u", 7);
    put_in(&s, R, "k", "r", 7);
    put_in(&s, R, "other", "kept", 0);
    let info = s.lease_info(7).expect("lease");
    assert_eq!(info.keys, [(U, b"k".to_vec()), (R, b"k".to_vec())]);
    assert_eq!(info.keys_in(U), [b"k".to_vec()]);
    // Keys survive a restart attached, each in its own keyspace.
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.lease_info(7).expect("lease").keys.len(), 2);
    let revoke = Command::LeaseRevoke(LeaseRevokeRequest { id: 7 });
    match apply_in(&s, U, revoke) {
        Ok(Applied::LeaseRevoke(r)) => assert_eq!(r.header.map(|h| h.revision), Some(5)),
        other => panic!("{other:?}"),
    }
    assert!(all_in(&s, U, 0).is_empty());
    assert_eq!(all_in(&s, R, 0), pairs(&[("other", "kept")]));
    assert_eq!(all_in(&s, R, 4).len(), 2, "history before the revoke");
}

/// The records of a layout-1 file (before keyspaces), written without the store's encoder:
/// a flag byte (0 put, 1 tombstone) then the key-value.
fn old_record(kv: &KeyValue, tombstone: bool) -> Vec<u8> {
    let mut v = vec![u8::from(tombstone)];
    v.extend(kv.encode_to_vec());
    v
}

fn old_kv(key: &str, value: &str, create: i64, rev: i64, version: i64, lease: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.into(),
        create_revision: create,
        mod_revision: rev,
        version,
        lease,
    }
}

/// Writes the file a store built before keyspaces left behind: history for "a" (revisions
/// 2, 3), "b" deleted at 5, "leased" on lease 9 at 4, compacted at 2, counters in `meta`.
fn write_layout_1_file(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("dir");
    let db = Database::create(dir.join("kv.redb")).expect("create");
    let w = db.begin_write().expect("write");
    {
        let mut revs = w.open_table(REVS).expect("revs");
        let mut meta = w.open_table(META).expect("meta");
        let mut leases = w.open_table(LEASES).expect("leases");
        w.open_table(crate::backend::BLOBS).expect("blobs");
        let rows = [
            (Revision::new(2, 0), old_kv("a", "1", 2, 2, 1, 0), false),
            (Revision::new(2, 1), old_kv("b", "x", 2, 2, 1, 0), false),
            (Revision::new(3, 0), old_kv("a", "2", 2, 3, 2, 0), false),
            (
                Revision::new(4, 0),
                old_kv("leased", "l", 4, 4, 1, 9),
                false,
            ),
            (Revision::new(5, 0), old_kv("b", "", 0, 5, 0, 0), true),
        ];
        for (rev, kv, tomb) in rows {
            revs.insert(rev.to_key(), old_record(&kv, tomb).as_slice())
                .expect("insert");
        }
        meta.insert("revision", 5).expect("meta");
        meta.insert("compacted", 2).expect("meta");
        meta.insert("applied", 6).expect("meta");
        leases.insert(9, 60).expect("lease");
    }
    w.commit().expect("commit");
}

fn layout_of(dir: &std::path::Path) -> Option<i64> {
    let db = Database::open(dir.join("kv.redb")).expect("open");
    let r = db.begin_read().expect("read");
    let meta = r.open_table(META).expect("meta");
    meta.get(META_LAYOUT).expect("get").map(|g| g.value())
}

#[test]
fn a_file_written_before_keyspaces_opens_as_the_user_keyspace() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_layout_1_file(dir.path());
    assert_eq!(layout_of(dir.path()), None);
    let s = open(dir.path());
    assert_eq!(s.revision(), 5);
    assert_eq!(all_in(&s, U, 0), pairs(&[("a", "2"), ("leased", "l")]));
    assert!(
        all_in(&s, R, 0).is_empty(),
        "nothing lands in a system keyspace"
    );
    // MVCC history and the compaction mark survived.
    assert_eq!(all_in(&s, U, 3), pairs(&[("a", "2"), ("b", "x")]));
    assert_eq!(all_in(&s, U, 2), pairs(&[("a", "1"), ("b", "x")]));
    let below = s.range(&RangeRequest {
        key: b"a".to_vec(),
        revision: 1,
        ..Default::default()
    });
    assert!(matches!(below, Err(StoreError::Compacted)), "{below:?}");
    let a = s
        .range(&RangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        })
        .expect("a");
    assert_eq!(
        (
            a.kvs[0].create_revision,
            a.kvs[0].mod_revision,
            a.kvs[0].version
        ),
        (2, 3, 2)
    );
    // The lease and its attached key survived: revoking deletes it.
    let info = s.lease_info(9).expect("lease 9");
    assert_eq!(info.keys_in(U), [b"leased".to_vec()]);
    drop(s);
    assert_eq!(layout_of(dir.path()), Some(LAYOUT), "stamped once, at open");
    let s = open(dir.path());
    assert_eq!(layout_of_store(&s), Some(LAYOUT));
    let revoke = apply_in(&s, U, Command::LeaseRevoke(LeaseRevokeRequest { id: 9 }));
    assert!(revoke.is_ok(), "{revoke:?}");
    assert_eq!(all_in(&s, U, 0), pairs(&[("a", "2")]));
    assert_eq!(put_in(&s, R, "new", "n", 0), 7, "the sequence goes on");
}

fn layout_of_store(s: &Store) -> Option<i64> {
    let mut found = None;
    let mut snap = Vec::new();
    s.snapshot(|c| {
        snap.extend_from_slice(c);
        Ok(())
    })
    .expect("snapshot");
    for r in crate::snapshot::parse_snapshot(&snap).expect("parse") {
        if let crate::snapshot::SnapshotRecord::Meta(META_LAYOUT, v) = r {
            found = Some(v);
        }
    }
    found
}

#[test]
fn a_file_of_a_newer_layout_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(open(dir.path()));
    {
        let db = Database::open(dir.path().join("kv.redb")).expect("open");
        let w = db.begin_write().expect("write");
        w.open_table(META)
            .expect("meta")
            .insert(META_LAYOUT, LAYOUT + 1)
            .expect("insert");
        w.commit().expect("commit");
    }
    assert!(Store::open(dir.path(), StoreOptions::default()).is_err());
}

/// Re-frames a snapshot with the version-1 magic (as a build before keyspaces wrote it).
fn as_version_1(snap: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut body = snap[..snap.len() - 32].to_vec();
    body[..11].copy_from_slice(b"BERTHSNAP1\n");
    let digest = Sha256::digest(&body);
    body.extend_from_slice(&digest);
    body
}

#[test]
fn snapshots_carry_every_keyspace_and_version_1_ones_still_install() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path().join("a").as_path());
    put_in(&s, U, "k", "u", 0);
    put_in(&s, R, "k", "r", 0);
    let mut snap = Vec::new();
    s.snapshot(|c| {
        snap.extend_from_slice(c);
        Ok(())
    })
    .expect("snapshot");
    assert!(snap.starts_with(b"BERTHSNAP2\n"));
    let target = open(dir.path().join("b").as_path());
    target.install_snapshot(snap.as_slice()).expect("install");
    assert_eq!(all_in(&target, U, 0), pairs(&[("k", "u")]));
    assert_eq!(all_in(&target, R, 0), pairs(&[("k", "r")]));
    assert_eq!(target.revision(), 3);

    // A version-1 snapshot (user keys only, no layout record) installs as user keys.
    let old = open(dir.path().join("c").as_path());
    put_in(&old, U, "old", "o", 0);
    let mut v2 = Vec::new();
    old.snapshot(|c| {
        v2.extend_from_slice(c);
        Ok(())
    })
    .expect("snapshot");
    let v1 = as_version_1(&v2);
    assert!(crate::snapshot::parse_snapshot(&v1).is_ok());
    target.install_snapshot(v1.as_slice()).expect("install v1");
    assert_eq!(all_in(&target, U, 0), pairs(&[("old", "o")]));
    assert!(all_in(&target, R, 0).is_empty());
    assert_eq!(layout_of_store(&target), Some(LAYOUT));
    let restored = dir.path().join("d");
    crate::snapshot::restore_data_only(v1.as_slice(), &restored).expect("restore v1");
    assert_eq!(
        layout_of(&restored),
        Some(LAYOUT),
        "restore stamps the layout"
    );
}

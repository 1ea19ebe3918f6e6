//! Semantics tests of the whole store against etcd's documented behaviour: revisions,
//! versions, txns, compaction, leases, watches, snapshots and restart.

use std::sync::Arc;

use berth_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use berth_proto::etcdserverpb::request_op::Request as Op;
use berth_proto::etcdserverpb::response_op::Response as OpResp;
use berth_proto::etcdserverpb::*;
use berth_proto::mvccpb::event::EventType;
use tokio::sync::mpsc;

use crate::*;

fn open(dir: &std::path::Path) -> Arc<Store> {
    Store::open(dir, StoreOptions::default()).expect("open store")
}

fn apply(s: &Store, cmd: Command) -> Result<Applied> {
    s.apply_batch(&[cmd]).expect("batch").remove(0)
}

fn put(s: &Store, k: &str, v: &str) -> i64 {
    match apply(
        s,
        Command::Put(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        }),
    ) {
        Ok(Applied::Put(p)) => p.header.expect("header").revision,
        other => panic!("put failed: {other:?}"),
    }
}

fn get(s: &Store, k: &str, rev: i64) -> Result<RangeResponse> {
    s.range(&RangeRequest {
        key: k.into(),
        revision: rev,
        ..Default::default()
    })
}

fn value(s: &Store, k: &str) -> Option<String> {
    let r = get(s, k, 0).expect("range");
    r.kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

#[test]
fn revisions_versions_and_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    assert_eq!(s.revision(), 1, "an empty store is at revision 1 like etcd");
    assert_eq!(put(&s, "a", "1"), 2);
    assert_eq!(put(&s, "a", "2"), 3);
    let kv = get(&s, "a", 0).expect("get").kvs.remove(0);
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    assert_eq!(get(&s, "a", 2).expect("old").kvs[0].value, b"1");
    assert!(matches!(get(&s, "a", 9), Err(StoreError::FutureRevision)));
    // Delete bumps the revision once; deleting nothing does not.
    let del = |k: &str| match apply(
        &s,
        Command::DeleteRange(DeleteRangeRequest {
            key: k.into(),
            prev_kv: true,
            ..Default::default()
        }),
    ) {
        Ok(Applied::DeleteRange(d)) => d,
        other => panic!("{other:?}"),
    };
    let d = del("a");
    assert_eq!(
        (d.deleted, d.header.expect("h").revision, d.prev_kvs.len()),
        (1, 4, 1)
    );
    let d = del("a");
    assert_eq!((d.deleted, d.header.expect("h").revision), (0, 4));
    assert_eq!(put(&s, "a", "3"), 5);
    let kv = get(&s, "a", 0).expect("get").kvs.remove(0);
    assert_eq!(
        (kv.create_revision, kv.version),
        (5, 1),
        "a new life after delete"
    );
}

#[test]
fn range_limit_sort_count_and_filters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    for (k, v) in [("k1", "c"), ("k2", "a"), ("k3", "b"), ("x", "z")] {
        put(&s, k, v);
    }
    let r = s
        .range(&RangeRequest {
            key: "k".into(),
            range_end: "l".into(),
            limit: 2,
            ..Default::default()
        })
        .expect("range");
    assert_eq!((r.kvs.len(), r.more, r.count), (2, true, 3));
    let r = s
        .range(&RangeRequest {
            key: "k".into(),
            range_end: "l".into(),
            sort_target: range_request::SortTarget::Value as i32,
            sort_order: range_request::SortOrder::Descend as i32,
            ..Default::default()
        })
        .expect("sorted");
    let keys: Vec<_> = r.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec![b"k1".to_vec(), b"k3".to_vec(), b"k2".to_vec()]);
    let r = s
        .range(&RangeRequest {
            key: "k".into(),
            range_end: "l".into(),
            count_only: true,
            ..Default::default()
        })
        .expect("count");
    assert_eq!((r.count, r.kvs.len()), (3, 0));
    let r = s
        .range(&RangeRequest {
            key: "k".into(),
            range_end: "l".into(),
            min_mod_revision: 3,
            keys_only: true,
            ..Default::default()
        })
        .expect("filtered");
    assert_eq!(r.kvs.len(), 2);
    assert!(r
        .kvs
        .iter()
        .all(|kv| kv.value.is_empty() && kv.version == 1));
    let all = s
        .range(&RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .expect("all keys");
    assert_eq!(all.count, 4);
}

fn cmp(key: &str, target: CompareTarget, result: CompareResult, u: TargetUnion) -> Compare {
    Compare {
        key: key.into(),
        target: target as i32,
        result: result as i32,
        target_union: Some(u),
        ..Default::default()
    }
}

fn op_put(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })),
    }
}

fn op_get(k: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestRange(RangeRequest {
            key: k.into(),
            ..Default::default()
        })),
    }
}

#[test]
fn txn_compare_and_swap_one_revision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    put(&s, "cas", "old");
    let txn = |expect: &str| TxnRequest {
        compare: vec![cmp(
            "cas",
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Value(expect.into()),
        )],
        success: vec![op_put("cas", "new"), op_put("other", "x"), op_get("cas")],
        failure: vec![op_get("cas")],
    };
    let t = match apply(&s, Command::Txn(txn("old"))) {
        Ok(Applied::Txn(t)) => t,
        other => panic!("{other:?}"),
    };
    assert!(t.succeeded);
    assert_eq!(
        t.header.expect("h").revision,
        3,
        "two puts share one revision"
    );
    match &t.responses[2].response {
        Some(OpResp::ResponseRange(r)) => {
            assert_eq!(r.kvs[0].value, b"new", "txn reads its own write")
        }
        other => panic!("{other:?}"),
    }
    let other = get(&s, "other", 0).expect("get").kvs.remove(0);
    assert_eq!(other.mod_revision, 3);
    let t = match apply(&s, Command::Txn(txn("old"))) {
        Ok(Applied::Txn(t)) => t,
        other => panic!("{other:?}"),
    };
    assert!(!t.succeeded);
    assert_eq!(
        t.header.expect("h").revision,
        3,
        "a read-only branch does not bump the revision"
    );
    // A value compare on a missing key fails; a version compare treats it as version 0.
    let missing = TxnRequest {
        compare: vec![cmp(
            "nope",
            CompareTarget::Version,
            CompareResult::Equal,
            TargetUnion::Version(0),
        )],
        ..Default::default()
    };
    assert!(matches!(apply(&s, Command::Txn(missing)), Ok(Applied::Txn(t)) if t.succeeded));
    // A put with a missing lease fails the whole txn and writes nothing.
    let bad = TxnRequest {
        success: vec![
            op_put("z1", "x"),
            RequestOp {
                request: Some(Op::RequestPut(PutRequest {
                    key: "z2".into(),
                    lease: 42,
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    };
    assert!(matches!(
        apply(&s, Command::Txn(bad)),
        Err(StoreError::LeaseNotFound)
    ));
    assert_eq!(value(&s, "z1"), None);
    assert_eq!(s.revision(), 3);
}

#[test]
fn compaction_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = open(dir.path());
        for i in 0..10 {
            put(&s, "k", &i.to_string());
        }
        assert!(matches!(
            apply(
                &s,
                Command::Compaction(CompactionRequest {
                    revision: 6,
                    physical: true
                })
            ),
            Ok(Applied::Compaction(_))
        ));
        assert!(matches!(get(&s, "k", 5), Err(StoreError::Compacted)));
        assert_eq!(get(&s, "k", 6).expect("at compaction").kvs[0].value, b"4");
        assert!(matches!(
            apply(
                &s,
                Command::Compaction(CompactionRequest {
                    revision: 6,
                    physical: false
                })
            ),
            Err(StoreError::Compacted)
        ));
        assert!(matches!(
            apply(
                &s,
                Command::Compaction(CompactionRequest {
                    revision: 99,
                    physical: false
                })
            ),
            Err(StoreError::FutureRevision)
        ));
    }
    let s = open(dir.path());
    assert_eq!(s.revision(), 11);
    assert_eq!(s.stats().compacted, 6);
    assert_eq!(value(&s, "k").as_deref(), Some("9"));
    assert!(matches!(get(&s, "k", 5), Err(StoreError::Compacted)));
    assert_eq!(put(&s, "k", "after"), 12);
}

#[test]
fn leases_attach_revoke_and_survive_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = open(dir.path());
        let g = apply(&s, Command::LeaseGrant(LeaseGrantRequest { ttl: 1, id: 7 }));
        assert!(
            matches!(g, Ok(Applied::LeaseGrant(ref r)) if r.ttl == 2),
            "raised to the minimum TTL"
        );
        assert!(matches!(
            apply(&s, Command::LeaseGrant(LeaseGrantRequest { ttl: 5, id: 7 })),
            Err(StoreError::LeaseExists)
        ));
        for k in ["l1", "l2"] {
            apply(
                &s,
                Command::Put(PutRequest {
                    key: k.into(),
                    value: "v".into(),
                    lease: 7,
                    ..Default::default()
                }),
            )
            .expect("put with lease");
        }
        apply(
            &s,
            Command::Put(PutRequest {
                key: "l1".into(),
                ignore_value: true,
                ignore_lease: true,
                ..Default::default()
            }),
        )
        .expect("ignore value and lease");
        assert_eq!(value(&s, "l1").as_deref(), Some("v"));
        assert_eq!(s.lease_info(7).expect("lease").keys.len(), 2);
    }
    let s = open(dir.path());
    let info = s.lease_info(7).expect("lease survives restart");
    assert_eq!(info.keys.len(), 2);
    let before = s.revision();
    apply(&s, Command::LeaseRevoke(LeaseRevokeRequest { id: 7 })).expect("revoke");
    assert_eq!(
        s.revision(),
        before + 1,
        "all attached keys go in one revision"
    );
    assert_eq!(value(&s, "l1"), None);
    assert!(matches!(
        apply(&s, Command::LeaseRevoke(LeaseRevokeRequest { id: 7 })),
        Err(StoreError::LeaseNotFound)
    ));
}

#[tokio::test]
async fn watch_replays_then_follows_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    for i in 0..50 {
        put(&s, &format!("w{}", i % 3), &i.to_string());
    }
    put(&s, "other", "x");
    let (tx, mut rx) = mpsc::channel(4);
    let spec = WatchSpec {
        keyspace: Keyspace::User,
        span: KeySpan::new(b"w", b"x"),
        start_rev: 2,
        no_put: false,
        no_delete: false,
    };
    s.watch(spec, 9, WatchSink::new(tx));
    // Keep writing while the watcher replays through a tiny channel.
    let writer = {
        let s = s.clone();
        tokio::task::spawn_blocking(move || {
            for i in 50..200 {
                put(&s, &format!("w{}", i % 3), &i.to_string());
            }
        })
    };
    let mut seen = Vec::new();
    while seen.len() < 200 {
        let resp = one(
            tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
                .await
                .expect("events keep coming")
                .expect("channel open"),
        );
        assert_eq!(resp.watch_id, 9);
        for ev in resp.events.iter() {
            assert_eq!(ev.r#type, EventType::Put as i32);
            seen.push(String::from_utf8_lossy(&ev.kv.as_ref().expect("kv").value).into_owned());
        }
    }
    writer.await.expect("writer");
    let want: Vec<String> = (0..200).map(|i| i.to_string()).collect();
    assert_eq!(seen, want);
}

#[tokio::test]
async fn watch_from_compacted_revision_reports_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    for i in 0..5 {
        put(&s, "c", &i.to_string());
    }
    apply(
        &s,
        Command::Compaction(CompactionRequest {
            revision: 4,
            physical: true,
        }),
    )
    .expect("compact");
    let (tx, mut rx) = mpsc::channel(4);
    s.watch(
        WatchSpec {
            keyspace: Keyspace::User,
            span: KeySpan::new(b"c", b""),
            start_rev: 2,
            no_put: false,
            no_delete: false,
        },
        1,
        WatchSink::new(tx),
    );
    let resp = one(rx.recv().await.expect("response"));
    assert_eq!(resp.compact_revision, 4);
}

#[test]
fn snapshot_restores_the_same_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    for i in 0..300 {
        put(&s, &format!("s{i}"), &"v".repeat(i));
    }
    apply(
        &s,
        Command::LeaseGrant(LeaseGrantRequest { ttl: 100, id: 3 }),
    )
    .expect("lease");
    let mut snap = Vec::new();
    s.snapshot(|c| {
        snap.extend_from_slice(c);
        Ok(())
    })
    .expect("snapshot");
    let target = tempfile::tempdir().expect("tempdir");
    let n = snapshot::restore(snap.as_slice(), target.path()).expect("restore");
    assert!(n >= 300);
    let r = open(target.path());
    assert_eq!(r.revision(), s.revision());
    assert_eq!(r.hash_kv(0).expect("hash").0, s.hash_kv(0).expect("hash").0);
    assert!(r.lease_exists(3));
    // A corrupted snapshot is refused.
    let mut bad = snap.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    let other = tempfile::tempdir().expect("tempdir");
    assert!(snapshot::restore(bad.as_slice(), other.path()).is_err());
}

#[test]
fn a_durable_view_keeps_its_moment_while_writes_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    for i in 0..100 {
        put(&s, &format!("k{i}"), "before");
    }
    let at = s.revision();
    let hash_at = s.hash_kv(0).expect("hash").0;
    let view = s.durable_view().expect("view");
    // Later writes, including over the same keys, do not show in the view.
    for i in 0..100 {
        put(&s, &format!("k{i}"), "after");
    }
    put(&s, "new", "after");
    assert!(s.revision() > at);
    let mut snap = Vec::new();
    view.write_snapshot(|c| {
        snap.extend_from_slice(c);
        Ok(())
    })
    .expect("write view");
    drop(view);
    let target = tempfile::tempdir().expect("tempdir");
    snapshot::restore(snap.as_slice(), target.path()).expect("restore");
    let r = open(target.path());
    assert_eq!(r.revision(), at);
    assert_eq!(r.hash_kv(0).expect("hash").0, hash_at);
    assert_eq!(value(&r, "k7").as_deref(), Some("before"));
    assert_eq!(value(&r, "new"), None);
    // The view was durable: the store reopened after it has at least its state.
    drop(s);
    let again = open(dir.path());
    assert!(again.revision() >= at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installing_a_snapshot_midway_converges_with_a_store_that_applied_everything() {
    let cmds: Vec<Command> = (0..300)
        .map(|i| match i % 7 {
            0 => Command::DeleteRange(DeleteRangeRequest {
                key: format!("k{}", i % 13).into(),
                ..Default::default()
            }),
            3 if i > 10 => Command::Compaction(CompactionRequest {
                revision: 2,
                physical: true,
            }),
            _ => Command::Put(PutRequest {
                key: format!("k{}", i % 13).into(),
                value: format!("v{i}").into(),
                ..Default::default()
            }),
        })
        .collect();
    let a_dir = tempfile::tempdir().expect("tempdir");
    let b_dir = tempfile::tempdir().expect("tempdir");
    let a = open(a_dir.path());
    let b = open(b_dir.path());
    // B has applied part of the history, with a watcher open, when A's snapshot arrives.
    for c in &cmds[..100] {
        let _ = b
            .apply_batch_with(&[Entry::new(Keyspace::User, c.clone())], &[], false)
            .expect("b");
    }
    let (tx, mut rx) = mpsc::channel(1024);
    b.watch(
        WatchSpec {
            keyspace: Keyspace::User,
            span: KeySpan::new(b"k", b"l"),
            start_rev: 0,
            no_put: false,
            no_delete: false,
        },
        1,
        WatchSink::new(tx),
    );
    for c in &cmds[..200] {
        let _ = a
            .apply_batch_with(&[Entry::new(Keyspace::User, c.clone())], &[], false)
            .expect("a");
    }
    let mut snap = Vec::new();
    a.flush().expect("flush");
    a.snapshot(|chunk| {
        snap.extend_from_slice(chunk);
        Ok(())
    })
    .expect("snapshot");
    b.install_snapshot(snap.as_slice()).expect("install");
    for c in &cmds[200..] {
        let _ = a
            .apply_batch_with(&[Entry::new(Keyspace::User, c.clone())], &[], false)
            .expect("a");
        let _ = b
            .apply_batch_with(&[Entry::new(Keyspace::User, c.clone())], &[], false)
            .expect("b");
    }
    assert_eq!(a.revision(), b.revision());
    assert_eq!(a.hash_kv(0).expect("a").0, b.hash_kv(0).expect("b").0);
    let all = |s: &Store| {
        s.range(&RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .expect("range")
        .kvs
    };
    assert_eq!(all(&a), all(&b));
    // The watcher kept going: it sees the last write.
    let last_rev = b.revision();
    let mut seen = 0;
    while seen < last_rev {
        let resp = one(
            tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
                .await
                .expect("events after the install")
                .expect("open"),
        );
        if resp.compact_revision != 0 {
            break;
        }
        seen = resp
            .events
            .last()
            .and_then(|e| e.kv.as_ref())
            .map(|kv| kv.mod_revision)
            .unwrap_or(seen);
    }
}

#[tokio::test]
async fn a_batch_reaches_key_and_range_watchers_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let spec = |k: &[u8], end: &[u8]| WatchSpec {
        keyspace: Keyspace::User,
        span: KeySpan::new(k, end),
        start_rev: 0,
        no_put: false,
        no_delete: false,
    };
    let (tx_a, mut rx_a) = mpsc::channel(16);
    let (tx_all, mut rx_all) = mpsc::channel(16);
    s.watch(spec(b"a", b""), 1, WatchSink::new(tx_a));
    s.watch(spec(b"a", b"c"), 2, WatchSink::new(tx_all));
    let txn = TxnRequest {
        success: vec![op_put("b", "1"), op_put("a", "2"), op_put("z", "3")],
        ..Default::default()
    };
    let cmds = [
        Command::Txn(txn),
        Command::Put(PutRequest {
            key: "a".into(),
            value: "4".into(),
            ..Default::default()
        }),
    ];
    s.apply_batch(&cmds).expect("batch");
    let values = |d: Delivery| -> Vec<Vec<u8>> {
        one(d)
            .events
            .iter()
            .map(|e| e.kv.as_ref().expect("kv").value.clone())
            .collect()
    };
    assert_eq!(
        values(rx_a.recv().await.expect("a")),
        vec![b"2".to_vec(), b"4".to_vec()]
    );
    assert_eq!(
        values(rx_all.recv().await.expect("range")),
        vec![b"1".to_vec(), b"2".to_vec(), b"4".to_vec()]
    );
}

/// The only response of a delivery (the tests here put one watcher on each stream).
fn one(d: Delivery) -> DeliveryItem {
    assert_eq!(d.items.len(), 1, "one watcher per stream");
    d.items.into_iter().next().expect("one item")
}

#[tokio::test]
async fn watchers_of_one_stream_share_a_delivery_and_its_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let (tx, mut rx) = mpsc::channel(4);
    let sink = WatchSink::new(tx);
    let spec = |k: &[u8], end: &[u8], no_put: bool| WatchSpec {
        keyspace: Keyspace::User,
        span: KeySpan::new(k, end),
        start_rev: 0,
        no_put,
        no_delete: false,
    };
    for id in 1..=3 {
        s.watch(spec(b"a", b"", false), id, sink.clone());
    }
    s.watch(spec(b"a", b"", true), 4, sink.clone());
    s.watch(spec(b"b", b"", false), 5, sink.clone());
    put(&s, "a", "1");
    let d = rx.recv().await.expect("delivery");
    assert_eq!(d.revision, s.revision());
    let mut ids: Vec<i64> = d.items.iter().map(|i| i.watch_id).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        vec![1, 2, 3],
        "no_put and other-key watchers get nothing"
    );
    assert!(d
        .items
        .iter()
        .all(|i| std::sync::Arc::ptr_eq(&i.events, &d.items[0].events)));
    assert_eq!(d.items[0].events.len(), 1);
    assert!(rx.try_recv().is_err(), "one delivery per stream per batch");
}

#[tokio::test]
async fn a_full_stream_replays_its_watchers_from_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let (tx, mut rx) = mpsc::channel(1);
    let sink = WatchSink::new(tx);
    for id in 1..=2 {
        let span = KeySpan::new(b"k", b"l");
        let spec = WatchSpec {
            keyspace: Keyspace::User,
            span,
            start_rev: 0,
            no_put: false,
            no_delete: false,
        };
        s.watch(spec, id, sink.clone());
    }
    for i in 0..20 {
        put(&s, &format!("k{i}"), "v");
    }
    // Both watchers see all 20 puts in order, exactly once, though the queue held one
    // delivery at a time.
    let mut seen: std::collections::HashMap<i64, Vec<i64>> = Default::default();
    while seen.values().map(Vec::len).sum::<usize>() < 40 {
        let d = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .expect("deliveries keep coming")
            .expect("open");
        for item in d.items {
            let revs = item
                .events
                .iter()
                .filter_map(|e| e.kv.as_ref())
                .map(|kv| kv.mod_revision);
            seen.entry(item.watch_id).or_default().extend(revs);
        }
    }
    let want: Vec<i64> = (2..22).collect();
    assert_eq!(seen[&1], want);
    assert_eq!(seen[&2], want);
}

#[test]
fn a_severed_store_reopens_at_its_last_durable_commit_as_after_a_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = open(dir.path());
        put(&s, "k", "durable");
        // As the consensus layer applies: visible at once, durable with a later commit.
        let not_durable = Command::Put(PutRequest {
            key: "k".into(),
            value: "applied only".into(),
            ..Default::default()
        });
        s.apply_batch_with(&[Entry::new(Keyspace::User, not_durable)], &[], false)
            .expect("batch")
            .remove(0)
            .expect("put");
        assert_eq!(value(&s, "k").as_deref(), Some("applied only"));
        s.sever_file();
    }
    let s = open(dir.path());
    assert_eq!(value(&s, "k").as_deref(), Some("durable"));
    assert_eq!(s.stats().revision, 2);
    // Not severed, a dropped store closes cleanly and keeps everything it applied.
    put(&s, "k", "closed cleanly");
    drop(s);
    assert_eq!(
        value(&open(dir.path()), "k").as_deref(),
        Some("closed cleanly")
    );
}

#[test]
fn negative_lease_ids_are_granted_and_compact_zero_on_a_new_store_is_a_no_op() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    // etcd grants any ID but 0; -1 used to fail at apply as "corrupt cluster".
    let g = apply(
        &s,
        Command::LeaseGrant(LeaseGrantRequest { ttl: 30, id: -1 }),
    );
    assert!(
        matches!(g, Ok(Applied::LeaseGrant(ref r)) if r.id == -1),
        "{g:?}"
    );
    apply(
        &s,
        Command::Put(PutRequest {
            key: "k".into(),
            value: "v".into(),
            lease: -1,
            ..Default::default()
        }),
    )
    .expect("put with lease -1");
    assert_eq!(s.lease_info(-1).expect("lease").keys.len(), 1);
    apply(&s, Command::LeaseRevoke(LeaseRevokeRequest { id: -1 })).expect("revoke");
    assert_eq!(value(&s, "k"), None, "revoking -1 deletes its key");
    let fresh = tempfile::tempdir().expect("tempdir");
    let s = open(fresh.path());
    let before = s.revision();
    apply(
        &s,
        Command::Compaction(CompactionRequest {
            revision: 0,
            physical: false,
        }),
    )
    .expect("compact 0 on a new store is a no-op");
    assert_eq!(s.revision(), before);
    assert!(matches!(
        apply(
            &s,
            Command::Compaction(CompactionRequest {
                revision: -1,
                physical: false
            })
        ),
        Err(StoreError::Compacted)
    ));
}

fn snapshot_corpus_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/snapshot")
}

/// The kept corpus of the `snapshot` fuzz target, replayed on every test run.
#[test]
fn the_snapshot_fuzz_corpus_parses_without_panic() {
    let dir = snapshot_corpus_dir();
    let inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
        .collect();
    assert!(!inputs.is_empty());
    for input in inputs {
        crate::snapshot::fuzz_parse(&input);
    }
}

/// Writes the `snapshot` fuzz target's seed: the records of a small store's snapshot
/// (`cargo test -p berth-store -- --ignored write_snapshot_fuzz_seed`).
#[test]
#[ignore]
fn write_snapshot_fuzz_seed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    put(&s, "a", "1");
    put(&s, "b", "2");
    apply(
        &s,
        Command::LeaseGrant(LeaseGrantRequest { ttl: 30, id: 5 }),
    )
    .expect("lease");
    // A key of a system keyspace, so the seed holds a keyspace-tagged change too.
    let registry = Command::Put(PutRequest {
        key: b"svc".to_vec(),
        value: b"r".to_vec(),
        ..Default::default()
    });
    s.apply_batch_in(Keyspace::Registry, &[registry])
        .expect("batch")
        .remove(0)
        .expect("registry put");
    let mut snap = Vec::new();
    s.snapshot(|chunk| {
        snap.extend_from_slice(chunk);
        Ok(())
    })
    .expect("snapshot");
    let body = crate::snapshot::fuzz_body(&snap).expect("a snapshot body");
    let out = snapshot_corpus_dir();
    std::fs::create_dir_all(&out).expect("corpus dir");
    std::fs::write(out.join("seed-store"), body).expect("write seed");
}

/// A guarded command applies only while its guard key is where the guard saw it, judged with
/// the earlier commands of the same batch applied: the refusal is a result, not a failure.
#[test]
fn guards_refuse_commands_checked_against_moved_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let put_in = |key: &str| {
        Command::Put(PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        })
    };
    let guard = |rev: i64| Guard {
        keyspace: Keyspace::Auth,
        key: b"revision".to_vec(),
        mod_revision: rev,
    };
    let guarded = |rev: i64, key: &str| Entry {
        guard: Some(guard(rev)),
        ..Entry::new(Keyspace::User, put_in(key))
    };
    assert_eq!(s.mod_revision_in(Keyspace::Auth, b"revision"), 0);
    // Absent key, guard 0: holds.
    let r = s
        .apply_batch_with(&[guarded(0, "a")], &[], true)
        .expect("apply");
    assert!(matches!(r[0], Ok(Applied::Put(_))));
    // The guard key moves within the batch: the later guarded command is refused.
    let r = s
        .apply_batch_with(
            &[
                Entry::new(Keyspace::Auth, put_in("revision")),
                guarded(0, "b"),
            ],
            &[],
            true,
        )
        .expect("apply");
    assert!(matches!(r[1], Err(StoreError::GuardStale)), "{r:?}");
    let at = s.mod_revision_in(Keyspace::Auth, b"revision");
    assert_eq!(at, s.revision(), "the refused put took no revision");
    let r = s
        .apply_batch_with(&[guarded(at, "c")], &[], true)
        .expect("apply");
    assert!(matches!(r[0], Ok(Applied::Put(_))));
    // A refused command wrote nothing.
    let keys = s
        .range(&RangeRequest {
            key: b"a".to_vec(),
            range_end: b"d".to_vec(),
            ..Default::default()
        })
        .expect("range");
    let names: Vec<_> = keys.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(names, vec![b"a".to_vec(), b"c".to_vec()]);
}

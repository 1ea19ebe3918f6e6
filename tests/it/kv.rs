//! KV over the wire with the `etcd-client` crate: ranges, puts, deletes, txns, compaction,
//! and etcd's exact errors for bad input.

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
};
use tonic::Code;

use crate::harness::{status_of, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_range_delete() {
    let srv = Server::start();
    let mut c = srv.client().await;
    let r = c.put("foo", "bar", None).await.expect("put");
    let h = r.header().expect("header");
    assert_eq!(h.revision(), 2);
    assert_ne!(h.cluster_id(), 0);
    assert_ne!(h.member_id(), 0);
    let r = c
        .put("foo", "baz", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put");
    assert_eq!(r.prev_key().expect("prev").value(), b"bar");
    for k in ["pre/a", "pre/b", "pre/c", "prf"] {
        c.put(k, k, None).await.expect("put");
    }
    let r = c
        .get("pre/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("prefix");
    assert_eq!(r.count(), 3);
    let r = c
        .get(
            "pre/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_limit(2)
                    .with_sort(SortTarget::Key, SortOrder::Descend),
            ),
        )
        .await
        .expect("limit");
    assert_eq!(r.kvs().len(), 2);
    assert!(r.more());
    assert_eq!(r.kvs()[0].key(), b"pre/c");
    let r = c
        .get("pre/b", Some(GetOptions::new().with_from_key()))
        .await
        .expect("from key");
    assert_eq!(r.count(), 3, "pre/b, pre/c, prf");
    let r = c
        .get("foo", Some(GetOptions::new().with_revision(2)))
        .await
        .expect("old rev");
    assert_eq!(r.kvs()[0].value(), b"bar");
    let r = c
        .get(
            "pre/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count");
    assert_eq!((r.count(), r.kvs().len()), (3, 0));
    let r = c
        .delete(
            "pre/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .expect("delete");
    assert_eq!((r.deleted(), r.prev_kvs().len()), (3, 3));
    let r = c
        .get("pre/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("gone");
    assert_eq!(r.count(), 0);
    let r = c
        .get("foo", Some(GetOptions::new().with_serializable()))
        .await
        .expect("serializable");
    assert_eq!(r.kvs()[0].value(), b"baz");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_cas_nested_and_errors() {
    let srv = Server::start();
    let mut c = srv.client().await;
    c.put("cas", "1", None).await.expect("put");
    let swap = |from: &str, to: &str| {
        Txn::new()
            .when([Compare::value("cas", CompareOp::Equal, from)])
            .and_then([TxnOp::put("cas", to, None), TxnOp::get("cas", None)])
            .or_else([TxnOp::get("cas", None)])
    };
    let r = c.txn(swap("1", "2")).await.expect("txn");
    assert!(r.succeeded());
    let r = c.txn(swap("1", "3")).await.expect("txn");
    assert!(!r.succeeded());
    let got = c.get("cas", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"2");
    let nested = Txn::new()
        .when([Compare::version("cas", CompareOp::Greater, 0)])
        .and_then([TxnOp::txn(
            Txn::new()
                .when([Compare::create_revision("missing", CompareOp::Equal, 0)])
                .and_then([TxnOp::put("inner", "yes", None)]),
        )]);
    assert!(c.txn(nested).await.expect("nested").succeeded());
    assert_eq!(
        c.get("inner", None).await.expect("get").kvs()[0].value(),
        b"yes"
    );

    let dup = Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]);
    let s = status_of(c.txn(dup).await.expect_err("duplicate key"));
    assert_eq!(
        (s.code(), s.message()),
        (
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request"
        )
    );
    let many: Vec<TxnOp> = (0..129)
        .map(|i| TxnOp::put(format!("m{i}"), "v", None))
        .collect();
    let s = status_of(
        c.txn(Txn::new().and_then(many))
            .await
            .expect_err("too many ops"),
    );
    assert_eq!(
        s.message(),
        "etcdserver: too many operations in txn request"
    );
    assert!(
        c.get("m0", None).await.expect("get").kvs().is_empty(),
        "nothing written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_etcds_errors_and_writes_nothing() {
    let srv = Server::start();
    let mut c = srv.client().await;
    let rev0 = c
        .get("x", None)
        .await
        .expect("get")
        .header()
        .expect("h")
        .revision();

    let s = status_of(c.put("", "v", None).await.expect_err("empty key"));
    assert_eq!(
        (s.code(), s.message()),
        (Code::InvalidArgument, "etcdserver: key is not provided")
    );
    let s = status_of(c.get("", None).await.expect_err("empty key"));
    assert_eq!(s.message(), "etcdserver: key is not provided");

    let big = vec![b'x'; 1536 * 1024 + 10];
    let s = status_of(c.put("big", big, None).await.expect_err("too large"));
    assert_eq!(
        (s.code(), s.message()),
        (Code::InvalidArgument, "etcdserver: request is too large")
    );
    let huge = vec![b'x'; 3 * 1024 * 1024];
    let s = status_of(
        c.put("huge", huge, None)
            .await
            .expect_err("over the frame limit"),
    );
    assert_eq!(s.code(), Code::ResourceExhausted);

    let s = status_of(
        c.put("l", "v", Some(PutOptions::new().with_lease(12345)))
            .await
            .expect_err("lease"),
    );
    assert_eq!(
        (s.code(), s.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );
    let s = status_of(
        c.put("l", "", Some(PutOptions::new().with_ignore_value()))
            .await
            .expect_err("ignore value on a missing key"),
    );
    assert_eq!(s.message(), "etcdserver: key not found");
    let s = status_of(
        c.put("l", "v", Some(PutOptions::new().with_ignore_value()))
            .await
            .expect_err("a value with ignore_value"),
    );
    assert_eq!(s.message(), "etcdserver: value is provided");

    let s = status_of(
        c.get("x", Some(GetOptions::new().with_revision(1000)))
            .await
            .expect_err("future"),
    );
    assert_eq!(
        (s.code(), s.message()),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision"
        )
    );

    // range_end before key: an empty answer, as etcd gives.
    let r = c
        .get("b", Some(GetOptions::new().with_range("a")))
        .await
        .expect("inverted range");
    assert_eq!(r.count(), 0);

    let rev1 = c
        .get("x", None)
        .await
        .expect("get")
        .header()
        .expect("h")
        .revision();
    assert_eq!(rev0, rev1, "no bad request wrote anything");
    // The server is still serving.
    c.put("ok", "1", None).await.expect("still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_over_the_wire() {
    let srv = Server::start();
    let mut c = srv.client().await;
    for i in 0..5 {
        c.put("k", i.to_string(), None).await.expect("put");
    }
    c.compact(4, None).await.expect("compact");
    let s = status_of(
        c.get("k", Some(GetOptions::new().with_revision(3)))
            .await
            .expect_err("compacted"),
    );
    assert_eq!(
        (s.code(), s.message()),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted"
        )
    );
    let s = status_of(c.compact(4, None).await.expect_err("again"));
    assert_eq!(
        s.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    let s = status_of(c.compact(100, None).await.expect_err("future"));
    assert_eq!(
        s.message(),
        "etcdserver: mvcc: required revision is a future revision"
    );
    assert_eq!(c.get("k", None).await.expect("get").kvs()[0].value(), b"4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_everything() {
    let mut srv = Server::start();
    {
        let mut c = srv.client().await;
        for i in 0..20 {
            c.put(format!("r{i}"), format!("v{i}"), None)
                .await
                .expect("put");
        }
        c.delete("r0", None).await.expect("delete");
    }
    srv.kill9();
    srv.restart();
    let mut c = srv.client().await;
    let r = c
        .get("r", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert_eq!(r.count(), 19);
    assert_eq!(r.header().expect("h").revision(), 22);
    assert_eq!(
        c.get("r5", Some(GetOptions::new().with_revision(7)))
            .await
            .expect("history")
            .kvs()[0]
            .value(),
        b"v5"
    );
    let p = c.put("next", "x", None).await.expect("put");
    assert_eq!(p.header().expect("h").revision(), 23, "revisions continue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_promptly_with_open_watches_and_keeps_data() {
    let mut srv = Server::start();
    let mut c = srv.client().await;
    c.put("g", "1", None).await.expect("put");
    let mut w = c.watch("g", None).await.expect("watch");
    assert!(w.message().await.expect("created").expect("msg").created());
    let took = srv.stop().expect("berth exits on SIGTERM");
    assert!(
        took < std::time::Duration::from_secs(6),
        "shutdown took {took:?}"
    );
    srv.start_again();
    let mut c = srv.client().await;
    assert_eq!(c.get("g", None).await.expect("get").kvs()[0].value(), b"1");
}

/// Concurrent writes share Raft calls (one log append per batch): each must still get its own
/// answer, success or refusal, matching what it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_each_get_their_own_answer() {
    let srv = Server::start();
    let client = srv.client().await;
    let proposed = |name: &str| {
        let (status, body) = srv.http_get("/metrics");
        assert_eq!(status, 200);
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    let writes_before = proposed("berth_raft_writes_proposed ");
    let calls_before = proposed("berth_raft_write_calls ");
    let tasks: Vec<_> = (0..256)
        .map(|i| {
            let mut c = client.clone();
            tokio::spawn(async move {
                let key = format!("batch/{i:03}");
                // Every 8th names a lease that does not exist: refused, and only that one.
                let opts = (i % 8 == 7).then(|| PutOptions::new().with_lease(424242));
                let r = c.put(key.as_str(), format!("v{i}"), opts).await;
                (i, key, r.map(|r| r.header().expect("header").revision()))
            })
        })
        .collect();
    let mut revisions = std::collections::HashSet::new();
    let mut c = client.clone();
    for t in tasks {
        let (i, key, r) = t.await.expect("join");
        let got = c.get(key.as_str(), None).await.expect("get");
        if i % 8 == 7 {
            let s = status_of(r.expect_err("a missing lease is refused"));
            assert_eq!(s.code(), Code::NotFound, "{s:?}");
            assert!(got.kvs().is_empty(), "a refused put wrote {key}");
            continue;
        }
        let rev = r.expect("put");
        assert!(revisions.insert(rev), "revision {rev} answered twice");
        let kv = &got.kvs()[0];
        assert_eq!(
            kv.mod_revision(),
            rev,
            "{key} was not written at its answer"
        );
        assert_eq!(kv.value(), format!("v{i}").as_bytes());
    }
    assert_eq!(revisions.len(), 224);
    // Every put was proposed once (refusals happen when applied), in at most as many calls.
    let writes = proposed("berth_raft_writes_proposed ") - writes_before;
    let calls = proposed("berth_raft_write_calls ") - calls_before;
    assert_eq!(writes, 256);
    assert!((1..=256).contains(&calls), "{calls} calls");
}

//! Maintenance, Cluster and Auth over the wire, plus the HTTP listener: status, hashes,
//! alarms, defragment, snapshot + restore, member list, metrics and health.

use std::process::Command;

use etcd_client::{AlarmAction, AlarmType, PutOptions};

use crate::harness::{berth_bin, run, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_hash_alarm_defrag_members() {
    let srv = Server::start();
    let mut c = srv.client().await;
    for i in 0..100 {
        c.put(format!("k{i}"), "x".repeat(100), None)
            .await
            .expect("put");
    }
    let st = c.status().await.expect("status");
    assert!(st.version().starts_with("3."));
    assert!(st.db_size() > 0);
    assert_eq!(st.leader(), st.header().expect("h").member_id());
    assert!(st.raft_index() >= 100);
    let h1 = c.hash_kv(0).await.expect("hashkv");
    let h2 = c.hash_kv(0).await.expect("hashkv");
    assert_eq!(h1.hash(), h2.hash());
    c.put("k0", "changed", None).await.expect("put");
    assert_ne!(c.hash_kv(0).await.expect("hashkv").hash(), h1.hash());
    assert_eq!(
        c.hash_kv(50).await.expect("hashkv at 50").compact_version(),
        0
    );
    c.hash().await.expect("hash");
    c.defragment().await.expect("defrag");
    assert_eq!(
        c.get("k5", None).await.expect("get").kvs().len(),
        1,
        "data intact after defrag"
    );

    let members = c.member_list().await.expect("members");
    assert_eq!(members.members().len(), 1);
    assert_eq!(members.members()[0].client_urls(), [srv.endpoint()]);

    let a = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarms");
    assert!(a.alarms().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_save_and_restore_into_a_new_data_dir() {
    let srv = Server::start();
    let mut c = srv.client().await;
    let lease = c.lease_grant(600, None).await.expect("lease").id();
    for i in 0..200 {
        c.put(format!("s{i:03}"), format!("v{i}"), None)
            .await
            .expect("put");
    }
    c.put("leased", "x", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put");
    let want = c.hash_kv(0).await.expect("hash").hash();
    let mut snap = c.snapshot().await.expect("snapshot");
    let mut bytes = Vec::new();
    while let Some(m) = snap.message().await.expect("chunk") {
        bytes.extend_from_slice(m.blob());
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("snap.db");
    std::fs::write(&file, &bytes).expect("write snapshot");
    let restored = tmp.path().join("restored");
    let (ok, out, err) = run(Command::new(berth_bin())
        .args(["snapshot", "restore"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&restored));
    assert!(ok, "restore failed: {out} {err}");
    let srv2 = Server::start_in(&restored);
    let mut c2 = srv2.client().await;
    assert_eq!(c2.hash_kv(0).await.expect("hash").hash(), want);
    assert_eq!(
        c2.get("s150", None).await.expect("get").kvs()[0].value(),
        b"v150"
    );
    assert!(c2.lease_time_to_live(lease, None).await.expect("ttl").ttl() > 0);
    // Restoring over an existing data directory is refused.
    let (ok, _, _) = run(Command::new(berth_bin())
        .args(["snapshot", "restore"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&restored));
    assert!(!ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health() {
    let srv = Server::start();
    let mut c = srv.client().await;
    c.put("m", "1", None).await.expect("put");
    let _ = c.put("", "1", None).await;
    let (code, body) = srv.http_get("/metrics");
    assert_eq!(code, 200);
    for want in [
        "berth_grpc_requests_total{method=\"/etcdserverpb.KV/Put\",code=\"Ok\"}",
        "code=\"InvalidArgument\"",
        "berth_grpc_request_duration_seconds_bucket",
        "berth_disk_commit_duration_seconds_count",
        "berth_mvcc_revision 2",
        "berth_db_size_bytes",
        "berth_watchers",
        "berth_leases",
        "berth_mvcc_keys 1",
    ] {
        assert!(body.contains(want), "metrics lack {want}:\n{body}");
    }
    let (code, body) = srv.http_get("/health");
    assert_eq!(code, 200);
    assert!(body.contains("\"health\":\"true\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_raises_nospace_and_still_allows_deletes() {
    let srv = Server::start_with(&["--quota-backend-bytes", "1"]);
    let mut c = srv.client().await;
    let e = c.put("k", "v", None).await.expect_err("over quota");
    let s = crate::harness::status_of(e);
    assert_eq!(s.code(), tonic::Code::ResourceExhausted);
    assert_eq!(s.message(), "etcdserver: mvcc: database space exceeded");
    let alarms = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarms");
    assert_eq!(alarms.alarms().len(), 1);
    assert_eq!(alarms.alarms()[0].alarm(), AlarmType::Nospace);
    assert!(
        c.lease_grant(10, None).await.is_err(),
        "lease grants are refused too"
    );
    c.delete("k", None)
        .await
        .expect("deletes free space, so they are allowed");
    let st = c.status().await.expect("status");
    assert!(
        st.errors().iter().any(|e| e.contains("NOSPACE")),
        "{:?}",
        st.errors()
    );
}

/// `--auto-compaction-mode periodic --auto-compaction-retention 2s`, as etcd takes them: the
/// leader compacts away history older than about two seconds (through the log), so an old
/// revision answers "compacted" while the newest values stay; bad flags are a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_auto_compaction_drops_old_history() {
    let srv = Server::start_with(&[
        "--auto-compaction-mode",
        "periodic",
        "--auto-compaction-retention",
        "2s",
    ]);
    let mut c = srv.client().await;
    let first = c
        .put("k", "v0", None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    for i in 1..20 {
        c.put("k", format!("v{i}"), None).await.expect("put");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let old = c
            .get(
                "k",
                Some(etcd_client::GetOptions::new().with_revision(first)),
            )
            .await;
        match old {
            Err(e) => {
                let s = crate::harness::status_of(e);
                assert_eq!(s.code(), tonic::Code::OutOfRange, "{s:?}");
                assert_eq!(
                    s.message(),
                    "etcdserver: mvcc: required revision has been compacted"
                );
                break;
            }
            Ok(_) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "revision {first} still readable: no auto-compaction"
                );
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
    let now = c.get("k", None).await.expect("get");
    assert_eq!(now.kvs()[0].value(), b"v19");
    let (_, metrics) = srv.http_get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("berth_auto_compactions_total ") && !l.ends_with(" 0")),
        "no auto-compaction counted"
    );

    let tmp = tempfile::tempdir().expect("tempdir");
    for (mode, retention, says) in [
        ("hourly", "1", "--auto-compaction-mode \"hourly\""),
        (
            "revision",
            "1h",
            "revision mode takes a number of revisions",
        ),
    ] {
        let out = Command::new(berth_bin())
            .args(["server", "--auto-compaction-mode", mode])
            .args(["--auto-compaction-retention", retention, "--data-dir"])
            .arg(tmp.path())
            .output()
            .expect("run");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
    }
}

//! Snapshots that move between berth and etcd 3.4, through the real `etcd` and `etcdctl`:
//! etcd → `etcdctl snapshot save` → `berth snapshot restore` → berth serves the same keys,
//! history, revisions and leases; berth → `etcdctl snapshot save` → `etcdctl snapshot
//! status|restore` → etcd serves berth's; damaged files are refused with a reason. Users,
//! roles and the auth switch cross both ways (and back, as the side that changed them last
//! left them).

use std::path::Path;
use std::process::Command;

use etcd_client::{
    Client, CompactionOptions, GetOptions, LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp,
};

use crate::harness::{berth_bin, etcdctl, free_port, run, Etcd, Server};

fn ok(cmd: &mut Command) -> String {
    let (success, out, err) = run(cmd);
    assert!(success, "{cmd:?} failed: {out}{err}");
    out
}

/// A key as a client sees it: key, value, create and mod revision, version, lease.
type Kv = (Vec<u8>, Vec<u8>, i64, i64, i64, i64);

/// Everything the tests compare between the source and the restored server.
#[derive(Debug, PartialEq)]
struct State {
    revision: i64,
    kvs: Vec<Kv>,
    /// Every key as of each revision of the history kept.
    history: Vec<(i64, Vec<Kv>)>,
    /// Whether a read below the compaction point is refused.
    compacted_refused: bool,
    /// (ID, granted TTL, attached keys) of each lease.
    leases: Vec<(i64, i64, Vec<Vec<u8>>)>,
}

async fn kvs_at(c: &mut Client, rev: i64) -> (i64, Vec<Kv>) {
    let r = c
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_revision(rev)),
        )
        .await
        .expect("get");
    let kvs = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect();
    (r.header().expect("header").revision(), kvs)
}

/// The writes both directions replay: versions, a leased key, a txn (sub-revisions), a
/// deletion, a compaction and writes after it. Returns (history revisions, compaction point).
async fn workload(c: &mut Client) -> (Vec<i64>, i64) {
    let lease = c.lease_grant(600, None).await.expect("lease").id();
    c.lease_grant(300, None).await.expect("an unused lease");
    c.put("a", "1", None).await.expect("put");
    c.put("a", "2", None).await.expect("put");
    c.put("gone", "soon", None).await.expect("put");
    c.put("b", "leased", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put");
    c.txn(Txn::new().and_then([TxnOp::put("t1", "x", None), TxnOp::put("t2", "y", None)]))
        .await
        .expect("txn");
    let compact_at = c
        .put("a", "3", None)
        .await
        .expect("put")
        .header()
        .expect("h")
        .revision();
    c.delete("gone", None).await.expect("delete");
    c.compact(compact_at, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    let mid = c
        .put("a", "4", None)
        .await
        .expect("put")
        .header()
        .expect("h")
        .revision();
    let last = c
        .put("d", "1", None)
        .await
        .expect("put")
        .header()
        .expect("h")
        .revision();
    (vec![compact_at, compact_at + 1, mid, last], compact_at)
}

async fn state(c: &mut Client, history: &[i64], compacted: i64) -> State {
    let (revision, kvs) = kvs_at(c, 0).await;
    let mut hist = Vec::new();
    for rev in history {
        hist.push((*rev, kvs_at(c, *rev).await.1));
    }
    let below = c
        .get("a", Some(GetOptions::new().with_revision(compacted - 1)))
        .await;
    let mut ids: Vec<i64> = c
        .leases()
        .await
        .expect("leases")
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    ids.sort();
    let mut leases = Vec::new();
    for id in ids {
        let t = c
            .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .expect("ttl");
        assert!(t.ttl() > 0, "lease {id:x} alive");
        leases.push((id, t.granted_ttl(), t.keys().to_vec()));
    }
    State {
        revision,
        kvs,
        history: hist,
        compacted_refused: below.is_err(),
        leases,
    }
}

fn berth_restore(file: &Path, dir: &Path) -> (bool, String) {
    let (success, out, err) = run(Command::new(berth_bin())
        .args(["snapshot", "restore"])
        .arg(file)
        .arg("--data-dir")
        .arg(dir));
    (success, format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_snapshot_restores_into_berth_with_history_and_leases() {
    let etcd = Etcd::start();
    let ep = format!("http://{}", etcd.client_addr);
    let mut c = Client::connect([ep.as_str()], None).await.expect("connect");
    let (history, compacted) = workload(&mut c).await;
    let want = state(&mut c, &history, compacted).await;
    assert!(want.compacted_refused && want.leases.len() == 2, "{want:?}");

    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("etcd.db");
    let saved = ok(etcdctl(&ep).args(["snapshot", "save"]).arg(&file));
    assert!(saved.contains("Snapshot saved at"), "{saved}");
    let dir = tmp.path().join("berth");
    let (success, out) = berth_restore(&file, &dir);
    assert!(success, "berth snapshot restore: {out}");
    drop(etcd);

    let srv = Server::start_in(&dir);
    let mut b = srv.client().await;
    assert_eq!(state(&mut b, &history, compacted).await, want);
    // The restored member goes on from etcd's revision.
    let next = b
        .put("after", "1", None)
        .await
        .expect("put")
        .header()
        .expect("h")
        .revision();
    assert_eq!(next, want.revision + 1);
    // etcdctl reads the same through berth.
    let got = ok(etcdctl(&srv.endpoint()).args(["get", "b", "-w", "fields"]));
    assert!(got.contains("\"Value\" : \"leased\""), "{got}");
}

/// What `etcdctl snapshot status` computes over a bbolt file: the CRC-32C of every bucket
/// name, key and value, the newest revision of `key` and the number of entries.
fn status_of(file: &[u8]) -> (u32, i64, usize) {
    let db = berth_bbolt::Db::open(&file[..file.len() - 32]).expect("bbolt");
    let (mut h, mut rev, mut n) = (crc32c::crc32c(&[]), 0, 0);
    for b in db.root().entries().expect("root") {
        h = crc32c::crc32c_append(h, b.key);
        for e in db
            .root()
            .open(&b)
            .expect("bucket")
            .entries()
            .expect("entries")
        {
            h = crc32c::crc32c_append(h, e.key);
            h = crc32c::crc32c_append(h, e.value);
            if b.key == b"key" {
                rev = i64::from_be_bytes(e.key[..8].try_into().expect("8 bytes"));
            }
            n += 1;
        }
    }
    (h, rev, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_berth_snapshot_restores_into_etcd_with_history_and_leases() {
    let srv = Server::start();
    let mut c = srv.client().await;
    let (history, compacted) = workload(&mut c).await;
    let want = state(&mut c, &history, compacted).await;
    assert!(want.compacted_refused && want.leases.len() == 2, "{want:?}");

    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("berth.db");
    let saved = ok(etcdctl(&srv.endpoint())
        .args(["snapshot", "save"])
        .arg(&file));
    assert!(saved.contains("Snapshot saved at"), "{saved}");
    let bytes = std::fs::read(&file).expect("read snapshot");
    assert_eq!(bytes.len() % 512, 32, "etcd's SHA-256 trailer convention");

    let status = ok(etcdctl(&srv.endpoint())
        .args(["snapshot", "status", "-w", "json"])
        .arg(&file));
    let (hash, revision, keys) = status_of(&bytes);
    assert_eq!(revision, want.revision);
    assert!(
        status.contains(&format!("\"hash\":{hash},"))
            && status.contains(&format!("\"revision\":{revision},"))
            && status.contains(&format!("\"totalKey\":{keys},")),
        "etcdctl snapshot status: {status} (expected hash {hash}, revision {revision}, {keys} keys)"
    );

    let dir = tmp.path().join("etcd");
    let peer = format!("http://127.0.0.1:{}", free_port());
    let restored = run(etcdctl(&srv.endpoint())
        .args(["snapshot", "restore"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&dir)
        .args([
            "--name",
            "restored",
            "--initial-cluster",
            &format!("restored={peer}"),
        ])
        .args(["--initial-advertise-peer-urls", &peer]));
    assert!(
        restored.0,
        "etcdctl snapshot restore: {}{}",
        restored.1, restored.2
    );
    drop(srv);

    let etcd = Etcd::start_in(&dir, "restored", &peer, None);
    let ep = format!("http://{}", etcd.client_addr);
    let mut e = Client::connect([ep.as_str()], None).await.expect("connect");
    assert_eq!(state(&mut e, &history, compacted).await, want);
    let next = e
        .put("after", "1", None)
        .await
        .expect("put")
        .header()
        .expect("h")
        .revision();
    assert_eq!(next, want.revision + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_snapshots_are_refused_with_a_reason() {
    let srv = Server::start();
    let mut c = srv.client().await;
    for i in 0..50 {
        c.put(format!("k{i}"), "v", None).await.expect("put");
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("s.db");
    ok(Command::new(berth_bin())
        .args(["--endpoints", &srv.endpoint(), "snapshot", "save"])
        .arg(&file));
    let bytes = std::fs::read(&file).expect("read");
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("truncated", bytes[..bytes.len() - 4096].to_vec(), "SHA-256"),
        (
            "flipped",
            {
                let mut b = bytes.clone();
                b[5000] ^= 0x55;
                b
            },
            "SHA-256",
        ),
        (
            "no trailer, cut",
            bytes[..bytes.len() - 32 - 4096].to_vec(),
            "truncated",
        ),
        (
            "garbage",
            b"not a snapshot".to_vec(),
            "neither a berth snapshot nor a bbolt",
        ),
    ];
    for (name, data, reason) in cases {
        let damaged = tmp.path().join(name);
        std::fs::write(&damaged, &data).expect("write");
        let (success, out) = berth_restore(&damaged, &tmp.path().join(format!("{name}-dir")));
        assert!(!success, "{name}: restored a damaged file");
        assert!(out.contains(reason), "{name}: {out}");
    }
    // The intact file still restores.
    let (success, out) = berth_restore(&file, &tmp.path().join("good"));
    assert!(success, "{out}");
}

const ROOT: &[&str] = &["--user", "root:rootpw"];

/// etcdctl as `who` (no `--user` when empty): (success, stdout, stderr).
fn as_user(endpoint: &str, who: &[&str], args: &[&str]) -> (bool, String, String) {
    run(etcdctl(endpoint).args(who).args(args))
}

/// Sets up root, alice (read-write on `app/`), two keys, and turns auth on.
fn set_up_auth(endpoint: &str) {
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice:apw"],
        &["role", "add", "app"],
        &[
            "role",
            "grant-permission",
            "app",
            "--prefix",
            "readwrite",
            "app/",
        ],
        &["user", "grant-role", "alice", "app"],
        &["put", "foo", "bar"],
        &["put", "app/x", "1"],
        &["auth", "enable"],
    ] {
        ok(etcdctl(endpoint).args(args));
    }
}

/// The auth `set_up_auth` made holds at `endpoint`: root reads everything, alice her prefix
/// only, a wrong password and no user at all are refused.
fn serves_with_auth(endpoint: &str) {
    let (success, out, err) = as_user(endpoint, ROOT, &["get", "foo"]);
    assert!(success && out == "foo\nbar\n", "root: {out}{err}");
    let (success, _, err) = as_user(endpoint, &[], &["get", "foo"]);
    assert!(
        !success && err.contains("user name is empty"),
        "anonymous: {err}"
    );
    let (success, _, err) = as_user(endpoint, &["--user", "root:wrong"], &["get", "foo"]);
    assert!(
        !success && err.contains("authentication failed, invalid user ID or password"),
        "wrong password: {err}"
    );
    let alice = &["--user", "alice:apw"][..];
    let (success, out, err) = as_user(endpoint, alice, &["get", "app/", "--prefix"]);
    assert!(success && out == "app/x\n1\n", "alice: {out}{err}");
    let (success, _, err) = as_user(endpoint, alice, &["get", "foo"]);
    assert!(
        !success && err.contains("permission denied"),
        "alice: {err}"
    );
    let (success, _, err) = as_user(endpoint, alice, &["put", "foo", "x"]);
    assert!(
        !success && err.contains("permission denied"),
        "alice: {err}"
    );
}

/// `etcdctl snapshot restore` of `file` into `dir`, then etcd on it.
fn etcd_from(file: &Path, dir: &Path) -> Etcd {
    let peer = format!("http://127.0.0.1:{}", free_port());
    ok(Command::new("/usr/bin/etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(file)
        .arg("--data-dir")
        .arg(dir)
        .args(["--name", "restored"])
        .args(["--initial-cluster", &format!("restored={peer}")])
        .args(["--initial-advertise-peer-urls", &peer]));
    Etcd::start_in(dir, "restored", &peer, None)
}

/// The entries of `bucket` in a saved snapshot (trailer included).
fn bucket_of(file: &[u8], bucket: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let db = berth_bbolt::Db::open(&file[..file.len() - 32]).expect("bbolt");
    db.bucket(bucket)
        .expect("bucket")
        .map(|b| {
            b.entries()
                .expect("entries")
                .iter()
                .map(|e| (e.key.to_vec(), e.value.to_vec()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_users_roles_and_auth_restore_into_berth() {
    let etcd = Etcd::start();
    let ep = format!("http://{}", etcd.client_addr);
    set_up_auth(&ep);
    serves_with_auth(&ep);
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("etcd.db");
    let (success, out, err) = as_user(&ep, ROOT, &["snapshot", "save", &file.to_string_lossy()]);
    assert!(success, "snapshot save: {out}{err}");
    drop(etcd);

    let dir = tmp.path().join("berth");
    let (success, out) = berth_restore(&file, &dir);
    assert!(success, "berth snapshot restore: {out}");
    let srv = Server::start_in(&dir);
    serves_with_auth(&srv.endpoint());
    // The restored state takes changes (they are guarded by the restored auth revision).
    let (success, out, err) = as_user(
        &srv.endpoint(),
        ROOT,
        &["role", "grant-permission", "app", "read", "foo"],
    );
    assert!(success, "grant: {out}{err}");
    let (success, out, err) = as_user(&srv.endpoint(), &["--user", "alice:apw"], &["get", "foo"]);
    assert!(
        success && out == "foo\nbar\n",
        "alice after the grant: {out}{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_users_roles_and_auth_restore_into_etcd_and_back() {
    let srv = Server::start_with(&["--bcrypt-cost", "4"]);
    set_up_auth(&srv.endpoint());
    serves_with_auth(&srv.endpoint());
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("berth.db");
    let (success, out, err) = as_user(
        &srv.endpoint(),
        ROOT,
        &["snapshot", "save", &file.to_string_lossy()],
    );
    assert!(success, "snapshot save: {out}{err}");
    drop(srv);

    let etcd = etcd_from(&file, &tmp.path().join("etcd"));
    let ep = format!("http://{}", etcd.client_addr);
    serves_with_auth(&ep);

    // etcd leaves berth's auth buckets as they were until it changes them: a snapshot of the
    // unchanged state still carries berth's own (the digest matches).
    let again = tmp.path().join("again.db");
    let (success, out, err) = as_user(&ep, ROOT, &["snapshot", "save", &again.to_string_lossy()]);
    assert!(success, "snapshot save: {out}{err}");
    let (berth_file, etcd_file) = (
        std::fs::read(&file).expect("read"),
        std::fs::read(&again).expect("read"),
    );
    for bucket in [&b"auth"[..], b"authUsers", b"authRoles", b"berth"] {
        assert_eq!(
            bucket_of(&berth_file, bucket),
            bucket_of(&etcd_file, bucket),
            "{}",
            String::from_utf8_lossy(bucket)
        );
    }

    // A user etcd adds comes back to berth: the file is etcd's now.
    for args in [
        &["user", "add", "carol:cpw"][..],
        &["user", "grant-role", "carol", "app"],
    ] {
        let (success, out, err) = as_user(&ep, ROOT, args);
        assert!(success, "{args:?}: {out}{err}");
    }
    let changed = tmp.path().join("changed.db");
    let (success, out, err) = as_user(&ep, ROOT, &["snapshot", "save", &changed.to_string_lossy()]);
    assert!(success, "snapshot save: {out}{err}");
    drop(etcd);
    let dir = tmp.path().join("berth-again");
    let (success, out) = berth_restore(&changed, &dir);
    assert!(success, "berth snapshot restore: {out}");
    let srv = Server::start_in(&dir);
    serves_with_auth(&srv.endpoint());
    let (success, out, err) = as_user(
        &srv.endpoint(),
        &["--user", "carol:cpw"],
        &["get", "app/x", "--print-value-only"],
    );
    assert!(success && out == "1\n", "carol: {out}{err}");
}

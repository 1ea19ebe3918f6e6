//! Auth and RBAC against real clients: the same etcdctl 3.4 session run against berth and a
//! real etcd 3.4 prints the same thing (successes, outputs and the exact denial texts); the
//! `etcd-client` crate logs in and is refused as etcd refuses; root-only operations; auth
//! state survives restarts and leader changes, and tokens work on every member.

use std::process::Command;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, Permission, PermissionType, WatchOptions};

use berth_proto::etcdserverpb::auth_client::AuthClient;
use berth_proto::etcdserverpb::kv_client::KvClient;
use berth_proto::etcdserverpb::{AuthenticateRequest, RangeRequest};

use crate::harness::{etcdctl, run, status_of, Cluster, Etcd, Server};

/// What one etcdctl command did: success, stdout, and its `Error:` line (etcdctl also logs
/// retries as JSON on stderr; only the final error is the contract).
fn step(endpoint: &str, args: &[&str]) -> (bool, String, String) {
    let (ok, out, err) = run(etcdctl(endpoint).args(args));
    let error = err
        .lines()
        .filter(|l| l.starts_with("Error:"))
        .collect::<Vec<_>>()
        .join("\n");
    (ok, out, error)
}

const ROOT: &[&str] = &["--user", "root:rootpw"];
const ALICE: &[&str] = &["--user", "alice:apw"];

/// A day of auth administration and use, as etcdctl users run it.
fn session() -> Vec<Vec<&'static str>> {
    let as_ = |who: &[&'static str], cmd: &[&'static str]| [who, cmd].concat();
    vec![
        vec!["auth", "enable"],
        vec!["user", "add", "root:rootpw"],
        vec!["auth", "enable"],
        vec!["role", "add", "root"],
        vec!["user", "grant-role", "root", "root"],
        vec!["auth", "enable"],
        vec!["put", "foo", "bar"],
        vec!["get", "foo"],
        as_(ROOT, &["put", "foo", "bar"]),
        as_(ROOT, &["get", "foo"]),
        vec!["--user", "root:wrong", "get", "foo"],
        vec!["--user", "nobody:pw", "get", "foo"],
        as_(ROOT, &["user", "add", "alice:apw"]),
        as_(ROOT, &["user", "add", "alice:again"]),
        as_(ROOT, &["role", "add", "r1"]),
        as_(ROOT, &["role", "add", "r1"]),
        as_(
            ROOT,
            &[
                "role",
                "grant-permission",
                "r1",
                "--prefix",
                "readwrite",
                "dir/",
            ],
        ),
        as_(ROOT, &["role", "grant-permission", "r1", "read", "ro"]),
        as_(
            ROOT,
            &["role", "grant-permission", "r1", "write", "wo", "wp"],
        ),
        as_(ROOT, &["role", "grant-permission", "nope", "read", "x"]),
        as_(ROOT, &["user", "grant-role", "alice", "r1"]),
        as_(ROOT, &["user", "grant-role", "alice", "nope"]),
        as_(ROOT, &["user", "grant-role", "bob", "r1"]),
        as_(ALICE, &["put", "dir/a", "1"]),
        as_(ALICE, &["put", "dir/b", "2"]),
        as_(ALICE, &["get", "dir/", "--prefix"]),
        as_(ALICE, &["get", "dir/", "--prefix", "--keys-only"]),
        as_(ALICE, &["get", "", "--prefix"]),
        as_(ALICE, &["put", "foo", "x"]),
        as_(ALICE, &["get", "foo"]),
        as_(ALICE, &["get", "ro"]),
        as_(ALICE, &["put", "ro", "1"]),
        as_(ALICE, &["put", "wo", "1"]),
        as_(ALICE, &["put", "wo0", "1"]),
        as_(ALICE, &["get", "wo"]),
        as_(ALICE, &["del", "dir/a"]),
        as_(ALICE, &["del", "dir/b", "--prev-kv"]),
        as_(ALICE, &["del", "wo"]),
        as_(ALICE, &["del", "wo", "--prev-kv"]),
        as_(ALICE, &["user", "list"]),
        as_(ALICE, &["user", "get", "alice"]),
        as_(ALICE, &["user", "get", "root"]),
        as_(ALICE, &["role", "get", "r1"]),
        as_(ALICE, &["role", "get", "root"]),
        as_(ALICE, &["user", "add", "mallory:pw"]),
        as_(ALICE, &["auth", "disable"]),
        as_(ROOT, &["role", "get", "r1"]),
        as_(ROOT, &["user", "get", "alice"]),
        as_(ROOT, &["user", "list"]),
        as_(ROOT, &["role", "list"]),
        as_(ROOT, &["user", "delete", "root"]),
        as_(ROOT, &["user", "revoke-role", "root", "root"]),
        as_(ROOT, &["role", "delete", "root"]),
        as_(ROOT, &["role", "revoke-permission", "r1", "ro"]),
        as_(ROOT, &["role", "revoke-permission", "r1", "ro"]),
        as_(ROOT, &["user", "revoke-role", "alice", "root"]),
        as_(ROOT, &["user", "delete", "bob"]),
        as_(ALICE, &["get", "ro"]),
        as_(ROOT, &["role", "delete", "r1"]),
        as_(ROOT, &["user", "get", "alice"]),
        as_(ALICE, &["get", "dir/", "--prefix"]),
        as_(ROOT, &["user", "delete", "alice"]),
        as_(ALICE, &["get", "dir/", "--prefix"]),
        as_(ROOT, &["auth", "disable"]),
        vec!["put", "free", "1"],
        vec!["user", "delete", "root"],
        vec!["user", "list"],
    ]
}

/// The same session against a real etcd 3.4 and against berth prints the same results,
/// step by step: every success, every output, every denial's exact text.
#[test]
fn etcdctl_auth_session_matches_etcd() {
    let etcd = Etcd::start();
    let srv = Server::start_with(&["--bcrypt-cost", "4"]);
    for args in session() {
        let theirs = step(&etcd.client_addr, &args);
        let ours = step(&srv.endpoint(), &args);
        assert_eq!(ours, theirs, "etcdctl {args:?}: berth vs etcd");
    }
}

/// What berth keeps to root beyond etcd 3.4 (which let any user compact and change
/// membership): compaction, maintenance and member changes; status and listing stay open.
#[test]
fn root_only_operations_are_refused_to_users() {
    let srv = Server::start_with(&["--bcrypt-cost", "4"]);
    let e = srv.endpoint();
    for args in [
        vec!["user", "add", "root:rootpw"],
        vec!["user", "grant-role", "root", "root"],
        vec!["user", "add", "alice:apw"],
        vec!["auth", "enable"],
    ] {
        let (ok, out, err) = step(&e, &args);
        assert!(ok, "{args:?}: {out} {err}");
    }
    for args in [
        vec!["compact", "1"],
        vec!["defrag"],
        vec!["member", "add", "m2", "--peer-urls", "http://127.0.0.1:1"],
        vec!["member", "remove", "1234"],
        vec!["snapshot", "save", "/dev/null"],
        vec!["move-leader", "1234"],
        vec!["endpoint", "hashkv"],
    ] {
        let (ok, out, err) = run(etcdctl(&e).args([ALICE, args.as_slice()].concat()));
        assert!(!ok, "alice may not {args:?}: {out}");
        assert!(
            err.contains("etcdserver: permission denied"),
            "{args:?}: {err}"
        );
    }
    for args in [
        vec!["endpoint", "status"],
        vec!["member", "list"],
        vec!["alarm", "list"],
        vec!["lease", "grant", "60"],
    ] {
        let (ok, out, err) = step(&e, &[ALICE, args.as_slice()].concat());
        assert!(ok, "alice may {args:?}: {out} {err}");
    }
    // Without any credential even a lease is refused; with a forged token too.
    let (ok, _, err) = step(&e, &["lease", "grant", "60"]);
    assert!(
        !ok && err.contains("etcdserver: user name is empty"),
        "{err}"
    );
    let (ok, _, err) = step(&e, &[ROOT, &["compact", "1"][..]].concat());
    assert!(ok, "root compacts: {err}");
}

async fn root_client(endpoint: &str) -> Client {
    Client::connect(
        [endpoint],
        Some(ConnectOptions::new().with_user("root", "rootpw")),
    )
    .await
    .expect("root logs in")
}

/// Sets up root and alice (read-write on `app/`, read on `cfg/`), and enables auth.
/// A berth auth token for `user` (an etcd `Authenticate` at `endpoint`), as HTTP faces take
/// it in `Authorization: Bearer` or `X-API-KEY`.
pub async fn token(endpoint: String, user: &str, pw: &str) -> String {
    let c = Client::connect([endpoint], None).await.expect("connect");
    c.auth_client()
        .authenticate(user.to_string(), pw.to_string())
        .await
        .expect("token")
        .token()
        .to_string()
}

pub async fn setup(c: &mut Client) {
    c.user_add("root", "rootpw", None).await.expect("root");
    c.user_grant_role("root", "root").await.expect("root role");
    c.user_add("alice", "apw", None).await.expect("alice");
    c.role_add("app").await.expect("role");
    c.role_grant_permission(
        "app",
        Permission::new(PermissionType::Readwrite, "app/").with_prefix(),
    )
    .await
    .expect("grant app/");
    c.role_grant_permission(
        "app",
        Permission::new(PermissionType::Read, "cfg/").with_prefix(),
    )
    .await
    .expect("grant cfg/");
    c.user_grant_role("alice", "app").await.expect("grant");
    c.auth_enable().await.expect("enable");
}

/// The `etcd-client` crate logs in with a user and gets etcd's codes and texts; a watch on a
/// range it may not read is cancelled as etcd cancels it; a revoked permission holds for the
/// very next request; a txn is checked op by op, compares included.
#[tokio::test]
async fn etcd_client_logs_in_and_is_held_to_its_roles() {
    let srv = Server::start_with(&["--bcrypt-cost", "4"]);
    let mut plain = srv.client().await;
    setup(&mut plain).await;
    let denied = status_of(plain.put("x", "1", None).await.expect_err("no user"));
    assert_eq!(
        (denied.code(), denied.message()),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: user name is empty"
        )
    );
    let bad = Client::connect(
        [srv.endpoint()],
        Some(ConnectOptions::new().with_user("alice", "wrong")),
    )
    .await
    .err()
    .map(status_of)
    .expect("a wrong password fails to connect");
    assert_eq!(
        bad.message(),
        "etcdserver: authentication failed, invalid user ID or password"
    );
    let mut alice = Client::connect(
        [srv.endpoint()],
        Some(ConnectOptions::new().with_user("alice", "apw")),
    )
    .await
    .expect("alice logs in");
    alice.put("app/a", "1", None).await.expect("own prefix");
    let e = status_of(alice.put("cfg/a", "1", None).await.expect_err("read-only"));
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::PermissionDenied,
            "etcdserver: permission denied"
        )
    );
    let mut root = root_client(&srv.endpoint()).await;
    root.put("cfg/a", "v", None).await.expect("root writes");
    let got = alice.get("cfg/a", None).await.expect("read cfg/");
    assert_eq!(got.kvs()[0].value(), b"v");

    // Txn: a compare on a key alice may not read refuses the whole txn.
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let sneaky = Txn::new()
        .when([Compare::value("secret", CompareOp::Equal, "x")])
        .and_then([TxnOp::put("app/b", "1", None)]);
    let e = status_of(alice.txn(sneaky).await.expect_err("compare on secret"));
    assert_eq!(e.message(), "etcdserver: permission denied");
    let fine = Txn::new()
        .when([Compare::value("cfg/a", CompareOp::Equal, "v")])
        .and_then([TxnOp::put("app/b", "1", None)]);
    assert!(alice.txn(fine).await.expect("allowed txn").succeeded());

    // Watch: a range alice may not read is cancelled at creation with etcd's reason.
    let mut stream = alice
        .watch("secret", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch stream");
    let first = stream.message().await.expect("recv").expect("a response");
    assert!(first.created() && first.canceled(), "{first:?}");
    assert_eq!(first.cancel_reason(), "etcdserver: permission denied");
    let mut ok = alice
        .watch("app/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch app/");
    root.put("app/c", "3", None).await.expect("put");
    let resp = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let r = ok.message().await.expect("recv").expect("response");
            if !r.events().is_empty() {
                return r;
            }
        }
    })
    .await
    .expect("event in time");
    assert_eq!(resp.events()[0].event_type(), EventType::Put);

    // Revoking the grant holds for the next request of the same client.
    root.role_revoke_permission(
        "app",
        "cfg/",
        Some(etcd_client::RoleRevokePermissionOptions::new().with_prefix()),
    )
    .await
    .expect("revoke");
    let e = status_of(alice.get("cfg/a", None).await.expect_err("revoked"));
    assert_eq!(e.message(), "etcdserver: permission denied");
    // As in etcd, the check is made when a watch is created: a new watch on the revoked
    // range is refused (one created before keeps its stream).
    let mut after = alice
        .watch("cfg/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch stream");
    let first = after.message().await.expect("recv").expect("a response");
    assert!(first.canceled(), "{first:?}");
    assert_eq!(first.cancel_reason(), "etcdserver: permission denied");

    // Deleting the user kills its token: etcd's invalid token.
    root.user_delete("alice").await.expect("delete alice");
    let e = status_of(alice.get("app/a", None).await.expect_err("deleted user"));
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::Unauthenticated,
            "etcdserver: invalid auth token"
        )
    );
}

/// Auth state is replicated and durable: set up through one member, it holds on every
/// member, across the leader's death and a full restart; a token issued by one member is
/// accepted by the others.
#[tokio::test]
async fn auth_survives_restart_and_leader_change() {
    let mut cluster = Cluster::start_with(3, &["--bcrypt-cost", "4"]);
    // A member asked before the first election answers "no leader" (as etcd's do).
    cluster.leader().await;
    let eps = cluster.endpoints();
    let mut c = Client::connect([eps[0].clone()], None)
        .await
        .expect("connect");
    setup(&mut c).await;
    for ep in &eps {
        let mut alice = Client::connect(
            [ep.clone()],
            Some(ConnectOptions::new().with_user("alice", "apw")),
        )
        .await
        .expect("alice logs in on every member");
        alice
            .put("app/x", ep.as_str(), None)
            .await
            .expect("allowed");
        let e = status_of(alice.put("other", "1", None).await.expect_err("denied"));
        assert_eq!(e.message(), "etcdserver: permission denied");
    }
    // A token issued by member 0, presented to member 1.
    let channel = |ep: &str| {
        tonic::transport::Channel::from_shared(format!("http://{ep}"))
            .expect("uri")
            .connect_lazy()
    };
    let token = AuthClient::new(channel(&eps[0]))
        .authenticate(AuthenticateRequest {
            name: "alice".into(),
            password: "apw".into(),
        })
        .await
        .expect("login")
        .into_inner()
        .token;
    let mut req = tonic::Request::new(RangeRequest {
        key: b"app/x".to_vec(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("token", token.parse().expect("ascii token"));
    let resp = KvClient::new(channel(&eps[1]))
        .range(req)
        .await
        .expect("member 1 accepts member 0's token");
    assert_eq!(resp.into_inner().kvs.len(), 1);

    let leader = cluster.leader().await;
    cluster.members[leader].kill9();
    let survivor = (leader + 1) % 3;
    // Logging in reads through the log (as etcd): it waits for the new leader.
    let mut alice = None;
    for _ in 0..100 {
        match Client::connect(
            [eps[survivor].clone()],
            Some(ConnectOptions::new().with_user("alice", "apw")),
        )
        .await
        {
            Ok(c) => {
                alice = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let mut alice = alice.expect("login after the leader died");
    let mut put_ok = false;
    for _ in 0..100 {
        if alice.put("app/after", "1", None).await.is_ok() {
            put_ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(put_ok, "a new leader takes alice's writes");
    let e = status_of(
        alice
            .put("other", "1", None)
            .await
            .expect_err("still denied"),
    );
    assert_eq!(e.message(), "etcdserver: permission denied");

    // Everyone down, everyone up: the auth state is on disk.
    for m in cluster.members.iter_mut() {
        m.kill9();
    }
    for m in cluster.members.iter_mut() {
        m.start_again_no_wait();
    }
    for m in cluster.members.iter_mut() {
        m.wait_ready();
    }
    let mut plain = Client::connect([eps[leader].clone()], None)
        .await
        .expect("connect");
    let e = status_of(plain.get("app/x", None).await.expect_err("auth still on"));
    assert_eq!(e.message(), "etcdserver: user name is empty");
    let mut alice = Client::connect(
        [eps[leader].clone()],
        Some(ConnectOptions::new().with_user("alice", "apw")),
    )
    .await
    .expect("login after restart");
    assert_eq!(
        alice
            .get("app/after", None)
            .await
            .expect("read")
            .kvs()
            .len(),
        1
    );
}

/// `--auth-token jwt,...` as etcd: tokens are JWTs any member with the key verifies; a JWT
/// carries the auth revision it was issued at, so after any auth change it is "old" and the
/// client must log in again; a bad option is a start-up error naming it.
#[tokio::test]
async fn jwt_tokens_carry_the_auth_revision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("jwt.key");
    std::fs::write(&key, b"a shared secret of thirty-two by").expect("key");
    let opt = format!("jwt,sign-method=HS256,priv-key={},ttl=10m", key.display());
    let srv = Server::start_with(&["--bcrypt-cost", "4", "--auth-token", &opt]);
    let mut plain = srv.client().await;
    setup(&mut plain).await;
    let mut root = root_client(&srv.endpoint()).await;
    let token = root
        .auth_client()
        .authenticate("alice".to_string(), "apw".to_string())
        .await
        .expect("login")
        .token()
        .to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let range = |token: &str| {
        let mut req = tonic::Request::new(RangeRequest {
            key: b"app/x".to_vec(),
            ..Default::default()
        });
        req.metadata_mut()
            .insert("token", token.parse().expect("ascii token"));
        req
    };
    let ch = tonic::transport::Channel::from_shared(format!("http://{}", srv.client_addr))
        .expect("uri")
        .connect_lazy();
    KvClient::new(ch.clone())
        .range(range(&token))
        .await
        .expect("a fresh JWT works");
    root.role_add("other").await.expect("an auth change");
    let e = KvClient::new(ch.clone())
        .range(range(&token))
        .await
        .expect_err("the JWT is older than the auth state");
    assert_eq!(e.message(), "etcdserver: revision of auth store is old");
    let e = KvClient::new(ch)
        .range(range(&format!("{token}x")))
        .await
        .expect_err("a forged JWT");
    assert_eq!(e.message(), "etcdserver: invalid auth token");

    let (ok, _, err) = run(Command::new(crate::harness::berth_bin()).args([
        "server",
        "--data-dir",
        &dir.path().join("d").display().to_string(),
        "--auth-token",
        "jwt,sign-method=RS256,pub-key=/nonexistent.pem",
    ]));
    assert!(!ok);
    assert!(
        err.contains("--auth-token") && err.contains("/nonexistent.pem"),
        "{err}"
    );
}

/// With `--client-cert-auth` and auth on, a verified client certificate's CN is the user (as
/// etcd): `no_password` users work by certificate alone, a token still wins over the CN, and
/// without auth the CN grants nothing extra.
#[test]
fn client_certificate_cn_is_the_user() {
    use crate::tls::{client, etcdctl, path, Pki};
    let pki = Pki::new("ca");
    let (scert, skey) = pki.issue("server", "server", false);
    let (root_cert, root_key) = pki.issue("root", "root", false);
    let (alice_cert, alice_key) = pki.issue("alice", "alice", false);
    let (eve_cert, eve_key) = pki.issue("eve", "eve", false);
    let ca = pki.ca_file();
    let srv = Server::start_tls(
        &[
            "--cert-file",
            path(&scert),
            "--key-file",
            path(&skey),
            "--trusted-ca-file",
            path(&ca),
            "--client-cert-auth",
            "--bcrypt-cost",
            "4",
        ],
        client(&ca, Some((&root_cert, &root_key))),
    );
    let ep = srv.endpoint();
    let as_cert = |cert: &std::path::Path, key: &std::path::Path| {
        vec![
            "--cacert".to_string(),
            path(&ca).to_string(),
            "--cert".to_string(),
            path(cert).to_string(),
            "--key".to_string(),
            path(key).to_string(),
        ]
    };
    let root = as_cert(&root_cert, &root_key);
    let alice = as_cert(&alice_cert, &alice_key);
    let eve = as_cert(&eve_cert, &eve_key);
    let run_as = |who: &Vec<String>, args: &[&str]| {
        let tls: Vec<&str> = who.iter().map(String::as_str).collect();
        etcdctl(&ep, &tls, args)
    };
    for args in [
        &["user", "add", "root", "--no-password"][..],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice", "--no-password"],
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
        &["auth", "enable"],
    ] {
        let (ok, out, err) = run_as(&root, args);
        assert!(ok, "{args:?}: {out}{err}");
    }
    let (ok, out, err) = run_as(&alice, &["put", "app/x", "1"]);
    assert!(ok, "alice by certificate: {out}{err}");
    let (ok, _, err) = run_as(&alice, &["put", "other", "1"]);
    assert!(
        !ok && err.contains("etcdserver: permission denied"),
        "{err}"
    );
    let (ok, out, err) = run_as(&root, &["user", "list"]);
    assert!(
        ok && out.contains("alice"),
        "root by certificate: {out}{err}"
    );
    // A CN that names no user is denied (as etcd: the user does not exist).
    let (ok, _, err) = run_as(&eve, &["get", "app/x"]);
    assert!(
        !ok && err.contains("etcdserver: permission denied"),
        "{err}"
    );
    // A no_password user cannot log in with a password.
    let (ok, _, err) = run_as(&eve, &["--user", "alice:x", "get", "app/x"]);
    assert!(
        !ok && err.contains("authentication failed, invalid user ID or password"),
        "{err}"
    );
}

/// The berth CLI and `berth bench` log in with etcdctl's `--user`/`--password`; wrong or
/// contradictory credentials are clear errors.
#[tokio::test]
async fn the_cli_and_bench_log_in_with_user_and_password() {
    let srv = Server::start_with(&["--bcrypt-cost", "4"]);
    let mut c = srv.client().await;
    setup(&mut c).await;
    let berth = |args: &[&str]| {
        run(Command::new(crate::harness::berth_bin())
            .args(["--endpoints", &srv.endpoint()])
            .args(args))
    };
    let (ok, out, err) = berth(&["--user", "alice:apw", "kv", "put", "app/cli", "1"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = berth(&[
        "--user",
        "alice",
        "--password",
        "apw",
        "kv",
        "get",
        "app/cli",
    ]);
    assert!(ok && out == "app/cli\n1\n", "{out}{err}");
    let (ok, _, err) = berth(&["--user", "alice:apw", "kv", "put", "other", "1"]);
    assert!(
        !ok && err.contains("etcdserver: permission denied"),
        "{err}"
    );
    let (ok, _, err) = berth(&["--user", "alice:bad", "kv", "get", "app/cli"]);
    assert!(
        !ok && err.contains("etcdserver: authentication failed, invalid user ID or password"),
        "{err}"
    );
    let (ok, _, err) = berth(&["kv", "get", "app/cli"]);
    assert!(
        !ok && err.contains("etcdserver: user name is empty"),
        "{err}"
    );
    let (ok, _, err) = berth(&["--user", "alice:apw", "--password", "x", "kv", "get", "a"]);
    assert!(!ok && err.contains("--password"), "{err}");
    let (ok, _, err) = berth(&["--user", "alice", "kv", "get", "a"]);
    assert!(!ok && err.contains("no password given"), "{err}");
    let (ok, out, err) = berth(&[
        "--user",
        "root:rootpw",
        "bench",
        "put",
        "--total",
        "200",
        "--clients",
        "4",
        "--conns",
        "2",
        "--key-prefix",
        "app/bench/",
    ]);
    assert!(ok, "bench as root: {out}{err}");
    let (ok, out, err) = berth(&[
        "--user",
        "alice:apw",
        "bench",
        "range",
        "--total",
        "200",
        "--clients",
        "4",
        "--conns",
        "2",
        "--key-prefix",
        "app/bench/",
    ]);
    assert!(ok, "bench as alice inside her prefix: {out}{err}");
}

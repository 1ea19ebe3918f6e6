//! Compatibility with the real `etcdctl` (etcd 3.4, installed by `.ci/run`): every command
//! an etcd user runs day to day, with the output etcdctl prints against etcd itself.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{run, Server};

fn etcdctl(srv: &Server) -> Command {
    let bin = which_etcdctl();
    let mut c = Command::new(bin);
    c.env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(srv.endpoint());
    c
}

fn which_etcdctl() -> &'static str {
    let bin = "/usr/bin/etcdctl";
    assert!(
        std::path::Path::new(bin).exists(),
        "etcdctl is missing: install Debian's etcd-client (.ci/run does)"
    );
    bin
}

/// Runs etcdctl with `args`, asserts success, returns stdout.
fn ok(srv: &Server, args: &[&str]) -> String {
    let (success, out, err) = run(etcdctl(srv).args(args));
    assert!(success, "etcdctl {args:?} failed: {out}{err}");
    out
}

fn ok_stdin(srv: &Server, args: &[&str], input: &str) -> String {
    let mut child = etcdctl(srv)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn etcdctl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kv_commands() {
    let srv = Server::start();
    assert_eq!(ok(&srv, &["put", "foo", "bar"]), "OK\n");
    assert_eq!(ok(&srv, &["get", "foo"]), "foo\nbar\n");
    assert_eq!(
        ok(&srv, &["put", "foo", "baz", "--prev-kv"]),
        "OK\nfoo\nbar\n"
    );
    ok(&srv, &["put", "dir/a", "1"]);
    ok(&srv, &["put", "dir/b", "2"]);
    assert_eq!(
        ok(&srv, &["get", "dir/", "--prefix"]),
        "dir/a\n1\ndir/b\n2\n"
    );
    assert_eq!(
        ok(&srv, &["get", "dir/", "--prefix", "--keys-only"]),
        "dir/a\n\ndir/b\n\n"
    );
    assert_eq!(
        ok(&srv, &["get", "dir/", "--prefix", "--print-value-only"]),
        "1\n2\n"
    );
    assert_eq!(
        ok(&srv, &["get", "dir/", "--prefix", "--limit", "1"]),
        "dir/a\n1\n"
    );
    assert_eq!(
        ok(
            &srv,
            &[
                "get",
                "dir/",
                "--prefix",
                "--sort-by",
                "VALUE",
                "--order",
                "DESCEND"
            ]
        ),
        "dir/b\n2\ndir/a\n1\n"
    );
    assert_eq!(ok(&srv, &["get", "foo", "--rev", "2"]), "foo\nbar\n");
    assert_eq!(
        ok(&srv, &["get", "dir/a", "--from-key", "--keys-only"]),
        "dir/a\n\ndir/b\n\nfoo\n\n"
    );
    assert_eq!(
        ok(&srv, &["get", "foo", "--consistency", "s"]),
        "foo\nbaz\n"
    );

    let json = ok(&srv, &["get", "foo", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json output");
    assert_eq!(v["kvs"][0]["key"], "Zm9v", "base64 of foo");
    assert_eq!(v["kvs"][0]["version"], 2);
    assert_eq!(v["count"], 1);
    assert!(v["header"]["revision"].as_i64().expect("revision") >= 5);

    assert_eq!(ok(&srv, &["del", "dir/", "--prefix"]), "2\n");
    assert_eq!(ok(&srv, &["del", "nothing"]), "0\n");

    let out = ok_stdin(
        &srv,
        &["txn"],
        "value(\"foo\") = \"baz\"\n\nput foo swapped\nget foo\n\nput foo failed\n\n",
    );
    assert_eq!(out, "SUCCESS\n\nOK\n\nfoo\nswapped\n");
    let out = ok_stdin(
        &srv,
        &["txn"],
        "mod(\"foo\") < \"2\"\n\nput foo no\n\nget foo\n\n",
    );
    assert_eq!(out, "FAILURE\n\nfoo\nswapped\n");

    let (success, _, err) = run(etcdctl(&srv).args(["put", "", "v"]));
    assert!(!success);
    assert!(err.contains("etcdserver: key is not provided"), "{err}");

    let rev = serde_json::from_str::<serde_json::Value>(&ok(&srv, &["get", "foo", "-w", "json"]))
        .expect("json")["header"]["revision"]
        .as_i64()
        .expect("rev");
    assert_eq!(
        ok(&srv, &["compaction", &rev.to_string()]),
        format!("compacted revision {rev}\n")
    );
    let (success, _, err) = run(etcdctl(&srv).args(["get", "foo", "--rev", "2"]));
    assert!(!success);
    assert!(
        err.contains("required revision has been compacted"),
        "{err}"
    );
}

#[test]
fn watch_command() {
    let srv = Server::start();
    let mut child = etcdctl(&srv)
        .args(["watch", "w", "--prefix", "--prev-kv"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn watch");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The watch is registered asynchronously: write until the first event shows up.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut lines = Vec::new();
    let mut n = 0;
    while lines.is_empty() {
        assert!(Instant::now() < deadline, "etcdctl watch printed nothing");
        ok(&srv, &["put", "w1", &format!("v{n}")]);
        n += 1;
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(300)) {
            lines.push(l);
        }
    }
    ok(&srv, &["del", "w1"]);
    // With --prev-kv a DELETE prints: DELETE, prev key, prev value, key, empty value.
    while lines
        .iter()
        .position(|l| l == "DELETE")
        .is_none_or(|d| lines.len() < d + 5)
    {
        lines.push(
            rx.recv_timeout(Duration::from_secs(10))
                .expect("watch output"),
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(lines[0], "PUT");
    assert_eq!(lines[1], "w1");
    let del = lines.iter().position(|l| l == "DELETE").expect("delete");
    assert_eq!(lines[del + 1], "w1", "deleted key");
    assert_eq!(
        lines[del + 2],
        format!("v{}", n - 1),
        "prev value of the deleted key"
    );
}

#[test]
fn lease_commands() {
    let srv = Server::start();
    let out = ok(&srv, &["lease", "grant", "100"]);
    // "lease 694d71ddacfda227 granted with TTL(100s)"
    let id = out.split_whitespace().nth(1).expect("lease id").to_string();
    assert!(out.ends_with("granted with TTL(100s)\n"), "{out}");
    ok(&srv, &["put", "lk", "v", "--lease", &id]);
    let ttl = ok(&srv, &["lease", "timetolive", &id, "--keys"]);
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(100s), remaining(")),
        "{ttl}"
    );
    assert!(ttl.contains("attached keys([lk])"), "{ttl}");
    let list = ok(&srv, &["lease", "list"]);
    assert!(
        list.contains("found 1 leases") && list.contains(&id),
        "{list}"
    );
    let ka = ok(&srv, &["lease", "keep-alive", "--once", &id]);
    assert_eq!(ka, format!("lease {id} keepalived with TTL(100)\n"));
    assert_eq!(
        ok(&srv, &["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(ok(&srv, &["get", "lk"]), "");
    let gone = ok(&srv, &["lease", "timetolive", &id]);
    assert_eq!(gone, format!("lease {id} already expired\n"));
    let (success, _, err) = run(etcdctl(&srv).args(["lease", "revoke", &id]));
    assert!(!success);
    assert!(
        err.contains("etcdserver: requested lease not found"),
        "{err}"
    );
}

#[test]
fn cluster_and_maintenance_commands() {
    let srv = Server::start();
    ok(&srv, &["put", "a", "1"]);
    let members = ok(&srv, &["member", "list"]);
    assert!(members.contains("started, default,"), "{members}");
    assert!(members.contains(&srv.endpoint()), "{members}");
    let status = ok(&srv, &["endpoint", "status"]);
    assert!(
        status.starts_with(&srv.endpoint()) && status.contains("3.5.0"),
        "{status}"
    );
    let table = ok(&srv, &["endpoint", "status", "-w", "table"]);
    assert!(
        table.contains("IS LEADER") && table.contains("true"),
        "{table}"
    );
    // etcdctl prints health to stderr.
    let (success, _, health) = run(etcdctl(&srv).args(["endpoint", "health"]));
    assert!(success, "{health}");
    assert!(
        health.contains("is healthy: successfully committed proposal"),
        "{health}"
    );
    let hashkv = ok(&srv, &["endpoint", "hashkv"]);
    assert!(
        hashkv.starts_with(&format!("{}, ", srv.endpoint())),
        "{hashkv}"
    );
    assert_eq!(ok(&srv, &["alarm", "list"]), "");
    let defrag = ok(&srv, &["defrag"]);
    assert!(
        defrag.contains("Finished defragmenting etcd member"),
        "{defrag}"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("s.db");
    let file_str = file.to_str().expect("utf8 path");
    let saved = ok(&srv, &["snapshot", "save", file_str]);
    assert!(
        saved.contains(&format!("Snapshot saved at {file_str}")),
        "{saved}"
    );
    assert!(std::fs::metadata(&file).expect("snapshot file").len() > 0);
    let locked = ok(&srv, &["lock", "mylock", "echo", "inside-the-lock"]);
    assert!(locked.contains("inside-the-lock"), "{locked}");
}

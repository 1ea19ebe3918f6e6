//! The berth CLI against berth and against a real etcd 3.4 on the same machine: the same
//! commands must print the same things (except IDs, revisions and timings).

use std::process::Command;

use crate::harness::{berth_bin, run, Etcd, Server};

fn berth(endpoint: &str, args: &[&str]) -> (bool, String, String) {
    run(Command::new(berth_bin())
        .arg("--endpoints")
        .arg(endpoint)
        .args(args))
}

fn ok(endpoint: &str, args: &[&str]) -> String {
    let (success, out, err) = berth(endpoint, args);
    assert!(
        success,
        "berth {args:?} against {endpoint} failed: {out}{err}"
    );
    out
}

/// Runs the same script against an endpoint and returns what it printed, with the parts that
/// legitimately differ between servers (lease IDs, revisions) normalized.
fn script(ep: &str) -> Vec<String> {
    let mut out = vec![
        ok(ep, &["kv", "put", "foo", "bar"]),
        ok(ep, &["kv", "put", "foo", "baz", "--prev-kv"]),
        ok(ep, &["kv", "put", "dir/a", "1"]),
        ok(ep, &["kv", "put", "dir/b", "2"]),
        ok(ep, &["kv", "get", "foo"]),
        ok(ep, &["kv", "get", "dir/", "--prefix"]),
        ok(ep, &["kv", "get", "dir/", "--prefix", "--keys-only"]),
        ok(
            ep,
            &[
                "kv",
                "get",
                "dir/",
                "--prefix",
                "--limit",
                "1",
                "--sort-by",
                "KEY",
                "--order",
                "DESCEND",
            ],
        ),
        ok(ep, &["kv", "get", "dir/", "--prefix", "--print-value-only"]),
        ok(ep, &["kv", "del", "dir/", "--prefix"]),
    ];
    let lease = ok(ep, &["lease", "grant", "120"]);
    assert!(lease.ends_with("granted with TTL(120s)\n"), "{lease}");
    let id = lease
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    ok(ep, &["kv", "put", "leased", "x", "--lease", &id]);
    let ttl = ok(ep, &["lease", "ttl", &id, "--keys"]);
    assert!(ttl.contains("attached keys([leased])"), "{ttl}");
    out.push(ok(ep, &["lease", "keep-alive", "--once", &id]).replace(&id, "ID"));
    out.push(ok(ep, &["lease", "revoke", &id]).replace(&id, "ID"));
    out.push(ok(ep, &["kv", "get", "leased"]));
    let (success, _, err) = berth(ep, &["kv", "put", "", "v"]);
    assert!(!success);
    out.push(err);
    let json = ok(ep, &["kv", "get", "foo", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    out.push(format!(
        "{} {} {}",
        v["kvs"][0]["key"], v["kvs"][0]["value"], v["count"]
    ));
    out
}

#[test]
fn same_output_against_berth_and_etcd() {
    let srv = Server::start();
    let etcd = Etcd::start();
    let from_berth = script(&srv.client_addr);
    let from_etcd = script(&etcd.client_addr);
    assert_eq!(from_berth, from_etcd);
    assert_eq!(from_berth[0], "OK\n");
    assert_eq!(from_berth[4], "foo\nbaz\n");
}

#[test]
fn maintenance_and_watch_commands() {
    let srv = Server::start();
    let ep = srv.client_addr.as_str();
    ok(ep, &["kv", "put", "a", "1"]);
    let members = ok(ep, &["member", "list"]);
    assert!(members.contains("started, default"), "{members}");
    let table = ok(ep, &["member", "list", "-w", "table"]);
    assert!(table.contains("IS LEARNER"), "{table}");
    let status = ok(ep, &["endpoint", "status", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert_eq!(v[0]["Status"]["version"], "3.5.0", "{status}");
    let (healthy, _, err) = berth(ep, &["endpoint", "health"]);
    assert!(healthy, "{err}");
    assert!(ok(ep, &["endpoint", "hashkv"]).contains(ep));
    assert_eq!(ok(ep, &["compact", "2"]), "compacted revision 2\n");
    ok(ep, &["defrag"]);
    assert_eq!(ok(ep, &["alarm", "list"]), "");

    // watch --max-events ends by itself after the events it was asked for.
    let watcher = std::thread::spawn({
        let ep = ep.to_string();
        move || ok(&ep, &["kv", "watch", "w", "--max-events", "2"])
    });
    let mut printed = String::new();
    for i in 0..100 {
        ok(ep, &["kv", "put", "w", &i.to_string()]);
        if watcher.is_finished() {
            printed = watcher.join().expect("watch thread");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(printed.starts_with("PUT\nw\n"), "{printed}");

    let tmp = tempfile::tempdir().expect("tempdir");
    let snap = tmp.path().join("b.snap");
    let out = ok(ep, &["snapshot", "save", snap.to_str().expect("utf8")]);
    assert!(out.contains("Snapshot saved at"), "{out}");
}

#[test]
fn unreachable_endpoint_is_a_clear_error() {
    let port = crate::harness::free_port();
    let (success, _, err) = run(Command::new(berth_bin())
        .args([
            "--endpoints",
            &format!("127.0.0.1:{port}"),
            "--dial-timeout",
            "500ms",
        ])
        .args(["kv", "get", "x"]));
    assert!(!success);
    assert!(err.starts_with("Error:"), "{err}");
}

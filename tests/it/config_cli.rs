//! The configuration CLI (`berth config ...`) against a real berth over its own API
//! (`/api/v1/config`): publish and read, history, diff and rollback, betas, a listener told
//! of a change, export, import and clone between namespaces, and the server's errors; an item
//! published through the CLI read through the Nacos face.

use std::time::Duration;

use crate::consul_cli::{cli, fails, json, ok};
use crate::harness::{http_request, Server};

#[test]
fn config_commands_publish_version_diff_roll_back_and_move_namespaces() {
    let srv = Server::start_with(&[crate::harness::WITH_NACOS]);
    let h = srv.http_addr.as_str();

    ok(
        h,
        &[
            "config",
            "put",
            "app.yaml",
            "port: 1\n",
            "-t",
            "yaml",
            "--desc",
            "the app",
        ],
    );
    ok(
        h,
        &[
            "config",
            "put",
            "app.yaml",
            "port: 2\n",
            "-t",
            "yaml",
            "--desc",
            "the app",
        ],
    );
    assert_eq!(ok(h, &["config", "get", "app.yaml"]), "port: 2\n");
    let item = json(&ok(h, &["config", "get", "app.yaml", "-w", "json"]));
    assert_eq!(
        (item["version"].as_u64(), item["type"].as_str()),
        (Some(2), Some("yaml"))
    );

    // The Nacos face reads what the CLI published.
    let ((code, body), _) = http_request(
        "GET",
        &srv.nacos_addr,
        "/nacos/v1/cs/configs?dataId=app.yaml&group=DEFAULT_GROUP",
        "",
        &[],
    );
    assert_eq!((code, body.as_str()), (200, "port: 2\n"));

    let history = json(&ok(h, &["config", "history", "app.yaml", "-w", "json"]));
    let ops: Vec<&str> = history["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["op"].as_str())
        .collect();
    assert_eq!(ops, ["U", "I"]);
    let diff = ok(h, &["config", "diff", "app.yaml", "1", "2"]);
    assert!(diff.contains("-port: 1\n+port: 2"), "{diff}");
    ok(h, &["config", "rollback", "app.yaml", "1"]);
    assert_eq!(ok(h, &["config", "get", "app.yaml"]), "port: 1\n");
    let item = json(&ok(h, &["config", "get", "app.yaml", "-w", "json"]));
    assert_eq!(
        item["version"].as_u64(),
        Some(3),
        "a rollback is a new version"
    );

    // Compare-and-publish with a stale MD5 is refused with the current one named.
    let err = fails(h, &["config", "put", "app.yaml", "x", "--cas-md5", "0000"]);
    assert!(
        err.contains("409") && err.contains("changed since"),
        "{err}"
    );
    let err = fails(h, &["config", "put", "app.yaml", "x", "-t", "docx"]);
    assert!(err.contains("400") && err.contains("docx"), "{err}");
    let err = fails(h, &["config", "put", "a.b", "x", "-n", "nowhere"]);
    assert!(err.contains("404") && err.contains("nowhere"), "{err}");

    // A beta seen by one address, then promoted to everyone.
    ok(
        h,
        &[
            "config",
            "beta",
            "put",
            "app.yaml",
            "port: 9\n",
            "--ips",
            "10.0.0.9",
        ],
    );
    let beta = json(&ok(h, &["config", "beta", "get", "app.yaml", "-w", "json"]));
    assert_eq!(beta["ips"][0], "10.0.0.9");
    assert_eq!(ok(h, &["config", "get", "app.yaml"]), "port: 1\n");
    ok(h, &["config", "beta", "promote", "app.yaml"]);
    assert_eq!(ok(h, &["config", "get", "app.yaml"]), "port: 9\n");
    assert!(fails(h, &["config", "beta", "get", "app.yaml"]).contains("404"));

    // A listener prints the item, then the next change.
    let listener = {
        let h = h.to_string();
        std::thread::spawn(move || cli(&h, &["config", "listen", "app.yaml", "--once"]))
    };
    std::thread::sleep(Duration::from_millis(800));
    ok(
        h,
        &["config", "put", "app.yaml", "port: 10\n", "-t", "yaml"],
    );
    let (success, out, err) = listener.join().expect("listener");
    assert!(success, "{err}");
    assert_eq!(out, "port: 9\nport: 10\n");

    // Export, import into a new namespace, clone back with each policy.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("public.tar.gz");
    let file = file.to_str().expect("path");
    ok(
        h,
        &[
            "config",
            "put",
            "db.properties",
            "url=x",
            "-g",
            "DB",
            "-t",
            "properties",
        ],
    );
    ok(h, &["config", "export", "-o", file]);
    ok(
        h,
        &["config", "ns", "create", "staging", "--name", "Staging"],
    );
    let report = json(&ok(
        h,
        &["config", "import", file, "-n", "staging", "-w", "json"],
    ));
    assert_eq!(report["imported"], 2);
    let listed = json(&ok(h, &["config", "ls", "-n", "staging", "-w", "json"]));
    assert_eq!(listed["total"], 2);
    assert_eq!(
        ok(
            h,
            &[
                "config",
                "get",
                "db.properties",
                "-g",
                "DB",
                "-n",
                "staging"
            ]
        ),
        "url=x\n"
    );
    let err = fails(h, &["config", "import", file, "-n", "staging"]);
    assert!(
        err.contains("409") && err.contains("nothing imported"),
        "{err}"
    );
    let report = json(&ok(
        h,
        &[
            "config", "import", file, "-n", "staging", "--policy", "skip", "-w", "json",
        ],
    ));
    assert_eq!(
        (
            report["imported"].as_u64(),
            report["skipped"].as_array().map(Vec::len)
        ),
        (Some(0), Some(2))
    );
    ok(h, &["config", "ns", "create", "qa"]);
    let report = json(&ok(
        h,
        &[
            "config", "clone", "--from", "staging", "--to", "qa", "-w", "json",
        ],
    ));
    assert_eq!(report["imported"], 2);
    std::fs::write(dir.path().join("bad.tar.gz"), b"not an archive").expect("write");
    let bad = dir.path().join("bad.tar.gz");
    let err = fails(
        h,
        &["config", "import", bad.to_str().expect("path"), "-n", "qa"],
    );
    assert!(err.contains("400") && err.contains("archive"), "{err}");

    // A namespace with items is not deleted; deleting the items frees it.
    assert!(fails(h, &["config", "ns", "delete", "qa"]).contains("holds 2 items"));
    ok(h, &["config", "delete", "app.yaml", "-n", "qa"]);
    ok(
        h,
        &["config", "delete", "db.properties", "-g", "DB", "-n", "qa"],
    );
    ok(h, &["config", "ns", "delete", "qa"]);
    let spaces = json(&ok(h, &["config", "ns", "ls", "-w", "json"]));
    let ids: Vec<&str> = spaces["namespaces"]
        .as_array()
        .expect("namespaces")
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert_eq!(ids, ["public", "staging"]);
}

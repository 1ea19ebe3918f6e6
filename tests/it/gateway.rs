//! etcd's JSON gateway on the client port: etcd3gw (Python, HTTP) runs its client paths;
//! requests and errors read as a real etcd 3.4's do (same status codes, same error bodies,
//! same field names); auth through the `Authorization` header; `/version` and `/health` on
//! the client port; a watch streams JSON lines.

use std::io::{BufRead, BufReader, Write};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{http_post, run, Etcd, Server};

fn python() -> String {
    crate::harness::python_with("BERTH_TEST_PYTHON", "etcd3gw", "pip install etcd3gw")
}

#[test]
fn etcd3gw_client_suite_passes() {
    let py = python();
    let srv = Server::start();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/etcd3gw_client.py"
    );
    let (ok, out, err) = run(Command::new(py).arg(script).arg(&srv.client_addr));
    assert!(ok, "etcd3gw suite failed:\n{out}\n{err}");
    assert!(out.contains(" passed, 0 failed"), "{out}");
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The keys of a JSON object, recursively, as `a.b.c` paths (values differ between servers:
/// IDs, revisions; the shape must not).
fn shape(v: &Value, at: &str, out: &mut Vec<String>) {
    if let Value::Object(m) = v {
        for (k, v) in m {
            let path = format!("{at}.{k}");
            out.push(path.clone());
            shape(v, &path, out);
        }
    } else if let Value::Array(a) = v {
        if let Some(first) = a.first() {
            shape(first, &format!("{at}[]"), out);
        }
    }
}

/// The same requests to etcd 3.4 and to berth: same status codes, same error bodies, same
/// JSON shapes (field names, which fields appear, strings for 64-bit numbers).
#[test]
fn requests_and_errors_read_as_etcds() {
    let etcd = Etcd::start();
    let srv = Server::start();
    let cases: &[(&str, &str)] = &[
        ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#),
        (
            "/v3/kv/put",
            r#"{"key":"Zm9v","value":"YmF6","prev_kv":true}"#,
        ),
        ("/v3/kv/range", r#"{"key":"Zm9v"}"#),
        ("/v3/kv/range", r#"{"key":"Zm9v","count_only":true}"#),
        ("/v3/kv/range", r#"{"key":"bm9uZQ=="}"#),
        ("/v3/kv/range", r#"{"key":""}"#),
        ("/v3/kv/range", r#"{"key":"Zm9v","revision":"99"}"#),
        ("/v3/kv/put", r#"{"key":"","value":"YmFy"}"#),
        ("/v3/kv/put", r#"{"key":"Zm9v","lease":"12345"}"#),
        (
            "/v3/kv/txn",
            r#"{"compare":[{"key":"Zm9v","target":"VALUE","result":"EQUAL","value":"YmF6"}],"success":[{"request_put":{"key":"YmFy","value":"MQ=="}}],"failure":[{"request_range":{"key":"Zm9v"}}]}"#,
        ),
        ("/v3/kv/deleterange", r#"{"key":"YmFy","prev_kv":true}"#),
        ("/v3/lease/grant", r#"{"TTL":"60","ID":"777"}"#),
        ("/v3/lease/grant", r#"{"TTL":"60","ID":"777"}"#),
        ("/v3/lease/timetolive", r#"{"ID":"777","keys":true}"#),
        ("/v3/lease/timetolive", r#"{"ID":"778"}"#),
        ("/v3/kv/lease/revoke", r#"{"ID":"777"}"#),
        ("/v3/lease/revoke", r#"{"ID":"777"}"#),
        ("/v3/cluster/member/list", "{}"),
        ("/v3/maintenance/alarm", r#"{"action":"GET"}"#),
        ("/v3/auth/authenticate", r#"{"name":"root","password":"x"}"#),
        ("/v3/auth/user/list", "{}"),
        ("/v3/kv/compaction", r#"{"revision":"1"}"#),
        ("/v3/kv/compaction", r#"{"revision":"1"}"#),
    ];
    for (path, body) in cases {
        let (theirs_code, theirs) = http_post(&etcd.client_addr, path, body, &[]);
        let (ours_code, ours) = http_post(&srv.client_addr, path, body, &[]);
        assert_eq!(
            ours_code, theirs_code,
            "{path} {body}: status (etcd said {theirs})"
        );
        let (t, o) = (json(&theirs), json(&ours));
        if theirs_code != 200 {
            assert_eq!(o, t, "{path} {body}: error body");
            continue;
        }
        let (mut ts, mut os) = (Vec::new(), Vec::new());
        shape(&t, "", &mut ts);
        shape(&o, "", &mut os);
        // etcd 3.4 leaves raft_term out of a member list's header; berth fills it.
        ts.retain(|p| !p.starts_with(".header"));
        os.retain(|p| !p.starts_with(".header"));
        assert_eq!(
            os, ts,
            "{path} {body}: JSON shape\netcd:  {theirs}\nberth: {ours}"
        );
    }
}

/// `/version` and `/health` answer on the client port (Patroni reads `etcdcluster` there to
/// pick the API path), and a watch streams `{"result":…}` lines as writes happen.
#[test]
fn version_health_and_a_streamed_watch() {
    let srv = Server::start();
    let addr = &srv.client_addr;
    let get = |path: &str| {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    };
    let v = json(&get("/version"));
    assert_eq!(v["etcdcluster"], "3.5.0");
    // The harness counts a server ready once it answers, which can be before it has
    // elected itself; /health says "false" (no leader) until then.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut h = json(&get("/health"));
    while h["health"] != "true" && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        h = json(&get("/health"));
    }
    assert_eq!(h["health"], "true");

    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let body = r#"{"create_request":{"key":"dw==","range_end":"eA=="}}"#;
    write!(
        s,
        "POST /v3/watch HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut lines = BufReader::new(s);
    let mut next_json = || loop {
        let mut line = String::new();
        lines.read_line(&mut line).expect("read line");
        let line = line.trim();
        if line.starts_with('{') {
            return json(line);
        }
    };
    let created = next_json();
    assert_eq!(created["result"]["created"], true, "{created}");
    http_post(addr, "/v3/kv/put", r#"{"key":"d3c=","value":"MQ=="}"#, &[]);
    let ev = next_json();
    assert_eq!(ev["result"]["events"][0]["kv"]["key"], "d3c=", "{ev}");
    assert_eq!(ev["result"]["events"][0]["kv"]["value"], "MQ==", "{ev}");
}

/// Auth through the gateway: a token from `/v3/auth/authenticate` in the `Authorization`
/// header; without it etcd's error and status; denials are 403 with etcd's body.
#[tokio::test]
async fn auth_through_the_authorization_header() {
    let srv = Server::start_with(&["--bcrypt-cost", "4"]);
    let mut c = srv.client().await;
    crate::auth::setup(&mut c).await;
    let addr = srv.client_addr.clone();
    let (code, body) = http_post(&addr, "/v3/kv/range", r#"{"key":"YXBwL3g="}"#, &[]);
    assert_eq!(code, 400);
    assert_eq!(json(&body)["error"], "etcdserver: user name is empty");
    let (code, body) = http_post(
        &addr,
        "/v3/auth/authenticate",
        r#"{"name":"alice","password":"apw"}"#,
        &[],
    );
    assert_eq!(code, 200, "{body}");
    let token = json(&body)["token"].as_str().expect("token").to_string();
    let auth = [("Authorization", token.as_str())];
    let (code, body) = http_post(
        &addr,
        "/v3/kv/put",
        r#"{"key":"YXBwL3g=","value":"MQ=="}"#,
        &auth,
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_post(
        &addr,
        "/v3/kv/put",
        r#"{"key":"eA==","value":"MQ=="}"#,
        &auth,
    );
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        json(&body),
        json(
            r#"{"error":"etcdserver: permission denied","code":7,"message":"etcdserver: permission denied"}"#
        )
    );
    let (code, body) = http_post(
        &addr,
        "/v3/kv/range",
        r#"{"key":"YXBwL3g="}"#,
        &[("Authorization", "forged")],
    );
    assert_eq!(code, 401, "{body}");
    assert_eq!(json(&body)["error"], "etcdserver: invalid auth token");
}

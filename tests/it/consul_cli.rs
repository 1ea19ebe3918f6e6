//! The registry CLI (`berth svc|check|session`) against a real berth over its Consul HTTP
//! API: registration with a TTL check, check reports, health filters, every output format,
//! sessions, the server's errors, usage errors, tokens under auth, and https.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{berth_bin, free_port, run, Server};

/// Runs `berth --http-addr <addr> args..` with no Consul variables from the environment
/// (the registry and config CLI tests share these helpers).
pub(crate) fn cli(addr: &str, args: &[&str]) -> (bool, String, String) {
    run(Command::new(berth_bin())
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("CONSUL_HTTP_TOKEN")
        .arg("--http-addr")
        .arg(addr)
        .args(args))
}

pub(crate) fn ok(addr: &str, args: &[&str]) -> String {
    let (success, out, err) = cli(addr, args);
    assert!(success, "berth {args:?} failed: {out}{err}");
    out
}

/// Runs a command that must fail and returns its stderr.
pub(crate) fn fails(addr: &str, args: &[&str]) -> String {
    let (success, out, err) = cli(addr, args);
    assert!(!success, "berth {args:?} should fail, printed: {out}");
    err
}

pub(crate) fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn services_register_report_and_show_their_health() {
    let srv = Server::start();
    let a = format!("http://{}", srv.http_addr);
    let a = a.as_str();
    let out = ok(
        a,
        &[
            "svc",
            "register",
            "web",
            "--id",
            "web1",
            "--address",
            "10.0.0.5",
            "--port",
            "8080",
            "--tag",
            "primary",
            "--tag",
            "v1",
            "--meta",
            "version=1.2",
            "--ttl",
            "30s",
        ],
    );
    assert_eq!(
        out,
        "Registered service: web (ID web1, check service:web1)\n"
    );
    // A TTL check starts critical: nothing passes yet.
    assert_eq!(ok(a, &["svc", "health", "web", "--passing"]), "");
    let health = ok(a, &["svc", "health", "web"]);
    assert!(
        health.ends_with(", web1, 10.0.0.5:8080, critical, 2\n"),
        "{health}"
    );

    // A note with characters that must be encoded in the query.
    let out = ok(
        a,
        &["check", "pass", "service:web1", "--note", "ok & 100%=fine"],
    );
    assert_eq!(out, "Check service:web1 is passing\n");
    let passing = ok(a, &["svc", "health", "web", "--passing"]);
    assert!(
        passing.ends_with(", web1, 10.0.0.5:8080, passing, 2\n"),
        "{passing}"
    );
    assert_eq!(passing.lines().count(), 1, "{passing}");
    assert!(ok(a, &["svc", "health", "web", "--passing", "--tag", "v1"]).contains("web1"));
    assert_eq!(ok(a, &["svc", "health", "web", "--tag", "canary"]), "");
    let checks = json(&ok(a, &["check", "ls", "--service", "web", "-w", "json"]));
    assert_eq!(checks[0]["CheckID"], "service:web1");
    assert_eq!(checks[0]["Status"], "passing");
    assert_eq!(checks[0]["Output"], "ok & 100%=fine");

    // warn and fail move the aggregated status; --state filters on it.
    ok(a, &["check", "warn", "service:web1"]);
    assert!(ok(a, &["svc", "health", "web"]).contains(", warning, 2"));
    ok(a, &["check", "fail", "service:web1", "--note", "down"]);
    assert!(ok(a, &["svc", "health", "web"]).contains(", critical, 2"));
    let critical = ok(a, &["check", "ls", "--state", "critical"]);
    assert!(
        critical.contains(", service:web1, Service 'web' check, critical, web1, ttl"),
        "{critical}"
    );
    assert!(!ok(a, &["check", "ls", "--state", "passing"]).contains("service:web1"));
    assert!(ok(a, &["check", "ls"]).contains("service:web1"));
    ok(a, &["check", "pass", "service:web1"]);

    // svc ls in the three formats.
    let ls = ok(a, &["svc", "ls"]);
    assert!(ls.lines().any(|l| l == "web primary,v1"), "{ls}");
    let ls = json(&ok(a, &["svc", "ls", "-w", "json"]));
    assert_eq!(ls["web"], serde_json::json!(["primary", "v1"]));
    let table = ok(a, &["svc", "ls", "-w", "table"]);
    assert!(table.contains("NAME") && table.contains("TAGS"), "{table}");
    assert!(table.contains("| primary,v1 |"), "{table}");

    // svc show in the three formats.
    let show = ok(a, &["svc", "show", "web"]);
    assert!(
        show.ends_with(", web1, 10.0.0.5:8080, primary,v1\n"),
        "{show}"
    );
    let show = json(&ok(a, &["svc", "show", "web", "-w", "json"]));
    assert_eq!(show[0]["ServiceID"], "web1");
    assert_eq!(show[0]["ServicePort"], 8080);
    assert_eq!(show[0]["ServiceMeta"]["version"], "1.2");
    let table = ok(a, &["svc", "show", "web", "-w", "table"]);
    assert!(
        table.contains("ADDRESS") && table.contains("10.0.0.5:8080"),
        "{table}"
    );

    // An ID with a space and a slash travels as one path segment.
    ok(
        a,
        &[
            "svc", "register", "api", "--id", "api 1/x", "--port", "9000",
        ],
    );
    let show = json(&ok(a, &["svc", "show", "api", "-w", "json"]));
    assert_eq!(show[0]["ServiceID"], "api 1/x");
    assert_eq!(
        ok(a, &["svc", "deregister", "api 1/x"]),
        "Deregistered service: api 1/x\n"
    );
    assert_eq!(ok(a, &["svc", "show", "api"]), "");

    ok(a, &["svc", "deregister", "web1"]);
    assert_eq!(ok(a, &["svc", "show", "web"]), "");
    assert!(!ok(a, &["svc", "ls"]).contains("web"));

    // The server's error, with its status, and a failing exit.
    let err = fails(a, &["svc", "deregister", "nope"]);
    assert!(err.contains("404 Not Found"), "{err}");
    assert!(err.contains("Unknown service ID \"nope\""), "{err}");
    let err = fails(a, &["check", "pass", "service:gone"]);
    assert!(err.contains("Unexpected response code: 404"), "{err}");
}

#[test]
fn sessions_are_created_inspected_renewed_and_destroyed() {
    let srv = Server::start();
    let a = format!("http://{}", srv.http_addr);
    let a = a.as_str();
    // A session needs its node registered with a healthy serfHealth: the member's presence
    // writes it within a second or two of start.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok(a, &["check", "ls", "--state", "passing"]).contains("serfHealth") {
        assert!(
            Instant::now() < deadline,
            "the member's node never became healthy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let id = ok(
        a,
        &[
            "session",
            "create",
            "--name",
            "locker",
            "--ttl",
            "15s",
            "--behavior",
            "delete",
            "--lock-delay",
            "1s",
        ],
    );
    let id = id.trim();
    assert_eq!(id.len(), 36, "a UUID: {id}");

    let info = json(&ok(a, &["session", "info", id, "-w", "json"]));
    assert_eq!(info[0]["ID"], id);
    assert_eq!(info[0]["Name"], "locker");
    assert_eq!(info[0]["Behavior"], "delete");
    assert_eq!(info[0]["TTL"], "15s");
    assert_eq!(info[0]["LockDelay"], 1_000_000_000u64);
    let node = info[0]["Node"].as_str().unwrap_or_default().to_string();
    assert!(!node.is_empty(), "{info}");
    assert_eq!(
        ok(a, &["session", "info", id]),
        format!("{id}, locker, {node}, delete, 15s, 1s, serfHealth\n")
    );
    let table = ok(a, &["session", "ls", "-w", "table"]);
    assert!(
        table.contains("LOCK DELAY") && table.contains(id),
        "{table}"
    );
    assert!(ok(a, &["session", "ls", "--node", &node]).contains(id));
    assert_eq!(ok(a, &["session", "ls", "--node", "elsewhere"]), "");

    assert_eq!(
        ok(a, &["session", "renew", id]),
        format!("Session {id} renewed (TTL 15s)\n")
    );
    let renewed = json(&ok(a, &["session", "renew", id, "-w", "json"]));
    assert_eq!(renewed[0]["ID"], id);

    assert_eq!(
        ok(a, &["session", "destroy", id]),
        format!("Session {id} destroyed\n")
    );
    let err = fails(a, &["session", "info", id]);
    assert!(err.contains("not found"), "{err}");
    let err = fails(a, &["session", "renew", id]);
    assert!(err.contains("404 Not Found"), "{err}");
    assert!(err.contains("not found"), "{err}");
    assert_eq!(ok(a, &["session", "ls"]), "");

    // A default session: released locks, Consul's 15 s lock delay, no TTL.
    let id = ok(a, &["session", "create", "-w", "json"]);
    let id = json(&id)["ID"].as_str().unwrap_or_default().to_string();
    let line = ok(a, &["session", "info", &id]);
    assert!(line.contains(", release, , 15s, serfHealth"), "{line}");
}

#[test]
fn bad_flags_and_unreachable_servers_are_clear_errors() {
    let srv = Server::start();
    let a = format!("http://{}", srv.http_addr);
    let a = a.as_str();
    let err = fails(
        a,
        &[
            "svc",
            "register",
            "web",
            "--ttl",
            "30s",
            "--http",
            "http://x",
            "--interval",
            "5s",
        ],
    );
    assert!(err.contains("cannot be used with"), "{err}");
    let err = fails(a, &["svc", "register", "web", "--tcp", "127.0.0.1:1"]);
    assert!(err.contains("--interval"), "{err}");
    let err = fails(a, &["svc", "register", "web", "--ttl", "30"]);
    assert!(err.contains("invalid duration"), "{err}");
    let err = fails(a, &["svc", "register", "web", "--meta", "nokey"]);
    assert!(err.contains("key=value"), "{err}");
    let err = fails(a, &["check", "ls", "--state", "sideways"]);
    assert!(err.contains("sideways"), "{err}");
    // None of those reached the server.
    assert_eq!(ok(a, &["svc", "ls"]), "");

    let err = fails("unix:///tmp/consul.sock", &["svc", "ls"]);
    assert!(err.contains("only http:// and https://"), "{err}");
    let closed = format!("127.0.0.1:{}", free_port());
    let err = fails(&closed, &["svc", "ls"]);
    assert!(err.contains("failed to connect"), "{err}");

    // CONSUL_HTTP_ADDR, without a scheme, as Consul's CLI reads it.
    let (success, out, err) = run(Command::new(berth_bin())
        .env("CONSUL_HTTP_ADDR", &srv.http_addr)
        .env_remove("CONSUL_HTTP_TOKEN")
        .args(["svc", "register", "from-env", "-w", "json"]));
    assert!(success, "{err}");
    assert_eq!(
        json(&out),
        serde_json::json!({"ID": "from-env", "Service": "from-env"})
    );
    assert_eq!(ok(a, &["svc", "ls"]), "from-env\n");
}

/// Under berth's auth, registry writes need a token: `--token` and `CONSUL_HTTP_TOKEN` send it
/// as `X-Consul-Token`.
#[tokio::test]
async fn tokens_are_sent_as_x_consul_token() {
    let srv = Server::start_with(&["--bcrypt-cost", "4"]);
    let mut plain = srv.client().await;
    crate::auth::setup(&mut plain).await;
    let alice = etcd_client::Client::connect(
        [srv.endpoint()],
        Some(etcd_client::ConnectOptions::new().with_user("alice", "apw")),
    )
    .await
    .expect("alice logs in");
    let token = alice
        .auth_client()
        .authenticate("alice".to_string(), "apw".to_string())
        .await
        .expect("token")
        .token()
        .to_string();
    let a = format!("http://{}", srv.http_addr);
    let a = a.as_str();
    let err = fails(a, &["svc", "register", "web", "--ttl", "30s"]);
    assert!(err.contains("Unexpected response code: 4"), "{err}");
    ok(
        a,
        &["--token", &token, "svc", "register", "web", "--ttl", "30s"],
    );
    let (success, out, err) = run(Command::new(berth_bin())
        .env("CONSUL_HTTP_TOKEN", &token)
        .args(["--http-addr", a, "check", "pass", "service:web"]));
    assert!(success, "{out}{err}");
    assert!(ok(a, &["svc", "health", "web", "--passing"]).contains("passing"));
}

/// An https HTTP listener: the shared TLS flags verify it; `https://` without a CA is refused
/// before dialing; an address without a scheme is https when TLS flags are given.
#[test]
fn https_listeners_are_reached_with_the_tls_flags() {
    use crate::tls::{path, Pki};
    let pki = Pki::new("ca");
    let (cert, key) = pki.issue("server", "server", false);
    let ca = pki.ca_file();
    let http = format!("127.0.0.1:{}", free_port());
    let _srv = Server::start_tls(
        &[
            "--cert-file",
            path(&cert),
            "--key-file",
            path(&key),
            "--listen-http-urls",
            &format!("https://{http}"),
        ],
        berth_net::tls::TlsSettings {
            trusted_ca_file: Some(ca.clone()),
            ..Default::default()
        },
    );
    let https = format!("https://{http}");
    let out = ok(&https, &["--cacert", path(&ca), "svc", "register", "web"]);
    assert_eq!(out, "Registered service: web (ID web)\n");
    assert!(ok(&http, &["--cacert", path(&ca), "svc", "ls"]).contains("web"));
    assert!(ok(
        &https,
        &["--insecure-skip-tls-verify", "svc", "show", "web"]
    )
    .contains(", web, "));
    let err = fails(&https, &["svc", "ls"]);
    assert!(err.contains("--cacert"), "{err}");
    // Plain HTTP to the TLS port gets no answer it can use.
    fails(&format!("http://{http}"), &["svc", "ls"]);
}

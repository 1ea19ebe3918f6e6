//! NATS's client protocol against a real berth process: the wire as nats-server 2.10 speaks
//! it (checked byte for byte over a raw socket, including the error paths), and nats-py, a real
//! client, publishing, subscribing, queueing and requesting.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{run, Server};

/// A raw protocol client: writes lines, reads lines.
pub(crate) struct Raw {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Raw {
    /// Connects and returns the INFO JSON.
    pub(crate) fn connect(addr: &str) -> (Raw, serde_json::Value) {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut raw = Raw {
            w: s.try_clone().expect("clone"),
            r: BufReader::new(s),
        };
        let info = raw.line();
        assert!(
            info.starts_with("INFO {") && info.ends_with("} \r\n"),
            "{info:?}"
        );
        let json = serde_json::from_str(info["INFO ".len()..].trim()).expect("INFO json");
        (raw, json)
    }

    pub(crate) fn send(&mut self, bytes: &str) {
        self.w.write_all(bytes.as_bytes()).expect("write");
    }

    pub(crate) fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).expect("read line");
        l
    }

    /// Reads `n` bytes (a payload with its CRLF).
    pub(crate) fn bytes(&mut self, n: usize) -> String {
        let mut b = vec![0; n];
        self.r.read_exact(&mut b).expect("read payload");
        String::from_utf8(b).expect("utf-8")
    }

    /// Sends PING and reads up to the PONG; returns what came before it.
    pub(crate) fn sync(&mut self) -> Vec<String> {
        self.send("PING\r\n");
        let mut before = Vec::new();
        loop {
            let l = self.line();
            if l == "PONG\r\n" {
                return before;
            }
            assert!(!l.is_empty(), "closed before PONG; got {before:?}");
            before.push(l);
        }
    }

    /// True once the server closed the connection (EOF), after whatever it sent last.
    pub(crate) fn closed(&mut self) -> (bool, String) {
        let mut rest = String::new();
        let eof = self.r.read_to_string(&mut rest).is_ok();
        (eof, rest)
    }
}

fn ready(srv: &Server) -> (Raw, serde_json::Value) {
    Raw::connect(&srv.nats_addr)
}

#[test]
fn the_wire_is_nats_servers() {
    let srv = Server::start();
    let (mut sub, info) = ready(&srv);
    assert_eq!(info["version"], "2.10.0");
    assert_eq!(info["proto"], 1);
    assert_eq!(info["headers"], true);
    assert_eq!(info["max_payload"], 1048576);
    assert_eq!(info["jetstream"], true, "a single member serves JetStream");
    assert!(info["client_id"].as_u64().is_some(), "{info}");
    assert_eq!(info["server_id"].as_str().map(str::len), Some(56));
    assert_eq!(info["client_ip"], "127.0.0.1");

    // Before CONNECT the connection is verbose.
    sub.send("SUB foo.* 1\r\n");
    assert_eq!(sub.line(), "+OK\r\n");
    sub.send("CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":true,\"zzz\":1}\r\n");
    sub.send("sub foo.> q 2\r\nSUB foo.bar 3\r\nSUB foo.bar 3\r\n");
    assert!(sub.sync().is_empty());

    let (mut publ, _) = ready(&srv);
    publ.send("CONNECT {\"verbose\":true}\r\nPUB foo.bar  5\r\nhello\r\n");
    assert_eq!(publ.line(), "+OK\r\n");
    assert_eq!(publ.line(), "+OK\r\n");
    let mut got = Vec::new();
    for _ in 0..3 {
        let head = sub.line();
        got.push(format!("{head}{}", sub.bytes(7)));
    }
    got.sort();
    assert_eq!(
        got,
        [
            "MSG foo.bar 1 5\r\nhello\r\n",
            "MSG foo.bar 2 5\r\nhello\r\n",
            "MSG foo.bar 3 5\r\nhello\r\n",
        ]
    );
    // Headers go as HMSG to a client that negotiated them; a reply subject rides along.
    publ.send("CONNECT {\"headers\":true}\r\nHPUB foo.x r.1 12 14\r\nNATS/1.0\r\n\r\nhi\r\n");
    assert!(publ.sync().is_empty(), "verbose is off again");
    let mut got = Vec::new();
    for _ in 0..2 {
        let head = sub.line();
        got.push(format!("{head}{}", sub.bytes(16)));
    }
    got.sort();
    assert_eq!(
        got,
        [
            "HMSG foo.x 1 r.1 12 14\r\nNATS/1.0\r\n\r\nhi\r\n",
            "HMSG foo.x 2 r.1 12 14\r\nNATS/1.0\r\n\r\nhi\r\n"
        ]
    );
    // A client without headers gets the payload alone.
    let (mut plain, _) = ready(&srv);
    plain.send("CONNECT {}\r\nSUB foo.x 5\r\n");
    plain.sync();
    publ.send("HPUB foo.x 12 14\r\nNATS/1.0\r\n\r\nhi\r\n");
    assert_eq!(plain.line(), "MSG foo.x 5 2\r\n");
    assert_eq!(plain.bytes(4), "hi\r\n");
    drop(plain);
    for _ in 0..2 {
        sub.line();
        sub.bytes(16);
    }

    // Auto-unsubscribe after two messages in all.
    sub.send("UNSUB 3 2\r\n");
    sub.sync();
    publ.send("CONNECT {}\r\n");
    for i in 0..3 {
        publ.send(&format!("PUB foo.bar 1\r\n{i}\r\n"));
    }
    publ.sync();
    let mut to3 = 0;
    let mut lines = sub.sync();
    lines.retain(|l| l.starts_with("MSG"));
    for l in &lines {
        to3 += usize::from(l.starts_with("MSG foo.bar 3 "));
    }
    assert_eq!(to3, 1, "sid 3 got one more message (it had one): {lines:?}");
    assert_eq!(lines.len(), 7, "{lines:?}");

    // No responders: a request nobody listens to comes back as a 503 on the reply's
    // subscription.
    sub.send("SUB _INBOX.abc.* 9\r\nPUB nobody.home _INBOX.abc.1 2\r\nhi\r\n");
    let head = sub.line();
    assert_eq!(head, "HMSG _INBOX.abc.1 9 43 43\r\n");
    assert_eq!(
        sub.bytes(45),
        "NATS/1.0 503\r\nNats-Subject: nobody.home\r\n\r\n\r\n"
    );

    // Invalid subjects are refused and the connection stays.
    sub.send("SUB foo..bar 10\r\nSUB foo.>.x 11\r\n");
    assert_eq!(
        sub.sync(),
        ["-ERR 'Invalid Subject'\r\n", "-ERR 'Invalid Subject'\r\n"]
    );
    // Pedantic: a wildcard publish is refused, the connection stays.
    publ.send("CONNECT {\"pedantic\":true}\r\nPUB foo.* 0\r\n\r\n");
    assert_eq!(publ.sync(), ["-ERR 'Invalid Publish Subject'\r\n"]);

    // nats-server's monitoring endpoints, on berth's HTTP listener.
    let (code, varz) = srv.http_get("/varz");
    assert_eq!(code, 200, "{varz}");
    let varz: serde_json::Value = serde_json::from_str(&varz).expect("varz json");
    assert_eq!(varz["server_id"], info["server_id"]);
    assert_eq!(varz["version"], "2.10.0");
    assert_eq!(varz["max_payload"], 1048576);
    assert_eq!(varz["in_msgs"], 7, "{varz}");
    assert!(varz["out_msgs"].as_u64() >= Some(10), "{varz}");
    assert!(varz["total_connections"].as_u64() >= Some(3), "{varz}");
    let (_, connz) = srv.http_get("/connz?subs=1&sort=subs");
    let connz: serde_json::Value = serde_json::from_str(&connz).expect("connz json");
    let conns = connz["connections"].as_array().expect("connections");
    assert!(conns.len() >= 2, "{connz}");
    // Sorted by subscriptions, most first: the subscriber, with its filters.
    let first = &conns[0];
    assert_eq!(first["kind"], "Client");
    assert_eq!(first["ip"], "127.0.0.1");
    assert!(first["subscriptions"].as_u64() >= Some(3), "{connz}");
    let list: Vec<&str> = first["subscriptions_list"]
        .as_array()
        .expect("subscriptions_list")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        list.contains(&"foo.*") && list.contains(&"_INBOX.abc.*"),
        "{list:?}"
    );
    let (_, one) = srv.http_get(&format!("/connz?cid={}", first["cid"]));
    assert!(one.contains("\"total\":1"), "{one}");
    let (code, _) = srv.http_get("/connz?sort=sideways");
    assert_eq!(code, 400);

    // The dropped connection is gone from the gauge; the two open ones are there.
    let t = Instant::now();
    let m = loop {
        let m = srv.http_get("/metrics").1;
        if m.contains("berth_nats_connections 2") || t.elapsed() > Duration::from_secs(5) {
            break m;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(m.contains("berth_nats_connections 2"), "{m}");
    assert!(m.contains("berth_nats_messages_out_total"), "{m}");
}

/// The server's own subjects (`$BERTH.`, where its requests' replies come back) are not
/// for clients: a publish to one, or with a reply on one, is refused as nats-server refuses
/// a publish it does not permit, the message goes nowhere, and the connection goes on.
#[test]
fn the_servers_own_subjects_are_refused_to_clients() {
    let srv = Server::start();
    let (mut sub, _) = ready(&srv);
    sub.send("CONNECT {\"verbose\":false}\r\nSUB > 1\r\n");
    assert!(sub.sync().is_empty());
    let (mut c, _) = ready(&srv);
    c.send("CONNECT {\"verbose\":false}\r\n");
    c.send("PUB $BERTH.R.x.1 2\r\nhi\r\n");
    assert_eq!(
        c.sync(),
        ["-ERR 'Permissions Violation for Publish to \"$BERTH.R.x.1\"'\r\n"]
    );
    c.send("PUB dlq.x $BERTH.R.x.2 2\r\nhi\r\n");
    assert_eq!(
        c.sync(),
        ["-ERR 'Permissions Violation for Publish to \"dlq.x\"'\r\n"]
    );
    c.send("PUB ok.x 2\r\nhi\r\n");
    assert!(c.sync().is_empty(), "the connection goes on");
    // Only the permitted message reached the catch-all subscriber.
    assert_eq!(sub.line(), "MSG ok.x 1 2\r\n");
    assert_eq!(sub.bytes(4), "hi\r\n");
    assert!(sub.sync().is_empty());
}

#[test]
fn broken_input_gets_nats_servers_errors_and_closes() {
    let srv = Server::start_with(&["--nats-max-payload", "64"]);
    let cases: [(&str, &str); 6] = [
        ("FOO bar\r\n", "-ERR 'Unknown Protocol Operation'\r\n"),
        (
            "PUB foo 3\r\nabcd\r\n",
            "-ERR 'Unknown Protocol Operation'\r\n",
        ),
        ("PUB foo 65\r\n", "-ERR 'Maximum Payload Violation'\r\n"),
        (
            "CONNECT {\"no_responders\":true}\r\n",
            "-ERR 'no responders requires headers support'\r\n",
        ),
        ("SUB foo\r\n", ""),
        ("CONNECT {nope\r\n", ""),
    ];
    for (input, want) in cases {
        let (mut c, info) = ready(&srv);
        assert_eq!(info["max_payload"], 64);
        c.send(input);
        let (eof, rest) = c.closed();
        assert!(eof, "{input:?}: not closed");
        assert_eq!(rest, want, "{input:?}");
    }
    let (mut c, _) = ready(&srv);
    c.send(&"x".repeat(5000));
    assert_eq!(c.closed().1, "-ERR 'maximum control line exceeded'\r\n");
    // An HPUB on a connection that did not negotiate headers is closed without a word.
    let (mut c, _) = ready(&srv);
    c.send("CONNECT {}\r\nHPUB a 12 12\r\nNATS/1.0\r\n\r\n\r\n");
    assert_eq!(c.closed().1, "");
}

#[test]
fn subscriptions_end_and_subjects_match_as_nats_servers_do() {
    let srv = Server::start();
    let (mut c, _) = ready(&srv);
    c.send("CONNECT {\"headers\":true,\"no_responders\":true}\r\nSUB a.> 1\r\nUNSUB 1 1\r\n");
    c.send("PUB a.b 1\r\nx\r\nPUB a.b 1\r\ny\r\n");
    assert_eq!(c.sync(), ["MSG a.b 1 1\r\n", "x\r\n"]);
    // The auto-unsubscribed sid is free again: a new SUB with it takes effect.
    c.send("SUB a.> 1\r\nPUB a.c 1\r\nz\r\n");
    assert_eq!(c.sync(), ["MSG a.c 1 1\r\n", "z\r\n"]);
    // A subject with an empty token reaches nobody, not even `>` or `*` subscribers.
    c.send("SUB > 2\r\nSUB *.*.* 3\r\nPUB a..b 1\r\nq\r\nPUB a. 1\r\nq\r\n");
    assert!(c.sync().is_empty());
    c.send("UNSUB 2\r\nUNSUB 3\r\n");
    // An old-style request inbox (one message) ends with its no-responders answer.
    c.send("SUB inbox.1 20\r\nUNSUB 20 1\r\nPUB nobody inbox.1 0\r\n\r\n");
    assert_eq!(
        c.sync(),
        [
            "HMSG inbox.1 20 38 38\r\n",
            "NATS/1.0 503\r\n",
            "Nats-Subject: nobody\r\n",
            "\r\n",
            "\r\n"
        ]
    );
    c.send("PUB nobody inbox.1 0\r\n\r\n");
    assert!(c.sync().is_empty(), "the inbox outlived its one message");
    let (_, connz) = srv.http_get("/connz?subs=1");
    assert!(
        connz.contains("\"subscriptions_list\":[\"a.>\"]"),
        "{connz}"
    );
}

#[test]
fn connection_and_subscription_limits_are_nats_servers() {
    let srv = Server::start_with(&[
        "--nats-max-connections",
        "2",
        "--nats-max-subscriptions",
        "2",
    ]);
    let (mut a, _) = ready(&srv);
    let (mut b, _) = ready(&srv);
    a.send("CONNECT {}\r\nSUB a 1\r\nSUB b 2\r\nSUB c 3\r\nSUB b 2\r\n");
    assert_eq!(a.sync(), ["-ERR 'maximum subscriptions exceeded'\r\n"]);
    b.send("CONNECT {}\r\nPUB c 1\r\nx\r\nPUB b 1\r\ny\r\n");
    b.sync();
    assert_eq!(
        a.line(),
        "MSG b 2 1\r\n",
        "sid 3 was refused: only b arrives"
    );
    // A third connection gets INFO, then the refusal.
    let (mut c, _) = ready(&srv);
    assert_eq!(c.closed().1, "-ERR 'maximum connections exceeded'\r\n");
    // Room again once one leaves: a new connection is no longer refused (nothing follows
    // its INFO).
    drop(b);
    let t = Instant::now();
    loop {
        let (d, _) = ready(&srv);
        d.r.get_ref()
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut r = d.r;
        let mut l = String::new();
        match r.read_line(&mut l) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            other => assert!(
                t.elapsed() < Duration::from_secs(5),
                "still refused after a client left: {other:?} {l:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_client_that_stops_answering_pings_is_closed_as_stale() {
    let srv = Server::start_with(&["--nats-ping-interval", "200ms"]);
    let (mut c, _) = ready(&srv);
    c.send("CONNECT {}\r\n");
    let t = Instant::now();
    let (_, rest) = c.closed();
    assert_eq!(rest, "PING\r\nPING\r\n-ERR 'Stale Connection'\r\n");
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // One that answers stays.
    let (mut c, _) = ready(&srv);
    c.send("CONNECT {}\r\n");
    for _ in 0..4 {
        assert_eq!(c.line(), "PING\r\n");
        c.send("PONG\r\n");
    }
    assert!(c.sync().is_empty());
}

fn python() -> String {
    crate::harness::python_with("BERTH_TEST_PYTHON", "nats", "pip install nats-py==2.16.0")
}

#[test]
fn nats_py_publishes_subscribes_queues_and_requests() {
    let py = python();
    let srv = Server::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/nats_client.py");
    let (ok, out, err) = run(Command::new(py)
        .arg(script)
        .arg(format!("nats://{}", srv.nats_addr)));
    println!("{out}");
    assert!(ok, "nats-py script failed:\n{out}\n{err}");
    assert!(out.contains(" passed, 0 failed"), "{out}");
}

#[test]
fn a_subscriber_that_falls_behind_is_closed_and_others_go_on() {
    let srv = Server::start_with(&["--nats-max-pending", "4194304"]);
    let (mut slow, _) = ready(&srv);
    slow.send("CONNECT {}\r\nSUB flood 1\r\n");
    slow.sync();
    let (mut fast, _) = ready(&srv);
    fast.send("CONNECT {}\r\nSUB flood 1\r\n");
    fast.sync();
    // The fast one reads as it goes (the publisher waits for it after every MiB); the slow
    // one never reads. 32 MiB overflow its 4 MiB queue once the kernel's buffers are full.
    const MSGS: usize = 512;
    let (read_tx, read_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for n in 1..=MSGS {
            let head = fast.line();
            assert!(head.starts_with("MSG flood 1 65536"), "{head:?}");
            fast.bytes(65538);
            let _ = read_tx.send(n);
        }
        fast
    });
    let (mut publ, _) = ready(&srv);
    let payload = "x".repeat(65536);
    publ.send("CONNECT {}\r\n");
    for chunk in 1..=MSGS / 16 {
        for _ in 0..16 {
            publ.send(&format!("PUB flood 65536\r\n{payload}\r\n"));
        }
        while read_rx.recv().expect("fast reader alive") < chunk * 16 {}
    }
    assert!(
        publ.sync().is_empty(),
        "the publisher was held up or refused"
    );
    let mut fast = reader.join().expect("fast reader");
    assert!(fast.sync().is_empty());
    // The slow one: what its socket held, then the close (no -ERR, as nats-server).
    let (eof, rest) = slow.closed();
    assert!(eof, "the slow consumer was not closed");
    assert!(rest.len() < 32 * 1024 * 1024, "{} bytes", rest.len());
    let m = srv.http_get("/metrics").1;
    assert!(m.contains("berth_nats_slow_consumers_total 1"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_clients_log_in_as_berth_users() {
    let srv = tokio::task::spawn_blocking(Server::start)
        .await
        .expect("server");
    let mut etcd = srv.client().await;
    // Clients of the time before auth (one never sent CONNECT, which needs none then): once
    // auth is on, they are closed (they have no user).
    let before = {
        let addr = srv.nats_addr.clone();
        tokio::task::spawn_blocking(move || {
            let (mut c, _) = Raw::connect(&addr);
            c.send("CONNECT {\"verbose\":false}\r\nSUB foo 1\r\n");
            assert!(c.sync().is_empty());
            let (mut bare, _) = Raw::connect(&addr);
            bare.send("SUB foo 1\r\n");
            let said = bare.sync();
            assert!(said.iter().all(|l| l == "+OK\r\n"), "{said:?}");
            (c, bare)
        })
        .await
        .expect("raw client")
    };
    crate::auth::setup(&mut etcd).await;
    tokio::task::spawn_blocking(move || {
        let (mut c, mut bare) = before;
        assert_eq!(c.closed().1, "-ERR 'Authorization Violation'\r\n");
        assert_eq!(bare.closed().1, "-ERR 'Authorization Violation'\r\n");
    })
    .await
    .expect("raw client");
    let addr = srv.nats_addr.clone();
    let c = tokio::task::spawn_blocking(move || {
        let (mut c, info) = Raw::connect(&addr);
        assert_eq!(info["auth_required"], true, "{info}");
        c.send("CONNECT {\"user\":\"alice\",\"pass\":\"wrong\"}\r\n");
        assert_eq!(c.closed().1, "-ERR 'Authorization Violation'\r\n");
        // Nothing but CONNECT comes first.
        let (mut c, _) = Raw::connect(&addr);
        c.send("SUB foo 1\r\n");
        assert_eq!(c.closed().1, "-ERR 'Authorization Violation'\r\n");
        // Silence: the client gets two seconds to log in.
        let (mut c, _) = Raw::connect(&addr);
        let t = Instant::now();
        assert_eq!(c.closed().1, "-ERR 'Authentication Timeout'\r\n");
        assert!(
            t.elapsed() >= Duration::from_millis(1900),
            "{:?}",
            t.elapsed()
        );
        let (mut c, _) = Raw::connect(&addr);
        c.send("CONNECT {\"user\":\"alice\",\"pass\":\"apw\",\"verbose\":true}\r\n");
        assert_eq!(c.line(), "+OK\r\n");
        // alice's role grants no subjects yet: refused, as nats-server refuses, and the
        // connection stays.
        c.send("SUB foo 1\r\nPUB foo 2\r\nhi\r\n");
        assert_eq!(
            c.sync(),
            [
                "-ERR 'Permissions Violation for Subscription to \"foo\"'\r\n",
                "-ERR 'Permissions Violation for Publish to \"foo\"'\r\n",
            ]
        );
        c
    })
    .await
    .expect("raw client");
    // Subjects are keys of the messaging keyspace: root grants them through berth's API.
    let token = |user: &'static str, pw: &'static str| crate::auth::token(srv.endpoint(), user, pw);
    let (root, alice) = (token("root", "rootpw").await, token("alice", "apw").await);
    let http = srv.http_addr.clone();
    let call = move |method: &'static str, token: &str, path: &str, body: serde_json::Value| {
        let bearer = format!("Bearer {token}");
        crate::harness::http_request(
            method,
            &http,
            &format!("/api/v1/auth/roles/{path}"),
            &body.to_string(),
            &[("Authorization", bearer.as_str())],
        )
        .0
         .0
    };
    let api = |method: &'static str, token: String, path: &'static str, body: serde_json::Value| {
        let call = call.clone();
        async move {
            tokio::task::spawn_blocking(move || call(method, &token, path, body))
                .await
                .expect("api call")
        }
    };
    let grant = |keyspace: &str, permission: &str, key: &str, prefix: bool| serde_json::json!({"keyspace": keyspace, "permission": permission, "key": key, "prefix": prefix});
    assert_eq!(
        api(
            "POST",
            alice.clone(),
            "app/permissions",
            grant("messaging", "readwrite", "foo", false)
        )
        .await,
        403,
        "only root grants"
    );
    for bad in [
        grant("auth", "read", "x", false),
        grant("nowhere", "read", "x", false),
        serde_json::json!({"keyspace": "messaging", "key": "x"}),
        serde_json::json!({"keyspace": "messaging", "permission": "all", "key": "x"}),
    ] {
        assert_eq!(
            api("POST", root.clone(), "app/permissions", bad.clone()).await,
            400,
            "{bad}"
        );
    }
    assert_eq!(
        api(
            "POST",
            root.clone(),
            "nobody/permissions",
            grant("messaging", "read", "x", false)
        )
        .await,
        404
    );
    for g in [
        grant("messaging", "readwrite", "foo", false),
        grant("messaging", "read", "orders.", true),
    ] {
        assert_eq!(api("POST", root.clone(), "app/permissions", g).await, 200);
    }
    let c = tokio::task::spawn_blocking(move || {
        let mut c = c;
        c.send("SUB foo 1\r\nPUB foo 2\r\nhi\r\n");
        assert_eq!(
            c.sync(),
            ["+OK\r\n", "+OK\r\n", "MSG foo 1 2\r\n", "hi\r\n"]
        );
        // A prefix grant covers the filters inside it, not those reaching past it.
        c.send(
            "SUB orders.> 2\r\nSUB orders.*.eu 3\r\nSUB > 4\r\nSUB *.eu q 5\r\nSUB ordersx 6\r\n",
        );
        assert_eq!(
            c.sync(),
            [
                "+OK\r\n",
                "+OK\r\n",
                "-ERR 'Permissions Violation for Subscription to \">\"'\r\n",
                "-ERR 'Permissions Violation for Subscription to \"*.eu\" using queue \"q\"'\r\n",
                "-ERR 'Permissions Violation for Subscription to \"ordersx\"'\r\n",
            ]
        );
        // Read is not write.
        c.send("PUB orders.1 2\r\nhi\r\n");
        assert_eq!(
            c.sync(),
            ["-ERR 'Permissions Violation for Publish to \"orders.1\"'\r\n"]
        );
        c
    })
    .await
    .expect("raw client");
    let (code, shown) = {
        let (http, alice) = (srv.http_addr.clone(), alice.clone());
        tokio::task::spawn_blocking(move || {
            let bearer = format!("Bearer {alice}");
            crate::harness::http_request(
                "GET",
                &http,
                "/api/v1/auth/roles/app",
                "",
                &[("Authorization", bearer.as_str())],
            )
            .0
        })
        .await
        .expect("show")
    };
    assert_eq!(code, 200, "{shown}");
    let shown: serde_json::Value = serde_json::from_str(&shown).expect("json");
    let perms = shown["permissions"].as_array().cloned().unwrap_or_default();
    assert!(
        perms.iter().any(|p| p["keyspace"] == "messaging"
            && p["key"] == "orders."
            && p["range_end"] == "orders/"
            && p["permission"] == "read"),
        "{shown}"
    );
    assert!(
        perms
            .iter()
            .any(|p| p["keyspace"] == "user" && p["key"] == "app/"),
        "{shown}"
    );
    // The same through the CLI: root grants a prefix to write, alice may not.
    let http = format!("http://{}", srv.http_addr);
    let grant_cli = |token: &str| {
        crate::consul_cli::cli(
            &http,
            &[
                "--token",
                token,
                "role",
                "grant",
                "app",
                "write",
                "orders.",
                "--prefix",
                "--keyspace",
                "messaging",
            ],
        )
    };
    assert!(!grant_cli(&alice).0, "alice is not root");
    let (done, out, err) = grant_cli(&root);
    assert!(done, "{out}{err}");
    assert!(out.contains("Role app updated"), "{out}");
    let shown = crate::consul_cli::ok(
        &http,
        &["--token", &root, "role", "show", "app", "-w", "table"],
    );
    let orders = shown
        .lines()
        .find(|l| l.contains("orders."))
        .unwrap_or_default();
    assert!(
        orders.contains("messaging")
            && orders.contains("write")
            && !orders.contains("read")
            && orders.contains("orders/"),
        "the grant replaced read with write: {shown}"
    );
    let c = tokio::task::spawn_blocking(move || {
        let mut c = c;
        // The subscriptions that rested on the read grant go with it (within a second).
        std::thread::sleep(Duration::from_millis(1500));
        let mut dropped = c.sync();
        dropped.sort();
        assert_eq!(
            dropped,
            [
                "-ERR 'Permissions Violation for Subscription to \"orders.*.eu\"'\r\n",
                "-ERR 'Permissions Violation for Subscription to \"orders.>\"'\r\n",
            ]
        );
        c.send("PUB orders.1 2\r\nhi\r\n");
        assert_eq!(
            c.sync(),
            ["+OK\r\n"],
            "published, and no subscription left to get it"
        );
        c
    })
    .await
    .expect("raw client");
    // A revoke holds for the very next publish.
    let revoke = serde_json::json!({"keyspace": "messaging", "key": "foo"});
    assert_eq!(
        api("DELETE", root.clone(), "app/permissions", revoke.clone()).await,
        200
    );
    assert_eq!(
        api("DELETE", root.clone(), "app/permissions", revoke).await,
        404
    );
    let c = tokio::task::spawn_blocking(move || {
        let mut c = c;
        c.send("PUB foo 2\r\nhi\r\n");
        assert_eq!(
            c.sync(),
            ["-ERR 'Permissions Violation for Publish to \"foo\"'\r\n"]
        );
        c
    })
    .await
    .expect("raw client");
    // Every subject, from the CLI (`--from-key` from the empty key): `>` may be read. With
    // `--user` instead of a token, the CLI logs in over the etcd API first.
    let endpoint = srv.endpoint();
    let (done, out, err) = crate::consul_cli::cli(
        &http,
        &[
            "--endpoints",
            &endpoint,
            "--user",
            "root:rootpw",
            "role",
            "grant",
            "app",
            "read",
            "",
            "--from-key",
            "--keyspace",
            "messaging",
        ],
    );
    assert!(done, "{out}{err}");
    tokio::task::spawn_blocking(move || {
        let mut c = c;
        c.send("SUB > 9\r\n");
        assert_eq!(c.sync(), ["+OK\r\n"]);
    })
    .await
    .expect("raw client");
}

/// async-nats (the Rust client) against berth: subscriptions, queue groups, request/reply,
/// headers and no-responders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_nats_publishes_subscribes_queues_and_requests() {
    use futures::StreamExt;
    let srv = tokio::task::spawn_blocking(Server::start)
        .await
        .expect("server");
    let url = format!("nats://{}", srv.nats_addr);
    let client = async_nats::connect(&url).await.expect("connect");
    assert_eq!(client.server_info().version, "2.10.0");

    let mut wild = client.subscribe("metrics.>").await.expect("subscribe");
    let mut workers = Vec::new();
    for _ in 0..2 {
        workers.push(
            client
                .queue_subscribe("metrics.cpu", "workers".into())
                .await
                .expect("queue subscribe"),
        );
    }
    client.flush().await.expect("flush");
    for i in 0..10 {
        client
            .publish("metrics.cpu", format!("{i}").into())
            .await
            .expect("publish");
    }
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Trace-Id", "abc");
    client
        .publish_with_headers("metrics.mem", headers, "m".into())
        .await
        .expect("publish with headers");
    client.flush().await.expect("flush");
    let mut seen = Vec::new();
    for _ in 0..11 {
        let m = tokio::time::timeout(Duration::from_secs(5), wild.next())
            .await
            .expect("a message in time")
            .expect("subscription open");
        seen.push(m);
    }
    assert_eq!(seen[10].subject.as_str(), "metrics.mem");
    let trace = seen[10]
        .headers
        .as_ref()
        .and_then(|h| h.get("Trace-Id"))
        .map(|v| v.as_str().to_string());
    assert_eq!(trace.as_deref(), Some("abc"));
    // The queue group got each of the ten once, between its two members.
    let mut shared = 0;
    for w in &mut workers {
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), w.next()).await {
            shared += 1;
        }
    }
    assert_eq!(shared, 10);

    let responder = client.clone();
    let mut svc = client.subscribe("svc.time").await.expect("subscribe");
    tokio::spawn(async move {
        while let Some(m) = svc.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, "now".into()).await;
            }
        }
    });
    client.flush().await.expect("flush");
    let answer = client
        .request("svc.time", "?".into())
        .await
        .expect("request");
    assert_eq!(&answer.payload[..], b"now");
    let none = client
        .request("nobody.home", "?".into())
        .await
        .expect_err("no responders");
    assert_eq!(none.kind(), async_nats::RequestErrorKind::NoResponders);
}

/// A raw client with headers and no-responders on, verbose off.
pub(crate) fn quiet(addr: &str) -> Raw {
    let (mut c, _) = Raw::connect(addr);
    c.send("CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":true}\r\n");
    assert!(c.sync().is_empty());
    c
}

/// Publishes requests on `subject` from `c` until one gets no no-responders status: some
/// member has a subscriber for it. Interest from one member arrives in the order its
/// subscriptions were made, so this proves that member's earlier subscriptions known too.
fn until_interest(c: &mut Raw, subject: &str) {
    c.send("SUB _INBOX.probe 999\r\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        c.send(&format!("PUB {subject} _INBOX.probe 0\r\n\r\n"));
        let before = c.sync();
        if before.is_empty() {
            break;
        }
        assert!(before[0].starts_with("HMSG _INBOX.probe 999"), "{before:?}");
        assert!(
            Instant::now() < deadline,
            "no interest in {subject} arrived"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    c.send("UNSUB 999\r\n");
}

/// Reads messages until one on `end`; returns the others as (subject, sid, payload).
fn read_until(c: &mut Raw, end: &str) -> Vec<(String, String, String)> {
    let mut got = Vec::new();
    loop {
        let head = c.line();
        let parts: Vec<&str> = head.split_whitespace().collect();
        assert_eq!(parts.first(), Some(&"MSG"), "{head:?}");
        let len: usize = parts[parts.len() - 1].parse().expect("length");
        let payload = c.bytes(len + 2);
        if parts[1] == end {
            return got;
        }
        got.push((
            parts[1].to_string(),
            parts[2].to_string(),
            payload.trim_end().to_string(),
        ));
    }
}

/// In a cluster, a message published on any member reaches the subscribers of every member
/// (as nats-server's routes carry it), once each; a queue group takes each message once
/// across the cluster, preferring a member on the publisher's own member as nats-server does.
#[test]
fn messages_reach_subscribers_on_every_member() {
    let cluster = crate::harness::Cluster::start(3);
    let [m0, m1, m2] = [0, 1, 2].map(|i| cluster.members[i].nats_addr.clone());
    // A cluster offers JetStream (replicated streams).
    assert_eq!(Raw::connect(&m1).1["jetstream"], true);
    let mut a = quiet(&m0);
    a.send("SUB orders.new workers 2\r\nSUB orders.> 1\r\nSUB probe.a 3\r\n");
    assert!(a.sync().is_empty());
    let mut b = quiet(&m2);
    b.send("SUB orders.new workers 7\r\nSUB orders.* 8\r\nSUB probe.b 9\r\n");
    assert!(b.sync().is_empty());

    let mut p = quiet(&m1);
    until_interest(&mut p, "probe.a");
    until_interest(&mut p, "probe.b");
    let _ = (a.sync(), b.sync());
    // Drop the probes the subscribers got.
    for c in [&mut a, &mut b] {
        c.send("PING\r\n");
        loop {
            let l = c.line();
            if l == "PONG\r\n" {
                break;
            }
            if l.starts_with("MSG") {
                let _ = c.line();
            }
        }
    }
    for i in 0..100 {
        p.send(&format!(
            "PUB orders.new {}\r\n{i}\r\n",
            i.to_string().len()
        ));
    }
    p.send("PUB orders.end 0\r\n\r\n");
    assert!(p.sync().is_empty());
    let got_a = read_until(&mut a, "orders.end");
    let got_b = read_until(&mut b, "orders.end");
    let count = |got: &[(String, String, String)], sid: &str| {
        got.iter().filter(|(_, s, _)| s == sid).count()
    };
    assert_eq!(
        count(&got_a, "1"),
        100,
        "every message reached m0's wildcard"
    );
    assert_eq!(
        count(&got_b, "8"),
        100,
        "every message reached m2's wildcard"
    );
    let (qa, qb) = (count(&got_a, "2"), count(&got_b, "7"));
    assert_eq!(qa + qb, 100, "the queue group took each message once");
    assert!(
        qa > 0 && qb > 0,
        "both members' queue subscribers served: {qa} {qb}"
    );
    // In order, per publisher and member.
    let order: Vec<String> = got_a
        .iter()
        .filter(|(_, s, _)| s == "1")
        .map(|(_, _, p)| p.clone())
        .collect();
    assert_eq!(order, (0..100).map(|i| i.to_string()).collect::<Vec<_>>());

    // Published on m0, whose own client is in the group: the group is served there.
    let mut p0 = quiet(&m0);
    for i in 0..20 {
        p0.send(&format!(
            "PUB orders.new {}\r\n{i}\r\n",
            i.to_string().len()
        ));
    }
    p0.send("PUB orders.end 0\r\n\r\n");
    assert!(p0.sync().is_empty());
    let got_a = read_until(&mut a, "orders.end");
    let got_b = read_until(&mut b, "orders.end");
    assert_eq!((count(&got_a, "1"), count(&got_a, "2")), (20, 20));
    assert_eq!((count(&got_b, "8"), count(&got_b, "7")), (20, 0));

    // Unsubscribing reaches the other members: m2's wildcard alone remains for orders.x,
    // then nothing (the request gets no-responders).
    a.send("UNSUB 1\r\nUNSUB 2\r\n");
    b.send("UNSUB 8\r\nUNSUB 7\r\nUNSUB 9\r\nSUB probe.b2 10\r\n");
    assert!(a.sync().is_empty() && b.sync().is_empty());
    until_interest(&mut p, "probe.b2");
    p.send("PUB orders.new _INBOX.probe2 0\r\n\r\n");
    p.send("SUB _INBOX.probe2 5\r\nPUB orders.new _INBOX.probe2 0\r\n\r\n");
    let status = p.sync();
    assert!(
        status
            .first()
            .is_some_and(|l| l.starts_with("HMSG _INBOX.probe2 5")),
        "{status:?}"
    );
    let metrics = cluster.members[1].http_get("/metrics").1;
    let sent = metric(&metrics, "berth_nats_route_messages_sent_total");
    assert!(sent >= 200.0, "{sent}");
    let varz = cluster.members[1].http_get("/varz").1;
    let varz: serde_json::Value = serde_json::from_str(&varz).expect("varz");
    assert_eq!(varz["routes"], 2, "{varz}");
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in metrics"))
}

/// A member that dies takes its subscribers' interest along (requests they answered get
/// no-responders instead of waiting for a timeout), and once it is back, its reconnected
/// clients' interest reaches the others again: request/reply across members with async-nats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interest_leaves_with_a_dead_member_and_returns_with_it() {
    let mut cluster = tokio::task::spawn_blocking(|| crate::harness::Cluster::start(3))
        .await
        .expect("cluster");
    let url = |i: usize| format!("nats://{}", cluster.members[i].nats_addr);
    let requester = async_nats::connect(&url(0)).await.expect("connect m0");
    let _responder = echo_responder(&url(2)).await;

    request_until(&requester, true).await;

    let dead = tokio::task::spawn_blocking(move || {
        cluster.members[2].kill9();
        cluster
    })
    .await
    .expect("kill");
    // The request is refused at once, not left to time out.
    request_until(&requester, false).await;
    let t = Instant::now();
    let none = requester
        .request("svc.echo", "?".into())
        .await
        .expect_err("no responders");
    assert_eq!(none.kind(), async_nats::RequestErrorKind::NoResponders);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

    let mut cluster = dead;
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.members[2].start_again();
        cluster
    })
    .await
    .expect("restart");
    // The responder's client reconnects to m2 and subscribes again; m0 learns of it.
    request_until(&requester, true).await;
    drop(cluster);
}

/// Requests `svc.echo` until an echo (`want_answer`) or the no-responders status comes, for
/// up to 20 s.
pub(crate) async fn request_until(client: &async_nats::Client, want_answer: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            client.request("svc.echo", "ping".into()),
        )
        .await;
        match r {
            Ok(Ok(m)) if want_answer => {
                assert_eq!(&m.payload[..], b"ping");
                return;
            }
            Ok(Err(e))
                if !want_answer && e.kind() == async_nats::RequestErrorKind::NoResponders =>
            {
                return
            }
            _ => {}
        }
        assert!(Instant::now() < deadline, "no {want_answer} answer in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client at `url` that answers `svc.echo` requests with their payload (and reconnects, and
/// subscribes again, when its server comes back).
pub(crate) async fn echo_responder(url: &str) -> async_nats::Client {
    use futures::StreamExt;
    let responder = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(url)
        .await
        .expect("connect the responder");
    let mut svc = responder.subscribe("svc.echo").await.expect("subscribe");
    let replier = responder.clone();
    tokio::spawn(async move {
        while let Some(m) = svc.next().await {
            if let Some(reply) = m.reply {
                let _ = replier.publish(reply, m.payload).await;
            }
        }
    });
    responder.flush().await.expect("flush");
    responder
}

/// `berth pub`, `sub` and `req` against berth's NATS listener: a subscriber in a queue group
/// prints what two publishes sent (headers, templates), and a request gets its reply, or a
/// clear error when nobody answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_publishes_subscribes_and_requests() {
    use std::io::BufRead as _;
    use std::process::Stdio;
    let srv = tokio::task::spawn_blocking(Server::start)
        .await
        .expect("server");
    let url = format!("nats://{}", srv.nats_addr);
    let cli = |args: &[&str]| {
        let mut c = Command::new(crate::harness::berth_bin());
        c.arg("--nats-url").arg(&url).args(args);
        c
    };
    let mut sub = cli(&[
        "sub", "orders.>", "--queue", "q", "--count", "2", "-w", "json",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("berth sub");
    let mut err = BufReader::new(sub.stderr.take().expect("stderr"));
    let mut first = String::new();
    err.read_line(&mut first).expect("read stderr");
    assert_eq!(first, "Subscribing on \"orders.>\" in queue group \"q\"\n");
    let (ok, out, err) = run(&mut cli(&[
        "pub",
        "orders.new",
        "n {{Count}}",
        "--count",
        "2",
        "-H",
        "Trace-Id:7",
    ]));
    assert!(ok, "{out}{err}");
    assert_eq!(out, "Published 2 messages (6 bytes) to \"orders.new\"\n");
    let out = tokio::task::spawn_blocking(move || sub.wait_with_output())
        .await
        .expect("join")
        .expect("sub output");
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["subject"], "orders.new");
        assert_eq!(l["data"], format!("n {}", i + 1));
        assert_eq!(l["headers"]["Trace-Id"], serde_json::json!(["7"]));
    }

    let (ok, _, err) = run(&mut cli(&["req", "svc.echo", "hi"]));
    assert!(!ok);
    assert!(
        err.contains("no responders are available for \"svc.echo\""),
        "{err}"
    );
    let _responder = echo_responder(&url).await;
    let (ok, out, err) = run(&mut cli(&["req", "svc.echo", "hi"]));
    assert!(ok, "{err}");
    assert!(
        out.starts_with("Received with rtt ") && out.ends_with("\nhi\n\n"),
        "{out:?}"
    );
}

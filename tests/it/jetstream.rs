//! JetStream streams against a real berth process: nats-py's JetStream API (streams, acks,
//! deduplication, expected headers, message get/delete, purges, limits, KV buckets), the wire
//! of direct gets and errors over a raw socket, and acknowledged publishes surviving kill -9.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;

use crate::harness::{run, Server};

#[test]
fn nats_py_manages_streams_publishes_and_uses_kv() {
    let py =
        crate::harness::python_with("BERTH_TEST_PYTHON", "nats", "pip install nats-py==2.16.0");
    let srv = Server::start();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/jetstream_client.py"
    );
    let (ok, out, err) = run(Command::new(py)
        .arg(script)
        .arg(format!("nats://{}", srv.nats_addr)));
    println!("{out}");
    assert!(ok, "nats-py JetStream script failed:\n{out}\n{err}");
    assert!(out.contains(" passed, 0 failed"), "{out}");
}

/// Push flow control on the wire, as nats-server sends it: past half of the 4 MiB window a
/// `100 FlowControl Request` with a `$JS.FC.` reply goes to the deliver subject, delivery
/// stops past the window, heartbeats name the request while it waits, and the client's empty
/// answer lets the rest through.
#[test]
fn push_flow_control_waits_for_the_clients_answer() {
    let srv = Server::start();
    let addr = srv.nats_addr.as_str();
    let made = api(
        addr,
        "$JS.API.STREAM.CREATE.BIG",
        r#"{"name":"BIG","subjects":["big"]}"#,
    );
    assert!(made.get("error").is_none(), "{made}");
    let (mut w, mut r) = connect(addr).expect("connect");
    // 20 messages of 512 KiB: 10 MiB, more than twice the window.
    let body = "x".repeat(512 << 10);
    for _ in 0..20 {
        w.write_all(format!("PUB big {}\r\n{body}\r\n", body.len()).as_bytes())
            .expect("publish");
    }
    assert_eq!(info_with_messages(addr, "BIG", 20)["state"]["messages"], 20);
    w.write_all(b"SUB fc.in 2\r\nPING\r\n").expect("sub");
    let made = api(
        addr,
        "$JS.API.CONSUMER.CREATE.BIG",
        r#"{"stream_name":"BIG","config":{"deliver_subject":"fc.in","ack_policy":"none","flow_control":true,"idle_heartbeat":500000000}}"#,
    );
    assert!(made.get("error").is_none(), "{made}");
    r.get_ref()
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let (mut data, mut request, mut stalled) = (0, None::<String>, None::<String>);
    // Until the heartbeat that says the consumer waits.
    while stalled.is_none() {
        let (head, payload) = read_msg(&mut r).expect("a delivery, a request or a heartbeat");
        let words: Vec<&str> = head.split_whitespace().collect();
        if payload.contains("FlowControl Request") {
            assert!(request.is_none(), "one request at a time: {head}");
            assert_eq!(words[1], "fc.in", "{head}");
            assert!(words[3].starts_with("$JS.FC.BIG."), "{head}");
            request = Some(words[3].to_string());
        } else if payload.contains("100 Idle Heartbeat") {
            stalled = payload
                .lines()
                .find_map(|l| l.strip_prefix("Nats-Consumer-Stalled: "))
                .map(str::to_string);
        } else {
            data += 1;
        }
    }
    // Stored, each is a little over 512 KiB (its subject and record): the eighth passes
    // the 4 MiB window.
    assert_eq!(data, 8, "held once past the window");
    assert_eq!(stalled, request, "the heartbeat names the request out");
    // The answer lets the rest through (further requests answered as they come).
    let reply = request.expect("a request");
    w.write_all(format!("PUB {reply} 0\r\n\r\n").as_bytes())
        .expect("answer");
    while data < 20 {
        let (head, payload) = read_msg(&mut r).expect("the rest");
        if payload.contains("FlowControl Request") {
            let reply = head.split_whitespace().nth(3).expect("reply").to_string();
            w.write_all(format!("PUB {reply} 0\r\n\r\n").as_bytes())
                .expect("answer");
        } else if !payload.contains("Idle Heartbeat") {
            data += 1;
        }
    }
}

/// Reads one `MSG`/`HMSG` (head line and payload); `None` at EOF or on an error.
pub(crate) fn read_msg(r: &mut BufReader<TcpStream>) -> Option<(String, String)> {
    let mut head = String::new();
    loop {
        head.clear();
        if r.read_line(&mut head).ok()? == 0 {
            return None;
        }
        if head.starts_with("MSG ") || head.starts_with("HMSG ") {
            break;
        }
        // PING from the server, +OK: nothing to read after them.
        assert!(!head.starts_with("-ERR"), "{head}");
    }
    let len: usize = head.split_whitespace().last()?.parse().ok()?;
    let mut body = vec![0; len + 2];
    r.read_exact(&mut body).ok()?;
    body.truncate(len);
    Some((head, String::from_utf8(body).ok()?))
}

/// A raw connection with `_INBOX.r` subscribed (sid 1), after a PONG. Each connection's
/// `_INBOX.r` is its own: `api` answers go to an inbox of their own.
pub(crate) fn connect(addr: &str) -> Option<(TcpStream, BufReader<TcpStream>)> {
    connect_with(addr, "_INBOX.r")
}

pub(crate) fn connect_with(addr: &str, inbox: &str) -> Option<(TcpStream, BufReader<TcpStream>)> {
    let s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut w = s;
    let mut info = String::new();
    r.read_line(&mut info).ok()?;
    w.write_all(
        format!("CONNECT {{\"verbose\":false,\"headers\":true}}\r\nSUB {inbox} 1\r\nPING\r\n")
            .as_bytes(),
    )
    .ok()?;
    let mut line = String::new();
    while line != "PONG\r\n" {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
    }
    Some((w, r))
}

/// Sends `body` to an API subject and returns the JSON answer. Each call has an inbox of
/// its own, as clients' requests do: in a cluster an inbox is interest on every member, and
/// an answer to an earlier call on another member must not be read as this one's.
pub(crate) fn api(addr: &str, subject: &str, body: &str) -> serde_json::Value {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let inbox = format!(
        "_INBOX.api.{}.{}",
        std::process::id(),
        CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let (mut w, mut r) = connect_with(addr, &inbox).expect("connect");
    w.write_all(format!("PUB {subject} {inbox} {}\r\n{body}\r\n", body.len()).as_bytes())
        .expect("write");
    let (_, answer) = read_msg(&mut r).expect("an answer");
    serde_json::from_str(&answer).expect("JSON")
}

/// Stream `name`'s info once it holds `messages` messages, or its last info after 10 s:
/// what a publish without a reply stores becomes visible some moments later.
fn info_with_messages(addr: &str, name: &str, messages: u64) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info = api(addr, &format!("$JS.API.STREAM.INFO.{name}"), "");
        if info["state"]["messages"] == messages || std::time::Instant::now() > deadline {
            return info;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Publishes numbered messages in windows of 64, each with the reply subject, until the
/// server goes away; returns (number, sequence) of every acknowledged one.
fn publish_until_killed(addr: &str, first: u64) -> Vec<(u64, u64)> {
    let mut acked = Vec::new();
    let Some((mut w, mut r)) = connect(addr) else {
        return acked;
    };
    let mut n = first;
    loop {
        let mut batch = String::new();
        for k in n..n + 64 {
            let payload = k.to_string();
            batch.push_str(&format!(
                "PUB crash.{} _INBOX.r {}\r\n{payload}\r\n",
                k % 7,
                payload.len()
            ));
        }
        if w.write_all(batch.as_bytes()).is_err() {
            return acked;
        }
        for k in n..n + 64 {
            let Some((_, ack)) = read_msg(&mut r) else {
                return acked;
            };
            let ack: serde_json::Value = serde_json::from_str(&ack).expect("ack JSON");
            assert!(ack.get("error").is_none(), "{ack}");
            acked.push((k, ack["seq"].as_u64().expect("seq")));
        }
        n += 64;
    }
}

/// kill -9 while publishing, eight times: every acknowledged message is there afterwards,
/// under the sequence its acknowledgement named, and sequences never repeat.
#[test]
fn acknowledged_publishes_survive_kill_9() {
    let mut srv = Server::start();
    let addr = srv.nats_addr.clone();
    let created = api(
        &addr,
        "$JS.API.STREAM.CREATE.CRASH",
        r#"{"subjects":["crash.>"]}"#,
    );
    assert_eq!(created["config"]["name"], "CRASH", "{created}");
    let mut acked: Vec<(u64, u64)> = Vec::new();
    for round in 0..8u64 {
        let a = addr.clone();
        let publisher = std::thread::spawn(move || publish_until_killed(&a, round * 1_000_000));
        std::thread::sleep(Duration::from_millis(300 + 70 * round));
        srv.kill9();
        let got = publisher.join().expect("publisher");
        assert!(!got.is_empty(), "round {round}: nothing was acknowledged");
        acked.extend(got);
        srv.start_again();
    }
    let seqs: Vec<u64> = acked.iter().map(|(_, s)| *s).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "sequences repeat or go back"
    );
    // Every acknowledged message, read back by its sequence (pipelined, 256 at a time).
    let (mut w, mut r) = connect(&addr).expect("connect");
    for chunk in acked.chunks(256) {
        let mut reqs = String::new();
        for (_, seq) in chunk {
            let body = format!("{{\"seq\":{seq}}}");
            reqs.push_str(&format!(
                "PUB $JS.API.STREAM.MSG.GET.CRASH _INBOX.r {}\r\n{body}\r\n",
                body.len()
            ));
        }
        w.write_all(reqs.as_bytes()).expect("write");
        for (n, seq) in chunk {
            let (_, answer) = read_msg(&mut r).expect("answer");
            let v: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
            let data = v["message"]["data"]
                .as_str()
                .unwrap_or_else(|| panic!("seq {seq} lost: {v}"));
            let data = base64::engine::general_purpose::STANDARD
                .decode(data)
                .expect("base64");
            assert_eq!(String::from_utf8_lossy(&data), n.to_string(), "seq {seq}");
        }
    }
    let info = api(&addr, "$JS.API.STREAM.INFO.CRASH", "");
    println!(
        "{} acknowledged over 8 kills; state {}",
        acked.len(),
        info["state"]
    );
    assert!(info["state"]["messages"].as_u64() >= Some(acked.len() as u64));
}

/// The wire of what clients parse by hand: error objects exactly `{code, err_code,
/// description}` beside the type, direct gets as header blocks (stored headers first, then
/// the four `Nats-*` ones) or status lines, and a publish without a reply stored silently.
#[test]
fn errors_and_direct_gets_are_jetstreams_on_the_wire() {
    let srv = Server::start();
    let addr = srv.nats_addr.clone();
    let missing = api(&addr, "$JS.API.STREAM.INFO.NOPE", "");
    assert_eq!(
        missing,
        serde_json::json!({
            "type": "io.nats.jetstream.api.v1.stream_info_response",
            "error": {"code": 404, "err_code": 10059, "description": "stream not found"},
        })
    );
    let bad = api(&addr, "$JS.API.STREAM.CREATE.S", "{\"subjects\":7}");
    assert_eq!(bad["error"]["err_code"], 10025, "{bad}");
    let other = api(&addr, "$JS.API.STREAM.CREATE.S", "{\"name\":\"T\"}");
    assert_eq!(other["error"]["err_code"], 10056, "{other}");
    let created = api(
        &addr,
        "$JS.API.STREAM.CREATE.S",
        "{\"subjects\":[\"s.>\"],\"allow_direct\":true}",
    );
    assert_eq!(created["did_create"], true, "{created}");
    assert_eq!(created["config"]["allow_direct"], true);

    let (mut w, mut r) = connect(&addr).expect("connect");
    // No reply subject: stored, nothing answered.
    w.write_all(b"HPUB s.k 18 21\r\nNATS/1.0\r\nA: 1\r\n\r\nabc\r\n")
        .expect("write");
    let info = info_with_messages(&addr, "S", 1);
    assert_eq!(info["state"]["messages"], 1, "{info}");
    w.write_all(b"PUB $JS.API.DIRECT.GET.S.s.k _INBOX.r 0\r\n\r\n")
        .expect("write");
    let (head, body) = read_msg(&mut r).expect("direct get");
    assert!(head.starts_with("HMSG _INBOX.r 1 "), "{head}");
    let (hdrs, payload) = body.split_once("\r\n\r\n").expect("a header block");
    let lines: Vec<&str> = hdrs.lines().collect();
    assert_eq!(
        lines[..5],
        [
            "NATS/1.0",
            "A: 1",
            "Nats-Stream: S",
            "Nats-Subject: s.k",
            "Nats-Sequence: 1"
        ]
    );
    assert!(lines[5].starts_with("Nats-Time-Stamp: 20"), "{lines:?}");
    assert_eq!(payload, "abc");
    for (req, status) in [
        (
            "PUB $JS.API.DIRECT.GET.S.s.none _INBOX.r 0\r\n\r\n",
            "NATS/1.0 404 Message Not Found",
        ),
        (
            "PUB $JS.API.DIRECT.GET.S _INBOX.r 0\r\n\r\n",
            "NATS/1.0 408 Empty Request",
        ),
    ] {
        w.write_all(req.as_bytes()).expect("write");
        let (head, body) = read_msg(&mut r).expect("status");
        assert!(head.starts_with("HMSG _INBOX.r 1 "), "{head}");
        assert_eq!(body.trim_end(), status);
    }
    let purged = api(&addr, "$JS.API.STREAM.PURGE.S", "");
    assert_eq!(
        (purged["success"].as_bool(), purged["purged"].as_u64()),
        (Some(true), Some(1))
    );
    let names = api(&addr, "$JS.API.STREAM.NAMES", "{\"subject\":\"zzz\"}");
    assert_eq!(names["streams"], serde_json::Value::Null, "{names}");
    assert_eq!(names["total"], 0);
}

/// Sends a pull request for consumer `c` of stream `S`, its messages to `_INBOX.r`.
fn pull(w: &mut TcpStream, body: &str) {
    w.write_all(
        format!(
            "PUB $JS.API.CONSUMER.MSG.NEXT.S.c _INBOX.r {}\r\n{body}\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .expect("pull");
}

/// A durable consumer's state survives kill -9: what was acknowledged (with a reply, so the
/// server confirmed it saved) is not delivered again, what was delivered and not acked stays
/// pending, and delivery goes on after the last delivered message. Pull requests end with
/// JetStream's statuses.
#[test]
fn consumer_state_survives_kill_9_and_pulls_end_with_statuses() {
    let mut srv = Server::start();
    let addr = srv.nats_addr.clone();
    api(&addr, "$JS.API.STREAM.CREATE.S", r#"{"subjects":["s.>"]}"#);
    let (mut w, mut r) = connect(&addr).expect("connect");
    for i in 1..=10 {
        let p = format!("m{i}");
        w.write_all(format!("PUB s.x _INBOX.r {}\r\n{p}\r\n", p.len()).as_bytes())
            .expect("publish");
        read_msg(&mut r).expect("ack");
    }
    let created = api(
        &addr,
        "$JS.API.CONSUMER.CREATE.S.c",
        r#"{"stream_name":"S","config":{"durable_name":"c","ack_policy":"explicit","ack_wait":60000000000}}"#,
    );
    assert_eq!(created["name"], "c", "{created}");
    assert_eq!(created["num_pending"], 10);

    pull(&mut w, r#"{"batch":6}"#);
    let mut acks = Vec::new();
    for i in 1..=6u64 {
        let (head, body) = read_msg(&mut r).expect("a delivery");
        let parts: Vec<&str> = head.split_whitespace().collect();
        assert_eq!((parts[1], body.as_str()), ("s.x", format!("m{i}").as_str()));
        let ack: Vec<&str> = parts[3].split('.').collect();
        assert_eq!(ack[..4], ["$JS", "ACK", "S", "c"], "{head}");
        assert_eq!(
            (ack[4], ack[5], ack[6], ack[8]),
            (
                "1",
                &*i.to_string(),
                &*i.to_string(),
                &*(10 - i).to_string()
            )
        );
        acks.push(parts[3].to_string());
    }
    // Four acks that ask for a confirmation: answered once saved.
    let (mut aw, mut ar) = connect_with(&addr, "_INBOX.ackr").expect("connect");
    for a in &acks[..4] {
        aw.write_all(format!("PUB {a} _INBOX.ackr 4\r\n+ACK\r\n").as_bytes())
            .expect("ack");
    }
    for _ in 0..4 {
        let (_, body) = read_msg(&mut ar).expect("ack confirmed");
        assert_eq!(body, "");
    }
    srv.kill9();
    srv.start_again();

    let info = api(&addr, "$JS.API.CONSUMER.INFO.S.c", "");
    assert_eq!(info["ack_floor"]["stream_seq"], 4, "{info}");
    assert_eq!(info["delivered"]["stream_seq"], 6, "{info}");
    assert_eq!(info["num_ack_pending"], 2, "{info}");
    assert_eq!(info["num_pending"], 4, "{info}");
    let (mut w, mut r) = connect(&addr).expect("connect");
    pull(&mut w, r#"{"batch":10,"no_wait":true}"#);
    let mut got = Vec::new();
    let status = loop {
        let (head, body) = read_msg(&mut r).expect("a delivery or status");
        if head.starts_with("HMSG") {
            break body;
        }
        got.push(body);
    };
    assert_eq!(got, ["m7", "m8", "m9", "m10"]);
    assert_eq!(status.trim_end(), "NATS/1.0 404 No Messages");
    // A request that expires: 408 with what it still wanted.
    pull(&mut w, r#"{"batch":3,"expires":300000000}"#);
    let (head, body) = read_msg(&mut r).expect("timeout status");
    assert!(head.starts_with("HMSG _INBOX.r 1 "), "{head}");
    assert!(
        body.starts_with("NATS/1.0 408 Request Timeout\r\n"),
        "{body:?}"
    );
    assert!(body.contains("Nats-Pending-Messages: 3\r\n"), "{body:?}");
}

/// berth's dead letters: a consumer with `dead_letter_subject` writes a message it gives up
/// on (`+TERM`, or max_deliver unacked) to that subject, kept by the stream that takes it,
/// with the original headers and payload plus `Nats-DLQ-*` headers; only then does the
/// message leave the consumer's pending set. nats-server's advisories go out too.
#[test]
fn given_up_messages_become_dead_letters_with_advisories() {
    let srv = Server::start();
    let addr = srv.nats_addr.clone();
    api(
        &addr,
        "$JS.API.STREAM.CREATE.WORK",
        r#"{"subjects":["work.>"]}"#,
    );
    api(
        &addr,
        "$JS.API.STREAM.CREATE.DLQ",
        r#"{"subjects":["dlq.>"]}"#,
    );
    let bad = api(
        &addr,
        "$JS.API.CONSUMER.CREATE.WORK.c",
        r#"{"stream_name":"WORK","config":{"durable_name":"c","ack_policy":"explicit","dead_letter_subject":"work.x"}}"#,
    );
    assert_eq!(bad["error"]["code"], 400, "{bad}");
    let created = api(
        &addr,
        "$JS.API.CONSUMER.CREATE.WORK.c",
        r#"{"stream_name":"WORK","config":{"durable_name":"c","ack_policy":"explicit","ack_wait":300000000,"max_deliver":2,"dead_letter_subject":"dlq.work"}}"#,
    );
    assert_eq!(
        created["config"]["dead_letter_subject"], "dlq.work",
        "{created}"
    );
    let (mut aw, mut ar) = connect_with(&addr, "$JS.EVENT.ADVISORY.>").expect("advisories");
    aw.flush().expect("flush");
    let (mut w, mut r) = connect(&addr).expect("connect");
    w.write_all(
        b"HPUB work.a _INBOX.r 43 45\r\nNATS/1.0\r\nTrace: 7\r\nNats-Msg-Id: orig-1\r\n\r\nm1\r\n",
    )
    .expect("publish");
    read_msg(&mut r).expect("ack");
    w.write_all(b"PUB work.b _INBOX.r 2\r\nm2\r\n")
        .expect("publish");
    read_msg(&mut r).expect("ack");

    let pull_c = |w: &mut TcpStream, body: &str| {
        w.write_all(
            format!(
                "PUB $JS.API.CONSUMER.MSG.NEXT.WORK.c _INBOX.r {}\r\n{body}\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .expect("pull");
    };
    pull_c(&mut w, r#"{"batch":2}"#);
    let (_, first) = read_msg(&mut r).expect("m1");
    let (head2, _) = read_msg(&mut r).expect("m2");
    assert!(first.ends_with("m1"), "{first}");
    let ack2 = head2
        .split_whitespace()
        .nth(3)
        .expect("ack subject")
        .to_string();
    w.write_all(format!("PUB {ack2} 5\r\n+TERM\r\n").as_bytes())
        .expect("term");
    // m1 comes back once (max_deliver 2), unacked again: given up.
    std::thread::sleep(Duration::from_millis(400));
    pull_c(&mut w, r#"{"batch":1,"expires":2000000000}"#);
    let (head, body) = read_msg(&mut r).expect("m1 again");
    assert!(body.ends_with("m1"), "{head} {body}");
    assert!(head.contains("$JS.ACK.WORK.c.2.1."), "{head}");

    let info = info_with_messages(&addr, "DLQ", 2);
    assert_eq!(info["state"]["messages"], 2, "{info}");
    let headers_of = |seq: u64| {
        let got = api(
            &addr,
            "$JS.API.STREAM.MSG.GET.DLQ",
            &format!("{{\"seq\":{seq}}}"),
        );
        let h = got["message"]["hdrs"].as_str().expect("headers");
        let h = base64::engine::general_purpose::STANDARD
            .decode(h)
            .expect("base64");
        (
            String::from_utf8_lossy(&h).into_owned(),
            got["message"]["subject"].clone(),
        )
    };
    let (term, subject) = headers_of(1);
    assert_eq!(subject, "dlq.work");
    for h in [
        "Nats-DLQ-Reason: term",
        "Nats-DLQ-Stream: WORK",
        "Nats-DLQ-Consumer: c",
        "Nats-DLQ-Subject: work.b",
        "Nats-DLQ-Sequence: 2",
        "Nats-DLQ-Deliveries: 1",
        "Nats-Msg-Id: dlq:WORK:c:2",
    ] {
        assert!(term.contains(h), "{h} in {term}");
    }
    let (maxed, _) = headers_of(2);
    for h in [
        "Nats-DLQ-Reason: max_deliver",
        "Nats-DLQ-Sequence: 1",
        "Nats-DLQ-Deliveries: 2",
        "Trace: 7",
        "Nats-Msg-Id: dlq:WORK:c:1",
    ] {
        assert!(maxed.contains(h), "{h} in {maxed}");
    }
    assert!(
        !maxed.contains("orig-1"),
        "the original message ID is not carried: {maxed}"
    );
    let c = api(&addr, "$JS.API.CONSUMER.INFO.WORK.c", "");
    assert_eq!(
        (
            c["num_ack_pending"].as_u64(),
            c["ack_floor"]["stream_seq"].as_u64()
        ),
        (Some(0), Some(2)),
        "{c}"
    );
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let (head, _) = read_msg(&mut ar).expect("an advisory");
        kinds.push(
            head.split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string(),
        );
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.WORK.c",
            "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.WORK.c"
        ]
    );
}

/// Delayed delivery in nats-server 2.12's form: a schedule published now (`Nats-Schedule:
/// @at <time>`, `Nats-Schedule-Target`) puts its message under the target at that time, not
/// before, and survives kill -9 while it waits; `@every` repeats. A consumer on the target
/// subject receives what fired.
#[test]
fn scheduled_messages_are_delivered_at_their_time_even_across_a_crash() {
    let mut srv = Server::start();
    let addr = srv.nats_addr.clone();
    let off = api(
        &addr,
        "$JS.API.STREAM.CREATE.OFF",
        r#"{"subjects":["off.>"]}"#,
    );
    assert_eq!(off["config"].get("allow_msg_schedules"), None, "{off}");
    let created = api(
        &addr,
        "$JS.API.STREAM.CREATE.S",
        r#"{"subjects":["s.>"],"allow_msg_schedules":true}"#,
    );
    assert_eq!(created["config"]["allow_msg_schedules"], true, "{created}");
    let at = humantime::format_rfc3339_millis(
        std::time::SystemTime::now() + Duration::from_millis(2500),
    )
    .to_string();
    let hdrs = format!(
        "NATS/1.0\r\nNats-Schedule: @at {at}\r\nNats-Schedule-Target: s.due\r\nTrace: 9\r\n\r\n"
    );
    let (mut w, mut r) = connect(&addr).expect("connect");
    w.write_all(
        format!(
            "HPUB s.sched.a _INBOX.r {} {}\r\n{hdrs}later\r\n",
            hdrs.len(),
            hdrs.len() + 5
        )
        .as_bytes(),
    )
    .expect("schedule");
    let (_, ack) = read_msg(&mut r).expect("ack");
    assert!(ack.contains("\"seq\":1"), "{ack}");
    // Disabled streams refuse schedules.
    w.write_all(
        format!(
            "HPUB off.x _INBOX.r {} {}\r\n{hdrs}later\r\n",
            hdrs.len(),
            hdrs.len() + 5
        )
        .as_bytes(),
    )
    .expect("schedule");
    let (_, refused) = read_msg(&mut r).expect("refusal");
    assert!(refused.contains("10188"), "{refused}");
    let due_count = |addr: &str| {
        let info = api(
            addr,
            "$JS.API.STREAM.INFO.S",
            r#"{"subjects_filter":"s.due"}"#,
        );
        info["state"]["subjects"]["s.due"].as_u64().unwrap_or(0)
    };
    assert_eq!(due_count(&addr), 0, "not before its time");
    srv.kill9();
    srv.start_again();
    assert_eq!(
        due_count(&addr),
        0,
        "not before its time, after a restart either"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while due_count(&addr) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the scheduled message never came"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = api(
        &addr,
        "$JS.API.STREAM.MSG.GET.S",
        r#"{"last_by_subj":"s.due"}"#,
    );
    let h = base64::engine::general_purpose::STANDARD
        .decode(got["message"]["hdrs"].as_str().expect("headers"))
        .expect("base64");
    let h = String::from_utf8_lossy(&h);
    assert!(
        h.contains("Trace: 9") && h.contains("Nats-Scheduler: s.sched.a"),
        "{h}"
    );
    assert!(!h.contains("Nats-Schedule:"), "{h}");
    let info = api(
        &addr,
        "$JS.API.STREAM.INFO.S",
        r#"{"subjects_filter":"s.sched.>"}"#,
    );
    assert_eq!(
        info["state"]["subjects"].get("s.sched.a"),
        None,
        "an @at schedule is removed once fired: {info}"
    );

    // @every: repeats until replaced by a schedule on the same subject.
    let every = "NATS/1.0\r\nNats-Schedule: @every 1s\r\nNats-Schedule-Target: s.tick\r\n\r\n";
    let (mut w, mut r) = connect(&addr).expect("connect");
    w.write_all(
        format!(
            "HPUB s.sched.t _INBOX.r {} {}\r\n{every}\r\n",
            every.len(),
            every.len()
        )
        .as_bytes(),
    )
    .expect("every");
    read_msg(&mut r).expect("ack");
    std::thread::sleep(Duration::from_millis(3500));
    let info = api(
        &addr,
        "$JS.API.STREAM.INFO.S",
        r#"{"subjects_filter":"s.tick"}"#,
    );
    let ticks = info["state"]["subjects"]["s.tick"].as_u64().unwrap_or(0);
    assert!((2..=4).contains(&ticks), "{ticks} ticks in 3.5 s: {info}");
}

/// Runs the berth CLI against the NATS server at `url`: success, stdout, stderr.
fn cli(url: &str, args: &[&str]) -> (bool, String, String) {
    run(Command::new(crate::harness::berth_bin())
        .arg("--nats-url")
        .arg(url)
        .args(args))
}

/// [`cli`] that must succeed; its stdout.
fn cli_ok(url: &str, args: &[&str]) -> String {
    let (ok, out, err) = cli(url, args);
    assert!(ok, "berth {args:?}: {out}{err}");
    out
}

/// `berth stream …` and `berth consumer …` against berth: create, publish, inspect, pull
/// and ack, purge, delete, and a clear error for what is gone.
#[test]
fn the_cli_manages_streams_and_consumers() {
    let srv = Server::start();
    let url = format!("nats://{}", srv.nats_addr);
    let berth = |args: &[&str]| cli(&url, args);
    let ok = |args: &[&str]| cli_ok(&url, args);
    let out = ok(&[
        "stream",
        "add",
        "ORDERS",
        "--subjects",
        "orders.>",
        "--max-msgs",
        "100",
    ]);
    assert!(
        out.starts_with("ORDERS subjects=orders.> messages=0"),
        "{out}"
    );
    ok(&["pub", "orders.new", "o {{Count}}", "--count", "3"]);
    let info: serde_json::Value =
        serde_json::from_str(&ok(&["stream", "info", "ORDERS", "-w", "json"])).expect("json");
    assert_eq!(info["state"]["messages"], 3, "{info}");
    assert_eq!(info["config"]["max_msgs"], 100);
    // `edit` changes what it is given and keeps the rest.
    let edited: serde_json::Value = serde_json::from_str(&ok(&[
        "stream",
        "edit",
        "ORDERS",
        "--max-msgs",
        "50",
        "--max-age",
        "1h",
        "-w",
        "json",
    ]))
    .expect("json");
    assert_eq!(edited["config"]["max_msgs"], 50, "{edited}");
    assert_eq!(
        edited["config"]["max_age"], 3_600_000_000_000u64,
        "{edited}"
    );
    assert_eq!(
        edited["config"]["subjects"],
        serde_json::json!(["orders.>"])
    );
    let (done, _, err) = berth(&["stream", "edit", "ORDERS", "--replicas", "3"]);
    assert!(!done && err.contains("non-clustered"), "{err}");
    let got = ok(&["stream", "get", "ORDERS", "--last-for", "orders.new"]);
    assert!(
        got.starts_with("Item: ORDERS#3 received ") && got.ends_with("\no 3\n"),
        "{got:?}"
    );
    ok(&["consumer", "add", "ORDERS", "worker", "--ack-wait", "30s"]);
    let pulled = ok(&[
        "consumer", "next", "ORDERS", "worker", "--count", "2", "-w", "json",
    ]);
    let data: Vec<String> = pulled
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            v["data"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(data, ["o 1", "o 2"]);
    let info: serde_json::Value =
        serde_json::from_str(&ok(&["consumer", "info", "ORDERS", "worker", "-w", "json"]))
            .expect("json");
    assert_eq!(
        (
            info["ack_floor"]["stream_seq"].as_u64(),
            info["num_pending"].as_u64()
        ),
        (Some(2), Some(1)),
        "acked by the CLI: {info}"
    );
    let ls = ok(&["stream", "ls", "-w", "table"]);
    assert!(ls.contains("| ORDERS |") && ls.contains(" NAME "), "{ls}");
    assert_eq!(
        ok(&["stream", "purge", "ORDERS"]),
        "Purged 3 messages from ORDERS\n"
    );
    ok(&["consumer", "rm", "ORDERS", "worker"]);
    ok(&["stream", "rm", "ORDERS"]);
    let (ok_, _, err) = berth(&["stream", "info", "ORDERS"]);
    assert!(
        !ok_ && err.contains("stream not found (code 404, err_code 10059)"),
        "{err}"
    );
}

/// `berth kv-bucket`: a bucket with history, put/create/update with their revision rules,
/// get (latest, at a revision, raw), keys, history, delete, a watch that sees a change made
/// while it runs, purge, and removing the bucket; errors in words.
#[test]
fn the_cli_manages_key_value_buckets() {
    let srv = Server::start();
    let url = format!("nats://{}", srv.nats_addr);
    let berth = |args: &[&str]| cli(&url, args);
    let ok = |args: &[&str]| cli_ok(&url, args);
    let fails = |args: &[&str]| {
        let (ok, out, err) = berth(args);
        assert!(!ok, "berth {args:?} succeeded: {out}");
        err
    };
    let out = ok(&["kv-bucket", "add", "CFG", "--history", "5"]);
    assert!(out.starts_with("CFG history=5 ttl=0s values=0"), "{out}");
    assert_eq!(
        ok(&["kv-bucket", "put", "CFG", "db.url", "one"]),
        "db.url revision 1\n"
    );
    assert_eq!(
        ok(&["kv-bucket", "put", "CFG", "db.url", "two"]),
        "db.url revision 2\n"
    );
    let err = fails(&["kv-bucket", "create", "CFG", "db.url", "x"]);
    assert!(err.contains("already exists"), "{err}");
    let err = fails(&["kv-bucket", "update", "CFG", "db.url", "x", "1"]);
    assert!(err.contains("updating db.url"), "{err}");
    assert_eq!(
        ok(&["kv-bucket", "update", "CFG", "db.url", "three", "2"]),
        "db.url revision 3\n"
    );
    assert_eq!(ok(&["kv-bucket", "get", "CFG", "db.url", "--raw"]), "three");
    let at1: serde_json::Value = serde_json::from_str(&ok(&[
        "kv-bucket",
        "get",
        "CFG",
        "db.url",
        "--revision",
        "1",
        "-w",
        "json",
    ]))
    .expect("json");
    assert_eq!(
        (at1["value"].as_str(), at1["revision"].as_u64()),
        (Some("b25l"), Some(1)),
        "{at1}"
    );
    ok(&["kv-bucket", "put", "CFG", "other", "v"]);
    assert_eq!(ok(&["kv-bucket", "keys", "CFG"]), "db.url\nother\n");
    let history: serde_json::Value = serde_json::from_str(&ok(&[
        "kv-bucket",
        "history",
        "CFG",
        "db.url",
        "-w",
        "json",
    ]))
    .expect("json");
    let revs: Vec<u64> = history
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["revision"].as_u64())
        .collect();
    assert_eq!(revs, [1, 2, 3]);
    assert_eq!(ok(&["kv-bucket", "del", "CFG", "other"]), "Deleted other\n");
    let err = fails(&["kv-bucket", "get", "CFG", "other"]);
    assert!(err.contains("other: key not found"), "{err}");
    assert_eq!(ok(&["kv-bucket", "keys", "CFG"]), "db.url\n");

    // A watch prints the current value, then a change made while it runs.
    let watch = Command::new(crate::harness::berth_bin())
        .arg("--nats-url")
        .arg(&url)
        .args([
            "kv-bucket",
            "watch",
            "CFG",
            "db.*",
            "--count",
            "2",
            "-w",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("watch");
    std::thread::sleep(Duration::from_millis(700));
    ok(&["kv-bucket", "put", "CFG", "db.url", "four"]);
    let out = watch.wait_with_output().expect("watch output");
    let seen: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|e| e["revision"].as_u64())
        .collect();
    assert_eq!(seen, [3, 6], "{out:?}");

    assert_eq!(
        ok(&["kv-bucket", "purge", "CFG", "db.url"]),
        "Purged db.url\n"
    );
    let ls = ok(&["kv-bucket", "ls", "-w", "table"]);
    assert!(ls.contains(" CFG |") && ls.contains(" BUCKET "), "{ls}");
    assert_eq!(ok(&["kv-bucket", "rm", "CFG"]), "Deleted bucket CFG\n");
    let err = fails(&["kv-bucket", "info", "CFG"]);
    assert!(err.contains("bucket CFG not found"), "{err}");
}

/// Eight clients create the same stream at once: one stream results (the others get it
/// back), it stores and keeps what is published, and it opens again after kill -9.
#[test]
fn concurrent_creates_of_one_stream_make_one_stream() {
    let mut srv = Server::start();
    let addr = srv.nats_addr.clone();
    let creators: Vec<_> = (0..8)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                api(
                    &addr,
                    "$JS.API.STREAM.CREATE.RACE",
                    r#"{"subjects":["race.>"]}"#,
                )
            })
        })
        .collect();
    for c in creators {
        let answer = c.join().expect("creator");
        assert_eq!(answer["config"]["name"], "RACE", "{answer}");
    }
    let (mut w, mut r) = connect(&addr).expect("connect");
    for i in 0..50 {
        let p = format!("m{i}");
        w.write_all(format!("PUB race.x _INBOX.r {}\r\n{p}\r\n", p.len()).as_bytes())
            .expect("publish");
        read_msg(&mut r).expect("ack");
    }
    std::thread::sleep(Duration::from_millis(1500));
    srv.kill9();
    srv.start_again();
    let info = api(&addr, "$JS.API.STREAM.INFO.RACE", "");
    assert_eq!(info["state"]["messages"], 50, "{info}");
    for seq in [1, 50] {
        let got = api(
            &addr,
            "$JS.API.STREAM.MSG.GET.RACE",
            &format!("{{\"seq\":{seq}}}"),
        );
        assert!(got.get("message").is_some(), "seq {seq}: {got}");
    }
}

//! Replicated JetStream streams in a three-member cluster, over raw sockets: streams placed
//! on one or three members and reached through any member, and the leader of an R3 stream
//! killed while publishing: no acknowledged message lost, no gap in sequences, and retried
//! publishes stored once through `Nats-Msg-Id`.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use crate::harness::{run, Cluster};
use crate::jetstream::{api, connect_with, read_msg};

/// What an acknowledgement said: the sequence and whether it was a duplicate.
pub(crate) type Acks = BTreeMap<u64, (u64, bool)>;

/// Publishes the messages `ids` (payload and `Nats-Msg-Id` both the number) to `subject`
/// through `addr`, 16 at a time, each with a reply inbox of its own; returns the
/// acknowledged ones. A window not fully answered within 3 s (its member died, its stream
/// changed leader) ends the connection; the next window opens a new one.
pub(crate) fn publish_ids(addr: &str, subject: &str, ids: &[u64]) -> Acks {
    let mut acked = Acks::new();
    let mut conn = None;
    for window in ids.chunks(16) {
        if conn.is_none() {
            conn = connect_with(addr, "_INBOX.p.>");
            if let Some((w, _)) = &conn {
                let _ = w.set_read_timeout(Some(Duration::from_secs(3)));
            }
        }
        let Some((w, r)) = conn.as_mut() else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let mut out = String::new();
        for n in window {
            let hdrs = format!("NATS/1.0\r\nNats-Msg-Id: {n}\r\n\r\n");
            let payload = n.to_string();
            out.push_str(&format!(
                "HPUB {subject} _INBOX.p.{n} {} {}\r\n{hdrs}{payload}\r\n",
                hdrs.len(),
                hdrs.len() + payload.len()
            ));
        }
        if w.write_all(out.as_bytes()).is_err() {
            conn = None;
            continue;
        }
        let mut answered = 0;
        while answered < window.len() {
            let Some((head, ack)) = read_msg(r) else {
                break;
            };
            answered += 1;
            let n: u64 = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.strip_prefix("_INBOX.p."))
                .and_then(|s| s.parse().ok())
                .expect("an inbox of ours");
            let ack: serde_json::Value = serde_json::from_str(&ack).expect("ack JSON");
            if ack.get("error").is_none() {
                let seq = ack["seq"].as_u64().expect("seq");
                acked.insert(n, (seq, ack["duplicate"] == true));
            }
        }
        if answered < window.len() {
            conn = None;
        }
    }
    acked
}

pub(crate) fn member_index(name: &serde_json::Value) -> usize {
    name.as_str()
        .and_then(|n| n.strip_prefix('m'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a member name: {name}"))
}

/// The stream's info through `addr` once its group has a leader (a member that just
/// started its replica may not know it yet).
pub(crate) fn info_with_leader(addr: &str, name: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let info = api(addr, &format!("$JS.API.STREAM.INFO.{name}"), "");
        if info["cluster"]["leader"].is_string() || Instant::now() > deadline {
            return info;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every member's routes to the others are open (core messages sent before
/// are dropped, as nats-server drops them).
pub(crate) fn routes_up(members: &[crate::harness::Server]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for m in members {
        loop {
            let varz: serde_json::Value =
                serde_json::from_str(&m.http_get("/varz").1).unwrap_or_default();
            if varz["routes"] == members.len() - 1 {
                break;
            }
            assert!(Instant::now() < deadline, "routes never came up: {varz}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A fresh 3-member cluster (its routes open) with stream `name` created from `config`
/// through member 0; the members' NATS addresses and the create's answer.
fn cluster_with_stream(name: &str, config: &str) -> (Cluster, Vec<String>, serde_json::Value) {
    let cluster = Cluster::start(3);
    routes_up(&cluster.members);
    let addrs: Vec<String> = cluster
        .members
        .iter()
        .map(|m| m.nats_addr.clone())
        .collect();
    let created = api(&addrs[0], &format!("$JS.API.STREAM.CREATE.{name}"), config);
    assert_eq!(created["did_create"], true, "{created}");
    (cluster, addrs, created)
}

/// [`cluster_with_stream`] with stream `R` (subjects `r.>`) on three replicas.
fn r3_stream() -> (Cluster, Vec<String>) {
    let (cluster, addrs, _) = cluster_with_stream("R", r#"{"subjects":["r.>"],"num_replicas":3}"#);
    (cluster, addrs)
}

#[test]
fn streams_are_placed_and_reached_through_any_member() {
    let (_cluster, addrs, created) = cluster_with_stream("ONE", r#"{"subjects":["one.>"]}"#);
    assert_eq!(created["config"]["num_replicas"], 1);
    let info = info_with_leader(&addrs[1], "ONE");
    let peer = member_index(&info["cluster"]["leader"]);
    assert_eq!(info["cluster"]["replicas"], serde_json::json!([]), "{info}");
    // A publish through any member is stored by the one peer, in order.
    let mut acked = Acks::new();
    for (i, addr) in addrs.iter().enumerate() {
        let ids: Vec<u64> = (0..10).map(|k| i as u64 * 10 + k).collect();
        acked.extend(publish_ids(addr, "one.x", &ids));
    }
    assert_eq!(acked.len(), 30, "{acked:?}");
    let mut seqs: Vec<u64> = acked.values().map(|(s, _)| *s).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
    for (i, addr) in addrs.iter().enumerate() {
        let info = api(addr, "$JS.API.STREAM.INFO.ONE", "");
        assert_eq!(
            info["state"]["messages"], 30,
            "through m{i} (peer m{peer}): {info}"
        );
        let got = api(addr, "$JS.API.STREAM.MSG.GET.ONE", r#"{"seq":30}"#);
        assert!(got["message"]["data"].is_string(), "through m{i}: {got}");
    }
    // The same name again: the same stream; another configuration: refused; overlapping
    // subjects: refused; unknown streams: 404 from any member.
    let again = api(
        &addrs[2],
        "$JS.API.STREAM.CREATE.ONE",
        r#"{"subjects":["one.>"]}"#,
    );
    assert!(again.get("error").is_none(), "{again}");
    let other = api(
        &addrs[2],
        "$JS.API.STREAM.CREATE.ONE",
        r#"{"subjects":["uno.>"]}"#,
    );
    assert_eq!(other["error"]["err_code"], 10058, "{other}");
    let overlap = api(
        &addrs[1],
        "$JS.API.STREAM.CREATE.TWO",
        r#"{"subjects":["one.x"]}"#,
    );
    assert_eq!(overlap["error"]["err_code"], 10065, "{overlap}");
    let missing = api(&addrs[1], "$JS.API.STREAM.INFO.NOPE", "");
    assert_eq!(missing["error"]["code"], 404, "{missing}");
    let too_many = api(
        &addrs[0],
        "$JS.API.STREAM.CREATE.FIVE",
        r#"{"subjects":["five.>"],"num_replicas":5}"#,
    );
    assert_eq!(too_many["error"]["err_code"], 10074, "{too_many}");
    let names = api(&addrs[2], "$JS.API.STREAM.NAMES", "");
    assert_eq!(names["streams"], serde_json::json!(["ONE"]), "{names}");
    // Purge and delete through a member that is not the peer.
    let other_member = (peer + 1) % 3;
    let purged = api(&addrs[other_member], "$JS.API.STREAM.PURGE.ONE", "");
    assert_eq!(purged["purged"], 30, "{purged}");
    let deleted = api(&addrs[other_member], "$JS.API.STREAM.DELETE.ONE", "");
    assert_eq!(deleted["success"], true, "{deleted}");
    let gone = api(&addrs[peer], "$JS.API.STREAM.INFO.ONE", "");
    assert_eq!(gone["error"]["code"], 404, "{gone}");
}

/// A stream's replica count changes with an update (as `nats stream edit --replicas`): R1
/// to R3 brings two empty peers into its group, which catch up (the first peer can then
/// be killed and nothing is lost); R3 to R1 lets two go, and their replicas stop.
#[test]
fn a_streams_replicas_change_with_an_update() {
    let (mut cluster, addrs, _) = cluster_with_stream("G", r#"{"subjects":["g.>"]}"#);
    let ids: Vec<u64> = (0..50).collect();
    assert_eq!(publish_ids(&addrs[0], "g.x", &ids).len(), 50);
    let info = info_with_leader(&addrs[1], "G");
    let first = member_index(&info["cluster"]["leader"]);
    let via = (first + 1) % 3;
    let up = api(
        &addrs[via],
        "$JS.API.STREAM.UPDATE.G",
        r#"{"name":"G","subjects":["g.>"],"num_replicas":3}"#,
    );
    assert!(up.get("error").is_none(), "{up}");
    assert_eq!(up["config"]["num_replicas"], 3, "{up}");
    // The two new peers join the group, catch up and vote.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info = info_with_leader(&addrs[first], "G");
        let replicas = info["cluster"]["replicas"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if replicas.len() == 2 && replicas.iter().all(|r| r["current"] == true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new peers never voted: {info}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The first peer goes: the two that joined hold every message and take more.
    cluster.members[first].kill9();
    let deadline = Instant::now() + Duration::from_secs(20);
    let info = loop {
        let info = api(&addrs[via], "$JS.API.STREAM.INFO.G", "");
        let led_by_other = info["cluster"]["leader"]
            .as_str()
            .is_some_and(|l| l != format!("m{first}"));
        if led_by_other && info["state"]["messages"] == 50 {
            break info;
        }
        assert!(
            Instant::now() < deadline,
            "the joined peers never served: {info}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(info["state"]["last_seq"], 50, "{info}");
    let more: Vec<u64> = (50..60).collect();
    assert_eq!(publish_ids(&addrs[via], "g.x", &more).len(), 10);
    cluster.members[first].restart();
    routes_up(&cluster.members);
    // Back to one replica: two peers leave the group, the leader stays.
    let down = api(
        &addrs[via],
        "$JS.API.STREAM.UPDATE.G",
        r#"{"name":"G","subjects":["g.>"],"num_replicas":1}"#,
    );
    assert!(down.get("error").is_none(), "{down}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let stays = loop {
        let info = info_with_leader(&addrs[via], "G");
        if info["cluster"]["replicas"] == serde_json::json!([]) && info["state"]["messages"] == 60 {
            break member_index(&info["cluster"]["leader"]);
        }
        assert!(
            Instant::now() < deadline,
            "never back to one replica: {info}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // The group is that one member now: with the other two gone it still takes publishes.
    for i in 0..3 {
        if i != stays {
            cluster.members[i].kill9();
        }
    }
    let last: Vec<u64> = (60..65).collect();
    assert_eq!(publish_ids(&addrs[stays], "g.x", &last).len(), 5);
    for i in 0..3 {
        if i != stays {
            cluster.members[i].restart();
        }
    }
    routes_up(&cluster.members);
    // Asking for more replicas than members is refused, and changes nothing.
    let five = api(
        &addrs[0],
        "$JS.API.STREAM.UPDATE.G",
        r#"{"name":"G","subjects":["g.>"],"num_replicas":5}"#,
    );
    assert_eq!(five["error"]["err_code"], 10074, "{five}");
}

/// Removes member `name` from the cluster through `endpoint`, with etcdctl (its ID from
/// `member list`), as an operator would.
fn remove_member(endpoint: &str, name: &str) {
    let etcdctl = |args: &[&str]| {
        let (ok, out, err) = run(crate::harness::etcdctl(endpoint).args(args));
        assert!(ok, "etcdctl {args:?}: {err}");
        out
    };
    let list: serde_json::Value =
        serde_json::from_str(&etcdctl(&["member", "list", "-w", "json"])).expect("member list");
    let id = list["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["name"] == name))
        .and_then(|m| m["ID"].as_u64())
        .unwrap_or_else(|| panic!("{name} in {list}"));
    etcdctl(&["member", "remove", &format!("{id:x}")]);
}

/// With no member to spare (three members, one removed), an R3 stream goes on with the two
/// peers it has: it takes publishes, and its assignment keeps three peers (the departed one
/// shown by its ID), so a member that joins later can still take its place.
#[test]
fn without_a_spare_member_a_stream_goes_on_with_the_peers_it_has() {
    let (mut cluster, addrs) = r3_stream();
    let ids: Vec<u64> = (0..20).collect();
    assert_eq!(publish_ids(&addrs[0], "r.x", &ids).len(), 20);
    let info = info_with_leader(&addrs[0], "R");
    let leader = member_index(&info["cluster"]["leader"]);
    let victim = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    remove_member(&cluster.members[leader].endpoint(), &format!("m{victim}"));
    cluster.members[victim].kill9();
    let more: Vec<u64> = (20..30).collect();
    assert_eq!(publish_ids(&addrs[other], "r.x", &more).len(), 10);
    // A few converge rounds later, nothing has moved.
    std::thread::sleep(Duration::from_secs(3));
    let info = info_with_leader(&addrs[other], "R");
    assert_eq!(info["state"]["messages"], 30, "{info}");
    let replicas = info["cluster"]["replicas"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(replicas.len(), 2, "{info}");
    assert!(
        replicas
            .iter()
            .any(|r| r["name"].as_str().is_some_and(|n| !n.starts_with('m'))),
        "the departed peer, by its ID: {info}"
    );
}

/// A member holding a replica of an R3 stream is removed from a 4-member cluster (and
/// killed): the stream's leader places the spare member in its stead, which catches up and
/// votes, so the stream keeps three replicas and takes publishes with one more peer down.
#[test]
fn a_removed_members_replicas_move_to_another_member() {
    let cluster = Cluster::start(4);
    let mut cluster = cluster;
    routes_up(&cluster.members);
    let addrs: Vec<String> = cluster
        .members
        .iter()
        .map(|m| m.nats_addr.clone())
        .collect();
    let created = api(
        &addrs[0],
        "$JS.API.STREAM.CREATE.MV",
        r#"{"subjects":["mv.>"],"num_replicas":3}"#,
    );
    assert_eq!(created["did_create"], true, "{created}");
    let ids: Vec<u64> = (0..50).collect();
    assert_eq!(publish_ids(&addrs[0], "mv.x", &ids).len(), 50);
    let info = info_with_leader(&addrs[0], "MV");
    let leader = member_index(&info["cluster"]["leader"]);
    let replicas: Vec<usize> = info["cluster"]["replicas"]
        .as_array()
        .map(|r| r.iter().map(|p| member_index(&p["name"])).collect())
        .unwrap_or_default();
    assert_eq!(replicas.len(), 2, "{info}");
    let victim = replicas[0];
    let spare = (0..4)
        .find(|i| *i != leader && !replicas.contains(i))
        .expect("a member without a replica");
    remove_member(&cluster.members[leader].endpoint(), &format!("m{victim}"));
    cluster.members[victim].kill9();
    // The spare joins the group, catches up and votes; the removed member is out of it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let info = loop {
        let info = info_with_leader(&addrs[spare], "MV");
        // A departed peer, no member any more, goes by its ID until the group lets it go.
        let index = |name: &serde_json::Value| {
            name.as_str()
                .and_then(|n| n.strip_prefix('m'))
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(usize::MAX)
        };
        let mut peers: Vec<usize> = info["cluster"]["replicas"]
            .as_array()
            .map(|r| r.iter().map(|p| index(&p["name"])).collect())
            .unwrap_or_default();
        let current = info["cluster"]["replicas"]
            .as_array()
            .is_some_and(|r| r.iter().all(|p| p["current"] == true));
        peers.push(index(&info["cluster"]["leader"]));
        peers.sort_unstable();
        let mut want: Vec<usize> = (0..4).filter(|i| *i != victim).collect();
        want.sort_unstable();
        if peers == want && current {
            break info;
        }
        assert!(
            Instant::now() < deadline,
            "m{spare} never replaced m{victim}: {info}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(info["state"]["messages"], 50, "{info}");
    assert_eq!(info["config"]["num_replicas"], 3, "{info}");
    // With one of the original peers down too, the group is the other one and the spare:
    // publishes still commit, so the spare votes with every message.
    let other = (0..4)
        .find(|i| *i != victim && *i != spare && *i != leader)
        .expect("the third peer");
    cluster.members[leader].kill9();
    let more: Vec<u64> = (50..60).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut acked = Acks::new();
    while acked.len() < more.len() {
        let missing: Vec<u64> = more
            .iter()
            .copied()
            .filter(|n| !acked.contains_key(n))
            .collect();
        acked.extend(publish_ids(&addrs[other], "mv.x", &missing));
        assert!(
            Instant::now() < deadline,
            "no publish after the leader went: {acked:?}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info = api(&addrs[spare], "$JS.API.STREAM.INFO.MV", "");
        if info["state"]["messages"] == 60 && info["state"]["last_seq"] == 60 {
            break;
        }
        assert!(Instant::now() < deadline, "the spare's stream: {info}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// kill -9 the leader of an R3 stream while a client publishes through another member:
/// every acknowledged publish is stored under the sequence it was given, the sequences have
/// no gap, and publishes retried with their `Nats-Msg-Id` are stored once. The killed member
/// catches up when it returns.
#[test]
fn an_r3_stream_loses_nothing_acknowledged_when_its_leader_is_killed() {
    let (mut cluster, addrs) = r3_stream();
    let info = info_with_leader(&addrs[0], "R");
    assert_eq!(
        info["cluster"]["replicas"].as_array().map(Vec::len),
        Some(2),
        "{info}"
    );
    let leader = member_index(&info["cluster"]["leader"]);
    let via = (leader + 1) % 3;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (addr, stop) = (addrs[via].clone(), stop.clone());
        std::thread::spawn(move || {
            let mut acked = Acks::new();
            let mut next = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let ids: Vec<u64> = (next..next + 64).collect();
                acked.extend(publish_ids(&addr, "r.x", &ids));
                next += 64;
            }
            (acked, next)
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    cluster.members[leader].kill9();
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut acked, sent) = publisher.join().expect("publisher");
    let before_retry = acked.len();
    assert!(before_retry > 0, "nothing acknowledged");
    // Everything not acknowledged is published again with its ID until it is.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let missing: Vec<u64> = (0..sent).filter(|n| !acked.contains_key(n)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} never acknowledged",
            missing.len()
        );
        acked.extend(publish_ids(&addrs[via], "r.x", &missing));
    }
    println!(
        "{sent} published, {before_retry} acknowledged before the retries, leader m{leader} killed"
    );
    // One sequence per message, whatever was retried: 1..=sent, no gap.
    let mut seqs: Vec<u64> = acked.values().map(|(s, _)| *s).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs, (1..=sent).collect::<Vec<_>>());
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for i in &survivors {
        let info = api(&addrs[*i], "$JS.API.STREAM.INFO.R", "");
        assert_eq!(info["state"]["messages"], sent, "m{i}: {info}");
        assert_eq!(info["state"]["last_seq"], sent, "m{i}: {info}");
    }
    for (n, (seq, _)) in acked.iter().step_by(97) {
        // Served once a read index is had (a 503 right after the failover is retried).
        let deadline = Instant::now() + Duration::from_secs(10);
        let got = loop {
            let got = api(
                &addrs[survivors[0]],
                "$JS.API.STREAM.MSG.GET.R",
                &format!("{{\"seq\":{seq}}}"),
            );
            if got["error"]["code"] != 503 || Instant::now() > deadline {
                break got;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let data = got["message"]["data"]
            .as_str()
            .unwrap_or_else(|| panic!("seq {seq}: {got}"));
        use base64::Engine as _;
        let data = base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("base64");
        assert_eq!(String::from_utf8_lossy(&data), n.to_string(), "seq {seq}");
    }
    // The killed member returns and catches up.
    cluster.members[leader].start_again();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info = api(&addrs[leader], "$JS.API.STREAM.INFO.R", "");
        if info["state"]["messages"] == sent {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "m{leader} never caught up: {info}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Pulls from consumer `work` of stream `R` through `addr` until `more` says stop or 30 s
/// pass, acknowledging each message with a reply; returns the payloads delivered, in order,
/// and those whose ack was confirmed (committed on a quorum).
fn pull_and_ack(addr: &str, mut more: impl FnMut(&[u64], &[u64]) -> bool) -> (Vec<u64>, Vec<u64>) {
    let (mut got, mut confirmed) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    while more(&got, &confirmed) && Instant::now() < deadline {
        let Some((mut w, mut r)) = connect_with(addr, "_INBOX.c.>") else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        let _ = w.set_read_timeout(Some(Duration::from_secs(3)));
        let req = r#"{"batch":20,"expires":1000000000}"#;
        let pull = format!(
            "PUB $JS.API.CONSUMER.MSG.NEXT.R.work _INBOX.c.pull {}\r\n{req}\r\n",
            req.len()
        );
        if w.write_all(pull.as_bytes()).is_err() {
            continue;
        }
        // Until the pull ends (its batch delivered, or its status) and every ack sent is
        // answered, or a timeout.
        let (mut ended, mut unanswered, mut delivered) = (false, 0, 0);
        while !ended || unanswered > 0 {
            let Some((head, body)) = read_msg(&mut r) else {
                break;
            };
            let parts: Vec<&str> = head.split_whitespace().collect();
            if let Some(n) = parts[1].strip_prefix("_INBOX.c.ack.") {
                confirmed.push(n.parse().expect("a number"));
                unanswered -= 1;
                continue;
            }
            let Some(ack) = parts.get(3).filter(|s| s.starts_with("$JS.ACK.")) else {
                // A status (408 request expired, 409 …): this pull is over.
                ended = true;
                continue;
            };
            // After the headers block (the publishes carried a message ID).
            let payload = body.rsplit("\r\n\r\n").next().unwrap_or_default();
            let n: u64 = payload.parse().expect("a number");
            got.push(n);
            delivered += 1;
            ended |= delivered == 20;
            if w.write_all(format!("PUB {ack} _INBOX.c.ack.{n} 0\r\n\r\n").as_bytes())
                .is_err()
            {
                break;
            }
            unanswered += 1;
        }
    }
    (got, confirmed)
}

/// A durable pull consumer of an R3 stream, used through members other than the leader:
/// messages acknowledged (and confirmed) before the leader is killed are not delivered
/// again by the new leader, and every message is delivered at least once.
#[test]
fn consumers_of_an_r3_stream_resume_on_a_new_leader() {
    consume_across_a_leader_kill(r#"{"subjects":["r.>"],"num_replicas":3}"#);
}

/// The same with a work-queue stream: what is acknowledged is dropped on every replica, and
/// once everything is, the stream is empty through every survivor (the new leader drops
/// what its predecessor's acks left).
#[test]
fn an_r3_work_queue_drops_what_is_acknowledged_across_a_leader_kill() {
    let (_cluster, addrs, survivors) = consume_across_a_leader_kill(
        r#"{"subjects":["r.>"],"num_replicas":3,"retention":"workqueue"}"#,
    );
    for s in survivors {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let info = api(&addrs[s], "$JS.API.STREAM.INFO.R", "");
            if info["state"]["messages"] == 0 && info["state"]["last_seq"] == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "member {s}: {info}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Stream `R` made from `config` on a fresh cluster, 200 messages, a durable pull consumer
/// `work` used through a member that does not lead: at least 100 acked and confirmed, the
/// leader killed, the rest consumed through a survivor. Returns the cluster, the members'
/// NATS addresses and the survivors.
fn consume_across_a_leader_kill(config: &str) -> (Cluster, Vec<String>, Vec<usize>) {
    let (mut cluster, addrs, _) = cluster_with_stream("R", config);
    let leader = member_index(&info_with_leader(&addrs[0], "R")["cluster"]["leader"]);
    let other = (leader + 1) % 3;
    // Until the leader's consumers run (just elected), a request is refused with 503.
    let deadline = Instant::now() + Duration::from_secs(10);
    let consumer = loop {
        let answer = api(
            &addrs[other],
            "$JS.API.CONSUMER.DURABLE.CREATE.R.work",
            r#"{"stream_name":"R","config":{"durable_name":"work","ack_policy":"explicit","ack_wait":2000000000}}"#,
        );
        if answer["error"]["code"] != 503 || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(consumer["name"], "work", "{consumer}");
    let ids: Vec<u64> = (1..=200).collect();
    assert_eq!(publish_ids(&addrs[other], "r.x", &ids).len(), 200);

    // At least the first hundred, each ack confirmed.
    let (first, confirmed) = pull_and_ack(&addrs[other], |_, confirmed| confirmed.len() < 100);
    assert!(
        confirmed.len() >= 100,
        "{} confirmed of {} delivered",
        confirmed.len(),
        first.len()
    );
    assert_eq!(first[..100], (1..=100).collect::<Vec<_>>()[..]);

    cluster.members[leader].kill9();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (rest, _) = pull_and_ack(&addrs[survivors[1]], |got, _| {
        !(1..=200).all(|n| first.contains(&n) || got.contains(&n))
    });
    assert!(
        rest.iter().all(|n| !confirmed.contains(n)),
        "a confirmed ack was forgotten: {rest:?}"
    );
    let mut all: Vec<u64> = first.iter().chain(rest.iter()).copied().collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all, ids, "every message delivered at least once");
    // The new leader's consumer sees everything acknowledged.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = api(&addrs[survivors[0]], "$JS.API.CONSUMER.INFO.R.work", "");
        if info["ack_floor"]["stream_seq"] == 200 && info["num_pending"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{info}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let names = api(&addrs[survivors[1]], "$JS.API.CONSUMER.NAMES.R", "");
    assert_eq!(names["consumers"], serde_json::json!(["work"]), "{names}");
    (cluster, addrs, survivors)
}

/// Dead letters in a cluster: a consumer of an R3 stream, used through a member that does
/// not lead it, gives up on a message (`+TERM`); its leader writes it to the dead-letter
/// stream (a stream of the cluster, placed anywhere) with the `Nats-DLQ-*` headers, and the
/// message leaves the consumer's pending set once the write is acknowledged.
#[test]
fn a_replicated_consumer_writes_dead_letters_to_a_stream_of_the_cluster() {
    let (_cluster, addrs, _) =
        cluster_with_stream("WORK", r#"{"subjects":["work.>"],"num_replicas":3}"#);
    let dlq = api(
        &addrs[1],
        "$JS.API.STREAM.CREATE.DLQ",
        r#"{"subjects":["dlq.>"]}"#,
    );
    assert_eq!(dlq["did_create"], true, "{dlq}");
    let leader = member_index(&info_with_leader(&addrs[0], "WORK")["cluster"]["leader"]);
    let other = (leader + 1) % 3;
    let deadline = Instant::now() + Duration::from_secs(10);
    let created = loop {
        let answer = api(
            &addrs[other],
            "$JS.API.CONSUMER.DURABLE.CREATE.WORK.c",
            r#"{"stream_name":"WORK","config":{"durable_name":"c","ack_policy":"explicit","dead_letter_subject":"dlq.work"}}"#,
        );
        if answer["error"]["code"] != 503 || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        created["config"]["dead_letter_subject"], "dlq.work",
        "{created}"
    );
    assert_eq!(publish_ids(&addrs[other], "work.a", &[7]).len(), 1);

    let (mut w, mut r) = connect_with(&addrs[other], "_INBOX.d.>").expect("connect");
    let req = r#"{"batch":1,"expires":5000000000}"#;
    w.write_all(
        format!(
            "PUB $JS.API.CONSUMER.MSG.NEXT.WORK.c _INBOX.d.pull {}\r\n{req}\r\n",
            req.len()
        )
        .as_bytes(),
    )
    .expect("pull");
    let (head, _) = read_msg(&mut r).expect("the message");
    let ack = head
        .split_whitespace()
        .nth(3)
        .expect("ack subject")
        .to_string();
    w.write_all(format!("PUB {ack} 5\r\n+TERM\r\n").as_bytes())
        .expect("term");

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = api(&addrs[0], "$JS.API.STREAM.INFO.DLQ", "");
        let consumer = api(&addrs[other], "$JS.API.CONSUMER.INFO.WORK.c", "");
        if info["state"]["messages"] == 1 && consumer["num_ack_pending"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{info}\n{consumer}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = api(&addrs[2], "$JS.API.STREAM.MSG.GET.DLQ", r#"{"seq":1}"#);
    use base64::Engine as _;
    let hdrs = base64::engine::general_purpose::STANDARD
        .decode(got["message"]["hdrs"].as_str().expect("headers"))
        .expect("base64");
    let hdrs = String::from_utf8_lossy(&hdrs);
    for h in [
        "Nats-DLQ-Reason: term",
        "Nats-DLQ-Stream: WORK",
        "Nats-DLQ-Consumer: c",
        "Nats-DLQ-Subject: work.a",
        "Nats-DLQ-Sequence: 1",
        "Nats-Msg-Id: dlq:WORK:c:1",
    ] {
        assert!(hdrs.contains(h), "{h} in {hdrs}");
    }
}

/// Message schedules in a cluster: an `@at` schedule published to an R3 stream through a
/// member that does not lead it fires once at its time (its leader's clock), the same on
/// every replica, and an `@every` one keeps firing after its leader is killed, with no burst
/// of catch-up firings from the new leader.
#[test]
fn schedules_of_an_r3_stream_fire_on_its_leader() {
    let (mut cluster, addrs, _) = cluster_with_stream(
        "S",
        r#"{"subjects":["s.>"],"num_replicas":3,"allow_msg_schedules":true}"#,
    );
    let leader = member_index(&info_with_leader(&addrs[0], "S")["cluster"]["leader"]);
    let other = (leader + 1) % 3;
    let at = humantime::format_rfc3339_millis(
        std::time::SystemTime::now() + Duration::from_millis(1500),
    )
    .to_string();
    let (mut w, mut r) = connect_with(&addrs[other], "_INBOX.s.>").expect("connect");
    for (subject, pattern) in [
        ("s.sched.once", format!("@at {at}")),
        ("s.sched.tick", "@every 1s".to_string()),
    ] {
        let target = if subject.ends_with("once") {
            "s.due"
        } else {
            "s.tick"
        };
        let hdrs = format!(
            "NATS/1.0\r\nNats-Schedule: {pattern}\r\nNats-Schedule-Target: {target}\r\n\r\n"
        );
        w.write_all(
            format!(
                "HPUB {subject} _INBOX.s.ack {} {}\r\n{hdrs}later\r\n",
                hdrs.len(),
                hdrs.len() + 5
            )
            .as_bytes(),
        )
        .expect("schedule");
        let (_, ack) = read_msg(&mut r).expect("ack");
        assert!(ack.contains("\"seq\""), "{ack}");
    }
    let count = |addr: &str, subject: &str| {
        let info = api(
            addr,
            "$JS.API.STREAM.INFO.S",
            &format!(r#"{{"subjects_filter":"{subject}"}}"#),
        );
        info["state"]["subjects"][subject].as_u64().unwrap_or(0)
    };
    assert_eq!(count(&addrs[other], "s.due"), 0, "not before its time");
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&addrs[other], "s.due") == 0 {
        assert!(
            Instant::now() < deadline,
            "the scheduled message never came"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Once, on every replica (the schedule itself gone).
    std::thread::sleep(Duration::from_millis(1200));
    for a in &addrs {
        assert_eq!(count(a, "s.due"), 1, "{a}");
        assert_eq!(count(a, "s.sched.once"), 0, "{a}");
    }
    // The repeating one goes on through a leader change, about once a second.
    cluster.members[leader].kill9();
    let survivor = &addrs[other];
    let before = count(survivor, "s.tick");
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    let after = count(survivor, "s.tick");
    let elapsed = started.elapsed().as_secs() + 1;
    assert!(
        after > before,
        "no tick after the leader change: {before} then {after}"
    );
    assert!(
        after - before <= elapsed,
        "{} ticks in about {elapsed} s: the new leader caught up in a burst",
        after - before
    );
}

/// nats-py's JetStream checks (streams, publishes, gets, purges, limits, KV buckets and
/// watchers, pull, push and ordered consumers, the object store) with every stream on three
/// replicas, through a member that may or may not lead them.
#[test]
fn nats_py_uses_replicated_streams_buckets_and_consumers() {
    let py =
        crate::harness::python_with("BERTH_TEST_PYTHON", "nats", "pip install nats-py==2.16.0");
    let cluster = Cluster::start(3);
    routes_up(&cluster.members);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/jetstream_client.py"
    );
    let (ok, out, err) = run(std::process::Command::new(py)
        .arg(script)
        .arg(format!("nats://{}", cluster.members[1].nats_addr))
        .arg("3"));
    println!("{out}");
    assert!(ok, "nats-py JetStream script failed:\n{out}\n{err}");
    assert!(out.contains(" passed, 0 failed"), "{out}");
}

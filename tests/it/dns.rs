//! Consul's DNS interface against a real berth process, asked with the real `dig` over UDP
//! and TCP: service A and SRV records (with their targets' addresses), tags, the RFC 2782
//! form, nodes, health (critical instances leave the answers and come back), NXDOMAIN,
//! truncation of large answers over UDP, and malformed packets.

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use crate::harness::{http_request, run, Server};

/// Runs `dig` against the server's DNS port; returns its output.
fn dig(srv: &Server, args: &[&str]) -> String {
    let (_, port) = srv.dns_addr.rsplit_once(':').expect("host:port");
    let (ok, out, err) = run(Command::new("dig")
        .args(["@127.0.0.1", "-p", port, "+time=5", "+tries=1"])
        .args(args));
    assert!(ok, "dig {args:?} failed: {out}{err}");
    out
}

/// One record of dig's `+noall +answer` (or `+additional`) output.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Rr {
    name: String,
    ttl: u32,
    rtype: String,
    data: String,
}

fn records(out: &str) -> Vec<Rr> {
    out.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(f.len() >= 5, "not a record: {l}");
            Rr {
                name: f[0].to_string(),
                ttl: f[1].parse().expect("a TTL"),
                rtype: f[3].to_string(),
                data: f[4..].join(" "),
            }
        })
        .collect()
}

/// The answer section for `name` of type `rtype` (extra dig flags in `flags`).
fn answers(srv: &Server, name: &str, rtype: &str, flags: &[&str]) -> Vec<Rr> {
    let mut args = vec![name, rtype, "+noall", "+answer"];
    args.extend_from_slice(flags);
    records(&dig(srv, &args))
}

fn data(rrs: &[Rr]) -> BTreeSet<String> {
    rrs.iter().map(|r| r.data.clone()).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The `status:` of dig's header comment.
fn status(srv: &Server, name: &str, rtype: &str) -> String {
    let out = dig(srv, &[name, rtype, "+noall", "+comments"]);
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no status in {out}"))
        .to_string()
}

fn put(srv: &Server, path: &str, body: &str) {
    let ((code, text), _) = http_request("PUT", &srv.http_addr, path, body, &[]);
    assert_eq!(code, 200, "PUT {path}: {text}");
}

/// A counter from /metrics, 0 when the series does not exist yet.
fn metric(srv: &Server, series: &str) -> f64 {
    let (_, body) = srv.http_get("/metrics");
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// `web1` on the member's own node with its own address and a TTL check (passing), and
/// `w2` on node `n2` with the node's address and no checks.
fn two_instances(srv: &Server) {
    put(
        srv,
        "/v1/agent/service/register",
        r#"{"Name":"web","ID":"web1","Address":"10.0.0.5","Port":8080,"Tags":["blue"],
            "Weights":{"Passing":10,"Warning":3},"Check":{"TTL":"30s"}}"#,
    );
    put(srv, "/v1/agent/check/pass/service:web1", "");
    put(
        srv,
        "/v1/catalog/register",
        r#"{"Node":"n2","Address":"10.0.0.9",
            "Service":{"Service":"web","ID":"w2","Port":81,"Tags":["green"]}}"#,
    );
}

#[test]
fn services_tags_and_nodes_over_udp_and_tcp() {
    let srv = Server::start_with(&["--dns-service-ttl", "7s", "--dns-node-ttl", "3s"]);
    two_instances(&srv);

    for transport in [&[][..], &["+tcp"][..]] {
        let a = answers(&srv, "web.service.consul", "A", transport);
        assert_eq!(data(&a), set(&["10.0.0.5", "10.0.0.9"]), "{transport:?}");
        assert!(
            a.iter()
                .all(|r| r.ttl == 7 && r.rtype == "A" && r.name == "web.service.consul."),
            "{a:?}"
        );
    }

    // SRV: the instance with its own address is reached by its hex name, the other by its
    // node's; both targets' addresses come in the additional section.
    let out = dig(
        &srv,
        &[
            "web.service.consul",
            "SRV",
            "+noall",
            "+answer",
            "+additional",
        ],
    );
    let rrs = records(&out);
    let srv_data: BTreeSet<String> = rrs
        .iter()
        .filter(|r| r.rtype == "SRV")
        .map(|r| r.data.clone())
        .collect();
    assert_eq!(
        srv_data,
        set(&[
            "1 10 8080 0a000005.addr.dc1.consul.",
            "1 1 81 n2.node.dc1.consul."
        ]),
        "{out}"
    );
    let extra: BTreeSet<(String, String)> = rrs
        .iter()
        .filter(|r| r.rtype == "A")
        .map(|r| (r.name.clone(), r.data.clone()))
        .collect();
    assert_eq!(
        extra,
        [
            ("0a000005.addr.dc1.consul.", "10.0.0.5"),
            ("n2.node.dc1.consul.", "10.0.0.9")
        ]
        .iter()
        .map(|(n, a)| (n.to_string(), a.to_string()))
        .collect(),
        "{out}"
    );

    // Tags, the RFC 2782 form (`_tcp`: any tag) and the datacenter.
    assert_eq!(
        data(&answers(&srv, "blue.web.service.consul", "A", &[])),
        set(&["10.0.0.5"])
    );
    assert_eq!(
        data(&answers(
            &srv,
            "green.web.service.dc1.consul",
            "A",
            &["+tcp"]
        )),
        set(&["10.0.0.9"])
    );
    assert_eq!(
        data(&answers(&srv, "_web._blue.service.consul", "SRV", &[])),
        set(&["1 10 8080 0a000005.addr.dc1.consul."])
    );
    assert_eq!(
        answers(&srv, "_web._tcp.service.dc1.consul", "SRV", &[]).len(),
        2
    );
    assert_eq!(
        data(&answers(&srv, "WEB.service.consul", "A", &[])),
        set(&["10.0.0.5", "10.0.0.9"])
    );

    // Nodes and hex addresses, with the node TTL.
    let node = answers(&srv, "n2.node.consul", "A", &[]);
    assert_eq!(data(&node), set(&["10.0.0.9"]));
    assert_eq!(node[0].ttl, 3);
    assert_eq!(
        data(&answers(&srv, "n2.node.dc1.consul", "A", &["+tcp"])),
        set(&["10.0.0.9"])
    );
    assert_eq!(
        data(&answers(&srv, "0a000005.addr.dc1.consul", "A", &[])),
        set(&["10.0.0.5"])
    );

    // What does not exist: NXDOMAIN, with the zone's SOA.
    for (name, rtype) in [
        ("nope.service.consul", "A"),
        ("red.web.service.consul", "A"),
        ("web.service.dc2.consul", "SRV"),
        ("nope.node.consul", "A"),
        ("web.query.consul", "A"),
        ("example.com", "A"),
    ] {
        assert_eq!(status(&srv, name, rtype), "NXDOMAIN", "{name} {rtype}");
    }
    let authority = records(&dig(&srv, &["nope.service.consul", "+noall", "+authority"]));
    assert_eq!(authority.len(), 1, "{authority:?}");
    assert_eq!(authority[0].rtype, "SOA");
    assert_eq!(authority[0].name, "consul.");
    // A name that exists but has no record of the type: NOERROR, no answer.
    assert_eq!(status(&srv, "web.service.consul", "AAAA"), "NOERROR");
    assert!(answers(&srv, "web.service.consul", "AAAA", &[]).is_empty());
    // The zone itself.
    let soa = answers(&srv, "consul", "SOA", &[]);
    assert_eq!(soa.len(), 1);
    assert!(
        soa[0].data.starts_with("ns.consul. hostmaster.consul."),
        "{soa:?}"
    );
    assert!(!answers(&srv, "consul", "NS", &[]).is_empty());

    assert!(
        metric(
            &srv,
            r#"berth_dns_queries_total{type="SRV",rcode="NOERROR"}"#
        ) >= 3.0
    );
    assert!(
        metric(
            &srv,
            r#"berth_dns_queries_total{type="A",rcode="NXDOMAIN"}"#
        ) >= 5.0
    );
}

#[test]
fn critical_instances_leave_the_answers_and_come_back() {
    let srv = Server::start();
    two_instances(&srv);
    let srv_of_web1 = |srv: &Server| {
        answers(srv, "web.service.consul", "SRV", &[])
            .into_iter()
            .find(|r| r.data.ends_with("0a000005.addr.dc1.consul."))
            .map(|r| r.data)
    };
    assert_eq!(
        srv_of_web1(&srv).as_deref(),
        Some("1 10 8080 0a000005.addr.dc1.consul.")
    );

    // Warning: still served, with the warning weight.
    put(&srv, "/v1/agent/check/warn/service:web1", "");
    assert_eq!(
        srv_of_web1(&srv).as_deref(),
        Some("1 3 8080 0a000005.addr.dc1.consul.")
    );

    // Critical: gone from every form of the answer.
    put(&srv, "/v1/agent/check/fail/service:web1", "");
    assert_eq!(srv_of_web1(&srv), None);
    assert_eq!(
        data(&answers(&srv, "web.service.consul", "A", &["+tcp"])),
        set(&["10.0.0.9"])
    );
    // A service whose every instance is critical does not exist for DNS.
    assert_eq!(status(&srv, "blue.web.service.consul", "A"), "NXDOMAIN");

    put(&srv, "/v1/agent/check/pass/service:web1", "");
    assert_eq!(
        data(&answers(&srv, "web.service.consul", "A", &[])),
        set(&["10.0.0.5", "10.0.0.9"])
    );
    assert_eq!(
        data(&answers(&srv, "blue.web.service.consul", "A", &[])),
        set(&["10.0.0.5"])
    );
}

/// dig's header flags (`qr aa tc rd`) and answer count.
fn flags_and_count(out: &str) -> (String, usize) {
    let line = out
        .lines()
        .find(|l| l.starts_with(";; flags:"))
        .unwrap_or_else(|| panic!("no flags in {out}"));
    let flags = line
        .trim_start_matches(";; flags:")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let count = line
        .split("ANSWER: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no answer count in {line}"));
    (flags, count)
}

#[test]
fn large_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let srv = Server::start();
    for i in 1..=40 {
        put(
            &srv,
            "/v1/catalog/register",
            &format!(
                r#"{{"Node":"m{i}","Address":"10.1.0.{i}","Service":{{"Service":"big","ID":"b{i}","Port":80}}}}"#
            ),
        );
    }
    let before = metric(&srv, "berth_dns_truncated_responses_total");
    // UDP without EDNS: at most 512 bytes, TC set (`+ignore`: dig does not retry over TCP).
    let out = dig(
        &srv,
        &[
            "big.service.consul",
            "SRV",
            "+noedns",
            "+ignore",
            "+noall",
            "+comments",
            "+stats",
        ],
    );
    let (flags, count) = flags_and_count(&out);
    assert!(flags.split_whitespace().any(|f| f == "tc"), "{out}");
    assert!(count > 0 && count < 40, "{out}");
    let size: usize = out
        .split("MSG SIZE  rcvd: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no size in {out}"));
    assert!(size <= 512, "{out}");
    assert!(metric(&srv, "berth_dns_truncated_responses_total") > before);

    // TCP, and UDP with EDNS's larger size: every instance, not truncated.
    for transport in [&["+noedns", "+tcp"][..], &["+bufsize=4096"][..]] {
        let mut args = vec!["big.service.consul", "SRV", "+noall", "+comments"];
        args.extend_from_slice(transport);
        let out = dig(&srv, &args);
        let (flags, count) = flags_and_count(&out);
        assert!(!flags.split_whitespace().any(|f| f == "tc"), "{out}");
        assert_eq!(count, 40, "{transport:?}: {out}");
    }
    // A's: one per address, all 40 over TCP.
    assert_eq!(
        answers(&srv, "big.service.consul", "A", &["+tcp"]).len(),
        40
    );
}

#[test]
fn malformed_packets_get_formerr_or_nothing_and_serving_goes_on() {
    let srv = Server::start();
    two_instances(&srv);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    sock.connect(&srv.dns_addr).expect("connect");
    // A header claiming one question, then a label longer than the packet.
    let mut packet = vec![0xbe, 0xef, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0x3f];
    packet.extend_from_slice(b"web\x00\xff\xff");
    sock.send(&packet).expect("send");
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("a FORMERR answer");
    assert!(n >= 12, "{:?}", &buf[..n]);
    assert_eq!(&buf[..2], &[0xbe, 0xef], "the query's ID");
    assert_ne!(buf[2] & 0x80, 0, "a response");
    assert_eq!(buf[3] & 0x0f, 1, "FORMERR");
    // Too short for a header, and random bytes: the server may stay silent, but must live.
    sock.send(b"\x01\x02\x03").expect("send");
    let mut seed: u32 = 0x1234_5678;
    for _ in 0..50 {
        let junk: Vec<u8> = (0..64)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (seed >> 16) as u8
            })
            .collect();
        sock.send(&junk).expect("send");
    }
    // Garbage over TCP too.
    {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(&srv.dns_addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&packet);
        tcp.write_all(&framed).expect("write");
        let mut len = [0u8; 2];
        tcp.read_exact(&mut len).expect("a framed answer");
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tcp.read_exact(&mut reply).expect("the answer");
        assert_eq!(reply[3] & 0x0f, 1, "FORMERR over TCP");
    }
    assert_eq!(
        data(&answers(&srv, "web.service.consul", "A", &[])),
        set(&["10.0.0.5", "10.0.0.9"])
    );
    assert_eq!(
        data(&answers(&srv, "web.service.consul", "A", &["+tcp"])),
        set(&["10.0.0.5", "10.0.0.9"])
    );
    assert!(
        metric(
            &srv,
            r#"berth_dns_queries_total{type="none",rcode="FORMERR"}"#
        ) >= 2.0
    );
}

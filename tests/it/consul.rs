//! The Consul face against real berth processes: py-consul's calls (`tests/python/
//! consul_client.py`), Consul KV and etcd KV as one keyspace, TTL heartbeats that are not Raft
//! writes, and on 3 members: blocking queries on a follower, registrations across kill -9,
//! a check that moves when the member running it dies, and bad input refused whole with a
//! clear 4xx.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{http_request, run, Cluster, Server};

/// An HTTP call to a member's Consul API: (status, body, X-Consul-Index).
fn consul(srv: &Server, method: &str, path: &str, body: &str) -> (u16, String, i64) {
    let ((code, text), headers) = http_request(method, &srv.http_addr, path, body, &[]);
    let index = headers
        .iter()
        .find(|(k, _)| k == "x-consul-index")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no X-Consul-Index ({code} {text})"));
    assert!(index >= 1, "X-Consul-Index must never be 0");
    (code, text, index)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A counter or gauge from the member's /metrics.
fn metric(srv: &Server, name: &str) -> f64 {
    let (_, body) = srv.http_get("/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn python() -> String {
    crate::harness::python_with(
        "BERTH_TEST_PYTHON",
        "consul",
        "pip install py-consul==1.8.0",
    )
}

#[test]
fn py_consul_registers_discovers_blocks_and_locks() {
    let py = python();
    let srv = Server::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/consul_client.py");
    let (ok, out, err) = run(Command::new(py).arg(script).arg(&srv.http_addr));
    println!("{out}");
    assert!(ok, "py-consul script failed:\n{out}\n{err}");
    assert!(out.contains(" passed, 0 failed"), "{out}");
}

#[test]
fn consul_kv_and_etcd_kv_are_one_keyspace() {
    let srv = Server::start();
    let etcdctl = |args: &[&str]| {
        let (ok, out, err) = run(Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(&srv.client_addr)
            .args(args));
        assert!(ok, "etcdctl {args:?}: {err}");
        out
    };
    etcdctl(&["put", "shared/from-etcd", "e1"]);
    let (code, body, index) = consul(&srv, "GET", "/v1/kv/shared/from-etcd", "");
    assert_eq!(code, 200, "{body}");
    let item = &json(&body)[0];
    assert_eq!(item["Value"], "ZTE=", "base64 of e1");
    assert_eq!(item["Flags"], 0);
    assert_eq!(item["ModifyIndex"].as_i64(), Some(index));
    let (code, body, _) = consul(&srv, "PUT", "/v1/kv/shared/from-consul?flags=9", "c1");
    assert_eq!((code, body.trim()), (200, "true"));
    assert_eq!(
        etcdctl(&["get", "--print-value-only", "shared/from-consul"]).trim(),
        "c1"
    );
    // An etcd put keeps the Consul flags of the key's life; a delete and re-create through
    // etcd starts a new life without them.
    etcdctl(&["put", "shared/from-consul", "c2"]);
    let (_, body, _) = consul(&srv, "GET", "/v1/kv/shared/from-consul", "");
    assert_eq!(json(&body)[0]["Flags"], 9);
    etcdctl(&["del", "shared/from-consul"]);
    etcdctl(&["put", "shared/from-consul", "c3"]);
    let (_, body, _) = consul(&srv, "GET", "/v1/kv/shared/from-consul", "");
    assert_eq!(json(&body)[0]["Flags"], 0, "{body}");
    // Registry records are out of etcd's reach: a registration is not among etcd's keys and
    // survives `del --prefix ""`.
    let reg = r#"{"Name":"svc","ID":"svc1","Port":80}"#;
    assert_eq!(
        consul(&srv, "PUT", "/v1/agent/service/register", reg).0,
        200
    );
    let all = etcdctl(&["get", "--prefix", "--keys-only", ""]);
    assert!(!all.contains("svc"), "{all}");
    etcdctl(&["del", "--prefix", ""]);
    let (_, body, _) = consul(&srv, "GET", "/v1/catalog/service/svc", "");
    assert_eq!(json(&body).as_array().map(Vec::len), Some(1), "{body}");
    let (code, _, _) = consul(&srv, "GET", "/v1/kv/shared/from-etcd", "");
    assert_eq!(code, 404);
}

#[test]
fn ttl_heartbeats_renew_a_lease_and_write_nothing() {
    let srv = Server::start();
    let reg = r#"{"Name":"hb","ID":"hb1","Check":{"TTL":"30s"}}"#;
    assert_eq!(
        consul(&srv, "PUT", "/v1/agent/service/register", reg).0,
        200
    );
    assert_eq!(
        consul(&srv, "PUT", "/v1/agent/check/pass/service:hb1", "").0,
        200
    );
    let (_, _, index) = consul(&srv, "GET", "/v1/health/service/hb?passing", "");
    let proposals = metric(&srv, "berth_raft_proposals_committed_total");
    for _ in 0..200 {
        assert_eq!(
            consul(&srv, "PUT", "/v1/agent/check/pass/service:hb1", "").0,
            200
        );
    }
    let written = metric(&srv, "berth_raft_proposals_committed_total") - proposals;
    // Presence renewals are lease renewals too: nothing else should have been proposed.
    assert!(
        written <= 1.0,
        "{written} proposals for 200 unchanged heartbeats"
    );
    assert!(metric(&srv, "berth_registry_ttl_renewals_total") >= 200.0);
    let (_, body, after) = consul(&srv, "GET", "/v1/health/service/hb?passing", "");
    assert_eq!(
        after, index,
        "heartbeats that change nothing do not move the index"
    );
    assert_eq!(json(&body).as_array().map(Vec::len), Some(1));
    // A status change is one write.
    assert_eq!(
        consul(&srv, "PUT", "/v1/agent/check/warn/service:hb1", "").0,
        200
    );
    let (_, body, moved) = consul(&srv, "GET", "/v1/health/service/hb", "");
    assert!(moved > index);
    assert_eq!(json(&body)[0]["Checks"][1]["Status"], "warning", "{body}");
}

#[test]
fn a_follower_answers_blocking_queries_and_registrations_survive_kill_9() {
    let mut c = Cluster::start(3);
    let leader = c.leader_by_metrics();
    let follower = (leader + 1) % 3;
    // Every member present first: a member's presence turning its serfHealth passing is a
    // change of the answer watched below, and would wake it before the registration does.
    wait_for("every member present", 20, || {
        let (_, body, _) = consul(&c.members[follower], "GET", "/v1/health/state/passing", "");
        json(&body)
            .as_array()
            .is_some_and(|a| a.iter().filter(|c| c["CheckID"] == "serfHealth").count() == 3)
    });
    let reg = r#"{"Name":"api","ID":"api1","Port":80,"Tags":["a"]}"#;
    assert_eq!(
        consul(&c.members[leader], "PUT", "/v1/agent/service/register", reg).0,
        200
    );
    let (_, _, index) = consul(&c.members[follower], "GET", "/v1/health/service/api", "");
    let addr = c.members[follower].http_addr.clone();
    let path = format!("/v1/health/service/api?index={index}&wait=30s");
    let blocked = std::thread::spawn(move || {
        let t0 = Instant::now();
        let ((code, body), headers) = http_request("GET", &addr, &path, "", &[]);
        (code, body, headers, t0.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    let reg2 = r#"{"Name":"api","ID":"api2","Port":81}"#;
    assert_eq!(
        consul(
            &c.members[leader],
            "PUT",
            "/v1/agent/service/register",
            reg2
        )
        .0,
        200
    );
    let (code, body, headers, took) = blocked.join().expect("blocked query");
    assert_eq!(code, 200);
    assert!(took < Duration::from_secs(10), "answered after {took:?}");
    assert_eq!(json(&body).as_array().map(Vec::len), Some(2), "{body}");
    let new_index: i64 = headers
        .iter()
        .find(|(k, _)| k == "x-consul-index")
        .and_then(|(_, v)| v.parse().ok())
        .expect("index");
    assert!(new_index > index);
    // The follower timed the wake-up of the query the change answered.
    assert!(
        metric(
            &c.members[follower],
            "berth_consul_blocking_wake_seconds_count"
        ) >= 1.0
    );
    // Kill -9 each member in turn: every registration is still there, on every member.
    for victim in 0..3 {
        c.members[victim].kill9();
        let alive = (victim + 1) % 3;
        wait_for("a leader among the others", 20, || {
            consul(&c.members[alive], "GET", "/v1/health/service/api", "").0 == 200
        });
        c.members[victim].restart();
        wait_for("the restarted member to see both instances", 20, || {
            let (code, body, _) = consul(&c.members[victim], "GET", "/v1/catalog/service/api", "");
            code == 200 && json(&body).as_array().map(Vec::len) == Some(2)
        });
    }
}

/// When each request came, and its User-Agent.
type Requests = Arc<Mutex<Vec<(Instant, String)>>>;

/// A tiny HTTP server that answers 200 and records each request's User-Agent.
fn check_target() -> (String, Requests) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let agent = req
                .lines()
                .find_map(|l| {
                    l.strip_prefix("user-agent: ")
                        .or(l.strip_prefix("User-Agent: "))
                })
                .unwrap_or("")
                .to_string();
            log.lock().expect("log").push((Instant::now(), agent));
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    (addr, seen)
}

/// The agents that ran the check since `since`.
fn runners(seen: &Mutex<Vec<(Instant, String)>>, since: Instant) -> BTreeSet<String> {
    seen.lock()
        .expect("log")
        .iter()
        .filter(|(t, _)| *t >= since)
        .map(|(_, a)| a.clone())
        .collect()
}

#[test]
fn a_check_runs_on_one_member_and_moves_when_it_dies() {
    let mut c = Cluster::start(3);
    let (target, seen) = check_target();
    let reg = format!(
        r#"{{"Name":"web","ID":"web1","Port":80,"Check":{{"HTTP":"http://{target}/","Interval":"1s"}}}}"#
    );
    assert_eq!(
        consul(&c.members[0], "PUT", "/v1/agent/service/register", &reg).0,
        200
    );
    wait_for("the check to pass", 20, || {
        let (_, body, _) = consul(&c.members[1], "GET", "/v1/health/service/web?passing", "");
        json(&body).as_array().map(Vec::len) == Some(1)
    });
    // Over a few intervals, one member runs it, once per interval.
    std::thread::sleep(Duration::from_secs(2));
    let since = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    let ran = runners(&seen, since);
    assert_eq!(ran.len(), 1, "the check ran on {ran:?}");
    let runs = seen
        .lock()
        .expect("log")
        .iter()
        .filter(|(t, _)| *t >= since)
        .count();
    assert!(
        (3..=6).contains(&runs),
        "{runs} runs in 4 s at a 1 s interval"
    );
    let agent = ran.into_iter().next().unwrap_or_default();
    let victim = (0..3)
        .find(|i| agent.ends_with(&format!("berth m{i})")))
        .unwrap_or_else(|| panic!("unknown runner {agent:?}"));
    c.members[victim].kill9();
    let killed = Instant::now();
    wait_for("another member to run the check", 30, || {
        runners(&seen, killed).iter().any(|a| a != &agent)
    });
    let moved_after = killed.elapsed();
    // It settles on one of the two members left.
    std::thread::sleep(Duration::from_secs(2));
    let since = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let ran = runners(&seen, since);
    assert_eq!(ran.len(), 1, "after the move the check ran on {ran:?}");
    assert!(!ran.contains(&agent));
    println!("CHECK MOVED after {moved_after:?}");
    // The dead member's node is critical (serfHealth) on the others.
    let alive = (victim + 1) % 3;
    wait_for("serfHealth of the dead member to turn critical", 20, || {
        let (_, body, _) = consul(
            &c.members[alive],
            "GET",
            &format!("/v1/health/node/m{victim}"),
            "",
        );
        json(&body).as_array().is_some_and(|a| {
            a.iter()
                .any(|c| c["CheckID"] == "serfHealth" && c["Status"] == "critical")
        })
    });
}

/// A VictoriaMetrics process (Consul SD as Prometheus does it), killed on drop.
struct Scraper {
    child: std::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Scraper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Scraper {
    fn start(consul_addr: &str) -> Scraper {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("scrape.yml");
        std::fs::write(
            &cfg,
            format!(
                "scrape_configs:\n  - job_name: consul\n    scrape_interval: 1s\n    consul_sd_configs:\n      - server: {consul_addr}\n    relabel_configs:\n      - source_labels: [__meta_consul_health]\n        target_label: health\n      - source_labels: [__meta_consul_service]\n        target_label: service\n"
            ),
        )
        .expect("write config");
        let addr = format!("127.0.0.1:{}", crate::harness::free_port());
        let child = Command::new("victoria-metrics")
            .arg(format!("-httpListenAddr={addr}"))
            .arg(format!(
                "-storageDataPath={}",
                dir.path().join("data").display()
            ))
            .arg(format!("-promscrape.config={}", cfg.display()))
            .arg("-promscrape.consulSDCheckInterval=1s")
            .arg("-search.latencyOffset=0s")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect(
                "start victoria-metrics (Debian package victoria-metrics; .ci/run installs it)",
            );
        Scraper {
            child,
            addr,
            _dir: dir,
        }
    }

    fn get(&self, path: &str) -> Option<serde_json::Value> {
        std::net::TcpStream::connect(&self.addr).ok()?;
        let ((code, body), _) = http_request("GET", &self.addr, path, "", &[]);
        (code == 200).then(|| json(&body))
    }

    /// The active targets' discovered labels, by service ID.
    fn targets(&self) -> Vec<serde_json::Value> {
        self.get("/api/v1/targets")
            .and_then(|v| v["data"]["activeTargets"].as_array().cloned())
            .unwrap_or_default()
    }
}

fn target_of<'t>(targets: &'t [serde_json::Value], id: &str) -> Option<&'t serde_json::Value> {
    targets
        .iter()
        .find(|t| t["discoveredLabels"]["__meta_consul_service_id"] == id)
}

#[test]
fn a_consul_sd_scraper_discovers_scrapes_and_drops_services() {
    let srv = Server::start();
    let port: u16 = srv
        .http_addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("port");
    let reg = format!(
        r#"{{"Name":"berth","ID":"berth1","Address":"127.0.0.1","Port":{port},"Tags":["prod","metrics"],"Meta":{{"team":"infra"}}}}"#
    );
    assert_eq!(
        consul(&srv, "PUT", "/v1/agent/service/register", &reg).0,
        200
    );
    let web = r#"{"Name":"web","ID":"web1","Address":"127.0.0.1","Port":1,"Check":{"TTL":"30s"}}"#;
    assert_eq!(
        consul(&srv, "PUT", "/v1/agent/service/register", web).0,
        200
    );
    let vm = Scraper::start(&srv.http_addr);
    wait_for("both services as targets", 30, || vm.targets().len() == 2);
    let targets = vm.targets();
    let berth = target_of(&targets, "berth1").expect("berth target");
    let labels = &berth["discoveredLabels"];
    assert_eq!(labels["__address__"], format!("127.0.0.1:{port}"));
    assert_eq!(labels["__meta_consul_tags"], ",prod,metrics,");
    assert_eq!(labels["__meta_consul_service_metadata_team"], "infra");
    assert_eq!(labels["__meta_consul_dc"], "dc1");
    assert_eq!(labels["__meta_consul_health"], "passing");
    let web = target_of(&targets, "web1").expect("web target");
    assert_eq!(web["discoveredLabels"]["__meta_consul_health"], "critical");
    assert_eq!(web["labels"]["health"], "critical");
    // berth's own /metrics is scraped through the discovered target.
    wait_for("berth's metrics in the scraper", 30, || {
        vm.get("/api/v1/query?query=berth_raft_is_leader")
            .and_then(|v| v["data"]["result"].as_array().map(|r| !r.is_empty()))
            .unwrap_or(false)
    });
    // A health change and a deregistration reach it.
    assert_eq!(
        consul(&srv, "PUT", "/v1/agent/check/pass/service:web1", "").0,
        200
    );
    // (A target's labels carry the health through relabeling: VictoriaMetrics keeps a
    // target's discovered labels as first seen while its final labels stay the same.)
    wait_for("web to turn passing in the scraper", 30, || {
        target_of(&vm.targets(), "web1").is_some_and(|t| t["labels"]["health"] == "passing")
    });
    assert_eq!(
        consul(&srv, "PUT", "/v1/agent/service/deregister/berth1", "").0,
        200
    );
    wait_for("the deregistered service to be dropped", 30, || {
        let t = vm.targets();
        t.len() == 1 && target_of(&t, "berth1").is_none()
    });
}

/// A check target on `ip` (an address of this namespace), as [`check_target`].
fn check_target_on(ip: &str) -> (String, Requests) {
    let listener = std::net::TcpListener::bind((ip, 0)).expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let seen: Requests = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let agent = req
                .lines()
                .find_map(|l| {
                    l.strip_prefix("user-agent: ")
                        .or(l.strip_prefix("User-Agent: "))
                })
                .unwrap_or("")
                .to_string();
            log.lock().expect("log").push((Instant::now(), agent));
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    (addr, seen)
}

/// A member cut off from the majority stops running its checks before another member takes
/// them over (never two runners at once), and the check's status does not flap meanwhile.
#[test]
fn a_partitioned_members_checks_neither_flap_nor_double() {
    let c = crate::harness::NetCluster::start(3);
    // The root namespace's address on the client bridge: members reach the target there.
    let gw = c.host_ip();
    let (target, seen) = check_target_on(&gw);
    let reg = format!(
        r#"{{"Name":"web","ID":"web1","Port":80,"Check":{{"HTTP":"http://{target}/","Interval":"1s"}}}}"#
    );
    wait_for("a leader to take the registration", 30, || {
        std::net::TcpStream::connect(&c.members[0].http_addr).is_ok()
            && consul(&c.members[0], "PUT", "/v1/agent/service/register", &reg).0 == 200
    });
    wait_for("the check to pass", 30, || {
        let (_, body, _) = consul(&c.members[1], "GET", "/v1/health/service/web?passing", "");
        json(&body).as_array().map(Vec::len) == Some(1)
    });
    std::thread::sleep(Duration::from_secs(2));
    let since = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let ran = runners(&seen, since);
    assert_eq!(ran.len(), 1, "the check ran on {ran:?}");
    let agent = ran.into_iter().next().unwrap_or_default();
    let victim = (0..3)
        .find(|i| agent.ends_with(&format!("berth m{i})")))
        .unwrap_or_else(|| panic!("unknown runner {agent:?}"));
    c.peer_link(victim, false);
    let cut = Instant::now();
    let other = (victim + 1) % 3;
    // For 15 s the majority sees the instance passing all along.
    while cut.elapsed() < Duration::from_secs(15) {
        if let Ok(s) = std::net::TcpStream::connect(&c.members[other].http_addr) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let ((code, body), _) = http_request(
                "GET",
                &c.members[other].http_addr,
                "/v1/health/service/web?stale",
                "",
                &[],
            );
            if code == 200 {
                let v = json(&body);
                let statuses: Vec<&str> = v[0]["Checks"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter(|c| c["CheckID"] == "service:web1")
                            .filter_map(|c| c["Status"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                assert_eq!(statuses, ["passing"], "the check flapped: {body}");
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let log = seen.lock().expect("log").clone();
    let after: Vec<&(Instant, String)> = log.iter().filter(|(t, _)| *t >= cut).collect();
    let last_victim = after
        .iter()
        .filter(|(_, a)| *a == agent)
        .map(|(t, _)| *t)
        .max();
    let first_other = after
        .iter()
        .filter(|(_, a)| *a != agent)
        .map(|(t, _)| *t)
        .min();
    let first_other = first_other.expect("another member took the check over");
    if let Some(last) = last_victim {
        assert!(
            last < first_other,
            "the cut-off member ran the check after another member took it over"
        );
    }
    let others: BTreeSet<&String> = after
        .iter()
        .filter(|(_, a)| *a != agent)
        .map(|(_, a)| a)
        .collect();
    assert_eq!(others.len(), 1, "taken over by {others:?}");
    println!(
        "TAKEOVER: cut-off member stopped {:?} after the cut, another started {:?} after it",
        last_victim.map(|t| t - cut),
        first_other - cut
    );
    c.peer_link(victim, true);
}

#[test]
fn bad_input_is_a_clear_4xx_and_registers_nothing() {
    let srv = Server::start();
    let (_, _, start) = consul(&srv, "GET", "/v1/catalog/services", "");
    let refused = |path: &str, body: &str, want: &str| {
        let (code, text, _) = consul(&srv, "PUT", path, body);
        assert_eq!(code, 400, "{path} {body:.80}: {code} {text}");
        assert!(
            text.contains(want),
            "{path} {body:.80}: {text:?} lacks {want:?}"
        );
    };
    refused(
        "/v1/agent/service/register",
        r#"{"Name":"web","#,
        "Request decode failed",
    );
    refused(
        "/v1/agent/service/register",
        r#"{"Name":"web","Check":{"Interval":"10s","Bogus":"x"}}"#,
        "Must provide TTL",
    );
    refused(
        "/v1/agent/service/register",
        r#"{"Name":"web","Check":{"HTTP":"http://127.0.0.1:1/","Interval":"-5s"}}"#,
        "check.interval: duration \"-5s\" must not be negative",
    );
    refused(
        "/v1/agent/check/register",
        r#"{"Name":"c","Interval":"10s"}"#,
        "Must provide TTL",
    );
    // 10,000 checks on one instance: refused whole, with the limit in the message.
    let checks: Vec<String> = (0..10_000)
        .map(|i| format!(r#"{{"CheckID":"c{i}","TTL":"30s"}}"#))
        .collect();
    let many = format!(
        r#"{{"Name":"web","ID":"web1","Checks":[{}]}}"#,
        checks.join(",")
    );
    refused("/v1/agent/service/register", &many, "at most");
    // An index from the future.
    let (code, text, _) = consul(
        &srv,
        "GET",
        &format!("/v1/health/service/web?index={}", start + 1_000_000),
        "",
    );
    assert_eq!(code, 400, "{text}");
    assert!(!text.is_empty());
    // Nothing of the above was registered, and the index did not move.
    let (_, services, index) = consul(&srv, "GET", "/v1/catalog/services", "");
    assert_eq!(
        json(&services)["web"],
        serde_json::Value::Null,
        "{services}"
    );
    assert_eq!(index, start, "a refused request wrote something");
    assert_eq!(consul(&srv, "GET", "/v1/agent/checks", "").1.trim(), "{}");

    // A check URL that accepts and never answers: critical after its timeout, and the API
    // keeps answering meanwhile.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/health", hang.local_addr().expect("addr"));
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for conn in hang.incoming().flatten() {
            keep.lock().expect("held").push(conn);
        }
    });
    let reg = format!(
        r#"{{"Name":"slow","ID":"slow1","Check":{{"HTTP":"{url}","Interval":"1s","Timeout":"1s"}}}}"#
    );
    assert_eq!(
        consul(&srv, "PUT", "/v1/agent/service/register", &reg).0,
        200
    );
    let t0 = Instant::now();
    wait_for("the hanging check to be recorded critical", 15, || {
        assert!(consul(&srv, "GET", "/v1/status/leader", "").0 == 200);
        let (_, body, _) = consul(&srv, "GET", "/v1/health/checks/slow", "");
        json(&body)[0]["Output"]
            .as_str()
            .is_some_and(|o| o.contains("timeout") || o.contains("timed out"))
    });
    let (_, body, _) = consul(&srv, "GET", "/v1/health/checks/slow", "");
    assert_eq!(json(&body)[0]["Status"], "critical", "{body}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(
        !held.lock().expect("held").is_empty(),
        "the check never connected"
    );
}

#[test]
fn concurrent_txns_lose_no_update() {
    use base64::Engine;
    let srv = Server::start();
    let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
    assert_eq!(consul(&srv, "PUT", "/v1/kv/counter", "0").0, 200);
    let addr = srv.http_addr.clone();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut done = 0;
                let mut conflicts = 0;
                while done < 25 {
                    let ((_, body), _) = http_request("GET", &addr, "/v1/kv/counter", "", &[]);
                    let kv = &json(&body)[0];
                    let index = kv["ModifyIndex"].as_i64().expect("index");
                    let value = base64::engine::general_purpose::STANDARD
                        .decode(kv["Value"].as_str().expect("value"))
                        .expect("base64");
                    let n: u64 = String::from_utf8_lossy(&value).parse().expect("number");
                    let ops = format!(
                        r#"[{{"KV":{{"Verb":"check-index","Key":"counter","Index":{index}}}}},
                            {{"KV":{{"Verb":"set","Key":"counter","Value":"{}"}}}}]"#,
                        b64(&(n + 1).to_string())
                    );
                    let ((code, text), _) = http_request("PUT", &addr, "/v1/txn", &ops, &[]);
                    match code {
                        200 => done += 1,
                        409 => {
                            assert!(text.contains("failed index check"), "{text}");
                            conflicts += 1;
                        }
                        _ => panic!("txn: {code} {text}"),
                    }
                }
                conflicts
            })
        })
        .collect();
    let conflicts: u64 = workers.into_iter().map(|w| w.join().expect("worker")).sum();
    let (_, body, _) = consul(&srv, "GET", "/v1/kv/counter?raw", "");
    assert_eq!(body, "100", "{conflicts} conflicts");
    println!("100 increments by 4 writers, {conflicts} conflicts refused");
}

#[test]
fn the_registry_writes_nothing_until_it_is_used() {
    let srv = Server::start();
    let revision = || {
        let ((code, body), _) = http_request(
            "POST",
            &srv.client_addr,
            "/v3/kv/range",
            r#"{"key":"Zm9v"}"#,
            &[],
        );
        assert_eq!(code, 200, "{body}");
        json(&body)["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse::<i64>().ok())
            .expect("revision")
    };
    // Used as an etcd server only: revisions count etcd writes alone, as in etcd.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(revision(), 1, "the registry wrote before it was used");
    // The first Consul request writes this member's node and presence, then is answered.
    let (code, body, _) = consul(&srv, "GET", "/v1/catalog/nodes", "");
    assert_eq!(code, 200);
    assert_eq!(json(&body).as_array().map(Vec::len), Some(1), "{body}");
    let (_, checks, _) = consul(&srv, "GET", "/v1/health/state/passing", "");
    assert!(checks.contains("serfHealth"), "{checks}");
    assert!(revision() > 1);
}

#[test]
fn https_checks_verify_the_target_with_the_system_roots_and_the_check_ca_file() {
    use crate::tls::{client, path, Pki};
    let pki = Pki::new("checks");
    let (cert, key) = pki.issue("target", "target", false);
    let ca = pki.ca_file();
    let port = crate::harness::free_port();
    let _target = Server::start_tls(
        &[
            "--cert-file",
            path(&cert),
            "--key-file",
            path(&key),
            "--listen-http-urls",
            &format!("https://127.0.0.1:{port}"),
        ],
        client(&ca, None),
    );
    let url = format!("https://127.0.0.1:{port}/health");
    let with_ca = Server::start_with(&["--check-ca-file", path(&ca)]);
    let without = Server::start();
    let register = |srv: &Server, id: &str, extra: &str| {
        let body = format!(
            r#"{{"Name":"{id}","ID":"{id}","Check":{{"HTTP":"{url}","Interval":"1s"{extra}}}}}"#
        );
        assert_eq!(
            consul(srv, "PUT", "/v1/agent/service/register", &body).0,
            200
        );
    };
    register(&with_ca, "verified", "");
    register(&with_ca, "wrongname", r#","TLSServerName":"other.example""#);
    register(
        &with_ca,
        "skipped",
        r#","TLSServerName":"other.example","TLSSkipVerify":true"#,
    );
    register(&without, "unknownca", "");
    let settled = |srv: &Server, id: &str| -> (String, String) {
        let mut last = (String::new(), String::new());
        wait_for(&format!("the first run of {id}'s check"), 15, || {
            let (_, body, _) = consul(srv, "GET", &format!("/v1/health/checks/{id}"), "");
            let c = &json(&body)[0];
            last = (
                c["Status"].as_str().unwrap_or("").to_string(),
                c["Output"].as_str().unwrap_or("").to_string(),
            );
            !last.1.is_empty()
        });
        last
    };
    let (status, output) = settled(&with_ca, "verified");
    assert_eq!(status, "passing", "{output}");
    let (status, output) = settled(&with_ca, "wrongname");
    assert_eq!(status, "critical", "{output}");
    assert!(output.contains("certificate"), "{output}");
    let (status, output) = settled(&with_ca, "skipped");
    assert_eq!(status, "passing", "{output}");
    let (status, output) = settled(&without, "unknownca");
    assert_eq!(status, "critical", "{output}");
    assert!(output.contains("UnknownIssuer"), "{output}");
}

#[test]
fn output_only_changes_are_written_at_most_every_check_update_interval() {
    // A target whose answer changes at every run, its status never.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let runs = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = runs.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 2048];
            let _ = conn.read(&mut buf);
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            let body = format!("run {n}");
            let _ = conn.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    let srv = Server::start_with(&["--check-update-interval", "2s"]);
    let reg = format!(
        r#"{{"Name":"chatty","ID":"chatty1","Check":{{"HTTP":"http://{addr}/","Interval":"1s"}}}}"#
    );
    assert_eq!(
        consul(&srv, "PUT", "/v1/agent/service/register", &reg).0,
        200
    );
    let mut outputs = BTreeSet::new();
    let mut indexes = BTreeSet::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(8) {
        let (_, body, _) = consul(&srv, "GET", "/v1/health/checks/chatty", "");
        let c = &json(&body)[0];
        if let Some(o) = c["Output"].as_str().filter(|o| !o.is_empty()) {
            outputs.insert(o.to_string());
            indexes.insert(c["ModifyIndex"].as_i64().expect("index"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let runs = runs.load(std::sync::atomic::Ordering::SeqCst);
    let (_, last, _) = consul(&srv, "GET", "/v1/health/checks/chatty", "");
    assert_eq!(json(&last)[0]["Status"], "passing", "{last}");
    assert!(
        outputs.len() >= 2,
        "the output was never refreshed: {outputs:?}"
    );
    assert!(
        (indexes.len() as u64) * 3 / 2 < runs,
        "{} writes for {runs} runs: output-only changes are not throttled",
        indexes.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_checks_and_watches_follow_the_members_leader() {
    use berth_proto::grpc_health::health_check_response::ServingStatus;
    use berth_proto::grpc_health::health_client::HealthClient;
    use berth_proto::grpc_health::HealthCheckRequest;
    let mut c = tokio::task::spawn_blocking(|| Cluster::start(3))
        .await
        .expect("cluster");
    // Watch a follower: it serves while it knows a leader.
    let leader = tokio::task::block_in_place(|| c.leader_by_metrics());
    let watched = (leader + 1) % 3;
    let mut client = HealthClient::connect(c.members[watched].endpoint())
        .await
        .expect("connect");
    let ask = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    // Serving once the follower knows the cluster's leader.
    let t0 = Instant::now();
    loop {
        let status = client.check(ask("")).await.expect("check").into_inner();
        if status.status == ServingStatus::Serving as i32 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "never SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let unknown = client
        .check(ask("nope"))
        .await
        .expect_err("unknown service");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let mut other = client.watch(ask("nope")).await.expect("watch").into_inner();
    let first = other.message().await.expect("stream").expect("item");
    assert_eq!(first.status, ServingStatus::ServiceUnknown as i32);
    // The stream reaches SERVING (an election still settling may show NOT_SERVING first).
    let mut watch = client.watch(ask("")).await.expect("watch").into_inner();
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("SERVING within 10 s")
            .expect("stream")
            .expect("item");
        if item.status == ServingStatus::Serving as i32 {
            break;
        }
    }
    // The other two members die: the watched member has no leader any more (or, if an
    // election still settling made it the leader, it has lost its quorum), and the stream
    // says so.
    let t0 = Instant::now();
    tokio::task::block_in_place(|| {
        for m in (0..3).filter(|m| *m != watched) {
            c.members[m].kill9();
        }
    });
    let next = tokio::time::timeout(Duration::from_secs(20), watch.message())
        .await
        .expect("a status change within 20 s")
        .expect("stream")
        .expect("item");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    println!("NOT_SERVING after {:?}", t0.elapsed());
}

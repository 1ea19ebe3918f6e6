//! A real deployment: Patroni (Debian's 3.0) runs two PostgreSQL instances on loopback with
//! a 3-member berth cluster as its `etcd3` DCS, through berth's JSON gateway. A leader is
//! elected and the replica streams; then the primary's Patroni and PostgreSQL are killed
//! (-9) and, at the same moment, berth's leader too: the replica is promoted and keeps
//! working. Again with berth's auth on (Patroni logs in as a user allowed only its prefix),
//! and with auth and mutual TLS (Patroni's `cacert`, `cert`, `key`).
//!
//! PostgreSQL refuses to run as root, so Patroni runs as the `postgres` user (tests run as
//! root, as CI does).

use std::io::{Read, Write};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{free_port, run, Cluster};

/// The newest installed PostgreSQL's binaries.
fn pg_bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| {
                let e = e.ok()?;
                let v: u32 = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                bin.join("postgres").exists().then_some((v, bin))
            })
            .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .map(|(_, b)| b)
        .expect("PostgreSQL is missing: install Debian's postgresql (.ci/run does)")
}

/// The `postgres` user's uid and gid.
fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres"))
                .then(|| (f[2].parse().expect("uid"), f[3].parse().expect("gid")))
        })
        .expect("no postgres user: install Debian's postgresql (.ci/run does)")
}

/// HTTP status of a GET to Patroni's REST API (0 when it does not answer).
fn rest_status(port: u16, path: &str) -> u16 {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return 0;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// One Patroni-managed PostgreSQL.
struct Node {
    name: String,
    api: u16,
    pg: u16,
    data: PathBuf,
    log: PathBuf,
    config: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// `credentials` holds the extra lines of Patroni's `etcd3` section (user, TLS files).
    fn new(dir: &Path, name: &str, hosts: &str, credentials: &str) -> Node {
        let (api, pg) = (free_port(), free_port());
        let data = dir.join(format!("{name}-data"));
        let config = dir.join(format!("{name}.yml"));
        let yaml = format!(
            "scope: berth-it\nnamespace: /service/\nname: {name}\n\
             restapi:\n  listen: 127.0.0.1:{api}\n  connect_address: 127.0.0.1:{api}\n\
             etcd3:\n  hosts: {hosts}\n{credentials}\
             bootstrap:\n  dcs:\n    ttl: 15\n    loop_wait: 2\n    retry_timeout: 5\n\
             \x20   maximum_lag_on_failover: 1048576\n    postgresql:\n      use_pg_rewind: false\n\
             \x20 initdb:\n  - encoding: UTF8\n\
             \x20 pg_hba:\n  - host replication replicator 127.0.0.1/32 trust\n\
             \x20 - host all all 127.0.0.1/32 trust\n\
             postgresql:\n  listen: 127.0.0.1:{pg}\n  connect_address: 127.0.0.1:{pg}\n\
             \x20 data_dir: {data}\n  bin_dir: {bin}\n  pgpass: {dir}/{name}.pgpass\n\
             \x20 authentication:\n    replication:\n      username: replicator\n      password: rep\n\
             \x20   superuser:\n      username: postgres\n      password: pg\n\
             \x20 parameters:\n    unix_socket_directories: {dir}\n",
            data = data.display(),
            bin = pg_bin_dir().display(),
            dir = dir.display(),
        );
        std::fs::write(&config, yaml).expect("write patroni config");
        Node {
            name: name.into(),
            api,
            pg,
            data,
            log: dir.join(format!("{name}.log")),
            config,
            child: None,
        }
    }

    fn start(&mut self) {
        let (uid, gid) = postgres_user();
        let log = std::fs::File::create(&self.log).expect("log file");
        let err = log.try_clone().expect("log file");
        let _ = std::os::unix::fs::chown(&self.log, Some(uid), Some(gid));
        let _ = std::os::unix::fs::chown(&self.config, Some(uid), Some(gid));
        let child = Command::new("/usr/bin/patroni")
            .arg(&self.config)
            .uid(uid)
            .gid(gid)
            .env("HOME", self.config.parent().expect("dir"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("patroni is missing: install Debian's patroni (.ci/run does)");
        self.child = Some(child);
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits until the REST API answers 200 on `path` (`/primary`, `/replica`).
    fn wait_for(&self, path: &str, within: Duration) -> Duration {
        let start = Instant::now();
        while rest_status(self.api, path) != 200 {
            assert!(
                start.elapsed() < within,
                "{} not {path} within {within:?}; its log:\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        start.elapsed()
    }

    fn psql(&self, sql: &str) -> (bool, String) {
        let (ok, out, err) = run(Command::new(pg_bin_dir().join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.pg.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-tAc", sql]));
        (ok, format!("{}{}", out.trim(), err.trim()))
    }

    /// kill -9 of Patroni and of its PostgreSQL postmaster.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(pid) = std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().map(str::to_string))
        {
            let _ = Command::new("kill")
                .args(["-9", &pid])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// How the scenario reaches berth: plain, with auth on, or with auth and mutual TLS.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    Auth,
    AuthTls,
}

/// The berth side of a scenario: the cluster and how etcdctl reaches it as root.
struct Berth {
    cluster: Cluster,
    /// etcdctl's flags for root: a password, or (TLS) root's client certificate.
    root: Vec<String>,
    _pki: Option<crate::tls::Pki>,
}

/// Root, and a `patroni` user allowed only Patroni's namespace, then auth on.
const GRANTS: &[&[&str]] = &[
    &["user", "add", "root:rootpw"],
    &["user", "grant-role", "root", "root"],
    &["user", "add", "patroni:ppw"],
    &["role", "add", "dcs"],
    &[
        "role",
        "grant-permission",
        "dcs",
        "--prefix",
        "readwrite",
        "/service/",
    ],
    &["user", "grant-role", "patroni", "dcs"],
    &["auth", "enable"],
];

impl Berth {
    /// Starts the cluster; returns it with the lines Patroni's `etcd3` section needs.
    fn start(mode: Mode) -> (Berth, String) {
        let (cluster, root, pki, etcd3) = match mode {
            Mode::Plain => (Cluster::start(3), Vec::new(), None, String::new()),
            Mode::Auth => (
                Cluster::start(3),
                vec!["--user".to_string(), "root:rootpw".to_string()],
                None,
                "  username: patroni\n  password: ppw\n".to_string(),
            ),
            Mode::AuthTls => {
                use crate::tls::{client, path, Pki};
                let pki = Pki::new("ca");
                let (scert, skey) = pki.issue("berth", "berth", false);
                let (rcert, rkey) = pki.issue("root", "root", false);
                let (pcert, pkey) = pki.issue("patroni", "patroni", false);
                let ca = pki.ca_file();
                let cluster = Cluster::start_tls(
                    3,
                    &[
                        "--cert-file",
                        path(&scert),
                        "--key-file",
                        path(&skey),
                        "--trusted-ca-file",
                        path(&ca),
                        "--client-cert-auth",
                    ],
                    client(&ca, Some((&rcert, &rkey))),
                );
                // Patroni reads its files as the postgres user.
                let (uid, gid) = postgres_user();
                for f in [ca.parent().expect("pki dir"), &ca, &pcert, &pkey] {
                    std::os::unix::fs::chown(f, Some(uid), Some(gid)).expect("chown");
                }
                let root = [
                    "--cacert",
                    path(&ca),
                    "--cert",
                    path(&rcert),
                    "--key",
                    path(&rkey),
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                let etcd3 = format!(
                    "  username: patroni\n  password: ppw\n  protocol: https\n  cacert: {}\n  cert: {}\n  key: {}\n",
                    ca.display(),
                    pcert.display(),
                    pkey.display()
                );
                (cluster, root, Some(pki), etcd3)
            }
        };
        let berth = Berth {
            cluster,
            root,
            _pki: pki,
        };
        if mode != Mode::Plain {
            for args in GRANTS {
                // Before auth is on, root needs no password (and has none yet).
                let tls: Vec<&str> = berth
                    .root
                    .iter()
                    .map(String::as_str)
                    .filter(|_| mode == Mode::AuthTls)
                    .collect();
                let (ok, out, err) =
                    crate::tls::etcdctl(&berth.cluster.members[0].endpoint(), &tls, args);
                assert!(ok, "{args:?}: {out}{err}");
            }
        }
        (berth, etcd3)
    }

    /// The value of `key`, read as root through member `i`.
    fn get(&self, i: usize, key: &str) -> String {
        let root: Vec<&str> = self.root.iter().map(String::as_str).collect();
        let (ok, out, err) = crate::tls::etcdctl(
            &self.cluster.members[i].endpoint(),
            &root,
            &["get", key, "--print-value-only"],
        );
        assert!(ok, "get {key}: {out}{err}");
        out.trim().to_string()
    }
}

/// Runs the scenario with berth reached as `mode` says.
fn failover_scenario(mode: Mode) {
    let (mut berth, etcd3) = Berth::start(mode);
    let hosts = berth.cluster.endpoints().join(",");
    let dir = tempfile::tempdir().expect("tempdir");
    let (uid, gid) = postgres_user();
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
    let mut pg1 = Node::new(dir.path(), "pg1", &hosts, &etcd3);
    let mut pg2 = Node::new(dir.path(), "pg2", &hosts, &etcd3);
    pg1.start();
    let t = pg1.wait_for("/primary", Duration::from_secs(90));
    eprintln!("pg1 bootstrapped and leads after {t:?}");
    pg2.start();
    let t = pg2.wait_for("/replica", Duration::from_secs(90));
    eprintln!("pg2 streams after {t:?}");

    let (ok, out) = pg1.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (42)");
    assert!(ok, "write on the primary: {out}");
    let start = Instant::now();
    loop {
        let (ok, out) = pg2.psql("SELECT x FROM t");
        if ok && out == "42" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "replica never saw the row: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        berth.get(0, "/service/berth-it/leader"),
        "pg1",
        "Patroni's leader key is in berth"
    );

    // The primary dies, and berth's leader with it.
    let berth_leader = berth.cluster.leader_by_metrics();
    let t0 = Instant::now();
    pg1.kill9();
    berth.cluster.members[berth_leader].kill9();
    pg2.wait_for("/primary", Duration::from_secs(120));
    eprintln!(
        "FAILOVER ({mode:?}): replica promoted {:.1} s after kill -9 of the primary and of berth's leader",
        t0.elapsed().as_secs_f64()
    );
    // Patroni reports the role as soon as it asked for promotion; PostgreSQL leaves recovery
    // a moment later.
    let start = Instant::now();
    loop {
        let (ok, out) = pg2.psql("INSERT INTO t VALUES (43); SELECT count(*) FROM t");
        if ok && out.ends_with('2') {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the new primary takes writes: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // It stays primary: Patroni keeps its leader key alive through the surviving members.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(rest_status(pg2.api, "/primary"), 200, "{}", pg2.log_tail());
    assert_eq!(
        berth.get((berth_leader + 1) % 3, "/service/berth-it/leader"),
        "pg2"
    );
}

#[test]
fn patroni_fails_over_on_berth() {
    failover_scenario(Mode::Plain);
}

#[test]
fn patroni_fails_over_on_berth_with_auth() {
    failover_scenario(Mode::Auth);
}

#[test]
fn patroni_fails_over_on_berth_with_auth_and_mutual_tls() {
    failover_scenario(Mode::AuthTls);
}

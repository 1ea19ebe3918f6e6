//! A real deployment: Patroni (Debian's 3.0) runs two PostgreSQL instances on loopback with
//! a 3-member berth cluster as its `etcd3` DCS, through berth's JSON gateway. A leader is
//! elected and the replica streams; then the primary's Patroni and PostgreSQL are killed
//! (-9) and, at the same moment, berth's leader too: the replica is promoted and keeps
//! working. Once with berth's auth on (Patroni logs in as a user allowed only its prefix).
//!
//! PostgreSQL refuses to run as root, so Patroni runs as the `postgres` user (tests run as
//! root, as CI does).

use std::io::{Read, Write};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, Permission, PermissionType};

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
    fn new(dir: &Path, name: &str, hosts: &str, auth: Option<(&str, &str)>) -> Node {
        let (api, pg) = (free_port(), free_port());
        let data = dir.join(format!("{name}-data"));
        let config = dir.join(format!("{name}.yml"));
        let credentials = auth
            .map(|(u, p)| format!("  username: {u}\n  password: {p}\n"))
            .unwrap_or_default();
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

/// Runs the scenario; `auth` is (user, password) for Patroni, with auth on in berth.
async fn failover_scenario(auth: bool) {
    let mut cluster = Cluster::start(3);
    let eps = cluster.endpoints();
    let hosts = eps.join(",");
    if auth {
        let mut c = Client::connect([eps[0].clone()], None)
            .await
            .expect("connect");
        c.user_add("root", "rootpw", None).await.expect("root");
        c.user_grant_role("root", "root").await.expect("root role");
        c.user_add("patroni", "ppw", None).await.expect("user");
        c.role_add("dcs").await.expect("role");
        c.role_grant_permission(
            "dcs",
            Permission::new(PermissionType::Readwrite, "/service/").with_prefix(),
        )
        .await
        .expect("grant");
        c.user_grant_role("patroni", "dcs")
            .await
            .expect("grant role");
        c.auth_enable().await.expect("enable");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (uid, gid) = postgres_user();
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
    let creds = auth.then_some(("patroni", "ppw"));
    let mut pg1 = Node::new(dir.path(), "pg1", &hosts, creds);
    let mut pg2 = Node::new(dir.path(), "pg2", &hosts, creds);
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

    let opts = auth.then(|| ConnectOptions::new().with_user("root", "rootpw"));
    let mut c = Client::connect([eps[0].clone()], opts.clone())
        .await
        .expect("connect");
    let leader = c.get("/service/berth-it/leader", None).await.expect("get");
    assert_eq!(
        leader.kvs()[0].value(),
        b"pg1",
        "Patroni's leader key is in berth"
    );

    // The primary dies, and berth's leader with it.
    let berth_leader = cluster.leader().await;
    let t0 = Instant::now();
    pg1.kill9();
    cluster.members[berth_leader].kill9();
    let failover = pg2.wait_for("/primary", Duration::from_secs(120));
    eprintln!(
        "FAILOVER (auth {auth}): replica promoted {:.1} s after kill -9 of the primary and of berth's leader",
        t0.elapsed().as_secs_f64()
    );
    assert!(failover < Duration::from_secs(120));
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
    let survivor = eps[(berth_leader + 1) % 3].clone();
    let mut c = Client::connect([survivor], opts).await.expect("connect");
    let leader = c.get("/service/berth-it/leader", None).await.expect("get");
    assert_eq!(leader.kvs()[0].value(), b"pg2");
}

#[tokio::test(flavor = "multi_thread")]
async fn patroni_fails_over_on_berth() {
    failover_scenario(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn patroni_fails_over_on_berth_with_auth() {
    failover_scenario(true).await;
}

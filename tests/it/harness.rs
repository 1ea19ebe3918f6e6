//! Spawns `berth server` processes on free 127.0.0.1 ports, waits until they answer, and
//! kills (SIGKILL) or restarts them for fault tests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of the binary under test.
pub fn berth_bin() -> &'static str {
    env!("CARGO_BIN_EXE_berth")
}

/// A free TCP port on 127.0.0.1 for a server to take. Chosen below the kernel's ephemeral
/// range (32768+), so outgoing client connections of other tests cannot grab it between our
/// check and the server's bind; spread by process ID so parallel test processes differ.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id().wrapping_mul(7919);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 12_000 + (base.wrapping_add(n.wrapping_mul(104_729)) % 20_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The harness's own flag (never passed to berth): serve Nacos's API (on `nacos_addr`) and
/// its gRPC protocol (that port + 1000). Servers without it run with Nacos off, so the two
/// extra ports are taken only by the tests that speak Nacos.
pub const WITH_NACOS: &str = "--with-nacos";

/// The harness's own flag (never passed to berth): serve the gateway's data plane (on
/// `gateway_addr`). Servers without it run with no gateway listener, so the port is taken
/// only by the tests that use it (a restarted server's ports are free for others to take
/// meanwhile: fewer ports, fewer such races).
pub const WITH_GATEWAY: &str = "--with-gateway";

/// A free port for a Nacos listener: its gRPC port (this one + 1000, as Nacos) is free too.
pub fn nacos_port() -> u16 {
    loop {
        let port = free_port();
        if port < 31_000 && TcpListener::bind(("127.0.0.1", port + 1000)).is_ok() {
            return port;
        }
    }
}

/// True when the etcd API at `addr` answers a Status call. Runs on its own thread and
/// runtime so it works from sync tests and from inside async tests alike.
fn answers(addr: &str) -> bool {
    let addr = addr.to_string();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return false;
        };
        rt.block_on(async move {
            let Ok(mut c) = etcd_client::Client::connect([addr], None).await else {
                return false;
            };
            c.status().await.is_ok()
        })
    })
    .join()
    .unwrap_or(false)
}

/// True when the etcd API at `addr` answers a Status call over TLS with `tls` (a client's
/// settings): readiness of servers whose client URL is `https://`.
fn answers_tls(addr: &str, tls: &berth_net::tls::TlsSettings) -> bool {
    let Ok(config) = tls.client_config("test client") else {
        return false;
    };
    let connector = berth_net::tls::Connector::new(Some(std::sync::Arc::new(config)));
    let uri = format!("https://{addr}");
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return false;
        };
        rt.block_on(async move {
            let Ok(endpoint) = tonic::transport::Endpoint::from_shared(uri) else {
                return false;
            };
            let Ok(channel) = endpoint
                .connect_timeout(Duration::from_secs(1))
                .connect_with_connector(connector)
                .await
            else {
                return false;
            };
            let mut c =
                berth_proto::etcdserverpb::maintenance_client::MaintenanceClient::new(channel);
            c.status(berth_proto::etcdserverpb::StatusRequest {})
                .await
                .is_ok()
        })
    })
    .join()
    .unwrap_or(false)
}

/// One running berth server.
pub struct Server {
    child: Option<Child>,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    /// `127.0.0.1:port` of the etcd API.
    pub client_addr: String,
    /// `127.0.0.1:port` of the HTTP listener.
    pub http_addr: String,
    /// `127.0.0.1:port` of the DNS listener (UDP and TCP).
    pub dns_addr: String,
    /// Nacos API address (`host:port`).
    pub nacos_addr: String,
    /// NATS address (`host:port`).
    pub nats_addr: String,
    /// The gateway's data plane (`host:port`).
    pub gateway_addr: String,
    peer_url: String,
    extra: Vec<String>,
    /// Network namespace to run in (`ip netns exec`), for partition tests.
    netns: Option<String>,
    /// The client URL is `https://`; how the harness reaches it (CA, client certificate).
    tls: Option<berth_net::tls::TlsSettings>,
}

impl Server {
    /// A server on loopback with fresh ports, not started yet.
    fn on_loopback(dir: PathBuf, peer_url: String, extra: Vec<String>) -> Server {
        Server {
            child: None,
            dir,
            _tmp: None,
            client_addr: format!("127.0.0.1:{}", free_port()),
            http_addr: format!("127.0.0.1:{}", free_port()),
            dns_addr: format!("127.0.0.1:{}", free_port()),
            nats_addr: format!("127.0.0.1:{}", free_port()),
            gateway_addr: if extra.iter().any(|a| a == WITH_GATEWAY) {
                format!("127.0.0.1:{}", free_port())
            } else {
                String::new()
            },
            nacos_addr: if extra.iter().any(|a| a == WITH_NACOS) {
                format!("127.0.0.1:{}", nacos_port())
            } else {
                String::new()
            },
            peer_url,
            extra,
            netns: None,
            tls: None,
        }
    }

    /// Starts a server on a fresh data directory.
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    /// Starts a server with extra flags.
    pub fn start_with(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut s = Self::on_loopback(
            tmp.path().join("data"),
            format!("http://127.0.0.1:{}", free_port()),
            extra.iter().map(|s| s.to_string()).collect(),
        );
        s._tmp = Some(tmp);
        s.spawn();
        s
    }

    /// Starts a server whose client URL is `https://` (the flags give its certificate) and
    /// waits until it answers over TLS with `client` (the harness's CA and certificate).
    pub fn start_tls(extra: &[&str], client: berth_net::tls::TlsSettings) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut s = Self::on_loopback(
            tmp.path().join("data"),
            format!("http://127.0.0.1:{}", free_port()),
            extra.iter().map(|s| s.to_string()).collect(),
        );
        s._tmp = Some(tmp);
        s.tls = Some(client);
        s.spawn();
        s
    }

    /// Starts a server on an existing data directory (kept by the caller).
    pub fn start_in(dir: &Path) -> Server {
        let mut s = Self::on_loopback(
            dir.to_path_buf(),
            format!("http://127.0.0.1:{}", free_port()),
            Vec::new(),
        );
        s.spawn();
        s
    }

    /// The server's process ID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal to the server process (e.g. `STOP`/`CONT` to freeze it, which cuts it
    /// off from its peers like a partition).
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status();
        }
    }

    /// The peer URL this member advertises.
    pub fn peer_url(&self) -> &str {
        &self.peer_url
    }

    /// `http://` (`https://` for a TLS server) URL of the etcd API, as etcdctl takes it.
    pub fn endpoint(&self) -> String {
        match self.tls {
            Some(_) => format!("https://{}", self.client_addr),
            None => format!("http://{}", self.client_addr),
        }
    }

    fn spawn(&mut self) {
        self.spawn_no_wait();
        self.wait_ready();
    }

    fn spawn_no_wait(&mut self) {
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn berth server");
        self.child = Some(child);
    }

    /// Starts the server and waits up to `within` for it to exit, as a start that must fail
    /// does; returns its exit status (`None`: still running, then killed) and what it logged.
    pub fn start_expecting_exit(
        &self,
        within: Duration,
    ) -> (Option<std::process::ExitStatus>, String) {
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn berth server");
        let deadline = Instant::now() + within;
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        (status, err)
    }

    /// Whether the process has exited; its status if so.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// Uses another data directory from the next start on.
    pub fn set_data_dir(&mut self, dir: &Path) {
        self.dir = dir.to_path_buf();
    }

    /// A member `name` of the cluster `initial` (`name=peer,...`) with data in `dir`,
    /// advertising `peer_url`, not started yet.
    pub fn member(dir: &Path, name: &str, peer_url: &str, initial: &str, flags: &[&str]) -> Server {
        Self::on_loopback(
            dir.to_path_buf(),
            peer_url.to_string(),
            member_flags(name, initial, flags),
        )
    }

    /// Starts a server prepared by [`Server::member`] and waits until it answers.
    pub fn launch(&mut self) {
        self.spawn();
    }

    /// `flag value`, unless the test's own flags give `flag`.
    fn unless_given(&self, flag: &str, value: String) -> Vec<String> {
        if self.extra.iter().any(|a| a == flag) {
            Vec::new()
        } else {
            vec![flag.to_string(), value]
        }
    }

    /// The `berth server` command for this server.
    fn command(&self) -> Command {
        let peer = self.peer_url.clone();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(berth_bin());
                c
            }
            None => Command::new(berth_bin()),
        };
        cmd.arg("server")
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--listen-client-urls")
            .arg(self.endpoint())
            .arg("--listen-peer-urls")
            .arg(&peer)
            // A test that gives its own listener flag (e.g. an https:// URL) keeps it; the
            // others get this server's own ports, never a default one that servers of
            // parallel tests would share.
            .args(self.unless_given("--listen-http-urls", format!("http://{}", self.http_addr)))
            .args(self.unless_given("--listen-dns-addr", self.dns_addr.clone()))
            .args(self.unless_given(
                "--listen-nacos-urls",
                if self.nacos_addr.is_empty() {
                    String::new()
                } else {
                    format!("http://{}", self.nacos_addr)
                },
            ))
            .args(self.unless_given("--listen-nats-urls", format!("nats://{}", self.nats_addr)))
            .args(self.unless_given(
                "--listen-gateway-urls",
                if self.gateway_addr.is_empty() {
                    String::new()
                } else {
                    format!("http://{}", self.gateway_addr)
                },
            ))
            .args(self.unless_given(
                "--log-level",
                std::env::var("BERTH_TEST_LOG_LEVEL").unwrap_or_else(|_| "error".into()),
            ))
            .args(
                self.extra
                    .iter()
                    .filter(|a| *a != WITH_NACOS && *a != WITH_GATEWAY),
            );
        cmd
    }

    /// Waits until the etcd API answers a request.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("berth exited during startup: {status}");
                }
            }
            let ready = match &self.tls {
                Some(tls) => answers_tls(&self.client_addr, tls),
                None => answers(&self.client_addr),
            };
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "berth did not become ready in 30s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Connects the `etcd-client` crate to this server.
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.client_addr.clone()], None)
            .await
            .expect("connect etcd-client")
    }

    /// SIGKILLs the server: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server with SIGTERM; returns how long it took to exit, or `None` if it
    /// had to be killed after 10 s.
    pub fn stop(&mut self) -> Option<Duration> {
        let mut c = self.child.take()?;
        let started = Instant::now();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = c.try_wait() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Starts the server again on the same data directory and ports.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Starts the server again after [`Server::stop`] or [`Server::kill9`].
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// [`Server::start_again`] without waiting (members of a cluster need each other to
    /// answer): call [`Server::wait_ready`] after starting them all.
    pub fn start_again_no_wait(&mut self) {
        self.spawn_no_wait();
    }

    /// GETs a path from the HTTP listener; returns (status code, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        let (code, _, body) = self.http_get_with_head(path);
        (code, body)
    }

    /// A GET on the HTTP listener: status code, head (status line and headers) and body.
    pub fn http_get_with_head(&self, path: &str) -> (u16, String, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.http_addr).expect("connect http");
        write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.http_addr)
            .expect("write request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read response");
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status code");
        (code, head.to_string(), body.to_string())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The gRPC status inside an etcd-client error.
pub fn status_of(e: etcd_client::Error) -> tonic::Status {
    match e {
        etcd_client::Error::GRpcStatus(s) => s,
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

/// The Python interpreter named by `env` (default `python3`), checked to import `module`;
/// `install` says how to get it (`.ci/run` installs every client into a virtualenv).
pub fn python_with(env: &str, module: &str, install: &str) -> String {
    let py = std::env::var(env).unwrap_or_else(|_| "python3".into());
    let (has, _, _) = run(Command::new(&py).args(["-c", &format!("import {module}")]));
    assert!(
        has,
        "{py} cannot import {module}: run .ci/run, or `{install}` and set {env}"
    );
    py
}

/// Runs a command and returns (exit success, stdout, stderr).
/// etcdctl (v3 API) pointed at `endpoint`.
pub fn etcdctl(endpoint: &str) -> Command {
    let mut c = Command::new("/usr/bin/etcdctl");
    c.env("ETCDCTL_API", "3").args(["--endpoints", endpoint]);
    c
}

pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("run command");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A real etcd 3.4 (Debian's etcd-server) on free loopback ports, for side-by-side checks.
pub struct Etcd {
    child: Child,
    _tmp: Option<tempfile::TempDir>,
    /// `127.0.0.1:port` of its client API.
    pub client_addr: String,
}

impl Etcd {
    /// Starts etcd and waits until it answers.
    pub fn start() -> Etcd {
        let tmp = tempfile::tempdir().expect("tempdir");
        let peer = format!("http://127.0.0.1:{}", free_port());
        let dir = tmp.path().join("etcd");
        Etcd::start_in(&dir, "default", &peer, Some(tmp))
    }

    /// Starts etcd as member `name` (peer URL `peer`, a cluster of one) on the data directory
    /// `dir`, e.g. one `etcdctl snapshot restore` wrote, and waits until it answers.
    pub fn start_in(dir: &Path, name: &str, peer: &str, tmp: Option<tempfile::TempDir>) -> Etcd {
        let bin = "/usr/bin/etcd";
        assert!(
            Path::new(bin).exists(),
            "etcd is missing: install Debian's etcd-server (.ci/run does)"
        );
        let client_addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(bin)
            .arg("--data-dir")
            .arg(dir)
            .args(["--name", name])
            .args(["--listen-client-urls", &format!("http://{client_addr}")])
            .args(["--advertise-client-urls", &format!("http://{client_addr}")])
            .args(["--listen-peer-urls", peer])
            .args(["--initial-advertise-peer-urls", peer])
            .args(["--initial-cluster", &format!("{name}={peer}")])
            .args(["--log-level", "error"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !answers(&client_addr) {
            assert!(Instant::now() < deadline, "etcd did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        Etcd {
            child,
            _tmp: tmp,
            client_addr,
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The flags that make a server member `name` of the cluster `initial` (`name=peer,...`).
fn member_flags(name: &str, initial: &str, flags: &[&str]) -> Vec<String> {
    let mut out = vec![
        "--name".to_string(),
        name.to_string(),
        "--initial-cluster".to_string(),
        initial.to_string(),
    ];
    out.extend(flags.iter().map(|f| f.to_string()));
    out
}

/// Starts every member before waiting for any: none can elect a leader alone.
fn start_together(members: &mut [Server]) {
    for m in members.iter_mut() {
        m.spawn_no_wait();
    }
    for m in members.iter_mut() {
        m.wait_ready();
    }
}

/// A cluster of berth members on loopback, bootstrapped like etcd with `--initial-cluster`.
pub struct Cluster {
    /// The members, in `--initial-cluster` order.
    pub members: Vec<Server>,
    _tmp: tempfile::TempDir,
    initial: String,
}

impl Cluster {
    /// Starts `n` members and waits until each answers.
    pub fn start(n: usize) -> Cluster {
        Self::start_with(n, &[])
    }

    /// Starts `n` members with extra flags for each.
    pub fn start_with(n: usize, flags: &[&str]) -> Cluster {
        Self::start_inner(n, flags, None)
    }

    /// Starts `n` members whose client URLs are `https://` (the flags give the certificate);
    /// `client` is how the harness reaches them.
    pub fn start_tls(n: usize, flags: &[&str], client: berth_net::tls::TlsSettings) -> Cluster {
        Self::start_inner(n, flags, Some(client))
    }

    fn start_inner(
        n: usize,
        flags: &[&str],
        client: Option<berth_net::tls::TlsSettings>,
    ) -> Cluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let peers: Vec<String> = (0..n)
            .map(|_| format!("http://127.0.0.1:{}", free_port()))
            .collect();
        let initial: Vec<String> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{i}={p}"))
            .collect();
        let initial = initial.join(",");
        let mut members: Vec<Server> = (0..n)
            .map(|i| {
                let mut m = Server::on_loopback(
                    tmp.path().join(format!("m{i}")),
                    peers[i].clone(),
                    member_flags(&format!("m{i}"), &initial, flags),
                );
                m.tls = client.clone();
                m
            })
            .collect();
        start_together(&mut members);
        Cluster {
            members,
            _tmp: tmp,
            initial,
        }
    }

    /// A new member, not started, that will join with `--initial-cluster-state existing`
    /// once an existing member has added its peer URL (see [`Server::peer_url`]).
    pub fn prepare_member(&self, name: &str, flags: &[&str]) -> Server {
        let peer_url = format!("http://127.0.0.1:{}", free_port());
        let initial = format!("{},{name}={peer_url}", self.initial);
        let flags = [flags, &["--initial-cluster-state", "existing"]].concat();
        Server::on_loopback(
            self._tmp.path().join(name),
            peer_url,
            member_flags(name, &initial, &flags),
        )
    }

    /// Client addresses of all members.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_addr.clone()).collect()
    }

    /// Index of the member that currently leads by its `/metrics` and Consul's
    /// `/v1/status/leader` (works whatever its client URL's transport), waiting up to 15 s
    /// for one. A leader counts once it is [`settled`].
    pub fn leader_by_metrics(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = None;
        loop {
            let views: Vec<Option<(bool, String)>> = self
                .members
                .iter()
                .map(|m| {
                    m.child.as_ref()?;
                    let leads = m
                        .http_get("/metrics")
                        .1
                        .lines()
                        .any(|l| l.trim() == "berth_raft_is_leader 1");
                    let (status, body) = m.http_get("/v1/status/leader");
                    (status == 200).then(|| (leads, body.trim().trim_matches('"').to_string()))
                })
                .collect();
            let claims: Vec<(usize, String)> = views
                .iter()
                .enumerate()
                .filter_map(|(i, v)| {
                    let (leads, _) = v.as_ref()?;
                    let me = self.members[i].peer_url.trim_start_matches("http://");
                    leads.then(|| (i, me.trim_end_matches('/').to_string()))
                })
                .collect();
            let named: Vec<Option<String>> = views
                .into_iter()
                .map(|v| v.map(|(_, leader)| leader))
                .collect();
            let now = settled(self.members.len(), &claims, &named);
            if now.is_some() && now == last {
                return now.unwrap_or_default();
            }
            last = now;
            assert!(Instant::now() < deadline, "no leader within 15s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Index of the member that currently leads, waiting up to 15 s for one. A leader counts
    /// once it is [`settled`].
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = None;
        loop {
            let mut claims = Vec::new();
            let mut named = Vec::new();
            for (i, m) in self.members.iter().enumerate() {
                let mut view = None;
                if m.child.is_some() {
                    if let Ok(mut c) =
                        etcd_client::Client::connect([m.client_addr.clone()], Some(bounded())).await
                    {
                        if let Ok(st) = c.status().await {
                            let me = st.header().map(|h| h.member_id()).unwrap_or(0);
                            if st.leader() != 0 && st.leader() == me {
                                claims.push((i, me.to_string()));
                            }
                            view = Some(st.leader().to_string());
                        }
                    }
                }
                named.push(view);
            }
            let now = settled(self.members.len(), &claims, &named);
            if now.is_some() && now == last {
                return now.unwrap_or_default();
            }
            last = now;
            assert!(Instant::now() < deadline, "no leader within 15s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The member whose claim to lead a majority of the cluster's `n` members confirm, each
/// naming it as their leader. A member's own word is not enough: openraft may elect two
/// leaders in one term while a cluster starts (a higher member ID wins over a lower one),
/// and the superseded one names itself until it hears from the other; a test that killed
/// it would kill a follower. `claims` holds (index, how the others name it); `named`, what
/// each member names as leader (`None`: it did not answer). The callers also want the same
/// answer twice in a row.
fn settled(n: usize, claims: &[(usize, String)], named: &[Option<String>]) -> Option<usize> {
    claims.iter().find_map(|(i, me)| {
        let agree = named
            .iter()
            .filter(|v| v.as_deref() == Some(me.as_str()))
            .count();
        (agree > n / 2).then_some(*i)
    })
}

/// Client options with short connect and request timeouts, for members that may be frozen.
pub fn bounded() -> etcd_client::ConnectOptions {
    etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(3))
}

/// Client options for a healthy cluster on a loaded machine: a request may wait out an fsync
/// stall of several seconds (CI runs other tests beside this one) but not hang a test forever.
pub fn patient() -> etcd_client::ConnectOptions {
    etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(30))
}

/// Test hosts in network namespaces the test creates: each member gets a namespace with a
/// client link and a peer link, on two bridges in the root namespace. Cutting a member's peer
/// link partitions it from the others while the test can still talk to it.
pub struct NetCluster {
    /// The members; member `i` has client IP `10.<a>.<b>.(i+1)`.
    pub members: Vec<Server>,
    prefix: String,
    n: usize,
    _tmp: tempfile::TempDir,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {} (network namespaces need root and iproute2)",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetCluster {
    /// Creates the namespaces and links and starts `n` members in them.
    pub fn start(n: usize) -> NetCluster {
        Self::start_with(n, &[])
    }

    /// [`NetCluster::start`] with extra server flags for every member.
    pub fn start_with(n: usize, flags: &[&str]) -> NetCluster {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Interface names must fit in 15 bytes.
        let prefix = format!("b{}{}", pid % 100_000, seq);
        let a = 100 + (pid % 100) as u8;
        let b = (seq % 100) as u8 + 1;
        let client_net = |i: usize| format!("10.{a}.{b}.{}", i + 1);
        let peer_net = |i: usize| format!("10.{a}.{}.{}", b as u16 + 100, i + 1);
        for (br, gw) in [
            ("c", format!("10.{a}.{b}.254/24")),
            ("p", format!("10.{a}.{}.254/24", b as u16 + 100)),
        ] {
            let name = format!("{prefix}{br}");
            ip(&["link", "add", &name, "type", "bridge"]);
            ip(&["link", "set", &name, "up"]);
            // The root namespace needs an address only on the client bridge.
            if br == "c" {
                ip(&["addr", "add", &gw, "dev", &name]);
            }
        }
        for i in 0..n {
            let ns = format!("{prefix}n{i}");
            ip(&["netns", "add", &ns]);
            ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
            for (kind, addr) in [("c", client_net(i)), ("p", peer_net(i))] {
                let inner = format!("{prefix}{kind}{i}");
                let outer = format!("{prefix}{kind}{i}h");
                ip(&[
                    "link", "add", &inner, "type", "veth", "peer", "name", &outer,
                ]);
                ip(&["link", "set", &inner, "netns", &ns]);
                ip(&[
                    "netns",
                    "exec",
                    &ns,
                    "ip",
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    &inner,
                ]);
                ip(&["netns", "exec", &ns, "ip", "link", "set", &inner, "up"]);
                ip(&["link", "set", &outer, "master", &format!("{prefix}{kind}")]);
                ip(&["link", "set", &outer, "up"]);
            }
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let initial: Vec<String> = (0..n)
            .map(|i| format!("m{i}=http://{}:2380", peer_net(i)))
            .collect();
        let initial = initial.join(",");
        let mut members: Vec<Server> = (0..n)
            .map(|i| Server {
                child: None,
                dir: tmp.path().join(format!("m{i}")),
                _tmp: None,
                client_addr: format!("{}:2379", client_net(i)),
                http_addr: format!("{}:8500", client_net(i)),
                dns_addr: format!("{}:8600", client_net(i)),
                nats_addr: format!("{}:4222", client_net(i)),
                gateway_addr: format!("{}:8080", client_net(i)),
                nacos_addr: format!("{}:8848", client_net(i)),
                peer_url: format!("http://{}:2380", peer_net(i)),
                netns: Some(format!("{prefix}n{i}")),
                tls: None,
                extra: member_flags(&format!("m{i}"), &initial, flags),
            })
            .collect();
        start_together(&mut members);
        NetCluster {
            members,
            prefix,
            n,
            _tmp: tmp,
        }
    }

    /// The root namespace's address on the client bridge: what members reach the test's
    /// own servers at.
    pub fn host_ip(&self) -> String {
        let host = self.members[0]
            .client_addr
            .rsplit_once(':')
            .map_or("", |(h, _)| h);
        let mut parts: Vec<&str> = host.split('.').collect();
        parts.pop();
        format!("{}.254", parts.join("."))
    }

    /// Cuts (`false`) or restores (`true`) member `i`'s peer link.
    pub fn peer_link(&self, i: usize, up: bool) {
        let outer = format!("{}p{i}h", self.prefix);
        ip(&["link", "set", &outer, if up { "up" } else { "down" }]);
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill9();
        }
        for i in 0..self.n {
            // Namespace teardown is asynchronous in the kernel: drop the host-side links too.
            for kind in ["c", "p"] {
                let _ = Command::new("ip")
                    .args(["link", "del", &format!("{}{kind}{i}h", self.prefix)])
                    .status();
            }
            let _ = Command::new("ip")
                .args(["netns", "del", &format!("{}n{i}", self.prefix)])
                .status();
        }
        for br in ["c", "p"] {
            let _ = Command::new("ip")
                .args(["link", "del", &format!("{}{br}", self.prefix)])
                .status();
        }
    }
}

/// POSTs `body` to `path` at `addr` over HTTP/1.1 (connection closed after), with extra
/// headers; returns (status code, body), de-chunked.
pub fn http_post(addr: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String) {
    http_request("POST", addr, path, body, headers).0
}

/// Sends one HTTP/1.1 request (connection closed after); returns (status code, body)
/// de-chunked, and the response headers (names lower-cased).
pub fn http_request(
    method: &str,
    addr: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> ((u16, String), Vec<(String, String)>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("write request");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read response");
    let out = String::from_utf8_lossy(&out).into_owned();
    let (head, rest) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        let mut body = String::new();
        let mut rest = rest;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            body.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        body
    } else {
        rest.to_string()
    };
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    ((code, body), headers)
}

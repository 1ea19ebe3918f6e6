//! TLS and mutual TLS on every listener, as etcd's flags set them: the real `etcdctl` over
//! https with and without client certificates, certificates it must refuse (wrong CA,
//! expired, none), plain text to a TLS port and TLS to a plain one, start-up errors that name
//! the file, certificate and trusted CA rotation without a restart, and a three-member cluster
//! whose peers
//! speak TLS and check each other's certificates. Test CAs and certificates are made with
//! rcgen in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_net::tls::TlsSettings;

use crate::harness::{berth_bin, free_port, run, Server};

/// A test CA that issues certificates for 127.0.0.1 into a temporary directory.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
    name: String,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    pub(crate) fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&ca_key).expect("CA");
        std::fs::write(dir.path().join(format!("{name}-ca.pem")), ca.pem()).expect("write CA");
        Pki {
            dir,
            name: name.to_string(),
            ca,
            ca_key,
        }
    }

    pub(crate) fn ca_file(&self) -> PathBuf {
        self.dir.path().join(format!("{}-ca.pem", self.name))
    }

    /// Issues a certificate for server and client use on 127.0.0.1 with subject `cn`;
    /// `expired` makes one that expired in 2001. Returns (certificate, key) files.
    pub(crate) fn issue(&self, file: &str, cn: &str, expired: bool) -> (PathBuf, PathBuf) {
        let cert = self.dir.path().join(format!("{file}.pem"));
        let key = self.dir.path().join(format!("{file}-key.pem"));
        self.issue_into(&cert, &key, cn, expired);
        (cert, key)
    }

    /// A server certificate for `names` with subject `cn`, as PEM text: (certificate, key).
    pub(crate) fn issue_pem(&self, cn: &str, names: &[&str]) -> (String, String) {
        let kp = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let c = params.signed_by(&kp, &self.ca, &self.ca_key).expect("sign");
        (c.pem(), kp.serialize_pem())
    }

    /// The CA's certificate as DER, for a client's roots.
    pub(crate) fn ca_der(&self) -> Vec<u8> {
        self.ca.der().to_vec()
    }

    /// As [`Pki::issue`], into the given files (a rotation overwrites them).
    fn issue_into(&self, cert: &Path, key: &Path, cn: &str, expired: bool) {
        let kp = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let c = params.signed_by(&kp, &self.ca, &self.ca_key).expect("sign");
        std::fs::write(cert, c.pem()).expect("write cert");
        std::fs::write(key, kp.serialize_pem()).expect("write key");
    }
}

pub(crate) fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs etcdctl against `ep` with TLS flags `tls` and `args`: (success, stdout, stderr).
pub(crate) fn etcdctl(ep: &str, tls: &[&str], args: &[&str]) -> (bool, String, String) {
    let mut c = Command::new("/usr/bin/etcdctl");
    c.env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(ep)
        .arg("--dial-timeout")
        .arg("2s")
        .arg("--command-timeout")
        .arg("3s")
        .args(tls)
        .args(args);
    run(&mut c)
}

/// etcdctl must succeed; returns stdout.
fn etcdctl_ok(ep: &str, tls: &[&str], args: &[&str]) -> String {
    let (ok, out, err) = etcdctl(ep, tls, args);
    assert!(
        ok,
        "etcdctl {tls:?} {args:?} against {ep} failed: {out}{err}"
    );
    out
}

/// etcdctl must fail; returns what it printed.
fn etcdctl_fails(ep: &str, tls: &[&str], args: &[&str]) -> String {
    let (ok, out, err) = etcdctl(ep, tls, args);
    assert!(
        !ok,
        "etcdctl {tls:?} {args:?} against {ep} should fail: {out}"
    );
    eprintln!("etcdctl {tls:?} {args:?} against {ep} failed as expected: {err}");
    err
}

/// The harness's TLS client settings.
pub(crate) fn client(ca: &Path, cert: Option<(&Path, &Path)>) -> TlsSettings {
    TlsSettings {
        trusted_ca_file: Some(ca.to_path_buf()),
        cert_file: cert.map(|c| c.0.to_path_buf()),
        key_file: cert.map(|c| c.1.to_path_buf()),
        ..Default::default()
    }
}

/// The subject CN of the certificate the TLS server at `addr` presents to a new connection
/// (not verified: an expired or rotated-in certificate is read too).
fn served_cn(addr: &str, cert: Option<(&Path, &Path)>) -> Option<String> {
    let settings = TlsSettings {
        cert_file: cert.map(|c| c.0.to_path_buf()),
        key_file: cert.map(|c| c.1.to_path_buf()),
        insecure_skip_verify: true,
        ..Default::default()
    };
    let mut config = settings.client_config("test").expect("client config");
    // No ALPN: the HTTP listener speaks HTTP/1.1, the gRPC ones HTTP/2.
    config.alpn_protocols.clear();
    let config = Arc::new(config);
    let addr = addr.to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(&addr).await.ok()?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").ok()?;
        let tls = match tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
        {
            Ok(tls) => tls,
            Err(e) => {
                eprintln!("TLS to {addr}: {e}");
                return None;
            }
        };
        let der = tls.get_ref().1.peer_certificates()?.first()?.clone();
        berth_net::tls::name::common_name(&der)
    })
}

/// GETs `path` from the HTTPS listener at `addr` (not verified); returns the response.
fn https_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let settings = TlsSettings {
        insecure_skip_verify: true,
        ..Default::default()
    };
    let mut config = settings.client_config("test").expect("client config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("handshake");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        tls.write_all(req.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    })
}

/// The value of a gauge on the server's /metrics.
fn metric(srv: &Server, name: &str) -> i64 {
    let (code, body) = srv.http_get("/metrics");
    assert_eq!(code, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

#[test]
fn etcdctl_puts_and_gets_over_tls_and_mtls_and_needs_a_client_certificate_for_mtls() {
    let pki = Pki::new("ca");
    let (scert, skey) = pki.issue("server", "server", false);
    let (ccert, ckey) = pki.issue("client", "alice", false);
    let ca = pki.ca_file();

    // TLS, no client certificates.
    let srv = Server::start_tls(
        &["--cert-file", path(&scert), "--key-file", path(&skey)],
        client(&ca, None),
    );
    let ep = srv.endpoint();
    assert!(ep.starts_with("https://"));
    let cacert = ["--cacert", path(&ca)];
    etcdctl_ok(&ep, &cacert, &["put", "k", "over-tls"]);
    assert_eq!(etcdctl_ok(&ep, &cacert, &["get", "k"]), "k\nover-tls\n");
    // etcdctl 3.4 itself decides by the scheme: http:// to a TLS port is plain text.
    etcdctl_fails(&format!("http://{}", srv.client_addr), &[], &["get", "k"]);
    // Our CLI over TLS, with the same flags.
    let (ok, out, err) = run(Command::new(berth_bin()).args([
        "--endpoints",
        &ep,
        "--cacert",
        path(&ca),
        "kv",
        "get",
        "k",
    ]));
    assert!(ok, "berth get over TLS: {out}{err}");
    assert_eq!(out, "k\nover-tls\n");

    // Mutual TLS.
    let mtls = Server::start_tls(
        &[
            "--cert-file",
            path(&scert),
            "--key-file",
            path(&skey),
            "--trusted-ca-file",
            path(&ca),
            "--client-cert-auth",
        ],
        client(&ca, Some((&ccert, &ckey))),
    );
    let ep = mtls.endpoint();
    let with_cert = [
        "--cacert",
        path(&ca),
        "--cert",
        path(&ccert),
        "--key",
        path(&ckey),
    ];
    etcdctl_ok(&ep, &with_cert, &["put", "m", "over-mtls"]);
    assert_eq!(etcdctl_ok(&ep, &with_cert, &["get", "m"]), "m\nover-mtls\n");
    // Without a client certificate the handshake is refused.
    etcdctl_fails(&ep, &cacert, &["get", "m"]);
    // The berth CLI with etcdctl's flags, and its bench.
    let (ok, out, err) = run(Command::new(berth_bin()).args(
        [
            &["--endpoints", ep.as_str()][..],
            &with_cert,
            &["kv", "get", "m"],
        ]
        .concat(),
    ));
    assert!(ok, "berth get over mTLS: {out}{err}");
    assert_eq!(out, "m\nover-mtls\n");
    let (ok, out, err) = run(Command::new(berth_bin()).args(
        [
            &["--endpoints", ep.as_str()][..],
            &cacert,
            &["kv", "get", "m"],
        ]
        .concat(),
    ));
    assert!(
        !ok,
        "berth get without a client certificate should fail: {out}"
    );
    eprintln!("berth get without a client certificate: {err}");
    // Still serving after the refusal.
    assert_eq!(etcdctl_ok(&ep, &with_cert, &["get", "m"]), "m\nover-mtls\n");
}

#[test]
fn wrong_ca_expired_certificates_and_wrong_protocols_fail_and_the_server_serves_on() {
    let pki = Pki::new("ca");
    let other = Pki::new("other");
    let (scert, skey) = pki.issue("server", "server", false);
    let (ccert, ckey) = pki.issue("client", "alice", false);
    let (old_cert, old_key) = pki.issue("expired-client", "bob", true);
    let (stranger_cert, stranger_key) = other.issue("stranger", "mallory", false);
    let ca = pki.ca_file();
    let srv = Server::start_tls(
        &[
            "--cert-file",
            path(&scert),
            "--key-file",
            path(&skey),
            "--trusted-ca-file",
            path(&ca),
            "--client-cert-auth",
        ],
        client(&ca, Some((&ccert, &ckey))),
    );
    let ep = srv.endpoint();
    let good = [
        "--cacert",
        path(&ca),
        "--cert",
        path(&ccert),
        "--key",
        path(&ckey),
    ];
    etcdctl_ok(&ep, &good, &["put", "k", "v"]);
    let before = metric(&srv, "berth_tls_handshake_failures");

    // The client does not trust the server's CA.
    let ca_other = other.ca_file();
    etcdctl_fails(
        &ep,
        &[
            "--cacert",
            path(&ca_other),
            "--cert",
            path(&ccert),
            "--key",
            path(&ckey),
        ],
        &["get", "k"],
    );
    // A client certificate from another CA.
    etcdctl_fails(
        &ep,
        &[
            "--cacert",
            path(&ca),
            "--cert",
            path(&stranger_cert),
            "--key",
            path(&stranger_key),
        ],
        &["get", "k"],
    );
    // An expired client certificate.
    etcdctl_fails(
        &ep,
        &[
            "--cacert",
            path(&ca),
            "--cert",
            path(&old_cert),
            "--key",
            path(&old_key),
        ],
        &["get", "k"],
    );
    // Plain text to the TLS port.
    etcdctl_fails(&format!("http://{}", srv.client_addr), &[], &["get", "k"]);
    // TLS to a plain port.
    let plain = Server::start();
    etcdctl_fails(
        &format!("https://{}", plain.client_addr),
        &["--cacert", path(&ca)],
        &["get", "k"],
    );
    etcdctl_ok(&plain.endpoint(), &[], &["put", "plain", "ok"]);

    // The TLS server counted the refused handshakes and serves on.
    assert_eq!(etcdctl_ok(&ep, &good, &["get", "k"]), "k\nv\n");
    let after = metric(&srv, "berth_tls_handshake_failures");
    assert!(
        after >= before + 3,
        "handshake failures {before} -> {after}"
    );

    // A server whose own certificate expired starts (as etcd does); clients refuse it.
    let (exp_cert, exp_key) = pki.issue("expired-server", "server", true);
    let expired = Server::start_tls(
        &["--cert-file", path(&exp_cert), "--key-file", path(&exp_key)],
        TlsSettings {
            insecure_skip_verify: true,
            ..Default::default()
        },
    );
    let err = etcdctl_fails(&expired.endpoint(), &["--cacert", path(&ca)], &["get", "k"]);
    assert!(
        err.contains("expired") || err.contains("deadline"),
        "etcdctl against an expired server certificate: {err}"
    );
}

/// `berth server` with `flags` must exit with an error mentioning every string of `want`.
fn start_fails(flags: &[&str], want: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    // The listeners below, unless `flags` gives its own.
    let unless_given = |flag: &str, value: String| {
        if flags.contains(&flag) {
            Vec::new()
        } else {
            vec![flag.to_string(), value]
        }
    };
    let mut cmd = Command::new("timeout");
    cmd.arg("20")
        .arg(berth_bin())
        .arg("server")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(unless_given(
            "--listen-client-urls",
            format!("https://127.0.0.1:{}", free_port()),
        ))
        .arg("--listen-peer-urls")
        .arg(format!("http://127.0.0.1:{}", free_port()))
        .arg("--listen-http-urls")
        .arg(format!("http://127.0.0.1:{}", free_port()))
        .arg("--listen-dns-addr")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--listen-nacos-urls")
        .arg("")
        .args(unless_given("--listen-nats-urls", String::new()))
        .args(unless_given("--listen-gateway-urls", String::new()))
        .args(flags);
    let (ok, out, err) = run(&mut cmd);
    assert!(!ok, "berth should refuse {flags:?}: {out}{err}");
    for w in want {
        assert!(err.contains(w), "berth {flags:?}: {w:?} not in {err}");
    }
    assert!(
        !dir.path().join("data").exists(),
        "a failed start left a data directory"
    );
}

#[test]
fn certificate_problems_are_start_up_errors_naming_the_file() {
    let pki = Pki::new("ca");
    let (cert, key) = pki.issue("server", "server", false);
    let (_, other_key) = pki.issue("other", "other", false);
    let dir = tempfile::tempdir().expect("tempdir");
    let text = dir.path().join("text.pem");
    std::fs::write(&text, "just some text\n").expect("write");
    let missing = dir.path().join("missing.pem");

    start_fails(&[], &["https://", "--cert-file"]);
    start_fails(
        &["--cert-file", path(&missing), "--key-file", path(&key)],
        &["missing.pem", "cannot read"],
    );
    start_fails(
        &["--cert-file", path(&text), "--key-file", path(&key)],
        &["text.pem", "no CERTIFICATE"],
    );
    start_fails(
        &["--cert-file", path(&cert), "--key-file", path(&text)],
        &["text.pem", "no PRIVATE KEY"],
    );
    start_fails(
        &["--cert-file", path(&cert), "--key-file", path(&other_key)],
        &["other-key.pem", "does not match"],
    );
    start_fails(
        &[
            "--cert-file",
            path(&cert),
            "--key-file",
            path(&key),
            "--trusted-ca-file",
            path(&missing),
        ],
        &["missing.pem"],
    );
    start_fails(
        &[
            "--auto-tls",
            "--cipher-suites",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_RSA_WITH_AES_128_CBC_SHA",
        ],
        &["TLS_RSA_WITH_AES_128_CBC_SHA", "not supported"],
    );
    start_fails(
        &["--auto-tls", "--cipher-suites", "TLS_NOT_A_SUITE"],
        &["unknown cipher suite"],
    );
    start_fails(&["--auto-tls", "--tls-min-version", "TLS1.0"], &["TLS1.0"]);
}

#[test]
fn auto_tls_cipher_suites_and_tls13_only_serve_etcdctl() {
    let srv = Server::start_tls(
        &[
            "--auto-tls",
            "--cipher-suites",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        ],
        TlsSettings {
            insecure_skip_verify: true,
            ..Default::default()
        },
    );
    // etcdctl 3.4 skips verification only with --insecure-transport=false as well.
    let skip = ["--insecure-transport=false", "--insecure-skip-tls-verify"];
    etcdctl_ok(&srv.endpoint(), &skip, &["put", "auto", "tls"]);
    assert_eq!(
        etcdctl_ok(&srv.endpoint(), &skip, &["get", "auto"]),
        "auto\ntls\n"
    );
    let v13 = Server::start_tls(
        &["--auto-tls", "--tls-min-version", "TLS1.3"],
        TlsSettings {
            insecure_skip_verify: true,
            ..Default::default()
        },
    );
    etcdctl_ok(&v13.endpoint(), &skip, &["put", "v", "1.3"]);
    // As etcdctl 3.4: an endpoint without a scheme uses TLS when TLS flags are given.
    let bare = v13.client_addr.clone();
    etcdctl_ok(&bare, &skip, &["get", "v"]);
    let (ok, out, err) = run(Command::new(berth_bin()).args([
        "--endpoints",
        &bare,
        "--insecure-skip-tls-verify",
        "kv",
        "get",
        "v",
    ]));
    assert!(ok, "berth over TLS to a bare endpoint: {out}{err}");
    assert_eq!(out, "v\n1.3\n");
}

#[test]
fn rotated_certificate_files_are_served_to_new_connections_without_a_restart() {
    let pki = Pki::new("ca");
    let (cert, key) = pki.issue("server", "first", false);
    let ca = pki.ca_file();
    let http = free_port();
    let srv = Server::start_tls(
        &[
            "--cert-file",
            path(&cert),
            "--key-file",
            path(&key),
            // The HTTP listener follows the client side's certificate too.
            "--listen-http-urls",
            &format!("https://127.0.0.1:{http}"),
        ],
        client(&ca, None),
    );
    let http = format!("127.0.0.1:{http}");
    assert_eq!(served_cn(&srv.client_addr, None).as_deref(), Some("first"));
    assert_eq!(served_cn(&http, None).as_deref(), Some("first"));
    assert!(https_get(&http, "/health").starts_with("HTTP/1.1 200"));
    // The client port's JSON gateway over HTTPS with HTTP/1.1.
    let version = https_get(&srv.client_addr, "/version");
    assert!(version.starts_with("HTTP/1.1 200"), "{version}");
    let cacert = ["--cacert", path(&ca)];
    etcdctl_ok(&srv.endpoint(), &cacert, &["put", "k", "v"]);

    pki.issue_into(&cert, &key, "second", false);
    assert_eq!(served_cn(&srv.client_addr, None).as_deref(), Some("second"));
    assert_eq!(served_cn(&http, None).as_deref(), Some("second"));
    assert_eq!(
        etcdctl_ok(&srv.endpoint(), &cacert, &["get", "k"]),
        "k\nv\n"
    );

    // A broken new certificate keeps the last good one.
    std::fs::write(&cert, "not a certificate").expect("write");
    assert_eq!(served_cn(&srv.client_addr, None).as_deref(), Some("second"));
    assert_eq!(
        etcdctl_ok(&srv.endpoint(), &cacert, &["get", "k"]),
        "k\nv\n"
    );
    pki.issue_into(&cert, &key, "third", false);
    assert_eq!(served_cn(&srv.client_addr, None).as_deref(), Some("third"));
}

#[test]
fn a_replaced_trusted_ca_file_decides_which_client_certificates_are_accepted_without_a_restart() {
    let pki = Pki::new("ca");
    let other = Pki::new("other");
    let (scert, skey) = pki.issue("server", "server", false);
    let (alice_cert, alice_key) = pki.issue("alice", "alice", false);
    let (bob_cert, bob_key) = other.issue("bob", "bob", false);
    let ca = pki.ca_file();
    // The server's client CA is a file of its own, replaced below as a rotation does.
    let dir = tempfile::tempdir().expect("tempdir");
    let trusted = dir.path().join("trusted-ca.pem");
    std::fs::copy(&ca, &trusted).expect("copy");
    let srv = Server::start_tls(
        &[
            "--cert-file",
            path(&scert),
            "--key-file",
            path(&skey),
            "--trusted-ca-file",
            path(&trusted),
            "--client-cert-auth",
        ],
        client(&ca, Some((&alice_cert, &alice_key))),
    );
    let ep = srv.endpoint();
    let alice = [
        "--cacert",
        path(&ca),
        "--cert",
        path(&alice_cert),
        "--key",
        path(&alice_key),
    ];
    let bob = [
        "--cacert",
        path(&ca),
        "--cert",
        path(&bob_cert),
        "--key",
        path(&bob_key),
    ];
    etcdctl_ok(&ep, &alice, &["put", "k", "v"]);
    etcdctl_fails(&ep, &bob, &["get", "k"]);

    // The other CA replaces the first: bob's certificate is accepted, alice's refused.
    let new = dir.path().join("trusted-ca.new");
    std::fs::copy(other.ca_file(), &new).expect("copy");
    std::fs::rename(&new, &trusted).expect("rename");
    assert_eq!(etcdctl_ok(&ep, &bob, &["get", "k"]), "k\nv\n");
    etcdctl_fails(&ep, &alice, &["get", "k"]);

    // A broken new CA file keeps the last good one.
    std::fs::write(&trusted, "not a CA").expect("write");
    assert_eq!(etcdctl_ok(&ep, &bob, &["get", "k"]), "k\nv\n");
    etcdctl_fails(&ep, &alice, &["get", "k"]);
}

/// Waits until `srv` answers a serializable get of `key` with `want` (etcdctl, plain).
fn wait_for_value(srv: &Server, key: &str, want: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let (ok, out, _) = etcdctl(
            &srv.endpoint(),
            &[],
            &["get", key, "--consistency", "s", "--print-value-only"],
        );
        if ok && out.trim() == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn a_cluster_with_https_peers_and_peer_cert_auth_replicates_and_refuses_a_stranger() {
    let pki = Pki::new("peers");
    let other = Pki::new("other");
    let ca = pki.ca_file();
    let (cert, key) = pki.issue("peer", "peer", false);
    let (bad_cert, bad_key) = other.issue("stranger", "stranger", false);
    let tmp = tempfile::tempdir().expect("tempdir");
    let peers: Vec<String> = (0..3)
        .map(|_| format!("https://127.0.0.1:{}", free_port()))
        .collect();
    let initial = (0..3)
        .map(|i| format!("m{i}={}", peers[i]))
        .collect::<Vec<_>>()
        .join(",");
    let flags = |cert: &Path, key: &Path| -> Vec<String> {
        [
            "--peer-cert-file",
            path(cert),
            "--peer-key-file",
            path(key),
            "--peer-trusted-ca-file",
            path(&ca),
            "--peer-client-cert-auth",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let good = flags(&cert, &key);
    let bad = flags(&bad_cert, &bad_key);
    let mut members: Vec<Server> = (0..3)
        .map(|i| {
            let f = if i == 2 { &bad } else { &good };
            let f: Vec<&str> = f.iter().map(String::as_str).collect();
            Server::member(
                &tmp.path().join(format!("m{i}")),
                &format!("m{i}"),
                &peers[i],
                &initial,
                &f,
            )
        })
        .collect();
    for m in members.iter_mut() {
        m.start_again_no_wait();
    }
    for m in members.iter_mut() {
        m.wait_ready();
    }
    // m0 and m1 are a quorum: they elect a leader and replicate over TLS.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out, err) = etcdctl(&members[0].endpoint(), &[], &["put", "over", "https-peers"]);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "no write within 20s: {out}{err}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(wait_for_value(&members[1], "over", "https-peers"));
    // One of m0 and m1 follows: its writes are forwarded to the leader, its lease renewals
    // go to the leader's lease service, both over the TLS peer connection.
    for (i, m) in members.iter().take(2).enumerate() {
        etcdctl_ok(&m.endpoint(), &[], &["put", &format!("k{i}"), "v"]);
        let granted = etcdctl_ok(&m.endpoint(), &[], &["lease", "grant", "30"]);
        let id = granted
            .split_whitespace()
            .nth(1)
            .expect("lease id")
            .to_string();
        let kept = etcdctl_ok(&m.endpoint(), &[], &["lease", "keep-alive", "--once", &id]);
        assert!(kept.contains("keepalived with TTL"), "{kept}");
    }
    assert!(wait_for_value(&members[0], "k1", "v"));
    assert!(wait_for_value(&members[1], "k0", "v"));
    // m2's certificate is from another CA: refused, it never hears of the write.
    std::thread::sleep(Duration::from_millis(500));
    let (_, out, _) = etcdctl(
        &members[2].endpoint(),
        &[],
        &["get", "over", "--consistency", "s", "--print-value-only"],
    );
    assert_eq!(out.trim(), "", "the stranger member got the write");
    assert!(metric(&members[0], "berth_tls_handshake_failures") > 0);
}

/// NATS over TLS, as nats-server serves it: a `tls://` listener sends INFO in plain text
/// with `tls_required`, then the client upgrades. async-nats publishes and subscribes
/// through it trusting the test CA; with `--trusted-ca-file` it must bring a client
/// certificate; a plain-text client is told TLS is required; and `tls://` without a
/// certificate is a start-up error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_clients_upgrade_to_tls_after_info() {
    use futures::StreamExt;
    use std::io::{BufRead, BufReader, Write};

    let pki = Pki::new("nats");
    let (cert, key) = pki.issue("server", "berth", false);
    let (ccert, ckey) = pki.issue("client", "app", false);
    let port = free_port();
    let nats_url = format!("tls://127.0.0.1:{port}");
    let srv = tokio::task::spawn_blocking({
        let (cert, key, ca) = (cert.clone(), key.clone(), pki.ca_file());
        let nats_url = nats_url.clone();
        move || {
            Server::start_with(&[
                "--listen-nats-urls",
                &nats_url,
                "--cert-file",
                path(&cert),
                "--key-file",
                path(&key),
                "--trusted-ca-file",
                path(&ca),
            ])
        }
    })
    .await
    .expect("server");

    // A plain-text client reads INFO saying TLS is required, and is refused.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut lines = BufReader::new(raw.try_clone().expect("clone"));
    let mut info = String::new();
    lines.read_line(&mut info).expect("INFO");
    assert!(
        info.starts_with("INFO ") && info.contains("\"tls_required\":true"),
        "{info}"
    );
    raw.write_all(b"CONNECT {}\r\nPING\r\n").expect("write");
    let mut refusal = String::new();
    lines.read_line(&mut refusal).expect("refusal");
    assert_eq!(refusal, "-ERR 'Secure Connection - TLS Required'\r\n");

    // With a client certificate the CA signed: publish and subscribe over TLS.
    let client = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(pki.ca_file())
        .add_client_certificate(ccert.clone(), ckey.clone())
        .connect(&nats_url)
        .await
        .expect("TLS connect");
    let mut sub = client.subscribe("secure.>").await.expect("subscribe");
    client
        .publish("secure.a", "over tls".into())
        .await
        .expect("publish");
    let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("in time")
        .expect("a message");
    assert_eq!(&got.payload[..], b"over tls");
    // The CLI too, with etcdctl's TLS flags.
    let (ok, out, err) = run(Command::new(berth_bin()).args([
        "--nats-url",
        &nats_url,
        "--cacert",
        path(&pki.ca_file()),
        "--cert",
        path(&ccert),
        "--key",
        path(&ckey),
        "pub",
        "secure.cli",
        "from the cli",
    ]));
    assert!(ok, "berth pub over TLS: {out}{err}");
    let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("in time")
        .expect("a message");
    assert_eq!(&got.payload[..], b"from the cli");

    // Without one, the handshake is refused.
    let refused = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(pki.ca_file())
        .retry_on_initial_connect()
        .max_reconnects(Some(1))
        .connection_timeout(Duration::from_secs(2))
        .connect(&nats_url);
    // TLS 1.3 clients finish their side of the handshake before the server checks their
    // certificate: the refusal shows on the first round trip.
    if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(10), refused).await {
        let flushed = tokio::time::timeout(Duration::from_secs(3), c.flush()).await;
        assert!(
            !matches!(flushed, Ok(Ok(()))),
            "a client without a certificate was served"
        );
    }
    drop(srv);

    start_fails(
        &[
            "--listen-nats-urls",
            &format!("tls://127.0.0.1:{}", free_port()),
            "--listen-client-urls",
            &format!("http://127.0.0.1:{}", free_port()),
        ],
        &[
            "--listen-nats-urls",
            "tls:// needs --cert-file and --key-file",
        ],
    );
}

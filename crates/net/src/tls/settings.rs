//! One side's TLS settings (the client side's `--cert-file` family, or the peer side's
//! `--peer-*` family, or a CLI's `--cacert`/`--cert`/`--key`), turned into rustls server and
//! client configurations as etcd's `TLSInfo` turns them into Go's:
//!
//! - A server presents `cert_file`/`key_file` (re-read on change, see [`super::reload`]) or
//!   a self-signed certificate (`auto_tls`).
//! - A server requires and verifies client certificates when `client_cert_auth` is set or a
//!   `trusted_ca_file` is given (etcd requires them in both cases), against that file,
//!   re-read on change (see [`super::trust`]). Such a server resumes no TLS sessions: a
//!   resumed session skips the check, so a client of a CA since removed could go on.
//! - A client verifies the server against `trusted_ca_file`, re-read on change too (berth
//!   has no system trust store: without a CA file a client must skip verification
//!   explicitly), and presents `cert_file`/`key_file` as its client certificate when given.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

use super::reload::ReloadingCert;
use super::trust::{ReloadingClientVerifier, ReloadingServerVerifier};
use super::{provider, selfsigned, suites, TlsError};

/// Lowest TLS version accepted (`--tls-min-version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3 (etcd's default).
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

impl TlsVersion {
    /// Parses etcd's spelling: `TLS1.2` or `TLS1.3`.
    pub fn parse(s: &str) -> Result<TlsVersion, TlsError> {
        match s.trim() {
            "TLS1.2" => Ok(TlsVersion::Tls12),
            "TLS1.3" => Ok(TlsVersion::Tls13),
            "TLS1.0" | "TLS1.1" => Err(TlsError::Flags(format!(
                "--tls-min-version {s}: not supported (berth's TLS needs TLS1.2 or TLS1.3)"
            ))),
            other => Err(TlsError::Flags(format!(
                "--tls-min-version {other:?}: must be TLS1.2 or TLS1.3"
            ))),
        }
    }

    fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        match self {
            TlsVersion::Tls12 => rustls::ALL_VERSIONS,
            TlsVersion::Tls13 => TLS13_ONLY,
        }
    }
}

static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// TLS settings of one side, as the flags give them.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// Certificate (chain) presented, PEM.
    pub cert_file: Option<PathBuf>,
    /// Its private key, PEM.
    pub key_file: Option<PathBuf>,
    /// CA bundle that verifies the other end, PEM.
    pub trusted_ca_file: Option<PathBuf>,
    /// A server requires client certificates signed by `trusted_ca_file`.
    pub client_cert_auth: bool,
    /// Generate a self-signed certificate when no files are given; verify nothing.
    pub auto_tls: bool,
    /// Hosts a self-signed certificate is made for (the listeners' hosts).
    pub hosts: Vec<String>,
    /// `--cipher-suites`, Go's names comma-separated; empty for all.
    pub cipher_suites: String,
    /// `--tls-min-version`.
    pub min_version: TlsVersion,
    /// A client accepts any server certificate (`--insecure-skip-tls-verify`).
    pub insecure_skip_verify: bool,
}

/// ALPN of the gRPC listeners: HTTP/2, which gRPC clients (etcdctl's grpc-go) ask for.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN of the HTTP listener (HTTP/1.1 only).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

impl TlsSettings {
    /// True when the settings give a certificate, or ask for a generated one.
    pub fn has_identity(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some() || self.auto_tls
    }

    /// True when no setting at all is given.
    pub fn is_empty(&self) -> bool {
        !self.has_identity() && self.trusted_ca_file.is_none() && !self.client_cert_auth
    }

    /// The provider with the configured suites, and the versions, checked together.
    fn crypto(&self) -> Result<Arc<CryptoProvider>, TlsError> {
        if self.min_version == TlsVersion::Tls13 && !self.cipher_suites.trim().is_empty() {
            // etcd's words: TLS 1.3 suites are not configurable.
            return Err(TlsError::Flags(
                "--cipher-suites cannot be used with --tls-min-version TLS1.3 (TLS 1.3 suites are not configurable)".into(),
            ));
        }
        Ok(Arc::new(CryptoProvider {
            cipher_suites: suites::parse(&self.cipher_suites)?,
            ..provider()
        }))
    }

    /// The certificate this side presents: its files (followed), self-signed, or none.
    fn identity(&self, flags: &str) -> Result<Option<Arc<ReloadingCert>>, TlsError> {
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Ok(Some(Arc::new(ReloadingCert::from_files(cert, key)?))),
            (Some(_), None) | (None, Some(_)) => Err(TlsError::Flags(format!(
                "{flags}: a certificate file needs its key file and the other way round"
            ))),
            (None, None) if self.auto_tls => Ok(Some(Arc::new(ReloadingCert::fixed(
                selfsigned::generate(&self.hosts)?,
            )))),
            (None, None) => Ok(None),
        }
    }

    /// A server configuration offering the protocols `alpn` (in order of preference).
    /// `flags` names the flags in errors (e.g. `--cert-file/--key-file`).
    pub fn server_config(&self, alpn: &[&[u8]], flags: &str) -> Result<ServerConfig, TlsError> {
        let identity = self.identity(flags)?.ok_or_else(|| {
            TlsError::Flags(format!(
                "https:// needs a certificate: give {flags} (or the auto TLS flag)"
            ))
        })?;
        let crypto = self.crypto()?;
        let builder = ServerConfig::builder_with_provider(crypto.clone())
            .with_protocol_versions(self.min_version.versions())?;
        let builder = match &self.trusted_ca_file {
            Some(ca) => builder.with_client_cert_verifier(Arc::new(
                ReloadingClientVerifier::from_file(ca, crypto)?,
            )),
            None if self.client_cert_auth => {
                return Err(TlsError::Flags(format!(
                    "client certificate authentication needs a trusted CA file to verify them with ({flags})"
                )))
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(identity);
        if self.trusted_ca_file.is_some() {
            // A resumed session skips the client certificate check: a client the CA file
            // no longer trusts could go on resuming the session it had under the old one.
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    /// A client configuration (HTTP/2 for gRPC), presenting this side's certificate if any.
    pub fn client_config(&self, flags: &str) -> Result<ClientConfig, TlsError> {
        let crypto = self.crypto()?;
        let builder = ClientConfig::builder_with_provider(crypto.clone())
            .with_protocol_versions(self.min_version.versions())?;
        let builder = match &self.trusted_ca_file {
            _ if self.insecure_skip_verify || self.auto_tls => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(SkipVerify(crypto))),
            Some(ca) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ReloadingServerVerifier::from_file(
                    ca, crypto,
                )?)),
            None => {
                return Err(TlsError::Flags(format!(
                "TLS needs a CA file to verify the server with ({flags}), or skipping verification"
            )))
            }
        };
        let mut config = match self.identity(flags)? {
            Some(identity) => builder.with_client_cert_resolver(identity),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(config)
    }
}

/// Accepts any server certificate (signatures are still checked: the peer holds the key of
/// the certificate it shows).
#[derive(Debug)]
pub struct SkipVerify(Arc<CryptoProvider>);

impl SkipVerify {
    /// A verifier checking handshake signatures with `crypto`'s algorithms.
    pub fn new(crypto: Arc<CryptoProvider>) -> SkipVerify {
        SkipVerify(crypto)
    }
}

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::ring::cipher_suite as cs;
    use rustls::SupportedCipherSuite;

    /// Whether a client limited to `versions` and `suite` completes a handshake with a
    /// self-signed server made from `server`.
    async fn handshake(
        server: TlsSettings,
        versions: &[&'static rustls::SupportedProtocolVersion],
        suite: SupportedCipherSuite,
    ) -> bool {
        let server = server.server_config(&[ALPN_H2], "test").expect("server");
        let client_provider = Arc::new(CryptoProvider {
            cipher_suites: vec![suite],
            ..provider()
        });
        let mut client = ClientConfig::builder_with_provider(client_provider.clone())
            .with_protocol_versions(versions)
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerify(client_provider)))
            .with_no_client_auth();
        client.alpn_protocols = vec![ALPN_H2.to_vec()];
        let (a, b) = tokio::io::duplex(1 << 16);
        let accept = tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(b);
        let name = ServerName::try_from("localhost").expect("name");
        let connect = tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, a);
        let (s, c) = tokio::join!(accept, connect);
        s.is_ok() && c.is_ok()
    }

    fn auto(suites: &str, min: TlsVersion) -> TlsSettings {
        TlsSettings {
            auto_tls: true,
            hosts: vec!["localhost".into()],
            cipher_suites: suites.into(),
            min_version: min,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn cipher_suites_limit_tls12_and_min_version_refuses_older_clients() {
        let tls12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
        let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
        // The self-signed certificate is ECDSA: ECDSA suites.
        let only_128 = "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256";
        let ok = cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256;
        let other = cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384;
        assert!(handshake(auto(only_128, TlsVersion::Tls12), tls12, ok).await);
        assert!(!handshake(auto(only_128, TlsVersion::Tls12), tls12, other).await);
        // TLS 1.3 suites stay on whatever the list says, as in Go.
        let v13 = cs::TLS13_AES_256_GCM_SHA384;
        assert!(handshake(auto(only_128, TlsVersion::Tls12), tls13, v13).await);
        // --tls-min-version TLS1.3 refuses a TLS 1.2 client.
        assert!(!handshake(auto("", TlsVersion::Tls13), tls12, ok).await);
        assert!(handshake(auto("", TlsVersion::Tls13), tls13, v13).await);
        let e = auto(only_128, TlsVersion::Tls13)
            .server_config(&[ALPN_H2], "test")
            .expect_err("suites with TLS1.3");
        assert!(e.to_string().contains("--cipher-suites"), "{e}");
    }

    /// A CA that signs certificates for localhost into `dir`: `{name}-ca.pem`, and
    /// `{file}.pem` with `{file}-key.pem` per [`issue`].
    struct TestCa(rcgen::Certificate, rcgen::KeyPair);

    fn test_ca(dir: &std::path::Path, name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::new()).expect("params");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).expect("CA");
        std::fs::write(dir.join(format!("{name}-ca.pem")), cert.pem()).expect("write");
        TestCa(cert, key)
    }

    fn issue(dir: &std::path::Path, ca: &TestCa, file: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("p");
        p.distinguished_name.push(rcgen::DnType::CommonName, file);
        let cert = p.signed_by(&key, &ca.0, &ca.1).expect("sign");
        let (c, k) = (
            dir.join(format!("{file}.pem")),
            dir.join(format!("{file}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).expect("write");
        std::fs::write(&k, key.serialize_pem()).expect("write");
        (c, k)
    }

    /// Whether `client` and `server` complete a handshake and the server's first bytes
    /// reach the client (which also hands the client the server's session tickets, if any).
    async fn mutual(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, b) = tokio::io::duplex(1 << 16);
        let accept = async {
            let mut tls = tokio_rustls::TlsAcceptor::from(server.clone())
                .accept(b)
                .await?;
            tls.write_all(b"x").await?;
            tls.flush().await?;
            Ok::<_, std::io::Error>(tls)
        };
        let connect = async {
            let name = ServerName::try_from("localhost").expect("name");
            let mut tls = tokio_rustls::TlsConnector::from(client.clone())
                .connect(name, a)
                .await?;
            let mut got = [0u8; 1];
            tls.read_exact(&mut got).await?;
            Ok::<_, std::io::Error>(got)
        };
        let (s, c) = tokio::join!(accept, connect);
        s.is_ok() && matches!(c, Ok(b) if &b == b"x")
    }

    #[tokio::test]
    async fn a_replaced_client_ca_file_decides_new_handshakes_resumed_ones_included() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let servers = test_ca(d, "servers");
        let (one, two) = (test_ca(d, "one"), test_ca(d, "two"));
        let (cert, key) = issue(d, &servers, "server");
        let trusted = d.join("trusted.pem");
        std::fs::copy(d.join("one-ca.pem"), &trusted).expect("copy");
        let server = TlsSettings {
            cert_file: Some(cert),
            key_file: Some(key),
            trusted_ca_file: Some(trusted.clone()),
            client_cert_auth: true,
            ..Default::default()
        };
        let server = Arc::new(server.server_config(&[ALPN_H2], "test").expect("server"));
        let client = |file: &str, ca: &TestCa| {
            let (cert, key) = issue(d, ca, file);
            let settings = TlsSettings {
                cert_file: Some(cert),
                key_file: Some(key),
                trusted_ca_file: Some(d.join("servers-ca.pem")),
                ..Default::default()
            };
            Arc::new(settings.client_config("test").expect("client"))
        };
        let (alice, bob) = (client("alice", &one), client("bob", &two));
        assert!(mutual(&server, &alice).await);
        assert!(!mutual(&server, &bob).await);
        // The new CA file, renamed into place as a rotation does.
        let new = d.join("trusted.new");
        std::fs::copy(d.join("two-ca.pem"), &new).expect("copy");
        std::fs::rename(&new, &trusted).expect("rename");
        assert!(mutual(&server, &bob).await);
        // alice's client would resume the session it had: refused all the same.
        assert!(!mutual(&server, &alice).await);
        // A broken new file keeps the CA last read.
        std::fs::write(&trusted, "not a CA").expect("write");
        assert!(mutual(&server, &bob).await);
        assert!(!mutual(&server, &alice).await);
    }

    #[tokio::test]
    async fn a_replaced_server_ca_file_decides_which_servers_a_client_trusts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let (one, two) = (test_ca(d, "one"), test_ca(d, "two"));
        let server = |file: &str, ca: &TestCa| {
            let (cert, key) = issue(d, ca, file);
            let settings = TlsSettings {
                cert_file: Some(cert),
                key_file: Some(key),
                ..Default::default()
            };
            Arc::new(settings.server_config(&[ALPN_H2], "test").expect("server"))
        };
        let (first, second) = (server("first", &one), server("second", &two));
        let trusted = d.join("trusted.pem");
        std::fs::copy(d.join("one-ca.pem"), &trusted).expect("copy");
        let client = TlsSettings {
            trusted_ca_file: Some(trusted.clone()),
            ..Default::default()
        };
        let client = Arc::new(client.client_config("test").expect("client"));
        assert!(mutual(&first, &client).await);
        assert!(!mutual(&second, &client).await);
        let new = d.join("trusted.new");
        std::fs::copy(d.join("two-ca.pem"), &new).expect("copy");
        std::fs::rename(&new, &trusted).expect("rename");
        assert!(mutual(&second, &client).await);
        assert!(!mutual(&first, &client).await);
    }
}

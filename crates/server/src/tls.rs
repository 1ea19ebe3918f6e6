//! TLS of a member, as etcd's flags set it: the client side (`--cert-file`, `--key-file`,
//! `--trusted-ca-file`, `--client-cert-auth`, `--auto-tls`) secures the etcd API listeners
//! and the HTTP listener (as etcd's `--listen-metrics-urls`); the peer side (`--peer-*`)
//! secures the peer listener and every connection to peers (Raft, forwarded requests, lease
//! renewals, the cluster ID lookup of a joining member). `--cipher-suites` and
//! `--tls-min-version` apply to both. A listener serves TLS when its URL is `https://`.
//!
//! Request handlers learn who a client is with [`client_common_name`].

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context};
use berth_net::tls::{ConnInfo, Connector, TlsSettings, TlsVersion};
use tonic::transport::server::TcpConnectInfo;

use crate::config::{url_to_addr, ServerArgs};

/// The verified client certificate's subject common name (CN) of the connection a gRPC
/// request came on, or `None`: a plain connection, a TLS connection without a client
/// certificate, or a certificate without a CN.
///
/// A certificate is only asked for, and so only seen here, when the listener verifies
/// client certificates (`--client-cert-auth` or `--trusted-ca-file`): the name is that of a
/// certificate signed by the trusted CA. etcd's auth takes it as the user name when a request
/// carries no token.
pub fn client_common_name<T>(req: &tonic::Request<T>) -> Option<String> {
    req.extensions()
        .get::<ConnInfo<TcpConnectInfo>>()
        .and_then(|info| info.client_cn.clone())
}

/// A member's TLS settings, resolved from its flags.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// The client side: etcd API and HTTP listeners.
    pub client: TlsSettings,
    /// The peer side: the peer listener and connections to peers.
    pub peer: TlsSettings,
    /// Listen addresses (of any kind) whose URL is `https://`.
    pub https: Vec<SocketAddr>,
    /// NATS listen addresses whose URL is `tls://` (filled in with the listen addresses,
    /// from the same resolution).
    pub nats_tls: Vec<SocketAddr>,
}

fn https(urls: &[String]) -> impl Iterator<Item = &String> {
    urls.iter().filter(|u| u.starts_with("https://"))
}

/// The hosts of URLs, for a self-signed certificate.
fn hosts(urls: &[String]) -> Vec<String> {
    let mut out: Vec<String> = urls
        .iter()
        .filter_map(|u| u.parse::<http::Uri>().ok())
        .filter_map(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_string()))
        .collect();
    out.sort();
    out.dedup();
    out
}

impl TlsConfig {
    /// The TLS settings `s` gives, checked against the listen URLs that need them.
    pub(crate) fn resolve(
        s: &ServerArgs,
        client_urls: &[String],
        peer_urls: &[String],
        http_urls: &[String],
        nats_urls: &[String],
    ) -> anyhow::Result<TlsConfig> {
        let min_version = TlsVersion::parse(s.tls_min_version.as_deref().unwrap_or("TLS1.2"))?;
        let cipher_suites = s.cipher_suites.clone().unwrap_or_default();
        let client = TlsSettings {
            cert_file: s.cert_file.clone(),
            key_file: s.key_file.clone(),
            trusted_ca_file: s.trusted_ca_file.clone(),
            client_cert_auth: s.client_cert_auth.unwrap_or(false),
            auto_tls: s.auto_tls.unwrap_or(false),
            hosts: hosts(&[client_urls, http_urls, nats_urls].concat()),
            cipher_suites: cipher_suites.clone(),
            min_version,
            insecure_skip_verify: false,
        };
        let peer = TlsSettings {
            cert_file: s.peer_cert_file.clone(),
            key_file: s.peer_key_file.clone(),
            trusted_ca_file: s.peer_trusted_ca_file.clone(),
            client_cert_auth: s.peer_client_cert_auth.unwrap_or(false),
            auto_tls: s.peer_auto_tls.unwrap_or(false),
            hosts: hosts(peer_urls),
            cipher_suites,
            min_version,
            insecure_skip_verify: false,
        };
        // Checked once here, so a bad list is a start-up error even without https.
        berth_net::tls::suites::parse(&client.cipher_suites)?;
        for (flag, urls, side, needs) in [
            (
                "--listen-client-urls",
                client_urls,
                &client,
                "--cert-file and --key-file (or --auto-tls)",
            ),
            (
                "--listen-http-urls",
                http_urls,
                &client,
                "--cert-file and --key-file (or --auto-tls)",
            ),
            (
                "--listen-peer-urls",
                peer_urls,
                &peer,
                "--peer-cert-file and --peer-key-file (or --peer-auto-tls)",
            ),
        ] {
            if let Some(url) = https(urls).next() {
                if !side.has_identity() {
                    bail!("{flag} {url}: https:// needs {needs}");
                }
            }
        }
        // The addresses themselves are resolved once, with the listeners' (`Config`).
        if let Some(url) = nats_urls.iter().find(|u| u.starts_with("tls://")) {
            if !client.has_identity() {
                bail!("--listen-nats-urls {url}: tls:// needs --cert-file and --key-file (or --auto-tls)");
            }
        }
        let mut https_addrs = Vec::new();
        for url in https(&[client_urls, peer_urls, http_urls].concat()) {
            https_addrs.push(url_to_addr(url)?);
        }
        Ok(TlsConfig {
            client,
            peer,
            https: https_addrs,
            nats_tls: Vec::new(),
        })
    }

    /// Whether the listener on `addr` serves TLS.
    pub fn is_https(&self, addr: &SocketAddr) -> bool {
        self.https.contains(addr)
    }

    /// The rustls configuration of an etcd API listener: HTTP/2 for gRPC, preferred, and
    /// HTTP/1.1 for the JSON gateway on the same port.
    pub fn client_listener(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        Ok(Arc::new(
            self.client
                .server_config(
                    &[
                        berth_net::tls::settings::ALPN_H2,
                        berth_net::tls::settings::ALPN_HTTP1,
                    ],
                    "--cert-file/--key-file/--trusted-ca-file",
                )
                .context("client TLS")?,
        ))
    }

    /// The rustls configuration of the HTTP listener (HTTP/1.1), from the client side's
    /// settings.
    pub fn http_listener(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        Ok(Arc::new(
            self.client
                .server_config(
                    &[berth_net::tls::settings::ALPN_HTTP1],
                    "--cert-file/--key-file/--trusted-ca-file",
                )
                .context("HTTP listener TLS")?,
        ))
    }

    /// The rustls configuration of a `tls://` NATS listener (NATS's protocol, no ALPN),
    /// from the client side's settings.
    pub fn nats_listener(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        Ok(Arc::new(
            self.client
                .server_config(&[], "--cert-file/--key-file/--trusted-ca-file")
                .context("NATS listener TLS")?,
        ))
    }

    /// The rustls configuration of the peer listener (HTTP/2).
    pub fn peer_listener(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        Ok(Arc::new(
            self.peer
                .server_config(
                    &[berth_net::tls::settings::ALPN_H2],
                    "--peer-cert-file/--peer-key-file/--peer-trusted-ca-file",
                )
                .context("peer TLS")?,
        ))
    }

    /// How this member dials its peers: `https://` peer URLs over TLS with the peer side's
    /// settings (when any is given; otherwise such a URL fails to dial, saying why).
    pub fn peer_connector(&self) -> anyhow::Result<Connector> {
        if self.peer.is_empty() {
            return Ok(Connector::new(None));
        }
        let config = self
            .peer
            .client_config("--peer-trusted-ca-file")
            .context("peer TLS (outgoing)")?;
        Ok(Connector::new(Some(Arc::new(config))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ServerArgs};

    fn err(a: ServerArgs) -> String {
        format!("{:#}", Config::resolve(a).expect_err("refused"))
    }

    #[test]
    fn https_needs_a_certificate_and_flags_are_checked() {
        let m = err(ServerArgs {
            listen_client_urls: Some("https://127.0.0.1:2379".into()),
            ..Default::default()
        });
        assert!(m.contains("--cert-file") && m.contains("https://"), "{m}");
        let m = err(ServerArgs {
            listen_peer_urls: Some("https://127.0.0.1:2380".into()),
            ..Default::default()
        });
        assert!(m.contains("--peer-cert-file"), "{m}");
        let m = err(ServerArgs {
            cipher_suites: Some("TLS_RSA_WITH_RC4_128_SHA".into()),
            ..Default::default()
        });
        assert!(m.contains("not supported"), "{m}");
        let m = err(ServerArgs {
            tls_min_version: Some("TLS1.1".into()),
            ..Default::default()
        });
        assert!(m.contains("TLS1.2"), "{m}");
        let c = Config::resolve(ServerArgs {
            listen_client_urls: Some("https://127.0.0.1:2379,http://127.0.0.1:2389".into()),
            auto_tls: Some(true),
            ..Default::default()
        })
        .expect("auto tls");
        assert!(c.tls.is_https(&"127.0.0.1:2379".parse().expect("addr")));
        assert!(!c.tls.is_https(&"127.0.0.1:2389".parse().expect("addr")));
        assert!(c.tls.client_listener().is_ok());
    }

    #[tokio::test]
    async fn client_common_name_reads_the_connections_verified_cn() {
        let mut req = tonic::Request::new(());
        assert_eq!(client_common_name(&req), None);
        req.extensions_mut().insert(ConnInfo {
            transport: TcpConnectInfo {
                local_addr: None,
                remote_addr: None,
            },
            client_cn: Some("alice".to_string()),
        });
        assert_eq!(client_common_name(&req).as_deref(), Some("alice"));
    }

    /// Answers any call with the caller's client CN in an `x-cn` header.
    #[derive(Clone)]
    struct Echo;

    impl tonic::server::NamedService for Echo {
        const NAME: &'static str = "test.Echo";
    }

    impl tower_service::Service<http::Request<tonic::body::Body>> for Echo {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
            let (parts, _) = req.into_parts();
            let req = tonic::Request::from_parts(
                tonic::metadata::MetadataMap::new(),
                parts.extensions,
                (),
            );
            let cn = client_common_name(&req).unwrap_or_else(|| "-".into());
            let resp = http::Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "0")
                .header("x-cn", cn)
                .body(tonic::body::Body::empty())
                .expect("response");
            std::future::ready(Ok(resp))
        }
    }

    #[tokio::test]
    async fn a_grpc_handler_sees_the_client_certificates_cn_through_tonic() {
        use futures::StreamExt;
        use std::path::Path;
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).expect("ca");
        std::fs::write(d.join("ca.pem"), ca.pem()).expect("write");
        for (file, cn) in [("server", "server"), ("client", "alice")] {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut p = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).expect("p");
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            let cert = p.signed_by(&key, &ca, &ca_key).expect("sign");
            std::fs::write(d.join(format!("{file}.pem")), cert.pem()).expect("write");
            std::fs::write(d.join(format!("{file}-key.pem")), key.serialize_pem()).expect("write");
        }
        let side = |who: &str, d: &Path| TlsSettings {
            cert_file: Some(d.join(format!("{who}.pem"))),
            key_file: Some(d.join(format!("{who}-key.pem"))),
            trusted_ca_file: Some(d.join("ca.pem")),
            client_cert_auth: true,
            ..Default::default()
        };
        let server = side("server", d)
            .server_config(&[berth_net::tls::settings::ALPN_H2], "test")
            .expect("server config");
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = tcp.local_addr().expect("addr").port();
        let accepted = futures::stream::unfold(tcp, |tcp| async move {
            Some((tcp.accept().await.map(|(c, _)| c), tcp))
        })
        .boxed();
        let conns = berth_net::tls::tls_incoming(accepted, Arc::new(server), None);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(Echo)
                .serve_with_incoming(conns),
        );
        let client = side("client", d).client_config("test").expect("client");
        let mut channel =
            tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
                .expect("endpoint")
                .connect_with_connector(Connector::new(Some(Arc::new(client))))
                .await
                .expect("connect");
        std::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut channel, cx))
            .await
            .expect("ready");
        let req = http::Request::builder()
            .uri(format!("https://127.0.0.1:{port}/test.Echo/Call"))
            .header("content-type", "application/grpc")
            .body(tonic::body::Body::empty())
            .expect("request");
        let resp = tower_service::Service::call(&mut channel, req)
            .await
            .expect("call");
        assert_eq!(
            resp.headers().get("x-cn").and_then(|v| v.to_str().ok()),
            Some("alice")
        );
    }
}

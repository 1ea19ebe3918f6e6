//! TLS to upstream nodes (schemes `https` and `grpcs`). An upstream's `tls` becomes client
//! configurations here: the node's certificate checked against the trusted roots (the
//! system's and `--check-ca-file`'s) or not, and a client certificate shown or not. Each
//! distinct setting is built once and kept across snapshots while some upstream uses it, so
//! TLS sessions resume across route changes. The server name sent and checked is the `Host`
//! the node gets, its port left out (APISIX's `upstream_host`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use berth_gateway::{ClientCert, NodeTls, Ssl};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The client configurations of one `tls` setting.
#[derive(Debug)]
pub struct TlsConfig {
    /// For HTTP/1.1 nodes (ALPN `http/1.1`).
    pub h1: Arc<ClientConfig>,
    /// For gRPC nodes (ALPN `h2`).
    pub h2: Arc<ClientConfig>,
    /// Tells settings apart in pool keys.
    pub id: u64,
}

/// A setting as built: verify, and the client certificate and key (PEM).
type Setting = (bool, Option<(String, String)>);

/// Built configurations by setting. See the module docs.
#[derive(Default)]
pub struct TlsConfigs {
    roots: OnceLock<Arc<RootCertStore>>,
    built: Mutex<HashMap<Setting, Arc<TlsConfig>>>,
}

impl TlsConfigs {
    /// Sets the roots nodes' certificates are checked against (once, at start).
    pub fn set_roots(&self, roots: Arc<RootCertStore>) {
        let _ = self.roots.set(roots);
    }

    /// The configurations for `tls`, its client certificate looked up in `ssls` when named
    /// by ID; why not, when the certificate is missing or does not parse.
    pub fn get(
        &self,
        tls: &NodeTls,
        ssls: &BTreeMap<String, Ssl>,
    ) -> Result<Arc<TlsConfig>, String> {
        let pem = client_pem(tls, ssls)?;
        let setting: Setting = (tls.verify, pem.map(|(c, k)| (c.to_string(), k.to_string())));
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = built.get(&setting) {
            return Ok(c.clone());
        }
        // Tells settings apart in pool keys (the setting itself keys this map).
        let id = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            setting.hash(&mut h);
            h.finish()
        };
        let roots = self
            .roots
            .get()
            .cloned()
            .unwrap_or_else(|| Arc::new(RootCertStore::empty()));
        let config = |alpn: &[u8]| client_config(tls.verify, pem, &roots, alpn).map(Arc::new);
        let made = Arc::new(TlsConfig {
            h1: config(b"http/1.1")?,
            h2: config(b"h2")?,
            id,
        });
        built.insert(setting, made.clone());
        Ok(made)
    }

    /// Forgets the settings whose configurations are not in `used` (by ID).
    pub fn retain(&self, used: &HashSet<u64>) {
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        built.retain(|_, c| used.contains(&c.id));
    }
}

/// The client certificate and key (PEM) `tls` shows nodes, if any: inline, or an enabled
/// ssl of type client.
pub fn client_pem<'a>(
    tls: &'a NodeTls,
    ssls: &'a BTreeMap<String, Ssl>,
) -> Result<Option<(&'a str, &'a str)>, String> {
    Ok(match &tls.client_cert {
        None => None,
        Some(ClientCert::Inline { cert, key }) => Some((cert.as_str(), key.as_str())),
        Some(ClientCert::Ssl(id)) => match ssls.get(id) {
            Some(s) if s.client && s.enabled => Some((s.cert.as_str(), s.key.as_str())),
            Some(s) if s.client => return Err(format!("ssl {id:?} is disabled")),
            Some(_) => return Err(format!("ssl {id:?} is not of type client")),
            None => return Err(format!("ssl {id:?} does not exist")),
        },
    })
}

/// Checks a client certificate and key given in PEM (at write time).
pub fn check_client_pem(cert: &str, key: &str) -> Result<(), String> {
    super::sni::certified(cert, key)
        .map(|_| ())
        .map_err(|e| format!("tls.client_cert/client_key: {e}"))
}

/// A client configuration: the server's certificate checked against `roots` (or not), a
/// client certificate shown when given, `alpn` offered when not empty.
pub(crate) fn client_config(
    verify: bool,
    pem: Option<(&str, &str)>,
    roots: &Arc<RootCertStore>,
    alpn: &[u8],
) -> Result<ClientConfig, String> {
    let crypto = Arc::new(berth_net::tls::provider());
    let builder = ClientConfig::builder_with_provider(crypto.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = if verify {
        builder.with_root_certificates(roots.clone())
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(berth_net::tls::SkipVerify::new(crypto)))
    };
    let mut config = match pem {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let (chain, key) = super::sni::parse_pem(cert, key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))?
        }
    };
    if !alpn.is_empty() {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    Ok(config)
}

/// Dials nodes over TLS for hyper-util's client (gRPC, and upgrades to `https` nodes):
/// TCP by the wrapped connector, then TLS under one server name.
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl Connector {
    /// TLS with `config` under `name`, over `http`'s connections.
    pub fn new(http: HttpConnector, config: Arc<ClientConfig>, name: ServerName<'static>) -> Self {
        Connector { http, config, name }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<NodeIo>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<NodeIo>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tcp = self.http.call(uri);
        let (config, name) = (self.config.clone(), self.name.clone());
        Box::pin(async move {
            let tcp = tcp.await?.into_inner();
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            Ok(TokioIo::new(NodeIo(tls)))
        })
    }
}

/// A TLS connection to a node, as hyper-util's client wants it.
pub struct NodeIo(tokio_rustls::client::TlsStream<TcpStream>);

impl Connection for NodeIo {
    fn connected(&self) -> Connected {
        let (tcp, session) = self.0.get_ref();
        let connected = tcp.connected();
        if session.alpn_protocol() == Some(b"h2") {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl AsyncRead for NodeIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for NodeIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// The server name for a `Host` value (`name`, `name:port`, `[v6]:port`).
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    ServerName::try_from(name.to_ascii_lowercase()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_leave_the_port_out() {
        assert_eq!(
            server_name("api.example:8443"),
            ServerName::try_from("api.example").ok()
        );
        assert_eq!(
            server_name("api.example"),
            ServerName::try_from("api.example").ok()
        );
        assert_eq!(server_name("[::1]:443"), ServerName::try_from("::1").ok());
        assert_eq!(
            server_name("10.0.0.1:443"),
            ServerName::try_from("10.0.0.1").ok()
        );
        assert_eq!(server_name("bad name:1"), None);
    }

    #[test]
    fn settings_are_built_once_and_client_certificates_checked() {
        let configs = TlsConfigs::default();
        let plain = NodeTls::default();
        let ssls = BTreeMap::new();
        let a = configs.get(&plain, &ssls).expect("built");
        let b = configs.get(&plain, &ssls).expect("built");
        assert!(Arc::ptr_eq(&a, &b), "one build per setting");
        let missing = NodeTls {
            verify: true,
            client_cert: Some(ClientCert::Ssl("nope".into())),
        };
        assert!(configs.get(&missing, &ssls).is_err());
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["client".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        assert!(check_client_pem(&cert.pem(), &key.serialize_pem()).is_ok());
        let other = rcgen::KeyPair::generate().expect("key");
        assert!(check_client_pem(&cert.pem(), &other.serialize_pem()).is_err());
        assert!(check_client_pem("junk", &key.serialize_pem()).is_err());
        let inline = NodeTls {
            verify: false,
            client_cert: Some(ClientCert::Inline {
                cert: cert.pem(),
                key: key.serialize_pem(),
            }),
        };
        let c = configs.get(&inline, &ssls).expect("built");
        assert_ne!(c.id, a.id);
        configs.retain(&HashSet::from([c.id]));
        let again = configs.get(&plain, &ssls).expect("built");
        assert!(!Arc::ptr_eq(&a, &again), "forgotten once unused");
    }
}

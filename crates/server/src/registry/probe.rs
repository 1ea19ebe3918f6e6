//! One run of an active check: an HTTP request, a TCP connect, or a gRPC health call, each
//! bounded by the check's timeout, answered as a status and Consul's output text. HTTPS and
//! gRPC-over-TLS targets are verified against [`roots`] (the system's trusted roots and
//! `--check-ca-file`), unless the check says TLSSkipVerify.

use std::sync::Arc;
use std::time::Duration;

use berth_proto::grpc_health::health_check_response::ServingStatus;
use berth_proto::grpc_health::health_client::HealthClient;
use berth_proto::grpc_health::HealthCheckRequest;
use berth_registry::register::{floor_char_boundary, MAX_OUTPUT};
use berth_registry::{CheckKind, CheckStatus};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

/// What one run found.
pub type Outcome = (CheckStatus, String);

/// The roots that verify check targets: the system's (as Consul's Go checks trust them) and
/// those of `ca_file`. A system store that cannot be read leaves only `ca_file`'s.
pub fn roots(ca_file: Option<&std::path::Path>) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "health checks: a system root certificate was not read");
    }
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if let Some(ca) = ca_file {
        // Read and checked when the configuration was resolved; a file broken since then
        // leaves the system's roots.
        match berth_net::tls::files::trust_roots(ca) {
            Ok(extra) => roots.roots.extend(extra.roots),
            Err(e) => tracing::error!(error = %e, "health checks: --check-ca-file not read"),
        }
    }
    tracing::debug!(
        system = added,
        total = roots.len(),
        "health checks: TLS roots"
    );
    Arc::new(roots)
}

/// Runs `kind` once within `timeout`. `agent` names this member in the HTTP `User-Agent`;
/// `roots` verify TLS targets.
pub async fn run(
    kind: &CheckKind,
    timeout: Duration,
    agent: &str,
    roots: &Arc<rustls::RootCertStore>,
) -> Outcome {
    let probe = async {
        match kind {
            CheckKind::Http {
                url,
                method,
                headers,
                body,
                tls_skip_verify,
                tls_server_name,
            } => {
                http(
                    url,
                    method,
                    headers,
                    body,
                    *tls_skip_verify,
                    tls_server_name,
                    agent,
                    roots,
                )
                .await
            }
            CheckKind::Tcp { address } => match TcpStream::connect(address.as_str()).await {
                Ok(_) => (
                    CheckStatus::Passing,
                    format!("TCP connect {address}: Success"),
                ),
                Err(e) => (CheckStatus::Critical, format!("dial tcp {address}: {e}")),
            },
            CheckKind::Grpc {
                target,
                use_tls,
                tls_skip_verify,
            } => grpc(target, *use_tls, *tls_skip_verify, roots).await,
            CheckKind::Ttl { .. } | CheckKind::External => {
                (CheckStatus::Critical, "not an active check".into())
            }
        }
    };
    match tokio::time::timeout(timeout, probe).await {
        Ok(outcome) => outcome,
        Err(_) => (
            CheckStatus::Critical,
            format!(
                "check timed out after {}",
                humantime::format_duration(timeout)
            ),
        ),
    }
}

fn tls_config(
    skip_verify: bool,
    alpn: &[u8],
    roots: &Arc<rustls::RootCertStore>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    crate::gateway::node_tls::client_config(!skip_verify, None, roots, alpn).map(Arc::new)
}

async fn tls_stream(
    tcp: TcpStream,
    host: &str,
    server_name: &str,
    skip_verify: bool,
    alpn: &[u8],
    roots: &Arc<rustls::RootCertStore>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let cfg = tls_config(skip_verify, alpn, roots)?;
    let name = if server_name.is_empty() {
        host
    } else {
        server_name
    };
    let name = rustls::pki_types::ServerName::try_from(name.to_string())
        .map_err(|e| format!("server name {name:?}: {e}"))?;
    handshake(tcp, name, cfg).await
}

async fn handshake(
    tcp: TcpStream,
    name: ServerName<'static>,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))
}

fn truncate(mut s: String) -> String {
    s.truncate(floor_char_boundary(&s, MAX_OUTPUT));
    s
}

#[allow(clippy::too_many_arguments)]
async fn http(
    url: &str,
    method: &str,
    headers: &std::collections::BTreeMap<String, Vec<String>>,
    body: &str,
    skip_verify: bool,
    server_name: &str,
    agent: &str,
    roots: &Arc<rustls::RootCertStore>,
) -> Outcome {
    let failed = |e: String| (CheckStatus::Critical, format!("{method} {url}: {e}"));
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => return failed(format!("invalid URL: {e}")),
    };
    let https = uri.scheme_str() == Some("https");
    let Some(host) = uri.host().map(|h| h.trim_matches(['[', ']']).to_string()) else {
        return failed("URL has no host".into());
    };
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = match TcpStream::connect((host.as_str(), port)).await {
        Ok(s) => s,
        Err(e) => return failed(e.to_string()),
    };
    let _ = tcp.set_nodelay(true);
    let mut req = http::Request::builder()
        .method(method)
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(
            http::header::HOST,
            uri.authority().map_or(host.as_str(), |a| a.as_str()),
        )
        .header(
            http::header::USER_AGENT,
            format!("Consul Health Check (berth {agent})"),
        )
        .header(http::header::ACCEPT, "text/plain, text/*, */*");
    for (k, vs) in headers {
        for v in vs {
            req = req.header(k.as_str(), v.as_str());
        }
    }
    let req = match req.body(http_body_util::Full::new(bytes::Bytes::from(
        body.to_string(),
    ))) {
        Ok(r) => r,
        Err(e) => return failed(format!("invalid request: {e}")),
    };
    let resp = if https {
        let tls = match tls_stream(tcp, &host, server_name, skip_verify, b"http/1.1", roots).await {
            Ok(s) => s,
            Err(e) => return failed(e),
        };
        send(TokioIo::new(tls), req, MAX_OUTPUT).await
    } else {
        send(TokioIo::new(tcp), req, MAX_OUTPUT).await
    };
    let (status, text) = match resp {
        Ok((status, body)) => (status, String::from_utf8_lossy(&body).into_owned()),
        Err(e) => return failed(e),
    };
    let outcome = match status.as_u16() {
        200..=299 => CheckStatus::Passing,
        429 => CheckStatus::Warning,
        _ => CheckStatus::Critical,
    };
    (
        outcome,
        truncate(format!("HTTP {method} {url}: {status} Output: {text}")),
    )
}

/// GETs `url` (`http://` or `https://`, verified by `roots`) and returns its body when the
/// answer is a 2xx, reading at most `limit` bytes (what a JWKS document is fetched with).
pub(crate) async fn fetch(
    url: &str,
    roots: &Arc<rustls::RootCertStore>,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("invalid URL: {e}"))?;
    let https = uri.scheme_str() == Some("https");
    let host = uri
        .host()
        .map(|h| h.trim_matches(['[', ']']).to_string())
        .ok_or("URL has no host")?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let connect = TcpStream::connect((host.as_str(), port));
    let tcp = tokio::time::timeout(FETCH_TIMEOUT, connect)
        .await
        .map_err(|_| "connecting timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let req = http::Request::builder()
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(
            http::header::HOST,
            uri.authority().map_or(host.as_str(), |a| a.as_str()),
        )
        .header(http::header::ACCEPT, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .map_err(|e| format!("invalid request: {e}"))?;
    let exchange = async {
        if https {
            let tls = tls_stream(tcp, &host, "", false, b"http/1.1", roots).await?;
            send(TokioIo::new(tls), req, limit).await
        } else {
            send(TokioIo::new(tcp), req, limit).await
        }
    };
    let (status, body) = tokio::time::timeout(FETCH_TIMEOUT, exchange)
        .await
        .map_err(|_| "timed out".to_string())??;
    if !status.is_success() {
        return Err(format!("answered {status}"));
    }
    Ok(body)
}

/// How a gateway probe speaks TLS: the server name it asks for, and its client
/// configuration (the node's certificate verified or not, a client certificate shown or not,
/// the ALPN protocol offered).
pub(crate) type ProbeTls = (ServerName<'static>, Arc<rustls::ClientConfig>);

/// What one HTTP probe of a gateway node got: its status, or why there was none (connecting
/// or the exchange failed). `host`: the `Host` sent. The caller bounds the time.
pub(crate) async fn http_status(
    addr: &str,
    tls: Option<ProbeTls>,
    host: &str,
    path: &str,
    headers: &[(String, String)],
) -> Result<http::StatusCode, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let mut req = http::Request::builder()
        .uri(path)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "berth gateway health check");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .map_err(|e| format!("invalid request: {e}"))?;
    let (status, _) = match tls {
        Some((name, cfg)) => {
            let tls = handshake(tcp, name, cfg).await?;
            send(TokioIo::new(tls), req, 0).await?
        }
        None => send(TokioIo::new(tcp), req, 0).await?,
    };
    Ok(status)
}

/// How long [`fetch`] may take in all.
const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

async fn send<T>(
    io: TokioIo<T>,
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
    limit: usize,
) -> Result<(http::StatusCode, Vec<u8>), String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut text = Vec::new();
    // Only the first `limit` bytes are kept (Consul's output limit for checks); the rest is
    // not read.
    while text.len() < limit {
        match body.frame().await {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    text.extend_from_slice(d);
                }
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => break,
        }
    }
    text.truncate(limit);
    Ok((status, text))
}

async fn grpc(
    target: &str,
    use_tls: bool,
    skip_verify: bool,
    roots: &Arc<rustls::RootCertStore>,
) -> Outcome {
    let (addr, service) = target.split_once('/').unwrap_or((target, ""));
    let failed = |e: String| (CheckStatus::Critical, format!("gRPC {target}: {e}"));
    let tls = if use_tls {
        let Some(name) = crate::gateway::node_tls::server_name(addr) else {
            return failed(format!("{addr:?} is no TLS server name"));
        };
        match tls_config(skip_verify, b"h2", roots) {
            Ok(cfg) => Some((name, cfg)),
            Err(e) => return failed(e),
        }
    } else {
        None
    };
    match grpc_status(addr, service, tls, None).await {
        Ok(Ok(ServingStatus::Serving)) => (
            CheckStatus::Passing,
            format!("gRPC check {target}: success"),
        ),
        Ok(Ok(other)) => failed(format!("status {}", other.as_str_name())),
        Ok(Err(e)) | Err(e) => failed(e),
    }
}

/// What `grpc.health.v1` at `addr` says of `service` ("": the whole server): its status, or
/// the RPC error it answered; the outer error when there was no answer (connecting failed).
/// `tls`: over TLS, as it says; `authority`: the `:authority` sent (else `addr`). The caller
/// bounds the time.
pub(crate) async fn grpc_status(
    addr: &str,
    service: &str,
    tls: Option<ProbeTls>,
    authority: Option<&str>,
) -> Result<Result<ServingStatus, String>, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| e.to_string())?;
    let endpoint = match authority {
        Some(a) => endpoint.origin(
            format!("{scheme}://{a}")
                .parse()
                .map_err(|e| format!("authority {a:?}: {e}"))?,
        ),
        None => endpoint,
    };
    let channel = match tls {
        None => {
            endpoint
                .connect_with_connector(berth_net::tls::Connector::new(None))
                .await
        }
        Some((name, cfg)) => {
            let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
            http.enforce_http(false);
            http.set_nodelay(true);
            endpoint
                .connect_with_connector(crate::gateway::node_tls::Connector::new(http, cfg, name))
                .await
        }
    }
    .map_err(|e| format!("connect: {e}"))?;
    match HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
    {
        Ok(r) => Ok(Ok(
            ServingStatus::try_from(r.get_ref().status).unwrap_or(ServingStatus::Unknown)
        )),
        Err(s) => Ok(Err(format!(
            "rpc error: code = {:?} desc = {}",
            s.code(),
            s.message()
        ))),
    }
}

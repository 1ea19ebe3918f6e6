//! The HTTP client of the registry commands: one HTTP/1.1 request per call (hyper) to
//! `--http-addr`, over TLS for `https://` addresses (`--cacert`, `--cert`, `--key`,
//! `--insecure-skip-tls-verify`), with `--token` sent as `X-Consul-Token`.
//!
//! Paths are built with [`ApiPath`], which percent-encodes each segment and query value. A
//! non-2xx answer becomes an error carrying the HTTP status and the server's text.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, CONTENT_TYPE, HOST, USER_AGENT};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;
use tower_service::Service as _;

use crate::cli::conn::DEADLINE_EXCEEDED;

/// Largest answer read (a big catalog is a few MiB; this only stops a runaway server).
const MAX_BODY: usize = 256 * 1024 * 1024;

/// Characters left as they are in a path segment or query value: RFC 3986's unreserved set.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Encodes `s` for a path segment or a query value.
pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, UNRESERVED).to_string()
}

/// A request path with its query, every piece encoded as it is added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPath {
    path: String,
    query: Vec<String>,
}

impl ApiPath {
    /// A fixed path such as `/v1/catalog/services` (written by this program, not encoded).
    pub fn new(fixed: &str) -> Self {
        Self {
            path: fixed.trim_end_matches('/').to_string(),
            query: Vec::new(),
        }
    }

    /// Appends one segment, encoded (a `/` in it stays inside the segment).
    pub fn seg(mut self, segment: &str) -> Self {
        self.path.push('/');
        self.path.push_str(&encode(segment));
        self
    }

    /// Adds `key=value`, the value encoded.
    pub fn query(mut self, key: &str, value: &str) -> Self {
        self.query.push(format!("{key}={}", encode(value)));
        self
    }

    /// Adds `key=value` when there is a value.
    pub fn query_opt(self, key: &str, value: Option<&str>) -> Self {
        match value {
            Some(v) => self.query(key, v),
            None => self,
        }
    }

    /// Adds a bare flag such as `passing` when `on`.
    pub fn flag(mut self, key: &str, on: bool) -> Self {
        if on {
            self.query.push(key.to_string());
        }
        self
    }

    /// The path and query as sent.
    pub fn as_string(&self) -> String {
        if self.query.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, self.query.join("&"))
        }
    }
}

/// Where and how the registry commands connect: `--http-addr` with the shared TLS flags,
/// `--token` and the timeouts. Nothing is read or checked until [`Target::client`].
#[derive(Debug, Clone)]
pub struct Target {
    /// `--http-addr` (or `CONSUL_HTTP_ADDR`) as given.
    pub addr: String,
    /// `--token` (or `CONSUL_HTTP_TOKEN`).
    pub token: Option<String>,
    /// The TLS flags, when any was given.
    pub tls: Option<berth_net::tls::TlsSettings>,
    /// `--dial-timeout`: connecting (and the TLS handshake).
    pub dial_timeout: Duration,
    /// `--command-timeout`: one request and its answer.
    pub command_timeout: Duration,
}

impl Target {
    /// A client for this target: the address parsed, TLS files read.
    pub fn client(&self) -> Result<Client> {
        let (scheme, authority) = split_addr(&self.addr, self.tls.is_some())?;
        let https = scheme == "https";
        let tls = match (&self.tls, https) {
            (Some(settings), true) => {
                let mut config = settings
                    .client_config("--cacert (or --insecure-skip-tls-verify)")
                    .map_err(|e| anyhow!("{e}"))?;
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(Arc::new(config))
            }
            (None, true) => bail!(
                "--http-addr {}: https needs --cacert (or --insecure-skip-tls-verify)",
                self.addr
            ),
            (_, false) => None,
        };
        let token = match &self.token {
            Some(t) if !t.is_empty() => Some(
                HeaderValue::from_str(t)
                    .map_err(|_| anyhow!("--token: not a valid HTTP header value"))?,
            ),
            _ => None,
        };
        let base: http::Uri = format!("{scheme}://{authority}")
            .parse()
            .map_err(|e| anyhow!("invalid --http-addr {:?}: {e}", self.addr))?;
        Ok(Client {
            base,
            authority,
            connector: berth_net::tls::Connector::new(tls),
            token,
            dial_timeout: self.dial_timeout,
            command_timeout: self.command_timeout,
        })
    }
}

/// Splits `--http-addr` into scheme and `host:port`. Without a scheme it is `http`, or
/// `https` when TLS flags are given (as the etcd commands treat `--endpoints`).
fn split_addr(addr: &str, tls: bool) -> Result<(&'static str, String)> {
    let a = addr.trim();
    let (scheme, rest) = match a.split_once("://") {
        Some(("http", rest)) => ("http", rest),
        Some(("https", rest)) => ("https", rest),
        Some((other, _)) => {
            bail!("--http-addr {addr:?}: only http:// and https:// addresses are supported, not {other}://")
        }
        None if tls => ("https", a),
        None => ("http", a),
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains('?') {
        bail!("--http-addr {addr:?}: expected host:port, http://host:port or https://host:port");
    }
    Ok((scheme, rest.to_string()))
}

/// One server's Consul HTTP API.
#[derive(Debug, Clone)]
pub struct Client {
    base: http::Uri,
    authority: String,
    connector: berth_net::tls::Connector,
    token: Option<HeaderValue>,
    dial_timeout: Duration,
    command_timeout: Duration,
}

impl Client {
    /// GETs `path` and decodes the JSON answer.
    pub async fn get(&self, path: &ApiPath) -> Result<Value> {
        let body = self.send(Method::GET, path, None).await?;
        json(&body, "GET", path)
    }

    /// PUTs `path` with `body` as JSON (or nothing) and returns the raw answer (Consul's
    /// writes answer with nothing, `true`, or JSON).
    pub async fn put(&self, path: &ApiPath, body: Option<&Value>) -> Result<Bytes> {
        self.send(Method::PUT, path, body).await
    }

    /// PUTs `path` and decodes the JSON answer.
    pub async fn put_json(&self, path: &ApiPath, body: Option<&Value>) -> Result<Value> {
        let answer = self.put(path, body).await?;
        json(&answer, "PUT", path)
    }

    /// Sends `method` to `path` with `body` as JSON (or nothing) and decodes the JSON answer.
    pub async fn call(
        &self,
        method: Method,
        path: &ApiPath,
        body: Option<&Value>,
    ) -> Result<Value> {
        let what = method.to_string();
        let answer = self.send(method, path, body).await?;
        json(&answer, &what, path)
    }

    /// Sends `method` to `path` with a raw body of `content_type` and returns the raw answer
    /// (archives).
    pub async fn call_raw(
        &self,
        method: Method,
        path: &ApiPath,
        body: Bytes,
        content_type: &str,
    ) -> Result<Bytes> {
        self.exchange(method, path, Some((body, content_type)))
            .await
            .map(|(_, b)| b)
    }

    /// GETs `path` and returns the status and the raw answer, a 304 included (long polls).
    pub async fn poll(&self, path: &ApiPath) -> Result<(StatusCode, Bytes)> {
        self.exchange(Method::GET, path, None).await
    }

    /// This client with another `--command-timeout` (long polls wait longer).
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    async fn send(&self, method: Method, path: &ApiPath, body: Option<&Value>) -> Result<Bytes> {
        let payload = match body {
            Some(v) => Some((
                Bytes::from(serde_json::to_vec(v).context("encoding the request")?),
                "application/json",
            )),
            None => None,
        };
        self.exchange(method, path, payload).await.map(|(_, b)| b)
    }

    async fn exchange(
        &self,
        method: Method,
        path: &ApiPath,
        body: Option<(Bytes, &str)>,
    ) -> Result<(StatusCode, Bytes)> {
        let target = path.as_string();
        let what = format!("{method} {}{target}", self.base);
        let io = match tokio::time::timeout(
            self.dial_timeout,
            self.connector.clone().call(self.base.clone()),
        )
        .await
        {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => bail!("failed to connect to {}: {e}", self.base),
            Err(_) => bail!(
                "failed to connect to {}: {DEADLINE_EXCEEDED} (dial timeout {:?})",
                self.base,
                self.dial_timeout
            ),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(target.as_str())
            .header(HOST, self.authority.as_str())
            .header(USER_AGENT, concat!("berth/", env!("CARGO_PKG_VERSION")))
            .header(ACCEPT, "application/json");
        if let Some(t) = &self.token {
            // The same berth token speaks for Consul's API and APISIX's Admin API.
            req = req
                .header("X-Consul-Token", t.clone())
                .header("X-API-KEY", t.clone());
        }
        let payload = match body {
            Some((data, content_type)) => {
                req = req.header(CONTENT_TYPE, content_type);
                data
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| anyhow!("{what}: invalid request: {e}"))?;
        let exchange = async {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            let driver = tokio::spawn(conn);
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| anyhow!("reading the answer: {e}"))?
                .to_bytes();
            driver.abort();
            Ok::<_, anyhow::Error>((status, body))
        };
        let (status, body) = match tokio::time::timeout(self.command_timeout, exchange).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => bail!("{what}: {e:#}"),
            Err(_) => bail!("{what}: {DEADLINE_EXCEEDED}"),
        };
        if !status.is_success() && status != StatusCode::NOT_MODIFIED {
            bail!("{}", status_error(status, &body));
        }
        Ok((status, body))
    }
}

/// The error for a non-2xx answer: the status, then the server's text (Consul's errors are
/// plain text; berth's API says `{"error": ...}`).
pub fn status_error(status: StatusCode, body: &[u8]) -> String {
    let said = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        ["error", "error_msg", "message"]
            .iter()
            .find_map(|k| v.get(*k).and_then(Value::as_str).map(str::to_string))
    });
    let text = said.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let text = text.trim();
    if text.is_empty() {
        format!("Unexpected response code: {status}")
    } else {
        format!("Unexpected response code: {status}: {text}")
    }
}

fn json(body: &[u8], method: &str, path: &ApiPath) -> Result<Value> {
    serde_json::from_slice(body).map_err(|e| {
        anyhow!(
            "{method} {}: the answer is not JSON ({e}): {}",
            path.as_string(),
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_and_query_values_are_encoded() {
        let p = ApiPath::new("/v1/agent/check/pass")
            .seg("service:web/1 x")
            .query("note", "a&b=c d")
            .flag("passing", true)
            .flag("stale", false)
            .query_opt("tag", None);
        assert_eq!(
            p.as_string(),
            "/v1/agent/check/pass/service%3Aweb%2F1%20x?note=a%26b%3Dc%20d&passing"
        );
        assert_eq!(encode("ünï-._~"), "%C3%BCn%C3%AF-._~");
    }

    #[test]
    fn addresses_take_a_scheme_or_default_to_http() {
        assert_eq!(
            split_addr("127.0.0.1:8500", false).ok(),
            Some(("http", "127.0.0.1:8500".to_string()))
        );
        assert_eq!(
            split_addr("127.0.0.1:8500", true).ok(),
            Some(("https", "127.0.0.1:8500".to_string()))
        );
        assert_eq!(
            split_addr("https://consul.local:8501/", false).ok(),
            Some(("https", "consul.local:8501".to_string()))
        );
        assert!(split_addr("unix:///tmp/consul.sock", false).is_err());
        assert!(split_addr("http://", false).is_err());
        assert!(split_addr("http://a:1/v1", false).is_err());
    }

    #[test]
    fn https_without_tls_flags_is_refused_before_dialing() {
        let t = Target {
            addr: "https://127.0.0.1:8501".into(),
            token: None,
            tls: None,
            dial_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
        };
        let e = t.client().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("--cacert"), "{e}");
    }

    #[test]
    fn errors_carry_status_and_server_text() {
        assert_eq!(
            status_error(StatusCode::NOT_FOUND, b"Unknown service ID \"x\"\n"),
            "Unexpected response code: 404 Not Found: Unknown service ID \"x\""
        );
        assert_eq!(
            status_error(StatusCode::FORBIDDEN, b""),
            "Unexpected response code: 403 Forbidden"
        );
    }
}

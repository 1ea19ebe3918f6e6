//! The gateway's data plane: HTTP/1.1 and HTTP/2 (h2c, or ALPN over TLS) from clients,
//! matched against the routing snapshot, checked by the route's plugins (ip-restriction,
//! CORS, key-auth or basic-auth, limit-count), and proxied to a node of the route's upstream
//! over pooled keep-alive connections shared by every worker thread: HTTP/1.1 to `http`
//! upstreams through [`super::pool`], driven in the request's own task; HTTP/2 to `grpc`
//! ones (trailers and streaming both ways) and upgrades through hyper-util's client. A
//! WebSocket upgrade passes on routes that enable it, and the two connections are then
//! spliced.
//!
//! Requests are read defensively: conflicting `Content-Length` and `Transfer-Encoding`,
//! repeated `Content-Length` or `Host`, or any transfer coding but `chunked` is a 400 with
//! no upstream call. Hop-by-hop headers are not forwarded; `X-Forwarded-*`, `X-Real-IP` and
//! a `traceparent` (made when missing) are.
//!
//! Request bodies are read ahead up to 64 KiB before a node is called (as nginx buffers
//! them): a malformed body is a 400 that reaches no node, and a request whose body ended
//! within that is retried on another node when connecting failed, or, for idempotent
//! methods, when the node failed before answering; never after a timeout, at most `retries` times within
//! `retry_timeout`, and only while the retry budget (a fifth of recent requests) lasts, so
//! retries cannot multiply an outage.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_gateway::balance::Outcome;
use berth_gateway::model::{HashOn, PassHost};
use berth_gateway::plugins::{Cors, HeaderEdits, LimitKey, LimitPolicy};
use berth_gateway::table::Target;
use berth_gateway::vars::Vars;
use bytes::Bytes;
use futures::StreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body as _, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::limit::Verdict;
use super::pool::NodeBody;
use super::{Gateway, LiveUpstream, Snapshot};
use crate::core::Core;
use crate::listen::ClientAddr;
use crate::node::Accepted;

/// A body the gateway answers with: the node's as it streams in, or bytes of its own.
pub type Body = Either<NodeBody, Full<Bytes>>;

/// A request body sent to a node: what was read ahead, then the rest as it streams in; or
/// a whole body kept for retries.
pub type ReqBody = Either<Prefixed, Full<Bytes>>;

/// The part of a body read ahead, then the rest of it; past `limit` bytes in all
/// (client-control's), it ends in [`TooLarge`].
pub struct Prefixed {
    prefix: std::collections::VecDeque<hyper::body::Frame<Bytes>>,
    /// The rest; taken to be drained (see [`linger`]) when the body passes the limit.
    rest: Option<Incoming>,
    /// The limit, and what is set when the body passes it (the error itself may not reach
    /// the exchange's outcome: hyper's HTTP/2 client only resets the stream).
    limit: Option<(u64, Arc<std::sync::atomic::AtomicBool>)>,
    passed: u64,
}

impl Prefixed {
    fn new(prefix: std::collections::VecDeque<hyper::body::Frame<Bytes>>, rest: Incoming) -> Self {
        Prefixed {
            prefix,
            rest: Some(rest),
            limit: None,
            passed: 0,
        }
    }
}

/// A streamed request body grew past client-control's limit.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than {0} bytes")]
pub struct TooLarge(u64);

impl hyper::body::Body for Prefixed {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        let frame = match self.prefix.pop_front() {
            Some(f) => f,
            None => match self
                .rest
                .as_mut()
                .map(|r| std::pin::Pin::new(r).poll_frame(cx))
            {
                None => return Poll::Ready(None),
                Some(Poll::Ready(Some(Ok(f)))) => f,
                Some(Poll::Ready(Some(Err(e)))) => return Poll::Ready(Some(Err(e.into()))),
                Some(Poll::Ready(None)) => return Poll::Ready(None),
                Some(Poll::Pending) => return Poll::Pending,
            },
        };
        self.passed += frame.data_ref().map_or(0, |d| d.len() as u64);
        if let Some((limit, tripped)) = self.limit.as_ref().filter(|(l, _)| self.passed > *l) {
            tripped.store(true, std::sync::atomic::Ordering::Relaxed);
            let limit = *limit;
            if let Some(rest) = self.rest.take() {
                tokio::spawn(linger(rest));
            }
            return Poll::Ready(Some(Err(Box::new(TooLarge(limit)))));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }
}

/// How long a refused request's body is read and dropped at most (nginx's
/// `lingering_time`), and how long one read may wait (its `lingering_timeout`).
const LINGER_TIME: Duration = Duration::from_secs(30);
const LINGER_IDLE: Duration = Duration::from_secs(5);

/// The 413 of a body over `max` bytes; the connection closes after it, once `rest` (what
/// the client still sends) is drained (see [`linger`]).
fn too_large(max: u64, rest: Option<Incoming>) -> Response<Body> {
    if let Some(rest) = rest {
        tokio::spawn(linger(rest));
    }
    error_closing(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than {max} bytes"),
    )
}

/// Reads and drops the rest of a request body the gateway refused (a 413), as nginx's
/// lingering close does: a client still sending its upload then reads the answer, where
/// closing with its data unread would reset the connection under it. Held while it runs,
/// the body keeps hyper reading the connection; it closes when the body ends or either
/// bound passes.
async fn linger(mut body: Incoming) {
    let until = tokio::time::Instant::now() + LINGER_TIME;
    let mut drained = 0u64;
    loop {
        let wait = until.min(tokio::time::Instant::now() + LINGER_IDLE);
        match tokio::time::timeout_at(wait, body.frame()).await {
            Ok(Some(Ok(f))) => drained += f.data_ref().map_or(0, |d| d.len() as u64),
            Ok(Some(Err(_)) | None) => break,
            Err(_) => {
                tracing::debug!(drained, "gateway: lingering on a refused body timed out");
                return;
            }
        }
    }
    tracing::debug!(drained, "gateway: a refused body drained");
}

/// What reading a body ahead found.
enum ReadAhead {
    /// The whole body.
    Whole(Bytes),
    /// More than the read-ahead: what was read, and the rest.
    Longer(Prefixed),
}

/// Reads `body` until it ends or passes `max` bytes.
async fn read_ahead(mut body: Incoming, max: usize) -> Result<ReadAhead, hyper::Error> {
    let mut frames: std::collections::VecDeque<hyper::body::Frame<Bytes>> =
        std::collections::VecDeque::new();
    let mut size = 0;
    while size <= max {
        match body.frame().await {
            None => {
                let mut whole = bytes::BytesMut::with_capacity(size);
                for f in frames {
                    if let Ok(d) = f.into_data() {
                        whole.extend_from_slice(&d);
                    }
                }
                return Ok(ReadAhead::Whole(whole.freeze()));
            }
            Some(f) => {
                let f = f?;
                if f.is_trailers() {
                    // Trailers are kept by streaming the body as it came.
                    frames.push_back(f);
                    return Ok(ReadAhead::Longer(Prefixed::new(frames, body)));
                }
                size += f.data_ref().map_or(0, |d| d.len());
                frames.push_back(f);
            }
        }
    }
    Ok(ReadAhead::Longer(Prefixed::new(frames, body)))
}

/// Largest request body kept so the request can be retried.
const REPLAYABLE_MAX: usize = 64 * 1024;
/// How long open connections may finish their requests at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Idle upstream connections are closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(60);
/// Idle upstream connections kept per node.
const POOL_MAX_IDLE: usize = 512;

/// Upstream HTTP clients by connect timeout and protocol, and for TLS by setting and server
/// name too, each with its own pool, shared by every request and every snapshot. gRPC
/// clients are pinned to one node each (see [`Pinned`]).
#[derive(Default)]
pub struct Clients {
    plain: Mutex<HashMap<PlainClientKey, Client<Pinned<HttpConnector>, ReqBody>>>,
    tls: Mutex<HashMap<TlsClientKey, Client<Pinned<super::node_tls::Connector>, ReqBody>>>,
}

type PlainClientKey = (Duration, bool, Option<String>);
type TlsClientKey = (Duration, bool, u64, String, Option<String>);

/// Clients kept at most in each map; past that it starts afresh (requests under way keep
/// theirs). Server names may come from requests' hosts and pinned nodes from the registry,
/// so their number has no other bound.
const TLS_CLIENTS_MAX: usize = 256;
const PLAIN_CLIENTS_MAX: usize = 4096;

/// A connector that dials one node whatever authority the request's URI names: a gRPC
/// request's URI carries the `:authority` the node is to get (`pass_host`'s host, as APISIX
/// sends it), and hyper-util's client dials (and pools by) the URI's authority. Unpinned, it
/// dials the URI's authority.
#[derive(Clone)]
pub struct Pinned<C> {
    inner: C,
    node: Option<http::uri::Authority>,
}

impl<C> tower_service::Service<Uri> for Pinned<C>
where
    C: tower_service::Service<Uri>,
{
    type Response = C::Response;
    type Error = C::Error;
    type Future = C::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), C::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> C::Future {
        let uri = match &self.node {
            None => uri,
            Some(node) => {
                let mut parts = uri.into_parts();
                parts.authority = Some(node.clone());
                // Scheme and authority are both set, so this cannot fail.
                Uri::from_parts(parts).unwrap_or_default()
            }
        };
        self.inner.call(uri)
    }
}

/// A pooled client for nodes in plain TCP or over TLS.
enum NodeClient {
    Plain(Client<Pinned<HttpConnector>, ReqBody>),
    Tls(Client<Pinned<super::node_tls::Connector>, ReqBody>),
}

impl NodeClient {
    fn request(&self, req: Request<ReqBody>) -> hyper_util::client::legacy::ResponseFuture {
        match self {
            NodeClient::Plain(c) => c.request(req),
            NodeClient::Tls(c) => c.request(req),
        }
    }
}

impl Clients {
    /// The client connecting within `connect`, speaking HTTP/2 (`h2`) or HTTP/1.1, over TLS
    /// with `tls`'s configuration under its server name when given, dialing `node` whatever
    /// the request's URI names when given.
    fn get(
        &self,
        connect: Duration,
        h2: bool,
        tls: Option<(
            &super::node_tls::TlsConfig,
            &rustls::pki_types::ServerName<'static>,
        )>,
        node: Option<&http::uri::Authority>,
    ) -> NodeClient {
        let connector = || {
            let mut c = HttpConnector::new();
            c.set_nodelay(true);
            c.set_connect_timeout(Some(connect));
            c.enforce_http(tls.is_none());
            c
        };
        let builder = || {
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_idle_timeout(POOL_IDLE)
                .pool_max_idle_per_host(POOL_MAX_IDLE)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .set_host(false)
                .http2_only(h2);
            b
        };
        let pinned = node.map(|a| a.as_str().to_string());
        fn pin<C>(inner: C, node: Option<&http::uri::Authority>) -> Pinned<C> {
            Pinned {
                inner,
                node: node.cloned(),
            }
        }
        let Some((config, name)) = tls else {
            let mut map = self.plain.lock().unwrap_or_else(|p| p.into_inner());
            let key = (connect, h2, pinned);
            if !map.contains_key(&key) && map.len() >= PLAIN_CLIENTS_MAX {
                map.clear();
            }
            let c = map
                .entry(key)
                .or_insert_with(|| builder().build(pin(connector(), node)));
            return NodeClient::Plain(c.clone());
        };
        let key = (connect, h2, config.id, name.to_str().into_owned(), pinned);
        let mut map = self.tls.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(&key) && map.len() >= TLS_CLIENTS_MAX {
            map.clear();
        }
        let c = map.entry(key).or_insert_with(|| {
            let config = if h2 { &config.h2 } else { &config.h1 };
            builder().build(pin(
                super::node_tls::Connector::new(connector(), config.clone(), name.clone()),
                node,
            ))
        });
        NodeClient::Tls(c.clone())
    }
}

/// Retries allowed: each request adds a fifth of a token, each retry takes one.
pub struct RetryBudget {
    milli: AtomicI64,
}

impl Default for RetryBudget {
    fn default() -> RetryBudget {
        RetryBudget {
            milli: AtomicI64::new(10_000),
        }
    }
}

impl RetryBudget {
    const CAP: i64 = 100_000;

    fn deposit(&self) {
        if self.milli.load(Ordering::Relaxed) < Self::CAP {
            self.milli.fetch_add(200, Ordering::Relaxed);
        }
    }

    fn withdraw(&self) -> bool {
        if self.milli.fetch_sub(1000, Ordering::Relaxed) >= 1000 {
            true
        } else {
            self.milli.fetch_add(1000, Ordering::Relaxed);
            false
        }
    }
}

/// Serves gateway connections from `incoming` until `stop` (over TLS when `tls` is given),
/// then gives open requests a grace period.
pub async fn serve<C>(
    core: Arc<Core>,
    mut incoming: Accepted<(C, ClientAddr)>,
    tls: Option<Arc<rustls::ServerConfig>>,
    log: Option<Arc<super::access_log::AccessLog>>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    // What verifies JWKS servers: the system's roots and --check-ca-file's.
    let roots = core
        .registry
        .check_roots(core.config.check_ca_file.as_deref());
    loop {
        let (conn, addr) = tokio::select! {
            c = incoming.next() => match c {
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "gateway accept");
                    continue;
                }
                None => break,
            },
            _ = stop.changed() => break,
        };
        let ctx = Arc::new(Ctx {
            log: log.clone(),
            roots: roots.clone(),
            gateway: core.gateway.clone(),
            metrics: core.metrics.clone(),
            peer: addr.0,
            tls: acceptor.is_some(),
        });
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        let handshake = core
            .config
            .handshake_timeout
            .unwrap_or(Duration::from_secs(10));
        tokio::spawn(async move {
            match acceptor {
                None => serve_conn(ctx, conn, watcher).await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake, acceptor.accept(conn)).await {
                        Ok(Ok(tls)) => serve_conn(ctx, tls, watcher).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "gateway TLS handshake"),
                        Err(_) => tracing::debug!("gateway TLS handshake timed out"),
                    }
                }
            }
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => {}
    }
    Ok(())
}

async fn serve_conn<I>(ctx: Arc<Ctx>, io: I, watcher: hyper_util::server::graceful::Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(TokioTimer::new());
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(ctx.handle(req).await) }
    });
    let io = super::h1_guard::Guarded::new(io);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(error = %e, "gateway connection");
    }
}

/// What a connection's requests share.
struct Ctx {
    log: Option<Arc<super::access_log::AccessLog>>,
    roots: Arc<rustls::RootCertStore>,
    gateway: Arc<Gateway>,
    metrics: Arc<crate::metrics::Metrics>,
    peer: Option<SocketAddr>,
    tls: bool,
}

/// A request as route predicates and plugins read it.
struct View<'a> {
    parts: &'a Parts,
    host: &'a str,
    peer: Option<SocketAddr>,
    tls: bool,
    consumer: Option<&'a str>,
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

impl Vars for View<'_> {
    fn var(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow;
        let uri = &self.parts.uri;
        let s = match name {
            "uri" => Cow::Borrowed(uri.path()),
            "request_uri" => Cow::Borrowed(uri.path_and_query().map_or("/", |p| p.as_str())),
            "host" => Cow::Borrowed(self.host),
            "request_method" => Cow::Borrowed(self.parts.method.as_str()),
            "remote_addr" => Cow::Owned(self.peer?.ip().to_string()),
            "remote_port" => Cow::Owned(self.peer?.port().to_string()),
            "scheme" => Cow::Borrowed(if self.tls { "https" } else { "http" }),
            "args" | "query_string" => Cow::Borrowed(uri.query()?),
            "consumer_name" => Cow::Borrowed(self.consumer?),
            _ => {
                if let Some(arg) = name.strip_prefix("arg_") {
                    Cow::Borrowed(query_param(uri.query()?, arg)?)
                } else if let Some(h) = name.strip_prefix("http_") {
                    let h = h.replace('_', "-");
                    Cow::Borrowed(self.parts.headers.get(h.as_str())?.to_str().ok()?)
                } else if let Some(c) = name.strip_prefix("cookie_") {
                    Cow::Borrowed(cookie(&self.parts.headers, c)?)
                } else {
                    return None;
                }
            }
        };
        Some(s)
    }
}

impl berth_gateway::table::Request for View<'_> {
    fn host(&self) -> &str {
        self.host
    }
    fn path(&self) -> &str {
        self.parts.uri.path()
    }
    fn method(&self) -> &Method {
        &self.parts.method
    }
    fn remote_ip(&self) -> Option<IpAddr> {
        self.peer.map(|p| p.ip())
    }
}

/// A JSON answer of the gateway's own.
fn answer(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut body = serde_json::to_vec(&body).unwrap_or_default();
    body.push(b'\n');
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    answer(status, serde_json::json!({ "error_msg": msg.into() }))
}

/// [`error`], and the client's connection is not reused (its framing or the rest of its
/// body cannot be trusted or is not read).
fn error_closing(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = error(status, msg);
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Why a request is malformed in a way a proxy must not pass on (request smuggling).
fn malformed(parts: &Parts) -> Option<&'static str> {
    let h = &parts.headers;
    let lengths = h.get_all(header::CONTENT_LENGTH).iter().count();
    let codings: Vec<&HeaderValue> = h.get_all(header::TRANSFER_ENCODING).iter().collect();
    if lengths > 1 {
        return Some("more than one Content-Length");
    }
    if lengths == 1 && !codings.is_empty() {
        return Some("both Content-Length and Transfer-Encoding");
    }
    if !codings.is_empty()
        && (codings.len() > 1 || !codings[0].as_bytes().eq_ignore_ascii_case(b"chunked"))
    {
        return Some("a transfer coding other than chunked");
    }
    if h.get_all(header::HOST).iter().count() > 1 {
        return Some("more than one Host");
    }
    None
}

/// `path` as routes see it and nodes get it (what nginx's `$uri` is): percent-encoded
/// unreserved characters decoded, repeated slashes merged, `.` and `..` segments resolved.
/// `None` for a path that does not decode or climbs above the root. Other encodings (`%2F`)
/// are kept, so a node sees what the route matched.
fn normalize_path(path: &str) -> Option<std::borrow::Cow<'_, str>> {
    use std::borrow::Cow;
    if !path.starts_with('/') {
        return (path == "*").then_some(Cow::Borrowed(path));
    }
    if !path.contains('%') && !path.contains("//") && !path.contains("/.") {
        return Some(Cow::Borrowed(path));
    }
    let mut decoded: Vec<u8> = Vec::with_capacity(path.len());
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                decoded.push(v);
            } else {
                decoded.push(b'%');
                decoded.extend(hex.iter().map(u8::to_ascii_uppercase));
            }
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    let decoded = String::from_utf8(decoded).ok()?;
    let mut out: Vec<&str> = Vec::new();
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            s => out.push(s),
        }
    }
    let mut p = String::with_capacity(decoded.len());
    for seg in &out {
        p.push('/');
        p.push_str(seg);
    }
    if p.is_empty() || trailing {
        p.push('/');
    }
    Some(Cow::Owned(p))
}

/// The request's host: lower case, without a port (`None`: not a valid host).
fn request_host(parts: &Parts) -> Option<String> {
    let raw = match parts.headers.get(header::HOST) {
        Some(h) => h.to_str().ok()?,
        None => parts.uri.authority().map_or("", |a| a.as_str()),
    };
    let raw = raw.to_ascii_lowercase();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default().to_string()
    } else {
        raw.rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(raw.as_str(), |(h, _)| h)
            .to_string()
    };
    host.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
        .then_some(host)
}

/// Headers that describe one hop and are never forwarded.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, and those the `Connection` header names; keeps `Upgrade`
/// (and `Connection: upgrade`) when `upgrade`, and `TE: trailers` for gRPC.
fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let trailers = h
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for n in HOP_BY_HOP.iter().chain(named.iter()) {
        if upgrade && n == header::UPGRADE {
            continue;
        }
        h.remove(n);
    }
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::UPGRADE);
    }
    if trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

fn is_upgrade(h: &HeaderMap) -> bool {
    let websocket = h
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let conn = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    websocket && conn
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn edit_headers(h: &mut HeaderMap, edits: &HeaderEdits) {
    for (k, v) in &edits.add {
        h.append(k.clone(), v.clone());
    }
    for (k, v) in &edits.set {
        h.insert(k.clone(), v.clone());
    }
    for k in &edits.remove {
        h.remove(k);
    }
}

/// The CORS headers for a request from `origin`, if `cors` allows it.
fn cors_headers(cors: &Cors, origin: Option<&str>, preflight: Option<&HeaderMap>) -> HeaderMap {
    let mut out = HeaderMap::new();
    let allowed = match origin {
        None => None,
        Some(o) if cors.allow_origins == "*" || cors.allow_origins == "**" => {
            Some(if cors.allow_credential { o } else { "*" })
        }
        Some(o) => {
            let listed = cors.allow_origins.split(',').any(|a| a.trim() == o);
            (listed || cors.allow_origins_by_regex.iter().any(|r| r.is_match(o))).then_some(o)
        }
    };
    let Some(allowed) = allowed else { return out };
    let mut put = |k: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            out.insert(HeaderName::from_static(k), v);
        }
    };
    put("access-control-allow-origin", allowed);
    if allowed != "*" {
        put("vary", "Origin");
    }
    let methods = if cors.allow_methods == "*" || cors.allow_methods == "**" {
        "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE"
    } else {
        cors.allow_methods.as_str()
    };
    put("access-control-allow-methods", methods);
    let asked = preflight
        .and_then(|h| h.get("access-control-request-headers"))
        .and_then(|v| v.to_str().ok());
    let headers = match (cors.allow_headers.as_str(), asked) {
        ("*" | "**", Some(a)) => a,
        ("*" | "**", None) => "",
        (list, _) => list,
    };
    if !headers.is_empty() {
        put("access-control-allow-headers", headers);
    }
    if !cors.expose_headers.is_empty() {
        put("access-control-expose-headers", &cors.expose_headers);
    }
    put("access-control-max-age", &cors.max_age.to_string());
    if cors.allow_credential {
        put("access-control-allow-credentials", "true");
    }
    out
}

/// A W3C trace context for a request that has none.
fn new_traceparent() -> HeaderValue {
    use rand::Rng;
    let mut rng = rand::rng();
    let (trace, span): (u128, u64) = (rng.random::<u128>() | 1, rng.random::<u64>() | 1);
    HeaderValue::from_str(&format!("00-{trace:032x}-{span:016x}-01")).unwrap_or(
        HeaderValue::from_static("00-00000000000000000000000000000001-0000000000000001-01"),
    )
}

/// The request's consumer per the route's auth plugin, or the 401 that refuses it.
async fn authenticate(
    ctx: &Ctx,
    snap: &Snapshot,
    target: &Target,
    parts: &mut Parts,
) -> Result<Option<Arc<berth_gateway::Consumer>>, Box<Response<Body>>> {
    let unauthorized = |msg: &str, challenge: &'static str| {
        let mut r = answer(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({ "message": msg }),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
        Box::new(r)
    };
    // Every auth plugin the route has must pass (as APISIX runs them all); the last one
    // names the consumer.
    let mut found = None;
    if let Some(conf) = &target.plugins.key_auth {
        const CHALLENGE: &str = "apikey realm=\"key\"";
        let from_header = parts
            .headers
            .get(conf.header.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (key, in_header) = match from_header {
            Some(k) => (Some(k), true),
            None => (
                parts
                    .uri
                    .query()
                    .and_then(|q| query_param(q, &conf.query))
                    .map(str::to_string),
                false,
            ),
        };
        let Some(key) = key else {
            return Err(unauthorized("Missing API key in request", CHALLENGE));
        };
        let Some(consumer) = snap.consumers.by_key.get(&key) else {
            return Err(unauthorized("Invalid API key in request", CHALLENGE));
        };
        if conf.hide_credentials {
            if in_header {
                parts.headers.remove(conf.header.as_str());
            } else if let Some(pq) = parts.uri.path_and_query() {
                let kept: Vec<&str> = pq
                    .query()
                    .unwrap_or_default()
                    .split('&')
                    .filter(|p| p.split('=').next() != Some(conf.query.as_str()))
                    .collect();
                let rebuilt = if kept.is_empty() {
                    pq.path().to_string()
                } else {
                    format!("{}?{}", pq.path(), kept.join("&"))
                };
                if let Ok(uri) = rebuilt.parse() {
                    parts.uri = uri;
                }
            }
        }
        found = Some(consumer.clone());
    }
    if let Some(conf) = &target.plugins.jwt_auth {
        const CHALLENGE: &str = "Bearer realm=\"jwt\"";
        let from_header = parts
            .headers
            .get(conf.header.as_str())
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
                    .unwrap_or(v)
                    .trim()
                    .to_string()
            });
        let token = from_header.clone().or_else(|| {
            parts
                .uri
                .query()
                .and_then(|q| query_param(q, &conf.query))
                .map(str::to_string)
                .or_else(|| cookie(&parts.headers, &conf.cookie).map(str::to_string))
        });
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(unauthorized("Missing JWT token in request", CHALLENGE));
        };
        let refuse = |r: super::jwt::Refusal| unauthorized(r.message(), CHALLENGE);
        // Remembered by the claim that names the consumer too: routes may name it apart.
        let remembered = format!("{}\n{token}", conf.key_claim_name);
        let consumer = match snap.consumers.verified.get(&remembered) {
            Some(c) => c,
            None => {
                let key = super::jwt::claim(&token, &conf.key_claim_name).map_err(refuse)?;
                let Some((consumer, verifier)) = snap.consumers.by_jwt.get(&key) else {
                    return Err(refuse(super::jwt::Refusal::UnknownKey));
                };
                let claims = super::jwt::verify(&token, verifier, &ctx.gateway.jwks, &ctx.roots)
                    .await
                    .map_err(refuse)?;
                snap.consumers
                    .verified
                    .put(&remembered, consumer.clone(), &claims, verifier);
                consumer.clone()
            }
        };
        if conf.hide_credentials && from_header.is_some() {
            parts.headers.remove(conf.header.as_str());
        }
        found = Some(consumer);
    }
    if let Some(conf) = &target.plugins.basic_auth {
        const CHALLENGE: &str = "Basic realm=\"basic\"";
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(unauthorized("Missing authorization in request", CHALLENGE));
        };
        let decoded = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Basic ")
                    .or_else(|| v.strip_prefix("basic "))
            })
            .and_then(|b| {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok());
        let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
            return Err(unauthorized("Invalid authorization in request", CHALLENGE));
        };
        match snap.consumers.by_user.get(user) {
            Some((want, consumer)) if constant_eq(want.as_bytes(), password.as_bytes()) => {
                if conf.hide_credentials {
                    parts.headers.remove(header::AUTHORIZATION);
                }
                found = Some(consumer.clone());
            }
            _ => return Err(unauthorized("Invalid user authorization", CHALLENGE)),
        }
    }
    Ok(found)
}

/// Compares secrets in time that does not depend on where they differ.
fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value a `chash` upstream hashes for this request.
fn hash_key(live: &LiveUpstream, view: &View<'_>) -> String {
    use berth_gateway::model::Balance;
    let Balance::Chash { hash_on, key } = &live.def.balance else {
        return String::new();
    };
    let found = match hash_on {
        HashOn::Vars => view.var(key).map(|v| v.into_owned()),
        HashOn::Header => view
            .parts
            .headers
            .get(key.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        HashOn::Cookie => cookie(&view.parts.headers, key).map(str::to_string),
        HashOn::Consumer => view.consumer.map(str::to_string),
    };
    found
        .or_else(|| view.peer.map(|p| p.ip().to_string()))
        .unwrap_or_default()
}

/// A limit plugin's configuration that applies: the consumer's own over the route's (APISIX
/// merges a consumer's plugins over the route's), with the consumer's name when it is theirs.
fn consumer_first<'a, T>(
    consumer: Option<&'a berth_gateway::Consumer>,
    route: &'a berth_gateway::plugins::Plugins,
    plugin: impl Fn(&'a berth_gateway::plugins::Plugins) -> Option<&'a T>,
) -> Option<(&'a T, Option<&'a str>)> {
    consumer
        .and_then(|c| plugin(&c.plugins).map(|l| (l, Some(c.username.as_str()))))
        .or_else(|| plugin(route).map(|l| (l, None)))
}

/// The key a limit counts this request under: its group's, else `scope` (the route's, a
/// consumer's or consumer group's on the route, or a global rule's), then the configured
/// key's value.
fn counter_key(group: Option<&str>, scope: &str, key: &LimitKey, view: &View<'_>) -> String {
    match group {
        Some(g) => format!("group:{g}\0{}", limit_key(key, view)),
        None => format!("{scope}\0{}", limit_key(key, view)),
    }
}

/// The scope of a route's limit: the route's, or its consumer's (or the consumer's group's,
/// when the limit is the group's) on the route.
fn route_scope(route: &str, of_consumer: Option<&str>, group: Option<&String>) -> String {
    match (of_consumer, group) {
        (Some(_), Some(g)) => format!("consumer_group:{g}:route:{route}"),
        (Some(c), None) => format!("consumer:{c}:route:{route}"),
        (None, _) => format!("route:{route}"),
    }
}

/// The value a limit's key takes for this request.
fn limit_key(key: &LimitKey, view: &View<'_>) -> String {
    match key {
        LimitKey::Constant => String::new(),
        LimitKey::Var(v) => view
            .var(v)
            .map(|v| v.into_owned())
            .or_else(|| view.peer.map(|p| p.ip().to_string()))
            .unwrap_or_default(),
        LimitKey::Combination(template) => template
            .split_whitespace()
            .map(|part| match part.strip_prefix('$') {
                Some(v) => view.var(v).map(|v| v.into_owned()).unwrap_or_default(),
                None => part.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// The path and query the node gets, after proxy-rewrite; always starting with `/` (a
/// rewrite to anything else would let a client choose the authority).
fn rewritten_path(target: &Target, uri: &Uri, vars: &View<'_>) -> String {
    let p = rewrite(target, uri, vars);
    if p.starts_with('/') {
        p
    } else {
        format!("/{p}")
    }
}

/// The path (and query) the node gets: proxy-rewrite's `uri` with its variables filled in
/// and unsafe characters escaped, then the request's own query (APISIX's order); or
/// `regex_uri`'s replacement; or the request's.
fn rewrite(target: &Target, uri: &Uri, vars: &View<'_>) -> String {
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let Some(rw) = &target.plugins.proxy_rewrite else {
        return pq.to_string();
    };
    if let Some(new) = &rw.uri {
        // A `?` or `#` in a variable's value is data, not the start of a query or fragment
        // (as APISIX's escape_separator).
        let new = new.render_with(vars, |v| {
            if v.contains(['?', '#']) {
                std::borrow::Cow::Owned(v.replace('?', "%3F").replace('#', "%23"))
            } else {
                std::borrow::Cow::Borrowed(v)
            }
        });
        let (path, query) = match new.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (new.as_str(), None),
        };
        let mut out = escape_path(path);
        if let Some(q) = query {
            out.push('?');
            out.push_str(&escape_path(q));
        }
        if let Some(args) = uri.query() {
            out.push(if query.is_some() { '&' } else { '?' });
            out.push_str(args);
        }
        return out;
    }
    if let Some((re, to)) = &rw.regex_uri {
        let path = uri.path();
        if re.is_match(path) {
            let mut out = re.replace(path, to.as_str()).into_owned();
            if let Some(q) = uri.query() {
                out.push('?');
                out.push_str(q);
            }
            return out;
        }
    }
    pq.to_string()
}

/// A limit's refusal: its `rejected_code` (503 if not a status) and `rejected_msg`.
fn limit_refusal(code: u16, msg: Option<&str>) -> Response<Body> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    error(status, msg.unwrap_or("rate limit exceeded").to_string())
}

/// Percent-escapes what may not stand in a path or query as it is (a variable's value may
/// hold anything); `%` is kept, as values are usually escaped already.
fn escape_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
                    | b'%'
                    | b'?'
            );
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Ctx {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        self.gateway.retry_budget.deposit();
        let mut trail = self.log.as_ref().map(|_| {
            let h = |name: header::HeaderName| {
                req.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            super::access_log::Record {
                time: Some(std::time::SystemTime::now()),
                remote_addr: self.peer.map(|p| p.to_string()),
                method: req.method().to_string(),
                host: h(header::HOST)
                    .or_else(|| req.uri().authority().map(|a| a.to_string()))
                    .unwrap_or_default(),
                path: req.uri().path().to_string(),
                query: req.uri().query().unwrap_or_default().to_string(),
                protocol: format!("{:?}", req.version()),
                user_agent: h(header::USER_AGENT),
                ..Default::default()
            }
        });
        let (route, resp) = self.route(req, trail.as_mut()).await;
        let status = resp.status().as_u16();
        if let (Some(log), Some(mut r)) = (&self.log, trail) {
            r.status = status;
            r.route = route.clone();
            r.duration = started.elapsed();
            log.log(r);
        }
        self.metrics
            .observe_gateway(route.as_deref().unwrap_or(""), status, started.elapsed());
        tracing::debug!(route = route.as_deref().unwrap_or("-"), status, elapsed = ?started.elapsed(), peer = ?self.peer, "gateway request");
        resp
    }

    /// Handles a request; returns the route that took it (if one did) and the answer.
    async fn route(
        &self,
        req: Request<Incoming>,
        trail: Option<&mut super::access_log::Record>,
    ) -> (Option<String>, Response<Body>) {
        let (mut parts, body) = req.into_parts();
        let bad = |why: &str| {
            (
                None,
                error_closing(StatusCode::BAD_REQUEST, format!("bad request: {why}")),
            )
        };
        if let Some(why) = malformed(&parts) {
            return bad(why);
        }
        let Some(host) = request_host(&parts) else {
            return bad("invalid Host");
        };
        // Routes match the normalized path, and nodes get it: `/%61dmin` or `/x/../admin`
        // cannot slip past a route for `/admin` (and its auth) to a broader one.
        let normalized = match normalize_path(parts.uri.path()) {
            None => return bad("invalid path"),
            Some(std::borrow::Cow::Borrowed(_)) => None,
            Some(std::borrow::Cow::Owned(p)) => Some(p),
        };
        if let Some(p) = normalized {
            let pq = match parts.uri.query() {
                Some(q) => format!("{p}?{q}"),
                None => p,
            };
            let mut uri = std::mem::take(&mut parts.uri).into_parts();
            match pq.parse() {
                Ok(pq) => uri.path_and_query = Some(pq),
                Err(_) => return bad("invalid path"),
            }
            match Uri::from_parts(uri) {
                Ok(u) => parts.uri = u,
                Err(_) => return bad("invalid path"),
            }
        }
        let snap = self.gateway.snapshot();
        let target = {
            let view = self.view(&parts, &host, None);
            snap.table.find(&view).cloned()
        };
        let route = target.as_ref().map(|t| t.route.id.clone());
        // Global rules run for every request, matched or not, before the route's plugins.
        let global_headers = if snap.global_gates.is_empty() {
            HeaderMap::new()
        } else {
            match self.global_gates(&snap, &parts, &host).await {
                Ok(h) => h,
                Err(refused) => return (route, *refused),
            }
        };
        let Some(target) = target else {
            let mut resp = error(StatusCode::NOT_FOUND, "404 Route Not Found");
            resp.headers_mut().extend(global_headers);
            return (None, resp);
        };
        let mut resp = self
            .through(&snap, &target, &mut parts, &host, body, trail)
            .await;
        // The route's own quota headers win (its limit runs last in APISIX too).
        for (k, v) in global_headers.iter() {
            if !resp.headers().contains_key(k) {
                resp.headers_mut().insert(k.clone(), v.clone());
            }
        }
        (route, resp)
    }

    fn view<'a>(&self, parts: &'a Parts, host: &'a str, consumer: Option<&'a str>) -> View<'a> {
        View {
            parts,
            host,
            peer: self.peer,
            tls: self.tls,
            consumer,
        }
    }

    /// `ip-restriction`'s refusal, if it refuses the client.
    fn restrict(&self, r: &berth_gateway::plugins::IpRestriction) -> Option<Response<Body>> {
        let allowed = match self.peer.map(|p| p.ip()) {
            None => r.whitelist.is_empty(),
            Some(ip) if !r.whitelist.is_empty() => r.whitelist.iter().any(|n| n.contains(&ip)),
            Some(ip) => !r.blacklist.iter().any(|n| n.contains(&ip)),
        };
        (!allowed).then(|| {
            let status = StatusCode::from_u16(r.response_code).unwrap_or(StatusCode::FORBIDDEN);
            answer(status, serde_json::json!({ "message": r.message }))
        })
    }

    /// Counts the request (seen through `view`, for the limit's key) under `limit` in
    /// `scope`; the quota headers for the answer, or the refusal.
    async fn count(
        &self,
        limit: &berth_gateway::plugins::LimitCount,
        scope: &str,
        view: &View<'_>,
    ) -> Result<HeaderMap, Box<Response<Body>>> {
        let mut quota_headers = HeaderMap::new();
        let mut key = counter_key(limit.group.as_deref(), scope, &limit.key, view);
        // Routes sharing a group under another count or window count apart: asked under
        // another limit, a counter would start its window afresh, and alternating requests
        // would never be limited.
        {
            use std::fmt::Write;
            let _ = write!(key, "\0{}/{}", limit.count, limit.time_window);
        }
        let window = Duration::from_secs(limit.time_window);
        let verdict = match limit.policy {
            LimitPolicy::Local => Some(self.gateway.limits.hit(&key, limit.count, window)),
            LimitPolicy::Cluster => {
                match self.gateway.quotas.hit(&key, limit.count, window).await {
                    Ok(v) => Some(v),
                    Err(e) if limit.allow_degradation => {
                        tracing::warn!(error = %e, "limit-count lets a request pass uncounted");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "limit-count refuses a request");
                        return Err(Box::new(error(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "failed to limit count",
                        )));
                    }
                }
            }
        };
        if let (true, Some(verdict)) = (limit.show_quota_headers, verdict) {
            let (remaining, reset) = match verdict {
                Verdict::Allowed { remaining, reset } => (remaining, reset),
                Verdict::Refused { reset } => (0, reset),
            };
            for (k, v) in [
                ("x-ratelimit-limit", limit.count.to_string()),
                ("x-ratelimit-remaining", remaining.to_string()),
                ("x-ratelimit-reset", reset.as_secs().max(1).to_string()),
            ] {
                if let Ok(v) = HeaderValue::from_str(&v) {
                    quota_headers.insert(HeaderName::from_static(k), v);
                }
            }
        }
        if let Some(Verdict::Refused { .. }) = verdict {
            let mut r = limit_refusal(limit.rejected_code, limit.rejected_msg.as_deref());
            r.headers_mut().extend(quota_headers);
            return Err(Box::new(r));
        }
        Ok(quota_headers)
    }

    /// Paces the request under `limit` in `scope`: waits its delay, or refuses it.
    async fn pace(
        &self,
        limit: &berth_gateway::plugins::LimitReq,
        scope: &str,
        view: &View<'_>,
    ) -> Result<(), Box<Response<Body>>> {
        let key = counter_key(None, scope, &limit.key, view);
        match self
            .gateway
            .buckets
            .take(&key, limit.rate, limit.burst, limit.nodelay)
        {
            super::limit::Pace::Pass(delay) if delay.is_zero() => Ok(()),
            super::limit::Pace::Pass(delay) => {
                tokio::time::sleep(delay).await;
                Ok(())
            }
            super::limit::Pace::Refuse => Err(Box::new(limit_refusal(
                limit.rejected_code,
                limit.rejected_msg.as_deref(),
            ))),
        }
    }

    /// Runs the global rules' gates, each on its own (no consumer is known yet, as in
    /// APISIX, where global rules run before the route's plugins); the quota headers, or
    /// the refusal.
    async fn global_gates(
        &self,
        snap: &Snapshot,
        parts: &Parts,
        host: &str,
    ) -> Result<HeaderMap, Box<Response<Body>>> {
        let mut headers = HeaderMap::new();
        let view = self.view(parts, host, None);
        for (id, gates) in &snap.global_gates {
            if let Some(refused) = gates.ip_restriction.as_ref().and_then(|r| self.restrict(r)) {
                return Err(Box::new(refused));
            }
            let scope = format!("global_rule:{id}");
            if let Some(limit) = &gates.limit_count {
                headers.extend(self.count(limit, &scope, &view).await?);
            }
            if let Some(limit) = &gates.limit_req {
                self.pace(limit, &scope, &view).await?;
            }
        }
        Ok(headers)
    }

    /// Runs the route's plugins and proxies.
    async fn through(
        &self,
        snap: &Snapshot,
        target: &Target,
        parts: &mut Parts,
        host: &str,
        body: Incoming,
        mut trail: Option<&mut super::access_log::Record>,
    ) -> Response<Body> {
        let plugins = &target.plugins;
        if let Some(refused) = plugins
            .ip_restriction
            .as_ref()
            .and_then(|r| self.restrict(r))
        {
            return refused;
        }
        let origin = parts
            .headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Some(cors) = &plugins.cors {
            let preflight = parts.method == Method::OPTIONS
                && parts.headers.contains_key("access-control-request-method");
            if preflight {
                let mut r = Response::new(Either::Right(Full::new(Bytes::new())));
                *r.headers_mut() = cors_headers(cors, origin.as_deref(), Some(&parts.headers));
                return r;
            }
        }
        let consumer = match authenticate(self, snap, target, parts).await {
            Ok(c) => c,
            Err(resp) => return *resp,
        };
        if let (Some(t), Some(c)) = (trail.as_deref_mut(), &consumer) {
            t.consumer = Some(c.username.clone());
        }
        let route_id = target.route.id.as_str();
        let mut quota_headers = HeaderMap::new();
        {
            let view = self.view(parts, host, consumer.as_ref().map(|c| c.username.as_str()));
            let limit = consumer_first(consumer.as_deref(), plugins, |p| p.limit_count.as_ref());
            if let Some((limit, of_consumer)) = limit {
                let group = of_consumer.and_then(|c| snap.consumers.count_by_group.get(c));
                let scope = route_scope(route_id, of_consumer, group);
                match self.count(limit, &scope, &view).await {
                    Ok(h) => quota_headers = h,
                    Err(refused) => return *refused,
                }
            }
            let req_limit = consumer_first(consumer.as_deref(), plugins, |p| p.limit_req.as_ref());
            if let Some((limit, of_consumer)) = req_limit {
                let group = of_consumer.and_then(|c| snap.consumers.pace_by_group.get(c));
                let scope = route_scope(route_id, of_consumer, group);
                if let Err(refused) = self.pace(limit, &scope, &view).await {
                    return *refused;
                }
            }
        }
        if let Some(max) = plugins.max_body_size {
            let declared = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > max) {
                // A client waiting for `100 Continue` has sent no body: reading it would
                // ask for the upload; the 413 alone answers it.
                let waits = parts
                    .headers
                    .get(header::EXPECT)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
                return too_large(max, (!waits).then_some(body));
            }
        }
        if let Some(b) = &plugins.api_breaker {
            if self.gateway.breakers.open(route_id) {
                let status = StatusCode::from_u16(b.break_response_code)
                    .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                let mut r = Response::new(Either::Right(Full::new(Bytes::from(
                    b.break_response_body.clone().unwrap_or_default(),
                ))));
                *r.status_mut() = status;
                for (k, v) in &b.break_response_headers {
                    r.headers_mut().insert(k.clone(), v.clone());
                }
                return r;
            }
        }
        // response-rewrite's variables are the request's: filled in while it is whole.
        let response_edits = plugins.response_rewrite.as_ref().map(|rw| {
            let view = self.view(parts, host, consumer.as_ref().map(|c| c.username.as_str()));
            rw.headers.resolved(&view)
        });
        let mut resp = self
            .proxy(snap, target, parts, host, body, consumer.as_deref(), trail)
            .await;
        if let Some(b) = &plugins.api_breaker {
            if let Some(open) = self
                .gateway
                .breakers
                .answered(route_id, b, resp.status().as_u16())
            {
                tracing::warn!(route = %route_id, seconds = open.as_secs(), "gateway: api-breaker opened");
            }
        }
        let h = resp.headers_mut();
        h.extend(quota_headers);
        if let Some(cors) = &plugins.cors {
            for (k, v) in cors_headers(cors, origin.as_deref(), None) {
                let Some(k) = k else { continue };
                if k == header::VARY {
                    // Added to the node's Vary, never replacing it (caches rely on it).
                    h.append(k, v);
                } else {
                    h.insert(k, v);
                }
            }
        }
        if let (Some(rw), Some(edits)) = (&plugins.response_rewrite, &response_edits) {
            edit_headers(resp.headers_mut(), edits);
            if let Some(code) = rw.status_code.and_then(|c| StatusCode::from_u16(c).ok()) {
                *resp.status_mut() = code;
            }
            if let Some(b) = &rw.body {
                resp.headers_mut().remove(header::CONTENT_LENGTH);
                resp.headers_mut().remove(header::CONTENT_ENCODING);
                *resp.body_mut() = Either::Right(Full::new(Bytes::from(b.0.clone())));
            }
        }
        resp
    }

    /// Sends the request to a node of the route's upstream, retrying as the module docs say.
    // The request's pieces travel separately: the parts are edited, the body consumed.
    #[allow(clippy::too_many_arguments)]
    async fn proxy(
        &self,
        snap: &Snapshot,
        target: &Target,
        parts: &mut Parts,
        host: &str,
        body: Incoming,
        consumer: Option<&berth_gateway::Consumer>,
        trail: Option<&mut super::access_log::Record>,
    ) -> Response<Body> {
        let Some(key) = &target.upstream else {
            return error(StatusCode::SERVICE_UNAVAILABLE, "the route has no upstream");
        };
        let Some(live) = snap.upstreams.get(key) else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("upstream {key:?} of the route does not exist"),
            );
        };
        let timeout = target.timeout.or(live.def.timeout).unwrap_or_default();
        let attempts = self.attempts(live, timeout, target, parts, host, body, consumer, trail);
        match timeout.total {
            None => attempts.await,
            Some(total) => match tokio::time::timeout(total, attempts).await {
                Ok(resp) => resp,
                Err(_) => {
                    self.metrics
                        .observe_gateway_upstream(&live.label, "timeout");
                    error(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!(
                            "upstream {} did not answer within the route's total timeout of {total:?}",
                            live.label
                        ),
                    )
                }
            },
        }
    }

    /// [`Ctx::proxy`]'s attempts, within `timeout`'s connect, send and read bounds.
    #[allow(clippy::too_many_arguments)]
    async fn attempts(
        &self,
        live: &LiveUpstream,
        timeout: berth_gateway::model::Timeout,
        target: &Target,
        parts: &mut Parts,
        host: &str,
        body: Incoming,
        consumer: Option<&berth_gateway::Consumer>,
        mut trail: Option<&mut super::access_log::Record>,
    ) -> Response<Body> {
        let def = &live.def;
        let grpc = def.scheme.grpc();
        let tls = match &live.tls {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(why)) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("upstream {}: no TLS to its nodes: {why}", live.label),
                )
            }
        };
        let upgrade = target.websocket && !grpc && is_upgrade(&parts.headers);
        let client_upgrade = if upgrade {
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        } else {
            None
        };
        // What reads the request's variables, before its headers are taken.
        let (hash, path, header_edits) = {
            let view = self.view(parts, host, consumer.map(|c| c.username.as_str()));
            let edits = target
                .plugins
                .proxy_rewrite
                .as_ref()
                .map(|rw| rw.headers.resolved(&view));
            (
                hash_key(live, &view),
                rewritten_path(target, &parts.uri, &view),
                edits,
            )
        };
        // The headers every attempt sends.
        let mut headers = std::mem::take(&mut parts.headers);
        let original_host = headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        strip_hop_by_hop(&mut headers, upgrade);
        if let Some(ip) = self.peer.map(|p| p.ip().to_string()) {
            let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
                Some(prev) => format!("{prev}, {ip}"),
                None => ip.clone(),
            };
            if let Ok(v) = HeaderValue::from_str(&xff) {
                headers.insert("x-forwarded-for", v);
            }
            if let Ok(v) = HeaderValue::from_str(&ip) {
                headers.insert("x-real-ip", v);
            }
        }
        headers.insert(
            "x-forwarded-proto",
            HeaderValue::from_static(if self.tls { "https" } else { "http" }),
        );
        if let Some(h) = &original_host {
            headers.insert("x-forwarded-host", h.clone());
        }
        if !headers.contains_key("traceparent") {
            headers.insert("traceparent", new_traceparent());
        }
        if let Some(t) = trail.as_deref_mut() {
            t.upstream = Some(live.label.clone());
            t.traceparent = headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
        }
        let mut method = parts.method.clone();
        if let Some(edits) = &header_edits {
            edit_headers(&mut headers, edits);
        }
        if let Some(m) = target
            .plugins
            .proxy_rewrite
            .as_ref()
            .and_then(|rw| rw.method.as_ref())
        {
            method = m.clone();
        }
        // Read the body ahead: a malformed one reaches no node, a short one can be retried.
        // Streams (gRPC, and HTTP/2 or HTTP/1.1 bodies of no stated length that are not
        // chunked uploads) go on as they come: they may never end.
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let chunked_upload = parts.version == Version::HTTP_11 && declared.is_none();
        let stream = grpc
            || headers
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
            || declared.map_or(!chunked_upload, |n| n > REPLAYABLE_MAX);
        let (mut streaming, replay) = if body.is_end_stream() {
            (None, Some(Bytes::new()))
        } else if stream {
            (Some(Prefixed::new(Default::default(), body)), None)
        } else {
            match tokio::time::timeout(timeout.send, read_ahead(body, REPLAYABLE_MAX)).await {
                Ok(Ok(ReadAhead::Whole(b))) => (None, Some(b)),
                Ok(Ok(ReadAhead::Longer(p))) => (Some(p), None),
                Ok(Err(e)) => {
                    return error_closing(
                        StatusCode::BAD_REQUEST,
                        format!("invalid request body: {e}"),
                    );
                }
                Err(_) => {
                    return error(
                        StatusCode::REQUEST_TIMEOUT,
                        "the request body did not arrive in time",
                    )
                }
            }
        };
        // client-control's limit on bodies of no stated length: what was read ahead tells
        // at once; a longer stream is counted as it passes, and cut off past the limit.
        let tripped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if let (Some(max), Some(p)) = (target.plugins.max_body_size, &mut streaming) {
            p.limit = Some((max, tripped.clone()));
        }
        if let Some(max) = target.plugins.max_body_size {
            let over = match (&replay, &streaming) {
                (Some(b), _) => b.len() as u64 > max,
                (None, Some(p)) => !p.prefix.is_empty() && (REPLAYABLE_MAX as u64) > max,
                (None, None) => false,
            };
            if over {
                return too_large(max, streaming.as_mut().and_then(|p| p.rest.take()));
            }
        }
        let nodes = live.picker.nodes().len();
        let retries = match &replay {
            None => 0,
            Some(_) => def.retries.map_or(nodes.saturating_sub(1), |r| r as usize),
        };
        let retry_until = def.retry_timeout.map(|t| Instant::now() + t);
        let mut tried: Vec<usize> = Vec::new();
        let mut last_error = String::new();
        loop {
            let Some(i) = live.picker.pick(&hash, &tried) else {
                return if tried.is_empty() {
                    self.metrics
                        .observe_gateway_upstream(&live.label, "no_node");
                    error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "upstream {}: no node to send to (none is healthy)",
                            live.label
                        ),
                    )
                } else {
                    error(StatusCode::BAD_GATEWAY, last_error)
                };
            };
            let node = &live.picker.nodes()[i];
            // Plain HTTP/1.1 goes through the gateway's own pool, in origin form; gRPC and
            // upgrades through hyper-util's client, which wants the whole URI.
            let pooled = !grpc && !upgrade;
            let mut h = headers.clone();
            let host_value = match &def.pass_host {
                PassHost::Pass => original_host.clone(),
                PassHost::Node => HeaderValue::from_str(&node.authority).ok(),
                PassHost::Rewrite(v) => HeaderValue::from_str(v).ok(),
            };
            let host_value = target
                .plugins
                .proxy_rewrite
                .as_ref()
                .and_then(|r| r.host.clone())
                .or(host_value);
            // Over TLS, the node is asked for (and checked as) the host it gets, or else
            // its own address.
            let tls = tls.map(|c| {
                let name = host_value
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .and_then(super::node_tls::server_name)
                    .or_else(|| super::node_tls::server_name(&node.authority));
                (c, name)
            });
            // gRPC names the host in `:authority`, which is the URI's: the client is pinned
            // to the node, so that it dials the node all the same.
            let (authority, pin) = if grpc {
                let pin = node.authority.parse::<http::uri::Authority>().ok();
                let named = host_value
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<http::uri::Authority>().ok());
                (named.or_else(|| pin.clone()), pin)
            } else {
                (None, None)
            };
            let uri = if pooled {
                Uri::builder().path_and_query(path.as_str()).build()
            } else {
                Uri::builder()
                    .scheme(if tls.is_some() { "https" } else { "http" })
                    .authority(authority.map_or_else(|| node.authority.clone(), |a| a.to_string()))
                    .path_and_query(path.as_str())
                    .build()
            };
            let uri = match uri {
                Ok(u) => u,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad request path: {e}")),
            };
            if grpc {
                h.remove(header::HOST);
            } else if let Some(v) = host_value {
                h.insert(header::HOST, v);
            }
            let tls = match tls {
                None => None,
                Some((c, Some(name))) => Some((c, name)),
                Some((_, None)) => {
                    return error(
                        StatusCode::BAD_GATEWAY,
                        format!(
                            "upstream {}: no TLS server name for node {}",
                            live.label, node.authority
                        ),
                    )
                }
            };
            let body: ReqBody = match (&replay, streaming.take()) {
                (Some(b), _) => Either::Right(Full::new(b.clone())),
                (None, Some(s)) => Either::Left(s),
                (None, None) => Either::Right(Full::new(Bytes::new())),
            };
            let mut req = Request::new(body);
            *req.method_mut() = method.clone();
            *req.uri_mut() = uri;
            *req.version_mut() = if grpc {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            };
            *req.headers_mut() = h;
            let in_flight = node.stats.begin();
            let sent = Instant::now();
            if let Some(t) = trail.as_deref_mut() {
                t.node = Some(node.authority.clone());
            }
            let passive = |outcome| {
                if let Some(p) = &def.passive {
                    if node.stats.record(outcome, p) {
                        self.metrics
                            .observe_gateway_upstream(&live.label, "ejected");
                        tracing::warn!(upstream = %live.label, node = %node.authority, ?outcome, "gateway: node ejected by passive checks");
                    }
                }
            };
            let exchange = async {
                if pooled {
                    let dest = super::pool::Dest {
                        authority: &node.authority,
                        tls: tls.as_ref().map(|(c, name)| (&c.h1, name.clone(), c.id)),
                    };
                    self.gateway
                        .pool
                        .send(&dest, timeout.connect, req)
                        .await
                        .map_err(|e| (e.is_connect(), error_chain(&e)))
                } else {
                    let tls = tls.as_ref().map(|(c, name)| (c.as_ref(), name));
                    self.gateway
                        .clients
                        .get(timeout.connect, grpc, tls, pin.as_ref())
                        .request(req)
                        .await
                        .map(|r| r.map(NodeBody::from))
                        .map_err(|e| (e.is_connect(), error_chain(&e)))
                }
            };
            let result = tokio::time::timeout(timeout.read, exchange).await;
            if let Some(t) = trail.as_deref_mut() {
                t.upstream_time = Some(t.upstream_time.unwrap_or_default() + sent.elapsed());
            }
            match result {
                Ok(Ok(resp)) => {
                    in_flight.answered();
                    let bad = def
                        .passive
                        .as_ref()
                        .is_some_and(|p| p.unhealthy_statuses.contains(&resp.status().as_u16()));
                    passive(if bad {
                        Outcome::BadStatus
                    } else {
                        Outcome::Healthy
                    });
                    self.metrics
                        .observe_gateway_upstream(&live.label, "answered");
                    return self.respond(resp, client_upgrade, parts.version).await;
                }
                Ok(Err(_)) if tripped.load(std::sync::atomic::Ordering::Relaxed) => {
                    // The client's body, not the node, failed: the node is not to blame (the
                    // body drains the rest itself).
                    return too_large(target.plugins.max_body_size.unwrap_or_default(), None);
                }
                Ok(Err((connect, why))) => {
                    passive(if connect {
                        Outcome::ConnectFailed
                    } else {
                        Outcome::BadStatus
                    });
                    self.metrics.observe_gateway_upstream(
                        &live.label,
                        if connect { "connect_error" } else { "error" },
                    );
                    last_error = format!("upstream {} node {}: {why}", live.label, node.authority);
                    tracing::debug!(upstream = %live.label, node = %node.authority, error = %last_error, "gateway: node failed");
                    tried.push(i);
                    let may_retry = replay.is_some()
                        && (connect || idempotent(&method))
                        && tried.len() <= retries
                        && retry_until.is_none_or(|t| Instant::now() < t)
                        && self.gateway.retry_budget.withdraw();
                    if !may_retry {
                        return error(StatusCode::BAD_GATEWAY, last_error);
                    }
                }
                Err(_) => {
                    passive(Outcome::TimedOut);
                    self.metrics
                        .observe_gateway_upstream(&live.label, "timeout");
                    return error(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!(
                            "upstream {} node {} did not answer within {:?}",
                            live.label, node.authority, timeout.read
                        ),
                    );
                }
            }
        }
    }

    /// Passes the node's answer on; a 101 to an upgrade splices the two connections.
    async fn respond(
        &self,
        mut resp: Response<NodeBody>,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        client_version: Version,
    ) -> Response<Body> {
        let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if upgraded {
            let Some(client_side) = client_upgrade else {
                return error(
                    StatusCode::BAD_GATEWAY,
                    "the node switched protocols unasked",
                );
            };
            let node_side = hyper::upgrade::on(&mut resp);
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                match tokio::join!(client_side, node_side) {
                    (Ok(c), Ok(n)) => {
                        metrics.gateway_websockets.inc();
                        let (mut c, mut n) = (TokioIo::new(c), TokioIo::new(n));
                        if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut n).await {
                            tracing::debug!(error = %e, "gateway: upgraded connection ended");
                        }
                        metrics.gateway_websockets.dec();
                    }
                    (c, n) => {
                        tracing::debug!(client = ?c.err(), node = ?n.err(), "gateway: upgrade failed")
                    }
                }
            });
        }
        let (mut parts, body) = resp.into_parts();
        // The client's protocol, not the node's (a node may answer in HTTP/1.0).
        parts.version = client_version;
        strip_hop_by_hop(&mut parts.headers, upgraded);
        Response::from_parts(parts, Either::Left(body))
    }
}

/// An error with its causes, for an answer's message.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().uri("/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        assert!(malformed(&parts(&[
            ("content-length", "1"),
            ("transfer-encoding", "chunked")
        ]))
        .is_some());
        assert!(malformed(&parts(&[("content-length", "1"), ("content-length", "1")])).is_some());
        assert!(malformed(&parts(&[("transfer-encoding", "gzip, chunked")])).is_some());
        assert!(malformed(&parts(&[("host", "a"), ("host", "b")])).is_some());
        assert!(malformed(&parts(&[("transfer-encoding", "chunked")])).is_none());
    }

    #[test]
    fn hosts_and_hop_by_hop() {
        assert_eq!(
            request_host(&parts(&[("host", "Api.Example:8080")])).as_deref(),
            Some("api.example")
        );
        assert_eq!(
            request_host(&parts(&[("host", "[::1]:80")])).as_deref(),
            Some("::1")
        );
        assert_eq!(request_host(&parts(&[("host", "a b")])), None);
        let mut h = parts(&[
            ("connection", "x-secret, keep-alive"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
        ])
        .headers;
        strip_hop_by_hop(&mut h, false);
        assert!(!h.contains_key("x-secret") && !h.contains_key("upgrade"));
        assert_eq!(h.get("te").map(|v| v.as_bytes()), Some(&b"trailers"[..]));
    }

    #[test]
    fn paths_are_normalized_before_matching() {
        let n = |p: &str| normalize_path(p).map(|c| c.into_owned());
        assert_eq!(n("/admin").as_deref(), Some("/admin"));
        assert_eq!(n("/%61dmin").as_deref(), Some("/admin"));
        assert_eq!(n("//admin").as_deref(), Some("/admin"));
        assert_eq!(n("/./admin").as_deref(), Some("/admin"));
        assert_eq!(n("/x/../admin").as_deref(), Some("/admin"));
        assert_eq!(n("/a/b/").as_deref(), Some("/a/b/"));
        assert_eq!(
            n("/a/%2fb").as_deref(),
            Some("/a/%2Fb"),
            "an encoded slash is no separator"
        );
        assert_eq!(n("/.."), None);
        assert_eq!(n("/%zz"), None);
        assert_eq!(n("/%4"), None);
    }

    #[test]
    fn retry_budget_runs_out() {
        let b = RetryBudget::default();
        let granted = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 10);
        for _ in 0..5 {
            b.deposit();
        }
        assert!(b.withdraw());
        assert!(!b.withdraw());
    }
}

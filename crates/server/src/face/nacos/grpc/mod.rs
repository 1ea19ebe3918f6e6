//! Nacos 2.x's gRPC client protocol, on each Nacos listener's port + 1000 (as Nacos): the
//! unary `/Request/request` and the `/BiRequestStream/requestBiStream` a client opens once
//! per connection, both carrying `Payload`s whose `metadata.type` names a request or
//! response class and whose body is that class's JSON.
//!
//! What the clients do and expect (nacos-sdk-python 3.x and the Java 2.x client, as read
//! from their source, `../shared/research/`):
//! - a connection is one HTTP/2 connection: `ServerCheckRequest` (unary), then the stream
//!   with `ConnectionSetupRequest` (no answer expected). The client never echoes the
//!   connection ID, so berth tags each accepted connection itself ([`Tagged`]);
//! - requests carry `requestId: ""` and `module: ""`: routing is by `metadata.type` only;
//! - business failures are the typed response with `resultCode: 500` and an `errorCode`
//!   (300: config not found); `ErrorResponse` only for what has no typed answer (an
//!   unknown type, a body that is not JSON), since clients re-send on it;
//! - JSON answers never hold `null` where a client expects a string or a bool;
//! - pushes (`ConfigChangeNotifyRequest`, ...) go down the stream; clients answer on it;
//! - when the connection or its stream ends, everything the connection held goes with it.
//!
//! - [`config`]: config query, publish, remove, batch listen and change pushes;
//! - [`naming`]: instances (ephemeral ones live with their connection), batches,
//!   subscriptions with pushed changes, service query and list.

mod config;
mod naming;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use berth_config::{ItemKey, Reader};
use berth_proto::nacos::bi_request_stream_server::{BiRequestStream, BiRequestStreamServer};
use berth_proto::nacos::request_server::{Request as NacosRequest, RequestServer};
use berth_proto::nacos::{Any, Metadata, Payload};
use berth_registry::naming::{Instance, ServiceName};
use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Credential, Principal};
use crate::core::Core;
use crate::listen::ClientAddr;

/// How many pushes may wait for a slow client before its connection is dropped.
const PUSH_QUEUE: usize = 1024;

/// A connection's tag: berth's ID for it and the peer's address.
#[derive(Clone, Copy, Debug)]
pub struct ConnTag {
    /// Unique per member and process.
    pub id: u64,
    /// The peer.
    pub peer: Option<SocketAddr>,
}

/// An accepted connection tagged with a [`ConnTag`] that every request on it carries. When
/// it is dropped (the connection closed), a record it left without a stream goes too.
pub struct Tagged<C> {
    inner: C,
    tag: ConnTag,
    conns: Arc<Conns>,
}

impl<C> Drop for Tagged<C> {
    fn drop(&mut self) {
        let mut map = self.conns.lock();
        if map
            .get(&self.tag.id)
            .is_some_and(|c| c.push.is_none() && c.instances.is_empty())
        {
            if let Some(c) = map.remove(&self.tag.id) {
                for task in c.subscriptions.values() {
                    task.abort();
                }
            }
        }
    }
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

impl<C> Tagged<C> {
    /// Tags `inner`, accepted from `peer`, whose records live in `conns`.
    pub fn new(inner: C, peer: ClientAddr, conns: Arc<Conns>) -> Tagged<C> {
        Tagged {
            inner,
            tag: ConnTag {
                id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
                peer: peer.0,
            },
            conns,
        }
    }
}

impl<C: AsyncRead + Unpin> AsyncRead for Tagged<C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Tagged<C> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<C> tonic::transport::server::Connected for Tagged<C> {
    type ConnectInfo = ConnTag;

    fn connect_info(&self) -> ConnTag {
        self.tag
    }
}

/// What berth keeps of one client connection.
struct Conn {
    /// The ID `ServerCheckResponse` reported.
    id: String,
    /// The address the client reports (`metadata.clientIp`), else its peer's.
    client_ip: String,
    /// The application labels the client declared at setup (`app_`-prefixed labels, the
    /// prefix stripped, as Nacos keeps them): what label betas match.
    labels: std::collections::BTreeMap<String, String>,
    /// Where pushes go (set once the stream is open).
    push: Option<mpsc::Sender<Result<Payload, Status>>>,
    /// Ends the stream with an error status (its client then reconnects and re-syncs).
    cut: Option<tokio::sync::oneshot::Sender<Status>>,
    /// Ends the connection's reading side: what it held goes, as when its client closes it.
    closed: Arc<tokio::sync::Notify>,
    /// When the client last sent anything (a request, or an answer on the stream).
    last_active: Instant,
    /// When berth asked the silent client whether it is alive (`ClientDetectionRequest`).
    probed: Option<Instant>,
    /// Config items the client listens to.
    listening: HashSet<ItemKey>,
    /// Ephemeral instances registered over this connection, by service: they live while it
    /// does.
    instances: HashMap<ServiceName, Vec<Instance>>,
    /// The lease the connection's ephemeral instances live on (0: none yet).
    lease: i64,
    /// Services the client subscribed to, with the task that pushes their changes.
    subscriptions: HashMap<ServiceName, tokio::task::AbortHandle>,
    /// Pushes sent, for their request IDs.
    pushed: u64,
}

/// The refusal of a request that needs a set-up connection.
fn unregistered() -> (u16, String) {
    (
        code::UNREGISTERED,
        "this connection is not set up: open the stream with a ConnectionSetupRequest first".into(),
    )
}

/// Most config items one connection may listen to.
const MAX_LISTENING: usize = 100_000;

/// Every open connection of this listener, by [`ConnTag::id`].
#[derive(Default)]
pub struct Conns {
    map: Mutex<HashMap<u64, Conn>>,
    /// Set when the listener stops: closing connections then leave their instances to their
    /// leases (their clients, told to reconnect, register them again elsewhere; removing them
    /// here would only make them flap).
    stopping: std::sync::atomic::AtomicBool,
}

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Conn>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The record of a connection whose stream is set up; `None` otherwise (closed, or a
    /// client that skipped `ConnectionSetupRequest`): what it would hold could never be
    /// pushed to, nor cleaned up with the stream.
    fn with_open<R>(&self, tag: ConnTag, f: impl FnOnce(&mut Conn) -> R) -> Option<R> {
        self.lock()
            .get_mut(&tag.id)
            .filter(|c| c.push.is_some())
            .map(f)
    }

    /// The connection's record, made on first use (by `ServerCheckRequest` and the stream's
    /// setup).
    fn with<R>(&self, tag: ConnTag, f: impl FnOnce(&mut Conn) -> R) -> R {
        let mut map = self.lock();
        let conn = map.entry(tag.id).or_insert_with(|| Conn {
            id: format!(
                "{}_{}",
                crate::registry::now_ms(),
                tag.peer
                    .map_or_else(|| tag.id.to_string(), |a| a.to_string())
            ),
            client_ip: tag.peer.map(|a| a.ip().to_string()).unwrap_or_default(),
            labels: Default::default(),
            push: None,
            cut: None,
            closed: Arc::new(tokio::sync::Notify::new()),
            last_active: Instant::now(),
            probed: None,
            listening: HashSet::new(),
            instances: HashMap::new(),
            lease: 0,
            subscriptions: HashMap::new(),
            pushed: 0,
        });
        f(conn)
    }

    /// Sends `(type, body)` down connection `id`'s stream (see [`Conns::push`]); false
    /// when the connection is gone.
    fn push_to(&self, id: u64, kind: &str, body: impl Fn(&str) -> Value) -> bool {
        self.push_where(|conn_id, _| conn_id == id, kind, body);
        self.lock().get(&id).is_some_and(|c| c.push.is_some())
    }

    /// Sends `(type, body)` down the stream of each connection `to` picks; a connection whose
    /// queue is full is cut (its client reconnects and re-syncs).
    fn push(&self, to: impl Fn(&Conn) -> bool, kind: &str, body: impl Fn(&str) -> Value) {
        self.push_where(|_, c| to(c), kind, body);
    }

    fn push_where(
        &self,
        to: impl Fn(u64, &Conn) -> bool,
        kind: &str,
        body: impl Fn(&str) -> Value,
    ) {
        let mut cut = Vec::new();
        let mut map = self.lock();
        for (id, conn) in map.iter_mut() {
            let Some(tx) = conn.push.as_ref().filter(|_| to(*id, conn)) else {
                continue;
            };
            conn.pushed += 1;
            let payload = encode(kind, &body(&conn.pushed.to_string()));
            if tx.try_send(Ok(payload)).is_err() {
                cut.push(*id);
            }
        }
        for id in cut {
            if let Some(c) = map.get_mut(&id) {
                c.end_pushes(Status::unavailable(
                    "berth: this connection's pushes fell behind; reconnect and re-sync",
                ));
                tracing::warn!(conn = %c.id, "nacos grpc: a slow client's stream was cut");
            }
        }
    }

    /// Who reads through connection `tag`: its client's address (`fallback` when it has
    /// none) and labels.
    fn reader(&self, tag: ConnTag, fallback: &str) -> Reader {
        let mut reader = self
            .lock()
            .get(&tag.id)
            .map(|c| Reader {
                ip: c.client_ip.clone(),
                labels: c.labels.clone(),
            })
            .unwrap_or_default();
        if reader.ip.is_empty() {
            reader.ip = fallback.to_string();
        }
        reader
    }

    /// Notes that connection `tag`'s client is alive.
    fn touch(&self, tag: ConnTag) {
        if let Some(c) = self.lock().get_mut(&tag.id) {
            c.last_active = Instant::now();
            c.probed = None;
        }
    }

    /// Asks the clients silent for `idle` whether they are alive, and closes the connections
    /// of those asked before that have still said nothing (after `idle / 4`, at least 50 ms):
    /// a client that vanished without closing its connection (a power cut, a lost route)
    /// must not keep its ephemeral instances registered.
    fn sweep_idle(&self, idle: Duration) {
        let now = Instant::now();
        let grace = (idle / 4).max(Duration::from_millis(50));
        let mut ask = HashSet::new();
        {
            let mut map = self.lock();
            for c in map.values_mut().filter(|c| c.push.is_some()) {
                match c.probed {
                    Some(at) if now.duration_since(at) >= grace => {
                        tracing::info!(conn = %c.id, "nacos grpc: a silent client did not answer; closing its connection");
                        c.end_pushes(Status::unavailable(
                            "berth: the client did not answer a ClientDetectionRequest",
                        ));
                        c.closed.notify_one();
                    }
                    None if now.duration_since(c.last_active) >= idle => {
                        c.probed = Some(now);
                        ask.insert(c.id.clone());
                    }
                    _ => {}
                }
            }
        }
        if !ask.is_empty() {
            self.push(
                |c| ask.contains(&c.id),
                "ClientDetectionRequest",
                |id| json!({"headers": {}, "requestId": id, "module": "internal"}),
            );
        }
    }

    /// Tells every client to reconnect elsewhere (`ConnectResetRequest`, as Nacos does when a
    /// server leaves), then ends every stream.
    async fn reset_all(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.push(|_| true, "ConnectResetRequest", |id| {
            json!({"headers": {}, "requestId": id, "module": "internal", "serverIp": "", "serverPort": ""})
        });
        // Clients that switch on the reset close their connection themselves.
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline && self.lock().values().any(|c| c.push.is_some()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for c in self.lock().values_mut() {
            c.end_pushes(Status::unavailable("berth: this member is shutting down"));
        }
    }

    /// Forgets connection `id`: stops its subscriptions and hands back its ephemeral
    /// instances (to deregister) and its lease (to revoke).
    fn close(&self, id: u64) -> (Vec<Instance>, i64) {
        let Some(c) = self.lock().remove(&id) else {
            return (Vec::new(), 0);
        };
        for task in c.subscriptions.values() {
            task.abort();
        }
        tracing::debug!(conn = %c.id, "nacos grpc: connection closed");
        (c.instances.into_values().flatten().collect(), c.lease)
    }
}

impl Conn {
    /// Stops pushing to the connection and ends its stream with `why`.
    fn end_pushes(&mut self, why: Status) {
        self.push = None;
        if let Some(cut) = self.cut.take() {
            let _ = cut.send(why);
        }
    }
}

/// The application labels of a `ConnectionSetupRequest`: its `app_`-prefixed labels, the
/// prefix stripped.
fn app_labels(setup: &Value) -> std::collections::BTreeMap<String, String> {
    setup
        .get("labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.strip_prefix("app_")?.to_string(), v.as_str()?.to_string())))
        .collect()
}

/// A `Payload` of type `kind` with `body` as its JSON.
fn encode(kind: &str, body: &Value) -> Payload {
    Payload {
        metadata: Some(Metadata {
            r#type: kind.to_string(),
            client_ip: String::new(),
            headers: HashMap::new(),
        }),
        body: Some(Any {
            type_url: String::new(),
            value: serde_json::to_vec(body).unwrap_or_default(),
        }),
    }
}

/// A response of type `kind`: `fields` plus the base fields (success).
fn ok(kind: &str, mut fields: Value) -> Payload {
    if let Some(m) = fields.as_object_mut() {
        m.insert("resultCode".into(), json!(200));
        m.insert("errorCode".into(), json!(0));
        m.insert("message".into(), json!(""));
        m.insert("requestId".into(), json!(""));
    }
    encode(kind, &fields)
}

/// A failed response of type `kind` (`resultCode` 500) with Nacos's `code` and `message`,
/// plus `fields` a client needs even then.
fn failed(kind: &str, code: u16, message: &str, mut fields: Value) -> Payload {
    if let Some(m) = fields.as_object_mut() {
        m.insert("resultCode".into(), json!(500));
        m.insert("errorCode".into(), json!(code));
        m.insert("message".into(), json!(message));
        m.insert("requestId".into(), json!(""));
    }
    encode(kind, &fields)
}

/// Nacos's error codes berth answers with.
mod code {
    /// The connection is not set up (no `ConnectionSetupRequest` on its stream).
    pub const UNREGISTERED: u16 = 301;
    /// The request is invalid.
    pub const BAD_REQUEST: u16 = 400;
    /// The caller may not do it.
    pub const NO_RIGHT: u16 = 403;
    /// The config does not exist (clients read it as "no content").
    pub const CONFIG_NOT_FOUND: u16 = 300;
    /// A compare-and-publish lost, or what is created exists.
    pub const CONFLICT: u16 = 409;
    /// Too large.
    pub const TOO_LARGE: u16 = 413;
    /// The server cannot do it now (no leader, out of space).
    pub const SERVER_ERROR: u16 = 500;
    /// No leader.
    pub const UNAVAILABLE: u16 = 503;
}

/// A decoded request.
pub struct Req {
    /// `metadata.type`.
    pub kind: String,
    /// The body's JSON.
    pub body: Value,
    /// `metadata.headers` (and the body's `headers`).
    pub headers: HashMap<String, String>,
    /// The client's address as it reports it, else the peer's.
    pub client_ip: String,
}

impl Req {
    /// A string field of the body (`""` when absent or null).
    pub fn str(&self, k: &str) -> &str {
        self.body.get(k).and_then(Value::as_str).unwrap_or_default()
    }

    /// Who the request acts as (its `accessToken` header).
    fn principal(&self, core: &Core) -> Result<Principal, crate::auth::AuthFailure> {
        core.auth.principal(&Credential {
            token: self
                .headers
                .get("accessToken")
                .filter(|t| !t.is_empty())
                .cloned(),
            cert_cn: None,
        })
    }
}

/// Decodes a payload; an error is the code and message of the `ErrorResponse` to answer.
fn decode(p: Payload, tag: ConnTag) -> Result<Req, (u16, String)> {
    let meta = p.metadata.unwrap_or_default();
    if meta.r#type.is_empty() {
        return Err((
            code::BAD_REQUEST,
            "the payload names no type (metadata.type)".into(),
        ));
    }
    let raw = p.body.map(|b| b.value).unwrap_or_default();
    let body: Value = serde_json::from_slice(&raw).map_err(|e| {
        (
            code::BAD_REQUEST,
            format!("{}: the body is not JSON: {e}", meta.r#type),
        )
    })?;
    if !body.is_object() {
        return Err((
            code::BAD_REQUEST,
            format!("{}: the body is not a JSON object", meta.r#type),
        ));
    }
    let mut headers = meta.headers;
    if let Some(h) = body.get("headers").and_then(Value::as_object) {
        for (k, v) in h {
            if let Some(v) = v.as_str() {
                headers.entry(k.clone()).or_insert_with(|| v.to_string());
            }
        }
    }
    let client_ip = if meta.client_ip.is_empty() {
        tag.peer.map(|a| a.ip().to_string()).unwrap_or_default()
    } else {
        meta.client_ip
    };
    Ok(Req {
        kind: meta.r#type,
        body,
        headers,
        client_ip,
    })
}

fn error_response(code: u16, message: &str) -> Payload {
    failed("ErrorResponse", code, message, json!({}))
}

/// The gRPC services of one Nacos listener.
#[derive(Clone)]
pub struct Nacos {
    core: Arc<Core>,
    conns: Arc<Conns>,
}

fn tag_of<T>(req: &Request<T>) -> ConnTag {
    req.extensions()
        .get::<ConnTag>()
        .copied()
        .unwrap_or(ConnTag { id: 0, peer: None })
}

#[tonic::async_trait]
impl NacosRequest for Nacos {
    async fn request(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let tag = tag_of(&req);
        self.conns.touch(tag);
        let start = std::time::Instant::now();
        let (kind, answer) = match decode(req.into_inner(), tag) {
            Ok(r) => {
                let kind = r.kind.clone();
                (kind, self.dispatch(tag, r).await)
            }
            Err((c, m)) => ("invalid".to_string(), error_response(c, &m)),
        };
        let code = answer_code(&answer);
        tracing::debug!(request = %kind, code, elapsed = ?start.elapsed(), "nacos grpc");
        self.core
            .metrics
            .observe_nacos(&format!("grpc:{kind}"), code, start.elapsed());
        Ok(Response::new(answer))
    }
}

/// The `errorCode` of an answer (for metrics).
fn answer_code(p: &Payload) -> u16 {
    p.body
        .as_ref()
        .and_then(|b| serde_json::from_slice::<Value>(&b.value).ok())
        .and_then(|v| v.get("errorCode").and_then(Value::as_u64))
        .and_then(|c| u16::try_from(c).ok())
        .map_or(200, |c| if c == 0 { 200 } else { c })
}

impl Nacos {
    async fn dispatch(&self, tag: ConnTag, r: Req) -> Payload {
        let core = &self.core;
        match r.kind.as_str() {
            "ServerCheckRequest" => {
                let id = self.conns.with(tag, |c| c.id.clone());
                ok(
                    "ServerCheckResponse",
                    json!({"connectionId": id, "supportAbilityNegotiation": false}),
                )
            }
            "HealthCheckRequest" => ok("HealthCheckResponse", json!({})),
            "ConfigQueryRequest" => {
                let reader = self.conns.reader(tag, &r.client_ip);
                config::query(core, &r, &reader)
            }
            "ConfigPublishRequest" => config::publish(core, &r).await,
            "ConfigRemoveRequest" => config::remove(core, &r).await,
            "ConfigBatchListenRequest" => config::batch_listen(core, &self.conns, tag, &r),
            "InstanceRequest" => naming::instance_answer(core, &self.conns, tag, &r, false).await,
            "PersistentInstanceRequest" => {
                naming::instance_answer(core, &self.conns, tag, &r, true).await
            }
            "BatchInstanceRequest" => naming::batch(core, &self.conns, tag, &r).await,
            "SubscribeServiceRequest" => naming::subscribe(core, &self.conns, tag, &r),
            "ServiceQueryRequest" => naming::query(core, &r),
            "ServiceListRequest" => naming::list(core, &r),
            other => error_response(
                code::BAD_REQUEST,
                &format!("unknown payload type {other:?}"),
            ),
        }
    }
}

type PushStream = Pin<Box<dyn Stream<Item = Result<Payload, Status>> + Send>>;

#[tonic::async_trait]
impl BiRequestStream for Nacos {
    type requestBiStreamStream = PushStream;

    async fn request_bi_stream(
        &self,
        req: Request<Streaming<Payload>>,
    ) -> Result<Response<PushStream>, Status> {
        let tag = tag_of(&req);
        let mut incoming = req.into_inner();
        let (tx, rx) = mpsc::channel(PUSH_QUEUE);
        let (cut_tx, cut_rx) = tokio::sync::oneshot::channel::<Status>();
        let mut cut_tx = Some(cut_tx);
        let conns = self.conns.clone();
        let core = self.core.clone();
        let closed = conns.with(tag, |c| c.closed.clone());
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    msg = incoming.next() => msg,
                    () = closed.notified() => break,
                };
                let Some(Ok(p)) = msg else { break };
                conns.touch(tag);
                let r = match decode(p, tag) {
                    Ok(r) => r,
                    Err(_) => continue,
                };
                match r.kind.as_str() {
                    "ConnectionSetupRequest" => {
                        let cut = cut_tx.take();
                        let conn = conns.with(tag, |c| {
                            c.push = Some(tx.clone());
                            if cut.is_some() {
                                c.cut = cut;
                            }
                            if !r.client_ip.is_empty() {
                                c.client_ip = r.client_ip.clone();
                            }
                            c.labels = app_labels(&r.body);
                            c.id.clone()
                        });
                        tracing::debug!(conn = %conn, client = %r.str("clientVersion"), "nacos grpc: connection set up");
                    }
                    // The client's answers to pushes; nothing waits on them.
                    k if k.ends_with("Response") => {}
                    other => {
                        tracing::debug!(request = %other, "nacos grpc: unexpected on the stream")
                    }
                }
            }
            let (instances, lease) = conns.close(tag.id);
            if conns.stopping.load(Ordering::Relaxed) {
                tracing::debug!(
                    instances = instances.len(),
                    "nacos grpc: a connection closed at shutdown; its instances live on their lease"
                );
                return;
            }
            for i in instances {
                // An instance registered again through another connection (its client
                // reconnected) lives on that one's lease now: it stays.
                if lease != 0 && !core.registry.nacos_on_lease(&i, lease) {
                    continue;
                }
                if let Err(e) = core
                    .registry
                    .nacos_deregister(&core, &i.service, &i.ip, i.port, &i.cluster)
                    .await
                {
                    tracing::warn!(error = %e, instance = %i.instance_id(), "nacos grpc: deregistering a closed connection's instance");
                }
            }
            if lease != 0 {
                let _ = core.leases.revoke(lease, None).await;
            }
        });
        // A cut ends the stream with an error status: a stream that ends OK goes unnoticed
        // by clients, which would then wait for pushes forever.
        let stream = futures::stream::unfold((rx, Some(cut_rx)), |(mut rx, cut)| async move {
            let mut cut = cut?;
            tokio::select! {
                biased;
                item = rx.recv() => item.map(|item| (item, (rx, Some(cut)))),
                why = &mut cut => {
                    let why = why.unwrap_or_else(|_| Status::unavailable("berth: connection closed"));
                    Some((Err(why), (rx, None)))
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Serves Nacos's gRPC protocol on `incoming` until `stop`.
pub async fn serve<C, S>(
    core: Arc<Core>,
    incoming: S,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()>
where
    S: Stream<Item = std::io::Result<(C, ClientAddr)>> + Send + 'static,
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conns = Arc::new(Conns::default());
    let nacos = Nacos {
        core: core.clone(),
        conns: conns.clone(),
    };
    let pusher = tokio::spawn(config::push_changes(core.clone(), conns.clone()));
    let beater = tokio::spawn(naming::keep_alive(core.clone(), conns.clone()));
    let detector = tokio::spawn({
        let conns = conns.clone();
        let idle = core.config.nacos_idle_timeout;
        async move {
            let mut tick = tokio::time::interval((idle / 4).max(Duration::from_millis(50)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                conns.sweep_idle(idle);
            }
        }
    });
    let resetting = conns.clone();
    let tagging = conns.clone();
    let incoming =
        incoming.map(move |c| c.map(|(conn, peer)| Tagged::new(conn, peer, tagging.clone())));
    let result = crate::listen::grpc_server(&core.config)
        .add_service(RequestServer::new(nacos.clone()))
        .add_service(BiRequestStreamServer::new(nacos))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.changed().await;
            resetting.reset_all().await;
        })
        .await
        .context("Nacos gRPC server");
    pusher.abort();
    beater.abort();
    detector.abort();
    result
}

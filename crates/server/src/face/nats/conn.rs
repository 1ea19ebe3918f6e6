//! One NATS client connection: INFO first, then the client's ops as they arrive, a writer
//! task that drains what the hub queued for it, server pings, and on close every
//! subscription of the connection leaves the hub.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_auth::Access;
use berth_messaging::subject;
use berth_store::Keyspace;
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Notify};

use super::parse::{next_op, Op};
use super::{Client, Hub, Sub, SubRef, VERSION};

/// What CONNECT carries that berth acts on (unknown fields are ignored, as nats-server does).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Connect {
    verbose: bool,
    pedantic: bool,
    echo: Option<bool>,
    headers: bool,
    no_responders: bool,
    user: Option<String>,
    pass: Option<String>,
    auth_token: Option<String>,
    name: Option<String>,
    lang: Option<String>,
    version: Option<String>,
}

/// Whether to go on after an op.
enum Flow {
    Go,
    /// Close, after sending `-ERR '<text>'` when there is one.
    Close(Option<&'static str>),
}

struct Session {
    hub: Arc<Hub>,
    client: Arc<Client>,
    /// Before CONNECT, as nats-server: verbose.
    verbose: bool,
    pedantic: bool,
    connected: bool,
    auth: bool,
    /// The berth user the client logged in as (with auth on).
    user: Option<String>,
    /// The auth revision the session's grants were last checked against.
    checked_auth: i64,
    /// Publish permissions already decided, by subject, and the auth revision they hold at
    /// (any auth change empties it): a publisher's subjects repeat, and the answer is then
    /// one index lookup instead of the user's grants walked again.
    published: HashMap<Box<str>, bool>,
    published_at: i64,
}

/// Subjects whose publish permission a session remembers (then it starts over).
const PUBLISH_CACHE: usize = 256;

impl Session {
    /// After an auth change, holds the session to the grants as they are now, as
    /// nats-server does on a reload: a subscription whose read grant went is removed (with
    /// its permissions error), and a client that logged in as no user while auth was off,
    /// or as a user since deleted, is closed.
    fn recheck_grants(&mut self) -> Flow {
        let view = self.hub.core.auth.view();
        // A login under way is the auth deadline's to end.
        if view.revision == self.checked_auth || (self.auth && !self.connected) {
            return Flow::Go;
        }
        self.checked_auth = view.revision;
        if !view.enabled {
            return Flow::Go;
        }
        let Some(user) = self.user.as_deref().filter(|u| view.user(u).is_some()) else {
            tracing::info!(
                client = self.client.id,
                "NATS client closed: auth now requires a user it lacks"
            );
            return Flow::Close(Some("Authorization Violation"));
        };
        let denied: Vec<SubRef> = self
            .client
            .subs()
            .values()
            .filter(|sub| {
                let (key, end) = subject::key_range(&sub.0.subject);
                !view.allows(user, Keyspace::Messaging.id(), Access::Read, &key, &end)
            })
            .cloned()
            .collect();
        for sub in denied {
            self.hub.unsubscribe(&sub);
            self.err(&format!(
                "Permissions Violation for Subscription to \"{}\"",
                sub.0.subject
            ));
        }
        Flow::Go
    }

    /// Whether the client's user may `access` the subjects from `key` to `range_end` (keys
    /// of the messaging keyspace, etcd's range conventions): always with auth off; else by
    /// the user's grants as they are now (a revoke holds for the next operation).
    fn may(&self, access: Access, key: &[u8], range_end: &[u8]) -> bool {
        let Some(user) = &self.user else {
            return true;
        };
        let view = self.hub.core.auth.view();
        !view.enabled || view.allows(user, Keyspace::Messaging.id(), access, key, range_end)
    }

    /// [`Session::may`] for a publish to `subject`, remembered until auth changes.
    fn may_publish(&mut self, subject: &str) -> bool {
        if self.user.is_none() {
            return true;
        }
        let revision = self.hub.core.auth.revision();
        if revision != self.published_at {
            self.published.clear();
            self.published_at = revision;
        }
        if let Some(&ok) = self.published.get(subject) {
            return ok;
        }
        let ok = self.may(Access::Write, subject.as_bytes(), b"");
        if self.published.len() >= PUBLISH_CACHE {
            self.published.clear();
        }
        self.published.insert(subject.into(), ok);
        ok
    }

    fn reply(&self, line: &'static [u8]) {
        self.client.send(&self.hub, Bytes::from_static(line));
    }

    fn ok(&self) {
        if self.verbose {
            self.reply(b"+OK\r\n");
        }
    }

    fn err(&self, text: &str) {
        self.client
            .send(&self.hub, Bytes::from(format!("-ERR '{text}'\r\n")));
    }

    async fn handle(&mut self, op: Op) -> Flow {
        if self.auth && !self.connected && !matches!(op, Op::Connect(_)) {
            return Flow::Close(Some("Authorization Violation"));
        }
        match op {
            Op::Ping => self.reply(b"PONG\r\n"),
            Op::Pong => {}
            Op::Connect(json) => return self.connect(&json).await,
            Op::Pub {
                subject,
                reply,
                headers,
                payload,
            } => {
                if headers.is_some() && !self.client.headers.load(Ordering::Relaxed) {
                    tracing::debug!(client = self.client.id, "HPUB without headers negotiated");
                    return Flow::Close(None);
                }
                if self.pedantic && subject::check_literal(&subject).is_err() {
                    self.err("Invalid Publish Subject");
                    return Flow::Go;
                }
                // The server's own request and reply subjects are not for clients (as
                // nats-server keeps `$SYS` to itself).
                if super::reserved(&subject)
                    || reply.as_deref().is_some_and(super::reserved)
                    || !self.may_publish(&subject)
                {
                    self.err(&format!(
                        "Permissions Violation for Publish to \"{subject}\""
                    ));
                    return Flow::Go;
                }
                // nats-server acknowledges the PUB line before it routes the message: a
                // verbose client subscribed to its own subject sees +OK, then the MSG.
                self.ok();
                let stall = self.hub.publish(
                    &self.client,
                    &subject,
                    reply.as_deref(),
                    headers.as_ref(),
                    &payload,
                );
                // A route to another member is backed up: stop reading this publisher for a
                // while (nats-server stalls fast producers the same way) rather than drop.
                if let Some(stall) = stall {
                    stall.wait().await;
                }
            }
            Op::Sub {
                subject: filter,
                queue,
                sid,
            } => {
                let valid = subject::check_filter(&filter).is_ok()
                    && queue
                        .as_deref()
                        .is_none_or(|q| subject::check_queue(q).is_ok());
                if !valid {
                    self.err("Invalid Subject");
                    return Flow::Go;
                }
                let (key, end) = subject::key_range(&filter);
                if !self.may(Access::Read, &key, &end) {
                    self.err(&match &queue {
                        None => format!("Permissions Violation for Subscription to \"{filter}\""),
                        Some(q) => format!(
                            "Permissions Violation for Subscription to \"{filter}\" using queue \"{q}\""
                        ),
                    });
                    return Flow::Go;
                }
                let (held, taken) = {
                    let subs = self.client.subs();
                    (subs.len(), subs.contains_key(&sid))
                };
                let max = self.hub.limits.max_subscriptions;
                if max != 0 && held >= max && !taken {
                    self.err("maximum subscriptions exceeded");
                    return Flow::Go;
                }
                // A second SUB with a sid in use is ignored; the first stays.
                if !taken {
                    let sub = SubRef(Arc::new(Sub {
                        client: self.client.clone(),
                        sid,
                        subject: filter,
                        queue,
                        max: AtomicU64::new(0),
                        delivered: AtomicU64::new(0),
                        closed: AtomicBool::new(false),
                    }));
                    self.hub.subscribe(&sub);
                }
                self.ok();
            }
            Op::Unsub { sid, max } => {
                let sub = self.client.subs().get(&sid).cloned();
                if let Some(sub) = sub {
                    let delivered = sub.0.delivered.load(Ordering::Relaxed);
                    match max {
                        Some(max) if max > delivered => sub.0.max.store(max, Ordering::Relaxed),
                        _ => self.hub.unsubscribe(&sub),
                    }
                }
                self.ok();
            }
        }
        Flow::Go
    }

    async fn connect(&mut self, json: &[u8]) -> Flow {
        let Ok(c) = serde_json::from_slice::<Connect>(json) else {
            // nats-server closes on a CONNECT it cannot read, without a word.
            return Flow::Close(None);
        };
        if c.no_responders && !c.headers {
            return Flow::Close(Some("no responders requires headers support"));
        }
        if self.auth {
            let core = &self.hub.core;
            let user = match (&c.user, &c.pass, &c.auth_token) {
                (Some(user), Some(pass), _) => core
                    .auth
                    .authenticate(user, pass)
                    .await
                    .ok()
                    .map(|_| user.clone()),
                (_, _, Some(token)) => core
                    .auth
                    .principal(&crate::auth::Credential {
                        token: Some(token.clone()),
                        cert_cn: None,
                    })
                    .ok()
                    .and_then(|p| p.user().map(str::to_string)),
                _ => None,
            };
            self.user = user;
            if self.user.is_none() {
                tracing::info!(client = self.client.id, user = ?c.user, "NATS authorization violation");
                return Flow::Close(Some("Authorization Violation"));
            }
        }
        tracing::debug!(
            client = self.client.id,
            name = ?c.name,
            lang = ?c.lang,
            version = ?c.version,
            "NATS client connected"
        );
        *self
            .client
            .stats
            .named
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = (
            c.name.clone().unwrap_or_default(),
            c.lang.clone().unwrap_or_default(),
            c.version.clone().unwrap_or_default(),
        );
        self.verbose = c.verbose;
        self.pedantic = c.pedantic;
        self.connected = true;
        let client = &self.client;
        client.headers.store(c.headers, Ordering::Relaxed);
        client
            .no_responders
            .store(c.no_responders, Ordering::Relaxed);
        client.echo.store(c.echo.unwrap_or(true), Ordering::Relaxed);
        self.ok();
        Flow::Go
    }
}

/// INFO for a client: what nats-server 2.10 sends, with the client's own ID and address.
fn info(
    hub: &Hub,
    id: u64,
    local: SocketAddr,
    peer: Option<SocketAddr>,
    auth: bool,
    tls: bool,
) -> Bytes {
    let mut info = serde_json::json!({
        "server_id": hub.server_id,
        "server_name": hub.server_id,
        "version": VERSION,
        "proto": 1,
        "go": "berth",
        "host": local.ip().to_string(),
        "port": local.port(),
        "headers": true,
        "max_payload": hub.limits.max_payload,
        "jetstream": true,
        "client_id": id,
        "client_ip": peer.map(|p| p.ip().to_string()).unwrap_or_default(),
    });
    if auth {
        info["auth_required"] = serde_json::Value::Bool(true);
    }
    if tls {
        info["tls_required"] = serde_json::Value::Bool(true);
        info["tls_available"] = serde_json::Value::Bool(true);
    }
    Bytes::from(format!("INFO {info} \r\n"))
}

/// How long a client of a `tls://` listener has to finish its TLS handshake after INFO
/// (nats-server's default `tls_timeout`).
const TLS_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection's two halves, whatever it runs over (plain TCP, or TLS after INFO).
type Halves = (
    Box<dyn AsyncRead + Unpin + Send>,
    Box<dyn AsyncWrite + Unpin + Send>,
);

/// INFO in plain text, saying TLS is required, then the client's TLS handshake, as
/// nats-server does it; `None` when the client did not shake hands (a plain-text client is
/// told TLS is required) or took too long.
async fn upgrade<C>(
    mut io: C,
    info: &[u8],
    tls: Arc<rustls::ServerConfig>,
    id: u64,
) -> Option<Halves>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    io.write_all(info).await.ok()?;
    let handshake = async {
        // A TLS handshake record starts with 22; anything else is a plain-text client.
        let first = io.read_u8().await?;
        if first != 22 {
            let _ = io
                .write_all(b"-ERR 'Secure Connection - TLS Required'\r\n")
                .await;
            let _ = io.shutdown().await;
            return Err(std::io::Error::other("a plain-text client"));
        }
        let replayed = Replay {
            first: Some(first),
            inner: io,
        };
        tokio_rustls::TlsAcceptor::from(tls).accept(replayed).await
    };
    match tokio::time::timeout(TLS_TIMEOUT, handshake).await {
        Ok(Ok(stream)) => {
            let (rd, wr) = tokio::io::split(stream);
            Some((Box::new(rd), Box::new(wr)))
        }
        Ok(Err(e)) => {
            tracing::debug!(client = id, error = %e, "NATS TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(client = id, "NATS TLS handshake timed out");
            None
        }
    }
}

/// A connection whose first byte was already read: it is read again first.
struct Replay<C> {
    first: Option<u8>,
    inner: C,
}

impl<C: AsyncRead + Unpin> AsyncRead for Replay<C> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if let Some(b) = self.first.take() {
            buf.put_slice(&[b]);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Replay<C> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves one client until it leaves, breaks the protocol, falls behind, or `stop`; with
/// `tls`, the client upgrades to it after INFO.
pub(super) async fn run<C>(
    hub: Arc<Hub>,
    io: C,
    local: SocketAddr,
    peer: Option<SocketAddr>,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stop: watch::Receiver<bool>,
) where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let id = hub.next_client.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::unbounded_channel();
    let client = Arc::new(Client {
        id,
        out: tx,
        pending: AtomicUsize::new(0),
        headers: AtomicBool::new(false),
        echo: AtomicBool::new(true),
        no_responders: AtomicBool::new(false),
        closing: AtomicBool::new(false),
        slow: AtomicBool::new(false),
        close: Notify::new(),
        stats: super::ClientStats::new(peer),
        subs: Default::default(),
    });
    let full = {
        let mut clients = hub.clients();
        let full = clients.len() >= hub.limits.max_connections;
        if !full {
            clients.insert(id, client.clone());
        }
        full
    };
    if full {
        // INFO, then the refusal, as nats-server.
        tracing::warn!(
            client = id,
            ?peer,
            "NATS connection refused: --nats-max-connections reached"
        );
        let (_, mut wr) = tokio::io::split(io);
        let info = info(&hub, id, local, peer, false, tls.is_some());
        let _ = wr.write_all(&info).await;
        let _ = wr
            .write_all(b"-ERR 'maximum connections exceeded'\r\n")
            .await;
        let _ = wr.shutdown().await;
        return;
    }
    hub.totals.connections.fetch_add(1, Ordering::Relaxed);
    let metrics = hub.core.metrics.clone();
    metrics.nats_connections.inc();
    let auth = hub.core.auth.view().enabled;
    let hello = info(&hub, id, local, peer, auth, tls.is_some());
    let (mut rd, wr): Halves = match tls {
        None => {
            client.send(&hub, hello);
            let (rd, wr) = tokio::io::split(io);
            (Box::new(rd), Box::new(wr))
        }
        Some(tls) => match upgrade(io, &hello, tls, id).await {
            Some(halves) => halves,
            None => {
                hub.clients().remove(&id);
                metrics.nats_connections.dec();
                return;
            }
        },
    };
    let mut writer = tokio::spawn(write_loop(wr, rx, client.clone()));
    tracing::debug!(client = id, ?peer, "NATS connection");
    let mut s = Session {
        hub: hub.clone(),
        client: client.clone(),
        verbose: true,
        pedantic: false,
        connected: false,
        auth,
        user: None,
        checked_auth: hub.core.auth.view().revision,
        published: HashMap::new(),
        published_at: 0,
    };
    let mut grants = tokio::time::interval(GRANTS_CHECK);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let period = hub.limits.ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut unanswered = 0u32;
    let auth_deadline = tokio::time::sleep(if auth {
        hub.limits.auth_timeout
    } else {
        Duration::MAX / 4
    });
    tokio::pin!(auth_deadline);
    let end: Option<&'static str> = 'conn: loop {
        tokio::select! {
            read = rd.read_buf(&mut buf) => {
                match read {
                    Ok(0) => break None,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(client = id, error = %e, "NATS read failed");
                        break None;
                    }
                }
                unanswered = 0;
                client.stats.last_activity_ms.store(super::unix_ms(), Ordering::Relaxed);
                loop {
                    match next_op(&mut buf, hub.limits.max_payload) {
                        Ok(Some(op)) => {
                            if let Flow::Close(why) = s.handle(op).await {
                                break 'conn why;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(client = id, error = %e, "NATS protocol error");
                            if let Some(text) = e.err_text() {
                                s.err(&text);
                            }
                            break 'conn None;
                        }
                    }
                }
            }
            _ = ping.tick() => {
                if unanswered >= 2 {
                    break Some("Stale Connection");
                }
                unanswered += 1;
                s.reply(b"PING\r\n");
            }
            _ = grants.tick() => {
                if let Flow::Close(why) = s.recheck_grants() {
                    break why;
                }
            }
            _ = &mut auth_deadline, if auth && !s.connected => break Some("Authentication Timeout"),
            _ = client.close.notified() => break None,
            _ = stop.changed() => break None,
        }
    };
    if let Some(text) = end {
        s.err(text);
    }
    // Closing first: a publish that matched a subscription before it goes takes another
    // queue member instead of this connection.
    client.closing.store(true, Ordering::Relaxed);
    let subs: Vec<SubRef> = std::mem::take(&mut *client.subs()).into_values().collect();
    for sub in &subs {
        hub.unsubscribe(sub);
    }
    if client.slow.load(Ordering::Relaxed) {
        metrics.nats_slow_consumers.inc();
        hub.totals.slow_consumers.fetch_add(1, Ordering::Relaxed);
    }
    // What was queued is written (the writer ends on the empty sentinel), then the socket
    // closes; a slow consumer's queue is dropped, as is one that cannot be written in time.
    let _ = client.out.send(Bytes::new());
    if client.slow.load(Ordering::Relaxed)
        || tokio::time::timeout(Duration::from_secs(1), &mut writer)
            .await
            .is_err()
    {
        tracing::debug!(
            client = id,
            "NATS connection closed without writing what was queued"
        );
        writer.abort();
    }
    hub.clients().remove(&id);
    metrics.nats_connections.dec();
    tracing::debug!(client = id, "NATS connection closed");
}

/// How often a connection looks for an auth change that takes grants away (publishes check
/// the grants as they are each time; subscriptions and logins are held to a change within
/// this).
const GRANTS_CHECK: Duration = Duration::from_secs(1);

/// How long one write may block before the client counts as a slow consumer and is closed
/// (nats-server's `write_deadline`).
const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// Writes what the hub queued, coalescing what is waiting into one write; a write that fails
/// or blocks past [`WRITE_DEADLINE`] closes the connection.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    client: Arc<Client>,
) {
    let mut batch = BytesMut::with_capacity(64 * 1024);
    loop {
        let Some(first) = rx.recv().await else { break };
        let mut last = first.is_empty();
        let mut items = usize::from(!last);
        batch.extend_from_slice(&first);
        while !last && batch.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(b) => {
                    last = b.is_empty();
                    items += usize::from(!last);
                    batch.extend_from_slice(&b);
                }
                Err(_) => break,
            }
        }
        let write = async {
            wr.write_all(&batch).await?;
            wr.flush().await
        };
        match tokio::time::timeout(WRITE_DEADLINE, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(client = client.id, error = %e, "NATS write failed");
                client.shut();
                break;
            }
            Err(_) => {
                tracing::warn!(
                    client = client.id,
                    "NATS write blocked past its deadline: slow consumer"
                );
                client.slow.store(true, Ordering::Relaxed);
                client.shut();
                break;
            }
        }
        client.pending.fetch_sub(
            batch.len() + items * super::QUEUED_OVERHEAD,
            Ordering::Relaxed,
        );
        batch.clear();
        if last {
            break;
        }
    }
    let _ = wr.shutdown().await;
}

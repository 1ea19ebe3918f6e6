//! Upstream HTTP/1.1 connections for plain proxied requests: kept alive per node, shared by
//! every worker thread, and driven by the request that uses them (hyper's
//! `client::conn::http1`, its connection future polled inside the request's own task while
//! the answer's head and body come in) rather than each by a task of its own, as a pooled
//! client does: a request then costs no hand-over between tasks. The answer's body carries
//! the connection ([`NodeBody`]) and puts it back when it has been read to its end; a body
//! dropped half-read closes it.
//!
//! A pooled connection the node closed meanwhile is found out when it is taken (its
//! connection future ends, or it is not ready for a request), or when hyper hands the
//! request back unsent; the request then goes on a fresh connection, not counted as a
//! failure of the node.
//!
//! Nodes reached over TLS (`https`) are pooled apart by server name and TLS setting, so a
//! connection is only reused for the name it was set up for (as APISIX keys its keepalive
//! pools by `upstream_host`).
//!
//! gRPC (HTTP/2) and upgrades (WebSocket) keep hyper-util's pooled client.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use berth_net::tls::connect::ClientConn;
use berth_net::tls::stream::MaybeTls;
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::proxy::ReqBody;

/// Idle connections are closed after this long.
const IDLE: Duration = Duration::from_secs(60);
/// Idle connections kept per node (per node and server name, over TLS).
const MAX_IDLE: usize = 512;
/// Destinations (nodes, or nodes and server names) with idle connections kept at most: a
/// server name may come from the client's `Host`, so their number has no other bound.
const MAX_KEYS: usize = 1024;

type Driver = http1::Connection<TokioIo<ClientConn>, ReqBody>;

/// Where a request goes: a node's `host:port`, and the TLS it is reached over.
pub struct Dest<'a> {
    /// The node.
    pub authority: &'a str,
    /// TLS: the configuration, the server name, and the configuration's ID.
    pub tls: Option<(&'a Arc<rustls::ClientConfig>, ServerName<'static>, u64)>,
}

impl Dest<'_> {
    /// The pool's key: the node, with the server name and TLS setting when over TLS.
    fn key(&self) -> Cow<'_, str> {
        match &self.tls {
            None => Cow::Borrowed(self.authority),
            Some((_, name, id)) => {
                Cow::Owned(format!("{}#{}#{id:x}", self.authority, name.to_str()))
            }
        }
    }
}

/// One connection to a node: where requests go in, and the future that does the I/O.
struct Conn {
    sender: http1::SendRequest<ReqBody>,
    driver: Driver,
}

/// Why a request got no answer from its node.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Connecting failed.
    #[error("connecting: {0}")]
    Connect(#[source] std::io::Error),
    /// Connecting took longer than the route allows.
    #[error("connecting timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The TLS handshake failed (the node's certificate was refused, say).
    #[error("TLS handshake: {0}")]
    Tls(#[source] std::io::Error),
    /// A new connection ended before the request was written.
    #[error("the connection closed before the request was sent: {0}")]
    Unsent(#[source] hyper::Error),
    /// The connection failed during the exchange.
    #[error(transparent)]
    Exchange(#[from] hyper::Error),
}

impl SendError {
    /// True when nothing reached the node (the request may go to another one).
    pub fn is_connect(&self) -> bool {
        !matches!(self, SendError::Exchange(_))
    }
}

/// The pool. See the module docs.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<(Conn, Instant)>>>,
}

impl Pool {
    fn idle(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<(Conn, Instant)>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `req` (origin-form URI, `Host` set) to `dest` on a pooled connection or a new
    /// one (made within `connect`), and returns the answer's head.
    pub async fn send(
        self: &Arc<Pool>,
        dest: &Dest<'_>,
        connect: Duration,
        mut req: Request<ReqBody>,
    ) -> Result<Response<NodeBody>, SendError> {
        let key = dest.key();
        loop {
            let (conn, reused) = match self.checkout(&key).await {
                Some(c) => (c, true),
                None => (dial(dest, connect).await?, false),
            };
            match exchange(conn, req).await {
                Ok((resp, conn)) => {
                    let (parts, inner) = resp.into_parts();
                    let lease = conn.map(|conn| Lease {
                        conn,
                        pool: self.clone(),
                        key: key.to_string(),
                        ended: false,
                    });
                    return Ok(Response::from_parts(parts, NodeBody { inner, lease }));
                }
                Err(mut e) => match e.take_message() {
                    // A pooled connection the node had closed: the request was not sent.
                    Some(unsent) if reused => req = unsent,
                    // Unsent on a new connection: nothing reached the node.
                    Some(_) => return Err(SendError::Unsent(e.into_error())),
                    None => return Err(SendError::Exchange(e.into_error())),
                },
            }
        }
    }

    /// A pooled connection under `key` that is ready for a request; those found closed or
    /// stale are dropped.
    async fn checkout(&self, key: &str) -> Option<Conn> {
        loop {
            let (mut conn, since) = self.idle().get_mut(key)?.pop()?;
            if since.elapsed() > IDLE {
                continue;
            }
            // Polled once: a connection the node closed ends; an idle one signals that it
            // wants a request.
            let ready = std::future::poll_fn(|cx| {
                if Pin::new(&mut conn.driver).poll(cx).is_ready() {
                    return Poll::Ready(false);
                }
                Poll::Ready(matches!(conn.sender.poll_ready(cx), Poll::Ready(Ok(()))))
            })
            .await;
            if ready {
                return Some(conn);
            }
        }
    }

    fn put(&self, key: String, conn: Conn) {
        let mut idle = self.idle();
        if idle.len() >= MAX_KEYS && !idle.contains_key(&key) {
            // Closed rather than kept: too many destinations are pooled already.
            return;
        }
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE {
            list.push((conn, Instant::now()));
        }
    }

    /// Closes connections idle for longer than [`IDLE`] (a node nobody asks any more keeps
    /// none open).
    pub fn sweep(&self) {
        let mut idle = self.idle();
        for list in idle.values_mut() {
            list.retain(|(_, since)| since.elapsed() <= IDLE);
        }
        idle.retain(|_, list| !list.is_empty());
    }
}

/// A new connection to `dest`, TLS set up within `connect` too.
async fn dial(dest: &Dest<'_>, connect: Duration) -> Result<Conn, SendError> {
    let deadline = tokio::time::Instant::now() + connect;
    let tcp = tokio::time::timeout_at(deadline, TcpStream::connect(dest.authority))
        .await
        .map_err(|_| SendError::ConnectTimeout(connect))?
        .map_err(SendError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let stream = match &dest.tls {
        None => MaybeTls::Plain(tcp),
        Some((config, name, _)) => {
            let tls =
                tokio_rustls::TlsConnector::from(Arc::clone(config)).connect(name.clone(), tcp);
            let tls = tokio::time::timeout_at(deadline, tls)
                .await
                .map_err(|_| SendError::ConnectTimeout(connect))?
                .map_err(SendError::Tls)?;
            MaybeTls::Tls(Box::new(tls))
        }
    };
    let (sender, driver) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| SendError::Connect(std::io::Error::other(e)))?;
    Ok(Conn { sender, driver })
}

/// Sends `req` on `conn`, driving the connection until the answer's head is in; the answer
/// and the connection, unless it ended.
async fn exchange(
    conn: Conn,
    req: Request<ReqBody>,
) -> Result<(Response<Incoming>, Option<Conn>), hyper::client::conn::TrySendError<Request<ReqBody>>>
{
    let Conn { mut sender, driver } = conn;
    let mut answer = std::pin::pin!(sender.try_send_request(req));
    // Dropped as soon as it ends: only then does hyper hand back a request still queued
    // (a connection the node closed just now ends cleanly with it unsent).
    let mut driver = Some(driver);
    let resp = std::future::poll_fn(|cx| {
        if let Some(d) = &mut driver {
            if Pin::new(d).poll(cx).is_ready() {
                driver = None;
            }
        }
        answer.as_mut().poll(cx)
    })
    .await?;
    Ok((resp, driver.map(|driver| Conn { sender, driver })))
}

/// A connection on loan to an answer's body.
struct Lease {
    conn: Conn,
    pool: Arc<Pool>,
    key: String,
    /// The body was read to its end.
    ended: bool,
}

/// A node's answer body as it streams in, driving its connection (when pooled) and putting
/// it back once read to the end.
pub struct NodeBody {
    inner: Incoming,
    lease: Option<Lease>,
}

impl From<Incoming> for NodeBody {
    /// A body whose connection some other task drives.
    fn from(inner: Incoming) -> NodeBody {
        NodeBody { inner, lease: None }
    }
}

impl Body for NodeBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(lease) = &mut this.lease {
            if Pin::new(&mut lease.conn.driver).poll(cx).is_ready() {
                // The connection ended: what it read is in the body already.
                this.lease = None;
            }
        }
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Poll::Ready(None), Some(lease)) = (&frame, &mut this.lease) {
            lease.ended = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for NodeBody {
    fn drop(&mut self) {
        let Some(mut lease) = self.lease.take() else {
            return;
        };
        // Read to the end (or the server stopped at the stated length), and ready for the
        // next request once polled (not still sending this request's body, after an early
        // answer): reusable. Polled here once with no waker to call; whoever takes it out
        // of the pool polls it with theirs.
        if !(lease.ended || self.inner.is_end_stream()) {
            return;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let conn = &mut lease.conn;
        if Pin::new(&mut conn.driver).poll(&mut cx).is_ready() {
            return;
        }
        if matches!(conn.sender.poll_ready(&mut cx), Poll::Ready(Ok(()))) {
            lease.pool.put(lease.key, lease.conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Either, Full};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A node answering `body` to every request, counting the connections it accepts;
    /// with `close`, it closes each connection after one answer.
    async fn node(body: &'static str, close: bool) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| async move {
                        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                        if close {
                            r.headers_mut()
                                .insert(http::header::CONNECTION, "close".parse().expect("value"));
                        }
                        Ok::<_, std::convert::Infallible>(r)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    fn plain(authority: &str) -> Dest<'_> {
        Dest {
            authority,
            tls: None,
        }
    }

    fn get(addr: &str) -> Request<ReqBody> {
        Request::builder()
            .uri("/")
            .header(http::header::HOST, addr)
            .body(Either::Right(Full::new(Bytes::new())))
            .expect("request")
    }

    async fn read(pool: &Arc<Pool>, addr: &str) -> Bytes {
        let resp = pool
            .send(&plain(addr), Duration::from_secs(1), get(addr))
            .await
            .expect("answer");
        resp.into_body().collect().await.expect("body").to_bytes()
    }

    #[tokio::test]
    async fn connections_are_reused_once_bodies_are_read() {
        let (addr, accepted) = node("hello", false).await;
        let pool = Arc::new(Pool::default());
        for _ in 0..20 {
            assert_eq!(read(&pool, &addr).await, "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for all");
        // An answer dropped before its body was read closes its connection.
        let resp = pool
            .send(&plain(&addr), Duration::from_secs(1), get(&addr))
            .await
            .expect("answer");
        drop(resp);
        assert_eq!(read(&pool, &addr).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connections_the_node_closed_are_not_failures() {
        let (addr, accepted) = node("bye", true).await;
        let pool = Arc::new(Pool::default());
        for _ in 0..5 {
            assert_eq!(read(&pool, &addr).await, "bye");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn tls_connections_are_pooled_by_server_name() {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["a.test".into(), "b.test".into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let server =
            rustls::ServerConfig::builder_with_provider(Arc::new(berth_net::tls::provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key"),
                )
                .expect("config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let names = Arc::new(Mutex::new(Vec::new()));
        let seen = names.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().map(str::to_string);
                    seen.lock().expect("lock").push(sni);
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"secure"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        let configs = super::super::node_tls::TlsConfigs::default();
        let config = configs
            .get(&berth_gateway::NodeTls::default(), &Default::default())
            .expect("config");
        let pool = Arc::new(Pool::default());
        let dest = |name: &str| Dest {
            authority: &addr,
            tls: Some((
                &config.h1,
                ServerName::try_from(name.to_string()).expect("name"),
                config.id,
            )),
        };
        for name in ["a.test", "a.test", "b.test", "a.test", "b.test"] {
            let resp = pool
                .send(&dest(name), Duration::from_secs(1), get(&addr))
                .await
                .expect("answer");
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(body, "secure");
        }
        let names = names.lock().expect("lock").clone();
        assert_eq!(
            names,
            vec![Some("a.test".to_string()), Some("b.test".to_string())],
            "one connection per server name, each sent its name"
        );
    }

    #[tokio::test]
    async fn refused_connections_are_connect_errors() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").to_string()
        };
        let pool = Arc::new(Pool::default());
        match pool
            .send(&plain(&addr), Duration::from_secs(1), get(&addr))
            .await
        {
            Err(e) => assert!(e.is_connect(), "{e}"),
            Ok(_) => panic!("nobody listens"),
        }
    }
}

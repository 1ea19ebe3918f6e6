//! TLS on a listener: each accepted connection's handshake runs on a task of its own (a slow
//! or silent client holds up nobody else), bounded by the handshake timeout, and only
//! connections that complete it reach the server. A failed handshake (plain text on a TLS
//! port, an unknown CA, an expired certificate, no client certificate where one is required)
//! is logged at debug level and counted ([`handshake_failures`], on `/metrics`), never an
//! error of the server's.
//!
//! The verified client certificate's subject common name travels with the connection as
//! [`ConnInfo::client_cn`]; tonic hands a connection's [`ConnInfo`] to each of its requests.

use std::fmt::Debug;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;

use super::stream::MaybeTls;

static HANDSHAKE_FAILURES: AtomicU64 = AtomicU64::new(0);

/// TLS handshakes that failed or timed out on this process's listeners so far.
pub fn handshake_failures() -> u64 {
    HANDSHAKE_FAILURES.load(Ordering::Relaxed)
}

/// Connections whose handshakes completed, waiting for the server to take them.
const READY: usize = 64;

/// An accepted connection: plain, or TLS with the client certificate's common name.
#[derive(Debug)]
pub struct ServerConn<C> {
    io: MaybeTls<C, tokio_rustls::server::TlsStream<C>>,
    client_cn: Option<String>,
}

impl<C> ServerConn<C> {
    /// A connection without TLS.
    pub fn plain(conn: C) -> Self {
        ServerConn {
            io: MaybeTls::Plain(conn),
            client_cn: None,
        }
    }

    /// The verified client certificate's subject common name (TLS with client
    /// certificates only).
    pub fn client_cn(&self) -> Option<&str> {
        self.client_cn.as_deref()
    }
}

/// What tonic attaches to every request of a connection (`Request::extensions`).
#[derive(Debug, Clone)]
pub struct ConnInfo<I> {
    /// The transport's own information (for TCP: the addresses).
    pub transport: I,
    /// The verified client certificate's subject common name, when the client presented one
    /// (only listeners that verify client certificates ask for one).
    pub client_cn: Option<String>,
}

impl<C: Connected> Connected for ServerConn<C> {
    type ConnectInfo = ConnInfo<C::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        let transport = match &self.io {
            MaybeTls::Plain(c) => c.connect_info(),
            MaybeTls::Tls(t) => t.get_ref().0.connect_info(),
        };
        ConnInfo {
            transport,
            client_cn: self.client_cn.clone(),
        }
    }
}

impl<C: AsyncRead + AsyncWrite + Unpin> AsyncRead for ServerConn<C> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<C: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ServerConn<C> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The connections of `incoming` after their TLS handshakes under `config`, each bounded by
/// `timeout` (`None`: unbounded). Must be called within a tokio runtime: a task accepts and
/// one task per connection shakes hands. They stop when the returned stream is dropped.
pub fn tls_incoming<S, C>(
    mut incoming: S,
    config: Arc<rustls::ServerConfig>,
    timeout: Option<Duration>,
) -> impl Stream<Item = io::Result<ServerConn<C>>> + Send + 'static
where
    S: Stream<Item = io::Result<C>> + Send + Unpin + 'static,
    C: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    C::ConnectInfo: Debug,
{
    let acceptor = TlsAcceptor::from(config);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<ServerConn<C>>(READY);
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                conn = incoming.next() => conn,
                _ = tx.closed() => return,
            };
            let conn = match conn {
                Some(Ok(conn)) => conn,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "accept");
                    continue;
                }
                None => return,
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let peer = conn.connect_info();
                match handshake(&acceptor, conn, timeout).await {
                    Ok(conn) => {
                        let _ = tx.send(conn).await;
                    }
                    Err(e) => {
                        HANDSHAKE_FAILURES.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %e, peer = ?peer, "TLS handshake failed");
                    }
                }
            });
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|c| c.map(Ok)))
}

async fn handshake<C: AsyncRead + AsyncWrite + Unpin>(
    acceptor: &TlsAcceptor,
    conn: C,
    timeout: Option<Duration>,
) -> io::Result<ServerConn<C>> {
    let accept = acceptor.accept(conn);
    let tls = match timeout {
        Some(t) => tokio::time::timeout(t, accept).await.map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no TLS handshake within {t:?}"),
            )
        })??,
        None => accept.await?,
    };
    let client_cn = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| super::name::common_name(cert));
    Ok(ServerConn {
        io: MaybeTls::Tls(Box::new(tls)),
        client_cn,
    })
}

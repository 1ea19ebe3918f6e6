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
use crate::listen::{FirstBytes, PREFACE_LEN};

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
    /// A TLS session's first bytes (the HTTP/2 preface or request) are bounded as a plain
    /// connection's are: the bound the TCP layer sets is lifted by the ClientHello.
    io: MaybeTls<C, FirstBytes<tokio_rustls::server::TlsStream<C>>>,
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
            MaybeTls::Tls(t) => t.get_ref().get_ref().0.connect_info(),
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

/// The connections of `incoming` after their TLS handshakes under `config`, each handshake
/// bounded by `timeout`, and then the wait for the first bytes inside TLS too (`None`:
/// unbounded). Must be called within a tokio runtime: a task accepts and
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
        io: MaybeTls::Tls(Box::new(FirstBytes::new(tls, PREFACE_LEN, timeout))),
        client_cn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::TlsSettings;
    use std::path::Path;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A CA, a server certificate for 127.0.0.1 and a client certificate for `alice`.
    fn pki(dir: &Path) {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).expect("ca");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
        for (file, cn) in [("server", "the server"), ("client", "alice")] {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut p = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).expect("p");
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            let cert = p.signed_by(&key, &ca, &ca_key).expect("sign");
            std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).expect("write");
            std::fs::write(dir.join(format!("{file}-key.pem")), key.serialize_pem())
                .expect("write");
        }
    }

    fn settings(dir: &Path, who: &str) -> TlsSettings {
        TlsSettings {
            cert_file: Some(dir.join(format!("{who}.pem"))),
            key_file: Some(dir.join(format!("{who}-key.pem"))),
            trusted_ca_file: Some(dir.join("ca.pem")),
            client_cert_auth: true,
            ..Default::default()
        }
    }

    /// The accepted connections of a TLS listener requiring client certificates.
    async fn listener(
        dir: &Path,
        bound: Duration,
    ) -> (
        std::net::SocketAddr,
        impl Stream<Item = io::Result<ServerConn<TcpStream>>>,
    ) {
        let config = settings(dir, "server")
            .server_config(&[b"test"], "test")
            .expect("server config");
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let accepted = futures::stream::unfold(tcp, |tcp| async move {
            let conn = tcp.accept().await.map(|(c, _)| c);
            Some((conn, tcp))
        });
        let conns = tls_incoming(Box::pin(accepted), Arc::new(config), Some(bound));
        (addr, conns)
    }

    #[tokio::test]
    async fn the_verified_client_cn_travels_with_the_connection_and_failures_are_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        pki(dir.path());
        let (addr, conns) = listener(dir.path(), Duration::from_secs(5)).await;
        let mut conns = Box::pin(conns);
        let before = handshake_failures();

        // Plain text to the TLS port: refused, counted, the listener goes on.
        let mut plain = TcpStream::connect(addr).await.expect("connect");
        plain
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 64];
        let _ = plain.read(&mut buf).await;
        // No client certificate: refused too.
        let mut anonymous = settings(dir.path(), "client");
        anonymous.cert_file = None;
        anonymous.key_file = None;
        let anonymous = anonymous.client_config("test").expect("config");
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        if let Ok(mut tls) = tokio_rustls::TlsConnector::from(Arc::new(anonymous))
            .connect(name.clone(), tcp)
            .await
        {
            // TLS 1.3: the server's refusal arrives after the client's side completed.
            let _ = tls.write_all(b"x").await;
            assert!(matches!(tls.read(&mut buf).await, Err(_) | Ok(0)));
        }

        let mut client = settings(dir.path(), "client")
            .client_config("test")
            .expect("config");
        client.alpn_protocols.clear();
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(name, tcp)
            .await
            .expect("handshake");
        tls.write_all(b"hello").await.expect("write");
        let mut conn = conns.next().await.expect("a connection").expect("ok");
        assert_eq!(conn.client_cn(), Some("alice"));
        assert_eq!(conn.connect_info().client_cn.as_deref(), Some("alice"));
        let mut got = [0u8; 5];
        conn.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hello");
        // The refused handshakes are counted on their tasks, maybe just after closing.
        for _ in 0..100 {
            if handshake_failures() >= before + 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            handshake_failures() >= before + 2,
            "failures {} -> {}",
            before,
            handshake_failures()
        );
    }

    #[tokio::test]
    async fn a_client_silent_after_its_handshake_is_closed_at_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        pki(dir.path());
        let (addr, conns) = listener(dir.path(), Duration::from_millis(300)).await;
        let mut conns = Box::pin(conns);
        let mut client = settings(dir.path(), "client")
            .client_config("test")
            .expect("config");
        client.alpn_protocols.clear();
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let _tls = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(name, tcp)
            .await
            .expect("handshake");
        let mut conn = conns.next().await.expect("a connection").expect("ok");
        let started = std::time::Instant::now();
        let e = conn.read(&mut [0u8; 8]).await.expect_err("times out");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}

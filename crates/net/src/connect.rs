//! Dials TCP for tonic channels: Nagle off, writes coalesced, so a client's requests that are
//! ready together (headers and body, or many callers on one connection) share one write.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tonic::transport::Uri;

use crate::coalesce::CoalescedWrites;

/// A tonic connector (`Endpoint::connect_with_connector`) over coalescing TCP sockets.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector;

impl tower_service::Service<Uri> for TcpConnector {
    type Response = TokioIo<CoalescedWrites<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            if uri.scheme_str().is_some_and(|s| s != "http") {
                let e = format!("{uri}: only http:// is supported (no TLS in this build)");
                return Err(io::Error::new(io::ErrorKind::InvalidInput, e));
            }
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "URL has no host"))?;
            // An IPv6 literal comes bracketed in a URL.
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(80);
            let stream = TcpStream::connect((host, port)).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(CoalescedWrites::new(stream)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower_service::Service;

    #[tokio::test]
    async fn dials_the_urls_host_and_port_with_nagle_off() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accept = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.expect("read");
            buf
        });
        let uri: Uri = format!("http://127.0.0.1:{port}").parse().expect("uri");
        let conn = TcpConnector.call(uri).await.expect("connect");
        let mut conn = conn.into_inner();
        assert!(conn.get_ref().nodelay().expect("nodelay"));
        conn.write_all(b"hello").await.expect("write");
        conn.flush().await.expect("flush");
        assert_eq!(&accept.await.expect("join"), b"hello");
    }

    #[tokio::test]
    async fn tls_urls_are_refused_rather_than_sent_in_plain_text() {
        let uri: Uri = "https://127.0.0.1:1".parse().expect("uri");
        let e = TcpConnector.call(uri).await.expect_err("https");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn an_unreachable_port_is_an_error() {
        // Bind then drop: nothing listens on the port any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let uri: Uri = format!("http://[::ffff:127.0.0.1]:{port}")
            .parse()
            .expect("uri");
        assert!(TcpConnector.call(uri).await.is_err());
    }
}

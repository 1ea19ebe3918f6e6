//! A tonic connector that dials `http://` URLs in plain TCP and `https://` URLs over TLS
//! (server verified by the configuration's CA, this side's certificate presented when it has
//! one). Nagle off and writes coalesced as [`crate::TcpConnector`]; coalescing sits above
//! TLS, so requests that are ready together share one TLS record.
//!
//! tonic must be built without its own TLS features (`tls-ring`, `tls-aws-lc`, which e.g.
//! etcd-client's `tls` feature turns on): with them, tonic refuses `https://` URLs on a
//! channel that has no tonic TLS config, before this connector's TLS stream reaches it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::Uri;

use super::stream::MaybeTls;
use crate::coalesce::CoalescedWrites;

/// A client connection: plain or TLS.
pub type ClientConn = MaybeTls<TcpStream, TlsStream<TcpStream>>;

/// Dials plain or TLS by the URL's scheme (`Endpoint::connect_with_connector`).
#[derive(Debug, Clone, Default)]
pub struct Connector {
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Connector {
    /// A connector for `http://` URLs, and for `https://` ones when `tls` is given.
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>) -> Connector {
        Connector { tls }
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<CoalescedWrites<ClientConn>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
            let https = match uri.scheme_str() {
                Some("https") => true,
                Some("http") | None => false,
                Some(other) => return Err(invalid(format!("{uri}: unknown scheme {other}"))),
            };
            let host = uri
                .host()
                .ok_or_else(|| invalid(format!("{uri}: URL has no host")))?;
            // An IPv6 literal comes bracketed in a URL.
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let conn = if https {
                let config = tls.ok_or_else(|| {
                    invalid(format!("{uri}: https:// but no TLS settings were given"))
                })?;
                let name = ServerName::try_from(host.clone())
                    .map_err(|e| invalid(format!("{uri}: {e}")))?;
                let stream = TcpStream::connect((host.as_str(), port)).await?;
                stream.set_nodelay(true)?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, stream)
                    .await?;
                MaybeTls::Tls(Box::new(tls))
            } else {
                let stream = TcpStream::connect((host.as_str(), port)).await?;
                stream.set_nodelay(true)?;
                MaybeTls::Plain(stream)
            };
            Ok(TokioIo::new(CoalescedWrites::new(conn)))
        })
    }
}

//! The node's listeners as its config asks: binds them through [`berth_net::listen`] (backlog,
//! accept backoff, handshake deadline, TCP keepalive), sets HTTP/2 keepalive on the gRPC
//! servers, and adapts the accept loop to axum for the HTTP listener.

use std::io;
use std::net::SocketAddr;

use berth_net::{FirstBytes, Incoming};
use tokio::net::TcpStream;

use crate::config::Config;

/// Binds `addr` for one of the node's servers.
pub fn bind(addr: SocketAddr, cfg: &Config) -> io::Result<Incoming> {
    Ok(Incoming::bind(addr)?.handshake_timeout(cfg.handshake_timeout))
}

/// A tonic server builder with the config's HTTP/2 keepalive: a connection that does not
/// answer a ping within the timeout is closed. (tonic's `tcp_keepalive` would be ignored for
/// connections handed to it; [`bind`]'s listener sets TCP keepalive itself.)
pub fn grpc_server(cfg: &Config) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(cfg.grpc_keepalive_interval)
        .http2_keepalive_timeout(Some(cfg.grpc_keepalive_timeout))
}

/// The HTTP listener as axum takes it; accept errors are handled in [`Incoming`].
pub struct HttpListener(pub Incoming);

impl HttpListener {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl axum::serve::Listener for HttpListener {
    type Io = FirstBytes<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        self.0.accept().await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        HttpListener::local_addr(self)
    }
}

/// The peer address of a connection to an HTTP listener (`None` where the transport has
/// none, as in the simulation).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub Option<SocketAddr>);

/// The client's address as proxies and Nacos's `RequestUtil` report it: `X-Forwarded-For`'s
/// first entry, `X-Real-IP`, else the connection's peer (`""` when unknown).
pub fn client_ip(headers: &axum::http::HeaderMap, conn: ClientAddr) -> String {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    header("x-forwarded-for")
        .or_else(|| header("x-real-ip"))
        .or_else(|| conn.0.map(|a| a.ip().to_string()))
        .unwrap_or_default()
}

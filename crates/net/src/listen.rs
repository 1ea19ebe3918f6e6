//! Accepts connections for the node's servers (client gRPC, peer gRPC, HTTP): one place that
//! binds listeners, survives accept errors without spinning, and bounds connections that never
//! say anything.
//!
//! - [`bind`]: a listener with a backlog of [`BACKLOG`] (etcd's; the usual 128 made a reconnect
//!   storm of a few thousand clients wait out 1 s SYN retransmissions).
//! - [`Incoming`]: accepted connections as a stream (tonic's `serve_with_incoming`) or one at a
//!   time ([`Incoming::accept`], for axum's `Listener`). Out of file descriptors (or other
//!   resource errors), `accept` fails at once every time it is called; the loop used to spin
//!   on it at most of a core. It now pauses 5 ms, doubling to 1 s, as Go's `net/http` server
//!   does, and warns. Errors never reach the server: tonic skips `Err` items, so yielding them
//!   would spin in tonic instead.
//! - [`FirstBytes`]: a connection must send its first [`PREFACE_LEN`] bytes (the HTTP/2 client
//!   preface, or the start of an HTTP/1 request) within a bound of being accepted. Neither
//!   hyper's HTTP/2 server nor axum bounds the wait for them, so a client that connects and
//!   sends nothing (or a half-open connection) held its socket and task forever.
//!
//! Accepted TCP connections also get Nagle off and TCP keepalive (see [`KEEPALIVE_IDLE`]), since
//! tonic's own `tcp_keepalive` setting does nothing for connections it is handed.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::{Instant, Sleep};

/// Listen backlog (etcd's, and Linux's default `somaxconn` cap since 5.4).
pub const BACKLOG: u32 = 4096;

/// First pause after an accept error that is not the connection's own.
pub const PAUSE_MIN: Duration = Duration::from_millis(5);
/// Longest pause between accept attempts while they keep failing.
pub const PAUSE_MAX: Duration = Duration::from_secs(1);
/// While paused at [`PAUSE_MAX`], how often the warning is repeated.
const REWARN: Duration = Duration::from_secs(60);

/// Idle time before TCP keepalive probes start, and the time between probes; with
/// [`KEEPALIVE_PROBES`] a silent dead peer of an idle connection is dropped after ~150 s. Go's
/// listener defaults, which etcd's listeners inherit.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
/// Unanswered TCP keepalive probes before the kernel drops the connection.
pub const KEEPALIVE_PROBES: u32 = 9;

/// Bytes [`FirstBytes`] waits for: the length of the HTTP/2 client preface
/// (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`); an HTTP/1.1 request (request line and `Host`) is longer.
pub const PREFACE_LEN: usize = 24;

/// Binds a TCP listener on `addr` with `SO_REUSEADDR` (as std and tokio do) and a backlog of
/// [`BACKLOG`]. Must be called within a tokio runtime.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Something connections are accepted from: a TCP listener, or a fake in tests.
pub trait Accept {
    /// An accepted connection.
    type Conn;
    /// Accepts one connection, as [`TcpListener::poll_accept`].
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Conn, SocketAddr)>>;
}

impl Accept for TcpListener {
    type Conn = TcpStream;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        let (stream, peer) = ready!(TcpListener::poll_accept(self, cx))?;
        // Failing to set an option leaves a working connection; not worth refusing it for.
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE);
        // Elsewhere the system's probe interval and count apply.
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "macos"))]
        let keepalive = keepalive
            .with_interval(KEEPALIVE_IDLE)
            .with_retries(KEEPALIVE_PROBES);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        Poll::Ready(Ok((stream, peer)))
    }
}

/// True for accept errors that concern only the connection being accepted (it was reset or
/// aborted before we took it, or a firewall refused it): the next accept may well succeed, so
/// it is tried at once. Linux also reports pending network errors of the new connection from
/// `accept` (see accept(2)), and asks that they be treated the same way.
fn is_connection_error(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted
            | ConnectionReset
            | ConnectionRefused
            | PermissionDenied
            | Interrupted
            | WouldBlock
            | TimedOut
            | HostUnreachable
            | NetworkUnreachable
            | NetworkDown
    ) {
        return true;
    }
    #[cfg(target_os = "linux")]
    {
        matches!(
            e.raw_os_error(),
            Some(
                libc::EPROTO
                    | libc::ENOPROTOOPT
                    | libc::EHOSTDOWN
                    | libc::ENONET
                    | libc::EOPNOTSUPP
            )
        )
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// The pause schedule after accept errors: [`PAUSE_MIN`] doubling to [`PAUSE_MAX`].
#[derive(Debug, Default)]
struct Backoff {
    /// The last pause taken; `None` after a successful accept.
    delay: Option<Duration>,
    /// Failed accepts since the last success.
    failures: u64,
    /// When the warning was last logged.
    warned: Option<Instant>,
}

impl Backoff {
    /// The next pause after a failure, logging at WARN when the pause grows (at most 8 times
    /// before it reaches its cap) and then once every [`REWARN`].
    fn fail(&mut self, e: &io::Error, listener: Option<SocketAddr>) -> Duration {
        let delay = match self.delay {
            None => PAUSE_MIN,
            Some(d) => (d * 2).min(PAUSE_MAX),
        };
        let grew = self.delay != Some(delay);
        self.delay = Some(delay);
        self.failures += 1;
        let now = Instant::now();
        if grew || self.warned.is_none_or(|t| now - t >= REWARN) {
            self.warned = Some(now);
            tracing::warn!(
                listener = %listener.map(|a| a.to_string()).unwrap_or_default(),
                error = %e,
                retry_in = ?delay,
                failures = self.failures,
                "accepting connections failed; pausing accepts (out of file descriptors?)"
            );
        }
        delay
    }

    /// A connection was accepted: the next failure starts over at [`PAUSE_MIN`].
    fn succeed(&mut self, listener: Option<SocketAddr>) {
        if self.failures > 0 {
            tracing::info!(
                listener = %listener.map(|a| a.to_string()).unwrap_or_default(),
                failures = self.failures,
                "accepting connections again"
            );
        }
        *self = Backoff::default();
    }
}

/// Accepted connections, each wrapped in [`FirstBytes`]. Accept errors are handled here (see
/// the module docs), never yielded: the stream's items are always `Ok` and it never ends.
pub struct Incoming<A = TcpListener> {
    accept: A,
    backoff: Backoff,
    /// The pause before the next accept attempt, after a failure.
    pause: Option<Pin<Box<Sleep>>>,
    /// See [`Incoming::handshake_timeout`].
    handshake_timeout: Option<Duration>,
    /// The listening address, for the logs.
    local: Option<SocketAddr>,
}

impl Incoming<TcpListener> {
    /// Binds `addr` with [`bind`].
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let listener = bind(addr)?;
        let local = listener.local_addr().ok();
        Ok(Incoming {
            local,
            ..Incoming::new(listener)
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.accept.local_addr()
    }
}

impl<A: Accept> Incoming<A> {
    /// Connections from `accept`, with no handshake bound.
    pub fn new(accept: A) -> Self {
        Incoming {
            accept,
            backoff: Backoff::default(),
            pause: None,
            handshake_timeout: None,
            local: None,
        }
    }

    /// Closes (fails the reads of) connections that have not sent [`PREFACE_LEN`] bytes within
    /// `bound` of being accepted; `None` waits forever.
    pub fn handshake_timeout(mut self, bound: Option<Duration>) -> Self {
        self.handshake_timeout = bound;
        self
    }

    /// Polls for the next connection, pausing after errors as the module docs say.
    pub fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<(FirstBytes<A::Conn>, SocketAddr)> {
        loop {
            if let Some(pause) = self.pause.as_mut() {
                ready!(pause.as_mut().poll(cx));
                self.pause = None;
            }
            match ready!(self.accept.poll_accept(cx)) {
                Ok((conn, peer)) => {
                    self.backoff.succeed(self.local);
                    let conn = FirstBytes::new(conn, PREFACE_LEN, self.handshake_timeout);
                    return Poll::Ready((conn, peer));
                }
                Err(e) if is_connection_error(&e) => {
                    tracing::debug!(error = %e, "an incoming connection failed before accept");
                }
                Err(e) => {
                    let delay = self.backoff.fail(&e, self.local);
                    self.pause = Some(Box::pin(tokio::time::sleep(delay)));
                }
            }
        }
    }

    /// The next connection and its peer's address.
    pub async fn accept(&mut self) -> (FirstBytes<A::Conn>, SocketAddr) {
        poll_fn(|cx| self.poll_accept(cx)).await
    }
}

impl<A: Accept + Unpin> Stream for Incoming<A> {
    type Item = io::Result<FirstBytes<A::Conn>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut()
            .poll_accept(cx)
            .map(|(conn, _)| Some(Ok(conn)))
    }
}

/// A connection whose first `len` bytes must arrive within a bound of its accept: a read that
/// would wait past it fails with [`io::ErrorKind::TimedOut`], and the server then drops the
/// connection. Once they have arrived, reads pass straight through.
///
/// Only the wait is bounded, not the server: bytes that arrived in time are read even if the
/// server gets to them late (a busy server does not drop clients that did their part).
pub struct FirstBytes<T> {
    inner: T,
    /// `None` once the bytes arrived, or when unbounded.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Bytes still to arrive before the deadline is lifted.
    remaining: usize,
    bound: Duration,
}

impl<T> FirstBytes<T> {
    /// Wraps `inner`, accepted now; `bound: None` means no deadline.
    pub fn new(inner: T, len: usize, bound: Option<Duration>) -> Self {
        FirstBytes {
            inner,
            deadline: bound.map(|b| Box::pin(tokio::time::sleep(b))),
            remaining: len,
            bound: bound.unwrap_or_default(),
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for FirstBytes<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirstBytes")
            .field("inner", &self.inner)
            .field("waiting", &self.deadline.is_some())
            .finish()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FirstBytes<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut me.inner).poll_read(cx, buf);
        let Some(deadline) = me.deadline.as_mut() else {
            return polled;
        };
        match polled {
            Poll::Ready(Ok(())) => {
                me.remaining = me.remaining.saturating_sub(buf.filled().len() - before);
                if me.remaining == 0 {
                    me.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                ready!(deadline.as_mut().poll(cx));
                let e = format!(
                    "the connection sent no request or HTTP/2 preface within {:?}",
                    me.bound
                );
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, e)))
            }
            err => err,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FirstBytes<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for FirstBytes<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Accepts as scripted, recording when each attempt was made; pending once the script is
    /// played out.
    struct Scripted {
        script: VecDeque<io::Result<()>>,
        attempts: Vec<Instant>,
    }

    impl Scripted {
        fn new(script: impl IntoIterator<Item = io::Result<()>>) -> Self {
            Scripted {
                script: script.into_iter().collect(),
                attempts: Vec::new(),
            }
        }

        /// Milliseconds between successive attempts.
        fn gaps_ms(&self) -> Vec<u128> {
            self.attempts
                .windows(2)
                .map(|w| (w[1] - w[0]).as_millis())
                .collect()
        }
    }

    impl Accept for Scripted {
        type Conn = ();

        fn poll_accept(&mut self, _: &mut Context<'_>) -> Poll<io::Result<((), SocketAddr)>> {
            self.attempts.push(Instant::now());
            match self.script.pop_front() {
                Some(r) => Poll::Ready(r.map(|()| ((), SocketAddr::from(([127, 0, 0, 1], 1))))),
                None => Poll::Pending,
            }
        }
    }

    fn os_error(code: i32) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(code))
    }

    #[tokio::test(start_paused = true)]
    async fn out_of_fds_accepts_pause_5ms_doubling_to_1s_and_start_over_after_a_success() {
        let mut script: Vec<io::Result<()>> = (0..10).map(|_| os_error(libc::EMFILE)).collect();
        script.push(Ok(()));
        script.extend([os_error(libc::ENFILE), os_error(libc::ENOBUFS), Ok(())]);
        let mut incoming = Incoming::new(Scripted::new(script));
        incoming.accept().await;
        incoming.accept().await;
        assert_eq!(
            incoming.accept.gaps_ms(),
            // Ten failures, the success straight after the last pause; then a new failure is
            // tried at once and pauses 5 ms again, then 10 ms.
            vec![5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000, 0, 5, 10]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn errors_of_one_connection_are_skipped_without_a_pause() {
        let script = [
            os_error(libc::ECONNABORTED),
            os_error(libc::ECONNRESET),
            os_error(libc::EPERM),
            os_error(libc::EPROTO),
            Ok(()),
        ];
        let mut incoming = Incoming::new(Scripted::new(script));
        incoming.accept().await;
        assert_eq!(incoming.accept.gaps_ms(), vec![0, 0, 0, 0]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_stream_never_yields_an_error() {
        use std::future::poll_fn;
        let script = [os_error(libc::EMFILE), os_error(libc::ENOMEM), Ok(())];
        let mut incoming = Incoming::new(Scripted::new(script));
        let item = poll_fn(|cx| Pin::new(&mut incoming).poll_next(cx)).await;
        assert!(matches!(item, Some(Ok(_))));
    }

    #[tokio::test]
    async fn a_connect_storm_fits_in_the_backlog_without_syn_retries() {
        // The kernel caps the backlog at net.core.somaxconn (4096 on Linux >= 5.4).
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if somaxconn < 1024 {
            eprintln!("skipped: net.core.somaxconn is {somaxconn}, below what this test needs");
            return;
        }
        // Nothing accepts: every connection waits in the accept queue. With a backlog of 128
        // the SYNs past it are dropped and those connects take 1 s (the first retransmission)
        // or more. 600 keeps the test within a 1024 descriptor limit.
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let start = std::time::Instant::now();
        let connects: Vec<_> = (0..600)
            .map(|_| {
                tokio::spawn(async move {
                    tokio::time::timeout(Duration::from_millis(900), TcpStream::connect(addr)).await
                })
            })
            .collect();
        let mut late = 0;
        let mut conns = Vec::new();
        for c in connects {
            match c.await.expect("join") {
                Ok(conn) => conns.push(conn.expect("connect")),
                Err(_) => late += 1,
            }
        }
        assert_eq!(late, 0, "{late} of 600 connects took over 900 ms");
        assert!(start.elapsed() < Duration::from_secs(1));
        drop(listener);
    }

    #[tokio::test]
    async fn accepted_connections_have_nagle_off_and_tcp_keepalive_on() {
        let mut incoming = Incoming::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = incoming.local_addr().expect("addr");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (conn, _) = incoming.accept().await;
        let sock = socket2::SockRef::from(conn.get_ref());
        assert!(sock.tcp_nodelay().expect("nodelay"));
        assert!(sock.keepalive().expect("keepalive"));
        assert_eq!(sock.tcp_keepalive_time().expect("idle"), KEEPALIVE_IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_fails_its_read_at_the_bound() {
        let (_client, server) = tokio::io::duplex(64);
        let mut conn = FirstBytes::new(server, PREFACE_LEN, Some(Duration::from_secs(10)));
        let start = Instant::now();
        let e = conn.read(&mut [0; 64]).await.expect_err("times out");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_short_of_the_preface_is_bounded_too() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut conn = FirstBytes::new(server, PREFACE_LEN, Some(Duration::from_secs(10)));
        client.write_all(b"PRI * HTTP").await.expect("write");
        let mut buf = [0; 64];
        assert_eq!(conn.read(&mut buf).await.expect("read"), 10);
        let e = conn.read(&mut buf).await.expect_err("times out");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_preface_reads_wait_as_long_as_it_takes() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut conn = FirstBytes::new(server, PREFACE_LEN, Some(Duration::from_secs(10)));
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0; 64];
        assert_eq!(conn.read(&mut buf).await.expect("read"), PREFACE_LEN);
        let idle = tokio::time::timeout(Duration::from_secs(3600), conn.read(&mut buf)).await;
        assert!(idle.is_err(), "the read should still be waiting: {idle:?}");
        client.write_all(b"x").await.expect("write");
        assert_eq!(conn.read(&mut buf).await.expect("read"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_that_arrived_in_time_are_read_however_late() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut conn = FirstBytes::new(server, PREFACE_LEN, Some(Duration::from_secs(10)));
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("write");
        // The server only gets to the connection after the bound.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(conn.read(&mut [0; 64]).await.expect("read"), PREFACE_LEN);
    }
}

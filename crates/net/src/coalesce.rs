//! Coalesces a connection's writes: bytes are buffered and go to the socket when the
//! connection flushes, after letting other ready tasks run once, so HTTP/2 frames that finish
//! together (a response's headers, data and trailers, or many requests and responses) share
//! one write.
//!
//! Why: hyper's per-stream tasks queue frames while the connection task, often on the other
//! worker thread, flushes what it has; under load each gRPC response went out in two writes,
//! and each client request too. On loopback a write costs the sender the receiver's TCP work
//! as well, so writes per request were the largest kernel cost in profiles.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
// tokio's clock, not std's: under a simulation (turmoil) it is the simulated clock, so the
// same seed makes the same yield decisions.
use tokio::time::Instant;

/// Buffered bytes above which writes go to the socket before taking more.
const LIMIT: usize = 64 * 1024;

/// A flush within this long of the last write is taken as part of a burst and yields once
/// first; a flush after a quiet spell writes at once (a lone request pays no extra latency:
/// one client's sequential puts were 13% slower when every flush yielded).
const BURST: Duration = Duration::from_micros(100);

/// A flush with at least this much buffered writes at once: bulk data (snapshot chunks, large
/// ranges) gains nothing from waiting for more, and h2 flushes before each large frame.
const FULL_ENOUGH: usize = 16 * 1024;

/// A write-coalescing wrapper around a connection.
pub struct CoalescedWrites<T> {
    inner: T,
    buf: Vec<u8>,
    /// True once a flush has let other tasks run; the next flush writes.
    yielded: bool,
    /// When bytes last went to the socket.
    last_write: Option<Instant>,
    /// See [`BURST`].
    burst: Duration,
}

impl<T: std::fmt::Debug> std::fmt::Debug for CoalescedWrites<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoalescedWrites")
            .field("inner", &self.inner)
            .field("buffered", &self.buf.len())
            .finish()
    }
}

impl<T> CoalescedWrites<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        CoalescedWrites {
            inner,
            buf: Vec::new(),
            yielded: false,
            last_write: None,
            burst: BURST,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite + Unpin> CoalescedWrites<T> {
    /// Writes buffered bytes until none are left or the socket is full.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut written = 0;
        let result = loop {
            if written == self.buf.len() {
                break Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &self.buf[written..]) {
                Poll::Ready(Ok(0)) => break Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                Poll::Pending => break Poll::Pending,
            }
        };
        if written > 0 {
            self.last_write = Some(Instant::now());
        }
        self.buf.drain(..written);
        result
    }

    /// Makes room for `len` more bytes: drains first when the buffer would pass the limit.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<()>> {
        if !self.buf.is_empty() && self.buf.len() + len > LIMIT {
            return self.poll_drain(cx);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CoalescedWrites<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        std::task::ready!(me.poll_room(cx, data.len()))?;
        if me.buf.is_empty() && data.len() >= LIMIT {
            me.last_write = Some(Instant::now());
            return Pin::new(&mut me.inner).poll_write(cx, data);
        }
        me.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        std::task::ready!(me.poll_room(cx, len))?;
        if me.buf.is_empty() && len >= LIMIT {
            me.last_write = Some(Instant::now());
            return Pin::new(&mut me.inner).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            me.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.buf.is_empty() {
            me.yielded = false;
            return Pin::new(&mut me.inner).poll_flush(cx);
        }
        let busy =
            me.buf.len() < FULL_ENOUGH && me.last_write.is_some_and(|t| t.elapsed() < me.burst);
        if busy && !me.yielded {
            // Let the tasks that are about to add frames run first; we are polled again
            // right after them.
            me.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        std::task::ready!(me.poll_drain(cx))?;
        me.yielded = false;
        Pin::new(&mut me.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        std::task::ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected
    for CoalescedWrites<T>
{
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    /// Records each write; accepts at most `max` bytes per write, none while `full`.
    #[derive(Default)]
    struct Sink {
        writes: Vec<Vec<u8>>,
        max: Option<usize>,
        full: bool,
        shut: bool,
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.full {
                return Poll::Pending;
            }
            let n = self.max.map_or(data.len(), |m| m.min(data.len()));
            self.writes.push(data[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut = true;
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct CountWakes(AtomicUsize, AtomicBool);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref()
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
            self.1.store(true, Ordering::SeqCst);
        }
    }

    fn write(c: &mut CoalescedWrites<Sink>, cx: &mut Context<'_>, b: &[u8]) -> Poll<usize> {
        Pin::new(c).poll_write(cx, b).map(|r| r.expect("write"))
    }

    fn flush(c: &mut CoalescedWrites<Sink>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(c).poll_flush(cx).map(|r| r.expect("flush"))
    }

    /// A connection that counts every flush as part of a burst (the last write is "recent"
    /// for an hour), so tests do not depend on timing.
    fn busy(sink: Sink) -> CoalescedWrites<Sink> {
        let mut c = CoalescedWrites::new(sink);
        c.burst = Duration::from_secs(3600);
        c.last_write = Some(Instant::now());
        c
    }

    #[test]
    fn after_a_quiet_spell_a_flush_writes_at_once() {
        let wakes = Arc::new(CountWakes::default());
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut c = CoalescedWrites::new(Sink::default());
        let _ = write(&mut c, &mut cx, b"first");
        assert_eq!(flush(&mut c, &mut cx), Poll::Ready(()));
        assert_eq!(c.get_ref().writes, vec![b"first".to_vec()]);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        // Quiet again (no burst window): the next one does not wait either.
        c.burst = Duration::ZERO;
        let _ = write(&mut c, &mut cx, b"second");
        assert_eq!(flush(&mut c, &mut cx), Poll::Ready(()));
        assert_eq!(c.get_ref().writes.len(), 2);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn frames_written_before_a_flush_go_out_in_one_write_after_one_yield() {
        let wakes = Arc::new(CountWakes::default());
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut c = busy(Sink::default());
        assert_eq!(write(&mut c, &mut cx, b"headers"), Poll::Ready(7));
        assert_eq!(write(&mut c, &mut cx, b"data"), Poll::Ready(4));
        assert!(c.get_ref().writes.is_empty(), "buffered until a flush");
        // The first flush yields (and asks to be polled again) so others can add frames.
        assert_eq!(flush(&mut c, &mut cx), Poll::Pending);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(c.get_ref().writes.is_empty());
        assert_eq!(write(&mut c, &mut cx, b"trailers"), Poll::Ready(8));
        assert_eq!(flush(&mut c, &mut cx), Poll::Ready(()));
        assert_eq!(c.get_ref().writes, vec![b"headersdatatrailers".to_vec()]);
        // Nothing buffered: a flush passes straight through, without yielding.
        assert_eq!(flush(&mut c, &mut cx), Poll::Ready(()));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        // The next burst yields again.
        let _ = write(&mut c, &mut cx, b"next");
        assert_eq!(flush(&mut c, &mut cx), Poll::Pending);
        assert_eq!(flush(&mut c, &mut cx), Poll::Ready(()));
        assert_eq!(c.get_ref().writes.len(), 2);
    }

    #[test]
    fn bulk_data_is_written_without_waiting() {
        let wakes = Arc::new(CountWakes::default());
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut c = busy(Sink::default());
        let _ = write(&mut c, &mut cx, &vec![7; FULL_ENOUGH]);
        assert_eq!(flush(&mut c, &mut cx), Poll::Ready(()));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        assert_eq!(c.get_ref().writes.len(), 1);
    }

    #[test]
    fn a_full_socket_keeps_the_unwritten_rest_in_order() {
        let waker = std::task::Waker::from(Arc::new(CountWakes::default()));
        let mut cx = Context::from_waker(&waker);
        let mut c = busy(Sink {
            max: Some(3),
            ..Sink::default()
        });
        let _ = write(&mut c, &mut cx, b"abcdefgh");
        assert_eq!(flush(&mut c, &mut cx), Poll::Pending);
        c.inner.full = true;
        assert_eq!(flush(&mut c, &mut cx), Poll::Pending);
        c.inner.full = false;
        assert_eq!(flush(&mut c, &mut cx), Poll::Ready(()));
        assert_eq!(c.get_ref().writes.concat(), b"abcdefgh".to_vec());
    }

    #[test]
    fn the_buffer_is_bounded_and_large_writes_pass_through() {
        let waker = std::task::Waker::from(Arc::new(CountWakes::default()));
        let mut cx = Context::from_waker(&waker);
        let mut c = CoalescedWrites::new(Sink::default());
        let _ = write(&mut c, &mut cx, &[1; 100]);
        // Past the limit: what is buffered goes out first, then the large write directly.
        let big = vec![2; LIMIT];
        assert_eq!(write(&mut c, &mut cx, &big), Poll::Ready(LIMIT));
        assert_eq!(c.get_ref().writes, vec![vec![1; 100], big]);
        assert!(c.buf.is_empty());
        // A socket that takes nothing holds up a write that needs room, without losing bytes.
        let _ = write(&mut c, &mut cx, &[3; 100]);
        c.inner.full = true;
        assert_eq!(write(&mut c, &mut cx, &vec![4; LIMIT]), Poll::Pending);
        assert_eq!(c.buf, vec![3; 100]);
    }

    #[test]
    fn shutdown_writes_what_is_buffered_first() {
        let waker = std::task::Waker::from(Arc::new(CountWakes::default()));
        let mut cx = Context::from_waker(&waker);
        let mut c = CoalescedWrites::new(Sink::default());
        let bufs = [io::IoSlice::new(b"goaway"), io::IoSlice::new(b"!")];
        let n = Pin::new(&mut c).poll_write_vectored(&mut cx, &bufs);
        assert!(matches!(n, Poll::Ready(Ok(7))));
        assert!(matches!(
            Pin::new(&mut c).poll_shutdown(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(c.get_ref().writes, vec![b"goaway!".to_vec()]);
        assert!(c.get_ref().shut);
    }
}

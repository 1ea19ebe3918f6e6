//! A guard in front of hyper's HTTP/1 parser for request-smuggling shapes hyper accepts:
//! hyper answers a request with both `Content-Length` and `Transfer-Encoding` by dropping
//! the length (RFC 9112 §6.3) and drops a repeated identical `Content-Length`, so the proxy
//! never sees them. The guard follows the connection's request framing (heads, bodies by
//! length or chunks) as hyper will read it and, when a head carries both framings or more
//! than one length, replaces the head's final line feed (and the rest of what was read)
//! with an invalid line and a head terminator before hyper reads it: hyper then refuses the
//! head with a 400 and closes, and nothing reaches an upstream. (hyper parses a head only
//! once it sees a terminator, so the broken head must still end in one.)
//!
//! Anything the guard cannot follow (an HTTP/2 preface, `CONNECT`, a head it cannot parse, a
//! malformed chunk) turns it into a pass-through: hyper refuses what is malformed itself. An
//! upgrade request is followed like any other; the connection becomes a pass-through only
//! once the server's answer to it is a `101` (seen as it is written).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest head followed; hyper refuses longer ones itself.
const HEAD_MAX: usize = 64 * 1024;
const HEADERS_MAX: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Reading a head (the bytes so far).
    Head(Vec<u8>),
    /// Skipping this many body bytes.
    Body(u64),
    /// In a chunked body: reading a chunk-size line.
    ChunkSize { size: u64, digits: bool, ext: bool },
    /// Expecting the line feed of a chunk-size line.
    ChunkSizeLf(u64),
    /// Skipping chunk data, then its CRLF.
    ChunkData(u64),
    /// Expecting the CRLF after chunk data (how many of its bytes are still due).
    ChunkCrlf(u8),
    /// Reading the trailer section (the current line's length so far).
    Trailers(usize),
    /// No longer following.
    Opaque,
}

/// What a complete head asks of the framing.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Refuse,
    Next(State),
    /// An upgrade request: the next state, and the server's answer decides the rest.
    Upgrade(State),
}

fn judge(head: &[u8]) -> Verdict {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Verdict::Next(State::Opaque),
    }
    if req.method == Some("CONNECT") {
        return Verdict::Next(State::Opaque);
    }
    let (mut lengths, mut codings, mut upgrade, mut chunked_last) = (Vec::new(), 0, false, false);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            lengths.push(h.value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            codings += 1;
            chunked_last = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    if lengths.len() > 1 || (!lengths.is_empty() && codings > 0) {
        return Verdict::Refuse;
    }
    let next = if codings > 0 {
        if chunked_last {
            State::ChunkSize {
                size: 0,
                digits: false,
                ext: false,
            }
        } else {
            State::Opaque
        }
    } else {
        match lengths.first() {
            None => State::Head(Vec::new()),
            Some(v) => match std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                Some(0) => State::Head(Vec::new()),
                Some(n) => State::Body(n),
                None => State::Opaque,
            },
        }
    };
    if upgrade {
        Verdict::Upgrade(next)
    } else {
        Verdict::Next(next)
    }
}

/// The framing follower. See the module docs.
#[derive(Debug)]
pub struct Follower {
    state: State,
    /// An upgrade was asked for and the server has not answered it yet.
    awaiting_upgrade: bool,
}

impl Default for Follower {
    fn default() -> Follower {
        Follower {
            state: State::Head(Vec::new()),
            awaiting_upgrade: false,
        }
    }
}

impl Follower {
    /// Follows `bytes` (what hyper is about to read); returns the index of the last byte of
    /// a refused head (what follows it is never hyper's to read).
    pub fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            match &mut self.state {
                State::Opaque => return None,
                State::Head(head) => {
                    // A request may be preceded by empty lines (hyper skips them).
                    if head.is_empty() && (bytes[i] == b'\r' || bytes[i] == b'\n') {
                        i += 1;
                        continue;
                    }
                    head.push(bytes[i]);
                    if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
                        match judge(head) {
                            Verdict::Refuse => {
                                self.state = State::Opaque;
                                return Some(i);
                            }
                            Verdict::Next(next) => self.state = next,
                            Verdict::Upgrade(next) => {
                                self.state = next;
                                self.awaiting_upgrade = true;
                            }
                        }
                    } else if head.len() > HEAD_MAX {
                        self.state = State::Opaque;
                    }
                    i += 1;
                }
                State::Body(left) => {
                    let take = (*left).min((bytes.len() - i) as u64);
                    *left -= take;
                    i += take as usize;
                    if *left == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::ChunkSize { size, digits, ext } => {
                    let b = bytes[i];
                    i += 1;
                    match b {
                        b'\r' if *digits => self.state = State::ChunkSizeLf(*size),
                        _ if *ext => {}
                        b';' | b' ' | b'\t' if *digits => *ext = true,
                        b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                            let d = u64::from(char::from(b).to_digit(16).unwrap_or(0));
                            match size.checked_mul(16).and_then(|s| s.checked_add(d)) {
                                Some(s) => {
                                    *size = s;
                                    *digits = true;
                                }
                                None => self.state = State::Opaque,
                            }
                        }
                        _ => self.state = State::Opaque,
                    }
                }
                State::ChunkSizeLf(size) => {
                    let size = *size;
                    self.state = if bytes[i] != b'\n' {
                        State::Opaque
                    } else if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::ChunkData(size)
                    };
                    i += 1;
                }
                State::ChunkData(left) => {
                    let take = (*left).min((bytes.len() - i) as u64);
                    *left -= take;
                    i += take as usize;
                    if *left == 0 {
                        self.state = State::ChunkCrlf(2);
                    }
                }
                State::ChunkCrlf(due) => {
                    let want = if *due == 2 { b'\r' } else { b'\n' };
                    if bytes[i] != want {
                        self.state = State::Opaque;
                    } else if *due == 1 {
                        self.state = State::ChunkSize {
                            size: 0,
                            digits: false,
                            ext: false,
                        };
                    } else {
                        *due = 1;
                    }
                    i += 1;
                }
                State::Trailers(line) => {
                    let b = bytes[i];
                    i += 1;
                    match b {
                        b'\n' if *line == 0 => self.state = State::Head(Vec::new()),
                        b'\n' => *line = 0,
                        b'\r' if *line == 0 => {}
                        _ => {
                            *line += 1;
                            if *line > HEAD_MAX {
                                self.state = State::Opaque;
                            }
                        }
                    }
                }
            }
        }
        None
    }

    /// Sees what the server writes: the status line of its answer to an upgrade decides
    /// whether the connection is still HTTP.
    pub fn written(&mut self, bytes: &[u8]) {
        if !self.awaiting_upgrade || !bytes.starts_with(b"HTTP/1.") {
            return;
        }
        self.awaiting_upgrade = false;
        if bytes.get(9..12) == Some(b"101") {
            self.state = State::Opaque;
        }
    }
}

/// What replaces a refused head's final byte: an invalid line, then a terminator.
const BROKEN_END: &[u8] = b"\0\r\n\r\n";

/// A connection whose reads go through a [`Follower`].
pub struct Guarded<I> {
    inner: I,
    follower: Follower,
}

impl<I> Guarded<I> {
    /// Guards `inner`.
    pub fn new(inner: I) -> Guarded<I> {
        Guarded {
            inner,
            follower: Follower::default(),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Guarded<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let me = &mut *self;
        let res = Pin::new(&mut me.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            if let Some(i) = me.follower.scan(&buf.filled()[before..]) {
                buf.set_filled(before + i);
                let fits = BROKEN_END.len().min(buf.remaining());
                buf.put_slice(&BROKEN_END[..fits]);
                tracing::debug!("gateway: refusing a request head with conflicting framing");
            }
        }
        res
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Guarded<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, b)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            self.follower.written(first);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns where a head was refused.
    fn feed(input: &str, step: usize) -> Option<usize> {
        let mut f = Follower::default();
        for (n, chunk) in input.as_bytes().chunks(step).enumerate() {
            if let Some(i) = f.scan(chunk) {
                return Some(n * step + i);
            }
        }
        None
    }

    fn broken(input: &str) -> bool {
        [1, 3, 7, 4096]
            .iter()
            .all(|step| feed(input, *step).is_some())
    }

    #[test]
    fn refuses_both_framings_and_repeated_lengths() {
        assert!(broken(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(broken(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 4\r\n\r\n"
        ));
        assert!(broken(
            "POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd"
        ));
    }

    #[test]
    fn follows_bodies_to_the_next_head() {
        // A smuggled second head inside a first request's length-framed body is body, not a
        // head; the real second head is judged.
        let two = "POST / HTTP/1.1\r\nContent-Length: 56\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n\
                   GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for step in [1, 5, 4096] {
            assert_eq!(
                feed(two, step),
                Some(two.len() - 1),
                "only the real head is refused"
            );
        }
        let chunked = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n\
                       GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert!(broken(chunked));
        let fine = "GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n";
        assert_eq!(feed(fine, 1), None);
    }

    #[test]
    fn leaves_what_it_cannot_follow() {
        assert!(!broken(
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"
        ));
    }

    #[test]
    fn upgrades_end_following_only_when_answered_101() {
        let ask = "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        let smuggle = "GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        // Refused: the server answered 400, so the next head is still judged.
        let mut f = Follower::default();
        assert_eq!(f.scan(ask.as_bytes()), None);
        f.written(b"HTTP/1.1 400 Bad Request\r\n");
        assert!(f.scan(smuggle.as_bytes()).is_some());
        // Switched: what follows the 101 is the new protocol's.
        let mut f = Follower::default();
        assert_eq!(f.scan(ask.as_bytes()), None);
        f.written(b"HTTP/1.1 101 Switching Protocols\r\n");
        assert_eq!(f.scan(smuggle.as_bytes()), None);
        // A chunk size with trailing spaces (hyper takes it) keeps the guard following.
        let spaced = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1  \r\na\r\n0\r\n\r\n";
        assert!(broken(&format!("{spaced}{smuggle}")));
    }
}

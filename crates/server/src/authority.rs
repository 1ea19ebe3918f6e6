//! Repairs the `:authority` of incoming HTTP/2 requests before the HTTP/2 server sees them.
//! etcd's own Go clients send malformed authorities (`http://host:port` from etcdctl 3.4,
//! `#initially=[...]` from clientv3 3.5.0); Go's server accepts them, Rust's h2 resets the
//! stream. This wrapper re-encodes client header blocks with the authority repaired.
//!
//! Only connections that need it pay for it: when the first header block of a connection needs
//! no repair, it goes on unchanged and the rest of the connection passes through untouched
//! (every client seen sends the same authority on every request of a connection). Decoding and
//! re-encoding every block cost ~15% of the server's CPU under a put load from a Rust client.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Every HTTP/2 peer must accept frames this large.
const MIN_MAX_FRAME: usize = 16_384;

/// Returns a valid authority for `value`, or `None` when the header should be dropped.
/// `Some(Cow::Borrowed)` means it was valid already.
pub fn repair_authority(value: &[u8]) -> Option<Cow<'_, [u8]>> {
    let valid = |v: &[u8]| http::uri::Authority::try_from(v).is_ok();
    if valid(value) {
        return Some(Cow::Borrowed(value));
    }
    let text = std::str::from_utf8(value).ok()?;
    // clientv3 3.5.0: "#initially=[http://a:2379;http://b:2379]"
    let text = match (text.find('['), text.rfind(']')) {
        (Some(a), Some(b)) if a < b => text[a + 1..b].split(';').next().unwrap_or(""),
        _ => text,
    };
    let no_scheme = text.split_once("://").map(|(_, rest)| rest).unwrap_or(text);
    let host = no_scheme.split('/').next().unwrap_or("");
    valid(host.as_bytes()).then(|| Cow::Owned(host.as_bytes().to_vec()))
}

enum Mode {
    /// Waiting for the client preface.
    Preface,
    /// Parsing frames and rewriting header blocks.
    Frames,
    /// Not HTTP/2 with prior knowledge, or past a decoding error: bytes go through untouched.
    Passthrough,
}

/// A header block being collected across HEADERS + CONTINUATION frames.
struct Block {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The block's frames as received.
    frames: Vec<u8>,
}

/// An IO object whose read side has every client header block re-encoded with a valid
/// `:authority`; the write side is untouched.
pub struct AuthorityFix<T> {
    inner: T,
    mode: Mode,
    raw: BytesMut,
    out: BytesMut,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
    /// True once a block was re-encoded: the server's HPACK state then follows our encoder,
    /// so every later block must be re-encoded too.
    rewriting: bool,
    eof: bool,
}

impl<T> AuthorityFix<T> {
    /// Wraps a freshly accepted connection.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            mode: Mode::Preface,
            raw: BytesMut::with_capacity(16 * 1024),
            out: BytesMut::with_capacity(16 * 1024),
            block: None,
            decoder: loona_hpack::Decoder::new(),
            encoder: loona_hpack::Encoder::new(),
            rewriting: false,
            eof: false,
        }
    }

    /// Moves every complete unit of `raw` to `out`, rewriting header blocks.
    fn process(&mut self) {
        loop {
            match self.mode {
                Mode::Passthrough => {
                    let all = self.raw.split();
                    self.out.extend_from_slice(&all);
                    return;
                }
                Mode::Preface => {
                    let n = self.raw.len().min(PREFACE.len());
                    if self.raw[..n] != PREFACE[..n] {
                        self.mode = Mode::Passthrough;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return;
                    }
                    let p = self.raw.split_to(PREFACE.len());
                    self.out.extend_from_slice(&p);
                    self.mode = Mode::Frames;
                }
                Mode::Frames => {
                    if self.raw.len() < FRAME_HEADER {
                        return;
                    }
                    let len =
                        u32::from_be_bytes([0, self.raw[0], self.raw[1], self.raw[2]]) as usize;
                    if self.raw.len() < FRAME_HEADER + len {
                        return;
                    }
                    let frame = self.raw.split_to(FRAME_HEADER + len);
                    self.frame(&frame);
                }
            }
        }
    }

    fn frame(&mut self, frame: &[u8]) {
        let kind = frame[3];
        let flags = frame[4];
        let stream_id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER..];
        match kind {
            TYPE_HEADERS => {
                let Some((priority, fragment)) = headers_payload(flags, payload) else {
                    return self.give_up(frame);
                };
                let block = Block {
                    stream_id,
                    end_stream: flags & FLAG_END_STREAM != 0,
                    priority,
                    fragment: fragment.to_vec(),
                    // Kept only while the connection may still be let through untouched.
                    frames: if self.rewriting {
                        Vec::new()
                    } else {
                        frame.to_vec()
                    },
                };
                if flags & FLAG_END_HEADERS != 0 {
                    self.finish(block, frame);
                } else {
                    self.block = Some(block);
                }
            }
            TYPE_CONTINUATION => match self.block.take() {
                Some(mut block) if block.stream_id == stream_id => {
                    block.fragment.extend_from_slice(payload);
                    if !self.rewriting {
                        block.frames.extend_from_slice(frame);
                    }
                    if flags & FLAG_END_HEADERS != 0 {
                        self.finish(block, frame);
                    } else {
                        self.block = Some(block);
                    }
                }
                _ => self.give_up(frame),
            },
            _ => self.out.extend_from_slice(frame),
        }
    }

    /// Decodes a complete block, repairs `:authority`, and emits it re-encoded.
    fn finish(&mut self, block: Block, last_frame: &[u8]) {
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let decoded = self.decoder.decode_with_cb(&block.fragment, |n, v| {
            headers.push((n.into_owned(), v.into_owned()))
        });
        if decoded.is_err() {
            // The server's own decoder will reject the same bytes; let it say so.
            return self.give_up(last_frame);
        }
        let valid = |(name, value): &(Vec<u8>, Vec<u8>)| {
            name != b":authority" || matches!(repair_authority(value), Some(Cow::Borrowed(_)))
        };
        if !self.rewriting && headers.iter().all(valid) {
            // This client sends valid authorities: let the connection through untouched.
            self.out.extend_from_slice(&block.frames);
            self.mode = Mode::Passthrough;
            return;
        }
        self.rewriting = true;
        let mut repaired = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            if name == b":authority" {
                match repair_authority(&value) {
                    Some(Cow::Borrowed(_)) => repaired.push((name, value)),
                    Some(Cow::Owned(v)) => {
                        tracing::debug!(from = %String::from_utf8_lossy(&value), to = %String::from_utf8_lossy(&v), "repaired :authority");
                        repaired.push((name, v));
                    }
                    None => {
                        tracing::debug!(value = %String::from_utf8_lossy(&value), "dropped invalid :authority")
                    }
                }
            } else {
                repaired.push((name, value));
            }
        }
        let encoded = self
            .encoder
            .encode(repaired.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        self.emit(&block, &encoded);
    }

    fn emit(&mut self, block: &Block, encoded: &[u8]) {
        let first_room = MIN_MAX_FRAME - if block.priority.is_some() { 5 } else { 0 };
        let (first, mut rest) = encoded.split_at(encoded.len().min(first_room));
        let mut flags = if block.end_stream { FLAG_END_STREAM } else { 0 };
        if rest.is_empty() {
            flags |= FLAG_END_HEADERS;
        }
        let mut payload = Vec::with_capacity(first.len() + 5);
        if let Some(p) = block.priority {
            flags |= FLAG_PRIORITY;
            payload.extend_from_slice(&p);
        }
        payload.extend_from_slice(first);
        self.put_frame(TYPE_HEADERS, flags, block.stream_id, &payload);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MIN_MAX_FRAME));
            rest = tail;
            let flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
            self.put_frame(TYPE_CONTINUATION, flags, block.stream_id, chunk);
        }
    }

    fn put_frame(&mut self, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
        let len = payload.len() as u32;
        self.out.extend_from_slice(&len.to_be_bytes()[1..]);
        self.out.extend_from_slice(&[kind, flags]);
        self.out.extend_from_slice(&stream_id.to_be_bytes());
        self.out.extend_from_slice(payload);
    }

    /// Stops rewriting: forwards `frame` and everything after it unchanged.
    fn give_up(&mut self, frame: &[u8]) {
        tracing::debug!("HTTP/2 header rewriting stopped for this connection");
        self.out.extend_from_slice(frame);
        self.block = None;
        self.mode = Mode::Passthrough;
    }
}

/// Splits a HEADERS payload into its priority fields and header block fragment.
fn headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut p = payload;
    let pad = if flags & FLAG_PADDED != 0 {
        let (&n, rest) = p.split_first()?;
        p = rest;
        n as usize
    } else {
        0
    };
    let priority = if flags & FLAG_PRIORITY != 0 {
        let fields: [u8; 5] = p.get(..5)?.try_into().ok()?;
        p = &p[5..];
        Some(fields)
    } else {
        None
    };
    let end = p.len().checked_sub(pad)?;
    Some((priority, &p[..end]))
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityFix<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // Hand over any incomplete tail so the server sees exactly what arrived.
                let tail = this.raw.split();
                if tail.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.out.extend_from_slice(&tail);
                continue;
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        this.eof = true;
                    } else {
                        this.raw.extend_from_slice(rb.filled());
                        this.process();
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
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
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<T>
{
    type ConnectInfo = T::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn repairs_what_go_clients_send() {
        let fix = |v: &str| {
            repair_authority(v.as_bytes()).map(|c| String::from_utf8_lossy(&c).into_owned())
        };
        assert_eq!(fix("127.0.0.1:2379").as_deref(), Some("127.0.0.1:2379"));
        assert_eq!(
            fix("http://127.0.0.1:2379").as_deref(),
            Some("127.0.0.1:2379")
        );
        assert_eq!(
            fix("https://example.com:2379/").as_deref(),
            Some("example.com:2379")
        );
        assert_eq!(
            fix("#initially=[http://a:1;http://b:2]").as_deref(),
            Some("a:1")
        );
        assert_eq!(fix("/path/to.sock"), None);
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[tokio::test]
    async fn rewrites_header_blocks_across_continuations_and_keeps_other_frames() {
        let mut client = loona_hpack::Encoder::new();
        let req = |auth: &str| {
            vec![
                (b":method".to_vec(), b"POST".to_vec()),
                (b":path".to_vec(), b"/etcdserverpb.KV/Range".to_vec()),
                (b":authority".to_vec(), auth.as_bytes().to_vec()),
                (b"content-type".to_vec(), b"application/grpc".to_vec()),
            ]
        };
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        for (i, auth) in ["http://127.0.0.1:2379", "http://127.0.0.1:2379", "ok:1"]
            .iter()
            .enumerate()
        {
            let h = req(auth);
            let block = client.encode(h.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
            let id = 1 + 2 * i as u32;
            // Split the first block across HEADERS (padded) + CONTINUATION.
            if i == 0 {
                let (a, b) = block.split_at(block.len() / 2);
                let mut padded = vec![3u8];
                padded.extend_from_slice(a);
                padded.extend_from_slice(&[0, 0, 0]);
                wire.extend(frame(TYPE_HEADERS, FLAG_PADDED, id, &padded));
                wire.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, id, b));
            } else {
                wire.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, id, &block));
            }
            wire.extend(frame(0x0, FLAG_END_STREAM, id, b"\0\0\0\0\0"));
        }
        let mut fixed = AuthorityFix::new(wire.as_slice());
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await.expect("read");
        assert!(out.starts_with(PREFACE));
        let mut rest = &out[PREFACE.len()..];
        let mut server = loona_hpack::Decoder::new();
        let mut authorities = Vec::new();
        let mut data_frames = 0;
        while !rest.is_empty() {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let (f, tail) = rest.split_at(FRAME_HEADER + len);
            rest = tail;
            match f[3] {
                TYPE_HEADERS => {
                    assert_ne!(f[4] & FLAG_END_HEADERS, 0);
                    server
                        .decode_with_cb(&f[FRAME_HEADER..], |n, v| {
                            if &*n == b":authority" {
                                authorities.push(String::from_utf8_lossy(&v).into_owned());
                            }
                        })
                        .expect("server decodes");
                }
                0x0 => data_frames += 1,
                _ => {}
            }
        }
        assert_eq!(authorities, ["127.0.0.1:2379", "127.0.0.1:2379", "ok:1"]);
        assert_eq!(data_frames, 3);
    }

    #[tokio::test]
    async fn a_connection_whose_first_authority_is_valid_passes_through_unchanged() {
        let mut client = loona_hpack::Encoder::new();
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        for id in [1u32, 3] {
            let h: [(&[u8], &[u8]); 3] = [
                (b":method", b"POST"),
                (b":path", b"/etcdserverpb.KV/Put"),
                (b":authority", b"127.0.0.1:2379"),
            ];
            let block = client.encode(h);
            wire.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, id, &block));
            wire.extend(frame(0x0, FLAG_END_STREAM, id, b"\0\0\0\0\0"));
        }
        let mut fixed = AuthorityFix::new(wire.as_slice());
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await.expect("read");
        assert_eq!(out, wire, "byte for byte");
        assert!(matches!(fixed.mode, Mode::Passthrough));
    }

    #[tokio::test]
    async fn http1_passes_through() {
        let req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut fixed = AuthorityFix::new(&req[..]);
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await.expect("read");
        assert_eq!(out, req);
    }
}

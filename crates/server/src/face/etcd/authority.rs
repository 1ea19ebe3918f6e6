//! Repairs the `:authority` of incoming HTTP/2 requests before the HTTP/2 server sees them.
//! etcd's own Go clients send malformed authorities (`http://host:port` from etcdctl 3.4,
//! `#initially=[...]` from clientv3 3.5.0); Go's server accepts them, Rust's h2 resets the
//! stream. This wrapper re-encodes client header blocks with the authority repaired.
//!
//! Only connections that need it pay for it: when the first header block of a connection needs
//! no repair, it goes on unchanged and the rest of the connection passes through untouched
//! (every client seen sends the same authority on every request of a connection). Decoding and
//! re-encoding every block cost ~15% of the server's CPU under a put load from a Rust client.
//!
//! The wrapper sits in front of h2 on unauthenticated connections, so it holds no more than h2
//! itself would take: a frame or header block over the server's limits is not collected but
//! handed to h2 as it came, for h2 to refuse ([`MAX_BUFFERED`] bounds what one connection holds).

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest frame payload the client API's HTTP/2 server takes (its SETTINGS_MAX_FRAME_SIZE).
/// It is hyper's default, and the server is built with it explicitly ([`crate::node`]) so the
/// wrapper's limits and h2's cannot drift apart.
pub const MAX_FRAME_SIZE: u32 = 16_384;
/// The largest decoded header list the client API's HTTP/2 server takes for a request
/// (SETTINGS_MAX_HEADER_LIST_SIZE): hyper's default, also set explicitly where the server is
/// built. h2's own default (16 MiB) applies only when nothing sets one.
pub const MAX_HEADER_LIST_SIZE: u32 = 16_384;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_PUSH_PROMISE: u8 = 0x5;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
const FRAME_MAX: usize = MAX_FRAME_SIZE as usize;
/// The HPACK dynamic table size the server advertises (SETTINGS_HEADER_TABLE_SIZE: h2's
/// default, which hyper and tonic leave alone). Clients may not grow their table past it, and
/// our decoder holds them to that: its table lives as long as the connection.
const HEADER_TABLE_SIZE: usize = 4_096;
/// CONTINUATION frames without END_HEADERS that h2 takes in one header block before it ends the
/// connection (ENHANCE_YOUR_CALM, its guard against CONTINUATION floods), computed as h2 0.4
/// does from the limits above: the frames a full header list needs plus 25%, at least 5. With
/// berth's limits: 5.
const MAX_CONTINUATIONS: usize = {
    let frames = MAX_HEADER_LIST_SIZE as usize / FRAME_MAX;
    let frames = if frames < 1 { 1 } else { frames };
    let n = frames + (frames >> 2);
    if n < 5 {
        5
    } else {
        n
    }
};
/// Wire bytes of the longest header block h2 takes: HEADERS, [`MAX_CONTINUATIONS`], and the
/// final CONTINUATION, each at most a full frame (~112 KiB).
const MAX_BLOCK_WIRE: usize = (MAX_CONTINUATIONS + 2) * (FRAME_HEADER + FRAME_MAX);
/// Decoded size (RFC 7541 section 4.1, as h2 counts it) of the largest header list the wrapper
/// re-encodes. h2 refuses just the request from [`MAX_HEADER_LIST_SIZE`] on (431) and ends the
/// connection past 4 times that (its abuse limit): up to there a block is still re-encoded so
/// h2 gives its own answer. The bound matters because HPACK lets one byte name a table entry of
/// up to 4 KiB again and again: a small block can decode to far more than it weighs.
const MAX_DECODED: usize = 4 * MAX_HEADER_LIST_SIZE as usize;
/// Bytes read from the connection at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Input is turned into output only while less than this waits to be read, so that a read full
/// of small blocks that decode large (see [`MAX_DECODED`]) cannot pile up output.
const OUT_HIGH: usize = 16 * 1024;
/// What an [`AuthorityFix`] holds between reads, at most, whatever the peer sends (a loose sum,
/// ~0.5 MiB): the input not yet turned into output (an incomplete frame and one read), a header
/// block being collected (its fragment and, until rewriting starts, its frames), and the output
/// of one pass not yet read (under 16 KiB, plus one unit: a re-encoded block, or a block given
/// up on with the input behind it).
pub const MAX_BUFFERED: usize =
    2 * (FRAME_HEADER + FRAME_MAX + READ_CHUNK) + 3 * MAX_BLOCK_WIRE + OUT_HIGH + MAX_DECODED;

/// Why the wrapper ended a connection itself instead of leaving it to the HTTP/2 server.
#[derive(Debug, thiserror::Error)]
#[error("HTTP/2 client connection ended: {0}")]
struct Refused(&'static str);

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
    /// Not HTTP/2 with prior knowledge, or past something the wrapper leaves to h2: bytes go
    /// through untouched.
    Passthrough,
    /// Ended by the wrapper (see [`AuthorityFix::refuse`]): reads fail once the output is read.
    Closed(&'static str),
}

/// A header block being collected across HEADERS + CONTINUATION frames.
struct Block {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The block's frames as received.
    frames: Vec<u8>,
    /// CONTINUATION frames without END_HEADERS so far.
    continuations: usize,
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
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Self {
            inner,
            mode: Mode::Preface,
            raw: BytesMut::with_capacity(READ_CHUNK),
            out: BytesMut::with_capacity(OUT_HIGH),
            block: None,
            decoder,
            encoder: loona_hpack::Encoder::new(),
            rewriting: false,
            eof: false,
        }
    }

    /// Bytes the wrapper holds: read from the connection and not yet read by the server, or
    /// kept for a header block being collected. Never more than [`MAX_BUFFERED`] between reads.
    pub fn buffered(&self) -> usize {
        let block = self
            .block
            .as_ref()
            .map_or(0, |b| b.fragment.len() + b.frames.len());
        self.raw.len() + self.out.len() + block
    }

    /// Moves complete units of `raw` to `out`, rewriting header blocks, until `out` holds
    /// [`OUT_HIGH`] or `raw` holds no complete unit.
    fn process(&mut self) {
        while self.out.len() < OUT_HIGH {
            match self.mode {
                Mode::Passthrough => {
                    let all = self.raw.split();
                    self.out.extend_from_slice(&all);
                    return;
                }
                Mode::Closed(_) => {
                    self.raw.clear();
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
                    if len > FRAME_MAX {
                        // Not collected: h2 answers FRAME_SIZE_ERROR from these 9 bytes alone,
                        // before it reads the payload or decodes anything, so they can go to it
                        // whatever state its HPACK decoder is in. When rewriting, a block being
                        // collected is dropped: h2 never saw its start, and it ends the
                        // connection at this frame anyway.
                        self.give_up(&[]);
                        continue;
                    }
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
        let rewriting = self.rewriting;
        if let Some(block) = self.block.as_mut() {
            if kind != TYPE_CONTINUATION || stream_id != block.stream_id {
                // h2 takes nothing but the block's CONTINUATIONs until it ends (PROTOCOL_ERROR).
                return self.refuse(frame, "frame other than CONTINUATION inside a header block");
            }
            if flags & FLAG_END_HEADERS == 0 {
                block.continuations += 1;
                if block.continuations > MAX_CONTINUATIONS {
                    return self.refuse(frame, "header block longer than h2 takes");
                }
            }
            block.fragment.extend_from_slice(payload);
            // Kept only while the connection may still be let through untouched.
            if !rewriting {
                block.frames.extend_from_slice(frame);
            }
            if flags & FLAG_END_HEADERS != 0 {
                if let Some(block) = self.block.take() {
                    self.finish(block);
                }
            }
            return;
        }
        match kind {
            TYPE_HEADERS => {
                let Some((priority, fragment)) = headers_payload(flags, payload) else {
                    // h2 rejects the frame (PROTOCOL_ERROR) before decoding its block.
                    return self.give_up(frame);
                };
                let block = Block {
                    stream_id,
                    end_stream: flags & FLAG_END_STREAM != 0,
                    priority,
                    fragment: fragment.to_vec(),
                    frames: if rewriting {
                        Vec::new()
                    } else {
                        frame.to_vec()
                    },
                    continuations: 0,
                };
                if flags & FLAG_END_HEADERS != 0 {
                    self.finish(block);
                } else {
                    self.block = Some(block);
                }
            }
            // h2 rejects a CONTINUATION outside a block (PROTOCOL_ERROR) before decoding it.
            TYPE_CONTINUATION => self.give_up(frame),
            // Clients may not push. h2 ends the connection (PROTOCOL_ERROR), but only after
            // decoding the frame's header block, and while going away it even ignores the frame
            // after decoding it: raw, the block would change h2's table once rewriting.
            TYPE_PUSH_PROMISE => self.refuse(frame, "PUSH_PROMISE from a client"),
            _ => self.out.extend_from_slice(frame),
        }
    }

    /// Decodes a complete block, repairs `:authority`, and emits it re-encoded.
    fn finish(&mut self, block: Block) {
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut size = 0usize;
        let decoded = self.decoder.decode_with_cb(&block.fragment, |n, v| {
            size = size.saturating_add(n.len() + v.len() + 32);
            if size <= MAX_DECODED {
                headers.push((n.into_owned(), v.into_owned()));
            }
        });
        if decoded.is_err() {
            // h2's own decoder rejects the same bytes (COMPRESSION_ERROR).
            return self.refuse(&block.frames, "undecodable header block");
        }
        if size > MAX_DECODED {
            return self.refuse(&block.frames, "header list over h2's limit");
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
        let first_room = FRAME_MAX - if block.priority.is_some() { 5 } else { 0 };
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
            let (chunk, tail) = rest.split_at(rest.len().min(FRAME_MAX));
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

    /// Stops rewriting for good: the frames of a block being collected (when kept), then
    /// `frame`, then everything after go to the server unchanged, for h2 to answer as it does.
    fn give_up(&mut self, frame: &[u8]) {
        tracing::debug!("HTTP/2 header rewriting stopped for this connection");
        if let Some(block) = self.block.take() {
            self.out.extend_from_slice(&block.frames);
        }
        self.out.extend_from_slice(frame);
        self.mode = Mode::Passthrough;
    }

    /// For input h2 ends the connection for, but only after decoding the header block it is in
    /// (or would be in, had h2 seen the block's start). Before any rewriting, h2 gets it as it
    /// came ([`Self::give_up`]). Once rewriting, h2's HPACK decoder follows our encoder, not the
    /// client's: raw client blocks would be decoded against the wrong table (an error at best, a
    /// garbled request at worst), and the block's frames are not kept anyway. h2 would end the
    /// connection, so the wrapper ends it here, after handing over the output before it.
    fn refuse(&mut self, frame: &[u8], why: &'static str) {
        if self.rewriting {
            tracing::debug!(why, "HTTP/2 client connection ended");
            self.block = None;
            self.raw.clear();
            self.mode = Mode::Closed(why);
        } else {
            self.give_up(frame);
        }
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
            if let Mode::Closed(why) = this.mode {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    Refused(why),
                )));
            }
            // One pass may have left complete frames in `raw` (see OUT_HIGH).
            this.process();
            if !this.out.is_empty() {
                continue;
            }
            if this.eof {
                // Hand over what was held back so the server sees exactly what arrived.
                if let Some(block) = this.block.take() {
                    this.out.extend_from_slice(&block.frames);
                }
                let tail = this.raw.split();
                this.out.extend_from_slice(&tail);
                if this.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // Only read once `raw` holds no complete unit: that bounds it to an incomplete
            // frame plus one read.
            let mut chunk = [0u8; READ_CHUNK];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        this.eof = true;
                    } else {
                        this.raw.extend_from_slice(rb.filled());
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

/// What [`fuzz_feed`] saw.
#[derive(Debug)]
pub struct Fed {
    /// The bytes the HTTP/2 server read, in order.
    pub read: Vec<u8>,
    /// Set when the wrapper ended the connection itself.
    pub error: Option<io::Error>,
    /// The most [`AuthorityFix::buffered`] was between reads.
    pub peak_buffered: usize,
}

/// Runs `input` through an [`AuthorityFix`] as a client connection would deliver it, for the
/// fuzz target in `fuzz/` and the test that replays its corpus. The first byte of `input`
/// chooses how the rest is cut into reads from the connection (0: a byte at a time; n: sizes
/// up to 128 n) and how much the server asks for at a time, so that arbitrary inputs reach
/// every frame and read boundary; now and then the connection has nothing ready.
///
/// # Panics
///
/// If the wrapper ever holds more than [`MAX_BUFFERED`], or if what the server reads depends
/// on how the input was cut into reads, not only on the bytes.
pub fn fuzz_feed(input: &[u8]) -> Fed {
    let (&cut, data) = input.split_first().unwrap_or((&0, &[]));
    let fed = feed(data, cut);
    // Against the same bytes one at a time (or in large reads, if they came one at a time).
    let other = feed(data, if cut == 0 { 255 } else { 0 });
    assert!(
        fed.read == other.read && fed.error.is_some() == other.error.is_some(),
        "the server reads something else when the input is cut differently"
    );
    fed
}

/// [`fuzz_feed`] with one way of cutting the input into reads.
fn feed(data: &[u8], cut: u8) -> Fed {
    let mut rng = Rng(0x9e37_79b9 ^ u32::from(cut));
    let conn = Chunked {
        data,
        rng: Rng(0x85eb_ca6b ^ u32::from(cut)),
        max: usize::from(cut) * 128,
        stalled: false,
    };
    let mut fix = AuthorityFix::new(conn);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut buf = vec![0u8; READ_CHUNK];
    let mut fed = Fed {
        read: Vec::new(),
        error: None,
        peak_buffered: 0,
    };
    loop {
        let want = 1 + rng.below(READ_CHUNK);
        let mut rb = ReadBuf::new(&mut buf[..want]);
        let polled = Pin::new(&mut fix).poll_read(&mut cx, &mut rb);
        let held = fix.buffered();
        assert!(
            held <= MAX_BUFFERED,
            "holds {held} bytes, more than {MAX_BUFFERED}"
        );
        fed.peak_buffered = fed.peak_buffered.max(held);
        match polled {
            // The connection stalled for one poll (see Chunked): poll again.
            Poll::Pending => {}
            Poll::Ready(Ok(())) if rb.filled().is_empty() => return fed,
            Poll::Ready(Ok(())) => fed.read.extend_from_slice(rb.filled()),
            Poll::Ready(Err(e)) => {
                fed.error = Some(e);
                return fed;
            }
        }
    }
}

/// xorshift32: cheap, deterministic read sizes for [`fuzz_feed`].
struct Rng(u32);

impl Rng {
    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        let mut x = self.0.max(1);
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x as usize % n
    }
}

/// A connection that delivers `data` in reads of pseudo-random sizes and, every so often, is
/// not ready. It never wakes anyone: [`fuzz_feed`] polls again right away.
struct Chunked<'a> {
    data: &'a [u8],
    rng: Rng,
    max: usize,
    stalled: bool,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.stalled && this.rng.below(4) == 0 {
            this.stalled = true;
            return Poll::Pending;
        }
        this.stalled = false;
        let size = if this.max == 0 {
            1
        } else {
            1 + this.rng.below(this.max)
        };
        let n = size.min(this.data.len()).min(buf.remaining());
        let (now, later) = this.data.split_at(n);
        buf.put_slice(now);
        this.data = later;
        Poll::Ready(Ok(()))
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

    /// A client connection that delivers `data` in reads of at most `chunk` bytes, then stays
    /// open with nothing more to read (no EOF: the old wrapper handed over what it held at EOF).
    struct Open {
        data: Vec<u8>,
        at: usize,
        chunk: usize,
    }

    impl AsyncRead for Open {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let n = this
                .chunk
                .min(buf.remaining())
                .min(this.data.len() - this.at);
            if n == 0 {
                return Poll::Pending;
            }
            buf.put_slice(&this.data[this.at..this.at + n]);
            this.at += n;
            Poll::Ready(Ok(()))
        }
    }

    /// What the server got from the wrapper until the client had nothing more to send.
    struct Drained {
        read: Vec<u8>,
        error: Option<io::Error>,
        /// The most the wrapper held between reads.
        peak: usize,
        /// Bytes the wrapper took from the client connection.
        taken: usize,
    }

    /// Reads from `fix` as h2 does (8 KiB at a time) until the client connection has nothing
    /// more, or the wrapper ends it.
    fn drain(wire: Vec<u8>) -> Drained {
        let mut fix = AuthorityFix::new(Open {
            data: wire,
            at: 0,
            chunk: READ_CHUNK,
        });
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut buf = [0u8; 8192];
        let mut d = Drained {
            read: Vec::new(),
            error: None,
            peak: 0,
            taken: 0,
        };
        loop {
            let mut rb = ReadBuf::new(&mut buf);
            let polled = Pin::new(&mut fix).poll_read(&mut cx, &mut rb);
            d.peak = d.peak.max(fix.buffered());
            match polled {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                    d.read.extend_from_slice(rb.filled())
                }
                Poll::Ready(Err(e)) => {
                    d.error = Some(e);
                    break;
                }
                _ => break,
            }
        }
        d.taken = fix.inner.at;
        d
    }

    /// An HPACK integer with a `prefix`-bit prefix (RFC 7541 section 5.1).
    fn int(flags: u8, prefix: u8, mut v: usize) -> Vec<u8> {
        let max = (1usize << prefix) - 1;
        if v < max {
            return vec![flags | v as u8];
        }
        let mut out = vec![flags | max as u8];
        v -= max;
        while v >= 128 {
            out.push((v % 128) as u8 | 0x80);
            v /= 128;
        }
        out.push(v as u8);
        out
    }

    /// A literal header field with incremental indexing and a new name (no Huffman).
    fn indexed_literal(name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut b = vec![0x40];
        b.extend(int(0, 7, name.len()));
        b.extend_from_slice(name);
        b.extend(int(0, 7, value.len()));
        b.extend_from_slice(value);
        b
    }

    /// `POST /` over http with the authority etcdctl 3.4 sends, without indexing: a block that
    /// needs repair and leaves the client's table alone.
    fn bad_request_fields() -> Vec<u8> {
        let auth = b"http://127.0.0.1:2379";
        let mut b = vec![0x83, 0x86, 0x84]; // :method POST, :scheme http, :path /
        b.extend(int(0, 4, 1)); // :authority, indexed name
        b.extend(int(0, 7, auth.len()));
        b.extend_from_slice(auth);
        b
    }

    fn preface_and_settings() -> Vec<u8> {
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        wire
    }

    /// Frames after the preface, as (type, flags, length).
    fn frames_of(mut rest: &[u8]) -> Vec<(u8, u8, usize)> {
        let mut out = Vec::new();
        while rest.len() >= FRAME_HEADER {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            out.push((rest[3], rest[4], len));
            rest = &rest[(FRAME_HEADER + len).min(rest.len())..];
        }
        out
    }

    #[test]
    fn a_frame_claiming_16_mib_is_handed_to_h2_not_collected() {
        for rewriting in [false, true] {
            let mut wire = preface_and_settings();
            if rewriting {
                wire.extend(frame(
                    TYPE_HEADERS,
                    FLAG_END_HEADERS | FLAG_END_STREAM,
                    1,
                    &bad_request_fields(),
                ));
            }
            let start = wire.len();
            wire.extend_from_slice(&[0xff, 0xff, 0xff, 0x0, 0x0, 0, 0, 0, 3]); // DATA, 16 MiB
            wire.extend(std::iter::repeat_n(0xab, 300 * 1024));
            let d = drain(wire.clone());
            assert!(d.error.is_none());
            assert!(
                d.read.ends_with(&wire[start..]),
                "rewriting: {rewriting}: the oversized frame goes to h2 as it came, at once"
            );
            assert_eq!(d.taken, wire.len());
            assert!(d.peak <= 2 * READ_CHUNK + FRAME_HEADER + FRAME_MAX);
        }
    }

    #[test]
    fn a_continuation_flood_before_rewriting_goes_to_h2_as_it_came() {
        // The block's authority needs repair, but h2 refuses the block before its end.
        let mut wire = preface_and_settings();
        wire.extend(frame(TYPE_HEADERS, 0, 1, &bad_request_fields()));
        for _ in 0..256 {
            wire.extend(frame(TYPE_CONTINUATION, 0, 1, &[0x83; FRAME_MAX]));
        }
        let d = drain(wire.clone());
        assert!(d.error.is_none());
        assert_eq!(d.taken, wire.len(), "4 MiB sent");
        assert!(d.read == wire, "byte for byte, for h2 to refuse");
        assert!(
            d.peak <= MAX_BLOCK_WIRE + 2 * READ_CHUNK + 2 * (FRAME_HEADER + FRAME_MAX),
            "held {} at most",
            d.peak
        );
    }

    #[test]
    fn a_continuation_flood_while_rewriting_ends_the_connection() {
        let mut wire = preface_and_settings();
        wire.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            1,
            &bad_request_fields(),
        ));
        let rewritten_end = wire.len();
        wire.extend(frame(TYPE_HEADERS, 0, 3, &bad_request_fields()));
        for _ in 0..256 {
            wire.extend(frame(TYPE_CONTINUATION, 0, 3, &[0x83; FRAME_MAX]));
        }
        let d = drain(wire.clone());
        let e = d.error.expect("the wrapper ends the connection");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // The request before the flood reached h2 (re-encoded); nothing of the flood did.
        assert_eq!(
            frames_of(&d.read[PREFACE.len()..])
                .iter()
                .map(|f| f.0)
                .collect::<Vec<_>>(),
            [0x4, TYPE_HEADERS]
        );
        assert!(
            d.taken <= rewritten_end + MAX_BLOCK_WIRE + 2 * READ_CHUNK,
            "stopped reading after {} of {} bytes",
            d.taken,
            wire.len()
        );
        assert!(d.peak <= MAX_BUFFERED, "held {}", d.peak);
    }

    #[test]
    fn six_continuations_pass_and_the_seventh_unfinished_one_is_refused() {
        // h2 with berth's limits takes HEADERS + 5 CONTINUATION + the last one.
        assert_eq!(MAX_CONTINUATIONS, 5);
        let block = bad_request_fields();
        let wire_for = |continuations: usize| {
            let mut wire = preface_and_settings();
            wire.extend(frame(TYPE_HEADERS, 0, 1, &block[..1]));
            for i in 0..continuations {
                wire.extend(frame(TYPE_CONTINUATION, 0, 1, &block[1 + i..2 + i]));
            }
            wire.extend(frame(
                TYPE_CONTINUATION,
                FLAG_END_HEADERS,
                1,
                &block[1 + continuations..],
            ));
            wire
        };
        let ok = wire_for(5);
        let d = drain(ok.clone());
        assert!(d.error.is_none() && d.read != ok, "re-encoded");
        let too_long = wire_for(6);
        let d = drain(too_long.clone());
        assert!(
            d.error.is_none() && d.read == too_long,
            "handed over for h2 to refuse"
        );
    }

    /// Sends `last` (a frame h2 must refuse) on a fresh connection and on one where rewriting
    /// started: as it came in the first case (h2 answers), the connection ended in the second
    /// (h2's decoder follows our encoder, so it cannot be handed raw client blocks).
    fn refused_as_h2_would(last: Vec<u8>) {
        for rewriting in [false, true] {
            let mut wire = preface_and_settings();
            if rewriting {
                wire.extend(frame(
                    TYPE_HEADERS,
                    FLAG_END_HEADERS,
                    1,
                    &bad_request_fields(),
                ));
            }
            let start = wire.len();
            wire.extend(&last);
            let d = drain(wire.clone());
            if rewriting {
                assert!(d.error.is_some(), "h2 would end the connection");
                assert_eq!(frames_of(&d.read[PREFACE.len()..]).len(), 2);
            } else {
                assert!(d.error.is_none());
                assert!(
                    d.read[start..] == wire[start..],
                    "as it came, for h2 to refuse"
                );
            }
        }
    }

    #[test]
    fn a_header_list_decoding_past_h2s_limit_is_not_rewritten() {
        // One 4 KiB table entry named again and again: 24 bytes on the wire, 80 KiB decoded.
        let mut fields = bad_request_fields();
        fields.extend(indexed_literal(b"x-big", &[b'b'; 4000]));
        fields.extend([0x80 | 62; 20]);
        refused_as_h2_would(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &fields));
    }

    #[test]
    fn a_push_promise_from_the_client_is_refused() {
        // Promised stream 2, with a header block of its own.
        let mut payload = 2u32.to_be_bytes().to_vec();
        payload.extend(indexed_literal(b"x-pushed", b"1"));
        refused_as_h2_would(frame(TYPE_PUSH_PROMISE, FLAG_END_HEADERS, 1, &payload));
    }

    #[test]
    fn a_table_larger_than_the_server_advertises_is_not_taken() {
        let mut fields = int(0x20, 5, 1 << 20); // dynamic table size update to 1 MiB
        fields.extend(bad_request_fields());
        let mut wire = preface_and_settings();
        wire.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &fields));
        let d = drain(wire.clone());
        assert!(
            d.read == wire,
            "as it came, for h2 to refuse (COMPRESSION_ERROR)"
        );
    }

    #[test]
    fn small_blocks_that_decode_large_do_not_pile_up_output() {
        // The client's table holds x-big=B, the wrapper's encoder only x-big=A: each 10-byte
        // HEADERS frame naming the entry comes out as a 4 KiB literal.
        let mut first = bad_request_fields();
        first.extend(indexed_literal(b"x-big", &[b'a'; 4000]));
        first.extend(indexed_literal(b"x-big", &[b'b'; 4000]));
        let mut wire = preface_and_settings();
        wire.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &first));
        for i in 0..2000u32 {
            wire.extend(frame(
                TYPE_HEADERS,
                FLAG_END_HEADERS,
                3 + 2 * i,
                &[0x80 | 62],
            ));
        }
        let d = drain(wire.clone());
        assert!(d.error.is_none());
        assert_eq!(d.taken, wire.len());
        assert_eq!(frames_of(&d.read[PREFACE.len()..]).len(), 2 + 2000);
        assert!(d.read.len() > 2000 * 4000);
        assert!(d.peak <= MAX_BUFFERED, "held {}", d.peak);
    }

    #[test]
    fn the_fuzz_corpus_runs_bounded() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/authority");
        let mut seeds = 0;
        for entry in std::fs::read_dir(dir).expect("fuzz/corpus/authority") {
            let input = std::fs::read(entry.expect("entry").path()).expect("seed");
            seeds += 1;
            // As stored, then cut into reads other ways.
            for cut in [None, Some(0), Some(1), Some(3), Some(64), Some(255)] {
                let mut input = input.clone();
                if let (Some(c), Some(first)) = (cut, input.first_mut()) {
                    *first = c;
                }
                let fed = fuzz_feed(&input);
                assert!(fed.peak_buffered <= MAX_BUFFERED);
            }
        }
        assert!(seeds >= 5, "{seeds} seeds");
    }
}

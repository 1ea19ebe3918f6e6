//! The node as a process: configuration from environment and file, JSON logs, and input that
//! is not even a valid request (garbage bytes, malformed and truncated protobuf, a header block
//! that never ends).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Code;

use crate::harness::{berth_bin, free_port, Server};

/// Sends raw bytes as the request message and ignores the response body.
#[derive(Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let v = src.chunk().to_vec();
        src.advance(v.len());
        Ok(Some(v))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

async fn raw_call(addr: &str, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    grpc.unary(
        tonic::Request::new(body),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_truncated_and_garbage_input_is_refused_without_harm() {
    let srv = Server::start();
    let mut c = srv.client().await;
    c.put("before", "1", None).await.expect("put");
    let rev = c
        .get("before", None)
        .await
        .expect("get")
        .header()
        .expect("h")
        .revision();

    // Field 1 (key) claims 100 bytes but only 3 follow.
    let truncated = vec![0x0a, 100, b'a', b'b', b'c'];
    let s = raw_call(&srv.client_addr, "/etcdserverpb.KV/Put", truncated)
        .await
        .expect_err("truncated protobuf");
    assert_eq!(s.code(), Code::Internal, "{s:?}");
    // Wire type 7 does not exist.
    let malformed = vec![0x0f, 0xff, 0xff];
    let s = raw_call(&srv.client_addr, "/etcdserverpb.KV/Txn", malformed)
        .await
        .expect_err("malformed protobuf");
    assert_eq!(s.code(), Code::Internal, "{s:?}");
    let s = raw_call(
        &srv.client_addr,
        "/etcdserverpb.KV/NoSuchMethod",
        Vec::new(),
    )
    .await
    .expect_err("unknown method");
    assert_eq!(s.code(), Code::Unimplemented);

    // Bytes that are not HTTP/2 at all.
    for junk in [
        &b"\x00\x01\x02garbage\r\n\r\n"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
    ] {
        let mut s = std::net::TcpStream::connect(&srv.client_addr).expect("connect");
        let _ = s.write_all(junk);
        let _ = s.shutdown(std::net::Shutdown::Write);
    }

    let after = c.get("before", None).await.expect("server still serves");
    assert_eq!(
        after.header().expect("h").revision(),
        rev,
        "nothing was written"
    );
    c.put("after", "1", None).await.expect("still writable");
}

#[test]
fn environment_and_config_file_configure_the_node_and_logs_can_be_json() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let client = free_port();
    let http = free_port();
    let file = tmp.path().join("berth.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"from-file\"\nlisten-client-urls = \"http://127.0.0.1:{client}\"\nlisten-http-urls = \"http://127.0.0.1:1\"\n"
        ),
    )
    .expect("write config");
    let mut child = Command::new(berth_bin())
        .arg("server")
        .env("BERTH_CONFIG_FILE", &file)
        .env("BERTH_DATA_DIR", tmp.path().join("data"))
        .env(
            "BERTH_LISTEN_PEER_URLS",
            format!("http://127.0.0.1:{}", free_port()),
        )
        .env("BERTH_LOG_FORMAT", "json")
        // The flag beats the file's (unusable) HTTP port.
        .arg("--listen-http-urls")
        .arg(format!("http://127.0.0.1:{http}"))
        .arg("--listen-dns-addr")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--listen-nacos-urls")
        .arg("")
        .arg("--listen-nats-urls")
        .arg("")
        .arg("--listen-gateway-urls")
        .arg("")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut ready = None;
    // Kept open to the end: a server whose stderr is closed dies on its next log line.
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref().map_while(Result::ok) {
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        if v["fields"]["message"] == "ready to serve client requests" {
            ready = Some(v);
            break;
        }
    }
    let v = ready.expect("ready line");
    assert_eq!(v["fields"]["name"], "from-file");
    assert!(tmp.path().join("data").join("member.toml").exists());
    // Healthy once a leader is elected (a moment after "ready": /health needs a leader).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut s = match std::net::TcpStream::connect(("127.0.0.1", http)) {
            Ok(s) => s,
            Err(e) => panic!(
                "http listener from the flag: {e}; server: {:?}",
                child.try_wait()
            ),
        };
        write!(s, "GET /health HTTP/1.0\r\n\r\n").expect("write");
        let mut resp = String::new();
        std::io::Read::read_to_string(&mut s, &mut resp).expect("read");
        if resp.starts_with("HTTP/1.0 200") || resp.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{resp}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(lines);
}

#[test]
fn bad_configuration_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new(berth_bin())
        .args([
            "server",
            "--initial-cluster-state",
            "sideways",
            "--data-dir",
        ])
        .arg(tmp.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--initial-cluster-state must be new or existing"),
        "{err}"
    );
}

/// Resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with a `prefix`-bit prefix (RFC 7541 section 5.1).
fn hpack_int(flags: u8, prefix: u8, mut v: usize) -> Vec<u8> {
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

/// HPACK literal fields without indexing (new name, no Huffman).
fn hpack_literals(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in fields {
        b.push(0);
        b.extend(hpack_int(0, 7, n.len()));
        b.extend_from_slice(n.as_bytes());
        b.extend(hpack_int(0, 7, v.len()));
        b.extend_from_slice(v.as_bytes());
    }
    b
}

/// A Status request with the authority etcdctl 3.4 sends, which berth repairs.
fn status_request_with_bad_authority() -> Vec<u8> {
    hpack_literals(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/etcdserverpb.Maintenance/Status"),
        (":authority", "http://127.0.0.1:2379"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ])
}

/// Opens an HTTP/2 connection and starts a header block that never ends: HEADERS announcing a
/// 150 MiB header value, then CONTINUATION frames until the server closes the connection. With
/// `rewriting`, a complete request whose authority needs repair goes first, so the server's
/// `:authority` repair layer is re-encoding by then. Returns the bytes sent and the server's
/// resident memory growth once the sending stopped.
fn endless_header_block(addr: &str, pid: u32, rewriting: bool) -> (usize, i64) {
    const FLOOD: usize = 150 << 20;
    let before = rss(pid) as i64;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_write_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    wire.extend(h2_frame(0x4, 0, 0, &[])); // SETTINGS
    if rewriting {
        // HEADERS with END_STREAM | END_HEADERS: an empty unary call, answered with an error.
        wire.extend(h2_frame(0x1, 0x5, 1, &status_request_with_bad_authority()));
    }
    let mut block = status_request_with_bad_authority();
    block.extend_from_slice(&[0, 7]);
    block.extend_from_slice(b"x-flood");
    block.extend(hpack_int(0, 7, FLOOD));
    wire.extend(h2_frame(0x1, 0, 3, &block)); // HEADERS without END_HEADERS
    s.write_all(&wire).expect("preface and HEADERS");
    let continuation = h2_frame(0x9, 0, 3, &[b'a'; 16_384]);
    let mut sent = wire.len();
    while sent < FLOOD {
        if s.write_all(&continuation).is_err() {
            break;
        }
        sent += continuation.len();
    }
    // Let the server take in what is still on its way.
    std::thread::sleep(std::time::Duration::from_millis(300));
    (sent, rss(pid) as i64 - before)
}

/// The `:authority` repair layer in front of h2 once collected whole header blocks before h2's
/// limits applied: 150 MiB of CONTINUATION frames on one connection took the server from 125 to
/// 826 MiB of memory. Both ways a block can end now (h2 refusing it, or the layer ending the
/// connection once it re-encodes) must leave the server's memory alone and the server serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_header_block_is_refused_without_taking_memory() {
    let srv = Server::start();
    let pid = srv.pid().expect("running");
    let addr = srv.client_addr.clone();
    for rewriting in [false, true] {
        let addr = addr.clone();
        let (sent, growth) =
            tokio::task::spawn_blocking(move || endless_header_block(&addr, pid, rewriting))
                .await
                .expect("flood");
        eprintln!(
            "rewriting: {rewriting}: sent {} KiB, server RSS grew {} KiB",
            sent >> 10,
            growth >> 10
        );
        assert!(
            sent < 150 << 20,
            "rewriting: {rewriting}: the server never closed the connection"
        );
        assert!(
            growth < 64 << 20,
            "rewriting: {rewriting}: the server's memory grew by {} MiB",
            growth >> 20
        );
    }
    let mut c = srv.client().await;
    c.put("after", "1", None)
        .await
        .expect("put after the flood");
    let got = c.get("after", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"1");
}

//! The node as a process: configuration from environment and file, JSON logs, and input that
//! is not even a valid request (garbage bytes, malformed and truncated protobuf).

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

//! The gateway (issue 17): APISIX's Admin API v3 on the HTTP listener, and the data plane on
//! `--listen-gateway-urls` proxying to real upstream servers on loopback (an HTTP/1.1 and h2c
//! echo server in this process, berth's own etcd gRPC API), with the registry's healthy
//! instances as upstreams, the plugins berth runs, request-smuggling shapes refused before
//! any upstream call, WebSockets spliced and kept across route changes, and TLS by SNI from
//! the gateway's ssls.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{http_request, Server, WITH_GATEWAY};

/// An upstream on loopback: answers every request with JSON naming itself and echoing the
/// method, path and headers; `/slow` waits 3 s first; an upgrade to `websocket` gets a 101
/// and then every byte back. Counts the requests it got.
struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    _rt: tokio::runtime::Runtime,
}

impl Upstream {
    fn start(name: &'static str) -> Upstream {
        Self::start_answering(name, 200)
    }

    /// An upstream that answers every request with `status`.
    fn start_answering(name: &'static str, status: u16) -> Upstream {
        Self::start_on(name, status, "127.0.0.1:0")
    }

    /// An upstream on `addr` that answers every request with `status`.
    fn start_on(name: &'static str, status: u16, addr: &str) -> Upstream {
        Self::spawn(name, status, addr, Duration::ZERO)
    }

    /// An upstream that waits `delay` before each answer.
    fn start_slowed(name: &'static str, delay: Duration) -> Upstream {
        Self::spawn(name, 200, "127.0.0.1:0", delay)
    }

    fn spawn(name: &'static str, status: u16, addr: &str, delay: Duration) -> Upstream {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let hits = Arc::new(AtomicUsize::new(0));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(addr))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let counted = hits.clone();
        rt.spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let hits = counted.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let hits = hits.clone();
                        async move {
                            tokio::time::sleep(delay).await;
                            let mut resp = echo(name, req, &hits).await;
                            if status != 200 {
                                *resp.status_mut() =
                                    hyper::StatusCode::from_u16(status).expect("status");
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(conn), service)
                    .await;
                });
            }
        });
        Upstream {
            addr,
            hits,
            _rt: rt,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn echo(
    name: &str,
    mut req: hyper::Request<hyper::body::Incoming>,
    hits: &AtomicUsize,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    use http_body_util::BodyExt;
    hits.fetch_add(1, Ordering::SeqCst);
    let headers: HashMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    if req.uri().path() == "/slow" {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if headers.get("upgrade").map(String::as_str) == Some("websocket") {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(conn) = upgrade.await {
                let (mut r, mut w) = tokio::io::split(hyper_util::rt::TokioIo::new(conn));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        return hyper::Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("response");
    }
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let version = format!("{:?}", req.version());
    let authority = req.uri().authority().map(|a| a.to_string());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let out = json!({
        "name": name, "method": method, "path": path, "headers": headers,
        "version": version, "body": String::from_utf8_lossy(&body), "authority": authority,
    });
    hyper::Response::builder()
        .header("content-type", "application/json")
        .header("x-upstream", name)
        .body(http_body_util::Full::new(bytes::Bytes::from(
            out.to_string(),
        )))
        .expect("response")
}

/// An Admin API call: status and JSON body.
fn admin(srv: &Server, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let text = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let ((code, out), _) = http_request(
        method,
        &srv.http_addr,
        &format!("/apisix/admin{path}"),
        &text,
        &[],
    );
    let v = serde_json::from_str(&out).unwrap_or(Value::String(out));
    (code, v)
}

fn put(srv: &Server, path: &str, body: Value) {
    let (code, out) = admin(srv, "PUT", path, &body);
    assert!(code == 200 || code == 201, "PUT {path}: {code} {out}");
}

/// A request through the gateway: status, JSON (or text) body, headers.
fn via(
    srv: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Value, Vec<(String, String)>) {
    let ((code, out), head) = http_request(method, &srv.gateway_addr, path, "", headers);
    let v = serde_json::from_str(&out).unwrap_or(Value::String(out));
    (code, v, head)
}

fn header<'a>(head: &'a [(String, String)], name: &str) -> Option<&'a str> {
    head.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn admin_api_speaks_apisix_v3() {
    let srv = Server::start_with(&[WITH_GATEWAY]);
    let up = Upstream::start("a");
    let upstream = json!({"nodes": {up.addr.to_string(): 1}, "type": "roundrobin"});
    let (code, out) = admin(&srv, "PUT", "/upstreams/1", &upstream);
    assert_eq!(code, 201, "{out}");
    assert_eq!(out["key"], "/apisix/upstreams/1");
    assert_eq!(out["value"]["id"], "1");
    let created = out["value"]["create_time"].as_i64().expect("create_time");
    assert!(
        out.get("createdIndex").is_none(),
        "a PUT answers key and value only"
    );
    let (code, _) = admin(&srv, "PUT", "/upstreams/1", &upstream);
    assert_eq!(code, 200, "an update");
    let (code, out) = admin(&srv, "GET", "/upstreams/1", &Value::Null);
    assert_eq!(code, 200);
    assert_eq!(
        out["value"]["create_time"].as_i64(),
        Some(created),
        "kept across updates"
    );
    assert!(out["modifiedIndex"].as_i64() > out["createdIndex"].as_i64());
    let (code, out) = admin(&srv, "GET", "/upstreams/nope", &Value::Null);
    assert_eq!((code, out), (404, json!({"message": "Key not found"})));

    // Routes: validation in APISIX's words.
    let cases = [
        (json!({"uri": "/a", "upstream_id": "9"}), "failed to fetch upstream info by upstream id [9], response code: 404"),
        (json!({"uri": "/a", "upstream_id": "1", "plugins": {"nope": {}}}), "unknown plugin [nope]"),
        (json!({"uri": "/a", "upstream_id": "1", "create_time": 1}), "the property is forbidden:  create_time"),
        (json!({"uri": "/a", "upstream_id": "1", "methods": ["FETCH"]}), "invalid configuration: property \"methods\" validation failed: matches none of the enum values: \"FETCH\""),
        (json!({"id": "2", "uri": "/a", "upstream_id": "1"}), "wrong route id"),
    ];
    for (body, want) in cases {
        let (code, out) = admin(&srv, "PUT", "/routes/1", &body);
        assert_eq!(
            (code, out["error_msg"].as_str()),
            (400, Some(want)),
            "{body}"
        );
    }
    let ((code, out), _) = http_request(
        "PUT",
        &srv.http_addr,
        "/apisix/admin/routes/1",
        "{nope",
        &[],
    );
    assert_eq!(code, 400);
    assert!(out.contains("invalid request body"), "{out}");
    let (code, out) = admin(
        &srv,
        "PUT",
        "/routes/1",
        &json!({"uri": "/a", "upstream_id": "1", "name": "r1", "labels": {"env": "prod"}}),
    );
    assert_eq!(code, 201, "{out}");
    let (code, out) = admin(
        &srv,
        "POST",
        "/routes",
        &json!({"uri": "/b", "upstream_id": "1"}),
    );
    assert_eq!(code, 201, "{out}");
    let generated = out["value"]["id"].as_str().expect("id").to_string();
    assert_eq!(generated.len(), 20, "20 digits, as APISIX's");
    let (code, out) = admin(&srv, "GET", "/routes", &Value::Null);
    assert_eq!((code, out["total"].as_u64()), (200, Some(2)), "{out}");
    let (_, out) = admin(&srv, "GET", "/routes?label=env:prod", &Value::Null);
    assert_eq!(out["total"], 1);
    let (_, out) = admin(&srv, "GET", "/routes?name=^r", &Value::Null);
    assert_eq!(out["list"][0]["value"]["id"], "1");

    // PATCH merges (null removes), a sub-path PATCH replaces that part.
    let (code, out) = admin(
        &srv,
        "PATCH",
        "/routes/1",
        &json!({"name": null, "methods": ["GET"]}),
    );
    assert_eq!(code, 200, "{out}");
    assert!(out["value"].get("name").is_none());
    assert_eq!(out["value"]["methods"], json!(["GET"]));
    assert_eq!(out["value"]["labels"]["env"], "prod");
    let (code, out) = admin(&srv, "PATCH", "/routes/1/labels", &json!({"team": "x"}));
    assert_eq!(
        (code, out["value"]["labels"].clone()),
        (200, json!({"team": "x"}))
    );
    let (code, _) = admin(&srv, "PATCH", "/routes/missing", &json!({"name": "x"}));
    assert_eq!(code, 404);

    // Deletes: in use, then free.
    let (code, out) = admin(&srv, "DELETE", "/upstreams/1", &Value::Null);
    assert_eq!(code, 400);
    assert!(
        out["error_msg"]
            .as_str()
            .is_some_and(|m| m.starts_with("can not delete this upstream, route [")),
        "{out}"
    );
    for id in ["1", generated.as_str()] {
        let (code, out) = admin(&srv, "DELETE", &format!("/routes/{id}"), &Value::Null);
        assert_eq!((code, out["deleted"].as_str()), (200, Some("1")));
    }
    let (code, _) = admin(&srv, "DELETE", "/upstreams/1", &Value::Null);
    assert_eq!(code, 200);
    let (code, _) = admin(&srv, "DELETE", "/upstreams/1", &Value::Null);
    assert_eq!(code, 404);

    // Consumers: PUT on the collection names them by username; no POST.
    let (code, out) = admin(
        &srv,
        "PUT",
        "/consumers",
        &json!({"username": "jack", "plugins": {"key-auth": {"key": "k1"}}}),
    );
    assert_eq!(code, 201, "{out}");
    assert_eq!(out["key"], "/apisix/consumers/jack");
    let (code, out) = admin(
        &srv,
        "PUT",
        "/consumers",
        &json!({"username": "jill", "plugins": {"key-auth": {"key": "k1"}}}),
    );
    assert_eq!(code, 400);
    assert_eq!(
        out["error_msg"],
        "duplicate key of plugin key-auth found with consumer: jack"
    );
    let (code, _) = admin(&srv, "POST", "/consumers", &json!({"username": "x"}));
    assert_eq!(code, 405);
    let (code, out) = admin(&srv, "GET", "/stream_routes", &Value::Null);
    assert_eq!(
        (code, out["error_msg"].as_str()),
        (404, Some("Unsupported resource type: stream_routes"))
    );

    // SSLs: the key is checked and never returned.
    let pki = crate::tls::Pki::new("gateway");
    let (cert, key) = pki.issue_pem("gw", &["api.test"]);
    let (code, out) = admin(
        &srv,
        "PUT",
        "/ssls/1",
        &json!({"cert": cert, "key": "garbage", "snis": ["api.test"]}),
    );
    assert_eq!(code, 400, "{out}");
    let (code, out) = admin(
        &srv,
        "PUT",
        "/ssls/1",
        &json!({"cert": cert, "key": key, "snis": ["api.test"]}),
    );
    assert_eq!(code, 201, "{out}");
    assert!(out["value"].get("key").is_none());
    let (_, out) = admin(&srv, "GET", "/ssls/1", &Value::Null);
    assert!(out["value"].get("key").is_none() && out["value"]["cert"].is_string());
}

/// Sends raw bytes to the gateway and reads the answer until the server closes or 2 s pass.
fn raw(addr: &str, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `f` until it holds (10 s at most).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// gRPC requests carry the host `pass_host` chooses as `:authority` (APISIX's
/// `upstream_host`), while the gateway dials the node all the same.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_requests_name_the_host_pass_host_chooses() {
    let srv = tokio::task::spawn_blocking(|| Server::start_with(&[WITH_GATEWAY]))
        .await
        .expect("server");
    let a = tokio::task::spawn_blocking(|| Upstream::start("a"))
        .await
        .expect("upstream");
    let node = a.addr.to_string();
    let gateway = srv.gateway_addr.clone();
    let io = tokio::net::TcpStream::connect(&gateway)
        .await
        .expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    for (pass_host, want) in [
        (
            json!({"pass_host": "rewrite", "upstream_host": "svc.internal:50051"}),
            "svc.internal:50051".to_string(),
        ),
        (json!({"pass_host": "node"}), node.clone()),
        (json!({"pass_host": "pass"}), "api.example".to_string()),
    ] {
        let mut upstream = json!({"scheme": "grpc", "nodes": {node.clone(): 1}});
        if let (Some(u), Some(p)) = (upstream.as_object_mut(), pass_host.as_object()) {
            u.extend(p.clone());
        }
        let route = json!({"uri": "/pkg.Svc/*", "upstream": upstream});
        tokio::task::block_in_place(|| put(&srv, "/routes/g", route));
        let req = hyper::Request::builder()
            .method("POST")
            .uri("http://api.example/pkg.Svc/Call")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"\0\0\0\0\0",
            )))
            .expect("request");
        let resp = send.send_request(req).await.expect("h2 request");
        use http_body_util::BodyExt;
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["authority"], want, "{pass_host}: {v}");
        assert_eq!(v["version"], "HTTP/2.0", "{v}");
        assert!(
            v["headers"].get("host").is_none(),
            "no Host beside :authority: {v}"
        );
    }
    assert_eq!(a.hits(), 3);
    tokio::task::spawn_blocking(move || drop((a, srv)))
        .await
        .expect("dropped");
}

/// `?ttl=N` puts a resource under a lease, as APISIX's etcd lease: it serves, then goes by
/// itself; written again without it, it stays.
#[test]
fn a_resource_put_with_a_ttl_expires() {
    let srv = Server::start_with(&[WITH_GATEWAY]);
    let a = Upstream::start("a");
    let route = |uri: &str| json!({"uri": uri, "upstream": {"nodes": {a.addr.to_string(): 1}}});
    for bad in ["0", "-1", "x", "1.5", ""] {
        let (code, out) = admin(&srv, "PUT", &format!("/routes/t?ttl={bad}"), &route("/t"));
        assert_eq!(code, 400, "ttl {bad:?}: {out}");
        assert!(
            out["error_msg"].as_str().is_some_and(|m| m.contains("ttl")),
            "{out}"
        );
    }
    assert_eq!(
        admin(&srv, "GET", "/routes/t", &Value::Null).0,
        404,
        "nothing written"
    );
    // A write refused with a ttl leaves no lease behind.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let leases = || {
        rt.block_on(async {
            let mut c = srv.client().await;
            c.leases().await.expect("leases").leases().len()
        })
    };
    let before = leases();
    let (code, out) = admin(
        &srv,
        "PUT",
        "/routes/t?ttl=100",
        &json!({"uri": "/t", "upstream_id": "missing"}),
    );
    assert_eq!(code, 400, "{out}");
    assert_eq!(leases(), before, "the refused write's lease was revoked");
    let (code, out) = admin(&srv, "PUT", "/routes/t?ttl=2", &route("/t"));
    assert_eq!(code, 201, "{out}");
    let (code, out) = admin(&srv, "PUT", "/routes/kept?ttl=2", &route("/kept"));
    assert_eq!(code, 201, "{out}");
    put(&srv, "/routes/kept", route("/kept"));
    assert_eq!(via(&srv, "GET", "/t", &[]).0, 200);
    eventually("the route with a ttl expires", || {
        admin(&srv, "GET", "/routes/t", &Value::Null).0 == 404
            && via(&srv, "GET", "/t", &[]).0 == 404
    });
    assert_eq!(admin(&srv, "GET", "/routes/kept", &Value::Null).0, 200);
    assert_eq!(
        via(&srv, "GET", "/kept", &[]).0,
        200,
        "written again without ttl: kept"
    );
}

#[test]
fn proxies_http1_and_h2c_with_balancing_retries_and_timeouts() {
    let srv = Server::start_with(&[WITH_GATEWAY]);
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    put(
        &srv,
        "/upstreams/ab",
        json!({"nodes": {a.addr.to_string(): 1, b.addr.to_string(): 1}}),
    );
    put(
        &srv,
        "/routes/echo",
        json!({"uri": "/echo/*", "upstream_id": "ab"}),
    );
    let mut seen = HashMap::new();
    for _ in 0..10 {
        let (code, out, head) = via(
            &srv,
            "GET",
            "/echo/x?q=1",
            &[("Connection", "close, x-secret"), ("X-Secret", "1")],
        );
        assert_eq!(code, 200, "{out}");
        assert_eq!(header(&head, "x-upstream"), out["name"].as_str());
        *seen
            .entry(out["name"].as_str().unwrap_or_default().to_string())
            .or_insert(0) += 1;
        let h = &out["headers"];
        assert_eq!(out["path"], "/echo/x?q=1");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-real-ip"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["host"], srv.gateway_addr.as_str(), "pass_host pass");
        assert!(
            h["traceparent"]
                .as_str()
                .is_some_and(|t| t.starts_with("00-")),
            "{h}"
        );
        assert!(
            h.get("x-secret").is_none(),
            "a header Connection names is hop-by-hop: {h}"
        );
    }
    assert_eq!(seen.get("a"), Some(&5), "round robin: {seen:?}");
    assert_eq!(seen.get("b"), Some(&5), "round robin: {seen:?}");
    let ((code, out), _) = http_request("POST", &srv.gateway_addr, "/echo/post", "payload", &[]);
    let out: Value = serde_json::from_str(&out).expect("json");
    assert_eq!((code, out["body"].as_str()), (200, Some("payload")));
    let (code, out, _) = via(&srv, "GET", "/nothing", &[]);
    assert_eq!(
        (code, out),
        (404, json!({"error_msg": "404 Route Not Found"}))
    );

    // A dead node: connecting fails, and the request is retried on the other.
    let dead = format!("127.0.0.1:{}", crate::harness::free_port());
    put(
        &srv,
        "/upstreams/half",
        json!({"nodes": {dead: 1, a.addr.to_string(): 1}, "pass_host": "node"}),
    );
    put(
        &srv,
        "/routes/half",
        json!({"uri": "/half", "upstream_id": "half"}),
    );
    for _ in 0..6 {
        let (code, out, _) = via(&srv, "GET", "/half", &[]);
        assert_eq!((code, out["name"].as_str()), (200, Some("a")), "{out}");
        assert_eq!(out["headers"]["host"], a.addr.to_string(), "pass_host node");
    }
    // No retry for a node that never answers in time: 504.
    put(
        &srv,
        "/routes/slow",
        json!({"uri": "/slow", "upstream_id": "ab", "timeout": {"connect": 1, "send": 1, "read": 1}}),
    );
    let started = Instant::now();
    let (code, out, _) = via(&srv, "GET", "/slow", &[]);
    assert_eq!(code, 504, "{out}");
    assert!(started.elapsed() < Duration::from_millis(2500));
    // Only one node at a time is on a connect failure with nothing to retry on: 502.
    put(
        &srv,
        "/routes/gone",
        json!({"uri": "/gone", "upstream": {"nodes": {format!("127.0.0.1:{}", crate::harness::free_port()): 1}}}),
    );
    let (code, out, _) = via(&srv, "GET", "/gone", &[]);
    assert_eq!(code, 502, "{out}");
    assert!(
        out["error_msg"]
            .as_str()
            .is_some_and(|m| m.contains("connect")),
        "{out}"
    );

    // h2c with prior knowledge: the node gets HTTP/1.1.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let gateway = srv.gateway_addr.clone();
    let (version, upstream_version) = rt.block_on(async move {
        let io = tokio::net::TcpStream::connect(&gateway)
            .await
            .expect("connect");
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(io),
        )
        .await
        .expect("h2 handshake");
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .uri(format!("http://{gateway}/echo/h2"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        let resp = send.send_request(req).await.expect("h2 request");
        let version = resp.version();
        use http_body_util::BodyExt;
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let v: Value = serde_json::from_slice(&body).expect("json");
        (
            version,
            v["version"].as_str().unwrap_or_default().to_string(),
        )
    });
    assert_eq!(version, hyper::Version::HTTP_2);
    assert_eq!(upstream_version, "HTTP/1.1");

    let (_, metrics) = srv.http_get("/metrics");
    assert!(
        metrics.contains("berth_gateway_requests_total{route=\"echo\",code=\"2xx\"} 12"),
        "{metrics}"
    );
    assert!(metrics.contains("berth_gateway_upstream_attempts_total{upstream=\"upstreams/half\",outcome=\"connect_error\"}"));
    // A deleted route's series go with it.
    let (code, _) = admin(&srv, "DELETE", "/routes/echo", &Value::Null);
    assert_eq!(code, 200);
    let (_, metrics) = srv.http_get("/metrics");
    assert!(
        !metrics.contains("route=\"echo\""),
        "series of a deleted route remain"
    );
}

#[test]
fn plugins_authenticate_limit_restrict_and_rewrite() {
    let srv = Server::start_with(&[WITH_GATEWAY]);
    let a = Upstream::start("a");
    let node = json!({"nodes": {a.addr.to_string(): 1}});
    put(&srv, "/upstreams/1", node);
    put(
        &srv,
        "/consumers/jack",
        json!({"username": "jack", "plugins": {"key-auth": {"key": "k1"}, "limit-count": {"count": 1, "time_window": 60, "rejected_code": 429}}}),
    );
    put(
        &srv,
        "/consumers/bob",
        json!({"username": "bob", "plugins": {"basic-auth": {"username": "bob", "password": "s3cret"}}}),
    );
    put(
        &srv,
        "/routes/ka",
        json!({"uri": "/ka", "upstream_id": "1", "plugins": {"key-auth": {"hide_credentials": true}}}),
    );
    let (code, out, head) = via(&srv, "GET", "/ka", &[]);
    assert_eq!(
        (code, out),
        (401, json!({"message": "Missing API key in request"}))
    );
    assert_eq!(
        header(&head, "www-authenticate"),
        Some("apikey realm=\"key\"")
    );
    let (code, out, _) = via(&srv, "GET", "/ka", &[("apikey", "nope")]);
    assert_eq!(
        (code, out),
        (401, json!({"message": "Invalid API key in request"}))
    );
    let (code, out, _) = via(&srv, "GET", "/ka", &[("apikey", "k1")]);
    assert_eq!(code, 200, "{out}");
    assert!(out["headers"].get("apikey").is_none(), "hide_credentials");
    // jack's own limit-count: one a minute, refused with its code.
    let (code, _, head) = via(&srv, "GET", "/ka?apikey=k1", &[]);
    assert_eq!(code, 429);
    assert_eq!(header(&head, "x-ratelimit-limit"), Some("1"));
    assert_eq!(header(&head, "x-ratelimit-remaining"), Some("0"));

    put(
        &srv,
        "/routes/ba",
        json!({"uri": "/ba", "upstream_id": "1", "plugins": {"basic-auth": {}}}),
    );
    let (code, out, _) = via(&srv, "GET", "/ba", &[]);
    assert_eq!(
        (code, out["message"].as_str()),
        (401, Some("Missing authorization in request"))
    );
    let (code, out, _) = via(
        &srv,
        "GET",
        "/ba",
        &[("Authorization", "Basic Ym9iOndyb25n")],
    );
    assert_eq!(
        (code, out["message"].as_str()),
        (401, Some("Invalid user authorization"))
    );
    let (code, _, _) = via(
        &srv,
        "GET",
        "/ba",
        &[("Authorization", "Basic Ym9iOnMzY3JldA==")],
    );
    assert_eq!(code, 200);

    put(
        &srv,
        "/routes/lc",
        json!({"uri": "/lc", "upstream_id": "1", "plugins": {"limit-count": {"count": 2, "time_window": 60}}}),
    );
    let codes: Vec<u16> = (0..3).map(|_| via(&srv, "GET", "/lc", &[]).0).collect();
    assert_eq!(codes, vec![200, 200, 503]);
    // A route change does not hand out a fresh quota.
    put(
        &srv,
        "/routes/lc",
        json!({"uri": "/lc", "upstream_id": "1", "name": "renamed", "plugins": {"limit-count": {"count": 2, "time_window": 60}}}),
    );
    assert_eq!(via(&srv, "GET", "/lc", &[]).0, 503);

    // Routes of one limit-count group share its counter, and must configure it alike.
    let grouped = |uri: &str, count: u64| {
        json!({"uri": uri, "upstream_id": "1", "plugins": {"limit-count":
            {"count": count, "time_window": 60, "group": "shared"}}})
    };
    put(&srv, "/routes/g1", grouped("/g1", 3));
    put(&srv, "/routes/g2", grouped("/g2", 3));
    let codes: Vec<u16> = ["/g1", "/g2", "/g1", "/g2"]
        .iter()
        .map(|p| via(&srv, "GET", p, &[]).0)
        .collect();
    assert_eq!(codes, vec![200, 200, 200, 503], "one counter for the group");
    for (path, body) in [
        ("/routes/g3", grouped("/g3", 4)),
        ("/routes/g1", grouped("/g1", 4)),
        (
            "/plugin_configs/pg",
            json!({"plugins": {"limit-count": {"count": 3, "time_window": 30, "group": "shared"}}}),
        ),
    ] {
        let (code, out) = admin(&srv, "PUT", path, &body);
        assert_eq!(code, 400, "{path}: {out}");
        assert!(
            out["error_msg"]
                .as_str()
                .is_some_and(|m| m.contains("group conf mismatched")),
            "{path}: {out}"
        );
    }
    assert_eq!(admin(&srv, "GET", "/routes/g3", &Value::Null).0, 404);
    put(&srv, "/routes/g3", grouped("/g3", 3));

    put(
        &srv,
        "/routes/ip",
        json!({"uri": "/ip", "upstream_id": "1", "plugins": {"ip-restriction": {"blacklist": ["127.0.0.0/8"]}}}),
    );
    let (code, out, _) = via(&srv, "GET", "/ip", &[]);
    assert_eq!(
        (code, out),
        (403, json!({"message": "Your IP address is not allowed"}))
    );

    put(
        &srv,
        "/routes/cors",
        json!({"uri": "/cors", "upstream_id": "1", "plugins": {"cors": {"allow_origins": "https://a.example", "allow_methods": "GET,POST", "max_age": 60}}}),
    );
    let hits = a.hits();
    let (code, _, head) = via(
        &srv,
        "OPTIONS",
        "/cors",
        &[
            ("Origin", "https://a.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
    );
    assert_eq!(code, 200);
    assert_eq!(
        header(&head, "access-control-allow-origin"),
        Some("https://a.example")
    );
    assert_eq!(
        header(&head, "access-control-allow-methods"),
        Some("GET,POST")
    );
    assert_eq!(header(&head, "access-control-max-age"), Some("60"));
    assert_eq!(a.hits(), hits, "a preflight is answered by the gateway");
    let (_, _, head) = via(&srv, "GET", "/cors", &[("Origin", "https://evil.example")]);
    assert_eq!(header(&head, "access-control-allow-origin"), None);

    put(
        &srv,
        "/routes/rw",
        json!({"uri": "/api/*", "upstream_id": "1", "plugins": {
        "proxy-rewrite": {"regex_uri": ["^/api/(.*)", "/v2/$1"], "headers": {"set": {"X-Gw": "berth"}, "remove": ["X-Drop"]}},
        "response-rewrite": {"headers": {"set": {"X-Resp": "1"}}}}}),
    );
    let (code, out, head) = via(&srv, "GET", "/api/items?x=1", &[("X-Drop", "1")]);
    assert_eq!((code, out["path"].as_str()), (200, Some("/v2/items?x=1")));
    assert_eq!(out["headers"]["x-gw"], "berth");
    assert!(out["headers"].get("x-drop").is_none());
    assert_eq!(header(&head, "x-resp"), Some("1"));

    // Predicates: a header picks the route; priority orders routes of one path.
    put(
        &srv,
        "/routes/ios",
        json!({"uri": "/app", "upstream_id": "1", "vars": [["http_x_os", "==", "ios"]], "plugins": {"response-rewrite": {"headers": {"X-Route": "ios"}}}}),
    );
    put(
        &srv,
        "/routes/any",
        json!({"uri": "/app", "upstream_id": "1", "priority": -1, "plugins": {"response-rewrite": {"headers": {"X-Route": "any"}}}}),
    );
    assert_eq!(
        header(&via(&srv, "GET", "/app", &[("X-Os", "ios")]).2, "x-route"),
        Some("ios")
    );
    assert_eq!(
        header(&via(&srv, "GET", "/app", &[]).2, "x-route"),
        Some("any")
    );
}

#[test]
fn smuggling_shapes_get_400_and_reach_no_upstream() {
    let srv = Server::start_with(&[WITH_GATEWAY]);
    let a = Upstream::start("a");
    put(
        &srv,
        "/routes/1",
        json!({"uri": "/*", "upstream": {"nodes": {a.addr.to_string(): 1}}}),
    );
    let host = &srv.gateway_addr;
    let ok = raw(
        host,
        &format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    );
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let before = a.hits();
    let cases = [
        format!("POST /x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"),
        format!("POST /x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"),
        format!("POST /x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd"),
        format!("POST /x HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        format!("POST /x HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n"),
        format!("GET /x HTTP/1.1\r\nHost: {host}\r\nHost: other\r\n\r\n"),
        format!("GET /x HTTP/1.1\r\nHost: {host}\r\nBad Header: 1\r\n\r\n"),
        format!("POST /x HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n"),
        "GET /x HTTP/1.1\r\nHost: a b\r\n\r\n".to_string(),
    ];
    for req in &cases {
        let out = raw(host, req);
        assert!(out.starts_with("HTTP/1.1 400"), "{req:?} got {out:?}");
    }
    assert_eq!(
        a.hits(),
        before,
        "no malformed request reached the upstream"
    );
}

#[test]
fn websockets_are_spliced_and_outlive_route_changes() {
    let srv = Server::start_with(&[WITH_GATEWAY]);
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    put(
        &srv,
        "/upstreams/ws",
        json!({"nodes": {a.addr.to_string(): 1}}),
    );
    put(
        &srv,
        "/routes/ws",
        json!({"uri": "/ws", "upstream_id": "ws", "enable_websocket": true}),
    );
    put(
        &srv,
        "/routes/plain",
        json!({"uri": "/plain", "upstream_id": "ws"}),
    );
    let mut s = std::net::TcpStream::connect(&srv.gateway_addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(s, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("101 head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    let mut echo = |msg: &[u8]| {
        s.write_all(msg).expect("write");
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).expect("echo");
        back
    };
    assert_eq!(echo(b"ping"), b"ping");
    // Routes and upstreams change under the open connection: it stays.
    for i in 0..50 {
        let node = if i % 2 == 0 { &b } else { &a };
        put(
            &srv,
            "/upstreams/ws",
            json!({"nodes": {node.addr.to_string(): 1}}),
        );
        put(
            &srv,
            "/routes/ws",
            json!({"uri": "/ws", "upstream_id": "ws", "enable_websocket": true, "name": format!("v{i}")}),
        );
    }
    assert_eq!(echo(b"still here"), b"still here");
    let (_, metrics) = srv.http_get("/metrics");
    assert!(metrics.contains("berth_gateway_websockets 1"), "{metrics}");
    // A route that does not enable WebSockets passes the request without the upgrade.
    let (code, out, _) = via(
        &srv,
        "GET",
        "/plain",
        &[("Upgrade", "websocket"), ("Connection", "Upgrade")],
    );
    assert_eq!(code, 200, "{out}");
    assert!(out["headers"].get("upgrade").is_none(), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_streams_pass_through_to_etcd_and_outlive_route_changes() {
    let srv = tokio::task::spawn_blocking(|| Server::start_with(&[WITH_GATEWAY]))
        .await
        .expect("server");
    let route =
        json!({"uri": "/*", "upstream": {"scheme": "grpc", "nodes": {srv.client_addr.clone(): 1}}});
    let s = &srv;
    let put_route = |name: &str| {
        let mut r = route.clone();
        r["name"] = json!(name);
        let (code, out) = admin(s, "PUT", "/routes/grpc", &r);
        assert!(code == 200 || code == 201, "{out}");
    };
    put_route("v0");
    let mut c = etcd_client::Client::connect([srv.gateway_addr.clone()], None)
        .await
        .expect("connect through the gateway");
    c.put("k", "v1", None)
        .await
        .expect("put through the gateway");
    let got = c.get("k", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"v1");
    let mut stream = c.watch("w", None).await.expect("watch");
    let created = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("created in time")
        .expect("stream")
        .expect("message");
    assert!(created.created());
    for i in 0..20 {
        put_route(&format!("v{}", i + 1));
    }
    let mut direct = srv.client().await;
    direct.put("w", "after", None).await.expect("direct put");
    let msg = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the watch stream kept going")
        .expect("stream")
        .expect("message");
    assert_eq!(
        msg.events()[0].kv().map(|kv| kv.value()),
        Some(&b"after"[..])
    );
    let e = c
        .get(
            "k",
            Some(etcd_client::GetOptions::new().with_revision(1_000_000)),
        )
        .await
        .expect_err("a gRPC error status passes through in trailers");
    assert!(format!("{e}").contains("future revision"), "{e}");
}

#[test]
fn registry_instances_are_the_upstream_and_follow_health() {
    let srv = Server::start_with(&[WITH_GATEWAY]);
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    for (id, up) in [("a", &a), ("b", &b)] {
        let reg = json!({"ID": id, "Name": "web", "Address": "127.0.0.1", "Port": up.addr.port(),
                         "Check": {"TTL": "60s", "Status": "passing"}});
        let ((code, out), _) = http_request(
            "PUT",
            &srv.http_addr,
            "/v1/agent/service/register",
            &reg.to_string(),
            &[],
        );
        assert_eq!(code, 200, "{out}");
    }
    put(
        &srv,
        "/upstreams/web",
        json!({"service_name": "web", "discovery_type": "consul"}),
    );
    put(
        &srv,
        "/routes/web",
        json!({"uri": "/*", "upstream_id": "web"}),
    );
    let names = |n: usize| -> std::collections::BTreeSet<String> {
        (0..n)
            .map(|_| {
                via(&srv, "GET", "/x", &[]).1["name"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string()
            })
            .collect()
    };
    assert_eq!(names(6), ["a", "b"].map(String::from).into());
    // b's check fails: it takes no more traffic.
    let ((code, _), _) = http_request(
        "PUT",
        &srv.http_addr,
        "/v1/agent/check/fail/service:b",
        "",
        &[],
    );
    assert_eq!(code, 200);
    eventually("b leaves the upstream", || {
        names(4) == ["a"].map(String::from).into()
    });
    // Both gone: a clear 503.
    for id in ["a", "b"] {
        let ((code, _), _) = http_request(
            "PUT",
            &srv.http_addr,
            &format!("/v1/agent/service/deregister/{id}"),
            "",
            &[],
        );
        assert_eq!(code, 200);
    }
    eventually("no node left", || via(&srv, "GET", "/x", &[]).0 == 503);
    let (_, out, _) = via(&srv, "GET", "/x", &[]);
    assert!(
        out["error_msg"]
            .as_str()
            .is_some_and(|m| m.contains("no node")),
        "{out}"
    );
    // Registered again, through Nacos's naming this time: found by discovery_type nacos.
    let ((code, out), _) = http_request(
        "PUT",
        &srv.http_addr,
        "/v1/agent/service/register",
        &json!({"ID": "a2", "Name": "web", "Address": "127.0.0.1", "Port": a.addr.port()})
            .to_string(),
        &[],
    );
    assert_eq!(code, 200, "{out}");
    eventually("an instance without checks serves", || {
        via(&srv, "GET", "/x", &[]).0 == 200
    });
    put(
        &srv,
        "/upstreams/web",
        json!({"service_name": "web", "discovery_type": "nacos"}),
    );
    let (code, out, _) = via(&srv, "GET", "/x", &[]);
    assert_eq!((code, out["name"].as_str()), (200, Some("a")), "{out}");
}

#[test]
fn tls_certificates_come_from_ssls_by_sni() {
    let port = crate::harness::free_port();
    let url = format!("https://127.0.0.1:{port}");
    let srv = Server::start_with(&["--listen-gateway-urls", &url]);
    let a = Upstream::start("a");
    let pki = crate::tls::Pki::new("gw-sni");
    let (cert, key) = pki.issue_pem("first", &["api.test", "*.wild.test"]);
    put(
        &srv,
        "/ssls/1",
        json!({"cert": cert, "key": key, "snis": ["api.test", "*.wild.test"]}),
    );
    put(
        &srv,
        "/routes/1",
        json!({"uri": "/*", "upstream": {"nodes": {a.addr.to_string(): 1}}}),
    );
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(pki.ca_der()))
        .expect("root");
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(berth_net::tls::provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    // Every connection a full handshake: a resumed session shows the old certificate.
    config.resumption = rustls::client::Resumption::disabled();
    let config = Arc::new(config);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let get = |sni: &'static str| {
        let config = config.clone();
        rt.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            let name = rustls::pki_types::ServerName::try_from(sni).expect("name");
            let mut tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            let cn = tls
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| c[0].to_vec())
                .unwrap_or_default();
            tls.write_all(
                format!("GET /x HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .expect("write");
            let mut out = Vec::new();
            let _ = tls.read_to_end(&mut out).await;
            Ok::<_, String>((String::from_utf8_lossy(&out).into_owned(), cn))
        })
    };
    let (out, first) = get("api.test").expect("api.test is served");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"x-forwarded-proto\":\"https\""), "{out}");
    assert!(get("a.wild.test").is_ok(), "a wildcard SNI");
    assert!(
        get("other.test").is_err(),
        "no certificate for the name: no handshake"
    );
    // A new certificate applies to the next handshake.
    let (cert2, key2) = pki.issue_pem("second", &["api.test"]);
    put(
        &srv,
        "/ssls/1",
        json!({"cert": cert2, "key": key2, "snis": ["api.test"]}),
    );
    let (_, second) = get("api.test").expect("served");
    assert_ne!(first, second, "the new certificate is presented");
    assert!(
        get("a.wild.test").is_err(),
        "the wildcard went with the old certificate"
    );
}

/// Serves `body` as JSON to every request on a loopback port; returns the port.
fn serve_json(body: String) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn jwt_auth_verifies_tokens_against_their_consumer() {
    use base64::Engine;
    use jsonwebtoken::{encode, EncodingKey, Header};
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let srv = Server::start_with(&[WITH_GATEWAY]);
    let a = Upstream::start("a");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    // bob: ES256 with a PEM public key, audience and issuer checked.
    let bob_key = rcgen::KeyPair::generate().expect("key");
    // carol: ES256 from a JWKS document.
    let carol_key = rcgen::KeyPair::generate().expect("key");
    let point = carol_key.public_key_raw();
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "carol-1", "alg": "ES256",
        "x": b64(&point[1..33]), "y": b64(&point[33..65])}]});
    let jwks_port = serve_json(jwks.to_string());
    put(
        &srv,
        "/consumers/alice",
        json!({"username": "alice", "plugins": {"jwt-auth": {"key": "alice", "secret": "s3cret"}}}),
    );
    put(
        &srv,
        "/consumers/bob",
        json!({"username": "bob", "plugins": {"jwt-auth": {"key": "bob", "algorithm": "ES256",
        "public_key": bob_key.public_key_pem(), "audience": "api", "issuer": "idp"}}}),
    );
    put(
        &srv,
        "/consumers/carol",
        json!({"username": "carol", "plugins": {"jwt-auth": {"key": "carol", "algorithm": "ES256",
        "jwks_uri": format!("http://127.0.0.1:{jwks_port}/jwks")}}}),
    );
    let (code, out) = admin(
        &srv,
        "PUT",
        "/consumers/dave",
        &json!({"username": "dave", "plugins": {"jwt-auth": {"key": "dave", "algorithm": "RS256", "public_key": "nope"}}}),
    );
    assert_eq!(code, 400, "a public key that does not parse: {out}");
    put(
        &srv,
        "/routes/jwt",
        json!({"uri": "/jwt", "upstream": {"nodes": {a.addr.to_string(): 1}},
        "plugins": {"jwt-auth": {"hide_credentials": true}}}),
    );
    let hs = |claims: Value, secret: &str| {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign")
    };
    let es = |claims: Value, key: &rcgen::KeyPair, kid: Option<&str>| {
        let mut h = Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = kid.map(String::from);
        let pem = key.serialize_pem();
        encode(
            &h,
            &claims,
            &EncodingKey::from_ec_pem(pem.as_bytes()).expect("key"),
        )
        .expect("sign")
    };
    let call = |token: &str| {
        let bearer = format!("Bearer {token}");
        let (code, out, _) = via(&srv, "GET", "/jwt", &[("Authorization", bearer.as_str())]);
        (
            code,
            out.get("message")
                .and_then(Value::as_str)
                .map(String::from)
                .unwrap_or_default(),
        )
    };
    let (code, out, head) = via(&srv, "GET", "/jwt", &[]);
    assert_eq!(
        (code, out["message"].as_str()),
        (401, Some("Missing JWT token in request"))
    );
    assert!(header(&head, "www-authenticate").is_some());
    assert_eq!(call("not.a-token"), (401, "JWT token invalid".into()));
    let good = hs(json!({"key": "alice", "exp": now + 60}), "s3cret");
    assert_eq!(call(&good).0, 200);
    let (_, out, _) = via(
        &srv,
        "GET",
        "/jwt",
        &[("Authorization", &format!("Bearer {good}"))],
    );
    assert!(
        out["headers"].get("authorization").is_none(),
        "hide_credentials: {out}"
    );
    assert_eq!(
        call(&hs(json!({"key": "alice", "exp": now + 60}), "wrong")),
        (401, "failed to verify jwt".into())
    );
    assert_eq!(
        call(&hs(json!({"key": "alice", "exp": now - 120}), "s3cret")),
        (401, "failed to verify jwt".into())
    );
    assert_eq!(
        call(&hs(json!({"key": "alice", "nbf": now + 120}), "s3cret")),
        (401, "failed to verify jwt".into())
    );
    assert_eq!(
        call(&hs(json!({"exp": now + 60}), "s3cret")),
        (401, "missing user key in JWT token".into())
    );
    assert_eq!(
        call(&hs(json!({"key": "zed"}), "s3cret")),
        (401, "Invalid user key in JWT token".into())
    );
    // An HMAC token naming bob, signed with his public key as the secret: the classic
    // algorithm confusion is refused (bob's tokens must be ES256).
    assert_eq!(
        call(&hs(
            json!({"key": "bob", "aud": "api", "iss": "idp"}),
            &bob_key.public_key_pem()
        )),
        (401, "failed to verify jwt".into())
    );
    assert_eq!(
        call(&es(
            json!({"key": "bob", "aud": "api", "iss": "idp", "exp": now + 60}),
            &bob_key,
            None
        ))
        .0,
        200
    );
    assert_eq!(
        call(&es(
            json!({"key": "bob", "aud": "web", "iss": "idp"}),
            &bob_key,
            None
        ))
        .0,
        401,
        "wrong audience"
    );
    assert_eq!(
        call(&es(json!({"key": "bob", "aud": "api"}), &bob_key, None)).0,
        401,
        "no issuer"
    );
    assert_eq!(
        call(&es(
            json!({"key": "bob", "aud": "api", "iss": "idp"}),
            &carol_key,
            None
        ))
        .0,
        401,
        "another's key"
    );
    let carol = es(
        json!({"key": "carol", "exp": now + 60}),
        &carol_key,
        Some("carol-1"),
    );
    assert_eq!(call(&carol).0, 200, "verified by the JWKS document");
    let (code, out, _) = via(&srv, "GET", &format!("/jwt?jwt={carol}"), &[]);
    assert_eq!(
        (code, out["path"].as_str()),
        (200, Some(format!("/jwt?jwt={carol}").as_str()))
    );
    let cookie = format!("jwt={carol}");
    assert_eq!(
        via(&srv, "GET", "/jwt", &[("Cookie", cookie.as_str())]).0,
        200
    );
    assert_eq!(
        call(&es(
            json!({"key": "carol"}),
            &carol_key,
            Some("unknown-kid")
        ))
        .0,
        401
    );
}

#[test]
fn passive_checks_eject_failing_nodes_and_api_breaker_opens() {
    let srv = Server::start_with(&[WITH_GATEWAY]);
    let (good, bad) = (
        Upstream::start("good"),
        Upstream::start_answering("bad", 500),
    );
    put(
        &srv,
        "/upstreams/mixed",
        json!({"nodes": {good.addr.to_string(): 1, bad.addr.to_string(): 1},
        "checks": {"passive": {"unhealthy": {"http_statuses": [500], "http_failures": 2}}}}),
    );
    put(
        &srv,
        "/routes/mixed",
        json!({"uri": "/mixed", "upstream_id": "mixed"}),
    );
    let codes: Vec<u16> = (0..12).map(|_| via(&srv, "GET", "/mixed", &[]).0).collect();
    assert_eq!(
        codes.iter().filter(|c| **c == 500).count(),
        2,
        "two failures eject the node: {codes:?}"
    );
    assert!(codes[6..].iter().all(|c| *c == 200), "{codes:?}");
    let (_, metrics) = srv.http_get("/metrics");
    assert!(
        metrics.contains("upstream=\"upstreams/mixed\",outcome=\"ejected\"} 1"),
        "{metrics}"
    );
    let (code, out) = admin(
        &srv,
        "PUT",
        "/upstreams/active",
        &json!({"nodes": {good.addr.to_string(): 1}, "checks": {"active": {"type": "udp"}}}),
    );
    assert_eq!(
        code, 400,
        "an active check berth cannot run is refused: {out}"
    );

    put(
        &srv,
        "/routes/brk",
        json!({"uri": "/brk", "upstream": {"nodes": {bad.addr.to_string(): 1}},
        "plugins": {"api-breaker": {"break_response_code": 502, "break_response_body": "breaker open",
            "unhealthy": {"http_statuses": [500], "failures": 2}}}}),
    );
    assert_eq!(via(&srv, "GET", "/brk", &[]).0, 500);
    assert_eq!(via(&srv, "GET", "/brk", &[]).0, 500);
    let hits = bad.hits();
    let (code, out, _) = via(&srv, "GET", "/brk", &[]);
    assert_eq!((code, out.as_str()), (502, Some("breaker open")));
    assert_eq!(bad.hits(), hits, "an open breaker calls no node");
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(
        via(&srv, "GET", "/brk", &[]).0,
        500,
        "half-open after 2 s: the node is tried"
    );
}

#[test]
fn cli_routes_a_path_to_a_registered_service_in_three_commands() {
    use crate::consul_cli::{fails, json, ok};
    let srv = Server::start_with(&[WITH_GATEWAY]);
    let web = Upstream::start("web");
    let http = srv.http_addr.as_str();
    // The README's three commands.
    let port = web.addr.port().to_string();
    ok(
        http,
        &[
            "svc",
            "register",
            "web",
            "--address",
            "127.0.0.1",
            "--port",
            &port,
            "--ttl",
            "30s",
        ],
    );
    ok(http, &["check", "pass", "service:web"]);
    let said = ok(
        http,
        &[
            "route",
            "put",
            "web",
            "--uri",
            "/web/*",
            "--service-name",
            "web",
        ],
    );
    assert_eq!(said.trim(), "route web stored");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, out, _) = via(&srv, "GET", "/web/hello", &[]);
        if code == 200 {
            assert_eq!(out["name"], "web");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the route never served: {code} {out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, metrics) = srv.http_get("/metrics");
    assert!(
        metrics.contains("berth_gateway_requests_total{route=\"web\",code=\"2xx\"}"),
        "{metrics}"
    );

    // The other nouns and verbs, and every output format.
    ok(
        http,
        &[
            "upstream",
            "put",
            "u1",
            "--node",
            &format!("127.0.0.1:{port}=3"),
            "--type",
            "least_conn",
        ],
    );
    let up = json(&ok(http, &["upstream", "get", "u1", "-w", "json"]));
    assert_eq!(up["value"]["nodes"][format!("127.0.0.1:{port}")], 3);
    assert_eq!(up["value"]["type"], "least_conn");
    ok(http, &["api-service", "put", "s1", "--upstream-id", "u1"]);
    ok(
        http,
        &[
            "route",
            "put",
            "r2",
            "--uri",
            "/two",
            "--service-id",
            "s1",
            "--method",
            "GET",
            "--name",
            "two",
        ],
    );
    assert_eq!(via(&srv, "GET", "/two", &[]).0, 200);
    ok(http, &["api-consumer", "put", "jack", "--key-auth", "k1"]);
    ok(
        http,
        &[
            "route",
            "put",
            "r3",
            "--uri",
            "/three",
            "--upstream-id",
            "u1",
            "--json",
            r#"{"plugins":{"key-auth":{}}}"#,
        ],
    );
    assert_eq!(via(&srv, "GET", "/three", &[]).0, 401);
    assert_eq!(via(&srv, "GET", "/three", &[("apikey", "k1")]).0, 200);
    let table = ok(http, &["route", "ls", "-w", "table"]);
    assert!(table.contains("two") && table.contains("/web/*"), "{table}");
    let listed = json(&ok(http, &["route", "ls", "-w", "json"]));
    assert_eq!(listed["total"], 3);
    let err = fails(http, &["upstream", "rm", "u1"]);
    assert!(err.contains("still using it"), "{err}");
    ok(http, &["upstream", "rm", "u1", "--force"]);
    let err = fails(
        http,
        &[
            "route",
            "put",
            "bad",
            "--uri",
            "/b",
            "--upstream-id",
            "nope",
        ],
    );
    assert!(
        err.contains("failed to fetch upstream info by upstream id [nope]"),
        "{err}"
    );
    let err = fails(http, &["route", "get", "missing"]);
    assert!(
        err.contains("404") && err.contains("Key not found"),
        "{err}"
    );
    ok(http, &["route", "rm", "r3"]);
}

#[test]
fn a_change_on_one_member_serves_on_every_member_and_outlives_a_member() {
    let mut c = crate::harness::Cluster::start_with(3, &[WITH_GATEWAY]);
    let a = Upstream::start("a");
    let put_on = |m: &Server, path: &str, route: &Value| -> u16 {
        http_request(
            "PUT",
            &m.http_addr,
            &format!("/apisix/admin/routes/{path}"),
            &route.to_string(),
            &[],
        )
        .0
         .0
    };
    let route = json!({"uri": "/c", "upstream": {"nodes": {a.addr.to_string(): 1}}});
    assert_eq!(put_on(&c.members[0], "c", &route), 201);
    // Every member's gateway serves it, soon.
    for m in &c.members {
        let started = Instant::now();
        while http_request("GET", &m.gateway_addr, "/c", "", &[]).0 .0 != 200 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{} never served the route",
                m.gateway_addr
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // The leader dies: the others keep serving, and take changes.
    let leader = c.leader_by_metrics();
    c.members[leader].kill9();
    let alive: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let route = json!({"uri": "/after", "upstream": {"nodes": {a.addr.to_string(): 1}}});
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(put_on(&c.members[alive[0]], "after", &route), 200 | 201) {
        assert!(Instant::now() < deadline, "no write after the leader died");
        std::thread::sleep(Duration::from_millis(200));
    }
    let gw = &c.members[alive[1]].gateway_addr;
    eventually("the survivors serve the old and the new route", || {
        http_request("GET", gw, "/after", "", &[]).0 .0 == 200
            && http_request("GET", gw, "/c", "", &[]).0 .0 == 200
    });
}

/// A member down while routes change, and the others' log snapshotted and history compacted
/// past it; it comes back cut off from its peers, so its gateway serves what it had and
/// watches from there. Once the link is up it catches up by installing a snapshot, which
/// ends that watch: the gateway rebuilds from a full read and serves the changes, and a
/// route that never changed answers throughout (no gap while it rebuilds).
#[test]
fn a_gateway_watch_ended_by_a_snapshot_rebuilds_without_a_gap() {
    let mut c = crate::harness::NetCluster::start_with(3, &["--snapshot-count", "20"]);
    let up = Upstream::start_on("a", 200, &format!("{}:0", c.host_ip()));
    let nodes = json!({up.addr.to_string(): 1});
    let (m0, m1) = (
        c.members[0].http_addr.clone(),
        c.members[1].http_addr.clone(),
    );
    // Writes go through member 0 or 1 (member 2 is the one left behind), whichever takes them.
    let write = |method: &str, path: &str, body: &Value| {
        let text = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for http in [&m0, &m1] {
                let path = format!("/apisix/admin{path}");
                if listening(http)
                    && matches!(
                        http_request(method, http, &path, &text, &[]).0 .0,
                        200 | 201
                    )
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "{method} {path} never taken");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let route = |uri: &str| json!({"uri": uri, "upstream": {"nodes": nodes}});
    write("PUT", "/routes/stable", &route("/stable"));
    write("PUT", "/routes/old", &route("/old"));
    let gateway = c.members[2].gateway_addr.clone();
    // 0 while nothing listens (the member restarting).
    let code = |path: &str| {
        if listening(&gateway) {
            http_request("GET", &gateway, path, "", &[]).0 .0
        } else {
            0
        }
    };
    eventually("the member serves both routes", || {
        code("/stable") == 200 && code("/old") == 200
    });
    // The store reaches disk within a second (`store_flush`): what the member comes back with.
    std::thread::sleep(Duration::from_millis(1500));
    // Down (refused at once, so the leader's log is not held for it), it misses the changes:
    // enough entries for snapshots (every 20) to purge the log past it, then history
    // compacted up to now.
    c.members[2].kill9();
    write("PUT", "/routes/new", &route("/new"));
    write("DELETE", "/routes/old", &Value::Null);
    for i in 0..60 {
        write("PUT", &format!("/upstreams/u{i}"), &json!({"nodes": nodes}));
    }
    let endpoint = format!("http://{}", c.members[0].client_addr);
    let etcdctl = |args: &[&str]| {
        let (ok, out, err) = crate::harness::run(crate::harness::etcdctl(&endpoint).args(args));
        assert!(ok, "etcdctl {args:?}: {err}");
        out
    };
    let put: Value =
        serde_json::from_str(&etcdctl(&["put", "mark", "x", "-w", "json"])).expect("put JSON");
    let rev = put["header"]["revision"].as_u64().expect("revision");
    etcdctl(&["compact", &rev.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&c.members[0], "berth_raft_snapshots_built ") < 1.0
        || metric(&c.members[1], "berth_raft_snapshots_built ") < 1.0
    {
        assert!(Instant::now() < deadline, "no snapshots built");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Back, but cut off: it serves what it had.
    c.peer_link(2, false);
    c.members[2].start_again_no_wait();
    eventually("the member, back but cut off, serves what it had", || {
        code("/stable") == 200 && code("/old") == 200
    });
    // Requests to the route that never changes, all along from here.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let (gw, stop) = (gateway.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut codes = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                codes.push(http_request("GET", &gw, "/stable", "", &[]).0 .0);
                std::thread::sleep(Duration::from_millis(10));
            }
            codes
        })
    };
    c.peer_link(2, true);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(code("/new") == 200 && code("/old") == 404) {
        assert!(
            Instant::now() < deadline,
            "the member never served the changes"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let codes = hammer.join().expect("hammer");
    assert!(codes.len() > 5, "{} requests", codes.len());
    let failed: Vec<&u16> = codes.iter().filter(|c| **c != 200).collect();
    assert!(
        failed.is_empty(),
        "the unchanged route failed {failed:?} of {}",
        codes.len()
    );
    assert!(
        metric(&c.members[2], "berth_raft_snapshots_installed ") >= 1.0,
        "no snapshot installed"
    );
    assert!(
        metric(&c.members[2], "berth_gateway_watch_reloads_total ") >= 1.0,
        "the watch never rebuilt"
    );
}

/// Whether something accepts connections at `addr`.
fn listening(addr: &str) -> bool {
    std::net::TcpStream::connect(addr).is_ok()
}

/// A sample of `name` (with its trailing space, or its labels) in `srv`'s metrics; 0 when
/// absent.
fn metric(srv: &Server, name: &str) -> f64 {
    if !listening(&srv.http_addr) {
        return 0.0;
    }
    let (_, metrics) = srv.http_get("/metrics");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// Under berth's auth, the Admin API wants a berth token in `X-API-KEY` (or `?api_key=`), and
/// the user's permissions on the gateway's keyspace.
#[tokio::test(flavor = "multi_thread")]
async fn admin_api_takes_berth_tokens_under_auth() {
    let srv =
        tokio::task::spawn_blocking(|| Server::start_with(&["--bcrypt-cost", "4", WITH_GATEWAY]))
            .await
            .expect("server");
    let mut plain = srv.client().await;
    crate::auth::setup(&mut plain).await;
    let token = |user: &'static str, pw: &'static str| crate::auth::token(srv.endpoint(), user, pw);
    let (root, alice) = (token("root", "rootpw").await, token("alice", "apw").await);
    let http = srv.http_addr.clone();
    tokio::task::spawn_blocking(move || {
        let body = json!({"nodes": {"127.0.0.1:1": 1}}).to_string();
        let call = |headers: &[(&str, &str)], path: &str| {
            let ((code, out), _) = http_request("PUT", &http, path, &body, headers);
            (
                code,
                serde_json::from_str::<Value>(&out).unwrap_or(Value::Null),
            )
        };
        let (code, out) = call(&[], "/apisix/admin/upstreams/1");
        assert_eq!(
            (code, out),
            (
                401,
                json!({"error_msg": "failed to check token", "description": "missing apikey"})
            )
        );
        let (code, out) = call(&[("X-API-KEY", "forged")], "/apisix/admin/upstreams/1");
        assert_eq!(
            (code, out["description"].as_str()),
            (401, Some("wrong apikey"))
        );
        let (code, out) = call(
            &[("X-API-KEY", alice.as_str())],
            "/apisix/admin/upstreams/1",
        );
        assert_eq!(
            (code, out["description"].as_str()),
            (401, Some("permission denied")),
            "alice has no gateway grant"
        );
        let (code, out) = call(&[("X-API-KEY", root.as_str())], "/apisix/admin/upstreams/1");
        assert_eq!(code, 201, "{out}");
        let (code, _) = call(&[], &format!("/apisix/admin/upstreams/2?api_key={root}"));
        assert_eq!(code, 201, "the key as a query parameter");
        let ((code, out), _) = http_request("GET", &http, "/apisix/admin/upstreams", "", &[]);
        assert_eq!(code, 401, "reads need a token too: {out}");
        let ((code, out), _) = http_request(
            "GET",
            &http,
            "/apisix/admin/upstreams",
            "",
            &[("Cookie", &format!("X-API-KEY={root}"))],
        );
        assert_eq!(code, 200, "the key as a cookie: {out}");
        let out = crate::consul_cli::ok(&http, &["--token", &root, "upstream", "ls", "-w", "json"]);
        assert_eq!(crate::consul_cli::json(&out)["total"], 2);
    })
    .await
    .expect("checks");
}

#[test]
fn access_log_writes_a_json_line_per_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("access.log");
    let srv = Server::start_with(&[
        WITH_GATEWAY,
        "--gateway-access-log",
        path.to_str().expect("path"),
        "--gateway-access-log-fields",
        "method,path,status,route,upstream,node,consumer,upstream_ms,traceparent",
    ]);
    let a = Upstream::start("a");
    put(
        &srv,
        "/consumers/jack",
        json!({"username": "jack", "plugins": {"key-auth": {"key": "k1"}}}),
    );
    put(
        &srv,
        "/routes/logged",
        json!({"uri": "/logged", "plugins": {"key-auth": {}},
        "upstream": {"nodes": {a.addr.to_string(): 1}}}),
    );
    assert_eq!(via(&srv, "GET", "/logged", &[("apikey", "k1")]).0, 200);
    assert_eq!(via(&srv, "GET", "/nowhere", &[]).0, 404);
    let mut lines = Vec::new();
    eventually("two access log lines", || {
        lines = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
            .collect();
        lines.len() == 2
    });
    let first = &lines[0];
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/logged");
    assert_eq!(first["status"], 200);
    assert_eq!(first["route"], "logged");
    assert_eq!(first["upstream"], "routes/logged");
    assert_eq!(first["node"], a.addr.to_string());
    assert_eq!(first["consumer"], "jack");
    assert!(first["upstream_ms"].as_f64().is_some_and(|ms| ms >= 0.0));
    assert!(first["traceparent"]
        .as_str()
        .is_some_and(|t| t.starts_with("00-")));
    assert_eq!(
        (lines[1]["status"].clone(), lines[1]["route"].clone()),
        (json!(404), Value::Null)
    );
    let (ok, _, err) = crate::harness::run(
        std::process::Command::new(crate::harness::berth_bin()).args([
            "server",
            "--data-dir",
            dir.path().join("d").to_str().expect("path"),
            "--gateway-access-log",
            "-",
            "--gateway-access-log-fields",
            "status,bogus",
        ]),
    );
    assert!(
        !ok && err.contains("bogus"),
        "an unknown field is refused: {err}"
    );
}

/// Sends `n` GETs of `path` to each gateway at once (one thread per gateway); the statuses.
fn hammer(gateways: &[String], path: &str, n: usize) -> Vec<u16> {
    let threads: Vec<_> = gateways
        .iter()
        .map(|gw| {
            let (gw, path) = (gw.clone(), path.to_string());
            std::thread::spawn(move || {
                (0..n)
                    .map(|_| http_request("GET", &gw, &path, "", &[]).0 .0)
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("a hammer thread"))
        .collect()
}

fn count(codes: &[u16], code: u16) -> usize {
    codes.iter().filter(|c| **c == code).count()
}

/// `limit-count` with policy `cluster` admits `count` per window across three members (the
/// leader keeps the count, members take shares); `local` admits `count` on each. A leader
/// change may admit one more `count` in the window (the stated bound); without a quorum the
/// route answers 500, unless `allow_degradation` lets requests pass.
#[test]
fn cluster_limit_count_holds_across_members() {
    let mut c = crate::harness::Cluster::start_with(3, &[WITH_GATEWAY]);
    let a = Upstream::start("a");
    let nodes = json!({"nodes": {a.addr.to_string(): 1}});
    let limited = |count: u64, policy: &str, degrade: bool| {
        json!({"limit-count": {"count": count, "time_window": 600, "policy": policy,
            "rejected_code": 429, "allow_degradation": degrade}})
    };
    let first = &c.members[0];
    put(
        first,
        "/routes/cl",
        json!({"uri": "/cl", "upstream": nodes, "plugins": limited(30, "cluster", false)}),
    );
    put(
        first,
        "/routes/lo",
        json!({"uri": "/lo", "upstream": nodes, "plugins": limited(10, "local", false)}),
    );
    put(
        first,
        "/routes/cl3",
        json!({"uri": "/cl3", "upstream": nodes, "plugins": limited(20, "cluster", false)}),
    );
    put(
        first,
        "/routes/cl2",
        json!({"uri": "/cl2", "upstream": nodes, "plugins": limited(100_000, "cluster", false)}),
    );
    put(
        first,
        "/routes/deg",
        json!({"uri": "/deg", "upstream": nodes, "plugins": limited(100_000, "cluster", true)}),
    );
    put(
        first,
        "/routes/probe",
        json!({"uri": "/probe", "upstream": nodes}),
    );
    let gateways: Vec<String> = c.members.iter().map(|m| m.gateway_addr.clone()).collect();
    for gw in &gateways {
        eventually("every member serves the routes", || {
            http_request("GET", gw, "/probe", "", &[]).0 .0 == 200
        });
    }
    let before = a.hits.load(Ordering::SeqCst);
    let codes = hammer(&gateways, "/cl", 40);
    assert_eq!(
        (count(&codes, 200), count(&codes, 429)),
        (30, 90),
        "cluster: exactly the count across members: {codes:?}"
    );
    assert_eq!(
        a.hits.load(Ordering::SeqCst) - before,
        30,
        "refused requests reach no node"
    );
    let codes = hammer(&gateways, "/lo", 20);
    assert_eq!(
        (count(&codes, 200), count(&codes, 429)),
        (30, 30),
        "local: the count on each member: {codes:?}"
    );

    // A key counted only at the leader: the leader spends its whole count itself.
    let leader = c.leader_by_metrics();
    let codes = hammer(&gateways[leader..=leader], "/cl3", 30);
    assert_eq!(
        (count(&codes, 200), count(&codes, 429)),
        (20, 10),
        "{codes:?}"
    );

    // The leader dies mid-window.
    c.members[leader].kill9();
    let alive: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let survivors: Vec<String> = alive.iter().map(|i| gateways[*i].clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let probe = json!({"uri": "/probe2", "upstream": nodes});
    loop {
        let (code, _) = admin(&c.members[alive[0]], "PUT", "/routes/probe2", &probe);
        if matches!(code, 200 | 201) {
            break;
        }
        assert!(Instant::now() < deadline, "no leader after the kill");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every member learnt that /cl's window is spent: they keep refusing until it ends, the
    // new leader too.
    let codes = hammer(&survivors, "/cl", 20);
    assert_eq!(count(&codes, 429), 40, "{codes:?}");
    // /cl3's count was all at the dead leader; the next leader counts afresh: at most one
    // more count in the window (the stated bound: 2 × 20 here).
    let codes = hammer(&survivors, "/cl3", 20);
    assert!(
        codes.iter().all(|c| matches!(c, 200 | 429)) && count(&codes, 200) <= 20,
        "within one more count per leader change: {codes:?}"
    );

    // No quorum: no leader to count, so 500 unless the route degrades.
    let last = alive[1];
    c.members[alive[0]].kill9();
    let gw = &gateways[last];
    eventually("without a quorum, a counted route answers 500", || {
        let ((code, body), _) = http_request("GET", gw, "/cl2", "", &[]);
        code == 500 && body.contains("failed to limit count")
    });
    assert_eq!(
        http_request("GET", gw, "/deg", "", &[]).0 .0,
        200,
        "allow_degradation lets it pass"
    );
}

/// `checks.active`: each member probes the nodes itself; a node whose probes fail (by status,
/// or refused connections) gets no traffic until enough probes pass again; with every node
/// out, traffic goes to them all.
#[test]
fn active_checks_take_failing_nodes_out_and_bring_them_back() {
    let srv = Server::start_with(&[WITH_GATEWAY]);
    let good = Upstream::start("good");
    let failing = Upstream::start_answering("failing", 500);
    // A node that is not listening yet.
    let later_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let nodes = json!({
        good.addr.to_string(): 1, failing.addr.to_string(): 1, later_addr.to_string(): 1
    });
    put(
        &srv,
        "/upstreams/checked",
        json!({"nodes": nodes, "checks": {"active": {"http_path": "/health",
            "healthy": {"interval": 1, "successes": 1},
            "unhealthy": {"interval": 1, "http_failures": 1, "tcp_failures": 1}}}}),
    );
    put(
        &srv,
        "/routes/checked",
        json!({"uri": "/checked", "upstream_id": "checked"}),
    );
    eventually("probes take the failing and the silent node out", || {
        (0..6).all(|_| via(&srv, "GET", "/checked", &[]).0 == 200)
    });
    let failing_hits = failing.hits();
    let codes: Vec<u16> = (0..30)
        .map(|_| via(&srv, "GET", "/checked", &[]).0)
        .collect();
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");
    // Only probes reach the failing node now (one a second).
    assert!(
        failing.hits() - failing_hits <= 3,
        "requests went to a node that is out"
    );
    let (_, metrics) = srv.http_get("/metrics");
    assert!(
        metrics.contains("upstream=\"upstreams/checked\",outcome=\"check_down\""),
        "{metrics}"
    );
    // The silent node comes up: probes bring it back, and it takes traffic again.
    let later = Upstream::start_on("later", 200, &later_addr.to_string());
    eventually("the node that came up takes traffic", || {
        (0..6).any(|_| via(&srv, "GET", "/checked", &[]).1["name"] == "later")
    });
    assert!(later.hits() > 0);

    // Every node out: traffic goes to them all rather than nowhere.
    put(
        &srv,
        "/upstreams/all-out",
        json!({"nodes": {failing.addr.to_string(): 1}, "checks": {"active": {
            "unhealthy": {"interval": 1, "http_failures": 1}}}}),
    );
    put(
        &srv,
        "/routes/all-out",
        json!({"uri": "/all-out", "upstream_id": "all-out"}),
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        via(&srv, "GET", "/all-out", &[]).0,
        500,
        "the node's own answer"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_to_nodes_names_the_host_verifies_and_shows_client_certificates() {
    use crate::tls::{client, path, Pki};
    let pki = Pki::new("nodes");
    let (cert, key) = pki.issue("node", "node", false);
    let (client_cert, client_key) = pki.issue("gateway", "gateway", false);
    let ca = pki.ca_file();
    let http_port = crate::harness::free_port();
    // The node: berth itself, its etcd API and HTTP listener over TLS, client certificates
    // required (its certificate names 127.0.0.1 and localhost).
    let node_args = [
        "--cert-file".to_string(),
        path(&cert).to_string(),
        "--key-file".to_string(),
        path(&key).to_string(),
        "--trusted-ca-file".to_string(),
        path(&ca).to_string(),
        "--client-cert-auth".to_string(),
        "--listen-http-urls".to_string(),
        format!("https://127.0.0.1:{http_port}"),
    ];
    let tls_client = client(&ca, Some((&client_cert, &client_key)));
    let node = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = node_args.iter().map(String::as_str).collect();
        Server::start_tls(&args, tls_client)
    })
    .await
    .expect("node");
    let ca_arg = path(&ca).to_string();
    let srv = tokio::task::spawn_blocking(move || {
        Server::start_with(&[WITH_GATEWAY, "--check-ca-file", &ca_arg])
    })
    .await
    .expect("gateway");
    let pem = |p: &std::path::Path| std::fs::read_to_string(p).expect("pem");
    let (cpem, kpem) = (pem(&client_cert), pem(&client_key));
    let https_node = format!("127.0.0.1:{http_port}");
    let route = |tls: Value, host: &str| {
        json!({"uri": "/v1/status/leader", "upstream": {"scheme": "https", "tls": tls,
            "pass_host": "rewrite", "upstream_host": host, "nodes": {https_node.clone(): 1}}})
    };
    let leader = |srv: &Server| {
        let (code, out, _) = via(srv, "GET", "/v1/status/leader", &[]);
        (code, out)
    };
    // Verified under the name the node gets, with a client certificate: through.
    put(
        &srv,
        "/routes/h",
        route(
            json!({"verify": true, "client_cert": cpem, "client_key": kpem}),
            "localhost",
        ),
    );
    for _ in 0..3 {
        let (code, out) = leader(&srv);
        assert_eq!(code, 200, "{out}");
        assert!(out.as_str().is_some_and(|s| !s.is_empty()), "{out}");
    }
    // A name the certificate does not hold: refused when verifying, passed when not.
    put(
        &srv,
        "/routes/h",
        route(
            json!({"verify": true, "client_cert": cpem, "client_key": kpem}),
            "other.test",
        ),
    );
    let (code, out) = leader(&srv);
    assert_eq!(code, 502, "{out}");
    assert!(out.to_string().contains("certificate"), "{out}");
    put(
        &srv,
        "/routes/h",
        route(
            json!({"client_cert": cpem, "client_key": kpem}),
            "other.test",
        ),
    );
    assert_eq!(leader(&srv).0, 200, "APISIX's default: not verified");
    // No client certificate: the node refuses.
    put(
        &srv,
        "/routes/h",
        route(json!({"verify": true}), "localhost"),
    );
    assert_eq!(leader(&srv).0, 502);
    // The client certificate as an ssl of type client, by ID.
    put(
        &srv,
        "/ssls/gw",
        json!({"type": "client", "cert": cpem, "key": kpem}),
    );
    put(
        &srv,
        "/routes/h",
        route(json!({"verify": true, "client_cert_id": "gw"}), "localhost"),
    );
    assert_eq!(leader(&srv).0, 200);
    let (code, out) = admin(&srv, "DELETE", "/ssls/gw", &Value::Null);
    assert_eq!(code, 400, "in use: {out}");
    // Bad certificates are refused at write time, and nothing is written.
    let bad = [
        json!({"client_cert": cpem}),
        json!({"client_cert": "junk", "client_key": kpem}),
        json!({"client_cert": cpem, "client_key": pem(&key)}),
        json!({"client_cert_id": "missing"}),
        json!({"client_cert_id": "gw", "client_cert": cpem, "client_key": kpem}),
        json!({"verify": "yes"}),
    ];
    for tls in bad {
        let (code, out) = admin(&srv, "PUT", "/routes/h", &route(tls.clone(), "localhost"));
        assert!(code == 400 || code == 404, "{tls}: {code} {out}");
    }
    assert_eq!(leader(&srv).0, 200, "the last good route still serves");
    // gRPC over TLS: the node's etcd API, verified, with the client certificate.
    put(
        &srv,
        "/routes/g",
        json!({"uri": "/etcdserverpb.*", "upstream": {"scheme": "grpcs", "pass_host": "node",
            "tls": {"verify": true, "client_cert_id": "gw"},
            "nodes": {node.client_addr.clone(): 1}}}),
    );
    let mut c = etcd_client::Client::connect([srv.gateway_addr.clone()], None)
        .await
        .expect("connect through the gateway");
    c.put("k", "over grpcs", None)
        .await
        .expect("put through the gateway");
    let got = c.get("k", None).await.expect("get through the gateway");
    assert_eq!(got.kvs()[0].value(), b"over grpcs");
    // Without the client certificate the node refuses, and the error comes back.
    put(
        &srv,
        "/routes/g",
        json!({"uri": "/etcdserverpb.*", "upstream": {"scheme": "grpcs", "pass_host": "node",
            "nodes": {node.client_addr.clone(): 1}}}),
    );
    let mut fresh = etcd_client::Client::connect([srv.gateway_addr.clone()], None)
        .await
        .expect("connect through the gateway");
    assert!(fresh.get("k", None).await.is_err());
    // grpcs active checks show the upstream's client certificate and ask for the check's
    // `host`: under a name the node's certificate holds, the node stays in; under one it
    // lacks, the check fails.
    let downs = |label: &str| {
        let (_, metrics) = srv.http_get("/metrics");
        let needle = format!("upstream=\"{label}\",outcome=\"check_down\"");
        metrics
            .lines()
            .find(|l| l.contains(&needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let checked = |id: &str, host: &str| {
        json!({"uri": format!("/{id}/*"), "upstream": {"scheme": "grpcs",
            "tls": {"verify": true, "client_cert_id": "gw"},
            "nodes": {node.client_addr.clone(): 1},
            "checks": {"active": {"type": "grpcs", "host": host,
                "healthy": {"interval": 1, "successes": 1},
                "unhealthy": {"interval": 1, "tcp_failures": 1, "http_failures": 1}}}}})
    };
    put(&srv, "/routes/c1", checked("c1", "localhost"));
    put(&srv, "/routes/c2", checked("c2", "other.test"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while downs("routes/c2") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "a check under a name the certificate lacks never failed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        downs("routes/c1"),
        0.0,
        "a check with the client certificate under the right name passes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_active_checks_take_a_dead_node_out() {
    let srv = tokio::task::spawn_blocking(|| Server::start_with(&[WITH_GATEWAY]))
        .await
        .expect("server");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    // berth's own etcd API answers grpc.health.v1; the other node is not there.
    put(
        &srv,
        "/routes/g",
        json!({"uri": "/*", "upstream": {"scheme": "grpc",
            "nodes": {srv.client_addr.clone(): 1, dead.clone(): 1},
            "checks": {"active": {"type": "grpc",
                "healthy": {"interval": 1, "successes": 1},
                "unhealthy": {"interval": 1, "tcp_failures": 1}}}}}),
    );
    let mut c = etcd_client::Client::connect([srv.gateway_addr.clone()], None)
        .await
        .expect("connect through the gateway");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut ok = true;
        for i in 0..6 {
            ok &= c.put(format!("k{i}"), "v", None).await.is_ok();
        }
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead node was never taken out"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..30 {
        c.put(format!("k{i}"), "v", None)
            .await
            .expect("only the live node is picked");
    }
    let (_, metrics) = srv.http_get("/metrics");
    assert!(
        metrics.contains("upstream=\"routes/g\",outcome=\"check_down\""),
        "{metrics}"
    );
    // A service the node does not know fails its check: both nodes are out, and traffic
    // goes to them all rather than nowhere.
    let (code, out) = admin(
        &srv,
        "PUT",
        "/routes/g",
        &json!({"uri": "/*", "upstream": {"scheme": "grpc",
            "nodes": {srv.client_addr.clone(): 1},
            "checks": {"active": {"type": "grpc", "grpc_service": "no.such.Service",
                "unhealthy": {"interval": 1, "http_failures": 1}}}}}),
    );
    assert_eq!(code, 200, "{out}");
    let downs = |metrics: &str| {
        metrics
            .lines()
            .find(|l| l.contains("upstream=\"routes/g\",outcome=\"check_down\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = downs(&metrics);
    let deadline = Instant::now() + Duration::from_secs(10);
    while downs(&srv.http_get("/metrics").1) <= before {
        assert!(
            Instant::now() < deadline,
            "the unknown service never failed its check"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.put("after", "v", None)
        .await
        .expect("a node out still gets traffic when every node is out");
    // grpc_service goes with the gRPC types only.
    let (code, _) = admin(
        &srv,
        "PUT",
        "/routes/h",
        &json!({"uri": "/h", "upstream": {"nodes": {dead: 1},
            "checks": {"active": {"type": "http", "grpc_service": "x"}}}}),
    );
    assert_eq!(code, 400);
}

#[test]
fn a_total_timeout_bounds_the_whole_exchange() {
    let srv = Server::start_with(&[WITH_GATEWAY]);
    let slow = Upstream::start("slow");
    // Each attempt may take 5 s to answer; the route allows 1 s in all.
    put(
        &srv,
        "/routes/t",
        json!({"uri": "/slow", "timeout": {"connect": 1, "send": 1, "read": 5, "total": 1},
            "upstream": {"nodes": {slow.addr.to_string(): 1}}}),
    );
    let started = Instant::now();
    let (code, out, _) = via(&srv, "GET", "/slow", &[]);
    assert_eq!(code, 504, "{out}");
    assert!(out.to_string().contains("total timeout"), "{out}");
    assert!(started.elapsed() < Duration::from_millis(2500));
    let (code, _) = admin(
        &srv,
        "PUT",
        "/routes/t",
        &json!({"uri": "/slow", "timeout": {"connect": 1, "send": 1, "read": 5, "total": -1},
            "upstream": {"nodes": {slow.addr.to_string(): 1}}}),
    );
    assert_eq!(code, 400);
    // Without it, the read timeout alone applies: the slow answer comes (3 s).
    put(
        &srv,
        "/routes/t",
        json!({"uri": "/slow", "timeout": {"connect": 1, "send": 1, "read": 5},
            "upstream": {"nodes": {slow.addr.to_string(): 1}}}),
    );
    assert_eq!(via(&srv, "GET", "/slow", &[]).0, 200);
}

#[test]
fn balancers_pick_by_hash_by_load_and_by_latency() {
    let srv = Server::start_with(&[WITH_GATEWAY]);
    let (a, b, c) = (
        Upstream::start("a"),
        Upstream::start("b"),
        Upstream::start("c"),
    );
    let nodes = json!({a.addr.to_string(): 1, b.addr.to_string(): 1, c.addr.to_string(): 1});
    let name = |out: &Value| out["name"].as_str().unwrap_or_default().to_string();
    // chash on a header: one user, one node, every time; users spread over the nodes.
    put(
        &srv,
        "/routes/hash",
        json!({"uri": "/hash", "upstream": {"type": "chash", "hash_on": "header",
            "key": "x-user", "nodes": nodes}}),
    );
    let mut seen = std::collections::BTreeSet::new();
    for user in 0..12 {
        let u = format!("user-{user}");
        let first = name(&via(&srv, "GET", "/hash", &[("x-user", &u)]).1);
        for _ in 0..3 {
            assert_eq!(
                name(&via(&srv, "GET", "/hash", &[("x-user", &u)]).1),
                first,
                "{u} moved"
            );
        }
        seen.insert(first);
    }
    assert!(seen.len() >= 2, "12 users all on {seen:?}");
    // chash on a cookie, and on the client's address (one client here: one node).
    put(
        &srv,
        "/routes/cookie",
        json!({"uri": "/cookie", "upstream": {"type": "chash", "hash_on": "cookie",
            "key": "sid", "nodes": nodes}}),
    );
    let first = name(&via(&srv, "GET", "/cookie", &[("cookie", "a=1; sid=s42")]).1);
    for _ in 0..5 {
        let out = via(&srv, "GET", "/cookie", &[("cookie", "sid=s42")]).1;
        assert_eq!(name(&out), first);
    }
    put(
        &srv,
        "/routes/ip",
        json!({"uri": "/ip", "upstream": {"type": "chash", "key": "remote_addr",
            "nodes": nodes}}),
    );
    let by_ip: std::collections::BTreeSet<String> = (0..9)
        .map(|_| name(&via(&srv, "GET", "/ip", &[]).1))
        .collect();
    assert_eq!(by_ip.len(), 1, "{by_ip:?}");

    // least_conn: while one node holds a slow request, the others take the rest.
    let (d, e) = (Upstream::start("d"), Upstream::start("e"));
    put(
        &srv,
        "/routes/least",
        json!({"uri": "/*", "upstream": {"type": "least_conn",
            "nodes": {d.addr.to_string(): 1, e.addr.to_string(): 1}}}),
    );
    let gateway = srv.gateway_addr.clone();
    let slow = std::thread::spawn(move || {
        let ((code, out), _) = http_request("GET", &gateway, "/slow", "", &[]);
        (code, out)
    });
    eventually("the slow request is at a node", || d.hits() + e.hits() == 1);
    let busy = if d.hits() == 1 { "d" } else { "e" };
    for _ in 0..10 {
        let out = via(&srv, "GET", "/fast", &[]).1;
        assert_ne!(name(&out), busy, "a request went to the busy node");
    }
    let (code, _) = slow.join().expect("slow request");
    assert_eq!(code, 200);

    // ewma: the node that answers in 150 ms gets few requests once both are measured.
    let quick = Upstream::start("quick");
    let lagging = Upstream::start_slowed("lagging", Duration::from_millis(150));
    put(
        &srv,
        "/routes/ewma",
        json!({"uri": "/ewma", "upstream": {"type": "ewma",
            "nodes": {quick.addr.to_string(): 1, lagging.addr.to_string(): 1}}}),
    );
    for _ in 0..6 {
        via(&srv, "GET", "/ewma", &[]);
    }
    let before = lagging.hits();
    for _ in 0..40 {
        assert_eq!(via(&srv, "GET", "/ewma", &[]).0, 200);
    }
    let to_lagging = lagging.hits() - before;
    assert!(
        to_lagging <= 4,
        "{to_lagging} of 40 requests went to the slow node"
    );
}

#[test]
fn rewrites_fill_in_request_variables() {
    let srv = Server::start_with(&[WITH_GATEWAY]);
    let a = Upstream::start("a");
    put(
        &srv,
        "/routes/v",
        json!({"uri": "/vars/*", "upstream": {"nodes": {a.addr.to_string(): 1}},
            "plugins": {
                "proxy-rewrite": {"uri": "/users/$arg_id/${http_x_team}",
                    "headers": {"set": {"X-From": "$remote_addr", "X-Path": "$uri",
                        "X-Fixed": "\\$5"}}},
                "response-rewrite": {"headers": {"set": {"X-Echo-User": "$http_x_user"}}}}}),
    );
    let (code, out, head) = via(
        &srv,
        "GET",
        "/vars/a?id=42",
        &[("x-team", "blue sky"), ("x-user", "ann")],
    );
    assert_eq!(code, 200, "{out}");
    // The request's query follows the new path, as APISIX appends it.
    assert_eq!(out["path"], "/users/42/blue%20sky?id=42");
    assert_eq!(out["headers"]["x-from"], "127.0.0.1");
    assert_eq!(out["headers"]["x-path"], "/vars/a");
    assert_eq!(out["headers"]["x-fixed"], "$5");
    assert_eq!(header(&head, "x-echo-user"), Some("ann"));
    // A `?` in a value is data, not a query.
    let (_, out, _) = via(
        &srv,
        "GET",
        "/vars/a?id=1%3Fadmin=true",
        &[("x-team", "x?admin=true")],
    );
    assert_eq!(
        out["path"],
        "/users/1%3Fadmin=true/x%3Fadmin=true?id=1%3Fadmin=true"
    );
    // A variable the request lacks is empty.
    let (_, out, head) = via(&srv, "GET", "/vars/b", &[]);
    assert_eq!(out["path"], "/users//");
    assert_eq!(header(&head, "x-echo-user"), Some(""));
}

#[test]
fn plugin_configs_global_rules_and_consumer_groups() {
    let srv = Server::start_with(&[WITH_GATEWAY]);
    let a = Upstream::start("a");
    let up = json!({"nodes": {a.addr.to_string(): 1}});
    let set_header =
        |name: &str, value: &str| json!({"response-rewrite": {"headers": {"set": {name: value}}}});
    // A plugin config: routes naming it take its plugins where they have none.
    put(
        &srv,
        "/plugin_configs/pc",
        json!({"desc": "shared", "plugins": set_header("X-Config", "one")}),
    );
    put(
        &srv,
        "/routes/pc",
        json!({"uri": "/pc", "plugin_config_id": "pc", "upstream": up}),
    );
    put(
        &srv,
        "/routes/own",
        json!({"uri": "/own", "plugin_config_id": "pc", "upstream": up,
            "plugins": set_header("X-Route", "own")}),
    );
    let (code, _, head) = via(&srv, "GET", "/pc", &[]);
    assert_eq!(code, 200);
    assert_eq!(header(&head, "x-config"), Some("one"));
    let (_, _, head) = via(&srv, "GET", "/own", &[]);
    assert_eq!(
        header(&head, "x-route"),
        Some("own"),
        "the route's own wins"
    );
    assert_eq!(header(&head, "x-config"), None);
    put(
        &srv,
        "/plugin_configs/pc",
        json!({"plugins": set_header("X-Config", "two")}),
    );
    assert_eq!(
        header(&via(&srv, "GET", "/pc", &[]).2, "x-config"),
        Some("two")
    );
    let (code, out) = admin(&srv, "DELETE", "/plugin_configs/pc", &Value::Null);
    assert_eq!(code, 400, "in use: {out}");
    let (code, _) = admin(
        &srv,
        "PUT",
        "/routes/bad",
        &json!({"uri": "/bad", "plugin_config_id": "missing", "upstream": up}),
    );
    assert!(code == 400 || code == 404, "{code}");
    let (code, _) = admin(&srv, "POST", "/plugin_configs", &json!({"plugins": {}}));
    assert_eq!(code, 405);
    let (code, _) = admin(
        &srv,
        "PUT",
        "/plugin_configs/x",
        &json!({"plugins": {"no-such-plugin": {}}}),
    );
    assert_eq!(code, 400);

    // A global rule: its limit counts every request, matched or not, on its own.
    put(
        &srv,
        "/global_rules/g",
        json!({"plugins": {"limit-count": {"count": 3, "time_window": 60, "rejected_code": 429},
            "response-rewrite": {"headers": {"set": {"X-Global": "yes"}}}}}),
    );
    let (code, _, head) = via(&srv, "GET", "/pc", &[]);
    assert_eq!(code, 200);
    assert_eq!(
        header(&head, "x-global"),
        None,
        "the route's response-rewrite wins"
    );
    assert_eq!(via(&srv, "GET", "/nowhere", &[]).0, 404);
    let (code, _, head) = via(&srv, "GET", "/own", &[]);
    assert_eq!(code, 200);
    assert_eq!(header(&head, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(via(&srv, "GET", "/pc", &[]).0, 429, "the fourth request");
    assert_eq!(via(&srv, "GET", "/nowhere", &[]).0, 429);
    let (code, _) = admin(&srv, "DELETE", "/global_rules/g", &Value::Null);
    assert_eq!(code, 200);
    assert_eq!(via(&srv, "GET", "/pc", &[]).0, 200);
    put(
        &srv,
        "/global_rules/deny",
        json!({"plugins": {"ip-restriction": {"blacklist": ["127.0.0.0/8"]}}}),
    );
    assert_eq!(via(&srv, "GET", "/pc", &[]).0, 403);
    assert_eq!(via(&srv, "GET", "/nowhere", &[]).0, 403);
    admin(&srv, "DELETE", "/global_rules/deny", &Value::Null);
    assert_eq!(via(&srv, "GET", "/pc", &[]).0, 200);

    // A consumer group: its consumers share its limit.
    put(
        &srv,
        "/consumer_groups/gold",
        json!({"plugins": {"limit-count": {"count": 2, "time_window": 60, "rejected_code": 429}}}),
    );
    for name in ["jack1", "jack2"] {
        put(
            &srv,
            &format!("/consumers/{name}"),
            json!({"username": name, "group_id": "gold",
                "plugins": {"key-auth": {"key": format!("key-{name}")}}}),
        );
    }
    put(
        &srv,
        "/routes/auth",
        json!({"uri": "/auth", "upstream": up, "plugins": {"key-auth": {}}}),
    );
    assert_eq!(via(&srv, "GET", "/auth", &[("apikey", "key-jack1")]).0, 200);
    assert_eq!(via(&srv, "GET", "/auth", &[("apikey", "key-jack2")]).0, 200);
    assert_eq!(
        via(&srv, "GET", "/auth", &[("apikey", "key-jack1")]).0,
        429,
        "the group's count is shared"
    );
    let (code, out) = admin(&srv, "DELETE", "/consumer_groups/gold", &Value::Null);
    assert_eq!(code, 400, "in use: {out}");
    let (code, _) = admin(
        &srv,
        "PUT",
        "/consumers/jill",
        &json!({"username": "jill", "group_id": "missing"}),
    );
    assert!(code == 400 || code == 404, "{code}");
    let (code, out) = admin(
        &srv,
        "PUT",
        "/consumer_groups/creds",
        &json!({"plugins": {"key-auth": {"key": "k"}}}),
    );
    assert_eq!(code, 400, "{out}");

    // The CLI, for each of the three.
    use crate::consul_cli::ok;
    let http = srv.http_addr.as_str();
    let said = ok(
        http,
        &[
            "global-rule",
            "put",
            "cli",
            "--plugins",
            r#"{"response-rewrite": {"headers": {"set": {"X-Cli": "1"}}}}"#,
        ],
    );
    assert_eq!(said.trim(), "global rule cli stored");
    put(
        &srv,
        "/routes/plain",
        json!({"uri": "/plain", "upstream": up}),
    );
    assert_eq!(
        header(&via(&srv, "GET", "/plain", &[]).2, "x-cli"),
        Some("1")
    );
    assert!(ok(http, &["global-rule", "ls"]).contains("cli"));
    assert!(ok(http, &["plugin-config", "ls"]).contains("pc"));
    assert!(ok(http, &["consumer-group", "get", "gold"]).contains("limit-count"));
    assert_eq!(
        ok(http, &["global-rule", "rm", "cli"]).trim(),
        "global rule cli deleted"
    );
}

#[test]
fn streamed_bodies_are_held_to_client_control_past_the_read_ahead() {
    let srv = Server::start_with(&[WITH_GATEWAY]);
    let a = Upstream::start("a");
    // 100 KiB: more than the 64 KiB read ahead, so a chunked body past it streams.
    put(
        &srv,
        "/routes/up",
        json!({"uri": "/upload", "upstream": {"nodes": {a.addr.to_string(): 1}},
            "plugins": {"client-control": {"max_body_size": 102400}}}),
    );
    let chunked = |kib: usize| {
        let chunk = "x".repeat(1024);
        let mut req = String::from(
            "POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        );
        for _ in 0..kib {
            req.push_str(&format!("400\r\n{chunk}\r\n"));
        }
        req.push_str("0\r\n\r\n");
        // Written by a thread of its own while the answer is read: a gateway that answers
        // early must not wait for the rest of the upload to be read.
        let mut s = std::net::TcpStream::connect(&srv.gateway_addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut w = s.try_clone().expect("clone");
        let writer = std::thread::spawn(move || {
            let _ = w.write_all(req.as_bytes());
        });
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        let _ = writer.join();
        String::from_utf8_lossy(&out).into_owned()
    };
    let fits = chunked(90);
    assert!(
        fits.starts_with("HTTP/1.1 200"),
        "{}",
        &fits[..fits.len().min(200)]
    );
    assert!(
        fits.contains(&"x".repeat(1024)),
        "the body reached the node"
    );
    let over = chunked(110);
    assert!(
        over.starts_with("HTTP/1.1 413"),
        "{}",
        &over[..over.len().min(300)]
    );
    assert!(over.contains("larger than 102400 bytes"), "{over}");
}

/// A client that sends its whole upload before reading (as most do) reads the 413, not a
/// reset: the gateway reads and drops the rest of a refused body before it closes (nginx's
/// lingering close), whether the body's length is declared or it streams chunked.
#[test]
fn a_refused_upload_is_drained_so_the_client_reads_the_413() {
    let srv = Server::start_with(&[WITH_GATEWAY]);
    let a = Upstream::start("a");
    put(
        &srv,
        "/routes/up",
        json!({"uri": "/upload", "upstream": {"nodes": {a.addr.to_string(): 1}},
            "plugins": {"client-control": {"max_body_size": 102400}}}),
    );
    // 4 MiB: far more than the sockets' buffers hold, so the write cannot finish unless
    // the gateway reads it.
    let body = "x".repeat(4 << 20);
    let declared = format!(
        "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut chunked =
        String::from("POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    for piece in body.as_bytes().chunks(64 << 10) {
        chunked.push_str(&format!("{:x}\r\n", piece.len()));
        chunked.push_str(std::str::from_utf8(piece).expect("ascii"));
        chunked.push_str("\r\n");
    }
    chunked.push_str("0\r\n\r\n");
    for (what, req) in [("declared", declared), ("chunked", chunked)] {
        let mut s = std::net::TcpStream::connect(&srv.gateway_addr).expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        s.write_all(req.as_bytes())
            .unwrap_or_else(|e| panic!("{what}: the upload was cut off: {e}"));
        let mut out = Vec::new();
        s.read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("{what}: reading the answer failed: {e}"));
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.starts_with("HTTP/1.1 413"),
            "{what}: {}",
            &out[..out.len().min(300)]
        );
        assert!(out.contains("larger than 102400 bytes"), "{what}: {out}");
        if what == "declared" {
            assert_eq!(a.hits(), 0, "a declared length too large reaches no node");
        }
    }
}
